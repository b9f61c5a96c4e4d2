//! One room's state (configuration, affiliations, occupants, subject) and what each stanza does to
//! it. No I/O here: every operation returns the stanzas to deliver, and the service sends them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use jid::{BareJid, FullJid};
use minidom::Element;
use serde::{Deserialize, Serialize};

use super::{status, NS_MUC_USER};
use crate::error::{remove_attr, set_attr, StanzaError, StanzaErrorCondition};
use crate::xml::{self, ns};

/// A user's standing in a room, kept across visits (XEP-0045 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

    pub fn parse(text: &str) -> Option<Affiliation> {
        Some(match text {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
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

    /// `none` is not a role an occupant has: it means "out of the room" (a kick).
    pub fn parse(text: &str) -> Option<Option<Role>> {
        Some(match text {
            "none" => None,
            "visitor" => Some(Role::Visitor),
            "participant" => Some(Role::Participant),
            "moderator" => Some(Role::Moderator),
            _ => return None,
        })
    }

    /// The role an affiliation brings on entering (§5.1.2).
    fn entering(affiliation: Affiliation, moderated: bool) -> Role {
        if affiliation >= Affiliation::Admin {
            Role::Moderator
        } else if moderated && affiliation < Affiliation::Member {
            Role::Visitor
        } else {
            Role::Participant
        }
    }
}

/// What an owner configures (the muc#roomconfig form, XEP-0045 §10.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Members may invite others into a members-only room (admins and owners always may).
    #[serde(default)]
    pub allow_member_invites: bool,
    /// How many recent messages newcomers get as discussion history (§7.2.14).
    #[serde(default = "default_history_length")]
    pub history_length: usize,
    /// Messages are kept in the room's archive (XEP-0313), for members to catch up.
    #[serde(default = "default_archiving")]
    pub archiving: bool,
}

fn default_archiving() -> bool {
    true
}

fn default_history_length() -> usize {
    20
}

/// What a persistent room keeps across restarts (stored as JSON by the service).
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredRoom {
    pub config: RoomConfig,
    pub affiliations: Vec<(String, Affiliation)>,
    /// The subject and the occupant JID that set it.
    pub subject: Option<(String, String)>,
    /// What occupant ids (XEP-0421) are derived with, so that they stay the same across restarts.
    #[serde(default)]
    pub occupant_id_salt: Option<String>,
    /// Reserved nicks (§7.10, §9.3): user, nick.
    #[serde(default)]
    pub reserved_nicks: Vec<(String, String)>,
}

impl RoomConfig {
    pub fn new(max_occupants: usize, archiving: bool) -> Self {
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
            history_length: default_history_length(),
            allow_member_invites: false,
            archiving,
        }
    }
}

/// Someone in the room under a nick: one user, with one or more of their sessions.
struct Occupant {
    user: BareJid,
    sessions: Vec<FullJid>,
    role: Role,
    /// The occupant's last presence (its children, for others who join later), without `to`.
    presence: Element,
    /// Its XEP-0421 `<occupant-id/>`, derived once on entering.
    id: Element,
}

/// A stanza for one session.
pub type Delivery = (FullJid, Bytes);

/// A groupchat message the room accepted.
pub struct Posted {
    /// A copy for every occupant's every session.
    pub deliveries: Vec<Delivery>,
    /// The message as the room sent it, without `to`, serialized: for the archive and, when it
    /// has a body, the history (`Room::remember`).
    pub serialized: Vec<u8>,
    pub has_body: bool,
}

pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    /// A new room stays locked until its owner accepts or submits a configuration (§10.1).
    pub locked: bool,
    /// The subject and the occupant JID (room/nick) that set it.
    subject: Option<(String, String)>,
    affiliations: HashMap<BareJid, Affiliation>,
    /// Nicks reserved for affiliated users (registration, or a nick given with the affiliation):
    /// nobody else may enter under them.
    reserved: HashMap<BareJid, String>,
    occupants: BTreeMap<String, Occupant>,
    /// Which nick each joined session uses.
    nicks: HashMap<FullJid, String>,
    /// The configuration, affiliations or subject changed since the room was last stored.
    pub changed: bool,
    /// Recent messages for the discussion history, oldest first, serialized with their delay
    /// stamp and without `to`.
    history: VecDeque<Past>,
    /// Random, per room: occupant ids (XEP-0421) are a hash of it and the user's bare JID, stable
    /// for one user and not guessable for another.
    occupant_id_salt: String,
    /// The key of the newest stanza in the room's archive (0 when empty): the next one's is after.
    pub archive_last: u64,
    /// Iqs passed from one occupant to another, awaiting the answer (newest last, bounded).
    pending_iqs: VecDeque<PendingIq>,
}

/// An iq the room passed to an occupant under an id of its own (`id`), so that the answer goes
/// back to the session that asked, under the id it used.
struct PendingIq {
    id: String,
    asker: FullJid,
    asker_id: String,
    target: FullJid,
}

/// How many passed iqs a room remembers; answers to older ones are dropped.
const MAX_PENDING_IQS: usize = 256;

pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";

fn new_salt() -> String {
    crate::modules::stanza_id::new_id()
}

