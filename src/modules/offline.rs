//! XEP-0160 offline messages: a message for a user with no available resource that may receive it is
//! stored durably (with a XEP-0203 delay stamp) and delivered, in order and once, when the user next
//! sends available presence with a non-negative priority.

use bytes::Bytes;
use jid::BareJid;
use minidom::Element;

use super::{Module, Spec, Support};
use crate::error::set_attr;
use crate::router::Outbound;
use crate::server::ServerState;
use crate::session::SessionCtx;
use crate::store::{OfflineStore, StoreError};
use crate::xml::{self, ns};

pub const MODULE: Module = Module {
    name: "offline",
    disco_features: &["msgoffline"],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::xep(
            160,
            "1.0.1",
            Support::Complete,
            "durable per-user queue with a limit ([offline] max_messages)",
        ),
        Spec::xep(
            203,
            "2.0",
            Support::Complete,
            "delay stamps on messages delivered from offline storage",
        ),
        Spec::xep(
            334,
            "1.0.0",
            Support::Partial,
            "no-store and store hints for offline storage",
        ),
    ],
};

/// Payload namespaces that make a message worth keeping for an offline user even without a body:
/// receipts and markers (the ticks), encrypted bodies, corrections, retractions, reactions, invites.
pub(crate) const KEEP_NAMESPACES: &[&str] = &[
    "urn:xmpp:receipts",
    "urn:xmpp:chat-markers:0",
    "eu.siacs.conversations.axolotl",
    "urn:xmpp:omemo:2",
    "urn:xmpp:openpgp:0",
    "urn:xmpp:message-correct:0",
    "urn:xmpp:message-retract:1",
    "urn:xmpp:fasten:0",
    "urn:xmpp:reactions:0",
    "jabber:x:conference",
    "http://jabber.org/protocol/muc#user",
    "urn:xmpp:jingle-message:0",
];

/// Whether a message should be stored for an offline recipient (XEP-0160 §3, XEP-0334).
pub fn worth_storing(message: &Element) -> bool {
    if !matches!(message.attr("type"), None | Some("normal" | "chat")) {
        return false;
    }
    if message.has_child("no-store", ns::HINTS) {
        return false;
    }
    message.has_child("store", ns::HINTS)
        || message.has_child("body", ns::CLIENT)
        || message
            .children()
            .any(|c| KEEP_NAMESPACES.contains(&c.ns().as_str()))
}

/// Stores a message for `user`; false when the user's queue is full. Durable when it returns.
pub async fn store(
    state: &ServerState,
    user: &BareJid,
    message: &Element,
) -> Result<bool, StoreError> {
    let stored = keep(state, user, message, state.config.offline.max_messages)?.is_some();
    if stored {
        state.stores.flush().await?;
    }
    Ok(stored)
}

/// The durable copy of a message being delivered to an online session: it stays in the user's
/// queue until the session's client acknowledges the message (XEP-0198), or the message was
/// written to a client without stream management, so that a crash in between loses nothing.
/// Not flushed here: the sender's ack waits for a group-committed flush (session `<r/>`).
///
/// Staged in memory (`store::staged`): most copies are settled before anything needs them on disk.
/// `serialized` is the message as delivered; the stored form adds the delay stamp to those bytes
/// rather than to a copy of the element (this runs for every message).
pub fn keep_in_flight(
    state: &ServerState,
    user: &BareJid,
    message: &Element,
    serialized: &[u8],
) -> Result<u64, StoreError> {
    const END: &[u8] = b"</message>";
    let stored = if has_our_delay(state, message) {
        serialized.to_vec()
    } else if let Some(body) = serialized.strip_suffix(END) {
        let mut stored = Vec::with_capacity(serialized.len() + 128);
        stored.extend_from_slice(body);
        write_delay(&mut stored, &state.domain);
        stored.extend_from_slice(END);
        stored
    } else {
        xml::serialize(&stamped(state, message))
    };
    state.stores.offline.stage(user, stored)
}

/// A delay from this server on a message is ours: forged ones are removed where messages enter
/// (session::handle_element), so one here comes from an earlier storage and keeps its time.
fn has_our_delay(state: &ServerState, message: &Element) -> bool {
    message
        .children()
        .any(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(state.domain.as_str()))
}

/// Our XEP-0203 stamp for a stored message: now.
fn delay(state: &ServerState) -> Element {
    let mut delay = Element::bare("delay", ns::DELAY);
    set_attr(&mut delay, "from", &state.domain);
    set_attr(&mut delay, "stamp", &now_stamp());
    delay.append_text("Offline storage");
    delay
}

