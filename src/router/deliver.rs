//! Where a stanza from a local session goes (RFC 6120 §10, RFC 6121 §8.5): to the server's own
//! handlers, to the sender's account, to other local sessions by the delivery rules, into offline
//! storage, or back as an error.

use bytes::Bytes;
use jid::{BareJid, Jid};
use minidom::Element;

use crate::error::{StanzaError, StanzaErrorCondition};
use crate::modules::{blocking, mam, offline, stanza_id};
use crate::router::{Outbound, SessionHandle};
use crate::session::SessionCtx;
use crate::xml;

/// A stanza to the group chat service or one of its rooms. Presence to a room is remembered as
/// directed presence, so that the room hears when the session goes away (RFC 6121 §4.6).
async fn to_muc(ctx: &SessionCtx, el: Element, to: &Jid) {
    if el.name() == "presence" && to.node().is_some() {
        crate::modules::presence::remember_directed(ctx, &el, to);
    }
    if crate::modules::muc::receive(&ctx.state, el, &ctx.jid, to).await {
        // Acknowledged means durable, the room's archive included.
        ctx.unflushed
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Routes a stanza whose `from` was stamped and whose `to` was parsed.
pub async fn route(ctx: &SessionCtx, el: Element, to: Option<Jid>) {
    if let Some(to) = &to {
        let sender = ctx.jid.to_bare();
        // The resources of one account are never blocked from each other (XEP-0191 §5).
        if to.node().is_some() && to.to_bare() != sender {
            let error = el.attr("type") == Some("error");
            // XEP-0191 §3.4: nothing goes to someone the user blocks (an error is just dropped)...
            if blocking::blocks(&ctx.state, &sender, to) {
                if !error {
                    refuse(ctx, &el, blocking::blocked_error()).await;
                }
                return;
            }
            // ...and nothing arrives from someone the recipient blocks (§3.3): presence silently,
            // messages and iq requests with <service-unavailable/>.
            let recipient = to.to_bare();
            if recipient != sender
                && to.domain().as_str() == ctx.state.domain
                && blocking::blocks(&ctx.state, &recipient, &Jid::from(ctx.jid.clone()))
            {
                if el.name() == "message" || is_request(&el) {
                    refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await;
                }
                return;
            }
        }
    }
    if let Some(to) = to.as_ref().filter(|to| ctx.state.muc.serves(to)) {
        return Box::pin(to_muc(ctx, el, to)).await;
    }
    if let Some(to) = to.as_ref().filter(|to| ctx.state.upload.serves(to)) {
        return Box::pin(crate::modules::upload::receive(ctx, el, to)).await;
    }
    if el.name() == "presence" {
        // Presence, iq handlers: boxed, so that the session's task is sized for the message path.
        return Box::pin(crate::modules::presence::outbound(ctx, el, to)).await;
    }
    let Some(to) = to else {
        // RFC 6120 §10.3: no 'to' means the server handles it on behalf of the sender's account; a
        // message is handled as sent to the sender's own bare JID (RFC 6121 §8.2).
        if el.name() == "message" {
            return to_bare(ctx, el, &ctx.jid.to_bare()).await;
        }
        return to_server(ctx, el).await;
    };
    if to.domain().as_str() != ctx.state.domain {
        // No server-to-server yet: RFC 6120 §10.4.3 (no route to the remote domain).
        return refuse(ctx, &el, StanzaErrorCondition::RemoteServerNotFound).await;
    }
    if to.node().is_none() {
        return to_server(ctx, el).await;
    }
    let bare = to.to_bare();
    match to.try_as_full() {
        Err(_) if bare == ctx.jid.to_bare() && el.name() == "iq" => {
            Box::pin(crate::modules::account_iq(ctx, el)).await
        }
        Err(_) => to_bare(ctx, el, &bare).await,
        Ok(full) => match ctx.state.router.get(full) {
            // RFC 6121 §8.5.3.1: the resource matches a connected session.
            // An iq get/set reaches another account's resource only if that account shares presence
            // with the sender (RFC 6121 §8.5.3.1); otherwise it would reveal who is online.
            Some(_) if is_request(&el) && !shares_presence(ctx, &bare) => {
                refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await
            }
            Some(session) => deliver(ctx, el, &bare, std::slice::from_ref(&session)).await,
            None => match el.name() {
                // §8.5.3.2.1: a normal or chat message to an unavailable resource is treated as sent to
                // the bare JID.
                "message" if matches!(el.attr("type"), None | Some("normal" | "chat")) => {
                    to_bare(ctx, el, &bare).await
                }
                // §8.5.3.2.1: headline and error messages to it are silently ignored.
                "message" if matches!(el.attr("type"), Some("headline" | "error")) => {}
                _ => refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await,
            },
        },
    }
}

/// A stanza for the server itself.
async fn to_server(ctx: &SessionCtx, el: Element) {
    // RFC 6121 §8.5.1 (and §10.3 of RFC 6120): a message to the server is ignored.
    if el.name() == "iq" {
        Box::pin(crate::modules::server_iq(ctx, el)).await
    }
}

/// A message or iq to a local account's bare JID (RFC 6121 §8.5.2).
async fn to_bare(ctx: &SessionCtx, el: Element, bare: &BareJid) {
    match ctx.state.accounts.exists(bare) {
        Ok(true) => {}
        // §8.5.1: no such user (a headline is dropped silently).
        Ok(false) if el.attr("type") == Some("headline") => return,
        Ok(false) => return refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await,
        Err(err) => return refuse(ctx, &el, StanzaError::from(err)).await,
    }
    if el.name() == "iq" {
        // §8.5.2.1.3: an iq to another user's bare JID is handled by the server for that account.
        return Box::pin(crate::modules::contact_iq(ctx, el, bare)).await;
    }
    let non_negative = ready(&ctx.state, bare);
    match el.attr("type").unwrap_or("normal") {
        // §8.5.2.1.1/§8.5.2.2.1: groupchat to a bare JID is an error.
        "groupchat" => refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await,
        // Headlines go to every non-negative resource, or nowhere.
        "headline" => deliver(ctx, el, bare, &non_negative).await,
        // §8.5.2.1.1: an error message to a bare JID is silently ignored.
        "error" => {}
        // normal and chat: the most available resources (equal top priority), else offline storage.
        _ if non_negative.is_empty() => Box::pin(store_offline(ctx, el, bare)).await,
        _ => deliver(ctx, el, bare, &highest(non_negative)).await,
    }
}

fn is_request(el: &Element) -> bool {
    el.name() == "iq" && matches!(el.attr("type"), Some("get" | "set"))
}

/// Whether `recipient` lets the sender see its presence: the same account, or a `from`/`both`
/// subscription.
fn shares_presence(ctx: &SessionCtx, recipient: &BareJid) -> bool {
    let sender = ctx.jid.to_bare();
    &sender == recipient
        || ctx
            .state
            .stores
            .rosters
            .item(recipient, &sender)
            .ok()
            .flatten()
            .is_some_and(|i| i.subscription.from())
}

/// The resources with the highest priority (RFC 6121 §8.5.2.1.1: "the most available resource(s)").
fn highest(mut sessions: Vec<SessionHandle>) -> Vec<SessionHandle> {
    let top = sessions.iter().map(|s| s.presence.priority()).max();
    sessions.retain(|s| Some(s.presence.priority()) == top);
    sessions
}

/// A message from one of the server's own services (a group chat room's invitation, ...) to a
/// local user's bare JID: to the most available resources (RFC 6121 §8.5.2.1.1), or into offline
/// storage, durable when this returns.
pub async fn service_message(
    state: &crate::server::ServerState,
    mut el: Element,
    to: &BareJid,
) -> Result<(), StanzaError> {
    if !state.accounts.exists(to)? {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::ItemNotFound,
            "no such user",
        ));
    }
    // Not archived: a notice from a service, not a conversation.
    let sessions = ready_or_stored(state, &mut el, to, None).await?;
    if !sessions.is_empty() {
        let bytes = Bytes::from(xml::serialize(&el));
        for session in sessions {
            session.send(Outbound::Stanza(bytes.clone())).await;
        }
    }
    Ok(())
}

