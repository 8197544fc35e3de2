//! `shared` mode with a near-cache: sessions read from the store are kept in this node's
//! memory, and session-change events from the broker evict them the moment another node
//! changes them.
//!
//! The ways near-caches go stale, and what closes each one here:
//! - An event overtaking a read in flight (the read then caches the old copy): every
//!   event raises a per-session *floor*, and a copy older than the floor is never cached
//!   or served. Floor update + eviction and floor check + insert are one critical section.
//! - Events missed while the broker link is down: the cache is emptied on disconnect and
//!   stays off (reads go to the store) until the bus has subscribed again; a read started
//!   before that moment cannot fill the new cache (the epoch changed).
//! - A client's own write arriving on another node before the event: its cookie carries
//!   the version it last saw; a cached copy older than that is skipped.
//! - Anything not covered above (an event lost with a publisher's connection): entries
//!   have a hard maximum age.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::FutureExt;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use moka::sync::Cache;
use serde::Serialize;
use sha2::Sha256;

use super::redis::RedisStore;
use super::{CompareAndSetMode, Saved, SessionStore, StoreError, UserSession, Write};
use crate::cookies::CookieKeys;
use crate::events::{Bus, BusConfig, Event, EventKind, Subscriber};
use crate::id::{IdCache, IdHasher};
use crate::{Record, SessionId};

const MAX_ENTRIES: u64 = 100_000;
/// The version an event announces for a session that ended (logout, revocation, expiry,
/// rotated away): ids are never reused, so nothing under it is ever valid again.
const ENDED: u64 = u64::MAX;
/// Lags kept for the percentiles in [`NearCacheStats`].
const LAG_SAMPLES: usize = 4096;

/// What the near-cache has done, for `/metrics` and the benchmark.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NearCacheStats {
    pub subscribed: bool,
    pub hits: u64,
    pub misses: u64,
    /// Entries evicted because an event announced a newer version.
    pub evictions: u64,
    /// Entries replaced by the newer state an event carried.
    pub updates: u64,
    pub events: u64,
    /// Times the cache was emptied because the broker link went down.
    pub flushes: u64,
    /// Publish → receipt of events, over the latest few thousand, in microseconds.
    pub lag_p50_us: Option<u64>,
    pub lag_p99_us: Option<u64>,
    /// How the store behind the cache saves changes: one round trip (`set_if_eq`) or two
    /// (`watch`).
    pub compare_and_set: CompareAndSetMode,
}

/// Authenticates the session state a write event carries: HMAC-SHA256 over id, version
/// and the state, under a key derived from the cookie keys (the first signs, all verify,
/// so it rotates with them). A forged or unverifiable state only evicts.
struct EventSigner {
    keys: Vec<Vec<u8>>,
}

impl EventSigner {
    fn mac(key: &[u8], event: &Event, record: &Record) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(event.id.as_bytes());
        mac.update(&[0]);
        mac.update(&event.version.to_be_bytes());
        mac.update(&serde_json::to_vec(record).ok()?);
        Some(mac)
    }

    fn sign(&self, mut event: Event) -> Event {
        let tag = match (self.keys.first(), &event.session) {
            (Some(key), Some(record)) => Self::mac(key, &event, record),
            _ => None,
        };
        event.mac = tag.map(|m| URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()));
        event
    }

    /// The carried state, if it is authentic.
    fn verified(&self, event: &mut Event) -> Option<Record> {
        let record = event.session.take()?;
        let tag = URL_SAFE_NO_PAD.decode(event.mac.as_deref()?).ok()?;
        self.keys
            .iter()
            .find_map(|key| Self::mac(key, event, &record)?.verify_slice(&tag).ok())?;
        Some(record)
    }
}

/// The cache proper, told about events and link state by the bus.
struct NearCache {
    entries: IdCache<Arc<Record>>,
    /// Highest version any event announced per session; outlives entries by one max age,
    /// long enough that no read begun before the event can still be in flight.
    floors: IdCache<u64>,
    live: AtomicBool,
    /// Serialises every change of the cache's contents against events and link changes,
    /// and counts link changes so a read begun before one cannot fill the cache after it.
    epoch: Mutex<u64>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    updates: AtomicU64,
    events: AtomicU64,
    flushes: AtomicU64,
    lags: Mutex<VecDeque<u64>>,
    signer: EventSigner,
}

