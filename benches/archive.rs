//! Archive figures: how long a user with a large archive (default 1,000,000 messages) waits for a
//! page of XEP-0313 results, over a real connection to the release server: the newest page, the
//! oldest, a page in the middle (after an id), one conversation among a hundred, one rare
//! conversation (50 messages spread over the whole archive), single items by id, and metadata.
//!
//! `cargo bench --bench archive` (optional: `-- MESSAGES`, default 1000000).
//! The archive is written straight into the store before the server starts (a million messages
//! through the server would measure the chat path, not the archive). Prints one JSON line per
//! figure: milliseconds from sending the query to having its last result and `<fin/>`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::mam::*;
use common::stanzas::Client;
use common::{Options, TestServer};
use jid::BareJid;
use rookery::modules::archive::{new_nonce, public_id};
use rookery::store::{ArchivedStanza, Stores};

const PASSWORD: &str = "bench-password";
const CONTACTS: usize = 100;
const RARE: usize = 50;
const RUNS: usize = 30;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A one-to-one message as the archive keeps it (about 330 bytes, like a real client's).
fn stanza(i: usize, contact: &str, incoming: bool) -> Vec<u8> {
    let (from, to) = if incoming {
        (format!("{contact}/phone"), "owner@localhost".to_string())
    } else {
        ("owner@localhost/laptop".to_string(), contact.to_string())
    };
    format!(
        "<message xmlns='jabber:client' from='{from}' to='{to}' type='chat' id='m{i:09}'>\
         <body>message number {i}, long enough to look like a sentence someone typed</body>\
         <origin-id xmlns='urn:xmpp:sid:0' id='m{i:09}'/>\
         <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>"
    )
    .into_bytes()
}

/// Writes `count` messages into owner@localhost's archive; returns the ids of the first, the
/// middle and a few scattered entries.
fn fill(data_dir: &std::path::Path, count: usize) -> (String, Vec<String>) {
    let stores = Stores::open_sled(data_dir).expect("open the store");
    let owner = BareJid::new("owner@localhost").expect("jid");
    let started = Instant::now();
    // One message a millisecond, ending now.
    let now = chrono::Utc::now().timestamp_micros() as u64;
    let first_key = now - count as u64 * 1000;
    let rare_every = count / RARE;
    let mut middle = String::new();
    let mut scattered = Vec::new();
    for i in 0..count {
        let contact = if i % rare_every == rare_every / 2 {
            "rare@localhost".to_string()
        } else {
            format!("contact{}@localhost", i % CONTACTS)
        };
        let incoming = i % 2 == 0;
        let key = first_key + i as u64 * 1000;
        let item = ArchivedStanza {
            key,
            nonce: new_nonce(),
            with: if incoming {
                format!("{contact}/phone")
            } else {
                contact.clone()
            },
            stanza: stanza(i, &contact, incoming),
        };
        stores.archive.append(&owner, &item).expect("append");
        if i == count / 2 {
            middle = public_id(item.key, item.nonce);
        }
        if i % (count / 10).max(1) == 7 {
            scattered.push(public_id(item.key, item.nonce));
        }
    }
    stores.flush_blocking().expect("flush");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"figure\":\"archive_fill\",\"messages\":{count},\"seconds\":{seconds:.1},\"per_second\":{:.0}}}",
        count as f64 / seconds
    );
    (middle, scattered)
}

async fn time_query(
    c: &mut Client,
    name: &str,
    fields: &[String],
    set: &str,
    expect: usize,
    messages: usize,
) {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let page = query_at(c, None, None, fields, set, "").await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.error(), None, "{name}");
        assert_eq!(page.results.len(), expect, "{name}");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"figure\":\"archive_page\",\"query\":\"{name}\",\"archive_messages\":{messages},\"results\":{expect},\"median_ms\":{:.2},\"p95_ms\":{:.2},\"max_ms\":{:.2}}}",
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        percentile(&times, 1.0)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut server = TestServer::start_with(Options {
        log_level: "warn,rookery::server=info".into(),
        ..Default::default()
    });
    server.add_user("owner", PASSWORD);
    server.kill9();
    let (middle, scattered) = fill(&server.data_dir(), count);
    let server = TestServer::restart(server);
    let mut c = Client::bound_with(&server, "owner", PASSWORD, "bench").await;

    time_query(
        &mut c,
        "newest page",
        &[],
        "<max>50</max><before/>",
        50,
        count,
    )
    .await;
    time_query(&mut c, "oldest page", &[], "<max>50</max>", 50, count).await;
    time_query(
        &mut c,
        "page after an id in the middle",
        &[],
        &format!("<max>50</max><after>{middle}</after>"),
        50,
        count,
    )
    .await;
    time_query(
        &mut c,
        "newest page with one of 100 contacts",
        &[field("with", &["contact42@localhost"])],
        "<max>50</max><before/>",
        50,
        count,
    )
    .await;
    time_query(
        &mut c,
        "all 50 messages with a rare contact",
        &[field("with", &["rare@localhost"])],
        "<max>50</max>",
        RARE.min(count),
        count,
    )
    .await;
    let ids: Vec<&str> = scattered.iter().map(String::as_str).collect();
    time_query(
        &mut c,
        "10 scattered items by id",
        &[field("ids", &ids)],
        "",
        ids.len(),
        count,
    )
    .await;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let reply = c
            .iq("get", None, "<metadata xmlns='urn:xmpp:mam:2'/>")
            .await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(reply.has_child("metadata", MAM));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"figure\":\"archive_metadata\",\"archive_messages\":{count},\"median_ms\":{:.2},\"max_ms\":{:.2}}}",
        percentile(&times, 0.5),
        percentile(&times, 1.0)
    );
    let size: u64 = walk_size(&server.data_dir());
    println!(
        "{{\"figure\":\"archive_disk\",\"archive_messages\":{count},\"megabytes\":{:.0}}}",
        size as f64 / 1e6
    );
}

fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
