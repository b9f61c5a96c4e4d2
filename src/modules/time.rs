//! XEP-0202 Entity Time of the server.

use chrono::Offset;
use minidom::Element;
use xmpp_parsers::time::{TimeQuery, TimeResult};

use super::{parse, IqResult, Module, Spec, Support};
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "time",
    disco_features: &[ns::TIME],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        202,
        "2.0",
        Support::Complete,
        "UTC time and the server's offset",
    )],
};

pub fn handle(set: bool, payload: &Element) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    parse::<TimeQuery>(payload)?;
    let now = chrono::Local::now();
    Ok(Some(
        TimeResult {
            tz_offset: now.offset().fix(),
            utc: now.with_timezone(&chrono::Utc),
        }
        .into(),
    ))
}
