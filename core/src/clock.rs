//! The wall clock as DirkDB stamps it: milliseconds since the Unix epoch (oplog entries,
//! heartbeats, lease renewals, lag in ms).

/// Milliseconds since the Unix epoch on this machine's wall clock (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
