//! An upstream whose behaviour a test can flip: healthy, a fixed status,
//! slow, resetting connections, or its port closed.
#![allow(unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Healthy,
    Status(u16),
    Slow(Duration),
    /// Reads the request, then closes the connection without answering.
    Reset,
}

pub struct Flippable {
    pub name: String,
    pub address: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Flippable {
    pub async fn start(name: &str) -> Arc<Flippable> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let flippable = Arc::new(Flippable {
            name: name.to_string(),
            address: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(Mode::Healthy)),
            server: Mutex::new(None),
        });
        flippable.serve(listener);
        flippable
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Closes the port and every open connection.
    pub fn close(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    /// Listens on the same port again.
    pub async fn open(&self) {
        let listener = TcpListener::bind(self.address).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (mode, name) = (Arc::clone(&self.mode), self.name.clone());
        let server = tokio::spawn(async move {
            // Connections die with this task (the JoinSet aborts them).
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (mode, name) = (Arc::clone(&mode), name.clone());
                connections.spawn(async move {
                    if *mode.lock().unwrap() == Mode::Reset {
                        let mut buf = [0u8; 4096];
                        let _ = stream.read(&mut buf).await;
                        return;
                    }
                    let service = service_fn(move |_req| {
                        let (mode, name) = (Arc::clone(&mode), name.clone());
                        async move {
                            let current = *mode.lock().unwrap();
                            if current == Mode::Reset {
                                // A service error makes hyper drop the
                                // connection without an answer.
                                return Err(std::io::Error::other("reset"));
                            }
                            let status = match current {
                                Mode::Status(status) => status,
                                Mode::Slow(delay) => {
                                    tokio::time::sleep(delay).await;
                                    200
                                }
                                Mode::Healthy | Mode::Reset => 200,
                            };
                            let response = Response::builder()
                                .status(status)
                                .header("x-served-by", name.as_str())
                                .body(Full::new(Bytes::from(format!("{name} says {status}"))))
                                .unwrap();
                            Ok::<_, std::io::Error>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                // Reap finished connections so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        *self.server.lock().unwrap() = Some(server);
    }
}

impl Drop for Flippable {
    fn drop(&mut self) {
        self.close();
    }
}
