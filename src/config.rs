//! `config.toml`: the types, loading and validation. Every problem is reported at once,
//! each naming its key (and line where the parser knows it).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}. Pass the right file with -c/--config.")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: Option<TlsConfig>,
    pub session: SessionConfig,
    pub totp: TotpConfig,
    pub password: PasswordConfig,
    pub security: SecurityConfig,
    pub branding: BrandingConfig,
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub auth_url: PublicOrigin,
    pub data_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub secret_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Upstream TCP connect.
    pub connect_timeout: Duration,
    /// From request sent upstream to its response headers.
    pub upstream_timeout: Duration,
    /// A client must send its whole request head within this (slowloris).
    pub header_read_timeout: Duration,
    /// On SIGTERM, requests in flight get this long to finish.
    pub drain_timeout: Duration,
    /// A client that reads nothing of its response for this long is disconnected.
    pub send_timeout: Duration,
    /// Lifetime of the signed identity assertion.
    pub assertion_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct TotpConfig {
    pub issuer: String,
}

#[derive(Debug, Clone)]
pub struct PasswordConfig {
    pub min_length: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    pub max_failures: u32,
    pub failure_window: Duration,
    pub lockout: Duration,
    pub login_rate_per_minute: u32,
    /// Audit events older than this are removed from the store.
    pub audit_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct BrandingConfig {
    /// Shown in page titles and headers, e.g. "Example Corp".
    pub company: String,
    /// Whom a person without access should ask, e.g. "partners@example.com".
    pub support_contact: String,
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub id: String,
    pub name: String,
    pub url: PublicOrigin,
    pub upstream: Upstream,
    pub public_paths: Vec<PathPattern>,
    pub headers: HeaderNames,
}

#[derive(Debug, Clone)]
pub struct HeaderNames {
    pub user: http::HeaderName,
    pub email: http::HeaderName,
    pub name: http::HeaderName,
    pub assertion: http::HeaderName,
}

impl HeaderNames {
    pub fn all(&self) -> [&http::HeaderName; 4] {
        [&self.user, &self.email, &self.name, &self.assertion]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A public origin (`scheme://host[:port]`) as browsers see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicOrigin {
    pub scheme: Scheme,
    /// Lowercase, no trailing dot.
    pub host: String,
    pub port: u16,
}

impl PublicOrigin {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = raw.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = raw.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(format!(
                "\"{raw}\" must start with http:// or https:// (e.g. \"https://portal.example.com\")"
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(format!("\"{raw}\" has no host"));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "\"{raw}\" must be an origin only (scheme, host and port) without a path"
            ));
        }
        if authority.contains('@') {
            return Err(format!("\"{raw}\" must not contain a user name"));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("\"{raw}\" does not have a valid host and port"))?;
        let origin = PublicOrigin {
            scheme,
            host: host.into_owned(),
            port: port.unwrap_or(scheme.default_port()),
        };
        // Return addresses after sign-in are checked against these origins with the
        // browser's stricter rules; a host only this parser accepted (an `_`, an empty
        // label) would make its app unreachable after sign-in instead of failing here.
        if crate::auth::Origin::parse(&origin.to_string()).is_err() {
            return Err(format!(
                "\"{raw}\": the host must be letters, digits and '-' in dot-separated labels (no '_'), as browsers require"
            ));
        }
        Ok(origin)
    }

    /// `host` or `host:port` when the port is not the scheme's default — what a browser
    /// sends as `Host` and what a cookie or redirect names.
    pub fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }
}

impl fmt::Display for PublicOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// Splits `host[:port]` (with `[v6]` literals) into a lowercase host without a trailing dot
/// and an optional port. `None` for anything that is not a plausible host. The host is
/// borrowed when it is already in that form, as it is in nearly every request's `Host`:
/// routing runs this on every request.
pub fn split_host_port(authority: &str) -> Option<(Cow<'_, str>, Option<u16>)> {
    let (host, port): (Cow<'_, str>, _) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (format!("[{}]", host.to_ascii_lowercase()).into(), port)
    } else {
        let (h, p) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let h = h.strip_suffix('.').unwrap_or(h);
        // Checked and case-folded in one pass: this runs on every request.
        let mut has_upper = false;
        for b in h.bytes() {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {}
                b'A'..=b'Z' => has_upper = true,
                _ => return None,
            }
        }
        let h = if has_upper {
            Cow::Owned(h.to_ascii_lowercase())
        } else {
            Cow::Borrowed(h)
        };
        (h, p)
    };
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let port = match port {
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
        None => None,
    };
    Some((host, port))
}

