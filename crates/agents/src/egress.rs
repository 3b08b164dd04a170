//! Where the server may send a model call (the defence against server-side request forgery
//! through a connection's target).
//!
//! A target is checked twice: when a connection is created (its URL: http(s), a host, no
//! userinfo, query or fragment; an IP literal's class; `allow_hosts`) and again at every call,
//! after DNS resolution (every address the name resolves to, and the addresses the HTTP client
//! then connects to, through [`Resolver`]). Always refused: link-local addresses (169.254.0.0/16,
//! where cloud metadata endpoints live, and fe80::/10), fd00:ec2::254, unspecified, broadcast
//! and multicast addresses, and this server's own listen address and its peers' (a connection
//! must not call Holdfast itself). Loopback and private ranges are allowed unless the operator
//! sets `[upstream] allow_private = false`: a local model server (Ollama, vLLM on 127.0.0.1) is
//! the common self-hosted case. `[upstream] allow_hosts`, when not empty, is the whole list of
//! hosts a target may name (`models.internal`, `*.openai.azure.com`, `10.0.0.7`).
//!
//! Redirects are never followed: a 3xx is an upstream error like any other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use holdfast_types::Error;

use crate::Result;

/// The operator's rules for upstream targets (`[upstream]` in `holdfast.toml`).
#[derive(Clone, Debug)]
pub struct EgressConfig {
    /// Loopback and private ranges (RFC 1918, 100.64.0.0/10, fc00::/7) may be called.
    pub allow_private: bool,
    /// When not empty, the only hosts a target may name: exact names or addresses, or
    /// `*.suffix` for any name under `suffix`.
    pub allow_hosts: Vec<String>,
    /// This server's listen address; never a target.
    pub listen: Option<SocketAddr>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self { allow_private: true, allow_hosts: Vec::new(), listen: None }
    }
}

/// An address's standing, for the rules above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Never called: link-local (metadata endpoints), unspecified, broadcast, multicast.
    Forbidden(&'static str),
    /// Loopback and private ranges.
    Private,
    Public,
}

fn class_v4(ip: Ipv4Addr) -> Class {
    let [a, b, ..] = ip.octets();
    if ip.is_link_local() || ip == Ipv4Addr::new(100, 100, 100, 200) || ip == Ipv4Addr::new(168, 63, 129, 16) {
        Class::Forbidden("a link-local or cloud metadata address (169.254.0.0/16, 100.100.100.200, 168.63.129.16)")
    } else if a == 0 {
        Class::Forbidden("an unspecified address")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Class::Forbidden("a broadcast or multicast address")
    } else if ip.is_loopback() || ip.is_private() || (a == 100 && (64..128).contains(&b)) || (a == 198 && (b == 18 || b == 19)) {
        Class::Private
    } else {
        Class::Public
    }
}

fn class(ip: IpAddr) -> Class {
    match ip.to_canonical() {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return class_v4(v4);
            }
            let segments = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return class_v4(Ipv4Addr::from(u32::from(segments[6]) << 16 | u32::from(segments[7])));
            }
            if v6.is_unicast_link_local() {
                Class::Forbidden("a link-local address (fe80::/10)")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Class::Forbidden("a cloud metadata endpoint (fd00:ec2::254)")
            } else if v6.is_unspecified() {
                Class::Forbidden("an unspecified address")
            } else if v6.is_multicast() {
                Class::Forbidden("a multicast address")
            } else if v6.is_loopback() || v6.is_unique_local() {
                Class::Private
            } else {
                Class::Public
            }
        }
    }
}

/// The rules, with this server's own addresses.
#[derive(Debug)]
pub(crate) struct Egress {
    config: EgressConfig,
    /// The peers' `(host, port)`, from their URLs.
    peers: Vec<(String, u16)>,
}

fn refused(target: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("connection target {target:?} is refused: {why}"))
}

/// A URL's host as written (brackets removed from an IPv6 literal), lowercase.
fn host_of(url: &url::Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
        url::Host::Ipv4(ip) => Some(ip.to_string()),
        url::Host::Ipv6(ip) => Some(ip.to_string()),
    }
}

