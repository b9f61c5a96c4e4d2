//! Roster, subscriptions and presence (RFC 6121 §2, §3, §4 and appendix A, as summarized in
//! docs/rfc6121-checklist.md), over real sockets against the real server, with two to four local
//! users talking to each other.

mod common;

use std::time::Duration;

use common::stanzas::*;
use common::*;
use minidom::Element;

const PW: &str = "roster-pw";
/// How long a client waits for a stanza it expects.
const LONG: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------------
// Helpers: the stanza client of tests/common/stanzas.rs (password `PW`, waits up to `LONG`), with
// roster pushes

/// A server with these accounts (password `PW`).
fn server(users: &[&str]) -> TestServer {
    server_with_users(users, PW)
}

impl Client {
    /// Logged in and bound, nothing else (not interested, not available).
    async fn bound(server: &TestServer, user: &str, resource: &str) -> Client {
        let mut c = Client::bound_with(server, user, PW, resource).await;
        c.wait_limit = LONG;
        c
    }

    /// Logged in, interested (fetched the roster) and available (initial presence with `status`).
    async fn start(server: &TestServer, user: &str, resource: &str, status: &str) -> Client {
        let mut c = Client::bound(server, user, resource).await;
        c.roster_get().await;
        c.online(status).await;
        c
    }

    /// Sends available presence with this status and waits for its echo (RFC 6121 §4.2.2: the
    /// sender is one of the user's available resources).
    async fn online(&mut self, status: &str) {
        let echo = self.online_with(status, None).await;
        assert_eq!(echo.attr("to"), Some(self.bare.as_str()), "echo `to`");
    }

    /// A roster set of one `<item/>`; returns the answer.
    async fn roster_set(&mut self, item: &str) -> Element {
        self.iq(
            "set",
            None,
            &format!("<query xmlns='{ROSTER}'>{item}</query>"),
        )
        .await
    }

    /// Waits for a roster push about `jid`, checks its envelope (RFC 6121 §2.1.6, §2.6.3) and returns
    /// the arrival number and the item.
    async fn push_seq(&mut self, jid: &str) -> (u64, Element) {
        let (seq, iq) = self
            .wait_seq(&format!("a roster push for {jid}"), |el| {
                push_item(el).is_some_and(|i| i.attr("jid") == Some(jid))
            })
            .await;
        check_push(&iq, &self.bare);
        (seq, push_item(&iq).unwrap().clone())
    }

    async fn push(&mut self, jid: &str) -> Element {
        self.push_seq(jid).await.1
    }

    /// The last of the pushes about `jid` received within `QUIET` after a first one.
    async fn last_push(&mut self, jid: &str) -> Element {
        let mut item = self.push(jid).await;
        self.settle().await;
        while self
            .queue
            .iter()
            .any(|g| push_item(&g.el).is_some_and(|i| i.attr("jid") == Some(jid)))
        {
            item = self.push(jid).await;
        }
        item
    }
}

/// The `<item/>` of a roster push (an iq set with a roster query).
fn push_item(el: &Element) -> Option<&Element> {
    if el.name() != "iq" || el.attr("type") != Some("set") {
        return None;
    }
    el.get_child("query", ROSTER)?.get_child("item", ROSTER)
}

fn is_push(el: &Element) -> bool {
    push_item(el).is_some()
}

/// RFC 6121 §2.1.6: no `from` or the user's bare JID, exactly one item; §2.6.3: a `ver`.
fn check_push(iq: &Element, user_bare: &str) {
    let from = iq.attr("from");
    assert!(
        from.is_none() || from == Some(user_bare),
        "a roster push comes from nobody or the bare JID: {}",
        show(iq)
    );
    let query = iq.get_child("query", ROSTER).unwrap();
    assert!(
        query.attr("ver").is_some_and(|v| !v.is_empty()),
        "a roster push carries a ver: {}",
        show(iq)
    );
    assert_eq!(
        query.children().count(),
        1,
        "a roster push carries exactly one item: {}",
        show(iq)
    );
    assert!(iq.attr("id").is_some(), "a push has an id: {}", show(iq));
}

fn ver_of(el: &Element) -> String {
    el.attr("ver")
        .unwrap_or_else(|| panic!("no ver on {}", show(el)))
        .to_string()
}

/// Asserts an item's jid, subscription, ask and approved attributes exactly.
fn assert_item(
    item: &Element,
    jid: &str,
    subscription: &str,
    ask: Option<&str>,
    approved: Option<&str>,
) {
    let text = show(item);
    assert_eq!(item.attr("jid"), Some(jid), "jid of {text}");
    assert_eq!(
        item.attr("subscription"),
        Some(subscription),
        "subscription of {text}"
    );
    assert_eq!(item.attr("ask"), ask, "ask of {text}");
    assert_eq!(item.attr("approved"), approved, "approved of {text}");
}

fn groups_of(item: &Element) -> Vec<String> {
    let mut groups: Vec<String> = item
        .children()
        .filter(|c| c.is("group", ROSTER))
        .map(|g| g.text())
        .collect();
    groups.sort();
    groups
}

fn items_of(query: &Element) -> Vec<&Element> {
    query.children().filter(|c| c.is("item", ROSTER)).collect()
}

/// `a` subscribes to `b` and `b` approves; waits until both sides saw it all, then clears both
/// queues. Both clients must be interested and available.
async fn subscribe_to(a: &mut Client, b: &mut Client) {
    let (a_bare, b_bare) = (a.bare.clone(), b.bare.clone());
    a.send(&format!("<presence type='subscribe' to='{b_bare}'/>"))
        .await;
    b.wait("a subscription request", |el| {
        presence_is(el, Some("subscribe"), &a_bare)
    })
    .await;
    b.send(&format!("<presence type='subscribed' to='{a_bare}'/>"))
        .await;
    let item = b.push(&a_bare).await;
    assert!(
        matches!(item.attr("subscription"), Some("from" | "both")),
        "{}",
        show(&item)
    );
    a.wait("the approval", |el| {
        presence_is(el, Some("subscribed"), &b_bare)
    })
    .await;
    // The approval's last effect: the contact's presence reaches the subscriber.
    let b_jid = b.jid.clone();
    a.wait("the contact's presence after approval", |el| {
        available(el, &b_jid)
    })
    .await;
    a.clear();
    b.clear();
}

/// Subscriptions both ways between `a` and `b`.
async fn mutual(a: &mut Client, b: &mut Client) {
    subscribe_to(a, b).await;
    subscribe_to(b, a).await;
}

// ---------------------------------------------------------------------------------------------
// 1. Roster (RFC 6121 §2)

/// §2.6.1 and §3.4: roster versioning and pre-approval are advertised after authentication.
#[tokio::test]
async fn stream_features_after_auth_advertise_rosterver_and_preapproval() {
    let server = server(&["alice"]);
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    c.authenticate("SCRAM-SHA-256", "alice", PW)
        .await
        .expect("login");
    let features = c.open().await;
    assert!(
        features.contains("<ver xmlns='urn:xmpp:features:rosterver'/>"),
        "{features}"
    );
    assert!(
        features.contains("<sub xmlns='urn:xmpp:features:pre-approval'/>"),
        "{features}"
    );
}

