//! Bad client input, from raw sockets: every kind of malformed, restricted, oversized, misplaced or
//! unauthenticated input gets the RFC 6120 stream error (or SASL failure, or stanza error) it calls
//! for, the stream error ends only the offending connection, and well-behaved sessions on other
//! connections keep working meanwhile.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;

const STREAMS_NS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const PASSWORD: &str = "pw-Bad1nput";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A client stream header with the given attributes.
fn header(attrs: &str) -> String {
    format!("<?xml version='1.0'?><stream:stream {attrs}>")
}

/// A ping to the server.
fn ping(id: &str) -> String {
    format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
}

/// Reads until the server closes the connection and checks that the stream ended with exactly one
/// stream error, of this condition, followed by the closing stream tag. Returns everything received,
/// or what is wrong.
async fn check_stream_error(c: &mut Raw, condition: &str, what: &str) -> Result<String, String> {
    check_stream_error_of(c, &[condition], what).await
}

/// `check_stream_error` where any one of several conditions is acceptable.
async fn check_stream_error_of(
    c: &mut Raw,
    conditions: &[&str],
    what: &str,
) -> Result<String, String> {
    let condition = conditions.join("/> or <");
    // A server that accepted the input sends no error: give up on it after a while.
    let mut all = match c
        .try_expect("</stream:stream>", Duration::from_secs(3))
        .await
    {
        Ok(text) => text,
        Err(text) => {
            return Err(format!(
                "{what}: expected the <{condition}/> stream error, but the stream did not end; got {text:?}"
            ))
        }
    };
    let after = c.expect_closed().await;
    if !after.is_empty() {
        all.push_str(&after);
        return Err(format!("{what}: data after </stream:stream>: {all:?}"));
    }
    if !conditions
        .iter()
        .any(|cond| all.contains(&format!("<stream:error><{cond} xmlns='{STREAMS_NS}'/>")))
    {
        return Err(format!(
            "{what}: expected the <{condition}/> stream error, got {all:?}"
        ));
    }
    if all.matches("<stream:error>").count() != 1 {
        return Err(format!("{what}: more than one stream error: {all:?}"));
    }
    if !all.ends_with("</stream:error></stream:stream>") {
        return Err(format!(
            "{what}: the stream error must be followed by </stream:stream> and nothing else: {all:?}"
        ));
    }
    Ok(all)
}

