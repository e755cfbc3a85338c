//! Listeners and the process lifecycle: bind everything first (so a bad
//! address fails start-up as a whole), serve HTTP/1.1 and HTTP/2 (h2c) on
//! each traffic listener and the admin API on its own, and drain on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::proxy::{Proxy, ProxyBody};
use crate::registry::Registry;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An address could not be bound.
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound listener.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// Its name from the config.
    pub name: String,
    /// The address actually bound (the real port when the config said 0).
    pub address: SocketAddr,
}

/// A running proxy.
pub struct Running {
    registry: Arc<Registry>,
    listeners: Vec<BoundListener>,
    admin_address: SocketAddr,
    drain_timeout: Duration,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// The registry, for sources that change it.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The traffic listeners as bound.
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// The admin API address as bound.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout) and returns when every listener is done.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.drain_timeout + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
    }
}

/// Binds every listener of `config`, then serves until shut down.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let mut bound = Vec::new();
    for listener in &config.listeners {
        bound.push((
            listener.name.clone(),
            bind(&listener.name, listener.address).await?,
        ));
    }
    let admin_listener = bind("admin", config.admin.address).await?;
    let admin_address = local_address(&admin_listener, config.admin.address);
    let drain_timeout = config.drain_timeout;

    let registry = Arc::new(Registry::new(config));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for (name, listener) in bound {
        let address = local_address(&listener, SocketAddr::from(([0, 0, 0, 0], 0)));
        tracing::info!(listener = %name, %address, "listening");
        listeners.push(BoundListener {
            name: name.clone(),
            address,
        });
        let proxy = Arc::new(Proxy::new(Arc::clone(&registry), "http"));
        tasks.spawn(serve(
            listener,
            shutdown_rx.clone(),
            drain_timeout,
            move |request, peer| {
                let proxy = Arc::clone(&proxy);
                async move { proxy.handle(request, peer).await }
            },
        ));
    }
    tracing::info!(address = %admin_address, "admin API listening");
    let admin_state = Arc::new(AdminState::new(
        Arc::clone(&registry),
        listeners.clone(),
        admin_address,
    ));
    tasks.spawn(serve(
        admin_listener,
        shutdown_rx,
        drain_timeout,
        move |request, _peer| {
            let state = Arc::clone(&admin_state);
            async move { admin::handle(&state, request).await }
        },
    ));
    Ok(Running {
        registry,
        listeners,
        admin_address,
        drain_timeout,
        shutdown,
        tasks,
    })
}

async fn bind(what: &str, address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_string(),
            address,
            source,
        })
}

fn local_address(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// Accepts connections until shutdown, then drains them.
async fn serve<H, F>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: back off instead of
                // spinning, and keep serving the connections we have.
                tracing::error!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        serve_connection(&builder, &graceful, stream, peer, handler.clone());
    }
    drop(listener);
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain_timeout,
            "drain timeout reached; closing remaining connections"
        );
    }
}

fn serve_connection<H, F>(
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let response = handler(request, peer);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "client connection ended with an error");
        }
    });
}
