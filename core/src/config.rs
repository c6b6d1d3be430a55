//! The `config.json` model shared by every component.
//!
//! DirkDB's own file loads unchanged: unknown fields are ignored (each reported, with a did-you-mean
//! when it looks like a slip: see [`UnknownField`]), `MASTER` reads as `PRIMARY` and
//! `SECONDARY` as `REPLICA`. Every field DirkDB-rs adds is optional with a default. Loading is two
//! steps: [`ClusterConfig::parse`] turns JSON into the model (a type error names the JSON path of the
//! field, e.g. `instances[1].role`), then [`ClusterConfig::validate`] checks the topology as a whole
//! (duplicate ids or ports, no primary, unsupported modes), again naming the field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod unknown_fields;
pub mod watch;

pub use unknown_fields::UnknownField;

/// Why a `config.json` was refused; every variant names the file and, where it can, the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The operating system's reason (in the message, not repeated as a source).
        reason: std::io::Error,
    },
    /// The file is not well-formed JSON.
    #[error("invalid config: not valid JSON at line {line}, column {column}: {message}")]
    Json {
        /// Line of the problem (1-based).
        line: usize,
        /// Column of the problem (1-based).
        column: usize,
        /// What the JSON parser found, with a hint for the usual slips.
        message: String,
    },
    /// The JSON is malformed or a field has the wrong type or an unknown value.
    #[error("invalid config: field `{field}`: {message}")]
    Syntax {
        /// JSON path of the offending field (`.` for the document itself).
        field: String,
        /// What serde said about it, with line and column.
        message: String,
    },
    /// The JSON is well formed but the topology it describes is not usable.
    #[error("invalid config: field `{field}`: {message}")]
    Invalid {
        /// JSON path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// `--instance` names an id the file does not have.
    #[error("instance `{0}` is not in config.json (known: {1})")]
    UnknownInstance(String, String),
}

/// The whole topology: every process reads the same file and picks its own part.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// Bumped by whoever edits the file; informational.
    #[serde(default)]
    pub config_version: u64,
    /// Where the replicating proxy listens.
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    /// Where the optional local cache listens and how much it keeps.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The storage servers of the topology.
    pub instances: Vec<InstanceConfig>,
    /// How the proxy routes reads and writes.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// How replicas follow the primary.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// How the proxy reacts to a dead primary.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// Resource limits every server enforces.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// SQLite storage settings.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Users, grants and authentication (absent: nothing is checked).
    #[serde(default)]
    pub security: crate::security::SecurityConfig,
}

/// The proxy's listening addresses (DirkDB's `loadBalancer` section).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerConfig {
    /// Interface the proxy binds.
    pub listen_host: String,
    /// SQL port of the proxy (DirkDB: 3949).
    pub listen_port: u16,
    /// HTTP admin port of the proxy.
    pub admin_port: u16,
    /// A statement running longer than this through the proxy gets an error frame.
    pub statement_timeout_ms: u64,
    /// Client connections the proxy serves at once.
    pub max_connections: usize,
    /// How often each instance's health and position are checked.
    pub health_interval_millis: u64,
    /// Consecutive failed checks after which an instance counts as down.
    pub fail_count: u32,
    /// How long a read may wait for a replica to apply the session's last write before it goes
    /// to the primary instead (READ_YOUR_WRITES).
    pub read_your_writes_wait_ms: u64,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            listen_host: "127.0.0.1".into(),
            listen_port: 3949,
            admin_port: 4949,
            statement_timeout_ms: 30_000,
            max_connections: 1024,
            health_interval_millis: 250,
            fail_count: 3,
            read_your_writes_wait_ms: 200,
        }
    }
}

/// The local caching proxy's settings (`dirkdb cache`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CacheConfig {
    /// Interface the cache binds.
    pub listen_host: String,
    /// SQL port of the cache (DirkDB: 3951).
    pub listen_port: u16,
    /// HTTP port of its `/metrics`, `/stats` and `/health`; unset, the listen port + 1000 (4951
    /// for 3951). Read it through [`CacheConfig::admin_port`].
    pub admin_port: Option<u16>,
    /// Where it forwards to (default: the proxy's `loadBalancer.listenHost`).
    pub upstream_host: Option<String>,
    /// Port it forwards to (default: the proxy's `loadBalancer.listenPort`).
    pub upstream_port: Option<u16>,
    /// Several upstreams (`["host:port", …]`, e.g. one per proxy): the cache uses the first that
    /// answers and moves to the next when it fails. When set, it replaces
    /// `upstreamHost`/`upstreamPort`.
    pub upstreams: Vec<String>,
    /// How long an entry may be served, in milliseconds.
    pub ttl_millis: u64,
    /// How many results are kept at most.
    pub max_entries: u64,
    /// How many bytes of results are kept at most.
    pub max_bytes: u64,
    /// A result larger than this (in bytes, as sent) is passed on but not kept.
    pub max_entry_bytes: u64,
    /// When above 0, an entry up to this many milliseconds past its TTL is served (and marked
    /// stale) while the upstream cannot be reached. Off by default.
    pub stale_if_error_millis: u64,
    /// Client connections served at once.
    pub max_connections: usize,
    /// Longest wait for the upstream's answer to one statement, in milliseconds.
    pub statement_timeout_ms: u64,
    /// Whether to follow the primary's change feed (`DIRK CHANGES`) to learn other clients'
    /// writes. Without it, only writes through this cache and the TTL bound staleness.
    pub change_feed: bool,
}

impl CacheConfig {
    /// The admin port: `adminPort` when given, else the listen port + 1000 (one rule for the file
    /// and the command line, so a second cache on other ports gets its own admin port).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
            .unwrap_or_else(|| self.listen_port.saturating_add(1000))
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            listen_host: "127.0.0.1".into(),
            listen_port: 3951,
            admin_port: None,
            upstream_host: None,
            upstream_port: None,
            upstreams: Vec::new(),
            ttl_millis: 3000,
            max_entries: 200,
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            stale_if_error_millis: 0,
            max_connections: 1024,
            statement_timeout_ms: 35_000,
            change_feed: true,
        }
    }
}

