//! A bound client session: reads stanzas and hands them to the router and the server's handlers,
//! and writes what is queued for it. One task per session: reading, handling and writing are
//! futures of that task (see `Writer`), so an idle session costs one small task.
//!
//! With XEP-0198 resumption a session outlives its connection: when the connection is lost the
//! session hibernates (queueing what arrives) until the client resumes on a new connection or
//! `[c2s] resume_timeout` passes. Whatever the client never acknowledged is stored offline.

pub mod csi;
pub mod sm;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use jid::FullJid;
use minidom::Element;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use crate::error::{
    set_attr, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition,
};
use crate::modules::offline;
use crate::router::{queue, Closing, Outbound, SessionHandle, Signal};
use crate::server::ServerState;
use crate::stream::Bound;
use crate::transport::Transport;
use crate::xml::{self, ns, XmlError, XmlEvent, XmlReader};

use sm::{ResumeHandle, ResumeRequest, Unacked};

/// What handlers see of the session that sent a stanza.
pub struct SessionCtx {
    pub state: Arc<ServerState>,
    pub jid: FullJid,
    pub handle: SessionHandle,
    /// State only this session's task touches (never held across an await).
    pub local: std::sync::Mutex<SessionLocal>,
    /// Stanzas from this client were written to the store since the last flush: an ack must wait
    /// for one (XEP-0198: acknowledged means stored).
    pub unflushed: std::sync::atomic::AtomicBool,
}

/// Per-session state that other sessions do not need.
#[derive(Default)]
pub struct SessionLocal {
    /// Entities that got directed presence and must hear when this session goes away (RFC 6121 §4.6).
    /// A list, not a set: it is short, and every session carries one (a set is twice the size empty).
    pub directed: Vec<jid::Jid>,
}

impl SessionCtx {
    /// Queues a stanza for this session's own client.
    pub async fn reply(&self, el: &Element) {
        let bytes = xml::serialize(el);
        if !bytes.is_empty() {
            self.handle.send(Outbound::Stanza(Bytes::from(bytes))).await;
        }
    }

    /// Queues an error reply to `stanza`, unless it is one that must not be answered.
    pub async fn reply_error(&self, stanza: &Element, error: impl Into<StanzaError>) {
        if let Some(reply) = error.into().reply_to(stanza) {
            self.reply(&reply).await;
        }
    }
}

/// Runs a session until its stream ends for good. Set up here, outside the future, so that the
/// future holds each piece of state once.
pub fn run(state: Arc<ServerState>, bound: Bound) -> impl std::future::Future<Output = ()> {
    let Bound {
        jid,
        reader,
        writer,
        peer,
        tls,
    } = bound;
    let (queue_tx, queue) = queue::bounded(state.config.c2s.session_queue);
    let id = state.next_session_id();
    let handle = SessionHandle::new(id, jid.clone(), queue_tx);
    if let Some(old) = state.router.register(handle.clone()) {
        tracing::info!(jid = %jid, "a new connection bound the same resource; closing the old one");
        old.close(Closing::Error(StreamError::with_text(
            StreamErrorCondition::Conflict,
            "replaced by a new connection",
        )));
    }
    // Shutdown closes the registered sessions (`server::close_sessions_at_shutdown`); one that
    // registered after that looks here.
    if *state.shutdown.borrow() {
        handle.close(Closing::Error(StreamError::new(
            StreamErrorCondition::SystemShutdown,
        )));
    }
    let ctx = SessionCtx {
        state: state.clone(),
        jid: jid.clone(),
        handle,
        local: Default::default(),
        unflushed: Default::default(),
    };
    tracing::debug!(%peer, jid = %jid, tls, "session started");
    let session = Session {
        ctx,
        queue,
        unacked: Mutex::new(Unacked::default()),
        sm: StreamManagement::default(),
        pending: VecDeque::new(),
    };
    session.run(Box::new(reader), writer)
}

/// Why a connection of a session ended.
enum End {
    /// The client closed its stream: answer with ours.
    Closed,
    /// Close with these bytes (a stream error).
    Error(StreamError),
    /// Asked to close from outside (conflict, account removed, shutdown).
    Kicked(Closing),
    /// The connection is gone without a goodbye: resumable, if enabled.
    Lost,
    /// A new connection resumes this session while this one still looks alive.
    Resume(Box<ResumeRequest>),
}

