//! A corpus per detector: what must be found, what must not. Every secret here is FAKE and
//! built by concatenation at run time, so secret scanners on the repository see no key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use cortex_domain::policy::{DetectorSpec, GuardAction, GuardrailRule, GuardrailSpec, PiiKind};
use cortex_guard::{Guard, GuardBuildError};

fn guard(rules: Vec<(DetectorSpec, GuardAction)>) -> Guard {
    Guard::build(&GuardrailSpec {
        rules: rules
            .into_iter()
            .map(|(detector, action)| GuardrailRule { detector, action })
            .collect(),
        scan_responses: true,
    })
    .unwrap()
}

fn default_guard() -> Guard {
    guard(vec![
        (DetectorSpec::Secrets, GuardAction::Redact),
        (DetectorSpec::Pii { kinds: vec![] }, GuardAction::Redact),
    ])
}

/// The labels found in `text`, in order.
fn labels(g: &Guard, text: &str) -> Vec<String> {
    g.scan(text).iter().map(|f| f.label.to_string()).collect()
}

fn rep(unit: &str, n: usize) -> String {
    unit.repeat(n)
}

// Fake secrets, assembled so no literal in this file looks like one.
fn openai() -> String {
    format!("{}{}", "sk-", rep("a1B2", 12))
}
fn openai_proj() -> String {
    format!("{}{}{}", "sk-", "proj-", rep("Zx9_-q", 26))
}
fn anthropic() -> String {
    format!("{}{}{}AA", "sk-", "ant-api03-", rep("k3Y-", 23))
}
fn aws() -> String {
    format!("{}{}", "AK", "IAIOSFODNN7EXAMPLE")
}
fn github() -> String {
    format!("{}{}", "gh", format_args!("p_{}", rep("A1b2C3", 6)))
}
fn github_pat() -> String {
    format!(
        "{}{}",
        "github_",
        format_args!("pat_{}", rep("11AbC_dE", 10))
    )
}
fn slack() -> String {
    format!(
        "{}{}",
        "xo", "xb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
    )
}
fn pem_body() -> String {
    format!(
        "{}\n{}\n{}",
        rep("MIIEvQIBADANBgkqhkiG9w0B", 2),
        rep("AQEFAASCBKcwggSjAgEAAoIB", 2),
        "AQCx=="
    )
}
fn pem() -> String {
    let kind = ["RSA ", "PRIVATE", " KEY"].concat();
    format!(
        "-----{} {}-----\n{}\n-----END {}-----",
        "BEGIN",
        kind,
        pem_body(),
        kind
    )
}
fn jwt() -> String {
    format!(
        "{}.{}.{}",
        ["ey", "JhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"].concat(),
        ["ey", "JzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"].concat(),
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
}
fn cortex() -> String {
    format!("{}{}_{}", "ctx", "_Ab12Cd34Ef56", rep("x9Y", 14) + "Z")
}

#[test]
fn secrets_are_found_with_their_labels() {
    let g = default_guard();
    for (secret, label) in [
        (openai(), "openai_key"),
        (openai_proj(), "openai_key"),
        (anthropic(), "anthropic_key"),
        (aws(), "aws_access_key"),
        (github(), "github_token"),
        (github_pat(), "github_token"),
        (slack(), "slack_token"),
        (pem(), "private_key"),
        (jwt(), "jwt"),
        (cortex(), "cortex_key"),
    ] {
        for text in [
            secret.clone(),
            format!("my key is {secret}, keep it safe"),
            format!("key=\"{secret}\"\n"),
            format!("task {secret} "),
        ] {
            let found = g.scan(&text);
            assert_eq!(found.len(), 1, "{label} in {text:?}: {found:?}");
            assert_eq!(found[0].label, label);
            assert_eq!(&text[found[0].start..found[0].end], secret, "{label}");
            let redacted = g.apply(&text).redacted.unwrap();
            assert!(!redacted.contains(&secret), "{label}");
            assert!(redacted.contains(&format!("[REDACTED:{label}]")), "{label}");
        }
    }
}

#[test]
fn secret_look_alikes_are_not_found() {
    let g = guard(vec![(DetectorSpec::Secrets, GuardAction::Block)]);
    for text in [
        "we use sk-learn and sk-learn-contrib for this".to_string(),
        format!("mask_{}", openai()),
        format!("task-{}", openai()),
        format!("x{}", github()),
        format!("{}{}", "sk-", rep("abcdefgh", 6)), // no digits: a word, not a key
        format!("{}{}", "sk-", rep("a1", 8)),       // too short
        format!("{}{}", "AK", "IAIOSFODNN7EXAMPL"), // 15 characters
        format!("{}{}X", "AK", "IAIOSFODNN7EXAMPLE"), // 17 characters
        format!("{}{}", "gh", format_args!("p_{}", rep("A1", 10))),
        "xoxb-hello and xox".to_string(),
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----".to_string(),
        "-----BEGIN CERTIFICATE-----".to_string(),
        "eyJust a word. eyJ.eyJ.x".to_string(),
        format!("{}{}", "ctx", "_short_key"),
        format!("{}{}_{}", "ctx", "_Ab12Cd34Ef56", rep("x", 42)),
    ] {
        assert!(
            labels(&g, &text).is_empty(),
            "{text:?}: {:?}",
            labels(&g, &text)
        );
        assert_eq!(g.apply(&text).blocked, None);
    }
}

#[test]
fn anthropic_keys_win_over_openai() {
    let g = default_guard();
    assert_eq!(labels(&g, &anthropic()), ["anthropic_key"]);
}

#[test]
fn a_private_key_block_without_end_is_still_redacted() {
    let g = default_guard();
    let kind = ["EC ", "PRIVATE", " KEY"].concat();
    let text = format!("here:\n-----BEGIN {kind}-----\n{}\n\nthanks", pem_body());
    let redacted = g.apply(&text).redacted.unwrap();
    assert_eq!(redacted, "here:\n[REDACTED:private_key]\n\nthanks");
}

#[test]
fn emails_are_found_in_prose_urls_and_mailto() {
    let g = guard(vec![(
        DetectorSpec::Pii {
            kinds: vec![PiiKind::Email],
        },
        GuardAction::Redact,
    )]);
    for (text, email) in [
        (
            "write to alice.smith+tag@example.co.uk.",
            "alice.smith+tag@example.co.uk",
        ),
        ("https://x.com/u/alice@example.com?q=1", "alice@example.com"),
        ("<a href=\"mailto:bob@example.org\">", "bob@example.org"),
        (
            "(carol_99@mail.example-corp.com)",
            "carol_99@mail.example-corp.com",
        ),
    ] {
        let found = g.scan(text);
        assert_eq!(found.len(), 1, "{text}");
        assert_eq!(&text[found[0].start..found[0].end], email);
    }
    for text in [
        "@handle on social",
        "a@b",
        "user@localhost",
        "x@123.456",
        "foo@-bad.com",
        "me@.example.com",
        ".@example.com",
    ] {
        assert!(labels(&g, text).is_empty(), "{text}");
    }
}

#[test]
fn payment_cards_must_pass_luhn() {
    let g = guard(vec![(
        DetectorSpec::Pii {
            kinds: vec![PiiKind::PaymentCard],
        },
        GuardAction::Redact,
    )]);
    for card in [
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "4111111111111111",
    ] {
        let text = format!("card: {card}, exp 12/30");
        let found = g.scan(&text);
        assert_eq!(found.len(), 1, "{card}");
        assert_eq!(&text[found[0].start..found[0].end], card);
    }
    for text in [
        "4111 1111 1111 1112",
        "5555-5555-5555-4445",
        "378282246310006",
        "0000 0000 0000 0000",
        "order 41111111111111111111",
        "v4111111111111111",
        "1234 5678",
    ] {
        assert!(labels(&g, text).is_empty(), "{text}");
    }
}

#[test]
fn ibans_must_pass_mod97() {
    let g = guard(vec![(
        DetectorSpec::Pii {
            kinds: vec![PiiKind::Iban],
        },
        GuardAction::Redact,
    )]);
    for iban in [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "FR14 2004 1010 0505 0001 3M02 606",
    ] {
        let text = format!("pay to {iban} today");
        let found = g.scan(&text);
        assert_eq!(found.len(), 1, "{iban}");
        assert_eq!(&text[found[0].start..found[0].end], iban);
    }
    for text in [
        "DE88 3704 0044 0532 0130 00",
        "GB82WEST12345698765433",
        "XDE89370400440532013000",
        "DE89 3704",
    ] {
        assert!(labels(&g, text).is_empty(), "{text}");
    }
}

#[test]
fn us_ssns_skip_never_issued_numbers() {
    let g = guard(vec![(
        DetectorSpec::Pii {
            kinds: vec![PiiKind::UsSsn],
        },
        GuardAction::Redact,
    )]);
    assert_eq!(labels(&g, "ssn 123-45-6789."), ["us_ssn"]);
    assert_eq!(labels(&g, "ssn: 078-05-1120"), ["us_ssn"]);
    for text in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-12-3456",
        "123-00-4567",
        "123-45-0000",
        "123456789",
        "1123-45-6789",
        "123-45-67890",
        "555-123-45-6789",
    ] {
        assert!(labels(&g, text).is_empty(), "{text}");
    }
}

