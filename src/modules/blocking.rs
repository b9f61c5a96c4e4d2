//! XEP-0191 blocking command: a user's blocklist, its pushes, and its enforcement. Nothing from a
//! blocked entity reaches the user (presence silently, messages and iq requests with an error), and
//! nothing from the user reaches it (`<not-acceptable/>` with `<blocked/>`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use bytes::Bytes;
use jid::{BareJid, Jid};
use minidom::Element;

use super::{IqResult, Module, Spec, Support};
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::router::Outbound;
use crate::server::ServerState;
use crate::session::SessionCtx;
use crate::store::StoreError;
use crate::xml::{self, ns};

pub const MODULE: Module = Module {
    name: "blocking",
    disco_features: &[ns::BLOCKING],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        191,
        "1.3",
        Support::Complete,
        "blocklist with pushes; enforced on messages, iq and presence",
    )],
};

const KEY: &str = "blocklist";

/// A user's blocked JIDs, normalized.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Blocklist(Vec<String>);

impl Blocklist {
    /// A list of the given normalized JIDs.
    pub fn of(jids: Vec<String>) -> Blocklist {
        Blocklist(jids)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The user's list, from memory when it was loaded or saved before.
    pub fn load(state: &ServerState, user: &BareJid) -> Result<Arc<Blocklist>, StoreError> {
        if let Some(list) = state.blocklists.get(user) {
            return Ok(list);
        }
        let raw = state
            .stores
            .values
            .get_value(user, KEY)?
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        let list = Blocklist(
            text.lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        );
        Ok(state.blocklists.loaded(user, list))
    }

    fn save(self, state: &ServerState, user: &BareJid) -> Result<(), StoreError> {
        state
            .stores
            .values
            .set_value(user, KEY, self.0.join("\n").as_bytes())?;
        state.blocklists.saved(user, self);
        Ok(())
    }

    /// XEP-0191 §6 matching: the full JID, the bare JID, the domain with that resource, the domain.
    pub fn blocks(&self, jid: &Jid) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let domain = jid.domain().as_str();
        let candidates = [
            Some(jid.as_str().to_string()),
            Some(jid.to_bare().as_str().to_string()),
            jid.resource().map(|r| format!("{domain}/{}", r.as_str())),
            Some(domain.to_string()),
        ];
        candidates.iter().flatten().any(|c| self.0.contains(c))
    }
}

/// Whether `owner` blocks `other`.
pub fn blocks(state: &ServerState, owner: &BareJid, other: &Jid) -> bool {
    Blocklist::load(state, owner)
        .map(|b| b.blocks(other))
        .unwrap_or(false)
}

/// The `<error/>` for a stanza the user addressed to someone they block.
pub fn blocked_error() -> StanzaError {
    StanzaError {
        condition: StanzaErrorCondition::NotAcceptable,
        text: None,
        extra: Some(Box::new(Element::bare("blocked", ns::BLOCKING_ERRORS))),
    }
}

fn items_of(el: &Element) -> Result<Vec<String>, StanzaError> {
    el.children()
        .filter(|c| c.is("item", ns::BLOCKING))
        .map(|item| crate::addr::jid_attr(item, "jid").map(|j| j.to_string()))
        .collect()
}

/// Every local user's blocklist once it was needed: it is checked for every message, both ways,
/// and reading it from the store each time was one of the largest costs of routing a message.
/// Users without a list share one empty list. Entries go when the account is removed.
#[derive(Default)]
pub struct Blocklists(RwLock<HashMap<BareJid, Arc<Blocklist>>>);

static EMPTY: LazyLock<Arc<Blocklist>> = LazyLock::new(Default::default);

impl Blocklists {
    fn get(&self, user: &BareJid) -> Option<Arc<Blocklist>> {
        self.0.read().ok()?.get(user).cloned()
    }

    /// A list read from the store; one saved meanwhile wins (it is newer than what was read).
    fn loaded(&self, user: &BareJid, list: Blocklist) -> Arc<Blocklist> {
        let list = Self::shared(list);
        match self.0.write() {
            Ok(mut map) => map.entry(user.clone()).or_insert(list).clone(),
            Err(_) => list,
        }
    }

    fn saved(&self, user: &BareJid, list: Blocklist) {
        if let Ok(mut map) = self.0.write() {
            map.insert(user.clone(), Self::shared(list));
        }
    }

