//! XMPP over WebSocket (RFC 7395): the `/xmpp-websocket` route and a bridge that turns the
//! framed protocol (one element per text frame, `<open/>` and `<close/>`) into the byte stream the
//! rest of the server reads and writes, so that a browser's session is a session like any other:
//! same negotiation, SASL, bind, stream management, CSI, limits and routing.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use minidom::Element;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use crate::error::{StreamError, StreamErrorCondition};
use crate::modules::{Module, Spec, Support};
use crate::server::ServerState;
use crate::xml::{self, escape, ns};

pub const MODULE: Module = Module {
    name: "websocket",
    disco_features: &[],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::rfc(
            7395,
            Support::Partial,
            "at /xmpp-websocket on the HTTPS server: xmpp subprotocol, <open/>/<close/> framing, one element per text frame, the same negotiation and session as TCP; allowed origins; no see-other-uri",
        ),
        Spec::xep(
            156,
            "1.4.0",
            Support::Partial,
            "host-meta and host-meta.json name the WebSocket URL; no BOSH, no DNS TXT records",
        ),
    ],
};

pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// The WebSocket path (RFC 7395 leaves it to the server; XEP-0156 tells clients).
pub const PATH: &str = "/xmpp-websocket";
/// Bytes buffered between the bridge and the session, each way.
const PIPE: usize = 64 * 1024;

/// The route: a WebSocket upgrade with the `xmpp` subprotocol, anything else refused.
pub fn routes() -> axum::Router<Arc<ServerState>> {
    axum::Router::new()
        .route(PATH, axum::routing::get(upgrade))
        .route("/.well-known/host-meta", axum::routing::get(host_meta))
        .route(
            "/.well-known/host-meta.json",
            axum::routing::get(host_meta_json),
        )
}

/// The WebSocket URL clients should use.
fn websocket_url(state: &ServerState) -> String {
    let base = state.http_base.get().cloned().unwrap_or_default();
    format!("{}{PATH}", base.replacen("https://", "wss://", 1))
}

/// XEP-0156 §3: the connection methods, as XRD.
async fn host_meta(State(state): State<Arc<ServerState>>) -> Response {
    let body = format!(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  <Link rel='urn:xmpp:alt-connections:websocket' href='{}'/>\n</XRD>\n",
        websocket_url(&state)
    );
    (
        [
            ("content-type", "application/xrd+xml"),
            ("access-control-allow-origin", "*"),
        ],
        body,
    )
        .into_response()
}

