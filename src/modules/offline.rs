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
use crate::store::StoreError;
use crate::xml::{self, ns};

pub const MODULE: Module = Module {
    name: "offline",
    disco_features: &["msgoffline"],
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
const KEEP_NAMESPACES: &[&str] = &[
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
    let mut stamped = message.clone();
    // A delay from this server on a message is ours: forged ones are removed where messages enter
    // (session::handle_element), so one here comes from an earlier storage and keeps its time.
    let ours = stamped
        .children()
        .any(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(state.domain.as_str()));
    if !ours {
        let mut delay = Element::bare("delay", ns::DELAY);
        set_attr(&mut delay, "from", &state.domain);
        set_attr(&mut delay, "stamp", &now_stamp());
        delay.append_text("Offline storage");
        stamped.append_child(delay);
    }
    let stored = state.stores.offline.push(
        user,
        &xml::serialize(&stamped),
        state.config.offline.max_messages,
    )?;
    if stored {
        state.stores.flush().await?;
    }
    Ok(stored)
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

/// Sends the session everything stored for its user, oldest first, then runs `become_available`,
/// all under the user's gate. What is sent leaves the store; if the session then ends without the
/// client acknowledging it, it comes back (session::finish).
pub async fn deliver_then(
    ctx: &SessionCtx,
    become_available: impl FnOnce(),
) -> Result<(), StoreError> {
    let user = ctx.jid.to_bare();
    let gate = ctx.state.offline_gate.lock(&user).await;
    let stored = ctx.state.stores.offline.list(&user)?;
    let mut delivered = Vec::with_capacity(stored.len());
    for (key, stanza) in stored {
        if !ctx.handle.send(Outbound::Stanza(Bytes::from(stanza))).await {
            break;
        }
        delivered.push(key);
    }
    if !delivered.is_empty() {
        ctx.state.stores.offline.remove(&user, &delivered)?;
    }
    become_available();
    drop(gate);
    if !delivered.is_empty() {
        ctx.state.stores.flush().await?;
        tracing::debug!(jid = %ctx.jid, count = delivered.len(), "delivered offline messages");
    }
    Ok(())
}

/// Now in the XEP-0082 DateTime profile, UTC with milliseconds.
pub fn now_stamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