/// `check_stream_error` that panics on a mismatch.
async fn expect_stream_error(c: &mut Raw, condition: &str, what: &str) -> String {
    check_stream_error(c, condition, what)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Collects the cases of a table-driven test that went wrong, so that one run reports them all.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check<T>(&mut self, result: Result<T, String>) {
        if let Err(e) = result {
            self.0.push(e);
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} case(s) failed:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Like `expect_stream_error`, for errors caused by the client's stream header: the server must send
/// its own stream header first, and no features.
async fn expect_header_error(c: &mut Raw, condition: &str, what: &str) -> String {
    let all = expect_stream_error(c, condition, what).await;
    let header = all
        .find("<stream:stream")
        .unwrap_or_else(|| panic!("{what}: no stream header from the server: {all:?}"));
    let error = all.find("<stream:error>").unwrap();
    assert!(
        header < error,
        "{what}: the server's header must come before the error: {all:?}"
    );
    let tag = &all[header..header + all[header..].find('>').unwrap()];
    assert!(
        tag.contains("xmlns:stream='http://etherx.jabber.org/streams'")
            && tag.contains("version='1.0'"),
        "{what}: incomplete server header {tag:?}"
    );
    assert!(
        !all.contains("<stream:features"),
        "{what}: features offered on a refused stream: {all:?}"
    );
    all
}

/// Reads the iq with this id (as written on the wire, i.e. escaped) and returns it whole.
async fn read_iq(c: &mut Raw, id: &str) -> String {
    let before = c.expect(&format!("id='{id}'")).await;
    let start = before
        .rfind("<iq")
        .unwrap_or_else(|| panic!("no <iq> around id {id:?}: {before:?}"));
    let mut iq = before[start..].to_string();
    let rest = c.expect(">").await;
    iq.push_str(&rest);
    if !rest.ends_with("/>") {
        iq.push_str(&c.expect("</iq>").await);
    }
    iq
}

/// Pings the server and checks the result: the stream is alive and being served.
async fn assert_alive(c: &mut Raw, id: &str) {
    c.send(&ping(id)).await;
    let iq = read_iq(c, id).await;
    assert!(iq.contains("type='result'"), "ping {id}: {iq}");
}

/// A fresh plain connection whose stream is open (features read), before any negotiation.
async fn opened(server: &TestServer) -> Raw {
    let mut c = Raw::connect(server.c2s).await;
    c.open().await;
    c
}

/// A logged-in client (STARTTLS, SCRAM-SHA-256, bind) of an account created with `PASSWORD`.
async fn bound(server: &TestServer, user: &str, resource: &str) -> (Raw, String) {
    logged_in(server, user, PASSWORD, resource).await
}

/// Sends bytes that may make the server close the connection before it has read them all (the
/// write may then fail, which is expected).
async fn send_lossy(c: &mut Raw, bytes: &[u8]) {
    let _ = c.send_bytes(bytes).await;
}

/// A SASL exchange that must fail; returns the `<failure/>` text.
async fn failed_auth(c: &mut Raw, mechanism: &str, user: &str, password: &str) -> String {
    match c.authenticate(mechanism, user, password).await {
        Ok(()) => panic!("{mechanism} as {user} with {password:?} succeeded"),
        Err(text) => text,
    }
}

fn sasl_failure(condition: &str) -> String {
    format!("<failure xmlns='{SASL_NS}'><{condition}/></failure>")
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed XML → <not-well-formed/>

/// Inputs that violate XML 1.0 well-formedness (RFC 6120 §4.9.3.13).
const MALFORMED: &[(&str, &str)] = &[
    ("mismatched end tag", "<message><body></message>"),
    ("garbage", "<<<>"),
    ("end tag that closes nothing", "</message>"),
    ("unquoted attribute value", "<message id=x/>"),
    ("duplicate attribute", "<message id='a' id='b'/>"),
    ("'<' in an attribute value", "<message id='a<b'/>"),
    (
        "character reference to NUL",
        "<message><body>&#0;</body></message>",
    ),
    (
        "raw control character",
        "<message><body>\u{1}</body></message>",
    ),
    (
        "reference without ';'",
        "<message><body>&amp</body></message>",
    ),
    ("bare '&' in text", "<message><body>a & b</body></message>"),
    ("bare '&' in an attribute value", "<message id='a & b'/>"),
    (
        "character reference to NUL in an attribute value",
        "<message id='&#0;'/>",
    ),
    ("element name starting with a digit", "<1message/>"),
    ("attribute name starting with a digit", "<message 1d='x'/>"),
    ("']]>' in text", "<message><body>a]]>b</body></message>"),
];

#[tokio::test]
async fn malformed_xml_is_not_well_formed_before_auth_and_after_bind() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    server.add_user("romeo", PASSWORD);
    let (mut witness, _) = bound(&server, "romeo", "witness").await;

    let mut failures = Failures::default();
    for (what, input) in MALFORMED {
        // Right after the stream header, on plain TCP, before anything was negotiated.
        let mut c = Raw::connect(server.c2s).await;
        c.send(&format!("{STREAM_OPEN}{input}")).await;
        failures.check(
            check_stream_error(&mut c, "not-well-formed", &format!("{what} before auth")).await,
        );

        // After STARTTLS, before SASL.
        let mut c = Raw::connect(server.c2s).await;
        c.starttls().await;
        c.send(input).await;
        failures.check(
            check_stream_error(&mut c, "not-well-formed", &format!("{what} after STARTTLS")).await,
        );

        // In a bound session.
        let (mut c, _) = bound(&server, "juliet", "balcony").await;
        c.send(input).await;
        failures.check(
            check_stream_error(&mut c, "not-well-formed", &format!("{what} after bind")).await,
        );
    }

    // An undeclared namespace prefix is its own condition (RFC 6120 §4.9.3.2).
    let mut c = opened(&server).await;
    c.send("<x:message/>").await;
    expect_stream_error(
        &mut c,
        "bad-namespace-prefix",
        "undeclared prefix before auth",
    )
    .await;
    let (mut c, _) = bound(&server, "juliet", "balcony").await;
    c.send("<message><x:body/></message>").await;
    expect_stream_error(
        &mut c,
        "bad-namespace-prefix",
        "undeclared prefix after bind",
    )
    .await;

    assert_alive(&mut witness, "still-here").await;
    // The account whose streams were closed can still log in.
    let (mut again, jid) = bound(&server, "juliet", "balcony").await;
    assert_eq!(jid, "juliet@localhost/balcony");
    assert_alive(&mut again, "again").await;
    failures.assert_none();
}

#[tokio::test]
async fn invalid_utf8_is_unsupported_encoding() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    // RFC 6120 §4.9.3.22: <unsupported-encoding/> when the stream violates the rules of UTF-8.
    let mut bad = b"<message><body>caf".to_vec();
    bad.extend_from_slice(&[0xC3, 0x28, 0xFF]);
    bad.extend_from_slice(b"</body></message>");

    let mut failures = Failures::default();
    let mut c = opened(&server).await;
    c.send_bytes(&bad).await.unwrap();
    failures.check(
        check_stream_error(&mut c, "unsupported-encoding", "invalid UTF-8 before auth").await,
    );

    let (mut c, _) = bound(&server, "juliet", "balcony").await;
    c.send_bytes(&bad).await.unwrap();
    failures.check(
        check_stream_error(&mut c, "unsupported-encoding", "invalid UTF-8 after bind").await,
    );

    // RFC 6120 §11.6: only UTF-8 may be used; a declaration of another encoding is refused.
    let mut c = Raw::connect(server.c2s).await;
    c.send(
        "<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream to='localhost' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
    )
    .await;
    failures
        .check(check_stream_error(&mut c, "unsupported-encoding", "ISO-8859-1 declaration").await);

    assert_alive(&mut witness, "w").await;
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 2. Restricted XML (RFC 6120 §11.1) → <restricted-xml/>

const BILLION_LAUGHS: &str = "<!DOCTYPE lolz [<!ENTITY lol 'lol'>\
    <!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>\
    <!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]>";

const RESTRICTED: &[(&str, &str)] = &[
    ("DOCTYPE with entity declarations", BILLION_LAUGHS),
    ("processing instruction", "<?foo bar?>"),
    ("comment", "<!-- x -->"),
    (
        "comment inside a stanza",
        "<message><!-- x --><body>hi</body></message>",
    ),
    (
        "processing instruction inside a stanza",
        "<message><?foo bar?><body>hi</body></message>",
    ),
    (
        "undeclared entity in text",
        "<message><body>&xxe;</body></message>",
    ),
    (
        "undeclared entity in an attribute",
        "<message id='&xxe;'><body>hi</body></message>",
    ),
    (
        "entity from a DOCTYPE used in text",
        "<message><body>&lol3;</body></message>",
    ),
];

#[tokio::test]
async fn restricted_xml_is_refused_before_auth_and_after_bind() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    server.add_user("romeo", PASSWORD);
    let (mut witness, _) = bound(&server, "romeo", "witness").await;

    let mut failures = Failures::default();
    for (what, input) in RESTRICTED {
        let mut c = Raw::connect(server.c2s).await;
        c.send(&format!("{STREAM_OPEN}{input}")).await;
        failures.check(
            check_stream_error(&mut c, "restricted-xml", &format!("{what} before auth")).await,
        );

        let (mut c, _) = bound(&server, "juliet", "balcony").await;
        c.send(input).await;
        failures.check(
            check_stream_error(&mut c, "restricted-xml", &format!("{what} after bind")).await,
        );
    }

    // Before the stream header: the server still answers with its own header, then the error.
    for (what, prolog) in [
        ("DOCTYPE before the header", BILLION_LAUGHS),
        ("comment before the header", "<!-- hello -->"),
        ("processing instruction before the header", "<?foo bar?>"),
    ] {
        let mut c = Raw::connect(server.c2s).await;
        c.send(&format!(
            "<?xml version='1.0'?>{prolog}<stream:stream to='localhost' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        ))
        .await;
        expect_header_error(&mut c, "restricted-xml", what).await;
    }

    assert_alive(&mut witness, "w").await;
    let (mut again, _) = bound(&server, "juliet", "balcony").await;
    assert_alive(&mut again, "again").await;
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 3. Size and depth limits → <policy-violation/>

#[tokio::test]
async fn oversized_and_deeply_nested_input_is_a_policy_violation() {
    let server = TestServer::start_with(Options {
        max_stanza_size: 8192,
        ..Default::default()
    });
    server.add_user("juliet", PASSWORD);
    server.add_user("romeo", PASSWORD);
    let (mut witness, _) = bound(&server, "romeo", "witness").await;
    let big = "a".repeat(64 * 1024);

    // A complete 64 KiB message in a bound session.
    let (mut c, jid) = bound(&server, "juliet", "balcony").await;
    let stanza = format!("<message to='{jid}' type='chat'><body>{big}</body></message>");
    send_lossy(&mut c, stanza.as_bytes()).await;
    let all = expect_stream_error(&mut c, "policy-violation", "64 KiB message").await;
    assert!(
        !all.contains("<body>"),
        "the oversized message was delivered"
    );

    // One huge text node that never reaches a '<': the limit must apply before the text ends.
    let (mut c, jid) = bound(&server, "juliet", "balcony").await;
    send_lossy(
        &mut c,
        format!("<message to='{jid}'><body>{big}").as_bytes(),
    )
    .await;
    expect_stream_error(&mut c, "policy-violation", "unterminated huge text node").await;

    // One huge attribute value.
    let (mut c, _) = bound(&server, "juliet", "balcony").await;
    send_lossy(&mut c, format!("<message id='{big}'/>").as_bytes()).await;
    expect_stream_error(&mut c, "policy-violation", "huge attribute").await;

    // Before authentication, too: nobody may make the server buffer without bound.
    let mut c = opened(&server).await;
    send_lossy(&mut c, format!("<message><body>{big}").as_bytes()).await;
    expect_stream_error(&mut c, "policy-violation", "huge text before auth").await;

    // A huge stream header.
    let mut c = Raw::connect(server.c2s).await;
    send_lossy(
        &mut c,
        format!(
            "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0' junk='{big}'>"
        )
        .as_bytes(),
    )
    .await;
    expect_header_error(&mut c, "policy-violation", "huge stream header").await;

    // 1000 nested elements, before auth and after bind.
    let deep = "<a>".repeat(1000);
    let mut c = Raw::connect(server.c2s).await;
    send_lossy(&mut c, format!("{STREAM_OPEN}{deep}").as_bytes()).await;
    expect_stream_error(&mut c, "policy-violation", "deep nesting before auth").await;
    let (mut c, _) = bound(&server, "juliet", "balcony").await;
    send_lossy(&mut c, format!("<message>{deep}").as_bytes()).await;
    expect_stream_error(&mut c, "policy-violation", "deep nesting after bind").await;

    assert_alive(&mut witness, "w").await;
}

#[tokio::test]
async fn stanzas_just_below_the_size_limit_are_accepted() {
    let server = TestServer::start_with(Options {
        max_stanza_size: 8192,
        ..Default::default()
    });
    server.add_user("juliet", PASSWORD);
    let (mut c, jid) = bound(&server, "juliet", "balcony").await;

    // A ~7 KiB message to oneself comes back whole.
    let body: String = "0123456789abcdef".repeat(7 * 1024 / 16);
    let stanza = format!("<message to='{jid}' id='big1' type='chat'><body>{body}</body></message>");
    assert!(stanza.len() < 8192 && stanza.len() > 7000);
    c.send(&stanza).await;
    let got = c.expect("</message>").await;
    assert!(got.contains("id='big1'"), "{got}");
    assert_eq!(between(&got, "<body>", "</body>"), Some(body.as_str()));

    // A ping with a 4000-character id.
    let id = "i".repeat(4000);
    assert_alive(&mut c, &id).await;

    // Five such messages in one write: the limit is per stanza, not per write or per stream.
    let burst: String = (0..5)
        .map(|i| {
            format!("<message to='{jid}' id='burst{i}' type='chat'><body>{body}</body></message>")
        })
        .collect();
    assert!(burst.len() > 5 * 7000);
    c.send(&burst).await;
    for i in 0..5 {
        let got = c.expect("</message>").await;
        assert!(got.contains(&format!("id='burst{i}'")), "{i}: {got}");
        assert_eq!(between(&got, "<body>", "</body>"), Some(body.as_str()));
    }
    assert_alive(&mut c, "after-burst").await;
}

// ---------------------------------------------------------------------------------------------
// 4. Input split across TCP writes at every byte

async fn send_byte_by_byte(c: &mut Raw, text: &str) {
    for byte in text.as_bytes() {
        c.send_bytes(std::slice::from_ref(byte)).await.unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn input_split_at_every_byte_is_parsed() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);

    // The stream header, one byte per write.
    let mut c = Raw::connect(server.c2s).await;
    send_byte_by_byte(&mut c, STREAM_OPEN).await;
    let features = c.expect("</stream:features>").await;
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-tls"),
        "{features}"
    );

    // A ping whose id has an entity and multi-byte UTF-8 characters (2, 3 and 4 bytes), one byte
    // per write, over TLS in a bound session.
    let (mut c, jid) = bound(&server, "juliet", "balcony").await;
    let id_on_wire = "b&amp;y\u{e9}\u{20ac}\u{1f600}te";
    send_byte_by_byte(
        &mut c,
        &format!(
            "<iq type='get' id='{id_on_wire}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ),
    )
    .await;
    let iq = read_iq(&mut c, id_on_wire).await;
    assert!(iq.contains("type='result'"), "{iq}");

    // A message to oneself with UTF-8 and entities in the body, one byte per write, between
    // whitespace keepalives also sent byte by byte.
    send_byte_by_byte(
        &mut c,
        &format!(
            " \n<message to='{jid}' id='m&lt;1' type='chat'><body>caf\u{e9} &amp; \u{1f600} &lt;ok&gt;</body></message>\n "
        ),
    )
    .await;
    let got = c.expect("</message>").await;
    assert!(got.contains("id='m&lt;1'"), "{got}");
    assert_eq!(
        between(&got, "<body>", "</body>"),
        Some("caf\u{e9} &amp; \u{1f600} &lt;ok&gt;")
    );
    assert_alive(&mut c, "after").await;
}

// ---------------------------------------------------------------------------------------------
// 5. Anything but negotiation before authentication and bind

#[tokio::test]
async fn stanzas_before_authentication_are_not_authorized() {
    let server = TestServer::start_with(Options {
        require_encryption: false,
        ..Default::default()
    });
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    let cases = [
        (
            "message",
            "<message to='juliet@localhost'><body>hi</body></message>",
            "not-authorized",
        ),
        ("iq", &ping("early") as &str, "not-authorized"),
        ("presence", "<presence/>", "not-authorized"),
        (
            "registration iq while registration is closed",
            "<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>",
            "not-authorized",
        ),
        (
            "unknown element",
            "<foo xmlns='urn:example'/>",
            "unsupported-stanza-type",
        ),
    ];
    for (what, input, condition) in cases {
        let mut c = Raw::connect(server.c2s).await;
        let features = c.open().await;
        assert!(
            features.contains("<mechanism>PLAIN</mechanism>"),
            "SASL should be offered on the plain stream: {features}"
        );
        c.send(input).await;
        let all = expect_stream_error(&mut c, condition, what).await;
        assert!(
            !all.contains("type='result'"),
            "{what} was processed: {all}"
        );
    }
    assert_alive(&mut witness, "w").await;
}

#[tokio::test]
async fn only_starttls_and_sasl_before_authentication_when_encryption_is_required() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    // Plain TCP, before STARTTLS.
    for (what, input, condition) in [
        (
            "message before STARTTLS",
            "<message to='juliet@localhost'><body>hi</body></message>",
            "not-authorized",
        ),
        (
            "iq before STARTTLS",
            &ping("early") as &str,
            "not-authorized",
        ),
        ("presence before STARTTLS", "<presence/>", "not-authorized"),
        (
            "unknown element before STARTTLS",
            "<foo xmlns='urn:example'/>",
            "policy-violation",
        ),
    ] {
        let mut c = opened(&server).await;
        c.send(input).await;
        expect_stream_error(&mut c, condition, what).await;
    }

    // Over TLS, before SASL.
    for (what, input, condition) in [
        (
            "message after STARTTLS",
            "<message to='juliet@localhost'><body>hi</body></message>",
            "not-authorized",
        ),
        (
            "iq after STARTTLS",
            &ping("early") as &str,
            "not-authorized",
        ),
        (
            "unknown element after STARTTLS",
            "<foo xmlns='urn:example'/>",
            "unsupported-stanza-type",
        ),
        (
            "second STARTTLS",
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            "policy-violation",
        ),
    ] {
        let mut c = Raw::connect(server.c2s).await;
        c.starttls().await;
        c.send(input).await;
        expect_stream_error(&mut c, condition, what).await;
    }

    // STARTTLS on a direct TLS connection.
    let mut c = Raw::connect_direct_tls(server.direct_tls).await;
    c.open().await;
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    expect_stream_error(&mut c, "policy-violation", "STARTTLS over direct TLS").await;

    assert_alive(&mut witness, "w").await;
}

#[tokio::test]
async fn stanzas_after_sasl_but_before_bind_are_not_authorized() {
    let server = TestServer::start_with(Options {
        require_encryption: false,
        ..Default::default()
    });
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    for (what, input, condition) in [
        (
            "message",
            "<message to='juliet@localhost/witness'><body>hi</body></message>",
            "not-authorized",
        ),
        ("iq", &ping("early") as &str, "not-authorized"),
        ("presence", "<presence/>", "not-authorized"),
        (
            "unknown element",
            "<foo xmlns='urn:example'/>",
            "unsupported-stanza-type",
        ),
        (
            "second authentication",
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABwdw==</auth>",
            "policy-violation",
        ),
        (
            "STARTTLS after SASL",
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            "policy-violation",
        ),
    ] {
        let mut c = Raw::connect(server.c2s).await;
        c.open().await;
        c.authenticate("PLAIN", "juliet", PASSWORD).await.unwrap();
        let features = c.open().await;
        assert!(features.contains("xmpp-bind"), "{features}");
        c.send(input).await;
        expect_stream_error(&mut c, condition, &format!("{what} before bind")).await;
    }
    // Nothing reached the bound session.
    let stray = witness.drain(Duration::from_millis(300)).await;
    assert!(!stray.contains("<message"), "{stray}");
    assert_alive(&mut witness, "w").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Stream header errors

#[tokio::test]
async fn stream_header_errors() {
    let server = TestServer::start();
    let ok_ns = "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'";
    let cases = [
        (
            "wrong stream namespace",
            "to='localhost' xmlns='jabber:client' xmlns:stream='urn:example:not-streams' version='1.0'"
                .to_string(),
            "invalid-namespace",
        ),
        (
            "jabber:server as default namespace",
            "to='localhost' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'"
                .to_string(),
            "invalid-namespace",
        ),
        (
            "unknown default namespace",
            "to='localhost' xmlns='urn:example' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'"
                .to_string(),
            "invalid-namespace",
        ),
        (
            "no default namespace",
            "to='localhost' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'".to_string(),
            "invalid-namespace",
        ),
        (
            "unknown host",
            format!("to='example.net' {ok_ns} version='1.0'"),
            "host-unknown",
        ),
        (
            "missing version",
            format!("to='localhost' {ok_ns}"),
            "unsupported-version",
        ),
        (
            "version 0.9",
            format!("to='localhost' {ok_ns} version='0.9'"),
            "unsupported-version",
        ),
        (
            "version 2.0",
            format!("to='localhost' {ok_ns} version='2.0'"),
            "unsupported-version",
        ),
    ];
    for (what, attrs, condition) in cases {
        let mut c = Raw::connect(server.c2s).await;
        c.send(&header(&attrs)).await;
        expect_header_error(&mut c, condition, what).await;
    }

    // An undeclared prefix on the header itself.
    let mut c = Raw::connect(server.c2s).await;
    c.send("<?xml version='1.0'?><foo:stream to='localhost' xmlns='jabber:client' version='1.0'>")
        .await;
    expect_header_error(&mut c, "bad-namespace-prefix", "undeclared header prefix").await;

    // A language tag with markup in it is not echoed back as markup.
    let mut c = Raw::connect(server.c2s).await;
    c.send(&header(&format!(
        "to='localhost' {ok_ns} version='1.0' xml:lang='&apos;&gt;&lt;evil/&gt;'"
    )))
    .await;
    let features = c.expect("</stream:features>").await;
    assert!(!features.contains("<evil"), "{features}");

    // What is fine: a higher minor version (RFC 6120 §4.7.5), and no 'to' at all.
    for attrs in [
        format!("to='localhost' {ok_ns} version='1.1'"),
        format!("{ok_ns} version='1.0'"),
    ] {
        let mut c = Raw::connect(server.c2s).await;
        c.send(&header(&attrs)).await;
        let features = c.expect("</stream:features>").await;
        assert!(features.contains("version='1.0'"), "{features}");
    }
}

#[tokio::test]
async fn a_new_stream_header_inside_the_stream_is_refused() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;
    let reopen = "<stream:stream to='localhost' xmlns='jabber:client' \
                  xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
    // A stream header where a first-level element belongs is not a stanza (RFC 6120 §4.9.3.1 /
    // §4.9.3.24); the server must not wait for it to end, swallowing what follows.
    let mut failures = Failures::default();
    let mut c = opened(&server).await;
    c.send(reopen).await;
    failures.check(
        check_stream_error_of(
            &mut c,
            &["bad-format", "unsupported-stanza-type"],
            "new header before auth",
        )
        .await,
    );
    let (mut c, _) = bound(&server, "juliet", "balcony").await;
    c.send(reopen).await;
    c.send(&ping("swallowed")).await;
    failures.check(
        check_stream_error_of(
            &mut c,
            &["bad-format", "unsupported-stanza-type"],
            "new header after bind",
        )
        .await,
    );
    // An XML declaration inside the stream is refused as well.
    let (mut c, _) = bound(&server, "juliet", "balcony").await;
    c.send("<?xml version='1.0'?>").await;
    failures.check(
        check_stream_error_of(
            &mut c,
            &["restricted-xml", "not-well-formed"],
            "XML declaration after bind",
        )
        .await,
    );
    assert_alive(&mut witness, "w").await;
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 7. Login timeout

#[tokio::test]
async fn connections_that_do_not_log_in_in_time_are_closed() {
    let server = TestServer::start_with(Options {
        auth_timeout: 2,
        ..Default::default()
    });
    server.add_user("juliet", PASSWORD);
    let started = Instant::now();
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    // Header only.
    let mut header_only = opened(&server).await;
    // Nothing at all, on both listeners.
    let mut silent = Raw::connect(server.c2s).await;
    let silent_tls = tokio::net::TcpStream::connect(server.direct_tls)
        .await
        .unwrap();
    // Half a SASL exchange.
    let mut half = Raw::connect(server.c2s).await;
    half.starttls().await;
    let first = B64.encode("n,,n=juliet,r=0123456789abcdef");
    half.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>{first}</auth>"
    ))
    .await;
    half.expect("</challenge>").await;

    expect_stream_error(&mut header_only, "connection-timeout", "header only").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(6),
        "timed out after {elapsed:?}"
    );
    expect_header_error(&mut silent, "connection-timeout", "silent connection").await;
    expect_stream_error(&mut half, "connection-timeout", "half a SASL exchange").await;
    // The raw TCP connection to the direct TLS port is closed as well.
    let mut silent_tls = silent_tls;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read(&mut silent_tls, &mut buf),
    )
    .await
    .expect("direct TLS connection without handshake not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The timeout is for logging in: a bound session outlives it.
    assert!(started.elapsed() > Duration::from_secs(2));
    assert_alive(&mut witness, "w").await;
}

// ---------------------------------------------------------------------------------------------
// 8. Unknown elements and spoofed addresses after bind

#[tokio::test]
async fn unknown_elements_and_spoofed_from_after_bind() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    server.add_user("romeo", PASSWORD);
    let (mut romeo, romeo_jid) = bound(&server, "romeo", "orchard").await;

    for (what, input) in [
        ("unknown element", "<foo xmlns='urn:example'/>"),
        (
            "message in another namespace",
            "<message xmlns='urn:example'><body>hi</body></message>",
        ),
        (
            "STARTTLS after bind",
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        ),
        (
            "SASL after bind",
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>=</auth>",
        ),
    ] {
        let (mut c, _) = bound(&server, "juliet", "balcony").await;
        c.send(input).await;
        expect_stream_error(&mut c, "unsupported-stanza-type", what).await;
    }

    // A 'from' that is not the sender's own: closed, and nothing is delivered.
    for spoofed in [
        "someone-else@localhost/x",
        "romeo@localhost/orchard",
        "juliet@localhost/another-resource",
        "localhost",
        "not a jid@@",
    ] {
        let (mut c, _) = bound(&server, "juliet", "balcony").await;
        c.send(&format!(
            "<message from='{spoofed}' to='{romeo_jid}' type='chat'><body>spoofed</body></message>"
        ))
        .await;
        expect_stream_error(&mut c, "invalid-from", spoofed).await;
    }
    let stray = romeo.drain(Duration::from_millis(300)).await;
    assert!(
        !stray.contains("spoofed"),
        "a spoofed message got through: {stray}"
    );

    // The sender's own full or bare JID is fine, and gets stamped with the full JID.
    let (mut c, jid) = bound(&server, "juliet", "balcony").await;
    for from in [jid.as_str(), "juliet@localhost"] {
        c.send(&format!(
            "<message from='{from}' to='{romeo_jid}' type='chat'><body>genuine</body></message>"
        ))
        .await;
        let got = romeo.expect("</message>").await;
        assert!(
            got.contains(&format!("from='{jid}'")) && got.contains("genuine"),
            "{got}"
        );
    }
    assert_alive(&mut c, "c").await;
    assert_alive(&mut romeo, "r").await;
}

