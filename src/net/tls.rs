//! TLS for the client and peer listeners, with rustls, configured from etcd's flags as
//! etcd's `pkg/transport.TLSInfo` configures Go's crypto/tls.
//!
//! Invariants:
//! - Every setting etcd accepts is either honoured or refused at startup with an error
//!   naming the flag: a server asked for TLS never falls back to cleartext.
//! - As etcd does, a trusted CA file or `--client-cert-auth` makes client certificates
//!   required and verified against that CA; a CRL file rejects the certificates it revokes.
//! - Files are read on the main thread at startup and later only by the reload thread
//!   (`tern-tls-reload`), never on an executor (no blocking file I/O there). The reload
//!   thread re-reads them when their size, mtime or inode changes and swaps in a new
//!   rustls config (the accepting side's, and the peer dialling side's); each new
//!   handshake takes the current one, connections already established keep theirs. A set of files that fails to load keeps the previous config
//!   and is logged, as etcd logs a failed reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DistinguishedName, RootCertStore, SignatureScheme, SupportedProtocolVersion};

/// How often the reload thread looks at the certificate files (one stat each).
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The TLS versions etcd's `--tls-min-version`/`--tls-max-version` name (3.5 accepts only
/// these two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn parse(text: &str) -> Result<Option<TlsVersion>, String> {
        match text {
            "" => Ok(None),
            "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
            "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
            other => Err(format!(
                "unexpected TLS version {other:?} (TLS1.2 or TLS1.3)"
            )),
        }
    }
}

/// One side's TLS settings (etcd `TLSInfo`): the client side or the peer side.
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    /// `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`: the verified
    /// client certificate must be valid for this name.
    pub allowed_hostname: Option<String>,
    /// `--cipher-suites` (Go names); empty means the library's defaults.
    pub cipher_suites: Vec<String>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    /// `--peer-cert-allowed-cn`: the verified client certificate's subject CN must be this.
    pub allowed_cn: Option<String>,
}

/// Which flags this side's settings came from, for error messages.
#[derive(Clone, Copy, Debug)]
pub struct FlagNames {
    pub cert_file: &'static str,
    pub key_file: &'static str,
    pub trusted_ca_file: &'static str,
    pub client_cert_auth: &'static str,
    pub crl_file: &'static str,
}

pub const CLIENT_FLAGS: FlagNames = FlagNames {
    cert_file: "--cert-file",
    key_file: "--key-file",
    trusted_ca_file: "--trusted-ca-file",
    client_cert_auth: "--client-cert-auth",
    crl_file: "--client-crl-file",
};

pub const PEER_FLAGS: FlagNames = FlagNames {
    cert_file: "--peer-cert-file",
    key_file: "--peer-key-file",
    trusted_ca_file: "--peer-trusted-ca-file",
    client_cert_auth: "--peer-client-cert-auth",
    crl_file: "--peer-crl-file",
};

/// Go's names of the TLS 1.2 suites rustls implements, with etcd's older spellings
/// (`..._CHACHA20_POLY1305` without `_SHA256`).
fn tls12_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// Suites Go (and so etcd) knows that rustls deliberately does not implement (CBC, RSA key
/// exchange, RC4, 3DES): refused with a reason rather than as unknown names.
const GO_SUITES_NOT_IMPLEMENTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The crypto provider for `info`: ring, with the TLS 1.2 suites cut down to
/// `--cipher-suites` when given (TLS 1.3 suites are not configurable, as in Go).
fn provider_for(info: &TlsInfo) -> Result<Arc<CryptoProvider>, String> {
    let mut provider = ring::default_provider();
    if !info.cipher_suites.is_empty() {
        if info.min_version == Some(TlsVersion::Tls13) {
            // etcd 3.5 refuses the same combination.
            return Err(
                "TLS1.3 cipher suites are not configurable: --cipher-suites cannot be used with --tls-min-version=TLS1.3"
                    .into(),
            );
        }
        let mut chosen = Vec::new();
        for name in &info.cipher_suites {
            match tls12_suite(name) {
                Some(suite) => chosen.push(suite),
                None if GO_SUITES_NOT_IMPLEMENTED.contains(&name.as_str()) => {
                    return Err(format!(
                        "--cipher-suites: {name} is not supported by tern (rustls implements only ECDHE with AES-GCM or ChaCha20-Poly1305)"
                    ))
                }
                None => return Err(format!("unexpected TLS cipher suite {name:?}")),
            }
        }
        provider
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || chosen.contains(s));
    }
    Ok(Arc::new(provider))
}

