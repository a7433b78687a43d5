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
}
