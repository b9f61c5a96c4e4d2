//! XEP-0115 entity capabilities, as PEP needs them: which nodes each client session wants
//! notifications of (its `<node>+notify` features). Learnt from the `<c/>` of its presence: a
//! known `ver` is looked up, a new one is asked once with disco#info, verified, and cached for
//! every session that announces it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use bytes::Bytes;
use minidom::Element;
use xmpp_parsers::disco::DiscoInfoResult;
use xmpp_parsers::hashes::Algo;

use super::{Module, Spec, Support};
use crate::error::set_attr;
use crate::router::Outbound;
use crate::session::SessionCtx;
use crate::xml::{self, ns};

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
/// Ids of the disco#info questions the server asks clients.
pub const ID_PREFIX: &str = "caps-";

pub const MODULE: Module = Module {
    name: "caps",
    disco_features: &[],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        115,
        "1.6.0",
        Support::Partial,
        "clients' caps read from presence, each new ver asked once, sha-1 ver verified and cached; used for PEP +notify; the server announces no caps of its own",
    )],
};

/// Feature sets remembered by `ver`; past this the least recently announced goes.
const MAX_KNOWN: usize = 1_000;
/// Questions awaiting an answer (one per session at most); past this, old ones make room.
const MAX_ASKED: usize = 10_000;
/// Nodes one feature set may ask notifications of, and their longest name, in bytes: real
/// clients name a few dozen; a made-up feature set must not cost much memory.
const MAX_NOTIFY: usize = 64;
const MAX_NODE_NAME: usize = 256;
/// Longest `ver` considered (a base64 SHA-1 is 28 bytes).
const MAX_VER: usize = 128;
/// How long a question is remembered: clients answer within seconds or never.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The nodes one session wants notifications of, sorted, and the caps `ver` that said so.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notify {
    ver: String,
    nodes: Vec<String>,
}