/// A malformed-JSON error by position (a JSON path means nothing in a broken document), with a
/// hint for the usual slips.
fn json_error(e: &serde_json::Error) -> ConfigError {
    let text = e.to_string();
    let reason = text
        .rsplit_once(" at line ")
        .map(|(reason, _)| reason.to_string())
        .unwrap_or(text);
    let hint = match reason.as_str() {
        "key must be a string" | "trailing comma" | "expected value" => {
            " (a doubled or trailing comma, or a missing quote?)"
        }
        r if r.starts_with("EOF") => " (an unclosed `{` or `[`?)",
        _ => "",
    };
    ConfigError::Json {
        line: e.line(),
        column: e.column(),
        message: format!("{reason}{hint}"),
    }
}

impl ClusterConfig {
    /// The address the cache forwards to: its `upstreams` list (comma-separated), else its own
    /// `upstreamHost`/`upstreamPort`, else the proxy's listening address.
    pub fn cache_upstream(&self) -> String {
        if !self.cache.upstreams.is_empty() {
            return self.cache.upstreams.join(",");
        }
        let host = self
            .cache
            .upstream_host
            .clone()
            .unwrap_or_else(|| self.load_balancer.listen_host.clone());
        let port = self
            .cache
            .upstream_port
            .unwrap_or(self.load_balancer.listen_port);
        format!("{host}:{port}")
    }
}

/// One storage server of the topology.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceConfig {
    /// Unique name, used by `--instance` and in every status report.
    pub id: String,
    /// Whether it starts as the primary or as a replica.
    pub role: Role,
    /// Address other processes reach it at (and the one it binds, unless `listenHost`).
    pub host: String,
    /// Interface it binds (default: `host`), e.g. `0.0.0.0` behind a NAT or in a container.
    #[serde(default)]
    pub listen_host: Option<String>,
    /// SQL port.
    pub port: u16,
    /// HTTP admin port; `None` means no admin API for this instance.
    #[serde(default)]
    pub admin_port: Option<u16>,
    /// Where its SQLite files live (relative paths are relative to the working directory).
    pub data_directory: PathBuf,
    /// `host:port` at which replicas reach this instance when it is their primary (default:
    /// `host:port`): replication over another network, or through a fault-injecting relay in
    /// the tests.
    #[serde(default)]
    pub replication_address: Option<String>,
}

impl InstanceConfig {
    /// `host:port` of the SQL listener.
    pub fn sql_addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The interface it binds: `listenHost`, else `host`.
    pub fn bind_host(&self) -> &str {
        self.listen_host.as_deref().unwrap_or(&self.host)
    }

    /// `host:port` replicas connect to when this instance is their primary.
    pub fn replication_addr(&self) -> String {
        self.replication_address
            .clone()
            .unwrap_or_else(|| self.sql_addr())
    }
}

/// The part an instance plays in replication.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(try_from = "String")]
pub enum Role {
    /// Accepts writes and records them in its oplog (DirkDB: `MASTER`).
    Primary,
    /// Follows a primary and refuses client writes (alias `SECONDARY`).
    Replica,
}

impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.to_ascii_uppercase().as_str() {
            "PRIMARY" | "MASTER" => Ok(Role::Primary),
            "REPLICA" | "SECONDARY" | "SLAVE" => Ok(Role::Replica),
            _ => Err(unknown_value(
                &value,
                "PRIMARY (or MASTER), REPLICA (or SECONDARY)",
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "PRIMARY",
            Role::Replica => "REPLICA",
        })
    }
}

fn unknown_value(value: &str, expected: &str) -> String {
    format!("unknown value `{value}`, expected one of {expected}")
}

/// Declares a string-valued enum read case-insensitively, with the accepted spellings listed in
/// its error message.
macro_rules! config_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
        #[serde(try_from = "String")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                match value.to_ascii_uppercase().as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(unknown_value(&value, &[$($text),+].join(", "))),
                }
            }
        }

        impl $name {
            /// The spelling used in `config.json`.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

config_enum!(
    /// How the proxy spreads reads.
    ReadStrategy {
        /// Each instance in turn.
        #[default]
        RoundRobin = "ROUND_ROBIN",
        /// The instance with the fewest statements in flight.
        LeastConnections = "LEAST_CONNECTIONS",
        /// Sticky per database: DirkDB's rendezvous of `DB:<name>` (see `crate::rendezvous`).
        Rendezvous = "RENDEZVOUS",
    }
);

config_enum!(
    /// Which reads may be served by a replica.
    ReadConsistency {
        /// A session reads only from instances that applied its own latest write.
        #[default]
        ReadYourWrites = "READ_YOUR_WRITES",
        /// Any healthy instance within the lag limit.
        Eventual = "EVENTUAL",
    }
);

config_enum!(
    /// Who accepts writes.
    WriteMode {
        /// One primary takes every write.
        #[default]
        SinglePrimary = "SINGLE_PRIMARY",
        /// DirkDB's per-object owners: every MASTER takes the writes of the objects it owns
        /// by rendezvous (`crate::rendezvous`).
        MultiPrimary = "MULTI_PRIMARY",
    }
);

config_enum!(
    /// MULTI_PRIMARY: what has an owner (DirkDB's `routing.writes.partition`).
    Partition {
        /// Each table, view and domain (and each database, for CREATE/DROP DATABASE).
        #[default]
        DbObject = "DB_OBJECT",
    }
);

config_enum!(
    /// MULTI_PRIMARY: how an owner is chosen (DirkDB's `routing.writes.hash`).
    OwnerHash {
        /// DirkDB's rendezvous hashing over the masters that are up.
        #[default]
        Rendezvous = "RENDEZVOUS",
    }
);

/// Why `replication.type` FILE does not run under MULTI_PRIMARY, said at start-up, in
/// `/cluster/status` and in the README.
pub const FILE_UNDER_MULTI_PRIMARY: &str = "replication.type FILE is not used under \
     MULTI_PRIMARY: whole-file copies cannot merge objects written on several masters, so the \
     row-level (OPLOG) mode runs instead";

config_enum!(
    /// How replicas receive changes.
    ReplicationType {
        /// Row-level change stream from the primary's oplog.
        #[default]
        Oplog = "OPLOG",
        /// Consistent copies of whole database files.
        File = "FILE",
    }
);

config_enum!(
    /// How the replication stream is compressed (`replication.compression.type`).
    CompressionType {
        /// Sent as it is.
        #[default]
        None = "NONE",
        /// zstd, when both ends agree (negotiated in the replica's `Hello`).
        Zstd = "ZSTD",
    }
);

/// `replication.compression`: `{"type": "ZSTD", "level": 3}` compresses what a
/// primary sends its replicas (entries, heartbeats, full-sync snapshots, FILE copies) when the
/// replica asks for it too; either end set to NONE (or a node that predates compression) keeps
/// the stream plain.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CompressionConfig {
    /// NONE or ZSTD.
    #[serde(rename = "type")]
    pub kind: CompressionType,
    /// zstd's level, 1 (fastest) to 19 (smallest).
    pub level: i32,
}

