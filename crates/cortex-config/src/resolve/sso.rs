//! Signing in beyond passwords (SPEC §19): single sign-on at an OpenID Provider (`[oidc]`,
//! `CORTEX_OIDC_*`), passkeys (`[webauthn]`, `CORTEX_WEBAUTHN_*`) and whether local sign-in
//! stays on (`CORTEX_LOCAL_LOGIN`).

use cortex_domain::tenancy::check_tenant_name;
use cortex_domain::Role;
use secrecy::SecretString;

use crate::error::ConfigError;
use crate::file::{FileConfig, OidcFile, OidcRuleFile, WebauthnFile};
use crate::parse::{env_bool, resolve_secret, split_list, var, Env};
use crate::settings::{OidcRule, OidcSettings, WebauthnSettings};

/// The path of the callback every redirect URL must end in: the route that completes a login.
pub const OIDC_CALLBACK_PATH: &str = "/admin/auth/oidc/callback";

pub(super) struct SignIn {
    pub oidc: Option<OidcSettings>,
    pub webauthn: Option<WebauthnSettings>,
    pub local_login: bool,
}

pub(super) fn sign_in(env: Env<'_>, file: &FileConfig) -> Result<SignIn, ConfigError> {
    let default_file = OidcFile::default();
    let oidc_file = file.oidc.as_ref().unwrap_or(&default_file);
    let oidc = oidc(env, oidc_file)?;
    let local_login = env_bool(env, "CORTEX_LOCAL_LOGIN", file.local_login, true)?;
    if !local_login && oidc.is_none() {
        return Err(ConfigError::new(
            "CORTEX_LOCAL_LOGIN",
            "false needs single sign-on (CORTEX_OIDC_ISSUER): otherwise only break-glass admins could sign in",
        ));
    }
    let default_webauthn = WebauthnFile::default();
    let webauthn = webauthn(env, file.webauthn.as_ref().unwrap_or(&default_webauthn))?;
    Ok(SignIn {
        oidc,
        webauthn,
        local_login,
    })
}

fn webauthn(env: Env<'_>, file: &WebauthnFile) -> Result<Option<WebauthnSettings>, ConfigError> {
    const ORIGIN: &str = "CORTEX_WEBAUTHN_ORIGIN";
    let Some(origin) = setting(env, ORIGIN, file.origin.as_ref()) else {
        if file.rp_id.is_some() || var(env, "CORTEX_WEBAUTHN_RP_ID").is_some() {
            return Err(ConfigError::new(
                ORIGIN,
                "is required when CORTEX_WEBAUTHN_RP_ID is set",
            ));
        }
        return Ok(None);
    };
    // Browsers offer WebAuthn to secure origins only: https, or http on localhost. An address is
    // no relying party id, so the origin names a host.
    let origin = origin.trim_end_matches('/').to_owned();
    let (scheme, authority) = origin.split_once("://").ok_or_else(|| {
        ConfigError::new(ORIGIN, "must be an origin like https://cortex.example.com")
    })?;
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(ConfigError::new(
            ORIGIN,
            "must be an origin (scheme://host[:port]) without path, credentials or query",
        ));
    }
    let (host, port) = crate::parse::split_host_port(authority);
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(ConfigError::new(ORIGIN, "has a port that is not a number"));
    }
    let host = host.to_ascii_lowercase();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err(ConfigError::new(
            ORIGIN,
            "must name a host, not an address: passkeys are bound to a domain (use localhost on this machine)",
        ));
    }
    match scheme {
        "https" => {}
        "http" if host == "localhost" => {}
        _ => {
            return Err(ConfigError::new(
                ORIGIN,
                "must be https:// (or http://localhost): browsers offer passkeys to secure origins only",
            ))
        }
    }
    let rp_id = setting(env, "CORTEX_WEBAUTHN_RP_ID", file.rp_id.as_ref())
        .map(|id| id.to_ascii_lowercase())
        .unwrap_or_else(|| host.clone());
    if !(host == rp_id || host.ends_with(&format!(".{rp_id}"))) || rp_id.is_empty() {
        return Err(ConfigError::new(
            "CORTEX_WEBAUTHN_RP_ID",
            "must be the origin's host or a parent domain of it",
        ));
    }
    let rp_name = setting(env, "CORTEX_WEBAUTHN_RP_NAME", file.rp_name.as_ref())
        .unwrap_or_else(|| "Cortex".to_owned());
    if rp_name.is_empty() || rp_name.chars().count() > 64 || rp_name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "CORTEX_WEBAUTHN_RP_NAME",
            "must be 1 to 64 printable characters",
        ));
    }
    Ok(Some(WebauthnSettings {
        origin,
        rp_id,
        rp_name,
    }))
}

