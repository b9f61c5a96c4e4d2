//! The server's configuration: one typed value, read from TOML once at start and validated.
//!
//! Every key has a default, so an empty file is a working configuration for `localhost`. Unknown keys
//! and bad values stop the start with a message that names the key (`[c2s] listen: ...`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub c2s: C2sConfig,
    pub tls: TlsConfig,
    pub registration: RegistrationConfig,
    pub auth: AuthConfig,
    pub offline: OfflineConfig,
    pub activity: ActivityConfig,
    pub admin: AdminConfig,
    pub muc: MucConfig,
    pub archive: ArchiveConfig,
    pub http: HttpConfig,
    pub upload: UploadConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The XMPP domain served: the part after `@` in every local JID.
    pub domain: String,
    /// Where sled keeps the data; created when missing.
    pub data_dir: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Connections held at once, all listeners together; more are refused with `<resource-constraint/>`.
    pub max_connections: usize,
    /// Seconds to wait for connections to close at shutdown before giving up on them.
    pub shutdown_timeout: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            domain: "localhost".into(),
            data_dir: "data".into(),
            log_level: "info".into(),
            max_connections: 100_000,
            shutdown_timeout: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sConfig {
    /// Client listener with STARTTLS (RFC 6120). Empty string: no such listener.
    pub listen: String,
    /// Client listener with TLS from the first byte (XEP-0368). Empty string: no such listener.
    pub direct_tls_listen: String,
    /// When true, nothing but STARTTLS is offered on an unencrypted stream.
    pub require_encryption: bool,
    /// Largest top-level element (stanza or nonza) a client may send, in bytes.
    pub max_stanza_size: usize,
    /// Seconds a new connection has to finish TLS, SASL and resource binding.
    pub auth_timeout: u64,
    /// Failed SASL attempts allowed on one stream before it is closed (RFC 6120 §6.4.5).
    pub max_auth_attempts: u32,
    /// Stanzas queued for one session before senders wait (back-pressure).
    pub session_queue: usize,
    /// Seconds a session with XEP-0198 resumption is kept after its connection is lost.
    pub resume_timeout: u64,
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            listen: "0.0.0.0:5222".into(),
            direct_tls_listen: "0.0.0.0:5223".into(),
            require_encryption: true,
            max_stanza_size: 256 * 1024,
            auth_timeout: 60,
            max_auth_attempts: 3,
            session_queue: 512,
            resume_timeout: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain for the domain.
    pub cert: PathBuf,
    /// PEM private key for `cert`.
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: "certs/localhost.crt".into(),
            key: "certs/localhost.key".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// XEP-0077 in-band registration of new accounts by anyone who can connect.
    pub allow: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// PBKDF2 iterations for the SCRAM keys of new or changed passwords (RFC 5802 minimum 4096).
    pub scram_iterations: u32,
    /// Argon2id memory cost in KiB for the PLAIN verifier.
    pub argon2_memory_kib: u32,
    /// Argon2id time cost (passes).
    pub argon2_iterations: u32,
    /// Base delay in milliseconds before answering a failed login; it doubles with each further
    /// failure from the same address (up to 5 s) and resets after a success or 10 quiet minutes.
    pub failure_delay_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scram_iterations: 10_000,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            failure_delay_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Messages kept per user while they are offline (XEP-0160); beyond it senders get
    /// `<service-unavailable/>`.
    pub max_messages: usize,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig { max_messages: 1000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityConfig {
    /// Seconds between writes of last-activity times (XEP-0012): at most one disk write per user per
    /// interval; a crash can lose at most this much of last-seen precision, never a message.
    pub write_interval: u64,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig { write_interval: 60 }
    }
}

/// Group chat (XEP-0045).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucConfig {
    /// The service's domain; empty means `conference.` followed by the server's domain.
    pub domain: String,
    /// Occupants a room holds unless its owner sets another limit: the group size limit.
    pub max_occupants: usize,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            domain: String::new(),
            max_occupants: 100,
        }
    }
}

/// Whether chats are kept after delivery (XEP-0313 message archives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveMode {
    /// Messages users send and receive are kept in their archives (until `expire_after`).
    Permanent,
    /// Nothing is archived: a message lives in the offline store until it is delivered.
    Temporary,
}

