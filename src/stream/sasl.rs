//! The SASL exchange on the stream (RFC 6120 §6): `<auth/>`, challenges and responses, then
//! `<success/>` or `<failure/>`. Mechanism logic lives in `auth`; this file does the framing, the
//! retry limit and the slow-down after failures.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use jid::BareJid;
use minidom::Element;

use super::{Negotiation, Stop};
use crate::auth::scram::{ClientFirst, ScramServer, UnknownUser};
use crate::auth::{parse_plain, Mechanism, SaslFailure};
use crate::error::{StreamError, StreamErrorCondition};
use crate::xml::{ns, XmlEvent};

/// Runs one SASL exchange. `Ok(Some(user))` on success, `Ok(None)` after a `<failure/>` (the client
/// may try again), `Err` when the stream must end.
pub(super) async fn authenticate(
    n: &mut Negotiation,
    auth: Element,
) -> Result<Option<BareJid>, Stop> {
    let offered = Mechanism::offered(
        n.tls,
        n.channel_binding.is_some(),
        n.state.config.c2s.require_encryption,
    );
    let mechanism = auth
        .attr("mechanism")
        .and_then(Mechanism::from_name)
        .filter(|m| offered.contains(m));
    let Some(mechanism) = mechanism else {
        return fail(n, SaslFailure::InvalidMechanism).await;
    };
    let initial = match decode(&auth.text()) {
        Ok(data) => data,
        Err(failure) => return fail(n, failure).await,
    };
    let outcome = match mechanism.scram_hash() {
        None => plain(n, initial).await?,
        Some(_) => scram(n, mechanism, initial, offered.iter().any(|m| m.is_plus())).await?,
    };
    match outcome {
        Ok((user, additional)) => {
            n.state.throttle.success(n.peer.ip());
            tracing::info!(peer = %n.peer, user = %user, mechanism = mechanism.name(), "authenticated");
            let mut out = String::from("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
            if let Some(data) = additional {
                out.push_str(&B64.encode(data));
            }
            out.push_str("</success>");
            n.send(out.as_bytes()).await?;
            Ok(Some(user))
        }
        Err(failure) => fail(n, failure).await,
    }
}

type Outcome = Result<(BareJid, Option<Vec<u8>>), SaslFailure>;

/// RFC 4616 PLAIN, checked against the Argon2id hash.
async fn plain(n: &mut Negotiation, initial: Vec<u8>) -> Result<Outcome, Stop> {
    let message = if initial.is_empty() {
        match challenge(n, b"").await? {
            Ok(data) => data,
            Err(failure) => return Ok(Err(failure)),
        }
    } else {
        initial
    };
    let (authzid, username, password) = match parse_plain(&message) {
        Ok(parts) => parts,
        Err(failure) => return Ok(Err(failure)),
    };
    let Some(jid) = n.state.accounts.jid_for_username(&username) else {
        return Ok(Err(SaslFailure::NotAuthorized));
    };
    if let Err(failure) = check_authzid(authzid.as_deref(), &jid) {
        return Ok(Err(failure));
    }
    match n.state.accounts.verify_plain(&jid, &password).await {
        Ok(true) => Ok(Ok((jid, None))),
        Ok(false) => Ok(Err(SaslFailure::NotAuthorized)),
        Err(err) => {
            tracing::error!(error = %err, "account lookup failed during PLAIN");
            Ok(Err(SaslFailure::TemporaryAuthFailure))
        }
    }
}

/// RFC 5802 SCRAM, with RFC 9266 channel binding for -PLUS.
async fn scram(
    n: &mut Negotiation,
    mechanism: Mechanism,
    initial: Vec<u8>,
    binding_offered: bool,
) -> Result<Outcome, Stop> {
    let Some(hash) = mechanism.scram_hash() else {
        return Ok(Err(SaslFailure::InvalidMechanism));
    };
    let first_message = if initial.is_empty() {
        match challenge(n, b"").await? {
            Ok(data) => data,
            Err(failure) => return Ok(Err(failure)),
        }
    } else {
        initial
    };
    let first = match ClientFirst::parse(&first_message) {
        Ok(first) => first,
        Err(failure) => return Ok(Err(failure)),
    };
    let jid = n.state.accounts.jid_for_username(&first.username);
    if let Some(jid) = &jid {
        if let Err(failure) = check_authzid(first.authzid(), jid) {
            return Ok(Err(failure));
        }
    }
    let verifier = match &jid {
        Some(jid) => match n.state.accounts.scram_verifier(jid, hash) {
            Ok(v) => v,
            Err(err) => {
                tracing::error!(error = %err, "account lookup failed during SCRAM");
                return Ok(Err(SaslFailure::TemporaryAuthFailure));
            }
        },
        None => None,
    };
    let unknown = UnknownUser {
        secret: n.state.accounts.secret(),
        iterations: n.state.config.auth.scram_iterations,
    };
    let (server, server_first) = match ScramServer::new(
        hash,
        mechanism.is_plus(),
        binding_offered,
        first,
        verifier,
        unknown,
    ) {
        Ok(pair) => pair,
        Err(failure) => return Ok(Err(failure)),
    };
    let final_message = match challenge(n, &server_first).await? {
        Ok(data) => data,
        Err(failure) => return Ok(Err(failure)),
    };
    let binding = n.channel_binding.clone();
    match (server.finish(&final_message, binding.as_deref()), jid) {
        (Ok(server_final), Some(jid)) => Ok(Ok((jid, Some(server_final)))),
        (Ok(_), None) => Ok(Err(SaslFailure::NotAuthorized)),
        (Err(failure), _) => Ok(Err(failure)),
    }
}

/// RFC 6120 §6.4.6: an authorization identity other than the user's own bare JID is refused.
fn check_authzid(authzid: Option<&str>, jid: &BareJid) -> Result<(), SaslFailure> {
    match authzid {
        None => Ok(()),
        Some(a) if BareJid::new(a).ok().as_ref() == Some(jid) => Ok(()),
        Some(_) => Err(SaslFailure::InvalidAuthzid),
    }
}

/// Sends a challenge and reads the response; `Err(Aborted)` if the client aborts.
async fn challenge(n: &mut Negotiation, data: &[u8]) -> Result<Result<Vec<u8>, SaslFailure>, Stop> {
    let text = if data.is_empty() {
        "=".to_string()
    } else {
        B64.encode(data)
    };
    let out = format!("<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{text}</challenge>");
    n.send(out.as_bytes()).await?;
    let el = match n.read().await? {
        XmlEvent::Element(el) => el,
        XmlEvent::StreamClose => return Err(Stop::Closed),
        XmlEvent::StreamOpen(_) => {
            return Err(StreamError::new(StreamErrorCondition::BadFormat).into())
        }
    };
    if el.is("abort", ns::SASL) {
        return Ok(Err(SaslFailure::Aborted));
    }
    if !el.is("response", ns::SASL) {
        // Not SASL: a stanza before authentication, or something else out of place (RFC 6120 §4.9.3).
        return Err(n.refuse_before_auth(&el).into());
    }
    Ok(decode(&el.text()))
}

/// SASL payloads are base64; "=" or nothing means empty (RFC 6120 §6.4.2).
fn decode(text: &str) -> Result<Vec<u8>, SaslFailure> {
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(Vec::new());
    }
    B64.decode(text).map_err(|_| SaslFailure::IncorrectEncoding)
}

/// Reports a failure: slowed down per address for wrong credentials, and the stream closed with
/// `<policy-violation/>` once the retry limit is reached (RFC 6120 §6.4.5).
async fn fail(n: &mut Negotiation, failure: SaslFailure) -> Result<Option<BareJid>, Stop> {
    if failure.is_credential_failure() {
        let delay = n.state.throttle.failure(n.peer.ip());
        tracing::info!(peer = %n.peer, condition = failure.name(), "authentication failed");
        tokio::time::sleep(delay).await;
    }
    n.send(&failure.to_bytes()).await?;
    if failure != SaslFailure::Aborted {
        n.auth_failures += 1;
    }
    if n.auth_failures >= n.state.config.c2s.max_auth_attempts {
        return Err(StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "too many failed authentication attempts",
        )
        .into());
    }
    Ok(None)
}
