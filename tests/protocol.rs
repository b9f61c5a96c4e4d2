//! Protocol behaviour around login, over real sockets against the real server: the stream features
//! of each stage (RFC 6120 §5-§7), resource binding and conflicts, the server's own iqs (XEP-0030,
//! XEP-0199, XEP-0092, XEP-0202), in-band registration (XEP-0077), authentication failures (RFC 6120
//! §6.4-§6.5, RFC 5802), and basic message delivery between local sessions (RFC 6120 §8, §10).

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NOT_AUTHORIZED: &str =
    "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>";
const PING: &str = "<ping xmlns='urn:xmpp:ping'/>";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Reads the complete stanza `<name …>` that carries `id='id'` (self-closing or not), skipping
/// anything received before it.
async fn stanza(c: &mut Raw, name: &str, id: &str) -> String {
    let head = c.expect(&format!("id='{id}'")).await;
    let start = head
        .rfind(&format!("<{name} "))
        .unwrap_or_else(|| panic!("no <{name}/> with id '{id}' in {head:?}"));
    let mut out = head[start..].to_string();
    out.push_str(&c.expect(">").await);
    if !out.ends_with("/>") {
        out.push_str(&c.expect(&format!("</{name}>")).await);
    }
    out
}

/// Sends an iq and returns the complete answer carrying the same id.
async fn iq(c: &mut Raw, request: &str, id: &str) -> String {
    c.send(request).await;
    stanza(c, "iq", id).await
}

/// Pings the server and asserts an empty result.
async fn assert_ping(c: &mut Raw, id: &str) {
    let reply = iq(c, &format!("<iq type='get' id='{id}'>{PING}</iq>"), id).await;
    assert_result(&reply);
    assert!(reply.ends_with("/>"), "a ping result is empty: {reply}");
}

/// A logged-in client (STARTTLS, SCRAM-SHA-256, the given resource) whose session is registered
/// with the router: a ping round trip proves the session loop runs.
async fn online(server: &TestServer, user: &str, password: &str, resource: &str) -> (Raw, String) {
    let (mut c, jid) = logged_in(server, user, password, resource).await;
    assert_ping(&mut c, "online-ping").await;
    (c, jid)
}

/// A fresh connection with TLS negotiated through STARTTLS; returns it and the features over TLS.
async fn tls_stream(server: &TestServer) -> (Raw, String) {
    let mut c = Raw::connect(server.c2s).await;
    let features = c.starttls().await;
    (c, features)
}

/// The start tag `<name …>` (or `<name …/>`) of the first such element in `text`.
fn start_tag<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = [" ", ">", "/>"]
        .iter()
        .filter_map(|after| text.find(&format!("<{name}{after}")))
        .min()?;
    let end = text[start..].find('>')? + start + 1;
    Some(&text[start..end])
}

fn assert_result(reply: &str) {
    let tag = start_tag(reply, "iq").unwrap_or_else(|| panic!("not an iq: {reply}"));
    assert!(tag.contains("type='result'"), "expected a result: {reply}");
}

/// Asserts a stanza error reply with this condition and, when given, this error type.
fn assert_error(reply: &str, condition: &str, kind: Option<&str>) {
    let name = reply
        .strip_prefix('<')
        .and_then(|r| r.split([' ', '>', '/']).next())
        .unwrap_or("");
    let tag = start_tag(reply, name).unwrap_or_else(|| panic!("not a stanza: {reply}"));
    assert!(tag.contains("type='error'"), "expected an error: {reply}");
    let error = start_tag(reply, "error").unwrap_or_else(|| panic!("no <error/>: {reply}"));
    if let Some(kind) = kind {
        assert!(
            error.contains(&format!("type='{kind}'")),
            "expected error type {kind}: {reply}"
        );
    }
    assert!(
        reply.contains(&format!("<{condition} xmlns='{STANZAS_NS}'/>")),
        "expected <{condition}/>: {reply}"
    );
}

fn b64(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_string()
    } else {
        B64.encode(data)
    }
}

/// A SASL exchange driven by a given client mechanism (for channel-binding variants the harness does
/// not build). Ok after `<success/>`, Err with the received text after `<failure/>`.
async fn sasl_exchange(
    c: &mut Raw,
    mechanism: &str,
    mut mech: Box<dyn sasl::client::Mechanism + Send>,
) -> Result<(), String> {
    let initial = mech.initial();
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='{mechanism}'>{}</auth>",
        b64(&initial)
    ))
    .await;
    loop {
        let text = c
            .expect_one_of(&[
                "</challenge>",
                "</success>",
                "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
                "</failure>",
            ])
            .await;
        if let Some(challenge) = between(&text, &format!("<challenge xmlns='{SASL_NS}'>"), "<") {
            let data = if challenge == "=" {
                vec![]
            } else {
                B64.decode(challenge).expect("challenge is base64")
            };
            let response = mech
                .response(&data)
                .map_err(|e| format!("client mechanism: {e}"))?;
            c.send(&format!(
                "<response xmlns='{SASL_NS}'>{}</response>",
                b64(&response)
            ))
            .await;
        } else if text.contains("<success") {
            return Ok(());
        } else {
            return Err(text);
        }
    }
}

/// One PLAIN attempt with a raw RFC 4616 message.
async fn plain_attempt(c: &mut Raw, message: &[u8]) -> Result<(), String> {
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{}</auth>",
        b64(message)
    ))
    .await;
    let text = c
        .expect_one_of(&[
            "</success>",
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            "</failure>",
        ])
        .await;
    if text.contains("<success") {
        Ok(())
    } else {
        Err(text)
    }
}

