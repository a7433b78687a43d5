//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s — what common authenticator apps use) with replay
//! protection, and single-use recovery codes.

use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use secrecy::{SecretBox, SecretString};
use totp_rs::{Algorithm, Secret, TOTP};

use crate::CryptoError;

const STEP: u64 = 30;
const DIGITS: usize = 6;

pub fn generate_totp_secret() -> SecretBox<Vec<u8>> {
    let mut bytes = vec![0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    SecretBox::new(Box::new(bytes))
}

pub fn secret_base32(secret: &[u8]) -> SecretString {
    SecretString::from(Secret::Raw(secret.to_vec()).to_encoded().to_string())
}

fn totp(secret: &[u8], issuer: Option<String>, account: &str) -> Result<TOTP, CryptoError> {
    // totp-rs refuses secrets under 128 bits; ours are 160.
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP,
        secret.to_vec(),
        issuer,
        account.to_owned(),
    )
    .map_err(|_| CryptoError::Malformed)
}

pub fn otpauth_url(
    secret: &[u8],
    issuer: &str,
    account: &str,
) -> Result<SecretString, CryptoError> {
    Ok(SecretString::from(
        totp(secret, Some(issuer.to_owned()), account)?.get_url(),
    ))
}

pub fn totp_code_at(secret: &[u8], unix: u64) -> String {
    totp(secret, None, "x")
        .map(|t| t.generate(unix))
        .unwrap_or_default()
}

/// Accepts the code of the previous, current or next step, but never a step at or before
/// `last_used_step`: a code that was used once (or an older one) cannot be replayed. Returns
/// the step that matched, which the caller stores as the new `last_used_step`.
pub fn verify_totp(
    secret: &[u8],
    code: &str,
    now_unix: u64,
    last_used_step: Option<u64>,
) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now_unix / STEP;
    let mut matched = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = totp_code_at(secret, step * STEP);
        // Compare every candidate, in constant time, so timing does not reveal which matched.
        if crate::token::ct_eq(expected.as_bytes(), code.as_bytes()) && matched.is_none() {
            matched = Some(step);
        }
    }
    matched.filter(|step| last_used_step.is_none_or(|last| *step > last))
}

/// Recovery codes look like `k7mq-x3vh-9tcp`: 12 characters from a 32-letter alphabet without
/// look-alikes, 60 bits each.
pub fn generate_recovery_codes(n: usize) -> Vec<SecretString> {
    const ALPHABET: &[u8; 32] = b"23456789abcdefghjkmnpqrstuvwxyz0";
    let mut rng = OsRng;
    (0..n)
        .map(|_| {
            let chars: String = (0..12)
                .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
                .collect();
            SecretString::from(format!(
                "{}-{}-{}",
                &chars[0..4],
                &chars[4..8],
                &chars[8..12]
            ))
        })
        .collect()
}

/// Codes carry 60 random bits and are single use, so a fast hash suffices (no dictionary to
/// attack); normalising lets users type them with or without dashes, in any case.
pub fn hash_recovery_code(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    crate::token::sha256_hex(normal.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn codes_verify_once_within_the_window() {
        let secret = generate_totp_secret();
        let secret = secret.expose_secret();
        let now = 1_800_000_015;
        let code = totp_code_at(secret, now);
        let step = verify_totp(secret, &code, now, None).unwrap();
        assert_eq!(step, now / 30);
        assert_eq!(
            verify_totp(secret, &code, now, Some(step)),
            None,
            "replay refused"
        );
        let previous = totp_code_at(secret, now - 30);
        assert_eq!(
            verify_totp(secret, &previous, now, Some(step)),
            None,
            "older codes refused after a newer one"
        );
        assert!(verify_totp(secret, &totp_code_at(secret, now - 90), now, None).is_none());
        assert!(verify_totp(secret, "12345", now, None).is_none());
        assert!(verify_totp(secret, "abcdef", now, None).is_none());
    }

    #[test]
    fn otpauth_and_recovery_codes() {
        let secret = generate_totp_secret();
        let url = otpauth_url(secret.expose_secret(), "Cortex", "admin").unwrap();
        assert!(
            url.expose_secret()
                .starts_with("otpauth://totp/Cortex:admin?secret="),
            "{}",
            url.expose_secret()
        );
        assert_eq!(
            secret_base32(secret.expose_secret()).expose_secret().len(),
            32
        );
        let codes = generate_recovery_codes(10);
        assert_eq!(codes.len(), 10);
        let first = codes[0].expose_secret();
        assert_eq!(first.len(), 14);
        assert_eq!(
            hash_recovery_code(first),
            hash_recovery_code(&first.replace('-', "").to_uppercase())
        );
        assert_ne!(
            hash_recovery_code(first),
            hash_recovery_code(codes[1].expose_secret())
        );
    }
}
