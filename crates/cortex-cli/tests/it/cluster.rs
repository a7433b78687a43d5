//! Scale-out (SPEC §2): three `cortex serve` processes on one PostgreSQL and one Redis behave as
//! one gateway, and survive the faults an operator meets: Redis and PostgreSQL restarts, an
//! instance killed with SIGKILL, and SIGTERM while streams run.
//!
//! Each test has a Redis of its own (and, where it restarts one, a PostgreSQL of its own), so a
//! restart here cannot disturb other tests running at the same time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_testkit::{eventually, FakeUpstream, TempPostgres, TempRedis, TestDb};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::process::{run, ADMIN_PASSWORD};
use crate::CortexProcess;

/// Every instance of a deployment shares the master key (a clearly fake fixture).
const MASTER_KEY: &str = "4f1c2b3a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7a8";

pub(crate) struct Cluster {
    nodes: Vec<Option<CortexProcess>>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    upstream: FakeUpstream,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts `n` instances one after the other (the first migrates and bootstraps).
    pub(crate) async fn start(
        n: usize,
        database_url: &str,
        redis_url: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let upstream = FakeUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cortex.toml");
        std::fs::write(
            &config,
            format!(
                "[[providers]]\nname = \"fake\"\nbase_url = \"{}\"\n\n[[models]]\nname = \"llama\"\nprovider = \"fake\"\ninput_price_per_mtok = 1.0\noutput_price_per_mtok = 2.0\n",
                upstream.base_url()
            ),
        )
        .unwrap();
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", database_url),
            ("REDIS_URL", redis_url),
            ("CORTEX_MASTER_KEY", MASTER_KEY),
            ("CORTEX_CONFIG", config.to_str().unwrap()),
            // Generous defaults; the limit under test is a per-key override.
            ("RATE_LIMIT_RPS", "1000"),
            ("RATE_LIMIT_BURST", "1000"),
            ("CORTEX_SHUTDOWN_GRACE_SEC", "20"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (k, v) in extra {
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            env,
            dir,
            upstream,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        for i in 0..n {
            let node = cluster.spawn_node(i);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    fn spawn_node(&self, i: usize) -> CortexProcess {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        CortexProcess::start(&self.dir.path().join(format!("node{i}")), &env)
    }

    fn node(&self, i: usize) -> &CortexProcess {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub(crate) fn url(&self, i: usize, path: &str) -> String {
        self.node(i).url(path)
    }

    fn take(&mut self, i: usize) -> CortexProcess {
        self.nodes[i].take().expect("node is running")
    }

    pub(crate) fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Logs in as the first admin through node `i`: (access token, refresh token).
    async fn login(&self, i: usize) -> (String, String) {
        let response = self
            .http
            .post(self.url(i, "/admin/auth/login"))
            .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        (
            body["access_token"].as_str().unwrap().to_owned(),
            body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    /// `GET path` on node `i`'s admin API with `token`; the JSON answer.
    async fn admin_get(&self, i: usize, token: &str, path: &str) -> Value {
        self.http
            .get(self.url(i, path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates a key through node `i`'s admin API: (id, full key).
    async fn create_key(&self, i: usize, token: &str, body: Value) -> (String, String) {
        let response = self
            .http
            .post(self.url(i, "/admin/keys"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        (
            body["id"].as_str().unwrap().to_owned(),
            body["key"].as_str().unwrap().to_owned(),
        )
    }

    pub(crate) async fn models_status(&self, i: usize, key: &str) -> u16 {
        self.http
            .get(self.url(i, "/v1/models"))
            .bearer_auth(key)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Waits until every running node accepts `key`.
    pub(crate) async fn until_accepted_everywhere(&self, key: &str) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_some() {
                assert!(
                    eventually(Duration::from_secs(5), || async {
                        self.models_status(i, key).await == 200
                    })
                    .await,
                    "node {i} never accepted the key"
                );
            }
        }
    }

    /// A chat completion for model `llama` through node `i`, streamed or not.
    async fn chat(&self, i: usize, key: &str, stream: bool) -> reqwest::Response {
        self.http
            .post(self.url(i, "/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({ "model": "llama", "stream": stream, "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .unwrap()
    }

    /// Opens a streamed chat through node `i` and waits for its first chunk.
    async fn open_stream(&self, i: usize, key: &str) -> reqwest::Response {
        let mut response = self.chat(i, key, true).await;
        assert_eq!(response.status(), 200, "stream through node {i}");
        let first = response.chunk().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: "), "{first:?}");
        response
    }

    /// Sends `total` requests at once, spread over the running nodes; returns (admitted, elapsed).
    pub(crate) async fn burst(&self, key: &str, total: usize) -> (usize, Duration) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        let started = Instant::now();
        let requests = (0..total).map(|n| {
            let url = self.url(running[n % running.len()], "/v1/models");
            let request = self.http.get(url).bearer_auth(key);
            async move { request.send().await.unwrap().status().as_u16() }
        });
        let statuses = futures_util::future::join_all(requests).await;
        let elapsed = started.elapsed();
        for status in &statuses {
            assert!(
                *status == 200 || *status == 429,
                "unexpected status {status}"
            );
        }
        (statuses.iter().filter(|s| **s == 200).count(), elapsed)
    }

    /// Runs a `cortex` subcommand against the cluster's database.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        run(&self.dir.path().join("cli"), args, &self.env())
    }

    fn audit_verify(&self) -> String {
        let output = self.cli(&["audit", "verify"]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "audit verify failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

/// Reads a stream to its end and returns everything it carried.
async fn read_to_end(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(body).unwrap()
}

fn limited_key_body(name: &str, rps: u32, burst: u32, streams: u32) -> Value {
    json!({
        "name": name,
        "scopes": ["chat"],
        "limits": { "requests_per_second": rps, "burst": burst, "max_concurrent_streams": streams },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_keys_sessions_limits_and_one_audit_chain() {
    let db = TestDb::postgres().await;
    let redis = TempRedis::start();
    let cluster = Cluster::start(3, &db.url, &redis.url(), &[]).await;
    let (a, b, c) = (0, 1, 2);
    let (token_a, refresh_a) = cluster.login(a).await;

    // A key revoked through A is refused by B and C within one second.
    let (id, key) = cluster
        .create_key(
            a,
            &token_a,
            json!({ "name": "revoke-me", "scopes": ["chat"] }),
        )
        .await;
    cluster.until_accepted_everywhere(&key).await;
    let revoked = cluster
        .http
        .delete(cluster.url(a, &format!("/admin/keys/{id}")))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let started = Instant::now();
    for node in [b, c] {
        assert!(
            eventually(Duration::from_secs(3), || async {
                cluster.models_status(node, &key).await == 401
            })
            .await
        );
    }
    let seen_after = started.elapsed();
    assert!(
        seen_after < Duration::from_secs(1),
        "B and C refused the revoked key only after {seen_after:?}"
    );
    eprintln!("revocation through A refused by B and C after {seen_after:?}");

    // One global limit: a key allowed 5/s with bursts of 5, hit through all three instances
    // at once, is admitted at most 10 times in a second (5 of burst, 5 of refill).
    let (_, limited) = cluster
        .create_key(a, &token_a, limited_key_body("limited", 5, 5, 5))
        .await;
    cluster.until_accepted_everywhere(&limited).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the bucket refill fully
    let (admitted, elapsed) = cluster.burst(&limited, 90).await;
    assert!(
        elapsed < Duration::from_secs(1),
        "the burst took {elapsed:?}"
    );
    assert!(
        (5..=10).contains(&admitted),
        "admitted {admitted} of 90 across three instances"
    );

    // A login on A refreshes on B; presenting the used refresh token again on C kills the
    // family everywhere: the newest refresh token and the session's access token stop working.
    let refreshed = cluster
        .http
        .post(cluster.url(b, "/admin/auth/refresh"))
        .json(&json!({ "refresh_token": refresh_a }))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let refreshed: Value = refreshed.json().await.unwrap();
    let newest_refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    let newest_access = refreshed["access_token"].as_str().unwrap().to_owned();
    let me = |node: usize, token: String| {
        let request = cluster
            .http
            .get(cluster.url(node, "/admin/me"))
            .bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(me(c, newest_access.clone()).await, 200);
    let reused = cluster
        .http
        .post(cluster.url(c, "/admin/auth/refresh"))
        .json(&json!({ "refresh_token": refresh_a }))
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 401);
    let newest = cluster
        .http
        .post(cluster.url(a, "/admin/auth/refresh"))
        .json(&json!({ "refresh_token": newest_refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        newest.status(),
        401,
        "the family's newest token must die too"
    );
    for node in [a, b, c] {
        assert_eq!(
            me(node, newest_access.clone()).await,
            401,
            "node {node} still honours the killed session"
        );
    }

    // Concurrent admin changes through all three instances leave one chain that verifies.
    let mut tokens = Vec::new();
    for node in [a, b, c] {
        tokens.push(cluster.login(node).await.0);
    }
    let changes = (0..30).map(|n| {
        let node = n % 3;
        let request = cluster
            .http
            .post(cluster.url(node, "/admin/keys"))
            .bearer_auth(&tokens[node])
            .json(&json!({ "name": format!("concurrent-{n}"), "scopes": ["chat"] }));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(changes).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let report = cluster.audit_verify();
    assert!(report.starts_with("ok: "), "{report}");
    let verify: Value = cluster
        .admin_get(b, &tokens[b], "/admin/audit/verify")
        .await;
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(verify["first_bad_seq"].is_null());
    let created: Value = cluster
        .admin_get(c, &tokens[c], "/admin/audit?action=key.create")
        .await;
    let concurrent = created["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["details"].to_string().contains("concurrent-"))
        .count();
    assert_eq!(concurrent, 30, "every concurrent change is on the chain");

    drop(cluster);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_recover_from_redis_and_postgres_restarts_without_a_restart_of_their_own() {
    let mut postgres = TempPostgres::start();
    let mut redis = TempRedis::start();
    let cluster = Cluster::start(3, &postgres.url(), &redis.url(), &[]).await;
    let (token, _) = cluster.login(0).await;
    let (key_id, limited) = cluster
        .create_key(0, &token, limited_key_body("limited", 5, 5, 5))
        .await;
    cluster.until_accepted_everywhere(&limited).await;

    // Redis goes away: the default fail-open keeps serving from each instance's own limiter.
    redis.stop();
    for node in 0..3 {
        assert!(
            eventually(Duration::from_secs(10), || async {
                cluster.models_status(node, &limited).await == 200
            })
            .await,
            "node {node} stopped serving while Redis was down"
        );
    }
    // Redis comes back (empty): the instances return to the one global limit by themselves.
    redis.restart();
    let mut global_again = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1100)).await; // a full bucket each try
        let (admitted, elapsed) = cluster.burst(&limited, 60).await;
        // Per-instance fallbacks would admit at least 3 x 5; the shared bucket at most 10.
        if elapsed < Duration::from_secs(1) && admitted <= 10 {
            global_again = true;
            break;
        }
    }
    assert!(
        global_again,
        "the global limit never came back after Redis restarted"
    );

    // PostgreSQL restarts. Meanwhile readiness says so, the data plane keeps serving keys it
    // holds in memory, and the usage of those requests is written once the database is back.
    let (_, chatty) = cluster
        .create_key(0, &token, json!({ "name": "chatty", "scopes": ["chat"] }))
        .await;
    cluster.until_accepted_everywhere(&chatty).await;
    postgres.stop();
    for node in 0..3 {
        let url = cluster.url(node, "/readyz");
        assert!(
            eventually(Duration::from_secs(10), || async {
                cluster.http.get(&url).send().await.unwrap().status() == 503
            })
            .await,
            "node {node} claims readiness without its database"
        );
    }
    let mut outage_requests = Vec::new();
    for n in 0..6 {
        let response = cluster.chat(n % 3, &chatty, false).await;
        assert_eq!(response.status(), 200, "the data plane needs no database");
        outage_requests.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    // The admin API needs the database: it answers 503 (OpenAI-shaped), never a 500.
    let login = cluster
        .http
        .post(cluster.url(0, "/admin/auth/login"))
        .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 503);
    let body: Value = login.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // Keep the database away until every instance has failed to write that usage at least
    // once, so what follows shows a failed write being retried rather than a lucky first try.
    for node in 0..3 {
        assert!(
            eventually(Duration::from_secs(40), || async {
                cluster
                    .node(node)
                    .log_text()
                    .contains("writing usage failed")
            })
            .await,
            "node {node} never tried to write usage during the outage"
        );
    }
    postgres.restart();
    for node in 0..3 {
        let url = cluster.url(node, "/readyz");
        assert!(
            eventually(Duration::from_secs(20), || async {
                cluster.http.get(&url).send().await.unwrap().status() == 200
            })
            .await,
            "node {node} did not recover from the database restart"
        );
    }
    let (token, _) = cluster.login(2).await;
    let recorded = eventually(Duration::from_secs(20), || async {
        let usage: Value = cluster.admin_get(1, &token, "/admin/usage").await;
        let ids: Vec<&str> = usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["request_id"].as_str())
            .collect();
        outage_requests.iter().all(|id| ids.contains(&id.as_str()))
    })
    .await;
    assert!(recorded, "usage made during the database outage was lost");

    // Revocation still reaches every instance after both restarts.
    let revoked = cluster
        .http
        .delete(cluster.url(2, &format!("/admin/keys/{key_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    for node in 0..3 {
        assert!(
            eventually(Duration::from_secs(3), || async {
                cluster.models_status(node, &limited).await == 401
            })
            .await
        );
    }
    cluster.audit_verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_committed_audit_event_and_stream_slots_expire_with_their_lease() {
    let db = TestDb::postgres().await;
    let redis = TempRedis::start();
    let lease = Duration::from_secs(3);
    let mut cluster = Cluster::start(
        2,
        &db.url,
        &redis.url(),
        &[("CORTEX_STREAM_LEASE_SEC", "3")],
    )
    .await;
    let (token, _) = cluster.login(0).await;
    let (_, key) = cluster
        .create_key(0, &token, limited_key_body("streamer", 1000, 1000, 2))
        .await;
    cluster.until_accepted_everywhere(&key).await;

    // Node 0 holds both of the key's stream slots when it dies.
    cluster.upstream.hold_streams(true);
    let held = [
        cluster.open_stream(0, &key).await,
        cluster.open_stream(0, &key).await,
    ];
    let refused = cluster.chat(1, &key, true).await;
    assert_eq!(refused.status(), 429, "the slots are shared");

    // Admin changes stream into node 0 while it is killed mid-traffic.
    let url = cluster.url(0, "/admin/keys");
    // How many creations node 0 has answered 201 so far: the kill waits for five, since an
    // event committed (and seen by node 1) may not have had its answer delivered yet.
    let answered = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (http, token, answered) = (cluster.http.clone(), token.clone(), answered.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                let sent = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "name": format!("before-kill-{n}"), "scopes": ["chat"] }))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 201 => {
                        let body: Value = response.json().await.unwrap();
                        acknowledged.push(body["id"].as_str().unwrap().to_owned());
                        answered.store(acknowledged.len(), Ordering::SeqCst);
                    }
                    _ => break, // the instance is gone
                }
            }
            acknowledged
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            let body = cluster
                .admin_get(1, &token, "/admin/audit?action=key.create")
                .await;
            body["data"].to_string().matches("before-kill-").count() >= 5
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            answered.load(Ordering::SeqCst) >= 5
        })
        .await
    );
    cluster.take(0).kill_hard();
    let killed_at = Instant::now();
    drop(held);
    let acknowledged = writer.await.unwrap();
    assert!(acknowledged.len() >= 5, "{acknowledged:?}");

    // Every change node 0 acknowledged is on the chain, and the chain verifies.
    let (token, _) = cluster.login(1).await;
    let events: Value = cluster
        .admin_get(1, &token, "/admin/audit?action=key.create&limit=1000")
        .await;
    let targets: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["target"].as_str())
        .collect();
    for id in &acknowledged {
        assert!(
            targets.contains(&id.as_str()),
            "acknowledged {id} is missing"
        );
    }
    cluster.audit_verify();

    // The dead instance's slots free themselves when their lease runs out, not later.
    cluster.upstream.hold_streams(false);
    let freed = eventually(lease + Duration::from_secs(3), || async {
        let response = cluster.chat(1, &key, true).await;
        let ok = response.status() == 200;
        drop(response);
        ok
    })
    .await;
    let freed_after = killed_at.elapsed();
    assert!(freed, "the dead instance's stream slots were never freed");
    assert!(
        freed_after <= lease + Duration::from_millis(1500),
        "slots held {freed_after:?}, past their {lease:?} lease"
    );
    eprintln!("stream slots of the killed instance freed after {freed_after:?}");
    drop(cluster);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_running_streams_and_records_their_usage() {
    let db = TestDb::postgres().await;
    let redis = TempRedis::start();
    let mut cluster = Cluster::start(2, &db.url, &redis.url(), &[]).await;
    let (token, _) = cluster.login(1).await;
    let (key_id, key) = cluster
        .create_key(1, &token, json!({ "name": "drain", "scopes": ["chat"] }))
        .await;
    cluster.until_accepted_everywhere(&key).await;

    cluster.upstream.hold_streams(true);
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(cluster.open_stream(0, &key).await);
    }
    let request_ids: Vec<String> = streams
        .iter()
        .map(|s| s.headers()["x-request-id"].to_str().unwrap().to_owned())
        .collect();
    let draining = cluster.take(0);
    let addr = draining.addr.clone();
    draining.send_sigterm();
    // Draining: no new connections are taken...
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(&addr).await.is_err()
        })
        .await,
        "a draining instance still accepts connections"
    );
    // ...while the streams already running finish whole.
    cluster.upstream.hold_streams(false);
    for stream in streams {
        let body = read_to_end(stream).await;
        assert!(body.contains("\"usage\""), "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    }
    let status = tokio::task::spawn_blocking(move || draining.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    // Their usage was written before the instance exited; the other instance shows it.
    let usage: Value = cluster
        .admin_get(1, &token, &format!("/admin/usage?key={key_id}"))
        .await;
    let rows = usage["data"].as_array().unwrap();
    for id in &request_ids {
        let row = rows
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no usage for drained stream {id}: {usage}"));
        assert_eq!(row["status"], 200, "{row}");
        assert!(row["completion_tokens"].as_i64().unwrap() > 0, "{row}");
    }
    drop(cluster);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_on_a_fresh_database_all_come_up() {
    // A rollout starts every replica at once: they race to migrate, create the first admin and
    // store the providers and models declared in cortex.toml. Every one must come up.
    let upstream = FakeUpstream::start().await;
    for round in 0..3 {
        let db = TestDb::postgres().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cortex.toml");
        std::fs::write(
            &config,
            format!(
                "[[providers]]\nname = \"a\"\nbase_url = \"{0}\"\n\n[[providers]]\nname = \"b\"\nbase_url = \"{0}\"\napi_key = \"fake-provider-key\"\n\n[[models]]\nname = \"llama\"\nproviders = [\"a\", \"b\"]\n",
                upstream.base_url()
            ),
        )
        .unwrap();
        let env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("CORTEX_MASTER_KEY".into(), MASTER_KEY.into()),
            ("CORTEX_CONFIG".into(), config.display().to_string()),
        ];
        let starters: Vec<_> = (0..3)
            .map(|i| {
                let data = dir.path().join(format!("node{i}"));
                let env = env.clone();
                std::thread::spawn(move || {
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    CortexProcess::start(&data, &env)
                })
            })
            .collect();
        let nodes: Vec<CortexProcess> = starters
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| panic!("round {round}: an instance failed to start"))
            })
            .collect();
        for node in &nodes {
            let ready = reqwest::get(node.url("/readyz")).await.unwrap();
            assert_eq!(ready.status(), 200);
        }
        drop(nodes);
        db.cleanup().await;
    }
}

/// Issue 24, item 4, across processes: disabling a user through one instance stops their keys
/// there at once and on the other within a second (Redis announcement, poll as fallback);
/// enabling them again revives only the keys that were not revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabling_a_user_stops_their_keys_on_every_instance_and_enabling_revives_no_revoked_key() {
    let db = TestDb::postgres().await;
    let redis = TempRedis::start();
    let cluster = Cluster::start(2, &db.url, &redis.url(), &[]).await;
    let (token, _) = cluster.login(0).await;
    let created = cluster
        .http
        .post(cluster.url(0, "/admin/users"))
        .bearer_auth(&token)
        .json(&json!({ "username": "dana", "password": ADMIN_PASSWORD, "role": "developer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let dana = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let make_key = |name: &str| {
        let output = cluster.cli(&["keys", "create", "--name", name, "--owner", "dana"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let kept = make_key("kept");
    let revoked = make_key("revoked");
    cluster.until_accepted_everywhere(&kept).await;
    cluster.until_accepted_everywhere(&revoked).await;
    let listed =
        String::from_utf8(cluster.cli(&["keys", "list", "--owner", "dana"]).stdout).unwrap();
    // Lines: id, prefix, status, scopes, name, created.
    let revoked_id = listed
        .lines()
        .map(|line| line.split('\t').collect::<Vec<_>>())
        .find(|fields| fields.get(4) == Some(&"revoked"))
        .map(|fields| fields[0].to_owned())
        .unwrap();
    assert!(cluster
        .cli(&["keys", "revoke", &revoked_id])
        .status
        .success());

    let set_disabled = |disabled: bool| {
        cluster
            .http
            .patch(cluster.url(0, &format!("/admin/users/{dana}")))
            .bearer_auth(&token)
            .json(&json!({ "disabled": disabled }))
            .send()
    };
    assert_eq!(set_disabled(true).await.unwrap().status(), 200);
    assert_eq!(
        cluster.models_status(0, &kept).await,
        401,
        "at once where it was disabled"
    );
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async {
            cluster.models_status(1, &kept).await == 401
        })
        .await,
        "the other instance still serves a disabled user's key"
    );
    let seen_after = started.elapsed();
    assert!(
        seen_after < Duration::from_secs(1),
        "the other instance suspended the key only after {seen_after:?}"
    );
    // The command line is the local operator and may rotate anyone's key, but not a revoked one.
    assert!(!cluster
        .cli(&["keys", "rotate", &revoked_id])
        .status
        .success());

    assert_eq!(set_disabled(false).await.unwrap().status(), 200);
    assert_eq!(cluster.models_status(0, &kept).await, 200);
    cluster.until_accepted_everywhere(&kept).await;
    for node in [0, 1] {
        assert_eq!(
            cluster.models_status(node, &revoked).await,
            401,
            "node {node} revived a revoked key"
        );
    }
    drop(cluster);
    db.cleanup().await;
}
