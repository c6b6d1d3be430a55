//! Response frames of the DirkDB wire protocol and their line codec.
//!
//! Every response a server, proxy or cache sends is a sequence of [`Frame`]s:
//!
//! ```text
//! RESULT_MESSAGE              Frame::Message   — text lines, then END
//! <text>
//! END
//! RELATION_JSON_PAGE 1/2      Frame::Page      — a header line and one JSON line
//! {"type":"relation",…}
//! RELATION_JSON_END           Frame::RelationEnd
//! ```
//!
//! A relation response is pages, `RELATION_JSON_END`, then a message (`OK` or an error), so every
//! response ends with a line that reads exactly `END`. Message text is free-form: a line that would
//! read `END` (or `\END`, `\\END`, …) gets one more leading backslash on the wire, which the decoder
//! removes, so framing never breaks and any text round-trips. [`FrameDecoder`] is incremental: it
//! keeps its position across reads, so a large page arriving in many TCP segments is scanned once.
//! [`FrameScanner`] finds the same frames without decoding them, for a proxy passing them on.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

mod scan;
pub use scan::{FrameScanner, RawKind};

/// First line of a message frame.
pub const MESSAGE_HEADER: &str = "RESULT_MESSAGE";
/// Last line of a message frame (and so of every response).
pub const MESSAGE_END: &str = "END";
/// Prefix of a page header line: `RELATION_JSON_PAGE <page>/<total>`.
pub const PAGE_HEADER: &str = "RELATION_JSON_PAGE";
/// Line that closes the pages of a relation.
pub const RELATION_END: &str = "RELATION_JSON_END";
/// DirkDB's error marker: an error is a message whose text starts with it.
pub const ERROR_PREFIX: &str = "Hadisoana : ";

/// One unit of a response on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `RESULT_MESSAGE` … `END`: a success text, `OK` after a relation, or `Hadisoana : …`.
    Message(String),
    /// One page of rows of a relation.
    Page(PageFrame),
    /// `RELATION_JSON_END`: no more pages follow.
    RelationEnd,
}

impl Frame {
    /// An error message frame with DirkDB's marker.
    pub fn error(reason: impl std::fmt::Display) -> Frame {
        Frame::Message(format!("{ERROR_PREFIX}{reason}"))
    }

    /// The error reason, when this is an error message.
    pub fn error_text(&self) -> Option<&str> {
        match self {
            Frame::Message(text) => text.strip_prefix(ERROR_PREFIX),
            _ => None,
        }
    }
}

/// A page as it travels: its numbers and its JSON line, kept as text so that proxies and caches
/// can pass it on without parsing it.
#[derive(Debug, Clone, PartialEq)]
pub struct PageFrame {
    /// 1-based page number.
    pub page: u64,
    /// Number of pages in the relation.
    pub total_pages: u64,
    json: String,
}

impl PageFrame {
    /// Serializes a page; the JSON is compact, so it is always one line.
    pub fn from_page(page: &RelationPage) -> Result<PageFrame, FrameError> {
        let json = serde_json::to_string(page).map_err(|e| FrameError::Json(e.to_string()))?;
        Ok(PageFrame {
            page: page.page,
            total_pages: page.total_pages,
            json,
        })
    }

    /// Like [`PageFrame::from_page`], doubles written as DirkDB's Java server writes them
    /// (`1.2345678E7`, see `sql::dirkdb::values::java_page_json`): for answers to DirkDB's
    /// language.
    pub fn from_page_java(page: &RelationPage) -> Result<PageFrame, FrameError> {
        let json = crate::sql::dirkdb::values::java_page_json(page)
            .map_err(|e| FrameError::Json(e.to_string()))?;
        Ok(PageFrame {
            page: page.page,
            total_pages: page.total_pages,
            json,
        })
    }

