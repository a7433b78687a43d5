//! What can go wrong with the limiter store, and what to do about it. Its own module so the
//! Redis backend and the crate root both import it without importing each other.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailureMode {
    FailOpen,
    FailClosed,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the limiter store is unavailable")]
    Unavailable,
    #[error("cannot connect to Redis: {0}")]
    Connect(String),
    /// A budget call with arguments no caller should send (a negative amount, a scope with
    /// spaces); the message names what is wrong and carries no secret.
    #[error("invalid budget request: {0}")]
    InvalidBudget(String),
    /// The spend ledger could not say what a scope has spent, so a missing budget counter
    /// cannot be rebuilt. `SpendLedger` implementations return it with a sanitized reason.
    #[error("the spend ledger is unavailable: {0}")]
    Ledger(String),
}
