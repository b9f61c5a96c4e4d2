//! Personal eventing (XEP-0163 PEP, the XEP-0060 subset it needs) on every account's bare JID:
//! nodes created on first publish (with XEP-0060 publish-options as preconditions), items kept
//! in the store, access models open, presence and whitelist, notifications to the owner's and
//! contacts' sessions that asked for them through caps (`+notify`), and the last item sent when
//! a session's interest becomes known. Avatars (XEP-0084), bookmarks (XEP-0402) and OMEMO device
//! lists and bundles are plain nodes here.

use std::hash::BuildHasher;

use base64::Engine as _;
use bytes::Bytes;
use jid::{BareJid, Jid};
use minidom::Element;
use serde::{Deserialize, Serialize};
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};

use super::caps::Notify;
use super::{IqResult, Module, Spec, Support};
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::router::{Outbound, SessionHandle};
use crate::server::ServerState;
use crate::store::StoreError;
use crate::xml::{self, ns};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const NS_BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
pub const NS_LEGACY_BOOKMARKS: &str = "storage:bookmarks";

pub const MODULE: Module = Module {
    name: "pep",
    disco_features: &[],
    account_features: &[
        NS_PUBSUB,
        "http://jabber.org/protocol/pubsub#access-open",
        "http://jabber.org/protocol/pubsub#access-presence",
        "http://jabber.org/protocol/pubsub#access-whitelist",
        "http://jabber.org/protocol/pubsub#auto-create",
        "http://jabber.org/protocol/pubsub#config-node",
        "http://jabber.org/protocol/pubsub#create-and-configure",
        "http://jabber.org/protocol/pubsub#create-nodes",
        "http://jabber.org/protocol/pubsub#delete-items",
        "http://jabber.org/protocol/pubsub#delete-nodes",
        "http://jabber.org/protocol/pubsub#filtered-notifications",
        "http://jabber.org/protocol/pubsub#item-ids",
        "http://jabber.org/protocol/pubsub#last-published",
        "http://jabber.org/protocol/pubsub#multi-items",
        "http://jabber.org/protocol/pubsub#persistent-items",
        "http://jabber.org/protocol/pubsub#publish",
        "http://jabber.org/protocol/pubsub#publish-options",
        "http://jabber.org/protocol/pubsub#purge-nodes",
        "http://jabber.org/protocol/pubsub#retract-items",
        "http://jabber.org/protocol/pubsub#retrieve-items",
        "urn:xmpp:bookmarks:1#compat",
    ],
    stream_features: &[],
    specs: &[
        Spec::xep(
            163,
            "1.2.2",
            Support::Complete,
            "auto-create, publish-options, notifications filtered by caps +notify to the owner's and subscribed contacts' sessions, last item on presence",
        ),
        Spec::xep(
            60,
            "1.30.0",
            Support::Partial,
            "the PEP subset: publish (with publish-options), retract, items (by id, max_items), create, configure, delete, purge, node disco; access models open, presence and whitelist; no explicit subscriptions, no collections, no pubsub service of its own",
        ),
        Spec::xep(
            84,
            "1.1.4",
            Support::Complete,
            "metadata and data nodes as PEP nodes",
        ),
        Spec::xep(
            402,
            "1.2.0",
            Support::Complete,
            "bookmarks as a whitelist PEP node with max_items max; #compat: XEP-0048 bookmarks in private XML storage are read from and written to that node",
        ),
        Spec::xep(
            223,
            "1.1.1",
            Support::Complete,
            "private data in PEP nodes with access model whitelist and persistent items",
        ),
    ],
};

/// Nodes one account may have.
const MAX_NODES: usize = 256;
/// Items a node keeps at most, and what `max_items = max` means.
const MAX_ITEMS: usize = 1_000;
/// The key of the node list in the account's key-value store.
const NODES_KEY: &str = "pep-nodes";
const SHARDS: usize = 64;

fn node_key(node: &str) -> String {
    format!("pep:{node}")
}

/// Who may see a node's items (XEP-0060 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Open,
    Presence,
    Whitelist,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Presence => "presence",
            Access::Whitelist => "whitelist",
        }
    }
}

/// When the last item is sent to a newly interested session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub access: Access,
    /// Items kept (1 to `MAX_ITEMS`).
    pub max_items: usize,
    /// Whether `max_items` was given as "max" (reported back as such).
    pub max_is_max: bool,
    pub persist_items: bool,
    pub send_last: SendLast,
    pub notify_retract: bool,
    pub deliver_notifications: bool,
    pub title: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            access: Access::Presence,
            max_items: 1,
            max_is_max: false,
            persist_items: true,
            send_last: SendLast::OnSubAndPresence,
            notify_retract: true,
            deliver_notifications: true,
            title: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    /// The payload, serialized.
    pub payload: String,
}

