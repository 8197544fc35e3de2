//! Settings and how they combine into a validated [`Config`].
//!
//! Every setting can come from three places. From strongest to weakest:
//!
//! 1. a command-line flag (`--listen 0.0.0.0:80`);
//! 2. its `LB_*` environment variable (`LB_LISTEN=0.0.0.0:80`), which clap reads as if it
//!    were the flag;
//! 3. the TOML file named by `--config` (or `LB_CONFIG`), whose keys are the flag names
//!    without dashes in front (`listen = "0.0.0.0:80"`, see `lb/lb.example.toml`);
//!
//! and when none of them sets it, the built-in default shown in `lb --help`.
//!
//! Backends are one setting, not a list that merges: any `--backend` flag (or
//! `LB_BACKENDS`) replaces the file's whole `backends` list, so a flag never silently adds
//! to backends that the file still routes to.
//!
//! [`Settings`] is the raw, all-optional form shared by the flags and the file;
//! [`Config::from_settings`] applies defaults and rejects anything invalid with a
//! [`ConfigError`] that says how to fix it.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use serde::Deserialize;
use tracing::warn;

use crate::affinity::CookieAffinity;

/// Address the LB accepts clients on when nothing else is said.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Name of the affinity cookie, like HAProxy's `cookie SERVERID`.
pub const DEFAULT_COOKIE_NAME: &str = "lb_backend";
/// Response header that names the backend that answered.
pub const DEFAULT_BACKEND_HEADER: &str = "X-Backend";
/// Shortest `--cookie-key` accepted: shorter secrets are guessable.
pub const MIN_COOKIE_KEY_LEN: usize = 16;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 2;
const DEFAULT_HEALTH_PATH: &str = "/healthz";
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 2;
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const RANDOM_KEY_LEN: usize = 32;

/// A setting that is missing, malformed or inconsistent; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {}: {source}", path.display())]
    ParseFile {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error(
        "no backends: give at least one with --backend http://host:port \
         (or LB_BACKENDS, or `backends` in the config file)"
    )]
    NoBackends,
    #[error(
        "invalid backend {spec:?}: {reason}; expected ID=http://host:port or http://host:port \
         (plain HTTP/1.1 to a host and port, no path)"
    )]
    BackendSpec { spec: String, reason: String },
    #[error(
        "backend id {id:?} is used twice; give each backend its own id with ID=http://host:port"
    )]
    DuplicateId { id: String },
    #[error("invalid duration {text:?}: expected a whole number with a unit, like 500ms, 2s or 1m")]
    Duration { text: String },
    #[error("{setting} must be greater than zero")]
    Zero { setting: &'static str },
    #[error("invalid cookie name {name:?}: use letters, digits and - _ . only")]
    CookieName { name: String },
    #[error(
        "the cookie key is {len} bytes long; use a secret of at least {MIN_COOKIE_KEY_LEN} bytes"
    )]
    CookieKeyTooShort { len: usize },
    #[error("cannot use the cookie key: {0}")]
    CookieKey(String),
    #[error("cannot generate a random cookie key: {0}")]
    RandomKey(getrandom::Error),
    #[error("invalid backend header name {name:?}: {reason}")]
    BackendHeader { name: String, reason: String },
    #[error("invalid health path {path:?}: it must start with / like /healthz")]
    HealthPath { path: String },
}

/// How a new client is assigned a backend. Only round-robin exists so far; the
/// [`crate::select::Selector`] trait is where weighted or least-connections would go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Each healthy backend in turn.
    #[default]
    RoundRobin,
}

/// Whether a client keeps going to the same backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// Every request is balanced on its own.
    #[default]
    None,
    /// A signed cookie set by the LB pins the client to one backend.
    Cookie,
}

/// One backend as configured: a unique id and the `host:port` to connect to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct BackendSpec {
    /// Name used in the affinity cookie, the backend header and logs.
    pub id: String,
    /// Where to connect; the LB speaks plain HTTP/1.1 to it.
    pub authority: Authority,
}

