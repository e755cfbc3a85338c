//! Traffic workers: one thread per core, each with its own single-threaded
//! tokio runtime and its own listening socket per address (SO_REUSEPORT, so
//! the kernel spreads connections over the workers).
//!
//! A client connection, the upstream connection serving it and every task
//! in between run on the same thread: no work stealing, no cross-thread
//! wake-ups on the request path, and upstream keep-alive pools per worker
//! (see `upstream::Pool`). The control plane (admin API, health checks,
//! discovery, reloads) runs on the main runtime and only hands listeners to
//! the workers.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, oneshot};

/// Connections a listening socket queues before accept.
const BACKLOG: i32 = 4096;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the traffic worker running this code (0 elsewhere).
pub fn current_worker() -> usize {
    WORKER.with(Cell::get)
}

/// Work handed to a worker: serve one listening socket until `stop`.
pub(super) struct Serve {
    pub(super) listener: std::net::TcpListener,
    pub(super) task: Box<dyn FnOnce(tokio::net::TcpListener) -> super::ServeFuture + Send>,
    pub(super) done: oneshot::Sender<()>,
}

/// The worker threads.
pub(super) struct Workers {
    senders: Vec<mpsc::UnboundedSender<Serve>>,
}

impl Workers {
    /// Starts `count` worker threads.
    pub(super) fn start(count: usize) -> std::io::Result<Arc<Workers>> {
        let mut senders = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let (sender, mut receiver) = mpsc::unbounded_channel::<Serve>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(index));
                    runtime.block_on(async move {
                        // Runs until every sender (the server) is gone and
                        // the listeners handed over have finished.
                        let mut running = tokio::task::JoinSet::new();
                        while let Some(serve) = receiver.recv().await {
                            match tokio::net::TcpListener::from_std(serve.listener) {
                                Ok(listener) => {
                                    let future = (serve.task)(listener);
                                    let done = serve.done;
                                    running.spawn(async move {
                                        future.await;
                                        let _ = done.send(());
                                    });
                                }
                                Err(error) => {
                                    tracing::error!(%error, "worker cannot take a listener")
                                }
                            }
                            while running.try_join_next().is_some() {}
                        }
                        while running.join_next().await.is_some() {}
                    });
                })?;
            senders.push(sender);
        }
        Ok(Arc::new(Workers { senders }))
    }

    /// How many workers there are.
    pub(super) fn count(&self) -> usize {
        self.senders.len()
    }

    /// Hands `serve` to worker `index`.
    pub(super) fn hand(&self, index: usize, serve: Serve) {
        if let Some(sender) = self.senders.get(index) {
            let _ = sender.send(serve);
        }
    }
}

/// Binds `count` listening sockets to `address`, sharing the port with
/// SO_REUSEPORT. With port 0, the first socket's port is used by the rest.
/// Fails as a whole if the address is taken by anyone else.
pub(super) fn bind_reuseport(
    address: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(count);
    let mut address = address;
    for _ in 0..count.max(1) {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        address = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}
