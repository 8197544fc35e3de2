//! The session cookie: finding it in a request, verifying its signature under any of the
//! configured keys, and building the `Set-Cookie` that goes back.
//!
//! Signing uses the `cookie` crate's signed jar (HMAC-SHA256). Several keys may be
//! configured: the first signs, all verify, so a key can be rotated without logging
//! everyone out — add the new key first, drop the old one once its cookies have expired.

use std::time::Duration;

use cookie::{Cookie, CookieJar, Key};
use hmac::{Hmac, Mac};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::config::{CookieConfig, Secure};

/// Shortest accepted signing secret, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// The keys cookies are signed with; the first signs, every one verifies.
#[derive(Clone)]
pub struct CookieKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieKeys({} keys)", self.keys.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cookie key #{0} is {1} bytes; use at least {MIN_KEY_BYTES} random bytes")]
    TooShort(usize, usize),
    #[error("no cookie key given")]
    Empty,
}

impl CookieKeys {
    /// `secrets[0]` signs; the rest are older keys still accepted. Each secret is
    /// stretched into a signing key with HKDF, so any ≥32-byte random string will do.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<Self, KeyError> {
        if secrets.is_empty() {
            return Err(KeyError::Empty);
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.as_ref();
                if s.len() < MIN_KEY_BYTES {
                    Err(KeyError::TooShort(i + 1, s.len()))
                } else {
                    Ok(Key::derive_from(s))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(CookieKeys { keys })
    }

    /// Keys for authenticating what nodes tell each other (session state carried in
    /// events), derived from the cookie keys every node already shares; same order.
    pub(crate) fn derived(&self, purpose: &str) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter_map(|k| {
                let mut mac = Hmac::<Sha256>::new_from_slice(k.signing()).ok()?;
                mac.update(purpose.as_bytes());
                Some(mac.finalize().into_bytes().to_vec())
            })
            .collect()
    }

    fn sign(&self, cookie: Cookie<'static>) -> Option<String> {
        let name = cookie.name().to_string();
        let mut jar = CookieJar::new();
        jar.signed_mut(self.keys.first()?).add(cookie);
        jar.get(&name).map(|c| c.value().to_string())
    }

    fn verify(&self, cookie: Cookie<'static>) -> Option<String> {
        let jar = CookieJar::new();
        self.keys
            .iter()
            .find_map(|key| jar.signed(key).verify(cookie.clone()))
            .map(|c| c.value().to_string())
    }
}

/// Reads and writes the session cookie under one configuration.
#[derive(Debug, Clone)]
pub struct Cookies {
    config: CookieConfig,
    wire_name: String,
    keys: Option<CookieKeys>,
}

impl Cookies {
    /// With `keys`, values are signed and verified; without (JWT mode, where the token
    /// signs itself), they travel as they are.
    pub fn new(config: CookieConfig, keys: Option<CookieKeys>) -> Self {
        Cookies {
            wire_name: config.wire_name(),
            config,
            keys,
        }
    }

    /// The cookie's verified value, if the request carries one. `Some(None)`: it carries
    /// one whose signature fails under every key (forged, tampered, or from a retired
    /// key) — the caller clears it.
    pub fn read(&self, headers: &HeaderMap) -> Option<Option<String>> {
        let lines = || {
            headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
        };
        let decoded = lines()
            .flat_map(Cookie::split_parse_encoded)
            .filter_map(Result::ok)
            .find(|c| c.name() == self.wire_name);
        let Some(cookie) = decoded else {
            // Ours but not percent-decodable (`%AF` is no UTF-8): tampered, so cleared too.
            let ours = lines()
                .flat_map(|line| line.split(';'))
                .filter_map(|pair| pair.split_once('='))
                .any(|(name, _)| name.trim() == self.wire_name);
            return ours.then_some(None);
        };
        let cookie = cookie.into_owned();
        Some(match &self.keys {
            Some(keys) => keys.verify(cookie),
            None => Some(cookie.value().to_string()),
        })
    }

    /// A `Set-Cookie` carrying `value` for `max_age`; `tls` says whether the request came
    /// over TLS.
    pub fn set(&self, value: String, max_age: Duration, tls: bool) -> Option<HeaderValue> {
        let value = match &self.keys {
            Some(keys) => keys.sign(Cookie::new(self.wire_name.clone(), value))?,
            None => value,
        };
        self.header(value, max_age, tls)
    }

