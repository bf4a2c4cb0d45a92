//! Everything a request handler needs, built once at start-up and shared read-only.

use http::HeaderName;

use crate::config::Config;
use crate::error::Branding;
use crate::gate::Router;
use crate::proxy::Upstreams;
use crate::web::{cookies::CookieNames, PageHeaders};

pub struct AppState {
    pub config: Config,
    pub router: Router,
    pub upstreams: Upstreams,
    pub branding: Branding,
    pub cookies: CookieNames,
    /// Every identity header name configured for any app, stripped from all requests.
    pub identity_header_names: Vec<HeaderName>,
}

impl AppState {
    pub fn new(config: Config) -> Self {
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
        Self {
            router: Router::new(&config),
            upstreams: Upstreams::new(
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
            config,
        }
    }
}
