//! The sled backend: one database in `data_dir`, one tree per concern, a schema version in `meta`.
//!
//! Layout (schema 1):
//! - `meta`: `schema_version` → u32 big-endian.
//! - `accounts`: `<localpart>@<domain>` → `[1]` + JSON of `StoredCredentials`.
//! - `rosters`: `<user>\0` → roster version (u64 big-endian); `<user>\0<contact>` → `[1]` + JSON of
//!   `RosterItem`.
//! - `offline`: `<user>\0` + id (u64 big-endian, from sled's monotonic id generator) → `[1]` + the
//!   stanza as sent. Ids grow, so a prefix scan returns a user's messages in arrival order.
//! - `activity`: `<user>` → `[1]` + Unix seconds (u64 big-endian) + status text (UTF-8).
//! - `values`: `<user>\0<key>` → `[1]` + the document (vCard, private XML, blocklist).
//! - `rooms`: `<room>@<service>` → `[1]` + the room's document (JSON, see `modules::muc::stored`).
//! - `archive`: `<archive>\0` + key (u64 big-endian, microseconds, see `ArchivedStanza`) → `[1]` +
//!   nonce (u64 big-endian) + length of `with` (u16 big-endian) + `with` + the stanza. One archive's
//!   entries are one contiguous, time-ordered key range.
//! - `archive_with`: `<archive>\0<bare JID of with>\0` + key → empty: the conversations index of
//!   `archive`. Written before the entry it points to and removed after it, so it never lacks an
//!   entry; an index key whose entry is gone (a crash in between) is skipped when read.
//! - `uploads`: file id (random, URL-safe) → `[1]` + JSON of `UploadRecord`. The bytes are files
//!   in the data directory (see `modules::upload`).
//! - `uploads_owner`: `<owner>\0<id>` → empty; `uploads_due`: due time (Unix seconds, u64
//!   big-endian) + id → empty. Both written before the record and removed after it; a stale key
//!   is skipped (and `uploads_due` drops it) when read.

use std::path::Path;

use jid::BareJid;

use super::{
    AccountStore, ActivityStore, ArchiveStore, ArchivedStanza, Durability, KeyValueStore,
    OfflineStore, RoomStore, RosterItem, RosterStore, StoreError, StoredCredentials, UploadRecord,
    UploadStore,
};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const VALUE_VERSION: u8 = 1;

pub struct SledBackend {
    db: sled::Db,
    accounts: sled::Tree,
    rosters: sled::Tree,
    offline: sled::Tree,
    activity: sled::Tree,
    values: sled::Tree,
    rooms: sled::Tree,
    archive: sled::Tree,
    archive_with: sled::Tree,
    uploads: sled::Tree,
    uploads_owner: sled::Tree,
    uploads_due: sled::Tree,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledBackend {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db = sled::Config::new().path(dir.join("db")).open().map_err(|e| {
            let locked = matches!(&e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
                || e.to_string().contains("could not acquire lock");
            if locked {
                StoreError::Backend(format!(
                    "the data directory {} is in use by another process (is the server running?)",
                    dir.display()
                ))
            } else {
                StoreError::Backend(format!("cannot open the database in {}: {e}", dir.display()))
            }
        })?;
        let meta = db.open_tree("meta").map_err(backend)?;
        match meta.get("schema_version").map_err(backend)? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(backend)?;
                db.flush().map_err(backend)?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        key: "meta/schema_version".into(),
                        message: "not a 4-byte number".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Backend(format!(
                        "the data in {} has schema version {found}, newer than this build's {SCHEMA_VERSION}: use a newer Rookery",
                        dir.display()
                    )));
                }
            }
        }
        let accounts = db.open_tree("accounts").map_err(backend)?;
        let rosters = db.open_tree("rosters").map_err(backend)?;
        let offline = db.open_tree("offline").map_err(backend)?;
        let activity = db.open_tree("activity").map_err(backend)?;
        let values = db.open_tree("values").map_err(backend)?;
        let rooms = db.open_tree("rooms").map_err(backend)?;
        let archive = db.open_tree("archive").map_err(backend)?;
        let archive_with = db.open_tree("archive_with").map_err(backend)?;
        if archive_with.is_empty() && !archive.is_empty() {
            // Archives written before the index existed (room archives): index them once.
            index_archives(&archive, &archive_with)?;
            db.flush().map_err(backend)?;
        }
        let uploads = db.open_tree("uploads").map_err(backend)?;
        let uploads_owner = db.open_tree("uploads_owner").map_err(backend)?;
        let uploads_due = db.open_tree("uploads_due").map_err(backend)?;
        Ok(SledBackend {
            db,
            uploads,
            uploads_owner,
            uploads_due,
            accounts,
            rosters,
            offline,
            activity,
            values,
            rooms,
            archive,
            archive_with,
        })
    }
}

