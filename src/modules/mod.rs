//! Server features, one file each. Every module declares what it adds (disco features, the
//! specifications it implements); disco answers and `xeps/doap.xml` are derived from these
//! declarations, so what is advertised is what runs.

pub mod activity;
pub mod archive;
pub mod blocking;
pub mod caps;
pub mod carbons;
pub mod disco;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod register;
pub mod roster;
pub mod stanza_id;
pub mod time;
pub mod upload;
pub mod vcard;
pub mod version;

use minidom::Element;

use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::session::SessionCtx;
use crate::xml::ns;

/// What a module adds to the server.
pub struct Module {
    pub name: &'static str,
    /// `<feature var=.../>` entries for the server's disco#info.
    pub disco_features: &'static [&'static str],
    /// Features of each account's bare JID (what the server does on behalf of a user there).
    pub account_features: &'static [&'static str],
    /// Stream features offered once the client has authenticated (serialized elements).
    pub stream_features: &'static [&'static str],
    /// Specifications implemented, for `xeps/` and DOAP.
    pub specs: &'static [Spec],
}

/// How completely a specification is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Complete,
    Partial,
}

impl Support {
    pub fn as_str(self) -> &'static str {
        match self {
            Support::Complete => "complete",
            Support::Partial => "partial",
        }
    }
}

/// Which document a `Spec` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Document {
    Rfc(u32),
    Xep(u32),
}

/// One implemented specification.
pub struct Spec {
    pub document: Document,
    /// The XEP version implemented (empty for RFCs).
    pub version: &'static str,
    pub support: Support,
    pub note: &'static str,
}

impl Spec {
    pub const fn rfc(number: u32, support: Support, note: &'static str) -> Spec {
        Spec {
            document: Document::Rfc(number),
            version: "",
            support,
            note,
        }
    }

    pub const fn xep(
        number: u32,
        version: &'static str,
        support: Support,
        note: &'static str,
    ) -> Spec {
        Spec {
            document: Document::Xep(number),
            version,
            support,
            note,
        }
    }
}

/// SASL mechanisms live in `auth`; they add no disco feature but implement these documents.
pub const AUTH: Module = Module {
    name: "auth",
    disco_features: &[],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::rfc(
            4616,
            Support::Complete,
            "PLAIN, only over TLS unless [c2s] require_encryption = false",
        ),
        Spec::rfc(
            5802,
            Support::Complete,
            "SCRAM-SHA-1 and SCRAM-SHA-1-PLUS; salted keys stored, never passwords",
        ),
        Spec::rfc(
            7677,
            Support::Complete,
            "SCRAM-SHA-256 and SCRAM-SHA-256-PLUS",
        ),
    ],
};

/// Basic delivery between local sessions, and legacy session establishment.
pub const ROUTING: Module = Module {
    name: "routing",
    disco_features: &[],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::rfc(6121, Support::Partial, "roster, subscriptions, presence and RFC 6121 §8.5 delivery between local users; no federation"),
        Spec::rfc(7622, Support::Partial, "JIDs normalized with RFC 6122 stringprep rules (jid crate), not PRECIS"),
    ],
};

/// Every module, in the order their features are listed.
pub const MODULES: &[&Module] = &[
    &crate::stream::MODULE,
    &AUTH,
    &ROUTING,
    &disco::MODULE,
    &ping::MODULE,
    &version::MODULE,
    &time::MODULE,
    &register::MODULE,
    &roster::MODULE,
    &offline::MODULE,
    &stanza_id::MODULE,
    &crate::session::sm::MODULE,
    &activity::MODULE,
    &vcard::MODULE,
    &private::MODULE,
    &carbons::MODULE,
    &blocking::MODULE,
    &crate::session::csi::MODULE,
    &muc::MODULE,
    &archive::MODULE,
    &mam::MODULE,
    &upload::MODULE,
    &caps::MODULE,
    &pep::MODULE,
    &crate::transport::websocket::MODULE,
];

/// The server's disco#info features, from the module declarations, sorted and without repeats.
pub fn disco_features() -> Vec<&'static str> {
    let mut features: Vec<&'static str> = MODULES
        .iter()
        .flat_map(|m| m.disco_features.iter().copied())
        .collect();
    features.sort_unstable();
    features.dedup();
    features
}

