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
    /// A stream's time from the request's arrival to the first byte sent to the client; `None`
    /// for answers that were not streamed.
    pub ttft_ms: Option<i64>,
    /// The answer came from the response cache (SPEC §21): no provider was asked.
    pub cached: bool,
}

/// Columns per usage row in the SQLite insert, which binds each one: the column list, the
/// placeholder group and the binds in `insert_usage` must all have this many.
const SQLITE_USAGE_COLUMNS: usize = 18;
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
                     prompt_tokens, completion_tokens, cost_usd, latency_ms, status, client_ip, created_at, attempts, org_id, team_id, ttft_ms, cached) VALUES ",
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
    pub provider: Option<String>,
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

/// The width of a series' time slots (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesBucket {
    Hour,
    Day,
}

impl SeriesBucket {
    pub fn millis(self) -> i64 {
        match self {
            SeriesBucket::Hour => 3_600_000,
            SeriesBucket::Day => 86_400_000,
        }
    }
}

/// What a series' points are split by within each slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesGroup {
    /// One point per slot (the group is the empty string).
    Total,
    Model,
    Key,
    User,
    /// The empty string for rows of keys without a team.
    Team,
    Org,
    Provider,
}

impl SeriesGroup {
    fn column(self) -> &'static str {
        match self {
            SeriesGroup::Total => "''",
            SeriesGroup::Model => "model",
            SeriesGroup::Key => "key_id",
            SeriesGroup::User => "user_id",
            SeriesGroup::Team => "COALESCE(team_id, '')",
            SeriesGroup::Org => "org_id",
            SeriesGroup::Provider => "provider",
        }
    }
}

/// Nearest-rank percentiles of a set of milliseconds (the smallest value with at least p % of
/// the set at or below it); `None` for an empty set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
}

/// One group's requests in one slot of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoint {
    /// The slot's start, epoch milliseconds.
    pub slot_start: i64,
    pub group: String,
    pub requests: i64,
    /// Requests answered with a status of 400 or more (499 included: the client left).
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub latency_ms: Percentiles,
    /// Over the streams only.
    pub ttft_ms: Percentiles,
    /// Requests with a time to first token (streams).
    pub streams: i64,
}

/// Where a page of [`Store::usage_page`] ended: the next page starts after this row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageCursor {
    created_at: i64,
    id: i64,
}

impl UsageCursor {
    /// Before every row.
    pub const START: UsageCursor = UsageCursor {
        created_at: i64::MIN,
        id: i64::MIN,
    };
}

/// The filter's conditions, `$1` to `$9`; `$6` is the caller's [`Tenant`], `$7` the
/// organization the caller asked for.
const FILTER_SQL: &str = "($1 IS NULL OR created_at >= $1) AND ($2 IS NULL OR created_at < $2) \
     AND ($3 IS NULL OR key_id = $3) AND ($4 IS NULL OR user_id = $4) AND ($5 IS NULL OR model = $5) \
     AND ($6 IS NULL OR org_id = $6) AND ($7 IS NULL OR org_id = $7) AND ($8 IS NULL OR team_id = $8) \
     AND ($9 IS NULL OR provider = $9)";

const RECORD_COLUMNS: &str = "request_id, key_id, user_id, model, provider, endpoint, prompt_tokens, \
     completion_tokens, cost_usd, latency_ms, status, client_ip, created_at, attempts, org_id, team_id, ttft_ms, cached";

