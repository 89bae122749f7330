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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
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
    WrongIssuer,
    WrongAudience,
    OriginNotAllowed,
    TooManyAttempts,
    TooManyConnections,
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
            AuthError::WrongIssuer => "invalid token: wrong issuer",
            AuthError::WrongAudience => "invalid token: wrong audience",
            AuthError::OriginNotAllowed => "origin not allowed",
            AuthError::TooManyAttempts => "too many connection attempts; retry later",
            AuthError::TooManyConnections => "too many connections for this user",
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
        Self::with_rules(
            key,
            &TokenRules {
                leeway_secs,
                ..TokenRules::default()
            },
        )
    }

    /// A verifier for `key` with the configured algorithm, leeway, issuer
    /// and audience.
    pub fn with_rules(key: &JwtKey, rules: &TokenRules) -> anyhow::Result<Self> {
        let (key, family, default) = match key {
            JwtKey::Secret(secret) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                "HS",
                Algorithm::HS256,
            ),
            JwtKey::PublicKeyPem { path, pem } => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    (key, "RS", Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                    (key, "ES", Algorithm::ES256)
                } else {
                    anyhow::bail!(
                        "LEADGATE_JWT_PUBLIC_KEY: {} is not a PEM RSA or EC public key",
                        path.display()
                    );
                }
            }
        };
        let algorithm = match rules.algorithm.as_deref() {
            None => default,
            Some(name) => {
                let algorithm: Algorithm = name.parse().map_err(|_| {
                    anyhow::anyhow!("LEADGATE_JWT_ALGORITHM: unknown algorithm {name:?}")
                })?;
                // The key decides the family: an HS token can never be
                // checked against a public key (algorithm confusion).
                let fits = match family {
                    "HS" => matches!(
                        algorithm,
                        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                    ),
                    "RS" => matches!(
                        algorithm,
                        Algorithm::RS256
                            | Algorithm::RS384
                            | Algorithm::RS512
                            | Algorithm::PS256
                            | Algorithm::PS384
                            | Algorithm::PS512
                    ),
                    _ => matches!(algorithm, Algorithm::ES256 | Algorithm::ES384),
                };
                anyhow::ensure!(
                    fits,
                    "LEADGATE_JWT_ALGORITHM: {name} does not fit the configured {} key",
                    if family == "HS" { "secret" } else { "public" }
                );
                algorithm
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = rules.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier { key, validation })
    }

    /// Checks a fresh token offered by a connected `user`: valid, and for the
    /// same user with the same roles. Returns its expiry.
    pub fn refresh_for(&self, user: &Principal, token: &str) -> Result<i64, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let fresh = self.verify(token)?;
        if fresh.sub != user.sub || fresh.admin != user.admin {
            return Err(AuthError::BadClaims);
        }
        Ok(fresh.expires_at)
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
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
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

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Default)]
pub struct TokenRules {
    /// `HS256`, `RS384`, …; by default HS256 for a secret, RS256 or ES256 for
    /// a public key.
    pub algorithm: Option<String>,
    pub leeway_secs: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Mints an HS256 token, for tests.
pub fn mint(secret: &str, sub: &str, admin: bool, ttl_secs: i64) -> anyhow::Result<String> {
    mint_with(secret, &TokenRules::default(), sub, admin, ttl_secs)
}

/// Mints a token that satisfies `rules` (an HS algorithm, issuer,
/// audience), for `leadgate token`.
pub fn mint_with(
    secret: &str,
    rules: &TokenRules,
    sub: &str,
    admin: bool,
    ttl_secs: i64,
) -> anyhow::Result<String> {
    let algorithm = match rules.algorithm.as_deref() {
        None => Algorithm::HS256,
        Some(name) => name
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown algorithm {name:?}"))?,
    };
    let claims = Claims {
        sub: sub.to_owned(),
        exp: chrono::Utc::now().timestamp() + ttl_secs,
        roles: if admin {
            vec![ADMIN_ROLE.to_owned()]
        } else {
            Vec::new()
        },
        iss: rules.issuer.clone(),
        aud: rules.audience.clone(),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(algorithm),
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

/// Whether a browser page of `Origin` may open a connection: requests
/// without an `Origin` (not from a browser) may; a page may if its origin is
/// in `allowed`, or, with no list, if it is this server's own origin.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return headers.get(header::ORIGIN).is_none();
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    allowed.is_empty() && host.is_some() && origin_host.is_some_and(|o| Some(o) == host)
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
    fn algorithm_issuer_and_audience_rules() {
        let key = JwtKey::Secret(Secret::new(SECRET));
        let rules = |alg: &str| TokenRules {
            algorithm: Some(alg.into()),
            ..TokenRules::default()
        };
        assert!(Verifier::with_rules(&key, &rules("HS512")).is_ok());
        // An RS algorithm with a secret would invite algorithm confusion.
        assert!(Verifier::with_rules(&key, &rules("RS256")).is_err());
        assert!(Verifier::with_rules(&key, &rules("none")).is_err());
        // HS256 tokens are refused when HS512 is configured.
        let hs512 = Verifier::with_rules(&key, &rules("HS512")).unwrap();
        assert_eq!(
            hs512.verify(&mint(SECRET, "a", false, 60).unwrap()),
            Err(AuthError::AlgorithmNotAllowed)
        );

        let strict = TokenRules {
            issuer: Some("https://id.example".into()),
            audience: Some("leadgate".into()),
            ..TokenRules::default()
        };
        let v = Verifier::with_rules(&key, &strict).unwrap();
        let token = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        let exp = chrono::Utc::now().timestamp() + 60;
        assert!(
            v.verify(&token(
                json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "leadgate"})
            ))
            .is_ok()
        );
        assert_eq!(
            v.verify(&token(
                json!({"sub": "a", "exp": exp, "iss": "https://evil", "aud": "leadgate"})
            )),
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(
            v.verify(&token(
                json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "other"})
            )),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            v.verify(&token(json!({"sub": "a", "exp": exp}))),
            Err(AuthError::BadClaims)
        );
    }

    #[test]
    fn origins() {
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "gate.example:3000".parse().unwrap());
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            h
        };
        let none: Vec<String> = Vec::new();
        let list = vec!["http://app.example".to_owned()];
        assert!(origin_allowed(&headers(None), &none));
        assert!(origin_allowed(
            &headers(Some("http://gate.example:3000")),
            &none
        ));
        assert!(!origin_allowed(
            &headers(Some("http://evil.example")),
            &none
        ));
        assert!(origin_allowed(&headers(Some("http://app.example")), &list));
        assert!(!origin_allowed(
            &headers(Some("http://gate.example:3000")),
            &list
        ));
        assert!(!origin_allowed(
            &headers(Some("http://evil.example")),
            &list
        ));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
