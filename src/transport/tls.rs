//! TLS server configuration: load the domain's certificate and key, or generate a self-signed pair
//! for development when neither file exists.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate problem, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the certificate {path} ([tls] cert): {message}")]
    Cert { path: String, message: String },
    #[error("cannot read the private key {path} ([tls] key): {message}")]
    Key { path: String, message: String },
    #[error("the private key {missing} ([tls] key) is missing while the certificate {present} ([tls] cert) exists; provide both, or remove both to get a generated self-signed pair")]
    KeyMissing { present: String, missing: String },
    #[error("the certificate {missing} ([tls] cert) is missing while the private key {present} ([tls] key) exists; provide both, or remove both to get a generated self-signed pair")]
    CertMissing { present: String, missing: String },
    #[error(
        "the private key {key} ([tls] key) does not belong to the certificate {cert} ([tls] cert)"
    )]
    Mismatch { cert: String, key: String },
    #[error("cannot write the generated certificate to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not form a usable TLS configuration: {0}")]
    Config(String),
}

/// Generates a self-signed certificate for `domain` (and `localhost`, for loopback use) into the two
/// paths when neither file exists. Returns true when it generated them.
pub fn ensure_certificate(domain: &str, cert: &Path, key: &Path) -> Result<bool, TlsSetupError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (true, false) => {
            return Err(TlsSetupError::KeyMissing {
                present: cert.display().to_string(),
                missing: key.display().to_string(),
            })
        }
        (false, true) => {
            return Err(TlsSetupError::CertMissing {
                present: key.display().to_string(),
                missing: cert.display().to_string(),
            })
        }
    }
    let mut names = vec![domain.to_string()];
    if domain != "localhost" {
        names.push("localhost".to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    // The certificate is public (0644); the key is readable by the server's user only (0600).
    for (path, pem, mode) in [
        (cert, generated.cert.pem(), 0o644),
        (key, generated.signing_key.serialize_pem(), 0o600),
    ] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| TlsSetupError::Write {
                path: dir.display().to_string(),
                source,
            })?;
        }
        write_new(path, pem.as_bytes(), mode).map_err(|source| TlsSetupError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(true)
}

#[cfg(unix)]
fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_new(path: &Path, data: &[u8], _mode: u32) -> std::io::Result<()> {
    std::fs::write(path, data)
}

/// Builds the rustls server configuration (ring provider, TLS 1.2 and 1.3) from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsSetupError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Cert {
            path: cert.display().to_string(),
            message: "no PEM certificate found in the file".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsSetupError::Mismatch {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
            },
            other => TlsSetupError::Config(format!(
                "{} ([tls] cert) and {} ([tls] key): {other}",
                cert.display(),
                key.display()
            )),
        })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_then_loads_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c/x.crt");
        let key = dir.path().join("c/x.key");
        assert!(ensure_certificate("example.org", &cert, &key).unwrap());
        assert!(!ensure_certificate("example.org", &cert, &key).unwrap());
        server_config(&cert, &key).unwrap();
    }

    #[test]
    fn half_a_pair_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("x.crt");
        std::fs::write(&cert, "junk").unwrap();
        let err = ensure_certificate("example.org", &cert, &dir.path().join("x.key")).unwrap_err();
        assert!(err.to_string().contains("[tls] key"));
        let err = server_config(&cert, &dir.path().join("x.key")).unwrap_err();
        assert!(err.to_string().contains("[tls] cert"), "{err}");
    }
}