/// XEP-0156 §3: the connection methods, as JSON (JRD).
async fn host_meta_json(State(state): State<Arc<ServerState>>) -> Response {
    let body = serde_json::json!({
        "links": [{ "rel": "urn:xmpp:alt-connections:websocket", "href": websocket_url(&state) }]
    });
    (
        [
            ("content-type", "application/json"),
            ("access-control-allow-origin", "*"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn upgrade(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [("upgrade", "websocket"), ("sec-websocket-protocol", "xmpp")],
            "XMPP over WebSocket (RFC 7395): connect with a WebSocket client and the xmpp subprotocol\n",
        )
            .into_response();
    };
    // RFC 7395 §3.1: the client must offer the xmpp subprotocol.
    let offered = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "xmpp");
    if !offered {
        return (
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol 'xmpp' is required (RFC 7395 §3.1)\n",
        )
            .into_response();
    }
    // A browser names the page that opens the socket; only listed pages may (when listed).
    let allowed = &state.config.http.websocket_origins;
    if !allowed.is_empty() {
        // No Origin: not a browser page (which the list is about), so nothing to check.
        let origin = headers.get("origin").and_then(|v| v.to_str().ok());
        if origin.is_some_and(|o| {
            !allowed
                .iter()
                .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
        }) {
            return (
                StatusCode::FORBIDDEN,
                "this page's origin may not open XMPP WebSockets here ([http] websocket_origins)\n",
            )
                .into_response();
        }
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let max = state.config.c2s.max_stanza_size;
    let ping = std::time::Duration::from_secs(state.config.http.websocket_ping);
    ws.protocols(["xmpp"])
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4096)
        .on_upgrade(move |socket| async move {
            let (server_side, bridge_side) = tokio::io::duplex(PIPE);
            let transport = super::Transport::Bridged(server_side);
            // The place under the connection limit is held until both the session and the
            // socket are gone.
            let permit = Arc::new(permit);
            tokio::spawn(crate::stream::serve_transport(
                state,
                transport,
                peer,
                permit.clone(),
            ));
            bridge(socket, bridge_side, ping).await;
            drop(permit);
        })
}

/// How long one frame may take to reach a client that stopped reading before it is dropped.
const SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the bridge waits for the other side's part of a closing handshake.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What RFC 7395 §3.6 calls the close frame, in the exact form Strophe.js recognises.
fn close_frame() -> String {
    format!("<close xmlns=\"{NS_FRAMING}\" />")
}

/// Runs the bridge until either side ends. Every `ping` the client is pinged; one that has sent
/// nothing (not even a pong) for three of them is gone, and its socket is closed.
async fn bridge(socket: WebSocket, pipe: DuplexStream, ping: std::time::Duration) {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut to_client, mut from_client) = socket.split();
    let (mut from_server, mut to_server) = tokio::io::split(pipe);
    let started = tokio::time::Instant::now();
    // Milliseconds after `started` when the client was last heard.
    let heard = std::sync::atomic::AtomicU64::new(0);
    let inbound = async {
        let mut opened = false;
        let mut refusal = None;
        while let Some(message) = from_client.next().await {
            heard.store(started.elapsed().as_millis() as u64, Relaxed);
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                // RFC 7395 §3.2: XMPP goes in text frames only.
                Ok(Message::Binary(_)) => {
                    refusal = Some(Refusal::Binary);
                    break;
                }
            };
            // Whitespace keepalives carry nothing.
            if text.trim().is_empty() {
                continue;
            }
            match inbound_frame(text.as_str(), opened) {
                Ok(bytes) => {
                    opened = true;
                    if to_server.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Err(refused) => {
                    refusal = Some(refused);
                    break;
                }
            }
        }
        if refusal.is_some() && opened {
            // The session ends as closed, not lost: nothing stays resumable after bad input.
            let _ = to_server.write_all(xml::STREAM_CLOSE).await;
        }
        let _ = to_server.shutdown().await;
        refusal
    };
    let mut outbound = Box::pin(async {
        let mut splitter = Splitter::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut pings = tokio::time::interval_at(started + ping, ping);
        loop {
            let read = tokio::select! {
                read = from_server.read(&mut buf) => read,
                _ = pings.tick() => {
                    let silent = (started.elapsed().as_millis() as u64)
                        .saturating_sub(heard.load(Relaxed));
                    let message = if silent > 3 * ping.as_millis() as u64 {
                        tracing::debug!("a WebSocket client stopped answering pings");
                        Message::Close(Some(CloseFrame { code: 1001, reason: "no answer to pings".into() }))
                    } else {
                        Message::Ping(Vec::new().into())
                    };
                    let closing = matches!(message, Message::Close(_));
                    match tokio::time::timeout(SEND_WAIT, to_client.send(message)).await {
                        Ok(Ok(())) if !closing => continue,
                        _ => return,
                    }
                }
            };
            let n = match read {
                Ok(0) | Err(_) => {
                    // The session ended without closing the stream: close the socket anyway.
                    let close = Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "".into(),
                    }));
                    let _ = tokio::time::timeout(CLOSE_WAIT, to_client.send(close)).await;
                    return;
                }
                Ok(n) => n,
            };
            splitter.push(&buf[..n]);
            while let Some(frame) = splitter.next_frame() {
                let closing = frame.starts_with("<close ");
                let sent =
                    tokio::time::timeout(SEND_WAIT, to_client.send(Message::Text(frame.into())))
                        .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
                if closing {
                    let close = Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "".into(),
                    }));
                    let _ = tokio::time::timeout(CLOSE_WAIT, to_client.send(close)).await;
                    return;
                }
            }
            splitter.compact();
        }
    });
    let (refusal, outbound_done) = tokio::select! {
        refusal = inbound => (refusal, false),
        () = &mut outbound => (None, true),
    };
    if refusal.is_none() && !outbound_done {
        // The client closed: let the server's answer (its <close/>) reach it, briefly.
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut outbound).await;
    }
    drop(outbound);
    if let Some(refusal) = refusal {
        let (condition, code) = match refusal {
            Refusal::Binary => (StreamErrorCondition::UnsupportedStanzaType, 1003),
            Refusal::NotOneElement => (StreamErrorCondition::NotWellFormed, 1007),
            Refusal::NoOpen => (StreamErrorCondition::BadFormat, 1002),
        };
        // The stream error and the stream's end, framed like everything the server sends.
        let mut splitter = Splitter::default();
        splitter.push(&StreamError::new(condition).to_bytes());
        let mut messages: Vec<Message> = std::iter::from_fn(|| splitter.next_frame())
            .map(|frame| Message::Text(frame.into()))
            .collect();
        messages.push(Message::Close(Some(CloseFrame {
            code,
            reason: condition.name().into(),
        })));
        for message in messages {
            if !matches!(
                tokio::time::timeout(SEND_WAIT, to_client.send(message)).await,
                Ok(Ok(()))
            ) {
                break;
            }
        }
    }
}

