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
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity, Item};

use super::{Module, Spec, Support};
use crate::error::{StanzaError, StanzaErrorCondition};
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
    let mut query = Element::bare("query", NS_MUC_OWNER);
    if !set {
        query.append_child(config_form(room).into());
        return Ok(query);
    }
    let form = payload
        .get_child("x", ns::DATA_FORMS)
        .ok_or(StanzaErrorCondition::BadRequest)?;
    let form: DataForm = super::parse(form)?;
    match form.type_ {
        DataFormType::Submit => apply_config(room, &form)?,
        DataFormType::Cancel => {}
        _ => {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "a configuration form is submitted or cancelled",
            ))
        }
    }
    room.locked = false;
    Ok(query)
}

const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

fn boolean(var: &str, on: bool) -> Field {
    Field::new(var, FieldType::Boolean).with_value(if on { "1" } else { "0" })
}

/// The muc#roomconfig form with the room's current values.
fn config_form(room: &Room) -> DataForm {
    let c = &room.config;
    let whois = if c.whois_anyone {
        "anyone"
    } else {
        "moderators"
    };
    DataForm::new(
        DataFormType::Form,
        ROOMCONFIG,
        vec![
            Field::text_single("muc#roomconfig_roomname", &c.name),
            Field::text_single("muc#roomconfig_roomdesc", &c.description),
            boolean("muc#roomconfig_persistentroom", c.persistent),
            boolean("muc#roomconfig_publicroom", c.public),
            boolean("muc#roomconfig_membersonly", c.members_only),
            boolean("muc#roomconfig_moderatedroom", c.moderated),
            boolean("muc#roomconfig_changesubject", c.change_subject),
            Field::new("muc#roomconfig_whois", FieldType::ListSingle).with_value(whois),
            boolean("muc#roomconfig_passwordprotectedroom", c.password.is_some()),
            Field::new("muc#roomconfig_roomsecret", FieldType::TextPrivate)
                .with_value(c.password.as_deref().unwrap_or("")),
            Field::text_single("muc#roomconfig_maxusers", &c.max_occupants.to_string()),
        ],
    )
}

/// Applies a submitted muc#roomconfig form; a bad value refuses the whole form (§10.2).
fn apply_config(room: &mut Room, form: &DataForm) -> Result<(), StanzaError> {
    let mut config = room.config.clone();
    let mut protect = config.password.is_some();
    let mut secret = config.password.clone().unwrap_or_default();
    for field in &form.fields {
        let var = field.var.as_deref().unwrap_or("");
        let value = field.values.first().cloned().unwrap_or_default();
        let refuse = |why: &str| {
            StanzaError::with_text(StanzaErrorCondition::NotAcceptable, format!("{var} {why}"))
        };
        let boolean = || match value.as_str() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(refuse("takes a boolean")),
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
                    _ => return Err(refuse("is anyone or moderators")),
                }
            }
            "muc#roomconfig_maxusers" => {
                config.max_occupants = value.parse().map_err(|_| refuse("takes a number"))?;
            }
            _ => return Err(refuse("is not a configuration field")),
        }
    }
    config.password = (protect && !secret.is_empty()).then_some(secret);
    room.config = config;
    Ok(())
}

fn info(name: &str, features: &[&str], extensions: Vec<DataForm>) -> Element {
    DiscoInfoResult {
        node: None,
        identities: vec![Identity::new("conference", "text", "en", name)],
        features: features.iter().map(|f| f.to_string()).collect(),
        extensions,
    }
    .into()
}

fn service_info() -> Element {
    info(
        "Chatrooms",
        &[ns::DISCO_INFO, ns::DISCO_ITEMS, NS_MUC],
        Vec::new(),
    )
}

fn service_items(state: &ServerState) -> Element {
    let items = state
        .muc
        .listed()
        .into_iter()
        .map(|(jid, name)| Item {
            jid: jid.into(),
            node: None,
            name: (!name.is_empty()).then_some(name),
        })
        .collect();
    DiscoItemsResult {
        node: None,
        items,
        rsm: None,
    }
    .into()
}

/// A room's disco#info: what it is configured to be (§6.4), with the muc#roominfo form.
fn room_info(room: &Room) -> Element {
    let c = &room.config;
    let name = if c.name.is_empty() {
        room.jid.node().map(|n| n.to_string()).unwrap_or_default()
    } else {
        c.name.clone()
    };
    let pick = |on: bool, yes: &'static str, no: &'static str| if on { yes } else { no };
    let features = [
        NS_MUC,
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        "http://jabber.org/protocol/muc#stable_id",
        pick(c.persistent, "muc_persistent", "muc_temporary"),
        pick(c.public, "muc_public", "muc_hidden"),
        pick(c.members_only, "muc_membersonly", "muc_open"),
        pick(c.moderated, "muc_moderated", "muc_unmoderated"),
        pick(c.whois_anyone, "muc_nonanonymous", "muc_semianonymous"),
        pick(
            c.password.is_some(),
            "muc_passwordprotected",
            "muc_unsecured",
        ),
    ];
    let form = DataForm::new(
        DataFormType::Result_,
        ROOMINFO,
        vec![
            Field::text_single("muc#roominfo_description", &c.description),
            Field::text_single("muc#roominfo_subject", room.subject().unwrap_or("")),
            Field::text_single("muc#roominfo_occupants", &room.occupant_count().to_string()),
        ],
    );
    info(&name, &features, vec![form])
}
