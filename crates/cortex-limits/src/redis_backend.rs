//! The Redis backend: every decision is one Lua script (EVALSHA), so it is atomic across
//! instances and costs one round trip. Scripts read Redis's own clock (`TIME`), so instance
//! clocks do not matter; every key gets an expiry, so nothing accumulates.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::task::JoinHandle;

use crate::budget::{Attempt, Counter, ReserveOutcome};
use crate::error::{LimitError, RedisFailureMode};
use crate::gcra::GcraOutcome;

/// After a failure, Redis is left alone this long before the next attempt.
const RETRY_AFTER_FAILURE_MS: i64 = 1000;

const RATE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - emission * burst
if now + 0.000001 < allow_at then
  return {0, 0, tostring(tat - now), tostring(allow_at - now)}
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
end
local remaining = math.floor((now - allow_at) / emission + 0.000001)
if remaining > burst - 1 then remaining = burst - 1 end
return {1, remaining, tostring(new_tat - now), '0'}
";

/// Gives back one request: the TAT moves one emission interval earlier; a TAT that then lies
/// in the past means a full bucket, so the key is deleted (`gcra::refund`).
const REFUND_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local refunded = tat - tonumber(ARGV[1])
if refunded > now then
  redis.call('SET', KEYS[1], tostring(refunded), 'PX', math.ceil(refunded - now) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return 1
";

const ACQUIRE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
";

const RENEW_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return renewed
";

/// Tokens per key in per-minute buckets; the window is the current minute plus the previous
/// one weighted by its remaining overlap with the last sixty seconds.
const CHARGE_TOKENS_SCRIPT: &str = r"
local t = redis.call('TIME')
local minute = math.floor(tonumber(t[1]) / 60)
local key = KEYS[1] .. ':' .. minute
redis.call('INCRBY', key, ARGV[1])
redis.call('EXPIRE', key, 130)
return 1
";

const TOKEN_WINDOW_SCRIPT: &str = r"
local t = redis.call('TIME')
local secs = tonumber(t[1])
local minute = math.floor(secs / 60)
local current = tonumber(redis.call('GET', KEYS[1] .. ':' .. minute) or '0')
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (minute - 1)) or '0')
return math.floor(current + previous * (1 - (secs % 60) / 60))
";

/// Shared head of the budget scripts. Each level has three keys: spent (a string), the
/// reservations' expiries (a sorted set) and their amounts (a hash), and per-level arguments
/// starting at `base(i)`: seed ('' when none), keep-until (absolute ms, 0 for none),
/// keep-for (ms after now). A missing spent key is created from its seed, or reported.
const BUDGET_PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 3
local function keep(i, base)
  local at = now + tonumber(ARGV[base + 2])
  local until_ms = tonumber(ARGV[base + 1])
  if until_ms > at then at = until_ms end
  for k = 3 * i - 2, 3 * i do redis.call('PEXPIREAT', KEYS[k], at) end
end
local function seed_or_missing()
  local missing = {}
  for i = 1, n do
    local base = BASE(i)
    if redis.call('EXISTS', KEYS[3 * i - 2]) == 0 then
      if ARGV[base] == '' then
        table.insert(missing, i - 1)
      else
        redis.call('SET', KEYS[3 * i - 2], ARGV[base])
        keep(i, base)
      end
    end
  end
  return missing
end
local function purge(i)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3 * i - 1], '-inf', now)
  for _, id in ipairs(gone) do redis.call('HDEL', KEYS[3 * i], id) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3 * i - 1], '-inf', now) end
end
local function reserved(i)
  local sum = 0
  for _, amount in ipairs(redis.call('HVALS', KEYS[3 * i])) do sum = sum + tonumber(amount) end
  return sum
end
";

/// ARGV: reservation id, amount, expiry ms, then per level: limit, seed, keep-until, keep-for.
/// Returns {0, created, expires}, {1, index of the first spent level} or {2, missing...}.
const BUDGET_RESERVE_BODY: &str = r"
local missing = seed_or_missing()
if #missing > 0 then return {2, unpack(missing)} end
for i = 1, n do
  purge(i)
  local spent = tonumber(redis.call('GET', KEYS[3 * i - 2]))
  if spent + reserved(i) >= tonumber(ARGV[BASE(i) - 1]) then return {1, i - 1} end
