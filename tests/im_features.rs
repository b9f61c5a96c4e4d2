//! Instant-messaging extensions over real sockets against the real server: XEP-0280 message
//! carbons, XEP-0352 client state indication, XEP-0191 blocking command, XEP-0054 vcard-temp and
//! XEP-0049 private XML storage.

mod common;

use std::time::Duration;

use common::stanzas::*;
use common::*;
use minidom::Element;

const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";
const CSI: &str = "urn:xmpp:csi:0";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const BLOCKING: &str = "urn:xmpp:blocking";
const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
const VCARD: &str = "vcard-temp";
const PRIVATE: &str = "jabber:iq:private";
const PW: &str = "im-pw";
/// How long "nothing arrives while inactive" checks listen (XEP-0352).
const HELD: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Helpers: the stanza client of tests/common/stanzas.rs (password `PW`, waits up to its default
// `DEFAULT_WAIT_LIMIT`), with carbons

/// A server with these accounts (password `PW`).
fn server(users: &[&str]) -> TestServer {
    server_with_users(users, PW)
}

impl Client {
    /// Logged in and bound, nothing else (not interested, not available).
    async fn bound(server: &TestServer, user: &str, resource: &str) -> Client {
        Client::bound_with(server, user, PW, resource).await
    }

    /// Logged in, interested (fetched the roster) and available (initial presence with `status`).
    async fn start(server: &TestServer, user: &str, resource: &str, status: &str) -> Client {
        let mut c = Client::bound(server, user, resource).await;
        c.roster_get().await;
        c.online(status).await;
        c
    }

    /// Sends available presence with this status and waits for its echo.
    async fn online(&mut self, status: &str) {
        self.online_with(status, None).await;
    }

    /// Waits for a carbon of `kind` (received or sent) whose forwarded message has this body;
    /// returns the wrapper.
    async fn wait_carbon(&mut self, kind: &str, body: &str) -> Element {
        self.wait(&format!("a <{kind}/> carbon of {body:?}"), |el| {
            carbon(el, kind).is_some_and(|m| body_of(m).as_deref() == Some(body))
        })
        .await
    }
}

/// The forwarded message inside a carbon of `kind` (`received` or `sent`).
fn carbon<'a>(el: &'a Element, kind: &str) -> Option<&'a Element> {
    if el.name() != "message" {
        return None;
    }
    el.get_child(kind, CARBONS)?
        .get_child("forwarded", FORWARD)?
        .get_child("message", CLIENT)
}

fn is_carbon(el: &Element) -> bool {
    carbon(el, "received").is_some() || carbon(el, "sent").is_some()
}

/// The server's disco#info features.
async fn server_features(c: &mut Client) -> Vec<String> {
    let reply = c
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<query xmlns='{DISCO_INFO}'/>"),
        )
        .await;
    assert_result(&reply);
    reply
        .get_child("query", DISCO_INFO)
        .unwrap_or_else(|| panic!("no disco query: {}", show(&reply)))
        .children()
        .filter(|c| c.is("feature", DISCO_INFO))
        .filter_map(|f| f.attr("var").map(String::from))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 0. Discovery

/// XEP-0280 §3, XEP-0191 §3.1, XEP-0054 and XEP-0049 support show in the server's disco#info.
#[tokio::test]
async fn server_disco_lists_carbons_blocking_vcard_and_private() {
    let server = server(&["alice"]);
    let mut alice = Client::bound(&server, "alice", "phone").await;
    let features = server_features(&mut alice).await;
    for feature in [CARBONS, BLOCKING, VCARD, PRIVATE] {
        assert!(
            features.iter().any(|f| f == feature),
            "disco#info lacks {feature}: {features:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. XEP-0280 message carbons

async fn enable_carbons(c: &mut Client) {
    let reply = c
        .iq("set", None, &format!("<enable xmlns='{CARBONS}'/>"))
        .await;
    assert_result(&reply);
    assert_eq!(reply.children().count(), 0, "{}", show(&reply));
}

async fn disable_carbons(c: &mut Client) {
    let reply = c
        .iq("set", None, &format!("<disable xmlns='{CARBONS}'/>"))
        .await;
    assert_result(&reply);
    assert_eq!(reply.children().count(), 0, "{}", show(&reply));
}

/// alice online; bob online as phone and laptop (equal priority); everything settled.
async fn alice_and_two_bobs(server: &TestServer) -> (Client, Client, Client) {
    let mut alice = Client::start(server, "alice", "home", "here").await;
    let mut phone = Client::start(server, "bob", "phone", "phone").await;
    let mut laptop = Client::start(server, "bob", "laptop", "laptop").await;
    for c in [&mut alice, &mut phone, &mut laptop] {
        c.settle_and_clear().await;
    }
    (alice, phone, laptop)
}

/// §4, §5, §10.1: enable and disable answer an empty result, and repeating either is no error;
/// either also works addressed to the own bare JID.
#[tokio::test]
async fn carbons_enable_and_disable_answer_empty_results() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "laptop").await;
    enable_carbons(&mut bob).await;
    enable_carbons(&mut bob).await;
    disable_carbons(&mut bob).await;
    disable_carbons(&mut bob).await;
    let reply = bob
        .iq(
            "set",
            Some(&bare("bob")),
            &format!("<enable xmlns='{CARBONS}'/>"),
        )
        .await;
    assert_result(&reply);
}

/// §7: a message to one resource's full JID reaches it as is; the account's other carbons-enabled
/// resource gets a `<received/>` copy from the bare JID, to its full JID, with the same type.
#[tokio::test]
async fn carbons_received_copy_of_message_to_another_resource() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut phone, mut laptop) = alice_and_two_bobs(&server).await;
    enable_carbons(&mut laptop).await;

    alice
        .send("<message to='bob@localhost/phone' type='chat' id='c1'><body>hello phone</body><thread>t1</thread></message>")
        .await;
    let original = phone.wait_body("hello phone").await;
    assert_eq!(original.attr("from"), Some("alice@localhost/home"));
    assert_eq!(original.attr("to"), Some("bob@localhost/phone"));

    let copy = laptop.wait_carbon("received", "hello phone").await;
    assert_eq!(copy.attr("from"), Some("bob@localhost"), "{}", show(&copy));
    assert_eq!(
        copy.attr("to"),
        Some("bob@localhost/laptop"),
        "{}",
        show(&copy)
    );
    assert_eq!(copy.attr("type"), Some("chat"), "{}", show(&copy));
    let inner = carbon(&copy, "received").unwrap();
    assert_eq!(inner.attr("from"), Some("alice@localhost/home"));
    assert_eq!(inner.attr("to"), Some("bob@localhost/phone"));
    assert_eq!(inner.attr("type"), Some("chat"));
    assert_eq!(inner.attr("id"), Some("c1"));
    assert_eq!(
        inner
            .get_child("thread", CLIENT)
            .map(|t| t.text())
            .as_deref(),
        Some("t1")
    );

    phone
        .none("a carbon of a message it received itself", is_carbon)
        .await;
    laptop
        .none("the original of a message to another resource", |el| {
            el.name() == "message" && body_of(el).is_some()
        })
        .await;
}