/// A node as stored: its configuration and items, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Node {
    pub config: NodeConfig,
    pub items: Vec<Item>,
}

/// Serializes changes per account (publish is a read-modify-write of the node).
pub struct Locks {
    shards: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Locks {
    fn default() -> Self {
        Locks {
            shards: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }
}

impl Locks {
    async fn lock(&self, user: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        let index = (self.hasher.hash_one(user) as usize) % SHARDS;
        self.shards[index].lock().await
    }
}

fn node_names(state: &ServerState, user: &BareJid) -> Result<Vec<String>, StoreError> {
    Ok(state
        .stores
        .values
        .get_value(user, NODES_KEY)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default())
}

fn load(state: &ServerState, user: &BareJid, node: &str) -> Result<Option<Node>, StoreError> {
    let Some(bytes) = state.stores.values.get_value(user, &node_key(node))? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            key: format!("values/{user}/{}", node_key(node)),
            message: e.to_string(),
        })
}

fn save(state: &ServerState, user: &BareJid, name: &str, node: &Node) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(node)
        .map_err(|e| StoreError::Backend(format!("cannot encode a PEP node: {e}")))?;
    state.stores.values.set_value(user, &node_key(name), &bytes)
}

fn save_names(state: &ServerState, user: &BareJid, names: &[String]) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(names)
        .map_err(|e| StoreError::Backend(format!("cannot encode PEP node names: {e}")))?;
    state.stores.values.set_value(user, NODES_KEY, &bytes)
}

/// Adds a node to the account's list, within `MAX_NODES` (under the account's lock).
fn register_node(state: &ServerState, owner: &BareJid, name: &str) -> Result<(), StanzaError> {
    let mut names = node_names(state, owner)?;
    if names.len() >= MAX_NODES {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAllowed,
            format!("an account has at most {MAX_NODES} nodes"),
        ));
    }
    names.push(name.to_string());
    Ok(save_names(state, owner, &names)?)
}

impl Node {
    fn new(config: NodeConfig) -> Node {
        Node {
            config,
            items: Vec::new(),
        }
    }

    /// Keeps the newest `max_items` items.
    fn trim(&mut self) {
        let keep = self.config.max_items.max(1);
        if self.items.len() > keep {
            let excess = self.items.len() - keep;
            self.items.drain(..excess);
        }
    }
}

/// An event's `<item/>`: the id, who published it, the payload.
fn event_item(id: &str, owner: &BareJid, payload: Element) -> Element {
    let mut item = Element::bare("item", NS_EVENT);
    set_attr(&mut item, "id", id);
    set_attr(&mut item, "publisher", owner.as_str());
    item.append_child(payload);
    item
}

/// The event telling that these items of `node` were retracted.
fn retracts_event(node: &str, ids: &[String]) -> Element {
    let retracts = ids
        .iter()
        .map(|id| {
            let mut r = Element::bare("retract", NS_EVENT);
            set_attr(&mut r, "id", id);
            r
        })
        .collect();
    items_event(node, retracts)
}

/// A pubsub error: a defined condition with an application-specific one from pubsub#errors.
fn pubsub_error(condition: StanzaErrorCondition, specific: &str, text: &str) -> StanzaError {
    let mut error = StanzaError::with_text(condition, text);
    error.extra = Some(Box::new(Element::bare(specific, NS_ERRORS)));
    error
}

fn unsupported(feature: &str) -> StanzaError {
    let mut unsupported = Element::bare("unsupported", NS_ERRORS);
    set_attr(&mut unsupported, "feature", feature);
    let mut error = StanzaError::with_text(
        StanzaErrorCondition::FeatureNotImplemented,
        "PEP nodes have no explicit subscriptions: interest comes from presence and caps",
    );
    error.extra = Some(Box::new(unsupported));
    error
}

fn node_attr(el: &Element) -> Result<String, StanzaError> {
    match el.attr("node") {
        Some(node) if !node.is_empty() && node.len() <= 1024 => Ok(node.to_string()),
        _ => Err(pubsub_error(
            StanzaErrorCondition::BadRequest,
            "nodeid-required",
            "name the node",
        )),
    }
}

