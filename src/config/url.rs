//! etcd's URL rules (`pkg/types.NewURLs`, `embed.checkBindURLs`/`checkHostURLs`):
//! schemes http, https, unix, unixs; `host:port` required; no path. Lists are
//! comma-separated, de-duplicated and sorted by text as etcd does. `localhost` resolves
//! to 127.0.0.1 for binding, as it does on etcd's hosts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::InitialMember;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    Unix,
    Unixs,
}

/// One parsed URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    pub scheme: Scheme,
    /// Host as written (no brackets for IPv6).
    pub host: String,
    pub port: u16,
    /// For http/https URLs whose host is an IP or `localhost` (→ 127.0.0.1).
    pub socket_addr: Option<SocketAddr>,
    /// Canonical text (`scheme://host:port`), as etcd prints and hashes it.
    pub url: String,
}

impl ServerUrl {
    pub fn is_tls(&self) -> bool {
        matches!(self.scheme, Scheme::Https | Scheme::Unixs)
    }
}

/// Parses one URL (etcd `types.NewURLs` element rules).
pub fn parse_url(input: &str) -> Result<ServerUrl, String> {
    let input = input.trim();
    let scheme_error = || format!("URL scheme must be http, https, unix, or unixs: {input}");
    let (scheme_text, rest) = input.split_once("://").ok_or_else(scheme_error)?;
    let scheme_lower = scheme_text.to_ascii_lowercase();
    let scheme = match scheme_lower.as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        "unix" => Scheme::Unix,
        "unixs" => Scheme::Unixs,
        _ => return Err(scheme_error()),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host_port_error = || format!("URL address does not have the form \"host:port\": {input}");
    let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(host_port_error)?;
        (host, after.strip_prefix(':').ok_or_else(host_port_error)?)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or_else(host_port_error)?;
        if host.contains(':') {
            return Err(host_port_error()); // Go: "too many colons"
        }
        (host, port)
    };
    let port: u16 = port_text.parse().map_err(|_| host_port_error())?;
    let path = tail.split(['?', '#']).next().unwrap_or("");
    if !path.is_empty() {
        return Err(format!("URL must not contain a path: {input}"));
    }
    let socket_addr = match scheme {
        Scheme::Http | Scheme::Https => {
            let ip = if host == "localhost" {
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            } else {
                host.parse::<IpAddr>().ok()
            };
            ip.map(|ip| SocketAddr::new(ip, port))
        }
        Scheme::Unix | Scheme::Unixs => None,
    };
    Ok(ServerUrl {
        scheme,
        host: host.to_owned(),
        port,
        socket_addr,
        url: format!("{scheme_lower}://{authority}"),
    })
}

/// A comma-separated list: each parsed, duplicates dropped, sorted by text.
pub fn parse_urls(text: &str) -> Result<Vec<ServerUrl>, String> {
    let mut urls: Vec<ServerUrl> = Vec::new();
    for part in text.split(',') {
        let parsed = parse_url(part)?;
        if !urls.iter().any(|u| u.url == parsed.url) {
            urls.push(parsed);
        }
    }
    urls.sort_by(|a, b| a.url.cmp(&b.url));
    Ok(urls)
}

/// Listen URLs must name an IP (or `localhost`) for http/https.
pub fn check_bind_urls(urls: &[ServerUrl]) -> Result<(), String> {
    for u in urls {
        if matches!(u.scheme, Scheme::Http | Scheme::Https) && u.socket_addr.is_none() {
            return Err(format!("expected IP in URL for binding ({})", u.url));
        }
    }
    Ok(())
}

/// Advertised URLs need a non-empty host.
pub fn check_host_urls(urls: &[ServerUrl]) -> Result<(), String> {
    for u in urls {
        if u.host.is_empty() {
            return Err(format!("unexpected empty host ({})", u.url));
        }
    }
    Ok(())
}

pub fn join(urls: &[ServerUrl]) -> String {
    urls.iter()
        .map(|u| u.url.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `--initial-cluster` (etcd `types.NewURLsMap`): `name=url,name=url,...`; a name may
/// repeat to give a member several URLs. Members come back sorted by name.
pub fn parse_urls_map(text: &str) -> Result<Vec<InitialMember>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for entry in text.split(',').filter(|e| !e.is_empty()) {
        let (name, url) = entry.split_once('=').unwrap_or((entry, ""));
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_owned()),
            None => members.push((name.to_owned(), vec![url.to_owned()])),
        }
    }
    members.sort_by(|a, b| a.0.cmp(&b.0));
    members
        .into_iter()
        .map(|(name, urls)| {
            Ok(InitialMember {
                name,
                peer_urls: parse_urls(&urls.join(","))?,
            })
        })
        .collect()
}