/// §8: what one resource sends reaches the other carbons-enabled resources as a `<sent/>` copy,
/// even when the sender did not enable carbons; the sender gets no copy of its own message.
#[tokio::test]
async fn carbons_sent_copy_to_other_resources_but_not_the_sender() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut phone, mut laptop) = alice_and_two_bobs(&server).await;
    enable_carbons(&mut laptop).await;

    phone
        .send("<message to='alice@localhost/home' type='chat' id='s1'><body>from phone</body></message>")
        .await;
    let original = alice.wait_body("from phone").await;
    assert_eq!(original.attr("from"), Some("bob@localhost/phone"));

    let copy = laptop.wait_carbon("sent", "from phone").await;
    assert_eq!(copy.attr("from"), Some("bob@localhost"), "{}", show(&copy));
    assert_eq!(
        copy.attr("to"),
        Some("bob@localhost/laptop"),
        "{}",
        show(&copy)
    );
    assert_eq!(copy.attr("type"), Some("chat"), "{}", show(&copy));
    let inner = carbon(&copy, "sent").unwrap();
    assert_eq!(inner.attr("from"), Some("bob@localhost/phone"));
    assert_eq!(inner.attr("to"), Some("alice@localhost/home"));
    assert_eq!(inner.attr("id"), Some("s1"));

    phone.nothing("no copy of its own message").await;

    // With carbons enabled on the phone too, it still gets no copy of what it sends itself.
    enable_carbons(&mut phone).await;
    phone.chat("alice@localhost/home", "again").await;
    laptop.wait_carbon("sent", "again").await;
    alice.wait_body("again").await;
    phone.nothing("no copy of its own message, enabled").await;
}

/// §4/§5: only resources that enabled carbons get copies, and none after disabling.
#[tokio::test]
async fn carbons_only_for_enabled_resources_and_none_after_disable() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut phone, mut laptop) = alice_and_two_bobs(&server).await;
    let mut tablet = Client::start(&server, "bob", "tablet", "tablet").await;
    for c in [&mut phone, &mut laptop, &mut tablet] {
        c.settle_and_clear().await;
    }
    enable_carbons(&mut laptop).await;

    alice.chat("bob@localhost/phone", "in").await;
    phone.chat("alice@localhost/home", "out").await;
    phone.wait_body("in").await;
    alice.wait_body("out").await;
    laptop.wait_carbon("received", "in").await;
    laptop.wait_carbon("sent", "out").await;
    tablet
        .nothing("a resource without carbons gets no copies")
        .await;

    disable_carbons(&mut laptop).await;
    alice.chat("bob@localhost/phone", "in2").await;
    phone.chat("alice@localhost/home", "out2").await;
    phone.wait_body("in2").await;
    alice.wait_body("out2").await;
    laptop.nothing("no copies after disable").await;
    tablet.nothing("still no copies").await;
}

/// §6 and §9: `<private/>` messages, groupchat, headline and error messages are not copied,
/// neither received nor sent. A plain eligible message sent afterwards is the first copy seen.
#[tokio::test]
async fn carbons_skip_private_groupchat_headline_and_error_messages() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut phone, mut laptop) = alice_and_two_bobs(&server).await;
    enable_carbons(&mut laptop).await;

    let not_copied = [
        "<message to='{to}' type='chat' id='p1'><body>private</body><private xmlns='urn:xmpp:carbons:2'/><no-copy xmlns='urn:xmpp:hints'/></message>",
        "<message to='{to}' type='groupchat' id='g1'><body>groupchat</body></message>",
        "<message to='{to}' type='headline' id='h1'><body>headline</body></message>",
        "<message to='{to}' type='error' id='e1'><body>error</body><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
    ];
    for template in not_copied {
        alice
            .send(&template.replace("{to}", "bob@localhost/phone"))
            .await;
        phone
            .send(&template.replace("{to}", "alice@localhost/home"))
            .await;
    }
    // Markers: the first copies laptop sees must be these.
    alice.chat("bob@localhost/phone", "marker-in").await;
    phone.chat("alice@localhost/home", "marker-out").await;
    for body in ["private", "groupchat", "headline", "error", "marker-in"] {
        phone.wait_body(body).await;
    }
    for body in ["private", "groupchat", "headline", "error", "marker-out"] {
        alice.wait_body(body).await;
    }
    laptop.wait_carbon("received", "marker-in").await;
    laptop.wait_carbon("sent", "marker-out").await;
    laptop
        .none(
            "a copy of a private, groupchat, headline or error message",
            |el| el.name() == "message",
        )
        .await;
}

/// §6.1: a normal message without a body but with a XEP-0184 receipt is copied (both ways); a
/// normal message with a body is copied; a normal message with neither is not.
#[tokio::test]
async fn carbons_copy_receipts_and_normal_messages_with_body() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut phone, mut laptop) = alice_and_two_bobs(&server).await;
    enable_carbons(&mut laptop).await;

    alice
        .send("<message to='bob@localhost/phone' id='rc1'><received xmlns='urn:xmpp:receipts' id='orig-1'/></message>")
        .await;
    let copy = laptop
        .wait("a carbon of the receipt", |el| {
            carbon(el, "received").is_some_and(|m| m.attr("id") == Some("rc1"))
        })
        .await;
    let inner = carbon(&copy, "received").unwrap();
    assert!(
        inner.has_child("received", "urn:xmpp:receipts"),
        "{}",
        show(&copy)
    );

    phone
        .send("<message to='alice@localhost/home' id='rc2'><received xmlns='urn:xmpp:receipts' id='orig-2'/></message>")
        .await;
    laptop
        .wait("a sent carbon of the receipt", |el| {
            carbon(el, "sent").is_some_and(|m| m.attr("id") == Some("rc2"))
        })
        .await;

    // Neither body nor IM payload: not copied; then a normal message with a body: copied.
    alice
        .send("<message to='bob@localhost/phone' id='nb1'><x xmlns='urn:example:other'/></message>")
        .await;
    alice
        .send("<message to='bob@localhost/phone' id='nb2'><body>normal with body</body></message>")
        .await;
    let copy = laptop.wait_carbon("received", "normal with body").await;
    assert_eq!(copy.attr("type"), None, "the type is kept: {}", show(&copy));
    laptop
        .none("a copy of a message with no body and no IM payload", |el| {
            carbon(el, "received").is_some_and(|m| m.attr("id") == Some("nb1"))
        })
        .await;
}

/// §7: a message to the bare JID delivered to both resources (equal priority) is not copied to
/// either; with a lower priority on the laptop, only the phone gets it and the laptop a copy.
#[tokio::test]
async fn carbons_bare_jid_messages_copied_only_to_resources_that_did_not_get_them() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut phone, mut laptop) = alice_and_two_bobs(&server).await;
    enable_carbons(&mut phone).await;
    enable_carbons(&mut laptop).await;

    alice.chat("bob@localhost", "to both").await;
    phone.wait_body("to both").await;
    laptop.wait_body("to both").await;
    phone.none("a carbon of a message it got", is_carbon).await;
    laptop.none("a carbon of a message it got", is_carbon).await;

    laptop.online_with("lower", Some(-1)).await;
    phone.settle_and_clear().await;
    laptop.settle_and_clear().await;
    alice.chat("bob@localhost", "to the phone").await;
    phone.wait_body("to the phone").await;
    laptop.wait_carbon("received", "to the phone").await;
    phone.none("a carbon of a message it got", is_carbon).await;
}