/// One connection of a session: the stream it reads and the socket half it writes.
struct Connection {
    /// Boxed: moved around between connections, and large.
    reader: Box<XmlReader<ReadHalf<Transport>>>,
    writer: Writer,
}

/// XEP-0198 state that only the reading side touches.
#[derive(Default)]
struct StreamManagement {
    enabled: bool,
    /// The SM-ID when resumption is enabled.
    id: Option<String>,
    /// Stanzas from the client handled so far (XEP-0198 `h`, mod 2^32).
    handled: u32,
}

struct Session {
    ctx: SessionCtx,
    /// What other sessions and the server queued for this client. It outlives connections: a
    /// hibernating session keeps filling it, a resumed one goes on with it.
    queue: queue::Receiver<Outbound>,
    /// Stanzas written and not yet acknowledged (XEP-0198), shared by the writer (which records)
    /// and the reader (which applies acks).
    unacked: Mutex<Unacked>,
    sm: StreamManagement,
    /// Stanzas queued while hibernating, sent on resumption.
    pending: VecDeque<sm::Sent>,
}

impl Session {
    async fn run(
        mut self,
        reader: Box<XmlReader<ReadHalf<Transport>>>,
        writer: WriteHalf<Transport>,
    ) {
        let mut connection = Connection {
            reader,
            writer: Writer::new(writer, None, Vec::new(), &self.unacked),
        };
        loop {
            let end = self.serve(&mut connection).await;
            let request = match end {
                End::Closed => {
                    let close = Bytes::from_static(xml::STREAM_CLOSE);
                    Box::pin(self.stop(connection, Some(close))).await;
                    break;
                }
                End::Error(err) => {
                    Box::pin(self.stop(connection, Some(Bytes::from(err.to_bytes())))).await;
                    break;
                }
                End::Kicked(closing) => {
                    let bytes = match closing {
                        Closing::Error(err) => Bytes::from(err.to_bytes()),
                        Closing::Quietly => Bytes::from_static(xml::STREAM_CLOSE),
                    };
                    Box::pin(self.stop(connection, Some(bytes))).await;
                    break;
                }
                End::Resume(request) => {
                    // XEP-0198 §5: the old connection of a resumed session gets <conflict/>.
                    let conflict = StreamError::with_text(
                        StreamErrorCondition::Conflict,
                        "the session was resumed elsewhere",
                    );
                    Box::pin(self.stop(connection, Some(Bytes::from(conflict.to_bytes())))).await;
                    *request
                }
                End::Lost => {
                    Box::pin(self.stop(connection, None)).await;
                    if self.sm.id.is_none() {
                        break;
                    }
                    match Box::pin(self.hibernate()).await {
                        Some(request) => request,
                        None => break,
                    }
                }
            };
            match Box::pin(self.resume(request)).await {
                Some(next) => connection = next,
                None => break,
            }
        }
        Box::pin(self.finish()).await;
    }

    /// Ends a connection: the write in flight finishes, then what is queued and `closing` (if
    /// any) are written. What CSI was still holding goes first into `pending`, for a resumed
    /// stream to send.
    async fn stop(&mut self, connection: Connection, closing: Option<Bytes>) {
        let held = connection
            .writer
            .close(&mut self.queue, &self.unacked, &self.ctx, closing)
            .await;
        for stanza in held.into_iter().rev() {
            self.pending.push_front((stanza, None));
        }
    }

