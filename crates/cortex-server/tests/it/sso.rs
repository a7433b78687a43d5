//! Single sign-on (SPEC §19): Cortex as a relying party of a real OpenID Provider
//! (node-oidc-provider, started by the test on loopback) driven like a browser would, and of a
//! small fake provider written here that signs whatever token an attack needs (another key,
//! `alg: none`, another audience, expired, HMAC). Every refusal must be a redirect to the login
//! page with its code, and must start no session.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cortex_testkit::{
    OpenIdProvider, TestServer, ADMIN_PASSWORD, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::admin::admin;
use crate::{assert_error, audit_events};

const CALLBACK: &str = "/admin/auth/oidc/callback";

/// The accounts at the real provider: alice is a Cortex admin by group, carol staff, bob's
/// claims name a role Cortex does not have, dave has no claim any rule knows.
fn accounts() -> Value {
    json!({
        "alice": { "preferred_username": "alice", "email": "alice@example.test", "groups": ["cortex-admins"] },
        "carol": { "preferred_username": "carol", "groups": ["staff"] },
        "bob": { "preferred_username": "bob", "cortex_role": "superuser", "cortex_org": "default" },
        "dave": { "preferred_username": "dave" },
    })
}

const RULES: &str = r#"
[oidc]
display_name = "Test IdP"
scopes = ["openid", "profile", "email", "groups", "cortex"]
role_claim = "cortex_role"
org_claim = "cortex_org"

[[oidc.rules]]
claim = "groups"
value = "cortex-admins"
role = "admin"

[[oidc.rules]]
claim = "groups"
value = "staff"
role = "viewer"
"#;

/// A server whose single sign-on is the real provider, and the provider.
async fn with_provider() -> (TestServer, OpenIdProvider) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let provider = OpenIdProvider::start(
        &[format!("{origin}{CALLBACK}")],
        &[format!("{origin}/ui/login")],
        accounts(),
    )
    .await;
    let server = TestServer::builder()
        .listener(listener)
        .env("CORTEX_OIDC_ISSUER", &provider.issuer)
        .env("CORTEX_OIDC_CLIENT_ID", OIDC_CLIENT_ID)
        .env("CORTEX_OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET)
        .env("CORTEX_OIDC_REDIRECT_URL", &format!("{origin}{CALLBACK}"))
        .env(
            "CORTEX_OIDC_POST_LOGOUT_REDIRECT_URL",
            &format!("{origin}/ui/login"),
        )
        .config_toml(RULES)
        .start()
        .await;
    (server, provider)
}

/// A browser: keeps cookies (per host and path), follows nothing by itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response) -> Url {
    let here = response.url().clone();
    let to = response.headers()["location"].to_str().unwrap();
    here.join(to).unwrap()
}

