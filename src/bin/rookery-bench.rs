//! `rookery-bench`: an XMPP load generator for Rookery and other servers (Prosody, ejabberd).
//!
//! It speaks plain XMPP over TCP (optionally STARTTLS), logs in with SCRAM-SHA-256 or PLAIN, creates
//! its accounts by in-band registration, and runs one scenario, printing one JSON line:
//!
//! - `login`: logins per second and their latency;
//! - `idle`: N sessions held, and the server's resident memory per session (from /proc, `--pid`);
//! - `chat`: sender→receiver pairs, closed loop (`--window`) or open loop (`--rate`), with delivered
//!   messages per second, latency percentiles, and lost / duplicated / out-of-order counts;
//! - `offline`: messages stored for offline users, then drained, with rates and an exactly-once check;
//! - `muc`: rooms × occupants, one sender per room, closed loop: deliveries per second (every
//!   occupant's copy, the sender's echo included), latency, and loss / duplicate / order counts.
//!
//! It parses as little as it can (byte scans for the few things it reads), so that it is not the
//! bottleneck. `--smoke` shrinks every scenario to a second or so, for CI.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::{Parser, Subcommand};
use rookery::auth::scram::ScramHash;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser, Clone)]
#[command(name = "rookery-bench", about = "XMPP load generator")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:5222")]
    server: SocketAddr,
    /// XMPP domain of the accounts.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Use STARTTLS (the certificate is not checked: this is a benchmark on loopback).
    #[arg(long)]
    tls: bool,
    /// SASL mechanism: scram (SCRAM-SHA-256), scram1 (SCRAM-SHA-1) or plain.
    #[arg(long, default_value = "scram")]
    mech: String,
    /// Create the accounts by in-band registration (XEP-0077) first.
    #[arg(long)]
    register: bool,
    /// Prefix of account names (accounts are PREFIX-s0, PREFIX-r0, ...).
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Password of every account.
    #[arg(long, default_value = "bench-password")]
    password: String,
    /// Local source addresses to spread connections over (for more than ~28k connections).
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Server process id, to read its memory and CPU time from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Tiny sizes for a seconds-long run (CI).
    #[arg(long)]
    smoke: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// Logins per second (each: connect, [STARTTLS], SASL, bind, close).
    Login {
        #[arg(long, default_value_t = 500)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Hold idle bound sessions and report server memory per session.
    Idle {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Sessions (resources) per account.
        #[arg(long, default_value_t = 5)]
        per_account: usize,
    },
    /// One-to-one chat between sender/receiver pairs.
    Chat {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages per pair (closed loop).
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages in flight per pair (closed loop).
        #[arg(long, default_value_t = 10)]
        window: usize,
        /// Total messages per second over all pairs (open loop, instead of the window).
        #[arg(long)]
        rate: Option<u64>,
        /// Seconds of open-loop sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Store messages for offline users, then drain them.
    Offline {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        #[arg(long, default_value_t = 50)]
        messages: usize,
    },
    /// Group chat (XEP-0045): rooms × occupants, one sender per room, closed loop.
    Muc {
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Occupants per room, the sender included.
        #[arg(long, default_value_t = 50)]
        occupants: usize,
        /// Messages per room.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Messages in flight per room (sent but not yet seen by every occupant).
        #[arg(long, default_value_t = 10)]
        window: usize,
        /// The MUC service (default: conference.DOMAIN).
        #[arg(long)]
        service: Option<String>,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(message.into().into())
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One XMPP client connection: a socket and what was read but not consumed yet.
struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Accepts any certificate: the benchmark talks to servers on loopback with throwaway certificates.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

const WAIT: Duration = Duration::from_secs(30);

impl Conn {
    async fn tcp(args: &Args, index: usize) -> Result<TcpStream> {
        let socket = if args.server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !args.sources.is_empty() {
            let source = args.sources[index % args.sources.len()];
            socket.bind(SocketAddr::new(source, 0))?;
        }
        let stream = socket.connect(args.server).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        self.io.write_all(text.as_bytes()).await?;
        Ok(())
    }

    /// Reads until `needle` appears; returns everything up to and including it.
    async fn until(&mut self, needle: &[u8]) -> Result<Vec<u8>> {
        self.until_any(&[needle]).await
    }

    /// Reads until one of the needles appears; returns everything up to and including the first.
    async fn until_any(&mut self, needles: &[&[u8]]) -> Result<Vec<u8>> {
        loop {
            let found = needles
                .iter()
                .filter_map(|n| find(&self.buf, n).map(|p| p + n.len()))
                .min();
            if let Some(end) = found {
                return Ok(self.buf.drain(..end).collect());
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.io.read(&mut chunk)).await??;
        if n == 0 {
            return fail(format!(
                "connection closed; last received: {}",
                String::from_utf8_lossy(&self.buf[self.buf.len().saturating_sub(300)..])
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn open(&mut self, domain: &str) -> Result<Vec<u8>> {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        ))
        .await?;
        self.until(b"</stream:features>").await
    }

    /// Connects and negotiates up to (not including) authentication; returns the features.
    async fn negotiate(args: &Args, index: usize) -> Result<(Conn, Vec<u8>)> {
        let tcp = Self::tcp(args, index).await?;
        let mut conn = Conn {
            io: Box::new(tcp),
            buf: Vec::new(),
        };
        let mut features = conn.open(&args.domain).await?;
        if args.tls {
            conn.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                .await?;
            conn.until(b"<proceed").await?;
            conn.until(b">").await?;
            let name = rustls::pki_types::ServerName::try_from(args.domain.clone())?;
            let io = std::mem::replace(&mut conn.io, Box::new(tokio::io::duplex(1).0));
            conn.io = Box::new(tls_connector()?.connect(name, io).await?);
            conn.buf.clear();
            features = conn.open(&args.domain).await?;
        }
        Ok((conn, features))
    }

    /// XEP-0077 registration on a negotiated stream; an existing account is fine.
    async fn register(&mut self, user: &str, password: &str) -> Result<()> {
        self.send(&format!(
            "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{user}</username><password>{password}</password></query></iq>"
        ))
        .await?;
        // A result may be self-closing; an error's first "/>" is inside it, which is enough to read.
        let reply = self.until_any(&[b"</iq>", b"/>"]).await?;
        let text = String::from_utf8_lossy(&reply);
        if text.contains("type='result'")
            || text.contains("type=\"result\"")
            || text.contains("conflict")
        {
            Ok(())
        } else {
            fail(format!("registration of {user} failed: {text}"))
        }
    }

    /// SASL, stream restart and bind; returns the bound JID.
    async fn login(&mut self, args: &Args, user: &str, resource: &str) -> Result<String> {
        match args.mech.as_str() {
            "plain" => {
                let payload = B64.encode(format!("\0{user}\0{}", args.password));
                self.send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"))
                    .await?;
            }
            "scram1" => self.scram(user, &args.password, false).await?,
            _ => self.scram(user, &args.password, true).await?,
        }
        let outcome = self
            .until_any(&[
                b"</success>",
                b"</failure>",
                b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            ])
            .await?;
        if find(&outcome, b"<failure").is_some() {
            return fail(format!("authentication of {user} failed"));
        }
        self.open(&args.domain).await?;
        self.send(&format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await?;
        let reply = self.until(b"</iq>").await?;
        let text = String::from_utf8_lossy(&reply);
        match (text.find("<jid>"), text.find("</jid>")) {
            (Some(a), Some(b)) if a < b => Ok(text[a + 5..b].to_string()),
            _ => fail(format!("bind failed: {text}")),
        }
    }

    /// SCRAM-SHA-256 (RFC 7677), client side, without channel binding.
    async fn scram(&mut self, user: &str, password: &str, sha256: bool) -> Result<()> {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        let first_bare = format!("n={user},r={nonce}");
        let mechanism = if sha256 {
            "SCRAM-SHA-256"
        } else {
            "SCRAM-SHA-1"
        };
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
            B64.encode(format!("n,,{first_bare}"))
        ))
        .await?;
        let challenge = self.until_any(&[b"</challenge>", b"</failure>"]).await?;
        if find(&challenge, b"<failure").is_some() {
            return fail(format!(
                "{mechanism} refused for {user}: {}",
                String::from_utf8_lossy(&challenge)
            ));
        }
        let text = String::from_utf8_lossy(&challenge);
        let inner = text.trim_end_matches("</challenge>");
        let data = inner.rsplit_once('>').map(|(_, d)| d).unwrap_or("");
        let server_first = String::from_utf8(B64.decode(data.trim())?)?;
        let mut r = None;
        let mut s = None;
        let mut i = None;
        for part in server_first.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => r = Some(v.to_string()),
                Some(("s", v)) => s = Some(B64.decode(v)?),
                Some(("i", v)) => i = Some(v.parse::<u32>()?),
                _ => {}
            }
        }
        let (Some(r), Some(salt), Some(iterations)) = (r, s, i) else {
            return fail(format!("bad server-first message: {server_first}"));
        };
        // The same primitives the server's SCRAM uses.
        let hash = if sha256 {
            ScramHash::Sha256
        } else {
            ScramHash::Sha1
        };
        let salted = salted_password(hash, user, password, &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.digest(&client_key);
        let without_proof = format!("c=biws,r={r}");
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let signature = hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
        ))
        .await
    }

    /// Connects, optionally registers, logs in, binds; optionally sends initial presence.
    async fn session(
        args: &Args,
        index: usize,
        user: &str,
        resource: &str,
        presence: bool,
    ) -> Result<Conn> {
        let (mut conn, _) = Self::negotiate(args, index).await?;
        conn.login(args, user, resource).await?;
        if presence {
            conn.send("<presence/>").await?;
            conn.until(b"<presence").await?;
            conn.until(b">").await?;
        }
        Ok(conn)
    }

    async fn close(mut self) {
        let _ = self.send("</stream:stream>").await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.until(b"</stream:stream>")).await;
    }

    /// Closes the stream without waiting for the server's answer (some servers answer only after
    /// a delay, which is not the cost of a login).
    async fn close_now(mut self) {
        let _ = self.send("</stream:stream>").await;
        let _ = self.io.shutdown().await;
    }
}

/// Registers accounts (one connection each, a few at a time).
async fn register_all(args: &Args, users: &[String]) -> Result<()> {
    if !args.register {
        return Ok(());
    }
    for_each_user(args, users, |args, i, user| async move {
        let (mut conn, _) = Conn::negotiate(&args, i).await?;
        conn.register(&user, &args.password).await?;
        conn.close().await;
        Ok(())
    })
    .await
}

/// Runs `job` once per user, 16 at a time; fails if any run fails.
async fn for_each_user<F, Fut>(args: &Args, users: &[String], job: F) -> Result<()>
where
    F: Fn(Args, usize, String) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let permit = semaphore.clone().acquire_owned().await?;
        let run = job(args.clone(), i, user.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            run.await
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Resident memory (KiB) and CPU seconds of a process, from /proc.
fn proc_stats(pid: Option<u32>) -> (u64, f64) {
    let Some(pid) = pid else { return (0, 0.0) };
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (rss, ticks / 100.0)
}

async fn login(args: &Args, count: usize, concurrency: usize) -> Result<serde_json::Value> {
    let user = format!("{}-login", args.prefix);
    register_all(args, std::slice::from_ref(&user)).await?;
    let (_, cpu_before) = proc_stats(args.pid);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (args, user, next) = (args.clone(), user.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    return Ok::<_, Error>(times);
                }
                let t = Instant::now();
                let conn = Conn::session(&args, i, &user, &format!("l{i}"), false).await?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                conn.close_now().await;
            }
        }));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    let (_, cpu_after) = proc_stats(args.pid);
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(serde_json::json!({
        "scenario": "login", "tls": args.tls, "mech": args.mech, "logins": count, "concurrency": concurrency,
        "logins_per_s": count as f64 / wall,
        "ms_p50": percentile(&times, 0.5), "ms_p99": percentile(&times, 0.99),
        "server_cpu_ms_per_login": (cpu_after - cpu_before) * 1000.0 / count as f64,
    }))
}

