//! Certificates for the TLS tests, made at first use and written as PEM files into a
//! directory of this test process: a CA, a server certificate for 127.0.0.1 and
//! `localhost` that the CA signed, a client certificate it signed too, and a second CA
//! that signed nothing of ours (what a client trusting the wrong CA holds).

use std::path::PathBuf;
use std::sync::LazyLock;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// The files and PEM texts the TLS tests use.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    pub ca_pem: String,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// A CA that signed nothing the brokers trust.
    pub other_ca_pem: String,
    /// A client certificate and key the other CA signed: what the brokers must refuse.
    pub stranger_cert_pem: String,
    pub stranger_key_pem: String,
}

/// This process's certificates; made on first call.
pub fn pki() -> &'static Pki {
    static PKI: LazyLock<Pki> = LazyLock::new(make);
    &PKI
}

/// The certificates' validity, fixed so that the expiry checks have known answers.
pub const NOT_AFTER_YEAR: i32 = 2036;

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "session-store tests");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(2040, 1, 1);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn make() -> Pki {
    let dir = std::env::temp_dir().join(format!("e2e-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the certificates' directory");
    let ca = ca("e2e test CA");
    let other = self::ca("e2e unrelated CA");

    let leaf = |names: Vec<String>,
                cn: &str,
                usage: ExtendedKeyUsagePurpose,
                ca: &CertifiedIssuer<'static, KeyPair>| {
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "session-store tests");
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = date_time_ymd(2025, 1, 1);
        params.not_after = date_time_ymd(NOT_AFTER_YEAR, 1, 1);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &**ca).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key_pem) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
    );
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    let (client_pem, client_key_pem) = leaf(vec![], "e2e-client", client.clone(), &ca);
    let (stranger_cert_pem, stranger_key_pem) = leaf(vec![], "e2e-stranger", client, &other);

    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a certificate file");
        path
    };
    let ca_pem = ca.pem();
    Pki {
        ca: write("ca.pem", &ca_pem),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server.key", &server_key_pem),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client.key", &client_key_pem),
        dir,
        ca_pem,
        client_cert_pem: client_pem,
        client_key_pem,
        other_ca_pem: other.pem(),
        stranger_cert_pem,
        stranger_key_pem,
    }
}
