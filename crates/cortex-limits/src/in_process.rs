//! The in-process backend: sharded maps behind `std::sync::Mutex`, never held across an await.
//!
//! GCRA state is one `f64` per key (our own arithmetic in `gcra.rs` rather than `governor`,
//! because every key may carry its own quota and the Redis script must compute the same
//! answers). Entries whose TAT lies in the past carry no information and are swept.

use std::collections::HashMap;

type FastHash = foldhash::fast::RandomState;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::budget::{Attempt, Counter, ReserveOutcome};
use crate::gcra::{self, GcraOutcome};

const SHARDS: usize = 16;
/// Every this many rate checks, one shard is swept of stale entries.
const SWEEP_EVERY: u64 = 1024;
/// Every this many budget reservations, the budget book is swept of finished windows.
const BUDGET_SWEEP_EVERY: u64 = 1024;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent (single inserts).
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Token counts for the current and the previous minute (a sliding-window approximation).
#[derive(Default, Clone, Copy)]
struct TokenWindow {
    minute: u64,
    current: u64,
    previous: u64,
}

pub struct InProcess {
    started: Instant,
    hasher: RandomState,
    tats: Vec<Mutex<HashMap<String, f64>>>,
    calls: AtomicU64,
    slots: Arc<Mutex<HashMap<String, u32>>>,
    tokens: Mutex<HashMap<String, TokenWindow>>,
    /// Budget counters and their holds hash with foldhash (seeded per map): a budgeted request
    /// touches them several times, and SipHash was a fifth of the reservation's cost.
    budgets: Mutex<HashMap<String, BudgetCounter, FastHash>>,
    budget_reserves: AtomicU64,
}

/// One (scope, window) budget counter: settled spend and the reservations still held.
struct BudgetCounter {
    spent: i64,
    /// Reservation id → (amount, expiry in wall-clock Unix milliseconds).
    holds: HashMap<String, (i64, i64), FastHash>,
    keep_until_ms: i64,
    last_used_ms: i64,
    keep_for_ms: i64,
}

impl BudgetCounter {
    fn new(spent: i64, counter: &Counter, now: i64) -> Self {
        Self {
            spent,
            holds: HashMap::default(),
            keep_until_ms: counter.keep_until_ms,
            last_used_ms: now,
            keep_for_ms: counter.keep_for_ms,
        }
    }

    fn purge(&mut self, now: i64) {
        self.holds.retain(|_, (_, expires)| *expires > now);
    }

    fn reserved(&self) -> i64 {
        self.holds
            .values()
            .fold(0i64, |sum, (amount, _)| sum.saturating_add(*amount))
    }

