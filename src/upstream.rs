//! Connections to one upstream instance: connect with a timeout, HTTP/1.1
//! handshake, and a pool of idle keep-alive connections.
//!
//! The pool belongs to the instance's shared state (see `registry`), so it
//! survives snapshot swaps and is dropped, closing its connections, when the
//! instance leaves the registry.
//!
//! Connecting is a separate step from sending so that a connect failure
//! leaves the request untouched and the proxy can retry it elsewhere.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The body type sent upstream: the client's body, streamed through.
pub type RequestBody = Incoming;
/// A ready HTTP/1.1 connection to an instance.
pub type Sender = http1::SendRequest<RequestBody>;

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
    /// The HTTP handshake failed.
    #[error("HTTP handshake with {address} failed: {source}")]
    Handshake {
        /// The instance.
        address: SocketAddr,
        /// The hyper error.
        source: hyper::Error,
    },
}

/// The connection pool of one instance: one idle list per traffic worker.
/// A connection's task runs on the worker that opened it, so handing it to
/// requests on that same worker keeps every wake-up on one thread; the
/// per-worker locks are never contended across threads.
#[derive(Debug)]
pub struct Pool {
    address: SocketAddr,
    idle: Box<[Mutex<Vec<Sender>>]>,
    max_idle: usize,
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
    /// An empty pool for `address` with `slots` idle lists (one per
    /// traffic worker), each keeping up to `max_idle` connections.
    pub fn new(address: SocketAddr, slots: usize, max_idle: usize) -> Pool {
        Pool {
            address,
            idle: (0..slots.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle,
        }
    }

    /// This worker's idle list.
    fn slot(&self) -> &Mutex<Vec<Sender>> {
        &self.idle[crate::server::current_worker() % self.idle.len()]
    }

    /// The instance address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// A ready connection: the most recently used idle one, or a new one.
    pub async fn checkout(&self, connect_timeout: Duration) -> Result<Connection, ConnectError> {
        loop {
            // The lock is held only for the pop, never across an await.
            let idle = self
                .slot()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(sender) if sender.is_ready() => {
                    return Ok(Connection {
                        sender,
                        reused: true,
                    })
                }
                Some(_closed) => continue,
                None => break,
            }
        }
        let sender = self.connect(connect_timeout).await?;
        Ok(Connection {
            sender,
            reused: false,
        })
    }

    /// Returns a connection whose response has been read to the end.
    pub fn checkin(self: &Arc<Self>, sender: Sender) {
        if sender.is_ready() {
            self.push(sender);
        } else if !sender.is_closed() {
            // The connection task has not yet noticed the response ended;
            // wait for it off the request path.
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                let mut sender = sender;
                if sender.ready().await.is_ok() {
                    pool.push(sender);
                }
            });
        }
    }

    fn push(&self, sender: Sender) {
        let mut idle = self.slot().lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<Sender, ConnectError> {
        let address = self.address;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ConnectError::Io { address, source }),
            Err(_) => return Err(ConnectError::Timeout { address, timeout }),
        };
        // Requests are small writes; Nagle would delay them by an RTT.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { address, source })?;
        tokio::spawn(async move {
            // With upgrades: a 101 answer hands the socket over to a tunnel.
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%address, %error, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}
