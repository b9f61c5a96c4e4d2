//! End to end in a real browser: Converse.js (from npm) in Debian's headless Chromium, driven by
//! playwright-core (`tests/browser/run.mjs`), logs in to the real server over XMPP WebSocket,
//! sends a message through its chat box to a TCP client, and shows the TCP client's reply.
//! `.ci/run` installs Chromium and the npm packages; without them the test says so and passes.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::muc::PASSWORD;
use common::stanzas::*;

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test]
async fn converse_in_chromium_chats_with_a_tcp_client_over_websocket() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_string());
    if !Path::new(&chromium).exists() || !dir.join("node_modules/converse.js").exists() {
        let missing = format!(
            "the browser test needs Chromium at {chromium} (apt-get install chromium) and \
             `npm ci` in tests/browser (both done by .ci/run)"
        );
        // Under CI (.ci/run installs both) a missing browser is a failure, not a skip.
        assert!(std::env::var_os("CI").is_none(), "{missing}");
        eprintln!("SKIPPED: {missing}");
        return;
    }
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut bob = Client::bound_with(&server, "bob", PASSWORD, "desktop").await;
    bob.online_with("", None).await;
    let ws = format!(
        "wss://localhost:{}/xmpp-websocket",
        server.http.expect("HTTPS listener").port()
    );
    let browser = tokio::process::Command::new("node")
        .arg(dir.join("run.mjs"))
        .args([
            ws.as_str(),
            "alice@localhost",
            PASSWORD,
            "bob@localhost",
            "hello from Converse",
            "hello back from TCP",
        ])
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");

    // The message typed in the browser reaches the TCP client...
    bob.wait_limit = Duration::from_secs(60);
    let got = bob.wait_body("hello from Converse").await;
    let from = got.attr("from").expect("a sender").to_string();
    assert!(from.starts_with("alice@localhost/"), "{from}");
    // ...and the answer shows in the page.
    bob.send(&format!(
        "<message to='{from}' type='chat' id='reply'><body>hello back from TCP</body></message>"
    ))
    .await;
    let output = tokio::time::timeout(Duration::from_secs(90), browser.wait_with_output())
        .await
        .expect("the browser run ends in time")
        .expect("the browser run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("REPLY SHOWN"),
        "browser run failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        output.status,
        server.log()
    );
}
