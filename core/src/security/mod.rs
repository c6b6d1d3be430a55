//! Authentication and permissions, shared by the server, the proxy and the cache.
//!
//! * [`config`]: the `security` section of `config.json`.
//! * [`users`]: users, grants, argon2id password hashes.
//! * `http` (feature `http`): HTTP Basic authentication of the admin APIs.
//! * [`statement`]: the `AUTH <user> <password>` and `DIRK AS <user>` statements.
//! * [`Security`]: one process part's view (the users of the current file, the failure limiter,
//!   reloadable); [`ConnectionAuth`]: one connection's identity and the checks made with it.
//!
//! Without `requireAuth` nothing is enforced: a connection may still `AUTH` (checked), but every
//! statement and admin endpoint stays open, as in the local quick start.

pub mod config;
pub mod connection;
#[cfg(feature = "http")]
pub mod http;
pub mod statement;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub use self::config::{SecurityConfig, TlsConfig, UserConfig};
pub use self::statement::{auth_statement, AuthStatement};
pub use self::users::{hash_password, verify_password, Permission, User, Users};
use crate::frame::Frame;
use crate::sync::lock;

/// The window over which failed authentications are counted per address.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered by the failure limiter at most.
const FAILURE_ADDRESSES: usize = 10_000;

/// Why the cluster credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// `security.clusterPasswordFile` cannot be read.
    #[error("cannot read security.clusterPasswordFile {path}: {source}")]
    PasswordFile {
        /// The file named in config.json.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file's first line is empty.
    #[error("security.clusterPasswordFile {0} holds no password (its first line is empty)")]
    EmptyPasswordFile(PathBuf),
    /// A file of `security.tls` cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The user and password one part presents to another (`security.clusterUser`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

impl Credentials {
    /// The `AUTH` statement presenting them.
    pub fn auth_statement(&self) -> String {
        auth_statement(&self.user, &self.password)
    }

    /// The value of an HTTP `Authorization` header presenting them.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// `security.clusterUser` with the password from `security.clusterPasswordFile`; `None` when no
/// cluster user is configured.
pub fn cluster_credentials(config: &SecurityConfig) -> Result<Option<Credentials>, SecurityError> {
    let (Some(user), Some(path)) = (&config.cluster_user, &config.cluster_password_file) else {
        return Ok(None);
    };
    let password = read_password_file(path)?;
    Ok(Some(Credentials {
        user: user.clone(),
        password,
    }))
}

/// The first line of a password file (a trailing `\r` dropped); an empty one is refused.
pub fn read_password_file(path: &Path) -> Result<String, SecurityError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecurityError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(SecurityError::EmptyPasswordFile(path.to_path_buf()));
    }
    Ok(line.to_string())
}

/// A denied admin request: 401 (no or wrong credentials) or 403 (not ADMIN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminDenied {
    /// No credentials, malformed ones, or wrong ones.
    Unauthenticated(String),
    /// A known user without ADMIN on `*`.
    Forbidden(String),
}

struct Current {
    config: SecurityConfig,
    users: Arc<Users>,
}

/// One part's security state: the current users and settings, and the failure limiter.
pub struct Security {
    current: RwLock<Arc<Current>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    failed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Security(requireAuth: {})", self.required())
    }
}

impl Security {
    /// The state for a checked `security` section.
    pub fn new(config: &SecurityConfig) -> Arc<Security> {
        Arc::new(Security {
            current: RwLock::new(Arc::new(current(config))),
            failures: Mutex::default(),
            failed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Applies a new version of the section (live reload). Connections keep their user name and
    /// are checked against the new grants from their next statement on.
    pub fn reload(&self, config: &SecurityConfig) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.config != *config {
            *cur = Arc::new(current(config));
            tracing::info!(users = config.users.len(), "security settings reloaded");
        }
    }

    fn now(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether authentication and grants are enforced.
    pub fn required(&self) -> bool {
        self.now().config.require_auth
    }

    /// How long a connection may stay unauthenticated.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.now().config.auth_timeout_ms.max(1))
    }

    /// The user named `name` in the current list.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.now().users.get(name)
    }

    fn is_cluster_user(&self, name: &str) -> bool {
        self.now().config.cluster_user.as_deref() == Some(name)
    }

    /// Checks `user`'s `password` (on a blocking thread: argon2 is slow on purpose), counting
    /// failures per address; an address over `maxAuthFailures` a minute is refused unchecked.
    pub async fn verify(
        self: &Arc<Self>,
        peer: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<Arc<User>, String> {
        if let Some(wait) = self.blocked_for(peer) {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, user, "authentication refused: too many failures from this address");
            return Err(format!(
                "too many failed authentications from {peer}; try again in {} s (security.maxAuthFailures)",
                wait.as_secs().max(1)
            ));
        }
        let users = self.now().users.clone();
        let (name, pw) = (user.to_string(), password.to_string());
        let found = tokio::task::spawn_blocking(move || users.verify(&name, &pw))
            .await
            .ok()
            .flatten();
        match found {
            Some(u) => {
                self.forget_failures(peer);
                tracing::debug!(%peer, user, "authenticated");
                Ok(u)
            }
            None => {
                self.count_failure(peer);
                self.failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%peer, user, "authentication failed");
                Err(format!("authentication failed for user `{user}`"))
            }
        }
    }