/// The server-first message of a SCRAM exchange for `user` (the exchange is then aborted).
async fn scram_server_first(server: &TestServer, mechanism: &str, user: &str) -> String {
    let (mut c, _) = tls_stream(server).await;
    let first = format!("n,,n={user},r=fyko+d2lbbFgONRv9qkxdawL");
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='{mechanism}'>{}</auth>",
        B64.encode(first)
    ))
    .await;
    let text = c.expect("</challenge>").await;
    let challenge = between(&text, &format!("<challenge xmlns='{SASL_NS}'>"), "<")
        .unwrap_or_else(|| panic!("no challenge: {text}"));
    let decoded = String::from_utf8(B64.decode(challenge).unwrap()).unwrap();
    c.send(&format!("<abort xmlns='{SASL_NS}'/>")).await;
    c.expect("</failure>").await;
    decoded
}

/// Asserts that a login with these credentials fails with `<not-authorized/>` on a fresh connection.
async fn assert_login_refused(server: &TestServer, mechanism: &str, user: &str, password: &str) {
    let (mut c, _) = tls_stream(server).await;
    let failure = c
        .authenticate(mechanism, user, password)
        .await
        .expect_err("login should fail");
    assert!(failure.contains(NOT_AUTHORIZED), "{mechanism}: {failure}");
}

/// Asserts that a login with these credentials succeeds on a fresh connection.
async fn assert_login_works(server: &TestServer, mechanism: &str, user: &str, password: &str) {
    let (mut c, _) = tls_stream(server).await;
    c.authenticate(mechanism, user, password)
        .await
        .unwrap_or_else(|e| panic!("{mechanism} login of {user} failed: {e}"));
    let jid = c.bind(None).await;
    assert!(jid.starts_with(&format!("{user}@localhost/")), "{jid}");
}

fn position(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("{needle} missing from {text}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Stream features at each stage

#[tokio::test]
async fn plain_tcp_offers_only_required_starttls() {
    let server = TestServer::start();
    let mut c = Raw::connect(server.c2s).await;
    let features = c.open().await;
    let header = start_tag(&features, "stream:stream").expect("stream header");
    assert!(header.contains("from='localhost'"), "{header}");
    assert!(header.contains("version='1.0'"), "{header}");
    let list = between(&features, "<stream:features>", "</stream:features>").expect("features");
    assert_eq!(
        list, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>",
        "only mandatory STARTTLS before TLS"
    );
}

#[tokio::test]
async fn tls_offers_every_mechanism_and_channel_binding() {
    let server = TestServer::start();
    let (_c, features) = tls_stream(&server).await;
    let direct = {
        let mut c = Raw::connect_direct_tls(server.direct_tls).await;
        c.open().await
    };
    for features in [&features, &direct] {
        assert!(!features.contains("xmpp-tls"), "STARTTLS again: {features}");
        let mechanisms = between(
            features,
            "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
            "</mechanisms>",
        )
        .unwrap_or_else(|| panic!("no mechanisms: {features}"));
        let order: Vec<usize> = [
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1",
            "PLAIN",
        ]
        .iter()
        .map(|m| position(mechanisms, &format!("<mechanism>{m}</mechanism>")))
        .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "strongest first: {mechanisms}"
        );
        assert!(
            features.contains("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>"),
            "XEP-0440 tls-exporter: {features}"
        );
        assert!(
            !features.contains("iq-register"),
            "registration is off: {features}"
        );
    }
}

#[tokio::test]
async fn optional_encryption_offers_starttls_and_non_plus_mechanisms_in_the_clear() {
    let server = TestServer::start_with(Options {
        require_encryption: false,
        ..Default::default()
    });
    server.add_user("juliet", "r0meo!");
    let mut c = Raw::connect(server.c2s).await;
    let features = c.open().await;
    let starttls = start_tag(&features, "starttls").expect("starttls offered");
    assert!(
        starttls.contains("urn:ietf:params:xml:ns:xmpp-tls"),
        "{features}"
    );
    assert!(
        !features.contains("<required/>"),
        "not required: {features}"
    );
    for m in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        assert!(
            features.contains(&format!("<mechanism>{m}</mechanism>")),
            "{m}: {features}"
        );
    }
    assert!(
        !features.contains("-PLUS"),
        "no channel binding without TLS: {features}"
    );
    assert!(!features.contains("sasl-channel-binding"), "{features}");
    // And the offer is real: PLAIN works on this unencrypted stream.
    c.authenticate("PLAIN", "juliet", "r0meo!")
        .await
        .expect("PLAIN in the clear when encryption is optional");
    assert_eq!(
        c.bind(Some("clear")).await,
        "juliet@localhost/clear",
        "bound over plain TCP"
    );
}

#[tokio::test]
async fn register_feature_only_when_registration_is_allowed() {
    const FEATURE: &str = "<register xmlns='http://jabber.org/features/iq-register'/>";
    let open = TestServer::start_with(Options {
        registration: true,
        ..Default::default()
    });
    let (_c, features) = tls_stream(&open).await;
    assert!(
        features.contains(FEATURE),
        "registration allowed: {features}"
    );
    let mut c = Raw::connect_direct_tls(open.direct_tls).await;
    let features = c.open().await;
    assert!(features.contains(FEATURE), "direct TLS: {features}");

    let closed = TestServer::start();
    let mut c = Raw::connect(closed.c2s).await;
    let features = c.open().await;
    assert!(!features.contains("iq-register"), "{features}");
    let (_c, features) = tls_stream(&closed).await;
    assert!(
        !features.contains("iq-register"),
        "registration off: {features}"
    );
}

