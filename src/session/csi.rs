//! XEP-0352 client state indication: while a client says it is inactive (a phone in a pocket), the
//! server holds back what is only noise — presence updates and chat states — and sends it all when
//! something important arrives or the client is active again. Messages go out at once.

use bytes::Bytes;

use crate::modules::{Module, Spec, Support};

pub const NS: &str = "urn:xmpp:csi:0";

pub const MODULE: Module = Module {
    name: "csi",
    disco_features: &[],
    account_features: &[],
    stream_features: &["<csi xmlns='urn:xmpp:csi:0'/>"],
    specs: &[Spec::xep(
        352,
        "1.0.0",
        Support::Complete,
        "presence and chat-state-only messages held while inactive; one presence kept per sender",
    )],
};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a serialized stanza can wait while the client is inactive: presence (other than
/// subscription requests) and messages that carry only a chat state.
pub fn can_wait(stanza: &[u8]) -> bool {
    if stanza.starts_with(b"<presence") {
        return !contains(stanza, b"type='subscribe'");
    }
    stanza.starts_with(b"<message")
        && contains(stanza, b"http://jabber.org/protocol/chatstates")
        && !contains(stanza, b"<body")
}

/// The `from` attribute of a serialized stanza (for keeping one presence per sender).
fn from_of(stanza: &[u8]) -> Option<&[u8]> {
    let start = stanza.windows(6).position(|w| w == b"from='")? + 6;
    let len = stanza[start..].iter().position(|&b| b == b'\'')?;
    Some(&stanza[start..start + len])
}

/// Stanzas held while inactive, in order.
#[derive(Default)]
pub struct Held(Vec<Bytes>);

impl Held {
    /// Holds a stanza; a newer presence from the same sender replaces the older one.
    pub fn hold(&mut self, stanza: Bytes) {
        if stanza.starts_with(b"<presence") {
            if let Some(from) = from_of(&stanza) {
                let from = from.to_vec();
                self.0.retain(|s| {
                    !(s.starts_with(b"<presence") && from_of(s) == Some(from.as_slice()))
                });
            }
        }
        self.0.push(stanza);
    }

    pub fn take(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_waits_messages_do_not() {
        assert!(can_wait(b"<presence xmlns='jabber:client' from='a@x/r'/>"));
        assert!(!can_wait(
            b"<presence xmlns='jabber:client' from='a@x' type='subscribe'/>"
        ));
        assert!(can_wait(
            b"<message xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ));
        assert!(!can_wait(
            b"<message xmlns='jabber:client'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ));
        assert!(!can_wait(b"<iq xmlns='jabber:client' type='set' id='x'/>"));
    }

    #[test]
    fn one_presence_per_sender() {
        let mut held = Held::default();
        held.hold(Bytes::from_static(
            b"<presence from='a@x/r'><show>away</show></presence>",
        ));
        held.hold(Bytes::from_static(b"<presence from='b@x/r'/>"));
        held.hold(Bytes::from_static(
            b"<presence from='a@x/r'><show>dnd</show></presence>",
        ));
        let out = held.take();
        assert_eq!(out.len(), 2);
        assert!(out[1].starts_with(b"<presence from='a@x/r'><show>dnd"));
    }
}