#[test]
fn phones_in_common_forms_but_not_dates_versions_or_bare_numbers() {
    let g = guard(vec![(
        DetectorSpec::Pii {
            kinds: vec![PiiKind::Phone],
        },
        GuardAction::Redact,
    )]);
    for phone in [
        "+14155552671",
        "+1 415 555 2671",
        "+1 (415) 555-2671",
        "+44 20 7946 0958",
        "+33 6 12 34 56 78",
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "1 415 555 2671",
        "020 7946 0958",
    ] {
        let text = format!("call {phone} now");
        let found = g.scan(&text);
        assert_eq!(found.len(), 1, "{phone}: {found:?}");
        assert_eq!(&text[found[0].start..found[0].end], phone);
    }
    for text in [
        "on 2024-01-15 at 10:30",
        "version 1.2.3.4",
        "ip 192.168.100.200",
        "order 14155552671",
        "call 555-2671",
        "123-456-7890",
        "+0 123 456 789",
        "+12",
        "10 20 30 40 50",
    ] {
        assert!(labels(&g, text).is_empty(), "{text}");
    }
}

#[test]
fn pii_kinds_filter_what_is_looked_for() {
    let g = guard(vec![(
        DetectorSpec::Pii {
            kinds: vec![PiiKind::Email],
        },
        GuardAction::Redact,
    )]);
    assert_eq!(labels(&g, "a@example.com 4111 1111 1111 1111"), ["email"]);
    let g = default_guard();
    assert_eq!(
        labels(&g, "a@example.com 4111 1111 1111 1111"),
        ["email", "payment_card"]
    );
}

