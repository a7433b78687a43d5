//! Service accounts' OAuth 2.0 client credentials (RFC 6749 §2.3.1, §4.4): a public client id
//! and a secret of 256 random bits. As for API keys, only the SHA-256 of the secret is stored
//! ([`crate::api_key::hash_key_secret`]) and compared in constant time: a random secret of this
//! size needs no slow hash, which would only cost the token endpoint CPU per request.

use secrecy::SecretString;

use crate::api_key::base62;

/// Prefix of a client id: public, shown in lists and audit events.
pub const CLIENT_ID_PREFIX: &str = "sa_";
/// Prefix of a client secret, so secret scanners can recognise one.
pub const CLIENT_SECRET_PREFIX: &str = "ctxsa_";
const CLIENT_ID_LEN: usize = 20;
/// 43 base62 characters: 256 bits.
const CLIENT_SECRET_LEN: usize = 43;

/// A new pair; the secret is shown to its creator once.
pub struct NewClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

impl std::fmt::Debug for NewClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .finish()
    }
}

pub fn generate_client_id() -> String {
    format!("{CLIENT_ID_PREFIX}{}", base62(CLIENT_ID_LEN))
}

pub fn generate_client_secret() -> SecretString {
    SecretString::from(format!(
        "{CLIENT_SECRET_PREFIX}{}",
        base62(CLIENT_SECRET_LEN)
    ))
}

pub fn generate_client_credentials() -> NewClientCredentials {
    NewClientCredentials {
        client_id: generate_client_id(),
        client_secret: generate_client_secret(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_key::hash_key_secret;
    use secrecy::ExposeSecret;

    #[test]
    fn credentials_are_random_with_their_prefixes_and_hide_the_secret() {
        let a = generate_client_credentials();
        let b = generate_client_credentials();
        assert!(a.client_id.starts_with(CLIENT_ID_PREFIX));
        assert_eq!(a.client_id.len(), CLIENT_ID_PREFIX.len() + CLIENT_ID_LEN);
        let secret = a.client_secret.expose_secret();
        assert!(secret.starts_with(CLIENT_SECRET_PREFIX));
        assert_eq!(secret.len(), CLIENT_SECRET_PREFIX.len() + CLIENT_SECRET_LEN);
        assert_ne!(a.client_id, b.client_id);
        assert_ne!(secret, b.client_secret.expose_secret());
        assert!(!format!("{a:?}").contains(secret));
        let hash = hash_key_secret(secret);
        assert!(hash.ct_eq(&hash_key_secret(secret)));
        assert!(!hash.ct_eq(&hash_key_secret(b.client_secret.expose_secret())));
    }
}
