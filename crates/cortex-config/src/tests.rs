use std::collections::HashMap;

use secrecy::ExposeSecret;

use super::*;

fn load_with(vars: &[(&str, &str)], file: &str) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let parsed = FileConfig::parse(file)?;
    Config::resolve(parsed, None, &|name| map.get(name).cloned())
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = load_with(&[], "").unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8084");
    assert!(config.is_sqlite());
    assert!(config.rate_limit.enabled);
    assert_eq!(config.concurrency.max_streams_per_id, 5);
    assert!(!config.dev_allow_all_keys);
    assert!(!config.cors.allow_credentials);
    assert_eq!(config.usage_retention_days, 90);
    assert_eq!(config.access_token_ttl_sec, 900);
    assert_eq!(config.refresh_token_ttl_sec, 604_800);
    assert_eq!(config.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(config.log_format, LogFormat::Json);
    assert!(matches!(config.master_key, MasterKeySource::Generated(_)));
    assert_eq!(
        config.serve_threads,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
}

#[test]
fn malformed_rate_limit_names_the_setting() {
    let err = load_with(&[("RATE_LIMIT_RPS", "abc")], "").unwrap_err();
    assert_eq!(err.setting, "RATE_LIMIT_RPS");
    assert!(
        err.to_string()
            .starts_with("invalid setting RATE_LIMIT_RPS:"),
        "{err}"
    );
    assert_eq!(
        load_with(&[("RATE_LIMIT_BURST", "0")], "")
            .unwrap_err()
            .setting,
        "RATE_LIMIT_BURST"
    );
    assert_eq!(
        load_with(&[("RATE_LIMIT_RPS", "-2")], "")
            .unwrap_err()
            .setting,
        "RATE_LIMIT_RPS"
    );
}

#[test]
fn wildcard_with_credentials_is_refused() {
    let err = load_with(
        &[
            ("CORS_ALLOW_ORIGINS", "*"),
            ("CORS_ALLOW_CREDENTIALS", "true"),
        ],
        "",
    )
    .unwrap_err();
    assert_eq!(err.setting, "CORS_ALLOW_ORIGINS");
    assert!(load_with(&[("CORS_ALLOW_ORIGINS", "*")], "").is_ok());
    let err = load_with(&[("CORS_ALLOW_ORIGINS", "https://a.example/path")], "").unwrap_err();
    assert_eq!(err.setting, "CORS_ALLOW_ORIGINS");
}

#[test]
fn short_mcp_token_is_refused_without_echoing_it() {
    let err = load_with(&[("MCP_TOKEN", "short-secret-value")], "").unwrap_err();
    assert_eq!(err.setting, "MCP_TOKEN");
    assert!(!err.to_string().contains("short-secret-value"));
}

#[test]
fn environment_overrides_file() {
    let file = r#"
listen = "127.0.0.1:9000"
[rate_limit]
rps = 3
burst = 4
"#;
    let config = load_with(&[("RATE_LIMIT_BURST", "9")], file).unwrap();
    assert_eq!(config.listen.port(), 9000);
    assert!((config.rate_limit.requests_per_second - 3.0).abs() < f64::EPSILON);
    assert_eq!(config.rate_limit.burst, 9);
}

#[test]
fn unknown_file_keys_are_refused() {
    let err = load_with(&[], "listen_addr = \"x\"\n").unwrap_err();
    assert_eq!(err.setting, "CORTEX_CONFIG");
    assert!(err.problem.contains("listen_addr"), "{err}");
}

#[test]
fn catalogue_references_and_secrets_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "file-secret\n").unwrap();
    let file = format!(
        r#"
[[providers]]
name = "a"
base_url = "http://127.0.0.1:8000/v1"
api_key = {{ env = "A_KEY" }}

[[providers]]
name = "b"
base_url = "https://b.example/v1"
api_key = {{ file = "{}" }}

[[models]]
name = "llama"
providers = ["a", "b"]
input_price_per_mtok = 0.5
"#,
        key_file.display()
    );
    let config = load_with(&[("A_KEY", "env-secret")], &file).unwrap();
    assert_eq!(config.models[0].providers, vec!["a", "b"]);
    assert_eq!(
        config.providers[0]
            .api_key
            .as_ref()
            .unwrap()
            .expose_secret(),
        "env-secret"
    );
    assert_eq!(
        config.providers[1]
            .api_key
            .as_ref()
            .unwrap()
            .expose_secret(),
        "file-secret"
    );
    let unset = load_with(&[], &file).unwrap_err();
    assert_eq!(unset.setting, "providers[a].api_key");
    assert!(!format!("{config:?}").contains("env-secret"));

    let missing = load_with(
        &[],
        "[[providers]]\nname='a'\nbase_url='http://h/v1'\n[[models]]\nname='m'\nprovider='zz'\n",
    )
    .unwrap_err();
    assert!(missing.problem.contains("unknown provider"), "{missing}");
    let bad_url = load_with(&[], "[[providers]]\nname='a'\nbase_url='ftp://h/v1'\n").unwrap_err();
    assert_eq!(bad_url.setting, "providers[a]");
}

#[test]
fn redaction_of_urls() {
    assert_eq!(
        redact_url("postgres://u:pw@db:5432/x"),
        "postgres://[REDACTED]@db:5432/x"
    );
    assert_eq!(
        redact_url("redis://127.0.0.1:6379"),
        "redis://127.0.0.1:6379"
    );
}