    /// The JSON line as sent.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Parses the JSON line.
    pub fn parse(&self) -> Result<RelationPage, FrameError> {
        serde_json::from_str(&self.json).map_err(|e| FrameError::Json(e.to_string()))
    }
}

/// The JSON object of a page, exactly DirkDB's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "relation", rename_all = "camelCase")]
pub struct RelationPage {
    /// The table the first column comes from, when there is one.
    pub name: Option<String>,
    /// 1-based page number.
    pub page: u64,
    /// Number of pages in the relation.
    pub total_pages: u64,
    /// Column names and the tables they come from.
    pub columns: Vec<Column>,
    /// Rows of this page; see [`crate::value`] for how SQL values are written.
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Column name as the statement produced it.
    pub name: String,
    /// Table the column comes from (`null` for expressions).
    pub origin: Option<String>,
}

/// Why bytes could not be decoded into frames.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// A line that is not a known frame header.
    #[error("protocol error: unexpected line {0:?}")]
    UnexpectedLine(String),
    /// A page header whose numbers do not parse.
    #[error("protocol error: bad page header {0:?}")]
    BadPageHeader(String),
    /// A line or message larger than the configured bound.
    #[error("protocol error: frame larger than {0} bytes")]
    TooLarge(usize),
    /// Frame text that is not UTF-8.
    #[error("protocol error: frame is not valid UTF-8")]
    InvalidUtf8,
    /// A page whose JSON does not have DirkDB's shape.
    #[error("protocol error: bad page JSON: {0}")]
    Json(String),
}

/// Appends the wire form of `frame` to `out`.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Message(text) => encode_message(text, out),
        Frame::Page(page) => {
            let header = format!("{PAGE_HEADER} {}/{}\n", page.page, page.total_pages);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(page.json.as_bytes());
            out.extend_from_slice(b"\n");
        }
        Frame::RelationEnd => {
            out.extend_from_slice(RELATION_END.as_bytes());
            out.extend_from_slice(b"\n");
        }
    }
}

