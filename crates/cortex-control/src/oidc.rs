//! Single sign-on for the console: Cortex as an OpenID Connect relying party (SPEC §19), on the
//! `openidconnect` crate. A login is the authorization code flow with PKCE (S256), `state` and
//! `nonce`; the three are sealed with the master key into a one-use challenge row whose id is
//! the hash of a token only the browser holds (a short-lived cookie), so a callback is accepted
//! only in the browser that started it, once. The ID token's signature is checked against the
//! provider's JWKS (fetched again when a token names a key it does not hold: key rotation),
//! with asymmetric algorithms only; `iss`, `aud`, `exp`, `iat` and the nonce are checked against
//! our clock. The verified claims then decide the user's organization and role (`[oidc]` rules
//! in `cortex.toml`, or a role claim); the user is created at the first login (kind `sso`, no
//! password) and updated at each. What follows — the session — is `sessions::start`, the same as
//! for a password.
//!
//! Every refusal is audited (`auth.sso_failed`, with the reason's code) and answered with a
//! stable code that names the check that failed; the provider's own messages and the tokens
//! never reach the browser.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cortex_config::OidcSettings;
use cortex_crypto::envelope::{self, MasterKey};
use cortex_crypto::token::{ct_eq, random_token, sha256_hex};
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{Role, Tenant};
use cortex_store::challenges::{ChallengePurpose, NewChallenge};
use cortex_store::identities::NewSsoUser;
use cortex_store::users::UserRow;
use cortex_store::{new_id, Store, StoreError};
use openidconnect::core::{CoreClient, CoreJwsSigningAlgorithm, CoreResponseType};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, IssuerUrl, JsonWebKeySet, LogoutRequest, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{Mutex, RwLock};

use crate::users::check_username;

/// How long a started login may take to come back.
pub const LOGIN_TTL_MS: i64 = 10 * 60 * 1000;
/// Provider metadata is discovered again after this long.
const METADATA_TTL_MS: i64 = 60 * 60 * 1000;
/// The JWKS is fetched again for an unknown key at most this often, so a stream of tokens with
/// made-up key ids cannot turn into a stream of requests to the provider.
const JWKS_REFRESH_MIN_MS: i64 = 10 * 1000;
/// An ID token issued further in the future than this (clock skew) is refused…
const IAT_FUTURE_LEEWAY_SECS: i64 = 60;
/// …and so is one issued longer ago than this: the code was just exchanged, so its ID token
/// is fresh.
const IAT_MAX_AGE_SECS: i64 = 10 * 60;

/// The asymmetric algorithms an ID token may be signed with. No `none`, and no HMAC: an
/// `HS256` token is signed with the client secret, which we hold too, so it would prove nothing
/// about the provider.
const ALLOWED_ALGORITHMS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Why a single sign-on was refused. [`OidcError::code`] is what the browser is told.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the sign-in expired or was already used; start it again")]
    LoginExpired,
    #[error("the sign-in's state does not match the one this browser started")]
    StateMismatch,
    #[error("the identity provider refused the sign-in")]
    ProviderRefused,
    #[error("the identity provider could not be reached")]
    ProviderUnavailable,
    #[error("the identity provider's answer was not understood")]
    ProviderInvalid,
    #[error("the identity provider refused the authorization code (already used, expired, or not this sign-in's)")]
    CodeRejected,
    #[error("the answer comes from another issuer than the configured one")]
    IssuerMismatch,
    #[error("the ID token is missing, malformed or unsupported")]
    TokenInvalid,
    #[error("the ID token's signature does not verify against the provider's keys")]
    SignatureInvalid,
    #[error("the ID token was issued for another client")]
    AudienceMismatch,
    #[error("the ID token has expired")]
    TokenExpired,
    #[error("the ID token's issue time is in the future or too long ago")]
    IssuedAtInvalid,
    #[error("the ID token's nonce does not match this sign-in")]
    NonceMismatch,
    #[error("no rule gives this user a role")]
    NoRole,
    #[error("the role this user's claims name does not exist")]
    UnknownRole,
    #[error("the organization this user's claims name does not exist")]
    UnknownOrganization,
    #[error("the ID token has no usable username claim")]
    InvalidUsername,
    #[error("the username is taken by another account")]
    UsernameTaken,
    #[error(
        "the user's organization at the identity provider changed; an admin must move the account"
    )]
    OrganizationChanged,
    #[error("the account is disabled")]
    AccountDisabled,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing or opening the login's state failed; the cause was logged.
    #[error("single sign-on failed on the server")]
    Internal,
}

