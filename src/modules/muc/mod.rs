//! Groups: XEP-0045 multi-user chat rooms on the service at `[muc] domain`.
//!
//! The service is addressed like a component: whatever a local session sends to its domain comes
//! here with the sender's full JID, and what a room sends goes to its occupants' sessions through
//! the router. Each room is one mutex-guarded state (`room::Room`) that turns a stanza into the
//! deliveries it causes; the lock is never held across an await, and a room's fan-out never waits
//! on a slow occupant, so one busy room does not hold up another.

pub mod room;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;

use super::{Module, Spec, Support};
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::router::Outbound;
use crate::server::ServerState;
use crate::xml::{self, ns};
use room::{Delivery, Joined, Room, RoomConfig};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

/// Status codes (XEP-0045 §15.6).
pub const STATUS_NON_ANONYMOUS: u16 = 100;
pub const STATUS_SELF: u16 = 110;
pub const STATUS_NEW_ROOM: u16 = 201;

pub const MODULE: Module = Module {
    name: "muc",
    // The features of the service itself are in its own disco#info (`service_info`).
    disco_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        45,
        "1.35.1",
        Support::Partial,
        "rooms on [muc] domain: create (locked until the owner accepts the instant configuration), join, leave, presence with status codes, groupchat fan-out with stanza-ids, subject, private messages, occupant limit, members-only, passwords; no affiliation admin, history, persistence or nick change yet",
    )],
};

/// The rooms of the service.
pub struct Service {
    pub domain: String,
    rooms: Mutex<HashMap<BareJid, Arc<Mutex<Room>>>>,
    max_occupants: usize,
}

impl Service {
    pub fn new(domain: String, max_occupants: usize) -> Service {
        Service {
            domain,
            rooms: Mutex::default(),
            max_occupants,
        }
    }

    /// Whether `to` is the service or one of its rooms.
    pub fn serves(&self, to: &Jid) -> bool {
        to.domain().as_str() == self.domain
    }

    fn room(&self, jid: &BareJid) -> Option<Arc<Mutex<Room>>> {
        self.rooms.lock().ok()?.get(jid).cloned()
    }

    /// Public rooms for the service's disco#items: (JID, name).
    fn listed(&self) -> Vec<(BareJid, String)> {
        let rooms: Vec<Arc<Mutex<Room>>> = match self.rooms.lock() {
            Ok(rooms) => rooms.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let mut listed: Vec<(BareJid, String)> = rooms
            .iter()
            .filter_map(|room| {
                let room = room.lock().ok()?;
                (room.config.public && !room.locked)
                    .then(|| (room.jid.clone(), room.config.name.clone()))
            })
            .collect();
        listed.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        listed
    }

    /// Forgets a room that has no occupants left, unless it is persistent.
    fn drop_if_empty(&self, jid: &BareJid) {
        if let Ok(mut rooms) = self.rooms.lock() {
            let empty = rooms.get(jid).is_some_and(|room| {
                room.lock()
                    .map(|r| r.is_empty() && (!r.config.persistent || r.locked))
                    .unwrap_or(false)
            });
            if empty {
                rooms.remove(jid);
            }
        }
    }
}

/// A stanza from a local session (`from`, stamped) to the service or one of its rooms.
pub async fn receive(state: &ServerState, el: Element, from: &FullJid, to: &Jid) {
    let outcome = match el.name() {
        "presence" => presence(state, &el, from, to),
        "message" => message(state, &el, from, to),
        "iq" => iq(state, &el, from, to),
        _ => Ok(Vec::new()),
    };
    match outcome {
        Ok(deliveries) => deliver(state, deliveries).await,
        Err(error) => {
            if let Some(reply) = error.reply_to(&el) {
                deliver(
                    state,
                    vec![(from.clone(), Bytes::from(xml::serialize(&reply)))],
                )
                .await;
            }
        }
    }
}

/// Hands each stanza to its session. A full queue does not stop the fan-out: that one copy waits
/// in a task of its own (the session is closed if it stays full, see `SessionHandle::send`).
async fn deliver(state: &ServerState, deliveries: Vec<Delivery>) {
    for (to, bytes) in deliveries {
        let Some(session) = state.router.get(&to) else {
            continue;
        };
        if let Err(out) = session.try_send(Outbound::Stanza(bytes)) {
            tokio::spawn(async move {
                session.send(out).await;
            });
        }
    }
}

fn presence(
    state: &ServerState,
    el: &Element,
    from: &FullJid,
    to: &Jid,
) -> Result<Vec<Delivery>, StanzaError> {
    let Some(node) = to.node() else {
        return Ok(Vec::new());
    };
    let room_jid = BareJid::from_parts(Some(node), to.domain());
    let unavailable = el.attr("type") == Some("unavailable");
    if el.attr("type").is_some() && !unavailable {
        // Subscriptions and probes mean nothing to a room; errors from occupants are dropped.
        return Ok(Vec::new());
    }
    let service = &state.muc;
    if unavailable {
        let Some(room) = service.room(&room_jid) else {
            return Ok(Vec::new());
        };
        let out = match room.lock() {
            Ok(mut room) => room.leave(from, el),
            Err(_) => Vec::new(),
        };
        service.drop_if_empty(&room_jid);
        return Ok(out);
    }
    let nick = match to.resource() {
        Some(nick) if !nick.as_str().trim().is_empty() => nick.as_str().to_string(),
        _ => {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::JidMalformed,
                "a nick is needed to enter a room",
            ))
        }
    };
    let (room, created) = {
        let mut rooms = service
            .rooms
            .lock()
            .map_err(|_| StanzaErrorCondition::InternalServerError)?;
        match rooms.get(&room_jid) {
            Some(room) => (room.clone(), false),
            None => {
                let room = Arc::new(Mutex::new(Room::create(
                    room_jid.clone(),
                    from.to_bare(),
                    RoomConfig::new(service.max_occupants),
                )));
                rooms.insert(room_jid.clone(), room.clone());
                (room, true)
            }
        }
    };
    let joined = room
        .lock()
        .map_err(|_| StanzaErrorCondition::InternalServerError)?
        .join(from, &nick, el, created);
    match joined {
        Ok(Joined::Entered(out) | Joined::Updated(out)) => Ok(out),
        Err(error) => {
            service.drop_if_empty(&room_jid);
            Err(error)
        }
    }
}