/// A pubsub iq to `owner`'s bare JID from `requester` (a session of `owner` or of another local
/// account). Changes are durable before the answer; notifications follow.
pub async fn handle(
    state: &ServerState,
    requester: &jid::FullJid,
    owner: &BareJid,
    set: bool,
    payload: &Element,
) -> IqResult {
    let is_owner = requester.to_bare() == *owner;
    let children: Vec<&Element> = payload.children().collect();
    let first = children.first().ok_or_else(|| {
        StanzaError::with_text(StanzaErrorCondition::BadRequest, "empty pubsub request")
    })?;
    if payload.ns() == NS_OWNER {
        if !is_owner {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "only the account's owner may manage its nodes",
            ));
        }
        return match (first.name(), set) {
            ("configure", false) => configure_get(state, owner, first),
            ("configure", true) => configure_set(state, owner, first).await,
            ("delete", true) => delete(state, owner, first).await,
            ("purge", true) => purge(state, owner, first).await,
            ("subscriptions" | "affiliations", _) => Err(unsupported("manage-subscriptions")),
            ("default", false) => Ok(Some(owner_wrap(configure_form(
                &NodeConfig::default(),
                None,
            )))),
            _ => Err(super::wrong_type()),
        };
    }
    match (first.name(), set) {
        ("items", false) => items(state, requester, owner, first),
        ("publish", true) | ("retract", true) | ("create", true) if !is_owner => {
            Err(StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "only the account's owner may publish to its nodes",
            ))
        }
        ("publish", true) => {
            let options = children
                .iter()
                .find(|c| c.name() == "publish-options")
                .and_then(|o| o.get_child("x", "jabber:x:data"));
            publish(state, owner, first, options).await
        }
        ("retract", true) => retract(state, owner, first).await,
        ("create", true) => {
            let config = children
                .iter()
                .find(|c| c.name() == "configure")
                .and_then(|o| o.get_child("x", "jabber:x:data"));
            create(state, owner, first, config).await
        }
        ("subscribe" | "unsubscribe" | "options", _) => Err(unsupported("subscribe")),
        ("subscriptions" | "affiliations", false) => Err(unsupported("retrieve-subscriptions")),
        _ => Err(super::wrong_type()),
    }
}

/// Reads a configuration form over `base`: the fields Rookery knows are applied, others ignored.
fn apply_form(base: &NodeConfig, form: &Element) -> Result<NodeConfig, StanzaError> {
    let form = DataForm::try_from(form.clone()).map_err(|_| {
        StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "the form is not well formed",
        )
    })?;
    let mut config = base.clone();
    for field in &form.fields {
        let value = field.values.first().map(String::as_str).unwrap_or("");
        let bad = |what: &str| {
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                format!("{what}: '{value}' is not supported"),
            )
        };
        match field.var.as_deref().unwrap_or("") {
            "pubsub#access_model" => {
                config.access = match value {
                    "open" => Access::Open,
                    "presence" => Access::Presence,
                    "whitelist" => Access::Whitelist,
                    // XEP-0060 §8.1.3: roster and authorize are not offered.
                    _ => {
                        return Err(pubsub_error(
                            StanzaErrorCondition::NotAcceptable,
                            "unsupported-access-model",
                            &format!(
                            "access model '{value}' is not supported: open, presence or whitelist"
                        ),
                        ))
                    }
                }
            }
            "pubsub#max_items" => {
                if value == "max" {
                    config.max_items = MAX_ITEMS;
                    config.max_is_max = true;
                } else {
                    let n: usize = value.parse().map_err(|_| bad("pubsub#max_items"))?;
                    if n == 0 || n > MAX_ITEMS {
                        return Err(bad("pubsub#max_items"));
                    }
                    config.max_items = n;
                    config.max_is_max = false;
                }
            }
            "pubsub#persist_items" => {
                config.persist_items = boolean(value).ok_or_else(|| bad("pubsub#persist_items"))?
            }
            "pubsub#notify_retract" => {
                config.notify_retract =
                    boolean(value).ok_or_else(|| bad("pubsub#notify_retract"))?
            }
            "pubsub#deliver_notifications" => {
                config.deliver_notifications =
                    boolean(value).ok_or_else(|| bad("pubsub#deliver_notifications"))?
            }
            "pubsub#send_last_published_item" => {
                config.send_last = match value {
                    "never" => SendLast::Never,
                    "on_sub" => SendLast::OnSub,
                    "on_sub_and_presence" => SendLast::OnSubAndPresence,
                    _ => return Err(bad("pubsub#send_last_published_item")),
                }
            }
            "pubsub#title" => config.title = value.chars().take(256).collect(),
            _ => {}
        }
    }
    Ok(config)
}

