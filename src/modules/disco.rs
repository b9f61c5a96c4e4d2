//! XEP-0030 Service Discovery: the server's identity and features (collected from the module
//! declarations), its items, and the identity of an account.

use minidom::Element;
use xmpp_parsers::disco::{
    DiscoInfoQuery, DiscoInfoResult, DiscoItemsQuery, DiscoItemsResult, Identity,
};

use super::{parse, IqResult, Module, Spec, Support, Target};
use crate::error::StanzaErrorCondition;
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "disco",
    disco_features: &[ns::DISCO_INFO, ns::DISCO_ITEMS],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        30,
        "2.5.0",
        Support::Partial,
        "info and items of the server and of accounts; no nodes",
    )],
};

pub fn info(set: bool, payload: &Element, target: Target) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    if parse::<DiscoInfoQuery>(payload)?.node.is_some() {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    }
    let (identity, features) = match target {
        Target::Server => (
            Identity::new("server", "im", "en", "Rookery"),
            super::disco_features(),
        ),
        Target::Account => (
            Identity {
                category: "account".into(),
                type_: "registered".into(),
                lang: None,
                name: None,
            },
            super::account_features(),
        ),
    };
    // XEP-0163 §6.1: every account is a PEP service.
    let pep = (target == Target::Account).then(|| Identity {
        category: "pubsub".into(),
        type_: "pep".into(),
        lang: None,
        name: None,
    });
    let result = DiscoInfoResult {
        node: None,
        identities: std::iter::once(identity).chain(pep).collect(),
        features: features.into_iter().map(String::from).collect(),
        extensions: Vec::new(),
    };
    Ok(Some(result.into()))
}

/// An account's items: its PEP nodes (node name, title) that the asker may see.
pub fn node_items(nodes: Vec<(String, String)>, owner: &jid::BareJid) -> IqResult {
    let items = nodes
        .into_iter()
        .map(|(node, title)| xmpp_parsers::disco::Item {
            jid: jid::Jid::from(owner.clone()),
            node: Some(node),
            name: (!title.is_empty()).then_some(title),
        })
        .collect();
    Ok(Some(
        DiscoItemsResult {
            node: None,
            items,
            rsm: None,
        }
        .into(),
    ))
}

/// The server's items are its services (the group chat service); an account lists none here.
pub fn items(services: &[&str], set: bool, payload: &Element, target: Target) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    if parse::<DiscoItemsQuery>(payload)?.node.is_some() {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    }
    let items = match target {
        Target::Server => services
            .iter()
            .filter_map(|service| jid::Jid::new(service).ok())
            .map(|jid| xmpp_parsers::disco::Item {
                jid,
                node: None,
                name: None,
            })
            .collect(),
        Target::Account => Vec::new(),
    };
    let result = DiscoItemsResult {
        node: None,
        items,
        rsm: None,
    };
    Ok(Some(result.into()))
}