/// §2.1.4: a new account's roster is empty (a `<query/>`, not an error) and carries a `ver`.
#[tokio::test]
async fn roster_get_on_new_account_is_empty_query_with_ver() {
    let server = server(&["alice"]);
    let mut alice = Client::bound(&server, "alice", "r1").await;
    let query = alice.roster_get().await;
    assert_eq!(query.children().count(), 0, "{}", show(&query));
    assert!(!ver_of(&query).is_empty());
    // RFC 6120 §10.3.3: addressed to the own bare JID, it is the same roster.
    let reply = alice
        .iq(
            "get",
            Some(&bare("alice")),
            &format!("<query xmlns='{ROSTER}'/>"),
        )
        .await;
    assert_result(&reply);
    let query = reply.get_child("query", ROSTER).expect("query");
    assert_eq!(query.children().count(), 0, "{}", show(&reply));
}

/// §2.3.2: a set creates the item (subscription none), answers the sender with a result, and pushes
/// to every interested resource including the sender, but not to a resource that never asked for
/// the roster (§2.2).
#[tokio::test]
async fn roster_set_adds_item_with_result_and_pushes_to_interested_resources() {
    let server = server(&["alice", "bob"]);
    let mut r1 = Client::bound(&server, "alice", "r1").await;
    let mut r2 = Client::bound(&server, "alice", "r2").await;
    let mut r3 = Client::bound(&server, "alice", "r3").await;
    let v0 = ver_of(&r1.roster_get().await);
    r2.roster_get().await;

    let reply = r1
        .roster_set(&format!(
            "<item jid='{}' name='Bob'><group>Friends</group><group>Work</group></item>",
            bare("bob")
        ))
        .await;
    assert_result(&reply);
    assert_eq!(reply.children().count(), 0, "{}", show(&reply));

    let mut vers = Vec::new();
    for c in [&mut r1, &mut r2] {
        let (_, iq) = c
            .wait_seq("the push", |el| {
                push_item(el).is_some_and(|i| i.attr("jid") == Some("bob@localhost"))
            })
            .await;
        check_push(&iq, "alice@localhost");
        let query = iq.get_child("query", ROSTER).unwrap();
        vers.push(ver_of(query));
        let item = query.get_child("item", ROSTER).unwrap();
        assert_item(item, &bare("bob"), "none", None, None);
        assert_eq!(item.attr("name"), Some("Bob"));
        assert_eq!(groups_of(item), ["Friends", "Work"]);
    }
    assert_eq!(vers[0], vers[1], "the same change has one version");
    assert_ne!(vers[0], v0, "a change gets a new version");
    r3.nothing("a resource that never asked for the roster gets no pushes")
        .await;

    let query = r1.roster_get().await;
    assert_eq!(ver_of(&query), vers[0]);
    let items = items_of(&query);
    assert_eq!(items.len(), 1, "{}", show(&query));
    assert_item(items[0], &bare("bob"), "none", None, None);
    assert_eq!(items[0].attr("name"), Some("Bob"));
    assert_eq!(groups_of(items[0]), ["Friends", "Work"]);
}

/// §2.4.1: an update replaces the whole item (missing name = no name, listed groups only).
#[tokio::test]
async fn roster_update_replaces_name_and_groups_atomically() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::bound(&server, "alice", "r1").await;
    alice.roster_get().await;
    let bob = bare("bob");
    assert_result(
        &alice
            .roster_set(&format!(
                "<item jid='{bob}' name='Bob'><group>A</group><group>B</group></item>"
            ))
            .await,
    );
    alice.push(&bob).await;

    assert_result(
        &alice
            .roster_set(&format!("<item jid='{bob}'><group>C</group></item>"))
            .await,
    );
    let item = alice.push(&bob).await;
    assert_eq!(item.attr("name"), None, "{}", show(&item));
    assert_eq!(groups_of(&item), ["C"]);

    assert_result(
        &alice
            .roster_set(&format!("<item jid='{bob}' name='Robert'/>"))
            .await,
    );
    let item = alice.push(&bob).await;
    assert_eq!(item.attr("name"), Some("Robert"));
    assert!(groups_of(&item).is_empty(), "{}", show(&item));

    let query = alice.roster_get().await;
    let items = items_of(&query);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].attr("name"), Some("Robert"));
    assert!(groups_of(items[0]).is_empty(), "{}", show(&query));
}

/// §2.1.2.1, §2.1.2.2, §2.1.5: `subscription` (other than remove), `ask` and `approved` from a client
/// are ignored, and nothing is routed to the contact.
#[tokio::test]
async fn roster_set_ignores_client_subscription_ask_and_approved() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    let reply = alice
        .roster_set(&format!(
            "<item jid='{}' subscription='both' ask='subscribe' approved='true'/>",
            bare("bob")
        ))
        .await;
    assert_result(&reply);
    let item = alice.push(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "none", None, None);
    let query = alice.roster_get().await;
    assert_item(items_of(&query)[0], &bare("bob"), "none", None, None);
    bob.nothing("a roster set routes nothing to the contact")
        .await;
}

/// §2.5.2: a remove answers with a result and pushes `subscription='remove'` to every interested
/// resource; the item is gone.
#[tokio::test]
async fn roster_remove_pushes_subscription_remove() {
    let server = server(&["alice", "bob"]);
    let mut r1 = Client::bound(&server, "alice", "r1").await;
    let mut r2 = Client::bound(&server, "alice", "r2").await;
    r1.roster_get().await;
    r2.roster_get().await;
    let bob = bare("bob");
    assert_result(&r1.roster_set(&format!("<item jid='{bob}'/>")).await);
    r1.push(&bob).await;
    r2.push(&bob).await;

    let reply = r1
        .roster_set(&format!("<item jid='{bob}' subscription='remove'/>"))
        .await;
    assert_result(&reply);
    for c in [&mut r1, &mut r2] {
        let item = c.push(&bob).await;
        assert_eq!(item.attr("jid"), Some(bob.as_str()));
        assert_eq!(item.attr("subscription"), Some("remove"), "{}", show(&item));
    }
    assert!(items_of(&r1.roster_get().await).is_empty());
}

/// §2.1.3, §2.3.3, §2.5.3 and the checklist's error table: each bad request gets its error, and no
/// push is sent for it.
#[tokio::test]
async fn roster_set_and_get_errors() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice = Client::bound(&server, "alice", "r1").await;
    alice.roster_get().await;
    let (bob, carol) = (bare("bob"), bare("carol"));

    let reply = alice
        .roster_set(&format!("<item jid='{bob}'/><item jid='{carol}'/>"))
        .await;
    assert_error(&reply, "bad-request");

    let reply = alice
        .roster_set(&format!(
            "<item jid='{bob}'><group>Friends</group><group>Friends</group></item>"
        ))
        .await;
    assert_error(&reply, "bad-request");

    let reply = alice
        .roster_set(&format!("<item jid='{bob}'><group></group></item>"))
        .await;
    assert_error(&reply, "not-acceptable");

    let reply = alice
        .roster_set(&format!("<item jid='{carol}' subscription='remove'/>"))
        .await;
    assert_error(&reply, "item-not-found");

    let reply = alice
        .roster_set(&format!("<item jid='{}'/>", bare("alice")))
        .await;
    assert_error(&reply, "not-allowed");

    let reply = alice.roster_set("<item jid='@localhost'/>").await;
    assert_error(&reply, "jid-malformed");

    let reply = alice
        .iq(
            "get",
            None,
            &format!("<query xmlns='{ROSTER}'><item jid='{bob}'/></query>"),
        )
        .await;
    assert_error(&reply, "bad-request");

    alice.none("a roster push after errors", is_push).await;
    assert!(items_of(&alice.roster_get().await).is_empty());
}