/// Message archives (XEP-0313) and their retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// What users who did not choose get (each user may choose otherwise with XEP-0441
    /// preferences), and whether new rooms keep an archive unless their owner says.
    pub default: ArchiveMode,
    /// How long archived messages are kept: "never" (they stay until deleted), or a number with a
    /// unit: "90d", "12h", "30m", "45s", "2w".
    pub expire_after: String,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            default: ArchiveMode::Permanent,
            expire_after: "never".into(),
        }
    }
}

impl ArchiveConfig {
    /// `expire_after` as a duration; none when archived messages never expire.
    pub fn expiry(&self) -> Option<std::time::Duration> {
        parse_age(&self.expire_after).ok().flatten()
    }
}

/// "never", or a positive number followed by s, m, h, d or w.
fn parse_age(text: &str) -> Result<Option<std::time::Duration>, String> {
    let text = text.trim();
    if text == "never" {
        return Ok(None);
    }
    let problem = || {
        format!("'{text}' is not \"never\" or an age such as \"90d\", \"12h\", \"30m\", \"45s\" or \"2w\"")
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(problem)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| problem())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(problem()),
    };
    match number.checked_mul(unit) {
        Some(0) => Err(format!("'{text}' would delete messages as soon as they are archived: use default = \"temporary\" instead")),
        Some(seconds) => Ok(Some(std::time::Duration::from_secs(seconds))),
        None => Err(problem()),
    }
}

/// Rookery's own HTTPS server (file uploads; the certificate of `[tls]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTPS listener. Empty string: no HTTP server (and so no file upload).
    pub listen: String,
    /// The base URL clients are given (upload and download links), when the server is reached
    /// through another name or port (a reverse proxy, a CDN). Empty: `https://<domain>:<port>`.
    pub public_url: String,
    /// Web page origins allowed to open XMPP WebSockets (`https://chat.example.org`); empty: any
    /// origin (convenient for development; list your web client's origin in production).
    pub websocket_origins: Vec<String>,
    /// Seconds between WebSocket pings to each client; one silent for three of them is closed.
    pub websocket_ping: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:5443".into(),
            public_url: String::new(),
            websocket_origins: Vec::new(),
            websocket_ping: 30,
        }
    }
}

/// File sharing (XEP-0363 HTTP File Upload).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Whether the upload service runs (it needs `[http] listen`).
    pub enabled: bool,
    /// The service's domain; empty means `upload.` followed by the server's domain.
    pub domain: String,
    /// Largest file accepted, in bytes; larger requests get `<file-too-large/>`.
    pub max_file_size: u64,
    /// Bytes one user may keep stored at once (all their files together).
    pub quota: u64,
    /// Seconds a slot may wait for its upload (XEP-0363 recommends about 300).
    pub slot_timeout: u64,
    /// How long a file shared in a message is kept when the sender's chats are temporary (nothing
    /// archived): long enough for recipients to fetch it. With permanent chats a file is kept as
    /// long as the archived messages ([archive] expire_after). Same syntax as expire_after.
    pub temporary_expire_after: String,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: true,
            domain: String::new(),
            max_file_size: 100 * 1024 * 1024,
            quota: 1024 * 1024 * 1024,
            slot_timeout: 300,
            temporary_expire_after: "7d".into(),
        }
    }
}

