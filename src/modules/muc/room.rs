//! One room's state (configuration, affiliations, occupants, subject) and what each stanza does to
//! it. No I/O here: every operation returns the stanzas to deliver, and the service sends them.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use jid::{BareJid, FullJid};
use minidom::Element;

use super::{NS_MUC_USER, STATUS_NEW_ROOM, STATUS_NON_ANONYMOUS, STATUS_SELF};
use crate::error::{remove_attr, set_attr, StanzaError, StanzaErrorCondition};
use crate::xml::{self, ns};

/// A user's standing in a room, kept across visits (XEP-0045 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }
}

/// An occupant's part in the current visit (XEP-0045 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
}

/// What an owner configures (the muc#roomconfig form, XEP-0045 §10.2).
#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    pub password: Option<String>,
    /// Real JIDs visible to every occupant (non-anonymous) rather than to moderators only.
    pub whois_anyone: bool,
    /// Participants may change the subject (moderators always may).
    pub change_subject: bool,
    /// The group size limit.
    pub max_occupants: usize,
}

impl RoomConfig {
    pub fn new(max_occupants: usize) -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            whois_anyone: true,
            change_subject: false,
            max_occupants,
        }
    }
}

/// Someone in the room under a nick: one user, with one or more of their sessions.
struct Occupant {
    user: BareJid,
    sessions: Vec<FullJid>,
    role: Role,
    /// The occupant's last presence (its children, for others who join later).
    presence: Element,
}

/// A stanza for one session.
pub type Delivery = (FullJid, Bytes);

pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    /// A new room stays locked until its owner accepts or submits a configuration (§10.1).
    pub locked: bool,
    /// The subject and the occupant JID (room/nick) that set it.
    subject: Option<(String, String)>,
    affiliations: HashMap<BareJid, Affiliation>,
    occupants: BTreeMap<String, Occupant>,
    /// Which nick each joined session uses.
    nicks: HashMap<FullJid, String>,
}

/// What a presence to `room/nick` did.
pub enum Joined {
    /// Entered the room (or a second session of the same occupant joined).
    Entered(Vec<Delivery>),
    /// A presence update from an occupant.
    Updated(Vec<Delivery>),
}

impl Room {
    /// A new room, created and owned by `owner`, locked until configured.
    pub fn create(jid: BareJid, owner: BareJid, config: RoomConfig) -> Room {
        let mut affiliations = HashMap::new();
        affiliations.insert(owner, Affiliation::Owner);
        Room {
            jid,
            config,
            locked: true,
            subject: None,
            affiliations,
            occupants: BTreeMap::new(),
            nicks: HashMap::new(),
        }
    }

