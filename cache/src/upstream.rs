//! One session's connection to the upstream (the proxy, or a server), made when first needed
//! and made again after it breaks, with the session's database replayed on it.
//!
//! It also carries the position floor: before a read that may be kept, the cache tells the
//! upstream the highest primary position it has seen (`DIRK SEEN <seq>`), so the proxy serves
//! that read from an instance at least that far (its read-your-writes path). It is sent only
//! when the floor moved, and dropped for good on an upstream that does not know it.
//!
//! The upstream may be a list (`host:port,host:port`: several proxies). A new connection goes to
//! the first address that answers, starting with the one in use; when a connection breaks or
//! times out, the next one starts with the next address. A session's transaction does not
//! survive the move: the session reports it rolled back (see `session`).

use std::time::Duration;

use dirkdb_client::{Client, ClientError};
use dirkdb_core::frame::Frame;
use tokio::time::Instant;

/// Why the upstream could not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection, or it broke.
    #[error("the upstream {addr} cannot be reached: {reason}")]
    Unreachable {
        /// The upstream address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer within the statement timeout; the connection was closed.
    #[error("the upstream {addr} did not answer within {ms} ms (cache.statementTimeoutMs)")]
    Timeout {
        /// The upstream address.
        addr: String,
        /// The timeout.
        ms: u64,
    },
    /// The session's database could not be selected again on a new connection.
    #[error("cannot select database {db} on the new upstream connection: {reason}")]
    Reselect {
        /// The database.
        db: String,
        /// The upstream's answer.
        reason: String,
    },
}

/// The addresses of an upstream list (`host:port,host:port`), in order; never empty.
pub fn addresses(list: &str) -> Vec<String> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        vec![list.to_string()]
    } else {
        addrs
    }
}

/// Connects to the first address of `addrs` that answers within `timeout`, trying them in
/// order from `start`; returns the client and the index of its address.
pub async fn connect_first(
    addrs: &[String],
    start: usize,
    timeout: Duration,
) -> Result<(Client, usize), ClientError> {
    let mut last = ClientError::Closed;
    for step in 0..addrs.len() {
        let i = (start + step) % addrs.len();
        match Client::connect_timeout(&addrs[i], timeout).await {
            Ok(client) => {
                if step > 0 {
                    tracing::info!(upstream = %addrs[i], "moved to the next upstream");
                }
                return Ok((client, i));
            }
            Err(e) => {
                tracing::debug!(upstream = %addrs[i], error = %e, "upstream unreachable");
                last = e;
            }
        }
    }
    Err(last)
}

/// The session's upstream connection.
pub struct Upstream {
    /// The address in use (the first of `addrs` until a connection moved on).
    addr: String,
    addrs: Vec<String>,
    current: usize,
    client: Option<Client>,
    /// The database selected on `client`.
    db: Option<String>,
    floor: u64,
    floor_supported: bool,
    timeout: Duration,
    deadline: Option<Instant>,
    /// The client the connection runs for (`crate::auth`).
    user: Option<String>,
}

impl Upstream {
    /// Not connected yet.
    pub fn new(addr: String, timeout: Duration) -> Upstream {
        let addrs = addresses(&addr);
        Upstream {
            addr: addrs[0].clone(),
            addrs,
            current: 0,
            client: None,
            db: None,
            floor: 0,
            floor_supported: true,
            timeout,
            deadline: None,
            user: None,
        }
    }

