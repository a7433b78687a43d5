//! `POST /oauth/token`: OAuth 2.0's token endpoint for service accounts, client credentials grant
//! only (RFC 6749 §4.4, SPEC §19). The answer is a short-lived bearer token for the admin API —
//! the same JWT a login gives, naming a session of the account — carrying the account's role.
//!
//! OAuth clients parse this endpoint's answers, so they follow RFC 6749 §5, not the admin API's
//! error shape: `{"error": "invalid_client", "error_description": …}` (401 with
//! `WWW-Authenticate`), `invalid_request` and `unsupported_grant_type` (400); a form body
//! (`application/x-www-form-urlencoded`) with no parameter twice; the client authenticates with
//! HTTP Basic (`client_secret_basic`) or in the body (`client_secret_post`), never both. Every
//! request is charged to the client address's bucket before the secret is checked, and refunded
//! when a token is issued. `scope` is accepted and ignored: a token carries the account's role.

use std::borrow::Cow;
use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cortex_control::service_accounts::{self, TokenError, TokenRequest};
use secrecy::SecretString;
use serde_json::json;

use super::attempts;
use crate::state::AppState;
use cortex_gateway::error::ApiError;
use cortex_gateway::request_meta::ClientIp;

/// The form the endpoint takes, as the OpenAPI document shows it (the handler reads the pairs
/// itself, to refuse repeated parameters and to accept HTTP Basic instead of the two client
/// fields).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documentation only: never built.
pub struct TokenForm {
    /// `client_credentials`
    #[schema(example = "client_credentials")]
    grant_type: String,
    /// With `client_secret`, when the client does not authenticate with HTTP Basic.
    client_id: Option<String>,
    client_secret: Option<String>,
    /// Accepted and ignored: a token carries the account's role.
    scope: Option<String>,
}

/// RFC 6749 §5.2's error codes this endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OAuthError {
    InvalidRequest(&'static str),
    InvalidClient,
    UnsupportedGrantType,
    /// Not an OAuth code: a failure on our side (RFC 6749 has none for it), answered 500/503.
    Server(StatusCode),
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, code, description) = match self {
            OAuthError::InvalidRequest(description) => {
                (StatusCode::BAD_REQUEST, "invalid_request", description)
            }
            OAuthError::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            ),
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            ),
            OAuthError::Server(status) => (status, "server_error", "the token could not be issued"),
        };
        let mut response = (
            status,
            Json(json!({ "error": code, "error_description": description })),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"cortex\""),
            );
        }
        response
    }
}

/// The client's id and secret, from HTTP Basic or the body.
struct ClientAuth {
    client_id: String,
    client_secret: SecretString,
}

/// The form's parameters, each at most once (RFC 6749 §3.2).
fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(OAuthError::InvalidRequest(
            "send the parameters as Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let mut parameters = HashMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        if parameters
            .insert(name.into_owned(), value.into_owned())
            .is_some()
        {
            return Err(OAuthError::InvalidRequest("a parameter was given twice"));
        }
    }
    Ok(parameters)
}

/// One `application/x-www-form-urlencoded` value, as Basic credentials carry them
/// (RFC 6749 §2.3.1).
fn form_decode(raw: &str) -> Option<String> {
    let spaced: Cow<'_, str> = if raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// The client's credentials: HTTP Basic, or `client_id` and `client_secret` in the body; using
/// both, or another `Authorization` scheme, is refused.
fn client_auth(
    headers: &HeaderMap,
    parameters: &mut HashMap<String, String>,
) -> Result<ClientAuth, OAuthError> {
    let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
    let basic = match (authorizations.next(), authorizations.next()) {
        (None, _) => None,
        (Some(value), None) => {
            let value = value.to_str().map_err(|_| OAuthError::InvalidClient)?;
            let (scheme, encoded) = value.split_once(' ').ok_or(OAuthError::InvalidClient)?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(OAuthError::InvalidClient);
            }
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(OAuthError::InvalidClient)?;
            let (id, secret) = decoded.split_once(':').ok_or(OAuthError::InvalidClient)?;
            Some(ClientAuth {
                client_id: form_decode(id).ok_or(OAuthError::InvalidClient)?,
                client_secret: SecretString::from(
                    form_decode(secret).ok_or(OAuthError::InvalidClient)?,
                ),
            })
        }
        (Some(_), Some(_)) => {
            return Err(OAuthError::InvalidRequest("send one Authorization header"))
        }
    };
    let in_body = parameters.remove("client_secret").map(SecretString::from);
    let body_id = parameters.remove("client_id");
    match (basic, in_body) {
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "authenticate with HTTP Basic or in the body, not both",
        )),
        (Some(basic), None) => {
            // RFC 6749 §4.4 allows client_id beside Basic only when it names the same client.
            if body_id.is_some_and(|id| id != basic.client_id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id differs from the authenticated client",
                ));
            }
            Ok(basic)
        }
        (None, Some(client_secret)) => Ok(ClientAuth {
            client_id: body_id.ok_or(OAuthError::InvalidClient)?,
            client_secret,
        }),
        (None, None) => Err(OAuthError::InvalidClient),
    }
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect()
}

