//! The admin API (SPEC §5, §12, §14). Every route and the access it needs are declared once, in
//! [`ADMIN_ROUTES`]; the guard middleware looks the matched route up there and refuses anything
//! not listed (fail closed). Handlers receive a [`Caller`] only from the guard, and reach data
//! through it, so an unchecked path to data does not type-check.

pub mod attempts;
pub mod auth;
pub mod device;
pub mod hashing;
pub mod json;
pub mod keys;
pub mod me;
pub mod principal;
pub mod providers_models;
pub mod records;
pub mod users;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cortex_domain::Permission::{self, *};

use crate::state::AppState;
use cortex_gateway::error::ApiError;

pub use principal::{AdminPrincipal, Via};

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (login, refresh).
    Public,
    /// Any logged-in user, even one who must still change the password or enrol MFA.
    SelfService,
    /// A logged-in user holding at least one of these permissions.
    AnyOf(&'static [Permission]),
}

#[derive(Debug, Clone)]
pub struct AdminRoute {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

const fn route(method: Method, path: &'static str, access: Access) -> AdminRoute {
    AdminRoute {
        method,
        path,
        access,
    }
}

/// The whole admin surface and who may use it.
#[rustfmt::skip]
pub const ADMIN_ROUTES: &[AdminRoute] = &[
    route(Method::POST, "/admin/auth/login", Access::Public),
    route(Method::POST, "/admin/auth/refresh", Access::Public),
    route(Method::POST, "/admin/auth/logout", Access::SelfService),
    route(Method::POST, "/admin/auth/password", Access::SelfService),
    route(Method::GET, "/admin/me", Access::SelfService),
    route(Method::POST, "/admin/me/totp", Access::SelfService),
    route(Method::POST, "/admin/me/totp/confirm", Access::SelfService),
    route(Method::DELETE, "/admin/me/totp", Access::SelfService),
    route(Method::GET, "/admin/users", Access::AnyOf(&[UsersRead])),
    route(Method::POST, "/admin/users", Access::AnyOf(&[UsersWrite])),
    route(Method::PATCH, "/admin/users/{id}", Access::AnyOf(&[UsersWrite])),
    route(Method::DELETE, "/admin/users/{id}", Access::AnyOf(&[UsersWrite])),
    route(Method::GET, "/admin/keys", Access::AnyOf(&[KeysReadAll, KeysReadOwn])),
    route(Method::POST, "/admin/keys", Access::AnyOf(&[KeysWriteAll, KeysWriteOwn])),
    route(Method::GET, "/admin/keys/{id}", Access::AnyOf(&[KeysReadAll, KeysReadOwn])),
    route(Method::DELETE, "/admin/keys/{id}", Access::AnyOf(&[KeysWriteAll, KeysWriteOwn])),
    route(Method::POST, "/admin/keys/{id}/rotate", Access::AnyOf(&[KeysWriteAll, KeysWriteOwn])),
    route(Method::GET, "/admin/providers", Access::AnyOf(&[ProvidersRead])),
    route(Method::POST, "/admin/providers", Access::AnyOf(&[ProvidersWrite])),
    route(Method::PATCH, "/admin/providers/{id}", Access::AnyOf(&[ProvidersWrite])),
    route(Method::DELETE, "/admin/providers/{id}", Access::AnyOf(&[ProvidersWrite])),
    route(Method::GET, "/admin/models", Access::AnyOf(&[ModelsRead])),
    route(Method::POST, "/admin/models", Access::AnyOf(&[ModelsWrite])),
    route(Method::PATCH, "/admin/models/{id}", Access::AnyOf(&[ModelsWrite])),
    route(Method::DELETE, "/admin/models/{id}", Access::AnyOf(&[ModelsWrite])),
    route(Method::GET, "/admin/usage", Access::AnyOf(&[UsageReadAll, UsageReadOwn])),
    route(Method::GET, "/admin/usage/summary", Access::AnyOf(&[UsageReadAll, UsageReadOwn])),
    route(Method::GET, "/admin/audit", Access::AnyOf(&[AuditRead])),
    route(Method::GET, "/admin/audit/verify", Access::AnyOf(&[AuditRead])),
    route(Method::GET, "/admin/config/export", Access::AnyOf(&[ConfigExport])),
    route(Method::GET, "/admin/check", Access::AnyOf(&[CheckRead])),
    route(Method::GET, "/admin/features", Access::AnyOf(&[SettingsRead])),
];

pub fn find_route(method: &Method, path: &str) -> Option<&'static AdminRoute> {
    ADMIN_ROUTES
        .iter()
        .find(|r| r.method == *method && r.path == path)
}

