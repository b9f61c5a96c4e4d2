//! XEP-0199 XMPP Ping: the server answers pings to itself (and to the sender's own account).

use minidom::Element;
use xmpp_parsers::ping::Ping;

use super::{parse, IqResult, Module, Spec, Support};
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "ping",
    disco_features: &[ns::PING],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        199,
        "2.0.1",
        Support::Complete,
        "client-to-server pings answered",
    )],
};

pub fn handle(set: bool, payload: &Element) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    parse::<Ping>(payload)?;
    Ok(None)
}