// ---------------------------------------------------------------------------------------------
// 9. Text at stream level

#[tokio::test]
async fn text_between_stanzas_is_bad_format_but_whitespace_is_a_keepalive() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    // Whitespace before and between everything is fine.
    let mut c = Raw::connect(server.c2s).await;
    c.send(" \n").await;
    c.send(STREAM_OPEN).await;
    c.send("\n\t ").await;
    c.expect("</stream:features>").await;
    let (mut c, _) = bound(&server, "juliet", "balcony").await;
    for (i, keepalive) in [" ", "\n", "\r\n", "\t", "  \n  "].iter().enumerate() {
        c.send(keepalive).await;
        c.send(keepalive).await;
        assert_alive(&mut c, &format!("k{i}")).await;
    }
    c.send(&format!(" {} \n {} ", ping("k-a"), ping("k-b")))
        .await;
    assert!(read_iq(&mut c, "k-a").await.contains("type='result'"));
    assert!(read_iq(&mut c, "k-b").await.contains("type='result'"));

    // Text that is not whitespace, before authentication and in a bound session.
    let mut failures = Failures::default();
    let before_auth = [
        ("text", "hello<presence/>"),
        ("text after whitespace", "  \n hello <starttls/>"),
        ("character data section", "<![CDATA[hello]]>"),
        ("entity reference", "&amp;<presence/>"),
        ("character reference", "&#65;<presence/>"),
    ];
    for (what, input) in before_auth {
        let mut c = opened(&server).await;
        c.send(input).await;
        failures
            .check(check_stream_error(&mut c, "bad-format", &format!("{what} before auth")).await);
    }
    let after_bind = [
        ("text", "hello<presence/>"),
        ("text after a stanza", "<presence/> hello <presence/>"),
        ("character data section", "<![CDATA[hello]]>"),
        ("entity reference", "&amp;<presence/>"),
        ("character reference", "&#65;<presence/>"),
    ];
    for (what, input) in after_bind {
        let (mut c, _) = bound(&server, "juliet", "balcony").await;
        c.send(input).await;
        failures
            .check(check_stream_error(&mut c, "bad-format", &format!("{what} after bind")).await);
    }

    // Not XMPP at all (an HTTP request): text before the root element is not even well-formed
    // XML; RFC 6120 §4.9.3.1 allows <bad-format/> but recommends the more specific condition.
    let mut c = Raw::connect(server.c2s).await;
    c.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n<").await;
    let all = c.expect_closed().await;
    assert!(
        all.contains(&format!("<not-well-formed xmlns='{STREAMS_NS}'/>"))
            || all.contains(&format!("<bad-format xmlns='{STREAMS_NS}'/>")),
        "{all}"
    );
    assert!(all.ends_with("</stream:stream>"), "{all}");

    assert_alive(&mut witness, "w").await;
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------------
// 10. SASL bad input