#[tokio::test]
async fn after_sasl_bind_and_optional_session_are_offered() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = tls_stream(&server).await;
    c.authenticate("SCRAM-SHA-256", "juliet", "r0meo!")
        .await
        .expect("login");
    let features = c.open().await;
    assert!(
        features.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
        "{features}"
    );
    assert!(
        features
            .contains("<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>"),
        "{features}"
    );
    assert!(!features.contains("<mechanisms"), "{features}");
    assert!(!features.contains("xmpp-tls"), "{features}");
    assert!(!features.contains("iq-register"), "{features}");
}

// ---------------------------------------------------------------------------------------------
// 2. Resource binding

#[tokio::test]
async fn bind_uses_the_requested_resource_or_generates_a_unique_one() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (_c, jid) = logged_in(&server, "juliet", "r0meo!", "balcony").await;
    assert_eq!(jid, "juliet@localhost/balcony");

    let mut generated = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (mut c, _) = tls_stream(&server).await;
        let jid = c.login("SCRAM-SHA-256", "juliet", "r0meo!", None).await;
        let resource = jid
            .strip_prefix("juliet@localhost/")
            .unwrap_or_else(|| panic!("bound JID {jid}"));
        assert!(!resource.is_empty(), "empty generated resource");
        generated.push(resource.to_string());
        clients.push(c);
    }
    assert_ne!(generated[0], generated[1], "generated resources are unique");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_ping(c, &format!("gen{i}")).await;
    }
}

#[tokio::test]
async fn binding_the_same_full_jid_replaces_the_old_session_with_conflict() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut old, jid) = online(&server, "juliet", "r0meo!", "balcony").await;
    let (mut new, new_jid) = online(&server, "juliet", "r0meo!", "balcony").await;
    assert_eq!(
        new_jid, jid,
        "the new session got the resource it asked for"
    );
    let rest = old.expect_closed().await;
    assert!(
        rest.contains("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "RFC 6120 §7.7.2.2: {rest}"
    );
    assert!(rest.contains("</stream:stream>"), "{rest}");
    assert_ping(&mut new, "after-conflict").await;
}

#[tokio::test]
async fn two_resources_of_one_account_coexist() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut a, jid_a) = online(&server, "juliet", "r0meo!", "balcony").await;
    let (mut b, jid_b) = online(&server, "juliet", "r0meo!", "garden").await;
    assert_ping(&mut a, "a1").await;
    assert_ping(&mut b, "b1").await;
    a.send(&format!(
        "<message to='{jid_b}' id='self1' type='chat'><body>hello other me</body></message>"
    ))
    .await;
    let got = stanza(&mut b, "message", "self1").await;
    assert!(got.contains(&format!("from='{jid_a}'")), "{got}");
    assert!(got.contains("<body>hello other me</body>"), "{got}");
    let nothing = a.drain(Duration::from_millis(300)).await;
    assert!(
        nothing.is_empty(),
        "the first session is still fine: {nothing}"
    );
}

#[tokio::test]
async fn legacy_session_iq_after_bind_gets_an_empty_result() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = logged_in(&server, "juliet", "r0meo!", "old").await;
    let reply = iq(
        &mut c,
        "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
        "s1",
    )
    .await;
    assert_result(&reply);
    assert!(reply.ends_with("/>"), "empty result: {reply}");
    assert_ping(&mut c, "after-session").await;
}

// ---------------------------------------------------------------------------------------------
// 3. The server's own iqs

#[tokio::test]
async fn disco_info_of_the_server() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, jid) = online(&server, "juliet", "r0meo!", "balcony").await;
    let reply = iq(
        &mut c,
        "<iq type='get' to='localhost' id='di1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        "di1",
    )
    .await;
    assert_result(&reply);
    let head = start_tag(&reply, "iq").unwrap();
    assert!(head.contains("from='localhost'"), "{reply}");
    assert!(head.contains(&format!("to='{jid}'")), "{reply}");
    let identity = start_tag(&reply, "identity").unwrap_or_else(|| panic!("{reply}"));
    assert!(identity.contains("category='server'"), "{identity}");
    assert!(identity.contains("type='im'"), "{identity}");
    for feature in [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
        "jabber:iq:register",
    ] {
        assert!(
            reply.contains(&format!("<feature var='{feature}'/>")),
            "{feature} missing: {reply}"
        );
    }
}

#[tokio::test]
async fn disco_info_node_items_and_own_account() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;

    let reply = iq(
        &mut c,
        "<iq type='get' to='localhost' id='dn1'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:example:nothing'/></iq>",
        "dn1",
    )
    .await;
    assert_error(&reply, "item-not-found", Some("cancel"));

    let reply = iq(
        &mut c,
        "<iq type='get' to='localhost' id='dt1'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        "dt1",
    )
    .await;
    assert_result(&reply);
    assert!(
        reply.contains("http://jabber.org/protocol/disco#items"),
        "a disco#items query comes back: {reply}"
    );

    let reply = iq(
        &mut c,
        "<iq type='get' to='juliet@localhost' id='da1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        "da1",
    )
    .await;
    assert_result(&reply);
    assert!(
        start_tag(&reply, "iq")
            .unwrap()
            .contains("from='juliet@localhost'"),
        "{reply}"
    );
    let identity = start_tag(&reply, "identity").unwrap_or_else(|| panic!("{reply}"));
    assert!(identity.contains("category='account'"), "{identity}");
    assert!(identity.contains("type='registered'"), "{identity}");
}

#[tokio::test]
async fn ping_with_and_without_to() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    let reply = iq(
        &mut c,
        &format!("<iq type='get' to='localhost' id='p1'>{PING}</iq>"),
        "p1",
    )
    .await;
    assert_result(&reply);
    assert!(reply.ends_with("/>"), "empty result: {reply}");
    assert!(
        start_tag(&reply, "iq")
            .unwrap()
            .contains("from='localhost'"),
        "{reply}"
    );
    assert_ping(&mut c, "p2").await;
}

