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

pub use crate::http1::framing;
mod body_copy;
pub mod h1;
mod request_body;
pub mod service_limit;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{UpstreamProtocol, UpstreamTls};
pub use body_copy::BodyCopy;
pub use request_body::{ClientBody, ClientBodyState, ClientBodyWatch, RequestBody};
pub use service_limit::{ServiceConnections, ServiceOverflow, SharedServiceConnections};

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
    /// The instance already has as many connections open as the service
    /// allows, and none came free within the connect timeout. The
    /// instance is not at fault: this is the proxy's own limit.
    #[error("all {limit} connections to {address} stayed busy for {timeout:?}")]
    Saturated {
        /// The instance.
        address: SocketAddr,
        /// The limit (`max_connections_per_instance`).
        limit: NonZeroU32,
        /// How long the request waited.
        timeout: Duration,
    },
    /// A service-wide limit (`circuit_breaker.max_connections` or
    /// `max_pending`) refused the connection. Not the instance's fault, and
    /// no other instance of the service would do better.
    #[error("no connection to {address}: the service is at its {} limit", which.as_str())]
    Overflow {
        /// The instance.
        address: SocketAddr,
        /// Which limit.
        which: ServiceOverflow,
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

impl ConnectError {
    /// Whether the failure is this process's own (out of descriptors,
    /// buffers or local ports), not the instance's: such errors must not
    /// count against the instance's health.
    pub fn is_local(&self) -> bool {
        match self {
            ConnectError::Io { source, .. } => crate::local_origin::is_local_resource_error(source),
            _ => false,
        }
    }
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

impl ResponseBody {
    /// The lean client's response head as received, if it was kept that
    /// way (the response's `HeaderMap` is then empty).
    pub fn raw_head_mut(&mut self) -> Option<&mut crate::http1::head::RawHead> {
        match self {
            ResponseBody::Hyper(_) => None,
            ResponseBody::Lean(body) => body.raw_head_mut(),
        }
    }

    /// Takes the head as received, for the server that writes it.
    pub fn take_raw_head(&mut self) -> Option<crate::http1::head::RawHead> {
        match self {
            ResponseBody::Hyper(_) => None,
            ResponseBody::Lean(body) => body.take_raw_head(),
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
    /// Most connections open at once to the instance, over all workers.
    pub max_connections: Option<NonZeroU32>,
    /// The service-wide ceiling on connections and pending requests,
    /// shared by the pools of all the service's instances.
    pub service: Option<SharedServiceConnections>,
}

struct Transport {
    settings: Settings,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// One permit per open connection, when connections are limited. A
    /// connection holds its permit until it closes.
    limit: Option<Arc<Semaphore>>,
}

/// A connection's share of the instance's and the service's connection
/// limits (`None`: no limit), held for as long as the connection is open.
#[derive(Debug, Default)]
pub struct ConnectionPermit {
    _instance: Option<OwnedSemaphorePermit>,
    _service: Option<OwnedSemaphorePermit>,
}

/// What waiting for room under the connection limit gave.
enum Room {
    /// A new connection may be opened.
    Granted(ConnectionPermit),
    /// An idle connection came back (to some worker's list): look again.
    IdleReturned,
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
    /// Signalled when a connection is checked in while connections are
    /// limited: a request waiting for room looks again, and if the idle
    /// connection is not one it can use (another worker's, or of the other
    /// client kind), closes it to free its permit.
    returned: Notify,
    max_idle: usize,
    transport: ArcSwap<Transport>,
    /// Requests of this pool waiting for room now.
    waiting: std::sync::atomic::AtomicU32,
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
            returned: Notify::new(),
            max_idle,
            transport: ArcSwap::from_pointee(Transport {
                settings: Settings::default(),
                tls: None,
                limit: None,
            }),
            waiting: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The instance address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Applies the service's protocol, TLS and connection-limit settings.
    /// When they change, the pooled connections (made the old way) are
    /// dropped; connections in use keep counting against the limit they
    /// were opened under until they close.
    pub fn configure(self: &Arc<Self>, settings: &Settings) -> Result<(), String> {
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
        let limit = settings
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n.get() as usize)));
        if let Some(service) = &settings.service {
            service.0.track(self);
        }
        self.transport.store(Arc::new(Transport {
            settings: settings.clone(),
            tls,
            limit,
        }));
        for slot in self.idle.iter() {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Slot::default();
        }
        Ok(())
    }

    /// This worker's idle list.
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.idle[self.worker()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn worker(&self) -> usize {
        crate::server::current_worker() % self.idle.len()
    }

    /// Room for one more connection under the instance's and the
    /// service's limits, waiting until `deadline` for an open one to close
    /// or an idle one to come back. A request that has to wait is pending:
    /// over the service's `max_pending`, it is refused at once.
    async fn room(&self, deadline: Instant, timeout: Duration) -> Result<Room, ConnectError> {
        use std::sync::atomic::{AtomicBool, Ordering};

        let transport = self.transport.load();
        let instance_limit = transport
            .limit
            .clone()
            .zip(transport.settings.max_connections);
        let service = transport.settings.service.clone();
        drop(transport);
        if instance_limit.is_none() && service.is_none() {
            return Ok(Room::Granted(ConnectionPermit::default()));
        }
        let mut instance = instance_limit
            .as_ref()
            .and_then(|(limit, _)| Arc::clone(limit).try_acquire_owned().ok());
        let instance_free = instance_limit.is_none() || instance.is_some();
        if instance_free {
            let service_permit = service.as_ref().and_then(|s| s.0.try_permit());
            if service.is_none() || service_permit.is_some() {
                return Ok(Room::Granted(ConnectionPermit {
                    _instance: instance,
                    _service: service_permit,
                }));
            }
        }
        let address = self.address;
        let _pending = match &service {
            Some(service) => Some(
                service
                    .0
                    .enter_pending()
                    .map_err(|which| ConnectError::Overflow { address, which })?,
            ),
            None => None,
        };
        let _waiting = Waiting::enter(&self.waiting);
        // Idle connections this request cannot use (another worker's, or
        // of the other client kind) hold permits: close one to free its
        // permits; when the service's limit is the one reached, an idle
        // connection of another instance will do.
        if !self.close_unusable_idle() && instance_free {
            if let Some(service) = &service {
                service.0.close_one_idle();
            }
        }
        let returned = self.returned.notified();
        let instance_held = AtomicBool::new(instance_free);
        let acquire = async {
            if let (Some((limit, _)), None) = (&instance_limit, &instance) {
                instance = Arc::clone(limit).acquire_owned().await.ok();
                instance_held.store(true, Ordering::Release);
            }
            let service_permit = match &service {
                Some(service) => service.0.permit().await,
                None => None,
            };
            ConnectionPermit {
                _instance: instance.take(),
                _service: service_permit,
            }
        };
        tokio::select! {
            // The semaphores are never closed; were they, no limit applies.
            permit = acquire => Ok(Room::Granted(permit)),
            () = returned => Ok(Room::IdleReturned),
            () = tokio::time::sleep_until(deadline) => match (&instance_limit, &service) {
                (Some((_, max)), _) if !instance_held.load(Ordering::Acquire) => {
                    Err(ConnectError::Saturated {
                        address,
                        limit: *max,
                        timeout,
                    })
                }
                (_, Some(service)) => Err(ConnectError::Overflow {
                    address,
                    which: service.0.refused(ServiceOverflow::MaxConnections),
                }),
                _ => Err(ConnectError::Timeout { address, timeout }),
            },
        }
    }

    /// Closes one idle connection, if any. Called when this worker's list
    /// had none of the kind wanted, so any found is one the request could
    /// not have used.
    pub(crate) fn close_unusable_idle(&self) -> bool {
        for slot in self.idle.iter() {
            // Held only for pops and pushes, never across an await.
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let lean = slot.lean.pop();
            let hyper = if lean.is_none() {
                slot.hyper.pop()
            } else {
                None
            };
            drop(slot);
            if lean.is_some() || hyper.is_some() {
                // Dropped here: the connection closes and frees its permit.
                return true;
            }
        }
        false
    }

    /// Wakes a request waiting for room, when there is a limit to wait for.
    fn signal_returned(&self) {
        let transport = self.transport.load();
        if transport.limit.is_some() || transport.settings.service.is_some() {
            self.returned.notify_one();
        }
    }

    /// Whether a connection coming back should be pooled: not when
    /// requests of other instances wait for room under the service's
    /// limit, which closing it makes.
    fn keep_returned(&self) -> bool {
        use std::sync::atomic::Ordering;
        match &self.transport.load().settings.service {
            Some(service) => service.0.pending() <= self.waiting.load(Ordering::Acquire),
            None => true,
        }
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
        let mut deadline = None;
        let permit = loop {
            if let Some(sender) = self.pop_hyper() {
                return Ok(Connection {
                    sender,
                    reused: true,
                });
            }
            let deadline =
                *deadline.get_or_insert_with(|| deadline_after(Instant::now(), connect_timeout));
            match self.room(deadline, connect_timeout).await? {
                Room::Granted(permit) => break permit,
                Room::IdleReturned => continue,
            }
        };
        // Boxed: connecting (TLS, HTTP/2 handshakes) needs kilobytes of
        // future state that the usual pooled path would otherwise carry
        // and copy on every request.
        let sender = Box::pin(self.connect(connect_timeout, permit)).await?;
        if let Sender::Http2(shared) = &sender {
            self.push(Sender::Http2(shared.clone()));
        }
        Ok(Connection {
            sender,
            reused: false,
        })
    }

    /// A ready idle hyper connection of this worker (the shared one for
    /// HTTP/2, which stays pooled).
    fn pop_hyper(&self) -> Option<Sender> {
        // The lock is held only for the pops, never across an await.
        let mut slot = self.slot();
        loop {
            match slot.hyper.pop()? {
                Sender::Http2(shared) if shared.is_ready() => {
                    let clone = shared.clone();
                    slot.hyper.push(Sender::Http2(shared));
                    return Some(Sender::Http2(clone));
                }
                sender @ Sender::Http1(_) if sender.is_ready() => return Some(sender),
                _closed => continue,
            }
        }
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
        if matches!(sender, Sender::Http1(_)) && !self.keep_returned() {
            // Dropped: the connection closes and frees its permits.
            return;
        }
        let mut slot = self.slot();
        if slot.hyper.len() < self.max_idle {
            slot.hyper.push(sender);
        }
        drop(slot);
        self.signal_returned();
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
        let mut deadline = None;
        let permit = loop {
            loop {
                // The lock is held only for the pop, never across an await.
                let Some(mut conn) = self.slot().lean.pop() else {
                    break;
                };
                let closed =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(conn.closed_while_idle(cx)))
                        .await;
                if !closed {
                    return Ok((conn, true));
                }
            }
            let deadline =
                *deadline.get_or_insert_with(|| deadline_after(Instant::now(), connect_timeout));
            match self.room(deadline, connect_timeout).await? {
                Room::Granted(permit) => break permit,
                Room::IdleReturned => continue,
            }
        };
        let address = self.address;
        match tokio::time::timeout(connect_timeout, tcp(address)).await {
            Ok(stream) => Ok((h1::Conn::new(stream?, permit), false)),
            Err(_) => Err(ConnectError::Timeout {
                address,
                timeout: connect_timeout,
            }),
        }
    }

    /// Returns a lean-client connection whose response was read to the end
    /// (unless the service moved to TLS or HTTP/2 meanwhile).
    pub fn checkin_h1(&self, conn: Box<h1::Conn>) {
        if !self.takes_lean() || !self.keep_returned() {
            return;
        }
        let mut slot = self.slot();
        if slot.lean.len() < self.max_idle {
            slot.lean.push(conn);
        }
        drop(slot);
        self.signal_returned();
    }

    async fn connect(
        &self,
        timeout: Duration,
        permit: ConnectionPermit,
    ) -> Result<Sender, ConnectError> {
        let address = self.address;
        let transport = self.transport.load_full();
        let connecting = async {
            let stream = tcp(address).await?;
            match &transport.tls {
                None => handshake(stream, transport.settings.protocol, address, permit).await,
                Some((connector, name)) => {
                    let stream = connector
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|source| ConnectError::Tls { address, source })?;
                    handshake(stream, transport.settings.protocol, address, permit).await
                }
            }
        };
        match tokio::time::timeout(timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout { address, timeout }),
        }
    }
}

