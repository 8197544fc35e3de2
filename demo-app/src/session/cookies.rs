//! The session cookies: reading them from a request and building `Set-Cookie`.
//!
//! Attributes are the safe defaults for a session cookie: HttpOnly (scripts can't read
//! it), SameSite=Lax (not sent on cross-site POSTs, still sent when following a link
//! in), Path=/.

use std::time::Duration;

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponseParts, ResponseParts};
use cookie::{Cookie, SameSite};

use super::SessionId;

/// Cookie holding the session id in `local` and `shared` modes.
pub const SESSION_COOKIE: &str = "sid";
/// Cookie holding the signed token in `jwt` mode.
pub const TOKEN_COOKIE: &str = "token";

/// A `Set-Cookie` header to add to a response.
#[derive(Debug)]
pub struct SetCookie(Cookie<'static>);

impl IntoResponseParts for SetCookie {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        // A cookie built here only holds base64url ids or JWTs, always valid header bytes;
        // should that ever not hold, the response goes out without the cookie.
        if let Ok(value) = HeaderValue::from_str(&self.0.encoded().to_string()) {
            res.headers_mut().append(SET_COOKIE, value);
        }
        Ok(res)
    }
}

/// The first cookie named `name` across all `Cookie` headers, if any.
fn find(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse_encoded)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// The session id the client sent, if it has the shape of one we issue.
pub fn session_id(headers: &HeaderMap) -> Option<SessionId> {
    find(headers, SESSION_COOKIE).and_then(|v| SessionId::parse(&v))
}

/// The token the client sent, unverified.
pub fn token(headers: &HeaderMap) -> Option<String> {
    find(headers, TOKEN_COOKIE)
}

fn build(name: &'static str, value: String, max_age: Duration) -> SetCookie {
    let max_age = cookie::time::Duration::seconds(i64::try_from(max_age.as_secs()).unwrap_or(0));
    SetCookie(
        Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .max_age(max_age)
            .build(),
    )
}

pub fn set_session_id(id: &SessionId, ttl: Duration) -> SetCookie {
    build(SESSION_COOKIE, id.as_str().to_string(), ttl)
}

pub fn set_token(token: &str, ttl: Duration) -> SetCookie {
    build(TOKEN_COOKIE, token.to_string(), ttl)
}

pub fn clear_session_id() -> SetCookie {
    build(SESSION_COOKIE, String::new(), Duration::ZERO)
}

pub fn clear_token() -> SetCookie {
    build(TOKEN_COOKIE, String::new(), Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let id = SessionId::generate();
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; lb_backend=x"));
        let both = format!("b=2; {SESSION_COOKIE}={}", id.as_str());
        headers.append(COOKIE, HeaderValue::from_str(&both).expect("ascii"));
        assert_eq!(session_id(&headers), Some(id));
    }

    #[test]
    fn malformed_cookie_headers_give_nothing() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static(";;=;sid=%%%;sid"));
        assert_eq!(session_id(&headers), None);
    }

    #[test]
    fn set_cookie_has_safe_attributes() {
        let c = set_session_id(&SessionId::generate(), Duration::from_secs(60));
        let s = c.0.to_string();
        assert!(s.contains("HttpOnly") && s.contains("SameSite=Lax") && s.contains("Path=/"));
    }
}
