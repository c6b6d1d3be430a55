//! The DirkDB client: an async library that speaks the wire protocol, and the interactive
//! line-oriented client built on it.
//!
//! How a request flows through [`Client::execute`]: the statement is checked to be exactly one
//! complete statement (so a stray `;` can never desynchronize requests and responses), sent with
//! its `;`, then frames are read until the message that ends every response: pages are parsed and
//! their rows gathered into a [`ResultSet`], and a final `Hadisoana : …` message becomes
//! [`ClientError::Server`] while the connection stays usable. The proxy, the cache, the tests and
//! the benchmarks all use this library; [`cli`] is the `dirkdb client` command.

pub mod bench;
pub mod cli;
pub mod credentials;
pub mod render;
pub mod tls_args;

use std::time::Duration;

use dirkdb_core::connection::{ClientConnection, ConnectionError};
use dirkdb_core::frame::{Column, Frame, FrameError, RawKind, RelationPage};
use dirkdb_core::sql::split_script;
use dirkdb_core::tls::{ConnectError, Stream};
use serde_json::Value;

/// Largest line or message accepted from a server (a page of rows is one line).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP connection could be made.
    #[error(
        "cannot connect to {addr}: {source} (is a DirkDB server, proxy or cache listening there?)"
    )]
    Connect {
        /// Address tried.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Connecting took longer than the timeout.
    #[error("cannot connect to {0}: timed out")]
    ConnectTimeout(String),
    /// The TLS handshake failed: the server's certificate is not signed by the CA given, does
    /// not name the host, or the port does not speak TLS.
    #[error("TLS with {addr} failed: {reason} (the server's certificate must be signed by the CA of --ca or security.tls.caFile and name the host connected to; is TLS on there?)")]
    Tls {
        /// Address tried.
        addr: String,
        /// rustls's reason.
        reason: String,
    },
    /// The server answered with an error; the connection is still usable.
    #[error("Hadisoana : {0}")]
    Server(String),
    /// The connection broke or the peer spoke something else than the protocol.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The server closed the connection before answering.
    #[error("the server closed the connection")]
    Closed,
    /// The port answered in HTTP: an admin API, not a SQL port.
    #[error("{0} is an HTTP port (an admin API?), not a DirkDB SQL port: point the client at the SQL port (e.g. the proxy's loadBalancer.listenPort)")]
    HttpPort(String),
    /// The text given to `execute` is not exactly one complete statement.
    #[error("expected exactly one complete statement, got {0}")]
    NotOneStatement(String),
    /// The part refused the `AUTH` the connection opened with.
    #[error("cannot authenticate to {addr} as {user}: {reason}")]
    AuthFailed {
        /// Address connected to.
        addr: String,
        /// User presented.
        user: String,
        /// The part's answer.
        reason: String,
    },
}

impl ClientError {
    /// True when the connection cannot be used any more (as opposed to a refused statement).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ClientError::Server(_) | ClientError::NotOneStatement(_)
        )
    }
}

/// Result alias of the client library.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Rows of a relation response, gathered from all its pages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultSet {
    /// Table the first column comes from.
    pub name: Option<String>,
    /// Column names and origins.
    pub columns: Vec<Column>,
    /// All rows.
    pub rows: Vec<Vec<Value>>,
    /// Pages the server sent.
    pub pages: u64,
}

/// A successful response.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A message such as `Tafinditra ny fiovana ny tabilao`.
    Message(String),
    /// A relation.
    Rows(ResultSet),
}

impl Reply {
    /// The rows, when this is a relation.
    pub fn rows(&self) -> Option<&ResultSet> {
        match self {
            Reply::Rows(rs) => Some(rs),
            Reply::Message(_) => None,
        }
    }
}

/// One connection to a server, proxy or cache.
pub struct Client {
    conn: ClientConnection<Stream>,
    addr: String,
}

impl Client {
    /// Connects to `host:port` within ten seconds.
    pub async fn connect(addr: &str) -> Result<Client> {
        Self::connect_timeout(addr, Duration::from_secs(10)).await
    }