impl UploadConfig {
    /// `temporary_expire_after` as a duration; none when such files never expire.
    pub fn temporary_expiry(&self) -> Option<std::time::Duration> {
        parse_age(&self.temporary_expire_after).ok().flatten()
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Unix socket for `rookery user ...` while the server runs. Empty: `<data_dir>/admin.sock`.
    pub socket: PathBuf,
}

/// A configuration problem, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(&e, text),
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let domain = self.server.domain.trim_end_matches('.');
        if domain.is_empty() || domain.contains(['@', '/']) {
            return Err((
                "[server] domain",
                format!("'{}' is not a domain name", self.server.domain),
            ));
        }
        if jid::BareJid::new(domain).is_err() {
            return Err((
                "[server] domain",
                format!("'{}' is not a valid XMPP domain", self.server.domain),
            ));
        }
        if self.server.data_dir.as_os_str().is_empty() {
            return Err(("[server] data_dir", "must not be empty".into()));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.server.log_level).is_err() {
            return Err((
                "[server] log_level",
                format!(
                    "'{}' is not a log filter (try \"info\" or \"debug\")",
                    self.server.log_level
                ),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(("[server] max_connections", "must be at least 1".into()));
        }
        let muc = self.muc_domain();
        if muc == domain.to_ascii_lowercase()
            || jid::BareJid::new(&muc).is_err()
            || muc.contains(['@', '/'])
        {
            return Err((
                "[muc] domain",
                format!(
                    "'{muc}' is not a domain name of its own (it must differ from [server] domain)"
                ),
            ));
        }
        if self.muc.max_occupants == 0 {
            return Err(("[muc] max_occupants", "must be at least 1".into()));
        }
        parse_age(&self.archive.expire_after).map_err(|m| ("[archive] expire_after", m))?;
        parse_listen(&self.http.listen).map_err(|m| ("[http] listen", m))?;
        if self.http.websocket_ping == 0 {
            return Err(("[http] websocket_ping", "must be at least 1 second".into()));
        }
        let public = self.http.public_url.trim_end_matches('/');
        // XEP-0363 §4: the URLs handed out must be HTTPS (a TLS-terminating proxy is fine).
        if !(public.is_empty() || public.starts_with("https://")) {
            return Err((
                "[http] public_url",
                format!("'{public}' is not an https URL such as \"https://files.example.org\""),
            ));
        }
        let upload = self.upload_domain();
        if upload == domain.to_ascii_lowercase()
            || upload == muc
            || jid::BareJid::new(&upload).is_err()
            || upload.contains(['@', '/'])
        {
            return Err((
                "[upload] domain",
                format!("'{upload}' is not a domain name of its own (it must differ from [server] domain and [muc] domain)"),
            ));
        }
        if self.upload.max_file_size == 0 {
            return Err(("[upload] max_file_size", "must be at least 1 byte".into()));
        }
        if self.upload.slot_timeout == 0 {
            return Err(("[upload] slot_timeout", "must be at least 1 second".into()));
        }
        parse_age(&self.upload.temporary_expire_after)
            .map_err(|m| ("[upload] temporary_expire_after", m))?;
        parse_listen(&self.c2s.listen).map_err(|m| ("[c2s] listen", m))?;
        parse_listen(&self.c2s.direct_tls_listen).map_err(|m| ("[c2s] direct_tls_listen", m))?;
        if self.c2s.listen.is_empty() && self.c2s.direct_tls_listen.is_empty() {
            return Err((
                "[c2s] listen",
                "both listen and direct_tls_listen are empty: clients could not connect".into(),
            ));
        }
        if self.c2s.max_stanza_size < 4096 {
            return Err((
                "[c2s] max_stanza_size",
                "must be at least 4096 bytes".into(),
            ));
        }
        if self.c2s.auth_timeout == 0 {
            return Err(("[c2s] auth_timeout", "must be at least 1 second".into()));
        }
        if !(1..=5).contains(&self.c2s.max_auth_attempts) {
            return Err((
                "[c2s] max_auth_attempts",
                "must be from 1 to 5 (RFC 6120 §6.4.5)".into(),
            ));
        }
        if self.activity.write_interval == 0 {
            return Err((
                "[activity] write_interval",
                "must be at least 1 second".into(),
            ));
        }
        if self.c2s.session_queue == 0 {
            return Err(("[c2s] session_queue", "must be at least 1".into()));
        }
        if self.tls.cert.as_os_str().is_empty() || self.tls.key.as_os_str().is_empty() {
            return Err(("[tls] cert", "cert and key must both name files".into()));
        }
        if self.auth.scram_iterations < 4096 {
            return Err((
                "[auth] scram_iterations",
                "must be at least 4096 (RFC 5802)".into(),
            ));
        }
        if self.auth.argon2_memory_kib < 8 || self.auth.argon2_iterations == 0 {
            return Err((
                "[auth] argon2_memory_kib",
                "argon2 needs at least 8 KiB and 1 iteration".into(),
            ));
        }
        Ok(())
    }

    /// The served domain in its normalized form.
    pub fn domain(&self) -> String {
        let domain = self.server.domain.trim_end_matches('.');
        jid::BareJid::new(domain)
            .map(|j| j.to_string())
            .unwrap_or_else(|_| domain.to_string())
    }

    /// The group chat service's domain (`[muc] domain`, or `conference.<domain>`).
    pub fn muc_domain(&self) -> String {
        self.service_domain(&self.muc.domain, "conference")
    }

    /// A component's domain: as configured, or `<prefix>.<server domain>` when left empty.
    fn service_domain(&self, configured: &str, prefix: &str) -> String {
        let domain = configured.trim_end_matches('.');
        if domain.is_empty() {
            format!("{prefix}.{}", self.server.domain.trim_end_matches('.'))
        } else {
            domain.to_ascii_lowercase()
        }
    }

    /// The upload service's domain (`[upload] domain`, or `upload.<domain>`).
    pub fn upload_domain(&self) -> String {
        self.service_domain(&self.upload.domain, "upload")
    }

    /// The HTTPS listener address, if any.
    pub fn http_listen(&self) -> Option<SocketAddr> {
        parse_listen(&self.http.listen).ok().flatten()
    }

    /// Where uploaded files are kept.
    pub fn upload_dir(&self) -> PathBuf {
        self.server.data_dir.join("uploads")
    }

    /// The STARTTLS listener address, if any.
    pub fn c2s_listen(&self) -> Option<SocketAddr> {
        parse_listen(&self.c2s.listen).ok().flatten()
    }

    /// The direct TLS listener address, if any.
    pub fn direct_tls_listen(&self) -> Option<SocketAddr> {
        parse_listen(&self.c2s.direct_tls_listen).ok().flatten()
    }

    /// Path of the admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        if self.admin.socket.as_os_str().is_empty() {
            self.server.data_dir.join("admin.sock")
        } else {
            self.admin.socket.clone()
        }
    }
}

