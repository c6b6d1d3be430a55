//! DirkDB's protocol extensions: statements only DirkDB's own components send (the proxy, the
//! benchmarks), answered with ordinary message frames, so a base client never sees them.
//!
//! * `DIRK POSITION` → `position <seq>`: the oplog position of this session's last committed
//!   write (0 before any), which a proxy needs for read-your-writes.
//! * `DIRK POSITION HISTORY` → `position <seq> history <id>`: the same position and the
//!   history (see [`crate::meta`]; every promotion starts one, with a new term) it was written
//!   in. A sequence alone does not name a write: after a failover the new primary reuses the
//!   sequences of writes it never received.
//! * `DIRK WAIT <seq> <timeout_ms> [<history>]` → `position <committed>` once this instance has
//!   committed or applied `seq` — on a replica, also synced with its current primary since it
//!   was repointed or demoted (its data may hold writes the primary lacks, at positions the
//!   primary reuses); an error naming the position reached when the timeout passes first. With
//!   a history, `seq` of that history must be in this node's history chain: refused at once
//!   when it is not (`dirkdb_core::position::NOT_IN_HISTORY`: the history was left before
//!   `seq`, or a primary does not descend from it — a failover rolled the write back), while a
//!   replica that does not know the history yet waits for it.
//! * `DIRK WAIT REPLICAS <k> <seq> <timeout_ms>` → `replicas <n> term <t>`: on a primary, waits
//!   until `k` connected replicas acknowledged `seq` in the primary's term `t` (or the timeout),
//!   and says how many did; an error when the node no longer accepts writes by then (it lost its
//!   lease or was demoted: the write may be rolled back, so it must not be acknowledged).
//! * `DIRK WAIT ORIGINS <timeout_ms> <id>=<seq> …` → `positions <id>=<seq> …` once this
//!   MULTI_PRIMARY master applied every origin's listed position (its own id: committed it);
//!   an error naming the positions it stands at when the timeout passes first (see
//!   [`crate::replication::peers`]).
//! * `DIRK SEEN <seq>` → `position <committed>`: the client has seen position `seq` (a change
//!   feed's notice); waits at most [`SEEN_WAIT`] for this instance to commit or apply it, then
//!   answers the position it has, reached or not (never an error).
//!
//! `DIRK REPLICATION` and `DIRK CHANGES` switch the connection to another protocol; the
//! listener handles them (see [`crate::change_feed`]).

use std::time::Duration;

use crate::error::ServerError;
use dirkdb_core::position::{NODE_AT, NOT_IN_HISTORY};

use crate::meta::{position_in_chain, HistoryLink};
use crate::state::ServerState;

/// Longest wait of `DIRK SEEN`.
pub(crate) const SEEN_WAIT: Duration = Duration::from_millis(1000);

/// A parsed extension statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Extension {
    /// `DIRK POSITION`
    Position,
    /// `DIRK POSITION HISTORY`
    PositionHistory,
    /// `DIRK WAIT <seq> <timeout_ms> [<history>]`
    Wait {
        /// Position to reach.
        seq: u64,
        /// Longest wait.
        timeout: Duration,
        /// The history `seq` belongs to, when the asker knows it.
        history: Option<String>,
    },
    /// `DIRK WAIT REPLICAS <k> <seq> <timeout_ms>`
    WaitReplicas {
        /// Replicas wanted.
        k: usize,
        /// Position they must have acknowledged.
        seq: u64,
        /// Longest wait.
        timeout: Duration,
    },
    /// `DIRK WAIT ORIGINS <timeout_ms> <id>=<seq> …`
    WaitOrigins {
        /// Position wanted per origin master.
        wanted: Vec<(String, u64)>,
        /// Longest wait.
        timeout: Duration,
    },
    /// `DIRK SEEN <seq>`
    Seen {
        /// Position the client has seen.
        seq: u64,
    },
}

