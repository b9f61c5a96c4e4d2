//! Deriving and checking password verifiers: SCRAM keys per hash (RFC 5802 §3) and an Argon2id hash
//! for PLAIN. The password itself is never stored.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};

use super::scram::ScramHash;
use crate::config::AuthConfig;
use crate::store::{ScramVerifier, StoredCredentials};

/// Why a password cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("the password contains characters that SASLprep (RFC 4013) forbids")]
    Prohibited,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// RFC 4013 SASLprep, as RFC 5802 requires for SCRAM and RFC 4616 for PLAIN.
pub fn prepare_password(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    let prepared = stringprep::saslprep(password).map_err(|_| PasswordError::Prohibited)?;
    if prepared.is_empty() {
        return Err(PasswordError::Empty);
    }
    Ok(prepared.into_owned())
}

fn argon2(config: &AuthConfig) -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, 1, None)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Computes everything stored for `password`. CPU-heavy (Argon2id + PBKDF2): run it off the async
/// executor (`spawn_blocking`).
pub fn derive(password: &str, config: &AuthConfig) -> Result<StoredCredentials, PasswordError> {
    let prepared = prepare_password(password)?;
    let phc: PasswordHash = argon2(config)?
        .hash_password(prepared.as_bytes())
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    let phc = phc.to_string();
    let scram = [ScramHash::Sha256, ScramHash::Sha1]
        .into_iter()
        .map(|hash| {
            let salt: [u8; 16] = rand::random();
            let (stored_key, server_key) =
                hash.keys(prepared.as_bytes(), &salt, config.scram_iterations);
            ScramVerifier {
                hash: hash.name().to_string(),
                salt: salt.to_vec(),
                iterations: config.scram_iterations,
                stored_key,
                server_key,
            }
        })
        .collect();
    Ok(StoredCredentials { argon2: phc, scram })
}

/// Checks a PLAIN password against the stored Argon2id hash. CPU-heavy: run it off the executor.
pub fn verify_plain(password: &str, stored: &StoredCredentials) -> bool {
    let Ok(prepared) = prepare_password(password) else {
        return false;
    };
    // Parameters come from the PHC string, so hashes made with older settings still verify.
    Argon2::default()
        .verify_password(prepared.as_bytes(), stored.argon2.as_str())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> AuthConfig {
        AuthConfig {
            scram_iterations: 4096,
            argon2_memory_kib: 8,
            argon2_iterations: 1,
            failure_delay_ms: 0,
        }
    }

    #[test]
    fn plain_verifies_only_the_right_password() {
        let c = derive("correct horse", &cheap()).unwrap();
        assert!(!c.argon2.contains("correct"));
        assert!(verify_plain("correct horse", &c));
        assert!(!verify_plain("correct horsf", &c));
        assert_eq!(c.scram.len(), 2);
    }

    #[test]
    fn saslprep_maps_and_refuses() {
        // U+00A0 (no-break space) maps to a plain space; a control character is prohibited.
        assert_eq!(prepare_password("a\u{00A0}b").unwrap(), "a b");
        assert!(prepare_password("a\u{0007}b").is_err());
        assert!(prepare_password("").is_err());
    }
}