    /// Reads and handles the client's stream, and writes what is queued for it, until the
    /// connection ends.
    async fn serve(&mut self, connection: &mut Connection) -> End {
        loop {
            if connection.writer.lost {
                return End::Lost;
            }
            let event = tokio::select! {
                signal = self.ctx.handle.control().next() => return match signal {
                    Signal::Close(closing) => End::Kicked(closing),
                    Signal::Resume(request) => End::Resume(request),
                },
                () = connection.writer.run(&mut self.queue, &self.unacked, &self.ctx) => return End::Lost,
                event = connection.reader.next() => event,
            };
            match event {
                Ok(XmlEvent::Element(el)) if el.ns() == csi::NS => match el.name() {
                    "active" => connection.writer.set_inactive(false, &self.unacked),
                    "inactive" => connection.writer.set_inactive(true, &self.unacked),
                    other => {
                        return End::Error(StreamError::with_text(
                            StreamErrorCondition::UnsupportedStanzaType,
                            format!("<{other}/> is not a client state"),
                        ))
                    }
                },
                Ok(XmlEvent::Element(el)) => {
                    let stanza = el.ns() != sm::NS;
                    // Boxed, like the other branches that are large and rare per connection: the
                    // task of an idle session is then a few hundred bytes.
                    let work: Handling<'_> = if stanza {
                        Box::pin(handle_element(&self.ctx, el))
                    } else {
                        Box::pin(stream_management(
                            &self.ctx,
                            &mut self.sm,
                            &self.unacked,
                            el,
                        ))
                    };
                    let handled = connection
                        .writer
                        .alongside(&mut self.queue, &self.unacked, &self.ctx, work)
                        .await;
                    if let Err(err) = handled {
                        return End::Error(err);
                    }
                    // Stanzas are counted once handled, from <enable/> on: an ack covers only
                    // what was processed (and stored). Nonzas are not counted.
                    if stanza && self.sm.enabled {
                        self.sm.handled = self.sm.handled.wrapping_add(1);
                    }
                }
                Ok(XmlEvent::StreamClose) => return End::Closed,
                Ok(XmlEvent::StreamOpen(_)) => {
                    return End::Error(StreamError::new(StreamErrorCondition::BadFormat))
                }
                Err(XmlError::Eof | XmlError::Io(_)) => return End::Lost,
                Err(err) => {
                    tracing::info!(jid = %self.ctx.jid, error = %err, "closing session on bad input");
                    return End::Error(err.into());
                }
            }
        }
    }

    /// Keeps the session while its connection is gone, until a resumption, the timeout, or a close
    /// (a kick or shutdown). Returns the resumption request, if one came.
    async fn hibernate(&mut self) -> Option<ResumeRequest> {
        let limit = self.ctx.state.config.c2s.session_queue.max(1) * 4;
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(self.ctx.state.config.c2s.resume_timeout);
        tracing::debug!(jid = %self.ctx.jid, "connection lost; session kept for resumption");
        loop {
            tokio::select! {
                signal = self.ctx.handle.control().next() => return match signal {
                    Signal::Resume(request) => Some(*request),
                    Signal::Close(_) => None,
                },
                item = self.queue.recv() => {
                    match item {
                        Some(Outbound::Stanza(bytes)) => self.pending.push_back((bytes, None)),
                        Some(Outbound::Stored(bytes, key)) => self.pending.push_back((bytes, Some(key))),
                        Some(_) => {}
                        None => return None,
                    }
                    if self.pending.len() > limit {
                        tracing::info!(jid = %self.ctx.jid, "too much waiting for a hibernating session; ending it");
                        return None;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// Takes over a new connection (XEP-0198 §5): applies the client's h, answers <resumed/> and sends
    /// again what the client did not handle. `None` when the resumption cannot proceed.
    async fn resume(&mut self, request: ResumeRequest) -> Option<Connection> {
        let ResumeRequest {
            reader,
            mut writer,
            h,
        } = request;
        let resend = match self.unacked.lock() {
            Ok(mut unacked) => unacked.take_for_resend(h),
            Err(_) => Ok((Vec::new(), Vec::new())),
        };
        let mut resend = match resend {
            Ok((acked, resend)) => {
                offline::settle(&self.ctx.state, &self.ctx.jid.to_bare(), &acked);
                resend
            }
            Err(too_high) => {
                let mut bytes = sm::failed("unexpected-request", Some(self.sm.handled)).to_vec();
                bytes.extend(handled_count_too_high(too_high).to_bytes());
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), writer.write_all(&bytes)).await;
                let _ = writer.shutdown().await;
                return None;
            }
        };
        resend.extend(self.pending.drain(..));
        // The h in <resumed/> acknowledges like <a/> does: only what is on disk.
        if self
            .ctx
            .unflushed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            if let Err(err) = self.ctx.state.stores.flush().await {
                tracing::error!(error = %err, "flush before resuming failed");
                return None;
            }
        }
        let previd = self.sm.id.clone().unwrap_or_default();
        let resumed = Bytes::from(format!(
            "<resumed xmlns='{}' h='{}' previd='{previd}'/>",
            sm::NS,
            self.sm.handled
        ));
        tracing::info!(jid = %self.ctx.jid, resent = resend.len(), "session resumed");
        // A new Writer: XEP-0352 says a resumed stream starts active.
        Some(Connection {
            reader: Box::new(reader),
            writer: Writer::new(writer, Some(resumed), resend, &self.unacked),
        })
    }

    /// The session is over: unacknowledged and undelivered messages go to offline storage, contacts
    /// hear the resource went away, and the session leaves the registry.
    async fn finish(&mut self) {
        let state = self.ctx.state.clone();
        let jid = self.ctx.jid.clone();
        if let Some(id) = self.sm.id.take() {
            state.router.remove_resumable(&id);
        }
        // A connection that asked to resume just now is closed with the session.
        drop(self.ctx.handle.control().end());
        let current = state.router.get(&jid).map(|h| h.id) == Some(self.ctx.handle.id);
        // Unregister first so that messages stored below, and any arriving now, go offline rather
        // than to this dead session.
        state.router.unregister(&jid, self.ctx.handle.id);
        let mut left: Vec<sm::Sent> = self
            .unacked
            .lock()
            .map(|mut u| u.take_all())
            .unwrap_or_default();
        left.extend(self.pending.drain(..));
        self.queue.close();
        while let Some(item) = self.queue.try_recv() {
            match item {
                Outbound::Stanza(bytes) => left.push((bytes, None)),
                Outbound::Stored(bytes, key) => left.push((bytes, Some(key))),
                _ => {}
            }
        }
        // Messages with a stored copy stay stored for the next login (given back here); the others
        // worth keeping are stored now.
        let user = jid.to_bare();
        let keys: Vec<u64> = left.iter().filter_map(|(_, key)| *key).collect();
        state.offline_claims.release(&user, &keys);
        let unstored = left
            .into_iter()
            .filter(|(_, key)| key.is_none())
            .map(|(bytes, _)| bytes)
            .collect();
        offline::store_undelivered(&state, &user, unstored).await;
        // Unavailable presence for a session that ends without saying so (RFC 6121 §4.5.3), unless a
        // new connection took over this full JID: then the resource did not go away.
        if current {
            if let Err(err) = crate::modules::presence::go_unavailable(&self.ctx, None).await {
                tracing::error!(error = %err, jid = %jid, "unavailable broadcast failed");
            }
        }
        tracing::debug!(jid = %jid, "session ended");
    }
}

/// A client element being handled (a stanza, or a stream management nonza).
type Handling<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StreamError>> + Send + 'a>>;

/// XEP-0198 nonzas from the client: enable, request, answer.
async fn stream_management(
    ctx: &SessionCtx,
    sm: &mut StreamManagement,
    unacked: &Mutex<Unacked>,
    el: Element,
) -> Result<(), StreamError> {
    let out = |bytes: Bytes| ctx.handle.send(Outbound::Nonza(bytes));
    match el.name() {
        "enable" if sm.enabled => {
            // §4: a second <enable/> is answered with failed and ends the stream.
            out(sm::failed("unexpected-request", None)).await;
            return Err(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "stream management is already enabled",
            ));
        }
        "enable" => {
            sm.enabled = true;
            let resume = matches!(el.attr("resume"), Some("true" | "1"));
            let enabled = if resume {
                let id = crate::modules::stanza_id::new_id();
                ctx.state.router.add_resumable(
                    id.clone(),
                    ResumeHandle {
                        user: ctx.jid.to_bare(),
                        control: ctx.handle.control().clone(),
                    },
                );
                let max = ctx.state.config.c2s.resume_timeout;
                let text = format!(
                    "<enabled xmlns='{}' id='{id}' resume='true' max='{max}'/>",
                    sm::NS
                );
                sm.id = Some(id);
                text
            } else {
                format!("<enabled xmlns='{}'/>", sm::NS)
            };
            // The writer starts counting when it writes <enabled/>, in order with the stanzas.
            ctx.handle
                .send(Outbound::EnableSm(Bytes::from(enabled)))
                .await;
        }
        "r" if sm.enabled => {
            // Acknowledged means durable: what the handled stanzas stored is flushed first
            // (shared with every other session asking now: group commit).
            if ctx
                .unflushed
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                if let Err(err) = ctx.state.stores.flush().await {
                    tracing::error!(error = %err, "flush before an ack failed");
                    return Err(StreamError::new(StreamErrorCondition::InternalServerError));
                }
            }
            out(Bytes::from(format!(
                "<a xmlns='{}' h='{}'/>",
                sm::NS,
                sm.handled
            )))
            .await;
        }
        "a" if sm.enabled => {
            let h = el
                .attr("h")
                .and_then(|h| h.parse::<u32>().ok())
                .ok_or_else(|| {
                    StreamError::with_text(
                        StreamErrorCondition::BadFormat,
                        "<a/> needs a numeric h",
                    )
                })?;
            let result = match unacked.lock() {
                Ok(mut unacked) => unacked.ack(h),
                Err(_) => Ok(Vec::new()),
            };
            match result {
                // The client has these: their stored copies can go.
                Ok(keys) => offline::settle(&ctx.state, &ctx.jid.to_bare(), &keys),
                Err(too_high) => return Err(handled_count_too_high(too_high)),
            }
        }
        "r" | "a" => {}
        "resume" => {
            out(sm::failed("unexpected-request", None)).await;
        }
        other => {
            return Err(StreamError::with_text(
                StreamErrorCondition::UnsupportedStanzaType,
                format!("<{other}/> is not a stream management element"),
            ))
        }
    };
    Ok(())
}

