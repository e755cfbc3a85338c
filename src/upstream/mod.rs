//! Connections to one upstream instance: connect with a timeout, optional
//! TLS, an HTTP/1.1 or HTTP/2 handshake, and a pool: idle keep-alive
//! connections for HTTP/1.1, one shared multiplexed connection for HTTP/2.
//!
//! The pool belongs to the instance's shared state (see `registry`), so it
//! survives snapshot swaps and is dropped, closing its connections, when the
//! instance leaves the registry. It keeps one slot per traffic worker: a
//! connection's task runs on the worker that opened it, so handing it only
//! to requests on that worker keeps every wake-up on one thread and the
//! per-worker locks uncontended.
//!
//! Connecting is a separate step from sending so that a connect failure
//! leaves the request untouched and the proxy can retry it elsewhere.
//!
//! Requests without a body to a plain HTTP/1.1 instance use the lean
//! client in [`h1`]; everything else uses hyper's client. Both kinds of
//! idle connection are pooled side by side.

pub mod framing;
pub mod h1;
mod request_body;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::{UpstreamProtocol, UpstreamTls};
pub use request_body::{ClientBodyState, ClientBodyWatch, RequestBody};

/// Idle connections kept per instance and worker. Sized for a few hundred
/// concurrent client connections; beyond it, spare connections are closed.
pub const DEFAULT_MAX_IDLE: usize = 512;

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable, reset).
    #[error("connect to {address} failed: {source}")]
    Io {
        /// The instance.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TCP connect took longer than the connect timeout.
    #[error("connect to {address} timed out after {timeout:?}")]
    Timeout {
        /// The instance.
        address: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name...).
    #[error("TLS with {address} failed: {source}")]
    Tls {
        /// The instance.
        address: SocketAddr,
        /// What rustls said.
        source: std::io::Error,
    },
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {address} failed: {source}")]
    Handshake {
        /// The instance.
        address: SocketAddr,
        /// The hyper error.
        source: hyper::Error,
    },
}

/// A connection that can carry a request.
#[derive(Debug)]
pub enum Sender {
    /// One request at a time.
    Http1(http1::SendRequest<RequestBody>),
    /// Many requests at once (a clone of the shared connection).
    Http2(http2::SendRequest<RequestBody>),
}

impl Sender {
    fn is_ready(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_ready(),
            Sender::Http2(s) => s.is_ready(),
        }
    }

    /// Sends `request`; when it could not be sent at all, the error gives
    /// it back.
    pub fn try_send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> + use<>
    {
        let sent: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match self {
            Sender::Http1(s) => Box::pin(s.try_send_request(request)),
            Sender::Http2(s) => Box::pin(s.try_send_request(request)),
        };
        sent
    }
}

/// Errors of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from either client.
#[derive(Debug)]
pub enum ResponseBody {
    /// From hyper's client.
    Hyper(Incoming),
    /// From the lean HTTP/1.1 client.
    Lean(h1::Body),
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Hyper(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(Into::into))),
            ResponseBody::Lean(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Hyper(body) => body.is_end_stream(),
            ResponseBody::Lean(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ResponseBody::Hyper(body) => body.size_hint(),
            ResponseBody::Lean(body) => body.size_hint(),
        }
    }
}

/// How to talk to the instances: protocol and TLS, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// HTTP version.
    pub protocol: UpstreamProtocol,
    /// TLS, if on.
    pub tls: Option<UpstreamTls>,
}

struct Transport {
    settings: Settings,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// Idle connections of one traffic worker.
#[derive(Default)]
struct Slot {
    /// hyper's (HTTP/1.1, or the shared HTTP/2 one).
    hyper: Vec<Sender>,
    /// The lean client's, boxed once per connection so that handing one to
    /// a request and its body moves a pointer, not the whole state.
    #[allow(clippy::vec_box)]
    lean: Vec<Box<h1::Conn>>,
}

/// The connection pool of one instance.
pub struct Pool {
    address: SocketAddr,
    idle: Box<[Mutex<Slot>]>,
    max_idle: usize,
    transport: ArcSwap<Transport>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("address", &self.address)
            .field("settings", &self.transport.load().settings)
            .finish_non_exhaustive()
    }
}

/// A connection taken from the pool (or new).
#[derive(Debug)]
pub struct Connection {
    /// Sends the request.
    pub sender: Sender,
    /// Whether it was reused; a reused connection may have been closed by
    /// the upstream meanwhile, so an unsent request on it is safe to resend.
    pub reused: bool,
}

impl Pool {
    /// An empty HTTP/1.1 pool for `address` with `slots` idle lists (one per
    /// traffic worker), each keeping up to `max_idle` connections.
    pub fn new(address: SocketAddr, slots: usize, max_idle: usize) -> Pool {
        Pool {
            address,
            idle: (0..slots.max(1)).map(|_| Mutex::default()).collect(),
            max_idle,
            transport: ArcSwap::from_pointee(Transport {
                settings: Settings::default(),
                tls: None,
            }),
        }
    }

    /// The instance address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Applies the service's protocol and TLS settings. When they change,
    /// the pooled connections (made the old way) are dropped.
    pub fn configure(&self, settings: &Settings) -> Result<(), String> {
        if self.transport.load().settings == *settings {
            return Ok(());
        }
        let tls = match &settings.tls {
            None => None,
            Some(tls) => Some(crate::tls::upstream_connector(
                tls,
                settings.protocol,
                self.address,
            )?),
        };
        self.transport.store(Arc::new(Transport {
            settings: settings.clone(),
            tls,
        }));
        for slot in self.idle.iter() {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Slot::default();
        }
        Ok(())
    }