/// Appends our serialized delay stamp for now: the same as serializing `delay`, without building
/// an element or formatting a date per message (this runs for every message). The text up to the
/// second is kept per thread; only the milliseconds are written each time.
fn write_delay(out: &mut Vec<u8>, domain: &str) {
    use std::cell::RefCell;
    use std::io::Write;
    thread_local! {
        /// (second, domain, `<delay … stamp='YYYY-MM-DDTHH:MM:SS`) of the last stamp written.
        static START: RefCell<(i64, String, Vec<u8>)> = const { RefCell::new((i64::MIN, String::new(), Vec::new())) };
    }
    let now = chrono::Utc::now();
    START.with_borrow_mut(|(second, cached_domain, start)| {
        if *second != now.timestamp() || cached_domain != domain {
            *second = now.timestamp();
            *cached_domain = domain.to_string();
            start.clear();
            let _ = write!(
                start,
                "<delay xmlns='{}' from='{}' stamp='{}",
                ns::DELAY,
                xml::escape(domain),
                now.format("%Y-%m-%dT%H:%M:%S")
            );
        }
        out.extend_from_slice(start);
    });
    // A leap second shows as 1,000 ms and more: the stamp stays well-formed.
    let millis = now.timestamp_subsec_millis().min(999);
    let _ = write!(out, ".{millis:03}Z'>Offline storage</delay>");
}

/// The message with our delay stamp (unless it has one of ours).
fn stamped(state: &ServerState, message: &Element) -> Element {
    let mut stamped = message.clone();
    if !has_our_delay(state, message) {
        stamped.append_child(delay(state));
    }
    stamped
}

/// Stamps a message with our delay (unless it has one of ours) and appends it to the queue.
fn keep(
    state: &ServerState,
    user: &BareJid,
    message: &Element,
    limit: usize,
) -> Result<Option<u64>, StoreError> {
    state
        .stores
        .offline
        .push(user, &xml::serialize(&stamped(state, message)), limit)
}

/// How long an in-flight copy may stay in memory only. A sender with stream management has its
/// messages on disk before it gets an ack anyway; this bounds what a crash can take from senders
/// without it, like the backend's own flush interval does for other writes.
pub const CHECKPOINT: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes in-flight copies older than `CHECKPOINT` to the backend, every `CHECKPOINT`.
pub async fn checkpoint(state: std::sync::Arc<ServerState>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECKPOINT) => {}
            _ = shutdown.changed() => break,
        }
        let offline = state.stores.offline.clone();
        if let Ok(Err(err)) =
            tokio::task::spawn_blocking(move || offline.write_older_than(CHECKPOINT)).await
        {
            tracing::error!(error = %err, "cannot write in-flight copies");
        }
    }
}

/// Stores what a session that ended had not delivered or had not seen acknowledged (XEP-0198 §4):
/// the messages worth keeping go back to the user's offline queue, the rest is dropped.
pub async fn store_undelivered(state: &ServerState, user: &BareJid, stanzas: Vec<Bytes>) {
    let mut kept = 0;
    for bytes in stanzas {
        let Ok(el) = std::str::from_utf8(&bytes)
            .unwrap_or_default()
            .parse::<Element>()
        else {
            continue;
        };
        if el.name() != "message" || !worth_storing(&el) {
            continue;
        }
        match store(state, user, &el).await {
            Ok(true) => kept += 1,
            Ok(false) => {
                tracing::warn!(user = %user, "offline storage full; an unacknowledged message is dropped")
            }
            Err(err) => {
                tracing::error!(user = %user, error = %err, "cannot store an unacknowledged message")
            }
        }
    }
    if kept > 0 {
        tracing::info!(user = %user, kept, "stored unacknowledged messages offline");
    }
}

/// Orders offline storage against delivery, per user: a message is stored only while its user
/// has no resource to take it, and a resource takes the stored messages before it counts as
/// available. Without this, a message could be stored just after the queue was emptied (and wait
/// for the next login), or overtake older stored ones. Striped locks keep it bounded.
pub struct Gate(Vec<tokio::sync::Mutex<()>>);

impl Default for Gate {
    fn default() -> Self {
        Gate((0..64).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

impl Gate {
    pub async fn lock(&self, user: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut hasher);
        let index = (hasher.finish() % self.0.len() as u64) as usize;
        self.0[index].lock().await
    }
}

/// Stored messages a live session is delivering right now, per user. In memory only: after a
/// crash nothing is claimed, so everything stored is delivered again.
#[derive(Default)]
pub struct Claims(
    std::sync::Mutex<std::collections::HashMap<BareJid, std::collections::HashSet<u64>>>,
);

impl Claims {
    /// Claims a stored message for a session; false when another session has it.
    pub fn claim(&self, user: &BareJid, key: u64) -> bool {
        self.0
            .lock()
            .map(|mut m| m.entry(user.clone()).or_default().insert(key))
            .unwrap_or(false)
    }

    /// Gives stored messages back (their session ended before the client had them).
    pub fn release(&self, user: &BareJid, keys: &[u64]) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(set) = m.get_mut(user) {
                for key in keys {
                    set.remove(key);
                }
                if set.is_empty() {
                    m.remove(user);
                }
            }
        }
    }
}

