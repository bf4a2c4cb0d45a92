//! Maps looked up by host name on every request, built once from the configuration.
//!
//! They hash with FNV-1a rather than the standard library's SipHash, which took twice the
//! instructions for a two-map lookup per request (BENCHMARKS.md). SipHash's resistance to
//! chosen keys matters for maps a client can add keys to; these are filled from
//! `config.toml` alone, and looking up a key a client chose cannot lengthen their chains.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are host names (or `host:port`) from the configuration.
pub type HostMap<V> = HashMap<String, V, BuildHasherDefault<Fnv1a>>;

pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_gives_the_published_test_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv1a::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_host_map_finds_what_was_put_in_and_nothing_else() {
        let mut map = HostMap::default();
        for (i, host) in ["portal.localhost", "analytics.localhost", "login.localhost"]
            .into_iter()
            .enumerate()
        {
            map.insert(host.to_string(), i);
        }
        assert_eq!(map.get("analytics.localhost"), Some(&1));
        assert_eq!(map.get("portal.localhost"), Some(&0));
        assert_eq!(map.get("portal.localhost."), None);
        assert_eq!(map.get(""), None);
    }
}
