//! Finding whole frames in received bytes without decoding them: for a proxy that passes a
//! server's answer on as the bytes it came in.
//!
//! [`FrameScanner`] keeps the framing rules of [`super::FrameDecoder`] (the same header lines,
//! a message ends at a line that reads exactly `END`, the same size bound) but builds no
//! strings: it reports each frame's kind and length, and whether a message is an error (its
//! first line starts with [`super::ERROR_PREFIX`]; an escaped `END` line never does). The bytes
//! themselves stay where they are, to be written on as one slice.

use super::{FrameError, MESSAGE_END, MESSAGE_HEADER, PAGE_HEADER, RELATION_END};

/// The kind of a whole frame found by [`FrameScanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    /// A message: the last frame of every response; `error` when it carries DirkDB's marker.
    Message {
        /// The message's text starts with `Hadisoana : `.
        error: bool,
    },
    /// A page header and its JSON line.
    Page,
    /// `RELATION_JSON_END`.
    RelationEnd,
}

/// Incremental frame finder over a buffer whose first byte starts a frame.
#[derive(Debug)]
pub struct FrameScanner {
    state: ScanState,
    /// End of the current frame's lines already taken (the start of its next line).
    taken: usize,
    /// Bytes of the current (unfinished) line already searched for `\n`.
    searched: usize,
    /// The current message's first line carries the error marker.
    error: bool,
    max_frame_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    Header,
    PageBody,
    MessageBody { first_line: bool },
}