fn boolean(value: &str) -> Option<bool> {
    match value {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// XEP-0060 §7.1.5: every option given must hold for the existing node.
fn preconditions_hold(node: &NodeConfig, options: &Element) -> Result<bool, StanzaError> {
    let wanted = apply_form(node, options)?;
    Ok(wanted == *node)
}

fn configure_form(config: &NodeConfig, node: Option<&str>) -> Element {
    let bool_field = |var: &str, on: bool| Field {
        type_: FieldType::Boolean,
        ..Field::text_single(var, if on { "1" } else { "0" })
    };
    let list = |var: &str, value: &str, options: &[&str]| Field {
        type_: FieldType::ListSingle,
        options: options
            .iter()
            .map(|o| xmpp_parsers::data_forms::Option_ {
                label: None,
                value: o.to_string(),
            })
            .collect(),
        ..Field::text_single(var, value)
    };
    let max = if config.max_is_max {
        "max".to_string()
    } else {
        config.max_items.to_string()
    };
    let form = DataForm::new(
        DataFormType::Form,
        NS_NODE_CONFIG,
        vec![
            list(
                "pubsub#access_model",
                config.access.as_str(),
                &["open", "presence", "whitelist"],
            ),
            Field::text_single("pubsub#max_items", &max),
            bool_field("pubsub#persist_items", config.persist_items),
            list(
                "pubsub#send_last_published_item",
                config.send_last.as_str(),
                &["never", "on_sub", "on_sub_and_presence"],
            ),
            bool_field("pubsub#notify_retract", config.notify_retract),
            bool_field("pubsub#deliver_notifications", config.deliver_notifications),
            Field::text_single("pubsub#title", &config.title),
        ],
    );
    let mut configure = Element::bare("configure", NS_OWNER);
    if let Some(node) = node {
        set_attr(&mut configure, "node", node);
    }
    configure.append_child(form.into());
    configure
}

fn owner_wrap(child: Element) -> Element {
    let mut pubsub = Element::bare("pubsub", NS_OWNER);
    pubsub.append_child(child);
    pubsub
}

fn not_found() -> StanzaError {
    StanzaError::with_text(StanzaErrorCondition::ItemNotFound, "no such node")
}

/// A new item id: random, URL-safe.
fn new_item_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
}

/// The one item of a publish, with its one payload.
fn read_item(publish: &Element) -> Result<(Option<String>, Element), StanzaError> {
    let items: Vec<&Element> = publish.children().filter(|c| c.name() == "item").collect();
    let item = match items.as_slice() {
        [item] => *item,
        [] => {
            return Err(pubsub_error(
                StanzaErrorCondition::BadRequest,
                "item-required",
                "publish one item",
            ))
        }
        _ => {
            return Err(pubsub_error(
                StanzaErrorCondition::BadRequest,
                "invalid-payload",
                "publish one item at a time",
            ))
        }
    };
    let payloads: Vec<&Element> = item.children().collect();
    let payload = match payloads.as_slice() {
        [payload] => (*payload).clone(),
        [] => {
            return Err(pubsub_error(
                StanzaErrorCondition::BadRequest,
                "payload-required",
                "the item needs a payload",
            ))
        }
        _ => {
            return Err(pubsub_error(
                StanzaErrorCondition::BadRequest,
                "invalid-payload",
                "an item has exactly one payload element",
            ))
        }
    };
    let id = item
        .attr("id")
        .filter(|id| !id.is_empty())
        .map(|id| id.chars().take(256).collect());
    Ok((id, payload))
}

async fn publish(
    state: &ServerState,
    owner: &BareJid,
    publish: &Element,
    options: Option<&Element>,
) -> IqResult {
    let name = node_attr(publish)?;
    let (id, payload) = read_item(publish)?;
    let id = id.unwrap_or_else(new_item_id);
    let node = {
        let _guard = state.pep_locks.lock(owner).await;
        let mut node = match load(state, owner, &name)? {
            Some(node) => {
                if let Some(options) = options {
                    if !preconditions_hold(&node.config, options).unwrap_or(false) {
                        return Err(pubsub_error(
                            StanzaErrorCondition::Conflict,
                            "precondition-not-met",
                            "the node's configuration differs from the publish-options",
                        ));
                    }
                }
                node
            }
            None => {
                // XEP-0163 §7.1: auto-create, with the publish-options as its configuration.
                // XEP-0060 §7.1.5: options the service cannot meet fail the precondition.
                let config = match options {
                    Some(options) => apply_form(&NodeConfig::default(), options).map_err(|e| {
                        pubsub_error(
                            StanzaErrorCondition::Conflict,
                            "precondition-not-met",
                            e.text.as_deref().unwrap_or("unsupported publish-options"),
                        )
                    })?,
                    None => NodeConfig::default(),
                };
                register_node(state, owner, &name)?;
                Node::new(config)
            }
        };
        node.items.retain(|item| item.id != id);
        node.items.push(Item {
            id: id.clone(),
            payload: String::from_utf8(xml::serialize(&payload)).unwrap_or_default(),
        });
        node.trim();
        save(state, owner, &name, &node)?;
        node
    };
    state.stores.flush().await?;
    let item = event_item(&id, owner, payload);
    if node.config.deliver_notifications {
        notify(
            state,
            owner,
            &name,
            &node.config,
            items_event(&name, vec![item]),
        )
        .await;
    }
    let mut published = Element::bare("publish", NS_PUBSUB);
    set_attr(&mut published, "node", &name);
    let mut item = Element::bare("item", NS_PUBSUB);
    set_attr(&mut item, "id", &id);
    published.append_child(item);
    let mut pubsub = Element::bare("pubsub", NS_PUBSUB);
    pubsub.append_child(published);
    Ok(Some(pubsub))
}

async fn retract(state: &ServerState, owner: &BareJid, retract: &Element) -> IqResult {
    let name = node_attr(retract)?;
    let ids: Vec<String> = retract
        .children()
        .filter(|c| c.name() == "item")
        .filter_map(|c| c.attr("id"))
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Err(pubsub_error(
            StanzaErrorCondition::BadRequest,
            "item-required",
            "name the items to retract",
        ));
    }
    let config = {
        let _guard = state.pep_locks.lock(owner).await;
        let mut node = load(state, owner, &name)?.ok_or_else(not_found)?;
        let before = node.items.len();
        node.items.retain(|item| !ids.contains(&item.id));
        if node.items.len() == before {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ItemNotFound,
                "no such item",
            ));
        }
        save(state, owner, &name, &node)?;
        node.config
    };
    state.stores.flush().await?;
    let wants_notify =
        matches!(retract.attr("notify"), Some("1" | "true")) || config.notify_retract;
    if wants_notify && config.deliver_notifications {
        notify(state, owner, &name, &config, retracts_event(&name, &ids)).await;
    }
    Ok(None)
}

