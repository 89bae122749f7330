//! Session and socket ids: 16 random characters of the URL-safe base64
//! alphabet (96 bits). Clients treat them as opaque strings.

use std::fmt;
use std::str::FromStr;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid([u8; 16]);

impl Sid {
    pub fn new() -> Sid {
        let mut bytes = [0u8; 16];
        // The system's random source failing is not something a server can
        // go on without.
        getrandom::fill(&mut bytes).expect("the system's random source works");
        Sid(bytes.map(|b| ALPHABET[usize::from(b & 63)]))
    }

    pub fn as_str(&self) -> &str {
        // Only ALPHABET's ASCII bytes are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.as_str())
    }
}

/// Not a sid this server could have made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a session id")]
pub struct BadSid;

impl FromStr for Sid {
    type Err = BadSid;

    fn from_str(s: &str) -> Result<Sid, BadSid> {
        let bytes: [u8; 16] = s.as_bytes().try_into().map_err(|_| BadSid)?;
        if bytes.iter().all(|b| ALPHABET.contains(b)) {
            Ok(Sid(bytes))
        } else {
            Err(BadSid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_are_distinct_and_read_back() {
        let (a, b) = (Sid::new(), Sid::new());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 16);
        assert_eq!(a.as_str().parse::<Sid>(), Ok(a));
        assert_eq!("short".parse::<Sid>(), Err(BadSid));
        assert_eq!("AAAAAAAAAAAAAAA=".parse::<Sid>(), Err(BadSid));
    }
}
