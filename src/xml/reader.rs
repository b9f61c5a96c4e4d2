//! Streaming XML framing for an XMPP stream: the stream header, then one element per top-level child.
//!
//! quick-xml tokenizes; this module builds `minidom::Element`s and enforces what quick-xml does not
//! (measured in `shared/design/CRATES.md` §3): a byte cap per top-level element applied *below* the
//! tokenizer, a depth limit, and RFC 6120 §11.1's restrictions (no DTD, comments, processing
//! instructions or entities other than the predefined ones and character references).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use minidom::rxml::{Namespace, NcName};
use minidom::Element;
use quick_xml::events::Event;
use quick_xml::name::{QName, ResolveResult};
use quick_xml::NsReader;
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use super::lean::LeanBufReader as BufReader;

use super::ns;

/// Read buffer per connection while it reads (an idle connection has none, see `lean`).
const READ_BUFFER: usize = 4096;

/// What the reader produced.
#[derive(Debug)]
pub enum XmlEvent {
    /// The peer's `<stream:stream>` opening tag.
    StreamOpen(StreamHeader),
    /// One complete top-level element (stanza or nonza).
    Element(Element),
    /// The peer's `</stream:stream>`.
    StreamClose,
}

/// The attributes of a peer's stream header that matter (RFC 6120 §4.7).
#[derive(Debug, Clone, Default)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The default namespace declared on the header (`jabber:client` for c2s).
    pub default_ns: Option<String>,
}

/// Why the stream cannot be read any further.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0} is not allowed in XMPP (RFC 6120 §11.1)")]
    Restricted(&'static str),
    #[error("element larger than {0} bytes")]
    TooLarge(usize),
    #[error("element nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    #[error("undeclared namespace prefix: {0}")]
    BadNamespacePrefix(String),
    #[error("{0}")]
    BadFormat(&'static str),
    #[error("the stream is not UTF-8 (RFC 6120 §11.6)")]
    UnsupportedEncoding,
    #[error("read failed: {0}")]
    Io(io::Error),
    #[error("connection closed")]
    Eof,
}

/// Limits applied to each top-level element.
#[derive(Debug, Clone, Copy)]
pub struct XmlLimits {
    pub max_element_bytes: usize,
    pub max_depth: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits {
            max_element_bytes: 256 * 1024,
            max_depth: 32,
        }
    }
}

/// An `AsyncRead` that fails once more than a budget of bytes has been read since the last reset.
///
/// The budget is reset at every element boundary. It sits under the `BufReader`, so it also counts
/// bytes read ahead; the budget therefore includes one buffer's worth of slack.
pub struct CappedRead<R> {
    inner: R,
    budget: usize,
    exceeded: bool,
}

