//! A client connection from its first byte to resource binding (RFC 6120 §4-§7): stream headers,
//! STARTTLS or direct TLS (XEP-0368), SASL, pre-login registration, and bind. Once a resource is
//! bound the connection is handed to `session::run`.
//!
//! Before authentication only negotiation is accepted; every stream error closes just this connection.

mod features;
mod sasl;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jid::{BareJid, FullJid};
use minidom::Element;
use tokio::io::{split, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition};
use crate::server::ServerState;
use crate::transport::Transport;
use crate::xml::reader::XmlLimits;
use crate::xml::{self, ns, StreamHeader, XmlError, XmlEvent, XmlReader};

pub use features::MODULE;

type Reader = XmlReader<ReadHalf<Transport>>;
type Writer = WriteHalf<Transport>;

/// Why negotiation stopped without a session.
enum Stop {
    /// Send this stream error and close.
    Error(StreamError),
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// The peer closed its stream: answer with ours.
    Closed,
}

impl From<StreamError> for Stop {
    fn from(e: StreamError) -> Self {
        Stop::Error(e)
    }
}

/// Where negotiation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before SASL success.
    Unauthenticated,
    /// After SASL success, before bind.
    Authenticated,
}

/// One connection during negotiation.
struct Negotiation {
    state: Arc<ServerState>,
    peer: SocketAddr,
    reader: Option<Reader>,
    writer: Option<Writer>,
    deadline: Instant,
    stage: Stage,
    user: Option<BareJid>,
    /// RFC 9266 tls-exporter data when TLS 1.3 is up.
    channel_binding: Option<Vec<u8>>,
    tls: bool,
    header_sent: bool,
    lang: String,
    auth_failures: u32,
}