/// Checklist §2.1.2.3 note: a roster set whose item has no `jid` is `<bad-request/>` (a malformed
/// `jid` is `<jid-malformed/>`, a missing one is not malformed).
#[tokio::test]
async fn roster_set_without_jid_is_bad_request() {
    let server = server(&["alice"]);
    let mut alice = Client::bound(&server, "alice", "r1").await;
    alice.roster_get().await;
    let reply = alice.roster_set("<item name='nobody'/>").await;
    assert_error(&reply, "bad-request");
}

/// §2.1.5 / §2.3.3: a roster set addressed to another account is refused with `<forbidden/>`, and
/// that account's roster is untouched.
#[tokio::test]
async fn roster_set_addressed_to_another_account_is_forbidden() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::bound(&server, "alice", "r1").await;
    let mut bob = Client::bound(&server, "bob", "r1").await;
    bob.roster_get().await;
    let reply = alice
        .iq(
            "set",
            Some(&bare("bob")),
            &format!("<query xmlns='{ROSTER}'><item jid='carol@localhost'/></query>"),
        )
        .await;
    assert_error(&reply, "forbidden");
    bob.none("a push from someone else's set", is_push).await;
    assert!(items_of(&bob.roster_get().await).is_empty());
}

/// §2.6.2-§2.6.3: a get with the current `ver` is an empty iq result (no `<query/>`); an old `ver`
/// (or `ver=''`) gets the whole roster with the current `ver`; every change gets a new `ver`.
#[tokio::test]
async fn roster_versioning() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice = Client::bound(&server, "alice", "r1").await;
    let v0 = ver_of(&alice.roster_get().await);
    let get_ver = |v: &str| format!("<query xmlns='{ROSTER}' ver='{v}'/>");

    let reply = alice.iq("get", None, &get_ver(&v0)).await;
    assert_result(&reply);
    assert_eq!(
        reply.children().count(),
        0,
        "an unchanged roster is an empty iq result, not an empty query: {}",
        show(&reply)
    );

    assert_result(
        &alice
            .roster_set(&format!("<item jid='{}'/>", bare("bob")))
            .await,
    );
    let (_, iq) = alice
        .wait_seq("the push", |el| push_item(el).is_some())
        .await;
    let v1 = ver_of(iq.get_child("query", ROSTER).unwrap());
    assert_ne!(v1, v0);

    let reply = alice.iq("get", None, &get_ver(&v0)).await;
    assert_result(&reply);
    let query = reply.get_child("query", ROSTER).unwrap_or_else(|| {
        panic!(
            "an old ver gets the full roster (RFC 6121 §2.6.3 (a)) or an empty result followed by \
             interim pushes; got {}",
            show(&reply)
        )
    });
    assert_eq!(ver_of(query), v1);
    let items = items_of(query);
    assert_eq!(items.len(), 1, "{}", show(&reply));
    assert_item(items[0], &bare("bob"), "none", None, None);

    let reply = alice.iq("get", None, &get_ver(&v1)).await;
    assert_result(&reply);
    assert_eq!(reply.children().count(), 0, "{}", show(&reply));

    let reply = alice.iq("get", None, &get_ver("")).await;
    let query = reply.get_child("query", ROSTER).expect("ver='' bootstraps");
    assert_eq!(ver_of(query), v1);
    assert_eq!(items_of(query).len(), 1);

    assert_result(
        &alice
            .roster_set(&format!("<item jid='{}'/>", bare("carol")))
            .await,
    );
    let (_, iq) = alice
        .wait_seq("the second push", |el| push_item(el).is_some())
        .await;
    let v2 = ver_of(iq.get_child("query", ROSTER).unwrap());
    assert!(
        v2 != v1 && v2 != v0,
        "each version is unique: {v0} {v1} {v2}"
    );
    alice.none("an extra push", is_push).await;
}

/// §2.6.3 and checklist gotcha 4: a pending-in request without a roster item is hidden state, so it
/// does not change the roster version; a get with the old `ver` is still an empty result.
#[tokio::test]
async fn pending_in_request_does_not_change_roster_version() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::bound(&server, "bob", "r1").await;
    let v = ver_of(&bob.roster_get().await);
    bob.online("b").await;
    alice
        .send(&format!(
            "<presence type='subscribe' to='{}'/>",
            bare("bob")
        ))
        .await;
    bob.wait("the request", |el| {
        presence_is(el, Some("subscribe"), "alice@localhost")
    })
    .await;
    bob.none("a roster push for a pending-in request", is_push)
        .await;
    let reply = bob
        .iq("get", None, &format!("<query xmlns='{ROSTER}' ver='{v}'/>"))
        .await;
    assert_result(&reply);
    assert_eq!(
        reply.children().count(),
        0,
        "nothing visible changed, so ver '{v}' is still current: {}",
        show(&reply)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Subscriptions between two local users (RFC 6121 §3, appendix A)

/// §3.1.2-§3.1.3: the requester's item gets `ask='subscribe'`; the request reaches every available
/// resource of the contact, stamped with the requester's bare JID and addressed to the contact's
/// bare JID even when sent from a full JID to a full JID; it keeps its `<status/>`; the contact's
/// roster gets no item; a connected but unavailable resource gets nothing; a repeat is not
/// delivered again.
#[tokio::test]
async fn subscribe_request_is_stamped_bare_and_delivered_to_available_resources() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob1 = Client::start(&server, "bob", "r1", "b1").await;
    let mut bob2 = Client::start(&server, "bob", "r2", "b2").await;
    let mut bob3 = Client::bound(&server, "bob", "r3").await;
    bob3.roster_get().await;
    bob1.clear();

    alice
        .send(&format!(
            "<presence from='{}' type='subscribe' to='{}' id='sub1'><status>let me in</status></presence>",
            full("alice", "r1"),
            full("bob", "r1")
        ))
        .await;
    let item = alice.push(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "none", Some("subscribe"), None);

    for bob in [&mut bob1, &mut bob2] {
        let request = bob
            .wait("the subscription request", |el| {
                el.name() == "presence" && el.attr("type") == Some("subscribe")
            })
            .await;
        assert_eq!(
            request.attr("from"),
            Some("alice@localhost"),
            "stamped with the bare JID: {}",
            show(&request)
        );
        assert_eq!(
            request.attr("to"),
            Some("bob@localhost"),
            "to the bare JID: {}",
            show(&request)
        );
        assert_eq!(status_of(&request).as_deref(), Some("let me in"));
    }
    bob3.nothing("a resource that is not available gets no subscription request")
        .await;

    // A pending request is not a roster item (A.1 #3, gotcha 6).
    for bob in [&mut bob1, &mut bob2] {
        bob.none("a roster push for the request", is_push).await;
    }
    let query = bob1.roster_get().await;
    assert!(items_of(&query).is_empty(), "{}", show(&query));

    // A.3.1: a repeated request is not delivered again.
    alice
        .send(&format!(
            "<presence type='subscribe' to='{}'/>",
            bare("bob")
        ))
        .await;
    for bob in [&mut bob1, &mut bob2] {
        bob.none("a second delivery of the request", |el| {
            el.name() == "presence" && el.attr("type") == Some("subscribe")
        })
        .await;
    }
    let query = alice.roster_get().await;
    assert_item(
        items_of(&query)[0],
        &bare("bob"),
        "none",
        Some("subscribe"),
        None,
    );
}