#[test]
fn custom_patterns_are_labelled_with_their_name_and_bad_ones_name_the_rule() {
    let g = guard(vec![(
        DetectorSpec::Regex {
            name: "ticket".into(),
            pattern: "TCK-[0-9]{6}".into(),
        },
        GuardAction::Redact,
    )]);
    assert_eq!(
        g.apply("see TCK-123456.").redacted.unwrap(),
        "see [REDACTED:ticket]."
    );
    let spec = |pattern: &str| GuardrailSpec {
        rules: vec![
            GuardrailRule {
                detector: DetectorSpec::Secrets,
                action: GuardAction::Log,
            },
            GuardrailRule {
                detector: DetectorSpec::Regex {
                    name: "x".into(),
                    pattern: pattern.into(),
                },
                action: GuardAction::Log,
            },
        ],
        scan_responses: true,
    };
    let error = Guard::build(&spec("secret(unclosed")).unwrap_err();
    assert_eq!(error, GuardBuildError::Pattern { rule: 1 });
    assert!(!error.to_string().contains("secret"), "{error}");
    // Within 1000 characters but far beyond the size limit once compiled.
    assert!(Guard::build(&spec("(\\w{100}){100}")).is_err());
    // Empty matches redact nothing.
    let g = guard(vec![(
        DetectorSpec::Regex {
            name: "e".into(),
            pattern: "x*".into(),
        },
        GuardAction::Redact,
    )]);
    assert_eq!(g.apply("abc").redacted, None);
}

#[test]
fn block_names_the_detector_and_wins_over_overlapping_redactions() {
    let g = guard(vec![
        (DetectorSpec::Pii { kinds: vec![] }, GuardAction::Redact),
        (
            DetectorSpec::Regex {
                name: "wide".into(),
                pattern: "example\\.com and more".into(),
            },
            GuardAction::Block,
        ),
    ]);
    let text = "mail a@example.com and more";
    let found = g.scan(text);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].action, GuardAction::Block);
    let v = g.apply(text);
    assert_eq!(v.blocked, Some("regex"));
    assert_eq!(v.redacted, None);
    // A log finding never hides an overlapping redaction.
    let g = guard(vec![
        (
            DetectorSpec::Regex {
                name: "wide".into(),
                pattern: "mail a@".into(),
            },
            GuardAction::Log,
        ),
        (DetectorSpec::Pii { kinds: vec![] }, GuardAction::Redact),
    ]);
    assert_eq!(
        g.apply(text).redacted.unwrap(),
        "mail [REDACTED:email] and more"
    );
}

#[test]
fn hits_count_per_label_and_debug_never_shows_matched_text() {
    let g = guard(vec![
        (DetectorSpec::Secrets, GuardAction::Redact),
        (DetectorSpec::Pii { kinds: vec![] }, GuardAction::Log),
    ]);
    let key = openai();
    let text = format!("{key} and {key}, mail a@example.com");
    let v = g.apply(&text);
    let hits: Vec<_> = v
        .hits
        .iter()
        .map(|h| (h.label.as_str(), h.count, h.action))
        .collect();
    assert_eq!(
        hits,
        [
            ("openai_key", 2, GuardAction::Redact),
            ("email", 1, GuardAction::Log)
        ]
    );
    let debug = format!(
        "{v:?} {:?} {:?}",
        g.scan(&text),
        g.apply_json(format!("{text:?}").as_bytes())
    );
    assert!(!debug.contains(&key), "{debug}");
    assert!(!debug.contains("a@example.com"), "{debug}");
    assert!(!debug.contains("[REDACTED"), "{debug}");
}

