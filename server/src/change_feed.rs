//! The change feed: `DIRK CHANGES;` turns a client connection into a stream of
//! [`ChangeNotice`]s (see `dirkdb_core::change_feed` for the notice and its wire form).
//!
//! How a feed flows:
//!
//! 1. The listener sees `DIRK CHANGES` (any case, any whitespace, at any point of a connection),
//!    ends the connection's session (an open transaction is rolled back, so no writer gate
//!    lingers behind a feed) and calls [`serve`].
//! 2. [`serve`] sends a first notice with `upto` = the committed position and nothing changed.
//! 3. Whenever the committed position moves ([`WritePath::subscribe`]), [`next_notice`] reads the
//!    entries after the feed's cursor from the in-memory backlog, in batches of [`BATCH`] under
//!    the backlog's lock, without copying them, and folds them into one notice: `tables` for row
//!    entries, `schemas` for DDL, `databases` for CREATE/DROP DATABASE, each sorted and listed
//!    once, with `upto` = the committed position read at the start. `rows` lists the key
//!    objects of the changed rows (old and new, each once per table) unless the notice would
//!    list more than `replication.oplog.changeFeedRowKeys` of them: then its tables are reported
//!    as changed as a whole (no `rows`), as the first notice's `keys` announces.
//! 4. An idle feed sends an empty notice (`upto` = the cursor) every [`FEED_HEARTBEAT`].
//! 5. `DIRK SYNC <n>` from the client records the written position; once the cursor reaches it
//!    an empty notice with `synced: n` follows (a newer request replaces an unanswered one).
//! 6. The feed ends when the client closes its socket (anything else it sends after
//!    `DIRK CHANGES` is read and ignored) or when the server shuts down (the listener drops the
//!    feed; the client sees the connection close).
//!
//! Why nothing is skipped: a writer pushes its entries into the backlog before it publishes the
//! committed sequence, so every position the feed reads has its entries in the backlog unless
//! they left it. When they did — the feed fell more than the backlog's size behind, the backlog
//! restarted after a gap, a replica applied entries (its apply path publishes positions only,
//! not backlog entries), or a full-sync install reset the instance's history (the backlog's
//! generation, [`WritePath::resets`], changed, possibly to an equal or lower position) — the
//! notice says `all: true` instead of listing anything. So on a REPLICA a feed works, but every
//! notice after the first that moves `upto` is `all: true`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

pub(crate) use dirkdb_core::change_feed::is_changes_statement;
use dirkdb_core::change_feed::{sync_token, ChangeNotice, RowImage, RowKey, FEED_HEARTBEAT};
use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::Frame;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::oplog::{Entry, Op};
use crate::state::ServerState;
use crate::write_path::WritePath;

/// Backlog entries read per lock of the backlog.
pub(crate) const BATCH: usize = 1000;

/// Where a feed stands: the position its last notice brought the reader to, and the backlog
/// generation it read that position in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FeedCursor {
    /// `upto` of the last notice sent.
    pub upto: u64,
    /// [`WritePath::resets`] when `upto` was read.
    pub resets: u64,
}

impl FeedCursor {
    /// A cursor at the committed position: where a new feed starts.
    pub(crate) fn start(path: &WritePath) -> FeedCursor {
        let resets = path.resets();
        FeedCursor {
            upto: path.committed(),
            resets,
        }
    }

    /// The first notice of a feed: its position, nothing changed, and how many row keys a
    /// notice lists at most.
    pub(crate) fn hello(&self, max_row_keys: u64) -> ChangeNotice {
        ChangeNotice {
            keys: Some(max_row_keys),
            ..self.notice()
        }
    }

    /// A notice of the cursor's position with nothing changed (a heartbeat).
    pub(crate) fn notice(&self) -> ChangeNotice {
        ChangeNotice {
            upto: self.upto,
            ..ChangeNotice::default()
        }
    }
}

/// What a run of entries touched.
#[derive(Debug, Default)]
struct Touched {
    /// Tables per database.
    tables: BTreeMap<String, BTreeSet<String>>,
    schemas: BTreeSet<String>,
    databases: BTreeSet<String>,
    /// Key objects (as the oplog stores them) per database and table.
    rows: BTreeMap<(String, String), BTreeSet<String>>,
    /// Keys listed in `rows`.
    row_keys: u64,
    /// Most keys to list; past it, `rows` is dropped and `overflowed` set.
    max_row_keys: u64,
    /// Tables with a row entry that names no key: reported whole.
    whole: BTreeSet<(String, String)>,
    overflowed: bool,
    /// Per database and table, each listed key's row after the entries so far (its columns as
    /// the oplog stores them), or `None`: no row has the key now, or its image did not fit.
    images: BTreeMap<(String, String), BTreeMap<String, Option<String>>>,
    /// Bytes of the images recorded (replaced ones included).
    image_bytes: u64,
    /// Most image bytes to record.
    max_image_bytes: u64,
}

