//! DirkDB's rendezvous hashing, exactly as its Java proxy computes it.
//!
//! For a key and each instance in `config.json` order, the score is FNV-1a 64 over the UTF-16
//! code units of `key + "|" + instanceId`: start from `0xcbf29ce484222325`, and for each code
//! unit XOR it in (zero-extended) and multiply by `0x100000001b3` with wrapping. Scores compare
//! as **signed** 64-bit integers; the highest wins, and a tie goes to the earlier instance.
//!
//! The keys name what is routed: `DB:<db>` for the database itself (CREATE/DROP DATABASE, and
//! reads with a current database), `DB:<db>|TABLE:<t>`, `DB:<db>|VIEW:<v>` and
//! `DB:<db>|DOMAIN:<d>` for writes to an object ([`ObjectRef::key`]). The proxy (read strategy
//! RENDEZVOUS, MULTI_PRIMARY write routing) and the servers (which refuse writes to objects they
//! do not own) use this one module, so they always agree.

use std::fmt;

/// FNV-1a 64 offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The score of `instance` for `key`: FNV-1a 64 over the UTF-16 code units of
/// `key + "|" + instance`, read as a signed integer (Java's `long`).
pub fn score(key: &str, instance: &str) -> i64 {
    let mut h = FNV_OFFSET;
    let units = key
        .encode_utf16()
        .chain("|".encode_utf16())
        .chain(instance.encode_utf16());
    for unit in units {
        h ^= u64::from(unit);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h as i64
}

/// Indexes of `instances` from the best to the worst for `key`: by descending signed score,
/// ties in the given order (the earlier instance first).
pub fn ranked<S: AsRef<str>>(key: &str, instances: &[S]) -> Vec<usize> {
    let mut order: Vec<(usize, i64)> = instances
        .iter()
        .enumerate()
        .map(|(i, id)| (i, score(key, id.as_ref())))
        .collect();
    // A stable sort keeps the configuration order among equal scores.
    order.sort_by_key(|o| std::cmp::Reverse(o.1));
    order.into_iter().map(|(i, _)| i).collect()
}

/// The index of the instance that wins `key` among `instances` (`None` when there are none).
pub fn owner<S: AsRef<str>>(key: &str, instances: &[S]) -> Option<usize> {
    let mut best: Option<(usize, i64)> = None;
    for (i, id) in instances.iter().enumerate() {
        let s = score(key, id.as_ref());
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// The kind of a database object that has an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// The database itself (CREATE/DROP DATABASE).
    Database,
    /// A table.
    Table,
    /// A view.
    View,
    /// A DirkDB domain.
    Domain,
}

impl ObjectKind {
    /// The word used in keys and messages (`TABLE`, …; `DATABASE` for the database).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Database => "DATABASE",
            ObjectKind::Table => "TABLE",
            ObjectKind::View => "VIEW",
            ObjectKind::Domain => "DOMAIN",
        }
    }
}

/// One object a write touches: a database, or an object inside one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The database (as named: database names are case-sensitive file names).
    pub db: String,
    /// What it is.
    pub kind: ObjectKind,
    /// The object's name, folded to lower case (SQLite's identifiers are case-insensitive, so
    /// `Users` and `users` are one table with one owner); empty for the database itself.
    pub name: String,
}

impl ObjectRef {
    /// The database itself.
    pub fn database(db: &str) -> ObjectRef {
        ObjectRef {
            db: db.to_string(),
            kind: ObjectKind::Database,
            name: String::new(),
        }
    }

    /// An object of `db`; its name is folded to ASCII lower case.
    pub fn object(db: &str, kind: ObjectKind, name: &str) -> ObjectRef {
        ObjectRef {
            db: db.to_string(),
            kind,
            name: name.to_ascii_lowercase(),
        }
    }

    /// A table of `db`.
    pub fn table(db: &str, name: &str) -> ObjectRef {
        ObjectRef::object(db, ObjectKind::Table, name)
    }

    /// DirkDB's partition key: `DB:<db>`, or `DB:<db>|<KIND>:<name>`.
    pub fn key(&self) -> String {
        match self.kind {
            ObjectKind::Database => database_key(&self.db),
            kind => format!("DB:{}|{}:{}", self.db, kind.as_str(), self.name),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ObjectKind::Database => write!(f, "database {}", self.db),
            kind => write!(
                f,
                "{} {}.{}",
                kind.as_str().to_lowercase(),
                self.db,
                self.name
            ),
        }
    }
}

