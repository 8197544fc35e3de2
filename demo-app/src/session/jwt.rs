//! `jwt` mode: the whole session rides in a signed token in the client's cookie. No node
//! stores anything, so any node can serve any request; the costs are a bigger request and
//! no way to revoke a token before it expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Session, SessionData, SessionId};
use crate::error::AppError;

/// What the token carries: the session's data plus its id, so the page can show one.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sid: String,
    #[serde(flatten)]
    data: SessionData,
    iat: u64,
    exp: u64,
}

pub struct JwtSessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl JwtSessions {
    /// HS256 with `secret`. The algorithm is pinned: a token claiming any other one —
    /// `none` included — is rejected, whatever its header says.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat"]);
        validation.leeway = 5;
        JwtSessions {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Verifies the token. Anything wrong with it gives an anonymous session; why is
    /// logged, never shown to the client.
    pub fn load(&self, token: Option<String>) -> Session {
        let Some(token) = token else {
            return Session::default();
        };
        match jsonwebtoken::decode::<Claims>(&token, &self.decoding, &self.validation) {
            Ok(t) => Session {
                id: SessionId::parse(&t.claims.sid),
                data: t.claims.data,
            },
            Err(err) => {
                tracing::info!(%err, "session token rejected; treating the visitor as anonymous");
                Session::default()
            }
        }
    }

    pub fn issue(&self, id: &SessionId, data: &SessionData) -> Result<String, AppError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sid: id.as_str().to_string(),
            data: data.clone(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AppError::Token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> JwtSessions {
        JwtSessions::new(b"test secret of enough length!!", Duration::from_secs(60))
    }

    #[test]
    fn round_trip_keeps_the_data() {
        let s = sessions();
        let id = SessionId::generate();
        let data = SessionData {
            user: Some("ada".into()),
            cart: vec!["tea".into()],
            version: 3,
        };
        let loaded = s.load(Some(s.issue(&id, &data).expect("issue")));
        assert_eq!(loaded.id, Some(id));
        assert_eq!(loaded.data, data);
    }

    #[test]
    fn tampered_other_key_and_alg_none_are_anonymous() {
        let s = sessions();
        let data = SessionData {
            user: Some("ada".into()),
            ..Default::default()
        };
        let token = s.issue(&SessionId::generate(), &data).expect("issue");
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1].replace_range(0..2, "ey");
        parts[1].push('A');
        assert_eq!(s.load(Some(parts.join("."))).data, SessionData::default());

        let other = JwtSessions::new(b"another secret of enough length", Duration::from_secs(60));
        let foreign = other.issue(&SessionId::generate(), &data).expect("issue");
        assert_eq!(s.load(Some(foreign)).data, SessionData::default());

        // {"alg":"none"} header with the original claims and no signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            token.split('.').nth(1).unwrap_or("")
        );
        assert_eq!(s.load(Some(none)).data, SessionData::default());
        assert_eq!(s.load(Some("garbage".into())).data, SessionData::default());
    }
}
