//! Users' message archives (XEP-0313 on each account's bare JID): the one-to-one messages a user
//! sends and receives, recorded on their way through the router with the stanza-id the recipient
//! sees live; queries; XEP-0441 preferences (the per-user override of `[archive] default`);
//! expiry (`[archive] expire_after`); XEP-0424 retractions, which leave a tombstone in place of
//! the retracted message.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jid::{BareJid, Jid};
use minidom::Element;
use xmpp_parsers::mam_prefs::{DefaultPrefs, Prefs};

use super::archive::{self, NS_MAM, NS_MAM_EXTENDED};
use super::{IqResult, Module, Spec, Support};
use crate::config::ArchiveMode;
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::router::Outbound;
use crate::server::ServerState;
use crate::session::SessionCtx;
use crate::store::{ArchiveStore, ArchivedStanza, StoreError};
use crate::xml::{self, ns};

pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
const NS_RETRACT_TOMBSTONE: &str = "urn:xmpp:message-retract:1#tombstone";

pub const MODULE: Module = Module {
    name: "mam",
    disco_features: &[],
    account_features: &[NS_MAM, NS_MAM_EXTENDED, NS_RETRACT, NS_RETRACT_TOMBSTONE],
    stream_features: &[],
    specs: &[
        Spec::xep(
            441,
            "0.2.0",
            Support::Complete,
            "default always, never or roster, and per-JID always and never lists, per user",
        ),
        Spec::xep(
            424,
            "0.4.2",
            Support::Partial,
            "retractions archived; in user archives the retracted message becomes a tombstone; not in room archives",
        ),
        Spec::xep(
            308,
            "1.2.1",
            Support::Complete,
            "corrections delivered, stored offline and archived like the messages they correct",
        ),
    ],
};

/// The key in the user's key-value store that holds their preferences.
const PREFS_KEY: &str = "mam-prefs";
/// How many of a conversation's newest messages a retraction looks through for its target.
const RETRACT_REACH: usize = 2_000;

const SHARDS: usize = 64;
/// Users remembered per shard; past it the shard is emptied and users are read again as needed.
const PER_SHARD: usize = 4_096;

/// What is known about one user's archive: where its key clock stands and its preferences.
struct Known {
    last_key: u64,
    prefs: Arc<Prefs>,
}

