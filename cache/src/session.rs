//! One client's session through the cache.
//!
//! Each statement is analyzed ([`crate::statement_analysis`]). A cacheable read outside a
//! transaction is answered from the store when a fresh entry exists; otherwise it joins or leads
//! a flight, and the leader's answer (streamed to its client as it arrives) is kept when it is
//! small enough and nothing it read changed meanwhile. Everything else goes to the session's own
//! upstream connection, unchanged. A write's answer is held until the cache has dropped what the
//! write can have changed: its position is asked with `DIRK POSITION`, sent right behind the
//! write (pipelined: no round trip of its own), and the answer waits until the primary's change
//! feed has reported that position, whose notices drop exactly the rows the write changed
//! (triggers and foreign-key actions included); without a feed, or when it does not report in
//! time, the whole database's entries go (the other database too that a `CREATE`/`DROP DATABASE`
//! names).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::{
    encode_frame, Column, Frame, FrameDecoder, PageFrame, RawKind, RelationPage,
};
use dirkdb_core::sql::transaction::{TransactionEnd, TransactionState};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::result_store::{CacheKey, Dependencies, FlightOutcome, FlightRole, ResultStore};
use crate::statement_analysis::{
    Analysis, AnalysisMemo, CacheCommand, CacheableRead, WriteTargets,
};
use crate::stats::CacheStats;
use crate::table_keys::SCHEMA_QUERY;
use crate::upstream::{Retry, Upstream, UpstreamError};
use crate::view_map::{DbSchema, ANY_TABLE};

/// How long a write's answer waits for the change feed to report it.
const FEED_WAIT: Duration = Duration::from_millis(500);

/// Room a session keeps between frames for the frame it passes on; a larger one is freed.
const FRAME_BUF_KEPT: usize = 256 * 1024;

/// Asks the upstream for the session's last write position; sent right behind each write.
const POSITION_STATEMENT: &str = "DIRK POSITION";

/// What every session shares.
pub(crate) struct SessionContext {
    /// The kept results.
    pub store: Arc<ResultStore>,
    /// The counters.
    pub stats: Arc<CacheStats>,
    /// Where statements go.
    pub upstream_addr: String,
    /// Longest wait for one upstream answer.
    pub statement_timeout: Duration,
    /// Largest statement accepted from a client.
    pub max_statement_bytes: usize,
    /// Bytes held by the large statements running now (`limits.maxInFlightStatementBytes`).
    pub in_flight: Arc<dirkdb_core::in_flight::InFlight>,
    /// Analyses of statement texts seen recently.
    pub analyses: AnalysisMemo,
    /// Users and grants (see [`crate::auth`]).
    pub security: Arc<dirkdb_core::security::Security>,
    /// False when the cache keeps nothing (`CacheSettings::pass_through`): every statement
    /// then goes upstream as is, and a write's answer waits for nothing.
    pub keeps: bool,
}

/// Ends a statement's handling: an upstream failure is answered to the client as an error
/// (the session goes on); the client's own failure ends the session.
async fn answer_failure<S: AsyncRead + AsyncWrite + Unpin>(
    result: Result<(), ForwardError>,
    out: &mut ServerConnection<S>,
) -> Result<(), ConnectionError> {
    match result {
        Ok(()) => Ok(()),
        Err(ForwardError::Client(e)) => Err(e),
        Err(ForwardError::Upstream { error, .. }) => out.send(&Frame::error(error)).await,
    }
}

/// How passing a statement on ended.
struct Forwarded {
    /// The whole response, when it fit under the cap.
    kept: Option<Bytes>,
    /// True when the answer was an error.
    failed: bool,
    /// The final frame, when it was held back.
    held: Option<Bytes>,
}

/// Why passing a statement on failed.
enum ForwardError {
    /// The client went away.
    Client(ConnectionError),
    /// The upstream failed; `wrote` is true when part of the answer already reached the client.
    Upstream { error: UpstreamError, wrote: bool },
}

