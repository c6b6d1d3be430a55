//! The accept loop the proxy and the cache share: every accepted client gets a task, at most
//! `max_connections` at once (one more gets a single error frame and is closed, never left
//! hanging), and on shutdown the loop stops accepting, tells every task through a watch channel,
//! and returns once all of them have finished.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::connection::{ConnectionError, Incoming, ServerConnection};
use crate::frame::Frame;

/// Accepts clients until `shutdown` resolves; `handle` serves one client and should return soon
/// after its stop receiver turns true. `refusal` is the error text sent to a client over the limit.
pub async fn serve_clients<H, F>(
    listener: TcpListener,
    max_connections: usize,
    refusal: String,
    shutdown: impl Future,
    handle: H,
) where
    H: Fn(TcpStream, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let max_connections = max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = socket.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(socket, refusal.clone()));
            continue;
        };
        let client = handle(socket, stop_rx.clone());
        tokio::spawn(async move {
            client.await;
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    let _ = permits.acquire_many(max_connections as u32).await;
}

/// The client's next statement; `None` when it closed the connection or the process is
/// stopping (`stop` changed), so a client loop ends either way.
pub async fn next_statement<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ServerConnection<S>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Incoming>, ConnectionError> {
    tokio::select! {
        incoming = conn.read_statement() => incoming,
        _ = stop.changed() => Ok(None),
    }
}

async fn refuse(socket: TcpStream, reason: String) {
    let mut conn = ServerConnection::new(socket, 1024);
    let _ = conn.send(&Frame::error(reason)).await;
}
