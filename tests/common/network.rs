//! Per-pair network faults for tests: a [`Network`] of named processes ("proxy", "m1", "etcd",
//! …) in which every link from one process to a port of another goes through its own
//! fault-injecting [`Relay`] (real TCP on loopback). A test cuts and heals the links between two
//! chosen processes — both ways or one way — while every other pair keeps talking.
//!
//! ```ignore
//! let net = Network::new();
//! // m2 reaches m1's SQL port at this port; write it into m2's config.
//! let m2_to_m1 = net.link("m2", "m1", m1_port);
//! let proxy_to_m1 = net.link("proxy", "m1", m1_port);
//! net.cut("m1", "proxy");               // m1 ↔ proxy only; m2 still streams from m1
//! net.cut_one_way("m2", "m1");          // bytes m2 → m1 dropped, m1 → m2 still delivered
//! net.isolate("m3");                    // every link of m3, both ways
//! net.partition(&["m1"], &["m2", "m3", "proxy"]);
//! net.heal("m1", "proxy");              // or net.heal_all()
//! ```
//!
//! What a cut does to one connection (hangs, held bytes, closed on heal) is described in
//! [`super::relay`]. The processes must be configured with the ports [`Network::link`] returns:
//! only traffic that goes through those ports can be cut. A link is created once per
//! `(from, to, target)`; asking again returns the same port.

use std::collections::HashMap;
use std::sync::Mutex;

use super::relay::{Direction, Relay};

/// Links between named processes, each through its own relay.
#[derive(Default)]
pub(crate) struct Network {
    /// `(from, to)` → the relays from `from` to the ports of `to`.
    links: Mutex<HashMap<(String, String), Vec<Relay>>>,
}

impl Network {
    pub(crate) fn new() -> Network {
        Network::default()
    }

    /// The port at which `from` reaches port `target` of `to`: a relay that carries only this
    /// pair's traffic (created on first use).
    pub(crate) fn link(&self, from: &str, to: &str, target: u16) -> u16 {
        let mut links = self.lock();
        let relays = links.entry((from.into(), to.into())).or_default();
        if let Some(r) = relays.iter().find(|r| r.target == target) {
            return r.port;
        }
        let relay = Relay::start(target);
        let port = relay.port;
        relays.push(relay);
        port
    }

    /// Cuts every link between `a` and `b`, both ways.
    pub(crate) fn cut(&self, a: &str, b: &str) {
        self.each(a, b, Relay::cut);
        self.each(b, a, Relay::cut);
    }

    /// Cuts the links `from` opens to `to` only (connections `to` opens to `from` still work).
    pub(crate) fn cut_links_from(&self, from: &str, to: &str) {
        self.each(from, to, Relay::cut);
    }

    /// Drops the bytes `from` sends to `to` (on connections either side opened), while the
    /// bytes `to` sends to `from` are still delivered.
    pub(crate) fn cut_one_way(&self, from: &str, to: &str) {
        self.each(from, to, |r| r.cut_one_way(Direction::Upstream));
        self.each(to, from, |r| r.cut_one_way(Direction::Downstream));
    }

    /// Heals every link between `a` and `b` (connections that lived through the cut close).
    pub(crate) fn heal(&self, a: &str, b: &str) {
        self.each(a, b, Relay::heal);
        self.each(b, a, Relay::heal);
    }

    /// Cuts every link between `a` and any other process.
    pub(crate) fn isolate(&self, a: &str) {
        for other in self.peers_of(a) {
            self.cut(a, &other);
        }
    }

    /// Heals every link of `a`.
    pub(crate) fn rejoin(&self, a: &str) {
        for other in self.peers_of(a) {
            self.heal(a, &other);
        }
    }

    /// Cuts every link between a process of `left` and one of `right`.
    pub(crate) fn partition(&self, left: &[&str], right: &[&str]) {
        for a in left {
            for b in right {
                self.cut(a, b);
            }
        }
    }

    /// Heals every link.
    pub(crate) fn heal_all(&self) {
        for relays in self.lock().values() {
            relays.iter().for_each(Relay::heal);
        }
    }

    /// True while some link between `a` and `b` is cut (in either direction).
    pub(crate) fn is_cut(&self, a: &str, b: &str) -> bool {
        let links = self.lock();
        [(a, b), (b, a)].iter().any(|(x, y)| {
            links
                .get(&(x.to_string(), y.to_string()))
                .is_some_and(|rs| rs.iter().any(Relay::is_cut))
        })
    }

    fn each(&self, from: &str, to: &str, f: impl Fn(&Relay)) {
        if let Some(relays) = self.lock().get(&(from.to_string(), to.to_string())) {
            relays.iter().for_each(f);
        }
    }

    fn peers_of(&self, a: &str) -> Vec<String> {
        let mut peers: Vec<String> = self
            .lock()
            .keys()
            .filter_map(|(x, y)| match (x == a, y == a) {
                (true, false) => Some(y.clone()),
                (false, true) => Some(x.clone()),
                _ => None,
            })
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Vec<Relay>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }
}
