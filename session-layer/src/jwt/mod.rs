//! `jwt` mode's tokens: the whole session rides in a token the client carries, signed so
//! any node holding the keys can trust it without asking a store. The costs are a bigger
//! request and no revocation before `exp`, so keep `ttl` short.
//!
//! Checking is strict because the token is attacker-controlled input: the header's `kid`
//! picks the key and that key alone fixes the algorithm (no `none`, no HS256-with-a-public-
//! key confusion), time claims are checked with a small leeway for clock skew, and every
//! failure is a [`Rejected`] reason for the log, never a panic.

mod keys;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use keys::{JwtKey, JwtKeys, KeySpecError, MIN_HS256_SECRET_LEN};

use crate::record::unix_now;
use crate::{Record, SessionId};

/// Clock skew between nodes that is forgiven on `exp`, `nbf` and `iat` unless configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// Larger leeways are clamped: skew beyond this means a broken clock, not drift.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);
/// Longer tokens are rejected before any parsing, and never issued: 8 KiB is what common
/// servers accept in one header, and a browser keeps at most about 4 KiB per cookie.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Attacker-chosen values (a kid, an alg, a parser's complaint) are cut to this many
/// characters before they reach a log line.
const MAX_ECHO_LEN: usize = 64;
const MAX_REASON_LEN: usize = 160;

/// What a token carries: a [`Record`] with its session id, plus the time claims. Claim
/// names are short because they travel with every request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Session id, base64url, 22 characters. Left as a string: the layer parses it.
    pub sid: String,
    pub data: Map<String, Value>,
    /// Session version: counts writes.
    pub ver: u64,
    /// Unix seconds the session began, for the absolute timeout (`iat` moves on every write).
    pub created: u64,
    /// The signed-in user, if any: JWT's registered claim for the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

/// Why a token was not accepted. For the log only: a client learns nothing beyond getting
/// a fresh session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("token is {len} bytes, over the {MAX_TOKEN_LEN}-byte limit")]
    TooLong { len: usize },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token header has no kid")]
    MissingKid,
    #[error("token names unknown key {0:?} (retired, or never ours)")]
    UnknownKid(String),
    #[error("token header says alg {found:?} but key {kid:?} is pinned to {expected:?}")]
    AlgorithmMismatch {
        kid: String,
        expected: Algorithm,
        found: String,
    },
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("signing the session token failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error(
        "session token would be {len} bytes, over the {MAX_TOKEN_LEN}-byte limit; \
         keep less data in the session"
    )]
    TooLarge { len: usize },
}

/// Issues and verifies session tokens with one node's key set.
#[derive(Clone)]
pub struct JwtCodec {
    /// `alg` and `kid` of the current key; nothing else, to keep tokens short.
    header: Header,
    signing: EncodingKey,
    verifiers: HashMap<String, Verifier>,
    ttl: Duration,
    leeway: u64,
}

