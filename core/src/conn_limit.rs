//! Per-connection limits that keep one client from locking the others out, shared by the
//! server, the proxy and the cache through the one accept loop ([`crate::accept_loop`]):
//!
//! * `limits.maxConnectionsPerAddress`: connections one IP address may hold at once. The accept
//!   loop asks [`ClientLimits::admit`] for an [`AddressSlot`] before it serves a connection; one
//!   over the bound gets an error frame naming the knob and is closed, so 1,000 silent sockets
//!   from one address take a bounded share of `maxConnections` and never lock others out.
//! * `limits.idleTimeoutMs`: a session that sends nothing for this long outside a transaction is
//!   told so and closed (0, the default: never; see the README for why).
//! * `limits.idleInTransactionTimeoutMs` (PostgreSQL's `idle_in_transaction_session_timeout`): a
//!   session idle inside an open transaction holds the instance's writer lock, so every other
//!   writer waits until its `busyTimeoutMs` fails. After each statement that leaves a
//!   transaction open, the parts set an [`IdleLimit`] on the connection; a client that sends
//!   nothing within it is told so, its connection is closed, and closing it rolls the
//!   transaction back (the server closes the SQLite connection; the proxy and the cache close
//!   their upstream connection, which does the same one hop further).
//!
//! The cluster's own parts are exempt from the first two: connections from an address the file
//! names as a host (every instance's `host` and `listenHost`, `loadBalancer.listenHost`,
//! `cache.listenHost`, when written as an IP address or `localhost`) or lists in
//! `limits.exemptAddresses`, and, with `requireAuth`, every connection once it authenticated as
//! `security.clusterUser` ([`AddressSlot::release`]). So the proxy's pool to a server and the
//! cache's to the proxy are never cut by them. [`ClientLimits::reload`] applies a new file live
//! (connections already served stay; the new bound applies to the next ones).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::config::{ClusterConfig, LimitsConfig};
use crate::connection::IdleLimit;
use crate::sync::{lock, read, write};

/// The limits in force (reloadable) and the connections counted per address.
#[derive(Debug)]
pub struct ClientLimits {
    settings: RwLock<Settings>,
    counts: Mutex<HashMap<IpAddr, usize>>,
    refused_per_address: AtomicU64,
}

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    per_address: usize,
    idle_timeout_ms: u64,
    idle_in_transaction_ms: u64,
    exempt: HashSet<IpAddr>,
}

impl Settings {
    fn of(config: &ClusterConfig) -> Settings {
        let l = &config.limits;
        Settings {
            per_address: l.max_connections_per_address,
            idle_timeout_ms: l.idle_timeout_ms,
            idle_in_transaction_ms: l.idle_in_transaction_timeout_ms,
            exempt: exempt_addresses(config),
        }
    }
}

/// The addresses of the cluster's own parts as the file names them, and `limits.exemptAddresses`.
fn exempt_addresses(config: &ClusterConfig) -> HashSet<IpAddr> {
    let mut hosts: Vec<&str> = vec![&config.load_balancer.listen_host, &config.cache.listen_host];
    for instance in &config.instances {
        hosts.push(&instance.host);
        hosts.extend(instance.listen_host.as_deref());
    }
    let mut exempt: HashSet<IpAddr> = config.limits.exempt_addresses.iter().copied().collect();
    for host in hosts {
        exempt.extend(literal_addresses(host));
    }
    exempt
}

/// The addresses a host written in the file stands for, without asking DNS: an IP literal, or
/// `localhost`; an unspecified address (`0.0.0.0`) stands for none.
fn literal_addresses(host: &str) -> Vec<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => vec![ip],
        _ => Vec::new(),
    }
}

impl ClientLimits {
    /// The limits of `config`.
    pub fn new(config: &ClusterConfig) -> Arc<ClientLimits> {
        ClientLimits::with(Settings::of(config))
    }

    fn with(settings: Settings) -> Arc<ClientLimits> {
        Arc::new(ClientLimits {
            settings: RwLock::new(settings),
            counts: Mutex::default(),
            refused_per_address: AtomicU64::new(0),
        })
    }

