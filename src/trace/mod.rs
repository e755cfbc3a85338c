//! Distributed tracing at the proxy: W3C Trace Context accepted and
//! propagated on every request ([`context`]), and, when `tracing:` names an
//! OTLP endpoint, one server span per sampled request and one client span
//! per upstream attempt ([`span`]), exported in batches off the request
//! path ([`export`], [`otlp`]).
//!
//! The proxy is one hop of the trace: the upstream request carries the
//! same trace id, the sampled flag and, as its parent, the span of that
//! upstream attempt (a new one per attempt, so retries can be told apart).

pub mod context;
pub mod export;
mod otlp;
pub mod span;

use std::sync::Arc;

pub use context::{TraceContext, TRACEPARENT, TRACEPARENT_NAME, TRACESTATE, TRACESTATE_NAME};
pub use export::{ExportSettings, Tracer};
pub use span::{Hop, ServerSpan};

use crate::config::TracingConfig;

/// What the request path needs of `tracing:`, compiled into the snapshot.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// New traces are sampled below this (see [`context::sample_bound`]).
    pub sample_bound: u64,
    /// Where spans go, when they are exported.
    pub export: Option<Arc<ExportSettings>>,
}

impl Settings {
    /// The settings of `config`.
    pub fn of(config: &TracingConfig) -> Settings {
        Settings {
            sample_bound: context::sample_bound(config.sample_ratio),
            export: config.otlp_endpoint.as_ref().map(|endpoint| {
                Arc::new(ExportSettings {
                    endpoint: endpoint.clone(),
                    service_name: config.service_name.clone(),
                })
            }),
        }
    }
}

use http::{HeaderMap, HeaderValue};

use crate::http1::head::{AddedValue, RawHead};

/// A request's hop, recording spans into `tracer` when its trace is
/// sampled and `settings` export spans.
pub fn hop(context: TraceContext, settings: &Settings, tracer: &Arc<Tracer>) -> Hop {
    let recorder = (context.sampled && settings.export.is_some()).then(|| Arc::clone(tracer));
    Hop::new(context, recorder)
}

/// The trace fields of a request going upstream as a map: the received
/// `traceparent` replaced by `value`, `tracestate` kept only when
/// `context` says so.
pub fn propagate(headers: &mut HeaderMap, context: &TraceContext, value: &[u8]) {
    if context.had_fields && !context.keep_tracestate {
        headers.remove(&TRACESTATE_NAME);
    }
    set_traceparent(headers, value);
}

/// Sets `traceparent` (replacing any) in a map.
pub fn set_traceparent(headers: &mut HeaderMap, value: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(value) {
        headers.insert(TRACEPARENT_NAME.clone(), value);
    }
}

/// [`propagate`] on a head kept as received: the received `traceparent`
/// fields are removed and the new one added at the end; where its value
/// is, for the next attempts.
pub fn propagate_raw(head: &mut RawHead, context: &TraceContext, value: &[u8]) -> AddedValue {
    if context.had_fields {
        head.remove(TRACEPARENT);
        if !context.keep_tracestate {
            head.remove(TRACESTATE);
        }
    }
    head.append_slot(TRACEPARENT.as_bytes(), value)
}
