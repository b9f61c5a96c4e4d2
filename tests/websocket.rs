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
    match tokio_tungstenite::client_async(
        request,
        common::http::connect(server.http.expect("HTTPS listener")).await,
    )
    .await
    {
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

/// Enables XEP-0198 with resumption on the WebSocket stream; returns the resumption id.
async fn enable_resumption(ws: &mut Socket) -> String {
    send(ws, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
    let enabled = until(ws, "<enabled").await;
    enabled
        .split("id='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a resumption id")
        .to_string()
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
    assert_eq!(closing, format!("<close xmlns=\"{FRAMING}\" />"));
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

#[tokio::test]
async fn a_user_on_tcp_and_websocket_sees_one_account_and_resumes_across_transports() {
    let server = server_with_users(&["alice", "bob"], PASSWORD);
    let mut bob = Client::bound_with(&server, "bob", PASSWORD, "desktop").await;
    bob.online_with("", None).await;

    // Alice on her phone (TCP) and in a browser tab (WebSocket), both with carbons.
    let mut phone = Client::bound_with(&server, "alice", PASSWORD, "phone").await;
    phone.online_with("", None).await;
    assert_result(
        &phone
            .iq("set", None, "<enable xmlns='urn:xmpp:carbons:2'/>")
            .await,
    );
    let mut tab = logged_in(&server, "alice", "tab").await;
    send(
        &mut tab,
        "<iq xmlns='jabber:client' type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    )
    .await;
    until(&mut tab, "id='c'").await;
    send(&mut tab, "<presence xmlns='jabber:client'/>").await;
    // The phone sees the tab come online (an account's resources share presence).
    phone
        .wait("the tab's presence", |el| {
            available(el, "alice@localhost/tab")
        })
        .await;

    // What the tab sends reaches Bob, and the phone as a sent carbon; what Bob sends to the
    // phone reaches the tab as a received carbon.
    send(
        &mut tab,
        "<message xmlns='jabber:client' to='bob@localhost' type='chat' id='t1'><body>from the tab</body></message>",
    )
    .await;
    bob.wait_body("from the tab").await;
    phone
        .wait("the sent carbon", |el| {
            el.get_child("sent", "urn:xmpp:carbons:2").is_some()
                && show(el).contains("from the tab")
        })
        .await;
    bob.send("<message to='alice@localhost/phone' type='chat' id='b1'><body>to the phone</body></message>")
        .await;
    phone.wait_body("to the phone").await;
    let carbon = until(&mut tab, "to the phone").await;
    assert!(
        carbon.contains("<received xmlns='urn:xmpp:carbons:2'"),
        "{carbon}"
    );

    // Stream management on the WebSocket, then the socket is lost: the session is resumed over
    // TCP, and what came meanwhile is delivered there.
    let id = enable_resumption(&mut tab).await;
    drop(tab);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send("<message to='alice@localhost/tab' type='chat' id='b2'><body>while you were away</body></message>")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c, answer) = resume_over_tcp(&server, "PLAIN", "alice", PASSWORD, &id, 0).await;
    assert!(answer.contains("<resumed"), "{answer}");
    c.expect("while you were away").await;
}

#[tokio::test]
async fn the_server_pings_and_drops_a_client_that_stopped_answering() {
    let server = TestServer::start_with(Options {
        http: "websocket_ping = 1".into(),
        ..Options::default()
    });
    server.add_user("alice", PASSWORD);
    // A client that reads answers the pings (the library sends the pongs) and stays.
    let mut ws = connect(&server, "xmpp").await.unwrap();
    open(&mut ws).await;
    let mut pings = 0;
    let until_time = tokio::time::Instant::now() + Duration::from_millis(4500);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until_time, ws.next()).await {
        match message {
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => panic!("closed while answering pings: {frame:?}"),
            _ => {}
        }
    }
    assert!(pings >= 3, "{pings} pings in 4.5 s");
    send(
        &mut ws,
        "<iq xmlns='jabber:client' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    // (Not yet authenticated: the answer is a stream error, but the socket was alive.)
    let alive = next_text(&mut ws).await;
    assert!(
        alive.contains("stream:error") || alive.contains("id='p'"),
        "{alive}"
    );

    // A client that answers nothing is closed after three silent intervals.
    let mut silent = connect(&server, "xmpp").await.unwrap();
    open(&mut silent).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    loop {
        match tokio::time::timeout(WAIT, silent.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
                break;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Text(_)))) => continue,
            // The server closed the socket: the library's queued pongs found it gone.
            Ok(Some(Err(tokio_tungstenite::tungstenite::Error::Io(_)))) | Ok(None) => break,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_input_ends_the_session_for_good() {
    let server = server_with_users(&["alice"], PASSWORD);
    let mut tab = logged_in(&server, "alice", "tab").await;
    let id = enable_resumption(&mut tab).await;
    tab.send(Message::Binary(vec![0u8; 4].into()))
        .await
        .unwrap();
    expect_close(&mut tab, 1003).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not lost but closed: there is nothing to resume.
    let (_, answer) = resume_over_tcp(&server, "PLAIN", "alice", PASSWORD, &id, 0).await;
    assert!(!answer.contains("<resumed"), "{answer}");
}
