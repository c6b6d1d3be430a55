//! The replication stream's messages and their framing.
//!
//! A replica opens a normal client connection to the primary's SQL port and sends the statement
//! `DIRK REPLICATION;`. The primary answers one message frame, `OK DIRK REPLICATION`, and from
//! then on both sides speak this binary protocol on the same socket: each unit is a 4-byte
//! big-endian length, a kind byte, and the payload — a JSON [`Message`] (kind 0) or raw bytes of
//! a snapshot file (kind 1). The replica speaks first (`Hello` with its position), so no byte of
//! the binary protocol can be mistaken for a statement.
//!
//! With `replication.compression` ZSTD on both ends, the replica's `Hello` asks for `zstd` and
//! the primary answers with a plain `Compression` message; everything the primary sends after
//! it is one zstd stream (see [`super::compression`]).
//!
//! Every message that carries data or liveness carries the sender's replication term (`Hello`,
//! `Continue`, `FullSyncBegin`, `Entries`, `Heartbeat`, `Ack`; 0 from servers that predate terms):
//! a replica refuses a stream, entries or heartbeats from a term below its own, a primary that
//! hears of a higher term steps down, and a primary counts for write concerns only the
//! acknowledgements of its own term.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::meta::HistoryLink;
use crate::oplog::Entry;

/// The statement that turns a client connection into a replication stream.
pub const HANDSHAKE: &str = "DIRK REPLICATION";
/// The primary's answer to it.
pub const HANDSHAKE_OK: &str = "OK DIRK REPLICATION";
/// Largest unit accepted (a batch of entries or a file chunk).
pub const MAX_UNIT: usize = 64 * 1024 * 1024;

const KIND_MESSAGE: u8 = 0;
const KIND_CHUNK: u8 = 1;

/// A snapshot file announced at the start of a full sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    /// File name in the data directory.
    pub name: String,
    /// Its size.
    pub bytes: u64,
}

/// What a FILE-mode secondary holds of one database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInfo {
    /// Database name.
    pub name: String,
    /// Version of its copy (0: unknown).
    pub version: u64,
    /// Bytes per page.
    pub page_size: u32,
    /// CRC-32 of each page of its copy.
    pub crcs: Vec<u32>,
}

