//! The response cache (SPEC §21) end to end: what hits and what misses, byte-for-byte replays
//! (whole and streamed), tenants kept apart, `Cache-Control`, temperature, upstream errors,
//! the in-process byte bound, Redis shared by two instances, usage rows and the request rate,
//! policy versions, and the admin endpoints that read and purge the cache.

use std::time::Duration;

use cortex_domain::{KeyLimits, Role, Scope};
use cortex_testkit::{eventually, FakeUpstream, TempRedis, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin::{admin, session, Session, NEW_PASSWORD};

/// One answer from `/v1`: status, the `x-cortex-cache` header (when present) and the body's
/// bytes, read whole (a stream to its end).
struct Answer {
    status: u16,
    cache: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

async fn chat_raw(server: &TestServer, key: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let cache = headers
        .get("x-cortex-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap().to_vec();
    Answer {
        status,
        cache,
        headers,
        body,
    }
}

async fn chat(server: &TestServer, key: &str, body: &Value) -> Answer {
    chat_raw(server, key, &body.to_string(), &[]).await
}

fn ask(content: &str) -> Value {
    json!({ "model": "llama", "messages": [{ "role": "user", "content": content }] })
}

async fn call(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server
        .http()
        .request(method, server.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A cache policy for `org_id`'s whole organization (the caller's for `None`); returns it.
async fn cache_policy(
    server: &TestServer,
    who: &Session,
    org_id: Option<&str>,
    cache: Value,
) -> Value {
    let mut body = json!({ "scope": "organization", "cache": cache });
    if let Some(org_id) = org_id {
        body["org_id"] = json!(org_id);
    }
    let (status, policy) = call(
        server,
        &who.access_token,
        Method::POST,
        "/admin/policies",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{policy}");
    policy
}

async fn chat_key(server: &TestServer) -> String {
    server
        .create_key(&[Scope::Chat], None, KeyLimits::default())
        .await
}

/// A gateway and its upstream, with a cache policy (TTL 300 s) for the default organization.
async fn cached_gateway() -> (TestServer, FakeUpstream, Session, String) {
    let (server, upstream) = crate::gateway_with_upstream().await;
    let root = admin(&server).await;
    cache_policy(&server, &root, None, json!({ "ttl_seconds": 300 })).await;
    let key = chat_key(&server).await;
    (server, upstream, root, key)
}

/// A new organization with an admin of its own (logged in, forced password changed).
async fn organization(server: &TestServer, root: &Session, tag: &str) -> (String, Session) {
    let (status, org) = call(
        server,
        &root.access_token,
        Method::POST,
        "/admin/orgs",
        Some(json!({ "name": format!("{tag}-org") })),
    )
    .await;
    assert_eq!(status, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_owned();
    let username = format!("{tag}-admin");
    let (status, user) = call(
        server,
        &root.access_token,
        Method::POST,
        "/admin/users",
        Some(json!({ "username": username, "password": cortex_testkit::ADMIN_PASSWORD, "role": Role::Admin.as_str(), "org_id": org_id })),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    let first = session(server, &username, cortex_testkit::ADMIN_PASSWORD).await;
    let (status, _) = call(
        server,
        &first.access_token,
        Method::POST,
        "/admin/auth/password",
        Some(json!({ "current_password": cortex_testkit::ADMIN_PASSWORD, "new_password": NEW_PASSWORD })),
    )
    .await;
    assert_eq!(status, 200);
    (org_id, first)
}

/// A chat key made by `who` in their organization.
async fn api_key(server: &TestServer, who: &Session, name: &str) -> String {
    let (status, key) = call(
        server,
        &who.access_token,
        Method::POST,
        "/admin/keys",
        Some(json!({ "name": name, "scopes": ["chat"] })),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_request_is_answered_from_the_cache_byte_for_byte() {
    let (server, upstream, root, key) = cached_gateway().await;
    let first = chat_raw(
        &server,
        &key,
        r#"{"model":"llama","messages":[{"role":"user","content":"hello cache"}],"temperature":0}"#,
        &[],
    )
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert_eq!(upstream.received().len(), 1);

    // The same request, keys reordered, spaced out and with another `user`: the same entry.
    for body in [
        r#"{"model":"llama","messages":[{"role":"user","content":"hello cache"}],"temperature":0}"#,
        r#"{ "temperature" : 0,
             "messages" : [ { "content" : "hello cache", "role" : "user" } ],
             "model" : "llama" }"#,
        r#"{"user":"someone-else","model":"llama","messages":[{"role":"user","content":"hello cache"}],"temperature":0}"#,
    ] {
        let again = chat_raw(&server, &key, body, &[]).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.cache.as_deref(), Some("hit"), "{body}");
        assert_eq!(again.body, first.body, "the first answer's bytes");
        assert_eq!(again.headers["content-type"], "application/json", "{body}");
    }
    assert_eq!(upstream.received().len(), 1, "the provider saw one request");

    // Another question is another entry.
    let other = chat(&server, &key, &ask("hello other")).await;
    assert_eq!(other.cache.as_deref(), Some("miss"));
    assert_eq!(upstream.received().len(), 2);
    let changed_param = chat_raw(
        &server,
        &key,
        r#"{"model":"llama","messages":[{"role":"user","content":"hello cache"}],"temperature":0,"max_tokens":5}"#,
        &[],
    )
    .await;
    assert_eq!(changed_param.cache.as_deref(), Some("miss"));
    assert_eq!(upstream.received().len(), 3);

    let stats = server.state().data_plane().cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stores),
        (3, 3, 3),
        "{stats:?}"
    );

    // Usage: the hits have rows of their own, cached and at no cost, with the answer's tokens.
    let rows = std::sync::Mutex::new(Value::Null);
    let written = eventually(Duration::from_secs(10), || async {
        let (_, usage) = call(
            &server,
            &root.access_token,
            Method::GET,
            "/admin/usage",
            None,
        )
        .await;
        let done = usage["data"].as_array().is_some_and(|d| d.len() == 6);
        *rows.lock().unwrap() = usage["data"].clone();
        done
    })
    .await;
    let rows = rows.into_inner().unwrap();
    assert!(written, "six usage rows: {rows}");
    let rows = rows.as_array().unwrap();
    let cached: Vec<&Value> = rows.iter().filter(|r| r["cached"] == true).collect();
    assert_eq!(cached.len(), 3, "{rows:?}");
    for row in cached {
        assert_eq!(row["cost_usd"].as_f64(), Some(0.0), "{row}");
        assert_eq!(row["prompt_tokens"], 11, "{row}");
        assert_eq!(row["completion_tokens"], 7, "{row}");
        assert_eq!(row["status"], 200, "{row}");
    }
    for row in rows.iter().filter(|r| r["cached"] == false) {
        assert!(row["cost_usd"].as_f64().unwrap() > 0.0, "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_replayed_byte_for_byte_and_never_serves_a_whole_answer() {
    let (server, upstream, _root, key) = cached_gateway().await;
    let streamed = json!({ "model": "llama", "messages": [{ "role": "user", "content": "stream me" }], "stream": true });
    let first = chat(&server, &key, &streamed).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert!(String::from_utf8_lossy(&first.body).contains("data: [DONE]"));
    let second = chat(&server, &key, &streamed).await;
    assert_eq!(second.cache.as_deref(), Some("hit"));
    assert_eq!(second.headers["content-type"], "text/event-stream");
    assert_eq!(
        String::from_utf8_lossy(&second.body),
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(upstream.received().len(), 1);

    // The same question unstreamed is another entry, and so is a stream after it.
    let whole = json!({ "model": "llama", "messages": [{ "role": "user", "content": "stream me" }], "stream": false });
    let answer = chat(&server, &key, &whole).await;
    assert_eq!(answer.cache.as_deref(), Some("miss"));
    assert!(serde_json::from_slice::<Value>(&answer.body).is_ok());
    assert_eq!(upstream.received().len(), 2);
    let answer = chat(&server, &key, &whole).await;
    assert_eq!(answer.cache.as_deref(), Some("hit"));
    assert!(serde_json::from_slice::<Value>(&answer.body).is_ok());
    let third = chat(&server, &key, &streamed).await;
    assert_eq!(third.cache.as_deref(), Some("hit"));
    assert_eq!(third.body, first.body);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_organizations_never_share_an_entry() {
    let (server, upstream) = crate::gateway_with_upstream().await;
    let root = admin(&server).await;
    let (acme, acme_admin) = organization(&server, &root, "acme").await;
    let (globex, globex_admin) = organization(&server, &root, "globex").await;
    cache_policy(&server, &acme_admin, None, json!({ "ttl_seconds": 300 })).await;
    cache_policy(&server, &globex_admin, None, json!({ "ttl_seconds": 300 })).await;
    let acme_key = api_key(&server, &acme_admin, "acme-key").await;
    let globex_key = api_key(&server, &globex_admin, "globex-key").await;
    let body = ask("the same question everywhere");

    assert_eq!(
        chat(&server, &acme_key, &body).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        chat(&server, &acme_key, &body).await.cache.as_deref(),
        Some("hit")
    );
    // The other organization asks the very same thing: its own miss, its own provider call.
    assert_eq!(
        chat(&server, &globex_key, &body).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(upstream.received().len(), 2);
    assert_eq!(
        chat(&server, &globex_key, &body).await.cache.as_deref(),
        Some("hit")
    );
    assert_eq!(upstream.received().len(), 2);

    // Purging one organization leaves the other's entry; its admin cannot purge the other.
    let (status, refused) = call(
        &server,
        &acme_admin.access_token,
        Method::DELETE,
        &format!("/admin/cache?org_id={globex}"),
        None,
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    let (status, refused) = call(
        &server,
        &acme_admin.access_token,
        Method::DELETE,
        "/admin/cache?all=true",
        None,
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        chat(&server, &globex_key, &body).await.cache.as_deref(),
        Some("hit")
    );
    let (status, purged) = call(
        &server,
        &acme_admin.access_token,
        Method::DELETE,
        "/admin/cache",
        None,
    )
    .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["purged"], 1, "{purged}");
    assert_eq!(
        chat(&server, &acme_key, &body).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        chat(&server, &globex_key, &body).await.cache.as_deref(),
        Some("hit")
    );
    // The default organization's admin may purge another organization by name.
    let (status, purged) = call(
        &server,
        &root.access_token,
        Method::DELETE,
        &format!("/admin/cache?org_id={globex}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["purged"], 1, "{purged}");
    assert_eq!(
        chat(&server, &globex_key, &body).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        chat(&server, &acme_key, &body).await.cache.as_deref(),
        Some("hit")
    );
    let (status, purged) = call(
        &server,
        &root.access_token,
        Method::DELETE,
        "/admin/cache?all=true",
        None,
    )
    .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["purged"], 2, "{purged}");
    assert_eq!(
        chat(&server, &acme_key, &body).await.cache.as_deref(),
        Some("miss")
    );

    // Each purge left an audit event in its organization.
    let purges = crate::audit_events(server.state().store(), Some("cache.purge"), 10).await;
    assert_eq!(purges.len(), 3, "{purges:?}");
    assert!(purges.iter().any(|e| e.org_id == acme));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_skips_the_lookup_or_the_store() {
    let (server, upstream, _root, key) = cached_gateway().await;
    let body = ask("fresh please").to_string();
    // no-cache: not looked up (the provider answers), but stored.
    let fresh = chat_raw(&server, &key, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.cache.as_deref(), Some("miss"));
    assert_eq!(upstream.received().len(), 1);
    let again = chat_raw(&server, &key, &body, &[("cache-control", "No-Cache")]).await;
    assert_eq!(again.cache.as_deref(), Some("miss"), "no-cache never reads");
    assert_eq!(upstream.received().len(), 2);
    let stored = chat_raw(&server, &key, &body, &[]).await;
    assert_eq!(stored.cache.as_deref(), Some("hit"), "but it stores");
    assert_eq!(upstream.received().len(), 2);

    // no-store: looked up, answered, not kept.
    let body = ask("forget me").to_string();
    let first = chat_raw(
        &server,
        &key,
        &body,
        &[("cache-control", "max-age=0, no-store")],
    )
    .await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    let second = chat_raw(&server, &key, &body, &[]).await;
    assert_eq!(second.cache.as_deref(), Some("miss"), "nothing was stored");
    assert_eq!(upstream.received().len(), 4);
    let third = chat_raw(&server, &key, &body, &[]).await;
    assert_eq!(third.cache.as_deref(), Some("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_and_failed_answers_are_not_cached_and_a_policy_change_moves_the_key() {
    let (server, upstream) = crate::gateway_with_upstream().await;
    let root = admin(&server).await;
    let policy = cache_policy(&server, &root, None, json!({ "ttl_seconds": 300 })).await;
    let key = chat_key(&server).await;

    // A sampled request is neither looked up nor stored.
    let sampled = json!({ "model": "llama", "messages": [{ "role": "user", "content": "dice" }], "temperature": 0.7 });
    for n in 1..=2 {
        let answer = chat(&server, &key, &sampled).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.cache, None, "not looked up");
        assert_eq!(upstream.received().len(), n);
    }

    // Upstream errors are passed on, never kept.
    let body = ask("errors are not answers");
    for status in [500u16, 400, 429] {
        upstream.set_fail_status(status);
        let failed = chat(&server, &key, &body).await;
        assert_ne!(failed.status, 200, "{status}");
        upstream.set_fail_status(0);
        let next = chat(&server, &key, &body).await;
        assert_eq!(next.status, 200);
        assert_eq!(next.cache.as_deref(), Some("miss"), "after a {status}");
        // Start again from nothing for the next status.
        let (code, _) = call(
            &server,
            &root.access_token,
            Method::DELETE,
            "/admin/cache",
            None,
        )
        .await;
        assert_eq!(code, 200);
    }
    let stats = server.state().data_plane().cache.stats();
    assert_eq!(stats.stores, 3, "only the three 200s: {stats:?}");

    // A cached question, then a change to the policy: its version is in the key.
    let plain = ask("versioned");
    assert_eq!(
        chat(&server, &key, &plain).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        chat(&server, &key, &plain).await.cache.as_deref(),
        Some("hit")
    );
    let id = policy["id"].as_str().unwrap();
    let (status, patched) = call(
        &server,
        &root.access_token,
        Method::PATCH,
        &format!("/admin/policies/{id}"),
        Some(json!({ "cache": { "ttl_seconds": 300, "cache_nonzero_temperature": true } })),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["version"], 2);
    let before = upstream.received().len();
    assert_eq!(
        chat(&server, &key, &plain).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(upstream.received().len(), before + 1);
    // And now sampled requests may be cached.
    assert_eq!(
        chat(&server, &key, &sampled).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        chat(&server, &key, &sampled).await.cache.as_deref(),
        Some("hit")
    );
    assert_eq!(upstream.received().len(), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_counts_for_the_keys_request_rate() {
    let (server, upstream, _root, _) = cached_gateway().await;
    let key = server
        .create_key(
            &[Scope::Chat],
            None,
            KeyLimits {
                requests_per_second: Some(0.01),
                burst: Some(2),
                ..KeyLimits::default()
            },
        )
        .await;
    let body = ask("rate me");
    let first = chat(&server, &key, &body).await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert_eq!(first.headers["ratelimit-remaining"], "1");
    let second = chat(&server, &key, &body).await;
    assert_eq!(second.cache.as_deref(), Some("hit"));
    assert_eq!(second.headers["ratelimit-remaining"], "0");
    let third = chat(&server, &key, &body).await;
    assert_eq!(third.status, 429, "the hit spent the last request");
    assert_eq!(third.cache, None);
    assert_eq!(upstream.received().len(), 1);
}

/// A question whose fake answer echoes `size` bytes (the last message is a tool's).
fn large(tag: char, size: usize) -> Value {
    json!({ "model": "llama", "messages": [
        { "role": "user", "content": "echo" },
        { "role": "tool", "tool_call_id": "call_fake", "content": tag.to_string().repeat(size) }
    ] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_cache_evicts_the_least_recently_used_past_its_bound() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .provider("fake", &upstream.base_url(), Some("provider-secret-abc"))
        .model("llama", &["fake"], 1.0, 2.0)
        .env("CORTEX_CACHE_MAX_BYTES", "1048576")
        .env("CORTEX_CACHE_MAX_ENTRY_BYTES", "1048576")
        .start()
        .await;
    let root = admin(&server).await;
    cache_policy(&server, &root, None, json!({ "ttl_seconds": 300 })).await;
    let key = chat_key(&server).await;
    let size = 400 * 1024;

    let a = chat(&server, &key, &large('a', size)).await;
    assert_eq!(a.status, 200);
    assert!(a.body.len() > size, "the answer echoes the question");
    assert_eq!(
        chat(&server, &key, &large('b', size))
            .await
            .cache
            .as_deref(),
        Some("miss")
    );
    // Two fit: the first is still there (and is now the most recently used).
    assert_eq!(
        chat(&server, &key, &large('a', size))
            .await
            .cache
            .as_deref(),
        Some("hit")
    );
    // A third does not: the least recently used (b) goes.
    assert_eq!(
        chat(&server, &key, &large('c', size))
            .await
            .cache
            .as_deref(),
        Some("miss")
    );
    let stats = server.state().data_plane().cache.stats();
    assert_eq!(stats.evictions, 1, "{stats:?}");
    assert!(stats.bytes.unwrap() <= 1_048_576, "{stats:?}");
    assert_eq!(stats.entries, Some(2), "{stats:?}");
    assert_eq!(
        chat(&server, &key, &large('b', size))
            .await
            .cache
            .as_deref(),
        Some("miss")
    );
    assert_eq!(upstream.received().len(), 4);

    // An answer larger than an entry may be is answered and not kept.
    let huge = large('h', 1_100_000);
    assert_eq!(
        chat(&server, &key, &huge).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        chat(&server, &key, &huge).await.cache.as_deref(),
        Some("miss")
    );

    // The admin view of the same counters.
    let (status, view) = call(
        &server,
        &root.access_token,
        Method::GET,
        "/admin/cache",
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["object"], "cache");
    assert_eq!(view["backend"], "memory");
    assert_eq!(view["max_bytes"], 1_048_576);
    assert_eq!(view["max_entry_bytes"], 1_048_576);
    assert_eq!(view["hits"], 1);
    assert_eq!(view["misses"], 6);
    assert!(view["evictions"].as_u64().unwrap() >= 2, "{view}");
    assert_eq!(view["entries"], 2);
}

async fn redis_instance(
    database_url: Option<&str>,
    redis_url: &str,
    upstream: &FakeUpstream,
) -> TestServer {
    let mut builder = TestServer::builder()
        .env("REDIS_URL", redis_url)
        .env("CORTEX_CACHE_BACKEND", "redis")
        .env("CORTEX_MASTER_KEY", &"33".repeat(32))
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 1.0, 2.0);
    builder = match database_url {
        Some(url) => builder.env("DATABASE_URL", url),
        None => builder.postgres(),
    };
    builder.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_share_the_cache() {
    let upstream = FakeUpstream::start().await;
    let redis = TempRedis::start();
    let first = redis_instance(None, &redis.url(), &upstream).await;
    let second = redis_instance(Some(first.database_url()), &redis.url(), &upstream).await;
    let root = admin(&first).await;
    let policy = cache_policy(&first, &root, None, json!({ "ttl_seconds": 300 })).await;
    let policy_id = policy["id"].as_str().unwrap().to_owned();
    let (key_id, key) = first
        .create_key_with(cortex_control::keys::KeySpec {
            name: "shared".to_owned(),
            owner_user_id: first.admin_id().await,
            scopes: vec![Scope::Chat],
            models: None,
            expires_at: None,
            limits: KeyLimits::default(),
            org_id: cortex_domain::DEFAULT_ORG.to_owned(),
            team_id: None,
            allowed_ips: None,
        })
        .await;
    // The second instance has the policy once its catalogue follows.
    let known = eventually(Duration::from_secs(15), || async {
        second
            .state()
            .data_plane()
            .catalog
            .policies()
            .resolve(&key_id, cortex_domain::DEFAULT_ORG, "llama")
            .is_some_and(|p| p.id == policy_id)
    })
    .await;
    assert!(known, "the second instance loaded the policy");
    let key_known = eventually(Duration::from_secs(10), || async {
        second
            .http()
            .get(second.url("/v1/models"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert!(key_known, "the second instance knows the key");

    let body = ask("shared between instances");
    let a = chat(&first, &key, &body).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.cache.as_deref(), Some("miss"));
    first.state().data_plane().cache.flush().await;
    let b = chat(&second, &key, &body).await;
    assert_eq!(b.status, 200, "{}", String::from_utf8_lossy(&b.body));
    assert_eq!(b.cache.as_deref(), Some("hit"));
    assert_eq!(b.body, a.body);
    assert_eq!(upstream.received().len(), 1);

    let (status, view) = call(
        &second,
        &root.access_token,
        Method::GET,
        "/admin/cache",
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["backend"], "redis");
    assert_eq!(view["hits"], 1);
    // A purge on one instance empties the shared store.
    let (status, purged) = call(
        &second,
        &root.access_token,
        Method::DELETE,
        "/admin/cache",
        None,
    )
    .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["purged"], 1);
    assert_eq!(
        chat(&first, &key, &body).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_and_purging_the_cache_need_their_permissions() {
    let (server, _upstream, root, key) = cached_gateway().await;
    let body = ask("guarded");
    assert_eq!(
        chat(&server, &key, &body).await.cache.as_deref(),
        Some("miss")
    );
    let viewer = crate::admin::user_with_role(&server, &root, "cache-viewer", Role::Viewer).await;
    let developer =
        crate::admin::user_with_role(&server, &root, "cache-dev", Role::Developer).await;
    let (status, view) = call(
        &server,
        &viewer.access_token,
        Method::GET,
        "/admin/cache",
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["entries"], 1);
    let (status, _) = call(
        &server,
        &viewer.access_token,
        Method::DELETE,
        "/admin/cache",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &server,
        &developer.access_token,
        Method::GET,
        "/admin/cache",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &server,
        &root.access_token,
        Method::DELETE,
        "/admin/cache?all=yes",
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        chat(&server, &key, &body).await.cache.as_deref(),
        Some("hit"),
        "nothing purged"
    );
}
