//! `/openapi.json`: the admin API described from the code. Paths, methods and security come
//! from [`crate::admin::ADMIN_ROUTES`] (the same table the guard enforces), request bodies from
//! the handlers' request types (`utoipa::ToSchema`), so the document cannot drift from what is
//! served.

use axum::Json;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, RefOr,
    Required, ResponseBuilder, Schema,
};
use utoipa::PartialSchema;

use crate::admin::{
    auth, keys, me, oauth, orgs, passkeys, policies, provider_health, providers_models,
    service_accounts, users, Access, Reach, ADMIN_ROUTES,
};

fn method(m: &axum::http::Method) -> HttpMethod {
    match *m {
        axum::http::Method::POST => HttpMethod::Post,
        axum::http::Method::PATCH => HttpMethod::Patch,
        axum::http::Method::DELETE => HttpMethod::Delete,
        axum::http::Method::PUT => HttpMethod::Put,
        _ => HttpMethod::Get,
    }
}

/// The JSON body each route takes.
fn request_schema(m: &axum::http::Method, path: &str) -> Option<RefOr<Schema>> {
    use axum::http::Method as M;
    Some(match (m.clone(), path) {
        (M::POST, "/admin/auth/login") => auth::LoginRequest::schema(),
        (M::POST, "/admin/auth/refresh") => auth::RefreshRequest::schema(),
        (M::POST, "/admin/auth/password") => auth::PasswordRequest::schema(),
        (M::POST, "/admin/me/totp/confirm") | (M::DELETE, "/admin/me/totp") => {
            me::CodeRequest::schema()
        }
        (M::POST, "/admin/users") => users::CreateUser::schema(),
        (M::PATCH, "/admin/users/{id}") => users::UpdateUser::schema(),
        (M::POST, "/admin/keys") => keys::CreateKey::schema(),
        (M::POST, "/admin/keys/{id}/rotate") => keys::RotateKey::schema(),
        (M::POST, "/admin/providers") => providers_models::CreateProvider::schema(),
        (M::PATCH, "/admin/providers/{id}") => providers_models::UpdateProvider::schema(),
        (M::POST, "/admin/models") => providers_models::CreateModel::schema(),
        (M::PATCH, "/admin/models/{id}") => providers_models::UpdateModel::schema(),
        (M::POST, "/admin/orgs") => orgs::CreateOrg::schema(),
        (M::PATCH, "/admin/orgs/{id}") => orgs::UpdateOrg::schema(),
        (M::POST, "/admin/teams") => orgs::CreateTeam::schema(),
        (M::PATCH, "/admin/teams/{id}") => orgs::UpdateTeam::schema(),
        (M::PUT, "/admin/teams/{id}/members") => orgs::TeamMembers::schema(),
        (M::POST, "/admin/service-accounts") => service_accounts::CreateServiceAccount::schema(),
        (M::PATCH, "/admin/service-accounts/{id}") => {
            service_accounts::UpdateServiceAccount::schema()
        }
        (M::POST, "/admin/policies") => policies::CreatePolicy::schema(),
        (M::PATCH, "/admin/policies/{id}") => policies::UpdatePolicy::schema(),
        (M::POST, "/oauth/token") => oauth::TokenForm::schema(),
        (M::POST, "/admin/me/webauthn/register/start") => passkeys::RegisterStart::schema(),
        (M::POST, "/admin/me/webauthn/register/finish") => passkeys::RegisterFinish::schema(),
        (M::PUT, "/admin/me/passkey-only") => passkeys::PasskeyOnly::schema(),
        (M::POST, "/admin/auth/webauthn/start") => passkeys::LoginStart::schema(),
        (M::POST, "/admin/auth/webauthn/finish") => passkeys::LoginFinish::schema(),
        _ => return None,
    })
}

/// The media type of a route's body: OAuth's token endpoint takes a form (RFC 6749 §4.4.2),
/// every other route JSON.
fn request_media_type(path: &str) -> &'static str {
    if path == "/oauth/token" {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    }
}

