//! "Last seen" (XEP-0012): server uptime, the last activity of an offline contact for subscribers
//! only, counting only what the user did, kept across restarts; XEP-0319 idle passes through.

mod common;

use std::time::Duration;

use common::*;

async fn online(server: &TestServer, user: &str, resource: &str) -> Raw {
    let (mut c, jid) = logged_in(server, user, "pw", resource).await;
    // Like real clients: fetch the roster (so subscription answers reach us), then go available.
    c.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    c.expect("id='roster'").await;
    c.send("<presence/>").await;
    c.expect(&format!("from='{jid}'")).await;
    c.expect("/>").await;
    c
}

/// alice subscribes to bob's presence and bob approves.
async fn subscribe(alice: &mut Raw, bob: &mut Raw) {
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    bob.expect("type='subscribe'").await;
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    alice.expect("type='subscribed'").await;
    // Let the roster pushes and presence settle.
    alice.drain(Duration::from_millis(200)).await;
    bob.drain(Duration::from_millis(200)).await;
}

/// Asks for last activity; returns the reply.
async fn last(c: &mut Raw, to: &str, id: &str) -> String {
    c.send(&format!(
        "<iq type='get' id='{id}' to='{to}'><query xmlns='jabber:iq:last'/></iq>"
    ))
    .await;
    let start = c.expect(&format!("id='{id}'")).await;
    start + &c.expect("</iq>").await
}

fn seconds(reply: &str) -> u64 {
    between(reply, "seconds='", "'")
        .unwrap_or_else(|| panic!("no seconds: {reply}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_server_tells_its_uptime() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    let mut alice = online(&server, "alice", "a").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = last(&mut alice, "localhost", "u").await;
    assert!(reply.contains("type='result'"), "{reply}");
    assert!(seconds(&reply) >= 1, "{reply}");
    // Advertised in disco.
    alice.send("<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let disco = alice.expect("</iq>").await;
    assert!(disco.contains("var='jabber:iq:last'"), "{disco}");
}

#[tokio::test]
async fn only_subscribers_learn_when_a_contact_was_last_active() {
    let server = TestServer::start();
    for user in ["alice", "bob", "eve"] {
        server.add_user(user, "pw");
    }
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "b").await;
    let mut eve = online(&server, "eve", "e").await;
    subscribe(&mut alice, &mut bob).await;

    // Online: zero seconds, for the subscriber only.
    let reply = last(&mut alice, "bob@localhost", "1").await;
    assert!(
        reply.contains("type='result'") && seconds(&reply) == 0,
        "{reply}"
    );
    let reply = last(&mut eve, "bob@localhost", "2").await;
    assert!(
        reply.contains("<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
        "{reply}"
    );

    // Bob says goodbye with a status, then leaves.
    bob.send("<presence type='unavailable'><status>gone fishing</status></presence>")
        .await;
    bob.send("</stream:stream>").await;
    bob.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = last(&mut alice, "bob@localhost", "3").await;
    assert!(reply.contains("type='result'"), "{reply}");
    assert!((2..10).contains(&seconds(&reply)), "{reply}");
    assert!(reply.contains("gone fishing"), "{reply}");
    let reply = last(&mut eve, "bob@localhost", "4").await;
    assert!(
        reply.contains("<forbidden"),
        "still forbidden when offline: {reply}"
    );
}

#[tokio::test]
async fn what_the_app_does_is_not_activity() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "b").await;
    subscribe(&mut alice, &mut bob).await;
    // The person writes a message...
    bob.send("<message to='alice@localhost' type='chat' id='m'><body>hi</body></message>")
        .await;
    alice.expect("<body>hi</body>").await;
    // ...then for two seconds only the app talks: receipts, markers, chat states, pings, acks.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(550)).await;
        bob.send(&format!(
            "<message to='alice@localhost' type='chat'><received xmlns='urn:xmpp:receipts' id='r{i}'/></message>\
             <message to='alice@localhost' type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='d{i}'/></message>\
             <message to='alice@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>\
             <iq type='get' id='p{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        bob.expect(&format!("id='p{i}'")).await;
    }
    // The connection drops without a goodbye: that is not the user either.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = last(&mut alice, "bob@localhost", "q").await;
    assert!(
        seconds(&reply) >= 2,
        "last activity is the message, not the app's traffic: {reply}"
    );
}

#[tokio::test]
async fn last_activity_survives_a_restart() {
    // A long interval: nothing is written until shutdown writes everything.
    let mut server = TestServer::start_with(Options {
        extra: "[activity]\nwrite_interval = 3600\n".into(),
        ..Default::default()
    });
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    {
        let mut alice = online(&server, "alice", "a").await;
        let mut bob = online(&server, "bob", "b").await;
        subscribe(&mut alice, &mut bob).await;
        bob.send("<presence type='unavailable'><status>see you</status></presence>")
            .await;
        bob.send("</stream:stream>").await;
        bob.expect_closed().await;
    }
    assert!(server.terminate().success());
    let server = TestServer::restart(server);
    let mut alice = online(&server, "alice", "a").await;
    let reply = last(&mut alice, "bob@localhost", "r").await;
    assert!(
        reply.contains("type='result'") && reply.contains("see you"),
        "{reply}"
    );
}

#[tokio::test]
async fn idle_presence_passes_through() {
    let server = TestServer::start();
    server.add_user("alice", "pw");
    server.add_user("bob", "pw");
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "b").await;
    subscribe(&mut alice, &mut bob).await;
    bob.send("<presence><show>away</show><idle xmlns='urn:xmpp:idle:1' since='2026-01-01T10:00:00Z'/></presence>")
        .await;
    let text = alice.expect("</presence>").await;
    assert!(
        text.contains("<idle xmlns='urn:xmpp:idle:1' since='2026-01-01T10:00:00Z'/>"),
        "{text}"
    );
}
