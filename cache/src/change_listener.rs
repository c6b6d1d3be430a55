//! Follows the primary's change feed (`DIRK CHANGES`, through the proxy) and drops the entries
//! that other clients' writes made stale, within milliseconds of their commit.
//!
//! The listener connects to the cache's upstream, subscribes, and applies each
//! [`ChangeNotice`]: changed tables, changed schemas, created or dropped databases, or "all".
//! Notices missed while it was not connected cannot be known, so each time the feed (re)starts
//! the whole cache is flushed once its first notice arrives; from then on nothing is missed. A
//! feed silent for three heartbeats is taken for dead and reconnected. An upstream without a
//! feed (an older server) is retried every few seconds; meanwhile the TTL bounds staleness.

use std::sync::Arc;
use std::time::Duration;

use dirkdb_client::Client;
use dirkdb_core::change_feed::{ChangeNotice, CHANGES_STATEMENT, FEED_HEARTBEAT};
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
pub async fn follow(
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
    let mut client = match Client::connect_timeout(addr, Duration::from_secs(2)).await {
        Ok(c) => c,
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
pub fn apply(store: &ResultStore, notice: &ChangeNotice) {
    if notice.is_empty() {
        return;
    }
    let position = Some(notice.upto);
    if notice.all {
        store.invalidate_all(position);
        return;
    }
    let mut by_db: Vec<(String, Vec<String>)> = Vec::new();
    for (db, table) in &notice.tables {
        let (db, table) = (db.to_lowercase(), table.to_lowercase());
        match by_db.iter_mut().find(|(d, _)| *d == db) {
            Some((_, tables)) => tables.push(table),
            None => by_db.push((db, vec![table])),
        }
    }
    for (db, tables) in by_db {
        store.invalidate_tables(&db, &tables, position);
    }
    for db in notice.schemas.iter().chain(&notice.databases) {
        store.invalidate_database(&db.to_lowercase(), position);
    }
}