/// The typed answer of the routes that have one; the others are documented as a JSON object.
fn response_schema(m: &axum::http::Method, path: &str) -> Option<RefOr<Schema>> {
    use axum::http::Method as M;
    Some(match (m.clone(), path) {
        (M::GET, "/admin/providers/health") => provider_health::ProviderHealthList::schema(),
        _ => return None,
    })
}

/// Query parameters of the listing routes (and of user deletion).
fn query_parameters(m: &axum::http::Method, path: &str) -> &'static [(&'static str, &'static str)] {
    if *m == axum::http::Method::DELETE && path == "/admin/cache" {
        return &[
            (
                "org_id",
                "another organization's entries (admins of the default organization only; default: the caller's)",
            ),
            (
                "all",
                "true: every organization's entries (admins of the default organization only)",
            ),
        ];
    }
    if *m == axum::http::Method::DELETE && path == "/admin/users/{id}" {
        return &[(
            "erase",
            "true: also erase the user's personal data (keys' names, usage links and client IPs); the audit log is kept",
        )];
    }
    match path {
        "/admin/engines/{id}/logs" => &[("tail", "the last N lines (default 200, at most 2000)")],
        "/admin/guardrails/events" => &[("limit", "events, newest first: 1-500 (default 50)")],
        "/admin/usage" => &[
            ("from", "RFC 3339 start"),
            ("to", "RFC 3339 end"),
            ("key", "key id"),
            ("user", "user id"),
            ("model", "model name"),
            ("org", "organization id"),
            ("team", "team id"),
            ("limit", "rows, 1-10000"),
        ],
        "/admin/usage/summary" => &[
            ("from", "RFC 3339 start"),
            ("to", "RFC 3339 end"),
            ("key", "key id"),
            ("user", "user id"),
            ("model", "model name"),
            ("org", "organization id"),
            ("team", "team id"),
            ("group_by", "day, key, model, user, org or team"),
        ],
        "/admin/auth/oidc/callback" => &[
            ("code", "the authorization code the provider issued"),
            (
                "state",
                "the login's state, checked against the browser's cookie",
            ),
            (
                "iss",
                "the provider's issuer (RFC 9207), checked when present",
            ),
            ("error", "the provider's refusal, when it refused"),
        ],
        "/admin/usage/series" => &[
            (
                "from",
                "RFC 3339 start (default: 24 hours or 30 days before `to`)",
            ),
            ("to", "RFC 3339 end (default: now)"),
            ("key", "key id"),
            ("user", "user id"),
            ("model", "model name"),
            ("org", "organization id"),
            ("team", "team id"),
            ("provider", "provider name"),
            ("bucket", "hour or day (UTC slots)"),
            ("group_by", "none, model, key, user, team, org or provider"),
        ],
        "/admin/usage/export" => &[
            ("from", "RFC 3339 start"),
            ("to", "RFC 3339 end"),
            ("key", "key id"),
            ("user", "user id"),
            ("model", "model name"),
            ("org", "organization id"),
            ("team", "team id"),
            ("provider", "provider name"),
        ],
        "/admin/audit" => &[
            ("before_seq", "page before this sequence number"),
            ("action", "action name"),
            ("actor", "username"),
            ("limit", "rows, 1-1000"),
        ],
        _ => &[],
    }
}

fn json_response(description: &str) -> utoipa::openapi::Response {
    typed_response(description, RefOr::T(Schema::Object(Default::default())))
}