#[tokio::test]
async fn software_version_of_the_server() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    let reply = iq(
        &mut c,
        "<iq type='get' to='localhost' id='v1'><query xmlns='jabber:iq:version'/></iq>",
        "v1",
    )
    .await;
    assert_result(&reply);
    assert!(reply.contains("jabber:iq:version"), "{reply}");
    assert_eq!(
        between(&reply, "<name>", "</name>"),
        Some("Rookery"),
        "{reply}"
    );
    let version = between(&reply, "<version>", "</version>").unwrap_or_default();
    assert!(!version.trim().is_empty(), "a version: {reply}");
    let os = between(&reply, "<os>", "</os>").unwrap_or_default();
    assert!(!os.trim().is_empty(), "an os: {reply}");
}

#[tokio::test]
async fn entity_time_of_the_server() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    let reply = iq(
        &mut c,
        "<iq type='get' to='localhost' id='t1'><time xmlns='urn:xmpp:time'/></iq>",
        "t1",
    )
    .await;
    assert_result(&reply);
    assert!(reply.contains("urn:xmpp:time"), "{reply}");
    let tzo = between(&reply, "<tzo>", "</tzo>").unwrap_or_else(|| panic!("{reply}"));
    let tzo_ok = tzo == "Z"
        || (tzo.len() == 6
            && tzo.starts_with(['+', '-'])
            && tzo.as_bytes()[3] == b':'
            && tzo[1..3].bytes().all(|b| b.is_ascii_digit())
            && tzo[4..].bytes().all(|b| b.is_ascii_digit()));
    assert!(tzo_ok, "XEP-0082 TZD: {tzo}");
    let utc = between(&reply, "<utc>", "</utc>").unwrap_or_else(|| panic!("{reply}"));
    // XEP-0082 DateTime in UTC: YYYY-MM-DDThh:mm:ss[.sss]Z
    assert!(utc.ends_with('Z') && utc.as_bytes()[10] == b'T', "{utc}");
    let parsed = chrono::DateTime::parse_from_rfc3339(utc)
        .unwrap_or_else(|e| panic!("utc {utc} is not XEP-0082: {e}"));
    let skew = (chrono::Utc::now() - parsed.with_timezone(&chrono::Utc))
        .num_seconds()
        .abs();
    assert!(skew < 300, "server time {utc} is {skew}s off");
}

#[tokio::test]
async fn unknown_namespace_is_service_unavailable() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    for (id, kind, to) in [
        ("u1", "get", " to='localhost'"),
        ("u2", "set", " to='localhost'"),
        ("u3", "get", ""),
        ("u4", "set", ""),
    ] {
        let reply = iq(
            &mut c,
            &format!("<iq type='{kind}'{to} id='{id}'><query xmlns='urn:example:unknown'/></iq>"),
            id,
        )
        .await;
        assert_error(&reply, "service-unavailable", Some("cancel"));
    }
}

#[tokio::test]
async fn iq_results_and_errors_get_no_answer() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    c.send("<iq type='result' id='r1'/>").await;
    c.send("<iq type='result' to='localhost' id='r2'/>").await;
    c.send(&format!(
        "<iq type='result' to='localhost' id='r3'><query xmlns='jabber:iq:version'/></iq>\
         <iq type='error' id='e1'><error type='cancel'><service-unavailable xmlns='{STANZAS_NS}'/></error></iq>\
         <iq type='error' to='localhost' id='e2'><ping xmlns='urn:xmpp:ping'/><error type='cancel'><feature-not-implemented xmlns='{STANZAS_NS}'/></error></iq>\
         <iq type='result' to='juliet@localhost' id='r4'/>"
    ))
    .await;
    let got = c.drain(Duration::from_millis(500)).await;
    assert!(
        got.is_empty(),
        "RFC 6120 §8.2.3: results and errors are not answered: {got}"
    );
    assert_ping(&mut c, "still-alive").await;
}

#[tokio::test]
async fn ping_set_is_an_error() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    let reply = iq(
        &mut c,
        &format!("<iq type='set' to='localhost' id='ps1'>{PING}</iq>"),
        "ps1",
    )
    .await;
    assert!(
        start_tag(&reply, "iq").unwrap().contains("type='error'"),
        "a set to a get-only namespace: {reply}"
    );
    assert!(reply.contains(STANZAS_NS), "{reply}");
    assert_ping(&mut c, "after-set").await;
}

// ---------------------------------------------------------------------------------------------
// 4. XEP-0077 In-Band Registration

