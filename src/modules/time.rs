//! XEP-0202 Entity Time of the server.

use minidom::Element;

use super::{IqResult, Module, Spec, Support};
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "time",
    disco_features: &[ns::TIME],
    specs: &[Spec::xep(
        202,
        "2.0",
        Support::Complete,
        "UTC time and the server's offset",
    )],
};

pub fn handle(set: bool) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    let now = chrono::Local::now();
    let mut time = Element::bare("time", ns::TIME);
    let mut tzo = Element::bare("tzo", ns::TIME);
    tzo.append_text(now.format("%:z").to_string());
    let mut utc = Element::bare("utc", ns::TIME);
    // XEP-0082 DateTime profile, UTC, with milliseconds.
    utc.append_text(
        now.with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
    );
    time.append_child(tzo);
    time.append_child(utc);
    Ok(Some(time))
}