impl Notify {
    pub fn from_features<'a>(ver: &str, features: impl IntoIterator<Item = &'a str>) -> Notify {
        let mut nodes: Vec<String> = features
            .into_iter()
            .filter_map(|f| f.strip_suffix("+notify"))
            .filter(|node| !node.is_empty() && node.len() <= MAX_NODE_NAME)
            .map(str::to_string)
            .take(MAX_NOTIFY)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        Notify {
            ver: ver.to_string(),
            nodes,
        }
    }

    pub fn wants(&self, node: &str) -> bool {
        self.nodes
            .binary_search_by(|n| n.as_str().cmp(node))
            .is_ok()
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

struct Asked {
    id: String,
    ver: String,
    verifiable: bool,
    at: std::time::Instant,
}

/// Known feature sets (with when each was last announced) and questions in flight, one per
/// session at most.
#[derive(Default)]
pub struct Caps {
    known: RwLock<HashMap<String, (Arc<Notify>, AtomicU64)>>,
    asked: Mutex<HashMap<u64, Asked>>,
    clock: AtomicU64,
}

/// A session's available presence: learn what its caps say (at once if the `ver` is known).
/// `initial`: the session just became available, so it gets the last items again.
pub async fn presence(ctx: &SessionCtx, presence: &Element, initial: bool) {
    let Some(c) = presence.get_child("c", NS_CAPS) else {
        return;
    };
    let (Some(node), Some(ver)) = (c.attr("node"), c.attr("ver")) else {
        return;
    };
    if ver.len() > MAX_VER || node.len() > MAX_NODE_NAME {
        return;
    }
    // The usual case: the same caps as before (a status change).
    if let Some(current) = ctx.handle.presence.notify().filter(|n| n.ver == ver) {
        if initial {
            super::pep::last_items(&ctx.state, &ctx.handle, &current).await;
        }
        return;
    }
    let caps = &ctx.state.caps;
    let known = caps.known.read().ok().and_then(|known| {
        known.get(ver).map(|(notify, used)| {
            used.store(
                caps.clock.fetch_add(1, Ordering::Relaxed),
                Ordering::Relaxed,
            );
            notify.clone()
        })
    });
    if let Some(notify) = known {
        return learnt(ctx, notify).await;
    }
    let id = format!(
        "{ID_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
    );
    {
        let Ok(mut asked) = caps.asked.lock() else {
            return;
        };
        if asked.get(&ctx.handle.id).is_some_and(|a| a.ver == ver) {
            return;
        }
        if asked.len() >= MAX_ASKED {
            // Questions never answered (sessions gone, clients that ignore them) make room.
            asked.retain(|_, a| a.at.elapsed() < ANSWER_WITHIN);
            if asked.len() >= MAX_ASKED {
                return;
            }
        }
        asked.insert(
            ctx.handle.id,
            Asked {
                id: id.clone(),
                ver: ver.to_string(),
                verifiable: c.attr("hash") == Some("sha-1"),
                at: std::time::Instant::now(),
            },
        );
    }
    let mut query = Element::bare("query", ns::DISCO_INFO);
    set_attr(&mut query, "node", &format!("{node}#{ver}"));
    let mut iq = Element::bare("iq", ns::CLIENT);
    set_attr(&mut iq, "type", "get");
    set_attr(&mut iq, "id", &id);
    set_attr(&mut iq, "from", &ctx.state.domain);
    set_attr(&mut iq, "to", ctx.jid.as_str());
    iq.append_child(query);
    ctx.handle
        .send(Outbound::Stanza(Bytes::from(xml::serialize(&iq))))
        .await;
}

/// An answer to one of the server's disco#info questions (a result or an error).
pub async fn answer(ctx: &SessionCtx, iq: &Element) {
    let Some(id) = iq.attr("id") else { return };
    // Only the session that was asked may answer, and only the question it was asked.
    let asked =
        ctx.state
            .caps
            .asked
            .lock()
            .ok()
            .and_then(|mut asked| match asked.get(&ctx.handle.id) {
                Some(a) if a.id == id => asked.remove(&ctx.handle.id),
                _ => None,
            });
    let Some(asked) = asked else {
        return;
    };
    let Some(result) = iq
        .get_child("query", ns::DISCO_INFO)
        .filter(|_| iq.attr("type") == Some("result"))
        .and_then(|q| DiscoInfoResult::try_from(q.clone()).ok())
    else {
        return;
    };
    let notify = Arc::new(Notify::from_features(
        &asked.ver,
        result.features.iter().map(String::as_str),
    ));
    // A verified ver names this feature set for everyone; an unverified one only this session.
    if asked.verifiable && verifies(&result, &asked.ver) {
        let caps = &ctx.state.caps;
        if let Ok(mut known) = caps.known.write() {
            if known.len() >= MAX_KNOWN {
                // The least recently announced goes.
                if let Some(oldest) = known
                    .iter()
                    .min_by_key(|(_, (_, used))| used.load(Ordering::Relaxed))
                    .map(|(ver, _)| ver.clone())
                {
                    known.remove(&oldest);
                }
            }
            let used = AtomicU64::new(caps.clock.fetch_add(1, Ordering::Relaxed));
            known.insert(asked.ver, (notify.clone(), used));
        }
    }
    learnt(ctx, notify).await;
}

/// XEP-0115 §5: the ver is the SHA-1 of the disco#info verification string.
fn verifies(result: &DiscoInfoResult, ver: &str) -> bool {
    let data = xmpp_parsers::caps::compute_disco(result);
    xmpp_parsers::caps::hash_caps(&data, Algo::Sha_1)
        .map(|hash| base64::engine::general_purpose::STANDARD.encode(hash.hash) == ver)
        .unwrap_or(false)
}

async fn learnt(ctx: &SessionCtx, notify: Arc<Notify>) {
    // An answer that comes after the session went unavailable changes nothing.
    if ctx.handle.presence.is_available() && ctx.handle.presence.set_notify(notify.clone()) {
        // What it now wants to hear of: the last item of each such node it may see.
        super::pep::last_items(&ctx.state, &ctx.handle, &notify).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_nodes_come_from_features() {
        let n = Notify::from_features(
            "v",
            [
                "urn:xmpp:avatar:metadata+notify",
                "http://jabber.org/protocol/disco#info",
                "eu.siacs.conversations.axolotl.devicelist+notify",
                "+notify",
            ],
        );
        assert!(n.wants("urn:xmpp:avatar:metadata"));
        assert!(n.wants("eu.siacs.conversations.axolotl.devicelist"));
        assert!(!n.wants("http://jabber.org/protocol/disco#info"));
        assert_eq!(n.nodes().len(), 2);
    }

    #[test]
    fn the_xep_example_ver_verifies() {
        // XEP-0115 §5.2's simple example.
        let result = DiscoInfoResult {
            node: None,
            identities: vec![xmpp_parsers::disco::Identity::new(
                "client",
                "pc",
                "",
                "Exodus 0.9.1",
            )],
            features: [
                "http://jabber.org/protocol/caps",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            extensions: vec![],
        };
        assert!(verifies(&result, "QgayPKawpkPSDYmwT/WM94uAlu0="));
        assert!(!verifies(&result, "AAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    }
}
