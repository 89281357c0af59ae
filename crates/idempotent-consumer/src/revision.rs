//! Optimistic locking by revision: the seed's `revisionId` check, as a helper.
//!
//! An event carries the aggregate's revision *after* the change it describes. A consumer that
//! keeps its own copy (or a per-aggregate "last applied revision") compares:
//!
//! ```
//! use eda_idempotent_consumer::{RevisionCheck, check_revision};
//! assert_eq!(check_revision(4, 5), RevisionCheck::Apply);           // the next one
//! assert_eq!(check_revision(5, 5), RevisionCheck::AlreadyApplied);  // a duplicate
//! assert_eq!(check_revision(5, 3), RevisionCheck::AlreadyApplied);  // stale
//! assert_eq!(check_revision(2, 5), RevisionCheck::Gap { expected: 3, got: 5 });
//! ```
//!
//! and writes with `UPDATE ... SET revision = $new WHERE id = $id AND revision = $expected`;
//! [`expect_one_row`] turns "0 rows" (someone else changed it first) into a retryable conflict.

use crate::HandlerError;

/// What to do with an event given the last applied revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionCheck {
    /// `incoming` is exactly the next revision: apply it.
    Apply,
    /// `incoming` is not newer than what is applied: skip it (duplicate or stale).
    AlreadyApplied,
    /// An earlier revision has not arrived yet: retry later rather than skip a change.
    Gap {
        /// The revision that should come next.
        expected: i64,
        /// The revision that came.
        got: i64,
    },
}

/// Compares the last applied revision with an incoming one.
pub fn check_revision(applied: i64, incoming: i64) -> RevisionCheck {
    if incoming <= applied {
        RevisionCheck::AlreadyApplied
    } else if incoming == applied + 1 {
        RevisionCheck::Apply
    } else {
        RevisionCheck::Gap {
            expected: applied + 1,
            got: incoming,
        }
    }
}

/// For a conditional `UPDATE ... WHERE revision = $expected`: one row means applied; zero rows
/// means a concurrent writer won, which is transient (the runtime retries the event).
pub fn expect_one_row(rows_affected: u64, what: &str) -> Result<(), HandlerError> {
    if rows_affected == 1 {
        Ok(())
    } else {
        Err(HandlerError::Transient(
            format!("optimistic lock conflict on {what} ({rows_affected} rows matched)").into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_revision_applies_older_ones_are_skipped_gaps_wait() {
        assert_eq!(check_revision(0, 1), RevisionCheck::Apply);
        assert_eq!(check_revision(1, 1), RevisionCheck::AlreadyApplied);
        assert_eq!(check_revision(7, 2), RevisionCheck::AlreadyApplied);
        assert_eq!(
            check_revision(1, 3),
            RevisionCheck::Gap {
                expected: 2,
                got: 3
            }
        );
    }

    #[test]
    fn zero_rows_is_a_retryable_conflict() {
        assert!(expect_one_row(1, "stock SKU-1").is_ok());
        assert!(matches!(
            expect_one_row(0, "stock SKU-1"),
            Err(HandlerError::Transient(_))
        ));
    }
}
