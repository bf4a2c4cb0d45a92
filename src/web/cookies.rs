//! Portcullis's own cookies: their names, reading them from `Cookie`, writing
//! `Set-Cookie`, and removing them before a request goes upstream (SPEC §3).

use http::header::{self, HeaderMap, HeaderValue};

/// Names of our cookies. On https they carry the `__Host-` prefix, which makes browsers
/// insist on `Secure`, `Path=/` and no `Domain` (host-only), so a sibling subdomain
/// cannot plant or shadow them.
#[derive(Debug, Clone)]
pub struct CookieNames {
    /// The auth-origin session (full sign-in).
    pub session: &'static str,
    /// An app origin's own cookie, handed over through the SSO callback.
    pub app: &'static str,
    /// A pending sign-in (password accepted, second factor not yet).
    pub pending: &'static str,
    /// The per-browser CSRF binding value.
    pub csrf: &'static str,
    /// On an app origin, from the redirect to the sign-in page until the hand-off: the
    /// hand-off code works only in the browser holding it (no login CSRF, SPEC §2.5).
    pub state: &'static str,
    pub secure: bool,
}

impl CookieNames {
    pub fn new(https: bool) -> Self {
        if https {
            Self {
                session: "__Host-portcullis-session",
                app: "__Host-portcullis-app",
                pending: "__Host-portcullis-pending",
                csrf: "__Host-portcullis-csrf",
                state: "__Host-portcullis-state",
                secure: true,
            }
        } else {
            Self {
                session: "portcullis-session",
                app: "portcullis-app",
                pending: "portcullis-pending",
                csrf: "portcullis-csrf",
                state: "portcullis-state",
                secure: false,
            }
        }
    }

    /// `Set-Cookie` for one of our cookies. `max_age` None makes a browser-session cookie.
    pub fn set(&self, name: &str, value: &str, max_age: Option<i64>) -> Option<HeaderValue> {
        let mut s = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if self.secure {
            s.push_str("; Secure");
        }
        if let Some(age) = max_age {
            s.push_str(&format!("; Max-Age={age}"));
        }
        HeaderValue::from_str(&s).ok()
    }

    pub fn clear(&self, name: &str) -> Option<HeaderValue> {
        self.set(name, "", Some(0))
    }
}

/// True for any cookie Portcullis owns or could own, under either naming scheme, so an
/// https deployment also strips a plain-named cookie a client made up.
pub fn is_portcullis_cookie(name: &[u8]) -> bool {
    // Compared in place rather than on a lowercased copy: this runs for every cookie of
    // every request.
    let starts_with = |prefix: &[u8]| {
        name.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    starts_with(b"portcullis") || starts_with(b"__host-portcullis")
}

/// Whether one `Set-Cookie` value would set or clear one of Portcullis's own cookies.
pub fn is_own_set_cookie(v: &HeaderValue) -> bool {
    let pair = v
        .as_bytes()
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default();
    let mut parts = pair.splitn(2, |b| *b == b'=');
    let name = parts.next().unwrap_or_default().trim_ascii();
    // A cookie with no name (`=portcullis-app=x`) comes back from browsers as its value
    // alone (`portcullis-app=x`): judge it by what it will look like then.
    let name = if name.is_empty() {
        let value = parts.next().unwrap_or_default().trim_ascii();
        value.split(|b| *b == b'=').next().unwrap_or_default()
    } else {
        name
    };
    is_portcullis_cookie(name)
}

/// Removes every `Set-Cookie` of an upstream response that would set or clear one of
/// Portcullis's own cookies: an app must not plant a session on its origin (fixation) or
/// end one. Other cookies pass untouched, in order.
pub fn strip_own_set_cookies(headers: &mut HeaderMap) {
    if !headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(is_own_set_cookie)
    {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !is_own_set_cookie(v))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Iterates `name=value` pairs of every `Cookie` header, tolerating junk: pairs that are
/// not valid UTF-8 or lack `=` are skipped rather than failing the request.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
}

/// The value of cookie `name`. A client that sends the same cookie twice gets `None`:
/// ambiguity here could let a planted cookie win (cookie tossing).
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for (k, v) in cookie_pairs(headers) {
        if k == name {
            if found.is_some() && found != Some(v) {
                return None;
            }
            found = Some(v);
        }
    }
    found
}

