//! A bound client session: reads stanzas and hands them to the router and the server's handlers,
//! and writes what is queued for it. Two tasks per connection: this reader loop, and a writer that
//! owns the socket's write half and batches queued stanzas into few writes.
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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
    pub directed: std::collections::HashSet<jid::Jid>,
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
        unacked: Arc::new(Mutex::new(Unacked::default())),
        sm_enabled: false,
        sm_id: None,
        handled: 0,
        pending: VecDeque::new(),
    };
    session.run(Box::new(reader), writer, queue)
}

/// Why a connection of a session ended.
enum End {
    /// The client closed its stream: answer with ours.
    Closed,
    /// Close with these bytes (a stream error).
    Error(StreamError),
    /// Asked to close from outside (conflict, account removed).
    Kicked(Closing),
    /// The connection is gone without a goodbye: resumable, if enabled.
    Lost,
    /// A new connection resumes this session while this one still looks alive.
    Resume(Box<ResumeRequest>),
}

/// One connection of a session: its reader here, its writer in a task.
struct Connection {
    /// Boxed: moved around between connections, and large.
    reader: Box<XmlReader<ReadHalf<Transport>>>,
    writer: JoinHandle<Stopped>,
    /// The queue, once the writer has ended by itself (the socket failed).
    returned: Option<Stopped>,
    stop: oneshot::Sender<Bytes>,
}

struct Session {
    ctx: SessionCtx,
    unacked: Arc<Mutex<Unacked>>,
    sm_enabled: bool,
    /// The SM-ID when resumption is enabled.
    sm_id: Option<String>,
    /// Stanzas from the client handled so far (XEP-0198 `h`, mod 2^32).
    handled: u32,
    /// Stanzas queued while hibernating, sent on resumption.
    pending: VecDeque<sm::Sent>,
}

impl Session {
    async fn run(
        mut self,
        reader: Box<XmlReader<ReadHalf<Transport>>>,
        writer: WriteHalf<Transport>,
        queue: queue::Receiver<Outbound>,
    ) {
        let mut connection = self.connect(reader, writer, queue, None, Vec::new());
        let mut queue = loop {
            let end = self.serve(&mut connection).await;
            let resume = match end {
                End::Closed => {
                    break Box::pin(
                        self.stop(connection, Some(Bytes::from_static(xml::STREAM_CLOSE))),
                    )
                    .await;
                }
                End::Error(err) => {
                    break Box::pin(self.stop(connection, Some(Bytes::from(err.to_bytes())))).await;
                }
                End::Kicked(closing) => {
                    let bytes = match closing {
                        Closing::Error(err) => Bytes::from(err.to_bytes()),
                        Closing::Quietly => Bytes::from_static(xml::STREAM_CLOSE),
                    };
                    break Box::pin(self.stop(connection, Some(bytes))).await;
                }
                End::Resume(request) => {
                    // XEP-0198 §5: the old connection of a resumed session gets <conflict/>.
                    let conflict = StreamError::with_text(
                        StreamErrorCondition::Conflict,
                        "the session was resumed elsewhere",
                    );
                    let queue =
                        Box::pin(self.stop(connection, Some(Bytes::from(conflict.to_bytes()))))
                            .await;
                    (*request, queue)
                }
                End::Lost => {
                    let queue = Box::pin(self.stop(connection, None)).await;
                    if self.sm_id.is_none() {
                        break queue;
                    }
                    match Box::pin(self.hibernate(queue)).await {
                        (Some(request), queue) => (request, queue),
                        (None, queue) => break queue,
                    }
                }
            };
            match Box::pin(self.resume(resume.0, resume.1)).await {
                Ok(next) => connection = next,
                Err(queue) => break queue,
            }
        };
        Box::pin(self.finish(&mut queue)).await;
    }

    /// Stops a connection's writer (after it writes `closing`, if any) and takes back the queue.
    /// What CSI was still holding goes first into `pending`, for a resumed stream to send.
    async fn stop(
        &mut self,
        connection: Connection,
        closing: Option<Bytes>,
    ) -> queue::Receiver<Outbound> {
        let Connection {
            writer,
            stop,
            returned,
            ..
        } = connection;
        let (queue, held) = match returned {
            Some(stopped) => stopped,
            None => {
                let _ = stop.send(closing.unwrap_or_default());
                match writer.await {
                    Ok(stopped) => stopped,
                    // The writer panicked: nothing can be recovered from its queue.
                    Err(_) => (queue::Receiver::closed(), Vec::new()),
                }
            }
        };
        for stanza in held.into_iter().rev() {
            self.pending.push_front((stanza, None));
        }
        queue
    }

