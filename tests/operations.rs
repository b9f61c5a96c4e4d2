//! Running the server as an operator: user management with and without a running server,
//! configuration and certificate errors at start, busy ports, graceful shutdown, the connection
//! limit, crash durability and `rookery doap`. Every test runs the real binary and looks only at
//! what a person would see: exit status, messages, and the protocol on a socket.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_rookery");
const SHUTDOWN: &str =
    "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>";
const NOT_AUTHORIZED: &str =
    "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>";
const RESOURCE_CONSTRAINT: &str =
    "<stream:error><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>";

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A minimal fast configuration: loopback ephemeral ports, cheap password hashing.
fn config_text(data: &Path, cert: &Path, key: &Path) -> String {
    format!(
        r#"[server]
domain = "localhost"
data_dir = "{data}"
log_level = "info"
shutdown_timeout = 5
[c2s]
listen = "127.0.0.1:0"
direct_tls_listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[tls]
cert = "{cert}"
key = "{key}"
[auth]
scram_iterations = 4096
argon2_memory_kib = 64
argon2_iterations = 1
failure_delay_ms = 10
"#,
        data = data.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// Writes `text` as `rookery.toml` in `dir` and returns its path.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("rookery.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A config in `dir` with the data directory `dir/data` and the shared test certificate.
fn default_config(dir: &Path) -> PathBuf {
    let (cert, key) = shared_cert();
    write_config(dir, &config_text(&dir.join("data"), cert, key))
}

/// A `rookery serve` process started by this file (so that it can be restarted on a data dir).
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    c2s: Option<SocketAddr>,
    direct_tls: Option<SocketAddr>,
}

fn launch(config: &Path) -> Proc {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rookery");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Proc {
        child,
        lines,
        log: Vec::new(),
        c2s: None,
        direct_tls: None,
    }
}

