//! The load generator (`rookery-bench`) in its seconds-long smoke mode against the real server:
//! every scenario runs, prints its JSON line, and the chat and offline scenarios account for every
//! message (none lost, duplicated or reordered). Figures come from benchmark runs, not from here.

mod common;

use std::process::Command;

use common::*;

fn bench(server: &TestServer, scenario: &[&str], tls: bool) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rookery-bench"));
    command
        .args([
            "--server",
            &server.c2s.to_string(),
            "--register",
            "--smoke",
            "--pid",
        ])
        .arg(server.pid().to_string());
    if tls {
        command.arg("--tls");
    }
    let out = command.args(scenario).output().expect("run rookery-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"))
}

fn assert_every_message_once(report: &serde_json::Value) {
    for key in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(report[key], 0, "{key}: {report}");
    }
    assert_eq!(report["received"], report["expected"], "{report}");
    assert!(
        report["msg_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
}

#[test]
fn every_scenario_runs_and_accounts_for_every_message() {
    let server = TestServer::start_with(Options {
        registration: true,
        require_encryption: false,
        ..Default::default()
    });
    let login = bench(&server, &["login"], false);
    assert_eq!(login["logins"], 5, "{login}");
    assert!(
        login["logins_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{login}"
    );

    let tls_login = bench(&server, &["--mech", "plain", "login"], true);
    assert_eq!(tls_login["tls"], true, "{tls_login}");

    let idle = bench(&server, &["idle"], false);
    assert_eq!(idle["sessions"], 20, "{idle}");
    assert!(
        idle["server_rss_kib_after"].as_u64().unwrap_or(0) > 0,
        "{idle}"
    );

    let closed = bench(&server, &["chat"], false);
    assert_eq!(closed["mode"], "closed", "{closed}");
    assert_every_message_once(&closed);

    let open = bench(&server, &["chat", "--rate", "100"], false);
    assert_eq!(open["mode"], "open", "{open}");
    assert_every_message_once(&open);

    let offline = bench(&server, &["offline"], false);
    assert_every_message_once(&offline);
    assert!(
        offline["stored_msg_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{offline}"
    );

    let muc = bench(&server, &["muc"], false);
    assert_eq!(muc["occupants"], 4, "{muc}");
    // Every occupant's copy counts, the sender's echo included: 2 rooms × 4 occupants × 30.
    assert_eq!(muc["expected"], 240, "{muc}");
    assert_every_message_once(&muc);
}

#[test]
fn wrong_credentials_fail_clearly() {
    let server = TestServer::start_with(Options {
        require_encryption: false,
        ..Default::default()
    });
    // No --register and no such account: the bench says why and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_rookery-bench"))
        .args(["--server", &server.c2s.to_string(), "--smoke", "login"])
        .output()
        .expect("run rookery-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("authentication of bench-login failed"),
        "{stderr}"
    );
}
