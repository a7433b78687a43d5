//! `cortex engines …`: the command line records what an operator asks (desired state and its
//! audit event) for the serving processes to act on, and reads the logs they mirror.

use cortex_crypto::envelope::MasterKey;
use cortex_store::engines::DesiredState;
use cortex_store::Store;
use cortex_testkit::TestDb;
use serde_json::json;

use crate::process::run;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_are_listed_started_and_stopped_from_the_cli() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("DATABASE_URL", db.url.as_str())];
    let ok = |args: &[&str]| {
        let output = run(&data, args, &env);
        assert!(
            output.status.success(),
            "{args:?}: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stdout)
    };
    ok(&["migrate"]);
    // The first command that writes makes the master key; nothing is listed yet.
    assert_eq!(ok(&["engines", "list"]).lines().count(), 1);
    let key = std::fs::read_to_string(data.join("master.key")).unwrap();
    let key = MasterKey::parse(key.trim()).unwrap();
    let store =
        cortex_control::ops::audit::open_chain(Store::open(&db.url).await.unwrap(), &key, 1)
            .await
            .unwrap();
    let spec = cortex_control::engines::parse_spec(json!({"name": "tiny", "engine": "vllm",
        "runtime": "process", "model": "org/model", "hf_token": "hf_cliSecretToken123"}))
    .unwrap();
    let row = cortex_control::engines::create_engine(&store, &key, None, &spec, "test", "", 5)
        .await
        .unwrap();

    let listed = ok(&["engines", "list"]);
    assert!(
        listed.contains(&row.id) && listed.contains("tiny") && listed.contains("stopped"),
        "{listed}"
    );
    assert!(!listed.contains("hf_cliSecretToken123"));

    ok(&["engines", "start", "tiny"]);
    let started = store.get_engine(&row.id).await.unwrap().unwrap();
    assert_eq!(started.desired_state, DesiredState::Running);
    assert_eq!(started.generation, 1);
    ok(&["engines", "restart", &row.id]);
    assert_eq!(
        store.get_engine(&row.id).await.unwrap().unwrap().generation,
        2
    );
    ok(&["engines", "stop", "tiny"]);
    assert_eq!(
        store
            .get_engine(&row.id)
            .await
            .unwrap()
            .unwrap()
            .desired_state,
        DesiredState::Stopped
    );
    let events = store
        .list_audit(
            &cortex_store::Tenant::All,
            &cortex_store::audit::AuditFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for action in ["engine.start", "engine.restart", "engine.stop"] {
        assert!(
            events
                .iter()
                .any(|e| e.action == action && e.actor == "cli"),
            "{action}"
        );
    }

    // Logs: none until a serving process on this host mirrored some; then the tail.
    let missing = run(&data, &["engines", "logs", "tiny"], &env);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("no logs"),
        "{}",
        text(&missing.stderr)
    );
    let mirror = cortex_server::engines::log_mirror_path(&data, &row.id);
    std::fs::create_dir_all(mirror.parent().unwrap()).unwrap();
    std::fs::write(&mirror, "one\ntwo\nthree\n").unwrap();
    assert_eq!(
        ok(&["engines", "logs", "tiny", "--tail", "2"]),
        "two\nthree\n"
    );
    let unknown = run(&data, &["engines", "start", "nope"], &env);
    assert_eq!(unknown.status.code(), Some(1));
    store.close().await;
}