impl FromStr for BackendSpec {
    type Err = ConfigError;

    /// Parses `ID=http://host:port` or `http://host:port` (the id is then `host:port`).
    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        let spec = spec.trim();
        let invalid = |reason: &str| ConfigError::BackendSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (id, url) = match spec.split_once('=') {
            Some((id, url)) => (Some(id.trim()), url.trim()),
            None => (None, spec),
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => {}
            Some(scheme) if *scheme == Scheme::HTTPS => {
                return Err(invalid(
                    "https backends are not supported, the LB talks plain HTTP to backends",
                ));
            }
            Some(_) => return Err(invalid("only the http:// scheme is supported")),
            None => return Err(invalid("the URL needs the http:// scheme")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("the URL has no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(invalid(
                "user names and passwords in the URL are not supported",
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid(
                "paths are not supported, requests keep their own path",
            ));
        }
        let id = match id {
            Some(id) => id.to_string(),
            None => format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
        };
        check_id(&id).map_err(invalid)?;
        Ok(BackendSpec { id, authority })
    }
}

impl TryFrom<String> for BackendSpec {
    type Error = ConfigError;

    fn try_from(spec: String) -> Result<Self, ConfigError> {
        spec.parse()
    }
}

/// Ids travel in a cookie value and a header, so only characters safe in both are allowed.
fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("the id is empty");
    }
    let safe = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\' | '=');
    if id.chars().all(safe) {
        Ok(())
    } else {
        Err("the id may only hold visible ASCII characters other than \" , ; \\ =")
    }
}

/// Parses durations written like `500ms`, `2s`, `1m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let invalid = || ConfigError::Duration {
        text: text.to_string(),
    };
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let value: u64 = number.parse().map_err(|_| invalid())?;
    let seconds = |factor: u64| {
        value
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(invalid)
    };
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(invalid()),
    }
}

/// Serde adapter so the file writes durations the same way as the flags.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text)
            .map(Some)
            .map_err(D::Error::custom)
    }
}

/// A secret from the command line, environment or file, kept out of `Debug` output so
/// it cannot leak into logs.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_string()))
    }
}

/// Every setting, all optional, as given by flags, `LB_*` variables or the TOML file.
///
/// One struct serves both sources so a flag and its file key can never drift apart;
/// [`Settings::overlay`] merges them and [`Config::from_settings`] validates the result.
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Address to accept clients on [default: 127.0.0.1:8080].
    #[arg(long, env = "LB_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// A backend as ID=http://host:port or http://host:port (id = host:port); repeat the
    /// flag or separate with commas. Replaces the config file's list.
    #[arg(
        long = "backend",
        env = "LB_BACKENDS",
        value_name = "SPEC",
        value_delimiter = ','
    )]
    pub backends: Vec<BackendSpec>,

    /// How new clients are spread over healthy backends [default: round-robin].
    #[arg(long, env = "LB_ALGORITHM", value_enum)]
    pub algorithm: Option<Algorithm>,

    /// Keep a client on one backend with a signed cookie [default: none].
    #[arg(long, env = "LB_AFFINITY", value_enum)]
    pub affinity: Option<Affinity>,

    /// Name of the affinity cookie [default: lb_backend].
    #[arg(long, env = "LB_COOKIE_NAME", value_name = "NAME")]
    pub cookie_name: Option<String>,

    /// Secret (at least 16 bytes) that signs affinity cookies; give every replica the same
    /// one. Without it a random key is made at start-up and cookies die with the process.
    #[arg(
        long,
        env = "LB_COOKIE_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub cookie_key: Option<Secret>,

    /// Response header naming the backend that answered; "" disables it [default: X-Backend].
    #[arg(long, env = "LB_BACKEND_HEADER", value_name = "NAME")]
    pub backend_header: Option<String>,

    /// Give up connecting to a backend after this long and try another [default: 1s].
    #[arg(long, env = "LB_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub connect_timeout: Option<Duration>,

    /// Answer 504 when a backend sends no response headers within this, and cut a
    /// response whose body then stalls this long [default: 30s].
    #[arg(long, env = "LB_UPSTREAM_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub upstream_timeout: Option<Duration>,

    /// Close a client connection whose request headers, or small request body, take
    /// longer than this to arrive (408 for the body) [default: 30s].
    #[arg(long, env = "LB_CLIENT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub client_timeout: Option<Duration>,

    /// Other backends to try when connecting fails (the request never left the LB) [default: 2].
    #[arg(long, env = "LB_RETRIES", value_name = "N")]
    pub retries: Option<u32>,

    /// Path probed on each backend; a 2xx answer means healthy [default: /healthz].
    #[arg(long, env = "LB_HEALTH_PATH", value_name = "PATH")]
    pub health_path: Option<String>,

    /// Time between two probes of one backend [default: 1s].
    #[arg(long, env = "LB_HEALTH_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub health_interval: Option<Duration>,

    /// A probe without an answer within this counts as failed [default: 1s].
    #[arg(long, env = "LB_HEALTH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub health_timeout: Option<Duration>,

    /// Consecutive passed probes that bring a down backend back [default: 2].
    #[arg(long, env = "LB_RISE", value_name = "N")]
    pub rise: Option<u32>,

    /// Consecutive failed probes that take a backend out [default: 2]. A refused
    /// connection on real traffic takes it out at once.
    #[arg(long, env = "LB_FALL", value_name = "N")]
    pub fall: Option<u32>,

    /// On shutdown, how long in-flight requests may take to finish [default: 10s].
    #[arg(long, env = "LB_DRAIN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub drain_timeout: Option<Duration>,
}

