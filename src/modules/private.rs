//! XEP-0049 private XML storage: a user keeps arbitrary XML on the server under a namespace only
//! they can read.

use minidom::Element;

use super::{IqResult, Module, Spec, Support};
use crate::error::{StanzaError, StanzaErrorCondition};
use crate::session::SessionCtx;
use crate::xml::{self, ns};

pub const MODULE: Module = Module {
    name: "private",
    disco_features: &[ns::PRIVATE],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        49,
        "1.2",
        Support::Complete,
        "per-account storage by element name and namespace",
    )],
};

fn key(el: &Element) -> String {
    format!("private:{{{}}}{}", el.ns(), el.name())
}

/// `jabber:iq:private` from the user's own session (to no one or to the own bare JID).
pub async fn handle(ctx: &SessionCtx, set: bool, payload: &Element) -> IqResult {
    let user = ctx.jid.to_bare();
    let children: Vec<&Element> = payload.children().collect();
    if children.is_empty() {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "name the data with one child element",
        ));
    }
    for child in &children {
        // XEP-0049 §3: these namespaces may not be used as storage keys.
        if matches!(
            child.ns().as_str(),
            "" | ns::CLIENT | "jabber:server" | ns::PRIVATE
        ) {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "that namespace cannot be stored",
            ));
        }
    }
    let values = &ctx.state.stores.values;
    if set {
        let mut bookmarks = None;
        for child in &children {
            // XEP-0402 §compat: old-style bookmarks live in the PEP node, shared with new clients.
            if child.is("storage", super::pep::NS_LEGACY_BOOKMARKS) {
                bookmarks = Some(*child);
                continue;
            }
            values.set_value(&user, &key(child), &xml::serialize(child))?;
        }
        ctx.state.stores.flush().await?;
        if let Some(storage) = bookmarks {
            super::pep::set_legacy_bookmarks(&ctx.state, &user, storage).await?;
        }
        return Ok(None);
    }
    if children.len() != 1 {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "ask for one element at a time",
        ));
    }
    let asked = children[0];
    if asked.is("storage", super::pep::NS_LEGACY_BOOKMARKS) {
        if let Some(storage) = super::pep::legacy_bookmarks(&ctx.state, &user)? {
            let mut query = Element::bare("query", ns::PRIVATE);
            query.append_child(storage);
            return Ok(Some(query));
        }
    }
    let stored = values
        .get_value(&user, &key(asked))?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<Element>().ok())
        .unwrap_or_else(|| asked.clone());
    let mut query = Element::bare("query", ns::PRIVATE);
    query.append_child(stored);
    Ok(Some(query))
}
