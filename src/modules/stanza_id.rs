//! XEP-0359 unique and stable stanza IDs: every message the server delivers to or stores for a local
//! user carries a `<stanza-id by='user@domain'/>` of ours; one claiming to be ours from elsewhere is
//! removed first, so clients can trust it.

use jid::BareJid;
use minidom::Element;

use super::{Module, Spec, Support};
use crate::error::set_attr;
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "stanza-id",
    disco_features: &[ns::STANZA_ID],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        359,
        "0.7.0",
        Support::Complete,
        "stanza-id stamped on every message delivered or stored",
    )],
};

/// Removes any `<stanza-id/>` claiming to be by `by` (XEP-0359 §5: they could be forged).
pub fn strip(message: &mut Element, by: &BareJid) {
    crate::xml::retain_children(message, |c| {
        !(c.is("stanza-id", ns::STANZA_ID) && c.attr("by") == Some(by.as_str()))
    });
}

/// Replaces any `<stanza-id/>` by `by` with a new one, and returns the new id.
pub fn stamp(message: &mut Element, by: &BareJid) -> String {
    let id = new_id();
    stamp_with(message, by, &id);
    id
}

/// Replaces any `<stanza-id/>` by `by` with one of the given id (an archive's, XEP-0313 §3.1).
pub fn stamp_with(message: &mut Element, by: &BareJid, id: &str) {
    strip(message, by);
    let mut stanza_id = Element::bare("stanza-id", ns::STANZA_ID);
    set_attr(&mut stanza_id, "id", id);
    set_attr(&mut stanza_id, "by", by.as_str());
    message.append_child(stanza_id);
}

/// A random id, 128 bits, URL-safe base64.
pub fn new_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_ids_by_the_recipient_are_replaced() {
        let by = BareJid::new("bob@example.org").unwrap();
        let mut m: Element = "<message xmlns='jabber:client'><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' id='fake' by='bob@example.org'/><stanza-id xmlns='urn:xmpp:sid:0' id='other' by='room@muc.example.org'/></message>".parse().unwrap();
        let id = stamp(&mut m, &by);
        let ids: Vec<(String, String)> = m
            .children()
            .filter(|c| c.is("stanza-id", ns::STANZA_ID))
            .map(|c| {
                (
                    c.attr("id").unwrap().to_string(),
                    c.attr("by").unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                ("other".to_string(), "room@muc.example.org".to_string()),
                (id, "bob@example.org".to_string())
            ]
        );
        assert!(m.has_child("body", ns::CLIENT));
    }
}
