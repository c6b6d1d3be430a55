//! TLS for every port and every connection between the parts (rustls with the ring provider).
//!
//! * **Ports.** [`TlsServer::accept`] looks at a new connection's first byte without taking it:
//!   a TLS record of type handshake (`0x16`, how every ClientHello starts) gets a TLS handshake;
//!   anything else is plaintext, served exactly as before, unless `security.tls.required` (then
//!   it is told why and closed). DirkDB's Java client has no TLS, hence both on one port. The
//!   SQL ports do this in [`crate::accept_loop`], the admin ports in [`http`].
//! * **Peers.** [`connect`] opens a connection to another part: in TLS when the process's
//!   config has `security.tls` ([`use_cluster_tls`]), checking the peer's certificate against
//!   `caFile` and the host it was reached at, and presenting this node's own certificate, which
//!   a peer with `mutualTls` requires for replication streams and change feeds
//!   ([`Stream::has_node_certificate`]).
//! * [`Stream`]: one connection, plaintext or TLS; the framed connections and the replication
//!   streams are written against it.
//! * [`files`]: the PEM files, read with errors that name the field.

pub mod files;
#[cfg(feature = "http")]
pub mod http;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use self::files::TlsError;
use crate::security::config::{SecurityConfig, TlsConfig};

/// The first byte of every TLS handshake record (a ClientHello starts with it).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every file of `tls` and builds both ends from them, as [`TlsServer`] and
/// [`use_cluster_tls`] will: errors name the field at fault.
pub fn check_files(tls: &TlsConfig) -> Result<(), TlsError> {
    server_config(tls)?;
    TlsClient::for_node(tls)?;
    Ok(())
}

fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let needed = |field, what| {
        let msg = format!("needed to serve TLS ({what}, PEM)");
        move || TlsError::new(field, msg)
    };
    let cert_path = (tls.cert_file.as_deref()).ok_or_else(needed("certFile", "the certificate"))?;
    let key_path = (tls.key_file.as_deref()).ok_or_else(needed("keyFile", "its private key"))?;
    let certs = files::certificates("certFile", cert_path)?;
    let key = files::private_key(key_path)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("certFile", e.to_string()))?;
    let builder = match &tls.ca_file {
        Some(ca) => {
            let roots = Arc::new(files::roots(Some(ca))?);
            // Clients without a certificate are let in (the Java client, `dirkdb client`);
            // one that presents a certificate must present one signed by caFile.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::new("caFile", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| key_error(e, cert_path, key_path))
}

fn key_error(e: rustls::Error, cert: &Path, key: &Path) -> TlsError {
    let problem = match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} is not the private key of certFile {}",
            key.display(),
            cert.display()
        ),
        e => format!("{} cannot be used: {e}", key.display()),
    };
    TlsError::new("keyFile", problem)
}

/// One connection, plaintext or TLS (either end).
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_tls() { "Tls" } else { "Plain" };
        write!(f, "Stream::{kind}({:?})", self.peer_addr().ok())
    }
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// The peer's IP address (loopback when the socket cannot say).
    pub fn peer_ip(&self) -> IpAddr {
        self.peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// True over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// True when the peer presented a client certificate (and so one `caFile` verified: the
    /// handshake fails on any other).
    pub fn has_node_certificate(&self) -> bool {
        match self {
            Stream::Tls(s) => {
                matches!(**s, tokio_rustls::TlsStream::Server(_))
                    && s.get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty())
            }
            Stream::Plain(_) => false,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an accepted connection was not served.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Plaintext on a port with `security.tls.required` (the client was told).
    #[error("plaintext connection refused (security.tls.required)")]
    PlaintextRefused,
    /// The TLS handshake failed (a certificate the other side does not trust, …).
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The handshake did not finish within `security.tls.handshakeTimeoutMs`.
    #[error("TLS handshake timed out (security.tls.handshakeTimeoutMs)")]
    HandshakeTimeout,
    /// The socket failed before anything was read.
    #[error("connection error: {0}")]
    Io(io::Error),
}

struct Active {
    acceptor: TlsAcceptor,
    required: bool,
    mutual: bool,
    handshake_timeout: Duration,
}

/// The server side of one part's ports: accepts TLS and plaintext (see the module).
pub struct TlsServer {
    active: RwLock<Arc<Active>>,
    handshake_failures: AtomicU64,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let active = self.active();
        f.debug_struct("TlsServer")
            .field("required", &active.required)
            .field("mutual", &active.mutual)
            .finish()
    }
}

