//! The instances the proxy routes to, and which one is the primary, swapped atomically
//! (`ArcSwap`) so that statements never see a half-built topology.
//!
//! Readers (every statement) load the current [`Topology`] without waiting. Writers — failover,
//! live reload — go through [`SharedTopology::write`], one at a time (an async mutex), and build
//! their update from the latest value, so a failover and a reload never overwrite each other.

use dirkdb_core::in_flight::InFlight;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use dirkdb_core::config::{ClusterConfig, ReadStrategy, Role};
use dirkdb_core::rendezvous;
use tokio::sync::{Mutex, MutexGuard};

use crate::backend::{Backend, HealthState};

/// The proxy's current topology: loaded lock-free by statements, changed by one writer at a time.
pub struct SharedTopology {
    current: ArcSwap<Topology>,
    writer: Mutex<()>,
    /// Bytes held by the large statements the proxy's sessions run now.
    in_flight: Arc<InFlight>,
}

/// The right to change the topology, held by one writer at a time; dropped, the next writer runs.
pub struct TopologyWriter<'a> {
    shared: &'a SharedTopology,
    _turn: MutexGuard<'a, ()>,
}

impl SharedTopology {
    /// Shares `topology`.
    pub fn new(topology: Topology) -> SharedTopology {
        let in_flight = InFlight::new(topology.config.limits.max_in_flight_statement_bytes);
        SharedTopology {
            current: ArcSwap::from_pointee(topology),
            writer: Mutex::new(()),
            in_flight,
        }
    }

    /// The proxy's budget of bytes held by statements in flight.
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// The current topology, for a short look (a statement's routing).
    pub fn load(&self) -> Guard<Arc<Topology>> {
        self.current.load()
    }

    /// The current topology, to keep across awaits.
    pub fn load_full(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Waits for the writer's turn (another failover or reload may be under way).
    pub async fn write(&self) -> TopologyWriter<'_> {
        TopologyWriter {
            shared: self,
            _turn: self.writer.lock().await,
        }
    }
}

impl TopologyWriter<'_> {
    /// The latest topology: no other writer can change it while this writer holds its turn.
    pub fn current(&self) -> Arc<Topology> {
        self.shared.current.load_full()
    }

    /// Makes `topology` the current one; returns it.
    pub fn store(&self, topology: Topology) -> Arc<Topology> {
        let topology = Arc::new(topology);
        let max = topology.config.limits.max_in_flight_statement_bytes;
        self.shared.in_flight.set_max(max);
        self.shared.current.store(topology.clone());
        topology
    }
}

/// One topology: every backend, the primary among them, and the routing settings.
pub struct Topology {
    /// The configuration it was built from.
    pub config: ClusterConfig,
    /// Every instance.
    pub backends: Vec<Arc<Backend>>,
    /// Index of the primary in `backends`.
    pub primary: usize,
    /// Where the proxy persists which instance is primary (next to `config.json`).
    pub state_file: Option<std::path::PathBuf>,
    round_robin: AtomicUsize,
}

