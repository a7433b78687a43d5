//! `cortex audit verify`, `cortex check --production` and `cortex config export` as an operator
//! runs them.

use crate::process::run;
use crate::CortexProcess;

#[test]
fn audit_verify_exits_non_zero_on_a_tampered_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(&data, &["migrate"], &[]).status.success());
    for name in ["a", "b", "c"] {
        assert!(run(&data, &["keys", "create", "--name", name], &[])
            .status
            .success());
    }
    let ok = run(&data, &["audit", "verify"], &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The first admin (written by `migrate`, which has no master key), the re-keying of that
    // one-event chain under the master key by the first command, and the three keys.
    assert!(
        String::from_utf8_lossy(&ok.stdout).starts_with("ok: 5 events"),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(run(&data, &["audit", "checkpoint"], &[]).status.success());

    let exported = run(&data, &["audit", "export", "--format", "jsonl"], &[]);
    let (checkpoints, lines): (Vec<serde_json::Value>, Vec<serde_json::Value>) =
        String::from_utf8(exported.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .partition(|l| l["kind"] == "audit.checkpoint");
    assert_eq!(lines.len(), 5);
    // The signed checkpoints come along, checkable with the public key alone.
    let public_key = String::from_utf8(run(&data, &["audit", "public-key"], &[]).stdout).unwrap();
    assert!(!checkpoints.is_empty());
    for checkpoint in &checkpoints {
        let message = cortex_domain::audit::checkpoint_message(
            checkpoint["seq"].as_i64().unwrap(),
            checkpoint["hash"].as_str().unwrap(),
            checkpoint["prev_seq"].as_i64().unwrap(),
            checkpoint["prev_signature"].as_str().unwrap(),
        );
        assert!(cortex_crypto::signing::AuditSigner::verify(
            public_key.trim(),
            &message,
            checkpoint["signature"].as_str().unwrap()
        ));
        let seq = checkpoint["seq"].as_i64().unwrap();
        let event = &lines[usize::try_from(seq - 1).unwrap()];
        assert_eq!(checkpoint["hash"], event["hash"]);
    }
    assert_eq!(lines[1]["action"], "audit.chain_keyed");
    assert_eq!(lines[2]["action"], "key.create");
    assert_eq!(lines[2]["prev_hash"], lines[1]["hash"]);

    // Change one event's details directly in the database file.
    let db = data.join("cortex.db");
    let status = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit_events SET details='{}' WHERE seq=3\"); c.commit()", db.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let broken = run(&data, &["audit", "verify"], &[]);
    assert!(!broken.status.success());
    assert!(
        String::from_utf8_lossy(&broken.stdout).contains("#3"),
        "{}",
        String::from_utf8_lossy(&broken.stdout)
    );
}

#[test]
fn production_check_names_what_fails_and_passes_when_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(&data, &["migrate"], &[]).status.success());
    let dev = run(
        &data,
        &["check", "--production"],
        &[("GATEWAY_DEV_ALLOW_ALL_KEYS", "true")],
    );
    assert!(!dev.status.success());
    let out = String::from_utf8(dev.stdout).unwrap();
    for name in [
        "FAIL  dev_bypass_off",
        "FAIL  internal_key_strong",
        "FAIL  tls",
        "FAIL  metrics_protected",
        "FAIL  mfa_required_for_admins",
        "PASS  rate_limiting_on",
    ] {
        assert!(out.contains(name), "missing `{name}` in:\n{out}");
    }
    let hardened = [
        (
            "INTERNAL_VLLM_API_KEY",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
        ("CORTEX_BEHIND_TLS", "true"),
        ("CORTEX_METRICS_TOKEN", "metrics-token-0123456789"),
        ("CORTEX_REQUIRE_MFA_FOR", "admin"),
    ];
    let good = run(&data, &["check", "--production"], &hardened);
    let out = String::from_utf8(good.stdout).unwrap();
    assert!(good.status.success(), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn exports_stay_inside_the_storage_root() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(run(&data, &["migrate"], &[]).status.success());
    let ok = run(
        &data,
        &["config", "export", "--output", "exports/config.json"],
        &[],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(data.join("storage/exports/config.json").is_file());
    for bad in [
        "../escape.json",
        "/tmp/escape.json",
        "exports/../../escape.json",
    ] {
        let refused = run(&data, &["config", "export", "--output", bad], &[]);
        assert!(!refused.status.success(), "{bad} was accepted");
    }
    std::os::unix::fs::symlink(dir.path(), data.join("storage/link")).unwrap();
    let refused = run(
        &data,
        &["config", "export", "--output", "link/escape.json"],
        &[],
    );
    assert!(!refused.status.success(), "a symlink escape was accepted");
    assert!(!dir.path().join("escape.json").exists());
}

/// Every metric family is on the first scrape of a fresh process, before any request: the
/// request counter with every code at zero, each provider's latency, time-to-first-token,
/// retry, breaker and health series, and the audit families.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_is_present_before_the_first_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("cortex.toml");
    std::fs::write(
        &config,
        "[[providers]]\nname = \"first-scrape\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[[models]]\nname = \"llama\"\nprovider = \"first-scrape\"\n",
    )
    .unwrap();
    let config_path = config.display().to_string();
    let server = CortexProcess::start(
        &data,
        &[
            ("CORTEX_CONFIG", config_path.as_str()),
            ("CORTEX_METRICS_TOKEN", "metrics-token-0123456789"),
        ],
    );
    let text = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "gateway_key_auth_allowed_total",
        "gateway_key_auth_blocked_total",
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_time_to_first_token_seconds",
        "gateway_upstream_errors_total",
        "gateway_rate_limited_total",
        "gateway_active_streams",
        "gateway_tokens_total",
        "gateway_usage_dropped_total",
        "gateway_upstream_retries_total",
        "gateway_breaker_open_total",
        "gateway_upstream_health",
        "gateway_cache_requests_total",
        "gateway_cache_bytes",
        "gateway_cache_stores_total",
        "gateway_cache_evictions_total",
        "gateway_audit_checkpoint_refusals_total",
        "gateway_audit_forwarded_total",
        "gateway_audit_forward_failures_total",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(family)),
            "{family} missing from the first scrape:\n{text}"
        );
    }
    // The Grafana dashboard charts only families the server exports.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/cortex.json"),
    )
    .unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut charted = 0;
    for (at, _) in dashboard.match_indices("gateway_") {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            text.lines().any(|line| line.starts_with(family)),
            "the dashboard charts {family}, which the server does not export"
        );
        charted += 1;
    }
    assert!(charted >= 20, "{charted}");
    // Zero-valued series with the labels a refusal will use, so its first one is a rate.
    for series in [
        r#"gateway_requests_total{endpoint="chat",status="4xx",code="missing_credentials"} 0"#,
        r#"gateway_requests_total{endpoint="chat",status="4xx",code="rate_limit_exceeded"} 0"#,
        r#"gateway_requests_total{endpoint="chat",status="5xx",code="upstream_error"} 0"#,
        r#"gateway_requests_total{endpoint="models",status="2xx",code="none"} 0"#,
        r#"gateway_cache_requests_total{result="hit"} 0"#,
        r#"gateway_cache_requests_total{result="miss"} 0"#,
        r#"gateway_time_to_first_token_seconds_count{provider="first-scrape"} 0"#,
        r#"gateway_upstream_duration_seconds_count{provider="first-scrape"} 0"#,
    ] {
        assert!(
            text.lines().any(|line| line == series),
            "{series} missing:\n{text}"
        );
    }
    let status = server.terminate();
    assert!(status.success(), "{status}");
}
