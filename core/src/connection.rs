//! Framed connections: the only code that turns bytes on a socket into statements or frames.
//!
//! [`ServerConnection`] is the end a server, proxy or cache holds for each client: it reads
//! `;`-terminated statements (through [`crate::sql::StatementSplitter`]) and writes frames.
//! [`ClientConnection`] is the other end: it writes statements and reads frames (through
//! [`FrameDecoder`]). Both buffer writes; callers `flush` once a response is complete, so a
//! relation of many pages costs few system calls.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::frame::{encode_frame, Frame, FrameDecoder, FrameError, FrameScanner, RawKind};
use crate::sql::{SplitItem, StatementSplitter};

const READ_CHUNK: usize = 64 * 1024;
const WRITE_BUFFER: usize = 64 * 1024;

/// Why a connection could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not the protocol.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the connection in the middle of a response.
    #[error("connection closed by peer in the middle of a response")]
    Truncated,
    /// The peer sent more bytes before a protocol switch than the protocol allows.
    #[error("peer sent data before the protocol switch")]
    UnexpectedData,
    /// The client sent no statement within the connection's [`IdleLimit`] (it was told why).
    #[error("{0}")]
    Idle(String),
}

/// How long a connection waits for its client's next statement before it closes, and the error
/// text the client gets then (naming the knob). See [`ServerConnection::set_idle_limit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleLimit {
    /// The longest wait.
    pub after: std::time::Duration,
    /// What the client is told when it is closed.
    pub reason: String,
}

/// What a client sent: a statement, or a statement the server must refuse without running.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// One statement, without its `;`.
    Statement(String),
    /// A statement over the size limit, refused as soon as it went over (its bytes were not
    /// kept; the rest of it is skipped).
    TooLarge {
        /// Its bytes when it was refused.
        bytes: usize,
        /// What it had open then (a literal, a comment), whose end the skip waits for.
        open: Option<crate::sql::splitter::Unclosed>,
    },
    /// A statement that is not valid UTF-8.
    InvalidUtf8,
}

impl Incoming {
    /// The statement, or the error frame that answers one that cannot run (`limit` is the
    /// `limits.maxStatementBytes` the connection was made with).
    pub fn into_statement(self, limit: usize) -> Result<String, Frame> {
        match self {
            Incoming::Statement(sql) => Ok(sql),
            Incoming::TooLarge { bytes, open } => {
                Err(Frame::error(too_large_text(bytes, open, limit)))
            }
            Incoming::InvalidUtf8 => Err(Frame::error("statement is not valid UTF-8")),
        }
    }
}

/// The refusal of a statement over the limit, sent as soon as it goes over: what is skipped
/// and until when.
fn too_large_text(
    bytes: usize,
    open: Option<crate::sql::splitter::Unclosed>,
    limit: usize,
) -> String {
    let skipped = match open {
        Some(open) => format!(
            "it went over inside {open}, so the input is skipped until that is closed and a `;` ends the statement"
        ),
        None => "the rest of it is skipped up to its ending `;`".to_string(),
    };
    format!(
        "statement refused after {bytes} bytes: it is over the limit of {limit} bytes \
         (limits.maxStatementBytes); {skipped}"
    )
}

/// The server's end of a client connection.
pub struct ServerConnection<S> {
    stream: BufWriter<S>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    splitter: StatementSplitter,
    idle_limit: Option<IdleLimit>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerConnection<S> {
    /// Wraps a socket; statements over `max_statement_bytes` are reported as [`Incoming::TooLarge`].
    pub fn new(stream: S, max_statement_bytes: usize) -> Self {
        Self {
            stream: BufWriter::with_capacity(WRITE_BUFFER, stream),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            splitter: StatementSplitter::new(max_statement_bytes),
            idle_limit: None,
        }
    }

    /// Bounds how long [`ServerConnection::read_statement`] waits for the next statement (none:
    /// no bound). Past it the client gets `limit.reason` as an error frame and the read fails
    /// with [`ConnectionError::Idle`]; sessions set it after each statement (for example
    /// `limits.idleInTransactionTimeoutMs` while a transaction is open).
    pub fn set_idle_limit(&mut self, limit: Option<IdleLimit>) {
        self.idle_limit = limit;
    }

    /// The next statement, or `None` when the client closed the connection (a half-sent
    /// statement is dropped; see [`ServerConnection::had_partial_statement`]).
    pub async fn read_statement(&mut self) -> Result<Option<Incoming>, ConnectionError> {
        let deadline = self
            .idle_limit
            .as_ref()
            .map(|l| tokio::time::Instant::now() + l.after);
        loop {
            if let Some(item) = self.splitter.next_item() {
                return Ok(Some(match item {
                    SplitItem::Statement(bytes) => match String::from_utf8(bytes) {
                        Ok(text) => Incoming::Statement(text),
                        Err(_) => Incoming::InvalidUtf8,
                    },
                    SplitItem::TooLarge { bytes, open } => Incoming::TooLarge { bytes, open },
                }));
            }
            self.read_buf.clear();
            let read = self.stream.read_buf(&mut self.read_buf);
            let n = match deadline {
                Some(at) => match tokio::time::timeout_at(at, read).await {
                    Ok(n) => n?,
                    Err(_) => return Err(self.close_idle().await),
                },
                None => read.await?,
            };
            if n == 0 {
                return Ok(None);
            }
            self.splitter.push(&self.read_buf);
        }
    }

    /// Tells the client why it is closed for idling (best effort) and returns the error.
    async fn close_idle(&mut self) -> ConnectionError {
        let reason = self.idle_limit.take().map(|l| l.reason).unwrap_or_default();
        let _ = self.send(&Frame::error(&reason)).await;
        ConnectionError::Idle(reason)
    }

    /// Gives the socket back (to switch protocols) once everything queued is flushed; fails when
    /// the client already sent bytes after its last statement.
    pub async fn into_inner(mut self) -> Result<S, ConnectionError> {
        self.flush().await?;
        if self.splitter.has_partial() || self.splitter.next_item().is_some() {
            return Err(ConnectionError::UnexpectedData);
        }
        Ok(self.stream.into_inner())
    }

    /// The socket (its peer, its TLS state).
    pub fn get_ref(&self) -> &S {
        self.stream.get_ref()
    }

    /// True when a complete statement is already buffered: a caller reading ahead while a
    /// statement runs stops here, so piped statements wait in the socket, not in memory (an
    /// unfinished one is kept up to `max_statement_bytes`, then only counted).
    pub fn has_statement_buffered(&self) -> bool {
        self.splitter.has_ready()
    }

    /// How many complete statements are buffered, not yet taken.
    pub fn statements_buffered(&self) -> usize {
        self.splitter.ready_count()
    }

    /// Reads whatever the client sends next (kept for the following statements); `false` when
    /// the client closed the connection. Cancel-safe: bytes read are never lost. Callers
    /// stop calling it once [`ServerConnection::has_statement_buffered`] is true.
    pub async fn read_more(&mut self) -> Result<bool, ConnectionError> {
        self.read_buf.clear();
        if self.stream.read_buf(&mut self.read_buf).await? == 0 {
            return Ok(false);
        }
        self.splitter.push(&self.read_buf);
        Ok(true)
    }

    /// True when the client left with an unfinished statement buffered.
    pub fn had_partial_statement(&self) -> bool {
        self.splitter.has_partial()
    }

    /// Queues a frame; it is sent at the next flush (or when the buffer fills).
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        self.write_buf.clear();
        encode_frame(frame, &mut self.write_buf);
        self.stream.write_all(&self.write_buf).await?;
        Ok(())
    }