async fn create(
    state: &ServerState,
    owner: &BareJid,
    create: &Element,
    form: Option<&Element>,
) -> IqResult {
    // XEP-0060 §8.1.2: PEP has no instant nodes.
    let name = node_attr(create).map_err(|_| {
        pubsub_error(
            StanzaErrorCondition::NotAcceptable,
            "nodeid-required",
            "PEP nodes need a name",
        )
    })?;
    let config = match form {
        Some(form) => apply_form(&NodeConfig::default(), form)?,
        None => NodeConfig::default(),
    };
    {
        let _guard = state.pep_locks.lock(owner).await;
        if load(state, owner, &name)?.is_some() {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::Conflict,
                "the node exists",
            ));
        }
        register_node(state, owner, &name)?;
        save(state, owner, &name, &Node::new(config))?;
    }
    state.stores.flush().await?;
    Ok(None)
}

fn configure_get(state: &ServerState, owner: &BareJid, configure: &Element) -> IqResult {
    let name = node_attr(configure)?;
    let node = load(state, owner, &name)?.ok_or_else(not_found)?;
    Ok(Some(owner_wrap(configure_form(&node.config, Some(&name)))))
}

async fn configure_set(state: &ServerState, owner: &BareJid, configure: &Element) -> IqResult {
    let name = node_attr(configure)?;
    let form = configure.get_child("x", "jabber:x:data").ok_or_else(|| {
        StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "the configuration form is missing",
        )
    })?;
    if form.attr("type") == Some("cancel") {
        return Ok(None);
    }
    {
        let _guard = state.pep_locks.lock(owner).await;
        let mut node = load(state, owner, &name)?.ok_or_else(not_found)?;
        node.config = apply_form(&node.config, form)?;
        node.trim();
        save(state, owner, &name, &node)?;
    }
    state.stores.flush().await?;
    Ok(None)
}

async fn delete(state: &ServerState, owner: &BareJid, delete: &Element) -> IqResult {
    let name = node_attr(delete)?;
    let config = {
        let _guard = state.pep_locks.lock(owner).await;
        let node = load(state, owner, &name)?.ok_or_else(not_found)?;
        let mut names = node_names(state, owner)?;
        names.retain(|n| *n != name);
        save_names(state, owner, &names)?;
        state.stores.values.delete_value(owner, &node_key(&name))?;
        node.config
    };
    state.stores.flush().await?;
    let mut deleted = Element::bare("delete", NS_EVENT);
    set_attr(&mut deleted, "node", &name);
    notify(state, owner, &name, &config, event(deleted)).await;
    Ok(None)
}

