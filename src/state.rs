//! Everything a request handler needs, built once at start-up and shared read-only.

use std::sync::Arc;

use http::HeaderName;

use crate::accounts::Accounts;
use crate::auth::{CsrfKey, Origin, RandomError, RateLimiter};
use crate::identity::{IdentityError, LiveKeys};

use crate::config::Config;
use crate::error::Branding;
use crate::gate::Router;
use crate::proxy::Upstreams;
use crate::web::{cookies::CookieNames, PageHeaders};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

pub struct AppState {
    pub config: Config,
    pub router: Router,
    pub upstreams: Upstreams,
    pub branding: Branding,
    pub cookies: CookieNames,
    /// Every identity header name configured for any app, stripped from all requests.
    pub identity_header_names: Vec<HeaderName>,
    pub accounts: Arc<Accounts>,
    pub keys: LiveKeys,
    /// Signs the CSRF token of each form; made fresh at every start.
    pub csrf_key: CsrfKey,
    /// Sign-in POSTs per client address (SPEC §5).
    pub login_limiter: RateLimiter,
    /// Where `rd` may point: the app origins.
    pub redirect_origins: Vec<Origin>,
}

impl AppState {
    pub fn new(config: Config, accounts: Arc<Accounts>) -> Result<Self, StartError> {
        let keys = LiveKeys::load(&config.server.data_dir, accounts.clock.now())?;
        let https = config.server.auth_url.is_https();
        let mut form_targets: Vec<String> = config.apps.iter().map(|a| a.url.to_string()).collect();
        form_targets.push(config.server.auth_url.to_string());
        form_targets.sort();
        form_targets.dedup();
        let mut names: Vec<HeaderName> = config
            .apps
            .iter()
            .flat_map(|a| a.headers.all().into_iter().cloned())
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        let redirect_origins = config
            .apps
            .iter()
            .filter_map(|a| Origin::parse(&a.url.to_string()).ok())
            .collect();
        let csrf_key = CsrfKey::generate()?;
        Ok(Self {
            csrf_key,
            login_limiter: RateLimiter::new(config.security.login_rate_per_minute),
            redirect_origins,
            router: Router::new(&config),
            upstreams: Upstreams::new(
                config.apps.iter().map(|a| a.upstream.authority.as_str()),
                config.server.connect_timeout,
                config.server.upstream_timeout,
            ),
            branding: Branding {
                company: config.branding.company.clone(),
                support_contact: config.branding.support_contact.clone(),
                page_headers: PageHeaders::new(&form_targets, https),
            },
            cookies: CookieNames::new(https),
            identity_header_names: names,
            accounts,
            keys,
            config,
        })
    }
}