#[tokio::test]
async fn sasl_bad_input_gets_sasl_failures() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    // A SASL failure leaves the stream open: the client can try again on the same connection.
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='DIGEST-MD5'>=</auth>"
    ))
    .await;
    c.expect(&sasl_failure("invalid-mechanism")).await;
    c.login("SCRAM-SHA-256", "juliet", PASSWORD, None).await;
    assert_alive(&mut c, "after-invalid-mechanism").await;

    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    c.send(&format!("<auth xmlns='{SASL_NS}'>=</auth>")).await;
    c.expect(&sasl_failure("invalid-mechanism")).await;
    c.login("PLAIN", "juliet", PASSWORD, None).await;

    // Not base64, in the initial response and in a response.
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>!!not*base64!!</auth>"
    ))
    .await;
    c.expect(&sasl_failure("incorrect-encoding")).await;
    let first = B64.encode("n,,n=juliet,r=0123456789abcdef");
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>{first}</auth>"
    ))
    .await;
    c.expect("</challenge>").await;
    c.send(&format!("<response xmlns='{SASL_NS}'>%%%</response>"))
        .await;
    c.expect(&sasl_failure("incorrect-encoding")).await;

    // Valid base64 that is not a valid message of the mechanism.
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    let nonsense = B64.encode("no NUL separators here");
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{nonsense}</auth>"
    ))
    .await;
    c.expect(&sasl_failure("malformed-request")).await;
    c.login("PLAIN", "juliet", PASSWORD, None).await;

    // <abort/> in the middle of SCRAM.
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>{first}</auth>"
    ))
    .await;
    c.expect("</challenge>").await;
    c.send(&format!("<abort xmlns='{SASL_NS}'/>")).await;
    c.expect(&sasl_failure("aborted")).await;
    c.login("SCRAM-SHA-256", "juliet", PASSWORD, Some("after-abort"))
        .await;
    assert_alive(&mut c, "after-abort").await;

    // A stanza in the middle of a SASL exchange is a stanza before authentication
    // (RFC 6120 §4.9.3.12): a stream error, not a SASL failure.
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>{first}</auth>"
    ))
    .await;
    c.expect("</challenge>").await;
    c.send("<message to='juliet@localhost/witness'><body>sneaky</body></message>")
        .await;
    let during_sasl = check_stream_error(&mut c, "not-authorized", "stanza during SASL").await;

    let stray = witness.drain(Duration::from_millis(200)).await;
    assert!(!stray.contains("sneaky"), "{stray}");
    assert_alive(&mut witness, "w").await;
    if let Err(e) = during_sasl {
        panic!("{e}");
    }
}