impl CompressionConfig {
    /// Levels accepted in `replication.compression.level`.
    pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
}

impl Default for CompressionConfig {
    /// NONE (level 3 once turned on): on loopback zstd cost a full sync of a 2.4 GB database
    /// 3.4 × its throughput (74 against 249 MB/s, BENCHMARKS.md "Compression").
    fn default() -> Self {
        Self {
            kind: CompressionType::None,
            level: 3,
        }
    }
}

config_enum!(
    /// How a MULTI_PRIMARY conflict is resolved (`replication.conflicts`): by the row's home
    /// master (the *target*, its table's rendezvous owner over every configured master) against
    /// the other master's change (the *source*).
    ConflictStrategy {
        /// The source's change is applied, and the row then written anew by the home.
        #[default]
        SourceWins = "SOURCE_WINS",
        /// The home's row is kept, and written anew so that every master takes it.
        TargetWins = "TARGET_WINS",
        /// Kept open (`SHOW CONFLICTS`) until resolved with `RESOLVE CONFLICT`.
        Manual = "MANUAL",
    }
);

/// `replication.conflicts` (MULTI_PRIMARY): the strategy of each table (`"db.table"`), else of
/// its database, else `strategy`; how many resolved conflicts each master keeps listed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ConflictsConfig {
    /// The default strategy.
    pub strategy: ConflictStrategy,
    /// Per database.
    pub databases: std::collections::BTreeMap<String, ConflictStrategy>,
    /// Per table, keyed `"<database>.<table>"`.
    pub tables: std::collections::BTreeMap<String, ConflictStrategy>,
    /// Resolved conflicts kept in `dirkdb_conflicts` (the newest; open ones are always kept).
    pub keep_resolved: u64,
}

/// The default of `replication.conflicts.keepResolved`.
pub const DEFAULT_KEEP_RESOLVED: u64 = 10_000;

impl Default for ConflictsConfig {
    fn default() -> ConflictsConfig {
        ConflictsConfig {
            strategy: ConflictStrategy::default(),
            databases: Default::default(),
            tables: Default::default(),
            keep_resolved: DEFAULT_KEEP_RESOLVED,
        }
    }
}

impl ConflictsConfig {
    /// The strategy of `db`.`table`.
    pub fn strategy_for(&self, db: &str, table: &str) -> ConflictStrategy {
        self.tables
            .get(&format!("{db}.{table}"))
            .or_else(|| self.databases.get(db))
            .copied()
            .unwrap_or(self.strategy)
    }
}

config_enum!(
    /// Whether the proxy promotes a replica by itself.
    FailoverMode {
        /// Promote after `detectionMillis` without a healthy primary.
        #[default]
        Automatic = "AUTOMATIC",
        /// Wait for an operator's `POST /cluster/failover`.
        Manual = "MANUAL",
    }
);

/// `routing` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RoutingConfig {
    /// How reads are routed.
    pub reads: ReadRouting,
    /// How writes are routed.
    pub writes: WriteRouting,
}

/// `routing.reads`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReadRouting {
    /// How reads are spread.
    pub strategy: ReadStrategy,
    /// Which roles may serve reads.
    pub include_roles: Vec<Role>,
    /// Replicas further behind than this are skipped.
    pub max_replication_lag_ms: u64,
    /// Whether a session must read its own writes.
    pub consistency: ReadConsistency,
}

impl Default for ReadRouting {
    fn default() -> Self {
        Self {
            strategy: ReadStrategy::RoundRobin,
            include_roles: vec![Role::Primary, Role::Replica],
            max_replication_lag_ms: 1000,
            consistency: ReadConsistency::ReadYourWrites,
        }
    }
}

/// `routing.writes`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WriteRouting {
    /// Who accepts writes.
    pub mode: WriteMode,
    /// How many replicas must confirm a write before it is acknowledged.
    pub write_concern: WriteConcern,
    /// MULTI_PRIMARY: what has an owner.
    pub partition: Partition,
    /// MULTI_PRIMARY: how owners are chosen.
    pub hash: OwnerHash,
}

impl Default for WriteRouting {
    fn default() -> Self {
        Self {
            mode: WriteMode::SinglePrimary,
            write_concern: WriteConcern::default(),
            partition: Partition::DbObject,
            hash: OwnerHash::Rendezvous,
        }
    }
}

/// `routing.writes.writeConcern`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WriteConcern {
    /// Replicas that must have applied a write (0 = asynchronous).
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout_ms: u64,
}

impl Default for WriteConcern {
    fn default() -> Self {
        Self {
            replicas: 0,
            timeout_ms: 2000,
        }
    }
}

