//! Keys for `jwt` mode. Every key has a `kid` that tokens name in their header and is
//! pinned to one algorithm, so a token can never pick how it is checked.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// Kids travel in every token and in log lines; keep them short and plain.
const MAX_KID_LEN: usize = 64;
/// PKCS#8 v1 `PrivateKeyInfo` for Ed25519 (RFC 8410 §7) up to the 32-byte seed. Building
/// the DER by hand keeps key generation infallible.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// One key: verifies tokens whose header names its `kid`, and signs if it holds the
/// private half (or the shared secret).
#[derive(Clone)]
pub struct JwtKey {
    kid: String,
    alg: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
}

impl JwtKey {
    /// A shared-secret key; every node that verifies can also sign.
    pub fn hs256(kid: &str, secret: &[u8]) -> Result<Self, KeySpecError> {
        check_kid(kid)?;
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(KeySpecError::ShortSecret {
                kid: kid.to_string(),
                len: secret.len(),
            });
        }
        Ok(JwtKey {
            kid: kid.to_string(),
            alg: Algorithm::HS256,
            encoding: Some(EncodingKey::from_secret(secret)),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// An Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes):
    /// signs, and verifies with the public half derived from it.
    pub fn ed25519_private_pem(kid: &str, pem: &[u8]) -> Result<Self, KeySpecError> {
        check_kid(kid)?;
        let key = std::str::from_utf8(pem)
            .ok()
            .and_then(|pem| SigningKey::from_pkcs8_pem(pem).ok())
            .ok_or_else(|| KeySpecError::NotEd25519Pem {
                kid: kid.to_string(),
                wanted: "private",
            })?;
        Ok(Self::from_signing_key(kid, &key))
    }

    /// An Ed25519 public key (SPKI PEM): verifies only. Lets nodes that never issue
    /// tokens, or keys retired from signing, do without the private half.
    pub fn ed25519_public_pem(kid: &str, pem: &[u8]) -> Result<Self, KeySpecError> {
        check_kid(kid)?;
        let key = std::str::from_utf8(pem)
            .ok()
            .and_then(|pem| VerifyingKey::from_public_key_pem(pem).ok())
            .ok_or_else(|| KeySpecError::NotEd25519Pem {
                kid: kid.to_string(),
                wanted: "public",
            })?;
        Ok(JwtKey {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: None,
            decoding: DecodingKey::from_ed_der(key.as_bytes()),
        })
    }

    /// A fresh Ed25519 key from the OS CSPRNG, for a demo or a single node: tokens die with
    /// the process. The kid is checked by [`JwtKeys::new`].
    pub fn generate_ed25519(kid: &str) -> Self {
        Self::from_signing_key(kid, &SigningKey::from_bytes(&crate::random_bytes::<32>()))
    }

    /// Parses `KID:hs256:SECRET` or `KID:eddsa:PATH` (PATH a private key PEM to sign, or a
    /// public key PEM to only verify), so nodes can be configured by flag or environment.
    pub fn parse_spec(spec: &str) -> Result<Self, KeySpecError> {
        let mut parts = spec.splitn(3, ':');
        let (Some(kid), Some(alg), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            // Without two colons the string may well be a bare secret: don't echo any of it.
            return Err(KeySpecError::Shape);
        };
        check_kid(kid)?;
        if alg.eq_ignore_ascii_case("hs256") {
            Self::hs256(kid, material.as_bytes())
        } else if alg.eq_ignore_ascii_case("eddsa") {
            let path = PathBuf::from(material);
            let pem = std::fs::read(&path).map_err(|source| KeySpecError::ReadPem {
                kid: kid.to_string(),
                path: path.clone(),
                source,
            })?;
            Self::ed25519_private_pem(kid, &pem)
                .or_else(|_| Self::ed25519_public_pem(kid, &pem))
                .map_err(|_| KeySpecError::NotEd25519Pem {
                    kid: kid.to_string(),
                    wanted: "private or public",
                })
        } else {
            // ALG is not echoed: with a forgotten ALG it would be the start of the secret.
            Err(KeySpecError::UnknownAlgorithm(kid.to_string()))
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub(super) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    fn from_signing_key(kid: &str, key: &SigningKey) -> Self {
        let mut der = [0u8; 48];
        der[..16].copy_from_slice(&ED25519_PKCS8_PREFIX);
        der[16..].copy_from_slice(key.as_bytes());
        JwtKey {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: Some(EncodingKey::from_ed_der(&der)),
            // jsonwebtoken's Ed25519 verifier takes the raw 32-byte public key.
            decoding: DecodingKey::from_ed_der(key.verifying_key().as_bytes()),
        }
    }
}

/// Shows which key it is, never its material.
impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("signs", &self.encoding.is_some())
            .finish()
    }
}

/// The key set of a node: one current key that signs new tokens, and older keys kept
/// for verification until the tokens they signed have expired.
#[derive(Clone)]
pub struct JwtKeys {
    pub(super) current_kid: String,
    pub(super) current_alg: Algorithm,
    pub(super) signing: EncodingKey,
    pub(super) all: HashMap<String, JwtKey>,
}

impl JwtKeys {
    /// `current` must be able to sign; all kids must be distinct, or a token's kid would
    /// not say which key checks it.
    pub fn new(mut current: JwtKey, previous: Vec<JwtKey>) -> Result<Self, KeySpecError> {
        check_kid(&current.kid)?;
        let Some(signing) = current.encoding.take() else {
            return Err(KeySpecError::CannotSign(current.kid));
        };
        let (current_kid, current_alg) = (current.kid.clone(), current.alg);
        let mut all = HashMap::with_capacity(previous.len() + 1);
        all.insert(current.kid.clone(), current);
        for mut key in previous {
            check_kid(&key.kid)?;
            if all.contains_key(&key.kid) {
                return Err(KeySpecError::DuplicateKid(key.kid));
            }
            // Older keys only verify; dropping their signing half keeps it out of memory.
            key.encoding = None;
            all.insert(key.kid.clone(), key);
        }
        Ok(JwtKeys {
            current_kid,
            current_alg,
            signing,
            all,
        })
    }
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.all.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("JwtKeys")
            .field("current", &self.current_kid)
            .field("alg", &self.current_alg)
            .field("kids", &kids)
            .finish()
    }
}

/// A key that cannot be used as given. Messages name the key (never its material) and
/// say how to fix the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeySpecError {
    #[error(
        "JWT key spec: expected KID:ALG:MATERIAL with ALG hs256 or eddsa, \
         e.g. \"k1:hs256:<secret of 32+ bytes>\" or \"k1:eddsa:/etc/session/k1.pem\""
    )]
    Shape,
    #[error(
        "JWT key id ({len} characters): use 1 to {MAX_KID_LEN} characters from \
         A-Z a-z 0-9 . _ -, e.g. \"2025-06\""
    )]
    BadKid { len: usize },
    #[error(
        "JWT key {0:?}: the algorithm is neither hs256 (shared secret) nor eddsa \
         (Ed25519 PEM file); write KID:hs256:SECRET or KID:eddsa:PATH"
    )]
    UnknownAlgorithm(String),
    #[error(
        "JWT key {kid:?}: the hs256 secret is {len} bytes; use at least \
         {MIN_HS256_SECRET_LEN} random bytes (e.g. `openssl rand -base64 48`)"
    )]
    ShortSecret { kid: String, len: usize },
    #[error(
        "JWT key {kid:?}: cannot read {}: {source}; give the path of an Ed25519 PEM file",
        .path.display()
    )]
    ReadPem {
        kid: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "JWT key {kid:?}: not an Ed25519 {wanted} key PEM; make one with \
         `openssl genpkey -algorithm ed25519 -out k.pem` (public half: \
         `openssl pkey -in k.pem -pubout`)"
    )]
    NotEd25519Pem { kid: String, wanted: &'static str },
    #[error(
        "JWT key {0:?} is verify-only (a public key) and cannot be the current signing key; \
         give its private key PEM, or make a key that can sign current"
    )]
    CannotSign(String),
    #[error("JWT key {0:?} is given twice; give every key its own kid")]
    DuplicateKid(String),
}