async fn idle(args: &Args, sessions: usize, per_account: usize) -> Result<serde_json::Value> {
    // Several resources per account, as people with a phone and a desktop have, but not thousands
    // on one account: some servers limit resources per account.
    let per_account = per_account.max(1);
    let accounts = sessions.div_ceil(per_account).max(1);
    let users: Vec<String> = (0..accounts)
        .map(|i| format!("{}-idle{i}", args.prefix))
        .collect();
    register_all(args, &users).await?;
    // A few sessions first, so the baseline includes what every server sets up lazily.
    let mut held = Vec::new();
    for i in 0..10 {
        held.push(Conn::session(args, i, &users[0], &format!("w{i}"), true).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (before, _) = proc_stats(args.pid);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let (args, user) = (args.clone(), users[i / per_account].clone());
        let permit = semaphore.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            Conn::session(&args, i, &user, &format!("i{i}"), true).await
        }));
    }
    for task in tasks {
        held.push(task.await??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, _) = proc_stats(args.pid);
    Ok(serde_json::json!({
        "scenario": "idle", "tls": args.tls, "sessions": sessions, "accounts": accounts,
        "server_rss_kib_before": before, "server_rss_kib_after": after,
        "kib_per_session": after.saturating_sub(before) as f64 / sessions as f64,
    }))
}