impl OidcError {
    /// The stable code the browser is shown (`/ui/login?sso_error=…`) and the audit event
    /// records.
    pub fn code(&self) -> &'static str {
        match self {
            OidcError::LoginExpired => "login_expired",
            OidcError::StateMismatch => "state_mismatch",
            OidcError::ProviderRefused => "provider_refused",
            OidcError::ProviderUnavailable => "provider_unavailable",
            OidcError::ProviderInvalid => "provider_invalid",
            OidcError::CodeRejected => "code_rejected",
            OidcError::IssuerMismatch => "issuer_mismatch",
            OidcError::TokenInvalid => "token_invalid",
            OidcError::SignatureInvalid => "signature_invalid",
            OidcError::AudienceMismatch => "audience_mismatch",
            OidcError::TokenExpired => "token_expired",
            OidcError::IssuedAtInvalid => "issued_at_invalid",
            OidcError::NonceMismatch => "nonce_mismatch",
            OidcError::NoRole => "no_role",
            OidcError::UnknownRole => "unknown_role",
            OidcError::UnknownOrganization => "unknown_organization",
            OidcError::InvalidUsername => "invalid_username",
            OidcError::UsernameTaken => "username_taken",
            OidcError::OrganizationChanged => "organization_changed",
            OidcError::AccountDisabled => "account_disabled",
            OidcError::Store(StoreError::Unavailable) => "unavailable",
            OidcError::Store(_) | OidcError::Internal => "internal_error",
        }
    }
}

fn internal<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> OidcError {
    move |cause| {
        tracing::error!(error = %cause, "{context}");
        OidcError::Internal
    }
}

/// What was discovered about the provider, and when.
struct Discovered {
    metadata: ProviderMetadataWithLogout,
    discovered_at: i64,
    jwks_fetched_at: i64,
}

/// The configured provider: its settings, an HTTP client that follows no redirects, and the
/// discovered metadata and keys, cached.
pub struct OidcProvider {
    settings: OidcSettings,
    http: openidconnect::reqwest::Client,
    discovered: RwLock<Option<Discovered>>,
    /// One discovery or JWKS fetch at a time.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    pub fn new(settings: OidcSettings) -> Result<Self, String> {
        let http = openidconnect::reqwest::Client::builder()
            // A provider's endpoints are used as discovered: following redirects would let any
            // of them send our requests (with the client secret) somewhere else.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("building the OpenID Connect HTTP client failed: {e}"))?;
        Ok(OidcProvider {
            settings,
            http,
            discovered: RwLock::new(None),
            fetching: Mutex::new(()),
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// The provider's metadata, discovered when first needed and again after an hour.
    async fn metadata(&self, now: i64) -> Result<ProviderMetadataWithLogout, OidcError> {
        if let Some(found) = self.discovered.read().await.as_ref() {
            if now - found.discovered_at < METADATA_TTL_MS {
                return Ok(found.metadata.clone());
            }
        }
        let _one = self.fetching.lock().await;
        if let Some(found) = self.discovered.read().await.as_ref() {
            if now - found.discovered_at < METADATA_TTL_MS {
                return Ok(found.metadata.clone());
            }
        }
        let issuer = IssuerUrl::new(self.settings.issuer.clone()).map_err(|e| {
            tracing::error!(error = %e, "CORTEX_OIDC_ISSUER is not a URL");
            OidcError::ProviderInvalid
        })?;
        // Discovery checks that the document's issuer is exactly the configured one.
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &self.http)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "OpenID Connect discovery failed");
                OidcError::ProviderUnavailable
            })?;
        *self.discovered.write().await = Some(Discovered {
            metadata: metadata.clone(),
            discovered_at: now,
            jwks_fetched_at: now,
        });
        Ok(metadata)
    }

    /// The metadata with the JWKS fetched again — for a token signed with a key we do not hold
    /// (the provider rotated its keys) — unless it was fetched moments ago.
    async fn refetch_jwks(
        &self,
        now: i64,
    ) -> Result<Option<ProviderMetadataWithLogout>, OidcError> {
        let _one = self.fetching.lock().await;
        let mut guard = self.discovered.write().await;
        let Some(found) = guard.as_mut() else {
            return Ok(None);
        };
        if now - found.jwks_fetched_at < JWKS_REFRESH_MIN_MS {
            return Ok(None);
        }
        let jwks = JsonWebKeySet::fetch_async(found.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "fetching the provider's JWKS failed");
                OidcError::ProviderUnavailable
            })?;
        found.metadata = found.metadata.clone().set_jwks(jwks);
        found.jwks_fetched_at = now;
        Ok(Some(found.metadata.clone()))
    }

    fn redirect_url(&self) -> Result<RedirectUrl, OidcError> {
        RedirectUrl::new(self.settings.redirect_url.clone())
            .map_err(internal("CORTEX_OIDC_REDIRECT_URL is not a URL"))
    }

    fn client_secret(&self) -> Option<ClientSecret> {
        self.settings
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose_secret().to_owned()))
    }

    /// Where to send the browser to sign out at the provider too (RP-initiated logout), when it
    /// has an end-session endpoint.
    pub async fn end_session_url(&self, now: i64) -> Option<String> {
        let metadata = self.metadata(now).await.ok()?;
        let endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()?;
        let mut request = LogoutRequest::from(endpoint)
            .set_client_id(ClientId::new(self.settings.client_id.clone()));
        if let Some(url) = &self.settings.post_logout_redirect_url {
            request =
                request.set_post_logout_redirect_uri(PostLogoutRedirectUrl::new(url.clone()).ok()?);
        }
        Some(request.http_get_url().to_string())
    }
}

