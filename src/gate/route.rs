//! Routing by `Host` / `:authority` to the configured site, and the path checks that
//! decide whether a request may skip sign-in.

use http::header::{self, HeaderMap};
use http::Uri;

use crate::config::{split_host_port, Config};
use crate::web::host_map::HostMap;

/// What a host is to us. The auth origin may also be an app origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    pub app: Option<usize>,
    pub is_auth: bool,
}

#[derive(Debug, Clone)]
pub struct Router {
    /// host → [(port, site)]; ports are the public ones from the config.
    hosts: HostMap<Vec<(u16, Site)>>,
}

impl Router {
    pub fn new(cfg: &Config) -> Self {
        let mut hosts: HostMap<Vec<(u16, Site)>> = HostMap::default();
        let auth = &cfg.server.auth_url;
        for (i, app) in cfg.apps.iter().enumerate() {
            let is_auth = app.url.host == auth.host && app.url.port == auth.port;
            hosts.entry(app.url.host.clone()).or_default().push((
                app.url.port,
                Site {
                    app: Some(i),
                    is_auth,
                },
            ));
        }
        let entry = hosts.entry(auth.host.clone()).or_default();
        if !entry.iter().any(|(p, _)| *p == auth.port) {
            entry.push((
                auth.port,
                Site {
                    app: None,
                    is_auth: true,
                },
            ));
        }
        Self { hosts }
    }

    /// The site for a request. A `Host` without a port matches the site on that host when
    /// there is exactly one (behind a load balancer the public port is not the listener's).
    pub fn route(&self, uri: &Uri, headers: &HeaderMap) -> Option<Site> {
        let authority = match uri.authority() {
            Some(a) => a.as_str(),
            None => headers.get(header::HOST)?.to_str().ok()?,
        };
        let (host, port) = split_host_port(authority)?;
        let candidates = self.hosts.get(host.as_ref())?;
        match port {
            Some(p) => candidates.iter().find(|(cp, _)| *cp == p).map(|(_, s)| *s),
            None => match candidates.as_slice() {
                [(_, only)] => Some(*only),
                several => several
                    .iter()
                    .find(|(cp, _)| *cp == 80 || *cp == 443)
                    .map(|(_, s)| *s),
            },
        }
    }
}

/// A path may be matched against `public_paths` only when it is already in the form an
/// upstream will resolve it to. Dot segments, encoded slashes or dots, backslashes, `;`
/// parameters and empty segments could make `/static/../admin` match `/static/*` here and
/// mean `/admin` upstream, so such paths always require sign-in.
pub fn is_plain_path(path: &str) -> bool {
    // One pass over the bytes: this runs on every proxied request, and a search per rule
    // cost more than the rest of the routing together (BENCHMARKS.md).
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut segment_start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match b {
            b'\\' | b';' => return false,
            b'/' => {
                let segment = &bytes[segment_start..i];
                if segment.is_empty() || is_dot_segment(segment) {
                    return false;
                }
                segment_start = i + 1;
            }
            b'%' if bytes.get(i + 1..i + 3).is_some_and(is_encoded_separator) => return false,
            _ => {}
        }
    }
    // The last segment may be empty: a trailing slash.
    !is_dot_segment(&bytes[segment_start..])
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

/// The two hex digits after a `%` that encode a dot, slash, backslash or NUL, in either
/// case.
fn is_encoded_separator(hex: &[u8]) -> bool {
    matches!(
        [hex[0].to_ascii_lowercase(), hex[1].to_ascii_lowercase()],
        [b'2', b'e'] | [b'2', b'f'] | [b'5', b'c'] | [b'0', b'0']
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::path::Path;

    fn cfg() -> Config {
        Config::parse(
            r#"
[server]
listen = "127.0.0.1:8080"
auth_url = "http://login.localhost:8080"
[[app]]
id = "portal"
name = "Portal"
url = "http://portal.localhost:8080"
upstream = "http://127.0.0.1:9001"
[[app]]
id = "shop"
name = "Shop"
url = "http://shop.example.com"
upstream = "http://127.0.0.1:9002"
"#,
            Path::new("/tmp"),
        )
        .unwrap()
    }

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn routes_by_host_and_port() {
        let r = Router::new(&cfg());
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(
            r.route(&uri, &host("portal.localhost:8080")).unwrap().app,
            Some(0)
        );
        assert_eq!(
            r.route(&uri, &host("PORTAL.localhost.:8080")).unwrap().app,
            Some(0)
        );
        assert!(r.route(&uri, &host("portal.localhost:8081")).is_none());
        assert!(r.route(&uri, &host("evil.localhost:8080")).is_none());
        assert!(
            r.route(&uri, &host("login.localhost:8080"))
                .unwrap()
                .is_auth
        );
        assert_eq!(
            r.route(&uri, &host("shop.example.com")).unwrap().app,
            Some(1)
        );
        assert!(r.route(&uri, &HeaderMap::new()).is_none());
        assert!(r.route(&uri, &host("a b")).is_none());
        let h2: Uri = "https://shop.example.com/x".parse().unwrap();
        assert_eq!(r.route(&h2, &HeaderMap::new()).unwrap().app, Some(1));
    }

    /// The rules read one at a time, as `is_plain_path` once was; it must agree on every
    /// path of up to five characters drawn from the ones that matter.
    fn plain_by_the_rules(path: &str) -> bool {
        let encoded_separator = path.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && matches!(
                    [w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase()],
                    [b'2', b'e'] | [b'2', b'f'] | [b'5', b'c'] | [b'0', b'0']
                )
        });
        path.starts_with('/')
            && !path.contains("//")
            && !path.contains('\\')
            && !path.contains(';')
            && !encoded_separator
            && !path.split('/').any(|seg| seg == "." || seg == "..")
    }

    #[test]
    fn the_one_pass_check_agrees_with_the_rules_on_every_short_path() {
        let alphabet = ['/', '.', '%', '2', 'e', 'F', '5', 'c', '0', ';', '\\', 'a'];
        let mut paths = vec![String::new()];
        let mut checked = 0;
        for _ in 0..5 {
            let mut longer = Vec::new();
            for p in &paths {
                for c in alphabet {
                    let q = format!("{p}{c}");
                    assert_eq!(is_plain_path(&q), plain_by_the_rules(&q), "{q:?}");
                    checked += 1;
                    longer.push(q);
                }
            }
            paths = longer;
        }
        assert_eq!(checked, 12 + 144 + 1728 + 20736 + 248_832);
    }

    #[test]
    fn tricky_paths_are_not_plain() {
        for p in [
            "/static/../admin",
            "/static/%2e%2e/admin",
            "/static/%2E%2E/admin",
            "/static/..%2fadmin",
            "/static//x",
            "/static/.\\admin",
            "/static/x;jsessionid=1",
            "/static/./x",
            "/static/%00",
            "/static/..%2Fadmin",
            "/static/%5cadmin",
            "/static/%5Cadmin",
            "/%2e",
            "//static/x",
            "/static/.",
            "/static/..",
            "/..",
            "static/x",
            "",
        ] {
            assert!(!is_plain_path(p), "{p}");
        }
        assert!(is_plain_path("/static/app.css"));
        assert!(is_plain_path("/healthz"));
        assert!(is_plain_path("/static/a.b/c..d"));
        assert!(is_plain_path("/static/100%25/x%20y"));
        assert!(is_plain_path("/static/ends-with-%2"));
        assert!(is_plain_path("/static/x/"));
        assert!(is_plain_path("/"));
        assert!(is_plain_path("/static/.well-known/x..y/..z"));
    }
}
