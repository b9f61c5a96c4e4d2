//! Presence (RFC 6121 §3 and §4): subscriptions between local users with their roster state,
//! presence broadcast to subscribers, probes answered from the contacts' last presence, directed
//! presence, and unavailable presence when a session ends.
//!
//! Both ends of a subscription are on this server (no federation yet), so each function below does
//! the user's server's outbound processing and the contact's server's inbound processing in turn.

use bytes::Bytes;
use jid::{BareJid, Jid};
use minidom::Element;

use super::roster::save_and_push;
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::router::{Outbound, SessionHandle};
use crate::server::ServerState;
use crate::session::SessionCtx;
use crate::store::{RosterItem, StoreError};
use crate::xml::{self, ns};

/// The four subscription presence types (RFC 6121 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribe {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl Subscribe {
    fn from_type(kind: &str) -> Option<Subscribe> {
        match kind {
            "subscribe" => Some(Subscribe::Subscribe),
            "subscribed" => Some(Subscribe::Subscribed),
            "unsubscribe" => Some(Subscribe::Unsubscribe),
            "unsubscribed" => Some(Subscribe::Unsubscribed),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Subscribe::Subscribe => "subscribe",
            Subscribe::Subscribed => "subscribed",
            Subscribe::Unsubscribe => "unsubscribe",
            Subscribe::Unsubscribed => "unsubscribed",
        }
    }
}

/// A presence stanza sent by the session's client (its `from` already stamped).
pub async fn outbound(ctx: &SessionCtx, el: Element, to: Option<Jid>) {
    let kind = el.attr("type").map(str::to_owned);
    let result = match (kind.as_deref(), to) {
        (None | Some("unavailable"), None) => broadcast(ctx, el).await,
        (None | Some("unavailable"), Some(to)) => directed(ctx, el, to).await,
        (Some("probe"), Some(to)) => probe(ctx, &to.to_bare()).await,
        (Some(k), Some(to)) if Subscribe::from_type(k).is_some() => {
            let kind = Subscribe::from_type(k).unwrap_or(Subscribe::Subscribe);
            let user = ctx.jid.to_bare();
            let contact = to.to_bare();
            if contact == user {
                // Subscribing to oneself is meaningless: an account always sees its own presence.
                Ok(())
            } else if contact.node().is_none() || contact.domain().as_str() != ctx.state.domain {
                ctx.reply_error(&el, StanzaErrorCondition::RemoteServerNotFound)
                    .await;
                Ok(())
            } else {
                send_subscription(&ctx.state, &user, &contact, kind, Some(&el)).await
            }
        }
        (Some("error"), Some(to)) => {
            // A presence error (say, to a directed presence) goes to the addressed session if any.
            if let Ok(full) = to.try_into_full() {
                if let Some(session) = ctx.state.router.get(&full) {
                    send_one(&session, &el).await;
                }
            }
            Ok(())
        }
        _ => {
            ctx.reply_error(
                &el,
                StanzaError::with_text(StanzaErrorCondition::BadRequest, "unexpected presence"),
            )
            .await;
            Ok(())
        }
    };
    if let Err(err) = result {
        tracing::error!(error = %err, jid = %ctx.jid, "presence processing failed");
    }
}

/// RFC 6121 §4.7.2.1: a priority is an integer from -128 to 127, 0 when absent.
fn priority(el: &Element) -> Result<i32, StanzaError> {
    match el.get_child("priority", ns::CLIENT) {
        None => Ok(0),
        Some(p) => p.text().trim().parse::<i8>().map(i32::from).map_err(|_| {
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "priority must be from -128 to 127",
            )
        }),
    }
}

/// A copy of `presence` addressed to `to`.
fn addressed(presence: &Element, to: &str) -> Element {
    let mut el = presence.clone();
    set_attr(&mut el, "to", to);
    el
}

async fn send_one(session: &SessionHandle, el: &Element) {
    session
        .send(Outbound::Stanza(Bytes::from(xml::serialize(el))))
        .await;
}

