//! The one error type of every answer Cortex refuses, data plane and admin API alike, rendered
//! in the front door's error shape (`cortex_wire::error_shape`).
//!
//! It lives in the gateway crate, below the HTTP crate, because the pipeline answers with it;
//! the admin handlers and the control services' errors are rendered into it too, so every
//! refusal has one shape.
//!
//! Every lower-layer error converts here with an exhaustive match (no `_ =>` arm), so a new
//! variant cannot silently become a 500. Messages are fixed strings chosen here; internal detail
//! goes to the log, never into the body.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cortex_store::StoreError;
use cortex_upstream::UpstreamError;
use cortex_wire::BodyError;

#[derive(Debug)]
pub enum ApiError {
    /// 400 with a message that names the field, never echoes secrets or internals.
    InvalidRequest(Cow<'static, str>),
    InvalidJson,
    /// 400 `unsupported_parameter`: the field (named) has an effect the provider's dialect
    /// cannot carry, so the request is refused rather than sent without it.
    UnsupportedParameter(Cow<'static, str>),
    MissingCredentials,
    InvalidApiKey,
    KeyRevoked,
    KeyExpired,
    /// 401: the key's owner is disabled (lifted if they are enabled again, unlike a revocation).
    KeyOwnerDisabled,
    /// 409: the key is revoked, expired, suspended or already rotated; the message says which.
    KeyNotRotatable(&'static str),
    /// 403: an own-key limit above the deployment's default; the message names the field and
    /// the ceiling.
    LimitAboveCeiling(String),
    ScopeDenied,
    /// 403: the key has `allowed_ips` and the client's address is in none of them.
    IpNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    /// 400 `guardrail_blocked`: a guardrail of the request's policy refused its text (SPEC
    /// §21). The message names the detector, never what it matched.
    GuardrailBlocked(&'static str),
    NotFound,
    Conflict(Cow<'static, str>),
    PayloadTooLarge,
    /// 408: the body did not arrive within `CORTEX_BODY_READ_TIMEOUT_SEC`.
    RequestTimeout,
    /// 421: the `Host` is not in `CORTEX_ALLOWED_HOSTS` (DNS rebinding, misrouted traffic).
    HostNotAllowed,
    /// 429 with the headers the limiter computed (Retry-After, RateLimit-*).
    RateLimited {
        limit: Limit,
        headers: Box<HeaderMap>,
    },
    Upstream(UpstreamError),
    /// The provider answered 401 or 403: the gateway's credential for it was refused. A 502,
    /// not the provider's status, so the client does not think its own key is bad.
    UpstreamAuthFailed,
    /// An upstream 4xx, passed through with its status and a sanitized message.
    UpstreamRejected {
        status: StatusCode,
        message: String,
        /// The provider's `Retry-After` (seconds), passed on with its 429.
        retry_after_secs: Option<u32>,
    },
    InvalidCredentials,
    MfaRequired,
    Unauthenticated,
    Forbidden,
    PasswordChangeRequired,
    MfaEnrollmentRequired,
    /// 403: `CORTEX_LOCAL_LOGIN=false` and the account is no break-glass admin: sign in with
    /// single sign-on. Answered only after the password (or passkey) was right.
    LocalLoginDisabled,
    /// 401: the account signs in with a passkey alone; its password is not accepted. Answered
    /// only after the password was right.
    PasskeyRequired,
    CsrfRejected,
    Unavailable,
    /// 503 `unavailable` with `Retry-After`: a bounded resource (password hashing) stayed busy.
    Busy(Duration),
    Internal,
}

impl ApiError {
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::InvalidRequest(message.into())
    }

    /// 429 from `limit`, with `Retry-After` (seconds, rounded up, at least 1).
    pub fn rate_limited(limit: Limit, retry_after: Duration) -> Self {
        let mut headers = HeaderMap::new();
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        ApiError::RateLimited {
            limit,
            headers: Box::new(headers),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str, Cow<'_, str>) {
        use ApiError::*;
        match self {
            InvalidRequest(m) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                Cow::Borrowed(m.as_ref()),
            ),
            InvalidJson => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                "the request body is not valid JSON of the expected shape".into(),
            ),
            UnsupportedParameter(field) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_parameter",
                format!(
                    "`{field}` cannot be translated for this model's provider, which speaks another API; leave it out or use a model whose provider speaks this one"
                )
                .into(),
            ),
            MissingCredentials => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing_credentials",
                "no credentials were given; send Authorization: Bearer <key>".into(),
            ),
            InvalidApiKey => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                "the API key is not valid".into(),
            ),
            KeyRevoked => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "key_revoked",
                "the API key has been revoked".into(),
            ),
            KeyExpired => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "key_expired",
                "the API key has expired".into(),
            ),
            KeyOwnerDisabled => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "key_owner_disabled",
                "the API key's owner is disabled".into(),
            ),
            KeyNotRotatable(m) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "key_not_rotatable",
                Cow::Borrowed(*m),
            ),
            LimitAboveCeiling(m) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "limit_above_ceiling",
                Cow::Borrowed(m.as_str()),
            ),
            ScopeDenied => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "scope_denied",
                "the API key does not have the scope this endpoint needs".into(),
            ),
            IpNotAllowed => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "ip_not_allowed",
                "the API key may not be used from this address".into(),
            ),
            ModelNotAllowed => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "model_not_allowed",
                "the API key may not use this model".into(),
            ),
            GuardrailBlocked(detector) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "guardrail_blocked",
                Cow::Owned(format!("blocked by the {detector} guardrail")),
            ),
            ModelNotFound => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                "the model does not exist".into(),
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                "not found".into(),
            ),
            Conflict(m) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "conflict",
                Cow::Borrowed(m.as_ref()),
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "payload_too_large",
                "the request body is too large".into(),
            ),
            RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                "the request body did not arrive in time".into(),
            ),
            HostNotAllowed => (
                StatusCode::MISDIRECTED_REQUEST,
                "invalid_request_error",
                "host_not_allowed",
                "this server does not answer for that host name".into(),
            ),
            RateLimited { limit, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                limit.code(),
                Cow::Borrowed(limit.message()),
            ),
            Upstream(UpstreamError::Timeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
                "the model server did not answer in time".into(),
            ),
            Upstream(
                UpstreamError::NoProvider
                | UpstreamError::Unreachable
                | UpstreamError::ServerError(_)
                | UpstreamError::BadResponse
                | UpstreamError::EgressDenied,
            ) => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_error",
                "the model server failed to answer".into(),
            ),
            UpstreamAuthFailed => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_auth_failed",
                "the model server refused the gateway's credentials; this is not a problem with your API key".into(),
            ),
            UpstreamRejected {
                status, message, ..
            } => (
                *status,
                "invalid_request_error",
                "upstream_rejected",
                Cow::Borrowed(message.as_str()),
            ),
            InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_credentials",
                "invalid username, password or code".into(),
            ),
            MfaRequired => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "mfa_required",
                "a TOTP or recovery code is required".into(),
            ),
            Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "unauthenticated",
                "log in first".into(),
            ),
            Forbidden => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "forbidden",
                "your role does not allow this".into(),
            ),
            PasswordChangeRequired => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "password_change_required",
                "change your password first (POST /admin/auth/password)".into(),
            ),
            CsrfRejected => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "csrf_origin_mismatch",
                "a cookie-authenticated change must come from this site (Origin check failed)"
                    .into(),
            ),
            LocalLoginDisabled => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "local_login_disabled",
                "password and passkey sign-in are off on this server: sign in with single sign-on".into(),
            ),
            PasskeyRequired => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "passkey_required",
                "this account signs in with a passkey (POST /admin/auth/webauthn/start)".into(),
            ),
            MfaEnrollmentRequired => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "mfa_enrollment_required",
                "your role requires MFA: enrol a TOTP authenticator first (POST /admin/me/totp)"
                    .into(),
            ),
            Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable",
                "the service is temporarily unavailable".into(),
            ),
            Busy(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable",
                "the server is busy checking other logins; retry after the time in Retry-After"
                    .into(),
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "internal error".into(),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    pub fn code(&self) -> &'static str {
        self.parts().2
    }
}