/// XEP-0198 §5: the peer acknowledged more than it was sent.
fn handled_count_too_high(too_high: sm::TooHigh) -> StreamError {
    let mut err = StreamError::with_text(
        StreamErrorCondition::UndefinedCondition,
        format!(
            "you acknowledged {} stanzas, but only {} were sent",
            too_high.h, too_high.sent
        ),
    );
    err.extra = Some(format!(
        "<handled-count-too-high xmlns='{}' h='{}' send-count='{}'/>",
        sm::NS,
        too_high.h,
        too_high.sent
    ));
    err
}

/// Checks and addresses one stanza from the client, then routes it.
async fn handle_element(ctx: &SessionCtx, mut el: Element) -> Result<(), StreamError> {
    if el.ns() != ns::CLIENT || !matches!(el.name(), "iq" | "message" | "presence") {
        return Err(StreamError::with_text(
            StreamErrorCondition::UnsupportedStanzaType,
            format!("<{}/> is not supported here", el.name()),
        ));
    }
    // RFC 6120 §8.1.2.1: the server stamps the sender's full JID; a client may give its own full or
    // bare JID, anything else is a spoofing attempt.
    if let Some(from) = el.attr("from") {
        let own = crate::addr::parse_jid(from)
            .map(|j| {
                j.to_bare() == ctx.jid.to_bare()
                    && j.resource().is_none_or(|r| r == ctx.jid.resource())
            })
            .unwrap_or(false);
        if !own {
            return Err(StreamError::with_text(
                StreamErrorCondition::InvalidFrom,
                "the from address is not this session's",
            ));
        }
    }
    set_attr(&mut el, "from", ctx.jid.as_str());
    if el.name() == "message" {
        // XEP-0203 §5: a client may not pass off a delay stamp as this server's.
        let domain = ctx.state.domain.as_str();
        xml::retain_children(&mut el, |c| {
            !(c.is("delay", ns::DELAY) && c.attr("from") == Some(domain))
        });
    }
    if el.name() == "iq" && !valid_iq(&el) {
        ctx.reply_error(&el, StanzaErrorCondition::BadRequest).await;
        return Ok(());
    }
    let to = match el.attr("to") {
        None => None,
        Some(to) => match crate::addr::parse_jid(to) {
            Ok(jid) => Some(jid),
            Err(_) => {
                ctx.reply_error(
                    &el,
                    StanzaError::with_text(
                        StanzaErrorCondition::JidMalformed,
                        "the to address is not a valid JID",
                    ),
                )
                .await;
                return Ok(());
            }
        },
    };
    if crate::modules::activity::is_user_activity(&el) {
        ctx.state
            .activity
            .touch(&ctx.jid.to_bare(), crate::modules::activity::status_of(&el));
    }
    crate::router::deliver::route(ctx, el, to).await;
    Ok(())
}

