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

use super::archive;
use super::{Module, Spec, Support};
use crate::error::{StanzaError, StanzaErrorCondition};
use crate::router::Outbound;
use crate::server::ServerState;
use crate::store::{ArchivedStanza, StoreError, Stores};
use crate::xml::{self, ns};
use room::{AdminChange, AdminList, Affiliation, Delivery, Room, RoomConfig, NS_MUC_ADMIN};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

/// Status codes (XEP-0045 §15.6).
pub mod status {
    pub const NON_ANONYMOUS: u16 = 100;
    pub const SELF: u16 = 110;
    pub const NEW_ROOM: u16 = 201;
    pub const BANNED: u16 = 301;
    pub const NICK_CHANGED: u16 = 303;
    pub const KICKED: u16 = 307;
    pub const MEMBERSHIP_LOST: u16 = 321;
}

pub const MODULE: Module = Module {
    name: "muc",
    // The features of the service itself are in its own disco#info (`service_info`).
    disco_features: &[],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::xep(
            45,
        "1.35.1",
        Support::Partial,
        "rooms on [muc] domain: creation, persistence, configuration, join/leave/nick change with status codes, groupchat fan-out with stanza-ids, subject, history (surviving restarts), private messages, kick/ban/voice/affiliation admin, destruction, mediated invitations, occupant limit, members-only, passwords, room archives (XEP-0313), registration and reserved nicks, iqs between occupants",
        ),
        Spec::xep(
            421,
            "1.0.1",
            Support::Complete,
            "every occupant presence and message from a room carries an occupant id, stable per user and room across restarts",
        ),
        Spec::xep(
            410,
            "1.1.0",
            Support::Complete,
            "the room answers a ping to one's own occupant JID (self-ping optimization)",
        ),
    ],
};

/// The rooms of the service.
pub struct Service {
    pub domain: String,
    rooms: Mutex<HashMap<BareJid, Arc<Mutex<Room>>>>,
    max_occupants: usize,
    /// Whether new rooms keep an archive unless their owner says otherwise (`[archive] default`).
    archiving: bool,
}