async fn purge(state: &ServerState, owner: &BareJid, purge: &Element) -> IqResult {
    let name = node_attr(purge)?;
    let config = {
        let _guard = state.pep_locks.lock(owner).await;
        let mut node = load(state, owner, &name)?.ok_or_else(not_found)?;
        node.items.clear();
        save(state, owner, &name, &node)?;
        node.config
    };
    state.stores.flush().await?;
    let mut purged = Element::bare("purge", NS_EVENT);
    set_attr(&mut purged, "node", &name);
    notify(state, owner, &name, &config, event(purged)).await;
    Ok(None)
}

/// Whether `viewer` may see `owner`'s node with this access model.
fn may_see(
    state: &ServerState,
    owner: &BareJid,
    viewer: &BareJid,
    access: Access,
) -> Result<bool, StoreError> {
    if viewer == owner {
        return Ok(true);
    }
    Ok(match access {
        Access::Whitelist => false,
        Access::Open => true,
        Access::Presence => state
            .stores
            .rosters
            .item(owner, viewer)?
            .is_some_and(|item| item.subscription.from()),
    })
}

fn items(
    state: &ServerState,
    requester: &jid::FullJid,
    owner: &BareJid,
    request: &Element,
) -> IqResult {
    let name = node_attr(request)?;
    let node = load(state, owner, &name)?.ok_or_else(not_found)?;
    let viewer = requester.to_bare();
    if !may_see(state, owner, &viewer, node.config.access)? {
        return Err(match node.config.access {
            Access::Presence => pubsub_error(
                StanzaErrorCondition::NotAuthorized,
                "presence-subscription-required",
                "only contacts subscribed to the owner's presence may see this node",
            ),
            _ => pubsub_error(
                StanzaErrorCondition::NotAllowed,
                "closed-node",
                "only the owner may see this node",
            ),
        });
    }
    let wanted: Vec<&str> = request
        .children()
        .filter(|c| c.name() == "item")
        .filter_map(|c| c.attr("id"))
        .collect();
    let mut chosen: Vec<&Item> = if wanted.is_empty() {
        node.items.iter().collect()
    } else {
        node.items
            .iter()
            .filter(|item| wanted.contains(&item.id.as_str()))
            .collect()
    };
    if let Some(max) = request.attr("max_items") {
        let max: usize = max.parse().map_err(|_| {
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "max_items is not a number",
            )
        })?;
        if chosen.len() > max {
            chosen.drain(..chosen.len() - max);
        }
    }
    let mut items = Element::bare("items", NS_PUBSUB);
    set_attr(&mut items, "node", &name);
    for item in chosen {
        let mut el = Element::bare("item", NS_PUBSUB);
        set_attr(&mut el, "id", &item.id);
        if let Ok(payload) = item.payload.parse::<Element>() {
            el.append_child(payload);
        }
        items.append_child(el);
    }
    let mut pubsub = Element::bare("pubsub", NS_PUBSUB);
    pubsub.append_child(items);
    Ok(Some(pubsub))
}

fn event(child: Element) -> Element {
    let mut event = Element::bare("event", NS_EVENT);
    event.append_child(child);
    event
}

fn items_event(node: &str, children: Vec<Element>) -> Element {
    let mut items = Element::bare("items", NS_EVENT);
    set_attr(&mut items, "node", node);
    for child in children {
        items.append_child(child);
    }
    event(items)
}

/// A headline from `owner` carrying `event` to one session.
async fn send_event(owner: &BareJid, session: &SessionHandle, event: &Element) {
    let mut message = Element::bare("message", ns::CLIENT);
    set_attr(&mut message, "from", owner.as_str());
    set_attr(&mut message, "to", session.jid.as_str());
    set_attr(&mut message, "type", "headline");
    set_attr(&mut message, "id", &new_item_id());
    message.append_child(event.clone());
    session
        .send(Outbound::Stanza(Bytes::from(xml::serialize(&message))))
        .await;
}

