//! Room archives (XEP-0313 on a room's JID, XEP-0045 groups) over real sockets against the real
//! server: members who were away catch up with paged queries (RSM both ways, flipped pages, ids,
//! before-id/after-id, start/end, with), results carry the stanza-ids occupants saw live, the
//! archive survives a restart (and feeds the discussion history), and every refusal the XEP names.

mod common;

use common::mam::*;
use common::muc::*;
use common::stanzas::*;
use common::*;

/// Queries a room's archive (results come from the room).
async fn query(c: &mut Client, archive: &str, fields: &[String], set: &str, extra: &str) -> Page {
    query_at(c, Some(archive), Some(archive), fields, set, extra).await
}

/// Sends groupchat messages with these bodies and waits for each echo; returns the echoes'
/// stanza-ids by the room.
async fn say(c: &mut Client, room: &str, bodies: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for text in bodies {
        let escaped = text.replace('&', "&amp;").replace('<', "&lt;");
        c.send(&format!(
            "<message to='{room}' type='groupchat'><body>{escaped}</body></message>"
        ))
        .await;
        let echo = c
            .wait(&format!("the echo of {text}"), |el| {
                el.name() == "message" && body_of(el).as_deref() == Some(*text)
            })
            .await;
        let id = echo
            .children()
            .find(|c| c.is("stanza-id", STANZA_ID) && c.attr("by") == Some(room))
            .and_then(|s| s.attr("id"))
            .unwrap_or_else(|| panic!("no stanza-id by the room in {}", xml(&echo)))
            .to_string();
        ids.push(id);
    }
    ids
}

/// A persistent room created by `c` as Alice, with these further settings.
async fn persistent_room(c: &mut Client, name: &str, settings: &[(&str, &str)]) -> String {
    let jid = room(name);
    create(c, &jid, "Alice").await;
    let mut fields = vec![("muc#roomconfig_persistentroom", "1")];
    fields.extend_from_slice(settings);
    configure_ok(c, &jid, &fields).await;
    jid
}