#[tokio::test]
async fn inband_registration_before_login() {
    let server = TestServer::start_with(Options {
        registration: true,
        ..Default::default()
    });
    server.add_user("juliet", "r0meo!");
    let (mut c, features) = tls_stream(&server).await;
    assert!(
        features.contains("http://jabber.org/features/iq-register"),
        "{features}"
    );

    let form = iq(
        &mut c,
        "<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>",
        "reg1",
    )
    .await;
    assert_result(&form);
    assert!(form.contains("jabber:iq:register"), "{form}");
    assert!(form.contains("<username/>"), "username field: {form}");
    assert!(form.contains("<password/>"), "password field: {form}");

    // Failures first; they leave the stream usable.
    let reply = iq(
        &mut c,
        "<iq type='set' id='reg2'><query xmlns='jabber:iq:register'><username>juliet</username><password>x</password></query></iq>",
        "reg2",
    )
    .await;
    assert_error(&reply, "conflict", Some("cancel"));
    let reply = iq(
        &mut c,
        "<iq type='set' id='reg3'><query xmlns='jabber:iq:register'><username>JULIET</username><password>x</password></query></iq>",
        "reg3",
    )
    .await;
    assert_error(&reply, "conflict", Some("cancel"));
    let reply = iq(
        &mut c,
        "<iq type='set' id='reg4'><query xmlns='jabber:iq:register'><username>mercutio</username></query></iq>",
        "reg4",
    )
    .await;
    assert_error(&reply, "not-acceptable", Some("modify"));
    let reply = iq(
        &mut c,
        "<iq type='set' id='reg5'><query xmlns='jabber:iq:register'><username>mercutio</username><password/></query></iq>",
        "reg5",
    )
    .await;
    assert_error(&reply, "not-acceptable", Some("modify"));
    for (id, name) in [("reg6", "bad@name"), ("reg7", "bad name")] {
        let reply = iq(
            &mut c,
            &format!("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>{name}</username><password>pw</password></query></iq>"),
            id,
        )
        .await;
        assert_error(&reply, "jid-malformed", None);
    }

    let reply = iq(
        &mut c,
        "<iq type='set' id='reg8'><query xmlns='jabber:iq:register'><username>romeo</username><password>wherefore</password></query></iq>",
        "reg8",
    )
    .await;
    assert_result(&reply);

    // The new account logs in on the same stream, and on a new one.
    c.authenticate("SCRAM-SHA-256", "romeo", "wherefore")
        .await
        .expect("login with the registered account");
    assert_eq!(c.bind(Some("r")).await, "romeo@localhost/r");
    assert_login_works(&server, "PLAIN", "romeo", "wherefore").await;
    // The refused registrations created nothing.
    assert_login_refused(&server, "PLAIN", "mercutio", "pw").await;
}

#[tokio::test]
async fn registration_off_is_not_advertised_and_refused_before_login() {
    let server = TestServer::start();
    let (mut c, features) = tls_stream(&server).await;
    assert!(!features.contains("iq-register"), "{features}");
    c.send("<iq type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    let rest = c.expect_closed().await;
    assert!(
        rest.contains(
            "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        ),
        "{rest}"
    );
    assert!(!rest.contains("type='result'"), "{rest}");
}

#[tokio::test]
async fn registration_query_when_logged_in_says_registered() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    let reply = iq(
        &mut c,
        "<iq type='get' id='rq1'><query xmlns='jabber:iq:register'/></iq>",
        "rq1",
    )
    .await;
    assert_result(&reply);
    assert!(reply.contains("<registered/>"), "{reply}");
    assert!(reply.contains("<username>juliet</username>"), "{reply}");
}

#[tokio::test]
async fn password_change_takes_effect() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    let reply = iq(
        &mut c,
        "<iq type='set' to='localhost' id='pw1'><query xmlns='jabber:iq:register'><username>juliet</username><password>n3w-secret</password></query></iq>",
        "pw1",
    )
    .await;
    assert_result(&reply);
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        assert_login_works(&server, mechanism, "juliet", "n3w-secret").await;
        assert_login_refused(&server, mechanism, "juliet", "r0meo!").await;
    }
    assert_ping(&mut c, "still-here").await;
}

#[tokio::test]
async fn password_change_for_another_user_is_not_authorized() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    server.add_user("romeo", "wherefore");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    let reply = iq(
        &mut c,
        "<iq type='set' to='localhost' id='pw2'><query xmlns='jabber:iq:register'><username>romeo</username><password>hijacked</password></query></iq>",
        "pw2",
    )
    .await;
    assert_error(&reply, "not-authorized", None);
    assert_login_works(&server, "PLAIN", "romeo", "wherefore").await;
    assert_login_refused(&server, "PLAIN", "romeo", "hijacked").await;
    assert_login_works(&server, "PLAIN", "juliet", "r0meo!").await;
}

#[tokio::test]
async fn empty_password_change_is_refused_and_keeps_the_password() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    for (id, password) in [("pw3", "<password/>"), ("pw4", "<password></password>")] {
        let reply = iq(
            &mut c,
            &format!("<iq type='set' to='localhost' id='{id}'><query xmlns='jabber:iq:register'><username>juliet</username>{password}</query></iq>"),
            id,
        )
        .await;
        assert!(
            start_tag(&reply, "iq").unwrap().contains("type='error'"),
            "XEP-0077 §3.3: {reply}"
        );
    }
    assert_login_works(&server, "SCRAM-SHA-256", "juliet", "r0meo!").await;
}

#[tokio::test]
async fn account_removal_ends_every_session_and_the_account() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    server.add_user("romeo", "wherefore");
    let (mut a, _) = online(&server, "juliet", "r0meo!", "balcony").await;
    let (mut b, _) = online(&server, "juliet", "r0meo!", "garden").await;
    let (mut other, _) = online(&server, "romeo", "wherefore", "orchard").await;
    let reply = iq(
        &mut a,
        "<iq type='set' id='rm1'><query xmlns='jabber:iq:register'><remove/></query></iq>",
        "rm1",
    )
    .await;
    assert_result(&reply);
    for c in [&mut a, &mut b] {
        let rest = c.expect_closed().await;
        assert!(
            rest.contains(
                "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            ),
            "XEP-0077 §3.2: {rest}"
        );
    }
    assert_login_refused(&server, "SCRAM-SHA-256", "juliet", "r0meo!").await;
    assert_login_refused(&server, "PLAIN", "juliet", "r0meo!").await;
    // Other accounts are untouched, and the removed one is gone for them too.
    assert_ping(&mut other, "other").await;
    other
        .send("<message to='juliet@localhost' id='gone1'><body>hello?</body></message>")
        .await;
    let reply = stanza(&mut other, "message", "gone1").await;
    assert_error(&reply, "service-unavailable", None);
}