/// A setting's value from the environment, else the file.
fn setting(env: Env<'_>, name: &str, file: Option<&String>) -> Option<String> {
    var(env, name)
        .or_else(|| file.cloned())
        .map(|v| v.trim().to_owned())
}

fn oidc(env: Env<'_>, file: &OidcFile) -> Result<Option<OidcSettings>, ConfigError> {
    let Some(issuer) = setting(env, "CORTEX_OIDC_ISSUER", file.issuer.as_ref()) else {
        // Without an issuer nothing else of [oidc] may be set: a half-configured sign-in is
        // an error, not silently off.
        if file.client_id.is_some() || var(env, "CORTEX_OIDC_CLIENT_ID").is_some() {
            return Err(ConfigError::new(
                "CORTEX_OIDC_ISSUER",
                "is required when CORTEX_OIDC_CLIENT_ID is set",
            ));
        }
        return Ok(None);
    };
    check_url("CORTEX_OIDC_ISSUER", &issuer)?;
    let client_id =
        setting(env, "CORTEX_OIDC_CLIENT_ID", file.client_id.as_ref()).ok_or_else(|| {
            ConfigError::new(
                "CORTEX_OIDC_CLIENT_ID",
                "is required with CORTEX_OIDC_ISSUER",
            )
        })?;
    if client_id.is_empty() || client_id.len() > 256 || client_id.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "CORTEX_OIDC_CLIENT_ID",
            "must be 1 to 256 printable characters",
        ));
    }
    let client_secret = client_secret(env, file)?;
    let redirect_url = setting(env, "CORTEX_OIDC_REDIRECT_URL", file.redirect_url.as_ref())
        .ok_or_else(|| {
            ConfigError::new(
                "CORTEX_OIDC_REDIRECT_URL",
                format!("is required with CORTEX_OIDC_ISSUER: this server's URL ending in {OIDC_CALLBACK_PATH}"),
            )
        })?;
    check_url("CORTEX_OIDC_REDIRECT_URL", &redirect_url)?;
    if !redirect_url.ends_with(OIDC_CALLBACK_PATH)
        || redirect_url.matches("://").count() != 1
        || path_of(&redirect_url) != OIDC_CALLBACK_PATH
    {
        return Err(ConfigError::new(
            "CORTEX_OIDC_REDIRECT_URL",
            format!("must be this server's origin followed by {OIDC_CALLBACK_PATH}"),
        ));
    }
    let post_logout_redirect_url = setting(
        env,
        "CORTEX_OIDC_POST_LOGOUT_REDIRECT_URL",
        file.post_logout_redirect_url.as_ref(),
    );
    if let Some(url) = &post_logout_redirect_url {
        check_url("CORTEX_OIDC_POST_LOGOUT_REDIRECT_URL", url)?;
    }
    let display_name = setting(env, "CORTEX_OIDC_DISPLAY_NAME", file.display_name.as_ref())
        .unwrap_or_else(|| "single sign-on".to_owned());
    if display_name.is_empty()
        || display_name.chars().count() > 64
        || display_name.chars().any(char::is_control)
    {
        return Err(ConfigError::new(
            "CORTEX_OIDC_DISPLAY_NAME",
            "must be 1 to 64 printable characters",
        ));
    }
    let mut scopes = match var(env, "CORTEX_OIDC_SCOPES") {
        Some(text) => split_list(&text.replace(' ', ",")),
        None => file
            .scopes
            .clone()
            .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]),
    };
    if scopes.iter().any(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        return Err(ConfigError::new(
            "CORTEX_OIDC_SCOPES",
            "scopes are names without spaces or quotes",
        ));
    }
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".to_owned());
    }
    let claim =
        |name: &'static str, value: Option<String>| -> Result<Option<String>, ConfigError> {
            match value {
                Some(v) if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) => {
                    Err(ConfigError::new(
                        name,
                        "must be a claim name of 1 to 128 printable characters",
                    ))
                }
                other => Ok(other),
            }
        };
    let username_claim = claim(
        "CORTEX_OIDC_USERNAME_CLAIM",
        setting(
            env,
            "CORTEX_OIDC_USERNAME_CLAIM",
            file.username_claim.as_ref(),
        ),
    )?
    .unwrap_or_else(|| "preferred_username".to_owned());
    let role_claim = claim(
        "CORTEX_OIDC_ROLE_CLAIM",
        setting(env, "CORTEX_OIDC_ROLE_CLAIM", file.role_claim.as_ref()),
    )?;
    let org_claim = claim(
        "CORTEX_OIDC_ORG_CLAIM",
        setting(env, "CORTEX_OIDC_ORG_CLAIM", file.org_claim.as_ref()),
    )?;
    if org_claim.is_some() && role_claim.is_none() {
        return Err(ConfigError::new(
            "CORTEX_OIDC_ORG_CLAIM",
            "is used with CORTEX_OIDC_ROLE_CLAIM; set both, or give [[oidc.rules]]",
        ));
    }
    let rules = file
        .rules
        .iter()
        .enumerate()
        .map(|(n, rule)| check_rule(n, rule))
        .collect::<Result<Vec<_>, _>>()?;
    if rules.is_empty() && role_claim.is_none() {
        return Err(ConfigError::new(
            "CORTEX_OIDC_ROLE_CLAIM",
            "single sign-on needs a way to give users a role: [[oidc.rules]] in the config file, or a role claim",
        ));
    }
    Ok(Some(OidcSettings {
        issuer,
        client_id,
        client_secret,
        redirect_url,
        display_name,
        scopes,
        username_claim,
        role_claim,
        org_claim,
        rules,
        post_logout_redirect_url,
    }))
}