fn typed_response(description: &str, schema: RefOr<Schema>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    for route in ADMIN_ROUTES {
        let name = format!(
            "{}_{}",
            route.method.as_str().to_lowercase(),
            route
                .path
                .trim_start_matches('/')
                .replace(['/', '{', '}'], "_")
        );
        // `/admin/<area>/…` is tagged by its area, `/oauth/token` as `oauth`.
        let tag = match route.path.strip_prefix("/admin/") {
            Some(rest) => rest.split('/').next().unwrap_or("admin"),
            None => route.path.split('/').nth(1).unwrap_or("admin"),
        };
        let mut operation = OperationBuilder::new()
            .operation_id(Some(name.trim_end_matches('_').to_owned()))
            .tag(tag)
            .summary(Some(match route.access {
                Access::Public => "No credentials".to_owned(),
                Access::SelfService => "Any logged-in user".to_owned(),
                Access::AnyOf(permissions) => format!(
                    "Needs one of: {}{}",
                    permissions
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    match route.reach {
                        Reach::Tenant => "; scoped to the caller's organization",
                        Reach::Deployment => "; members of the default organization only",
                        Reach::AllOrganizations => "; admins of the default organization only",
                    }
                ),
            }))
            .response(
                "200",
                match response_schema(&route.method, route.path) {
                    Some(schema) => typed_response("Success", schema),
                    None => json_response("Success"),
                },
            )
            .response("201", json_response("Created"))
            .response("400", json_response("Invalid request (OpenAI error shape)"))
            .response("401", json_response("Missing or bad credentials"))
            .response("403", json_response("Not permitted"))
            .response(
                "404",
                json_response("Not found (or another user's or organization's object)"),
            )
            .response("409", json_response("Conflict"))
            .response("413", json_response("Body too large"))
            .response("429", json_response("Too many attempts"));
        if route.access != Access::Public {
            operation = operation.securities(Some([
                SecurityRequirement::new("bearer", Vec::<String>::new()),
                SecurityRequirement::new("session_cookie", Vec::<String>::new()),
            ]));
        }
        if route.path.contains("{id}") {
            operation = operation.parameter(
                ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(String::schema())),
            );
        }
        for (param, description) in query_parameters(&route.method, route.path) {
            operation = operation.parameter(
                ParameterBuilder::new()
                    .name(*param)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(*description))
                    .schema(Some(String::schema())),
            );
        }
        if let Some(schema) = request_schema(&route.method, route.path) {
            let body = RequestBodyBuilder::new()
                .content(
                    request_media_type(route.path),
                    ContentBuilder::new().schema(Some(schema)).build(),
                )
                .required(Some(Required::True))
                .build();
            operation = operation.request_body(Some(body));
        }
        paths.add_path_operation(route.path, vec![method(&route.method)], operation.build());
    }
    let components = ComponentsBuilder::new()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        )
        .security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::admin::principal::SESSION_COOKIE,
            ))),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Cortex admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

