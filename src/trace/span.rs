//! The spans a sampled request records: one server span for the request,
//! one client span per upstream attempt. Each is a fixed record of what
//! the request already holds (cheap clones: the method, the URI, header
//! values, interned names); the text is written by the exporter.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri};

use super::context::{new_span_id, TraceContext, TRACEPARENT_LEN};
use super::export::Tracer;
use crate::config::{InstanceId, ServiceName};

/// The span's kind, as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The request as this proxy served it.
    Server = 2,
    /// One attempt to an upstream instance.
    Client = 3,
}

/// What a span records.
#[derive(Debug)]
pub struct SpanRecord {
    /// Server or client.
    pub kind: SpanKind,
    /// The trace.
    pub trace_id: u128,
    /// This span.
    pub span_id: u64,
    /// Its parent (0: none).
    pub parent_id: u64,
    /// When it started.
    pub start: SystemTime,
    /// How long it lasted.
    pub duration: Duration,
    /// The request method.
    pub method: Method,
    /// The response status (0: none came).
    pub status: u16,
    /// What failed, for a span without an answer (`connect_failed`,
    /// `timeout`, ...).
    pub error: Option<&'static str>,
    /// The routed service.
    pub service: Option<ServiceName>,
    /// Server spans: the matched route's index in the config and its
    /// path pattern (`/api`, or `~regex`).
    pub route: Option<(usize, Box<str>)>,
    /// Server spans: the request target.
    pub uri: Option<Uri>,
    /// Server spans: the host that routed the request (`Host` or
    /// `:authority`).
    pub host: Option<HeaderValue>,
    /// Server spans: the client's address.
    pub client: Option<IpAddr>,
    /// Server spans: `http` or `https`.
    pub scheme: &'static str,
    /// Client spans: the instance tried.
    pub instance: Option<(InstanceId, SocketAddr)>,
    /// Client spans: the attempt's number (1, 2, ...).
    pub attempt: u32,
}

/// A request's place in its trace while the proxy handles it: the
/// context, the span of the current upstream attempt and, when the trace
/// is sampled and spans are exported, where they go.
#[derive(Debug, Default)]
pub struct Hop {
    /// The request's trace context.
    pub context: TraceContext,
    /// The span of the upstream attempt under way (the parent id the
    /// upstream receives).
    pub attempt_span: u64,
    /// Set when spans are recorded.
    recorder: Option<Arc<Tracer>>,
    /// The server span, until the response ends, and when it started.
    server: Option<(Box<SpanRecord>, Instant)>,
}

impl Hop {
    /// A hop for `context`; `recorder` when the trace's spans are exported.
    pub fn new(context: TraceContext, recorder: Option<Arc<Tracer>>) -> Hop {
        Hop {
            context,
            attempt_span: 0,
            recorder,
            server: None,
        }
    }

    /// Whether spans are recorded.
    pub fn recording(&self) -> bool {
        self.recorder.is_some()
    }

    /// Starts the server span (when recording).
    pub fn start_server(
        &mut self,
        method: &Method,
        uri: &Uri,
        host: Option<&HeaderValue>,
        client: IpAddr,
        scheme: &'static str,
    ) {
        if self.recorder.is_none() {
            return;
        }
        let record = Box::new(SpanRecord {
            kind: SpanKind::Server,
            trace_id: self.context.trace_id,
            span_id: self.context.span_id,
            parent_id: self.context.parent_id,
            start: SystemTime::now(),
            duration: Duration::ZERO,
            method: method.clone(),
            status: 0,
            error: None,
            service: None,
            route: None,
            uri: Some(uri.clone()),
            host: host.cloned(),
            client: Some(client),
            scheme,
            instance: None,
            attempt: 0,
        });
        self.server = Some((record, Instant::now()));
    }

    /// Notes the route and service the request went to.
    pub fn routed(&mut self, route: usize, pattern: &str, service: &ServiceName) {
        if let Some((span, _)) = self.server.as_mut() {
            span.route = Some((route, pattern.into()));
            span.service = Some(service.clone());
        }
    }

    /// The `traceparent` of the next upstream attempt, under a new span.
    pub fn next_attempt(&mut self) -> [u8; TRACEPARENT_LEN] {
        self.attempt_span = new_span_id();
        self.context.traceparent(self.attempt_span)
    }

    /// Records the client span of the attempt under way, started at
    /// `started`: `status` of the answer (0: none), `error` if it failed.
    pub fn attempt_done(
        &self,
        started: Instant,
        attempt: u32,
        instance: (&InstanceId, SocketAddr),
        status: u16,
        error: Option<&'static str>,
    ) {
        let (Some(recorder), Some((server, _))) = (&self.recorder, &self.server) else {
            return;
        };
        let duration = started.elapsed();
        recorder.push(SpanRecord {
            kind: SpanKind::Client,
            trace_id: self.context.trace_id,
            span_id: self.attempt_span,
            parent_id: self.context.span_id,
            start: SystemTime::now()
                .checked_sub(duration)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            duration,
            method: server.method.clone(),
            status,
            error,
            service: server.service.clone(),
            route: None,
            uri: None,
            host: None,
            client: None,
            scheme: server.scheme,
            instance: Some((instance.0.clone(), instance.1)),
            attempt,
        });
    }

    /// Takes the server span, to end when the response does.
    pub fn take_server(&mut self) -> Option<ServerSpan> {
        let (record, started) = self.server.take()?;
        let recorder = self.recorder.clone()?;
        Some(ServerSpan {
            record,
            recorder,
            started,
        })
    }
}

/// A request's server span, ended when its response ends.
#[derive(Debug)]
pub struct ServerSpan {
    record: Box<SpanRecord>,
    recorder: Arc<Tracer>,
    started: Instant,
}

impl ServerSpan {
    /// Sets the status the client gets.
    pub fn set_status(&mut self, status: u16) {
        self.record.status = status;
    }

    /// Ends the span now and hands it to the exporter; `complete` is
    /// false when the response was cut off.
    pub fn finish(mut self, complete: bool) {
        self.record.duration = self.started.elapsed();
        if !complete && self.record.error.is_none() {
            self.record.error = Some("response_incomplete");
        }
        self.recorder.push(*self.record);
    }
}
