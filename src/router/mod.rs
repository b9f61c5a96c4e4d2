//! The session registry (which connection holds which full JID) and the delivery of stanzas between
//! local sessions. This is the seam where a cluster mode will plug in: everything above calls
//! `Router`, never a session directly.

pub mod deliver;
pub mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use jid::{BareJid, FullJid};
use minidom::Element;
use tokio::sync::Notify;

use crate::error::StreamError;
use crate::session::sm::ResumeRequest;

/// What a session's writer is told to send.
#[derive(Debug)]
pub enum Outbound {
    /// A serialized stanza (counted by stream management).
    Stanza(Bytes),
    /// A message whose durable copy is in the user's offline queue under this key: the copy is
    /// removed once the client has the message (see `offline::settle`).
    Stored(Bytes, u64),
    /// A serialized nonza, such as a stream management ack (not counted).
    Nonza(Bytes),
    /// `<enabled/>`: stanzas written after it are counted (XEP-0198 §4).
    EnableSm(Bytes),
}

/// How a session is told to stop, out of band of its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// Send this stream error, then close.
    Error(StreamError),
    /// Close with `</stream:stream>`.
    Quietly,
}

/// A handle on a bound session: its queue and its off switch.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub jid: FullJid,
    /// What other sessions need to know of this one's presence (RFC 6121 §4).
    pub presence: Arc<PresenceState>,
    queue: queue::Sender<Outbound>,
    control: Arc<Control>,
}

/// What reaches a session out of band of its queue: a request to close (a kick, shutdown) and a
/// new connection resuming it (XEP-0198). One allocation per session for both.
#[derive(Default)]
pub struct Control {
    signals: Mutex<Signals>,
    notify: Notify,
}

#[derive(Default)]
struct Signals {
    closing: Option<Closing>,
    resume: Option<Box<ResumeRequest>>,
    /// The session has ended: resumption requests are refused.
    ended: bool,
}

/// What `Control::next` reports.
pub enum Signal {
    Close(Closing),
    Resume(Box<ResumeRequest>),
}

impl Control {
    fn signals(&self) -> std::sync::MutexGuard<'_, Signals> {
        // Plain data: a panic elsewhere leaves it consistent.
        self.signals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the session to close; the first request wins.
    pub fn close(&self, closing: Closing) {
        let mut signals = self.signals();
        if signals.closing.is_none() {
            signals.closing = Some(closing);
            drop(signals);
            self.notify.notify_one();
        }
    }

    /// Hands a resuming connection to the session; given back if the session has ended or is
    /// already being resumed.
    pub fn offer_resume(&self, request: Box<ResumeRequest>) -> Result<(), Box<ResumeRequest>> {
        let mut signals = self.signals();
        if signals.ended || signals.resume.is_some() {
            return Err(request);
        }
        signals.resume = Some(request);
        drop(signals);
        self.notify.notify_one();
        Ok(())
    }

    /// The session is over: later offers are refused; one that came too late is returned.
    pub fn end(&self) -> Option<Box<ResumeRequest>> {
        let mut signals = self.signals();
        signals.ended = true;
        signals.resume.take()
    }

    /// Waits for the next signal (a close first). Cancel-safe: signals stay until taken.
    pub async fn next(&self) -> Signal {
        loop {
            {
                let mut signals = self.signals();
                if let Some(closing) = &signals.closing {
                    return Signal::Close(closing.clone());
                }
                if let Some(request) = signals.resume.take() {
                    return Signal::Resume(request);
                }
            }
            // A signal sent after the check above leaves a permit: no wake-up is lost.
            self.notify.notified().await;
        }
    }
}

/// A session's presence as the rest of the server sees it. Written by the session's own task,
/// read by others when routing (priorities), answering probes and pushing roster changes.
#[derive(Default)]
pub struct PresenceState {
    /// Sent available presence and not unavailable since ("available resource", RFC 6121 §4.1).
    available: AtomicBool,
    priority: AtomicI32,
    /// Asked for the roster, so it gets roster pushes ("interested resource", RFC 6121 §2.1.6).
    interested: AtomicBool,
    /// The last available presence broadcast, without `to`, for answering probes. Kept serialized:
    /// a parsed element costs about ten times its text, and probes are rare.
    last: Mutex<Option<Box<str>>>,
    /// Asked for message carbons (XEP-0280).
    carbons: AtomicBool,
    /// Asked for the blocklist, so it gets block/unblock pushes (XEP-0191).
    blocklist_interested: AtomicBool,
    /// The PEP nodes it wants notifications of (XEP-0115 `+notify` features), once known.
    notify: Mutex<Option<Arc<crate::modules::caps::Notify>>>,
}