fn encode_message(text: &str, out: &mut BytesMut) {
    out.extend_from_slice(MESSAGE_HEADER.as_bytes());
    out.extend_from_slice(b"\n");
    for line in text.split('\n') {
        if is_escaped_end(line) {
            out.extend_from_slice(b"\\");
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(MESSAGE_END.as_bytes());
    out.extend_from_slice(b"\n");
}

/// True for `END`, `\END`, `\\END`, …: the lines that need one more backslash on the wire.
fn is_escaped_end(line: &str) -> bool {
    line.trim_start_matches('\\') == MESSAGE_END
}

/// Decodes the one whole frame `bytes` hold (as [`FrameScanner`] found it); `None` when they
/// hold less than a frame.
pub fn decode_whole(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
    FrameDecoder::new(usize::MAX).decode(&mut BytesMut::from(bytes))
}

/// Incremental decoder: feed it the read buffer after every read; it returns whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    state: DecodeState,
    /// Bytes of the current (unfinished) line already searched for `\n`.
    scanned: usize,
    max_frame_bytes: usize,
}

#[derive(Debug)]
enum DecodeState {
    Header,
    PageBody { page: u64, total_pages: u64 },
    MessageBody { lines: Vec<String>, bytes: usize },
}

impl FrameDecoder {
    /// A decoder refusing lines and messages over `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            state: DecodeState::Header,
            scanned: 0,
            max_frame_bytes,
        }
    }

    /// Takes the next whole frame out of `buf`, or `None` until more bytes arrive.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        while let Some(line) = self.take_line(buf)? {
            if let Some(frame) = self.accept_line(line)? {
                return Ok(Some(frame));
            }
        }
        Ok(None)
    }

    /// True when part of a frame has been read: EOF now means a truncated response.
    pub fn is_mid_frame(&self, buf: &BytesMut) -> bool {
        !buf.is_empty() || !matches!(self.state, DecodeState::Header)
    }

    fn take_line(&mut self, buf: &mut BytesMut) -> Result<Option<String>, FrameError> {
        let Some(pos) = memchr::memchr(b'\n', &buf[self.scanned..]) else {
            self.scanned = buf.len();
            if self.scanned > self.max_frame_bytes {
                return Err(FrameError::TooLarge(self.max_frame_bytes));
            }
            return Ok(None);
        };
        let end = self.scanned + pos;
        self.scanned = 0;
        let line = buf.split_to(end);
        buf.advance(1);
        String::from_utf8(line.to_vec())
            .map(Some)
            .map_err(|_| FrameError::InvalidUtf8)
    }

    fn accept_line(&mut self, line: String) -> Result<Option<Frame>, FrameError> {
        match std::mem::replace(&mut self.state, DecodeState::Header) {
            DecodeState::Header => self.accept_header(line),
            DecodeState::PageBody { page, total_pages } => Ok(Some(Frame::Page(PageFrame {
                page,
                total_pages,
                json: line,
            }))),
            DecodeState::MessageBody { lines, bytes } => {
                self.accept_message_line(lines, bytes, line)
            }
        }
    }

    fn accept_header(&mut self, line: String) -> Result<Option<Frame>, FrameError> {
        if line == MESSAGE_HEADER {
            self.state = DecodeState::MessageBody {
                lines: Vec::new(),
                bytes: 0,
            };
            return Ok(None);
        }
        if line == RELATION_END {
            return Ok(Some(Frame::RelationEnd));
        }
        if let Some(numbers) = line.strip_prefix(PAGE_HEADER) {
            let (page, total_pages) = parse_page_numbers(numbers)
                .ok_or_else(|| FrameError::BadPageHeader(line.clone()))?;
            self.state = DecodeState::PageBody { page, total_pages };
            return Ok(None);
        }
        Err(FrameError::UnexpectedLine(line))
    }

    fn accept_message_line(
        &mut self,
        mut lines: Vec<String>,
        bytes: usize,
        line: String,
    ) -> Result<Option<Frame>, FrameError> {
        if line == MESSAGE_END {
            return Ok(Some(Frame::Message(lines.join("\n"))));
        }
        let bytes = bytes + line.len() + 1;
        if bytes > self.max_frame_bytes {
            return Err(FrameError::TooLarge(self.max_frame_bytes));
        }
        let line = match line.strip_prefix('\\') {
            Some(rest) if is_escaped_end(rest) => rest.to_string(),
            _ => line,
        };
        lines.push(line);
        self.state = DecodeState::MessageBody { lines, bytes };
        Ok(None)
    }
}

