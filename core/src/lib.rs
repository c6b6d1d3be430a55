//! DirkDB's shared vocabulary: everything two components must agree on lives here.
//!
//! * [`config`]: the `config.json` model every process loads.
//! * [`accept_loop`]: the bounded accept loop with graceful shutdown of the proxy and the cache.
//! * [`change_feed`]: what a primary tells a cache about committed changes (`DIRK CHANGES`).
//! * [`security`]: users, grants, password hashes and the `AUTH` statement.
//! * [`in_flight`]: the bound on bytes held by large statements running at once.
//! * [`tls`]: TLS of every port (beside plaintext, told apart by the first byte) and of the
//!   connections between the parts.
//! * [`rendezvous`]: DirkDB's rendezvous hashing (read stickiness, MULTI_PRIMARY object owners).
//! * [`metrics`]: the one Prometheus writer of every `/metrics`.
//! * [`sync`] and [`clock`]: locks that survive a panicking holder, and the wall clock in ms.
//! * [`position`]: a write's position (sequence and history) as the extensions spell it.
//! * [`frame`] and [`value`]: response frames of the wire protocol and how SQL values are written.
//! * [`sql`]: statement framing (where a `;` ends a statement) and the Malagasy keyword dialect.
//! * [`connection`]: sockets wrapped so that the server reads statements and writes frames, and the
//!   client does the reverse, both through the codecs above.
//!
//! A request flows: client text → [`sql::split_script`] → `ClientConnection::send_statement` →
//! bytes → `ServerConnection::read_statement` (a [`sql::StatementSplitter`]) → [`sql::translate`] →
//! the server's engine → [`frame::Frame`]s → `ServerConnection::write_frame` → bytes →
//! [`frame::FrameDecoder`] → the client.

pub mod accept_loop;
pub mod change_feed;
pub mod clock;
pub mod config;
pub mod conn_limit;
pub mod connection;
pub mod frame;
pub mod in_flight;
pub mod metrics;
pub mod position;
pub mod rendezvous;
pub mod security;
pub mod sql;
pub mod sync;
pub mod tls;
pub mod value;