impl PresenceState {
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    pub fn priority(&self) -> i32 {
        self.priority.load(Ordering::Acquire)
    }

    pub fn is_interested(&self) -> bool {
        self.interested.load(Ordering::Acquire)
    }

    pub fn carbons(&self) -> bool {
        self.carbons.load(Ordering::Acquire)
    }

    pub fn set_carbons(&self, on: bool) {
        self.carbons.store(on, Ordering::Release);
    }

    pub fn blocklist_interested(&self) -> bool {
        self.blocklist_interested.load(Ordering::Acquire)
    }

    pub fn set_blocklist_interested(&self) {
        self.blocklist_interested.store(true, Ordering::Release);
    }

    pub fn set_interested(&self) {
        self.interested.store(true, Ordering::Release);
    }

    /// Records an available presence (with its priority) as the one probes are answered with.
    pub fn set_available(&self, priority: i32, presence: Element) {
        let text = String::from_utf8(crate::xml::serialize(&presence)).unwrap_or_default();
        if let Ok(mut last) = self.last.lock() {
            *last = Some(text.into_boxed_str());
        }
        self.priority.store(priority, Ordering::Release);
        self.available.store(true, Ordering::Release);
    }

    pub fn set_unavailable(&self) {
        self.available.store(false, Ordering::Release);
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }

    /// The PEP nodes this session wants notifications of (none until its caps are known).
    pub fn notify(&self) -> Option<Arc<crate::modules::caps::Notify>> {
        self.notify.lock().ok().and_then(|n| n.clone())
    }

    /// Records what the session's caps say it wants; true when that changed.
    pub fn set_notify(&self, notify: Arc<crate::modules::caps::Notify>) -> bool {
        let Ok(mut current) = self.notify.lock() else {
            return false;
        };
        if current.as_deref() == Some(&*notify) {
            return false;
        }
        *current = Some(notify);
        true
    }

    /// The last available presence, if the session is available.
    pub fn last(&self) -> Option<Element> {
        if !self.is_available() {
            return None;
        }
        let text = self.last.lock().ok().and_then(|l| l.clone())?;
        text.parse::<Element>().ok()
    }
}

/// How long a sender waits on a full recipient queue before giving up on that recipient.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);

impl SessionHandle {
    pub fn new(id: u64, jid: FullJid, queue: queue::Sender<Outbound>) -> Self {
        SessionHandle {
            id,
            jid,
            presence: Arc::new(PresenceState::default()),
            queue,
            control: Arc::default(),
        }
    }

    /// Asks the session to close; the first request wins.
    pub fn close(&self, closing: Closing) {
        self.control.close(closing);
    }

    /// The session's signals, for the session itself to watch.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Queues bytes for the session if there is room now; gives them back if not (or if the
    /// session has ended).
    pub fn try_send(&self, out: Outbound) -> Result<(), Outbound> {
        match self.queue.try_send(out) {
            Ok(()) => Ok(()),
            Err(queue::TrySendError::Closed(out) | queue::TrySendError::Full(out)) => Err(out),
        }
    }

    /// Queues bytes for the session now, in order, even beyond its queue's capacity by up to
    /// `extra` stanzas (a fan-out that must not wait on one slow reader). A session that falls
    /// further behind than that is not reading: it is closed, and the bytes are given back.
    pub fn push_beyond(&self, out: Outbound, extra: usize) -> Result<(), Outbound> {
        match self.queue.push_beyond(out, extra) {
            Ok(()) => Ok(()),
            Err(queue::TrySendError::Closed(out)) => Err(out),
            Err(queue::TrySendError::Full(out)) => {
                tracing::warn!(jid = %self.jid, "session fell too far behind a fan-out; closing it");
                self.close(Closing::Error(StreamError::with_text(
                    crate::error::StreamErrorCondition::PolicyViolation,
                    "too many unread stanzas",
                )));
                Err(out)
            }
        }
    }

