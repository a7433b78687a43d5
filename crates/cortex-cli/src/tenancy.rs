//! `cortex orgs list|create|update|delete` and `cortex teams list|create|update|delete|members`:
//! organizations and teams (SPEC §18) managed from the command line. The rules and each change's
//! audit event are `cortex_control::orgs`'s, as for the admin API; the command line is the local
//! operator and sees every organization (`Tenant::All`, like an admin of `default`). `--json`
//! prints the admin API's objects (`cortex_server::admin::orgs::{org_json, team_json}`).
//!
//! Exit codes: 2 for input the rules refuse (clap's usage errors, and every value the control
//! layer's checks refuse, checked before the database is opened, so nothing changes); 1 for a
//! change that is refused or fails (an unknown id, a taken name, `default`, an organization still
//! in use).

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use cortex_config::Config;
use cortex_control::orgs::{self, Limits};
use cortex_control::ControlError;
use cortex_crypto::envelope::MasterKey;
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::{Budget, Clock, SystemClock, Tenant};
use cortex_server::admin::list_body;
use cortex_server::admin::orgs::{org_json, team_json};
use cortex_store::organizations::{OrgRow, TeamRow};
use cortex_store::Store;
use serde_json::Value;

use crate::ops::{close, open};

/// The actor recorded in the audit log for command-line changes.
const CLI_ACTOR: &str = "cli";

