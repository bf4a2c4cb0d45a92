//! Header hygiene for forwarding: hop-by-hop removal (RFC 9110 §7.6.1) in both directions,
//! and the `X-Forwarded-*` headers the upstream sees.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop fields of RFC 9110 §7.6.1 plus the legacy ones proxies still meet.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// What a client may have sent about earlier hops; replaced by what we know.
const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers and every header named in `Connection`. Returns the
/// `Upgrade` value when the message asked for a protocol upgrade, so the caller can
/// re-add exactly that on the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut upgrade = None;
    if headers.contains_key(header::CONNECTION) {
        let mut named: Vec<HeaderName> = Vec::new();
        let mut wants_upgrade = false;
        for v in headers.get_all(header::CONNECTION) {
            wants_upgrade |= named_in_connection(v, &mut named);
        }
        if wants_upgrade {
            upgrade = headers.get(header::UPGRADE).cloned();
        }
        for name in named {
            headers.remove(name);
        }
    }
    remove_where(headers, is_hop_by_hop);
    upgrade
}

/// Whether a field is hop-by-hop by its name alone (RFC 9110 §7.6.1, and the legacy
/// ones): it goes whatever `Connection` says.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Adds to `named` the fields one `Connection` value names that [`is_hop_by_hop`] does
/// not take anyway, and says whether it asks for an upgrade.
pub fn named_in_connection(value: &HeaderValue, named: &mut Vec<HeaderName>) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut wants_upgrade = false;
    for token in value.split(',') {
        let token = token.trim();
        if token.eq_ignore_ascii_case("upgrade") {
            wants_upgrade = true;
        }
        // `close`, `keep-alive` and the like (almost every response names one) go
        // anyway: parsing them into a name would allocate on every request.
        let goes_anyway = token.eq_ignore_ascii_case("close")
            || HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h));
        if goes_anyway {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            named.push(name);
        }
    }
    wants_upgrade
}

/// Removes every field whose name `doomed` picks, looking at each name once. Nothing is
/// hashed unless something goes: most messages carry none of the fields a proxy drops,
/// and removing by name hashes the name whether or not it is there — two dozen times a
/// request, a measurable share of its CPU time (BENCHMARKS.md).
pub fn remove_where(headers: &mut HeaderMap, mut doomed: impl FnMut(&HeaderName) -> bool) {
    // Linear in the number of fields, however many go: a client decides how many it
    // sends (HTTP/2 allows thousands). The few a message usually has to lose are noted on
    // the stack; only a message with more than that pays for a list, and a second look.
    let mut found: [Option<HeaderName>; 8] = Default::default();
    let mut count = 0;
    for name in headers.keys() {
        if doomed(name) {
            let Some(slot) = found.get_mut(count) else {
                let all: Vec<HeaderName> = headers
                    .keys()
                    .filter(|name| doomed(name))
                    .cloned()
                    .collect();
                for name in all {
                    headers.remove(&name);
                }
                return;
            };
            *slot = Some(name.clone());
            count += 1;
        }
    }
    for name in found.iter().flatten() {
        headers.remove(name);
    }
}

/// The fields about earlier hops that [`set_forwarded`] replaces with what we know, in
/// any spelling: CGI-style servers read `X_Forwarded_For` as `X-Forwarded-For`.
fn is_replaced_forwarding(name: &str) -> bool {
    if name.contains('_') {
        return is_replaced_forwarding(&name.replace('_', "-"));
    }
    FORWARDING.contains(&name)
}

/// Fields a client may not send at all, removed before anything of ours is added (an
/// identity header may be named `X-Forwarded-User`): the URL-rewriting `X-Original-URL` /
/// `X-Rewrite-URL`, which frameworks take as a proxy's word and a load balancer passes
/// through, always; and from a peer that is not a trusted proxy any `X-Forwarded-*`.
/// Underscore spellings count.
pub fn is_client_forwarding(name: &str, peer_trusted: bool) -> bool {
    if name.contains('_') {
        return is_client_forwarding(&name.replace('_', "-"), peer_trusted);
    }
    name == "x-original-url"
        || name == "x-rewrite-url"
        || (!peer_trusted && name.starts_with("x-forwarded-"))
}

/// An address as a header value, formatted on the stack: on every proxied request, so the
/// header's own copy is its only allocation.
fn peer_value(peer: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = peer else {
        // The longest address text, an IPv6 address with all eight groups, is 39 bytes.
        let mut text = [0u8; 48];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        std::io::Write::write_fmt(&mut cursor, format_args!("{peer}")).ok()?;
        let len = usize::try_from(cursor.position()).ok()?;
        return HeaderValue::from_bytes(&text[..len]).ok();
    };
    // By hand: through the formatting machinery an IPv4 address took more instructions
    // than all the rest of the forwarding headers (BENCHMARKS.md).
    let mut text = [0u8; 15];
    let mut len = 0;
    for octet in v4.octets() {
        if len > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).ok()
}