// ---------------------------------------------------------------------------------------------
// 5. Authentication failures

#[tokio::test]
async fn wrong_password_fails_and_the_stream_allows_a_retry() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        let (mut c, _) = tls_stream(&server).await;
        let failure = c
            .authenticate(mechanism, "juliet", "wrong")
            .await
            .expect_err("wrong password");
        assert!(failure.ends_with(NOT_AUTHORIZED), "{mechanism}: {failure}");
        c.authenticate(mechanism, "juliet", "r0meo!")
            .await
            .unwrap_or_else(|e| panic!("{mechanism} retry failed: {e}"));
        assert_eq!(c.bind(Some("retry")).await, "juliet@localhost/retry");
    }
}

#[tokio::test]
async fn unknown_user_fails_like_a_wrong_password() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        let (mut c, _) = tls_stream(&server).await;
        let wrong = c
            .authenticate(mechanism, "juliet", "wrong")
            .await
            .expect_err("wrong password");
        let unknown = c
            .authenticate(mechanism, "nobody", "wrong")
            .await
            .expect_err("unknown user");
        assert!(unknown.ends_with(NOT_AUTHORIZED), "{mechanism}: {unknown}");
        assert_eq!(
            wrong.trim(),
            unknown.trim(),
            "{mechanism}: the answers must not tell whether the account exists"
        );
    }
}

#[tokio::test]
async fn scram_challenge_for_an_unknown_user_looks_like_a_known_one() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-1"] {
        let known = scram_server_first(&server, mechanism, "juliet").await;
        let unknown = scram_server_first(&server, mechanism, "nobody").await;
        let again = scram_server_first(&server, mechanism, "nobody").await;
        let field = |msg: &str, key: &str| -> String {
            msg.split(',')
                .find_map(|f| f.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {msg}"))
                .to_string()
        };
        assert_eq!(
            B64.decode(field(&known, "s=")).unwrap().len(),
            B64.decode(field(&unknown, "s=")).unwrap().len(),
            "{mechanism}: salt length reveals the account: {known} / {unknown}"
        );
        assert_eq!(
            field(&unknown, "s="),
            field(&again, "s="),
            "{mechanism}: a made-up salt must be stable"
        );
        assert_eq!(
            field(&known, "i="),
            field(&unknown, "i="),
            "{mechanism}: the iteration count reveals whether the account exists: known {known:?}, unknown {unknown:?}"
        );
    }
}

#[tokio::test]
async fn authzid_other_than_own_jid_is_invalid() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = tls_stream(&server).await;
    let failure = plain_attempt(&mut c, b"other@localhost\0juliet\0r0meo!")
        .await
        .expect_err("foreign authzid");
    assert!(
        failure.ends_with(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-authzid/></failure>"
        ),
        "RFC 6120 §6.4.6: {failure}"
    );

    // The same through SCRAM's gs2 header.
    let (mut c, _) = tls_stream(&server).await;
    c.send(&format!(
        "<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>{}</auth>",
        B64.encode("n,a=other@localhost,n=juliet,r=abcdefghijkl")
    ))
    .await;
    let failure = c.expect("</failure>").await;
    assert!(failure.contains("<invalid-authzid/>"), "{failure}");

    // One's own bare JID as authzid is fine.
    let (mut c, _) = tls_stream(&server).await;
    plain_attempt(&mut c, b"juliet@localhost\0juliet\0r0meo!")
        .await
        .expect("own JID as authzid");
    assert_eq!(c.bind(Some("z")).await, "juliet@localhost/z");
}

#[tokio::test]
async fn plus_with_wrong_channel_binding_data_fails() {
    use sasl::client::mechanisms::Scram;
    use sasl::common::scram::{Sha1, Sha256};
    use sasl::common::ChannelBinding;
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, features) = tls_stream(&server).await;
    assert!(features.contains("SCRAM-SHA-256-PLUS"), "{features}");
    let real = c.exporter.clone().expect("TLS 1.3 exporter");
    assert_ne!(real, vec![0; 32]);
    let mech =
        Scram::<Sha256>::new("juliet", "r0meo!", ChannelBinding::TlsExporter(vec![0; 32])).unwrap();
    let failure = sasl_exchange(&mut c, "SCRAM-SHA-256-PLUS", Box::new(mech))
        .await
        .expect_err("wrong channel binding must fail");
    assert!(failure.ends_with(NOT_AUTHORIZED), "{failure}");
    let mech =
        Scram::<Sha1>::new("juliet", "r0meo!", ChannelBinding::TlsExporter(vec![0; 32])).unwrap();
    let failure = sasl_exchange(&mut c, "SCRAM-SHA-1-PLUS", Box::new(mech))
        .await
        .expect_err("wrong channel binding must fail");
    assert!(failure.ends_with(NOT_AUTHORIZED), "{failure}");
    // The right binding data on the same stream succeeds.
    let mech = Scram::<Sha256>::new("juliet", "r0meo!", ChannelBinding::TlsExporter(real)).unwrap();
    sasl_exchange(&mut c, "SCRAM-SHA-256-PLUS", Box::new(mech))
        .await
        .expect("correct channel binding");
}

