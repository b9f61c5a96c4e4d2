//! Users' message archives (XEP-0313 on the account's bare JID) over real sockets against the real
//! server: what is recorded on each side of a conversation and under which ids, queries with every
//! form field and paging both ways, XEP-0441 preferences, the temporary and permanent modes,
//! expiry, XEP-0424 retractions and XEP-0308 corrections, account deletion, and the refusals.

mod common;

use std::time::Duration;

use common::mam::*;
use common::muc::{error_condition, xml, PASSWORD};
use common::stanzas::*;
use common::*;
use minidom::Element;

const RETRACT: &str = "urn:xmpp:message-retract:1";
const CARBONS: &str = "urn:xmpp:carbons:2";

/// A query on one's own archive (no `to`: results come without `from`).
async fn own(c: &mut Client, fields: &[String], set: &str, extra: &str) -> Page {
    query_at(c, None, None, fields, set, extra).await
}

/// Everything in one's own archive (up to a page of 250).
async fn everything(c: &mut Client) -> Page {
    let page = own(c, &[], "<max>250</max>", "").await;
    assert_eq!(page.error(), None, "{}", xml(&page.end));
    page
}

/// Logged in, bound and available, with nothing pending.
async fn online(server: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = coming_online(server, user, resource).await;
    c.settle_and_clear().await;
    c
}

/// Logged in, bound and available; what was stored offline is on its way.
async fn coming_online(server: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = Client::bound_with(server, user, PASSWORD, resource).await;
    c.online_with("here", None).await;
    c
}

/// The `<stanza-id/>` by `by` in a message, if any.
fn stanza_id_by(el: &Element, by: &str) -> Option<String> {
    el.children()
        .find(|c| c.is("stanza-id", STANZA_ID) && c.attr("by") == Some(by))
        .and_then(|s| s.attr("id"))
        .map(String::from)
}

/// Sends a chat message from `from` to `to` (a JID) and waits until `reader` has it.
async fn say(from: &mut Client, to: &str, reader: &mut Client, body: &str) -> Element {
    from.chat(to, body).await;
    reader.wait_body(body).await
}

/// Sends a raw stanza and waits for the server to have handled it.
async fn send_handled(c: &mut Client, stanza: &str) {
    c.send(stanza).await;
    c.ping().await;
}

