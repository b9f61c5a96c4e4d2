//! Storage, one small trait per concern, so a backend can be swapped without touching features.
//! sled is the default backend (`sled.rs`); keys are ordered byte strings so that listings are range
//! scans, and every value starts with a version byte.

pub mod sled;
pub mod staged;

use std::sync::Arc;

use jid::BareJid;
use serde::{Deserialize, Serialize};

/// A storage failure. Callers turn it into `<internal-server-error/>` (see `error.rs`) and a log line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("stored value for {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
}

/// What is stored for an account: verifiers derived from the password, never the password itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredCredentials {
    /// Argon2id PHC string, used to verify SASL PLAIN.
    pub argon2: String,
    /// SCRAM verifiers (RFC 5802 §3), one per hash function.
    pub scram: Vec<ScramVerifier>,
}

/// SCRAM verifier for one hash function: enough to check a proof, not enough to log in elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScramVerifier {
    /// "SHA-1" or "SHA-256".
    pub hash: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Accounts, keyed by normalized bare JID.
pub trait AccountStore: Send + Sync {
    fn get(&self, jid: &BareJid) -> Result<Option<StoredCredentials>, StoreError>;
    /// Creates the account; false when it exists already (nothing is changed then).
    fn create(&self, jid: &BareJid, credentials: &StoredCredentials) -> Result<bool, StoreError>;
    /// Replaces the credentials of an existing account; false when there is no such account.
    fn set_credentials(
        &self,
        jid: &BareJid,
        credentials: &StoredCredentials,
    ) -> Result<bool, StoreError>;
    /// Deletes the account; false when there was none.
    fn delete(&self, jid: &BareJid) -> Result<bool, StoreError>;
    /// Every account of a domain, in order.
    fn list(&self, domain: &str) -> Result<Vec<BareJid>, StoreError>;
}

/// A contact's subscription state as seen from the roster owner (RFC 6121 §2.1.2.5).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Subscription {
    #[default]
    None,
    /// The user receives the contact's presence.
    To,
    /// The contact receives the user's presence.
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Whether the user receives the contact's presence.
    pub fn to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// Whether the contact receives the user's presence.
    pub fn from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    pub fn with_to(self, on: bool) -> Subscription {
        Self::of(on, self.from())
    }

    pub fn with_from(self, on: bool) -> Subscription {
        Self::of(self.to(), on)
    }

    fn of(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

/// What the server keeps about one contact of a user: the roster item the user sees, plus the
/// server-side subscription state (RFC 6121 §3 and appendix A).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub subscription: Subscription,
    /// The user asked to subscribe to the contact and awaits an answer ("pending out").
    pub ask: bool,
    /// The contact asked to subscribe to the user and awaits approval ("pending in"): the request as
    /// received, re-sent at each login until answered.
    pub pending_in: Option<String>,
    /// The contact approved in advance a subscription request from the user (RFC 6121 §3.4).
    #[serde(default)]
    pub preapproved: bool,
    /// Shown in the user's roster. False for a contact known only through a pending request.
    pub listed: bool,
}

/// Rosters and subscription state, keyed by user then contact, with a version per roster
/// (RFC 6121 §2.6) that grows with every change.
pub trait RosterStore: Send + Sync {
    /// Every item of a user, listed or not, and the roster version.
    fn roster(&self, user: &BareJid) -> Result<(u64, Vec<RosterItem>), StoreError>;
    fn item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>, StoreError>;
    /// Stores an item; returns the roster version after it. `visible` says whether the change is
    /// one the user's roster shows (then the version grows, RFC 6121 §2.6.3); hidden server-side
    /// state such as a pending inbound request leaves the version alone.
    fn put(&self, user: &BareJid, item: &RosterItem, visible: bool) -> Result<u64, StoreError>;
    /// Removes an item; returns the roster version after it (grown only when `visible`).
    fn remove(&self, user: &BareJid, contact: &BareJid, visible: bool) -> Result<u64, StoreError>;
    /// Removes a user's whole roster (account deleted).
    fn delete_user(&self, user: &BareJid) -> Result<(), StoreError>;
}

/// Messages held for a user who was not online to receive them (XEP-0160), in arrival order.
pub trait OfflineStore: Send + Sync {
    /// A fresh key, greater than every key handed out before (also across restarts).
    fn new_key(&self) -> Result<u64, StoreError>;
    /// Stores a stanza under a key from `new_key`.
    fn put(&self, user: &BareJid, key: u64, stanza: &[u8]) -> Result<(), StoreError>;
    /// Appends a serialized stanza unless the user already has `limit` stored; returns its key, or
    /// `None` when full.
    fn push(&self, user: &BareJid, stanza: &[u8], limit: usize) -> Result<Option<u64>, StoreError>;
    /// The stored stanzas, oldest first, with the keys that remove them.
    fn list(&self, user: &BareJid) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    fn remove(&self, user: &BareJid, keys: &[u64]) -> Result<(), StoreError>;
    /// Whether a stored stanza is still there (not yet removed as delivered).
    fn contains(&self, user: &BareJid, key: u64) -> Result<bool, StoreError>;
    fn count(&self, user: &BareJid) -> Result<usize, StoreError>;
    fn delete_user(&self, user: &BareJid) -> Result<(), StoreError>;
}

