//! XEP-0198 stream management: acks, resumption after a lost connection, and what happens to
//! stanzas the client never acknowledged (they go to offline storage, never to the void).

mod common;

use std::time::Duration;

use common::*;

const SM: &str = "urn:xmpp:sm:3";

/// A logged-in client that sent initial presence (so it is available and gets messages).
async fn online(server: &TestServer, user: &str, resource: &str) -> Raw {
    let (mut c, jid) = logged_in(server, user, "pw", resource).await;
    c.send("<presence/>").await;
    let before = c.expect(&format!("from='{jid}'")).await;
    c.expect("/>").await;
    // Offline messages come before the echo of our presence: keep them for the test to read.
    if let Some(echo) = before.rfind("<presence") {
        c.pending = before[..echo].to_string() + &c.pending;
    }
    c
}

/// Enables stream management; returns the `<enabled/>` element's text.
async fn enable(c: &mut Raw, resume: bool) -> String {
    let attr = if resume { " resume='true'" } else { "" };
    c.send(&format!("<enable xmlns='{SM}'{attr}/>")).await;
    let text = c.expect("<enabled").await;
    let rest = c.expect("/>").await;
    assert!(
        !text.contains("<message"),
        "unexpected stanza before <enabled/>: {:.200}",
        text
    );
    rest
}

/// Like real clients: bind, enable stream management, then send initial presence.
async fn online_with_sm(server: &TestServer, user: &str, resource: &str) -> Raw {
    let (mut c, jid) = logged_in(server, user, "pw", resource).await;
    enable(&mut c, false).await;
    c.send("<presence/>").await;
    let before = c.expect(&format!("from='{jid}'")).await;
    c.expect("/>").await;
    if let Some(echo) = before.rfind("<presence") {
        c.pending = before[..echo].to_string() + &c.pending;
    }
    c
}

fn attr<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    between(text, &format!("{name}='"), "'")
}

async fn message(from: &mut Raw, to: &str, body: &str) {
    from.send(&format!(
        "<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

#[tokio::test]
async fn acks_count_handled_stanzas_both_ways() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "b").await;
    let enabled = enable(&mut bob, false).await;
    assert!(
        attr(&enabled, "id").is_none(),
        "no resumption asked, no id: {enabled}"
    );

    bob.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = bob.expect("/>").await;
    assert!(a.contains(&format!("<a xmlns='{SM}' h='0'")), "{a}");

    bob.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let mut seen = bob.expect("id='p1'").await;
    bob.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = bob.expect(&format!("<a xmlns='{SM}'")).await;
    let a = a + &bob.expect("/>").await;
    assert!(a.contains("h='1'"), "the ping was handled: {a}");
    seen.push_str(&a);

    for body in ["m1", "m2", "m3"] {
        message(&mut alice, "bob@localhost", body).await;
    }
    for body in ["m1", "m2", "m3"] {
        seen.push_str(&bob.expect(&format!("<body>{body}</body>")).await);
    }
    // The server asks for an ack once stanzas are outstanding (one request at a time).
    seen.push_str(&bob.drain(Duration::from_millis(200)).await);
    assert!(seen.contains(&format!("<r xmlns='{SM}'/>")), "{seen}");
    // 4 stanzas since <enabled/>: the ping result and three messages.
    bob.send(&format!("<a xmlns='{SM}' h='4'/>")).await;
    bob.send("<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    bob.expect("id='p2'").await;

    // Acknowledging more than was sent ends the stream (XEP-0198 §5).
    bob.send(&format!("<a xmlns='{SM}' h='40'/>")).await;
    let closed = bob.expect_closed().await;
    assert!(
        closed.contains("<undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{closed}"
    );
    assert!(
        closed.contains(&format!("<handled-count-too-high xmlns='{SM}' h='40'")),
        "{closed}"
    );
}

#[tokio::test]
async fn enable_is_offered_after_bind_and_only_once() {
    let server = TestServer::start();
    server.add_user("bob", "pw");
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    c.authenticate("SCRAM-SHA-256", "bob", "pw").await.unwrap();
    let features = c.open().await;
    assert!(
        features.contains(&format!("<sm xmlns='{SM}'/>")),
        "{features}"
    );
    // Before bind: refused, and the client may go on to bind.
    c.send(&format!("<enable xmlns='{SM}'/>")).await;
    let failed = c.expect("</failed>").await;
    assert!(failed.contains("<unexpected-request"), "{failed}");
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    c.expect("</iq>").await;
    enable(&mut c, false).await;
    // A second <enable/> is refused and ends the stream.
    c.send(&format!("<enable xmlns='{SM}'/>")).await;
    let closed = c.expect_closed().await;
    assert!(closed.contains("<unexpected-request"), "{closed}");
    assert!(closed.contains("<stream:error>"), "{closed}");
}

/// Connects, authenticates and asks to resume; returns the client and what the server answered.
async fn try_resume(server: &TestServer, user: &str, previd: &str, h: u32) -> (Raw, String) {
    resume_over_tcp(server, "SCRAM-SHA-256", user, "pw", previd, h).await
}

#[tokio::test]
async fn a_lost_connection_is_resumed_with_nothing_lost() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "phone").await;
    let enabled = enable(&mut bob, true).await;
    let id = attr(&enabled, "id").expect("an SM-ID").to_string();
    assert_eq!(attr(&enabled, "resume"), Some("true"), "{enabled}");
    assert_eq!(attr(&enabled, "max"), Some("60"), "{enabled}");

    message(&mut alice, "bob@localhost", "m1").await;
    message(&mut alice, "bob@localhost", "m2").await;
    bob.expect("<body>m2</body>").await;
    // The connection dies before bob acknowledges anything.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // While bob is away, a message for him waits in his session.
    message(&mut alice, "bob@localhost/phone", "m3").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut bob, answer) = try_resume(&server, "bob", &id, 0).await;
    assert!(answer.contains("<resumed"), "{answer}");
    assert_eq!(attr(&answer, "previd"), Some(id.as_str()), "{answer}");
    assert_eq!(
        attr(&answer, "h"),
        Some("0"),
        "bob sent no stanza after enabling: {answer}"
    );
    for body in ["m1", "m2", "m3"] {
        bob.expect(&format!("<body>{body}</body>")).await;
    }
    // The session goes on: same resource, still available.
    bob.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = bob.expect("id='p'").await + &bob.expect("/>").await;
    assert!(pong.contains("to='bob@localhost/phone'"), "{pong}");
    message(&mut alice, "bob@localhost", "m4").await;
    bob.expect("<body>m4</body>").await;
    // Nothing was stored offline twice: a new login of bob gets none of them again.
    bob.send(&format!("<a xmlns='{SM}' h='5'/>")).await;
    bob.send("</stream:stream>").await;
    bob.expect_closed().await;
    let mut again = online(&server, "bob", "laptop").await;
    let extra = again.drain(Duration::from_millis(400)).await;
    assert!(!extra.contains("<body>"), "delivered twice: {extra}");
}

