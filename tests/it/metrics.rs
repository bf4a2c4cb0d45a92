//! Prometheus metrics on their own listener (issue 5): the counters move with traffic.

use http::StatusCode;

use crate::helpers::*;

fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let b = Browser::new(addr);
    let page = b.get(&format!("http://{addr}/metrics")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    page.body
}

#[tokio::test]
async fn metrics_are_served_privately_and_the_counters_move() {
    let s = setup_with("metrics_listen = \"127.0.0.1:0\"", "").await;
    let srv = &s.server;
    let metrics = srv.metrics_addr.expect("metrics listener");
    let before = scrape(metrics).await;
    let ok_before = value(
        &before,
        "portcullis_requests_total{app=\"portal\",class=\"2xx\"}",
    );

    let p = activate_and_sign_in(srv, "rita", &["portal"]).await;
    let b = Browser::new(srv.addr);
    b.get(&format!("{}/echo", srv.url("portal"))).await;
    p.browser.follow(&format!("{}/x", srv.url("portal"))).await;
    drop(s.analytics);
    b.get(&format!("{}/echo", srv.url("analytics"))).await;

    let after = scrape(metrics).await;
    assert!(
        value(
            &after,
            "portcullis_requests_total{app=\"portal\",class=\"2xx\"}"
        ) >= ok_before + 2
    );
    assert!(
        value(
            &after,
            "portcullis_upstream_duration_seconds_count{app=\"portal\"}"
        ) >= 2
    );
    assert_eq!(
        value(
            &after,
            "portcullis_upstream_errors_total{app=\"analytics\",kind=\"unreachable\"}"
        ),
        1
    );
    assert_eq!(
        value(&after, "portcullis_signins_total{outcome=\"success\"}"),
        1
    );
    assert_eq!(
        value(&after, "portcullis_signins_total{outcome=\"replay\"}"),
        0
    );
    assert_eq!(value(&after, "portcullis_enrolments_total"), 1);
    assert!(value(&after, "portcullis_sessions") >= 2);

    // Never on the public listener.
    let public = b.get(&format!("{}/metrics", srv.url("login"))).await;
    assert!(!public.body.contains("portcullis_requests_total"));
}
