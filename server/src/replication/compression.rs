//! zstd on the stream a primary sends its replicas (`replication.compression`).
//!
//! A replica whose config says ZSTD offers it in its `Hello` (`"compression": "zstd"`). A
//! primary whose config says ZSTD too answers with one plain [`Message::Compression`] and from
//! the next byte on writes everything to that replica — entries, heartbeats, full-sync
//! snapshots, FILE copies — through one zstd stream at `replication.compression.level`, flushed
//! with every flush of the stream, so a unit is never held back waiting for more. The replica's
//! reader switches to a zstd decoder right after that message. Either end at NONE, or a node
//! that predates compression (it neither offers nor answers), keeps the stream plain. The
//! replica's acknowledgements stay plain: they are a few bytes each.
//!
//! One stream per connection rather than one frame per unit: a live stream is made of small
//! units (one transaction each), and only a stream that remembers the previous units finds the
//! repetition between them (the same table, columns and similar rows).
//!
//! [`WireCounters`] count the bytes handed to the stream and the bytes that reached the socket
//! (the same figure when nothing is compressed): `/metrics` shows both, so the ratio on a real
//! workload can be read off a running primary.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::tokio::write::ZstdEncoder;
use async_compression::Level;
use dirkdb_core::config::{CompressionConfig, CompressionType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::protocol::{write_message, Message, ProtocolError};

/// The one algorithm spoken, as `Hello.compression` and `Message::Compression` name it.
pub(crate) const ZSTD: &str = "zstd";

/// The writing half of a replica's stream, before buffering.
pub(crate) type RawWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// The reading half (the same type as [`super::stream::StreamReader`], named here so that this
/// module, which `stream` uses, does not use `stream` back).
pub(crate) type RawReader = Box<dyn AsyncRead + Send + Unpin>;

/// What a replica offers in its `Hello`.
pub(crate) fn offer(config: &CompressionConfig) -> Option<String> {
    (config.kind == CompressionType::Zstd).then(|| ZSTD.to_string())
}

/// Primary side: the zstd level to use for a replica that offered `offered`, if both agree.
pub(crate) fn agreed(config: &CompressionConfig, offered: Option<&str>) -> Option<i32> {
    let wanted = offered.is_some_and(|o| o.eq_ignore_ascii_case(ZSTD));
    (config.kind == CompressionType::Zstd && wanted).then_some(config.level)
}

/// Bytes a primary sent its replicas, before and after compression.
#[derive(Debug, Default)]
pub struct WireCounters {
    uncompressed: AtomicU64,
    wire: AtomicU64,
}

impl WireCounters {
    /// Bytes handed to the streams (what the wire would carry uncompressed).
    pub fn uncompressed(&self) -> u64 {
        self.uncompressed.load(Ordering::Relaxed)
    }

    /// Bytes written to the sockets.
    pub fn wire(&self) -> u64 {
        self.wire.load(Ordering::Relaxed)
    }
}

/// Primary side, right after the replica's `Hello`: with a `level` agreed, says so to the
/// replica (plainly) and returns the writer that compresses everything after; else the plain
/// writer. Both count into `counters`.
pub(crate) async fn sending(
    mut raw: RawWriter,
    level: Option<i32>,
    counters: &Arc<WireCounters>,
) -> Result<RawWriter, ProtocolError> {
    let Some(level) = level else {
        return Ok(Box::new(Counting::new(raw, counters, Stage::Both)));
    };
    let hello = Message::Compression {
        algorithm: ZSTD.to_string(),
    };
    let mut plain = Counting::new(&mut raw, counters, Stage::Both);
    write_message(&mut plain, &hello).await?;
    plain.flush().await?;
    let wire = Counting::new(raw, counters, Stage::Wire);
    let encoder = ZstdEncoder::with_quality(wire, Level::Precise(level));
    Ok(Box::new(Counting::new(
        encoder,
        counters,
        Stage::Uncompressed,
    )))
}

/// Replica side: the reader that decodes everything after the primary's `Compression`.
pub(crate) fn receiving(reader: RawReader) -> RawReader {
    Box::new(ZstdDecoder::new(BufReader::new(reader)))
}

/// Which counter a [`Counting`] writer adds to.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Above the encoder.
    Uncompressed,
    /// Below it, on the socket.
    Wire,
    /// Not compressed: the same bytes for both.
    Both,
}

