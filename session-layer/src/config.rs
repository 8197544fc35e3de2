//! How sessions behave: timeouts and cookie attributes. Defaults follow what
//! express-session and Spring Session users expect.

use std::time::Duration;

use cookie::SameSite;

/// Timeouts and limits shared by every mode.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// A session unused for this long is gone. Reads count as use.
    pub idle_timeout: Duration,
    /// A session older than this is gone however busy it is (bounds a stolen cookie's
    /// life).
    pub absolute_timeout: Duration,
    /// How often a read-only request pushes the idle deadline out in the store: every
    /// read would cost a store write; once per interval keeps the timeout accurate to
    /// within it.
    pub touch_interval: Duration,
    /// Most sessions one user may hold; logging in past it ends the oldest. 0: no cap.
    pub max_sessions_per_user: usize,
    /// How many times a save whose session changed underneath is re-applied to the newer
    /// version before the request fails.
    pub max_save_retries: u32,
    pub cookie: CookieConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 60 * 60),
            touch_interval: Duration::from_secs(60),
            max_sessions_per_user: 10,
            max_save_retries: 8,
            cookie: CookieConfig::default(),
        }
    }
}

/// When to mark the cookie `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secure {
    /// Always: the service is only reached over TLS.
    Always,
    /// When the request arrived over TLS, as the proxy in front reports it with
    /// `X-Forwarded-Proto: https`. Only sound behind a proxy that sets (not forwards) it.
    FromForwardedProto,
    /// Never (plain-HTTP development).
    Never,
}

/// Attributes of the session cookie.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// Cookie name; with `host_prefix` it is sent as `__Host-<name>`.
    pub name: String,
    /// Lax by default: Strict drops the cookie on the redirect back from an identity
    /// provider, which breaks login flows.
    pub same_site: SameSite,
    pub secure: Secure,
    /// Use the `__Host-` prefix: the browser then insists on Secure, Path=/ and no Domain,
    /// so a sibling subdomain cannot plant or overwrite the cookie.
    pub host_prefix: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "sid".to_string(),
            same_site: SameSite::Lax,
            secure: Secure::FromForwardedProto,
            host_prefix: false,
        }
    }
}

impl CookieConfig {
    /// The name as it appears on the wire.
    pub fn wire_name(&self) -> String {
        if self.host_prefix {
            format!("__Host-{}", self.name)
        } else {
            self.name.clone()
        }
    }
}