/// Salted passwords already derived, by user, salt, iterations and hash. Clients keep this rather
/// than running PBKDF2 at each login (RFC 5802 §5.1 allows it), and the figures should measure the
/// server, not this tool's PBKDF2.
type SaltedKey = (String, Vec<u8>, u32, bool);
static SALTED: LazyLock<Mutex<HashMap<SaltedKey, Vec<u8>>>> = LazyLock::new(Default::default);

fn salted_password(
    hash: ScramHash,
    user: &str,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    let key = (
        user.to_string(),
        salt.to_vec(),
        iterations,
        matches!(hash, ScramHash::Sha256),
    );
    if let Some(salted) = SALTED.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return salted;
    }
    let salted = hash.salted_password(password.as_bytes(), salt, iterations);
    if let Ok(mut cache) = SALTED.lock() {
        cache.insert(key, salted.clone());
    }
    salted
}

/// Logs each user in once (bound, no presence) and out, so that timed logins later find their
/// salted password cached, as a client that logged in before would.
async fn warm_up(args: &Args, users: &[String]) -> Result<()> {
    for_each_user(args, users, |args, i, user| async move {
        let conn = Conn::session(&args, i, &user, "warm", false).await?;
        conn.close_now().await;
        Ok(())
    })
    .await
}

/// What a receiver saw of one sender's messages.
#[derive(Default)]
struct Seen {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    latencies_ms: Vec<f64>,
}

