//! A write's position as DirkDB's extensions spell it: a sequence and the history it was written
//! in (every promotion starts a new history, with a new term). A sequence alone does not name a
//! write: after a failover the new primary reuses the sequences of writes it never received.
//!
//! * `DIRK POSITION HISTORY` answers `position <seq> history <id>` ([`parse`]).
//! * `DIRK WAIT <seq> <timeout_ms> <id>` is refused with an error containing [`NOT_IN_HISTORY`]
//!   when the position is not in the node's history, and goes on with
//!   `this node is at position <seq> history <id>` ([`parse_refusal`]).

/// What a `DIRK WAIT` refusal says when the position is not in the node's history.
pub const NOT_IN_HISTORY: &str = "not in this node's history";

/// Where a [`NOT_IN_HISTORY`] refusal says the node stands.
pub const NODE_AT: &str = "this node is at ";

/// A sequence in a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// Sequence (0: before any write).
    pub seq: u64,
    /// The history `seq` belongs to; `None` when not known (a sequence from a change notice).
    pub history: Option<String>,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.history {
            Some(h) => write!(f, "position {} history {h}", self.seq),
            None => write!(f, "position {}", self.seq),
        }
    }
}

impl Position {
    /// `DIRK WAIT <seq> <timeout_ms> [<history>]`: waits for this position.
    pub fn wait_statement(&self, timeout_ms: u64) -> String {
        match &self.history {
            Some(h) => format!("DIRK WAIT {} {timeout_ms} {h}", self.seq),
            None => format!("DIRK WAIT {} {timeout_ms}", self.seq),
        }
    }
}

/// Reads `position <seq> history <id>` (or `position <seq>`) at the start of `text`.
pub fn parse(text: &str) -> Option<Position> {
    let mut words = text.strip_prefix("position ")?.split_whitespace();
    let seq = words.next()?.parse().ok()?;
    let history = match (words.next(), words.next()) {
        (Some("history"), Some(id)) => Some(id.trim_end_matches(['.', ',', ';']).to_string()),
        _ => None,
    };
    Some(Position { seq, history })
}

/// From a `DIRK WAIT` error: where the node stands, when the error says the position is not in
/// its history; `None` for any other error.
pub fn parse_refusal(error: &str) -> Option<Position> {
    if !error.contains(NOT_IN_HISTORY) {
        return None;
    }
    let at = error.find(NODE_AT)? + NODE_AT.len();
    parse(&error[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_as_written() {
        let p = Position {
            seq: 42,
            history: Some("m1-18f-2a".into()),
        };
        assert_eq!(parse(&p.to_string()), Some(p));
        assert_eq!(
            parse("position 7"),
            Some(Position {
                seq: 7,
                history: None
            })
        );
        assert_eq!(parse("replicas 2"), None);
        assert_eq!(parse("position x history h"), None);
        let refusal = format!(
            "Hadisoana : position 9 of history a is {NOT_IN_HISTORY} (a failover rolled it back); {NODE_AT}position 12 history b"
        );
        assert_eq!(
            parse_refusal(&refusal),
            Some(Position {
                seq: 12,
                history: Some("b".into())
            })
        );
        assert_eq!(parse_refusal("position 9 not reached within 5 ms"), None);
    }
}