pub async fn serve() -> Json<OpenApi> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_route_is_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        for route in ADMIN_ROUTES {
            let method = route.method.as_str().to_lowercase();
            assert!(
                doc["paths"][route.path][&method].is_object(),
                "{} {} missing",
                route.method,
                route.path
            );
        }
        assert!(doc["paths"]["/admin/keys"]["post"]["requestBody"].is_object());
        let key_fields = &doc["paths"]["/admin/keys"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"];
        assert!(key_fields["scopes"].is_object(), "{key_fields}");
        let health = &doc["paths"]["/admin/providers/health"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"];
        let entry = &health["properties"]["data"]["items"]["properties"];
        assert_eq!(
            entry["state"]["enum"],
            serde_json::json!(["healthy", "degraded", "open"]),
            "{health}"
        );
        assert!(entry["last_check_at"].is_object(), "{health}");
        let required = &health["properties"]["data"]["items"]["required"];
        assert!(
            required
                .as_array()
                .is_some_and(|fields| fields.contains(&"last_check_at".into())),
            "always present, null before the first check: {required}"
        );
        assert!(
            !health.to_string().contains("$ref"),
            "inline: the document has no component schemas"
        );
    }

    #[test]
    fn organizations_and_teams_are_documented_with_their_budget_fields() {
        let doc = serde_json::to_value(document()).unwrap();
        let fields = |method: &str, path: &str| {
            doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
                ["properties"]
                .clone()
        };
        for (method, path) in [
            ("post", "/admin/orgs"),
            ("patch", "/admin/orgs/{id}"),
            ("post", "/admin/teams"),
            ("patch", "/admin/teams/{id}"),
            ("post", "/admin/users"),
            ("patch", "/admin/users/{id}"),
        ] {
            let body = fields(method, path);
            assert!(body["budget_usd"].is_object(), "{method} {path}: {body}");
            let period = body["budget_period"].to_string();
            for name in ["daily", "monthly", "total"] {
                assert!(period.contains(name), "{method} {path}: {period}");
            }
        }
        assert!(fields("post", "/admin/orgs")["allowed_models"].is_object());
        assert!(fields("put", "/admin/teams/{id}/members")["user_ids"].is_object());
        assert!(fields("post", "/admin/keys")["team_id"].is_object());
        let summary = doc["paths"]["/admin/orgs"]["post"]["summary"].to_string();
        assert!(summary.contains("default organization"), "{summary}");
        assert!(!doc.to_string().contains("$ref"), "inline schemas only");
    }

    #[test]
    fn policies_and_guardrail_events_are_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let create = &doc["paths"]["/admin/policies"]["post"];
        assert!(
            create["summary"].to_string().contains("policies:write"),
            "{create}"
        );
        let fields = &create["requestBody"]["content"]["application/json"]["schema"]["properties"];
        for field in ["scope", "target", "cache", "guardrails", "org_id"] {
            assert!(fields[field].is_object(), "{field}: {fields}");
        }
        assert!(
            fields["scope"].to_string().contains("organization"),
            "{fields}"
        );
        let patch = &doc["paths"]["/admin/policies/{id}"]["patch"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"];
        assert!(
            patch["cache"].is_object() && patch["guardrails"].is_object(),
            "{patch}"
        );
        let events = doc["paths"]["/admin/guardrails/events"]["get"].to_string();
        assert!(
            events.contains("limit") && events.contains("audit:read"),
            "{events}"
        );
    }

    #[test]
    fn the_cache_routes_are_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let read = doc["paths"]["/admin/cache"]["get"].to_string();
        assert!(read.contains("policies:read"), "{read}");
        let purge = doc["paths"]["/admin/cache"]["delete"].to_string();
        assert!(
            purge.contains("policies:write") && purge.contains("org_id") && purge.contains("all"),
            "{purge}"
        );
    }

    #[test]
    fn service_accounts_and_the_token_endpoint_are_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let create = &doc["paths"]["/admin/service-accounts"]["post"];
        assert!(
            create["summary"].to_string().contains("users:write"),
            "{create}"
        );
        let fields = &create["requestBody"]["content"]["application/json"]["schema"]["properties"];
        assert!(
            fields["name"].is_object() && fields["role"].is_object(),
            "{fields}"
        );
        let token = &doc["paths"]["/oauth/token"]["post"];
        assert!(token["security"].is_null(), "public: {token}");
        let form = &token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
            ["properties"];
        assert!(form["grant_type"].is_object(), "{token}");
        assert_eq!(token["tags"], serde_json::json!(["oauth"]));
    }

    #[test]
    fn routing_fields_are_documented_on_providers_and_models() {
        let doc = serde_json::to_value(document()).unwrap();
        let fields = |method: &str, path: &str| {
            doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
                ["properties"]
                .clone()
        };
        for (method, path) in [
            ("post", "/admin/providers"),
            ("patch", "/admin/providers/{id}"),
        ] {
            let provider = fields(method, path);
            assert_eq!(
                provider["weight"]["maximum"], 1000,
                "{method} {path}: {provider}"
            );
            assert!(provider["health_check_path"].is_object(), "{provider}");
        }
        for (method, path) in [("post", "/admin/models"), ("patch", "/admin/models/{id}")] {
            let model = fields(method, path);
            let text = model["strategy"].to_string();
            for name in ["round_robin", "weighted", "least_latency", "priority"] {
                assert!(text.contains(name), "{method} {path}: {text}");
            }
        }
    }
}
