//! The admin API: login and tokens, MFA, RBAC on every route, and attacks that must fail.

use std::sync::Arc;

use base64::Engine;
use cortex_control::keys::KeySpec;
use cortex_domain::clock::ManualClock;
use cortex_domain::{Clock, KeyLimits, Role, Scope, SystemClock};
use cortex_server::admin::{Access, ADMIN_ROUTES};
use cortex_testkit::{TestServer, ADMIN_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{assert_error, audit_events};

pub const NEW_PASSWORD: &str = "Another-Fixture-Passphrase-58d2";

pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub cookie: String,
    pub user_id: String,
}

pub async fn login(
    server: &TestServer,
    username: &str,
    password: &str,
    extra: Value,
) -> reqwest::Response {
    let mut body = json!({ "username": username, "password": password });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    server
        .http()
        .post(server.url("/admin/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub async fn session(server: &TestServer, username: &str, password: &str) -> Session {
    let response = login(server, username, password, json!({})).await;
    assert_eq!(response.status(), 200, "login as {username}");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let access_token = body["access_token"].as_str().unwrap().to_owned();
    let me: Value = server
        .http()
        .get(server.url("/admin/me"))
        .bearer_auth(&access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Session {
        access_token,
        refresh_token: body["refresh_token"].as_str().unwrap().to_owned(),
        cookie: cookie.split(';').next().unwrap().to_owned(),
        user_id: me["id"].as_str().unwrap().to_owned(),
    }
}

pub async fn admin(server: &TestServer) -> Session {
    session(server, "admin", ADMIN_PASSWORD).await
}

/// Creates a user with `role` through the API, logs in, changes the forced password.
/// Creates `username` with `role` (password `ADMIN_PASSWORD`, to be changed at first login)
/// through the admin API as `admin`; returns the new user's id.
pub async fn create_user(
    server: &TestServer,
    admin: &Session,
    username: &str,
    role: Role,
) -> String {
    let created = server
        .http()
        .post(server.url("/admin/users"))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "username": username, "password": ADMIN_PASSWORD, "role": role.as_str() }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let body: Value = created.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

pub async fn user_with_role(
    server: &TestServer,
    admin: &Session,
    username: &str,
    role: Role,
) -> Session {
    create_user(server, admin, username, role).await;
    let first = session(server, username, ADMIN_PASSWORD).await;
    let changed = server
        .http()
        .post(server.url("/admin/auth/password"))
        .bearer_auth(&first.access_token)
        .json(&json!({ "current_password": ADMIN_PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    first
}

#[tokio::test]
async fn login_answers_tokens_and_a_hardened_cookie() {
    let server = TestServer::builder().start().await;
    let response = login(&server, "admin", ADMIN_PASSWORD, json!({})).await;
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("cortex_session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: no Secure");
    let body: Value = response.json().await.unwrap();
    assert!(body["access_token"].as_str().unwrap().split('.').count() == 3);
    assert!(body["refresh_token"].as_str().unwrap().len() >= 40);
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["must_change_password"], false);

    let wrong = login(&server, "admin", "Not-The-Password-123", json!({})).await;
    assert_error(wrong, 401, "invalid_credentials").await;
    let unknown = login(&server, "nobody", "Not-The-Password-123", json!({})).await;
    assert_error(unknown, 401, "invalid_credentials").await;
    server.stop().await;
}

#[tokio::test]
async fn secure_cookie_behind_tls() {
    let server = TestServer::builder()
        .env("CORTEX_BEHIND_TLS", "true")
        .start()
        .await;
    let response = login(&server, "admin", ADMIN_PASSWORD, json!({})).await;
    assert_eq!(response.status(), 200);
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    // Over TLS both cookies carry the `__Host-` prefix, which browsers accept only with Secure,
    // Path=/ and no Domain: no other host and no plain-HTTP page can plant or replace them.
    for name in ["__Host-cortex_session=", "__Host-cortex_device="] {
        let cookie = cookies
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {cookies:?}"));
        assert!(
            cookie.contains("; Secure") && cookie.contains("; Path=/"),
            "{cookie}"
        );
        assert!(!cookie.to_lowercase().contains("domain="), "{cookie}");
    }
    let session = cookies[0].split(';').next().unwrap().to_owned();
    let token = session.trim_start_matches("__Host-cortex_session=");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get_with = |path: &str, cookie: &str| {
        let request = http.get(server.url(path)).header("cookie", cookie);
        async move { request.send().await.unwrap() }
    };
    let unprefixed = format!("cortex_session={token}");
    // The prefixed cookie opens the API and the console; the unprefixed name is not read.
    assert_eq!(get_with("/admin/me", &session).await.status(), 200);
    assert_error(
        get_with("/admin/me", &unprefixed).await,
        401,
        "unauthenticated",
    )
    .await;
    assert_eq!(get_with("/ui/", &session).await.status(), 200);
    assert_eq!(get_with("/ui/", &unprefixed).await.status(), 303);
    // CSRF protection sees the prefixed cookie: a change without a trusted Origin is refused.
    let forged = http
        .post(server.url("/admin/keys"))
        .header("cookie", &session)
        .json(&json!({ "name": "csrf", "scopes": ["chat"] }))
        .send()
        .await
        .unwrap();
    assert_error(forged, 403, "csrf_origin_mismatch").await;
    let own = http
        .post(server.url("/admin/keys"))
        .header("cookie", &session)
        .header("origin", format!("https://{}", server.addr))
        .json(&json!({ "name": "from the console", "scopes": ["chat"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 201);
    let logout = http
        .post(server.url("/admin/auth/logout"))
        .header("cookie", &session)
        .header("origin", format!("https://{}", server.addr))
        .send()
        .await
        .unwrap();
    assert!(logout.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("__Host-cortex_session=;"));
    server.stop().await;
}

/// Builds a request for `route` that would succeed for a permitted caller.
fn engine_fixture(name: &str) -> Value {
    json!({ "name": name, "engine": "vllm", "runtime": "process", "model": "org/model", "restart": "never" })
}

async fn request_for(
    server: &TestServer,
    admin: &Session,
    caller: &Session,
    method: &Method,
    path: &str,
    n: usize,
) -> reqwest::RequestBuilder {
    let http = server.http();
    let unique = format!("fixture{n}");
    let mut path = path.to_owned();
    let mut body: Option<Value> = None;
    if path.contains("/admin/users/{id}") {
        let created: Value = http
            .post(server.url("/admin/users"))
            .bearer_auth(&admin.access_token)
            .json(&json!({ "username": unique, "password": ADMIN_PASSWORD, "role": "viewer" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        path = path.replace("{id}", created["id"].as_str().unwrap());
        body = (method == Method::PATCH).then(|| json!({ "disabled": false }));
    } else if path.contains("/admin/keys/{id}") {
        let spec = KeySpec {
            name: unique.clone(),
            owner_user_id: caller.user_id.clone(),
            scopes: vec![Scope::Chat],
            models: None,
            expires_at: None,
            limits: KeyLimits::default(),
            org_id: cortex_domain::DEFAULT_ORG.to_owned(),
            team_id: None,
            allowed_ips: None,
        };
        let (id, _) = server.create_key_with(spec).await;
        path = path.replace("{id}", &id);
        body = path
            .ends_with("/rotate")
            .then(|| json!({ "grace_period_seconds": 0 }));
    } else if path.contains("/admin/providers/{id}") || path.contains("/admin/models/{id}") {
        let provider: Value = http
            .post(server.url("/admin/providers"))
            .bearer_auth(&admin.access_token)
            .json(&json!({ "name": format!("p-{unique}"), "base_url": "http://127.0.0.1:9/v1" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if path.contains("/admin/providers/") {
            path = path.replace("{id}", provider["id"].as_str().unwrap());
            body =
                (method == Method::PATCH).then(|| json!({ "base_url": "http://127.0.0.1:10/v1" }));
        } else {
            let model: Value = http
                .post(server.url("/admin/models"))
                .bearer_auth(&admin.access_token)
                .json(&json!({ "name": format!("m-{unique}"), "provider": provider["name"] }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            path = path.replace("{id}", model["id"].as_str().unwrap());
            body = (method == Method::PATCH).then(|| json!({ "input_price_per_mtok": 1.5 }));
        }
    } else if path.contains("/admin/engines/{id}") {
        // A vLLM engine from a Hugging Face repo id: it is never reachable (starting it fails
        // at once where `vllm` is not installed), which is all the matrix needs.
        let created: Value = http
            .post(server.url("/admin/engines"))
            .bearer_auth(&admin.access_token)
            .json(&engine_fixture(&unique))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        path = path.replace("{id}", created["id"].as_str().unwrap());
        body = (method == Method::PATCH).then(|| json!({ "auto_start": false }));
    } else if path.contains("/admin/orgs/{id}") || path.contains("/admin/teams/{id}") {
        let (collection, create) = if path.contains("/admin/orgs/") {
            ("/admin/orgs", json!({ "name": format!("o-{unique}") }))
        } else {
            ("/admin/teams", json!({ "name": format!("t-{unique}") }))
        };
        let created: Value = http
            .post(server.url(collection))
            .bearer_auth(&admin.access_token)
            .json(&create)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        path = path.replace("{id}", created["id"].as_str().unwrap());
        body = if path.ends_with("/members") {
            Some(json!({ "user_ids": [] }))
        } else {
            (method == Method::PATCH).then(|| json!({ "name": format!("r-{unique}") }))
        };
    } else if path.contains("/admin/service-accounts/{id}") {
        let created: Value = http
            .post(server.url("/admin/service-accounts"))
            .bearer_auth(&admin.access_token)
            .json(&json!({ "name": format!("sa-{unique}"), "role": "viewer" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        path = path.replace("{id}", created["id"].as_str().unwrap());
        body = (method == Method::PATCH).then(|| json!({ "disabled": false }));
    } else if path.contains("/admin/policies") {
        // A policy needs a target of its own: a fresh key of the admin's each time.
        let key: Value = http
            .post(server.url("/admin/keys"))
            .bearer_auth(&admin.access_token)
            .json(&json!({ "name": format!("pk-{unique}"), "scopes": ["chat"] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let create = json!({ "scope": "key", "target": key["id"], "cache": { "ttl_seconds": 60 } });
        if path.contains("{id}") {
            let created: Value = http
                .post(server.url("/admin/policies"))
                .bearer_auth(&admin.access_token)
                .json(&create)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            path = path.replace("{id}", created["id"].as_str().unwrap());
            body = (method == Method::PATCH).then(|| json!({ "cache": null }));
        } else if method == Method::POST {
            body = Some(create);
        }
    } else if method == Method::POST {
        body = Some(match path.as_str() {
            "/admin/orgs" => json!({ "name": unique }),
            "/admin/teams" => json!({ "name": unique }),
            "/admin/users" => {
                json!({ "username": unique, "password": ADMIN_PASSWORD, "role": "viewer" })
            }
            "/admin/keys" => json!({ "name": unique, "scopes": ["chat"] }),
            "/admin/service-accounts" => json!({ "name": unique, "role": "viewer" }),
            "/admin/providers" => json!({ "name": unique, "base_url": "http://127.0.0.1:9/v1" }),
            "/admin/models" => {
                let provider: Value = http
                    .post(server.url("/admin/providers"))
                    .bearer_auth(&admin.access_token)
                    .json(&json!({ "name": format!("p-{unique}"), "base_url": "http://127.0.0.1:9/v1" }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                json!({ "name": unique, "provider": provider["id"] })
            }
            "/admin/engines" | "/admin/engines/dry-run" => engine_fixture(&unique),
            other => panic!("no fixture for POST {other}"),
        });
    }
    let mut request = http.request(method.clone(), server.url(&path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_under_every_role_follows_the_matrix() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let mut callers = vec![(Role::Admin, admin_session_again(&server).await)];
    for role in [Role::Operator, Role::Developer, Role::Viewer, Role::Billing] {
        callers.push((
            role,
            user_with_role(&server, &admin, &format!("as-{}", role.as_str()), role).await,
        ));
    }
    let mut n = 0;
    let mut checked = 0;
    for route in ADMIN_ROUTES {
        let Access::AnyOf(permissions) = route.access else {
            continue;
        };
        let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
        n += 1;
        let anonymous = request_for(&server, &admin, &callers[0].1, &method, route.path, n)
            .await
            .send()
            .await
            .unwrap();
        assert_eq!(
            anonymous.status(),
            StatusCode::UNAUTHORIZED,
            "{} {} without credentials",
            route.method,
            route.path
        );
        for (role, caller) in &callers {
            n += 1;
            let response = request_for(&server, &admin, caller, &method, route.path, n)
                .await
                .bearer_auth(&caller.access_token)
                .send()
                .await
                .unwrap();
            let allowed = permissions.iter().any(|p| role.permits(*p));
            let status = response.status();
            if allowed {
                assert!(
                    status.is_success(),
                    "{} {} as {role:?}: {status} {}",
                    route.method,
                    route.path,
                    response.text().await.unwrap()
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{} {} as {role:?}",
                    route.method,
                    route.path
                );
            }
            checked += 1;
        }
    }
    let guarded = ADMIN_ROUTES
        .iter()
        .filter(|r| matches!(r.access, Access::AnyOf(_)))
        .count();
    assert_eq!(checked, guarded * 5, "every guarded route under every role");
    assert!(
        guarded >= 40,
        "routes went missing from the table: {guarded}"
    );
    assert!(ADMIN_ROUTES.iter().any(|r| r.path == "/admin/features"));
    server.stop().await;
}

async fn admin_session_again(server: &TestServer) -> Session {
    admin(server).await
}

#[tokio::test]
async fn forged_expired_and_misaddressed_tokens_are_refused() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let me = |token: String| {
        server
            .http()
            .get(server.url("/admin/me"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(me(admin.access_token.clone()).await.unwrap().status(), 200);

    let parts: Vec<&str> = admin.access_token.split('.').collect();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Tampered payload: role changed, signature kept.
    let payload = String::from_utf8(engine.decode(parts[1]).unwrap())
        .unwrap()
        .replace("\"admin\"", "\"viewer\"");
    let tampered = format!("{}.{}.{}", parts[0], engine.encode(payload), parts[2]);
    assert_error(me(tampered).await.unwrap(), 401, "unauthenticated").await;
    // alg: none.
    let none = format!(
        "{}.{}.",
        engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_error(me(none).await.unwrap(), 401, "unauthenticated").await;
    // Right key, wrong audience: derive the signing key the way the server does.
    let master = std::fs::read_to_string(server.data_dir().join("master.key")).unwrap();
    let master = cortex_crypto::envelope::MasterKey::parse(&master).unwrap();
    let subkey = master.derive_subkey("cortex-jwt-v1");
    let other_aud = cortex_crypto::jwt::JwtKeys::new(
        secrecy::ExposeSecret::expose_secret(&subkey),
        "cortex",
        "someone-else",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (wrong_aud, _) = other_aud
        .issue(&admin.user_id, "any-session", "admin", now, 600)
        .unwrap();
    assert_error(me(wrong_aud).await.unwrap(), 401, "unauthenticated").await;
    // Expired: a token for the admin's real session, signed with the server's key and
    // audience, issued an hour ago with a ten-minute lifetime. The same token issued now
    // passes, so only its expiry refuses it.
    let claims: serde_json::Value =
        serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    let session_id = claims["sid"].as_str().unwrap();
    let right_aud = cortex_crypto::jwt::JwtKeys::new(
        secrecy::ExposeSecret::expose_secret(&subkey),
        "cortex",
        "cortex-admin",
    );
    let (current, _) = right_aud
        .issue(&admin.user_id, session_id, "admin", now, 600)
        .unwrap();
    assert_eq!(me(current).await.unwrap().status(), 200);
    let (expired, _) = right_aud
        .issue(&admin.user_id, session_id, "admin", now - 3600, 600)
        .unwrap();
    assert_error(me(expired).await.unwrap(), 401, "unauthenticated").await;
    server.stop().await;
}

async fn refresh(server: &TestServer, token: &str) -> reqwest::Response {
    server
        .http()
        .post(server.url("/admin/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_kills_the_family() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let first = refresh(&server, &admin.refresh_token).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let second_token = first["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_token, admin.refresh_token);
    let second = refresh(&server, &second_token).await;
    assert_eq!(second.status(), 200);
    let newest: Value = second.json().await.unwrap();
    let newest_token = newest["refresh_token"].as_str().unwrap().to_owned();

    // An attacker replays the first (used) token: refused, and the family dies.
    assert_error(
        refresh(&server, &admin.refresh_token).await,
        401,
        "unauthenticated",
    )
    .await;
    assert_error(
        refresh(&server, &newest_token).await,
        401,
        "unauthenticated",
    )
    .await;
    // The session is gone too: its access token and cookie stop working.
    let me = server
        .http()
        .get(server.url("/admin/me"))
        .bearer_auth(newest["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401);
    let audit = audit_events(server.state().store(), Some("auth.refresh_token_reuse"), 10).await;
    assert_eq!(audit.len(), 1, "reuse is audited");
    assert_error(
        refresh(&server, "made-up-token").await,
        401,
        "unauthenticated",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn totp_enrolment_login_replay_and_recovery_codes() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let http = server.http();
    let enrol: Value = http
        .post(server.url("/admin/me/totp"))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret_b32 = enrol["secret"].as_str().unwrap();
    assert!(enrol["otpauth_url"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/Cortex:admin?"));
    let secret = base32_decode(secret_b32);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let wrong = http
        .post(server.url("/admin/me/totp/confirm"))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "code": "000000" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let code = cortex_crypto::totp::totp_code_at(&secret, now());
    let confirmed: Value = http
        .post(server.url("/admin/me/totp/confirm"))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);

    // Password alone is no longer enough.
    assert_error(
        login(&server, "admin", ADMIN_PASSWORD, json!({})).await,
        401,
        "mfa_required",
    )
    .await;
    // The code used for confirmation cannot be replayed.
    assert_error(
        login(
            &server,
            "admin",
            ADMIN_PASSWORD,
            json!({ "totp_code": code }),
        )
        .await,
        401,
        "invalid_credentials",
    )
    .await;
    // The next step's code (accepted within the ±1 step window) works once, then replays fail.
    let fresh = cortex_crypto::totp::totp_code_at(&secret, now() + 30);
    assert_eq!(
        login(
            &server,
            "admin",
            ADMIN_PASSWORD,
            json!({ "totp_code": fresh })
        )
        .await
        .status(),
        200
    );
    assert_error(
        login(
            &server,
            "admin",
            ADMIN_PASSWORD,
            json!({ "totp_code": fresh }),
        )
        .await,
        401,
        "invalid_credentials",
    )
    .await;
    // Recovery codes work once each.
    assert_eq!(
        login(
            &server,
            "admin",
            ADMIN_PASSWORD,
            json!({ "recovery_code": recovery[0] })
        )
        .await
        .status(),
        200
    );
    assert_error(
        login(
            &server,
            "admin",
            ADMIN_PASSWORD,
            json!({ "recovery_code": recovery[0] }),
        )
        .await,
        401,
        "invalid_credentials",
    )
    .await;
    // The TOTP secret is stored sealed, never in plaintext.
    let user = server
        .state()
        .store()
        .get_user_by_username(&cortex_store::Tenant::All, "admin")
        .await
        .unwrap()
        .unwrap();
    let sealed = user.totp_secret_sealed.unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_slice()));
    server.stop().await;
}

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|a| *a == c).unwrap() as u64;
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

#[tokio::test]
async fn login_brute_force_is_throttled() {
    let server = TestServer::builder().start().await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            login(&server, "admin", "Wrong-Password-Guess-1", json!({}))
                .await
                .status()
                .as_u16(),
        );
    }
    // Three guesses a minute for one username from one address.
    assert!(statuses[..3].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right password is refused while throttled (this client has no device cookie).
    let response = login(&server, "admin", ADMIN_PASSWORD, json!({})).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    server.stop().await;
}

/// A login from `address` (the test client is a trusted proxy), with `cookie` if given.
async fn login_from(
    server: &TestServer,
    address: &str,
    username: &str,
    password: &str,
    cookie: Option<&str>,
) -> reqwest::Response {
    let mut request = server
        .http()
        .post(server.url("/admin/auth/login"))
        .header("x-forwarded-for", address)
        .json(&json!({ "username": username, "password": password }));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

/// The `name=value` part of the `Set-Cookie` header whose name is `name`.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

fn status_of(responses: &[reqwest::Response]) -> Vec<u16> {
    responses.iter().map(|r| r.status().as_u16()).collect()
}

/// The attacker guesses from ever new addresses until the account's bucket for clients without
/// a device cookie is empty (it refills one guess every twelve seconds, so a slow test run
/// must empty it again before each check).
async fn empty_the_account_bucket(server: &TestServer, next_address: &mut u32) {
    for _ in 0..20 {
        *next_address += 1;
        let address = format!("198.51.{}.{}", *next_address / 250, *next_address % 250 + 1);
        let guess = login_from(server, &address, "admin", "Wrong-Password-Guess-1", None).await;
        if guess.status() == 429 {
            return;
        }
        assert_eq!(guess.status(), 401);
    }
    panic!("twenty guesses from twenty addresses were all checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_from_everywhere_cannot_lock_the_owner_out_of_a_known_browser() {
    let server = TestServer::builder()
        .env("CORTEX_TRUSTED_PROXIES", "127.0.0.1/32")
        .start()
        .await;
    const WRONG: &str = "Wrong-Password-Guess-1";
    // The owner logged in from this browser before: it holds a device cookie.
    let earlier = login_from(&server, "192.0.2.10", "admin", ADMIN_PASSWORD, None).await;
    assert_eq!(earlier.status(), 200);
    let device = set_cookie(&earlier, "cortex_device").expect("a device cookie");
    let cookie_header = earlier.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie_header.starts_with("cortex_session="));
    let device_header = earlier
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("cortex_device="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(device_header.contains(attribute), "{device_header}");
    }
    let access: Value = earlier.json().await.unwrap();
    let access = access["access_token"].as_str().unwrap().to_owned();

    // An attacker guesses from ever new addresses until the account's bucket is empty.
    let mut attacker = Vec::new();
    for i in 0..10 {
        attacker.push(login_from(&server, &format!("198.51.100.{i}"), "admin", WRONG, None).await);
    }
    let attacker = status_of(&attacker);
    assert_eq!(attacker[..5], [401; 5], "{attacker:?}");
    assert!(attacker[5..].iter().all(|s| *s == 429), "{attacker:?}");
    let mut next_address = 0;
    // Clients without the owner's device cookie are refused even the right password...
    empty_the_account_bucket(&server, &mut next_address).await;
    let stranger = login_from(&server, "192.0.2.99", "admin", ADMIN_PASSWORD, None).await;
    assert_error(stranger, 429, "too_many_attempts").await;
    // ...but the owner's browser gets in, from its usual address or a new one.
    for address in ["192.0.2.10", "192.0.2.11"] {
        empty_the_account_bucket(&server, &mut next_address).await;
        let owner = login_from(&server, address, "admin", ADMIN_PASSWORD, Some(&device)).await;
        assert_eq!(owner.status(), 200, "{address}");
    }
    // The attacker still gets 429, right password or not.
    for password in [WRONG, ADMIN_PASSWORD] {
        empty_the_account_bucket(&server, &mut next_address).await;
        let again = login_from(&server, "198.51.100.77", "admin", password, None).await;
        assert_error(again, 429, "too_many_attempts").await;
    }

    // Forged and tampered device cookies count for nothing: another user's, another server's,
    // a changed MAC, a later expiry, junk.
    let created = server
        .http()
        .post(server.url("/admin/users"))
        .bearer_auth(&access)
        .json(&json!({ "username": "devon", "password": ADMIN_PASSWORD, "role": "developer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let devon = login_from(&server, "192.0.2.20", "devon", ADMIN_PASSWORD, None).await;
    let devons = set_cookie(&devon, "cortex_device").unwrap();
    let value = device.trim_start_matches("cortex_device=");
    let parts: Vec<&str> = value.split('.').collect();
    let mut mac: Vec<char> = parts[3].chars().collect();
    mac[10] = if mac[10] == 'A' { 'B' } else { 'A' };
    let mac: String = mac.into_iter().collect();
    let foreign_key = cortex_crypto::device::DeviceCookieKey::derive(
        &cortex_crypto::envelope::MasterKey::generate(),
    );
    let foreign = foreign_key.issue("admin", 4_000_000_000);
    let forged = [
        devons,
        format!(
            "cortex_device={}",
            secrecy::ExposeSecret::expose_secret(&foreign)
        ),
        format!("cortex_device=v1.{}.{}.{mac}", parts[1], parts[2]),
        format!("cortex_device=v1.4000000000.{}.{}", parts[2], parts[3]),
        "cortex_device=v1.4000000000.AAAAAAAAAAAAAAAAAAAAAA.AAAA".to_owned(),
    ];
    for cookie in &forged {
        empty_the_account_bucket(&server, &mut next_address).await;
        let response =
            login_from(&server, "192.0.2.30", "admin", ADMIN_PASSWORD, Some(cookie)).await;
        assert_error(response, 429, "too_many_attempts").await;
    }

    // A device that keeps failing loses its exemption for a while: five wrong guesses from
    // the owner's browser are checked, then it is refused like everyone else, even with the
    // right password.
    for _ in 0..5 {
        let guess = login_from(&server, "192.0.2.10", "admin", WRONG, Some(&device)).await;
        assert_error(guess, 401, "invalid_credentials").await;
    }
    for password in [WRONG, ADMIN_PASSWORD] {
        empty_the_account_bucket(&server, &mut next_address).await;
        let locked = login_from(&server, "192.0.2.10", "admin", password, Some(&device)).await;
        assert_error(locked, 429, "too_many_attempts").await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_codes_are_charged_before_they_are_checked() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let http = server.http();
    let enrol: Value = http
        .post(server.url("/admin/me/totp"))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = base32_decode(enrol["secret"].as_str().unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let confirmed = http
        .post(server.url("/admin/me/totp/confirm"))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "code": cortex_crypto::totp::totp_code_at(&secret, now) }))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);

    // Turning TOTP off with guessed codes, all at once: five are checked, the rest refused.
    let guesses = futures_util::future::join_all((0..20).map(|i| {
        http.delete(server.url("/admin/me/totp"))
            .bearer_auth(&admin.access_token)
            .json(&json!({ "code": format!("{:06}", 100_000 + i) }))
            .send()
    }))
    .await;
    let statuses: Vec<u16> = guesses
        .iter()
        .map(|r| r.as_ref().unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        15,
        "{statuses:?}"
    );

    // The same bucket guards codes at login (the password is right, the codes are guesses).
    for i in 0..3 {
        let guess = login(
            &server,
            "admin",
            ADMIN_PASSWORD,
            json!({ "recovery_code": format!("guess-{i}") }),
        )
        .await;
        assert_error(guess, 429, "too_many_attempts").await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_current_passwords_on_a_password_change_are_limited() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let http = server.http();
    let guesses = futures_util::future::join_all((0..12).map(|i| {
        http.post(server.url("/admin/auth/password"))
            .bearer_auth(&admin.access_token)
            .json(&json!({
                "current_password": format!("Guessed-Password-{i}"),
                "new_password": NEW_PASSWORD,
            }))
            .send()
    }))
    .await;
    let statuses: Vec<u16> = guesses
        .iter()
        .map(|r| r.as_ref().unwrap().status().as_u16())
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == 401).count() <= 5,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    server.stop().await;
}

#[tokio::test]
async fn developers_cannot_see_or_revoke_other_users_keys_and_viewers_change_nothing() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let alice = user_with_role(&server, &admin, "alice", Role::Developer).await;
    let viewer = user_with_role(&server, &admin, "victor", Role::Viewer).await;
    let http = server.http();
    let admins_key: Value = http
        .post(server.url("/admin/keys"))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "name": "admin key", "scopes": ["chat"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(admins_key["key"].as_str().unwrap().starts_with("ctx_"));
    let id = admins_key["id"].as_str().unwrap();
    assert_error(
        http.get(server.url(&format!("/admin/keys/{id}")))
            .bearer_auth(&alice.access_token)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        http.delete(server.url(&format!("/admin/keys/{id}")))
            .bearer_auth(&alice.access_token)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        http.post(server.url(&format!("/admin/keys/{id}/rotate")))
            .bearer_auth(&alice.access_token)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    let listed: Value = http
        .get(server.url("/admin/keys"))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["data"].as_array().unwrap().is_empty(),
        "a developer lists only own keys"
    );
    // The key still works: nothing was revoked.
    assert_eq!(
        server
            .state()
            .store()
            .get_api_key(&cortex_store::Tenant::All, id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );

    for (method, path, body) in [
        (
            Method::POST,
            "/admin/keys".to_owned(),
            json!({ "name": "x", "scopes": ["chat"] }),
        ),
        (Method::DELETE, format!("/admin/keys/{id}"), json!(null)),
        (
            Method::POST,
            "/admin/providers".to_owned(),
            json!({ "name": "p", "base_url": "http://127.0.0.1:1/v1" }),
        ),
        (
            Method::POST,
            "/admin/users".to_owned(),
            json!({ "username": "u", "password": NEW_PASSWORD, "role": "admin" }),
        ),
    ] {
        let response = http
            .request(method.clone(), server.url(&path))
            .bearer_auth(&viewer.access_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(response, 403, "forbidden").await;
    }
    server.stop().await;
}

#[tokio::test]
async fn provider_secrets_are_write_only() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let http = server.http();
    let secret = "sk-planted-provider-secret-XYZ123";
    let created = http
        .post(server.url("/admin/providers"))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "name": "openai", "base_url": "https://api.example.invalid/v1", "api_key": secret }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["has_api_key"], true);
    let id = created["id"].as_str().unwrap();
    let mut seen = created.to_string();
    for path in [
        "/admin/providers".to_owned(),
        "/admin/models".to_owned(),
        "/admin/audit".to_owned(),
        "/admin/me".to_owned(),
    ] {
        seen.push_str(
            &http
                .get(server.url(&path))
                .bearer_auth(&admin.access_token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let patched = http
        .patch(server.url(&format!("/admin/providers/{id}")))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "api_key": null }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(patched.contains("\"has_api_key\":false"), "{patched}");
    seen.push_str(&patched);
    assert!(!seen.contains(secret), "a provider secret was answered");
    assert!(!seen.contains("planted"), "a provider secret was answered");
    server.stop().await;
}

#[tokio::test]
async fn cookie_session_flow_and_logout() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let http = server.http();
    let origin = format!("http://{}", server.addr);
    let created = http
        .post(server.url("/admin/keys"))
        .header("cookie", &admin.cookie)
        .header("origin", &origin)
        .json(&json!({ "name": "from the browser", "scopes": ["chat"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let logout = http
        .post(server.url("/admin/auth/logout"))
        .header("cookie", &admin.cookie)
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 200);
    assert!(logout.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let after = http
        .get(server.url("/admin/me"))
        .header("cookie", &admin.cookie)
        .send()
        .await
        .unwrap();
    assert_error(after, 401, "unauthenticated").await;
    // The access token of the same session is dead too.
    let bearer = http
        .get(server.url("/admin/me"))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn new_users_must_change_their_password_first_and_mfa_can_be_required() {
    let server = TestServer::builder()
        .env("CORTEX_REQUIRE_MFA_FOR", "operator")
        .start()
        .await;
    let admin = admin(&server).await;
    let http = server.http();
    http.post(server.url("/admin/users"))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "username": "olga", "password": ADMIN_PASSWORD, "role": "operator" }))
        .send()
        .await
        .unwrap();
    let response = login(&server, "olga", ADMIN_PASSWORD, json!({})).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["must_change_password"], true);
    let token = body["access_token"].as_str().unwrap();
    assert_error(
        http.get(server.url("/admin/providers"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
        403,
        "password_change_required",
    )
    .await;
    let weak = http
        .post(server.url("/admin/auth/password"))
        .bearer_auth(token)
        .json(&json!({ "current_password": ADMIN_PASSWORD, "new_password": "password1234" }))
        .send()
        .await
        .unwrap();
    assert_error(weak, 400, "invalid_request").await;
    let changed = http
        .post(server.url("/admin/auth/password"))
        .bearer_auth(token)
        .json(&json!({ "current_password": ADMIN_PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    // Operators must enrol MFA before anything else.
    assert_error(
        http.get(server.url("/admin/providers"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
        403,
        "mfa_enrollment_required",
    )
    .await;
    assert_eq!(
        http.get(server.url("/admin/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_admin_bodies_are_400_never_422() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let http = server.http();
    for body in [
        r#"{"name":"k","scopes":["chat"],"owner":"someone"}"#,
        r#"{"name":5,"scopes":["chat"]}"#,
        "{",
        r#"{"name":"k","scopes":["root"]}"#,
    ] {
        let response = http
            .post(server.url("/admin/keys"))
            .bearer_auth(&admin.access_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("::"), "{text}");
    }
    let no_type = http
        .post(server.url("/admin/keys"))
        .bearer_auth(&admin.access_token)
        .body(r#"{"name":"k","scopes":["chat"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn login_bodies_with_wrong_json_types_are_400_not_401() {
    let server = TestServer::builder().start().await;
    for body in [
        r#"{"username":1,"password":true}"#,
        r#"{"username":"admin","password":5}"#,
        r#"{"username":["admin"],"password":"x"}"#,
        r#"{"username":"admin","password":"x","totp_code":123456}"#,
        r#"{"username":"admin"}"#,
        r#"[]"#,
    ] {
        let response = server
            .http()
            .post(server.url("/admin/auth/login"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 400, "{body}: {text}");
        assert!(
            text.contains("\"invalid_request\"") || text.contains("\"invalid_json\""),
            "{body}: {text}"
        );
    }
    server.stop().await;
}

/// `POST /admin/keys` as `session` with `limits`.
async fn create_key_with_limits(
    server: &TestServer,
    session: &Session,
    limits: Value,
) -> reqwest::Response {
    server
        .http()
        .post(server.url("/admin/keys"))
        .bearer_auth(&session.access_token)
        .json(&json!({ "name": "limits", "scopes": ["chat"], "limits": limits }))
        .send()
        .await
        .unwrap()
}

/// Issue 24, item 5: a developer created a key with `burst: 4000000000`. Own-key limits of a
/// role that does not manage all keys stay within the deployment's defaults; Admin and
/// Operator may set more, but nobody may set absurd values.
#[tokio::test]
async fn developers_cannot_lift_their_own_limits_and_nobody_sets_absurd_ones() {
    // The defaults: 10 requests/s, bursts of 20, 5 concurrent streams.
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let developer = user_with_role(&server, &admin, "dev", Role::Developer).await;
    let operator = user_with_role(&server, &admin, "oper", Role::Operator).await;

    for (limits, field, ceiling) in [
        (json!({ "burst": 21 }), "limits.burst", "20"),
        (
            json!({ "requests_per_second": 10.5 }),
            "limits.requests_per_second",
            "10",
        ),
        (
            json!({ "max_concurrent_streams": 6 }),
            "limits.max_concurrent_streams",
            "5",
        ),
    ] {
        let body = assert_error(
            create_key_with_limits(&server, &developer, limits.clone()).await,
            403,
            "limit_above_ceiling",
        )
        .await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field) && message.contains(ceiling),
            "{limits}: {message}"
        );
    }
    // The attack as seen: refused for everyone, the developer included.
    for session in [&developer, &operator, &admin] {
        let body = assert_error(
            create_key_with_limits(&server, session, json!({ "burst": 4_000_000_000u64 })).await,
            400,
            "invalid_request",
        )
        .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("limits.burst"),
            "{body}"
        );
    }
    for absurd in [
        json!({ "requests_per_second": 1e300 }),
        json!({ "requests_per_second": 1e-300 }),
        json!({ "max_concurrent_streams": 4_000_000_000u64 }),
        json!({ "tokens_per_minute": u64::MAX }),
        json!({ "budget_usd": 1e300 }),
    ] {
        assert_error(
            create_key_with_limits(&server, &admin, absurd.clone()).await,
            400,
            "invalid_request",
        )
        .await;
    }
    // Within the defaults, or narrower (tokens and budget have no default: any sane value only
    // narrows what the key may do), a developer is served.
    for limits in [
        json!({ "requests_per_second": 10, "burst": 20, "max_concurrent_streams": 5 }),
        json!({ "requests_per_second": 0.5, "burst": 1, "tokens_per_minute": 1000, "budget_usd": 3.5 }),
    ] {
        let response = create_key_with_limits(&server, &developer, limits.clone()).await;
        assert_eq!(response.status(), 201, "{limits}");
    }
    // Roles that manage all keys may go above the defaults.
    for session in [&operator, &admin] {
        let response = create_key_with_limits(
            &server,
            session,
            json!({ "requests_per_second": 1000, "burst": 1000, "max_concurrent_streams": 50 }),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    server.stop().await;
}

/// Issue 24, item 8: rotating an expired key gave a key that never expired, and an operator who
/// rotated the admin's key received a working secret owned by the admin.
#[tokio::test]
async fn rotation_refuses_dead_keys_keeps_the_expiry_and_gives_secrets_only_to_owners() {
    let clock = Arc::new(ManualClock::new(SystemClock.now_millis()));
    let server = TestServer::builder().clock(clock.clone()).start().await;
    let admin = admin(&server).await;
    let operator = user_with_role(&server, &admin, "oper", Role::Operator).await;
    let developer = user_with_role(&server, &admin, "dev", Role::Developer).await;
    let http = server.http();
    let key_for = |owner: &str, name: &str, expires_at: Option<i64>| KeySpec {
        name: name.to_owned(),
        owner_user_id: owner.to_owned(),
        scopes: vec![Scope::Chat],
        models: None,
        expires_at,
        limits: KeyLimits::default(),
        org_id: cortex_domain::DEFAULT_ORG.to_owned(),
        team_id: None,
        allowed_ips: None,
    };
    let rotate = |session: &Session, id: &str| {
        http.post(server.url(&format!("/admin/keys/{id}/rotate")))
            .bearer_auth(&session.access_token)
            .send()
    };
    let now = clock.now_millis();

    // An expired key is not rotated into a live one.
    let (expiring, _) = server
        .create_key_with(key_for(&admin.user_id, "expiring", Some(now + 60_000)))
        .await;
    clock.advance_millis(120_000);
    let body = assert_error(
        rotate(&admin, &expiring).await.unwrap(),
        409,
        "key_not_rotatable",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    assert!(server
        .state()
        .store()
        .get_api_key(&cortex_store::Tenant::All, &expiring)
        .await
        .unwrap()
        .unwrap()
        .rotated_to
        .is_none());

    // Neither is a revoked one.
    let (revoked, _) = server
        .create_key_with(key_for(&admin.user_id, "revoked", None))
        .await;
    let response = http
        .delete(server.url(&format!("/admin/keys/{revoked}")))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_error(
        rotate(&admin, &revoked).await.unwrap(),
        409,
        "key_not_rotatable",
    )
    .await;

    // The replacement keeps the original's expiry, and a key already rotated is not rotated
    // twice (its replacement is the one to rotate).
    let expires_at = clock.now_millis() + 3_600_000;
    let (mine, _) = server
        .create_key_with(key_for(&developer.user_id, "mine", Some(expires_at)))
        .await;
    let rotated = rotate(&developer, &mine).await.unwrap();
    assert_eq!(rotated.status(), 201);
    let rotated: Value = rotated.json().await.unwrap();
    assert_eq!(
        rotated["expires_at"],
        cortex_domain::time_fmt::millis_to_rfc3339(expires_at)
    );
    let again = http
        .post(server.url(&format!("/admin/keys/{mine}/rotate")))
        .bearer_auth(&developer.access_token)
        .json(&json!({ "grace_period_seconds": 60 }))
        .send()
        .await
        .unwrap();
    assert_error(again, 409, "key_not_rotatable").await;

    // An operator may revoke the admin's key but not take over its secret by rotating it.
    let (admins, admins_secret) = server
        .create_key_with(key_for(&admin.user_id, "admin's", None))
        .await;
    assert_error(rotate(&operator, &admins).await.unwrap(), 403, "forbidden").await;
    let unchanged = server
        .state()
        .store()
        .get_api_key(&cortex_store::Tenant::All, &admins)
        .await
        .unwrap()
        .unwrap();
    assert!(unchanged.rotated_to.is_none() && unchanged.revoked_at.is_none());
    let models = http
        .get(server.url("/v1/models"))
        .bearer_auth(&admins_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(
        models.status(),
        200,
        "the refused rotation left the key alone"
    );
    let response = http
        .delete(server.url(&format!("/admin/keys/{admins}")))
        .bearer_auth(&operator.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The operator rotates their own key; the admin may rotate anyone's.
    let (operators, _) = server
        .create_key_with(key_for(&operator.user_id, "operator's", None))
        .await;
    let (developers, _) = server
        .create_key_with(key_for(&developer.user_id, "developer's", None))
        .await;
    assert_error(
        rotate(&operator, &developers).await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    assert_eq!(rotate(&operator, &operators).await.unwrap().status(), 201);
    assert_eq!(rotate(&admin, &developers).await.unwrap().status(), 201);
    server.stop().await;
}
