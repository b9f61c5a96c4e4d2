//! The `<stream:features/>` offered at each stage of negotiation, and the stream layer's declaration
//! of the specifications it implements.

use super::{Negotiation, Stage};
use crate::auth::Mechanism;
use crate::modules::{Module, Spec, Support};
use crate::xml::ns;

/// The stream layer: RFC 6120 negotiation, direct TLS, SASL channel binding.
pub const MODULE: Module = Module {
    name: "stream",
    disco_features: &[],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::rfc(
            6120,
            Support::Partial,
            "TLS, SASL, bind, stream errors; no server-to-server yet",
        ),
        Spec::rfc(7590, Support::Complete, "TLS 1.2 and 1.3 via rustls"),
        Spec::rfc(
            9266,
            Support::Complete,
            "tls-exporter channel binding for SCRAM-*-PLUS on TLS 1.3",
        ),
        Spec::xep(
            368,
            "1.1.0",
            Support::Complete,
            "direct TLS listener ([c2s] direct_tls_listen)",
        ),
        Spec::xep(440, "1.0.0", Support::Complete, "advertises tls-exporter"),
    ],
};

/// Renders the features for the stream just opened.
pub(super) fn render(n: &Negotiation) -> Vec<u8> {
    let mut out = String::from("<stream:features>");
    match n.stage {
        Stage::Unauthenticated => {
            let require = n.state.config.c2s.require_encryption;
            if !n.tls {
                out.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if require {
                    out.push_str("<required/>");
                }
                out.push_str("</starttls>");
            }
            if n.tls || !require {
                out.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                for m in Mechanism::offered(n.tls, n.channel_binding.is_some(), require) {
                    out.push_str("<mechanism>");
                    out.push_str(m.name());
                    out.push_str("</mechanism>");
                }
                out.push_str("</mechanisms>");
                if n.channel_binding.is_some() {
                    out.push_str("<sasl-channel-binding xmlns='");
                    out.push_str(ns::SASL_CB);
                    out.push_str("'><channel-binding type='tls-exporter'/></sasl-channel-binding>");
                }
            }
            if n.registration_open() {
                out.push_str("<register xmlns='http://jabber.org/features/iq-register'/>");
            }
        }
        Stage::Authenticated => {
            out.push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
            for feature in crate::modules::stream_features() {
                out.push_str(feature);
            }
            out.push_str(
                "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>",
            );
        }
    }
    out.push_str("</stream:features>");
    out.into_bytes()
}