/// Sends `presence` (addressed to `to`'s bare JID) to every available session of `to`.
async fn to_available(state: &ServerState, to: &BareJid, presence: &Element) {
    let sessions = state.router.available(to);
    if sessions.is_empty() {
        return;
    }
    let bytes = Bytes::from(xml::serialize(&addressed(presence, to.as_str())));
    for session in sessions {
        if !blocked_between(state, &Jid::from(session.jid.clone()), presence) {
            session.send(Outbound::Stanza(bytes.clone())).await;
        }
    }
}

/// Sends a subscription stanza to every interested resource of `to` (RFC 6121 §3.1.6, §3.2.3).
async fn to_interested(state: &ServerState, to: &BareJid, stanza: &Element) {
    let bytes = Bytes::from(xml::serialize(stanza));
    for session in state.router.interested(to) {
        session.send(Outbound::Stanza(bytes.clone())).await;
    }
}

/// Broadcast presence (no `to`): RFC 6121 §4.2 (initial), §4.4 (subsequent), §4.5 (unavailable).
async fn broadcast(ctx: &SessionCtx, presence: Element) -> Result<(), StoreError> {
    let state = &ctx.state;
    let user = ctx.jid.to_bare();
    if presence.attr("type") == Some("unavailable") {
        return go_unavailable(ctx, Some(presence)).await;
    }
    let priority = match priority(&presence) {
        Ok(p) => p,
        Err(error) => {
            ctx.reply_error(&presence, error).await;
            return Ok(());
        }
    };
    // Broadcast presence has no `to`, and its `from` is already the session's full JID.
    let initial = !ctx.handle.presence.is_available();
    // Stored messages go out when the resource becomes able to take bare-JID messages: at initial
    // presence with priority >= 0, or when the priority rises from negative (XEP-0160 §2).
    let opens = priority >= 0 && (initial || ctx.handle.presence.priority() < 0);
    if opens {
        super::offline::deliver_then(ctx, || {
            ctx.handle
                .presence
                .set_available(priority, presence.clone())
        })
        .await?;
    } else {
        ctx.handle
            .presence
            .set_available(priority, presence.clone());
    }
    let (_, items) = state.stores.rosters.roster(&user)?;
    // To the contacts subscribed to the user, and to all of the user's available resources
    // including this one (an account is implicitly subscribed to its own presence).
    for item in items.iter().filter(|i| i.subscription.from()) {
        if let Ok(contact) = BareJid::new(&item.jid) {
            to_available(state, &contact, &presence).await;
        }
    }
    to_available(state, &user, &presence).await;
    if initial {
        // Probes (§4.3), answered here from the contacts' sessions, and the other resources' presence.
        for item in items.iter().filter(|i| i.subscription.to()) {
            if let Ok(contact) = BareJid::new(&item.jid) {
                current_presence_to(state, &contact, std::slice::from_ref(&ctx.handle)).await;
            }
        }
        for sibling in state
            .router
            .available(&user)
            .iter()
            .filter(|s| s.id != ctx.handle.id)
        {
            if let Some(last) = sibling.presence.last() {
                send_one(&ctx.handle, &addressed(&last, user.as_str())).await;
            }
        }
        // Subscription requests still waiting for an answer (§3.1.3).
        for item in &items {
            if let Some(request) = &item.pending_in {
                ctx.handle
                    .send(Outbound::Stanza(Bytes::from(request.clone().into_bytes())))
                    .await;
            }
        }
    }
    // What the client can do decides which PEP notifications it gets (XEP-0115, XEP-0163).
    super::caps::presence(ctx, &presence, initial).await;
    Ok(())
}