/// §3.1.5-§3.1.6: approval. The contact's push shows `from`; the requester gets the `subscribed`
/// (bare `from`) before its push with `to` (no ask), then the current presence of each of the
/// contact's available resources; later presence of the contact reaches it.
#[tokio::test]
async fn subscribed_approves_pending_request() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob1 = Client::start(&server, "bob", "r1", "bob one").await;
    let mut bob2 = Client::start(&server, "bob", "r2", "bob two").await;
    bob1.clear();
    alice
        .send(&format!(
            "<presence type='subscribe' to='{}'/>",
            bare("bob")
        ))
        .await;
    alice.push(&bare("bob")).await;
    bob1.wait("the request", |el| {
        presence_is(el, Some("subscribe"), "alice@localhost")
    })
    .await;
    bob2.wait("the request", |el| {
        presence_is(el, Some("subscribe"), "alice@localhost")
    })
    .await;

    bob1.send(&format!(
        "<presence type='subscribed' to='{}'/>",
        bare("alice")
    ))
    .await;
    for bob in [&mut bob1, &mut bob2] {
        let item = bob.push(&bare("alice")).await;
        assert_item(&item, &bare("alice"), "from", None, None);
    }
    let (s_seq, subscribed) = alice
        .wait_seq("the approval", |el| {
            el.name() == "presence" && el.attr("type") == Some("subscribed")
        })
        .await;
    assert_eq!(subscribed.attr("from"), Some("bob@localhost"));
    assert_eq!(subscribed.attr("to"), Some("alice@localhost"));
    let (p_seq, item) = alice.push_seq(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "to", None, None);
    assert!(
        s_seq < p_seq,
        "the subscribed stanza comes before the push (§3.1.6)"
    );
    let one = alice
        .wait("bob/r1's presence", |el| available(el, &full("bob", "r1")))
        .await;
    assert_eq!(status_of(&one).as_deref(), Some("bob one"));
    let two = alice
        .wait("bob/r2's presence", |el| available(el, &full("bob", "r2")))
        .await;
    assert_eq!(status_of(&two).as_deref(), Some("bob two"));

    // Bob's presence now goes to alice; alice's does not go to bob (he is only `from`).
    bob1.send("<presence><show>away</show><status>later</status></presence>")
        .await;
    let update = alice
        .wait("bob's presence change", |el| {
            available(el, &full("bob", "r1")) && status_of(el).as_deref() == Some("later")
        })
        .await;
    assert_eq!(show_of(&update).as_deref(), Some("away"));
    alice.send("<presence><status>a2</status></presence>").await;
    bob1.none("alice's presence", |el| {
        presence_from_account(el, "alice@localhost")
    })
    .await;
    let query = bob1.roster_get().await;
    assert_item(items_of(&query)[0], &bare("alice"), "from", None, None);
}

/// Subscriptions both ways: both items end as `both` and each side sees the other's presence.
#[tokio::test]
async fn mutual_subscription_becomes_both() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    subscribe_to(&mut alice, &mut bob).await;

    bob.send(&format!(
        "<presence type='subscribe' to='{}'/>",
        bare("alice")
    ))
    .await;
    let item = bob.push(&bare("alice")).await;
    assert_item(&item, &bare("alice"), "from", Some("subscribe"), None);
    let request = alice
        .wait("bob's request", |el| {
            presence_is(el, Some("subscribe"), "bob@localhost")
        })
        .await;
    assert_eq!(request.attr("to"), Some("alice@localhost"));
    alice.none("a push for bob's request", is_push).await;

    alice
        .send(&format!(
            "<presence type='subscribed' to='{}'/>",
            bare("bob")
        ))
        .await;
    let item = alice.push(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "both", None, None);
    let (s_seq, _) = bob
        .wait_seq("the approval", |el| {
            presence_is(el, Some("subscribed"), "alice@localhost")
        })
        .await;
    let (p_seq, item) = bob.push_seq(&bare("alice")).await;
    assert_item(&item, &bare("alice"), "both", None, None);
    assert!(s_seq < p_seq);
    bob.wait("alice's presence", |el| available(el, &full("alice", "r1")))
        .await;

    for (c, other) in [(&mut alice, "bob"), (&mut bob, "alice")] {
        let query = c.roster_get().await;
        let items = items_of(&query);
        assert_eq!(items.len(), 1);
        assert_item(items[0], &bare(other), "both", None, None);
    }
}

/// §3.3: unsubscribe from `both`. The user's push shows `from`; the contact gets the `unsubscribe`
/// (bare `from`) before its push with `to`; the user gets unavailable from each of the contact's
/// resources and no longer its presence.
#[tokio::test]
async fn unsubscribe_from_both() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    mutual(&mut alice, &mut bob).await;
    let mut bob2 = Client::start(&server, "bob", "r2", "b2").await;
    alice
        .wait("bob/r2's presence", |el| available(el, &full("bob", "r2")))
        .await;
    bob2.clear();
    bob.clear();

    alice
        .send(&format!(
            "<presence type='unsubscribe' to='{}'/>",
            full("bob", "r1")
        ))
        .await;
    let item = alice.push(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "from", None, None);

    for b in [&mut bob, &mut bob2] {
        let (u_seq, stanza) = b
            .wait_seq("the unsubscribe", |el| {
                el.name() == "presence" && el.attr("type") == Some("unsubscribe")
            })
            .await;
        assert_eq!(stanza.attr("from"), Some("alice@localhost"));
        assert_eq!(stanza.attr("to"), Some("bob@localhost"));
        let (p_seq, item) = b.push_seq(&bare("alice")).await;
        assert_item(&item, &bare("alice"), "to", None, None);
        assert!(u_seq < p_seq, "the stanza comes before the push");
    }
    for resource in ["r1", "r2"] {
        alice
            .wait("unavailable from bob's resource", |el| {
                unavailable(el, &full("bob", resource))
            })
            .await;
    }

    bob.send("<presence><status>hidden</status></presence>")
        .await;
    alice
        .none("bob's presence after unsubscribing", |el| {
            presence_from_account(el, "bob@localhost")
        })
        .await;
    // Bob is still subscribed to alice.
    alice
        .send("<presence><status>still</status></presence>")
        .await;
    bob.wait("alice's presence", |el| {
        available(el, &full("alice", "r1")) && status_of(el).as_deref() == Some("still")
    })
    .await;
}

