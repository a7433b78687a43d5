//! Service accounts and OAuth 2.0 client credentials (SPEC §19): a token is issued for the right
//! secret only, works on the admin API within the account's role and organization, and stops
//! working when the secret is rotated or the account disabled; every token issued is audited.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cortex_testkit::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin::{admin, Session};
use crate::{assert_error, audit_events, gateway_with_upstream, post_chat};

/// A service account as the create (or rotate) answer shows it once.
struct Account {
    id: String,
    client_id: String,
    client_secret: String,
}

async fn send(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = server
        .http()
        .request(method, server.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn create_account(server: &TestServer, by: &Session, body: Value) -> Account {
    let response = send(
        server,
        &by.access_token,
        Method::POST,
        "/admin/service-accounts",
        Some(body),
    )
    .await;
    let status = response.status();
    let created: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{created}");
    Account {
        id: created["id"].as_str().unwrap().to_owned(),
        client_id: created["client_id"].as_str().unwrap().to_owned(),
        client_secret: created["client_secret"].as_str().unwrap().to_owned(),
    }
}

/// `POST /oauth/token` with HTTP Basic.
async fn token_request(server: &TestServer, client_id: &str, secret: &str) -> reqwest::Response {
    server
        .http()
        .post(server.url("/oauth/token"))
        .header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{client_id}:{secret}"))),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap()
}

async fn token(server: &TestServer, account: &Account) -> String {
    let response = token_request(server, &account.client_id, &account.client_secret).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    body["access_token"].as_str().unwrap().to_owned()
}

async fn oauth_error(response: reqwest::Response, status: u16, error: &str) {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], error, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_within_the_role_and_stops_after_rotation_or_disabling() {
    let server = TestServer::builder()
        .env("CORTEX_REQUIRE_MFA_FOR", "operator")
        .start()
        .await;
    let root = admin(&server).await;
    let account = create_account(
        &server,
        &root,
        json!({ "name": "deploy-bot", "role": "operator", "description": "CI deploys" }),
    )
    .await;
    assert!(account.client_id.starts_with("sa_"));
    assert!(account.client_secret.starts_with("ctxsa_"));

    // The secret is shown once: neither the list nor one account carries it.
    for path in [
        "/admin/service-accounts".to_owned(),
        format!("/admin/service-accounts/{}", account.id),
    ] {
        let text = send(&server, &root.access_token, Method::GET, &path, None)
            .await
            .text()
            .await
            .unwrap();
        assert!(text.contains(&account.client_id), "{text}");
        assert!(!text.contains(&account.client_secret), "{path}: {text}");
        assert!(!text.contains("client_secret"), "{path}: {text}");
    }
    // Nor is it in the database: only its SHA-256.
    let stored = server
        .state()
        .store()
        .get_service_account(&cortex_store::Tenant::All, &account.id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stored.secret_hash, account.client_secret);
    assert_eq!(stored.secret_hash.len(), 64);
    // A service account is no user of the users list.
    let users = send(
        &server,
        &root.access_token,
        Method::GET,
        "/admin/users",
        None,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(!users.contains("deploy-bot"), "{users}");

    // Within the role: an operator reads users and providers and manages providers. MFA is
    // required for operators, but a service account has no second factor to enrol.
    let operator = token(&server, &account).await;
    for path in ["/admin/users", "/admin/providers", "/admin/audit"] {
        let response = send(&server, &operator, Method::GET, path, None).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let provider = send(
        &server,
        &operator,
        Method::POST,
        "/admin/providers",
        Some(json!({ "name": "by-bot", "base_url": "http://127.0.0.1:9/v1" })),
    )
    .await;
    assert_eq!(provider.status(), 201);
    let me: Value = send(&server, &operator, Method::GET, "/admin/me", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            &me["username"],
            &me["role"],
            &me["kind"],
            &me["session_method"]
        ),
        (
            &json!("deploy-bot"),
            &json!("operator"),
            &json!("service"),
            &json!("client_credentials")
        )
    );
    // Outside it: users are Admin's, and so are service accounts.
    let refused = send(
        &server,
        &operator,
        Method::POST,
        "/admin/users",
        Some(json!({ "username": "sneaky", "password": "Correct-Horse-Battery-42", "role": "admin" })),
    )
    .await;
    assert_error(refused, 403, "forbidden").await;
    let refused = send(
        &server,
        &operator,
        Method::POST,
        &format!("/admin/service-accounts/{}/rotate", account.id),
        None,
    )
    .await;
    assert_error(refused, 403, "forbidden").await;
    // It has no password or second factor, and no console.
    let no_password = send(
        &server,
        &operator,
        Method::POST,
        "/admin/auth/password",
        Some(json!({ "current_password": "x", "new_password": "Correct-Horse-Battery-42" })),
    )
    .await;
    assert_error(no_password, 403, "forbidden").await;
    let no_totp = send(&server, &operator, Method::POST, "/admin/me/totp", None).await;
    assert_error(no_totp, 403, "forbidden").await;
    let login = server
        .http()
        .post(server.url("/admin/auth/login"))
        .json(&json!({ "username": "deploy-bot", "password": account.client_secret }))
        .send()
        .await
        .unwrap();
    assert_error(login, 401, "invalid_credentials").await;

    // Every token issued is audited, with the account as the actor.
    let issued = audit_events(server.state().store(), Some("service_account.token"), 10).await;
    assert_eq!(issued.len(), 1);
    assert_eq!(
        (issued[0].actor.as_str(), issued[0].target.as_str()),
        ("deploy-bot", account.id.as_str())
    );

    // Wrong secrets, unknown clients, a bearer token or no credentials: invalid_client.
    oauth_error(
        token_request(&server, &account.client_id, "ctxsa_wrong").await,
        401,
        "invalid_client",
    )
    .await;
    oauth_error(
        token_request(&server, "sa_nobody", &account.client_secret).await,
        401,
        "invalid_client",
    )
    .await;
    let refusals = audit_events(
        server.state().store(),
        Some("service_account.token_refused"),
        10,
    )
    .await;
    assert_eq!(refusals.len(), 2);

    // Rotation: the old secret and the tokens issued under it stop at once.
    let rotated: Value = send(
        &server,
        &root.access_token,
        Method::POST,
        &format!("/admin/service-accounts/{}/rotate", account.id),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(rotated["client_id"], account.client_id.as_str());
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, account.client_secret);
    oauth_error(
        token_request(&server, &account.client_id, &account.client_secret).await,
        401,
        "invalid_client",
    )
    .await;
    assert_error(
        send(&server, &operator, Method::GET, "/admin/users", None).await,
        401,
        "unauthenticated",
    )
    .await;
    let account = Account {
        client_secret: new_secret,
        ..account
    };
    let after_rotation = token(&server, &account).await;
    assert_eq!(
        send(&server, &after_rotation, Method::GET, "/admin/users", None)
            .await
            .status(),
        200
    );

    // Disabled: its tokens stop and no new one is issued; enabled again, it works.
    let disabled = send(
        &server,
        &root.access_token,
        Method::PATCH,
        &format!("/admin/service-accounts/{}", account.id),
        Some(json!({ "disabled": true })),
    )
    .await;
    assert_eq!(disabled.status(), 200);
    assert_error(
        send(&server, &after_rotation, Method::GET, "/admin/users", None).await,
        401,
        "unauthenticated",
    )
    .await;
    oauth_error(
        token_request(&server, &account.client_id, &account.client_secret).await,
        401,
        "invalid_client",
    )
    .await;
    send(
        &server,
        &root.access_token,
        Method::PATCH,
        &format!("/admin/service-accounts/{}", account.id),
        Some(json!({ "disabled": false, "role": "viewer" })),
    )
    .await;
    let viewer = token(&server, &account).await;
    assert_eq!(
        send(&server, &viewer, Method::GET, "/admin/users", None)
            .await
            .status(),
        200
    );
    assert_error(
        send(
            &server,
            &viewer,
            Method::POST,
            "/admin/providers",
            Some(json!({ "name": "by-viewer", "base_url": "http://127.0.0.1:9/v1" })),
        )
        .await,
        403,
        "forbidden",
    )
    .await;

    // Deleted: gone, tokens with it.
    let deleted = send(
        &server,
        &root.access_token,
        Method::DELETE,
        &format!("/admin/service-accounts/{}", account.id),
        None,
    )
    .await;
    assert_eq!(deleted.status(), 200);
    assert_error(
        send(&server, &viewer, Method::GET, "/admin/users", None).await,
        401,
        "unauthenticated",
    )
    .await;
    oauth_error(
        token_request(&server, &account.client_id, &account.client_secret).await,
        401,
        "invalid_client",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_token_endpoint_speaks_rfc_6749() {
    let server = TestServer::builder().start().await;
    let root = admin(&server).await;
    let account = create_account(
        &server,
        &root,
        json!({ "name": "poster", "role": "viewer" }),
    )
    .await;
    let post = |body: String, content_type: &'static str| {
        let request = server
            .http()
            .post(server.url("/oauth/token"))
            .header("content-type", content_type)
            .body(body);
        async move { request.send().await.unwrap() }
    };
    const FORM: &str = "application/x-www-form-urlencoded";
    // client_secret_post works as well as Basic.
    let posted = post(
        format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&scope=anything",
            account.client_id, account.client_secret
        ),
        FORM,
    )
    .await;
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.headers()["pragma"], "no-cache");
    let unsupported = post(
        format!(
            "grant_type=password&client_id={}&client_secret={}",
            account.client_id, account.client_secret
        ),
        FORM,
    )
    .await;
    oauth_error(unsupported, 400, "unsupported_grant_type").await;
    oauth_error(post(String::new(), FORM).await, 400, "invalid_request").await;
    let repeated = post(
        format!(
            "grant_type=client_credentials&grant_type=client_credentials&client_id={}&client_secret={}",
            account.client_id, account.client_secret
        ),
        FORM,
    )
    .await;
    oauth_error(repeated, 400, "invalid_request").await;
    let json_body = post(
        json!({ "grant_type": "client_credentials", "client_id": account.client_id, "client_secret": account.client_secret }).to_string(),
        "application/json",
    )
    .await;
    oauth_error(json_body, 400, "invalid_request").await;
    let anonymous = post("grant_type=client_credentials".to_owned(), FORM).await;
    assert!(anonymous.headers().contains_key("www-authenticate"));
    oauth_error(anonymous, 401, "invalid_client").await;
    // Both ways at once is ambiguous: refused.
    let both = server
        .http()
        .post(server.url("/oauth/token"))
        .basic_auth(&account.client_id, Some(&account.client_secret))
        .header("content-type", FORM)
        .body(format!(
            "grant_type=client_credentials&client_secret={}",
            account.client_secret
        ))
        .send()
        .await
        .unwrap();
    oauth_error(both, 400, "invalid_request").await;

    // Failures are charged to the client address: a flood of wrong secrets is cut off.
    let mut limited = false;
    for _ in 0..40 {
        let response = token_request(&server, &account.client_id, "ctxsa_wrong").await;
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            limited = true;
            break;
        }
        assert_eq!(response.status(), 401);
    }
    assert!(limited, "wrong secrets are rate limited per address");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_acts_only_in_its_organization_and_owns_its_keys() {
    let (server, _upstream) = gateway_with_upstream().await;
    let root = admin(&server).await;
    let created: Value = send(
        &server,
        &root.access_token,
        Method::POST,
        "/admin/orgs",
        Some(json!({ "name": "acme" })),
    )
    .await
    .json()
    .await
    .unwrap();
    let acme = created["id"].as_str().unwrap().to_owned();
    let acme_admin = create_account(
        &server,
        &root,
        json!({ "name": "acme-bot", "role": "admin", "org_id": acme }),
    )
    .await;
    let acme_dev = create_account(
        &server,
        &root,
        json!({ "name": "acme-dev-bot", "role": "developer", "org_id": acme }),
    )
    .await;
    let default_bot = create_account(
        &server,
        &root,
        json!({ "name": "home-bot", "role": "viewer" }),
    )
    .await;

    // The organization's admin account sees its organization only.
    let acme_token = token(&server, &acme_admin).await;
    let accounts = send(
        &server,
        &acme_token,
        Method::GET,
        "/admin/service-accounts",
        None,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(accounts.contains("acme-dev-bot"), "{accounts}");
    assert!(!accounts.contains("home-bot"), "{accounts}");
    for (method, path, body) in [
        (
            Method::GET,
            format!("/admin/service-accounts/{}", default_bot.id),
            None,
        ),
        (
            Method::PATCH,
            format!("/admin/service-accounts/{}", default_bot.id),
            Some(json!({ "disabled": true })),
        ),
        (
            Method::POST,
            format!("/admin/service-accounts/{}/rotate", default_bot.id),
            None,
        ),
        (
            Method::DELETE,
            format!("/admin/service-accounts/{}", default_bot.id),
            None,
        ),
        (
            Method::PATCH,
            format!("/admin/users/{}", root.user_id),
            Some(json!({ "disabled": true })),
        ),
    ] {
        let response = send(&server, &acme_token, method.clone(), &path, body).await;
        assert_eq!(response.status(), 404, "{method} {path}");
    }
    let elsewhere = send(
        &server,
        &acme_token,
        Method::POST,
        "/admin/service-accounts",
        Some(json!({ "name": "planted", "role": "admin", "org_id": "default" })),
    )
    .await;
    assert_error(elsewhere, 404, "not_found").await;
    // Deployment-wide routes are the default organization's.
    assert_error(
        send(&server, &acme_token, Method::GET, "/admin/providers", None).await,
        403,
        "forbidden",
    )
    .await;
    // The default organization's bot still works: nothing was changed from acme.
    token(&server, &default_bot).await;

    // A developer account creates its own key, which works on /v1 and belongs to acme.
    let dev_token = token(&server, &acme_dev).await;
    let key: Value = send(
        &server,
        &dev_token,
        Method::POST,
        "/admin/keys",
        Some(json!({ "name": "ci key", "scopes": ["chat"] })),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(key["org_id"], acme.as_str(), "{key}");
    assert_eq!(key["owner"], acme_dev.id.as_str(), "{key}");
    let chat = post_chat(&server, key["key"].as_str().unwrap(), "llama", false).await;
    assert_eq!(chat.status(), 200);
    // Disabling the account suspends its keys, as for a user.
    send(
        &server,
        &acme_token,
        Method::PATCH,
        &format!("/admin/service-accounts/{}", acme_dev.id),
        Some(json!({ "disabled": true })),
    )
    .await;
    let suspended = post_chat(&server, key["key"].as_str().unwrap(), "llama", false).await;
    assert_error(suspended, 401, "key_owner_disabled").await;
    server.stop().await;
}
