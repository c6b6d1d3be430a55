//! Fault-injection hooks for the end-to-end tests, read from environment variables.
//!
//! They exist only with the `failure-injection` cargo feature, which only the workspace's tests
//! enable (the root package's dev-dependency on this crate): a release binary built with a plain
//! `cargo build` contains none of them, so nobody can tell a production server to corrupt its
//! replication. Without the feature every hook is a no-op the compiler removes. `.ci/run`
//! searches the plain binary for the variable names.

#[cfg(feature = "failure-injection")]
mod hooks {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    /// Reads a variable once, parsed; unset or unparsable reads as `None`.
    fn parsed<T: std::str::FromStr>(name: &str) -> Option<T> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    /// `DIRKDB_CORRUPT_FILE_COPIES=N` flips a byte in the first N FILE-mode chunks sent, so tests
    /// can show a corrupted transfer refused by its checksum and sent again.
    pub(crate) fn corrupt_file_chunk(chunk: &mut [u8]) {
        static LEFT: OnceLock<AtomicU64> = OnceLock::new();
        let left =
            LEFT.get_or_init(|| AtomicU64::new(parsed("DIRKDB_CORRUPT_FILE_COPIES").unwrap_or(0)));
        let take = left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if take.is_ok() {
            if let Some(byte) = chunk.last_mut() {
                *byte ^= 0xff;
            }
        }
    }

    /// `DIRKDB_APPLY_DELAY_MS` delays every batch a replica applies, so tests can show what a
    /// lagging replica does to reads (read-your-writes, lag limits).
    pub(crate) fn apply_delay() -> Option<Duration> {
        static DELAY: OnceLock<Option<Duration>> = OnceLock::new();
        *DELAY.get_or_init(|| parsed("DIRKDB_APPLY_DELAY_MS").map(Duration::from_millis))
    }

    /// `DIRKDB_BOOT_ID` stands in for the kernel's boot id, so tests can simulate a reboot.
    pub(crate) fn boot_id() -> Option<String> {
        std::env::var("DIRKDB_BOOT_ID").ok()
    }
}

#[cfg(not(feature = "failure-injection"))]
mod hooks {
    use std::time::Duration;

    /// No fault injection in this build.
    #[inline(always)]
    pub(crate) fn corrupt_file_chunk(_chunk: &mut [u8]) {}

    /// No injected delay in this build.
    #[inline(always)]
    pub(crate) fn apply_delay() -> Option<Duration> {
        None
    }

    /// The kernel's boot id is never overridden in this build.
    #[inline(always)]
    pub(crate) fn boot_id() -> Option<String> {
        None
    }
}

pub(crate) use hooks::{apply_delay, boot_id, corrupt_file_chunk};