/// A message in the discussion history.
struct Past {
    at: chrono::DateTime<chrono::Utc>,
    bytes: Bytes,
    /// Characters of the whole stanza (what `maxchars` counts).
    chars: usize,
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
            reserved: HashMap::new(),
            occupants: BTreeMap::new(),
            nicks: HashMap::new(),
            changed: true,
            history: VecDeque::new(),
            occupant_id_salt: new_salt(),
            archive_last: 0,
            pending_iqs: VecDeque::new(),
        }
    }

    /// A persistent room as it was stored: configured, empty.
    pub fn restore(jid: BareJid, stored: StoredRoom) -> Room {
        let affiliations = stored
            .affiliations
            .into_iter()
            .filter_map(|(user, affiliation)| Some((BareJid::new(&user).ok()?, affiliation)))
            .collect();
        let reserved = stored
            .reserved_nicks
            .into_iter()
            .filter_map(|(user, nick)| Some((BareJid::new(&user).ok()?, nick)))
            .collect();
        Room {
            jid,
            config: stored.config,
            locked: false,
            subject: stored.subject,
            affiliations,
            reserved,
            occupants: BTreeMap::new(),
            nicks: HashMap::new(),
            // A room stored before it had a salt gets one, stored with its next change.
            changed: stored.occupant_id_salt.is_none(),
            history: VecDeque::new(),
            occupant_id_salt: stored.occupant_id_salt.unwrap_or_else(new_salt),
            archive_last: 0,
            pending_iqs: VecDeque::new(),
        }
    }

    /// What a persistent room keeps.
    pub fn stored(&self) -> StoredRoom {
        let mut affiliations: Vec<(String, Affiliation)> = self
            .affiliations
            .iter()
            .map(|(user, affiliation)| (user.to_string(), *affiliation))
            .collect();
        affiliations.sort();
        let mut reserved_nicks: Vec<(String, String)> = self
            .reserved
            .iter()
            .map(|(user, nick)| (user.to_string(), nick.clone()))
            .collect();
        reserved_nicks.sort();
        StoredRoom {
            config: self.config.clone(),
            affiliations,
            subject: self.subject.clone(),
            occupant_id_salt: Some(self.occupant_id_salt.clone()),
            reserved_nicks,
        }
    }

    /// The real bare JID of the occupant `nick`.
    pub fn occupant_user(&self, nick: &str) -> Option<&BareJid> {
        self.occupants.get(nick).map(|o| &o.user)
    }

    /// `<not-acceptable/>` unless `session` is in the room (only occupants address occupants).
    pub fn must_be_occupant(&self, session: &FullJid) -> Result<&str, StanzaError> {
        self.nick_of(session).ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "only occupants may address occupants",
            )
        })
    }

    /// An iq request from the occupant `session` to the occupant `nick` (§7.5 for messages, the
    /// same for iqs): passed to one session of that occupant, from the asker's occupant JID, under
    /// an id of the room's, so the answer can find its way back (`iq_answer`).
    pub fn iq_to_occupant(
        &mut self,
        session: &FullJid,
        nick: &str,
        iq: &Element,
    ) -> Result<Vec<Delivery>, StanzaError> {
        let from = self.occupant_jid(self.must_be_occupant(session)?);
        let target = self
            .occupants
            .get(nick)
            .and_then(|o| o.sessions.last())
            .cloned()
            .ok_or(StanzaErrorCondition::ItemNotFound)?;
        let id = crate::modules::stanza_id::new_id();
        let mut out = iq.clone();
        remove_attr(&mut out, "to");
        set_attr(&mut out, "from", &from);
        set_attr(&mut out, "id", &id);
        xml::retain_children(&mut out, |c| !c.is("x", NS_MUC_USER));
        if self.pending_iqs.len() >= MAX_PENDING_IQS {
            self.pending_iqs.pop_front();
        }
        self.pending_iqs.push_back(PendingIq {
            id,
            asker: session.clone(),
            asker_id: iq.attr("id").unwrap_or("").to_string(),
            target: target.clone(),
        });
        Ok(vec![(target.clone(), addressed(&out, &target))])
    }

    /// An iq result or error from `session`: when it answers an iq the room passed to it, back to
    /// the asker under its own id, from the answering occupant's JID. Anything else is dropped.
    pub fn iq_answer(&mut self, session: &FullJid, iq: &Element) -> Vec<Delivery> {
        let id = iq.attr("id").unwrap_or("");
        let Some(at) = self
            .pending_iqs
            .iter()
            .position(|p| p.id == id && &p.target == session)
        else {
            return Vec::new();
        };
        let Some(pending) = self.pending_iqs.remove(at) else {
            return Vec::new();
        };
        let Some(nick) = self.nick_of(session) else {
            return Vec::new();
        };
        let mut out = iq.clone();
        remove_attr(&mut out, "to");
        set_attr(&mut out, "from", &self.occupant_jid(nick));
        set_attr(&mut out, "id", &pending.asker_id);
        vec![(pending.asker.clone(), addressed(&out, &pending.asker))]
    }

    /// The nick reserved for `user` (§7.12).
    pub fn reserved_nick(&self, user: &BareJid) -> Option<&str> {
        self.reserved.get(user).map(String::as_str)
    }

    /// `<conflict/>` when `nick` is reserved for someone other than `user`, or taken by another
    /// user's occupant.
    fn nick_free_for(&self, nick: &str, user: &BareJid) -> Result<(), StanzaError> {
        if self
            .reserved
            .iter()
            .any(|(owner, n)| n == nick && owner != user)
        {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Conflict,
                "that nick is reserved by another member of this room",
            ));
        }
        if self.occupants.get(nick).is_some_and(|o| &o.user != user) {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Conflict,
                "that nick is in use in this room",
            ));
        }
        Ok(())
    }

    /// Registration with the room (§7.10): an unaffiliated user becomes a member, and the nick is
    /// reserved for them. Refused to outcasts, and to non-members of a members-only room (only its
    /// admins add members). Occupants of `user` are re-announced with the new affiliation.
    pub fn register(&mut self, user: &BareJid, nick: &str) -> Result<Vec<Delivery>, StanzaError> {
        self.may_register(user)?;
        self.nick_free_for(nick, user)?;
        self.reserved.insert(user.clone(), nick.to_string());
        self.changed = true;
        if self.affiliation(user) != Affiliation::None {
            // Only the nick changed: roles stay as moderators left them.
            return Ok(Vec::new());
        }
        self.affiliations.insert(user.clone(), Affiliation::Member);
        Ok(self.affiliation_changed(user, None, None))
    }

    /// Cancels a registration (XEP-0077 `<remove/>`): the reserved nick goes, and membership with
    /// it (admins and owners keep their affiliation).
    pub fn unregister(&mut self, user: &BareJid) -> Result<Vec<Delivery>, StanzaError> {
        if self.reserved.remove(user).is_none() && self.affiliation(user) != Affiliation::Member {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ItemNotFound,
                "you are not registered with this room",
            ));
        }
        if self.affiliation(user) == Affiliation::Member {
            self.affiliations.remove(user);
        }
        self.changed = true;
        Ok(self.affiliation_changed(user, None, None))
    }

    /// Whether `user` may register with the room: `<forbidden/>` for outcasts, `<not-allowed/>`
    /// for non-members of a members-only room.
    pub fn may_register(&self, user: &BareJid) -> Result<(), StanzaError> {
        let affiliation = self.affiliation(user);
        not_banned(affiliation)?;
        // Membership gives voice: in a members-only or moderated room only admins grant it.
        if (self.config.members_only || self.config.moderated) && affiliation < Affiliation::Member
        {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::NotAllowed,
                "members of this room are added by its admins",
            ));
        }
        Ok(())
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
    ) -> Result<Vec<Delivery>, StanzaError> {
        let user = session.to_bare();
        let mut shown = presence.clone();
        // Addressed per recipient (`with_to`).
        remove_attr(&mut shown, "to");
        // What others see: the client's show/status/caps, not its MUC join request.
        xml::retain_children(&mut shown, |c| {
            !c.is("x", super::NS_MUC)
                && !c.is("x", NS_MUC_USER)
                && !c.is("occupant-id", NS_OCCUPANT_ID)
        });
        if let Some(current) = self.nicks.get(session) {
            if current != nick {
                let current = current.clone();
                return self.change_nick(session, &current, nick, shown);
            }
            let occupant = self
                .occupants
                .get_mut(nick)
                .ok_or(StanzaErrorCondition::InternalServerError)?;
            occupant.presence = shown;
            return Ok(self.broadcast_presence(nick, None));
        }
        let affiliation = self.affiliation(&user);
        if self.locked && affiliation != Affiliation::Owner {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ItemNotFound,
                "the room is not configured yet",
            ));
        }
        not_banned(affiliation)?;
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
        self.nick_free_for(nick, &user)?;
        if !self.occupants.contains_key(nick)
            && self.occupants.len() >= self.config.max_occupants
            && affiliation < Affiliation::Admin
        {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ServiceUnavailable,
                "the room is full",
            ));
        }
        let mut out = Vec::new();
        // The others' presence first (§7.2.3), to the entering session only; with real JIDs when
        // the room is non-anonymous or the newcomer enters as a moderator (§7.2.4).
        let entering_role = self
            .occupants
            .get(nick)
            .map(|o| o.role)
            .unwrap_or_else(|| Role::entering(affiliation, self.config.moderated));
        let reveal = self.config.whois_anyone || entering_role == Role::Moderator;
        for (other, occupant) in &self.occupants {
            if other == nick {
                continue;
            }
            let item = self.presence_of(other, occupant, &[], reveal);
            out.push((session.clone(), addressed(&item, session)));
        }
        let second_session = self.occupants.contains_key(nick);
        match self.occupants.get_mut(nick) {
            Some(occupant) => {
                occupant.sessions.push(session.clone());
                occupant.presence = shown;
            }
            None => {
                let role = Role::entering(affiliation, self.config.moderated);
                let id = self.occupant_id(&user);
                self.occupants.insert(
                    nick.to_string(),
                    Occupant {
                        user,
                        sessions: vec![session.clone()],
                        role,
                        presence: shown,
                        id,
                    },
                );
            }
        }
        self.nicks.insert(session.clone(), nick.to_string());
        let mut codes = vec![status::SELF];
        if self.config.whois_anyone {
            codes.push(status::NON_ANONYMOUS);
        }
        if created {
            codes.push(status::NEW_ROOM);
        }
        if second_session {
            // The others already see this occupant; only the new session needs its self-presence.
            if let Some(occupant) = self.occupants.get(nick) {
                let own = self.presence_of(nick, occupant, &codes, true);
                out.push((session.clone(), addressed(&own, session)));
            }
        } else {
            out.extend(self.broadcast_presence(nick, Some((session, &codes))));
        }
        // Then the discussion history the newcomer asked for (§7.2.14), then the subject, always,
        // empty if none (§7.2.15).
        let wanted = presence
            .get_child("x", super::NS_MUC)
            .and_then(|x| x.get_child("history", super::NS_MUC));
        for past in self.history_for(wanted) {
            out.push((session.clone(), with_to(past, "message", session)));
        }
        out.push((session.clone(), addressed(&self.subject_message(), session)));
        Ok(out)
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
        let (user, id) = (occupant.user.clone(), occupant.id.clone());
        let affiliation = self.affiliation(&user);
        let mut gone = Element::bare("presence", ns::CLIENT);
        set_attr(&mut gone, "type", "unavailable");
        if let Some(status) = presence.get_child("status", ns::CLIENT) {
            gone.append_child(status.clone());
        }
        gone.append_child(id);
        let mut own = gone.clone();
        set_attr(&mut own, "from", &self.occupant_jid(&nick));
        own.append_child(item_element(
            affiliation,
            None,
            Some(session),
            &[status::SELF],
        ));
        let mut out = vec![(session.clone(), addressed(&own, session))];
        if !last {
            return out;
        }
        self.occupants.remove(&nick);
        set_attr(&mut gone, "from", &self.occupant_jid(&nick));
        gone.append_child(item_element(affiliation, None, None, &[]));
        out.extend(self.to_everyone_revealing(&gone, Some(session)));
        out
    }

    /// A groupchat message from `session`: to every occupant, the sender included, with the room's
    /// stanza-id (`archive_id` when the message is archived under it, else a fresh one).
    /// Serialized once; each copy differs only in its `to`.
    pub fn groupchat(
        &mut self,
        session: &FullJid,
        message: &Element,
        archive_id: Option<&str>,
    ) -> Result<Posted, StanzaError> {
        let nick = self.nicks.get(session).cloned().ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "only occupants may send messages to the room",
            )
        })?;
        let (role, id) = self
            .occupants
            .get(&nick)
            .map(|o| (o.role, o.id.clone()))
            .ok_or(StanzaErrorCondition::InternalServerError)?;
        if role == Role::Visitor {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "visitors may not speak in this moderated room",
            ));
        }
        let mut out = message.clone();
        // Addressed per recipient by `with_to`.
        remove_attr(&mut out, "to");
        set_attr(&mut out, "from", &self.occupant_jid(&nick));
        // XEP-0421: ours replaces any the client put there; and only the room speaks about
        // occupants (a client's muc#user item could claim someone else's JID).
        xml::retain_children(&mut out, |c| {
            !c.is("occupant-id", NS_OCCUPANT_ID) && !c.is("x", NS_MUC_USER)
        });
        out.append_child(id);
        match archive_id {
            Some(archive_id) => {
                crate::modules::stanza_id::stamp_with(&mut out, &self.jid, archive_id)
            }
            None => {
                crate::modules::stanza_id::stamp(&mut out, &self.jid);
            }
        }
        let subject = message.get_child("subject", ns::CLIENT);
        if let (Some(subject), None) = (subject, message.get_child("body", ns::CLIENT)) {
            if role != Role::Moderator && !self.config.change_subject {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::Forbidden,
                    "only moderators may change the subject",
                ));
            }
            self.subject = Some((subject.text(), self.occupant_jid(&nick)));
            self.changed = true;
        }
        let serialized = xml::serialize(&out);
        Ok(Posted {
            deliveries: self.copies_to_everyone(&serialized, "message"),
            serialized,
            has_body: message.has_child("body", ns::CLIENT),
        })
    }

    /// Whether `user` may learn occupants' real JIDs: everyone in a non-anonymous room, else
    /// moderators (§5.2.1: admins and owners are moderators when they are in the room).
    pub fn shows_real_jids_to(&self, user: &BareJid) -> bool {
        self.config.whois_anyone
            || self.affiliation(user) >= Affiliation::Admin
            || self.role_of_user(user) == Some(Role::Moderator)
    }

    /// Whether `user` may read the room's archive: whoever may enter it (XEP-0313 §6.1.2), so not
    /// outcasts, only members in a members-only room; a password-protected room's archive is for
    /// its occupants and affiliated users (a query cannot carry the password).
    pub fn may_read_archive(&self, user: &BareJid) -> Result<(), StanzaError> {
        let affiliation = self.affiliation(user);
        let refuse = |text: &str| {
            Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                text,
            ))
        };
        not_banned(affiliation)?;
        if self.config.members_only && affiliation < Affiliation::Member {
            return refuse("this room's archive is for its members");
        }
        if self.config.password.is_some()
            && affiliation < Affiliation::Member
            && self.role_of_user(user).is_none()
        {
            return refuse("this room's archive is for its occupants");
        }
        Ok(())
    }

    /// Fills the discussion history of a room loaded at startup from its newest archived
    /// messages with a body (`newest`, newest first; archived as sent, like `Posted::serialized`).
    pub fn restore_history(&mut self, newest: &[crate::store::ArchivedStanza]) {
        for item in newest.iter().rev() {
            let at = chrono::DateTime::from_timestamp_micros(item.key as i64).unwrap_or_default();
            self.remember(&item.stanza, at);
        }
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
        // Only the room speaks about occupants (§17.3): no client-made id or muc#user item.
        xml::retain_children(&mut out, |c| {
            !c.is("occupant-id", NS_OCCUPANT_ID) && !c.is("x", NS_MUC_USER)
        });
        if let Some(sender) = self.occupants.get(from) {
            out.append_child(sender.id.clone());
        }
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

    /// Presence to a new nick from an occupant (§7.6): unavailable from the old nick with status 303
    /// and the new nick, then available from the new one. Every session of the occupant moves.
    fn change_nick(
        &mut self,
        session: &FullJid,
        old: &str,
        new: &str,
        shown: Element,
    ) -> Result<Vec<Delivery>, StanzaError> {
        if self.occupants.contains_key(new) {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Conflict,
                "that nick is in use in this room",
            ));
        }
        self.nick_free_for(new, &session.to_bare())?;
        let Some(mut occupant) = self.occupants.remove(old) else {
            return Err(StanzaErrorCondition::InternalServerError.into());
        };
        occupant.presence = shown;
        let affiliation = self.affiliation(&occupant.user);
        let real = occupant.sessions.first();
        let mut gone = Element::bare("presence", ns::CLIENT);
        set_attr(&mut gone, "type", "unavailable");
        set_attr(&mut gone, "from", &self.occupant_jid(old));
        gone.append_child(occupant.id.clone());
        let mut x = item_element(affiliation, Some(occupant.role), None, &[]);
        if let Some(item) = x.get_child_mut("item", NS_MUC_USER) {
            set_attr(item, "nick", new);
        }
        let mut out = Vec::new();
        let mut own = gone.clone();
        gone.append_child(with_codes(x.clone(), &[status::NICK_CHANGED]));
        own.append_child(with_codes(x, &[status::NICK_CHANGED, status::SELF]));
        out.extend(self.to_everyone_revealing(&gone, real));
        for to in &occupant.sessions {
            out.push((to.clone(), addressed(&own, to)));
            self.nicks.insert(to.clone(), new.to_string());
        }
        self.occupants.insert(new.to_string(), occupant);
        let codes = [status::SELF];
        out.extend(self.broadcast_presence(new, Some((session, &codes))));
        Ok(out)
    }

    /// Takes an occupant out of the room (kicked, banned, no longer a member): unavailable presence
    /// with role none, `codes`, who did it (`actor`, a nick) and why to everyone, the self code to
    /// its own sessions, whose `nicks` entries go.
    fn remove_occupant(
        &mut self,
        nick: &str,
        codes: &[u16],
        actor: Option<&str>,
        reason: Option<&str>,
    ) -> Vec<Delivery> {
        let Some(occupant) = self.occupants.remove(nick) else {
            return Vec::new();
        };
        let affiliation = self.affiliation(&occupant.user);
        let mut x = item_element(affiliation, None, None, &[]);
        if let Some(item) = x.get_child_mut("item", NS_MUC_USER) {
            if let Some(actor) = actor {
                let mut by = Element::bare("actor", NS_MUC_USER);
                set_attr(&mut by, "nick", actor);
                item.append_child(by);
            }
            if let Some(reason) = reason {
                let mut text = Element::bare("reason", NS_MUC_USER);
                text.append_text(reason);
                item.append_child(text);
            }
        }
        let mut gone = Element::bare("presence", ns::CLIENT);
        set_attr(&mut gone, "type", "unavailable");
        set_attr(&mut gone, "from", &self.occupant_jid(nick));
        gone.append_child(occupant.id.clone());
        let mut own = gone.clone();
        gone.append_child(with_codes(x.clone(), codes));
        let own_codes: Vec<u16> = std::iter::once(status::SELF)
            .chain(codes.iter().copied())
            .collect();
        own.append_child(with_codes(x, &own_codes));
        let mut out = Vec::new();
        for to in &occupant.sessions {
            self.nicks.remove(to);
            out.push((to.clone(), addressed(&own, to)));
        }
        out.extend(self.to_everyone_revealing(&gone, occupant.sessions.first()));
        out
    }

    /// A muc#admin change (§8, §9) by the occupant or user `actor`: a role by nick, or an
    /// affiliation by JID. Checked against the actor's standing before anything changes.
    pub fn admin_set(
        &mut self,
        actor: &BareJid,
        change: &AdminChange,
    ) -> Result<Vec<Delivery>, StanzaError> {
        let actor_affiliation = self.affiliation(actor);
        let actor_role = self.role_of_user(actor);
        match change {
            AdminChange::Role { nick, role, reason } => {
                let target = self.occupants.get(nick).ok_or_else(|| {
                    StanzaError::with_text(
                        StanzaErrorCondition::ItemNotFound,
                        "no occupant has that nick",
                    )
                })?;
                let target_affiliation = self.affiliation(&target.user);
                // Granting or revoking moderator status is for admins and owners (§9.6), the rest
                // for moderators (§8).
                let needs_admin = *role == Some(Role::Moderator) || target.role == Role::Moderator;
                if needs_admin && actor_affiliation < Affiliation::Admin
                    || !needs_admin && actor_role != Some(Role::Moderator)
                {
                    return Err(StanzaError::with_text(
                        StanzaErrorCondition::Forbidden,
                        "you may not change roles in this room",
                    ));
                }
                // Nobody takes a role away from an admin or owner (§8.2, §8.4, §9.7).
                if target_affiliation >= Affiliation::Admin && *role != Some(Role::Moderator) {
                    return Err(StanzaError::with_text(
                        StanzaErrorCondition::NotAllowed,
                        "admins and owners keep their role",
                    ));
                }
                match role {
                    None => {
                        let by = self.nick_of_user(actor);
                        Ok(self.remove_occupant(
                            nick,
                            &[status::KICKED],
                            by.as_deref(),
                            reason.as_deref(),
                        ))
                    }
                    Some(role) => {
                        if let Some(target) = self.occupants.get_mut(nick) {
                            target.role = *role;
                        }
                        Ok(self.broadcast_presence(nick, None))
                    }
                }
            }
            AdminChange::Affiliation {
                user,
                affiliation,
                nick,
                reason,
            } => {
                // Admins and owners are made and unmade by owners (§10.3-10.8); members and bans by
                // admins (§9.1-9.5), who cannot touch those at or above their own level.
                let current = self.affiliation(user);
                let needs_owner =
                    *affiliation >= Affiliation::Admin || current >= Affiliation::Admin;
                if needs_owner && actor_affiliation < Affiliation::Owner
                    || actor_affiliation < Affiliation::Admin
                {
                    return Err(StanzaError::with_text(
                        StanzaErrorCondition::Forbidden,
                        "you may not change that affiliation",
                    ));
                }
                let owners = self
                    .affiliations
                    .values()
                    .filter(|a| **a == Affiliation::Owner)
                    .count();
                if current == Affiliation::Owner
                    && *affiliation != Affiliation::Owner
                    && owners <= 1
                {
                    return Err(StanzaError::with_text(
                        StanzaErrorCondition::Conflict,
                        "a room keeps at least one owner",
                    ));
                }
                if let Some(nick) = nick
                    .as_deref()
                    .filter(|_| *affiliation >= Affiliation::Member)
                {
                    self.nick_free_for(nick, user)?;
                    self.reserved.insert(user.clone(), nick.to_string());
                }
                if *affiliation == Affiliation::None {
                    self.affiliations.remove(user);
                } else {
                    self.affiliations.insert(user.clone(), *affiliation);
                }
                if *affiliation < Affiliation::Member {
                    self.reserved.remove(user);
                }
                self.changed = true;
                let by = self.nick_of_user(actor);
                Ok(self.affiliation_changed(user, by.as_deref(), reason.as_deref()))
            }
        }
    }

    /// After `user`'s affiliation changed: its occupants leave (banned, or no longer members of
    /// a members-only room) or take the role it brings, and the room hears of it.
    fn affiliation_changed(
        &mut self,
        user: &BareJid,
        actor: Option<&str>,
        reason: Option<&str>,
    ) -> Vec<Delivery> {
        let affiliation = self.affiliation(user);
        let nicks: Vec<String> = self
            .occupants
            .iter()
            .filter(|(_, o)| &o.user == user)
            .map(|(nick, _)| nick.clone())
            .collect();
        let mut out = Vec::new();
        for nick in nicks {
            if affiliation == Affiliation::Outcast {
                out.extend(self.remove_occupant(&nick, &[status::BANNED], actor, reason));
            } else if self.config.members_only && affiliation < Affiliation::Member {
                out.extend(self.remove_occupant(&nick, &[status::MEMBERSHIP_LOST], actor, reason));
            } else {
                let role = Role::entering(affiliation, self.config.moderated);
                if let Some(occupant) = self.occupants.get_mut(&nick) {
                    occupant.role = role;
                }
                out.extend(self.broadcast_presence(&nick, None));
            }
        }
        out
    }

    /// The items of a muc#admin list request (§9.5, §10.5, §8.5): users with an affiliation, or
    /// occupants with a role. Affiliation lists are open to the room's members (clients of
    /// private groups show who belongs), the ban list to admins; role lists to moderators.
    pub fn admin_list(
        &self,
        actor: &BareJid,
        wanted: &AdminList,
    ) -> Result<Vec<Element>, StanzaError> {
        let actor_affiliation = self.affiliation(actor);
        let allowed = match wanted {
            AdminList::Affiliation(Affiliation::Outcast) => actor_affiliation >= Affiliation::Admin,
            AdminList::Affiliation(_) => {
                actor_affiliation >= Affiliation::Member
                    || (self.config.whois_anyone && self.role_of_user(actor).is_some())
            }
            AdminList::Role(_) => self.role_of_user(actor) == Some(Role::Moderator),
        };
        if !allowed {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "you may not see that list",
            ));
        }
        let mut items = Vec::new();
        match wanted {
            AdminList::Affiliation(wanted) => {
                let mut users: Vec<&BareJid> = self
                    .affiliations
                    .iter()
                    .filter(|(_, a)| *a == wanted)
                    .map(|(user, _)| user)
                    .collect();
                users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                for user in users {
                    let mut item = Element::bare("item", NS_MUC_ADMIN);
                    set_attr(&mut item, "affiliation", wanted.as_str());
                    set_attr(&mut item, "jid", user.as_str());
                    if let Some(nick) = self.reserved.get(user).or_else(|| {
                        self.occupants
                            .iter()
                            .find(|(_, o)| &o.user == user)
                            .map(|(n, _)| n)
                    }) {
                        set_attr(&mut item, "nick", nick);
                    }
                    items.push(item);
                }
            }
            AdminList::Role(wanted) => {
                for (nick, occupant) in self.occupants.iter().filter(|(_, o)| o.role == *wanted) {
                    let mut item = Element::bare("item", NS_MUC_ADMIN);
                    set_attr(&mut item, "role", wanted.as_str());
                    set_attr(&mut item, "nick", nick);
                    set_attr(
                        &mut item,
                        "affiliation",
                        self.affiliation(&occupant.user).as_str(),
                    );
                    set_attr(&mut item, "jid", occupant.user.as_str());
                    items.push(item);
                }
            }
        }
        Ok(items)
    }

    /// The nick `user` is in the room under, if any (the actor of a kick or ban).
    fn nick_of_user(&self, user: &BareJid) -> Option<String> {
        self.occupants
            .iter()
            .find(|(_, o)| &o.user == user)
            .map(|(nick, _)| nick.clone())
    }

    /// The highest role any occupant of `user` has here.
    fn role_of_user(&self, user: &BareJid) -> Option<Role> {
        self.occupants
            .values()
            .filter(|o| &o.user == user)
            .map(|o| o.role)
            .max()
    }

    /// The owner destroys the room (§10.9): every occupant is told, with the reason and the
    /// alternate venue.
    pub fn destroy(
        &mut self,
        actor: &BareJid,
        destroy: &Element,
    ) -> Result<Vec<Delivery>, StanzaError> {
        if self.affiliation(actor) != Affiliation::Owner {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "only owners may destroy the room",
            ));
        }
        let mut notice = Element::bare("destroy", NS_MUC_USER);
        if let Some(venue) = destroy.attr("jid") {
            set_attr(&mut notice, "jid", venue);
        }
        if let Some(reason) = destroy.get_child("reason", super::NS_MUC_OWNER) {
            let mut text = Element::bare("reason", NS_MUC_USER);
            text.append_text(reason.text());
            notice.append_child(text);
        }
        let mut out = Vec::new();
        for (nick, occupant) in std::mem::take(&mut self.occupants) {
            let mut x = item_element(Affiliation::None, None, None, &[]);
            x.append_child(notice.clone());
            let mut gone = Element::bare("presence", ns::CLIENT);
            set_attr(&mut gone, "type", "unavailable");
            set_attr(&mut gone, "from", &self.occupant_jid(&nick));
            gone.append_child(occupant.id);
            gone.append_child(with_codes(x, &[status::SELF]));
            for to in &occupant.sessions {
                out.push((to.clone(), addressed(&gone, to)));
            }
        }
        self.nicks.clear();
        Ok(out)
    }

    /// A mediated invitation from an occupant (§7.8.2): one message from the room to each invitee.
    /// In a members-only room the invitees become members, and only admins and owners (or
    /// members, if the room allows it) may invite.
    pub fn invite(
        &mut self,
        session: &FullJid,
        x: &Element,
    ) -> Result<Vec<(BareJid, Element)>, StanzaError> {
        if !self.nicks.contains_key(session) {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "only occupants may invite",
            ));
        }
        let inviter = session.to_bare();
        let standing = self.affiliation(&inviter);
        if self.config.members_only
            && standing < Affiliation::Admin
            && !(self.config.allow_member_invites && standing >= Affiliation::Member)
        {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "only admins may invite to this members-only room",
            ));
        }
        let mut out = Vec::new();
        for invite in x.children().filter(|c| c.is("invite", NS_MUC_USER)) {
            let invitee = crate::addr::jid_attr(invite, "to")?.to_bare();
            let reason = invite.get_child("reason", NS_MUC_USER).map(|r| r.text());
            let mut forwarded = Element::bare("invite", NS_MUC_USER);
            set_attr(&mut forwarded, "from", inviter.as_str());
            if let Some(reason) = &reason {
                let mut text = Element::bare("reason", NS_MUC_USER);
                text.append_text(reason.clone());
                forwarded.append_child(text);
            }
            let mut x = Element::bare("x", NS_MUC_USER);
            x.append_child(forwarded);
            if let Some(password) = &self.config.password {
                let mut secret = Element::bare("password", NS_MUC_USER);
                secret.append_text(password.clone());
                x.append_child(secret);
            }
            let mut message = Element::bare("message", ns::CLIENT);
            set_attr(&mut message, "from", self.jid.as_str());
            set_attr(&mut message, "to", invitee.as_str());
            message.append_child(x);
            // For clients that show only bodies.
            let mut body = Element::bare("body", ns::CLIENT);
            body.append_text(match &reason {
                Some(reason) => format!("{inviter} invites you to the room {}: {reason}", self.jid),
                None => format!("{inviter} invites you to the room {}", self.jid),
            });
            message.append_child(body);
            if self.config.members_only && self.affiliation(&invitee) == Affiliation::None {
                self.affiliations
                    .insert(invitee.clone(), Affiliation::Member);
                self.changed = true;
            }
            out.push((invitee, message));
        }
        Ok(out)
    }

    /// A declined invitation (§7.8.2): passed on to the inviter, from the room.
    pub fn decline(
        &self,
        from: &FullJid,
        x: &Element,
    ) -> Result<Vec<(BareJid, Element)>, StanzaError> {
        let mut out = Vec::new();
        for decline in x.children().filter(|c| c.is("decline", NS_MUC_USER)) {
            let inviter = crate::addr::jid_attr(decline, "to")?.to_bare();
            let mut forwarded = Element::bare("decline", NS_MUC_USER);
            set_attr(&mut forwarded, "from", from.to_bare().as_str());
            if let Some(reason) = decline.get_child("reason", NS_MUC_USER) {
                forwarded.append_child(reason.clone());
            }
            let mut x = Element::bare("x", NS_MUC_USER);
            x.append_child(forwarded);
            let mut message = Element::bare("message", ns::CLIENT);
            set_attr(&mut message, "from", self.jid.as_str());
            set_attr(&mut message, "to", inviter.as_str());
            message.append_child(x);
            out.push((inviter, message));
        }
        Ok(out)
    }

    /// Keeps a message with a body for the discussion history, stamped with when the room got
    /// it.
    /// `serialized` is the message as the room sent it (`Posted::serialized`); the history's copy
    /// gets its delay stamp spliced in, without serializing the message again.
    pub fn remember(&mut self, serialized: &[u8], at: chrono::DateTime<chrono::Utc>) {
        if self.config.history_length == 0 {
            self.history.clear();
            return;
        }
        let mut delay = Vec::with_capacity(128);
        delay.extend_from_slice(b"<delay xmlns='");
        delay.extend_from_slice(ns::DELAY.as_bytes());
        delay.extend_from_slice(b"' from='");
        xml::escape_into(self.jid.as_str(), true, &mut delay);
        delay.extend_from_slice(b"' stamp='");
        delay.extend_from_slice(crate::modules::offline::stamp(at).as_bytes());
        delay.extend_from_slice(b"'/>");
        let bytes = xml::with_last_child(serialized, "message", &delay);
        let chars = String::from_utf8_lossy(&bytes).chars().count();
        self.history.push_back(Past {
            at,
            bytes: Bytes::from(bytes),
            chars,
        });
        while self.history.len() > self.config.history_length {
            self.history.pop_front();
        }
    }

    /// The history a newcomer asked for with `<history/>` (§7.2.14): all that is kept without
    /// one, else the newest that fit every limit given (maxstanzas, maxchars, seconds, since).
    /// Oldest first.
    fn history_for(&self, wanted: Option<&Element>) -> Vec<&Bytes> {
        let limit = |name: &str| {
            wanted
                .and_then(|h| h.attr(name))
                .and_then(|v| v.parse::<usize>().ok())
        };
        let max_stanzas = limit("maxstanzas").unwrap_or(usize::MAX);
        let max_chars = limit("maxchars").unwrap_or(usize::MAX);
        let now = chrono::Utc::now();
        let not_before = [
            // A span too long to represent reaches back to the beginning: no limit.
            limit("seconds")
                .and_then(|s| chrono::TimeDelta::try_seconds(i64::try_from(s).ok()?))
                .and_then(|span| now.checked_sub_signed(span)),
            wanted
                .and_then(|h| h.attr("since"))
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        ]
        .into_iter()
        .flatten()
        .max();
        let mut chars = 0;
        let mut picked: Vec<&Bytes> = Vec::new();
        for past in self.history.iter().rev() {
            if picked.len() >= max_stanzas
                || not_before.is_some_and(|t| past.at < t)
                || chars + past.chars > max_chars
            {
                break;
            }
            chars += past.chars;
            picked.push(&past.bytes);
        }
        picked.reverse();
        picked
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

    /// An occupant's presence as others see it, with `codes` (for its own copy), and its real
    /// JID when `reveal`.
    fn presence_of(&self, nick: &str, occupant: &Occupant, codes: &[u16], reveal: bool) -> Element {
        let mut presence = occupant.presence.clone();
        set_attr(&mut presence, "from", &self.occupant_jid(nick));
        let real = if reveal {
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
        presence.append_child(occupant.id.clone());
        presence
    }

    /// One stanza (built without `to`) to every session of every occupant: serialized once, each
    /// copy only gets its `to`.
    fn to_everyone(&self, el: &Element) -> Vec<Delivery> {
        self.copies_to_everyone(&xml::serialize(el), el.name())
    }

    /// A presence about an occupant (built without `to`, its muc#user item without `jid`) to every
    /// occupant session: with `real` in the item for those who may see real JIDs (§7.2.4: everyone
    /// in a non-anonymous room, moderators in a semi-anonymous one). Each version serialized once.
    fn to_everyone_revealing(&self, el: &Element, real: Option<&FullJid>) -> Vec<Delivery> {
        let Some(real) = real else {
            return self.to_everyone(el);
        };
        let mut revealed = el.clone();
        if let Some(item) = revealed
            .get_child_mut("x", NS_MUC_USER)
            .and_then(|x| x.get_child_mut("item", NS_MUC_USER))
        {
            set_attr(item, "jid", real.as_str());
        }
        let revealed = xml::serialize(&revealed);
        if self.config.whois_anyone {
            return self.copies_to_everyone(&revealed, el.name());
        }
        let plain = xml::serialize(el);
        self.occupants
            .values()
            .flat_map(|o| {
                let shared = if o.role == Role::Moderator {
                    &revealed
                } else {
                    &plain
                };
                o.sessions
                    .iter()
                    .map(move |to| (to.clone(), with_to(shared, el.name(), to)))
            })
            .collect()
    }

    fn copies_to_everyone(&self, shared: &[u8], name: &str) -> Vec<Delivery> {
        self.occupants
            .values()
            .flat_map(|o| &o.sessions)
            .map(|to| (to.clone(), with_to(shared, name, to)))
            .collect()
    }

    /// XEP-0421: `<occupant-id/>` for the user, the same in this room whenever they come back.
    fn occupant_id(&self, user: &BareJid) -> Element {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.occupant_id_salt.as_bytes());
        hash.update([0]);
        hash.update(user.as_str().as_bytes());
        let digest = hash.finalize();
        let mut el = Element::bare("occupant-id", NS_OCCUPANT_ID);
        set_attr(
            &mut el,
            "id",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]),
        );
        el
    }

    /// The occupant `nick`'s presence to everyone in the room; `own` gets its copy with its codes.
    /// Each version is serialized once for all its recipients.
    fn broadcast_presence(&self, nick: &str, own: Option<(&FullJid, &[u16])>) -> Vec<Delivery> {
        let Some(occupant) = self.occupants.get(nick) else {
            return Vec::new();
        };
        let anonymous = !self.config.whois_anyone;
        let others = xml::serialize(&self.presence_of(nick, occupant, &[], !anonymous));
        // Moderators of a semi-anonymous room see the real JID (§7.2.4).
        let to_moderators = if anonymous {
            xml::serialize(&self.presence_of(nick, occupant, &[], true))
        } else {
            Vec::new()
        };
        // The occupant's other sessions hear of its update with the self code.
        let mine = xml::serialize(&self.presence_of(nick, occupant, &[status::SELF], true));
        let mut out = Vec::new();
        for (other_nick, other) in &self.occupants {
            let shared = if other_nick == nick {
                &mine
            } else if anonymous && other.role == Role::Moderator {
                &to_moderators
            } else {
                &others
            };
            for to in &other.sessions {
                if own.is_none_or(|(session, _)| session != to) {
                    out.push((to.clone(), with_to(shared, "presence", to)));
                }
            }
        }
        if let Some((session, codes)) = own {
            let mine = self.presence_of(nick, occupant, codes, true);
            out.push((session.clone(), addressed(&mine, session)));
        }
        out
    }
}