    /// A `Set-Cookie` that removes the cookie from the browser.
    pub fn clear(&self, tls: bool) -> Option<HeaderValue> {
        self.header(String::new(), Duration::ZERO, tls)
    }

    fn header(&self, value: String, max_age: Duration, tls: bool) -> Option<HeaderValue> {
        let secure = self.config.host_prefix
            || match self.config.secure {
                Secure::Always => true,
                Secure::FromForwardedProto => tls,
                Secure::Never => false,
            };
        let max_age = cookie::time::Duration::seconds(i64::try_from(max_age.as_secs()).ok()?);
        let cookie = Cookie::build((self.wire_name.clone(), value))
            .path("/")
            .http_only(true)
            .same_site(self.config.same_site)
            .secure(secure)
            .max_age(max_age)
            .build();
        HeaderValue::from_str(&cookie.encoded().to_string()).ok()
    }
}

/// Whether the proxy in front says the request came over TLS.
pub fn forwarded_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Appends `value` as a `Set-Cookie` header.
pub fn append(headers: &mut HeaderMap, value: Option<HeaderValue>) {
    if let Some(value) = value {
        headers.append(SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(cookie).expect("ascii"));
        headers
    }

    fn set_cookie_value(header: &HeaderValue) -> String {
        let parsed =
            Cookie::parse_encoded(header.to_str().expect("ascii").to_string()).expect("a cookie");
        format!("{}={}", parsed.name(), parsed.value())
    }

    fn cookies(secrets: &[&str]) -> Cookies {
        Cookies::new(
            CookieConfig::default(),
            Some(CookieKeys::new(secrets).expect("long enough")),
        )
    }

    const OLD: &str = "an old secret of at least thirty-two bytes";
    const NEW: &str = "a new secret of at least thirty-two bytes!";

    #[test]
    fn signed_values_round_trip_and_survive_rotation() {
        let old = cookies(&[OLD]);
        let sent = old.set("abc.1".into(), Duration::from_secs(60), false);
        let back = request_with(&set_cookie_value(&sent.expect("header")));
        assert_eq!(old.read(&back), Some(Some("abc.1".into())));
        let rotated = cookies(&[NEW, OLD]);
        assert_eq!(rotated.read(&back), Some(Some("abc.1".into())));
        let dropped = cookies(&[NEW]);
        assert_eq!(dropped.read(&back), Some(None));
        assert_eq!(dropped.read(&HeaderMap::new()), None);
    }

    #[test]
    fn tampered_or_unsigned_values_are_absent() {
        let c = cookies(&[OLD]);
        let sent = set_cookie_value(
            &c.set("abc.1".into(), Duration::from_secs(60), false)
                .expect("header"),
        );
        let tampered = sent.replace("abc.1", "abd.1");
        assert_eq!(c.read(&request_with(&tampered)), Some(None));
        assert_eq!(c.read(&request_with("sid=abc.1")), Some(None));
        assert_eq!(c.read(&request_with(";;=;sid=%%%;sid")), Some(None));
        // An escape that decodes to no UTF-8 is still our cookie, tampered with.
        assert_eq!(c.read(&request_with("sid=ab%AFcd")), Some(None));
        assert_eq!(c.read(&request_with("other=ab%AFcd")), None);
    }

    #[test]
    fn attributes_follow_the_configuration() {
        let c = cookies(&[OLD]);
        let plain = c
            .set("x".into(), Duration::from_secs(5), false)
            .expect("header");
        let plain = plain.to_str().expect("ascii");
        assert!(
            plain.contains("HttpOnly")
                && plain.contains("SameSite=Lax")
                && plain.contains("Path=/")
        );
        assert!(!plain.contains("Secure"));
        let tls = c
            .set("x".into(), Duration::from_secs(5), true)
            .expect("header");
        assert!(tls.to_str().expect("ascii").contains("Secure"));
        let host = Cookies::new(
            CookieConfig {
                host_prefix: true,
                ..CookieConfig::default()
            },
            None,
        );
        let h = host
            .set("x".into(), Duration::from_secs(5), false)
            .expect("header");
        let h = h.to_str().expect("ascii");
        assert!(h.starts_with("__Host-sid=") && h.contains("Secure"));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(
            CookieKeys::new(&["short"]),
            Err(KeyError::TooShort(1, 5))
        ));
        assert!(matches!(CookieKeys::new::<&str>(&[]), Err(KeyError::Empty)));
    }
}