/// The session becomes unavailable (by its own presence, or because it ended): tell subscribers,
/// the user's resources, and whoever got directed presence (RFC 6121 §4.5.2, §4.6.3).
pub async fn go_unavailable(ctx: &SessionCtx, presence: Option<Element>) -> Result<(), StoreError> {
    let directed: Vec<Jid> = ctx
        .local
        .lock()
        .map(|mut l| std::mem::take(&mut l.directed))
        .unwrap_or_default();
    if !ctx.handle.presence.is_available() && directed.is_empty() {
        return Ok(());
    }
    let state = &ctx.state;
    let user = ctx.jid.to_bare();
    let requested = presence.is_some();
    // The client's own stanza when it said goodbye (RFC 6121 §4.5.2), else one of ours; either way
    // without a priority, which unavailable presence does not carry.
    let mut unavailable = presence.unwrap_or_else(|| Element::bare("presence", ns::CLIENT));
    xml::retain_children(&mut unavailable, |c| !c.is("priority", ns::CLIENT));
    set_attr(&mut unavailable, "from", ctx.jid.as_str());
    set_attr(&mut unavailable, "type", "unavailable");
    let was_available = ctx.handle.presence.is_available();
    ctx.handle.presence.set_unavailable();
    if was_available {
        let (_, items) = state.stores.rosters.roster(&user)?;
        for item in items.iter().filter(|i| i.subscription.from()) {
            if let Ok(contact) = BareJid::new(&item.jid) {
                to_available(state, &contact, &unavailable).await;
            }
        }
        to_available(state, &user, &unavailable).await;
        if requested {
            // The session asked to go unavailable and is still connected: it hears its own presence.
            send_one(&ctx.handle, &addressed(&unavailable, user.as_str())).await;
        }
    }
    for target in directed {
        deliver_directed(state, &unavailable, &target).await;
    }
    Ok(())
}

/// Keeps track of who got this session's directed presence (available adds, unavailable removes),
/// so that they hear when it goes away. One's own account is not tracked.
pub fn remember_directed(ctx: &SessionCtx, el: &Element, to: &Jid) {
    let own = to.to_bare() == ctx.jid.to_bare();
    if let (false, Ok(mut local)) = (own, ctx.local.lock()) {
        match el.attr("type") {
            None => {
                if !local.directed.contains(to) {
                    local.directed.push(to.clone());
                }
            }
            Some("unavailable") => {
                local.directed.retain(|j| j != to);
            }
            Some(_) => {}
        }
    }
}

/// Directed presence (RFC 6121 §4.6): delivered to the addressee and remembered, so that it also gets
/// the unavailable presence when this session goes away.
async fn directed(ctx: &SessionCtx, el: Element, to: Jid) -> Result<(), StoreError> {
    remember_directed(ctx, &el, &to);
    if to.domain().as_str() != ctx.state.domain {
        // No federation yet: nowhere to send it, and presence errors are not required (§4.6.2).
        return Ok(());
    }
    deliver_directed(&ctx.state, &el, &to).await;
    Ok(())
}

/// Delivers available or unavailable presence to a local JID: to that session for a full JID, to
/// every available session for a bare JID; dropped when there is none (presence is never stored).
async fn deliver_directed(state: &ServerState, el: &Element, to: &Jid) {
    if state.muc.serves(to) {
        // A room the session is in: it leaves (or its presence changes).
        if let Some(from) = el.attr("from").and_then(|f| f.parse::<jid::FullJid>().ok()) {
            Box::pin(crate::modules::muc::receive(state, el.clone(), &from, to)).await;
        }
        return;
    }
    if blocked_between(state, to, el) {
        return;
    }
    match to.try_as_full() {
        Ok(full) => {
            if let Some(session) = state.router.get(full) {
                send_one(&session, &addressed(el, full.as_str())).await;
            }
        }
        Err(bare) => to_available(state, bare, el).await,
    }
}

/// A probe from a client: answered with the contact's presence if the user is subscribed to it.
async fn probe(ctx: &SessionCtx, contact: &BareJid) -> Result<(), StoreError> {
    let user = ctx.jid.to_bare();
    let subscribed = contact == &user
        || ctx
            .state
            .stores
            .rosters
            .item(contact, &user)?
            .is_some_and(|i| i.subscription.from());
    if subscribed {
        current_presence_to(&ctx.state, contact, std::slice::from_ref(&ctx.handle)).await;
    }
    Ok(())
}

/// Sends the last presence of each available session of `contact` to the given sessions.
async fn current_presence_to(state: &ServerState, contact: &BareJid, recipients: &[SessionHandle]) {
    for session in state.router.available(contact) {
        if let Some(last) = session.presence.last() {
            for recipient in recipients {
                if blocked_between(state, &Jid::from(recipient.jid.clone()), &last) {
                    continue;
                }
                send_one(
                    recipient,
                    &addressed(&last, recipient.jid.to_bare().as_str()),
                )
                .await;
            }
        }
    }
}

