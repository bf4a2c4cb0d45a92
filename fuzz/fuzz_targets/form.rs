//! Fuzzes the strict `application/x-www-form-urlencoded` parser (`pages::form::parse`).
//!
//! Checks: it never panics; when it accepts, no field is longer than `MAX_FIELD_BYTES`;
//! and its answers agree with the `form_urlencoded` crate (the WHATWG parser) for every
//! field, the first occurrence of a name winning.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use portcullis::pages::form::{self, MAX_FIELD_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = form::parse(data) else {
        return;
    };
    let mut first: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(data) {
        first
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    for (k, v) in &first {
        let got = f.get(k);
        assert!(
            got.len() <= MAX_FIELD_BYTES,
            "field {k:?} is {} bytes",
            got.len()
        );
        // Accepted means every byte decoded to valid UTF-8, so the lossy reference
        // decoder replaced nothing and must agree exactly.
        assert_eq!(got, v.as_str(), "field {k:?}");
    }
});