/// §3.2: unsubscribed cancels the contact's subscription. The canceller's push shows `to`; the
/// other side gets unavailable from each of the canceller's resources, then the `unsubscribed`
/// (bare `from`), then its push with `from`.
#[tokio::test]
async fn unsubscribed_cancels_subscription_from_both() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    mutual(&mut alice, &mut bob).await;

    bob.send(&format!(
        "<presence type='unsubscribed' to='{}'/>",
        bare("alice")
    ))
    .await;
    let item = bob.push(&bare("alice")).await;
    assert_item(&item, &bare("alice"), "to", None, None);

    let (a_seq, _) = alice
        .wait_seq("unavailable from bob/r1", |el| {
            unavailable(el, &full("bob", "r1"))
        })
        .await;
    let (u_seq, stanza) = alice
        .wait_seq("the unsubscribed", |el| {
            el.name() == "presence" && el.attr("type") == Some("unsubscribed")
        })
        .await;
    assert_eq!(stanza.attr("from"), Some("bob@localhost"));
    assert_eq!(stanza.attr("to"), Some("alice@localhost"));
    let (p_seq, item) = alice.push_seq(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "from", None, None);
    assert!(
        a_seq < u_seq && u_seq < p_seq,
        "unavailable, then unsubscribed, then the push (§3.2.2-§3.2.3)"
    );

    bob.send("<presence><status>hidden</status></presence>")
        .await;
    alice
        .none("bob's presence after he cancelled", |el| {
            presence_from_account(el, "bob@localhost")
        })
        .await;
    alice
        .send("<presence><status>still</status></presence>")
        .await;
    bob.wait("alice's presence (bob is still subscribed)", |el| {
        available(el, &full("alice", "r1")) && status_of(el).as_deref() == Some("still")
    })
    .await;
}

/// Table 9: denying a pending request reaches the requester and clears its `ask`; the denier gets no
/// item and the request is not re-delivered later.
#[tokio::test]
async fn unsubscribed_denies_pending_request() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    alice
        .send(&format!(
            "<presence type='subscribe' to='{}'/>",
            bare("bob")
        ))
        .await;
    alice.push(&bare("bob")).await;
    bob.wait("the request", |el| {
        presence_is(el, Some("subscribe"), "alice@localhost")
    })
    .await;

    bob.send(&format!(
        "<presence type='unsubscribed' to='{}'/>",
        bare("alice")
    ))
    .await;
    let (u_seq, stanza) = alice
        .wait_seq("the denial", |el| {
            presence_is(el, Some("unsubscribed"), "bob@localhost")
        })
        .await;
    assert_eq!(stanza.attr("to"), Some("alice@localhost"));
    let (p_seq, item) = alice.push_seq(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "none", None, None);
    assert!(u_seq < p_seq);
    bob.none("a push for denying a request that had no item", is_push)
        .await;
    assert!(items_of(&bob.roster_get().await).is_empty());

    let mut bob2 = Client::bound(&server, "bob", "r2").await;
    bob2.online("b2").await;
    bob2.none("a denied request delivered again", |el| {
        el.attr("type") == Some("subscribe")
    })
    .await;
}

/// §3.1.3 #4: a request to an offline contact is stored, not shown as a roster item, and delivered
/// after each new available resource's initial presence, exactly once per requester.
#[tokio::test]
async fn pending_requests_are_redelivered_at_login_once_per_requester() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut carol = Client::start(&server, "carol", "r1", "c").await;
    for _ in 0..2 {
        alice
            .send(&format!(
                "<presence type='subscribe' to='{}'/>",
                bare("bob")
            ))
            .await;
    }
    alice.push(&bare("bob")).await;
    carol
        .send(&format!(
            "<presence type='subscribe' to='{}'><status>carol here</status></presence>",
            bare("bob")
        ))
        .await;
    carol.push(&bare("bob")).await;

    let mut bob = Client::bound(&server, "bob", "r1").await;
    let query = bob.roster_get().await;
    assert!(
        items_of(&query).is_empty(),
        "pending requests are not roster items: {}",
        show(&query)
    );
    bob.none("a request before initial presence", |el| {
        el.name() == "presence"
    })
    .await;
    bob.send("<presence><status>b1</status></presence>").await;
    let (echo, _) = bob
        .wait_seq("my echo", |el| available(el, &full("bob", "r1")))
        .await;
    let (from_alice, request) = bob
        .wait_seq("alice's stored request", |el| {
            presence_is(el, Some("subscribe"), "alice@localhost")
        })
        .await;
    assert_eq!(request.attr("to"), Some("bob@localhost"));
    let from_carol = bob
        .wait("carol's stored request", |el| {
            presence_is(el, Some("subscribe"), "carol@localhost")
        })
        .await;
    assert_eq!(
        status_of(&from_carol).as_deref(),
        Some("carol here"),
        "the complete stanza is stored"
    );
    assert!(echo < from_alice, "delivered after the initial presence");
    let extra = bob.count(|el| el.attr("type") == Some("subscribe")).await;
    assert_eq!(extra, 0, "one request per requester:\n{}", bob.dump());

    // Every new available resource gets them again, until answered.
    bob.clear();
    let mut bob2 = Client::bound(&server, "bob", "r2").await;
    bob2.online("b2").await;
    for requester in ["alice@localhost", "carol@localhost"] {
        let n = bob2
            .count(|el| presence_is(el, Some("subscribe"), requester))
            .await;
        assert_eq!(n, 1, "requests from {requester} on r2:\n{}", bob2.dump());
    }
    bob.none("the requests again on r1", |el| {
        el.attr("type") == Some("subscribe")
    })
    .await;
}

/// §3.4: pre-approval. The approver's item gets `approved='true'` and nothing is routed; the later
/// request is approved automatically: the requester gets `subscribed`, then its push with `to`, then
/// the contact's presence; the contact never sees the request and its item becomes `from` without
/// `approved`.
#[tokio::test]
async fn preapproval_auto_approves_later_request() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "bob status").await;

    bob.send(&format!(
        "<presence type='subscribed' to='{}'/>",
        bare("alice")
    ))
    .await;
    let item = bob.push(&bare("alice")).await;
    assert_item(&item, &bare("alice"), "none", None, Some("true"));
    alice.nothing("a pre-approval is not routed (§3.4.2)").await;
    let query = bob.roster_get().await;
    assert_item(
        items_of(&query)[0],
        &bare("alice"),
        "none",
        None,
        Some("true"),
    );

    alice
        .send(&format!(
            "<presence type='subscribe' to='{}'/>",
            bare("bob")
        ))
        .await;
    let (s_seq, subscribed) = alice
        .wait_seq("the automatic approval", |el| {
            el.name() == "presence" && el.attr("type") == Some("subscribed")
        })
        .await;
    assert_eq!(subscribed.attr("from"), Some("bob@localhost"));
    assert_eq!(subscribed.attr("to"), Some("alice@localhost"));
    let item = alice.last_push(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "to", None, None);
    let (b_seq, presence) = alice
        .wait_seq("bob's presence", |el| available(el, &full("bob", "r1")))
        .await;
    assert_eq!(status_of(&presence).as_deref(), Some("bob status"));
    assert!(s_seq < b_seq);

    let item = bob.push(&bare("alice")).await;
    assert_item(&item, &bare("alice"), "from", None, None);
    bob.none("the pre-approved request", |el| {
        el.attr("type") == Some("subscribe")
    })
    .await;
}