/// XEP-0163 §4.3: an event goes to every available session that wants the node (by caps) and
/// may see it: the owner's own, and those of contacts subscribed to the owner's presence.
async fn notify(
    state: &ServerState,
    owner: &BareJid,
    node: &str,
    config: &NodeConfig,
    event: Element,
) {
    let mut accounts = vec![owner.clone()];
    if config.access != Access::Whitelist {
        if let Ok((_, roster)) = state.stores.rosters.roster(owner) {
            accounts.extend(
                roster
                    .iter()
                    .filter(|item| item.subscription.from())
                    .filter_map(|item| BareJid::new(&item.jid).ok())
                    .filter(|contact| {
                        contact != owner
                            && !super::blocking::blocks(state, owner, &Jid::from(contact.clone()))
                            && !super::blocking::blocks(state, contact, &Jid::from(owner.clone()))
                    }),
            );
        }
    }
    for account in accounts {
        for session in state.router.available(&account) {
            let blocked = account != *owner
                && super::blocking::blocks(state, owner, &Jid::from(session.jid.clone()));
            if !blocked && session.presence.notify().is_some_and(|n| n.wants(node)) {
                send_event(owner, &session, &event).await;
            }
        }
    }
}

/// A session's interests became known (or it became available again): the last item of each
/// node it wants, from its own account and from every contact whose presence it receives.
pub async fn last_items(state: &ServerState, session: &SessionHandle, notify: &Notify) {
    if notify.nodes().is_empty() {
        return;
    }
    let viewer = session.jid.to_bare();
    let mut owners = vec![viewer.clone()];
    if let Ok((_, roster)) = state.stores.rosters.roster(&viewer) {
        owners.extend(
            roster
                .iter()
                .filter(|item| item.subscription.to())
                .filter_map(|item| BareJid::new(&item.jid).ok())
                .filter(|owner| owner.domain().as_str() == state.domain && *owner != viewer),
        );
    }
    for owner in owners {
        send_last(state, &owner, session, notify, SendLast::OnSubAndPresence).await;
    }
}

/// The session's account just subscribed to `owner`'s presence (XEP-0163 §4.3.3): the last item
/// of each of `owner`'s nodes the session wants.
pub async fn last_items_of(
    state: &ServerState,
    owner: &BareJid,
    session: &SessionHandle,
    notify: &Notify,
) {
    send_last(state, owner, session, notify, SendLast::OnSub).await;
}

/// Sends `owner`'s last items to one session, for nodes it wants, may see, and whose
/// send_last_published_item allows it on this occasion (`OnSub` covers both others).
async fn send_last(
    state: &ServerState,
    owner: &BareJid,
    session: &SessionHandle,
    notify: &Notify,
    occasion: SendLast,
) {
    let viewer = session.jid.to_bare();
    if *owner != viewer
        && (super::blocking::blocks(state, owner, &Jid::from(session.jid.clone()))
            || super::blocking::blocks(state, &viewer, &Jid::from(owner.clone())))
    {
        return;
    }
    let Ok(names) = node_names(state, owner) else {
        return;
    };
    for name in names.iter().filter(|name| notify.wants(name)) {
        let Ok(Some(node)) = load(state, owner, name) else {
            continue;
        };
        let allowed = match occasion {
            SendLast::OnSub => node.config.send_last != SendLast::Never,
            _ => node.config.send_last == SendLast::OnSubAndPresence,
        };
        let visible = may_see(state, owner, &viewer, node.config.access).unwrap_or(false);
        let Some(last) = node
            .items
            .last()
            .filter(|_| visible && allowed && node.config.deliver_notifications)
        else {
            continue;
        };
        let Ok(payload) = last.payload.parse::<Element>() else {
            continue;
        };
        let item = event_item(&last.id, owner, payload);
        send_event(owner, session, &items_event(name, vec![item])).await;
    }
}

/// disco#info with a node on an account: the node, if the asker may see it.
pub fn node_info(state: &ServerState, asker: &BareJid, owner: &BareJid, name: &str) -> IqResult {
    let node = load(state, owner, name)?.ok_or_else(not_found)?;
    if !may_see(state, owner, asker, node.config.access)? {
        return Err(not_found());
    }
    let mut meta = DataForm::new(
        DataFormType::Result_,
        "http://jabber.org/protocol/pubsub#meta-data",
        vec![Field::text_single(
            "pubsub#access_model",
            node.config.access.as_str(),
        )],
    );
    if !node.config.title.is_empty() {
        meta.fields
            .push(Field::text_single("pubsub#title", &node.config.title));
    }
    let result = xmpp_parsers::disco::DiscoInfoResult {
        node: Some(name.to_string()),
        identities: vec![xmpp_parsers::disco::Identity {
            category: "pubsub".into(),
            type_: "leaf".into(),
            lang: None,
            name: None,
        }],
        features: [ns::DISCO_INFO, NS_PUBSUB]
            .into_iter()
            .map(String::from)
            .collect(),
        extensions: vec![meta],
    };
    Ok(Some(result.into()))
}