/// The checked caller of an admin route. Only the guard creates one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Caller {
    pub principal: AdminPrincipal,
    pub ip: String,
}

impl Caller {
    /// `None` when the caller may act on every object, `Some(user_id)` when only on their own;
    /// `Forbidden` when neither permission is held.
    pub fn owner_scope(
        &self,
        all: Permission,
        own: Permission,
    ) -> Result<Option<String>, ApiError> {
        if self.principal.can(all) {
            Ok(None)
        } else if self.principal.can(own) {
            Ok(Some(self.principal.user.id.clone()))
        } else {
            Err(ApiError::Forbidden)
        }
    }

    pub fn actor(&self) -> &str {
        &self.principal.user.username
    }
}

/// Roles in `CORTEX_REQUIRE_MFA_FOR` must enrol before anything but self-service.
fn mfa_missing(app: &AppState, principal: &AdminPrincipal) -> bool {
    app.config.require_mfa_for.contains(&principal.role()) && !principal.user.totp_enabled
}

async fn guard(
    State(app): State<AppState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(route) = matched.and_then(|m| find_route(request.method(), m.as_str())) else {
        // A route without a declared access rule is never served.
        return ApiError::NotFound.into_response();
    };
    if route.access == Access::Public {
        return next.run(request).await;
    }
    let principal = match principal::authenticate(&app, request.headers()).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return ApiError::Unauthenticated.into_response(),
        Err(error) => return error.into_response(),
    };
    if let Access::AnyOf(permissions) = route.access {
        if principal.user.must_change_password {
            return ApiError::PasswordChangeRequired.into_response();
        }
        if mfa_missing(&app, &principal) {
            return ApiError::MfaEnrollmentRequired.into_response();
        }
        if !permissions.iter().any(|p| principal.can(*p)) {
            return ApiError::Forbidden.into_response();
        }
    }
    let ip = request
        .extensions()
        .get::<cortex_gateway::request_meta::ClientIp>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    request.extensions_mut().insert(Caller { principal, ip });
    next.run(request).await
}

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/auth/login", post(auth::login))
        .route("/admin/auth/refresh", post(auth::refresh))
        .route("/admin/auth/logout", post(auth::logout))
        .route("/admin/auth/password", post(auth::change_password))
        .route("/admin/me", get(me::me))
        .route(
            "/admin/me/totp",
            post(me::enrol_totp).delete(me::disable_totp),
        )
        .route("/admin/me/totp/confirm", post(me::confirm_totp))
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
        .route(
            "/admin/models",
            get(providers_models::list_models).post(providers_models::create_model),
        )
        .route(
            "/admin/models/{id}",
            axum::routing::patch(providers_models::update_model)
                .delete(providers_models::delete_model),
        )
        .route("/admin/usage", get(records::usage))
        .route("/admin/usage/summary", get(records::usage_summary))
        .route("/admin/audit", get(records::audit))
        .route("/admin/audit/verify", get(records::audit_verify))
        .route("/admin/config/export", get(records::config_export))
        .route("/admin/check", get(records::production_check))
        .route("/admin/features", get(records::features))
        // After routing, so the guard sees the matched path it looks up in ADMIN_ROUTES.
        .route_layer(from_fn_with_state(state, guard))
        // The admin API's fixed body limit (SPEC §14).
        .layer(DefaultBodyLimit::max(cortex_config::ADMIN_MAX_BODY_BYTES))
}

/// `{"object":"list","data":[…]}`.
pub fn list_body<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
) -> axum::Json<serde_json::Value> {
    let data: Vec<T> = items.into_iter().collect();
    axum::Json(serde_json::json!({ "object": "list", "data": data }))
}
