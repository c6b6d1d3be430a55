//! Users, their grants and their password hashes (argon2id PHC strings).
//!
//! A user holds a set of [`Permission`]s per database, or for every database (`*`); the two
//! add up. Passwords are never stored: `passwordHash` is a PHC string made by [`hash_password`]
//! (`dirkdb passwd`), checked with [`Users::verify`]. Argon2 is slow on purpose, so a password
//! that was verified once is remembered (in this process's memory) until the user list changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Deserialize;

use super::config::UserConfig;
use crate::sync::lock;

/// Verified passwords remembered at most (the set is emptied when full).
const VERIFIED_MAX: usize = 4096;

/// What a grant allows.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(try_from = "String")]
pub enum Permission {
    /// Read statements in the database (and `USE`, `SHOW`).
    Read,
    /// Writing statements and DDL inside the database.
    Write,
    /// Following the replication stream and the change feed.
    Replicate,
    /// `CREATE`/`DROP DATABASE`; on `*`, the admin HTTP APIs.
    Admin,
}

impl Permission {
    /// The spelling used in `config.json` and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "READ",
            Permission::Write => "WRITE",
            Permission::Replicate => "REPLICATE",
            Permission::Admin => "ADMIN",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl TryFrom<String> for Permission {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.to_ascii_uppercase().as_str() {
            "READ" => Ok(Permission::Read),
            "WRITE" => Ok(Permission::Write),
            "REPLICATE" => Ok(Permission::Replicate),
            "ADMIN" => Ok(Permission::Admin),
            _ => Err(format!(
                "unknown value `{value}`, expected one of READ, WRITE, REPLICATE, ADMIN"
            )),
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `*` or a database name (letters, digits, `_`, `-`).
pub fn is_grant_scope(scope: &str) -> bool {
    scope == "*"
        || (!scope.is_empty()
            && scope
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

/// One user: name, password hash and grants.
#[derive(Debug)]
pub struct User {
    name: String,
    password_hash: String,
    /// Scope (database name, or `*`) → permission bits.
    grants: HashMap<String, u8>,
}

impl User {
    fn from_config(config: &UserConfig) -> User {
        let grants = config
            .grants
            .iter()
            .map(|(scope, perms)| (scope.clone(), perms.iter().fold(0, |b, p| b | p.bit())))
            .collect();
        User {
            name: config.name.clone(),
            password_hash: config.password_hash.clone(),
            grants,
        }
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn bits(&self, database: &str) -> u8 {
        let all = self.grants.get("*").copied().unwrap_or(0);
        all | self.grants.get(database).copied().unwrap_or(0)
    }

    /// Whether `permission` is granted on `database` (by its own grant or by `*`).
    pub fn allows(&self, database: &str, permission: Permission) -> bool {
        self.bits(database) & permission.bit() != 0
    }

    /// Whether `permission` is granted on every database (`*`).
    pub fn allows_everywhere(&self, permission: Permission) -> bool {
        self.grants.get("*").copied().unwrap_or(0) & permission.bit() != 0
    }

    /// Whether the user holds anything at all on `database` (it may see it).
    pub fn sees(&self, database: &str) -> bool {
        self.bits(database) != 0
    }
}

/// The user list of one version of `config.json`.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    /// (name, password) pairs verified against the current hashes.
    verified: Mutex<HashSet<(String, String)>>,
}

impl Users {
    /// Compiles the configured users (already checked by [`super::SecurityConfig::check`]).
    pub fn new(configs: &[UserConfig]) -> Users {
        let by_name = configs
            .iter()
            .map(|c| (c.name.clone(), Arc::new(User::from_config(c))))
            .collect();
        Users {
            by_name,
            verified: Mutex::default(),
        }
    }

    /// The user named `name`, when there is one.
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.by_name.get(name).cloned()
    }

    /// The user when `password` is theirs. Slow (argon2) the first time for a given password.
    pub fn verify(&self, name: &str, password: &str) -> Option<Arc<User>> {
        let user = self.get(name)?;
        let key = (name.to_string(), password.to_string());
        if lock(&self.verified).contains(&key) {
            return Some(user);
        }
        if !verify_password(password, &user.password_hash) {
            return None;
        }
        let mut verified = lock(&self.verified);
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key);
        Some(user)
    }
}

/// An argon2id PHC string for `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}