fn parse_page_numbers(text: &str) -> Option<(u64, u64)> {
    let (page, total) = text.trim().split_once('/')?;
    Some((page.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let mut out = BytesMut::new();
        for f in frames {
            encode_frame(f, &mut out);
        }
        out
    }

    fn decode_all(mut buf: BytesMut, chunk: usize) -> Vec<Frame> {
        let mut decoder = FrameDecoder::new(1 << 30);
        let mut pending = BytesMut::new();
        let mut frames = Vec::new();
        while !buf.is_empty() {
            let n = chunk.min(buf.len()).max(1);
            pending.extend_from_slice(&buf.split_to(n));
            while let Some(f) = decoder.decode(&mut pending).unwrap() {
                frames.push(f);
            }
        }
        assert!(!decoder.is_mid_frame(&pending));
        frames
    }

    fn page(rows: Vec<Vec<serde_json::Value>>) -> Frame {
        let p = RelationPage {
            name: Some("utilisateurs".into()),
            page: 1,
            total_pages: 1,
            columns: vec![Column {
                name: "id".into(),
                origin: Some("utilisateurs".into()),
            }],
            rows,
        };
        Frame::Page(PageFrame::from_page(&p).unwrap())
    }

    #[test]
    fn wire_form_is_dirkdb_s() {
        let out = encode_all(&[
            page(vec![vec![serde_json::json!(1), serde_json::json!("Alice")]]),
            Frame::RelationEnd,
            Frame::Message("OK".into()),
        ]);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            text,
            "RELATION_JSON_PAGE 1/1\n\
             {\"type\":\"relation\",\"name\":\"utilisateurs\",\"page\":1,\"totalPages\":1,\"columns\":[{\"name\":\"id\",\"origin\":\"utilisateurs\"}],\"rows\":[[1,\"Alice\"]]}\n\
             RELATION_JSON_END\nRESULT_MESSAGE\nOK\nEND\n"
        );
    }

    #[test]
    fn end_lines_are_escaped() {
        let text = "a\nEND\n\\END\nEND x";
        let out = encode_all(&[Frame::Message(text.into())]);
        let wire = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(wire, "RESULT_MESSAGE\na\n\\END\n\\\\END\nEND x\nEND\n");
        assert_eq!(decode_all(out, 3), vec![Frame::Message(text.into())]);
    }

    #[test]
    fn errors_are_messages_with_the_marker() {
        let f = Frame::error("no such table: t");
        assert_eq!(f, Frame::Message("Hadisoana : no such table: t".into()));
        assert_eq!(f.error_text(), Some("no such table: t"));
        assert_eq!(Frame::Message("OK".into()).error_text(), None);
    }

    #[test]
    fn garbage_and_oversize_are_refused() {
        let mut d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&b"HELLO\n"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::UnexpectedLine(_))
        ));
        let mut d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&b"RELATION_JSON_PAGE x/1\n"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::BadPageHeader(_))
        ));
        let mut d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&[b'x'; 40][..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::TooLarge(16)));
        let mut d = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&b"RESULT_MESSAGE\n0123456789\n0123456789\n"[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::TooLarge(16)));
    }

    #[test]
    fn truncated_response_is_visible() {
        let mut d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&b"RESULT_MESSAGE\nhalf"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(d.is_mid_frame(&buf));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let page = (
            proptest::option::of(any::<String>()),
            1u64..1000,
            1u64..1000,
            proptest::collection::vec(
                (any::<String>(), proptest::option::of(any::<String>())),
                0..4,
            ),
            proptest::collection::vec(proptest::collection::vec(json_value(), 0..4), 0..4),
        )
            .prop_map(|(name, page, total_pages, cols, rows)| {
                let columns = cols
                    .into_iter()
                    .map(|(name, origin)| Column { name, origin })
                    .collect();
                let p = RelationPage {
                    name,
                    page,
                    total_pages,
                    columns,
                    rows,
                };
                Frame::Page(PageFrame::from_page(&p).unwrap())
            });
        let tricky_text = proptest::collection::vec(
            prop_oneof![
                Just("END".to_string()),
                Just("\\END".to_string()),
                Just("\n".to_string()),
                Just("\r\n".to_string()),
                Just("RESULT_MESSAGE".to_string()),
                Just("RELATION_JSON_END".to_string()),
                any::<String>(),
            ],
            0..6,
        )
        .prop_map(|parts| parts.join("\n"));
        prop_oneof![
            tricky_text.prop_map(Frame::Message),
            any::<String>().prop_map(Frame::Message),
            Just(Frame::RelationEnd),
            page,
        ]
    }

    proptest! {
        #[test]
        fn any_frames_round_trip_whatever_the_chunking(
            frames in proptest::collection::vec(frame(), 1..6),
            chunk in 1usize..64,
        ) {
            let wire = encode_all(&frames);
            prop_assert_eq!(decode_all(wire, chunk), frames.clone());
            // Pages keep their parsed content too.
            for f in &frames {
                if let Frame::Page(p) = f {
                    let parsed = p.parse().unwrap();
                    prop_assert_eq!(parsed.page, p.page);
                }
            }
        }

        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FrameDecoder::new(256);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
        }
    }
}