    /// Connects, then presents `credentials` (if any) with `AUTH` before anything else.
    pub async fn connect_as(
        addr: &str,
        credentials: Option<&dirkdb_core::security::Credentials>,
    ) -> Result<Client> {
        let mut client = Self::connect(addr).await?;
        if let Some(credentials) = credentials {
            client.authenticate(credentials).await?;
        }
        Ok(client)
    }

    /// Sends `AUTH` with these credentials; a refusal is [`ClientError::AuthFailed`].
    pub async fn authenticate(
        &mut self,
        credentials: &dirkdb_core::security::Credentials,
    ) -> Result<()> {
        match self.execute(&credentials.auth_statement()).await {
            Ok(_) => Ok(()),
            Err(ClientError::Server(reason)) => Err(ClientError::AuthFailed {
                addr: self.addr.clone(),
                user: credentials.user.clone(),
                reason,
            }),
            Err(e) => Err(e),
        }
    }

    /// Connects with an explicit timeout, in TLS when the process uses it
    /// (`dirkdb_core::tls::use_cluster_tls`, `dirkdb client --tls`).
    pub async fn connect_timeout(addr: &str, timeout: Duration) -> Result<Client> {
        let tls = dirkdb_core::tls::cluster_client();
        Self::connect_with(addr, timeout, tls.as_deref()).await
    }

    /// Connects within `timeout`, in TLS with `tls` (plaintext with `None`), whatever the
    /// process uses otherwise.
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        tls: Option<&dirkdb_core::tls::TlsClient>,
    ) -> Result<Client> {
        let stream = dirkdb_core::tls::connect(addr, timeout, tls)
            .await
            .map_err(|e| match e {
                ConnectError::Timeout { addr } => ClientError::ConnectTimeout(addr),
                ConnectError::Tcp { addr, source } => ClientError::Connect { addr, source },
                ConnectError::Tls { addr, reason } => ClientError::Tls { addr, reason },
            })?;
        Ok(Client {
            conn: ClientConnection::new(stream, MAX_FRAME_BYTES),
            addr: addr.to_string(),
        })
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one statement (its `;` is optional) and reads its whole response.
    pub async fn execute(&mut self, statement: &str) -> Result<Reply> {
        let text = one_statement(statement)?;
        self.conn.send_statement(&text).await?;
        self.read_reply(None::<fn(RelationPage)>).await
    }

    /// Like [`Client::execute`], expecting rows.
    pub async fn query(&mut self, statement: &str) -> Result<ResultSet> {
        match self.execute(statement).await? {
            Reply::Rows(rows) => Ok(rows),
            Reply::Message(m) => Ok(ResultSet {
                name: None,
                columns: vec![Column {
                    name: "message".into(),
                    origin: None,
                }],
                rows: vec![vec![Value::String(m)]],
                pages: 0,
            }),
        }
    }

    /// Sends one statement and hands each page to `on_page` as it arrives instead of keeping the
    /// rows; the returned [`ResultSet`] then has the columns but no rows.
    pub async fn execute_streaming(
        &mut self,
        statement: &str,
        on_page: impl FnMut(RelationPage),
    ) -> Result<Reply> {
        let text = one_statement(statement)?;
        self.conn.send_statement(&text).await?;
        self.read_reply(Some(on_page)).await
    }

    /// Sends one statement without reading its response; read it with [`Client::next_frame`]
    /// (a proxy passing frames on as they arrive).
    pub async fn send_statement(&mut self, statement: &str) -> Result<()> {
        let text = one_statement(statement)?;
        Ok(self.conn.send_statement(&text).await?)
    }

    /// Sends a statement exactly as a [`dirkdb_core::sql::StatementSplitter`] framed it (a proxy
    /// forwarding its client's statement, without its `;`): such text is one complete
    /// statement by construction, so the check of [`Client::send_statement`] is skipped (it
    /// split every statement the proxy forwarded a second time: issue #19). Text from anywhere
    /// else goes through [`Client::send_statement`].
    pub async fn send_framed(&mut self, statement: &str) -> Result<()> {
        Ok(self.conn.send_statement(statement).await?)
    }

    /// [`Client::send_framed`] with `then` right behind it in the same flush: a proxy asking
    /// for a write's position (`DIRK POSITION HISTORY`) without a round trip of its own. Both
    /// responses are read in order with [`Client::next_raw_frame`] / [`Client::next_frame`].
    pub async fn send_framed_then(&mut self, statement: &str, then: &str) -> Result<()> {
        Ok(self.conn.send_statements(statement, then).await?)
    }

    /// The next frame of the current response; a closed connection is an error.
    pub async fn next_frame(&mut self) -> Result<Frame> {
        self.conn.read_frame().await?.ok_or(ClientError::Closed)
    }

    /// The next frame of the current response as the bytes it came in, with its kind (a proxy
    /// writing it on without decoding it); the bytes are lent until the next read. A closed
    /// connection is an error.
    pub async fn next_raw_frame(&mut self) -> Result<(RawKind, &[u8])> {
        self.conn.read_raw_frame().await?.ok_or(ClientError::Closed)
    }

    /// Sends raw bytes, bypassing statement checks (for tests of bad input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.conn.send_raw(bytes).await?)
    }

    /// Reads one whole response (after [`Client::send_raw`]).
    pub async fn read_response(&mut self) -> Result<Reply> {
        self.read_reply(None::<fn(RelationPage)>).await
    }

    async fn read_reply(&mut self, mut on_page: Option<impl FnMut(RelationPage)>) -> Result<Reply> {
        let mut result: Option<ResultSet> = None;
        loop {
            let frame = match self.conn.read_frame().await {
                Err(ConnectionError::Frame(FrameError::UnexpectedLine(line)))
                    if line.starts_with("HTTP/") =>
                {
                    return Err(ClientError::HttpPort(self.addr.clone()))
                }
                other => other?,
            };
            match frame {
                None => return Err(ClientError::Closed),
                Some(Frame::RelationEnd) => {}
                Some(Frame::Page(page)) => {
                    let page = page.parse().map_err(ConnectionError::from)?;
                    let rs = result.get_or_insert_with(|| ResultSet {
                        name: page.name.clone(),
                        columns: page.columns.clone(),
                        ..ResultSet::default()
                    });
                    rs.pages += 1;
                    match on_page.as_mut() {
                        Some(f) => f(page),
                        None => rs.rows.extend(page.rows),
                    }
                }
                Some(frame @ Frame::Message(_)) => {
                    if let Some(reason) = frame.error_text() {
                        return Err(ClientError::Server(reason.to_string()));
                    }
                    let Frame::Message(text) = frame else {
                        return Err(ClientError::Closed);
                    };
                    if text.starts_with("HTTP/1.") {
                        return Err(ClientError::HttpPort(self.addr.clone()));
                    }
                    return Ok(match result {
                        Some(rs) => Reply::Rows(rs),
                        None => Reply::Message(text),
                    });
                }
            }
        }
    }
}