/// §2.5.2: removing an item with subscription `both` sends `unsubscribe` and `unsubscribed` (bare
/// `from`) to the contact, whose item ends as `none`; presence stops both ways with unavailable.
#[tokio::test]
async fn removing_item_with_both_sends_unsubscribe_and_unsubscribed() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    mutual(&mut alice, &mut bob).await;

    let reply = alice
        .roster_set(&format!(
            "<item jid='{}' subscription='remove'/>",
            bare("bob")
        ))
        .await;
    assert_result(&reply);
    let item = alice.last_push(&bare("bob")).await;
    assert_eq!(item.attr("subscription"), Some("remove"), "{}", show(&item));
    assert!(items_of(&alice.roster_get().await).is_empty());
    alice
        .wait("unavailable from bob/r1", |el| {
            unavailable(el, &full("bob", "r1"))
        })
        .await;

    let unsubscribe = bob
        .wait("the unsubscribe", |el| {
            el.name() == "presence" && el.attr("type") == Some("unsubscribe")
        })
        .await;
    assert_eq!(unsubscribe.attr("from"), Some("alice@localhost"));
    let unsubscribed = bob
        .wait("the unsubscribed", |el| {
            el.name() == "presence" && el.attr("type") == Some("unsubscribed")
        })
        .await;
    assert_eq!(unsubscribed.attr("from"), Some("alice@localhost"));
    let item = bob.last_push(&bare("alice")).await;
    assert_item(&item, &bare("alice"), "none", None, None);
    bob.wait("unavailable from alice/r1", |el| {
        unavailable(el, &full("alice", "r1"))
    })
    .await;

    alice
        .send("<presence><status>gone</status></presence>")
        .await;
    bob.none("alice's presence after the removal", |el| {
        presence_from_account(el, "alice@localhost")
    })
    .await;
}

/// §3.4.2 and checklist [c]: `unsubscribed` cancels a pre-approval (push without `approved`, nothing
/// routed), so a later request is no longer approved automatically.
#[tokio::test]
async fn unsubscribed_cancels_preapproval() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    bob.send(&format!(
        "<presence type='subscribed' to='{}'/>",
        bare("alice")
    ))
    .await;
    let item = bob.push(&bare("alice")).await;
    assert_item(&item, &bare("alice"), "none", None, Some("true"));
    bob.send(&format!(
        "<presence type='unsubscribed' to='{}'/>",
        bare("alice")
    ))
    .await;
    let item = bob.push(&bare("alice")).await;
    assert_item(&item, &bare("alice"), "none", None, None);
    alice
        .nothing("a pre-approval or its cancellation is not routed")
        .await;

    alice
        .send(&format!(
            "<presence type='subscribe' to='{}'/>",
            bare("bob")
        ))
        .await;
    bob.wait("the request, no longer pre-approved", |el| {
        presence_is(el, Some("subscribe"), "alice@localhost")
    })
    .await;
    alice
        .none("an automatic approval", |el| {
            el.attr("type") == Some("subscribed")
        })
        .await;
}

/// Table 3 and Table 7: the requester cancels its pending request with `unsubscribe`; its `ask` is
/// cleared, the contact's interested resources get the `unsubscribe`, and the stored request is
/// dropped (not re-delivered at the contact's next login).
#[tokio::test]
async fn unsubscribe_cancels_pending_request() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    alice
        .send(&format!(
            "<presence type='subscribe' to='{}'/>",
            bare("bob")
        ))
        .await;
    let item = alice.push(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "none", Some("subscribe"), None);
    bob.wait("the request", |el| {
        presence_is(el, Some("subscribe"), "alice@localhost")
    })
    .await;

    alice
        .send(&format!(
            "<presence type='unsubscribe' to='{}'/>",
            bare("bob")
        ))
        .await;
    let item = alice.push(&bare("bob")).await;
    assert_item(&item, &bare("bob"), "none", None, None);
    let stanza = bob
        .wait("the cancellation", |el| {
            presence_is(el, Some("unsubscribe"), "alice@localhost")
        })
        .await;
    assert_eq!(stanza.attr("to"), Some("bob@localhost"));
    assert!(items_of(&bob.roster_get().await).is_empty());

    let mut bob2 = Client::bound(&server, "bob", "r2").await;
    bob2.online("b2").await;
    bob2.none("a cancelled request", |el| {
        el.attr("type") == Some("subscribe")
    })
    .await;
}

/// A.3.2-A.3.4 and gotcha 9: `unsubscribe`/`unsubscribed` that change no state are not delivered,
/// and change nothing on either side.
#[tokio::test]
async fn subscription_stanzas_without_state_are_not_delivered() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    for kind in ["unsubscribe", "unsubscribed"] {
        bob.send(&format!("<presence type='{kind}' to='{}'/>", bare("alice")))
            .await;
    }
    alice
        .nothing("subscription stanzas that change no state")
        .await;
    bob.none("a roster push", is_push).await;
    assert!(items_of(&alice.roster_get().await).is_empty());
    assert!(items_of(&bob.roster_get().await).is_empty());
}