/// Binds [`FILTER_SQL`]'s nine parameters.
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
        .bind(filter.provider.as_deref())
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
        ttft_ms: row.try_get("ttft_ms")?,
        cached: crate::get_bool(row, "cached")?,
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
                                .bind(r.team_id.as_deref())
                                .bind(r.ttft_ms)
                                .bind(r.cached);
                        }
                        query.execute(&mut *tx).await?;
                        rest = tail;
                    }
                }
            }
            crate::Backend::Postgres => {
                const ROWS_PER_STATEMENT: usize = 5000;
                const SQL: &str = "INSERT INTO usage_records (request_id, key_id, user_id, model, provider, endpoint, \
                     prompt_tokens, completion_tokens, cost_usd, latency_ms, status, client_ip, created_at, attempts, org_id, team_id, ttft_ms, cached) \
                     SELECT request_id, key_id, user_id, model, provider, endpoint, prompt_tokens, completion_tokens, \
                     cost_usd, latency_ms, status, client_ip, created_at, attempts, org_id, team_id, ttft_ms, cached FROM json_to_recordset($1::json) AS x(request_id text, \
                     key_id text, user_id text, model text, provider text, endpoint text, prompt_tokens bigint, \
                     completion_tokens bigint, cost_usd double precision, latency_ms bigint, status bigint, client_ip text, \
                     created_at bigint, attempts bigint, org_id text, team_id text, ttft_ms bigint, cached boolean)";
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
             ORDER BY created_at DESC, id DESC LIMIT $10"
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

    /// A time series of the rows `tenant` sees that match `filter`: per `bucket` slot and
    /// `group`, the requests, errors, tokens, cost, and nearest-rank percentiles of latency and
    /// (streams) time to first token, oldest slot first. Slots without requests are absent.
    ///
    /// The percentiles are computed in SQL with window functions (both backends have them;
    /// SQLite has no percentile aggregate), from the rows themselves: exact, whatever their
    /// spread. The caller bounds the time range.
    pub async fn usage_series(
        &self,
        tenant: &Tenant,
        filter: &UsageFilter,
        bucket: SeriesBucket,
        group: SeriesGroup,
    ) -> StoreResult<Vec<SeriesPoint>> {
        let width = bucket.millis();
        let group_column = group.column();
        let percentile = |rank: &str, count: &str, value: &str, p: u32, alias: &str| {
            format!(
                "CAST(MIN(CASE WHEN {value} IS NOT NULL AND {rank} * 100 >= {p} * {count} THEN {value} END) AS BIGINT) AS {alias}"
            )
        };
        let sql = format!(
            "WITH slotted AS ( \
               SELECT CAST(created_at / {width} AS BIGINT) AS slot, {group_column} AS grp, \
                 prompt_tokens, completion_tokens, cost_usd, status, latency_ms, ttft_ms \
               FROM usage_records WHERE {FILTER_SQL} \
             ), ranked AS ( \
               SELECT slotted.*, \
                 ROW_NUMBER() OVER (PARTITION BY slot, grp ORDER BY latency_ms) AS latency_rank, \
                 COUNT(*) OVER (PARTITION BY slot, grp) AS latency_count, \
                 ROW_NUMBER() OVER (PARTITION BY slot, grp \
                   ORDER BY CASE WHEN ttft_ms IS NULL THEN 1 ELSE 0 END, ttft_ms) AS ttft_rank, \
                 COUNT(ttft_ms) OVER (PARTITION BY slot, grp) AS ttft_count \
               FROM slotted \
             ) \
             SELECT slot, grp, CAST(COUNT(*) AS BIGINT) AS requests, \
               CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS errors, \
               CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
               CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
               CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost_usd, \
               CAST(COUNT(ttft_ms) AS BIGINT) AS streams, \
               {}, {}, {}, {}, {}, {} \
             FROM ranked GROUP BY slot, grp ORDER BY slot, grp",
            percentile(
                "latency_rank",
                "latency_count",
                "latency_ms",
                50,
                "latency_p50"
            ),
            percentile(
                "latency_rank",
                "latency_count",
                "latency_ms",
                95,
                "latency_p95"
            ),
            percentile(
                "latency_rank",
                "latency_count",
                "latency_ms",
                99,
                "latency_p99"
            ),
            percentile("ttft_rank", "ttft_count", "ttft_ms", 50, "ttft_p50"),
            percentile("ttft_rank", "ttft_count", "ttft_ms", 95, "ttft_p95"),
            percentile("ttft_rank", "ttft_count", "ttft_ms", 99, "ttft_p99"),
        );
        let rows = bind_filter(sqlx::query(&sql), tenant, filter)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let slot: i64 = row.try_get("slot")?;
                Ok(SeriesPoint {
                    slot_start: slot.saturating_mul(width),
                    group: row.try_get("grp")?,
                    requests: row.try_get("requests")?,
                    errors: row.try_get("errors")?,
                    prompt_tokens: row.try_get("prompt_tokens")?,
                    completion_tokens: row.try_get("completion_tokens")?,
                    cost_usd: row.try_get("cost_usd")?,
                    streams: row.try_get("streams")?,
                    latency_ms: Percentiles {
                        p50: row.try_get("latency_p50")?,
                        p95: row.try_get("latency_p95")?,
                        p99: row.try_get("latency_p99")?,
                    },
                    ttft_ms: Percentiles {
                        p50: row.try_get("ttft_p50")?,
                        p95: row.try_get("ttft_p95")?,
                        p99: row.try_get("ttft_p99")?,
                    },
                })
            })
            .collect()
    }

    /// Up to `limit` rows `tenant` sees that match `filter`, oldest first, after `after`, and
    /// where the next page starts (`None` after the last row): the pages of an export. Each
    /// page is one short query on the `created_at` index (keyset, no offset), so an export of
    /// any size holds one page in memory and no connection or read transaction between pages.
    pub async fn usage_page(
        &self,
        tenant: &Tenant,
        filter: &UsageFilter,
        after: UsageCursor,
        limit: i64,
    ) -> StoreResult<(Vec<UsageRecord>, Option<UsageCursor>)> {
        let limit = limit.clamp(1, 10_000);
        let sql = format!(
            "SELECT id, {RECORD_COLUMNS} FROM usage_records WHERE {FILTER_SQL} \
             AND (created_at, id) > ($10, $11) ORDER BY created_at, id LIMIT $12"
        );
        let rows = bind_filter(sqlx::query(&sql), tenant, filter)
            .bind(after.created_at)
            .bind(after.id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let next = match rows.last() {
            Some(last) if rows.len() as i64 == limit => Some(UsageCursor {
                created_at: last.try_get("created_at")?,
                id: last.try_get("id")?,
            }),
            _ => None,
        };
        let records = rows
            .iter()
            .map(record_from_row)
            .collect::<StoreResult<_>>()?;
        Ok((records, next))
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
