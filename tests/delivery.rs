//! Message delivery between local accounts, over real sockets against the real server:
//! the RFC 6121 §8.5 routing rules (docs/rfc6121-checklist.md §4), XEP-0160 offline storage with
//! XEP-0203 delay stamps and XEP-0334 hints (checklist §6), receipts and chat markers end to end
//! (XEP-0184, XEP-0333), XEP-0359 stanza-ids, durability of the offline queue across a crash, and
//! the presence-sharing check for iqs to full JIDs.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::stanzas::Client;
use common::*;
use minidom::Element;

const CLIENT_NS: &str = "jabber:client";
const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const DELAY_NS: &str = "urn:xmpp:delay";
const SID_NS: &str = "urn:xmpp:sid:0";
const RECEIPTS_NS: &str = "urn:xmpp:receipts";
const MARKERS_NS: &str = "urn:xmpp:chat-markers:0";
const HINTS_NS: &str = "urn:xmpp:hints";
const CHATSTATES_NS: &str = "http://jabber.org/protocol/chatstates";
const PING: &str = "<ping xmlns='urn:xmpp:ping'/>";

/// How long to listen when checking that nothing (more) arrives.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------------------------
// Helpers

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn password(user: &str) -> String {
    format!("{user}-pw")
}

fn accounts(server: &TestServer, users: &[&str]) {
    for user in users {
        server.add_user(user, &password(user));
    }
}

/// Uses the stanza client of tests/common/stanzas.rs (it waits up to 5 s for an expected stanza).
/// Stanzas read while looking for another one are kept, in order, for later `wait`/`drain` calls.
impl Client {
    /// Logs in over STARTTLS with the given resource, and waits until the session is registered.
    async fn online(server: &TestServer, user: &str, resource: &str) -> Client {
        let (raw, jid) = logged_in(server, user, &password(user), resource).await;
        Self::ready(raw, jid).await
    }

    /// Like `online`, for a server started outside `TestServer`.
    async fn online_at(addr: SocketAddr, user: &str, resource: &str) -> Client {
        let mut raw = Raw::connect(addr).await;
        raw.starttls().await;
        let jid = raw
            .login("SCRAM-SHA-256", user, &password(user), Some(resource))
            .await;
        Self::ready(raw, jid).await
    }

    async fn ready(raw: Raw, jid: String) -> Client {
        let mut c = Client::from_raw(raw, &jid);
        c.sync().await;
        c
    }

    /// Reads until at least one more complete stanza is queued; false if none completes in `wait`.
    async fn fill(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let before = self.received;
        while self.received == before && self.read_some(deadline).await {}
        self.received > before
    }

    /// The message with this id.
    async fn message(&mut self, id: &str) -> Element {
        let what = format!("message {id}");
        self.wait(&what, |e| e.name() == "message" && e.attr("id") == Some(id))
            .await
    }

    /// Everything received until the connection stays quiet for `wait`, oldest first.
    async fn drain(&mut self, wait: Duration) -> Vec<Element> {
        while self.fill(wait).await {}
        self.queue.drain(..).map(|g| g.el).collect()
    }

    /// The messages among everything received until the connection stays quiet for `wait`.
    async fn messages(&mut self, wait: Duration) -> Vec<Element> {
        self.drain(wait)
            .await
            .into_iter()
            .filter(|e| e.name() == "message")
            .collect()
    }

    /// Asserts that no message arrives (anything else received is discarded).
    async fn assert_no_message(&mut self, why: &str) {
        let got = self.messages(QUIET).await;
        assert!(
            got.is_empty(),
            "{}: {why}; got {:?}",
            self.jid,
            got.iter().map(xml).collect::<Vec<_>>()
        );
    }

    /// Sends an iq and returns the answer with the same id.
    async fn raw_iq(&mut self, request: &str, id: &str) -> Element {
        self.send(request).await;
        let what = format!("iq answer {id}");
        self.wait(&what, |e| e.name() == "iq" && e.attr("id") == Some(id))
            .await
    }

    /// A ping round trip: the server handles a stream in order, so everything sent before it has
    /// been processed (and whatever it queued for this client has arrived) when the result arrives.
    async fn sync(&mut self) {
        self.ids += 1;
        let id = format!("sync{}", self.ids);
        let reply = self
            .raw_iq(&format!("<iq type='get' id='{id}'>{PING}</iq>"), &id)
            .await;
        assert_eq!(reply.attr("type"), Some("result"), "{}", xml(&reply));
    }

    /// Sends available presence (with a priority if given) and waits until it is processed.
    async fn presence(&mut self, priority: Option<i8>) {
        match priority {
            Some(p) => {
                self.send(&format!("<presence><priority>{p}</priority></presence>"))
                    .await
            }
            None => self.send("<presence/>").await,
        }
        self.sync().await;
    }

    /// Ends the stream and waits until the server has closed it.
    async fn close(mut self) {
        self.send("</stream:stream>").await;
        self.raw.expect_closed().await;
    }
}

fn xml(el: &Element) -> String {
    String::from(el)
}

fn body(el: &Element) -> Option<String> {
    el.get_child("body", CLIENT_NS).map(|b| b.text())
}

fn bodies(messages: &[Element]) -> Vec<String> {
    messages
        .iter()
        .map(|m| body(m).unwrap_or_default())
        .collect()
}

fn ids(messages: &[Element]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.attr("id").unwrap_or_default().to_string())
        .collect()
}