// ---------------------------------------------------------------------------------------------
// 2. XEP-0352 client state indication

/// §4.1: `<csi/>` is a stream feature after authentication, not before.
#[tokio::test]
async fn csi_is_a_stream_feature_after_authentication() {
    let server = server(&["bob"]);
    let mut c = Raw::connect(server.c2s).await;
    let before = c.starttls().await;
    assert!(!before.contains(CSI), "offered before auth: {before}");
    c.authenticate("SCRAM-SHA-256", "bob", PW)
        .await
        .expect("login");
    let features = c.open().await;
    assert!(
        features.contains("<csi xmlns='urn:xmpp:csi:0'/>"),
        "{features}"
    );
}

/// alice and bob, mutually subscribed, both online; everything settled.
async fn contacts(server: &TestServer) -> (Client, Client) {
    let mut alice = Client::start(server, "alice", "home", "start").await;
    let mut bob = Client::start(server, "bob", "phone", "start").await;
    mutual(&mut alice, &mut bob).await;
    (alice, bob)
}

async fn go_inactive(c: &mut Client) {
    c.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    // The server handles what a client sends in order: after the pong, the client is inactive.
    c.ping().await;
}

/// Holding: presence updates and chat-state-only messages wait while inactive; a message with a
/// body goes out at once and takes the held stanzas with it, in order, before it.
#[tokio::test]
async fn csi_holds_presence_and_chat_states_until_a_message_with_body() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut bob) = contacts(&server).await;
    go_inactive(&mut bob).await;

    alice.online("away for a bit").await;
    alice
        .send("<message to='bob@localhost/phone' type='chat' id='cs1'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    alice.ping().await;
    bob.nothing_for(HELD, "presence and chat states are held while inactive")
        .await;

    alice.chat("bob@localhost/phone", "important").await;
    let (body_seq, _) = bob.wait_body_seq("important").await;
    let (presence_seq, _) = bob
        .wait_seq("the held presence", |el| {
            available(el, "alice@localhost/home")
                && status_of(el).as_deref() == Some("away for a bit")
        })
        .await;
    let (state_seq, state) = bob
        .wait_seq("the held chat state", |el| {
            el.name() == "message" && el.has_child("composing", CHATSTATES)
        })
        .await;
    assert_eq!(state.attr("id"), Some("cs1"));
    assert!(
        presence_seq < state_seq && state_seq < body_seq,
        "held stanzas come first, in order: presence #{presence_seq}, chat state #{state_seq}, body #{body_seq}"
    );
}

/// Several presence updates from one full JID while inactive collapse to the latest (one per
/// sender); `<active/>` flushes them, before the answer to a following request (§5.1 in-order
/// processing).
#[tokio::test]
async fn csi_collapses_presence_per_sender_and_active_flushes() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut bob) = contacts(&server).await;
    let mut alice2 = Client::start(&server, "alice", "work", "work-0").await;
    bob.wait("alice/work's presence", |el| {
        available(el, "alice@localhost/work")
    })
    .await;
    bob.settle_and_clear().await;
    go_inactive(&mut bob).await;

    alice.online("home-1").await;
    alice2.online("work-1").await;
    alice.online("home-2").await;
    alice.online("home-3").await;
    alice.ping().await;
    alice2.ping().await;
    bob.nothing_for(HELD, "presence is held while inactive")
        .await;

    bob.send(&format!("<active xmlns='{CSI}'/>")).await;
    let pong = bob.ping().await;
    bob.settle().await;
    let presences: Vec<(u64, String, Option<String>)> = bob
        .queue
        .iter()
        .filter(|g| presence_from_account(&g.el, "alice@localhost"))
        .map(|g| {
            (
                g.seq,
                g.el.attr("from").unwrap_or_default().to_string(),
                status_of(&g.el),
            )
        })
        .collect();
    let home: Vec<_> = presences
        .iter()
        .filter(|p| p.1 == "alice@localhost/home")
        .collect();
    let work: Vec<_> = presences
        .iter()
        .filter(|p| p.1 == "alice@localhost/work")
        .collect();
    assert_eq!(home.len(), 1, "one presence per sender: {presences:?}");
    assert_eq!(home[0].2.as_deref(), Some("home-3"), "{presences:?}");
    assert_eq!(work.len(), 1, "one presence per sender: {presences:?}");
    assert_eq!(work[0].2.as_deref(), Some("work-1"), "{presences:?}");
    assert!(
        presences.iter().all(|p| p.0 < pong),
        "flushed on <active/> before the pong (#{pong}): {presences:?}"
    );

    // Active again: presence flows at once.
    alice.online("home-4").await;
    bob.wait("a live presence update", |el| {
        available(el, "alice@localhost/home") && status_of(el).as_deref() == Some("home-4")
    })
    .await;
}

/// A subscription request is not noise: it reaches an inactive client at once.
#[tokio::test]
async fn csi_delivers_subscription_requests_while_inactive() {
    let server = server(&["bob", "carol"]);
    let mut bob = Client::start(&server, "bob", "phone", "start").await;
    let mut carol = Client::start(&server, "carol", "home", "start").await;
    go_inactive(&mut bob).await;
    carol
        .send("<presence type='subscribe' to='bob@localhost'/>")
        .await;
    bob.wait("the subscription request", |el| {
        presence_is(el, Some("subscribe"), "carol@localhost")
    })
    .await;
}

/// An unknown element in the CSI namespace ends the stream with `<unsupported-stanza-type/>`.
#[tokio::test]
async fn csi_unknown_element_closes_the_stream() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    bob.send(&format!("<sleepy xmlns='{CSI}'/>")).await;
    let closed = bob.raw.expect_closed().await;
    assert!(closed.contains("<stream:error>"), "{closed}");
    assert!(
        closed.contains(&format!(
            "<unsupported-stanza-type xmlns='{STREAM_ERRORS}'/>"
        )),
        "{closed}"
    );
}

/// Enables XEP-0198 with resumption; returns the SM-ID.
async fn enable_resumption(c: &mut Client) -> String {
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let enabled = c.wait("<enabled/>", |el| el.is("enabled", SM)).await;
    enabled.attr("id").expect("an SM-ID").to_string()
}

/// Resumes `previd` on a new connection; panics unless `<resumed/>`.
async fn resume(server: &TestServer, user: &str, resource: &str, previd: &str) -> Client {
    let mut raw = Raw::connect(server.c2s).await;
    raw.starttls().await;
    raw.authenticate("SCRAM-SHA-256", user, PW)
        .await
        .expect("login");
    raw.open().await;
    raw.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='0'/>"))
        .await;
    let answer = raw.expect_one_of(&["</failed>", "<resumed"]).await;
    assert!(answer.contains("<resumed"), "{answer}");
    raw.expect("/>").await;
    Client::from_raw(raw, &full(user, resource))
}

/// XEP-0352 §5.2: a resumed stream starts active, whatever the old connection said.
#[tokio::test]
async fn csi_resumed_stream_starts_active() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut bob) = contacts(&server).await;
    let id = enable_resumption(&mut bob).await;
    go_inactive(&mut bob).await;

    let mut resumed = resume(&server, "bob", "phone", &id).await;
    drop(bob);
    resumed.ping().await;
    alice.online("after resumption").await;
    resumed
        .wait("a live presence update on the resumed stream", |el| {
            available(el, "alice@localhost/home")
                && status_of(el).as_deref() == Some("after resumption")
        })
        .await;
}