fn message(
    state: &ServerState,
    el: &Element,
    from: &FullJid,
    to: &Jid,
) -> Result<Vec<Delivery>, StanzaError> {
    if el.attr("type") == Some("error") {
        return Ok(Vec::new());
    }
    let Some(node) = to.node() else {
        return Err(StanzaErrorCondition::ServiceUnavailable.into());
    };
    let room_jid = BareJid::from_parts(Some(node), to.domain());
    let room = state.muc.room(&room_jid).ok_or_else(|| {
        StanzaError::with_text(StanzaErrorCondition::ItemNotFound, "no such room")
    })?;
    let mut room = room
        .lock()
        .map_err(|_| StanzaErrorCondition::InternalServerError)?;
    match (to.resource(), el.attr("type")) {
        (None, Some("groupchat")) => room.groupchat(from, el),
        (None, _) => Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "messages to a room are of type groupchat",
        )),
        (Some(_), Some("groupchat")) => Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "a private message is not of type groupchat",
        )),
        (Some(nick), _) => room.private(from, nick.as_str(), el),
    }
}

fn iq(
    state: &ServerState,
    el: &Element,
    from: &FullJid,
    to: &Jid,
) -> Result<Vec<Delivery>, StanzaError> {
    let kind = el.attr("type").unwrap_or("");
    if kind == "result" || kind == "error" {
        return Ok(Vec::new());
    }
    let set = kind == "set";
    let payload = el
        .children()
        .next()
        .ok_or(StanzaErrorCondition::BadRequest)?;
    let result = match (to.node(), to.resource()) {
        (None, _) => match payload.ns().as_str() {
            ns::DISCO_INFO if !set => service_info(),
            ns::DISCO_ITEMS if !set => service_items(state),
            _ => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
        },
        (Some(node), None) => {
            let room_jid = BareJid::from_parts(Some(node), to.domain());
            let room = state
                .muc
                .room(&room_jid)
                .ok_or(StanzaErrorCondition::ItemNotFound)?;
            let mut room = room
                .lock()
                .map_err(|_| StanzaErrorCondition::InternalServerError)?;
            match payload.ns().as_str() {
                ns::DISCO_INFO if !set => room_info(&room),
                ns::DISCO_ITEMS if !set => Element::bare("query", ns::DISCO_ITEMS),
                NS_MUC_OWNER => owner(&mut room, from, set, payload)?,
                _ => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
            }
        }
        // An iq to an occupant (vCard, ping...) is not forwarded yet.
        (Some(_), Some(_)) => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
    };
    let reply = super::result_for(el, Some(result));
    Ok(vec![(from.clone(), Bytes::from(xml::serialize(&reply)))])
}