#[tokio::test]
async fn a_member_who_was_away_catches_up_with_the_messages_occupants_saw() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let club = persistent_room(&mut c[0], "club", &[("muc#roomconfig_membersonly", "1")]).await;
    admin_ok(
        &mut c[0],
        &club,
        "<item affiliation='member' jid='bob@localhost'/>",
    )
    .await;
    let live_ids = say(&mut c[0], &club, &["one", "two & three", "four"]).await;
    // Chat states and private messages are not the room's record; a subject change is.
    c[0].send(&format!(
        "<message to='{club}' type='groupchat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    ))
    .await;
    set_subject(&mut c[0], &club, "Plans").await;

    // Bob never joined: he reads what happened.
    let page = query(&mut c[1], &club, &[], "", "").await;
    assert_eq!(page.error(), None, "{}", xml(&page.end));
    assert_eq!(page.bodies(), ["one", "two & three", "four", ""]);
    assert!(page.complete(), "{}", xml(&page.end));
    let ids = page.ids();
    assert_eq!(
        ids[..3],
        live_ids[..],
        "archive ids are the live stanza-ids"
    );
    assert_eq!(
        page.first_last(),
        (Some(ids[0].clone()), Some(ids[3].clone()))
    );
    let messages = page.messages();
    assert_eq!(
        messages[3]
            .get_child("subject", "jabber:client")
            .map(|s| s.text()),
        Some("Plans".to_string())
    );
    for (result, message) in page.results.iter().zip(&messages) {
        // §6.1.2: from the sender's occupant JID, no `to`, and (non-anonymous room) its real JID.
        assert_eq!(message.attr("from"), Some(format!("{club}/Alice").as_str()));
        assert_eq!(message.attr("to"), None, "{}", xml(message));
        assert_eq!(message.attr("type"), Some("groupchat"));
        let real = message
            .get_child("x", MUC_USER)
            .and_then(|x| x.get_child("item", MUC_USER))
            .and_then(|i| i.attr("jid"));
        assert_eq!(real, Some("alice@localhost"), "{}", xml(message));
        let stamp = Page::forwarded(result)
            .get_child("delay", DELAY)
            .and_then(|d| d.attr("stamp"));
        assert!(stamp.is_some(), "no delay stamp: {}", xml(result));
    }
    // The archive's ends are what the metadata says.
    let metadata = c[1]
        .iq("get", Some(&club), &format!("<metadata xmlns='{MAM}'/>"))
        .await;
    let end_id = |name: &str| {
        metadata
            .get_child("metadata", MAM)
            .and_then(|m| m.get_child(name, MAM))
            .and_then(|e| e.attr("id"))
            .map(String::from)
    };
    assert_eq!(end_id("start"), Some(ids[0].clone()), "{}", xml(&metadata));
    assert_eq!(end_id("end"), Some(ids[3].clone()), "{}", xml(&metadata));
}

#[tokio::test]
async fn queries_page_both_ways_flip_pages_and_filter_by_id_time_and_sender() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let club = persistent_room(&mut c[0], "pages", &[]).await;
    join(&mut c[1], &club, "Bob").await;
    let bodies = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"];
    let mut ids = say(&mut c[0], &club, &bodies[..5]).await;
    ids.extend(say(&mut c[1], &club, &bodies[5..]).await);
    c[0].settle_and_clear().await;

    // Forwards, three at a time.
    let first = query(&mut c[0], &club, &[], "<max>3</max>", "").await;
    assert_eq!(first.bodies(), ["m1", "m2", "m3"]);
    assert!(!first.complete());
    let last = first.first_last().1.unwrap();
    let second = query(
        &mut c[0],
        &club,
        &[],
        &format!("<max>3</max><after>{last}</after>"),
        "",
    )
    .await;
    assert_eq!(second.bodies(), ["m4", "m5", "m6"]);
    assert!(!second.complete());
    let third = query(
        &mut c[0],
        &club,
        &[],
        &format!("<max>3</max><after>{}</after>", ids[5]),
        "",
    )
    .await;
    assert_eq!(third.bodies(), ["m7"]);
    assert!(third.complete(), "{}", xml(&third.end));

    // Backwards from the end: the last page, then the one before it.
    let newest = query(&mut c[0], &club, &[], "<max>3</max><before/>", "").await;
    assert_eq!(newest.bodies(), ["m5", "m6", "m7"]);
    assert!(!newest.complete());
    let earlier = query(
        &mut c[0],
        &club,
        &[],
        &format!("<max>3</max><before>{}</before>", ids[4]),
        "",
    )
    .await;
    assert_eq!(earlier.bodies(), ["m2", "m3", "m4"]);
    let earliest = query(
        &mut c[0],
        &club,
        &[],
        &format!("<max>3</max><before>{}</before>", ids[1]),
        "",
    )
    .await;
    assert_eq!(earliest.bodies(), ["m1"]);
    assert!(earliest.complete());

    // A flipped page is the same page, newest first.
    let flipped = query(
        &mut c[0],
        &club,
        &[],
        "<max>3</max><before/>",
        "<flip-page/>",
    )
    .await;
    assert_eq!(flipped.bodies(), ["m7", "m6", "m5"]);

    // Single items, and the range between two known ids.
    let picked = query(
        &mut c[0],
        &club,
        &[field("ids", &[&ids[5], &ids[2]])],
        "",
        "",
    )
    .await;
    assert_eq!(picked.bodies(), ["m3", "m6"]);
    let between = query(
        &mut c[0],
        &club,
        &[
            field("after-id", &[&ids[1]]),
            field("before-id", &[&ids[5]]),
        ],
        "",
        "",
    )
    .await;
    assert_eq!(between.bodies(), ["m3", "m4", "m5"]);
    assert!(between.complete());

    // By sender: an occupant JID, or (non-anonymous room) a real JID.
    let bob = format!("{club}/Bob");
    let by_nick = query(&mut c[0], &club, &[field("with", &[&bob])], "", "").await;
    assert_eq!(by_nick.bodies(), ["m6", "m7"]);
    let by_jid = query(
        &mut c[0],
        &club,
        &[field("with", &["alice@localhost"])],
        "",
        "",
    )
    .await;
    assert_eq!(by_jid.bodies(), ["m1", "m2", "m3", "m4", "m5"]);

    // By time: nothing after a future start, everything up to a future end, nothing before 2000.
    let future = query(
        &mut c[0],
        &club,
        &[field("start", &["2999-01-01T00:00:00Z"])],
        "",
        "",
    )
    .await;
    assert!(future.results.is_empty() && future.complete());
    let until_future = query(
        &mut c[0],
        &club,
        &[field("end", &["2999-01-01T00:00:00Z"])],
        "",
        "",
    )
    .await;
    assert_eq!(until_future.bodies().len(), 7);
    let past = query(
        &mut c[0],
        &club,
        &[field("end", &["2000-01-01T00:00:00Z"])],
        "",
        "",
    )
    .await;
    assert!(past.results.is_empty(), "{}", xml(&past.end));
    // The stamp of a result, given back as start, includes that message.
    let stamp = Page::forwarded(&second.results[0])
        .get_child("delay", DELAY)
        .and_then(|d| d.attr("stamp"))
        .unwrap()
        .to_string();
    let since = query(&mut c[0], &club, &[field("start", &[&stamp])], "", "").await;
    let got = since.bodies();
    assert!(
        got.ends_with(&["m4", "m5", "m6", "m7"].map(String::from)),
        "{got:?}"
    );
    for result in &since.results {
        let at = Page::forwarded(result)
            .get_child("delay", DELAY)
            .and_then(|d| d.attr("stamp"))
            .unwrap();
        // Stamps have the same format: text order is time order.
        assert!(at >= stamp.as_str(), "{at} is before {stamp}");
    }
}