    /// Makes the connection run for `user` from the next statement on (a new identity means a
    /// new connection, authenticated for it).
    pub fn set_user(&mut self, user: Option<String>) {
        if self.user != user {
            self.user = user;
            self.client = None;
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable {
            addr: self.addr.clone(),
            reason: e.to_string(),
        }
    }

    /// Connected, with `db` selected.
    async fn ready(&mut self, db: Option<&str>) -> Result<&mut Client, UpstreamError> {
        if self.client.is_none() {
            let (mut client, i) = connect_first(&self.addrs, self.current, Duration::from_secs(2))
                .await
                .map_err(|e| self.unreachable(e))?;
            self.current = i;
            self.addr = self.addrs[i].clone();
            crate::auth::login(&mut client, self.user.as_deref())
                .await
                .map_err(|e| self.unreachable(e))?;
            self.client = Some(client);
            self.db = None;
            self.floor = 0;
        }
        if let Some(db) = db.filter(|db| self.db.as_deref() != Some(*db)) {
            let statement = format!("USE {db}");
            match self.call(&statement).await {
                Ok(Frame::Message(text)) if !text.starts_with(dirkdb_core::frame::ERROR_PREFIX) => {
                    self.db = Some(db.to_string());
                }
                Ok(frame) => {
                    return Err(UpstreamError::Reselect {
                        db: db.to_string(),
                        reason: frame
                            .error_text()
                            .unwrap_or("unexpected answer")
                            .to_string(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| UpstreamError::Unreachable {
                addr: self.addr.clone(),
                reason: "not connected".into(),
            })
    }

    /// Sends a statement whose answer is one message frame, and returns that frame.
    async fn call(&mut self, statement: &str) -> Result<Frame, UpstreamError> {
        self.send_raw(statement).await?;
        loop {
            match self.next_frame().await? {
                frame @ Frame::Message(_) => return Ok(frame),
                _ => continue,
            }
        }
    }

    async fn send_raw(&mut self, statement: &str) -> Result<(), UpstreamError> {
        let Some(client) = self.client.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        self.deadline = Some(Instant::now() + self.timeout);
        if let Err(e) = client.send_statement(statement).await {
            return Err(self.broken(e));
        }
        Ok(())
    }

    /// Sends `statement` with `db` selected; read its answer with [`Upstream::next_frame`].
    pub async fn send(&mut self, db: Option<&str>, statement: &str) -> Result<(), UpstreamError> {
        self.ready(db).await?;
        self.send_raw(statement).await
    }

    /// Declares the session's database after a successful `USE` it sent itself.
    pub fn selected(&mut self, db: &str) {
        self.db = Some(db.to_string());
    }

    /// The next frame of the current answer.
    pub async fn next_frame(&mut self) -> Result<Frame, UpstreamError> {
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + self.timeout);
        let Some(client) = self.client.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        match tokio::time::timeout_at(deadline, client.next_frame()).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(e)) => Err(self.broken(e)),
            Err(_) => {
                self.client = None;
                self.move_on();
                Err(UpstreamError::Timeout {
                    addr: self.addr.clone(),
                    ms: self.timeout.as_millis() as u64,
                })
            }
        }
    }

    fn broken(&mut self, e: ClientError) -> UpstreamError {
        self.client = None;
        let error = self.unreachable(e);
        self.move_on();
        error
    }

    /// The next connection starts with the next upstream of the list.
    fn move_on(&mut self) {
        self.current = (self.current + 1) % self.addrs.len();
    }

    /// Makes sure the upstream serves the next read at position `seen` or later.
    pub async fn raise_floor(&mut self, db: Option<&str>, seen: u64) -> Result<(), UpstreamError> {
        if !self.floor_supported || seen <= self.floor {
            return Ok(());
        }
        self.ready(db).await?;
        let frame = self.call(&format!("DIRK SEEN {seen}")).await?;
        if frame.error_text().is_some() {
            tracing::debug!(upstream = %self.addr, "the upstream does not take DIRK SEEN; reads are not held to a position floor");
            self.floor_supported = false;
        } else {
            self.floor = seen;
        }
        Ok(())
    }

    /// The position of this session's last write on the primary (`DIRK POSITION`); `None` when
    /// the upstream does not say.
    pub async fn last_write_position(&mut self) -> Option<u64> {
        self.client.as_ref()?;
        match self.call("DIRK POSITION").await {
            Ok(Frame::Message(text)) => text.strip_prefix("position ")?.trim().parse().ok(),
            _ => None,
        }
    }

    /// Reads the answer of a `DIRK POSITION` already sent behind the previous statement
    /// (pipelined); `None` when the upstream does not say.
    pub async fn pipelined_position(&mut self) -> Option<u64> {
        self.client.as_ref()?;
        loop {
            match self.next_frame().await.ok()? {
                Frame::Message(text) => {
                    return text.strip_prefix("position ")?.trim().parse().ok();
                }
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_list_is_split_and_the_first_address_that_answers_is_used() {
        assert_eq!(addresses("a:1, b:2,"), vec!["a:1", "b:2"]);
        assert_eq!(addresses("a:1"), vec!["a:1"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap().to_string();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let addrs = vec![dead.clone(), live.clone()];
        let (_, i) = connect_first(&addrs, 0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(i, 1, "the dead address is skipped");
        let e = connect_first(std::slice::from_ref(&dead), 0, Duration::from_secs(1))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&dead), "{e}");
    }
}
