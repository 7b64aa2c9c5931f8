//! The client's address behind a load balancer.
//!
//! The per-address login limits (and the address a ledger leaf names) need
//! the client's address, not the balancer's: behind HAProxy every request
//! comes from the balancer, and one address's failures would lock every
//! login. A peer listed in [`TrustedProxies`] is believed about the client
//! it forwards for (`X-Forwarded-For`, which HAProxy's `option forwardfor`
//! appends to); no one else is. The client is the rightmost address not
//! itself a trusted proxy: what a client writes in the header itself sits
//! to the left of what the proxies appended, and is never reached.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::ApiError;

/// The header load balancers name the client in.
const FORWARDED_FOR: &str = "x-forwarded-for";

/// The peers believed about the client they forward for (none by default).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

/// A trusted proxy that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an address or network (a.b.c.d, a.b.c.d/n, an IPv6 address or network)")]
pub struct BadProxy;

impl TrustedProxies {
    /// Trusts these networks.
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies(networks.into())
    }

    /// Parses one network (`10.0.0.0/8`) or address (`127.0.0.1`).
    pub fn parse_one(text: &str) -> Result<IpNet, BadProxy> {
        let text = text.trim();
        IpNet::from_str(text)
            .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
            .map_err(|_| BadProxy)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may reach a dual-stack socket as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client a request from `peer` is for: `peer` itself unless it is
    /// a trusted proxy that names one. A forwarded address that does not
    /// parse where the proxies wrote is a 400 naming the header.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<SocketAddr, ApiError> {
        if !self.trusts(peer.ip()) {
            return Ok(peer);
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all(FORWARDED_FOR) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::invalid(FORWARDED_FOR, "must be ASCII addresses"))?;
            hops.extend(value.split(',').map(str::trim));
        }
        for hop in hops.iter().rev() {
            let ip = parse_hop(hop).ok_or_else(|| {
                ApiError::invalid(FORWARDED_FOR, "a forwarded hop is not an IP address")
            })?;
            if !self.trusts(ip) {
                return Ok(SocketAddr::new(ip, 0));
            }
        }
        // Only proxies (or no header: the balancer's own health checks).
        Ok(hops
            .first()
            .and_then(|h| parse_hop(h))
            .map_or(peer, |ip| SocketAddr::new(ip, 0)))
    }
}

/// One hop: an address, possibly with a port (`a.b.c.d:p`, `[v6]:p`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    IpAddr::from_str(hop)
        .ok()
        .or_else(|| SocketAddr::from_str(hop).ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            list.iter()
                .map(|p| TrustedProxies::parse_one(p).unwrap())
                .collect(),
        )
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let p = proxies(&["10.0.0.0/8"]);
        let claim = headers(&["192.0.2.9"]);
        assert_eq!(
            p.client(peer("198.51.100.1"), &claim).unwrap(),
            peer("198.51.100.1")
        );
        // No proxy trusted: the header is never read.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(peer("10.0.0.1"), &claim).unwrap(),
            peer("10.0.0.1")
        );
    }

    #[test]
    fn the_client_is_the_rightmost_hop_not_a_proxy() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        // A client's forged entry sits left of what the proxies appended.
        let h = headers(&["6.6.6.6, 203.0.113.7", "10.1.2.3"]);
        assert_eq!(
            p.client(peer("127.0.0.1"), &h).unwrap().ip(),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // Ports and IPv6, and an IPv4 peer on a dual-stack socket.
        let h = headers(&["[2001:db8::1]:443"]);
        assert_eq!(
            p.client(peer("::ffff:127.0.0.1"), &h).unwrap().ip(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // The balancer's own health check: no header.
        assert_eq!(
            p.client(peer("127.0.0.1"), &HeaderMap::new()).unwrap(),
            peer("127.0.0.1")
        );
    }

    #[test]
    fn garbage_where_the_proxies_wrote_is_a_400_naming_the_header() {
        let p = proxies(&["127.0.0.1"]);
        let e = p
            .client(peer("127.0.0.1"), &headers(&["not-an-address"]))
            .unwrap_err();
        assert_eq!(e.field(), Some(FORWARDED_FOR));
        // Garbage left of the client's real address is never reached.
        let ok = p
            .client(peer("127.0.0.1"), &headers(&["garbage, 192.0.2.1"]))
            .unwrap();
        assert_eq!(ok.ip(), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn proxies_parse_as_networks_or_addresses() {
        assert!(TrustedProxies::parse_one("127.0.0.1").is_ok());
        assert!(TrustedProxies::parse_one(" 10.0.0.0/8 ").is_ok());
        assert!(TrustedProxies::parse_one("fd00::/8").is_ok());
        assert_eq!(TrustedProxies::parse_one("10.0.0.0/33"), Err(BadProxy));
        assert_eq!(TrustedProxies::parse_one("localhost"), Err(BadProxy));
    }

    proptest! {
        /// Whatever the header holds, no panic; and an untrusted peer is
        /// always its own client.
        #[test]
        fn any_header_is_answered(value in "[ -~]{0,80}") {
            let p = proxies(&["127.0.0.1"]);
            if let Ok(v) = HeaderValue::from_str(&value) {
                let mut h = HeaderMap::new();
                h.insert(FORWARDED_FOR, v);
                let _ = p.client(peer("127.0.0.1"), &h);
                prop_assert_eq!(p.client(peer("192.0.2.1"), &h).unwrap(), peer("192.0.2.1"));
            }
        }
    }
}
