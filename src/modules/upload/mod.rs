//! File and image sharing (XEP-0363 HTTP File Upload): the upload component at `[upload] domain`,
//! which hands out slots (a PUT and a GET URL on Rookery's HTTPS server), keeps what it knows about
//! files in the store and their bytes on disk, and applies the retention of the owner's chats.
//! The HTTP side (PUT, GET, HEAD) is in `http.rs`.

pub mod http;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use sha2::Digest as _;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field};
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::http_upload::{Get, Header, HeaderName, Put, SlotResult};

use super::{result_for, IqResult, Module, Spec, Support};
use crate::config::UploadConfig;
use crate::error::{set_attr, StanzaError, StanzaErrorCondition};
use crate::server::ServerState;
use crate::session::SessionCtx;
use crate::store::{StoreError, UploadRecord, UploadState, UploadStore};
use crate::xml::ns;

pub const NS_UPLOAD: &str = "urn:xmpp:http:upload:0";
const NS_PURPOSE: &str = "urn:xmpp:http:upload:purpose:0";
const PURPOSE_MESSAGE: &str = "urn:xmpp:http:upload:purpose:0#message";
const PURPOSE_PROFILE: &str = "urn:xmpp:http:upload:purpose:0#profile";
const PURPOSE_EPHEMERAL: &str = "urn:xmpp:http:upload:purpose:0#ephemeral";
const PURPOSE_PERMANENT: &str = "urn:xmpp:http:upload:purpose:0#permanent";

/// The upload component's disco#info features (it is not the server's: these live on its domain).
const SERVICE_FEATURES: &[&str] = &[
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    NS_UPLOAD,
    PURPOSE_EPHEMERAL,
    PURPOSE_MESSAGE,
    PURPOSE_PERMANENT,
    PURPOSE_PROFILE,
];

pub const MODULE: Module = Module {
    name: "upload",
    disco_features: &[],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        363,
        "1.2.0",
        Support::Complete,
        "component at [upload] domain; slots on Rookery's own HTTPS server with an Authorization header; size limit in disco (XEP-0128), per-user quota, single-use slots that lapse, ETag, Range and CORS on downloads; purposes message, profile, ephemeral and permanent decide retention",
    )],
};

/// Slots one user may hold unused (or being uploaded) at once; more requests wait.
const MAX_OPEN_SLOTS: usize = 64;
/// Files one user may keep, whatever their size (records and files on disk cost too).
const MAX_FILES: usize = 10_000;
/// Longest file name kept, in bytes (the ending is kept intact).
const MAX_FILENAME: usize = 200;
/// The path under which files are put and fetched.
pub const PATH_PREFIX: &str = "/upload";

/// The upload service: its domain, where files go, and the base of the URLs it hands out (known
/// once the HTTPS listener is bound).
pub struct Service {
    pub domain: String,
    dir: PathBuf,
    config: UploadConfig,
    base_url: OnceLock<String>,
}

impl Service {
    pub fn new(domain: String, dir: PathBuf, config: UploadConfig) -> Service {
        Service {
            domain,
            dir,
            config,
            base_url: OnceLock::new(),
        }
    }

    /// Turns the service on: from now on slots carry URLs under `base` (no trailing slash).
    pub fn enable(&self, base: String) {
        let _ = self.base_url.set(base);
    }

    /// Whether the service runs and `to` is its domain.
    pub fn serves(&self, to: &Jid) -> bool {
        self.base_url.get().is_some() && to.domain().as_str() == self.domain
    }

    /// The service's JID for the server's disco#items, when it runs.
    pub fn listed(&self) -> Option<&str> {
        self.base_url.get().map(|_| self.domain.as_str())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Where a file's bytes are kept: the id is random and URL-safe base64, so it never names
/// anything outside the directory, whatever the file was called.
pub fn file_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// Where a PUT writes before the file is complete.
fn partial_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.part"))
}

/// Deletes a file's bytes (both the complete file and an interrupted PUT's leftovers).
pub fn delete_file(dir: &Path, id: &str) {
    for path in [file_path(dir, id), partial_path(dir, id)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an uploaded file")
            }
        }
    }
}

/// Deletes every file of an account, records first (the account is being deleted).
pub fn delete_owner(
    store: &dyn UploadStore,
    dir: &Path,
    owner: &BareJid,
) -> Result<(), StoreError> {
    for (id, _) in store.uploads_of(owner)? {
        store.remove_upload(&id)?;
        delete_file(dir, &id);
    }
    Ok(())
}