/// What the sealed challenge holds between the redirect and the callback.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    state: String,
    nonce: String,
    pkce_verifier: String,
}

/// A login just started: where to send the browser, and the token it keeps (in a cookie) to
/// prove the callback is its own.
pub struct LoginStart {
    pub authorize_url: String,
    pub browser_token: SecretString,
}

/// Starts a login: discovery (cached), PKCE, `state` and `nonce`, sealed into a challenge that
/// lives [`LOGIN_TTL_MS`].
pub async fn begin(
    provider: &OidcProvider,
    store: &Store,
    master_key: &MasterKey,
    now: i64,
) -> Result<LoginStart, OidcError> {
    let metadata = provider.metadata(now).await?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(provider.settings.client_id.clone()),
        provider.client_secret(),
    )
    .set_redirect_uri(provider.redirect_url()?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for scope in provider.settings.scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, state, nonce) = request.url();
    let pending = PendingLogin {
        state: state.secret().clone(),
        nonce: nonce.secret().clone(),
        pkce_verifier: verifier.secret().clone(),
    };
    let browser_token = random_token(32);
    let id = sha256_hex(browser_token.expose_secret().as_bytes());
    let plain = zeroize::Zeroizing::new(
        serde_json::to_vec(&pending).map_err(internal("encoding a pending login failed"))?,
    );
    let sealed = envelope::seal(master_key, &plain, id.as_bytes())
        .map_err(internal("sealing a pending login failed"))?;
    store
        .create_challenge(
            &NewChallenge {
                id: &id,
                purpose: ChallengePurpose::Oidc,
                user_id: None,
                sealed: &sealed,
                expires_at: now + LOGIN_TTL_MS,
            },
            now,
        )
        .await?;
    Ok(LoginStart {
        authorize_url: url.to_string(),
        browser_token,
    })
}

/// The query of the provider's redirect back to us.
#[derive(Debug, Clone, Copy, Default)]
pub struct Callback<'a> {
    pub code: Option<&'a str>,
    pub state: Option<&'a str>,
    /// RFC 9207: the issuer that answered, when the provider says.
    pub iss: Option<&'a str>,
    /// The provider's refusal (`access_denied`, …).
    pub error: Option<&'a str>,
}

