//! Helpers for group chat (XEP-0045) tests: joining, creating and configuring rooms, reading
//! status codes and items, and the muc#admin requests.

use minidom::Element;

use super::stanzas::*;
use super::TestServer;

pub const PASSWORD: &str = "groups!";
pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const SERVICE: &str = "conference.localhost";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub fn room(name: &str) -> String {
    format!("{name}@{SERVICE}")
}

/// The status codes of a MUC presence.
pub fn codes(el: &Element) -> Vec<String> {
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
pub fn item(el: &Element) -> (String, String, Option<String>) {
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

pub fn xml(el: &Element) -> String {
    String::from(el)
}

pub fn error_condition(el: &Element) -> Option<String> {
    el.get_child("error", "jabber:client").and_then(|e| {
        e.children()
            .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
            .map(|c| c.name().to_string())
    })
}

/// Matches the error reply to the stanza with this id.
pub fn error_reply(id: &str) -> impl Fn(&Element) -> bool + '_ {
    move |el| el.attr("id") == Some(id) && el.attr("type") == Some("error")
}

pub fn presence_from(el: &Element, from: &str) -> bool {
    el.name() == "presence" && el.attr("from") == Some(from)
}

/// Sends a join presence to `room/nick` (with an optional password).
pub async fn send_join(c: &mut Client, room: &str, nick: &str, password: Option<&str>) {
    let password = password
        .map(|p| format!("<password>{p}</password>"))
        .unwrap_or_default();
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='{MUC}'>{password}</x></presence>"
    ))
    .await;
}

/// Waits for the presence error that refuses a join.
pub async fn join_error(c: &mut Client, what: &str) -> Element {
    c.wait(what, |el| {
        el.name() == "presence" && el.attr("type") == Some("error")
    })
    .await
}

/// Joins and waits for the self-presence (status 110) and the subject; returns the self-presence.
pub async fn join(c: &mut Client, room: &str, nick: &str) -> Element {
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
pub async fn create(owner: &mut Client, room: &str, nick: &str) {
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
pub async fn configure(owner: &mut Client, room: &str, fields: &[(&str, &str)]) -> Element {
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

pub async fn clients(server: &TestServer, users: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for user in users {
        out.push(Client::bound_with(server, user, PASSWORD, "phone").await);
    }
    out
}

pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";

/// A muc#admin set of one item; returns the reply.
pub async fn admin(c: &mut Client, room: &str, item: &str) -> Element {
    c.iq(
        "set",
        Some(room),
        &format!("<query xmlns='{MUC_ADMIN}'>{item}</query>"),
    )
    .await
}

/// A muc#admin set of one item that must succeed.
pub async fn admin_ok(c: &mut Client, room: &str, item: &str) {
    let reply = admin(c, room, item).await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", xml(&reply));
}

/// A configuration form that must be accepted.
pub async fn configure_ok(owner: &mut Client, room: &str, fields: &[(&str, &str)]) {
    let reply = configure(owner, room, fields).await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", xml(&reply));
}

/// Sets the subject and waits for its echo.
pub async fn set_subject(c: &mut Client, room: &str, subject: &str) {
    c.send(&format!(
        "<message to='{room}' type='groupchat'><subject>{subject}</subject></message>"
    ))
    .await;
    c.wait("subject echo", |el| {
        el.get_child("subject", "jabber:client").is_some()
    })
    .await;
}