impl Service {
    pub fn new(domain: String, max_occupants: usize, archiving: bool) -> Service {
        Service {
            domain,
            rooms: Mutex::default(),
            max_occupants,
            archiving,
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

    /// Loads the persistent rooms (at startup). A room whose document cannot be read is skipped
    /// with an error in the log rather than keeping the server down.
    pub fn load(&self, stores: &Stores) -> Result<usize, StoreError> {
        let stored = stores.rooms.rooms()?;
        let mut rooms = self
            .rooms
            .lock()
            .map_err(|_| StoreError::Backend("room registry poisoned".into()))?;
        for (jid, doc) in stored {
            if jid.domain().as_str() != self.domain {
                tracing::warn!(room = %jid, service = %self.domain, "a stored room of another service domain ([muc] domain changed?) is not loaded");
                continue;
            }
            match serde_json::from_slice::<room::StoredRoom>(&doc) {
                Ok(stored) => {
                    // The archive's next key follows its last entry, and its newest messages
                    // with a body are the history again.
                    let newest = |limit: usize, keep: &mut dyn FnMut(&ArchivedStanza) -> bool| {
                        stores
                            .archive
                            .scan(&jid, None, 0, u64::MAX, true, limit, keep)
                            .unwrap_or_else(|err| {
                                tracing::error!(room = %jid, error = %err, "cannot read a room's archive; its history starts empty");
                                Vec::new()
                            })
                    };
                    let last = newest(1, &mut |_| true).first().map_or(0, |item| item.key);
                    let history = newest(stored.config.history_length, &mut |item| {
                        has_body(&item.stanza)
                    });
                    let mut room = Room::restore(jid.clone(), stored);
                    room.archive_last = last;
                    room.restore_history(&history);
                    rooms.insert(jid, Arc::new(Mutex::new(room)));
                }
                Err(err) => {
                    tracing::error!(room = %jid, error = %err, "cannot read a stored room; skipped")
                }
            }
        }
        Ok(rooms.len())
    }

    /// Makes a room's changed configuration, affiliations or subject durable: stored while the
    /// room is persistent, deleted from the store when it is not (any more).
    async fn persist(&self, state: &ServerState, jid: &BareJid) -> Result<(), StoreError> {
        let doc = {
            let Some(room) = self.room(jid) else {
                return Ok(());
            };
            let Ok(mut room) = room.lock() else {
                return Ok(());
            };
            if !room.changed || room.locked {
                return Ok(());
            }
            room.changed = false;
            room.config
                .persistent
                .then(|| serde_json::to_vec(&room.stored()))
                .transpose()
                .map_err(|e| StoreError::Backend(e.to_string()))?
        };
        match doc {
            Some(doc) => state.stores.rooms.put_room(jid, &doc)?,
            None => state.stores.rooms.delete_room(jid)?,
        }
        state.stores.flush().await
    }

    /// Removes a destroyed room, from memory and from the store, its archive with it.
    async fn remove(&self, state: &ServerState, jid: &BareJid) -> Result<(), StoreError> {
        if let Ok(mut rooms) = self.rooms.lock() {
            rooms.remove(jid);
        }
        state.stores.rooms.delete_room(jid)?;
        state.stores.archive.delete_archive(jid)?;
        state.stores.flush().await
    }

    /// Forgets a room that has no occupants left, unless it is persistent; a temporary room's
    /// archive goes with it.
    fn drop_if_empty(&self, stores: &Stores, jid: &BareJid) {
        let dropped = match self.rooms.lock() {
            Ok(mut rooms) => {
                let empty = rooms.get(jid).is_some_and(|room| {
                    room.lock()
                        .map(|r| r.is_empty() && (!r.config.persistent || r.locked))
                        .unwrap_or(false)
                });
                empty && rooms.remove(jid).is_some()
            }
            Err(_) => false,
        };
        if dropped {
            forget_archive(stores, jid);
        }
    }
}

/// Whether a serialized message has a body (what the discussion history keeps).
fn has_body(stanza: &[u8]) -> bool {
    stanza.windows(6).any(|w| w == b"<body>" || w == b"<body ")
}

/// Deletes the archive of a room that is gone (or of one left behind by a temporary room when
/// the server stopped, before a new room of that name starts).
fn forget_archive(stores: &Stores, jid: &BareJid) {
    if let Err(err) = stores.archive.delete_archive(jid) {
        tracing::error!(room = %jid, error = %err, "cannot delete a room's archive");
    }
}

/// A stanza from a local session (`from`, stamped) to the service or one of its rooms. True when
/// it was written to a room's archive: the sender's acknowledgement waits for it to be durable.
pub async fn receive(state: &ServerState, el: Element, from: &FullJid, to: &Jid) -> bool {
    if let Some(x) = invitation(&el, to) {
        if let Err(error) = invitations(state, x, from, to).await {
            if let Some(reply) = error.reply_to(&el) {
                deliver(
                    state,
                    vec![(from.clone(), Bytes::from(xml::serialize(&reply)))],
                )
                .await;
            }
        }
        return false;
    }
    let outcome = match el.name() {
        "presence" => presence(state, &el, from, to).map(Done::Deliver),
        "message" => message(state, &el, from, to),
        "iq" => iq(state, &el, from, to),
        _ => Ok(Done::Deliver(Vec::new())),
    };
    // What changed in a persistent room is on disk before anyone hears of it (the owner's result
    // included): a restart never forgets a change that was confirmed.
    let room_jid = to
        .node()
        .map(|node| BareJid::from_parts(Some(node), to.domain()));
    let archived = matches!(outcome, Ok(Done::Archived(_)));
    let stored = match (&outcome, &room_jid) {
        (Ok(Done::Changed(_)), Some(jid)) => state.muc.persist(state, jid).await,
        (Ok(Done::Destroyed(_)), Some(jid)) => state.muc.remove(state, jid).await,
        _ => Ok(()),
    };
    let outcome = stored
        .map_err(StanzaError::from)
        .and(outcome)
        .map(Done::deliveries);
    match outcome {
        Ok(deliveries) => {
            deliver(state, deliveries).await;
            archived
        }
        Err(error) => {
            if let Some(reply) = error.reply_to(&el) {
                deliver(
                    state,
                    vec![(from.clone(), Bytes::from(xml::serialize(&reply)))],
                )
                .await;
            }
            false
        }
    }
}

/// The `<x xmlns='…#user'/>` of an invitation or a declined one, sent to a room (§7.8.2).
fn invitation<'a>(el: &'a Element, to: &Jid) -> Option<&'a Element> {
    if el.name() != "message"
        || to.node().is_none()
        || to.resource().is_some()
        || matches!(el.attr("type"), Some("groupchat" | "error"))
    {
        return None;
    }
    el.get_child("x", NS_MUC_USER)
        .filter(|x| x.has_child("invite", NS_MUC_USER) || x.has_child("decline", NS_MUC_USER))
}