impl TlsServer {
    /// The ports' TLS for `security.tls`; `None` without the section.
    pub fn from_config(config: &SecurityConfig) -> Result<Option<Arc<TlsServer>>, TlsError> {
        let Some(tls) = &config.tls else {
            return Ok(None);
        };
        let active = RwLock::new(Arc::new(Self::build(tls)?));
        Ok(Some(Arc::new(TlsServer {
            active,
            handshake_failures: AtomicU64::new(0),
        })))
    }

    fn build(tls: &TlsConfig) -> Result<Active, TlsError> {
        Ok(Active {
            acceptor: TlsAcceptor::from(Arc::new(server_config(tls)?)),
            required: tls.required,
            mutual: tls.mutual_tls,
            handshake_timeout: Duration::from_millis(tls.handshake_timeout_ms.max(1)),
        })
    }

    /// Takes the certificates, key, CA and flags of an edited `security.tls` for every
    /// connection accepted from now on (open ones keep theirs). Without the section nothing
    /// changes: TLS is turned off only by a restart.
    pub fn reload(&self, config: &SecurityConfig) -> Result<(), TlsError> {
        let Some(tls) = &config.tls else {
            return Ok(());
        };
        let active = Arc::new(Self::build(tls)?);
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = active;
        Ok(())
    }

    fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Plaintext is refused (`security.tls.required`).
    pub fn required(&self) -> bool {
        self.active().required
    }

    /// Replication streams and change feeds need a node certificate (`security.tls.mutualTls`).
    pub fn mutual(&self) -> bool {
        self.active().mutual
    }

    /// How long a connection gets for its first byte and its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.active().handshake_timeout
    }

    /// TLS handshakes that failed or timed out since the start (SQL and admin ports).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// Serves `socket` in TLS when its first byte starts a handshake, in plaintext otherwise
    /// (also when it sends nothing within the handshake timeout: an interactive client may wait
    /// before its first statement). With `required`, plaintext gets `refusal` (bytes of the
    /// port's own protocol) and is closed.
    pub async fn accept(&self, socket: TcpStream, refusal: &[u8]) -> Result<Stream, AcceptError> {
        let active = self.active();
        let first = tokio::time::timeout(active.handshake_timeout, first_byte(&socket)).await;
        let is_tls = match first {
            Ok(Err(e)) => return Err(AcceptError::Io(e)),
            // Closed before sending anything: the session sees the end and stops.
            Ok(Ok(None)) => return Ok(Stream::Plain(socket)),
            Ok(Ok(Some(byte))) => byte == TLS_HANDSHAKE_RECORD,
            Err(_) => false,
        };
        if !is_tls {
            if !active.required {
                return Ok(Stream::Plain(socket));
            }
            refuse_plaintext(socket, refusal).await;
            return Err(AcceptError::PlaintextRefused);
        }
        let shaken =
            tokio::time::timeout(active.handshake_timeout, active.acceptor.accept(socket)).await;
        let failed = match shaken {
            Ok(Ok(tls)) => return Ok(Stream::Tls(Box::new(tls.into()))),
            Ok(Err(e)) => AcceptError::Handshake(e),
            Err(_) => AcceptError::HandshakeTimeout,
        };
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        Err(failed)
    }
}

/// Under `security.tls.mutualTls`, a replication stream or change feed needs a node
/// certificate: `Err` is the refusal's text for a connection without one.
pub fn check_node_certificate(tls: Option<&TlsServer>, stream: &Stream) -> Result<(), String> {
    match tls {
        Some(tls) if tls.mutual() && !stream.has_node_certificate() => Err(
            "mutual TLS is on (security.tls.mutualTls): replication streams and change feeds \
             need TLS with a node certificate signed by security.tls.caFile"
                .into(),
        ),
        _ => Ok(()),
    }
}

async fn first_byte(socket: &TcpStream) -> io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    let n = socket.peek(&mut byte).await?;
    Ok((n > 0).then_some(byte[0]))
}