#[tokio::test]
async fn resuming_an_unknown_or_foreign_session_fails_and_binding_still_works() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut bob = online(&server, "bob", "b").await;
    let id = attr(&enable(&mut bob, true).await, "id")
        .unwrap()
        .to_string();

    let (mut stranger, answer) = try_resume(&server, "alice", &id, 0).await;
    assert!(
        answer.contains("<item-not-found"),
        "alice may not take over bob's session: {answer}"
    );
    stranger
        .send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    let bound = stranger.expect("</iq>").await;
    assert!(bound.contains("alice@localhost/"), "{bound}");

    let (_, answer) = try_resume(&server, "bob", "no-such-session", 0).await;
    assert!(answer.contains("<item-not-found"), "{answer}");
    // Bob's live session was not disturbed.
    bob.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    bob.expect("id='p'").await;
}

#[tokio::test]
async fn resuming_while_the_old_connection_is_open_replaces_it_with_conflict() {
    let server = TestServer::start();
    server.add_user("bob", "pw");
    let mut old = online(&server, "bob", "b").await;
    let id = attr(&enable(&mut old, true).await, "id")
        .unwrap()
        .to_string();
    let (mut new, answer) = try_resume(&server, "bob", &id, 0).await;
    assert!(answer.contains("<resumed"), "{answer}");
    let closed = old.expect_closed().await;
    assert!(
        closed.contains("<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{closed}"
    );
    new.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    new.expect("id='p'").await;
}

#[tokio::test]
async fn unacknowledged_messages_go_offline_when_resumption_times_out() {
    let server = TestServer::start_with(Options {
        resume_timeout: 1,
        ..Default::default()
    });
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "phone").await;
    let id = attr(&enable(&mut bob, true).await, "id")
        .unwrap()
        .to_string();
    message(&mut alice, "bob@localhost", "lost-1").await;
    bob.expect("<body>lost-1</body>").await;
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    message(&mut alice, "bob@localhost", "lost-2").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;

    // Too late to resume.
    let (_, answer) = try_resume(&server, "bob", &id, 0).await;
    assert!(answer.contains("<item-not-found"), "{answer}");
    // Both messages are waiting in offline storage, once each, in order, with a delay stamp.
    let mut bob = online(&server, "bob", "laptop").await;
    let first = bob.expect("<body>lost-1</body>").await;
    let second = bob.expect("<body>lost-2</body>").await;
    let rest = bob.drain(Duration::from_millis(400)).await;
    assert!(!rest.contains("<body>"), "delivered twice: {rest}");
    assert!(
        first.contains("urn:xmpp:delay")
            || second.contains("urn:xmpp:delay")
            || rest.contains("urn:xmpp:delay")
    );
}

#[tokio::test]
async fn a_clean_close_with_unacknowledged_messages_keeps_them() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "phone").await;
    enable(&mut bob, false).await;
    message(&mut alice, "bob@localhost", "unacked").await;
    bob.expect("<body>unacked</body>").await;
    bob.send("</stream:stream>").await;
    bob.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bob = online(&server, "bob", "laptop").await;
    let text = bob.expect("<body>unacked</body>").await;
    let rest = bob.expect("</message>").await;
    assert!(
        (text + &rest).contains("urn:xmpp:delay"),
        "re-delivered from offline storage with a stamp"
    );
}

