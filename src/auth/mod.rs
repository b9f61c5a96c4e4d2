//! Authentication: SASL mechanisms (SCRAM-SHA-256/-1 with and without channel binding, PLAIN), the
//! account service that creates and checks credentials, and the throttle for failed logins.

pub mod accounts;
pub mod credentials;
pub mod scram;
pub mod throttle;

pub use accounts::{AccountError, Accounts};

use scram::ScramHash;

/// RFC 6120 §6.5 SASL failure conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslFailure {
    Aborted,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailure {
    pub fn name(self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }

    /// `<failure/>` as sent on the wire.
    pub fn to_bytes(self) -> Vec<u8> {
        format!(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{}/></failure>",
            self.name()
        )
        .into_bytes()
    }

    /// Whether this failure counts as a wrong-credentials attempt (for throttling and the retry limit).
    pub fn is_credential_failure(self) -> bool {
        matches!(
            self,
            SaslFailure::NotAuthorized | SaslFailure::InvalidAuthzid
        )
    }
}

/// The SASL mechanisms Rookery implements, strongest first (the order they are offered in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha256Plus,
    ScramSha1Plus,
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    pub const ALL: [Mechanism; 5] = [
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The SCRAM hash, or `None` for PLAIN.
    pub fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256Plus | Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1Plus | Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain => None,
        }
    }

    pub fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha256Plus | Mechanism::ScramSha1Plus)
    }

    /// What a stream may offer: -PLUS only with channel-binding data, PLAIN only over TLS unless
    /// encryption is not required (RFC 6120 §13.8: PLAIN needs a protected channel).
    pub fn offered(tls: bool, binding_available: bool, require_encryption: bool) -> Vec<Mechanism> {
        Self::ALL
            .into_iter()
            .filter(|m| !m.is_plus() || binding_available)
            .filter(|m| *m != Mechanism::Plain || tls || !require_encryption)
            .collect()
    }
}

/// Splits a PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
pub fn parse_plain(data: &[u8]) -> Result<(Option<String>, String, String), SaslFailure> {
    let text = std::str::from_utf8(data).map_err(|_| SaslFailure::MalformedRequest)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    let authzid = (!authzid.is_empty()).then(|| authzid.to_string());
    Ok((authzid, authcid.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_offered_only_where_allowed() {
        assert!(!Mechanism::offered(false, false, true).contains(&Mechanism::Plain));
        assert!(Mechanism::offered(false, false, false).contains(&Mechanism::Plain));
        assert!(Mechanism::offered(true, false, true).contains(&Mechanism::Plain));
        assert!(!Mechanism::offered(true, false, true).contains(&Mechanism::ScramSha256Plus));
        assert_eq!(
            Mechanism::offered(true, true, true)[0],
            Mechanism::ScramSha256Plus
        );
    }

    #[test]
    fn plain_message_parts() {
        assert_eq!(
            parse_plain(b"\0juliet\0pw").unwrap(),
            (None, "juliet".into(), "pw".into())
        );
        assert_eq!(
            parse_plain(b"j@x\0juliet\0pw").unwrap().0.as_deref(),
            Some("j@x")
        );
        assert!(parse_plain(b"juliet\0pw").is_err());
        assert!(parse_plain(b"\0juliet\0").is_err());
        assert!(parse_plain(b"\0\0pw").is_err());
    }
}