fn encode(credentials: &StoredCredentials) -> Result<Vec<u8>, StoreError> {
    let mut value = vec![VALUE_VERSION];
    serde_json::to_writer(&mut value, credentials)
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(value)
}

fn decode(key: &BareJid, value: &[u8]) -> Result<StoredCredentials, StoreError> {
    match value.split_first() {
        Some((&VALUE_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
                key: format!("accounts/{key}"),
                message: e.to_string(),
            })
        }
        _ => Err(StoreError::Corrupt {
            key: format!("accounts/{key}"),
            message: "unknown value version".into(),
        }),
    }
}

impl AccountStore for SledBackend {
    fn get(&self, jid: &BareJid) -> Result<Option<StoredCredentials>, StoreError> {
        match self.accounts.get(jid.as_str()).map_err(backend)? {
            Some(v) => decode(jid, &v).map(Some),
            None => Ok(None),
        }
    }

    fn create(&self, jid: &BareJid, credentials: &StoredCredentials) -> Result<bool, StoreError> {
        let value = encode(credentials)?;
        let swapped = self
            .accounts
            .compare_and_swap(jid.as_str(), None as Option<&[u8]>, Some(value))
            .map_err(backend)?;
        Ok(swapped.is_ok())
    }

    fn set_credentials(
        &self,
        jid: &BareJid,
        credentials: &StoredCredentials,
    ) -> Result<bool, StoreError> {
        let value = encode(credentials)?;
        let mut existed = false;
        self.accounts
            .fetch_and_update(jid.as_str(), |old| {
                existed = old.is_some();
                old.map(|_| value.clone())
            })
            .map_err(backend)?;
        Ok(existed)
    }

    fn delete(&self, jid: &BareJid) -> Result<bool, StoreError> {
        Ok(self
            .accounts
            .remove(jid.as_str())
            .map_err(backend)?
            .is_some())
    }

    fn list(&self, domain: &str) -> Result<Vec<BareJid>, StoreError> {
        let mut out = Vec::new();
        for item in self.accounts.iter() {
            let (key, _) = item.map_err(backend)?;
            let text = String::from_utf8_lossy(&key);
            if let Ok(jid) = BareJid::new(&text) {
                if jid.domain().as_str() == domain {
                    out.push(jid);
                }
            }
        }
        Ok(out)
    }
}

/// `<user>\0`: the prefix of every key of one user in a per-user tree.
fn user_prefix(user: &BareJid) -> Vec<u8> {
    let mut key = Vec::with_capacity(user.as_str().len() + 1);
    key.extend_from_slice(user.as_str().as_bytes());
    key.push(0);
    key
}

fn contact_key(user: &BareJid, contact: &BareJid) -> Vec<u8> {
    let mut key = user_prefix(user);
    key.extend_from_slice(contact.as_str().as_bytes());
    key
}

fn decode_item(key: &[u8], value: &[u8]) -> Result<RosterItem, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: format!("rosters/{}", String::from_utf8_lossy(key)),
        message,
    };
    match value.split_first() {
        Some((&VALUE_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
        }
        _ => Err(corrupt("unknown value version".into())),
    }
}

fn tx_abort(e: sled::transaction::TransactionError<StoreError>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => backend(e),
    }
}

impl SledBackend {
    /// Writes or removes one roster key and, for a visible change, bumps the roster version,
    /// atomically.
    fn change_roster(
        &self,
        user: &BareJid,
        contact: &BareJid,
        value: Option<Vec<u8>>,
        visible: bool,
    ) -> Result<u64, StoreError> {
        let version_key = user_prefix(user);
        let item_key = contact_key(user, contact);
        self.rosters
            .transaction(|tx| {
                let version = tx
                    .get(&version_key)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
                    + u64::from(visible);
                tx.insert(version_key.as_slice(), &version.to_be_bytes())?;
                match &value {
                    Some(v) => {
                        tx.insert(item_key.as_slice(), v.as_slice())?;
                    }
                    None => {
                        tx.remove(item_key.as_slice())?;
                    }
                }
                Ok(version)
            })
            .map_err(tx_abort)
    }

    fn delete_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in tree.scan_prefix(prefix) {
            let (key, _) = item.map_err(backend)?;
            batch.remove(key);
        }
        tree.apply_batch(batch).map_err(backend)
    }
}

impl RosterStore for SledBackend {
    fn roster(&self, user: &BareJid) -> Result<(u64, Vec<RosterItem>), StoreError> {
        let prefix = user_prefix(user);
        let mut version = 0;
        let mut items = Vec::new();
        for entry in self.rosters.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(backend)?;
            if key.len() == prefix.len() {
                version = <[u8; 8]>::try_from(value.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
            } else {
                items.push(decode_item(&key, &value)?);
            }
        }
        Ok((version, items))
    }