    /// Starts the writer for a connection; `first` is written before anything else, then `resend`.
    fn connect(
        &self,
        reader: Box<XmlReader<ReadHalf<Transport>>>,
        writer: WriteHalf<Transport>,
        queue: queue::Receiver<Outbound>,
        first: Option<Bytes>,
        resend: Vec<sm::Sent>,
    ) -> Connection {
        let (stop_tx, stop_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(
            writer,
            queue,
            stop_rx,
            self.unacked.clone(),
            self.ctx.handle.control().clone(),
            Settle {
                state: self.ctx.state.clone(),
                user: self.ctx.jid.to_bare(),
            },
            first,
            resend,
        ));
        Connection {
            reader,
            writer,
            returned: None,
            stop: stop_tx,
        }
    }

    /// Reads and handles the client's stream until the connection ends.
    async fn serve(&mut self, connection: &mut Connection) -> End {
        loop {
            let event = tokio::select! {
                event = connection.reader.next() => event,
                signal = self.ctx.handle.control().next() => return match signal {
                    Signal::Close(closing) => End::Kicked(closing),
                    Signal::Resume(request) => End::Resume(request),
                },
                ended = &mut connection.writer, if connection.returned.is_none() => {
                    if let Ok(queue) = ended {
                        connection.returned = Some(queue);
                    }
                    return End::Lost;
                }
            };
            match event {
                Ok(XmlEvent::Element(el)) if el.ns() == csi::NS => match el.name() {
                    "active" => {
                        self.ctx.handle.control().inactivity.set(false);
                    }
                    "inactive" => {
                        self.ctx.handle.control().inactivity.set(true);
                    }
                    other => {
                        return End::Error(StreamError::with_text(
                            StreamErrorCondition::UnsupportedStanzaType,
                            format!("<{other}/> is not a client state"),
                        ))
                    }
                },
                Ok(XmlEvent::Element(el)) if el.ns() == sm::NS => {
                    if let Err(err) = Box::pin(self.stream_management(&el)).await {
                        return End::Error(err);
                    }
                }
                Ok(XmlEvent::Element(el)) => {
                    // Boxed, like the other branches that are large and rare per connection: the
                    // task of an idle session is then a few hundred bytes.
                    if let Err(err) = Box::pin(handle_element(&self.ctx, el)).await {
                        return End::Error(err);
                    }
                    // Counted once handled, from <enable/> on: an ack covers only what was processed
                    // (and stored).
                    if self.sm_enabled {
                        self.handled = self.handled.wrapping_add(1);
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

    /// XEP-0198 nonzas from the client: enable, request, answer.
    async fn stream_management(&mut self, el: &Element) -> Result<(), StreamError> {
        let out = |bytes: Bytes| self.ctx.handle.send(Outbound::Nonza(bytes));
        match el.name() {
            "enable" if self.sm_enabled => {
                // §4: a second <enable/> is answered with failed and ends the stream.
                out(sm::failed("unexpected-request", None)).await;
                return Err(StreamError::with_text(
                    StreamErrorCondition::PolicyViolation,
                    "stream management is already enabled",
                ));
            }
            "enable" => {
                self.sm_enabled = true;
                let resume = matches!(el.attr("resume"), Some("true" | "1"));
                let enabled = if resume {
                    let id = crate::modules::stanza_id::new_id();
                    self.ctx.state.router.add_resumable(
                        id.clone(),
                        ResumeHandle {
                            user: self.ctx.jid.to_bare(),
                            control: self.ctx.handle.control().clone(),
                        },
                    );
                    let max = self.ctx.state.config.c2s.resume_timeout;
                    let text = format!(
                        "<enabled xmlns='{}' id='{id}' resume='true' max='{max}'/>",
                        sm::NS
                    );
                    self.sm_id = Some(id);
                    text
                } else {
                    format!("<enabled xmlns='{}'/>", sm::NS)
                };
                // The writer starts counting when it writes <enabled/>, in order with the stanzas.
                self.ctx
                    .handle
                    .send(Outbound::EnableSm(Bytes::from(enabled)))
                    .await;
            }
            "r" if self.sm_enabled => {
                // Acknowledged means durable: what the handled stanzas stored is flushed first
                // (shared with every other session asking now: group commit).
                if self
                    .ctx
                    .unflushed
                    .swap(false, std::sync::atomic::Ordering::AcqRel)
                {
                    if let Err(err) = self.ctx.state.stores.flush().await {
                        tracing::error!(error = %err, "flush before an ack failed");
                        return Err(StreamError::new(StreamErrorCondition::InternalServerError));
                    }
                }
                out(Bytes::from(format!(
                    "<a xmlns='{}' h='{}'/>",
                    sm::NS,
                    self.handled
                )))
                .await;
            }
            "a" if self.sm_enabled => {
                let h = el
                    .attr("h")
                    .and_then(|h| h.parse::<u32>().ok())
                    .ok_or_else(|| {
                        StreamError::with_text(
                            StreamErrorCondition::BadFormat,
                            "<a/> needs a numeric h",
                        )
                    })?;
                let result = match self.unacked.lock() {
                    Ok(mut unacked) => unacked.ack(h),
                    Err(_) => Ok(Vec::new()),
                };
                match result {
                    // The client has these: their stored copies can go.
                    Ok(keys) => offline::settle(&self.ctx.state, &self.ctx.jid.to_bare(), &keys),
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

    /// Keeps the session while its connection is gone, until a resumption, the timeout, or a close
    /// (a kick or shutdown). Returns the resumption request, if one came, and the queue.
    async fn hibernate(
        &mut self,
        mut queue: queue::Receiver<Outbound>,
    ) -> (Option<ResumeRequest>, queue::Receiver<Outbound>) {
        let limit = self.ctx.state.config.c2s.session_queue.max(1) * 4;
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(self.ctx.state.config.c2s.resume_timeout);
        tracing::debug!(jid = %self.ctx.jid, "connection lost; session kept for resumption");
        loop {
            tokio::select! {
                signal = self.ctx.handle.control().next() => return match signal {
                    Signal::Resume(request) => (Some(*request), queue),
                    Signal::Close(_) => (None, queue),
                },
                item = queue.recv() => match item {
                    Some(Outbound::Stanza(bytes)) => {
                        self.pending.push_back((bytes, None));
                        if self.pending.len() > limit {
                            tracing::info!(jid = %self.ctx.jid, "too much waiting for a hibernating session; ending it");
                            return (None, queue);
                        }
                    }
                    Some(Outbound::Stored(bytes, key)) => {
                        self.pending.push_back((bytes, Some(key)));
                        if self.pending.len() > limit {
                            tracing::info!(jid = %self.ctx.jid, "too much waiting for a hibernating session; ending it");
                            return (None, queue);
                        }
                    }
                    Some(_) => {}
                    None => return (None, queue),
                },
                _ = tokio::time::sleep_until(deadline) => return (None, queue),
            }
        }
    }

    /// Takes over a new connection (XEP-0198 §5): applies the client's h, answers <resumed/> and sends
    /// again what the client did not handle. Err when the resumption cannot proceed.
    async fn resume(
        &mut self,
        request: ResumeRequest,
        queue: queue::Receiver<Outbound>,
    ) -> Result<Connection, queue::Receiver<Outbound>> {
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
                let mut bytes = sm::failed("unexpected-request", Some(self.handled)).to_vec();
                bytes.extend(handled_count_too_high(too_high).to_bytes());
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), writer.write_all(&bytes)).await;
                let _ = writer.shutdown().await;
                return Err(queue);
            }
        };
        resend.extend(self.pending.drain(..));
        // XEP-0352: a resumed stream starts active.
        self.ctx.handle.control().inactivity.set(false);
        // The h in <resumed/> acknowledges like <a/> does: only what is on disk.
        if self
            .ctx
            .unflushed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            if let Err(err) = self.ctx.state.stores.flush().await {
                tracing::error!(error = %err, "flush before resuming failed");
                return Err(queue);
            }
        }
        let previd = self.sm_id.clone().unwrap_or_default();
        let resumed = Bytes::from(format!(
            "<resumed xmlns='{}' h='{}' previd='{previd}'/>",
            sm::NS,
            self.handled
        ));
        tracing::info!(jid = %self.ctx.jid, resent = resend.len(), "session resumed");
        Ok(self.connect(Box::new(reader), writer, queue, Some(resumed), resend))
    }

    /// The session is over: unacknowledged and undelivered messages go to offline storage, contacts
    /// hear the resource went away, and the session leaves the registry.
    async fn finish(&mut self, queue: &mut queue::Receiver<Outbound>) {
        let state = self.ctx.state.clone();
        let jid = self.ctx.jid.clone();
        if let Some(id) = self.sm_id.take() {
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
        queue.close();
        while let Some(item) = queue.try_recv() {
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

/// Owns the write half: writes queued stanzas in batches, records them for stream management,
/// asks for acks, and writes the closing bytes when told to stop. Returns the queue so that a
/// resumed session can go on with it.
#[allow(clippy::too_many_arguments)]
async fn write_loop(
    mut writer: WriteHalf<Transport>,
    mut queue: queue::Receiver<Outbound>,
    mut stop: oneshot::Receiver<Bytes>,
    unacked: Arc<Mutex<Unacked>>,
    control: Arc<crate::router::Control>,
    settle: Settle,
    first: Option<Bytes>,
    resend: Vec<sm::Sent>,
) -> Stopped {
    const BATCH: usize = 64 * 1024;
    const WRITE_WAIT: Duration = Duration::from_secs(30);
    let mut held = csi::Held::default();
    let mut out = Out::default();
    if let Some(first) = first {
        out.buf.extend_from_slice(&first);
    }
    for (stanza, key) in resend {
        out.record(&unacked, &sent_item(stanza, key));
    }
    loop {
        if !out.buf.is_empty() {
            request_ack(&unacked, &mut out.buf);
            let write = async {
                writer.write_all(&out.buf).await?;
                writer.flush().await
            };
            // Boxed (one allocation per batch): the timer and the write would otherwise be part
            // of every idle session's writer.
            if !matches!(
                Box::pin(tokio::time::timeout(WRITE_WAIT, write)).await,
                Ok(Ok(()))
            ) {
                out.failed(&settle);
                return (queue, held.take());
            }
            out.written(&settle);
        }
        tokio::select! {
            biased;
            closing = &mut stop => {
                // Dropped without a word: stop without closing bytes.
                let closing = closing.unwrap_or_default();
                if !closing.is_empty() {
                    // What was queued before the close still goes out first.
                    while out.buf.len() < BATCH {
                        match queue.try_recv() {
                            Some(item) => out.record(&unacked, &item),
                            None => break,
                        }
                    }
                    out.buf.extend_from_slice(&closing);
                    let finish = async {
                        writer.write_all(&out.buf).await?;
                        writer.flush().await?;
                        writer.shutdown().await
                    };
                    if matches!(Box::pin(tokio::time::timeout(Duration::from_secs(2), finish)).await, Ok(Ok(()))) {
                        out.written(&settle);
                    } else {
                        out.failed(&settle);
                    }
                }
                return (queue, held.take());
            }
            _ = control.inactivity.changed() => {
                if !control.inactivity.get() {
                    for stanza in held.take() {
                        out.record(&unacked, &Outbound::Stanza(stanza));
                    }
                }
            }
            item = queue.recv() => match item {
                Some(item) => {
                    let quiet = control.inactivity.get();
                    out.admit(&unacked, &mut held, quiet, item);
                    // Take whatever else is already queued, so a burst becomes one write.
                    while out.buf.len() < BATCH {
                        match queue.try_recv() {
                            Some(item) => out.admit(&unacked, &mut held, quiet, item),
                            None => break,
                        }
                    }
                }
                None => return (queue, held.take()),
            }
        }
    }
}

/// What a stopped writer hands back: the queue, and what CSI was still holding (sent on a
/// resumed stream rather than lost).
type Stopped = (queue::Receiver<Outbound>, Vec<Bytes>);

/// The queue item for a stanza to send again.
fn sent_item(stanza: Bytes, key: Option<u64>) -> Outbound {
    match key {
        Some(key) => Outbound::Stored(stanza, key),
        None => Outbound::Stanza(stanza),
    }
}

/// Settles stored copies of messages written to a client without stream management.
struct Settle {
    state: Arc<ServerState>,
    user: jid::BareJid,
}

/// The next write: its bytes, and the stored copies it delivers (to settle once written).
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    delivers: Vec<u64>,
}

impl Out {
    /// After a successful write: the copies it delivered leave the store.
    fn written(&mut self, settle: &Settle) {
        offline::settle(&settle.state, &settle.user, &self.delivers);
        self.delivers.clear();
        // An idle connection keeps no write buffer; a busy one allocates one per batch.
        self.buf = Vec::new();
    }

    /// After a failed write: the copies stay stored, free for the next session to deliver.
    fn failed(&mut self, settle: &Settle) {
        settle
            .state
            .offline_claims
            .release(&settle.user, &self.delivers);
        self.delivers.clear();
    }

    /// Writes an item, or holds it while the client is inactive if it can wait (XEP-0352). Anything
    /// that cannot wait takes the held stanzas out with it, in order.
    fn admit(
        &mut self,
        unacked: &Mutex<Unacked>,
        held: &mut csi::Held,
        inactive: bool,
        item: Outbound,
    ) {
        if let Outbound::Stanza(bytes) = &item {
            if inactive && csi::can_wait(bytes) {
                held.hold(bytes.clone());
                return;
            }
        }
        if !held.is_empty() && matches!(item, Outbound::Stanza(_) | Outbound::Stored(..)) {
            for stanza in held.take() {
                self.record(unacked, &Outbound::Stanza(stanza));
            }
        }
        self.record(unacked, &item);
    }

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
