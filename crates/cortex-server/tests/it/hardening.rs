//! HTTP hardening: security headers everywhere, HSTS only over TLS, CORS allow-list, CSRF.

use cortex_testkit::TestServer;
use serde_json::json;

use crate::{all_scopes_key, gateway_with_upstream};

fn assert_security_headers(response: &reqwest::Response, what: &str) {
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["x-frame-options"], "DENY", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
    assert!(
        headers["permissions-policy"]
            .to_str()
            .unwrap()
            .contains("camera=()"),
        "{what}"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{what}: {csp}"
    );
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_no_hsts_over_plain_http() {
    let (server, _upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let http = server.http();
    let ok = http
        .get(server.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_security_headers(&ok, "200");
    assert!(
        ok.headers().get("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );
    let unauthorized = http.get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_security_headers(&unauthorized, "401");
    let missing = http.get(server.url("/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_security_headers(&missing, "404");
    let too_big = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(vec![b' '; 11 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    assert_security_headers(&too_big, "413");
    let console = http.get(server.url("/ui/login")).send().await.unwrap();
    assert_security_headers(&console, "console");
    assert!(console.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    server.stop().await;
}

#[tokio::test]
async fn hsts_is_sent_behind_a_tls_proxy() {
    let server = TestServer::builder()
        .env("CORTEX_BEHIND_TLS", "true")
        .start()
        .await;
    let response = server
        .http()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    server.stop().await;
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let server = TestServer::builder()
        .env("CORS_ALLOW_ORIGINS", "https://console.example")
        .start()
        .await;
    let http = server.http();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, server.url("/v1/models"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://console.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://console.example"
    );
    assert!(
        allowed
            .headers()
            .get("access-control-allow-credentials")
            .is_none(),
        "credentials are off by default"
    );
    let evil = preflight("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let simple = http
        .get(server.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(simple
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    server.stop().await;
}

#[tokio::test]
async fn csrf_refuses_cookie_changes_from_other_origins() {
    let server = TestServer::builder().start().await;
    let admin = crate::admin::admin(&server).await;
    let http = server.http();
    let body = json!({ "name": "csrf", "scopes": ["chat"] });
    let post = |origin: Option<String>, referer: Option<String>| {
        let mut request = http
            .post(server.url("/admin/keys"))
            .header("cookie", &admin.cookie)
            .json(&body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(referer) = referer {
            request = request.header("referer", referer);
        }
        request.send()
    };
    let own = format!("http://{}", server.addr);
    crate::assert_error(post(None, None).await.unwrap(), 403, "csrf_origin_mismatch").await;
    crate::assert_error(
        post(Some("https://evil.example".into()), None)
            .await
            .unwrap(),
        403,
        "csrf_origin_mismatch",
    )
    .await;
    crate::assert_error(
        post(Some("null".into()), None).await.unwrap(),
        403,
        "csrf_origin_mismatch",
    )
    .await;
    crate::assert_error(
        post(None, Some("https://evil.example/page".into()))
            .await
            .unwrap(),
        403,
        "csrf_origin_mismatch",
    )
    .await;
    assert_eq!(post(Some(own.clone()), None).await.unwrap().status(), 201);
    assert_eq!(
        post(None, Some(format!("{own}/ui/")))
            .await
            .unwrap()
            .status(),
        201
    );
    // Bearer-authenticated requests are exempt: browsers never add bearer tokens themselves.
    let bearer = http
        .post(server.url("/admin/keys"))
        .bearer_auth(&admin.access_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 201);
    // Nothing was created by the refused attempts.
    let keys: serde_json::Value = http
        .get(server.url("/admin/keys"))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["data"].as_array().unwrap().len(), 3);
    server.stop().await;
}
