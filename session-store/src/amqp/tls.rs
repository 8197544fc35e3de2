//! TLS for AMQP clients (amqps), as RabbitMQ's `listeners.ssl` serves it: a listener of
//! its own whose connections are wrapped in rustls before the same AMQP code serves them.
//! Client certificates are verified against a CA when one is given, and can be required
//! (RabbitMQ's `verify_peer` with `fail_if_no_peer_cert`), and can name the user a client
//! logs in as with SASL EXTERNAL. What the management API shows of a TLS connection is
//! named as RabbitMQ names it; the API itself can be served over HTTPS with the same
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, ServerConnection};
use x509_parser::prelude::{FromDer as _, X509Certificate, X509Name};

/// Where the listener's certificate, key and client CA come from.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: CAs whose client certificates are accepted; without it, clients are not asked
    /// for one.
    pub ca: Option<PathBuf>,
    /// Refuse clients without a certificate the CA signed.
    pub require_client_cert: bool,
}

/// Why the TLS listener cannot start; each says which flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason}; give a PEM file with {flag}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
        flag: &'static str,
    },
    #[error("{path} holds no certificate; give a PEM file with {flag}")]
    NoCertificate { path: PathBuf, flag: &'static str },
    #[error("client certificates required but no CA given to check them: add --amqp-tls-ca")]
    RequireWithoutCa,
    #[error(
        "the certificate and key do not make a TLS server: {0}; check that they belong together"
    )]
    Rustls(#[from] rustls::Error),
    #[error("cannot check client certificates against {path}: {reason}")]
    Verifier { path: PathBuf, reason: String },
}

/// A loaded TLS listener configuration.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// The same certificate for the management API over HTTPS, with no client
    /// certificates asked for.
    pub https: TlsAcceptor,
    pub files: CertFiles,
}

/// The listener's certificate files and when each certificate in them expires (seconds
/// since the Unix epoch): what RabbitMQ's certificate-expiration health check reports.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub certfile: PathBuf,
    pub certfile_expiry: Vec<i64>,
    pub cacertfile: Option<PathBuf>,
    pub cacertfile_expiry: Vec<i64>,
}

impl Tls {
    /// Reads and checks the files; fails before anything is served.
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        let chain = read_certs(&config.cert, "the certificate chain", "--amqp-tls-cert")?;
        let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsError::Read {
            what: "the private key",
            path: config.key.clone(),
            reason: match e {
                pem::Error::NoItemsFound => "it holds no PEM private key".to_string(),
                e => e.to_string(),
            },
            flag: "--amqp-tls-key",
        })?;
        let mut files = CertFiles {
            certfile: config.cert.clone(),
            certfile_expiry: expiry(&chain),
            cacertfile: config.ca.clone(),
            cacertfile_expiry: Vec::new(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &config.ca {
            None if config.require_client_cert => return Err(TlsError::RequireWithoutCa),
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let cas = read_certs(path, "the client CA", "--amqp-tls-ca")?;
                files.cacertfile_expiry = expiry(&cas);
                for cert in cas {
                    roots.add(cert).map_err(|e| TlsError::Verifier {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
                let verifier = if config.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier.build().map_err(|e| TlsError::Verifier {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let server = builder.with_single_cert(chain.clone(), key.clone_key())?;
        // Browsers are not asked for a certificate: the API has its own logins.
        let mut https = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            https: TlsAcceptor::from(Arc::new(https)),
            files,
        })
    }
}

/// When each certificate stops being valid; ones that do not parse are left out (rustls
/// has accepted them, so this only loses them from the expiry check).
fn expiry(certs: &[CertificateDer<'_>]) -> Vec<i64> {
    certs
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .collect()
}

fn read_certs(
    path: &Path,
    what: &'static str,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
            flag,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
            flag,
        });
    }
    Ok(certs)
}

/// A TLS connection as RabbitMQ's management API describes it (`ssl_*` and
/// `peer_cert_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `tlsv1.3` or `tlsv1.2`.
    pub protocol: String,
    pub key_exchange: String,
    pub cipher: String,
    /// The MAC: `aead` for every suite rustls offers.
    pub hash: String,
    pub peer_cert: Option<PeerCert>,
}

/// The client's certificate, in RabbitMQ's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    pub subject: String,
    pub issuer: String,
    pub validity: String,
    /// The subject's first common name.
    pub common_name: Option<String>,
}

/// Which part of a client certificate names the user it logs in as with SASL EXTERNAL
/// (RabbitMQ's `ssl_cert_login_from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertLogin {
    /// The whole subject, as `peer_cert_subject` shows it (RabbitMQ's default).
    DistinguishedName,
    /// The subject's common name (CN).
    CommonName,
}

impl PeerCert {
    /// The user this certificate logs in as; none when it has no common name to take.
    pub fn login_name(&self, from: CertLogin) -> Option<String> {
        match from {
            CertLogin::DistinguishedName => Some(self.subject.clone()),
            CertLogin::CommonName => self.common_name.clone(),
        }
    }
}

