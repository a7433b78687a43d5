//! Who may use which admin route: [`ADMIN_ROUTES`] is the one table of the admin surface and the
//! access each route needs — the permission, and which organizations' callers may use it
//! ([`Reach`]). The guard looks every request up here, and the OpenAPI document is built from
//! it, so the two cannot disagree.

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

/// Which organizations' callers may use a route (SPEC §18), on top of its [`Access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every organization's: the handler scopes what it reads and changes to the caller's
    /// `Tenant` through the store, so another organization's objects are not found.
    Tenant,
    /// Members of the default organization only: what every organization shares (providers,
    /// changes to the model catalogue, the production check, the configuration export). A
    /// caller of another organization is refused (403), whatever their role.
    Deployment,
    /// Callers who see every organization only (admins of the default organization): managing
    /// organizations themselves.
    AllOrganizations,
}

#[derive(Debug, Clone)]
pub struct AdminRoute {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub reach: Reach,
}

const fn route(method: Method, path: &'static str, access: Access) -> AdminRoute {
    AdminRoute {
        method,
        path,
        access,
        reach: Reach::Tenant,
    }
}

/// A route for members of the default organization only.
const fn deployment(method: Method, path: &'static str, access: Access) -> AdminRoute {
    AdminRoute {
        method,
        path,
        access,
        reach: Reach::Deployment,
    }
}

/// A route for callers who see every organization only.
const fn all_orgs(method: Method, path: &'static str, access: Access) -> AdminRoute {
    AdminRoute {
        method,
        path,
        access,
        reach: Reach::AllOrganizations,
    }
}

