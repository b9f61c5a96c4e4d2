//! XMPP over WebSocket (RFC 7395) against the real server, with a real WebSocket client library
//! (tokio-tungstenite) over TLS: framing, login, messages with a TCP client both ways, and the
//! refusals (no upgrade, no xmpp subprotocol, binary frames, broken frames, no `<open/>`).

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::muc::PASSWORD;
use common::stanzas::*;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn tls(server: &TestServer) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(server.http.expect("HTTPS listener"))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tls_connector().connect(name, tcp).await.unwrap()
}

/// Opens a WebSocket to the XMPP path, offering `protocol` (none when empty).
async fn connect(server: &TestServer, protocol: &str) -> Result<Socket, String> {
    connect_from(server, protocol, None).await
}

/// The same, from a page of `origin`.
async fn connect_from(
    server: &TestServer,
    protocol: &str,
    origin: Option<&str>,
) -> Result<Socket, String> {
    let mut request = "wss://localhost/xmpp-websocket"
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    if !protocol.is_empty() {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, tls(server).await).await {
        Ok((socket, response)) => {
            assert_eq!(
                response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some("xmpp")
            );
            Ok(socket)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The next text frame (pings and pongs skipped); panics after `WAIT`.
async fn next_text(ws: &mut Socket) -> String {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket open")
            .expect("a frame");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Text frames until one contains `needle`; returns that one.
async fn until(ws: &mut Socket, needle: &str) -> String {
    loop {
        let text = next_text(ws).await;
        if text.contains(needle) {
            return text;
        }
    }
}

async fn send(ws: &mut Socket, text: &str) {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .unwrap();
}

async fn open(ws: &mut Socket) -> String {
    send(
        ws,
        &format!("<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"),
    )
    .await;
    let opened = next_text(ws).await;
    assert!(
        opened.starts_with(&format!("<open xmlns='{FRAMING}'"))
            && opened.contains("from='localhost'"),
        "{opened}"
    );
    next_text(ws).await
}

/// Logged in over WebSocket and bound to `resource`.
async fn logged_in(server: &TestServer, user: &str, resource: &str) -> Socket {
    let mut ws = connect(server, "xmpp").await.expect("WebSocket");
    let features = open(&mut ws).await;
    assert!(
        features.starts_with("<stream:features xmlns:stream='http://etherx.jabber.org/streams'"),
        "{features}"
    );
    assert!(
        !features.contains("starttls"),
        "no STARTTLS over WebSocket: {features}"
    );
    assert!(features.contains("PLAIN"), "{features}");
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{PASSWORD}"));
    send(
        &mut ws,
        &format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
        ),
    )
    .await;
    let success = next_text(&mut ws).await;
    assert!(success.starts_with("<success"), "{success}");
    let features = open(&mut ws).await;
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{features}"
    );
    send(
        &mut ws,
        &format!("<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"),
    )
    .await;
    let bound = until(&mut ws, "id='b'").await;
    assert!(
        bound.contains(&format!("<jid>{user}@localhost/{resource}</jid>")),
        "{bound}"
    );
    ws
}

#[tokio::test]
async fn a_browser_session_chats_with_a_tcp_client() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut bob = Client::bound_with(&server, "bob", PASSWORD, "desktop").await;
    bob.online_with("", None).await;
    let mut ws = logged_in(&server, "alice", "browser").await;
    send(&mut ws, "<presence xmlns='jabber:client'/>").await;

    // WebSocket → TCP.
    send(
        &mut ws,
        "<message xmlns='jabber:client' to='bob@localhost' type='chat' id='m1'><body>hello from the browser</body></message>",
    )
    .await;
    let got = bob.wait_body("hello from the browser").await;
    assert_eq!(got.attr("from"), Some("alice@localhost/browser"));

    // TCP → WebSocket: the frame is one standalone element in jabber:client.
    bob.send("<message to='alice@localhost/browser' type='chat' id='m2'><body>hello from TCP &amp; co</body></message>")
        .await;
    let frame = until(&mut ws, "hello from TCP").await;
    assert!(
        frame.starts_with("<message xmlns='jabber:client'"),
        "{frame}"
    );
    let parsed: minidom::Element = frame.parse().expect("a frame is one well-formed element");
    assert_eq!(parsed.attr("from"), Some("bob@localhost/desktop"));
    assert_eq!(body_of(&parsed).as_deref(), Some("hello from TCP & co"));

    // An iq round trip and a clean close (RFC 7395 §3.6).
    send(
        &mut ws,
        "<iq xmlns='jabber:client' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    let pong = until(&mut ws, "id='p'").await;
    assert!(pong.contains("type='result'"), "{pong}");
    send(&mut ws, &format!("<close xmlns='{FRAMING}'/>")).await;
    let closing = until(&mut ws, "<close").await;
    assert_eq!(closing, format!("<close xmlns='{FRAMING}'/>"));
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the close in time");
    assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{end:?}");
    // The session is gone: the resource can be bound again at once.
    let _ = logged_in(&server, "alice", "browser").await;
}

#[tokio::test]
async fn requests_and_frames_that_are_not_xmpp_over_websocket_are_refused() {
    let server = server_with_users(&["alice"], PASSWORD);
    let addr = server.http.unwrap();

    // A plain GET of the path, and an upgrade without the xmpp subprotocol.
    let plain = common::http::request(addr, "GET", "/xmpp-websocket", &[], Vec::new()).await;
    assert_eq!(plain.status, 426, "{}", plain.text());
    let refused = connect(&server, "").await.expect_err("refused");
    assert!(refused.contains("400"), "{refused}");
    let refused = connect(&server, "chat, superchat")
        .await
        .expect_err("refused");
    assert!(refused.contains("400"), "{refused}");

    // A binary frame: a stream error, <close/>, and a close with 1003.
    let mut ws = connect(&server, "xmpp").await.unwrap();
    open(&mut ws).await;
    ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    let error = next_text(&mut ws).await;
    assert!(
        error.contains("<stream:error") && error.contains("unsupported-stanza-type"),
        "{error}"
    );
    assert!(next_text(&mut ws).await.starts_with("<close"));
    expect_close(&mut ws, 1003).await;

    // Text that is not one complete element.
    for broken in [
        "<message xmlns='jabber:client'>",
        "<a xmlns='x'/><b xmlns='x'/>",
        "hello",
    ] {
        let mut ws = connect(&server, "xmpp").await.unwrap();
        open(&mut ws).await;
        send(&mut ws, broken).await;
        let error = next_text(&mut ws).await;
        assert!(error.contains("not-well-formed"), "{broken}: {error}");
        expect_close(&mut ws, 1007).await;
    }

    // A stanza before <open/>.
    let mut ws = connect(&server, "xmpp").await.unwrap();
    send(
        &mut ws,
        "<message xmlns='jabber:client' to='alice@localhost'/>",
    )
    .await;
    let error = next_text(&mut ws).await;
    assert!(error.contains("bad-format"), "{error}");
    expect_close(&mut ws, 1002).await;

    // None of this affected anyone else.
    let mut alice = Client::bound_with(&server, "alice", PASSWORD, "phone").await;
    alice.ping().await;
    let _ = logged_in(&server, "alice", "tab").await;
}

async fn expect_close(ws: &mut Socket, code: u16) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), code, "{frame:?}");
                return;
            }
            Ok(Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a close with {code}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn clients_find_the_websocket_and_only_allowed_pages_open_it() {
    let server = TestServer::start_with(Options {
        http: "websocket_origins = [\"https://chat.example\"]".into(),
        ..Options::default()
    });
    server.add_user("alice", PASSWORD);
    let addr = server.http.unwrap();
    let url = format!("wss://localhost:{}/xmpp-websocket", addr.port());

    // XEP-0156: both host-meta forms name the WebSocket URL.
    let xrd = common::http::request(addr, "GET", "/.well-known/host-meta", &[], Vec::new()).await;
    assert_eq!(xrd.status, 200);
    assert_eq!(xrd.header("content-type"), Some("application/xrd+xml"));
    assert_eq!(xrd.header("access-control-allow-origin"), Some("*"));
    assert!(
        xrd.text().contains(&format!(
            "<Link rel='urn:xmpp:alt-connections:websocket' href='{url}'/>"
        )),
        "{}",
        xrd.text()
    );
    let jrd =
        common::http::request(addr, "GET", "/.well-known/host-meta.json", &[], Vec::new()).await;
    assert_eq!(jrd.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&jrd.body).expect("JSON");
    assert_eq!(
        json["links"][0]["rel"],
        "urn:xmpp:alt-connections:websocket"
    );
    assert_eq!(json["links"][0]["href"], url.as_str());

    // Another page's origin is refused; the listed one gets in.
    let refused = connect_from(&server, "xmpp", Some("https://evil.example"))
        .await
        .expect_err("refused");
    assert!(refused.contains("403"), "{refused}");
    let mut ws = connect_from(&server, "xmpp", Some("https://chat.example"))
        .await
        .expect("the listed origin");
    let features = open(&mut ws).await;
    assert!(features.contains("PLAIN"), "{features}");
}