/// The user's available resources that take messages to the bare JID (non-negative priority).
fn ready(state: &crate::server::ServerState, bare: &BareJid) -> Vec<SessionHandle> {
    let mut sessions = state.router.available(bare);
    sessions.retain(|s| s.presence.priority() >= 0);
    sessions
}

/// Decided under the user's offline gate, so that a session becoming available meanwhile cannot
/// miss the message: the most available resources to deliver it to now, or none when it was stored
/// for later (stamped with its stanza-id, durable on return). A message from a user (`sender`) is
/// archived for the recipient with the id it is stored with, and taken out again if it cannot be
/// stored (the archive holds only what was accepted, XEP-0313 §6.1).
async fn ready_or_stored(
    state: &crate::server::ServerState,
    el: &mut Element,
    bare: &BareJid,
    sender: Option<&Jid>,
) -> Result<Vec<SessionHandle>, StanzaError> {
    let _gate = state.offline_gate.lock(bare).await;
    let sessions = ready(state, bare);
    if !sessions.is_empty() {
        return Ok(highest(sessions));
    }
    let archived = sender.and_then(|sender| mam::record(state, bare, sender, el));
    if archived.is_none() {
        stanza_id::stamp(el, bare);
    }
    let refused = match offline::store(state, bare, el).await {
        Ok(true) => return Ok(Vec::new()),
        Ok(false) => StanzaError::with_text(
            StanzaErrorCondition::ServiceUnavailable,
            "the recipient's offline storage is full",
        ),
        Err(err) => StanzaError::from(err),
    };
    if let Some(archived) = archived {
        mam::unrecord(state, bare, &archived);
    }
    Err(refused)
}

