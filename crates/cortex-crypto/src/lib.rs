//! Cortex's secret-handling primitives, a thin layer over RustCrypto: API key and service
//! accounts' client-credential generation and hashing, constant-time comparison, envelope
//! encryption, Argon2id passwords and the password policy, JWTs, TOTP and recovery codes, device
//! cookies, and Ed25519 signing for audit checkpoints.
//!
//! Every type that holds a secret keeps it in a `secrecy` container (zeroized on drop) and
//! prints `[REDACTED]` in `Debug`; no error message carries secret material.

pub mod api_key;
pub mod client_credentials;
pub mod device;
pub mod envelope;
pub mod jwt;
pub mod password;
pub mod signing;
pub mod token;
pub mod totp;

/// Failures of the primitives. Deliberately without detail: a caller learns *that* a
/// decryption or verification failed, never why, and never any secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("malformed input")]
    Malformed,
    #[error("decryption failed")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("token is invalid")]
    InvalidToken,
    #[error("token has expired")]
    Expired,
    #[error("hashing failed")]
    Hash,
}