/// XEP-0198: what was held for an inactive client is not lost when its session is resumed.
#[tokio::test]
async fn csi_held_stanzas_survive_stream_resumption() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut bob) = contacts(&server).await;
    let id = enable_resumption(&mut bob).await;
    go_inactive(&mut bob).await;
    alice.online("while asleep").await;
    alice.ping().await;
    bob.nothing_for(HELD, "held while inactive").await;

    let mut resumed = resume(&server, "bob", "phone", &id).await;
    drop(bob);
    resumed
        .wait("the presence held for the old connection", |el| {
            available(el, "alice@localhost/home")
                && status_of(el).as_deref() == Some("while asleep")
        })
        .await;
}

// ---------------------------------------------------------------------------------------------
// 3. XEP-0191 blocking command

/// The blocklist's JIDs (and marks the resource as interested in pushes).
async fn blocklist(c: &mut Client) -> Vec<String> {
    let reply = c
        .iq("get", None, &format!("<blocklist xmlns='{BLOCKING}'/>"))
        .await;
    assert_result(&reply);
    let list = reply
        .get_child("blocklist", BLOCKING)
        .unwrap_or_else(|| panic!("no <blocklist/>: {}", show(&reply)));
    let mut jids: Vec<String> = list
        .children()
        .filter(|c| c.is("item", BLOCKING))
        .filter_map(|i| i.attr("jid").map(String::from))
        .collect();
    jids.sort();
    jids
}

fn items(jids: &[&str]) -> String {
    jids.iter()
        .map(|j| format!("<item jid='{j}'/>"))
        .collect::<String>()
}

async fn block(c: &mut Client, jids: &[&str]) -> Element {
    c.iq(
        "set",
        None,
        &format!("<block xmlns='{BLOCKING}'>{}</block>", items(jids)),
    )
    .await
}

async fn unblock(c: &mut Client, jids: &[&str]) -> Element {
    let payload = if jids.is_empty() {
        format!("<unblock xmlns='{BLOCKING}'/>")
    } else {
        format!("<unblock xmlns='{BLOCKING}'>{}</unblock>", items(jids))
    };
    c.iq("set", None, &payload).await
}

/// A block or unblock push: its kind and item JIDs.
fn blocking_push(el: &Element) -> Option<(String, Vec<String>)> {
    if el.name() != "iq" || el.attr("type") != Some("set") {
        return None;
    }
    let payload = el
        .children()
        .find(|c| c.ns() == BLOCKING && matches!(c.name(), "block" | "unblock"))?;
    let jids = payload
        .children()
        .filter(|c| c.is("item", BLOCKING))
        .filter_map(|i| i.attr("jid").map(String::from))
        .collect();
    Some((payload.name().to_string(), jids))
}

/// Waits for a blocking push of `kind` and returns its JIDs; checks its envelope.
async fn wait_push(c: &mut Client, kind: &str) -> Vec<String> {
    let iq = c
        .wait(&format!("a <{kind}/> push"), |el| {
            blocking_push(el).is_some_and(|(k, _)| k == kind)
        })
        .await;
    assert_eq!(iq.attr("to"), Some(c.jid.as_str()), "{}", show(&iq));
    assert!(iq.attr("id").is_some(), "{}", show(&iq));
    let from = iq.attr("from");
    assert!(
        from.is_none() || from == Some(c.bare.as_str()),
        "a push comes from the account: {}",
        show(&iq)
    );
    blocking_push(&iq).unwrap().1
}

/// §3.2: a fresh account's blocklist is an empty `<blocklist/>`.
#[tokio::test]
async fn blocklist_of_a_new_account_is_empty() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    let reply = bob
        .iq("get", None, &format!("<blocklist xmlns='{BLOCKING}'/>"))
        .await;
    assert_result(&reply);
    let list = reply.get_child("blocklist", BLOCKING).expect("blocklist");
    assert_eq!(list.children().count(), 0, "{}", show(&reply));
}

/// §3.3: block answers a result and pushes the blocked items to the resources that fetched the
/// blocklist, and to no other.
#[tokio::test]
async fn block_pushes_to_resources_that_fetched_the_blocklist() {
    let server = server(&["alice", "bob"]);
    let mut phone = Client::bound(&server, "bob", "phone").await;
    let mut laptop = Client::bound(&server, "bob", "laptop").await;
    let mut tablet = Client::bound(&server, "bob", "tablet").await;
    assert!(blocklist(&mut phone).await.is_empty());
    assert!(blocklist(&mut laptop).await.is_empty());

    let reply = block(&mut phone, &["alice@localhost"]).await;
    assert_result(&reply);
    assert_eq!(reply.children().count(), 0, "{}", show(&reply));
    assert_eq!(wait_push(&mut phone, "block").await, ["alice@localhost"]);
    assert_eq!(wait_push(&mut laptop, "block").await, ["alice@localhost"]);
    tablet
        .nothing("no push to a resource that never fetched the blocklist")
        .await;
    assert_eq!(blocklist(&mut tablet).await, ["alice@localhost"]);
    assert_eq!(blocklist(&mut laptop).await, ["alice@localhost"]);
}

/// §3.3: from a blocked JID, messages and iq requests bounce with `<service-unavailable/>` and
/// reach nobody.
#[tokio::test]
async fn blocked_jid_messages_and_iq_requests_bounce_with_service_unavailable() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "home", "start").await;
    let mut bob = Client::start(&server, "bob", "phone", "start").await;
    subscribe_to(&mut alice, &mut bob).await;
    // Before blocking, bob's resource answers alice's iq (she may see his presence).
    let id = alice.next_id("iq");
    alice
        .send(&format!(
            "<iq type='get' id='{id}' to='bob@localhost/phone'><query xmlns='jabber:iq:version'/></iq>"
        ))
        .await;
    let request = bob
        .wait("alice's iq", |el| el.attr("id") == Some(id.as_str()))
        .await;
    bob.answer(&request).await;
    let reply = alice
        .wait("bob's answer", |el| el.attr("id") == Some(id.as_str()))
        .await;
    assert_result(&reply);
    assert_result(&block(&mut bob, &["alice@localhost"]).await);
    alice.settle_and_clear().await;
    bob.settle_and_clear().await;

    alice.chat("bob@localhost", "to bare").await;
    let bounce = alice.wait("the bounce", |el| el.name() == "message").await;
    assert_error(&bounce, "service-unavailable");
    alice.chat("bob@localhost/phone", "to full").await;
    let bounce = alice.wait("the bounce", |el| el.name() == "message").await;
    assert_error(&bounce, "service-unavailable");
    let reply = alice
        .iq(
            "get",
            Some("bob@localhost/phone"),
            "<query xmlns='jabber:iq:version'/>",
        )
        .await;
    assert_error(&reply, "service-unavailable");
    bob.nothing("nothing from a blocked JID").await;
}

