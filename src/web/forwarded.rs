//! Who the client is: the peer address, or — only when the peer is a trusted proxy — the
//! address it reports in `X-Forwarded-For` (SPEC §3).

use std::net::IpAddr;

use http::header::HeaderMap;
use ipnet::IpNet;

pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    let peer = canonical(peer);
    trusted.iter().any(|n| n.contains(&peer))
}

/// The client's address: walk `X-Forwarded-For` from the right while hops are trusted
/// proxies; the first untrusted hop is the client. An untrusted peer's header is ignored
/// entirely, so nobody can choose their own address for rate limiting or the audit.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    // From the right: what the client wrote itself is on the left, and an entry there
    // that is not an address must not hide the one our proxy appended after it.
    for hop in hops.into_iter().rev() {
        let Some(hop) = parse_hop(hop) else { break };
        client = canonical(hop);
        if !is_trusted(client, trusted) {
            break;
        }
    }
    client
}

/// An address, or an address with a port as some load balancers write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are treated as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn untrusted_peer_cannot_choose_its_address() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, &xff("1.2.3.4"), &trusted), peer);
    }

    #[test]
    fn trusted_peer_reports_the_client() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let got = client_ip(peer, &xff("6.6.6.6, 198.51.100.7, 10.2.2.2"), &trusted);
        assert_eq!(got, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        assert_eq!(client_ip(peer, &xff("garbage"), &trusted), peer);
    }

    #[test]
    fn what_the_client_wrote_on_the_left_does_not_hide_the_address_appended_after_it() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        for header in [
            "garbage, 198.51.100.7",
            "1.2.3.4 x, 198.51.100.7, 10.2.2.2",
            "198.51.100.7:4711",
            "garbage, 198.51.100.7:4711, 10.2.2.2",
        ] {
            assert_eq!(client_ip(peer, &xff(header), &trusted), client, "{header}");
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(client_ip(peer, &xff("[2001:db8::1]:443"), &trusted), v6);
        // An entry that is not an address on the trusted side stops the walk at the hop
        // that reported it.
        assert_eq!(
            client_ip(peer, &xff("198.51.100.7, garbage"), &trusted),
            peer
        );
    }
}
