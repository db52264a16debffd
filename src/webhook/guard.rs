//! Safe webhooks: evrouter never sends to an address inside the network it runs in
//! (loopback, link-local with the cloud metadata service at 169.254.169.254, private,
//! unique-local, CGNAT, unspecified, multicast, broadcast; IPv4-mapped IPv6 included)
//! unless the host or a network holding the address is on `[webhooks] allow`. Endpoint
//! URLs are checked when a subscription is created, and every connection is checked again
//! on the address it resolves to at that moment, so a name that later resolves elsewhere
//! (DNS rebinding) is refused too. Redirects are never followed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

/// The allow list, and the check of an address against it.
#[derive(Debug, Default)]
pub struct Guard {
    networks: Vec<IpNet>,
    hosts: Vec<String>,
}

/// Why an endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Guard {
    /// A guard allowing the hosts, addresses and networks (CIDR) of `allow`.
    pub fn new(allow: &[String]) -> Self {
        let mut guard = Self::default();
        for entry in allow {
            if let Ok(net) = entry.parse::<IpNet>() {
                guard.networks.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                guard.networks.push(IpNet::from(ip));
            } else {
                guard.hosts.push(entry.to_ascii_lowercase());
            }
        }
        guard
    }

    /// Whether the host name itself is on the allow list.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Whether evrouter may connect to `ip`.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        !internal(ip) || self.networks.iter().any(|net| net.contains(&ip))
    }

    /// Checks an endpoint URL now: its host must be allowed, or every address it resolves
    /// to must be.
    pub async fn check_url(&self, url: &str) -> Result<(), Refused> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| Refused(format!("`{url}` is not a URL")))?;
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check_ip(host, ip);
        }
        if self.allows_host(host) {
            return Ok(());
        }
        let port = uri.port_u16().unwrap_or(80);
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Refused(format!("`{host}` does not resolve: {e}")))?
            .collect();
        if addresses.is_empty() {
            return Err(Refused(format!("`{host}` resolves to no address")));
        }
        for address in addresses {
            self.check_ip(host, address.ip())?;
        }
        Ok(())
    }

    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        if self.allows_ip(ip) {
            Ok(())
        } else {
            Err(Refused(format!(
                "`{host}` is {ip}, an internal address ({}); webhooks may only go there when \
                 [webhooks] allow names the host or a network holding it",
                kind(ip)
            )))
        }
    }
}

/// Whether `ip` is inside the network evrouter runs in (or not routable at all).
pub fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => internal_v4(v4),
            None => {
                let [first, second, ..] = v6.segments();
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                    || (first & 0xffc0) == 0xfe80 // link local fe80::/10
                    || (first & 0xffc0) == 0xfec0 // site local fec0::/10 (deprecated)
                    || (first == 0x0064 && second == 0xff9b) // local-use NAT64 64:ff9b:1::/48
                    || (first == 0x2001 && second == 0) // Teredo 2001::/32: hides its IPv4 address
                    || (first == 0x2001 && second == 0x0db8) // documentation 2001:db8::/32
                    || (first == 0x0100 && v6.segments()[1..4] == [0, 0, 0]) // discard 100::/64
            }
        },
    }
}

/// The IPv4 address an IPv6 address carries and reaches: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`), NAT64's
/// well-known prefix (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => v4(hi, lo),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => v4(s[6], s[7]),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => v4(hi, lo),
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        _ => None,
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
}

fn kind(ip: IpAddr) -> &'static str {
    let v4 = match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => embedded_v4(v6),
    };
    match (ip, v4) {
        (_, Some(v4)) if v4.is_loopback() => "loopback",
        (_, Some(v4)) if v4.is_link_local() => "link-local",
        (_, Some(v4)) if v4.is_private() => "private",
        (_, Some(_)) => "not routable",
        (IpAddr::V6(v6), None) if v6.is_loopback() => "loopback",
        (IpAddr::V6(v6), None) if (v6.segments()[0] & 0xfe00) == 0xfc00 => "unique local",
        (IpAddr::V6(v6), None) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "link-local",
        _ => "not routable",
    }
}

/// The webhook client's resolver: a name is resolved now and only its allowed addresses
/// are connected to (all of them for an allowed host name).
#[derive(Clone)]
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl GuardedResolver {
    /// A resolver checking every address with `guard`.
    pub fn new(guard: Arc<Guard>) -> Self {
        Self { guard }
    }
}

type Addresses = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for GuardedResolver {
    type Response = Addresses;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addresses, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if guard.allows_host(&host) {
                return Ok(found.into_iter());
            }
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| guard.allows_ip(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the endpoint's address is refused (internal)",
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let guard = Guard::new(&[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "fd00::1",
            "fe80::1",
            "::",
            // IPv4 inside IPv6: NAT64, 6to4, IPv4-compatible and -translated forms.
            "64:ff9b::169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "::169.254.169.254",
            "::ffff:0:10.0.0.1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!guard.allows_ip(ip), "{ip} should be refused");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(guard.allows_ip(ip), "{ip} should be allowed");
        }
        let allowing = Guard::new(&[
            "127.0.0.0/8".into(),
            "fd00::1".into(),
            "hooks.internal".into(),
        ]);
        assert!(allowing.allows_ip("127.0.0.1".parse().expect("ip")));
        assert!(allowing.allows_ip("fd00::1".parse().expect("ip")));
        assert!(!allowing.allows_ip("10.0.0.1".parse().expect("ip")));
        assert!(allowing.allows_host("HOOKS.internal."));
    }

    #[tokio::test]
    async fn urls_are_checked_on_what_they_resolve_to() {
        let guard = Guard::new(&[]);
        for url in [
            "http://127.0.0.1:8080/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "http://[2002:a9fe:a9fe::]/",
            "http://[::7f00:1]:8080/",
            "http://localhost:9/x",
        ] {
            let refused = guard.check_url(url).await.expect_err(url);
            assert!(refused.0.contains("internal address"), "{url}: {refused}");
        }
        let allowing = Guard::new(&["127.0.0.0/8".into(), "::1".into()]);
        assert!(allowing.check_url("http://localhost:9/x").await.is_ok());
    }
}
