//! Device cookies (OWASP's defence against account lockout): a browser that logged in as a user
//! gets a token signed with a key derived from the master key, naming that user, an expiry and a
//! random nonce. Presenting a valid one on a later login marks the attempt as coming from a
//! device the user has used, which the server limits per device instead of per account.
//!
//! Token: `v1.<expiry, unix seconds>.<nonce, 16 bytes base64url>.<HMAC-SHA256, base64url>`, the
//! MAC over a purpose label, the username, the expiry and the nonce. The username is not in the
//! token (the login names it), so a token opens nothing and says nothing on its own.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;

use crate::envelope::MasterKey;
use crate::token::{ct_eq, fill_random};

const VERSION: &str = "v1";
const LABEL: &[u8] = b"cortex-device-cookie-v1";
const NONCE_BYTES: usize = 16;
/// Longer tokens are not ours; refuse them before decoding anything.
const MAX_TOKEN_LEN: usize = 128;

/// The public identity of one device cookie (its nonce): what its attempts are counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Signs and checks device cookies.
pub struct DeviceCookieKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for DeviceCookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceCookieKey([REDACTED])")
    }
}

impl DeviceCookieKey {
    /// The key for device cookies, derived from the master key for this purpose only.
    pub fn derive(master: &MasterKey) -> Self {
        Self(master.derive_subkey("cortex-device-cookie-v1"))
    }

    fn mac(&self, username: &str, expires_at: i64, nonce: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable_hmac());
        // Length-prefixed fields: no two (username, expiry, nonce) triples sign the same bytes.
        for field in [
            LABEL,
            username.as_bytes(),
            expires_at.to_string().as_bytes(),
            nonce.as_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// A new token for `username`, valid until `expires_at` (unix seconds).
    pub fn issue(&self, username: &str, expires_at: i64) -> SecretString {
        let mut nonce = [0u8; NONCE_BYTES];
        fill_random(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let mac = URL_SAFE_NO_PAD.encode(self.mac(username, expires_at, &nonce));
        SecretString::from(format!("{VERSION}.{expires_at}.{nonce}.{mac}"))
    }

    /// The device's id when `token` was issued by this key for `username` and has not expired
    /// at `now` (unix seconds); `None` for anything else, without saying why.
    pub fn verify(&self, token: &str, username: &str, now: i64) -> Option<DeviceId> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut parts = token.split('.');
        let (version, expires_at, nonce, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != VERSION {
            return None;
        }
        let expires_at: i64 = expires_at.parse().ok()?;
        let nonce_bytes = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        if nonce_bytes.len() != NONCE_BYTES {
            return None;
        }
        let presented = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if !ct_eq(&presented, &self.mac(username, expires_at, nonce)) || expires_at <= now {
            return None;
        }
        Some(DeviceId(nonce.to_owned()))
    }
}

/// HMAC accepts keys of any length, so construction cannot fail.
fn unreachable_hmac() -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable_hmac())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_only_for_its_user_until_it_expires() {
        let key = DeviceCookieKey::derive(&MasterKey::generate());
        let token = key.issue("admin", 2_000);
        let token = token.expose_secret();
        let id = key.verify(token, "admin", 1_000).unwrap();
        assert_eq!(id.as_str().len(), 22);
        assert_eq!(key.verify(token, "Admin", 1_000), None);
        assert_eq!(key.verify(token, "admin2", 1_000), None);
        assert_eq!(key.verify(token, "admin", 2_000), None, "expired");
        // Two tokens are two devices.
        let other = key.issue("admin", 2_000);
        assert_ne!(key.verify(other.expose_secret(), "admin", 1_000), Some(id));
    }

    #[test]
    fn forged_and_tampered_tokens_are_refused() {
        let master = MasterKey::generate();
        let key = DeviceCookieKey::derive(&master);
        let token = key.issue("admin", 2_000).expose_secret().to_owned();
        let parts: Vec<&str> = token.split('.').collect();
        // Another master key's token, a later expiry, another nonce, a cut MAC, junk.
        let foreign = DeviceCookieKey::derive(&MasterKey::generate()).issue("admin", 2_000);
        let later = format!("v1.9999999999.{}.{}", parts[2], parts[3]);
        let nonce = format!("v1.2000.{}.{}", "A".repeat(22), parts[3]);
        let cut = format!("v1.2000.{}.{}", parts[2], &parts[3][..20]);
        let v2 = token.replacen("v1.", "v2.", 1);
        let extra = format!("{token}.x");
        for bad in [
            foreign.expose_secret(),
            later.as_str(),
            nonce.as_str(),
            cut.as_str(),
            v2.as_str(),
            extra.as_str(),
            "",
            "v1",
            "v1.2000..",
            &"v1.".repeat(100),
        ] {
            assert_eq!(key.verify(bad, "admin", 1_000), None, "{bad}");
        }
        assert!(!format!("{key:?}").contains(&token));
    }
}