/// The numbers inside `<body>SEQ NANOS</body>` of each complete message in `buf`; consumes them.
fn take_messages(buf: &mut Vec<u8>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut consumed = 0;
    while let Some(end) = find(&buf[consumed..], b"</message>") {
        let message = &buf[consumed..consumed + end];
        if let (Some(a), Some(b)) = (find(message, b"<body>"), find(message, b"</body>")) {
            let body = String::from_utf8_lossy(&message[a + 6..b]);
            let mut parts = body.split(' ');
            if let (Some(Ok(seq)), Some(Ok(nanos))) =
                (parts.next().map(str::parse), parts.next().map(str::parse))
            {
                out.push((seq, nanos));
            }
        }
        consumed += end + b"</message>".len();
    }
    buf.drain(..consumed);
    out
}

fn record(seen: &mut Seen, next: &mut u64, seq: u64, sent_nanos: u64, epoch: Instant) {
    seen.received += 1;
    if seq < *next {
        seen.duplicates += 1;
    } else {
        if seq > *next {
            seen.out_of_order += 1;
        }
        *next = seq + 1;
    }
    let now = epoch.elapsed().as_nanos() as u64;
    seen.latencies_ms
        .push(now.saturating_sub(sent_nanos) as f64 / 1e6);
}

fn summary(
    args: &Args,
    kind: &str,
    seen: Vec<Seen>,
    expected: u64,
    wall: f64,
    cpu: f64,
) -> serde_json::Value {
    let received: u64 = seen.iter().map(|s| s.received).sum();
    let duplicates: u64 = seen.iter().map(|s| s.duplicates).sum();
    let out_of_order: u64 = seen.iter().map(|s| s.out_of_order).sum();
    let mut latencies: Vec<f64> = seen.into_iter().flat_map(|s| s.latencies_ms).collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let delivered = received - duplicates;
    serde_json::json!({
        "scenario": kind, "tls": args.tls,
        "expected": expected, "received": received,
        "lost": expected.saturating_sub(delivered), "duplicated": duplicates, "out_of_order": out_of_order,
        "msg_per_s": delivered as f64 / wall,
        "latency_ms_p50": percentile(&latencies, 0.5), "latency_ms_p90": percentile(&latencies, 0.9),
        "latency_ms_p99": percentile(&latencies, 0.99), "latency_ms_max": latencies.last().copied().unwrap_or(0.0),
        "server_cpu_us_per_msg": if delivered > 0 { cpu * 1e6 / delivered as f64 } else { 0.0 },
    })
}