#[tokio::test]
async fn both_sides_are_archived_with_the_ids_seen_live_and_receipts_and_markers_too() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut alice = online(&server, "alice", "phone").await;
    let mut bob = online(&server, "bob", "laptop").await;

    let mut live_ids = Vec::new();
    for body in ["hello", "how are you?"] {
        let got = say(&mut alice, "bob@localhost", &mut bob, body).await;
        // The recipient sees the id of its own archive; nothing of the sender's (§3.1).
        live_ids.push(stanza_id_by(&got, "bob@localhost").expect("a stanza-id by bob"));
        assert_eq!(stanza_id_by(&got, "alice@localhost"), None, "{}", xml(&got));
    }
    // Bob's client acknowledges: a receipt and a displayed marker, and a chat state (not kept).
    send_handled(
        &mut bob,
        "<message to='alice@localhost/phone' type='chat' id='r1'><received xmlns='urn:xmpp:receipts' id='msg-1'/></message>",
    )
    .await;
    send_handled(
        &mut bob,
        "<message to='alice@localhost/phone' type='chat' id='d1'><displayed xmlns='urn:xmpp:chat-markers:0' id='msg-2'/></message>",
    )
    .await;
    send_handled(
        &mut bob,
        "<message to='alice@localhost/phone' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
    )
    .await;
    // Headlines and errors are not conversations.
    send_handled(
        &mut bob,
        "<message to='alice@localhost/phone' type='headline'><body>news</body></message>",
    )
    .await;

    let page = everything(&mut bob).await;
    assert!(page.complete(), "{}", xml(&page.end));
    assert_eq!(page.bodies(), ["hello", "how are you?", "", ""]);
    // The archive's ids are the ones Bob saw live.
    assert_eq!(page.ids()[..2], live_ids[..]);
    let messages = page.messages();
    assert_eq!(messages[0].attr("from"), Some("alice@localhost/phone"));
    assert_eq!(messages[0].attr("to"), Some("bob@localhost"));
    assert!(messages[2].has_child("received", "urn:xmpp:receipts"));
    assert!(messages[3].has_child("displayed", "urn:xmpp:chat-markers:0"));
    for result in &page.results {
        let forwarded = Page::forwarded(result);
        assert!(
            forwarded
                .get_child("delay", DELAY)
                .and_then(|d| d.attr("stamp"))
                .is_some(),
            "a delay stamp in {}",
            xml(result)
        );
    }

    // Alice's archive holds the same conversation from her side: what she sent, what she got.
    let page = everything(&mut alice).await;
    assert_eq!(page.bodies(), ["hello", "how are you?", "", ""]);
    let messages = page.messages();
    assert_eq!(messages[0].attr("from"), Some("alice@localhost/phone"));
    assert!(messages[2].has_child("received", "urn:xmpp:receipts"));
    assert_eq!(messages[2].attr("from"), Some("bob@localhost/laptop"));
    // Each archive has its own ids.
    assert!(page.ids().iter().all(|id| !live_ids.contains(id)));

    // The account's bare JID says so (XEP-0313 §7, XEP-0424 §2 and §5); the server's does not.
    let info = alice
        .iq(
            "get",
            Some("alice@localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let features: Vec<&str> = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .map(|q| q.children().filter_map(|f| f.attr("var")).collect())
        .unwrap_or_default();
    for feature in [
        MAM,
        "urn:xmpp:mam:2#extended",
        RETRACT,
        "urn:xmpp:message-retract:1#tombstone",
    ] {
        assert!(features.contains(&feature), "{feature} in {}", xml(&info));
    }
    let info = alice
        .iq(
            "get",
            Some("localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert!(!xml(&info).contains(MAM), "{}", xml(&info));
}

#[tokio::test]
async fn other_devices_see_the_archive_id_in_carbons_and_offline_messages_keep_it() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut phone = online(&server, "alice", "phone").await;
    let mut laptop = online(&server, "alice", "laptop").await;
    for c in [&mut phone, &mut laptop] {
        let reply = c
            .iq("set", None, &format!("<enable xmlns='{CARBONS}'/>"))
            .await;
        assert_result(&reply);
    }
    // Bob is offline: the message waits in offline storage, already archived on both sides.
    phone.chat("bob@localhost", "are you there?").await;
    let carbon = laptop
        .wait("the sent carbon", |el| {
            el.has_child("sent", CARBONS) && xml(el).contains("are you there?")
        })
        .await;
    let forwarded = carbon
        .get_child("sent", CARBONS)
        .and_then(|s| s.get_child("forwarded", FORWARD))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .unwrap_or_else(|| panic!("no forwarded message in {}", xml(&carbon)));
    let sent_id = stanza_id_by(forwarded, "alice@localhost")
        .unwrap_or_else(|| panic!("no archive id in the carbon {}", xml(&carbon)));
    let page = everything(&mut laptop).await;
    assert_eq!(page.ids(), [sent_id]);

    let mut bob = coming_online(&server, "bob", "tablet").await;
    let got = bob.wait_body("are you there?").await;
    let live = stanza_id_by(&got, "bob@localhost").expect("a stanza-id by bob");
    assert_eq!(stanza_id_by(&got, "alice@localhost"), None);
    assert!(got.has_child("delay", DELAY), "{}", xml(&got));
    let page = everything(&mut bob).await;
    assert_eq!(page.ids(), std::slice::from_ref(&live));
    assert_eq!(page.bodies(), ["are you there?"]);

    // A new device of Bob's catches up from the archive, and the archive survives a restart;
    // what comes after it sorts after it.
    drop(bob);
    drop(phone);
    drop(laptop);
    let server = TestServer::restart(server);
    let mut alice = online(&server, "alice", "phone").await;
    let mut bob = online(&server, "bob", "new-phone").await;
    say(&mut alice, "bob@localhost", &mut bob, "welcome back").await;
    let page = everything(&mut bob).await;
    assert_eq!(page.bodies(), ["are you there?", "welcome back"]);
    assert_eq!(page.ids()[0], live);
}

/// Alice, Bob and Carol with a conversation in Bob's archive: Alice says a0..a9 from her phone
/// (a5..a9 from her laptop), Carol c0 and c1, Bob writes a note to himself.
async fn a_busy_archive(server: &TestServer) -> (Client, Client, Client, Client) {
    let mut alice = online(server, "alice", "phone").await;
    let mut laptop = online(server, "alice", "laptop").await;
    let mut bob = online(server, "bob", "desk").await;
    let mut carol = online(server, "carol", "home").await;
    for i in 0..5 {
        say(&mut alice, "bob@localhost", &mut bob, &format!("a{i}")).await;
    }
    say(&mut carol, "bob@localhost", &mut bob, "c0").await;
    for i in 5..10 {
        say(&mut laptop, "bob@localhost", &mut bob, &format!("a{i}")).await;
    }
    say(&mut carol, "bob@localhost", &mut bob, "c1").await;
    bob.chat("bob@localhost/desk", "note to self").await;
    bob.wait_body("note to self").await;
    (alice, laptop, bob, carol)
}

#[tokio::test]
async fn queries_filter_by_with_time_and_ids_and_page_both_ways() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let (_alice, _laptop, mut bob, _carol) = a_busy_archive(&server).await;
    let all = everything(&mut bob).await;
    let bodies: Vec<String> = all.bodies();
    assert_eq!(bodies.len(), 13, "{bodies:?}");
    let ids = all.ids();

    // with: a bare JID covers every resource, a full JID one only, one's own JID the notes.
    let page = own(&mut bob, &[field("with", &["alice@localhost"])], "", "").await;
    assert_eq!(
        page.bodies(),
        ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"]
    );
    let page = own(
        &mut bob,
        &[field("with", &["alice@localhost/laptop"])],
        "",
        "",
    )
    .await;
    assert_eq!(page.bodies(), ["a5", "a6", "a7", "a8", "a9"]);
    let page = own(&mut bob, &[field("with", &["carol@localhost"])], "", "").await;
    assert_eq!(page.bodies(), ["c0", "c1"]);
    let page = own(&mut bob, &[field("with", &["bob@localhost"])], "", "").await;
    assert_eq!(page.bodies(), ["note to self"]);
    let page = own(&mut bob, &[field("with", &["nobody@localhost"])], "", "").await;
    assert!(page.results.is_empty() && page.complete());

    // Paging forwards through one conversation, three at a time, until complete.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let set = if after.is_empty() {
            "<max>3</max>".to_string()
        } else {
            format!("<max>3</max><after>{after}</after>")
        };
        let page = own(&mut bob, &[field("with", &["alice@localhost"])], &set, "").await;
        assert_eq!(page.error(), None, "{}", xml(&page.end));
        seen.extend(page.bodies());
        if page.complete() {
            break;
        }
        after = page.first_last().1.expect("a last id");
    }
    assert_eq!(
        seen,
        ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"]
    );

    // Backwards from the last page (an empty <before/>), four at a time.
    let mut pages = Vec::new();
    let mut before = String::new();
    loop {
        let page = own(
            &mut bob,
            &[],
            &format!("<max>4</max><before>{before}</before>"),
            "",
        )
        .await;
        pages.push(page.bodies());
        if page.complete() {
            break;
        }
        before = page.first_last().0.expect("a first id");
    }
    assert_eq!(pages.len(), 4, "{pages:?}");
    assert_eq!(pages[0], ["a8", "a9", "c1", "note to self"]);
    assert_eq!(pages[3], ["a0"]);
    let flattened: Vec<String> = pages.into_iter().rev().flatten().collect();
    assert_eq!(flattened, bodies);

    // A flipped page: the same page, newest first.
    let page = own(&mut bob, &[], "<max>3</max><before/>", "<flip-page/>").await;
    assert_eq!(page.bodies(), ["note to self", "c1", "a9"]);

    // after-id and before-id (extended), and single items by id.
    let page = own(
        &mut bob,
        &[
            field("after-id", &[&ids[2]]),
            field("before-id", &[&ids[6]]),
        ],
        "",
        "",
    )
    .await;
    assert_eq!(page.bodies(), ["a3", "a4", "c0"]);
    let page = own(&mut bob, &[field("ids", &[&ids[11], &ids[0]])], "", "").await;
    assert_eq!(page.bodies(), ["a0", "c1"]);

    // start and end: times from the archive's own stamps.
    let stamp_of = |page: &Page, i: usize| -> String {
        Page::forwarded(&page.results[i])
            .get_child("delay", DELAY)
            .and_then(|d| d.attr("stamp"))
            .expect("a stamp")
            .to_string()
    };
    let start = stamp_of(&all, 0);
    let end = stamp_of(&all, 12);
    let page = own(
        &mut bob,
        &[field("start", &[&start]), field("end", &[&end])],
        "<max>250</max>",
        "",
    )
    .await;
    assert_eq!(page.bodies(), bodies);
    let page = own(
        &mut bob,
        &[field("start", &["2999-01-01T00:00:00Z"])],
        "",
        "",
    )
    .await;
    assert!(page.results.is_empty() && page.complete());
    let page = own(&mut bob, &[field("end", &["2000-01-01T00:00:00Z"])], "", "").await;
    assert!(page.results.is_empty() && page.complete());

    // A page past the end: nothing, and complete.
    let page = own(&mut bob, &[], &format!("<after>{}</after>", ids[12]), "").await;
    assert!(
        page.results.is_empty() && page.complete(),
        "{}",
        xml(&page.end)
    );

    // The form, and the archive's first and last entries (addressed to the bare JID this time).
    let form = bob
        .iq(
            "get",
            Some("bob@localhost"),
            &format!("<query xmlns='{MAM}'/>"),
        )
        .await;
    assert_result(&form);
    for var in ["with", "start", "end", "before-id", "after-id", "ids"] {
        assert!(
            xml(&form).contains(&format!("var='{var}'"))
                || xml(&form).contains(&format!("var=\"{var}\"")),
            "{var} in {}",
            xml(&form)
        );
    }
    let metadata = bob
        .iq("get", None, &format!("<metadata xmlns='{MAM}'/>"))
        .await;
    let metadata = metadata
        .get_child("metadata", MAM)
        .unwrap_or_else(|| panic!("no metadata in {}", xml(&metadata)));
    assert_eq!(
        metadata.get_child("start", MAM).and_then(|s| s.attr("id")),
        Some(ids[0].as_str())
    );
    assert_eq!(
        metadata.get_child("end", MAM).and_then(|s| s.attr("id")),
        Some(ids[12].as_str())
    );
}