#[tokio::test]
async fn acknowledged_messages_are_not_delivered_again() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "phone").await;
    enable(&mut bob, false).await;
    message(&mut alice, "bob@localhost", "seen").await;
    bob.expect("<body>seen</body>").await;
    bob.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    bob.send("</stream:stream>").await;
    bob.expect_closed().await;
    let mut bob = online(&server, "bob", "laptop").await;
    let rest = bob.drain(Duration::from_millis(400)).await;
    assert!(!rest.contains("<body>seen</body>"), "{rest}");
}

/// Sends `count` messages with SM on and waits for the server's ack covering all of them.
async fn send_acked(alice: &mut Raw, to: &str, count: u32) {
    enable(alice, false).await;
    for i in 0..count {
        message(alice, to, &format!("crash-{i}")).await;
    }
    alice.send(&format!("<r xmlns='{SM}'/>")).await;
    alice
        .expect(&format!("<a xmlns='{SM}' h='{count}'/>"))
        .await;
}

/// Reads until `count` messages crash-0.. have arrived; asserts order and no duplicates.
async fn receive_all(bob: &mut Raw, count: u32) {
    let mut text = String::new();
    for i in 0..count {
        text.push_str(&bob.expect(&format!("<body>crash-{i}</body>")).await);
    }
    text.push_str(&bob.drain(Duration::from_millis(400)).await);
    for i in 0..count {
        let seen = text.matches(&format!("<body>crash-{i}</body>")).count();
        assert_eq!(seen, 1, "crash-{i} must arrive exactly once");
    }
}

#[tokio::test]
async fn acked_messages_to_an_offline_user_survive_sigkill_exactly_once() {
    let mut server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    {
        let mut alice = online(&server, "alice", "a").await;
        send_acked(&mut alice, "bob@localhost", 50).await;
    }
    // Acknowledged means stored: killing the server now loses none of them.
    server.kill9();
    let server = TestServer::restart(server);
    let mut bob = online_with_sm(&server, "bob", "phone").await;
    receive_all(&mut bob, 50).await;
    bob.send(&format!("<a xmlns='{SM}' h='50'/>")).await;
    bob.send("</stream:stream>").await;
    bob.expect_closed().await;
    let mut again = online(&server, "bob", "phone").await;
    let rest = again.drain(Duration::from_millis(400)).await;
    assert!(!rest.contains("crash-"), "delivered twice: {:.300}", rest);
}

#[tokio::test]
async fn acked_messages_to_an_online_user_survive_sigkill_until_that_user_acks() {
    let mut server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    {
        let mut bob = online(&server, "bob", "phone").await;
        enable(&mut bob, true).await;
        let mut alice = online(&server, "alice", "a").await;
        send_acked(&mut alice, "bob@localhost", 20).await;
        // Bob's client has them on the wire but has not acknowledged them when the server dies.
        receive_all(&mut bob, 20).await;
        server.kill9();
    }
    let server = TestServer::restart(server);
    let mut bob = online_with_sm(&server, "bob", "phone").await;
    receive_all(&mut bob, 20).await;
    bob.send(&format!("<a xmlns='{SM}' h='20'/>")).await;
    bob.send("</stream:stream>").await;
    bob.expect_closed().await;
    let mut again = online(&server, "bob", "phone").await;
    let rest = again.drain(Duration::from_millis(400)).await;
    assert!(
        !rest.contains("crash-"),
        "once acknowledged, never again: {rest}"
    );
}

/// In-flight copies live in memory until something needs them on disk: a sender without stream
/// management never asks, so the checkpoint (1 s) writes them; a crash after it loses nothing.
#[tokio::test]
async fn unacknowledged_messages_from_a_sender_without_acks_survive_sigkill_after_the_checkpoint() {
    let mut server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    {
        let mut bob = online(&server, "bob", "phone").await;
        enable(&mut bob, true).await;
        let mut alice = online(&server, "alice", "a").await;
        for i in 0..5 {
            message(&mut alice, "bob@localhost", &format!("crash-{i}")).await;
        }
        receive_all(&mut bob, 5).await;
        // Past the checkpoint interval, and the backend's own flush interval after it.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        server.kill9();
    }
    let server = TestServer::restart(server);
    let mut bob = online(&server, "bob", "phone").await;
    receive_all(&mut bob, 5).await;
}

#[tokio::test]
async fn messages_written_to_a_client_without_stream_management_are_not_kept() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "phone").await;
    for i in 0..5 {
        message(&mut alice, "bob@localhost", &format!("crash-{i}")).await;
    }
    receive_all(&mut bob, 5).await;
    bob.send("</stream:stream>").await;
    bob.expect_closed().await;
    let mut again = online(&server, "bob", "laptop").await;
    let rest = again.drain(Duration::from_millis(400)).await;
    assert!(
        !rest.contains("crash-"),
        "written without SM counts as delivered: {rest}"
    );
}
