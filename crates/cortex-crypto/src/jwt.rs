//! Short-lived admin access tokens: HS256 only, with `exp`, `iat`, `iss` and `aud` checked.
//! The algorithm is fixed by the verifier, so `alg: none` and algorithm switching fail.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::CryptoError;

/// Tolerated clock difference between instances, in seconds.
const LEEWAY_SECS: i64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    /// The session the token belongs to; revoked with it.
    pub sid: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub jti: String,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    pub fn new(signing_key: &[u8; 32], issuer: &str, audience: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(signing_key),
            decoding: DecodingKey::from_secret(signing_key),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    pub fn issue(
        &self,
        sub: &str,
        sid: &str,
        role: &str,
        now_unix: i64,
        ttl_secs: i64,
    ) -> Result<(String, AccessClaims), CryptoError> {
        let claims = AccessClaims {
            sub: sub.to_owned(),
            sid: sid.to_owned(),
            role: role.to_owned(),
            iat: now_unix,
            exp: now_unix + ttl_secs,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: secrecy::ExposeSecret::expose_secret(&crate::token::random_token(16)).to_owned(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| CryptoError::InvalidToken)?;
        Ok((token, claims))
    }

    /// Verifies signature (HS256 only), issuer and audience, then time against `now_unix`.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<AccessClaims, CryptoError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        // Time is checked below against the caller's clock, so tests can control it.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = decode::<AccessClaims>(token, &self.decoding, &validation)
            .map_err(|_| CryptoError::InvalidToken)?;
        let claims = data.claims;
        if claims.iat > now_unix + LEEWAY_SECS {
            return Err(CryptoError::InvalidToken);
        }
        if claims.exp <= now_unix {
            return Err(CryptoError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const NOW: i64 = 1_800_000_000;

    fn keys() -> JwtKeys {
        JwtKeys::new(&[7u8; 32], "cortex", "cortex-admin")
    }

    #[test]
    fn round_trip() {
        let (token, claims) = keys().issue("u1", "s1", "admin", NOW, 900).unwrap();
        assert_eq!(keys().verify(&token, NOW + 10).unwrap(), claims);
        assert_eq!(keys().verify(&token, NOW + 900), Err(CryptoError::Expired));
    }

    #[test]
    fn attacks_fail() {
        let (token, _) = keys().issue("u1", "s1", "viewer", NOW, 900).unwrap();
        let parts: Vec<&str> = token.split('.').collect();

        // alg: none with the same claims and no signature.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(keys()
            .verify(&format!("{none_header}.{}.", parts[1]), NOW)
            .is_err());

        // Payload changed to admin, signature kept.
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
            .unwrap()
            .replace("viewer", "admin");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload),
            parts[2]
        );
        assert_eq!(keys().verify(&forged, NOW), Err(CryptoError::InvalidToken));

        // Algorithm switch: HS512 with the same secret.
        let claims: AccessClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .unwrap();
        assert_eq!(keys().verify(&hs512, NOW), Err(CryptoError::InvalidToken));

        // Another key, another audience, another issuer.
        assert!(JwtKeys::new(&[8u8; 32], "cortex", "cortex-admin")
            .verify(&token, NOW)
            .is_err());
        assert!(JwtKeys::new(&[7u8; 32], "cortex", "other")
            .verify(&token, NOW)
            .is_err());
        assert!(JwtKeys::new(&[7u8; 32], "evil", "cortex-admin")
            .verify(&token, NOW)
            .is_err());

        // Issued in the future.
        let (future, _) = keys().issue("u1", "s1", "admin", NOW + 3600, 900).unwrap();
        assert_eq!(keys().verify(&future, NOW), Err(CryptoError::InvalidToken));
        assert!(!format!("{:?}", keys()).contains("7, 7"));
    }
}