/// Sends a room's invitations (or declines) to the users they name, once what they changed in
/// the room (new members) is stored.
async fn invitations(
    state: &ServerState,
    x: &Element,
    from: &FullJid,
    to: &Jid,
) -> Result<(), StanzaError> {
    let node = to.node().ok_or(StanzaErrorCondition::BadRequest)?;
    let room_jid = BareJid::from_parts(Some(node), to.domain());
    let room = state.muc.room(&room_jid).ok_or_else(|| {
        StanzaError::with_text(StanzaErrorCondition::ItemNotFound, "no such room")
    })?;
    // Only local users can be reached (no federation yet): refused before anything changes.
    let remote = x
        .children()
        .filter(|c| c.is("invite", NS_MUC_USER) || c.is("decline", NS_MUC_USER))
        .filter_map(|c| c.attr("to").and_then(|j| crate::addr::parse_jid(j).ok()))
        .any(|j| j.domain().as_str() != state.domain);
    if remote {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::RemoteServerNotFound,
            "invitations reach local users only",
        ));
    }
    let messages = {
        let mut room = room
            .lock()
            .map_err(|_| StanzaErrorCondition::InternalServerError)?;
        if x.has_child("invite", NS_MUC_USER) {
            room.invite(from, x)?
        } else {
            room.decline(from, x)?
        }
    };
    state.muc.persist(state, &room_jid).await?;
    for (user, message) in messages {
        crate::router::deliver::service_message(state, message, &user).await?;
    }
    Ok(())
}

/// What handling a stanza did: the deliveries it causes, to make once the room's state is stored
/// (`Changed`) or the room removed (`Destroyed`); `Archived` when the stanza went into the room's
/// archive (durable with the sender's next acknowledgement).
enum Done {
    Deliver(Vec<Delivery>),
    Archived(Vec<Delivery>),
    Changed(Vec<Delivery>),
    Destroyed(Vec<Delivery>),
}

impl Done {
    fn deliveries(self) -> Vec<Delivery> {
        match self {
            Done::Deliver(out)
            | Done::Archived(out)
            | Done::Changed(out)
            | Done::Destroyed(out) => out,
        }
    }

    /// `Changed` when the room's stored state changed, else `Deliver`.
    fn after(room: &Room, deliveries: Vec<Delivery>) -> Done {
        if room.changed {
            Done::Changed(deliveries)
        } else {
            Done::Deliver(deliveries)
        }
    }
}

/// Hands each stanza to its session without waiting: a session whose queue is full takes it
/// beyond its capacity (in order), up to four queues' worth; one further behind is closed (see
/// `SessionHandle::push_beyond`). So a slow occupant never holds up the room, and never gets its
/// stanzas out of order.
async fn deliver(state: &ServerState, deliveries: Vec<Delivery>) {
    // Room for a whole page of archive results on top of the fan-out allowance: answering a
    // query must not look like falling behind.
    let extra = state
        .config
        .c2s
        .session_queue
        .saturating_mul(4)
        .saturating_add(archive::MAX_PAGE + 1);
    for (to, bytes) in deliveries {
        if let Some(session) = state.router.get(&to) {
            let _ = session.push_beyond(Outbound::Stanza(bytes), extra);
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
        service.drop_if_empty(&state.stores, &room_jid);
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
                    RoomConfig::new(service.max_occupants, service.archiving),
                )));
                rooms.insert(room_jid.clone(), room.clone());
                (room, true)
            }
        }
    };
    if created {
        forget_archive(&state.stores, &room_jid);
    }
    let joined = room
        .lock()
        .map_err(|_| StanzaErrorCondition::InternalServerError)?
        .join(from, &nick, el, created);
    match joined {
        Ok(out) => Ok(out),
        Err(error) => {
            service.drop_if_empty(&state.stores, &room_jid);
            Err(error)
        }
    }
}