#[tokio::test]
async fn bad_queries_get_the_right_error_and_change_nothing() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut alice = online(&server, "alice", "phone").await;
    let mut bob = online(&server, "bob", "desk").await;
    say(&mut alice, "bob@localhost", &mut bob, "kept").await;
    let before = everything(&mut bob).await.ids();
    // An id from Alice's archive means nothing in Bob's.
    let foreign = everything(&mut alice).await.ids()[0].clone();

    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'>{}{}</x></query>",
                field("FORM_TYPE", &[MAM]),
                field("colour", &["blue"])
            ),
            "feature-not-implemented",
        ),
        (
            format!(
                "<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='form'>{}</x></query>",
                field("FORM_TYPE", &[MAM])
            ),
            "bad-request",
        ),
        (
            format!(
                "<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'>{}{}</x></query>",
                field("FORM_TYPE", &[MAM]),
                field("with", &["not a jid@@"])
            ),
            "bad-request",
        ),
        (
            format!(
                "<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'>{}{}</x></query>",
                field("FORM_TYPE", &[MAM]),
                field("start", &["yesterday"])
            ),
            "bad-request",
        ),
        (
            format!(
                "<query xmlns='{MAM}'><set xmlns='{RSM}'><after>{foreign}</after></set></query>"
            ),
            "item-not-found",
        ),
        (
            format!(
                "<query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'>{}{}</x></query>",
                field("FORM_TYPE", &[MAM]),
                field("ids", &["AAAAAAAAAAAAAAAAAAAAAA"])
            ),
            "item-not-found",
        ),
        (
            format!("<query xmlns='{MAM}'><set xmlns='{RSM}'><index>3</index></set></query>"),
            "feature-not-implemented",
        ),
        (
            format!("<prefs xmlns='{MAM}' default='sometimes'/>"),
            "bad-request",
        ),
        (format!("<archive xmlns='{MAM}'/>"), "bad-request"),
    ];
    for (payload, condition) in cases {
        let reply = bob.iq("set", None, &payload).await;
        assert_eq!(
            error_condition(&reply).as_deref(),
            Some(condition),
            "{payload} -> {}",
            xml(&reply)
        );
    }
    let reply = bob
        .iq("set", None, &format!("<metadata xmlns='{MAM}'/>"))
        .await;
    assert_eq!(error_condition(&reply).as_deref(), Some("bad-request"));

    // Someone else's archive is not to be read, nor their preferences.
    let reply = alice
        .iq(
            "set",
            Some("bob@localhost"),
            &format!("<query xmlns='{MAM}'/>"),
        )
        .await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));
    let reply = alice
        .iq(
            "get",
            Some("bob@localhost"),
            &format!("<prefs xmlns='{MAM}'/>"),
        )
        .await;
    assert_eq!(error_condition(&reply).as_deref(), Some("forbidden"));

    // Nothing changed: the same archive, the same (default) preferences.
    assert_eq!(everything(&mut bob).await.ids(), before);
    let prefs = bob
        .iq("get", None, &format!("<prefs xmlns='{MAM}'/>"))
        .await;
    assert_eq!(
        prefs
            .get_child("prefs", MAM)
            .and_then(|p| p.attr("default")),
        Some("always"),
        "{}",
        xml(&prefs)
    );
}

