//! `DIRK CHANGES` through the proxy: the client's connection becomes a relay of the current
//! primary's change feed (see `dirkdb_core::change_feed` for the notices).
//!
//! How a feed flows:
//!
//! 1. The listener sees `DIRK CHANGES` (any case, any whitespace) and calls [`subscribe`]: a new
//!    connection to the topology's current primary, never a pooled one (it will never serve a
//!    statement again), which sends `DIRK CHANGES` and reads the first notice.
//! 2. When that fails (the primary is unreachable, refuses, or answers something else than a
//!    notice), the client gets one `Hadisoana : ` frame and its session goes on.
//! 3. Otherwise the session ends (an open transaction on the primary is rolled back, as when a
//!    client leaves) and [`relay`] passes the first notice and every later frame on as it
//!    arrives, until:
//!    * the primary's feed breaks, ends, or stays silent for [`SILENCE`] (three heartbeats):
//!      the client gets `Hadisoana : the change feed from <id> ended: <why>`;
//!    * the topology's primary changes (failover, config reload), checked before each frame and
//!      at least every [`FEED_HEARTBEAT`]: the client gets `Hadisoana : the primary changed from
//!      <old> to <new>; subscribe again`, since the new primary's positions are not the old
//!      one's feed;
//!    * the client closes its socket (what it sends meanwhile is read and ignored, but for
//!      `DIRK SYNC <n>`, passed on to the primary);
//!    * the proxy shuts down (the listener drops the relay).
//!
//!    In every case the client's connection is then closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dirkdb_client::Client;
pub(crate) use dirkdb_core::change_feed::{is_changes_sql, is_changes_statement};
use dirkdb_core::change_feed::{sync_token, ChangeNotice, CHANGES_STATEMENT, FEED_HEARTBEAT};
use dirkdb_core::connection::{ConnectionError, Incoming, ServerConnection};
use dirkdb_core::frame::Frame;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::backend::Backend;
use crate::error::ProxyError;
use crate::topology::SharedTopology;

/// Longest wait to connect to the primary and for its first notice.
pub(crate) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A primary's feed silent this long is taken for dead.
pub(crate) const SILENCE: Duration = Duration::from_millis(3 * FEED_HEARTBEAT.as_millis() as u64);

/// A feed opened on a primary, its first notice read but not yet passed on.
pub(crate) struct Upstream {
    backend: Arc<Backend>,
    client: Client,
    first: Frame,
}

impl Upstream {
    /// The instance serving the feed.
    pub(crate) fn instance(&self) -> &str {
        &self.backend.id
    }
}

/// Opens a feed on the topology's current primary and reads its first notice.
pub(crate) async fn subscribe(topology: &SharedTopology) -> Result<Upstream, ProxyError> {
    let backend = topology.load().primary().clone();
    let fail = |reason: String| ProxyError::Backend {
        instance: backend.id.clone(),
        reason,
    };
    let opened = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
        let mut client = Client::connect_timeout(&backend.addr, SUBSCRIBE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        crate::auth::login(&mut client).await?;
        client
            .send_statement(CHANGES_STATEMENT)
            .await
            .map_err(|e| e.to_string())?;
        let first = client.next_frame().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((client, first))
    })
    .await;
    let (client, first) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(reason)) => return Err(fail(format!("cannot open its change feed: {reason}"))),
        Err(_) => {
            return Err(fail(format!(
                "no change feed within {} ms",
                SUBSCRIBE_TIMEOUT.as_millis()
            )))
        }
    };
    if let Some(reason) = first.error_text() {
        return Err(fail(format!("refused the change feed: {reason}")));
    }
    match &first {
        Frame::Message(text) if ChangeNotice::from_text(text).is_ok() => {}
        other => {
            return Err(fail(format!(
                "answered `{CHANGES_STATEMENT}` with {other:?}, not a change notice"
            )))
        }
    }
    Ok(Upstream {
        backend,
        client,
        first,
    })
}

/// Why a relay stops (before telling the client).
enum End {
    /// The client left: nothing to tell.
    ClientGone,
    /// Tell the client, then close.
    Tell(String),
}

/// Passes `upstream`'s frames to the client until one of the ends listed in the module docs.
/// The caller races it against the proxy's shutdown and closes the connection afterwards.
pub(crate) async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
    mut upstream: Upstream,
    out: &mut ServerConnection<S>,
    topology: &SharedTopology,
) -> Result<(), ConnectionError> {
    out.send(&upstream.first).await?;
    let mut tick = tokio::time::interval(FEED_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let end = loop {
        tokio::select! {
            frame = upstream.client.next_frame() => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => break End::Tell(ended(&upstream, &e.to_string())),
                };
                if let Some(why) = primary_changed(&upstream, topology) {
                    break End::Tell(why);
                }
                heard = Instant::now();
                out.send(&frame).await?;
            }
            incoming = out.read_statement() => match incoming {
                // `DIRK SYNC` goes on to the primary, which answers it on the feed.
                Ok(Some(Incoming::Statement(sql))) if sync_token(&sql).is_some() => {
                    if let Err(e) = upstream.client.send_framed(&sql).await {
                        break End::Tell(ended(&upstream, &e.to_string()));
                    }
                }
                // Anything else is dropped; the client's leaving ends the feed.
                Ok(Some(_)) => {}
                _ => break End::ClientGone,
            },
            _ = tick.tick() => {
                if let Some(why) = primary_changed(&upstream, topology) {
                    break End::Tell(why);
                }
                if heard.elapsed() > SILENCE {
                    let why = format!("no notice for {} ms", heard.elapsed().as_millis());
                    break End::Tell(ended(&upstream, &why));
                }
            }
        }
    };
    match end {
        End::ClientGone => Ok(()),
        End::Tell(why) => {
            tracing::info!(instance = %upstream.instance(), reason = %why, "change feed relay ended");
            out.send(&Frame::error(why)).await
        }
    }
}

fn ended(upstream: &Upstream, why: &str) -> String {
    format!("the change feed from {} ended: {why}", upstream.instance())
}

/// The client's message when the topology's primary is no longer the feed's instance.
fn primary_changed(upstream: &Upstream, topology: &SharedTopology) -> Option<String> {
    let current = topology.load();
    let primary = current.primary();
    let same = Arc::ptr_eq(primary, &upstream.backend)
        || (primary.id == upstream.backend.id && primary.addr == upstream.backend.addr);
    (!same).then(|| {
        format!(
            "the primary changed from {} to {}; subscribe again",
            upstream.backend.id, primary.id
        )
    })
}