#[tokio::test]
async fn channel_binding_downgrade_is_refused() {
    use sasl::client::mechanisms::Scram;
    use sasl::common::scram::{Sha1, Sha256};
    use sasl::common::ChannelBinding;
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, features) = tls_stream(&server).await;
    assert!(features.contains("SCRAM-SHA-256-PLUS"), "{features}");
    // gs2 flag "y": the client supports binding but believes the server does not (RFC 5802 §6).
    let mech = Scram::<Sha256>::new("juliet", "r0meo!", ChannelBinding::Unsupported).unwrap();
    let failure = sasl_exchange(&mut c, "SCRAM-SHA-256", Box::new(mech))
        .await
        .expect_err("downgrade must fail");
    assert!(failure.ends_with(NOT_AUTHORIZED), "{failure}");
    let mech = Scram::<Sha1>::new("juliet", "r0meo!", ChannelBinding::Unsupported).unwrap();
    let failure = sasl_exchange(&mut c, "SCRAM-SHA-1", Box::new(mech))
        .await
        .expect_err("downgrade must fail");
    assert!(failure.ends_with(NOT_AUTHORIZED), "{failure}");

    // Where -PLUS is not offered (no TLS, encryption optional), "y" is legitimate.
    let server = TestServer::start_with(Options {
        require_encryption: false,
        ..Default::default()
    });
    server.add_user("juliet", "r0meo!");
    let mut c = Raw::connect(server.c2s).await;
    let features = c.open().await;
    assert!(!features.contains("-PLUS"), "{features}");
    let mech = Scram::<Sha256>::new("juliet", "r0meo!", ChannelBinding::Unsupported).unwrap();
    sasl_exchange(&mut c, "SCRAM-SHA-256", Box::new(mech))
        .await
        .expect("'y' without a -PLUS offer is no downgrade");
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_slowed_down() {
    let server = TestServer::start_with(Options {
        failure_delay_ms: 200,
        ..Default::default()
    });
    server.add_user("juliet", "r0meo!");
    let mut times = Vec::new();
    for _ in 0..3 {
        // A fresh connection each time: the slow-down is per address, not per stream.
        let (mut c, _) = tls_stream(&server).await;
        let start = Instant::now();
        let failure = plain_attempt(&mut c, b"\0juliet\0wrong")
            .await
            .expect_err("wrong password");
        times.push(start.elapsed());
        assert!(failure.ends_with(NOT_AUTHORIZED), "{failure}");
    }
    assert!(
        times[0] < Duration::from_millis(450),
        "the first failure is answered promptly: {times:?}"
    );
    assert!(
        times[2] >= Duration::from_millis(600),
        "the third consecutive failure is slowed down: {times:?}"
    );
    // The right password still gets in.
    assert_login_works(&server, "SCRAM-SHA-256", "juliet", "r0meo!").await;
}