/// Why the bridge closed a client's stream.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Binary,
    NotOneElement,
    NoOpen,
}

/// One text frame from the client as stream bytes: `<open/>` becomes a stream header,
/// `<close/>` the stream's end, any other frame must be exactly one element.
fn inbound_frame(text: &str, opened: bool) -> Result<Vec<u8>, Refusal> {
    let text = text.trim();
    // Exactly one element: well-formed, and nothing after it.
    if element_end(text.as_bytes()) != Some(text.len().saturating_sub(1)) {
        return Err(Refusal::NotOneElement);
    }
    let element: Element = text.parse().map_err(|_| Refusal::NotOneElement)?;
    if element.is("open", NS_FRAMING) {
        let mut header = String::from(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'",
        );
        for name in ["to", "from", "version", "id"] {
            if let Some(value) = element.attr(name) {
                header.push_str(&format!(" {name}='{}'", escape(value)));
            }
        }
        if let Some(lang) = raw_attr(text, "xml:lang") {
            header.push_str(&format!(" xml:lang='{}'", escape(lang)));
        }
        header.push('>');
        return Ok(header.into_bytes());
    }
    if !opened {
        return Err(Refusal::NoOpen);
    }
    if element.is("close", NS_FRAMING) {
        return Ok(xml::STREAM_CLOSE.to_vec());
    }
    Ok(text.as_bytes().to_vec())
}

/// Cuts the server's outbound byte stream into RFC 7395 frames: the stream header becomes
/// `<open/>`, its end `<close/>`, and every top-level element a frame of its own, declaring the
/// namespaces that the stream header declared for it.
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
    /// Where the bytes not yet handed out begin.
    start: usize,
}

impl Splitter {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Drops what was handed out as frames (once per read, not once per frame).
    fn compact(&mut self) {
        self.buf.drain(..self.start);
        self.start = 0;
    }

    fn next_frame(&mut self) -> Option<String> {
        loop {
            let rest = &self.buf[self.start..];
            // Whitespace between elements is skipped.
            let lt = rest.iter().position(|&b| b == b'<')?;
            let rest = &rest[lt..];
            let end = tag_end(rest, 0)?;
            let tag = &rest[..=end];
            if tag.starts_with(b"<?") {
                self.start += lt + end + 1;
                continue;
            }
            if tag.starts_with(b"<stream:stream") {
                let frame = open_frame(&String::from_utf8_lossy(tag));
                self.start += lt + end + 1;
                return Some(frame);
            }
            if tag.starts_with(b"</stream:stream") {
                self.start += lt + end + 1;
                return Some(close_frame());
            }
            let element_end = element_end(rest)?;
            let frame = namespaced(&String::from_utf8_lossy(&rest[..=element_end]));
            self.start += lt + element_end + 1;
            return Some(frame);
        }
    }
}

/// The index of the `>` that ends the tag starting at `lt`, outside quoted attribute values.
fn tag_end(bytes: &[u8], lt: usize) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate().skip(lt + 1) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if b == q => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The index of the last byte of the element that starts at 0, once it is complete.
fn element_end(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let end = tag_end(bytes, i)?;
        let closing = bytes.get(i + 1) == Some(&b'/');
        let empty = bytes[end - 1] == b'/';
        if closing {
            depth = depth.saturating_sub(1);
        } else if !empty {
            depth += 1;
        }
        if depth == 0 {
            return Some(end);
        }
        i = end + 1;
    }
    None
}

