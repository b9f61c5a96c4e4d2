//! Test harness: starts the real `rookery` binary on ephemeral loopback ports with its own data
//! directory, and gives tests raw XMPP connections (plain, STARTTLS, direct TLS) to talk to it.
#![allow(dead_code)]

pub mod http;
pub mod mam;
pub mod muc;
pub mod stanzas;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DOMAIN: &str = "localhost";
pub const STREAM_OPEN: &str = "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// One certificate for every server of this test binary, so that clients can trust it (and
/// tokio-xmpp can be pointed at it through SSL_CERT_FILE, which is process-wide).
pub fn shared_cert() -> &'static (PathBuf, PathBuf) {
    static CERT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CERT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rookery-test-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let cert = dir.join("localhost.crt");
        let key = dir.join("localhost.key");
        let pair =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
        std::fs::write(&cert, pair.cert.pem()).expect("write cert");
        std::fs::write(&key, pair.signing_key.serialize_pem()).expect("write key");
        // SAFETY: set once, before any client thread reads it.
        unsafe { std::env::set_var("SSL_CERT_FILE", &cert) };
        (cert, key)
    })
}

/// Server settings a test may change.
#[derive(Clone)]
pub struct Options {
    pub require_encryption: bool,
    pub registration: bool,
    pub max_stanza_size: usize,
    pub auth_timeout: u64,
    pub max_connections: usize,
    pub failure_delay_ms: u64,
    /// PBKDF2 iterations for SCRAM keys (the server's default is 10000; tests use the minimum).
    pub scram_iterations: u32,
    /// The server's log filter.
    pub log_level: String,
    /// Seconds a session with XEP-0198 resumption survives a lost connection.
    pub resume_timeout: u64,
    /// Stanzas queued per session before senders wait (`[c2s] session_queue`).
    pub session_queue: usize,
    /// Extra TOML appended verbatim (for tables not covered above).
    pub extra: String,
    /// Extra lines for the `[http]` table (which the harness writes itself).
    pub http: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            require_encryption: true,
            registration: false,
            max_stanza_size: 65536,
            auth_timeout: 30,
            max_connections: 1000,
            failure_delay_ms: 10,
            scram_iterations: 4096,
            log_level: "info,rookery=debug".into(),
            resume_timeout: 60,
            session_queue: 512,
            extra: String::new(),
            http: String::new(),
        }
    }
}