#[tokio::test]
async fn bad_queries_and_askers_without_rights_get_the_errors_of_xep_0313() {
    let server = server_with_users(&["alice", "bob", "carol"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob", "carol"]).await;
    let open = persistent_room(&mut c[0], "open", &[("muc#roomconfig_whois", "moderators")]).await;
    let ids = say(&mut c[0], &open, &["hello"]).await;
    admin_ok(
        &mut c[0],
        &open,
        "<item affiliation='outcast' jid='carol@localhost'/>",
    )
    .await;
    let closed = persistent_room(&mut c[0], "closed", &[("muc#roomconfig_membersonly", "1")]).await;

    // Ids the archive does not have.
    let unknown = "AAAAAAAAAAAAAAAAAAAAAA";
    for set in [
        format!("<after>{unknown}</after>"),
        format!("<before>{unknown}</before>"),
        "<after>not an id at all</after>".to_string(),
    ] {
        let page = query(&mut c[1], &open, &[], &set, "").await;
        assert_eq!(page.error().as_deref(), Some("item-not-found"), "{set}");
    }
    for var in ["after-id", "before-id", "ids"] {
        let page = query(&mut c[1], &open, &[field(var, &[unknown])], "", "").await;
        assert_eq!(page.error().as_deref(), Some("item-not-found"), "{var}");
    }
    // A nonce that does not match is as unknown as a key that does not exist.
    let mut forged = ids[0].clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let page = query(&mut c[1], &open, &[field("ids", &[&forged])], "", "").await;
    assert_eq!(page.error().as_deref(), Some("item-not-found"));

    // Fields and forms the archive does not take.
    let page = query(
        &mut c[1],
        &open,
        &[field("{urn:example}search", &["x"])],
        "",
        "",
    )
    .await;
    assert_eq!(page.error().as_deref(), Some("feature-not-implemented"));
    let page = query(&mut c[1], &open, &[field("start", &["yesterday"])], "", "").await;
    assert_eq!(page.error().as_deref(), Some("bad-request"));
    let page = query(&mut c[1], &open, &[field("with", &["@@"])], "", "").await;
    assert_eq!(page.error().as_deref(), Some("bad-request"));
    let page = query(&mut c[1], &open, &[], "<index>2</index>", "").await;
    assert_eq!(page.error().as_deref(), Some("feature-not-implemented"));
    // Real JIDs are not searchable by those who may not see them (a semi-anonymous room).
    let page = query(
        &mut c[1],
        &open,
        &[field("with", &["alice@localhost"])],
        "",
        "",
    )
    .await;
    assert_eq!(page.error().as_deref(), Some("forbidden"));
    // ...and results do not show them either; the owner sees them.
    let page = query(&mut c[1], &open, &[], "", "").await;
    assert_eq!(page.bodies(), ["hello"]);
    assert!(
        page.messages()[0].get_child("x", MUC_USER).is_none(),
        "{}",
        xml(&page.results[0])
    );
    let page = query(&mut c[0], &open, &[], "", "").await;
    assert!(page.messages()[0].get_child("x", MUC_USER).is_some());

    // Who may read: not an outcast, only members of a members-only room, no room no archive.
    let page = query(&mut c[2], &open, &[], "", "").await;
    assert_eq!(page.error().as_deref(), Some("forbidden"));
    let page = query(&mut c[1], &closed, &[], "", "").await;
    assert_eq!(page.error().as_deref(), Some("forbidden"));
    let page = query(&mut c[1], &room("nowhere"), &[], "", "").await;
    assert_eq!(page.error().as_deref(), Some("item-not-found"));

    // Nothing was changed by any of it.
    let page = query(&mut c[0], &open, &[], "", "").await;
    assert_eq!(page.ids(), ids);
}

#[tokio::test]
async fn rooms_advertise_their_archive_and_its_search_form() {
    let server = server_with_users(&["alice"], PASSWORD);
    let mut c = clients(&server, &["alice"]).await;
    let kept = persistent_room(&mut c[0], "kept", &[]).await;
    let info = c[0]
        .iq(
            "get",
            Some(&kept),
            &format!("<query xmlns='{DISCO_INFO}'/>"),
        )
        .await;
    let features: Vec<String> = info
        .get_child("query", DISCO_INFO)
        .map(|q| {
            q.children()
                .filter_map(|f| f.attr("var").map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(features.contains(&MAM.to_string()), "{}", xml(&info));
    assert!(
        features.contains(&format!("{MAM}#extended")),
        "{}",
        xml(&info)
    );

    let form = c[0]
        .iq("get", Some(&kept), &format!("<query xmlns='{MAM}'/>"))
        .await;
    let vars: Vec<String> = form
        .get_child("query", MAM)
        .and_then(|q| q.get_child("x", "jabber:x:data"))
        .map(|x| {
            x.children()
                .filter_map(|f| f.attr("var").map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for var in [
        "FORM_TYPE",
        "with",
        "start",
        "end",
        "before-id",
        "after-id",
        "ids",
    ] {
        assert!(
            vars.contains(&var.to_string()),
            "{var} missing: {}",
            xml(&form)
        );
    }
    // An empty archive has empty metadata.
    let metadata = c[0]
        .iq("get", Some(&kept), &format!("<metadata xmlns='{MAM}'/>"))
        .await;
    assert_eq!(
        metadata
            .get_child("metadata", MAM)
            .map(|m| m.children().count()),
        Some(0),
        "{}",
        xml(&metadata)
    );

    // With archiving turned off, the room neither keeps nor advertises an archive.
    let off = persistent_room(&mut c[0], "off", &[("muc#roomconfig_enablearchiving", "0")]).await;
    say(&mut c[0], &off, &["not kept"]).await;
    let info = c[0]
        .iq("get", Some(&off), &format!("<query xmlns='{DISCO_INFO}'/>"))
        .await;
    assert!(!xml(&info).contains(MAM), "{}", xml(&info));
    let page = query(&mut c[0], &off, &[], "", "").await;
    assert_eq!(page.error().as_deref(), Some("feature-not-implemented"));
    configure_ok(&mut c[0], &off, &[("muc#roomconfig_enablearchiving", "1")]).await;
    let page = query(&mut c[0], &off, &[], "", "").await;
    assert!(
        page.results.is_empty() && page.complete(),
        "{}",
        xml(&page.end)
    );
}

#[tokio::test]
async fn the_archive_survives_a_restart_and_feeds_the_history_of_newcomers() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut alice = Client::bound_with(&server, "alice", PASSWORD, "phone").await;
    // Acknowledged (XEP-0198) means durable: the messages are on disk before the `<a/>`.
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    alice.wait("sm enabled", |el| el.is("enabled", SM)).await;
    let club = persistent_room(&mut alice, "lasting", &[]).await;
    let before = say(&mut alice, &club, &["before 1", "before 2"]).await;
    alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    alice.wait("ack", |el| el.is("a", SM)).await;
    drop(alice);
    let server = TestServer::restart(server);

    let mut c = clients(&server, &["alice", "bob"]).await;
    let page = query(&mut c[1], &club, &[], "", "").await;
    assert_eq!(page.bodies(), ["before 1", "before 2"]);
    assert_eq!(page.ids(), before);
    // Newcomers get the archived messages as discussion history.
    c[1].send(&format!(
        "<presence to='{club}/Bob'><x xmlns='{MUC}'><history maxstanzas='5'/></x></presence>"
    ))
    .await;
    for text in ["before 1", "before 2"] {
        let past = c[1]
            .wait(&format!("history {text}"), |el| {
                body_of(el).as_deref() == Some(text)
            })
            .await;
        assert!(past.get_child("delay", DELAY).is_some(), "{}", xml(&past));
    }
    // New messages come after the old ones, with new ids.
    join(&mut c[0], &club, "Alice").await;
    let after = say(&mut c[0], &club, &["after"]).await;
    let page = query(&mut c[1], &club, &[], "", "").await;
    assert_eq!(page.bodies(), ["before 1", "before 2", "after"]);
    assert!(!before.contains(&after[0]));
}

#[tokio::test]
async fn a_temporary_rooms_archive_goes_with_the_room() {
    let server = server_with_users(&["alice"], PASSWORD);
    let mut c = clients(&server, &["alice"]).await;
    let temp = room("fleeting");
    create(&mut c[0], &temp, "Alice").await;
    say(&mut c[0], &temp, &["gone soon"]).await;
    let page = query(&mut c[0], &temp, &[], "", "").await;
    assert_eq!(page.bodies(), ["gone soon"]);
    c[0].send(&format!("<presence to='{temp}/Alice' type='unavailable'/>"))
        .await;
    c[0].wait("left", |el| {
        el.name() == "presence" && el.attr("type") == Some("unavailable")
    })
    .await;
    // A new room of the same name starts with an empty archive.
    create(&mut c[0], &temp, "Alice").await;
    let page = query(&mut c[0], &temp, &[], "", "").await;
    assert!(page.results.is_empty(), "{}", page.bodies().join(", "));
}

#[tokio::test]
async fn displayed_markers_reach_the_room_and_its_archive_but_not_the_history() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut c = clients(&server, &["alice", "bob"]).await;
    let club = persistent_room(&mut c[0], "marks", &[("muc#roomconfig_membersonly", "1")]).await;
    admin_ok(
        &mut c[0],
        &club,
        "<item affiliation='member' jid='bob@localhost'/>",
    )
    .await;
    join(&mut c[1], &club, "Bob").await;
    let ids = say(&mut c[0], &club, &["read me"]).await;
    c[1].wait_body("read me").await;
    // Bob has read it (XEP-0333, groupchat markers point at the room's stanza-id).
    c[1].send(&format!(
        "<message to='{club}' type='groupchat'><displayed xmlns='urn:xmpp:chat-markers:0' id='{}'/></message>",
        ids[0]
    ))
    .await;
    let marker = c[0]
        .wait("Bob's marker", |el| {
            el.get_child("displayed", "urn:xmpp:chat-markers:0")
                .is_some()
        })
        .await;
    assert_eq!(marker.attr("from"), Some(format!("{club}/Bob").as_str()));
    // Alice's other device learns it from the archive.
    let page = query(&mut c[0], &club, &[], "", "").await;
    let messages = page.messages();
    assert_eq!(messages.len(), 2, "{}", xml(&page.end));
    let archived = messages[1]
        .get_child("displayed", "urn:xmpp:chat-markers:0")
        .and_then(|d| d.attr("id"));
    assert_eq!(archived, Some(ids[0].as_str()));
    // Newcomers' history has messages only.
    c[1].send(&format!("<presence to='{club}/Bob' type='unavailable'/>"))
        .await;
    c[1].settle_and_clear().await;
    c[1].send(&format!(
        "<presence to='{club}/Bob'><x xmlns='{MUC}'><history maxstanzas='10'/></x></presence>"
    ))
    .await;
    c[1].wait("subject", |el| {
        el.get_child("subject", "jabber:client").is_some()
    })
    .await;
    let marked = c[1]
        .take(|el| {
            el.get_child("displayed", "urn:xmpp:chat-markers:0")
                .is_some()
        })
        .len();
    assert_eq!(marked, 0, "a marker in the history");
    assert_eq!(
        c[1].take(|el| body_of(el).as_deref() == Some("read me"))
            .len(),
        1
    );
}
