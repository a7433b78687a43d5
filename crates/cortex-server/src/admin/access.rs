//! Who may use which admin route: [`ADMIN_ROUTES`] is the one table of the admin surface and the
//! access each route needs. The guard looks every request up here, and the OpenAPI document is
//! built from it, so the two cannot disagree.

use axum::http::Method;
use cortex_domain::Permission::{self, *};

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
    // Health names every provider, like the listing: the same permission.
    route(Method::GET, "/admin/providers/health", Access::AnyOf(&[ProvidersRead])),
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