/// RFC 6120 §8.2.3: an iq has an id and a type; get and set carry exactly one payload.
fn valid_iq(el: &Element) -> bool {
    let children = el.children().count();
    el.attr("id").is_some()
        && match el.attr("type") {
            Some("get" | "set") => children == 1,
            Some("result") => children <= 1,
            Some("error") => true,
            _ => false,
        }
}

/// Bytes gathered into one write at most (a burst of queued stanzas becomes one write).
const BATCH: usize = 64 * 1024;
/// A client that takes longer than this to accept one write has lost its connection.
const WRITE_WAIT: Duration = Duration::from_secs(30);

/// A write in flight: it owns the write half while it runs and gives it back with the outcome.
type Flight =
    std::pin::Pin<Box<dyn std::future::Future<Output = (WriteHalf<Transport>, bool)> + Send>>;

/// The write side of one connection, driven by the session's own task: takes what is queued,
/// records it for stream management, holds noise while the client is inactive (XEP-0352), asks
/// for acks, and writes in batches, one write in flight at a time.
///
/// No task of its own: an idle session is then one task, and its writer a few fields of it.
struct Writer {
    /// The socket's write half, while no write is in flight.
    half: Option<WriteHalf<Transport>>,
    /// The write in flight (boxed: a timer and a write state, for the length of one write).
    flight: Option<Flight>,
    /// The next write: its bytes, and the stored copies it delivers.
    out: Out,
    /// Stored copies the write in flight delivers, settled once it is done.
    flying: Vec<u64>,
    /// Stanzas held while the client is inactive.
    held: csi::Held,
    inactive: bool,
    /// The connection failed: nothing more is written to it.
    lost: bool,
}

