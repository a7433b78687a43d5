//! API key secrets: generation (≥ 256 bits) and the SHA-256 hash that is all we store.

use rand::rngs::OsRng;
use rand::Rng;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::CryptoError;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const PUBLIC_ID_LEN: usize = 12;
const SECRET_LEN: usize = 43;

/// SHA-256 of a key's secret part.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| CryptoError::Malformed)?;
        Ok(Self(bytes))
    }

    /// Constant-time comparison, so timing does not reveal how much of a guess matched.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", &hex::encode(&self.0[..2]))
    }
}

pub fn hash_key_secret(secret: &str) -> KeyHash {
    KeyHash(Sha256::digest(secret.as_bytes()).into())
}

/// A freshly generated key; `full` is shown to its owner once.
pub struct NewApiKey {
    pub public_id: String,
    pub secret: SecretString,
    pub full: SecretString,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("public_id", &self.public_id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// Uniform over the base62 alphabet: `gen_range` rejects instead of taking a modulo.
pub(crate) fn base62(len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

pub fn generate_api_key() -> NewApiKey {
    let public_id = base62(PUBLIC_ID_LEN);
    let secret = base62(SECRET_LEN);
    let full = format!("ctx_{public_id}_{secret}");
    NewApiKey {
        public_id,
        secret: SecretString::from(secret),
        full: SecretString::from(full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn generated_keys_have_the_wire_format() {
        let key = generate_api_key();
        let full = key.full.expose_secret();
        assert!(full.starts_with("ctx_"));
        assert_eq!(full.len(), 4 + PUBLIC_ID_LEN + 1 + SECRET_LEN);
        assert_eq!(key.secret.expose_secret().len(), SECRET_LEN);
        assert_ne!(
            generate_api_key().secret.expose_secret(),
            key.secret.expose_secret()
        );
        assert!(!format!("{key:?}").contains(key.secret.expose_secret()));
    }

    #[test]
    fn hashes_round_trip_and_compare() {
        let a = hash_key_secret("secret");
        assert_eq!(KeyHash::from_hex(&a.to_hex()).unwrap(), a);
        assert!(a.ct_eq(&hash_key_secret("secret")));
        assert!(!a.ct_eq(&hash_key_secret("secreT")));
        assert!(KeyHash::from_hex("zz").is_err());
        assert!(!format!("{a:?}").contains(&a.to_hex()));
    }
}
