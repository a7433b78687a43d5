//! Budgets that hold exactly across instances (SPEC §18, issue 29): three gateways on one
//! PostgreSQL database and one Redis, hundreds of concurrent requests against a key whose
//! budget covers twenty of them, and the recorded spend never passes the budget by more than
//! one request's cost — also when Redis loses its data in the middle.

use std::time::Duration;

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{eventually, FakeUpstream, TempRedis, TestServer};

/// The fake upstream reports 11 prompt and 7 completion tokens; at $1 and $2 per million
/// tokens a request costs 25 µUSD.
const COST_MICRO_USD: f64 = 25.0;
const BUDGET_REQUESTS: f64 = 20.0;

async fn instance(
    database_url: Option<&str>,
    redis_url: &str,
    upstream: &FakeUpstream,
) -> TestServer {
    let mut builder = TestServer::builder()
        .env("REDIS_URL", redis_url)
        .env("CORTEX_MASTER_KEY", &"22".repeat(32))
        .env("RATE_LIMIT_ENABLED", "false")
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 1.0, 2.0);
    builder = match database_url {
        Some(url) => builder.env("DATABASE_URL", url),
        None => builder.postgres(),
    };
    builder.start().await
}

/// Sends `count` requests at once, spread over `servers`; returns how many were answered 200.
/// Every other answer must be 429 `budget_exceeded`, or 503 while an instance has not yet
/// reconnected to a restarted Redis (budgets fail closed).
async fn wave(servers: &[&TestServer], key: &str, count: usize) -> usize {
    let requests = (0..count).map(|i| {
        let server = servers[i % servers.len()];
        async move {
            let response = server
                .http()
                .post(server.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&serde_json::json!({
                    "model": "llama",
                    "max_tokens": 7,
                    "messages": [{ "role": "user", "content": "hello" }]
                }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            match status {
                200 => 1,
                429 => {
                    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                    0
                }
                503 => 0,
                other => panic!("unexpected {other}: {body}"),
            }
        }
    });
    futures_util::future::join_all(requests)
        .await
        .into_iter()
        .sum()
}

/// The spend recorded for `key_id` in micro-USD, once `expected` successful rows are written.
async fn recorded_spend(server: &TestServer, expected: usize) -> f64 {
    let store = server.state().store().clone();
    let written = eventually(Duration::from_secs(10), || async {
        let rows = store
            .list_usage(&cortex_store::Tenant::All, &Default::default(), 10_000)
            .await
            .unwrap();
        rows.iter().filter(|r| r.status == 200).count() == expected
    })
    .await;
    assert!(written, "{expected} successful usage rows");
    let rows = store
        .list_usage(&cortex_store::Tenant::All, &Default::default(), 10_000)
        .await
        .unwrap();
    rows.iter()
        .filter(|r| r.status == 200)
        .map(|r| r.cost_usd * 1e6)
        .sum()
}

#[tokio::test]
async fn a_key_budget_holds_across_three_instances_and_a_redis_restart() {
    let upstream = FakeUpstream::start().await;
    let mut redis = TempRedis::start();
    let first = instance(None, &redis.url(), &upstream).await;
    let second = instance(Some(first.database_url()), &redis.url(), &upstream).await;
    let third = instance(Some(first.database_url()), &redis.url(), &upstream).await;
    let servers = [&first, &second, &third];
    let budget_usd = BUDGET_REQUESTS * COST_MICRO_USD / 1e6;
    let key = first
        .create_key(
            &Scope::ALL,
            None,
            KeyLimits {
                budget_usd: Some(budget_usd),
                ..KeyLimits::default()
            },
        )
        .await;
    // The key reaches the other instances' caches (announced through Redis, else polled).
    for server in &servers[1..] {
        let known = eventually(Duration::from_secs(5), || async {
            server
                .http()
                .get(server.url("/v1/models"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .status()
                == 200
        })
        .await;
        assert!(known, "the key is known everywhere");
    }

    // 200 at once: only as many as the budget's reservations allow get through.
    let mut served = wave(&servers, &key, 200).await;
    assert!((1..200).contains(&served), "served {served} of 200");
    let spend = recorded_spend(&first, served).await;
    eprintln!("first wave: {served} served, {spend} µUSD");
    assert!(spend <= BUDGET_REQUESTS * COST_MICRO_USD + COST_MICRO_USD);

    // Redis loses everything; the counters are rebuilt from the recorded usage, not from zero.
    redis.restart();
    // Until every instance's connection is back, requests may be refused as unavailable.
    let mut back = false;
    for _ in 0..100 {
        let response = second
            .http()
            .post(second.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "model": "llama", "max_tokens": 7, "messages": [{ "role": "user", "content": "x" }] }))
            .send()
            .await
            .unwrap();
        served += usize::from(response.status() == 200);
        if response.status() == 200 || response.status() == 429 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the gateways use Redis again");
    eprintln!("after the restart: {served} served");
    // Waves until the budget is spent.
    for _ in 0..20 {
        let more = wave(&servers, &key, 60).await;
        served += more;
        if more == 0 {
            break;
        }
    }
    let spend = recorded_spend(&first, served).await;
    eprintln!(
        "budget {} µUSD: {served} requests served, {spend} µUSD recorded",
        BUDGET_REQUESTS * COST_MICRO_USD
    );
    assert!(
        spend <= BUDGET_REQUESTS * COST_MICRO_USD + COST_MICRO_USD,
        "recorded {spend} µUSD against a budget of {} µUSD",
        BUDGET_REQUESTS * COST_MICRO_USD
    );
    assert!(
        spend >= (BUDGET_REQUESTS - 3.0) * COST_MICRO_USD,
        "the budget was used, not just refused: {spend} µUSD"
    );
    assert_eq!(
        wave(&servers, &key, 10).await,
        0,
        "spent: everything refused"
    );
    third.stop().await;
    second.stop().await;
    first.stop().await;
}