impl Egress {
    pub(crate) fn new(config: EgressConfig, peer_urls: impl IntoIterator<Item = String>) -> Self {
        let peers = peer_urls
            .into_iter()
            .filter_map(|u| {
                let url = url::Url::parse(&u).ok()?;
                Some((host_of(&url)?, url.port_or_known_default()?))
            })
            .collect();
        Self { config, peers }
    }

    /// Checks a target as written: the URL's shape, and what can be told without DNS (an IP
    /// literal's class, the allowed hosts, this server and its peers by name).
    pub(crate) fn check_target(&self, target: &str) -> Result<url::Url> {
        if target.len() > 2048 {
            return Err(refused(&target.chars().take(64).collect::<String>(), "it is longer than 2048 characters"));
        }
        let url = url::Url::parse(target).map_err(|e| refused(target, format!("it is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused(target, "it must be an http(s) URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refused(target, "it carries a user name or password; give the key as the connection's api_key"));
        }
        if url.fragment().is_some() {
            return Err(refused(target, "it carries a fragment (#…)"));
        }
        if url.query().is_some() {
            return Err(refused(target, "it carries a query (?…); a target is a base URL such as https://host/v1"));
        }
        let host = host_of(&url).ok_or_else(|| refused(target, "it names no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        if !self.config.allow_hosts.is_empty() && !self.config.allow_hosts.iter().any(|p| host_matches(p, &host)) {
            return Err(refused(
                target,
                format!("host {host} is not in this server's [upstream] allow_hosts ({})", self.config.allow_hosts.join(", ")),
            ));
        }
        if self.peers.iter().any(|(h, p)| *h == host && *p == port) {
            return Err(refused(target, "it is a peer region of this server"));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_address(SocketAddr::new(ip, port)).map_err(|why| refused(target, why))?;
        }
        Ok(url)
    }

    /// Checks a target at call time: its URL again (the rules may have changed since the
    /// connection was made), then every address its host resolves to.
    pub(crate) async fn check_call(&self, target: &str) -> Result<()> {
        let url = self.check_target(target)?;
        let host = host_of(&url).ok_or_else(|| refused(target, "it names no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        if host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Error::unavailable(format!("cannot resolve the upstream host {host}: {e}")))?;
        for addr in addrs {
            self.check_address(addr).map_err(|why| refused(target, format!("{host} resolves to {}, {why}", addr.ip())))?;
        }
        Ok(())
    }

    /// Why an address may not be called, if it may not.
    fn check_address(&self, addr: SocketAddr) -> std::result::Result<(), String> {
        match class(addr.ip()) {
            Class::Forbidden(what) => return Err(format!("{what}, which is never called")),
            Class::Private if !self.config.allow_private => {
                return Err("a loopback or private address, and this server's [upstream] allow_private is false".into());
            }
            _ => {}
        }
        let ip = addr.ip().to_canonical();
        if let Some(own) = self.config.listen {
            let same_host = ip == own.ip().to_canonical() || (own.ip().is_unspecified() && class(ip) != Class::Public);
            if addr.port() == own.port() && (same_host || ip.is_loopback()) {
                return Err("this server's own listen address".into());
            }
        }
        if self.peers.iter().any(|(h, p)| h.parse::<IpAddr>().ok().map(|i| i.to_canonical()) == Some(ip) && *p == addr.port()) {
            return Err("a peer region of this server".into());
        }
        Ok(())
    }

    /// The addresses of `addrs` the HTTP client may connect to.
    fn permitted(&self, addrs: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
        addrs.filter(|a| self.check_address(*a).is_ok()).collect()
    }
}

/// `allow_hosts` matching: an exact host, or `*.suffix` for names under `suffix`.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        // Names only: a wildcard never matches an address.
        Some(suffix) if !suffix.is_empty() && host.parse::<IpAddr>().is_err() => {
            host.strip_suffix(suffix).is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
        }
        Some(_) => false,
        None => pattern.trim_start_matches('[').trim_end_matches(']') == host,
    }
}

/// The HTTP client's resolver: resolves as usual, then drops every address the rules refuse,
/// so a name that resolved to an allowed address for [`Egress::check_call`] cannot be rebound
/// to a refused one by the time the client connects. (The client learns the port only after
/// resolving, so the own-address rule is checked in `check_call`; the address classes here.)
pub(crate) struct Resolver(pub(crate) Arc<Egress>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let permitted = egress.permitted(addrs);
            if permitted.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no address this server may call").into();
                return Err(e);
            }
            let addrs: reqwest::dns::Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow_private: bool, allow_hosts: &[&str]) -> Egress {
        let config = EgressConfig {
            allow_private,
            allow_hosts: allow_hosts.iter().map(|s| s.to_string()).collect(),
            listen: Some("127.0.0.1:8480".parse().expect("addr")),
        };
        Egress::new(config, ["http://10.1.2.3:8480".to_owned(), "https://west.example:9443/".to_owned()])
    }

