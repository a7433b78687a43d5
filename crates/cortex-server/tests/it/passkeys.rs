//! Passkeys (SPEC §19) through the admin API, answered by a software authenticator written
//! here (P-256, "none" attestation, the WebAuthn wire format by hand): registration, sign-in as
//! a second factor and alone, removal, and the refusals — a replayed assertion, another
//! origin, no user verification, a cloned authenticator whose counter is behind.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cortex_testkit::{TestServer, ADMIN_PASSWORD};
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::admin::{admin, login, user_with_role, Session, NEW_PASSWORD};
use crate::{assert_error, audit_events};

const ORIGIN: &str = "http://localhost:8084";
const RP_ID: &str = "localhost";

// ---- a software authenticator --------------------------------------------------------------

fn cbor_head(major: u8, n: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    match n {
        0..=23 => out.push(major | n as u8),
        24..=255 => out.extend([major | 24, n as u8]),
        256..=65535 => {
            out.push(major | 25);
            out.extend((n as u16).to_be_bytes());
        }
        _ => {
            out.push(major | 26);
            out.extend((n as u32).to_be_bytes());
        }
    }
}

fn cbor_int(i: i64, out: &mut Vec<u8>) {
    if i >= 0 {
        cbor_head(0, i as u64, out);
    } else {
        cbor_head(1, (-1 - i) as u64, out);
    }
}

fn cbor_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    cbor_head(2, bytes.len() as u64, out);
    out.extend(bytes);
}

fn cbor_text(text: &str, out: &mut Vec<u8>) {
    cbor_head(3, text.len() as u64, out);
    out.extend(text.as_bytes());
}

/// ECDSA's (r, s) as raw 32-byte halves → ASN.1 DER, as WebAuthn carries signatures.
fn der_signature(raw: &[u8]) -> Vec<u8> {
    fn integer(half: &[u8]) -> Vec<u8> {
        let mut value: Vec<u8> = half.iter().copied().skip_while(|b| *b == 0).collect();
        if value.first().is_none_or(|b| b & 0x80 != 0) {
            value.insert(0, 0);
        }
        let mut out = vec![0x02, value.len() as u8];
        out.extend(value);
        out
    }
    let (r, s) = raw.split_at(32);
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[derive(Clone)]
struct SoftAuthenticator {
    der: Vec<u8>,
    public: Vec<u8>,
    credential_id: Vec<u8>,
    counter: u32,
    origin: String,
    /// Whether the user "verified" (PIN, biometrics): the UV flag.
    user_verified: bool,
}

impl SoftAuthenticator {
    fn new() -> SoftAuthenticator {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        SoftAuthenticator {
            der: pair.serialize_der(),
            public: pair.public_key_raw().to_vec(),
            credential_id: rand_bytes(),
            counter: 0,
            origin: ORIGIN.to_owned(),
            user_verified: true,
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let jws = jsonwebtoken::crypto::sign(
            message,
            &EncodingKey::from_ec_der(&self.der),
            Algorithm::ES256,
        )
        .unwrap();
        der_signature(&URL_SAFE_NO_PAD.decode(jws).unwrap())
    }

    fn client_data(&self, kind: &str, options: &Value) -> Vec<u8> {
        json!({
            "type": kind,
            "challenge": options["publicKey"]["challenge"],
            "origin": self.origin,
            "crossOrigin": false,
        })
        .to_string()
        .into_bytes()
    }

    fn flags(&self, attested: bool) -> u8 {
        0x01 | if self.user_verified { 0x04 } else { 0 } | if attested { 0x40 } else { 0 }
    }

    /// `navigator.credentials.create`: the attestation, as `credential.toJSON()` gives it.
    fn create(&mut self, options: &Value) -> Value {
        let client_data = self.client_data("webauthn.create", options);
        let mut cose = Vec::new();
        cbor_head(5, 5, &mut cose);
        for (key, value) in [(1, 2), (3, -7), (-1, 1)] {
            cbor_int(key, &mut cose);
            cbor_int(value, &mut cose);
        }
        cbor_int(-2, &mut cose);
        cbor_bytes(&self.public[1..33], &mut cose);
        cbor_int(-3, &mut cose);
        cbor_bytes(&self.public[33..65], &mut cose);
        let mut auth_data = Sha256::digest(RP_ID.as_bytes()).to_vec();
        auth_data.push(self.flags(true));
        auth_data.extend(self.counter.to_be_bytes());
        auth_data.extend([0u8; 16]);
        auth_data.extend((self.credential_id.len() as u16).to_be_bytes());
        auth_data.extend(&self.credential_id);
        auth_data.extend(cose);
        let mut attestation = Vec::new();
        cbor_head(5, 3, &mut attestation);
        cbor_text("fmt", &mut attestation);
        cbor_text("none", &mut attestation);
        cbor_text("attStmt", &mut attestation);
        cbor_head(5, 0, &mut attestation);
        cbor_text("authData", &mut attestation);
        cbor_bytes(&auth_data, &mut attestation);
        let id = URL_SAFE_NO_PAD.encode(&self.credential_id);
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "attestationObject": URL_SAFE_NO_PAD.encode(attestation),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
        })
    }

    /// `navigator.credentials.get`: an assertion, its counter one higher.
    fn get(&mut self, options: &Value) -> Value {
        self.counter += 1;
        let client_data = self.client_data("webauthn.get", options);
        let mut auth_data = Sha256::digest(RP_ID.as_bytes()).to_vec();
        auth_data.push(self.flags(false));
        auth_data.extend(self.counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(&client_data));
        let id = URL_SAFE_NO_PAD.encode(&self.credential_id);
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "authenticatorData": URL_SAFE_NO_PAD.encode(auth_data),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data),
                "signature": URL_SAFE_NO_PAD.encode(self.sign(&signed)),
                "userHandle": null,
            },
            "clientExtensionResults": {},
        })
    }
}