    /// Authentications refused since the start (wrong user or password, or an address over
    /// `maxAuthFailures`), on the SQL port and the admin port alike.
    pub fn auth_failures(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn blocked_for(&self, peer: IpAddr) -> Option<Duration> {
        let max = self.now().config.max_auth_failures.max(1);
        let failures = lock(&self.failures);
        let (count, since) = failures.get(&peer)?;
        let elapsed = since.elapsed();
        (*count >= max && elapsed < FAILURE_WINDOW).then(|| FAILURE_WINDOW - elapsed)
    }

    fn count_failure(&self, peer: IpAddr) {
        let mut failures = lock(&self.failures);
        if failures.len() >= FAILURE_ADDRESSES {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= FAILURE_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(peer).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn forget_failures(&self, peer: IpAddr) {
        lock(&self.failures).remove(&peer);
    }

    /// Whether an admin endpoint may be served without credentials.
    pub fn admin_open(&self, path: &str) -> bool {
        let cur = self.now();
        !cur.config.require_auth
            || (!cur.config.protect_metrics && matches!(path, "/health" | "/metrics"))
    }

    /// Checks an HTTP `Authorization` header for a user with ADMIN on `*`.
    pub async fn admin_check(
        self: &Arc<Self>,
        authorization: Option<&str>,
        peer: IpAddr,
    ) -> Result<(), AdminDenied> {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return Err(AdminDenied::Unauthenticated(
                "this endpoint needs HTTP Basic authentication by a user with ADMIN".into(),
            ));
        };
        let found = self
            .verify(peer, &user, &password)
            .await
            .map_err(AdminDenied::Unauthenticated)?;
        if found.allows_everywhere(Permission::Admin) {
            Ok(())
        } else {
            Err(AdminDenied::Forbidden(format!(
                "permission denied: user `{user}` lacks ADMIN on `*`"
            )))
        }
    }
}

fn current(config: &SecurityConfig) -> Current {
    Current {
        config: config.clone(),
        users: Arc::new(Users::new(&config.users)),
    }
}

/// `Basic <base64(user:password)>` → (user, password).
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The text of a denial naming the missing permission.
pub fn denied(user: &str, permission: Permission, database: &str) -> String {
    if database == "*" {
        format!("permission denied: user `{user}` lacks {permission} on `*` (every database)")
    } else {
        format!("permission denied: user `{user}` lacks {permission} on database `{database}`")
    }
}

/// One connection's identity: who authenticated, and for whom a cluster user acts.
#[derive(Debug, Clone)]
pub struct ConnectionAuth {
    security: Arc<Security>,
    peer: IpAddr,
    user: Option<String>,
    acting_as: Option<String>,
    started: Instant,
}

impl ConnectionAuth {
    /// A connection from `peer`, not authenticated yet.
    pub fn new(security: Arc<Security>, peer: IpAddr) -> ConnectionAuth {
        ConnectionAuth {
            security,
            peer,
            user: None,
            acting_as: None,
            started: Instant::now(),
        }
    }

    /// The part's security state.
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The client's address.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// Whether statements may run (authenticated, or authentication not required).
    pub fn authenticated(&self) -> bool {
        !self.security.required() || self.user.is_some()
    }

    /// How long until an unauthenticated connection must be closed; `None` once it may stay.
    pub fn time_left(&self) -> Option<Duration> {
        if self.authenticated() {
            return None;
        }
        Some(
            self.security
                .auth_timeout()
                .saturating_sub(self.started.elapsed()),
        )
    }

    /// The name the connection authenticated as (not the one it acts for).
    pub fn login(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the connection authenticated as `security.clusterUser` (one of the cluster's
    /// own parts).
    pub fn is_cluster_login(&self) -> bool {
        self.user
            .as_deref()
            .is_some_and(|u| self.security.is_cluster_user(u))
    }

    /// The name whose grants apply: the one a cluster user acts for, else its own.
    pub fn effective_name(&self) -> Option<&str> {
        self.acting_as.as_deref().or(self.user.as_deref())
    }

    /// Answers `AUTH`/`DIRK AS`, refuses anything before authentication; `None` lets the
    /// statement through.
    pub async fn gate(&mut self, sql: &str) -> Option<Frame> {
        match statement::parse(sql) {
            Some(Ok(AuthStatement::Auth { user, password })) => {
                Some(self.authenticate(&user, &password).await)
            }
            Some(Ok(AuthStatement::ActAs(name))) => Some(self.act_as(&name)),
            Some(Err(usage)) => Some(Frame::error(usage)),
            None if !self.security.required() => None,
            None => self.refusal(),
        }
    }

    async fn authenticate(&mut self, user: &str, password: &str) -> Frame {
        match self.security.verify(self.peer, user, password).await {
            Ok(found) => {
                self.user = Some(found.name().to_string());
                self.acting_as = None;
                Frame::Message(format!("OK authenticated as {user}"))
            }
            Err(e) => Frame::error(e),
        }
    }

    fn act_as(&mut self, name: &str) -> Frame {
        let Some(login) = self.user.as_deref() else {
            return Frame::error("authentication required");
        };
        if !self.security.is_cluster_user(login) {
            return Frame::error(
                "permission denied: only security.clusterUser may act for another user (DIRK AS)",
            );
        }
        if self.security.user(name).is_none() {
            return Frame::error(format!("unknown user `{name}`"));
        }
        self.acting_as = (name != login).then(|| name.to_string());
        Frame::Message(format!("OK acting as {name}"))
    }

    /// The error for a statement that may not run yet; `None` when it may.
    fn refusal(&mut self) -> Option<Frame> {
        let Some(name) = self.effective_name() else {
            return Some(Frame::error("authentication required"));
        };
        if self.security.user(name).is_some() {
            return None;
        }
        let msg = format!("user `{name}` no longer exists; authenticate again");
        self.user = None;
        self.acting_as = None;
        Some(Frame::error(msg))
    }

    fn effective_user(&self) -> Result<Arc<User>, String> {
        let name = self
            .effective_name()
            .ok_or_else(|| "authentication required".to_string())?;
        self.security
            .user(name)
            .ok_or_else(|| format!("user `{name}` no longer exists; authenticate again"))
    }

    /// `Ok` when `permission` is held on `database` (always, without `requireAuth`).
    pub fn require(&self, database: &str, permission: Permission) -> Result<(), String> {
        if !self.security.required() {
            return Ok(());
        }
        let user = self.effective_user()?;
        if user.allows(database, permission) {
            Ok(())
        } else {
            Err(denied(user.name(), permission, database))
        }
    }

    /// `Ok` when `permission` is held on `*` (always, without `requireAuth`).
    pub fn require_everywhere(&self, permission: Permission) -> Result<(), String> {
        if !self.security.required() {
            return Ok(());
        }
        let user = self.effective_user()?;
        if user.allows_everywhere(permission) {
            Ok(())
        } else {
            Err(denied(user.name(), permission, "*"))
        }
    }

    /// Whether `database` may appear in this connection's `SHOW DATABASES`.
    pub fn sees(&self, database: &str) -> bool {
        if !self.security.required() {
            return true;
        }
        self.effective_user().is_ok_and(|u| u.sees(database))
    }
}

#[cfg(test)]
mod tests;

/// Prints a loud warning when `host` is not a loopback address and nothing is authenticated:
/// anyone who can reach it may read, write and reconfigure.
pub fn warn_if_exposed(host: &str, what: &str, security: &Security) {
    if security.required() || is_loopback(host) {
        return;
    }
    let text = format!(
        "WARNING: {what} listens on {host}, which is not a loopback address, and \
         security.requireAuth is false: anyone who can reach it can read, write, drop every \
         database and reconfigure the cluster. Turn on security (README, Security) or bind 127.0.0.1."
    );
    eprintln!("{text}");
    tracing::warn!("{text}");
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