    pub fn affiliation(&self, user: &BareJid) -> Affiliation {
        self.affiliations
            .get(user)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    pub fn subject(&self) -> Option<&str> {
        self.subject.as_ref().map(|(text, _)| text.as_str())
    }

    /// The nick a session is in the room under.
    pub fn nick_of(&self, session: &FullJid) -> Option<&str> {
        self.nicks.get(session).map(String::as_str)
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    /// Available presence from `session` to `room/nick`: enter, or update the occupant's presence.
    /// `created`: the room was created by this presence (status 201).
    pub fn join(
        &mut self,
        session: &FullJid,
        nick: &str,
        presence: &Element,
        created: bool,
    ) -> Result<Joined, StanzaError> {
        let user = session.to_bare();
        let mut shown = presence.clone();
        // What others see: the client's show/status/caps, not its MUC join request.
        xml::retain_children(&mut shown, |c| {
            !c.is("x", super::NS_MUC) && !c.is("x", NS_MUC_USER)
        });
        if let Some(current) = self.nicks.get(session) {
            if current != nick {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::NotAcceptable,
                    "nick changes are not supported yet",
                ));
            }
            let occupant = self
                .occupants
                .get_mut(nick)
                .ok_or(StanzaErrorCondition::InternalServerError)?;
            occupant.presence = shown;
            return Ok(Joined::Updated(self.broadcast_presence(nick, None)));
        }
        let affiliation = self.affiliation(&user);
        if self.locked && affiliation != Affiliation::Owner {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ItemNotFound,
                "the room is not configured yet",
            ));
        }
        if affiliation == Affiliation::Outcast {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "you are banned from this room",
            ));
        }
        if self.config.members_only && affiliation < Affiliation::Member {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::RegistrationRequired,
                "this room is for members only",
            ));
        }
        if let Some(password) = &self.config.password {
            let given = presence
                .get_child("x", super::NS_MUC)
                .and_then(|x| x.get_child("password", super::NS_MUC))
                .map(|p| p.text());
            if given.as_deref() != Some(password.as_str()) && affiliation < Affiliation::Admin {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::NotAuthorized,
                    "a password is required to enter this room",
                ));
            }
        }
        if let Some(taken) = self.occupants.get(nick) {
            if taken.user != user {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::Conflict,
                    "that nick is in use in this room",
                ));
            }
        } else if self.occupants.len() >= self.config.max_occupants
            && affiliation < Affiliation::Admin
        {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ServiceUnavailable,
                "the room is full",
            ));
        }
        let mut out = Vec::new();
        // The others' presence first (§7.2.3), to the entering session only.
        for (other, occupant) in &self.occupants {
            if other == nick {
                continue;
            }
            let item = self.presence_of(other, occupant, &[]);
            out.push((session.clone(), addressed(&item, session)));
        }
        let second_session = self.occupants.contains_key(nick);
        match self.occupants.get_mut(nick) {
            Some(occupant) => {
                occupant.sessions.push(session.clone());
                occupant.presence = shown;
            }
            None => {
                let role = if affiliation >= Affiliation::Admin {
                    Role::Moderator
                } else if self.config.moderated && affiliation < Affiliation::Member {
                    Role::Visitor
                } else {
                    Role::Participant
                };
                self.occupants.insert(
                    nick.to_string(),
                    Occupant {
                        user,
                        sessions: vec![session.clone()],
                        role,
                        presence: shown,
                    },
                );
            }
        }
        self.nicks.insert(session.clone(), nick.to_string());
        let mut codes = vec![STATUS_SELF];
        if self.config.whois_anyone {
            codes.push(STATUS_NON_ANONYMOUS);
        }
        if created {
            codes.push(STATUS_NEW_ROOM);
        }
        if second_session {
            // The others already see this occupant; only the new session needs its self-presence.
            if let Some(occupant) = self.occupants.get(nick) {
                let own = self.presence_of(nick, occupant, &codes);
                out.push((session.clone(), addressed(&own, session)));
            }
        } else {
            out.extend(self.broadcast_presence(nick, Some((session, &codes))));
        }
        // Then the subject, always, empty if none (§7.2.15).
        out.push((session.clone(), addressed(&self.subject_message(), session)));
        Ok(Joined::Entered(out))
    }

    /// Unavailable presence from `session`: it leaves; the occupant leaves with its last session.
    pub fn leave(&mut self, session: &FullJid, presence: &Element) -> Vec<Delivery> {
        let Some(nick) = self.nicks.remove(session) else {
            return Vec::new();
        };
        let Some(occupant) = self.occupants.get_mut(&nick) else {
            return Vec::new();
        };
        occupant.sessions.retain(|s| s != session);
        let last = occupant.sessions.is_empty();
        let user = occupant.user.clone();
        let affiliation = self.affiliation(&user);
        let mut gone = Element::bare("presence", ns::CLIENT);
        set_attr(&mut gone, "type", "unavailable");
        if let Some(status) = presence.get_child("status", ns::CLIENT) {
            gone.append_child(status.clone());
        }
        let real = self.config.whois_anyone.then_some(session);
        let mut own = gone.clone();
        set_attr(&mut own, "from", &self.occupant_jid(&nick));
        own.append_child(item_element(affiliation, None, real, &[STATUS_SELF]));
        let mut out = vec![(session.clone(), addressed(&own, session))];
        if !last {
            return out;
        }
        self.occupants.remove(&nick);
        set_attr(&mut gone, "from", &self.occupant_jid(&nick));
        gone.append_child(item_element(affiliation, None, real, &[]));
        for other in self.occupants.values() {
            for to in &other.sessions {
                out.push((to.clone(), addressed(&gone, to)));
            }
        }
        out
    }

    /// A groupchat message from `session`: to every occupant, the sender included, with the room's
    /// stanza-id. Serialized once; each copy differs only in its `to`.
    pub fn groupchat(
        &mut self,
        session: &FullJid,
        message: &Element,
    ) -> Result<Vec<Delivery>, StanzaError> {
        let nick = self.nicks.get(session).cloned().ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "only occupants may send messages to the room",
            )
        })?;
        let role = self.occupants.get(&nick).map(|o| o.role);
        if role == Some(Role::Visitor) {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "visitors may not speak in this moderated room",
            ));
        }
        let mut out = message.clone();
        // Addressed per recipient by `with_to`.
        remove_attr(&mut out, "to");
        set_attr(&mut out, "from", &self.occupant_jid(&nick));
        crate::modules::stanza_id::stamp(&mut out, &self.jid);
        let subject = message.get_child("subject", ns::CLIENT);
        if let (Some(subject), None) = (subject, message.get_child("body", ns::CLIENT)) {
            if role != Some(Role::Moderator) && !self.config.change_subject {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::Forbidden,
                    "only moderators may change the subject",
                ));
            }
            self.subject = Some((subject.text(), self.occupant_jid(&nick)));
        }
        let serialized = xml::serialize(&out);
        let mut deliveries = Vec::new();
        for occupant in self.occupants.values() {
            for to in &occupant.sessions {
                deliveries.push((to.clone(), with_to(&serialized, "message", to)));
            }
        }
        Ok(deliveries)
    }

    /// A private message from `session` to the occupant `nick` (§7.5): to each of its sessions,
    /// from the sender's occupant JID.
    pub fn private(
        &self,
        session: &FullJid,
        nick: &str,
        message: &Element,
    ) -> Result<Vec<Delivery>, StanzaError> {
        let from = self.nicks.get(session).ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "only occupants may send private messages",
            )
        })?;
        let target = self
            .occupants
            .get(nick)
            .ok_or(StanzaErrorCondition::ItemNotFound)?;
        let mut out = message.clone();
        remove_attr(&mut out, "to");
        set_attr(&mut out, "from", &self.occupant_jid(from));
        if out.get_child("x", NS_MUC_USER).is_none() {
            out.append_child(Element::bare("x", NS_MUC_USER));
        }
        let serialized = xml::serialize(&out);
        Ok(target
            .sessions
            .iter()
            .map(|to| (to.clone(), with_to(&serialized, "message", to)))
            .collect())
    }

    /// The room's subject message, from whoever set it (or the room).
    fn subject_message(&self) -> Element {
        let mut message = Element::bare("message", ns::CLIENT);
        set_attr(&mut message, "type", "groupchat");
        let (text, from) = match &self.subject {
            Some((text, from)) => (text.clone(), from.clone()),
            None => (String::new(), self.jid.to_string()),
        };
        set_attr(&mut message, "from", &from);
        let mut subject = Element::bare("subject", ns::CLIENT);
        if !text.is_empty() {
            subject.append_text(text);
        }
        message.append_child(subject);
        message
    }

    /// An occupant's presence as others see it, with `codes` (for its own copy).
    fn presence_of(&self, nick: &str, occupant: &Occupant, codes: &[u16]) -> Element {
        let mut presence = occupant.presence.clone();
        set_attr(&mut presence, "from", &self.occupant_jid(nick));
        let real = if self.config.whois_anyone {
            occupant.sessions.first()
        } else {
            None
        };
        presence.append_child(item_element(
            self.affiliation(&occupant.user),
            Some(occupant.role),
            real,
            codes,
        ));
        presence
    }

    /// The occupant `nick`'s presence to everyone in the room; `own` gets its copy with its codes.
    fn broadcast_presence(&self, nick: &str, own: Option<(&FullJid, &[u16])>) -> Vec<Delivery> {
        let Some(occupant) = self.occupants.get(nick) else {
            return Vec::new();
        };
        let others = self.presence_of(nick, occupant, &[]);
        let mut out = Vec::new();
        for (other_nick, other) in &self.occupants {
            for to in &other.sessions {
                let is_own = own.is_some_and(|(session, _)| session == to);
                if other_nick == nick && !is_own {
                    // The occupant's other sessions hear of its update with the self code.
                    let mine = self.presence_of(nick, occupant, &[STATUS_SELF]);
                    out.push((to.clone(), addressed(&mine, to)));
                } else if !is_own {
                    out.push((to.clone(), addressed(&others, to)));
                }
            }
        }
        if let Some((session, codes)) = own {
            let mine = self.presence_of(nick, occupant, codes);
            out.push((session.clone(), addressed(&mine, session)));
        }
        out
    }
}

