//! XEP-0280 message carbons: every resource of an account that enabled carbons sees the
//! conversation, both what others sent to the account (`<received/>`) and what its other resources
//! sent (`<sent/>`), each wrapped with XEP-0297 forwarding.

use bytes::Bytes;
use jid::BareJid;
use minidom::Element;

use super::{IqResult, Module, Spec, Support};
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::router::{Outbound, SessionHandle};
use crate::server::ServerState;
use crate::session::SessionCtx;
use crate::xml::{self, ns};

pub const MODULE: Module = Module {
    name: "carbons",
    disco_features: &[ns::CARBONS],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::xep(
            280,
            "1.0.1",
            Support::Complete,
            "received and sent copies; <private/> honoured",
        ),
        Spec::xep(
            297,
            "1.0",
            Support::Complete,
            "forwarding wrapper for carbons and offline copies",
        ),
    ],
};

/// Payloads that make a message worth copying even without a body (XEP-0280 §6).
const IM_PAYLOADS: &[&str] = &[
    "urn:xmpp:receipts",
    ns::CHATSTATES,
    "urn:xmpp:chat-markers:0",
    "jabber:x:conference",
];

/// `<enable/>` or `<disable/>` from the user's own session.
pub fn handle(ctx: &SessionCtx, set: bool, payload: &Element) -> IqResult {
    if !set {
        return Err(super::wrong_type());
    }
    match payload.name() {
        "enable" => ctx.handle.presence.set_carbons(true),
        "disable" => ctx.handle.presence.set_carbons(false),
        _ => {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "expected enable or disable",
            ))
        }
    }
    Ok(None)
}

/// XEP-0280 §6: which messages are copied.
pub fn eligible(message: &Element) -> bool {
    if message.name() != "message" || message.has_child("private", ns::CARBONS) {
        return false;
    }
    match message.attr("type") {
        Some("groupchat") | Some("error") | Some("headline") => false,
        Some("chat") => true,
        _ => {
            message.has_child("body", ns::CLIENT)
                || message
                    .children()
                    .any(|c| IM_PAYLOADS.contains(&c.ns().as_str()))
        }
    }
}

/// The carbons-enabled sessions of `user`, except those listed.
fn enabled(state: &ServerState, user: &BareJid, except: &[u64]) -> Vec<SessionHandle> {
    let mut sessions = state.router.resources(user);
    sessions.retain(|s| s.presence.carbons() && !except.contains(&s.id));
    sessions
}

/// Wraps a message for one copy: `<message from=bare to=full type=same><kind><forwarded>…`.
fn wrap(kind: &str, user: &BareJid, to: &str, message: &Element) -> Element {
    let mut forwarded = Element::bare("forwarded", ns::FORWARD);
    forwarded.append_child(message.clone());
    let mut wrapper = Element::bare(kind, ns::CARBONS);
    wrapper.append_child(forwarded);
    let mut copy = Element::bare("message", ns::CLIENT);
    set_attr(&mut copy, "from", user.as_str());
    set_attr(&mut copy, "to", to);
    if let Some(kind) = message.attr("type") {
        set_attr(&mut copy, "type", kind);
    }
    copy.append_child(wrapper);
    copy
}

async fn copy_to(kind: &str, user: &BareJid, message: &Element, sessions: Vec<SessionHandle>) {
    for session in sessions {
        let copy = wrap(kind, user, session.jid.as_str(), message);
        session
            .send(Outbound::Stanza(Bytes::from(xml::serialize(&copy))))
            .await;
    }
}

/// A message delivered to `user`'s sessions `delivered`: copies for the other enabled ones.
pub async fn received(
    state: &ServerState,
    user: &BareJid,
    message: &Element,
    delivered: &[SessionHandle],
) {
    if !eligible(message) {
        return;
    }
    let except: Vec<u64> = delivered.iter().map(|s| s.id).collect();
    let sessions = enabled(state, user, &except);
    if !sessions.is_empty() {
        Box::pin(copy_to("received", user, message, sessions)).await;
    }
}

/// A message the session's client sent: copies for the account's other enabled sessions, with
/// the id the account's archive gave it (XEP-0313 §3.1), if it was archived.
pub async fn sent(ctx: &SessionCtx, message: &Element, archive_id: Option<&str>) {
    let user = ctx.jid.to_bare();
    let sessions = enabled(&ctx.state, &user, &[ctx.handle.id]);
    if sessions.is_empty() || !eligible(message) {
        return;
    }
    match archive_id {
        Some(id) => {
            let mut stamped = message.clone();
            super::stanza_id::stamp_with(&mut stamped, &user, id);
            Box::pin(copy_to("sent", &user, &stamped, sessions)).await
        }
        None => Box::pin(copy_to("sent", &user, message, sessions)).await,
    }
}
