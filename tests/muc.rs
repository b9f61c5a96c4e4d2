//! Groups (XEP-0045) over real sockets against the real server: creating a room (locked until the
//! owner accepts a configuration), joining with the presence and status codes of §7.2, groupchat
//! fan-out with the room's stanza-id and the sender's echo, the subject, private messages, leaving
//! and disconnecting, disco of the service and of rooms, and the refusals of §7.2 (nick conflict,
//! locked room, members-only, password, room full) and §7.4 (non-occupants, visitors).

mod common;

use common::muc::*;
use common::stanzas::*;
use common::*;
use minidom::Element;

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
    let refused = c[1].wait("forbidden", error_reply("s1")).await;
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

/// The JIDs of a muc#admin affiliation list, or the error condition.
async fn affiliation_list(
    c: &mut Client,
    room: &str,
    affiliation: &str,
) -> Result<Vec<String>, String> {
    let reply = c
        .iq(
            "get",
            Some(room),
            &format!("<query xmlns='{MUC_ADMIN}'><item affiliation='{affiliation}'/></query>"),
        )
        .await;
    if reply.attr("type") != Some("result") {
        return Err(error_condition(&reply).unwrap_or_default());
    }
    Ok(reply
        .get_child("query", MUC_ADMIN)
        .map(|q| {
            q.children()
                .filter_map(|i| i.attr("jid").map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits for the unavailable presence of `room/nick` that carries `code`.
async fn gone_with(c: &mut Client, room: &str, nick: &str, code: &str) -> Element {
    let from = format!("{room}/{nick}");
    c.wait(&format!("{nick} gone with {code}"), |el| {
        presence_from(el, &from)
            && el.attr("type") == Some("unavailable")
            && codes(el).contains(&code.to_string())
    })
    .await
}

#[tokio::test]
async fn persistent_rooms_keep_configuration_affiliations_and_subject_across_a_restart() {
    let server = server_with_users(&["alice", "bob", "carol", "dave"], PASSWORD);
    let mut c = clients(&server, &["alice"]).await;
    let club = room("club");
    create(&mut c[0], &club, "Alice").await;
    let done = configure(
        &mut c[0],
        &club,
        &[
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_membersonly", "1"),
            ("muc#roomconfig_roomname", "The Club"),
        ],
    )
    .await;
    assert_eq!(done.attr("type"), Some("result"), "{}", xml(&done));
    admin_ok(
        &mut c[0],
        &club,
        "<item affiliation='member' jid='bob@localhost'/>",
    )
    .await;
    admin_ok(
        &mut c[0],
        &club,
        "<item affiliation='outcast' jid='carol@localhost'/>",
    )
    .await;
    set_subject(&mut c[0], &club, "Members only").await;
    // A temporary room does not survive.
    let temp = room("temp");
    create(&mut c[0], &temp, "Alice").await;
    drop(c);

    let server = TestServer::restart(server);
    let mut c = clients(&server, &["alice", "bob", "carol", "dave"]).await;
    let items = c[0]
        .iq(
            "get",
            Some(SERVICE),
            &format!("<query xmlns='{DISCO_ITEMS}'/>"),
        )
        .await;
    let listed: Vec<(String, String)> = items
        .get_child("query", DISCO_ITEMS)
        .map(|q| {
            q.children()
                .map(|i| {
                    (
                        i.attr("jid").unwrap_or("").into(),
                        i.attr("name").unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        listed,
        vec![(club.clone(), "The Club".to_string())],
        "{}",
        xml(&items)
    );
    let info = c[0]
        .iq(
            "get",
            Some(&club),
            &format!("<query xmlns='{DISCO_INFO}'/>"),
        )
        .await;
    let text = xml(&info);
    assert!(
        text.contains("muc_persistent") && text.contains("muc_membersonly"),
        "{text}"
    );

    // The member enters (no new room: no 201) and gets the subject; the outcast and a stranger do not.
    send_join(&mut c[1], &club, "Bob", None).await;
    let me = c[1]
        .wait("Bob in", |el| {
            presence_from(el, &format!("{club}/Bob")) && codes(el).contains(&"110".to_string())
        })
        .await;
    assert!(!codes(&me).contains(&"201".to_string()), "{}", xml(&me));
    assert_eq!(item(&me).0, "member");
    let subject = c[1]
        .wait("subject", |el| {
            el.get_child("subject", "jabber:client").is_some()
        })
        .await;
    assert_eq!(
        subject
            .get_child("subject", "jabber:client")
            .map(|s| s.text())
            .as_deref(),
        Some("Members only")
    );
    send_join(&mut c[2], &club, "Carol", None).await;
    let banned = join_error(&mut c[2], "outcast refused").await;
    assert_eq!(error_condition(&banned).as_deref(), Some("forbidden"));
    send_join(&mut c[3], &club, "Dave", None).await;
    let stranger = join_error(&mut c[3], "non-member refused").await;
    assert_eq!(
        error_condition(&stranger).as_deref(),
        Some("registration-required")
    );
    assert_eq!(
        affiliation_list(&mut c[0], &club, "member").await,
        Ok(vec!["bob@localhost".to_string()])
    );
    // The owner is still the owner: configuring works.
    configure_ok(&mut c[0], &club, &[("muc#roomconfig_roomname", "Club")]).await;
    // The temporary room is gone: entering it creates a new one.
    let me = join(&mut c[0], &temp, "Alice").await;
    assert!(codes(&me).contains(&"201".to_string()), "{}", xml(&me));
}

#[tokio::test]
async fn moderators_kick_and_give_voice_admins_ban_and_rights_are_checked() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let r = room("rules");
    create(&mut c[0], &r, "Alice").await;
    configure(&mut c[0], &r, &[("muc#roomconfig_moderatedroom", "1")]).await;
    let bob = join(&mut c[1], &r, "Bob").await;
    assert_eq!(item(&bob).1, "visitor");
    // A visitor may not speak; a moderator gives voice, and everyone sees the new role.
    c[1].send(&format!(
        "<message to='{r}' type='groupchat' id='v1'><body>hi</body></message>"
    ))
    .await;
    let mute = c[1].wait("visitor refused", error_reply("v1")).await;
    assert_eq!(error_condition(&mute).as_deref(), Some("forbidden"));
    let voice = admin(&mut c[0], &r, "<item nick='Bob' role='participant'/>").await;
    assert_eq!(voice.attr("type"), Some("result"), "{}", xml(&voice));
    let seen = c[1]
        .wait("own role change", |el| {
            presence_from(el, &format!("{r}/Bob")) && item(el).1 == "participant"
        })
        .await;
    assert_eq!(item(&seen).0, "none");
    c[1].send(&format!(
        "<message to='{r}' type='groupchat'><body>thanks</body></message>"
    ))
    .await;
    c[0].wait("Bob speaks", |el| body(el).as_deref() == Some("thanks"))
        .await;

    // A participant is no moderator: no kicking. Nobody kicks an owner.
    let denied = admin(&mut c[1], &r, "<item nick='Alice' role='none'/>").await;
    assert_eq!(error_condition(&denied).as_deref(), Some("forbidden"));
    let unknown = admin(&mut c[0], &r, "<item nick='Nobody' role='none'/>").await;
    assert_eq!(error_condition(&unknown).as_deref(), Some("item-not-found"));

    // A kick: the occupant leaves with 307 and the reason, the others see it.
    join(&mut c[2], &r, "Carol").await;
    admin_ok(
        &mut c[0],
        &r,
        "<item nick='Carol' role='none'><reason>too loud</reason></item>",
    )
    .await;
    let own = gone_with(&mut c[2], &r, "Carol", "307").await;
    assert!(codes(&own).contains(&"110".to_string()), "{}", xml(&own));
    assert!(xml(&own).contains("too loud"), "{}", xml(&own));
    let actor = own
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("item", MUC_USER))
        .and_then(|i| i.get_child("actor", MUC_USER))
        .and_then(|a| a.attr("nick").map(String::from));
    assert_eq!(actor.as_deref(), Some("Alice"), "{}", xml(&own));
    gone_with(&mut c[1], &r, "Carol", "307").await;

    // A ban (by JID): out with 301 if present, refused on entering, on the ban list.
    join(&mut c[2], &r, "Carol").await;
    admin_ok(
        &mut c[0],
        &r,
        "<item affiliation='outcast' jid='carol@localhost'/>",
    )
    .await;
    gone_with(&mut c[2], &r, "Carol", "301").await;
    gone_with(&mut c[1], &r, "Carol", "301").await;
    send_join(&mut c[2], &r, "Carol", None).await;
    let refused = join_error(&mut c[2], "banned").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    assert_eq!(
        affiliation_list(&mut c[0], &r, "outcast").await,
        Ok(vec!["carol@localhost".to_string()])
    );
    assert_eq!(
        affiliation_list(&mut c[1], &r, "outcast").await,
        Err("forbidden".to_string())
    );

    // Admins are made by owners only; an admin cannot touch the owner; the last owner stays.
    let by_participant = admin(
        &mut c[1],
        &r,
        "<item affiliation='admin' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(
        error_condition(&by_participant).as_deref(),
        Some("forbidden")
    );
    admin_ok(
        &mut c[0],
        &r,
        "<item affiliation='admin' jid='bob@localhost'/>",
    )
    .await;
    let promoted = c[1]
        .wait("Bob is admin", |el| {
            presence_from(el, &format!("{r}/Bob")) && item(el).0 == "admin"
        })
        .await;
    assert_eq!(item(&promoted).1, "moderator");
    let against_owner = admin(
        &mut c[1],
        &r,
        "<item affiliation='outcast' jid='alice@localhost'/>",
    )
    .await;
    assert_eq!(
        error_condition(&against_owner).as_deref(),
        Some("forbidden")
    );
    let last_owner = admin(
        &mut c[0],
        &r,
        "<item affiliation='member' jid='alice@localhost'/>",
    )
    .await;
    assert_eq!(error_condition(&last_owner).as_deref(), Some("conflict"));
    // Bad items.
    let bad = admin(
        &mut c[0],
        &r,
        "<item affiliation='king' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(error_condition(&bad).as_deref(), Some("bad-request"));
    let bad_jid = admin(&mut c[0], &r, "<item affiliation='member' jid='@@'/>").await;
    assert_eq!(error_condition(&bad_jid).as_deref(), Some("jid-malformed"));
    // Items apply in turn: a refused one stops the rest and answers the request; the ones before
    // it stand (and are stored and announced like any change).
    let mixed = admin(
        &mut c[0],
        &r,
        "<item affiliation='member' jid='carol@localhost'/><item nick='Nobody' role='none'/>",
    )
    .await;
    assert_eq!(error_condition(&mixed).as_deref(), Some("item-not-found"));
    assert_eq!(
        affiliation_list(&mut c[0], &r, "member").await,
        Ok(vec!["carol@localhost".to_string()])
    );
    assert_eq!(affiliation_list(&mut c[0], &r, "outcast").await, Ok(vec![]));
}

#[tokio::test]
async fn an_occupant_changes_nick_with_status_303() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let r = room("names");
    create(&mut c[0], &r, "Alice").await;
    join(&mut c[1], &r, "Bob").await;
    c[1].send(&format!("<presence to='{r}/Alice'/>")).await;
    let taken = join_error(&mut c[1], "nick taken").await;
    assert_eq!(error_condition(&taken).as_deref(), Some("conflict"));

    c[1].send(&format!("<presence to='{r}/Robert'/>")).await;
    let old = gone_with(&mut c[0], &r, "Bob", "303").await;
    let item_el = old
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("item", MUC_USER))
        .map(|i| i.attr("nick").map(String::from));
    assert_eq!(item_el, Some(Some("Robert".to_string())), "{}", xml(&old));
    c[0].wait("Robert arrives", |el| {
        presence_from(el, &format!("{r}/Robert")) && el.attr("type").is_none()
    })
    .await;
    let own = gone_with(&mut c[1], &r, "Bob", "303").await;
    assert!(codes(&own).contains(&"110".to_string()), "{}", xml(&own));
    c[1].wait("own new presence", |el| {
        presence_from(el, &format!("{r}/Robert")) && codes(el).contains(&"110".to_string())
    })
    .await;
    // Messages now come from the new nick, and private messages reach it.
    c[1].send(&format!(
        "<message to='{r}' type='groupchat'><body>renamed</body></message>"
    ))
    .await;
    let said = c[0]
        .wait("message", |el| body(el).as_deref() == Some("renamed"))
        .await;
    assert_eq!(said.attr("from"), Some(format!("{r}/Robert").as_str()));
    c[0].send(&format!(
        "<message to='{r}/Robert' type='chat'><body>psst</body></message>"
    ))
    .await;
    let private = c[1]
        .wait("private", |el| body(el).as_deref() == Some("psst"))
        .await;
    assert_eq!(private.attr("from"), Some(format!("{r}/Alice").as_str()));
}

#[tokio::test]
async fn the_owner_destroys_a_room_and_its_occupants_are_told_why() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let r = room("doomed");
    create(&mut c[0], &r, "Alice").await;
    configure(&mut c[0], &r, &[("muc#roomconfig_persistentroom", "1")]).await;
    join(&mut c[1], &r, "Bob").await;
    let destroy = format!(
        "<query xmlns='{MUC_OWNER}'><destroy jid='{}'><reason>moved</reason></destroy></query>",
        room("newplace")
    );
    let denied = c[1].iq("set", Some(&r), &destroy).await;
    assert_eq!(error_condition(&denied).as_deref(), Some("forbidden"));
    let done = c[0].iq("set", Some(&r), &destroy).await;
    assert_eq!(done.attr("type"), Some("result"), "{}", xml(&done));
    let gone = c[1]
        .wait("destroyed", |el| {
            presence_from(el, &format!("{r}/Bob")) && el.attr("type") == Some("unavailable")
        })
        .await;
    let notice = gone
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("destroy", MUC_USER))
        .unwrap_or_else(|| panic!("no destroy in {}", xml(&gone)));
    assert_eq!(notice.attr("jid"), Some(room("newplace").as_str()));
    assert_eq!(
        notice
            .get_child("reason", MUC_USER)
            .map(|r| r.text())
            .as_deref(),
        Some("moved")
    );
    // The room is gone: a message to it bounces, and it is not listed.
    c[1].send(&format!(
        "<message to='{r}' type='groupchat' id='late'><body>hello?</body></message>"
    ))
    .await;
    let bounced = c[1].wait("bounce", error_reply("late")).await;
    assert_eq!(error_condition(&bounced).as_deref(), Some("item-not-found"));
    drop(c);
    let server = TestServer::restart(server);
    let mut c = clients(&server, &["alice"]).await;
    let me = join(&mut c[0], &r, "Alice").await;
    assert!(
        codes(&me).contains(&"201".to_string()),
        "a destroyed persistent room came back: {}",
        xml(&me)
    );
}

/// Joins asking for `history` (the `<history/>` element, or nothing); returns the bodies of the
/// discussion history, which must all come before the subject and carry the room's delay stamp.
async fn join_with_history(c: &mut Client, room: &str, nick: &str, history: &str) -> Vec<String> {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='{MUC}'>{history}</x></presence>"
    ))
    .await;
    let (subject_at, _) = c
        .wait_seq("subject", |el| {
            el.name() == "message" && el.get_child("subject", "jabber:client").is_some()
        })
        .await;
    let is_past = |el: &Element| el.name() == "message" && body(el).is_some();
    let count = c.count(is_past).await;
    let mut bodies = Vec::new();
    for _ in 0..count {
        let (at, el) = c.wait_seq("history", is_past).await;
        assert!(at < subject_at, "history after the subject: {}", xml(&el));
        let delay = el
            .get_child("delay", "urn:xmpp:delay")
            .unwrap_or_else(|| panic!("no delay on history: {}", xml(&el)));
        assert_eq!(delay.attr("from"), Some(room));
        assert!(delay.attr("stamp").is_some(), "{}", xml(&el));
        bodies.extend(body(&el));
    }
    bodies
}

#[tokio::test]
async fn newcomers_get_the_discussion_history_they_ask_for() {
    let users = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let server = server_with_users(&users, PASSWORD);
    let mut c = clients(&server, &users).await;
    let r = room("history");
    create(&mut c[0], &r, "Alice").await;
    for i in 1..=5 {
        c[0].send(&format!(
            "<message to='{r}' type='groupchat'><body>m{i}</body></message>"
        ))
        .await;
        c[0].wait_body(&format!("m{i}")).await;
    }
    let all: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
    assert_eq!(join_with_history(&mut c[1], &r, "Bob", "").await, all);
    assert_eq!(
        join_with_history(&mut c[2], &r, "Carol", "<history maxstanzas='2'/>").await,
        vec!["m4", "m5"]
    );
    assert!(
        join_with_history(&mut c[3], &r, "Dave", "<history maxchars='0'/>")
            .await
            .is_empty()
    );
    assert!(join_with_history(
        &mut c[4],
        &r,
        "Erin",
        "<history since='2100-01-01T00:00:00Z'/>"
    )
    .await
    .is_empty());
    // A shorter history keeps only the newest.
    configure_ok(&mut c[0], &r, &[("muc#roomconfig_historylength", "3")]).await;
    c[0].send(&format!(
        "<message to='{r}' type='groupchat'><body>m6</body></message>"
    ))
    .await;
    c[0].wait_body("m6").await;
    assert_eq!(
        join_with_history(&mut c[5], &r, "Frank", "<history seconds='3600'/>").await,
        vec!["m4", "m5", "m6"]
    );
    let too_long = configure(&mut c[0], &r, &[("muc#roomconfig_historylength", "100000")]).await;
    assert_eq!(
        error_condition(&too_long).as_deref(),
        Some("not-acceptable")
    );
}

#[tokio::test]
async fn invitations_reach_the_invitee_and_make_members_of_a_members_only_room() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let r = room("private");
    create(&mut c[0], &r, "Alice").await;
    configure(
        &mut c[0],
        &r,
        &[
            ("muc#roomconfig_membersonly", "1"),
            ("muc#roomconfig_persistentroom", "1"),
        ],
    )
    .await;
    c[1].send("<presence/>").await;
    c[0].send(&format!(
        "<message to='{r}'><x xmlns='{MUC_USER}'><invite to='bob@localhost'><reason>join us</reason></invite></x></message>"
    ))
    .await;
    let invite = c[1]
        .wait("invitation", |el| {
            el.name() == "message"
                && el
                    .get_child("x", MUC_USER)
                    .is_some_and(|x| x.has_child("invite", MUC_USER))
        })
        .await;
    assert_eq!(invite.attr("from"), Some(r.as_str()));
    let inner = invite
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("invite", MUC_USER))
        .unwrap_or_else(|| panic!("{}", xml(&invite)));
    assert_eq!(inner.attr("from"), Some("alice@localhost"));
    assert_eq!(
        inner
            .get_child("reason", MUC_USER)
            .map(|r| r.text())
            .as_deref(),
        Some("join us")
    );
    // Bob is a member now: the members-only room lets him in.
    let me = join(&mut c[1], &r, "Bob").await;
    assert_eq!(item(&me).0, "member");
    // A member may not invite unless the room allows it.
    c[1].send(&format!(
        "<message to='{r}' id='inv2'><x xmlns='{MUC_USER}'><invite to='carol@localhost'/></x></message>"
    ))
    .await;
    let refused = c[1].wait("refused invitation", error_reply("inv2")).await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    // An offline invitee finds the invitation when it comes online; declining tells the inviter.
    configure(&mut c[0], &r, &[("muc#roomconfig_allowinvites", "1")]).await;
    c[1].send(&format!(
        "<message to='{r}'><x xmlns='{MUC_USER}'><invite to='carol@localhost'/></x></message>"
    ))
    .await;
    // Stored before Carol logs in (the room answers nothing to the inviter): wait for the store.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut carol = Client::bound_with(&server, "carol", PASSWORD, "phone").await;
    carol.send("<presence/>").await;
    let stored = carol
        .wait("stored invitation", |el| {
            el.get_child("x", MUC_USER)
                .is_some_and(|x| x.has_child("invite", MUC_USER))
        })
        .await;
    assert!(
        stored.get_child("delay", "urn:xmpp:delay").is_some(),
        "{}",
        xml(&stored)
    );
    carol
        .send(&format!(
            "<message to='{r}'><x xmlns='{MUC_USER}'><decline to='bob@localhost'><reason>busy</reason></decline></x></message>"
        ))
        .await;
    let declined = c[1]
        .wait("decline", |el| {
            el.get_child("x", MUC_USER)
                .is_some_and(|x| x.has_child("decline", MUC_USER))
        })
        .await;
    let inner = declined
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("decline", MUC_USER))
        .unwrap_or_else(|| panic!("{}", xml(&declined)));
    assert_eq!(inner.attr("from"), Some("carol@localhost"));
    // Bad invitations.
    c[0].send(&format!(
        "<message to='{r}' id='bad'><x xmlns='{MUC_USER}'><invite to='@@'/></x></message>"
    ))
    .await;
    let bad = c[0].wait("malformed invitee", error_reply("bad")).await;
    assert_eq!(error_condition(&bad).as_deref(), Some("jid-malformed"));
    c[0].send(&format!(
        "<message to='{r}' id='far'><x xmlns='{MUC_USER}'><invite to='zed@elsewhere.example'/></x></message>"
    ))
    .await;
    let far = c[0].wait("remote invitee", error_reply("far")).await;
    assert_eq!(
        error_condition(&far).as_deref(),
        Some("remote-server-not-found")
    );
    // Nothing changed for the refused invitation: no such member.
    let members = affiliation_list(&mut c[0], &r, "member")
        .await
        .unwrap_or_default();
    assert!(
        !members.contains(&"zed@elsewhere.example".to_string()),
        "{members:?}"
    );
}

