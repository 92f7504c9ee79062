//! etcd's SAN check on the peer port (`pkg/transport`'s `checkSAN`, which every https://
//! peer listener of etcd 3.4 runs after the handshake unless
//! `--experimental-peer-skip-client-san-verification` is set): a peer's verified
//! certificate must name the address the peer connects from.
//!
//! The rule, as etcd's:
//! - a certificate with no IP and no DNS SANs passes;
//! - with IP SANs, the remote IP must be one of them (Go's `VerifyHostname` on an IP);
//!   failing that, with no DNS SANs, the connection is refused with Go's text
//!   "x509: certificate is valid for A, B, not H";
//! - with DNS SANs, the remote IP passes if its reverse lookup gives one of the names (or
//!   ends in a `*.` wildcard's suffix), or a forward lookup of one of the non-wildcard
//!   names gives the IP; otherwise it is refused with
//!   `tls: "H" does not match any of DNSNames ["a" "b"]` and the last lookup error.
//!
//! Invariants:
//! - Name lookups can block for seconds (getaddrinfo, getnameinfo): they run on a thread
//!   of their own, never on an executor, and at most [`SAN_LOOKUPS_IN_FLIGHT_MAX`] at once
//!   in the process (a peer must hold a certificate of the peer CA to get here at all, but
//!   even so cannot pile up threads); past that the connection is refused.
//! - Lookups use the system resolver (nsswitch: /etc/hosts, then DNS) where Go's resolver
//!   reads the same sources; getnameinfo gives one name for an address where Go's
//!   `LookupAddr` may give several from /etc/hosts.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::x509::{alt_names, AltNames};

/// Most SAN name lookups running at once in the process.
pub const SAN_LOOKUPS_IN_FLIGHT_MAX: usize = 16;

static LOOKUPS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Checks `cert` (the peer's verified end-entity certificate, DER) against `remote`, the
/// address the connection came from. Err carries etcd's refusal text.
pub async fn check_cert_san(cert: &[u8], remote: SocketAddr) -> Result<(), String> {
    let names = alt_names(cert);
    let host = remote.ip();
    if names.ip_addresses.is_empty() && names.dns_names.is_empty() {
        return Ok(());
    }
    if !names.ip_addresses.is_empty() {
        if names.ip_addresses.contains(&host) {
            return Ok(());
        }
        if names.dns_names.is_empty() {
            let valid: Vec<String> = names.ip_addresses.iter().map(|ip| ip.to_string()).collect();
            return Err(format!(
                "x509: certificate is valid for {}, not {host}",
                valid.join(", ")
            ));
        }
    }
    let (found, error) = lookup_off_executor(names.clone(), host).await;
    if found {
        return Ok(());
    }
    let quoted: Vec<String> = names.dns_names.iter().map(|n| format!("{n:?}")).collect();
    let detail = error.map(|e| format!(" ({e})")).unwrap_or_default();
    Err(format!(
        "tls: \"{host}\" does not match any of DNSNames [{}]{detail}",
        quoted.join(" ")
    ))
}

/// Runs [`host_in_dns`] on a thread of its own and waits for it without blocking.
async fn lookup_off_executor(names: AltNames, host: IpAddr) -> (bool, Option<String>) {
    if LOOKUPS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= SAN_LOOKUPS_IN_FLIGHT_MAX {
        LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        return (false, Some("too many SAN lookups in flight".into()));
    }
    let (tx, rx) = futures::channel::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("tern-san-lookup".into())
        .spawn(move || {
            let _ = tx.send(host_in_dns(&names.dns_names, host));
            LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        return (false, Some(format!("cannot start a lookup thread: {e}")));
    }
    rx.await
        .unwrap_or((false, Some("lookup thread ended without an answer".into())))
}

/// Go's `isHostInDNS`: the reverse lookup of `host` against the names and wildcards,
/// then forward lookups of the plain names. Blocking.
fn host_in_dns(dns_names: &[String], host: IpAddr) -> (bool, Option<String>) {
    let (wildcards, names): (Vec<&String>, Vec<&String>) =
        dns_names.iter().partition(|n| n.starts_with("*."));
    let mut error = None;
    match reverse_lookup(host) {
        Ok(name) => {
            let name = name.strip_suffix('.').unwrap_or(&name);
            let wildcard_match = wildcards.iter().any(|w| name.ends_with(&w[1..]));
            if wildcard_match || names.iter().any(|n| n.as_str() == name) {
                return (true, None);
            }
        }
        Err(e) => error = Some(e),
    }
    for name in names {
        match (name.as_str(), 0u16).to_socket_addrs() {
            Ok(mut addrs) => {
                if addrs.any(|a| a.ip() == host) {
                    return (true, None);
                }
            }
            Err(e) => error = Some(lookup_error_text(name, &e)),
        }
    }
    (false, error)
}

/// Go's `*net.DNSError` text, without the resolver's address Go adds for DNS answers.
fn lookup_error_text(name: &str, error: &std::io::Error) -> String {
    let text = error.to_string();
    let reason = if text.contains("not known") || text.contains("No address associated") {
        "no such host".to_owned()
    } else {
        text
    };
    format!("lookup {name}: {reason}")
}

/// The name getnameinfo(3) gives for `host` (NI_NAMEREQD: an address without a name is
/// an error, as Go's LookupAddr reports it).
fn reverse_lookup(host: IpAddr) -> Result<String, String> {
    let addr = SocketAddr::new(host, 0);
    // Safety: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // Safety: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // Safety: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let mut name = [0 as libc::c_char; libc::NI_MAXHOST as usize];
    // Safety: `storage` holds a sockaddr of `len` bytes; `name` is a writable buffer of the
    // length given; no service buffer is asked for.
    let rc = unsafe {
        libc::getnameinfo(
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len as libc::socklen_t,
            name.as_mut_ptr(),
            name.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return Err(format!("lookup {host}: no such host"));
    }
    // Safety: getnameinfo succeeded, so `name` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// The fields etcd's "rejected connection" line adds when the peer presented a
/// certificate: its IP and DNS SANs.
pub fn log_fields(cert: &[u8]) -> (Vec<String>, Vec<String>) {
    let names = alt_names(cert);
    let ips = names.ip_addresses.iter().map(|ip| ip.to_string()).collect();
    (ips, names.dns_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str]) -> Vec<u8> {
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn check(sans: &[&str], remote: &str) -> Result<(), String> {
        futures_lite::future::block_on(check_cert_san(&cert(sans), remote.parse().unwrap()))
    }

    #[test]
    fn ip_sans_must_name_the_remote_address() {
        assert_eq!(check(&["127.0.0.1"], "127.0.0.1:5000"), Ok(()));
        assert_eq!(check(&[], "127.0.0.1:5000"), Ok(()));
        assert_eq!(
            check(&["127.0.0.2", "10.0.0.1"], "127.0.0.1:5000"),
            Err("x509: certificate is valid for 127.0.0.2, 10.0.0.1, not 127.0.0.1".into())
        );
    }

    #[test]
    fn dns_sans_are_matched_by_reverse_then_forward_lookup() {
        // "localhost" resolves to 127.0.0.1 from /etc/hosts on any Linux host.
        assert_eq!(check(&["127.0.0.2", "localhost"], "127.0.0.1:5000"), Ok(()));
        let refused = check(&["peer.invalid"], "127.0.0.1:5000").unwrap_err();
        assert!(
            refused
                .starts_with(r#"tls: "127.0.0.1" does not match any of DNSNames ["peer.invalid"]"#),
            "{refused}"
        );
    }
}