/// XEP-0191: presence does not pass between a user and someone either of them blocks (matched on
/// full JIDs, so a blocked resource is blocked alone).
fn blocked_between(state: &ServerState, recipient: &Jid, presence: &Element) -> bool {
    let Some(sender) = presence.attr("from").and_then(|f| Jid::new(f).ok()) else {
        return false;
    };
    let (sender_bare, recipient_bare) = (sender.to_bare(), recipient.to_bare());
    if sender_bare == recipient_bare {
        return false;
    }
    super::blocking::blocks(state, &recipient_bare, &sender)
        || super::blocking::blocks(state, &sender_bare, recipient)
}

/// The sessions of `user`'s subscribers (`from`/`both`) that a blocklist item names: all
/// resources of a contact for a bare JID, one resource for a full JID, every contact of a domain.
fn subscribers_named(
    state: &ServerState,
    user: &BareJid,
    item: &str,
) -> Result<Vec<SessionHandle>, StoreError> {
    let Ok(item) = Jid::new(item) else {
        return Ok(Vec::new());
    };
    let list = super::blocking::Blocklist::of(vec![item.to_string()]);
    let (_, roster) = state.stores.rosters.roster(user)?;
    let mut sessions = Vec::new();
    for contact in roster.iter().filter(|i| i.subscription.from()) {
        let Ok(contact) = BareJid::new(&contact.jid) else {
            continue;
        };
        for session in state.router.available(&contact) {
            if list.blocks(&Jid::from(session.jid.clone())) {
                sessions.push(session);
            }
        }
    }
    Ok(sessions)
}

/// When `user` blocks `item`: subscribers it names see the user go away (XEP-0191 §3.3).
pub async fn unavailable_to_blocked(
    state: &ServerState,
    user: &BareJid,
    item: &str,
) -> Result<(), StoreError> {
    let recipients = subscribers_named(state, user, item)?;
    for session in state.router.available(user) {
        let mut el = Element::bare("presence", ns::CLIENT);
        set_attr(&mut el, "from", session.jid.as_str());
        set_attr(&mut el, "type", "unavailable");
        for recipient in &recipients {
            send_one(recipient, &addressed(&el, recipient.jid.to_bare().as_str())).await;
        }
    }
    Ok(())
}

/// When `user` unblocks `item`: subscribers it names get the user's presence again (§3.5).
pub async fn presence_to_unblocked(
    state: &ServerState,
    user: &BareJid,
    item: &str,
) -> Result<(), StoreError> {
    let recipients = subscribers_named(state, user, item)?;
    current_presence_to(state, user, &recipients).await;
    Ok(())
}

/// Sends unavailable presence from each available session of `contact` to `user`'s available
/// sessions (after a subscription ended).
async fn unavailable_to(state: &ServerState, contact: &BareJid, user: &BareJid) {
    for session in state.router.available(contact) {
        let mut el = Element::bare("presence", ns::CLIENT);
        set_attr(&mut el, "from", session.jid.as_str());
        set_attr(&mut el, "type", "unavailable");
        to_available(state, user, &el).await;
    }
}

/// A subscription stanza from `from` to `to` (bare JIDs, RFC 6121 §3: subscription stanzas carry
/// bare JIDs), keeping the original's status and nick.
fn subscription_stanza(
    kind: Subscribe,
    from: &BareJid,
    to: &BareJid,
    original: Option<&Element>,
) -> Element {
    let mut el = Element::bare("presence", ns::CLIENT);
    set_attr(&mut el, "from", from.as_str());
    set_attr(&mut el, "to", to.as_str());
    set_attr(&mut el, "type", kind.as_str());
    if let Some(original) = original {
        for child in original.children() {
            el.append_child(child.clone());
        }
    }
    el
}

fn new_item(contact: &BareJid, listed: bool) -> RosterItem {
    RosterItem {
        jid: contact.to_string(),
        listed,
        ..Default::default()
    }
}