#[tokio::test]
async fn wrong_passwords_fail_and_too_many_close_the_stream() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    for (attempt, mechanism) in ["SCRAM-SHA-256", "PLAIN"].iter().enumerate() {
        let failure = failed_auth(&mut c, mechanism, "juliet", "wrong").await;
        assert!(
            failure.ends_with(&sasl_failure("not-authorized")),
            "attempt {attempt}: {failure}"
        );
    }
    // The third wrong attempt (max_auth_attempts = 3) ends the stream.
    let failure = failed_auth(&mut c, "SCRAM-SHA-1", "juliet", "wrong").await;
    assert!(
        failure.ends_with(&sasl_failure("not-authorized")),
        "{failure}"
    );
    expect_stream_error(&mut c, "policy-violation", "third wrong password").await;

    // An unknown user is refused the same way.
    let mut c = Raw::connect(server.c2s).await;
    c.starttls().await;
    let failure = failed_auth(&mut c, "SCRAM-SHA-256", "nobody", PASSWORD).await;
    assert!(
        failure.ends_with(&sasl_failure("not-authorized")),
        "{failure}"
    );

    // The account itself is not locked: the right password works at once on a new connection.
    let (mut again, _) = bound(&server, "juliet", "again").await;
    assert_alive(&mut again, "again").await;
    assert_alive(&mut witness, "w").await;
}

