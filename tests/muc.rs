//! Groups (XEP-0045) over real sockets against the real server: creating a room (locked until the
//! owner accepts a configuration), joining with the presence and status codes of §7.2, groupchat
//! fan-out with the room's stanza-id and the sender's echo, the subject, private messages, leaving
//! and disconnecting, disco of the service and of rooms, and the refusals of §7.2 (nick conflict,
//! locked room, members-only, password, room full) and §7.4 (non-occupants, visitors).

mod common;

use common::stanzas::*;
use common::*;
use minidom::Element;

const PASSWORD: &str = "groups!";
const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const SERVICE: &str = "conference.localhost";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

fn room(name: &str) -> String {
    format!("{name}@{SERVICE}")
}

/// The status codes of a MUC presence.
fn codes(el: &Element) -> Vec<String> {
    el.get_child("x", MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", MUC_USER))
                .filter_map(|c| c.attr("code").map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The `<item/>` of a MUC presence: (affiliation, role, jid).
fn item(el: &Element) -> (String, String, Option<String>) {
    let item = el
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("item", MUC_USER))
        .unwrap_or_else(|| panic!("no muc#user item in {}", xml(el)));
    (
        item.attr("affiliation").unwrap_or("").to_string(),
        item.attr("role").unwrap_or("").to_string(),
        item.attr("jid").map(String::from),
    )
}

fn xml(el: &Element) -> String {
    String::from(el)
}

fn error_condition(el: &Element) -> Option<String> {
    el.get_child("error", "jabber:client").and_then(|e| {
        e.children()
            .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
            .map(|c| c.name().to_string())
    })
}

fn presence_from(el: &Element, from: &str) -> bool {
    el.name() == "presence" && el.attr("from") == Some(from)
}

/// Sends a join presence to `room/nick` (with an optional password).
async fn send_join(c: &mut Client, room: &str, nick: &str, password: Option<&str>) {
    let password = password
        .map(|p| format!("<password>{p}</password>"))
        .unwrap_or_default();
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='{MUC}'>{password}</x></presence>"
    ))
    .await;
}

/// Waits for the presence error that refuses a join.
async fn join_error(c: &mut Client, what: &str) -> Element {
    c.wait(what, |el| {
        el.name() == "presence" && el.attr("type") == Some("error")
    })
    .await
}

/// Joins and waits for the self-presence (status 110) and the subject; returns the self-presence.
async fn join(c: &mut Client, room: &str, nick: &str) -> Element {
    send_join(c, room, nick, None).await;
    let own = format!("{room}/{nick}");
    let me = c
        .wait("self-presence", |el| {
            presence_from(el, &own) && codes(el).contains(&"110".to_string())
        })
        .await;
    c.wait("subject", |el| {
        el.name() == "message" && el.get_child("subject", "jabber:client").is_some()
    })
    .await;
    me
}

/// Creates `room` with `owner` as `nick`, accepting the instant configuration.
async fn create(owner: &mut Client, room: &str, nick: &str) {
    let me = join(owner, room, nick).await;
    assert!(codes(&me).contains(&"201".to_string()), "{}", xml(&me));
    let result = owner
        .iq(
            "set",
            Some(room),
            &format!("<query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query>"),
        )
        .await;
    assert_eq!(result.attr("type"), Some("result"), "{}", xml(&result));
}

/// Submits a configuration form with these fields.
async fn configure(owner: &mut Client, room: &str, fields: &[(&str, &str)]) -> Element {
    let fields: String = fields
        .iter()
        .map(|(var, value)| format!("<field var='{var}'><value>{value}</value></field>"))
        .collect();
    owner
        .iq(
            "set",
            Some(room),
            &format!(
                "<query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
                 {fields}</x></query>"
            ),
        )
        .await
}

async fn clients(server: &TestServer, users: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for user in users {
        out.push(Client::bound_with(server, user, PASSWORD, "phone").await);
    }
    out
}

