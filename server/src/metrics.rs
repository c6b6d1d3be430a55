//! A server's `GET /metrics`: its counters (`state::ServerMetrics`), replication and
//! MULTI_PRIMARY figures, each metric described once.

/// Every metric of `GET /metrics`, described once. Each sample has the `instance` label.
mod described {
    use dirkdb_core::metrics::Metric;

    pub(super) const COMMITTED: Metric = Metric::gauge(
        "dirkdb_committed_sequence",
        "Last committed (primary) or applied (replica) oplog sequence.",
    );
    pub(super) const IS_PRIMARY: Metric =
        Metric::gauge("dirkdb_is_primary", "1 on a primary, 0 on a replica.");
    pub(super) const DATABASES: Metric = Metric::gauge("dirkdb_databases", "Databases held.");
    pub(super) const OPEN: Metric =
        Metric::gauge("dirkdb_connections_open", "Client connections open.");
    pub(super) const REFUSED: Metric = Metric::counter(
        "dirkdb_connections_refused",
        "Clients refused over limits.maxConnections.",
    );
    pub(super) const STATEMENTS: Metric =
        Metric::counter("dirkdb_statements", "Statements answered.");
    pub(super) const ERRORS: Metric = Metric::counter(
        "dirkdb_statement_errors",
        "Statements answered with an error.",
    );
    pub(super) const SHAPED: Metric = Metric::counter(
        "dirkdb_statements_parameterized",
        "Client writes run as the statement of their shape with their values bound: \
         compiled once, then taken from the connection's statement cache (README \"Compiled \
         once\").",
    );
    pub(super) const REPLICA_CONNECTED: Metric = Metric::gauge(
        "dirkdb_replica_connected",
        "1 while the replica is connected.",
    );
    pub(super) const REPLICA_ACKED: Metric = Metric::gauge(
        "dirkdb_replica_acked_sequence",
        "Last sequence the replica acknowledged.",
    );
    pub(super) const REPLICA_LAG_OPS: Metric = Metric::gauge(
        "dirkdb_replica_lag_operations",
        "Committed entries the replica has not acknowledged.",
    );
    pub(super) const REPLICA_LAG_MS: Metric = Metric::gauge(
        "dirkdb_replica_lag_ms",
        "Age of the oldest unacknowledged entry.",
    );
    pub(super) const REPLICA_BYTES: Metric =
        Metric::counter("dirkdb_replica_bytes_sent", "Bytes sent to the replica.");
    pub(super) const STREAM_BYTES: Metric = Metric::counter(
        "dirkdb_replication_stream_bytes",
        "Bytes this node wrote to its replicas' streams, before compression.",
    );
    pub(super) const WIRE_BYTES: Metric = Metric::counter(
        "dirkdb_replication_wire_bytes",
        "Bytes this node's replica streams put on the wire, after compression \
         (replication.compression); equal to dirkdb_replication_stream_bytes without it.",
    );
    pub(super) const REPLICA_SYNCED: Metric = Metric::counter(
        "dirkdb_replica_operations_synced",
        "Entries sent to the replica.",
    );
    pub(super) const COPY_VERSION: Metric = Metric::gauge(
        "dirkdb_file_copy_version",
        "FILE mode: version of the secondary's copy.",
    );
    pub(super) const COPY_AGE: Metric = Metric::gauge(
        "dirkdb_file_copy_age_ms",
        "FILE mode: age of the secondary's copy.",
    );
    pub(super) const COPY_BYTES: Metric = Metric::gauge(
        "dirkdb_file_copy_bytes",
        "FILE mode: size of the secondary's copy.",
    );
    pub(super) const COPY_SENT: Metric = Metric::counter(
        "dirkdb_file_copy_bytes_sent",
        "FILE mode: bytes of pages sent for this database.",
    );
    pub(super) const COPY_FAILURES: Metric = Metric::counter(
        "dirkdb_file_copy_failures",
        "FILE mode: copies refused or failed.",
    );
    pub(super) const FOLLOWER_LAG: Metric = Metric::gauge(
        "dirkdb_follower_lag_operations",
        "Entries the primary committed that this replica has not applied.",
    );
    pub(super) const GROUP_COMMITS: Metric = Metric::counter(
        "dirkdb_group_commit_commits",
        "Client commits made durable by a group sync of their WAL (storage.groupCommit).",
    );
    pub(super) const GROUP_SYNCS: Metric = Metric::counter(
        "dirkdb_group_commit_syncs",
        "WAL syncs group commit made; commits ÷ syncs is the mean group size.",
    );
    pub(super) const FOLLOWER_FULL_SYNCS: Metric =
        Metric::counter("dirkdb_follower_full_syncs", "Full syncs received.");
}