/// §3.3: iq results and errors, and error messages, from a blocked JID are dropped silently: the
/// server "MUST NOT deliver any XML stanzas from the JID to the user".
#[tokio::test]
async fn blocked_jid_results_and_errors_are_dropped() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "home", "start").await;
    let mut bob = Client::start(&server, "bob", "phone", "start").await;
    assert_result(&block(&mut bob, &["alice@localhost"]).await);
    bob.settle_and_clear().await;
    alice
        .send("<iq type='result' id='r1' to='bob@localhost/phone'/>")
        .await;
    alice
        .send("<iq type='error' id='e1' to='bob@localhost/phone'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        .await;
    alice
        .send("<message type='error' id='e2' to='bob@localhost/phone'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    alice.ping().await;
    bob.nothing("no stanza of any type from a blocked JID")
        .await;
    alice.nothing("and no error back").await;
}

/// §3.3: presence from a blocked JID — broadcast, directed, or a subscription request — is dropped
/// without an error; the request is not stored either. Blocking a JID that may see the user's
/// presence sends it unavailable presence from each available resource, and the user's presence
/// no longer reaches it.
#[tokio::test]
async fn blocking_a_contact_silences_presence_both_ways() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut phone) = contacts(&server).await;
    let mut laptop = Client::start(&server, "bob", "laptop", "laptop").await;
    alice
        .wait("laptop's presence", |el| {
            available(el, "bob@localhost/laptop")
        })
        .await;
    for c in [&mut alice, &mut phone, &mut laptop] {
        c.settle_and_clear().await;
    }

    assert_result(&block(&mut phone, &["alice@localhost"]).await);
    alice
        .wait("unavailable from bob/phone", |el| {
            unavailable(el, "bob@localhost/phone")
        })
        .await;
    alice
        .wait("unavailable from bob/laptop", |el| {
            unavailable(el, "bob@localhost/laptop")
        })
        .await;
    phone.settle_and_clear().await;
    laptop.settle_and_clear().await;

    alice.online("can you see me").await;
    alice
        .send("<presence to='bob@localhost/phone'><status>directed</status></presence>")
        .await;
    alice.ping().await;
    phone.nothing("no presence from a blocked contact").await;
    laptop.nothing("no presence from a blocked contact").await;
    alice
        .none("an error for presence to a blocker", |el| {
            el.attr("type") == Some("error")
        })
        .await;
    alice.clear();

    phone.online("bob moved").await;
    alice
        .none("bob's presence after he blocked her", |el| {
            presence_from_account(el, "bob@localhost")
        })
        .await;

    // A new resource of bob neither announces itself to alice nor learns her presence.
    let mut tablet = Client::start(&server, "bob", "tablet", "tablet").await;
    tablet
        .none("alice's presence on a new resource", |el| {
            presence_from_account(el, "alice@localhost")
        })
        .await;
    alice
        .none("the new resource's presence", |el| {
            presence_from_account(el, "bob@localhost")
        })
        .await;
}

/// §3.3: "the user's server MUST NOT deliver any XML stanzas from the JID to the user" once it is
/// blocked — including messages that were stored offline before the block.
#[tokio::test]
async fn offline_messages_from_a_blocked_jid_are_not_delivered_after_the_block() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, "alice", "home", "start").await;
    let mut carol = Client::start(&server, "carol", "home", "start").await;
    alice.chat("bob@localhost", "stored before the block").await;
    carol.chat("bob@localhost", "stored from carol").await;
    alice.ping().await;
    carol.ping().await;
    alice
        .none("an error for a message stored offline", |el| {
            el.attr("type") == Some("error")
        })
        .await;

    let mut bob = Client::bound(&server, "bob", "phone").await;
    assert_result(&block(&mut bob, &["alice@localhost"]).await);
    bob.roster_get().await;
    bob.online("back").await;
    bob.wait_body("stored from carol").await;
    bob.none("a stored message from the blocked JID", |el| {
        body_of(el).as_deref() == Some("stored before the block")
    })
    .await;
}

/// §3.3 and the schema of §10: a `<block/>` push carries at least one item, so blocking a JID that
/// is already blocked pushes no empty `<block/>`.
#[tokio::test]
async fn reblocking_a_blocked_jid_pushes_no_empty_block() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    blocklist(&mut bob).await;
    assert_result(&block(&mut bob, &["alice@localhost"]).await);
    assert_eq!(wait_push(&mut bob, "block").await, ["alice@localhost"]);
    assert_result(&block(&mut bob, &["alice@localhost"]).await);
    bob.none("an empty <block/> push", |el| {
        blocking_push(el).is_some_and(|(kind, jids)| kind == "block" && jids.is_empty())
    })
    .await;
    assert_eq!(blocklist(&mut bob).await, ["alice@localhost"]);
}

/// §3.4/§3.5: an empty `<unblock/>` push means "everything was unblocked", so unblocking a JID
/// that is not on the list must not be pushed as one.
#[tokio::test]
async fn unblocking_a_jid_not_on_the_list_is_not_pushed_as_unblock_all() {
    let server = server(&["bob"]);
    let mut phone = Client::bound(&server, "bob", "phone").await;
    let mut laptop = Client::bound(&server, "bob", "laptop").await;
    blocklist(&mut phone).await;
    blocklist(&mut laptop).await;
    assert_result(&block(&mut phone, &["alice@localhost"]).await);
    wait_push(&mut laptop, "block").await;

    assert_result(&unblock(&mut phone, &["carol@localhost"]).await);
    laptop
        .none("an unblock-all push for a JID that was not blocked", |el| {
            blocking_push(el).is_some_and(|(kind, jids)| kind == "unblock" && jids.is_empty())
        })
        .await;
    assert_eq!(blocklist(&mut laptop).await, ["alice@localhost"]);
}

/// A JID named twice in one block is listed once.
#[tokio::test]
async fn a_jid_blocked_twice_in_one_request_is_listed_once() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    blocklist(&mut bob).await;
    assert_result(&block(&mut bob, &["alice@localhost", "alice@localhost"]).await);
    assert_eq!(wait_push(&mut bob, "block").await, ["alice@localhost"]);
    assert_eq!(blocklist(&mut bob).await, ["alice@localhost"]);
}

/// §3.3: a subscription request from a blocked JID is dropped without an error and is not kept
/// for later.
#[tokio::test]
async fn blocked_subscription_request_is_dropped_and_not_stored() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "home", "start").await;
    let mut bob = Client::start(&server, "bob", "phone", "start").await;
    assert_result(&block(&mut bob, &["alice@localhost"]).await);
    bob.settle_and_clear().await;

    alice
        .send("<presence type='subscribe' to='bob@localhost'/>")
        .await;
    alice.ping().await;
    bob.none("a subscription request from a blocked JID", |el| {
        el.name() == "presence"
    })
    .await;
    alice
        .none("an error for the request", |el| {
            el.attr("type") == Some("error")
        })
        .await;

    // A new resource of bob is not given the request either, and his roster does not list alice.
    let mut laptop = Client::bound(&server, "bob", "laptop").await;
    let roster = laptop.roster_get().await;
    assert!(
        !roster
            .children()
            .any(|i| i.attr("jid") == Some("alice@localhost")),
        "{}",
        show(&roster)
    );
    laptop.online("laptop").await;
    laptop
        .none("a stored subscription request", |el| {
            presence_is(el, Some("subscribe"), "alice@localhost")
        })
        .await;
}

