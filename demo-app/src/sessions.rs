//! Builds the node's [`SessionLayer`] from its flags: which of the three modes, and for
//! each the keys, store and broker it needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use session_layer::events::{BusConfig, OwnedIdentity, OwnedTLSConfig};
use session_layer::jwt::{JwtCodec, JwtKey, JwtKeys};
use session_layer::store::redact_url;
use session_layer::{
    CachedStore, CookieConfig, CookieKeys, MemoryStore, RedisStore, Secure, SessionConfig,
    SessionLayer, random_bytes,
};

use crate::node::{CookieSecure, NodeArgs};

/// Which of the three approaches a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// In this node's memory: survives only while requests keep coming back here.
    Local,
    /// In the shared store over the Redis protocol: every node sees it.
    Shared,
    /// In a signed JWT cookie: no server state at all.
    Jwt,
}

impl std::fmt::Display for SessionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionMode::Local => "local",
            SessionMode::Shared => "shared",
            SessionMode::Jwt => "jwt",
        })
    }
}

/// Cookie name of the signed token in `jwt` mode (the id cookie is `sid`).
pub const TOKEN_COOKIE: &str = "token";

/// The layer, plus the near-cache when there is one (for its statistics).
pub struct Built {
    pub layer: SessionLayer,
    pub near_cache: Option<Arc<CachedStore>>,
}

/// Longest accepted duration for any session flag: beyond it the caches' arithmetic and
/// cookie Max-Age would overflow, and no session needs it.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub fn build(args: &NodeArgs) -> anyhow::Result<Built> {
    for (flag, value) in [
        ("--idle-timeout", args.idle_timeout),
        ("--absolute-timeout", args.absolute_timeout),
        ("--touch-interval", args.touch_interval),
        ("--near-cache-max-age", args.near_cache_max_age),
    ] {
        if value > MAX_DURATION {
            bail!("{flag} {value:?} is too long; use at most 10 years (e.g. 87600h)");
        }
    }
    let config = config(args);
    let store = || {
        RedisStore::connect(&args.store_url)
            .with_context(|| format!("--store-url {}", redact_url(&args.store_url)))
    };
    Ok(match args.session_mode {
        SessionMode::Local => Built {
            layer: SessionLayer::server(
                Arc::new(MemoryStore::new(config.idle_timeout)),
                cookie_keys(args)?,
                config,
            ),
            near_cache: None,
        },
        SessionMode::Shared if args.no_near_cache => Built {
            layer: SessionLayer::server(Arc::new(store()?), cookie_keys(args)?, config),
            near_cache: None,
        },
        SessionMode::Shared => {
            let keys = cookie_keys(args)?;
            let cached = Arc::new(CachedStore::start(
                store()?,
                BusConfig {
                    tls: events_tls(args)?,
                    ..BusConfig::new(args.events_url.clone())
                },
                args.near_cache_max_age,
                &keys,
            ));
            Built {
                layer: SessionLayer::server(cached.clone(), keys, config),
                near_cache: Some(cached),
            }
        }
        SessionMode::Jwt => {
            let codec = JwtCodec::new(jwt_keys(args)?, config.idle_timeout, Duration::from_secs(5));
            let revocations = if args.jwt_revocation {
                Some(store()?)
            } else {
                None
            };
            let config = SessionConfig {
                cookie: CookieConfig {
                    name: TOKEN_COOKIE.to_string(),
                    ..config.cookie
                },
                ..config
            };
            Built {
                layer: SessionLayer::jwt(codec, revocations, config),
                near_cache: None,
            }
        }
    })
}

fn config(args: &NodeArgs) -> SessionConfig {
    SessionConfig {
        idle_timeout: args.idle_timeout.max(Duration::from_secs(1)),
        absolute_timeout: args.absolute_timeout.max(Duration::from_secs(1)),
        touch_interval: args.touch_interval,
        max_sessions_per_user: args.max_sessions_per_user,
        cookie: CookieConfig {
            secure: match args.cookie_secure {
                CookieSecure::Always => Secure::Always,
                CookieSecure::Auto => Secure::FromForwardedProto,
                CookieSecure::Never => Secure::Never,
            },
            host_prefix: args.cookie_host_prefix,
            ..CookieConfig::default()
        },
        ..SessionConfig::default()
    }
}

/// The event bus's TLS files, read once at start so that a wrong path fails it.
fn events_tls(args: &NodeArgs) -> anyhow::Result<OwnedTLSConfig> {
    let read = |path: &PathBuf, flag: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} given with {flag}", path.display()))
    };
    let ca = args
        .events_tls_ca
        .as_ref()
        .map(|p| read(p, "--events-tls-ca"))
        .transpose()?;
    let identity = match (&args.events_tls_cert, &args.events_tls_key) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read(cert, "--events-tls-cert")?.into_bytes(),
            key: read(key, "--events-tls-key")?.into_bytes(),
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain: ca,
    })
}

fn cookie_keys(args: &NodeArgs) -> anyhow::Result<CookieKeys> {
    if args.cookie_keys.is_empty() {
        tracing::warn!(
            "no --cookie-key / SESSION_COOKIE_KEYS given: generated a random cookie-signing key \
             for this process. Other nodes will reject its cookies; set SESSION_COOKIE_KEYS to \
             share one."
        );
        return Ok(CookieKeys::new(&[random_secret()])?);
    }
    CookieKeys::new(&args.cookie_keys).context("--cookie-key")
}

fn jwt_keys(args: &NodeArgs) -> anyhow::Result<JwtKeys> {
    let mut keys: Vec<JwtKey> = args
        .jwt_keys
        .iter()
        .map(|spec| JwtKey::parse_spec(spec))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        let secret = match &args.jwt_secret {
            Some(s) => s.clone(),
            None => {
                tracing::warn!(
                    "no --jwt-key / --jwt-secret given: generated a random HS256 secret for this \
                     process. Tokens die with it, and other nodes will reject them; set \
                     JWT_SECRET (or JWT_KEYS) to share one."
                );
                random_secret()
            }
        };
        keys.push(JwtKey::hs256("hs1", secret.as_bytes())?);
    }
    let current = keys.remove(0);
    Ok(JwtKeys::new(current, keys)?)
}

/// 32 random bytes as base64: a secret that can travel in an environment variable.
pub fn random_secret() -> String {
    STANDARD.encode(random_bytes::<32>())
}
