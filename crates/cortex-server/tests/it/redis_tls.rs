//! Redis over TLS (`rediss://`): the limiter and the invalidation channel reach a TLS-only
//! Redis behind a private CA named by `CORTEX_REDIS_CA_FILE`, and refuse one they cannot verify.

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{FakeUpstream, TempRedis, TestServer};

use crate::upstream_tls::private_pki;
use crate::{assert_error, post_chat};

#[tokio::test]
async fn a_tls_redis_behind_a_private_ca_is_used_and_an_unverified_one_refused() {
    let pki = private_pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        dir.path().join("redis.pem"),
        dir.path().join("redis.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, &pki.leaf_pem).unwrap();
    std::fs::write(&key, &pki.leaf_key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let redis = TempRedis::start_tls(&cert, &key);
    assert!(redis.url().starts_with("rediss://"));
    let upstream = FakeUpstream::start().await;

    // Fail closed: a request can only pass if the limiter really reached Redis over TLS.
    let server = TestServer::builder()
        .env("REDIS_URL", &redis.url())
        .env("CORTEX_REDIS_CA_FILE", ca.to_str().unwrap())
        .env("CORTEX_REDIS_FAILURE_MODE", "fail-closed")
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 0.0, 0.0)
        .start()
        .await;
    let limited = server
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
    for _ in 0..2 {
        let response = post_chat(&server, &limited, "llama", false).await;
        assert_eq!(response.status(), 200);
    }
    let third = post_chat(&server, &limited, "llama", false).await;
    assert_error(third, 429, "rate_limit_exceeded").await;
    server.stop().await;

    // Without the CA, the server's certificate cannot be verified: start-up stops, naming Redis.
    let err = TestServer::builder()
        .env("REDIS_URL", &redis.url())
        .try_start()
        .await
        .err()
        .expect("an unverifiable Redis must stop start-up");
    assert!(err.to_string().starts_with("REDIS_URL"), "{err}");

    // A CA bundle with a plain redis:// URL is a mistake, refused as such.
    let file = cortex_config::FileConfig::default();
    let err = cortex_config::Config::resolve(file, None, &|name| match name {
        "REDIS_URL" => Some("redis://127.0.0.1:6379".to_owned()),
        "CORTEX_REDIS_CA_FILE" => Some(ca.display().to_string()),
        _ => None,
    })
    .unwrap_err();
    assert_eq!(err.setting, "CORTEX_REDIS_CA_FILE");
}