/// A writer that counts the bytes it passes on.
struct Counting<W> {
    inner: W,
    counters: Arc<WireCounters>,
    stage: Stage,
}

impl<W> Counting<W> {
    fn new(inner: W, counters: &Arc<WireCounters>, stage: Stage) -> Self {
        Counting {
            inner,
            counters: counters.clone(),
            stage,
        }
    }

    fn count(&self, n: usize) {
        let n = n as u64;
        if matches!(self.stage, Stage::Uncompressed | Stage::Both) {
            self.counters.uncompressed.fetch_add(n, Ordering::Relaxed);
        }
        if matches!(self.stage, Stage::Wire | Stage::Both) {
            self.counters.wire.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.count(n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::protocol::{read_unit, Unit};

    fn zstd(level: i32) -> CompressionConfig {
        CompressionConfig {
            kind: CompressionType::Zstd,
            level,
        }
    }

    #[test]
    fn both_ends_must_ask_for_it() {
        let none = CompressionConfig {
            kind: CompressionType::None,
            level: 3,
        };
        assert_eq!(offer(&zstd(3)).as_deref(), Some("zstd"));
        assert_eq!(offer(&none), None);
        assert_eq!(offer(&CompressionConfig::default()), None, "off by default");
        assert_eq!(agreed(&zstd(5), Some("ZSTD")), Some(5));
        assert_eq!(agreed(&zstd(5), None), None);
        assert_eq!(agreed(&zstd(5), Some("gzip")), None);
        assert_eq!(agreed(&none, Some("zstd")), None);
    }

    /// Units written through the compressing writer, read back over a real pipe
    /// (`tokio::io::duplex`) the way a replica reads them: the plain `Compression` message,
    /// then every unit decoded; the counters show the text-heavy units shrink.
    #[tokio::test]
    async fn units_cross_the_stream_compressed_and_arrive_whole() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let counters = Arc::new(WireCounters::default());
        let mut writer = sending(Box::new(a), Some(3), &counters).await.unwrap();
        let row = "Antananarivo, Madagasikara: ny mpianatra rehetra dia nahazo naoty tsara. ";
        for i in 0..200 {
            let message = Message::Error {
                message: format!("{i} {}", row.repeat(8)),
            };
            write_message(&mut writer, &message).await.unwrap();
            writer.flush().await.unwrap();
        }
        drop(writer);
        let mut reader: RawReader = Box::new(b);
        match read_unit(&mut reader).await.unwrap() {
            Unit::Message(Message::Compression { algorithm }) => assert_eq!(algorithm, "zstd"),
            other => panic!("{other:?}"),
        }
        let mut reader = receiving(reader);
        for i in 0..200 {
            match read_unit(&mut reader).await.unwrap() {
                Unit::Message(Message::Error { message }) => {
                    assert!(
                        message.starts_with(&format!("{i} Antananarivo")),
                        "{message}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        let (raw, wire) = (counters.uncompressed(), counters.wire());
        assert!(raw > 100_000, "{raw}");
        assert!(wire * 10 < raw, "{wire} bytes on the wire for {raw}");
    }

    #[tokio::test]
    async fn without_compression_both_counters_agree() {
        let (a, _b) = tokio::io::duplex(1 << 16);
        let counters = Arc::new(WireCounters::default());
        let mut writer = sending(Box::new(a), None, &counters).await.unwrap();
        let message = Message::Error {
            message: "plain".into(),
        };
        write_message(&mut writer, &message).await.unwrap();
        writer.flush().await.unwrap();
        assert!(counters.wire() > 0);
        assert_eq!(counters.wire(), counters.uncompressed());
    }
}