impl Settings {
    /// Reads a TOML file whose keys are the flag names (`connect-timeout = "2s"`).
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// `over` wins wherever it says something; a non-empty backend list replaces ours.
    pub fn overlay(self, over: Settings) -> Settings {
        Settings {
            listen: over.listen.or(self.listen),
            backends: if over.backends.is_empty() {
                self.backends
            } else {
                over.backends
            },
            algorithm: over.algorithm.or(self.algorithm),
            affinity: over.affinity.or(self.affinity),
            cookie_name: over.cookie_name.or(self.cookie_name),
            cookie_key: over.cookie_key.or(self.cookie_key),
            backend_header: over.backend_header.or(self.backend_header),
            connect_timeout: over.connect_timeout.or(self.connect_timeout),
            upstream_timeout: over.upstream_timeout.or(self.upstream_timeout),
            client_timeout: over.client_timeout.or(self.client_timeout),
            retries: over.retries.or(self.retries),
            health_path: over.health_path.or(self.health_path),
            health_interval: over.health_interval.or(self.health_interval),
            health_timeout: over.health_timeout.or(self.health_timeout),
            rise: over.rise.or(self.rise),
            fall: over.fall.or(self.fall),
            drain_timeout: over.drain_timeout.or(self.drain_timeout),
        }
    }
}

/// How backends are probed, with HAProxy-style rise/fall hysteresis.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// Probed with `GET`; any 2xx passes.
    pub path: PathAndQuery,
    /// Time between two probes of one backend, up or down.
    pub interval: Duration,
    /// A probe without response headers by then fails.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
}

/// A complete, validated configuration: everything [`crate::server::run`] needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where [`crate::cli::serve`] binds; [`crate::server::run`] takes a bound listener instead.
    pub listen: SocketAddr,
    /// At least one, with unique ids.
    pub backends: Vec<BackendSpec>,
    pub algorithm: Algorithm,
    /// Present when cookie affinity is on; holds the cookie name and signing key.
    pub affinity: Option<CookieAffinity>,
    /// `None` when the backend header is disabled.
    pub backend_header: Option<HeaderName>,
    /// A connect slower than this fails and is retried elsewhere.
    pub connect_timeout: Duration,
    /// Longest wait for a backend's response headers before answering 504, and longest
    /// silence within a response body.
    pub upstream_timeout: Duration,
    /// Longest wait for a client's request headers, or for a small request body.
    pub client_timeout: Duration,
    /// How many other backends a request may be retried on after a connect failure.
    pub retries: u32,
    pub health: HealthConfig,
    /// On shutdown, how long requests in flight may take before connections are closed.
    pub drain_timeout: Duration,
}

