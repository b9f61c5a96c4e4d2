//! File sharing (XEP-0363) over real sockets against the real server: discovery, slots, a real
//! PNG put and fetched back over HTTPS, caching and ranges, every refusal on the XMPP side and on
//! the HTTP side, retention (temporary chats, purposes), account deletion and restarts.

mod common;

use std::time::Duration;

use common::http::{path_of, request, Reply};
use common::muc::{xml, PASSWORD};
use common::stanzas::*;
use common::*;
use minidom::Element;

const UPLOAD: &str = "urn:xmpp:http:upload:0";
const SERVICE: &str = "upload.localhost";
const PNG: &[u8] = include_bytes!("data/rook.png");

fn server(extra: &str) -> TestServer {
    let server = TestServer::start_with(Options {
        extra: extra.to_string(),
        ..Options::default()
    });
    for user in ["alice", "bob"] {
        server.add_user(user, PASSWORD);
    }
    server
}

fn http(server: &TestServer) -> std::net::SocketAddr {
    server.http.expect("the server has an HTTPS listener")
}

/// A slot as the server handed it out.
struct Slot {
    put: String,
    authorization: String,
    get: String,
}

async fn ask(
    c: &mut Client,
    filename: &str,
    size: usize,
    content_type: &str,
    inner: &str,
) -> Element {
    let content_type = if content_type.is_empty() {
        String::new()
    } else {
        format!(" content-type='{content_type}'")
    };
    c.iq(
        "get",
        Some(SERVICE),
        &format!("<request xmlns='{UPLOAD}' filename='{filename}' size='{size}'{content_type}>{inner}</request>"),
    )
    .await
}

fn slot_of(server: &TestServer, reply: &Element) -> Slot {
    assert_result(reply);
    let slot = reply.get_child("slot", UPLOAD).expect("a <slot/>");
    let put = slot.get_child("put", UPLOAD).expect("<put/>");
    let get = slot.get_child("get", UPLOAD).expect("<get/>");
    let headers: Vec<&Element> = put.children().collect();
    assert_eq!(headers.len(), 1, "one header: {}", xml(reply));
    assert_eq!(headers[0].attr("name"), Some("Authorization"));
    Slot {
        put: path_of(put.attr("url").unwrap(), http(server)),
        authorization: headers[0].text(),
        get: path_of(get.attr("url").unwrap(), http(server)),
    }
}

async fn slot(
    server: &TestServer,
    c: &mut Client,
    filename: &str,
    bytes: &[u8],
    content_type: &str,
) -> Slot {
    let reply = ask(c, filename, bytes.len(), content_type, "").await;
    slot_of(server, &reply)
}

async fn put(server: &TestServer, slot: &Slot, bytes: &[u8], content_type: &str) -> Reply {
    request(
        http(server),
        "PUT",
        &slot.put,
        &[
            ("authorization", slot.authorization.as_str()),
            ("content-type", content_type),
        ],
        bytes.to_vec(),
    )
    .await
}

async fn fetch(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(http(server), "GET", path, headers, Vec::new()).await
}