/// The owner's configuration requests (§10): the form, and its submission (an empty submission
/// accepts the defaults: an instant room). Either unlocks a new room.
fn owner(
    room: &mut Room,
    from: &FullJid,
    set: bool,
    payload: &Element,
) -> Result<Element, StanzaError> {
    if room.affiliation(&from.to_bare()) != room::Affiliation::Owner {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::Forbidden,
            "only owners may configure the room",
        ));
    }
    if !set {
        let mut query = Element::bare("query", NS_MUC_OWNER);
        query.append_child(config_form(room));
        return Ok(query);
    }
    let form = payload
        .get_child("x", ns::DATA_FORMS)
        .ok_or(StanzaErrorCondition::BadRequest)?;
    match form.attr("type") {
        Some("submit") => apply_config(room, form)?,
        Some("cancel") => {}
        _ => {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "a configuration form is submitted or cancelled",
            ))
        }
    }
    room.locked = false;
    Ok(Element::bare("query", NS_MUC_OWNER))
}

fn field(var: &str, kind: &str, value: &str) -> Element {
    let mut field = Element::bare("field", ns::DATA_FORMS);
    set_attr(&mut field, "var", var);
    if !kind.is_empty() {
        set_attr(&mut field, "type", kind);
    }
    let mut v = Element::bare("value", ns::DATA_FORMS);
    v.append_text(value.to_string());
    field.append_child(v);
    field
}

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

/// The muc#roomconfig form with the room's current values.
fn config_form(room: &Room) -> Element {
    let c = &room.config;
    let mut form = Element::bare("x", ns::DATA_FORMS);
    set_attr(&mut form, "type", "form");
    for f in [
        field(
            "FORM_TYPE",
            "hidden",
            "http://jabber.org/protocol/muc#roomconfig",
        ),
        field("muc#roomconfig_roomname", "text-single", &c.name),
        field("muc#roomconfig_roomdesc", "text-single", &c.description),
        field(
            "muc#roomconfig_persistentroom",
            "boolean",
            flag(c.persistent),
        ),
        field("muc#roomconfig_publicroom", "boolean", flag(c.public)),
        field(
            "muc#roomconfig_membersonly",
            "boolean",
            flag(c.members_only),
        ),
        field("muc#roomconfig_moderatedroom", "boolean", flag(c.moderated)),
        field(
            "muc#roomconfig_changesubject",
            "boolean",
            flag(c.change_subject),
        ),
        field(
            "muc#roomconfig_whois",
            "list-single",
            if c.whois_anyone {
                "anyone"
            } else {
                "moderators"
            },
        ),
        field(
            "muc#roomconfig_passwordprotectedroom",
            "boolean",
            flag(c.password.is_some()),
        ),
        field(
            "muc#roomconfig_roomsecret",
            "text-private",
            c.password.as_deref().unwrap_or(""),
        ),
        field(
            "muc#roomconfig_maxusers",
            "text-single",
            &c.max_occupants.to_string(),
        ),
    ] {
        form.append_child(f);
    }
    form
}