pub fn now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// A stanza to the upload service: iq requests are answered; anything else has no meaning here.
pub async fn receive(ctx: &SessionCtx, el: Element, to: &Jid) {
    if el.name() != "iq" || matches!(el.attr("type"), Some("result" | "error") | None) {
        return;
    }
    let outcome = if to.node().is_some() || to.resource().is_some() {
        Err(StanzaError::new(StanzaErrorCondition::ItemNotFound))
    } else {
        iq(&ctx.state, &el, &ctx.jid)
    };
    match outcome {
        Ok(payload) => ctx.reply(&result_for(&el, payload)).await,
        Err(error) => {
            // XEP-0363 §6: the error repeats the request.
            let mut reply = error.reply_to(&el);
            if let (Some(reply), Some(request)) =
                (reply.as_mut(), el.get_child("request", NS_UPLOAD))
            {
                reply.append_child(request.clone());
            }
            if let Some(reply) = reply {
                ctx.reply(&reply).await;
            }
        }
    }
}

fn iq(state: &ServerState, el: &Element, from: &FullJid) -> IqResult {
    let set = el.attr("type") == Some("set");
    let payload = el
        .children()
        .next()
        .ok_or(StanzaErrorCondition::BadRequest)?;
    match (payload.ns().as_str(), payload.name(), set) {
        (ns::DISCO_INFO, "query", false) if payload.attr("node").is_none() => {
            Ok(Some(service_info(&state.upload).into()))
        }
        (ns::DISCO_ITEMS, "query", false) if payload.attr("node").is_none() => Ok(Some(
            DiscoItemsResult {
                node: None,
                items: Vec::new(),
                rsm: None,
            }
            .into(),
        )),
        (ns::DISCO_INFO | ns::DISCO_ITEMS, "query", false) => {
            Err(StanzaErrorCondition::ItemNotFound.into())
        }
        (NS_UPLOAD, "request", false) => slot(state, payload, &from.to_bare()).map(Some),
        (NS_UPLOAD | ns::DISCO_INFO | ns::DISCO_ITEMS, _, _) => Err(super::wrong_type()),
        _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
    }
}

fn service_info(service: &Service) -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![Identity::new("store", "file", "en", "HTTP File Upload")],
        features: SERVICE_FEATURES.iter().map(|f| f.to_string()).collect(),
        extensions: vec![DataForm::new(
            DataFormType::Result_,
            NS_UPLOAD,
            vec![Field::text_single(
                "max-file-size",
                &service.config.max_file_size.to_string(),
            )],
        )],
    }
}

/// What a slot request asks for, read from the `<request/>` element.
struct Request {
    filename: String,
    size: u64,
    content_type: String,
    purpose: Purpose,
}

/// XEP-0363 §5: what the file is for, which decides how long it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Message,
    /// Avatars and the like, and files uploaded for good: kept until the account goes.
    Kept,
    /// Gone at the latest at this time (Unix seconds).
    Ephemeral(u64),
}

fn bad_request(text: &str) -> StanzaError {
    StanzaError::with_text(StanzaErrorCondition::BadRequest, text)
}

fn read_request(payload: &Element) -> Result<Request, StanzaError> {
    let filename = payload
        .attr("filename")
        .ok_or_else(|| bad_request("the request has no filename"))?;
    let size = payload
        .attr("size")
        .ok_or_else(|| bad_request("the request has no size"))?
        .parse::<u64>()
        .map_err(|_| bad_request("the size is not a number of bytes"))?;
    if size == 0 {
        return Err(bad_request("the size must be at least one byte"));
    }
    let content_type = match payload.attr("content-type").map(str::trim) {
        None | Some("") => "application/octet-stream".to_string(),
        Some(value) if is_media_type(value) => value.to_string(),
        Some(_) => return Err(bad_request("the content-type is not a media type")),
    };
    let mut purpose = Purpose::Message;
    for child in payload.children().filter(|c| c.ns() == NS_PURPOSE) {
        purpose = match child.name() {
            "message" => Purpose::Message,
            "profile" | "permanent" => Purpose::Kept,
            "ephemeral" => {
                let stamp = child
                    .attr("expire-before")
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .ok_or_else(|| bad_request("expire-before is not a XEP-0082 date and time"))?;
                let at = stamp.timestamp();
                if at <= now() as i64 {
                    return Err(bad_request("expire-before is in the past"));
                }
                Purpose::Ephemeral(at as u64)
            }
            _ => return Err(bad_request("unknown upload purpose")),
        };
    }
    Ok(Request {
        filename: sanitise_filename(filename)
            .ok_or_else(|| bad_request("the file name is empty once cleaned"))?,
        size,
        content_type,
        purpose,
    })
}

/// `type/subtype` with optional parameters, in the characters RFC 9110 allows (no line breaks,
/// which would let a header be injected).
fn is_media_type(value: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    value.len() <= 255
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(kind, sub)| token(kind) && token(sub))
}

