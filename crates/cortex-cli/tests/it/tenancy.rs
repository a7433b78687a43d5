//! `cortex orgs …` and `cortex teams …` as an operator runs them, on SQLite and on PostgreSQL:
//! create, list (table and the admin API's JSON), update, members and delete; the refusals
//! (bad values exit 2 and change nothing, unknown ids and conflicts exit 1); and one audit event
//! per change, by the CLI, in the organization it is about.

use std::path::Path;
use std::process::Output;

use cortex_crypto::envelope::MasterKey;
use cortex_store::Store;
use cortex_testkit::TestDb;
use serde_json::{json, Value};

use crate::process::{run, ADMIN_PASSWORD};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command run against one database.
struct Cli<'a> {
    data: &'a Path,
    env: Vec<(&'a str, &'a str)>,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        run(self.data, args, &self.env)
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed\nstdout: {}\nstderr: {}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stdout)
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

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn orgs(&self) -> Value {
        self.json(&["orgs", "list", "--json"])
    }

    fn teams(&self) -> Value {
        self.json(&["teams", "list", "--json"])
    }

    /// Every audit event (no checkpoints).
    fn events(&self) -> Vec<Value> {
        self.ok(&["audit", "export"])
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|event| event.get("kind").is_none())
            .collect()
    }

    /// The organization and team events, as (action, target, org_id), in order.
    fn tenancy_events(&self) -> Vec<(String, String, String)> {
        self.events()
            .iter()
            .filter(|e| {
                let action = e["action"].as_str().unwrap();
                action.starts_with("org.") || action.starts_with("team.")
            })
            .map(|e| {
                assert_eq!(e["actor"], "cli", "{e}");
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["target"].as_str().unwrap().to_owned(),
                    e["org_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// The one object of a list with `id`.
fn find<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The database as the CLI opens it, with the audit chain under the master key the CLI made,
/// so the users this test adds are audited on the same chain.
async fn keyed_store(url: &str, data: &Path) -> Store {
    let store = Store::open(url).await.unwrap();
    let key = std::fs::read_to_string(data.join("master.key")).unwrap();
    let key = MasterKey::parse(key.trim()).unwrap();
    cortex_control::ops::audit::open_chain(store, &key, 1)
        .await
        .unwrap()
}

async fn add_user(store: &Store, id: &str, username: &str, org_id: &str) {
    let hash = cortex_crypto::password::hash_password(&ADMIN_PASSWORD.to_owned().into()).unwrap();
    store
        .create_user(
            &cortex_store::users::NewUser {
                id,
                username,
                password_hash: &hash,
                role: cortex_domain::Role::Developer,
                must_change_password: false,
                org_id,
                budget: None,
            },
            &cortex_domain::audit::NewAuditEvent::new("test", "user.create", id).with_org(org_id),
            2,
        )
        .await
        .unwrap();
}

async fn orgs_and_teams_from_the_cli(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cli = Cli {
        data: &data,
        env: vec![("DATABASE_URL", db.url.as_str())],
    };
    cli.ok(&["migrate"]);

    // The default organization is there from the start, in the table and in the JSON.
    let table = cli.ok(&["orgs", "list"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("NAME") && header.contains("BUDGET"),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("default ")), "{table}");
    assert_eq!(cli.orgs()["object"], "list");
    assert_eq!(find(&cli.orgs(), "default")["object"], "organization");

    // Create, with every option.
    let research = cli
        .ok(&[
            "orgs",
            "create",
            "--name",
            "research",
            "--budget-usd",
            "250",
            "--budget-period",
            "monthly",
            "--tokens-per-minute",
            "100000",
            "--allowed-model",
            "llama",
            "--allowed-model",
            "mistral",
        ])
        .trim()
        .to_owned();
    assert_eq!(research.len(), 32, "{research}");
    let org = find(&cli.orgs(), &research).clone();
    let created_at = org["created_at"].clone();
    assert_eq!(
        org,
        json!({
            "id": research,
            "object": "organization",
            "name": "research",
            "budget_usd": 250.0,
            "budget_period": "monthly",
            "tokens_per_minute": 100000,
            "allowed_models": ["llama", "mistral"],
            "created_at": created_at,
        })
    );
    let table = cli.ok(&["orgs", "list"]);
    let row = table.lines().find(|l| l.starts_with(&research)).unwrap();
    for cell in ["research", "$250 monthly", "100000", "llama,mistral"] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    // --json on create answers the object itself.
    let plain = cli.json(&["orgs", "create", "--name", "plain", "--json"]);
    assert_eq!(plain["name"], "plain");
    assert_eq!(plain["budget_usd"], Value::Null);
    assert_eq!(plain["allowed_models"], Value::Null);
    let plain = plain["id"].as_str().unwrap().to_owned();

    // Bad input: exit 2, a message naming the option, and nothing changed or audited.
    let orgs_before = cli.orgs();
    let events_before = cli.events().len();
    let bad: [(&[&str], &str); 12] = [
        (
            &[
                "orgs",
                "create",
                "--name",
                "x",
                "--budget-usd",
                "5",
                "--budget-period",
                "weekly",
            ],
            "--budget-period",
        ),
        (
            &["orgs", "create", "--name", "x", "--budget-usd", "5"],
            "--budget-period",
        ),
        (
            &["orgs", "create", "--name", "x", "--budget-period", "daily"],
            "--budget-usd",
        ),
        (
            &[
                "orgs",
                "create",
                "--name",
                "x",
                "--budget-usd",
                "-1",
                "--budget-period",
                "daily",
            ],
            "--budget-usd",
        ),
        (
            &[
                "orgs",
                "create",
                "--name",
                "x",
                "--budget-usd",
                "NaN",
                "--budget-period",
                "daily",
            ],
            "--budget-usd",
        ),
        (
            &["orgs", "create", "--name", "x", "--tokens-per-minute", "0"],
            "--tokens-per-minute",
        ),
        (&["orgs", "create", "--name", "a/b"], "--name"),
        (
            &["orgs", "create", "--name", "x", "--allowed-model", ""],
            "--allowed-model",
        ),
        (&["orgs", "update", &research], "nothing to change"),
        (
            &[
                "orgs",
                "update",
                &research,
                "--no-budget",
                "--budget-usd",
                "1",
                "--budget-period",
                "daily",
            ],
            "--no-budget",
        ),
        (
            &[
                "orgs",
                "update",
                &research,
                "--all-models",
                "--allowed-model",
                "llama",
            ],
            "--all-models",
        ),
        (
            &[
                "orgs",
                "update",
                &research,
                "--tokens-per-minute",
                "1000000000001",
            ],
            "--tokens-per-minute",
        ),
    ];
    for (args, option) in bad {
        let message = cli.fails(2, args);
        assert!(message.contains(option), "{args:?}: {message}");
    }
    assert_eq!(cli.orgs(), orgs_before);
    assert_eq!(cli.events().len(), events_before);

    // Refusals of the control layer: exit 1 with its message.
    let taken = cli.fails(1, &["orgs", "create", "--name", "research"]);
    assert!(
        taken.contains("an organization with that name exists"),
        "{taken}"
    );
    let default = cli.fails(1, &["orgs", "delete", "default"]);
    assert!(
        default.contains("the default organization cannot be deleted"),
        "{default}"
    );
    for args in [
        &["orgs", "update", "no-such-org", "--name", "x"][..],
        &["orgs", "delete", "no-such-org"],
        &["teams", "list", "--org", "no-such-org"],
        &["teams", "create", "--org", "no-such-org", "--name", "x"],
    ] {
        let message = cli.fails(1, args);
        assert!(
            message.contains("no organization with id or name \"no-such-org\""),
            "{args:?}: {message}"
        );
    }
    for args in [
        &["teams", "update", "no-such-team", "--name", "x"][..],
        &["teams", "delete", "no-such-team"],
        &["teams", "members", "no-such-team", "--clear"],
    ] {
        let message = cli.fails(1, args);
        assert!(
            message.contains("no team with id \"no-such-team\""),
            "{args:?}: {message}"
        );
    }
    assert_eq!(cli.orgs(), orgs_before);
    assert_eq!(cli.events().len(), events_before);

    // Update: set, clear, and address an organization by its name.
    let updated = cli.json(&[
        "orgs",
        "update",
        &research,
        "--name",
        "research-2",
        "--no-budget",
        "--tokens-per-minute",
        "5",
        "--all-models",
        "--json",
    ]);
    assert_eq!(updated["name"], "research-2");
    assert_eq!(updated["budget_usd"], Value::Null);
    assert_eq!(updated["budget_period"], Value::Null);
    assert_eq!(updated["tokens_per_minute"], 5);
    assert_eq!(updated["allowed_models"], Value::Null);
    let table = cli.ok(&[
        "orgs",
        "update",
        "research-2",
        "--budget-usd",
        "10.5",
        "--budget-period",
        "daily",
        "--no-tokens-per-minute",
        "--allowed-model",
        "llama",
    ]);
    assert!(table.starts_with("ID"), "{table}");
    let org = find(&cli.orgs(), &research).clone();
    assert_eq!(org["name"], "research-2");
    assert_eq!(org["budget_usd"], 10.5);
    assert_eq!(org["budget_period"], "daily");
    assert_eq!(org["tokens_per_minute"], Value::Null);
    assert_eq!(org["allowed_models"], json!(["llama"]));
    assert_eq!(org["created_at"], created_at);

    // Teams.
    let nlp = cli
        .ok(&[
            "teams",
            "create",
            "--org",
            &research,
            "--name",
            "nlp",
            "--budget-usd",
            "20",
            "--budget-period",
            "daily",
            "--tokens-per-minute",
            "200000",
        ])
        .trim()
        .to_owned();
    let ops = cli.json(&[
        "teams", "create", "--org", "default", "--name", "ops", "--json",
    ]);
    assert_eq!(ops["org_id"], "default");
    let ops = ops["id"].as_str().unwrap().to_owned();
    let team = find(&cli.teams(), &nlp).clone();
    assert_eq!(
        team,
        json!({
            "id": nlp,
            "object": "team",
            "org_id": research,
            "name": "nlp",
            "budget_usd": 20.0,
            "budget_period": "daily",
            "tokens_per_minute": 200000,
            "members": [],
            "created_at": team["created_at"],
        })
    );
    assert_eq!(
        ids(&cli.json(&["teams", "list", "--org", &research, "--json"])),
        [nlp.as_str()]
    );
    assert_eq!(
        ids(&cli.json(&["teams", "list", "--org", "research-2", "--json"])),
        [nlp.as_str()]
    );
    assert_eq!(
        ids(&cli.json(&["teams", "list", "--org", "default", "--json"])),
        [ops.as_str()]
    );
    let table = cli.ok(&["teams", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&nlp)).unwrap();
    for cell in ["research-2", "nlp", "$20 daily", "200000"] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    let taken = cli.fails(1, &["teams", "create", "--org", &research, "--name", "nlp"]);
    assert!(
        taken.contains("the organization has a team with that name"),
        "{taken}"
    );
    let half = cli.fails(
        2,
        &[
            "teams",
            "create",
            "--org",
            &research,
            "--name",
            "x",
            "--budget-usd",
            "1",
        ],
    );
    assert!(half.contains("--budget-period"), "{half}");
    let bad_period = cli.fails(
        2,
        &[
            "teams",
            "update",
            &nlp,
            "--budget-usd",
            "1",
            "--budget-period",
            "yearly",
        ],
    );
    assert!(bad_period.contains("--budget-period"), "{bad_period}");
    let nothing = cli.fails(2, &["teams", "update", &nlp]);
    assert!(nothing.contains("nothing to change"), "{nothing}");

    // Members: users of the team's organization only, by id or username; replaced each time.
    let store = keyed_store(&db.url, &data).await;
    add_user(&store, "u-ria", "ria", &research).await;
    add_user(&store, "u-sam", "sam", &research).await;
    add_user(&store, "u-dan", "dan", "default").await;
    store.close().await;
    let members = cli.json(&[
        "teams", "members", &nlp, "--user", "ria", "--user", "u-sam", "--json",
    ]);
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    let table = cli.ok(&["teams", "members", &nlp, "--user", "sam"]);
    assert!(table.lines().nth(1).unwrap().contains("sam"), "{table}");
    assert_eq!(find(&cli.teams(), &nlp)["members"], json!(["u-sam"]));
    let events_before = cli.events().len();
    let outsider = cli.fails(2, &["teams", "members", &nlp, "--user", "dan"]);
    assert!(
        outsider.contains("--user: must name users of the team's organization"),
        "{outsider}"
    );
    let ghost = cli.fails(1, &["teams", "members", &nlp, "--user", "ghost"]);
    assert!(
        ghost.contains("--user: no user with id or username \"ghost\""),
        "{ghost}"
    );
    let none = cli.fails(2, &["teams", "members", &nlp]);
    assert!(none.contains("--clear"), "{none}");
    cli.fails(2, &["teams", "members", &nlp, "--clear", "--user", "sam"]);
    assert_eq!(find(&cli.teams(), &nlp)["members"], json!(["u-sam"]));
    assert_eq!(cli.events().len(), events_before);
    let cleared = cli.json(&["teams", "members", &nlp, "--clear", "--json"]);
    assert_eq!(cleared["members"], json!([]));

    let team = cli.json(&[
        "teams",
        "update",
        &nlp,
        "--name",
        "nlp-2",
        "--no-budget",
        "--no-tokens-per-minute",
        "--json",
    ]);
    assert_eq!(team["name"], "nlp-2");
    assert_eq!(team["budget_usd"], Value::Null);
    assert_eq!(team["tokens_per_minute"], Value::Null);
    let team = cli.json(&[
        "teams",
        "update",
        &nlp,
        "--budget-usd",
        "3",
        "--budget-period",
        "total",
        "--json",
    ]);
    assert_eq!(team["name"], "nlp-2");
    assert_eq!(team["budget_usd"], 3.0);
    assert_eq!(team["budget_period"], "total");

    // An organization with users cannot be deleted; once empty it goes, with its teams.
    let in_use = cli.fails(1, &["orgs", "delete", &research]);
    assert!(
        in_use.contains("the organization still has 2 users and 0 live keys"),
        "{in_use}"
    );
    assert!(ids(&cli.orgs()).contains(&research));
    cli.ok(&["users", "erase", "ria"]);
    cli.ok(&["users", "erase", "sam"]);
    cli.ok(&["orgs", "delete", "research-2"]);
    cli.ok(&["orgs", "delete", &plain]);
    assert_eq!(ids(&cli.orgs()), ["default"]);
    assert_eq!(ids(&cli.teams()), [ops.as_str()]);
    cli.ok(&["teams", "delete", &ops]);
    assert_eq!(ids(&cli.teams()), Vec::<String>::new());

    // One event per change, by the CLI, in the organization it concerns; none for a refusal.
    let expected: Vec<(String, String, String)> = [
        ("org.create", research.as_str(), research.as_str()),
        ("org.create", plain.as_str(), plain.as_str()),
        ("org.update", research.as_str(), research.as_str()),
        ("org.update", research.as_str(), research.as_str()),
        ("team.create", nlp.as_str(), research.as_str()),
        ("team.create", ops.as_str(), "default"),
        ("team.members", nlp.as_str(), research.as_str()),
        ("team.members", nlp.as_str(), research.as_str()),
        ("team.members", nlp.as_str(), research.as_str()),
        ("team.update", nlp.as_str(), research.as_str()),
        ("team.update", nlp.as_str(), research.as_str()),
        ("org.delete", research.as_str(), research.as_str()),
        ("org.delete", plain.as_str(), plain.as_str()),
        ("team.delete", ops.as_str(), "default"),
    ]
    .iter()
    .map(|(a, t, o)| ((*a).to_owned(), (*t).to_owned(), (*o).to_owned()))
    .collect();
    assert_eq!(cli.tenancy_events(), expected);
    let details: Vec<Value> = cli
        .events()
        .into_iter()
        .filter(|e| e["action"] == "org.create" && e["target"] == research.as_str())
        .map(|e| e["details"].clone())
        .collect();
    assert_eq!(details[0]["budget_period"], "monthly");
    assert_eq!(details[0]["allowed_models"], json!(["llama", "mistral"]));
    assert!(cli.ok(&["audit", "verify"]).starts_with("ok: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_and_teams_from_the_cli_on_sqlite() {
    let db = TestDb::sqlite();
    orgs_and_teams_from_the_cli(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_and_teams_from_the_cli_on_postgres() {
    let db = TestDb::postgres().await;
    orgs_and_teams_from_the_cli(&db).await;
    db.cleanup().await;
}