#[derive(Clone)]
struct Verifier {
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl JwtCodec {
    /// `ttl` is how long a token stays valid after it is issued; `leeway` (see
    /// [`DEFAULT_LEEWAY`], clamped to [`MAX_LEEWAY`]) forgives clock skew between nodes.
    pub fn new(keys: JwtKeys, ttl: Duration, leeway: Duration) -> Self {
        if leeway > MAX_LEEWAY {
            tracing::warn!(?leeway, max = ?MAX_LEEWAY, "JWT leeway clamped");
        }
        let leeway = leeway.min(MAX_LEEWAY).as_secs();
        let verifiers = keys
            .all
            .into_iter()
            .map(|(kid, key)| {
                let alg = key.algorithm();
                // Exactly the kid's algorithm: the header cannot choose another.
                let mut validation = Validation::new(alg);
                validation.set_required_spec_claims(&["exp", "nbf", "iat"]);
                validation.validate_nbf = true;
                validation.leeway = leeway;
                let key = key.decoding().clone();
                (
                    kid,
                    Verifier {
                        alg,
                        key,
                        validation,
                    },
                )
            })
            .collect();
        let mut header = Header::new(keys.current_alg);
        header.typ = None;
        header.kid = Some(keys.current_kid);
        JwtCodec {
            header,
            signing: keys.signing,
            verifiers,
            ttl,
            leeway,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long after issue a token can still be accepted: its lifetime plus the leeway.
    /// A revocation must last at least this long.
    pub fn accepted_for(&self) -> Duration {
        self.ttl + Duration::from_secs(self.leeway)
    }

    /// Signs a token for `record` with the current key; `iat` = `nbf` = now,
    /// `exp` = now + ttl.
    pub fn issue(&self, id: &SessionId, record: &Record) -> Result<String, JwtError> {
        self.issue_at(unix_now(), id, record)
    }

    /// [`Self::issue`] as if the clock read `now`; tests use it to make stale or early tokens.
    pub(crate) fn issue_at(
        &self,
        now: u64,
        id: &SessionId,
        record: &Record,
    ) -> Result<String, JwtError> {
        let claims = TokenClaims {
            sid: id.as_str().to_string(),
            data: record.data.clone(),
            ver: record.version,
            created: record.created,
            sub: record.user.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(self.ttl.as_secs()),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.signing)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge { len: token.len() });
        }
        Ok(token)
    }

    /// Verifies the signature with the key the `kid` names, under that key's algorithm
    /// only, then the time claims. The `Err` says why, for the log.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, Rejected> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Rejected::TooLong { len: token.len() });
        }
        // Our own look at the header first, so a missing or unknown kid and a foreign alg
        // (`none` included, which jsonwebtoken cannot even parse) get their own reasons.
        let header = peek_header(token)?;
        let kid = header.kid.ok_or(Rejected::MissingKid)?;
        let verifier = self
            .verifiers
            .get(&kid)
            .ok_or_else(|| Rejected::UnknownKid(clip(&kid, MAX_ECHO_LEN)))?;
        if header.alg.parse::<Algorithm>().ok() != Some(verifier.alg) {
            return Err(Rejected::AlgorithmMismatch {
                kid,
                expected: verifier.alg,
                found: clip(&header.alg, MAX_ECHO_LEN),
            });
        }
        let claims =
            jsonwebtoken::decode::<TokenClaims>(token, &verifier.key, &verifier.validation)
                .map_err(|err| match err.kind() {
                    ErrorKind::InvalidSignature => Rejected::BadSignature,
                    ErrorKind::ExpiredSignature => Rejected::Expired,
                    ErrorKind::ImmatureSignature => Rejected::NotYetValid,
                    _ => Rejected::Malformed(clip(&err.to_string(), MAX_REASON_LEN)),
                })?
                .claims;
        // jsonwebtoken does not look at `iat`; one from the future was not issued by a
        // node with a sane clock.
        if claims.iat > unix_now().saturating_add(self.leeway) {
            return Err(Rejected::IssuedInFuture);
        }
        Ok(claims)
    }
}

/// Shows which keys and limits are in use, never key material.
impl fmt::Debug for JwtCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.verifiers.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("JwtCodec")
            .field("current", &self.header.kid)
            .field("alg", &self.header.alg)
            .field("kids", &kids)
            .field("ttl", &self.ttl)
            .field("leeway_secs", &self.leeway)
            .finish()
    }
}

/// The two header fields that decide how a token is checked. `alg` stays a string so
/// names jsonwebtoken does not know (`none`) are reported, not just unparsable.
#[derive(Deserialize)]
struct PeekedHeader {
    alg: String,
    kid: Option<String>,
}

fn peek_header(token: &str) -> Result<PeekedHeader, Rejected> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejected::Malformed("not three dot-separated parts".into()));
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Rejected::Malformed("header is not base64url".into()))?;
    serde_json::from_slice(&json)
        .map_err(|_| Rejected::Malformed("header is not JSON with a string alg".into()))
}