/// §3.1.2 vs §8.5.1 (checklist: pick one and test it): Rookery answers a request to a local account
/// that does not exist like a contact's server that refuses it: `unsubscribed` from that bare JID,
/// delivered before the push that clears `ask`.
#[tokio::test]
async fn subscribe_to_nonexistent_local_account_is_answered_unsubscribed() {
    let server = server(&["alice"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    alice
        .send("<presence type='subscribe' to='nobody@localhost'/>")
        .await;
    let (u_seq, stanza) = alice
        .wait_seq("the refusal", |el| {
            presence_is(el, Some("unsubscribed"), "nobody@localhost")
        })
        .await;
    assert_eq!(stanza.attr("to"), Some("alice@localhost"));
    let (p1, item) = alice.push_seq("nobody@localhost").await;
    assert_item(&item, "nobody@localhost", "none", Some("subscribe"), None);
    let (p2, item) = alice.push_seq("nobody@localhost").await;
    assert_item(&item, "nobody@localhost", "none", None, None);
    assert!(p1 < u_seq && u_seq < p2, "ask push, refusal, cleared push");
    alice.none("another push", is_push).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Presence (RFC 6121 §4)

/// §4.2: initial presence goes to contacts with `from`/`both` (each available resource) and to all
/// of the user's available resources including the sender; the new resource gets the presence of
/// each available resource of its `to`/`both` contacts and of its own other resources, and nothing
/// from contacts it is not subscribed to.
#[tokio::test]
async fn initial_presence_broadcast_and_probe_results() {
    let server = server(&["alice", "bob", "carol", "dave"]);
    let mut alice1 = Client::start(&server, "alice", "r1", "alice one").await;
    let mut bob1 = Client::start(&server, "bob", "r1", "bob one").await;
    let mut carol = Client::start(&server, "carol", "r1", "carol").await;
    let mut dave = Client::start(&server, "dave", "r1", "dave").await;
    mutual(&mut alice1, &mut bob1).await; // alice both bob
    subscribe_to(&mut carol, &mut alice1).await; // alice from carol
    subscribe_to(&mut alice1, &mut dave).await; // alice to dave
    let mut bob2 = Client::start(&server, "bob", "r2", "bob two").await;
    alice1
        .wait("bob/r2's presence", |el| available(el, &full("bob", "r2")))
        .await;
    for c in [&mut alice1, &mut bob1, &mut bob2, &mut carol, &mut dave] {
        c.clear();
    }

    let mut alice2 = Client::bound(&server, "alice", "r2").await;
    alice2
        .send(
            "<presence><show>dnd</show><status>alice two</status><priority>5</priority></presence>",
        )
        .await;
    let new = full("alice", "r2");
    let echo = alice2.wait("the echo", |el| available(el, &new)).await;
    assert_eq!(show_of(&echo).as_deref(), Some("dnd"));
    for (c, to) in [
        (&mut alice1, "alice@localhost"),
        (&mut bob1, "bob@localhost"),
        (&mut bob2, "bob@localhost"),
        (&mut carol, "carol@localhost"),
    ] {
        let p = c
            .wait("alice/r2's initial presence", |el| available(el, &new))
            .await;
        assert_eq!(p.attr("to"), Some(to), "{}", show(&p));
        assert_eq!(show_of(&p).as_deref(), Some("dnd"));
        assert_eq!(status_of(&p).as_deref(), Some("alice two"));
        assert_eq!(
            p.get_child("priority", CLIENT).map(|p| p.text()).as_deref(),
            Some("5")
        );
    }
    dave.none(
        "presence from alice (dave is not subscribed to her)",
        |el| presence_from_account(el, "alice@localhost"),
    )
    .await;

    for (from, status) in [
        (full("alice", "r1"), "alice one"),
        (full("bob", "r1"), "bob one"),
        (full("bob", "r2"), "bob two"),
        (full("dave", "r1"), "dave"),
    ] {
        let p = alice2
            .wait(&format!("the presence of {from}"), |el| {
                available(el, &from)
            })
            .await;
        assert_eq!(status_of(&p).as_deref(), Some(status), "{}", show(&p));
        assert_eq!(p.attr("to"), Some("alice@localhost"), "{}", show(&p));
    }
    alice2
        .none("carol's presence (alice is only `from` carol)", |el| {
            presence_from_account(el, "carol@localhost")
        })
        .await;
}

/// §4.4: subsequent presence goes to `from`/`both` contacts and to all of the user's available
/// resources, the sender included, and to nobody else.
#[tokio::test]
async fn subsequent_presence_broadcast() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice1 = Client::start(&server, "alice", "r1", "a1").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    let mut carol = Client::start(&server, "carol", "r1", "c").await;
    subscribe_to(&mut bob, &mut alice1).await; // bob is subscribed to alice
    let mut alice2 = Client::start(&server, "alice", "r2", "a2").await;
    for c in [&mut alice1, &mut bob] {
        c.wait("alice/r2's initial presence", |el| {
            available(el, &full("alice", "r2"))
        })
        .await;
    }
    for c in [&mut alice1, &mut bob, &mut carol] {
        c.clear();
    }

    alice1
        .send("<presence><show>xa</show><status>away now</status></presence>")
        .await;
    let from = full("alice", "r1");
    for c in [&mut alice1, &mut alice2, &mut bob] {
        let p = c
            .wait("alice/r1's new presence", |el| {
                available(el, &from) && status_of(el).as_deref() == Some("away now")
            })
            .await;
        assert_eq!(show_of(&p).as_deref(), Some("xa"));
    }
    carol
        .nothing("presence to someone who is not subscribed")
        .await;
    alice1
        .none("a second copy", |el| available(el, &full("alice", "r1")))
        .await;
}

/// §4.5.2: explicit unavailable goes to contacts, the user's other resources and the sender, with
/// its status; the resource then gets no more broadcasts.
#[tokio::test]
async fn explicit_unavailable_is_broadcast() {
    let server = server(&["alice", "bob"]);
    let mut alice1 = Client::start(&server, "alice", "r1", "a1").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    mutual(&mut alice1, &mut bob).await;
    let mut alice2 = Client::start(&server, "alice", "r2", "a2").await;
    for c in [&mut alice1, &mut bob] {
        c.wait("alice/r2's initial presence", |el| {
            available(el, &full("alice", "r2"))
        })
        .await;
        c.clear();
    }

    alice1
        .send("<presence type='unavailable'><status>off to bed</status></presence>")
        .await;
    let from = full("alice", "r1");
    for c in [&mut bob, &mut alice2, &mut alice1] {
        let p = c
            .wait("alice/r1's unavailable", |el| unavailable(el, &from))
            .await;
        assert_eq!(status_of(&p).as_deref(), Some("off to bed"));
        assert!(p.get_child("priority", CLIENT).is_none(), "{}", show(&p));
    }

    bob.send("<presence><status>b2</status></presence>").await;
    alice2
        .wait("bob's presence", |el| {
            available(el, &full("bob", "r1")) && status_of(el).as_deref() == Some("b2")
        })
        .await;
    alice1
        .none("broadcasts to an unavailable resource", |el| {
            el.name() == "presence"
        })
        .await;

    // §4.5.2: a new presence after unavailable is initial presence again (probe results included).
    alice1.online("back").await;
    alice1
        .wait("bob's presence again", |el| {
            available(el, &full("bob", "r1"))
        })
        .await;
    bob.wait("alice back", |el| {
        available(el, &from) && status_of(el).as_deref() == Some("back")
    })
    .await;
}

/// Checklist §4.5.2: a graceful unavailable is broadcast as the full XML of the client's stanza
/// (extension elements included), not rebuilt from its `<status/>` alone.
#[tokio::test]
async fn explicit_unavailable_keeps_the_clients_stanza() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    subscribe_to(&mut bob, &mut alice).await;
    alice
        .send("<presence type='unavailable'><status>bye</status><x xmlns='urn:example:extra'>data</x></presence>")
        .await;
    let p = bob
        .wait("the unavailable", |el| {
            unavailable(el, &full("alice", "r1"))
        })
        .await;
    assert_eq!(status_of(&p).as_deref(), Some("bye"));
    assert!(
        p.get_child("x", "urn:example:extra").is_some(),
        "the extension element is kept: {}",
        show(&p)
    );
}

/// §4.5.2 and §4.6.3: a connection that drops without unavailable makes the server send unavailable
/// from that full JID to contacts, to the user's other resources and to directed-presence recipients.
#[tokio::test]
async fn dropped_connection_broadcasts_unavailable() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice1 = Client::start(&server, "alice", "r1", "a1").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    let mut carol = Client::start(&server, "carol", "r1", "c").await;
    subscribe_to(&mut bob, &mut alice1).await;
    let mut alice2 = Client::start(&server, "alice", "r2", "a2").await;
    alice1
        .send(&format!(
            "<presence to='{}'><status>hi carol</status></presence>",
            bare("carol")
        ))
        .await;
    carol
        .wait("the directed presence", |el| {
            available(el, &full("alice", "r1"))
        })
        .await;
    bob.clear();

    drop(alice1);
    let from = full("alice", "r1");
    for c in [&mut bob, &mut alice2, &mut carol] {
        let p = c
            .wait("the unavailable for the dropped session", |el| {
                unavailable(el, &from)
            })
            .await;
        assert!(p.attr("to").is_some(), "{}", show(&p));
    }
}

/// Same as above for a session that ends with a stream error (invalid XML).
#[tokio::test]
async fn invalid_xml_ends_session_with_unavailable() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    subscribe_to(&mut bob, &mut alice).await;
    alice.send("<message><body>x</bod></message>").await;
    alice
        .wait("a stream error", |el| {
            el.name() == "error" && el.ns() == STREAMS
        })
        .await;
    bob.wait("unavailable from alice/r1", |el| {
        unavailable(el, &full("alice", "r1"))
    })
    .await;
}

