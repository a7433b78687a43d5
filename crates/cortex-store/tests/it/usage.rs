use cortex_store::usage::{
    Percentiles, SeriesBucket, SeriesGroup, SpendOf, UsageCursor, UsageFilter, UsageGrouping,
    UsageRecord,
};
use cortex_store::Store;
use cortex_store::Tenant;

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
        ttft_ms: None,
        cached: false,
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
            ttft_ms: (i % 3 == 0).then_some(i),
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
    odd.cached = true;
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

const HOUR: i64 = 3_600_000;

/// Rows with known latencies and times to first token: in the first hour, 100 `llama` requests
/// on `p1` with latencies 1 to 100 ms (every tenth a 500, every second a stream whose TTFT is
/// its latency) and 3 `mistral` requests on `p2` (10, 20, 30 ms, not streamed); two hours later
/// one `llama` stream (7 ms, TTFT 3 ms); and one row of another organization in the first hour.
fn analytics_rows(base: i64) -> Vec<UsageRecord> {
    let mut rows: Vec<UsageRecord> = (1..=100)
        .map(|i| UsageRecord {
            latency_ms: i,
            ttft_ms: (i % 2 == 0).then_some(i),
            status: if i % 10 == 0 { 500 } else { 200 },
            completion_tokens: 2 * i,
            provider: "p1".into(),
            ..record("k1", "llama", base + i, i, 0.001 * i as f64)
        })
        .collect();
    for (n, latency) in [10, 20, 30].into_iter().enumerate() {
        rows.push(UsageRecord {
            latency_ms: latency,
            provider: "p2".into(),
            ..record("k2", "mistral", base + 200 + n as i64, 1, 0.5)
        });
    }
    rows.push(UsageRecord {
        latency_ms: 7,
        ttft_ms: Some(3),
        ..record("k1", "llama", base + 2 * HOUR + 5, 4, 0.25)
    });
    rows.push(UsageRecord {
        org_id: "acme".into(),
        ..record("k9", "llama", base + 300, 1000, 100.0)
    });
    rows
}

fn percentiles(p50: i64, p95: i64, p99: i64) -> Percentiles {
    Percentiles {
        p50: Some(p50),
        p95: Some(p95),
        p99: Some(p99),
    }
}

async fn series_percentiles_and_export_pages(store: Store) {
    let base = 20_000 * DAY;
    let rows = analytics_rows(base);
    store.insert_usage(&rows).await.unwrap();
    let default = Tenant::Org("default".into());

    let by_model = store
        .usage_series(
            &default,
            &UsageFilter::default(),
            SeriesBucket::Hour,
            SeriesGroup::Model,
        )
        .await
        .unwrap();
    assert_eq!(by_model.len(), 3, "{by_model:?}");
    let llama = &by_model[0];
    assert_eq!((llama.slot_start, llama.group.as_str()), (base, "llama"));
    assert_eq!(llama.requests, 100);
    assert_eq!(llama.errors, 10);
    assert_eq!(llama.prompt_tokens, 5050);
    assert_eq!(llama.completion_tokens, 10100);
    assert!((llama.cost_usd - 5.05).abs() < 1e-9, "{}", llama.cost_usd);
    // Nearest rank over 1..=100: the 50th, 95th and 99th values.
    assert_eq!(llama.latency_ms, percentiles(50, 95, 99));
    // Over the 50 streams (TTFT 2, 4, … 100): the 25th, 48th and 50th values.
    assert_eq!(llama.streams, 50);
    assert_eq!(llama.ttft_ms, percentiles(50, 96, 100));
    let mistral = &by_model[1];
    assert_eq!(
        (mistral.slot_start, mistral.group.as_str()),
        (base, "mistral")
    );
    assert_eq!(mistral.requests, 3);
    assert_eq!(mistral.errors, 0);
    assert_eq!(mistral.latency_ms, percentiles(20, 30, 30));
    assert_eq!(mistral.ttft_ms, Percentiles::default(), "no streams");
    assert_eq!(mistral.streams, 0);
    let later = &by_model[2];
    assert_eq!(
        (later.slot_start, later.group.as_str()),
        (base + 2 * HOUR, "llama")
    );
    assert_eq!(later.latency_ms, percentiles(7, 7, 7));
    assert_eq!(later.ttft_ms, percentiles(3, 3, 3));

    // By day and provider: the organization's rows of both hours in one slot.
    let by_provider = store
        .usage_series(
            &default,
            &UsageFilter::default(),
            SeriesBucket::Day,
            SeriesGroup::Provider,
        )
        .await
        .unwrap();
    let summary: Vec<(i64, &str, i64)> = by_provider
        .iter()
        .map(|p| (p.slot_start, p.group.as_str(), p.requests))
        .collect();
    assert_eq!(
        summary,
        [(base, "p", 1), (base, "p1", 100), (base, "p2", 3)]
    );

    // The organization's filter, the provider filter and another organization's view.
    let totals = store
        .usage_series(
            &default,
            &UsageFilter {
                provider: Some("p2".into()),
                ..UsageFilter::default()
            },
            SeriesBucket::Hour,
            SeriesGroup::Total,
        )
        .await
        .unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!((totals[0].group.as_str(), totals[0].requests), ("", 3));
    let acme = store
        .usage_series(
            &Tenant::Org("acme".into()),
            &UsageFilter::default(),
            SeriesBucket::Hour,
            SeriesGroup::Org,
        )
        .await
        .unwrap();
    assert_eq!(acme.len(), 1);
    assert_eq!((acme[0].group.as_str(), acme[0].requests), ("acme", 1));
    assert_eq!(acme[0].prompt_tokens, 1000);

    // Export pages: oldest first, every row of the organization once, in pages of 40.
    let mut exported = Vec::new();
    let mut cursor = UsageCursor::START;
    let mut pages = 0;
    loop {
        let (page, next) = store
            .usage_page(&default, &UsageFilter::default(), cursor, 40)
            .await
            .unwrap();
        assert!(page.len() <= 40);
        pages += 1;
        exported.extend(page);
        match next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<UsageRecord> =
        rows.into_iter().filter(|r| r.org_id == "default").collect();
    expected.sort_by_key(|r| r.created_at);
    assert_eq!(exported.len(), 104);
    assert_eq!(exported, expected);
    // A page of another organization holds none of these.
    let (other, _) = store
        .usage_page(
            &Tenant::Org("acme".into()),
            &UsageFilter::default(),
            UsageCursor::START,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].key_id, "k9");
}

on_both_backends!(series_percentiles_and_export_pages);