end
local expires = now + tonumber(ARGV[3])
for i = 1, n do
  redis.call('ZADD', KEYS[3 * i - 1], expires, ARGV[1])
  redis.call('HSET', KEYS[3 * i], ARGV[1], ARGV[2])
  keep(i, BASE(i))
end
return {0, now, expires}
";

/// ARGV: reservation id, actual cost, then per level: seed, keep-until, keep-for.
/// Returns {0} or {2, missing...} (then nothing was applied anywhere).
const BUDGET_SETTLE_BODY: &str = r"
local missing = seed_or_missing()
if #missing > 0 then return {2, unpack(missing)} end
for i = 1, n do
  redis.call('INCRBY', KEYS[3 * i - 2], ARGV[2])
  redis.call('ZREM', KEYS[3 * i - 1], ARGV[1])
  redis.call('HDEL', KEYS[3 * i], ARGV[1])
  keep(i, BASE(i))
end
return {0}
";

/// ARGV: reservation id. A missing counter has nothing to release.
const BUDGET_RELEASE_SCRIPT: &str = r"
for i = 1, #KEYS / 3 do
  redis.call('ZREM', KEYS[3 * i - 1], ARGV[1])
  redis.call('HDEL', KEYS[3 * i], ARGV[1])
end
return {0}
";

/// One level; ARGV: seed, keep-until, keep-for. Returns {0, spent, reserved} or {2, 0}.
const BUDGET_USAGE_BODY: &str = r"
local missing = seed_or_missing()
if #missing > 0 then return {2, 0} end
purge(1)
return {0, tonumber(redis.call('GET', KEYS[1])), reserved(1)}
";

/// A budget script: the prelude with the position of level `i`'s arguments filled in, then
/// the body.
fn budget_script(base: &str, body: &str) -> Script {
    let source = format!("local function BASE(i) return {base} end\n{BUDGET_PRELUDE}{body}");
    Script::new(&source)
}

/// A budget script's reply: `{0, values...}` done, `{2, indices...}` missing counters.
/// Deliberately not generic over a closure: a closure in these async fns makes the compiler
/// unable to prove their futures `Send` for every lifetime (and the gateway spawns them).
fn budget_answer(reply: Vec<i64>) -> Result<Attempt<Vec<i64>>, redis::RedisError> {
    let mut reply = reply.into_iter();
    match reply.next() {
        Some(0) => Ok(Attempt::Done(reply.collect())),
        Some(2) => Ok(Attempt::Missing(
            reply.filter_map(|i| usize::try_from(i).ok()).collect(),
        )),
        _ => Err(unexpected_reply()),
    }
}

fn unexpected_reply() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::ParseError,
        "unexpected budget script reply",
    ))
}

/// A level's seed ('' when none) and how long its keys are kept.
fn add_budget_args(
    invocation: &mut redis::ScriptInvocation<'_>,
    counter: &Counter,
    seed: Option<i64>,
) {
    match seed {
        Some(spent) => invocation.arg(spent),
        None => invocation.arg(""),
    };
    invocation
        .arg(counter.keep_until_ms)
        .arg(counter.keep_for_ms);
}

pub struct RedisBackend {
    connection: ConnectionManager,
    prefix: String,
    failure_mode: RedisFailureMode,
    down_until_ms: AtomicI64,
    rate: Script,
    refund: Script,
    acquire: Script,
    renew: Script,
    charge_tokens: Script,
    token_window: Script,
    budget_reserve: Script,
    budget_settle: Script,
    budget_release: Script,
    budget_usage: Script,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A Redis URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://[REDACTED]@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// A Redis client for `url`. A `rediss://` URL speaks TLS (rustls): with `ca_pem` it trusts
/// only the CA certificates in that PEM bundle (a private CA), else the public web roots.
pub fn redis_client(url: &str, ca_pem: Option<&[u8]>) -> Result<redis::Client, LimitError> {
    let invalid = || LimitError::Connect(format!("{} is not a valid Redis URL", redact(url)));
    match ca_pem {
        None => redis::Client::open(url).map_err(|_| invalid()),
        Some(pem) => {
            if !url.starts_with("rediss://") {
                return Err(LimitError::Connect(
                    "a CA bundle needs a rediss:// URL".to_owned(),
                ));
            }
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            };
            redis::Client::build_with_tls(url, certificates).map_err(|_| {
                LimitError::Connect("the Redis CA bundle holds no usable certificate".to_owned())
            })
        }
    }
}