/// How much one notice lists at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeedLimits {
    /// Row keys (`replication.oplog.changeFeedRowKeys`).
    pub row_keys: u64,
    /// Bytes of row images (`replication.oplog.changeFeedRowImageBytes`).
    pub image_bytes: u64,
}

impl FeedLimits {
    pub(crate) fn of(oplog: &dirkdb_core::config::OplogConfig) -> FeedLimits {
        FeedLimits {
            row_keys: oplog.change_feed_row_keys,
            image_bytes: oplog.change_feed_row_image_bytes,
        }
    }
}

impl Touched {
    fn new(limits: FeedLimits) -> Touched {
        Touched {
            max_row_keys: limits.row_keys,
            max_image_bytes: limits.image_bytes,
            ..Touched::default()
        }
    }

    fn add_row_keys(&mut self, entry: &Entry) {
        if self.overflowed {
            return;
        }
        if entry.old_key.is_none() && entry.new_key.is_none() {
            self.whole.insert((entry.db.clone(), entry.table.clone()));
        }
        for key in [&entry.old_key, &entry.new_key].into_iter().flatten() {
            let slot = (entry.db.clone(), entry.table.clone());
            if self.rows.entry(slot).or_default().insert(key.clone()) {
                self.row_keys += 1;
            }
            if self.row_keys > self.max_row_keys {
                self.overflowed = true;
                self.rows.clear();
                self.images.clear();
                return;
            }
        }
        self.add_images(entry);
    }

    /// Records what row each key of `entry` names afterwards: the old key of a DELETE, or of an
    /// UPDATE that changed the key, names none; the new key names the entry's row.
    fn add_images(&mut self, entry: &Entry) {
        let slot = (entry.db.clone(), entry.table.clone());
        let moved = entry.old_key != entry.new_key;
        if let (Some(old), true) = (&entry.old_key, moved) {
            self.images
                .entry(slot.clone())
                .or_default()
                .insert(old.clone(), None);
        }
        if let Some(new) = &entry.new_key {
            let size = entry.data.as_ref().map_or(0, |d| d.len() as u64);
            let fits = self.image_bytes + size <= self.max_image_bytes;
            let image = entry.data.clone().filter(|_| fits);
            if image.is_some() {
                self.image_bytes += size;
            }
            self.images
                .entry(slot)
                .or_default()
                .insert(new.clone(), image);
        }
    }

    fn add(&mut self, entry: &Entry) {
        match entry.op {
            Op::Insert | Op::Update | Op::Remove => {
                self.add_row_keys(entry);
                // Copies a name only the first time it is seen: a notice may cover many entries.
                match self.tables.get_mut(&entry.db) {
                    Some(tables) if tables.contains(&entry.table) => {}
                    Some(tables) => {
                        tables.insert(entry.table.clone());
                    }
                    None => {
                        let tables = BTreeSet::from([entry.table.clone()]);
                        self.tables.insert(entry.db.clone(), tables);
                    }
                }
            }
            Op::Ddl => {
                if !self.schemas.contains(&entry.db) {
                    self.schemas.insert(entry.db.clone());
                }
            }
            Op::CreateDatabase | Op::DropDatabase => {
                if !self.databases.contains(&entry.table) {
                    self.databases.insert(entry.table.clone());
                }
            }
        }
    }

    fn into_notice(self, upto: u64) -> ChangeNotice {
        let whole = self.whole;
        let mut images_of = self.images;
        let mut rows = Vec::new();
        let mut images = Vec::new();
        for ((db, table), keys) in self.rows {
            let slot = (db, table);
            if whole.contains(&slot) {
                continue;
            }
            // A key the oplog stores is an object; anything else leaves the table whole.
            let parsed: Option<Vec<RowKey>> =
                keys.iter().map(|k| serde_json::from_str(k).ok()).collect();
            let Some(parsed) = parsed else { continue };
            let mut table_images = images_of.remove(&slot).unwrap_or_default();
            images.push(
                keys.iter()
                    .map(|k| RowImage::from_json(table_images.remove(k).flatten()?))
                    .collect::<Vec<_>>(),
            );
            rows.push((slot.0, slot.1, parsed));
        }
        if images.iter().flatten().all(Option::is_none) {
            images.clear();
        }
        ChangeNotice {
            rows,
            images,
            synced: None,
            upto,
            tables: self
                .tables
                .into_iter()
                .flat_map(|(db, tables)| tables.into_iter().map(move |t| (db.clone(), t)))
                .collect(),
            schemas: self.schemas.into_iter().collect(),
            databases: self.databases.into_iter().collect(),
            all: false,
            keys: None,
        }
    }
}

