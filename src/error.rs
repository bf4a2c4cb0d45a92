//! The one place where a refusal or failure becomes an HTTP response. Handlers return a
//! [`Refusal`]; they never invent a status code or an error page themselves.

use askama::Template;
use http::{header, HeaderValue, Response, StatusCode};

use crate::web::{self, Body, PageHeaders};

/// What every page needs to look like the company's own.
#[derive(Debug, Clone)]
pub struct Branding {
    pub company: String,
    pub support_contact: String,
    pub page_headers: PageHeaders,
}

/// Why a request is not served as asked. Each variant says who caused it: the client
/// (4xx), an upstream (502/504) or Portcullis itself (503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No app is configured for this host, or no such Portcullis page.
    NotFound,
    /// Not signed in, on a request that is not a browser navigation.
    Unauthenticated,
    /// Signed in, but this account has no access to the app.
    Forbidden {
        app: String,
    },
    /// The client sent something malformed; the message says what to do.
    BadRequest(String),
    /// A form came from somewhere else or without its token.
    CsrfRejected,
    TooManyRequests {
        retry_after_secs: u64,
    },
    PayloadTooLarge,
    /// A form's body did not arrive within the client time limit (a trickling client).
    RequestTimeout,
    /// The upstream refused, reset or could not be reached.
    BadGateway {
        app: String,
    },
    /// The upstream did not answer in time.
    GatewayTimeout {
        app: String,
    },
    /// The store failed; sign-in cannot proceed safely.
    Unavailable,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    brand: &'a str,
    title: &'a str,
    message: &'a str,
    status: u16,
    link: Option<(&'a str, &'a str)>,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden { .. } | Refusal::CsrfRejected => StatusCode::FORBIDDEN,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Refusal::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn title_and_message(&self, branding: &Branding) -> (String, String) {
        match self {
            Refusal::NotFound => (
                "Page not found".into(),
                "There is nothing at this address. Check the link, or start again from the page you came from.".into(),
            ),
            Refusal::Unauthenticated => (
                "Sign-in required".into(),
                "Sign in first, then try again.".into(),
            ),
            Refusal::Forbidden { app } => (
                format!("No access to {app}"),
                format!(
                    "You are signed in, but your account has no access to {app}. To get access, ask {}.",
                    branding.support_contact
                ),
            ),
            Refusal::BadRequest(msg) => ("Something was wrong with that request".into(), msg.clone()),
            Refusal::CsrfRejected => (
                "Please try again".into(),
                "This form expired or was sent from another site. Go back, reload the page and submit it again.".into(),
            ),
            Refusal::TooManyRequests { retry_after_secs } => (
                "Too many attempts".into(),
                format!("Too many sign-in attempts from your network. Wait {retry_after_secs} seconds and try again."),
            ),
            Refusal::PayloadTooLarge => (
                "Request too large".into(),
                "That form was larger than allowed. Go back and try again with shorter entries.".into(),
            ),
            Refusal::RequestTimeout => (
                "That took too long".into(),
                "The form did not arrive in time. Check your connection, go back and submit it again.".into(),
            ),
            Refusal::BadGateway { app } => (
                format!("{app} is not available"),
                format!("{app} is not answering right now. Try again in a few minutes; if it keeps happening, tell {}.", branding.support_contact),
            ),
            Refusal::GatewayTimeout { app } => (
                format!("{app} is taking too long"),
                format!("{app} did not answer in time. Try again in a few minutes; if it keeps happening, tell {}.", branding.support_contact),
            ),
            Refusal::Unavailable => (
                "Sign-in is unavailable".into(),
                "Sign-in is temporarily unavailable. Try again in a few minutes.".into(),
            ),
        }
    }

    /// A branded HTML page for people, or a small JSON body for programs.
    pub fn respond(&self, branding: &Branding, wants_html: bool) -> Response<Body> {
        let status = self.status();
        let (title, message) = self.title_and_message(branding);
        let mut res = if wants_html {
            let page = MessagePage {
                brand: brand_name(branding),
                title: &title,
                message: &message,
                status: status.as_u16(),
                link: None,
            };
            match page.render() {
                Ok(html) => web::html(status, html, &branding.page_headers),
                Err(_) => web::text(status, "Error"),
            }
        } else {
            let body = serde_json::json!({ "error": error_code(self), "message": message });
            web::json(status, body.to_string())
        };
        if let Refusal::TooManyRequests { retry_after_secs } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

fn error_code(r: &Refusal) -> &'static str {
    match r {
        Refusal::NotFound => "not_found",
        Refusal::Unauthenticated => "unauthenticated",
        Refusal::Forbidden { .. } => "forbidden",
        Refusal::BadRequest(_) => "bad_request",
        Refusal::CsrfRejected => "csrf_rejected",
        Refusal::TooManyRequests { .. } => "too_many_requests",
        Refusal::PayloadTooLarge => "payload_too_large",
        Refusal::RequestTimeout => "request_timeout",
        Refusal::BadGateway { .. } => "bad_gateway",
        Refusal::GatewayTimeout { .. } => "gateway_timeout",
        Refusal::Unavailable => "unavailable",
    }
}

pub fn brand_name(b: &Branding) -> &str {
    if b.company.is_empty() {
        "Sign-in"
    } else {
        &b.company
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn branding() -> Branding {
        Branding {
            company: "Example <Corp>".into(),
            support_contact: "partners@example.com".into(),
            page_headers: PageHeaders::new(&[], false),
        }
    }

    async fn body(res: Response<Body>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn forbidden_page_names_the_app_and_whom_to_ask_escaped() {
        let r = Refusal::Forbidden {
            app: "Partner <Analytics>".into(),
        };
        let res = r.respond(&branding(), true);
        assert_eq!(res.status(), 403);
        assert_eq!(res.headers()["x-frame-options"], "DENY");
        let html = body(res).await;
        assert!(
            html.contains("Partner &#60;Analytics&#62;")
                || html.contains("Partner &lt;Analytics&gt;"),
            "{html}"
        );
        assert!(html.contains("partners@example.com"));
        assert!(!html.contains("<Corp>"));
    }

    #[tokio::test]
    async fn programs_get_json() {
        let res = Refusal::Unauthenticated.respond(&branding(), false);
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body(res).await).unwrap();
        assert_eq!(v["error"], "unauthenticated");
    }

    #[tokio::test]
    async fn too_many_requests_says_when_to_retry() {
        let res = Refusal::TooManyRequests {
            retry_after_secs: 7,
        }
        .respond(&branding(), true);
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "7");
    }
}