fn rand_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    cortex_crypto::token::fill_random(&mut bytes);
    bytes
}

// ---- the API ---------------------------------------------------------------------------------

async fn passkey_server(extra: &[(&str, &str)]) -> TestServer {
    let mut builder = TestServer::builder().env("CORTEX_WEBAUTHN_ORIGIN", ORIGIN);
    for (name, value) in extra {
        builder = builder.env(name, value);
    }
    builder.start().await
}

async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = server.http().request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn ok(response: reqwest::Response, status: u16) -> Value {
    let code = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(code, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Registers a passkey named `name` for `session`'s user with `authenticator`.
async fn register(
    server: &TestServer,
    session: &Session,
    authenticator: &mut SoftAuthenticator,
    name: &str,
) -> Value {
    let token = Some(session.access_token.as_str());
    let start = ok(
        call(
            server,
            token,
            Method::POST,
            "/admin/me/webauthn/register/start",
            Some(json!({ "name": name })),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(start["options"]["publicKey"]["rp"]["id"], RP_ID);
    assert_eq!(
        start["options"]["publicKey"]["authenticatorSelection"]["userVerification"],
        "required"
    );
    let credential = authenticator.create(&start["options"]);
    ok(
        call(
            server,
            token,
            Method::POST,
            "/admin/me/webauthn/register/finish",
            Some(json!({ "challenge_id": start["challenge_id"], "credential": credential })),
        )
        .await,
        201,
    )
    .await
}

/// Starts a passkey sign-in: with the password, or with the username alone.
async fn start_sign_in(server: &TestServer, username: &str, password: Option<&str>) -> Value {
    let mut body = json!({ "username": username });
    if let Some(password) = password {
        body["password"] = json!(password);
    }
    ok(
        call(
            server,
            None,
            Method::POST,
            "/admin/auth/webauthn/start",
            Some(body),
        )
        .await,
        200,
    )
    .await
}

async fn finish_sign_in(server: &TestServer, start: &Value, assertion: Value) -> reqwest::Response {
    call(
        server,
        None,
        Method::POST,
        "/admin/auth/webauthn/finish",
        Some(json!({ "challenge_id": start["challenge_id"], "credential": assertion })),
    )
    .await
}

async fn failures(server: &TestServer) -> Vec<String> {
    audit_events(server.state().store(), Some("auth.passkey_failed"), 100)
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
async fn a_passkey_is_registered_named_used_as_a_second_factor_and_removed() {
    let server = passkey_server(&[]).await;
    let root = admin(&server).await;
    let methods = ok(
        call(&server, None, Method::GET, "/admin/auth/methods", None).await,
        200,
    )
    .await;
    assert_eq!(methods["passkeys"], true);
    let mut laptop = SoftAuthenticator::new();
    let added = register(&server, &root, &mut laptop, "laptop").await;
    assert_eq!(added["name"], "laptop");
    let token = Some(root.access_token.as_str());
    // The same name twice is a conflict; the same authenticator again is excluded.
    let again = call(
        &server,
        token,
        Method::POST,
        "/admin/me/webauthn/register/start",
        Some(json!({ "name": "laptop" })),
    )
    .await;
    assert_error(again, 409, "conflict").await;
    let start = ok(
        call(
            &server,
            token,
            Method::POST,
            "/admin/me/webauthn/register/start",
            Some(json!({ "name": "phone" })),
        )
        .await,
        200,
    )
    .await;
    let excluded = &start["options"]["publicKey"]["excludeCredentials"];
    assert_eq!(
        excluded[0]["id"],
        URL_SAFE_NO_PAD.encode(&laptop.credential_id),
        "{excluded}"
    );
    let mut phone = SoftAuthenticator::new();
    let credential = phone.create(&start["options"]);
    ok(
        call(
            &server,
            token,
            Method::POST,
            "/admin/me/webauthn/register/finish",
            Some(json!({ "challenge_id": start["challenge_id"], "credential": credential })),
        )
        .await,
        201,
    )
    .await;
    let listed = ok(
        call(&server, token, Method::GET, "/admin/me/passkeys", None).await,
        200,
    )
    .await;
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["laptop", "phone"]);
    let me = ok(
        call(&server, token, Method::GET, "/admin/me", None).await,
        200,
    )
    .await;
    assert_eq!(
        (&me["passkeys"], &me["mfa_enabled"]),
        (&json!(2), &json!(true))
    );

    // With passkeys the password alone is not enough; with it, a passkey is.
    let password_only = login(&server, "admin", ADMIN_PASSWORD, json!({})).await;
    assert_error(password_only, 401, "mfa_required").await;
    let wrong = call(
        &server,
        None,
        Method::POST,
        "/admin/auth/webauthn/start",
        Some(json!({ "username": "admin", "password": "Not-The-Password-123" })),
    )
    .await;
    assert_error(wrong, 401, "invalid_credentials").await;
    let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
    let allowed: Vec<&str> = start["options"]["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(allowed.len(), 2);
    let assertion = laptop.get(&start["options"]);
    let signed_in = finish_sign_in(&server, &start, assertion.clone()).await;
    assert!(signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("cortex_session="));
    let tokens = ok(signed_in, 200).await;
    let me = ok(
        call(
            &server,
            tokens["access_token"].as_str(),
            Method::GET,
            "/admin/me",
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        (&me["username"], &me["session_method"]),
        (&json!("admin"), &json!("passkey"))
    );
    let logins = audit_events(server.state().store(), Some("auth.login"), 10).await;
    assert!(
        logins[0].details.contains("passkey"),
        "{}",
        logins[0].details
    );

    // The same assertion again: its challenge is used up.
    assert_error(
        finish_sign_in(&server, &start, assertion).await,
        401,
        "invalid_credentials",
    )
    .await;
    // Another origin (a phishing site), and no user verification: refused.
    let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
    let mut phished = laptop.clone();
    phished.origin = "https://cortex.evil.example".into();
    assert_error(
        finish_sign_in(&server, &start, phished.get(&start["options"])).await,
        401,
        "invalid_credentials",
    )
    .await;
    let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
    let mut absent = laptop.clone();
    absent.user_verified = false;
    assert_error(
        finish_sign_in(&server, &start, absent.get(&start["options"])).await,
        401,
        "invalid_credentials",
    )
    .await;
    // A signature that does not verify (a byte changed): refused.
    let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
    let mut tampered = laptop.clone().get(&start["options"]);
    let mut signature = URL_SAFE_NO_PAD
        .decode(tampered["response"]["signature"].as_str().unwrap())
        .unwrap();
    let last = signature.len() - 1;
    signature[last] ^= 1;
    tampered["response"]["signature"] = json!(URL_SAFE_NO_PAD.encode(signature));
    assert_error(
        finish_sign_in(&server, &start, tampered).await,
        401,
        "invalid_credentials",
    )
    .await;
    // A stranger's authenticator, never registered: refused.
    let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
    assert_error(
        finish_sign_in(
            &server,
            &start,
            SoftAuthenticator::new().get(&start["options"]),
        )
        .await,
        401,
        "invalid_credentials",
    )
    .await;

    // Removing one: the other stays; another user cannot remove it.
    let phone_id = listed["data"][1]["id"].as_str().unwrap();
    ok(
        call(
            &server,
            token,
            Method::DELETE,
            &format!("/admin/me/passkeys/{phone_id}"),
            None,
        )
        .await,
        200,
    )
    .await;
    let viewer = user_with_role(&server, &root, "someone", cortex_domain::Role::Viewer).await;
    let laptop_id = listed["data"][0]["id"].as_str().unwrap();
    assert_error(
        call(
            &server,
            Some(&viewer.access_token),
            Method::DELETE,
            &format!("/admin/me/passkeys/{laptop_id}"),
            None,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    let listed = ok(
        call(&server, token, Method::GET, "/admin/me/passkeys", None).await,
        200,
    )
    .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    for action in ["auth.passkey_add", "auth.passkey_remove"] {
        assert!(
            !audit_events(server.state().store(), Some(action), 10)
                .await
                .is_empty(),
            "{action}"
        );
    }
    assert!(failures(&server).await.len() >= 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_passkey_whose_counter_is_behind_is_refused() {
    let server = passkey_server(&[]).await;
    let root = admin(&server).await;
    let mut original = SoftAuthenticator::new();
    register(&server, &root, &mut original, "key").await;
    for _ in 0..2 {
        let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
        ok(
            finish_sign_in(&server, &start, original.get(&start["options"])).await,
            200,
        )
        .await;
    }
    // A copy of the key taken before those two sign-ins: its counter is behind.
    let mut clone = original.clone();
    clone.counter = 0;
    let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
    assert_error(
        finish_sign_in(&server, &start, clone.get(&start["options"])).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(failures(&server).await, ["counter_replayed"]);
    // The same counter as the last accepted one is refused too; the original goes on.
    let mut replayed = original.clone();
    replayed.counter -= 1;
    let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
    assert_error(
        finish_sign_in(&server, &start, replayed.get(&start["options"])).await,
        401,
        "invalid_credentials",
    )
    .await;
    let start = start_sign_in(&server, "admin", Some(ADMIN_PASSWORD)).await;
    ok(
        finish_sign_in(&server, &start, original.get(&start["options"])).await,
        200,
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_only_user_signs_in_with_the_passkey_alone_and_never_with_the_password() {
    let server = passkey_server(&[("CORTEX_REQUIRE_MFA_FOR", "developer")]).await;
    let root = admin(&server).await;
    let dev = user_with_role(&server, &root, "dev", cortex_domain::Role::Developer).await;
    let token = Some(dev.access_token.as_str());
    // MFA is required for developers: before a second factor, only self-service.
    assert_error(
        call(&server, token, Method::GET, "/admin/keys", None).await,
        403,
        "mfa_enrollment_required",
    )
    .await;
    let refused = call(
        &server,
        token,
        Method::PUT,
        "/admin/me/passkey-only",
        Some(json!({ "enabled": true })),
    )
    .await;
    assert_error(refused, 409, "conflict").await;
    let mut key = SoftAuthenticator::new();
    register(&server, &dev, &mut key, "yubikey").await;
    // A passkey is the second factor the role requires.
    assert_eq!(
        call(&server, token, Method::GET, "/admin/keys", None)
            .await
            .status(),
        200
    );
    ok(
        call(
            &server,
            token,
            Method::PUT,
            "/admin/me/passkey-only",
            Some(json!({ "enabled": true })),
        )
        .await,
        200,
    )
    .await;

    // The password is no way in any more (said only to whoever knew it)…
    assert_error(
        login(&server, "dev", NEW_PASSWORD, json!({})).await,
        401,
        "passkey_required",
    )
    .await;
    assert_error(
        login(&server, "dev", "Not-The-Password-123", json!({})).await,
        401,
        "invalid_credentials",
    )
    .await;
    // …the passkey alone is.
    let start = start_sign_in(&server, "dev", None).await;
    let tokens = ok(
        finish_sign_in(&server, &start, key.get(&start["options"])).await,
        200,
    )
    .await;
    let me = ok(
        call(
            &server,
            tokens["access_token"].as_str(),
            Method::GET,
            "/admin/me",
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        (&me["username"], &me["passkey_only"]),
        (&json!("dev"), &json!(true))
    );

    // Names that cannot sign in that way get a challenge of the same shape, stable per name,
    // that nothing can answer.
    let decoy = start_sign_in(&server, "nobody", None).await;
    let real = start_sign_in(&server, "dev", None).await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v["options"]["publicKey"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&decoy), keys(&real));
    let decoy_id = &decoy["options"]["publicKey"]["allowCredentials"][0]["id"];
    assert_eq!(
        &start_sign_in(&server, "nobody", None).await["options"]["publicKey"]["allowCredentials"]
            [0]["id"],
        decoy_id
    );
    let admin_decoy = start_sign_in(&server, "admin", None).await;
    assert_error(
        finish_sign_in(&server, &admin_decoy, key.get(&admin_decoy["options"])).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_error(
        finish_sign_in(&server, &decoy, key.get(&decoy["options"])).await,
        401,
        "invalid_credentials",
    )
    .await;

    // The last passkey of a passkey-only user stays until that is turned off.
    let listed = ok(
        call(&server, token, Method::GET, "/admin/me/passkeys", None).await,
        200,
    )
    .await;
    let id = listed["data"][0]["id"].as_str().unwrap();
    assert_error(
        call(
            &server,
            token,
            Method::DELETE,
            &format!("/admin/me/passkeys/{id}"),
            None,
        )
        .await,
        409,
        "conflict",
    )
    .await;
    ok(
        call(
            &server,
            token,
            Method::PUT,
            "/admin/me/passkey-only",
            Some(json!({ "enabled": false })),
        )
        .await,
        200,
    )
    .await;
    ok(
        call(
            &server,
            token,
            Method::DELETE,
            &format!("/admin/me/passkeys/{id}"),
            None,
        )
        .await,
        200,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn without_a_webauthn_origin_there_are_no_passkeys() {
    let server = TestServer::builder().start().await;
    let root = admin(&server).await;
    for (method, path, body) in [
        (Method::GET, "/admin/me/passkeys", None),
        (
            Method::POST,
            "/admin/me/webauthn/register/start",
            Some(json!({ "name": "x" })),
        ),
        (
            Method::POST,
            "/admin/auth/webauthn/start",
            Some(json!({ "username": "admin" })),
        ),
    ] {
        let response = call(
            &server,
            Some(&root.access_token),
            method.clone(),
            path,
            body,
        )
        .await;
        assert_eq!(response.status(), 404, "{method} {path}");
    }
    let methods = ok(
        call(&server, None, Method::GET, "/admin/auth/methods", None).await,
        200,
    )
    .await;
    assert_eq!(methods["passkeys"], false);
    server.stop().await;
}
