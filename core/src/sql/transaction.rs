//! What a proxy or cache in front of a server knows of a session's transaction, followed from
//! the transaction statements that succeeded (`BEGIN`, `SAVEPOINT`, `RELEASE`, `COMMIT`, …).

use super::classify::TransactionControl;

/// How a server's error ends when a statement that was to commit (`COMMIT`, `END`, the
/// outermost `RELEASE`, or a write's own savepoint) failed and the transaction was rolled back.
/// A proxy in front follows the session's transaction state from it.
pub const FAILED_COMMIT_ROLLED_BACK: &str =
    "the transaction was rolled back: nothing of it was committed";

/// How a server's error ends when such a statement failed and the transaction is still open
/// (a commit that found the database busy can be retried).
pub const FAILED_COMMIT_STILL_OPEN: &str =
    "the transaction is still open: retry COMMIT (or RELEASE), or ROLLBACK";

/// Whether a transaction is open, and how it was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransactionState {
    /// True between the statement that opened it and the one that ended it.
    pub open: bool,
    by_savepoint: bool,
    savepoints: Vec<String>,
}

/// How a successful transaction statement changed the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionEnd {
    /// The transaction is still open, or none was open.
    None,
    /// It committed (`COMMIT`, `END`, or `RELEASE` of the savepoint that opened it).
    Committed,
    /// It was rolled back.
    RolledBack,
}

impl TransactionState {
    /// Follows one transaction statement that succeeded.
    pub fn follow(&mut self, control: &TransactionControl) -> TransactionEnd {
        let was_open = self.open;
        match control {
            TransactionControl::Begin => {
                *self = TransactionState {
                    open: true,
                    ..TransactionState::default()
                };
            }
            TransactionControl::Savepoint(name) => {
                if !self.open {
                    *self = TransactionState {
                        open: true,
                        by_savepoint: true,
                        savepoints: Vec::new(),
                    };
                }
                self.savepoints.push(name.to_ascii_lowercase());
            }
            TransactionControl::Release(name) => {
                let name = name.to_ascii_lowercase();
                if let Some(i) = self.savepoints.iter().rposition(|s| *s == name) {
                    self.savepoints.truncate(i);
                }
                if self.by_savepoint && self.savepoints.is_empty() {
                    *self = TransactionState::default();
                }
            }
            TransactionControl::RollbackTo(_) => {}
            TransactionControl::Commit => *self = TransactionState::default(),
            TransactionControl::Rollback => {
                *self = TransactionState::default();
                return if was_open {
                    TransactionEnd::RolledBack
                } else {
                    TransactionEnd::None
                };
            }
        }
        if was_open && !self.open {
            TransactionEnd::Committed
        } else {
            TransactionEnd::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransactionControl as T;

    #[test]
    fn follows_begin_savepoints_and_their_ends() {
        let mut t = TransactionState::default();
        assert_eq!(t.follow(&T::Begin), TransactionEnd::None);
        assert!(t.open);
        assert_eq!(t.follow(&T::Savepoint("a".into())), TransactionEnd::None);
        assert_eq!(t.follow(&T::Release("A".into())), TransactionEnd::None);
        assert!(t.open, "a savepoint inside BEGIN does not end it");
        assert_eq!(t.follow(&T::Commit), TransactionEnd::Committed);
        assert!(!t.open);
        t.follow(&T::Savepoint("outer".into()));
        t.follow(&T::Savepoint("inner".into()));
        t.follow(&T::RollbackTo("inner".into()));
        assert!(t.open);
        assert_eq!(
            t.follow(&T::Release("outer".into())),
            TransactionEnd::Committed
        );
        t.follow(&T::Begin);
        assert_eq!(t.follow(&T::Rollback), TransactionEnd::RolledBack);
        assert_eq!(t.follow(&T::Rollback), TransactionEnd::None);
    }
}
