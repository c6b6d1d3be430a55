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

use std::sync::Arc;
use std::time::Duration;

use dirkdb_core::change_feed::{ChangeNotice, RowKey, CHANGES_STATEMENT, FEED_HEARTBEAT};
use dirkdb_core::frame::Frame;
use tokio::sync::watch;

use crate::result_store::{FeedState, ResultStore};
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
    loop {
        let frame = match tokio::time::timeout(silence, client.next_frame()).await {
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
        CacheStats::bump(&stats.feed_notices);
        store.set_feed(FeedState {
            connected: true,
            upto: notice.upto,
        });
    }
}

/// Drops what one notice says changed.
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
    type Changes = (Vec<String>, Vec<(String, Vec<RowKey>)>);
    let mut by_db: std::collections::BTreeMap<String, Changes> = Default::default();
    for (db, table) in &notice.tables {
        let rows = notice
            .rows
            .iter()
            .find(|(d, t, _)| d == db && t == table)
            .map(|(_, _, keys)| keys.clone());
        let (db, table) = (db.to_lowercase(), table.to_lowercase());
        let slot = by_db.entry(db).or_default();
        match rows {
            Some(keys) => slot.1.push((table, keys)),
            None => slot.0.push(table),
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