/// `<open/>` with the stream header's attributes (the header is the server's own, already
/// escaped).
fn open_frame(header: &str) -> String {
    let mut open = format!("<open xmlns='{NS_FRAMING}'");
    for name in ["from", "id", "version", "xml:lang"] {
        if let Some(value) = raw_attr(header, name) {
            open.push_str(&format!(" {name}='{value}'"));
        }
    }
    open.push_str("/>");
    open
}

/// The raw (still escaped) value of an attribute in a start tag.
fn raw_attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start_tag = &tag[..tag.find('>').unwrap_or(tag.len())];
    let at = start_tag.find(&format!(" {name}="))? + name.len() + 2;
    let quote = match start_tag.as_bytes().get(at)? {
        b'\'' => '\'',
        b'"' => '"',
        _ => return None,
    };
    let rest = &start_tag[at + 1..];
    rest.find(quote).map(|end| &rest[..end])
}

/// A top-level element made standalone: `stream:` elements declare their prefix, others without
/// a namespace of their own get the stream's default (`jabber:client`).
fn namespaced(element: &str) -> String {
    let name_end = element
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(element.len());
    let start_tag_end = tag_end(element.as_bytes(), 0).unwrap_or(element.len());
    let start_tag = &element[..start_tag_end];
    let declaration = if element.starts_with("<stream:") {
        if start_tag.contains("xmlns:stream=") {
            return element.to_string();
        }
        format!(" xmlns:stream='{}'", ns::STREAM)
    } else {
        if start_tag.contains(" xmlns=") {
            return element.to_string();
        }
        " xmlns='jabber:client'".to_string()
    };
    format!(
        "{}{declaration}{}",
        &element[..name_end],
        &element[name_end..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_bytes_become_frames() {
        let mut s = Splitter::default();
        s.push(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='abc' version='1.0' xml:lang='en'>");
        s.push(b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features><message to='a@b' id='x>y'><body>1 > 0</body></message><presence/><mess");
        assert_eq!(
            s.next_frame().unwrap(),
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='localhost' id='abc' version='1.0' xml:lang='en'/>"
        );
        assert_eq!(
            s.next_frame().unwrap(),
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
        );
        assert_eq!(
            s.next_frame().unwrap(),
            "<message xmlns='jabber:client' to='a@b' id='x>y'><body>1 > 0</body></message>"
        );
        assert_eq!(s.next_frame().unwrap(), "<presence xmlns='jabber:client'/>");
        assert_eq!(s.next_frame(), None, "an incomplete element waits");
        s.push(b"age/></stream:stream>");
        assert_eq!(s.next_frame().unwrap(), "<message xmlns='jabber:client'/>");
        assert_eq!(
            s.next_frame().unwrap(),
            "<close xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\" />"
        );
        s.compact();
        assert!(s.buf.is_empty());
    }

    #[test]
    fn attribute_lookups_survive_hostile_text() {
        // " xml:lang=" inside another value, followed by a multi-byte character: no panic.
        assert_eq!(raw_attr("<open to=' xml:lang=é'/>", "xml:lang"), None);
        assert_eq!(
            raw_attr("<open xml:lang=\"de\" to='x'/>", "xml:lang"),
            Some("de")
        );
        assert!(inbound_frame(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to=' xml:lang=é'/>",
            false
        )
        .is_ok());
    }

    #[test]
    fn inbound_frames_become_stream_bytes() {
        let open = inbound_frame(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>",
            false,
        )
        .unwrap();
        let open = String::from_utf8(open).unwrap();
        assert!(open.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client'"));
        assert!(open.contains(" to='localhost'") && open.ends_with('>'));
        assert_eq!(
            inbound_frame("<message xmlns='jabber:client'/>", false),
            Err(Refusal::NoOpen)
        );
        assert_eq!(
            inbound_frame("<message xmlns='jabber:client'>", true),
            Err(Refusal::NotOneElement)
        );
        assert_eq!(
            inbound_frame("<a xmlns='x'/><b xmlns='x'/>", true),
            Err(Refusal::NotOneElement)
        );
        assert_eq!(
            inbound_frame("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", true).unwrap(),
            b"</stream:stream>"
        );
    }
}
