//! Which client a request comes from when it may have passed through reverse proxies.
//!
//! Off by default: `X-Forwarded-For` is ignored unless the connection comes from a trusted
//! proxy (`SAGAFLOW_TRUSTED_PROXIES`, addresses or CIDR blocks), so a client cannot spoof the
//! header to escape its rate limit. From a trusted proxy, the header is read right to left
//! and the first hop that is not itself a trusted proxy is the client: the entries further
//! left were written by the client and prove nothing.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `SAGAFLOW_TRUSTED_PROXIES` entry that is neither an address nor a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IP address or CIDR block: {0:?} (expected e.g. 10.0.0.0/8,192.168.1.7)")]
pub struct BadProxyEntry(String);

impl FromStr for TrustedProxies {
    type Err = BadProxyEntry;

    /// Comma-separated addresses and CIDR blocks; empty = trust no proxy.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadProxyEntry(entry.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&list.join(","))
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a connection from `peer` that carried the `X-Forwarded-For` header
    /// values `forwarded_for` (in the order received).
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // An unreadable hop ends the chain: the last address vouched for is the client.
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("203.0.113.9"), ["1.2.3.4"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8, 192.168.1.7".parse().unwrap();
        assert_eq!(
            proxies.client_ip(ip("10.0.0.2"), ["198.51.100.4"]),
            ip("198.51.100.4")
        );
        assert_eq!(
            proxies.client_ip(ip("192.168.1.7"), ["198.51.100.4, 10.1.1.1"]),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn a_spoofed_entry_left_of_the_client_is_not_believed() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        // The client sent "X-Forwarded-For: 1.1.1.1"; the proxy appended its real address.
        assert_eq!(
            proxies.client_ip(ip("10.0.0.2"), ["1.1.1.1", "198.51.100.4"]),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_pick_its_key() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            proxies.client_ip(ip("203.0.113.9"), ["10.0.0.5"]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn garbage_ends_the_chain_at_the_last_trusted_hop() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            proxies.client_ip(ip("10.0.0.2"), ["not-an-ip"]),
            ip("10.0.0.2")
        );
        assert!("10.0.0.0/8,nonsense".parse::<TrustedProxies>().is_err());
    }
}