fn files_on_disk(server: &TestServer) -> Vec<String> {
    match std::fs::read_dir(server.data_dir().join("uploads")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_png_goes_up_and_comes_back_byte_for_byte() {
    let server = server("[upload]\nmax_file_size = 100000\n");
    let mut alice = Client::bound_with(&server, "alice", PASSWORD, "phone").await;

    // Discovery: the server lists the service, the service tells its limit (XEP-0128).
    let items = alice
        .iq(
            "get",
            Some(DOMAIN),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert!(
        xml(&items).contains(&format!("jid='{SERVICE}'")),
        "{}",
        xml(&items)
    );
    let info = alice
        .iq(
            "get",
            Some(SERVICE),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let text = xml(&info);
    assert!(
        text.contains("category='store'") && text.contains("type='file'"),
        "{text}"
    );
    assert!(text.contains(&format!("var='{UPLOAD}'")), "{text}");
    let form = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .and_then(|q| q.get_child("x", "jabber:x:data"))
        .expect("a XEP-0128 form");
    let max = form
        .children()
        .find(|f| f.attr("var") == Some("max-file-size"))
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text());
    assert_eq!(max.as_deref(), Some("100000"), "{text}");

    // A slot keeps the name (percent-encoded), and PUT and GET name the same file.
    let slot = slot(&server, &mut alice, "très cool.png", PNG, "image/png").await;
    assert!(slot.get.ends_with("/tr%C3%A8s%20cool.png"), "{}", slot.get);
    assert_eq!(slot.put, slot.get);
    assert!(slot.authorization.starts_with("Bearer "));

    let stored = put(&server, &slot, PNG, "image/png").await;
    assert_eq!(stored.status, 201, "{}", stored.text());
    assert_eq!(stored.header("access-control-allow-origin"), Some("*"));

    let got = fetch(&server, &slot.get, &[("origin", "https://web.example")]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("access-control-allow-origin"), Some("*"));
    assert_eq!(got.body, PNG, "byte-identical");
    assert_eq!(got.header("content-type"), Some("image/png"));
    assert_eq!(
        got.header("content-length"),
        Some(PNG.len().to_string().as_str())
    );
    assert_eq!(got.header("accept-ranges"), Some("bytes"));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert!(got
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(got
        .header("content-disposition")
        .unwrap()
        .starts_with("inline"));
    assert!(got.header("cache-control").unwrap().contains("max-age="));
    assert!(got.header("last-modified").is_some());
    let etag = got.header("etag").expect("an ETag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");

    // HEAD: the same headers, no body.
    let head = request(http(&server), "HEAD", &slot.get, &[], Vec::new()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    // Revalidation and ranges, as a cache or a resuming download asks.
    let again = fetch(&server, &slot.get, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let changed = fetch(&server, &slot.get, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(changed.status, 200);
    let signature = fetch(&server, &slot.get, &[("range", "bytes=0-7")]).await;
    assert_eq!(signature.status, 206);
    assert_eq!(signature.body, &PNG[..8]);
    assert_eq!(
        signature.header("content-range"),
        Some(format!("bytes 0-7/{}", PNG.len()).as_str())
    );
    let tail = fetch(&server, &slot.get, &[("range", "bytes=-12")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &PNG[PNG.len() - 12..]);
    let stale = fetch(
        &server,
        &slot.get,
        &[("range", "bytes=0-7"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(
        stale.status, 200,
        "a Range for another version gets the whole file"
    );
    assert_eq!(stale.body, PNG);
    let beyond = fetch(&server, &slot.get, &[("range", "bytes=100000-")]).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range"),
        Some(format!("bytes */{}", PNG.len()).as_str())
    );

    // A web client's preflight.
    let preflight = request(http(&server), "OPTIONS", &slot.put, &[], Vec::new()).await;
    assert_eq!(preflight.status, 204);
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("PUT"));
    assert!(preflight
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Authorization"));

    // Active content is never shown by a browser from here: a download, under a strict CSP.
    let page = b"<html><script>alert(1)</script></html>";
    let asked = ask(&mut alice, "page.html", page.len(), "text/html", "").await;
    let html = slot_of(&server, &asked);
    assert_eq!(put(&server, &html, page, "text/html").await.status, 201);
    let got = fetch(&server, &html.get, &[]).await;
    assert_eq!(got.header("content-type"), Some("text/html"));
    assert!(got
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    assert!(got
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));

    // Files survive a restart (the listener's port changes with it: the path is what counts).
    let server = TestServer::restart(server);
    let got = fetch(&server, &slot.get, &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, PNG);
    assert_eq!(got.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn slot_requests_that_cannot_be_served_are_refused_with_the_right_error() {
    let server = server("[upload]\nmax_file_size = 1000\nquota = 1500\n");
    let mut alice = Client::bound_with(&server, "alice", PASSWORD, "phone").await;

    // Too large: <not-acceptable/> with <file-too-large/> and the limit, the request repeated.
    let reply = ask(&mut alice, "big.jpg", 1001, "image/jpeg", "").await;
    let (condition, extra) = error_parts(&reply, UPLOAD);
    assert_eq!(condition, "not-acceptable", "{}", xml(&reply));
    let extra = extra.expect("<file-too-large/>");
    assert_eq!(extra.name(), "file-too-large");
    assert_eq!(
        extra
            .get_child("max-file-size", UPLOAD)
            .map(|m| m.text())
            .as_deref(),
        Some("1000")
    );
    assert!(reply.has_child("request", UPLOAD), "{}", xml(&reply));
    assert_eq!(
        reply.get_child("error", CLIENT).unwrap().attr("type"),
        Some("modify")
    );

    // The quota counts slots already given: 1000 + 600 > 1500.
    let first = ask(&mut alice, "a.bin", 1000, "", "").await;
    assert_result(&first);
    let reply = ask(&mut alice, "b.bin", 600, "", "").await;
    let (condition, extra) = error_parts(&reply, UPLOAD);
    assert_eq!(condition, "resource-constraint", "{}", xml(&reply));
    assert_eq!(
        reply.get_child("error", CLIENT).unwrap().attr("type"),
        Some("wait")
    );
    // Trying again can work once the unused slot lapses: the service says when.
    assert_eq!(
        extra.map(|e| e.name().to_string()).as_deref(),
        Some("retry")
    );
    // Another user's quota is their own.
    let mut bob = Client::bound_with(&server, "bob", PASSWORD, "phone").await;
    assert_result(&ask(&mut bob, "b.bin", 600, "", "").await);

    // Malformed requests.
    for (payload, what) in [
        (format!("<request xmlns='{UPLOAD}' filename='x.txt'/>"), "no size"),
        (format!("<request xmlns='{UPLOAD}' filename='x.txt' size='many'/>"), "size not a number"),
        (format!("<request xmlns='{UPLOAD}' filename='x.txt' size='-3'/>"), "negative size"),
        (format!("<request xmlns='{UPLOAD}' filename='x.txt' size='0'/>"), "nothing to upload"),
        (format!("<request xmlns='{UPLOAD}' size='10'/>"), "no filename"),
        (format!("<request xmlns='{UPLOAD}' filename='../' size='10'/>"), "nothing left of the name"),
        (format!("<request xmlns='{UPLOAD}' filename='x.txt' size='10' content-type='text'/>"), "content type not a media type"),
        (format!("<request xmlns='{UPLOAD}' filename='x.txt' size='10'><ephemeral xmlns='urn:xmpp:http:upload:purpose:0' expire-before='2001-01-01T00:00:00Z'/></request>"), "expiry in the past"),
        (format!("<request xmlns='{UPLOAD}' filename='x.txt' size='10'><ephemeral xmlns='urn:xmpp:http:upload:purpose:0' expire-before='soon'/></request>"), "expiry not a date"),
    ] {
        let reply = bob.iq("get", Some(SERVICE), &payload).await;
        let (condition, _) = error_parts(&reply, UPLOAD);
        assert_eq!(condition, "bad-request", "{what}: {}", xml(&reply));
    }
    let reply = bob
        .iq(
            "set",
            Some(SERVICE),
            &format!("<request xmlns='{UPLOAD}' filename='x' size='1'/>"),
        )
        .await;
    assert_eq!(
        error_parts(&reply, UPLOAD).0,
        "bad-request",
        "a set is the wrong type"
    );
    let reply = bob
        .iq("get", Some(SERVICE), "<query xmlns='jabber:iq:version'/>")
        .await;
    assert_eq!(error_parts(&reply, UPLOAD).0, "service-unavailable");
    let reply = bob
        .iq(
            "get",
            Some(&format!("someone@{SERVICE}")),
            &format!("<request xmlns='{UPLOAD}' filename='x' size='1'/>"),
        )
        .await;
    assert_eq!(error_parts(&reply, UPLOAD).0, "item-not-found");
    // The name that was sent is cleaned: no directories, the ending kept.
    let slot = slot(
        &server,
        &mut bob,
        "../../etc/passwd.txt",
        b"0123456789",
        "text/plain",
    )
    .await;
    assert!(slot.get.ends_with("/passwd.txt"), "{}", slot.get);
    assert_eq!(slot.get.matches('/').count(), 3, "{}", slot.get);
}

#[tokio::test]
async fn puts_and_gets_that_do_not_match_a_slot_are_refused() {
    let server = server("[upload]\nslot_timeout = 4\n");
    let mut alice = Client::bound_with(&server, "alice", PASSWORD, "phone").await;
    let addr = http(&server);
    let bytes = b"hello, file".to_vec();
    let slot = slot(&server, &mut alice, "hello.txt", &bytes, "text/plain").await;

    // Not stored yet: nothing to fetch.
    assert_eq!(fetch(&server, &slot.get, &[]).await.status, 404);
    // No secret, or a wrong one.
    let none = request(
        addr,
        "PUT",
        &slot.put,
        &[("content-type", "text/plain")],
        bytes.clone(),
    )
    .await;
    assert_eq!(none.status, 403, "{}", none.text());
    let wrong = request(
        addr,
        "PUT",
        &slot.put,
        &[
            ("authorization", "Bearer guessed"),
            ("content-type", "text/plain"),
        ],
        bytes.clone(),
    )
    .await;
    assert_eq!(wrong.status, 403);
    // Another size, another type.
    let short = put(&server, &slot, b"hello", "text/plain").await;
    assert_eq!(short.status, 400, "{}", short.text());
    let long = put(&server, &slot, b"hello, file, and more", "text/plain").await;
    assert_eq!(long.status, 413, "{}", long.text());
    let png = put(&server, &slot, &bytes, "image/png").await;
    assert_eq!(png.status, 415, "{}", png.text());
    // A URL that was never handed out.
    let mut forged = slot.put.clone();
    forged.replace_range(forged.len() - 9.., "other.txt");
    let other_name = put(
        &server,
        &Slot {
            put: forged,
            ..slot_clone(&slot)
        },
        &bytes,
        "text/plain",
    )
    .await;
    assert_eq!(other_name.status, 404);
    let unknown = request(
        addr,
        "PUT",
        "/upload/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/hello.txt",
        &[("authorization", slot.authorization.as_str())],
        bytes.clone(),
    )
    .await;
    assert_eq!(unknown.status, 404);
    for path in [
        "/upload/..%2F..%2Fdb/conf",
        "/upload/../../etc/passwd",
        "/etc/passwd",
        "/",
    ] {
        assert_eq!(fetch(&server, path, &[]).await.status, 404, "{path}");
    }

    // After all these refusals the slot still works, once.
    let ok = put(&server, &slot, &bytes, "text/plain; charset=utf-8").await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    let replay = put(&server, &slot, &bytes, "text/plain").await;
    assert_eq!(replay.status, 409, "a slot is single-use");
    let got = fetch(&server, &slot.get, &[]).await;
    assert_eq!(got.body, bytes);
    assert!(got
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));

    // An upload cut off half-way gives the slot back; the retry succeeds.
    let cut = slot_for(&server, &mut alice, "cut.bin", 4096).await;
    cut_off(addr, &cut, 4096, 1000).await;
    let retry = put(&server, &cut, &vec![7u8; 4096], "application/octet-stream").await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(fetch(&server, &cut.get, &[]).await.body, vec![7u8; 4096]);

    // One PUT at a time: a second one while the first is under way is refused, the first ends well.
    let busy = slot_for(&server, &mut alice, "busy.bin", 10).await;
    let mut first = start_put(addr, &busy, 10, 4).await;
    let second = put(&server, &busy, &[2u8; 10], "application/octet-stream").await;
    assert_eq!(second.status, 409, "{}", second.text());
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        first.write_all(&[1u8; 6]).await.unwrap();
        first.flush().await.unwrap();
        let mut head = [0u8; 12];
        first.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 201", "{}", String::from_utf8_lossy(&head));
    }
    assert_eq!(fetch(&server, &busy.get, &[]).await.body, vec![1u8; 10]);

    // A slot lapses: a late PUT is told so.
    let late = slot_for(&server, &mut alice, "late.bin", 3).await;
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let gone = put(&server, &late, b"abc", "application/octet-stream").await;
    assert_eq!(gone.status, 410, "{}", gone.text());
    assert_eq!(fetch(&server, &late.get, &[]).await.status, 404);
    // Only the three stored files are on disk: no leftovers of the cut upload or the lapsed slot.
    let mut files = files_on_disk(&server);
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().all(|f| !f.ends_with(".part")), "{files:?}");
}

fn slot_clone(slot: &Slot) -> Slot {
    Slot {
        put: slot.put.clone(),
        authorization: slot.authorization.clone(),
        get: slot.get.clone(),
    }
}

async fn slot_for(server: &TestServer, c: &mut Client, name: &str, size: usize) -> Slot {
    let reply = ask(c, name, size, "", "").await;
    slot_of(server, &reply)
}

/// Starts a PUT of `size` bytes, sends `sent` of them and drops the connection.
async fn cut_off(addr: std::net::SocketAddr, slot: &Slot, size: usize, sent: usize) {
    let tls = start_put(addr, slot, size, sent).await;
    drop(tls);
    // The server notices the end of the connection and gives the slot back.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Starts a PUT of `size` bytes over a raw connection and sends `sent` of them.
async fn start_put(
    addr: std::net::SocketAddr,
    slot: &Slot,
    size: usize,
    sent: usize,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut tls = common::http::connect(addr).await;
    let head = format!(
        "PUT {} HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\ncontent-length: {size}\r\n\r\n",
        slot.put, slot.authorization
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&vec![1u8; sent]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tls
}

#[tokio::test]
async fn files_follow_the_retention_of_chats_and_go_with_the_account() {
    // Temporary chats: files shared in messages are kept two seconds here; profile pictures stay.
    let server =
        server("[archive]\ndefault = \"temporary\"\n[upload]\ntemporary_expire_after = \"2s\"\n");
    let mut alice = Client::bound_with(&server, "alice", PASSWORD, "phone").await;
    let message = slot(&server, &mut alice, "photo.png", PNG, "image/png").await;
    assert_eq!(put(&server, &message, PNG, "image/png").await.status, 201);
    let reply = ask(
        &mut alice,
        "avatar.png",
        PNG.len(),
        "image/png",
        "<profile xmlns='urn:xmpp:http:upload:purpose:0'/>",
    )
    .await;
    let avatar = slot_of(&server, &reply);
    assert_eq!(put(&server, &avatar, PNG, "image/png").await.status, 201);
    let reply = ask(
        &mut alice,
        "blog.png",
        PNG.len(),
        "image/png",
        "<permanent xmlns='urn:xmpp:http:upload:purpose:0'/>",
    )
    .await;
    let permanent = slot_of(&server, &reply);
    assert_eq!(put(&server, &permanent, PNG, "image/png").await.status, 201);
    // Bob keeps his chats (XEP-0441 default "always"), but an ephemeral file of his goes at the
    // time he named.
    let mut bob = Client::bound_with(&server, "bob", PASSWORD, "phone").await;
    let prefs = bob
        .iq(
            "set",
            None,
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never/></prefs>",
        )
        .await;
    assert_result(&prefs);
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let reply = ask(
        &mut bob,
        "story.png",
        PNG.len(),
        "image/png",
        &format!("<ephemeral xmlns='urn:xmpp:http:upload:purpose:0' expire-before='{soon}'/>"),
    )
    .await;
    let story = slot_of(&server, &reply);
    assert_eq!(put(&server, &story, PNG, "image/png").await.status, 201);
    let cached = fetch(&server, &message.get, &[]).await;
    assert_eq!(cached.status, 200);
    let max_age: u64 = cached
        .header("cache-control")
        .and_then(|c| c.split("max-age=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .expect("max-age");
    assert!(
        max_age <= 2,
        "caches keep it no longer than the server: {max_age}"
    );

    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(fetch(&server, &message.get, &[]).await.status, 404);
    assert_eq!(fetch(&server, &story.get, &[]).await.status, 404);
    assert_eq!(fetch(&server, &avatar.get, &[]).await.status, 200);
    assert_eq!(fetch(&server, &permanent.get, &[]).await.status, 200);
    assert_eq!(
        files_on_disk(&server).len(),
        2,
        "the expired files are deleted from disk"
    );

    // Bob's other files stay like his messages.
    let kept = slot(&server, &mut bob, "kept.png", PNG, "image/png").await;
    assert_eq!(put(&server, &kept, PNG, "image/png").await.status, 201);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fetch(&server, &kept.get, &[]).await.status, 200);

    // Deleting an account deletes its files, from the store and from disk.
    drop(alice);
    let (ok, out, err) = server.cli(&["user", "del", "alice@localhost"]);
    assert!(ok, "{out} {err}");
    assert_eq!(fetch(&server, &avatar.get, &[]).await.status, 404);
    assert_eq!(fetch(&server, &permanent.get, &[]).await.status, 404);
    assert_eq!(
        fetch(&server, &kept.get, &[]).await.status,
        200,
        "bob's file stays"
    );
    assert_eq!(files_on_disk(&server).len(), 1);
}
