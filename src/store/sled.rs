//! The sled backend: one database in `data_dir`, one tree per concern, a schema version in `meta`.
//!
//! Layout (schema 1):
//! - `meta`: `schema_version` → u32 big-endian.
//! - `accounts`: `<localpart>@<domain>` → `[1]` + JSON of `StoredCredentials`.

use std::path::Path;

use jid::BareJid;

use super::{AccountStore, Durability, StoreError, StoredCredentials};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const VALUE_VERSION: u8 = 1;

pub struct SledBackend {
    db: sled::Db,
    accounts: sled::Tree,
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
        Ok(SledBackend { db, accounts })
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
        assert_eq!(s.list("example.org").unwrap(), vec![alice.clone()]);
        assert!(s.list("other.org").unwrap().is_empty());
        assert!(s.delete(&alice).unwrap());
        assert!(!s.delete(&alice).unwrap());
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