#[tokio::test]
async fn a_new_room_is_locked_until_its_owner_accepts_the_instant_configuration() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let (alice, bob) = c.split_at_mut(1);
    let (alice, bob) = (&mut alice[0], &mut bob[0]);
    let r = room("garden");
    let me = join(alice, &r, "Alice").await;
    let mut mine = codes(&me);
    mine.sort();
    assert_eq!(mine, ["100", "110", "201"], "{}", xml(&me));
    let (affiliation, role, jid) = item(&me);
    assert_eq!(
        (affiliation.as_str(), role.as_str()),
        ("owner", "moderator")
    );
    assert_eq!(jid.as_deref(), Some("alice@localhost/phone"));

    // Locked: nobody else enters, and the room is not listed.
    send_join(bob, &r, "Bob", None).await;
    let refused = join_error(bob, "join error").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("item-not-found"));
    assert_eq!(refused.attr("from"), Some(format!("{r}/Bob").as_str()));

    let accepted = alice
        .iq(
            "set",
            Some(&r),
            &format!("<query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query>"),
        )
        .await;
    assert_eq!(accepted.attr("type"), Some("result"), "{}", xml(&accepted));

    // Now Bob enters: Alice's presence first, then his own (110, 100), then the subject.
    send_join(bob, &r, "Bob", None).await;
    let (first, alice_seen) = bob
        .wait_seq("alice's presence", |el| {
            presence_from(el, &format!("{r}/Alice"))
        })
        .await;
    assert_eq!(item(&alice_seen).0, "owner");
    let (second, own) = bob
        .wait_seq("own presence", |el| presence_from(el, &format!("{r}/Bob")))
        .await;
    let mut own_codes = codes(&own);
    own_codes.sort();
    assert_eq!(own_codes, ["100", "110"], "{}", xml(&own));
    let (affiliation, role, _) = item(&own);
    assert_eq!(
        (affiliation.as_str(), role.as_str()),
        ("none", "participant")
    );
    let (third, subject) = bob
        .wait_seq("subject", |el| {
            el.name() == "message" && el.get_child("subject", "jabber:client").is_some()
        })
        .await;
    assert!(first < second && second < third, "join order");
    assert_eq!(subject.attr("type"), Some("groupchat"));

    // Alice hears of Bob, with his real JID (the room is non-anonymous by default).
    let bob_seen = alice
        .wait("bob's presence", |el| {
            presence_from(el, &format!("{r}/Bob"))
        })
        .await;
    assert!(codes(&bob_seen).is_empty());
    assert_eq!(item(&bob_seen).2.as_deref(), Some("bob@localhost/phone"));
}

#[tokio::test]
async fn groupchat_reaches_every_occupant_with_the_rooms_stanza_id_and_echoes_to_the_sender() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let r = room("lounge");
    create(&mut c[0], &r, "Alice").await;
    join(&mut c[1], &r, "Bob").await;
    join(&mut c[2], &r, "Carol").await;
    c[1].send(&format!(
        "<message to='{r}' type='groupchat' id='g1'><body>hello all</body></message>"
    ))
    .await;
    let mut ids = Vec::new();
    for (i, client) in c.iter_mut().enumerate() {
        let message = client.wait_body("hello all").await;
        if i == 1 {
            // The sender's echo keeps its id, so that the client can match it.
            assert_eq!(message.attr("id"), Some("g1"));
        }
        assert_eq!(message.attr("from"), Some(format!("{r}/Bob").as_str()));
        assert_eq!(message.attr("type"), Some("groupchat"));
        assert_eq!(message.attr("to"), Some(client.jid.as_str()));
        let stanza_id = message
            .children()
            .find(|c| c.is("stanza-id", "urn:xmpp:sid:0") && c.attr("by") == Some(r.as_str()))
            .unwrap_or_else(|| panic!("no stanza-id by the room in {}", xml(&message)));
        ids.push(stanza_id.attr("id").unwrap_or("").to_string());
    }
    assert!(!ids[0].is_empty());
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "one stanza-id for all: {ids:?}"
    );
}

