//! The budget operations of [`Limiter`] (SPEC §18): reserve, settle, release and usage, each
//! on Redis (one script) or in process, seeding missing counters from the ledger. The types and
//! rules are in `budget.rs`; this module only dispatches, so the backends can share those types
//! without an import cycle.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::budget::{
    check_amount, check_scope, Attempt, BudgetDecision, BudgetLevel, Counter, Failure, Reservation,
    ReserveOutcome, Seeds, SpendLedger, KEEP_AFTER_USE_MS, MAX_LEVELS, TOTAL_IDLE_KEEP,
    WINDOW_GRACE_MS,
};
use crate::error::{LimitError, RedisFailureMode};
use crate::Limiter;

/// Evaluates `$attempt` (a `Result<Attempt<T>, Failure>` that may read `$seeds`), seeds what
/// it reports missing from the ledger, and evaluates it again, to `Result<T, Failure>`. A
/// macro rather than a function taking an async closure: the compiler cannot yet prove such
/// a closure's future `Send` for every lifetime, and the gateway spawns these futures.
macro_rules! seeded {
    ($counters:expr, $flights:expr, $ledger:expr, |$seeds:ident| $attempt:expr) => {{
        let mut state = Seeds::new($counters.len());
        loop {
            // Nothing of the attempt may live across the seeding's await (that would cost the
            // future its `Send`), hence the blocks.
            let answer = {
                let $seeds: &[Option<i64>] = &state.values;
                $attempt
            };
            let missing = match answer {
                Ok(Attempt::Done(value)) => break Ok(value),
                Ok(Attempt::Missing(missing)) => missing,
                Err(failure) => break Err(failure),
            };
            if let Err(failure) = state.fill(missing, $counters, $flights, $ledger).await {
                break Err(failure);
            }
        }
    }};
}

fn local_failure(failure: Failure) -> LimitError {
    match failure {
        Failure::Ledger(err) => err,
        // Only a counter vanishing between rounds gets here, which in process cannot happen.
        Failure::Redis(_) => LimitError::Unavailable,
    }
}

impl Limiter {
    /// How long a reservation holds budget when neither settled nor released (the default is
    /// [`DEFAULT_RESERVATION_EXPIRY`]); longer than the longest request.
    /// Lets budgets fall back to an in-process book while Redis is unreachable when the
    /// limiter fails open (exact for this instance only: instances that fall back together
    /// may each spend a request past a budget). Without it, budgets fail closed.
    pub fn with_budgets_failing_open(mut self) -> Self {
        self.budgets_fail_open = true;
        self
    }

    pub fn with_reservation_expiry(mut self, expiry: Duration) -> Self {
        self.reservation_expiry = expiry;
        self
    }

