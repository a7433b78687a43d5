//! Audit verification with checkpoints, the production check and the redacted export through
//! the admin API.

use cortex_control::ops;
use cortex_control::ops::audit::{
    CheckpointOutcome, CheckpointTrail, VerifyProblem, CHECKPOINT_GRACE_MILLIS,
};
use cortex_crypto::envelope::MasterKey;
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::audit::{AuditChainKey, ChainHasher};
use cortex_store::testing::{forge_audit_chain, TestDb};
use cortex_store::Store;
use cortex_testkit::TestServer;
use serde_json::{json, Value};
use sqlx::Executor;

use crate::admin::admin;
use crate::{audit_events, create_keys};

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
    let checkpointed = written(
        ops::audit::write_checkpoint(state.store(), &master(&server), state.now_millis())
            .await
            .unwrap(),
    );
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
    ops::audit::write_checkpoint(state.store(), &master(&server), state.now_millis())
        .await
        .unwrap();
    state.store().pool().execute("UPDATE audit_checkpoints SET signature = replace(signature, substr(signature, 1, 2), 'ff')").await.unwrap();
    let report = ops::audit::verify(state.store(), &master(&server), state.now_millis(), |_| {})
        .await
        .unwrap();
    assert!(!report.ok);
    assert_eq!(report.problem, Some(VerifyProblem::CheckpointForged));
    server.stop().await;
}

fn written(outcome: CheckpointOutcome) -> i64 {
    match outcome {
        CheckpointOutcome::Written(seq) => seq,
        other => panic!("no checkpoint written: {other:?}"),
    }
}

/// Issue 24, item 6, performed: with write access to the database but not the master key, delete
/// two events, renumber the rest and recompute the chain with plain SHA-256 (the public
/// algorithm), delete every checkpoint, and rewrite the head row. `GET /admin/audit/verify` must
/// fail, and the checkpoint writer must refuse to sign the forged head. Before the chain was
/// keyed, verify answered ok and the next checkpoint (at shutdown) signed the forgery.
#[tokio::test]
async fn rewriting_history_with_database_access_is_detected_and_never_signed() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    create_keys(&server, &admin.access_token, 6, "before").await;
    let state = server.state();
    let store = state.store();
    let key = master(&server);
    written(
        ops::audit::write_checkpoint(store, &key, state.now_millis())
            .await
            .unwrap(),
    );
    let verify = || async {
        server
            .http()
            .get(server.url("/admin/audit/verify"))
            .bearer_auth(&admin.access_token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    assert_eq!(verify().await["ok"], true);

    let head_before = store.audit_head().await.unwrap().0;
    let forged_head = forge_audit_chain(store, &[3, 5], &ChainHasher::Legacy).await;
    assert_eq!(forged_head, head_before - 2);
    store
        .pool()
        .execute("DELETE FROM audit_checkpoints")
        .await
        .unwrap();
    let report = verify().await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], 1, "{report}");
    assert_eq!(report["problem"], "chain_broken", "{report}");

    // The checkpoint writer (as at every tick and at shutdown) refuses the forged head.
    assert_eq!(
        ops::audit::write_checkpoint(store, &key, state.now_millis())
            .await
            .unwrap(),
        CheckpointOutcome::Refused(1)
    );
    assert!(store.checkpoints().await.unwrap().is_empty());

    // An attacker who guesses at the key (HMAC under any other key) fares no better.
    let guessed = ChainHasher::Keyed(AuditChainKey::from_bytes(&[0x42; 32]));
    forge_audit_chain(store, &[], &guessed).await;
    let report = verify().await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["problem"], "chain_broken", "{report}");
    assert!(matches!(
        ops::audit::write_checkpoint(store, &key, state.now_millis())
            .await
            .unwrap(),
        CheckpointOutcome::Refused(_)
    ));
    server.stop().await;
}

/// Deleting only checkpoints (the events left as they were) is detected: one from the middle
/// breaks the chain of checkpoints at once; the newest ones (or all of them) once the events they
/// covered are older than the grace period and nothing covers them. A running writer also
/// notices that the checkpoint it signed last is gone, and refuses to build on what is left.
/// (On the library with its own database: no server's background checkpoint may interfere.)
#[tokio::test]
async fn deleting_checkpoints_is_detected() {
    let db = TestDb::sqlite();
    let key = MasterKey::generate();
    let now = 1_700_000_000_000;
    let store = ops::audit::open_chain(Store::open(&db.url).await.unwrap(), &key, now)
        .await
        .unwrap();
    let trail = CheckpointTrail::default();
    let mut signed = Vec::new();
    let mut at = now;
    for round in 0..3 {
        for i in 0..2 {
            at += 1_000;
            store
                .append_audit(
                    &NewAuditEvent::new("test", "key.create", format!("{round}.{i}")),
                    at,
                )
                .await
                .unwrap();
        }
        signed.push(written(
            ops::audit::write_checkpoint_with(&store, &key, &trail, at)
                .await
                .unwrap(),
        ));
    }
    let later = at + CHECKPOINT_GRACE_MILLIS + 60_000;
    let verify_at = |when: i64| {
        let (store, key) = (&store, &key);
        async move { ops::audit::verify(store, key, when, |_| {}).await.unwrap() }
    };
    assert!(verify_at(later).await.ok);
    let delete = |seq: i64| {
        let store = &store;
        async move {
            store
                .pool()
                .execute(format!("DELETE FROM audit_checkpoints WHERE seq = {seq}").as_str())
                .await
                .unwrap();
        }
    };

    // The newest one: the writer that signed it refuses to go on from the one before it, and
    // once its events are past the grace period verify names the first uncovered event.
    delete(signed[2]).await;
    store
        .append_audit(&NewAuditEvent::new("test", "key.create", "after"), at + 1)
        .await
        .unwrap();
    assert_eq!(
        ops::audit::write_checkpoint_with(&store, &key, &trail, at + 2)
            .await
            .unwrap(),
        CheckpointOutcome::Refused(signed[2])
    );
    let report = verify_at(later).await;
    assert_eq!(
        (report.ok, report.first_bad_seq, report.problem),
        (
            false,
            Some(signed[1] + 1),
            Some(VerifyProblem::CheckpointMissing)
        ),
        "{report:?}"
    );
    // Within the grace period the tail may simply not be signed yet.
    assert!(verify_at(at + 3).await.ok);

    // One from the middle: its successor names a predecessor that is not there.
    written(
        ops::audit::write_checkpoint(&store, &key, at + 4)
            .await
            .unwrap(),
    );
    assert!(verify_at(later).await.ok);
    delete(signed[0]).await;
    let report = verify_at(at + 5).await;
    assert_eq!(
        (report.ok, report.first_bad_seq, report.problem),
        (
            false,
            Some(signed[0]),
            Some(VerifyProblem::CheckpointMissing)
        ),
        "{report:?}"
    );

    // All of them: events older than the grace period and no checkpoint at all.
    store
        .pool()
        .execute("DELETE FROM audit_checkpoints")
        .await
        .unwrap();
    let report = verify_at(later).await;
    assert_eq!(
        (report.ok, report.first_bad_seq, report.problem),
        (false, Some(1), Some(VerifyProblem::CheckpointMissing)),
        "{report:?}"
    );
    store.close().await;
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
