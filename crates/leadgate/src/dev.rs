//! Development mode: when no JWT key is configured, leadgate generates a
//! random HS256 secret and worker API key once, keeps them in a file readable
//! only by its owner, and uses them on every start. `leadgate token` reads
//! the same file, so a newcomer can mint tokens without configuring anything.
//!
//! Nothing here weakens a configured deployment: development mode is never
//! entered when a secret or public key is set, and the generated secret is
//! as strong as any other.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Secret};

#[derive(Serialize, Deserialize)]
struct DevFile {
    jwt_secret: String,
    api_key: String,
}

/// The JWT and API key material the gateway runs with.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub jwt: JwtKey,
    pub api_keys: Vec<Secret>,
    /// Set in development mode: the file the credentials came from.
    pub dev_file: Option<std::path::PathBuf>,
}

/// How tokens are verified.
#[derive(Debug, Clone)]
pub enum JwtKey {
    Secret(Secret),
    PublicKeyPem {
        path: std::path::PathBuf,
        pem: Vec<u8>,
    },
}

impl Credentials {
    /// Resolves the configured credentials, or development ones.
    pub fn resolve(config: &Config) -> anyhow::Result<Self> {
        if let Some(path) = &config.jwt_public_key {
            let pem = std::fs::read(path).with_context(|| {
                format!("LEADGATE_JWT_PUBLIC_KEY: cannot read {}", path.display())
            })?;
            return Ok(Credentials {
                jwt: JwtKey::PublicKeyPem {
                    path: path.clone(),
                    pem,
                },
                api_keys: config.api_keys.clone(),
                dev_file: None,
            });
        }
        if let Some(secret) = &config.jwt_secret {
            return Ok(Credentials {
                jwt: JwtKey::Secret(secret.clone()),
                api_keys: config.api_keys.clone(),
                dev_file: None,
            });
        }
        let dev = load_or_create(&config.dev_credentials)?;
        let api_keys = if config.api_keys.is_empty() {
            vec![Secret::new(dev.api_key)]
        } else {
            config.api_keys.clone()
        };
        Ok(Credentials {
            jwt: JwtKey::Secret(Secret::new(dev.jwt_secret)),
            api_keys,
            dev_file: Some(config.dev_credentials.clone()),
        })
    }
}

fn load_or_create(path: &Path) -> anyhow::Result<DevFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a leadgate development credentials file; delete it to make a new one",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dev = DevFile {
                jwt_secret: random_hex(32)?,
                api_key: random_hex(24)?,
            };
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(&serde_json::to_vec_pretty(&dev)?)?;
            Ok(dev)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
