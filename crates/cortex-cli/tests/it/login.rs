//! Parallel password guessing against the real binary: every attempt is charged to its limits
//! before Argon2 runs, and Argon2's memory (19 MiB per running hash) stays bounded however the
//! attempts are spread over users and addresses. The server runs as its own process so its
//! memory can be read from `/proc` without the test's own allocations in it.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::process::ADMIN_PASSWORD;
use crate::CortexProcess;

const ATTEMPTS: usize = 32;
const MIB: u64 = 1024 * 1024;

/// A `/proc/<pid>/status` field in bytes (`VmHWM` is the peak resident set, `VmRSS` the current).
fn memory_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

async fn attempt(
    http: &reqwest::Client,
    server: &CortexProcess,
    username: &str,
    address: &str,
) -> reqwest::Response {
    http.post(server.url("/admin/auth/login"))
        .header("x-forwarded-for", address)
        .json(&json!({ "username": username, "password": "Wrong-Password-Guess-7" }))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_passwords_are_refused_and_hashing_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // The test client is the trusted proxy, so each attempt can come from its own address.
    let server = CortexProcess::start(
        &dir.path().join("data"),
        &[("CORTEX_TRUSTED_PROXIES", "127.0.0.1/32")],
    );
    let pid = server.child.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // One right login first, so start-up's own allocations (and one hash) are in the baseline.
    let warm = http
        .post(server.url("/admin/auth/login"))
        .header("x-forwarded-for", "192.0.2.1")
        .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let baseline = memory_bytes(pid, "VmHWM");

    // One user, one address, all at once: only the (user, address) bucket's worth is checked.
    let one_user =
        join_all((0..ATTEMPTS).map(|_| attempt(&http, &server, "admin", "198.51.100.7")))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect::<Vec<_>>();

    // Every attempt for another (unknown) user from another address: no bucket refuses them, so
    // all reach Argon2 (unknown users are hashed too, for timing) and only the hashing gate
    // bounds how many run at once; the excess waits briefly, then gets 503 with Retry-After.
    let spread = join_all((0..ATTEMPTS).map(|i| {
        let user = format!("nobody{i}");
        let address = format!("203.0.113.{}", i + 1);
        let http = &http;
        let server = &server;
        async move { attempt(http, server, &user, &address).await }
    }))
    .await;
    let peak = memory_bytes(pid, "VmHWM");
    let mut spread_statuses = Vec::new();
    for response in &spread {
        let status = response.status().as_u16();
        if status == 503 {
            assert!(
                response.headers().contains_key("retry-after"),
                "a 503 without Retry-After"
            );
        }
        spread_statuses.push(status);
    }

    // At most the (user, address) bucket's three attempts get past the limit (to be checked, or
    // on a loaded machine to wait their turn and be told 503); everything else is refused 429.
    let past_the_limit = one_user.iter().filter(|s| **s == 401 || **s == 503).count();
    let limited = one_user.iter().filter(|s| **s == 429).count();
    assert!(
        past_the_limit <= 3 && past_the_limit + limited == ATTEMPTS,
        "one user from one address: {one_user:?}"
    );
    assert!(
        spread_statuses.iter().all(|s| *s == 401 || *s == 503),
        "{spread_statuses:?}"
    );
    assert!(
        spread_statuses.contains(&401),
        "no spread attempt was checked at all: {spread_statuses:?}"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 150 * MIB,
        "{ATTEMPTS} parallel logins grew the peak resident set by {} MiB",
        growth / MIB
    );
    let status = server.terminate();
    assert!(status.success());
}