fn versions_for(info: &TlsInfo) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let min = info.min_version.unwrap_or(TlsVersion::Tls12);
    let max = info.max_version.unwrap_or(TlsVersion::Tls13);
    if min > max {
        return Err("--tls-min-version must be less than or equal to --tls-max-version".to_owned());
    }
    let mut versions = Vec::new();
    if min <= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    Ok(versions)
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("open {}: {e}", path.display()))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: failed to find any PEM data in certificate input",
            path.display()
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "{}: failed to find a PEM private key in key input: {e}",
            path.display()
        )
    })
}

/// A CRL in PEM or DER (Go's `x509.ParseCRL`, which etcd uses, accepts both).
fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = read_file(path)?;
    if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// The client-certificate verifier for `info`: none, or webpki against the trusted CA
/// (with the CRL), plus the allowed-hostname check.
fn client_verifier(
    info: &TlsInfo,
    names: &FlagNames,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let Some(ca_file) = info.trusted_ca_file.as_deref() else {
        if info.client_cert_auth {
            return Err(format!(
                "{} requires {}: client certificates cannot be verified without a trusted CA",
                names.client_cert_auth, names.trusted_ca_file
            ));
        }
        if info.crl_file.is_some() {
            return Err(format!(
                "{} requires {} (only verified client certificates can be checked against a CRL)",
                names.crl_file, names.trusted_ca_file
            ));
        }
        return Ok(WebPkiClientVerifier::no_client_auth());
    };
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl_file) = info.crl_file.as_deref() {
        // etcd checks the serial numbers of the presented chain against the list; an
        // issuer the list does not cover is not a reason to reject.
        builder = builder
            .with_crls(load_crls(crl_file)?)
            .allow_unknown_revocation_status();
    }
    let verifier = builder
        .build()
        .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    if info.allowed_cn.is_some() && info.allowed_hostname.is_some() {
        return Err(format!(
            "AllowedCN and AllowedHostname are mutually exclusive (cn={:?}, hostname={:?})",
            info.allowed_cn.as_deref().unwrap_or(""),
            info.allowed_hostname.as_deref().unwrap_or("")
        ));
    }
    let allowed = match (&info.allowed_hostname, &info.allowed_cn) {
        (Some(hostname), _) => Allowed::Hostname(
            ServerName::try_from(hostname.clone())
                .map_err(|e| format!("allowed hostname {hostname:?}: {e}"))?,
        ),
        (None, Some(cn)) => Allowed::CommonName(cn.clone()),
        (None, None) => return Ok(verifier),
    };
    Ok(Arc::new(AllowedClient {
        inner: verifier,
        allowed,
    }))
}

/// The accepting side's two rustls configs, built from the same files: one offering ALPN
/// `h2` (as etcd's `TLSInfo.ServerConfig` sets `NextProtos`), and its copy offering none,
/// for the clients Go's crypto/tls serves without ALPN (see [`ServerConfigs::for_client`]).
pub struct ServerConfigs {
    offers_h2: Arc<rustls::ServerConfig>,
    offers_none: Arc<rustls::ServerConfig>,
}

/// ALPN protocol ids (RFC 7301).
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

impl ServerConfigs {
    fn new(offers_h2: rustls::ServerConfig) -> ServerConfigs {
        let mut offers_none = offers_h2.clone();
        offers_none.alpn_protocols.clear();
        ServerConfigs {
            offers_h2: Arc::new(offers_h2),
            offers_none: Arc::new(offers_none),
        }
    }

    /// The config for a client offering `offered` (None: no ALPN extension), chosen as
    /// Go's `negotiateALPN` chooses for etcd's `NextProtos = ["h2"]`: `h2` if offered;
    /// no protocol for a client without ALPN, or whose list has `http/1.1` but not `h2`
    /// (Go's "http/1.1 clients connect to h2 servers as if they didn't support ALPN"); any
    /// other list gets the `h2` config, which rustls refuses with the
    /// `no_application_protocol` alert, as Go does.
    pub fn for_client(&self, offered: Option<&[Vec<u8>]>) -> Arc<rustls::ServerConfig> {
        match offered {
            Some(list) if list.iter().any(|p| p == ALPN_H2) => self.offers_h2.clone(),
            Some(list) if !list.is_empty() && !list.iter().any(|p| p == ALPN_HTTP1) => {
                self.offers_h2.clone()
            }
            _ => self.offers_none.clone(),
        }
    }
}