/// `replication` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReplicationConfig {
    /// OPLOG or FILE.
    #[serde(rename = "type")]
    pub kind: ReplicationType,
    /// FILE mode sweep interval.
    pub interval_seconds: u64,
    /// FILE mode: send only the pages that changed since the secondary's copy (else every page).
    pub page_deltas: bool,
    /// Heartbeat period between primary and replicas.
    pub heartbeat_millis: u64,
    /// Oplog bounds.
    pub oplog: OplogConfig,
    /// Compression of the stream to replicas.
    pub compression: CompressionConfig,
    /// MULTI_PRIMARY: how conflicts are resolved.
    pub conflicts: ConflictsConfig,
    /// The file asked for FILE under MULTI_PRIMARY, which runs OPLOG instead
    /// ([`FILE_UNDER_MULTI_PRIMARY`]); set by [`ClusterConfig::parse`].
    #[serde(skip)]
    pub file_replaced_by_oplog: bool,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            kind: ReplicationType::Oplog,
            interval_seconds: 2,
            page_deltas: true,
            heartbeat_millis: 500,
            oplog: OplogConfig::default(),
            compression: CompressionConfig::default(),
            conflicts: ConflictsConfig::default(),
            file_replaced_by_oplog: false,
        }
    }
}

/// `replication.oplog`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct OplogConfig {
    /// Entries kept at most.
    pub max_entries: u64,
    /// Days an entry is kept at most.
    pub retention_days: u64,
    /// Row keys one change-feed notice lists at most (`DIRK CHANGES`); a notice that would list
    /// more reports its tables as changed as a whole.
    pub change_feed_row_keys: u64,
    /// Bytes of row images (each changed row's columns after the commit) one notice carries at
    /// most; past it the rows are listed by key only and a cache drops what it kept of them
    /// instead of refreshing it. 0: no images.
    pub change_feed_row_image_bytes: u64,
}

impl Default for OplogConfig {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            retention_days: 7,
            change_feed_row_keys: crate::change_feed::DEFAULT_FEED_ROW_KEYS,
            change_feed_row_image_bytes: crate::change_feed::DEFAULT_FEED_ROW_IMAGE_BYTES,
        }
    }
}

/// `failover` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FailoverConfig {
    /// Automatic or manual promotion.
    pub mode: FailoverMode,
    /// How long the primary must be unreachable before it is replaced.
    pub detection_millis: u64,
    /// The primary's write lease, renewed by the proxy at every health check (default:
    /// `detectionMillis`); a primary whose lease ends refuses writes.
    pub lease_millis: Option<u64>,
    /// How far the proxy's and the servers' clocks may drift apart over a lease (default:
    /// a tenth of `detectionMillis`, at least 100 ms); the proxy promotes a node only once the
    /// old primary's lease plus this margin has passed since its last renewal.
    pub clock_drift_millis: Option<u64>,
    /// Majority leases: a primary also needs to have heard, within its lease, from enough
    /// replicas of its term (acknowledgements or heartbeats) to make a majority of the
    /// instances with itself; cut off from them it refuses writes by itself and the proxy
    /// replaces it. Default false (the proxy's renewal alone grants the lease).
    pub majority_lease: bool,
    /// Who decides a failover: this proxy alone (`LOCAL`, the default) or the proxies together
    /// through etcd (`ETCD`).
    pub coordinator: CoordinatorConfig,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            mode: FailoverMode::Automatic,
            detection_millis: 3000,
            lease_millis: None,
            clock_drift_millis: None,
            majority_lease: false,
            coordinator: CoordinatorConfig::Local,
        }
    }
}

/// `failover.coordinator`: where the cluster's decisions (current primary, term, which proxy
/// decides) live.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum CoordinatorConfig {
    /// One proxy decides by itself; nothing else to run.
    #[default]
    #[serde(rename = "LOCAL", alias = "local", alias = "Local")]
    Local,
    /// The proxies share one decision through etcd.
    #[serde(rename = "ETCD", alias = "etcd", alias = "Etcd")]
    Etcd(EtcdCoordinator),
}

/// `failover.coordinator` with `"type": "ETCD"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdCoordinator {
    /// etcd's client addresses (`host:port`, or `http://host:port`).
    pub endpoints: Vec<String>,
    /// The key prefix of this cluster's state (`/dirkdb/<cluster name>`); two clusters sharing an
    /// etcd must use different prefixes.
    pub prefix: String,
    /// How long a proxy that stops answering etcd stays alive there (its lease), in
    /// milliseconds; rounded up to whole seconds (etcd's lease unit). Default 3000.
    #[serde(default = "EtcdCoordinator::default_lease_millis")]
    pub lease_millis: u64,
    /// When true, each server also holds its own lease in etcd (same `leaseMillis`): a primary
    /// writes only while it renews it and etcd's primary record names it at its term, so a
    /// primary cut off from etcd stops accepting writes by itself. Default false.
    #[serde(default)]
    pub server_leases: bool,
}

impl EtcdCoordinator {
    fn default_lease_millis() -> u64 {
        3000
    }

    /// The etcd lease's TTL in whole seconds (at least 1).
    pub fn lease_seconds(&self) -> i64 {
        self.lease_millis.div_ceil(1000).max(1) as i64
    }