#[derive(Subcommand)]
pub enum OrgsCommand {
    /// List every organization.
    List {
        /// Print the admin API's JSON (`GET /admin/orgs`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create an organization; prints its id.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: NewLimits,
        /// A model the organization's keys may use; repeat for several (default: every model).
        #[arg(long = "allowed-model", value_name = "MODEL")]
        allowed_models: Vec<String>,
        /// Print the created organization as the admin API's JSON instead of its id.
        #[arg(long)]
        json: bool,
    },
    /// Change an organization: only what is given changes.
    Update {
        /// The organization's id (or its name).
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitChange,
        /// Replace the model allow-list; repeat for several.
        #[arg(long = "allowed-model", value_name = "MODEL")]
        allowed_models: Vec<String>,
        /// Remove the model allow-list: the organization may use every model.
        #[arg(long, conflicts_with = "allowed_models")]
        all_models: bool,
        /// Print the organization as the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete an organization with its teams: not `default`, and only once it has no users and
    /// no live keys.
    Delete {
        /// The organization's id (or its name).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TeamsCommand {
    /// List teams, of every organization or of one.
    List {
        /// Only this organization's teams (id or name).
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// Print the admin API's JSON (`GET /admin/teams`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a team in an organization; prints its id.
    Create {
        /// The organization (id or name).
        #[arg(long, value_name = "ORG")]
        org: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: NewLimits,
        /// Print the created team as the admin API's JSON instead of its id.
        #[arg(long)]
        json: bool,
    },
    /// Change a team: only what is given changes.
    Update {
        /// The team's id.
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitChange,
        /// Print the team as the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a team; its keys stop being charged to it.
    Delete {
        /// The team's id.
        id: String,
    },
    /// Replace a team's members (as `PUT /admin/teams/{id}/members`): users of the team's
    /// organization only.
    Members {
        /// The team's id.
        id: String,
        /// A member (user id or username); repeat for several. Users not named stop being
        /// members.
        #[arg(long = "user", value_name = "USER")]
        users: Vec<String>,
        /// Remove every member.
        #[arg(long, conflicts_with = "users")]
        clear: bool,
        /// Print the team as the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// A budget and a token limit as a create gives them.
#[derive(Args)]
pub struct NewLimits {
    /// A spend cap in US dollars, from 0 to 10⁹ (with --budget-period).
    #[arg(
        long,
        value_name = "USD",
        requires = "budget_period",
        allow_negative_numbers = true
    )]
    budget_usd: Option<f64>,
    /// The period the spend cap counts over, in UTC (with --budget-usd).
    #[arg(
        long,
        value_name = "PERIOD",
        requires = "budget_usd",
        value_parser = ["daily", "monthly", "total"]
    )]
    budget_period: Option<String>,
    /// Tokens per minute, from 1 to 10¹².
    #[arg(long, value_name = "TOKENS", allow_negative_numbers = true)]
    tokens_per_minute: Option<i64>,
}

/// A budget and a token limit as a change gives them: set, cleared, or left alone.
#[derive(Args)]
pub struct LimitChange {
    #[command(flatten)]
    set: NewLimits,
    /// Remove the budget.
    #[arg(long, conflicts_with_all = ["budget_usd", "budget_period"])]
    no_budget: bool,
    /// Remove the tokens-per-minute limit.
    #[arg(long, conflicts_with = "tokens_per_minute")]
    no_tokens_per_minute: bool,
}

/// Why a command stopped.
pub(crate) enum Stop {
    /// Input the rules refuse (exit 2); the message names the option.
    Usage(String),
    /// A refused or failed change (exit 1).
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Stop {
    fn from(err: E) -> Stop {
        Stop::Failed(err.into())
    }
}

/// The control layer's messages name the admin API's fields (`` `budget_usd` must be … ``);
/// the command line names its options instead.
fn option_message(message: &str) -> String {
    const FIELDS: [(&str, &str); 7] = [
        ("`name` ", "--name"),
        ("`budget_usd` ", "--budget-usd"),
        ("`budget_period` ", "--budget-period"),
        ("`tokens_per_minute` ", "--tokens-per-minute"),
        ("`allowed_models` ", "--allowed-model"),
        ("`user_ids` ", "--user"),
        ("`org_id` ", "--org"),
    ];
    for (field, option) in FIELDS {
        if let Some(rule) = message.strip_prefix(field) {
            return format!("{option}: {rule}");
        }
    }
    message.to_owned()
}

fn usage(err: &ControlError) -> Stop {
    Stop::Usage(option_message(&err.to_string()))
}

/// A control error of a change to the `what` named `id`: bad values are usage errors, an
/// unknown id and a conflict are refusals.
fn refused<'a>(what: &'static str, id: &'a str) -> impl FnOnce(ControlError) -> Stop + 'a {
    move |err| match err {
        ControlError::Invalid(_) => usage(&err),
        ControlError::NotFound => Stop::Failed(anyhow!("no {what} with id {id:?}")),
        ControlError::Conflict(message) => Stop::Failed(anyhow!("{message}")),
        other => Stop::Failed(other.into()),
    }
}

/// The limits of a create, checked with the control layer's rules.
fn new_limits(limits: &NewLimits) -> Result<Limits, Stop> {
    let budget = Budget::from_parts(limits.budget_usd, limits.budget_period.as_deref())
        .map_err(|e| Stop::Usage(option_message(&e)))?;
    let tokens = orgs::check_tokens_per_minute(limits.tokens_per_minute).map_err(|e| usage(&e))?;
    Ok(Limits {
        budget: Some(budget),
        tokens_per_minute: Some(tokens),
    })
}

/// The limits of a change, checked: `None` leaves a field, `Some(None)` clears it.
fn limit_change(change: &LimitChange) -> Result<Limits, Stop> {
    let set = new_limits(&change.set)?;
    Ok(Limits {
        budget: if change.no_budget {
            Some(None)
        } else {
            set.budget.filter(Option::is_some)
        },
        tokens_per_minute: if change.no_tokens_per_minute {
            Some(None)
        } else {
            set.tokens_per_minute.filter(Option::is_some)
        },
    })
}

fn check_name(name: Option<&str>) -> Result<(), Stop> {
    match name {
        Some(name) => orgs::check_name(name).map(drop).map_err(|e| usage(&e)),
        None => Ok(()),
    }
}

/// What an organization command does, its input checked.
enum OrgAction {
    List {
        json: bool,
    },
    Create {
        name: String,
        limits: Limits,
        models: Option<Vec<String>>,
        json: bool,
    },
    Update {
        id: String,
        name: Option<String>,
        limits: Limits,
        models: Option<Option<Vec<String>>>,
        json: bool,
    },
    Delete {
        id: String,
    },
}

fn check_org_command(command: OrgsCommand) -> Result<OrgAction, Stop> {
    Ok(match command {
        OrgsCommand::List { json } => OrgAction::List { json },
        OrgsCommand::Create {
            name,
            limits,
            allowed_models,
            json,
        } => {
            check_name(Some(&name))?;
            let models = (!allowed_models.is_empty()).then_some(allowed_models);
            orgs::check_models(models.clone()).map_err(|e| usage(&e))?;
            OrgAction::Create {
                name,
                limits: new_limits(&limits)?,
                models,
                json,
            }
        }
        OrgsCommand::Update {
            id,
            name,
            limits,
            allowed_models,
            all_models,
            json,
        } => {
            check_name(name.as_deref())?;
            let limits = limit_change(&limits)?;
            let models = if all_models {
                Some(None)
            } else if allowed_models.is_empty() {
                None
            } else {
                orgs::check_models(Some(allowed_models.clone())).map_err(|e| usage(&e))?;
                Some(Some(allowed_models))
            };
            if name.is_none()
                && limits.budget.is_none()
                && limits.tokens_per_minute.is_none()
                && models.is_none()
            {
                return Err(Stop::Usage(
                    "nothing to change: give --name, --budget-usd with --budget-period, --no-budget, --tokens-per-minute, --no-tokens-per-minute, --allowed-model or --all-models".into(),
                ));
            }
            OrgAction::Update {
                id,
                name,
                limits,
                models,
                json,
            }
        }
        OrgsCommand::Delete { id } => OrgAction::Delete { id },
    })
}

/// What a team command does, its input checked.
enum TeamAction {
    List {
        org: Option<String>,
        json: bool,
    },
    Create {
        org: String,
        name: String,
        limits: Limits,
        json: bool,
    },
    Update {
        id: String,
        name: Option<String>,
        limits: Limits,
        json: bool,
    },
    Delete {
        id: String,
    },
    Members {
        id: String,
        users: Vec<String>,
        json: bool,
    },
}

fn check_team_command(command: TeamsCommand) -> Result<TeamAction, Stop> {
    Ok(match command {
        TeamsCommand::List { org, json } => TeamAction::List { org, json },
        TeamsCommand::Create {
            org,
            name,
            limits,
            json,
        } => {
            check_name(Some(&name))?;
            TeamAction::Create {
                org,
                name,
                limits: new_limits(&limits)?,
                json,
            }
        }
        TeamsCommand::Update {
            id,
            name,
            limits,
            json,
        } => {
            check_name(name.as_deref())?;
            let limits = limit_change(&limits)?;
            if name.is_none() && limits.budget.is_none() && limits.tokens_per_minute.is_none() {
                return Err(Stop::Usage(
                    "nothing to change: give --name, --budget-usd with --budget-period, --no-budget, --tokens-per-minute or --no-tokens-per-minute".into(),
                ));
            }
            TeamAction::Update {
                id,
                name,
                limits,
                json,
            }
        }
        TeamsCommand::Delete { id } => TeamAction::Delete { id },
        TeamsCommand::Members {
            id,
            users,
            clear,
            json,
        } => {
            if users.len() > orgs::MAX_LIST {
                return Err(Stop::Usage(format!(
                    "--user: at most {} users",
                    orgs::MAX_LIST
                )));
            }
            if users.is_empty() && !clear {
                return Err(Stop::Usage(
                    "--user: name at least one member, or give --clear to remove them all".into(),
                ));
            }
            TeamAction::Members { id, users, json }
        }
    })
}

pub async fn orgs(config: &Config, command: OrgsCommand) -> anyhow::Result<ExitCode> {
    let action = match check_org_command(command) {
        Ok(action) => action,
        Err(stop) => return finish(Err(stop)),
    };
    let (store, master_key) = open(config).await?;
    let writes = !matches!(action, OrgAction::List { .. });
    let result = run_org(&store, action).await;
    close_store(&store, &master_key, writes).await;
    finish(result)
}

pub async fn teams(config: &Config, command: TeamsCommand) -> anyhow::Result<ExitCode> {
    let action = match check_team_command(command) {
        Ok(action) => action,
        Err(stop) => return finish(Err(stop)),
    };
    let (store, master_key) = open(config).await?;
    let writes = !matches!(action, TeamAction::List { .. });
    let result = run_team(&store, action).await;
    close_store(&store, &master_key, writes).await;
    finish(result)
}

/// A command that may have written audit events signs a checkpoint over them; a list only
/// closes the database.
pub(crate) async fn close_store(store: &Store, master_key: &MasterKey, writes: bool) {
    if writes {
        close(store, master_key).await;
    } else {
        store.close().await;
    }
}

pub(crate) fn finish(result: Result<(), Stop>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Stop::Usage(message)) => {
            eprintln!("cortex: {message}");
            Ok(ExitCode::from(2))
        }
        Err(Stop::Failed(err)) => Err(err),
    }
}

async fn run_org(store: &Store, action: OrgAction) -> Result<(), Stop> {
    let now = SystemClock.now_millis();
    match action {
        OrgAction::List { json } => {
            let orgs = store.list_orgs(&Tenant::All).await?;
            if json {
                print_json(&list_body(orgs.iter().map(org_json)).0);
            } else {
                print_orgs(&orgs);
            }
        }
        OrgAction::Create {
            name,
            limits,
            models,
            json,
        } => {
            let org = orgs::create_org(store, &name, &limits, models, CLI_ACTOR, "", now)
                .await
                .map_err(refused("organization", &name))?;
            eprintln!("created organization {} ({})", org.name, org.id);
            if json {
                print_json(&org_json(&org));
            } else {
                println!("{}", org.id);
            }
        }
        OrgAction::Update {
            id,
            name,
            limits,
            models,
            json,
        } => {
            let id = org_id(store, &id).await?;
            let org = orgs::update_org(
                store,
                &Tenant::All,
                &id,
                name.as_deref(),
                &limits,
                models,
                CLI_ACTOR,
                "",
                now,
            )
            .await
            .map_err(refused("organization", &id))?;
            eprintln!("updated organization {} ({})", org.name, org.id);
            if json {
                print_json(&org_json(&org));
            } else {
                print_orgs(std::slice::from_ref(&org));
            }
        }
        OrgAction::Delete { id } => {
            let id = org_id(store, &id).await?;
            orgs::delete_org(store, &Tenant::All, &id, CLI_ACTOR, "", now)
                .await
                .map_err(refused("organization", &id))?;
            eprintln!("deleted organization {id}");
        }
    }
    Ok(())
}

async fn run_team(store: &Store, action: TeamAction) -> Result<(), Stop> {
    let now = SystemClock.now_millis();
    match action {
        TeamAction::List { org, json } => {
            let tenant = match org {
                Some(org) => Tenant::Org(org_id(store, &org).await?),
                None => Tenant::All,
            };
            let teams = store.list_teams(&tenant).await?;
            if json {
                print_json(&list_body(teams.iter().map(team_json)).0);
            } else {
                print_teams(store, &teams).await?;
            }
        }
        TeamAction::Create {
            org,
            name,
            limits,
            json,
        } => {
            let org = org_id(store, &org).await?;
            let team = orgs::create_team(
                store,
                &Tenant::All,
                &org,
                &name,
                &limits,
                CLI_ACTOR,
                "",
                now,
            )
            .await
            .map_err(refused("organization", &org))?;
            eprintln!(
                "created team {} ({}) in organization {}",
                team.name, team.id, team.org_id
            );
            if json {
                print_json(&team_json(&team));
            } else {
                println!("{}", team.id);
            }
        }
        TeamAction::Update {
            id,
            name,
            limits,
            json,
        } => {
            let team = orgs::update_team(
                store,
                &Tenant::All,
                &id,
                name.as_deref(),
                &limits,
                CLI_ACTOR,
                "",
                now,
            )
            .await
            .map_err(refused("team", &id))?;
            eprintln!("updated team {} ({})", team.name, team.id);
            show_team(store, &team, json).await?;
        }
        TeamAction::Delete { id } => {
            orgs::delete_team(store, &Tenant::All, &id, CLI_ACTOR, "", now)
                .await
                .map_err(refused("team", &id))?;
            eprintln!("deleted team {id}");
        }
        TeamAction::Members { id, users, json } => {
            let mut user_ids = Vec::with_capacity(users.len());
            for user in &users {
                user_ids.push(user_id(store, user).await?);
            }
            let team = orgs::set_members(store, &Tenant::All, &id, &user_ids, CLI_ACTOR, "", now)
                .await
                .map_err(refused("team", &id))?;
            eprintln!(
                "team {} ({}) has {} members",
                team.name,
                team.id,
                team.members.len()
            );
            show_team(store, &team, json).await?;
        }
    }
    Ok(())
}

/// The id of the organization with id or name `given` (ids first: a name cannot shadow one).
pub(crate) async fn org_id(store: &Store, given: &str) -> Result<String, Stop> {
    if let Some(org) = store.get_org(&Tenant::All, given).await? {
        return Ok(org.id);
    }
    store
        .list_orgs(&Tenant::All)
        .await?
        .into_iter()
        .find(|org| org.name == given)
        .map(|org| org.id)
        .ok_or_else(|| Stop::Failed(anyhow!("no organization with id or name {given:?}")))
}

/// The id of the user with id or username `given`, in any organization (the control layer
/// then refuses one outside the team's).
async fn user_id(store: &Store, given: &str) -> Result<String, Stop> {
    if let Some(user) = store.get_user(&Tenant::All, given).await? {
        return Ok(user.id);
    }
    match store.get_user_by_username(&Tenant::All, given).await? {
        Some(user) => Ok(user.id),
        None => Err(Stop::Failed(anyhow!(
            "--user: no user with id or username {given:?}"
        ))),
    }
}

pub(crate) fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // A `Value` always serializes; print it compactly should that ever change.
        Err(_) => println!("{value}"),
    }
}

