//! Helpers for message archive (XEP-0313) tests: queries with forms and RSM paging, and what their
//! pages hold.

use minidom::Element;

use super::muc::{error_condition, xml};
use super::stanzas::*;

pub const MAM: &str = "urn:xmpp:mam:2";
pub const RSM: &str = "http://jabber.org/protocol/rsm";
pub const FORWARD: &str = "urn:xmpp:forward:0";
pub const DELAY: &str = "urn:xmpp:delay";
pub const STANZA_ID: &str = "urn:xmpp:sid:0";

/// The answer to one archive query: the result messages in arrival order, and the iq that ended it.
pub struct Page {
    pub results: Vec<Element>,
    pub end: Element,
}

impl Page {
    pub fn error(&self) -> Option<String> {
        error_condition(&self.end)
    }

    pub fn forwarded(result: &Element) -> &Element {
        result
            .get_child("result", MAM)
            .and_then(|r| r.get_child("forwarded", FORWARD))
            .unwrap_or_else(|| panic!("no forwarded result in {}", xml(result)))
    }

    /// The archived messages, in the order they came.
    pub fn messages(&self) -> Vec<&Element> {
        self.results
            .iter()
            .map(|r| {
                Page::forwarded(r)
                    .get_child("message", "jabber:client")
                    .unwrap_or_else(|| panic!("no message in {}", xml(r)))
            })
            .collect()
    }

    pub fn bodies(&self) -> Vec<String> {
        self.messages()
            .iter()
            .map(|m| body_of(m).unwrap_or_default())
            .collect()
    }

    /// The archive ids of the results.
    pub fn ids(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|r| {
                r.get_child("result", MAM)
                    .and_then(|r| r.attr("id"))
                    .unwrap_or_else(|| panic!("no result id in {}", xml(r)))
                    .to_string()
            })
            .collect()
    }

    pub fn fin(&self) -> &Element {
        self.end
            .get_child("fin", MAM)
            .unwrap_or_else(|| panic!("no fin in {}", xml(&self.end)))
    }

    pub fn complete(&self) -> bool {
        self.fin().attr("complete") == Some("true")
    }

    /// The `<set/>`'s first and last ids.
    pub fn first_last(&self) -> (Option<String>, Option<String>) {
        let set = self
            .fin()
            .get_child("set", RSM)
            .unwrap_or_else(|| panic!("no set in {}", xml(&self.end)));
        (
            set.get_child("first", RSM).map(|f| f.text()),
            set.get_child("last", RSM).map(|l| l.text()),
        )
    }
}

/// A form field with these values.
pub fn field(var: &str, values: &[&str]) -> String {
    let values: String = values
        .iter()
        .map(|v| format!("<value>{v}</value>"))
        .collect();
    format!("<field var='{var}'>{values}</field>")
}

/// Queries the archive at `to` (none: the user's own, addressed without `to`) with these form
/// fields and RSM `<set/>` content (`extra` goes in the query after them, e.g. `<flip-page/>`);
/// waits for the iq and takes the results that came before it, checking they came `from`.
pub async fn query_at(
    c: &mut Client,
    to: Option<&str>,
    from: Option<&str>,
    fields: &[String],
    set: &str,
    extra: &str,
) -> Page {
    let queryid = c.next_id("q");
    let form = if fields.is_empty() {
        String::new()
    } else {
        format!(
            "<x xmlns='jabber:x:data' type='submit'>{}{}</x>",
            field("FORM_TYPE", &[MAM]),
            fields.concat()
        )
    };
    let set = if set.is_empty() {
        String::new()
    } else {
        format!("<set xmlns='{RSM}'>{set}</set>")
    };
    let end = c
        .iq(
            "set",
            to,
            &format!("<query xmlns='{MAM}' queryid='{queryid}'>{form}{set}{extra}</query>"),
        )
        .await;
    let results = c.take(|el| {
        el.name() == "message"
            && el
                .get_child("result", MAM)
                .is_some_and(|r| r.attr("queryid") == Some(queryid.as_str()))
    });
    for r in &results {
        assert_eq!(r.attr("from"), from, "{}", xml(r));
    }
    Page { results, end }
}
