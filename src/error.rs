//! XMPP errors: the stream error conditions (RFC 6120 §4.9) and stanza error replies (RFC 6120 §8.3),
//! and the one place where internal failures become one of them.

use minidom::Element;

use crate::xml::{ns, XmlError};

/// RFC 6120 §4.9.3 stream error conditions that Rookery sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostUnknown,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    ResourceConstraint,
    RestrictedXml,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamErrorCondition {
    /// The element name of the condition.
    pub fn name(self) -> &'static str {
        use StreamErrorCondition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostUnknown => "host-unknown",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }
}

/// A stream error with an optional human-readable text, ready to be sent before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
    /// An application-specific condition element, serialized (RFC 6120 §4.9.4).
    pub extra: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> Self {
        StreamError {
            condition,
            text: None,
            extra: None,
        }
    }

    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
            extra: None,
        }
    }

    /// `<stream:error>…</stream:error></stream:stream>`, the bytes that end a stream in error.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(160);
        out.push_str("<stream:error><");
        out.push_str(self.condition.name());
        out.push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
        if let Some(text) = &self.text {
            out.push_str("<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>");
            out.push_str(&crate::xml::escape(text));
            out.push_str("</text>");
        }
        if let Some(extra) = &self.extra {
            out.push_str(extra);
        }
        out.push_str("</stream:error></stream:stream>");
        out.into_bytes()
    }
}

impl From<XmlError> for StreamError {
    /// RFC 6120 §4.9.3: which condition each kind of bad XML earns.
    fn from(err: XmlError) -> Self {
        use StreamErrorCondition::*;
        let condition = match &err {
            XmlError::NotWellFormed(_) => NotWellFormed,
            XmlError::Restricted(_) => RestrictedXml,
            XmlError::TooLarge(_) | XmlError::TooDeep(_) => PolicyViolation,
            XmlError::InvalidNamespace(_) => InvalidNamespace,
            XmlError::BadNamespacePrefix(_) => BadNamespacePrefix,
            XmlError::BadFormat(_) => BadFormat,
            XmlError::UnsupportedEncoding => UnsupportedEncoding,
            XmlError::Io(_) | XmlError::Eof => InternalServerError,
        };
        StreamError::with_text(condition, err.to_string())
    }
}

/// RFC 6120 §8.3.3 stanza error conditions, with the error type §8.3.2 pairs them with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaErrorCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    RegistrationRequired,
    RemoteServerNotFound,
    ResourceConstraint,
    ServiceUnavailable,
}

impl StanzaErrorCondition {
    pub fn name(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
        }
    }

    /// The `type` attribute RFC 6120 §8.3.3 gives for each condition.
    pub fn error_type(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable => "modify",
            Conflict
            | FeatureNotImplemented
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable => "cancel",
            Forbidden | NotAuthorized | RegistrationRequired => "auth",
            InternalServerError | ResourceConstraint => "wait",
        }
    }
}

/// An error a handler returns; becomes an error reply to the stanza it was handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaError {
    pub condition: StanzaErrorCondition,
    pub text: Option<String>,
    /// An application-specific condition (RFC 6120 §8.3.2), such as XEP-0191's `<blocked/>`.
    pub extra: Option<Box<Element>>,
}

impl StanzaError {
    pub fn new(condition: StanzaErrorCondition) -> Self {
        StanzaError {
            condition,
            text: None,
            extra: None,
        }
    }

    pub fn with_text(condition: StanzaErrorCondition, text: impl Into<String>) -> Self {
        StanzaError {
            condition,
            text: Some(text.into()),
            extra: None,
        }
    }

    /// The `<error/>` child for a reply.
    pub fn to_element(&self) -> Element {
        let mut error = Element::builder("error", ns::CLIENT)
            .attr(
                minidom::rxml::xml_ncname!("type").to_owned(),
                self.condition.error_type(),
            )
            .append(Element::bare(self.condition.name(), ns::STANZAS))
            .build();
        if let Some(text) = &self.text {
            let mut t = Element::bare("text", ns::STANZAS);
            t.append_text(text.clone());
            error.append_child(t);
        }
        if let Some(extra) = &self.extra {
            error.append_child((**extra).clone());
        }
        error
    }

    /// The error reply to `stanza` (RFC 6120 §8.3.1): same name and id, `to`/`from` swapped, type error.
    /// Returns `None` for stanzas that must never be answered with an error (errors themselves, and
    /// iq results).
    pub fn reply_to(&self, stanza: &Element) -> Option<Element> {
        let kind = stanza.attr("type");
        if kind == Some("error") || (stanza.name() == "iq" && kind == Some("result")) {
            return None;
        }
        let mut reply = Element::bare(stanza.name(), ns::CLIENT);
        if let Some(id) = stanza.attr("id") {
            set_attr(&mut reply, "id", id);
        }
        if let Some(from) = stanza.attr("from") {
            set_attr(&mut reply, "to", from);
        }
        if let Some(to) = stanza.attr("to") {
            set_attr(&mut reply, "from", to);
        }
        set_attr(&mut reply, "type", "error");
        reply.append_child(self.to_element());
        Some(reply)
    }
}

impl From<StanzaErrorCondition> for StanzaError {
    fn from(condition: StanzaErrorCondition) -> Self {
        StanzaError::new(condition)
    }
}

impl From<crate::store::StoreError> for StanzaError {
    fn from(err: crate::store::StoreError) -> Self {
        tracing::error!(error = %err, "storage failure while handling a stanza");
        StanzaError::new(StanzaErrorCondition::InternalServerError)
    }
}

/// Sets a plain (namespace-less) attribute; names used here are fixed ASCII so they are valid NCNames.
pub fn set_attr(el: &mut Element, name: &'static str, value: &str) {
    if let Ok(name) = minidom::rxml::NcName::try_from(name) {
        el.set_attr(minidom::rxml::Namespace::NONE, name, value.to_string());
    }
}

/// Removes a plain (namespace-less) attribute.
pub fn remove_attr(el: &mut Element, name: &str) {
    el.attrs_mut().remove(&minidom::rxml::Namespace::NONE, name);
}