    fn shared(list: Blocklist) -> Arc<Blocklist> {
        if list.is_empty() {
            EMPTY.clone()
        } else {
            Arc::new(list)
        }
    }

    /// The account is gone (a new account of the same name starts without a list).
    pub fn forget(&self, user: &BareJid) {
        if let Ok(mut map) = self.0.write() {
            map.remove(user);
        }
    }
}

fn list_element(name: &str, jids: &[String]) -> Element {
    let mut el = Element::bare(name, ns::BLOCKING);
    for jid in jids {
        let mut item = Element::bare("item", ns::BLOCKING);
        set_attr(&mut item, "jid", jid);
        el.append_child(item);
    }
    el
}

/// The blocking iqs from the user's own session.
pub async fn handle(ctx: &SessionCtx, set: bool, payload: &Element) -> IqResult {
    let user = ctx.jid.to_bare();
    let state = &ctx.state;
    let mut list = Blocklist::clone(&*Blocklist::load(state, &user)?);
    match (set, payload.name()) {
        (false, "blocklist") => {
            ctx.handle.presence.set_blocklist_interested();
            Ok(Some(list_element("blocklist", &list.0)))
        }
        (true, "block") => {
            let jids = items_of(payload)?;
            if jids.is_empty() {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::BadRequest,
                    "block at least one JID",
                ));
            }
            let mut new: Vec<String> = Vec::new();
            for jid in jids {
                if !list.0.contains(&jid) && !new.contains(&jid) {
                    new.push(jid);
                }
            }
            if new.is_empty() {
                // Already blocked: nothing changes, nothing to push (a push needs items, §10).
                return Ok(None);
            }
            // Contacts that could see the user's presence see it go away (§3.3).
            for jid in &new {
                super::presence::unavailable_to_blocked(state, &user, jid).await?;
            }
            list.0.extend(new.iter().cloned());
            list.save(state, &user)?;
            state.stores.flush().await?;
            push(state, &user, list_element("block", &new)).await;
            Ok(None)
        }
        (true, "unblock") => {
            let jids = items_of(payload)?;
            let removed: Vec<String> = if jids.is_empty() {
                std::mem::take(&mut list.0)
            } else {
                let removed: Vec<String> = list
                    .0
                    .iter()
                    .filter(|j| jids.contains(j))
                    .cloned()
                    .collect();
                list.0.retain(|j| !jids.contains(j));
                removed
            };
            if !jids.is_empty() && removed.is_empty() {
                // None of them was blocked: nothing changes. (An empty push would mean "all", §3.5.)
                return Ok(None);
            }
            list.save(state, &user)?;
            state.stores.flush().await?;
            // An empty <unblock/> push means "everything" (§3.5).
            let pushed = if jids.is_empty() {
                Vec::new()
            } else {
                removed.clone()
            };
            push(state, &user, list_element("unblock", &pushed)).await;
            for jid in &removed {
                super::presence::presence_to_unblocked(state, &user, jid).await?;
            }
            Ok(None)
        }
        _ => Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "expected blocklist, block or unblock",
        )),
    }
}

/// Sends a block/unblock push to the user's resources that asked for the blocklist.
async fn push(state: &ServerState, user: &BareJid, payload: Element) {
    for session in state.router.resources(user) {
        if !session.presence.blocklist_interested() {
            continue;
        }
        let mut iq = Element::bare("iq", ns::CLIENT);
        set_attr(&mut iq, "type", "set");
        set_attr(&mut iq, "id", &super::stanza_id::new_id());
        set_attr(&mut iq, "to", session.jid.as_str());
        iq.append_child(payload.clone());
        session
            .send(Outbound::Stanza(Bytes::from(xml::serialize(&iq))))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_order() {
        let list = Blocklist(vec![
            "bad@example.org".into(),
            "spam.example".into(),
            "x@y.org/phone".into(),
        ]);
        let jid = |s: &str| Jid::new(s).unwrap();
        assert!(list.blocks(&jid("bad@example.org")));
        assert!(list.blocks(&jid("bad@example.org/any")));
        assert!(list.blocks(&jid("anyone@spam.example/r")));
        assert!(list.blocks(&jid("spam.example")));
        assert!(list.blocks(&jid("x@y.org/phone")));
        assert!(!list.blocks(&jid("x@y.org/laptop")));
        assert!(!list.blocks(&jid("good@example.org")));
    }
}
