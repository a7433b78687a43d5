//! The maintenance commands as an operator runs them: backup while serving and restore into a
//! fresh data dir, master-key rotation (and finishing an interrupted one), config import, and
//! erasing a user — plus the path checks on everything written into the storage root.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cortex_crypto::envelope::{open, MasterKey};
use cortex_store::Store;
use cortex_testkit::FakeUpstream;

use crate::process::{run, ADMIN_PASSWORD};
use crate::CortexProcess;

const PLANTED: &str = "planted-provider-secret-M4x";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn refused(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a refusal, got: {}",
        text(&output.stdout)
    );
    text(&output.stderr)
}

fn write_config(dir: &Path, upstream: &FakeUpstream) -> String {
    let path = dir.join("cortex.toml");
    std::fs::write(
        &path,
        format!(
            "[[providers]]\nname = \"fake\"\nbase_url = \"{}\"\napi_key = {{ env = \"FAKE_PROVIDER_KEY\" }}\n\n[[models]]\nname = \"llama\"\nprovider = \"fake\"\ninput_price_per_mtok = 1.0\n",
            upstream.base_url()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Sends a chat request with `key` until the server has picked the key up; returns the status.
async fn chat(server: &CortexProcess, key: &str) -> u16 {
    let http = reqwest::Client::new();
    let mut status = 0;
    for _ in 0..100 {
        status = http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "model": "llama", "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

fn sqlite_url(data: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data.join("cortex.db").display())
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_restores_into_a_fresh_data_dir() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream);
    let storage = dir.path().join("storage");
    let storage_text = storage.display().to_string();
    let env = [
        ("CORTEX_CONFIG", config.as_str()),
        ("FAKE_PROVIDER_KEY", PLANTED),
        ("CORTEX_STORAGE_ROOT", storage_text.as_str()),
    ];
    let first = dir.path().join("first");
    let server = CortexProcess::start(&first, &env);
    let key = ok(&run(&first, &["keys", "create", "--name", "kept"], &env))
        .trim()
        .to_owned();
    assert_eq!(chat(&server, &key).await, 200);

    // Online: the server keeps running while the copy is taken.
    let written = ok(&run(
        &first,
        &["backup", "--output", "nightly/cortex.db"],
        &env,
    ));
    let backup = storage.join("nightly/cortex.db");
    assert_eq!(Path::new(written.trim()), backup.canonicalize().unwrap());
    assert_eq!(mode(&backup), 0o600);
    assert_eq!(chat(&server, &key).await, 200, "the server stopped serving");

    // Names are relative, stay inside the root, never follow a symlink out, never overwrite.
    std::os::unix::fs::symlink(dir.path(), storage.join("link")).unwrap();
    for bad in [
        "../escape.db",
        "/tmp/escape.db",
        "nightly/../../escape.db",
        "link/escape.db",
        "nightly/cortex.db",
    ] {
        refused(&run(&first, &["backup", "--output", bad], &env));
        let export = run(
            &first,
            &["audit", "export", "--output", &bad.replace(".db", ".jsonl")],
            &env,
        );
        if bad != "nightly/cortex.db" {
            refused(&export);
        }
    }
    assert!(!dir.path().join("escape.db").exists());
    assert!(!dir.path().join("escape.jsonl").exists());
    let status = server.terminate();
    assert!(status.success());

    // A fresh data dir with the same master key (kept separately, as the README says).
    let second = dir.path().join("second");
    let missing_key = refused(&run(&second, &["restore", "nightly/cortex.db"], &env));
    assert!(missing_key.contains("no master key"), "{missing_key}");
    std::fs::create_dir_all(&second).unwrap();
    cortex_control::bootstrap::write_private_file(
        &second.join("master.key"),
        &std::fs::read(first.join("master.key")).unwrap(),
    )
    .unwrap();
    refused(&run(&second, &["restore", "../escape.db"], &env));
    refused(&run(&second, &["restore", "nightly/absent.db"], &env));
    let restored = ok(&run(&second, &["restore", "nightly/cortex.db"], &env));
    assert!(restored.contains("audit log: ok"), "{restored}");
    assert!(ok(&run(&second, &["audit", "verify"], &env)).starts_with("ok: "));

    let server = CortexProcess::start(&second, &env);
    let before = upstream.received().len();
    assert_eq!(
        chat(&server, &key).await,
        200,
        "the restored key does not work"
    );
    let sent = &upstream.received()[before];
    assert_eq!(sent.headers["authorization"], format!("Bearer {PLANTED}"));
    let status = server.terminate();
    assert!(status.success());

    // An existing database is replaced only with --force, and then moved aside, not deleted.
    let again = refused(&run(&second, &["restore", "nightly/cortex.db"], &env));
    assert!(again.contains("--force"), "{again}");
    ok(&run(
        &second,
        &["restore", "nightly/cortex.db", "--force"],
        &env,
    ));
    let aside = std::fs::read_dir(&second)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cortex.db.pre-restore-")
        });
    assert!(aside, "the replaced database was not kept");

    // A backup sealed under another master key is refused before anything is replaced.
    let third = dir.path().join("third");
    std::fs::create_dir_all(&third).unwrap();
    cortex_control::bootstrap::write_private_file(
        &third.join("master.key"),
        b64(&MasterKey::generate()).as_bytes(),
    )
    .unwrap();
    let wrong = refused(&run(&third, &["restore", "nightly/cortex.db"], &env));
    assert!(wrong.contains("another master key"), "{wrong}");
    assert!(!third.join("cortex.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_and_backups_are_private_new_files_that_never_leave_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let storage = dir.path().join("storage");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&storage).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let storage_text = storage.display().to_string();
    let env = [("CORTEX_STORAGE_ROOT", storage_text.as_str())];
    ok(&run(&data, &["migrate"], &env));
    let outside_is_empty = || std::fs::read_dir(&outside).unwrap().next().is_none();

    // A symlinked folder leading out is refused before anything is created through it.
    std::os::unix::fs::symlink(&outside, storage.join("link")).unwrap();
    let escapes: [&[&str]; 3] = [
        &["config", "export", "--output", "link/sub/config.json"],
        &["audit", "export", "--output", "link/sub/audit.jsonl"],
        &["backup", "--output", "link/sub/cortex.db"],
    ];
    for args in escapes {
        refused(&run(&data, args, &env));
        assert!(
            outside_is_empty(),
            "{args:?} created something outside the root"
        );
    }

    // New files are 0600 and new folders 0700.
    ok(&run(
        &data,
        &["config", "export", "--output", "exports/daily/config.json"],
        &env,
    ));
    ok(&run(
        &data,
        &["audit", "export", "--output", "exports/audit.jsonl"],
        &env,
    ));
    ok(&run(
        &data,
        &["backup", "--output", "exports/cortex.db"],
        &env,
    ));
    for file in [
        "exports/daily/config.json",
        "exports/audit.jsonl",
        "exports/cortex.db",
    ] {
        assert_eq!(mode(&storage.join(file)), 0o600, "{file}");
    }
    for folder in ["exports", "exports/daily"] {
        assert_eq!(mode(&storage.join(folder)), 0o700, "{folder}");
    }

    // An existing file is never overwritten.
    let kept = storage.join("exports/kept.json");
    std::fs::write(&kept, "precious").unwrap();
    refused(&run(
        &data,
        &["config", "export", "--output", "exports/kept.json"],
        &env,
    ));
    refused(&run(
        &data,
        &["audit", "export", "--output", "exports/kept.json"],
        &env,
    ));
    refused(&run(
        &data,
        &["backup", "--output", "exports/kept.json"],
        &env,
    ));
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "precious");

    // A final symlink leading out is never followed, whether its target exists or not.
    let existing = outside.join("existing.json");
    std::fs::write(&existing, "outside").unwrap();
    std::os::unix::fs::symlink(&existing, storage.join("exports/existing.json")).unwrap();
    std::os::unix::fs::symlink(
        outside.join("new.json"),
        storage.join("exports/dangling.json"),
    )
    .unwrap();
    for name in ["exports/existing.json", "exports/dangling.json"] {
        refused(&run(&data, &["config", "export", "--output", name], &env));
        refused(&run(&data, &["audit", "export", "--output", name], &env));
        refused(&run(&data, &["backup", "--output", name], &env));
    }
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "outside");
    assert!(!outside.join("new.json").exists());
}

/// The key as its file holds it.
fn b64(key: &MasterKey) -> String {
    secrecy::ExposeSecret::expose_secret(&key.to_base64()).to_owned()
}

async fn provider_sealed(data: &Path) -> (String, Vec<u8>) {
    let store = Store::open(&sqlite_url(data)).await.unwrap();
    let provider = store.get_provider("fake").await.unwrap().unwrap();
    store.close().await;
    (provider.id, provider.api_key_sealed.unwrap())
}

fn key_file(data: &Path) -> MasterKey {
    MasterKey::parse(&std::fs::read_to_string(data.join("master.key")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_master_key_from_the_cli() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream);
    let env = [
        ("CORTEX_CONFIG", config.as_str()),
        ("FAKE_PROVIDER_KEY", PLANTED),
    ];
    let data = dir.path().join("data");
    let server = CortexProcess::start(&data, &env);
    let key = ok(&run(&data, &["keys", "create", "--name", "k"], &env))
        .trim()
        .to_owned();
    assert_eq!(chat(&server, &key).await, 200);
    assert!(server.terminate().success()); // writes the final checkpoint
    let old = key_file(&data);

    let rotated = ok(&run(&data, &["secrets", "rotate-master-key"], &env));
    assert!(rotated.contains("re-sealed 1 provider keys"), "{rotated}");
    assert!(!data.join("master.key.next").exists());
    assert_eq!(mode(&data.join("master.key")), 0o600);
    let new = key_file(&data);
    let (id, sealed) = provider_sealed(&data).await;
    assert_eq!(
        open(&new, &sealed, id.as_bytes()).unwrap().as_slice(),
        PLANTED.as_bytes()
    );
    assert!(open(&old, &sealed, id.as_bytes()).is_err());
    assert!(ok(&run(&data, &["audit", "verify"], &env)).starts_with("ok: "));

    // The retired key is refused with one line naming the setting.
    let old_file = dir.path().join("old.key");
    cortex_control::bootstrap::write_private_file(&old_file, b64(&old).as_bytes()).unwrap();
    let old_path = old_file.display().to_string();
    let with_old = [
        env[0],
        env[1],
        ("CORTEX_MASTER_KEY_FILE", old_path.as_str()),
    ];
    let stale = refused(&run(&data, &["audit", "verify"], &with_old));
    assert_eq!(stale.trim().lines().count(), 1, "{stale}");
    assert!(stale.contains("CORTEX_MASTER_KEY_FILE"), "{stale}");

    // The server runs on the new key: the provider secret still reaches upstream.
    let server = CortexProcess::start(&data, &env);
    let before = upstream.received().len();
    assert_eq!(chat(&server, &key).await, 200);
    assert_eq!(
        upstream.received()[before].headers["authorization"],
        format!("Bearer {PLANTED}")
    );
    assert!(server.terminate().success());

    // A key file others can read is refused, and nothing changes.
    let loose = dir.path().join("loose.key");
    std::fs::write(&loose, b64(&MasterKey::generate())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose_path = loose.display().to_string();
    refused(&run(
        &data,
        &[
            "secrets",
            "rotate-master-key",
            "--new-key-file",
            &loose_path,
        ],
        &env,
    ));
    assert_eq!(b64(&key_file(&data)), b64(&new));

    // An operator-supplied key becomes the key.
    let chosen = MasterKey::generate();
    let chosen_file = dir.path().join("chosen.key");
    cortex_control::bootstrap::write_private_file(&chosen_file, b64(&chosen).as_bytes()).unwrap();
    let chosen_path = chosen_file.display().to_string();
    ok(&run(
        &data,
        &[
            "secrets",
            "rotate-master-key",
            "--new-key-file",
            &chosen_path,
        ],
        &env,
    ));
    assert_eq!(b64(&key_file(&data)), b64(&chosen));
    let (id, sealed) = provider_sealed(&data).await;
    assert!(open(&chosen, &sealed, id.as_bytes()).is_ok());
    assert!(ok(&run(&data, &["audit", "verify"], &env)).starts_with("ok: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&run(&data, &["audit", "checkpoint"], &[]));
    let old = key_file(&data);
    let new = MasterKey::generate();
    // The transaction committed, then the process died before moving the new key file in place.
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    cortex_control::ops::secrets::rotate_master_key(&store, &old, &new, "test", 1)
        .await
        .unwrap();
    store.close().await;
    cortex_control::bootstrap::write_private_file(
        &data.join("master.key.next"),
        b64(&new).as_bytes(),
    )
    .unwrap();
    assert!(ok(&run(&data, &["audit", "verify"], &[])).starts_with("ok: "));
    assert_eq!(b64(&key_file(&data)), b64(&new));
    assert!(!data.join("master.key.next").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_import_reads_back_an_export_and_refuses_a_malformed_file() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream);
    let env = [
        ("CORTEX_CONFIG", config.as_str()),
        ("FAKE_PROVIDER_KEY", PLANTED),
    ];
    let source = dir.path().join("source");
    let server = CortexProcess::start(&source, &env);
    assert!(server.terminate().success());
    ok(&run(
        &source,
        &["config", "export", "--output", "exports/config.json"],
        &env,
    ));
    let exported = source.join("storage/exports/config.json");
    let exported_text = std::fs::read_to_string(&exported).unwrap();
    assert!(!exported_text.contains(PLANTED));

    let target = dir.path().join("target");
    let file = exported.display().to_string();
    let imported = ok(&run(&target, &["config", "import", &file], &[]));
    assert!(imported.contains("providers created: fake"), "{imported}");
    assert!(imported.contains("models created: llama"), "{imported}");
    assert!(imported.contains("set them for: fake"), "{imported}");
    let catalogue = |data: &Path| {
        let export: serde_json::Value =
            serde_json::from_str(&ok(&run(data, &["config", "export"], &[]))).unwrap();
        (
            export["models"].clone(),
            export["providers"][0]["base_url"].clone(),
        )
    };
    let source_env_free = catalogue(&source);
    assert_eq!(catalogue(&target), source_env_free);

    // Malformed: one line naming the problem, and the database is as it was.
    let before = catalogue(&target);
    let head = ok(&run(&target, &["audit", "verify"], &[]));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, exported_text.replace("\"base_url\"", "\"base_uri\"")).unwrap();
    let bad_path = bad.display().to_string();
    let error = refused(&run(&target, &["config", "import", &bad_path], &[]));
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    assert!(error.contains("unknown field"), "{error}");
    assert_eq!(catalogue(&target), before);
    // Each export above is audited, the refused import is not.
    let events_after = ok(&run(&target, &["audit", "verify"], &[]));
    let count = |s: &str| s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
    assert_eq!(count(&events_after), count(&head) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_erase_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&run(&data, &["migrate"], &[]));
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    let hash = cortex_crypto::password::hash_password(&ADMIN_PASSWORD.to_owned().into()).unwrap();
    store
        .create_user(
            &cortex_store::users::NewUser {
                id: "u-frank",
                username: "frank.personal",
                password_hash: &hash,
                role: cortex_domain::Role::Developer,
                must_change_password: false,
                org_id: "default",
                budget: None,
            },
            &cortex_domain::audit::NewAuditEvent::new("test", "user.create", "u-frank"),
            1,
        )
        .await
        .unwrap();
    store.close().await;
    ok(&run(
        &data,
        &[
            "keys",
            "create",
            "--name",
            "frank's key",
            "--owner",
            "frank.personal",
        ],
        &[],
    ));

    let erased = ok(&run(&data, &["users", "erase", "frank.personal"], &[]));
    assert!(erased.contains("1 keys anonymised"), "{erased}");
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    assert!(store
        .get_user_by_username(&cortex_store::Tenant::All, "frank.personal")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .list_api_keys(&cortex_store::Tenant::All, None)
        .await
        .unwrap()
        .iter()
        .all(|k| !k.name.contains("frank")));
    store.close().await;
    assert!(ok(&run(&data, &["audit", "verify"], &[])).starts_with("ok: "));
    // Nothing left to erase; the last admin cannot be erased.
    refused(&run(&data, &["users", "erase", "u-frank"], &[]));
    let last = refused(&run(&data, &["users", "erase", "admin"], &[]));
    assert!(last.contains("last active admin"), "{last}");
}

/// Issue 24, item 6, performed against the binary: someone with write access to the database but
/// not the master key deletes two events, renumbers the rest and recomputes the chain with plain
/// SHA-256, and deletes every checkpoint. `cortex audit verify` fails, and `cortex audit
/// checkpoint` refuses to sign the forged head. (Before the chain was keyed, verify printed ok.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_fails_after_the_history_is_rewritten_without_the_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&run(&data, &["migrate"], &[]));
    for i in 0..4 {
        ok(&run(
            &data,
            &["keys", "create", "--name", &format!("k{i}")],
            &[],
        ));
    }
    assert!(ok(&run(&data, &["audit", "verify"], &[])).starts_with("ok: "));

    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    let head = store.audit_head().await.unwrap().0;
    let forged = cortex_store::testing::forge_audit_chain(
        &store,
        &[2, 3],
        &cortex_domain::audit::ChainHasher::Legacy,
    )
    .await;
    assert_eq!(forged, head - 2);
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;

    let verdict = run(&data, &["audit", "verify"], &[]);
    assert!(!verdict.status.success());
    let verdict = text(&verdict.stdout);
    assert!(
        verdict.starts_with("FAILED: the audit log was changed at or before event #1:"),
        "{verdict}"
    );
    let refusal = run(&data, &["audit", "checkpoint"], &[]);
    assert!(!refusal.status.success());
    assert!(
        text(&refusal.stdout).starts_with("REFUSED: the audit log does not verify at event #1"),
        "{}",
        text(&refusal.stdout)
    );
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    assert!(store.checkpoints().await.unwrap().is_empty());
    store.close().await;
}

/// A database written before the chain was keyed: plain SHA-256 events and an unchained
/// checkpoint. The first command with the master key verifies it and re-keys it (audited, and
/// covered by a new checkpoint); a copy changed before the upgrade is refused and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_database_is_rekeyed_once_and_a_changed_one_is_refused() {
    use cortex_domain::audit::{legacy_checkpoint_message, NewAuditEvent};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&run(&data, &["migrate"], &[]));
    let key = MasterKey::generate();
    cortex_control::bootstrap::write_private_file(&data.join("master.key"), b64(&key).as_bytes())
        .unwrap();
    // The shape of an older database: events and a v1 checkpoint, no chain key.
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    for i in 0..3 {
        store
            .append_audit(
                &NewAuditEvent::new("admin", "key.create", format!("k{i}")),
                10 + i,
            )
            .await
            .unwrap();
    }
    let hash = store.audit_hash_at(3).await.unwrap().unwrap();
    let signature =
        cortex_control::ops::audit::signer(&key).sign(&legacy_checkpoint_message(3, &hash));
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, signature, created_at) VALUES (3, $1, $2, 20)",
    )
    .bind(&hash)
    .bind(&signature)
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;

    // A copy whose old chain was changed: never re-keyed, reported by verify, refused by others.
    let changed = dir.path().join("changed");
    std::fs::create_dir_all(&changed).unwrap();
    // The write-ahead log too, if closing the pool has not folded it into the file yet: without
    // it the copy can miss the events above, and the change below would change nothing.
    for file in ["cortex.db", "cortex.db-wal", "master.key"] {
        if file == "cortex.db-wal" && !data.join(file).exists() {
            continue;
        }
        std::fs::copy(data.join(file), changed.join(file)).unwrap();
    }
    let store = Store::open(&sqlite_url(&changed)).await.unwrap();
    let updated = sqlx::query("UPDATE audit_events SET target = 'someone-else' WHERE seq = 2")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1, "the copy holds the events");
    store.close().await;
    let verdict = run(&changed, &["audit", "verify"], &[]);
    assert!(!verdict.status.success());
    assert!(
        text(&verdict.stdout)
            .starts_with("FAILED: the audit log was changed at or before event #2"),
        "{}",
        text(&verdict.stdout)
    );
    let other = refused(&run(&changed, &["keys", "list"], &[]));
    assert!(other.contains("does not verify at event #2"), "{other}");

    // The intact one: re-keyed once, then verified like any keyed chain.
    assert!(ok(&run(&data, &["audit", "verify"], &[])).starts_with("ok: 5 events verified"));
    assert!(ok(&run(&data, &["audit", "verify"], &[])).starts_with("ok: 5 events verified"));
    let store = Store::open(&sqlite_url(&data)).await.unwrap();
    let last = store.audit_page(4, 10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].action, "audit.chain_keyed");
    assert_ne!(store.audit_hash_at(3).await.unwrap().unwrap(), hash);
    let checkpoints = store.checkpoints().await.unwrap();
    assert_eq!(
        checkpoints
            .iter()
            .map(|c| (c.seq, c.prev_seq))
            .collect::<Vec<_>>(),
        [(3, 0), (5, 3)]
    );
    store.close().await;
}