/// Sets the archiving preferences and checks the answer.
async fn set_prefs(c: &mut Client, default: &str, always: &[&str], never: &[&str]) {
    let list =
        |jids: &[&str]| -> String { jids.iter().map(|j| format!("<jid>{j}</jid>")).collect() };
    let reply = c
        .iq(
            "set",
            None,
            &format!(
                "<prefs xmlns='{MAM}' default='{default}'><always>{}</always><never>{}</never></prefs>",
                list(always),
                list(never)
            ),
        )
        .await;
    assert_result(&reply);
    let prefs = reply
        .get_child("prefs", MAM)
        .unwrap_or_else(|| panic!("no prefs in {}", xml(&reply)));
    assert_eq!(prefs.attr("default"), Some(default));
}

#[tokio::test]
async fn preferences_decide_what_each_user_archives() {
    let server = server_with_users(&["alice", "bob", "carol", "dave"], PASSWORD);
    let mut alice = online(&server, "alice", "phone").await;
    let mut bob = online(&server, "bob", "desk").await;
    let mut carol = online(&server, "carol", "home").await;
    let mut dave = online(&server, "dave", "work").await;

    // The defaults: always, both lists present and empty.
    let reply = bob
        .iq("get", None, &format!("<prefs xmlns='{MAM}'/>"))
        .await;
    let prefs = reply.get_child("prefs", MAM).expect("prefs");
    assert_eq!(prefs.attr("default"), Some("always"));
    assert!(prefs.has_child("always", MAM) && prefs.has_child("never", MAM));

    // Bob archives nothing but Carol; Alice never archives Dave.
    set_prefs(&mut bob, "never", &["carol@localhost"], &[]).await;
    set_prefs(&mut alice, "always", &[], &["dave@localhost"]).await;
    say(&mut alice, "bob@localhost", &mut bob, "from alice").await;
    let got = say(&mut carol, "bob@localhost", &mut bob, "from carol").await;
    assert!(stanza_id_by(&got, "bob@localhost").is_some());
    say(&mut dave, "alice@localhost", &mut alice, "from dave").await;
    say(&mut alice, "dave@localhost", &mut dave, "to dave").await;
    assert_eq!(everything(&mut bob).await.bodies(), ["from carol"]);
    assert_eq!(everything(&mut alice).await.bodies(), ["from alice"]);

    // Roster: only contacts in the roster. Carol has Alice in hers, not Dave.
    let reply = carol
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='alice@localhost'/></query>",
        )
        .await;
    assert_result(&reply);
    set_prefs(&mut carol, "roster", &[], &[]).await;
    say(&mut alice, "carol@localhost", &mut carol, "friend").await;
    say(&mut dave, "carol@localhost", &mut carol, "stranger").await;
    let carols = everything(&mut carol).await.bodies();
    assert_eq!(carols, ["from carol", "friend"]);

    // Preferences are kept across a restart.
    drop((alice, bob, carol, dave));
    let server = TestServer::restart(server);
    let mut bob = online(&server, "bob", "desk").await;
    let reply = bob
        .iq("get", None, &format!("<prefs xmlns='{MAM}'/>"))
        .await;
    let prefs = reply.get_child("prefs", MAM).expect("prefs");
    assert_eq!(prefs.attr("default"), Some("never"));
    assert!(xml(prefs).contains("carol@localhost"), "{}", xml(prefs));
}

