//! Envelope encryption with AES-256-GCM: each record gets its own random data key, which is
//! wrapped by the master key. The record's id is the associated data, so a sealed value copied
//! onto another record does not open.
//!
//! Blob layout: `[version 1][wrap nonce 12][wrapped data key 48][data nonce 12][ciphertext+tag]`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::CryptoError;

const VERSION: u8 = 1;
const NONCE: usize = 12;
const WRAPPED: usize = 32 + 16;
const HEADER: usize = 1 + NONCE + WRAPPED + NONCE;
const WRAP_AAD_PREFIX: &[u8] = b"cortex-dek-v1";

/// The key-encryption key.
pub struct MasterKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut bytes = Box::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        Self(SecretBox::new(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// Accepts 64 hex characters or base64 (standard or URL-safe, padded or not) of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let mut bytes = Zeroizing::new([0u8; 32]);
        if text.len() == 64 && hex::decode_to_slice(text, bytes.as_mut()).is_ok() {
            return Ok(Self::from_bytes(*bytes));
        }
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(decoded) = engine.decode(text) {
                let decoded = Zeroizing::new(decoded);
                if decoded.len() == 32 {
                    bytes.copy_from_slice(&decoded);
                    return Ok(Self::from_bytes(*bytes));
                }
            }
        }
        Err(CryptoError::Malformed)
    }

    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.0.expose_secret()))
    }

    /// A sub-key for one purpose (JWT signing, audit signing): HMAC-SHA256(master, label).
    pub fn derive_subkey(&self, label: &str) -> SecretBox<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(label.as_bytes());
        SecretBox::new(Box::new(mac.finalize().into_bytes().into()))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.expose_secret().into())
    }
}

/// HMAC accepts keys of any length, so construction cannot fail; this keeps the type checker
/// satisfied without `unwrap`.
fn unreachable_hmac() -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable_hmac())
}

fn wrap_aad(aad: &[u8]) -> Vec<u8> {
    [WRAP_AAD_PREFIX, aad].concat()
}

fn random_nonce() -> [u8; NONCE] {
    let mut nonce = [0u8; NONCE];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

pub fn seal(master: &MasterKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut data_key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(data_key.as_mut());
    let data_nonce = random_nonce();
    let ciphertext = Aes256Gcm::new(data_key.as_ref().into())
        .encrypt(
            Nonce::from_slice(&data_nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let wrap_nonce = random_nonce();
    let wrapped = master
        .cipher()
        .encrypt(
            Nonce::from_slice(&wrap_nonce),
            Payload {
                msg: data_key.as_ref(),
                aad: &wrap_aad(aad),
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let mut blob = Vec::with_capacity(HEADER + ciphertext.len());
    blob.push(VERSION);
    blob.extend_from_slice(&wrap_nonce);
    blob.extend_from_slice(&wrapped);
    blob.extend_from_slice(&data_nonce);
    blob.extend_from_slice(&ciphertext);
    Ok(blob)
}

struct Parts<'a> {
    wrap_nonce: &'a [u8],
    wrapped: &'a [u8],
    data_nonce: &'a [u8],
    ciphertext: &'a [u8],
}

fn split(blob: &[u8]) -> Result<Parts<'_>, CryptoError> {
    if blob.len() < HEADER + 16 || blob[0] != VERSION {
        return Err(CryptoError::Decrypt);
    }
    let (wrap_nonce, rest) = blob[1..].split_at(NONCE);
    let (wrapped, rest) = rest.split_at(WRAPPED);
    let (data_nonce, ciphertext) = rest.split_at(NONCE);
    Ok(Parts {
        wrap_nonce,
        wrapped,
        data_nonce,
        ciphertext,
    })
}

fn unwrap_data_key(
    master: &MasterKey,
    parts: &Parts<'_>,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    master
        .cipher()
        .decrypt(
            Nonce::from_slice(parts.wrap_nonce),
            Payload {
                msg: parts.wrapped,
                aad: &wrap_aad(aad),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

pub fn open(
    master: &MasterKey,
    blob: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let parts = split(blob)?;
    let data_key = unwrap_data_key(master, &parts, aad)?;
    if data_key.len() != 32 {
        return Err(CryptoError::Decrypt);
    }
    Aes256Gcm::new(data_key.as_slice().into())
        .decrypt(
            Nonce::from_slice(parts.data_nonce),
            Payload {
                msg: parts.ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

/// Re-wraps the data key under `new`; the ciphertext is untouched.
pub fn rewrap(
    old: &MasterKey,
    new: &MasterKey,
    blob: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let parts = split(blob)?;
    let data_key = unwrap_data_key(old, &parts, aad)?;
    let wrap_nonce = random_nonce();
    let wrapped = new
        .cipher()
        .encrypt(
            Nonce::from_slice(&wrap_nonce),
            Payload {
                msg: data_key.as_slice(),
                aad: &wrap_aad(aad),
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let mut out = Vec::with_capacity(blob.len());
    out.push(VERSION);
    out.extend_from_slice(&wrap_nonce);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(parts.data_nonce);
    out.extend_from_slice(parts.ciphertext);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aad_binding() {
        let key = MasterKey::generate();
        let blob = seal(&key, b"provider-secret", b"record-1").unwrap();
        assert_eq!(
            open(&key, &blob, b"record-1").unwrap().as_slice(),
            b"provider-secret"
        );
        assert_eq!(open(&key, &blob, b"record-2"), Err(CryptoError::Decrypt));
        assert_eq!(
            open(&MasterKey::generate(), &blob, b"record-1"),
            Err(CryptoError::Decrypt)
        );
        assert!(!blob.windows(15).any(|w| w == b"provider-secret"));
    }

    #[test]
    fn every_region_is_tamper_evident() {
        let key = MasterKey::generate();
        let blob = seal(&key, b"secret", b"id").unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(open(&key, &bad, b"id").is_err(), "flip at {i} not detected");
        }
        assert!(open(&key, &blob[..blob.len() - 1], b"id").is_err());
        assert!(open(&key, &[], b"id").is_err());
    }

    #[test]
    fn rewrap_moves_to_the_new_key() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let blob = seal(&old, b"totp", b"user").unwrap();
        let moved = rewrap(&old, &new, &blob, b"user").unwrap();
        assert_eq!(open(&new, &moved, b"user").unwrap().as_slice(), b"totp");
        assert!(open(&old, &moved, b"user").is_err());
        assert_eq!(
            &moved[HEADER..],
            &blob[HEADER..],
            "the ciphertext is unchanged"
        );
    }

    #[test]
    fn parse_accepts_hex_and_base64_and_hides_itself() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        let again = MasterKey::parse(text.expose_secret()).unwrap();
        let blob = seal(&key, b"x", b"").unwrap();
        assert_eq!(open(&again, &blob, b"").unwrap().as_slice(), b"x");
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::parse("too-short").is_err());
        assert!(MasterKey::parse(&"ab".repeat(31)).is_err());
        assert_eq!(format!("{key:?}"), "MasterKey([REDACTED])");
        let a = key.derive_subkey("jwt");
        let b = key.derive_subkey("audit");
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
