//! Timestamps on the wire: RFC 3339 in UTC with millisecond precision, the
//! same shape JavaScript's `Date.prototype.toISOString()` produces, so a
//! browser can parse every timestamp leadgate sends.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

/// The current time, truncated to milliseconds so that what is stored in the
/// database and what is sent to clients compare equal.
pub fn now_millis() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// Serde helpers for `DateTime<Utc>` as `2026-11-22T10:00:00.000Z`.
pub mod rfc3339_millis {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| t.with_timezone(&Utc).trunc_subsecs(3))
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 timestamp: {e}")))
    }

    /// The same for `Option<DateTime<Utc>>`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] DateTime<Utc>);
            Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
        }
    }
}