    /// Queues bytes that are already frames (a proxy passing a response on).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends a single frame at once: for refusals and errors.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        self.write_frame(frame).await?;
        self.flush().await
    }
}

/// The client's end: statements out, frames in.
pub struct ClientConnection<S> {
    stream: BufWriter<S>,
    read_buf: BytesMut,
    decoder: FrameDecoder,
    scanner: FrameScanner,
    /// Bytes of the frame [`ClientConnection::read_raw_frame`] last lent out, removed from
    /// `read_buf` at the next read.
    lent: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientConnection<S> {
    /// Wraps a socket; lines or messages over `max_frame_bytes` are a protocol error.
    pub fn new(stream: S, max_frame_bytes: usize) -> Self {
        Self {
            stream: BufWriter::with_capacity(WRITE_BUFFER, stream),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::new(max_frame_bytes),
            scanner: FrameScanner::new(max_frame_bytes),
            lent: 0,
        }
    }

    /// Sends one statement, adding the terminating `;`.
    pub async fn send_statement(&mut self, statement: &str) -> Result<(), ConnectionError> {
        self.stream.write_all(statement.as_bytes()).await?;
        self.stream.write_all(b";\n").await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends `statement` and `then` in one flush (pipelined: `then` is read by the server
    /// after the first statement is answered, without a round trip between them).
    pub async fn send_statements(
        &mut self,
        statement: &str,
        then: &str,
    ) -> Result<(), ConnectionError> {
        for text in [statement, then] {
            self.stream.write_all(text.as_bytes()).await?;
            self.stream.write_all(b";\n").await?;
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends raw bytes as they are (tests use it to send broken input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Gives the socket back (to switch protocols); fails when bytes were already read past the
    /// last frame, since they would be lost.
    pub fn into_inner(mut self) -> Result<S, ConnectionError> {
        self.read_buf.advance(std::mem::take(&mut self.lent));
        if !self.read_buf.is_empty() {
            return Err(ConnectionError::UnexpectedData);
        }
        Ok(self.stream.into_inner())
    }

    /// The next frame; `None` when the server closed the connection between responses.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        self.read_buf.advance(std::mem::take(&mut self.lent));
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.read_buf)? {
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                if self.decoder.is_mid_frame(&self.read_buf) {
                    return Err(ConnectionError::Truncated);
                }
                return Ok(None);
            }
        }
    }

    /// The next frame as the bytes it came in (its kind beside them), without decoding it: a
    /// proxy writes them on as they are. `None` when the server closed the connection between
    /// responses. The bytes are lent until the next read; frames of either reading method may
    /// follow each other.
    pub async fn read_raw_frame(&mut self) -> Result<Option<(RawKind, &[u8])>, ConnectionError> {
        self.read_buf.advance(std::mem::take(&mut self.lent));
        loop {
            if let Some((kind, len)) = self.scanner.scan(&self.read_buf)? {
                self.lent = len;
                return Ok(Some((kind, &self.read_buf[..len])));
            }
            if !self.fill().await? {
                if self.scanner.is_mid_frame(&self.read_buf) {
                    return Err(ConnectionError::Truncated);
                }
                return Ok(None);
            }
        }
    }

    /// Reads more bytes into `read_buf`; false at EOF.
    async fn fill(&mut self) -> Result<bool, ConnectionError> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        Ok(self.stream.read_buf(&mut self.read_buf).await? != 0)
    }
}