#[test]
fn json_bodies_are_redacted_string_by_string_and_stay_valid() {
    let g = default_guard();
    let pem_json = serde_json::to_string(&pem()).unwrap();
    assert!(pem_json.contains("\\n"));
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":{pem_json}}},{{"role":"user","content":"mail al\u0069ce\u0040example.com or 4111 1111 1111 1111"}}],"max_tokens":256,"{key}":[1,true,null]}}"#,
        key = openai()
    );
    let before: serde_json::Value = serde_json::from_str(&body).unwrap();
    let v = g.apply_json(body.as_bytes());
    assert_eq!(v.blocked, None);
    let out = String::from_utf8(v.redacted.unwrap()).unwrap();
    let after: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(after["messages"][0]["content"], "[REDACTED:private_key]");
    assert_eq!(
        after["messages"][1]["content"],
        "mail [REDACTED:email] or [REDACTED:payment_card]"
    );
    assert_eq!(after["model"], before["model"]);
    assert_eq!(after["max_tokens"], 256);
    assert_eq!(after["[REDACTED:openai_key]"], before[openai().as_str()]);
    // Untouched bytes stay as they were.
    assert!(out.starts_with(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"#));
    assert!(out.ends_with(r#":[1,true,null]}"#));
    let labels: Vec<_> = v.hits.iter().map(|h| h.label.as_str()).collect();
    assert_eq!(
        labels,
        ["private_key", "email", "payment_card", "openai_key"]
    );
}

#[test]
fn clean_json_and_invalid_json_are_handled() {
    let g = default_guard();
    let v = g
        .apply_json(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi\nthere 42"}]}"#);
    assert_eq!(
        (v.blocked, v.redacted.is_none(), v.hits.len()),
        (None, true, 0)
    );
    // Not JSON: scanned as text.
    let v = g.apply_json(b"not json: a@example.com");
    assert_eq!(v.redacted.unwrap(), b"not json: [REDACTED:email]");
    // A lone surrogate serde_json will not decode: scanned as text, nothing lost.
    let v = g.apply_json(br#"{"a":"\ud800 a@example.com"}"#);
    assert!(v.redacted.is_some());
    // Invalid UTF-8: scanned lossily.
    let v = g.apply_json(b"\xff a@example.com");
    assert!(String::from_utf8(v.redacted.unwrap())
        .unwrap()
        .contains("[REDACTED:email]"));
}

#[test]
fn webhooks_are_listed_not_run() {
    let g = guard(vec![
        (DetectorSpec::Secrets, GuardAction::Block),
        (
            DetectorSpec::Webhook {
                url: "https://scan.example/v1".into(),
                timeout_ms: 250,
                fail_open: true,
            },
            GuardAction::Log,
        ),
    ]);
    assert_eq!(g.webhooks().len(), 1);
    assert_eq!(
        (
            g.webhooks()[0].rule,
            g.webhooks()[0].timeout_ms,
            g.webhooks()[0].fail_open
        ),
        (1, 250, true)
    );
    assert!(g.scan_responses());
}

#[test]
fn hostile_repetitions_stay_linear() {
    // Each of these would cost a window's read per literal if the scan were not linear (a
    // quadratic scan takes minutes here, in a debug build).
    let g = default_guard();
    let kind = ["RSA ", "PRIVATE", " KEY"].concat();
    for unit in [
        "sk-".to_string(),
        "eyJ-".to_string(),
        "eyJhbGciOiJIUzI1NiIsInR5cCI6.".to_string(),
        format!("-----BEGIN {kind}-----\n"),
        "1 ".to_string(),
        "a@".to_string(),
        "a.b@".to_string(),
        "DE89 ".to_string(),
        "+1 ".to_string(),
    ] {
        let text = unit.repeat(256 * 1024 / unit.len());
        let started = std::time::Instant::now();
        let _ = g.apply(&text);
        let mut s = std::sync::Arc::new(default_guard()).stream();
        let mut out = String::new();
        for piece in text.as_bytes().chunks(7) {
            s.push(std::str::from_utf8(piece).unwrap(), &mut out);
        }
        s.finish(&mut out);
        let took = started.elapsed();
        eprintln!("{unit:?}: {took:?}");
        assert!(took.as_secs() < 10, "{unit:?}: {took:?}");
    }
}