/// When each user was last active (XEP-0012), as Unix seconds with the status text of that moment.
pub trait ActivityStore: Send + Sync {
    fn last_activity(&self, user: &BareJid) -> Result<Option<(u64, String)>, StoreError>;
    fn set_last_activity(
        &self,
        user: &BareJid,
        seconds: u64,
        status: &str,
    ) -> Result<(), StoreError>;
    fn delete_activity(&self, user: &BareJid) -> Result<(), StoreError>;
}

/// Small per-user documents by key: vCard, private XML, the blocklist (like Prosody's keyval store).
pub trait KeyValueStore: Send + Sync {
    fn get_value(&self, user: &BareJid, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set_value(&self, user: &BareJid, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete_value(&self, user: &BareJid, key: &str) -> Result<(), StoreError>;
    fn delete_values(&self, user: &BareJid) -> Result<(), StoreError>;
}

/// Persistent group chat rooms (XEP-0045): one document per room (its configuration, affiliations
/// and subject, as the MUC module encodes them), keyed by the room's bare JID.
pub trait RoomStore: Send + Sync {
    fn rooms(&self) -> Result<Vec<(BareJid, Vec<u8>)>, StoreError>;
    fn put_room(&self, room: &BareJid, doc: &[u8]) -> Result<(), StoreError>;
    fn delete_room(&self, room: &BareJid) -> Result<(), StoreError>;
}

/// One stanza in a message archive (XEP-0313).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedStanza {
    /// When the archive got it, in microseconds since the Unix epoch; unique within the archive
    /// and growing with arrival order (see `modules::archive::next_key`).
    pub key: u64,
    /// Random, part of the public id: ids are not guessable from the time (XEP-0313 §3).
    pub nonce: u64,
    /// The other party (user archives) or the sender's real bare JID (room archives).
    pub with: String,
    /// The stanza as it is handed out in results (serialized).
    pub stanza: Vec<u8>,
}

/// Message archives (XEP-0313), one per archiving JID (a user's bare JID, a room's), each ordered
/// by key so that a page is one range read.
pub trait ArchiveStore: Send + Sync {
    fn append(&self, archive: &BareJid, item: &ArchivedStanza) -> Result<(), StoreError>;
    fn archived(&self, archive: &BareJid, key: u64) -> Result<Option<ArchivedStanza>, StoreError>;
    /// The stanzas with keys in `from..=to`, oldest first (newest first when `newest_first`), that
    /// `keep` accepts, at most `limit` of them. With `with`, only those whose `with` has that bare
    /// JID are read (through an index, so that one conversation of a large archive is as fast to
    /// page as the whole).
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        archive: &BareJid,
        with: Option<&BareJid>,
        from: u64,
        to: u64,
        newest_first: bool,
        limit: usize,
        keep: &mut dyn FnMut(&ArchivedStanza) -> bool,
    ) -> Result<Vec<ArchivedStanza>, StoreError>;
    /// Replaces the stanza of an archived entry, keeping its key, nonce and `with` (a XEP-0424
    /// tombstone); false when there is no such entry.
    fn replace(&self, archive: &BareJid, key: u64, stanza: &[u8]) -> Result<bool, StoreError>;
    /// Removes one entry (one just appended, for a message that was then refused).
    fn remove(&self, archive: &BareJid, key: u64) -> Result<(), StoreError>;
    fn delete_archive(&self, archive: &BareJid) -> Result<(), StoreError>;
    /// The archives after `after` (from the first when none), in order, at most `limit` of them.
    fn archives_after(
        &self,
        after: Option<&BareJid>,
        limit: usize,
    ) -> Result<Vec<BareJid>, StoreError>;
    /// Deletes up to `limit` of the oldest entries of `archive` with keys before `before`;
    /// returns how many went.
    fn delete_before(
        &self,
        archive: &BareJid,
        before: u64,
        limit: usize,
    ) -> Result<usize, StoreError>;
}

/// What is known about one uploaded file (XEP-0363): who owns it, what it is, until when it is
/// kept, and whether its bytes have arrived. The bytes live on disk, not in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadRecord {
    /// The uploader's bare JID.
    pub owner: String,
    /// The sanitised file name, as it appears (percent-encoded) at the end of the URLs.
    pub filename: String,
    /// The size announced in the slot request, in bytes; the PUT must match it.
    pub size: u64,
    /// The content type announced in the slot request (or `application/octet-stream`).
    pub content_type: String,
    /// When the slot was issued, Unix seconds.
    pub created: u64,
    /// When the file goes (Unix seconds); none: kept until its owner's account is deleted.
    pub expires: Option<u64>,
    pub state: UploadState,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum UploadState {
    /// A slot waiting for its PUT: the SHA-256 of the secret the PUT must present, and until when
    /// (Unix seconds) the slot may be used.
    Slot { secret: Vec<u8>, until: u64 },
    /// A PUT is writing the file (since, Unix seconds); nobody else may use the slot meanwhile.
    Receiving { since: u64 },
    /// The file is on disk: its strong ETag (from the content's SHA-256) and when it was stored.
    Stored { etag: String, stored: u64 },
}