impl FrameScanner {
    /// A scanner refusing lines and messages over `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            state: ScanState::Header,
            taken: 0,
            searched: 0,
            error: false,
            max_frame_bytes,
        }
    }

    /// The kind and length of the whole frame at the start of `buf`, or `None` until more
    /// bytes arrive. `buf` must hold the same bytes across calls for one frame (more appended
    /// only); once a frame is returned, the caller removes its bytes before the next call.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<(RawKind, usize)>, FrameError> {
        loop {
            let from = self.taken + self.searched;
            let Some(pos) = buf.get(from..).and_then(|rest| memchr::memchr(b'\n', rest)) else {
                self.searched = buf.len().saturating_sub(self.taken);
                if self.searched > self.max_frame_bytes {
                    return Err(FrameError::TooLarge(self.max_frame_bytes));
                }
                return Ok(None);
            };
            let (start, end) = (self.taken, from + pos);
            self.taken = end + 1;
            self.searched = 0;
            if let Some(kind) = self.accept_line(&buf[start..end])? {
                let len = std::mem::take(&mut self.taken);
                self.state = ScanState::Header;
                self.error = false;
                return Ok(Some((kind, len)));
            }
        }
    }

    /// True when part of a frame has been scanned: EOF now means a truncated response.
    pub fn is_mid_frame(&self, buf: &[u8]) -> bool {
        !buf.is_empty() || self.state != ScanState::Header
    }

    fn accept_line(&mut self, line: &[u8]) -> Result<Option<RawKind>, FrameError> {
        match self.state {
            ScanState::Header => self.accept_header(line),
            ScanState::PageBody => Ok(Some(RawKind::Page)),
            ScanState::MessageBody { first_line } => {
                if line == MESSAGE_END.as_bytes() {
                    return Ok(Some(RawKind::Message { error: self.error }));
                }
                // The whole message's lines (its header aside) count against the bound, as
                // the decoder counts them.
                if self.taken - MESSAGE_HEADER.len() - 1 > self.max_frame_bytes {
                    return Err(FrameError::TooLarge(self.max_frame_bytes));
                }
                if first_line {
                    self.error = line.starts_with(super::ERROR_PREFIX.as_bytes());
                }
                self.state = ScanState::MessageBody { first_line: false };
                Ok(None)
            }
        }
    }

    fn accept_header(&mut self, line: &[u8]) -> Result<Option<RawKind>, FrameError> {
        if line == MESSAGE_HEADER.as_bytes() {
            self.state = ScanState::MessageBody { first_line: true };
            return Ok(None);
        }
        if line == RELATION_END.as_bytes() {
            return Ok(Some(RawKind::RelationEnd));
        }
        let text = || String::from_utf8_lossy(line).into_owned();
        if let Some(numbers) = line.strip_prefix(PAGE_HEADER.as_bytes()) {
            let numbers = std::str::from_utf8(numbers).map_err(|_| FrameError::InvalidUtf8)?;
            super::parse_page_numbers(numbers).ok_or_else(|| FrameError::BadPageHeader(text()))?;
            self.state = ScanState::PageBody;
            return Ok(None);
        }
        Err(FrameError::UnexpectedLine(text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_frame, Frame, FrameDecoder};
    use bytes::BytesMut;
    use proptest::prelude::*;

    /// Scans `wire` fed `chunk` bytes at a time; returns each frame's kind and bytes.
    fn scan_all(wire: &[u8], chunk: usize) -> Vec<(RawKind, Vec<u8>)> {
        let mut scanner = FrameScanner::new(1 << 20);
        let (mut buf, mut fed, mut found) = (Vec::new(), 0, Vec::new());
        while fed < wire.len() || !buf.is_empty() {
            let n = chunk.min(wire.len() - fed);
            buf.extend_from_slice(&wire[fed..fed + n]);
            fed += n;
            while let Some((kind, len)) = scanner.scan(&buf).unwrap() {
                found.push((kind, buf.drain(..len).collect()));
            }
            if n == 0 {
                break;
            }
        }
        assert!(!scanner.is_mid_frame(&buf), "left {buf:?}");
        found
    }

    fn wire(frames: &[Frame]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for f in frames {
            encode_frame(f, &mut out);
        }
        out.to_vec()
    }

    #[test]
    fn kinds_and_errors_are_told_apart() {
        let frames = [
            Frame::Message("OK".into()),
            Frame::error("no such table: t"),
            Frame::Message("END\nHadisoana : not at the start".into()),
            Frame::Message("\\END\nx".into()),
            Frame::RelationEnd,
        ];
        let kinds: Vec<RawKind> = scan_all(&wire(&frames), 5)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            kinds,
            [
                RawKind::Message { error: false },
                RawKind::Message { error: true },
                RawKind::Message { error: false },
                RawKind::Message { error: false },
                RawKind::RelationEnd,
            ]
        );
    }

    #[test]
    fn garbage_and_oversize_are_refused() {
        let refused = |bytes: &[u8]| FrameScanner::new(16).scan(bytes).unwrap_err();
        assert!(matches!(refused(b"HELLO\n"), FrameError::UnexpectedLine(_)));
        assert!(matches!(
            refused(b"RELATION_JSON_PAGE x/1\n"),
            FrameError::BadPageHeader(_)
        ));
        assert_eq!(refused(&[b'x'; 40]), FrameError::TooLarge(16));
        assert_eq!(
            refused(b"RESULT_MESSAGE\n0123456789\n0123456789\n"),
            FrameError::TooLarge(16)
        );
        let mut scanner = FrameScanner::new(1024);
        assert_eq!(scanner.scan(b"RESULT_MESSAGE\nhalf"), Ok(None));
        assert!(scanner.is_mid_frame(b"RESULT_MESSAGE\nhalf"));
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let text = proptest::collection::vec(
            prop_oneof![
                Just("END".to_string()),
                Just("\\END".to_string()),
                Just("Hadisoana : x".to_string()),
                Just("RELATION_JSON_END".to_string()),
                any::<String>(),
            ],
            0..5,
        )
        .prop_map(|parts| parts.join("\n"));
        prop_oneof![
            text.prop_map(Frame::Message),
            Just(Frame::RelationEnd),
            Just(Frame::error("boom")),
            Just(page()),
        ]
    }

    fn page() -> Frame {
        let page = crate::frame::RelationPage {
            name: Some("t".into()),
            page: 1,
            total_pages: 2,
            columns: vec![],
            rows: vec![vec![serde_json::json!("END\nRESULT_MESSAGE")]],
        };
        Frame::Page(crate::frame::PageFrame::from_page(&page).unwrap())
    }

    proptest! {
        /// Every frame's bytes are exactly its encoding, and its kind what the decoder decodes.
        #[test]
        fn scanned_frames_are_the_encoded_ones(
            frames in proptest::collection::vec(frame(), 1..6),
            chunk in 1usize..40,
        ) {
            let found = scan_all(&wire(&frames), chunk);
            prop_assert_eq!(found.len(), frames.len());
            for ((kind, bytes), frame) in found.iter().zip(&frames) {
                prop_assert_eq!(bytes, &wire(std::slice::from_ref(frame)));
                let mut decoded = FrameDecoder::new(1 << 20);
                let back = decoded.decode(&mut BytesMut::from(&bytes[..])).unwrap();
                prop_assert_eq!(back.as_ref(), Some(frame));
                let expected = match frame {
                    Frame::Message(_) => RawKind::Message { error: frame.error_text().is_some() },
                    Frame::Page(_) => RawKind::Page,
                    Frame::RelationEnd => RawKind::RelationEnd,
                };
                prop_assert_eq!(*kind, expected);
            }
        }

        #[test]
        fn scanner_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut scanner = FrameScanner::new(256);
            let mut buf = bytes;
            while let Ok(Some((_, len))) = scanner.scan(&buf) {
                buf.drain(..len);
            }
        }
    }
}
