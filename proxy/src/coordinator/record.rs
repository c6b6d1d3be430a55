//! What the coordinator keeps in etcd, as JSON values: the primary record and a proxy's
//! liveness entry (with, under MULTI_PRIMARY, its acknowledged positions per origin).

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