impl From<ConnectionError> for ForwardError {
    fn from(e: ConnectionError) -> Self {
        ForwardError::Client(e)
    }
}

/// Per-client state.
pub(crate) struct CacheSession {
    ctx: Arc<SessionContext>,
    upstream: Upstream,
    db: Option<String>,
    /// `db` in lower case, as the store names it (empty when none).
    db_key: Arc<str>,
    txn: TransactionState,
    txn_writes: Vec<WriteTargets>,
    /// Who the client authenticated as (`None` before any `AUTH`).
    identity: Option<dirkdb_core::security::ConnectionAuth>,
    /// The frame being passed on, as it came from the upstream (reused for every frame).
    frame_buf: BytesMut,
}

impl CacheSession {
    /// A session with no current database and no upstream connection yet.
    pub(crate) fn new(ctx: Arc<SessionContext>) -> CacheSession {
        let upstream = Upstream::new(ctx.upstream_addr.clone(), ctx.statement_timeout);
        CacheSession {
            ctx,
            upstream,
            db: None,
            db_key: "".into(),
            txn: TransactionState::default(),
            txn_writes: Vec::new(),
            identity: None,
            frame_buf: BytesMut::new(),
        }
    }

    /// The client's identity after an `AUTH`: kept answers are served by its grants, and the
    /// upstream connection runs for it.
    pub(crate) fn set_identity(&mut self, auth: dirkdb_core::security::ConnectionAuth) {
        self.upstream
            .set_user(auth.effective_name().map(str::to_string));
        self.identity = Some(auth);
    }

    /// Whether the client has a transaction open (its idle limit is
    /// `limits.idleInTransactionTimeoutMs`).
    pub(crate) fn in_transaction(&self) -> bool {
        self.txn.open
    }