/// Applies a submitted muc#roomconfig form; a bad value refuses the whole form (§10.2).
fn apply_config(room: &mut Room, form: &Element) -> Result<(), StanzaError> {
    let mut config = room.config.clone();
    let mut protect = config.password.is_some();
    let mut secret = config.password.clone().unwrap_or_default();
    for field in form.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
        let var = field.attr("var").unwrap_or("");
        let value = field
            .get_child("value", ns::DATA_FORMS)
            .map(|v| v.text())
            .unwrap_or_default();
        let boolean = || match value.as_str() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                format!("{var} takes a boolean"),
            )),
        };
        match var {
            "FORM_TYPE" => {}
            "muc#roomconfig_roomname" => config.name = value,
            "muc#roomconfig_roomdesc" => config.description = value,
            "muc#roomconfig_persistentroom" => config.persistent = boolean()?,
            "muc#roomconfig_publicroom" => config.public = boolean()?,
            "muc#roomconfig_membersonly" => config.members_only = boolean()?,
            "muc#roomconfig_moderatedroom" => config.moderated = boolean()?,
            "muc#roomconfig_changesubject" => config.change_subject = boolean()?,
            "muc#roomconfig_passwordprotectedroom" => protect = boolean()?,
            "muc#roomconfig_roomsecret" => secret = value,
            "muc#roomconfig_whois" => {
                config.whois_anyone = match value.as_str() {
                    "anyone" => true,
                    "moderators" => false,
                    _ => {
                        return Err(StanzaError::with_text(
                            StanzaErrorCondition::NotAcceptable,
                            "muc#roomconfig_whois is anyone or moderators",
                        ))
                    }
                }
            }
            "muc#roomconfig_maxusers" => {
                config.max_occupants = value.parse().map_err(|_| {
                    StanzaError::with_text(
                        StanzaErrorCondition::NotAcceptable,
                        "muc#roomconfig_maxusers takes a number",
                    )
                })?;
            }
            other => {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::NotAcceptable,
                    format!("unknown configuration field {other}"),
                ))
            }
        }
    }
    config.password = (protect && !secret.is_empty()).then_some(secret);
    room.config = config;
    Ok(())
}

fn identity(name: &str) -> Element {
    let mut identity = Element::bare("identity", ns::DISCO_INFO);
    set_attr(&mut identity, "category", "conference");
    set_attr(&mut identity, "type", "text");
    set_attr(&mut identity, "name", name);
    identity
}

fn feature(var: &str) -> Element {
    let mut feature = Element::bare("feature", ns::DISCO_INFO);
    set_attr(&mut feature, "var", var);
    feature
}

fn service_info() -> Element {
    let mut query = Element::bare("query", ns::DISCO_INFO);
    query.append_child(identity("Chatrooms"));
    for var in [ns::DISCO_INFO, ns::DISCO_ITEMS, NS_MUC] {
        query.append_child(feature(var));
    }
    query
}

fn service_items(state: &ServerState) -> Element {
    let mut query = Element::bare("query", ns::DISCO_ITEMS);
    for (jid, name) in state.muc.listed() {
        let mut item = Element::bare("item", ns::DISCO_ITEMS);
        set_attr(&mut item, "jid", jid.as_str());
        if !name.is_empty() {
            set_attr(&mut item, "name", &name);
        }
        query.append_child(item);
    }
    query
}

/// A room's disco#info: what it is configured to be (§6.4), with the muc#roominfo form.
fn room_info(room: &Room) -> Element {
    let c = &room.config;
    let mut query = Element::bare("query", ns::DISCO_INFO);
    let name = if c.name.is_empty() {
        room.jid.node().map(|n| n.to_string()).unwrap_or_default()
    } else {
        c.name.clone()
    };
    query.append_child(identity(&name));
    let features = [
        NS_MUC,
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        "http://jabber.org/protocol/muc#stable_id",
        if c.persistent {
            "muc_persistent"
        } else {
            "muc_temporary"
        },
        if c.public { "muc_public" } else { "muc_hidden" },
        if c.members_only {
            "muc_membersonly"
        } else {
            "muc_open"
        },
        if c.moderated {
            "muc_moderated"
        } else {
            "muc_unmoderated"
        },
        if c.whois_anyone {
            "muc_nonanonymous"
        } else {
            "muc_semianonymous"
        },
        if c.password.is_some() {
            "muc_passwordprotected"
        } else {
            "muc_unsecured"
        },
    ];
    for var in features {
        query.append_child(feature(var));
    }
    let mut form = Element::bare("x", ns::DATA_FORMS);
    set_attr(&mut form, "type", "result");
    for f in [
        field(
            "FORM_TYPE",
            "hidden",
            "http://jabber.org/protocol/muc#roominfo",
        ),
        field("muc#roominfo_description", "", &c.description),
        field("muc#roominfo_subject", "", room.subject().unwrap_or("")),
        field(
            "muc#roominfo_occupants",
            "",
            &room.occupant_count().to_string(),
        ),
    ] {
        form.append_child(f);
    }
    query.append_child(form);
    query
}