/// Completes a login: the browser's challenge (taken, so once only), the state, the code for
/// tokens (with the PKCE verifier), the ID token verified, the claims mapped, the user created
/// or updated. A refusal is audited as `auth.sso_failed` with its code.
pub async fn complete(
    provider: &OidcProvider,
    store: &Store,
    master_key: &MasterKey,
    browser_token: Option<&str>,
    callback: Callback<'_>,
    ip: &str,
    now: i64,
) -> Result<UserRow, OidcError> {
    let result = complete_login(
        provider,
        store,
        master_key,
        browser_token,
        callback,
        ip,
        now,
    )
    .await;
    if let Err(error) = &result {
        tracing::info!(reason = error.code(), "single sign-on refused: {error}");
        let event = NewAuditEvent::new("anonymous", "auth.sso_failed", "")
            .with_details(&json!({ "reason": error.code() }))
            .with_ip(ip);
        if let Err(e) = store.append_audit(&event, now).await {
            tracing::error!(error = %e, "recording a refused single sign-on failed");
        }
    }
    result
}

async fn complete_login(
    provider: &OidcProvider,
    store: &Store,
    master_key: &MasterKey,
    browser_token: Option<&str>,
    callback: Callback<'_>,
    ip: &str,
    now: i64,
) -> Result<UserRow, OidcError> {
    let pending = take_pending(store, master_key, browser_token, now).await?;
    let state = callback.state.ok_or(OidcError::StateMismatch)?;
    if !ct_eq(state.as_bytes(), pending.state.as_bytes()) {
        return Err(OidcError::StateMismatch);
    }
    if let Some(error) = callback.error {
        tracing::info!(
            error = %error.chars().take(64).collect::<String>(),
            "the identity provider refused the sign-in"
        );
        return Err(OidcError::ProviderRefused);
    }
    // Mix-up defence (RFC 9207): an `iss` in the answer must be our provider's.
    if callback
        .iss
        .is_some_and(|iss| iss != provider.settings.issuer)
    {
        return Err(OidcError::IssuerMismatch);
    }
    let code = callback.code.ok_or(OidcError::ProviderInvalid)?;
    let claims = exchange_and_verify(provider, code, &pending, now).await?;
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or(OidcError::TokenInvalid)?
        .to_owned();
    let mapping = map_claims(&provider.settings, &claims)?;
    let org_id = org_id_of(store, &mapping.org).await?;
    provision(
        store,
        provider,
        &claims,
        &subject,
        &org_id,
        mapping.role,
        ip,
        now,
    )
    .await
}

/// Takes and opens the browser's pending login.
async fn take_pending(
    store: &Store,
    master_key: &MasterKey,
    browser_token: Option<&str>,
    now: i64,
) -> Result<PendingLogin, OidcError> {
    let token = browser_token
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or(OidcError::LoginExpired)?;
    let id = sha256_hex(token.as_bytes());
    let taken = store
        .take_challenge(&id, ChallengePurpose::Oidc, now)
        .await?
        .ok_or(OidcError::LoginExpired)?;
    let plain = envelope::open(master_key, &taken.sealed, id.as_bytes())
        .map_err(internal("opening a pending login failed"))?;
    serde_json::from_slice(&plain).map_err(internal("decoding a pending login failed"))
}

/// The code for tokens, then the ID token's signature and claims; answers the verified
/// claims as JSON. A key the JWKS lacks makes us fetch the JWKS once more and try again.
async fn exchange_and_verify(
    provider: &OidcProvider,
    code: &str,
    pending: &PendingLogin,
    now: i64,
) -> Result<Map<String, Value>, OidcError> {
    let metadata = provider.metadata(now).await?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(provider.settings.client_id.clone()),
        provider.client_secret(),
    )
    .set_redirect_uri(provider.redirect_url()?);
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|_| OidcError::ProviderInvalid)?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
        .request_async(&provider.http)
        .await
        .map_err(|error| match error {
            RequestTokenError::ServerResponse(answer) => {
                tracing::info!(error = %answer.error(), "the token endpoint refused the code");
                OidcError::CodeRejected
            }
            RequestTokenError::Request(e) => {
                tracing::warn!(error = %e, "the token endpoint could not be reached");
                OidcError::ProviderUnavailable
            }
            RequestTokenError::Parse(e, _) => {
                tracing::info!(error = %e, "the token endpoint's answer did not parse");
                OidcError::TokenInvalid
            }
            RequestTokenError::Other(e) => {
                tracing::info!(error = %e, "the token endpoint's answer was unexpected");
                OidcError::ProviderInvalid
            }
        })?;
    let id_token = response.id_token().ok_or(OidcError::TokenInvalid)?;
    let nonce = Nonce::new(pending.nonce.clone());
    let first = verify(client.id_token_verifier(), id_token, &nonce, now);
    match first {
        Ok(()) => {}
        Err(ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        )) => {
            let Some(metadata) = provider.refetch_jwks(now).await? else {
                return Err(OidcError::SignatureInvalid);
            };
            let client = CoreClient::from_provider_metadata(
                metadata,
                ClientId::new(provider.settings.client_id.clone()),
                provider.client_secret(),
            );
            verify(client.id_token_verifier(), id_token, &nonce, now).map_err(classify)?;
        }
        Err(other) => return Err(classify(other)),
    }
    payload(&id_token.to_string())
}

