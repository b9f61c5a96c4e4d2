//! Interoperability with a stock client library: slixmpp (Python) logs in over STARTTLS and direct
//! TLS with each mechanism it supports, pings the server, reads its disco info and version, and sends
//! itself a message.
//!
//! Needs `python3` with `slixmpp` (`.ci/run` installs it). Where it is missing the test fails under
//! CI (`CI=true`) and is skipped with a message elsewhere.

mod common;

use std::process::Command;

use common::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/slixmpp_client.py"
);

fn slixmpp_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import slixmpp"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        let message =
            "slixmpp is not installed: `pip install slixmpp==1.17.0` to run the interop tests";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("SKIPPED: {message}");
    }
    found
}

/// Runs the slixmpp client; returns its JSON report and the exit status.
fn slixmpp(
    server: &TestServer,
    port: u16,
    mode: &str,
    mechanism: &str,
    password: &str,
) -> (bool, serde_json::Value) {
    let (cert, _) = shared_cert();
    let out = Command::new("python3")
        .arg(SCRIPT)
        .args(["127.0.0.1", &port.to_string(), "alice@localhost", password])
        .arg(cert)
        .args([mode, mechanism])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from slixmpp ({mode}, {mechanism}): stdout {stdout} stderr {}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                server.log()
            )
        });
    (out.status.success(), report)
}

#[test]
fn slixmpp_logs_in_and_uses_the_server() {
    if !slixmpp_available() {
        return;
    }
    let server = TestServer::start();
    server.add_user("alice", "wonderland");
    let cases = [
        (server.c2s.port(), "starttls", "auto"),
        (server.c2s.port(), "starttls", "SCRAM-SHA-1"),
        (server.c2s.port(), "starttls", "PLAIN"),
        (server.direct_tls.port(), "direct", "SCRAM-SHA-256"),
    ];
    for (port, mode, mechanism) in cases {
        let (ok, report) = slixmpp(&server, port, mode, mechanism, "wonderland");
        assert!(ok, "slixmpp {mode} {mechanism} failed: {report}");
        let expected = if mechanism == "auto" {
            "SCRAM-SHA-256"
        } else {
            mechanism
        };
        assert_eq!(report["mechanism"], expected, "{report}");
        assert!(
            report["bound_jid"]
                .as_str()
                .is_some_and(|j| j.starts_with("alice@localhost/")),
            "{report}"
        );
        assert!(report["ping_rtt"].as_f64().is_some(), "{report}");
        let features: Vec<&str> = report["features"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        for feature in [
            "urn:xmpp:ping",
            "jabber:iq:version",
            "http://jabber.org/protocol/disco#info",
        ] {
            assert!(features.contains(&feature), "{feature} missing: {report}");
        }
        assert_eq!(report["identities"][0][0], "server", "{report}");
        assert_eq!(report["version"], "Rookery", "{report}");
        assert_eq!(report["message_to_self"], true, "{report}");
    }
}

#[test]
fn slixmpp_wrong_password_is_refused() {
    if !slixmpp_available() {
        return;
    }
    let server = TestServer::start();
    server.add_user("alice", "wonderland");
    let (ok, report) = slixmpp(
        &server,
        server.c2s.port(),
        "starttls",
        "SCRAM-SHA-256",
        "looking-glass",
    );
    assert!(!ok, "{report}");
    assert_eq!(report["session"], false, "{report}");
    assert!(
        server.log().contains("authentication failed"),
        "{}",
        server.log()
    );
}
