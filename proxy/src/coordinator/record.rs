//! What the coordinator keeps in etcd, as JSON values: the primary record, a proxy's liveness
//! entry (with, under MULTI_PRIMARY, its acknowledged positions per origin, also kept without a
//! lease in [`AckedEntry`]) and, under MULTI_PRIMARY, the ownership plan ([`OwnershipRecord`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CoordinatorError;
use crate::ack_watermark::Position;

/// `<prefix>/primary`: which instance is the primary, and the term it was promoted into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PrimaryRecord {
    /// The instance id (as in config.json).
    pub primary: String,
    /// The term of its promotion (0: the primary config.json named at the cluster's start).
    pub term: u64,
    /// The proxy that wrote the record.
    #[serde(default)]
    pub by: String,
    /// When, ms since the epoch (informational).
    #[serde(default)]
    pub at_ms: i64,
}

impl PrimaryRecord {
    /// Parses the value stored at `key`.
    pub(crate) fn parse(key: &str, value: &[u8]) -> Result<PrimaryRecord, CoordinatorError> {
        serde_json::from_slice(value).map_err(|e| CoordinatorError::BadRecord {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// The JSON stored in etcd.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `<prefix>/proxies/<id>`: a live proxy (the key lives under its lease).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProxyEntry {
    /// Its admin API address.
    pub admin: String,
    /// The highest position it acknowledged under a write concern of at least one replica.
    pub acked_term: u64,
    /// Sequence of that position.
    pub acked_seq: u64,
    /// Under MULTI_PRIMARY: the highest sequence it acknowledged per origin under a write concern
    /// of at least one master (absent in entries of older proxies).
    #[serde(default)]
    pub acked_by_origin: BTreeMap<String, u64>,
}

impl ProxyEntry {
    pub(crate) fn acked(&self) -> Position {
        Position {
            term: self.acked_term,
            seq: self.acked_seq,
        }
    }
}

/// `<prefix>/ownership` (MULTI_PRIMARY): the plan the elected proxy decided
/// (`crate::ownership`), changed only by a compare-and-swap on the revision it read while it
/// holds the election. Its `term` is the ownership term the masters are told and check: a
/// master refuses a view below the term it took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OwnershipRecord {
    /// The masters that own objects, in config order.
    pub owning: Vec<String>,
    /// The masters whose rendezvous decides owners: owning and returning, config order.
    pub set: Vec<String>,
    /// Masters back and catching up, with each other master's cutoff known so far.
    #[serde(default)]
    pub returning: BTreeMap<String, BTreeMap<String, u64>>,
    /// Masters down whose objects are moving away: no proxy acknowledges their writes.
    #[serde(default)]
    pub moving: Vec<String>,
    /// The highest sequence per origin acknowledged by any proxy when this plan was decided.
    #[serde(default)]
    pub acknowledged: BTreeMap<String, u64>,
    /// The ownership term of `set`.
    pub term: u64,
    /// How many times `owning` changed since the record was created.
    #[serde(default)]
    pub moves: u64,
    /// The proxy that wrote it.
    #[serde(default)]
    pub by: String,
    /// When, ms since the epoch (informational).
    #[serde(default)]
    pub at_ms: i64,
}

impl OwnershipRecord {
    /// Parses the value stored at `key`.
    pub(crate) fn parse(key: &str, value: &[u8]) -> Result<OwnershipRecord, CoordinatorError> {
        serde_json::from_slice(value).map_err(|e| CoordinatorError::BadRecord {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// True when `other` decides the same (ignoring who wrote it, when, and the cutoffs and
    /// positions it carries).
    pub(crate) fn same_plan(&self, other: &OwnershipRecord) -> bool {
        self.owning == other.owning
            && self.set == other.set
            && self.moving == other.moving
            && self.term == other.term
            && self.returning.keys().eq(other.returning.keys())
    }
}

/// `<prefix>/acked/<id>` (MULTI_PRIMARY): the highest sequence per origin a proxy acknowledged,
/// kept without a lease so that the elected proxy still counts it after the proxy's lease
/// lapsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AckedEntry {
    /// Per origin, the highest sequence acknowledged under a write concern of at least one.
    pub acked_by_origin: BTreeMap<String, u64>,
    /// When it was last written, ms since the epoch (informational).
    #[serde(default)]
    pub at_ms: i64,
}

/// Per origin, the highest of `entries`' sequences.
pub(crate) fn highest_by_origin<'a>(
    entries: impl IntoIterator<Item = &'a BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut highest = BTreeMap::new();
    for entry in entries {
        for (origin, seq) in entry {
            let at = highest.entry(origin.clone()).or_insert(0);
            *at = (*at).max(*seq);
        }
    }
    highest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_record_round_trips_and_garbage_is_named() {
        let r = PrimaryRecord {
            primary: "m2".into(),
            term: 4,
            by: "h:1".into(),
            at_ms: 9,
        };
        assert_eq!(
            PrimaryRecord::parse("k", r.to_json().as_bytes()).unwrap(),
            r
        );
        let minimal = PrimaryRecord::parse("k", br#"{"primary":"m1","term":0}"#).unwrap();
        assert_eq!((minimal.primary.as_str(), minimal.term), ("m1", 0));
        let e = PrimaryRecord::parse("/d/x/primary", b"m1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/d/x/primary"), "{e}");
    }

    #[test]
    fn a_proxy_entry_carries_its_per_origin_positions_and_older_entries_still_parse() {
        let entry = ProxyEntry {
            admin: "h:1".into(),
            acked_term: 1,
            acked_seq: 7,
            acked_by_origin: BTreeMap::from([("m1".into(), 12), ("m3".into(), 40)]),
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert!(
            json.contains(r#""ackedByOrigin":{"m1":12,"m3":40}"#),
            "{json}"
        );
        let back: ProxyEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back.acked_by_origin, entry.acked_by_origin);
        let old: ProxyEntry =
            serde_json::from_str(r#"{"admin":"h:2","ackedTerm":0,"ackedSeq":3}"#).unwrap();
        assert!(old.acked_by_origin.is_empty());
    }
}
