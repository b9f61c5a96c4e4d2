//! A stanza client for tests: a logged-in connection that splits what it receives into top-level
//! stanzas, parses them with minidom and waits for them by predicate, plus the small helpers the
//! tests built on it share.

use std::collections::VecDeque;
use std::time::Duration;

use minidom::Element;

use super::{logged_in, Raw, TestServer, DOMAIN};

pub const CLIENT: &str = "jabber:client";
pub const ROSTER: &str = "jabber:iq:roster";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const STREAMS: &str = "http://etherx.jabber.org/streams";
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const SM: &str = "urn:xmpp:sm:3";
/// How long "nothing arrives" checks listen.
pub const QUIET: Duration = Duration::from_millis(400);
/// How long a client listens for stragglers before forgetting what it received.
pub const SETTLE: Duration = Duration::from_millis(200);
/// How long a client waits for a stanza it expects, unless its `wait_limit` is changed.
pub const DEFAULT_WAIT_LIMIT: Duration = Duration::from_secs(5);

pub fn bare(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

pub fn full(user: &str, resource: &str) -> String {
    format!("{user}@{DOMAIN}/{resource}")
}

/// A server with these accounts, all with this password.
pub fn server_with_users(users: &[&str], password: &str) -> TestServer {
    let server = TestServer::start();
    for user in users {
        server.add_user(user, password);
    }
    server
}

/// A received stanza, with its arrival number on its connection.
pub struct Got {
    pub seq: u64,
    pub text: String,
    pub el: Element,
}

/// A logged-in client that keeps what it received as a queue of parsed stanzas.
pub struct Client {
    pub raw: Raw,
    /// Full JID.
    pub jid: String,
    /// Bare JID.
    pub bare: String,
    pub buf: String,
    pub queue: VecDeque<Got>,
    pub received: u64,
    pub closed: bool,
    pub ids: u32,
    /// How long `wait` and `wait_seq` wait for a stanza that is expected.
    pub wait_limit: Duration,
}

/// The index just past the `>` that ends the tag starting at `lt` (quotes respected).
pub fn tag_end(bytes: &[u8], lt: usize) -> Option<usize> {
    let mut quote = None;
    for (i, &c) in bytes.iter().enumerate().skip(lt + 1) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c == b'>' => return Some(i + 1),
            None => {}
        }
    }
    None
}

/// Takes the complete top-level elements off the front of `buf` (the stream header, declarations
/// and whitespace are skipped; `</stream:stream>` comes out as itself).
pub fn split_stanzas(buf: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut pos = 0;
    let mut depth = 0usize;
    let mut start = 0;
    while let Some(lt) = buf[pos..].find('<').map(|p| p + pos) {
        let Some(end) = tag_end(buf.as_bytes(), lt) else {
            break;
        };
        let tag = &buf[lt..end];
        pos = end;
        if tag.starts_with("<?") || tag.starts_with("<!") {
            if depth == 0 {
                consumed = pos;
            }
            continue;
        }
        if depth == 0 && tag.starts_with("<stream:stream") {
            consumed = pos;
            continue;
        }
        if depth == 0 && tag.starts_with("</stream:stream") {
            out.push(tag.to_string());
            consumed = pos;
            continue;
        }
        if tag.starts_with("</") {
            depth = depth.saturating_sub(1);
        } else {
            if depth == 0 {
                start = lt;
            }
            if !tag.ends_with("/>") {
                depth += 1;
            }
        }
        if depth == 0 {
            out.push(buf[start..pos].to_string());
            consumed = pos;
        }
    }
    buf.drain(..consumed);
    out
}

/// Parses one received top-level element; `</stream:stream>` becomes `<closed xmlns='test'/>`.
pub fn parse_stanza(text: &str) -> Element {
    if text.starts_with("</stream:stream") {
        return Element::bare("closed", "test");
    }
    let fixed = if text.starts_with("<stream:") {
        let name_end = text.find([' ', '>', '/']).unwrap_or(text.len());
        format!(
            "{} xmlns:stream='{STREAMS}'{}",
            &text[..name_end],
            &text[name_end..]
        )
    } else {
        text.to_string()
    };
    fixed
        .parse::<Element>()
        .unwrap_or_else(|e| panic!("received unparsable stanza {text:?}: {e}"))
}

