//! XEP-0030 Service Discovery: the server's identity and features (collected from the module
//! declarations), its items, and the identity of an account.

use minidom::Element;

use super::{IqResult, Module, Spec, Support, Target};
use crate::error::{set_attr, StanzaErrorCondition};
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "disco",
    disco_features: &[ns::DISCO_INFO, ns::DISCO_ITEMS],
    specs: &[Spec::xep(
        30,
        "2.5.0",
        Support::Partial,
        "info and items of the server and of accounts; no nodes",
    )],
};

pub fn info(set: bool, query: &Element, target: Target) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    if query.attr("node").is_some() {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    }
    let mut result = Element::bare("query", ns::DISCO_INFO);
    let (category, kind, features): (&str, &str, Vec<&str>) = match target {
        Target::Server => ("server", "im", super::disco_features()),
        Target::Account => (
            "account",
            "registered",
            vec![ns::DISCO_INFO, ns::DISCO_ITEMS],
        ),
    };
    let mut identity = Element::bare("identity", ns::DISCO_INFO);
    set_attr(&mut identity, "category", category);
    set_attr(&mut identity, "type", kind);
    if target == Target::Server {
        set_attr(&mut identity, "name", "Rookery");
    }
    result.append_child(identity);
    for feature in features {
        let mut el = Element::bare("feature", ns::DISCO_INFO);
        set_attr(&mut el, "var", feature);
        result.append_child(el);
    }
    Ok(Some(result))
}

pub fn items(set: bool, query: &Element, _target: Target) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    if query.attr("node").is_some() {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    }
    // No components (conference, upload) yet.
    Ok(Some(Element::bare("query", ns::DISCO_ITEMS)))
}