/// The whole admin surface and who may use it.
#[rustfmt::skip]
pub const ADMIN_ROUTES: &[AdminRoute] = &[
    route(Method::POST, "/admin/auth/login", Access::Public),
    route(Method::POST, "/admin/auth/refresh", Access::Public),
    route(Method::POST, "/admin/auth/logout", Access::SelfService),
    route(Method::POST, "/admin/auth/password", Access::SelfService),
    // How this server signs people in, and single sign-on's two browser redirects (SPEC §19).
    route(Method::GET, "/admin/auth/methods", Access::Public),
    route(Method::GET, "/admin/auth/oidc/login", Access::Public),
    route(Method::GET, "/admin/auth/oidc/callback", Access::Public),
    route(Method::GET, "/admin/me", Access::SelfService),
    route(Method::POST, "/admin/me/totp", Access::SelfService),
    route(Method::POST, "/admin/me/totp/confirm", Access::SelfService),
    route(Method::DELETE, "/admin/me/totp", Access::SelfService),
    // The caller's own passkeys (SPEC §19), and signing in with one.
    route(Method::GET, "/admin/me/passkeys", Access::SelfService),
    route(Method::DELETE, "/admin/me/passkeys/{id}", Access::SelfService),
    route(Method::POST, "/admin/me/webauthn/register/start", Access::SelfService),
    route(Method::POST, "/admin/me/webauthn/register/finish", Access::SelfService),
    route(Method::PUT, "/admin/me/passkey-only", Access::SelfService),
    route(Method::POST, "/admin/auth/webauthn/start", Access::Public),
    route(Method::POST, "/admin/auth/webauthn/finish", Access::Public),
    route(Method::GET, "/admin/users", Access::AnyOf(&[UsersRead])),
    route(Method::POST, "/admin/users", Access::AnyOf(&[UsersWrite])),
    route(Method::PATCH, "/admin/users/{id}", Access::AnyOf(&[UsersWrite])),
    route(Method::DELETE, "/admin/users/{id}", Access::AnyOf(&[UsersWrite])),
    route(Method::GET, "/admin/keys", Access::AnyOf(&[KeysReadAll, KeysReadOwn])),
    route(Method::POST, "/admin/keys", Access::AnyOf(&[KeysWriteAll, KeysWriteOwn])),
    route(Method::GET, "/admin/keys/{id}", Access::AnyOf(&[KeysReadAll, KeysReadOwn])),
    route(Method::DELETE, "/admin/keys/{id}", Access::AnyOf(&[KeysWriteAll, KeysWriteOwn])),
    route(Method::POST, "/admin/keys/{id}/rotate", Access::AnyOf(&[KeysWriteAll, KeysWriteOwn])),
    // Providers serve every organization: only the deployment's own people see or change them.
    deployment(Method::GET, "/admin/providers", Access::AnyOf(&[ProvidersRead])),
    deployment(Method::POST, "/admin/providers", Access::AnyOf(&[ProvidersWrite])),
    deployment(Method::PATCH, "/admin/providers/{id}", Access::AnyOf(&[ProvidersWrite])),
    deployment(Method::DELETE, "/admin/providers/{id}", Access::AnyOf(&[ProvidersWrite])),
    // Health names every provider, like the listing: the same permission.
    deployment(Method::GET, "/admin/providers/health", Access::AnyOf(&[ProvidersRead])),
    // Each organization lists the models it may use; the catalogue is changed for all.
    route(Method::GET, "/admin/models", Access::AnyOf(&[ModelsRead])),
    deployment(Method::POST, "/admin/models", Access::AnyOf(&[ModelsWrite])),
    deployment(Method::PATCH, "/admin/models/{id}", Access::AnyOf(&[ModelsWrite])),
    deployment(Method::DELETE, "/admin/models/{id}", Access::AnyOf(&[ModelsWrite])),
    // Engines run for the whole deployment, like providers (SPEC §17).
    deployment(Method::GET, "/admin/engines", Access::AnyOf(&[EnginesRead])),
    deployment(Method::POST, "/admin/engines", Access::AnyOf(&[EnginesWrite])),
    deployment(Method::POST, "/admin/engines/dry-run", Access::AnyOf(&[EnginesWrite])),
    deployment(Method::GET, "/admin/engines/{id}", Access::AnyOf(&[EnginesRead])),
    deployment(Method::PATCH, "/admin/engines/{id}", Access::AnyOf(&[EnginesWrite])),
    deployment(Method::DELETE, "/admin/engines/{id}", Access::AnyOf(&[EnginesWrite])),
    deployment(Method::POST, "/admin/engines/{id}/start", Access::AnyOf(&[EnginesWrite])),
    deployment(Method::POST, "/admin/engines/{id}/stop", Access::AnyOf(&[EnginesWrite])),
    deployment(Method::POST, "/admin/engines/{id}/restart", Access::AnyOf(&[EnginesWrite])),
    deployment(Method::GET, "/admin/engines/{id}/logs", Access::AnyOf(&[EnginesRead])),
    deployment(Method::GET, "/admin/models/local", Access::AnyOf(&[EnginesRead])),
    route(Method::GET, "/admin/usage", Access::AnyOf(&[UsageReadAll, UsageReadOwn])),
    route(Method::GET, "/admin/usage/summary", Access::AnyOf(&[UsageReadAll, UsageReadOwn])),
    route(Method::GET, "/admin/usage/series", Access::AnyOf(&[UsageReadAll, UsageReadOwn])),
    route(Method::GET, "/admin/usage/export", Access::AnyOf(&[UsageReadAll, UsageReadOwn])),
    route(Method::GET, "/admin/audit", Access::AnyOf(&[AuditRead])),
    // One chain for every organization: verifying it answers counts, never another's events.
    route(Method::GET, "/admin/audit/verify", Access::AnyOf(&[AuditRead])),
    deployment(Method::GET, "/admin/config/export", Access::AnyOf(&[ConfigExport])),
    deployment(Method::GET, "/admin/check", Access::AnyOf(&[CheckRead])),
    route(Method::GET, "/admin/features", Access::AnyOf(&[SettingsRead])),
    // Organizations: admins of the default organization (SPEC §18).
    all_orgs(Method::GET, "/admin/orgs", Access::AnyOf(&[UsersWrite])),
    all_orgs(Method::POST, "/admin/orgs", Access::AnyOf(&[UsersWrite])),
    all_orgs(Method::PATCH, "/admin/orgs/{id}", Access::AnyOf(&[UsersWrite])),
    all_orgs(Method::DELETE, "/admin/orgs/{id}", Access::AnyOf(&[UsersWrite])),
    // Teams belong to an organization: read like its users, managed by its admins.
    route(Method::GET, "/admin/teams", Access::AnyOf(&[UsersRead])),
    route(Method::POST, "/admin/teams", Access::AnyOf(&[UsersWrite])),
    route(Method::PATCH, "/admin/teams/{id}", Access::AnyOf(&[UsersWrite])),
    route(Method::DELETE, "/admin/teams/{id}", Access::AnyOf(&[UsersWrite])),
    route(Method::PUT, "/admin/teams/{id}/members", Access::AnyOf(&[UsersWrite])),
    // Service accounts are managed like users, in their organization (SPEC §19).
    route(Method::GET, "/admin/service-accounts", Access::AnyOf(&[UsersRead])),
    route(Method::POST, "/admin/service-accounts", Access::AnyOf(&[UsersWrite])),
    route(Method::GET, "/admin/service-accounts/{id}", Access::AnyOf(&[UsersRead])),
    route(Method::PATCH, "/admin/service-accounts/{id}", Access::AnyOf(&[UsersWrite])),
    route(Method::DELETE, "/admin/service-accounts/{id}", Access::AnyOf(&[UsersWrite])),
    route(Method::POST, "/admin/service-accounts/{id}/rotate", Access::AnyOf(&[UsersWrite])),
    // Gateway policies belong to an organization (SPEC §21): read like its settings, changed
    // by its admins and operators.
    route(Method::GET, "/admin/policies", Access::AnyOf(&[PoliciesRead])),
    route(Method::POST, "/admin/policies", Access::AnyOf(&[PoliciesWrite])),
    route(Method::GET, "/admin/policies/{id}", Access::AnyOf(&[PoliciesRead])),
    route(Method::PATCH, "/admin/policies/{id}", Access::AnyOf(&[PoliciesWrite])),
    route(Method::DELETE, "/admin/policies/{id}", Access::AnyOf(&[PoliciesWrite])),
    // Guardrail hits are audit events: whoever reads the audit log reads them.
    route(Method::GET, "/admin/guardrails/events", Access::AnyOf(&[AuditRead])),
    // The response cache that policies turn on: its counters read like the policies, a purge
    // (of the caller's organization; every one for admins of the default organization) is a
    // change to them.
    route(Method::GET, "/admin/cache", Access::AnyOf(&[PoliciesRead])),
    route(Method::DELETE, "/admin/cache", Access::AnyOf(&[PoliciesWrite])),
    // The client credentials grant: the client authenticates with its secret (RFC 6749 §4.4).
    route(Method::POST, "/oauth/token", Access::Public),
];

pub fn find_route(method: &Method, path: &str) -> Option<&'static AdminRoute> {
    ADMIN_ROUTES
        .iter()
        .find(|r| r.method == *method && r.path == path)
}
