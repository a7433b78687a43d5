//! Two `cortex serve` processes sharing one PostgreSQL and one Redis act as one gateway.

use cortex_testkit::TestDb;

use crate::process::run;
use crate::CortexProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_enforce_one_global_rate_limit_and_share_revocations() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    // Both instances need the same master key to read each other's secrets.
    let master = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("CORTEX_MASTER_KEY", master),
        ("RATE_LIMIT_RPS", "5"),
        ("RATE_LIMIT_BURST", "5"),
    ];
    let a = CortexProcess::start(&data_a, &env);
    let b = CortexProcess::start(&data_b, &env);
    let created = run(&data_a, &["keys", "create", "--name", "shared"], &env);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    // Both instances learn the key by polling; wait until each accepts it once.
    for server in [&a, &b] {
        let url = server.url("/v1/models");
        assert!(
            cortex_testkit::eventually(std::time::Duration::from_secs(5), || async {
                http.get(&url)
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    == 200
            })
            .await
        );
    }
    // Let the bucket refill completely (burst 5 at 5/s: one second).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let url = if i % 2 == 0 {
            a.url("/v1/models")
        } else {
            b.url("/v1/models")
        };
        let (http, key) = (http.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut admitted = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            200 => admitted += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(1),
        "the burst took {elapsed:?}"
    );
    assert!(
        (1..=10).contains(&admitted),
        "admitted {admitted} of 100 across two instances (refused {refused})"
    );

    // A key revoked through instance A is refused by instance B within a second or so.
    let listed = run(&data_a, &["keys", "list"], &env);
    let id = String::from_utf8(listed.stdout)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    let revoked = run(&data_a, &["keys", "revoke", &id], &env);
    assert!(revoked.status.success());
    let url = b.url("/v1/models");
    let started = std::time::Instant::now();
    assert!(
        cortex_testkit::eventually(std::time::Duration::from_secs(3), || async {
            http.get(&url)
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .status()
                == 401
        })
        .await
    );
    let seen_after = started.elapsed();
    assert!(
        seen_after < std::time::Duration::from_millis(2500),
        "revocation took {seen_after:?}"
    );

    // Through the admin API of A, the change is announced over Redis: B sees a new key and its
    // revocation well within a second.
    let login: serde_json::Value = http
        .post(a.url("/admin/auth/login"))
        .json(
            &serde_json::json!({ "username": "admin", "password": crate::process::ADMIN_PASSWORD }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let created: serde_json::Value = http
        .post(a.url("/admin/keys"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": "announced", "scopes": ["chat"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh = created["key"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    assert!(
        cortex_testkit::eventually(std::time::Duration::from_secs(3), || async {
            http.get(&url)
                .bearer_auth(&fresh)
                .send()
                .await
                .unwrap()
                .status()
                == 200
        })
        .await
    );
    let seen_after = started.elapsed();
    let revoked = http
        .delete(a.url(&format!("/admin/keys/{}", created["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let started = std::time::Instant::now();
    assert!(
        cortex_testkit::eventually(std::time::Duration::from_secs(3), || async {
            http.get(&url)
                .bearer_auth(&fresh)
                .send()
                .await
                .unwrap()
                .status()
                == 401
        })
        .await
    );
    let revoked_after = started.elapsed();
    assert!(
        revoked_after < std::time::Duration::from_secs(1),
        "B refused the revoked key only after {revoked_after:?}"
    );
    eprintln!("creation seen by B after {seen_after:?}, revocation after {revoked_after:?}");
    drop((a, b));
    db.cleanup().await;
}