    /// No bound and no idle timeout (a session outside any accept loop, in tests);
    /// `limits.idleInTransactionTimeoutMs` as `limits` says.
    pub fn unlimited(limits: &LimitsConfig) -> Arc<ClientLimits> {
        ClientLimits::with(Settings {
            per_address: 0,
            idle_timeout_ms: 0,
            idle_in_transaction_ms: limits.idle_in_transaction_timeout_ms,
            exempt: HashSet::new(),
        })
    }

    /// Applies a new version of the file (live reload).
    pub fn reload(&self, config: &ClusterConfig) {
        let new = Settings::of(config);
        let mut settings = write(&self.settings);
        if *settings != new {
            tracing::info!(
                max_connections_per_address = new.per_address,
                idle_timeout_ms = new.idle_timeout_ms,
                idle_in_transaction_timeout_ms = new.idle_in_transaction_ms,
                exempt = new.exempt.len(),
                "connection limits reloaded"
            );
            *settings = new;
        }
    }

    /// A slot for a new connection from `peer`, or the text it is refused with (over
    /// `limits.maxConnectionsPerAddress`).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<AddressSlot, String> {
        let (bound, exempt) = {
            let s = read(&self.settings);
            (s.per_address, s.exempt.contains(&peer))
        };
        if exempt {
            return Ok(AddressSlot::exempt(self.clone(), peer));
        }
        let mut counts = lock(&self.counts);
        let held = counts.entry(peer).or_insert(0);
        if bound > 0 && *held >= bound {
            if *held == 0 {
                counts.remove(&peer);
            }
            self.refused_per_address.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "too many connections from {peer} (limit {bound} per address, \
                 limits.maxConnectionsPerAddress); close some or try again later"
            ));
        }
        *held += 1;
        Ok(AddressSlot {
            limits: self.clone(),
            peer,
            counted: true,
        })
    }

    /// Connections refused over `limits.maxConnectionsPerAddress` since the start.
    pub fn refused_per_address(&self) -> u64 {
        self.refused_per_address.load(Ordering::Relaxed)
    }

    /// Connections counted for `peer` now.
    pub fn held_by(&self, peer: IpAddr) -> usize {
        lock(&self.counts).get(&peer).copied().unwrap_or(0)
    }

    /// How long the connection of `slot` may wait for its next statement:
    /// `limits.idleInTransactionTimeoutMs` while a transaction is open, else
    /// `limits.idleTimeoutMs` unless the connection is exempt (0 turns either off).
    pub fn idle_limit(&self, slot: &AddressSlot, in_transaction: bool) -> Option<IdleLimit> {
        let s = read(&self.settings);
        if in_transaction {
            return idle_in_transaction(s.idle_in_transaction_ms);
        }
        if s.idle_timeout_ms == 0 || slot.is_exempt() || s.exempt.contains(&slot.peer) {
            return None;
        }
        let ms = s.idle_timeout_ms;
        Some(IdleLimit {
            after: Duration::from_millis(ms),
            reason: format!(
                "idle for {ms} ms: connection closed (limits.idleTimeoutMs); connect again"
            ),
        })
    }

    fn release(&self, peer: IpAddr) {
        let mut counts = lock(&self.counts);
        if let Some(held) = counts.get_mut(&peer) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&peer);
            }
        }
    }
}

fn idle_in_transaction(ms: u64) -> Option<IdleLimit> {
    (ms > 0).then(|| IdleLimit {
        after: Duration::from_millis(ms),
        reason: format!(
            "idle in a transaction for {ms} ms: the transaction was rolled back and the \
             connection closed (limits.idleInTransactionTimeoutMs)"
        ),
    })
}

/// The limit on waiting for a session's next statement from `limits` alone:
/// `limits.idleInTransactionTimeoutMs` while a transaction is open (0 turns it off), none
/// otherwise. Parts serving clients use [`ClientLimits::idle_limit`], which also applies
/// `limits.idleTimeoutMs`.
pub fn idle_limit(limits: &LimitsConfig, in_transaction: bool) -> Option<IdleLimit> {
    if !in_transaction {
        return None;
    }
    idle_in_transaction(limits.idle_in_transaction_timeout_ms)
}

/// One served connection's place in its address's count; dropping it frees the place.
#[derive(Debug)]
pub struct AddressSlot {
    limits: Arc<ClientLimits>,
    peer: IpAddr,
    counted: bool,
}

impl AddressSlot {
    fn exempt(limits: Arc<ClientLimits>, peer: IpAddr) -> AddressSlot {
        AddressSlot {
            limits,
            peer,
            counted: false,
        }
    }