fn parse_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| format!("'{value}' is not an address with a port, such as \"0.0.0.0:5222\""))
}

/// Turns a TOML/serde error into one line that names the table and key.
fn describe_toml_error(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim().to_string();
    match err.span() {
        Some(span) if text.is_char_boundary(span.start.min(text.len())) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let table = text[..span.start.min(text.len())]
                .lines()
                .rev()
                .find_map(|l| {
                    let l = l.trim();
                    (l.starts_with('[') && l.ends_with(']')).then(|| l.to_string())
                })
                .unwrap_or_else(|| "top level".to_string());
            // The span covers the key for unknown keys and the value for bad values: either way the
            // key is what stands before '=' on the span's line.
            let start = span.start.min(text.len());
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_text = text[line_start..].lines().next().unwrap_or("");
            let key = match line_text.split_once('=') {
                Some((key, _)) => key.trim().to_string(),
                None => line_text.trim().to_string(),
            };
            if key.is_empty() {
                format!("line {line}, {table}: {message}")
            } else {
                format!("line {line}, {table} {key}: {message}")
            }
        }
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_localhost_config() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(c.domain(), "localhost");
        assert_eq!(c.c2s_listen(), Some("0.0.0.0:5222".parse().unwrap()));
        assert!(c.c2s.require_encryption);
    }

    #[test]
    fn the_shipped_config_documents_exactly_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/rookery.toml"));
        let shipped = Config::load(path).unwrap();
        assert_eq!(
            format!("{shipped:?}"),
            format!("{:?}", Config::default()),
            "conf/rookery.toml must show every key with its default"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse(
            "[c2s]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("bogus"), "{text}");
        assert!(text.contains("[c2s]"), "{text}");
    }

    #[test]
    fn archive_ages() {
        assert_eq!(parse_age("never"), Ok(None));
        assert_eq!(
            parse_age("90d"),
            Ok(Some(std::time::Duration::from_secs(90 * 86_400)))
        );
        assert_eq!(
            parse_age("45s"),
            Ok(Some(std::time::Duration::from_secs(45)))
        );
        for bad in [
            "",
            "d",
            "10",
            "10y",
            "-1d",
            "0s",
            "1.5h",
            "99999999999999999999w",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
        let e =
            Config::parse("[archive]\nexpire_after = \"soon\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("[archive] expire_after"), "{e}");
        let e =
            Config::parse("[archive]\ndefault = \"forever\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("default"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::parse("[c2s]\nlisten = \"nowhere\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("[c2s] listen"), "{e}");
        let e = Config::parse("[c2s]\nrequire_encryption = \"yes\"\n", Path::new("t.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("require_encryption"), "{e}");
    }
}