/// Sends `refusal`, then reads (briefly, boundedly) what the client already sent, so closing
/// does not reset the connection before the client has read why.
async fn refuse_plaintext(mut socket: TcpStream, refusal: &[u8]) {
    if socket.write_all(refusal).await.is_err() {
        return;
    }
    let _ = socket.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = 256 * 1024usize;
        while left > 0 {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// The client side: the CA peers are checked against, the certificate presented to them, and
/// the name their certificates must carry (by default the host each is dialled at).
pub struct TlsClient {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// Checks servers against `ca_file` (the public roots without one); presents
    /// `identity` (certificate and key files) when given.
    pub fn new(ca_file: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let roots = files::roots(ca_file)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new("caFile", e.to_string()))?
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let certs = files::certificates("certFile", cert)?;
                builder
                    .with_client_auth_cert(certs, files::private_key(key)?)
                    .map_err(|e| key_error(e, cert, key))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: None,
        })
    }

    /// Checks every server's certificate against `name` instead of the host it is dialled at
    /// (`security.tls.serverName`, `dirkdb client --server-name`): for certificates that do not
    /// name the addresses peers use, such as one shared certificate for `db.internal`.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, TlsError> {
        self.server_name =
            Some(parse_server_name(name).map_err(|problem| TlsError::new("serverName", problem))?);
        Ok(self)
    }

    /// How a node reaches its peers: checked against `caFile`, presenting its own certificate.
    pub fn for_node(tls: &TlsConfig) -> Result<Self, TlsError> {
        let identity = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            _ => None,
        };
        let client = Self::new(tls.ca_file.as_deref(), identity)?;
        match &tls.server_name {
            Some(name) => client.with_server_name(name),
            None => Ok(client),
        }
    }

    /// Runs the TLS handshake on `tcp`, checking that the certificate names the host of `addr`
    /// (or the configured server name).
    pub async fn handshake(&self, addr: &str, tcp: TcpStream) -> io::Result<Stream> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => server_name(addr)?,
        };
        let tls = self.connector.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }
}

/// The host part of `host:port` (`[v6]:port` too) as a name to check a certificate against.
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => addr.rsplit_once(':').map_or(addr, |(host, _)| host),
    };
    parse_server_name(host).map_err(|msg| io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// A DNS name or IP address to check a certificate against, or why it is none.
fn parse_server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("`{host}` cannot be checked against a certificate: {e}"))
}

static CLUSTER_CLIENT: RwLock<Option<Arc<TlsClient>>> = RwLock::new(None);

/// Makes every connection this process opens to another part ([`connect_peer`]) use the TLS of
/// `config` (none without `security.tls`).
pub fn use_cluster_tls(config: &SecurityConfig) -> Result<(), TlsError> {
    let client = match &config.tls {
        Some(tls) => Some(TlsClient::for_node(tls)?),
        None => None,
    };
    use_client_tls(client);
    Ok(())
}

/// Makes every connection this process opens through [`connect_peer`] (and so every
/// `dirkdb_client::Client`) use `client` (plaintext with `None`): `dirkdb client --tls`.
pub fn use_client_tls(client: Option<TlsClient>) {
    *CLUSTER_CLIENT.write().unwrap_or_else(|p| p.into_inner()) = client.map(Arc::new);
}

/// Applies an edited `security` section's TLS: `server` (this part's ports) takes the new
/// files for the connections it accepts from then on, and so do the connections this process
/// opens; a file that cannot be used keeps the previous ones (and is logged).
pub fn reload(server: Option<&TlsServer>, config: &SecurityConfig) {
    let Some(server) = server else {
        return;
    };
    if let Err(e) = server.reload(config).and_then(|()| use_cluster_tls(config)) {
        tracing::error!(error = %e, "edited security.tls unusable; keeping the previous certificates");
    }
}

/// The TLS this process speaks to the other parts, if any.
pub fn cluster_client() -> Option<Arc<TlsClient>> {
    CLUSTER_CLIENT
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No TCP connection within the timeout.
    #[error("cannot connect to {addr}: timed out")]
    Timeout {
        /// Address tried.
        addr: String,
    },
    /// TCP failed.
    #[error("cannot connect to {addr}: {source}")]
    Tcp {
        /// Address tried.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The TLS handshake failed or did not finish in time.
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// Address tried.
        addr: String,
        /// rustls's reason (`invalid peer certificate: UnknownIssuer`, …).
        reason: String,
    },
}

/// Opens a connection to `addr` within `timeout` (TCP, then the TLS handshake with `tls`).
pub async fn connect(
    addr: &str,
    timeout: Duration,
    tls: Option<&TlsClient>,
) -> Result<Stream, ConnectError> {
    let started = tokio::time::Instant::now();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr: addr.into() })?
        .map_err(|source| ConnectError::Tcp {
            addr: addr.into(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let left = timeout.saturating_sub(started.elapsed());
    let tls_error = |reason: String| ConnectError::Tls {
        addr: addr.into(),
        reason,
    };
    match tokio::time::timeout(left, tls.handshake(addr, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(tls_error(e.to_string())),
        Err(_) => Err(tls_error(
            "the handshake timed out (is TLS on at that port?)".into(),
        )),
    }
}

/// Opens a connection to another part, in TLS when this process uses it ([`use_cluster_tls`]).
pub async fn connect_peer(addr: &str, timeout: Duration) -> Result<Stream, ConnectError> {
    connect(addr, timeout, cluster_client().as_deref()).await
}

#[cfg(test)]
mod tests;