    fn check(&self) -> Result<(), ConfigError> {
        const FIELD: &str = "failover.coordinator";
        if self.endpoints.is_empty() {
            return Err(invalid(
                &format!("{FIELD}.endpoints"),
                "must name at least one etcd address (host:port)",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !is_host_port(e.strip_prefix("http://").unwrap_or(e)) {
                let msg = format!("`{e}` is not host:port (https is not supported)");
                return Err(invalid(&format!("{FIELD}.endpoints[{i}]"), &msg));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.trim_end_matches('/').len() < 2 {
            return Err(invalid(
                &format!("{FIELD}.prefix"),
                "must be a key path such as /dirkdb/<cluster name>",
            ));
        }
        if self.lease_millis < 1000 {
            return Err(invalid(
                &format!("{FIELD}.leaseMillis"),
                "must be at least 1000 (etcd leases count whole seconds)",
            ));
        }
        Ok(())
    }
}

impl FailoverConfig {
    /// The lease length in force (`leaseMillis`, else `detectionMillis`; at least 50 ms).
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_millis.unwrap_or(self.detection_millis).max(50))
    }

    /// The clock-drift margin in force.
    pub fn clock_drift(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.clock_drift_millis
                .unwrap_or((self.detection_millis / 10).max(100)),
        )
    }
}

/// `limits` section: what one client may ask of a server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LimitsConfig {
    /// Longest statement accepted, in bytes (default 16 MiB).
    pub max_statement_bytes: usize,
    /// Client connections served at once; further ones are refused with a message.
    pub max_connections: usize,
    /// Rows one result may have; larger results are refused before any row is sent (0 = no limit).
    pub max_result_rows: u64,
    /// Rows per `RELATION_JSON_PAGE`.
    pub page_rows: usize,
    /// How long a statement waits for another writer's lock, in milliseconds.
    pub busy_timeout_ms: u64,
    /// Deepest expression tree a statement may have (operators chained, parentheses nested);
    /// deeper statements are refused before they are parsed, by the proxy, the cache and the
    /// server alike (see `sql::limits`).
    pub max_expression_depth: usize,
    /// On shutdown, how long running statements may take to finish before they are
    /// interrupted, in milliseconds (servers, proxy and cache).
    pub shutdown_timeout_ms: u64,
    /// A session idle this long inside an open transaction is rolled back and closed, by the
    /// server, the proxy and the cache (0: never); see `conn_limit`.
    pub idle_in_transaction_timeout_ms: u64,
    /// Bytes that large statements (over 64 KiB) running at once may hold in one process;
    /// one that does not fit is refused at once (0: no bound); see `in_flight`.
    pub max_in_flight_statement_bytes: usize,
    /// A session idle this long outside a transaction (no statement sent, none running) is
    /// told so and closed, by the server, the proxy and the cache (0: never, the default);
    /// connections of the cluster's own parts are exempt (see `conn_limit`).
    pub idle_timeout_ms: u64,
    /// Client connections one IP address may hold at once in one process; one more is refused
    /// with a message (0: no bound). The cluster's own parts are exempt (see `conn_limit`).
    pub max_connections_per_address: usize,
    /// IP addresses exempt from `maxConnectionsPerAddress` and `idleTimeoutMs` besides those
    /// the file names as hosts (a proxy or cache whose outgoing address is not its listenHost).
    pub exempt_addresses: Vec<std::net::IpAddr>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_statement_bytes: 16 * 1024 * 1024,
            max_connections: 1024,
            max_result_rows: 0,
            page_rows: 500,
            busy_timeout_ms: 5000,
            max_expression_depth: crate::sql::limits::DEFAULT_MAX_EXPRESSION_DEPTH,
            shutdown_timeout_ms: 10_000,
            idle_in_transaction_timeout_ms: 60_000,
            max_in_flight_statement_bytes: 64 * 1024 * 1024,
            idle_timeout_ms: 0,
            max_connections_per_address: 256,
            exempt_addresses: Vec::new(),
        }
    }
}

config_enum!(
    /// SQLite's `synchronous` setting: how hard a commit is pushed to disk.
    Synchronous {
        /// fsync on every commit: survives power loss.
        #[default]
        Full = "FULL",
        /// fsync at checkpoints only: survives a process crash (`kill -9`), not power loss.
        Normal = "NORMAL",
    }
);

/// `storage` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct StorageConfig {
    /// Commit durability.
    pub synchronous: Synchronous,
    /// With `synchronous = FULL`: commits made at the same time share one sync of their WAL
    /// (group commit) instead of one each; every commit is still on disk before it is
    /// acknowledged. `false` leaves each commit's sync to SQLite.
    pub group_commit: bool,
}

impl StorageConfig {
    /// True when sessions' commits are made durable by group syncs (`FULL` and `groupCommit`).
    pub fn uses_group_commit(&self) -> bool {
        self.group_commit && self.synchronous == Synchronous::Full
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            group_commit: true,
        }
    }
}

impl ClusterConfig {
    /// Reads, parses and validates a file; each unknown field is logged as a warning.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let (config, unknown) = Self::parse_reporting(&text)?;
        for field in &unknown {
            tracing::warn!(file = %path.display(), "{field}");
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses JSON text into the model without checking the topology.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_reporting(text).map(|(config, _)| config)
    }

