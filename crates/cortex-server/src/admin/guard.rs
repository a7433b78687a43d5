//! The guard in front of every admin route, and the [`Caller`] it hands to handlers. Caller lives
//! next to the guard because the guard is the only place that may build one: a handler that
//! takes a `Caller` can only run after the access check for its route passed.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cortex_domain::{Permission, Tenant};

use super::access::{find_route, Access, Reach};
use super::principal::{self, AdminPrincipal};
use crate::state::AppState;
use cortex_gateway::error::ApiError;

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

    /// The organizations this caller's store queries see (SPEC §18).
    pub fn tenant(&self) -> Tenant {
        self.principal.tenant()
    }
}

/// Whether `principal` may use a route of `reach`, whatever their permissions.
pub(super) fn within_reach(principal: &AdminPrincipal, reach: Reach) -> bool {
    match reach {
        Reach::Tenant => true,
        Reach::Deployment => principal.in_default_org(),
        Reach::AllOrganizations => principal.tenant().is_all(),
    }
}

/// Roles in `CORTEX_REQUIRE_MFA_FOR` must enrol a second factor (TOTP or a passkey) before
/// anything but self-service. Only local accounts have second factors of their own: a single
/// sign-on user's is their identity provider's business, and a service account's secret is its
/// only credential. The passkeys are counted only when TOTP is off and the role requires MFA.
async fn mfa_missing(app: &AppState, principal: &AdminPrincipal) -> Result<bool, ApiError> {
    if !app.config.require_mfa_for.contains(&principal.role())
        || !principal.user.kind.has_local_factors()
        || principal.user.totp_enabled
    {
        return Ok(false);
    }
    Ok(app.store.count_passkeys(&principal.user.id).await? == 0)
}

pub(super) async fn guard(
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
        match mfa_missing(&app, &principal).await {
            Ok(false) => {}
            Ok(true) => return ApiError::MfaEnrollmentRequired.into_response(),
            Err(error) => return error.into_response(),
        }
        if !permissions.iter().any(|p| principal.can(*p)) || !within_reach(&principal, route.reach)
        {
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