impl Topology {
    /// Builds a topology from a validated configuration; a primary chosen by an earlier failover
    /// and persisted in `state_file` wins over the file's roles.
    pub fn load(config: ClusterConfig, state_file: Option<std::path::PathBuf>) -> Topology {
        let mut topology = Topology::new(config);
        let chosen = state_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v["primary"].as_str().map(str::to_string));
        if let Some(i) = chosen.and_then(|id| topology.index_of(&id)) {
            topology.primary = i;
        }
        topology.state_file = state_file;
        topology
    }

    /// The same instances with another primary (after a failover).
    pub fn with_primary(&self, primary: usize) -> Topology {
        Topology {
            config: self.config.clone(),
            backends: self.backends.clone(),
            primary,
            state_file: self.state_file.clone(),
            round_robin: AtomicUsize::new(0),
        }
    }

    /// Position of an instance id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.id == id)
    }

    /// Builds a topology from a validated configuration.
    pub fn new(config: ClusterConfig) -> Topology {
        let backends: Vec<Arc<Backend>> = config
            .instances
            .iter()
            .map(|i| Arc::new(Backend::new(i)))
            .collect();
        let primary = config
            .instances
            .iter()
            .position(|i| i.role == Role::Primary)
            .unwrap_or(0);
        Topology {
            config,
            backends,
            primary,
            state_file: None,
            round_robin: AtomicUsize::new(0),
        }
    }

    /// The primary.
    pub fn primary(&self) -> &Arc<Backend> {
        &self.backends[self.primary]
    }

    /// The role the proxy gives a backend (MULTI_PRIMARY: every master is a primary).
    pub fn role_of(&self, index: usize) -> Role {
        if index == self.primary || self.is_master(index) {
            Role::Primary
        } else {
            Role::Replica
        }
    }

    /// True with `routing.writes.mode` MULTI_PRIMARY.
    pub fn is_multi_primary(&self) -> bool {
        self.config.is_multi_primary()
    }

    /// MULTI_PRIMARY: true for a master (an instance whose configured role is PRIMARY).
    pub fn is_master(&self, index: usize) -> bool {
        self.is_multi_primary()
            && self
                .config
                .instances
                .get(index)
                .is_some_and(|i| i.role == Role::Primary)
    }

    /// MULTI_PRIMARY: the masters that are not down, in `config.json` order (the order
    /// rendezvous ties use).
    pub fn masters_up(&self) -> Vec<Arc<Backend>> {
        (0..self.backends.len())
            .filter(|&i| self.is_master(i))
            .filter(|&i| self.backends[i].health().state != HealthState::Down)
            .map(|i| self.backends[i].clone())
            .collect()
    }

    /// MULTI_PRIMARY: the owner of `object` by DirkDB's rendezvous over the masters that own
    /// objects (see [`crate::ownership`]; the masters up before its first round).
    pub fn owner_of(&self, object: &rendezvous::ObjectRef) -> Option<Arc<Backend>> {
        let set: Vec<Arc<Backend>> = match crate::ownership::routing_set() {
            Some(ids) => ids
                .iter()
                .filter_map(|id| self.index_of(id).map(|i| self.backends[i].clone()))
                .collect(),
            None => self.masters_up(),
        };
        let ids: Vec<&str> = set.iter().map(|b| b.id.as_str()).collect();
        rendezvous::owner(&object.key(), &ids).map(|i| set[i].clone())
    }

    /// Backends that may serve a read, best first per the strategy; `database` feeds RENDEZVOUS.
    /// Down replicas, replicas over `maxReplicationLagMs`, and roles outside `includeRoles`
    /// are left out; the primary is the last resort, always appended when not already there.
    pub fn read_candidates(&self, database: Option<&str>) -> Vec<Arc<Backend>> {
        let reads = &self.config.routing.reads;
        let mut eligible: Vec<usize> = (0..self.backends.len())
            .filter(|&i| reads.include_roles.contains(&self.role_of(i)))
            .filter(|&i| {
                let h = self.backends[i].health();
                h.state == HealthState::Up || (i == self.primary && h.state != HealthState::Down)
            })
            .collect();
        match reads.strategy {
            ReadStrategy::RoundRobin => self.rotate(&mut eligible),
            ReadStrategy::LeastConnections => {
                // Rotated first, so instances with equally few statements share the reads.
                self.rotate(&mut eligible);
                eligible.sort_by_key(|&i| self.backends[i].in_flight());
            }
            ReadStrategy::Rendezvous => {
                // DirkDB's ranking over the eligible instances in config order.
                let key = rendezvous::database_key(database.unwrap_or(""));
                let ids: Vec<&str> = eligible
                    .iter()
                    .map(|&i| self.backends[i].id.as_str())
                    .collect();
                eligible = rendezvous::ranked(&key, &ids)
                    .into_iter()
                    .map(|r| eligible[r])
                    .collect();
            }
        }
        let mut ordered: Vec<Arc<Backend>> =
            eligible.iter().map(|&i| self.backends[i].clone()).collect();
        if !eligible.contains(&self.primary) {
            ordered.push(self.primary().clone());
        }
        ordered
    }
}