    fn item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>, StoreError> {
        let key = contact_key(user, contact);
        match self.rosters.get(&key).map_err(backend)? {
            Some(value) => decode_item(&key, &value).map(Some),
            None => Ok(None),
        }
    }

    fn put(&self, user: &BareJid, item: &RosterItem, visible: bool) -> Result<u64, StoreError> {
        let contact = BareJid::new(&item.jid)
            .map_err(|e| StoreError::Backend(format!("roster item JID: {e}")))?;
        let mut value = vec![VALUE_VERSION];
        serde_json::to_writer(&mut value, item).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.change_roster(user, &contact, Some(value), visible)
    }

    fn remove(&self, user: &BareJid, contact: &BareJid, visible: bool) -> Result<u64, StoreError> {
        self.change_roster(user, contact, None, visible)
    }

    fn delete_user(&self, user: &BareJid) -> Result<(), StoreError> {
        Self::delete_prefix(&self.rosters, &user_prefix(user))
    }
}

impl OfflineStore for SledBackend {
    fn new_key(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(backend)
    }

    fn put(&self, user: &BareJid, id: u64, stanza: &[u8]) -> Result<(), StoreError> {
        let mut key = user_prefix(user);
        key.extend_from_slice(&id.to_be_bytes());
        let mut value = Vec::with_capacity(stanza.len() + 1);
        value.push(VALUE_VERSION);
        value.extend_from_slice(stanza);
        self.offline.insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn push(&self, user: &BareJid, stanza: &[u8], limit: usize) -> Result<Option<u64>, StoreError> {
        if limit != usize::MAX && self.count(user)? >= limit {
            return Ok(None);
        }
        let id = self.new_key()?;
        OfflineStore::put(self, user, id, stanza)?;
        Ok(Some(id))
    }

    fn list(&self, user: &BareJid) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let prefix = user_prefix(user);
        let mut out = Vec::new();
        for entry in self.offline.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(backend)?;
            let id = key
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            match (id, value.split_first()) {
                (Some(id), Some((&VALUE_VERSION, stanza))) => out.push((id, stanza.to_vec())),
                _ => {
                    return Err(StoreError::Corrupt {
                        key: format!("offline/{user}"),
                        message: "unreadable entry".into(),
                    })
                }
            }
        }
        Ok(out)
    }

    fn remove(&self, user: &BareJid, keys: &[u64]) -> Result<(), StoreError> {
        let prefix = user_prefix(user);
        let mut batch = sled::Batch::default();
        for id in keys {
            let mut key = prefix.clone();
            key.extend_from_slice(&id.to_be_bytes());
            batch.remove(key);
        }
        self.offline.apply_batch(batch).map_err(backend)
    }

    fn contains(&self, user: &BareJid, key: u64) -> Result<bool, StoreError> {
        let mut k = user_prefix(user);
        k.extend_from_slice(&key.to_be_bytes());
        self.offline.contains_key(k).map_err(backend)
    }

    fn count(&self, user: &BareJid) -> Result<usize, StoreError> {
        Ok(self.offline.scan_prefix(user_prefix(user)).count())
    }

    fn delete_user(&self, user: &BareJid) -> Result<(), StoreError> {
        Self::delete_prefix(&self.offline, &user_prefix(user))
    }
}

impl ActivityStore for SledBackend {
    fn last_activity(&self, user: &BareJid) -> Result<Option<(u64, String)>, StoreError> {
        let Some(value) = self.activity.get(user.as_str()).map_err(backend)? else {
            return Ok(None);
        };
        match value.split_first() {
            Some((&VALUE_VERSION, rest)) if rest.len() >= 8 => {
                let (secs, status) = rest.split_at(8);
                let secs = <[u8; 8]>::try_from(secs)
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Ok(Some((secs, String::from_utf8_lossy(status).into_owned())))
            }
            _ => Err(StoreError::Corrupt {
                key: format!("activity/{user}"),
                message: "unreadable entry".into(),
            }),
        }
    }

    fn set_last_activity(
        &self,
        user: &BareJid,
        seconds: u64,
        status: &str,
    ) -> Result<(), StoreError> {
        let mut value = Vec::with_capacity(9 + status.len());
        value.push(VALUE_VERSION);
        value.extend_from_slice(&seconds.to_be_bytes());
        value.extend_from_slice(status.as_bytes());
        self.activity
            .insert(user.as_str(), value)
            .map_err(backend)?;
        Ok(())
    }

    fn delete_activity(&self, user: &BareJid) -> Result<(), StoreError> {
        self.activity.remove(user.as_str()).map_err(backend)?;
        Ok(())
    }
}