impl Client {
    /// Wraps a raw connection bound to `jid`.
    pub fn from_raw(raw: Raw, jid: &str) -> Client {
        let bare = jid.split('/').next().unwrap_or(jid).to_string();
        Client {
            raw,
            jid: jid.to_string(),
            bare,
            buf: String::new(),
            queue: VecDeque::new(),
            received: 0,
            closed: false,
            ids: 0,
            wait_limit: DEFAULT_WAIT_LIMIT,
        }
    }

    /// Logged in with `password` and bound, nothing else (not interested, not available).
    pub async fn bound_with(
        server: &TestServer,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Client {
        let (raw, jid) = logged_in(server, user, password, resource).await;
        assert_eq!(jid, full(user, resource), "bound JID");
        Client::from_raw(raw, &jid)
    }

    pub fn next_id(&mut self, prefix: &str) -> String {
        self.ids += 1;
        format!("{prefix}-{}", self.ids)
    }

    pub async fn send(&mut self, text: &str) {
        self.raw.send(text).await;
    }

    /// Reads once (until the next `>` or `until`); false when nothing more can come before then.
    pub async fn read_some(&mut self, until: tokio::time::Instant) -> bool {
        if self.closed {
            return false;
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let more = match self.raw.try_expect(">", left).await {
            Ok(text) => {
                self.buf.push_str(&text);
                true
            }
            Err(text) => {
                self.buf.push_str(&text);
                if tokio::time::Instant::now() < until {
                    self.closed = true;
                }
                false
            }
        };
        for text in split_stanzas(&mut self.buf) {
            let el = parse_stanza(&text);
            // XEP-0198 ack requests are not stanzas (this client never acknowledges).
            if el.is("r", SM) {
                continue;
            }
            self.received += 1;
            self.queue.push_back(Got {
                seq: self.received,
                text,
                el,
            });
        }
        more
    }

    pub fn dump(&self) -> String {
        self.queue
            .iter()
            .map(|g| format!("  #{} {}", g.seq, g.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (up to `wait_limit`) for the first stanza matching `pred`, removes it from the queue
    /// and returns it with its arrival number. Stanzas that do not match stay queued.
    pub async fn wait_seq(
        &mut self,
        what: &str,
        pred: impl Fn(&Element) -> bool,
    ) -> (u64, Element) {
        let until = tokio::time::Instant::now() + self.wait_limit;
        loop {
            if let Some(i) = self.queue.iter().position(|g| pred(&g.el)) {
                let got = self.queue.remove(i).unwrap();
                return (got.seq, got.el);
            }
            if self.closed || tokio::time::Instant::now() >= until {
                panic!(
                    "{}: expected {what}; {}; queued:\n{}\nunparsed: {:?}",
                    self.jid,
                    if self.closed {
                        "connection closed"
                    } else {
                        "timed out"
                    },
                    self.dump(),
                    self.buf
                );
            }
            self.read_some(until).await;
        }
    }

    pub async fn wait(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        self.wait_seq(what, pred).await.1
    }

    /// Listens for `wait`, queueing whatever arrives.
    pub async fn settle_for(&mut self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < until && !self.closed {
            self.read_some(until).await;
        }
    }

    /// Listens for `QUIET`, queueing whatever arrives.
    pub async fn settle(&mut self) {
        self.settle_for(QUIET).await;
    }

    /// Listens for `QUIET` and asserts that nothing queued matches `pred`.
    pub async fn none(&mut self, what: &str, pred: impl Fn(&Element) -> bool) {
        self.settle().await;
        if self.queue.iter().any(|g| pred(&g.el)) {
            panic!("{}: expected no {what}; queued:\n{}", self.jid, self.dump());
        }
    }

    /// Listens for `wait` and asserts that nothing at all was received.
    pub async fn nothing_for(&mut self, wait: Duration, context: &str) {
        self.settle_for(wait).await;
        assert!(
            self.queue.is_empty(),
            "{}: expected nothing ({context}); queued:\n{}",
            self.jid,
            self.dump()
        );
    }

    /// Listens for `QUIET` and asserts that nothing at all was received.
    pub async fn nothing(&mut self, context: &str) {
        self.nothing_for(QUIET, context).await;
    }

    /// How many queued stanzas match `pred`, after listening for `QUIET`.
    pub async fn count(&mut self, pred: impl Fn(&Element) -> bool) -> usize {
        self.settle().await;
        self.queue.iter().filter(|g| pred(&g.el)).count()
    }

    /// Removes and returns, in arrival order, every queued stanza matching `pred` (no waiting).
    pub fn take(&mut self, pred: impl Fn(&Element) -> bool) -> Vec<Element> {
        let (taken, kept): (VecDeque<Got>, VecDeque<Got>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|g| pred(&g.el));
        self.queue = kept;
        taken.into_iter().map(|g| g.el).collect()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    /// Listens briefly (`SETTLE`, for stragglers of a step already seen through), then forgets
    /// everything received.
    pub async fn settle_and_clear(&mut self) {
        self.settle_for(SETTLE).await;
        self.clear();
    }

    /// Sends an iq and returns the result or error with the same id.
    pub async fn iq(&mut self, kind: &str, to: Option<&str>, payload: &str) -> Element {
        let id = self.next_id("iq");
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send(&format!("<iq type='{kind}' id='{id}'{to}>{payload}</iq>"))
            .await;
        self.wait(&format!("the answer to iq {id}"), |el| {
            el.name() == "iq"
                && el.attr("id") == Some(id.as_str())
                && matches!(el.attr("type"), Some("result" | "error"))
        })
        .await
    }

    /// A roster get (makes the resource interested); returns the `<query/>`.
    pub async fn roster_get(&mut self) -> Element {
        let reply = self
            .iq("get", None, &format!("<query xmlns='{ROSTER}'/>"))
            .await;
        assert_result(&reply);
        reply
            .get_child("query", ROSTER)
            .unwrap_or_else(|| panic!("roster result without <query/>: {}", show(&reply)))
            .clone()
    }

    /// Sends available presence with this status (and priority, if any) and waits for its echo,
    /// which it returns.
    pub async fn online_with(&mut self, status: &str, priority: Option<i8>) -> Element {
        let priority = priority
            .map(|p| format!("<priority>{p}</priority>"))
            .unwrap_or_default();
        self.send(&format!(
            "<presence><status>{status}</status>{priority}</presence>"
        ))
        .await;
        let jid = self.jid.clone();
        self.wait("the echo of my own presence", |el| {
            available(el, &jid) && status_of(el).as_deref() == Some(status)
        })
        .await
    }

    /// A round trip to the server (everything sent before it has been processed).
    pub async fn ping(&mut self) -> u64 {
        let id = self.next_id("ping");
        self.send(&format!(
            "<iq type='get' id='{id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let (seq, reply) = self
            .wait_seq("the pong", |el| {
                el.name() == "iq" && el.attr("id") == Some(id.as_str())
            })
            .await;
        assert_result(&reply);
        seq
    }

    /// Sends a chat message with a body.
    pub async fn chat(&mut self, to: &str, body: &str) {
        let id = self.next_id("msg");
        self.send(&format!(
            "<message to='{to}' type='chat' id='{id}'><body>{body}</body></message>"
        ))
        .await;
    }

    /// Waits for a message whose body is `body`.
    pub async fn wait_body(&mut self, body: &str) -> Element {
        self.wait_body_seq(body).await.1
    }

    pub async fn wait_body_seq(&mut self, body: &str) -> (u64, Element) {
        self.wait_seq(&format!("a message with body {body:?}"), |el| {
            el.name() == "message" && body_of(el).as_deref() == Some(body)
        })
        .await
    }

    /// Sends a raw iq answer (result) to an iq request that arrived.
    pub async fn answer(&mut self, request: &Element) {
        let id = request.attr("id").unwrap_or_default().to_string();
        let to = request.attr("from").unwrap_or_default().to_string();
        self.send(&format!("<iq type='result' id='{id}' to='{to}'/>"))
            .await;
    }
}

pub fn show(el: &Element) -> String {
    let mut out = Vec::new();
    let _ = el.write_to(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn status_of(el: &Element) -> Option<String> {
    el.get_child("status", CLIENT).map(|s| s.text())
}

pub fn show_of(el: &Element) -> Option<String> {
    el.get_child("show", CLIENT).map(|s| s.text())
}

pub fn body_of(el: &Element) -> Option<String> {
    el.get_child("body", CLIENT).map(|b| b.text())
}

/// Presence of this type (None = available) from exactly this JID.
pub fn presence_is(el: &Element, kind: Option<&str>, from: &str) -> bool {
    el.name() == "presence" && el.attr("type") == kind && el.attr("from") == Some(from)
}

pub fn available(el: &Element, from: &str) -> bool {
    presence_is(el, None, from)
}

pub fn unavailable(el: &Element, from: &str) -> bool {
    presence_is(el, Some("unavailable"), from)
}

/// Any presence whose `from` is this JID or a full JID of this bare JID.
pub fn presence_from_account(el: &Element, bare: &str) -> bool {
    el.name() == "presence"
        && el
            .attr("from")
            .is_some_and(|f| f == bare || f.starts_with(&format!("{bare}/")))
}

pub fn assert_result(reply: &Element) {
    assert_eq!(
        reply.attr("type"),
        Some("result"),
        "expected a result: {}",
        show(reply)
    );
}

/// An error reply's defined condition and its application-specific condition in `app_ns`
/// (RFC 6120 §8.3.2), if any; panics when `reply` is not an error.
pub fn error_parts(reply: &Element, app_ns: &str) -> (String, Option<Element>) {
    assert_eq!(reply.attr("type"), Some("error"), "{}", show(reply));
    let condition = super::muc::error_condition(reply).unwrap_or_default();
    let specific = reply
        .get_child("error", CLIENT)
        .and_then(|error| error.children().find(|c| c.ns() == app_ns).cloned());
    (condition, specific)
}

/// Asserts a stanza error with this defined condition.
pub fn assert_error(reply: &Element, condition: &str) {
    let text = show(reply);
    assert_eq!(
        reply.attr("type"),
        Some("error"),
        "expected an error: {text}"
    );
    let error = reply
        .get_child("error", CLIENT)
        .unwrap_or_else(|| panic!("no <error/>: {text}"));
    assert!(
        error.has_child(condition, STANZAS),
        "expected <{condition}/>: {text}"
    );
}

/// `a` subscribes to `b` and `b` approves; waits until both sides saw it all, then clears both
/// queues. Both clients must be interested and available.
pub async fn subscribe_to(a: &mut Client, b: &mut Client) {
    let (a_bare, b_bare) = (a.bare.clone(), b.bare.clone());
    a.send(&format!("<presence type='subscribe' to='{b_bare}'/>"))
        .await;
    b.wait("a subscription request", |el| {
        presence_is(el, Some("subscribe"), &a_bare)
    })
    .await;
    b.send(&format!("<presence type='subscribed' to='{a_bare}'/>"))
        .await;
    a.wait("the approval", |el| {
        presence_is(el, Some("subscribed"), &b_bare)
    })
    .await;
    // The approval's last effect: the contact's presence reaches the subscriber.
    let b_jid = b.jid.clone();
    a.wait("the contact's presence after approval", |el| {
        available(el, &b_jid)
    })
    .await;
    a.settle_and_clear().await;
    b.settle_and_clear().await;
}

/// Subscriptions both ways between `a` and `b`.
pub async fn mutual(a: &mut Client, b: &mut Client) {
    subscribe_to(a, b).await;
    subscribe_to(b, a).await;
}