/// `user` sends a subscription stanza of `kind` to `contact` (both local): the user's server's
/// outbound processing, then the contact's server's inbound processing (RFC 6121 §3 and appendix A).
pub async fn send_subscription(
    state: &ServerState,
    user: &BareJid,
    contact: &BareJid,
    kind: Subscribe,
    original: Option<&Element>,
) -> Result<(), StoreError> {
    process_subscription(state, user, contact, kind, original, None).await
}

/// After the user removed `contact` from the roster (RFC 6121 §2.5.2): the contact's side of the
/// unsubscribe/unsubscribed, decided from the item as it was; the user's side is already gone.
pub async fn after_roster_removal(
    state: &ServerState,
    user: &BareJid,
    contact: &BareJid,
    kind: Subscribe,
    removed: RosterItem,
) -> Result<(), StoreError> {
    process_subscription(state, user, contact, kind, None, Some(removed)).await
}

async fn process_subscription(
    state: &ServerState,
    user: &BareJid,
    contact: &BareJid,
    kind: Subscribe,
    original: Option<&Element>,
    removed: Option<RosterItem>,
) -> Result<(), StoreError> {
    let rosters = &state.stores.rosters;
    // The user's own item is updated only when it still exists.
    let keep_mine = removed.is_none();
    if super::blocking::blocks(state, contact, &Jid::from(user.clone())) {
        // XEP-0191: nothing from a blocked user reaches the contact, and no answer comes back.
        return Ok(());
    }
    let contact_exists = state.accounts.exists(contact)?;
    let mut mine = match removed {
        Some(item) => Some(item),
        None => rosters.item(user, contact)?,
    };
    let mut theirs = if contact_exists {
        rosters.item(contact, user)?
    } else {
        None
    };
    match kind {
        Subscribe::Subscribe => {
            // §3.1.2: the user's item gets ask=subscribe (created if needed) unless already subscribed.
            let mut item = mine.take().unwrap_or_else(|| new_item(contact, true));
            if !item.subscription.to() && (!item.ask || !item.listed) {
                item.ask = true;
                item.listed = true;
                save_and_push(state, user, &item).await?;
            }
            if !contact_exists {
                // §3.1.3: no such contact: the contact's server answers unsubscribed.
                inbound_unsubscribed(state, user, contact).await?;
            } else {
                let mut other = theirs.take().unwrap_or_else(|| new_item(user, false));
                if other.subscription.from() {
                    // Already approved: auto-reply (§3.1.3).
                    inbound_subscribed(state, user, contact).await?;
                } else if other.preapproved {
                    // §3.4: approved in advance.
                    other.preapproved = false;
                    other.subscription = other.subscription.with_from(true);
                    other.listed = true;
                    save_and_push(state, contact, &other).await?;
                    inbound_subscribed(state, user, contact).await?;
                    current_presence_to(state, contact, &state.router.available(user)).await;
                } else if other.pending_in.is_none() {
                    // Kept until answered and re-sent at each login; shown to available resources now.
                    // A repeated request is neither stored twice nor delivered again (RFC 6121 A.3.1).
                    let stanza = subscription_stanza(Subscribe::Subscribe, user, contact, original);
                    other.pending_in =
                        Some(String::from_utf8_lossy(&xml::serialize(&stanza)).into_owned());
                    state.stores.rosters.put(contact, &other, false)?;
                    to_available(state, contact, &stanza).await;
                }
            }
        }
        Subscribe::Subscribed => {
            // The user approves the contact's request to see the user's presence (§3.1.5).
            match mine {
                Some(mut item) if item.pending_in.is_some() => {
                    item.pending_in = None;
                    item.subscription = item.subscription.with_from(true);
                    item.listed = true;
                    save_and_push(state, user, &item).await?;
                }
                Some(item) if item.subscription.from() => return Ok(()),
                other => {
                    // No request to answer: a pre-approval (§3.4).
                    let mut item = other.unwrap_or_else(|| new_item(contact, true));
                    if !item.preapproved {
                        item.preapproved = true;
                        item.listed = true;
                        save_and_push(state, user, &item).await?;
                    }
                    state.stores.flush().await?;
                    return Ok(());
                }
            }
            if contact_exists {
                inbound_subscribed(state, contact, user).await?;
                // The contact now receives the user's presence (§3.1.5).
                current_presence_to(state, user, &state.router.available(contact)).await;
                // ...and is a new subscriber of the user's PEP nodes (XEP-0163 §4.3.3).
                for session in state.router.available(contact) {
                    if let Some(notify) = session.presence.notify() {
                        super::pep::last_items_of(state, user, &session, &notify).await;
                    }
                }
            }
        }
        Subscribe::Unsubscribe => {
            // The user no longer wants the contact's presence (§3.3).
            if let Some(mut item) = mine.filter(|i| keep_mine && (i.subscription.to() || i.ask)) {
                item.subscription = item.subscription.with_to(false);
                item.ask = false;
                save_and_push(state, user, &item).await?;
            }
            if let Some(mut other) =
                theirs.filter(|i| i.subscription.from() || i.pending_in.is_some())
            {
                let was_subscribed = other.subscription.from();
                other.subscription = other.subscription.with_from(false);
                other.pending_in = None;
                to_interested(
                    state,
                    contact,
                    &subscription_stanza(kind, user, contact, original),
                )
                .await;
                if other.listed {
                    save_and_push(state, contact, &other).await?;
                } else {
                    state.stores.rosters.remove(contact, user, false)?;
                }
                if was_subscribed {
                    unavailable_to(state, contact, user).await;
                }
            }
        }
        Subscribe::Unsubscribed => {
            // The user cancels or denies the contact's subscription to the user (§3.2).
            let was_subscribed = mine.as_ref().is_some_and(|i| i.subscription.from());
            // Routed only when it cancels a subscription or denies a request; cancelling just a
            // pre-approval stays local (RFC 6121 §3.2.2).
            let route = mine
                .as_ref()
                .is_some_and(|i| i.subscription.from() || i.pending_in.is_some());
            if let Some(mut item) = mine.filter(|i| {
                keep_mine && (i.subscription.from() || i.pending_in.is_some() || i.preapproved)
            }) {
                item.subscription = item.subscription.with_from(false);
                item.pending_in = None;
                item.preapproved = false;
                if item.listed {
                    save_and_push(state, user, &item).await?;
                } else {
                    state.stores.rosters.remove(user, contact, false)?;
                }
            }
            if was_subscribed {
                unavailable_to(state, user, contact).await;
            }
            if contact_exists && route {
                inbound_unsubscribed(state, contact, user).await?;
            }
        }
    }
    state.stores.flush().await
}