#[tokio::test]
async fn self_ping_tells_a_client_whether_it_is_still_in_the_room() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let r = room("pings");
    create(&mut c[0], &r, "Alice").await;
    let info = c[0]
        .iq("get", Some(&r), &format!("<query xmlns='{DISCO_INFO}'/>"))
        .await;
    assert!(
        xml(&info).contains("muc#self-ping-optimization"),
        "{}",
        xml(&info)
    );
    join(&mut c[1], &r, "Bob").await;
    let ping = "<ping xmlns='urn:xmpp:ping'/>";
    let own = c[1].iq("get", Some(&format!("{r}/Bob")), ping).await;
    assert_eq!(own.attr("type"), Some("result"), "{}", xml(&own));
    // A ping to another occupant is that occupant's to answer: the room passes it on.
    c[1].send(&format!(
        "<iq type='get' id='p-alice' to='{r}/Alice'>{ping}</iq>"
    ))
    .await;
    let passed = c[0]
        .wait("the ping passed on", |el| {
            el.name() == "iq" && el.attr("from") == Some(format!("{r}/Bob").as_str())
        })
        .await;
    c[0].answer(&passed).await;
    let other = c[1]
        .wait("Alice's answer", |el| el.attr("id") == Some("p-alice"))
        .await;
    assert_eq!(other.attr("type"), Some("result"), "{}", xml(&other));
    c[1].send(&format!("<presence to='{r}/Bob' type='unavailable'/>"))
        .await;
    gone_with(&mut c[1], &r, "Bob", "110").await;
    let left = c[1].iq("get", Some(&format!("{r}/Bob")), ping).await;
    assert_eq!(error_condition(&left).as_deref(), Some("not-acceptable"));
}

