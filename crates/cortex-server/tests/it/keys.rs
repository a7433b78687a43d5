use std::time::Duration;

use cortex_domain::{KeyLimits, Scope};
use cortex_server::keycache::KeyCache;
use cortex_server::keys_service::{self, KeySpec};
use cortex_testkit::eventually;

use crate::{all_scopes_key, assert_error, chat_body, gateway_with_upstream};

#[tokio::test]
async fn missing_malformed_and_wrong_keys_are_401_in_openai_shape() {
    let (server, _upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let http = server.http();
    let url = server.url("/v1/models");

    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_error(response, 401, "missing_credentials").await;
    assert_error(
        http.get(&url)
            .bearer_auth("sk-not-ours")
            .send()
            .await
            .unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    // Right public id, wrong secret (same length and alphabet).
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    assert_error(
        http.get(&url).bearer_auth(&wrong).send().await.unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    // The scheme is case-insensitive.
    let response = http
        .get(&url)
        .header("authorization", format!("bEaReR {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn revoked_and_expired_keys_are_refused() {
    let (server, _upstream) = gateway_with_upstream().await;
    let owner = server.admin_id().await;
    let (id, key) = server
        .create_key_with(KeySpec {
            name: "to revoke".into(),
            owner_user_id: owner.clone(),
            scopes: Scope::ALL.to_vec(),
            models: None,
            expires_at: None,
            limits: KeyLimits::default(),
        })
        .await;
    let http = server.http();
    assert_eq!(
        http.get(server.url("/v1/models"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let state = server.state();
    keys_service::revoke(
        state.store(),
        state.keys_cache(),
        &id,
        "test",
        "",
        state.now_millis(),
    )
    .await
    .unwrap();
    assert_error(
        http.get(server.url("/v1/models"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        401,
        "key_revoked",
    )
    .await;

    let (_, expiring) = server
        .create_key_with(KeySpec {
            name: "short-lived".into(),
            owner_user_id: owner,
            scopes: Scope::ALL.to_vec(),
            models: None,
            expires_at: Some(state.now_millis() + 300),
            limits: KeyLimits::default(),
        })
        .await;
    assert_eq!(
        http.get(server.url("/v1/models"))
            .bearer_auth(&expiring)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_error(
        http.get(server.url("/v1/models"))
            .bearer_auth(&expiring)
            .send()
            .await
            .unwrap(),
        401,
        "key_expired",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn keys_changed_outside_the_server_are_seen_within_a_second_or_two() {
    let (server, _upstream) = gateway_with_upstream().await;
    let state = server.state();
    // Another process (the CLI, another instance) writes to the database; this server only
    // learns of it by polling.
    let outside_cache = KeyCache::new();
    let spec = KeySpec {
        name: "from the cli".into(),
        owner_user_id: server.admin_id().await,
        scopes: vec![Scope::Chat],
        models: None,
        expires_at: None,
        limits: KeyLimits::default(),
    };
    let issued = keys_service::create(
        state.store(),
        &outside_cache,
        &spec,
        "cli",
        "",
        state.now_millis(),
    )
    .await
    .unwrap();
    let key = secrecy::ExposeSecret::expose_secret(&issued.key).to_owned();
    let http = server.http().clone();
    let url = server.url("/v1/models");
    assert!(
        eventually(Duration::from_secs(3), || async {
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
    keys_service::revoke(
        state.store(),
        &outside_cache,
        &issued.row.id,
        "cli",
        "",
        state.now_millis(),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
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
    server.stop().await;
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_its_grace_period() {
    let (server, _upstream) = gateway_with_upstream().await;
    let (id, old_key) = server
        .create_key_with(KeySpec {
            name: "rotating".into(),
            owner_user_id: server.admin_id().await,
            scopes: vec![Scope::Chat],
            models: None,
            expires_at: None,
            limits: KeyLimits::default(),
        })
        .await;
    let state = server.state();
    let old = state.store().get_api_key(&id).await.unwrap().unwrap();
    let issued = keys_service::rotate(
        state.store(),
        state.keys_cache(),
        &old,
        1,
        "test",
        "",
        state.now_millis(),
    )
    .await
    .unwrap();
    let new_key = secrecy::ExposeSecret::expose_secret(&issued.key).to_owned();
    let http = server.http();
    let chat = |key: String| {
        http.post(server.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body("llama", false))
            .send()
    };
    assert_eq!(chat(old_key.clone()).await.unwrap().status(), 200);
    assert_eq!(chat(new_key.clone()).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_error(chat(old_key).await.unwrap(), 401, "key_expired").await;
    assert_eq!(chat(new_key).await.unwrap().status(), 200);
    // Create, rotate: two audit events on the chain.
    let report = state.store().verify_audit(|_| {}).await.unwrap();
    assert!(report.ok());
    server.stop().await;
}
