use cortex_store::usage::{SpendOf, UsageFilter, UsageGrouping, UsageRecord};
use cortex_store::Store;

use crate::on_both_backends;

const DAY: i64 = 86_400_000;

fn record(key: &str, model: &str, at: i64, prompt: i64, cost: f64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{key}-{at}"),
        key_id: key.into(),
        user_id: format!("owner-of-{key}"),
        model: model.into(),
        provider: "p".into(),
        endpoint: "chat".into(),
        prompt_tokens: prompt,
        completion_tokens: 2 * prompt,
        cost_usd: cost,
        latency_ms: 5,
        status: 200,
        client_ip: "127.0.0.1".into(),
        created_at: at,
        attempts: 1,
        org_id: "default".into(),
        team_id: None,
    }
}

async fn usage_summaries_and_purge(store: Store) {
    let base = 20_000 * DAY;
    store
        .insert_usage(&[
            record("k1", "llama", base + 10, 10, 0.5),
            record("k1", "llama", base + DAY + 10, 20, 0.25),
            record("k2", "mistral", base + DAY + 20, 5, 0.125),
        ])
        .await
        .unwrap();
    let all = store
        .list_usage(&cortex_store::Tenant::All, &UsageFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].created_at, base + DAY + 20, "newest first");

    let by_day = store
        .usage_summary(
            &cortex_store::Tenant::All,
            &UsageFilter::default(),
            UsageGrouping::Day,
        )
        .await
        .unwrap();
    assert_eq!(by_day.len(), 2);
    assert_eq!(by_day[0].group, "2024-10-04");
    assert_eq!(by_day[1].requests, 2);
    assert_eq!(by_day[1].prompt_tokens, 25);
    assert_eq!(by_day[1].completion_tokens, 50);

    let k1 = UsageFilter {
        key_id: Some("k1".into()),
        ..UsageFilter::default()
    };
    let by_model = store
        .usage_summary(&cortex_store::Tenant::All, &k1, UsageGrouping::Model)
        .await
        .unwrap();
    assert_eq!(by_model.len(), 1);
    assert!((by_model[0].cost_usd - 0.75).abs() < 1e-9);

    // What budget counters are rebuilt from: a key's spend from a moment on.
    let k1_all = store.spend_since(SpendOf::Key("k1"), 0).await.unwrap();
    assert!((k1_all - 0.75).abs() < 1e-9, "{k1_all}");
    let k1_late = store
        .spend_since(SpendOf::Key("k1"), base + DAY)
        .await
        .unwrap();
    assert!((k1_late - 0.25).abs() < 1e-9, "{k1_late}");
    let k2 = store.spend_since(SpendOf::Key("k2"), 0).await.unwrap();
    assert!((k2 - 0.125).abs() < 1e-9, "{k2}");

    assert_eq!(store.purge_usage_before(base + DAY).await.unwrap(), 1);
    assert_eq!(
        store
            .list_usage(&cortex_store::Tenant::All, &UsageFilter::default(), 100)
            .await
            .unwrap()
            .len(),
        2
    );
}

on_both_backends!(usage_summaries_and_purge);

async fn large_batches_span_several_statements(store: Store) {
    // 1,100 = 2 × 512 + 64 + 8 + 4 × 1: every SQLite statement shape, each row once. Attempts
    // vary, so a column out of step with its placeholder would show in the comparison below.
    let records: Vec<UsageRecord> = (0..1_100)
        .map(|i| UsageRecord {
            attempts: i % 4 + 1,
            org_id: "default".into(),
            team_id: None,
            ..record("bulk", "llama", 1_000 + i, i + 1, 0.001)
        })
        .collect();
    store.insert_usage(&records).await.unwrap();
    let summary = store
        .usage_summary(
            &cortex_store::Tenant::All,
            &UsageFilter {
                key_id: Some("bulk".into()),
                ..UsageFilter::default()
            },
            UsageGrouping::Key,
        )
        .await
        .unwrap();
    assert_eq!(summary[0].requests, 1_100);
    assert_eq!(summary[0].prompt_tokens, 1_100 * 1_101 / 2);
    let mut stored = store
        .list_usage(&cortex_store::Tenant::All, &UsageFilter::default(), 10_000)
        .await
        .unwrap();
    stored.sort_by_key(|r| r.created_at);
    assert_eq!(stored, records);
}

on_both_backends!(large_batches_span_several_statements);

/// Every field comes back exactly as written, whatever the batch encoding: quotes, backslashes,
/// non-ASCII and an IPv6 address in the strings, fractional costs, zero and large integers.
async fn usage_rows_round_trip_every_field(store: Store) {
    let mut odd = record(
        "k\"ey\\1",
        "mod\u{e8}le/\u{1f980}",
        1_700_000_000_123,
        0,
        0.000_012_5,
    );
    odd.client_ip = "2001:db8::1".into();
    odd.status = 499;
    odd.latency_ms = 0;
    odd.attempts = 3;
    let mut big = record(
        "k2",
        "llama",
        1_700_000_000_124,
        i64::from(u32::MAX),
        1234.5,
    );
    big.request_id = "req_0123456789abcdef".into();
    store
        .insert_usage(&[odd.clone(), big.clone()])
        .await
        .unwrap();
    let mut back = store
        .list_usage(&cortex_store::Tenant::All, &UsageFilter::default(), 10)
        .await
        .unwrap();
    back.reverse();
    assert_eq!(back, vec![odd, big]);
}

on_both_backends!(usage_rows_round_trip_every_field);

async fn page_size(store: &Store) -> i64 {
    use sqlx::Row;
    sqlx::query("PRAGMA page_size")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

/// New SQLite databases get 16 KiB pages (a quarter of the WAL frames, and so of the `pwrite`
/// calls, per usage row); a database made with SQLite's default 4 KiB pages keeps them, since
/// a WAL database cannot change its page size, and works as before.
#[tokio::test]
async fn new_sqlite_databases_use_16_kib_pages_and_old_ones_keep_theirs() {
    let fresh = cortex_store::testing::TestDb::sqlite();
    let store = Store::open(&fresh.url).await.unwrap();
    assert_eq!(page_size(&store).await, 16_384);

    let old = cortex_store::testing::TestDb::sqlite();
    {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::SqliteConnection::connect(&old.url).await.unwrap();
        conn.execute("PRAGMA journal_mode = WAL").await.unwrap();
        conn.execute("CREATE TABLE made_before (x INTEGER)")
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = Store::open(&old.url).await.unwrap();
    assert_eq!(page_size(&store).await, 4_096);
    let rows: Vec<UsageRecord> = (0..600)
        .map(|i| record("k1", "llama", 20_000 * DAY + i, 1, 0.0))
        .collect();
    store.insert_usage(&rows).await.unwrap();
    assert_eq!(
        store
            .list_usage(&cortex_store::Tenant::All, &UsageFilter::default(), 1_000)
            .await
            .unwrap()
            .len(),
        600
    );
}
