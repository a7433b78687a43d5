//! The admin API (SPEC §5, §12, §14). Every route and the access it needs are declared once, in
//! [`ADMIN_ROUTES`]; the guard middleware looks the matched route up there and refuses anything
//! not listed (fail closed). Handlers receive a [`Caller`] only from the guard, and reach data
//! through it, so an unchecked path to data does not type-check.

pub mod access;
pub mod analytics;
pub mod attempts;
pub mod auth;
pub mod budgets;
pub mod cache;
pub mod device;
pub mod engines;
pub mod guard;
pub mod hashing;
pub mod json;
pub mod keys;
pub mod me;
pub mod oauth;
pub mod orgs;
pub mod passkeys;
pub mod policies;
pub mod principal;
pub mod provider_health;
pub mod providers_models;
pub mod records;
pub mod service_accounts;
pub mod sso;
pub mod users;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

pub use access::{find_route, Access, AdminRoute, Reach, ADMIN_ROUTES};
pub use guard::Caller;
pub use json::list_body;
pub use principal::{AdminPrincipal, Via};

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/auth/login", post(auth::login))
        .route("/admin/auth/refresh", post(auth::refresh))
        .route("/admin/auth/logout", post(auth::logout))
        .route("/admin/auth/password", post(auth::change_password))
        .route("/admin/auth/methods", get(sso::methods))
        .route("/admin/auth/oidc/login", get(sso::login))
        .route("/admin/auth/oidc/callback", get(sso::callback))
        .route("/admin/me", get(me::me))
        .route(
            "/admin/me/totp",
            post(me::enrol_totp).delete(me::disable_totp),
        )
        .route("/admin/me/totp/confirm", post(me::confirm_totp))
        .route("/admin/me/passkeys", get(passkeys::list))
        .route(
            "/admin/me/passkeys/{id}",
            axum::routing::delete(passkeys::remove),
        )
        .route(
            "/admin/me/webauthn/register/start",
            post(passkeys::register_start),
        )
        .route(
            "/admin/me/webauthn/register/finish",
            post(passkeys::register_finish),
        )
        .route(
            "/admin/me/passkey-only",
            axum::routing::put(passkeys::set_passkey_only),
        )
        .route("/admin/auth/webauthn/start", post(passkeys::login_start))
        .route("/admin/auth/webauthn/finish", post(passkeys::login_finish))
        .route("/admin/users", get(users::list).post(users::create))
        .route(
            "/admin/users/{id}",
            axum::routing::patch(users::update).delete(users::delete),
        )
        .route("/admin/keys", get(keys::list).post(keys::create))
        .route("/admin/keys/{id}", get(keys::get_one).delete(keys::revoke))
        .route("/admin/keys/{id}/rotate", post(keys::rotate))
        .route(
            "/admin/providers",
            get(providers_models::list_providers).post(providers_models::create_provider),
        )
        .route(
            "/admin/providers/{id}",
            axum::routing::patch(providers_models::update_provider)
                .delete(providers_models::delete_provider),
        )
        // A fixed segment wins over `/admin/providers/{id}`; no provider has the id `health`
        // (ids are generated UUIDs).
        .route("/admin/providers/health", get(provider_health::list))
        .route(
            "/admin/models",
            get(providers_models::list_models).post(providers_models::create_model),
        )
        .route(
            "/admin/models/{id}",
            axum::routing::patch(providers_models::update_model)
                .delete(providers_models::delete_model),
        )
        .route("/admin/engines", get(engines::list).post(engines::create))
        // Fixed segments win over `{id}`; engine ids are generated UUIDs.
        .route("/admin/engines/dry-run", post(engines::dry_run))
        .route(
            "/admin/engines/{id}",
            get(engines::get_one)
                .patch(engines::update)
                .delete(engines::delete),
        )
        .route("/admin/engines/{id}/start", post(engines::start))
        .route("/admin/engines/{id}/stop", post(engines::stop))
        .route("/admin/engines/{id}/restart", post(engines::restart))
        .route("/admin/engines/{id}/logs", get(engines::logs))
        .route("/admin/models/local", get(engines::local_models))
        .route("/admin/usage", get(records::usage))
        .route("/admin/usage/summary", get(records::usage_summary))
        .route("/admin/usage/series", get(analytics::series))
        .route("/admin/usage/export", get(analytics::export))
        .route("/admin/audit", get(records::audit))
        .route("/admin/audit/verify", get(records::audit_verify))
        .route("/admin/config/export", get(records::config_export))
        .route("/admin/check", get(records::production_check))
        .route("/admin/features", get(records::features))
        .route("/admin/orgs", get(orgs::list_orgs).post(orgs::create_org))
        .route(
            "/admin/orgs/{id}",
            axum::routing::patch(orgs::update_org).delete(orgs::delete_org),
        )
        .route(
            "/admin/teams",
            get(orgs::list_teams).post(orgs::create_team),
        )
        .route(
            "/admin/teams/{id}",
            axum::routing::patch(orgs::update_team).delete(orgs::delete_team),
        )
        .route(
            "/admin/teams/{id}/members",
            axum::routing::put(orgs::set_members),
        )
        .route(
            "/admin/service-accounts",
            get(service_accounts::list).post(service_accounts::create),
        )
        .route(
            "/admin/service-accounts/{id}",
            get(service_accounts::get_one)
                .patch(service_accounts::update)
                .delete(service_accounts::delete),
        )
        .route(
            "/admin/service-accounts/{id}/rotate",
            post(service_accounts::rotate),
        )
        .route(
            "/admin/policies",
            get(policies::list).post(policies::create),
        )
        .route(
            "/admin/policies/{id}",
            get(policies::get_one)
                .patch(policies::update)
                .delete(policies::delete),
        )
        .route("/admin/guardrails/events", get(policies::guardrail_events))
        .route("/admin/cache", get(cache::stats).delete(cache::purge))
        // OAuth 2.0's token endpoint (SPEC §19): public, and answering in RFC 6749's shape.
        .route("/oauth/token", post(oauth::token))
        // After routing, so the guard sees the matched path it looks up in ADMIN_ROUTES.
        .route_layer(from_fn_with_state(state, guard::guard))
        // The admin API's fixed body limit (SPEC §14).
        .layer(DefaultBodyLimit::max(cortex_config::ADMIN_MAX_BODY_BYTES))
}