#[tokio::test]
async fn sasl_on_plain_tcp_is_refused_when_encryption_is_required() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);

    let mut c = Raw::connect(server.c2s).await;
    let features = c.open().await;
    assert!(
        features.contains("<required/>") && !features.contains("<mechanisms"),
        "{features}"
    );
    let plain = B64.encode(format!("\0juliet\0{PASSWORD}"));
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{plain}</auth>"
    ))
    .await;
    c.expect(&sasl_failure("encryption-required")).await;
    let first = B64.encode("n,,n=juliet,r=0123456789abcdef");
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>{first}</auth>"
    ))
    .await;
    c.expect(&sasl_failure("encryption-required")).await;
    assert!(
        !c.pending.contains("<success"),
        "authenticated in the clear: {}",
        c.pending
    );
    // The stream is still usable: STARTTLS, then the same credentials work.
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    c.expect("<proceed").await;
    c.expect("/>").await;
    drop(c);
    let (mut c, _) = bound(&server, "juliet", "balcony").await;
    assert_alive(&mut c, "ok").await;
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_drops_the_connection() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    let (mut witness, _) = bound(&server, "juliet", "witness").await;

    let mut c = opened(&server).await;
    c.send(&format!(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>{}",
        "<message to='juliet@localhost/witness'><body>injected</body></message>"
    ))
    .await;
    let all = c.expect_closed().await;
    assert!(!all.contains("<stream:features"), "{all}");
    let stray = witness.drain(Duration::from_millis(200)).await;
    assert!(!stray.contains("injected"), "{stray}");
    assert_alive(&mut witness, "w").await;
}