/// Where an app's requests go: an `http://` origin (TLS to upstreams is not supported yet).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    /// `host:port`, always with the port.
    pub authority: String,
    /// The same, parsed once: cloning it per request is a reference-count bump.
    pub uri_authority: http::uri::Authority,
}

impl Upstream {
    fn parse(raw: &str) -> Result<Self, String> {
        let rest = raw.strip_prefix("http://").ok_or_else(|| {
            if raw.starts_with("https://") {
                format!("\"{raw}\": https upstreams are not supported yet; use http:// on a private network")
            } else {
                format!("\"{raw}\" must be an http:// URL such as \"http://127.0.0.1:9001\"")
            }
        })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(format!("\"{raw}\" must be an origin only, without a path"));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("\"{raw}\" does not have a valid host and port"))?;
        let authority = format!("{host}:{}", port.unwrap_or(80));
        let uri_authority = authority
            .parse()
            .map_err(|_| format!("\"{raw}\" does not have a valid host and port"))?;
        Ok(Upstream {
            scheme: Scheme::Http,
            authority,
            uri_authority,
        })
    }
}

/// A `public_paths` entry: an exact path, or a prefix when it ends in `/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// The prefix keeps its trailing slash, so `/static/*` does not match `/staticfoo`.
    Prefix(String),
}

impl PathPattern {
    fn parse(raw: &str) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("\"{raw}\" must start with /"));
        }
        if raw.starts_with("/.portcullis/") || raw == "/.portcullis" {
            return Err(format!("\"{raw}\" is reserved for Portcullis"));
        }
        if let Some(prefix) = raw.strip_suffix('*') {
            if !prefix.ends_with('/') {
                return Err(format!(
                    "\"{raw}\": a wildcard must follow a slash, as in /static/*"
                ));
            }
            if prefix.contains('*') {
                return Err(format!("\"{raw}\": only one trailing * is allowed"));
            }
            return Ok(PathPattern::Prefix(prefix.to_string()));
        }
        if raw.contains('*') {
            return Err(format!(
                "\"{raw}\": * is only allowed at the end, as in /static/*"
            ));
        }
        Ok(PathPattern::Exact(raw.to_string()))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

// ---- raw (as written) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    tls: Option<RawTls>,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    totp: RawTotp,
    #[serde(default)]
    password: RawPassword,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    branding: RawBranding,
    #[serde(default)]
    app: Vec<RawApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Spanned<String>,
    auth_url: Spanned<String>,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    secret_key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_log_format")]
    log_format: LogFormat,
    #[serde(default = "d5s")]
    connect_timeout: ConfigDuration,
    #[serde(default = "d60s")]
    upstream_timeout: ConfigDuration,
    #[serde(default = "d10s")]
    header_read_timeout: ConfigDuration,
    #[serde(default = "d30s")]
    drain_timeout: ConfigDuration,
    #[serde(default = "d30s")]
    send_timeout: ConfigDuration,
    #[serde(default = "d60s")]
    assertion_ttl: ConfigDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSession {
    idle_timeout: ConfigDuration,
    max_lifetime: ConfigDuration,
}

