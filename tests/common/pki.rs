//! Certificates for TLS tests, generated with rcgen into a fresh temp dir: CAs, server
//! and client certificates, CRLs. Nothing here is read from the repository.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};

/// A temp dir of PEM files: CAs, server and client certificates, a CRL.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tern-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    pub fn write(&self, file: &str, text: &str) -> String {
        std::fs::write(self.dir.join(file), text).unwrap();
        self.path(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(pki: &Pki, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        pki.write(&format!("{name}.pem"), &issuer.pem());
        Ca { issuer }
    }

    /// Issues a certificate; writes `<name>.pem` and `<name>.key`, returns their paths.
    pub fn issue(
        &self,
        pki: &Pki,
        name: &str,
        sans: &[&str],
        serial: u8,
        valid_days: std::ops::Range<i64>,
    ) -> (String, String) {
        self.issue_as(pki, name, Some(name), sans, serial, valid_days)
    }

    /// Issues a certificate whose subject has common name `common_name` (none: a subject
    /// without one); writes `<file>.pem` and `<file>.key`, returns their paths.
    pub fn issue_as(
        &self,
        pki: &Pki,
        file: &str,
        common_name: Option<&str>,
        sans: &[&str],
        serial: u8,
        valid_days: std::ops::Range<i64>,
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        // rcgen gives a new certificate the subject CN "rcgen self signed cert".
        params.distinguished_name = rcgen::DistinguishedName::new();
        match common_name {
            Some(name) => params.distinguished_name.push(DnType::CommonName, name),
            None => params
                .distinguished_name
                .push(DnType::OrganizationName, "tern tests"),
        }
        params.serial_number = Some(SerialNumber::from(vec![serial]));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(valid_days.start);
        params.not_after = now + time::Duration::days(valid_days.end);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            pki.write(&format!("{file}.pem"), &cert.pem()),
            pki.write(&format!("{file}.key"), &key.serialize_pem()),
        )
    }

    /// A CRL revoking the certificates with these serials.
    pub fn crl(&self, pki: &Pki, file: &str, serials: &[u8]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(vec![1]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(vec![*s]),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        pki.write(
            file,
            &params.signed_by(&self.issuer).unwrap().pem().unwrap(),
        )
    }
}

pub const SERVER_SANS: &[&str] = &["127.0.0.1", "localhost"];
pub const VALID: std::ops::Range<i64> = -1..2;

/// The usual fixture: CA "ca", server cert, client "root", a client from "other-ca".
pub struct Fixture {
    pub pki: Pki,
    pub ca: Ca,
    pub server: (String, String),
    pub client: (String, String),
    pub other_client: (String, String),
}

pub fn fixture(name: &str) -> Fixture {
    let pki = Pki::new(name);
    let ca = Ca::new(&pki, "ca");
    let other = Ca::new(&pki, "other-ca");
    let server = ca.issue(&pki, "server", SERVER_SANS, 1, VALID);
    let client = ca.issue(&pki, "root", &[], 2, VALID);
    let other_client = other.issue(&pki, "intruder", &[], 3, VALID);
    Fixture {
        pki,
        ca,
        server,
        client,
        other_client,
    }
}

impl Fixture {
    pub fn ca_file(&self) -> String {
        self.pki.path("ca.pem")
    }

    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--cert-file".into(),
            self.server.0.clone(),
            "--key-file".into(),
            self.server.1.clone(),
            "--trusted-ca-file".into(),
            self.ca_file(),
            "--client-cert-auth".into(),
        ]
    }

    /// etcdctl's TLS flags for a client certificate pair.
    pub fn client_flags(&self, pair: &(String, String)) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca_file()),
            format!("--cert={}", pair.0),
            format!("--key={}", pair.1),
        ]
    }
}