async fn chat(
    args: &Args,
    pairs: usize,
    messages: usize,
    window: usize,
    rate: Option<u64>,
    duration: u64,
) -> Result<serde_json::Value> {
    let senders: Vec<String> = (0..pairs)
        .map(|i| format!("{}-s{i}", args.prefix))
        .collect();
    let receivers: Vec<String> = (0..pairs)
        .map(|i| format!("{}-r{i}", args.prefix))
        .collect();
    register_all(args, &[senders.clone(), receivers.clone()].concat()).await?;
    let epoch = Instant::now();
    let mut connections = Vec::new();
    for i in 0..pairs {
        let sender = Conn::session(args, 2 * i, &senders[i], "s", true).await?;
        let receiver = Conn::session(args, 2 * i + 1, &receivers[i], "r", true).await?;
        connections.push((sender, receiver));
    }
    let per_pair_rate = rate.map(|r| (r as f64 / pairs as f64).max(0.001));
    let total_per_pair = match per_pair_rate {
        Some(r) => (r * duration as f64).ceil() as usize,
        None => messages,
    };
    let (_, cpu_before) = proc_stats(args.pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut sender, mut receiver)) in connections.into_iter().enumerate() {
        let to = format!("{}@{}/r", receivers[i], args.domain);
        tasks.push(tokio::spawn(async move {
            let acked = Arc::new(AtomicU64::new(0));
            // The receiver wakes the sender when the window moves (no polling: the generator must
            // not be what limits the server).
            let progress = Arc::new(tokio::sync::Notify::new());
            let receiving = {
                let (acked, progress) = (acked.clone(), progress.clone());
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let mut next = 0;
                    while seen.received < total_per_pair as u64 {
                        for (seq, nanos) in take_messages(&mut receiver.buf) {
                            record(&mut seen, &mut next, seq, nanos, epoch);
                        }
                        acked.store(seen.received, Ordering::Release);
                        progress.notify_one();
                        if seen.received >= total_per_pair as u64 {
                            break;
                        }
                        if tokio::time::timeout(Duration::from_secs(10), receiver.fill())
                            .await
                            .is_err()
                        {
                            break; // nothing more arrives: count the rest as lost
                        }
                    }
                    acked.store(u64::MAX, Ordering::Release);
                    progress.notify_one();
                    (seen, receiver)
                })
            };
            let mut out = String::new();
            let mut seq = 0;
            while seq < total_per_pair {
                // How many to send now: one at its due time (open loop), or all the window allows
                // (closed loop), in one write.
                let batch = match per_pair_rate {
                    Some(r) => {
                        // Pairs are staggered so that the total rate is even, not one burst of
                        // every pair at each tick.
                        let offset = i as f64 / (pairs as f64 * r);
                        let due = started + Duration::from_secs_f64(seq as f64 / r + offset);
                        tokio::time::sleep_until(due.into()).await;
                        1
                    }
                    None => loop {
                        let in_flight = (seq as u64).saturating_sub(acked.load(Ordering::Acquire));
                        if in_flight < window as u64 {
                            break (window as u64 - in_flight) as usize;
                        }
                        progress.notified().await;
                    },
                };
                let nanos = epoch.elapsed().as_nanos() as u64;
                out.clear();
                for _ in 0..batch.min(total_per_pair - seq) {
                    out.push_str(&format!(
                        "<message to='{to}' type='chat'><body>{seq} {nanos}</body></message>"
                    ));
                    seq += 1;
                }
                if sender.send(&out).await.is_err() {
                    break;
                }
            }
            let (seen, receiver) = receiving
                .await
                .map_err(|e| -> Error { e.to_string().into() })?;
            Ok::<_, Error>((seen, sender, receiver))
        }));
    }
    let mut seen = Vec::new();
    let mut held = Vec::new();
    for task in tasks {
        let (s, a, b) = task.await??;
        seen.push(s);
        held.push(a);
        held.push(b);
    }
    let wall = started.elapsed().as_secs_f64();
    let (_, cpu_after) = proc_stats(args.pid);
    let mut value = summary(
        args,
        "chat",
        seen,
        (pairs * total_per_pair) as u64,
        wall,
        cpu_after - cpu_before,
    );
    value["pairs"] = pairs.into();
    value["mode"] = if rate.is_some() {
        "open".into()
    } else {
        "closed".into()
    };
    value["window"] = window.into();
    value["rate"] = rate.unwrap_or(0).into();
    for conn in held {
        conn.close().await;
    }
    Ok(value)
}