    fn expiry_ms(&self) -> i64 {
        i64::try_from(self.reservation_expiry.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    fn counter(&self, level: &BudgetLevel, now_millis: i64) -> Result<Counter, LimitError> {
        check_scope(&level.scope)?;
        check_amount("a budget limit", level.limit_micro_usd)?;
        let window = level.period.window(now_millis);
        let keep_after_use = self.expiry_ms().saturating_add(KEEP_AFTER_USE_MS);
        let (keep_until_ms, keep_for_ms) = match window.end_millis {
            Some(end) => (end.saturating_add(WINDOW_GRACE_MS), keep_after_use),
            None => (0, keep_after_use.max(TOTAL_IDLE_KEEP.as_millis() as i64)),
        };
        // Built by hand: this runs for every level of every budgeted request.
        let mut key = String::with_capacity(level.scope.len() + 1 + window.id.len());
        key.push_str(&level.scope);
        key.push(':');
        key.push_str(&window.id);
        Ok(Counter {
            key,
            scope: level.scope.clone(),
            window_start: window.start_millis,
            limit: level.limit_micro_usd,
            keep_until_ms,
            keep_for_ms,
        })
    }

    /// Called after every budget operation Redis answered: a fallback book is stale now.
    fn redis_answered(&self) {
        if self.budgets.fallback_used.swap(false, Ordering::Relaxed) {
            self.local.clear_budgets();
        }
    }

    /// What to do when Redis failed: `Ok(())` to go on in process, else the error. Budgets
    /// fail closed whatever `CORTEX_REDIS_FAILURE_MODE` says, unless the limiter was built to
    /// let them fail open ([`Limiter::with_budgets_failing_open`]): a book of this instance's
    /// own cannot see what the others spend, so N instances falling back together could spend
    /// up to N requests past a budget — and a budget is a promise about money.
    fn fall_back(&self, redis: &crate::redis_backend::RedisBackend) -> Result<(), LimitError> {
        match redis.failure_mode() {
            RedisFailureMode::FailOpen if self.budgets_fail_open => {
                self.budgets.fallback_used.store(true, Ordering::Relaxed);
                Ok(())
            }
            RedisFailureMode::FailOpen | RedisFailureMode::FailClosed => {
                Err(LimitError::Unavailable)
            }
        }
    }

    /// Admits the request when, at EVERY level, spent + reserved < limit (the level is not yet
    /// spent), and then reserves `amount_micro_usd` at every level, all atomically (one Lua
    /// script on Redis; one lock in process). Refuses (`Exceeded`, naming the first spent
    /// level) otherwise, reserving nothing. `now_millis` chooses the calendar windows only.
    pub async fn reserve_budget(
        &self,
        levels: &[BudgetLevel],
        amount_micro_usd: i64,
        now_millis: i64,
        ledger: &dyn SpendLedger,
    ) -> Result<BudgetDecision, LimitError> {
        check_amount("a reserved amount", amount_micro_usd)?;
        if levels.len() > MAX_LEVELS {
            return Err(LimitError::InvalidBudget(format!(
                "at most {MAX_LEVELS} budget levels"
            )));
        }
        let counters = levels
            .iter()
            .map(|level| self.counter(level, now_millis))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, counter) in counters.iter().enumerate() {
            if counters[..i].iter().any(|c| c.key == counter.key) {
                return Err(LimitError::InvalidBudget(
                    "the same scope and period appear twice".to_owned(),
                ));
            }
        }
        let id = self.budgets.reservation_id();
        let expiry_ms = self.expiry_ms();
        let flights = &self.budgets.flights;

        let mut on_redis = false;
        let mut outcome = None;
        if let Some(redis) = &self.redis {
            if redis.is_up() {
                let answer: Result<_, Failure> = seeded!(&counters, flights, ledger, |seeds| redis
                    .budget_reserve(&counters, seeds, &id, amount_micro_usd, expiry_ms)
                    .await
                    .map_err(Failure::Redis));
                match answer {
                    Ok(answer) => {
                        self.redis_answered();
                        on_redis = true;
                        outcome = Some(answer);
                    }
                    Err(Failure::Ledger(err)) => return Err(err),
                    Err(Failure::Redis(err)) => redis.mark_down(&err),
                }
            }
            if outcome.is_none() {
                self.fall_back(redis)?;
            }
        }
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                let answer: Result<_, Failure> =
                    seeded!(&counters, flights, ledger, |seeds| Ok(self
                        .local
                        .budget_reserve(
                            &counters,
                            seeds,
                            &id,
                            amount_micro_usd,
                            expiry_ms
                        )));
                answer.map_err(local_failure)?
            }
        };
        Ok(match outcome {
            ReserveOutcome::Exceeded(index) => BudgetDecision::Exceeded {
                scope: levels
                    .get(index)
                    .map(|level| level.scope.clone())
                    .unwrap_or_default(),
            },
            ReserveOutcome::Reserved {
                created_ms,
                expires_ms,
            } => BudgetDecision::Reserved(Reservation {
                id,
                amount: amount_micro_usd,
                counters,
                created_millis: created_ms,
                expires_millis: expires_ms,
                on_redis,
            }),
        })
    }

    /// Replaces the reservation by the actual cost at every level it reserved (spent +=
    /// actual; reserved -= reserved amount), atomically. A counter that has gone missing is
    /// rebuilt from the ledger first, never created with this amount alone. A negative actual
    /// cost is refused, and the reservation is then released.
    pub async fn settle_budget(
        &self,
        reservation: Reservation,
        actual_micro_usd: i64,
        ledger: &dyn SpendLedger,
    ) -> Result<(), LimitError> {
        if let Err(err) = check_amount("an actual cost", actual_micro_usd) {
            if let Err(release) = self.release_budget(reservation).await {
                tracing::debug!(error = %release, "releasing a refused settle failed; it expires");
            }
            return Err(err);
        }
        let counters = &reservation.counters;
        if counters.is_empty() {
            return Ok(());
        }
        let flights = &self.budgets.flights;
        let id = reservation.id.as_str();
        match &self.redis {
            Some(redis) if reservation.on_redis => {
                if redis.is_up() {
                    let answer: Result<(), Failure> =
                        seeded!(counters, flights, ledger, |seeds| redis
                            .budget_settle(counters, seeds, id, actual_micro_usd)
                            .await
                            .map_err(Failure::Redis));
                    match answer {
                        Ok(()) => {
                            self.redis_answered();
                            return Ok(());
                        }
                        Err(Failure::Ledger(err)) => return Err(err),
                        Err(Failure::Redis(err)) => redis.mark_down(&err),
                    }
                }
                self.fall_back(redis)?;
                // The fallback book never held this reservation; it counts the cost only where
                // it already holds the counter (a later local reserve seeds from the ledger).
                self.local
                    .budget_settle_present(counters, id, actual_micro_usd);
                Ok(())
            }
            Some(_) => {
                // Reserved in the fallback book during an outage: settled there, if that book
                // still exists (it is dropped once Redis answers).
                self.local
                    .budget_settle_present(counters, id, actual_micro_usd);
                Ok(())
            }
            None => {
                let answer: Result<(), Failure> =
                    seeded!(counters, flights, ledger, |seeds| Ok(self
                        .local
                        .budget_settle(counters, seeds, id, actual_micro_usd)));
                answer.map_err(local_failure)
            }
        }
    }

    /// Settles `reservation` at once when that needs no IO — no Redis, and this instance's book
    /// holds every counter it reserved at (it does, unless one was dropped since) — so the
    /// common case costs the request neither a task nor an await. Gives the reservation back
    /// otherwise, for [`Limiter::settle_budget`].
    pub fn settle_budget_now(
        &self,
        reservation: Reservation,
        actual_micro_usd: i64,
    ) -> Result<(), Reservation> {
        if self.redis.is_some() || check_amount("an actual cost", actual_micro_usd).is_err() {
            return Err(reservation);
        }
        match self.local.budget_settle(
            &reservation.counters,
            &[],
            &reservation.id,
            actual_micro_usd,
        ) {
            Attempt::Done(()) => Ok(()),
            Attempt::Missing(_) => Err(reservation),
        }
    }

    /// Drops the reservation (the request failed before costing anything): its room is free
    /// again at once.
    pub async fn release_budget(&self, reservation: Reservation) -> Result<(), LimitError> {
        if reservation.counters.is_empty() {
            return Ok(());
        }
        match &self.redis {
            Some(redis) if reservation.on_redis => {
                if redis.is_up() {
                    match redis
                        .budget_release(&reservation.counters, &reservation.id)
                        .await
                    {
                        Ok(()) => {
                            self.redis_answered();
                            return Ok(());
                        }
                        Err(err) => redis.mark_down(&err),
                    }
                }
                // Nothing to release in process; on Redis the reservation expires by itself.
                self.fall_back(redis)
            }
            _ => {
                self.local
                    .budget_release(&reservation.counters, &reservation.id);
                Ok(())
            }
        }
    }

    /// What a level has spent and holds reserved in its current window, for display. A
    /// missing counter is rebuilt from the ledger, as for a reservation.
    pub async fn budget_usage(
        &self,
        level: &BudgetLevel,
        now_millis: i64,
        ledger: &dyn SpendLedger,
    ) -> Result<(i64, i64), LimitError> {
        let counters = [self.counter(level, now_millis)?];
        let flights = &self.budgets.flights;
        if let Some(redis) = &self.redis {
            if redis.is_up() {
                let answer: Result<_, Failure> = seeded!(&counters, flights, ledger, |seeds| redis
                    .budget_usage(&counters[0], seeds.first().copied().flatten())
                    .await
                    .map_err(Failure::Redis));
                match answer {
                    Ok(usage) => {
                        self.redis_answered();
                        return Ok(usage);
                    }
                    Err(Failure::Ledger(err)) => return Err(err),
                    Err(Failure::Redis(err)) => redis.mark_down(&err),
                }
            }
            self.fall_back(redis)?;
        }
        let answer: Result<_, Failure> = seeded!(&counters, flights, ledger, |seeds| Ok(self
            .local
            .budget_usage(&counters[0], seeds.first().copied().flatten())));
        answer.map_err(local_failure)
    }
}
