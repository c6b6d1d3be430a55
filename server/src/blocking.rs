//! SQLite work off the async runtime: every statement, snapshot or file copy that may block runs
//! on tokio's blocking pool through [`blocking`], so a slow disk never stalls other sessions.

use crate::error::ServerError;

/// Runs `f` on the blocking pool; a panic or cancellation comes back as
/// [`ServerError::Worker`].
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f).await?
}
