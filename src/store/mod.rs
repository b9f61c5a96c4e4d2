//! Storage, one small trait per concern, so a backend can be swapped without touching features.
//! sled is the default backend (`sled.rs`); keys are ordered byte strings so that listings are range
//! scans, and every value starts with a version byte.

pub mod sled;

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

/// Making accepted writes durable. Blocking: call through `Stores::flush`.
pub trait Durability: Send + Sync {
    fn flush(&self) -> Result<(), StoreError>;
}

/// The stores the server uses, one per concern, all from one backend.
#[derive(Clone)]
pub struct Stores {
    pub accounts: Arc<dyn AccountStore>,
    durability: Arc<dyn Durability>,
}

impl Stores {
    /// Opens the default (sled) backend in `dir`.
    pub fn open_sled(dir: &std::path::Path) -> Result<Stores, StoreError> {
        let backend = Arc::new(sled::SledBackend::open(dir)?);
        Ok(Stores {
            accounts: backend.clone(),
            durability: backend,
        })
    }

    /// Waits until every write made so far is on disk. Call before confirming a write to anyone.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let durability = self.durability.clone();
        tokio::task::spawn_blocking(move || durability.flush())
            .await
            .map_err(|e| StoreError::Backend(format!("flush task failed: {e}")))?
    }

    /// Blocking flush, for shutdown and command-line paths outside the runtime.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.durability.flush()
    }
}