#[tokio::test]
async fn too_many_failures_on_one_stream_end_it() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    let (mut c, _) = tls_stream(&server).await;
    for _ in 0..3 {
        let failure = c
            .authenticate("SCRAM-SHA-256", "juliet", "wrong")
            .await
            .expect_err("wrong password");
        assert!(failure.ends_with(NOT_AUTHORIZED), "{failure}");
    }
    let rest = c.expect_closed().await;
    assert!(
        rest.contains(
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        ),
        "RFC 6120 §6.4.5: {rest}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Messages between local sessions

#[tokio::test]
async fn message_to_a_full_jid_arrives_with_the_senders_full_jid() {
    let server = TestServer::start();
    server.add_user("alice", "alice-pw");
    server.add_user("bob", "bob-pw");
    let (mut alice, alice_jid) = online(&server, "alice", "alice-pw", "phone").await;
    let (mut bob, bob_jid) = online(&server, "bob", "bob-pw", "desk").await;
    // A client may give its own bare JID as 'from'; the server stamps the full JID.
    alice
        .send(&format!(
            "<message from='alice@localhost' to='{bob_jid}' id='m1' type='chat'><body>hi bob</body></message>"
        ))
        .await;
    let got = stanza(&mut bob, "message", "m1").await;
    let head = start_tag(&got, "message").unwrap();
    assert!(head.contains(&format!("from='{alice_jid}'")), "{got}");
    assert!(head.contains(&format!("to='{bob_jid}'")), "{got}");
    assert!(head.contains("type='chat'"), "{got}");
    assert!(got.contains("<body>hi bob</body>"), "{got}");
    let nothing = alice.drain(Duration::from_millis(300)).await;
    assert!(nothing.is_empty(), "no error for the sender: {nothing}");
}

#[tokio::test]
async fn message_without_from_is_stamped_with_the_senders_full_jid() {
    let server = TestServer::start();
    server.add_user("alice", "alice-pw");
    server.add_user("bob", "bob-pw");
    let (mut alice, alice_jid) = online(&server, "alice", "alice-pw", "phone").await;
    let (mut bob, bob_jid) = online(&server, "bob", "bob-pw", "desk").await;
    alice
        .send(&format!(
            "<message to='{bob_jid}' id='m2'><body>no from</body></message>"
        ))
        .await;
    let got = stanza(&mut bob, "message", "m2").await;
    assert!(
        start_tag(&got, "message")
            .unwrap()
            .contains(&format!("from='{alice_jid}'")),
        "RFC 6120 §8.1.2.1: {got}"
    );
    assert!(got.contains("<body>no from</body>"), "{got}");
}

#[tokio::test]
async fn message_to_a_bare_jid_reaches_the_online_resource() {
    let server = TestServer::start();
    server.add_user("alice", "alice-pw");
    server.add_user("bob", "bob-pw");
    let (mut alice, alice_jid) = online(&server, "alice", "alice-pw", "phone").await;
    let (mut bob, _) = online(&server, "bob", "bob-pw", "desk").await;
    // Initial presence, so the resource counts as available once presence is implemented.
    bob.send("<presence/>").await;
    assert_ping(&mut bob, "after-presence").await;
    alice
        .send("<message to='bob@localhost' id='m3' type='chat'><body>to your account</body></message>")
        .await;
    let got = stanza(&mut bob, "message", "m3").await;
    assert!(got.contains(&format!("from='{alice_jid}'")), "{got}");
    assert!(got.contains("<body>to your account</body>"), "{got}");

    // A message to an offline resource of an online account goes to the account (RFC 6121 §8.5.3.2.1).
    alice
        .send("<message to='bob@localhost/nowhere' id='m4' type='chat'><body>wrong resource</body></message>")
        .await;
    let got = stanza(&mut bob, "message", "m4").await;
    assert!(got.contains("<body>wrong resource</body>"), "{got}");
    let nothing = alice.drain(Duration::from_millis(300)).await;
    assert!(nothing.is_empty(), "no error for the sender: {nothing}");
}

#[tokio::test]
async fn message_to_an_unknown_user_is_service_unavailable() {
    let server = TestServer::start();
    server.add_user("alice", "alice-pw");
    let (mut alice, alice_jid) = online(&server, "alice", "alice-pw", "phone").await;
    for (id, to) in [("m5", "nobody@localhost"), ("m6", "nobody@localhost/res")] {
        alice
            .send(&format!(
                "<message to='{to}' id='{id}' type='chat'><body>anyone?</body></message>"
            ))
            .await;
        let reply = stanza(&mut alice, "message", id).await;
        assert_error(&reply, "service-unavailable", Some("cancel"));
        let head = start_tag(&reply, "message").unwrap();
        assert!(head.contains(&format!("from='{to}'")), "{reply}");
        assert!(head.contains(&format!("to='{alice_jid}'")), "{reply}");
    }
    // An error is never answered with another error (RFC 6120 §8.3.1).
    alice
        .send(&format!(
            "<message to='nobody@localhost' id='m9' type='error'><error type='cancel'><item-not-found xmlns='{STANZAS_NS}'/></error></message>"
        ))
        .await;
    let nothing = alice.drain(Duration::from_millis(500)).await;
    assert!(nothing.is_empty(), "an error bounced: {nothing}");
    assert_ping(&mut alice, "after-error").await;
}

#[tokio::test]
async fn message_to_another_domain_is_remote_server_not_found() {
    let server = TestServer::start();
    server.add_user("alice", "alice-pw");
    let (mut alice, _) = online(&server, "alice", "alice-pw", "phone").await;
    alice
        .send("<message to='x@example.net' id='m7' type='chat'><body>far away</body></message>")
        .await;
    let reply = stanza(&mut alice, "message", "m7").await;
    assert_error(&reply, "remote-server-not-found", Some("cancel"));
    assert!(
        start_tag(&reply, "message")
            .unwrap()
            .contains("from='x@example.net'"),
        "{reply}"
    );
    assert_ping(&mut alice, "after-remote").await;
}

#[tokio::test]
async fn spoofed_from_ends_the_stream_with_invalid_from() {
    let server = TestServer::start();
    server.add_user("alice", "alice-pw");
    server.add_user("bob", "bob-pw");
    let (mut alice, _) = online(&server, "alice", "alice-pw", "phone").await;
    let (mut bob, _) = online(&server, "bob", "bob-pw", "desk").await;
    alice
        .send("<message from='carol@localhost/x' to='bob@localhost/desk' id='m8'><body>it is me, carol</body></message>")
        .await;
    let rest = alice.expect_closed().await;
    assert!(
        rest.contains("<stream:error><invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "RFC 6120 §4.9.3.9: {rest}"
    );
    let nothing = bob.drain(Duration::from_millis(300)).await;
    assert!(
        !nothing.contains("carol"),
        "the forged message was delivered: {nothing}"
    );
}

/// A client that sends far more requests than its session's queue holds, and starts reading only
/// later, gets every answer once, in order: while a handler waits for room in the client's own
/// queue the session keeps writing (reading, handling and writing share one task), and
/// back-pressure reaches the client's socket instead of losing or reordering anything.
#[tokio::test]
async fn pipelined_requests_beyond_the_session_queue_are_all_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Disco answers are over a kilobyte: a few thousand fill the socket buffers, then the queue.
    const REQUESTS: usize = 12_000;
    const DISCO: &str = "<query xmlns='http://jabber.org/protocol/disco#info'/>";
    let server = TestServer::start();
    server.add_user("piper", "pipes!");
    let (c, _) = online(&server, "piper", "pipes!", "pipe").await;
    let (io, mut received) = c.into_io();
    let (mut read, mut write) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        let mut requests = String::new();
        for i in 0..REQUESTS {
            requests.push_str(&format!(
                "<iq type='get' id='p{i}' to='localhost'>{DISCO}</iq>"
            ));
        }
        write.write_all(requests.as_bytes()).await.expect("send");
        write.flush().await.expect("flush");
        write
    });
    // Not reading for a while: the answers fill the socket, the writer stalls, the queue fills.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut next = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(120);
    while next < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "only {next} of {REQUESTS} answers"
        );
        let n = tokio::time::timeout(Duration::from_secs(30), read.read(&mut buf))
            .await
            .expect("answers keep coming")
            .expect("read");
        assert!(n > 0, "connection closed after {next} answers: {received}");
        received.push_str(std::str::from_utf8(&buf[..n]).expect("utf-8"));
        // Consume every complete answer at the front, checking its id.
        while let Some(end) = received.find("</iq>") {
            let answer: String = received.drain(..end + 5).collect();
            assert!(
                answer.contains(&format!("id='p{next}'")) && answer.contains("type='result'"),
                "answer {next} out of order or not a result: {answer}"
            );
            next += 1;
        }
    }
    let _write = writer.await.expect("writer");
}
