//! Fuzzes the `rd` check (`auth::validate_rd`): whatever it accepts must, to a browser
//! (the WHATWG parser of the `url` crate), land on exactly one configured origin, carry
//! no user name or password, and have a path that cannot turn scheme-relative.
//!
//! Each input is tried as it is and glued to each allowed origin, so the fuzzer spends
//! its time past the origin check too.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::auth::{validate_rd, Origin, MAX_RD_BYTES};
use url::Url;

fn origins() -> &'static [Origin] {
    static O: OnceLock<Vec<Origin>> = OnceLock::new();
    O.get_or_init(|| {
        [
            "http://portal.localhost:8080",
            "https://analytics.example.com",
            "http://127.0.0.1:9000",
            "http://[::1]:8081",
        ]
        .iter()
        .filter_map(|o| Origin::parse(o).ok())
        .collect()
    })
}

fn check(raw: &str) {
    let allowed = origins();
    assert_eq!(allowed.len(), 4);
    let Some(t) = validate_rd(raw, allowed) else {
        return;
    };
    assert!(raw.len() <= MAX_RD_BYTES);
    let url = Url::parse(t.as_str()).unwrap_or_else(|e| panic!("{raw:?} -> {:?}: {e}", t.as_str()));
    let matching = allowed
        .iter()
        .filter(|o| {
            url.scheme() == o.scheme
                && url.host_str() == Some(o.host.as_str())
                && url.port_or_known_default() == Some(o.port)
        })
        .count();
    assert_eq!(matching, 1, "{raw:?} -> {:?}", t.as_str());
    assert!(allowed.contains(t.origin()));
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{raw:?}"
    );
    assert!(url.fragment().is_none(), "{raw:?}");
    let pq = t.path_and_query();
    assert!(pq.starts_with('/'), "{raw:?} -> {pq:?}");
    assert!(
        !pq.starts_with("//") && !pq.starts_with("/\\"),
        "{raw:?} -> {pq:?}"
    );
    assert!(t.as_str().ends_with(pq));
    assert_eq!(
        format!("{}{}", t.origin(), pq),
        t.as_str(),
        "{raw:?}: origin + path is not the URL"
    );
    // The normalised form is itself accepted, unchanged: one spelling per target.
    let again = validate_rd(t.as_str(), allowed);
    assert_eq!(again.as_ref(), Some(&t), "{raw:?} -> {:?}", t.as_str());
}

fuzz_target!(|raw: &str| {
    check(raw);
    for o in origins() {
        check(&format!("{o}{raw}"));
    }
});
