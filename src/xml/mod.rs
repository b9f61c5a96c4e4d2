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
    let mut out = Vec::with_capacity(text.len() + 8);
    escape_into(text, true, &mut out);
    // Only ASCII bytes were replaced, by ASCII: still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Serializes one element for a `jabber:client` stream.
///
/// Every element's namespace is its default namespace: the top element declares it (inside a stream
/// whose default is `jabber:client` that is redundant but correct), a child declares it only where
/// it differs from its parent's. Attributes in a namespace get a prefix (`xml:` for the XML
/// namespace, a declared one otherwise). Names and text were checked when the element was parsed or
/// built, so writing cannot fail; this runs once per stanza delivered, and is several times faster
/// than going through minidom's general writer (which validates and tracks prefixes again).
pub fn serialize(el: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_element(el, None, &mut out);
    out
}

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

fn write_element(el: &Element, parent_ns: Option<&str>, out: &mut Vec<u8>) {
    out.push(b'<');
    out.extend_from_slice(el.name().as_bytes());
    // `ns()` copies the namespace: compare first, copy only to write a declaration.
    if !parent_ns.is_some_and(|parent| el.has_ns(parent)) {
        let ns = el.ns();
        out.extend_from_slice(b" xmlns='");
        escape_into(&ns, true, out);
        out.push(b'\'');
        return write_rest(el, &ns, out);
    }
    write_rest(el, parent_ns.unwrap_or_default(), out)
}

fn write_rest(el: &Element, ns: &str, out: &mut Vec<u8>) {
    let mut prefixes = 0;
    for ((attr_ns, name), value) in el.attrs() {
        out.push(b' ');
        if attr_ns.as_str() == XML_NS {
            out.extend_from_slice(b"xml:");
        } else if !attr_ns.is_none() {
            // A namespace of its own: declared on this element under a fresh prefix.
            prefixes += 1;
            let prefix = format!("a{prefixes}");
            out.extend_from_slice(b"xmlns:");
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(b"='");
            escape_into(attr_ns.as_str(), true, out);
            out.extend_from_slice(b"' ");
            out.extend_from_slice(prefix.as_bytes());
            out.push(b':');
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"='");
        escape_into(value, true, out);
        out.push(b'\'');
    }
    let mut nodes = el.nodes().peekable();
    if nodes.peek().is_none() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    for node in nodes {
        match node {
            minidom::Node::Element(child) => write_element(child, Some(ns), out),
            minidom::Node::Text(text) => escape_into(text, false, out),
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(el.name().as_bytes());
    out.push(b'>');
}

/// Appends text escaped for element content or a single-quoted attribute value. Whitespace other
/// than a plain space is written as a character reference in attributes (a parser would normalize
/// it to a space), and a carriage return everywhere (a parser would drop it).
pub fn escape_into(text: &str, attribute: bool, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'\r' => b"&#xD;",
            b'\'' if attribute => b"&apos;",
            b'"' if attribute => b"&quot;",
            b'\n' if attribute => b"&#xA;",
            b'\t' if attribute => b"&#x9;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A serialized element with `child` (serialized) added as its last child, without parsing it
/// again: for a copy that differs from a shared serialization by one child.
pub fn with_last_child(serialized: &[u8], name: &str, child: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(serialized.len() + child.len() + name.len() + 3);
    let end_len = name.len() + 3;
    let closed = serialized.len() >= end_len
        && serialized.ends_with(b">")
        && serialized[serialized.len() - end_len..].starts_with(b"</")
        && &serialized[serialized.len() - end_len + 2..serialized.len() - 1] == name.as_bytes();
    if closed {
        out.extend_from_slice(&serialized[..serialized.len() - end_len]);
        out.extend_from_slice(child);
        out.extend_from_slice(&serialized[serialized.len() - end_len..]);
    } else if let Some(open) = serialized.strip_suffix(b"/>") {
        // An empty element: it gets content and an end tag.
        out.extend_from_slice(open);
        out.push(b'>');
        out.extend_from_slice(child);
        out.extend_from_slice(b"</");
        out.extend_from_slice(name.as_bytes());
        out.push(b'>');
    } else {
        out.extend_from_slice(serialized);
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

#[cfg(test)]
mod tests {

    #[test]
    fn a_last_child_goes_before_the_end_tag_or_makes_one() {
        let child = b"<delay xmlns='urn:xmpp:delay'/>";
        assert_eq!(
            with_last_child(b"<message xmlns='jabber:client'><body>x</body></message>", "message", child),
            b"<message xmlns='jabber:client'><body>x</body><delay xmlns='urn:xmpp:delay'/></message>".to_vec()
        );
        assert_eq!(
            with_last_child(b"<message xmlns='jabber:client'/>", "message", child),
            b"<message xmlns='jabber:client'><delay xmlns='urn:xmpp:delay'/></message>".to_vec()
        );
    }
    use super::*;

    fn round_trip(el: &Element) -> Element {
        let text = String::from_utf8(serialize(el)).unwrap();
        text.parse()
            .unwrap_or_else(|e| panic!("{text} does not parse: {e}"))
    }

    #[test]
    fn serialized_elements_parse_back_to_themselves() {
        let samples = [
            "<message xmlns='jabber:client' to='a@b/c' type='chat' id='1'><body>hi</body></message>",
            "<message xmlns='jabber:client'><body>a &lt; b &amp;&amp; c &gt; d ]]&gt; \"q\" 'a'\r\nline</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<iq xmlns='jabber:client' id='x&apos;&quot;&lt;&amp;' type='get'><query xmlns='jabber:iq:roster'><item jid='a@b' name='tab&#x9;new&#xA;line&#xD;'><group>G</group></item></query></iq>",
            "<message xmlns='jabber:client' xml:lang='en'><body xml:lang='de'>Hallo</body></message>",
            "<x xmlns='urn:a' xmlns:f='urn:foreign' f:attr='v' plain='w'><y xmlns='urn:b'><z/>text<z xmlns='urn:a'/></y>tail</x>",
            "<presence xmlns='jabber:client'/>",
            "<message xmlns='jabber:client'><body>ünïcødé 🐦 &#x9;tab</body></message>",
        ];
        for sample in samples {
            let el: Element = sample.parse().unwrap();
            assert_eq!(round_trip(&el), el, "{sample}");
        }
    }

    #[test]
    fn children_declare_only_a_changed_namespace() {
        let el: Element = "<message xmlns='jabber:client'><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' id='1' by='a@b'/></message>"
            .parse()
            .unwrap();
        let text = String::from_utf8(serialize(&el)).unwrap();
        assert!(
            text.starts_with("<message xmlns='jabber:client'>"),
            "{text}"
        );
        assert!(text.contains("<body>x</body>"), "{text}");
        assert!(
            text.contains("<stanza-id xmlns='urn:xmpp:sid:0' "),
            "{text}"
        );
    }
}