fn message(
    state: &ServerState,
    el: &Element,
    from: &FullJid,
    to: &Jid,
) -> Result<Done, StanzaError> {
    if el.attr("type") == Some("error") {
        return Ok(Done::Deliver(Vec::new()));
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
    let deliveries = match (to.resource(), el.attr("type")) {
        (None, Some("groupchat")) => return groupchat(state, &mut room, from, el),
        (None, _) => Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "messages to a room are of type groupchat",
        )),
        (Some(_), Some("groupchat")) => Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "a private message is not of type groupchat",
        )),
        (Some(nick), _) => room.private(from, nick.as_str(), el),
    }?;
    Ok(Done::after(&room, deliveries))
}

/// A groupchat message: into the room's archive under the id its copies carry (when the room
/// keeps one and the message is worth keeping), into the history, then to everyone. Written to
/// the archive under the room's lock, so the archive's order is the order occupants saw.
fn groupchat(
    state: &ServerState,
    room: &mut Room,
    from: &FullJid,
    el: &Element,
) -> Result<Done, StanzaError> {
    let archived = (room.config.archiving && archive::worth_archiving(el))
        .then(|| (archive::next_key(room.archive_last), archive::new_nonce()));
    let id = archived.map(|(key, nonce)| archive::public_id(key, nonce));
    let posted = room.groupchat(from, el, id.as_deref())?;
    let mut at = chrono::Utc::now();
    if let Some((key, nonce)) = archived {
        let item = ArchivedStanza {
            key,
            nonce,
            with: from.to_bare().to_string(),
            stanza: posted.serialized.clone(),
        };
        state.stores.archive.append(&room.jid, &item)?;
        room.archive_last = key;
        // The history's stamp is the archive's, before and after a restart.
        at = chrono::DateTime::from_timestamp_micros(key as i64).unwrap_or(at);
    }
    if posted.has_body {
        room.remember(&posted.serialized, at);
    }
    Ok(match (room.changed, archived) {
        (true, _) => Done::Changed(posted.deliveries),
        (false, Some(_)) => Done::Archived(posted.deliveries),
        (false, None) => Done::Deliver(posted.deliveries),
    })
}