/// (by, id) of each `<stanza-id/>`.
fn stanza_ids(el: &Element) -> Vec<(String, String)> {
    el.children()
        .filter(|c| c.is("stanza-id", SID_NS))
        .map(|c| {
            (
                c.attr("by").unwrap_or_default().to_string(),
                c.attr("id").unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The id of the one stanza-id by `by`, asserting there is exactly one.
fn stanza_id_by(el: &Element, by: &str) -> String {
    let found: Vec<String> = stanza_ids(el)
        .into_iter()
        .filter(|(b, _)| b == by)
        .map(|(_, id)| id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "XEP-0359: exactly one stanza-id by {by}: {}",
        xml(el)
    );
    assert!(!found[0].is_empty(), "stanza-id without id: {}", xml(el));
    found[0].clone()
}

/// (from, stamp) of each `<delay/>`.
fn delays(el: &Element) -> Vec<(String, String)> {
    el.children()
        .filter(|c| c.is("delay", DELAY_NS))
        .map(|c| {
            (
                c.attr("from").unwrap_or_default().to_string(),
                c.attr("stamp").unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Asserts one server delay stamp (`from='localhost'`) in XEP-0082 UTC, taken in this test run.
fn assert_offline_delay(el: &Element) -> chrono::DateTime<chrono::Utc> {
    let ours: Vec<String> = delays(el)
        .into_iter()
        .filter(|(from, _)| from == DOMAIN)
        .map(|(_, stamp)| stamp)
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "XEP-0160 §2: one <delay from='localhost'/>: {}",
        xml(el)
    );
    let stamp = &ours[0];
    let parsed = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.fZ")
        .unwrap_or_else(|e| panic!("XEP-0082 UTC DateTime expected, got {stamp:?}: {e}"))
        .and_utc();
    let age = chrono::Utc::now() - parsed;
    assert!(
        age >= chrono::Duration::seconds(-5) && age <= chrono::Duration::seconds(120),
        "the stamp is the time of receipt: {stamp}"
    );
    parsed
}

/// The condition of a stanza error (`None` if the stanza is not an error).
fn condition(el: &Element) -> Option<String> {
    if el.attr("type") != Some("error") {
        return None;
    }
    el.get_child("error", CLIENT_NS)?
        .children()
        .find(|c| c.ns() == STANZAS_NS && c.name() != "text")
        .map(|c| c.name().to_string())
}

fn assert_error(el: &Element, expected: &str) {
    assert_eq!(
        condition(el).as_deref(),
        Some(expected),
        "expected <{expected}/>: {}",
        xml(el)
    );
}

/// The answer to a bounced stanza: an error from the original `to` to the sender, same id.
fn assert_bounce(el: &Element, to: &str, sender: &str, expected: &str) {
    assert_error(el, expected);
    assert_eq!(el.attr("from"), Some(to), "{}", xml(el));
    assert_eq!(el.attr("to"), Some(sender), "{}", xml(el));
}

fn chat(to: &str, id: &str, text: &str) -> String {
    format!("<message to='{to}' id='{id}' type='chat'><body>{text}</body></message>")
}

fn typed(to: &str, id: &str, kind: &str, text: &str) -> String {
    format!("<message to='{to}' id='{id}' type='{kind}'><body>{text}</body></message>")
}

fn error_message(to: &str, id: &str) -> String {
    format!(
        "<message to='{to}' id='{id}' type='error'><body>bounced</body><error type='cancel'><item-not-found xmlns='{STANZAS_NS}'/></error></message>"
    )
}

/// A server process started outside `TestServer` on an existing configuration.
struct Restarted {
    child: Child,
    c2s: SocketAddr,
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rookery serve` on `config` and waits until it listens and is ready.
fn spawn_server(config: &Path) -> Restarted {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rookery");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps reading after the start so that the server never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut server = Restarted {
        child,
        c2s: "0.0.0.0:0".parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = Vec::new();
    let mut c2s = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the restarted server did not start:\n{}", log.join("\n")));
        let prefix = "c2s (STARTTLS) listening on ";
        if let Some(pos) = line.find(prefix) {
            let addr = line[pos + prefix.len()..].split_whitespace().next();
            c2s = addr.and_then(|a| a.parse().ok());
        }
        let ready = c2s.is_some() && line.contains("ready");
        log.push(line);
        if ready {
            break;
        }
    }
    server.c2s = c2s.unwrap();
    server
}

/// SIGKILL, then waits until the process is gone or only its zombie main thread is left.
fn kill_hard(pid: u32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc_kill(pid as i32, 9);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dir = format!("/proc/{pid}");
        if !Path::new(&dir).exists() {
            return;
        }
        let zombie = std::fs::read_to_string(format!("{dir}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        let tasks = std::fs::read_dir(format!("{dir}/task"))
            .map(|d| d.count())
            .unwrap_or(0);
        if zombie && tasks <= 1 {
            return;
        }
        assert!(Instant::now() < deadline, "the server survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. RFC 6121 §8.5 routing (checklist §4)

#[tokio::test]
async fn bare_jid_message_reaches_the_one_available_resource_and_keeps_the_bare_to() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    // Connected, but never sent presence: not an available resource (RFC 6121 §4.1).
    let mut idle = Client::online(&server, "bob", "idle").await;
    bob.presence(None).await;

    alice.send(&chat("bob@localhost", "c1", "chat")).await;
    alice
        .send(&typed("bob@localhost", "n1", "normal", "normal"))
        .await;
    alice
        .send("<message to='bob@localhost' id='t1'><body>no type</body></message>")
        .await;
    alice.sync().await;
    let got = bob.messages(QUIET).await;
    assert_eq!(ids(&got), ["c1", "n1", "t1"], "in order, each once");
    for m in &got {
        assert_eq!(m.attr("from"), Some(alice.jid.as_str()), "{}", xml(m));
        assert_eq!(
            m.attr("to"),
            Some("bob@localhost"),
            "§8.5.2.1.1: MN rewrite 'to' to the full JID: {}",
            xml(m)
        );
        stanza_id_by(m, "bob@localhost");
    }
    assert_eq!(bodies(&got), ["chat", "normal", "no type"]);
    idle.assert_no_message("a session that sent no presence gets no bare-JID message")
        .await;
    alice
        .assert_no_message("delivered: nothing comes back")
        .await;
}

#[tokio::test]
async fn bare_jid_message_goes_to_the_resources_with_the_highest_priority() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut low = Client::online(&server, "bob", "low").await;
    let mut high = Client::online(&server, "bob", "high").await;
    let mut negative = Client::online(&server, "bob", "negative").await;
    low.presence(Some(1)).await;
    high.presence(Some(5)).await;
    negative.presence(Some(-1)).await;

    alice.send(&chat("bob@localhost", "p1", "to the top")).await;
    alice
        .send(&typed("bob@localhost", "p2", "normal", "also"))
        .await;
    alice.sync().await;
    assert_eq!(ids(&high.messages(QUIET).await), ["p1", "p2"]);
    low.assert_no_message("priority 1 < 5").await;
    negative
        .assert_no_message("§8.5.2.1.1: MN deliver bare-JID messages to a negative resource")
        .await;

    // Equal top priorities: both get it (the checklist's "most available resource(s)").
    high.presence(Some(1)).await;
    alice.send(&chat("bob@localhost", "p3", "to both")).await;
    alice.sync().await;
    for c in [&mut low, &mut high] {
        let got = c.messages(QUIET).await;
        assert_eq!(ids(&got), ["p3"], "{}", c.jid);
        assert_eq!(got[0].attr("to"), Some("bob@localhost"));
    }
    negative
        .assert_no_message("still no bare-JID message for priority -1")
        .await;
    // The negative resource is still reachable at its full JID (§8.5.3.1).
    let neg_jid = negative.jid.clone();
    alice.send(&chat(&neg_jid, "p4", "direct")).await;
    let got = negative.message("p4").await;
    assert_eq!(got.attr("to"), Some(neg_jid.as_str()));
    alice.assert_no_message("no errors").await;
}

#[tokio::test]
async fn full_jid_message_reaches_that_session_whatever_its_priority_or_availability() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut negative = Client::online(&server, "bob", "negative").await;
    let mut quiet = Client::online(&server, "bob", "quiet").await;
    negative.presence(Some(-10)).await;
    // Table 1, "full match": D for every type, error included.
    for c in [&mut negative, &mut quiet] {
        let to = c.jid.clone();
        for kind in ["normal", "chat", "groupchat", "headline"] {
            alice
                .send(&typed(&to, &format!("{kind}-1"), kind, kind))
                .await;
        }
        alice.send(&error_message(&to, "error-1")).await;
        alice.sync().await;
        let got = c.messages(QUIET).await;
        assert_eq!(
            ids(&got),
            ["normal-1", "chat-1", "groupchat-1", "headline-1", "error-1"],
            "{to}"
        );
        for m in &got {
            assert_eq!(m.attr("to"), Some(to.as_str()), "{}", xml(m));
            assert_eq!(m.attr("from"), Some(alice.jid.as_str()), "{}", xml(m));
        }
    }
    alice.assert_no_message("all delivered, no errors").await;
}

#[tokio::test]
async fn full_jid_of_a_gone_resource_chat_and_normal_go_to_the_account() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut desk = Client::online(&server, "bob", "desk").await;
    let mut negative = Client::online(&server, "bob", "negative").await;
    desk.presence(Some(0)).await;
    negative.presence(Some(-1)).await;
    let gone = "bob@localhost/gone";

    // §8.5.3.2.1: chat is handled like a bare-JID message (normal too, by the brief's rule).
    alice.send(&chat(gone, "g1", "chat")).await;
    alice.send(&typed(gone, "g2", "normal", "normal")).await;
    // groupchat: S/E (E here); headline: S/E (S here); error: S.
    alice
        .send(&typed(gone, "g3", "groupchat", "groupchat"))
        .await;
    alice.send(&typed(gone, "g4", "headline", "headline")).await;
    alice.send(&error_message(gone, "g5")).await;
    alice.sync().await;
    let got = desk.messages(QUIET).await;
    assert_eq!(ids(&got), ["g1", "g2"]);
    for m in &got {
        stanza_id_by(m, "bob@localhost");
    }
    negative
        .assert_no_message("the negative resource gets nothing through an unmatched full JID")
        .await;
    let replies = alice.messages(QUIET).await;
    assert_eq!(ids(&replies), ["g3"], "only the groupchat is bounced");
    assert_bounce(&replies[0], gone, &alice.jid, "service-unavailable");

    // With no available non-negative resource, a chat to an unmatched full JID is stored (O).
    desk.close().await;
    alice.send(&chat(gone, "g6", "for later")).await;
    alice.sync().await;
    alice.assert_no_message("stored, no error").await;
    negative
        .assert_no_message("not for a negative resource")
        .await;
    let mut desk = Client::online(&server, "bob", "desk").await;
    desk.presence(None).await;
    let got = desk.messages(QUIET).await;
    assert_eq!(ids(&got), ["g6"]);
    assert_offline_delay(&got[0]);
}

#[tokio::test]
async fn groupchat_to_a_bare_jid_is_service_unavailable() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;

    // No session at all: E, and not stored.
    alice
        .send(&typed("bob@localhost", "gc1", "groupchat", "offline"))
        .await;
    let reply = alice.message("gc1").await;
    assert_bounce(&reply, "bob@localhost", &alice.jid, "service-unavailable");

    // One available resource: still E, and it gets nothing.
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    bob.assert_no_message("the offline groupchat was not stored")
        .await;
    alice
        .send(&typed("bob@localhost", "gc2", "groupchat", "online"))
        .await;
    let reply = alice.message("gc2").await;
    assert_bounce(&reply, "bob@localhost", &alice.jid, "service-unavailable");
    bob.assert_no_message("§8.5.2.1.1: MN deliver groupchat to a bare JID")
        .await;
}

#[tokio::test]
async fn headline_to_a_bare_jid_reaches_every_non_negative_resource() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut a = Client::online(&server, "bob", "a").await;
    let mut b = Client::online(&server, "bob", "b").await;
    let mut negative = Client::online(&server, "bob", "negative").await;
    let mut quiet = Client::online(&server, "bob", "quiet").await;
    a.presence(Some(0)).await;
    b.presence(Some(10)).await;
    negative.presence(Some(-5)).await;

    alice
        .send(&typed("bob@localhost", "h1", "headline", "news"))
        .await;
    alice.sync().await;
    for c in [&mut a, &mut b] {
        let got = c.messages(QUIET).await;
        assert_eq!(ids(&got), ["h1"], "{}: A = all non-negative", c.jid);
        assert_eq!(got[0].attr("to"), Some("bob@localhost"));
        assert_eq!(body(&got[0]).as_deref(), Some("news"));
    }
    negative.assert_no_message("negative priority").await;
    quiet.assert_no_message("not available").await;
    alice.assert_no_message("no error").await;
}

#[tokio::test]
async fn headline_to_a_bare_jid_without_non_negative_resources_is_dropped() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    // No session at all.
    alice
        .send(&typed("bob@localhost", "h1", "headline", "nobody home"))
        .await;
    alice.sync().await;
    // Only a negative and an unavailable session.
    let mut negative = Client::online(&server, "bob", "negative").await;
    let mut quiet = Client::online(&server, "bob", "quiet").await;
    negative.presence(Some(-1)).await;
    alice
        .send(&typed("bob@localhost", "h2", "headline", "still nobody"))
        .await;
    alice.sync().await;
    alice
        .assert_no_message("Table 1: S, silently ignored")
        .await;
    negative.assert_no_message("negative priority").await;
    quiet.assert_no_message("not available").await;
    // And never stored (XEP-0160 §3).
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    bob.assert_no_message("headlines are not stored offline")
        .await;
}

#[tokio::test]
async fn error_message_to_a_bare_jid_is_silently_ignored() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    alice.send(&error_message("bob@localhost", "e1")).await;
    alice.sync().await;
    bob.assert_no_message(
        "RFC 6121 §8.5.2.1.1 / checklist §4: type='error' to a bare JID is silently ignored",
    )
    .await;
    alice.assert_no_message("an error is never answered").await;
}

#[tokio::test]
async fn error_messages_are_never_answered_or_stored() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    // Offline bare JID, unmatched full JID, unknown account (bare and full).
    for (id, to) in [
        ("e1", "bob@localhost"),
        ("e2", "bob@localhost/gone"),
        ("e3", "nobody@localhost"),
        ("e4", "nobody@localhost/x"),
    ] {
        alice.send(&error_message(to, id)).await;
    }
    alice.sync().await;
    alice
        .assert_no_message("RFC 6120 §8.3.1: never answer an error")
        .await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    bob.assert_no_message("XEP-0160 §3: errors are not stored")
        .await;
}

#[tokio::test]
async fn messages_to_a_user_that_does_not_exist_are_service_unavailable() {
    let server = TestServer::start();
    accounts(&server, &["alice"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    for (id, to, kind) in [
        ("x1", "nobody@localhost", "chat"),
        ("x2", "nobody@localhost", "normal"),
        ("x3", "nobody@localhost", "groupchat"),
        ("x4", "nobody@localhost/res", "chat"),
        ("x5", "nobody@localhost/res", "normal"),
    ] {
        alice.send(&typed(to, id, kind, "anyone?")).await;
        let reply = alice.message(id).await;
        assert_bounce(&reply, to, &alice.jid, "service-unavailable");
        assert_eq!(
            reply.get_child("error", CLIENT_NS).unwrap().attr("type"),
            Some("cancel"),
            "{}",
            xml(&reply)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. XEP-0160 offline storage (checklist §6)

#[tokio::test]
async fn offline_messages_are_delivered_once_in_order_with_delay_and_stanza_id() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    for i in 1..=5 {
        alice
            .send(&chat(
                "bob@localhost",
                &format!("o{i}"),
                &format!("message {i}"),
            ))
            .await;
    }
    alice.sync().await;
    alice
        .assert_no_message("stored: no error for the sender")
        .await;

    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.assert_no_message("nothing before initial presence (XEP-0160 §2)")
        .await;
    bob.presence(None).await;
    let got = bob.messages(QUIET).await;
    assert_eq!(
        ids(&got),
        ["o1", "o2", "o3", "o4", "o5"],
        "exactly the five, in order"
    );
    assert_eq!(
        bodies(&got),
        [
            "message 1",
            "message 2",
            "message 3",
            "message 4",
            "message 5"
        ]
    );
    let mut sids = Vec::new();
    let mut last = None;
    for m in &got {
        assert_eq!(m.attr("from"), Some(alice.jid.as_str()), "{}", xml(m));
        assert_eq!(m.attr("to"), Some("bob@localhost"), "{}", xml(m));
        assert_eq!(m.attr("type"), Some("chat"), "{}", xml(m));
        let stamp = assert_offline_delay(m);
        if let Some(previous) = last {
            assert!(stamp >= previous, "stamps follow the order of receipt");
        }
        last = Some(stamp);
        sids.push(stanza_id_by(m, "bob@localhost"));
    }
    let mut distinct = sids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "distinct stanza-ids: {sids:?}");
    bob.close().await;

    // Exactly once.
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    bob.assert_no_message("offline messages are delivered once")
        .await;
}

#[tokio::test]
async fn sessions_without_presence_do_not_count_as_available() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut early = Client::online(&server, "bob", "early").await;
    let mut late = Client::online(&server, "bob", "late").await;
    for i in 1..=3 {
        alice
            .send(&chat("bob@localhost", &format!("u{i}"), "while connected"))
            .await;
    }
    alice.sync().await;
    alice.assert_no_message("stored, no error").await;
    early
        .assert_no_message("connected-but-not-available resources get nothing")
        .await;
    late.assert_no_message("connected-but-not-available resources get nothing")
        .await;
    early.presence(Some(3)).await;
    let got = early.messages(QUIET).await;
    assert_eq!(
        ids(&got),
        ["u1", "u2", "u3"],
        "delivered at initial presence"
    );
    for m in &got {
        assert_offline_delay(m);
        stanza_id_by(m, "bob@localhost");
    }
    late.presence(None).await;
    late.assert_no_message("delivered to the first resource only, once")
        .await;
}

#[tokio::test]
async fn negative_priority_session_gets_offline_messages_only_at_non_negative_priority() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    alice.send(&chat("bob@localhost", "n1", "before")).await;
    alice.sync().await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(Some(-1)).await;
    bob.assert_no_message("XEP-0160 §2: nothing for a negative-priority resource")
        .await;
    // While only a negative resource is available, bare-JID chats are stored too.
    alice.send(&chat("bob@localhost", "n2", "during")).await;
    alice.sync().await;
    alice.assert_no_message("stored, no error").await;
    bob.assert_no_message("still negative").await;
    // A presence update to a non-negative priority delivers the queue.
    bob.presence(Some(0)).await;
    let got = bob.messages(QUIET).await;
    assert_eq!(
        ids(&got),
        ["n1", "n2"],
        "XEP-0160 §2: delivered when the resource changes its priority to >= 0"
    );
    for m in &got {
        assert_offline_delay(m);
    }
}

#[tokio::test]
async fn what_is_stored_offline_follows_xep0160_and_the_hints() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let stanzas = [
        // Chat states only: SN store.
        format!("<message to='bob@localhost' id='s-state' type='chat'><composing xmlns='{CHATSTATES_NS}'/></message>"),
        // A receipt only: kept (the ticks must reach the sender later).
        format!("<message to='bob@localhost' id='s-receipt'><received xmlns='{RECEIPTS_NS}' id='orig-1'/></message>"),
        // Headline and groupchat: not stored (groupchat bounced).
        typed("bob@localhost", "s-headline", "headline", "news"),
        typed("bob@localhost", "s-groupchat", "groupchat", "room"),
        // no-store: not stored even with a body.
        format!("<message to='bob@localhost' id='s-nostore' type='chat'><body>secret</body><no-store xmlns='{HINTS_NS}'/></message>"),
        // A chat marker only: kept.
        format!("<message to='bob@localhost' id='s-marker' type='chat'><displayed xmlns='{MARKERS_NS}' id='orig-2'/></message>"),
        // store: forces storage of a body-less message (here a chat state).
        format!("<message to='bob@localhost' id='s-store' type='chat'><active xmlns='{CHATSTATES_NS}'/><store xmlns='{HINTS_NS}'/></message>"),
        // An ordinary body: stored.
        chat("bob@localhost", "s-body", "plain"),
        // Error: never stored.
        error_message("bob@localhost", "s-error"),
    ];
    for s in &stanzas {
        alice.send(s).await;
    }
    alice.sync().await;
    let replies = alice.messages(QUIET).await;
    assert_eq!(ids(&replies), ["s-groupchat"], "only the groupchat bounces");
    assert_bounce(
        &replies[0],
        "bob@localhost",
        &alice.jid,
        "service-unavailable",
    );

    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    let got = bob.messages(QUIET).await;
    assert_eq!(
        ids(&got),
        ["s-receipt", "s-marker", "s-store", "s-body"],
        "stored and delivered in order"
    );
    assert_eq!(
        got[0]
            .get_child("received", RECEIPTS_NS)
            .and_then(|r| r.attr("id")),
        Some("orig-1")
    );
    assert_eq!(
        got[1]
            .get_child("displayed", MARKERS_NS)
            .and_then(|r| r.attr("id")),
        Some("orig-2")
    );
    assert!(
        got[2].has_child("active", CHATSTATES_NS),
        "{}",
        xml(&got[2])
    );
    for m in &got {
        assert_offline_delay(m);
        stanza_id_by(m, "bob@localhost");
    }
}

#[tokio::test]
async fn a_full_offline_queue_bounces_with_service_unavailable() {
    let server = TestServer::start_with(Options {
        extra: "[offline]\nmax_messages = 3\n".into(),
        ..Default::default()
    });
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    for i in 1..=3 {
        alice
            .send(&chat(
                "bob@localhost",
                &format!("q{i}"),
                &format!("kept {i}"),
            ))
            .await;
    }
    alice.sync().await;
    alice.assert_no_message("room for three").await;
    alice
        .send(&chat("bob@localhost", "q4", "one too many"))
        .await;
    let reply = alice.message("q4").await;
    assert_bounce(&reply, "bob@localhost", &alice.jid, "service-unavailable");
    alice.sync().await;
    alice.assert_no_message("one error only").await;

    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    let got = bob.messages(QUIET).await;
    assert_eq!(ids(&got), ["q1", "q2", "q3"]);
    assert_eq!(bodies(&got), ["kept 1", "kept 2", "kept 3"]);
}

#[tokio::test]
async fn a_forged_server_delay_is_removed_from_offline_messages() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    alice
        .send(&format!(
            "<message to='bob@localhost' id='f1' type='chat'><body>old news</body><delay xmlns='{DELAY_NS}' from='localhost' stamp='2001-01-01T00:00:00Z'/></message>"
        ))
        .await;
    // A delay by another entity is not the server's to judge.
    alice
        .send(&format!(
            "<message to='bob@localhost' id='f2' type='chat'><body>relayed</body><delay xmlns='{DELAY_NS}' from='alice@localhost' stamp='2002-02-02T00:00:00Z'/></message>"
        ))
        .await;
    alice.sync().await;
    alice.assert_no_message("stored").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    let got = bob.messages(QUIET).await;
    assert_eq!(ids(&got), ["f1", "f2"]);
    let forged = delays(&got[0]);
    assert_eq!(
        forged.len(),
        1,
        "XEP-0203 §5: only the server's own stamp: {}",
        xml(&got[0])
    );
    assert_offline_delay(&got[0]);
    assert!(!forged[0].1.starts_with("2001"), "{forged:?}");
    assert_offline_delay(&got[1]);
    assert!(
        delays(&got[1]).contains(&(
            "alice@localhost".to_string(),
            "2002-02-02T00:00:00Z".to_string()
        )),
        "{}",
        xml(&got[1])
    );
}

#[tokio::test]
async fn a_forged_server_delay_is_removed_from_online_messages() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    alice
        .send(&format!(
            "<message to='bob@localhost' id='f1' type='chat'><body>fake offline</body><delay xmlns='{DELAY_NS}' from='localhost' stamp='2001-01-01T00:00:00Z'/></message>"
        ))
        .await;
    let got = bob.message("f1").await;
    assert!(
        delays(&got).iter().all(|(from, _)| from != DOMAIN),
        "XEP-0203 §5 (checklist §6): the server SHOULD discard a delay claiming to be its own: {}",
        xml(&got)
    );
}

#[tokio::test]
async fn disco_info_lists_msgoffline_and_stanza_ids() {
    let server = TestServer::start();
    accounts(&server, &["alice"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let reply = alice
        .raw_iq(
            "<iq type='get' to='localhost' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", xml(&reply));
    let query = reply
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap_or_else(|| panic!("{}", xml(&reply)));
    let features: Vec<&str> = query
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    for feature in ["msgoffline", SID_NS] {
        assert!(features.contains(&feature), "{feature}: {features:?}");
    }
}

#[tokio::test]
async fn resources_coming_online_together_share_one_delivery() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    const N: usize = 200;
    for i in 0..N {
        alice
            .send(&chat("bob@localhost", &format!("r{i:03}"), "x"))
            .await;
    }
    alice.sync().await;
    let mut bobs = Vec::new();
    for resource in ["a", "b", "c"] {
        bobs.push(Client::online(&server, "bob", resource).await);
    }
    // The initial presences are all in flight at the same time.
    for c in bobs.iter_mut() {
        c.send("<presence/>").await;
    }
    let mut all = Vec::new();
    let mut counts = Vec::new();
    for c in bobs.iter_mut() {
        c.sync().await;
        let got = ids(&c.messages(QUIET).await);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted, "{}: in order", c.jid);
        counts.push(got.len());
        all.extend(got);
    }
    all.sort();
    let total = all.len();
    all.dedup();
    assert_eq!(
        (total, all.len()),
        (N, N),
        "XEP-0160: each offline message is delivered exactly once (per resource: {counts:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Receipts and chat markers end to end (XEP-0184, XEP-0333)

#[tokio::test]
async fn receipts_reach_an_online_sender() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    alice.presence(None).await;
    bob.presence(None).await;
    alice
        .send(&format!(
            "<message to='bob@localhost' id='rq1' type='chat'><body>did you get this?</body><request xmlns='{RECEIPTS_NS}'/></message>"
        ))
        .await;
    let got = bob.message("rq1").await;
    assert!(got.has_child("request", RECEIPTS_NS), "{}", xml(&got));
    let reply_to = got.attr("from").unwrap().to_string();
    assert_eq!(reply_to, alice.jid);
    bob.send(&format!(
        "<message to='{reply_to}' id='ack1'><received xmlns='{RECEIPTS_NS}' id='rq1'/></message>"
    ))
    .await;
    let receipt = alice.message("ack1").await;
    assert_eq!(receipt.attr("from"), Some(bob.jid.as_str()));
    assert_eq!(
        receipt
            .get_child("received", RECEIPTS_NS)
            .and_then(|r| r.attr("id")),
        Some("rq1"),
        "{}",
        xml(&receipt)
    );
    assert!(delays(&receipt).is_empty(), "delivered live, no delay");
}

#[tokio::test]
async fn receipts_and_markers_for_an_offline_sender_are_stored_in_order() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    alice.presence(None).await;
    bob.presence(None).await;
    alice
        .send(&format!(
            "<message to='bob@localhost' id='rq2' type='chat'><body>read this later</body><request xmlns='{RECEIPTS_NS}'/><markable xmlns='{MARKERS_NS}'/></message>"
        ))
        .await;
    let got = bob.message("rq2").await;
    let alice_jid = got.attr("from").unwrap().to_string();
    alice.close().await;
    // Bob answers the full JID of alice's ended session.
    bob.send(&format!(
        "<message to='{alice_jid}' id='ack2'><received xmlns='{RECEIPTS_NS}' id='rq2'/></message>"
    ))
    .await;
    bob.send(&format!(
        "<message to='{alice_jid}' id='seen2' type='chat'><displayed xmlns='{MARKERS_NS}' id='rq2'/></message>"
    ))
    .await;
    bob.sync().await;
    bob.assert_no_message("stored for alice, no error").await;

    let mut alice = Client::online(&server, "alice", "phone").await;
    alice.presence(None).await;
    let got = alice.messages(QUIET).await;
    assert_eq!(ids(&got), ["ack2", "seen2"], "the ticks, in order");
    assert_eq!(
        got[0]
            .get_child("received", RECEIPTS_NS)
            .and_then(|r| r.attr("id")),
        Some("rq2")
    );
    assert_eq!(
        got[1]
            .get_child("displayed", MARKERS_NS)
            .and_then(|r| r.attr("id")),
        Some("rq2")
    );
    for m in &got {
        assert_eq!(m.attr("from"), Some(bob.jid.as_str()), "{}", xml(m));
        assert_eq!(m.attr("to"), Some(alice_jid.as_str()), "{}", xml(m));
        assert_offline_delay(m);
        stanza_id_by(m, "alice@localhost");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. XEP-0359 stanza-ids

#[tokio::test]
async fn online_messages_carry_a_stanza_id_by_the_recipients_bare_jid() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    let bob_jid = bob.jid.clone();
    alice.send(&chat(&bob_jid, "i1", "to the full JID")).await;
    alice
        .send(&chat("bob@localhost", "i2", "to the bare JID"))
        .await;
    let first = bob.message("i1").await;
    let second = bob.message("i2").await;
    let a = stanza_id_by(&first, &bob.bare);
    let b = stanza_id_by(&second, &bob.bare);
    assert_ne!(a, b, "unique per message");
    assert_eq!(stanza_ids(&first).len(), 1, "{}", xml(&first));
    alice.sync().await;
    for m in alice.drain(QUIET).await {
        assert!(
            stanza_ids(&m).is_empty(),
            "the sender got something: {}",
            xml(&m)
        );
    }
}

#[tokio::test]
async fn a_forged_stanza_id_by_the_recipient_is_replaced_and_others_are_kept() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    let forged = format!(
        "<stanza-id xmlns='{SID_NS}' by='bob@localhost' id='fake'/><stanza-id xmlns='{SID_NS}' by='room@muc.example.org' id='theirs'/>"
    );
    alice
        .send(&format!(
            "<message to='bob@localhost' id='k1' type='chat'><body>trust me</body>{forged}</message>"
        ))
        .await;
    let bob_jid = bob.jid.clone();
    alice
        .send(&format!(
            "<message to='{bob_jid}' id='k2' type='chat'><body>again</body>{forged}</message>"
        ))
        .await;
    for id in ["k1", "k2"] {
        let got = bob.message(id).await;
        let ours = stanza_id_by(&got, "bob@localhost");
        assert_ne!(
            ours,
            "fake",
            "XEP-0359 §4: the forged one is removed: {}",
            xml(&got)
        );
        assert!(
            stanza_ids(&got).contains(&("room@muc.example.org".into(), "theirs".into())),
            "a stanza-id by another entity is kept: {}",
            xml(&got)
        );
        assert_eq!(stanza_ids(&got).len(), 2, "{}", xml(&got));
    }
    // Also for a message that goes to offline storage.
    bob.close().await;
    alice
        .send(&format!(
            "<message to='bob@localhost' id='k3' type='chat'><body>later</body>{forged}</message>"
        ))
        .await;
    alice.sync().await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    bob.presence(None).await;
    let got = bob.message("k3").await;
    assert_ne!(stanza_id_by(&got, "bob@localhost"), "fake", "{}", xml(&got));
    assert_eq!(stanza_ids(&got).len(), 2, "{}", xml(&got));
}

#[tokio::test]
async fn a_forged_stanza_id_is_removed_from_error_messages_too() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    let bob_jid = bob.jid.clone();
    alice
        .send(&format!(
            "<message to='{bob_jid}' id='k4' type='error'><stanza-id xmlns='{SID_NS}' by='bob@localhost' id='fake'/><error type='cancel'><item-not-found xmlns='{STANZAS_NS}'/></error></message>"
        ))
        .await;
    let got = bob.message("k4").await;
    assert!(
        stanza_ids(&got).iter().all(|(by, id)| by != "bob@localhost" || id != "fake"),
        "XEP-0359 §4: an entity that generates stanza-ids by bob@localhost MUST delete one it did not \
         make, even when it adds none: {}",
        xml(&got)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Durability

#[tokio::test]
async fn offline_messages_survive_a_crash() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    const N: usize = 20;
    for i in 1..=N {
        alice
            .send(&chat(
                "bob@localhost",
                &format!("d{i}"),
                &format!("durable {i}"),
            ))
            .await;
    }
    // In-order processing: the ping's result means all twenty were stored.
    alice.sync().await;
    alice.assert_no_message("stored, no error").await;
    kill_hard(server.pid());
    drop(alice);

    let restarted = spawn_server(&server.config);
    let mut bob = Client::online_at(restarted.c2s, "bob", "desk").await;
    bob.presence(None).await;
    let got = bob.messages(QUIET).await;
    let expected: Vec<String> = (1..=N).map(|i| format!("d{i}")).collect();
    assert_eq!(ids(&got), expected, "all of them, in order, once");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(body(m), Some(format!("durable {}", i + 1)));
        assert_offline_delay(m);
        stanza_id_by(m, "bob@localhost");
    }
    bob.close().await;
    let mut bob = Client::online_at(restarted.c2s, "bob", "desk").await;
    bob.presence(None).await;
    bob.assert_no_message("delivered once").await;
    drop(restarted);
    // `server` (and its data directory) lives until here.
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 6. IQs to full JIDs (checklist §4, presence and IQ table)

#[tokio::test]
async fn iq_to_a_full_jid_needs_the_recipient_to_share_presence() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut laptop = Client::online(&server, "alice", "laptop").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    let bob_jid = bob.jid.clone();
    let alice_jid = alice.jid.clone();

    // No subscription: service-unavailable, nothing delivered.
    let reply = alice
        .raw_iq(
            &format!("<iq type='get' to='{bob_jid}' id='q1'>{PING}</iq>"),
            "q1",
        )
        .await;
    assert_bounce(&reply, &bob_jid, &alice_jid, "service-unavailable");
    let reply = alice
        .raw_iq(
            &format!("<iq type='set' to='{bob_jid}' id='q2'><query xmlns='urn:example:x'/></iq>"),
            "q2",
        )
        .await;
    assert_bounce(&reply, &bob_jid, &alice_jid, "service-unavailable");
    bob.sync().await;
    assert!(
        bob.drain(QUIET).await.iter().all(|e| e.name() != "iq"),
        "the iqs were delivered without a subscription"
    );

    // The same account always shares presence with itself.
    let laptop_jid = laptop.jid.clone();
    alice
        .send(&format!(
            "<iq type='get' to='{laptop_jid}' id='q3'>{PING}</iq>"
        ))
        .await;
    let got = laptop
        .wait("q3", |e| e.name() == "iq" && e.attr("id") == Some("q3"))
        .await;
    assert_eq!(got.attr("from"), Some(alice_jid.as_str()));
    assert_eq!(got.attr("type"), Some("get"));

    // Alice subscribes to bob and bob approves: bob's item for alice is 'from'.
    alice
        .send("<presence type='subscribe' to='bob@localhost'/>")
        .await;
    alice.sync().await;
    bob.send("<presence type='subscribed' to='alice@localhost'/>")
        .await;
    bob.sync().await;
    alice
        .send(&format!(
            "<iq type='get' to='{bob_jid}' id='q4'>{PING}</iq>"
        ))
        .await;
    let got = bob
        .wait("q4", |e| e.name() == "iq" && e.attr("id") == Some("q4"))
        .await;
    assert_eq!(got.attr("from"), Some(alice_jid.as_str()));
    assert_eq!(got.attr("to"), Some(bob_jid.as_str()));
    bob.send(&format!("<iq type='result' to='{alice_jid}' id='q4'/>"))
        .await;
    let result = alice
        .wait("q4 result", |e| {
            e.name() == "iq" && e.attr("id") == Some("q4")
        })
        .await;
    assert_eq!(result.attr("type"), Some("result"));
    assert_eq!(result.attr("from"), Some(bob_jid.as_str()));

    // The other way round it is only 'to' in alice's roster: refused.
    let reply = bob
        .raw_iq(
            &format!("<iq type='get' to='{alice_jid}' id='q5'>{PING}</iq>"),
            "q5",
        )
        .await;
    assert_bounce(&reply, &alice_jid, &bob_jid, "service-unavailable");
    alice.sync().await;
    assert!(
        alice.drain(QUIET).await.iter().all(|e| e.name() != "iq"),
        "alice does not share presence with bob"
    );
}

#[tokio::test]
async fn iq_results_and_errors_to_a_full_jid_are_delivered() {
    let server = TestServer::start();
    accounts(&server, &["alice", "bob"]);
    let mut alice = Client::online(&server, "alice", "phone").await;
    let mut bob = Client::online(&server, "bob", "desk").await;
    let alice_jid = alice.jid.clone();
    let bob_jid = bob.jid.clone();
    bob.send(&format!("<iq type='result' to='{alice_jid}' id='w1'/>"))
        .await;
    bob.send(&format!(
        "<iq type='error' to='{alice_jid}' id='w2'><error type='cancel'><service-unavailable xmlns='{STANZAS_NS}'/></error></iq>"
    ))
    .await;
    let got = alice
        .wait("w1", |e| e.name() == "iq" && e.attr("id") == Some("w1"))
        .await;
    assert_eq!(got.attr("type"), Some("result"));
    assert_eq!(got.attr("from"), Some(bob_jid.as_str()));
    let got = alice
        .wait("w2", |e| e.name() == "iq" && e.attr("id") == Some("w2"))
        .await;
    assert_error(&got, "service-unavailable");
    assert_eq!(got.attr("from"), Some(bob_jid.as_str()));
    bob.sync().await;
    assert!(
        bob.drain(QUIET).await.iter().all(|e| e.name() != "iq"),
        "results and errors are not answered"
    );

    // A request to a full JID that matches no session: service-unavailable (§8.5.3.2).
    let reply = alice
        .raw_iq(
            &format!("<iq type='get' to='bob@localhost/gone' id='w3'>{PING}</iq>"),
            "w3",
        )
        .await;
    assert_bounce(
        &reply,
        "bob@localhost/gone",
        &alice_jid,
        "service-unavailable",
    );
}
