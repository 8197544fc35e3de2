//! The affinity cookie: `<name>=<backend-id>.<base64url(HMAC-SHA256(key, backend-id))>`.
//!
//! The cookie names its backend, so the LB keeps no table and replicas sharing the key
//! route a client alike. The MAC stops a client from choosing (or overloading) a backend
//! by writing the cookie itself. Like HAProxy's `cookie ... insert indirect`, the cookie is
//! removed from the request before it goes upstream, so applications never see it.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::config::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// Length of a base64url (unpadded) SHA-256 MAC; anything else is rejected before hashing.
const MAC_TEXT_LEN: usize = 43;

/// Signs, verifies and strips the LB's affinity cookie.
#[derive(Clone)]
pub struct CookieAffinity {
    name: String,
    mac: HmacSha256,
}

impl fmt::Debug for CookieAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieAffinity")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CookieAffinity {
    /// A signer for cookie `name` keyed with `key` (any length works for HMAC).
    pub fn new(name: String, key: &[u8]) -> Result<Self, ConfigError> {
        let mac =
            HmacSha256::new_from_slice(key).map_err(|e| ConfigError::CookieKey(e.to_string()))?;
        Ok(CookieAffinity { name, mac })
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cookie value that pins a client to backend `id`.
    pub fn sign(&self, id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{id}.{tag}")
    }

    /// The backend id in `value` if its MAC is right (compared in constant time).
    pub fn verify<'a>(&self, value: &'a [u8]) -> Option<&'a str> {
        let value = std::str::from_utf8(value).ok()?;
        let (id, tag) = value.rsplit_once('.')?;
        if tag.len() != MAC_TEXT_LEN {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.verify_slice(&tag).ok()?;
        Some(id)
    }

    /// The `Set-Cookie` header value pinning a client to backend `id`.
    pub fn set_cookie(&self, id: &str) -> Option<HeaderValue> {
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax",
            self.name,
            self.sign(id)
        );
        HeaderValue::try_from(cookie).ok()
    }

    /// Removes every cookie of ours from the `Cookie` headers, leaving the others as they
    /// were, and returns the backend id of the first one whose signature holds.
    pub fn take(&self, headers: &mut HeaderMap) -> Option<String> {
        let mut pinned = None;
        let mut found = false;
        let mut kept = Vec::new();
        for value in headers.get_all(COOKIE) {
            let mut others: Vec<&[u8]> = Vec::new();
            for pair in value.as_bytes().split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                let ours = pair
                    .strip_prefix(self.name.as_bytes())
                    .and_then(|rest| rest.strip_prefix(b"="));
                match ours {
                    Some(cookie) => {
                        found = true;
                        if pinned.is_none() {
                            pinned = self.verify(cookie).map(str::to_owned);
                        }
                    }
                    None if pair.is_empty() => {}
                    None => others.push(pair),
                }
            }
            kept.push(others.join(&b"; "[..]));
        }
        if found {
            headers.remove(COOKIE);
            for value in kept.iter().filter(|v| !v.is_empty()) {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    headers.append(COOKIE, value);
                }
            }
        }
        pinned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(key: &str) -> CookieAffinity {
        CookieAffinity::new("lb_backend".to_string(), key.as_bytes()).expect("HMAC takes any key")
    }

    fn cookie_headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(COOKIE, HeaderValue::from_str(value).expect("valid header"));
        }
        headers
    }

    fn cookies(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    #[test]
    fn signed_value_verifies() {
        let s = signer("0123456789abcdef");
        let value = s.sign("127.0.0.1:3001");
        assert_eq!(s.verify(value.as_bytes()), Some("127.0.0.1:3001"));
    }

    #[test]
    fn tampering_is_detected() {
        let s = signer("0123456789abcdef");
        let value = s.sign("app1");
        let (_, tag) = value.split_once('.').expect("id.tag");
        let swapped_id = format!("app2.{tag}");
        assert_eq!(s.verify(swapped_id.as_bytes()), None);
        let mut flipped = value.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(s.verify(&flipped), None);
        assert_eq!(signer("another key, 16+").verify(value.as_bytes()), None);
        for garbage in [
            &b""[..],
            b"app1",
            b"app1.",
            b".",
            b"\xff\xfe.abc",
            &[b'a'; 8192],
        ] {
            assert_eq!(s.verify(garbage), None);
        }
    }

    #[test]
    fn take_strips_ours_and_keeps_the_rest() {
        let s = signer("0123456789abcdef");
        let value = s.sign("app1");
        let mut headers = cookie_headers(&[&format!("a=1; lb_backend={value}; b=2")]);
        assert_eq!(s.take(&mut headers).as_deref(), Some("app1"));
        assert_eq!(cookies(&headers), ["a=1; b=2"]);
    }

    #[test]
    fn take_drops_forged_cookie_and_empty_header() {
        let s = signer("0123456789abcdef");
        let mut headers = cookie_headers(&["lb_backend=app1.forged", "x=y"]);
        assert_eq!(s.take(&mut headers), None);
        assert_eq!(cookies(&headers), ["x=y"]);
    }

    #[test]
    fn take_leaves_headers_alone_without_our_cookie() {
        let s = signer("0123456789abcdef");
        let mut headers = cookie_headers(&["lb_backendx=1;;  c=3"]);
        assert_eq!(s.take(&mut headers), None);
        assert_eq!(cookies(&headers), ["lb_backendx=1;;  c=3"]);
    }

    #[test]
    fn set_cookie_has_the_attributes() {
        let s = signer("0123456789abcdef");
        let header = s.set_cookie("app1").expect("valid header");
        let text = header.to_str().expect("ascii");
        assert!(text.starts_with("lb_backend=app1."));
        assert!(text.ends_with("; Path=/; HttpOnly; SameSite=Lax"));
    }
}
