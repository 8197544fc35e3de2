//! The keyspace: binary-safe string keys and values with optional deadlines.
//!
//! Expiry works like Redis: lazily, when a command touches an expired key, and actively,
//! in a background task that runs `expiry_hz` times a second. Redis samples random keys
//! because its expiry data is a hash table; here an ordered index of `(deadline, key)`
//! sits next to the map, so the active cycle removes exactly the keys that are due, with
//! cost proportional to what it removes.
//!
//! Commands run against [`Keyspace`], the keyspace with its lock held ([`Db::lock`]): one
//! lock per command, or one for a whole EXEC, so a transaction is atomic and neither
//! other clients nor the active expiry cycle see it half done. The keyspace also tracks
//! WATCHed keys ([`crate::watch`]): every change to one, expiry included, is recorded
//! there.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::CommandError;
use crate::number::parse_i64;
use crate::watch::WatchedKeys;

/// Keys removed per lock acquisition in the active cycle, so a burst of expiring keys
/// cannot hold the lock long enough to stall commands.
const PURGE_BATCH: usize = 1024;

/// Rough per-key bookkeeping cost (map slot, entry, index node) for `used_memory`.
const ENTRY_OVERHEAD: usize = 96;

/// A cheap-to-clone handle on the shared keyspace.
#[derive(Clone)]
pub(crate) struct Db {
    shared: Arc<Shared>,
}

/// Owns the background expiry task: dropping the guard stops it, so the task never
/// outlives the server that created it (mini-redis `DbDropGuard`).
pub(crate) struct DbDropGuard {
    db: Db,
}

struct Shared {
    state: Mutex<Keyspace>,
    stop: CancellationToken,
}

/// The keys, their deadlines and the watch list; reached through [`Db::lock`].
#[derive(Default)]
pub(crate) struct Keyspace {
    entries: HashMap<Bytes, Entry>,
    deadlines: BTreeSet<(Instant, Bytes)>,
    used_bytes: usize,
    expired_keys: u64,
    watched: WatchedKeys,
}

struct Entry {
    value: Bytes,
    deadline: Option<Instant>,
}

/// When a key should stop existing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Deadline {
    /// Already due: setting it deletes the key.
    Passed,
    At(Instant),
}

impl Deadline {
    /// `ms` milliseconds from now; zero or negative means already due.
    pub(crate) fn after_millis(ms: i64) -> Option<Deadline> {
        match u64::try_from(ms) {
            Ok(0) | Err(_) => Some(Deadline::Passed),
            Ok(ms) => Instant::now()
                .checked_add(Duration::from_millis(ms))
                .map(Deadline::At),
        }
    }

    /// At Unix time `unix_ms`; a time in the past means already due.
    pub(crate) fn at_unix_millis(unix_ms: i64) -> Option<Deadline> {
        Deadline::after_millis(unix_ms.saturating_sub(unix_now_millis()))
    }
}

/// Milliseconds since the Unix epoch, for Redis' absolute times (EXAT, PXAT).
pub(crate) fn unix_now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What SET does with the key's existing time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetTtl {
    /// Plain SET: the new value has no deadline.
    Clear,
    /// KEEPTTL.
    Keep,
    /// EX / PX / EXAT / PXAT.
    Expire(Deadline),
}

/// SET's NX / XX / IFEQ / IFNE: at most one per command (Redis 8.4, Valkey 8.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SetCondition {
    Always,
    IfMissing,
    IfExists,
    /// IFEQ: only over an existing value equal to this one; a missing key stays missing.
    /// One round trip for a compare-and-set by value, where WATCH … EXEC takes two.
    IfEqual(Bytes),
    /// IFNE: unless the existing value equals this one; a missing key is created.
    IfNotEqual(Bytes),
}

/// What SET found and did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SetOutcome {
    pub previous: Option<Bytes>,
    pub written: bool,
}

/// EXPIRE's NX / XX / GT / LT flags; XX may be combined with GT or LT. A key without a
/// deadline counts as never expiring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ExpireCondition {
    pub nx: bool,
    pub xx: bool,
    pub gt: bool,
    pub lt: bool,
}

/// A key's remaining life, as TTL / PTTL report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttl {
    Missing,
    Persistent,
    Remaining(Duration),
}

/// Numbers for INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbStats {
    pub keys: usize,
    pub expires: usize,
    pub used_bytes: usize,
    pub expired_keys: u64,
}