const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";

/// The occupant ids of a stanza (there must be at most one).
fn occupant_ids(el: &Element) -> Vec<String> {
    el.children()
        .filter(|c| c.is("occupant-id", OCCUPANT_ID))
        .filter_map(|c| c.attr("id").map(String::from))
        .collect()
}

#[tokio::test]
async fn occupants_carry_a_stable_occupant_id_that_clients_cannot_forge() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let r = room("ids");
    create(&mut c[0], &r, "Alice").await;
    let info = c[0]
        .iq("get", Some(&r), &format!("<query xmlns='{DISCO_INFO}'/>"))
        .await;
    assert!(xml(&info).contains(OCCUPANT_ID), "{}", xml(&info));
    let own = join(&mut c[1], &r, "Bob").await;
    let bob_id = occupant_ids(&own);
    assert_eq!(bob_id.len(), 1, "{}", xml(&own));
    let seen = c[0]
        .wait("Bob's presence", |el| {
            presence_from(el, &format!("{r}/Bob"))
        })
        .await;
    assert_eq!(occupant_ids(&seen), bob_id);

    // A forged id is replaced by the room's.
    c[1].send(&format!(
        "<message to='{r}' type='groupchat'><body>me</body><occupant-id xmlns='{OCCUPANT_ID}' id='forged'/></message>"
    ))
    .await;
    let said = c[0]
        .wait("message", |el| body(el).as_deref() == Some("me"))
        .await;
    assert_eq!(occupant_ids(&said), bob_id, "{}", xml(&said));

    // The same user under another nick, later, has the same id; another user has another.
    c[1].send(&format!("<presence to='{r}/Bob' type='unavailable'/>"))
        .await;
    gone_with(&mut c[1], &r, "Bob", "110").await;
    let again = join(&mut c[1], &r, "Robert").await;
    assert_eq!(occupant_ids(&again), bob_id);
    let carol = join(&mut c[2], &r, "Carol").await;
    assert_eq!(occupant_ids(&carol).len(), 1);
    assert_ne!(occupant_ids(&carol), bob_id);

    // History keeps the id.
    let mut laptop = Client::bound_with(&server, "carol", PASSWORD, "laptop").await;
    laptop
        .send(&format!(
            "<presence to='{r}/Carol2'><x xmlns='{MUC}'/></presence>"
        ))
        .await;
    let past = laptop
        .wait("history", |el| body(el).as_deref() == Some("me"))
        .await;
    assert_eq!(occupant_ids(&past), bob_id, "{}", xml(&past));
}