/// "Sign in with …": the redirect to the provider, which `tamper` may change on the way.
async fn start_login(server: &TestServer, browser: &reqwest::Client) -> Url {
    let response = browser
        .get(server.url("/admin/auth/oidc/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("cortex_oidc="))
        .expect("the login cookie");
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/admin/auth/oidc",
        "Max-Age=600",
    ] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    location(&response)
}

/// Walks the provider from `authorize` to its redirect back to Cortex, signing in as
/// `username` when it asks; answers the callback URL, not yet visited.
async fn through_provider(
    server: &TestServer,
    browser: &reqwest::Client,
    authorize: Url,
    username: &str,
) -> Url {
    let mut url = authorize;
    for _ in 0..12 {
        if url.as_str().starts_with(&server.url(CALLBACK)) {
            return url;
        }
        let response = browser.get(url.clone()).send().await.unwrap();
        if response.status().is_redirection() {
            url = location(&response);
            continue;
        }
        let here = response.url().clone();
        let page = response.text().await.unwrap();
        assert!(page.contains("idp-submit"), "the provider's page: {page}");
        let action = page
            .split("action=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        let submitted = browser
            .post(here.join(action).unwrap())
            .form(&[("login", username)])
            .send()
            .await
            .unwrap();
        assert!(
            submitted.status().is_redirection(),
            "{}",
            submitted.status()
        );
        url = location(&submitted);
    }
    panic!("the provider never redirected back: {url}");
}

/// Visits the callback; answers where Cortex sent the browser.
async fn finish(browser: &reqwest::Client, callback: Url) -> String {
    let response = browser.get(callback).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn sign_in(server: &TestServer, browser: &reqwest::Client, username: &str) -> String {
    let authorize = start_login(server, browser).await;
    let callback = through_provider(server, browser, authorize, username).await;
    finish(browser, callback).await
}

fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    let mut changed = url.clone();
    changed.query_pairs_mut().clear().extend_pairs(pairs);
    changed
}

fn param(url: &Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{name} in {url}"))
}

async fn me(server: &TestServer, browser: &reqwest::Client) -> reqwest::Response {
    browser.get(server.url("/admin/me")).send().await.unwrap()
}

async fn refusals(server: &TestServer) -> Vec<String> {
    audit_events(server.state().store(), Some("auth.sso_failed"), 100)
        .await
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.details).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_at_the_provider_creates_the_user_and_the_same_session_a_password_gives() {
    let (server, provider) = with_provider().await;
    let methods: Value = server
        .http()
        .get(server.url("/admin/auth/methods"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(methods["sso"]["name"], "Test IdP");
    assert_eq!(methods["password"], true);

    let first = browser();
    assert_eq!(sign_in(&server, &first, "alice").await, "/ui/");
    let alice: Value = me(&server, &first).await.json().await.unwrap();
    assert_eq!(
        (
            &alice["username"],
            &alice["role"],
            &alice["kind"],
            &alice["session_method"]
        ),
        (
            &json!("alice"),
            &json!("admin"),
            &json!("sso"),
            &json!("sso")
        )
    );
    // The console opens with that cookie, as after a password login.
    let console = first.get(server.url("/ui/")).send().await.unwrap();
    assert_eq!(console.status(), 200);
    let created = audit_events(server.state().store(), Some("user.create"), 10).await;
    let details: Value = serde_json::from_str(&created[0].details).unwrap();
    assert_eq!(
        (details["username"].as_str(), details["via"].as_str()),
        (Some("alice"), Some("sso"))
    );
    let logins = audit_events(server.state().store(), Some("auth.login"), 10).await;
    assert!(
        logins[0].details.contains("\"sso\""),
        "{}",
        logins[0].details
    );
    // A single sign-on user has no password.
    let password = server
        .http()
        .post(server.url("/admin/auth/login"))
        .json(&json!({ "username": "alice", "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_error(password, 401, "invalid_credentials").await;

    // The next sign-in (another browser, so the provider asks again) updates the role from the
    // claims, and is the same user.
    provider
        .set_accounts(json!({ "alice": { "preferred_username": "alice", "groups": ["staff"] } }))
        .await;
    let second = browser();
    assert_eq!(sign_in(&server, &second, "alice").await, "/ui/");
    let again: Value = me(&server, &second).await.json().await.unwrap();
    assert_eq!(
        (&again["id"], &again["role"]),
        (&alice["id"], &json!("viewer"))
    );

    // Logout ends the session, and names the provider's end-session URL.
    let origin = format!("http://{}", server.addr);
    let logout: Value = first
        .post(server.url("/admin/auth/logout"))
        .header("origin", &origin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let end = logout["end_session_url"].as_str().unwrap();
    assert!(
        end.starts_with(&format!("{}/session/end", provider.issuer)),
        "{end}"
    );
    assert!(
        end.contains(OIDC_CLIENT_ID) && end.contains("post_logout_redirect_uri"),
        "{end}"
    );
    assert_error(me(&server, &first).await, 401, "unauthenticated").await;

    // Disabling the user ends their other session at once, and they cannot sign in again.
    let root = admin(&server).await;
    let disabled = server
        .http()
        .patch(server.url(&format!("/admin/users/{}", alice["id"].as_str().unwrap())))
        .bearer_auth(&root.access_token)
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    assert_error(me(&server, &second).await, 401, "unauthenticated").await;
    assert_eq!(
        sign_in(&server, &browser(), "alice").await,
        "/ui/login?sso_error=account_disabled"
    );
    // The user list shows where the account comes from.
    let users = server
        .http()
        .get(server.url("/admin/users"))
        .bearer_auth(&root.access_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(users.contains("\"kind\":\"sso\""), "{users}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_state_a_missing_cookie_a_replayed_code_and_a_changed_nonce_are_refused() {
    let (server, _provider) = with_provider().await;

    // Wrong state: refused, and the pending login is used up by the attempt.
    let victim = browser();
    let callback = through_provider(
        &server,
        &victim,
        start_login(&server, &victim).await,
        "alice",
    )
    .await;
    let forged = with_param(&callback, "state", "attacker-state");
    assert_eq!(
        finish(&victim, forged).await,
        "/ui/login?sso_error=state_mismatch"
    );
    assert_eq!(
        finish(&victim, callback).await,
        "/ui/login?sso_error=login_expired"
    );
    assert_error(me(&server, &victim).await, 401, "unauthenticated").await;

    // A callback carried to another browser (login CSRF, a stolen redirect): no cookie there.
    let owner = browser();
    let callback =
        through_provider(&server, &owner, start_login(&server, &owner).await, "alice").await;
    let elsewhere = browser();
    assert_eq!(
        finish(&elsewhere, callback.clone()).await,
        "/ui/login?sso_error=login_expired"
    );
    assert_error(me(&server, &elsewhere).await, 401, "unauthenticated").await;

    // A code used once: replaying the whole callback finds its login used up, and the code with
    // a new login's state is refused by the provider (used, and bound to another PKCE challenge).
    let replayer = browser();
    let used = through_provider(
        &server,
        &replayer,
        start_login(&server, &replayer).await,
        "carol",
    )
    .await;
    assert_eq!(finish(&replayer, used.clone()).await, "/ui/");
    assert_eq!(
        finish(&replayer, used.clone()).await,
        "/ui/login?sso_error=login_expired"
    );
    let fresh = start_login(&server, &replayer).await;
    let replayed = with_param(&used, "state", &param(&fresh, "state"));
    assert_eq!(
        finish(&replayer, replayed).await,
        "/ui/login?sso_error=code_rejected"
    );

    // A nonce changed on the way to the provider: the ID token carries the changed one.
    let changed = browser();
    let authorize = with_param(
        &start_login(&server, &changed).await,
        "nonce",
        "attacker-nonce",
    );
    let callback = through_provider(&server, &changed, authorize, "alice").await;
    assert_eq!(
        finish(&changed, callback).await,
        "/ui/login?sso_error=nonce_mismatch"
    );
    assert_error(me(&server, &changed).await, 401, "unauthenticated").await;

    // An answer claiming another issuer (RFC 9207), and the provider's own refusal.
    let mixed = browser();
    let callback =
        through_provider(&server, &mixed, start_login(&server, &mixed).await, "alice").await;
    assert_eq!(
        finish(&mixed, with_param(&callback, "iss", "https://evil.example")).await,
        "/ui/login?sso_error=issuer_mismatch"
    );
    let denied = browser();
    let callback = through_provider(
        &server,
        &denied,
        start_login(&server, &denied).await,
        "alice",
    )
    .await;
    let mut refused = callback.clone();
    refused.set_query(Some(&format!(
        "error=access_denied&state={}",
        param(&callback, "state")
    )));
    assert_eq!(
        finish(&denied, refused).await,
        "/ui/login?sso_error=provider_refused"
    );

    let reasons = refusals(&server).await;
    for reason in [
        "state_mismatch",
        "login_expired",
        "code_rejected",
        "nonce_mismatch",
        "issuer_mismatch",
        "provider_refused",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} not audited: {reasons:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_that_name_an_unknown_role_or_none_are_refused() {
    let (server, _provider) = with_provider().await;
    assert_eq!(
        sign_in(&server, &browser(), "bob").await,
        "/ui/login?sso_error=unknown_role"
    );
    assert_eq!(
        sign_in(&server, &browser(), "dave").await,
        "/ui/login?sso_error=no_role"
    );
    // Neither became a user.
    let root = admin(&server).await;
    let users = server
        .http()
        .get(server.url("/admin/users"))
        .bearer_auth(&root.access_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!users.contains("bob") && !users.contains("dave"), "{users}");
    server.stop().await;
}

// ---- a provider that signs what the attack needs --------------------------------------------

struct SigningKey {
    der: Vec<u8>,
    jwk: Value,
}

fn signing_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
    SigningKey {
        der: pair.serialize_der(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }),
    }
}

#[derive(Default)]
struct FakeState {
    /// The keys the JWKS publishes.
    published: Vec<Value>,
    /// The ID token the next code exchange answers.
    next_id_token: String,
    /// What the last exchange sent.
    last_exchange: Vec<(String, String)>,
    jwks_fetches: usize,
}

struct FakeProvider {
    issuer: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeProvider {
    async fn start(published: Vec<Value>) -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(FakeState {
            published,
            ..Default::default()
        }));
        let discovery = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256", "RS256", "HS256", "none"],
        });
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let discovery = discovery.clone();
                    async move { Json(discovery) }
                }),
            )
            .route(
                "/jwks",
                get(|State(state): State<Arc<Mutex<FakeState>>>| async move {
                    let mut state = state.lock().unwrap();
                    state.jwks_fetches += 1;
                    Json(json!({ "keys": state.published }))
                }),
            )
            .route(
                "/token",
                post(
                    |State(state): State<Arc<Mutex<FakeState>>>, body: Bytes| async move {
                        let mut state = state.lock().unwrap();
                        state.last_exchange = form_urlencoded::parse(&body).into_owned().collect();
                        Json(json!({
                            "access_token": "fake-access-token",
                            "token_type": "Bearer",
                            "expires_in": 60,
                            "id_token": state.next_id_token,
                        }))
                    },
                ),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeProvider { issuer, state }
    }

    fn will_answer(&self, id_token: String) {
        self.state.lock().unwrap().next_id_token = id_token;
    }
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn sign(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&key.der)).unwrap()
}

fn fake_server(fake: &FakeProvider) -> cortex_testkit::TestServerBuilder {
    TestServer::builder()
        .env("CORTEX_OIDC_ISSUER", &fake.issuer)
        .env("CORTEX_OIDC_CLIENT_ID", OIDC_CLIENT_ID)
        .env("CORTEX_OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET)
        .env(
            "CORTEX_OIDC_REDIRECT_URL",
            &format!("http://127.0.0.1:9{CALLBACK}"),
        )
        .config_toml(
            "[[oidc.rules]]\nclaim = \"groups\"\nvalue = \"cortex-admins\"\nrole = \"admin\"\n",
        )
}

async fn with_fake(published: Vec<Value>) -> (TestServer, FakeProvider) {
    let fake = FakeProvider::start(published).await;
    let server = fake_server(&fake).start().await;
    (server, fake)
}

/// Starts a login at the fake provider; answers the browser, the state and the nonce.
async fn begin_at_fake(server: &TestServer) -> (reqwest::Client, String, String, String) {
    let browser = browser();
    let authorize = start_login(server, &browser).await;
    (
        browser,
        param(&authorize, "state"),
        param(&authorize, "nonce"),
        param(&authorize, "code_challenge"),
    )
}

async fn callback_at(server: &TestServer, browser: &reqwest::Client, state: &str) -> String {
    let url = Url::parse(&server.url(&format!("{CALLBACK}?code=fake-code&state={state}"))).unwrap();
    finish(browser, url).await
}

fn claims(issuer: &str, nonce: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer, "sub": "eve-1", "aud": OIDC_CLIENT_ID, "iat": now, "exp": now + 300,
        "nonce": nonce, "preferred_username": "eve", "groups": ["cortex-admins"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_misaddressed_and_expired_id_tokens_are_refused() {
    let good = signing_key("k1");
    let other = signing_key("k1"); // same key id, another key: a forger's
    let (server, fake) = with_fake(vec![good.jwk.clone()]).await;

    type Forge = Box<dyn Fn(&str, &str) -> String>;
    let issuer = fake.issuer.clone();
    let cases: Vec<(&str, Forge)> = vec![
        ("signature_invalid", {
            let (other, issuer) = (other.der.clone(), issuer.clone());
            Box::new(move |_: &str, nonce: &str| {
                let key = SigningKey {
                    der: other.clone(),
                    jwk: Value::Null,
                };
                sign(&key, "k1", &claims(&issuer, nonce))
            })
        }),
        ("signature_invalid", {
            let issuer = issuer.clone();
            Box::new(move |_: &str, nonce: &str| {
                let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
                let body = URL_SAFE_NO_PAD.encode(claims(&issuer, nonce).to_string());
                format!("{header}.{body}.")
            })
        }),
        ("signature_invalid", {
            let issuer = issuer.clone();
            Box::new(move |_: &str, nonce: &str| {
                // HMAC with the client secret: anyone holding it (we do) could have made it.
                jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &claims(&issuer, nonce),
                    &EncodingKey::from_secret(OIDC_CLIENT_SECRET.as_bytes()),
                )
                .unwrap()
            })
        }),
        ("audience_mismatch", {
            let (good, issuer) = (good.der.clone(), issuer.clone());
            Box::new(move |_: &str, nonce: &str| {
                let mut c = claims(&issuer, nonce);
                c["aud"] = json!("another-client");
                sign(
                    &SigningKey {
                        der: good.clone(),
                        jwk: Value::Null,
                    },
                    "k1",
                    &c,
                )
            })
        }),
        ("token_expired", {
            let (good, issuer) = (good.der.clone(), issuer.clone());
            Box::new(move |_: &str, nonce: &str| {
                let mut c = claims(&issuer, nonce);
                c["iat"] = json!(now() - 900);
                c["exp"] = json!(now() - 600);
                sign(
                    &SigningKey {
                        der: good.clone(),
                        jwk: Value::Null,
                    },
                    "k1",
                    &c,
                )
            })
        }),
        ("issued_at_invalid", {
            let (good, issuer) = (good.der.clone(), issuer.clone());
            Box::new(move |_: &str, nonce: &str| {
                let mut c = claims(&issuer, nonce);
                c["iat"] = json!(now() + 3600);
                c["exp"] = json!(now() + 7200);
                sign(
                    &SigningKey {
                        der: good.clone(),
                        jwk: Value::Null,
                    },
                    "k1",
                    &c,
                )
            })
        }),
        ("issuer_mismatch", {
            let good = good.der.clone();
            Box::new(move |_: &str, nonce: &str| {
                sign(
                    &SigningKey {
                        der: good.clone(),
                        jwk: Value::Null,
                    },
                    "k1",
                    &claims("https://evil.example", nonce),
                )
            })
        }),
        ("nonce_mismatch", {
            let (good, issuer) = (good.der.clone(), issuer.clone());
            Box::new(move |_: &str, _: &str| {
                sign(
                    &SigningKey {
                        der: good.clone(),
                        jwk: Value::Null,
                    },
                    "k1",
                    &claims(&issuer, "replayed-nonce"),
                )
            })
        }),
        ("signature_invalid", {
            // A key id the provider never published, not even after the JWKS is fetched again.
            let (other, issuer) = (other.der.clone(), issuer.clone());
            Box::new(move |_: &str, nonce: &str| {
                sign(
                    &SigningKey {
                        der: other.clone(),
                        jwk: Value::Null,
                    },
                    "kx",
                    &claims(&issuer, nonce),
                )
            })
        }),
    ];
    for (expected, forge) in &cases {
        let (browser, state, nonce, _) = begin_at_fake(&server).await;
        fake.will_answer(forge(&state, &nonce));
        assert_eq!(
            callback_at(&server, &browser, &state).await,
            format!("/ui/login?sso_error={expected}"),
        );
        assert_error(me(&server, &browser).await, 401, "unauthenticated").await;
    }

    // The same flow with an honest token works, and the code went with its PKCE verifier.
    let (browser, state, nonce, challenge) = begin_at_fake(&server).await;
    fake.will_answer(sign(&good, "k1", &claims(&fake.issuer, &nonce)));
    assert_eq!(callback_at(&server, &browser, &state).await, "/ui/");
    let exchange = fake.state.lock().unwrap().last_exchange.clone();
    let verifier = &exchange
        .iter()
        .find(|(k, _)| k == "code_verifier")
        .unwrap()
        .1;
    assert_eq!(
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
        challenge
    );
    let eve: Value = me(&server, &browser).await.json().await.unwrap();
    assert_eq!(
        (&eve["username"], &eve["role"]),
        (&json!("eve"), &json!("admin"))
    );
    assert!(refusals(&server).await.len() >= cases.len());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_fetched_from_the_jwks_again() {
    let old = signing_key("2025");
    // The server's clock is ours to move: the JWKS is fetched again at most every 10 s.
    let clock = Arc::new(cortex_domain::clock::ManualClock::new(now() * 1000));
    let fake = FakeProvider::start(vec![old.jwk.clone()]).await;
    let server = fake_server(&fake).clock(clock.clone()).start().await;
    let (browser, state, nonce, _) = begin_at_fake(&server).await;
    fake.will_answer(sign(&old, "2025", &claims(&fake.issuer, &nonce)));
    assert_eq!(callback_at(&server, &browser, &state).await, "/ui/");
    let fetched_before = fake.state.lock().unwrap().jwks_fetches;

    // The provider rotates: a new key, published beside the old one, signs the next token.
    let new = signing_key("2026");
    fake.state.lock().unwrap().published = vec![old.jwk.clone(), new.jwk.clone()];
    clock.advance_millis(11_000);
    let (browser, state, nonce, _) = begin_at_fake(&server).await;
    let mut rotated = claims(&fake.issuer, &nonce);
    rotated["iat"] = json!(now() + 11);
    fake.will_answer(sign(&new, "2026", &rotated));
    assert_eq!(callback_at(&server, &browser, &state).await, "/ui/");
    assert_eq!(fake.state.lock().unwrap().jwks_fetches, fetched_before + 1);

    // A key nobody published makes the JWKS be fetched again, once in 10 s, and is refused.
    let stranger = signing_key("2027");
    let (browser, state, nonce, _) = begin_at_fake(&server).await;
    fake.will_answer(sign(&stranger, "2027", &claims(&fake.issuer, &nonce)));
    assert_eq!(
        callback_at(&server, &browser, &state).await,
        "/ui/login?sso_error=signature_invalid"
    );
    assert_eq!(fake.state.lock().unwrap().jwks_fetches, fetched_before + 1);
    server.stop().await;
}

#[tokio::test]
async fn with_local_login_off_only_break_glass_admins_use_a_password() {
    let fake = FakeProvider::start(Vec::new()).await;
    let server = TestServer::builder()
        .env("CORTEX_OIDC_ISSUER", &fake.issuer)
        .env("CORTEX_OIDC_CLIENT_ID", OIDC_CLIENT_ID)
        .env(
            "CORTEX_OIDC_REDIRECT_URL",
            &format!("http://127.0.0.1:9{CALLBACK}"),
        )
        .env("CORTEX_OIDC_ROLE_CLAIM", "cortex_role")
        .env("CORTEX_LOCAL_LOGIN", "false")
        .start()
        .await;
    let methods: Value = server
        .http()
        .get(server.url("/admin/auth/methods"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(methods["password"], false);
    // The first admin is a local admin of the default organization: the way in.
    let root = admin(&server).await;
    crate::admin::create_user(&server, &root, "dev", cortex_domain::Role::Developer).await;
    let refused = server
        .http()
        .post(server.url("/admin/auth/login"))
        .json(&json!({ "username": "dev", "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_error(refused, 403, "local_login_disabled").await;
    // A wrong password still says only that.
    let wrong = server
        .http()
        .post(server.url("/admin/auth/login"))
        .json(&json!({ "username": "dev", "password": "Not-The-Password-1234" }))
        .send()
        .await
        .unwrap();
    assert_error(wrong, 401, "invalid_credentials").await;
    server.stop().await;
}
