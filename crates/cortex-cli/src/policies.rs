//! `cortex policies list|create|delete`: gateway policies (SPEC §21, the response cache and
//! guardrails of an organization, a model or a key) managed from the command line. The checks
//! and each change's audit event are `cortex_control::policies`'s, as for the admin API; the
//! command line is the local operator and sees every organization (`Tenant::All`). `--json`
//! prints the admin API's objects (`cortex_server::admin::policies::policy_json`).
//!
//! The guardrails are given whole, as the JSON of the admin API's `guardrails` part
//! (`--guardrails-json '{"rules":[{"detector":{"type":"secrets"},"action":"block"}]}'`): one
//! form covers every detector (patterns, webhooks, personal data kinds) with the API's own
//! strict shape, so nothing is lost between the two doors.
//!
//! Exit codes: 2 for input the rules refuse (clap's usage errors, a spec the domain refuses or a
//! pattern that does not compile, checked before the database is opened, and a target the
//! control layer refuses), so nothing changes; 1 for a change that is refused or fails (an
//! unknown organization, key, model or policy id, a scope that already has a policy).

use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Subcommand, ValueEnum};
use cortex_config::Config;
use cortex_control::{policies, ControlError};
use cortex_domain::policy::{CacheSpec, GuardrailSpec, PolicyScope, PolicySpec};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::{Clock, SystemClock, Tenant};
use cortex_server::admin::list_body;
use cortex_server::admin::policies::policy_json;
use cortex_store::policies::PolicyRow;
use cortex_store::Store;

use crate::ops::open;
use crate::tenancy::{close_store, finish, org_id, print_json, print_table, Stop};

/// The actor recorded in the audit log for command-line changes.
const CLI_ACTOR: &str = "cli";

/// The scopes as the command line spells them (the admin API's words).
#[derive(Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    Organization,
    Model,
    Key,
}

impl From<ScopeArg> for PolicyScope {
    fn from(scope: ScopeArg) -> PolicyScope {
        match scope {
            ScopeArg::Organization => PolicyScope::Organization,
            ScopeArg::Model => PolicyScope::Model,
            ScopeArg::Key => PolicyScope::Key,
        }
    }
}

