//! `GET /admin/providers/health` (SPEC §16): a model served by a working fake upstream and by an
//! address that refuses connections. After requests, the working provider is healthy with a
//! latency and the refusing one degraded (one failure), then open (five in a row), each with
//! its error rate; roles that may not list providers get 403, anonymous callers 401. The
//! gateway runs on a manual clock, so the passive demotion runs out without sleeping.

use std::sync::Arc;

use cortex_domain::clock::{Clock, ManualClock, SystemClock};
use cortex_domain::Role;
use cortex_testkit::{FakeUpstream, TestServer};
use serde_json::Value;

use crate::admin::{admin, user_with_role, Session};
use crate::{all_scopes_key, assert_error, post_chat};

/// Longer than the passive demotion after a failure (10 s), shorter than the cooldown (30 s).
const STEP_MILLIS: i64 = 10_001;

/// A loopback address nothing listens on: bound for a free port, then closed.
async fn refusing_base_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

/// The health entries by provider name, checking the list's shape and headers on the way.
async fn health(server: &TestServer, session: &Session) -> (Value, Value) {
    let response = server
        .http()
        .get(server.url("/admin/providers/health"))
        .bearer_auth(&session.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "health is stale at once: never cached"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    let names: Vec<&str> = data.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["down", "good"], "every provider, sorted by name");
    (data[0].clone(), data[1].clone())
}

/// The fields every entry has, whatever its state.
fn assert_well_formed(entry: &Value) {
    assert_eq!(entry["kind"], "openai");
    assert_eq!(entry["in_flight"], 0, "no request left running");
    let rate = entry["error_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate), "{entry}");
    // No active check has run on this instance; the two fields come and go together.
    assert_eq!(
        entry["last_check_at"].is_null(),
        entry["last_check_ok"].is_null(),
        "{entry}"
    );
    if let Some(at) = entry["last_check_at"].as_str() {
        assert!(
            cortex_domain::time_fmt::rfc3339_to_millis(at).is_some(),
            "{entry}"
        );
    }
}

fn assert_good_is_healthy(good: &Value) {
    assert_well_formed(good);
    assert_eq!(good["state"], "healthy", "{good}");
    assert_eq!(good["breaker"], "closed");
    assert!(
        good["latency_ms_p50"].is_u64(),
        "a latency once it answered: {good}"
    );
    assert_eq!(good["error_rate"], 0.0);
}

#[tokio::test]
async fn the_health_list_shows_a_working_provider_healthy_and_a_refusing_one_degraded_then_open() {
    let good = FakeUpstream::start().await;
    let clock = Arc::new(ManualClock::new(SystemClock.now_millis()));
    let server = TestServer::builder()
        .clock(clock.clone())
        .provider("down", &refusing_base_url().await, None)
        .provider("good", &good.base_url(), None)
        .model("llama", &["down", "good"], 0.0, 0.0)
        .start()
        .await;
    let admin = admin(&server).await;
    let viewer = user_with_role(&server, &admin, "as-viewer", Role::Viewer).await;
    let developer = user_with_role(&server, &admin, "as-developer", Role::Developer).await;
    let billing = user_with_role(&server, &admin, "as-billing", Role::Billing).await;
    let key = all_scopes_key(&server).await;

    // Before any request both are healthy and unmeasured, and the ids are the catalogue's.
    let (down, fresh) = health(&server, &admin).await;
    for entry in [&down, &fresh] {
        assert_well_formed(entry);
        assert_eq!(entry["state"], "healthy");
        assert_eq!(entry["latency_ms_p50"], Value::Null);
        assert_eq!(entry["error_rate"], 0.0);
    }
    let listed: Value = server
        .http()
        .get(server.url("/admin/providers"))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_of = |name: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["id"].clone())
            .unwrap()
    };
    assert_eq!(down["id"], id_of("down"));
    assert_eq!(fresh["id"], id_of("good"));
    let (down_id, good_id) = (id_of("down"), id_of("good"));
    let (down_id, good_id) = (down_id.as_str().unwrap(), good_id.as_str().unwrap());

    // Round robin puts the refusing provider first within two requests; it fails, the good
    // one answers, and the failed one is demoted (the clock stands still, so it stays so).
    let mut down = down;
    for _ in 0..4 {
        let response = post_chat(&server, &key, "llama", false).await;
        assert_eq!(
            response.status(),
            200,
            "the good provider serves every request"
        );
        down = health(&server, &admin).await.0;
        if down["state"] != "healthy" {
            break;
        }
    }
    let (_, good_now) = health(&server, &admin).await;
    assert_good_is_healthy(&good_now);
    assert_well_formed(&down);
    assert_eq!(down["state"], "degraded", "one failure: {down}");
    assert_eq!(down["breaker"], "closed", "one failure does not open it");
    assert_eq!(down["error_rate"], 1.0, "it never answered: {down}");
    assert_eq!(down["latency_ms_p50"], Value::Null);

    // Once the demotion runs out it is tried again, fails again, and the fifth failure in a
    // row opens its breaker.
    for _ in 0..30 {
        if down["state"] == "open" {
            break;
        }
        clock.advance_millis(STEP_MILLIS);
        let response = post_chat(&server, &key, "llama", false).await;
        assert_eq!(response.status(), 200);
        down = health(&server, &admin).await.0;
    }
    assert_eq!(down["state"], "open", "{down}");
    assert_eq!(down["breaker"], "open");
    assert_eq!(down["error_rate"], 1.0);
    assert_eq!(down["latency_ms_p50"], Value::Null);
    assert_well_formed(&down);
    let (_, good_now) = health(&server, &admin).await;
    assert_good_is_healthy(&good_now);

    // A viewer may list providers, so sees the same; developers and billing may not (the list
    // names the deployment's upstreams), and without credentials nothing is answered.
    let (seen_down, seen_good) = health(&server, &viewer).await;
    assert_eq!(seen_down["state"], "open");
    assert_eq!(seen_good["state"], "healthy");
    for refused in [&developer, &billing] {
        let response = server
            .http()
            .get(server.url("/admin/providers/health"))
            .bearer_auth(&refused.access_token)
            .send()
            .await
            .unwrap();
        let body = assert_error(response, 403, "forbidden").await.to_string();
        assert!(!body.contains(down_id) && !body.contains(good_id), "{body}");
    }
    let anonymous = server
        .http()
        .get(server.url("/admin/providers/health"))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, 401, "unauthenticated").await;
    server.stop().await;
}