/// §3.3: what the user sends to a blocked JID is not routed; messages and iq requests come back
/// with `<not-acceptable/>` and `<blocked xmlns='urn:xmpp:blocking:errors'/>`.
#[tokio::test]
async fn sending_to_a_blocked_jid_is_not_acceptable() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "home", "start").await;
    let mut bob = Client::start(&server, "bob", "phone", "start").await;
    assert_result(&block(&mut bob, &["alice@localhost"]).await);
    bob.settle_and_clear().await;
    alice.settle_and_clear().await;

    bob.chat("alice@localhost", "are you there").await;
    let bounce = bob.wait("the bounce", |el| el.name() == "message").await;
    assert_error(&bounce, "not-acceptable");
    let error = bounce.get_child("error", CLIENT).unwrap();
    assert!(
        error.has_child("blocked", BLOCKING_ERRORS),
        "{}",
        show(&bounce)
    );

    let reply = bob
        .iq(
            "get",
            Some("alice@localhost"),
            &format!("<vCard xmlns='{VCARD}'/>"),
        )
        .await;
    assert_error(&reply, "not-acceptable");
    assert!(
        reply
            .get_child("error", CLIENT)
            .unwrap()
            .has_child("blocked", BLOCKING_ERRORS),
        "{}",
        show(&reply)
    );
    alice.nothing("nothing from someone who blocks her").await;
}

/// §3.3: block needs at least one item (`<bad-request/>`); an invalid JID is `<jid-malformed/>`;
/// neither changes the list.
#[tokio::test]
async fn block_errors() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    blocklist(&mut bob).await;
    assert_error(&block(&mut bob, &[]).await, "bad-request");
    let reply = bob
        .iq(
            "set",
            None,
            &format!("<block xmlns='{BLOCKING}'><item jid='alice@localhost'/><item jid='@localhost'/></block>"),
        )
        .await;
    assert_error(&reply, "jid-malformed");
    bob.none("a push for a failed block", |el| {
        blocking_push(el).is_some()
    })
    .await;
    assert!(blocklist(&mut bob).await.is_empty());
}

/// §6: an item with a full JID blocks that resource only.
#[tokio::test]
async fn blocking_a_full_jid_blocks_only_that_resource() {
    let server = server(&["alice", "bob"]);
    let mut phone = Client::start(&server, "alice", "phone", "a-phone").await;
    let mut laptop = Client::start(&server, "alice", "laptop", "a-laptop").await;
    let mut bob = Client::start(&server, "bob", "home", "start").await;
    assert_result(&block(&mut bob, &["alice@localhost/phone"]).await);
    assert_eq!(blocklist(&mut bob).await, ["alice@localhost/phone"]);
    bob.settle_and_clear().await;
    phone.settle_and_clear().await;

    phone.chat("bob@localhost", "from the phone").await;
    let bounce = phone.wait("the bounce", |el| el.name() == "message").await;
    assert_error(&bounce, "service-unavailable");
    laptop.chat("bob@localhost", "from the laptop").await;
    let got = bob.wait_body("from the laptop").await;
    assert_eq!(got.attr("from"), Some("alice@localhost/laptop"));
    bob.none("the blocked resource's message", |el| {
        body_of(el).as_deref() == Some("from the phone")
    })
    .await;
}

/// alice/phone subscribed to bob/home, alice/laptop online too; everything settled.
async fn subscriber_on_two_resources(server: &TestServer) -> (Client, Client, Client) {
    let mut phone = Client::start(server, "alice", "phone", "a-phone").await;
    let mut bob = Client::start(server, "bob", "home", "start").await;
    subscribe_to(&mut phone, &mut bob).await;
    let mut laptop = Client::start(server, "alice", "laptop", "a-laptop").await;
    laptop
        .wait("bob's presence", |el| available(el, "bob@localhost/home"))
        .await;
    for c in [&mut phone, &mut laptop, &mut bob] {
        c.settle_and_clear().await;
    }
    (phone, laptop, bob)
}

/// §3.3 with §6: blocking a subscriber's full JID sends that resource (which was allowed to see
/// the user's presence) unavailable presence, and only that resource.
#[tokio::test]
async fn blocking_a_full_jid_sends_that_resource_unavailable() {
    let server = server(&["alice", "bob"]);
    let (mut phone, mut laptop, mut bob) = subscriber_on_two_resources(&server).await;
    assert_result(&block(&mut bob, &["alice@localhost/phone"]).await);
    phone
        .wait("unavailable from bob when he blocked the resource", |el| {
            unavailable(el, "bob@localhost/home")
        })
        .await;
    laptop
        .none("unavailable on the resource that is not blocked", |el| {
            unavailable(el, "bob@localhost/home")
        })
        .await;
}

/// §3.3 with §6: after blocking a subscriber's full JID, the user's presence still reaches the
/// subscriber's other resources but is not routed to the blocked one.
#[tokio::test]
async fn presence_broadcast_skips_a_blocked_full_jid() {
    let server = server(&["alice", "bob"]);
    let (mut phone, mut laptop, mut bob) = subscriber_on_two_resources(&server).await;
    assert_result(&block(&mut bob, &["alice@localhost/phone"]).await);
    bob.online("after the block").await;
    laptop
        .wait("bob's update", |el| {
            available(el, "bob@localhost/home")
                && status_of(el).as_deref() == Some("after the block")
        })
        .await;
    phone
        .none("bob's presence on the blocked resource", |el| {
            available(el, "bob@localhost/home")
        })
        .await;
}

/// §6: a domain item blocks every account of that domain.
#[tokio::test]
async fn blocking_a_domain_blocks_its_accounts() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, "alice", "home", "start").await;
    let mut carol = Client::start(&server, "carol", "home", "start").await;
    let mut bob = Client::start(&server, "bob", "phone", "start").await;
    assert_result(&block(&mut bob, &["localhost"]).await);
    bob.settle_and_clear().await;
    for c in [&mut alice, &mut carol] {
        c.chat("bob@localhost", "hi bob").await;
        let bounce = c.wait("the bounce", |el| el.name() == "message").await;
        assert_error(&bounce, "service-unavailable");
    }
    bob.nothing("nothing from a blocked domain").await;
    // The server itself still answers.
    bob.ping().await;
}

/// The privacy-list note of §5 ("an implementation MUST NOT block communications from one of a
/// user's resources to another"): a domain block does not cut the user off from its own account.
#[tokio::test]
async fn blocking_the_own_domain_does_not_block_the_own_account() {
    let server = server(&["bob"]);
    let mut phone = Client::start(&server, "bob", "phone", "phone").await;
    let mut laptop = Client::start(&server, "bob", "laptop", "laptop").await;
    assert_result(&block(&mut phone, &["localhost"]).await);
    phone.settle_and_clear().await;
    laptop.settle_and_clear().await;

    phone.chat("bob@localhost/laptop", "note to self").await;
    laptop.wait_body("note to self").await;
    phone
        .none("an error for a message to the own resource", |el| {
            el.attr("type") == Some("error")
        })
        .await;
    let reply = phone
        .iq(
            "get",
            Some("bob@localhost"),
            &format!("<vCard xmlns='{VCARD}'/>"),
        )
        .await;
    assert_result(&reply);
}

