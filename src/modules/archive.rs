//! XEP-0313 message archives, whoever keeps them: public ids, queries (the search form, XEP-0059
//! paging both ways, flipped pages, single items by id), result stanzas and archive metadata, over
//! an `ArchiveStore`. User archives (`mam`) and room archives (`muc`) use it; the owner of an
//! archive decides who may query it and what each stanza looks like to the one asking.

use base64::Engine;
use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::data_forms_validate::{Datatype, Method, Validate};

use super::{Module, Spec, Support};
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::store::{ArchiveStore, ArchivedStanza, StoreError};
use crate::xml::{escape_into, ns};

pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";

/// A page holds this many results when the client does not say.
pub const DEFAULT_PAGE: usize = 50;
/// And never more than this many, whatever the client asks (XEP-0313 §4.3.1 lets the server limit).
pub const MAX_PAGE: usize = 250;

pub const MODULE: Module = Module {
    name: "archive",
    // Advertised by each archiving JID (a room), not by the server.
    disco_features: &[],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::xep(
            313,
            "1.1.3",
            Support::Partial,
            "user archives (one-to-one messages sent and received) and room archives; mam:2 and #extended: with, start, end, before-id, after-id, ids, flipped pages, metadata; retention by age; no groupchat in user archives",
        ),
        Spec::xep(
            59,
            "1.0",
            Support::Partial,
            "paging of archive queries with max, after, before (and an empty before for the last page); count and first index when known without a scan; no paging by index",
        ),
    ],
};

/// The key for the next stanza of an archive whose newest key is `last`: now, in microseconds,
/// unless that is not after `last` (several in one microsecond, or a clock set back).
pub fn next_key(last: u64) -> u64 {
    let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
    now.max(last.saturating_add(1))
}

/// Whether a message belongs in an archive (XEP-0313 §6.1): what holds content (a body, a
/// subject, the payloads kept for offline users: markers, encrypted bodies, corrections,
/// retractions, reactions), unless a XEP-0334 hint says not to keep it.
pub fn worth_archiving(message: &Element) -> bool {
    if message.has_child("no-store", ns::HINTS)
        || message.has_child("no-permanent-store", ns::HINTS)
    {
        return false;
    }
    message.has_child("store", ns::HINTS)
        || message.has_child("body", ns::CLIENT)
        || message.has_child("subject", ns::CLIENT)
        || message
            .children()
            .any(|c| crate::modules::offline::KEEP_NAMESPACES.contains(&c.ns().as_str()))
}

/// A random nonce for a new archived stanza.
pub fn new_nonce() -> u64 {
    rand::random()
}

