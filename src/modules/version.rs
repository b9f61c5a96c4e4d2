//! XEP-0092 Software Version of the server.

use minidom::Element;
use xmpp_parsers::version::{VersionQuery, VersionResult};

use super::{parse, IqResult, Module, Spec, Support};
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "version",
    disco_features: &[ns::VERSION],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        92,
        "1.1",
        Support::Complete,
        "name, version and operating system of the server",
    )],
};

pub fn handle(set: bool, payload: &Element) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    parse::<VersionQuery>(payload)?;
    Ok(Some(
        VersionResult {
            name: "Rookery".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            os: Some(std::env::consts::OS.into()),
        }
        .into(),
    ))
}