#[test]
fn misc_settings_validate() {
    assert_eq!(
        load_with(&[("CORTEX_LISTEN", "nowhere")], "")
            .unwrap_err()
            .setting,
        "CORTEX_LISTEN"
    );
    assert_eq!(
        load_with(&[("CORTEX_TRUSTED_PROXIES", "10.0.0.0/33")], "")
            .unwrap_err()
            .setting,
        "CORTEX_TRUSTED_PROXIES"
    );
    let ok = load_with(&[("CORTEX_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")], "").unwrap();
    assert_eq!(ok.trusted_proxies.len(), 2);
    assert_eq!(
        load_with(&[("CORTEX_REQUIRE_MFA_FOR", "admin,root")], "")
            .unwrap_err()
            .setting,
        "CORTEX_REQUIRE_MFA_FOR"
    );
    assert_eq!(
        load_with(&[("GATEWAY_DEV_ALLOW_ALL_KEYS", "maybe")], "")
            .unwrap_err()
            .setting,
        "GATEWAY_DEV_ALLOW_ALL_KEYS"
    );
    assert_eq!(
        load_with(&[("CORTEX_TLS_CERT", "/x")], "")
            .unwrap_err()
            .setting,
        "CORTEX_TLS_KEY"
    );
    assert_eq!(
        load_with(&[("DATABASE_URL", "mysql://x")], "")
            .unwrap_err()
            .setting,
        "DATABASE_URL"
    );
    for threads in ["0", "1025", "two", "-1"] {
        assert_eq!(
            load_with(&[("CORTEX_SERVE_THREADS", threads)], "")
                .unwrap_err()
                .setting,
            "CORTEX_SERVE_THREADS",
            "{threads}"
        );
    }
    let three = load_with(&[("CORTEX_SERVE_THREADS", "3")], "").unwrap();
    assert_eq!(three.serve_threads, 3);
    let from_file = load_with(&[], "serve_threads = 5\n").unwrap();
    assert_eq!(from_file.serve_threads, 5);
}

#[test]
fn audit_forward_url_accepts_https_loopback_http_and_syslog() {
    let https = load_with(
        &[
            ("CORTEX_AUDIT_FORWARD_URL", "https://siem.example/ingest"),
            ("CORTEX_AUDIT_FORWARD_TOKEN", "siem-token"),
            ("CORTEX_AUDIT_FORWARD_CA_FILE", "/etc/cortex/siem-ca.pem"),
        ],
        "",
    )
    .unwrap()
    .audit_forward
    .unwrap();
    assert_eq!(
        https.target,
        AuditForwardTarget::Http {
            url: "https://siem.example/ingest".into()
        }
    );
    assert_eq!(https.token.unwrap().expose_secret(), "siem-token");
    assert_eq!(
        https.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/cortex/siem-ca.pem"))
    );
    let local = load_with(
        &[("CORTEX_AUDIT_FORWARD_URL", "http://127.0.0.1:9000/x")],
        "",
    )
    .unwrap()
    .audit_forward
    .unwrap();
    assert!(matches!(local.target, AuditForwardTarget::Http { .. }));
    let relay = load_with(
        &[("CORTEX_AUDIT_FORWARD_URL", "syslog+tcp://127.0.0.1:514")],
        "",
    )
    .unwrap()
    .audit_forward
    .unwrap();
    assert_eq!(
        relay.target,
        AuditForwardTarget::Syslog {
            host: "127.0.0.1".into(),
            port: 514,
            tls: false,
        }
    );
    assert_eq!(relay.sink_name(), "syslog+tcp://127.0.0.1:514");
    let remote = load_with(
        &[],
        "audit_forward_url = \"syslog+tls://[2001:db8::5]:6514\"\naudit_forward_ca_file = \"ca.pem\"\n",
    )
    .unwrap()
    .audit_forward
    .unwrap();
    assert_eq!(
        remote.target,
        AuditForwardTarget::Syslog {
            host: "2001:db8::5".into(),
            port: 6514,
            tls: true,
        }
    );
    assert_eq!(remote.sink_name(), "syslog+tls://2001:db8::5:6514");
    assert_eq!(
        remote.ca_file.as_deref(),
        Some(std::path::Path::new("ca.pem"))
    );
    assert!(load_with(&[], "").unwrap().audit_forward.is_none());
}

#[test]
fn an_audit_forward_ca_file_needs_a_tls_sink() {
    for url in ["http://127.0.0.1:9000/x", "syslog+tcp://127.0.0.1:514"] {
        let err = load_with(
            &[
                ("CORTEX_AUDIT_FORWARD_URL", url),
                ("CORTEX_AUDIT_FORWARD_CA_FILE", "ca.pem"),
            ],
            "",
        )
        .unwrap_err();
        assert_eq!(err.setting, "CORTEX_AUDIT_FORWARD_CA_FILE", "{url}");
    }
}

#[test]
fn audit_forward_url_refuses_clear_text_remote_credentials_and_junk() {
    for bad in [
        "http://siem.example/ingest",
        "https://user:pass@siem.example/",
        // Syslog in clear text leaves the host only over TLS.
        "syslog+tcp://10.0.0.5:514",
        "syslog+tcp://siem.example:514",
        "syslog+tls://10.0.0.5",
        "syslog+tls://10.0.0.5:0",
        "syslog+tls://10.0.0.5:6514/path",
        "syslog+tcp://127.0.0.1",
        "ftp://siem.example",
        "siem.example",
        "https:///nohost",
    ] {
        let err = load_with(&[("CORTEX_AUDIT_FORWARD_URL", bad)], "").unwrap_err();
        assert_eq!(err.setting, "CORTEX_AUDIT_FORWARD_URL", "{bad}");
        assert!(!err.to_string().contains("pass@"), "{err}");
    }
}