/// A request of a pool waiting for room, counted while it waits.
struct Waiting<'a>(&'a std::sync::atomic::AtomicU32);

impl<'a> Waiting<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicU32) -> Waiting<'a> {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
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

/// When `deadline` is `timeout` after `now` (far off where that overflows).
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(365 * 86_400))
}

/// Opens HTTP on `io`; the connection's task keeps `permit` until the
/// connection closes.
async fn handshake<I>(
    io: I,
    protocol: UpstreamProtocol,
    address: SocketAddr,
    permit: ConnectionPermit,
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
                let _permit = permit;
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
                let _permit = permit;
                if let Err(error) = connection.await {
                    tracing::debug!(%address, %error, "upstream HTTP/2 connection closed with an error");
                }
            });
            Ok(Sender::Http2(sender))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_out_locally_is_a_local_connect_error() {
        let address: SocketAddr = ([127, 0, 0, 1], 1).into();
        let io = |code| ConnectError::Io {
            address,
            source: std::io::Error::from_raw_os_error(code),
        };
        assert!(io(libc::EMFILE).is_local());
        assert!(io(libc::EADDRNOTAVAIL).is_local());
        assert!(!io(libc::ECONNREFUSED).is_local());
        let timeout = ConnectError::Timeout {
            address,
            timeout: Duration::from_secs(1),
        };
        assert!(!timeout.is_local());
    }
}