#[tokio::test]
async fn nick_conflicts_missing_nicks_and_strangers_are_refused() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let r = room("club");
    create(&mut c[0], &r, "Alice").await;
    // Someone else's nick: <conflict/>.
    send_join(&mut c[1], &r, "Alice", None).await;
    let conflict = join_error(&mut c[1], "conflict").await;
    assert_eq!(error_condition(&conflict).as_deref(), Some("conflict"));
    // No nick at all: <jid-malformed/>.
    c[1].send(&format!("<presence to='{r}'><x xmlns='{MUC}'/></presence>"))
        .await;
    let malformed = join_error(&mut c[1], "jid-malformed").await;
    assert_eq!(
        error_condition(&malformed).as_deref(),
        Some("jid-malformed")
    );
    // A non-occupant's groupchat: <not-acceptable/>; nobody receives it.
    c[1].send(&format!(
        "<message to='{r}' type='groupchat' id='x1'><body>let me in</body></message>"
    ))
    .await;
    let refused = c[1]
        .wait("not-acceptable", |el| {
            el.name() == "message" && el.attr("type") == Some("error")
        })
        .await;
    assert_eq!(error_condition(&refused).as_deref(), Some("not-acceptable"));
    c[0].none("the stranger's message", |el| {
        el.name() == "message" && body(el).as_deref() == Some("let me in")
    })
    .await;
    // A room that does not exist: <item-not-found/>.
    c[1].send(&format!(
        "<message to='{}' type='groupchat' id='x2'><body>anyone?</body></message>",
        room("nowhere")
    ))
    .await;
    let missing = c[1]
        .wait("item-not-found", |el| {
            el.name() == "message" && el.attr("id") == Some("x2")
        })
        .await;
    assert_eq!(error_condition(&missing).as_deref(), Some("item-not-found"));
}

fn body(el: &Element) -> Option<String> {
    el.get_child("body", "jabber:client").map(|b| b.text())
}

