//! Properties: a stream split anywhere writes exactly what the whole text redacts to; JSON in
//! gives JSON of the same shape out; no input panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use std::sync::Arc;

use cortex_domain::policy::{DetectorSpec, GuardAction, GuardrailRule, GuardrailSpec};
use cortex_guard::Guard;
use proptest::prelude::*;

fn guard(pii: GuardAction) -> Arc<Guard> {
    Arc::new(
        Guard::build(&GuardrailSpec {
            rules: vec![
                GuardrailRule {
                    detector: DetectorSpec::Secrets,
                    action: GuardAction::Redact,
                },
                GuardrailRule {
                    detector: DetectorSpec::Pii { kinds: vec![] },
                    action: pii,
                },
            ],
            scan_responses: true,
        })
        .unwrap(),
    )
}

/// Pieces of text, secrets and personal data (fakes, assembled at run time).
fn fragment() -> impl Strategy<Value = String> {
    let fixed: Vec<String> = vec![
        " ".into(),
        "\n".into(),
        "the ".into(),
        "quick brown fox ".into(),
        "é日本".into(),
        "日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本"
            .into(),
        "@".into(),
        "-".into(),
        ".".into(),
        "+".into(),
        "(".into(),
        ")".into(),
        "a@example.com".into(),
        "mailto:bob@mail.example.org?x".into(),
        "4111 1111 1111 1111".into(),
        "5555-5555-5555-4444".into(),
        "378282246310005".into(),
        "+1 (415) 555-2671".into(),
        "020 7946 0958".into(),
        "DE89 3704 0044 0532 0130 00".into(),
        "123-45-6789".into(),
        format!("{}{}", "sk-", "a1B2".repeat(12)),
        format!("{}{}{}", "sk-", "ant-api03-", "k3Y-".repeat(23)),
        format!("{}{}", "AK", "IAIOSFODNN7EXAMPLE"),
        format!("{}{}", "gh", format_args!("p_{}", "A1b2C3".repeat(6))),
        format!("{}{}", "xo", "xb-123456789012-AbCdEf"),
        format!(
            "-----{} {}-----\n{}\n-----END {}-----",
            "BEGIN",
            ["PRIVATE", " KEY"].concat(),
            "MIIEvQIBADANBgkqhkiG9w0B".repeat(3),
            ["PRIVATE", " KEY"].concat()
        ),
        format!(
            "-----{} {}-----\nMIIEvQ\n\n",
            "BEGIN",
            ["EC PRIVATE", " KEY"].concat()
        ),
        format!(
            "{}.{}.sig_Abc",
            ["ey", "JhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"].concat(),
            ["ey", "JzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6"].concat()
        ),
        format!("{}{}_{}", "ctx", "_Ab12Cd34Ef56", "x9Y".repeat(14) + "Z"),
        "sk-".into(),
        "2024-01-15".into(),
    ];
    prop_oneof![
        4 => proptest::sample::select(fixed),
        1 => "[a-z0-9@.+ -]{0,12}",
        1 => proptest::collection::vec(proptest::char::range('0', '9'), 0..20).prop_map(|v| v.into_iter().collect::<String>()),
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 0..40).prop_map(|v| v.concat())
}

fn split_stream(g: &Arc<Guard>, text: &str, sizes: &[usize]) -> (String, Vec<cortex_guard::Hit>) {
    let mut s = g.stream();
    let mut out = String::new();
    let mut at = 0;
    let mut k = 0;
    while at < text.len() {
        let mut end = (at + sizes[k % sizes.len()]).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        assert_eq!(s.push(&text[at..end], &mut out), None);
        assert!(s.held() <= cortex_guard::MAX_HOLD + 8 * 1024 * 3 + 16 * 1024);
        at = end;
        k += 1;
    }
    assert_eq!(s.finish(&mut out), None);
    (out, s.take_hits())
}

