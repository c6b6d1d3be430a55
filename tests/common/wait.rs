//! The end-to-end tests' polling helpers, once: ask again every 20 ms until an answer comes
//! or the time is up. Blocking ones for tests that drive processes from the test thread, async
//! ones for tests whose parts run in the same runtime ([`super::inproc`]).

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a poll sleeps between two tries.
const EVERY: Duration = Duration::from_millis(20);

/// Calls `probe` until it answers, for up to `timeout` (one last try then); `None` if it never
/// did.
pub(crate) fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return probe();
        }
        std::thread::sleep(EVERY);
    }
}

/// [`poll`], panicking with `what` when nothing came within `timeout`.
pub(crate) fn until<T>(timeout: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll(timeout, probe).unwrap_or_else(|| panic!("no {what} within {timeout:?}"))
}

/// Whether `check` held within `limit` (blocking).
pub(crate) fn holds_within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    poll(limit, || check().then_some(())).is_some()
}

/// Awaits `probe` until it answers, for up to `timeout` (one last try then).
pub(crate) async fn poll_async<T, F>(timeout: Duration, mut probe: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return probe().await;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Whether the async `check` held within `limit`.
pub(crate) async fn until_async<F>(limit: Duration, mut check: impl FnMut() -> F) -> bool
where
    F: Future<Output = bool>,
{
    poll_async(limit, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Waits (without blocking the runtime) until the blocking `check` holds, for up to `limit`;
/// panics with `what` otherwise.
pub(crate) async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let held = until_async(limit, || std::future::ready(check())).await;
    assert!(held, "{what} (waited {limit:?})");
}