/// XEP-0160: keep the message for later, or tell the sender why not.
async fn store_offline(ctx: &SessionCtx, mut el: Element, bare: &BareJid) {
    if !offline::worth_storing(&el) {
        // Chat states and the like are dropped for offline users (XEP-0160 §3, XEP-0085).
        return;
    }
    let sender = Jid::from(ctx.jid.clone());
    match ready_or_stored(&ctx.state, &mut el, bare, Some(&sender)).await {
        Ok(sessions) if sessions.is_empty() => {
            // Stored: the sender's side sees the message as sent, without the recipient's id.
            stanza_id::strip(&mut el, bare);
            sent(ctx, &el, bare).await;
        }
        Ok(sessions) => deliver(ctx, el, bare, &sessions).await,
        Err(error) => refuse(ctx, &el, error).await,
    }
}

/// A message the session's client sent was accepted for `recipient` (delivered or stored): the
/// sender's archive keeps it (XEP-0313), and the account's other resources get a copy with that
/// archive's id (XEP-0280). Refused messages get neither.
async fn sent(ctx: &SessionCtx, el: &Element, recipient: &BareJid) {
    let archived = mam::record_sent(ctx, el, recipient);
    crate::modules::carbons::sent(ctx, el, archived.as_deref()).await;
}

/// A message's sender side first (its archive, its carbons); then the recipient's: archived and
/// stamped with a stanza-id, serialized once, queued for every recipient session, and copied to
/// the recipient's other carbons-enabled resources.
async fn deliver(ctx: &SessionCtx, mut el: Element, bare: &BareJid, sessions: &[SessionHandle]) {
    if sessions.is_empty() {
        return;
    }
    let message = el.name() == "message";
    if message {
        sent(ctx, &el, bare).await;
    }
    let mut serialized = None;
    if message && el.attr("type") != Some("error") {
        // Into the recipient's archive, with the id it is archived under (serialized once, for
        // the archive and every recipient); or stamped with an id of its own.
        match mam::record(&ctx.state, bare, &Jid::from(ctx.jid.clone()), &mut el) {
            Some(recorded) => {
                ctx.unflushed
                    .store(true, std::sync::atomic::Ordering::Release);
                serialized = Some(recorded.bytes);
            }
            None => {
                stanza_id::stamp(&mut el, bare);
            }
        }
    } else if message {
        // No id of ours on an error, and no forged one either.
        stanza_id::strip(&mut el, bare);
    }
    let bytes = Bytes::from(serialized.unwrap_or_else(|| xml::serialize(&el)));
    if bytes.is_empty() {
        return;
    }
    // A message worth keeping is also kept in the recipient's queue until a client has it, so that
    // a crash between the sender's ack and the recipient's ack loses nothing.
    let key = if message && offline::worth_storing(&el) {
        match offline::keep_in_flight(&ctx.state, bare, &el, &bytes) {
            Ok(key) => {
                ctx.state.offline_claims.claim(bare, key);
                ctx.unflushed
                    .store(true, std::sync::atomic::Ordering::Release);
                Some(key)
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot keep a copy of a message in flight");
                None
            }
        }
    } else {
        None
    };
    let mut queued = false;
    for session in sessions {
        let item = match key {
            Some(key) => Outbound::Stored(bytes.clone(), key),
            None => Outbound::Stanza(bytes.clone()),
        };
        queued |= session.send(item).await;
    }
    if let (Some(key), false) = (key, queued) {
        // Every recipient session ended meanwhile: the stored copy waits for the next login, which
        // must be free to deliver it.
        ctx.state.offline_claims.release(bare, &[key]);
    }
    if message {
        crate::modules::carbons::received(&ctx.state, bare, &el, sessions).await;
    }
}

async fn refuse(ctx: &SessionCtx, el: &Element, error: impl Into<StanzaError>) {
    ctx.reply_error(el, error).await;
}