impl UploadRecord {
    /// When the record needs looking at (Unix seconds): a slot when it lapses, a PUT in progress
    /// when it has surely died (a day on), a file when it expires.
    pub fn due(&self) -> Option<u64> {
        match &self.state {
            // A lapsed slot stays a minute, so that a late PUT learns it lapsed (410).
            UploadState::Slot { until, .. } => Some(until.saturating_add(60)),
            UploadState::Receiving { since } => Some(since.saturating_add(86_400)),
            UploadState::Stored { .. } => self.expires,
        }
    }
}

/// Uploaded files' records, by the file's random id, with an index by owner (quota, account
/// deletion) and by time of expiry (retention).
pub trait UploadStore: Send + Sync {
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError>;
    /// Stores a new record; false when the id is taken (nothing changed then).
    fn create_upload(&self, id: &str, record: &UploadRecord) -> Result<bool, StoreError>;
    /// Replaces `old` by `new` if the record still is `old` (compare-and-swap); false otherwise.
    fn replace_upload(
        &self,
        id: &str,
        old: &UploadRecord,
        new: &UploadRecord,
    ) -> Result<bool, StoreError>;
    /// Removes a record and its index entries; the record that was there, if any.
    fn remove_upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError>;
    /// Removes the record if it still is `old` (compare-and-remove); false otherwise.
    fn remove_upload_if(&self, id: &str, old: &UploadRecord) -> Result<bool, StoreError>;
    /// Calls `visit` with every record, in id order.
    fn each_upload(
        &self,
        visit: &mut dyn FnMut(&str, &UploadRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Every record of one owner.
    fn uploads_of(&self, owner: &BareJid) -> Result<Vec<(String, UploadRecord)>, StoreError>;
    /// Up to `limit` ids whose record must be looked at by `now` (Unix seconds): expired files and
    /// slots, in order of expiry.
    fn uploads_due(&self, now: u64, limit: usize) -> Result<Vec<String>, StoreError>;
}

/// Making accepted writes durable. Blocking: call through `Stores::flush`.
pub trait Durability: Send + Sync {
    fn flush(&self) -> Result<(), StoreError>;
}

/// The stores the server uses, one per concern, all from one backend.
#[derive(Clone)]
pub struct Stores {
    pub accounts: Arc<dyn AccountStore>,
    pub rosters: Arc<dyn RosterStore>,
    /// The offline queues, with in-flight copies staged in memory in front of them (`staged`).
    pub offline: Arc<staged::StagedOffline>,
    pub activity: Arc<dyn ActivityStore>,
    pub values: Arc<dyn KeyValueStore>,
    pub rooms: Arc<dyn RoomStore>,
    pub archive: Arc<dyn ArchiveStore>,
    pub uploads: Arc<dyn UploadStore>,
    durability: Arc<dyn Durability>,
    commit: Arc<GroupCommit>,
}

/// Group commit: callers that ask for durability at about the same time share one flush.
///
/// Each caller takes a ticket after its writes; one flush at a time runs, and a flush started after
/// a ticket was taken covers it. Callers whose ticket is already covered return at once.
#[derive(Default)]
struct GroupCommit {
    issued: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
    running: tokio::sync::Mutex<()>,
}

impl Stores {
    /// Opens the default (sled) backend in `dir`.
    pub fn open_sled(dir: &std::path::Path) -> Result<Stores, StoreError> {
        let backend = Arc::new(sled::SledBackend::open(dir)?);
        Ok(Stores {
            accounts: backend.clone(),
            rosters: backend.clone(),
            offline: Arc::new(staged::StagedOffline::new(backend.clone())),
            activity: backend.clone(),
            values: backend.clone(),
            rooms: backend.clone(),
            archive: backend.clone(),
            uploads: backend.clone(),
            durability: backend,
            commit: Arc::default(),
        })
    }

    /// Waits until every write made so far is on disk. Call before confirming a write to anyone.
    /// Concurrent callers share flushes (group commit).
    pub async fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let ticket = self.commit.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = self.commit.running.lock().await;
        if self.commit.done.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        // Every ticket issued by now was taken after its writes: this flush covers them all.
        let covered = self.commit.issued.load(Ordering::SeqCst);
        let durability = self.durability.clone();
        let offline = self.offline.clone();
        tokio::task::spawn_blocking(move || {
            offline.write_all()?;
            durability.flush()
        })
        .await
        .map_err(|e| StoreError::Backend(format!("flush task failed: {e}")))??;
        self.commit.done.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Blocking flush, for shutdown and command-line paths outside the runtime.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.offline.write_all()?;
        self.durability.flush()
    }
}