impl Writer {
    /// A writer whose first write is `first`, then `resend` (a resumed stream).
    fn new(
        half: WriteHalf<Transport>,
        first: Option<Bytes>,
        resend: Vec<sm::Sent>,
        unacked: &Mutex<Unacked>,
    ) -> Self {
        let mut writer = Writer {
            half: Some(half),
            flight: None,
            out: Out::default(),
            flying: Vec::new(),
            held: csi::Held::default(),
            inactive: false,
            lost: false,
        };
        if let Some(first) = first {
            writer.out.buf.extend_from_slice(&first);
        }
        for (stanza, key) in resend {
            writer.out.record(unacked, &sent_item(stanza, key));
        }
        writer
    }

    /// Writes what the queue holds, batch after batch; returns only when the connection has failed
    /// (or the queue was closed). Cancel-safe: a write in flight stays in `flight`, and an item is
    /// taken from the queue only where it is recorded at once.
    async fn run(
        &mut self,
        queue: &mut queue::Receiver<Outbound>,
        unacked: &Mutex<Unacked>,
        ctx: &SessionCtx,
    ) {
        loop {
            if self.lost {
                return;
            }
            if let Some(flight) = self.flight.as_mut() {
                let (half, ok) = flight.await;
                self.flight = None;
                self.half = Some(half);
                self.landed(ok, ctx);
                continue;
            }
            if !self.out.buf.is_empty() {
                self.launch(unacked);
                continue;
            }
            match queue.recv().await {
                Some(item) => {
                    self.admit(unacked, item);
                    // Take whatever else is already queued, so a burst becomes one write.
                    while self.out.buf.len() < BATCH {
                        match queue.try_recv() {
                            Some(item) => self.admit(unacked, item),
                            None => break,
                        }
                    }
                }
                None => {
                    self.lost = true;
                    return;
                }
            }
        }
    }

