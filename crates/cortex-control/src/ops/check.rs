//! `cortex check --production` and `GET /admin/check`: every hardening check of SPEC §10 with
//! PASS/FAIL and a hint that says how to fix it.

use cortex_config::{Config, MasterKeySource};
use cortex_crypto::envelope::MasterKey;
use cortex_domain::Role;
use cortex_domain::Tenant;
use cortex_store::Store;
use secrecy::ExposeSecret;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub status: &'static str,
    pub hint: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub checks: Vec<CheckResult>,
}

/// Values the seed documents use as examples; never acceptable as real keys.
const PLACEHOLDERS: [&str; 5] = [
    "strong-random-key-here",
    "your-strong-key",
    "changeme",
    "change-me",
    "secret",
];

fn strong_key(key: &str) -> bool {
    let distinct = key.chars().collect::<std::collections::HashSet<_>>().len();
    key.len() >= 32
        && distinct >= 12
        && !PLACEHOLDERS
            .iter()
            .any(|p| key.eq_ignore_ascii_case(p) || key.contains(p))
}

/// Nothing for others, and the group may at most read: a Kubernetes Secret mounted with an
/// `fsGroup` is 0440, and that is as private as the pod. Group write would let the group
/// replace the key.
#[cfg(unix)]
fn private_file(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o027 == 0)
}

#[cfg(not(unix))]
fn private_file(_path: &std::path::Path) -> bool {
    true
}

pub async fn run(config: &Config, store: &Store, master_key: &MasterKey) -> CheckReport {
    let mut checks = Vec::new();
    let mut check = |name: &'static str, pass: bool, hint: &'static str| {
        checks.push(CheckResult {
            name,
            status: if pass { "PASS" } else { "FAIL" },
            hint,
        });
    };
    check(
        "dev_bypass_off",
        !config.dev_allow_all_keys,
        "unset GATEWAY_DEV_ALLOW_ALL_KEYS (or set it to false)",
    );
    check(
        "internal_key_strong",
        config
            .internal_upstream_key
            .as_ref()
            .is_some_and(|k| strong_key(k.expose_secret())),
        "set INTERNAL_VLLM_API_KEY to a random value of 32+ characters (openssl rand -hex 32)",
    );
    check(
        "cors_no_wildcard",
        !config.cors.allow_origins.iter().any(|o| o == "*"),
        "list the allowed origins in CORS_ALLOW_ORIGINS instead of *",
    );
    let bootstrap_changed = match store.list_users(&Tenant::All).await {
        Ok(users) => !users
            .iter()
            .any(|u| u.role == Role::Admin && u.must_change_password),
        Err(_) => false,
    };
    check(
        "bootstrap_password_changed",
        bootstrap_changed,
        "log in as the first admin and change the generated password",
    );
    check("tls", config.serves_tls(), "set CORTEX_TLS_CERT and CORTEX_TLS_KEY, or put Cortex behind a TLS proxy and set CORTEX_BEHIND_TLS=true");
    check(
        "rate_limiting_on",
        config.rate_limit.enabled,
        "set RATE_LIMIT_ENABLED=true",
    );
    let audit_ok = super::audit::verify(
        store,
        master_key,
        cortex_domain::Clock::now_millis(&cortex_domain::SystemClock),
        |_| {},
    )
    .await
    .is_ok_and(|r| r.ok);
    check(
        "audit_chain_intact",
        audit_ok,
        "run `cortex audit verify` and investigate the first bad event",
    );
    let key_private = match &config.master_key {
        MasterKeySource::File(path) | MasterKeySource::Generated(path) => private_file(path),
        MasterKeySource::Inline(_) => true,
    };
    check(
        "master_key_not_world_readable",
        key_private,
        "chmod 600 the master key file (CORTEX_MASTER_KEY_FILE or <data dir>/master.key): no access for others, no group write",
    );
    check(
        "metrics_protected",
        config.metrics_token.is_some()
            || config.metrics_listen.is_some_and(|a| a.ip().is_loopback()),
        "set CORTEX_METRICS_TOKEN so /metrics needs a bearer token, or serve metrics only on a loopback CORTEX_METRICS_LISTEN",
    );
    check(
        "mfa_required_for_admins",
        config.require_mfa_for.contains(&Role::Admin),
        "set CORTEX_REQUIRE_MFA_FOR=admin (and other roles as needed)",
    );
    let ok = checks.iter().all(|c| c.status == "PASS");
    CheckReport { ok, checks }
}

#[cfg(test)]
mod tests {
    use super::strong_key;

    #[test]
    fn placeholders_and_short_keys_are_weak() {
        assert!(!strong_key("strong-random-key-here"));
        assert!(!strong_key("short"));
        assert!(!strong_key(&"a".repeat(40)));
        assert!(strong_key(
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_or_writable_beyond_owner_and_group_read_is_not_private() {
        use super::private_file;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, "k").unwrap();
        for (mode, private) in [
            (0o600, true),
            (0o400, true),
            (0o440, true),
            (0o640, true),
            (0o644, false),
            (0o604, false),
            (0o660, false),
            (0o666, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(private_file(&path), private, "mode {mode:o}");
        }
        assert!(
            !private_file(&dir.path().join("missing")),
            "a missing file is not private"
        );
    }
}