/// The features an account's bare JID answers with, sorted and without repeats.
pub fn account_features() -> Vec<&'static str> {
    let mut features: Vec<&'static str> = [ns::DISCO_INFO, ns::DISCO_ITEMS]
        .into_iter()
        .chain(
            MODULES
                .iter()
                .flat_map(|m| m.account_features.iter().copied()),
        )
        .collect();
    features.sort_unstable();
    features.dedup();
    features
}

/// The stream features every module offers after authentication, in module order.
pub fn stream_features() -> impl Iterator<Item = &'static str> {
    MODULES
        .iter()
        .flat_map(|m| m.stream_features.iter().copied())
}

/// An iq result answering `iq`, addressed back to its sender.
pub fn result_for(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::bare("iq", ns::CLIENT);
    set_attr(&mut reply, "type", "result");
    if let Some(id) = iq.attr("id") {
        set_attr(&mut reply, "id", id);
    }
    if let Some(from) = iq.attr("from") {
        set_attr(&mut reply, "to", from);
    }
    if let Some(to) = iq.attr("to") {
        set_attr(&mut reply, "from", to);
    }
    if let Some(payload) = payload {
        reply.append_child(payload);
    }
    reply
}

/// What an iq handler returns: the result payload (if any) or a stanza error.
pub type IqResult = Result<Option<Element>, StanzaError>;

/// Which entity an iq is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The server (its domain, or no `to`).
    Server,
    /// The sender's own account (its bare JID).
    Account,
}

/// An iq addressed to the server.
pub async fn server_iq(ctx: &SessionCtx, iq: Element) {
    dispatch(ctx, iq, Target::Server).await
}

/// An iq addressed to the sender's own bare JID.
pub async fn account_iq(ctx: &SessionCtx, iq: Element) {
    dispatch(ctx, iq, Target::Account).await
}

async fn dispatch(ctx: &SessionCtx, iq: Element, target: Target) {
    let kind = iq.attr("type").unwrap_or("");
    if kind == "result" || kind == "error" {
        // An answer to the server's own question about a client's caps (XEP-0115).
        if target == Target::Server
            && iq
                .attr("id")
                .is_some_and(|id| id.starts_with(caps::ID_PREFIX))
        {
            caps::answer(ctx, &iq).await;
        }
        // RFC 6120 §8.2.3: results and errors are never answered.
        return;
    }
    let Some(payload) = iq.children().next() else {
        return ctx.reply_error(&iq, StanzaErrorCondition::BadRequest).await;
    };
    let set = kind == "set";
    let namespace = payload.ns();
    let own = target == Target::Account || iq.attr("to").is_none();
    let user = ctx.jid.to_bare();
    let outcome: IqResult = match (namespace.as_str(), target) {
        // A node of one's own PEP service (XEP-0163), and the nodes as items.
        (ns::DISCO_INFO, Target::Account) if !set && payload.attr("node").is_some() => {
            pep::node_info(&ctx.state, &user, &user, payload.attr("node").unwrap_or(""))
        }
        (ns::DISCO_ITEMS, Target::Account) if !set && payload.attr("node").is_none() => {
            pep::node_items(&ctx.state, &user, &user)
                .map_err(StanzaError::from)
                .and_then(|nodes| disco::node_items(nodes, &user))
        }
        (ns::DISCO_INFO, _) => disco::info(set, payload, target),
        (ns::DISCO_ITEMS, _) => {
            let services: Vec<&str> = std::iter::once(ctx.state.muc.domain.as_str())
                .chain(ctx.state.upload.listed())
                .collect();
            disco::items(&services, set, payload, target)
        }
        (ns::PING, _) => ping::handle(set, payload),
        (ns::VERSION, Target::Server) => version::handle(set, payload),
        (ns::TIME, Target::Server) => time::handle(set, payload),
        (ns::REGISTER, _) => register::handle(ctx, set, payload).await,
        (ns::ROSTER, _) => roster::handle(ctx, set, payload).await,
        (ns::LAST, _) => activity::handle(ctx, set, target, Some(&ctx.jid.to_bare())),
        // No `to` means one's own vCard (XEP-0054 §3.1); the server has none.
        (ns::VCARD, _) if target == Target::Account || iq.attr("to").is_none() => {
            vcard::handle(
                &ctx.state,
                &ctx.jid.to_bare(),
                &ctx.jid.to_bare(),
                set,
                payload,
            )
            .await
        }
        (ns::PRIVATE, _) => private::handle(ctx, set, payload).await,
        (ns::CARBONS, _) => carbons::handle(ctx, set, payload),
        (ns::BLOCKING, _) => blocking::handle(ctx, set, payload).await,
        // XEP-0313: the user's archive is on their bare JID; no `to` means it too.
        (archive::NS_MAM, Target::Account) => mam::handle(ctx, set, payload).await,
        (archive::NS_MAM, Target::Server) if iq.attr("to").is_none() => {
            mam::handle(ctx, set, payload).await
        }
        (pep::NS_PUBSUB | pep::NS_OWNER, _) if own => {
            pep::handle(&ctx.state, &ctx.jid, &user, set, payload).await
        }
        (ns::SESSION, Target::Server) if set => Ok(None),
        _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
    };
    match outcome {
        Ok(payload) => ctx.reply(&result_for(&iq, payload)).await,
        Err(error) => ctx.reply_error(&iq, error).await,
    }
    if namespace == ns::REGISTER
        && set
        && iq
            .get_child("query", ns::REGISTER)
            .is_some_and(|q| q.has_child("remove", ns::REGISTER))
    {
        register::after_removal(ctx).await;
    }
}