    /// Like [`ClusterConfig::parse`], also returning the fields the model does not know.
    pub fn parse_reporting(text: &str) -> Result<(Self, Vec<UnknownField>), ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let (mut config, unknown): (ClusterConfig, _) = unknown_fields::deserialize_reporting(de)
            .map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return json_error(&inner);
            }
            ConfigError::Syntax {
                field,
                message: inner.to_string(),
            }
        })?;
        config.replace_file_under_multi_primary();
        Ok((config, unknown))
    }

    /// Under MULTI_PRIMARY, FILE replication becomes OPLOG (see [`FILE_UNDER_MULTI_PRIMARY`]),
    /// and the replacement is recorded so that every part can say so.
    fn replace_file_under_multi_primary(&mut self) {
        if self.is_multi_primary() && self.replication.kind == ReplicationType::File {
            self.replication.kind = ReplicationType::Oplog;
            self.replication.file_replaced_by_oplog = true;
        }
    }

    /// True with `routing.writes.mode` MULTI_PRIMARY.
    pub fn is_multi_primary(&self) -> bool {
        self.routing.writes.mode == WriteMode::MultiPrimary
    }

    /// MULTI_PRIMARY: the masters' ids in `config.json` order (the order rendezvous ties use);
    /// empty in SINGLE_PRIMARY.
    pub fn master_ids(&self) -> Vec<String> {
        if !self.is_multi_primary() {
            return Vec::new();
        }
        self.primaries().map(|i| i.id.clone()).collect()
    }

    /// Checks the topology as a whole; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_instances()?;
        self.validate_routing()?;
        self.validate_limits()?;
        self.validate_compression()?;
        if let CoordinatorConfig::Etcd(etcd) = &self.failover.coordinator {
            etcd.check()?;
        }
        for (i, upstream) in self.cache.upstreams.iter().enumerate() {
            if !is_host_port(upstream) {
                let msg = format!("`{upstream}` is not host:port");
                return Err(invalid(&format!("cache.upstreams[{i}]"), &msg));
            }
        }
        self.security
            .check()
            .map_err(|(field, message)| invalid(&field, &message))
    }

    fn validate_instances(&self) -> Result<(), ConfigError> {
        if self.instances.is_empty() {
            return Err(invalid("instances", "at least one instance is required"));
        }
        let mut ids = HashSet::new();
        let mut ports = HashSet::new();
        for (i, inst) in self.instances.iter().enumerate() {
            if inst.id.trim().is_empty() {
                return Err(invalid(&format!("instances[{i}].id"), "must not be empty"));
            }
            if !ids.insert(inst.id.as_str()) {
                let msg = format!("duplicate instance id `{}`", inst.id);
                return Err(invalid(&format!("instances[{i}].id"), &msg));
            }
            let mut own = vec![("port", inst.port)];
            own.extend(inst.admin_port.map(|p| ("adminPort", p)));
            for (name, port) in own {
                if port == 0 || !ports.insert((inst.host.clone(), port)) {
                    let msg = format!("port {port} on {} is 0 or already used", inst.host);
                    return Err(invalid(&format!("instances[{i}].{name}"), &msg));
                }
            }
        }
        let primaries = self.primaries().count();
        if primaries == 0 {
            return Err(invalid(
                "instances[].role",
                "no instance has role PRIMARY (or MASTER)",
            ));
        }
        if primaries > 1 && self.routing.writes.mode == WriteMode::SinglePrimary {
            return Err(invalid(
                "instances[].role",
                &format!("SINGLE_PRIMARY allows one PRIMARY, found {primaries}"),
            ));
        }
        Ok(())
    }

    fn validate_routing(&self) -> Result<(), ConfigError> {
        if self.is_multi_primary() {
            return self.validate_multi_primary();
        }
        if self.routing.reads.include_roles.is_empty() {
            return Err(invalid(
                "routing.reads.includeRoles",
                "must name at least one role",
            ));
        }
        let replicas = self
            .instances
            .iter()
            .filter(|i| i.role == Role::Replica)
            .count();
        let wanted = self.routing.writes.write_concern.replicas as usize;
        if wanted > replicas {
            let msg = format!("asks for {wanted} replicas but the topology has {replicas}");
            return Err(invalid("routing.writes.writeConcern.replicas", &msg));
        }
        Ok(())
    }

    /// MULTI_PRIMARY: masters only, and a write concern no larger than the other masters.
    fn validate_multi_primary(&self) -> Result<(), ConfigError> {
        if let Some(i) = self.instances.iter().position(|i| i.role == Role::Replica) {
            return Err(invalid(
                &format!("instances[{i}].role"),
                "MULTI_PRIMARY takes MASTER (PRIMARY) instances only: every master holds all \
                 the data; REPLICA instances are not supported in this mode",
            ));
        }
        if self.routing.reads.include_roles.is_empty() {
            return Err(invalid(
                "routing.reads.includeRoles",
                "must name at least one role",
            ));
        }
        let wanted = self.routing.writes.write_concern.replicas as usize;
        let others = self.primaries().count().saturating_sub(1);
        if wanted > others {
            let msg = format!(
                "asks for {wanted} other masters to apply each write, but the topology has \
                 {others} masters besides the one that takes it (MULTI_PRIMARY)"
            );
            return Err(invalid("routing.writes.writeConcern.replicas", &msg));
        }
        Ok(())
    }

    fn validate_compression(&self) -> Result<(), ConfigError> {
        let level = self.replication.compression.level;
        if !CompressionConfig::LEVELS.contains(&level) {
            let msg = format!("{level} is not a zstd level: use 1 (fastest) to 19 (smallest)");
            return Err(invalid("replication.compression.level", &msg));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_statement_bytes == 0 {
            return Err(invalid("limits.maxStatementBytes", "must be positive"));
        }
        if l.max_connections == 0 {
            return Err(invalid("limits.maxConnections", "must be positive"));
        }
        if l.page_rows == 0 {
            return Err(invalid("limits.pageRows", "must be positive"));
        }
        if l.max_expression_depth == 0 {
            return Err(invalid("limits.maxExpressionDepth", "must be positive"));
        }
        Ok(())
    }

    /// The instances whose configured role is PRIMARY.
    pub fn primaries(&self) -> impl Iterator<Item = &InstanceConfig> {
        self.instances.iter().filter(|i| i.role == Role::Primary)
    }

    /// The instance named by `--instance`.
    pub fn instance(&self, id: &str) -> Result<&InstanceConfig, ConfigError> {
        self.instances.iter().find(|i| i.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.instances.iter().map(|i| i.id.as_str()).collect();
            ConfigError::UnknownInstance(id.to_string(), known.join(", "))
        })
    }
}

/// True for `host:port` with a non-empty host and a port from 1 to 65535.
fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.trim().is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

