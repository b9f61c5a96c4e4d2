//! Offline-queue entries staged in memory: the durable copies of messages being delivered to online
//! sessions. Most are settled (the client has the message) within milliseconds, so writing each to
//! disk and deleting it again was most of the cost of a message crossing the server. Staged entries
//! reach the backend when durability is asked for (`Stores::flush`, which every acknowledgement to a
//! sender waits for), when they have waited a checkpoint interval, or at shutdown.
//!
//! To everything else this is the offline store: listings, counts and removals see staged and
//! written entries alike, ordered by key (keys come from the backend, so they interleave correctly).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jid::BareJid;

use super::{OfflineStore, StoreError};

const SHARDS: usize = 16;

struct Entry {
    stanza: Vec<u8>,
    staged_at: Instant,
}

type Shard = HashMap<BareJid, BTreeMap<u64, Entry>>;

pub struct StagedOffline {
    backend: Arc<dyn OfflineStore>,
    /// By user; a user's entries and their moves to the backend happen under one shard lock, so
    /// a removal never misses an entry that is on its way to disk.
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl StagedOffline {
    pub fn new(backend: Arc<dyn OfflineStore>) -> Self {
        StagedOffline {
            backend,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, user: &BareJid) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(user) as usize) % SHARDS;
        // Entries are plain data: a panic elsewhere leaves them consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps a stanza for `user` in memory and returns its key in the user's queue.
    pub fn stage(&self, user: &BareJid, stanza: Vec<u8>) -> Result<u64, StoreError> {
        let key = self.backend.new_key()?;
        let entry = Entry {
            stanza,
            staged_at: Instant::now(),
        };
        let mut shard = self.shard(user);
        // The user's map usually exists (a conversation in progress): no key copy then.
        match shard.get_mut(user) {
            Some(entries) => {
                entries.insert(key, entry);
            }
            None => {
                shard.insert(user.clone(), BTreeMap::from([(key, entry)]));
            }
        }
        Ok(key)
    }

    /// Writes every staged entry to the backend (not flushed: the caller flushes).
    pub fn write_all(&self) -> Result<usize, StoreError> {
        self.write_staged_before(None)
    }

    /// Writes the entries staged longer than `age` ago.
    pub fn write_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        match Instant::now().checked_sub(age) {
            Some(cutoff) => self.write_staged_before(Some(cutoff)),
            None => Ok(0),
        }
    }

    fn write_staged_before(&self, cutoff: Option<Instant>) -> Result<usize, StoreError> {
        let mut written = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let mut result = Ok(());
            shard.retain(|user, entries| {
                if result.is_err() {
                    return true;
                }
                let due: Vec<u64> = entries
                    .iter()
                    .filter(|(_, e)| cutoff.is_none_or(|c| e.staged_at <= c))
                    .map(|(k, _)| *k)
                    .collect();
                for key in due {
                    if let Some(entry) = entries.get(&key) {
                        if let Err(err) = self.backend.put(user, key, &entry.stanza) {
                            result = Err(err);
                            return true;
                        }
                        entries.remove(&key);
                        written += 1;
                    }
                }
                !entries.is_empty()
            });
            result?;
        }
        Ok(written)
    }
}

impl OfflineStore for StagedOffline {
    fn new_key(&self) -> Result<u64, StoreError> {
        self.backend.new_key()
    }

    fn put(&self, user: &BareJid, key: u64, stanza: &[u8]) -> Result<(), StoreError> {
        self.backend.put(user, key, stanza)
    }

    fn push(&self, user: &BareJid, stanza: &[u8], limit: usize) -> Result<Option<u64>, StoreError> {
        if limit != usize::MAX && self.count(user)? >= limit {
            return Ok(None);
        }
        self.backend.push(user, stanza, usize::MAX)
    }

    fn list(&self, user: &BareJid) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        // Staged first: an entry moving to the backend meanwhile is then seen twice (merged by
        // key), never missed.
        let mut all: BTreeMap<u64, Vec<u8>> = self
            .shard(user)
            .get(user)
            .map(|entries| {
                entries
                    .iter()
                    .map(|(k, e)| (*k, e.stanza.clone()))
                    .collect()
            })
            .unwrap_or_default();
        all.extend(self.backend.list(user)?);
        Ok(all.into_iter().collect())
    }

    fn remove(&self, user: &BareJid, keys: &[u64]) -> Result<(), StoreError> {
        let mut shard = self.shard(user);
        let rest: Vec<u64> = match shard.get_mut(user) {
            Some(entries) => {
                let rest = keys
                    .iter()
                    .copied()
                    .filter(|k| entries.remove(k).is_none())
                    .collect();
                if entries.is_empty() {
                    shard.remove(user);
                }
                rest
            }
            None => keys.to_vec(),
        };
        if rest.is_empty() {
            return Ok(());
        }
        // Under the shard lock, so that no write of these entries is in progress.
        self.backend.remove(user, &rest)
    }

    fn contains(&self, user: &BareJid, key: u64) -> Result<bool, StoreError> {
        let staged = self
            .shard(user)
            .get(user)
            .is_some_and(|entries| entries.contains_key(&key));
        Ok(staged || self.backend.contains(user, key)?)
    }

    fn count(&self, user: &BareJid) -> Result<usize, StoreError> {
        let staged = self.shard(user).get(user).map_or(0, BTreeMap::len);
        Ok(staged + self.backend.count(user)?)
    }

    fn delete_user(&self, user: &BareJid) -> Result<(), StoreError> {
        let mut shard = self.shard(user);
        shard.remove(user);
        self.backend.delete_user(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Stores;

    fn user(name: &str) -> BareJid {
        BareJid::new(&format!("{name}@localhost")).unwrap()
    }

    #[test]
    fn staged_entries_are_listed_with_written_ones_in_key_order_and_settle_without_disk() {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::open_sled(dir.path()).unwrap();
        let staged = &stores.offline;
        let alice = user("alice");
        let first = staged.stage(&alice, b"<a/>".to_vec()).unwrap();
        let second = staged.push(&alice, b"<b/>", 10).unwrap().unwrap();
        let third = staged.stage(&alice, b"<c/>".to_vec()).unwrap();
        let listed: Vec<u64> = staged.list(&alice).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(listed, vec![first, second, third]);
        assert_eq!(staged.count(&alice).unwrap(), 3);
        // Settling a staged entry never touches the backend.
        staged.remove(&alice, &[third]).unwrap();
        assert!(!staged.contains(&alice, third).unwrap());
        // Writing moves the rest to the backend, where they survive a reopen.
        assert_eq!(staged.write_all().unwrap(), 1);
        assert!(staged.contains(&alice, first).unwrap());
        stores.flush_blocking().unwrap();
        drop(stores);
        let reopened = Stores::open_sled(dir.path()).unwrap();
        let listed: Vec<Vec<u8>> = reopened
            .offline
            .list(&alice)
            .unwrap()
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(listed, vec![b"<a/>".to_vec(), b"<b/>".to_vec()]);
    }

    #[test]
    fn only_entries_older_than_the_checkpoint_age_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::open_sled(dir.path()).unwrap();
        let bob = user("bob");
        stores.offline.stage(&bob, b"<x/>".to_vec()).unwrap();
        assert_eq!(
            stores
                .offline
                .write_older_than(Duration::from_secs(60))
                .unwrap(),
            0
        );
        assert_eq!(stores.offline.write_older_than(Duration::ZERO).unwrap(), 1);
        assert_eq!(stores.offline.count(&bob).unwrap(), 1);
    }
}
