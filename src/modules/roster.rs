//! The roster (RFC 6121 §2): get with versioning (§2.6), set and remove, and roster pushes to the
//! user's interested resources. Subscription state lives in the same items; `presence` changes it.

use bytes::Bytes;
use jid::BareJid;
use minidom::Element;

use super::{IqResult, Module};
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::router::Outbound;
use crate::server::ServerState;
use crate::session::SessionCtx;
use crate::store::{RosterItem, StoreError};
use crate::xml::{self, ns};

pub const MODULE: Module = Module {
    name: "roster",
    disco_features: &[],
    account_features: &[],
    // RFC 6121 §2.6.1 roster versioning, §3.4 subscription pre-approval.
    stream_features: &[
        "<ver xmlns='urn:xmpp:features:rosterver'/>",
        "<sub xmlns='urn:xmpp:features:pre-approval'/>",
    ],
    specs: &[],
};

/// The `<item/>` a client sees for a stored item.
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::bare("item", ns::ROSTER);
    set_attr(&mut el, "jid", &item.jid);
    if let Some(name) = &item.name {
        set_attr(&mut el, "name", name);
    }
    set_attr(&mut el, "subscription", item.subscription.as_str());
    if item.ask {
        set_attr(&mut el, "ask", "subscribe");
    }
    if item.preapproved {
        set_attr(&mut el, "approved", "true");
    }
    for group in &item.groups {
        let mut g = Element::bare("group", ns::ROSTER);
        g.append_text(group.clone());
        el.append_child(g);
    }
    el
}

/// Handles `jabber:iq:roster` from the user's own session.
pub async fn handle(ctx: &SessionCtx, set: bool, payload: &Element) -> IqResult {
    if set {
        set_item(ctx, payload).await
    } else {
        get(ctx, payload)
    }
}

/// RFC 6121 §2.1.3 and §2.6.3: the whole roster, or an empty result when the client's version is
/// current (pushes then keep it up to date).
fn get(ctx: &SessionCtx, payload: &Element) -> IqResult {
    if payload.children().next().is_some() {
        return Err(bad("a roster get carries no items"));
    }
    ctx.handle.presence.set_interested();
    let user = ctx.jid.to_bare();
    let (version, items) = ctx.state.stores.rosters.roster(&user)?;
    if payload.attr("ver") == Some(version.to_string().as_str()) {
        return Ok(None);
    }
    let mut query = Element::bare("query", ns::ROSTER);
    set_attr(&mut query, "ver", &version.to_string());
    for item in items.iter().filter(|i| i.listed) {
        query.append_child(item_element(item));
    }
    Ok(Some(query))
}

fn bad(text: &str) -> StanzaError {
    StanzaError::with_text(StanzaErrorCondition::BadRequest, text)
}

/// RFC 6121 §2.3 (add or update) and §2.5 (remove).
async fn set_item(ctx: &SessionCtx, payload: &Element) -> IqResult {
    let mut items = payload.children().filter(|c| c.is("item", ns::ROSTER));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(bad("a roster set carries exactly one item"));
    };
    if payload.children().count() != 1 {
        return Err(bad("a roster set carries exactly one item"));
    }
    let Some(jid) = item.attr("jid") else {
        return Err(bad("a roster item needs a jid"));
    };
    let contact = crate::addr::parse_jid(jid).ok().ok_or_else(|| {
        StanzaError::with_text(
            StanzaErrorCondition::JidMalformed,
            "the item's jid is not valid",
        )
    })?;
    if contact.resource().is_some() {
        return Err(bad("a roster item is a bare JID"));
    }
    let contact = contact.to_bare();
    let user = ctx.jid.to_bare();
    if contact == user {
        // An account always sees its own presence; a roster item for itself only confuses clients.
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAllowed,
            "you cannot add yourself",
        ));
    }
    if item.attr("subscription") == Some("remove") {
        return remove(ctx, &user, &contact).await;
    }
    let mut groups: Vec<String> = Vec::new();
    for group in item.children().filter(|c| c.is("group", ns::ROSTER)) {
        let name = group.text();
        if name.is_empty() {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "a group name is empty",
            ));
        }
        if groups.contains(&name) {
            return Err(bad("the same group is listed twice"));
        }
        groups.push(name);
    }
    let rosters = &ctx.state.stores.rosters;
    // Subscription and ask attributes from the client are ignored (RFC 6121 §2.1.2): the server
    // keeps that state.
    let mut stored = rosters
        .item(&user, &contact)?
        .unwrap_or_else(|| RosterItem {
            jid: contact.to_string(),
            ..Default::default()
        });
    stored.name = item
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(String::from);
    stored.groups = groups;
    stored.listed = true;
    let version = rosters.put(&user, &stored, true)?;
    ctx.state.stores.flush().await?;
    push(&ctx.state, &user, &stored, version).await;
    Ok(None)
}

/// RFC 6121 §2.5.2: removing an item cancels the subscriptions both ways, then pushes the removal.
async fn remove(ctx: &SessionCtx, user: &BareJid, contact: &BareJid) -> IqResult {
    let state = &ctx.state;
    let Some(item) = state
        .stores
        .rosters
        .item(user, contact)?
        .filter(|i| i.listed)
    else {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    };
    // The item goes first, with the one push the user sees (no intermediate states)...
    let version = state.stores.rosters.remove(user, contact, true)?;
    push_removal(state, user, contact, version).await;
    // ...then the contact learns both subscriptions ended.
    use super::presence::{after_roster_removal, Subscribe};
    if item.subscription.to() || item.ask {
        after_roster_removal(state, user, contact, Subscribe::Unsubscribe, item.clone()).await?;
    }
    if item.subscription.from() || item.pending_in.is_some() {
        after_roster_removal(state, user, contact, Subscribe::Unsubscribed, item).await?;
    }
    state.stores.flush().await?;
    Ok(None)
}

/// Sends a roster push (RFC 6121 §2.1.6) with one item to every interested resource of `user`.
pub async fn push(state: &ServerState, user: &BareJid, item: &RosterItem, version: u64) {
    if item.listed {
        send_push(state, user, item_element(item), version).await;
    }
}

async fn push_removal(state: &ServerState, user: &BareJid, contact: &BareJid, version: u64) {
    let mut el = Element::bare("item", ns::ROSTER);
    set_attr(&mut el, "jid", contact.as_str());
    set_attr(&mut el, "subscription", "remove");
    send_push(state, user, el, version).await;
}

async fn send_push(state: &ServerState, user: &BareJid, item: Element, version: u64) {
    for session in state.router.interested(user) {
        let mut query = Element::bare("query", ns::ROSTER);
        set_attr(&mut query, "ver", &version.to_string());
        query.append_child(item.clone());
        let mut iq = Element::bare("iq", ns::CLIENT);
        set_attr(&mut iq, "type", "set");
        set_attr(&mut iq, "id", &format!("push-{version}-{}", session.id));
        set_attr(&mut iq, "to", session.jid.as_str());
        iq.append_child(query);
        session
            .send(Outbound::Stanza(Bytes::from(xml::serialize(&iq))))
            .await;
    }
}

/// Stores a changed item and pushes it: the common end of every subscription state change.
pub async fn save_and_push(
    state: &ServerState,
    user: &BareJid,
    item: &RosterItem,
) -> Result<(), StoreError> {
    let version = state.stores.rosters.put(user, item, item.listed)?;
    push(state, user, item, version).await;
    Ok(())
}
