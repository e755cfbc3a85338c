//! switchyard: an edge reverse proxy with client-side load balancing.
//!
//! Data flows one way: sources (proxy.yaml, later the admin API and Consul)
//! change the [`registry::Registry`], which publishes an immutable
//! [`registry::Snapshot`] through one atomic swap; the [`proxy`] only reads
//! snapshots. State that must outlive a swap (in-flight counts, connection
//! pools) is keyed by instance and shared between snapshots.

pub mod access_log;
pub mod admin;
pub mod admin_client;
pub mod balance;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod fleet;
pub mod health;
pub mod http1;
pub mod limits;
pub mod local_origin;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod router;
pub mod server;
pub mod stats_window;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod traffic;
pub mod upstream;