/// disco#items of an account: the nodes the asker may see.
pub fn node_items(
    state: &ServerState,
    asker: &BareJid,
    owner: &BareJid,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut seen = Vec::new();
    for name in node_names(state, owner)? {
        if let Some(node) = load(state, owner, &name)? {
            if may_see(state, owner, asker, node.config.access)? {
                seen.push((name, node.config.title.clone()));
            }
        }
    }
    Ok(seen)
}

/// The configuration XEP-0402 gives the bookmarks node.
fn bookmarks_config() -> NodeConfig {
    NodeConfig {
        access: Access::Whitelist,
        max_items: MAX_ITEMS,
        max_is_max: true,
        persist_items: true,
        send_last: SendLast::Never,
        ..NodeConfig::default()
    }
}

/// A bookmark's `<conference/>` (name, autojoin, nick, password) in the other bookmarks namespace
/// (XEP-0048 `storage:bookmarks` and XEP-0402 use the same names; only the room's JID moves
/// between the `jid` attribute and the item id, which callers handle).
fn conference_in(conference: &Element, namespace: &str) -> Element {
    let from = conference.ns();
    let mut copy = Element::bare("conference", namespace);
    for attr in ["name", "autojoin"] {
        if let Some(value) = conference.attr(attr) {
            set_attr(&mut copy, attr, value);
        }
    }
    for child in ["nick", "password"] {
        if let Some(el) = conference.get_child(child, from.as_str()) {
            let mut text = Element::bare(child, namespace);
            text.append_text(el.text());
            copy.append_child(text);
        }
    }
    copy
}

/// XEP-0402 §compat: the bookmarks node seen as a XEP-0048 `<storage/>` (none when the account
/// has no bookmarks node yet, so that older private data still answers).
pub fn legacy_bookmarks(
    state: &ServerState,
    owner: &BareJid,
) -> Result<Option<Element>, StoreError> {
    let Some(node) = load(state, owner, NS_BOOKMARKS)? else {
        return Ok(None);
    };
    let mut storage = Element::bare("storage", NS_LEGACY_BOOKMARKS);
    for item in &node.items {
        let Ok(conference) = item.payload.parse::<Element>() else {
            continue;
        };
        let mut legacy = conference_in(&conference, NS_LEGACY_BOOKMARKS);
        set_attr(&mut legacy, "jid", &item.id);
        storage.append_child(legacy);
    }
    Ok(Some(storage))
}

/// XEP-0402 §compat: a XEP-0048 `<storage/>` written through private XML storage replaces the
/// bookmarks node's items; new and changed ones are published, missing ones retracted, each with
/// its notification (unchanged ones are left alone, as §compat asks).
pub async fn set_legacy_bookmarks(
    state: &ServerState,
    owner: &BareJid,
    storage: &Element,
) -> Result<(), StanzaError> {
    let mut wanted: Vec<Item> = Vec::new();
    for conference in storage
        .children()
        .filter(|c| c.is("conference", NS_LEGACY_BOOKMARKS))
    {
        let Some(jid) = conference.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
            continue;
        };
        let native = conference_in(conference, NS_BOOKMARKS);
        wanted.retain(|item| item.id != jid.as_str());
        wanted.push(Item {
            id: jid.to_string(),
            payload: String::from_utf8(xml::serialize(&native)).unwrap_or_default(),
        });
    }
    let (config, published, retracted) = {
        let _guard = state.pep_locks.lock(owner).await;
        let mut node = match load(state, owner, NS_BOOKMARKS)? {
            Some(node) => node,
            None => {
                register_node(state, owner, NS_BOOKMARKS)?;
                Node::new(bookmarks_config())
            }
        };
        let retracted: Vec<String> = node
            .items
            .iter()
            .filter(|old| !wanted.iter().any(|new| new.id == old.id))
            .map(|old| old.id.clone())
            .collect();
        let published: Vec<Item> = wanted
            .iter()
            .filter(|new| !node.items.contains(new))
            .cloned()
            .collect();
        node.items = wanted;
        node.trim();
        save(state, owner, NS_BOOKMARKS, &node)?;
        (node.config, published, retracted)
    };
    state.stores.flush().await?;
    if !config.deliver_notifications {
        return Ok(());
    }
    for item in published {
        let Ok(payload) = item.payload.parse::<Element>() else {
            continue;
        };
        let el = event_item(&item.id, owner, payload);
        notify(
            state,
            owner,
            NS_BOOKMARKS,
            &config,
            items_event(NS_BOOKMARKS, vec![el]),
        )
        .await;
    }
    if config.notify_retract && !retracted.is_empty() {
        let event = retracts_event(NS_BOOKMARKS, &retracted);
        notify(state, owner, NS_BOOKMARKS, &config, event).await;
    }
    Ok(())
}
