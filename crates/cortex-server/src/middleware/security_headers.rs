//! Security headers on every response — successes, errors, 404s and panics' 500s alike
//! (SPEC §7). HSTS only when the gateway is reached over TLS (natively or through a trusted TLS
//! proxy): sent over plain HTTP it would be ignored at best and lock out a misconfigured
//! deployment at worst.

use axum::http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};

use crate::middleware::inline::Inline;
use cortex_config::Config;

/// API answers are data, never documents: nothing may load or frame them.
pub const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
const PERMISSIONS_POLICY: &str =
    "accelerometer=(), camera=(), display-capture=(), geolocation=(), \
     gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()";
const PERMISSIONS_POLICY_HEADER: HeaderName = HeaderName::from_static("permissions-policy");
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// Adds the headers to every response; HSTS only when the gateway is reached over TLS.
#[derive(Clone)]
pub struct SecurityHeaders {
    tls: bool,
}

impl SecurityHeaders {
    pub fn new(config: &Config) -> Self {
        Self {
            tls: config.serves_tls(),
        }
    }
}

impl<ResBody> Inline<ResBody> for SecurityHeaders {
    type Carry = bool;

    fn before<B>(&self, _request: &mut Request<B>) -> Result<bool, Response<ResBody>> {
        Ok(self.tls)
    }

    fn after(tls: bool, mut response: Response<ResBody>) -> Response<ResBody> {
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(
            PERMISSIONS_POLICY_HEADER,
            HeaderValue::from_static(PERMISSIONS_POLICY),
        );
        // The console sets its own (stricter for documents, allowing its own scripts); everything
        // else gets the API policy.
        if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(API_CSP),
            );
        }
        if tls {
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS),
            );
        }
        response
    }
}