/// §3.4: unblocking pushes the item, lets stanzas through again, and sends the user's current
/// presence to a contact allowed to see it.
#[tokio::test]
async fn unblock_pushes_restores_communication_and_presence() {
    let server = server(&["alice", "bob"]);
    let (mut alice, mut phone) = contacts(&server).await;
    let mut laptop = Client::start(&server, "bob", "laptop", "laptop").await;
    blocklist(&mut laptop).await;
    assert_result(&block(&mut phone, &["alice@localhost", "carol@localhost"]).await);
    for c in [&mut alice, &mut phone, &mut laptop] {
        c.settle_and_clear().await;
    }

    assert_result(&unblock(&mut phone, &["alice@localhost"]).await);
    assert_eq!(wait_push(&mut laptop, "unblock").await, ["alice@localhost"]);
    alice
        .wait("bob/phone's current presence", |el| {
            available(el, "bob@localhost/phone")
        })
        .await;
    alice
        .wait("bob/laptop's current presence", |el| {
            available(el, "bob@localhost/laptop")
        })
        .await;
    assert_eq!(blocklist(&mut phone).await, ["carol@localhost"]);

    alice.chat("bob@localhost/phone", "back again").await;
    phone.wait_body("back again").await;
    phone.chat("alice@localhost", "welcome back").await;
    alice.wait_body("welcome back").await;
    alice.online("visible").await;
    phone
        .wait("alice's presence", |el| {
            available(el, "alice@localhost/home") && status_of(el).as_deref() == Some("visible")
        })
        .await;
}

/// §3.5: an empty `<unblock/>` clears the list and is pushed as an empty `<unblock/>`.
#[tokio::test]
async fn unblock_all_clears_the_list() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, "alice", "home", "start").await;
    let mut carol = Client::start(&server, "carol", "home", "start").await;
    let mut bob = Client::start(&server, "bob", "phone", "start").await;
    blocklist(&mut bob).await;
    assert_result(&block(&mut bob, &["alice@localhost", "carol@localhost"]).await);
    wait_push(&mut bob, "block").await;

    assert_result(&unblock(&mut bob, &[]).await);
    let pushed = wait_push(&mut bob, "unblock").await;
    assert!(pushed.is_empty(), "unblock-all push is empty: {pushed:?}");
    assert!(blocklist(&mut bob).await.is_empty());
    alice.chat("bob@localhost", "from alice").await;
    carol.chat("bob@localhost", "from carol").await;
    bob.wait_body("from alice").await;
    bob.wait_body("from carol").await;
}

/// §3.3: "the duration of the block ... applies across sessions": the list survives a restart.
#[tokio::test]
async fn blocklist_survives_a_restart() {
    let mut server = server(&["alice", "bob"]);
    {
        let mut bob = Client::bound(&server, "bob", "phone").await;
        assert_result(&block(&mut bob, &["alice@localhost"]).await);
    }
    server.terminate();
    let server = TestServer::restart(server);
    let mut bob = Client::start(&server, "bob", "phone", "start").await;
    assert_eq!(blocklist(&mut bob).await, ["alice@localhost"]);
    let mut alice = Client::start(&server, "alice", "home", "start").await;
    alice.chat("bob@localhost", "still blocked?").await;
    let bounce = alice.wait("the bounce", |el| el.name() == "message").await;
    assert_error(&bounce, "service-unavailable");
}