fn verify(
    verifier: openidconnect::core::CoreIdTokenVerifier<'_>,
    id_token: &openidconnect::core::CoreIdToken,
    nonce: &Nonce,
    now: i64,
) -> Result<(), ClaimsVerificationError> {
    let now_secs = now.div_euclid(1000);
    let verifier = verifier
        .set_allowed_algs(ALLOWED_ALGORITHMS)
        .set_time_fn(move || chrono::DateTime::from_timestamp(now_secs, 0).unwrap_or_default())
        .set_issue_time_verifier_fn(move |iat| {
            let iat = iat.timestamp();
            if iat > now_secs + IAT_FUTURE_LEEWAY_SECS {
                Err("iat: issued in the future".to_owned())
            } else if iat < now_secs - IAT_MAX_AGE_SECS {
                Err("iat: issued too long ago".to_owned())
            } else {
                Ok(())
            }
        });
    id_token.claims(&verifier, nonce).map(|_| ())
}

fn classify(error: ClaimsVerificationError) -> OidcError {
    tracing::info!(error = %error, "an ID token was refused");
    match error {
        ClaimsVerificationError::Expired(reason) if reason.starts_with("iat:") => {
            OidcError::IssuedAtInvalid
        }
        ClaimsVerificationError::Expired(_) => OidcError::TokenExpired,
        ClaimsVerificationError::InvalidAudience(_) => OidcError::AudienceMismatch,
        ClaimsVerificationError::InvalidIssuer(_) => OidcError::IssuerMismatch,
        ClaimsVerificationError::InvalidNonce(_) => OidcError::NonceMismatch,
        ClaimsVerificationError::SignatureVerification(_) => OidcError::SignatureInvalid,
        ClaimsVerificationError::InvalidAuthContext(_)
        | ClaimsVerificationError::InvalidAuthTime(_)
        | ClaimsVerificationError::InvalidSubject(_)
        | ClaimsVerificationError::Other(_)
        | ClaimsVerificationError::Unsupported(_) => OidcError::TokenInvalid,
        _ => OidcError::TokenInvalid,
    }
}

/// The claims of an ID token whose signature was verified, as JSON.
fn payload(compact: &str) -> Result<Map<String, Value>, OidcError> {
    let part = compact.split('.').nth(1).ok_or(OidcError::TokenInvalid)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| OidcError::TokenInvalid)?;
    serde_json::from_slice(&bytes).map_err(|_| OidcError::TokenInvalid)
}

/// The organization (by name) and role a user's claims give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub org: String,
    pub role: Role,
}

/// A claim by name, or by a dotted path into nested objects (`realm_access.roles`) when no
/// claim has the whole name.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A claim's values as text: a string, a number or a boolean, or the elements of a list.
fn values(value: &Value) -> Vec<Cow<'_, str>> {
    match value {
        Value::String(s) => vec![Cow::Borrowed(s.as_str())],
        Value::Bool(b) => vec![Cow::Owned(b.to_string())],
        Value::Number(n) => vec![Cow::Owned(n.to_string())],
        Value::Array(items) => items.iter().flat_map(values).collect(),
        Value::Null | Value::Object(_) => Vec::new(),
    }
}

