//! The access log: one line per request, written when its response ends.
//!
//! The request path fills a fixed [`Record`] (cheap clones of what the
//! request already holds: header values, the URI, interned names; no text
//! is built for it) and hands it to [`AccessLog::emit`], which formats it by
//! hand into the buffer of the calling thread's slot. A slot's buffer goes
//! to the log thread whole, when it passes [`FLUSH_BYTES`] or at the latest
//! [`FLUSH_INTERVAL`] after its first line (like nginx's `buffer=` and
//! `flush=`), and the log thread writes each buffer with one `write`. A
//! flush per scheduler round instead meant a write of a few lines each and
//! cost 10–30% of throughput; appends to a file pay per `write`, not per
//! byte.
//!
//! The queue to the log thread holds [`QUEUED_BATCHES`] buffers. When it is
//! full (the disk or the reader of stderr is slower than the traffic), the
//! buffer's lines are dropped and counted in
//! `switchyard_access_log_dropped_total` rather than stalling requests: a
//! proxy that blocks on its log takes the whole site down with a slow disk.
//!
//! The log follows the tracing filter as it always did: it is written only
//! when the filter lets target [`TARGET`] through at `info` (so
//! `RUST_LOG=info,switchyard::access=off` or `--log-level warn` turn it
//! off); `access_log.enabled: false` in proxy.yaml does the same, live.

mod format;
mod sink;

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use prometheus_client::metrics::counter::Counter;

use crate::config::{AccessLogConfig, AccessLogFormat, InstanceId, LogDestination, ServiceName};
use sink::{Output, Sink};

/// The tracing target whose filter turns the access log on and off.
pub const TARGET: &str = "switchyard::access";

/// A slot's buffer goes to the log thread once it holds this much.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// A line waits at most this long in a slot's buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Buffers that may wait for the log thread; beyond that, lines are dropped
/// (and counted). With [`FLUSH_BYTES`], about 8 MiB at most.
pub const QUEUED_BATCHES: usize = 128;

/// What the access log records of one request. Filled on the request path
/// by moving or cheaply cloning what the request holds.
#[derive(Debug)]
pub struct Record {
    /// The log it is for.
    pub log: Arc<AccessLog>,
    /// The request method.
    pub method: Method,
    /// The host that routed the request (or the `Host` as sent, when refused).
    pub host: Option<HeaderValue>,
    /// The request target as received.
    pub uri: Uri,
    /// The client's HTTP version.
    pub version: Version,
    /// The response status (0 until known).
    pub status: u16,
    /// The routed service.
    pub service: Option<ServiceName>,
    /// The instance that answered (or was tried last).
    pub instance: Option<InstanceId>,
    /// Time from sending to the upstream until its response head.
    pub upstream_time: Option<Duration>,
    /// When the request arrived.
    pub started: Instant,
    /// The request id sent upstream and back.
    pub request_id: HeaderValue,
    /// The trace the request belongs to (W3C Trace Context).
    pub trace_id: u128,
    /// The proxy's span for the request.
    pub span_id: u64,
    /// The client's address (from `X-Forwarded-For` of trusted proxies).
    pub client_ip: IpAddr,
    /// `Referer`, kept only for the combined format.
    pub referer: Option<HeaderValue>,
    /// `User-Agent`, kept only for the combined format.
    pub user_agent: Option<HeaderValue>,
}

impl Record {
    /// Writes the line. `complete` is false when the response was cut off.
    pub fn emit(&self, bytes: u64, complete: bool) {
        self.log.emit(self, bytes, complete);
    }
}

/// One slot's pending lines.
#[derive(Debug, Default)]
struct Slot {
    bytes: Vec<u8>,
    lines: u64,
    clock: format::Clock,
    /// A flush is scheduled for [`FLUSH_INTERVAL`] from its first line.
    timer: bool,
}

/// The access log of one running proxy.
#[derive(Debug)]
pub struct AccessLog {
    /// Enabled in the config, allowed by the filter, and with somewhere to go.
    active: AtomicBool,
    format: AtomicU8,
    /// Per-thread buffers: each thread takes a slot by a number it drew once,
    /// so workers do not share one (a shared one would only cost a wait).
    slots: Box<[Mutex<Slot>]>,
    sink: Sink,
    filter: Filter,
}

/// What the tracing filter says, read once at start-up (the filter is the
/// process's and does not change).
#[derive(Debug, Clone, Copy)]
struct Filter {
    /// A subscriber is installed (the binary always installs one).
    subscriber: bool,
    /// It lets [`TARGET`] through at info.
    allows: bool,
}

impl Filter {
    fn now() -> Filter {
        Filter {
            subscriber: tracing::dispatcher::has_been_set(),
            allows: tracing::enabled!(target: TARGET, tracing::Level::INFO),
        }
    }

    /// Whether lines to `destination` are wanted. A library user who
    /// installed no subscriber gets no lines on stderr (as before), but
    /// does get the file the config names.
    fn wants(self, destination: &LogDestination) -> bool {
        match destination {
            LogDestination::Stderr => self.subscriber && self.allows,
            LogDestination::File(_) => self.allows || !self.subscriber,
        }
    }
}

