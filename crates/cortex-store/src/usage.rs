//! Usage records: one row per proxied request, written in batches off the hot path.
//! They never hold prompt or completion text: the type has no field for it.

use std::sync::OnceLock;

use cortex_domain::Tenant;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub key_id: String,
    pub user_id: String,
    pub model: String,
    pub provider: String,
    pub endpoint: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub status: i64,
    pub client_ip: String,
    pub created_at: i64,
    /// Upstream attempts the request took: 1, or more when it was retried or moved to another
    /// provider (SPEC §16).
    pub attempts: i64,
    /// The key's organization and team when the request was made (SPEC §18).
    pub org_id: String,
    pub team_id: Option<String>,
}

/// Columns per usage row in the SQLite insert, which binds each one: the column list, the
/// placeholder group and the binds in `insert_usage` must all have this many.
const SQLITE_USAGE_COLUMNS: usize = 16;
// The largest statement stays under SQLite's limit of 32,766 parameters.
const _: () = assert!(512 * SQLITE_USAGE_COLUMNS <= 32_766);

/// The SQLite insert statements by rows per statement, largest first; the last takes one row,
/// so any batch is written by a few of them.
fn sqlite_insert_statements() -> &'static [(usize, String)] {
    static STATEMENTS: OnceLock<Vec<(usize, String)>> = OnceLock::new();
    STATEMENTS.get_or_init(|| {
        [512, 64, 8, 1]
            .into_iter()
            .map(|rows| {
                let mut sql = String::from(
                    "INSERT OR FAIL INTO usage_records (request_id, key_id, user_id, model, provider, endpoint, \
                     prompt_tokens, completion_tokens, cost_usd, latency_ms, status, client_ip, created_at, attempts, org_id, team_id) VALUES ",
                );
                let group = format!("({})", vec!["?"; SQLITE_USAGE_COLUMNS].join(","));
                for row in 0..rows {
                    if row > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&group);
                }
                (rows, sql)
            })
            .collect()
    })
}