#[test]
fn feature_flags_file_is_read_and_strict() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("flags.json");
    std::fs::write(&good, r#"{"audit_forwarding": true}"#).unwrap();
    let config = load_with(
        &[
            ("CORTEX_FEATURE_FLAGS_FILE", good.to_str().unwrap()),
            ("CORTEX_AUDIT_FORWARD_URL", "syslog+tcp://127.0.0.1:514"),
        ],
        "",
    )
    .unwrap();
    assert!(config
        .feature_flags
        .is_enabled(cortex_domain::features::AUDIT_FORWARDING));
    assert!(!load_with(&[], "")
        .unwrap()
        .feature_flags
        .is_enabled(cortex_domain::features::AUDIT_FORWARDING));

    let unknown = dir.path().join("unknown.json");
    std::fs::write(&unknown, r#"{"warp_drive": true}"#).unwrap();
    let missing = dir.path().join("missing.json");
    let malformed = dir.path().join("malformed.json");
    std::fs::write(&malformed, "{audit_forwarding: yes").unwrap();
    for path in [unknown, missing, malformed] {
        let err =
            load_with(&[("CORTEX_FEATURE_FLAGS_FILE", path.to_str().unwrap())], "").unwrap_err();
        assert_eq!(err.setting, "CORTEX_FEATURE_FLAGS_FILE");
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
    }
}

#[test]
fn trusting_every_peer_needs_to_be_said_in_so_many_words() {
    for everything in ["0.0.0.0/0", "::/0", "10.0.0.0/8, 0.0.0.0/0"] {
        let err = load_with(&[("CORTEX_TRUSTED_PROXIES", everything)], "").unwrap_err();
        assert_eq!(err.setting, "CORTEX_TRUSTED_PROXIES", "{everything}");
        assert!(err.problem.contains("CORTEX_TRUST_ALL_PROXIES"), "{err}");
    }
    let ok = load_with(
        &[
            ("CORTEX_TRUSTED_PROXIES", "0.0.0.0/0"),
            ("CORTEX_TRUST_ALL_PROXIES", "true"),
        ],
        "",
    )
    .unwrap();
    assert_eq!(ok.trusted_proxies.len(), 1);
}

#[test]
fn ipv4_mapped_proxy_ranges_mean_their_ipv4_range() {
    let config = load_with(
        &[(
            "CORTEX_TRUSTED_PROXIES",
            "::ffff:10.0.0.0/104, ::ffff:192.0.2.7",
        )],
        "",
    )
    .unwrap();
    let shown: Vec<String> = config
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32"]);
}

#[test]
fn connection_and_host_settings_validate() {
    let defaults = load_with(&[], "").unwrap();
    assert_eq!(defaults.max_connections_per_ip, 256);
    assert_eq!(defaults.body_read_timeout_sec, 30);
    assert_eq!(defaults.http2_idle_timeout_sec, 60);
    assert!(defaults.metrics_listen.is_none());
    assert!(defaults.allowed_hosts.is_empty());
    for (name, bad) in [
        ("CORTEX_MAX_CONNECTIONS_PER_IP", "0"),
        ("CORTEX_BODY_READ_TIMEOUT_SEC", "0"),
        ("CORTEX_HTTP2_IDLE_TIMEOUT_SEC", "soon"),
        ("CORTEX_METRICS_LISTEN", "localhost:9464"),
        ("CORTEX_ALLOWED_HOSTS", "gateway.example, bad host"),
        ("CORTEX_ALLOWED_HOSTS", "gateway.example:99999"),
        ("CORTEX_ALLOWED_HOSTS", "[not-ipv6]:80"),
        ("CORTEX_ALLOWED_HOSTS", "[::1]8084"),
        ("CORTEX_ALLOWED_HOSTS", "[::1"),
    ] {
        let err = load_with(&[(name, bad)], "").unwrap_err();
        assert_eq!(err.setting, name, "{bad}");
    }
    let config = load_with(
        &[
            ("CORTEX_METRICS_LISTEN", "127.0.0.1:9464"),
            (
                "CORTEX_ALLOWED_HOSTS",
                "Gateway.Example, gateway.example:8443, [::1]:8084, 127.0.0.1",
            ),
        ],
        "",
    )
    .unwrap();
    assert_eq!(
        config.metrics_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9464")
    );
    assert_eq!(
        config.allowed_hosts,
        [
            "gateway.example",
            "gateway.example:8443",
            "[::1]:8084",
            "127.0.0.1"
        ]
    );
}

#[test]
fn upstream_allow_list_parses_and_refuses_denied_provider_addresses() {
    let default = load_with(&[], "").unwrap();
    assert!(!default.upstream_allow.is_restricted());
    let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
    assert!(!default.upstream_allow.allows("h", ip("169.254.169.254")));

    let env = load_with(
        &[("CORTEX_UPSTREAM_ALLOW", "10.0.0.0/8, vllm.internal")],
        "[upstream]\nallow = ['192.0.2.0/24']\n",
    )
    .unwrap();
    assert!(env.upstream_allow.allows("x", ip("10.1.1.1")));
    assert!(
        !env.upstream_allow.allows("x", ip("192.0.2.1")),
        "the environment wins"
    );
    let file = load_with(&[], "[upstream]\nallow = ['192.0.2.0/24']\n").unwrap();
    assert!(file.upstream_allow.allows("x", ip("192.0.2.1")));

    let bad = load_with(&[("CORTEX_UPSTREAM_ALLOW", "10.0.0.0/99")], "").unwrap_err();
    assert_eq!(bad.setting, "CORTEX_UPSTREAM_ALLOW");
    assert!(bad.problem.contains("10.0.0.0/99"), "{bad}");

    for url in [
        "http://169.254.169.254/latest",
        "http://[::ffff:169.254.169.254]/v1",
        "http://[fd00:ec2::254]/v1",
    ] {
        let toml = format!("[[providers]]\nname='meta'\nbase_url='{url}'\n");
        let err = load_with(&[], &toml).unwrap_err();
        assert_eq!(err.setting, "providers[meta]", "{url}");
        assert!(err.problem.contains("egress policy"), "{err}");
    }
    let outside = load_with(
        &[("CORTEX_UPSTREAM_ALLOW", "10.0.0.0/8")],
        "[[providers]]\nname='p'\nbase_url='http://127.0.0.1:8000/v1'\n",
    )
    .unwrap_err();
    assert_eq!(outside.setting, "providers[p]");
}

#[test]
fn the_internal_key_goes_only_to_providers_that_ask_for_it() {
    let file = "[[providers]]\nname='a'\nbase_url='http://h/v1'\nuse_internal_key = true\n\
                [[providers]]\nname='b'\nbase_url='http://h/v1'\n";
    let config = load_with(
        &[("INTERNAL_VLLM_API_KEY", "internal-0123456789abcdef")],
        file,
    )
    .unwrap();
    assert!(config.providers[0].use_internal_key);
    assert!(!config.providers[1].use_internal_key);

    let without_key = load_with(&[], file).unwrap_err();
    assert_eq!(without_key.setting, "providers[a].use_internal_key");
    assert!(
        without_key.problem.contains("INTERNAL_VLLM_API_KEY"),
        "{without_key}"
    );

    let both = load_with(
        &[("INTERNAL_VLLM_API_KEY", "internal-0123456789abcdef")],
        "[[providers]]\nname='a'\nbase_url='http://h/v1'\napi_key='own'\nuse_internal_key = true\n",
    )
    .unwrap_err();
    assert_eq!(both.setting, "providers[a].use_internal_key");
    assert!(!both.to_string().contains("own"), "{both}");
}

#[test]
fn provider_kinds_api_versions_and_the_responses_flag_are_read_and_checked() {
    let file = r#"
[[providers]]
name = "claude"
base_url = "https://api.anthropic.com/v1"
kind = "anthropic"

[[providers]]
name = "az"
base_url = "https://example.openai.azure.com"
kind = "azure"
api_version = "2024-12-01-preview"

[[providers]]
name = "oa"
base_url = "https://api.openai.com/v1"
responses_api = true

[[models]]
name = "sonnet"
provider = "claude"

[[models]]
name = "gpt"
providers = ["az", "oa"]
"#;
    let config = load_with(&[], file).unwrap();
    let dialect = |i: usize| config.providers[i].dialect.clone();
    assert_eq!(dialect(0).kind, cortex_domain::ProviderKind::Anthropic);
    assert_eq!(dialect(0).api_version, None);
    assert_eq!(dialect(1).kind, cortex_domain::ProviderKind::Azure);
    assert_eq!(
        dialect(1).api_version.as_deref(),
        Some("2024-12-01-preview")
    );
    assert_eq!(dialect(2).kind, cortex_domain::ProviderKind::OpenAi);
    assert!(dialect(2).responses_api);

    let provider =
        |extra: &str| format!("[[providers]]\nname='p'\nbase_url='http://h/v1'\n{extra}\n");
    for (extra, setting) in [
        ("kind = 'bedrock'", "providers[p].kind"),
        ("api_version = '2024-10-21'", "providers[p].api_version"),
        (
            "kind = 'azure'\napi_version = '1&x=y'",
            "providers[p].api_version",
        ),
        (
            "kind = 'anthropic'\nresponses_api = true",
            "providers[p].responses_api",
        ),
        (
            "kind = 'azure'\nresponses_api = true",
            "providers[p].responses_api",
        ),
    ] {
        let err = load_with(&[], &provider(extra)).unwrap_err();
        assert_eq!(err.setting, setting, "{extra}");
        assert!(
            err.to_string()
                .starts_with(&format!("invalid setting {setting}: ")),
            "one line naming the setting: {err}"
        );
    }
    let wrong_type = load_with(&[], &provider("responses_api = 'yes'")).unwrap_err();
    assert_eq!(wrong_type.setting, "CORTEX_CONFIG");
}

#[test]
fn a_model_cannot_mix_anthropic_with_openai_style_providers() {
    let file = |second_kind: &str| {
        format!(
            "[[providers]]\nname='claude'\nbase_url='https://api.anthropic.com/v1'\nkind='anthropic'\n\
             [[providers]]\nname='other'\nbase_url='http://h/v1'\nkind='{second_kind}'\n\
             [[models]]\nname='m'\nproviders=['claude', 'other']\n"
        )
    };
    for kind in ["openai", "azure"] {
        let err = load_with(&[], &file(kind)).unwrap_err();
        assert_eq!(err.setting, "models[m]", "{kind}");
        assert!(err.problem.contains("different dialects"), "{err}");
    }
    assert!(load_with(&[], &file("anthropic")).is_ok());
}

#[test]
fn routing_settings_default_to_the_documented_values() {
    let config = load_with(&[], "").unwrap();
    assert_eq!(
        config.routing,
        RoutingSettings {
            breaker_failures: 5,
            breaker_cooldown_sec: 30,
            health_check_interval_sec: 10,
            health_check_timeout_ms: 5000,
            max_retries: 2,
        }
    );
    assert_eq!(config.routing, RoutingSettings::default());
}

#[test]
fn routing_settings_come_from_the_upstream_table_and_the_environment_wins() {
    let file = "[upstream]\nbreaker_failures = 3\nbreaker_cooldown_sec = 60\n\
                health_check_interval_sec = 0\nhealth_check_timeout_ms = 250\nmax_retries = 0\n\
                connect_timeout_ms = 1000\n";
    let from_file = load_with(&[], file).unwrap();
    assert_eq!(
        from_file.routing,
        RoutingSettings {
            breaker_failures: 3,
            breaker_cooldown_sec: 60,
            health_check_interval_sec: 0,
            health_check_timeout_ms: 250,
            max_retries: 0,
        },
        "0 turns active checks off and means no retries"
    );
    assert_eq!(from_file.upstream_timeouts.connect_ms, 1000);
    let overridden = load_with(
        &[
            ("CORTEX_BREAKER_FAILURES", "1000"),
            ("CORTEX_BREAKER_COOLDOWN_SEC", "3600"),
            ("CORTEX_HEALTH_CHECK_INTERVAL_SEC", "3600"),
            ("CORTEX_HEALTH_CHECK_TIMEOUT_MS", " 60000 "),
            ("CORTEX_MAX_RETRIES", "10"),
        ],
        file,
    )
    .unwrap();
    assert_eq!(
        overridden.routing,
        RoutingSettings {
            breaker_failures: 1000,
            breaker_cooldown_sec: 3600,
            health_check_interval_sec: 3600,
            health_check_timeout_ms: 60_000,
            max_retries: 10,
        }
    );
    // An empty variable is unset: the file's value stands.
    let empty = load_with(&[("CORTEX_MAX_RETRIES", "")], file).unwrap();
    assert_eq!(empty.routing.max_retries, 0);
}

#[test]
fn bad_routing_settings_stop_start_up_naming_the_setting() {
    for (name, bad) in [
        ("CORTEX_BREAKER_FAILURES", "0"),
        ("CORTEX_BREAKER_FAILURES", "1001"),
        ("CORTEX_BREAKER_FAILURES", "five"),
        ("CORTEX_BREAKER_COOLDOWN_SEC", "0"),
        ("CORTEX_BREAKER_COOLDOWN_SEC", "3601"),
        ("CORTEX_BREAKER_COOLDOWN_SEC", "-1"),
        ("CORTEX_HEALTH_CHECK_INTERVAL_SEC", "3601"),
        ("CORTEX_HEALTH_CHECK_INTERVAL_SEC", "10s"),
        ("CORTEX_HEALTH_CHECK_TIMEOUT_MS", "0"),
        ("CORTEX_HEALTH_CHECK_TIMEOUT_MS", "60001"),
        ("CORTEX_HEALTH_CHECK_TIMEOUT_MS", "1.5"),
        ("CORTEX_MAX_RETRIES", "11"),
        ("CORTEX_MAX_RETRIES", "-1"),
        ("CORTEX_MAX_RETRIES", "99999999999"),
    ] {
        let err = load_with(&[(name, bad)], "").unwrap_err();
        assert_eq!(err.setting, name, "{bad}");
        let line = err.to_string();
        assert!(
            line.starts_with(&format!("invalid setting {name}: ")),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");
    }
    let range = load_with(&[("CORTEX_MAX_RETRIES", "11")], "").unwrap_err();
    assert_eq!(
        range.problem,
        "must be a whole number of retries from 0 to 10"
    );
    // A bad value in the file is named by its key there.
    for (key, bad) in [
        ("breaker_failures", "0"),
        ("breaker_cooldown_sec", "0"),
        ("health_check_interval_sec", "7200"),
        ("health_check_timeout_ms", "0"),
        ("max_retries", "11"),
    ] {
        let err = load_with(&[], &format!("[upstream]\n{key} = {bad}\n")).unwrap_err();
        assert_eq!(err.setting, format!("upstream.{key}"), "{bad}");
    }
    // A wrong type or an unknown key in the table is the file's error.
    for toml in [
        "[upstream]\nmax_retries = -1\n",
        "[upstream]\nbreaker_failures = 'five'\n",
        "[upstream]\nretries = 2\n",
    ] {
        assert_eq!(
            load_with(&[], toml).unwrap_err().setting,
            "CORTEX_CONFIG",
            "{toml}"
        );
    }
    // The environment's good value replaces the file's bad one.
    let fixed = load_with(
        &[("CORTEX_MAX_RETRIES", "1")],
        "[upstream]\nmax_retries = 11\n",
    )
    .unwrap();
    assert_eq!(fixed.routing.max_retries, 1);
}

#[test]
fn provider_weights_health_check_paths_and_model_strategies_are_read_and_checked() {
    let file = r#"
[[providers]]
name = "a"
base_url = "http://127.0.0.1:8000/v1"
weight = 3
health_check_path = "health/ready"

[[providers]]
name = "b"
base_url = "http://127.0.0.1:8001/v1"

[[models]]
name = "llama"
providers = ["a", "b"]
strategy = "weighted"

[[models]]
name = "mistral"
provider = "b"
"#;
    let config = load_with(&[], file).unwrap();
    assert_eq!(config.providers[0].weight, 3);
    assert_eq!(
        config.providers[0].health_check_path.as_deref(),
        Some("health/ready")
    );
    assert_eq!(config.providers[1].weight, 1, "the default weight");
    assert_eq!(config.providers[1].health_check_path, None);
    assert_eq!(
        config.models[0].strategy,
        cortex_domain::RoutingStrategy::Weighted
    );
    assert_eq!(
        config.models[1].strategy,
        cortex_domain::RoutingStrategy::RoundRobin
    );
    assert_eq!(config.models[1].providers, ["b"]);

    let provider =
        |extra: &str| format!("[[providers]]\nname='p'\nbase_url='http://h/v1'\n{extra}\n");
    for (extra, setting) in [
        ("weight = 0", "providers[p].weight"),
        ("weight = 1001", "providers[p].weight"),
        ("health_check_path = ''", "providers[p].health_check_path"),
        (
            "health_check_path = '/models'",
            "providers[p].health_check_path",
        ),
        (
            "health_check_path = '../x'",
            "providers[p].health_check_path",
        ),
        (
            "health_check_path = 'a/../../b'",
            "providers[p].health_check_path",
        ),
        (
            "health_check_path = 'http://evil'",
            "providers[p].health_check_path",
        ),
        (
            "health_check_path = 'models?x=1'",
            "providers[p].health_check_path",
        ),
        (
            "health_check_path = 'models#x'",
            "providers[p].health_check_path",
        ),
    ] {
        let err = load_with(&[], &provider(extra)).unwrap_err();
        assert_eq!(err.setting, setting, "{extra}");
        assert!(
            err.to_string()
                .starts_with(&format!("invalid setting {setting}: ")),
            "one line naming the setting: {err}"
        );
        assert!(!err.to_string().contains("evil"), "{err}");
    }
    for extra in ["weight = -1", "weight = 'heavy'", "weight = 4294967296"] {
        assert_eq!(
            load_with(&[], &provider(extra)).unwrap_err().setting,
            "CORTEX_CONFIG",
            "{extra}"
        );
    }
    let strategy = |name: &str| {
        format!(
            "[[providers]]\nname='p'\nbase_url='http://h/v1'\n\
             [[models]]\nname='m'\nprovider='p'\nstrategy='{name}'\n"
        )
    };
    for name in ["round_robin", "weighted", "least_latency", "priority"] {
        let config = load_with(&[], &strategy(name)).unwrap();
        assert_eq!(config.models[0].strategy.as_str(), name);
    }
    for bad in ["fastest", "RoundRobin", ""] {
        let err = load_with(&[], &strategy(bad)).unwrap_err();
        assert_eq!(err.setting, "models[m].strategy", "{bad}");
        assert_eq!(
            err.problem,
            "must be one of round_robin, weighted, least_latency, priority"
        );
    }
}

#[test]
fn single_sign_on_reads_the_file_and_the_environment_and_refuses_half_settings() {
    let file = r#"
[oidc]
issuer = "https://idp.example"
client_id = "cortex"
client_secret = { env = "IDP_SECRET" }
redirect_url = "https://cortex.example/admin/auth/oidc/callback"
display_name = "Okta"
scopes = ["profile", "groups"]

[[oidc.rules]]
claim = "groups"
value = "platform"
role = "admin"

[[oidc.rules]]
claim = "groups"
value = "acme-devs"
org = "acme"
role = "developer"
"#;
    let config = load_with(&[("IDP_SECRET", "s3cret-value")], file).unwrap();
    let oidc = config.oidc.as_ref().unwrap();
    assert_eq!(oidc.issuer, "https://idp.example");
    assert_eq!(
        oidc.client_secret.as_ref().unwrap().expose_secret(),
        "s3cret-value"
    );
    assert_eq!(oidc.scopes, ["openid", "profile", "groups"]);
    assert_eq!(oidc.username_claim, "preferred_username");
    assert_eq!(oidc.rules.len(), 2);
    assert_eq!(
        (oidc.rules[0].org.as_str(), oidc.rules[0].role),
        ("default", cortex_domain::Role::Admin)
    );
    assert_eq!(
        (oidc.rules[1].org.as_str(), oidc.rules[1].role),
        ("acme", cortex_domain::Role::Developer)
    );
    assert!(config.local_login);
    assert!(!format!("{config:?}").contains("s3cret-value"));

    // The environment overrides the file; the secret may come from a file.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let config = load_with(
        &[
            ("CORTEX_OIDC_CLIENT_ID", "other"),
            (
                "CORTEX_OIDC_CLIENT_SECRET_FILE",
                secret_file.to_str().unwrap(),
            ),
            ("CORTEX_OIDC_DISPLAY_NAME", "Corporate SSO"),
            ("CORTEX_LOCAL_LOGIN", "false"),
        ],
        file,
    )
    .unwrap();
    let oidc = config.oidc.as_ref().unwrap();
    assert_eq!(
        (oidc.client_id.as_str(), oidc.display_name.as_str()),
        ("other", "Corporate SSO")
    );
    assert_eq!(
        oidc.client_secret.as_ref().unwrap().expose_secret(),
        "from-a-file"
    );
    assert!(!config.local_login);

    // Unset: off. Each half-setting names itself.
    assert!(load_with(&[], "").unwrap().oidc.is_none());
    let base = [
        ("CORTEX_OIDC_ISSUER", "https://idp.example"),
        ("CORTEX_OIDC_CLIENT_ID", "cortex"),
        (
            "CORTEX_OIDC_REDIRECT_URL",
            "https://cortex.example/admin/auth/oidc/callback",
        ),
        ("CORTEX_OIDC_ROLE_CLAIM", "cortex_role"),
    ];
    load_with(&base, "").unwrap();
    let with = |name: &'static str, value: &'static str| {
        let mut vars: Vec<(&str, &str)> =
            base.iter().filter(|(k, _)| *k != name).copied().collect();
        if !value.is_empty() {
            vars.push((name, value));
        }
        load_with(&vars, "").unwrap_err().setting
    };
    assert_eq!(
        with("CORTEX_OIDC_ISSUER", "http://idp.example"),
        "CORTEX_OIDC_ISSUER"
    );
    assert_eq!(
        with("CORTEX_OIDC_ISSUER", "idp.example"),
        "CORTEX_OIDC_ISSUER"
    );
    assert_eq!(with("CORTEX_OIDC_CLIENT_ID", ""), "CORTEX_OIDC_CLIENT_ID");
    assert_eq!(
        with("CORTEX_OIDC_REDIRECT_URL", ""),
        "CORTEX_OIDC_REDIRECT_URL"
    );
    assert_eq!(
        with(
            "CORTEX_OIDC_REDIRECT_URL",
            "https://cortex.example/elsewhere"
        ),
        "CORTEX_OIDC_REDIRECT_URL"
    );
    assert_eq!(
        with(
            "CORTEX_OIDC_REDIRECT_URL",
            "http://cortex.example/admin/auth/oidc/callback"
        ),
        "CORTEX_OIDC_REDIRECT_URL"
    );
    assert_eq!(with("CORTEX_OIDC_ROLE_CLAIM", ""), "CORTEX_OIDC_ROLE_CLAIM");
    // Plain http only to the loopback, as for the SIEM.
    let mut local = base.to_vec();
    local[0] = ("CORTEX_OIDC_ISSUER", "http://127.0.0.1:8080");
    local[2] = (
        "CORTEX_OIDC_REDIRECT_URL",
        "http://localhost:8084/admin/auth/oidc/callback",
    );
    load_with(&local, "").unwrap();
    assert_eq!(
        load_with(&[("CORTEX_OIDC_CLIENT_ID", "cortex")], "")
            .unwrap_err()
            .setting,
        "CORTEX_OIDC_ISSUER"
    );
    assert_eq!(
        load_with(&[("CORTEX_LOCAL_LOGIN", "false")], "")
            .unwrap_err()
            .setting,
        "CORTEX_LOCAL_LOGIN"
    );
    let mut both = base.to_vec();
    both.push(("CORTEX_OIDC_CLIENT_SECRET", "a"));
    both.push(("CORTEX_OIDC_CLIENT_SECRET_FILE", "/x"));
    assert_eq!(
        load_with(&both, "").unwrap_err().setting,
        "CORTEX_OIDC_CLIENT_SECRET"
    );
    // A rule naming a role that does not exist stops start-up, naming the rule.
    let bad_role = "[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\nredirect_url = \"https://c.example/admin/auth/oidc/callback\"\n[[oidc.rules]]\nrole = \"root\"\n";
    let err = load_with(&[], bad_role).unwrap_err();
    assert_eq!(err.setting, "oidc.rules[0]");
    assert!(err.to_string().contains("unknown role"), "{err}");
}

#[test]
fn passkeys_need_a_secure_origin_with_a_host_and_a_matching_relying_party() {
    assert!(load_with(&[], "").unwrap().webauthn.is_none());
    let on = load_with(
        &[("CORTEX_WEBAUTHN_ORIGIN", "https://cortex.example.com/")],
        "",
    )
    .unwrap()
    .webauthn
    .unwrap();
    assert_eq!(
        (on.origin.as_str(), on.rp_id.as_str(), on.rp_name.as_str()),
        ("https://cortex.example.com", "cortex.example.com", "Cortex")
    );
    let parent = load_with(
        &[],
        "[webauthn]\norigin = \"https://cortex.example.com:8443\"\nrp_id = \"example.com\"\nrp_name = \"Acme AI\"\n",
    )
    .unwrap()
    .webauthn
    .unwrap();
    assert_eq!(
        (parent.rp_id.as_str(), parent.rp_name.as_str()),
        ("example.com", "Acme AI")
    );
    load_with(&[("CORTEX_WEBAUTHN_ORIGIN", "http://localhost:8084")], "").unwrap();
    for (origin, rp_id, setting) in [
        ("http://cortex.example.com", None, "CORTEX_WEBAUTHN_ORIGIN"),
        ("https://127.0.0.1:8084", None, "CORTEX_WEBAUTHN_ORIGIN"),
        ("https://[::1]:8084", None, "CORTEX_WEBAUTHN_ORIGIN"),
        (
            "https://cortex.example.com/ui",
            None,
            "CORTEX_WEBAUTHN_ORIGIN",
        ),
        ("cortex.example.com", None, "CORTEX_WEBAUTHN_ORIGIN"),
        (
            "https://cortex.example.com",
            Some("other.com"),
            "CORTEX_WEBAUTHN_RP_ID",
        ),
        (
            "https://cortex.example.com",
            Some("ample.com"),
            "CORTEX_WEBAUTHN_RP_ID",
        ),
    ] {
        let mut vars = vec![("CORTEX_WEBAUTHN_ORIGIN", origin)];
        if let Some(rp_id) = rp_id {
            vars.push(("CORTEX_WEBAUTHN_RP_ID", rp_id));
        }
        assert_eq!(
            load_with(&vars, "").unwrap_err().setting,
            setting,
            "{origin} {rp_id:?}"
        );
    }
    assert_eq!(
        load_with(&[("CORTEX_WEBAUTHN_RP_ID", "example.com")], "")
            .unwrap_err()
            .setting,
        "CORTEX_WEBAUTHN_ORIGIN"
    );
}

#[test]
fn traces_are_off_unless_an_otlp_endpoint_is_set() {
    assert!(load_with(&[], "").unwrap().traces.is_none());
    assert!(load_with(&[("OTEL_SERVICE_NAME", "x")], "")
        .unwrap()
        .traces
        .is_none());
    let disabled = load_with(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
        "",
    )
    .unwrap();
    assert!(disabled.traces.is_none());

    let on = load_with(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret-token,x-tenant=a",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ],
        "",
    )
    .unwrap()
    .traces
    .unwrap();
    // The general endpoint is a base; the signal's path is added to it.
    assert_eq!(on.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(on.sampler, TraceSampler::ParentBasedRatio(0.1));
    assert_eq!(on.service_name, "cortex");
    assert_eq!(on.max_queue_size, 2048);
    assert_eq!(on.headers.len(), 2);
    assert_eq!(on.headers[0].0, "authorization");
    assert_eq!(on.headers[0].1.expose_secret(), "Bearer s3cret-token");
    // Header values are secrets: never in Debug output.
    assert!(!format!("{on:?}").contains("s3cret"));

    // The per-signal endpoint is taken whole, and wins.
    let signal = load_with(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://collector.example/otlp/traces",
            ),
            ("OTEL_SERVICE_NAME", "gateway-eu"),
        ],
        "",
    )
    .unwrap()
    .traces
    .unwrap();
    assert_eq!(signal.endpoint, "https://collector.example/otlp/traces");
    assert_eq!(signal.sampler, TraceSampler::ParentBasedAlwaysOn);
    assert_eq!(signal.service_name, "gateway-eu");
}

