//! `cortex policies …` as an operator runs it, on SQLite and on PostgreSQL: create (an
//! organization's and a key's), list (table and the admin API's JSON) and delete; the refusals
//! (bad input exits 2 and changes nothing, unknown ids, another organization's key and a taken
//! scope exit 1); one audit event per change, by the CLI, that never spells out a pattern.

use std::path::Path;
use std::process::Output;

use cortex_testkit::TestDb;
use serde_json::{json, Value};

use crate::process::run;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Cli<'a> {
    data: &'a Path,
    env: Vec<(&'a str, &'a str)>,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        run(self.data, args, &self.env)
    }

    /// Runs a command that must succeed; its stdout and stderr.
    fn ok_with_stderr(&self, args: &[&str]) -> (String, String) {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed\nstdout: {}\nstderr: {}",
            text(&output.stdout),
            text(&output.stderr)
        );
        (text(&output.stdout), text(&output.stderr))
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with_stderr(args).0
    }

    /// Runs a command that must fail with `code`; its stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}\nstdout: {}\nstderr: {}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stderr)
    }

    fn policies(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["policies", "list", "--json"];
        args.extend_from_slice(extra);
        let list: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        assert_eq!(list["object"], "list");
        list["data"].as_array().unwrap().clone()
    }

    /// The policy events of the audit log, as exported.
    fn policy_events(&self) -> Vec<Value> {
        self.ok(&["audit", "export"])
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|e| {
                e.get("kind").is_none() && e["action"].as_str().unwrap().starts_with("policy.")
            })
            .collect()
    }
}

const SECRETS_AND_EMAIL: &str = r#"{"rules":[{"detector":{"type":"secrets"},"action":"block"},{"detector":{"type":"pii","kinds":["email"]},"action":"redact"}]}"#;

