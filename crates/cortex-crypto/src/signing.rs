//! Ed25519 signatures for audit checkpoints, so a truncated audit tail is detectable.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

pub struct AuditSigner(SigningKey);

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSigner(public {})", self.verifying_key_hex())
    }
}

impl AuditSigner {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    pub fn sign(&self, msg: &[u8]) -> String {
        hex::encode(self.0.sign(msg).to_bytes())
    }

    pub fn verifying_key_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }

    pub fn verify(verifying_key_hex: &str, msg: &[u8], sig_hex: &str) -> bool {
        let mut key = [0u8; 32];
        let mut sig = [0u8; 64];
        if hex::decode_to_slice(verifying_key_hex, &mut key).is_err()
            || hex::decode_to_slice(sig_hex, &mut sig).is_err()
        {
            return false;
        }
        let Ok(key) = VerifyingKey::from_bytes(&key) else {
            return false;
        };
        key.verify(msg, &Signature::from_bytes(&sig)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let signer = AuditSigner::from_seed(&[3u8; 32]);
        let sig = signer.sign(b"seq=5 hash=ab");
        assert!(AuditSigner::verify(
            &signer.verifying_key_hex(),
            b"seq=5 hash=ab",
            &sig
        ));
        assert!(!AuditSigner::verify(
            &signer.verifying_key_hex(),
            b"seq=4 hash=ab",
            &sig
        ));
        assert!(!AuditSigner::verify(
            &AuditSigner::from_seed(&[4u8; 32]).verifying_key_hex(),
            b"seq=5 hash=ab",
            &sig
        ));
        assert!(!AuditSigner::verify("zz", b"x", &sig));
    }
}
