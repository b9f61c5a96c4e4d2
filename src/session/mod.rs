//! A bound client session: reads stanzas and hands them to the router and the server's handlers,
//! and writes what is queued for it. Two tasks per connection: this reader loop, and a writer that
//! owns the socket's write half and batches queued stanzas into few writes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jid::FullJid;
use minidom::Element;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::error::{
    set_attr, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition,
};
use crate::router::{Closing, Outbound, SessionHandle};
use crate::server::ServerState;
use crate::stream::Bound;
use crate::xml::{self, ns, XmlError, XmlEvent};

/// What handlers see of the session that sent a stanza.
pub struct SessionCtx {
    pub state: Arc<ServerState>,
    pub jid: FullJid,
    pub handle: SessionHandle,
    /// State only this session's task touches (never held across an await).
    pub local: std::sync::Mutex<SessionLocal>,
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

/// Runs a session until its stream ends.
pub async fn run(state: Arc<ServerState>, bound: Bound) {
    let Bound {
        jid,
        mut reader,
        writer,
        peer,
        tls,
    } = bound;
    let (queue_tx, queue_rx) = mpsc::channel(state.config.c2s.session_queue);
    let (control_tx, mut control_rx) = watch::channel(None);
    let id = state.next_session_id();
    let handle = SessionHandle::new(id, jid.clone(), queue_tx, control_tx);
    if let Some(old) = state.router.register(handle.clone()) {
        tracing::info!(jid = %jid, "a new connection bound the same resource; closing the old one");
        old.close(Closing::Error(StreamError::with_text(
            StreamErrorCondition::Conflict,
            "replaced by a new connection",
        )));
    }
    let writer_task = tokio::spawn(write_loop(
        writer,
        queue_rx,
        control_rx.clone(),
        state.shutdown.clone(),
    ));
    let ctx = SessionCtx {
        state: state.clone(),
        jid: jid.clone(),
        handle,
        local: Default::default(),
    };
    tracing::debug!(%peer, jid = %jid, tls, "session started");

    let mut shutdown = state.shutdown.clone();
    loop {
        let event = tokio::select! {
            event = reader.next() => event,
            _ = control_rx.changed() => break,
            _ = shutdown.changed() => {
                ctx.handle.close(Closing::Error(StreamError::new(StreamErrorCondition::SystemShutdown)));
                break;
            }
        };
        match event {
            Ok(XmlEvent::Element(el)) => {
                if let Err(err) = handle_element(&ctx, el).await {
                    ctx.handle.close(Closing::Error(err));
                    break;
                }
            }
            Ok(XmlEvent::StreamClose) => {
                ctx.handle.send(Outbound::End).await;
                break;
            }
            Ok(XmlEvent::StreamOpen(_)) => {
                ctx.handle.close(Closing::Error(StreamError::new(
                    StreamErrorCondition::BadFormat,
                )));
                break;
            }
            Err(XmlError::Eof | XmlError::Io(_)) => {
                ctx.handle.close(Closing::Quietly);
                break;
            }
            Err(err) => {
                tracing::info!(jid = %jid, error = %err, "closing session on bad input");
                ctx.handle.close(Closing::Error(err.into()));
                break;
            }
        }
    }
    // Unavailable presence for a session that ends without saying so (RFC 6121 §4.5.3), unless a new
    // connection took over this full JID: then the resource did not go away.
    if state.router.get(&jid).map(|h| h.id) == Some(id) {
        if let Err(err) = crate::modules::presence::go_unavailable(&ctx, None).await {
            tracing::error!(error = %err, jid = %jid, "unavailable broadcast failed");
        }
    }
    state.router.unregister(&jid, id);
    drop(ctx);
    if tokio::time::timeout(Duration::from_secs(5), writer_task)
        .await
        .is_err()
    {
        tracing::debug!(jid = %jid, "writer did not finish in time");
    }
    tracing::debug!(jid = %jid, "session ended");
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

/// Owns the write half: writes queued stanzas in batches, and the closing bytes at the end.
async fn write_loop(
    mut writer: tokio::io::WriteHalf<crate::transport::Transport>,
    mut queue: mpsc::Receiver<Outbound>,
    mut control: watch::Receiver<Option<Closing>>,
    mut shutdown: watch::Receiver<bool>,
) {
    const BATCH: usize = 64 * 1024;
    const WRITE_WAIT: Duration = Duration::from_secs(30);
    let mut buf: Vec<u8> = Vec::new();
    let closing: Vec<u8> = loop {
        tokio::select! {
            biased;
            _ = control.changed() => {
                break match control.borrow().clone() {
                    Some(Closing::Error(err)) => err.to_bytes(),
                    _ => xml::STREAM_CLOSE.to_vec(),
                };
            }
            _ = shutdown.changed() => {
                break StreamError::new(StreamErrorCondition::SystemShutdown).to_bytes();
            }
            item = queue.recv() => {
                let end = match item {
                    Some(Outbound::Stanza(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        // Take whatever else is already queued, so a burst becomes one write.
                        take_queued(&mut queue, &mut buf, BATCH)
                    }
                    Some(Outbound::End) | None => true,
                };
                if !buf.is_empty() {
                    let write = async {
                        writer.write_all(&buf).await?;
                        writer.flush().await
                    };
                    if !matches!(tokio::time::timeout(WRITE_WAIT, write).await, Ok(Ok(()))) {
                        return;
                    }
                    buf.clear();
                    buf.shrink_to(BATCH.min(4096));
                }
                if end {
                    break xml::STREAM_CLOSE.to_vec();
                }
            }
        }
    };
    // What was queued before the close still goes out first (a reply to the last request, say).
    take_queued(&mut queue, &mut buf, usize::MAX);
    buf.extend_from_slice(&closing);
    let finish = async {
        writer.write_all(&buf).await?;
        writer.flush().await?;
        writer.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), finish).await;
}

/// Moves already-queued stanzas into `buf` (up to about `limit` bytes); true when `End` was among them.
fn take_queued(queue: &mut mpsc::Receiver<Outbound>, buf: &mut Vec<u8>, limit: usize) -> bool {
    while buf.len() < limit {
        match queue.try_recv() {
            Ok(Outbound::Stanza(bytes)) => buf.extend_from_slice(&bytes),
            Ok(Outbound::End) => return true,
            Err(_) => break,
        }
    }
    false
}