#[tokio::test]
async fn in_temporary_mode_nothing_is_archived_unless_a_user_asks() {
    let server = TestServer::start_with(Options {
        extra: "[archive]\ndefault = \"temporary\"\n".into(),
        ..Options::default()
    });
    for user in ["alice", "bob", "carol"] {
        server.add_user(user, PASSWORD);
    }
    let mut alice = online(&server, "alice", "phone").await;
    // Bob is offline: the offline store alone holds the message until he comes.
    alice.chat("bob@localhost", "only until delivered").await;
    alice.ping().await;
    let mut bob = coming_online(&server, "bob", "desk").await;
    let got = bob.wait_body("only until delivered").await;
    assert!(got.has_child("delay", DELAY));
    assert!(everything(&mut bob).await.results.is_empty());
    assert!(everything(&mut alice).await.results.is_empty());
    let reply = bob
        .iq("get", None, &format!("<prefs xmlns='{MAM}'/>"))
        .await;
    assert_eq!(
        reply
            .get_child("prefs", MAM)
            .and_then(|p| p.attr("default")),
        Some("never")
    );

    // Carol wants her history kept.
    let mut carol = online(&server, "carol", "home").await;
    set_prefs(&mut carol, "always", &[], &[]).await;
    say(&mut alice, "carol@localhost", &mut carol, "kept for carol").await;
    assert_eq!(everything(&mut carol).await.bodies(), ["kept for carol"]);
    assert!(everything(&mut alice).await.results.is_empty());

    // New rooms keep no archive unless their owner says so.
    let room = common::muc::room("quiet");
    common::muc::create(&mut alice, &room, "Alice").await;
    let form = alice
        .iq(
            "get",
            Some(&room),
            "<query xmlns='http://jabber.org/protocol/muc#owner'/>",
        )
        .await;
    let archiving = form
        .get_child("query", "http://jabber.org/protocol/muc#owner")
        .and_then(|q| q.get_child("x", "jabber:x:data"))
        .and_then(|x| {
            x.children()
                .find(|f| f.attr("var") == Some("muc#roomconfig_enablearchiving"))
        })
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text());
    assert_eq!(archiving.as_deref(), Some("0"), "{}", xml(&form));
}

