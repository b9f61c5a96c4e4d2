//! XEP-0198 stream management state: counting what the client handled, keeping what it has not
//! acknowledged, and the handle through which a new connection resumes a session.

use std::collections::VecDeque;

use bytes::Bytes;
use jid::BareJid;
use tokio::io::WriteHalf;

use crate::modules::{Module, Spec, Support};
use crate::transport::Transport;
use crate::xml::XmlReader;

pub const NS: &str = "urn:xmpp:sm:3";

pub const MODULE: Module = Module {
    name: "stream-management",
    disco_features: &[],
    account_features: &[],
    stream_features: &["<sm xmlns='urn:xmpp:sm:3'/>"],
    specs: &[Spec::xep(
        198,
        "1.6.3",
        Support::Complete,
        "acks, resumption within [c2s] resume_timeout; unacknowledged messages go to offline storage",
    )],
};

/// Outbound stanzas the client has not acknowledged yet. Shared by the writer (which records what it
/// sends) and the reader (which applies the client's `<a h/>`).
#[derive(Default)]
pub struct Unacked {
    /// Stanzas are counted once `<enabled/>` went out.
    pub counting: bool,
    /// Stanzas sent (mod 2^32).
    sent: u32,
    /// The last `h` the client acknowledged.
    acked: u32,
    /// Sent and not acknowledged, oldest first (`sent - acked` of them), with the key of each
    /// one's stored copy, if it has one.
    queue: VecDeque<Sent>,
    /// An `<r/>` is out and not yet answered.
    pub requested: bool,
}

/// A stanza as sent, with the key of its durable copy (see `offline::keep_in_flight`).
pub type Sent = (Bytes, Option<u64>);

/// The client acknowledged more than was sent (XEP-0198 §5).
#[derive(Debug, Clone, Copy)]
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl Unacked {
    /// Records a stanza going out; false when it is not counted (stream management is off), so
    /// the caller treats it as delivered once written.
    pub fn sent(&mut self, stanza: &Bytes, key: Option<u64>) -> bool {
        if self.counting {
            self.sent = self.sent.wrapping_add(1);
            self.queue.push_back((stanza.clone(), key));
        }
        self.counting
    }

    /// Applies `<a h='N'/>`: everything up to N was handled. Returns the stored-copy keys of the
    /// stanzas this acknowledges.
    pub fn ack(&mut self, h: u32) -> Result<Vec<u64>, TooHigh> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.queue.len() {
            return Err(TooHigh { h, sent: self.sent });
        }
        let keys = self
            .queue
            .drain(..newly)
            .filter_map(|(_, key)| key)
            .collect();
        self.acked = h;
        self.requested = false;
        Ok(keys)
    }

    /// For resumption: applies `h` (returning the acknowledged keys), then takes what must be sent
    /// again (counted anew as it goes out).
    pub fn take_for_resend(&mut self, h: u32) -> Result<(Vec<u64>, Vec<Sent>), TooHigh> {
        let acked = self.ack(h)?;
        self.sent = self.acked;
        Ok((acked, self.queue.drain(..).collect()))
    }

    /// Everything never acknowledged, when the session ends.
    pub fn take_all(&mut self) -> Vec<Sent> {
        self.queue.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A new connection asking to take over a session (XEP-0198 §5).
pub struct ResumeRequest {
    pub reader: XmlReader<tokio::io::ReadHalf<Transport>>,
    pub writer: WriteHalf<Transport>,
    /// The client's count of stanzas it handled.
    pub h: u32,
}

/// Where a resumable session can be reached, registered under its SM-ID.
#[derive(Clone)]
pub struct ResumeHandle {
    pub user: BareJid,
    pub control: std::sync::Arc<crate::router::Control>,
}

/// `<failed/>` with a stanza error condition.
pub fn failed(condition: &str, h: Option<u32>) -> Bytes {
    let h = h.map(|h| format!(" h='{h}'")).unwrap_or_default();
    Bytes::from(format!(
        "<failed xmlns='{NS}'{h}><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_resend_and_wraparound() {
        let mut u = Unacked::default();
        assert!(!u.sent(&Bytes::from_static(b"ignored before enable"), None));
        assert!(u.is_empty());
        u.counting = true;
        for i in 0..5 {
            u.sent(&Bytes::from(format!("s{i}")), Some(i));
        }
        assert_eq!(u.ack(2).unwrap(), vec![0, 1]);
        assert_eq!(u.len(), 3);
        assert!(u.ack(9).is_err());
        let (acked, again) = u.take_for_resend(3).unwrap();
        assert_eq!(acked, vec![2]);
        assert_eq!(
            again,
            vec![(Bytes::from("s3"), Some(3)), (Bytes::from("s4"), Some(4))]
        );
        assert!(u.is_empty());
        // Counting wraps at 2^32.
        let mut w = Unacked {
            counting: true,
            sent: u32::MAX,
            acked: u32::MAX,
            ..Default::default()
        };
        w.sent(&Bytes::from("a"), None);
        w.sent(&Bytes::from("b"), None);
        w.ack(0).unwrap();
        assert_eq!(w.len(), 1);
    }
}