fn budget_text(budget: Option<&Budget>) -> String {
    budget.map_or_else(|| "-".to_owned(), |b| format!("${} {}", b.usd, b.period))
}

fn tokens_text(tokens: Option<i64>) -> String {
    tokens.map_or_else(|| "-".to_owned(), |t| t.to_string())
}

fn print_orgs(orgs: &[OrgRow]) {
    let rows = orgs
        .iter()
        .map(|org| {
            vec![
                org.id.clone(),
                org.name.clone(),
                budget_text(org.budget.as_ref()),
                tokens_text(org.tokens_per_minute),
                match &org.allowed_models {
                    None => "all".to_owned(),
                    Some(models) if models.is_empty() => "none".to_owned(),
                    Some(models) => models.join(","),
                },
                millis_to_rfc3339(org.created_at),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &["ID", "NAME", "BUDGET", "TOKENS/MIN", "MODELS", "CREATED"],
        &rows,
    );
}

async fn show_team(store: &Store, team: &TeamRow, json: bool) -> Result<(), Stop> {
    if json {
        print_json(&team_json(team));
        Ok(())
    } else {
        print_teams(store, std::slice::from_ref(team)).await
    }
}

/// Teams with their organization's name and their members' usernames.
async fn print_teams(store: &Store, teams: &[TeamRow]) -> Result<(), Stop> {
    let org_names: HashMap<String, String> = store
        .list_orgs(&Tenant::All)
        .await?
        .into_iter()
        .map(|org| (org.id, org.name))
        .collect();
    let usernames: HashMap<String, String> = store
        .list_users(&Tenant::All)
        .await?
        .into_iter()
        .map(|user| (user.id, user.username))
        .collect();
    let rows = teams
        .iter()
        .map(|team| {
            let members = team
                .members
                .iter()
                .map(|id| usernames.get(id).unwrap_or(id).as_str())
                .collect::<Vec<_>>();
            vec![
                team.id.clone(),
                org_names
                    .get(&team.org_id)
                    .cloned()
                    .unwrap_or_else(|| team.org_id.clone()),
                team.name.clone(),
                budget_text(team.budget.as_ref()),
                tokens_text(team.tokens_per_minute),
                if members.is_empty() {
                    "-".to_owned()
                } else {
                    members.join(",")
                },
                millis_to_rfc3339(team.created_at),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &[
            "ID",
            "ORG",
            "NAME",
            "BUDGET",
            "TOKENS/MIN",
            "MEMBERS",
            "CREATED",
        ],
        &rows,
    );
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        println!("{}", text.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use cortex_domain::BudgetPeriod;

    #[test]
    fn control_messages_name_the_options() {
        assert_eq!(
            option_message("`tokens_per_minute` must be from 1 to 5"),
            "--tokens-per-minute: must be from 1 to 5"
        );
        assert_eq!(
            option_message("`user_ids` must name users of the team's organization"),
            "--user: must name users of the team's organization"
        );
        assert_eq!(option_message("something else"), "something else");
    }

    #[test]
    fn every_period_clap_offers_is_one_the_domain_knows() {
        for period in BudgetPeriod::ALL {
            assert!(["daily", "monthly", "total"].contains(&period.as_str()));
        }
        assert_eq!(BudgetPeriod::ALL.len(), 3);
    }

    fn change(no_budget: bool, no_tokens: bool, usd: Option<f64>, tokens: Option<i64>) -> Limits {
        let checked = limit_change(&LimitChange {
            set: NewLimits {
                budget_usd: usd,
                budget_period: usd.map(|_| "daily".to_owned()),
                tokens_per_minute: tokens,
            },
            no_budget,
            no_tokens_per_minute: no_tokens,
        });
        let Ok(limits) = checked else {
            panic!("refused")
        };
        limits
    }

    #[test]
    fn a_change_leaves_clears_or_sets() {
        let left = change(false, false, None, None);
        assert_eq!(left.budget, None);
        assert_eq!(left.tokens_per_minute, None);
        let cleared = change(true, true, None, None);
        assert_eq!(cleared.budget, Some(None));
        assert_eq!(cleared.tokens_per_minute, Some(None));
        let set = change(false, false, Some(2.5), Some(10));
        assert_eq!(
            set.budget,
            Some(Some(Budget {
                usd: 2.5,
                period: BudgetPeriod::Daily
            }))
        );
        assert_eq!(set.tokens_per_minute, Some(Some(10)));
    }
}