/// The public id of an archived stanza (its XEP-0359 stanza-id and RSM uid): key and nonce,
/// URL-safe base64. Ordered by nothing a client could use, unguessable without the nonce.
pub fn public_id(key: u64, nonce: u64) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&key.to_be_bytes());
    raw[8..].copy_from_slice(&nonce.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The key of the stanza of `archive` with public id `id`, or `<item-not-found/>`.
fn resolve(store: &dyn ArchiveStore, archive: &BareJid, id: &str) -> Result<u64, StanzaError> {
    let not_found = || {
        StanzaError::with_text(
            StanzaErrorCondition::ItemNotFound,
            format!("no archived stanza with id {id}"),
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id)
        .ok()
        .and_then(|raw| <[u8; 16]>::try_from(raw).ok())
        .ok_or_else(not_found)?;
    let key = u64::from_be_bytes(raw[..8].try_into().map_err(|_| not_found())?);
    let nonce = u64::from_be_bytes(raw[8..].try_into().map_err(|_| not_found())?);
    match store.archived(archive, key)? {
        Some(item) if item.nonce == nonce => Ok(key),
        _ => Err(not_found()),
    }
}

/// Where a page starts (XEP-0059).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paging {
    /// The first page of the result set.
    First,
    /// The page after this key.
    After(u64),
    /// The page before this key.
    Before(u64),
    /// The last page (an empty `<before/>`).
    Last,
}

/// A parsed, checked archive query.
#[derive(Debug)]
pub struct Query {
    pub queryid: Option<String>,
    /// Only stanzas with this party (the archive's owner decides what matching means).
    pub with: Option<Jid>,
    /// The keys the result set lies in, both inclusive (from start/end and after-id/before-id).
    from: u64,
    to: u64,
    /// Only these stanzas (the `ids` field).
    ids: Option<Vec<u64>>,
    max: usize,
    paging: Paging,
    /// Results of the page sent newest first (the page itself is the same).
    pub flip: bool,
}

fn bad_request(text: impl Into<String>) -> StanzaError {
    StanzaError::with_text(StanzaErrorCondition::BadRequest, text)
}

/// A XEP-0082 timestamp as microseconds, and how many more microseconds the precision it was
/// written with covers (an `end` of 12:00:00Z includes 12:00:00.5).
fn timestamp(field: &str, text: &str) -> Result<(u64, u64), StanzaError> {
    let at = chrono::DateTime::parse_from_rfc3339(text.trim())
        .map_err(|_| bad_request(format!("{field} is not a XEP-0082 timestamp: {text}")))?;
    let micros = u64::try_from(at.timestamp_micros()).unwrap_or(0);
    let digits = text
        .split_once('.')
        .map(|(_, frac)| frac.chars().take_while(char::is_ascii_digit).count())
        .unwrap_or(0);
    let spread = 10u64.pow(6u32.saturating_sub(digits as u32)) - 1;
    Ok((micros, spread))
}

fn single(field: &Field) -> Result<Option<&str>, StanzaError> {
    match field.values.as_slice() {
        [] => Ok(None),
        [value] if value.trim().is_empty() => Ok(None),
        [value] => Ok(Some(value.as_str())),
        _ => Err(bad_request(format!(
            "{} takes one value",
            field.var.as_deref().unwrap_or("")
        ))),
    }
}

impl Query {
    /// Reads a `<query xmlns='urn:xmpp:mam:2'/>` against `archive`. Ids that are not in it give
    /// `<item-not-found/>`, fields this archive does not know `<feature-not-implemented/>`.
    pub fn parse(
        store: &dyn ArchiveStore,
        archive: &BareJid,
        el: &Element,
    ) -> Result<Query, StanzaError> {
        let parsed = xmpp_parsers::mam::Query::try_from(el.clone())
            .map_err(|e| bad_request(format!("malformed archive query: {e}")))?;
        let mut query = Query {
            queryid: parsed.queryid.map(|q| q.0),
            with: None,
            from: 0,
            to: u64::MAX,
            ids: None,
            max: DEFAULT_PAGE,
            paging: Paging::First,
            flip: parsed.flip_page,
        };
        if let Some(form) = &parsed.form {
            if form.type_ != DataFormType::Submit {
                return Err(bad_request(
                    "the search form is submitted with type='submit'",
                ));
            }
            if form.form_type().is_some_and(|t| t != NS_MAM) {
                return Err(bad_request(format!("the form's FORM_TYPE is not {NS_MAM}")));
            }
            for field in &form.fields {
                query.field(store, archive, field)?;
            }
        }
        if let Some(set) = &parsed.set {
            if set.index.is_some() {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::FeatureNotImplemented,
                    "paging by index is not supported: use after or before",
                ));
            }
            if let Some(max) = set.max {
                query.max = max.min(MAX_PAGE);
            }
            if let Some(after) = set.after.as_deref() {
                let key = resolve(store, archive, after)?;
                query.from = query.from.max(key.saturating_add(1));
                query.paging = Paging::After(key);
            }
            match set.before.as_deref() {
                Some("") => query.paging = Paging::Last,
                Some(before) => {
                    let key = resolve(store, archive, before)?;
                    query.to = query.to.min(key.saturating_sub(1));
                    query.paging = Paging::Before(key);
                }
                None => {}
            }
        }
        Ok(query)
    }

    fn field(
        &mut self,
        store: &dyn ArchiveStore,
        archive: &BareJid,
        field: &Field,
    ) -> Result<(), StanzaError> {
        let var = field.var.as_deref().unwrap_or("");
        match var {
            "FORM_TYPE" => {}
            "with" => {
                if let Some(with) = single(field)? {
                    self.with = Some(
                        crate::addr::parse_jid(with)
                            .map_err(|_| bad_request(format!("with is not a JID: {with}")))?,
                    );
                }
            }
            "start" => {
                if let Some(text) = single(field)? {
                    self.from = self.from.max(timestamp(var, text)?.0);
                }
            }
            "end" => {
                if let Some(text) = single(field)? {
                    let (at, spread) = timestamp(var, text)?;
                    self.to = self.to.min(at.saturating_add(spread));
                }
            }
            "after-id" => {
                if let Some(id) = single(field)? {
                    let key = resolve(store, archive, id)?;
                    self.from = self.from.max(key.saturating_add(1));
                }
            }
            "before-id" => {
                if let Some(id) = single(field)? {
                    let key = resolve(store, archive, id)?;
                    self.to = self.to.min(key.saturating_sub(1));
                }
            }
            "ids" => {
                let mut keys = field
                    .values
                    .iter()
                    .map(|id| resolve(store, archive, id))
                    .collect::<Result<Vec<u64>, StanzaError>>()?;
                keys.sort_unstable();
                keys.dedup();
                self.ids = Some(keys);
            }
            other => {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::FeatureNotImplemented,
                    format!("unknown search field: {other}"),
                ))
            }
        }
        Ok(())
    }
}