/// Users' archive states, in memory once read. Recording a message takes the user's shard lock,
/// so that keys grow in the order entries are written.
pub struct Archives {
    shards: Box<[Mutex<HashMap<BareJid, Known>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Archives {
    fn default() -> Self {
        Archives {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl Archives {
    fn shard(&self, user: &BareJid) -> MutexGuard<'_, HashMap<BareJid, Known>> {
        let index = (self.hasher.hash_one(user) as usize) % SHARDS;
        // Plain data: a panic elsewhere leaves it consistent.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the user's state, read from the store the first time; none when there is no
    /// such account (any more: a message racing the account's deletion is not archived).
    fn with_user<R>(
        &self,
        state: &ServerState,
        user: &BareJid,
        f: impl FnOnce(&mut Known) -> R,
    ) -> Result<Option<R>, StoreError> {
        let mut shard = self.shard(user);
        if !shard.contains_key(user) {
            let Some(known) = load(state, user)? else {
                return Ok(None);
            };
            if shard.len() >= PER_SHARD {
                shard.clear();
            }
            shard.insert(user.clone(), known);
        }
        Ok(shard.get_mut(user).map(f))
    }

    /// Whether the user's chats are kept (their archive default is not "never"): uploads they share
    /// in messages live as long as archived messages then.
    pub fn keeps_chats(&self, state: &ServerState, user: &BareJid) -> bool {
        match self.with_user(state, user, |known| {
            known.prefs.default_ != DefaultPrefs::Never
        }) {
            Ok(Some(keeps)) => keeps,
            _ => state.config.archive.default == ArchiveMode::Permanent,
        }
    }

    /// Forgets a user (the account was deleted).
    pub fn forget(&self, user: &BareJid) {
        self.shard(user).remove(user);
    }
}

fn load(state: &ServerState, user: &BareJid) -> Result<Option<Known>, StoreError> {
    if !state.accounts.exists(user)? {
        return Ok(None);
    }
    let newest = state
        .stores
        .archive
        .scan(user, None, 0, u64::MAX, true, 1, &mut |_| true)?;
    Ok(Some(Known {
        last_key: newest.first().map_or(0, |item| item.key),
        prefs: Arc::new(stored_prefs(state, user)?),
    }))
}

/// The user's preferences, or the server's default when they never chose.
fn stored_prefs(state: &ServerState, user: &BareJid) -> Result<Prefs, StoreError> {
    let stored = state.stores.values.get_value(user, PREFS_KEY)?;
    let parsed = stored
        .as_deref()
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<Element>().ok())
        .and_then(|el| Prefs::try_from(el).ok());
    if stored.is_some() && parsed.is_none() {
        tracing::error!(user = %user, "unreadable archive preferences; the server default applies");
    }
    Ok(parsed.unwrap_or_else(|| server_default(state)))
}

fn server_default(state: &ServerState) -> Prefs {
    Prefs {
        default_: match state.config.archive.default {
            ArchiveMode::Permanent => DefaultPrefs::Always,
            ArchiveMode::Temporary => DefaultPrefs::Never,
        },
        always: Vec::new(),
        never: Vec::new(),
    }
}

/// Whether `other` is on a preferences list: a bare JID there covers all its resources.
fn listed(list: &[Jid], other: &Jid) -> bool {
    list.iter().any(|jid| match jid.resource() {
        None => jid.node() == other.node() && jid.domain() == other.domain(),
        Some(_) => jid == other,
    })
}

/// Whether the preferences let messages with `other` into `owner`'s archive. `never` wins over
/// `always` when a JID is on both.
fn wanted(state: &ServerState, owner: &BareJid, prefs: &Prefs, other: &Jid) -> bool {
    if listed(&prefs.never, other) {
        return false;
    }
    if listed(&prefs.always, other) {
        return true;
    }
    match prefs.default_ {
        DefaultPrefs::Always => true,
        DefaultPrefs::Never => false,
        DefaultPrefs::Roster => {
            let contact = other.to_bare();
            &contact == owner
                || state
                    .stores
                    .rosters
                    .item(owner, &contact)
                    .ok()
                    .flatten()
                    .is_some_and(|item| item.listed)
        }
    }
}

/// Whether a message belongs in a user archive at all (XEP-0313 §6.1.1): a one-to-one message
/// (normal or chat) with content, without a hint against storing it.
pub fn archivable(message: &Element) -> bool {
    matches!(message.attr("type"), None | Some("normal" | "chat"))
        && archive::worth_archiving(message)
}

/// A message recorded in an archive: where, its archive id, and the message as stored
/// (serialized).
pub struct Recorded {
    key: u64,
    pub id: String,
    pub bytes: Vec<u8>,
}

/// Appends what `serialize` makes (given the new entry's archive id) to `owner`'s archive as
/// exchanged with `with`, when the owner's preferences want it. The key is taken and the entry
/// written under the owner's lock, so that keys grow in the order entries are written. Not
/// flushed: the caller makes the sender's acknowledgement wait for the group commit. A storage
/// failure is logged and the message goes on unrecorded (delivery matters more than history).
fn append(
    state: &ServerState,
    owner: &BareJid,
    with: &Jid,
    serialize: impl FnOnce(&str) -> Vec<u8>,
) -> Option<Recorded> {
    let store = state.stores.archive.as_ref();
    let outcome = state
        .mam
        .with_user(state, owner, |known| known.prefs.clone())
        .and_then(|prefs| {
            // Decided outside the lock: `roster` reads the roster.
            match prefs {
                Some(prefs) if wanted(state, owner, &prefs, with) => {}
                _ => return Ok(None),
            }
            state.mam.with_user(state, owner, |known| {
                let key = archive::next_key(known.last_key);
                let nonce = archive::new_nonce();
                let id = archive::public_id(key, nonce);
                let item = ArchivedStanza {
                    key,
                    nonce,
                    with: with.to_string(),
                    stanza: serialize(&id),
                };
                store.append(owner, &item)?;
                known.last_key = key;
                Ok(Recorded {
                    key,
                    id,
                    bytes: item.stanza,
                })
            })
        });
    match outcome {
        Ok(Some(Ok(recorded))) => Some(recorded),
        Ok(Some(Err(err))) | Err(err) => {
            tracing::error!(user = %owner, error = %err, "cannot archive a message");
            None
        }
        Ok(None) => None,
    }
}

/// Records a message `owner` received from `with` in the owner's archive when it belongs there,
/// and gives it the archive's `<stanza-id/>` first: the recipient sees live the id its archive
/// has (XEP-0313 §3.1).
pub fn record(
    state: &ServerState,
    owner: &BareJid,
    with: &Jid,
    message: &mut Element,
) -> Option<Recorded> {
    if !archivable(message) {
        return None;
    }
    let recorded = append(state, owner, with, |id| {
        super::stanza_id::stamp_with(message, owner, id);
        xml::serialize(message)
    })?;
    retracted(state, owner, with, message, recorded.key);
    Some(recorded)
}

/// Takes back a message recorded for a recipient that could then not take it (its offline
/// storage was full): the archive holds only what was accepted (XEP-0313 §6.1).
pub fn unrecord(state: &ServerState, owner: &BareJid, recorded: &Recorded) {
    if let Err(err) = state.stores.archive.remove(owner, recorded.key) {
        tracing::error!(user = %owner, error = %err, "cannot take back an archived message");
    }
}

/// A message a local user sent was accepted for another local user: recorded in the sender's
/// archive as addressed (the receiving side is recorded where it is delivered). Returns the
/// archive id, for the sender's other resources (XEP-0313 §3.1: inside the carbon copy only,
/// never to the recipient).
pub fn record_sent(ctx: &SessionCtx, message: &Element, recipient: &BareJid) -> Option<String> {
    let sender = ctx.jid.to_bare();
    // Messages to oneself are recorded once, as received.
    if recipient == &sender || !archivable(message) {
        return None;
    }
    let to = message
        .attr("to")
        .and_then(|to| Jid::new(to).ok())
        .unwrap_or_else(|| Jid::from(recipient.clone()));
    let recorded = append(&ctx.state, &sender, &to, |_| xml::serialize(message))?;
    retracted(&ctx.state, &sender, &to, message, recorded.key);
    ctx.unflushed
        .store(true, std::sync::atomic::Ordering::Release);
    Some(recorded.id)
}

/// When a just-recorded message is a retraction, applies it to the archive.
fn retracted(state: &ServerState, owner: &BareJid, with: &Jid, message: &Element, key: u64) {
    if let Some(retract) = message.get_child("retract", NS_RETRACT) {
        if let Err(err) = retract_in(state, owner, with, message, retract, key) {
            tracing::error!(user = %owner, error = %err, "cannot apply a retraction to the archive");
        }
    }
}

/// XEP-0424 §5: the message a retraction names, if it is in `owner`'s archive (one of the newest
/// of the conversation, sent by whoever sent the retraction), is replaced by a tombstone. The
/// retraction itself stays archived (it was just recorded, under `retraction_key`).
fn retract_in(
    state: &ServerState,
    owner: &BareJid,
    with: &Jid,
    retraction: &Element,
    retract: &Element,
    retraction_key: u64,
) -> Result<(), StoreError> {
    // The tombstone names the retraction by its id (§5): without one there is nothing to name.
    let (Some(target), Some(retraction_id), Some(author)) = (
        retract.attr("id"),
        retraction.attr("id"),
        retraction
            .attr("from")
            .and_then(|f| Jid::new(f).ok())
            .map(|j| j.to_bare()),
    ) else {
        return Ok(());
    };
    let is_target = |item: &ArchivedStanza| -> Option<Element> {
        let el: Element = std::str::from_utf8(&item.stanza).ok()?.parse().ok()?;
        let from = el.attr("from").and_then(|f| Jid::new(f).ok())?;
        let named = el.attr("id") == Some(target)
            || el
                .get_child("origin-id", ns::STANZA_ID)
                .is_some_and(|o| o.attr("id") == Some(target));
        (named && from.to_bare() == author && !el.has_child("retracted", NS_RETRACT)).then_some(el)
    };
    let mut looked = 0;
    let found = state.stores.archive.scan(
        owner,
        Some(&with.to_bare()),
        0,
        retraction_key.saturating_sub(1),
        true,
        1,
        &mut |item| {
            looked += 1;
            looked > RETRACT_REACH || is_target(item).is_some()
        },
    )?;
    let Some((item, original)) = found
        .into_iter()
        .find_map(|item| is_target(&item).map(|el| (item, el)))
    else {
        return Ok(());
    };
    let stone = tombstone(&original, retraction_id);
    state
        .stores
        .archive
        .replace(owner, item.key, &xml::serialize(&stone))?;
    Ok(())
}

/// The retracted message as the archive keeps it (XEP-0424 §5): its addressing, ids and a
/// `<retracted/>` naming the retraction; the content is gone.
fn tombstone(original: &Element, retraction_id: &str) -> Element {
    let mut stone = Element::bare("message", ns::CLIENT);
    for ((namespace, name), value) in original.attrs() {
        stone.set_attr(namespace.clone(), name.clone(), value.clone());
    }
    for child in original.children() {
        if child.is("origin-id", ns::STANZA_ID) || child.is("stanza-id", ns::STANZA_ID) {
            stone.append_child(child.clone());
        }
    }
    let mut retracted = Element::bare("retracted", NS_RETRACT);
    set_attr(&mut retracted, "id", retraction_id);
    set_attr(
        &mut retracted,
        "stamp",
        &super::offline::stamp(chrono::Utc::now()),
    );
    stone.append_child(retracted);
    stone
}

/// An iq in the archive namespace to the user's own archive (their bare JID, or no `to`).
pub async fn handle(ctx: &SessionCtx, set: bool, payload: &Element) -> IqResult {
    let owner = ctx.jid.to_bare();
    let store = ctx.state.stores.archive.as_ref();
    match (payload.name(), set) {
        ("query", true) => query(ctx, &owner, payload).await,
        ("query", false) => Ok(Some(archive::search_form())),
        ("metadata", false) => Ok(Some(archive::metadata(store, &owner)?)),
        ("prefs", false) => {
            let prefs = ctx
                .state
                .mam
                .with_user(&ctx.state, &owner, |known| known.prefs.clone())?
                .ok_or(StanzaErrorCondition::ItemNotFound)?;
            Ok(Some(Element::from(Prefs::clone(&prefs))))
        }
        ("prefs", true) => set_prefs(ctx, &owner, payload).await,
        ("metadata", true) => Err(super::wrong_type()),
        _ => Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "expected query, metadata or prefs",
        )),
    }
}

/// Runs a query on the user's archive: the results go to the asking session, the `<fin/>` is
/// the iq's result.
async fn query(ctx: &SessionCtx, owner: &BareJid, payload: &Element) -> IqResult {
    let store = ctx.state.stores.archive.as_ref();
    let query = archive::Query::parse(store, owner, payload)?;
    let with = query.with.clone();
    let conversation = with.as_ref().map(Jid::to_bare);
    let mut keep = |item: &ArchivedStanza| with_matches(with.as_ref(), &item.with);
    let page = archive::run(store, owner, &query, conversation.as_ref(), &mut keep)?;
    let results: Vec<&ArchivedStanza> = if query.flip {
        page.items.iter().rev().collect()
    } else {
        page.items.iter().collect()
    };
    for item in results {
        let bytes =
            archive::result_message(None, &ctx.jid, query.queryid.as_deref(), item, &item.stanza);
        if !ctx.handle.send(Outbound::Stanza(bytes)).await {
            break;
        }
    }
    Ok(Some(archive::fin(&page)))
}

/// XEP-0313 §4.1.1: a bare `with` matches every resource of that JID; a full one only itself.
/// `with` being the owner's own JID selects what they sent themselves (the stored party is then
/// their own).
fn with_matches(with: Option<&Jid>, stored: &str) -> bool {
    match with {
        None => true,
        Some(with) if with.resource().is_none() => {
            stored.split_once('/').map_or(stored, |(bare, _)| bare) == with.as_str()
        }
        Some(with) => stored == with.as_str(),
    }
}

/// XEP-0441 §2.1: stores the new preferences and answers with them as applied.
async fn set_prefs(ctx: &SessionCtx, owner: &BareJid, payload: &Element) -> IqResult {
    let prefs = Prefs::try_from(payload.clone()).map_err(|e| {
        StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            format!("malformed archiving preferences: {e}"),
        )
    })?;
    let el = Element::from(prefs.clone());
    let serialized = xml::serialize(&el);
    let prefs = Arc::new(prefs);
    // Stored and taken into use under the user's lock: two resources setting preferences at once
    // leave the store and the server agreeing.
    ctx.state
        .mam
        .with_user(&ctx.state, owner, |known| {
            ctx.state
                .stores
                .values
                .set_value(owner, PREFS_KEY, &serialized)?;
            known.prefs = prefs;
            Ok::<(), StoreError>(())
        })?
        .ok_or(StanzaErrorCondition::ItemNotFound)??;
    ctx.state.stores.flush().await?;
    Ok(Some(el))
}

/// Deletes archived messages older than `[archive] expire_after`, from user and room archives,
/// in the background: the oldest first (XEP-0313 §3.2 allows no holes), a batch at a time on a
/// blocking thread, so that traffic never waits for it.
pub async fn expire(state: Arc<ServerState>) {
    let Some(age) = state.config.archive.expiry() else {
        return;
    };
    let every = (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => break,
        }
        let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
        let cutoff = now.saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX));
        let store = state.stores.archive.clone();
        match tokio::task::spawn_blocking(move || expire_before(store.as_ref(), cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(deleted, "expired archived messages"),
            Ok(Err(err)) => tracing::error!(error = %err, "cannot expire archived messages"),
            Err(err) => tracing::error!(error = %err, "the archive expiry task failed"),
        }
    }
}

