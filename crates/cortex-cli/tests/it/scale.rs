//! Two `cortex serve` processes sharing one PostgreSQL and one Redis enforce the gateway-wide
//! `RATE_LIMIT_*` as one limit, and a key revoked from the command line (which announces
//! nothing) reaches the other instance through the database poll alone.

use std::time::{Duration, Instant};

use cortex_testkit::{eventually, TempRedis, TestDb};

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_enforce_one_global_rate_limit_and_share_revocations() {
    let db = TestDb::postgres().await;
    let redis = TempRedis::start();
    let cluster = Cluster::start(
        2,
        &db.url,
        &redis.url(),
        &[("RATE_LIMIT_RPS", "5"), ("RATE_LIMIT_BURST", "5")],
    )
    .await;
    let created = cluster.cli(&["keys", "create", "--name", "shared"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    cluster.until_accepted_everywhere(&key).await;

    // RPS 5 with bursts of 5: 100 requests spread over both within a second admit at most 10.
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the bucket refill fully
    let (admitted, elapsed) = cluster.burst(&key, 100).await;
    assert!(
        elapsed < Duration::from_secs(1),
        "the burst took {elapsed:?}"
    );
    assert!(
        (1..=10).contains(&admitted),
        "admitted {admitted} of 100 across two instances"
    );

    // The CLI writes the revocation to the database and announces nothing: instance B learns it
    // from its once-a-second poll.
    let listed = cluster.cli(&["keys", "list"]);
    let id = String::from_utf8(listed.stdout)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    assert!(cluster.cli(&["keys", "revoke", &id]).status.success());
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async {
            cluster.models_status(1, &key).await == 401
        })
        .await
    );
    let seen_after = started.elapsed();
    assert!(
        seen_after < Duration::from_millis(2500),
        "revocation took {seen_after:?}"
    );
    drop(cluster);
    db.cleanup().await;
}