/// Which limit refused a request. Each has its own error code, message and metric label, so
/// the codes clients match on are written once, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The key's (or, before a key is known, the address's) request rate.
    Requests,
    /// The key's tokens per minute.
    TokensPerMinute,
    /// The key's spend budget.
    Budget,
    /// The key's concurrent streams.
    Streams,
    /// Failed logins, TOTP or recovery codes.
    LoginAttempts,
}

impl Limit {
    pub fn code(self) -> &'static str {
        match self {
            Limit::Requests => "rate_limit_exceeded",
            Limit::TokensPerMinute => "tokens_per_minute_exceeded",
            Limit::Budget => "budget_exceeded",
            Limit::Streams => "concurrency_limit_exceeded",
            Limit::LoginAttempts => "too_many_attempts",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Limit::Requests => "too many requests; retry after the time in Retry-After",
            Limit::TokensPerMinute => {
                "the key, its team or its organization used its tokens for this minute; retry after the time in Retry-After"
            }
            Limit::Budget => "a budget this key falls under (its own, its owner's, its team's or its organization's) is spent; an administrator must raise it",
            Limit::Streams => "too many concurrent streams for this key",
            Limit::LoginAttempts => "too many failed attempts; wait for the time in Retry-After",
        }
    }

    /// The `limit` label of `gateway_rate_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::TokensPerMinute => "tokens",
            Limit::Budget => "budget",
            Limit::Streams => "streams",
            Limit::LoginAttempts => "login_attempts",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code, message) = self.parts();
        let body = cortex_wire::error_shape::openai_error(&message, kind, code);
        let message = ErrorMessage(message.into_owned());
        let mut response = (status, axum::Json(body)).into_response();
        response.extensions_mut().insert(message);
        response.extensions_mut().insert(ErrorCode(code));
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::RateLimited { headers, .. } = self {
            response.headers_mut().extend(*headers);
        } else if let ApiError::UpstreamRejected {
            retry_after_secs: Some(secs),
            ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        } else if let ApiError::Busy(retry_after) = self {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The `code` of an error answer, beside it in the response's extensions: what the request
/// counter labels a refusal with, read without parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// The message of an error answer, kept beside its OpenAI-shaped body so that the edge can
/// give it in another door's shape (Anthropic's on `/v1/messages`) without parsing the body.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl ApiError {
    /// A `map_err` for failures the client cannot fix: logs `context` and the cause at error
    /// level (causes here are crypto, hashing and encoding errors, whose messages hold no
    /// secret), and answers a plain 500.
    pub fn internal<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> ApiError {
        move |cause| {
            tracing::error!(error = %cause, "{context}");
            ApiError::Internal
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Conflict => {
                ApiError::Conflict("an object with that name already exists".into())
            }
            StoreError::Unavailable => ApiError::Unavailable,
            StoreError::Corrupt | StoreError::Other => ApiError::Internal,
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(err: BodyError) -> Self {
        match err {
            BodyError::Invalid(message) => ApiError::InvalidRequest(message),
            BodyError::InvalidJson => ApiError::InvalidJson,
            BodyError::Unsupported(field) => ApiError::UnsupportedParameter(field),
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(err: UpstreamError) -> Self {
        ApiError::Upstream(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shape_and_headers() {
        let response = ApiError::InvalidApiKey.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["error"]["code"], "invalid_api_key");
        assert_eq!(value["error"]["type"], "authentication_error");

        let limited =
            ApiError::rate_limited(Limit::Requests, Duration::from_millis(1200)).into_response();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "2");
    }

    /// Every refusal a `/v1` request can end with is one of the request counter's codes, with
    /// the status class it is registered under: a new code cannot become an unregistered series.
    #[test]
    fn every_v1_refusal_has_a_registered_code() {
        let classes = ["2xx", "4xx", "499", "5xx", "other"];
        let class = |status: u16| match status {
            200..=299 => "2xx",
            400..=498 => "4xx",
            499 => "499",
            500..=599 => "5xx",
            _ => "other",
        };
        let refusals = [
            ApiError::invalid("x"),
            ApiError::InvalidJson,
            ApiError::UnsupportedParameter("x".into()),
            ApiError::MissingCredentials,
            ApiError::InvalidApiKey,
            ApiError::KeyRevoked,
            ApiError::KeyExpired,
            ApiError::KeyOwnerDisabled,
            ApiError::ScopeDenied,
            ApiError::IpNotAllowed,
            ApiError::ModelNotAllowed,
            ApiError::ModelNotFound,
            ApiError::GuardrailBlocked("secrets"),
            ApiError::PayloadTooLarge,
            ApiError::RequestTimeout,
            ApiError::rate_limited(Limit::Requests, Duration::from_secs(1)),
            ApiError::rate_limited(Limit::TokensPerMinute, Duration::from_secs(1)),
            ApiError::rate_limited(Limit::Budget, Duration::from_secs(1)),
            ApiError::rate_limited(Limit::Streams, Duration::from_secs(1)),
            ApiError::Upstream(UpstreamError::Timeout),
            ApiError::Upstream(UpstreamError::Unreachable),
            ApiError::UpstreamAuthFailed,
            ApiError::UpstreamRejected {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: String::new(),
                retry_after_secs: None,
            },
            ApiError::Unavailable,
            ApiError::Internal,
        ];
        for refusal in refusals {
            let (code, status) = (refusal.code(), refusal.status().as_u16());
            assert!(
                crate::metrics::CODES
                    .iter()
                    .any(|(c, k)| *c == code && classes[*k] == class(status)),
                "{code} ({status}) is not a registered request code"
            );
            let response = refusal.into_response();
            assert_eq!(
                response.extensions().get::<ErrorCode>(),
                Some(&ErrorCode(code))
            );
        }
    }

    #[test]
    fn store_errors_never_leak() {
        assert_eq!(
            ApiError::from(StoreError::Other).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ApiError::from(StoreError::Unavailable).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(UpstreamError::Timeout).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ApiError::from(UpstreamError::ServerError(503)).code(),
            "upstream_error"
        );
    }
}
