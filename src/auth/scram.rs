//! SCRAM server (RFC 5802, RFC 7677), with channel binding by `tls-exporter` (RFC 9266) for the -PLUS
//! variants. Hand-written because no maintained crate offers a usable server side (CRATES.md §6).
//!
//! The exchange is a pure state machine: `ClientFirst::parse` reads the first message, the caller
//! looks up the verifier, `ScramServer::new` answers with the server-first message, and
//! `ScramServer::finish` checks the proof and returns the server-final message.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{KeyInit, Mac};

use super::SaslFailure;
use crate::store::ScramVerifier;

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    pub fn name(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SHA-1",
            ScramHash::Sha256 => "SHA-256",
        }
    }

    /// HMAC with this hash.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                // HMAC accepts keys of any length, so construction cannot fail.
                let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!());
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!());
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// The hash of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            ScramHash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    /// RFC 5802 Hi(): PBKDF2 with this hash.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            ScramHash::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }

    /// RFC 5802 §3: (StoredKey, ServerKey) for a prepared password.
    pub fn keys(self, password: &[u8], salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>) {
        let salted = self.salted_password(password, salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        let stored_key = self.digest(&client_key);
        let server_key = self.hmac(&salted, b"Server Key");
        (stored_key, server_key)
    }
}

/// How the client framed channel binding in its GS2 header (RFC 5802 §7).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gs2Flag {
    /// `n`: the client does not support channel binding.
    NotSupported,
    /// `y`: the client supports it but thinks the server does not.
    ThinksServerLacks,
    /// `p=<type>`: the client uses this binding type.
    Uses(String),
}

/// The parsed client-first message.
#[derive(Debug, Clone)]
pub struct ClientFirst {
    gs2_header: String,
    flag: Gs2Flag,
    authzid: Option<String>,
    /// The username as sent (after `=2C`/`=3D` decoding): the localpart to look up.
    pub username: String,
    client_first_bare: String,
    client_nonce: String,
}

impl ClientFirst {
    /// Parses `gs2-header client-first-message-bare`.
    pub fn parse(data: &[u8]) -> Result<ClientFirst, SaslFailure> {
        let text = std::str::from_utf8(data).map_err(|_| SaslFailure::MalformedRequest)?;
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().ok_or(SaslFailure::MalformedRequest)?;
        let authz = parts.next().ok_or(SaslFailure::MalformedRequest)?;
        let bare = parts.next().ok_or(SaslFailure::MalformedRequest)?;
        let flag = match flag {
            "n" => Gs2Flag::NotSupported,
            "y" => Gs2Flag::ThinksServerLacks,
            f if f.starts_with("p=") && f.len() > 2 => Gs2Flag::Uses(f[2..].to_string()),
            _ => return Err(SaslFailure::MalformedRequest),
        };
        let authzid = match authz {
            "" => None,
            a if a.starts_with("a=") => Some(decode_saslname(&a[2..])?),
            _ => return Err(SaslFailure::MalformedRequest),
        };
        let gs2_header = text[..text.len() - bare.len()].to_string();

        let mut username = None;
        let mut nonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            match (i, attr.split_once('=')) {
                (0, Some(("m", _))) => return Err(SaslFailure::MalformedRequest), // mandatory extension: unsupported
                (0, Some(("n", v))) => username = Some(decode_saslname(v)?),
                (1, Some(("r", v)))
                    if !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic() && c != ',') =>
                {
                    nonce = Some(v.to_string())
                }
                (i, Some(_)) if i >= 2 => {} // extensions are ignored
                _ => return Err(SaslFailure::MalformedRequest),
            }
        }
        let username = username
            .filter(|u| !u.is_empty())
            .ok_or(SaslFailure::MalformedRequest)?;
        Ok(ClientFirst {
            gs2_header,
            flag,
            authzid,
            username,
            client_first_bare: bare.to_string(),
            client_nonce: nonce.ok_or(SaslFailure::MalformedRequest)?,
        })
    }

    /// The authorization identity, if the client sent one.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }
}

/// RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_saslname(s: &str) -> Result<String, SaslFailure> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('=') {
        out.push_str(&rest[..pos]);
        match rest.get(pos..pos + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslFailure::MalformedRequest),
        }
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A SCRAM exchange after the server-first message was sent.
pub struct ScramServer {
    hash: ScramHash,
    first: ClientFirst,
    server_first: String,
    nonce: String,
    verifier: ScramVerifier,
    /// False when the user does not exist: the exchange runs on to the end with a made-up verifier so
    /// that the answer does not tell whether the account exists.
    known_user: bool,
}

impl ScramServer {
    /// Checks the channel-binding framing and builds the server-first message.
    ///
    /// `plus` says whether the client chose a -PLUS mechanism; `binding_offered` whether the server
    /// advertised -PLUS mechanisms on this stream (RFC 5802 §6: a `y` flag then means a downgrade).
    pub fn new(
        hash: ScramHash,
        plus: bool,
        binding_offered: bool,
        first: ClientFirst,
        verifier: Option<ScramVerifier>,
        unknown_user: UnknownUser<'_>,
    ) -> Result<(ScramServer, Vec<u8>), SaslFailure> {
        match (&first.flag, plus) {
            (Gs2Flag::Uses(kind), true) if kind == "tls-exporter" => {}
            (Gs2Flag::Uses(_), true) => return Err(SaslFailure::NotAuthorized), // unsupported binding type
            (Gs2Flag::Uses(_), false) | (_, true) => return Err(SaslFailure::MalformedRequest),
            (Gs2Flag::ThinksServerLacks, false) if binding_offered => {
                return Err(SaslFailure::NotAuthorized)
            }
            _ => {}
        }
        let known_user = verifier.is_some();
        let verifier =
            verifier.unwrap_or_else(|| fake_verifier(hash, &first.username, unknown_user));
        let server_nonce: [u8; 18] = rand::random();
        let nonce = format!("{}{}", first.client_nonce, B64.encode(server_nonce));
        let server_first = format!(
            "r={},s={},i={}",
            nonce,
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let bytes = server_first.clone().into_bytes();
        Ok((
            ScramServer {
                hash,
                first,
                server_first,
                nonce,
                verifier,
                known_user,
            },
            bytes,
        ))
    }

    /// The username the exchange is for.
    pub fn username(&self) -> &str {
        &self.first.username
    }

    /// Checks the client-final message; on success returns the server-final message (`v=...`).
    pub fn finish(
        self,
        data: &[u8],
        channel_binding: Option<&[u8]>,
    ) -> Result<Vec<u8>, SaslFailure> {
        let text = std::str::from_utf8(data).map_err(|_| SaslFailure::MalformedRequest)?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(SaslFailure::MalformedRequest)?;
        let mut attrs = without_proof.split(',');
        let c = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(SaslFailure::MalformedRequest)?;
        let r = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslFailure::MalformedRequest)?;
        let cbind = B64.decode(c).map_err(|_| SaslFailure::MalformedRequest)?;
        let proof = B64
            .decode(proof)
            .map_err(|_| SaslFailure::MalformedRequest)?;

        let mut expected_cbind = self.first.gs2_header.clone().into_bytes();
        if let Gs2Flag::Uses(_) = self.first.flag {
            expected_cbind.extend_from_slice(channel_binding.ok_or(SaslFailure::NotAuthorized)?);
        }
        if r != self.nonce || !constant_time_eq(&cbind, &expected_cbind) {
            return Err(SaslFailure::NotAuthorized);
        }

        let auth_message = format!(
            "{},{},{}",
            self.first.client_first_bare, self.server_first, without_proof
        );
        let client_signature = self
            .hash
            .hmac(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(SaslFailure::NotAuthorized);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let proof_ok = constant_time_eq(&self.hash.digest(&client_key), &self.verifier.stored_key);
        if !proof_ok || !self.known_user {
            return Err(SaslFailure::NotAuthorized);
        }
        let server_signature = self
            .hash
            .hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// What a made-up verifier for an unknown user must look like to pass for a real one.
#[derive(Debug, Clone, Copy)]
pub struct UnknownUser<'a> {
    /// Per-process secret that keys the made-up salt.
    pub secret: &'a [u8],
    /// The iteration count real accounts get (`[auth] scram_iterations`).
    pub iterations: u32,
}

/// A stable made-up verifier for an unknown user: same salt on every try and the configured iteration
/// count, so the challenge does not tell whether the account exists.
fn fake_verifier(hash: ScramHash, username: &str, unknown: UnknownUser<'_>) -> ScramVerifier {
    let salt = hash.hmac(unknown.secret, username.as_bytes())[..16].to_vec();
    let random: [u8; 32] = rand::random();
    ScramVerifier {
        hash: hash.name().to_string(),
        salt,
        iterations: unknown.iterations,
        stored_key: hash.digest(&random),
        server_key: random.to_vec(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3 test vector: user "user", password "pencil".
    const UNKNOWN: UnknownUser<'static> = UnknownUser {
        secret: b"k",
        iterations: 4096,
    };

    #[test]
    fn rfc7677_sha256_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (stored_key, server_key) = ScramHash::Sha256.keys(b"pencil", &salt, 4096);
        let verifier = ScramVerifier {
            hash: "SHA-256".into(),
            salt,
            iterations: 4096,
            stored_key,
            server_key,
        };
        let first = ClientFirst::parse(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.username, "user");
        let (mut server, _) = ScramServer::new(
            ScramHash::Sha256,
            false,
            false,
            first,
            Some(verifier),
            UNKNOWN,
        )
        .unwrap();
        // Replace the random nonce with the RFC's so its proof applies.
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into();
        let last = server
            .finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                None,
            )
            .unwrap();
        assert_eq!(last, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn saslname_decoding_and_bad_messages() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(decode_saslname("a=2").is_err());
        assert!(ClientFirst::parse(b"x,,n=u,r=abc").is_err());
        assert!(ClientFirst::parse(b"n,,r=abc").is_err());
        assert!(ClientFirst::parse(b"n,,n=u").is_err());
        assert!(ClientFirst::parse(b"n,,m=ext,n=u,r=abc").is_err());
        let first = ClientFirst::parse(b"n,a=juliet@example.org,n=juliet,r=abc").unwrap();
        assert_eq!(first.authzid(), Some("juliet@example.org"));
    }

    #[test]
    fn downgrade_and_binding_mismatches_are_refused() {
        let v = fake_verifier(ScramHash::Sha256, "u", UNKNOWN);
        // "y" while the server offered -PLUS: a downgrade.
        let first = ClientFirst::parse(b"y,,n=u,r=abc").unwrap();
        assert!(ScramServer::new(
            ScramHash::Sha256,
            false,
            true,
            first,
            Some(v.clone()),
            UNKNOWN
        )
        .is_err());
        // A -PLUS mechanism without binding, and binding on a plain mechanism.
        let first = ClientFirst::parse(b"n,,n=u,r=abc").unwrap();
        assert!(ScramServer::new(
            ScramHash::Sha256,
            true,
            true,
            first,
            Some(v.clone()),
            UNKNOWN
        )
        .is_err());
        let first = ClientFirst::parse(b"p=tls-exporter,,n=u,r=abc").unwrap();
        assert!(ScramServer::new(
            ScramHash::Sha256,
            false,
            true,
            first,
            Some(v.clone()),
            UNKNOWN
        )
        .is_err());
        let first = ClientFirst::parse(b"p=tls-unique,,n=u,r=abc").unwrap();
        assert!(ScramServer::new(ScramHash::Sha256, true, true, first, Some(v), UNKNOWN).is_err());
    }
}