const REGISTER: &str = "jabber:iq:register";

/// Submits the room registration form with this nick; returns the reply.
async fn register(c: &mut Client, room: &str, nick: &str) -> Element {
    c.iq(
        "set",
        Some(room),
        &format!(
            "<query xmlns='{REGISTER}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>\
             <field var='muc#register_roomnick'><value>{nick}</value></field></x></query>"
        ),
    )
    .await
}

/// The nick the room says is reserved for the asker (§7.12), if any.
async fn reserved_nick(c: &mut Client, room: &str) -> Option<String> {
    let reply = c
        .iq(
            "get",
            Some(room),
            &format!("<query xmlns='{DISCO_INFO}' node='x-roomuser-item'/>"),
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", xml(&reply));
    reply
        .get_child("query", DISCO_INFO)
        .and_then(|q| q.get_child("identity", DISCO_INFO))
        .and_then(|i| i.attr("name"))
        .map(String::from)
}

#[tokio::test]
async fn registered_and_granted_nicks_are_reserved_for_their_owners() {
    let server = server_with_users(&["alice", "bob", "carol", "dave"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol", "dave"]).await;
    let club = room("nicks");
    create(&mut c[0], &club, "Alice").await;
    configure_ok(&mut c[0], &club, &[("muc#roomconfig_persistentroom", "1")]).await;

    // Bob asks what registering takes, registers, and becomes a member with his nick reserved.
    let form = c[1]
        .iq("get", Some(&club), &format!("<query xmlns='{REGISTER}'/>"))
        .await;
    assert!(
        xml(&form).contains("muc#register_roomnick"),
        "{}",
        xml(&form)
    );
    assert_eq!(reserved_nick(&mut c[1], &club).await, None);
    let done = register(&mut c[1], &club, "Bobby").await;
    assert_eq!(done.attr("type"), Some("result"), "{}", xml(&done));
    assert_eq!(
        reserved_nick(&mut c[1], &club).await.as_deref(),
        Some("Bobby")
    );
    let again = c[1]
        .iq("get", Some(&club), &format!("<query xmlns='{REGISTER}'/>"))
        .await;
    let query = again.get_child("query", REGISTER).unwrap();
    assert!(
        query.get_child("registered", REGISTER).is_some(),
        "{}",
        xml(&again)
    );
    assert_eq!(
        query.get_child("username", REGISTER).map(|u| u.text()),
        Some("Bobby".to_string())
    );
    assert_eq!(
        affiliation_list(&mut c[0], &club, "member").await,
        Ok(vec!["bob@localhost".to_string()])
    );
    let members = c[0]
        .iq(
            "get",
            Some(&club),
            &format!("<query xmlns='{MUC_ADMIN}'><item affiliation='member'/></query>"),
        )
        .await;
    assert!(
        xml(&members).contains("nick=\"Bobby\"") || xml(&members).contains("nick='Bobby'"),
        "{}",
        xml(&members)
    );

    // Nobody else may enter or register under a reserved nick, nor change to it.
    send_join(&mut c[2], &club, "Bobby", None).await;
    let refused = join_error(&mut c[2], "reserved nick refused").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("conflict"));
    let taken = register(&mut c[2], &club, "Bobby").await;
    assert_eq!(error_condition(&taken).as_deref(), Some("conflict"));
    join(&mut c[2], &club, "Carol").await;
    send_join(&mut c[2], &club, "Bobby", None).await;
    let refused = join_error(&mut c[2], "nick change to a reserved nick refused").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("conflict"));
    // Bob himself enters under it.
    join(&mut c[1], &club, "Bobby").await;

    // An admin reserves a nick with the membership (§9.3).
    admin_ok(
        &mut c[0],
        &club,
        "<item affiliation='member' jid='dave@localhost' nick='Dave'/>",
    )
    .await;
    assert_eq!(
        reserved_nick(&mut c[3], &club).await.as_deref(),
        Some("Dave")
    );
    let clash = admin(
        &mut c[0],
        &club,
        "<item affiliation='member' jid='carol@localhost' nick='Dave'/>",
    )
    .await;
    assert_eq!(error_condition(&clash).as_deref(), Some("conflict"));

    // Bad forms.
    let empty = register(&mut c[3], &club, "").await;
    assert_eq!(error_condition(&empty).as_deref(), Some("bad-request"));
    let no_form = c[3]
        .iq("set", Some(&club), &format!("<query xmlns='{REGISTER}'/>"))
        .await;
    assert_eq!(error_condition(&no_form).as_deref(), Some("bad-request"));

    // Reservations survive a restart; cancelling one frees the nick.
    drop(c);
    let server = TestServer::restart(server);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    assert_eq!(
        reserved_nick(&mut c[1], &club).await.as_deref(),
        Some("Bobby")
    );
    let gone = c[1]
        .iq(
            "set",
            Some(&club),
            &format!("<query xmlns='{REGISTER}'><remove/></query>"),
        )
        .await;
    assert_eq!(gone.attr("type"), Some("result"), "{}", xml(&gone));
    assert_eq!(reserved_nick(&mut c[1], &club).await, None);
    assert_eq!(
        affiliation_list(&mut c[0], &club, "member").await,
        Ok(vec!["dave@localhost".to_string()])
    );
    join(&mut c[2], &club, "Bobby").await;
}

#[tokio::test]
async fn outcasts_and_strangers_to_members_only_or_moderated_rooms_cannot_register() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let open = room("openreg");
    create(&mut c[0], &open, "Alice").await;
    admin_ok(
        &mut c[0],
        &open,
        "<item affiliation='outcast' jid='carol@localhost'/>",
    )
    .await;
    let refused = register(&mut c[2], &open, "Carol").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    let closed = room("closedreg");
    create(&mut c[0], &closed, "Alice").await;
    configure_ok(&mut c[0], &closed, &[("muc#roomconfig_membersonly", "1")]).await;
    let refused = register(&mut c[1], &closed, "Bob").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("not-allowed"));
    let form = c[1]
        .iq(
            "get",
            Some(&closed),
            &format!("<query xmlns='{REGISTER}'/>"),
        )
        .await;
    assert_eq!(error_condition(&form).as_deref(), Some("not-allowed"));
    // Membership gives voice: a moderated room's members are made by its admins.
    let quiet = room("quietreg");
    create(&mut c[0], &quiet, "Alice").await;
    configure_ok(&mut c[0], &quiet, &[("muc#roomconfig_moderatedroom", "1")]).await;
    let refused = register(&mut c[1], &quiet, "Bob").await;
    assert_eq!(error_condition(&refused).as_deref(), Some("not-allowed"));
    let nowhere = register(&mut c[1], &room("nowhere"), "Bob").await;
    assert_eq!(error_condition(&nowhere).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn moderators_of_a_semi_anonymous_room_see_real_jids_and_others_do_not() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let hidden = room("masks");
    create(&mut c[0], &hidden, "Alice").await;
    let done = configure(
        &mut c[0],
        &hidden,
        &[("muc#roomconfig_whois", "moderators")],
    )
    .await;
    assert_eq!(done.attr("type"), Some("result"), "{}", xml(&done));
    join(&mut c[1], &hidden, "Bob").await;
    // Alice (owner, so moderator) sees Bob's JID when he enters.
    let bob_in = format!("{hidden}/Bob");
    let seen = c[0]
        .wait("Bob's presence", |el| presence_from(el, &bob_in))
        .await;
    assert_eq!(item(&seen).2.as_deref(), Some("bob@localhost/phone"));
    // Carol (participant) sees nobody's JID, neither on entering nor later.
    join(&mut c[2], &hidden, "Carol").await;
    let alice_in = format!("{hidden}/Alice");
    let alice = c[2]
        .wait("Alice's presence", |el| presence_from(el, &alice_in))
        .await;
    assert_eq!(item(&alice).2, None, "{}", xml(&alice));
    let seen = c[0]
        .wait("Carol's presence", |el| {
            presence_from(el, &format!("{hidden}/Carol"))
        })
        .await;
    assert_eq!(item(&seen).2.as_deref(), Some("carol@localhost/phone"));
    c[1].send(&format!("<presence to='{bob_in}' type='unavailable'/>"))
        .await;
    let gone = c[2]
        .wait("Bob gone", |el| {
            presence_from(el, &bob_in) && el.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(item(&gone).2, None, "{}", xml(&gone));
    let gone = c[0]
        .wait("Bob gone", |el| {
            presence_from(el, &bob_in) && el.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(item(&gone).2.as_deref(), Some("bob@localhost/phone"));
    // A moderator entering later sees the others' JIDs.
    c[0].send(&format!("<presence to='{alice_in}' type='unavailable'/>"))
        .await;
    c[0].settle_and_clear().await;
    send_join(&mut c[0], &hidden, "Alice", None).await;
    let carol = c[0]
        .wait("Carol's presence", |el| {
            presence_from(el, &format!("{hidden}/Carol"))
        })
        .await;
    assert_eq!(item(&carol).2.as_deref(), Some("carol@localhost/phone"));
}

#[tokio::test]
async fn iqs_between_occupants_go_through_the_room_under_their_nicks() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let r = room("asks");
    create(&mut c[0], &r, "Alice").await;
    join(&mut c[1], &r, "Bob").await;
    let (alice_in, bob_in) = (format!("{r}/Alice"), format!("{r}/Bob"));

    // Bob asks Alice's client for its version: Alice sees the room's occupant JID and id, never
    // Bob's; her answer reaches Bob under his id, from her occupant JID.
    c[1].send(&format!(
        "<iq type='get' id='v1' to='{alice_in}'><query xmlns='jabber:iq:version'/></iq>"
    ))
    .await;
    let passed = c[0]
        .wait("the version request", |el| {
            el.name() == "iq" && el.attr("from") == Some(bob_in.as_str())
        })
        .await;
    assert_ne!(passed.attr("id"), Some("v1"), "{}", xml(&passed));
    assert!(!xml(&passed).contains("bob@localhost"), "{}", xml(&passed));
    let id = passed.attr("id").unwrap();
    c[0].send(&format!(
        "<iq type='result' id='{id}' to='{bob_in}'><query xmlns='jabber:iq:version'><name>Test</name><version>1</version></query></iq>"
    ))
    .await;
    let answer = c[1]
        .wait("the version", |el| el.attr("id") == Some("v1"))
        .await;
    assert_eq!(answer.attr("type"), Some("result"), "{}", xml(&answer));
    assert_eq!(answer.attr("from"), Some(alice_in.as_str()));
    assert!(xml(&answer).contains("Test"), "{}", xml(&answer));
    // The same answer again (or a guessed one) goes nowhere.
    c[0].send(&format!("<iq type='result' id='{id}' to='{bob_in}'/>"))
        .await;
    c[1].none("a second answer", |el| el.name() == "iq").await;

    // vCards of occupants (their avatars) come from the server's store.
    let set = c[0]
        .iq(
            "set",
            None,
            "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN></vCard>",
        )
        .await;
    assert_eq!(set.attr("type"), Some("result"), "{}", xml(&set));
    let vcard = c[1]
        .iq("get", Some(&alice_in), "<vCard xmlns='vcard-temp'/>")
        .await;
    assert_eq!(vcard.attr("type"), Some("result"), "{}", xml(&vcard));
    assert_eq!(vcard.attr("from"), Some(alice_in.as_str()));
    assert!(xml(&vcard).contains("Alice Liddell"), "{}", xml(&vcard));

    // Only occupants address occupants, and only occupants who are there.
    let stranger = c[2]
        .iq("get", Some(&alice_in), "<vCard xmlns='vcard-temp'/>")
        .await;
    assert_eq!(
        error_condition(&stranger).as_deref(),
        Some("not-acceptable")
    );
    let stranger = c[2]
        .iq("get", Some(&alice_in), "<query xmlns='jabber:iq:version'/>")
        .await;
    assert_eq!(
        error_condition(&stranger).as_deref(),
        Some("not-acceptable")
    );
    let nobody = c[1]
        .iq(
            "get",
            Some(&format!("{r}/Nobody")),
            "<query xmlns='jabber:iq:version'/>",
        )
        .await;
    assert_eq!(error_condition(&nobody).as_deref(), Some("item-not-found"));
}

/// Reads `io` until `done` says what arrived is enough, or the connection ends, or 20 s pass.
async fn read_until(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    mut text: String,
    done: impl Fn(&str) -> bool,
) -> String {
    use tokio::io::AsyncReadExt;
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut buf = vec![0u8; 65536];
    // Only what is new (and a little before it) is looked at: the text grows to megabytes.
    let mut from = 0;
    while !done(&text[from..]) {
        from = text.len().saturating_sub(200);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        match tokio::time::timeout_at(until, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    text
}

/// The numbers of the `<body>m{n} …</body>` messages in `text`, in the order they came.
fn numbered(text: &str) -> Vec<usize> {
    text.split("<body>m")
        .skip(1)
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// Reads numbered messages until `n` have come (or the connection ends), telling `progress` how
/// many so far; returns their numbers in the order they came.
async fn count_messages(
    mut io: impl tokio::io::AsyncRead + Unpin,
    mut text: String,
    n: usize,
    progress: tokio::sync::watch::Sender<usize>,
) -> Vec<usize> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while got.len() < n {
        if let Some(end) = text.rfind("</message>") {
            got.extend(numbered(&text[..end]));
            text.drain(..end);
            progress.send_replace(got.len());
        }
        if got.len() >= n {
            break;
        }
        match io.read(&mut buf).await {
            Ok(read) if read > 0 => text.push_str(&String::from_utf8_lossy(&buf[..read])),
            _ => break,
        }
    }
    got
}

/// Whether `got` is exactly 0, 1, 2, ...; says where it is not.
fn in_order(got: &[usize]) -> Result<(), String> {
    match got.iter().enumerate().find(|(i, n)| *i != **n) {
        Some((i, n)) => Err(format!("message {i} was m{n}")),
        None => Ok(()),
    }
}

#[tokio::test]
async fn an_occupant_that_stops_reading_holds_up_nobody_and_is_closed_in_order() {
    let server = TestServer::start_with(Options {
        session_queue: 16,
        ..Options::default()
    });
    for user in ["alice", "bob", "carol"] {
        server.add_user(user, PASSWORD);
    }
    let mut c = clients(&server, &["alice", "bob"]).await;
    let r = room("flood");
    create(&mut c[0], &r, "Alice").await;
    join(&mut c[1], &r, "Bob").await;
    let (raw, jid) = logged_in_over(
        Raw::connect_small_window(server.c2s, 2048).await,
        "carol",
        PASSWORD,
        "phone",
    )
    .await;
    let mut carol = Client::from_raw(raw, &jid);
    join(&mut carol, &r, "Carol").await;
    c[0].settle_and_clear().await;
    c[1].settle_and_clear().await;

    // Alice talks fast (at most 8 messages ahead of her echoes and of Bob), Carol reads
    // nothing at all: 12 MB, more than the kernel buffers between the server and Carol (4 MB at
    // most) and her session's queue hold.
    const N: usize = 3000;
    let padding = "x".repeat(4000);
    let mut c = c.into_iter();
    let (alice, bob) = (c.next().unwrap(), c.next().unwrap());
    let (alice_io, alice_left) = alice.raw.into_io();
    let (alice_in, mut alice_out) = tokio::io::split(alice_io);
    let (bob_io, bob_left) = bob.raw.into_io();
    let (alice_tx, mut alice_progress) = tokio::sync::watch::channel(0usize);
    let (bob_tx, mut bob_progress) = tokio::sync::watch::channel(0usize);
    let alice_reads = tokio::spawn(count_messages(alice_in, alice_left, N, alice_tx));
    let bob_reads = tokio::spawn(count_messages(bob_io, bob_left, N, bob_tx));
    {
        use tokio::io::AsyncWriteExt;
        for i in 0..N {
            if i >= 8 {
                for progress in [&mut alice_progress, &mut bob_progress] {
                    let wait = progress.wait_for(|&n| n + 8 > i);
                    tokio::time::timeout(std::time::Duration::from_secs(10), wait)
                        .await
                        .expect("a reader stopped getting messages")
                        .expect("a reader ended");
                }
            }
            let message =
                format!("<message to='{r}' type='groupchat'><body>m{i} {padding}</body></message>");
            alice_out.write_all(message.as_bytes()).await.unwrap();
        }
        alice_out.flush().await.unwrap();
    }
    let bob_got = bob_reads.await.unwrap();
    assert_eq!(bob_got.len(), N, "Bob gets every message");
    in_order(&bob_got).unwrap();
    assert_eq!(alice_reads.await.unwrap().len(), N, "Alice gets every echo");

    // Carol fell too far behind: closed with a policy violation, after an unbroken, ordered
    // beginning of the flood.
    let (mut carol_io, carol_left) = carol.raw.into_io();
    let text = read_until(&mut carol_io, carol_left, |t| {
        t.contains("</stream:stream>")
    })
    .await;
    assert!(
        text.contains("policy-violation"),
        "{}",
        &text[text.len().saturating_sub(400)..]
    );
    let got = numbered(&text);
    assert!(got.len() < N, "Carol cannot have read it all");
    in_order(&got).unwrap();
}

#[tokio::test]
async fn direct_invitations_reach_the_invitee_online_or_offline() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    c[1].online_with("here", None).await;
    c[0].settle_and_clear().await;
    let r = room("direct");
    create(&mut c[0], &r, "Alice").await;
    // XEP-0249: from user to user, not through the room.
    let invite = |to: &str| {
        format!(
            "<message to='{to}'><x xmlns='jabber:x:conference' jid='{r}' reason='come along'/></message>"
        )
    };
    c[0].send(&invite("bob@localhost")).await;
    let got = c[1]
        .wait("the invitation", |el| {
            el.get_child("x", "jabber:x:conference").is_some()
        })
        .await;
    let x = got.get_child("x", "jabber:x:conference").unwrap();
    assert_eq!(x.attr("jid"), Some(r.as_str()));
    assert_eq!(got.attr("from"), Some("alice@localhost/phone"));
    // Carol is offline: the invitation waits for her.
    c[0].send(&invite("carol@localhost")).await;
    c[0].ping().await;
    let mut carol = Client::bound_with(&server, "carol", PASSWORD, "phone").await;
    carol.online_with("back", None).await;
    let got = carol
        .wait("the stored invitation", |el| {
            el.get_child("x", "jabber:x:conference").is_some()
        })
        .await;
    assert!(
        got.get_child("delay", "urn:xmpp:delay").is_some(),
        "{}",
        xml(&got)
    );
}
