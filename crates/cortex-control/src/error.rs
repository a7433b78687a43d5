//! The control services' error: what went wrong, in words an operator can act on. The HTTP
//! crate renders it in the API's error shape (status and code); the command line prints its
//! `Display`, which carries the whole message.

use std::borrow::Cow;

use cortex_gateway::ApiError;
use cortex_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request names a bad value; the message names the field and the rule.
    #[error("{0}")]
    Invalid(Cow<'static, str>),
    /// An own-key limit above the deployment's default; the message names the field and the
    /// ceiling.
    #[error("{0}")]
    LimitAboveCeiling(String),
    /// The key is revoked, expired, suspended or already rotated; the message says which.
    #[error("{0}")]
    KeyNotRotatable(&'static str),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request clashes with what is stored (a taken name, a provider still in use); the
    /// message says which.
    #[error("{0}")]
    Conflict(Cow<'static, str>),
    /// A failure the caller cannot fix (already logged with its cause); the message says what
    /// was being done.
    #[error("{0}")]
    Internal(&'static str),
}

impl ControlError {
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        ControlError::Invalid(message.into())
    }
}

/// How the admin API answers a control failure: the same status and code the handlers gave
/// before the services moved out of the HTTP crate.
impl From<ControlError> for ApiError {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::Invalid(message) => ApiError::InvalidRequest(message),
            ControlError::LimitAboveCeiling(message) => ApiError::LimitAboveCeiling(message),
            ControlError::KeyNotRotatable(reason) => ApiError::KeyNotRotatable(reason),
            ControlError::NotFound => ApiError::NotFound,
            ControlError::Store(err) => ApiError::from(err),
            ControlError::Conflict(message) => ApiError::Conflict(message),
            ControlError::Internal(_) => ApiError::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_sees_the_whole_message_and_the_api_the_same_code() {
        let err = ControlError::invalid("`name` must be 1 to 128 printable characters");
        assert_eq!(
            err.to_string(),
            "`name` must be 1 to 128 printable characters"
        );
        assert_eq!(ApiError::from(err).code(), "invalid_request");
        assert_eq!(
            ApiError::from(ControlError::KeyNotRotatable("revoked")).code(),
            "key_not_rotatable"
        );
        assert_eq!(
            ApiError::from(ControlError::Store(StoreError::NotFound)).code(),
            "not_found"
        );
    }
}
