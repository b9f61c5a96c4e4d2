//! Parsing JIDs at the edge, once, into the normalized form used everywhere else.

use jid::Jid;
use minidom::Element;

use crate::error::{StanzaError, StanzaErrorCondition};

/// Parses a JID from the wire. A trailing dot on the domain (`example.com.`) is the same domain
/// (RFC 7622 §3.2); it is stripped first because the jid crate mis-splits `user@example.com./res`
/// (CRATES.md §4).
pub fn parse_jid(text: &str) -> Result<Jid, jid::Error> {
    let (before_resource, resource) = match text.find('/') {
        Some(slash) => text.split_at(slash),
        None => (text, ""),
    };
    match before_resource.strip_suffix('.') {
        Some(trimmed) if !trimmed.is_empty() => Jid::new(&format!("{trimmed}{resource}")),
        _ => Jid::new(text),
    }
}

/// The JID in the attribute `name` of a request's element, or the `<jid-malformed/>` that
/// refuses the request when it is missing or not a JID.
pub fn jid_attr(el: &Element, name: &str) -> Result<Jid, StanzaError> {
    el.attr(name)
        .and_then(|j| parse_jid(j).ok())
        .ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::JidMalformed,
                format!("<{}/> needs a valid JID in '{name}'", el.name()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_dot_domains_are_the_same_domain() {
        assert_eq!(
            parse_jid("juliet@example.com./r").unwrap().as_str(),
            "juliet@example.com/r"
        );
        assert_eq!(parse_jid("example.com.").unwrap().as_str(), "example.com");
        assert_eq!(
            parse_jid("Juliet@Example.COM/Balcony").unwrap().as_str(),
            "juliet@example.com/Balcony"
        );
        assert!(parse_jid("@example.com").is_err());
        assert!(parse_jid("a b@example.com").is_err());
    }
}