/// A JSON value's shape: every string emptied, object members in an order that does not
/// depend on their (possibly redacted) keys.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(_) => Value::String(String::new()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::Object(o) => {
            let mut members: Vec<Value> = o.values().map(shape).collect();
            members.sort_by_key(|m| m.to_string());
            Value::Array(members)
        }
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn a_split_stream_writes_what_the_whole_text_redacts_to(
        text in text(),
        sizes in proptest::collection::vec(1usize..9, 1..6),
    ) {
        let g = guard(GuardAction::Redact);
        let whole = g.apply(&text);
        let expected = whole.redacted.clone().unwrap_or_else(|| text.clone());
        let (out, hits) = split_stream(&g, &text, &sizes);
        prop_assert_eq!(&out, &expected);
        prop_assert_eq!(hits, whole.hits);
        // With pii only logged, the text is the same except the secrets.
        let g = guard(GuardAction::Log);
        let expected = g.apply(&text).redacted.unwrap_or_else(|| text.clone());
        let (out, _) = split_stream(&g, &text, &sizes);
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn json_in_gives_json_of_the_same_shape_out(
        strings in proptest::collection::vec(text(), 1..6),
        n in 0i64..1000,
    ) {
        let g = guard(GuardAction::Redact);
        let doc = serde_json::json!({
            "model": strings[0],
            "messages": strings.iter().map(|s| serde_json::json!({"role": "user", "content": s})).collect::<Vec<_>>(),
            "n": n,
            strings[strings.len() - 1].clone(): [true, null, 1.5],
        });
        for body in [serde_json::to_vec(&doc).unwrap(), serde_json::to_vec_pretty(&doc).unwrap()] {
            let v = g.apply_json(&body);
            if let Some(out) = v.redacted {
                let after: serde_json::Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(shape(&after), shape(&doc));
                // Each string redacts as the text it decodes to.
                for s in &strings {
                    let r = g.apply(s).redacted.unwrap_or_else(|| s.clone());
                    prop_assert!(after["messages"].as_array().unwrap().iter().any(|m| m["content"] == r.as_str()));
                }
            } else {
                prop_assert!(v.hits.is_empty());
            }
        }
    }

    #[test]
    fn no_bytes_make_it_panic(body in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
        let g = guard(GuardAction::Redact);
        let v = g.apply_json(&body);
        if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
            if let Some(out) = v.redacted {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
            }
        }
        let text = String::from_utf8_lossy(&body);
        let mut cut = cut.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut s = g.stream();
        let mut out = String::new();
        s.push(&text[..cut], &mut out);
        s.push(&text[cut..], &mut out);
        s.finish(&mut out);
        prop_assert_eq!(out, g.apply(&text).redacted.unwrap_or_else(|| text.to_string()));
    }
}

#[test]
fn prose_is_held_back_at_most_max_hold_and_a_long_key_block_is_still_caught() {
    let g = guard(GuardAction::Redact);
    let prose = "The meeting moved to Thursday; bring the notes from last week. ".repeat(160);
    let mut s = g.stream();
    let mut out = String::new();
    for piece in prose.as_bytes().chunks(4) {
        s.push(std::str::from_utf8(piece).unwrap(), &mut out);
        assert!(s.held() <= cortex_guard::MAX_HOLD, "{}", s.held());
    }
    s.finish(&mut out);
    assert_eq!(out, prose);

    // A private key block of 3 KiB, far longer than the usual hold, in 3-byte pieces.
    let kind = ["RSA ", "PRIVATE", " KEY"].concat();
    let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCxAbCdEfGh\n".repeat(50);
    let text = format!("before\n-----BEGIN {kind}-----\n{body}-----END {kind}-----\nafter");
    let mut s = g.stream();
    let mut out = String::new();
    for piece in text.as_bytes().chunks(3) {
        s.push(std::str::from_utf8(piece).unwrap(), &mut out);
        assert!(
            !out.contains("MIIEvQ"),
            "key material written before the block ended"
        );
    }
    s.finish(&mut out);
    assert_eq!(out, "before\n[REDACTED:private_key]\nafter");
    let hits = s.take_hits();
    assert_eq!(
        (hits.len(), hits[0].label.as_str(), hits[0].count),
        (1, "private_key", 1)
    );
}

#[test]
fn a_block_rule_ends_the_stream_before_the_match_is_written() {
    let g = Arc::new(
        Guard::build(&GuardrailSpec {
            rules: vec![GuardrailRule {
                detector: DetectorSpec::Secrets,
                action: GuardAction::Block,
            }],
            scan_responses: true,
        })
        .unwrap(),
    );
    let key = format!("{}{}", "sk-", "a1B2".repeat(12));
    let text = format!(
        "{} here is the key {key} and more{}",
        "word ".repeat(100),
        " after".repeat(40)
    );
    let mut s = g.stream();
    let mut out = String::new();
    let mut blocked = None;
    for piece in text.as_bytes().chunks(4) {
        blocked = s.push(std::str::from_utf8(piece).unwrap(), &mut out);
        if blocked.is_some() {
            break;
        }
    }
    if blocked.is_none() {
        blocked = s.finish(&mut out);
    }
    assert_eq!(blocked, Some("secrets"));
    assert!(!out.contains("sk-"), "{out}");
    assert!(
        out.starts_with("word word"),
        "text before the key went out: {out}"
    );
}