#[tokio::test]
async fn leaving_and_disconnecting_are_announced_to_the_room() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let r = room("hall");
    create(&mut c[0], &r, "Alice").await;
    join(&mut c[1], &r, "Bob").await;
    join(&mut c[2], &r, "Carol").await;
    c[1].send(&format!("<presence to='{r}/Bob' type='unavailable'/>"))
        .await;
    let own = c[1]
        .wait("own unavailable", |el| {
            presence_from(el, &format!("{r}/Bob")) && el.attr("type") == Some("unavailable")
        })
        .await;
    assert!(codes(&own).contains(&"110".to_string()), "{}", xml(&own));
    let seen = c[0]
        .wait("bob left", |el| {
            presence_from(el, &format!("{r}/Bob")) && el.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(item(&seen).1, "none");
    // Carol's connection just goes away: the room hears she left.
    let carol = c.pop().expect("carol");
    drop(carol);
    c[0].wait("carol left", |el| {
        presence_from(el, &format!("{r}/Carol")) && el.attr("type") == Some("unavailable")
    })
    .await;
    // Whoever left gets no more of the room's messages.
    c[0].send(&format!(
        "<message to='{r}' type='groupchat'><body>still here?</body></message>"
    ))
    .await;
    c[0].wait_body("still here?").await;
    c[1].none("a message after leaving", |el| {
        body(el).as_deref() == Some("still here?")
    })
    .await;
}

#[tokio::test]
async fn private_messages_go_between_occupants_under_their_nicks() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let r = room("whisper");
    create(&mut c[0], &r, "Alice").await;
    join(&mut c[1], &r, "Bob").await;
    c[0].send(&format!(
        "<message to='{r}/Bob' type='chat' id='pm1'><body>psst</body></message>"
    ))
    .await;
    let pm = c[1].wait_body("psst").await;
    assert_eq!(pm.attr("from"), Some(format!("{r}/Alice").as_str()));
    assert_eq!(pm.attr("type"), Some("chat"));
    assert!(pm.get_child("x", MUC_USER).is_some(), "{}", xml(&pm));
    c[0].send(&format!(
        "<message to='{r}/Nobody' type='chat' id='pm2'><body>hello?</body></message>"
    ))
    .await;
    let missing = c[0]
        .wait("no such occupant", |el| el.attr("id") == Some("pm2"))
        .await;
    assert_eq!(error_condition(&missing).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn the_service_and_its_rooms_answer_disco() {
    let server = server_with_users(&["alice"], PASSWORD);
    let mut c = clients(&server, &["alice"]).await;
    let items = c[0]
        .iq(
            "get",
            Some("localhost"),
            &format!("<query xmlns='{DISCO_ITEMS}'/>"),
        )
        .await;
    assert!(xml(&items).contains(SERVICE), "{}", xml(&items));
    let info = c[0]
        .iq(
            "get",
            Some(SERVICE),
            &format!("<query xmlns='{DISCO_INFO}'/>"),
        )
        .await;
    let text = xml(&info);
    assert!(
        text.contains("category=\"conference\"") || text.contains("category='conference'"),
        "{text}"
    );
    assert!(text.contains(MUC), "{text}");
    let r = room("visible");
    create(&mut c[0], &r, "Alice").await;
    let configured = configure(
        &mut c[0],
        &r,
        &[("muc#roomconfig_roomname", "The Visible Room")],
    )
    .await;
    assert_eq!(
        configured.attr("type"),
        Some("result"),
        "{}",
        xml(&configured)
    );
    let listed = c[0]
        .iq(
            "get",
            Some(SERVICE),
            &format!("<query xmlns='{DISCO_ITEMS}'/>"),
        )
        .await;
    assert!(xml(&listed).contains(&r), "{}", xml(&listed));
    assert!(
        xml(&listed).contains("The Visible Room"),
        "{}",
        xml(&listed)
    );
    let room_info = c[0]
        .iq("get", Some(&r), &format!("<query xmlns='{DISCO_INFO}'/>"))
        .await;
    let text = xml(&room_info);
    for feature in [
        "muc_open",
        "muc_public",
        "muc_nonanonymous",
        "muc_unmoderated",
        "muc_temporary",
    ] {
        assert!(text.contains(feature), "{feature} missing: {text}");
    }
    assert!(text.contains("muc#roominfo_occupants"), "{text}");
    // A hidden room is not listed.
    configure(&mut c[0], &r, &[("muc#roomconfig_publicroom", "0")]).await;
    let hidden = c[0]
        .iq(
            "get",
            Some(SERVICE),
            &format!("<query xmlns='{DISCO_ITEMS}'/>"),
        )
        .await;
    assert!(!xml(&hidden).contains(&r), "{}", xml(&hidden));
    // Unknown rooms and bad forms get their errors.
    let missing = c[0]
        .iq(
            "get",
            Some(&room("ghost")),
            &format!("<query xmlns='{DISCO_INFO}'/>"),
        )
        .await;
    assert_eq!(error_condition(&missing).as_deref(), Some("item-not-found"));
    let bad = configure(&mut c[0], &r, &[("muc#roomconfig_maxusers", "many")]).await;
    assert_eq!(error_condition(&bad).as_deref(), Some("not-acceptable"));
    let unknown = configure(&mut c[0], &r, &[("muc#roomconfig_colour", "blue")]).await;
    assert_eq!(error_condition(&unknown).as_deref(), Some("not-acceptable"));
}

#[tokio::test]
async fn room_limits_members_only_and_passwords_refuse_entry() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let r = room("small");
    create(&mut c[0], &r, "Alice").await;
    configure(&mut c[0], &r, &[("muc#roomconfig_maxusers", "2")]).await;
    join(&mut c[1], &r, "Bob").await;
    send_join(&mut c[2], &r, "Carol", None).await;
    let full = join_error(&mut c[2], "room full").await;
    assert_eq!(
        error_condition(&full).as_deref(),
        Some("service-unavailable")
    );

    let locked = room("secret");
    create(&mut c[0], &locked, "Alice").await;
    configure(
        &mut c[0],
        &locked,
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "sesame"),
        ],
    )
    .await;
    send_join(&mut c[2], &locked, "Carol", None).await;
    let denied = join_error(&mut c[2], "password needed").await;
    assert_eq!(error_condition(&denied).as_deref(), Some("not-authorized"));
    send_join(&mut c[2], &locked, "Carol", Some("sesame")).await;
    c[2].wait("entered with the password", |el| {
        presence_from(el, &format!("{locked}/Carol")) && codes(el).contains(&"110".to_string())
    })
    .await;

    let members = room("members");
    create(&mut c[0], &members, "Alice").await;
    configure(&mut c[0], &members, &[("muc#roomconfig_membersonly", "1")]).await;
    send_join(&mut c[1], &members, "Bob", None).await;
    let refused = join_error(&mut c[1], "members only").await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("registration-required")
    );
    // Only the owner configures.
    let forbidden = configure(&mut c[1], &r, &[("muc#roomconfig_roomname", "mine")]).await;
    assert_eq!(error_condition(&forbidden).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn the_subject_is_set_by_moderators_and_given_to_newcomers() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let r = room("topics");
    create(&mut c[0], &r, "Alice").await;
    join(&mut c[1], &r, "Bob").await;
    // A participant may not change it (muc#roomconfig_changesubject is off).
    c[1].send(&format!(
        "<message to='{r}' type='groupchat' id='s1'><subject>mine now</subject></message>"
    ))
    .await;
    let refused = c[1]
        .wait("forbidden", |el| {
            el.attr("id") == Some("s1") && el.attr("type") == Some("error")
        })
        .await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    c[0].send(&format!(
        "<message to='{r}' type='groupchat'><subject>Plans for Saturday</subject></message>"
    ))
    .await;
    let changed = c[1]
        .wait("subject change", |el| {
            el.get_child("subject", "jabber:client")
                .map(|s| s.text())
                .as_deref()
                == Some("Plans for Saturday")
        })
        .await;
    assert_eq!(changed.attr("from"), Some(format!("{r}/Alice").as_str()));
    send_join(&mut c[2], &r, "Carol", None).await;
    let subject = c[2]
        .wait("subject on join", |el| {
            el.name() == "message" && el.get_child("subject", "jabber:client").is_some()
        })
        .await;
    assert_eq!(
        subject
            .get_child("subject", "jabber:client")
            .map(|s| s.text())
            .as_deref(),
        Some("Plans for Saturday")
    );
    assert_eq!(subject.attr("from"), Some(format!("{r}/Alice").as_str()));
}

