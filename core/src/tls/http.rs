//! The admin ports (axum) of the server, the proxy and the cache: HTTPS when `security.tls` is
//! set, and plain HTTP on the same port unless `security.tls.required` (see [`super`]).
//!
//! Handshakes run on tasks of their own (at most [`HANDSHAKES`] at once), so one slow client
//! never holds up the others; axum is handed only connections ready to speak HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::{Stream, TlsServer};

/// Handshakes in progress at most; more connections wait in the kernel's backlog.
pub const HANDSHAKES: usize = 256;

/// What a plaintext request gets on a port with `security.tls.required`.
const PLAINTEXT_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
Connection: close\r\nContent-Length: 73\r\n\r\n\
{\"error\":\"this port requires TLS (security.tls.required): use https://\"}\n";

/// Serves `app` on `listener` (with the peer's address as `ConnectInfo<SocketAddr>`) until the
/// task is aborted: over HTTPS and HTTP with `tls`, HTTP only without.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsServer>>,
) -> std::io::Result<()> {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => axum::serve(listener, app).await,
        Some(tls) => {
            let listener = TlsListener::new(listener, tls)?.tap_io(|_| {});
            axum::serve(listener, app).await
        }
    }
}

/// Connections accepted and past their handshake (or found to be plaintext).
pub struct TlsListener {
    ready: mpsc::Receiver<(Stream, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`.
    pub fn new(listener: TcpListener, tls: Arc<TlsServer>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKES);
        let accepting = tokio::spawn(accept_all(listener, tls, tx));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_all(
    listener: TcpListener,
    tls: Arc<TlsServer>,
    ready: mpsc::Sender<(Stream, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin port: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tls, ready) = (tls.clone(), ready.clone());
        tokio::spawn(async move {
            match tls.accept(socket, PLAINTEXT_REFUSAL).await {
                Ok(stream) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Err(e) => tracing::info!(%peer, error = %e, "admin port: connection refused"),
            }
            drop(permit);
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task only ends with the listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::PLAINTEXT_REFUSAL;

    #[test]
    fn the_refusal_has_the_length_it_announces() {
        let text = std::str::from_utf8(PLAINTEXT_REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{body:?}"
        );
    }
}