impl DbDropGuard {
    /// Creates an empty keyspace and starts its active expiry task (`hz` cycles a second);
    /// must be called inside a tokio runtime.
    pub(crate) fn new(hz: u32) -> DbDropGuard {
        let shared = Arc::new(Shared {
            state: Mutex::new(Keyspace::default()),
            stop: CancellationToken::new(),
        });
        let period = Duration::from_secs(1) / hz.max(1);
        tokio::spawn(purge_expired_keys(shared.clone(), period));
        DbDropGuard { db: Db { shared } }
    }

    pub(crate) fn db(&self) -> Db {
        self.db.clone()
    }
}

impl Drop for DbDropGuard {
    fn drop(&mut self) {
        self.db.shared.stop.cancel();
    }
}

async fn purge_expired_keys(shared: Arc<Shared>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        while shared.lock().purge_due(now, PURGE_BATCH) {
            tokio::task::yield_now().await;
        }
    }
    tracing::debug!("active expiry task stopped");
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Keyspace> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // later commands would trip on worse than the panic itself; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Db {
    /// The keyspace, locked until the guard drops. Never hold it across an `.await`.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Keyspace> {
        self.shared.lock()
    }
}

impl Keyspace {
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Bytes> {
        self.live(key, Instant::now()).map(|e| e.value.clone())
    }