/// The client has these stored messages (acknowledged, or written to a client without stream
/// management): their copies leave the queue.
pub fn settle(state: &ServerState, user: &BareJid, keys: &[u64]) {
    if keys.is_empty() {
        return;
    }
    if let Err(err) = state.stores.offline.remove(user, keys) {
        tracing::error!(user = %user, error = %err, "cannot remove delivered messages from the queue");
    }
    state.offline_claims.release(user, keys);
}

/// Sends the session everything stored for its user that no other session is delivering, oldest
/// first, then runs `become_available`, all under the user's gate. The copies stay stored until
/// the client has them (`settle`), so neither a crash nor a lost connection loses them.
pub async fn deliver_then(
    ctx: &SessionCtx,
    become_available: impl FnOnce(),
) -> Result<(), StoreError> {
    let user = ctx.jid.to_bare();
    let gate = ctx.state.offline_gate.lock(&user).await;
    let stored = ctx.state.stores.offline.list(&user)?;
    let blocklist = super::blocking::Blocklist::load(&ctx.state, &user)?;
    let mut sent = 0;
    for (key, stanza) in stored {
        if !ctx.state.offline_claims.claim(&user, key) {
            continue;
        }
        // Another session may have delivered it since the listing: `settle` removes before it
        // releases, so a claim that succeeds on a removed entry is caught here.
        if !ctx.state.stores.offline.contains(&user, key)? {
            ctx.state.offline_claims.release(&user, &[key]);
            continue;
        }
        if !blocklist.is_empty() && blocked_sender(&blocklist, &stanza) {
            // Blocked since it was stored (XEP-0191 §3.3): never delivered.
            settle(&ctx.state, &user, &[key]);
            continue;
        }
        if !ctx
            .handle
            .send(Outbound::Stored(Bytes::from(stanza), key))
            .await
        {
            ctx.state.offline_claims.release(&user, &[key]);
            break;
        }
        sent += 1;
    }
    become_available();
    drop(gate);
    if sent > 0 {
        tracing::debug!(jid = %ctx.jid, count = sent, "delivering offline messages");
    }
    Ok(())
}

/// Whether a stored stanza comes from someone the blocklist blocks.
fn blocked_sender(blocklist: &super::blocking::Blocklist, stanza: &[u8]) -> bool {
    let Ok(el) = std::str::from_utf8(stanza)
        .unwrap_or_default()
        .parse::<Element>()
    else {
        return false;
    };
    el.attr("from")
        .and_then(|f| jid::Jid::new(f).ok())
        .is_some_and(|from| blocklist.blocks(&from))
}

/// Now in the XEP-0082 DateTime profile, UTC with milliseconds.
pub fn now_stamp() -> String {
    stamp(chrono::Utc::now())
}

/// A XEP-0082 timestamp with milliseconds, as our XEP-0203 delays carry.
pub fn stamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_delay_is_the_delay_element() {
        let mut out = Vec::new();
        write_delay(&mut out, "example.org");
        let written: Element = std::str::from_utf8(&out).unwrap().parse().unwrap();
        assert!(written.is("delay", ns::DELAY));
        assert_eq!(written.attr("from"), Some("example.org"));
        assert_eq!(written.text(), "Offline storage");
        let stamp = written.attr("stamp").unwrap();
        assert_eq!(stamp.len(), now_stamp().len(), "{stamp}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
        // The cached start follows the domain.
        let mut other = Vec::new();
        write_delay(&mut other, "other.example");
        assert!(std::str::from_utf8(&other)
            .unwrap()
            .contains("from='other.example'"));
    }

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn what_is_worth_storing() {
        assert!(worth_storing(&el(
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>"
        )));
        assert!(worth_storing(&el(
            "<message xmlns='jabber:client'><body>hi</body></message>"
        )));
        assert!(worth_storing(&el(
            "<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:receipts' id='x'/></message>"
        )));
        assert!(worth_storing(&el(
            "<message xmlns='jabber:client' type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>"
        )));
        assert!(!worth_storing(&el(
            "<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(!worth_storing(&el(
            "<message xmlns='jabber:client' type='headline'><body>x</body></message>"
        )));
        assert!(!worth_storing(&el(
            "<message xmlns='jabber:client' type='groupchat'><body>x</body></message>"
        )));
        assert!(!worth_storing(&el(
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
    }
}