/// The notice that brings `cursor` to the committed position, and moves the cursor there;
/// `None` when nothing committed since (and the history was not reset). The notice lists what
/// the entries in between touched, or says `all: true` when the backlog cannot serve them
/// all, when the position went backwards, or when the backlog's generation changed.
pub(crate) fn next_notice(
    path: &WritePath,
    cursor: &mut FeedCursor,
    limits: FeedLimits,
) -> Option<ChangeNotice> {
    let resets = path.resets();
    let committed = path.committed();
    let everything = |cursor: &mut FeedCursor| {
        // Generation first: a reset bumps it before it publishes its position, so a position
        // read after it is never older than the generation recorded with it.
        let resets = path.resets();
        *cursor = FeedCursor {
            upto: path.committed(),
            resets,
        };
        Some(ChangeNotice {
            upto: cursor.upto,
            all: true,
            ..ChangeNotice::default()
        })
    };
    if resets != cursor.resets || committed < cursor.upto {
        return everything(cursor);
    }
    if committed == cursor.upto {
        return None;
    }
    let mut touched = Touched::new(limits);
    let mut at = cursor.upto;
    while at < committed {
        let visit = path.visit_backlog(at, committed, BATCH, |e| touched.add(e));
        match visit.last {
            Some(last) if visit.resets == cursor.resets => at = last,
            _ => return everything(cursor),
        }
    }
    cursor.upto = committed;
    Some(touched.into_notice(committed))
}

