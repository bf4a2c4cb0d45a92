//! Where a person may be sent after signing in: the `rd` parameter, accepted only for the
//! configured app origins (an open redirect on a login page is a phishing tool).
//!
//! Two parsers must agree before a target is accepted: a deliberately narrow one written
//! here (absolute http(s) URL, plain `host[:port]` authority, nothing that browsers are
//! known to read differently) and the WHATWG parser of the `url` crate, which is what the
//! browser will apply to the `Location` header.

use std::fmt;
use std::net::Ipv6Addr;

use url::{Position, Url};

/// Longest `rd` accepted, in bytes; longer ones are not URLs a person navigated to.
pub const MAX_RD_BYTES: usize = 2048;

/// A scheme, host and port (RFC 6454), as configured for the auth origin and each app.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower case; an IPv6 literal keeps its brackets (`[::1]`).
    pub host: String,
    /// Explicit, or the scheme's default (80 / 443).
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a valid origin. Write it as scheme://host[:port] with scheme http or https, for example https://portal.example.com, without a path, user name or trailing dot.")]
pub struct OriginError(pub String);

impl Origin {
    /// Parses a configured origin such as `https://portal.example.com` or
    /// `http://portal.localhost:8080` (a single trailing `/` is allowed).
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        let err = || OriginError(text.chars().take(200).collect());
        let (scheme, authority, rest) = split_absolute(text).ok_or_else(err)?;
        if !(rest.is_empty() || rest == "/") {
            return Err(err());
        }
        parse_authority(scheme, authority).ok_or_else(err)
    }

    /// `host` or `host:port` when the port is not the scheme's default: the form of the
    /// HTTP `Host` header and the `:authority` pseudo-header.
    pub fn authority(&self) -> String {
        if self.port == default_port(&self.scheme) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether a `Host` header value (or `:authority`) names this origin. Case and an
    /// omitted default port do not matter; anything unusual does not match.
    pub fn matches_authority(&self, authority: &str) -> bool {
        parse_authority(&self.scheme, authority).is_some_and(|o| &o == self)
    }
}

impl fmt::Display for Origin {
    /// The serialisation browsers send in the `Origin` header (RFC 6454 §6.2).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())
    }
}

/// An absolute URL on a configured origin. Only [`validate_rd`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectTarget {
    url: String,
    path_start: usize,
    origin: Origin,
}

impl RedirectTarget {
    /// The normalised absolute URL, ready for a `Location` header.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// `/path?query`. Always starts with exactly one `/`, so it is safe as a relative
    /// `Location` on its own origin (a leading `//` would make it scheme-relative).
    pub fn path_and_query(&self) -> &str {
        self.url.get(self.path_start..).unwrap_or("/")
    }
}

/// Accepts `raw` only when it is an absolute `http(s)://host[:port]/path?query` URL whose
/// origin equals one of `allowed_origins` exactly. Everything else is None, and the
/// caller falls back to its default landing page.
pub fn validate_rd(raw: &str, allowed_origins: &[Origin]) -> Option<RedirectTarget> {
    if raw.len() > MAX_RD_BYTES {
        return None;
    }
    // Browsers strip tabs and newlines inside URLs and treat '\' as '/', which is how
    // "https:\\evil" or "/\evil" turn into another host; a fragment is never part of a
    // request target we redirected from. None of them belong in a real `rd`.
    if raw
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\' || c == '#')
    {
        return None;
    }
    let (scheme, authority, rest) = split_absolute(raw)?;
    if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
        return None;
    }
    let origin = parse_authority(scheme, authority)?;
    if !allowed_origins.contains(&origin) {
        return None;
    }

    // Second opinion: what a browser will make of it.
    let url = Url::parse(raw).ok()?;
    let agrees = url.scheme() == origin.scheme
        && url.host_str() == Some(origin.host.as_str())
        && url.port_or_known_default() == Some(origin.port)
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
        && !url.cannot_be_a_base();
    if !agrees {
        return None;
    }
    let path_and_query = &url[Position::BeforePath..Position::AfterQuery];
    // "/.//evil.com" normalises to "//evil.com": a scheme-relative URL if ever used as a
    // relative Location. Refuse it rather than depend on every caller using as_str().
    if !path_and_query.starts_with('/') || path_and_query.starts_with("//") {
        return None;
    }
    let url_str = url.as_str();
    // Normalising percent-encodes characters such as `}` and can triple the length. The
    // result goes into the sign-in form's hidden `rd` field and is validated again on
    // POST and at the callback, so it must itself be within the limit (and far below
    // the form's field limit), or the person loses their way or cannot sign in at all.
    if url_str.len() > MAX_RD_BYTES {
        return None;
    }
    let path_start = url_str.len().checked_sub(path_and_query.len())?;
    Some(RedirectTarget {
        url: url_str.to_owned(),
        path_start,
        origin,
    })
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// Splits `scheme://authority rest` for http and https only (scheme in any case). The
/// authority ends at the first `/`, `?` or `#`, as in RFC 3986 §3.2.
fn split_absolute(text: &str) -> Option<(&'static str, &str, &str)> {
    let (scheme, after) = text.split_once("://")?;
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        "https"
    } else if scheme.eq_ignore_ascii_case("http") {
        "http"
    } else {
        return None;
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    Some((scheme, authority, rest))
}