/// Says which archived stanzas a query selects beyond its time and id bounds (its `with`, as
/// the archive's owner understands it).
pub type Filter = Box<dyn FnMut(&ArchivedStanza) -> bool>;

/// One page of results, oldest first.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<ArchivedStanza>,
    /// The page reaches the end of the result set in the direction of paging (XEP-0313 §4.3.3).
    pub complete: bool,
    /// The size of the whole result set and the first item's position in it, when known without
    /// another scan (the page is the whole set, or starts it).
    count: Option<usize>,
    first_index: Option<usize>,
}

/// Runs `query` on `archive`; `keep` says which stanzas match the query's `with` (and anything
/// else the owner filters). With `conversation`, only stanzas whose `with` has that bare JID are
/// read (through the store's index).
pub fn run(
    store: &dyn ArchiveStore,
    archive: &BareJid,
    query: &Query,
    conversation: Option<&BareJid>,
    keep: &mut dyn FnMut(&ArchivedStanza) -> bool,
) -> Result<Page, StoreError> {
    // One more than asked: whether it exists says whether the page is complete.
    let wanted = query.max.saturating_add(1);
    let backwards = matches!(query.paging, Paging::Before(_) | Paging::Last);
    let mut items = match &query.ids {
        Some(keys) => {
            let mut found = Vec::new();
            for &key in keys.iter().filter(|&&k| k >= query.from && k <= query.to) {
                if let Some(item) = store.archived(archive, key)? {
                    if keep(&item) {
                        found.push(item);
                    }
                }
            }
            if backwards {
                found.reverse();
            }
            found.truncate(wanted);
            found
        }
        None => store.scan(
            archive,
            conversation,
            query.from,
            query.to,
            backwards,
            wanted,
            keep,
        )?,
    };
    let complete = items.len() <= query.max;
    items.truncate(query.max);
    if backwards {
        items.reverse();
    }
    let whole = complete && matches!(query.paging, Paging::First | Paging::Last);
    let first_index = match query.paging {
        Paging::First => Some(0),
        Paging::Last if complete => Some(0),
        _ => None,
    };
    Ok(Page {
        count: whole.then_some(items.len()),
        first_index: first_index.filter(|_| !items.is_empty()),
        items,
        complete,
    })
}

/// One result of a query (XEP-0313 §4.2): `stanza` forwarded with the time the archive got it.
/// `from` is the archive (a room), or none for the user's own archive.
pub fn result_message(
    from: Option<&BareJid>,
    to: &FullJid,
    queryid: Option<&str>,
    item: &ArchivedStanza,
    stanza: &[u8],
) -> Bytes {
    let mut out = Vec::with_capacity(stanza.len() + 256);
    out.extend_from_slice(b"<message xmlns='jabber:client' to='");
    escape_into(to.as_str(), true, &mut out);
    if let Some(from) = from {
        out.extend_from_slice(b"' from='");
        escape_into(from.as_str(), true, &mut out);
    }
    out.extend_from_slice(b"'><result xmlns='");
    out.extend_from_slice(NS_MAM.as_bytes());
    if let Some(queryid) = queryid {
        out.extend_from_slice(b"' queryid='");
        escape_into(queryid, true, &mut out);
    }
    out.extend_from_slice(b"' id='");
    out.extend_from_slice(public_id(item.key, item.nonce).as_bytes());
    out.extend_from_slice(b"'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='");
    out.extend_from_slice(ns::DELAY.as_bytes());
    out.extend_from_slice(b"' stamp='");
    out.extend_from_slice(stamp(item.key).as_bytes());
    out.extend_from_slice(b"'/>");
    out.extend_from_slice(stanza);
    out.extend_from_slice(b"</forwarded></result></message>");
    Bytes::from(out)
}