/// Serves a change feed on `conn` until the client closes it. Runs until cancelled otherwise:
/// the caller races it against the server's shutdown.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ServerConnection<S>,
    state: &ServerState,
) -> Result<(), ConnectionError> {
    let path = &state.write_path;
    let mut commits = path.subscribe();
    commits.borrow_and_update();
    let mut limits = FeedLimits::of(&state.oplog_limits);
    if state.settings.ownership.active() {
        // A MULTI_PRIMARY master's rows also change by its peers' streams, which its backlog
        // does not hold: its images would not say what a row is now.
        limits.image_bytes = 0;
    }
    let mut cursor = FeedCursor::start(path);
    send(conn, &cursor.hello(limits.row_keys)).await?;
    let mut last_sent = Instant::now();
    // The newest `DIRK SYNC` not answered yet: its token and the position written when it came.
    let mut sync: Option<(u64, u64)> = None;
    loop {
        if let Some(notice) = next_notice(path, &mut cursor, limits) {
            send(conn, &notice).await?;
            last_sent = Instant::now();
        }
        if let Some((token, _)) = sync.filter(|(_, target)| cursor.upto >= *target) {
            let answer = ChangeNotice {
                synced: Some(token),
                ..cursor.notice()
            };
            send(conn, &answer).await?;
            sync = None;
            last_sent = Instant::now();
        }
        let wait = FEED_HEARTBEAT.saturating_sub(last_sent.elapsed());
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(wait) => {
                send(conn, &cursor.notice()).await?;
                last_sent = Instant::now();
            }
            incoming = conn.read_statement() => match incoming {
                // Written before now: the changes a reader's earlier reads can have seen.
                Ok(Some(Incoming::Statement(sql))) => {
                    if let Some(token) = sync_token(&sql) {
                        sync = Some((token, path.written()));
                    }
                }
                // Anything else the client sends is dropped; its leaving ends the feed.
                Ok(Some(_)) => {}
                _ => return Ok(()),
            },
        }
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ServerConnection<S>,
    notice: &ChangeNotice,
) -> Result<(), ConnectionError> {
    conn.send(&Frame::Message(notice.to_text())).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn entry(seq: u64, db: &str, table: &str, op: Op) -> Entry {
        Entry {
            seq,
            ts: 0,
            db: db.into(),
            table: table.into(),
            op,
            old_key: None,
            new_key: None,
            data: None,
            crc: 0,
        }
    }

    /// At most `row_keys` keys a notice, and no images.
    fn keys(row_keys: u64) -> FeedLimits {
        FeedLimits {
            row_keys,
            image_bytes: 0,
        }
    }

    fn path_at(seq: u64) -> WritePath {
        WritePath::new(Arc::new(AtomicU64::new(seq)), Duration::from_millis(50))
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(d, t)| (d.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn lists_each_table_schema_and_database_once() {
        let path = path_at(0);
        let mut cursor = FeedCursor::start(&path);
        assert_eq!(cursor, FeedCursor { upto: 0, resets: 0 });
        assert_eq!(next_notice(&path, &mut cursor, keys(100)), None);
        path.publish_entries(vec![
            entry(1, "", "shop", Op::CreateDatabase),
            entry(2, "shop", "t", Op::Ddl),
            entry(3, "shop", "t", Op::Insert),
            entry(4, "shop", "t", Op::Update),
            entry(5, "shop", "a", Op::Remove),
            entry(6, "shop", "t", Op::Insert),
            entry(7, "", "old", Op::DropDatabase),
            entry(8, "b", "t", Op::Insert),
        ]);
        let notice = next_notice(&path, &mut cursor, keys(100)).unwrap();
        assert_eq!(
            notice,
            ChangeNotice {
                upto: 8,
                tables: pairs(&[("b", "t"), ("shop", "a"), ("shop", "t")]),
                schemas: vec!["shop".into()],
                databases: vec!["old".into(), "shop".into()],
                all: false,
                rows: vec![],
                images: vec![],
                synced: None,
                keys: None,
            }
        );
        assert_eq!(cursor.upto, 8);
        assert_eq!(next_notice(&path, &mut cursor, keys(100)), None);
    }

    fn keyed(seq: u64, table: &str, op: Op, old: Option<&str>, new: Option<&str>) -> Entry {
        Entry {
            old_key: old.map(str::to_string),
            new_key: new.map(str::to_string),
            ..entry(seq, "d", table, op)
        }
    }

    #[test]
    fn lists_old_and_new_row_keys_once_within_the_limit() {
        let path = path_at(0);
        let mut cursor = FeedCursor::start(&path);
        assert_eq!(cursor.hello(3).to_text(), r#"{"upto":0,"keys":3}"#);
        path.publish_entries(vec![
            keyed(1, "t", Op::Insert, None, Some(r#"{"rowid":1}"#)),
            keyed(
                2,
                "t",
                Op::Update,
                Some(r#"{"rowid":1}"#),
                Some(r#"{"rowid":9}"#),
            ),
            keyed(3, "u", Op::Remove, Some(r#"{"rowid":4,"e":"x"}"#), None),
        ]);
        let notice = next_notice(&path, &mut cursor, keys(3)).unwrap();
        assert_eq!(
            notice.to_text(),
            r#"{"upto":3,"tables":[["d","t"],["d","u"]],"rows":[["d","t",[{"rowid":1},{"rowid":9}]],["d","u",[{"e":"x","rowid":4}]]]}"#
        );
        // One key more than the limit: the tables are reported whole.
        path.publish_entries(vec![
            keyed(4, "t", Op::Insert, None, Some(r#"{"rowid":2}"#)),
            keyed(5, "t", Op::Insert, None, Some(r#"{"rowid":3}"#)),
            keyed(6, "t", Op::Insert, None, Some(r#"{"rowid":4}"#)),
            keyed(7, "u", Op::Insert, None, Some(r#"{"rowid":5}"#)),
        ]);
        let notice = next_notice(&path, &mut cursor, keys(3)).unwrap();
        assert_eq!(
            notice.to_text(),
            r#"{"upto":7,"tables":[["d","t"],["d","u"]]}"#
        );
    }

    fn with_row(mut e: Entry, data: &str) -> Entry {
        e.data = Some(data.to_string());
        e
    }

    #[test]
    fn row_images_say_what_each_key_names_after_the_notice() {
        let entries = || {
            vec![
                with_row(
                    keyed(1, "t", Op::Insert, None, Some(r#"{"rowid":1}"#)),
                    r#"{"id":1,"v":"a"}"#,
                ),
                with_row(
                    keyed(
                        2,
                        "t",
                        Op::Update,
                        Some(r#"{"rowid":1}"#),
                        Some(r#"{"rowid":1}"#),
                    ),
                    r#"{"id":1,"v":"b"}"#,
                ),
                with_row(
                    keyed(
                        3,
                        "t",
                        Op::Update,
                        Some(r#"{"rowid":2}"#),
                        Some(r#"{"rowid":3}"#),
                    ),
                    r#"{"id":3,"v":"c"}"#,
                ),
                with_row(
                    keyed(4, "u", Op::Remove, Some(r#"{"rowid":4}"#), None),
                    r#"{"id":4}"#,
                ),
            ]
        };
        let path = path_at(0);
        let mut cursor = FeedCursor::start(&path);
        path.publish_entries(entries());
        let roomy = FeedLimits {
            row_keys: 100,
            image_bytes: 1000,
        };
        let notice = next_notice(&path, &mut cursor, roomy).unwrap();
        assert_eq!(
            notice.to_text(),
            r#"{"upto":4,"tables":[["d","t"],["d","u"]],"rows":[["d","t",[{"rowid":1},{"rowid":2},{"rowid":3}]],["d","u",[{"rowid":4}]]],"images":[[{"id":1,"v":"b"},null,{"id":3,"v":"c"}],[null]]}"#
        );
        // Past the byte budget, later images are not sent: key 1's second image does not fit.
        let path = path_at(0);
        let mut cursor = FeedCursor::start(&path);
        path.publish_entries(entries());
        let tight = FeedLimits {
            row_keys: 100,
            image_bytes: 20,
        };
        let notice = next_notice(&path, &mut cursor, tight).unwrap();
        assert_eq!(notice.images, Vec::<Vec<Option<RowImage>>>::new());
        // No images at all when they are off, and none past the key limit.
        let path = path_at(0);
        let mut cursor = FeedCursor::start(&path);
        path.publish_entries(entries());
        let few = FeedLimits {
            row_keys: 2,
            image_bytes: 1000,
        };
        let notice = next_notice(&path, &mut cursor, few).unwrap();
        assert!(
            notice.rows.is_empty() && notice.images.is_empty(),
            "{notice:?}"
        );
    }

    #[test]
    fn spans_many_batches_in_one_notice() {
        let path = path_at(0);
        let mut cursor = FeedCursor::start(&path);
        let n = (BATCH * 3 + 7) as u64;
        path.publish_entries((1..=n).map(|s| entry(s, "d", "t", Op::Insert)).collect());
        let notice = next_notice(&path, &mut cursor, keys(100)).unwrap();
        assert_eq!(notice.upto, n);
        assert!(!notice.all);
        assert_eq!(notice.tables, pairs(&[("d", "t")]));
    }

    #[test]
    fn says_all_when_the_backlog_cannot_serve() {
        // Fell out of the backlog (more than its size committed at once).
        let path = path_at(0);
        let mut cursor = FeedCursor::start(&path);
        path.publish_entries(
            (1..=25_000)
                .map(|s| entry(s, "d", "t", Op::Insert))
                .collect(),
        );
        let notice = next_notice(&path, &mut cursor, keys(100)).unwrap();
        assert_eq!(notice.to_text(), r#"{"upto":25000,"all":true}"#);
        assert_eq!(next_notice(&path, &mut cursor, keys(100)), None);

        // A position published without its entries (a replica applying).
        path.publish(25_003);
        let notice = next_notice(&path, &mut cursor, keys(100)).unwrap();
        assert_eq!(notice.to_text(), r#"{"upto":25003,"all":true}"#);

        // Entries listed up to a hole, then the hole: all.
        path.publish_entries(vec![entry(25_004, "d", "u", Op::Insert)]);
        path.publish(25_006);
        let notice = next_notice(&path, &mut cursor, keys(100)).unwrap();
        assert!(notice.all && notice.tables.is_empty(), "{notice:?}");
        assert_eq!(notice.upto, 25_006);
    }

    #[test]
    fn says_all_when_the_history_was_reset() {
        let path = path_at(10);
        let mut cursor = FeedCursor::start(&path);
        // Reset to the same position: nothing moved, yet everything may have changed.
        path.reset(10);
        let notice = next_notice(&path, &mut cursor, keys(100)).unwrap();
        assert_eq!(notice.to_text(), r#"{"upto":10,"all":true}"#);
        assert_eq!(
            cursor,
            FeedCursor {
                upto: 10,
                resets: 1
            }
        );
        // Reset to a lower position, then new entries that the backlog holds: still all.
        path.reset(4);
        path.publish_entries(vec![entry(5, "d", "t", Op::Insert)]);
        path.publish_entries(vec![entry(6, "d", "t", Op::Insert)]);
        let notice = next_notice(&path, &mut cursor, keys(100)).unwrap();
        assert_eq!(notice.to_text(), r#"{"upto":6,"all":true}"#);
        // From there on, precise again.
        path.publish_entries(vec![entry(7, "d", "x", Op::Update)]);
        let notice = next_notice(&path, &mut cursor, keys(100)).unwrap();
        assert_eq!(notice.tables, pairs(&[("d", "x")]));
        assert!(!notice.all);
        // Going backwards without a reset (never expected) is all too.
        let mut ahead = FeedCursor {
            upto: 100,
            resets: path.resets(),
        };
        assert!(next_notice(&path, &mut ahead, keys(100)).unwrap().all);
        assert_eq!(ahead.upto, 7);
    }
}