/// Deletes every archived entry with a key before `cutoff`; returns how many.
pub fn expire_before(store: &dyn ArchiveStore, cutoff: u64) -> Result<usize, StoreError> {
    const ARCHIVES: usize = 256;
    const BATCH: usize = 1024;
    let mut deleted = 0;
    let mut after: Option<BareJid> = None;
    loop {
        let archives = store.archives_after(after.as_ref(), ARCHIVES)?;
        for archive in &archives {
            loop {
                let gone = store.delete_before(archive, cutoff, BATCH)?;
                deleted += gone;
                if gone < BATCH {
                    break;
                }
            }
        }
        if archives.len() < ARCHIVES {
            return Ok(deleted);
        }
        after = archives.last().cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(text: &str) -> Jid {
        Jid::new(text).unwrap()
    }

    #[test]
    fn bare_list_entries_cover_every_resource() {
        let list = [jid("juliet@capulet.lit"), jid("romeo@montague.lit/orchard")];
        assert!(listed(&list, &jid("juliet@capulet.lit/balcony")));
        assert!(listed(&list, &jid("juliet@capulet.lit")));
        assert!(listed(&list, &jid("romeo@montague.lit/orchard")));
        assert!(!listed(&list, &jid("romeo@montague.lit/garden")));
        assert!(!listed(&list, &jid("romeo@montague.lit")));
        assert!(!listed(&list, &jid("capulet.lit")));
    }

    #[test]
    fn with_matches_bare_and_full() {
        let bare = jid("juliet@capulet.lit");
        let full = jid("juliet@capulet.lit/balcony");
        assert!(with_matches(Some(&bare), "juliet@capulet.lit/balcony"));
        assert!(with_matches(Some(&bare), "juliet@capulet.lit"));
        assert!(!with_matches(Some(&bare), "juliet@capulet.lit.example"));
        assert!(with_matches(Some(&full), "juliet@capulet.lit/balcony"));
        assert!(!with_matches(Some(&full), "juliet@capulet.lit/chamber"));
        assert!(!with_matches(Some(&full), "juliet@capulet.lit"));
        assert!(with_matches(None, "anyone@example.org"));
    }

    #[test]
    fn a_tombstone_keeps_addressing_and_ids_only() {
        let original: Element = "<message xmlns='jabber:client' from='a@x/r' to='b@x' type='chat' id='m1'><body>secret</body><origin-id xmlns='urn:xmpp:sid:0' id='m1'/><stanza-id xmlns='urn:xmpp:sid:0' id='s' by='b@x'/><reply xmlns='urn:xmpp:reply:0' id='m0'/></message>".parse().unwrap();
        let stone = tombstone(&original, "r1");
        assert_eq!(stone.attr("id"), Some("m1"));
        assert_eq!(stone.attr("from"), Some("a@x/r"));
        assert!(!stone.has_child("body", ns::CLIENT));
        assert!(!stone.has_child("reply", "urn:xmpp:reply:0"));
        assert!(stone.has_child("origin-id", ns::STANZA_ID));
        assert!(stone.has_child("stanza-id", ns::STANZA_ID));
        let retracted = stone.get_child("retracted", NS_RETRACT).unwrap();
        assert_eq!(retracted.attr("id"), Some("r1"));
        assert!(retracted.attr("stamp").is_some());
    }

    #[test]
    fn prefs_serialize_both_lists_even_when_empty() {
        let el = Element::from(Prefs {
            default_: DefaultPrefs::Roster,
            always: Vec::new(),
            never: vec![jid("x@y")],
        });
        assert!(el.has_child("always", NS_MAM), "{}", String::from(&el));
        assert!(el.has_child("never", NS_MAM));
    }
}
