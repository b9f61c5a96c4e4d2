//! Parsing JIDs at the edge, once, into the normalized form used everywhere else.

use jid::Jid;

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