fn clip(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::keys::tests::ed25519_pems;
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const SID: &str = "AAAAAAAAAAAAAAAAAAAAAA";
    const TTL: u64 = 60;

    fn codec(current: JwtKey, previous: Vec<JwtKey>) -> JwtCodec {
        let keys = JwtKeys::new(current, previous).expect("keys");
        JwtCodec::new(keys, Duration::from_secs(TTL), DEFAULT_LEEWAY)
    }

    fn hs(kid: &str) -> JwtKey {
        JwtKey::hs256(kid, SECRET).expect("hs256")
    }

    fn id() -> SessionId {
        SessionId::parse(SID).expect("sid")
    }

    fn record(version: u64) -> Record {
        Record {
            version,
            created: 1_700_000_000,
            user: Some("ada".into()),
            data: data(),
        }
    }

    fn data() -> Map<String, Value> {
        let mut data = Map::new();
        data.insert("user".into(), json!("ada"));
        data.insert("cart".into(), json!(["tea", "scones"]));
        data
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    fn parts(token: &str) -> Vec<&str> {
        token.split('.').collect()
    }

    /// A token signed with `secret` under any header and claims we like.
    fn sign_hs(header: Value, claims: Value, secret: &[u8]) -> String {
        let header: Header = serde_json::from_value(header).expect("header");
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).expect("sign")
    }

    #[test]
    fn round_trips_with_hs256_and_eddsa() {
        let (private, _) = ed25519_pems();
        let ed = JwtKey::ed25519_private_pem("ed", private.as_bytes()).expect("pem");
        for (key, alg) in [
            (hs("hs"), "HS256"),
            (ed, "EdDSA"),
            (JwtKey::generate_ed25519("gen"), "EdDSA"),
        ] {
            let kid = key.kid().to_string();
            let codec = codec(key, vec![]);
            assert_eq!(codec.ttl(), Duration::from_secs(TTL));
            let token = codec.issue(&id(), &record(7)).expect("issue");
            let claims = codec.verify(&token).expect("verify");
            let carried = Record {
                version: claims.ver,
                created: claims.created,
                user: claims.sub.clone(),
                data: claims.data.clone(),
            };
            assert_eq!((claims.sid.as_str(), carried), (SID, record(7)));
            assert_eq!((claims.nbf, claims.exp), (claims.iat, claims.iat + TTL));
            let header = peek_header(&token).expect("header");
            assert_eq!((header.alg.as_str(), header.kid), (alg, Some(kid)));

            // No user, no `sub` claim at all.
            let anonymous = Record::default();
            let token = codec.issue(&id(), &anonymous).expect("issue");
            let payload = URL_SAFE_NO_PAD.decode(parts(&token)[1]).expect("b64");
            assert!(!String::from_utf8_lossy(&payload).contains("sub"));
            assert_eq!(codec.verify(&token).expect("verify").sub, None);
        }
    }

    #[test]
    fn rotation_keeps_old_tokens_until_their_key_is_removed() {
        let (private, public) = ed25519_pems();
        let old = JwtKey::ed25519_private_pem("2025-01", private.as_bytes()).expect("pem");
        let old_public = JwtKey::ed25519_public_pem("2025-01", public.as_bytes()).expect("pem");
        let old_token = codec(old.clone(), vec![])
            .issue(&id(), &record(1))
            .expect("issue");

        // The new key signs; the old one (private or public half) still verifies.
        for previous in [old, old_public] {
            let rotated = codec(hs("2025-02"), vec![previous]);
            assert_eq!(rotated.verify(&old_token).expect("old").ver, 1);
            let new_token = rotated.issue(&id(), &record(2)).expect("issue");
            assert_eq!(
                peek_header(&new_token).expect("header").kid.as_deref(),
                Some("2025-02")
            );
            assert_eq!(rotated.verify(&new_token).expect("new").ver, 2);
        }

        let retired = codec(hs("2025-02"), vec![]);
        assert_eq!(
            retired.verify(&old_token),
            Err(Rejected::UnknownKid("2025-01".into()))
        );
    }

    #[test]
    fn kid_is_required() {
        let codec = codec(hs("k1"), vec![]);
        let now = unix_now();
        let claims = json!({"sid": SID, "data": {}, "ver": 1, "created": now,
                            "iat": now, "nbf": now, "exp": now + TTL});
        let no_kid = sign_hs(json!({"alg": "HS256"}), claims, SECRET);
        assert_eq!(codec.verify(&no_kid), Err(Rejected::MissingKid));
    }

    #[test]
    fn alg_none_is_rejected() {
        let codec = codec(hs("k1"), vec![]);
        let token = codec.issue(&id(), &record(1)).expect("issue");
        let [_, payload, signature] = parts(&token)[..] else {
            panic!("three parts");
        };
        let none = b64(&json!({"alg": "none", "kid": "k1"}));
        for forged in [
            format!("{none}.{payload}."),
            format!("{none}.{payload}.{signature}"),
        ] {
            assert!(
                matches!(codec.verify(&forged), Err(Rejected::AlgorithmMismatch { ref found, .. }) if found == "none"),
                "{forged}"
            );
        }
        let none_no_kid = format!("{}.{payload}.", b64(&json!({"alg": "none"})));
        assert_eq!(codec.verify(&none_no_kid), Err(Rejected::MissingKid));
    }

    #[test]
    fn alg_is_pinned_per_kid() {
        let (private, public) = ed25519_pems();
        let ed = JwtKey::ed25519_private_pem("ed", private.as_bytes()).expect("pem");
        let codec = codec(hs("hs"), vec![ed]);
        let now = unix_now();
        let claims = json!({"sid": SID, "data": {}, "ver": 1, "created": now,
                            "iat": now, "nbf": now, "exp": now + TTL});

        // The classic confusion: HMAC keyed with the (public) Ed25519 key, naming the Ed kid.
        let confused = sign_hs(
            json!({"alg": "HS256", "kid": "ed"}),
            claims.clone(),
            public.as_bytes(),
        );
        assert_eq!(
            codec.verify(&confused),
            Err(Rejected::AlgorithmMismatch {
                kid: "ed".into(),
                expected: Algorithm::EdDSA,
                found: "HS256".into()
            })
        );

        // And the other way: an EdDSA token naming the HS256 kid.
        let ed_only = self::codec(
            JwtKey::ed25519_private_pem("hs", private.as_bytes()).expect("pem"),
            vec![],
        );
        let ed_token = ed_only.issue(&id(), &record(1)).expect("issue");
        assert_eq!(
            codec.verify(&ed_token),
            Err(Rejected::AlgorithmMismatch {
                kid: "hs".into(),
                expected: Algorithm::HS256,
                found: "EdDSA".into()
            })
        );

        // Another algorithm of the right family is still not the pinned one.
        let hs512 = sign_hs(json!({"alg": "HS512", "kid": "hs"}), claims, SECRET);
        assert!(matches!(
            codec.verify(&hs512),
            Err(Rejected::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn wrong_key_and_tampering_break_the_signature() {
        for (key, other) in [
            (hs("k1"), JwtKey::hs256("k1", &[7; 32]).expect("hs256")),
            (
                JwtKey::generate_ed25519("k1"),
                JwtKey::generate_ed25519("k1"),
            ),
        ] {
            let codec = codec(key, vec![]);
            let foreign = self::codec(other, vec![])
                .issue(&id(), &record(1))
                .expect("issue");
            assert_eq!(codec.verify(&foreign), Err(Rejected::BadSignature));

            let token = codec.issue(&id(), &record(1)).expect("issue");
            let [header, payload, signature] = parts(&token)[..] else {
                panic!("three parts");
            };
            let mut claims: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64"))
                    .expect("json");
            claims["data"]["user"] = json!("root");
            let tampered = format!("{header}.{}.{signature}", b64(&claims));
            assert_eq!(codec.verify(&tampered), Err(Rejected::BadSignature));
        }
    }

    #[test]
    fn every_one_character_change_is_rejected() {
        for key in [hs("k1"), JwtKey::generate_ed25519("k1")] {
            let codec = codec(key, vec![]);
            let token = codec.issue(&id(), &record(1)).expect("issue");
            for (i, c) in token.char_indices() {
                let replacement = if c == 'A' { 'B' } else { 'A' };
                let mut changed = token.clone();
                changed.replace_range(i..i + 1, &replacement.to_string());
                assert!(codec.verify(&changed).is_err(), "change at {i} accepted");
                let mut shorter = token.clone();
                shorter.remove(i);
                assert!(codec.verify(&shorter).is_err(), "removal at {i} accepted");
            }
        }
    }

    #[test]
    fn time_claims_are_checked_with_leeway() {
        let codec = codec(hs("k1"), vec![]);
        let now = unix_now();
        let leeway = DEFAULT_LEEWAY.as_secs();

        // exp = now - leeway - 1: expired even with leeway.
        let stale = codec
            .issue_at(now - TTL - leeway - 1, &id(), &record(1))
            .expect("issue");
        assert_eq!(codec.verify(&stale), Err(Rejected::Expired));
        // exp = now - 2: forgiven as skew.
        let just_expired = codec
            .issue_at(now - TTL - 2, &id(), &record(1))
            .expect("issue");
        assert!(codec.verify(&just_expired).is_ok());

        let early = codec.issue_at(now + 60, &id(), &record(1)).expect("issue");
        assert_eq!(codec.verify(&early), Err(Rejected::NotYetValid));
        let slightly_early = codec.issue_at(now + 2, &id(), &record(1)).expect("issue");
        assert!(codec.verify(&slightly_early).is_ok());

        // nbf fine but iat from the future.
        let header = json!({"alg": "HS256", "kid": "k1"});
        let claims = json!({"sid": SID, "data": {}, "ver": 1, "created": now,
                            "iat": now + 60, "nbf": now, "exp": now + TTL});
        let token = sign_hs(header.clone(), claims, SECRET);
        assert_eq!(codec.verify(&token), Err(Rejected::IssuedInFuture));

        // Every time claim is required.
        for missing in ["exp", "nbf", "iat"] {
            let mut claims = json!({"sid": SID, "data": {}, "ver": 1, "created": now,
                                    "iat": now, "nbf": now, "exp": now + TTL});
            claims.as_object_mut().expect("object").remove(missing);
            let token = sign_hs(header.clone(), claims, SECRET);
            assert!(
                matches!(codec.verify(&token), Err(Rejected::Malformed(_))),
                "{missing}"
            );
        }
    }

    #[test]
    fn leeway_is_configurable_and_clamped() {
        let keys = || JwtKeys::new(hs("k1"), vec![]).expect("keys");
        let now = unix_now();
        let strict = JwtCodec::new(keys(), Duration::from_secs(TTL), Duration::ZERO);
        let token = strict
            .issue_at(now - TTL - 2, &id(), &record(1))
            .expect("issue");
        assert_eq!(strict.verify(&token), Err(Rejected::Expired));

        let huge = JwtCodec::new(keys(), Duration::from_secs(TTL), Duration::MAX);
        assert!(format!("{huge:?}").contains("leeway_secs: 3600"));
        assert!(huge.verify(&token).is_ok());
        let ancient = huge.issue_at(0, &id(), &record(1)).expect("issue");
        assert_eq!(huge.verify(&ancient), Err(Rejected::Expired));
    }

    #[test]
    fn oversized_sessions_are_not_issued() {
        let codec = codec(hs("k1"), vec![]);
        let mut big = record(1);
        big.data
            .insert("blob".into(), json!("x".repeat(MAX_TOKEN_LEN)));
        assert!(matches!(
            codec.issue(&id(), &big),
            Err(JwtError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let codec = codec(JwtKey::generate_ed25519("k1"), vec![hs("k0")]);
        let ed = b64(&json!({"alg": "EdDSA", "kid": "k1"}));
        let hs = b64(&json!({"alg": "HS256", "kid": "k0"}));
        let body = b64(&json!({"sid": SID}));
        let huge = "a".repeat(100 * 1024);
        let huge_dots = format!("{0}.{0}.{0}", "a".repeat(40 * 1024));
        let long_kid = b64(&json!({"alg": "EdDSA", "kid": "\n".repeat(1000)}));
        // jsonwebtoken's own header parser echoes this value in its complaint.
        let long_echo = b64(&json!({"alg": "EdDSA", "kid": "k1", "jwk": "z".repeat(4000)}));
        let cases = [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "....".into(),
            "garbage".into(),
            "a.b.c".into(),
            "é.ü.ß".into(),
            "\0.\0.\0".into(),
            format!("{ed}.."),
            format!("{ed}.{body}."),
            format!("{ed}.{body}.AA"),
            format!("{ed}.{body}.{}", "A".repeat(86)),
            format!("{ed}.{body}.not*base64"),
            format!("{ed}.!!!.{}", "A".repeat(86)),
            format!("{hs}.{body}."),
            format!("{hs}.{body}.{}", "A".repeat(43)),
            format!("{}.{body}.", b64(&json!([1, 2]))),
            format!("{}.{body}.", b64(&json!({"alg": 7, "kid": "k1"}))),
            format!("{}.{body}.", b64(&json!({"alg": "EdDSA", "kid": 1}))),
            format!(
                "{}.{body}.",
                b64(&json!({"alg": "EdDSA", "kid": "k1", "x": [1]}))
            ),
            format!("{long_kid}.{body}."),
            format!("{long_echo}.{body}."),
            huge.clone(),
            huge_dots,
        ];
        for case in &cases {
            let err = codec.verify(case).expect_err("garbage accepted");
            assert!(err.to_string().len() < 200, "{err}");
        }
        assert_eq!(
            codec.verify(&huge),
            Err(Rejected::TooLong { len: 100 * 1024 })
        );
        assert!(matches!(
            codec.verify(&format!("{long_kid}.{body}.")),
            Err(Rejected::UnknownKid(kid)) if kid.len() == MAX_ECHO_LEN
        ));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let codec = codec(hs("k1"), vec![JwtKey::generate_ed25519("k0")]);
        let shown = format!("{codec:?}");
        assert!(shown.contains("k0") && shown.contains("k1"), "{shown}");
        assert!(!shown.contains("0123456789"), "{shown}");
    }
}
