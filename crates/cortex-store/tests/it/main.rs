//! Store tests: every body runs on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use std::future::Future;

use cortex_store::testing::TestDb;
use cortex_store::{Backend, Store};

mod audit;
mod catalog;
mod engines;
mod keys;
mod operations;
mod organizations;
mod passkeys;
mod policies;
mod service_accounts;
mod sessions;
mod usage;
mod users;

/// Runs `body` against a fresh database of `backend`.
pub async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url)
        .await
        .expect("open and migrate")
        .with_audit_chain_key(chain_key());
    body(store.clone()).await;
    store.close().await;
    db.cleanup().await;
}

/// Declares `<name>::sqlite` and `<name>::postgres` tests running the same body.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::run(cortex_store::Backend::Sqlite, super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::run(cortex_store::Backend::Postgres, super::$name).await
            }
        }
    )*};
}

pub fn audit_event(action: &str) -> cortex_domain::audit::NewAuditEvent {
    cortex_domain::audit::NewAuditEvent::new("tester", action, "target")
}

/// The audit chain key of the test stores (the server derives it from the master key).
pub fn chain_key() -> cortex_domain::audit::AuditChainKey {
    cortex_domain::audit::AuditChainKey::from_bytes(&[7; 32])
}