    /// Answers one statement with one complete response.
    pub(crate) async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        incoming: Incoming,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        let sql = match incoming.into_statement(self.ctx.max_statement_bytes) {
            Ok(sql) => sql,
            Err(refusal) => return out.send(&refusal).await,
        };
        let _held = match self.ctx.in_flight.hold(sql.len()) {
            Ok(held) => held,
            Err(refusal) => return out.send(&Frame::error(refusal)).await,
        };
        if let Err(e) = dirkdb_core::sql::limits::check_expression_depth(&sql) {
            return out.send(&Frame::error(e)).await;
        }
        let analysis = self.ctx.analyses.analyze(&sql);
        if !self.ctx.keeps {
            return self.pass_through(&sql, &analysis, out).await;
        }
        let result = match &*analysis {
            Analysis::Command(command) => return self.command(*command, out).await,
            Analysis::Refused(reason) => return out.send(&Frame::error(reason)).await,
            Analysis::Cacheable(read)
                if !self.txn.open
                    && crate::auth::may_read_kept(self.identity.as_ref(), self.db.as_deref()) =>
            {
                self.cached_read(&sql, read, out).await
            }
            Analysis::Cacheable(_) | Analysis::Uncacheable(_) => {
                CacheStats::bump(&self.ctx.stats.uncacheable);
                self.pass(&sql, out, self.read_retry()).await
            }
            Analysis::Use(db) => self.use_database(&sql, db.clone(), out).await,
            Analysis::Transaction(control) => self.transaction(&sql, control.clone(), out).await,
            Analysis::Write(targets) => self.write(&sql, targets.clone(), out).await,
        };
        answer_failure(result, out).await
    }

    /// Passes a statement on when the cache keeps nothing: the cache's own commands are still
    /// answered here, and `USE` and transactions are still followed (the upstream connection is
    /// replaced after a break as usual).
    async fn pass_through<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        analysis: &Analysis,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        let result = match analysis {
            Analysis::Command(command) => return self.command(*command, out).await,
            Analysis::Refused(reason) => return out.send(&Frame::error(reason)).await,
            Analysis::Use(db) => self.use_database(sql, db.clone(), out).await,
            Analysis::Transaction(control) => self.transaction(sql, control.clone(), out).await,
            Analysis::Write(_) => {
                CacheStats::bump(&self.ctx.stats.writes);
                self.pass(sql, out, self.write_retry()).await
            }
            Analysis::Cacheable(_) | Analysis::Uncacheable(_) => {
                CacheStats::bump(&self.ctx.stats.uncacheable);
                self.pass(sql, out, self.read_retry()).await
            }
        };
        answer_failure(result, out).await
    }

    /// The store's name for the session's database.
    fn db_key(&self) -> Arc<str> {
        self.db_key.clone()
    }

    /// What may be sent again if the upstream breaks around a read (see [`Retry`]).
    fn read_retry(&self) -> Retry {
        if self.txn.open {
            Retry::Never
        } else {
            Retry::Read
        }
    }

    /// The same for anything else.
    fn write_retry(&self) -> Retry {
        if self.txn.open {
            Retry::Never
        } else {
            Retry::BeforeSending
        }
    }

    /// Sends `sql` upstream and passes the answer on, as it arrives.
    async fn pass<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        out: &mut ServerConnection<S>,
        retry: Retry,
    ) -> Result<(), ForwardError> {
        self.forward(sql, out, false, None, None, retry)
            .await
            .map(|_| ())
    }

    /// Sends `sql` upstream and writes each frame of the answer to the client, keeping the bytes
    /// (up to `keep`), and holding the final frame back when `hold_last`. `then` is sent right
    /// behind `sql` (pipelined, no round trip of its own); its answer is left to the caller.
    /// `retry` says what may be sent again when the upstream breaks (see [`Retry`]).
    async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        out: &mut ServerConnection<S>,
        hold_last: bool,
        keep: Option<usize>,
        then: Option<&str>,
        retry: Retry,
    ) -> Result<Forwarded, ForwardError> {
        let lost_txn = self.txn.open;
        let mut wrote = false;
        if let Err(error) = self
            .upstream
            .send(self.db.as_deref(), sql, then, retry)
            .await
        {
            let error = self.after_upstream_failure(lost_txn, error);
            return Err(ForwardError::Upstream {
                error,
                wrote: false,
            });
        }
        // Once sent, a broken connection leaves a write's outcome unknown.
        let sent_failure = |error| match retry {
            Retry::BeforeSending => crate::upstream::after_write(error),
            _ => error,
        };
        let mut kept = keep.map(|_| BytesMut::new());
        loop {
            // Each frame as the bytes it came in: nothing is decoded and encoded again.
            if self.frame_buf.capacity() > FRAME_BUF_KEPT {
                self.frame_buf = BytesMut::new(); // a large page's room is not kept idle
            }
            self.frame_buf.clear();
            let kind = match self.upstream.next_raw_frame(&mut self.frame_buf).await {
                Ok(kind) => kind,
                Err(error) => {
                    let error = self.after_upstream_failure(lost_txn, sent_failure(error));
                    return Err(ForwardError::Upstream { error, wrote });
                }
            };
            let last = matches!(kind, RawKind::Message { .. });
            let failed = matches!(kind, RawKind::Message { error: true });
            let bytes = &self.frame_buf[..];
            if let (Some(buffer), Some(cap)) = (kept.as_mut(), keep) {
                if buffer.len() + bytes.len() <= cap {
                    buffer.extend_from_slice(bytes);
                } else {
                    kept = None;
                }
            }
            if last && hold_last {
                return Ok(Forwarded {
                    kept: kept.map(BytesMut::freeze),
                    failed,
                    held: Some(Bytes::copy_from_slice(bytes)),
                });
            }
            out.write_raw(bytes).await?;
            wrote = true;
            if last {
                out.flush().await?;
                return Ok(Forwarded {
                    kept: kept.map(BytesMut::freeze),
                    failed,
                    held: None,
                });
            }
        }
    }

    /// A broken upstream connection rolled back the session's transaction, if one was open:
    /// the session leaves it, and the error says so. A refused `DIRK AS` left the connection,
    /// and its transaction, as they were.
    fn after_upstream_failure(&mut self, had_txn: bool, error: UpstreamError) -> UpstreamError {
        if had_txn && !matches!(error, UpstreamError::ActAs { .. }) {
            self.txn = TransactionState::default();
            self.txn_writes.clear();
            tracing::debug!("upstream connection lost inside a transaction; it was rolled back");
            return crate::upstream::inside_transaction(error);
        }
        error
    }

    async fn use_database<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        db: String,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ForwardError> {
        // `USE` changes nothing: it may be sent again like a read.
        let retry = self.read_retry();
        let forwarded = self.forward(sql, out, false, None, None, retry).await?;
        if !forwarded.failed {
            self.upstream.selected(&db);
            self.db_key = db.to_lowercase().into();
            self.db = Some(db);
        }
        Ok(())
    }

    async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        control: dirkdb_core::sql::classify::TransactionControl,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ForwardError> {
        let ask = (!self.txn_writes.is_empty()).then_some(POSITION_STATEMENT);
        let retry = self.write_retry();
        let commits = matches!(
            control,
            dirkdb_core::sql::classify::TransactionControl::Commit
                | dirkdb_core::sql::classify::TransactionControl::Release(_)
        );
        let forwarded = match self.forward(sql, out, true, None, ask, retry).await {
            // A COMMIT whose connection broke may have committed.
            Err(ForwardError::Upstream { error, wrote }) if commits => {
                return Err(ForwardError::Upstream {
                    error: crate::upstream::at_commit(error),
                    wrote,
                })
            }
            other => other?,
        };
        let answered = std::time::Instant::now();
        let position = match ask {
            Some(_) => self.upstream.pipelined_position().await,
            None => None,
        };
        if !forwarded.failed {
            match self.txn.follow(&control) {
                TransactionEnd::Committed => {
                    let writes = std::mem::take(&mut self.txn_writes);
                    if !writes.is_empty() {
                        self.settle_writes(writes, position, answered).await;
                    }
                }
                TransactionEnd::RolledBack => self.txn_writes.clear(),
                TransactionEnd::None => {}
            }
        }
        send_held(out, forwarded.held).await
    }

    async fn write<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        targets: WriteTargets,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ForwardError> {
        CacheStats::bump(&self.ctx.stats.writes);
        if self.txn.open {
            self.txn_writes.push(targets);
            return self.pass(sql, out, Retry::Never).await;
        }
        let forwarded = self
            .forward(
                sql,
                out,
                true,
                None,
                Some(POSITION_STATEMENT),
                Retry::BeforeSending,
            )
            .await;
        let answered = std::time::Instant::now();
        let position = match &forwarded {
            Ok(_) => self.upstream.pipelined_position().await,
            Err(_) => None,
        };
        // Whatever the answer, the write may have committed.
        self.settle_writes(vec![targets], position, answered).await;
        send_held(out, forwarded?.held).await
    }

    /// Drops what committed writes can have changed, before their answer reaches the client.
    /// With a change feed, waiting until it reports the write's position is enough: its
    /// notices drop exactly the rows (or tables) the write changed, triggers and cascades
    /// included. Without it, or when it does not report in time, the whole database is dropped
    /// (and a database a `CREATE`/`DROP DATABASE` names).
    /// `position` is the session's last write position, asked right behind the write; the
    /// time from `answered` (the write's own answer arrived) on is counted as the settle's cost.
    async fn settle_writes(
        &mut self,
        writes: Vec<WriteTargets>,
        position: Option<u64>,
        answered: std::time::Instant,
    ) {
        let store = self.ctx.store.clone();
        let stats = &self.ctx.stats;
        let db = self.db_key();
        let reported = match position {
            // This session never wrote: nothing committed.
            Some(0) => true,
            Some(p) => store.wait_for_feed(p, FEED_WAIT).await,
            None => false,
        };
        if !reported {
            CacheStats::bump(&stats.write_settle_fallbacks);
            for targets in &writes {
                if let WriteTargets::Database(name) = targets {
                    store.invalidate_database(name, position);
                }
            }
            // Whatever the writes name, triggers and foreign-key actions reach further, but they
            // stay inside the database.
            store.invalidate_database(&db, position);
        }
        CacheStats::bump(&stats.write_settles);
        let micros = answered.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        stats
            .write_settle_micros
            .fetch_add(micros, std::sync::atomic::Ordering::Relaxed);
    }

    async fn cached_read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        read: &CacheableRead,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ForwardError> {
        let store = self.ctx.store.clone();
        let key = CacheKey {
            db: self.db_key(),
            statement: read.key.clone(),
        };
        if let Some(hit) = store.fresh(&key) {
            CacheStats::bump(&self.ctx.stats.hits);
            out.write_raw(&hit.bytes).await?;
            out.flush().await?;
            return Ok(());
        }
        CacheStats::bump(&self.ctx.stats.misses);
        let deps = self.dependencies(&key.db, read).await;
        let key = Arc::new(key);
        let leader = match store.flight(key.clone(), &deps) {
            FlightRole::Leader(leader) => leader,
            FlightRole::Follower(rx) => return self.follow(sql, rx, out).await,
        };
        CacheStats::bump(&self.ctx.stats.upstream_reads);
        self.upstream.raise_floor(store.seen());
        let cap = store.limits().max_entry_bytes;
        let fetched = self
            .forward(sql, out, false, Some(cap), None, Retry::Read)
            .await;
        match fetched {
            Ok(Forwarded {
                kept: Some(bytes),
                failed: false,
                ..
            }) => {
                leader.keep_refreshable(bytes.clone(), read.refresh.clone());
                leader.finish(FlightOutcome::Shared(bytes));
                Ok(())
            }
            Ok(_) => {
                CacheStats::bump(&self.ctx.stats.not_stored);
                Ok(())
            }
            Err(ForwardError::Upstream {
                error,
                wrote: false,
            }) => {
                drop(leader);
                self.serve_stale(&key, error, out).await
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for the flight another session leads; asks the upstream itself when that fails.
    async fn follow<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        mut rx: tokio::sync::watch::Receiver<Option<FlightOutcome>>,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ForwardError> {
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|o| o.clone());
        match outcome {
            Some(FlightOutcome::Shared(bytes)) => {
                CacheStats::bump(&self.ctx.stats.coalesced);
                out.write_raw(&bytes).await?;
                out.flush().await?;
                Ok(())
            }
            _ => self.pass(sql, out, self.read_retry()).await,
        }
    }

    /// Answers from an entry past its TTL when stale-if-error allows it, else with the error.
    async fn serve_stale<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        key: &CacheKey,
        error: UpstreamError,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ForwardError> {
        let Some(entry) = self.ctx.store.stale(key) else {
            return Err(ForwardError::Upstream {
                error,
                wrote: false,
            });
        };
        CacheStats::bump(&self.ctx.stats.stale_served);
        let note = format!(
            "stale: served from the cache ({} ms old) because {error}",
            entry.stored_at.elapsed().as_millis()
        );
        out.write_raw(&mark_stale(&entry.bytes, &note)).await?;
        out.flush().await?;
        Ok(())
    }

    /// What a query depends on, learning the database's views and keys first when needed.
    async fn dependencies(&mut self, db: &str, read: &CacheableRead) -> Dependencies {
        let store = self.ctx.store.clone();
        if read.relations.is_empty() {
            return Dependencies::default();
        }
        let whole = || {
            let mut tables = read.relations.clone();
            tables.push(ANY_TABLE.to_string());
            Dependencies::tables(tables)
        };
        if let Some(schema) = store.schema(db) {
            return schema.dependencies(&read.relations, &read.pins);
        }
        if db.is_empty() {
            // No database selected: nothing to list views from (and such a query reads none).
            return whole();
        }
        let since = store.clock();
        match self.fetch_schema().await {
            Some(schema) => {
                let deps = schema.dependencies(&read.relations, &read.pins);
                store.set_schema(db, schema, since);
                deps
            }
            None => whole(),
        }
    }

    /// The views and keys of the session's database, from the server's catalog.
    async fn fetch_schema(&mut self) -> Option<DbSchema> {
        self.upstream
            .send(self.db.as_deref(), SCHEMA_QUERY, None, self.read_retry())
            .await
            .ok()?;
        let mut rows: Vec<Vec<serde_json::Value>> = Vec::new();
        let mut complete = true;
        loop {
            match self.upstream.next_frame().await.ok()? {
                Frame::Page(page) => match page.parse() {
                    Ok(page) => rows.extend(page.rows),
                    Err(_) => complete = false,
                },
                Frame::RelationEnd => {}
                Frame::Message(text) => {
                    let ok = complete && !text.starts_with(dirkdb_core::frame::ERROR_PREFIX);
                    if !ok {
                        tracing::debug!(answer = %text, "the catalog query failed; queries depend on whole tables");
                    }
                    return ok.then(|| DbSchema::from_rows(&rows));
                }
            }
        }
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        command: CacheCommand,
        out: &mut ServerConnection<S>,
    ) -> Result<(), ConnectionError> {
        match command {
            CacheCommand::Flush => {
                if let Err(e) = crate::auth::may_flush(self.identity.as_ref()) {
                    return out.send(&Frame::error(e)).await;
                }
                let dropped = self.ctx.store.invalidate_all(None);
                CacheStats::bump(&self.ctx.stats.flushes);
                out.send(&Frame::Message(format!(
                    "cache flushed: {dropped} entries dropped"
                )))
                .await
            }
            CacheCommand::ShowStats => {
                self.ctx.store.settle();
                for frame in stats_frames(&self.ctx.stats) {
                    out.write_frame(&frame).await?;
                }
                out.flush().await
            }
        }
    }
}

async fn send_held<S: AsyncRead + AsyncWrite + Unpin>(
    out: &mut ServerConnection<S>,
    held: Option<Bytes>,
) -> Result<(), ForwardError> {
    if let Some(bytes) = held {
        out.write_raw(&bytes).await?;
        out.flush().await?;
    }
    Ok(())
}

/// The counters as a relation of `stat`, `value` rows.
fn stats_frames(stats: &CacheStats) -> Vec<Frame> {
    let page = RelationPage {
        name: Some("cache_stats".into()),
        page: 1,
        total_pages: 1,
        columns: ["stat", "value"]
            .iter()
            .map(|name| Column {
                name: name.to_string(),
                origin: None,
            })
            .collect(),
        rows: stats
            .figures()
            .into_iter()
            .map(|(name, value)| vec![serde_json::Value::from(name), value])
            .collect(),
    };
    match PageFrame::from_page(&page) {
        Ok(page) => vec![
            Frame::Page(page),
            Frame::RelationEnd,
            Frame::Message("OK".into()),
        ],
        Err(e) => vec![Frame::error(format!("cannot encode the statistics: {e}"))],
    }
}

/// A kept response with `note` added as a last line of its final message.
fn mark_stale(bytes: &Bytes, note: &str) -> Bytes {
    let mut decoder = FrameDecoder::new(usize::MAX);
    let mut input = BytesMut::from(&bytes[..]);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut input) {
        frames.push(frame);
    }
    if let Some(Frame::Message(text)) = frames.last_mut() {
        text.push('\n');
        text.push_str(note);
    }
    let mut out = BytesMut::new();
    for frame in &frames {
        encode_frame(frame, &mut out);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_answer_says_so_in_its_last_message() {
        let mut bytes = BytesMut::new();
        for frame in stats_frames(&CacheStats::default()) {
            encode_frame(&frame, &mut bytes);
        }
        let marked = mark_stale(&bytes.freeze(), "stale: test");
        let text = String::from_utf8_lossy(&marked);
        assert!(
            text.contains("RELATION_JSON_END\nRESULT_MESSAGE\nOK\nstale: test\nEND\n"),
            "{text}"
        );
    }
}
