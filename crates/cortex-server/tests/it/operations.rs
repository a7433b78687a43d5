//! Audit verification with checkpoints, the production check and the redacted export through
//! the admin API.

use cortex_server::ops_service;
use cortex_testkit::TestServer;
use serde_json::{json, Value};
use sqlx::Executor;

use crate::admin::admin;
use crate::audit_events;

#[tokio::test]
async fn verify_detects_a_cut_tail_even_with_the_head_rewritten() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let http = server.http();
    for i in 0..4 {
        http.post(server.url("/admin/keys"))
            .bearer_auth(&admin.access_token)
            .json(&json!({ "name": format!("k{i}"), "scopes": ["chat"] }))
            .send()
            .await
            .unwrap();
    }
    let state = server.state();
    let checkpointed =
        ops_service::audit::write_checkpoint(state.store(), &master(&server), state.now_millis())
            .await
            .unwrap()
            .unwrap();
    let verify = || async {
        http.get(server.url("/admin/audit/verify"))
            .bearer_auth(&admin.access_token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let intact = verify().await;
    assert_eq!(intact["ok"], true, "{intact}");
    assert!(intact["first_bad_seq"].is_null());

    // Cut the last two events and make the head row agree: the chain alone looks fine, the
    // signed checkpoint does not.
    let keep = checkpointed - 2;
    let pool = state.store().pool();
    pool.execute(format!("DELETE FROM audit_events WHERE seq > {keep}").as_str())
        .await
        .unwrap();
    let hash: String =
        sqlx::query_scalar(&format!("SELECT hash FROM audit_events WHERE seq = {keep}"))
            .fetch_one(pool)
            .await
            .unwrap();
    pool.execute(
        format!("UPDATE audit_head SET seq = {keep}, hash = '{hash}' WHERE id = 1").as_str(),
    )
    .await
    .unwrap();
    let broken = verify().await;
    assert_eq!(broken["ok"], false, "{broken}");
    assert_eq!(broken["first_bad_seq"], keep + 1);
    server.stop().await;
}

#[tokio::test]
async fn forged_checkpoints_are_refused() {
    let server = TestServer::builder().start().await;
    let state = server.state();
    ops_service::audit::write_checkpoint(state.store(), &master(&server), state.now_millis())
        .await
        .unwrap();
    state.store().pool().execute("UPDATE audit_checkpoints SET signature = replace(signature, substr(signature, 1, 2), 'ff')").await.unwrap();
    let report = ops_service::audit::verify(state.store(), &master(&server), |_| {})
        .await
        .unwrap();
    assert!(!report.ok);
    server.stop().await;
}

fn master(server: &TestServer) -> cortex_crypto::envelope::MasterKey {
    let text = std::fs::read_to_string(server.data_dir().join("master.key")).unwrap();
    cortex_crypto::envelope::MasterKey::parse(&text).unwrap()
}

fn failing(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "FAIL")
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn production_check_fails_a_dev_setup_and_passes_a_hardened_one() {
    let dev = TestServer::builder()
        .env("GATEWAY_DEV_ALLOW_ALL_KEYS", "true")
        .env("CORS_ALLOW_ORIGINS", "*")
        .start()
        .await;
    let admin_session = admin(&dev).await;
    let report: Value = dev
        .http()
        .get(dev.url("/admin/check"))
        .bearer_auth(&admin_session.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], false);
    let failed = failing(&report);
    for name in [
        "dev_bypass_off",
        "internal_key_strong",
        "cors_no_wildcard",
        "tls",
        "metrics_protected",
        "mfa_required_for_admins",
    ] {
        assert!(
            failed.iter().any(|f| f == name),
            "{name} should fail: {failed:?}"
        );
    }
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| !c["hint"].as_str().unwrap().is_empty()));
    dev.stop().await;

    let hardened = TestServer::builder()
        .env(
            "INTERNAL_VLLM_API_KEY",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        )
        .env("CORS_ALLOW_ORIGINS", "https://console.example")
        .env("CORTEX_BEHIND_TLS", "true")
        .env("CORTEX_METRICS_TOKEN", "metrics-token-0123456789")
        .start()
        .await;
    let admin_session = admin(&hardened).await;
    // Everything passes but MFA, which is left off here so the admin can log in without a code.
    let report: Value = hardened
        .http()
        .get(hardened.url("/admin/check"))
        .bearer_auth(&admin_session.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        failing(&report),
        vec!["mfa_required_for_admins".to_owned()],
        "{report}"
    );
    hardened.stop().await;
}

#[tokio::test]
async fn config_export_redacts_secrets_and_is_audited() {
    let server = TestServer::builder()
        .provider(
            "vllm",
            "http://127.0.0.1:9/v1",
            Some("sk-export-planted-secret-55"),
        )
        .model("llama", &["vllm"], 1.0, 2.0)
        .start()
        .await;
    let admin_session = admin(&server).await;
    let http = server.http();
    http.post(server.url("/admin/keys"))
        .bearer_auth(&admin_session.access_token)
        .json(&json!({ "name": "exported", "scopes": ["chat"] }))
        .send()
        .await
        .unwrap();
    let text = http
        .get(server.url("/admin/config/export"))
        .bearer_auth(&admin_session.access_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("sk-export-planted-secret-55"),
        "a secret was exported"
    );
    assert!(!text.contains("argon2"), "a password hash was exported");
    let export: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(export["manifest"]["secrets_redacted"], true, "{export}");
    assert_eq!(export["manifest"]["secrets_were_present"], true);
    assert_eq!(export["providers"][0]["api_key"], "[REDACTED]");
    assert_eq!(export["models"][0]["providers"][0], "vllm");
    assert_eq!(export["keys"][0]["name"], "exported");
    assert!(export["keys"][0].get("secret_hash").is_none());
    assert_eq!(export["roles"].as_array().unwrap().len(), 5);
    let events = audit_events(server.state().store(), Some("config.export"), 5).await;
    assert_eq!(events.len(), 1);
    server.stop().await;
}