    /// A finished window nobody holds or used lately; a `total` window is never stale here
    /// (this book is the only record of it in process).
    fn stale(&self, now: i64) -> bool {
        self.keep_until_ms != 0
            && self.holds.is_empty()
            && now > self.keep_until_ms
            && now > self.last_used_ms.saturating_add(self.keep_for_ms)
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seeds the missing counters that have a seed; the indices of those still missing.
fn seed_or_missing(
    book: &mut HashMap<String, BudgetCounter, FastHash>,
    counters: &[Counter],
    seeds: &[Option<i64>],
    now: i64,
) -> Vec<usize> {
    let mut missing = Vec::new();
    for (index, counter) in counters.iter().enumerate() {
        if book.contains_key(&counter.key) {
            continue;
        }
        match seeds.get(index).copied().flatten() {
            Some(spent) => {
                book.insert(counter.key.clone(), BudgetCounter::new(spent, counter, now));
            }
            None => missing.push(index),
        }
    }
    missing
}

impl InProcess {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            hasher: RandomState::new(),
            tats: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            calls: AtomicU64::new(0),
            slots: Arc::new(Mutex::new(HashMap::new())),
            tokens: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::default()),
            budget_reserves: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, f64>> {
        &self.tats[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub fn check_rate(&self, key: &str, emission_ms: f64, burst: u32, commit: bool) -> GcraOutcome {
        let now = self.now_ms();
        let outcome = {
            let mut shard = lock(self.shard(key));
            let outcome = gcra::decide(shard.get(key).copied(), now, emission_ms, burst);
            if outcome.allowed && commit {
                match shard.get_mut(key) {
                    Some(tat) => *tat = outcome.new_tat,
                    None => {
                        shard.insert(key.to_owned(), outcome.new_tat);
                    }
                }
            }
            outcome
        };
        let calls = self.calls.fetch_add(1, Ordering::Relaxed);
        if calls.is_multiple_of(SWEEP_EVERY) {
            let index = ((calls / SWEEP_EVERY) as usize) % SHARDS;
            lock(&self.tats[index]).retain(|_, tat| *tat > now);
        }
        outcome
    }

    pub fn refund_rate(&self, key: &str, emission_ms: f64) {
        let now = self.now_ms();
        let mut shard = lock(self.shard(key));
        match gcra::refund(shard.get(key).copied(), now, emission_ms) {
            Some(tat) => {
                if let Some(stored) = shard.get_mut(key) {
                    *stored = tat;
                }
            }
            None => {
                shard.remove(key);
            }
        }
    }

    pub fn acquire_slot(&self, key: &str, max: u32) -> Option<Slot> {
        let mut slots = lock(&self.slots);
        let held = slots.entry(key.to_owned()).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(Slot {
            slots: self.slots.clone(),
            key: key.to_owned(),
            released: false,
        })
    }

    fn minute(&self) -> (u64, f64) {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        ((secs / 60.0).floor() as u64, (secs % 60.0) / 60.0)
    }

    fn rolled(window: TokenWindow, minute: u64) -> TokenWindow {
        match minute.saturating_sub(window.minute) {
            0 => window,
            1 => TokenWindow {
                minute,
                current: 0,
                previous: window.current,
            },
            _ => TokenWindow {
                minute,
                current: 0,
                previous: 0,
            },
        }
    }

    /// Current minute plus the previous one weighted by how much of it still overlaps the last
    /// sixty seconds.
    pub fn tokens_in_window(&self, key: &str) -> u64 {
        let (minute, fraction) = self.minute();
        let window = lock(&self.tokens)
            .get(key)
            .copied()
            .map(|w| Self::rolled(w, minute))
            .unwrap_or_default();
        window.current + (window.previous as f64 * (1.0 - fraction)) as u64
    }

    pub fn charge_tokens(&self, key: &str, tokens: u64) {
        let (minute, _) = self.minute();
        let mut map = lock(&self.tokens);
        let entry = map.entry(key.to_owned()).or_insert(TokenWindow {
            minute,
            current: 0,
            previous: 0,
        });
        *entry = Self::rolled(*entry, minute);
        entry.current = entry.current.saturating_add(tokens);
    }

    /// The in-process twin of the Redis reserve script: seed, purge, decide, reserve, under
    /// one lock.
    pub fn budget_reserve(
        &self,
        counters: &[Counter],
        seeds: &[Option<i64>],
        id: &str,
        amount: i64,
        expiry_ms: i64,
    ) -> Attempt<ReserveOutcome> {
        let now = wall_ms();
        let mut book = lock(&self.budgets);
        let missing = seed_or_missing(&mut book, counters, seeds, now);
        if !missing.is_empty() {
            return Attempt::Missing(missing);
        }
        for (index, counter) in counters.iter().enumerate() {
            let Some(entry) = book.get_mut(&counter.key) else {
                return Attempt::Missing(vec![index]);
            };
            entry.purge(now);
            if entry.spent.saturating_add(entry.reserved()) >= counter.limit {
                return Attempt::Done(ReserveOutcome::Exceeded(index));
            }
        }
        let expires_ms = now.saturating_add(expiry_ms);
        for counter in counters {
            if let Some(entry) = book.get_mut(&counter.key) {
                entry.holds.insert(id.to_owned(), (amount, expires_ms));
                entry.last_used_ms = now;
            }
        }
        let reserves = self.budget_reserves.fetch_add(1, Ordering::Relaxed);
        if (reserves + 1).is_multiple_of(BUDGET_SWEEP_EVERY) {
            book.retain(|_, entry| {
                entry.purge(now);
                !entry.stale(now)
            });
        }
        Attempt::Done(ReserveOutcome::Reserved {
            created_ms: now,
            expires_ms,
        })
    }

    /// Spent += actual and the reservation dropped, at every counter; missing counters are
    /// reported (and nothing applied) until a seed is given for them.
    pub fn budget_settle(
        &self,
        counters: &[Counter],
        seeds: &[Option<i64>],
        id: &str,
        actual: i64,
    ) -> Attempt<()> {
        let now = wall_ms();
        let mut book = lock(&self.budgets);
        let missing = seed_or_missing(&mut book, counters, seeds, now);
        if !missing.is_empty() {
            return Attempt::Missing(missing);
        }
        Self::settle_into(&mut book, counters, id, actual, now);
        Attempt::Done(())
    }

    /// Like [`InProcess::budget_settle`] for the fallback book: counters it does not hold are
    /// skipped (the ledger will have the cost when they are next seeded).
    pub fn budget_settle_present(&self, counters: &[Counter], id: &str, actual: i64) {
        let mut book = lock(&self.budgets);
        Self::settle_into(&mut book, counters, id, actual, wall_ms());
    }

    fn settle_into(
        book: &mut HashMap<String, BudgetCounter, FastHash>,
        counters: &[Counter],
        id: &str,
        actual: i64,
        now: i64,
    ) {
        for counter in counters {
            if let Some(entry) = book.get_mut(&counter.key) {
                entry.spent = entry.spent.saturating_add(actual);
                entry.holds.remove(id);
                entry.last_used_ms = now;
            }
        }
    }

    pub fn budget_release(&self, counters: &[Counter], id: &str) {
        let mut book = lock(&self.budgets);
        for counter in counters {
            if let Some(entry) = book.get_mut(&counter.key) {
                entry.holds.remove(id);
            }
        }
    }

    /// (spent, reserved) of one counter.
    pub fn budget_usage(&self, counter: &Counter, seed: Option<i64>) -> Attempt<(i64, i64)> {
        let now = wall_ms();
        let mut book = lock(&self.budgets);
        if seed_or_missing(&mut book, std::slice::from_ref(counter), &[seed], now).is_empty() {
            if let Some(entry) = book.get_mut(&counter.key) {
                entry.purge(now);
                return Attempt::Done((entry.spent, entry.reserved()));
            }
        }
        Attempt::Missing(vec![0])
    }

    /// Drops the whole budget book (a fallback book once Redis is back).
    pub fn clear_budgets(&self) {
        lock(&self.budgets).clear();
    }
}

/// An in-process slot: a counter decremented on drop.
pub struct Slot {
    slots: Arc<Mutex<HashMap<String, u32>>>,
    key: String,
    released: bool,
}

impl Slot {
    /// In process there is no lease to outlive the holder: abandoning frees at once.
    pub fn release_now(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let mut slots = lock(&self.slots);
        if let Some(held) = slots.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                slots.remove(&self.key);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}