impl Default for RawSession {
    fn default() -> Self {
        Self {
            idle_timeout: ConfigDuration(Duration::from_secs(3600)),
            max_lifetime: ConfigDuration(Duration::from_secs(12 * 3600)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTotp {
    issuer: String,
}

impl Default for RawTotp {
    fn default() -> Self {
        Self {
            issuer: "Portcullis".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPassword {
    min_length: usize,
    argon2_memory_kib: u32,
    argon2_iterations: u32,
    argon2_parallelism: u32,
}

impl Default for RawPassword {
    fn default() -> Self {
        Self {
            min_length: 12,
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecurity {
    max_failures: u32,
    failure_window: ConfigDuration,
    lockout: ConfigDuration,
    login_rate_per_minute: u32,
    audit_retention: ConfigDuration,
}

impl Default for RawSecurity {
    fn default() -> Self {
        Self {
            max_failures: 5,
            failure_window: ConfigDuration(Duration::from_secs(600)),
            lockout: ConfigDuration(Duration::from_secs(900)),
            login_rate_per_minute: 30,
            audit_retention: ConfigDuration(Duration::from_secs(365 * 86400)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBranding {
    company: String,
    support_contact: String,
}

impl Default for RawBranding {
    fn default() -> Self {
        Self {
            company: String::new(),
            support_contact: "your administrator".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    id: Spanned<String>,
    name: String,
    url: Spanned<String>,
    upstream: Spanned<String>,
    #[serde(default)]
    public_paths: Vec<Spanned<String>>,
    #[serde(default)]
    headers: RawHeaders,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHeaders {
    user: Spanned<String>,
    email: Spanned<String>,
    name: Spanned<String>,
    assertion: Spanned<String>,
}

impl Default for RawHeaders {
    fn default() -> Self {
        let s = |v: &str| Spanned::new(0..0, v.to_string());
        Self {
            user: s("X-Portcullis-User"),
            email: s("X-Portcullis-Email"),
            name: s("X-Portcullis-Name"),
            assertion: s("X-Portcullis-Assertion"),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn d5s() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}
fn d10s() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn d30s() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn d60s() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

/// A duration written as `"90s"`, `"10m"`, `"1h"`, `"250ms"` or `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("\"{raw}\" needs a unit: ms, s, m, h or d (e.g. \"90s\")"))?;
    let (num, unit) = raw.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{raw}\" is not a duration such as \"90s\", \"10m\" or \"1h\""))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => {
            return Err(format!(
                "\"{raw}\" is not a duration such as \"90s\", \"10m\" or \"1h\""
            ))
        }
    };
    secs.map(Duration::from_secs)
        .ok_or_else(|| format!("\"{raw}\" is too long"))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(ConfigDuration)
            .map_err(de::Error::custom)
    }
}

// ---- loading ----

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses and validates. Relative file paths are resolved against `base` (the config
    /// file's folder) so the server does not depend on the directory it was started from.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut v = Validator {
            text,
            problems: Vec::new(),
        };
        let cfg = v.validate(raw, base);
        if v.problems.is_empty() {
            cfg.ok_or_else(|| "invalid configuration".to_string())
        } else {
            Err(v.problems.join("\n"))
        }
    }

    pub fn app(&self, id: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.id == id)
    }
}

struct Validator<'a> {
    text: &'a str,
    problems: Vec<String>,
}

impl Validator<'_> {
    fn line_of(&self, span: std::ops::Range<usize>) -> Option<usize> {
        if span.start == 0 && span.end == 0 {
            return None;
        }
        let upto = self.text.get(..span.start)?;
        Some(upto.bytes().filter(|b| *b == b'\n').count() + 1)
    }

    fn problem<T>(&mut self, key: &str, spanned: &Spanned<T>, msg: impl fmt::Display) {
        match self.line_of(spanned.span()) {
            Some(line) => self.problems.push(format!("{key} (line {line}): {msg}")),
            None => self.problems.push(format!("{key}: {msg}")),
        }
    }

    fn duration(&mut self, key: &str, d: ConfigDuration) -> Duration {
        if d.0.is_zero() {
            self.problems
                .push(format!("{key}: must be longer than zero"));
        }
        d.0
    }

    fn validate(&mut self, raw: RawConfig, base: &Path) -> Option<Config> {
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let listen = match raw.server.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    "server.listen",
                    &raw.server.listen,
                    "must be an address and port such as \"127.0.0.1:8080\" or \"0.0.0.0:443\"",
                );
                None
            }
        };
        let auth_url = match PublicOrigin::parse(raw.server.auth_url.get_ref()) {
            Ok(o) => Some(o),
            Err(e) => {
                self.problem("server.auth_url", &raw.server.auth_url, e);
                None
            }
        };
        let metrics_listen = match &raw.server.metrics_listen {
            Some(m) => match m.get_ref().parse::<SocketAddr>() {
                Ok(a) => {
                    if Some(a) == listen {
                        self.problem(
                            "server.metrics_listen",
                            m,
                            "must differ from server.listen: metrics are never served publicly",
                        );
                    }
                    Some(a)
                }
                Err(_) => {
                    self.problem(
                        "server.metrics_listen",
                        m,
                        "must be an address and port such as \"127.0.0.1:9090\"",
                    );
                    None
                }
            },
            None => None,
        };
        let mut trusted_proxies = Vec::new();
        for (i, p) in raw.server.trusted_proxies.iter().enumerate() {
            let s = p.get_ref();
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(n) => trusted_proxies.push(n),
                Err(_) => self.problem(
                    &format!("server.trusted_proxies[{i}]"),
                    p,
                    format!("\"{s}\" is not an IP address or CIDR range such as \"10.0.0.0/8\""),
                ),
            }
        }
        let secret_key_file = raw.server.secret_key_file.as_ref().map(|p| {
            let path = resolve(p.get_ref());
            if !path.is_file() {
                self.problem(
                    "server.secret_key_file",
                    p,
                    format!("{} does not exist or is not a file", path.display()),
                );
            }
            path
        });

        let tls = raw.tls.as_ref().map(|t| {
            let cert = resolve(t.cert.get_ref());
            let key = resolve(t.key.get_ref());
            for (k, spanned, path) in [("tls.cert", &t.cert, &cert), ("tls.key", &t.key, &key)] {
                if let Err(e) = std::fs::File::open(path) {
                    self.problem(
                        k,
                        spanned,
                        format!(
                            "cannot read {}: {e}. Put the PEM file there (see certs/README.md)",
                            path.display()
                        ),
                    );
                }
            }
            TlsConfig { cert, key }
        });

        let server = ServerConfig {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            auth_url: auth_url.clone().unwrap_or(PublicOrigin {
                scheme: Scheme::Http,
                host: String::new(),
                port: 0,
            }),
            data_dir: resolve(&raw.server.data_dir),
            metrics_listen,
            trusted_proxies,
            secret_key_file,
            log_format: raw.server.log_format,
            connect_timeout: self.duration("server.connect_timeout", raw.server.connect_timeout),
            upstream_timeout: self.duration("server.upstream_timeout", raw.server.upstream_timeout),
            header_read_timeout: self
                .duration("server.header_read_timeout", raw.server.header_read_timeout),
            drain_timeout: self.duration("server.drain_timeout", raw.server.drain_timeout),
            send_timeout: self.duration("server.send_timeout", raw.server.send_timeout),
            assertion_ttl: self.duration("server.assertion_ttl", raw.server.assertion_ttl),
        };

        let session = SessionConfig {
            idle_timeout: self.duration("session.idle_timeout", raw.session.idle_timeout),
            max_lifetime: self.duration("session.max_lifetime", raw.session.max_lifetime),
        };
        if session.idle_timeout > session.max_lifetime {
            self.problems.push(
                "session.idle_timeout: must not be longer than session.max_lifetime".to_string(),
            );
        }

        if raw.totp.issuer.trim().is_empty() || raw.totp.issuer.contains(':') {
            self.problems.push(
                "totp.issuer: must be a non-empty name without ':' (authenticator apps split on it)"
                    .to_string(),
            );
        }

        let p = &raw.password;
        if p.min_length < 8 || p.min_length > 128 {
            self.problems
                .push("password.min_length: must be between 8 and 128".to_string());
        }
        // Saturating: parallelism is operator text up to u32::MAX, and 8 × that overflows
        // (a panic in debug builds); the range check below reports it.
        if p.argon2_memory_kib < p.argon2_parallelism.max(1).saturating_mul(8)
            || p.argon2_memory_kib > 4 << 20
        {
            self.problems.push(
                "password.argon2_memory_kib: must be at least 8 × parallelism and at most 4194304"
                    .to_string(),
            );
        }
        if p.argon2_iterations == 0 || p.argon2_iterations > 100 {
            self.problems
                .push("password.argon2_iterations: must be between 1 and 100".to_string());
        }
        if p.argon2_parallelism == 0 || p.argon2_parallelism > 64 {
            self.problems
                .push("password.argon2_parallelism: must be between 1 and 64".to_string());
        }

        let s = &raw.security;
        if s.max_failures == 0 {
            self.problems
                .push("security.max_failures: must be at least 1".to_string());
        }
        if s.login_rate_per_minute == 0 {
            self.problems
                .push("security.login_rate_per_minute: must be at least 1".to_string());
        }
        // A typo such as "1m" meant as a month would otherwise delete the whole trail.
        if s.audit_retention.0 < Duration::from_secs(86400) {
            self.problems.push(
                "security.audit_retention: must be at least one day (\"1d\"); the default is \"365d\""
                    .to_string(),
            );
        }
        let security = SecurityConfig {
            max_failures: s.max_failures,
            failure_window: self.duration("security.failure_window", s.failure_window),
            lockout: self.duration("security.lockout", s.lockout),
            login_rate_per_minute: s.login_rate_per_minute,
            audit_retention: s.audit_retention.0,
        };

        if raw.app.is_empty() {
            self.problems
                .push("app: at least one [[app]] is needed (id, name, url, upstream)".to_string());
        }
        let mut apps = Vec::new();
        let mut seen_ids: HashMap<String, usize> = HashMap::new();
        let mut seen_hosts: HashMap<(String, u16), usize> = HashMap::new();
        for (i, a) in raw.app.iter().enumerate() {
            let key = |k: &str| format!("app[{i}].{k}");
            let id = a.id.get_ref().clone();
            let id_ok = !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !id_ok {
                self.problem(
                    &key("id"),
                    &a.id,
                    "must be 1–64 characters of lowercase letters, digits, - or _",
                );
            } else if let Some(prev) = seen_ids.insert(id.clone(), i) {
                self.problem(
                    &key("id"),
                    &a.id,
                    format!("\"{id}\" is already used by app[{prev}]"),
                );
            }
            if a.name.trim().is_empty() {
                self.problems
                    .push(format!("{}: must not be empty", key("name")));
            }
            let url = match PublicOrigin::parse(a.url.get_ref()) {
                Ok(o) => {
                    if let Some(prev) = seen_hosts.insert((o.host.clone(), o.port), i) {
                        self.problem(
                            &key("url"),
                            &a.url,
                            format!("{} is already the host of app[{prev}]", o.authority()),
                        );
                    }
                    // Cookies are marked Secure (and named __Host-) by the sign-in origin's
                    // scheme: an https app behind an http sign-in would get cookies without
                    // Secure, and an http app behind an https sign-in would never keep its
                    // cookie, so every sign-in would start again.
                    if let Some(auth) = &auth_url {
                        if auth.scheme != o.scheme {
                            self.problem(
                                &key("url"),
                                &a.url,
                                format!(
                                    "is {} but server.auth_url is {}: use the same scheme for the sign-in origin and every app",
                                    o.scheme.as_str(),
                                    auth.scheme.as_str()
                                ),
                            );
                        }
                    }
                    Some(o)
                }
                Err(e) => {
                    self.problem(&key("url"), &a.url, e);
                    None
                }
            };
            let upstream = match Upstream::parse(a.upstream.get_ref()) {
                Ok(u) => Some(u),
                Err(e) => {
                    self.problem(&key("upstream"), &a.upstream, e);
                    None
                }
            };
            let mut public_paths = Vec::new();
            for (j, p) in a.public_paths.iter().enumerate() {
                match PathPattern::parse(p.get_ref()) {
                    Ok(pp) => public_paths.push(pp),
                    Err(e) => self.problem(&format!("app[{i}].public_paths[{j}]"), p, e),
                }
            }
            let mut header = |k: &str, v: &Spanned<String>| -> http::HeaderName {
                match http::HeaderName::from_bytes(v.get_ref().as_bytes()) {
                    Ok(h) if !is_reserved_header(&h) => h,
                    _ => {
                        self.problem(
                            &format!("app[{i}].headers.{k}"),
                            v,
                            format!("\"{}\" is not a usable header name", v.get_ref()),
                        );
                        http::HeaderName::from_static("x-portcullis-invalid")
                    }
                }
            };
            let headers = HeaderNames {
                user: header("user", &a.headers.user),
                email: header("email", &a.headers.email),
                name: header("name", &a.headers.name),
                assertion: header("assertion", &a.headers.assertion),
            };
            if let (Some(url), Some(upstream)) = (url, upstream) {
                apps.push(AppConfig {
                    id,
                    name: a.name.clone(),
                    url,
                    upstream,
                    public_paths,
                    headers,
                });
            }
        }

        Some(Config {
            server,
            tls,
            session,
            totp: TotpConfig {
                issuer: raw.totp.issuer,
            },
            password: PasswordConfig {
                min_length: p.min_length,
                argon2_memory_kib: p.argon2_memory_kib,
                argon2_iterations: p.argon2_iterations,
                argon2_parallelism: p.argon2_parallelism,
            },
            security,
            branding: BrandingConfig {
                company: raw.branding.company,
                support_contact: raw.branding.support_contact,
            },
            apps,
        })
    }
}

/// Headers an operator must not choose as identity headers: the proxy manages them itself.
fn is_reserved_header(h: &http::HeaderName) -> bool {
    matches!(
        h.as_str(),
        "host"
            | "cookie"
            | "set-cookie"
            | "authorization"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "upgrade"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "forwarded"
            | "x-real-ip"
            | "x-original-url"
            | "x-rewrite-url"
    )
    // Underscore names are stripped from client requests as their dashed spelling.
    || h.as_str().contains('_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
auth_url = "http://login.localhost:8080"

[[app]]
id = "portal"
name = "Partner Portal"
url = "http://portal.localhost:8080"
upstream = "http://127.0.0.1:9001"
public_paths = ["/healthz", "/static/*"]
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/tmp"))
    }

    #[test]
    fn hosts_are_split_lowercased_and_borrowed_when_already_lowercase() {
        let cases = [
            (
                "portal.localhost:8080",
                "portal.localhost",
                Some(8080),
                true,
            ),
            (
                "Portal.LocalHost.:8080",
                "portal.localhost",
                Some(8080),
                false,
            ),
            ("portal.localhost.", "portal.localhost", None, true),
            ("[::1]:443", "[::1]", Some(443), false),
            ("[FE80::1]", "[fe80::1]", None, false),
        ];
        for (raw, host, port, borrowed) in cases {
            let (h, p) = split_host_port(raw).unwrap();
            assert_eq!((h.as_ref(), p), (host, port), "{raw}");
            assert_eq!(matches!(h, Cow::Borrowed(_)), borrowed, "{raw}");
        }
        for bad in [
            "",
            ":80",
            "a b:80",
            "host:0",
            "host:",
            "host:99999",
            "[::1",
            "[x]:1",
            ".",
        ] {
            assert!(split_host_port(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn minimal_config_gets_spec_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.session.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.session.max_lifetime, Duration::from_secs(12 * 3600));
        assert_eq!(c.password.min_length, 12);
        assert_eq!(c.password.argon2_memory_kib, 19456);
        assert_eq!(c.security.max_failures, 5);
        assert_eq!(c.security.failure_window, Duration::from_secs(600));
        assert_eq!(c.security.lockout, Duration::from_secs(900));
        assert_eq!(c.security.login_rate_per_minute, 30);
        assert_eq!(c.security.audit_retention, Duration::from_secs(365 * 86400));
        assert_eq!(c.apps[0].url.authority(), "portal.localhost:8080");
        assert_eq!(c.apps[0].upstream.authority, "127.0.0.1:9001");
        assert_eq!(c.apps[0].headers.user.as_str(), "x-portcullis-user");
        assert_eq!(c.server.data_dir, PathBuf::from("/tmp/data"));
    }

    #[test]
    fn audit_retention_is_at_least_a_day() {
        let with = |v: &str| {
            GOOD.replace(
                "[[app]]",
                &format!("[security]\naudit_retention = \"{v}\"\n\n[[app]]"),
            )
        };
        assert_eq!(
            parse(&with("30d")).unwrap().security.audit_retention,
            Duration::from_secs(30 * 86400)
        );
        let err = parse(&with("1m")).unwrap_err();
        assert!(err.contains("security.audit_retention"), "{err}");
        assert!(err.contains("at least one day"), "{err}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = GOOD.replace("[server]\n", "[server]\nlisten_port = 3\n");
        let e = parse(&text).unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn malformed_duration_is_named() {
        let e = parse(&format!("{GOOD}\n[session]\nidle_timeout = \"an hour\"\n")).unwrap_err();
        assert!(e.contains("idle_timeout") || e.contains("line 15"), "{e}");
        assert!(e.contains("an hour"), "{e}");
    }

    #[test]
    fn a_public_host_browsers_would_refuse_is_a_config_error() {
        for bad in ["http://my_portal.localhost:8080", "http://a..b:8080"] {
            let text = GOOD.replacen("http://portal.localhost:8080", bad, 1);
            assert_ne!(text, GOOD);
            let e = parse(&text).unwrap_err();
            assert!(e.contains("app[0].url") && e.contains("no '_'"), "{e}");
        }
    }

    #[test]
    fn identity_headers_cannot_take_a_name_the_proxy_strips_or_sets() {
        for bad in [
            "X-Real-IP",
            "Forwarded",
            "X-Original-URL",
            "X_User",
            "X-Forwarded-For",
        ] {
            let text = format!("{GOOD}\n[app.headers]\nuser = \"{bad}\"\n");
            let e = parse(&text).unwrap_err();
            assert!(e.contains("is not a usable header name"), "{bad}: {e}");
        }
        let text = format!("{GOOD}\n[app.headers]\nuser = \"X-Forwarded-User\"\n");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn an_app_on_another_scheme_than_the_sign_in_origin_is_a_config_error() {
        let text = GOOD.replacen(
            "http://portal.localhost:8080",
            "https://portal.localhost",
            1,
        );
        assert_ne!(text, GOOD);
        let e = parse(&text).unwrap_err();
        assert!(
            e.contains("app[0].url") && e.contains("is https but server.auth_url is http"),
            "{e}"
        );
    }

    #[test]
    fn huge_argon2_parallelism_is_reported_not_a_panic() {
        // Found while fuzzing the config parser (reproduced with fuzz/fuzz_targets/config.rs):
        // 8 × parallelism overflowed, a panic in debug builds.
        let e = parse(&format!(
            "{GOOD}\n[password]\nargon2_parallelism = 4294967295\n"
        ))
        .unwrap_err();
        assert!(e.contains("password.argon2_parallelism"), "{e}");
        assert!(e.contains("password.argon2_memory_kib"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_key_and_line() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
auth_url = "login.localhost"

[[app]]
id = "portal"
name = "Portal"
url = "http://portal.localhost:8080/app"
upstream = "ftp://10.0.0.5"

[[app]]
id = "portal2"
name = "Again"
url = "http://PORTAL.localhost:8080"
upstream = "http://127.0.0.1:1"
"#;
        let e = parse(text).unwrap_err();
        assert!(e.contains("server.auth_url (line 4)"), "{e}");
        assert!(e.contains("app[0].url (line 9)"), "{e}");
        assert!(e.contains("without a path"), "{e}");
        assert!(e.contains("app[0].upstream (line 10)"), "{e}");
        assert!(!e.contains("app[1].url"), "{e}");
    }

    #[test]
    fn two_apps_on_one_host_are_refused() {
        let text = format!(
            "{GOOD}\n[[app]]\nid = \"b\"\nname = \"B\"\nurl = \"http://portal.localhost:8080\"\nupstream = \"http://127.0.0.1:2\"\n"
        );
        let e = parse(&text).unwrap_err();
        assert!(e.contains("app[1].url"), "{e}");
        assert!(e.contains("already the host of app[0]"), "{e}");
    }

    #[test]
    fn missing_cert_file_is_named() {
        let text = format!("{GOOD}\n[tls]\ncert = \"nope/cert.pem\"\nkey = \"nope/key.pem\"\n");
        let e = parse(&text).unwrap_err();
        assert!(e.contains("tls.cert"), "{e}");
        assert!(e.contains("tls.key"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        for bad in [
            "",
            "10",
            "s",
            "1.5h",
            "-1s",
            "10 m",
            "99999999999999999999d",
            "1y",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_parse_and_normalise() {
        let o = PublicOrigin::parse("https://Portal.Example.com.").unwrap();
        assert_eq!(o.host, "portal.example.com");
        assert_eq!(o.port, 443);
        assert_eq!(o.to_string(), "https://portal.example.com");
        assert_eq!(
            PublicOrigin::parse("http://a.localhost:8080/")
                .unwrap()
                .authority(),
            "a.localhost:8080"
        );
        for bad in [
            "portal.example.com",
            "https://",
            "https://a.com/x",
            "https://u@a.com",
            "https://a.com:0",
            "https://a.com:99999",
            "https://a b.com",
        ] {
            assert!(PublicOrigin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_path_patterns() {
        let p = PathPattern::parse("/static/*").unwrap();
        assert!(p.matches("/static/app.css"));
        assert!(!p.matches("/staticfoo"));
        assert!(!p.matches("/static"));
        let e = PathPattern::parse("/healthz").unwrap();
        assert!(e.matches("/healthz"));
        assert!(!e.matches("/healthz/x"));
        assert!(PathPattern::parse("/.portcullis/x").is_err());
        assert!(PathPattern::parse("static/*").is_err());
        assert!(PathPattern::parse("/a*").is_err());
    }
}