#[test]
fn malformed_trace_settings_name_the_setting() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
    for (vars, setting) in [
        (
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://user:pw@127.0.0.1:4318",
            )],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            vec![endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
            "OTEL_TRACES_SAMPLER",
        ),
        (
            vec![
                endpoint,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ],
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            vec![endpoint, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            vec![endpoint, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
            "OTEL_BSP_MAX_QUEUE_SIZE",
        ),
    ] {
        let err = load_with(&vars, "").unwrap_err();
        assert_eq!(err.setting, setting, "{vars:?}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}

#[test]
fn cache_defaults_follow_redis() {
    let config = load_with(&[], "").unwrap();
    assert_eq!(
        config.cache,
        CacheSettings {
            backend: CacheBackend::Memory,
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
        }
    );
    let redis = ("REDIS_URL", "redis://127.0.0.1:6379");
    let config = load_with(&[redis], "").unwrap();
    assert_eq!(config.cache.backend, CacheBackend::Redis);
    let config = load_with(&[redis, ("CORTEX_CACHE_BACKEND", "Memory")], "").unwrap();
    assert_eq!(config.cache.backend, CacheBackend::Memory);
    let config = load_with(
        &[
            ("CORTEX_CACHE_MAX_BYTES", "1048576"),
            ("CORTEX_CACHE_MAX_ENTRY_BYTES", "1048576"),
        ],
        "",
    )
    .unwrap();
    assert_eq!(config.cache.max_bytes, 1_048_576);
    assert_eq!(config.cache.max_entry_bytes, 1_048_576);
    let config = load_with(&[("CORTEX_CACHE_MAX_BYTES", "68719476736")], "").unwrap();
    assert_eq!(config.cache.max_bytes, 64 << 30);
}

#[test]
fn malformed_cache_settings_name_the_setting() {
    for (vars, setting, says) in [
        (
            vec![("CORTEX_CACHE_BACKEND", "redis")],
            "CORTEX_CACHE_BACKEND",
            "REDIS_URL",
        ),
        (
            vec![("CORTEX_CACHE_BACKEND", "disk")],
            "CORTEX_CACHE_BACKEND",
            "memory or redis",
        ),
        (
            vec![("CORTEX_CACHE_MAX_BYTES", "64MiB")],
            "CORTEX_CACHE_MAX_BYTES",
            "bytes",
        ),
        (
            vec![("CORTEX_CACHE_MAX_BYTES", "1048575")],
            "CORTEX_CACHE_MAX_BYTES",
            "1 MiB",
        ),
        (
            vec![("CORTEX_CACHE_MAX_BYTES", "68719476737")],
            "CORTEX_CACHE_MAX_BYTES",
            "64 GiB",
        ),
        (
            vec![("CORTEX_CACHE_MAX_ENTRY_BYTES", "-1")],
            "CORTEX_CACHE_MAX_ENTRY_BYTES",
            "bytes",
        ),
        (
            vec![("CORTEX_CACHE_MAX_ENTRY_BYTES", "0")],
            "CORTEX_CACHE_MAX_ENTRY_BYTES",
            "at least 1",
        ),
        (
            vec![
                ("CORTEX_CACHE_MAX_BYTES", "2097152"),
                ("CORTEX_CACHE_MAX_ENTRY_BYTES", "2097153"),
            ],
            "CORTEX_CACHE_MAX_ENTRY_BYTES",
            "CORTEX_CACHE_MAX_BYTES",
        ),
    ] {
        let err = load_with(&vars, "").unwrap_err();
        assert_eq!(err.setting, setting, "{vars:?}");
        assert!(err.to_string().contains(says), "{vars:?}: {err}");
    }
}