/// A plain `host[:port]`: DNS name (letters, digits, hyphens, non-empty labels, no
/// trailing dot), IPv4 or bracketed IPv6. No userinfo, no percent-encoding, nothing
/// non-ASCII: each of those is a known way to make two parsers disagree about the host.
fn parse_authority(scheme: &str, authority: &str) -> Option<Origin> {
    if authority.is_empty()
        || !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        // Canonical RFC 5952 text, as the WHATWG parser serialises it.
        let addr: Ipv6Addr = addr.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if !valid_dns_or_ipv4(host) {
            return None;
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => default_port(scheme),
        Some(p) => parse_port(p)?,
    };
    Some(Origin {
        scheme: scheme.to_owned(),
        host,
        port,
    })
}

fn valid_dns_or_ipv4(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_port(p: &str) -> Option<u16> {
    // No leading zeros: one spelling per port, as browsers serialise it.
    if p.is_empty() || p.len() > 5 || p.starts_with('0') || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn allowed() -> Vec<Origin> {
        [
            "https://portal.example.com",
            "https://analytics.example.com:8443",
            "http://portal.localhost:8080",
            "http://127.0.0.1:9000",
            "http://[::1]:8081",
        ]
        .iter()
        .map(|o| Origin::parse(o).unwrap())
        .collect()
    }

    fn ok(raw: &str) -> RedirectTarget {
        validate_rd(raw, &allowed()).unwrap_or_else(|| panic!("should accept {raw:?}"))
    }

    #[test]
    fn origin_parse_reads_scheme_host_and_port() {
        let o = Origin::parse("https://Portal.Example.COM").unwrap();
        assert_eq!(
            o,
            Origin {
                scheme: "https".into(),
                host: "portal.example.com".into(),
                port: 443
            }
        );
        assert_eq!(
            Origin::parse("http://portal.localhost:8080/").unwrap().port,
            8080
        );
        assert_eq!(Origin::parse("http://a.example").unwrap().port, 80);
        assert_eq!(
            Origin::parse("HTTPS://a.example:443").unwrap(),
            Origin::parse("https://a.example").unwrap()
        );
        assert_eq!(Origin::parse("http://[::1]:8081").unwrap().host, "[::1]");
        assert_eq!(
            Origin::parse("http://[0:0::0001]:8081").unwrap().host,
            "[::1]"
        );
    }

    #[test]
    fn origin_parse_refuses_what_is_not_an_origin() {
        for bad in [
            "",
            "portal.example.com",
            "//portal.example.com",
            "ftp://portal.example.com",
            "https://",
            "https://portal.example.com/app",
            "https://portal.example.com?x",
            "https://portal.example.com#x",
            "https://user@portal.example.com",
            "https://portal.example.com.",
            "https://portal..example.com",
            "https://portal.example.com:0",
            "https://portal.example.com:99999",
            "https://portal.example.com:",
            "https://portal.example.com:80:80",
            "https://pörtal.example.com",
            "https://portal_example.com",
            "https://[::1",
            "https://[not-ip]:80",
        ] {
            let err = Origin::parse(bad).unwrap_err();
            assert!(err.to_string().contains("scheme://host[:port]"), "{bad:?}");
        }
    }

    #[test]
    fn origin_display_and_authority_omit_default_ports() {
        let a = Origin::parse("https://portal.example.com:443").unwrap();
        assert_eq!(a.to_string(), "https://portal.example.com");
        assert_eq!(a.authority(), "portal.example.com");
        let b = Origin::parse("http://portal.localhost:8080").unwrap();
        assert_eq!(b.to_string(), "http://portal.localhost:8080");
        assert_eq!(b.authority(), "portal.localhost:8080");
    }

    #[test]
    fn origin_matches_host_headers() {
        let a = Origin::parse("https://portal.example.com").unwrap();
        assert!(a.matches_authority("portal.example.com"));
        assert!(a.matches_authority("PORTAL.example.com:443"));
        assert!(!a.matches_authority("portal.example.com:8443"));
        assert!(!a.matches_authority("portal.example.com."));
        assert!(!a.matches_authority("evil.com@portal.example.com"));
        assert!(!a.matches_authority(""));
        let b = Origin::parse("http://portal.localhost:8080").unwrap();
        assert!(b.matches_authority("portal.localhost:8080"));
        assert!(!b.matches_authority("portal.localhost"));
    }

    #[test]
    fn good_targets_are_accepted_and_normalised() {
        let t = ok("https://portal.example.com/reports?year=2024&q=a%20b");
        assert_eq!(
            t.as_str(),
            "https://portal.example.com/reports?year=2024&q=a%20b"
        );
        assert_eq!(t.path_and_query(), "/reports?year=2024&q=a%20b");
        assert_eq!(
            t.origin(),
            &Origin::parse("https://portal.example.com").unwrap()
        );

        let t = ok("https://portal.example.com");
        assert_eq!(t.as_str(), "https://portal.example.com/");
        assert_eq!(t.path_and_query(), "/");

        let t = ok("https://portal.example.com?x=1");
        assert_eq!(t.path_and_query(), "/?x=1");

        // Uppercase scheme and host are normalised, not refused; so is an explicit
        // default port.
        let t = ok("HTTPS://PORTAL.Example.com:443/Path/Keeps/Case");
        assert_eq!(t.as_str(), "https://portal.example.com/Path/Keeps/Case");

        assert_eq!(
            ok("https://analytics.example.com:8443/x").path_and_query(),
            "/x"
        );
        assert_eq!(
            ok("http://portal.localhost:8080/").as_str(),
            "http://portal.localhost:8080/"
        );
        assert_eq!(
            ok("http://127.0.0.1:9000/a").as_str(),
            "http://127.0.0.1:9000/a"
        );
        assert_eq!(ok("http://[::1]:8081/a").as_str(), "http://[::1]:8081/a");
        // Dot segments are resolved the way a browser would.
        assert_eq!(
            ok("https://portal.example.com/a/../b").path_and_query(),
            "/b"
        );
        // Percent-encoding in the path or query is harmless there.
        assert_eq!(
            ok("https://portal.example.com/%2F%2Fevil.com?next=%2F%2Fevil.com").path_and_query(),
            "/%2F%2Fevil.com?next=%2F%2Fevil.com"
        );
        // Exactly 2048 bytes is fine.
        let base = "https://portal.example.com/";
        let max = format!("{base}{}", "a".repeat(MAX_RD_BYTES - base.len()));
        assert_eq!(ok(&max).as_str().len(), MAX_RD_BYTES);
    }

    #[test]
    fn hostile_targets_are_refused() {
        let long = format!("https://portal.example.com/{}", "a".repeat(MAX_RD_BYTES));
        let hostile = [
            // Other hosts and look-alikes.
            "https://evil.com/",
            "https://portal.example.com.evil.com/",
            "https://evilportal.example.com/",
            "https://portal.example.co/",
            "https://portal.example.com./",
            "https://xn--portal-9za.example.com/",
            // Relative and scheme-relative.
            "/dashboard",
            "dashboard",
            "//evil.com",
            "///evil.com",
            "////evil.com/",
            "https:evil.com",
            "https:/evil.com",
            "https:///evil.com",
            // Backslashes anywhere.
            "/\\evil.com",
            "\\\\evil.com",
            "https:\\\\evil.com",
            "https:/\\evil.com",
            "https://portal.example.com\\@evil.com",
            "https://portal.example.com/\\evil.com",
            // Userinfo.
            "https://portal.example.com@evil.com/",
            "https://u:p@portal.example.com/",
            "https://evil.com@portal.example.com/",
            "https://portal.example.com:443@evil.com/",
            // Control characters and whitespace.
            "https://portal.example.com/\u{0}",
            "https://portal.example.com/a\tb",
            "https://portal.example.com/a\nb",
            "https://portal.exa\tmple.com/",
            "https://portal.example.com/a b",
            " https://portal.example.com/",
            "https://portal.example.com/\u{7f}",
            "https://portal.example.com/\u{a0}",
            "https://portal.example.com/\u{2028}",
            // Percent-encoded tricks in the authority.
            "https://portal.example.com%2F%2Fevil.com/",
            "https://portal.example.com%40evil.com/",
            "https://portal.example.com%5Cevil.com/",
            "https://portal%2Eexample.com/",
            "https://%70ortal.example.com/",
            // Other schemes.
            "javascript:alert(1)",
            "JavaScript://portal.example.com/%0aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "ftp://portal.example.com/",
            "ws://portal.example.com/",
            "file:///etc/passwd",
            // Wrong ports and schemes for a configured host.
            "http://portal.example.com/",
            "https://portal.example.com:8443/",
            "https://analytics.example.com/",
            "http://portal.localhost/",
            "http://portal.localhost:8081/",
            "https://portal.example.com:00443/",
            "https://portal.example.com:/",
            // Paths that become scheme-relative.
            "https://portal.example.com//evil.com",
            "https://portal.example.com/.//evil.com",
            "https://portal.example.com/..//evil.com",
            // Fragments, non-ASCII hosts, odd IPs.
            "https://portal.example.com/#x",
            "https://pörtal.example.com/",
            "http://127.1:9000/",
            "http://2130706433:9000/",
            "http://[::ffff:127.0.0.1]:8081/",
            // Empty and huge.
            "",
            long.as_str(),
        ];
        let allowed = allowed();
        for raw in hostile {
            assert!(validate_rd(raw, &allowed).is_none(), "accepted {raw:?}");
        }
        assert!(hostile.len() >= 20);
    }

    #[test]
    fn target_that_grows_past_the_limit_when_normalised_is_refused() {
        // Found by fuzzing (fuzz/fuzz_targets/redirect.rs): 1000 `}` become 3000 bytes
        // of `%7D`, which the form would send back and the second check would refuse.
        let raw = format!("http://portal.localhost:8080/{}", "}".repeat(1000));
        assert!(raw.len() <= MAX_RD_BYTES);
        assert!(validate_rd(&raw, &allowed()).is_none());
        // Short enough after normalising: accepted, and accepted again unchanged.
        let raw = format!("http://portal.localhost:8080/{}", "}".repeat(600));
        let t = ok(&raw);
        assert!(t.as_str().len() <= MAX_RD_BYTES);
        assert_eq!(validate_rd(t.as_str(), &allowed()), Some(t.clone()));
    }

    #[test]
    fn nothing_is_accepted_without_allowed_origins() {
        assert!(validate_rd("https://portal.example.com/", &[]).is_none());
    }

    #[test]
    fn random_garbage_never_panics() {
        // A small deterministic fuzz over characters that matter to URL parsers.
        let alphabet: Vec<char> = "htps:/\\@%.#?&=[]:0189portalexmc\t\n \u{0}é"
            .chars()
            .collect();
        let allowed = allowed();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut s = String::from("https://portal.example.com");
            let mut x = seed;
            for _ in 0..len {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                s.push(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            if let Some(t) = validate_rd(&s, &allowed) {
                assert!(allowed.contains(t.origin()));
                assert!(t.path_and_query().starts_with('/'));
                assert!(!t.path_and_query().starts_with("//"));
                let reparsed = Url::parse(t.as_str()).unwrap();
                assert_eq!(reparsed.host_str(), Some(t.origin().host.as_str()));
            }
        }
    }
}