impl TlsInfo {
    /// What an established connection negotiated.
    pub fn of(conn: &ServerConnection) -> TlsInfo {
        let protocol = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2".to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        let (key_exchange, cipher, hash) = conn
            .negotiated_cipher_suite()
            .map(|s| suite_parts(&format!("{:?}", s.suite())))
            .unwrap_or_default();
        let peer_cert = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| X509Certificate::from_der(der).ok())
            .map(|(_, cert)| PeerCert {
                common_name: cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .map(str::to_string),
                subject: rdn_sequence(cert.subject()),
                issuer: rdn_sequence(cert.issuer()),
                validity: format!(
                    "{} - {}",
                    utc(cert.validity().not_before.timestamp()),
                    utc(cert.validity().not_after.timestamp())
                ),
            });
        TlsInfo {
            protocol,
            key_exchange,
            cipher,
            hash,
            peer_cert,
        }
    }
}

/// Splits an IANA suite name (`TLS13_AES_256_GCM_SHA384`,
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`) into the key exchange, cipher and MAC that
/// Erlang's `ssl` reports and RabbitMQ shows: TLS 1.3 suites fix no key exchange (`any`),
/// and every suite rustls offers is an AEAD, whose MAC Erlang names `aead`.
fn suite_parts(name: &str) -> (String, String, String) {
    let lower = name.to_lowercase();
    let (key_exchange, rest) = match lower.strip_prefix("tls13_") {
        Some(rest) => ("any", rest),
        None => {
            let rest = lower.strip_prefix("tls_").unwrap_or(&lower);
            rest.split_once("_with_").unwrap_or(("", rest))
        }
    };
    // The suffix names the PRF's hash, which RabbitMQ does not show.
    let cipher = rest.rsplit_once('_').map_or(rest, |(cipher, _)| cipher);
    (
        key_exchange.to_string(),
        cipher.to_string(),
        "aead".to_string(),
    )
}

/// A distinguished name as RabbitMQ prints it: the RDNs last first, each `TYPE=value`,
/// joined with commas.
fn rdn_sequence(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let kind = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = attr.as_str().unwrap_or("?");
                    format!("{kind}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DD H:MM:SS`, as RabbitMQ's certificate-expiration check prints a date.
pub fn erlang_datetime(secs: i64) -> String {
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `now` moved `within` calendar `unit`s (days, weeks, months or years) on; None for
/// another unit or a date past what the calendar arithmetic holds.
pub fn later_by(now: i64, within: i64, unit: &str) -> Option<i64> {
    let days = now.div_euclid(86_400);
    let time = now.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let months = match unit {
        "days" => return within.checked_mul(86_400)?.checked_add(now),
        "weeks" => return within.checked_mul(7 * 86_400)?.checked_add(now),
        "months" => within,
        "years" => within.checked_mul(12)?,
        _ => return None,
    };
    let index = (year.checked_mul(12)? + i64::from(month) - 1).checked_add(months)?;
    // Past about year 250 million the day count below overflows; nothing expires there.
    if index.abs() > 3_000_000_000 {
        return None;
    }
    let (year, month) = (index.div_euclid(12), index.rem_euclid(12) as u32 + 1);
    Some(days_from_civil(year, month, day) * 86_400 + time)
}

/// Days since 1970-01-01 of a proleptic Gregorian date; a day past the month's end runs
/// into the next month.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_split_as_erlang_reports_them() {
        let parts = |n| suite_parts(n);
        assert_eq!(
            parts("TLS13_AES_256_GCM_SHA384"),
            ("any".into(), "aes_256_gcm".into(), "aead".into())
        );
        assert_eq!(
            parts("TLS13_CHACHA20_POLY1305_SHA256"),
            ("any".into(), "chacha20_poly1305".into(), "aead".into())
        );
        assert_eq!(
            parts("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            ("ecdhe_rsa".into(), "aes_128_gcm".into(), "aead".into())
        );
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_435_199), "2026-11-23T11:59:59Z");
    }

    #[test]
    fn calendar_arithmetic_round_trips() {
        for days in [-800_000, -1, 0, 59, 60, 10_956, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        let now = 1_795_435_199; // 2026-11-23T11:59:59Z
        assert_eq!(later_by(now, 2, "days"), Some(now + 2 * 86_400));
        assert_eq!(later_by(now, 1, "weeks"), Some(now + 7 * 86_400));
        assert_eq!(
            utc(later_by(now, 3, "months").expect("months")),
            "2027-02-23T11:59:59Z"
        );
        assert_eq!(
            utc(later_by(now, 10, "years").expect("years")),
            "2036-11-23T11:59:59Z"
        );
        assert_eq!(later_by(now, i64::MAX, "years"), None);
        assert_eq!(later_by(now, 1, "fortnights"), None);
        assert_eq!(erlang_datetime(2_082_758_400), "2036-01-01 0:00:00");
    }

    #[test]
    fn unreadable_files_name_the_flag_to_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let config = TlsConfig {
            cert: empty.clone(),
            key: dir.path().join("missing.pem"),
            ca: None,
            require_client_cert: false,
        };
        let err = Tls::load(&config).err().expect("refused").to_string();
        assert!(err.contains("--amqp-tls-cert"), "{err}");
        let config = TlsConfig {
            cert: dir.path().join("missing.pem"),
            ..config
        };
        let err = Tls::load(&config).err().expect("refused").to_string();
        assert!(err.contains("--amqp-tls-cert"), "{err}");
    }
}