async fn offline(args: &Args, pairs: usize, messages: usize) -> Result<serde_json::Value> {
    let senders: Vec<String> = (0..pairs)
        .map(|i| format!("{}-os{i}", args.prefix))
        .collect();
    let receivers: Vec<String> = (0..pairs)
        .map(|i| format!("{}-or{i}", args.prefix))
        .collect();
    let everyone = [senders.clone(), receivers.clone()].concat();
    register_all(args, &everyone).await?;
    warm_up(args, &everyone).await?;
    let epoch = Instant::now();
    // Store: every sender sends to its offline receiver, then a ping proves the server processed all.
    let (_, cpu_before) = proc_stats(args.pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..pairs {
        let (args, sender, to) = (
            args.clone(),
            senders[i].clone(),
            format!("{}@{}", receivers[i], args.domain),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::session(&args, i, &sender, "s", true).await?;
            for seq in 0..messages {
                let nanos = epoch.elapsed().as_nanos() as u64;
                conn.send(&format!(
                    "<message to='{to}' type='chat'><body>{seq} {nanos}</body></message>"
                ))
                .await?;
            }
            conn.send(&format!(
                "<iq type='get' id='done' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                args.domain
            ))
            .await?;
            conn.until(b"id='done'").await?;
            conn.close().await;
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let store_wall = started.elapsed().as_secs_f64();
    // Drain: every receiver logs in and takes its queue.
    let drain_started = Instant::now();
    let mut tasks = Vec::new();
    for (i, receiver) in receivers.iter().enumerate() {
        let (args, receiver) = (args.clone(), receiver.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::session(&args, i, &receiver, "r", false).await?;
            conn.send("<presence/>").await?;
            let mut seen = Seen::default();
            let mut next = 0;
            while seen.received < messages as u64 {
                for (seq, nanos) in take_messages(&mut conn.buf) {
                    record(&mut seen, &mut next, seq, nanos, epoch);
                }
                if seen.received >= messages as u64
                    || tokio::time::timeout(Duration::from_secs(10), conn.fill())
                        .await
                        .is_err()
                {
                    break;
                }
            }
            conn.close().await;
            Ok::<_, Error>(seen)
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await??);
    }
    let drain_wall = drain_started.elapsed().as_secs_f64();
    let (_, cpu_after) = proc_stats(args.pid);
    let total = (pairs * messages) as u64;
    let mut value = summary(
        args,
        "offline",
        seen,
        total,
        drain_wall,
        cpu_after - cpu_before,
    );
    value["pairs"] = pairs.into();
    value["stored_msg_per_s"] = (total as f64 / store_wall).into();
    value["drain_s"] = drain_wall.into();
    Ok(value)
}

/// The read side of a room's occupant after joining, which counts the room's messages (the write
/// side is kept apart: the sender's posts them).
struct Occupant {
    reader: tokio::io::ReadHalf<Box<dyn Io>>,
    buf: Vec<u8>,
}

type StreamWriter = tokio::io::WriteHalf<Box<dyn Io>>;

impl Conn {
    /// Joins `room` as `nick` without history; the room's creator accepts the instant configuration
    /// of a room the server created locked (status 201).
    async fn join(&mut self, room: &str, nick: &str) -> Result<()> {
        self.send(&format!(
            "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
        ))
        .await?;
        // The self-presence carries status 110, after every other occupant's presence.
        let seen = self
            .until_any(&[
                b"code='110'",
                b"code=\"110\"",
                b"type='error'",
                b"type=\"error\"",
            ])
            .await?;
        if find(&seen, b"110").is_none() {
            let rest = self.until(b"</presence>").await.unwrap_or_default();
            return fail(format!(
                "joining {room} as {nick} failed: {}{}",
                String::from_utf8_lossy(&seen),
                String::from_utf8_lossy(&rest)
            ));
        }
        let rest = self.until(b"</presence>").await?;
        let created = |text: &[u8]| {
            find(text, b"code='201'").is_some() || find(text, b"code=\"201\"").is_some()
        };
        if created(&seen) || created(&rest) {
            self.send(&format!(
                "<iq type='set' id='instant' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ))
            .await?;
            let reply = self
                .until_any(&[b"id='instant'", b"id=\"instant\""])
                .await?;
            let reply = [reply, self.until(b">").await?].concat();
            if find(&reply, b"error").is_some() {
                return fail(format!(
                    "configuring {room} failed: {}",
                    String::from_utf8_lossy(&reply)
                ));
            }
        }
        Ok(())
    }

    fn into_occupant(self) -> (Occupant, StreamWriter) {
        let (reader, writer) = tokio::io::split(self.io);
        (
            Occupant {
                reader,
                buf: self.buf,
            },
            writer,
        )
    }
}

/// Reads one occupant's stream until `expected` room messages arrived (or nothing comes for 10 s),
/// publishing the count for the room's sender.
async fn count_room_messages(
    mut occupant: Occupant,
    expected: u64,
    received: Arc<AtomicU64>,
    progress: Arc<tokio::sync::Notify>,
    epoch: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut next = 0;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        for (seq, nanos) in take_messages(&mut occupant.buf) {
            record(&mut seen, &mut next, seq, nanos, epoch);
        }
        received.store(seen.received, Ordering::Release);
        progress.notify_one();
        if seen.received >= expected {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), occupant.reader.read(&mut chunk)).await
        {
            Ok(Ok(n)) if n > 0 => occupant.buf.extend_from_slice(&chunk[..n]),
            _ => break, // closed or silent: count the rest as lost
        }
    }
    // The sender must not wait for an occupant that stopped reading.
    received.store(u64::MAX, Ordering::Release);
    progress.notify_one();
    seen
}

async fn muc(
    args: &Args,
    rooms: usize,
    occupants: usize,
    messages: usize,
    window: usize,
    service: Option<String>,
) -> Result<serde_json::Value> {
    let occupants = occupants.max(1);
    let service = service.unwrap_or_else(|| format!("conference.{}", args.domain));
    let user = |room: usize, k: usize| format!("{}-m{room}-{k}", args.prefix);
    let users: Vec<String> = (0..rooms)
        .flat_map(|r| (0..occupants).map(move |k| (r, k)))
        .map(|(r, k)| user(r, k))
        .collect();
    register_all(args, &users).await?;
    let room_jid = |room: usize| format!("{}-room{room}@{service}", args.prefix);

    // Join: each room's creator first (it may have to configure the room), then the others, a few
    // at a time; every occupant starts reading as soon as it is in, so that the presence broadcast
    // of later joins never backs up.
    let epoch = Instant::now();
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut senders = Vec::new();
    let mut counters = Vec::new();
    for r in 0..rooms {
        let received: Vec<Arc<AtomicU64>> = (0..occupants)
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let progress = Arc::new(tokio::sync::Notify::new());
        let mut creator = Conn::session(args, r * occupants, &user(r, 0), "m", false).await?;
        creator.join(&room_jid(r), "n0").await?;
        let (occupant, writer) = creator.into_occupant();
        senders.push((writer, received.clone(), progress.clone()));
        readers.push(tokio::spawn(count_room_messages(
            occupant,
            messages as u64,
            received[0].clone(),
            progress.clone(),
            epoch,
        )));
        counters.push((received, progress));
    }
    let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
    let mut joins = Vec::new();
    for (r, (received, progress)) in counters.iter().enumerate() {
        for k in 1..occupants {
            let permit = semaphore.clone().acquire_owned().await?;
            let (args, user, room) = (args.clone(), user(r, k), room_jid(r));
            let (received, progress) = (received[k].clone(), progress.clone());
            joins.push(tokio::spawn(async move {
                let mut conn = Conn::session(&args, r * occupants + k, &user, "m", false).await?;
                conn.join(&room, &format!("n{k}")).await?;
                drop(permit);
                let (occupant, writer) = conn.into_occupant();
                let reading = tokio::spawn(count_room_messages(
                    occupant,
                    messages as u64,
                    received,
                    progress,
                    epoch,
                ));
                Ok::<_, Error>((reading, writer))
            }));
        }
    }
    for join in joins {
        let (reading, writer) = join.await??;
        readers.push(reading);
        writers.push(writer);
    }

    // Send: each room's sender keeps at most `window` messages that some occupant has not seen.
    let (_, cpu_before) = proc_stats(args.pid);
    let started = Instant::now();
    let mut sending = Vec::new();
    for (r, (mut writer, received, progress)) in senders.into_iter().enumerate() {
        let room = room_jid(r);
        sending.push(tokio::spawn(async move {
            let mut out = String::new();
            let mut seq = 0;
            while seq < messages {
                let batch = loop {
                    let slowest = received
                        .iter()
                        .map(|c| c.load(Ordering::Acquire))
                        .min()
                        .unwrap_or(u64::MAX);
                    let in_flight = (seq as u64).saturating_sub(slowest);
                    if in_flight < window as u64 {
                        break (window as u64 - in_flight) as usize;
                    }
                    progress.notified().await;
                };
                let nanos = epoch.elapsed().as_nanos() as u64;
                out.clear();
                for _ in 0..batch.min(messages - seq) {
                    out.push_str(&format!(
                        "<message to='{room}' type='groupchat'><body>{seq} {nanos}</body></message>"
                    ));
                    seq += 1;
                }
                writer.write_all(out.as_bytes()).await?;
            }
            Ok::<_, Error>(writer)
        }));
    }
    for task in sending {
        writers.push(task.await??);
    }
    let mut seen = Vec::new();
    for task in readers {
        seen.push(task.await?);
    }
    let wall = started.elapsed().as_secs_f64();
    let (_, cpu_after) = proc_stats(args.pid);
    let mut value = summary(
        args,
        "muc",
        seen,
        (rooms * occupants * messages) as u64,
        wall,
        cpu_after - cpu_before,
    );
    value["rooms"] = rooms.into();
    value["occupants"] = occupants.into();
    value["window"] = window.into();
    value["messages_per_room"] = messages.into();
    for mut writer in writers {
        let _ = writer.write_all(b"</stream:stream>").await;
        let _ = writer.shutdown().await;
    }
    Ok(value)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let result = match args.scenario.clone() {
        Scenario::Login { count, concurrency } => {
            let (count, concurrency) = if args.smoke {
                (5, 2)
            } else {
                (count, concurrency)
            };
            login(&args, count, concurrency).await
        }
        Scenario::Idle {
            sessions,
            per_account,
        } => {
            let sessions = if args.smoke { 20 } else { sessions };
            idle(&args, sessions, per_account).await
        }
        Scenario::Chat {
            pairs,
            messages,
            window,
            rate,
            duration,
        } => {
            if args.smoke {
                chat(&args, 3, 50, 5, rate.map(|_| 300), 1).await
            } else {
                chat(&args, pairs, messages, window, rate, duration).await
            }
        }
        Scenario::Offline { pairs, messages } => {
            let (pairs, messages) = if args.smoke {
                (3, 20)
            } else {
                (pairs, messages)
            };
            offline(&args, pairs, messages).await
        }
        Scenario::Muc {
            rooms,
            occupants,
            messages,
            window,
            service,
        } => {
            if args.smoke {
                muc(&args, 2, 4, 30, 5, service).await
            } else {
                muc(&args, rooms, occupants, messages, window, service).await
            }
        }
    };
    match result {
        Ok(value) => {
            println!("{value}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rookery-bench: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
