//! `cortex keys create|list|revoke|rotate`: the same operations as the admin API, run against
//! the database directly. A running server sees the change within about a second.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use cortex_config::Config;
use cortex_control::keys::KeySpec;
use cortex_domain::time_fmt::{millis_to_rfc3339, rfc3339_to_millis};
use cortex_domain::{Clock, KeyLimits, Scope, SystemClock};
use cortex_gateway::key_cache::KeyCache;
use cortex_store::Store;
use secrecy::ExposeSecret;

/// The actor recorded in the audit log for command-line changes.
const CLI_ACTOR: &str = "cli";

#[derive(Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
pub enum KeysCommand {
    /// Create a key; the full key is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// Owner's username (default: the first admin).
        #[arg(long)]
        owner: Option<String>,
        /// Comma-separated: chat, completions, embeddings.
        #[arg(long, default_value = "chat,completions,embeddings")]
        scopes: String,
        /// Comma-separated model allow-list (default: every model).
        #[arg(long)]
        models: Option<String>,
        /// RFC 3339 expiry time.
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long)]
        requests_per_second: Option<f64>,
        #[arg(long)]
        burst: Option<u32>,
        #[arg(long)]
        max_concurrent_streams: Option<u32>,
        #[arg(long)]
        tokens_per_minute: Option<u64>,
        #[arg(long)]
        budget_usd: Option<f64>,
        /// What --budget-usd is counted over (UTC): daily, monthly or total (the default).
        #[arg(long, value_parser = ["daily", "monthly", "total"], requires = "budget_usd")]
        budget_period: Option<String>,
        /// A team of the owner's organization the owner is a member of, to charge the key to.
        #[arg(long)]
        team: Option<String>,
        /// Comma-separated CIDRs or addresses the key may be used from (default: anywhere).
        #[arg(long)]
        allowed_ips: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        /// Only this owner's keys (username).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Revoke a key at once.
    Revoke { id: String },
    /// Issue a replacement; the old key keeps working for the grace period.
    Rotate {
        id: String,
        #[arg(long, default_value_t = 0)]
        grace_period_seconds: u64,
    },
}

/// The user named `username`, in any organization: the command line is the local operator.
async fn user(store: &Store, username: &str) -> anyhow::Result<cortex_store::users::UserRow> {
    store
        .get_user_by_username(&cortex_store::Tenant::All, username)
        .await?
        .ok_or_else(|| anyhow!("no user named {username:?}"))
}

pub async fn run(config: &Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    // The master key is needed: every change writes an event on the keyed audit chain.
    let (store, master_key) = crate::ops::open(config).await?;
    let cache = KeyCache::new();
    let now = SystemClock.now_millis();
    match command {
        KeysCommand::Create {
            name,
            owner,
            scopes,
            models,
            expires_at,
            requests_per_second,
            burst,
            max_concurrent_streams,
            tokens_per_minute,
            budget_usd,
            budget_period,
            team,
            allowed_ips,
        } => {
            let owner = owner.unwrap_or_else(|| config.admin_user.clone());
            let owner = user(&store, &owner).await?;
            let spec = KeySpec {
                name,
                owner_user_id: owner.id,
                scopes: Scope::parse_list(&scopes).map_err(|e| anyhow!("--scopes: {e}"))?,
                models: models.map(|m| {
                    m.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                }),
                expires_at: expires_at
                    .map(|t| {
                        rfc3339_to_millis(&t)
                            .ok_or_else(|| anyhow!("--expires-at: expected an RFC 3339 time"))
                    })
                    .transpose()?,
                limits: KeyLimits {
                    requests_per_second,
                    burst,
                    max_concurrent_streams,
                    tokens_per_minute,
                    budget_usd,
                    budget_period: budget_period
                        .map(|p| p.parse())
                        .transpose()
                        .map_err(|e| anyhow!("--budget-period: {e}"))?,
                },
                // The key belongs to its owner's organization.
                org_id: owner.org_id,
                team_id: team,
                allowed_ips: allowed_ips.map(|list| {
                    list.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                }),
            };
            let issued = cortex_control::keys::create(&store, &cache, &spec, CLI_ACTOR, "", now)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            eprintln!(
                "created key {} ({}); it is shown once:",
                issued.row.id, issued.row.name
            );
            println!("{}", issued.key.expose_secret());
        }
        KeysCommand::List { owner } => {
            let owner_id = match owner {
                Some(name) => Some(user(&store, &name).await?.id),
                None => None,
            };
            for key in store
                .list_api_keys(&cortex_store::Tenant::All, owner_id.as_deref())
                .await?
            {
                let status = if key.revoked_at.is_some() {
                    "revoked"
                } else if key.expires_at.is_some_and(|at| at <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{}\tctx_{}_…\t{}\t{}\t{}\tcreated {}",
                    key.id,
                    key.public_id,
                    status,
                    Scope::join(&key.scopes),
                    key.name,
                    millis_to_rfc3339(key.created_at)
                );
            }
        }
        KeysCommand::Revoke { id } => {
            cortex_control::keys::revoke(
                &store,
                &cache,
                &cortex_store::Tenant::All,
                &id,
                CLI_ACTOR,
                "",
                now,
            )
            .await
            .map_err(|e| anyhow!("{e}"))?;
            eprintln!("revoked key {id}");
        }
        KeysCommand::Rotate {
            id,
            grace_period_seconds,
        } => {
            let Some(old) = store.get_api_key(&cortex_store::Tenant::All, &id).await? else {
                bail!("no key with id {id}")
            };
            let issued = cortex_control::keys::rotate(
                &store,
                &cache,
                &old,
                grace_period_seconds,
                CLI_ACTOR,
                "",
                now,
            )
            .await
            .map_err(|e| anyhow!("{e}"))?;
            eprintln!("rotated key {id} into {}; the old key works for {grace_period_seconds} more seconds. New key (shown once):", issued.row.id);
            println!("{}", issued.key.expose_secret());
        }
    }
    crate::ops::close(&store, &master_key).await;
    Ok(ExitCode::SUCCESS)
}