#[tokio::test]
async fn hints_keep_messages_out_of_the_archive() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut alice = online(&server, "alice", "phone").await;
    let mut bob = online(&server, "bob", "desk").await;
    for hint in ["no-store", "no-permanent-store"] {
        alice
            .send(&format!(
                "<message to='bob@localhost' type='chat'><body>{hint}</body><{hint} xmlns='urn:xmpp:hints'/></message>"
            ))
            .await;
        let got = bob.wait_body(hint).await;
        assert_eq!(stanza_id_by(&got, "alice@localhost"), None);
    }
    // A body-less message with a store hint is kept.
    send_handled(
        &mut alice,
        "<message to='bob@localhost' type='chat' id='s1'><store xmlns='urn:xmpp:hints'/><x xmlns='urn:example:custom'/></message>",
    )
    .await;
    bob.wait("the hinted message", |el| el.attr("id") == Some("s1"))
        .await;
    let page = everything(&mut bob).await;
    assert_eq!(page.messages().len(), 1, "{}", xml(&page.end));
    assert_eq!(page.messages()[0].attr("id"), Some("s1"));
    assert_eq!(everything(&mut alice).await.messages().len(), 1);
}

#[tokio::test]
async fn a_retraction_leaves_a_tombstone_and_corrections_are_kept() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut alice = online(&server, "alice", "phone").await;
    let mut bob = online(&server, "bob", "desk").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='oops'><body>wrong chat</body><origin-id xmlns='urn:xmpp:sid:0' id='oops'/></message>")
        .await;
    bob.wait_body("wrong chat").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='m2'><body>teh end</body></message>")
        .await;
    bob.wait_body("teh end").await;
    alice
        .send("<message to='bob@localhost' type='chat' id='m3'><body>the end</body><replace xmlns='urn:xmpp:message-correct:0' id='m2'/></message>")
        .await;
    bob.wait_body("the end").await;
    // Bob cannot retract Alice's message, not even in his own archive.
    send_handled(
        &mut bob,
        &format!("<message to='alice@localhost' type='chat' id='fake'><retract xmlns='{RETRACT}' id='oops'/><body>/me retracted</body></message>"),
    )
    .await;
    alice
        .send(&format!("<message to='bob@localhost' type='chat' id='undo'><retract xmlns='{RETRACT}' id='oops'/><fallback xmlns='urn:xmpp:fallback:0' for='{RETRACT}'/><body>/me retracted a message</body><store xmlns='urn:xmpp:hints'/></message>"))
        .await;
    bob.wait("the retraction", |el| el.attr("id") == Some("undo"))
        .await;

    for (who, c) in [("alice", &mut alice), ("bob", &mut bob)] {
        let page = everything(c).await;
        let messages = page.messages();
        assert_eq!(messages.len(), 5, "{who}: {:?}", page.bodies());
        let stone = messages[0];
        assert_eq!(stone.attr("id"), Some("oops"), "{who}");
        assert_eq!(body_of(stone), None, "{who}: {}", xml(stone));
        let retracted = stone
            .get_child("retracted", RETRACT)
            .unwrap_or_else(|| panic!("{who}: no tombstone in {}", xml(stone)));
        assert_eq!(retracted.attr("id"), Some("undo"));
        assert!(retracted.attr("stamp").is_some());
        assert!(stone.has_child("origin-id", STANZA_ID), "{}", xml(stone));
        // The correction is kept as sent, after what it corrects; the retraction is archived.
        assert_eq!(body_of(messages[1]).as_deref(), Some("teh end"));
        assert_eq!(
            messages[2]
                .get_child("replace", "urn:xmpp:message-correct:0")
                .and_then(|r| r.attr("id")),
            Some("m2")
        );
        assert_eq!(messages[3].attr("id"), Some("fake"));
        assert_eq!(messages[4].attr("id"), Some("undo"));
        assert!(messages[4].has_child("retract", RETRACT));
    }
}