fn client_secret(env: Env<'_>, file: &OidcFile) -> Result<Option<SecretString>, ConfigError> {
    match (
        var(env, "CORTEX_OIDC_CLIENT_SECRET"),
        var(env, "CORTEX_OIDC_CLIENT_SECRET_FILE"),
    ) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "CORTEX_OIDC_CLIENT_SECRET",
            "set CORTEX_OIDC_CLIENT_SECRET or CORTEX_OIDC_CLIENT_SECRET_FILE, not both",
        )),
        (Some(value), None) => Ok(Some(SecretString::from(value))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(
                    "CORTEX_OIDC_CLIENT_SECRET_FILE",
                    format!("cannot read {path}: {}", e.kind()),
                )
            })?;
            Ok(Some(SecretString::from(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            )))
        }
        (None, None) => file
            .client_secret
            .as_ref()
            .map(|secret| resolve_secret("oidc.client_secret", secret, env))
            .transpose(),
    }
}

fn check_rule(n: usize, rule: &OidcRuleFile) -> Result<OidcRule, ConfigError> {
    let setting = format!("oidc.rules[{n}]");
    let role = Role::parse(rule.role.trim()).ok_or_else(|| {
        ConfigError::new(
            &setting,
            format!(
                "unknown role {:?}: one of admin, operator, developer, viewer, billing",
                rule.role
            ),
        )
    })?;
    let org = rule
        .org
        .as_deref()
        .unwrap_or(cortex_domain::DEFAULT_ORG)
        .trim();
    check_tenant_name(org)
        .map_err(|problem| ConfigError::new(&setting, format!("org: {problem}")))?;
    if rule.value.is_some() && rule.claim.is_none() {
        return Err(ConfigError::new(&setting, "`value` needs a `claim`"));
    }
    Ok(OidcRule {
        claim: rule.claim.as_ref().map(|c| c.trim().to_owned()),
        value: rule.value.clone(),
        org: org.to_owned(),
        role,
    })
}

/// The path of an absolute URL (what follows the authority), without query or fragment.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map_or("", |start| &rest[start..])
}

/// An absolute URL, `https://`, or `http://` to the loopback (the provider or this server on
/// the same host): a sign-in never crosses a network in clear text.
fn check_url(setting: &str, url: &str) -> Result<(), ConfigError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| ConfigError::new(setting, "must be an absolute https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') || url.contains([' ', '\n', '\r', '#']) {
        return Err(ConfigError::new(
            setting,
            "must be https://host[:port]/path without credentials, spaces or fragment",
        ));
    }
    let (host, _) = crate::parse::split_host_port(authority);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(ConfigError::new(
            setting,
            "plain http is allowed only to a loopback address; use https",
        )),
        _ => Err(ConfigError::new(
            setting,
            "must be an absolute https:// URL",
        )),
    }
}