impl NearCache {
    fn new(max_age: Duration, signer: EventSigner) -> Self {
        NearCache {
            signer,
            entries: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(max_age)
                .build_with_hasher(IdHasher::default()),
            // Bounded by time only: a floor the cache dropped to make room would silently
            // reopen the race it closes.
            floors: Cache::builder()
                .time_to_live(max_age.saturating_mul(2))
                .build_with_hasher(IdHasher::default()),
            live: AtomicBool::new(false),
            epoch: Mutex::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            events: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            lags: Mutex::new(VecDeque::with_capacity(LAG_SAMPLES)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn floor(&self, id: &SessionId) -> u64 {
        self.floors.get(id).unwrap_or(0)
    }

    /// A cached copy at least as new as everything the client and the events know of.
    /// The floor needs no lookup here: every change that raises it drops older entries in
    /// the same critical section, and nothing below it is ever inserted, so any entry
    /// present is at or above it.
    fn get(&self, id: &SessionId, min_version: u64) -> Option<Record> {
        let hit = self
            .live
            .load(Ordering::Acquire)
            .then(|| self.entries.get(id))
            .flatten()
            .filter(|r| r.version >= min_version);
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit.map(|r| Record::clone(&r))
    }

    /// Call before reading the store; pass the result to [`NearCache::fill`].
    fn begin_read(&self) -> u64 {
        *self.lock()
    }

    /// Caches a copy read from (or just written to) the store, unless the link changed
    /// since the read began or an event already announced something newer.
    fn fill(&self, id: &SessionId, record: &Record, began: u64) {
        let epoch = self.lock();
        let newer_cached = self
            .entries
            .get(id)
            .is_some_and(|r| r.version > record.version);
        if *epoch == began
            && self.live.load(Ordering::Acquire)
            && record.version >= self.floor(id)
            && !newer_cached
        {
            self.entries.insert(id.clone(), Arc::new(record.clone()));
        }
    }

    /// This node itself changed the session to `version` (`ENDED`: ended it): raise the
    /// floor now rather than when its own event comes back, so a read of this node that
    /// was in flight meanwhile cannot cache the older copy.
    fn advance(&self, id: &SessionId, version: u64) {
        let _epoch = self.lock();
        if version > self.floor(id) {
            self.floors.insert(id.clone(), version);
        }
        if self.entries.get(id).is_some_and(|r| r.version < version) {
            self.entries.invalidate(id);
        }
    }

    fn forget(&self, id: &SessionId) {
        let _epoch = self.lock();
        self.entries.invalidate(id);
    }

    fn flush(&self, live: bool) {
        let mut epoch = self.lock();
        *epoch += 1;
        self.live.store(live, Ordering::Release);
        self.entries.invalidate_all();
    }

    /// Empties the cache without changing whether it is live.
    fn clear(&self) {
        let mut epoch = self.lock();
        *epoch += 1;
        self.entries.invalidate_all();
    }

    fn record_lag(&self, lag_us: u64) {
        let mut lags = self.lags.lock().unwrap_or_else(PoisonError::into_inner);
        if lags.len() == LAG_SAMPLES {
            lags.pop_front();
        }
        lags.push_back(lag_us);
    }

    fn stats(&self) -> NearCacheStats {
        let mut lags: Vec<u64> = self
            .lags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        lags.sort_unstable();
        let pct = |p: usize| {
            lags.get((lags.len() * p / 100).min(lags.len().saturating_sub(1)))
                .copied()
        };
        NearCacheStats {
            subscribed: self.live.load(Ordering::Acquire),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            lag_p50_us: pct(50),
            lag_p99_us: pct(99),
            // The store's, filled in by `CachedStore::stats`.
            compare_and_set: CompareAndSetMode::Unknown,
        }
    }
}

impl Subscriber for NearCache {
    fn event(&self, mut event: Event) {
        self.events.fetch_add(1, Ordering::Relaxed);
        if let Some(lag) = event.lag_micros() {
            self.record_lag(lag);
        }
        let Some(id) = SessionId::parse(&event.id) else {
            return;
        };
        let _epoch = self.lock();
        if event.version > self.floor(&id) {
            self.floors.insert(id.clone(), event.version);
        }
        if self
            .entries
            .get(&id)
            .is_some_and(|r| r.version < event.version)
        {
            // A write that carries the new state replaces the old copy; anything else
            // (rotation, logout, revocation, expiry) drops it.
            match self.signer.verified(&mut event) {
                Some(record)
                    if event.kind == EventKind::Write && record.version == event.version =>
                {
                    self.entries.insert(id, Arc::new(record));
                    self.updates.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.entries.invalidate(&id);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn disconnected(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flush(false);
    }

    fn subscribed(&self) {
        self.flush(true);
    }
}

/// A [`RedisStore`] read through this node's near-cache, publishing every change.
pub struct CachedStore {
    store: RedisStore,
    cache: Arc<NearCache>,
    bus: Bus,
}

impl CachedStore {
    /// Starts the event bus (connecting in the background: until it has subscribed, every
    /// read goes to the store). `max_age` bounds how long any entry is trusted.
    /// `keys` are the session cookie keys: the state write events carry is authenticated
    /// with a key derived from them, so every node needs the same ones anyway.
    pub fn start(store: RedisStore, bus: BusConfig, max_age: Duration, keys: &CookieKeys) -> Self {
        let signer = EventSigner {
            keys: keys.derived("session-layer near-cache events"),
        };
        let cache = Arc::new(NearCache::new(max_age, signer));
        let bus = Bus::start(bus, cache.clone());
        CachedStore { store, cache, bus }
    }

    pub fn stats(&self) -> NearCacheStats {
        NearCacheStats {
            compare_and_set: self.store.compare_and_set_mode(),
            ..self.cache.stats()
        }
    }

    /// Stops the event bus; the cache goes cold.
    pub async fn close(&self) {
        self.bus.close().await;
        self.cache.flush(false);
    }

    /// A store that fails may come back empty (it keeps sessions in memory), and its
    /// sessions with it: nothing cached before the failure is trusted after it.
    fn checked<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            self.cache.clear();
        }
        result
    }

    /// Publishes an event that ends a session (rotation, logout, revocation, expiry) and
    /// waits for the broker's confirm, so the response that ends a session leaves once
    /// every node's queue holds the news. Without a confirm (broker down, timeout) the
    /// event waits in the outbox and goes out after the reconnect, and the response leaves
    /// anyway: until then a node still linked to the broker may serve the ended session
    /// from its cache, for at most the cache's maximum age.
    async fn announce(&self, event: Event) {
        if let Err(err) = self.bus.publish(&event).await {
            tracing::debug!(session = %event.id.get(..8).unwrap_or_default(), %err, "session event not confirmed");
        }
    }

    /// Publishes a write without waiting for the confirm: the writer's own client is
    /// covered by the version in its cookie, and others see the change one event lag
    /// later either way.
    async fn announce_write(&self, event: Event) {
        if let Err(err) = self.bus.publish_detached(&event).await {
            tracing::debug!(session = %event.id.get(..8).unwrap_or_default(), %err, "session event not sent");
        }
    }
}

impl SessionStore for CachedStore {
    fn load<'a>(
        &'a self,
        id: &'a SessionId,
        min_version: u64,
    ) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        async move {
            if let Some(hit) = self.cache.get(id, min_version) {
                return Ok(Some(hit));
            }
            let began = self.cache.begin_read();
            let found = self.checked(self.store.load(id, min_version).await)?;
            if let Some(record) = &found {
                self.cache.fill(id, record, began);
            }
            Ok(found)
        }
        .boxed()
    }

    fn save<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Saved, StoreError>> {
        async move {
            let began = self.cache.begin_read();
            let (id, record, replaces, expected) =
                (write.id, write.record, write.replaces, write.expected);
            let saved = match self.checked(self.store.save(write).await) {
                Ok(saved) => saved,
                Err(err) => {
                    // The write may have happened (a timeout after EXEC): other nodes must
                    // not keep trusting the version it started from.
                    let stored_under = replaces.unwrap_or(id);
                    self.cache.advance(stored_under, expected + 1);
                    self.announce(Event::new(
                        stored_under.as_str(),
                        expected + 1,
                        EventKind::Write,
                    ))
                    .await;
                    return Err(err);
                }
            };
            match saved {
                Saved::Done => {
                    self.cache.advance(id, record.version);
                    self.cache.fill(id, record, began);
                    if let Some(old) = replaces {
                        self.cache.advance(old, ENDED);
                        self.announce(Event::new(old.as_str(), ENDED, EventKind::Rotate))
                            .await;
                    }
                    let written = Event::new(id.as_str(), record.version, EventKind::Write);
                    let written = self.cache.signer.sign(written.with_session(record.clone()));
                    self.announce_write(written).await;
                }
                Saved::Conflict => {
                    self.cache.forget(replaces.unwrap_or(id));
                }
            }
            Ok(saved)
        }
        .boxed()
    }

    fn remove<'a>(
        &'a self,
        id: &'a SessionId,
        kind: EventKind,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let removed = self.checked(self.store.remove(id, kind).await);
            // Announced even when the store failed: the removal may have happened.
            self.cache.advance(id, ENDED);
            self.announce(Event::new(id.as_str(), ENDED, kind)).await;
            removed
        }
        .boxed()
    }

    fn touch<'a>(
        &'a self,
        id: &'a SessionId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let live = self.checked(self.store.touch(id, ttl).await)?;
            if !live {
                self.cache.forget(id);
            }
            Ok(live)
        }
        .boxed()
    }

    fn index_add<'a>(
        &'a self,
        user: &'a str,
        session: UserSession,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>> {
        self.store.index_add(user, session, ttl)
    }

    fn index_remove<'a>(
        &'a self,
        user: &'a str,
        ids: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.index_remove(user, ids)
    }

    fn index_list<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>> {
        self.store.index_list(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_signer() -> EventSigner {
        let keys = CookieKeys::new(&["a test key of at least thirty-two bytes"]).expect("key");
        EventSigner {
            keys: keys.derived("test"),
        }
    }

    fn record(version: u64) -> Record {
        Record {
            version,
            ..Record::fresh()
        }
    }

    fn live_cache() -> NearCache {
        let cache = NearCache::new(Duration::from_secs(60), test_signer());
        cache.subscribed();
        cache
    }

    fn event(id: &SessionId, version: u64) -> Event {
        Event::new(id.as_str(), version, EventKind::Write)
    }

    #[test]
    fn nothing_is_cached_or_served_until_subscribed() {
        let cache = NearCache::new(Duration::from_secs(60), test_signer());
        let id = SessionId::generate();
        let began = cache.begin_read();
        cache.fill(&id, &record(1), began);
        assert!(cache.get(&id, 0).is_none());
        cache.subscribed();
        assert!(
            cache.get(&id, 0).is_none(),
            "a fill from before subscribing is gone"
        );
    }

    #[test]
    fn an_event_evicts_older_copies_and_keeps_newer_ones() {
        let cache = live_cache();
        let id = SessionId::generate();
        cache.fill(&id, &record(3), cache.begin_read());
        cache.event(event(&id, 3));
        assert_eq!(cache.get(&id, 0).map(|r| r.version), Some(3), "own event");
        cache.event(event(&id, 4));
        assert!(cache.get(&id, 0).is_none());
        assert_eq!(cache.stats().evictions, 1);
    }

    #[test]
    fn a_write_event_carrying_the_state_updates_the_copy() {
        let cache = live_cache();
        let id = SessionId::generate();
        cache.fill(&id, &record(3), cache.begin_read());
        let mut newer = record(4);
        newer.data.insert("cart".into(), serde_json::json!(["tea"]));
        // Unsigned (or forged) state only evicts.
        cache.event(event(&id, 4).with_session(newer.clone()));
        assert!(cache.get(&id, 0).is_none());
        cache.fill(&id, &record(4), cache.begin_read());
        let mut forged = cache.signer.sign(event(&id, 5).with_session(record(5)));
        forged.session = Some(newer.clone());
        cache.event(forged);
        assert!(cache.get(&id, 0).is_none());
        // Authentic state replaces the copy.
        cache.fill(&id, &record(5), cache.begin_read());
        let six = Record {
            version: 6,
            ..newer.clone()
        };
        cache.event(cache.signer.sign(event(&id, 6).with_session(six.clone())));
        assert_eq!(cache.get(&id, 6), Some(six));
        let stats = cache.stats();
        assert_eq!((stats.updates, stats.evictions), (1, 2));
        // A logout never leaves a copy behind, whatever it carries.
        let gone = Event::new(id.as_str(), ENDED, EventKind::Logout).with_session(record(7));
        cache.event(gone);
        assert!(cache.get(&id, 0).is_none());
    }

    #[test]
    fn a_read_overtaken_by_an_event_is_not_cached() {
        let cache = live_cache();
        let id = SessionId::generate();
        let began = cache.begin_read();
        // The store answered version 5, but version 6's event arrived before the fill.
        cache.event(event(&id, 6));
        cache.fill(&id, &record(5), began);
        assert!(cache.get(&id, 0).is_none());
        cache.fill(&id, &record(6), cache.begin_read());
        assert_eq!(cache.get(&id, 0).map(|r| r.version), Some(6));
    }

    #[test]
    fn a_link_change_during_a_read_keeps_its_result_out() {
        let cache = live_cache();
        let id = SessionId::generate();
        let began = cache.begin_read();
        cache.disconnected();
        cache.subscribed();
        cache.fill(&id, &record(1), began);
        assert!(cache.get(&id, 0).is_none());
    }

    #[test]
    fn disconnect_flushes_and_bypasses_the_cache() {
        let cache = live_cache();
        let id = SessionId::generate();
        cache.fill(&id, &record(1), cache.begin_read());
        cache.disconnected();
        assert!(cache.get(&id, 0).is_none());
        cache.fill(&id, &record(1), cache.begin_read());
        assert!(
            cache.get(&id, 0).is_none(),
            "no caching while events can be missed"
        );
        cache.subscribed();
        assert!(cache.get(&id, 0).is_none(), "the new link starts empty");
        assert_eq!(cache.stats().flushes, 1);
    }

    /// What lets `get` skip the floor: whatever mix of fills, events and own changes, no
    /// copy below the newest version announced for a session is ever served.
    #[test]
    fn no_copy_below_an_announced_version_is_served() {
        let cache = live_cache();
        let ids = [SessionId::generate(), SessionId::generate()];
        let mut announced = [0u64; 2];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for step in 0..5_000 {
            let which = next(2) as usize;
            let id = &ids[which];
            let version = 1 + next(40);
            match next(4) {
                0 => cache.fill(id, &record(version), cache.begin_read()),
                1 => {
                    cache.event(event(id, version));
                    announced[which] = announced[which].max(version);
                }
                2 => {
                    cache.advance(id, version);
                    announced[which] = announced[which].max(version);
                }
                _ => {
                    let floor = announced[which];
                    cache.fill(id, &record(floor), cache.begin_read());
                    let served = cache.get(id, 0).map(|r| r.version);
                    assert!(
                        served >= Some(floor),
                        "step {step}: a copy at the floor is served"
                    );
                }
            }
            if let Some(copy) = cache.get(id, 0) {
                assert!(
                    copy.version >= announced[which],
                    "step {step}: served {} below {}",
                    copy.version,
                    announced[which]
                );
            }
        }
    }

    #[test]
    fn a_copy_older_than_the_clients_cookie_is_skipped() {
        let cache = live_cache();
        let id = SessionId::generate();
        cache.fill(&id, &record(2), cache.begin_read());
        assert!(cache.get(&id, 3).is_none());
        assert!(cache.get(&id, 2).is_some());
    }
}