#[tokio::test]
async fn old_messages_expire_in_the_background() {
    let server = TestServer::start_with(Options {
        extra: "[archive]\nexpire_after = \"3s\"\n".into(),
        ..Options::default()
    });
    for user in ["alice", "bob"] {
        server.add_user(user, PASSWORD);
    }
    let mut alice = online(&server, "alice", "phone").await;
    let mut bob = online(&server, "bob", "desk").await;
    say(&mut alice, "bob@localhost", &mut bob, "old").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    say(&mut alice, "bob@localhost", &mut bob, "newer").await;
    assert_eq!(everything(&mut bob).await.bodies(), ["old", "newer"]);
    // The oldest goes first (no holes, XEP-0313 §3.2); the newer one is still there then.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let bodies = everything(&mut bob).await.bodies();
        if bodies == ["newer"] {
            break;
        }
        assert_eq!(bodies, ["old", "newer"]);
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing expired: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
        .log_with(|l| l.contains("expired archived messages"))
        .await;
    // Then everything, in both archives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !everything(&mut alice).await.results.is_empty()
        || !everything(&mut bob).await.results.is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "still archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn deleting_an_account_deletes_its_archive_and_preferences() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut alice = online(&server, "alice", "phone").await;
    let mut bob = online(&server, "bob", "desk").await;
    say(&mut alice, "bob@localhost", &mut bob, "before").await;
    set_prefs(&mut bob, "roster", &["alice@localhost"], &[]).await;
    assert_eq!(everything(&mut bob).await.bodies(), ["before"]);
    let (ok, out, err) = server.cli(&["user", "del", "bob@localhost"]);
    assert!(ok, "{out}{err}");
    server.add_user("bob", PASSWORD);
    let mut bob = online(&server, "bob", "desk").await;
    assert!(everything(&mut bob).await.results.is_empty());
    let reply = bob
        .iq("get", None, &format!("<prefs xmlns='{MAM}'/>"))
        .await;
    assert_eq!(
        reply
            .get_child("prefs", MAM)
            .and_then(|p| p.attr("default")),
        Some("always")
    );
    // Alice's side of the conversation is hers, and stays.
    assert_eq!(everything(&mut alice).await.bodies(), ["before"]);
}

