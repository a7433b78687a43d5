//! Budgets that hold exactly across instances (SPEC §18, issue 29): three gateways on one
//! PostgreSQL database and one Redis, hundreds of concurrent requests against a key whose
//! budget covers twenty of them, and the recorded spend never passes the budget by more than
//! one request's cost — also when Redis loses its data in the middle; the same for a team
//! budget shared by keys used on different instances. Periods roll over at the UTC boundary
//! (an injected clock), and team token rates bind every key of the team.

use std::sync::Arc;
use std::time::Duration;

use cortex_control::keys::KeySpec;
use cortex_control::orgs::Limits;
use cortex_domain::clock::ManualClock;
use cortex_domain::{Budget, BudgetPeriod, KeyLimits, Scope, Tenant, DEFAULT_ORG};
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

/// Sends `count` requests at once, spread over `targets` (an instance and the key used on
/// it); returns how many were answered 200. Every other answer must be 429
/// `budget_exceeded`, or 503 while an instance has not yet reconnected to a restarted Redis
/// (budgets fail closed).
async fn wave(targets: &[(&TestServer, &str)], count: usize) -> usize {
    let requests = (0..count).map(|i| {
        let (server, key) = targets[i % targets.len()];
        async move {
            let response = chat(server, key).await;
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

async fn chat(server: &TestServer, key: &str) -> reqwest::Response {
    server
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
        .unwrap()
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

/// Waits until every instance knows `key` (announced through Redis, else polled).
async fn known_everywhere(servers: &[&TestServer], key: &str) {
    for server in servers {
        let known = eventually(Duration::from_secs(5), || async {
            server
                .http()
                .get(server.url("/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                == 200
        })
        .await;
        assert!(known, "the key is known everywhere");
    }
}

/// 200 requests at once over `targets`, a Redis restart, then waves until the budget (of
/// [`BUDGET_REQUESTS`] requests) is spent: the recorded spend never passes it by more than one
/// request's cost, and the budget was used rather than just refused.
async fn exact_under_load(targets: &[(&TestServer, &str)], redis: &mut TempRedis) {
    let first = targets[0].0;
    let mut served = wave(targets, 200).await;
    assert!((1..200).contains(&served), "served {served} of 200");
    let spend = recorded_spend(first, served).await;
    eprintln!("first wave: {served} served, {spend} µUSD");
    assert!(spend <= BUDGET_REQUESTS * COST_MICRO_USD + COST_MICRO_USD);

    // Redis loses everything; the counters are rebuilt from the recorded usage, not from zero.
    redis.restart();
    // Until every instance's connection is back, requests may be refused as unavailable.
    let (second, second_key) = targets[1 % targets.len()];
    let mut back = false;
    for _ in 0..100 {
        let response = chat(second, second_key).await;
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
        let more = wave(targets, 60).await;
        served += more;
        if more == 0 {
            break;
        }
    }
    let spend = recorded_spend(first, served).await;
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
    assert_eq!(wave(targets, 10).await, 0, "spent: everything refused");
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
    known_everywhere(&servers[1..], &key).await;
    let targets: Vec<_> = servers.iter().map(|s| (*s, key.as_str())).collect();
    exact_under_load(&targets, &mut redis).await;
    third.stop().await;
    second.stop().await;
    first.stop().await;
}

/// Creates a team of the default organization with `budget` and `tokens_per_minute`, the admin
/// as its member; returns its id.
async fn team(
    server: &TestServer,
    budget: Option<Budget>,
    tokens_per_minute: Option<i64>,
) -> String {
    let store = server.state().store();
    let now = server.state().now_millis();
    let team = cortex_control::orgs::create_team(
        store,
        &Tenant::All,
        DEFAULT_ORG,
        &format!("team-{now}-{}", budget.map_or(0.0, |b| b.usd)),
        &Limits {
            budget: Some(budget),
            tokens_per_minute: Some(tokens_per_minute),
        },
        "test",
        "127.0.0.1",
        now,
    )
    .await
    .unwrap();
    cortex_control::orgs::set_members(
        store,
        &Tenant::All,
        &team.id,
        &[server.admin_id().await],
        "test",
        "127.0.0.1",
        now,
    )
    .await
    .unwrap();
    team.id
}

/// A key of the admin's charged to `team_id`, with `limits`.
async fn team_key(server: &TestServer, team_id: Option<&str>, limits: KeyLimits) -> String {
    server
        .create_key_with(KeySpec {
            name: "team key".to_owned(),
            owner_user_id: server.admin_id().await,
            scopes: Scope::ALL.to_vec(),
            models: None,
            expires_at: None,
            limits,
            org_id: DEFAULT_ORG.to_owned(),
            team_id: team_id.map(str::to_owned),
            allowed_ips: None,
        })
        .await
        .1
}

#[tokio::test]
async fn a_team_budget_shared_by_keys_on_three_instances_holds_across_a_redis_restart() {
    let upstream = FakeUpstream::start().await;
    let mut redis = TempRedis::start();
    let first = instance(None, &redis.url(), &upstream).await;
    let second = instance(Some(first.database_url()), &redis.url(), &upstream).await;
    let third = instance(Some(first.database_url()), &redis.url(), &upstream).await;
    let servers = [&first, &second, &third];
    let budget = Budget {
        usd: BUDGET_REQUESTS * COST_MICRO_USD / 1e6,
        period: BudgetPeriod::Monthly,
    };
    let team_id = team(&first, Some(budget), None).await;
    // Three keys of the team, none with a budget of its own, each used on its own instance.
    let mut keys = Vec::new();
    for _ in 0..3 {
        let key = team_key(&first, Some(&team_id), KeyLimits::default()).await;
        known_everywhere(&servers, &key).await;
        keys.push(key);
    }
    let targets: Vec<_> = servers
        .iter()
        .zip(&keys)
        .map(|(server, key)| (*server, key.as_str()))
        .collect();
    exact_under_load(&targets, &mut redis).await;
    // The rows carry the team, and the team's recorded spend is what was served.
    let store = first.state().store();
    let team_spend = store
        .spend_since(cortex_store::usage::SpendOf::Team(&team_id), 0)
        .await
        .unwrap();
    assert!(team_spend * 1e6 <= BUDGET_REQUESTS * COST_MICRO_USD + COST_MICRO_USD);
    assert!(team_spend * 1e6 >= (BUDGET_REQUESTS - 3.0) * COST_MICRO_USD);
    third.stop().await;
    second.stop().await;
    first.stop().await;
}

/// Sends requests one at a time (settling in between) until one is refused; returns how many
/// were served. The refusal must be `budget_exceeded`.
async fn spend_until_refused(server: &TestServer, key: &str) -> usize {
    for served in 0..50 {
        let response = chat(server, key).await;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        match status {
            200 => {}
            429 => {
                assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                return served;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        // Settling happens off the request's path; the next request sees the actual cost.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("50 requests served against a budget of a few");
}

async fn refused(server: &TestServer, key: &str) -> bool {
    let response = chat(server, key).await;
    response.status() == 429
}

/// 2026-12-30 23:59:00 UTC.
const DEC_30_LATE: i64 = 1_798_675_140_000;
const DAY: i64 = 24 * 60 * 60_000;

#[tokio::test]
async fn daily_and_monthly_budgets_roll_over_at_the_utc_boundary_and_total_never_does() {
    let upstream = FakeUpstream::start().await;
    let clock = Arc::new(ManualClock::new(DEC_30_LATE));
    let server = TestServer::builder()
        .env("RATE_LIMIT_ENABLED", "false")
        .clock(clock.clone())
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 1.0, 2.0)
        .start()
        .await;
    // About four requests each (a request costs 25 µUSD).
    let usd = 100.0 / 1e6;
    let daily = team_key(
        &server,
        None,
        KeyLimits {
            budget_usd: Some(usd),
            budget_period: Some(BudgetPeriod::Daily),
            ..KeyLimits::default()
        },
    )
    .await;
    let monthly_team = team(
        &server,
        Some(Budget {
            usd,
            period: BudgetPeriod::Monthly,
        }),
        None,
    )
    .await;
    let monthly = team_key(&server, Some(&monthly_team), KeyLimits::default()).await;
    let total = team_key(
        &server,
        None,
        KeyLimits {
            budget_usd: Some(usd),
            budget_period: Some(BudgetPeriod::Total),
            ..KeyLimits::default()
        },
    )
    .await;

    // December 30th: each is spent.
    for key in [&daily, &monthly, &total] {
        let served = spend_until_refused(&server, key).await;
        assert!((1..=4).contains(&served), "served {served}");
    }
    // One minute before midnight nothing has rolled.
    clock.advance_millis(59_000);
    for key in [&daily, &monthly, &total] {
        assert!(refused(&server, key).await);
    }
    // December 31st, 00:00:30: the day rolled, the month did not.
    clock.advance_millis(31_000);
    assert!(chat(&server, &daily).await.status() == 200, "a new UTC day");
    assert!(refused(&server, &monthly).await, "the same UTC month");
    assert!(refused(&server, &total).await, "total never rolls over");
    // January 1st, 00:00:30: a new month (and year).
    clock.advance_millis(DAY);
    assert!(
        chat(&server, &monthly).await.status() == 200,
        "a new UTC month"
    );
    assert!(chat(&server, &daily).await.status() == 200, "and a new day");
    assert!(refused(&server, &total).await, "total never rolls over");
    server.stop().await;
}

#[tokio::test]
async fn a_team_token_rate_binds_every_key_of_the_team_and_no_other() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("RATE_LIMIT_ENABLED", "false")
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 1.0, 2.0)
        .start()
        .await;
    // One request reports 18 tokens: the team's window is full after it.
    let team_id = team(&server, None, Some(10)).await;
    let first = team_key(&server, Some(&team_id), KeyLimits::default()).await;
    let second = team_key(&server, Some(&team_id), KeyLimits::default()).await;
    let outside = team_key(&server, None, KeyLimits::default()).await;
    assert_eq!(chat(&server, &first).await.status(), 200);
    let limited = eventually(Duration::from_secs(5), || async {
        chat(&server, &second).await.status() == 429
    })
    .await;
    assert!(limited, "the team's other key is held by the team's window");
    let response = chat(&server, &second).await;
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "tokens_per_minute_exceeded",
        "{body}"
    );
    assert_eq!(
        chat(&server, &outside).await.status(),
        200,
        "a key outside the team is not"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_budgeted_request_without_a_cap_gets_its_models_cap_and_others_are_left_alone() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("RATE_LIMIT_ENABLED", "false")
        .provider("fake", &upstream.base_url(), None)
        .config_toml(
            "[[models]]\nname = \"capped\"\nproviders = [\"fake\"]\ninput_price_per_mtok = 1.0\noutput_price_per_mtok = 2.0\nmax_output_tokens = 300\n",
        )
        .model("llama", &["fake"], 1.0, 2.0)
        .start()
        .await;
    let budgeted = team_key(
        &server,
        None,
        KeyLimits {
            budget_usd: Some(1.0),
            ..KeyLimits::default()
        },
    )
    .await;
    let free = team_key(&server, None, KeyLimits::default()).await;
    let send = |key: &str, model: &str, body_cap: Option<u64>| {
        let mut body = serde_json::json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] });
        if let Some(cap) = body_cap {
            body["max_tokens"] = cap.into();
        }
        server
            .http()
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let last_cap =
        |upstream: &FakeUpstream| upstream.received().last().unwrap().body["max_tokens"].clone();

    assert_eq!(send(&budgeted, "capped", None).await.unwrap().status(), 200);
    assert_eq!(last_cap(&upstream), 300, "the model's cap");
    assert_eq!(send(&budgeted, "llama", None).await.unwrap().status(), 200);
    assert_eq!(last_cap(&upstream), 4096, "the gateway's default");
    assert_eq!(
        send(&budgeted, "capped", Some(9)).await.unwrap().status(),
        200
    );
    assert_eq!(last_cap(&upstream), 9, "the client's own cap stays");
    assert_eq!(send(&free, "capped", None).await.unwrap().status(), 200);
    assert_eq!(
        last_cap(&upstream),
        serde_json::Value::Null,
        "no budget: nothing is added"
    );

    // The admin API changes the cap, refuses nonsense, and `null` goes back to the default.
    let root = crate::admin::admin(&server).await;
    let models: serde_json::Value = server
        .http()
        .get(server.url("/admin/models"))
        .bearer_auth(&root.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let capped = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "capped")
        .unwrap();
    assert_eq!(capped["max_output_tokens"], 300);
    let id = capped["id"].as_str().unwrap().to_owned();
    let patch = |body: serde_json::Value| {
        server
            .http()
            .patch(server.url(&format!("/admin/models/{id}")))
            .bearer_auth(&root.access_token)
            .json(&body)
            .send()
    };
    for bad in [
        serde_json::json!(0),
        serde_json::json!(2_000_000),
        serde_json::json!(-1),
        serde_json::json!("many"),
    ] {
        let response = patch(serde_json::json!({ "max_output_tokens": bad }))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let response = patch(serde_json::json!({ "max_output_tokens": null }))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["max_output_tokens"], serde_json::Value::Null);
    server.stop().await;
}