/// RFC 6120 §7.7.2.2 with §4.5.2: a new connection that takes over the same full JID closes the old
/// one with `<conflict/>`, but the resource did not go away: contacts get no unavailable for it.
#[tokio::test]
async fn conflict_replacement_does_not_broadcast_unavailable() {
    let server = server(&["alice", "bob"]);
    let mut old = Client::start(&server, "alice", "r1", "old").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    subscribe_to(&mut bob, &mut old).await;

    let mut new = Client::bound(&server, "alice", "r1").await;
    let error = old
        .wait("the conflict stream error", |el| {
            el.name() == "error" && el.ns() == STREAMS
        })
        .await;
    assert!(
        error.has_child("conflict", STREAM_ERRORS),
        "{}",
        show(&error)
    );
    bob.none("unavailable for a resource that was taken over", |el| {
        unavailable(el, &full("alice", "r1"))
    })
    .await;

    new.online("new").await;
    bob.wait("the new session's presence", |el| {
        available(el, &full("alice", "r1")) && status_of(el).as_deref() == Some("new")
    })
    .await;
}

/// §4.6.3 #2: directed presence to a non-contact is delivered, is not repeated in later broadcasts,
/// and the recipient gets unavailable when the sender goes unavailable.
#[tokio::test]
async fn directed_presence_to_non_contact() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    let mut carol = Client::start(&server, "carol", "r1", "c").await;
    subscribe_to(&mut bob, &mut alice).await;
    carol.clear();

    alice
        .send(&format!(
            "<presence to='{}'><show>chat</show><status>just for you</status></presence>",
            bare("carol")
        ))
        .await;
    let from = full("alice", "r1");
    let p = carol
        .wait("the directed presence", |el| available(el, &from))
        .await;
    assert_eq!(p.attr("to"), Some("carol@localhost"));
    assert_eq!(status_of(&p).as_deref(), Some("just for you"));
    bob.none("the directed presence", |el| {
        presence_from_account(el, "alice@localhost")
    })
    .await;

    alice
        .send("<presence><show>away</show><status>for everyone</status></presence>")
        .await;
    bob.wait("the broadcast", |el| {
        available(el, &from) && status_of(el).as_deref() == Some("for everyone")
    })
    .await;
    carol
        .none("a later broadcast (§4.6.3 #2: MN add)", |el| {
            presence_from_account(el, "alice@localhost")
        })
        .await;

    alice
        .send("<presence type='unavailable'><status>bye</status></presence>")
        .await;
    for c in [&mut bob, &mut carol] {
        c.wait("alice's unavailable", |el| unavailable(el, &from))
            .await;
    }
    let n = carol.count(|el| unavailable(el, &from)).await;
    assert_eq!(n, 0, "exactly one unavailable:\n{}", carol.dump());
}

/// §8.5.2.2.2: presence to a user with no available resource is silently dropped: no error, nothing
/// stored for later.
#[tokio::test]
async fn presence_to_offline_user_is_dropped() {
    let server = server(&["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, "alice", "r1", "broadcast").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    mutual(&mut alice, &mut bob).await;
    bob.send("<presence type='unavailable'/>").await;
    bob.wait("my unavailable echo", |el| {
        unavailable(el, &full("bob", "r1"))
    })
    .await;
    drop(bob);
    alice
        .wait("bob's unavailable", |el| {
            unavailable(el, &full("bob", "r1"))
        })
        .await;

    for to in [
        bare("carol"),
        full("carol", "r9"),
        bare("bob"),
        full("bob", "r1"),
    ] {
        alice
            .send(&format!(
                "<presence to='{to}' id='p-{to}'><status>directed while offline</status></presence>"
            ))
            .await;
    }
    alice
        .nothing("an error or anything else for presence to offline users")
        .await;

    let mut carol = Client::bound(&server, "carol", "r1").await;
    carol.roster_get().await;
    carol.online("c").await;
    carol
        .none("stored presence from alice", |el| {
            presence_from_account(el, "alice@localhost")
        })
        .await;

    let mut bob = Client::bound(&server, "bob", "r1").await;
    bob.roster_get().await;
    bob.online("b again").await;
    let p = bob
        .wait("alice's current presence (probe result)", |el| {
            available(el, &full("alice", "r1"))
        })
        .await;
    assert_eq!(
        status_of(&p).as_deref(),
        Some("broadcast"),
        "the last broadcast, not the directed presence: {}",
        show(&p)
    );
    bob.none("the directed presence stored", |el| {
        status_of(el).as_deref() == Some("directed while offline")
    })
    .await;
}

/// §4.7.2.1 and RFC 6120 §8.3.3.1: an invalid priority or an unknown presence type is
/// `<bad-request/>`, and such presence is not broadcast.
#[tokio::test]
async fn invalid_priority_and_type_are_bad_request() {
    let server = server(&["alice", "bob"]);
    let mut alice = Client::start(&server, "alice", "r1", "a").await;
    let mut bob = Client::start(&server, "bob", "r1", "b").await;
    subscribe_to(&mut bob, &mut alice).await;

    let cases = [
        (
            "prio-200",
            "<presence id='prio-200'><priority>200</priority></presence>".to_string(),
        ),
        (
            "prio-x",
            "<presence id='prio-x'><priority>x</priority></presence>".to_string(),
        ),
        ("bogus", "<presence id='bogus' type='bogus'/>".to_string()),
        (
            "bogus-to",
            format!(
                "<presence id='bogus-to' type='bogus' to='{}'/>",
                bare("bob")
            ),
        ),
    ];
    for (id, stanza) in &cases {
        alice.send(stanza).await;
        let reply = alice
            .wait(&format!("the error for {id}"), |el| {
                el.name() == "presence" && el.attr("id") == Some(*id)
            })
            .await;
        assert_error(&reply, "bad-request");
    }
    bob.none("presence from invalid stanzas", |el| {
        presence_from_account(el, "alice@localhost")
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Available vs connected (RFC 6121 §4.1, §8.5)

/// A session that bound (and even fetched the roster) but never sent presence is not available: it
/// gets no presence broadcasts, neither from contacts nor from its own account's resources, until it
/// sends initial presence.
#[tokio::test]
async fn bound_session_without_presence_gets_no_broadcasts() {
    let server = server(&["alice", "bob"]);
    let mut alice1 = Client::start(&server, "alice", "r1", "a1").await;
    let mut bob1 = Client::start(&server, "bob", "r1", "b1").await;
    mutual(&mut alice1, &mut bob1).await;
    let mut bob2 = Client::bound(&server, "bob", "r2").await;
    bob2.roster_get().await;
    let mut alice2 = Client::bound(&server, "alice", "r2").await;

    alice1
        .send("<presence><show>away</show><status>changed</status></presence>")
        .await;
    bob1.wait("alice's presence", |el| {
        available(el, &full("alice", "r1")) && status_of(el).as_deref() == Some("changed")
    })
    .await;
    bob2.none("presence to a resource that is not available", |el| {
        el.name() == "presence"
    })
    .await;
    alice2
        .nothing("own-account presence to a resource that is not available")
        .await;

    // Once it sends initial presence it is available and hears the contact's current presence.
    bob2.online("b2").await;
    let p = bob2
        .wait("alice's current presence", |el| {
            available(el, &full("alice", "r1"))
        })
        .await;
    assert_eq!(status_of(&p).as_deref(), Some("changed"));
    bob2.wait("my other resource's presence", |el| {
        available(el, &full("bob", "r1"))
    })
    .await;
}
