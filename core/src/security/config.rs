//! The `security` section of `config.json`: who may connect, with which permissions, and how the
//! parts authenticate to each other. Absent, nothing is checked (the local quick start).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::users::{is_grant_scope, Permission};

/// `security` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SecurityConfig {
    /// Every connection must `AUTH` first, and grants are enforced.
    pub require_auth: bool,
    /// The users and their grants.
    pub users: Vec<UserConfig>,
    /// The user the parts (proxy, cache, replicas) authenticate as to each other.
    pub cluster_user: Option<String>,
    /// A file holding `clusterUser`'s password (its first line).
    pub cluster_password_file: Option<PathBuf>,
    /// A connection that has not authenticated within this many milliseconds is closed.
    pub auth_timeout_ms: u64,
    /// Failed authentications allowed per client address and minute before further attempts
    /// are refused without being checked.
    pub max_auth_failures: u32,
    /// `/health` and `/metrics` need ADMIN too.
    pub protect_metrics: bool,
    /// TLS of every port and of the connections between the parts (see [`crate::tls`]).
    pub tls: Option<TlsConfig>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            require_auth: false,
            users: Vec::new(),
            cluster_user: None,
            cluster_password_file: None,
            auth_timeout_ms: 10_000,
            max_auth_failures: 5,
            protect_metrics: false,
            tls: None,
        }
    }
}

/// One entry of `security.users`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserConfig {
    /// The name given to `AUTH` and HTTP Basic authentication.
    pub name: String,
    /// A PHC string (`$argon2id$…`), as printed by `dirkdb passwd`.
    pub password_hash: String,
    /// Per database (or `*` for all): the permissions held there.
    #[serde(default)]
    pub grants: BTreeMap<String, Vec<Permission>>,
}

impl SecurityConfig {
    /// Checks the section as a whole; the error is `(field, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let mut names = HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let field = |f: &str| format!("security.users[{i}].{f}");
            if !is_user_name(&user.name) {
                return Err((
                    field("name"),
                    "must be 1-64 letters, digits, `_`, `-` or `.`".into(),
                ));
            }
            if !names.insert(user.name.as_str()) {
                return Err((field("name"), format!("duplicate user `{}`", user.name)));
            }
            if let Err(e) = argon2::PasswordHash::new(&user.password_hash) {
                let msg = format!("not a PHC password hash ({e}); make one with `dirkdb passwd`");
                return Err((field("passwordHash"), msg));
            }
            for scope in user.grants.keys() {
                if !is_grant_scope(scope) {
                    let msg = format!("`{scope}` is neither `*` nor a database name");
                    return Err((field("grants"), msg));
                }
            }
        }
        if let Some(cluster) = &self.cluster_user {
            if !names.contains(cluster.as_str()) {
                let msg = format!("`{cluster}` is not in security.users");
                return Err(("security.clusterUser".into(), msg));
            }
            if self.cluster_password_file.is_none() {
                let msg = "needed with security.clusterUser (a file holding its password)";
                return Err(("security.clusterPasswordFile".into(), msg.into()));
            }
        }
        match &self.tls {
            Some(tls) => tls.check(),
            None => Ok(()),
        }
    }
}

/// `security.tls` section: with it every SQL and admin port accepts TLS, and every part speaks
/// TLS to the others.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM), the leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The CA certificates (PEM) peers' certificates are checked against; without it, the
    /// public roots of `webpki-roots` are used.
    pub ca_file: Option<PathBuf>,
    /// Plaintext connections are refused (by default the same ports accept both).
    pub required: bool,
    /// Replication streams and change feeds need a client certificate signed by `caFile`
    /// (every node presents its own `certFile` when it connects to another).
    pub mutual_tls: bool,
    /// A connection that has neither sent its first byte nor finished its TLS handshake within
    /// this many milliseconds is served as plaintext (or closed, with `required`).
    pub handshake_timeout_ms: u64,
    /// The name every peer's certificate is checked against when this part connects to another
    /// (by default the `host` it dials): for certificates that do not name those addresses.
    pub server_name: Option<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            ca_file: None,
            required: false,
            mutual_tls: false,
            handshake_timeout_ms: 10_000,
            server_name: None,
        }
    }
}

impl TlsConfig {
    /// Checks the fields and reads the files (certificate, key and CA must parse, and the key
    /// must be the certificate's); the error is `(field, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.handshake_timeout_ms == 0 {
            let msg = "must be above 0 (milliseconds)".to_string();
            return Err(("security.tls.handshakeTimeoutMs".into(), msg));
        }
        if self.mutual_tls && self.ca_file.is_none() {
            let msg = "needed with mutualTls: node certificates are checked against it".to_string();
            return Err(("security.tls.caFile".into(), msg));
        }
        crate::tls::check_files(self).map_err(|e| (e.field(), e.problem))
    }
}

/// User names are also written into statements (`DIRK AS`), so they stay plain words.
pub fn is_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