// ---------------------------------------------------------------------------------------------
// 11. Isolation

#[tokio::test]
async fn bad_input_closes_only_its_own_connection() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    server.add_user("romeo", PASSWORD);
    let (mut b, b_jid) = bound(&server, "juliet", "balcony").await;
    let (mut romeo, romeo_jid) = bound(&server, "romeo", "orchard").await;

    // A, the same account on another resource, misbehaves and is closed.
    let (mut a, _) = bound(&server, "juliet", "garden").await;
    a.send("<message><body></message>").await;
    expect_stream_error(&mut a, "not-well-formed", "A").await;

    // B saw nothing of it and works: the server answers, and messages flow both ways.
    let stray = b.drain(Duration::from_millis(300)).await;
    assert!(!stray.contains("stream:error"), "{stray}");
    assert_alive(&mut b, "b1").await;
    b.send(&format!(
        "<message to='{romeo_jid}' type='chat'><body>still here</body></message>"
    ))
    .await;
    assert!(romeo.expect("</message>").await.contains("still here"));
    romeo
        .send(&format!(
            "<message to='{b_jid}' type='chat'><body>me too</body></message>"
        ))
        .await;
    assert!(b.expect("</message>").await.contains("me too"));

    // A logs in again with the same resource.
    let (mut a2, a2_jid) = bound(&server, "juliet", "garden").await;
    assert_eq!(a2_jid, "juliet@localhost/garden");
    assert_alive(&mut a2, "a2").await;

    // Many misbehaving connections at once, while B keeps pinging.
    let addr = server.c2s;
    let inputs: [(&str, &str); 6] = [
        ("<message><body></message>", "not-well-formed"),
        ("<!-- x -->", "restricted-xml"),
        ("<message>&xxe;</message>", "restricted-xml"),
        ("hello<presence/>", "bad-format"),
        ("<message/>", "not-authorized"),
        ("<foo xmlns='urn:example'/>", "policy-violation"),
    ];
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (input, condition) = inputs[i % inputs.len()];
            tokio::spawn(async move {
                let mut c = Raw::connect(addr).await;
                c.send(&format!("{STREAM_OPEN}{input}")).await;
                expect_stream_error(&mut c, condition, input).await;
            })
        })
        .collect();
    for i in 0..5 {
        assert_alive(&mut b, &format!("during{i}")).await;
    }
    for task in tasks {
        task.await.expect("misbehaving client task");
    }
    assert_alive(&mut b, "b2").await;
    assert_alive(&mut romeo, "r").await;
    assert_alive(&mut a2, "a2-end").await;
}

