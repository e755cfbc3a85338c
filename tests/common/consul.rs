//! A stand-in for a Consul agent, written from Consul's HTTP API docs (no
//! real Consul can be installed here). It serves the parts switchyard uses:
//! `GET /v1/health/service/:name` with blocking queries (`index`, `wait`,
//! `X-Consul-Index`) and the `passing` filter, `GET /v1/status/leader`, and
//! agent service register/deregister. Tests change its data, make it fail,
//! reset its index and count the queries it gets.
#![allow(unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    index: u64,
    services: HashMap<String, Vec<Value>>,
    /// Answer every health query with this status and body instead.
    failing: Option<(u16, String)>,
    health_queries: usize,
    registered: Vec<Value>,
    deregistered: Vec<String>,
}

#[derive(Clone)]
pub struct FakeConsul {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

/// One health entry as Consul returns it.
pub fn entry(node: &str, address: SocketAddr, weight: u32, status: &str) -> Value {
    json!({
        "Node": {"ID": "0", "Node": node, "Address": address.ip().to_string(), "Datacenter": "dc1", "Meta": {}},
        "Service": {"ID": "web", "Service": "web", "Tags": ["v1"], "Address": "", "Port": address.port(),
                    "Meta": null, "Weights": {"Passing": weight, "Warning": 1}, "CreateIndex": 1, "ModifyIndex": 1},
        "Checks": [
            {"Node": node, "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
            {"Node": node, "CheckID": "service:web", "Status": status, "ServiceID": "web"}
        ]
    })
}

impl FakeConsul {
    pub async fn start() -> FakeConsul {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let consul = FakeConsul {
            address: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State {
                index: 10,
                ..State::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        let server = consul.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        consul
    }

    /// Replaces a service's entries; the index moves forward.
    pub fn set(&self, service: &str, entries: Vec<Value>) {
        let mut state = self.state.lock().unwrap();
        state.index += 1;
        state.services.insert(service.to_string(), entries);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Replaces a service's entries and sets the index (e.g. lower, as after
    /// a snapshot restore).
    pub fn set_with_index(&self, service: &str, entries: Vec<Value>, index: u64) {
        let mut state = self.state.lock().unwrap();
        state.index = index;
        state.services.insert(service.to_string(), entries);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Makes every health query fail (None: work again).
    pub fn fail_with(&self, failure: Option<(u16, &str)>) {
        self.state.lock().unwrap().failing = failure.map(|(s, b)| (s, b.to_string()));
        self.changed.notify_waiters();
    }

    pub fn health_queries(&self) -> usize {
        self.state.lock().unwrap().health_queries
    }

    pub fn registered(&self) -> Vec<Value> {
        self.state.lock().unwrap().registered.clone()
    }

    pub fn deregistered(&self) -> Vec<String> {
        self.state.lock().unwrap().deregistered.clone()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let query: HashMap<String, String> = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        if path == "/v1/status/leader" {
            return reply(200, "\"127.0.0.1:8300\"".into(), None);
        }
        if path == "/v1/agent/service/register" {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            self.state
                .lock()
                .unwrap()
                .registered
                .push(serde_json::from_slice(&body).unwrap());
            return reply(200, String::new(), None);
        }
        if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
            self.state.lock().unwrap().deregistered.push(id.to_string());
            return reply(200, String::new(), None);
        }
        let Some(service) = path.strip_prefix("/v1/health/service/") else {
            return reply(404, "unknown path".into(), None);
        };
        self.state.lock().unwrap().health_queries += 1;
        // Blocking query: hold until the index moves past the one asked
        // for, or the wait runs out.
        let asked: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
        let wait = query
            .get("wait")
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|w| w.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(300));
        if asked > 0 {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = self.changed.notified();
                {
                    let state = self.state.lock().unwrap();
                    if state.index != asked || state.failing.is_some() {
                        break;
                    }
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        let state = self.state.lock().unwrap();
        if let Some((status, body)) = &state.failing {
            return reply(*status, body.clone(), None);
        }
        let passing_only = query.contains_key("passing");
        let entries: Vec<&Value> = state
            .services
            .get(service)
            .map(|list| {
                list.iter()
                    .filter(|e| {
                        !passing_only
                            || e["Checks"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .all(|c| c["Status"] == "passing")
                    })
                    .collect()
            })
            .unwrap_or_default();
        reply(
            200,
            serde_json::to_string(&entries).unwrap(),
            Some(state.index),
        )
    }
}

fn reply(status: u16, body: String, index: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if let Some(index) = index {
        response = response.header("X-Consul-Index", index.to_string());
    }
    response.body(Full::new(Bytes::from(body))).unwrap()
}