impl Config {
    /// Applies defaults and validates. With cookie affinity but no key, generates a random
    /// key and warns, because such cookies break on restart and across replicas.
    pub fn from_settings(settings: Settings) -> Result<Config, ConfigError> {
        let listen = settings.listen.unwrap_or(DEFAULT_LISTEN);
        let backends = settings.backends;
        if backends.is_empty() {
            return Err(ConfigError::NoBackends);
        }
        let mut seen = HashSet::new();
        for backend in &backends {
            if !seen.insert(backend.id.as_str()) {
                return Err(ConfigError::DuplicateId {
                    id: backend.id.clone(),
                });
            }
        }
        let affinity = match settings.affinity.unwrap_or_default() {
            Affinity::None => None,
            Affinity::Cookie => Some(cookie_affinity(
                settings
                    .cookie_name
                    .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_string()),
                settings.cookie_key,
            )?),
        };
        let backend_header = backend_header(
            settings
                .backend_header
                .as_deref()
                .unwrap_or(DEFAULT_BACKEND_HEADER),
        )?;
        let health_path = settings
            .health_path
            .unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_string());
        let path = health_path
            .parse::<PathAndQuery>()
            .ok()
            .filter(|_| health_path.starts_with('/'))
            .ok_or(ConfigError::HealthPath { path: health_path })?;
        let health = HealthConfig {
            path,
            interval: positive(
                "--health-interval",
                settings.health_interval.unwrap_or(DEFAULT_HEALTH_INTERVAL),
            )?,
            timeout: positive(
                "--health-timeout",
                settings.health_timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
            )?,
            rise: at_least_one("--rise", settings.rise.unwrap_or(DEFAULT_RISE))?,
            fall: at_least_one("--fall", settings.fall.unwrap_or(DEFAULT_FALL))?,
        };
        Ok(Config {
            listen,
            backends,
            algorithm: settings.algorithm.unwrap_or_default(),
            affinity,
            backend_header,
            connect_timeout: positive(
                "--connect-timeout",
                settings.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            )?,
            upstream_timeout: positive(
                "--upstream-timeout",
                settings
                    .upstream_timeout
                    .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
            )?,
            client_timeout: positive(
                "--client-timeout",
                settings.client_timeout.unwrap_or(DEFAULT_CLIENT_TIMEOUT),
            )?,
            retries: settings.retries.unwrap_or(DEFAULT_RETRIES),
            health,
            drain_timeout: settings.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        })
    }
}

fn cookie_affinity(name: String, key: Option<Secret>) -> Result<CookieAffinity, ConfigError> {
    let token = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || !name.chars().all(token) {
        return Err(ConfigError::CookieName { name });
    }
    let key = match key {
        Some(Secret(key)) if key.len() < MIN_COOKIE_KEY_LEN => {
            return Err(ConfigError::CookieKeyTooShort { len: key.len() });
        }
        Some(Secret(key)) => key.into_bytes(),
        None => {
            let mut key = vec![0; RANDOM_KEY_LEN];
            getrandom::fill(&mut key).map_err(ConfigError::RandomKey)?;
            warn!(
                "no --cookie-key given: affinity cookies are signed with a random key made at \
                 start-up, so they will not survive a restart and replicas won't agree on them \
                 (clients get re-balanced). Set --cookie-key or LB_COOKIE_KEY to a secret of at \
                 least {MIN_COOKIE_KEY_LEN} bytes, the same on every replica"
            );
            key
        }
    };
    CookieAffinity::new(name, &key)
}