    /// This worker's idle list.
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.idle[crate::server::current_worker() % self.idle.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of pooled connections.
    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|slot| {
                let slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                slot.hyper.len() + slot.lean.len()
            })
            .sum()
    }

    /// A ready connection: the most recently used idle one (HTTP/1.1), the
    /// shared one (HTTP/2), or a new one.
    pub async fn checkout(&self, connect_timeout: Duration) -> Result<Connection, ConnectError> {
        loop {
            // The lock is held only for the pop, never across an await.
            let mut slot = self.slot();
            let sender = match slot.hyper.pop() {
                Some(Sender::Http2(shared)) if shared.is_ready() => {
                    // HTTP/2 is shared: it stays in the pool.
                    let clone = shared.clone();
                    slot.hyper.push(Sender::Http2(shared));
                    Sender::Http2(clone)
                }
                Some(sender @ Sender::Http1(_)) if sender.is_ready() => sender,
                Some(_closed) => continue,
                None => break,
            };
            return Ok(Connection {
                sender,
                reused: true,
            });
        }
        // Boxed: connecting (TLS, HTTP/2 handshakes) needs kilobytes of
        // future state that the usual pooled path would otherwise carry
        // and copy on every request.
        let sender = Box::pin(self.connect(connect_timeout)).await?;
        if let Sender::Http2(shared) = &sender {
            self.push(Sender::Http2(shared.clone()));
        }
        Ok(Connection {
            sender,
            reused: false,
        })
    }

    /// Returns a connection whose response has been read to the end.
    pub fn checkin(self: &Arc<Self>, sender: Sender) {
        let Sender::Http1(mut sender) = sender else {
            // An HTTP/2 clone: the shared connection is already pooled.
            return;
        };
        if sender.is_ready() {
            self.push(Sender::Http1(sender));
        } else if !sender.is_closed() {
            // The connection task has not yet noticed the response ended;
            // wait for it off the request path.
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.push(Sender::Http1(sender));
                }
            });
        }
    }

    fn push(&self, sender: Sender) {
        let mut slot = self.slot();
        if slot.hyper.len() < self.max_idle {
            slot.hyper.push(sender);
        }
    }

    /// Whether requests without a body can use the lean client: plain
    /// TCP and HTTP/1.1.
    pub fn takes_lean(&self) -> bool {
        let transport = self.transport.load();
        transport.tls.is_none() && transport.settings.protocol == UpstreamProtocol::Http1
    }

    /// A lean-client connection: the most recently used idle one that is
    /// still open, or a new one. The flag says whether it was reused.
    pub async fn checkout_h1(
        &self,
        connect_timeout: Duration,
    ) -> Result<(Box<h1::Conn>, bool), ConnectError> {
        loop {
            // The lock is held only for the pop, never across an await.
            let Some(mut conn) = self.slot().lean.pop() else {
                break;
            };
            let closed =
                std::future::poll_fn(|cx| std::task::Poll::Ready(conn.closed_while_idle(cx))).await;
            if !closed {
                return Ok((conn, true));
            }
        }
        let address = self.address;
        match tokio::time::timeout(connect_timeout, tcp(address)).await {
            Ok(stream) => Ok((h1::Conn::new(stream?), false)),
            Err(_) => Err(ConnectError::Timeout {
                address,
                timeout: connect_timeout,
            }),
        }
    }

    /// Returns a lean-client connection whose response was read to the end
    /// (unless the service moved to TLS or HTTP/2 meanwhile).
    pub fn checkin_h1(&self, conn: Box<h1::Conn>) {
        if !self.takes_lean() {
            return;
        }
        let mut slot = self.slot();
        if slot.lean.len() < self.max_idle {
            slot.lean.push(conn);
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<Sender, ConnectError> {
        let address = self.address;
        let transport = self.transport.load_full();
        let connecting = async {
            let stream = tcp(address).await?;
            match &transport.tls {
                None => handshake(stream, transport.settings.protocol, address).await,
                Some((connector, name)) => {
                    let stream = connector
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|source| ConnectError::Tls { address, source })?;
                    handshake(stream, transport.settings.protocol, address).await
                }
            }
        };
        match tokio::time::timeout(timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout { address, timeout }),
        }
    }
}

/// A TCP connection to `address`, with Nagle off: requests are small
/// writes, which Nagle would hold back for a round trip.
async fn tcp(address: SocketAddr) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|source| ConnectError::Io { address, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn handshake<I>(
    io: I,
    protocol: UpstreamProtocol,
    address: SocketAddr,
) -> Result<Sender, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed = |source| ConnectError::Handshake { address, source };
    match protocol {
        UpstreamProtocol::Http1 => {
            // The same head limit as the lean client's (see `framing`).
            let (sender, connection) = http1::Builder::new()
                .max_header_size(framing::MAX_RESPONSE_HEAD)
                .handshake(TokioIo::new(io))
                .await
                .map_err(failed)?;
            tokio::spawn(async move {
                // With upgrades: a 101 answer hands the socket over to a tunnel.
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%address, %error, "upstream connection closed with an error");
                }
            });
            Ok(Sender::Http1(sender))
        }
        UpstreamProtocol::Http2 => {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .max_header_list_size(framing::MAX_RESPONSE_HEAD as u32)
                .handshake(TokioIo::new(io))
                .await
                .map_err(failed)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%address, %error, "upstream HTTP/2 connection closed with an error");
                }
            });
            Ok(Sender::Http2(sender))
        }
    }
}