/// A XEP-0313 request to a room's archive: the search form, the metadata, or a query, whose
/// results go to the asker before the iq result. The room is locked only to check the asker's
/// rights, not while the archive is read.
fn archive_iq(
    state: &ServerState,
    el: &Element,
    payload: &Element,
    from: &FullJid,
    room_jid: &BareJid,
) -> Result<Done, StanzaError> {
    let asker = from.to_bare();
    let shows_real_jids = {
        let room = state
            .muc
            .room(room_jid)
            .ok_or(StanzaErrorCondition::ItemNotFound)?;
        let room = room
            .lock()
            .map_err(|_| StanzaErrorCondition::InternalServerError)?;
        if room.locked {
            return Err(StanzaErrorCondition::ItemNotFound.into());
        }
        if !room.config.archiving {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::FeatureNotImplemented,
                "this room keeps no archive",
            ));
        }
        room.may_read_archive(&asker)?;
        room.shows_real_jids_to(&asker)
    };
    let store = state.stores.archive.as_ref();
    let reply = |payload: Element| {
        (
            from.clone(),
            Bytes::from(xml::serialize(&super::result_for(el, Some(payload)))),
        )
    };
    let set = el.attr("type") == Some("set");
    match payload.name() {
        "metadata" if !set => Ok(Done::Deliver(vec![reply(archive::metadata(
            store, room_jid,
        )?)])),
        "query" if !set => Ok(Done::Deliver(vec![reply(archive::search_form())])),
        "query" => {
            let query = archive::Query::parse(store, room_jid, payload)?;
            let mut keep = archive_filter(room_jid, query.with.as_ref(), shows_real_jids)?;
            // A real JID (not an occupant's `room/nick`) is a conversation of the store's index.
            let sender = query
                .with
                .as_ref()
                .map(Jid::to_bare)
                .filter(|with| with != room_jid);
            let page = archive::run(store, room_jid, &query, sender.as_ref(), &mut keep)?;
            let mut out: Vec<Delivery> = Vec::with_capacity(page.items.len() + 1);
            let mut push = |item: &ArchivedStanza| {
                let stanza = if shows_real_jids {
                    with_real_jid(&item.stanza, &item.with)
                } else {
                    item.stanza.clone()
                };
                out.push((
                    from.clone(),
                    archive::result_message(
                        Some(room_jid),
                        from,
                        query.queryid.as_deref(),
                        item,
                        &stanza,
                    ),
                ));
            };
            if query.flip {
                page.items.iter().rev().for_each(&mut push);
            } else {
                page.items.iter().for_each(&mut push);
            }
            out.push(reply(archive::fin(&page)));
            Ok(Done::Deliver(out))
        }
        _ => Err(StanzaErrorCondition::BadRequest.into()),
    }
}

/// Which archived messages a room query's `with` selects (XEP-0313 §4.1.1): those of one
/// occupant JID (`room/nick`), or, for whoever may see real JIDs, of one user.
fn archive_filter(
    room_jid: &BareJid,
    with: Option<&Jid>,
    shows_real_jids: bool,
) -> Result<archive::Filter, StanzaError> {
    let Some(with) = with else {
        return Ok(Box::new(|_| true));
    };
    if with.to_bare() == *room_jid {
        let occupant = with.to_string();
        return Ok(Box::new(move |item| {
            std::str::from_utf8(&item.stanza)
                .ok()
                .and_then(|text| text.parse::<Element>().ok())
                .is_some_and(|message| message.attr("from") == Some(occupant.as_str()))
        }));
    }
    if !shows_real_jids {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::Forbidden,
            "occupants' real JIDs are not shown in this room: search by occupant JID",
        ));
    }
    let user = with.to_bare().to_string();
    Ok(Box::new(move |item| item.with == user))
}

/// An archived room message with the sender's real JID (XEP-0313 §6.1.2: for askers who may see
/// it), as `<x xmlns='…muc#user'><item jid=…/></x>` before the message's end.
fn with_real_jid(stanza: &[u8], jid: &str) -> Vec<u8> {
    let mut x = Vec::with_capacity(jid.len() + 80);
    x.extend_from_slice(b"<x xmlns='");
    x.extend_from_slice(NS_MUC_USER.as_bytes());
    x.extend_from_slice(b"'><item jid='");
    xml::escape_into(jid, true, &mut x);
    x.extend_from_slice(b"'/></x>");
    xml::with_last_child(stanza, "message", &x)
}