/// Parses an iq payload into its xmpp-parsers type; a payload that does not fit is `<bad-request/>`.
pub fn parse<T: TryFrom<Element>>(payload: &Element) -> Result<T, StanzaError> {
    T::try_from(payload.clone()).map_err(|_| {
        StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "the query is not well formed",
        )
    })
}

/// An iq to another local account's bare JID, answered by the server on that account's behalf
/// (RFC 6121 §8.5.2.1.3).
pub async fn contact_iq(ctx: &SessionCtx, iq: Element, contact: &jid::BareJid) {
    if matches!(iq.attr("type"), Some("result" | "error")) {
        return;
    }
    let Some(payload) = iq.children().next() else {
        return ctx.reply_error(&iq, StanzaErrorCondition::BadRequest).await;
    };
    let set = iq.attr("type") == Some("set");
    let asker = ctx.jid.to_bare();
    let outcome: IqResult = match payload.ns().as_str() {
        ns::DISCO_INFO if !set && payload.attr("node").is_some() => pep::node_info(
            &ctx.state,
            &asker,
            contact,
            payload.attr("node").unwrap_or(""),
        ),
        ns::DISCO_INFO => disco::info(set, payload, Target::Account),
        ns::DISCO_ITEMS if !set && payload.attr("node").is_none() => {
            pep::node_items(&ctx.state, &asker, contact)
                .map_err(StanzaError::from)
                .and_then(|nodes| disco::node_items(nodes, contact))
        }
        pep::NS_PUBSUB | pep::NS_OWNER => {
            pep::handle(&ctx.state, &ctx.jid, contact, set, payload).await
        }
        ns::LAST => activity::handle(ctx, set, Target::Account, Some(contact)),
        ns::VCARD => vcard::handle(&ctx.state, &ctx.jid.to_bare(), contact, set, payload).await,
        // Only the owner may touch these (XEP-0049 §3, RFC 6121 §2.1.5, XEP-0313 §8.1).
        ns::PRIVATE | ns::ROSTER | ns::BLOCKING | archive::NS_MAM => {
            Err(StanzaErrorCondition::Forbidden.into())
        }
        _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
    };
    match outcome {
        Ok(payload) => ctx.reply(&result_for(&iq, payload)).await,
        Err(error) => ctx.reply_error(&iq, error).await,
    }
}

/// The error for a `set` sent to a get-only namespace (or the other way round).
pub fn wrong_type() -> StanzaError {
    StanzaError::with_text(
        StanzaErrorCondition::BadRequest,
        "wrong iq type for this query",
    )
}
