//! The account service: create, change, delete and list accounts, and look up what SASL needs.
//! Shared by the command line (offline), the admin socket (online), and in-band registration.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use jid::BareJid;
use tokio::sync::Semaphore;

use super::credentials::{self, PasswordError};
use super::scram::ScramHash;
use crate::config::AuthConfig;
use crate::store::{OfflineStore, ScramVerifier, StoreError, Stores};

/// Why an account operation failed, worded for the person who asked.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the account {0} exists already")]
    Exists(BareJid),
    #[error("there is no account {0}")]
    NotFound(BareJid),
    #[error("'{0}' is not a valid user name or JID")]
    InvalidJid(String),
    #[error("{jid} is not on this server's domain ({domain})")]
    WrongDomain { jid: String, domain: String },
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Accounts {
    stores: Stores,
    domain: String,
    config: AuthConfig,
    /// Where the account's uploaded files are (they go with the account).
    upload_dir: std::path::PathBuf,
    /// Bounds concurrent password hashing (Argon2id/PBKDF2) to the cores we have.
    hashing: Arc<Semaphore>,
    /// Per-process secret for made-up SCRAM salts of unknown users.
    secret: [u8; 32],
    /// A hash of a random password, checked when PLAIN names an unknown user so that the answer takes
    /// as long as for a wrong password (made on first use, with the configured cost).
    decoy: Arc<std::sync::OnceLock<Option<crate::store::StoredCredentials>>>,
}

impl Accounts {
    pub fn new(
        stores: Stores,
        domain: String,
        config: AuthConfig,
        upload_dir: std::path::PathBuf,
    ) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Accounts {
            stores,
            domain,
            config,
            upload_dir,
            hashing: Arc::new(Semaphore::new(cores)),
            secret: rand::random(),
            decoy: Arc::new(std::sync::OnceLock::new()),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Reads "alice" or "alice@domain" as a local bare JID, normalized.
    pub fn parse_user(&self, input: &str) -> Result<BareJid, AccountError> {
        let input = input.trim();
        let text = if input.contains('@') {
            input.to_string()
        } else {
            format!("{input}@{}", self.domain)
        };
        let jid = BareJid::new(&text).map_err(|_| AccountError::InvalidJid(input.to_string()))?;
        if jid.node().is_none() || input.contains('/') {
            return Err(AccountError::InvalidJid(input.to_string()));
        }
        if jid.domain().as_str() != self.domain {
            return Err(AccountError::WrongDomain {
                jid: jid.to_string(),
                domain: self.domain.clone(),
            });
        }
        Ok(jid)
    }

    /// The local bare JID for a SASL username (a localpart), if it is a valid one.
    pub fn jid_for_username(&self, username: &str) -> Option<BareJid> {
        if username.contains(['@', '/']) {
            return None;
        }
        BareJid::new(&format!("{username}@{}", self.domain)).ok()
    }

    async fn derive(
        &self,
        password: &str,
    ) -> Result<crate::store::StoredCredentials, AccountError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| StoreError::Backend("shutting down".into()))?;
        let password = password.to_string();
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || credentials::derive(&password, &config))
            .await
            .map_err(|e| StoreError::Backend(format!("hashing task failed: {e}")))?
            .map_err(AccountError::from)
    }

    /// Creates an account; durable when this returns.
    pub async fn create(&self, jid: &BareJid, password: &str) -> Result<(), AccountError> {
        if self.stores.accounts.get(jid)?.is_some() {
            return Err(AccountError::Exists(jid.clone()));
        }
        let credentials = self.derive(password).await?;
        if !self.stores.accounts.create(jid, &credentials)? {
            return Err(AccountError::Exists(jid.clone()));
        }
        self.stores.flush().await?;
        Ok(())
    }

    /// Sets a new password; durable when this returns.
    pub async fn set_password(&self, jid: &BareJid, password: &str) -> Result<(), AccountError> {
        if self.stores.accounts.get(jid)?.is_none() {
            return Err(AccountError::NotFound(jid.clone()));
        }
        let credentials = self.derive(password).await?;
        if !self.stores.accounts.set_credentials(jid, &credentials)? {
            return Err(AccountError::NotFound(jid.clone()));
        }
        self.stores.flush().await?;
        Ok(())
    }

    /// Deletes an account; durable when this returns.
    pub async fn delete(&self, jid: &BareJid) -> Result<(), AccountError> {
        if !self.stores.accounts.delete(jid)? {
            return Err(AccountError::NotFound(jid.clone()));
        }
        // Everything else kept for the account goes with it, including its place in other local
        // users' rosters: a new account with the same name must not inherit subscriptions.
        let (_, items) = self.stores.rosters.roster(jid)?;
        for item in items {
            if let Ok(contact) = BareJid::new(&item.jid) {
                if contact.domain().as_str() == self.domain {
                    self.stores.rosters.remove(&contact, jid, true)?;
                }
            }
        }
        self.stores.rosters.delete_user(jid)?;
        self.stores.offline.delete_user(jid)?;
        self.stores.activity.delete_activity(jid)?;
        self.stores.values.delete_values(jid)?;
        self.stores.archive.delete_archive(jid)?;
        crate::modules::upload::delete_owner(self.stores.uploads.as_ref(), &self.upload_dir, jid)?;
        self.stores.flush().await?;
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<BareJid>, AccountError> {
        Ok(self.stores.accounts.list(&self.domain)?)
    }

    pub fn exists(&self, jid: &BareJid) -> Result<bool, StoreError> {
        Ok(self.stores.accounts.get(jid)?.is_some())
    }

    /// The SCRAM verifier of an account for one hash, if the account exists.
    pub fn scram_verifier(
        &self,
        jid: &BareJid,
        hash: ScramHash,
    ) -> Result<Option<ScramVerifier>, StoreError> {
        Ok(self
            .stores
            .accounts
            .get(jid)?
            .and_then(|c| c.scram.into_iter().find(|v| v.hash == hash.name())))
    }

    /// Checks a PLAIN password (Argon2id, off the executor, bounded). An unknown user costs the same
    /// hash as a known one, so timing does not tell whether the account exists.
    pub async fn verify_plain(&self, jid: &BareJid, password: &str) -> Result<bool, StoreError> {
        let stored = self.stores.accounts.get(jid)?;
        let known = stored.is_some();
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| StoreError::Backend("shutting down".into()))?;
        let password = password.to_string();
        let decoy = self.decoy.clone();
        let config = self.config.clone();
        let verified = tokio::task::spawn_blocking(move || {
            let stored = stored.or_else(|| {
                decoy
                    .get_or_init(|| {
                        credentials::derive(&B64.encode(rand::random::<[u8; 18]>()), &config).ok()
                    })
                    .clone()
            });
            stored.is_some_and(|stored| credentials::verify_plain(&password, &stored))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("hashing task failed: {e}")))?;
        Ok(known && verified)
    }
}