#[tokio::test]
async fn a_second_session_under_the_same_nick_joins_the_same_occupant() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let mut laptop = Client::bound_with(&server, "alice", PASSWORD, "laptop").await;
    let r = room("twice");
    create(&mut c[0], &r, "Alice").await;
    join(&mut c[1], &r, "Bob").await;
    c[1].settle_and_clear().await;
    // Alice's laptop takes the same nick: no conflict, and Bob sees no second Alice arrive.
    let me = join(&mut laptop, &r, "Alice").await;
    assert!(codes(&me).contains(&"110".to_string()), "{}", xml(&me));
    c[1].none("a second Alice", |el| {
        presence_from(el, &format!("{r}/Alice"))
    })
    .await;
    // Both of Alice's sessions get the room's messages.
    c[1].send(&format!(
        "<message to='{r}' type='groupchat'><body>hi both</body></message>"
    ))
    .await;
    c[0].wait_body("hi both").await;
    laptop.wait_body("hi both").await;
    // One session leaving keeps the occupant; Bob hears nothing until the last one goes.
    laptop
        .send(&format!("<presence to='{r}/Alice' type='unavailable'/>"))
        .await;
    laptop
        .wait("laptop's own unavailable", |el| {
            presence_from(el, &format!("{r}/Alice")) && el.attr("type") == Some("unavailable")
        })
        .await;
    c[1].none("Alice leaving while her phone is in", |el| {
        presence_from(el, &format!("{r}/Alice")) && el.attr("type") == Some("unavailable")
    })
    .await;
    c[0].send(&format!("<presence to='{r}/Alice' type='unavailable'/>"))
        .await;
    c[1].wait("Alice left", |el| {
        presence_from(el, &format!("{r}/Alice")) && el.attr("type") == Some("unavailable")
    })
    .await;
}