impl Topology {
    fn rotate(&self, eligible: &mut [usize]) {
        if !eligible.is_empty() {
            let start = self.round_robin.fetch_add(1, Ordering::Relaxed) % eligible.len();
            eligible.rotate_left(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(strategy: &str, roles: &str) -> Topology {
        let text = format!(
            r#"{{ "instances": [
              {{ "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": 1, "dataDirectory": "a" }},
              {{ "id": "m2", "role": "REPLICA", "host": "127.0.0.1", "port": 2, "dataDirectory": "b" }},
              {{ "id": "m3", "role": "REPLICA", "host": "127.0.0.1", "port": 3, "dataDirectory": "c" }} ],
              "routing": {{ "reads": {{ "strategy": "{strategy}", "includeRoles": {roles} }} }} }}"#
        );
        Topology::new(ClusterConfig::parse(&text).unwrap())
    }

    #[tokio::test]
    async fn writers_take_turns_and_each_sees_the_previous_update() {
        let shared = Arc::new(SharedTopology::new(topology(
            "ROUND_ROBIN",
            r#"["REPLICA"]"#,
        )));
        let first = shared.write().await;
        let second = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let w = shared.write().await;
                let primary = w.current().primary;
                w.store(w.current().with_primary(primary + 1));
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "the second writer waits for the first"
        );
        first.store(first.current().with_primary(1));
        drop(first);
        second.await.unwrap();
        assert_eq!(
            shared.load().primary().id,
            "m3",
            "built on the first writer's update"
        );
    }

    fn ids(v: &[Arc<Backend>]) -> Vec<&str> {
        v.iter().map(|b| b.id.as_str()).collect()
    }

    #[test]
    fn round_robin_rotates_and_the_primary_is_the_last_resort() {
        let t = topology("ROUND_ROBIN", r#"["REPLICA"]"#);
        let firsts: Vec<String> = (0..4)
            .map(|_| t.read_candidates(None)[0].id.clone())
            .collect();
        assert_eq!(firsts, ["m2", "m3", "m2", "m3"]);
        assert_eq!(ids(&t.read_candidates(None)).last(), Some(&"m1"));
        t.backends[1].set_health(|h| h.state = HealthState::Down);
        t.backends[2].set_health(|h| h.state = HealthState::Lagging);
        assert_eq!(ids(&t.read_candidates(None)), ["m1"]);
    }

    #[test]
    fn rendezvous_is_sticky_per_database_and_least_connections_prefers_idle() {
        let t = topology("RENDEZVOUS", r#"["PRIMARY", "REPLICA"]"#);
        let a = t.read_candidates(Some("shop"))[0].id.clone();
        assert!((0..10).all(|_| t.read_candidates(Some("shop"))[0].id == a));
        let owners: std::collections::HashSet<String> = (0..50)
            .map(|i| t.read_candidates(Some(&format!("db{i}")))[0].id.clone())
            .collect();
        assert_eq!(owners.len(), 3, "databases spread over every instance");
        // DirkDB's formula (vectors in core::rendezvous): testdb goes to m1, shop to m3.
        assert_eq!(t.read_candidates(Some("testdb"))[0].id, "m1");
        assert_eq!(t.read_candidates(Some("shop"))[0].id, "m3");
        t.backends[2].set_health(|h| h.state = HealthState::Down);
        assert_eq!(
            t.read_candidates(Some("shop"))[0].id,
            "m2",
            "the next by rendezvous when the first is down"
        );
        let t = topology("LEAST_CONNECTIONS", r#"["PRIMARY", "REPLICA"]"#);
        let _busy = (t.backends[0].start(), t.backends[1].start());
        assert_eq!(t.read_candidates(None)[0].id, "m3");
    }
}
