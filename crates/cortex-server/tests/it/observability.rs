//! Observability (SPEC §20): every `/v1` request counted by endpoint, status class and code,
//! refused ones included; time to first token and upstream latency per provider.
//!
//! The metrics recorder is process-wide and other tests run beside these, so shared series are
//! compared as increases of at least the requests made here; per-provider series carry a
//! provider name only these tests use, and are compared exactly.

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{FakeUpstream, TestServer};
use futures_util::StreamExt;

use crate::{assert_error, chat_body};

const METRICS_TOKEN: &str = "metrics-token-0123456789";

async fn scrape(server: &TestServer) -> String {
    server
        .http()
        .get(server.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name{labels}` in a scrape (0 when absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn requests(endpoint: &str, status: &str, code: &str) -> String {
    format!(r#"gateway_requests_total{{endpoint="{endpoint}",status="{status}",code="{code}"}}"#)
}

#[tokio::test]
async fn refused_requests_are_counted_by_status_class_and_code() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("CORTEX_METRICS_TOKEN", METRICS_TOKEN)
        .provider("obs-live", &upstream.base_url(), None)
        // Nothing listens on port 9: every attempt fails to connect.
        .provider("obs-dead", "http://127.0.0.1:9/v1", None)
        .model("llama", &["obs-live"], 0.0, 0.0)
        .model("gone", &["obs-dead"], 0.0, 0.0)
        .start()
        .await;
    let limited = server
        .create_key(
            &Scope::ALL,
            None,
            KeyLimits {
                requests_per_second: Some(0.001),
                burst: Some(1),
                ..KeyLimits::default()
            },
        )
        .await;
    let key = server
        .create_key(&Scope::ALL, None, KeyLimits::default())
        .await;
    let before = scrape(&server).await;

    // 401 from authentication, on the embeddings door.
    let unauthenticated = server
        .http()
        .post(server.url("/v1/embeddings"))
        .json(&serde_json::json!({ "model": "llama", "input": "x" }))
        .send()
        .await
        .unwrap();
    assert_error(unauthenticated, 401, "missing_credentials").await;
    // 429 from the key's request rate: the first request passes, the second is refused.
    let post = |key: &str, model: &str| {
        server
            .http()
            .post(server.url("/v1/completions"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "model": model, "prompt": "x" }))
            .send()
    };
    assert_eq!(post(&limited, "llama").await.unwrap().status(), 200);
    assert_error(
        post(&limited, "llama").await.unwrap(),
        429,
        "rate_limit_exceeded",
    )
    .await;
    // 502: the model's only provider cannot be reached.
    assert_error(post(&key, "gone").await.unwrap(), 502, "upstream_error").await;
    // A /v1 path no door serves is counted too.
    let unknown = server
        .http()
        .get(server.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let after = scrape(&server).await;
    let increase = |series: &str| value(&after, series) - value(&before, series);
    for (series, at_least) in [
        (requests("embeddings", "4xx", "missing_credentials"), 1.0),
        (requests("completions", "2xx", "none"), 1.0),
        (requests("completions", "4xx", "rate_limit_exceeded"), 1.0),
        (requests("completions", "5xx", "upstream_error"), 1.0),
        (requests("other", "4xx", "not_found"), 1.0),
    ] {
        assert!(
            increase(&series) >= at_least,
            "{series}: {} → {}",
            value(&before, &series),
            value(&after, &series)
        );
    }
    // The refusals went nowhere else: no success was counted for the refused doors' codes.
    assert!(after.contains(r#"gateway_rate_limited_total{limit="requests"}"#));
    // The dead provider's attempts are in its own latency histogram (three: two retries).
    let dead = r#"gateway_upstream_duration_seconds_count{provider="obs-dead"}"#;
    assert_eq!(increase(dead), 3.0, "{dead}");
    server.stop().await;
}

#[tokio::test]
async fn time_to_first_token_counts_streams_per_provider() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("CORTEX_METRICS_TOKEN", METRICS_TOKEN)
        .provider("obs-ttft", &upstream.base_url(), None)
        .model("llama", &["obs-ttft"], 0.0, 0.0)
        .start()
        .await;
    let key = server
        .create_key(&Scope::ALL, None, KeyLimits::default())
        .await;
    let ttft = r#"gateway_time_to_first_token_seconds_count{provider="obs-ttft"}"#;
    let upstream_latency = r#"gateway_upstream_duration_seconds_count{provider="obs-ttft"}"#;
    let before = scrape(&server).await;
    assert_eq!(value(&before, ttft), 0.0, "registered at zero: {before}");
    assert!(
        before.lines().any(|line| line.starts_with(ttft)),
        "{before}"
    );

    for stream in [true, true, false] {
        let response = server
            .http()
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body("llama", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // The whole stream is read, so it has ended (and been counted) when this returns.
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
    }
    let after = scrape(&server).await;
    // Two streams, one time to first token each; the plain request has none.
    assert_eq!(value(&after, ttft), 2.0, "{after}");
    let sum = r#"gateway_time_to_first_token_seconds_sum{provider="obs-ttft"}"#;
    assert!(value(&after, sum) > 0.0);
    // Every request's upstream attempt is timed for its provider.
    assert_eq!(value(&after, upstream_latency), 3.0);
    // The usage rows keep each stream's time to first token; the plain answer has none.
    let store = server.state().store().clone();
    let filter = cortex_store::usage::UsageFilter {
        provider: Some("obs-ttft".into()),
        ..Default::default()
    };
    let rows = || store.list_usage(&cortex_store::Tenant::All, &filter, 10);
    assert!(
        cortex_testkit::eventually(std::time::Duration::from_secs(10), || async {
            rows().await.unwrap().len() == 3
        })
        .await
    );
    let rows = rows().await.unwrap();
    let mut ttfts: Vec<bool> = rows.iter().map(|r| r.ttft_ms.is_some()).collect();
    ttfts.sort();
    assert_eq!(ttfts, [false, true, true], "{rows:?}");
    for row in rows.iter().filter(|r| r.ttft_ms.is_some()) {
        assert!(row.ttft_ms <= Some(row.latency_ms), "{row:?}");
    }
    server.stop().await;
}

/// 2026-01-01T00:00:00Z.
const BASE: i64 = 1_767_225_600_000;
const HOUR: i64 = 3_600_000;

fn usage_row(n: i64, model: &str, provider: &str, at: i64) -> cortex_store::usage::UsageRecord {
    cortex_store::usage::UsageRecord {
        request_id: format!("req-obs-{n}"),
        key_id: "key-obs".into(),
        user_id: "user-obs".into(),
        model: model.into(),
        provider: provider.into(),
        endpoint: "chat".into(),
        prompt_tokens: n,
        completion_tokens: 2 * n,
        cost_usd: 0.01 * n as f64,
        latency_ms: 10 * n,
        status: 200,
        client_ip: "127.0.0.1".into(),
        created_at: at,
        attempts: 1,
        org_id: "default".into(),
        team_id: None,
        ttft_ms: None,
        cached: false,
    }
}

/// Known rows: ten `llama` requests on `obs-a` in the first hour (latency 10…100 ms, the first
/// four streams with TTFT 5, 10, 15, 20 ms), two `mistral` requests on `obs-b` in the second
/// (300 ms, and a 429 of 100 ms), one whose model name reads like a spreadsheet formula in the
/// third, and 4,500 more in the fourth so that the export spans several pages.
fn known_rows() -> Vec<cortex_store::usage::UsageRecord> {
    let mut rows: Vec<_> = (1..=10)
        .map(|n| cortex_store::usage::UsageRecord {
            ttft_ms: (n <= 4).then_some(5 * n),
            // Two answers from the response cache.
            cached: n >= 9,
            ..usage_row(n, "llama", "obs-a", BASE + n)
        })
        .collect();
    rows.push(usage_row(30, "mistral", "obs-b", BASE + HOUR + 1));
    rows.push(cortex_store::usage::UsageRecord {
        status: 429,
        ..usage_row(10, "mistral", "obs-b", BASE + HOUR + 2)
    });
    rows.push(usage_row(1, "=1+1", "obs-b", BASE + 2 * HOUR));
    for n in 0..4_500 {
        rows.push(usage_row(1, "bulk", "obs-c", BASE + 3 * HOUR + n));
    }
    rows
}

async fn series_and_csv_match_known_records(backend: cortex_store::Backend) {
    let server = TestServer::builder().backend(backend).start().await;
    let admin = crate::admin::admin(&server).await;
    let rows = known_rows();
    server.state().store().insert_usage(&rows).await.unwrap();
    let get = |path: String| {
        server
            .http()
            .get(server.url(&path))
            .bearer_auth(&admin.access_token)
            .send()
    };
    let from = "2026-01-01T00:00:00Z";
    let to = "2026-01-01T03:00:00Z";

    let series: serde_json::Value = get(format!(
        "/admin/usage/series?bucket=hour&group_by=model&from={from}&to={to}"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let data = series["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{series}");
    let llama = &data[0];
    assert_eq!(llama["time"], "2026-01-01T00:00:00Z");
    assert_eq!(llama["group"], "llama");
    assert_eq!(llama["requests"], 10);
    assert_eq!(llama["errors"], 0);
    assert_eq!(llama["streams"], 4);
    assert_eq!(llama["prompt_tokens"], 55);
    assert_eq!(llama["completion_tokens"], 110);
    assert!((llama["cost_usd"].as_f64().unwrap() - 0.55).abs() < 1e-9);
    assert_eq!(
        llama["latency_ms"],
        serde_json::json!({ "p50": 50, "p95": 100, "p99": 100 })
    );
    assert_eq!(
        llama["ttft_ms"],
        serde_json::json!({ "p50": 10, "p95": 20, "p99": 20 })
    );
    let mistral = &data[1];
    assert_eq!(mistral["time"], "2026-01-01T01:00:00Z");
    assert_eq!(
        (mistral["requests"].as_i64(), mistral["errors"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        mistral["latency_ms"],
        serde_json::json!({ "p50": 100, "p95": 300, "p99": 300 })
    );
    assert_eq!(
        mistral["ttft_ms"],
        serde_json::json!({ "p50": null, "p95": null, "p99": null })
    );
    assert_eq!(data[2]["group"], "=1+1");

    let by_provider: serde_json::Value = get(format!(
        "/admin/usage/series?bucket=day&group_by=provider&from={from}&to=2026-01-02T00:00:00Z"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let counts: Vec<(String, i64)> = by_provider["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["group"].as_str().unwrap().to_owned(),
                p["requests"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("obs-a".to_owned(), 10),
            ("obs-b".to_owned(), 3),
            ("obs-c".to_owned(), 4_500)
        ]
    );
    // A provider filter, and a range of more slots than a series may hold.
    let filtered: serde_json::Value = get(format!(
        "/admin/usage/series?provider=obs-a&from={from}&to={to}"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1, "{filtered}");
    assert_eq!(filtered["data"][0]["group"], "");
    assert_eq!(filtered["data"][0]["requests"], 10);
    assert_error(
        get(format!(
            "/admin/usage/series?bucket=hour&from=2020-01-01T00:00:00Z&to={to}"
        ))
        .await
        .unwrap(),
        400,
        "invalid_request",
    )
    .await;

    // The CSV: every row, oldest first, across the export's pages.
    let response =
        get("/admin/usage/export?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z".into())
            .await
            .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert!(response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "created_at,request_id,org_id,team_id,key_id,user_id,model,provider,endpoint,status,prompt_tokens,completion_tokens,cost_usd,latency_ms,ttft_ms,attempts,client_ip,cached"
    );
    assert_eq!(lines.len(), 1 + rows.len());
    assert_eq!(
        lines[1],
        "2026-01-01T00:00:00.001Z,req-obs-1,default,,key-obs,user-obs,llama,obs-a,chat,200,1,2,0.01,10,5,1,127.0.0.1,false"
    );
    let cells: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
    for (cells, row) in cells.iter().zip(&rows) {
        assert_eq!(cells[1], row.request_id);
        assert_eq!(cells[9], row.status.to_string());
        assert_eq!(cells[13], row.latency_ms.to_string());
        assert_eq!(cells[17], row.cached.to_string());
        assert_eq!(
            cells[14],
            row.ttft_ms.map(|t| t.to_string()).unwrap_or_default()
        );
        let cost: f64 = cells[12].parse().unwrap();
        assert!((cost - row.cost_usd).abs() < 1e-12);
    }
    // The formula-like model name is written so that a spreadsheet shows it as text.
    assert_eq!(cells[12][6], "'=1+1");
    server.stop().await;
}

#[tokio::test]
async fn series_and_csv_match_known_records_on_sqlite() {
    series_and_csv_match_known_records(cortex_store::Backend::Sqlite).await;
}

#[tokio::test]
async fn series_and_csv_match_known_records_on_postgres() {
    series_and_csv_match_known_records(cortex_store::Backend::Postgres).await;
}
