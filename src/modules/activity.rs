//! "Last seen": XEP-0012 last activity, fed by an activity service that records only what the user
//! did (a message with a body, a presence change) and never what the app did (receipts, markers,
//! chat states, acks, pings). Writes are coalesced: at most one disk write per user per
//! `[activity] write_interval`, and everything pending is written at shutdown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jid::BareJid;
use minidom::Element;

use super::{IqResult, Module, Spec, Support, Target};
use crate::error::{set_attr, StanzaErrorCondition};
use crate::session::SessionCtx;
use crate::store::{ActivityStore, StoreError};
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "last-activity",
    disco_features: &[ns::LAST],
    account_features: &[],
    stream_features: &[],
    specs: &[
        Spec::xep(
            12,
            "2.0",
            Support::Complete,
            "server uptime, and the last user activity of offline contacts (subscribers only)",
        ),
        Spec::xep(
            319,
            "1.0.2",
            Support::Complete,
            "idle presence is passed through unchanged",
        ),
    ],
};

/// A user's last activity: when and with which status text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Last {
    seconds: u64,
    status: String,
    /// Not written to the store yet.
    dirty: bool,
}

/// In-memory recent activity in front of the store.
pub struct Activity {
    recent: Mutex<HashMap<BareJid, Last>>,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Records that the user did something now; `status` replaces the remembered status text.
    pub fn touch(&self, user: &BareJid, status: Option<String>) {
        if let Ok(mut recent) = self.recent.lock() {
            let entry = recent.entry(user.clone()).or_insert_with(|| Last {
                seconds: 0,
                status: String::new(),
                dirty: true,
            });
            entry.seconds = now_seconds();
            if let Some(status) = status {
                entry.status = status;
            }
            entry.dirty = true;
        }
    }

    /// The user's last activity (Unix seconds, status), from memory or the store.
    pub fn last(
        &self,
        store: &dyn ActivityStore,
        user: &BareJid,
    ) -> Result<Option<(u64, String)>, StoreError> {
        if let Some(last) = self.recent.lock().ok().and_then(|r| r.get(user).cloned()) {
            return Ok(Some((last.seconds, last.status)));
        }
        store.last_activity(user)
    }

    /// Writes what changed since the last write; returns how many users were written.
    pub fn write(&self, store: &dyn ActivityStore) -> usize {
        let dirty: Vec<(BareJid, Last)> = match self.recent.lock() {
            Ok(mut recent) => {
                let dirty = recent
                    .iter_mut()
                    .filter(|(_, l)| l.dirty)
                    .map(|(u, l)| {
                        l.dirty = false;
                        (u.clone(), l.clone())
                    })
                    .collect();
                // Written entries are served from the store from now on; memory holds only news.
                recent.retain(|_, l| l.dirty);
                dirty
            }
            Err(_) => Vec::new(),
        };
        for (user, last) in &dirty {
            if let Err(err) = store.set_last_activity(user, last.seconds, &last.status) {
                tracing::error!(user = %user, error = %err, "cannot record last activity");
            }
        }
        dirty.len()
    }

    /// Forgets a deleted account.
    pub fn forget(&self, user: &BareJid) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.remove(user);
        }
    }
}

/// Whether a stanza from the client is something its user did (not something its app did).
pub fn is_user_activity(el: &Element) -> bool {
    match el.name() {
        // A message the person wrote: it has a body (receipts, markers and chat states have none).
        "message" => el.has_child("body", ns::CLIENT) && el.attr("type") != Some("error"),
        // A change of the user's own presence (broadcast, not directed or subscription handling).
        "presence" => {
            el.attr("to").is_none() && matches!(el.attr("type"), None | Some("unavailable"))
        }
        _ => false,
    }
}

/// The status text of a presence stanza, if any.
pub fn status_of(el: &Element) -> Option<String> {
    (el.name() == "presence").then(|| {
        el.get_child("status", ns::CLIENT)
            .map(|s| s.text())
            .unwrap_or_default()
    })
}

/// Runs until shutdown, writing recent activity every interval; writes once more at the end.
pub async fn writer(state: std::sync::Arc<crate::server::ServerState>) {
    let interval = Duration::from_secs(state.config.activity.write_interval);
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => break,
        }
        state.activity.write(state.stores.activity.as_ref());
    }
}

/// `jabber:iq:last` queries to the server (uptime) or to an account's bare JID (XEP-0012 §3-§5).
pub fn handle(ctx: &SessionCtx, set: bool, target: Target, to: Option<&BareJid>) -> IqResult {
    if set {
        return Err(super::wrong_type());
    }
    let mut query = Element::bare("query", ns::LAST);
    match (target, to) {
        (Target::Server, _) => {
            set_attr(
                &mut query,
                "seconds",
                &ctx.state.started.elapsed().as_secs().to_string(),
            );
        }
        (_, Some(user)) => {
            let asker = ctx.jid.to_bare();
            let allowed = &asker == user
                || ctx
                    .state
                    .stores
                    .rosters
                    .item(user, &asker)?
                    .is_some_and(|i| i.subscription.from());
            if !allowed {
                // XEP-0012 §4: only those allowed to see the user's presence may know.
                return Err(StanzaErrorCondition::Forbidden.into());
            }
            if !ctx.state.router.resources(user).is_empty() {
                set_attr(&mut query, "seconds", "0");
            } else {
                match ctx
                    .state
                    .activity
                    .last(ctx.state.stores.activity.as_ref(), user)?
                {
                    Some((at, status)) => {
                        set_attr(
                            &mut query,
                            "seconds",
                            &now_seconds().saturating_sub(at).to_string(),
                        );
                        if !status.is_empty() {
                            query.append_text(status);
                        }
                    }
                    // Never active since this server has known the account.
                    None => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
                }
            }
        }
        (_, None) => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
    }
    Ok(Some(query))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn only_what_the_user_did_counts() {
        assert!(is_user_activity(&el(
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>"
        )));
        assert!(is_user_activity(&el(
            "<presence xmlns='jabber:client'><show>away</show></presence>"
        )));
        assert!(is_user_activity(&el(
            "<presence xmlns='jabber:client' type='unavailable'/>"
        )));
        for app in [
            "<message xmlns='jabber:client'><received xmlns='urn:xmpp:receipts' id='1'/></message>",
            "<message xmlns='jabber:client'><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>",
            "<message xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<presence xmlns='jabber:client' to='x@y' type='subscribe'/>",
            "<presence xmlns='jabber:client' to='room@muc/nick'/>",
            "<iq xmlns='jabber:client' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        ] {
            assert!(!is_user_activity(&el(app)), "{app}");
        }
    }

    #[test]
    fn writes_are_coalesced() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sled::SledBackend::open(dir.path()).unwrap();
        let activity = Activity::new();
        let alice = BareJid::new("alice@example.org").unwrap();
        for _ in 0..100 {
            activity.touch(&alice, Some("busy".into()));
        }
        assert_eq!(
            store.last_activity(&alice).unwrap(),
            None,
            "nothing written before the interval"
        );
        assert_eq!(activity.write(&store), 1, "one write for many touches");
        assert_eq!(activity.write(&store), 0, "nothing new, nothing written");
        let (_, status) = store.last_activity(&alice).unwrap().unwrap();
        assert_eq!(status, "busy");
        assert_eq!(activity.last(&store, &alice).unwrap().unwrap().1, "busy");
    }
}
