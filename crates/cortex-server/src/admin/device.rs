//! The device cookie: set on every successful login, it lets that browser log in as that user
//! while the account's lockout bucket is empty (see [`super::attempts`]). Signed with a key
//! derived from the master key (`cortex_crypto::device`); bound to the username, with an expiry
//! and a random nonce that names the device's own bucket.

use axum::http::{HeaderMap, HeaderValue};
use cortex_crypto::device::DeviceId;
use secrecy::ExposeSecret;

use super::principal::cookie;
use crate::state::AppState;

/// The cookie's name over plain HTTP.
pub const DEVICE_COOKIE: &str = "cortex_device";
/// Its name when served over TLS: the `__Host-` prefix makes browsers accept it only with
/// `Secure`, `Path=/` and no `Domain`, so no other host or plain-HTTP page can plant one.
pub const SECURE_DEVICE_COOKIE: &str = "__Host-cortex_device";
/// How long a device stays known without logging in again.
const LIFETIME_SECS: i64 = 30 * 24 * 3600;

pub fn device_cookie_name(app: &AppState) -> &'static str {
    if app.config.serves_tls() {
        SECURE_DEVICE_COOKIE
    } else {
        DEVICE_COOKIE
    }
}

fn now_secs(app: &AppState) -> i64 {
    app.now_millis().div_euclid(1000)
}

/// The device presenting a valid cookie for `username`, if any. A missing, expired, forged or
/// another user's cookie is simply no device: the attempt is limited as untrusted.
pub fn presented(app: &AppState, headers: &HeaderMap, username: &str) -> Option<DeviceId> {
    let token = cookie(headers, device_cookie_name(app))?;
    app.device_cookies.verify(token, username, now_secs(app))
}

/// A `Set-Cookie` value with a new device cookie for `username`.
pub fn issue(app: &AppState, username: &str) -> Option<HeaderValue> {
    let token = app
        .device_cookies
        .issue(username, now_secs(app) + LIFETIME_SECS);
    let secure = if app.config.serves_tls() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::try_from(format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={LIFETIME_SECS}{secure}",
        device_cookie_name(app),
        token.expose_secret()
    ))
    .ok()
}
