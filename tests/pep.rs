//! Personal eventing (XEP-0163) over real sockets against the real server: publish and
//! notifications filtered by caps (XEP-0115) between contacts, the last item at login, access
//! models, publish-options preconditions, avatars (XEP-0084 and the vCard-based XEP-0153),
//! bookmarks (XEP-0402), OMEMO-style open nodes, and the refusals.

mod common;

use base64::Engine as _;
use common::muc::{xml, PASSWORD};
use common::stanzas::*;
use common::*;
use minidom::Element;
use sha1::Digest as _;

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const CAPS: &str = "http://jabber.org/protocol/caps";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
const AVATAR_META: &str = "urn:xmpp:avatar:metadata";
const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
const DEVICES: &str = "eu.siacs.conversations.axolotl.devicelist";
const PNG: &[u8] = include_bytes!("data/rook.png");

fn server() -> TestServer {
    server_with_users(&["alice", "bob", "carol"], PASSWORD)
}

/// The XEP-0115 §5.1 ver of a client with one identity and these features.
fn ver(features: &[&str]) -> String {
    let mut sorted: Vec<&str> = features.to_vec();
    sorted.sort_unstable();
    let mut s = String::from("client/pc//Rookery test<");
    for f in sorted {
        s.push_str(f);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// Logged in and bound; becomes available with caps naming `features`, and answers the
/// server's disco#info question about them (unless the ver is already known to it).
async fn online_with_caps(
    server: &TestServer,
    user: &str,
    resource: &str,
    features: &[&str],
) -> Client {
    let mut c = Client::bound_with(server, user, PASSWORD, resource).await;
    c.roster_get().await;
    let ver = ver(features);
    c.send(&format!(
        "<presence><c xmlns='{CAPS}' hash='sha-1' node='https://rookery.test' ver='{ver}'/></presence>"
    ))
    .await;
    c.settle().await;
    let asked = c.take(|el| {
        el.name() == "iq"
            && el.attr("type") == Some("get")
            && el.get_child("query", DISCO_INFO).is_some()
    });
    for question in asked {
        let node = question
            .get_child("query", DISCO_INFO)
            .and_then(|q| q.attr("node"))
            .unwrap_or("")
            .to_string();
        assert_eq!(node, format!("https://rookery.test#{ver}"));
        let features: String = features
            .iter()
            .map(|f| format!("<feature var='{f}'/>"))
            .collect();
        c.send(&format!(
            "<iq type='result' id='{}' to='{}'><query xmlns='{DISCO_INFO}' node='{node}'><identity category='client' type='pc' name='Rookery test'/>{features}</query></iq>",
            question.attr("id").unwrap_or(""),
            question.attr("from").unwrap_or(""),
        ))
        .await;
    }
    c
}

fn notify(node: &str) -> String {
    format!("{node}+notify")
}

async fn publish(
    c: &mut Client,
    node: &str,
    id: &str,
    payload: &str,
    options: &[(&str, &str)],
) -> Element {
    let options = if options.is_empty() {
        String::new()
    } else {
        let fields: String = options
            .iter()
            .map(|(var, value)| format!("<field var='{var}'><value>{value}</value></field>"))
            .collect();
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>{fields}</x></publish-options>"
        )
    };
    let id = if id.is_empty() {
        String::new()
    } else {
        format!(" id='{id}'")
    };
    c.iq(
        "set",
        None,
        &format!("<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item{id}>{payload}</item></publish>{options}</pubsub>"),
    )
    .await
}

async fn items(c: &mut Client, owner: Option<&str>, node: &str, inner: &str) -> Element {
    c.iq(
        "get",
        owner,
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{node}'>{inner}</items></pubsub>"),
    )
    .await
}

/// The ids of the items in an items result.
fn item_ids(reply: &Element) -> Vec<String> {
    assert_result(reply);
    reply
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|items| {
            items
                .children()
                .filter_map(|i| i.attr("id").map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// An event notification of `node` from `owner`.
fn event_of<'a>(el: &'a Element, owner: &str, node: &str) -> Option<&'a Element> {
    if el.name() != "message" || el.attr("from") != Some(owner) {
        return None;
    }
    let items = el.get_child("event", EVENT)?.get_child("items", EVENT)?;
    (items.attr("node") == Some(node)).then_some(items)
}

fn pubsub_condition(reply: &Element) -> (String, Option<String>) {
    let (defined, specific) = error_parts(reply, ERRORS);
    (defined, specific.map(|e| e.name().to_string()))
}

#[tokio::test]
async fn publishing_notifies_the_owner_and_subscribed_contacts_that_asked_through_caps() {
    let server = server();
    let wants = [DISCO_INFO, CAPS, &notify(AVATAR_META) as &str];
    let mut alice = online_with_caps(&server, "alice", "phone", &wants).await;
    let mut bob = online_with_caps(&server, "bob", "phone", &wants).await;
    let mut carol = online_with_caps(&server, "carol", "phone", &wants).await;
    mutual(&mut alice, &mut bob).await;
    // Bob's second device has no +notify for avatars: it is not told.
    let mut bob_laptop = online_with_caps(&server, "bob", "laptop", &[DISCO_INFO]).await;
    for c in [&mut alice, &mut bob, &mut carol, &mut bob_laptop] {
        c.settle_and_clear().await;
    }

    // The account is a PEP service.
    let info = bob
        .iq(
            "get",
            Some(&alice.bare),
            &format!("<query xmlns='{DISCO_INFO}'/>"),
        )
        .await;
    let text = xml(&info);
    assert!(
        text.contains("category='pubsub'") && text.contains("type='pep'"),
        "{text}"
    );
    assert!(text.contains("pubsub#publish-options"), "{text}");

    let metadata = format!("<metadata xmlns='{AVATAR_META}'><info bytes='{}' id='abc' height='48' width='48' type='image/png'/></metadata>", PNG.len());
    let reply = publish(&mut alice, AVATAR_META, "abc", &metadata, &[]).await;
    assert_result(&reply);
    let alice_bare = alice.bare.clone();
    for c in [&mut alice, &mut bob] {
        let event = c
            .wait("the metadata notification", |el| {
                event_of(el, &alice_bare, AVATAR_META).is_some()
            })
            .await;
        let items = event_of(&event, &alice_bare, AVATAR_META).unwrap();
        assert_eq!(event.attr("type"), Some("headline"));
        let item = items.get_child("item", EVENT).expect("an item");
        assert_eq!(item.attr("id"), Some("abc"));
        assert!(
            item.get_child("metadata", AVATAR_META).is_some(),
            "{}",
            xml(&event)
        );
    }
    // Carol is not subscribed to Alice's presence; Bob's laptop did not ask.
    carol
        .none("no notification for a stranger", |el| {
            event_of(el, &alice_bare, AVATAR_META).is_some()
        })
        .await;
    bob_laptop
        .none("no notification without +notify", |el| {
            event_of(el, &alice_bare, AVATAR_META).is_some()
        })
        .await;
    // Nobody asked for tunes: a publish there notifies no one but is kept.
    let tune = "<tune xmlns='http://jabber.org/protocol/tune'><title>Yesterday</title></tune>";
    assert_result(&publish(&mut alice, "http://jabber.org/protocol/tune", "", tune, &[]).await);
    bob.none("no tune notification", |el| {
        event_of(el, &alice_bare, "http://jabber.org/protocol/tune").is_some()
    })
    .await;
    let got = items(
        &mut bob,
        Some(&alice_bare),
        "http://jabber.org/protocol/tune",
        "",
    )
    .await;
    assert_eq!(item_ids(&got).len(), 1);

    // The node is listed for a contact who may see it, not for a stranger.
    let listed = bob
        .iq(
            "get",
            Some(&alice_bare),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert!(xml(&listed).contains(AVATAR_META), "{}", xml(&listed));
    let hidden = carol
        .iq(
            "get",
            Some(&alice_bare),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert!(!xml(&hidden).contains(AVATAR_META), "{}", xml(&hidden));

    // Retracting notifies too.
    alice.settle_and_clear().await;
    let reply = alice
        .iq("set", None, &format!("<pubsub xmlns='{PUBSUB}'><retract node='{AVATAR_META}' notify='true'><item id='abc'/></retract></pubsub>"))
        .await;
    assert_result(&reply);
    let retracted = bob
        .wait("the retraction", |el| {
            event_of(el, &alice_bare, AVATAR_META)
                .is_some_and(|items| items.get_child("retract", EVENT).is_some())
        })
        .await;
    assert_eq!(
        event_of(&retracted, &alice_bare, AVATAR_META)
            .and_then(|i| i.get_child("retract", EVENT))
            .and_then(|r| r.attr("id")),
        Some("abc")
    );
}

#[tokio::test]
async fn the_last_item_reaches_a_session_when_its_interest_becomes_known() {
    let server = server();
    let wants = [DISCO_INFO, &notify(AVATAR_META) as &str, &notify(DEVICES)];
    let mut alice = online_with_caps(&server, "alice", "phone", &wants).await;
    let mut bob = online_with_caps(&server, "bob", "phone", &wants).await;
    mutual(&mut alice, &mut bob).await;
    let devices = format!("<list xmlns='{DEVICES}'><device id='1234'/></list>");
    assert_result(
        &publish(
            &mut alice,
            DEVICES,
            "current",
            &devices,
            &[("pubsub#access_model", "open")],
        )
        .await,
    );
    drop(bob);

    // Bob comes back on a new device with the same caps (the ver is known: no question asked).
    let mut bob = Client::bound_with(&server, "bob", PASSWORD, "tablet").await;
    bob.roster_get().await;
    bob.send(&format!(
        "<presence><c xmlns='{CAPS}' hash='sha-1' node='https://rookery.test' ver='{}'/></presence>",
        ver(&wants)
    ))
    .await;
    let alice_bare = alice.bare.clone();
    let event = bob
        .wait("alice's device list", |el| {
            event_of(el, &alice_bare, DEVICES).is_some()
        })
        .await;
    let item = event_of(&event, &alice_bare, DEVICES)
        .unwrap()
        .get_child("item", EVENT)
        .unwrap();
    assert_eq!(item.attr("id"), Some("current"));
    assert!(xml(&event).contains("1234"));
    // His own nodes count too: he has none, so nothing else came; and no disco question.
    bob.settle().await;
    assert_eq!(
        bob.count(|el| el.name() == "iq" && el.attr("type") == Some("get"))
            .await,
        0
    );

    // An open node (OMEMO bundles and device lists) is readable by anyone on the server.
    let mut carol = Client::bound_with(&server, "carol", PASSWORD, "phone").await;
    let got = items(&mut carol, Some(&alice_bare), DEVICES, "").await;
    assert_eq!(item_ids(&got), vec!["current"]);

    // A new subscriber gets the last items when the owner approves (XEP-0163 §4.3.3).
    let mut carol = online_with_caps(&server, "carol", "laptop", &wants).await;
    carol.settle_and_clear().await;
    alice.settle_and_clear().await;
    carol
        .send(&format!("<presence type='subscribe' to='{alice_bare}'/>"))
        .await;
    let carol_bare = carol.bare.clone();
    alice
        .wait("carol's request", |el| {
            presence_is(el, Some("subscribe"), &carol_bare)
        })
        .await;
    alice
        .send(&format!("<presence type='subscribed' to='{carol_bare}'/>"))
        .await;
    carol
        .wait("alice's device list on approval", |el| {
            event_of(el, &alice_bare, DEVICES).is_some()
        })
        .await;

    // Going unavailable and available again brings the last items again.
    bob.send("<presence type='unavailable'/>").await;
    bob.settle_and_clear().await;
    bob.send(&format!(
        "<presence><c xmlns='{CAPS}' hash='sha-1' node='https://rookery.test' ver='{}'/></presence>",
        ver(&wants)
    ))
    .await;
    bob.wait("the device list after coming back", |el| {
        event_of(el, &alice_bare, DEVICES).is_some()
    })
    .await;
}

#[tokio::test]
async fn avatars_go_through_pep_and_through_vcards() {
    let server = server();
    let wants = [DISCO_INFO, &notify(AVATAR_META) as &str];
    let mut alice = online_with_caps(&server, "alice", "phone", &wants).await;
    let mut bob = online_with_caps(&server, "bob", "phone", &wants).await;
    let mut carol = Client::bound_with(&server, "carol", PASSWORD, "phone").await;
    mutual(&mut alice, &mut bob).await;
    let alice_bare = alice.bare.clone();

    // XEP-0084: data first, then metadata naming it by its SHA-1.
    let id: String = sha1::Sha1::digest(PNG)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
    let data = format!("<data xmlns='{AVATAR_DATA}'>{b64}</data>");
    assert_result(&publish(&mut alice, AVATAR_DATA, &id, &data, &[]).await);
    let meta = format!("<metadata xmlns='{AVATAR_META}'><info bytes='{}' id='{id}' height='48' width='48' type='image/png'/></metadata>", PNG.len());
    assert_result(&publish(&mut alice, AVATAR_META, &id, &meta, &[]).await);
    let event = bob
        .wait("the avatar metadata", |el| {
            event_of(el, &alice_bare, AVATAR_META).is_some()
        })
        .await;
    let announced = event_of(&event, &alice_bare, AVATAR_META)
        .and_then(|i| i.get_child("item", EVENT))
        .and_then(|i| i.attr("id"))
        .unwrap()
        .to_string();
    assert_eq!(announced, id);
    // Bob fetches the image by the id he was told, and it is the same picture.
    let got = items(
        &mut bob,
        Some(&alice_bare),
        AVATAR_DATA,
        &format!("<item id='{announced}'/>"),
    )
    .await;
    assert_eq!(item_ids(&got), vec![id.clone()]);
    let text = got
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .and_then(|i| i.get_child("item", PUBSUB))
        .and_then(|i| i.get_child("data", AVATAR_DATA))
        .map(|d| d.text())
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap(),
        PNG
    );
    // A stranger may not (the default access model is presence).
    let refused = items(&mut carol, Some(&alice_bare), AVATAR_DATA, "").await;
    assert_eq!(
        pubsub_condition(&refused),
        (
            "not-authorized".to_string(),
            Some("presence-subscription-required".to_string())
        )
    );

    // XEP-0153: the vCard holds the photo, presence carries its hash, and the two agree.
    let vcard = format!("<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>{b64}</BINVAL></PHOTO></vCard>");
    assert_result(&alice.iq("set", None, &vcard).await);
    alice
        .send(&format!(
            "<presence><x xmlns='vcard-temp:x:update'><photo>{id}</photo></x></presence>"
        ))
        .await;
    let presence = bob
        .wait("presence with the photo hash", |el| {
            el.name() == "presence" && el.get_child("x", "vcard-temp:x:update").is_some()
        })
        .await;
    let hash = presence
        .get_child("x", "vcard-temp:x:update")
        .and_then(|x| x.get_child("photo", "vcard-temp:x:update"))
        .map(|p| p.text())
        .unwrap();
    let card = bob
        .iq("get", Some(&alice_bare), "<vCard xmlns='vcard-temp'/>")
        .await;
    let binval = card
        .get_child("vCard", "vcard-temp")
        .and_then(|v| v.get_child("PHOTO", "vcard-temp"))
        .and_then(|p| p.get_child("BINVAL", "vcard-temp"))
        .map(|b| b.text())
        .unwrap();
    let photo = base64::engine::general_purpose::STANDARD
        .decode(binval.trim())
        .unwrap();
    let photo_hash: String = sha1::Sha1::digest(&photo)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(photo_hash, hash);
}

#[tokio::test]
async fn bookmarks_stay_private_and_publish_options_are_preconditions() {
    let server = server();
    let wants = [DISCO_INFO, &notify(BOOKMARKS) as &str];
    let mut phone = online_with_caps(&server, "alice", "phone", &wants).await;
    let mut laptop = online_with_caps(&server, "alice", "laptop", &wants).await;
    let mut bob = online_with_caps(&server, "bob", "phone", &wants).await;
    mutual(&mut phone, &mut bob).await;
    laptop.settle_and_clear().await;
    let alice_bare = phone.bare.clone();
    let private = [
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ];
    let bookmark = |name: &str| {
        format!("<conference xmlns='{BOOKMARKS}' name='{name}' autojoin='true'><nick>alice</nick></conference>")
    };
    for (room, name) in [
        ("tea@conference.localhost", "Tea"),
        ("chess@conference.localhost", "Chess"),
    ] {
        let reply = publish(&mut phone, BOOKMARKS, room, &bookmark(name), &private).await;
        assert_result(&reply);
        let event = laptop
            .wait("the bookmark on the other device", |el| {
                event_of(el, &alice_bare, BOOKMARKS).is_some()
            })
            .await;
        assert!(xml(&event).contains(name));
    }
    bob.none("no one else hears of bookmarks", |el| {
        event_of(el, &alice_bare, BOOKMARKS).is_some()
    })
    .await;
    // Every bookmark is kept (max_items max), and only Alice can read them.
    let all = items(&mut laptop, None, BOOKMARKS, "").await;
    assert_eq!(
        item_ids(&all),
        vec!["tea@conference.localhost", "chess@conference.localhost"]
    );
    let refused = items(&mut bob, Some(&alice_bare), BOOKMARKS, "").await;
    assert_eq!(
        pubsub_condition(&refused),
        ("not-allowed".to_string(), Some("closed-node".to_string()))
    );
    let newest = items(&mut laptop, None, BOOKMARKS, "").await;
    assert_eq!(item_ids(&newest).len(), 2);
    let one = laptop
        .iq(
            "get",
            None,
            &format!("<pubsub xmlns='{PUBSUB}'><items node='{BOOKMARKS}' max_items='1'/></pubsub>"),
        )
        .await;
    assert_eq!(item_ids(&one), vec!["chess@conference.localhost"]);

    // A publish whose options differ from the node's configuration is refused...
    let reply = publish(
        &mut phone,
        BOOKMARKS,
        "x@conference.localhost",
        &bookmark("X"),
        &[("pubsub#access_model", "open")],
    )
    .await;
    assert_eq!(
        pubsub_condition(&reply),
        (
            "conflict".to_string(),
            Some("precondition-not-met".to_string())
        )
    );
    // ...and the configuration is what the owner reads and may change.
    let config = phone
        .iq(
            "get",
            None,
            &format!("<pubsub xmlns='{OWNER}'><configure node='{BOOKMARKS}'/></pubsub>"),
        )
        .await;
    assert_result(&config);
    assert!(xml(&config).contains("whitelist"), "{}", xml(&config));
    assert!(
        xml(&config).contains("<value>max</value>"),
        "{}",
        xml(&config)
    );
    // XEP-0402 §compat: an old client sees the same bookmarks through private XML storage...
    let features = phone
        .iq(
            "get",
            Some(&alice_bare),
            &format!("<query xmlns='{DISCO_INFO}'/>"),
        )
        .await;
    assert!(
        xml(&features).contains("urn:xmpp:bookmarks:1#compat"),
        "{}",
        xml(&features)
    );
    let legacy = phone
        .iq(
            "get",
            None,
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
        )
        .await;
    assert_result(&legacy);
    let storage = legacy
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("storage", "storage:bookmarks"))
        .expect("<storage/>");
    let jids: Vec<&str> = storage.children().filter_map(|c| c.attr("jid")).collect();
    assert_eq!(
        jids,
        vec!["tea@conference.localhost", "chess@conference.localhost"]
    );
    assert!(
        xml(&legacy).contains("<nick>alice</nick>"),
        "{}",
        xml(&legacy)
    );
    // ...and what it writes there is what new clients get: chess renamed, tea gone, go added.
    laptop.settle_and_clear().await;
    let written = phone
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'><conference jid='chess@conference.localhost' name='Chess club' autojoin='true'><nick>alice</nick></conference><conference jid='go@conference.localhost' name='Go'/></storage></query>",
        )
        .await;
    assert_result(&written);
    let all = items(&mut laptop, None, BOOKMARKS, "").await;
    assert_eq!(
        item_ids(&all),
        vec!["chess@conference.localhost", "go@conference.localhost"]
    );
    assert!(xml(&all).contains("Chess club"), "{}", xml(&all));
    laptop
        .wait("the retraction of tea", |el| {
            event_of(el, &alice_bare, BOOKMARKS).is_some_and(|items| {
                items
                    .get_child("retract", EVENT)
                    .is_some_and(|r| r.attr("id") == Some("tea@conference.localhost"))
            })
        })
        .await;
    laptop
        .wait("the new go bookmark", |el| {
            event_of(el, &alice_bare, BOOKMARKS).is_some_and(|items| {
                items
                    .get_child("item", EVENT)
                    .is_some_and(|i| i.attr("id") == Some("go@conference.localhost"))
            })
        })
        .await;
    // Restart: bookmarks and their configuration are kept.
    drop((phone, laptop, bob));
    let server = TestServer::restart(server);
    let mut phone = Client::bound_with(&server, "alice", PASSWORD, "phone").await;
    let all = items(&mut phone, None, BOOKMARKS, "").await;
    assert_eq!(item_ids(&all).len(), 2);
    let mut bob = Client::bound_with(&server, "bob", PASSWORD, "phone").await;
    let refused = items(&mut bob, Some(&alice_bare), BOOKMARKS, "").await;
    assert_eq!(pubsub_condition(&refused).0, "not-allowed");
}

#[tokio::test]
async fn pubsub_requests_that_cannot_be_served_get_the_right_error() {
    let server = server();
    let mut alice = Client::bound_with(&server, "alice", PASSWORD, "phone").await;
    let mut bob = Client::bound_with(&server, "bob", PASSWORD, "phone").await;
    let bob_bare = bob.bare.clone();
    assert_result(
        &publish(
            &mut bob,
            "urn:example:mood",
            "1",
            "<mood xmlns='urn:example:mood'/>",
            &[],
        )
        .await,
    );

    // Someone else's node: no publishing, retracting or managing.
    let reply = alice
        .iq("set", Some(&bob_bare), &format!("<pubsub xmlns='{PUBSUB}'><publish node='urn:example:mood'><item><mood xmlns='urn:example:mood'/></item></publish></pubsub>"))
        .await;
    assert_eq!(pubsub_condition(&reply).0, "forbidden");
    let reply = alice
        .iq(
            "set",
            Some(&bob_bare),
            &format!("<pubsub xmlns='{OWNER}'><delete node='urn:example:mood'/></pubsub>"),
        )
        .await;
    assert_eq!(pubsub_condition(&reply).0, "forbidden");

    // Malformed publishes.
    for (payload, expected) in [
        (format!("<pubsub xmlns='{PUBSUB}'><publish node='n'><item id='1'/></publish></pubsub>"), ("bad-request", Some("payload-required"))),
        (format!("<pubsub xmlns='{PUBSUB}'><publish node='n'><item><a xmlns='urn:a'/><b xmlns='urn:b'/></item></publish></pubsub>"), ("bad-request", Some("invalid-payload"))),
        (format!("<pubsub xmlns='{PUBSUB}'><publish><item><a xmlns='urn:a'/></item></publish></pubsub>"), ("bad-request", Some("nodeid-required"))),
        (format!("<pubsub xmlns='{PUBSUB}'><publish node='n'/></pubsub>"), ("bad-request", Some("item-required"))),
        (format!("<pubsub xmlns='{PUBSUB}'><subscribe node='n' jid='{}'/></pubsub>", alice.jid), ("feature-not-implemented", Some("unsupported"))),
    ] {
        let reply = alice.iq("set", None, &payload).await;
        let (defined, specific) = pubsub_condition(&reply);
        assert_eq!((defined.as_str(), specific.as_deref()), expected, "{payload}");
    }
    // Options the service cannot meet fail the precondition (XEP-0060 §7.1.5).
    for option in [
        ("pubsub#access_model", "authorize"),
        ("pubsub#max_items", "lots"),
    ] {
        let reply = publish(&mut alice, "n", "1", "<a xmlns='urn:a'/>", &[option]).await;
        assert_eq!(
            pubsub_condition(&reply),
            (
                "conflict".to_string(),
                Some("precondition-not-met".to_string())
            ),
            "{option:?}"
        );
    }
    // Creating or configuring with an access model not offered (§8.1.3), or with no name (§8.1.2).
    let reply = alice
        .iq("set", None, &format!("<pubsub xmlns='{PUBSUB}'><create node='urn:example:y'/><configure><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>roster</value></field></x></configure></pubsub>"))
        .await;
    assert_eq!(
        pubsub_condition(&reply),
        (
            "not-acceptable".to_string(),
            Some("unsupported-access-model".to_string())
        )
    );
    let reply = alice
        .iq(
            "set",
            None,
            &format!("<pubsub xmlns='{PUBSUB}'><create/></pubsub>"),
        )
        .await;
    assert_eq!(
        pubsub_condition(&reply),
        (
            "not-acceptable".to_string(),
            Some("nodeid-required".to_string())
        )
    );
    // Nothing was created by the refused publishes.
    let reply = items(&mut alice, None, "n", "").await;
    assert_eq!(pubsub_condition(&reply).0, "item-not-found");
    let reply = alice
        .iq("set", None, &format!("<pubsub xmlns='{PUBSUB}'><retract node='urn:none'><item id='1'/></retract></pubsub>"))
        .await;
    assert_eq!(pubsub_condition(&reply).0, "item-not-found");
    let reply = items(&mut alice, Some(&bob_bare), "urn:example:mood", "").await;
    assert_eq!(
        pubsub_condition(&reply),
        (
            "not-authorized".to_string(),
            Some("presence-subscription-required".to_string())
        )
    );

    // Create, a conflicting create, delete, and the node is gone.
    let create = format!("<pubsub xmlns='{PUBSUB}'><create node='urn:example:x'/></pubsub>");
    assert_result(&alice.iq("set", None, &create).await);
    assert_eq!(
        pubsub_condition(&alice.iq("set", None, &create).await).0,
        "conflict"
    );
    let delete = format!("<pubsub xmlns='{OWNER}'><delete node='urn:example:x'/></pubsub>");
    assert_result(&alice.iq("set", None, &delete).await);
    assert_eq!(
        pubsub_condition(&alice.iq("set", None, &delete).await).0,
        "item-not-found"
    );
    // The server is still well.
    alice.ping().await;
}
