//! The wire format: bytes in, one `minidom::Element` per top-level stanza out (`reader`), and
//! elements back to bytes (`serialize`). Nothing here touches sockets or knows about features.

pub mod lean;
pub mod reader;

pub use reader::{StreamHeader, XmlError, XmlEvent, XmlReader};

use minidom::Element;

/// Namespaces used across the server.
pub mod ns {
    pub const CLIENT: &str = "jabber:client";
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
    pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
    pub const REGISTER: &str = "jabber:iq:register";
    pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
    pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
    pub const PING: &str = "urn:xmpp:ping";
    pub const VERSION: &str = "jabber:iq:version";
    pub const TIME: &str = "urn:xmpp:time";
    pub const DATA_FORMS: &str = "jabber:x:data";
    pub const ROSTER: &str = "jabber:iq:roster";
    pub const DELAY: &str = "urn:xmpp:delay";
    pub const HINTS: &str = "urn:xmpp:hints";
    pub const STANZA_ID: &str = "urn:xmpp:sid:0";
    pub const LAST: &str = "jabber:iq:last";
    pub const VCARD: &str = "vcard-temp";
    pub const PRIVATE: &str = "jabber:iq:private";
    pub const CARBONS: &str = "urn:xmpp:carbons:2";
    pub const FORWARD: &str = "urn:xmpp:forward:0";
    pub const CSI: &str = "urn:xmpp:csi:0";
    pub const BLOCKING: &str = "urn:xmpp:blocking";
    pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
    pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
}

/// Escapes text for use in element content or a single- or double-quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Serializes one element for a `jabber:client` stream.
///
/// minidom writes the element's namespace as `xmlns` on the top element; inside a stream whose default
/// namespace is `jabber:client` that declaration is redundant but correct.
pub fn serialize(el: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if let Err(err) = el.write_to(&mut out) {
        // Only elements we built ourselves reach this point, so a failure is a bug of ours: log it and
        // send nothing rather than half an element.
        tracing::error!(error = %err, name = el.name(), "cannot serialize element");
        out.clear();
    }
    out
}

/// Keeps only the child elements for which `keep` is true (text and other nodes stay).
pub fn retain_children(el: &mut Element, keep: impl Fn(&Element) -> bool) {
    for node in el.take_nodes() {
        match &node {
            minidom::Node::Element(child) if !keep(child) => {}
            _ => el.append_node(node),
        }
    }
}

/// The opening of the server's stream (RFC 6120 §4.7), sent in answer to a client's header.
pub fn stream_header(domain: &str, id: &str, lang: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}' from='{}' version='1.0' xml:lang='{}'>",
        ns::CLIENT,
        ns::STREAM,
        escape(id),
        escape(domain),
        escape(lang)
    )
    .into_bytes()
}

/// The closing tag of a stream.
pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";
