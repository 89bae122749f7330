//! Who is connecting: JWT verification and where a token is read from.
//!
//! Algorithms are fixed by configuration (HS256 for a secret, RS256 or ES256
//! for a public key); a token that names any other algorithm, including
//! `none`, is refused before its signature is looked at. Refusals carry a
//! short, human-readable reason and never echo the token.

use std::fmt;

use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dev::JwtKey;

/// The role that may read every job.
pub const ADMIN_ROLE: &str = "admin";

/// The authenticated user behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub admin: bool,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: i64,
}

impl Principal {
    /// Whether this user may read a job owned by `owner`.
    pub fn may_read(&self, owner: &str) -> bool {
        self.admin || self.sub == owner
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
}

/// Why a connection was refused; the `Display` text reaches the client as
/// `connect_error`'s `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Expired,
    NotYetValid,
    BadSignature,
    AlgorithmNotAllowed,
    BadClaims,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "authentication required: missing token",
            AuthError::Malformed => "invalid token: malformed",
            AuthError::Expired => "invalid token: expired",
            AuthError::NotYetValid => "invalid token: not valid yet",
            AuthError::BadSignature => "invalid token: bad signature",
            AuthError::AlgorithmNotAllowed => "invalid token: algorithm not allowed",
            AuthError::BadClaims => "invalid token: claims must include sub and exp",
        })
    }
}

impl std::error::Error for AuthError {}

/// Verifies tokens with the configured key and algorithm.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(key: &JwtKey, leeway_secs: u64) -> anyhow::Result<Self> {
        let (key, algorithm) = match key {
            JwtKey::Secret(secret) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            JwtKey::PublicKeyPem { path, pem } => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                    (key, Algorithm::ES256)
                } else {
                    anyhow::bail!(
                        "LEADGATE_JWT_PUBLIC_KEY: {} is not a PEM RSA or P-256 public key",
                        path.display()
                    );
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Verifier { key, validation })
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // The header first: a token whose header cannot be read (not a JWT,
        // or an algorithm such as `none` that is not one at all) is
        // malformed; after that, a JSON error can only be in the claims.
        jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::AlgorithmNotAllowed
                }
                ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_)
                | ErrorKind::Json(_) => AuthError::BadClaims,
                _ => AuthError::Malformed,
            },
        )?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::BadClaims);
        }
        Ok(Principal {
            admin: data.claims.roles.iter().any(|r| r == ADMIN_ROLE),
            sub: data.claims.sub,
            expires_at: data.claims.exp,
        })
    }
}

/// Mints an HS256 token, for `leadgate token` and tests.
pub fn mint(secret: &str, sub: &str, admin: bool, ttl_secs: i64) -> anyhow::Result<String> {
    let claims = Claims {
        sub: sub.to_owned(),
        exp: chrono::Utc::now().timestamp() + ttl_secs,
        roles: if admin {
            vec![ADMIN_ROLE.to_owned()]
        } else {
            Vec::new()
        },
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Finds the token of a Socket.IO handshake, in the contract's order: the
/// handshake `auth.token`, the `Authorization: Bearer` header, the `token`
/// query parameter, the `token` cookie.
pub fn handshake_token(
    auth: Option<&Value>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<String, AuthError> {
    if let Some(token) = auth.and_then(|a| a.get("token")) {
        return match token {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(AuthError::Malformed),
        };
    }
    if let Some(token) = bearer_token(headers) {
        return Ok(token.to_owned());
    }
    let from_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, v)| k == "token" && !v.is_empty())
    });
    if let Some((_, token)) = from_query {
        return Ok(token.into_owned());
    }
    cookie(headers, "token")
        .map(str::to_owned)
        .ok_or(AuthError::Missing)
}

/// The credentials of an `Authorization: Bearer …` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"'))
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123";

    fn verifier() -> Verifier {
        Verifier::new(&JwtKey::Secret(Secret::new(SECRET)), 5).unwrap()
    }

    #[test]
    fn verifies_minted_tokens_and_reads_roles() {
        let p = verifier()
            .verify(&mint(SECRET, "alice", true, 60).unwrap())
            .unwrap();
        assert_eq!(p.sub, "alice");
        assert!(p.admin && p.may_read("bob"));
        let p = verifier()
            .verify(&mint(SECRET, "bob", false, 60).unwrap())
            .unwrap();
        assert!(!p.admin && p.may_read("bob") && !p.may_read("alice"));
    }

    #[test]
    fn refuses_bad_tokens_with_a_reason() {
        let v = verifier();
        assert_eq!(v.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(
            v.verify(&mint(SECRET, "a", false, -60).unwrap()),
            Err(AuthError::Expired)
        );
        assert_eq!(
            v.verify(&mint("another-secret-of-16", "a", false, 60).unwrap()),
            Err(AuthError::BadSignature)
        );
        // alg "none" with an empty signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert!(v.verify(none).is_err());
    }

    #[test]
    fn claims_of_the_wrong_shape_are_named() {
        let claims =
            json!({ "sub": "a", "exp": chrono::Utc::now().timestamp() + 60, "roles": "admin" });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(verifier().verify(&token), Err(AuthError::BadClaims));
    }

    #[test]
    fn reads_tokens_in_contract_order() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=b; token=from-cookie".parse().unwrap());
        assert_eq!(
            handshake_token(None, &headers, Some("x=1")).unwrap(),
            "from-cookie"
        );
        assert_eq!(
            handshake_token(None, &headers, Some("EIO=4&token=from-query")).unwrap(),
            "from-query"
        );
        headers.insert(header::AUTHORIZATION, "Bearer from-header".parse().unwrap());
        assert_eq!(
            handshake_token(None, &headers, Some("token=from-query")).unwrap(),
            "from-header"
        );
        let auth = json!({"token": "from-auth"});
        assert_eq!(
            handshake_token(Some(&auth), &headers, None).unwrap(),
            "from-auth"
        );
        assert_eq!(
            handshake_token(Some(&json!({"token": 5})), &headers, None),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            handshake_token(None, &HeaderMap::new(), None),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