/// `DB:<db>`: the key of a database (and of reads with a current database).
pub fn database_key(db: &str) -> String {
    format!("DB:{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRK: [&str; 3] = ["m1", "m2", "m3"];

    // The vectors below were computed independently of this module, by a one-off Python 3
    // script implementing the formula: `s.encode('utf-16-le')` read two bytes at a time
    // as code units, `h ^= unit; h = (h * 0x100000001b3) & (2**64 - 1)` from 0xcbf29ce484222325,
    // then `h - 2**64 if h >= 2**63`; the owner is the first instance with the highest score.
    const VECTORS: &[(&str, [i64; 3], &str)] = &[
        (
            "DB:testdb",
            [
                5256437454372295061,
                5256434155837410428,
                5256435255349038639,
            ],
            "m1",
        ),
        (
            "DB:shop",
            [
                -3879173654891954257,
                -3879172555380326046,
                -3879171455868697835,
            ],
            "m3",
        ),
        (
            "DB:testdb|TABLE:utilisateurs",
            [
                -1280393991292611271,
                -1280397289827495904,
                -1280396190315867693,
            ],
            "m1",
        ),
        (
            "DB:testdb|TABLE:produits",
            [
                -3817833553857098093,
                -3817832454345469882,
                -3817831354833841671,
            ],
            "m3",
        ),
        (
            "DB:testdb|TABLE:commandes",
            [
                -8789955736857992872,
                -8789952438323108239,
                -8789953537834736450,
            ],
            "m2",
        ),
        (
            "DB:testdb|VIEW:v_clients",
            [
                -3976091361014233987,
                -3976094659549118620,
                -3976093560037490409,
            ],
            "m1",
        ),
        (
            "DB:testdb|DOMAIN:niveau",
            [
                5287408976564693341,
                5287405678029808708,
                5287406777541436919,
            ],
            "m1",
        ),
        (
            "DB:testdb|TABLE:mpianatra_é",
            [
                -4676226683774242286,
                -4676227783285870497,
                -4676228882797498708,
            ],
            "m1",
        ),
        (
            // A character outside the BMP: two UTF-16 code units.
            "DB:café|TABLE:𝄞",
            [
                6314447383476502388,
                6314450682011387021,
                6314449582499758810,
            ],
            "m2",
        ),
    ];

    #[test]
    fn scores_and_owners_match_the_independent_vectors() {
        for (key, scores, owner_id) in VECTORS {
            for (i, id) in DIRK.iter().enumerate() {
                assert_eq!(score(key, id), scores[i], "{key} | {id}");
            }
            assert_eq!(owner(key, &DIRK).map(|i| DIRK[i]), Some(*owner_id), "{key}");
            assert_eq!(DIRK[ranked(key, &DIRK)[0]], *owner_id, "{key}");
        }
    }

    #[test]
    fn the_comparison_is_signed_and_ties_go_to_the_earlier_instance() {
        // From the same Python script: for "DB:testdb", "primary-a" scores 6678718096657055685
        // and "node2" -4861581998965538905, which as an unsigned number would be the larger.
        assert_eq!(score("DB:testdb", "primary-a"), 6678718096657055685);
        assert_eq!(score("DB:testdb", "node2"), -4861581998965538905);
        assert_eq!(owner("DB:testdb", &["node2", "primary-a"]), Some(1));
        assert_eq!(ranked("DB:testdb", &["node2", "primary-a"]), vec![1, 0]);
        let same = ["m1", "m1", "m1"];
        assert_eq!(owner("DB:x", &same), Some(0));
        assert_eq!(ranked("DB:x", &same), vec![0, 1, 2]);
        assert_eq!(owner::<&str>("DB:x", &[]), None);
    }

    #[test]
    fn keys_are_dirkdbs() {
        assert_eq!(ObjectRef::database("testdb").key(), "DB:testdb");
        assert_eq!(
            ObjectRef::table("testdb", "Utilisateurs").key(),
            "DB:testdb|TABLE:utilisateurs"
        );
        assert_eq!(
            ObjectRef::object("testdb", ObjectKind::View, "v").key(),
            "DB:testdb|VIEW:v"
        );
        assert_eq!(
            ObjectRef::object("testdb", ObjectKind::Domain, "niveau").key(),
            "DB:testdb|DOMAIN:niveau"
        );
        assert_eq!(
            ObjectRef::table("testdb", "t").to_string(),
            "table testdb.t"
        );
    }
}