impl RedisBackend {
    pub async fn connect(
        url: &str,
        ca_pem: Option<&[u8]>,
        prefix: &str,
        failure_mode: RedisFailureMode,
    ) -> Result<Self, LimitError> {
        let client = redis_client(url, ca_pem)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(500))
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| LimitError::Connect(format!("{}: {:?}", redact(url), e.kind())))?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            failure_mode,
            down_until_ms: AtomicI64::new(0),
            rate: Script::new(RATE_SCRIPT),
            refund: Script::new(REFUND_SCRIPT),
            acquire: Script::new(ACQUIRE_SCRIPT),
            renew: Script::new(RENEW_SCRIPT),
            charge_tokens: Script::new(CHARGE_TOKENS_SCRIPT),
            token_window: Script::new(TOKEN_WINDOW_SCRIPT),
            // Reserve: three leading arguments, then four per level (limit first).
            budget_reserve: budget_script("3 + 4 * (i - 1) + 2", BUDGET_RESERVE_BODY),
            // Settle: two leading arguments, then three per level.
            budget_settle: budget_script("2 + 3 * (i - 1) + 1", BUDGET_SETTLE_BODY),
            budget_release: Script::new(BUDGET_RELEASE_SCRIPT),
            budget_usage: budget_script("1", BUDGET_USAGE_BODY),
        })
    }

    pub fn failure_mode(&self) -> RedisFailureMode {
        self.failure_mode
    }

    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= wall_ms()
    }

    pub fn mark_down(&self, err: &redis::RedisError) {
        let previous = self
            .down_until_ms
            .swap(wall_ms() + RETRY_AFTER_FAILURE_MS, Ordering::Relaxed);
        if previous <= wall_ms() {
            tracing::warn!(error = %format!("{:?}", err.kind()), mode = ?self.failure_mode, "Redis unavailable for limits");
        }
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}:{}:{}", self.prefix, kind, key)
    }

    pub async fn check_rate(
        &self,
        key: &str,
        emission_ms: f64,
        burst: u32,
        commit: bool,
    ) -> Result<GcraOutcome, redis::RedisError> {
        let mut connection = self.connection.clone();
        let (allowed, remaining, reset, retry): (i64, i64, String, String) = self
            .rate
            .key(self.key("rate", key))
            .arg(emission_ms)
            .arg(burst)
            .arg(if commit { "1" } else { "0" })
            .invoke_async(&mut connection)
            .await?;
        let parse = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        Ok(GcraOutcome {
            allowed: allowed == 1,
            new_tat: 0.0,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
            reset_after_ms: parse(&reset),
            retry_after_ms: parse(&retry),
        })
    }

    pub async fn refund_rate(&self, key: &str, emission_ms: f64) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .refund
            .key(self.key("rate", key))
            .arg(emission_ms)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    pub async fn acquire_slot(
        &self,
        key: &str,
        max: u32,
        lease: Duration,
    ) -> Result<Option<Slot>, redis::RedisError> {
        let member = uuid::Uuid::new_v4().simple().to_string();
        let zset = self.key("slots", key);
        let lease_ms = lease.as_millis() as u64;
        let mut connection = self.connection.clone();
        let acquired: i64 = self
            .acquire
            .key(&zset)
            .arg(max)
            .arg(lease_ms)
            .arg(&member)
            .invoke_async(&mut connection)
            .await?;
        if acquired != 1 {
            return Ok(None);
        }
        let renew = {
            let mut connection = self.connection.clone();
            let script = self.renew.clone();
            let zset = zset.clone();
            let member = member.clone();
            tokio::spawn(async move {
                let every = Duration::from_millis((lease_ms / 3).max(10));
                loop {
                    tokio::time::sleep(every).await;
                    let renewed: Result<i64, _> = script
                        .key(&zset)
                        .arg(lease_ms)
                        .arg(&member)
                        .invoke_async(&mut connection)
                        .await;
                    if let Err(err) = renewed {
                        tracing::debug!(error = %format!("{:?}", err.kind()), "renewing a stream lease failed");
                    }
                }
            })
        };
        Ok(Some(Slot {
            connection: Some(self.connection.clone()),
            zset,
            member,
            renew,
        }))
    }

    pub async fn tokens_in_window(&self, key: &str) -> Result<u64, redis::RedisError> {
        let mut connection = self.connection.clone();
        let total: i64 = self
            .token_window
            .key(self.key("tokens", key))
            .invoke_async(&mut connection)
            .await?;
        Ok(u64::try_from(total).unwrap_or(0))
    }

    pub async fn charge_tokens(&self, key: &str, tokens: u64) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .charge_tokens
            .key(self.key("tokens", key))
            .arg(tokens)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    pub async fn budget_reserve(
        &self,
        counters: &[Counter],
        seeds: &[Option<i64>],
        id: &str,
        amount: i64,
        expiry_ms: i64,
    ) -> Result<Attempt<ReserveOutcome>, redis::RedisError> {
        let mut invocation = self.budget_reserve.prepare_invoke();
        invocation.arg(id).arg(amount).arg(expiry_ms);
        for (index, counter) in counters.iter().enumerate() {
            self.add_budget_keys(&mut invocation, counter);
            invocation.arg(counter.limit);
            add_budget_args(
                &mut invocation,
                counter,
                seeds.get(index).copied().flatten(),
            );
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        if let [1, index] = reply[..] {
            let index = usize::try_from(index).map_err(|_| unexpected_reply())?;
            return Ok(Attempt::Done(ReserveOutcome::Exceeded(index)));
        }
        Ok(match budget_answer(reply)? {
            Attempt::Done(values) => match values[..] {
                [created_ms, expires_ms] => Attempt::Done(ReserveOutcome::Reserved {
                    created_ms,
                    expires_ms,
                }),
                _ => return Err(unexpected_reply()),
            },
            Attempt::Missing(missing) => Attempt::Missing(missing),
        })
    }

    pub async fn budget_settle(
        &self,
        counters: &[Counter],
        seeds: &[Option<i64>],
        id: &str,
        actual: i64,
    ) -> Result<Attempt<()>, redis::RedisError> {
        let mut invocation = self.budget_settle.prepare_invoke();
        invocation.arg(id).arg(actual);
        for (index, counter) in counters.iter().enumerate() {
            self.add_budget_keys(&mut invocation, counter);
            add_budget_args(
                &mut invocation,
                counter,
                seeds.get(index).copied().flatten(),
            );
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        Ok(match budget_answer(reply)? {
            Attempt::Done(_) => Attempt::Done(()),
            Attempt::Missing(missing) => Attempt::Missing(missing),
        })
    }

    pub async fn budget_release(
        &self,
        counters: &[Counter],
        id: &str,
    ) -> Result<(), redis::RedisError> {
        let mut invocation = self.budget_release.prepare_invoke();
        invocation.arg(id);
        for counter in counters {
            self.add_budget_keys(&mut invocation, counter);
        }
        let mut connection = self.connection.clone();
        let _: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        Ok(())
    }

    pub async fn budget_usage(
        &self,
        counter: &Counter,
        seed: Option<i64>,
    ) -> Result<Attempt<(i64, i64)>, redis::RedisError> {
        let mut invocation = self.budget_usage.prepare_invoke();
        self.add_budget_keys(&mut invocation, counter);
        add_budget_args(&mut invocation, counter, seed);
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        Ok(match budget_answer(reply)? {
            Attempt::Done(values) => match values[..] {
                [spent, reserved] => Attempt::Done((spent, reserved)),
                _ => return Err(unexpected_reply()),
            },
            Attempt::Missing(missing) => Attempt::Missing(missing),
        })
    }

    /// A counter's three keys: `{prefix}:budget:{scope}:{window}` (spent), then `…:res` and
    /// `…:amt` (its reservations).
    fn add_budget_keys(&self, invocation: &mut redis::ScriptInvocation<'_>, counter: &Counter) {
        let spent = self.key("budget", &counter.key);
        invocation
            .key(&spent)
            .key(format!("{spent}:res"))
            .key(format!("{spent}:amt"));
    }
}

/// A Redis slot: a member of the key's sorted set, renewed while held, removed on drop.
pub struct Slot {
    connection: Option<ConnectionManager>,
    zset: String,
    member: String,
    renew: JoinHandle<()>,
}

impl Slot {
    pub fn abandon(mut self) {
        self.renew.abort();
        self.connection = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.renew.abort();
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let zset = std::mem::take(&mut self.zset);
        let member = std::mem::take(&mut self.member);
        runtime.spawn(async move {
            let removed: Result<i64, _> = redis::cmd("ZREM").arg(&zset).arg(&member).query_async(&mut connection).await;
            if let Err(err) = removed {
                // The lease expires on its own; the slot is only held a little longer.
                tracing::debug!(error = %format!("{:?}", err.kind()), "releasing a stream slot failed");
            }
        });
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}
