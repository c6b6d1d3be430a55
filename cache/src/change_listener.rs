//! Follows the primary's change feed (`DIRK CHANGES`, through the proxy) and drops the entries
//! that other clients' writes made stale, within milliseconds of their commit.
//!
//! The listener connects to the cache's upstream, subscribes, and applies each
//! [`ChangeNotice`]: changed rows by their keys (precise drops), tables changed as a whole,
//! changed schemas, created or dropped databases, or "all".
//! Notices missed while it was not connected cannot be known, so each time the feed (re)starts
//! the whole cache is flushed once its first notice arrives; from then on nothing is missed. A
//! feed silent for three heartbeats is taken for dead and reconnected. An upstream without a
//! feed (an older server) is retried every few seconds; meanwhile the TTL bounds staleness.
//!
//! When the store kept an answer it may later refresh from a row image, the listener asks the
//! feed for a sync (`DIRK SYNC <n>`, one at a time) and tells the store when it is answered
//! (see `crate::result_store`'s syncs and `crate::row_refresh`).

use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::change_feed::{
    sync_statement, ChangeNotice, RowImage, CHANGES_STATEMENT, FEED_HEARTBEAT,
};
use dirkdb_core::frame::Frame;
use tokio::sync::watch;

use crate::result_store::{ChangedRows, FeedState, ResultStore};
use crate::stats::CacheStats;

/// Longest pause between two attempts to subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a feed ended.
enum FeedEnd {
    /// The cache is stopping.
    Stop,
    /// The upstream refused the subscription.
    Refused(String),
    /// The connection failed or fell silent.
    Lost(String),
}

/// Keeps a feed running until `stop` turns true.
pub(crate) async fn follow(
    addr: String,
    store: Arc<ResultStore>,
    stats: Arc<CacheStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let end = tokio::select! {
            end = subscribe(&addr, &store, &stats) => end,
            _ = stop.wait_for(|s| *s) => FeedEnd::Stop,
        };
        let connected = store_feed_lost(&store);
        let pause = match end {
            FeedEnd::Stop => return,
            FeedEnd::Refused(reason) => {
                tracing::warn!(upstream = %addr, %reason, "the upstream has no change feed; other clients' writes are bounded by the TTL only");
                Duration::from_secs(5)
            }
            FeedEnd::Lost(reason) => {
                if connected {
                    tracing::warn!(upstream = %addr, %reason, "change feed lost; reconnecting");
                    backoff = Duration::from_millis(100);
                }
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Marks the feed down; returns whether it was up.
fn store_feed_lost(store: &ResultStore) -> bool {
    let was = store.feed_connected();
    store.set_feed(FeedState {
        connected: false,
        upto: store.seen(),
    });
    was
}

async fn subscribe(addr: &str, store: &ResultStore, stats: &CacheStats) -> FeedEnd {
    let addrs = crate::upstream::addresses(addr);
    let mut client = match crate::upstream::connect_first(&addrs, 0, Duration::from_secs(2)).await {
        Ok((c, _)) => c,
        Err(e) => return FeedEnd::Lost(e.to_string()),
    };
    if let Err(e) = crate::auth::login(&mut client, None).await {
        return FeedEnd::Lost(e);
    }
    if let Err(e) = client.send_statement(CHANGES_STATEMENT).await {
        return FeedEnd::Lost(e.to_string());
    }
    let silence = FEED_HEARTBEAT * 3;
    let mut first = true;
    // The sync asked and not answered yet (one at a time: answers come in order anyway).
    let mut asked: Option<u64> = None;
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout(silence, client.next_frame()) => read,
            token = store.next_sync(), if asked.is_none() && !first => {
                if let Err(e) = client.send_statement(&sync_statement(token)).await {
                    return FeedEnd::Lost(e.to_string());
                }
                asked = Some(token);
                continue;
            }
        };
        let frame = match read {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => return FeedEnd::Lost(e.to_string()),
            Err(_) => return FeedEnd::Lost(format!("no notice for {} ms", silence.as_millis())),
        };
        let Frame::Message(text) = frame else {
            return FeedEnd::Lost("unexpected frame on the change feed".into());
        };
        if let Some(reason) = text.strip_prefix(dirkdb_core::frame::ERROR_PREFIX) {
            return if first {
                FeedEnd::Refused(reason.to_string())
            } else {
                FeedEnd::Lost(reason.to_string())
            };
        }
        let notice = match ChangeNotice::from_text(&text) {
            Ok(n) => n,
            Err(e) => return FeedEnd::Lost(format!("bad change notice: {e}")),
        };
        if first {
            // Anything could have changed while no feed was listening.
            store.invalidate_all(Some(notice.upto));
            CacheStats::bump(&stats.flushes);
            tracing::info!(upstream = %addr, position = notice.upto, "following the primary's change feed");
            first = false;
        } else {
            apply(store, &notice);
        }
        if let Some(token) = notice.synced {
            store.synced(token);
            CacheStats::bump(&stats.feed_syncs);
            asked = asked.filter(|a| *a > token);
        }
        CacheStats::bump(&stats.feed_notices);
        store.set_feed(FeedState {
            connected: true,
            upto: notice.upto,
        });
    }
}

/// The images of `notice.rows[i]`'s `keys` keys, when the notice sent them in step with its
/// rows (else none: the rows' entries are dropped, not refreshed).
fn images_beside(notice: &ChangeNotice, i: usize, keys: usize) -> Vec<Option<RowImage>> {
    match notice.images.get(i) {
        Some(images) if notice.images.len() == notice.rows.len() && images.len() == keys => {
            images.clone()
        }
        _ => Vec::new(),
    }
}

/// Drops what one notice says changed (or refreshes it, see `crate::row_refresh`).
pub(crate) fn apply(store: &ResultStore, notice: &ChangeNotice) {
    if notice.is_empty() {
        return;
    }
    let position = Some(notice.upto);
    if notice.all {
        store.invalidate_all(position);
        return;
    }
    // Per database: tables changed as a whole, and tables whose changed rows are listed.
    type Changes = (Vec<String>, Vec<ChangedRows>);
    let mut by_db: std::collections::BTreeMap<String, Changes> = Default::default();
    for (db, table) in &notice.tables {
        let rows = notice
            .rows
            .iter()
            .enumerate()
            .find(|(_, (d, t, _))| d == db && t == table)
            .map(|(i, (_, _, keys))| ChangedRows {
                table: table.to_lowercase(),
                keys: keys.clone(),
                images: images_beside(notice, i, keys.len()),
            });
        let slot = by_db.entry(db.to_lowercase()).or_default();
        match rows {
            Some(rows) => slot.1.push(rows),
            None => slot.0.push(table.to_lowercase()),
        }
    }
    for (db, (whole, rows)) in by_db {
        if !whole.is_empty() {
            store.invalidate_tables(&db, &whole, position);
        }
        if !rows.is_empty() {
            store.invalidate_rows(&db, &rows, position);
        }
    }
    for db in notice.schemas.iter().chain(&notice.databases) {
        store.invalidate_database(&db.to_lowercase(), position);
    }
}