/// `Hello.mode` on the wire: `config.json`'s spelling (`OPLOG`, `FILE`), read case-insensitively;
/// absent means OPLOG (replicas that predate FILE mode).
mod mode_text {
    use dirkdb_core::config::ReplicationType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        mode: &ReplicationType,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(mode.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<ReplicationType, D::Error> {
        ReplicationType::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Control messages of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Replica → primary, first: who it is, where it stands, and the mode it follows in.
    Hello {
        /// Replica instance id.
        instance: String,
        /// Its current history id.
        history: String,
        /// Its applied sequence.
        seq: u64,
        /// `OPLOG` or `FILE` (absent: OPLOG).
        #[serde(default, with = "mode_text")]
        mode: dirkdb_core::config::ReplicationType,
        /// The highest term the replica has seen.
        #[serde(default)]
        term: u64,
        /// The compression it asks for (`zstd`; absent: none), see
        /// [`super::compression`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<String>,
    },
    /// Primary → replica, first and plain, when both asked for compression: every byte after
    /// it is one `algorithm` stream.
    Compression {
        /// `zstd`.
        algorithm: String,
    },
    /// FILE mode, secondary → primary after `Hello`: the copies it holds.
    FileInventory {
        /// One per database it holds.
        databases: Vec<CopyInfo>,
    },
    /// FILE mode, primary → secondary: the changed pages of a database's new copy follow as
    /// chunks (each page: 4-byte big-endian index, then `page_size` bytes).
    FileCopyBegin {
        /// Database name.
        name: String,
        /// The copy's version (the newest oplog sequence in it; 0 when unknown).
        version: u64,
        /// Bytes per page.
        page_size: u32,
        /// Length of the whole copy.
        bytes: u64,
        /// CRC-32 of the whole copy, checked before it is installed.
        file_crc: u32,
        /// Pages that follow.
        pages: u64,
    },
    /// FILE mode: the pages of a copy are all sent.
    FileCopyEnd {
        /// Database name.
        name: String,
    },
    /// FILE mode, primary → secondary: the database no longer exists on the primary.
    FileDrop {
        /// Database name.
        name: String,
    },
    /// FILE mode, secondary → primary: how installing a copy (or a drop) ended.
    FileResult {
        /// Database name.
        name: String,
        /// True when installed.
        ok: bool,
        /// Why not.
        error: Option<String>,
    },
    /// FILE mode, primary → secondary: every changed database of a round was sent; the
    /// secondary now stands at `position` (answered with `Ack`).
    FileRoundEnd {
        /// The primary's committed sequence when the round started.
        position: u64,
        /// The time of the oldest change the round carries (ms since the epoch).
        ts: i64,
        /// The primary's history chain (the secondary adopts it, so that positions name their
        /// history on it too; empty from servers that predate it).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chain: Vec<HistoryLink>,
    },
    /// Primary → replica: partial sync; entries after `from` follow.
    Continue {
        /// The primary's history chain (the replica adopts it).
        chain: Vec<HistoryLink>,
        /// Entries after this sequence follow.
        from: u64,
        /// The primary's term (the replica adopts it).
        #[serde(default)]
        term: u64,
    },
    /// Primary → replica: a full sync of `files` at `position` starts.
    FullSyncBegin {
        /// The primary's history chain.
        chain: Vec<HistoryLink>,
        /// Sequence the snapshot stands at.
        position: u64,
        /// Files that follow.
        files: Vec<FileInfo>,
        /// The primary's term (the replica adopts it once the snapshot is installed).
        #[serde(default)]
        term: u64,
    },
    /// A file's bytes follow as chunks.
    FileBegin(FileInfo),
    /// A file is complete; its CRC-32 over all bytes.
    FileEnd {
        /// File name.
        name: String,
        /// CRC-32 of the whole file.
        crc: u32,
    },
    /// Every file was sent; entries after `position` follow.
    FullSyncEnd {
        /// Sequence the snapshot stands at.
        position: u64,
    },
    /// Primary → replica: committed entries, in order.
    Entries {
        /// The entries.
        entries: Vec<Entry>,
        /// The primary's term.
        #[serde(default)]
        term: u64,
    },
    /// Both ways: alive, and the sender's committed (primary) or applied (replica) sequence.
    Heartbeat {
        /// Sender's sequence.
        seq: u64,
        /// Sender's clock, ms.
        ts: i64,
        /// Sender's term.
        #[serde(default)]
        term: u64,
    },
    /// Replica → primary: everything up to `applied` is applied and durable.
    Ack {
        /// Applied sequence.
        applied: u64,
        /// The replica's term (the one it adopted from this primary).
        #[serde(default)]
        term: u64,
    },
    /// MULTI_PRIMARY, master → master, first: the stream of `origin`'s own changes is asked
    /// for, from `seq` (the asker's applied position for that origin) in `history`.
    PeerHello {
        /// The asking master's id.
        instance: String,
        /// The master whose stream is asked for (the one spoken to).
        origin: String,
        /// The origin's history id the asker last streamed in (`None`: never streamed).
        history: Option<String>,
        /// The asker's applied position in the origin's stream.
        seq: u64,
        /// The checksum of the origin's entry at `seq` as the asker applied it (`None`: not
        /// known, from a master or a position stored before it was recorded); the origin
        /// refuses the stream when its own entry at `seq` differs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crc: Option<u32>,
    },
    /// MULTI_PRIMARY, origin → asker: `PeerEntries` after `from` follow.
    PeerContinue {
        /// The origin's id (the entries' origin).
        origin: String,
        /// The origin's history chain.
        chain: Vec<HistoryLink>,
        /// Entries after this sequence follow.
        from: u64,
        /// The origin's term (acknowledgements carry it back).
        term: u64,
    },
    /// MULTI_PRIMARY, origin → asker: entries the origin committed itself, in order (never
    /// entries it applied from another origin).
    PeerEntries {
        /// The origin's id.
        origin: String,
        /// The entries, in the origin's sequence order (gaps are dropped databases).
        entries: Vec<Entry>,
        /// The origin's term.
        term: u64,
        /// What the origin had applied of the other masters' streams when it committed each
        /// entry (`super::knowledge`); absent from an origin that does not send it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        known: Vec<super::knowledge::Known>,
    },
    /// Either way: the stream cannot go on.
    Error {
        /// Why.
        message: String,
    },
}

/// One unit read from the stream.
#[derive(Debug)]
pub enum Unit {
    /// A control message.
    Message(Message),
    /// Bytes of the current snapshot file.
    Chunk(Bytes),
}

/// Why the stream broke.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed or closed.
    #[error("replication connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not this protocol.
    #[error("replication protocol: {0}")]
    Invalid(String),
}

/// Writes a control message.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &Message,
) -> Result<(), ProtocolError> {
    let json = serde_json::to_vec(message).map_err(|e| ProtocolError::Invalid(e.to_string()))?;
    write_unit(w, KIND_MESSAGE, &json).await
}