/// Builds the server config for `info` from its files. ALPN offers `h2`.
pub fn server_config(info: &TlsInfo, names: &FlagNames) -> Result<rustls::ServerConfig, String> {
    if info.cert_file.as_os_str().is_empty() || info.key_file.as_os_str().is_empty() {
        return Err(format!(
            "KeyFile and CertFile must both be present ({} {:?}, {} {:?})",
            names.key_file, info.key_file, names.cert_file, info.cert_file
        ));
    }
    let provider = provider_for(info)?;
    let versions = versions_for(info)?;
    let verifier = client_verifier(info, names, &provider)?;
    let certs = load_certs(&info.cert_file)?;
    let key = load_key(&info.key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} / {}: {e}",
                info.cert_file.display(),
                info.key_file.display()
            )
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// What else a verified client certificate must satisfy (etcd's `AllowedHostname`, checked
/// as Go's `VerifyHostname`, or `AllowedCN`, an exact match of the subject common name).
#[derive(Debug)]
enum Allowed {
    Hostname(ServerName<'static>),
    CommonName(String),
}

#[derive(Debug)]
struct AllowedClient {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Allowed,
}

impl ClientCertVerifier for AllowedClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        // etcd's texts (its VerifyPeerCertificate hooks), one per flag.
        let refused = |text: &str| rustls::Error::General(text.into());
        match &self.allowed {
            Allowed::Hostname(hostname) => {
                let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
                })?;
                cert.verify_is_valid_for_subject_name(hostname)
                    .map_err(|_| refused("client certificate authentication failed"))?;
            }
            Allowed::CommonName(cn) => {
                if super::x509::subject_common_name(end_entity).as_deref() != Some(cn.as_str()) {
                    return Err(refused("CommonName authentication failed"));
                }
            }
        }
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What identifies a file's version for the reload thread: changed content is written
/// by replacing the file (new inode) or in place (new mtime or size).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

fn files_of(info: &TlsInfo) -> Vec<PathBuf> {
    let mut files = vec![info.cert_file.clone(), info.key_file.clone()];
    files.extend(info.trusted_ca_file.clone());
    files.extend(info.crl_file.clone());
    files
}

/// A TLS config (server or client side) kept fresh by a reload thread. Shared by every
/// executor: each handshake clones the `Arc` under a mutex held for that clone only.
pub struct Reloading<T> {
    current: Mutex<Arc<T>>,
}

/// The server configs of one side (client listeners or peer listeners).
pub type ReloadingServerConfig = Reloading<ServerConfigs>;

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the config once with `build` (an error here fails startup) and starts the
    /// reload thread, which rebuilds it whenever one of `files` changes and runs for the
    /// life of the process. `side` names it in logs ("client", "peer", "peer dialling").
    fn watch(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, String> + Send + 'static,
        side: &'static str,
    ) -> Result<Arc<Reloading<T>>, String> {
        let stamps: Vec<_> = files.iter().map(|f| stamp(f)).collect();
        let shared = Arc::new(Reloading {
            current: Mutex::new(Arc::new(build()?)),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("tern-tls-reload".into())
            .spawn(move || {
                let mut stamps = stamps;
                loop {
                    std::thread::sleep(RELOAD_POLL_INTERVAL);
                    let Some(shared) = weak.upgrade() else { return };
                    let now: Vec<_> = files.iter().map(|f| stamp(f)).collect();
                    if now == stamps {
                        continue;
                    }
                    // Files mid-rotation (a cert written before its key) may fail to load;
                    // the next change is looked at again.
                    stamps = now;
                    match build() {
                        Ok(config) => {
                            *shared.current.lock().unwrap() = Arc::new(config);
                            crate::info!(
                                "reloaded TLS certificates",
                                "side" => side,
                                "cert-file" => files[0].as_path()
                            );
                        }
                        Err(e) => crate::warn!(
                            "failed to reload TLS certificates; keeping the previous ones",
                            "side" => side,
                            "error" => e
                        ),
                    }
                }
            })
            .map_err(|e| format!("cannot start the TLS reload thread: {e}"))?;
        Ok(shared)
    }

    /// The config new handshakes use.
    pub fn current(&self) -> Arc<T> {
        self.current.lock().unwrap().clone()
    }
}

impl Reloading<ServerConfigs> {
    /// The accepting side's configs for `info`, reloaded when its files change.
    pub fn start(
        info: TlsInfo,
        names: FlagNames,
        side: &'static str,
    ) -> Result<Arc<ReloadingServerConfig>, String> {
        Reloading::watch(
            files_of(&info),
            move || server_config(&info, &names).map(ServerConfigs::new),
            side,
        )
    }
}

impl Reloading<rustls::ClientConfig> {
    /// The dialling side's config (see [`client_config`]), reloaded when its files change.
    pub fn start_client(
        info: TlsInfo,
        client_cert: PathBuf,
        client_key: PathBuf,
        skip_verify: bool,
    ) -> Result<Arc<Reloading<rustls::ClientConfig>>, String> {
        let mut files = vec![client_cert.clone(), client_key.clone()];
        files.extend(info.trusted_ca_file.clone());
        Reloading::watch(
            files,
            move || client_config(&info, &client_cert, &client_key, skip_verify),
            "peer dialling",
        )
    }
}

/// etcd's `--auto-tls`/`--peer-auto-tls` (`transport.SelfCert`): a self-signed certificate
/// for `hosts` (host:port or host), valid for `validity_years`, written as `cert.pem` and
/// `key.pem` under `dir` and reused from there if both exist. Returns the two paths.
pub fn self_cert(
    dir: &Path,
    hosts: &[String],
    validity_years: u64,
) -> Result<(PathBuf, PathBuf), String> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut names: Vec<String> = Vec::new();
    for host in hosts {
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => h.trim_matches(['[', ']']),
            _ => host.as_str(),
        };
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| format!("cannot generate certificate: {e}"))?;
    let now = time_now();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * validity_years as i64);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot generate certificate: {e}"))?;
    write_private(&cert_path, cert.pem().as_bytes())?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    crate::info!(
        "automatically generate certificates",
        "certificate-host" => names.join(",")
    );
    Ok((cert_path, key_path))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// etcd's wording of a failed handshake (Go's crypto/tls error texts) for the