/// The first rule that matches decides; else the role claim (and the organization claim, or
/// `default`). A role or organization a claim names must exist.
pub fn map_claims(
    settings: &OidcSettings,
    claims: &Map<String, Value>,
) -> Result<Mapping, OidcError> {
    for rule in &settings.rules {
        let matched = match (&rule.claim, &rule.value) {
            (None, _) => true,
            (Some(name), None) => claim(claims, name).is_some_and(|v| {
                !matches!(v, Value::Null | Value::Bool(false)) && !values(v).is_empty()
            }),
            (Some(name), Some(wanted)) => {
                claim(claims, name).is_some_and(|v| values(v).iter().any(|have| have == wanted))
            }
        };
        if matched {
            return Ok(Mapping {
                org: rule.org.clone(),
                role: rule.role,
            });
        }
    }
    let Some(role_claim) = &settings.role_claim else {
        return Err(OidcError::NoRole);
    };
    let named = claim(claims, role_claim).map(values).unwrap_or_default();
    let role = match named.as_slice() {
        [] => return Err(OidcError::NoRole),
        [one] => Role::parse(one).ok_or(OidcError::UnknownRole)?,
        _ => {
            // Several roles: refused rather than guessed.
            return Err(OidcError::UnknownRole);
        }
    };
    let org = match &settings.org_claim {
        None => cortex_domain::DEFAULT_ORG.to_owned(),
        Some(name) => match claim(claims, name)
            .map(values)
            .unwrap_or_default()
            .as_slice()
        {
            [one] => one.to_string(),
            _ => return Err(OidcError::UnknownOrganization),
        },
    };
    Ok(Mapping { org, role })
}

async fn org_id_of(store: &Store, name: &str) -> Result<String, OidcError> {
    store
        .list_orgs(&Tenant::All)
        .await?
        .into_iter()
        .find(|org| org.name == name)
        .map(|org| org.id)
        .ok_or(OidcError::UnknownOrganization)
}

