//! Where a stanza from a local session goes (RFC 6120 §10, RFC 6121 §8.5): to the server's own
//! handlers, to the sender's account, to another local session, or back as an error.
//!
//! This is the basic delivery the foundation needs; presence broadcast, priorities, offline storage
//! and carbons are layered on here by the one-to-one chat work.

use bytes::Bytes;
use jid::{BareJid, Jid};
use minidom::Element;

use crate::error::StanzaErrorCondition;
use crate::router::{Outbound, SessionHandle};
use crate::session::SessionCtx;
use crate::xml;

/// Routes a stanza whose `from` was stamped and whose `to` was parsed.
pub async fn route(ctx: &SessionCtx, el: Element, to: Option<Jid>) {
    let Some(to) = to else {
        // RFC 6120 §10.3: no 'to' means the server handles it on behalf of the sender's account.
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
    match to.resource() {
        None if bare == ctx.jid.to_bare() => to_own_account(ctx, el).await,
        None => to_bare(ctx, el, &bare).await,
        Some(_) => match to
            .try_as_full()
            .ok()
            .and_then(|full| ctx.state.router.get(full))
        {
            Some(session) => send(&el, std::slice::from_ref(&session)).await,
            None => match el.name() {
                // RFC 6121 §8.5.3.2.1: a normal or chat message to an unavailable resource is treated as
                // sent to the bare JID.
                "message" if matches!(el.attr("type"), None | Some("normal" | "chat")) => {
                    to_bare(ctx, el, &bare).await
                }
                // RFC 6121 §8.5.3.2.2: presence, headline and error messages to it are ignored.
                "presence" => {}
                "message" if matches!(el.attr("type"), Some("headline" | "error")) => {}
                _ => refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await,
            },
        },
    }
}

/// A stanza for the server itself.
async fn to_server(ctx: &SessionCtx, el: Element) {
    // RFC 6121 §8.5.1: a message to the server is ignored (or answered with an error); presence
    // without 'to' is a broadcast, which the presence module will handle.
    if el.name() == "iq" {
        crate::modules::server_iq(ctx, el).await
    }
}

/// A stanza to the sender's own bare JID: the server answers for the account.
async fn to_own_account(ctx: &SessionCtx, el: Element) {
    match el.name() {
        "iq" => crate::modules::account_iq(ctx, el).await,
        "message" => to_bare(ctx, el, &ctx.jid.to_bare()).await,
        _ => {}
    }
}

/// A stanza to another local account's bare JID.
async fn to_bare(ctx: &SessionCtx, el: Element, bare: &BareJid) {
    match ctx.state.accounts.exists(bare) {
        Ok(true) => {}
        Ok(false) => {
            // RFC 6121 §8.5.1: no such user.
            if el.name() != "presence" {
                refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await;
            }
            return;
        }
        Err(err) => {
            return refuse(ctx, &el, crate::error::StanzaError::from(err)).await;
        }
    }
    match el.name() {
        // RFC 6121 §8.5.2.1.3 (an iq to a bare JID is handled by the server for that account): none
        // of the account-level namespaces of other users are served yet.
        "iq" => refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await,
        "message" => {
            let sessions = ctx.state.router.resources(bare);
            if sessions.is_empty() {
                // Offline storage comes with the one-to-one chat work; until then the sender learns
                // at once that nothing was delivered.
                refuse(ctx, &el, StanzaErrorCondition::ServiceUnavailable).await;
            } else {
                send(&el, &sessions).await;
            }
        }
        _ => {
            let sessions = ctx.state.router.resources(bare);
            send(&el, &sessions).await;
        }
    }
}

/// Serializes once and queues the same bytes for every recipient.
async fn send(el: &Element, sessions: &[SessionHandle]) {
    let bytes = Bytes::from(xml::serialize(el));
    if bytes.is_empty() {
        return;
    }
    for session in sessions {
        session.send(Outbound::Stanza(bytes.clone())).await;
    }
}

async fn refuse(ctx: &SessionCtx, el: &Element, error: impl Into<crate::error::StanzaError>) {
    ctx.reply_error(el, error).await;
}
