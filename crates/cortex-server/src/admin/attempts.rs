//! Brute-force limits on everything that checks a secret a person typed: passwords, TOTP and
//! recovery codes, refresh tokens.
//!
//! Every attempt is charged to its buckets *before* the secret is checked, and refunded only
//! when it succeeds (or was never checked). Checking first and charging failures afterwards let
//! any number of parallel attempts pass the check while the first ones were still hashing;
//! charged first, at most a bucket's worth of attempts can be in flight.
//!
//! Logins follow OWASP's device-cookie scheme, so that guessing at an account cannot lock its
//! owner out:
//! - a browser presenting a valid device cookie for the user (see [`super::device`]) is charged
//!   only to that device's own bucket; once that is empty the cookie is not trusted until it
//!   refills, and the attempt is treated like any other;
//! - every other attempt is charged to the client address (any user), to the (user, address)
//!   pair, and to the account's bucket for clients without a device cookie. One address can
//!   spend only part of the account's bucket, and when the account's bucket is empty, clients
//!   without a device cookie are refused even the right password — the owner's browser is not.

use std::time::Duration;

use cortex_crypto::device::DeviceId;
use cortex_limits::Quota;

use crate::state::AppState;
use cortex_gateway::error::{ApiError, Limit};

const fn per_minute(count: u32) -> Quota {
    Quota {
        rate_per_second: count as f64 / 60.0,
        burst: count,
    }
}

/// Login attempts from one client address, whatever the username.
pub const LOGIN_PER_ADDRESS: Quota = per_minute(10);
/// Login attempts for one username from one address: less than the account's bucket, so a
/// single address cannot by itself shut other clients without a device cookie out.
pub const LOGIN_PER_USER_AND_ADDRESS: Quota = per_minute(3);
/// Login attempts for one username from all clients without a trusted device cookie.
pub const LOGIN_PER_ACCOUNT: Quota = per_minute(5);
/// Login attempts from one trusted device: five, then one a minute. An emptied bucket is what
/// makes the device's cookie untrusted for a while.
pub const LOGIN_PER_DEVICE: Quota = Quota {
    rate_per_second: 1.0 / 60.0,
    burst: 5,
};
/// TOTP and recovery codes, at login and when turning TOTP off: per user.
pub const MFA_PER_USER: Quota = per_minute(5);
/// The current password on a password change: per user.
pub const PASSWORD_CHANGE_PER_USER: Quota = per_minute(5);
/// Service accounts' token requests from one client address (`POST /oauth/token`). Refunded
/// when a token is issued, so only failures count: a secret of 256 bits cannot be guessed, but
/// each refusal writes an audit event.
pub const TOKEN_PER_ADDRESS: Quota = per_minute(30);
/// Single sign-on starts and callbacks from one client address: each start stores a pending
/// login and each callback may write an audit event.
pub const SSO_PER_ADDRESS: Quota = per_minute(20);
/// Passkey sign-ins from one client address (passwordless starts and every finish): refunded
/// when a sign-in succeeds.
pub const PASSKEY_PER_ADDRESS: Quota = per_minute(10);

/// The buckets one attempt was charged to. Dropping it keeps the charge: an attempt counts
/// unless [`Attempt::refund`] says it succeeded (or was never checked).
#[must_use = "an attempt is refunded or deliberately kept"]
pub struct Attempt {
    buckets: Vec<(String, Quota)>,
}

impl Attempt {
    /// Charges every bucket; when one is empty, gives back what was already charged and
    /// answers 429 `too_many_attempts` with its `Retry-After`.
    pub async fn charge(app: &AppState, buckets: Vec<(String, Quota)>) -> Result<Self, ApiError> {
        let mut charged = Attempt {
            buckets: Vec::with_capacity(buckets.len()),
        };
        for (key, quota) in buckets {
            let Ok(decision) = app.data.limiter.check_rate(&key, quota).await else {
                charged.refund(app).await;
                return Err(ApiError::Unavailable);
            };
            if !decision.allowed {
                charged.refund(app).await;
                return Err(too_many(
                    decision.retry_after.unwrap_or(Duration::from_secs(60)),
                ));
            }
            charged.buckets.push((key, quota));
        }
        Ok(charged)
    }

    /// The attempt succeeded: it does not count.
    pub async fn refund(self, app: &AppState) {
        for (key, quota) in &self.buckets {
            if let Err(err) = app.data.limiter.refund_rate(key, *quota).await {
                tracing::warn!(error = %err, "refunding a successful attempt failed");
            }
        }
    }

    /// Keeps the charge: the attempt failed.
    pub fn keep(self) {}
}

fn too_many(retry_after: Duration) -> ApiError {
    ApiError::rate_limited(Limit::LoginAttempts, retry_after)
}

/// Charges a login attempt for `username` from `address`: to the device's bucket when a
/// trusted device cookie came with it and that bucket has room, else to the address, the
/// (user, address) pair and the account.
pub async fn charge_login(
    app: &AppState,
    address: &str,
    username: &str,
    device: Option<&DeviceId>,
) -> Result<Attempt, ApiError> {
    let account = username.to_lowercase();
    if let Some(device) = device {
        let bucket = vec![(
            format!("login-device:{}", device.as_str()),
            LOGIN_PER_DEVICE,
        )];
        match Attempt::charge(app, bucket).await {
            Ok(attempt) => return Ok(attempt),
            // A device that failed too often is treated like one without a cookie.
            Err(ApiError::RateLimited { .. }) => {}
            Err(other) => return Err(other),
        }
    }
    Attempt::charge(
        app,
        vec![
            (format!("login-ip:{address}"), LOGIN_PER_ADDRESS),
            (
                format!("login-user-ip:{address} {account}"),
                LOGIN_PER_USER_AND_ADDRESS,
            ),
            (format!("login-user:{account}"), LOGIN_PER_ACCOUNT),
        ],
    )
    .await
}

/// Charges one TOTP or recovery code for `user_id`.
pub async fn charge_mfa(app: &AppState, user_id: &str) -> Result<Attempt, ApiError> {
    Attempt::charge(app, vec![(format!("mfa-user:{user_id}"), MFA_PER_USER)]).await
}

/// Charges one check of the current password on a password change.
pub async fn charge_password_change(app: &AppState, user_id: &str) -> Result<Attempt, ApiError> {
    Attempt::charge(
        app,
        vec![(format!("password-user:{user_id}"), PASSWORD_CHANGE_PER_USER)],
    )
    .await
}

/// Charges one refresh-token presentation from `address`, to the address's login bucket.
pub async fn charge_refresh(app: &AppState, address: &str) -> Result<Attempt, ApiError> {
    Attempt::charge(
        app,
        vec![(format!("login-ip:{address}"), LOGIN_PER_ADDRESS)],
    )
    .await
}

/// Charges one token request (client credentials) from `address`.
pub async fn charge_token(app: &AppState, address: &str) -> Result<Attempt, ApiError> {
    Attempt::charge(
        app,
        vec![(format!("oauth-ip:{address}"), TOKEN_PER_ADDRESS)],
    )
    .await
}

/// Charges one single sign-on start or callback from `address`.
pub async fn charge_sso(app: &AppState, address: &str) -> Result<Attempt, ApiError> {
    Attempt::charge(app, vec![(format!("sso-ip:{address}"), SSO_PER_ADDRESS)]).await
}

/// Charges one passkey sign-in step from `address`.
pub async fn charge_passkey(app: &AppState, address: &str) -> Result<Attempt, ApiError> {
    Attempt::charge(
        app,
        vec![(format!("passkey-ip:{address}"), PASSKEY_PER_ADDRESS)],
    )
    .await
}
