//! The one typed configuration, parsed once from flags and `LEADGATE_*`
//! environment variables, validated once, then passed explicitly.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Gateway configuration. Every option is a flag, an environment variable
/// and a key of the optional TOML file.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// A TOML file of options, keyed by their flag names with `_` for `-`
    /// (`listen = "0.0.0.0:3000"`, `api_keys = ["…"]`). A flag beats an
    /// environment variable, which beats the file, which beats the default.
    #[arg(long, env = "LEADGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// HTTP + Socket.IO listen address.
    #[arg(
        long,
        env = "LEADGATE_LISTEN",
        default_value = "0.0.0.0:3000",
        global = true
    )]
    pub listen: SocketAddr,

    /// Database URL: the embedded SQLite file by default, `postgres://…` in
    /// production.
    #[arg(
        long,
        env = "LEADGATE_DATABASE_URL",
        default_value = "sqlite://leadgate.db?mode=rwc",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Redis URL. Unset: one instance, in-process fan-out. Set: every
    /// instance subscribes to the job channels and events reach the sockets
    /// of all of them.
    #[arg(
        long,
        env = "LEADGATE_REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel.
    #[arg(
        long,
        env = "LEADGATE_REDIS_PREFIX",
        default_value = "leadgate:",
        global = true
    )]
    pub redis_prefix: String,

    /// Key of Node.js workers' `@socket.io/redis-emitter` (its `key`
    /// option): their broadcasts on `<key>#…` reach leadgate's sockets.
    /// Empty: not listened to.
    #[arg(
        long,
        env = "LEADGATE_REDIS_EMITTER_KEY",
        default_value = "socket.io",
        global = true
    )]
    pub redis_emitter_key: String,

    /// HS256 secret for verifying JWTs (at least 16 bytes). Exactly one of
    /// this or --jwt-public-key; with neither, leadgate runs in development
    /// mode with credentials from --dev-credentials.
    #[arg(
        long,
        env = "LEADGATE_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key",
        global = true
    )]
    pub jwt_secret: Option<Secret>,

    /// Path to a PEM public key (RSA for RS256, P-256 for ES256) for
    /// verifying JWTs.
    #[arg(long, env = "LEADGATE_JWT_PUBLIC_KEY", global = true)]
    pub jwt_public_key: Option<PathBuf>,

    /// The one algorithm tokens may be signed with: HS256, HS384 or HS512
    /// with a secret; RS256/384/512 or PS256/384/512 with an RSA key; ES256
    /// or ES384 with an EC key. Default: HS256, RS256 or ES256.
    #[arg(long, env = "LEADGATE_JWT_ALGORITHM", global = true)]
    pub jwt_algorithm: Option<String>,

    /// If set, tokens must carry this `iss`.
    #[arg(long, env = "LEADGATE_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// If set, tokens must carry this `aud`.
    #[arg(long, env = "LEADGATE_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed when checking a token's `exp` and `nbf`, in seconds.
    #[arg(long, env = "LEADGATE_JWT_LEEWAY", default_value_t = 5, global = true)]
    pub jwt_leeway: u64,

    /// Comma-separated API keys for the worker HTTP API.
    #[arg(
        long,
        env = "LEADGATE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub api_keys: Vec<Secret>,

    /// Where development mode keeps its generated JWT secret and API key.
    #[arg(
        long,
        env = "LEADGATE_DEV_CREDENTIALS",
        default_value = ".leadgate-dev.json",
        global = true
    )]
    pub dev_credentials: PathBuf,

    /// Comma-separated browser origins whose pages may connect, e.g.
    /// `http://localhost:5173`: CORS for long-polling and the HTTP API, and
    /// the `Origin` check of WebSocket handshakes. Empty: only pages of this
    /// server's own origin (clients that send no `Origin` are not browsers
    /// and are let through).
    #[arg(
        long,
        env = "LEADGATE_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Vec<String>,

    /// Largest Socket.IO message a client may send, in bytes, on both
    /// transports.
    #[arg(long, env = "LEADGATE_MAX_PAYLOAD", default_value_t = 64 * 1024, global = true)]
    pub max_payload: usize,

    /// Largest HTTP API request body, in bytes.
    #[arg(long, env = "LEADGATE_MAX_HTTP_BODY", default_value_t = 1024 * 1024, global = true)]
    pub max_http_body: usize,

    /// Packets queued per socket before further ones to it are dropped.
    #[arg(
        long,
        env = "LEADGATE_SOCKET_BUFFER",
        default_value_t = 64,
        global = true
    )]
    pub socket_buffer: usize,

    /// Seconds between the server's pings to a Socket.IO client.
    #[arg(
        long,
        env = "LEADGATE_PING_INTERVAL",
        default_value_t = 25,
        global = true
    )]
    pub ping_interval: u64,

    /// Seconds a Socket.IO client has to answer a ping before its
    /// connection is closed (`ping timeout`). A long-polling client that
    /// stops asking for messages is closed after both.
    #[arg(
        long,
        env = "LEADGATE_PING_TIMEOUT",
        default_value_t = 20,
        global = true
    )]
    pub ping_timeout: u64,

    /// Seconds a client may fail to take its messages before it is
    /// disconnected. Until then it misses messages and is sent a fresh
    /// `job-status` as soon as it can take one.
    #[arg(
        long,
        env = "LEADGATE_SLOW_CLIENT_GRACE",
        default_value_t = 30,
        global = true
    )]
    pub slow_client_grace: u64,

    /// Connection attempts a second per client address (bursts of twice
    /// that); past it a connection is refused.
    #[arg(
        long,
        env = "LEADGATE_CONNECT_RATE",
        default_value_t = 10,
        global = true
    )]
    pub connect_rate: u32,

    /// Requests (events, frames) a second per connection (bursts of twice
    /// that); past it a request is refused with an error.
    #[arg(long, env = "LEADGATE_EVENT_RATE", default_value_t = 20, global = true)]
    pub event_rate: u32,

    /// Open connections per user (token `sub`), over every endpoint.
    #[arg(
        long,
        env = "LEADGATE_MAX_CONNECTIONS_PER_USER",
        default_value_t = 50,
        global = true
    )]
    pub max_connections_per_user: usize,

    /// Comma-separated addresses of reverse proxies whose `X-Forwarded-For`
    /// names the client. From anyone else the header is ignored.
    #[arg(
        long,
        env = "LEADGATE_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Jobs one connection may be subscribed to at once.
    #[arg(
        long,
        env = "LEADGATE_MAX_SUBSCRIPTIONS",
        default_value_t = 100,
        global = true
    )]
    pub max_subscriptions: usize,

    /// Without Redis: how often, in seconds, the leads table is checked for
    /// crawlers' writes (0: never; crawlers then announce their updates with
    /// `POST /api/v1/leads/events`). With Redis, crawlers announce through it.
    #[arg(long, env = "LEADGATE_LEADS_POLL", default_value_t = 1, global = true)]
    pub leads_poll: u64,

    /// Keep an in-memory index of the leads (about 65 MB per million
    /// leads), so that any page and its exact total take a millisecond or
    /// two; without it each page is one SQL statement, which counts every
    /// matching lead (hundreds of ms at a million leads).
    #[arg(
        long,
        env = "LEADGATE_LEADS_INDEX",
        default_value_t = true,
        action = clap::ArgAction::Set,
        global = true
    )]
    pub leads_index: bool,

    /// Worker threads that serve clients; 0 runs one per CPU core.
    /// Instances that share a machine do better with their share each (in
    /// all, one per core): a thread that wakes another to hand it a message
    /// spends more than the hand-over saves.
    #[arg(
        long,
        env = "LEADGATE_WORKER_THREADS",
        default_value_t = 0,
        global = true
    )]
    pub worker_threads: usize,

    /// Seconds to wait for connections to close on shutdown.
    #[arg(
        long,
        env = "LEADGATE_SHUTDOWN_GRACE",
        default_value_t = 10,
        global = true
    )]
    pub shutdown_grace: u64,

    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "LEADGATE_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot: one clear error naming the option.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 16)
        {
            return Err("LEADGATE_JWT_SECRET must be at least 16 bytes long".into());
        }
        if self.api_keys.iter().any(|k| k.expose().is_empty()) {
            return Err("LEADGATE_API_KEYS contains an empty key".into());
        }
        for origin in &self.allowed_origins {
            if origin.parse::<axum::http::HeaderValue>().is_err() || !origin.contains("://") {
                return Err(format!(
                    "LEADGATE_ALLOWED_ORIGINS: {origin:?} is not an origin like http://localhost:5173"
                ));
            }
        }
        if self.max_payload < 1024 {
            return Err("LEADGATE_MAX_PAYLOAD must be at least 1024 bytes".into());
        }
        if self.max_subscriptions == 0 {
            return Err("LEADGATE_MAX_SUBSCRIPTIONS must be at least 1".into());
        }
        if self.connect_rate == 0 || self.event_rate == 0 || self.max_connections_per_user == 0 {
            return Err(
                "LEADGATE_CONNECT_RATE, LEADGATE_EVENT_RATE and LEADGATE_MAX_CONNECTIONS_PER_USER must be at least 1"
                    .into(),
            );
        }
        if self.ping_interval == 0 || self.ping_timeout == 0 {
            return Err(
                "LEADGATE_PING_INTERVAL and LEADGATE_PING_TIMEOUT must be at least 1 second".into(),
            );
        }
        if self.slow_client_grace == 0 {
            return Err("LEADGATE_SLOW_CLIENT_GRACE must be at least 1 second".into());
        }
        if self.socket_buffer < 16 {
            return Err("LEADGATE_SOCKET_BUFFER must be at least 16".into());
        }
        Ok(())
    }

    /// The Redis URL, if one is set (an empty value counts as unset).
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
    }

    /// What tokens must satisfy.
    pub fn token_rules(&self) -> crate::auth::TokenRules {
        crate::auth::TokenRules {
            algorithm: self.jwt_algorithm.clone(),
            leeway_secs: self.jwt_leeway,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }
}