fn iq(state: &ServerState, el: &Element, from: &FullJid, to: &Jid) -> Result<Done, StanzaError> {
    let kind = el.attr("type").unwrap_or("");
    if kind == "result" || kind == "error" {
        // An answer to an iq the room passed to this occupant goes back to the asker.
        let answered = match (to.node(), to.resource()) {
            (Some(node), Some(_)) => state
                .muc
                .room(&BareJid::from_parts(Some(node), to.domain()))
                .and_then(|room| room.lock().ok().map(|mut r| r.iq_answer(from, el))),
            _ => None,
        };
        return Ok(Done::Deliver(answered.unwrap_or_default()));
    }
    let set = kind == "set";
    let payload = el
        .children()
        .next()
        .ok_or(StanzaErrorCondition::BadRequest)?;
    let reply = |result: Element| {
        (
            from.clone(),
            Bytes::from(xml::serialize(&super::result_for(el, Some(result)))),
        )
    };
    match (to.node(), to.resource()) {
        (None, _) => {
            let result = match payload.ns().as_str() {
                ns::DISCO_INFO if !set => service_info(),
                ns::DISCO_ITEMS if !set => service_items(state),
                _ => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
            };
            Ok(Done::Deliver(vec![reply(result)]))
        }
        (Some(node), None) if payload.ns() == archive::NS_MAM => {
            let room_jid = BareJid::from_parts(Some(node), to.domain());
            archive_iq(state, el, payload, from, &room_jid)
        }
        (Some(node), None) => {
            let room_jid = BareJid::from_parts(Some(node), to.domain());
            let room = state
                .muc
                .room(&room_jid)
                .ok_or(StanzaErrorCondition::ItemNotFound)?;
            let mut room = room
                .lock()
                .map_err(|_| StanzaErrorCondition::InternalServerError)?;
            let actor = from.to_bare();
            match payload.ns().as_str() {
                // §7.12: the asker's reserved nick, or an empty answer.
                ns::DISCO_INFO if !set && payload.attr("node") == Some("x-roomuser-item") => {
                    let answer = DiscoInfoResult {
                        node: Some("x-roomuser-item".into()),
                        identities: room
                            .reserved_nick(&actor)
                            .map(|nick| Identity {
                                category: "conference".into(),
                                type_: "text".into(),
                                lang: None,
                                name: Some(nick.into()),
                            })
                            .into_iter()
                            .collect(),
                        features: Default::default(),
                        extensions: Vec::new(),
                    };
                    Ok(Done::Deliver(vec![reply(answer.into())]))
                }
                ns::DISCO_INFO if !set => Ok(Done::Deliver(vec![reply(room_info(&room))])),
                NS_REGISTER if !room.locked => {
                    let (answer, mut out) = registration(&mut room, &actor, set, payload)?;
                    out.push(reply(answer));
                    Ok(Done::after(&room, out))
                }
                ns::DISCO_ITEMS if !set => Ok(Done::Deliver(vec![reply(Element::bare(
                    "query",
                    ns::DISCO_ITEMS,
                ))])),
                NS_MUC_OWNER if set && payload.has_child("destroy", NS_MUC_OWNER) => {
                    let destroy = payload
                        .get_child("destroy", NS_MUC_OWNER)
                        .ok_or(StanzaErrorCondition::BadRequest)?;
                    let mut out = room.destroy(&actor, destroy)?;
                    out.push(reply(Element::bare("query", NS_MUC_OWNER)));
                    Ok(Done::Destroyed(out))
                }
                NS_MUC_OWNER => {
                    let result = owner(&mut room, from, set, payload)?;
                    Ok(Done::after(&room, vec![reply(result)]))
                }
                NS_MUC_ADMIN if set => {
                    // Each item is checked and applied in turn; the first refusal stops the rest
                    // and answers the request. What the items before it changed stands: it is
                    // stored and announced like any change, so the room stays as everyone saw it.
                    let mut out = Vec::new();
                    let mut answer = reply(Element::bare("query", NS_MUC_ADMIN));
                    for change in admin_changes(payload)? {
                        match room.admin_set(&actor, &change) {
                            Ok(deliveries) => out.extend(deliveries),
                            Err(error) => {
                                if let Some(refusal) = error.reply_to(el) {
                                    answer = (from.clone(), Bytes::from(xml::serialize(&refusal)));
                                }
                                break;
                            }
                        }
                    }
                    out.push(answer);
                    Ok(Done::after(&room, out))
                }
                NS_MUC_ADMIN => {
                    let mut query = Element::bare("query", NS_MUC_ADMIN);
                    for item in room.admin_list(&actor, &admin_list(payload)?)? {
                        query.append_child(item);
                    }
                    Ok(Done::Deliver(vec![reply(query)]))
                }
                _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
            }
        }
        (Some(node), Some(nick)) => {
            let room_jid = BareJid::from_parts(Some(node), to.domain());
            let room = state.muc.room(&room_jid);
            let mut room = match &room {
                Some(room) => room
                    .lock()
                    .map_err(|_| StanzaErrorCondition::InternalServerError)?,
                None if payload.is("ping", ns::PING) => return Err(not_in_room()),
                None => return Err(StanzaErrorCondition::ItemNotFound.into()),
            };
            let own = room.nick_of(from).map(String::from);
            // XEP-0410: a client pings its own occupant JID to learn whether it is still in the
            // room; the room answers for it.
            if payload.is("ping", ns::PING) {
                match own {
                    Some(own) if own == nick.as_str() => {
                        return Ok(Done::Deliver(vec![(
                            from.clone(),
                            Bytes::from(xml::serialize(&super::result_for(el, None))),
                        )]))
                    }
                    None => return Err(not_in_room()),
                    Some(_) => {}
                }
            }
            // A vCard request is answered with the occupant's stored vCard (clients show
            // occupants' avatars this way); any other iq goes to the occupant.
            if payload.is("vCard", ns::VCARD) && !set {
                room.must_be_occupant(from)?;
                let user = room
                    .occupant_user(nick.as_str())
                    .ok_or(StanzaErrorCondition::ItemNotFound)?;
                let vcard = super::vcard::stored(state, user)?
                    .unwrap_or_else(|| Element::bare("vCard", ns::VCARD));
                return Ok(Done::Deliver(vec![reply(vcard)]));
            }
            Ok(Done::Deliver(room.iq_to_occupant(
                from,
                nick.as_str(),
                el,
            )?))
        }
    }
}