/// Recognizes an extension; `None` for every other statement (including the replication
/// handshake and the change feed, which the listener handles).
pub(crate) fn parse(sql: &str) -> Option<Result<Extension, ServerError>> {
    let words: Vec<String> = sql
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    if words.first().map(String::as_str) != Some("DIRK") {
        return None;
    }
    if let Some(parsed) = crate::replication::peers::parse_wait(sql) {
        return Some(parsed.map(|(timeout, wanted)| Extension::WaitOrigins { wanted, timeout }));
    }
    let number = |i: usize| -> Result<u64, ServerError> {
        // Digits only: `+5` or `-0` are not positions.
        let digits = |w: &&String| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
        words
            .get(i)
            .filter(digits)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| {
                ServerError::Syntax(format!("DIRK extension: a number is expected in `{sql}`"))
            })
    };
    let parsed = match words.get(1).map(String::as_str) {
        Some("POSITION") if words.len() == 2 => Ok(Extension::Position),
        Some("POSITION") if words.len() == 3 && words[2] == "HISTORY" => {
            Ok(Extension::PositionHistory)
        }
        Some("WAIT")
            if words.get(2).map(String::as_str) == Some("REPLICAS") && words.len() == 6 =>
        {
            (|| {
                Ok(Extension::WaitReplicas {
                    k: number(3)? as usize,
                    seq: number(4)?,
                    timeout: Duration::from_millis(number(5)?),
                })
            })()
        }
        Some("WAIT") if words.len() == 4 || words.len() == 5 => (|| {
            Ok(Extension::Wait {
                seq: number(2)?,
                timeout: Duration::from_millis(number(3)?),
                // History ids keep their case.
                history: sql.split_whitespace().nth(4).map(str::to_string),
            })
        })(),
        Some("SEEN") if words.len() == 3 => number(2).map(|seq| Extension::Seen { seq }),
        Some("REPLICATION") => return None,
        Some("CHANGES") if words.len() == 2 => return None,
        _ => Err(ServerError::Syntax(format!(
            "unknown DIRK extension `{sql}`"
        ))),
    };
    Some(parsed)
}