/// "rejected connection" log line, where rustls's error has a Go counterpart.
/// `offered_alpn` is the client's ALPN list, which Go's text for a refused one quotes.
pub fn handshake_error_text(error: &std::io::Error, offered_alpn: Option<&[Vec<u8>]>) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "EOF".to_owned(),
            _ => error.to_string(),
        };
    };
    use rustls::{CertificateError as C, Error as E};
    let verify = "tls: failed to verify client's certificate: x509:";
    match tls {
        E::InvalidMessage(_) | E::InappropriateHandshakeMessage { .. } => {
            "tls: first record does not look like a TLS handshake".to_owned()
        }
        E::NoCertificatesPresented => "tls: client didn't provide a certificate".to_owned(),
        E::InvalidCertificate(C::UnknownIssuer) => {
            format!("{verify} certificate signed by unknown authority")
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })
        | E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            format!("{verify} certificate has expired or is not yet valid")
        }
        E::InvalidCertificate(C::Revoked) => "transport: certificate revoked".to_owned(),
        E::AlertReceived(alert) => format!("remote error: tls: {}", go_alert_name(alert)),
        // tern's own refusals (allowed CN and hostname) carry etcd's text already.
        E::General(text) => text.clone(),
        E::NoApplicationProtocol => format!(
            "tls: client requested unsupported application protocols ([{}])",
            offered_alpn
                .unwrap_or_default()
                .iter()
                .map(|p| String::from_utf8_lossy(p))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

/// Go's spelling of a TLS alert ("bad certificate" for rustls's `BadCertificate`).
fn go_alert_name(alert: &rustls::AlertDescription) -> String {
    // The names whose acronyms Go spells out or keeps whole.
    match alert {
        rustls::AlertDescription::UnknownCA => return "unknown certificate authority".into(),
        rustls::AlertDescription::UnknownPSKIdentity => return "unknown PSK identity".into(),
        _ => {}
    }
    let mut name = String::new();
    for (i, c) in format!("{alert:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push(' ');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// Peer TLS: the server side for accepted peer connections, the client side (trusting the
/// peer CA, presenting this member's certificate) for dialled ones.
pub struct PeerTls {
    pub server: Arc<ReloadingServerConfig>,
    pub client: Arc<Reloading<rustls::ClientConfig>>,
    /// `--experimental-peer-skip-client-san-verification`: accepted peer connections skip
    /// etcd's check of the certificate's SANs against the remote address (`net::san`).
    pub skip_client_san_verify: bool,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// The dialling side's config for `info` with `client_cert`/`client_key` as this member's
/// certificate. `skip_verify` (etcd's self-signed peer certificates, `--peer-auto-tls`)
/// accepts any server certificate, as etcd does with InsecureSkipVerify.
pub fn client_config(
    info: &TlsInfo,
    client_cert: &Path,
    client_key: &Path,
    skip_verify: bool,
) -> Result<rustls::ClientConfig, String> {
    let provider = provider_for(info)?;
    let versions = versions_for(info)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
    } else {
        let Some(ca_file) = info.trusted_ca_file.as_deref() else {
            return Err(
                "peer TLS needs --peer-trusted-ca-file (tern does not read the system's roots) or --peer-auto-tls"
                    .into(),
            );
        };
        let mut roots = RootCertStore::empty();
        for cert in load_certs(ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        }
        builder.with_root_certificates(roots)
    };
    builder
        .with_client_auth_cert(load_certs(client_cert)?, load_key(client_key)?)
        .map_err(|e| format!("{} / {}: {e}", client_cert.display(), client_key.display()))
}

/// Accepts any server certificate whose handshake signature is valid: only for
/// `--peer-auto-tls`, where every member's certificate is self-signed (etcd sets
/// InsecureSkipVerify for the same case).
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
