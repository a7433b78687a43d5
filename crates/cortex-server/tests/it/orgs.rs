//! Organizations and teams (SPEC §18): the isolation matrix — every admin route under every role
//! of two organizations, each holding users, keys, a team, usage rows and audit events — and the
//! organization's model allow-list on `/v1`.

use std::collections::HashMap;
use std::time::Duration;

use cortex_domain::Role;
use cortex_server::admin::{Access, Reach, ADMIN_ROUTES};
use cortex_testkit::{eventually, TestServer, ADMIN_PASSWORD};
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin::{admin, session, Session};
use crate::{assert_error, gateway_with_upstream, post_chat};

const NEW_PASSWORD: &str = "Org-Fixture-Passphrase-7c41";

/// What one organization holds, and who acts in it.
struct Org {
    tag: String,
    id: String,
    name: String,
    callers: Vec<(Role, Session)>,
    /// A user no test changes: the target of user routes.
    bystander: String,
    key_id: String,
    /// The developer's key, charged to the team.
    key: String,
    team_id: String,
    /// A service account no test changes: the target of service-account routes, with the
    /// credentials it must still work with afterwards.
    bot: String,
    bot_client_id: String,
    bot_secret: String,
    /// A policy of the admin's key, with a guardrail event about it.
    policy_id: String,
    /// Strings that belong to this organization only; none may appear in the other's answers.
    marks: Vec<String>,
}