/// Answers an extension; `last_write` is the session's last committed position.
pub(crate) async fn answer(
    state: &ServerState,
    ext: Extension,
    last_write: u64,
) -> Result<String, ServerError> {
    match ext {
        Extension::Position => Ok(format!("position {last_write}")),
        Extension::PositionHistory => {
            let chain = state.meta.history(&state.instance_id)?;
            let history = history_at(&chain, last_write).unwrap_or_default();
            Ok(format!("position {last_write} history {history}"))
        }
        Extension::Wait {
            seq,
            timeout,
            history,
        } => wait_for_position(state, seq, timeout, history.as_deref()).await,
        Extension::WaitReplicas { k, seq, timeout } => {
            let count = || {
                state
                    .replication
                    .acked_positions()
                    .iter()
                    .filter(|p| **p >= seq)
                    .count()
            };
            let mut acks = state.replication.watch_acks();
            let _ = tokio::time::timeout(timeout, async {
                while count() < k {
                    if acks.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            let confirmed = count();
            if !state.accepts_writes() {
                return Err(ServerError::Refused(format!(
                    "the write at {seq} may be rolled back: this node lost its write lease or was \
                     demoted before {k} replicas confirmed it"
                )));
            }
            Ok(format!("replicas {confirmed} term {}", state.term()))
        }
        Extension::WaitOrigins { wanted, timeout } => {
            state.peers.wait_for(state, &wanted, timeout).await
        }
        Extension::Seen { seq } => {
            let mut commits = state.write_path.subscribe();
            let _ = tokio::time::timeout(SEEN_WAIT, commits.wait_for(|c| *c >= seq)).await;
            Ok(format!("position {}", state.write_path.committed()))
        }
    }
}

/// The history of `chain` in which `seq` was written: the newest one that began before it.
fn history_at(chain: &[HistoryLink], seq: u64) -> Option<&str> {
    chain
        .iter()
        .rev()
        .find(|l| l.parent_end < seq)
        .or(chain.first())
        .map(|l| l.id.as_str())
}

/// Whether position `seq` of `history` is in `chain` (`None`: the chain does not know that
/// history, which a replica may only not have heard of yet).
fn in_chain(chain: &[HistoryLink], history: &str, seq: u64) -> Option<bool> {
    chain
        .iter()
        .any(|l| l.id == history)
        .then(|| position_in_chain(chain, history, seq))
}

/// The refusal of a position that is not in `chain`.
fn not_in_history(chain: &[HistoryLink], history: &str, seq: u64, now: u64) -> ServerError {
    let current = chain.last().map_or("", |l| l.id.as_str());
    ServerError::Refused(format!(
        "position {seq} of history {history} is {NOT_IN_HISTORY} (a failover rolled it back); \
         {NODE_AT}position {now} history {current}"
    ))
}

/// `DIRK WAIT`: waits until this node has `seq` and vouches for it. A replica vouches only once
/// it has synced with its current primary since it was repointed or demoted: until then its
/// sequence may count writes its primary never had (a demoted primary's own), at positions the
/// primary reuses for others. Synced is not announced, so the wait also looks every 20 ms.
/// With `history`, the position must also be in this node's history chain.
async fn wait_for_position(
    state: &ServerState,
    seq: u64,
    timeout: Duration,
    history: Option<&str>,
) -> Result<String, ServerError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut commits = state.write_path.subscribe();
    loop {
        let vouched = !state.is_replica() || state.replication.is_synced();
        let now = state.write_path.committed();
        if vouched && now >= seq {
            let Some(history) = history else {
                return Ok(format!("position {now}"));
            };
            let chain = state.meta.history(&state.instance_id)?;
            match in_chain(&chain, history, seq) {
                Some(true) => return Ok(format!("position {now}")),
                Some(false) => return Err(not_in_history(&chain, history, seq, now)),
                // A primary holds its whole lineage: a history it lacks is not its ancestor.
                None if !state.is_replica() => {
                    return Err(not_in_history(&chain, history, seq, now))
                }
                // A replica may not have heard of it yet.
                None => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ServerError::Refused(if vouched && now >= seq {
                format!(
                    "position {seq} of history {} not vouched for within {} ms: this replica has not heard of that history yet (at {now})",
                    history.unwrap_or_default(),
                    timeout.as_millis()
                )
            } else if vouched {
                format!(
                    "position {seq} not reached within {} ms (at {now})",
                    timeout.as_millis()
                )
            } else {
                format!(
                    "position {seq} not vouched for within {} ms: this replica has not synced with its primary yet (at {now})",
                    timeout.as_millis()
                )
            }));
        }
        let step = (tokio::time::Instant::now() + Duration::from_millis(20)).min(deadline);
        let _ = tokio::time::timeout_at(step, commits.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_extensions() {
        assert_eq!(
            parse("DIRK POSITION").unwrap().unwrap(),
            Extension::Position
        );
        assert_eq!(
            parse("dirk wait 12 500").unwrap().unwrap(),
            Extension::Wait {
                seq: 12,
                timeout: Duration::from_millis(500),
                history: None,
            }
        );
        assert_eq!(
            parse("DIRK WAIT 12 500 m1-Ab-3").unwrap().unwrap(),
            Extension::Wait {
                seq: 12,
                timeout: Duration::from_millis(500),
                history: Some("m1-Ab-3".into()),
            }
        );
        assert_eq!(
            parse("dirk position history").unwrap().unwrap(),
            Extension::PositionHistory
        );
        assert!(parse("DIRK POSITION NOW").unwrap().is_err());
        assert!(parse("DIRK WAIT 12 500 a b").unwrap().is_err());
        assert_eq!(
            parse("DIRK WAIT REPLICAS 2 9 100").unwrap().unwrap(),
            Extension::WaitReplicas {
                k: 2,
                seq: 9,
                timeout: Duration::from_millis(100)
            }
        );
        assert!(parse("DIRK WAIT x 1").unwrap().is_err());
        assert!(parse("DIRK FOO").unwrap().is_err());
        assert_eq!(
            parse("dirk  seen 42").unwrap().unwrap(),
            Extension::Seen { seq: 42 }
        );
        assert!(parse("DIRK SEEN").unwrap().is_err());
        assert!(parse("DIRK SEEN -1").unwrap().is_err());
        assert!(parse("DIRK SEEN +1").unwrap().is_err());
        assert!(parse("DIRK SEEN 1 2").unwrap().is_err());
        assert!(parse("DIRK REPLICATION").is_none());
        assert!(parse("dirk changes").is_none());
        assert!(parse("DIRK CHANGES now").unwrap().is_err());
        assert!(parse("SELECT 1").is_none());
    }

    fn chain(links: &[(&str, u64)]) -> Vec<HistoryLink> {
        HistoryLink::chain(links)
    }

    #[test]
    fn a_position_names_the_history_it_was_written_in() {
        let c = chain(&[("a", 0), ("b", 100), ("c", 250)]);
        assert_eq!(history_at(&c, 0), Some("a"));
        assert_eq!(history_at(&c, 100), Some("a"));
        assert_eq!(history_at(&c, 101), Some("b"));
        assert_eq!(history_at(&c, 250), Some("b"));
        assert_eq!(history_at(&c, 251), Some("c"));
        assert_eq!(in_chain(&c, "a", 100), Some(true));
        assert_eq!(
            in_chain(&c, "a", 101),
            Some(false),
            "the same sequence, written again in a later history"
        );
        assert_eq!(in_chain(&c, "c", 9999), Some(true));
        assert_eq!(in_chain(&c, "x", 1), None);
    }
}
