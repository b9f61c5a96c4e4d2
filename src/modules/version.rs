//! XEP-0092 Software Version of the server.

use minidom::Element;

use super::{IqResult, Module, Spec, Support};
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "version",
    disco_features: &[ns::VERSION],
    specs: &[Spec::xep(
        92,
        "1.1",
        Support::Complete,
        "name, version and operating system of the server",
    )],
};

pub fn handle(set: bool) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    let mut query = Element::bare("query", ns::VERSION);
    for (name, value) in [
        ("name", "Rookery"),
        ("version", env!("CARGO_PKG_VERSION")),
        ("os", std::env::consts::OS),
    ] {
        let mut el = Element::bare(name, ns::VERSION);
        el.append_text(value);
        query.append_child(el);
    }
    Ok(Some(query))
}