/// A config's destination opened ahead of applying it, so that a path that
/// cannot be opened fails a reload before anything changes.
#[derive(Debug)]
pub struct Prepared {
    config: AccessLogConfig,
    /// A file to switch to (None: keep the current output, or stderr).
    output: Option<Output>,
}

/// Why the access log cannot start or go where the config says.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file cannot be opened for append.
    #[error("access_log.path: cannot open `{path}`: {source}")]
    Open {
        /// The path as configured.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The log thread cannot be started.
    #[error("cannot start the access-log thread: {0}")]
    Thread(std::io::Error),
}

thread_local! {
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

fn slot_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SLOT.with(|slot| match slot.get() {
        Some(number) => number,
        None => {
            let number = NEXT.fetch_add(1, Ordering::Relaxed);
            slot.set(Some(number));
            number
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn format_code(format: AccessLogFormat) -> u8 {
    match format {
        AccessLogFormat::Json => 0,
        AccessLogFormat::Combined => 1,
    }
}

impl AccessLog {
    /// Opens the destination `config` names and starts the log thread.
    /// `threads` is how many threads emit lines (one slot each).
    pub fn start(
        config: &AccessLogConfig,
        threads: usize,
        dropped: Counter,
    ) -> Result<Arc<AccessLog>, LogError> {
        let output = Output::open(&config.destination)?;
        let slots = (0..threads.max(1))
            .map(|_| Mutex::new(Slot::default()))
            .collect();
        let log = AccessLog {
            active: AtomicBool::new(false),
            format: AtomicU8::new(format_code(config.format)),
            slots,
            sink: Sink::start(output, dropped)?,
            filter: Filter::now(),
        };
        log.set_active(config);
        Ok(Arc::new(log))
    }

    fn set_active(&self, config: &AccessLogConfig) {
        let active = config.enabled && self.filter.wants(&config.destination);
        self.active.store(active, Ordering::Relaxed);
    }

    /// Whether requests should fill a record at all.
    pub fn enabled(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether records should keep `Referer` and `User-Agent`.
    pub fn wants_agent(&self) -> bool {
        self.format.load(Ordering::Relaxed) == format_code(AccessLogFormat::Combined)
    }

    /// Opens what `config` needs that is not open yet (a new file).
    pub fn prepare(&self, config: &AccessLogConfig) -> Result<Prepared, LogError> {
        let output = match &config.destination {
            LogDestination::File(path) if !self.sink.writes_to(path) => {
                Some(Output::open(&config.destination)?)
            }
            _ => None,
        };
        Ok(Prepared {
            config: config.clone(),
            output,
        })
    }

    /// Applies a prepared config: format, on/off and destination at once.
    /// Lines already queued go to the new destination.
    pub fn commit(&self, prepared: Prepared) {
        let config = prepared.config;
        match (prepared.output, &config.destination) {
            (Some(output), _) => self.sink.replace(output),
            (None, LogDestination::Stderr) if !self.sink.writes_to_stderr() => {
                self.sink.replace(Output::Stderr)
            }
            _ => {}
        }
        self.format
            .store(format_code(config.format), Ordering::Relaxed);
        self.set_active(&config);
    }

    /// Reopens the log file at its path (after logrotate moved it away):
    /// lines written from now on go to a fresh file there. Returns the path,
    /// or None when the log goes to stderr.
    pub fn reopen(&self) -> Result<Option<std::path::PathBuf>, LogError> {
        self.sink.reopen()
    }

    /// Writes one request's line.
    fn emit(self: &Arc<Self>, record: &Record, bytes: u64, complete: bool) {
        let end = format::End {
            now: SystemTime::now(),
            total: record.started.elapsed(),
            bytes,
            complete,
        };
        let index = slot_number() % self.slots.len();
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let mut guard = lock(slot);
        let slot = &mut *guard;
        if self.wants_agent() {
            format::combined(&mut slot.bytes, &mut slot.clock, record, &end);
        } else {
            format::json(&mut slot.bytes, &mut slot.clock, record, &end);
        }
        slot.lines += 1;
        if slot.bytes.len() >= FLUSH_BYTES {
            self.sink.send(&mut slot.bytes, &mut slot.lines);
        } else if !slot.timer {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    slot.timer = true;
                    drop(guard);
                    let log = Arc::clone(self);
                    runtime.spawn(async move {
                        tokio::time::sleep(FLUSH_INTERVAL).await;
                        log.flush_slot(index, true);
                    });
                }
                // No timers outside a runtime: out at once.
                Err(_) => self.sink.send(&mut slot.bytes, &mut slot.lines),
            }
        }
    }

    /// Sends slot `index`'s lines to the log thread; `timer` when its
    /// scheduled flush runs (a new line schedules the next one).
    fn flush_slot(&self, index: usize, timer: bool) {
        if let Some(slot) = self.slots.get(index) {
            let slot = &mut *lock(slot);
            if timer {
                slot.timer = false;
            }
            if slot.lines > 0 {
                self.sink.send(&mut slot.bytes, &mut slot.lines);
            }
        }
    }

    /// Sends every pending line to the log thread and waits (up to
    /// `limit`) until it has written them; for shutdown and tests.
    pub fn flush(&self, limit: Duration) {
        for index in 0..self.slots.len() {
            self.flush_slot(index, false);
        }
        self.sink.wait_written(limit);
    }
}
