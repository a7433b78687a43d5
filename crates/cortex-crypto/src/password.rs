//! Argon2id password hashing (OWASP parameters) and the password policy.

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

use crate::CryptoError;

pub const MIN_PASSWORD_LEN: usize = 12;
pub const MAX_PASSWORD_LEN: usize = 128;

/// OWASP's minimum for Argon2id: 19 MiB, 2 iterations, 1 lane.
fn argon2() -> Result<Argon2<'static>, CryptoError> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|_| CryptoError::Hash)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

pub fn hash_password(password: &SecretString) -> Result<String, CryptoError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()?
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CryptoError::Hash)
}

/// Verifies with the parameters recorded in the hash itself; false on any malformed hash.
pub fn verify_password(phc: &str, password: &SecretString) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(hasher) = argon2() else { return false };
    hasher
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_ok()
}

/// Spends the same time as a real verification, for unknown users: the answer's timing must
/// not tell whether a username exists.
pub fn verify_dummy(password: &SecretString) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let hash = DUMMY.get_or_init(|| {
        hash_password(&SecretString::from("cortex-dummy-password-for-timing")).unwrap_or_default()
    });
    let _ = verify_password(hash, password);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordPolicyError {
    #[error("the password must be at least {min} characters")]
    TooShort { min: usize },
    #[error("the password must be at most {max} characters")]
    TooLong { max: usize },
    #[error("the password is on the list of common passwords")]
    Common,
    #[error("the password is too easy to guess; use a longer passphrase")]
    TooWeak,
}

const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

pub fn check_password_policy(
    password: &str,
    user_inputs: &[&str],
) -> Result<(), PasswordPolicyError> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_LEN {
        return Err(PasswordPolicyError::TooShort {
            min: MIN_PASSWORD_LEN,
        });
    }
    if length > MAX_PASSWORD_LEN {
        return Err(PasswordPolicyError::TooLong {
            max: MAX_PASSWORD_LEN,
        });
    }
    let lowered = password.to_lowercase();
    if COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .any(|common| !common.is_empty() && common == lowered)
    {
        return Err(PasswordPolicyError::Common);
    }
    let estimate = zxcvbn::zxcvbn(password, user_inputs);
    if (estimate.score() as u8) < 3 {
        return Err(PasswordPolicyError::TooWeak);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let password = SecretString::from("a sturdy passphrase 4 tests");
        let hash = hash_password(&password).unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password(&hash, &password));
        assert!(!verify_password(
            &hash,
            &SecretString::from("a sturdy passphrase 4 test")
        ));
        assert!(!verify_password("not a hash", &password));
    }

    #[test]
    fn policy() {
        assert_eq!(
            check_password_policy("short", &[]),
            Err(PasswordPolicyError::TooShort { min: 12 })
        );
        assert_eq!(
            check_password_policy(&"x".repeat(129), &[]),
            Err(PasswordPolicyError::TooLong { max: 128 })
        );
        assert_eq!(
            check_password_policy("password1234", &[]),
            Err(PasswordPolicyError::Common)
        );
        assert_eq!(
            check_password_policy("aaaaaaaaaaaa", &[]),
            Err(PasswordPolicyError::TooWeak)
        );
        assert_eq!(
            check_password_policy("adminadmin12", &["admin"]),
            Err(PasswordPolicyError::TooWeak)
        );
        assert!(check_password_policy("Test-Fixture-Passphrase-9f3b1c", &["admin"]).is_ok());
    }
}