/// Writes a chunk of file bytes.
pub async fn write_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> Result<(), ProtocolError> {
    write_unit(w, KIND_CHUNK, bytes).await
}

async fn write_unit<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    let len = u32::try_from(payload.len() + 1)
        .ok()
        .filter(|&n| n as usize <= MAX_UNIT)
        .ok_or_else(|| {
            ProtocolError::Invalid(format!("unit of {} bytes is too large", payload.len()))
        })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&[kind]).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Reads the next unit.
pub async fn read_unit<R: AsyncRead + Unpin>(r: &mut R) -> Result<Unit, ProtocolError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_UNIT {
        return Err(ProtocolError::Invalid(format!("unit length {len}")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    let unit = Bytes::from(buf);
    match unit[0] {
        KIND_MESSAGE => serde_json::from_slice(&unit[1..])
            .map(Unit::Message)
            .map_err(|e| ProtocolError::Invalid(format!("bad message: {e}"))),
        KIND_CHUNK => Ok(Unit::Chunk(unit.slice(1..))),
        kind => Err(ProtocolError::Invalid(format!("unknown unit kind {kind}"))),
    }
}

/// Reads the next unit, which must be a control message.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, ProtocolError> {
    match read_unit(r).await? {
        Unit::Message(m) => Ok(m),
        Unit::Chunk(_) => Err(ProtocolError::Invalid("unexpected file chunk".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_mode_keeps_its_wire_spelling() {
        use dirkdb_core::config::ReplicationType;
        let hello = Message::Hello {
            instance: "m2".into(),
            history: "h".into(),
            seq: 1,
            mode: ReplicationType::File,
            term: 0,
            compression: None,
        };
        let text = serde_json::to_string(&hello).unwrap();
        assert!(text.contains(r#""mode":"FILE""#), "{text}");
        let read = |json: &str| serde_json::from_str::<Message>(json);
        let old = r#"{"type":"hello","instance":"m2","history":"h","seq":1}"#;
        assert!(matches!(
            read(old),
            Ok(Message::Hello {
                mode: ReplicationType::Oplog,
                ..
            })
        ));
        let lower = r#"{"type":"hello","instance":"m2","history":"h","seq":1,"mode":"file"}"#;
        assert!(matches!(
            read(lower),
            Ok(Message::Hello {
                mode: ReplicationType::File,
                ..
            })
        ));
        let unknown = r#"{"type":"hello","instance":"m2","history":"h","seq":1,"mode":"RAFT"}"#;
        let e = read(unknown).unwrap_err().to_string();
        assert!(e.contains("RAFT") && e.contains("OPLOG"), "{e}");
    }

    #[tokio::test]
    async fn units_round_trip_and_garbage_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = Message::Hello {
            instance: "m2".into(),
            history: "h".into(),
            seq: 7,
            mode: dirkdb_core::config::ReplicationType::File,
            term: 3,
            compression: Some("zstd".into()),
        };
        write_message(&mut a, &hello).await.unwrap();
        write_chunk(&mut a, b"abc").await.unwrap();
        assert_eq!(read_message(&mut b).await.unwrap(), hello);
        assert!(matches!(read_unit(&mut b).await.unwrap(), Unit::Chunk(c) if &c[..] == b"abc"));
        let old = br#"{"type":"ack","applied":4}"#;
        let mut unit = ((old.len() + 1) as u32).to_be_bytes().to_vec();
        unit.push(0);
        unit.extend_from_slice(old);
        a.write_all(&unit).await.unwrap();
        assert_eq!(
            read_message(&mut b).await.unwrap(),
            Message::Ack {
                applied: 4,
                term: 0
            },
            "a message without a term reads as term 0"
        );
        a.write_all(&[0, 0, 0, 2, 9, 9]).await.unwrap();
        assert!(read_unit(&mut b).await.is_err());
        a.write_all(&[255, 255, 255, 255]).await.unwrap();
        assert!(read_unit(&mut b).await.is_err());
    }
}