/// `<x xmlns='…#user'><item affiliation role [jid]/><status code/>…</x>`.
fn item_element(
    affiliation: Affiliation,
    role: Option<Role>,
    real: Option<&FullJid>,
    codes: &[u16],
) -> Element {
    let mut x = Element::bare("x", NS_MUC_USER);
    let mut item = Element::bare("item", NS_MUC_USER);
    set_attr(&mut item, "affiliation", affiliation.as_str());
    set_attr(&mut item, "role", role.map_or("none", Role::as_str));
    if let Some(real) = real {
        set_attr(&mut item, "jid", real.as_str());
    }
    x.append_child(item);
    for code in codes {
        let mut status = Element::bare("status", NS_MUC_USER);
        set_attr(&mut status, "code", &code.to_string());
        x.append_child(status);
    }
    x
}

/// A stanza addressed to one session, serialized.
fn addressed(el: &Element, to: &FullJid) -> Bytes {
    let mut el = el.clone();
    set_attr(&mut el, "to", to.as_str());
    Bytes::from(xml::serialize(&el))
}

/// A serialized stanza (without `to`) with `to` added to its start tag: one serialization shared by
/// every recipient of a fan-out.
fn with_to(serialized: &[u8], name: &str, to: &FullJid) -> Bytes {
    let head = name.len() + 1;
    let mut bytes = Vec::with_capacity(serialized.len() + to.as_str().len() + 8);
    bytes.extend_from_slice(&serialized[..head.min(serialized.len())]);
    bytes.extend_from_slice(b" to=\"");
    bytes.extend_from_slice(xml::escape(to.as_str()).as_bytes());
    bytes.push(b'"');
    bytes.extend_from_slice(&serialized[head.min(serialized.len())..]);
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_serialization_gets_each_recipients_address() {
        let mut message = Element::bare("message", ns::CLIENT);
        set_attr(&mut message, "type", "groupchat");
        let serialized = xml::serialize(&message);
        let to: FullJid = "a@b/c".parse().unwrap();
        let copy = with_to(&serialized, "message", &to);
        let parsed: Element = std::str::from_utf8(&copy).unwrap().parse().unwrap();
        assert_eq!(parsed.attr("to"), Some("a@b/c"));
        assert_eq!(parsed.attr("type"), Some("groupchat"));
    }
}