fn backend_header(name: &str) -> Result<Option<HeaderName>, ConfigError> {
    if name.is_empty() {
        return Ok(None);
    }
    HeaderName::from_bytes(name.as_bytes())
        .map(Some)
        .map_err(|e| ConfigError::BackendHeader {
            name: name.to_string(),
            reason: e.to_string(),
        })
}

fn positive(setting: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(ConfigError::Zero { setting })
    } else {
        Ok(value)
    }
}

fn at_least_one(setting: &'static str, value: u32) -> Result<u32, ConfigError> {
    if value == 0 {
        Err(ConfigError::Zero { setting })
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<BackendSpec, ConfigError> {
        text.parse()
    }

    fn with_backends(specs: &[&str]) -> Settings {
        Settings {
            backends: specs.iter().map(|s| spec(s).expect("valid spec")).collect(),
            ..Settings::default()
        }
    }

    #[test]
    fn spec_with_and_without_id() {
        let named = spec("app1=http://127.0.0.1:3001").expect("valid spec");
        assert_eq!(named.id, "app1");
        assert_eq!(named.authority, "127.0.0.1:3001");
        let bare = spec("http://localhost:3002/").expect("valid spec");
        assert_eq!(bare.id, "localhost:3002");
        let default_port = spec("http://example.test").expect("valid spec");
        assert_eq!(default_port.id, "example.test:80");
    }

    #[test]
    fn spec_rejects_what_is_not_supported() {
        for bad in [
            "https://127.0.0.1:3001",
            "http://127.0.0.1:3001/app",
            "http://127.0.0.1:3001/?x=1",
            "127.0.0.1:3001",
            "ftp://host:21",
            "a;b=http://h:1",
            "=http://h:1",
            "http://user@h:1",
        ] {
            assert!(spec(bad).is_err(), "{bad} should be rejected");
        }
        let message = spec("https://h:443").err().map(|e| e.to_string());
        assert!(message.is_some_and(|m| m.contains("https") && m.contains("http://host:port")));
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let settings = with_backends(&["a=http://h:1", "a=http://h:2"]);
        assert!(matches!(
            Config::from_settings(settings),
            Err(ConfigError::DuplicateId { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("2s").ok(), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m").ok(), Some(Duration::from_secs(60)));
        for bad in ["", "5", "s", "1.5s", "-1s", "3d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let file: Settings = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            backends = ["a=http://127.0.0.1:1", "b=http://127.0.0.1:2"]
            retries = 5
            health-interval = "3s"
            "#,
        )
        .expect("valid file");
        let flags = Settings {
            retries: Some(1),
            ..with_backends(&["c=http://127.0.0.1:3"])
        };
        let config = Config::from_settings(file.overlay(flags)).expect("valid settings");
        assert_eq!(config.retries, 1);
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.health.interval, Duration::from_secs(3));
        assert_eq!(config.health.fall, 2);
        let ids: Vec<&str> = config.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["c"]);
        assert_eq!(
            config.backend_header.map(|h| h.to_string()).as_deref(),
            Some("x-backend")
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<Settings>("retires = 3").is_err());
    }

    #[test]
    fn cookie_key_stays_out_of_debug_output() {
        let settings = Settings {
            cookie_key: Some(Secret("very-secret-value-123".to_string())),
            ..Settings::default()
        };
        assert!(!format!("{settings:?}").contains("very-secret"));
    }

    #[test]
    fn short_cookie_key_is_rejected() {
        let settings = Settings {
            affinity: Some(Affinity::Cookie),
            cookie_key: Some(Secret("short".to_string())),
            ..with_backends(&["a=http://h:1"])
        };
        assert!(matches!(
            Config::from_settings(settings),
            Err(ConfigError::CookieKeyTooShort { len: 5 })
        ));
    }

    #[test]
    fn empty_backend_header_disables_it() {
        let settings = Settings {
            backend_header: Some(String::new()),
            ..with_backends(&["a=http://h:1"])
        };
        let config = Config::from_settings(settings).expect("valid settings");
        assert!(config.backend_header.is_none());
    }
}