// ---------------------------------------------------------------------------------------------
// 12. iq validation: stanza errors, the stream stays open

#[tokio::test]
async fn invalid_iqs_get_stanza_errors_and_the_stream_stays_open() {
    let server = TestServer::start();
    server.add_user("juliet", PASSWORD);
    let (mut c, _) = bound(&server, "juliet", "balcony").await;

    let bad_request = format!("<bad-request xmlns='{STANZAS_NS}'/>");
    for (id, iq) in [
        ("none", "<iq type='get' id='none' to='localhost'/>".to_string()),
        (
            "two",
            "<iq type='get' id='two' to='localhost'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>"
                .to_string(),
        ),
        ("set-none", "<iq type='set' id='set-none'/>".to_string()),
        (
            "no-type",
            "<iq id='no-type' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>".to_string(),
        ),
        (
            "bogus-type",
            "<iq type='bogus' id='bogus-type' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
                .to_string(),
        ),
    ] {
        c.send(&iq).await;
        let reply = read_iq(&mut c, id).await;
        assert!(
            reply.contains("type='error'") && reply.contains(&bad_request),
            "{id}: {reply}"
        );
        assert!(reply.contains("<error type='modify'>"), "{id}: {reply}");
    }

    c.send("<iq type='get' id='badto' to='not a jid@@'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let reply = read_iq(&mut c, "badto").await;
    assert!(
        reply.contains("type='error'")
            && reply.contains(&format!("<jid-malformed xmlns='{STANZAS_NS}'/>")),
        "{reply}"
    );
    c.send("<message id='m1' to='@@bad' type='chat'><body>x</body></message>")
        .await;
    let reply = c.expect("</message>").await;
    assert!(
        reply.contains("id='m1'")
            && reply.contains("type='error'")
            && reply.contains(&format!("<jid-malformed xmlns='{STANZAS_NS}'/>")),
        "{reply}"
    );

    // Results and errors are never answered (RFC 6120 §8.3.1), even when malformed.
    c.send("<iq type='result' id='r1' to='localhost'/>").await;
    c.send("<iq type='result' id='r2' to='localhost'><a xmlns='urn:x'/><b xmlns='urn:x'/></iq>")
        .await;
    c.send("<iq type='error' id='r3' to='localhost'/>").await;
    let quiet = c.drain(Duration::from_millis(300)).await;
    assert!(
        !quiet.contains("<iq"),
        "answered a result or error: {quiet}"
    );

    assert_alive(&mut c, "still-open").await;
}