/// A running server process.
pub struct TestServer {
    child: Child,
    pub c2s: SocketAddr,
    pub direct_tls: SocketAddr,
    /// The HTTPS listener (uploads), when the configuration has one.
    pub http: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = shared_cert();
        let config = dir.path().join("rookery.toml");
        let text = format!(
            r#"[server]
domain = "localhost"
data_dir = "{data}"
log_level = "{log_level}"
max_connections = {max_connections}
shutdown_timeout = 5
[c2s]
listen = "127.0.0.1:0"
direct_tls_listen = "127.0.0.1:0"
require_encryption = {require}
max_stanza_size = {max_stanza}
auth_timeout = {auth_timeout}
resume_timeout = {resume_timeout}
session_queue = {session_queue}
[http]
listen = "127.0.0.1:0"
{http}
[tls]
cert = "{cert}"
key = "{key}"
[registration]
allow = {registration}
[auth]
scram_iterations = {scram_iterations}
argon2_memory_kib = 64
argon2_iterations = 1
failure_delay_ms = {delay}
{extra}
"#,
            data = dir.path().join("data").display(),
            max_connections = options.max_connections,
            require = options.require_encryption,
            max_stanza = options.max_stanza_size,
            auth_timeout = options.auth_timeout,
            cert = cert.display(),
            key = key.display(),
            registration = options.registration,
            delay = options.failure_delay_ms,
            log_level = options.log_level,
            resume_timeout = options.resume_timeout,
            scram_iterations = options.scram_iterations,
            session_queue = options.session_queue,
            extra = options.extra,
            http = options.http,
        );
        std::fs::write(&config, text).expect("write config");
        Self::spawn(dir, config)
    }

    /// Starts a new server process on the same configuration and data as a stopped one.
    pub fn restart(mut old: TestServer) -> TestServer {
        let _ = old.child.kill();
        let _ = old.child.wait();
        // Keep the directory: move it out of the old value instead of dropping it.
        let dir = std::mem::replace(&mut old.dir, tempfile::tempdir().expect("tempdir"));
        let config = old.config.clone();
        drop(old);
        Self::spawn(dir, config)
    }

    fn spawn(dir: tempfile::TempDir, config: PathBuf) -> TestServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rookery"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rookery");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
            });
        }
        let (mut c2s, mut direct_tls, mut http) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while c2s.is_none() || direct_tls.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "server did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                ),
            };
            if let Some(addr) = listening(&line, "c2s (STARTTLS) listening on ") {
                c2s = Some(addr);
            }
            if let Some(addr) = listening(&line, "c2s (direct TLS) listening on ") {
                direct_tls = Some(addr);
            }
            if let Some(addr) = listening(&line, "https listening on ") {
                http = Some(addr);
            }
        }
        // Wait for the "ready" line so the admin socket is up too.
        while !log.lock().unwrap().iter().any(|l| l.contains("ready")) {
            if Instant::now() > deadline {
                panic!("server not ready");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let http = http.or_else(|| {
            let log = log.lock().unwrap();
            log.iter()
                .find_map(|line| listening(line, "https listening on "))
        });
        TestServer {
            child,
            c2s: c2s.unwrap(),
            direct_tls: direct_tls.unwrap(),
            http,
            dir,
            config,
            log,
        }
    }

    /// Runs `rookery <args> --config <this server's config>`; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        run_cli(&self.config, args)
    }

    /// Creates an account through the command line (which reaches the server's admin socket).
    pub fn add_user(&self, user: &str, password: &str) {
        let (ok, out, err) = self.cli(&["user", "add", user, "--password", password]);
        assert!(ok, "user add failed: {out} {err}");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log once a line matches `line` (the log is read from the server's stderr by a thread, so
    /// a line may arrive a little after the client saw the effect), or as it is after `WAIT`.
    pub async fn log_with(&self, line: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.lines().any(&line) || Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not stop on SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL (no shutdown, no final flush) and waits until it is gone.
    pub fn kill9(&mut self) {
        unsafe {
            libc_kill(self.child.id() as i32, 9);
        }
        let _ = self.child.wait();
    }

    /// The server's process id (for reading /proc in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn listening(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Connects over STARTTLS, authenticates with `mechanism` and asks to resume the XEP-0198
/// session `previd`; returns the client and what the server answered (`<resumed/>` or
/// `<failed>…</failed>`).
pub async fn resume_over_tcp(
    server: &TestServer,
    mechanism: &str,
    user: &str,
    password: &str,
    previd: &str,
    h: u32,
) -> (Raw, String) {
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    c.authenticate(mechanism, user, password).await.unwrap();
    c.open().await;
    c.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>"
    ))
    .await;
    let answer = c.expect_one_of(&["</failed>", "<resumed"]).await;
    let answer = if answer.contains("<resumed") {
        answer + &c.expect("/>").await
    } else {
        answer
    };
    (c, answer)
}

/// Runs the CLI with a config file; returns (success, stdout, stderr).
pub fn run_cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run rookery");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Raw XMPP client

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw XMPP connection: send text, wait for text to appear in what the server sent.
pub struct Raw {
    io: Option<Box<dyn Io>>,
    /// Everything received and not yet consumed by `expect`.
    pub pending: String,
    /// tls-exporter channel-binding data when on TLS 1.3.
    pub exporter: Option<Vec<u8>>,
}

pub fn tls_connector() -> tokio_rustls::TlsConnector {
    let (cert, _) = shared_cert();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert).unwrap();
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

pub const WAIT: Duration = Duration::from_secs(10);

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        Raw {
            io: Some(Box::new(tcp)),
            pending: String::new(),
            exporter: None,
        }
    }

    /// A connection with a small receive buffer: a client that stops reading is soon felt by the
    /// server (its writes stall), as a slow phone would be.
    pub async fn connect_small_window(addr: SocketAddr, bytes: u32) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        Raw {
            io: Some(Box::new(tcp)),
            pending: String::new(),
            exporter: None,
        }
    }

    pub async fn connect_direct_tls(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        let (io, exporter) = tls_over(Box::new(tcp)).await;
        Raw {
            io: Some(io),
            pending: String::new(),
            exporter,
        }
    }

    /// The connection itself, for a test that reads and writes at the same time; anything already
    /// received and not consumed is returned with it.
    pub fn into_io(mut self) -> (Box<dyn Io>, String) {
        (
            self.io.take().expect("open"),
            std::mem::take(&mut self.pending),
        )
    }

    pub async fn send(&mut self, text: &str) {
        let io = self.io.as_mut().expect("open");
        io.write_all(text.as_bytes()).await.expect("send");
        io.flush().await.expect("flush");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let io = self.io.as_mut().expect("open");
        io.write_all(bytes).await?;
        io.flush().await
    }

    /// Reads until `needle` is in the received text; returns everything up to and including it.
    pub async fn expect(&mut self, needle: &str) -> String {
        match self.try_expect(needle, WAIT).await {
            Ok(text) => text,
            Err(got) => panic!("expected {needle:?}, got {got:?}"),
        }
    }

    /// Like `expect`, but returns what was received instead of panicking when it times out or the
    /// connection closes first.
    pub async fn try_expect(&mut self, needle: &str, wait: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.pending.find(needle) {
                let end = pos + needle.len();
                let taken: String = self.pending[..end].to_string();
                self.pending.drain(..end);
                return Ok(taken);
            }
            let mut buf = [0u8; 8192];
            let io = self.io.as_mut().expect("open");
            match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(std::mem::take(&mut self.pending)),
                Ok(Ok(n)) => self.pending.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    }

    /// Waits until the server closes the connection; returns everything it sent until then.
    pub async fn expect_closed(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut buf = [0u8; 8192];
            let io = self.io.as_mut().expect("open");
            match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return std::mem::take(&mut self.pending),
                Ok(Ok(n)) => self.pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => panic!("connection not closed; received {:?}", self.pending),
            }
        }
    }

    /// Reads whatever arrives within `wait` (for checking that nothing arrives).
    pub async fn drain(&mut self, wait: Duration) -> String {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut buf = [0u8; 8192];
            let io = self.io.as_mut().expect("open");
            match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => return std::mem::take(&mut self.pending),
            }
        }
    }

    /// Opens the stream and reads up to the end of the features.
    pub async fn open(&mut self) -> String {
        self.send(STREAM_OPEN).await;
        self.expect("</stream:features>").await
    }

    /// STARTTLS from a fresh plain connection; returns the features of the stream over TLS.
    pub async fn starttls(&mut self) -> String {
        let features = self.open().await;
        assert!(
            features.contains("urn:ietf:params:xml:ns:xmpp-tls"),
            "no starttls offered: {features}"
        );
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        self.expect("<proceed").await;
        self.expect("/>").await;
        let io = self.io.take().expect("open");
        let (tls, exporter) = tls_over(io).await;
        self.io = Some(tls);
        self.exporter = exporter;
        self.pending.clear();
        self.open().await
    }

    /// Authenticates with a mechanism from the `sasl` crate's client, then restarts and binds.
    /// Returns the bound full JID.
    pub async fn login(
        &mut self,
        mechanism: &str,
        user: &str,
        password: &str,
        resource: Option<&str>,
    ) -> String {
        self.authenticate(mechanism, user, password)
            .await
            .unwrap_or_else(|e| panic!("authentication with {mechanism} failed: {e}"));
        self.bind(resource).await
    }

    /// Runs a SASL exchange; Ok after <success/> (and a verified server signature), Err with the
    /// failure text otherwise.
    pub async fn authenticate(
        &mut self,
        mechanism: &str,
        user: &str,
        password: &str,
    ) -> Result<(), String> {
        use sasl::client::mechanisms::{Plain, Scram};
        use sasl::client::Mechanism;
        use sasl::common::scram::{Sha1, Sha256};
        use sasl::common::ChannelBinding;
        let binding = match &self.exporter {
            Some(data) if mechanism.ends_with("-PLUS") => ChannelBinding::TlsExporter(data.clone()),
            _ if mechanism.ends_with("-PLUS") => panic!("no channel binding data for {mechanism}"),
            // "n": this client does not do channel binding.
            _ => ChannelBinding::None,
        };
        let mut mech: Box<dyn Mechanism + Send> = match mechanism {
            "PLAIN" => Box::new(Plain::new(user, password)),
            "SCRAM-SHA-1" | "SCRAM-SHA-1-PLUS" => {
                Box::new(Scram::<Sha1>::new(user, password, binding).unwrap())
            }
            "SCRAM-SHA-256" | "SCRAM-SHA-256-PLUS" => {
                Box::new(Scram::<Sha256>::new(user, password, binding).unwrap())
            }
            other => panic!("unknown mechanism {other}"),
        };
        let initial = mech.initial();
        let payload = if initial.is_empty() {
            "=".to_string()
        } else {
            B64.encode(initial)
        };
        self.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{payload}</auth>"))
            .await;
        loop {
            let text = self
                .expect_one_of(&[
                    "</challenge>",
                    "</success>",
                    "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
                    "</failure>",
                ])
                .await;
            if let Some(challenge) = between(
                &text,
                "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
                "</challenge>",
            ) {
                let data = if challenge == "=" {
                    vec![]
                } else {
                    B64.decode(challenge).unwrap()
                };
                let response = mech
                    .response(&data)
                    .map_err(|e| format!("client mechanism: {e}"))?;
                let payload = if response.is_empty() {
                    "=".to_string()
                } else {
                    B64.encode(response)
                };
                self.send(&format!(
                    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{payload}</response>"
                ))
                .await;
            } else if text.contains("<success") {
                if let Some(data) = between(
                    &text,
                    "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
                    "</success>",
                ) {
                    let data = B64.decode(data).unwrap();
                    mech.success(&data)
                        .map_err(|e| format!("server signature: {e}"))?;
                }
                return Ok(());
            } else {
                return Err(text);
            }
        }
    }

    /// After SASL success: restart the stream and bind a resource; returns the bound JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        let features = self.open().await;
        assert!(
            features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
            "no bind offered: {features}"
        );
        let inner = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{inner}</bind></iq>"))
            .await;
        let reply = self.expect("</iq>").await;
        between(&reply, "<jid>", "</jid>")
            .unwrap_or_else(|| panic!("bind failed: {reply}"))
            .to_string()
    }

    /// Reads until one of the needles appears; returns the text up to the first one found.
    pub async fn expect_one_of(&mut self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = needles
                .iter()
                .filter_map(|n| self.pending.find(n).map(|p| p + n.len()))
                .min();
            if let Some(end) = found {
                let taken = self.pending[..end].to_string();
                self.pending.drain(..end);
                return taken;
            }
            let mut buf = [0u8; 8192];
            let io = self.io.as_mut().expect("open");
            match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => panic!("expected one of {needles:?}, got {:?}", self.pending),
            }
        }
    }
}

/// TLS client handshake over an already-connected boxed stream.
async fn tls_over(io: Box<dyn Io>) -> (Box<dyn Io>, Option<Vec<u8>>) {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector()
        .connect(name, io)
        .await
        .expect("TLS handshake after STARTTLS");
    let conn = tls.get_ref().1;
    let exporter = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
        conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
            .map(|k| k.to_vec())
    } else {
        None
    };
    (Box::new(tls), exporter)
}

/// The text between two markers.
pub fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

/// A logged-in raw client over STARTTLS with SCRAM-SHA-256; returns it and its full JID.
pub async fn logged_in(
    server: &TestServer,
    user: &str,
    password: &str,
    resource: &str,
) -> (Raw, String) {
    logged_in_over(Raw::connect(server.c2s).await, user, password, resource).await
}

/// Like `logged_in`, over a connection the test opened itself.
pub async fn logged_in_over(
    mut c: Raw,
    user: &str,
    password: &str,
    resource: &str,
) -> (Raw, String) {
    c.starttls().await;
    let jid = c
        .login("SCRAM-SHA-256", user, password, Some(resource))
        .await;
    (c, jid)
}