/// An accepted connection, with its place under the connection limit.
pub struct Incoming {
    pub tcp: TcpStream,
    pub peer: SocketAddr,
    pub direct_tls: bool,
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// Serves one accepted TCP connection to the end.
///
/// Negotiation and the session are separate boxed futures: a task's memory is its largest state,
/// and an idle session, held for hours, should not pay for TLS handshakes and SASL. The connection
/// comes boxed for the same reason: this future is the task's, and tokio sizes a task's memory
/// in 128-byte steps (a socket and an address held here for the whole session would cost one).
pub async fn serve(state: Arc<ServerState>, incoming: Box<Incoming>) {
    let Incoming {
        tcp,
        peer,
        direct_tls,
        permit,
    } = *incoming;
    let _permit = permit;
    let session = match Box::pin(negotiate(state.clone(), tcp, peer, direct_tls)).await {
        // Boxed here, so that this future never holds the (large) `Bound` itself.
        Some(bound) => Box::pin(crate::session::run(state, bound)),
        None => return,
    };
    session.await;
}

/// Takes a connection up to a bound resource; `None` when it ended or a resumed session took it.
async fn negotiate(
    state: Arc<ServerState>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) -> Option<Bound> {
    let deadline = Instant::now() + Duration::from_secs(state.config.c2s.auth_timeout);
    let transport = if direct_tls {
        match tokio::time::timeout_at(deadline, state.tls.accept(tcp)).await {
            Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        }
    } else {
        Transport::Plain(tcp)
    };
    tracing::debug!(%peer, direct_tls, "connection opened");
    negotiate_over(state, transport, peer, deadline).await
}

/// Serves a connection that arrived some other way (a WebSocket) to the end.
pub async fn serve_transport(
    state: Arc<ServerState>,
    transport: Transport,
    peer: SocketAddr,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    let _permit = permit;
    let deadline = Instant::now() + Duration::from_secs(state.config.c2s.auth_timeout);
    tracing::debug!(%peer, "WebSocket connection opened");
    let session = match Box::pin(negotiate_over(state.clone(), transport, peer, deadline)).await {
        Some(bound) => Box::pin(crate::session::run(state, bound)),
        None => return,
    };
    session.await;
}

/// Negotiation over an established transport.
async fn negotiate_over(
    state: Arc<ServerState>,
    transport: Transport,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Bound> {
    let tls = transport.is_tls();
    let channel_binding = transport.tls_exporter();
    let (read, write) = split(transport);
    let mut negotiation = Negotiation {
        reader: Some(XmlReader::new(read, limits(&state))),
        writer: Some(write),
        state,
        peer,
        deadline,
        stage: Stage::Unauthenticated,
        user: None,
        channel_binding,
        tls,
        header_sent: false,
        lang: "en".into(),
        auth_failures: 0,
    };
    match negotiation.run().await {
        Ok(Some(bound)) => Some(bound),
        // The connection now belongs to a resumed session.
        Ok(None) => None,
        Err(stop) => {
            negotiation.stop(stop).await;
            None
        }
    }
}

fn limits(state: &ServerState) -> XmlLimits {
    XmlLimits {
        max_element_bytes: state.config.c2s.max_stanza_size,
        ..XmlLimits::default()
    }
}

/// A connection that bound a resource, ready to become a session.
pub struct Bound {
    pub jid: FullJid,
    pub reader: Reader,
    pub writer: Writer,
    pub peer: SocketAddr,
    pub tls: bool,
}

impl Negotiation {
    /// Negotiates up to a bound resource (`Some`), or to a resumed session that took the connection
    /// (`None`).
    async fn run(&mut self) -> Result<Option<Bound>, Stop> {
        loop {
            self.open_stream().await?;
            loop {
                let el = match self.read().await? {
                    XmlEvent::Element(el) => el,
                    XmlEvent::StreamClose => return Err(Stop::Closed),
                    XmlEvent::StreamOpen(_) => {
                        return Err(StreamError::new(StreamErrorCondition::BadFormat).into())
                    }
                };
                match self.stage {
                    Stage::Unauthenticated => {
                        if self.handle_unauthenticated(el).await? {
                            break; // stream restart
                        }
                    }
                    Stage::Authenticated if el.is("resume", crate::session::sm::NS) => {
                        if self.resume(&el).await? {
                            return Ok(None);
                        }
                    }
                    Stage::Authenticated => {
                        if let Some(jid) = self.handle_authenticated(el).await? {
                            return self.take_bound(jid).map(Some);
                        }
                    }
                }
            }
        }
    }

    fn take_bound(&mut self, jid: FullJid) -> Result<Bound, Stop> {
        match (self.reader.take(), self.writer.take()) {
            (Some(reader), Some(writer)) => Ok(Bound {
                jid,
                reader,
                writer,
                peer: self.peer,
                tls: self.tls,
            }),
            _ => Err(Stop::Gone),
        }
    }

    /// Reads the client's stream header, answers with ours and the features of this stage.
    async fn open_stream(&mut self) -> Result<(), Stop> {
        let header = match self.read().await? {
            XmlEvent::StreamOpen(header) => header,
            _ => return Err(StreamError::new(StreamErrorCondition::BadFormat).into()),
        };
        if let Some(lang) = header
            .lang
            .as_deref()
            .filter(|l| !l.is_empty() && l.len() < 36)
        {
            self.lang = lang.to_string();
        }
        let id =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>());
        self.check_header(&header)?;
        let mut out = xml::stream_header(&self.state.domain, &id, &self.lang);
        self.header_sent = true;
        out.extend(features::render(self));
        self.send(&out).await
    }

    /// RFC 6120 §4.7-§4.9: namespace, domain and version of the client's header.
    fn check_header(&self, header: &StreamHeader) -> Result<(), StreamError> {
        if header.default_ns.as_deref() != Some(ns::CLIENT) {
            return Err(StreamError::with_text(
                StreamErrorCondition::InvalidNamespace,
                "the default namespace must be jabber:client",
            ));
        }
        if let Some(to) = &header.to {
            let normalized = BareJid::new(to.trim_end_matches('.')).map(|j| j.to_string());
            if normalized.as_deref() != Ok(self.state.domain.as_str()) {
                return Err(StreamError::with_text(
                    StreamErrorCondition::HostUnknown,
                    format!("this server does not serve '{to}'"),
                ));
            }
        }
        match header.version.as_deref().and_then(|v| v.split('.').next()) {
            Some("1") => Ok(()),
            _ => Err(StreamError::with_text(
                StreamErrorCondition::UnsupportedVersion,
                "XMPP version 1.0 is required",
            )),
        }
    }

    /// Handles one element before authentication; true when the stream restarts.
    async fn handle_unauthenticated(&mut self, el: Element) -> Result<bool, Stop> {
        if el.is("starttls", ns::TLS) {
            self.starttls().await?;
            return Ok(true);
        }
        if el.is("auth", ns::SASL) {
            if !self.tls && self.state.config.c2s.require_encryption {
                self.send(&crate::auth::SaslFailure::EncryptionRequired.to_bytes())
                    .await?;
                return Ok(false);
            }
            if let Some(user) = sasl::authenticate(self, el).await? {
                self.user = Some(user);
                self.stage = Stage::Authenticated;
                self.restart();
                return Ok(true);
            }
            return Ok(false);
        }
        if el.is("iq", ns::CLIENT)
            && self.registration_open()
            && el.get_child("query", ns::REGISTER).is_some()
        {
            let reply = crate::modules::register::handle_unauthenticated(&self.state, &el).await;
            self.send(&xml::serialize(&reply)).await?;
            return Ok(false);
        }
        Err(self.refuse_before_auth(&el).into())
    }

    /// Stanzas before authentication and bind are refused with `<not-authorized/>` (RFC 6120
    /// §4.9.3.12); other unexpected elements with `<unsupported-stanza-type/>` or `<policy-violation/>`.
    fn refuse_before_auth(&self, el: &Element) -> StreamError {
        if el.ns() == ns::CLIENT && matches!(el.name(), "iq" | "message" | "presence") {
            StreamError::with_text(
                StreamErrorCondition::NotAuthorized,
                "authenticate and bind a resource first",
            )
        } else if el.is("starttls", ns::TLS) {
            StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "TLS is already negotiated",
            )
        } else if !self.tls && self.state.config.c2s.require_encryption {
            StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "STARTTLS is required first",
            )
        } else {
            StreamError::with_text(
                StreamErrorCondition::UnsupportedStanzaType,
                format!("unexpected <{}/>", el.name()),
            )
        }
    }

    fn registration_open(&self) -> bool {
        self.state.config.registration.allow
            && (self.tls || !self.state.config.c2s.require_encryption)
    }

    /// Handles one element after SASL; returns the bound JID when binding succeeded.
    async fn handle_authenticated(&mut self, el: Element) -> Result<Option<FullJid>, Stop> {
        if el.is("iq", ns::CLIENT) && el.attr("type") == Some("set") {
            if el.get_child("bind", ns::BIND).is_some() {
                return self.bind(&el).await;
            }
            if el.get_child("session", ns::SESSION).is_some() {
                // RFC 3921 session establishment: a no-op kept for old clients (RFC 6121 appendix E).
                let reply = crate::modules::result_for(&el, None);
                self.send(&xml::serialize(&reply)).await?;
                return Ok(None);
            }
        }
        if el.is("auth", ns::SASL) {
            return Err(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "already authenticated",
            )
            .into());
        }
        if el.is("enable", crate::session::sm::NS) {
            // XEP-0198 §4: stream management is enabled after binding, not before.
            self.send(&crate::session::sm::failed("unexpected-request", None))
                .await?;
            return Ok(None);
        }
        Err(self.refuse_before_auth(&el).into())
    }

    /// XEP-0198 §5: hands the connection to the session it resumes; true when handed over. When the
    /// session is unknown, expired or someone else's, answers `<failed/>` and the client may bind.
    async fn resume(&mut self, el: &Element) -> Result<bool, Stop> {
        let user = self.user.clone();
        let handle = el
            .attr("previd")
            .and_then(|id| self.state.router.resumable(id))
            .filter(|h| Some(&h.user) == user.as_ref());
        let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
        let (Some(handle), Some(h)) = (handle, h) else {
            self.send(&crate::session::sm::failed("item-not-found", None))
                .await?;
            return Ok(false);
        };
        let (Some(reader), Some(writer)) = (self.reader.take(), self.writer.take()) else {
            return Err(Stop::Gone);
        };
        let request = Box::new(crate::session::sm::ResumeRequest { reader, writer, h });
        match handle.control.offer_resume(request) {
            Ok(()) => Ok(true),
            Err(refused) => {
                // The session ended just now: take the connection back and say so.
                let crate::session::sm::ResumeRequest { reader, writer, .. } = *refused;
                self.reader = Some(reader);
                self.writer = Some(writer);
                self.send(&crate::session::sm::failed("item-not-found", None))
                    .await?;
                Ok(false)
            }
        }
    }

    /// RFC 6120 §7: binds the requested resource, or a generated one.
    async fn bind(&mut self, iq: &Element) -> Result<Option<FullJid>, Stop> {
        let Some(user) = self.user.clone() else {
            return Err(Stop::Gone);
        };
        let query = iq
            .get_child("bind", ns::BIND)
            .map(|b| xmpp_parsers::bind::BindQuery::try_from(b.clone()));
        let requested = match query {
            Some(Ok(query)) => query.resource.filter(|r| !r.trim().is_empty()),
            _ => {
                return self
                    .bind_error(iq, "the bind request is not well formed")
                    .await
            }
        };
        let resource = requested.unwrap_or_else(|| {
            format!(
                "rookery-{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 6]>())
            )
        });
        let jid = match FullJid::new(&format!("{user}/{resource}")) {
            Ok(jid) if jid.to_bare() == user => jid,
            _ => return self.bind_error(iq, "the resource is not valid").await,
        };
        let bind = Element::from(xmpp_parsers::bind::BindResponse { jid: jid.clone() });
        let mut reply = crate::modules::result_for(iq, Some(bind));
        crate::error::set_attr(&mut reply, "to", jid.as_str());
        self.send(&xml::serialize(&reply)).await?;
        tracing::info!(peer = %self.peer, jid = %jid, "resource bound");
        Ok(Some(jid))
    }

    /// RFC 6120 §7.7.2.1: a bad bind request gets `<bad-request/>`; the client may try again.
    async fn bind_error(&mut self, iq: &Element, text: &str) -> Result<Option<FullJid>, Stop> {
        if let Some(reply) =
            StanzaError::with_text(StanzaErrorCondition::BadRequest, text).reply_to(iq)
        {
            self.send(&xml::serialize(&reply)).await?;
        }
        Ok(None)
    }

    /// RFC 6120 §5.4.2: `<proceed/>`, TLS handshake, then a fresh stream over TLS.
    async fn starttls(&mut self) -> Result<(), Stop> {
        if self.tls {
            return Err(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "TLS is already negotiated",
            )
            .into());
        }
        self.send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        let (Some(reader), Some(writer)) = (self.reader.take(), self.writer.take()) else {
            return Err(Stop::Gone);
        };
        if reader.has_buffered_input() {
            // Plaintext sent after <starttls/> could be injected by an attacker (RFC 6120 §5.3.3);
            // nothing can be answered in the clear any more, so just drop the connection.
            tracing::debug!(peer = %self.peer, "data pipelined after <starttls/>; closing");
            return Err(Stop::Gone);
        }
        let transport = reader.into_inner().unsplit(writer);
        let Transport::Plain(tcp) = transport else {
            return Err(Stop::Gone);
        };
        let tls = match tokio::time::timeout_at(self.deadline, self.state.tls.accept(tcp)).await {
            Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
            Ok(Err(err)) => {
                tracing::debug!(peer = %self.peer, error = %err, "TLS handshake failed");
                return Err(Stop::Gone);
            }
            Err(_) => return Err(Stop::Gone),
        };
        self.channel_binding = tls.tls_exporter();
        self.tls = true;
        let (read, write) = split(tls);
        self.reader = Some(XmlReader::new(read, limits(&self.state)));
        self.writer = Some(write);
        self.header_sent = false;
        Ok(())
    }

    /// A stream restart after SASL success: same connection, new parser, new header expected.
    fn restart(&mut self) {
        self.reader = self.reader.take().map(XmlReader::restart);
        self.header_sent = false;
    }

    /// Reads the next event, bounded by the login deadline and interrupted by shutdown.
    async fn read(&mut self) -> Result<XmlEvent, Stop> {
        let Some(reader) = self.reader.as_mut() else {
            return Err(Stop::Gone);
        };
        let mut shutdown = self.state.shutdown.clone();
        if *shutdown.borrow() {
            return Err(StreamError::new(StreamErrorCondition::SystemShutdown).into());
        }
        tokio::select! {
            read = tokio::time::timeout_at(self.deadline, reader.next()) => match read {
                Ok(Ok(event)) => Ok(event),
                Ok(Err(XmlError::Eof | XmlError::Io(_))) => Err(Stop::Gone),
                Ok(Err(err)) => Err(StreamError::from(err).into()),
                Err(_) => Err(StreamError::with_text(
                    StreamErrorCondition::ConnectionTimeout,
                    "login not completed in time",
                ).into()),
            },
            _ = shutdown.changed() => Err(StreamError::new(StreamErrorCondition::SystemShutdown).into()),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(Stop::Gone);
        };
        let write = async {
            writer.write_all(bytes).await?;
            writer.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(30), write).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Stop::Gone),
        }
    }

    /// Ends the connection: the stream error (after our header, if not sent yet) or our closing tag.
    async fn stop(&mut self, stop: Stop) {
        let mut out = Vec::new();
        match &stop {
            Stop::Gone => {}
            Stop::Closed | Stop::Error(_) => {
                if !self.header_sent {
                    out.extend(xml::stream_header(&self.state.domain, "error", &self.lang));
                }
                match &stop {
                    Stop::Error(err) => {
                        tracing::info!(peer = %self.peer, condition = err.condition.name(), text = err.text.as_deref().unwrap_or(""), "closing stream with an error");
                        out.extend(err.to_bytes());
                    }
                    _ => out.extend_from_slice(xml::STREAM_CLOSE),
                }
            }
        }
        if !out.is_empty() {
            let _ = self.send(&out).await;
        }
        if let Some(writer) = self.writer.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer.shutdown()).await;
        }
        tracing::debug!(peer = %self.peer, "connection closed during negotiation");
    }
}
