//! Session identifiers: 128 bits from the OS CSPRNG, base64url without padding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Hashes session ids in this process's caches: foldhash, seeded at random per map. It
/// gives up SipHash's stronger defence against keys chosen to collide, which these keys
/// do not need (ids the server issued at random, from signed cookies, or event ids that
/// must parse as one), and costs a fraction of it on every request's lookups.
pub(crate) type IdHasher = foldhash::fast::RandomState;
/// A bounded in-process cache keyed by session id.
pub(crate) type IdCache<V> = moka::sync::Cache<SessionId, V, IdHasher>;

const BYTES: usize = 16;
/// Length of the encoded id: 16 bytes in base64url without padding.
const ENCODED_LEN: usize = 22;

/// A session id that is known to have the shape of one we issue. Parsing rejects
/// anything else before it can reach a store key or a log line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl TryFrom<String> for SessionId {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        SessionId::parse(&s).ok_or("not a session id")
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        id.0
    }
}

impl SessionId {
    /// A fresh, unguessable id.
    pub fn generate() -> Self {
        SessionId(URL_SAFE_NO_PAD.encode(random_bytes::<BYTES>()))
    }

    /// Accepts only strings that could be an id we issued.
    pub fn parse(s: &str) -> Option<Self> {
        let decoded = URL_SAFE_NO_PAD.decode(s).ok()?;
        (s.len() == ENCODED_LEN && decoded.len() == BYTES).then(|| SessionId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first characters, enough to tell sessions apart on a page or in a log without
    /// handing out the whole secret.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

/// `N` bytes from the OS CSPRNG, for ids and secrets.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Without the OS CSPRNG there is no safe id or secret to make: stop loudly.
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn foreign_strings_are_rejected() {
        for bad in [
            "",
            "abc",
            "../../etc/passwd",
            "AAAAAAAAAAAAAAAAAAAAA*",
            &"A".repeat(23),
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad:?}");
        }
    }
}