impl<R> CappedRead<R> {
    fn new(inner: R, budget: usize) -> Self {
        CappedRead {
            inner,
            budget,
            exceeded: false,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CappedRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.budget == 0 {
            self.exceeded = true;
            return Poll::Ready(Err(io::Error::other("element size limit reached")));
        }
        let allowed = buf.remaining().min(self.budget);
        let mut limited = buf.take(allowed);
        let before = limited.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, &mut limited) {
            Poll::Ready(Ok(())) => {
                let n = limited.filled().len() - before;
                // SAFETY-free: `take` handed out a prefix of `buf`'s unfilled part; mark it filled.
                buf.advance(n);
                this.budget -= n;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Reads an XMPP stream: the header first, then top-level elements, then the closing tag.
pub struct XmlReader<R> {
    reader: NsReader<BufReader<CappedRead<R>>>,
    buf: Vec<u8>,
    stack: Vec<Element>,
    limits: XmlLimits,
    header_seen: bool,
    /// Parsed something since the last `shed`.
    grown: bool,
}

impl<R: AsyncRead + Unpin> XmlReader<R> {
    pub fn new(inner: R, limits: XmlLimits) -> Self {
        let capped = CappedRead::new(inner, limits.max_element_bytes + READ_BUFFER);
        Self::over(BufReader::with_capacity(READ_BUFFER, capped), limits)
    }

    fn over(buffered: BufReader<CappedRead<R>>, limits: XmlLimits) -> Self {
        let mut reader = NsReader::from_reader(buffered);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        XmlReader {
            reader,
            buf: Vec::new(),
            stack: Vec::new(),
            limits,
            header_seen: false,
            grown: false,
        }
    }

    /// A stream restart (after STARTTLS is not one: that needs `into_parts`; after SASL success it is):
    /// a fresh parser over the same buffered bytes, expecting a new header (RFC 6120 §6.4.6).
    pub fn restart(self) -> Self {
        let limits = self.limits;
        let mut buffered = self.reader.into_inner();
        buffered.get_mut().budget = limits.max_element_bytes + READ_BUFFER;
        Self::over(buffered, limits)
    }

    /// Bytes the peer sent that were read from the socket but not parsed yet.
    pub fn has_buffered_input(&self) -> bool {
        !self.reader.get_ref().buffer().is_empty()
    }

    /// Gives back the underlying reader, dropping any buffered input (callers check
    /// `has_buffered_input` first where that matters, as before a TLS handshake).
    pub fn into_inner(self) -> R {
        self.reader.into_inner().into_inner().into_inner()
    }

    fn reset_budget(&mut self) {
        self.reader.get_mut().get_mut().budget = self.limits.max_element_bytes + READ_BUFFER;
    }

    fn map_error(&self, err: quick_xml::Error) -> XmlError {
        if self.reader_exceeded() {
            return XmlError::TooLarge(self.limits.max_element_bytes);
        }
        match err {
            quick_xml::Error::Io(e) => match e.kind() {
                io::ErrorKind::UnexpectedEof => XmlError::Eof,
                _ => XmlError::Io(io::Error::new(e.kind(), e.to_string())),
            },
            quick_xml::Error::Namespace(e) => XmlError::BadNamespacePrefix(e.to_string()),
            quick_xml::Error::Encoding(_) => XmlError::UnsupportedEncoding,
            other => XmlError::NotWellFormed(other.to_string()),
        }
    }

    fn reader_exceeded(&self) -> bool {
        self.reader.get_ref().get_ref().exceeded
    }

    /// Reads until the next complete event. Not cancel-safe once input has arrived: do not race it
    /// against other futures unless the stream is abandoned when the other future wins.
    ///
    /// Waiting for input takes a few bytes of the caller's future; the parsing state (several
    /// hundred bytes) is boxed while there is something to parse. An idle connection, which spends
    /// its life waiting here, then holds only the former.
    pub async fn next(&mut self) -> Result<XmlEvent, XmlError> {
        self.ready().await;
        Box::pin(self.parse_next()).await
    }

    /// Waits until there is input, buffered or on the socket, without consuming any (cancel-safe).
    /// Whenever the socket has nothing to read between elements, the reader gives back what it
    /// grew while parsing: an idle connection keeps no per-element memory.
    pub async fn ready(&mut self) {
        std::future::poll_fn(|cx| {
            let buffered = Pin::new(self.reader.get_mut()).poll_fill_buf(cx);
            match buffered {
                // An error is left for `next` to read and report.
                Poll::Ready(_) => Poll::Ready(()),
                Poll::Pending => {
                    self.shed();
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Frees the memory parsing grew: the event buffer, the open-element stack's capacity and the
    /// namespace resolver's spare capacity (a clone keeps only the bindings in scope).
    fn shed(&mut self) {
        if !self.grown || !self.stack.is_empty() {
            return;
        }
        self.grown = false;
        self.buf = Vec::new();
        self.stack = Vec::new();
        let compact = self.reader.resolver().clone();
        *self.reader.resolver_mut() = compact;
    }

    async fn parse_next(&mut self) -> Result<XmlEvent, XmlError> {
        self.grown = true;
        loop {
            if self.buf.capacity() > 512 {
                // One large event does not make the connection keep a large buffer.
                self.buf = Vec::new();
            }
            self.buf.clear();
            let event = match self.reader.read_event_into_async(&mut self.buf).await {
                Ok(event) => event,
                Err(err) => return Err(self.map_error(err)),
            };
            match event {
                Event::Decl(decl) => {
                    if self.header_seen || !self.stack.is_empty() {
                        return Err(XmlError::Restricted("an XML declaration inside the stream"));
                    }
                    // RFC 6120 §11.6: UTF-8 only.
                    if let Some(encoding) = decl.encoding() {
                        let utf8 = encoding.is_ok_and(|e| e.eq_ignore_ascii_case("utf-8"));
                        if !utf8 {
                            return Err(XmlError::UnsupportedEncoding);
                        }
                    }
                }
                Event::DocType(_) => {
                    return Err(XmlError::Restricted("a document type declaration"))
                }
                Event::PI(_) => return Err(XmlError::Restricted("a processing instruction")),
                Event::Comment(_) => return Err(XmlError::Restricted("a comment")),
                Event::Start(start) => {
                    if !self.header_seen {
                        let header = parse_header(&self.reader, &start)?;
                        self.header_seen = true;
                        self.reset_budget();
                        return Ok(XmlEvent::StreamOpen(header));
                    }
                    if self.stack.len() + 1 >= self.limits.max_depth {
                        return Err(XmlError::TooDeep(self.limits.max_depth));
                    }
                    let el = build_element(&self.reader, &start)?;
                    if self.stack.is_empty() && el.is("stream", ns::STREAM) {
                        // Only a stream restart may open a new stream, and that starts a new parser.
                        return Err(XmlError::BadFormat("a new stream header inside the stream"));
                    }
                    self.stack.push(el);
                }
                Event::Empty(start) => {
                    if !self.header_seen {
                        return Err(XmlError::BadFormat(
                            "the stream header must not be an empty element",
                        ));
                    }
                    if self.stack.len() + 1 >= self.limits.max_depth {
                        return Err(XmlError::TooDeep(self.limits.max_depth));
                    }
                    let el = build_element(&self.reader, &start)?;
                    match self.stack.last_mut() {
                        Some(parent) => {
                            parent.append_child(el);
                        }
                        None => {
                            self.reset_budget();
                            return Ok(XmlEvent::Element(el));
                        }
                    }
                }
                Event::End(_) => match self.stack.pop() {
                    None => return Ok(XmlEvent::StreamClose),
                    Some(el) => match self.stack.last_mut() {
                        Some(parent) => {
                            parent.append_child(el);
                        }
                        None => {
                            self.reset_budget();
                            return Ok(XmlEvent::Element(el));
                        }
                    },
                },
                Event::Text(text) => {
                    let content = text.xml10_content();
                    match self.stack.last_mut() {
                        Some(parent) => {
                            check_chars(&content)?;
                            if content.contains("]]>") {
                                // XML 1.0 §2.4: `]]>` may not appear in character data.
                                return Err(XmlError::NotWellFormed(
                                    "']]>' in character data".into(),
                                ));
                            }
                            parent.append_text(content.into_owned());
                        }
                        None if content
                            .chars()
                            .all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) =>
                        {
                            // Whitespace between stanzas: a keepalive (RFC 6120 §4.6.1).
                            self.reset_budget();
                        }
                        None => return Err(XmlError::BadFormat("text outside of any stanza")),
                    }
                }
                Event::CData(data) => {
                    let content = data.xml10_content();
                    check_chars(&content)?;
                    match self.stack.last_mut() {
                        Some(parent) => parent.append_text(content.into_owned()),
                        None => {
                            return Err(XmlError::BadFormat("character data outside of any stanza"))
                        }
                    }
                }
                Event::GeneralRef(reference) => {
                    let resolved: String = if reference.is_char_ref() {
                        match reference.resolve_char_ref() {
                            Ok(Some(c)) if is_xml_char(c) => c.to_string(),
                            _ => {
                                return Err(XmlError::NotWellFormed(format!(
                                    "bad character reference &{};",
                                    &*reference
                                )))
                            }
                        }
                    } else {
                        match quick_xml::escape::resolve_predefined_entity(&reference) {
                            Some(s) => s.to_string(),
                            None => {
                                return Err(XmlError::Restricted("an undeclared entity reference"))
                            }
                        }
                    };
                    match self.stack.last_mut() {
                        Some(parent) => parent.append_text(resolved),
                        None => return Err(XmlError::BadFormat("text outside of any stanza")),
                    }
                }
                Event::Eof => return Err(XmlError::Eof),
            }
        }
    }
}

fn attr_name(local: &str) -> Result<NcName, XmlError> {
    NcName::try_from(local)
        .map_err(|_| XmlError::NotWellFormed(format!("'{local}' is not a valid name")))
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// XML 1.0 §2.2: control characters other than tab, newline and carriage return are not allowed.
fn check_chars(text: &str) -> Result<(), XmlError> {
    if text.chars().all(is_xml_char) {
        Ok(())
    } else {
        Err(XmlError::NotWellFormed(
            "a character that XML does not allow".into(),
        ))
    }
}

/// Decodes an attribute value, with the well-formedness checks quick-xml leaves to us: no raw `<`
/// (XML 1.0 §3.1), only XML characters, and only predefined entities (others are restricted XML,
/// RFC 6120 §11.1; broken references are not well-formed).
fn attribute_value<'a>(
    attr: &quick_xml::events::attributes::Attribute<'a>,
) -> Result<std::borrow::Cow<'a, str>, XmlError> {
    if attr.value.contains('<') {
        return Err(XmlError::NotWellFormed("'<' in an attribute value".into()));
    }
    let value = attr
        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
        .map_err(|e| match e {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(..)) => {
                XmlError::Restricted("an undeclared entity reference")
            }
            other => XmlError::NotWellFormed(other.to_string()),
        })?;
    check_chars(&value)?;
    Ok(value)
}

fn resolved_ns(result: ResolveResult<'_>) -> Result<String, XmlError> {
    match result {
        ResolveResult::Bound(ns) => Ok(ns.0.to_string()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(prefix) => Err(XmlError::BadNamespacePrefix(prefix)),
    }
}

/// Turns a start tag into an element with resolved namespaces and decoded attribute values.
fn build_element<B>(
    reader: &NsReader<B>,
    start: &quick_xml::events::BytesStart<'_>,
) -> Result<Element, XmlError> {
    let resolver = reader.resolver();
    let (ns_result, local) = resolver.resolve_element(start.name());
    let namespace = resolved_ns(ns_result)?;
    let local = local.as_ref();
    attr_name(local)?;
    let mut el = Element::bare(local, namespace);
    for attr in start.attributes() {
        let attr = attr.map_err(|e| XmlError::NotWellFormed(e.to_string()))?;
        let key: QName<'_> = attr.key;
        if key.as_namespace_binding().is_some() {
            continue;
        }
        let (attr_ns, attr_local) = resolver.resolve_attribute(key);
        let attr_ns = resolved_ns(attr_ns)?;
        let value = attribute_value(&attr)?;
        let name = attr_name(attr_local.as_ref())?;
        let namespace = if attr_ns.is_empty() {
            Namespace::NONE
        } else {
            Namespace::from(attr_ns)
        };
        el.set_attr(namespace, name, value.into_owned());
    }
    Ok(el)
}

/// Reads the stream header: `{http://etherx.jabber.org/streams}stream` with its attributes.
fn parse_header<B>(
    reader: &NsReader<B>,
    start: &quick_xml::events::BytesStart<'_>,
) -> Result<StreamHeader, XmlError> {
    let resolver = reader.resolver();
    let (ns_result, local) = resolver.resolve_element(start.name());
    let namespace = resolved_ns(ns_result)?;
    if local.as_ref() != "stream" {
        return Err(XmlError::BadFormat(
            "the first element must be the stream header",
        ));
    }
    if namespace != ns::STREAM {
        return Err(XmlError::InvalidNamespace(format!(
            "stream namespace '{namespace}'"
        )));
    }
    let mut header = StreamHeader::default();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| XmlError::NotWellFormed(e.to_string()))?;
        let value = attribute_value(&attr)?.into_owned();
        match attr.key.as_ref() {
            "to" => header.to = Some(value),
            "from" => header.from = Some(value),
            "version" => header.version = Some(value),
            "xml:lang" => header.lang = Some(value),
            "xmlns" => header.default_ns = Some(value),
            _ => {}
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::AsyncWriteExt;

    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        future.poll(&mut cx)
    }

    #[tokio::test]
    async fn an_idle_reader_gives_back_what_parsing_grew_and_keeps_its_namespaces() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut reader = XmlReader::new(server, XmlLimits::default());
        client
            .write_all(
                b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>\
                  <message to='a@b'><body>hi</body><x xmlns='urn:x'><y><z/></y></x></message>",
            )
            .await
            .unwrap();
        assert!(matches!(reader.next().await, Ok(XmlEvent::StreamOpen(_))));
        let Ok(XmlEvent::Element(first)) = reader.next().await else {
            panic!("no element");
        };
        assert_eq!(first.ns(), "jabber:client");
        // Nothing more to read: waiting leaves no parsing memory behind.
        {
            let ready = std::pin::pin!(reader.ready());
            assert!(poll_once(ready).is_pending());
        }
        assert_eq!(reader.stack.capacity(), 0);
        assert_eq!(reader.buf.capacity(), 0);
        // The stream header's bindings survive the compaction.
        client.write_all(b"<presence/>").await.unwrap();
        let Ok(XmlEvent::Element(second)) = reader.next().await else {
            panic!("no element");
        };
        assert!(second.is("presence", "jabber:client"));
    }

    #[tokio::test]
    async fn ready_does_not_consume_input() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut reader = XmlReader::new(server, XmlLimits::default());
        client
            .write_all(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'><iq")
            .await
            .unwrap();
        reader.ready().await;
        reader.ready().await;
        assert!(matches!(reader.next().await, Ok(XmlEvent::StreamOpen(_))));
        // Half an element: next waits for the rest, and nothing was lost in between.
        client.write_all(b" type='get' id='1'/>").await.unwrap();
        let Ok(XmlEvent::Element(iq)) = reader.next().await else {
            panic!("no element");
        };
        assert_eq!(iq.attr("id"), Some("1"));
    }
}