    #[test]
    fn targets_are_refused_by_shape_and_class() {
        let e = egress(true, &[]);
        for ok in ["http://127.0.0.1:11434/v1", "https://api.openai.com/v1", "http://[::1]:8000/v1", "http://10.0.0.5/v1"] {
            e.check_target(ok).unwrap_or_else(|err| panic!("{ok}: {}", err.message));
        }
        let cases = [
            ("http://127.0.0.1:9/admin#", "fragment"),
            ("http://user:pw@models.local/v1", "user name"),
            ("http://models.local/v1?x=1", "query"),
            ("ftp://models.local/v1", "http(s)"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[fe80::1]/v1", "link-local"),
            ("http://[fd00:ec2::254]/", "metadata"),
            ("http://[::ffff:169.254.169.254]/", "link-local"),
            ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),
            ("http://0.0.0.0:8480/", "unspecified"),
            ("http://127.0.0.1:8480/v1", "own listen"),
            ("http://[::ffff:127.0.0.1]:8480/v1", "own listen"),
            ("http://[::ffff:10.1.2.3]:8480/v1", "peer"),
            ("https://west.example.:9443/v1", "peer"),
            ("http://100.100.100.200/latest/meta-data", "link-local"),
            ("http://168.63.129.16/machine", "link-local"),
            ("http://localhost:8480/v1", "own listen"),
            ("http://10.1.2.3:8480/v1", "peer"),
            ("https://west.example:9443/v1", "peer"),
        ];
        for (target, why) in cases {
            let err = match e.check_target(target) {
                Ok(_) if target.contains("localhost") => continue, // a name: refused at call time
                Ok(_) => panic!("{target} was accepted"),
                Err(err) => err,
            };
            assert!(err.message.contains(why), "{target}: {}", err.message);
        }
    }

    #[tokio::test]
    async fn a_name_is_checked_after_resolution() {
        let e = egress(true, &[]);
        let err = e.check_call("http://localhost:8480/v1").await.expect_err("own address by name");
        assert!(err.message.contains("own listen"), "{}", err.message);
        e.check_call("http://localhost:11434/v1").await.expect("another loopback port is allowed");
        let closed = egress(false, &[]);
        let err = closed.check_call("http://localhost:11434/v1").await.expect_err("private closed");
        assert!(err.message.contains("allow_private"), "{}", err.message);
        let err = closed.check_target("http://10.0.0.5/v1").expect_err("private literal");
        assert!(err.message.contains("allow_private"), "{}", err.message);
    }

    #[test]
    fn allow_hosts_narrows_the_targets() {
        let e = egress(true, &["*.openai.azure.com", "models.internal"]);
        e.check_target("https://east.openai.azure.com/openai/v1").expect("wildcard");
        e.check_target("http://models.internal:8000/v1").expect("exact");
        for bad in ["https://openai.azure.com/v1", "https://evil.com/v1", "http://127.0.0.1:11434/v1"] {
            let err = e.check_target(bad).expect_err(bad);
            assert!(err.message.contains("allow_hosts"), "{bad}: {}", err.message);
        }
    }
}