impl Org {
    fn caller(&self, role: Role) -> &Session {
        &self.callers.iter().find(|(r, _)| *r == role).unwrap().1
    }
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

async fn json_ok(response: reqwest::Response, expected: u16) -> Value {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, expected, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Creates `username` with `role` in the caller's organization (or `org_id`), logs in and
/// changes the forced password; the session stays valid.
async fn member(
    server: &TestServer,
    creator: &Session,
    username: &str,
    role: Role,
    org_id: Option<&str>,
) -> Session {
    let mut body =
        json!({ "username": username, "password": ADMIN_PASSWORD, "role": role.as_str() });
    if let Some(org_id) = org_id {
        body["org_id"] = json!(org_id);
    }
    json_ok(
        send(
            server,
            &creator.access_token,
            Method::POST,
            "/admin/users",
            Some(body),
        )
        .await,
        201,
    )
    .await;
    let first = session(server, username, ADMIN_PASSWORD).await;
    let changed = send(
        server,
        &first.access_token,
        Method::POST,
        "/admin/auth/password",
        Some(json!({ "current_password": ADMIN_PASSWORD, "new_password": NEW_PASSWORD })),
    )
    .await;
    assert_eq!(changed.status(), 200);
    first
}

/// An organization made by the default admin, whose own admin then fills it: users of every
/// role, a bystander, a team with the developer in it, a key of the admin's and one of the
/// developer's charged to the team, and one request through `/v1` (a usage row).
async fn organization(
    server: &TestServer,
    root: &Session,
    tag: &str,
    allowed_models: Option<Vec<&str>>,
) -> Org {
    let name = format!("{tag}-org");
    let mut body = json!({ "name": name, "budget_usd": 50.0, "budget_period": "monthly" });
    if let Some(models) = allowed_models {
        body["allowed_models"] = json!(models);
    }
    let created = json_ok(
        send(
            server,
            &root.access_token,
            Method::POST,
            "/admin/orgs",
            Some(body),
        )
        .await,
        201,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["budget_period"], "monthly");

    let org_admin = member(
        server,
        root,
        &format!("{tag}-admin"),
        Role::Admin,
        Some(&id),
    )
    .await;
    let mut callers = vec![(Role::Admin, org_admin)];
    for role in [Role::Operator, Role::Developer, Role::Viewer, Role::Billing] {
        // Created by the organization's own admin, in their organization.
        let session = member(
            server,
            &callers[0].1,
            &format!("{tag}-{}", role.as_str()),
            role,
            None,
        )
        .await;
        callers.push((role, session));
    }
    let admin_token = callers[0].1.access_token.clone();
    let bystander = json_ok(
        send(
            server,
            &admin_token,
            Method::POST,
            "/admin/users",
            Some(json!({ "username": format!("{tag}-bystander"), "password": ADMIN_PASSWORD, "role": "viewer" })),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(bystander["org_id"], id.as_str());
    let bystander = bystander["id"].as_str().unwrap().to_owned();

    let team = json_ok(
        send(
            server,
            &admin_token,
            Method::POST,
            "/admin/teams",
            Some(
                json!({ "name": format!("{tag}-team"), "budget_usd": 5, "budget_period": "daily" }),
            ),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(team["org_id"], id.as_str());
    let team_id = team["id"].as_str().unwrap().to_owned();
    let developer = callers
        .iter()
        .find(|(r, _)| *r == Role::Developer)
        .unwrap()
        .1
        .user_id
        .clone();
    let members = json_ok(
        send(
            server,
            &admin_token,
            Method::PUT,
            &format!("/admin/teams/{team_id}/members"),
            Some(json!({ "user_ids": [developer] })),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(members["members"], json!([developer]));

    let admin_key = json_ok(
        send(
            server,
            &admin_token,
            Method::POST,
            "/admin/keys",
            Some(json!({ "name": format!("{tag}-admin-key"), "scopes": ["chat"] })),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(admin_key["org_id"], id.as_str());
    let dev_token = callers
        .iter()
        .find(|(r, _)| *r == Role::Developer)
        .unwrap()
        .1
        .access_token
        .clone();
    let dev_key = json_ok(
        send(
            server,
            &dev_token,
            Method::POST,
            "/admin/keys",
            Some(
                json!({ "name": format!("{tag}-dev-key"), "scopes": ["chat"], "team_id": team_id }),
            ),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(dev_key["team_id"], team_id.as_str());
    let key = dev_key["key"].as_str().unwrap().to_owned();
    let response = post_chat(server, &key, "llama", false).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    // Two service accounts made by the organization's admin: an admin account that walks the
    // matrix as one more caller (with a token from the client credentials grant), and a
    // bystander account that the other organization's callers try to change.
    let mut bots = Vec::new();
    for (name, role) in [
        (format!("{tag}-admin-bot"), "admin"),
        (format!("{tag}-bot"), "viewer"),
    ] {
        bots.push(
            json_ok(
                send(
                    server,
                    &admin_token,
                    Method::POST,
                    "/admin/service-accounts",
                    Some(json!({ "name": name, "role": role })),
                )
                .await,
                201,
            )
            .await,
        );
    }
    assert_eq!(bots[0]["org_id"], id.as_str());
    let bot_token = client_credentials_token(
        server,
        bots[0]["client_id"].as_str().unwrap(),
        bots[0]["client_secret"].as_str().unwrap(),
    )
    .await;
    callers.push((
        Role::Admin,
        Session {
            access_token: bot_token,
            refresh_token: String::new(),
            cookie: String::new(),
            user_id: bots[0]["id"].as_str().unwrap().to_owned(),
        },
    ));

    // A guardrail policy on the admin's key, and one guardrail hit recorded under it.
    let policy = json_ok(
        send(
            server,
            &admin_token,
            Method::POST,
            "/admin/policies",
            Some(json!({
                "scope": "key",
                "target": admin_key["id"],
                "guardrails": { "rules": [
                    { "detector": { "type": "regex", "name": format!("{tag}_rule"), "pattern": "x+" }, "action": "log" }
                ] }
            })),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(policy["org_id"], id.as_str());
    let policy_id = policy["id"].as_str().unwrap().to_owned();
    server
        .state()
        .data_plane()
        .guard_events
        .record(cortex_gateway::guard_events::GuardEvent {
            org_id: id.clone(),
            key_id: admin_key["id"].as_str().unwrap().to_owned(),
            user_id: String::new(),
            model: format!("{tag}-model"),
            request_id: format!("{tag}-request"),
            policy_id: policy_id.clone(),
            direction: "request",
            detector: "regex",
            action: cortex_domain::policy::GuardAction::Log,
            label: format!("{tag}_rule"),
            count: 1,
        });

    // A response-cache entry of this organization's, which the other's purges must not reach.
    put_isolation_entry(server, &id);

    let mut marks = vec![
        id.clone(),
        policy_id.clone(),
        format!("{tag}_rule"),
        format!("{tag}-request"),
        name.clone(),
        bystander.clone(),
        format!("{tag}-bystander"),
        team_id.clone(),
        format!("{tag}-team"),
        admin_key["id"].as_str().unwrap().to_owned(),
        dev_key["id"].as_str().unwrap().to_owned(),
        format!("{tag}-admin-key"),
        format!("{tag}-dev-key"),
    ];
    for (_, caller) in &callers {
        marks.push(caller.user_id.clone());
    }
    for bot in &bots {
        for field in ["id", "name", "client_id"] {
            marks.push(bot[field].as_str().unwrap().to_owned());
        }
    }
    for role in Role::ALL {
        marks.push(format!("{tag}-{}", role.as_str()));
    }
    Org {
        tag: tag.to_owned(),
        id,
        name,
        callers,
        bystander,
        key_id: admin_key["id"].as_str().unwrap().to_owned(),
        key,
        team_id,
        bot: bots[1]["id"].as_str().unwrap().to_owned(),
        bot_client_id: bots[1]["client_id"].as_str().unwrap().to_owned(),
        bot_secret: bots[1]["client_secret"].as_str().unwrap().to_owned(),
        policy_id,
        marks,
    }
}

/// A token for a service account (OAuth 2.0 client credentials, HTTP Basic).
async fn client_credentials_token(server: &TestServer, client_id: &str, secret: &str) -> String {
    let response = server
        .http()
        .post(server.url("/oauth/token"))
        .basic_auth(client_id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    json_ok(response, 200).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The id an object route of `other` is tried with, and a body that would be accepted.
fn object_request(
    other: &Org,
    deployment: &HashMap<&str, String>,
    method: &Method,
    path: &str,
) -> (String, Option<Value>) {
    let (id, body) = if path.starts_with("/admin/users/") {
        (
            &other.bystander,
            (*method == Method::PATCH).then(|| json!({ "disabled": true })),
        )
    } else if path == "/admin/keys/{id}/rotate" {
        (&other.key_id, Some(json!({ "grace_period_seconds": 0 })))
    } else if path.starts_with("/admin/keys/") {
        (&other.key_id, None)
    } else if path == "/admin/teams/{id}/members" {
        (&other.team_id, Some(json!({ "user_ids": [] })))
    } else if path.starts_with("/admin/teams/") {
        (
            &other.team_id,
            (*method == Method::PATCH).then(|| json!({ "name": "taken-over" })),
        )
    } else if path == "/admin/service-accounts/{id}/rotate" {
        (&other.bot, None)
    } else if path.starts_with("/admin/service-accounts/") {
        (
            &other.bot,
            (*method == Method::PATCH).then(|| json!({ "disabled": true, "role": "admin" })),
        )
    } else if path.starts_with("/admin/policies/") {
        (
            &other.policy_id,
            (*method == Method::PATCH).then(|| json!({ "guardrails": null })),
        )
    } else if path.starts_with("/admin/orgs/") {
        (
            &other.id,
            (*method == Method::PATCH).then(|| json!({ "name": "taken-over" })),
        )
    } else if path.starts_with("/admin/providers/") {
        (
            &deployment["provider"],
            (*method == Method::PATCH).then(|| json!({ "weight": 2 })),
        )
    } else if path.starts_with("/admin/engines/") {
        (
            &deployment["engine"],
            (*method == Method::PATCH).then(|| json!({ "auto_start": true })),
        )
    } else if path.starts_with("/admin/models/") {
        (
            &deployment["model"],
            (*method == Method::PATCH).then(|| json!({ "input_price_per_mtok": 9.0 })),
        )
    } else {
        panic!("no object for {method} {path}: add one to the isolation matrix");
    };
    (path.replace("{id}", id), body)
}

/// A create that names the other organization (or its team), and the status it must get from
/// a caller who may create at all.
fn create_request(other: &Org, path: &str, n: usize) -> (Option<Value>, u16) {
    match path {
        "/admin/users" => (
            Some(
                json!({ "username": format!("intruder{n}"), "password": ADMIN_PASSWORD, "role": "admin", "org_id": other.id }),
            ),
            404,
        ),
        "/admin/teams" => (
            Some(json!({ "name": format!("intruders{n}"), "org_id": other.id })),
            404,
        ),
        "/admin/service-accounts" => (
            Some(
                json!({ "name": format!("intruder-bot{n}"), "role": "admin", "org_id": other.id }),
            ),
            404,
        ),
        "/admin/keys" => (
            Some(
                json!({ "name": format!("intruder{n}"), "scopes": ["chat"], "team_id": other.team_id }),
            ),
            400,
        ),
        // Deployment and organization routes are refused by reach before any body is read.
        "/admin/providers" => (
            Some(json!({ "name": format!("p{n}"), "base_url": "http://127.0.0.1:9/v1" })),
            403,
        ),
        "/admin/models" => (
            Some(json!({ "name": format!("m{n}"), "provider": "fake" })),
            403,
        ),
        "/admin/orgs" => (Some(json!({ "name": format!("o{n}") })), 403),
        // A policy for the other organization's key: that key is not found in one's own.
        "/admin/policies" => (
            Some(json!({ "scope": "key", "target": other.key_id, "cache": { "ttl_seconds": 60 } })),
            404,
        ),
        "/admin/engines" | "/admin/engines/dry-run" => (
            Some(
                json!({ "name": format!("e{n}"), "engine": "vllm", "runtime": "process", "model": "org/model" }),
            ),
            403,
        ),
        other => panic!("no create for POST {other}: add one to the isolation matrix"),
    }
}

/// Listings asked for the other organization's objects by filter: still nothing of it.
fn filtered_lists(other: &Org) -> Vec<String> {
    let admin_name = format!("{}-admin", other.tag);
    vec![
        format!("/admin/usage?org={}", other.id),
        format!("/admin/usage?team={}", other.team_id),
        format!("/admin/usage?key={}", other.key_id),
        format!(
            "/admin/usage?user={}",
            other.caller(Role::Developer).user_id
        ),
        format!("/admin/usage/summary?org={}&group_by=team", other.id),
        format!("/admin/usage/series?org={}&group_by=org", other.id),
        format!("/admin/usage/series?group_by=key&key={}", other.key_id),
        format!("/admin/usage/series?group_by=team&team={}", other.team_id),
        format!("/admin/usage/export?org={}", other.id),
        format!(
            "/admin/usage/export?user={}",
            other.caller(Role::Developer).user_id
        ),
        format!("/admin/audit?actor={admin_name}"),
    ]
}

fn leaks<'a>(body: &str, other: &'a Org) -> Vec<&'a str> {
    other
        .marks
        .iter()
        .filter(|mark| body.contains(mark.as_str()))
        .map(String::as_str)
        .collect()
}

/// Every guarded admin route, called by every role of `own` on `other`'s objects: 403 where the
/// role or the route's reach forbids it, 404 for another organization's object, and lists that
/// hold nothing of `other`. Returns how many requests were checked.
async fn walk_every_route(
    server: &TestServer,
    own: &Org,
    other: &Org,
    deployment: &HashMap<&str, String>,
) -> usize {
    let mut checked = 0;
    for route in ADMIN_ROUTES {
        let Access::AnyOf(permissions) = route.access else {
            continue;
        };
        let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
        for (role, caller) in &own.callers {
            checked += 1;
            let permitted = permissions.iter().any(|p| role.permits(*p));
            // Members of another organization than the default one reach tenant routes only.
            let reached = route.reach == Reach::Tenant;
            let (path, body, expected) = if route.path.contains("{id}") {
                let (path, body) = object_request(other, deployment, &method, route.path);
                (path, body, 404)
            } else if method == Method::POST {
                let (body, status) = create_request(other, route.path, checked);
                (route.path.to_owned(), body, status)
            } else {
                (route.path.to_owned(), None, 200)
            };
            let expected = if !permitted || !reached {
                403
            } else {
                expected
            };
            let response = send(server, &caller.access_token, method.clone(), &path, body).await;
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert_eq!(
                status, expected,
                "{method} {path} as {role:?} of {}: {text}",
                own.name
            );
            let leaked = leaks(&text, other);
            assert!(
                leaked.is_empty(),
                "{method} {path} as {role:?} of {} shows {leaked:?} of {}: {text}",
                own.name,
                other.name
            );
        }
    }
    for path in filtered_lists(other) {
        for (role, caller) in &own.callers {
            checked += 1;
            let response = send(server, &caller.access_token, Method::GET, &path, None).await;
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert!(
                status == 200 || status == 403,
                "GET {path} as {role:?}: {status} {text}"
            );
            assert!(
                leaks(&text, other).is_empty(),
                "GET {path} as {role:?} of {} shows {} objects: {text}",
                own.name,
                other.name
            );
        }
    }
    checked
}

/// The other organization's objects are as they were: nothing was changed, revoked, rotated,
/// renamed or deleted through the matrix.
fn put_isolation_entry(server: &TestServer, org_id: &str) {
    server.state().data_plane().cache.put(
        isolation_cache_key(org_id),
        cortex_gateway::cache::CachedAnswer::whole(
            axum::body::Bytes::from_static(b"{}"),
            cortex_wire::TokenUsage::default(),
            "fake",
        ),
        Duration::from_secs(3600),
    );
}

/// Whether `own`'s walk purged its own cache entry (`DELETE /admin/cache`) and left `other`'s.
async fn purged_own_cache_only(server: &TestServer, own: &Org, other: &Org) {
    let cache = &server.state().data_plane().cache;
    assert!(
        cache.get(&isolation_cache_key(&own.id)).await.is_none(),
        "{} purged its own cache entries",
        own.name
    );
    assert!(
        cache.get(&isolation_cache_key(&other.id)).await.is_some(),
        "{}'s cache entry was purged from {}",
        other.name,
        own.name
    );
}

/// The key of the cache entry each organization of the matrix holds.
fn isolation_cache_key(org_id: &str) -> cortex_gateway::cache::CacheKey {
    cortex_gateway::cache::cache_key(org_id, "isolation", cortex_wire::Endpoint::Chat, b"{}", b"")
        .unwrap()
}

async fn untouched(server: &TestServer, root: &Session, org: &Org) {
    let token = &root.access_token;
    let users = json_ok(
        send(server, token, Method::GET, "/admin/users", None).await,
        200,
    )
    .await;
    let bystander = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == org.bystander.as_str())
        .unwrap_or_else(|| panic!("{} bystander gone", org.name));
    assert_eq!(bystander["disabled"], false);
    let key = json_ok(
        send(
            server,
            token,
            Method::GET,
            &format!("/admin/keys/{}", org.key_id),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(key["status"], "active", "{key}");
    assert!(key["rotated_to"].is_null(), "{key}");
    let teams = json_ok(
        send(server, token, Method::GET, "/admin/teams", None).await,
        200,
    )
    .await;
    let team = teams["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == org.team_id.as_str())
        .unwrap_or_else(|| panic!("{} team gone", org.name));
    assert_eq!(team["members"].as_array().unwrap().len(), 1, "{team}");
    assert_ne!(team["name"], "taken-over");
    let orgs = json_ok(
        send(server, token, Method::GET, "/admin/orgs", None).await,
        200,
    )
    .await;
    assert!(orgs["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == org.id.as_str() && o["name"] == org.name.as_str()));
    // Its key still works.
    let response = post_chat(server, &org.key, "llama", false).await;
    assert_eq!(response.status(), 200);
    // Its service account is as it was, and its secret still gets a token.
    let bot = json_ok(
        send(
            server,
            token,
            Method::GET,
            &format!("/admin/service-accounts/{}", org.bot),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        (&bot["disabled"], &bot["role"]),
        (&json!(false), &json!("viewer")),
        "{bot}"
    );
    client_credentials_token(server, &org.bot_client_id, &org.bot_secret).await;
    // Its policy is as it was.
    let policy = json_ok(
        send(
            server,
            token,
            Method::GET,
            &format!("/admin/policies/{}", org.policy_id),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(policy["version"], 1, "{policy}");
    assert!(policy["guardrails"].is_object(), "{policy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_object_of_one_organization_is_readable_listable_changeable_or_usable_from_another() {
    let (server, _upstream) = gateway_with_upstream().await;
    let root = admin(&server).await;
    let acme = organization(&server, &root, "acme", None).await;
    let globex = organization(&server, &root, "globex", Some(vec!["llama"])).await;

    // Both usage rows are written (off the hot path) before anything is compared.
    let written = eventually(Duration::from_secs(10), || async {
        let usage = send(
            &server,
            &root.access_token,
            Method::GET,
            "/admin/usage",
            None,
        )
        .await;
        let body: Value = usage.json().await.unwrap();
        body["data"].as_array().is_some_and(|rows| rows.len() >= 2)
    })
    .await;
    assert!(written, "usage rows written");
    // And both guardrail events (also off the hot path), so the walk has them to leak.
    let events_written = eventually(Duration::from_secs(10), || async {
        let events = send(
            &server,
            &root.access_token,
            Method::GET,
            "/admin/guardrails/events",
            None,
        )
        .await;
        let body: Value = events.json().await.unwrap();
        body["data"].as_array().is_some_and(|rows| rows.len() >= 2)
    })
    .await;
    assert!(events_written, "guardrail events written");

    let providers = json_ok(
        send(
            &server,
            &root.access_token,
            Method::GET,
            "/admin/providers",
            None,
        )
        .await,
        200,
    )
    .await;
    let models = json_ok(
        send(
            &server,
            &root.access_token,
            Method::GET,
            "/admin/models",
            None,
        )
        .await,
        200,
    )
    .await;
    // An engine of the deployment (never started: the walk is refused before it is reached).
    let engine = json_ok(
        send(
            &server,
            &root.access_token,
            Method::POST,
            "/admin/engines",
            Some(json!({ "name": "deployment-engine", "engine": "vllm", "runtime": "process", "model": "org/model" })),
        )
        .await,
        201,
    )
    .await;
    let deployment = HashMap::from([
        ("engine", engine["id"].as_str().unwrap().to_owned()),
        (
            "provider",
            providers["data"][0]["id"].as_str().unwrap().to_owned(),
        ),
        (
            "model",
            models["data"][0]["id"].as_str().unwrap().to_owned(),
        ),
    ]);

    let mut checked = walk_every_route(&server, &globex, &acme, &deployment).await;
    purged_own_cache_only(&server, &globex, &acme).await;
    put_isolation_entry(&server, &globex.id);
    checked += walk_every_route(&server, &acme, &globex, &deployment).await;
    purged_own_cache_only(&server, &acme, &globex).await;
    let guarded = ADMIN_ROUTES
        .iter()
        .filter(|r| matches!(r.access, Access::AnyOf(_)))
        .count();
    assert!(
        guarded >= 40,
        "routes went missing from the table: {guarded}"
    );
    assert!(checked >= 2 * 5 * guarded, "{checked}");
    untouched(&server, &root, &acme).await;
    untouched(&server, &root, &globex).await;

    // Admins of the default organization see both organizations' objects.
    for path in [
        "/admin/users",
        "/admin/keys",
        "/admin/teams",
        "/admin/orgs",
        "/admin/usage",
        "/admin/audit?limit=1000",
        "/admin/policies",
        "/admin/guardrails/events",
    ] {
        let text = send(&server, &root.access_token, Method::GET, path, None)
            .await
            .text()
            .await
            .unwrap();
        for org in [&acme, &globex] {
            assert!(
                text.contains(&org.id)
                    || text.contains(&org.team_id)
                    || text.contains(&org.bystander),
                "{path} as the default admin lacks {}: {text}",
                org.name
            );
        }
    }
    for org in [&acme, &globex] {
        for path in [
            format!("/admin/keys/{}", org.key_id),
            format!("/admin/usage?org={}", org.id),
        ] {
            let text = json_ok(
                send(&server, &root.access_token, Method::GET, &path, None).await,
                200,
            )
            .await
            .to_string();
            assert!(!leaks(&text, org).is_empty(), "{path}: {text}");
        }
    }
    // Usage rows carry the key's organization and team; audit events their organization.
    let usage = json_ok(
        send(
            &server,
            &root.access_token,
            Method::GET,
            &format!("/admin/usage?team={}", acme.team_id),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(usage["data"][0]["org_id"], acme.id.as_str(), "{usage}");
    let events = json_ok(
        send(
            &server,
            &acme.caller(Role::Admin).access_token,
            Method::GET,
            "/admin/audit?limit=1000",
            None,
        )
        .await,
        200,
    )
    .await;
    let actions: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "org.create",
        "user.create",
        "team.create",
        "team.members",
        "key.create",
        "auth.login",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    // One chain for all: it verifies, from any organization.
    let verify = json_ok(
        send(
            &server,
            &globex.caller(Role::Viewer).access_token,
            Method::GET,
            "/admin/audit/verify",
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(verify["ok"], true, "{verify}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organizations_model_allow_list_binds_its_keys_and_what_it_sees() {
    let (server, _upstream) = gateway_with_upstream().await;
    let root = admin(&server).await;
    let globex = organization(&server, &root, "globex", Some(vec!["llama"])).await;

    // Its key may call llama, not mistral, although the key itself names no models.
    assert_error(
        post_chat(&server, &globex.key, "mistral", false).await,
        403,
        "model_not_allowed",
    )
    .await;
    assert_eq!(
        post_chat(&server, &globex.key, "llama", false)
            .await
            .status(),
        200
    );
    let listed: Value = server
        .http()
        .get(server.url("/v1/models"))
        .bearer_auth(&globex.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama"]);
    let admin_models = json_ok(
        send(
            &server,
            &globex.caller(Role::Developer).access_token,
            Method::GET,
            "/admin/models",
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        admin_models["data"].as_array().unwrap().len(),
        1,
        "{admin_models}"
    );
    assert_eq!(admin_models["data"][0]["name"], "llama");
    // An operator of another organization does not see provider names either.
    let operator_models = json_ok(
        send(
            &server,
            &globex.caller(Role::Operator).access_token,
            Method::GET,
            "/admin/models",
            None,
        )
        .await,
        200,
    )
    .await;
    assert!(
        !operator_models.to_string().contains("fake"),
        "{operator_models}"
    );

    // Widening the list applies at once to the organization's keys; clearing it allows all.
    json_ok(
        send(
            &server,
            &root.access_token,
            Method::PATCH,
            &format!("/admin/orgs/{}", globex.id),
            Some(json!({ "allowed_models": ["llama", "mistral"] })),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        post_chat(&server, &globex.key, "mistral", false)
            .await
            .status(),
        200
    );
    json_ok(
        send(
            &server,
            &root.access_token,
            Method::PATCH,
            &format!("/admin/orgs/{}", globex.id),
            Some(json!({ "allowed_models": [] })),
        )
        .await,
        200,
    )
    .await;
    assert_error(
        post_chat(&server, &globex.key, "llama", false).await,
        403,
        "model_not_allowed",
    )
    .await;
    json_ok(
        send(
            &server,
            &root.access_token,
            Method::PATCH,
            &format!("/admin/orgs/{}", globex.id),
            Some(json!({ "allowed_models": null })),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        post_chat(&server, &globex.key, "mistral", false)
            .await
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizations_teams_and_budgets_follow_their_rules() {
    let server = TestServer::builder().start().await;
    let root = admin(&server).await;
    let token = root.access_token.clone();
    let acme = organization_without_traffic(&server, &root).await;

    // Budgets: both fields or neither, a known period, a finite amount of at least 0; `period`
    // is accepted for `budget_period` (SPEC §18's name).
    for bad in [
        json!({ "name": "x1", "budget_usd": 5 }),
        json!({ "name": "x2", "budget_period": "daily" }),
        json!({ "name": "x3", "budget_usd": -1, "budget_period": "daily" }),
        json!({ "name": "x4", "budget_usd": 5, "budget_period": "weekly" }),
        json!({ "name": "x5", "surprise": true }),
        json!({ "name": "" }),
        json!({ "name": "x6", "tokens_per_minute": 0 }),
    ] {
        let response = send(
            &server,
            &token,
            Method::POST,
            "/admin/orgs",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            response.status(),
            400,
            "{bad}: {}",
            response.text().await.unwrap()
        );
    }
    let aliased = json_ok(
        send(
            &server,
            &token,
            Method::POST,
            "/admin/orgs",
            Some(json!({ "name": "x7", "budget_usd": 0, "period": "total" })),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(aliased["budget_period"], "total");
    assert!(aliased["created_at"].as_str().unwrap().ends_with('Z'));
    let duplicate = send(
        &server,
        &token,
        Method::POST,
        "/admin/orgs",
        Some(json!({ "name": "x7" })),
    )
    .await;
    assert_error(duplicate, 409, "conflict").await;
    // A budget is cleared with nulls, not with one of the two fields.
    let cleared = json_ok(
        send(
            &server,
            &token,
            Method::PATCH,
            &format!("/admin/orgs/{}", aliased["id"].as_str().unwrap()),
            Some(json!({ "budget_usd": null, "budget_period": null })),
        )
        .await,
        200,
    )
    .await;
    assert!(cleared["budget_usd"].is_null());
    let half = send(
        &server,
        &token,
        Method::PATCH,
        &format!("/admin/orgs/{}", aliased["id"].as_str().unwrap()),
        Some(json!({ "budget_usd": 3 })),
    )
    .await;
    assert_eq!(half.status(), 400);
    // Users carry budgets too.
    let user = json_ok(
        send(
            &server,
            &token,
            Method::PATCH,
            &format!("/admin/users/{}", acme.bystander),
            Some(json!({ "budget_usd": 12.5, "budget_period": "daily" })),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        (user["budget_usd"].as_f64(), user["budget_period"].as_str()),
        (Some(12.5), Some("daily"))
    );

    // The default organization cannot go; a non-empty one neither; an empty one can.
    let default = send(&server, &token, Method::DELETE, "/admin/orgs/default", None).await;
    assert_error(default, 409, "conflict").await;
    let busy = send(
        &server,
        &token,
        Method::DELETE,
        &format!("/admin/orgs/{}", acme.id),
        None,
    )
    .await;
    assert_error(busy, 409, "conflict").await;
    let gone = send(
        &server,
        &token,
        Method::DELETE,
        &format!("/admin/orgs/{}", aliased["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(gone.status(), 200);
    let missing = send(
        &server,
        &token,
        Method::DELETE,
        &format!("/admin/orgs/{}", aliased["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_error(missing, 404, "not_found").await;

    // Team members come from the team's organization; a developer charges keys only to teams
    // they are a member of.
    let org_admin = acme.caller(Role::Admin).access_token.clone();
    let outsider = send(
        &server,
        &org_admin,
        Method::PUT,
        &format!("/admin/teams/{}/members", acme.team_id),
        Some(json!({ "user_ids": [root.user_id] })),
    )
    .await;
    assert_error(outsider, 400, "invalid_request").await;
    let not_a_member = send(
        &server,
        &acme.caller(Role::Operator).access_token,
        Method::POST,
        "/admin/keys",
        Some(json!({ "name": "not a member", "scopes": ["chat"], "team_id": acme.team_id })),
    )
    .await;
    assert_error(not_a_member, 400, "invalid_request").await;
    // Only admins of the default organization manage organizations.
    let refused = send(&server, &org_admin, Method::GET, "/admin/orgs", None).await;
    assert_error(refused, 403, "forbidden").await;
    // /admin/me names the organization and the teams.
    let me = json_ok(
        send(
            &server,
            &acme.caller(Role::Developer).access_token,
            Method::GET,
            "/admin/me",
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(me["org_id"], acme.id.as_str());
    assert_eq!(me["org_name"], acme.name.as_str());
    assert_eq!(me["all_orgs"], false);
    assert_eq!(me["teams"][0]["id"], acme.team_id.as_str());
    // Deployment-wide permissions are of no use outside the default organization: /admin/me
    // leaves them out, so the console offers nothing that would be refused.
    let operator_me = json_ok(
        send(
            &server,
            &acme.caller(Role::Operator).access_token,
            Method::GET,
            "/admin/me",
            None,
        )
        .await,
        200,
    )
    .await;
    let permissions = operator_me["permissions"].to_string();
    assert!(!permissions.contains("providers:read"), "{permissions}");
    assert!(!permissions.contains("check:read"), "{permissions}");
    assert!(permissions.contains("keys:write_all"), "{permissions}");
    let root_me = json_ok(
        send(&server, &token, Method::GET, "/admin/me", None).await,
        200,
    )
    .await;
    assert!(root_me["permissions"]
        .to_string()
        .contains("providers:write"));
    assert_eq!(
        (root_me["org_id"].as_str(), root_me["all_orgs"].as_bool()),
        (Some("default"), Some(true))
    );

    // Deleting a team is the organization admin's; then the organization empties and goes.
    let deleted = send(
        &server,
        &org_admin,
        Method::DELETE,
        &format!("/admin/teams/{}", acme.team_id),
        None,
    )
    .await;
    assert_eq!(deleted.status(), 200);
    for (_, caller) in acme.callers.iter().skip(1) {
        let response = send(
            &server,
            &token,
            Method::DELETE,
            &format!("/admin/users/{}", caller.user_id),
            None,
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    for id in [
        acme.bystander.clone(),
        acme.caller(Role::Admin).user_id.clone(),
    ] {
        let response = send(
            &server,
            &token,
            Method::DELETE,
            &format!("/admin/users/{id}"),
            None,
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let emptied = send(
        &server,
        &token,
        Method::DELETE,
        &format!("/admin/orgs/{}", acme.id),
        None,
    )
    .await;
    assert_eq!(emptied.status(), 200, "{}", emptied.text().await.unwrap());
    server.stop().await;
}

/// An organization with its callers, a bystander and a team (the developer in it), without
/// provider traffic.
async fn organization_without_traffic(server: &TestServer, root: &Session) -> Org {
    let created = json_ok(
        send(
            server,
            &root.access_token,
            Method::POST,
            "/admin/orgs",
            Some(json!({ "name": "acme-org" })),
        )
        .await,
        201,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let org_admin = member(server, root, "acme-admin", Role::Admin, Some(&id)).await;
    let mut callers = vec![(Role::Admin, org_admin)];
    for role in [Role::Operator, Role::Developer] {
        let session = member(
            server,
            &callers[0].1,
            &format!("acme-{}", role.as_str()),
            role,
            None,
        )
        .await;
        callers.push((role, session));
    }
    let token = callers[0].1.access_token.clone();
    let bystander = json_ok(
        send(server, &token, Method::POST, "/admin/users",
            Some(json!({ "username": "acme-bystander", "password": ADMIN_PASSWORD, "role": "viewer" }))).await,
        201,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let team_id = json_ok(
        send(
            server,
            &token,
            Method::POST,
            "/admin/teams",
            Some(json!({ "name": "acme-team" })),
        )
        .await,
        201,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let developer = callers[2].1.user_id.clone();
    json_ok(
        send(
            server,
            &token,
            Method::PUT,
            &format!("/admin/teams/{team_id}/members"),
            Some(json!({ "user_ids": [developer] })),
        )
        .await,
        200,
    )
    .await;
    Org {
        tag: "acme".into(),
        id,
        name: "acme-org".into(),
        callers,
        bystander,
        key_id: String::new(),
        key: String::new(),
        team_id,
        bot: String::new(),
        bot_client_id: String::new(),
        bot_secret: String::new(),
        policy_id: String::new(),
        marks: vec![],
    }
}