impl KeyValueStore for SledBackend {
    fn get_value(&self, user: &BareJid, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = user_prefix(user);
        k.extend_from_slice(key.as_bytes());
        match self.values.get(&k).map_err(backend)? {
            None => Ok(None),
            Some(v) => match v.split_first() {
                Some((&VALUE_VERSION, doc)) => Ok(Some(doc.to_vec())),
                _ => Err(StoreError::Corrupt {
                    key: format!("values/{user}/{key}"),
                    message: "unknown value version".into(),
                }),
            },
        }
    }

    fn set_value(&self, user: &BareJid, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut k = user_prefix(user);
        k.extend_from_slice(key.as_bytes());
        let mut v = Vec::with_capacity(value.len() + 1);
        v.push(VALUE_VERSION);
        v.extend_from_slice(value);
        self.values.insert(k, v).map_err(backend)?;
        Ok(())
    }

    fn delete_value(&self, user: &BareJid, key: &str) -> Result<(), StoreError> {
        let mut k = user_prefix(user);
        k.extend_from_slice(key.as_bytes());
        self.values.remove(k).map_err(backend)?;
        Ok(())
    }

    fn delete_values(&self, user: &BareJid) -> Result<(), StoreError> {
        Self::delete_prefix(&self.values, &user_prefix(user))
    }
}

impl RoomStore for SledBackend {
    fn rooms(&self) -> Result<Vec<(BareJid, Vec<u8>)>, StoreError> {
        let mut rooms = Vec::new();
        for item in self.rooms.iter() {
            let (key, value) = item.map_err(backend)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let corrupt = || StoreError::Corrupt {
                key: format!("rooms/{name}"),
                message: "not a room JID and a versioned document".into(),
            };
            let jid = BareJid::new(&name).map_err(|_| corrupt())?;
            match value.split_first() {
                Some((&VALUE_VERSION, doc)) => rooms.push((jid, doc.to_vec())),
                _ => return Err(corrupt()),
            }
        }
        Ok(rooms)
    }

    fn put_room(&self, room: &BareJid, doc: &[u8]) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(doc.len() + 1);
        v.push(VALUE_VERSION);
        v.extend_from_slice(doc);
        self.rooms
            .insert(room.as_str().as_bytes(), v)
            .map_err(backend)?;
        Ok(())
    }

    fn delete_room(&self, room: &BareJid) -> Result<(), StoreError> {
        self.rooms
            .remove(room.as_str().as_bytes())
            .map_err(backend)?;
        Ok(())
    }
}

fn archive_key(archive: &BareJid, key: u64) -> Vec<u8> {
    let mut k = user_prefix(archive);
    k.extend_from_slice(&key.to_be_bytes());
    k
}

fn encode_archived(item: &ArchivedStanza) -> Vec<u8> {
    let with = item.with.as_bytes();
    let with = &with[..with.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(1 + 8 + 2 + with.len() + item.stanza.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&item.nonce.to_be_bytes());
    v.extend_from_slice(&(with.len() as u16).to_be_bytes());
    v.extend_from_slice(with);
    v.extend_from_slice(&item.stanza);
    v
}

fn decode_archived(
    archive: &BareJid,
    key: &[u8],
    value: &[u8],
) -> Result<ArchivedStanza, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: format!("archive/{archive}"),
        message: "unreadable entry".into(),
    };
    let key = key
        .len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&key[at..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(corrupt)?;
    let (&version, rest) = value.split_first().ok_or_else(corrupt)?;
    if version != VALUE_VERSION || rest.len() < 10 {
        return Err(corrupt());
    }
    let (nonce, rest) = rest.split_at(8);
    let (length, rest) = rest.split_at(2);
    let length = u16::from_be_bytes([length[0], length[1]]) as usize;
    if rest.len() < length {
        return Err(corrupt());
    }
    let (with, stanza) = rest.split_at(length);
    Ok(ArchivedStanza {
        key,
        nonce: u64::from_be_bytes(<[u8; 8]>::try_from(nonce).map_err(|_| corrupt())?),
        with: String::from_utf8(with.to_vec()).map_err(|_| corrupt())?,
        stanza: stanza.to_vec(),
    })
}

/// The bare part of a `with` (a JID as text: the bare JID ends at the first '/').
fn bare_part(with: &str) -> &str {
    with.split_once('/').map_or(with, |(bare, _)| bare)
}

/// Writes the `archive_with` key of every entry of `archive`.
fn index_archives(archive: &sled::Tree, archive_with: &sled::Tree) -> Result<(), StoreError> {
    let mut indexed = 0usize;
    for entry in archive.iter() {
        let (k, v) = entry.map_err(backend)?;
        let Some(end) = k.iter().position(|&b| b == 0) else {
            continue;
        };
        let Ok(owner) = BareJid::new(&String::from_utf8_lossy(&k[..end])) else {
            continue;
        };
        if let Ok(item) = decode_archived(&owner, &k, &v) {
            let index = index_key(&owner, bare_part(&item.with), item.key);
            archive_with.insert(index, &[] as &[u8]).map_err(backend)?;
            indexed += 1;
        }
    }
    tracing::info!(indexed, "indexed archived messages by conversation");
    Ok(())
}