fn invalid(field: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = r#"{
      "configVersion": 1,
      "loadBalancer": { "listenHost": "127.0.0.1", "listenPort": 3949, "adminPort": 4949 },
      "instances": [
        { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": 3948, "adminPort": 4948, "dataDirectory": "data/m1" },
        { "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": 3950, "adminPort": 4950, "dataDirectory": "data/m2" }
      ],
      "routing": { "reads": { "strategy": "RENDEZVOUS", "includeRoles": ["PRIMARY", "REPLICA"] } }
    }"#;

    fn with(text: &str) -> Result<ClusterConfig, ConfigError> {
        let c = ClusterConfig::parse(text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn broken_json_is_reported_by_position_with_a_hint_and_a_missing_file_once() {
        let text = "{ \"instances\": [ { \"id\": \"m1\",, \"port\": 1 } ] }";
        let e = ClusterConfig::parse(text).unwrap_err().to_string();
        assert!(e.contains("not valid JSON at line 1, column"), "{e}");
        assert!(
            e.contains("key must be a string (a doubled or trailing comma"),
            "{e}"
        );
        assert!(
            !e.contains("instances[0]"),
            "no JSON path for broken JSON: {e}"
        );
        let e = ClusterConfig::load(Path::new("/nonexistent/config.json")).unwrap_err();
        assert!(
            std::error::Error::source(&e).is_none(),
            "the reason is said once"
        );
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    #[test]
    fn the_cache_admin_port_follows_its_listen_port_unless_given() {
        let with = |cache: &str| {
            ClusterConfig::parse(&format!(
                r#"{{ "instances": [ {{ "id": "m1", "role": "PRIMARY", "host": "127.0.0.1",
                   "port": 1, "dataDirectory": "a" }} ], "cache": {cache} }}"#
            ))
            .unwrap()
            .cache
            .admin_port()
        };
        assert_eq!(with("{}"), 4951);
        assert_eq!(with(r#"{ "listenPort": 5951 }"#), 6951);
        assert_eq!(with(r#"{ "listenPort": 5951, "adminPort": 7000 }"#), 7000);
    }

    #[test]
    fn loads_our_file_with_defaults() {
        let c = with(OURS).unwrap();
        assert_eq!(c.instances.len(), 2);
        assert_eq!(c.instances[1].role, Role::Replica);
        assert_eq!(c.routing.reads.strategy, ReadStrategy::Rendezvous);
        assert_eq!(c.routing.reads.max_replication_lag_ms, 1000);
        assert_eq!(c.limits.max_statement_bytes, 16 * 1024 * 1024);
        assert_eq!(c.replication.kind, ReplicationType::Oplog);
        assert_eq!(c.instance("m2").unwrap().sql_addr(), "127.0.0.1:3950");
        assert!(c.instance("m9").is_err());
    }

    /// DirkDB's own config.json (the MULTI_PRIMARY issue's copy, hosts on loopback).
    const DIRK: &str = r#"{"configVersion": 1,
     "loadBalancer": {"listenHost": "0.0.0.0", "listenPort": 3949},
     "instances": [
       {"id": "m1", "role": "MASTER", "host": "127.0.0.1", "port": 3948, "dataDirectory": "data/m1"},
       {"id": "m2", "role": "MASTER", "host": "127.0.0.1", "port": 3950, "dataDirectory": "data/m2"},
       {"id": "m3", "role": "MASTER", "host": "127.0.0.1", "port": 4024, "dataDirectory": "data/m3"}],
     "routing": {"reads": {"strategy": "ROUND_ROBIN", "includeRoles": ["MASTER"]},
                 "writes": {"mode": "MULTI_PRIMARY", "partition": "DB_OBJECT", "hash": "RENDEZVOUS"}},
     "replication": {"type": "FILE", "intervalSeconds": 2}}"#;

    #[test]
    fn dirkdb_java_file_loads_as_multi_primary_with_oplog_instead_of_file() {
        let c = with(DIRK).unwrap();
        assert_eq!(c.instances[0].role, Role::Primary);
        assert_eq!(c.routing.reads.include_roles, vec![Role::Primary]);
        assert!(c.is_multi_primary());
        assert_eq!(c.routing.writes.partition, Partition::DbObject);
        assert_eq!(c.routing.writes.hash, OwnerHash::Rendezvous);
        assert_eq!(c.master_ids(), ["m1", "m2", "m3"]);
        assert_eq!(
            c.replication.kind,
            ReplicationType::Oplog,
            "FILE cannot merge objects of several masters"
        );
        assert!(c.replication.file_replaced_by_oplog);
        let oplog = with(&DIRK.replace("\"FILE\"", "\"OPLOG\"")).unwrap();
        assert!(!oplog.replication.file_replaced_by_oplog);
        // The same file in single-primary form loads, and keeps FILE.
        let single = DIRK
            .replace("\"MULTI_PRIMARY\"", "\"SINGLE_PRIMARY\"")
            .replacen(
                "\"MASTER\", \"host\": \"127.0.0.1\", \"port\": 3950",
                "\"SECONDARY\", \"host\": \"127.0.0.1\", \"port\": 3950",
                1,
            )
            .replacen(
                "\"MASTER\", \"host\": \"127.0.0.1\", \"port\": 4024",
                "\"SECONDARY\", \"host\": \"127.0.0.1\", \"port\": 4024",
                1,
            );
        let single = with(&single).unwrap();
        assert_eq!(single.replication.kind, ReplicationType::File);
        assert!(single.master_ids().is_empty());
    }

    #[test]
    fn multi_primary_refuses_replicas_unknown_partitions_and_a_write_concern() {
        let replica = DIRK.replacen("\"MASTER\"", "\"REPLICA\"", 1);
        let err = with(&replica).unwrap_err().to_string();
        assert!(
            err.contains("instances[0].role") && err.contains("MULTI_PRIMARY"),
            "{err}"
        );
        let err = with(&DIRK.replace("DB_OBJECT", "ROW"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("routing.writes.partition"), "{err}");
        let err = with(&DIRK.replace("\"hash\": \"RENDEZVOUS\"", "\"hash\": \"MODULO\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("routing.writes.hash"), "{err}");
        let wc = |k: u32| {
            DIRK.replace(
                "\"hash\": \"RENDEZVOUS\"}",
                &format!("\"hash\": \"RENDEZVOUS\", \"writeConcern\": {{\"replicas\": {k}}}}}"),
            )
        };
        with(&wc(0)).unwrap();
        with(&wc(2)).unwrap();
        let err = with(&wc(3)).unwrap_err().to_string();
        assert!(err.contains("writeConcern.replicas"), "{err}");
    }

    #[test]
    fn unknown_enum_value_names_the_field() {
        let bad = OURS.replace("\"REPLICA\"", "\"LEADER\"");
        let err = with(&bad).unwrap_err().to_string();
        assert!(err.contains("instances[1].role"), "{err}");
        assert!(err.contains("LEADER"), "{err}");
        let bad = OURS.replace("RENDEZVOUS", "RANDOM");
        let err = with(&bad).unwrap_err().to_string();
        assert!(err.contains("routing.reads.strategy"), "{err}");
    }

    #[test]
    fn wrong_type_and_syntax_errors_name_the_field() {
        let err = with(&OURS.replace("3950,", "\"x\","))
            .unwrap_err()
            .to_string();
        assert!(err.contains("instances[1].port"), "{err}");
        let err = with("{ \"instances\": [ }").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        let err = with("{}").unwrap_err().to_string();
        assert!(err.contains("instances"), "{err}");
    }

    #[test]
    fn topology_errors_name_the_field() {
        let dup_id = OURS.replace("\"id\": \"m2\"", "\"id\": \"m1\"");
        assert!(with(&dup_id)
            .unwrap_err()
            .to_string()
            .contains("instances[1].id"));
        let dup_port = OURS.replace("\"port\": 3950", "\"port\": 3948");
        assert!(with(&dup_port)
            .unwrap_err()
            .to_string()
            .contains("instances[1].port"));
        let no_primary = OURS.replace("\"PRIMARY\", \"host\"", "\"REPLICA\", \"host\"");
        assert!(with(&no_primary)
            .unwrap_err()
            .to_string()
            .contains("no instance has role PRIMARY"));
        let two = OURS.replace("\"REPLICA\", \"host\"", "\"PRIMARY\", \"host\"");
        assert!(with(&two)
            .unwrap_err()
            .to_string()
            .contains("SINGLE_PRIMARY"));
        let wc = OURS.replace(
            "\"routing\": {",
            "\"routing\": { \"writes\": { \"writeConcern\": { \"replicas\": 2 } },",
        );
        assert!(with(&wc)
            .unwrap_err()
            .to_string()
            .contains("writeConcern.replicas"));
    }

    #[test]
    fn the_failover_coordinator_is_local_unless_etcd_is_named_and_etcd_settings_are_checked() {
        let plain = with(OURS).unwrap();
        assert_eq!(plain.failover.coordinator, CoordinatorConfig::Local);
        let with_coordinator = |coordinator: &str| {
            let text = OURS.replacen(
                r#""configVersion": 1,"#,
                &format!(r#""configVersion": 1, "failover": {{ "coordinator": {coordinator} }},"#),
                1,
            );
            with(&text).map(|c| c.failover.coordinator)
        };
        assert_eq!(
            with_coordinator(r#"{"type": "LOCAL"}"#).unwrap(),
            CoordinatorConfig::Local
        );
        let etcd = with_coordinator(
            r#"{"type": "ETCD", "endpoints": ["127.0.0.1:2379", "http://10.0.0.2:2379"], "prefix": "/dirkdb/shop"}"#,
        )
        .unwrap();
        let CoordinatorConfig::Etcd(etcd) = etcd else {
            panic!("not etcd: {etcd:?}")
        };
        assert_eq!(etcd.prefix, "/dirkdb/shop");
        assert_eq!((etcd.lease_millis, etcd.lease_seconds()), (3000, 3));
        let refused = |coordinator: &str, field: &str| {
            let e = with_coordinator(coordinator).unwrap_err().to_string();
            assert!(e.contains(field), "{coordinator}: {e}");
        };
        refused(r#"{"type": "CONSUL"}"#, "failover.coordinator");
        refused(
            r#"{"type": "ETCD", "endpoints": [], "prefix": "/d/x"}"#,
            "failover.coordinator.endpoints",
        );
        refused(
            r#"{"type": "ETCD", "endpoints": ["nohost"], "prefix": "/d/x"}"#,
            "failover.coordinator.endpoints[0]",
        );
        refused(
            r#"{"type": "ETCD", "endpoints": ["a:1"], "prefix": "dirkdb"}"#,
            "failover.coordinator.prefix",
        );
        refused(
            r#"{"type": "ETCD", "endpoints": ["a:1"], "prefix": "/d/x", "leaseMillis": 200}"#,
            "failover.coordinator.leaseMillis",
        );
        refused(
            r#"{"type": "ETCD", "endpoint": ["a:1"], "prefix": "/d/x"}"#,
            "endpoint",
        );
    }

    #[test]
    fn the_cache_takes_a_list_of_upstreams_in_order_and_refuses_a_bad_one() {
        let text = OURS.replacen(
            r#""configVersion": 1,"#,
            r#""configVersion": 1, "cache": { "upstreams": ["127.0.0.1:3949", "127.0.0.1:3959"] },"#,
            1,
        );
        let c = with(&text).unwrap();
        assert_eq!(c.cache_upstream(), "127.0.0.1:3949,127.0.0.1:3959");
        assert_eq!(with(OURS).unwrap().cache_upstream(), "127.0.0.1:3949");
        let bad = OURS.replacen(
            r#""configVersion": 1,"#,
            r#""configVersion": 1, "cache": { "upstreams": ["127.0.0.1:3949", "proxy2"] },"#,
            1,
        );
        let e = with(&bad).unwrap_err().to_string();
        assert!(e.contains("cache.upstreams[1]"), "{e}");
    }

    #[test]
    fn replication_compression_is_read_and_its_level_checked() {
        let base = r#"{"instances": [{"id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": 3948,
                                      "dataDirectory": "data/m1"}],
                       "replication": {"compression": COMPRESSION}}"#;
        let parse = |c: &str| ClusterConfig::parse(&base.replace("COMPRESSION", c));
        let on = parse(r#"{"type": "ZSTD", "level": 9}"#).unwrap();
        assert_eq!(
            on.replication.compression,
            CompressionConfig {
                kind: CompressionType::Zstd,
                level: 9
            }
        );
        let default = parse("{}").unwrap();
        assert_eq!(
            default.replication.compression,
            CompressionConfig {
                kind: CompressionType::None,
                level: 3
            }
        );
        let off = parse(r#"{"type": "NONE"}"#).unwrap();
        assert_eq!(off.replication.compression.kind, CompressionType::None);
        let bad = parse(r#"{"type": "ZSTD", "level": 40}"#).unwrap();
        let bad = bad.validate().unwrap_err().to_string();
        assert!(bad.contains("replication.compression.level"), "{bad}");
        let unknown = parse(r#"{"type": "GZIP"}"#).unwrap_err().to_string();
        assert!(unknown.contains("GZIP"), "{unknown}");
    }
}
