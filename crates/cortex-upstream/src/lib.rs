//! Upstream model servers: the routing table (model → providers), the HTTP client that calls
//! them with balancing and failover, and the SSE scanner that reads token usage out of a stream
//! without buffering it.
//!
//! Invariants:
//! - a request to a provider carries only the headers built here (content type, accept, the
//!   provider's own credential in its kind's header, Anthropic's version): nothing from the
//!   client's request is copied, so the client's `ctx_` key, cookies and hop-by-hop headers can
//!   never reach upstream;
//! - provider credentials are `SecretString` and are exposed only when the header is built.

pub mod body;
pub mod breaker;
pub mod client;
mod conn;
mod h1;
pub mod health;
mod kinds;
mod provider_http;

/// For the fuzz targets (`fuzz/`), not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::h1::{read_answer, WireError};
}
pub mod routing;

pub use body::{BodyError, UpstreamBody};
pub use client::{ca_bundle, trusted_roots, use_pool};
pub use client::{
    Attempt, AttemptOutcome, Attempts, CaBundleError, ClientBuildError, ProviderHttp, RetryPolicy,
    RetryReason, UpstreamClient, UpstreamError, UpstreamEvents, UpstreamRequest, UpstreamResponse,
    UpstreamTimeouts,
};
pub use health::{HealthRegistry, HealthState, HealthView, ProviderHealth};
pub use routing::{ModelRoute, ProviderTarget, RoutingTable};