/// `<archive>\0<with>\0` + key: the `archive_with` key of an entry with a party whose bare JID
/// is `with`.
fn index_key(archive: &BareJid, with: &str, key: u64) -> Vec<u8> {
    let mut k = user_prefix(archive);
    k.extend_from_slice(with.as_bytes());
    k.push(0);
    k.extend_from_slice(&key.to_be_bytes());
    k
}

fn key_of(k: &[u8]) -> Option<u64> {
    let at = k.len().checked_sub(8)?;
    <[u8; 8]>::try_from(&k[at..]).ok().map(u64::from_be_bytes)
}

impl SledBackend {
    /// Reads range entries of `archive` into `out` until `limit` are kept.
    fn collect(
        archive: &BareJid,
        entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        limit: usize,
        keep: &mut dyn FnMut(&ArchivedStanza) -> bool,
        out: &mut Vec<ArchivedStanza>,
    ) -> Result<(), StoreError> {
        for entry in entries {
            let (k, v) = entry.map_err(backend)?;
            match decode_archived(archive, &k, &v) {
                Ok(item) if keep(&item) => out.push(item),
                Ok(_) => {}
                // One unreadable entry does not make the rest of the archive unreadable.
                Err(err) => tracing::error!(error = %err, "skipping an archived stanza"),
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(())
    }
}

impl ArchiveStore for SledBackend {
    fn append(&self, archive: &BareJid, item: &ArchivedStanza) -> Result<(), StoreError> {
        let index = index_key(archive, bare_part(&item.with), item.key);
        self.archive_with
            .insert(index, &[] as &[u8])
            .map_err(backend)?;
        self.archive
            .insert(archive_key(archive, item.key), encode_archived(item))
            .map_err(backend)?;
        Ok(())
    }

    fn archived(&self, archive: &BareJid, key: u64) -> Result<Option<ArchivedStanza>, StoreError> {
        let k = archive_key(archive, key);
        self.archive
            .get(&k)
            .map_err(backend)?
            .map(|v| decode_archived(archive, &k, &v))
            .transpose()
    }

    fn scan(
        &self,
        archive: &BareJid,
        with: Option<&BareJid>,
        from: u64,
        to: u64,
        newest_first: bool,
        limit: usize,
        keep: &mut dyn FnMut(&ArchivedStanza) -> bool,
    ) -> Result<Vec<ArchivedStanza>, StoreError> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let Some(with) = with else {
            let range = self
                .archive
                .range(archive_key(archive, from)..=archive_key(archive, to));
            if newest_first {
                Self::collect(archive, range.rev(), limit, keep, &mut out)?;
            } else {
                Self::collect(archive, range, limit, keep, &mut out)?;
            }
            return Ok(out);
        };
        let range = self
            .archive_with
            .range(index_key(archive, with.as_str(), from)..=index_key(archive, with.as_str(), to));
        // Each index key names an entry; one read per entry, as many as the page needs.
        let entries = |k: sled::Result<(sled::IVec, sled::IVec)>| {
            let k = match k {
                Ok((k, _)) => k,
                Err(err) => return Some(Err(err)),
            };
            let key = key_of(&k)?;
            let data = archive_key(archive, key);
            match self.archive.get(&data) {
                Ok(Some(v)) => Some(Ok((sled::IVec::from(data), v))),
                Ok(None) => None,
                Err(err) => Some(Err(err)),
            }
        };
        if newest_first {
            Self::collect(
                archive,
                range.rev().filter_map(entries),
                limit,
                keep,
                &mut out,
            )?;
        } else {
            Self::collect(archive, range.filter_map(entries), limit, keep, &mut out)?;
        }
        Ok(out)
    }

    fn replace(&self, archive: &BareJid, key: u64, stanza: &[u8]) -> Result<bool, StoreError> {
        let k = archive_key(archive, key);
        let Some(old) = self.archive.get(&k).map_err(backend)? else {
            return Ok(false);
        };
        let mut item = decode_archived(archive, &k, &old)?;
        item.stanza = stanza.to_vec();
        // Only over the entry just read: one deleted meanwhile (expired, or its archive deleted)
        // must not come back.
        Ok(self
            .archive
            .compare_and_swap(k, Some(old), Some(encode_archived(&item)))
            .map_err(backend)?
            .is_ok())
    }

    fn remove(&self, archive: &BareJid, key: u64) -> Result<(), StoreError> {
        let k = archive_key(archive, key);
        if let Some(old) = self.archive.remove(&k).map_err(backend)? {
            if let Ok(item) = decode_archived(archive, &k, &old) {
                let index = index_key(archive, bare_part(&item.with), key);
                self.archive_with.remove(index).map_err(backend)?;
            }
        }
        Ok(())
    }

    fn delete_archive(&self, archive: &BareJid) -> Result<(), StoreError> {
        Self::delete_prefix(&self.archive, &user_prefix(archive))?;
        Self::delete_prefix(&self.archive_with, &user_prefix(archive))
    }

    fn archives_after(
        &self,
        after: Option<&BareJid>,
        limit: usize,
    ) -> Result<Vec<BareJid>, StoreError> {
        let mut out = Vec::new();
        // Past every key of `after`: its prefix followed by the highest possible key.
        let mut next = match after {
            Some(after) => archive_key(after, u64::MAX),
            None => Vec::new(),
        };
        while out.len() < limit {
            let found = self
                .archive
                .range((
                    std::ops::Bound::Excluded(next.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .transpose()
                .map_err(backend)?;
            let Some((k, _)) = found else { break };
            let Some(end) = k.iter().position(|&b| b == 0) else {
                break;
            };
            let name = String::from_utf8_lossy(&k[..end]).into_owned();
            match BareJid::new(&name) {
                Ok(archive) => {
                    next = archive_key(&archive, u64::MAX);
                    out.push(archive);
                }
                Err(_) => {
                    // Not an archive of ours: step over its keys all the same.
                    next = k[..=end].to_vec();
                    next.extend_from_slice(&u64::MAX.to_be_bytes());
                }
            }
        }
        Ok(out)
    }

    fn delete_before(
        &self,
        archive: &BareJid,
        before: u64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        if before == 0 {
            return Ok(0);
        }
        let mut data = sled::Batch::default();
        let mut index = sled::Batch::default();
        let mut deleted = 0;
        for entry in self
            .archive
            .range(archive_key(archive, 0)..archive_key(archive, before))
            .take(limit)
        {
            let (k, v) = entry.map_err(backend)?;
            if let Ok(item) = decode_archived(archive, &k, &v) {
                let ik = index_key(archive, bare_part(&item.with), item.key);
                index.remove(ik);
            }
            data.remove(k);
            deleted += 1;
        }
        // Entries first, then their index keys: an entry that is still there never lacks its key.
        self.archive.apply_batch(data).map_err(backend)?;
        self.archive_with.apply_batch(index).map_err(backend)?;
        Ok(deleted)
    }
}

fn encode_upload(record: &UploadRecord) -> Result<Vec<u8>, StoreError> {
    let mut value = vec![VALUE_VERSION];
    serde_json::to_writer(&mut value, record)
        .map_err(|e| StoreError::Backend(format!("cannot encode an upload record: {e}")))?;
    Ok(value)
}

fn decode_upload(id: &str, value: &[u8]) -> Result<UploadRecord, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: format!("uploads/{id}"),
        message,
    };
    match value.split_first() {
        Some((&VALUE_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
        }
        _ => Err(corrupt("unknown value version".into())),
    }
}

fn owner_key(owner: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(owner.len() + 1 + id.len());
    key.extend_from_slice(owner.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

fn due_key(due: u64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

impl UploadStore for SledBackend {
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        self.uploads
            .get(id)
            .map_err(backend)?
            .map(|value| decode_upload(id, &value))
            .transpose()
    }

    fn create_upload(&self, id: &str, record: &UploadRecord) -> Result<bool, StoreError> {
        let value = encode_upload(record)?;
        self.uploads_owner
            .insert(owner_key(&record.owner, id), &[] as &[u8])
            .map_err(backend)?;
        if let Some(due) = record.due() {
            self.uploads_due
                .insert(due_key(due, id), &[] as &[u8])
                .map_err(backend)?;
        }
        Ok(self
            .uploads
            .compare_and_swap(id, None as Option<&[u8]>, Some(value))
            .map_err(backend)?
            .is_ok())
    }

    fn replace_upload(
        &self,
        id: &str,
        old: &UploadRecord,
        new: &UploadRecord,
    ) -> Result<bool, StoreError> {
        if let Some(due) = new.due() {
            self.uploads_due
                .insert(due_key(due, id), &[] as &[u8])
                .map_err(backend)?;
        }
        let swapped = self
            .uploads
            .compare_and_swap(id, Some(encode_upload(old)?), Some(encode_upload(new)?))
            .map_err(backend)?
            .is_ok();
        if swapped && old.due() != new.due() {
            if let Some(due) = old.due() {
                self.uploads_due.remove(due_key(due, id)).map_err(backend)?;
            }
        }
        Ok(swapped)
    }

    fn remove_upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let Some(value) = self.uploads.remove(id).map_err(backend)? else {
            return Ok(None);
        };
        let record = decode_upload(id, &value)?;
        self.uploads_owner
            .remove(owner_key(&record.owner, id))
            .map_err(backend)?;
        if let Some(due) = record.due() {
            self.uploads_due.remove(due_key(due, id)).map_err(backend)?;
        }
        Ok(Some(record))
    }

    fn remove_upload_if(&self, id: &str, old: &UploadRecord) -> Result<bool, StoreError> {
        let removed = self
            .uploads
            .compare_and_swap(id, Some(encode_upload(old)?), None as Option<&[u8]>)
            .map_err(backend)?
            .is_ok();
        if removed {
            self.uploads_owner
                .remove(owner_key(&old.owner, id))
                .map_err(backend)?;
            if let Some(due) = old.due() {
                self.uploads_due.remove(due_key(due, id)).map_err(backend)?;
            }
        }
        Ok(removed)
    }

    fn each_upload(
        &self,
        visit: &mut dyn FnMut(&str, &UploadRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for entry in self.uploads.iter() {
            let (key, value) = entry.map_err(backend)?;
            let id = String::from_utf8_lossy(&key);
            visit(&id, &decode_upload(&id, &value)?)?;
        }
        Ok(())
    }

    fn uploads_of(&self, owner: &BareJid) -> Result<Vec<(String, UploadRecord)>, StoreError> {
        let prefix = owner_key(owner.as_str(), "");
        let mut found = Vec::new();
        for entry in self.uploads_owner.scan_prefix(&prefix) {
            let (key, _) = entry.map_err(backend)?;
            let Ok(id) = std::str::from_utf8(&key[prefix.len()..]) else {
                continue;
            };
            if let Some(record) = self.upload(id)? {
                if record.owner == owner.as_str() {
                    found.push((id.to_string(), record));
                }
            }
        }
        Ok(found)
    }

    fn uploads_due(&self, now: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut due = Vec::new();
        for entry in self.uploads_due.range(..due_key(now.saturating_add(1), "")) {
            if due.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(backend)?;
            let (Some(time), Ok(id)) = (
                key.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                std::str::from_utf8(key.get(8..).unwrap_or_default()),
            ) else {
                self.uploads_due.remove(&key).map_err(backend)?;
                continue;
            };
            // A key left behind by a change of the record (or a crash) goes now.
            match self.upload(id)? {
                Some(record) if record.due() == Some(u64::from_be_bytes(time)) => {
                    due.push(id.to_string())
                }
                _ => {
                    self.uploads_due.remove(&key).map_err(backend)?;
                }
            }
        }
        Ok(due)
    }
}

impl Durability for SledBackend {
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(tag: &str) -> StoredCredentials {
        StoredCredentials {
            argon2: tag.into(),
            scram: vec![],
        }
    }

    /// Opens the database again once the dropped handle's background flusher has let go of it.
    fn reopen(path: &Path) -> SledBackend {
        for _ in 0..100 {
            if let Ok(s) = SledBackend::open(path) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        SledBackend::open(path).unwrap()
    }

    #[test]
    fn account_lifecycle_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let alice = BareJid::new("alice@example.org").unwrap();
        {
            let s = SledBackend::open(dir.path()).unwrap();
            assert!(s.create(&alice, &creds("a")).unwrap());
            assert!(!s.create(&alice, &creds("b")).unwrap());
            assert!(s.set_credentials(&alice, &creds("c")).unwrap());
            assert!(!s
                .set_credentials(&BareJid::new("bob@example.org").unwrap(), &creds("x"))
                .unwrap());
            s.flush().unwrap();
        }
        let s = SledBackend::open(dir.path()).unwrap();
        assert_eq!(s.get(&alice).unwrap(), Some(creds("c")));
        assert_eq!(
            AccountStore::list(&s, "example.org").unwrap(),
            vec![alice.clone()]
        );
        assert!(AccountStore::list(&s, "other.org").unwrap().is_empty());
        assert!(s.delete(&alice).unwrap());
        assert!(!s.delete(&alice).unwrap());
    }

    #[test]
    fn roster_items_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledBackend::open(dir.path()).unwrap();
        let alice = BareJid::new("alice@example.org").unwrap();
        let bob = BareJid::new("bob@example.org").unwrap();
        let item = RosterItem {
            jid: bob.to_string(),
            listed: true,
            ..Default::default()
        };
        assert_eq!(s.roster(&alice).unwrap(), (0, vec![]));
        assert_eq!(RosterStore::put(&s, &alice, &item, true).unwrap(), 1);
        assert_eq!(RosterStore::remove(&s, &alice, &bob, true).unwrap(), 2);
        assert_eq!(RosterStore::put(&s, &alice, &item, true).unwrap(), 3);
        // Hidden state does not move the version.
        assert_eq!(RosterStore::put(&s, &alice, &item, false).unwrap(), 3);
        assert_eq!(s.roster(&alice).unwrap(), (3, vec![item.clone()]));
        assert_eq!(s.item(&alice, &bob).unwrap(), Some(item));
        // Another user's prefix is not confused with alice's.
        assert_eq!(
            s.roster(&BareJid::new("alic@example.org").unwrap())
                .unwrap(),
            (0, vec![])
        );
        RosterStore::delete_user(&s, &alice).unwrap();
        assert_eq!(s.roster(&alice).unwrap(), (0, vec![]));
    }

    #[test]
    fn offline_messages_keep_order_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledBackend::open(dir.path()).unwrap();
        let bob = BareJid::new("bob@example.org").unwrap();
        for i in 0..3 {
            assert!(s
                .push(&bob, format!("m{i}").as_bytes(), 3)
                .unwrap()
                .is_some());
        }
        assert!(s.push(&bob, b"m3", 3).unwrap().is_none());
        let stored = OfflineStore::list(&s, &bob).unwrap();
        let bodies: Vec<&[u8]> = stored.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(bodies, vec![&b"m0"[..], b"m1", b"m2"]);
        OfflineStore::remove(&s, &bob, &[stored[0].0]).unwrap();
        assert_eq!(s.count(&bob).unwrap(), 2);
    }

    fn item(key: u64, with: &str) -> ArchivedStanza {
        ArchivedStanza {
            key,
            nonce: key * 7,
            with: with.into(),
            stanza: format!("<m{key}/>").into_bytes(),
        }
    }

    fn keys(items: &[ArchivedStanza]) -> Vec<u64> {
        items.iter().map(|i| i.key).collect()
    }

    #[test]
    fn archives_by_conversation_expiry_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledBackend::open(dir.path()).unwrap();
        let bob = BareJid::new("bob@example.org").unwrap();
        let room = BareJid::new("room@muc.example.org").unwrap();
        let alice = BareJid::new("alice@example.org").unwrap();
        for (key, with) in [
            (10, "alice@example.org/phone"),
            (20, "carol@example.org"),
            (30, "alice@example.org"),
            (40, "alice@example.org/laptop"),
        ] {
            s.append(&bob, &item(key, with)).unwrap();
        }
        s.append(&room, &item(5, "alice@example.org")).unwrap();
        let all = |_: &ArchivedStanza| true;
        // One conversation through the index, both ways, bounded by keys.
        let got = s
            .scan(&bob, Some(&alice), 0, u64::MAX, false, 10, &mut { all })
            .unwrap();
        assert_eq!(keys(&got), vec![10, 30, 40]);
        let got = s
            .scan(&bob, Some(&alice), 11, 40, true, 1, &mut { all })
            .unwrap();
        assert_eq!(keys(&got), vec![40]);
        // A tombstone replaces the stanza only; a missing entry is not created.
        assert!(s.replace(&bob, 30, b"<gone/>").unwrap());
        assert!(!s.replace(&bob, 31, b"<gone/>").unwrap());
        let replaced = s.archived(&bob, 30).unwrap().unwrap();
        assert_eq!(
            (replaced.stanza.as_slice(), replaced.nonce),
            (&b"<gone/>"[..], 210)
        );
        // Removing one entry removes its index key too.
        ArchiveStore::remove(&s, &bob, 10).unwrap();
        let got = s
            .scan(&bob, Some(&alice), 0, u64::MAX, false, 10, &mut { all })
            .unwrap();
        assert_eq!(keys(&got), vec![30, 40]);
        // Expiry walks every archive and deletes the oldest entries.
        assert_eq!(
            s.archives_after(None, 10).unwrap(),
            vec![bob.clone(), room.clone()]
        );
        assert_eq!(
            s.archives_after(Some(&bob), 10).unwrap(),
            vec![room.clone()]
        );
        assert_eq!(s.delete_before(&bob, 35, 1).unwrap(), 1);
        assert_eq!(s.delete_before(&bob, 35, 10).unwrap(), 1);
        assert_eq!(
            keys(
                &s.scan(&bob, None, 0, u64::MAX, false, 10, &mut { all })
                    .unwrap()
            ),
            vec![40]
        );
        assert!(s
            .scan(&bob, Some(&alice), 0, 35, false, 10, &mut { all })
            .unwrap()
            .is_empty());
        // Archives written before the index get it when the database is opened.
        s.archive_with.clear().unwrap();
        drop(s);
        let s = reopen(dir.path());
        let got = s
            .scan(&room, Some(&alice), 0, u64::MAX, false, 10, &mut { all })
            .unwrap();
        assert_eq!(keys(&got), vec![5]);
        s.delete_archive(&bob).unwrap();
        assert_eq!(s.archives_after(None, 10).unwrap(), vec![room]);
    }

    #[test]
    fn second_open_of_the_same_directory_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledBackend::open(dir.path()).unwrap();
        let err = SledBackend::open(dir.path()).err().unwrap();
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }
}
