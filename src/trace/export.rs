//! The span exporter: a bounded queue the request path pushes finished
//! spans into (never waiting: a full queue drops the span and counts it),
//! and a background task that takes them in batches (up to
//! [`MAX_BATCH`] spans, or what came within [`BATCH_INTERVAL`] of the
//! first) and posts each batch to the OTLP/HTTP endpoint as JSON. A failed
//! post drops its batch (counted) and the task waits before the next one,
//! doubling up to [`MAX_BACKOFF`], so a collector that is down costs the
//! request path nothing but the drops.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::otlp;
use super::span::SpanRecord;
use crate::config::OtlpEndpoint;
use crate::metrics::TraceMetrics;

/// Spans that may wait for the exporter; beyond that they are dropped.
pub const QUEUE_SPANS: usize = 4096;

/// Most spans in one export request.
pub const MAX_BATCH: usize = 512;

/// A batch goes out at the latest this long after its first span.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);

/// First wait after a failed export; doubles per failure in a row.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait after failed exports.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Limit on connecting to the collector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Limit on one export request, answer included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as what spans are exported (from `tracing:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The collector's traces URL.
    pub endpoint: OtlpEndpoint,
    /// `service.name` of the spans.
    pub service_name: String,
}

/// The queue of finished spans and its counters. Lives as long as the
/// process, outside the snapshots: a reload that changes the endpoint
/// changes where the next batch goes, not the queue.
#[derive(Debug)]
pub struct Tracer {
    queue: mpsc::Sender<SpanRecord>,
    receiver: Mutex<Option<mpsc::Receiver<SpanRecord>>>,
    metrics: TraceMetrics,
}

impl Tracer {
    /// A tracer counting in `metrics`; its exporter starts with
    /// [`Tracer::run`].
    pub fn new(metrics: TraceMetrics) -> Tracer {
        let (queue, receiver) = mpsc::channel(QUEUE_SPANS);
        Tracer {
            queue,
            receiver: Mutex::new(Some(receiver)),
            metrics,
        }
    }

    /// Hands a finished span to the exporter, or drops and counts it when
    /// the queue is full. Never waits.
    pub fn push(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.metrics.dropped.inc();
        }
    }

    /// The exporter: runs until the task is stopped. `settings` says
    /// where spans go now (read per batch, so reloads apply); a batch
    /// taken while export is off is dropped and counted.
    pub async fn run(self: Arc<Self>, settings: impl Fn() -> Option<Arc<ExportSettings>>) {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut receiver) = receiver else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut failures = 0u32;
        loop {
            if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(deadline, receiver.recv_many(&mut batch, room)).await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let spans = batch.len() as u64;
            let Some(settings) = settings() else {
                self.metrics.dropped.inc_by(spans);
                batch.clear();
                continue;
            };
            let body = otlp::encode(&settings.service_name, &batch);
            batch.clear();
            match post(&settings.endpoint, body).await {
                Ok(()) => {
                    self.metrics.exported.inc_by(spans);
                    if failures > 0 {
                        tracing::info!(endpoint = %settings.endpoint.url, "span export works again");
                    }
                    failures = 0;
                }
                Err(error) => {
                    self.metrics.export_failures.inc();
                    self.metrics.dropped.inc_by(spans);
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    // Once per outage at WARN; the rest are counted.
                    if failures == 1 {
                        tracing::warn!(endpoint = %settings.endpoint.url, %error, spans, "span export failed; dropping the batch and backing off");
                    } else {
                        tracing::debug!(endpoint = %settings.endpoint.url, %error, spans, ?wait, "span export failed again");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The wait after `failures` failed exports in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(MAX_BACKOFF)
}

/// Posts one OTLP/HTTP JSON request; any answer but 2xx is a failure.
async fn post(endpoint: &OtlpEndpoint, body: Vec<u8>) -> Result<(), String> {
    let address = (endpoint.host.as_str(), endpoint.port);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| format!("connect timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect failed: {e}"))?;
    let _ = stream.set_nodelay(true);
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = http::Request::post(endpoint.path.as_str())
            .header(http::header::HOST, endpoint.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "switchyard")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let result = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                // Read the answer (an OTLP partial-success message, or an
                // error text) so the connection ends cleanly.
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered {status}"))
                }
            }
            Err(e) => Err(format!("request failed: {e}")),
        };
        driver.abort();
        result
    };
    tokio::time::timeout(EXPORT_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {EXPORT_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