#[tokio::test]
async fn refused_messages_are_archived_on_neither_side() {
    let server = TestServer::start_with(Options {
        extra: "[offline]\nmax_messages = 1\n".into(),
        ..Options::default()
    });
    for user in ["alice", "bob", "carol"] {
        server.add_user(user, PASSWORD);
    }
    let mut alice = online(&server, "alice", "phone").await;
    let mut laptop = online(&server, "alice", "laptop").await;
    let reply = laptop
        .iq("set", None, &format!("<enable xmlns='{CARBONS}'/>"))
        .await;
    assert_result(&reply);
    let mut carol = online(&server, "carol", "home").await;
    let reply = carol
        .iq(
            "set",
            None,
            "<block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block>",
        )
        .await;
    assert_result(&reply);

    // Bob is offline and his queue takes one message; Carol blocks Alice; nobody does not exist.
    alice.chat("bob@localhost", "first").await;
    for (to, body) in [
        ("bob@localhost", "second"),
        ("carol@localhost", "blocked"),
        ("nobody@localhost", "lost"),
    ] {
        alice
            .send(&format!(
                "<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"
            ))
            .await;
        let error = alice
            .wait(&format!("the error for {body}"), |el| {
                el.attr("type") == Some("error") && el.attr("id") == Some(body)
            })
            .await;
        assert!(error_condition(&error).is_some(), "{}", xml(&error));
    }
    assert_eq!(everything(&mut alice).await.bodies(), ["first"]);
    assert!(everything(&mut carol).await.results.is_empty());
    // Alice's other device saw only what was accepted.
    laptop.settle().await;
    let carbons: Vec<Element> =
        laptop.take(|el| el.has_child("sent", CARBONS) && el.name() == "message");
    assert_eq!(
        carbons.len(),
        1,
        "{:?}",
        carbons.iter().map(xml).collect::<Vec<_>>()
    );
    assert!(xml(&carbons[0]).contains("first"));

    let mut bob = coming_online(&server, "bob", "desk").await;
    bob.wait_body("first").await;
    assert_eq!(everything(&mut bob).await.bodies(), ["first"]);
}
