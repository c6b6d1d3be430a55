//! Fields of a `config.json` that DirkDB-rs does not know.
//!
//! They still load — DirkDB's own files carry fields DirkDB-rs does not use, and a file written for
//! a newer version should not stop an older one — but each is reported, with the nearest known
//! field of the same section when the name looks like a slip (`listenPrt` → `listenPort`), so a
//! misspelt setting is never silently replaced by its default.
//!
//! The known fields of a section are read from the section type's own `Deserialize` (serde hands
//! every derived struct its field list), so the suggestions follow the model without a second list.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::forward_to_deserialize_any;

use super::{
    CacheConfig, ClusterConfig, ConflictsConfig, FailoverConfig, InstanceConfig, LimitsConfig,
    LoadBalancerConfig, OplogConfig, ReadRouting, ReplicationConfig, RoutingConfig, StorageConfig,
    WriteConcern, WriteRouting,
};
use crate::security::{SecurityConfig, TlsConfig, UserConfig};

/// One field of the file that was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// JSON path of the field, in the style of the other config messages (`instances[1].prot`).
    pub path: String,
    /// The known field of the same section it most likely meant, if one is close.
    pub suggestion: Option<&'static str>,
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown field `{}` ignored", self.path)?;
        match self.suggestion {
            Some(known) => write!(f, " (did you mean `{known}`?)"),
            None => write!(f, " (DirkDB-rs does not use it)"),
        }
    }
}

/// Deserializes `T`, collecting the paths serde ignored; errors carry their JSON path.
pub(super) fn deserialize_reporting<'de, T, D>(
    de: D,
) -> Result<(T, Vec<UnknownField>), serde_path_to_error::Error<D::Error>>
where
    T: de::Deserialize<'de>,
    D: de::Deserializer<'de>,
{
    let mut ignored = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| ignored.push(path.to_string());
    let value =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut record))?;
    Ok((value, ignored.iter().map(|p| unknown_field(p)).collect()))
}

/// Turns serde_ignored's `a.0.b` into `a[0].b` and looks for the field it meant.
fn unknown_field(ignored: &str) -> UnknownField {
    // serde_ignored writes `?` for the inside of an `Option` (`security.tls.?.x`).
    let segments: Vec<&str> = ignored.split('.').filter(|s| *s != "?").collect();
    let (name, parents) = segments.split_last().unwrap_or((&"?", &[]));
    let path = render_path(&segments);
    let section = section_key(parents);
    let suggestion = known_fields(&section).and_then(|fields| nearest(name, fields));
    UnknownField { path, suggestion }
}

fn render_path(segments: &[&str]) -> String {
    let mut out = String::new();
    for segment in segments {
        if segment.chars().all(|c| c.is_ascii_digit()) && !out.is_empty() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// `["instances", "0"]` → `instances[]`: the section a field belongs to, indices dropped.
fn section_key(parents: &[&str]) -> String {
    let mut out = String::new();
    for segment in parents {
        if segment.chars().all(|c| c.is_ascii_digit()) {
            out.push_str("[]");
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

fn known_fields(section: &str) -> Option<&'static [&'static str]> {
    match section {
        "" => fields_of::<ClusterConfig>(),
        "loadBalancer" => fields_of::<LoadBalancerConfig>(),
        "cache" => fields_of::<CacheConfig>(),
        "instances[]" => fields_of::<InstanceConfig>(),
        "routing" => fields_of::<RoutingConfig>(),
        "routing.reads" => fields_of::<ReadRouting>(),
        "routing.writes" => fields_of::<WriteRouting>(),
        "routing.writes.writeConcern" => fields_of::<WriteConcern>(),
        "replication" => fields_of::<ReplicationConfig>(),
        "replication.oplog" => fields_of::<OplogConfig>(),
        "replication.conflicts" => fields_of::<ConflictsConfig>(),
        "failover" => fields_of::<FailoverConfig>(),
        "limits" => fields_of::<LimitsConfig>(),
        "storage" => fields_of::<StorageConfig>(),
        "security" => fields_of::<SecurityConfig>(),
        "security.users[]" => fields_of::<UserConfig>(),
        "security.tls" => fields_of::<TlsConfig>(),
        _ => None,
    }
}

/// The known field closest to `name`, if it is close enough to be a slip rather than another word.
fn nearest(name: &str, fields: &'static [&'static str]) -> Option<&'static str> {
    let wanted = name.to_ascii_lowercase();
    let limit = (wanted.chars().count() / 3).clamp(1, 3);
    fields
        .iter()
        .map(|known| {
            let distance = strsim::damerau_levenshtein(&wanted, &known.to_ascii_lowercase());
            (distance, *known)
        })
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// The field names serde's derive gives a struct, read by asking it to deserialize from a probe.
fn fields_of<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let seen = Cell::new(None);
    let _ = T::deserialize(FieldProbe(&seen));
    seen.get()
}

/// A deserializer that only records the field list of the struct asked of it, then fails.
struct FieldProbe<'a>(&'a Cell<Option<&'static [&'static str]>>);

impl<'de> de::Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(Some(fields));
        Err(de::Error::custom("field probe"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_of_the_model_has_its_field_list() {
        for section in [
            "",
            "loadBalancer",
            "cache",
            "instances[]",
            "routing",
            "routing.reads",
            "routing.writes",
            "routing.writes.writeConcern",
            "replication",
            "replication.oplog",
            "failover",
            "limits",
            "storage",
            "security",
            "security.users[]",
            "security.tls",
        ] {
            let fields = known_fields(section).unwrap_or_default();
            assert!(!fields.is_empty(), "no fields read for `{section}`");
        }
        assert!(known_fields("loadBalancer")
            .unwrap_or_default()
            .contains(&"listenPort"));
    }

    #[test]
    fn slips_get_a_suggestion_and_other_words_do_not() {
        let fields = known_fields("loadBalancer").unwrap_or_default();
        assert_eq!(nearest("listenPrt", fields), Some("listenPort"));
        assert_eq!(nearest("listenport", fields), Some("listenPort"));
        assert_eq!(nearest("partition", fields), None);
    }

    #[test]
    fn a_misspelt_field_in_a_file_is_reported_and_known_ones_are_not() {
        let text = r#"{ "loadBalancer": { "listenHost": "127.0.0.1", "listenPrt": 4000 },
          "instances": [ { "id": "m1", "role": "PRIMARY", "host": "127.0.0.1", "port": 3948,
                           "dataDirectory": "d", "adminProt": 4948 } ],
          "limits": { "maxStatmentBytes": 10 } }"#;
        let (config, unknown) = ClusterConfig::parse_reporting(text).unwrap();
        assert_eq!(config.load_balancer.listen_host, "127.0.0.1");
        let seen: Vec<(String, Option<&str>)> = unknown
            .into_iter()
            .map(|u| (u.path, u.suggestion))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("loadBalancer.listenPrt".to_string(), Some("listenPort")),
                ("instances[0].adminProt".to_string(), Some("adminPort")),
                (
                    "limits.maxStatmentBytes".to_string(),
                    Some("maxStatementBytes")
                ),
            ]
        );
    }

    #[test]
    fn paths_are_rendered_like_the_other_config_messages() {
        let u = unknown_field("instances.1.prot");
        assert_eq!(u.path, "instances[1].prot");
        assert_eq!(u.suggestion, Some("port"));
        assert_eq!(
            u.to_string(),
            "unknown field `instances[1].prot` ignored (did you mean `port`?)"
        );
        let top = unknown_field("clusterName");
        assert_eq!(top.path, "clusterName");
        assert_eq!(top.suggestion, None);
    }
}