/// The name a file is served under: the last path component only, no control characters, no
/// leading dots, at most `MAX_FILENAME` bytes with its ending kept. None when nothing is left.
pub fn sanitise_filename(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .trim_start_matches('.')
        .to_string();
    if cleaned.is_empty() {
        return None;
    }
    if cleaned.len() <= MAX_FILENAME {
        return Some(cleaned);
    }
    let (stem, ending) = match cleaned.rfind('.') {
        Some(dot) if cleaned.len() - dot <= 16 => cleaned.split_at(dot),
        _ => (cleaned.as_str(), ""),
    };
    let mut cut = MAX_FILENAME - ending.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(format!("{}{ending}", &stem[..cut]))
}

/// When a file of this purpose, uploaded by `owner`, goes (Unix seconds); none: with the account.
fn expiry(state: &ServerState, owner: &BareJid, purpose: Purpose, now: u64) -> Option<u64> {
    let after = |age: Option<Duration>| age.map(|age| now.saturating_add(age.as_secs()));
    let chats = if state.mam.keeps_chats(state, owner) {
        after(state.config.archive.expiry())
    } else {
        after(state.config.upload.temporary_expiry())
    };
    match purpose {
        Purpose::Message => chats,
        Purpose::Kept => None,
        Purpose::Ephemeral(before) => Some(chats.map_or(before, |chats| chats.min(before))),
    }
}

fn slot(state: &ServerState, payload: &Element, owner: &BareJid) -> Result<Element, StanzaError> {
    let service = &state.upload;
    let base = service
        .base_url
        .get()
        .ok_or(StanzaErrorCondition::ServiceUnavailable)?;
    let request = read_request(payload)?;
    let max = service.config.max_file_size;
    if request.size > max {
        let mut too_large = Element::bare("file-too-large", NS_UPLOAD);
        let mut limit = Element::bare("max-file-size", NS_UPLOAD);
        limit.append_text(max.to_string());
        too_large.append_child(limit);
        let mut error = StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            format!("File too large. The maximum file size is {max} bytes"),
        );
        error.extra = Some(Box::new(too_large));
        return Err(error);
    }
    let now = now();
    let held = state.stores.uploads.uploads_of(owner)?;
    let used: u64 = held.iter().map(|(_, r)| r.size).sum();
    let open: Vec<&UploadRecord> = held
        .iter()
        .map(|(_, r)| r)
        .filter(|r| !matches!(r.state, UploadState::Stored { .. }))
        .collect();
    if open.len() >= MAX_OPEN_SLOTS {
        let next = open.iter().filter_map(|r| r.due()).min();
        return Err(wait(
            format!("Too many unused slots ({MAX_OPEN_SLOTS}); use or let some lapse first"),
            next,
        ));
    }
    if held.len() >= MAX_FILES {
        let next = held.iter().filter_map(|(_, r)| r.due()).min();
        return Err(wait(
            format!("Too many files ({MAX_FILES}) are kept for this account"),
            next,
        ));
    }
    let quota = service.config.quota;
    if used.saturating_add(request.size) > quota {
        // The earliest time something of theirs expires, if anything does.
        let next = held.iter().filter_map(|(_, r)| r.due()).min();
        return Err(wait(
            format!("Quota reached: {used} of {quota} bytes are in use"),
            next,
        ));
    }
    let secret = random_token(32);
    let record = UploadRecord {
        owner: owner.to_string(),
        filename: request.filename,
        size: request.size,
        content_type: request.content_type,
        created: now,
        expires: expiry(state, owner, request.purpose, now),
        state: UploadState::Slot {
            secret: sha2::Sha256::digest(secret.as_bytes()).to_vec(),
            until: now.saturating_add(service.config.slot_timeout),
        },
    };
    let id = loop {
        let id = random_token(24);
        if state.stores.uploads.create_upload(&id, &record)? {
            break id;
        }
    };
    let url = format!(
        "{base}{PATH_PREFIX}/{id}/{}",
        percent_encoding::utf8_percent_encode(&record.filename, URL_SEGMENT)
    );
    let slot = SlotResult {
        put: Put {
            url: url.clone(),
            headers: vec![Header {
                name: HeaderName::Authorization,
                value: format!("Bearer {secret}"),
            }],
        },
        get: Get { url },
    };
    tracing::debug!(owner = %owner, id, size = record.size, "upload slot issued");
    Ok(slot.into())
}