fn not_in_room() -> StanzaError {
    StanzaError::with_text(
        StanzaErrorCondition::NotAcceptable,
        "you are not in this room",
    )
}

/// The items of a muc#admin set: a role by nick or an affiliation by JID, with a reason.
fn admin_changes(query: &Element) -> Result<Vec<AdminChange>, StanzaError> {
    let bad = |why: &str| StanzaError::with_text(StanzaErrorCondition::BadRequest, why.to_string());
    let items: Vec<&Element> = query
        .children()
        .filter(|c| c.is("item", NS_MUC_ADMIN))
        .collect();
    if items.is_empty() {
        return Err(bad("a muc#admin request has items"));
    }
    items
        .into_iter()
        .map(|item| {
            let reason = item.get_child("reason", NS_MUC_ADMIN).map(|r| r.text());
            match (item.attr("role"), item.attr("affiliation")) {
                (Some(role), None) => Ok(AdminChange::Role {
                    nick: item
                        .attr("nick")
                        .ok_or_else(|| bad("a role is changed by nick"))?
                        .to_string(),
                    role: room::Role::parse(role).ok_or_else(|| bad("unknown role"))?,
                    reason,
                }),
                (None, Some(affiliation)) => Ok(AdminChange::Affiliation {
                    user: crate::addr::jid_attr(item, "jid")?.to_bare(),
                    affiliation: Affiliation::parse(affiliation)
                        .ok_or_else(|| bad("unknown affiliation"))?,
                    nick: item.attr("nick").map(nick).transpose()?,
                    reason,
                }),
                _ => Err(bad("an item changes either a role or an affiliation")),
            }
        })
        .collect()
}

/// A nick as a resourcepart (normalized), or `<jid-malformed/>`.
fn nick(text: &str) -> Result<String, StanzaError> {
    jid::ResourcePart::new(text.trim())
        .map(|nick| nick.to_string())
        .map_err(|_| {
            StanzaError::with_text(
                StanzaErrorCondition::JidMalformed,
                format!("not a valid nick: {text}"),
            )
        })
}

const NS_REGISTER: &str = "jabber:iq:register";
const MUC_REGISTER: &str = "http://jabber.org/protocol/muc#register";