pub async fn token(
    State(app): State<AppState>,
    Extension(client): Extension<ClientIp>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::PayloadTooLarge.into_response()
        }
        Err(_) => return OAuthError::InvalidRequest("the body could not be read").into_response(),
    };
    let mut parameters = match form(&headers, &body) {
        Ok(parameters) => parameters,
        Err(error) => return error.into_response(),
    };
    match parameters.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => return OAuthError::UnsupportedGrantType.into_response(),
        None => return OAuthError::InvalidRequest("grant_type is required").into_response(),
    }
    let credentials = match client_auth(&headers, &mut parameters) {
        Ok(credentials) => credentials,
        Err(error) => return error.into_response(),
    };
    // Charged before the secret is checked, so parallel guesses cannot outrun the limit.
    let attempt = match attempts::charge_token(&app, &client.bucket().to_string()).await {
        Ok(attempt) => attempt,
        Err(refusal) => return refusal.into_response(),
    };
    let ip = client.0.to_string();
    let agent = user_agent(&headers);
    let request = TokenRequest {
        client_id: &credentials.client_id,
        client_secret: &credentials.client_secret,
        ip: &ip,
        user_agent: &agent,
    };
    let issued = service_accounts::issue_token(
        &app.store,
        &app.jwt,
        app.config.access_token_ttl_sec,
        request,
        app.now_millis(),
    )
    .await;
    let issued = match issued {
        Ok(issued) => issued,
        Err(TokenError::InvalidClient) => {
            attempt.keep();
            return OAuthError::InvalidClient.into_response();
        }
        Err(TokenError::Store(error)) => {
            attempt.refund(&app).await;
            let status = ApiError::from(error).into_response().status();
            return OAuthError::Server(status).into_response();
        }
        Err(TokenError::Internal) => {
            attempt.refund(&app).await;
            return OAuthError::Server(StatusCode::INTERNAL_SERVER_ERROR).into_response();
        }
    };
    attempt.refund(&app).await;
    let mut response = Json(json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    }))
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    #[test]
    fn the_form_is_required_and_no_parameter_may_repeat() {
        let json = headers(&[(header::CONTENT_TYPE, "application/json")]);
        assert!(matches!(
            form(&json, b"grant_type=client_credentials"),
            Err(OAuthError::InvalidRequest(_))
        ));
        let form_type = headers(&[(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8",
        )]);
        let parsed = form(&form_type, b"grant_type=client_credentials&scope=a+b").unwrap();
        assert_eq!(parsed["scope"], "a b");
        assert!(matches!(
            form(
                &form_type,
                b"grant_type=client_credentials&grant_type=password"
            ),
            Err(OAuthError::InvalidRequest(_))
        ));
    }

    #[test]
    fn credentials_come_from_basic_or_the_body_never_both() {
        let basic = format!("Basic {}", STANDARD.encode("sa_abc:ctxsa_s%2Bt"));
        let mut none = HashMap::new();
        let auth = client_auth(
            &headers(&[
                (header::CONTENT_TYPE, FORM),
                (header::AUTHORIZATION, &basic),
            ]),
            &mut none,
        )
        .unwrap();
        assert_eq!(auth.client_id, "sa_abc");
        assert_eq!(auth.client_secret.expose_secret(), "ctxsa_s+t");

        let mut posted = HashMap::from([
            ("client_id".to_owned(), "sa_abc".to_owned()),
            ("client_secret".to_owned(), "ctxsa_x".to_owned()),
        ]);
        let auth = client_auth(&HeaderMap::new(), &mut posted).unwrap();
        assert_eq!(auth.client_secret.expose_secret(), "ctxsa_x");

        let mut both = HashMap::from([("client_secret".to_owned(), "ctxsa_x".to_owned())]);
        assert!(matches!(
            client_auth(&headers(&[(header::AUTHORIZATION, &basic)]), &mut both),
            Err(OAuthError::InvalidRequest(_))
        ));
        let mut other_id = HashMap::from([("client_id".to_owned(), "sa_other".to_owned())]);
        assert!(matches!(
            client_auth(&headers(&[(header::AUTHORIZATION, &basic)]), &mut other_id),
            Err(OAuthError::InvalidRequest(_))
        ));
        for bad in ["Bearer sa_abc", "Basic !!!", "Basic c2FfYWJj"] {
            assert!(matches!(
                client_auth(
                    &headers(&[(header::AUTHORIZATION, bad)]),
                    &mut HashMap::new()
                ),
                Err(OAuthError::InvalidClient)
            ));
        }
        assert!(matches!(
            client_auth(&HeaderMap::new(), &mut HashMap::new()),
            Err(OAuthError::InvalidClient)
        ));
    }

    #[test]
    fn errors_have_rfc_6749_s_shape() {
        let response = OAuthError::InvalidClient.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            OAuthError::UnsupportedGrantType.into_response().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