/// The text of `GET /metrics` for `state` (Prometheus text format, every sample labelled with
/// the instance id).
pub(crate) fn page(
    state: &std::sync::Arc<crate::state::ServerState>,
) -> Result<String, std::fmt::Error> {
    let state = state.clone();
    let instance = vec![("instance", state.instance_id.clone())];
    dirkdb_core::metrics::render(instance, move |page| write_page(&state, page))
}

fn write_page(
    state: &crate::state::ServerState,
    page: &mut dirkdb_core::metrics::Page,
) -> std::fmt::Result {
    use described::*;
    let committed = state.write_path.committed();
    page.one(&COMMITTED, committed)?;
    page.one(&IS_PRIMARY, !state.is_replica())?;
    page.one(&DATABASES, state.catalog.names().len())?;
    let m = &state.metrics;
    page.one(&OPEN, m.open())?;
    page.one(&REFUSED, m.refused())?;
    page.one(&STATEMENTS, m.statements())?;
    page.one(&ERRORS, m.errors())?;
    page.one(&SHAPED, m.shaped())?;
    dirkdb_core::metrics::Guards {
        limits: state.client_limits.clone(),
        security: state.security.security.clone(),
        tls: state.security.tls.clone(),
    }
    .write(page)?;
    if state.write_path.group_commit() {
        let group = state.write_path.group_commit_stats();
        page.one(&GROUP_COMMITS, group.commits)?;
        page.one(&GROUP_SYNCS, group.syncs)?;
    }
    page.one(&STREAM_BYTES, state.replication.sent.uncompressed())?;
    page.one(&WIRE_BYTES, state.replication.sent.wire())?;
    write_replicas(&state.replication.replicas(committed), page)?;
    crate::replication::peers::write_metrics(state, &state.peers, &state.replication, page)?;
    if state.is_replica() {
        let f = state.replication.follower();
        page.one(&FOLLOWER_LAG, f.primary_sequence.saturating_sub(committed))?;
        page.one(&FOLLOWER_FULL_SYNCS, f.full_syncs)?;
    }
    Ok(())
}

/// Per replica (a primary's view), then per replica and database for FILE-mode copies.
fn write_replicas(
    replicas: &[crate::replication::ReplicaStatus],
    page: &mut dirkdb_core::metrics::Page,
) -> std::fmt::Result {
    use crate::replication::{FileCopyStatus, ReplicaState, ReplicaStatus};
    use described::*;
    let per_replica = |figure: fn(&ReplicaStatus) -> u64| {
        replicas
            .iter()
            .map(move |r| (vec![("replica", r.instance.clone())], figure(r)))
    };
    page.each(
        &REPLICA_CONNECTED,
        per_replica(|r| u64::from(r.state != ReplicaState::Disconnected)),
    )?;
    page.each(&REPLICA_ACKED, per_replica(|r| r.acked_sequence))?;
    page.each(&REPLICA_LAG_OPS, per_replica(|r| r.lag_operations))?;
    page.each(&REPLICA_LAG_MS, per_replica(|r| r.lag_ms))?;
    page.each(&REPLICA_BYTES, per_replica(|r| r.bytes_sent))?;
    page.each(&REPLICA_SYNCED, per_replica(|r| r.operations_synced))?;
    let per_copy = |figure: fn(&FileCopyStatus) -> u64| {
        replicas.iter().flat_map(move |r| {
            r.files.iter().map(move |(db, c)| {
                let labels = vec![("replica", r.instance.clone()), ("database", db.clone())];
                (labels, figure(c))
            })
        })
    };
    page.each(&COPY_VERSION, per_copy(|c| c.version))?;
    page.each(&COPY_AGE, per_copy(|c| c.age_ms))?;
    page.each(&COPY_BYTES, per_copy(|c| c.bytes))?;
    page.each(&COPY_SENT, per_copy(|c| c.bytes_sent))?;
    page.each(&COPY_FAILURES, per_copy(|c| c.failures))
}
