//! Fuzzes parsing and validating `config.toml` (`config::Config::parse`): never a panic,
//! whatever the text. The base folder does not exist, so file checks (TLS PEM files,
//! `secret_key_file`) fail as problems rather than touching real files.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;

fuzz_target!(|text: &str| {
    if let Ok(cfg) = Config::parse(text, Path::new("/nonexistent")) {
        // A config that validates has what the server needs to start.
        assert!(!cfg.apps.is_empty());
        assert!(cfg.session.idle_timeout <= cfg.session.max_lifetime);
    }
});