/// At `subscriber`'s side: `contact` approved its subscription request (§3.1.6).
async fn inbound_subscribed(
    state: &ServerState,
    subscriber: &BareJid,
    contact: &BareJid,
) -> Result<(), StoreError> {
    let Some(mut item) = state.stores.rosters.item(subscriber, contact)? else {
        return Ok(());
    };
    if !item.ask || item.subscription.to() {
        // Not asked for, or already subscribed: ignored without a state change.
        return Ok(());
    }
    item.ask = false;
    item.subscription = item.subscription.with_to(true);
    // The stanza reaches the user's resources before the roster push (RFC 6121 §3.1.6).
    to_interested(
        state,
        subscriber,
        &subscription_stanza(Subscribe::Subscribed, contact, subscriber, None),
    )
    .await;
    save_and_push(state, subscriber, &item).await?;
    Ok(())
}

/// At `subscriber`'s side: `contact` cancelled or denied its subscription (§3.2.3).
async fn inbound_unsubscribed(
    state: &ServerState,
    subscriber: &BareJid,
    contact: &BareJid,
) -> Result<(), StoreError> {
    let Some(mut item) = state.stores.rosters.item(subscriber, contact)? else {
        return Ok(());
    };
    if !item.ask && !item.subscription.to() {
        return Ok(());
    }
    item.ask = false;
    item.subscription = item.subscription.with_to(false);
    to_interested(
        state,
        subscriber,
        &subscription_stanza(Subscribe::Unsubscribed, contact, subscriber, None),
    )
    .await;
    save_and_push(state, subscriber, &item).await?;
    Ok(())
}