async fn policies_from_the_cli(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cli = Cli {
        data: &data,
        env: vec![("DATABASE_URL", db.url.as_str())],
    };
    cli.ok(&["migrate"]);
    assert!(cli.policies(&[]).is_empty());
    let table = cli.ok(&["policies", "list"]);
    assert!(
        table.starts_with("ID") && table.contains("GUARDRAILS"),
        "{table}"
    );

    // Bad input: exit 2, the option named, nothing stored, no event.
    let create = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["policies", "create", "--org", "default"];
        args.extend_from_slice(extra);
        args.iter().map(|a| a.to_string()).collect()
    };
    let refusals: [(&[&str], &str); 7] = [
        (
            &[
                "--scope",
                "organization",
                "--guardrails-json",
                r#"{"rules":[{"detector":{"type":"regex","name":"ticket","pattern":"("},"action":"block"}]}"#,
            ],
            "--guardrails-json: guardrails.rules[0].detector.pattern does not compile",
        ),
        (
            &[
                "--scope",
                "organization",
                "--guardrails-json",
                r#"{"rules":[{"detector":{"type":"secrets"},"action":"block"}],"scan":true}"#,
            ],
            "--guardrails-json: unknown field `scan`",
        ),
        (
            &[
                "--scope",
                "organization",
                "--guardrails-json",
                r#"{"rules":[]}"#,
            ],
            "--guardrails-json: guardrails.rules must hold between 1 and 32 rules",
        ),
        (
            &["--scope", "organization", "--guardrails-json", "not json"],
            "--guardrails-json: expected ident",
        ),
        (
            &["--scope", "organization", "--cache-ttl", "0"],
            "--cache-ttl: cache.ttl_seconds must be between 1 and 604800",
        ),
        (
            &["--scope", "key", "--cache-ttl", "60"],
            "--target: is required for a model or key policy",
        ),
        (
            &[
                "--scope",
                "organization",
                "--target",
                "other",
                "--cache-ttl",
                "60",
            ],
            "--target: of an organization policy is the organization's id",
        ),
    ];
    for (args, message) in refusals {
        let args = create(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = cli.fails(2, &args);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // clap's own refusals: an unknown scope, a flag that needs --cache-ttl.
    cli.fails(
        2,
        &create(&["--scope", "planet"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    cli.fails(
        2,
        &create(&["--scope", "organization", "--cache-nonzero-temperature"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(cli.policies(&[]).is_empty(), "a refused policy was stored");
    assert!(cli.policy_events().is_empty());

    // The organization's policy, by the organization's name.
    let (id, stderr) = cli.ok_with_stderr(&[
        "policies",
        "create",
        "--org",
        "default",
        "--scope",
        "organization",
        "--cache-ttl",
        "300",
        "--guardrails-json",
        SECRETS_AND_EMAIL,
    ]);
    let id = id.trim().to_owned();
    assert!(stderr.contains(&id), "{stderr}");
    let listed = cli.policies(&[]);
    assert_eq!(listed.len(), 1);
    let policy = &listed[0];
    assert_eq!(
        policy,
        &json!({
            "id": id,
            "object": "policy",
            "org_id": "default",
            "scope": "organization",
            "target": "default",
            "cache": {"ttl_seconds": 300, "cache_nonzero_temperature": false},
            "guardrails": {
                "rules": [
                    {"detector": {"type": "secrets"}, "action": "block"},
                    {"detector": {"type": "pii", "kinds": ["email"]}, "action": "redact"},
                ],
                "scan_responses": true,
            },
            "version": 1,
            "created_at": policy["created_at"],
            "updated_at": policy["updated_at"],
        })
    );
    let table = cli.ok(&["policies", "list"]);
    let row = table.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        row.contains("secrets→block, pii→redact") && row.contains("300s"),
        "{table}"
    );
    // A second policy for the same scope is refused (exit 1) and changes nothing.
    let stderr = cli.fails(
        1,
        &[
            "policies",
            "create",
            "--org",
            "default",
            "--scope",
            "organization",
            "--cache-ttl",
            "60",
        ],
    );
    assert!(
        stderr.contains("already has a policy") || stderr.contains("has a policy"),
        "{stderr}"
    );
    assert_eq!(cli.policies(&[]).len(), 1);

    // A key's policy, with a custom pattern; its JSON as the admin API's.
    let (_, stderr) = cli.ok_with_stderr(&["keys", "create", "--name", "ci"]);
    let key_id = stderr
        .split("created key ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let created: Value = serde_json::from_str(&cli.ok(&[
        "policies",
        "create",
        "--org",
        "default",
        "--scope",
        "key",
        "--target",
        &key_id,
        "--guardrails-json",
        r#"{"rules":[{"detector":{"type":"regex","name":"ticket","pattern":"TICKET-[0-9]{6}"},"action":"log"}],"scan_responses":false}"#,
        "--json",
    ]))
    .unwrap();
    assert_eq!(created["scope"], "key");
    assert_eq!(created["target"], key_id.as_str());
    assert_eq!(created["cache"], Value::Null);
    assert_eq!(created["guardrails"]["scan_responses"], false);
    assert_eq!(cli.policies(&[]).len(), 2);

    // Another organization cannot name this organization's key, nor an unknown one; an
    // unknown organization is refused too. All exit 1 and store nothing.
    cli.ok(&["orgs", "create", "--name", "research"]);
    for (org, target) in [
        ("research", key_id.as_str()),
        ("default", "no-such-key"),
        ("nowhere", key_id.as_str()),
    ] {
        cli.fails(
            1,
            &[
                "policies",
                "create",
                "--org",
                org,
                "--scope",
                "key",
                "--target",
                target,
                "--cache-ttl",
                "60",
            ],
        );
    }
    assert!(cli.policies(&["--org", "research"]).is_empty());
    assert_eq!(cli.policies(&["--org", "default"]).len(), 2);

    // Delete: an unknown id exits 1; the organization's policy goes.
    cli.fails(1, &["policies", "delete", "no-such-policy"]);
    let (_, stderr) = cli.ok_with_stderr(&["policies", "delete", &id]);
    assert!(stderr.contains(&id), "{stderr}");
    let left = cli.policies(&[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], created["id"]);

    // One event per change, by the CLI, in the policy's organization; never the pattern.
    let events = cli.policy_events();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["policy.create", "policy.create", "policy.delete"]);
    for event in &events {
        assert_eq!(event["actor"], "cli", "{event}");
        assert_eq!(event["org_id"], "default", "{event}");
    }
    let export = cli.ok(&["audit", "export"]);
    assert!(
        !export.contains("TICKET-"),
        "the audit log spells out a pattern"
    );
    assert!(cli.ok(&["audit", "verify"]).starts_with("ok: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_from_the_cli_on_sqlite() {
    let db = TestDb::sqlite();
    policies_from_the_cli(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_from_the_cli_on_postgres() {
    let db = TestDb::postgres().await;
    policies_from_the_cli(&db).await;
    db.cleanup().await;
}