fn check_kid(kid: &str) -> Result<(), KeySpecError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if kid.is_empty() || kid.len() > MAX_KID_LEN || !kid.chars().all(plain) {
        return Err(KeySpecError::BadKid {
            len: kid.chars().count(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// A private and a public PEM of one fresh key, as openssl would write them.
    pub(in crate::jwt) fn ed25519_pems() -> (String, String) {
        let key = SigningKey::from_bytes(&crate::random_bytes::<32>());
        let private = key.to_pkcs8_pem(LineEnding::LF).expect("encode private");
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("encode public");
        (private.to_string(), public)
    }

    /// A file in the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> Self {
            let name = format!(
                "session-layer-jwt-{}-{}.pem",
                std::process::id(),
                u64::from_le_bytes(crate::random_bytes::<8>())
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).expect("write temp file");
            TempFile(path)
        }

        fn spec(&self, kid: &str) -> String {
            format!("{kid}:eddsa:{}", self.0.display())
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn hand_built_pkcs8_is_what_dalek_reads() {
        let key = SigningKey::from_bytes(&crate::random_bytes::<32>());
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(key.as_bytes());
        let parsed = SigningKey::from_pkcs8_der(&der).expect("parse");
        assert_eq!(parsed.as_bytes(), key.as_bytes());
    }

    #[test]
    fn specs_parse_into_keys() {
        let key = JwtKey::parse_spec(&format!("k1:hs256:{SECRET}")).expect("hs256");
        assert_eq!((key.kid(), key.algorithm()), ("k1", Algorithm::HS256));
        // The secret may itself contain colons; only the first two split.
        let key = JwtKey::parse_spec(&format!("k2:HS256:{SECRET}:more")).expect("hs256");
        assert!(key.encoding.is_some());

        let (private, public) = ed25519_pems();
        let (private, public) = (TempFile::new(&private), TempFile::new(&public));
        let key = JwtKey::parse_spec(&private.spec("ed1")).expect("private pem");
        assert_eq!((key.kid(), key.algorithm()), ("ed1", Algorithm::EdDSA));
        assert!(key.encoding.is_some());
        let key = JwtKey::parse_spec(&public.spec("ed1")).expect("public pem");
        assert!(key.encoding.is_none());
    }

    #[test]
    fn bad_specs_say_what_to_fix_without_echoing_secrets() {
        let secret = "a-bare-secret-that-someone-pasted-alone";
        let err = JwtKey::parse_spec(secret).expect_err("no colons");
        assert!(matches!(err, KeySpecError::Shape));
        assert!(!err.to_string().contains(secret));
        let err = JwtKey::parse_spec(&format!("k1:{secret}")).expect_err("no alg");
        assert!(!err.to_string().contains(secret), "{err}");

        let err = JwtKey::parse_spec("k1:hs256:short").expect_err("short secret");
        assert!(matches!(err, KeySpecError::ShortSecret { len: 5, .. }));
        assert!(!err.to_string().contains("short"), "{err}");
        assert!(err.to_string().contains("at least 32"), "{err}");

        let err = JwtKey::parse_spec(&format!("k1:rs256:{SECRET}")).expect_err("alg");
        assert!(matches!(err, KeySpecError::UnknownAlgorithm(_)));
        assert!(err.to_string().contains("hs256"), "{err}");

        for kid in ["", "has space", "ünïcode", &"k".repeat(65)] {
            let err = JwtKey::parse_spec(&format!("{kid}:hs256:{SECRET}")).expect_err(kid);
            assert!(matches!(err, KeySpecError::BadKid { .. }), "{kid}: {err}");
        }

        let err = JwtKey::parse_spec("k1:eddsa:/nonexistent/k1.pem").expect_err("missing");
        assert!(matches!(err, KeySpecError::ReadPem { .. }));
        assert!(err.to_string().contains("/nonexistent/k1.pem"), "{err}");

        let garbage =
            TempFile::new("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n");
        let err = JwtKey::parse_spec(&garbage.spec("k1")).expect_err("garbage pem");
        assert!(matches!(err, KeySpecError::NotEd25519Pem { .. }));
        assert!(err.to_string().contains("openssl genpkey"), "{err}");
    }

    #[test]
    fn pem_constructors_want_the_right_half() {
        let (private, public) = ed25519_pems();
        assert!(JwtKey::ed25519_private_pem("k", public.as_bytes()).is_err());
        assert!(JwtKey::ed25519_public_pem("k", private.as_bytes()).is_err());
        assert!(JwtKey::ed25519_private_pem("k", &[0xff, 0xfe]).is_err());
        assert!(JwtKey::ed25519_public_pem("k", b"").is_err());
    }

    #[test]
    fn key_sets_need_a_signing_current_key_and_distinct_kids() {
        let (_, public) = ed25519_pems();
        let verify_only = JwtKey::ed25519_public_pem("old", public.as_bytes()).expect("public");
        let err = JwtKeys::new(verify_only.clone(), vec![]).expect_err("cannot sign");
        assert!(matches!(err, KeySpecError::CannotSign(ref kid) if kid == "old"));

        let current = JwtKey::hs256("k1", SECRET.as_bytes()).expect("hs256");
        let twin = JwtKey::generate_ed25519("k1");
        let err = JwtKeys::new(current.clone(), vec![twin]).expect_err("duplicate");
        assert!(matches!(err, KeySpecError::DuplicateKid(ref kid) if kid == "k1"));

        let err = JwtKeys::new(JwtKey::generate_ed25519("no spaces"), vec![]).expect_err("kid");
        assert!(matches!(err, KeySpecError::BadKid { .. }));

        let keys = JwtKeys::new(current, vec![verify_only]).expect("keys");
        assert_eq!(keys.current_kid, "k1");
        assert_eq!(keys.all.len(), 2);
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = JwtKey::hs256("k1", SECRET.as_bytes()).expect("hs256");
        let keys = JwtKeys::new(key.clone(), vec![JwtKey::generate_ed25519("k0")]).expect("keys");
        for shown in [format!("{key:?}"), format!("{keys:?}")] {
            assert!(
                !shown.contains(SECRET) && !shown.contains("0123"),
                "{shown}"
            );
            assert!(shown.contains("k1"), "{shown}");
        }
    }
}