/// The XEP-0082 time of a key.
pub fn stamp(key: u64) -> String {
    let at = chrono::DateTime::from_timestamp_micros(i64::try_from(key).unwrap_or(i64::MAX))
        .unwrap_or_default();
    crate::modules::offline::stamp(at)
}

/// The `<fin/>` that ends a query (XEP-0313 §4.3): the page's first and last ids, and whether it
/// is complete.
pub fn fin(page: &Page) -> Element {
    let mut set = Element::bare("set", NS_RSM);
    if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
        let mut el = Element::bare("first", NS_RSM);
        if let Some(index) = page.first_index {
            set_attr(&mut el, "index", &index.to_string());
        }
        el.append_text(public_id(first.key, first.nonce));
        set.append_child(el);
        let mut el = Element::bare("last", NS_RSM);
        el.append_text(public_id(last.key, last.nonce));
        set.append_child(el);
    }
    if let Some(count) = page.count {
        let mut el = Element::bare("count", NS_RSM);
        el.append_text(count.to_string());
        set.append_child(el);
    }
    let mut fin = Element::bare("fin", NS_MAM);
    if page.complete {
        set_attr(&mut fin, "complete", "true");
    }
    fin.append_child(set);
    fin
}

/// The search form an archive accepts (XEP-0313 §4.1.5), for a query of type get.
pub fn search_form() -> Element {
    let open_ids = Validate {
        datatype: Some(Datatype::String),
        method: Some(Method::Open),
        list_range: None,
    };
    let mut ids = Field::new("ids", FieldType::ListMulti);
    ids.validate = Some(open_ids);
    let form = DataForm::new(
        DataFormType::Form,
        NS_MAM,
        vec![
            Field::new("with", FieldType::JidSingle),
            Field::new("start", FieldType::TextSingle),
            Field::new("end", FieldType::TextSingle),
            Field::new("before-id", FieldType::TextSingle),
            Field::new("after-id", FieldType::TextSingle),
            ids,
        ],
    );
    let mut query = Element::bare("query", NS_MAM);
    query.append_child(form.into());
    query
}

/// The archive's first and last stanzas (XEP-0313 §5), or an empty `<metadata/>`.
pub fn metadata(store: &dyn ArchiveStore, archive: &BareJid) -> Result<Element, StoreError> {
    let mut metadata = Element::bare("metadata", NS_MAM);
    let first = store.scan(archive, None, 0, u64::MAX, false, 1, &mut |_| true)?;
    let last = store.scan(archive, None, 0, u64::MAX, true, 1, &mut |_| true)?;
    for (name, item) in [("start", first.first()), ("end", last.first())] {
        if let Some(item) = item {
            let mut el = Element::bare(name, NS_MAM);
            set_attr(&mut el, "id", &public_id(item.key, item.nonce));
            set_attr(&mut el, "timestamp", &stamp(item.key));
            metadata.append_child(el);
        }
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_without_fraction_covers_its_whole_second() {
        let (at, spread) = timestamp("end", "2024-01-02T03:04:05Z").unwrap();
        assert_eq!(spread, 999_999);
        assert_eq!(at % 1_000_000, 0);
        let (_, spread) = timestamp("end", "2024-01-02T03:04:05.123Z").unwrap();
        assert_eq!(spread, 999);
        assert!(timestamp("end", "yesterday").is_err());
    }

    #[test]
    fn keys_grow_even_within_one_microsecond() {
        let a = next_key(0);
        let b = next_key(a);
        assert!(b > a);
        assert_eq!(next_key(u64::MAX - 1), u64::MAX);
    }

    #[test]
    fn public_ids_carry_key_and_nonce() {
        let id = public_id(1_700_000_000_000_000, 42);
        assert_eq!(id.len(), 22);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&id)
            .unwrap();
        assert_eq!(raw[..8], 1_700_000_000_000_000u64.to_be_bytes());
        assert_eq!(raw[8..], 42u64.to_be_bytes());
    }
}