/// `text` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret string whose `Debug` and `Display` never show it, so that logging
/// a configuration cannot leak a key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.trim().to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Parses the command line of `T`, taking options that neither a flag nor
/// an environment variable set from the TOML file named by `--config` or
/// `LEADGATE_CONFIG`.
pub fn parse_with_file<T: clap::Parser>(args: Vec<std::ffi::OsString>) -> Result<T, clap::Error> {
    use clap::parser::ValueSource;

    let command = T::command();
    let matches = command.clone().try_get_matches_from(&args)?;
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return T::try_parse_from(args);
    };
    let error = |message: String| {
        let mut command = T::command();
        command.error(clap::error::ErrorKind::InvalidValue, message)
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        error(format!(
            "LEADGATE_CONFIG: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let reason = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        error(format!("{}: not valid TOML: {reason}", path.display()))
    })?;
    // Whether the command line or the environment already set an option,
    // at the top level or after the subcommand (options are global).
    let set_elsewhere = |id: &str| {
        let explicit = |source: Option<ValueSource>| {
            matches!(
                source,
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        explicit(matches.value_source(id))
            || matches.subcommand().is_some_and(|(_, sub)| {
                explicit(sub.try_get_raw(id).ok().and(sub.value_source(id)))
            })
    };
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in table {
        let known = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && a.get_long().is_some() && key != "config");
        let Some(arg) = known else {
            return Err(error(format!("{}: unknown option `{key}`", path.display())));
        };
        if set_elsewhere(&key) {
            continue;
        }
        let scalar = |value: &toml::Value| match value {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(n) => Some(n.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        };
        let text = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            other => scalar(other),
        };
        let Some(text) = text else {
            return Err(error(format!(
                "{}: option `{key}` must be a string, number, boolean or list of them",
                path.display()
            )));
        };
        if matches!(&value, toml::Value::Array(items) if items.is_empty()) {
            continue;
        }
        // One argument, so that a value starting with `-` stays a value.
        extra.push(format!("--{}={text}", arg.get_long().unwrap_or(&key)).into());
    }
    // After the program name, before any subcommand: the options are global.
    let mut merged = args;
    let at = merged.len().min(1);
    merged.splice(at..at, extra);
    T::try_parse_from(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(file: &str, args: &[&str]) -> Result<Config, String> {
        let path =
            std::env::temp_dir().join(format!("leadgate-config-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<std::ffi::OsString> =
            vec!["leadgate".into(), "--config".into(), path.clone().into()];
        argv.extend(args.iter().map(Into::into));
        let result = parse_with_file::<Cli>(argv)
            .map(|c| c.config)
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_file(path);
        result
    }

    #[test]
    fn the_file_fills_in_what_flags_leave_out() {
        let file =
            "listen = \"127.0.0.1:4000\"\napi_keys = [\"one\", \"two\"]\nmax_subscriptions = 7\n";
        let config = parse(file, &[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(
            config.api_keys,
            vec![Secret::new("one"), Secret::new("two")]
        );
        assert_eq!(config.max_subscriptions, 7);
        // A flag wins over the file.
        let config = parse(file, &["--listen", "127.0.0.1:5000"]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(config.max_subscriptions, 7);
    }

    #[test]
    fn worker_threads_default_to_one_per_core() {
        assert_eq!(parse("", &[]).unwrap().worker_threads, 0);
        let config = parse("worker_threads = 3\n", &[]).unwrap();
        assert_eq!(config.worker_threads, 3);
        let config = parse("worker_threads = 3\n", &["--worker-threads", "1"]).unwrap();
        assert_eq!(config.worker_threads, 1);
        assert!(
            parse("worker_threads = -1\n", &[])
                .unwrap_err()
                .contains("--worker-threads")
        );
    }

    #[test]
    fn values_starting_with_a_dash_and_empty_lists() {
        let config = parse(
            "api_keys = [\"-starts-with-a-dash\"]\nallowed_origins = []\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.api_keys, vec![Secret::new("-starts-with-a-dash")]);
        assert!(config.allowed_origins.is_empty());
    }

    #[test]
    fn a_bad_file_names_the_problem() {
        assert!(
            parse("colour = 1\n", &[])
                .unwrap_err()
                .contains("unknown option `colour`")
        );
        assert!(
            parse("listen = [[1]]\n", &[])
                .unwrap_err()
                .contains("must be a string")
        );
        assert!(
            parse("listen = \n", &[])
                .unwrap_err()
                .contains("not valid TOML")
        );
        assert!(
            parse("listen = \"nope\"\n", &[])
                .unwrap_err()
                .contains("--listen")
        );
    }
}