/// `<forbidden/>` for outcasts: they may not enter, register or read the archive.
fn not_banned(affiliation: Affiliation) -> Result<(), StanzaError> {
    if affiliation == Affiliation::Outcast {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::Forbidden,
            "you are banned from this room",
        ));
    }
    Ok(())
}

/// One item of a muc#admin set request.
#[derive(Debug)]
pub enum AdminChange {
    /// A role for the occupant `nick`; `None` kicks it.
    Role {
        nick: String,
        role: Option<Role>,
        reason: Option<String>,
    },
    Affiliation {
        user: BareJid,
        affiliation: Affiliation,
        /// A nick to reserve for the user (§9.3), with a member, admin or owner affiliation.
        nick: Option<String>,
        reason: Option<String>,
    },
}

/// What a muc#admin get request lists.
#[derive(Debug)]
pub enum AdminList {
    Affiliation(Affiliation),
    Role(Role),
}

pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";

/// `x` with status codes appended.
fn with_codes(mut x: Element, codes: &[u16]) -> Element {
    for code in codes {
        let mut status = Element::bare("status", NS_MUC_USER);
        set_attr(&mut status, "code", &code.to_string());
        x.append_child(status);
    }
    x
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
    with_codes(x, codes)
}

/// A stanza addressed to one session, serialized.
fn addressed(el: &Element, to: &FullJid) -> Bytes {
    with_to(&xml::serialize(el), el.name(), to)
}

/// A serialized stanza (without `to`) with `to` added to its start tag: one serialization shared by
/// every recipient of a fan-out.
fn with_to(serialized: &[u8], name: &str, to: &FullJid) -> Bytes {
    let head = name.len() + 1;
    let mut bytes = Vec::with_capacity(serialized.len() + to.as_str().len() + 8);
    bytes.extend_from_slice(&serialized[..head.min(serialized.len())]);
    bytes.extend_from_slice(b" to='");
    xml::escape_into(to.as_str(), true, &mut bytes);
    bytes.push(b'\'');
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