    /// Queues bytes for the session. Waits while its queue is full (back-pressure); a recipient that
    /// stays full that long is not reading, so it is closed rather than allowed to stall the sender.
    pub async fn send(&self, out: Outbound) -> bool {
        match self.queue.try_send(out) {
            Ok(()) => true,
            Err(queue::TrySendError::Closed(_)) => false,
            // Boxed: the common case above keeps every caller's future small.
            Err(queue::TrySendError::Full(out)) => Box::pin(self.send_waiting(out)).await,
        }
    }

    /// Waits for room in a full queue, but not forever: a client that reads nothing is closed.
    async fn send_waiting(&self, out: Outbound) -> bool {
        match tokio::time::timeout(DELIVERY_WAIT, self.queue.send(out)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(jid = %self.jid, "session queue stayed full; closing the session");
                self.close(Closing::Error(StreamError::with_text(
                    crate::error::StreamErrorCondition::PolicyViolation,
                    "too many unread stanzas",
                )));
                false
            }
        }
    }
}

/// Bound sessions by bare JID, then resource.
#[derive(Default)]
pub struct Router {
    sessions: RwLock<HashMap<BareJid, Vec<SessionHandle>>>,
    /// Sessions that can be resumed (XEP-0198), by SM-ID.
    resumable: Mutex<HashMap<String, crate::session::sm::ResumeHandle>>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a session; returns the session it replaces (same full JID), which the caller closes
    /// with `<conflict/>` (RFC 6120 §7.7.2.2).
    pub fn register(&self, handle: SessionHandle) -> Option<SessionHandle> {
        let Ok(mut map) = self.sessions.write() else {
            return None;
        };
        let list = map.entry(handle.jid.to_bare()).or_default();
        let replaced = list
            .iter()
            .position(|h| h.jid == handle.jid)
            .map(|i| list.swap_remove(i));
        list.push(handle);
        replaced
    }

    /// Removes a session if it is still the one registered under its JID.
    pub fn unregister(&self, jid: &FullJid, id: u64) {
        let Ok(mut map) = self.sessions.write() else {
            return;
        };
        let bare = jid.to_bare();
        if let Some(list) = map.get_mut(&bare) {
            list.retain(|h| h.id != id);
            if list.is_empty() {
                map.remove(&bare);
            }
        }
    }

    /// The session bound to a full JID.
    pub fn get(&self, jid: &FullJid) -> Option<SessionHandle> {
        let map = self.sessions.read().ok()?;
        map.get(&jid.to_bare())?
            .iter()
            .find(|h| &h.jid == jid)
            .cloned()
    }

    /// Every session of an account.
    pub fn resources(&self, jid: &BareJid) -> Vec<SessionHandle> {
        self.sessions
            .read()
            .ok()
            .and_then(|map| map.get(jid).cloned())
            .unwrap_or_default()
    }

    /// The available sessions of an account (RFC 6121 §4.1 "available resources").
    pub fn available(&self, jid: &BareJid) -> Vec<SessionHandle> {
        let mut sessions = self.resources(jid);
        sessions.retain(|s| s.presence.is_available());
        sessions
    }

    /// The sessions of an account that asked for the roster and so get roster pushes.
    pub fn interested(&self, jid: &BareJid) -> Vec<SessionHandle> {
        let mut sessions = self.resources(jid);
        sessions.retain(|s| s.presence.is_interested());
        sessions
    }

    /// Closes every session of an account (account deleted).
    pub fn close_account(&self, jid: &BareJid, closing: Closing) {
        for handle in self.resources(jid) {
            handle.close(closing.clone());
        }
    }

    /// Closes every session (server shutdown).
    pub fn close_all(&self, closing: Closing) {
        let handles: Vec<SessionHandle> = match self.sessions.read() {
            Ok(sessions) => sessions.values().flatten().cloned().collect(),
            Err(_) => return,
        };
        for handle in handles {
            handle.close(closing.clone());
        }
    }

    pub fn add_resumable(&self, id: String, handle: crate::session::sm::ResumeHandle) {
        if let Ok(mut map) = self.resumable.lock() {
            map.insert(id, handle);
        }
    }

    pub fn remove_resumable(&self, id: &str) {
        if let Ok(mut map) = self.resumable.lock() {
            map.remove(id);
        }
    }

    /// The session a resumption names, if it is still resumable.
    pub fn resumable(&self, id: &str) -> Option<crate::session::sm::ResumeHandle> {
        self.resumable.lock().ok()?.get(id).cloned()
    }

    /// Number of bound sessions.
    pub fn count(&self) -> usize {
        self.sessions
            .read()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}
