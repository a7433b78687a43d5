//! Test support shared by every crate's integration tests: a real Cortex server on
//! `127.0.0.1:0` ([`TestServer`]), a fake model server that streams and speaks chat
//! completions, Anthropic's Messages and the Responses API ([`FakeUpstream`]), and throwaway databases (re-exported from `cortex-store`).
//!
//! Nothing here talks to any address but loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dialects;
mod fake_state;
mod idp;
mod server;
mod services;
mod upstream;

pub use cortex_store::testing::TestDb;
pub use idp::{OpenIdProvider, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET};
pub use server::{TestServer, TestServerBuilder, ADMIN_PASSWORD};
pub use services::{TempPostgres, TempRedis};
pub use upstream::{FakeUpstream, FakeUpstreamOptions, ReceivedRequest};

/// Polls `check` every 20 ms until it holds or `timeout` passes; tests wait this way, never by
/// sleeping a fixed time.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