/// Checks that `text` is one complete statement and returns it without its `;`.
///
/// The splitter takes a plain statement (no literal, comment or trigger body) in one step, so
/// this check stays cheap on the proxy's path, which forwards every statement through it.
fn one_statement(text: &str) -> Result<String> {
    let script = split_script(&format!("{text}\n;"));
    match (script.statements.as_slice(), script.remainder.is_empty()) {
        ([one], true) => Ok(one.clone()),
        ([], true) => Err(ClientError::NotOneStatement("an empty statement".into())),
        (_, false) => Err(ClientError::NotOneStatement(
            "an unfinished statement (unclosed quote or comment?)".into(),
        )),
        (many, true) => Err(ClientError::NotOneStatement(format!(
            "{} statements",
            many.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_checks() {
        assert_eq!(one_statement("SELECT 1").unwrap(), "SELECT 1");
        assert_eq!(one_statement("SELECT ';';").unwrap(), "SELECT ';'");
        assert!(one_statement("SELECT 1; SELECT 2").is_err());
        assert!(one_statement("SELECT 'abc").is_err());
        assert!(one_statement("  ;").is_err());
        assert!(one_statement(" \t\x0B ").is_err());
        assert_eq!(one_statement(" SELECT 2\n").unwrap(), "SELECT 2");
        // The appended `;` does not end a trigger body: not one complete statement.
        assert!(one_statement("CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1").is_err());
        assert!(one_statement("create trigger t after insert on x begin select 1").is_err());
    }
}