fn listening(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn is_ready(line: &str) -> bool {
    line.contains(" ready")
}

impl Proc {
    /// Starts a server and waits for its `ready` line.
    fn serve(config: &Path) -> Proc {
        let mut proc = launch(config);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match proc.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = listening(&line, "c2s (STARTTLS) listening on ") {
                        proc.c2s = Some(a);
                    }
                    if let Some(a) = listening(&line, "c2s (direct TLS) listening on ") {
                        proc.direct_tls = Some(a);
                    }
                    let ready = is_ready(&line);
                    proc.log.push(line);
                    if ready {
                        return proc;
                    }
                }
                Err(_) => panic!("server did not start; log:\n{}", proc.log()),
            }
        }
    }

    fn c2s(&self) -> SocketAddr {
        self.c2s.expect("STARTTLS listener")
    }

    fn direct_tls(&self) -> SocketAddr {
        self.direct_tls.expect("direct TLS listener")
    }

    fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    /// Waits for the process to end by itself; returns its status and everything on stderr.
    /// Panics if it becomes ready instead (it was supposed to refuse to start).
    fn expect_exit(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = is_ready(&line);
                    self.log.push(line);
                    if ready {
                        panic!("the server started; log:\n{}", self.log());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "the server neither started nor stopped; log:\n{}",
                        self.log()
                    )
                }
            }
        }
        let status = self.wait(Duration::from_secs(10));
        (status, self.log())
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let log = self.log();
                panic!("server did not exit; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        unsafe { kill(self.child.id() as i32, 15) };
        self.wait(Duration::from_secs(20))
    }

    /// SIGTERM; the server must stop cleanly (exit status 0).
    fn stop(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "SIGTERM after the ready line: exit status {status}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `rookery serve --config PATH` expecting it to refuse to start; returns stderr.
fn start_fails(config: &Path) -> String {
    let (status, log) = launch(config).expect_exit();
    assert!(
        !status.success(),
        "exit status {status} for a bad start; log:\n{log}"
    );
    assert!(
        status.code().is_some() && !log.contains("panicked"),
        "the server crashed instead of reporting the problem ({status}):\n{log}"
    );
    log
}

/// Runs the CLI with `input` piped on standard input; returns (success, stdout, stderr).
fn cli_with_stdin(config: &Path, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rookery");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait rookery");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `user list` as a sorted list of lines.
fn list(config: &Path) -> Vec<String> {
    let (ok, out, err) = run_cli(config, &["user", "list"]);
    assert!(ok, "user list failed: {out} {err}");
    out.lines().map(str::to_string).collect()
}

fn cli_ok(config: &Path, args: &[&str]) -> String {
    let (ok, out, err) = run_cli(config, args);
    assert!(ok, "rookery {args:?} failed: stdout {out:?} stderr {err:?}");
    out
}

fn cli_err(config: &Path, args: &[&str]) -> String {
    let (ok, out, err) = run_cli(config, args);
    assert!(
        !ok,
        "rookery {args:?} succeeded: stdout {out:?} stderr {err:?}"
    );
    assert!(!err.contains("panicked"), "rookery {args:?} crashed: {err}");
    err
}

/// SCRAM-SHA-256 over STARTTLS; Ok on success, Err with the server's failure otherwise.
async fn try_login(addr: SocketAddr, user: &str, password: &str) -> Result<(), String> {
    let mut c = Raw::connect(addr).await;
    c.starttls().await;
    c.authenticate("SCRAM-SHA-256", user, password).await
}

async fn logged_in_at(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Raw {
    let mut c = Raw::connect(addr).await;
    c.starttls().await;
    c.login("SCRAM-SHA-256", user, password, Some(resource))
        .await;
    c
}

/// Sends a ping to the server and waits for the result (the session is alive).
async fn ping(c: &mut Raw, id: &str) {
    c.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let mut reply = c.expect(&format!("'{id}'")).await;
    reply.push_str(&c.expect(">").await);
    assert!(reply.contains("result"), "ping {id}: {reply}");
}

/// A TLS client that trusts exactly the certificates in `cert`.
fn connector_trusting(cert: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).expect("read cert") {
        roots.add(c.expect("PEM certificate")).expect("add root");
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

/// True once the process has exited with all its threads (so its file locks are released): the
/// main thread is a zombie (exited, not yet reaped by its parent) and no other thread is left.
fn process_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the parenthesized command name.
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    zombie && threads <= 1
}

// ---------------------------------------------------------------------------------------------
// 1. User management through the admin socket while the server runs

#[tokio::test]
async fn user_add_and_list_while_the_server_runs() {
    let server = TestServer::start();
    let out = cli_ok(
        &server.config,
        &["user", "add", "alice", "--password", "wonder1and"],
    );
    assert!(out.contains("alice@localhost"), "add said: {out}");
    cli_ok(
        &server.config,
        &["user", "add", "bob@localhost", "--password", "b0b"],
    );
    assert_eq!(list(&server.config), ["alice@localhost", "bob@localhost"]);
    // The running server knows the accounts at once.
    try_login(server.c2s, "alice", "wonder1and")
        .await
        .expect("alice logs in");
    try_login(server.c2s, "bob", "b0b")
        .await
        .expect("bob logs in");
}

#[tokio::test]
async fn user_add_refuses_existing_foreign_and_invalid_names() {
    let server = TestServer::start();
    server.add_user("alice", "first");

    let err = cli_err(
        &server.config,
        &["user", "add", "alice", "--password", "second"],
    );
    assert!(
        err.contains("alice@localhost") && err.contains("exists already"),
        "{err}"
    );
    // The existing password is untouched.
    try_login(server.c2s, "alice", "first")
        .await
        .expect("alice keeps her password");

    let err = cli_err(
        &server.config,
        &["user", "add", "alice@example.net", "--password", "x"],
    );
    assert!(
        err.contains("example.net") && err.contains("localhost") && err.contains("domain"),
        "{err}"
    );

    for bad in ["a b", "a/b", "@localhost", ""] {
        let err = cli_err(&server.config, &["user", "add", bad, "--password", "x"]);
        assert!(
            err.contains(&format!("'{bad}'")) && err.contains("not a valid"),
            "user add {bad:?}: {err}"
        );
    }

    let err = cli_err(&server.config, &["user", "add", "carol", "--password", ""]);
    assert!(err.contains("password is empty"), "{err}");

    assert_eq!(list(&server.config), ["alice@localhost"]);
}

#[tokio::test]
async fn user_passwd_while_running_changes_the_login_password() {
    let server = TestServer::start();
    server.add_user("alice", "old-secret");
    try_login(server.c2s, "alice", "old-secret")
        .await
        .expect("old password before the change");

    let out = cli_ok(
        &server.config,
        &["user", "passwd", "alice", "--password", "new-secret"],
    );
    assert!(out.contains("alice@localhost"), "passwd said: {out}");
    try_login(server.c2s, "alice", "new-secret")
        .await
        .expect("the new password works");
    let failure = try_login(server.c2s, "alice", "old-secret")
        .await
        .expect_err("the old password must fail");
    assert!(failure.contains("not-authorized"), "{failure}");

    let err = cli_err(
        &server.config,
        &["user", "passwd", "ghost", "--password", "x"],
    );
    assert!(
        err.contains("ghost@localhost") && err.contains("no account"),
        "{err}"
    );
}

#[tokio::test]
async fn user_del_while_running_ends_live_sessions_and_logins() {
    let server = TestServer::start();
    server.add_user("alice", "a-pass");
    server.add_user("bob", "b-pass");
    let mut phone = logged_in_at(server.c2s, "alice", "a-pass", "phone").await;
    let mut laptop = logged_in_at(server.c2s, "alice", "a-pass", "laptop").await;
    let mut bob = logged_in_at(server.c2s, "bob", "b-pass", "desk").await;

    let out = cli_ok(&server.config, &["user", "del", "alice"]);
    assert!(out.contains("alice@localhost"), "del said: {out}");

    for (name, c) in [("phone", &mut phone), ("laptop", &mut laptop)] {
        let got = c.expect_closed().await;
        let error = got
            .find(NOT_AUTHORIZED)
            .unwrap_or_else(|| panic!("{name}: no <not-authorized/> stream error: {got:?}"));
        assert!(
            got[error..].ends_with("</stream:stream>"),
            "{name}: stream not closed after the error: {got:?}"
        );
    }
    // Bob's session is not affected.
    ping(&mut bob, "bob1").await;

    let failure = try_login(server.c2s, "alice", "a-pass")
        .await
        .expect_err("a deleted account must not log in");
    assert!(failure.contains("not-authorized"), "{failure}");
    assert_eq!(list(&server.config), ["bob@localhost"]);

    let err = cli_err(&server.config, &["user", "del", "alice"]);
    assert!(
        err.contains("alice@localhost") && err.contains("no account"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The same commands without a running server

#[tokio::test]
async fn user_commands_without_a_server_work_on_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = default_config(dir.path());

    assert_eq!(list(&config), ["0 accounts"]);
    let out = cli_ok(&config, &["user", "add", "carol", "--password", "c1"]);
    assert!(out.contains("carol@localhost"), "add said: {out}");
    cli_ok(&config, &["user", "add", "dave", "--password", "d1"]);
    assert_eq!(list(&config), ["carol@localhost", "dave@localhost"]);

    let err = cli_err(&config, &["user", "add", "carol", "--password", "c2"]);
    assert!(err.contains("exists already"), "{err}");
    let err = cli_err(
        &config,
        &["user", "add", "x@example.net", "--password", "c2"],
    );
    assert!(
        err.contains("example.net") && err.contains("localhost"),
        "{err}"
    );
    let err = cli_err(&config, &["user", "add", "a b", "--password", "c2"]);
    assert!(
        err.contains("'a b'") && err.contains("not a valid"),
        "{err}"
    );

    cli_ok(&config, &["user", "passwd", "carol", "--password", "c2"]);
    cli_ok(&config, &["user", "del", "dave"]);
    let err = cli_err(&config, &["user", "del", "dave"]);
    assert!(err.contains("no account"), "{err}");
    assert_eq!(list(&config), ["carol@localhost"]);

    // The server then starts on that data directory and knows the accounts.
    let mut server = Proc::serve(&config);
    try_login(server.c2s(), "carol", "c2")
        .await
        .expect("carol logs in with the password set offline");
    assert!(try_login(server.c2s(), "carol", "c1").await.is_err());
    assert!(try_login(server.c2s(), "dave", "d1").await.is_err());
    assert_eq!(list(&config), ["carol@localhost"]);
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. Password on standard input

#[tokio::test]
async fn user_add_reads_one_password_line_from_standard_input() {
    let server = TestServer::start();
    let (ok, out, err) = cli_with_stdin(
        &server.config,
        &["user", "add", "erin"],
        "from-stdin\nnot the password\n",
    );
    assert!(ok, "user add with a piped password failed: {out} {err}");
    try_login(server.c2s, "erin", "from-stdin")
        .await
        .expect("the first line is the password");

    // A CRLF line end is not part of the password either; passwd reads the same way.
    let (ok, out, err) = cli_with_stdin(&server.config, &["user", "passwd", "erin"], "crlf\r\n");
    assert!(ok, "user passwd with a piped password failed: {out} {err}");
    try_login(server.c2s, "erin", "crlf")
        .await
        .expect("password read without its CRLF");

    for input in ["", "\n"] {
        let (ok, out, err) = cli_with_stdin(&server.config, &["user", "add", "frank"], input);
        assert!(!ok, "empty standard input accepted ({input:?}): {out}");
        assert!(
            err.contains("no password given on standard input"),
            "{input:?}: {err}"
        );
    }
    assert_eq!(list(&server.config), ["erin@localhost"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Data directory locked by a server whose admin socket does not answer

#[tokio::test]
async fn locked_data_directory_with_a_silent_admin_socket_is_explained() {
    let sockets = tempfile::tempdir().unwrap();
    let real_socket = sockets.path().join("real.sock");
    let server = TestServer::start_with(Options {
        extra: format!("[admin]\nsocket = \"{}\"\n", real_socket.display()),
        ..Default::default()
    });
    assert!(
        real_socket.exists(),
        "admin socket not at the configured path"
    );

    // A config for the same data directory whose admin socket is elsewhere: first nothing there,
    // then a stale socket file nobody listens on.
    let stale_socket = sockets.path().join("stale.sock");
    let (cert, key) = shared_cert();
    let cli_dir = tempfile::tempdir().unwrap();
    for socket in [sockets.path().join("missing.sock"), stale_socket.clone()] {
        if socket == stale_socket {
            drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind stale socket"));
        }
        let config = write_config(
            cli_dir.path(),
            &format!(
                "{}[admin]\nsocket = \"{}\"\n",
                config_text(&server.data_dir(), cert, key),
                socket.display()
            ),
        );
        let err = cli_err(&config, &["user", "add", "gina", "--password", "g"]);
        assert!(
            err.contains("in use") && err.contains(&server.data_dir().display().to_string()),
            "does not say the data directory is in use: {err}"
        );
        assert!(
            err.contains("admin socket")
                && err.contains(&socket.display().to_string())
                && err.contains("did not answer"),
            "does not say the admin socket did not answer: {err}"
        );
        let err = cli_err(&config, &["user", "list"]);
        assert!(
            err.contains("in use") && err.contains("did not answer"),
            "{err}"
        );
    }
    // Nothing was created behind the server's back.
    assert_eq!(list(&server.config), ["0 accounts"]);
}

// ---------------------------------------------------------------------------------------------
// 5. Configuration errors

#[test]
fn unknown_config_key_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = shared_cert();
    let text =
        config_text(&dir.path().join("data"), cert, key).replace("[c2s]\n", "[c2s]\nbogus = 1\n");
    let log = start_fails(&write_config(dir.path(), &text));
    assert!(log.contains("bogus") && log.contains("[c2s]"), "{log}");
    assert!(log.contains("rookery.toml"), "the file is not named: {log}");

    let text = format!(
        "{}[nonsense]\nx = 1\n",
        config_text(&dir.path().join("data"), cert, key)
    );
    let log = start_fails(&write_config(dir.path(), &text));
    assert!(log.contains("nonsense"), "{log}");
}

#[test]
fn bad_config_values_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = shared_cert();
    let base = config_text(&dir.path().join("data"), cert, key);
    for (from, to, key_name) in [
        (
            "\nlisten = \"127.0.0.1:0\"",
            "\nlisten = \"nowhere\"",
            "[c2s] listen",
        ),
        (
            "direct_tls_listen = \"127.0.0.1:0\"",
            "direct_tls_listen = \"127.0.0.1\"",
            "[c2s] direct_tls_listen",
        ),
        (
            "[c2s]\n",
            "[c2s]\nrequire_encryption = \"yes\"\n",
            "[c2s] require_encryption",
        ),
        (
            "scram_iterations = 4096",
            "scram_iterations = 100",
            "[auth] scram_iterations",
        ),
        (
            "shutdown_timeout = 5",
            "shutdown_timeout = 5\nmax_connections = 0",
            "[server] max_connections",
        ),
    ] {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "replacement {from:?} did not apply");
        let log = start_fails(&write_config(dir.path(), &text));
        assert!(
            log.contains(key_name),
            "{to:?}: message does not name {key_name}: {log}"
        );
    }
    // Nothing was started: no data directory was created.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn bad_domain_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = shared_cert();
    let base = config_text(&dir.path().join("data"), cert, key);
    for domain in ["user@example.org", "example.org/res", "", "exa mple.org"] {
        let text = base.replace("domain = \"localhost\"", &format!("domain = \"{domain}\""));
        let log = start_fails(&write_config(dir.path(), &text));
        assert!(
            log.contains("[server] domain") && log.contains(&format!("'{domain}'")),
            "domain {domain:?}: {log}"
        );
    }
}

#[test]
fn missing_config_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope").join("rookery.toml");
    let log = start_fails(&path);
    assert!(
        log.contains("cannot read the configuration file")
            && log.contains(&path.display().to_string()),
        "{log}"
    );
    // The user commands read the same file and fail the same way.
    let err = cli_err(&path, &["user", "list"]);
    assert!(err.contains("cannot read the configuration file"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 6. A port already taken

#[test]
fn taken_port_stops_the_start_naming_the_address_and_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = shared_cert();
    let base = config_text(&dir.path().join("data"), cert, key);

    let text = base.replacen(
        "\nlisten = \"127.0.0.1:0\"",
        &format!("\nlisten = \"{addr}\""),
        1,
    );
    let log = start_fails(&write_config(dir.path(), &text));
    assert!(
        log.contains("cannot listen on")
            && log.contains(&addr.to_string())
            && log.contains("[c2s] listen"),
        "{log}"
    );

    let text = base.replacen(
        "direct_tls_listen = \"127.0.0.1:0\"",
        &format!("direct_tls_listen = \"{addr}\""),
        1,
    );
    let log = start_fails(&write_config(dir.path(), &text));
    assert!(
        log.contains("cannot listen on") && log.contains("[c2s] direct_tls_listen"),
        "{log}"
    );
    drop(taken);
}

// ---------------------------------------------------------------------------------------------
// 7. Certificates

#[tokio::test]
async fn missing_certificate_pair_is_generated_and_served() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("certs").join("generated.crt");
    let key = dir.path().join("certs").join("generated.key");
    let config = write_config(
        dir.path(),
        &config_text(&dir.path().join("data"), &cert, &key),
    );
    let mut server = Proc::serve(&config);
    assert!(cert.exists() && key.exists(), "no pair generated");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
    let log = server.log();
    assert!(log.contains("self-signed"), "generation not logged: {log}");

    // A client trusting the generated certificate connects over direct TLS and gets a stream.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(server.direct_tls())
        .await
        .unwrap();
    let mut tls = connector_trusting(&cert)
        .connect(name.clone(), tcp)
        .await
        .expect("TLS handshake trusting the generated certificate");
    tls.write_all(STREAM_OPEN.as_bytes()).await.unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("</stream:features>") {
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("features in time")
            .unwrap();
        assert!(n > 0, "closed before features: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("<stream:stream"), "{got}");
    // It really is that certificate: a client trusting another one is refused.
    let tcp = tokio::net::TcpStream::connect(server.direct_tls())
        .await
        .unwrap();
    assert!(
        connector_trusting(&shared_cert().0)
            .connect(name, tcp)
            .await
            .is_err(),
        "a client trusting a different certificate connected"
    );

    // A restart uses the pair as it is.
    let pem = std::fs::read(&cert).unwrap();
    server.stop();
    let mut server = Proc::serve(&config);
    assert_eq!(std::fs::read(&cert).unwrap(), pem, "certificate replaced");
    assert!(!server.log().contains("self-signed"));
    server.stop();
}

#[test]
fn half_a_certificate_pair_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (shared_c, shared_k) = shared_cert();
    let cert = dir.path().join("only.crt");
    let key = dir.path().join("only.key");
    std::fs::copy(shared_c, &cert).unwrap();
    let config = write_config(
        dir.path(),
        &config_text(&dir.path().join("data"), &cert, &key),
    );
    let log = start_fails(&config);
    assert!(
        log.contains("[tls] key") && log.contains(&key.display().to_string()),
        "{log}"
    );
    assert!(
        !key.exists(),
        "a key was generated for an existing certificate"
    );

    // Only the key: the message must say that the certificate is what is missing.
    std::fs::remove_file(&cert).unwrap();
    std::fs::copy(shared_k, &key).unwrap();
    let log = start_fails(&config);
    assert!(
        log.contains("[tls] cert") && log.contains(&cert.display().to_string()),
        "{log}"
    );
    assert!(
        !log.contains(&format!("{} exists", cert.display())),
        "the message claims the missing certificate exists: {log}"
    );
    assert!(
        !cert.exists(),
        "a certificate was generated for an existing key"
    );
}

#[test]
fn unreadable_certificate_or_key_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (shared_c, shared_k) = shared_cert();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let a_directory = dir.path().join("certdir");
    std::fs::create_dir(&a_directory).unwrap();
    let data = dir.path().join("data");

    for bad in [&garbage, &a_directory] {
        let config = write_config(dir.path(), &config_text(&data, bad, shared_k));
        let log = start_fails(&config);
        assert!(
            log.contains("[tls] cert") && log.contains(&bad.display().to_string()),
            "cert {}: {log}",
            bad.display()
        );
        let config = write_config(dir.path(), &config_text(&data, shared_c, bad));
        let log = start_fails(&config);
        assert!(
            log.contains("[tls] key") && log.contains(&bad.display().to_string()),
            "key {}: {log}",
            bad.display()
        );
    }
    // A valid key that does not belong to the certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
    let config = write_config(dir.path(), &config_text(&data, shared_c, &other_key));
    let log = start_fails(&config);
    assert!(
        log.contains("[tls] key") && log.contains(&other_key.display().to_string()),
        "a key that does not match the certificate is not named ([tls] key and its path): {log}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Graceful shutdown and restart

#[tokio::test]
async fn sigterm_sends_system_shutdown_and_a_restart_keeps_the_accounts() {
    let mut server = TestServer::start();
    server.add_user("alice", "a-pass");
    server.add_user("bob", "b-pass");
    let mut session = logged_in_at(server.c2s, "alice", "a-pass", "home").await;
    // Only the stream header sent.
    let mut header_only = Raw::connect(server.c2s).await;
    header_only.open().await;
    // Over TLS but not authenticated.
    let mut tls_only = Raw::connect(server.c2s).await;
    tls_only.starttls().await;
    let admin_socket = server.data_dir().join("admin.sock");
    assert!(admin_socket.exists());

    let status = server.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );

    // Every stream and the restart are checked before this is asserted, so that one wrong stream
    // hides nothing else.
    let mut wrong = Vec::new();
    for (name, c) in [
        ("logged-in session", &mut session),
        ("stream header only", &mut header_only),
        ("TLS, not authenticated", &mut tls_only),
    ] {
        let got = c.expect_closed().await;
        let ok = got
            .find(SHUTDOWN)
            .is_some_and(|error| got[error..].ends_with("</stream:stream>"));
        if !ok {
            wrong.push(format!(
                "{name}: expected {SHUTDOWN:?} then </stream:stream>, got {got:?}"
            ));
        }
    }
    assert!(
        !admin_socket.exists(),
        "the admin socket file is left behind after a clean stop"
    );

    // The same configuration starts again on the same data directory.
    let mut again = Proc::serve(&server.config);
    assert_eq!(list(&server.config), ["alice@localhost", "bob@localhost"]);
    try_login(again.c2s(), "alice", "a-pass")
        .await
        .expect("alice after the restart");
    try_login(again.c2s(), "bob", "b-pass")
        .await
        .expect("bob after the restart");
    again.stop();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A supervisor may stop the server as soon as it said `ready`: that must be a clean stop too.
#[test]
fn sigterm_right_after_ready_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = default_config(dir.path());
    for _ in 0..5 {
        let mut server = Proc::serve(&config);
        server.stop();
        let log = server.log();
        assert!(log.contains("stopped"), "no clean stop logged:\n{log}");
        assert!(
            !dir.path().join("data").join("admin.sock").exists(),
            "admin socket left behind:\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Connection limit

#[tokio::test]
async fn connections_over_the_limit_get_resource_constraint() {
    let server = TestServer::start_with(Options {
        max_connections: 2,
        ..Default::default()
    });
    let mut first = Raw::connect(server.c2s).await;
    first.open().await;
    let mut second = Raw::connect(server.c2s).await;
    second.open().await;

    let mut third = Raw::connect(server.c2s).await;
    let got = third.expect_closed().await;
    let header = got
        .find("<stream:stream")
        .unwrap_or_else(|| panic!("no stream header before the error: {got:?}"));
    let error = got
        .find(RESOURCE_CONSTRAINT)
        .unwrap_or_else(|| panic!("no <resource-constraint/>: {got:?}"));
    assert!(
        header < error && got.ends_with("</stream:stream>"),
        "{got:?}"
    );

    // The direct TLS port is counted too: it is closed without a TLS session.
    let mut tcp = tokio::net::TcpStream::connect(server.direct_tls)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("direct TLS connection over the limit not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "direct TLS over the limit sent {:?}", &buf[..n]);

    // The held connections still work.
    second
        .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    second.expect("<proceed").await;

    // Closing one frees a place.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Raw::connect(server.c2s).await;
        c.send(STREAM_OPEN).await;
        match c.try_expect("</stream:features>", WAIT).await {
            Ok(_) => break,
            Err(got) => assert!(
                got.contains("resource-constraint") && Instant::now() < deadline,
                "no place after closing a connection: {got:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 10. DOAP

#[test]
fn doap_prints_the_committed_description() {
    let out = Command::new(BIN).arg("doap").output().expect("run rookery");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/xeps/doap.xml")).unwrap();
    assert_eq!(
        printed, committed,
        "`rookery doap` differs from xeps/doap.xml (regenerate it)"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Durability across a crash

#[tokio::test]
async fn what_the_admin_socket_confirmed_survives_sigkill() {
    let server = TestServer::start();
    server.add_user("alice", "before");
    server.add_user("bob", "b-pass");
    server.add_user("carol", "c-pass");
    cli_ok(
        &server.config,
        &["user", "passwd", "alice", "--password", "after"],
    );
    cli_ok(&server.config, &["user", "del", "carol"]);

    let pid = server.pid();
    assert_eq!(unsafe { kill(pid as i32, 9) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "server survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut again = Proc::serve(&server.config);
    assert_eq!(list(&server.config), ["alice@localhost", "bob@localhost"]);
    try_login(again.c2s(), "alice", "after")
        .await
        .expect("the changed password survived");
    assert!(try_login(again.c2s(), "alice", "before").await.is_err());
    try_login(again.c2s(), "bob", "b-pass")
        .await
        .expect("bob survived");
    assert!(try_login(again.c2s(), "carol", "c-pass").await.is_err());
    again.stop();
}