/// Registration with a room (§7.10, XEP-0077): `get` answers with the reserved nick
/// (`<registered/>`) or the form to ask for one; `set` submits the form (`muc#register_roomnick`)
/// or `<remove/>`s the registration.
fn registration(
    room: &mut Room,
    user: &BareJid,
    set: bool,
    query: &Element,
) -> Result<(Element, Vec<Delivery>), StanzaError> {
    let mut answer = Element::bare("query", NS_REGISTER);
    if !set {
        room.may_register(user)?;
        match room.reserved_nick(user) {
            Some(reserved) => {
                answer.append_child(Element::bare("registered", NS_REGISTER));
                let mut username = Element::bare("username", NS_REGISTER);
                username.append_text(reserved.to_string());
                answer.append_child(username);
            }
            None => {
                let mut roomnick = Field::new("muc#register_roomnick", FieldType::TextSingle);
                roomnick.label = Some("Nick in this room".into());
                roomnick.required = true;
                let form = DataForm::new(DataFormType::Form, MUC_REGISTER, vec![roomnick]);
                answer.append_child(form.into());
            }
        }
        return Ok((answer, Vec::new()));
    }
    if query.has_child("remove", NS_REGISTER) {
        return Ok((Element::bare("query", NS_REGISTER), room.unregister(user)?));
    }
    let bad = |why: &str| StanzaError::with_text(StanzaErrorCondition::BadRequest, why.to_string());
    let form = query
        .get_child("x", ns::DATA_FORMS)
        .and_then(|x| DataForm::try_from(x.clone()).ok())
        .filter(|form| form.type_ == DataFormType::Submit)
        .ok_or_else(|| bad("registration takes a submitted muc#register form"))?;
    if form.form_type().is_some_and(|t| t != MUC_REGISTER) {
        return Err(bad("the form's FORM_TYPE is not muc#register"));
    }
    let wanted = form
        .fields
        .iter()
        .find(|f| f.var.as_deref() == Some("muc#register_roomnick"))
        .and_then(|f| f.values.first())
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| bad("muc#register_roomnick is required"))?;
    let out = room.register(user, &nick(wanted)?)?;
    Ok((Element::bare("query", NS_REGISTER), out))
}

/// The list a muc#admin get asks for: `<item affiliation='…'/>` or `<item role='…'/>`.
fn admin_list(query: &Element) -> Result<AdminList, StanzaError> {
    let bad = || {
        StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "ask for one affiliation or role",
        )
    };
    let item = query.get_child("item", NS_MUC_ADMIN).ok_or_else(bad)?;
    match (item.attr("affiliation"), item.attr("role")) {
        (Some(affiliation), None) => Ok(AdminList::Affiliation(
            Affiliation::parse(affiliation).ok_or_else(bad)?,
        )),
        (None, Some(role)) => match room::Role::parse(role) {
            Some(Some(role)) => Ok(AdminList::Role(role)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// The owner's configuration requests (§10): the form, and its submission (an empty submission
/// accepts the defaults: an instant room). Either unlocks a new room.
fn owner(
    room: &mut Room,
    from: &FullJid,
    set: bool,
    payload: &Element,
) -> Result<Element, StanzaError> {
    if room.affiliation(&from.to_bare()) != Affiliation::Owner {
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
    if room.locked {
        room.locked = false;
        room.changed = true;
    }
    Ok(query)
}

/// The longest discussion history a room keeps in memory.
const MAX_HISTORY: usize = 200;

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
            Field::text_single(
                "muc#roomconfig_historylength",
                &c.history_length.to_string(),
            ),
            boolean("muc#roomconfig_allowinvites", c.allow_member_invites),
            boolean("muc#roomconfig_enablearchiving", c.archiving),
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
            "muc#roomconfig_allowinvites" => config.allow_member_invites = boolean()?,
            "muc#roomconfig_enablearchiving" => config.archiving = boolean()?,
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
            "muc#roomconfig_historylength" => {
                config.history_length = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_HISTORY)
                    .ok_or_else(|| refuse(&format!("takes a number up to {MAX_HISTORY}")))?;
            }
            _ => return Err(refuse("is not a configuration field")),
        }
    }
    config.password = (protect && !secret.is_empty()).then_some(secret);
    room.config = config;
    room.changed = true;
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
    let mut features = vec![
        NS_MUC,
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        "http://jabber.org/protocol/muc#stable_id",
        "http://jabber.org/protocol/muc#self-ping-optimization",
        room::NS_OCCUPANT_ID,
        NS_REGISTER,
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
    if c.archiving {
        features.extend([archive::NS_MAM, archive::NS_MAM_EXTENDED]);
    }
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