/// The `X-Forwarded-*` an upstream sees. A client's own `X-Forwarded-For` / `-Proto` are
/// kept only when the peer is a trusted proxy (a load balancer in front of us).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    let prior_for = if peer_trusted {
        let joined: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!joined.is_empty()).then(|| joined.join(", "))
    } else {
        None
    };
    // Only the two values we would send ourselves are passed on, so both are static.
    let prior_proto = if peer_trusted {
        match headers.get(&X_FORWARDED_PROTO).map(HeaderValue::as_bytes) {
            Some(b"https") => Some("https"),
            Some(b"http") => Some("http"),
            _ => None,
        }
    } else {
        None
    };
    remove_where(headers, |name| is_replaced_forwarding(name.as_str()));
    let xff = match prior_for {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {peer}")).ok(),
        None => peer_value(peer),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(prior_proto.unwrap_or(proto)),
    );
    if let Some(v) = host {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn proxy_fields_from_a_trusted_proxy_pass_and_from_anyone_else_do_not() {
        for replaced in [
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
            "x_forwarded_for",
            "x_real_ip",
        ] {
            assert!(is_replaced_forwarding(replaced), "{replaced}");
        }
        for ours in ["x-forwarded-user", "x-forwarded-email", "x-forwarded-port"] {
            assert!(!is_replaced_forwarding(ours), "{ours}");
        }
        for trusted in [false, true] {
            for never in ["x-original-url", "x-rewrite-url", "x_original_url"] {
                assert!(is_client_forwarding(never, trusted), "{never}");
            }
            for theirs in ["x-forwarded-port", "x-forwarded-prefix", "x_forwarded_ssl"] {
                assert_eq!(
                    is_client_forwarding(theirs, trusted),
                    !trusted,
                    "{theirs}, trusted: {trusted}"
                );
            }
            for other in ["x-trace-id", "x_trace_id", "host", "forwarded-for"] {
                assert!(!is_client_forwarding(other, trusted), "{other}");
            }
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn headers_named_after_close_or_a_standard_hop_are_removed_too() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Close, TE, X-Private"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-second"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-second", HeaderValue::from_static("2"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn every_value_of_every_doomed_field_goes_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.append("keep-alive", HeaderValue::from_static("timeout=5"));
        h.append("keep-alive", HeaderValue::from_static("max=100"));
        h.append("x-kept", HeaderValue::from_static("1"));
        h.append("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.append("x-kept", HeaderValue::from_static("2"));
        h.append(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.append(header::TRAILER, HeaderValue::from_static("x-checksum"));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h.get_all("x-kept").iter().count(), 2);
        assert_eq!(h[header::ACCEPT], "*/*");

        let mut untouched = HeaderMap::new();
        untouched.append(header::HOST, HeaderValue::from_static("portal.localhost"));
        untouched.append("x-kept", HeaderValue::from_static("1"));
        let before = untouched.clone();
        remove_where(&mut untouched, |_| false);
        assert_eq!(untouched, before);
    }

    #[test]
    fn each_name_is_looked_at_once_however_many_go() {
        let mut h = HeaderMap::new();
        for i in 0..500 {
            h.append(
                HeaderName::from_bytes(format!("x-kept-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        for i in 0..500 {
            h.append(
                HeaderName::from_bytes(format!("x-portcullis-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("spoofed"),
            );
        }
        let mut looked_at = 0;
        remove_where(&mut h, |name| {
            looked_at += 1;
            name.as_str().starts_with("x-portcullis-")
        });
        assert_eq!(h.keys_len(), 500);
        assert!(h.keys().all(|name| name.as_str().starts_with("x-kept-")));
        assert!(
            looked_at <= 2 * 1000,
            "{looked_at} looks at 1000 names: at most two each, not one per removal"
        );
    }

    #[test]
    fn a_clients_forwarding_headers_all_go_however_many_it_sent() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        h.append(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.append(header::FORWARDED, HeaderValue::from_static("for=7.7.7.7"));
        h.append("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.append("x-app-header", HeaderValue::from_static("kept"));
        set_forwarded(&mut h, "192.0.2.1".parse().unwrap(), false, "http", None);
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["192.0.2.1"]);
        assert!(h.get(header::FORWARDED).is_none());
        assert!(h.get("x-real-ip").is_none());
        assert!(h.get("x-forwarded-host").is_none());
        assert_eq!(h["x-app-header"], "kept");
    }

    #[test]
    fn upgrade_is_reported_for_the_next_hop() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(strip_hop_by_hop(&mut h).unwrap(), "websocket");
        assert!(h.is_empty());
    }

    #[test]
    fn every_ipv4_octet_is_written_as_the_standard_library_writes_it() {
        for octet in 0..=255u8 {
            for at in 0..4 {
                let mut octets = [1, 22, 133, 4];
                octets[at] = octet;
                let peer = IpAddr::from(octets);
                assert_eq!(peer_value(peer).unwrap(), peer.to_string().as_str());
            }
        }
        for peer in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "::ffff:192.0.2.1",
            "::1",
        ] {
            let peer: IpAddr = peer.parse().unwrap();
            assert_eq!(peer_value(peer).unwrap(), peer.to_string().as_str());
        }
    }

    #[test]
    fn forwarded_for_from_untrusted_peer_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            "192.0.2.1".parse().unwrap(),
            false,
            "http",
            Some(HeaderValue::from_static("portal.localhost")),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "portal.localhost");
    }

    #[test]
    fn forwarded_for_from_trusted_peer_is_extended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            "10.0.0.2".parse().unwrap(),
            true,
            "http",
            Some(HeaderValue::from_static("p")),
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarded_headers_for_an_ipv6_peer_and_an_odd_proto() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        set_forwarded(&mut h, longest.parse().unwrap(), true, "https", None);
        assert_eq!(h["x-forwarded-for"], longest);
        // Only http or https from a trusted proxy is passed on; anything else is ours.
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("x-forwarded-host").is_none());
    }
}
