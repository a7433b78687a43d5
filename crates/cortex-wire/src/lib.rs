//! What travels on the wire between clients, Cortex and providers, and nothing else: the front
//! doors' endpoints, request-body codecs, the error shapes clients parse, and SSE scanning.
//!
//! Pure by rule: no IO, no async, no shared state, no HTTP framework. Every function here takes bytes
//! or values and returns bytes or values, so each is unit-tested and fuzzed on its own
//! (`fuzz/fuzz_targets/v1_body.rs`, `sse_scanner.rs`). The crates above decide what to do with
//! the results.

pub mod body;
pub mod endpoint;
pub mod error_shape;
pub mod sse;
pub mod translate;

pub use body::{BodyError, ProxyRequest};
pub use endpoint::{Dialect, Endpoint};
pub use sse::{SseUsageScanner, TokenUsage};
