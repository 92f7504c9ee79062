//! The few certificate fields tern reads itself, walked straight off the DER (RFC 5280
//! §4.1): the subject's common name (`--peer-cert-allowed-cn`) and the subject alternative
//! names (the peer listener's SAN check, `net::san`). Signatures, validity and chains are
//! webpki's business, never this module's: it only ever looks at a certificate that
//! webpki has already verified.
//!
//! Invariant: malformed input gives `None` or an empty list, never a panic (every length is
//! checked against what is left before it is used).

use std::net::IpAddr;

/// One DER element: (tag, contents, rest). `None` for malformed input (never panics).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let octets = (first & 0x7f) as usize;
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let len = rest[..octets]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[octets..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject's common name (OID 2.5.4.3) of a DER certificate, if it has one: walks
/// Certificate → TBSCertificate → subject (after the optional version, serial, signature
/// algorithm, issuer and validity, RFC 5280 §4.1).
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    let (_, certificate, _) = der_element(cert).filter(|e| e.0 == SEQUENCE)?;
    let (_, mut tbs, _) = der_element(certificate).filter(|e| e.0 == SEQUENCE)?;
    let (tag, _, rest) = der_element(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // explicit [0] version
    }
    for _ in 0..4 {
        tbs = der_element(tbs)?.2; // serial, signature, issuer, validity
    }
    let (_, mut subject, _) = der_element(tbs).filter(|e| e.0 == SEQUENCE)?;
    while !subject.is_empty() {
        let (_, set, rest) = der_element(subject)?;
        subject = rest;
        let (_, attribute, _) = der_element(set)?;
        let (_, oid, value) = der_element(attribute)?;
        if oid == CN_OID {
            let (_, text, _) = der_element(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

/// The subject alternative names of a certificate (Go's `x509.Certificate.DNSNames` and
/// `IPAddresses`), in certificate order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AltNames {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

/// The SAN extension (OID 2.5.29.17) of a DER certificate: walks TBSCertificate past its
/// seven fixed fields (version, serial, signature, issuer, validity, subject, key) and the
/// optional unique ids to the `[3]` extensions. A certificate without the extension, or
/// one that does not parse, has no names.
pub fn alt_names(cert: &[u8]) -> AltNames {
    alt_names_of(cert).unwrap_or_default()
}

fn alt_names_of(cert: &[u8]) -> Option<AltNames> {
    const SEQUENCE: u8 = 0x30;
    const BOOLEAN: u8 = 0x01;
    const EXTENSIONS: u8 = 0xa3;
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
    const DNS_NAME: u8 = 0x82;
    const IP_ADDRESS: u8 = 0x87;
    let (_, certificate, _) = der_element(cert).filter(|e| e.0 == SEQUENCE)?;
    let (_, mut tbs, _) = der_element(certificate).filter(|e| e.0 == SEQUENCE)?;
    let mut names = AltNames::default();
    while !tbs.is_empty() {
        let (tag, value, rest) = der_element(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue; // version [0], the fixed fields, unique ids [1] and [2]
        }
        let (_, mut extensions, _) = der_element(value).filter(|e| e.0 == SEQUENCE)?;
        while !extensions.is_empty() {
            let (_, extension, rest) = der_element(extensions)?;
            extensions = rest;
            let (_, oid, mut fields) = der_element(extension)?;
            if oid != SAN_OID {
                continue;
            }
            // critical BOOLEAN DEFAULT FALSE, then extnValue OCTET STRING.
            let (tag, _, rest) = der_element(fields)?;
            if tag == BOOLEAN {
                fields = rest;
            }
            let (_, octets, _) = der_element(fields)?;
            let (_, mut general_names, _) = der_element(octets).filter(|e| e.0 == SEQUENCE)?;
            while !general_names.is_empty() {
                let (tag, value, rest) = der_element(general_names)?;
                general_names = rest;
                match (tag, value.len()) {
                    (DNS_NAME, _) => names
                        .dns_names
                        .push(String::from_utf8_lossy(value).into_owned()),
                    (IP_ADDRESS, 4) => names
                        .ip_addresses
                        .push(IpAddr::from(<[u8; 4]>::try_from(value).ok()?)),
                    (IP_ADDRESS, 16) => names
                        .ip_addresses
                        .push(IpAddr::from(<[u8; 16]>::try_from(value).ok()?)),
                    _ => {}
                }
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cn: &str) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_dns_and_ip_alt_names_and_the_common_name() {
        let der = cert(
            &["127.0.0.2", "peer.example", "::1", "*.cluster.local"],
            "m1",
        );
        let names = alt_names(&der);
        assert_eq!(names.dns_names, ["peer.example", "*.cluster.local"]);
        let ips: Vec<IpAddr> = vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(names.ip_addresses, ips);
        assert_eq!(subject_common_name(&der).as_deref(), Some("m1"));
        assert_eq!(alt_names(&cert(&[], "none")), AltNames::default());
    }

    #[test]
    fn malformed_input_has_no_names() {
        let der = cert(&["127.0.0.1"], "x");
        for cut in 0..der.len() {
            let _ = alt_names(&der[..cut]);
            let _ = subject_common_name(&der[..cut]);
        }
        assert_eq!(alt_names(b"\x30\x84\xff\xff\xff\xff"), AltNames::default());
    }
}