    /// Runs `work` (a handler) while the writer goes on writing: a handler that queues replies for
    /// its own client must not wait on a writer that waits on it.
    async fn alongside<T>(
        &mut self,
        queue: &mut queue::Receiver<Outbound>,
        unacked: &Mutex<Unacked>,
        ctx: &SessionCtx,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                // Lost: the handler still finishes; the session notices afterwards.
                () = self.run(queue, unacked, ctx), if !self.lost => {}
            }
        }
    }

    /// XEP-0352: the client went inactive or active. Becoming active sends what was held.
    fn set_inactive(&mut self, inactive: bool, unacked: &Mutex<Unacked>) {
        self.inactive = inactive;
        if !inactive {
            for stanza in self.held.take() {
                self.out.record(unacked, &Outbound::Stanza(stanza));
            }
        }
    }

    /// Starts writing the gathered bytes (with an ack request if one is due).
    fn launch(&mut self, unacked: &Mutex<Unacked>) {
        let Some(mut half) = self.half.take() else {
            return;
        };
        request_ack(unacked, &mut self.out.buf);
        // Moved into the write, and freed with it: an idle connection keeps no write buffer.
        let buf = std::mem::take(&mut self.out.buf);
        self.flying.append(&mut self.out.delivers);
        self.flight = Some(Box::pin(async move {
            let write = async {
                half.write_all(&buf).await?;
                half.flush().await
            };
            let ok = matches!(tokio::time::timeout(WRITE_WAIT, write).await, Ok(Ok(())));
            (half, ok)
        }));
    }

    /// After a write: the copies it delivered leave the store; after a failed one they stay
    /// stored, free for the next session to deliver, and the connection is lost.
    fn landed(&mut self, ok: bool, ctx: &SessionCtx) {
        if self.flying.is_empty() {
            self.lost |= !ok;
            return;
        }
        let user = ctx.jid.to_bare();
        if ok {
            offline::settle(&ctx.state, &user, &self.flying);
        } else {
            ctx.state.offline_claims.release(&user, &self.flying);
            self.lost = true;
        }
        self.flying.clear();
    }

    /// Ends the connection: the write in flight finishes, then (unless the connection failed)
    /// what is queued and `closing` are written and the socket is shut. Returns what CSI held.
    async fn close(
        mut self,
        queue: &mut queue::Receiver<Outbound>,
        unacked: &Mutex<Unacked>,
        ctx: &SessionCtx,
        closing: Option<Bytes>,
    ) -> Vec<Bytes> {
        if let Some(flight) = self.flight.take() {
            let (half, ok) = flight.await;
            self.half = Some(half);
            self.landed(ok, ctx);
        }
        let closing = closing.unwrap_or_default();
        if let (false, false, Some(mut half)) = (closing.is_empty(), self.lost, self.half.take()) {
            // What was queued before the close still goes out first.
            while self.out.buf.len() < BATCH {
                match queue.try_recv() {
                    Some(item) => self.out.record(unacked, &item),
                    None => break,
                }
            }
            self.out.buf.extend_from_slice(&closing);
            let finish = async {
                half.write_all(&self.out.buf).await?;
                half.flush().await?;
                half.shutdown().await
            };
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(2), finish).await,
                Ok(Ok(()))
            );
            self.flying.append(&mut self.out.delivers);
            self.landed(ok, ctx);
        }
        // Copies gathered for a write that never happened stay stored for the next session.
        if !self.out.delivers.is_empty() {
            let user = ctx.jid.to_bare();
            ctx.state.offline_claims.release(&user, &self.out.delivers);
        }
        self.held.take()
    }

    /// Writes an item, or holds it while the client is inactive if it can wait (XEP-0352). Anything
    /// that cannot wait takes the held stanzas out with it, in order.
    fn admit(&mut self, unacked: &Mutex<Unacked>, item: Outbound) {
        if let Outbound::Stanza(bytes) = &item {
            if self.inactive && csi::can_wait(bytes) {
                self.held.hold(bytes.clone());
                return;
            }
        }
        if !self.held.is_empty() && matches!(item, Outbound::Stanza(_) | Outbound::Stored(..)) {
            for stanza in self.held.take() {
                self.out.record(unacked, &Outbound::Stanza(stanza));
            }
        }
        self.out.record(unacked, &item);
    }
}

/// The queue item for a stanza to send again.
fn sent_item(stanza: Bytes, key: Option<u64>) -> Outbound {
    match key {
        Some(key) => Outbound::Stored(stanza, key),
        None => Outbound::Stanza(stanza),
    }
}

/// The next write: its bytes, and the stored copies it delivers (to settle once written).
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    delivers: Vec<u64>,
}

impl Out {
    /// Appends an item to the buffer, counting stanzas for stream management.
    fn record(&mut self, unacked: &Mutex<Unacked>, item: &Outbound) {
        match item {
            Outbound::Stanza(bytes) => {
                if let Ok(mut u) = unacked.lock() {
                    u.sent(bytes, None);
                }
                self.buf.extend_from_slice(bytes);
            }
            Outbound::Stored(bytes, key) => {
                let counted = unacked
                    .lock()
                    .map(|mut u| u.sent(bytes, Some(*key)))
                    .unwrap_or(false);
                if !counted {
                    // No acks will come: written is delivered.
                    self.delivers.push(*key);
                }
                self.buf.extend_from_slice(bytes);
            }
            Outbound::Nonza(bytes) => self.buf.extend_from_slice(bytes),
            Outbound::EnableSm(bytes) => {
                self.buf.extend_from_slice(bytes);
                if let Ok(mut u) = unacked.lock() {
                    u.counting = true;
                }
            }
        }
    }
}

/// Asks for an ack after a write that left stanzas unacknowledged, unless one is already asked.
fn request_ack(unacked: &Mutex<Unacked>, buf: &mut Vec<u8>) {
    if let Ok(mut u) = unacked.lock() {
        if u.counting && !u.is_empty() && !u.requested {
            u.requested = true;
            buf.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
        }
    }
}