/// `<resource-constraint/>` (type wait) with XEP-0363's `<retry stamp/>` when it is known when
/// trying again can succeed.
fn wait(text: String, retry: Option<u64>) -> StanzaError {
    let mut error = StanzaError::with_text(StanzaErrorCondition::ResourceConstraint, text);
    if let Some(at) = retry.and_then(|at| chrono::DateTime::from_timestamp(at as i64, 0)) {
        let mut retry = Element::bare("retry", NS_UPLOAD);
        set_attr(
            &mut retry,
            "stamp",
            &at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        error.extra = Some(Box::new(retry));
    }
    error
}

/// Characters escaped in a file name used as a URL path segment (RFC 3986: everything but
/// unreserved characters, so that no name can make a second segment or a query).
const URL_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `bytes` random bytes as URL-safe base64 without padding.
fn random_token(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Deletes lapsed slots and expired files, also while the service is off (files uploaded before
/// keep their retention).
pub async fn expire(state: Arc<ServerState>) {
    let config = &state.config;
    let shortest = [
        Some(Duration::from_secs(config.upload.slot_timeout)),
        config.upload.temporary_expiry(),
        config.archive.expiry(),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(Duration::from_secs(60));
    let every = (shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => break,
        }
        let dir = state.upload.dir.clone();
        let store = state.stores.uploads.clone();
        match tokio::task::spawn_blocking(move || expire_due(store.as_ref(), &dir, now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::debug!(deleted, "expired uploads and slots"),
            Ok(Err(err)) => tracing::error!(error = %err, "cannot expire uploaded files"),
            Err(err) => tracing::error!(error = %err, "the upload expiry task failed"),
        }
    }
}

/// Deletes every record due by `now` and its file; returns how many went. A record that changed
/// since it was found due (a PUT that just claimed its slot) is left alone.
pub fn expire_due(store: &dyn UploadStore, dir: &Path, now: u64) -> Result<usize, StoreError> {
    const BATCH: usize = 256;
    let mut deleted = 0;
    loop {
        let due = store.uploads_due(now, BATCH)?;
        for id in &due {
            let Some(record) = store.upload(id)? else {
                continue;
            };
            if record.due().is_some_and(|due| due <= now) && store.remove_upload_if(id, &record)? {
                delete_file(dir, id);
                deleted += 1;
            }
        }
        if due.len() < BATCH {
            return Ok(deleted);
        }
    }
}

/// At start, before the HTTPS server takes requests: forgets the PUTs a stop interrupted (their
/// clients saw the connection fail and ask for a new slot), and deletes files that have no stored
/// record (a crash between the two deletions) and every `.part` file.
pub fn sweep(store: &dyn UploadStore, dir: &Path) -> Result<usize, StoreError> {
    let mut interrupted = Vec::new();
    store.each_upload(&mut |id, record| {
        if matches!(record.state, UploadState::Receiving { .. }) {
            interrupted.push((id.to_string(), record.clone()));
        }
        Ok(())
    })?;
    for (id, record) in &interrupted {
        store.remove_upload_if(id, record)?;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::Backend(format!("{}: {e}", dir.display()))),
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (id, partial) = match name.strip_suffix(".part") {
            Some(id) => (id, true),
            None => (name, false),
        };
        let keep = !partial
            && store
                .upload(id)?
                .is_some_and(|r| matches!(r.state, UploadState::Stored { .. }));
        if !keep {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot delete a stray upload");
            } else {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_cleaned() {
        assert_eq!(sanitise_filename("photo.png").as_deref(), Some("photo.png"));
        assert_eq!(
            sanitise_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            sanitise_filename("C:\\Users\\me\\cat.jpg").as_deref(),
            Some("cat.jpg")
        );
        assert_eq!(sanitise_filename(".htaccess").as_deref(), Some("htaccess"));
        assert_eq!(
            sanitise_filename("a\nb\u{0}.txt").as_deref(),
            Some("ab.txt")
        );
        assert_eq!(
            sanitise_filename("très cool.jpg").as_deref(),
            Some("très cool.jpg")
        );
        for empty in ["", "..", "/", "dir/", " . "] {
            assert_eq!(sanitise_filename(empty), None, "{empty:?}");
        }
        let long = format!("{}.jpeg", "é".repeat(300));
        let cut = sanitise_filename(&long).unwrap();
        assert!(cut.len() <= MAX_FILENAME && cut.ends_with(".jpeg"), "{cut}");
    }

    #[test]
    fn media_types() {
        for good in [
            "image/png",
            "text/plain; charset=utf-8",
            "application/vnd.a+json",
        ] {
            assert!(is_media_type(good), "{good}");
        }
        for bad in [
            "png",
            "image/",
            "/png",
            "image/png\r\nX-Evil: 1",
            "ima ge/png",
            "a/b/c",
        ] {
            assert!(!is_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn url_segments_cannot_escape() {
        let encoded =
            percent_encoding::utf8_percent_encode("a b/../c?d#e.jpg", URL_SEGMENT).to_string();
        assert_eq!(encoded, "a%20b%2F..%2Fc%3Fd%23e.jpg");
    }
}
