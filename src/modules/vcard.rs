//! XEP-0054 vcard-temp: each account's vCard, stored as sent, readable by anyone, writable by its owner.

use minidom::Element;

use super::{IqResult, Module, Spec, Support};
use crate::error::{StanzaError, StanzaErrorCondition};
use crate::server::ServerState;
use crate::xml::{self, ns};

pub const MODULE: Module = Module {
    name: "vcard",
    disco_features: &[ns::VCARD],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::xep(
            54,
            "1.3.0",
            Support::Complete,
            "vCards stored as sent; anyone may read, only the owner may write",
        ),
        Spec::xep(
            153,
            "1.1.1",
            Support::Complete,
            "the server's part: vCard photos stored and served, presence photo hashes passed on unchanged",
        ),
    ],
};

const KEY: &str = "vcard-temp";

/// A vCard query to `owner`'s bare JID from `asker`.
pub async fn handle(
    state: &ServerState,
    asker: &jid::BareJid,
    owner: &jid::BareJid,
    set: bool,
    payload: &Element,
) -> IqResult {
    if !payload.is("vCard", ns::VCARD) {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "expected <vCard xmlns='vcard-temp'/>",
        ));
    }
    if set {
        if asker != owner {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        state
            .stores
            .values
            .set_value(owner, KEY, &xml::serialize(payload))?;
        state.stores.flush().await?;
        return Ok(None);
    }
    let stored = stored(state, owner)?;
    if stored.is_none() && asker != owner {
        // XEP-0054 §3.3: someone else's missing vCard looks like a missing account.
        return Err(StanzaErrorCondition::ServiceUnavailable.into());
    }
    // No vCard yet: an empty one (XEP-0054 §3.1).
    Ok(Some(
        stored.unwrap_or_else(|| Element::bare("vCard", ns::VCARD)),
    ))
}

/// `owner`'s stored vCard, if any (also what a room answers for an occupant, XEP-0045 §7.5).
pub fn stored(
    state: &ServerState,
    owner: &jid::BareJid,
) -> Result<Option<Element>, crate::store::StoreError> {
    Ok(state
        .stores
        .values
        .get_value(owner, KEY)?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<Element>().ok()))
}