/// Removes our cookies from every `Cookie` header and keeps everyone else's byte for byte.
pub fn strip_own(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    let Some(first) = all.next() else {
        return;
    };
    // The usual request, one `Cookie` header and none of ours in it, allocates nothing.
    if all.next().is_none() && !pairs(first.as_bytes()).any(|p| is_portcullis_cookie(name_of(p))) {
        return;
    }
    // From here on the headers change: ours go, and several become one (as HTTP/1.1 wants).
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    let kept: Vec<&[u8]> = values
        .iter()
        .flat_map(|v| pairs(v.as_bytes()))
        .filter(|pair| !is_portcullis_cookie(name_of(pair)))
        .collect();
    headers.remove(header::COOKIE);
    if kept.is_empty() {
        return;
    }
    let joined = kept.join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// The `name=value` pairs of one `Cookie` header value, trimmed, empty ones skipped.
fn pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b';')
        .map(trim_ascii)
        .filter(|pair| !pair.is_empty())
}

fn name_of(pair: &[u8]) -> &[u8] {
    trim_ascii(pair.split(|b| *b == b'=').next().unwrap_or(pair))
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn headers(cookies: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_bytes(c).unwrap());
        }
        h
    }

    #[test]
    fn own_cookies_are_stripped_and_others_kept() {
        let mut h = headers(&[
            b"theme=dark; portcullis-session=abc; __Host-portcullis-app=x",
            b"PORTCULLIS-csrf=y; lang=en",
        ]);
        strip_own(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "theme=dark; lang=en");
    }

    #[test]
    fn a_single_header_without_ours_is_left_as_it_came_and_ours_in_any_case_go() {
        let mut h = headers(&[b" theme=dark;;lang=en ; portcull=1"]);
        strip_own(&mut h);
        assert_eq!(h[header::COOKIE], " theme=dark;;lang=en ; portcull=1");

        let mut h = headers(&[b"a=1; __HOST-Portcullis-session=x; b=2; Portcullis=3"]);
        strip_own(&mut h);
        assert_eq!(h[header::COOKIE], "a=1; b=2");

        // Several headers (as HTTP/2 clients send them) become one, as HTTP/1.1 wants.
        let mut h = headers(&[b"a=1", b"b=2"]);
        strip_own(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }

    #[test]
    fn only_own_cookies_leaves_no_cookie_header() {
        let mut h = headers(&[b"portcullis-app=1"]);
        strip_own(&mut h);
        assert!(h.get(header::COOKIE).is_none());
    }

    #[test]
    fn junk_cookies_never_panic() {
        let mut h = headers(&[b"=;;; ;=x; \xff\xfe=1; a", b"portcullis-app"]);
        strip_own(&mut h);
        assert_eq!(
            h.get(header::COOKIE).unwrap().as_bytes(),
            b"=; =x; \xff\xfe=1; a"
        );
        assert_eq!(get(&h, "a"), None);
    }

    #[test]
    fn a_duplicated_cookie_with_different_values_is_ignored() {
        let h = headers(&[b"portcullis-session=a; portcullis-session=b"]);
        assert_eq!(get(&h, "portcullis-session"), None);
        let h = headers(&[b"portcullis-session=a"]);
        assert_eq!(get(&h, "portcullis-session"), Some("a"));
    }

    #[test]
    fn set_cookie_has_the_security_attributes() {
        let n = CookieNames::new(true);
        let v = n.set(n.session, "tok", None).unwrap();
        let s = v.to_str().unwrap();
        assert!(s.starts_with("__Host-portcullis-session=tok; Path=/"));
        assert!(s.contains("HttpOnly"));
        assert!(s.contains("SameSite=Lax"));
        assert!(s.contains("Secure"));
        assert!(!s.contains("Domain"));
        let plain = CookieNames::new(false);
        assert!(!plain
            .set(plain.app, "t", Some(5))
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Secure"));
    }

    #[test]
    fn every_cookie_on_https_is_host_prefixed_and_secure() {
        let n = CookieNames::new(true);
        for name in [n.session, n.app, n.pending, n.csrf] {
            assert!(name.starts_with("__Host-portcullis-"), "{name}");
            for v in [n.set(name, "t", Some(60)), n.clear(name)] {
                let v = v.unwrap();
                let s = v.to_str().unwrap();
                assert!(s.contains("; Path=/") && s.contains("; Secure"), "{s}");
                assert!(
                    s.contains("; HttpOnly") && s.contains("; SameSite=Lax"),
                    "{s}"
                );
                assert!(!s.contains("Domain"), "{s}");
            }
        }
        let plain = CookieNames::new(false);
        for name in [plain.session, plain.app, plain.pending, plain.csrf] {
            assert!(name.starts_with("portcullis-"), "{name}");
        }
    }
}