    /// A slot outside any count (a connection not made through the accept loop).
    pub fn uncounted(peer: IpAddr) -> AddressSlot {
        AddressSlot::exempt(ClientLimits::unlimited(&LimitsConfig::default()), peer)
    }

    /// The connection turned out to be one of the cluster's own (it authenticated as
    /// `security.clusterUser`): it no longer counts against its address nor idles out.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.limits.release(self.peer);
        }
    }

    /// Whether the connection is outside its address's count.
    pub fn is_exempt(&self) -> bool {
        !self.counted
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(limits: serde_json::Value) -> ClusterConfig {
        serde_json::from_value(serde_json::json!({ "instances": [], "limits": limits })).unwrap()
    }

    const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7));

    #[test]
    fn only_an_open_transaction_has_a_limit_by_default() {
        let mut limits = LimitsConfig::default();
        assert_eq!(idle_limit(&limits, false), None);
        let limit = idle_limit(&limits, true).expect("on by default");
        assert_eq!(limit.after, Duration::from_secs(60));
        assert!(limit.reason.contains("limits.idleInTransactionTimeoutMs"));
        limits.idle_in_transaction_timeout_ms = 0;
        assert_eq!(idle_limit(&limits, true), None, "0 turns it off");
        let client = ClientLimits::new(&config(serde_json::json!({})));
        let slot = client.admit(STRANGER).unwrap();
        assert_eq!(
            client.idle_limit(&slot, false),
            None,
            "idleTimeoutMs is off by default"
        );
    }

    #[test]
    fn an_address_over_its_bound_is_refused_until_one_of_its_connections_ends() {
        let limits = ClientLimits::new(&config(serde_json::json!({"maxConnectionsPerAddress": 2})));
        let a = limits.admit(STRANGER).unwrap();
        let _b = limits.admit(STRANGER).unwrap();
        let refusal = limits.admit(STRANGER).unwrap_err();
        assert!(
            refusal.contains("limits.maxConnectionsPerAddress"),
            "{refusal}"
        );
        assert_eq!(limits.refused_per_address(), 1);
        let other: IpAddr = "10.9.8.6".parse().unwrap();
        assert!(
            limits.admit(other).is_ok(),
            "another address is not affected"
        );
        drop(a);
        assert!(limits.admit(STRANGER).is_ok());
    }

    #[test]
    fn the_clusters_own_addresses_and_cluster_logins_are_exempt() {
        let mut c = config(serde_json::json!({
            "maxConnectionsPerAddress": 1, "idleTimeoutMs": 500,
            "exemptAddresses": ["10.0.0.9"]
        }));
        c.instances = vec![serde_json::from_value(serde_json::json!({
            "id": "m1", "role": "PRIMARY", "host": "10.0.0.1", "port": 1, "dataDirectory": "d"
        }))
        .unwrap()];
        let limits = ClientLimits::new(&c);
        for peer in ["10.0.0.1", "10.0.0.9", "127.0.0.1"] {
            let ip: IpAddr = peer.parse().unwrap();
            let slots: Vec<_> = (0..3).map(|_| limits.admit(ip).unwrap()).collect();
            assert_eq!(limits.idle_limit(&slots[0], false), None, "{peer}");
        }
        let mut slot = limits.admit(STRANGER).unwrap();
        let idle = limits
            .idle_limit(&slot, false)
            .expect("a stranger idles out");
        assert!(idle.reason.contains("limits.idleTimeoutMs"));
        assert!(limits.admit(STRANGER).is_err());
        slot.release();
        assert_eq!(limits.held_by(STRANGER), 0);
        assert!(
            limits.admit(STRANGER).is_ok(),
            "a cluster login leaves the count"
        );
        assert_eq!(limits.idle_limit(&slot, false), None);
    }

    #[test]
    fn a_reload_applies_the_new_bound_to_the_next_connections() {
        let limits = ClientLimits::new(&config(serde_json::json!({"maxConnectionsPerAddress": 1})));
        let _a = limits.admit(STRANGER).unwrap();
        assert!(limits.admit(STRANGER).is_err());
        limits.reload(&config(serde_json::json!({"maxConnectionsPerAddress": 0})));
        assert!(limits.admit(STRANGER).is_ok(), "0: no bound");
    }
}