    /// SET with all its options.
    pub(crate) fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        condition: SetCondition,
        ttl: SetTtl,
    ) -> SetOutcome {
        let now = Instant::now();
        let existing = self.live(key, now);
        let previous = existing.as_ref().map(|e| e.value.clone());
        let old_deadline = existing.and_then(|e| e.deadline);
        let allowed = match &condition {
            SetCondition::Always => true,
            SetCondition::IfMissing => previous.is_none(),
            SetCondition::IfExists => previous.is_some(),
            SetCondition::IfEqual(expected) => previous.as_ref() == Some(expected),
            SetCondition::IfNotEqual(unwanted) => previous.as_ref() != Some(unwanted),
        };
        if !allowed {
            return SetOutcome {
                previous,
                written: false,
            };
        }
        let deadline = match ttl {
            SetTtl::Clear => None,
            SetTtl::Keep => old_deadline,
            SetTtl::Expire(Deadline::At(at)) => Some(at),
            SetTtl::Expire(Deadline::Passed) => {
                self.remove(key);
                // Redis writes the key and then deletes it: a change for WATCH even
                // when the key did not exist.
                self.watched.touch(key);
                return SetOutcome {
                    previous,
                    written: true,
                };
            }
        };
        // Copy rather than keep the slice: a slice of the read buffer would pin the
        // whole buffer it came from for as long as the key lives.
        self.insert(
            Bytes::copy_from_slice(key),
            Bytes::copy_from_slice(value),
            deadline,
        );
        SetOutcome {
            previous,
            written: true,
        }
    }

    /// Removes `key` and returns its value, in one step (GETDEL).
    pub(crate) fn take(&mut self, key: &[u8]) -> Option<Bytes> {
        let value = self.live(key, Instant::now()).map(|e| e.value.clone())?;
        self.remove(key);
        Some(value)
    }

    /// Removes `keys`; returns how many existed.
    pub(crate) fn del(&mut self, keys: &[Bytes]) -> i64 {
        let now = Instant::now();
        let mut removed = 0;
        for key in keys {
            if self.live(key, now).is_some() {
                self.remove(key);
                removed += 1;
            }
        }
        removed
    }

    /// How many of `keys` exist, counting a key named twice twice (as Redis does).
    pub(crate) fn exists(&mut self, keys: &[Bytes]) -> i64 {
        let now = Instant::now();
        let mut found = 0;
        for key in keys {
            if self.live(key, now).is_some() {
                found += 1;
            }
        }
        found
    }

    /// Sets the key's deadline if it exists and `condition` holds; returns whether it did.
    pub(crate) fn expire(
        &mut self,
        key: &[u8],
        deadline: Deadline,
        condition: ExpireCondition,
    ) -> bool {
        let now = Instant::now();
        let Some(entry) = self.live(key, now) else {
            return false;
        };
        // GT and LT compare whole Unix milliseconds, as Redis keeps deadlines: one set in
        // the same millisecond is the same deadline.
        let wall = unix_now_millis();
        let ms = |deadline: Deadline| match deadline {
            Deadline::Passed => i64::MIN,
            Deadline::At(at) if at >= now => {
                wall.saturating_add(i64::try_from((at - now).as_millis()).unwrap_or(i64::MAX))
            }
            Deadline::At(at) => {
                wall.saturating_sub(i64::try_from((now - at).as_millis()).unwrap_or(i64::MAX))
            }
        };
        let current = entry.deadline.map(|at| ms(Deadline::At(at)));
        let new = ms(deadline);
        let refused = (condition.nx && current.is_some())
            || (condition.xx && current.is_none())
            || (condition.gt && current.is_none_or(|current| new <= current))
            || (condition.lt && current.is_some_and(|current| new >= current));
        if refused {
            return false;
        }
        match deadline {
            Deadline::Passed => {
                self.remove(key);
            }
            Deadline::At(at) => self.set_deadline(key, Some(at)),
        }
        true
    }

    pub(crate) fn ttl(&mut self, key: &[u8]) -> Ttl {
        let now = Instant::now();
        match self.live(key, now) {
            None => Ttl::Missing,
            Some(Entry { deadline: None, .. }) => Ttl::Persistent,
            Some(Entry {
                deadline: Some(at), ..
            }) => Ttl::Remaining(at.saturating_duration_since(now)),
        }
    }

    /// INCRBY: a missing key counts as 0; the key keeps its deadline.
    pub(crate) fn incr_by(&mut self, key: &[u8], delta: i64) -> Result<i64, CommandError> {
        let (current, deadline) = match self.live(key, Instant::now()) {
            None => (0, None),
            Some(entry) => (
                parse_i64(&entry.value).ok_or(CommandError::NotInteger)?,
                entry.deadline,
            ),
        };
        let next = current.checked_add(delta).ok_or(CommandError::Overflow)?;
        self.insert(
            Bytes::copy_from_slice(key),
            Bytes::from(next.to_string()),
            deadline,
        );
        Ok(next)
    }

    /// FLUSHDB / FLUSHALL. Like Redis, it counts as a change only for watched keys that
    /// existed.
    pub(crate) fn flush(&mut self) {
        let entries = &self.entries;
        self.watched.touch_where(|key| entries.contains_key(key));
        self.entries.clear();
        self.deadlines.clear();
        self.used_bytes = 0;
    }

    /// Keys currently stored, including expired ones the active cycle has not reached
    /// yet (Redis' DBSIZE counts the same way).
    pub(crate) fn stats(&self) -> DbStats {
        DbStats {
            keys: self.entries.len(),
            expires: self.deadlines.len(),
            used_bytes: self.used_bytes,
            expired_keys: self.expired_keys,
        }
    }

    /// Starts watching `key` for one client and returns the version to compare against
    /// at EXEC. A key already past its deadline is expired first, so its removal does
    /// not count as a change later (Redis 7 ignores keys that were expired at WATCH).
    pub(crate) fn watch(&mut self, key: &Bytes) -> u64 {
        self.live(key, Instant::now());
        self.watched.watch(key)
    }

    /// One client stops watching `key`.
    pub(crate) fn unwatch(&mut self, key: &[u8]) {
        self.watched.unwatch(key);
    }

    /// Whether `key` changed since it was watched at `version`. A key whose deadline has
    /// passed counts as changed even if no cycle removed it yet, as in Redis 7.
    pub(crate) fn changed_since(&mut self, key: &[u8], version: u64) -> bool {
        self.live(key, Instant::now());
        self.watched.version(key) != Some(version)
    }

    /// The key's entry unless it is missing or expired; an expired key is removed here
    /// (lazy expiry).
    fn live(&mut self, key: &[u8], now: Instant) -> Option<&mut Entry> {
        let expired = self
            .entries
            .get(key)
            .is_some_and(|e| e.deadline.is_some_and(|at| at <= now));
        if expired {
            self.remove(key);
            self.expired_keys += 1;
            return None;
        }
        self.entries.get_mut(key)
    }

    fn insert(&mut self, key: Bytes, value: Bytes, deadline: Option<Instant>) {
        self.remove(&key);
        self.watched.touch(&key);
        self.used_bytes += key.len() + value.len() + ENTRY_OVERHEAD;
        if let Some(at) = deadline {
            self.deadlines.insert((at, key.clone()));
        }
        self.entries.insert(key, Entry { value, deadline });
    }

    /// Every removal, whether by a command or by expiry, is a change for WATCH.
    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let (key, entry) = self.entries.remove_entry(key)?;
        self.watched.touch(&key);
        self.used_bytes = self
            .used_bytes
            .saturating_sub(key.len() + entry.value.len() + ENTRY_OVERHEAD);
        if let Some(at) = entry.deadline {
            self.deadlines.remove(&(at, key));
        }
        Some(entry)
    }

    fn set_deadline(&mut self, key: &[u8], deadline: Option<Instant>) {
        let Some((key, entry)) = self.entries.get_key_value(key) else {
            return;
        };
        let key = key.clone();
        let old = entry.deadline;
        if let Some(at) = old {
            self.deadlines.remove(&(at, key.clone()));
        }
        if let Some(at) = deadline {
            self.deadlines.insert((at, key.clone()));
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.deadline = deadline;
        }
        self.watched.touch(&key);
    }

    /// Removes up to `max` keys due at `now`; returns whether more are due.
    fn purge_due(&mut self, now: Instant, max: usize) -> bool {
        for _ in 0..max {
            let due = match self.deadlines.first() {
                Some((at, key)) if *at <= now => key.clone(),
                _ => return false,
            };
            self.remove(&due);
            self.expired_keys += 1;
        }
        self.deadlines.first().is_some_and(|(at, _)| *at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Watches;

    fn key(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn lazy_expiry_hides_due_keys() {
        let guard = DbDropGuard::new(10);
        let db = guard.db();
        let deadline = Deadline::after_millis(100).expect("deadline");
        db.lock()
            .set(b"k", b"v", SetCondition::Always, SetTtl::Expire(deadline));
        assert_eq!(db.lock().get(b"k"), Some(key("v")));
        // Stop the active task first so only lazy expiry can remove the key.
        drop(guard);
        tokio::time::advance(Duration::from_millis(101)).await;
        assert_eq!(db.lock().stats().keys, 1);
        assert_eq!(db.lock().get(b"k"), None);
        assert_eq!(db.lock().stats().keys, 0);
        assert_eq!(db.lock().stats().expired_keys, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn active_expiry_removes_keys_nobody_reads() {
        let guard = DbDropGuard::new(10);
        let db = guard.db();
        for i in 0..3000 {
            let k = format!("k{i}");
            let deadline = Deadline::after_millis(50).expect("deadline");
            db.lock().set(
                k.as_bytes(),
                b"v",
                SetCondition::Always,
                SetTtl::Expire(deadline),
            );
        }
        db.lock()
            .set(b"forever", b"v", SetCondition::Always, SetTtl::Clear);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats = db.lock().stats();
        assert_eq!((stats.keys, stats.expires), (1, 0));
        assert_eq!(stats.expired_keys, 3000);
    }

    #[tokio::test]
    async fn set_conditions_and_keepttl() {
        let guard = DbDropGuard::new(10);
        let db = guard.db();
        let nx = db
            .lock()
            .set(b"k", b"1", SetCondition::IfMissing, SetTtl::Clear);
        assert!(nx.written && nx.previous.is_none());
        let nx = db
            .lock()
            .set(b"k", b"2", SetCondition::IfMissing, SetTtl::Clear);
        assert_eq!(
            nx,
            SetOutcome {
                previous: Some(key("1")),
                written: false
            }
        );
        assert!(
            !db.lock()
                .set(b"x", b"1", SetCondition::IfExists, SetTtl::Clear)
                .written
        );
        let deadline = Deadline::after_millis(10_000).expect("deadline");
        assert!(db.lock().expire(b"k", deadline, ExpireCondition::default()));
        db.lock()
            .set(b"k", b"3", SetCondition::Always, SetTtl::Keep);
        assert!(matches!(db.lock().ttl(b"k"), Ttl::Remaining(_)));
        db.lock()
            .set(b"k", b"4", SetCondition::Always, SetTtl::Clear);
        assert_eq!(db.lock().ttl(b"k"), Ttl::Persistent);
        assert_eq!(db.lock().stats().expires, 0);
    }

    #[tokio::test]
    async fn expire_conditions_treat_no_ttl_as_infinite() {
        let guard = DbDropGuard::new(10);
        let db = guard.db();
        db.lock()
            .set(b"k", b"v", SetCondition::Always, SetTtl::Clear);
        let soon = Deadline::after_millis(10_000).expect("deadline");
        let later = Deadline::after_millis(20_000).expect("deadline");
        let flag = |set: fn(&mut ExpireCondition)| {
            let mut c = ExpireCondition::default();
            set(&mut c);
            c
        };
        let (nx, xx) = (flag(|c| c.nx = true), flag(|c| c.xx = true));
        let (gt, lt) = (flag(|c| c.gt = true), flag(|c| c.lt = true));
        let xx_lt = flag(|c| (c.xx, c.lt) = (true, true));
        assert!(!db.lock().expire(b"k", soon, xx_lt));
        assert!(!db.lock().expire(b"k", soon, gt));
        assert!(!db.lock().expire(b"k", soon, xx));
        assert!(db.lock().expire(b"k", later, lt));
        assert!(!db.lock().expire(b"k", later, nx));
        assert!(db.lock().expire(b"k", soon, lt));
        assert!(!db.lock().expire(b"k", later, lt));
        assert!(
            db.lock()
                .expire(b"k", Deadline::Passed, ExpireCondition::default())
        );
        assert_eq!(db.lock().ttl(b"k"), Ttl::Missing);
        assert!(
            !db.lock()
                .expire(b"missing", soon, ExpireCondition::default())
        );
    }

    #[tokio::test]
    async fn incr_keeps_ttl_and_checks_overflow() {
        let guard = DbDropGuard::new(10);
        let db = guard.db();
        assert_eq!(db.lock().incr_by(b"n", 5), Ok(5));
        let deadline = Deadline::after_millis(10_000).expect("deadline");
        db.lock().expire(b"n", deadline, ExpireCondition::default());
        assert_eq!(db.lock().incr_by(b"n", -7), Ok(-2));
        assert!(matches!(db.lock().ttl(b"n"), Ttl::Remaining(_)));
        db.lock().set(
            b"n",
            b"9223372036854775807",
            SetCondition::Always,
            SetTtl::Clear,
        );
        assert_eq!(db.lock().incr_by(b"n", 1), Err(CommandError::Overflow));
        db.lock()
            .set(b"s", b"abc", SetCondition::Always, SetTtl::Clear);
        assert_eq!(db.lock().incr_by(b"s", 1), Err(CommandError::NotInteger));
    }

    #[tokio::test]
    async fn memory_accounting_returns_to_zero() {
        let guard = DbDropGuard::new(10);
        let db = guard.db();
        db.lock()
            .set(b"a", b"12345", SetCondition::Always, SetTtl::Clear);
        db.lock()
            .set(b"a", b"1", SetCondition::Always, SetTtl::Clear);
        assert_eq!(db.lock().stats().used_bytes, 2 + ENTRY_OVERHEAD);
        assert_eq!(db.lock().del(&[key("a"), key("a")]), 1);
        assert_eq!(db.lock().stats().used_bytes, 0);
    }

    /// Watches `k`, which expires in 50 ms.
    fn watch_expiring(db: &Db) -> Watches {
        let deadline = Deadline::after_millis(50).expect("deadline");
        db.lock()
            .set(b"k", b"v", SetCondition::Always, SetTtl::Expire(deadline));
        let mut watches = Watches::new(db.clone());
        watches.add(&mut db.lock(), key("k"));
        watches
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_key_that_expires_counts_as_changed() {
        let guard = DbDropGuard::new(10);
        let db = guard.db();
        let watches = watch_expiring(&db);
        assert!(watches.intact(&mut db.lock()));
        // Removed by the active cycle...
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(db.lock().stats().keys, 0);
        assert!(!watches.intact(&mut db.lock()));
        drop(watches);
        // ...or only due, with nobody having removed it yet.
        drop(guard);
        let watches = watch_expiring(&db);
        tokio::time::advance(Duration::from_millis(51)).await;
        assert_eq!(db.lock().stats().keys, 1);
        assert!(!watches.intact(&mut db.lock()));
        drop(watches);
        assert!(
            db.lock().watched.is_empty(),
            "dropped watches leave nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_already_expired_when_watched_is_not_a_change() {
        let guard = DbDropGuard::new(10);
        let db = guard.db();
        drop(guard);
        let deadline = Deadline::after_millis(50).expect("deadline");
        db.lock()
            .set(b"k", b"v", SetCondition::Always, SetTtl::Expire(deadline));
        tokio::time::advance(Duration::from_millis(51)).await;
        let mut watches = Watches::new(db.clone());
        watches.add(&mut db.lock(), key("k"));
        assert!(watches.intact(&mut db.lock()));
        db.lock().flush();
        assert!(watches.intact(&mut db.lock()), "FLUSHDB of a missing key");
        watches.clear(&mut db.lock());
        assert!(db.lock().watched.is_empty());
    }
}
