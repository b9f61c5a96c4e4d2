//! Logging in: STARTTLS and direct TLS, every SASL mechanism, resource binding, and a real client
//! library (tokio-xmpp) end to end.

mod common;

use common::*;

#[tokio::test]
async fn every_mechanism_over_starttls_and_direct_tls() {
    let server = TestServer::start();
    server.add_user("juliet", "r0meo!");
    for mechanism in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        let mut c = Raw::connect(server.c2s).await;
        let features = c.starttls().await;
        assert!(
            features.contains(&format!("<mechanism>{mechanism}</mechanism>")),
            "{mechanism} not offered: {features}"
        );
        let jid = c
            .login(mechanism, "juliet", "r0meo!", Some("balcony"))
            .await;
        assert_eq!(jid, "juliet@localhost/balcony", "{mechanism} over STARTTLS");

        let mut c = Raw::connect_direct_tls(server.direct_tls).await;
        let features = c.open().await;
        assert!(
            !features.contains("xmpp-tls"),
            "STARTTLS offered on a TLS stream: {features}"
        );
        let jid = c.login(mechanism, "juliet", "r0meo!", None).await;
        assert!(
            jid.starts_with("juliet@localhost/"),
            "{mechanism} over direct TLS: {jid}"
        );
    }
}

#[tokio::test]
async fn tokio_xmpp_client_logs_in_and_pings() {
    use futures::StreamExt;
    use tokio_xmpp::{Client, Event};
    let server = TestServer::start();
    server.add_user("romeo", "wherefore");
    let jid = jid::BareJid::new("romeo@localhost").unwrap();
    let mut client = Client::new_starttls(
        jid,
        "wherefore".to_string(),
        tokio_xmpp::connect::DnsConfig::addr(&server.c2s.to_string()),
        tokio_xmpp::xmlstream::Timeouts::default(),
    );
    let bound = loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("event in time")
        {
            Some(Event::Online { bound_jid, .. }) => break bound_jid,
            Some(Event::Disconnected(e)) => panic!("disconnected: {e:?}"),
            Some(_) => {}
            None => panic!("client ended"),
        }
    };
    assert_eq!(bound.to_bare().as_str(), "romeo@localhost");
    // tokio-xmpp prefers SCRAM-SHA-256-PLUS with tls-exporter when offered: the server log shows it.
    let authenticated = |l: &str| {
        l.contains("authenticated")
            && l.contains("SCRAM-SHA-256-PLUS")
            && l.contains("romeo@localhost")
    };
    let log = server.log_with(authenticated).await;
    assert!(log.lines().any(authenticated), "{log}");
    // A ping through the library's typed stanzas comes back as a result with the same id.
    let ping = xmpp_parsers::iq::Iq::from_get("ping-1", xmpp_parsers::ping::Ping)
        .with_to(jid::Jid::new("localhost").unwrap());
    client.send_stanza(ping.into()).await.expect("send ping");
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("answer in time")
        {
            Some(Event::Stanza(tokio_xmpp::Stanza::Iq(xmpp_parsers::iq::Iq::Result {
                id,
                from,
                ..
            }))) if id == "ping-1" => {
                assert_eq!(from.map(|j| j.to_string()).as_deref(), Some("localhost"));
                break;
            }
            Some(Event::Stanza(tokio_xmpp::Stanza::Iq(other))) => {
                panic!("unexpected iq: {other:?}")
            }
            Some(Event::Disconnected(e)) => panic!("disconnected: {e:?}"),
            Some(_) => {}
            None => panic!("client ended"),
        }
    }
}
