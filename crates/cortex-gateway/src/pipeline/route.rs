//! Stage 4, route: the key may call this endpoint (scope) and use this model (allow-list), and
//! the model has a route in the in-memory table. Nothing here reads the database.

use std::sync::Arc;

use cortex_upstream::ModelRoute;
use cortex_wire::Endpoint;

use crate::authenticate::ApiPrincipal;
use crate::error::ApiError;
use crate::DataPlane;

/// The key's scopes allow `endpoint`. Checked before the body is parsed, so a key without the
/// scope learns nothing about what a valid body would be.
pub(super) fn authorize(principal: &ApiPrincipal, endpoint: Endpoint) -> Result<(), ApiError> {
    principal.require_scope(endpoint.scope())
}

/// The route of `model`, if the key may use it and it exists. The key's allow-list in the
/// cache is already narrowed by its organization's (`key_cache.rs`), so one check covers both.
pub(super) fn resolve(
    plane: &DataPlane,
    principal: &ApiPrincipal,
    model: &str,
) -> Result<Arc<ModelRoute>, ApiError> {
    if !principal.key.allows_model(model) {
        return Err(ApiError::ModelNotAllowed);
    }
    plane
        .catalog
        .current()
        .get(model)
        .cloned()
        .ok_or(ApiError::ModelNotFound)
}