/// Creates the user at the first login, or updates the role at later ones; refuses a disabled
/// account and one whose organization changed.
#[allow(clippy::too_many_arguments)]
async fn provision(
    store: &Store,
    provider: &OidcProvider,
    claims: &Map<String, Value>,
    subject: &str,
    org_id: &str,
    role: Role,
    ip: &str,
    now: i64,
) -> Result<UserRow, OidcError> {
    let issuer = provider.settings.issuer.as_str();
    if let Some(user) = store.find_user_by_identity(issuer, subject).await? {
        if user.disabled {
            return Err(OidcError::AccountDisabled);
        }
        if user.org_id != org_id {
            return Err(OidcError::OrganizationChanged);
        }
        let event = NewAuditEvent::new("sso", "user.update", &user.id)
            .with_details(&json!({ "role": role.as_str(), "via": "sso" }))
            .with_ip(ip)
            .with_org(&user.org_id);
        let change = (user.role != role).then_some((role, &event));
        return Ok(store
            .record_sso_login(&user.id, issuer, subject, change, now)
            .await?);
    }
    let username = claim(claims, &provider.settings.username_claim)
        .and_then(Value::as_str)
        .ok_or(OidcError::InvalidUsername)?;
    let username = check_username(username).map_err(|_| OidcError::InvalidUsername)?;
    let id = new_id();
    let event = NewAuditEvent::new("sso", "user.create", &id)
        .with_details(&json!({
            "username": username,
            "role": role.as_str(),
            "org_id": org_id,
            "via": "sso",
            "issuer": issuer,
        }))
        .with_ip(ip)
        .with_org(org_id);
    store
        .create_sso_user(
            &NewSsoUser {
                id: &id,
                username,
                role,
                org_id,
                issuer,
                subject,
            },
            &event,
            now,
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict => OidcError::UsernameTaken,
            StoreError::NotFound => OidcError::UnknownOrganization,
            other => OidcError::Store(other),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cortex_config::OidcRule;

    fn settings(
        rules: Vec<OidcRule>,
        role_claim: Option<&str>,
        org_claim: Option<&str>,
    ) -> OidcSettings {
        OidcSettings {
            issuer: "https://idp.example".into(),
            client_id: "cortex".into(),
            client_secret: None,
            redirect_url: "https://cortex.example/admin/auth/oidc/callback".into(),
            display_name: "Example".into(),
            scopes: vec!["openid".into()],
            username_claim: "preferred_username".into(),
            role_claim: role_claim.map(str::to_owned),
            org_claim: org_claim.map(str::to_owned),
            rules,
            post_logout_redirect_url: None,
        }
    }

    fn rule(claim: Option<&str>, value: Option<&str>, org: &str, role: Role) -> OidcRule {
        OidcRule {
            claim: claim.map(str::to_owned),
            value: value.map(str::to_owned),
            org: org.into(),
            role,
        }
    }

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("claims must be an object: {other}"),
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let s = settings(
            vec![
                rule(
                    Some("groups"),
                    Some("cortex-admins"),
                    "default",
                    Role::Admin,
                ),
                rule(
                    Some("realm_access.roles"),
                    Some("dev"),
                    "acme",
                    Role::Developer,
                ),
                rule(Some("email_verified"), None, "acme", Role::Viewer),
            ],
            None,
            None,
        );
        let admin = claims(json!({ "groups": ["staff", "cortex-admins"] }));
        assert_eq!(
            map_claims(&s, &admin).unwrap(),
            Mapping {
                org: "default".into(),
                role: Role::Admin
            }
        );
        let nested =
            claims(json!({ "realm_access": { "roles": ["dev"] }, "email_verified": true }));
        assert_eq!(map_claims(&s, &nested).unwrap().role, Role::Developer);
        let verified = claims(json!({ "email_verified": true }));
        assert_eq!(map_claims(&s, &verified).unwrap().role, Role::Viewer);
        let unverified = claims(json!({ "email_verified": false, "groups": "staff" }));
        assert!(matches!(
            map_claims(&s, &unverified),
            Err(OidcError::NoRole)
        ));
    }

    #[test]
    fn a_role_claim_must_name_one_existing_role_and_organization() {
        let s = settings(vec![], Some("cortex_role"), Some("cortex_org"));
        let ok = claims(json!({ "cortex_role": "operator", "cortex_org": "acme" }));
        assert_eq!(
            map_claims(&s, &ok).unwrap(),
            Mapping {
                org: "acme".into(),
                role: Role::Operator
            }
        );
        for bad in [
            json!({ "cortex_role": "superuser", "cortex_org": "acme" }),
            json!({ "cortex_role": "Admin", "cortex_org": "acme" }),
            json!({ "cortex_role": ["admin", "viewer"], "cortex_org": "acme" }),
        ] {
            assert!(matches!(
                map_claims(&s, &claims(bad)),
                Err(OidcError::UnknownRole)
            ));
        }
        assert!(matches!(
            map_claims(&s, &claims(json!({ "cortex_org": "acme" }))),
            Err(OidcError::NoRole)
        ));
        assert!(matches!(
            map_claims(&s, &claims(json!({ "cortex_role": "viewer" }))),
            Err(OidcError::UnknownOrganization)
        ));
        let without_org = settings(vec![], Some("cortex_role"), None);
        assert_eq!(
            map_claims(&without_org, &claims(json!({ "cortex_role": ["billing"] }))).unwrap(),
            Mapping {
                org: "default".into(),
                role: Role::Billing
            }
        );
    }

    #[test]
    fn every_refusal_has_its_own_stable_code() {
        let all = [
            OidcError::LoginExpired,
            OidcError::StateMismatch,
            OidcError::ProviderRefused,
            OidcError::ProviderUnavailable,
            OidcError::ProviderInvalid,
            OidcError::CodeRejected,
            OidcError::IssuerMismatch,
            OidcError::TokenInvalid,
            OidcError::SignatureInvalid,
            OidcError::AudienceMismatch,
            OidcError::TokenExpired,
            OidcError::IssuedAtInvalid,
            OidcError::NonceMismatch,
            OidcError::NoRole,
            OidcError::UnknownRole,
            OidcError::UnknownOrganization,
            OidcError::InvalidUsername,
            OidcError::UsernameTaken,
            OidcError::OrganizationChanged,
            OidcError::AccountDisabled,
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(OidcError::code).collect();
        assert_eq!(codes.len(), all.len());
        assert!(codes
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn the_payload_of_a_compact_token_is_read() {
        let body = URL_SAFE_NO_PAD.encode(br#"{"sub":"u1","groups":["a"]}"#);
        let token = format!("e30.{body}.c2ln");
        assert_eq!(payload(&token).unwrap()["sub"], "u1");
        assert!(matches!(payload("nodots"), Err(OidcError::TokenInvalid)));
    }
}