#[derive(Subcommand)]
pub enum PoliciesCommand {
    /// List policies, of every organization or of one.
    List {
        /// Only this organization's policies (id or name).
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// Print the admin API's JSON (`GET /admin/policies`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a policy; prints its id. With neither --cache-ttl nor --guardrails-json it turns
    /// both off for its scope (an opt-out of the organization's policy).
    Create {
        /// The organization the policy belongs to (id or name).
        #[arg(long, value_name = "ORG")]
        org: String,
        /// What it applies to in the organization.
        #[arg(long, value_enum)]
        scope: ScopeArg,
        /// The model's name or the key's id (for an organization policy: absent, or its id).
        #[arg(long)]
        target: Option<String>,
        /// Cache answers for this many seconds (1 to 604800).
        #[arg(long, value_name = "SECONDS")]
        cache_ttl: Option<u32>,
        /// Also cache answers to requests with a temperature above 0.
        #[arg(long, requires = "cache_ttl")]
        cache_nonzero_temperature: bool,
        /// The guardrails as the admin API's `guardrails` JSON: `{"rules": [{"detector":
        /// {"type": "secrets"}, "action": "block"}], "scan_responses": true}`.
        #[arg(long, value_name = "JSON")]
        guardrails_json: Option<String>,
        /// Print the created policy as the admin API's JSON instead of its id.
        #[arg(long)]
        json: bool,
    },
    /// Delete a policy: its scope falls back to the next less specific policy.
    Delete {
        /// The policy's id.
        id: String,
    },
}

/// What a command does, its input checked.
enum Action {
    List {
        org: Option<String>,
        json: bool,
    },
    Create {
        org: String,
        scope: PolicyScope,
        target: Option<String>,
        spec: PolicySpec,
        json: bool,
    },
    Delete {
        id: String,
    },
}

/// The control layer's messages name the admin API's fields; the command line names its
/// options in front of them.
fn option_message(message: &str) -> String {
    if message.starts_with("cache.") {
        format!("--cache-ttl: {message}")
    } else if message.starts_with("guardrails.") {
        format!("--guardrails-json: {message}")
    } else if let Some(rule) = message.strip_prefix("`target` ") {
        format!("--target: {rule}")
    } else {
        message.to_owned()
    }
}

/// The guardrails JSON read with the domain's strict shape; the message is serde's, without
/// its position (the text is one argument) and never a Rust type name.
fn guardrails(text: &str) -> Result<GuardrailSpec, Stop> {
    serde_json::from_str(text).map_err(|err| {
        let text = err.to_string();
        let head = text.split(" at line").next().unwrap_or(&text);
        if head.contains("::") || head.len() > 300 {
            Stop::Usage("--guardrails-json is not a valid guardrails object".into())
        } else {
            Stop::Usage(format!("--guardrails-json: {head}"))
        }
    })
}

fn check_command(command: PoliciesCommand) -> Result<Action, Stop> {
    Ok(match command {
        PoliciesCommand::List { org, json } => Action::List { org, json },
        PoliciesCommand::Create {
            org,
            scope,
            target,
            cache_ttl,
            cache_nonzero_temperature,
            guardrails_json,
            json,
        } => {
            let spec = PolicySpec {
                cache: cache_ttl.map(|ttl_seconds| CacheSpec {
                    ttl_seconds,
                    cache_nonzero_temperature,
                }),
                guardrails: guardrails_json.as_deref().map(guardrails).transpose()?,
            };
            // Every rule and pattern now, before the database is opened.
            policies::check_spec(&spec).map_err(|e| Stop::Usage(option_message(&e.to_string())))?;
            Action::Create {
                org,
                scope: scope.into(),
                target,
                spec,
                json,
            }
        }
        PoliciesCommand::Delete { id } => Action::Delete { id },
    })
}

pub async fn run(config: &Config, command: PoliciesCommand) -> anyhow::Result<ExitCode> {
    let action = match check_command(command) {
        Ok(action) => action,
        Err(stop) => return finish(Err(stop)),
    };
    let (store, master_key) = open(config).await?;
    let writes = !matches!(action, Action::List { .. });
    let result = execute(&store, action).await;
    close_store(&store, &master_key, writes).await;
    finish(result)
}

/// A control error of a change: bad values are usage errors, an unknown id and a conflict
/// are refusals.
fn refused(what: &'static str) -> impl FnOnce(ControlError) -> Stop {
    move |err| match err {
        ControlError::Invalid(_) => Stop::Usage(option_message(&err.to_string())),
        ControlError::NotFound => Stop::Failed(anyhow!("no such {what}")),
        ControlError::Conflict(message) => Stop::Failed(anyhow!("{message}")),
        other => Stop::Failed(other.into()),
    }
}

async fn execute(store: &Store, action: Action) -> Result<(), Stop> {
    let now = SystemClock.now_millis();
    match action {
        Action::List { org, json } => {
            let tenant = match org {
                Some(org) => Tenant::Org(org_id(store, &org).await?),
                None => Tenant::All,
            };
            let rows = store.list_policies(&tenant).await?;
            if json {
                print_json(&list_body(rows.iter().map(policy_json)).0);
            } else {
                print_policies(&rows);
            }
        }
        Action::Create {
            org,
            scope,
            target,
            spec,
            json,
        } => {
            let org = org_id(store, &org).await?;
            let row = policies::create_policy(
                store,
                &Tenant::All,
                &org,
                scope,
                target.as_deref(),
                &spec,
                CLI_ACTOR,
                "",
                now,
            )
            .await
            .map_err(refused("key or model in that organization"))?;
            eprintln!(
                "created {} policy {} for {} in organization {}",
                row.scope.as_str(),
                row.id,
                row.target,
                row.org_id
            );
            if json {
                print_json(&policy_json(&row));
            } else {
                println!("{}", row.id);
            }
        }
        Action::Delete { id } => {
            policies::delete_policy(store, &Tenant::All, &id, CLI_ACTOR, "", now)
                .await
                .map_err(|err| match err {
                    ControlError::NotFound => Stop::Failed(anyhow!("no policy with id {id:?}")),
                    other => refused("policy")(other),
                })?;
            eprintln!("deleted policy {id}");
        }
    }
    Ok(())
}

/// "secrets→block, pii→redact": detectors and actions, never patterns or webhook URLs.
fn rules_text(spec: &PolicySpec) -> String {
    match &spec.guardrails {
        None => "-".to_owned(),
        Some(guardrails) => guardrails
            .rules
            .iter()
            .map(|rule| format!("{}→{}", rule.detector.name(), rule.action.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn print_policies(rows: &[PolicyRow]) {
    let cells = rows
        .iter()
        .map(|row| {
            // A stored spec this version cannot read is listed as such, not hidden.
            let (cache, rules) = match serde_json::from_str::<PolicySpec>(&row.spec) {
                Ok(spec) => (
                    spec.cache
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |c| format!("{}s", c.ttl_seconds)),
                    rules_text(&spec),
                ),
                Err(_) => ("?".to_owned(), "(unreadable)".to_owned()),
            };
            vec![
                row.id.clone(),
                row.org_id.clone(),
                row.scope.as_str().to_owned(),
                row.target.clone(),
                cache,
                rules,
                millis_to_rfc3339(row.updated_at),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &[
            "ID",
            "ORG",
            "SCOPE",
            "TARGET",
            "CACHE",
            "GUARDRAILS",
            "UPDATED",
        ],
        &cells,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_options() {
        assert_eq!(
            option_message("cache.ttl_seconds must be between 1 and 604800"),
            "--cache-ttl: cache.ttl_seconds must be between 1 and 604800"
        );
        assert_eq!(
            option_message("guardrails.rules[0].detector.pattern does not compile"),
            "--guardrails-json: guardrails.rules[0].detector.pattern does not compile"
        );
        assert_eq!(
            option_message("`target` is required for a model or key policy"),
            "--target: is required for a model or key policy"
        );
        assert_eq!(option_message("something else"), "something else");
    }
}