/// The blocklist, the roster and private storage belong to their owner: queries addressed to
/// another account's bare JID are `<forbidden/>`.
#[tokio::test]
async fn owner_only_queries_to_another_account_are_forbidden() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::bound(&server, "alice", "home").await;
    let bob = bare("bob");
    let cases = [
        ("get", format!("<blocklist xmlns='{BLOCKING}'/>")),
        (
            "set",
            format!("<block xmlns='{BLOCKING}'><item jid='alice@localhost'/></block>"),
        ),
        ("get", format!("<query xmlns='{ROSTER}'/>")),
        (
            "set",
            format!("<query xmlns='{ROSTER}'><item jid='carol@localhost'/></query>"),
        ),
        (
            "get",
            format!("<query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'/></query>"),
        ),
        (
            "set",
            format!("<query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'/></query>"),
        ),
    ];
    for (kind, payload) in &cases {
        let reply = alice.iq(kind, Some(&bob), payload).await;
        assert_error(&reply, "forbidden");
    }
    // Nothing changed for bob.
    let mut bob_c = Client::bound(&server, "bob", "phone").await;
    assert!(blocklist(&mut bob_c).await.is_empty());
    assert_eq!(bob_c.roster_get().await.children().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 4. XEP-0054 vcard-temp

async fn vcard_get(c: &mut Client, to: Option<&str>) -> Element {
    let reply = c.iq("get", to, &format!("<vCard xmlns='{VCARD}'/>")).await;
    assert_result(&reply);
    reply
        .get_child("vCard", VCARD)
        .unwrap_or_else(|| panic!("no <vCard/>: {}", show(&reply)))
        .clone()
}

fn vcard_field(vcard: &Element, name: &str) -> Option<String> {
    vcard.get_child(name, VCARD).map(|f| f.text())
}

const BOB_VCARD: &str = "<vCard xmlns='vcard-temp'><FN>Bob</FN><NICKNAME>b</NICKNAME></vCard>";

/// §3.1: no vCard yet is an empty `<vCard/>`; §3.2: a set (without `to`, or to the own bare JID)
/// replaces it; §3.3: anyone reads it at the owner's bare JID.
#[tokio::test]
async fn vcard_set_get_and_read_by_others() {
    let server = server(&["alice", "bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    let mut alice = Client::bound(&server, "alice", "home").await;
    let empty = vcard_get(&mut bob, None).await;
    assert_eq!(empty.children().count(), 0, "{}", show(&empty));

    let reply = bob.iq("set", None, BOB_VCARD).await;
    assert_result(&reply);
    let mine = vcard_get(&mut bob, None).await;
    assert_eq!(vcard_field(&mine, "FN").as_deref(), Some("Bob"));
    assert_eq!(vcard_field(&mine, "NICKNAME").as_deref(), Some("b"));

    let reply = alice
        .iq(
            "get",
            Some(&bare("bob")),
            &format!("<vCard xmlns='{VCARD}'/>"),
        )
        .await;
    assert_result(&reply);
    assert_eq!(
        reply.attr("from"),
        Some("bob@localhost"),
        "{}",
        show(&reply)
    );
    let theirs = reply.get_child("vCard", VCARD).expect("vCard");
    assert_eq!(vcard_field(theirs, "FN").as_deref(), Some("Bob"));
    assert_eq!(vcard_field(theirs, "NICKNAME").as_deref(), Some("b"));

    // To the own bare JID: the whole vCard is replaced.
    let reply = bob
        .iq(
            "set",
            Some(&bare("bob")),
            "<vCard xmlns='vcard-temp'><FN>Robert</FN></vCard>",
        )
        .await;
    assert_result(&reply);
    let mine = vcard_get(&mut bob, Some(&bare("bob"))).await;
    assert_eq!(vcard_field(&mine, "FN").as_deref(), Some("Robert"));
    assert_eq!(vcard_field(&mine, "NICKNAME"), None, "{}", show(&mine));
    let alice_view = vcard_get(&mut alice, Some(&bare("bob"))).await;
    assert_eq!(vcard_field(&alice_view, "FN").as_deref(), Some("Robert"));

    // Alice's own vCard is still empty.
    let hers = vcard_get(&mut alice, None).await;
    assert_eq!(hers.children().count(), 0, "{}", show(&hers));
}

/// §3.2: a set on another user's vCard is `<forbidden/>` and changes nothing.
#[tokio::test]
async fn vcard_set_on_another_account_is_forbidden() {
    let server = server(&["alice", "bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    let mut alice = Client::bound(&server, "alice", "home").await;
    assert_result(&bob.iq("set", None, BOB_VCARD).await);
    let reply = alice
        .iq(
            "set",
            Some(&bare("bob")),
            "<vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard>",
        )
        .await;
    assert_error(&reply, "forbidden");
    let vcard = vcard_get(&mut bob, None).await;
    assert_eq!(vcard_field(&vcard, "FN").as_deref(), Some("Bob"));
    assert_eq!(vcard_field(&vcard, "NICKNAME").as_deref(), Some("b"));
}

/// A stored vCard survives a restart.
#[tokio::test]
async fn vcard_survives_a_restart() {
    let mut server = server(&["bob"]);
    {
        let mut bob = Client::bound(&server, "bob", "phone").await;
        assert_result(&bob.iq("set", None, BOB_VCARD).await);
    }
    server.terminate();
    let server = TestServer::restart(server);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    let vcard = vcard_get(&mut bob, None).await;
    assert_eq!(vcard_field(&vcard, "FN").as_deref(), Some("Bob"));
    assert_eq!(vcard_field(&vcard, "NICKNAME").as_deref(), Some("b"));
}

/// A vcard-temp query whose payload is not `<vCard/>` is `<bad-request/>`.
#[tokio::test]
async fn vcard_with_wrong_payload_is_bad_request() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    let reply = bob
        .iq(
            "set",
            None,
            "<vcard xmlns='vcard-temp'><FN>Bob</FN></vcard>",
        )
        .await;
    assert_error(&reply, "bad-request");
    let reply = bob.iq("get", None, "<card xmlns='vcard-temp'/>").await;
    assert_error(&reply, "bad-request");
    let vcard = vcard_get(&mut bob, None).await;
    assert_eq!(vcard.children().count(), 0, "{}", show(&vcard));
}

// ---------------------------------------------------------------------------------------------
// 5. XEP-0049 private XML storage

const BOOKMARKS: &str = "<storage xmlns='storage:bookmarks'><conference jid='room@conference.localhost' name='R'/></storage>";

async fn private_get(c: &mut Client, child: &str) -> Element {
    let reply = c
        .iq(
            "get",
            None,
            &format!("<query xmlns='{PRIVATE}'>{child}</query>"),
        )
        .await;
    assert_result(&reply);
    let query = reply
        .get_child("query", PRIVATE)
        .unwrap_or_else(|| panic!("no <query/>: {}", show(&reply)));
    let children: Vec<&Element> = query.children().collect();
    assert_eq!(children.len(), 1, "{}", show(&reply));
    children[0].clone()
}

/// §2.3: a set stores the element under its namespace; a get returns it; an unknown namespace
/// comes back as the empty element asked for.
#[tokio::test]
async fn private_set_then_get_returns_the_stored_element() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    let reply = bob
        .iq(
            "set",
            None,
            &format!("<query xmlns='{PRIVATE}'>{BOOKMARKS}</query>"),
        )
        .await;
    assert_result(&reply);

    let stored = private_get(&mut bob, "<storage xmlns='storage:bookmarks'/>").await;
    assert!(
        stored.is("storage", "storage:bookmarks"),
        "{}",
        show(&stored)
    );
    let conference = stored
        .get_child("conference", "storage:bookmarks")
        .unwrap_or_else(|| panic!("{}", show(&stored)));
    assert_eq!(conference.attr("jid"), Some("room@conference.localhost"));
    assert_eq!(conference.attr("name"), Some("R"));

    let unknown = private_get(&mut bob, "<prefs xmlns='urn:example:prefs'/>").await;
    assert!(
        unknown.is("prefs", "urn:example:prefs"),
        "{}",
        show(&unknown)
    );
    assert_eq!(unknown.children().count(), 0, "{}", show(&unknown));

    // Also addressed to the own bare JID.
    let reply = bob
        .iq(
            "get",
            Some(&bare("bob")),
            &format!("<query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'/></query>"),
        )
        .await;
    assert_result(&reply);
    assert!(
        reply
            .get_child("query", PRIVATE)
            .and_then(|q| q.get_child("storage", "storage:bookmarks"))
            .is_some_and(|s| s.has_child("conference", "storage:bookmarks")),
        "{}",
        show(&reply)
    );
}

/// §2.3: reserved namespaces are `<not-acceptable/>`; a query without a child is `<bad-request/>`.
#[tokio::test]
async fn private_rejects_reserved_namespaces_and_empty_queries() {
    let server = server(&["bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    for (kind, child) in [
        ("set", "<data xmlns='jabber:client'>x</data>"),
        ("get", "<data xmlns='jabber:client'/>"),
        ("set", "<data>x</data>"),
        ("get", "<data xmlns='jabber:iq:private'/>"),
    ] {
        let reply = bob
            .iq(
                kind,
                None,
                &format!("<query xmlns='{PRIVATE}'>{child}</query>"),
            )
            .await;
        assert_error(&reply, "not-acceptable");
    }
    for kind in ["get", "set"] {
        let reply = bob
            .iq(kind, None, &format!("<query xmlns='{PRIVATE}'/>"))
            .await;
        assert_error(&reply, "bad-request");
    }
}

/// §2.3 and §4: each user has their own storage, and another user's is `<forbidden/>`.
#[tokio::test]
async fn private_storage_is_per_user() {
    let server = server(&["alice", "bob"]);
    let mut bob = Client::bound(&server, "bob", "phone").await;
    let mut alice = Client::bound(&server, "alice", "home").await;
    assert_result(
        &bob.iq(
            "set",
            None,
            &format!("<query xmlns='{PRIVATE}'>{BOOKMARKS}</query>"),
        )
        .await,
    );
    let hers = private_get(&mut alice, "<storage xmlns='storage:bookmarks'/>").await;
    assert_eq!(hers.children().count(), 0, "{}", show(&hers));

    let reply = alice
        .iq(
            "get",
            Some(&bare("bob")),
            &format!("<query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'/></query>"),
        )
        .await;
    assert_error(&reply, "forbidden");

    assert_result(
        &alice
            .iq(
                "set",
                None,
                &format!("<query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'><conference jid='other@conference.localhost'/></storage></query>"),
            )
            .await,
    );
    let his = private_get(&mut bob, "<storage xmlns='storage:bookmarks'/>").await;
    let conference = his.get_child("conference", "storage:bookmarks").unwrap();
    assert_eq!(conference.attr("jid"), Some("room@conference.localhost"));
    let hers = private_get(&mut alice, "<storage xmlns='storage:bookmarks'/>").await;
    let conference = hers.get_child("conference", "storage:bookmarks").unwrap();
    assert_eq!(conference.attr("jid"), Some("other@conference.localhost"));
}
