//! The write probe (`POST /replication/write-probe`): proves that this node can still write
//! durably, for the proxy's health check of its primary, which would otherwise see only a node
//! that answers — a primary whose disk is full, read-only or stalled still answers
//! `GET /replication/status`.
//!
//! A probe creates a small file in the data directory, writes 4 KiB into it, syncs it to disk
//! and removes it, then commits one setting of the meta file (SQLite, with the node's
//! `storage.synchronous`). It writes no database and takes no writer gate, so a long client
//! transaction never makes it fail; and it runs on a primary without a lease as well (the lease
//! is the proxy's to give, not a property of the disk). A primary that must hold a lease in etcd
//! (`failover.coordinator.serverLeases`) and does not fails it: it is cut off from the
//! coordinator, and cannot write until it is back ([`super::etcd_lease`]).

use std::io::Write;
use std::time::{Duration, Instant};

use super::node::Node;
use dirkdb_core::clock::now_ms;

/// The probe's file in the data directory (never a database: no `.db` extension).
const PROBE_FILE: &str = "_dirk_write_probe";
/// The meta file's setting the probe commits.
const PROBE_SETTING: &str = "write_probe_ms";

/// Writes, syncs and removes the probe file, then commits the probe setting; returns how long
/// it took, or what failed.
pub(crate) fn probe(state: &Node) -> Result<Duration, String> {
    let started = Instant::now();
    if !state.is_replica() {
        state
            .write_path
            .lease()
            .etcd()
            .check()
            .map_err(|e| e.to_string())?;
    }
    let path = state.data_dir().join(PROBE_FILE);
    let written = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&[0u8; 4096])?;
        file.sync_all()
    });
    if let Err(e) = written {
        return Err(format!(
            "cannot write a file in the data directory `{}`: {e}",
            state.data_dir().display()
        ));
    }
    std::fs::remove_file(&path)
        .map_err(|e| format!("cannot remove the probe file `{}`: {e}", path.display()))?;
    state
        .meta
        .set_setting(PROBE_SETTING, Some(&now_ms().to_string()))
        .map_err(|e| format!("cannot commit to the meta file: {e}"))?;
    Ok(started.elapsed())
}
