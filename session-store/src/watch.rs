//! WATCH bookkeeping, as Redis' `touchWatchedKey`: the keyspace keeps a version for each
//! key someone watches, bumped on every change; a client remembers the version it saw.
//! At EXEC a different version means the key changed and the transaction is refused.
//!
//! Only watched keys are tracked, and an entry lives exactly as long as some client
//! watches its key: EXEC, DISCARD, UNWATCH and a closed connection all end watches, so
//! memory follows the watches held now, never the history of changes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use bytes::Bytes;

use crate::db::{Db, Keyspace};

/// The keyspace's side: which keys are watched, by how many clients, at which version.
#[derive(Debug, Default)]
pub(crate) struct WatchedKeys {
    keys: HashMap<Bytes, Watched>,
}

#[derive(Debug)]
struct Watched {
    version: u64,
    watchers: usize,
}

impl WatchedKeys {
    /// Adds one watcher of `key`; returns the key's current version.
    pub(crate) fn watch(&mut self, key: &Bytes) -> u64 {
        let watched = self.keys.entry(key.clone()).or_insert(Watched {
            version: 0,
            watchers: 0,
        });
        watched.watchers += 1;
        watched.version
    }

    /// Removes one watcher of `key`, and the entry with the last one.
    pub(crate) fn unwatch(&mut self, key: &[u8]) {
        if let Some(watched) = self.keys.get_mut(key) {
            watched.watchers -= 1;
            if watched.watchers == 0 {
                self.keys.remove(key);
            }
        }
    }

    /// Records a change of `key`; costs one hash lookup when nobody watches it.
    pub(crate) fn touch(&mut self, key: &[u8]) {
        if let Some(watched) = self.keys.get_mut(key) {
            watched.version = watched.version.wrapping_add(1);
        }
    }

    /// Records a change of every watched key for which `changed` holds (FLUSHDB).
    pub(crate) fn touch_where(&mut self, changed: impl Fn(&[u8]) -> bool) {
        for (key, watched) in &mut self.keys {
            if changed(key) {
                watched.version = watched.version.wrapping_add(1);
            }
        }
    }

    pub(crate) fn version(&self, key: &[u8]) -> Option<u64> {
        self.keys.get(key).map(|watched| watched.version)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One client's side: the keys it watches and the versions it saw. Dropping it (the
/// connection ended, however) ends its watches, so a closed connection leaves nothing in
/// the keyspace.
pub(crate) struct Watches {
    db: Db,
    seen: HashMap<Bytes, u64>,
}

impl Watches {
    pub(crate) fn new(db: Db) -> Watches {
        Watches {
            db,
            seen: HashMap::new(),
        }
    }

    /// WATCH `key`. Watching a key twice keeps the first version, so a change in between
    /// still refuses the transaction (as in Redis, where the client is already dirty).
    pub(crate) fn add(&mut self, keyspace: &mut Keyspace, key: Bytes) {
        if let Entry::Vacant(slot) = self.seen.entry(key) {
            let version = keyspace.watch(slot.key());
            slot.insert(version);
        }
    }

    /// How many keys are watched.
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no watched key changed since it was watched.
    pub(crate) fn intact(&self, keyspace: &mut Keyspace) -> bool {
        self.seen
            .iter()
            .all(|(key, &version)| !keyspace.changed_since(key, version))
    }

    /// Ends all watches (UNWATCH, and what EXEC and DISCARD do).
    pub(crate) fn clear(&mut self, keyspace: &mut Keyspace) {
        for (key, _) in self.seen.drain() {
            keyspace.unwatch(&key);
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        if self.seen.is_empty() {
            return;
        }
        let mut keyspace = self.db.lock();
        for key in self.seen.keys() {
            keyspace.unwatch(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_move_only_for_watched_keys_and_entries_go_with_the_last_watcher() {
        let mut watched = WatchedKeys::default();
        let key = Bytes::from_static(b"k");
        watched.touch(b"k");
        assert_eq!(watched.version(b"k"), None, "unwatched keys leave no trace");
        assert_eq!(watched.watch(&key), 0);
        assert_eq!(watched.watch(&key), 0);
        watched.touch(b"k");
        watched.touch_where(|k| k == b"other");
        assert_eq!(watched.version(b"k"), Some(1));
        watched.unwatch(b"k");
        assert_eq!(watched.version(b"k"), Some(1));
        watched.unwatch(b"k");
        assert!(watched.is_empty());
    }
}
