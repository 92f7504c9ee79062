//! TLS for `https://` endpoints and the `--cert`, `--key`, `--cacert` and
//! `--insecure-skip-tls-verify` flags (etcd's `transport.TLSInfo` on the client side).
//! rustls negotiates ALPN `h2`, as gRPC over TLS requires.

use std::sync::Arc;

use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use crate::client::BoxError;
use crate::Global;

#[derive(Default)]
pub struct TlsOptions {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub ca_file: Option<String>,
    pub insecure_skip_verify: bool,
}

impl TlsOptions {
    /// TLS settings from the global flags, or None when no TLS flag is set (plain
    /// `http://` endpoints then stay plaintext, `https://` ones use system-less defaults).
    pub fn from_global(global: &Global) -> Option<TlsOptions> {
        let options = TlsOptions {
            cert_file: global.cert.clone(),
            key_file: global.key.clone(),
            ca_file: global.cacert.clone(),
            insecure_skip_verify: global.insecure_skip_tls_verify,
        };
        let any = options.cert_file.is_some()
            || options.key_file.is_some()
            || options.ca_file.is_some()
            || options.insecure_skip_verify;
        any.then_some(options)
    }

    pub fn connector(&self) -> Result<TlsConnector, BoxError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(ca) = &self.ca_file {
                for cert in read_certs(ca)? {
                    roots.add(cert)?;
                }
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("bad tls config: --cert and --key must be given together".into()),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// The name to verify the server certificate against: the endpoint's host.
    pub fn server_name(&self, authority: &str) -> Result<ServerName<'static>, BoxError> {
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(ServerName::try_from(host.to_string())?)
    }
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let data = std::fs::read(path).map_err(|e| format!("bad tls config: {path}: {e}"))?;
    let certs = rustls_pemfile::certs(&mut data.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("bad tls config: no certificate in {path}").into());
    }
    Ok(certs)
}

fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, BoxError> {
    let data = std::fs::read(path).map_err(|e| format!("bad tls config: {path}: {e}"))?;
    rustls_pemfile::private_key(&mut data.as_slice())?
        .ok_or_else(|| format!("bad tls config: no private key in {path}").into())
}

/// `--insecure-skip-tls-verify`: accept any server certificate, still checking that the
/// handshake signatures are valid for the certificate presented.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