/// Whose recorded spend [`Store::spend_since`] sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendOf<'a> {
    Key(&'a str),
    User(&'a str),
    /// An organization's or a team's spend: the rows carry the key's (SPEC §18).
    Org(&'a str),
    Team(&'a str),
}

#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub model: Option<String>,
    /// Rows of this organization only (on top of the caller's [`Tenant`]).
    pub org_id: Option<String>,
    pub team_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGrouping {
    Day,
    Key,
    Model,
    User,
    Org,
    Team,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsageBucket {
    pub group: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

/// The filter's conditions, `$1` to `$8`; `$6` is the caller's [`Tenant`], `$7` the
/// organization the caller asked for.
const FILTER_SQL: &str = "($1 IS NULL OR created_at >= $1) AND ($2 IS NULL OR created_at < $2) \
     AND ($3 IS NULL OR key_id = $3) AND ($4 IS NULL OR user_id = $4) AND ($5 IS NULL OR model = $5) \
     AND ($6 IS NULL OR org_id = $6) AND ($7 IS NULL OR org_id = $7) AND ($8 IS NULL OR team_id = $8)";

const RECORD_COLUMNS: &str = "request_id, key_id, user_id, model, provider, endpoint, prompt_tokens, \
     completion_tokens, cost_usd, latency_ms, status, client_ip, created_at, attempts, org_id, team_id";

/// Binds [`FILTER_SQL`]'s eight parameters.
fn bind_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    tenant: &'q Tenant,
    filter: &'q UsageFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.key_id.as_deref())
        .bind(filter.user_id.as_deref())
        .bind(filter.model.as_deref())
        .bind(tenant.org_filter())
        .bind(filter.org_id.as_deref())
        .bind(filter.team_id.as_deref())
}

fn record_from_row(row: &AnyRow) -> StoreResult<UsageRecord> {
    Ok(UsageRecord {
        request_id: row.try_get("request_id")?,
        key_id: row.try_get("key_id")?,
        user_id: row.try_get("user_id")?,
        model: row.try_get("model")?,
        provider: row.try_get("provider")?,
        endpoint: row.try_get("endpoint")?,
        prompt_tokens: row.try_get("prompt_tokens")?,
        completion_tokens: row.try_get("completion_tokens")?,
        cost_usd: row.try_get("cost_usd")?,
        latency_ms: row.try_get("latency_ms")?,
        status: row.try_get("status")?,
        client_ip: row.try_get("client_ip")?,
        created_at: row.try_get("created_at")?,
        attempts: row.try_get("attempts")?,
        org_id: row.try_get("org_id")?,
        team_id: row.try_get("team_id")?,
    })
}

impl Store {
    /// Writes a batch in one transaction.
    ///
    /// SQLite: multi-row `INSERT OR FAIL … VALUES` statements of fixed sizes (512, 64, 8 and 1
    /// rows) with anonymous `?` parameters, so each shape is prepared once per connection and
    /// then only bound. Each statement is one hop to sqlx's worker thread and back, so a batch
    /// of 2,000 rows takes 12 of them rather than 32 with the earlier largest shape of 64 rows.
    /// `OR FAIL` spares SQLite the statement journal a plain multi-row INSERT keeps inside a
    /// transaction (a temporary file written page by page); a row that fails a constraint
    /// still fails the statement, and the whole transaction is rolled back.
    /// (Numbered `$n` parameters make preparing a long VALUES list quadratic; a
    /// JSON array unpacked by `json_each` costs a JSON parse per field per row, which was a
    /// quarter of the gateway's instructions per request — docs/benchmarks.md.)
    /// PostgreSQL: one statement per 5,000 rows with the rows as one JSON parameter, unpacked
    /// by `json_to_recordset`: one round trip and linear work.
    pub async fn insert_usage(&self, records: &[UsageRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        match self.backend {
            crate::Backend::Sqlite => {
                let mut rest = records;
                for (rows, sql) in sqlite_insert_statements() {
                    while rest.len() >= *rows {
                        let (chunk, tail) = rest.split_at(*rows);
                        let mut query = sqlx::query(sql);
                        for r in chunk {
                            query = query
                                .bind(r.request_id.as_str())
                                .bind(r.key_id.as_str())
                                .bind(r.user_id.as_str())
                                .bind(r.model.as_str())
                                .bind(r.provider.as_str())
                                .bind(r.endpoint.as_str())
                                .bind(r.prompt_tokens)
                                .bind(r.completion_tokens)
                                .bind(r.cost_usd)
                                .bind(r.latency_ms)
                                .bind(r.status)
                                .bind(r.client_ip.as_str())
                                .bind(r.created_at)
                                .bind(r.attempts)
                                .bind(r.org_id.as_str())
                                .bind(r.team_id.as_deref());
                        }
                        query.execute(&mut *tx).await?;
                        rest = tail;
                    }
                }
            }
            crate::Backend::Postgres => {
                const ROWS_PER_STATEMENT: usize = 5000;
                const SQL: &str = "INSERT INTO usage_records (request_id, key_id, user_id, model, provider, endpoint, \
                     prompt_tokens, completion_tokens, cost_usd, latency_ms, status, client_ip, created_at, attempts, org_id, team_id) \
                     SELECT request_id, key_id, user_id, model, provider, endpoint, prompt_tokens, completion_tokens, \
                     cost_usd, latency_ms, status, client_ip, created_at, attempts, org_id, team_id FROM json_to_recordset($1::json) AS x(request_id text, \
                     key_id text, user_id text, model text, provider text, endpoint text, prompt_tokens bigint, \
                     completion_tokens bigint, cost_usd double precision, latency_ms bigint, status bigint, client_ip text, \
                     created_at bigint, attempts bigint, org_id text, team_id text)";
                for chunk in records.chunks(ROWS_PER_STATEMENT) {
                    let rows = serde_json::to_string(chunk).map_err(|_| StoreError::Corrupt)?;
                    sqlx::query(SQL).bind(rows).execute(&mut *tx).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The rows `tenant` sees that match `filter`, newest first.
    pub async fn list_usage(
        &self,
        tenant: &Tenant,
        filter: &UsageFilter,
        limit: i64,
    ) -> StoreResult<Vec<UsageRecord>> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM usage_records WHERE {FILTER_SQL} \
             ORDER BY created_at DESC, id DESC LIMIT $9"
        );
        let rows = bind_filter(sqlx::query(&sql), tenant, filter)
            .bind(limit.clamp(1, 10_000))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Totals of the rows `tenant` sees, grouped by day (UTC, `YYYY-MM-DD`), key, model, user,
    /// organization or team (no team: the empty string).
    pub async fn usage_summary(
        &self,
        tenant: &Tenant,
        filter: &UsageFilter,
        grouping: UsageGrouping,
    ) -> StoreResult<Vec<UsageBucket>> {
        let group_expr = match grouping {
            // Integer division is the same on both backends; the day is formatted below.
            UsageGrouping::Day => "CAST(created_at / 86400000 AS BIGINT)",
            UsageGrouping::Key => "key_id",
            UsageGrouping::Model => "model",
            UsageGrouping::User => "user_id",
            UsageGrouping::Org => "org_id",
            UsageGrouping::Team => "COALESCE(team_id, '')",
        };
        let select_group = match grouping {
            UsageGrouping::Day => format!("{group_expr} AS day_number, '' AS grp"),
            _ => format!("CAST(0 AS BIGINT) AS day_number, {group_expr} AS grp"),
        };
        let sql = format!(
            "SELECT {select_group}, CAST(COUNT(*) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
             CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
             CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost_usd \
             FROM usage_records WHERE {FILTER_SQL} GROUP BY {group_expr} ORDER BY {group_expr}"
        );
        let rows = bind_filter(sqlx::query(&sql), tenant, filter)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let group = match grouping {
                    UsageGrouping::Day => {
                        let day: i64 = row.try_get("day_number")?;
                        cortex_domain::time_fmt::millis_to_rfc3339(day * 86_400_000)
                            .chars()
                            .take(10)
                            .collect()
                    }
                    _ => row.try_get("grp")?,
                };
                Ok(UsageBucket {
                    group,
                    requests: row.try_get("requests")?,
                    prompt_tokens: row.try_get("prompt_tokens")?,
                    completion_tokens: row.try_get("completion_tokens")?,
                    cost_usd: row.try_get("cost_usd")?,
                })
            })
            .collect()
    }

    /// Deletes usage older than `before` (epoch ms); returns how many rows went.
    pub async fn purge_usage_before(&self, before: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM usage_records WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Recorded spend (USD) of `who` from `from_millis` (inclusive) on: what a budget
    /// counter is rebuilt from when it is missing (first use, or Redis lost its data). Rows
    /// past the usage retention are gone, so a `total` budget older than the retention is
    /// rebuilt from what is left.
    pub async fn spend_since(&self, who: SpendOf<'_>, from_millis: i64) -> StoreResult<f64> {
        let (column, id) = match who {
            SpendOf::Key(id) => ("key_id", id),
            SpendOf::User(id) => ("user_id", id),
            SpendOf::Org(id) => ("org_id", id),
            SpendOf::Team(id) => ("team_id", id),
        };
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS spend FROM usage_records WHERE {column} = $1 AND created_at >= $2"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(from_millis)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("spend")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column list, the placeholders and `SQLITE_USAGE_COLUMNS` (the binds) agree, so a
    /// new column cannot shift every later value into the wrong place.
    #[test]
    fn sqlite_statements_have_one_placeholder_per_column_per_row() {
        for (rows, sql) in sqlite_insert_statements() {
            let columns = sql
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(list, _)| list.split(',').count())
                .unwrap();
            assert_eq!(columns, SQLITE_USAGE_COLUMNS);
            assert_eq!(sql.matches('?').count(), rows * SQLITE_USAGE_COLUMNS);
        }
    }
}
