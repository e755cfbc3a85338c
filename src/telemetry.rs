//! Logging set-up: tracing to stderr, text or one JSON object per line.
//!
//! Lines are written by a background thread, so a request never waits for
//! stderr (a pipe or a log shipper can be slow), in batches of whatever
//! has queued up; the queue holds up to
//! [`QUEUED_LINES`] lines and, when full, makes the writer wait rather than
//! drop lines.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Log lines that may wait for the writer thread.
pub const QUEUED_LINES: usize = 128 * 1024;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `RUST_LOG` (per-module filters such as
/// `info,switchyard::access=off`) wins over `level` when set. Keep the
/// returned guard until exit: dropping it flushes the queued lines.
pub fn init(format: LogFormat, level: &str) -> Result<WorkerGuard, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| format!("RUST_LOG `{spec}` is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(level)
            .map_err(|e| format!("--log-level `{level}` is not a valid filter: {e}"))?,
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("switchyard-log")
        // The thread drains the whole queue into this buffer before it
        // flushes, so under load many lines go out in one write, and a lone
        // line still goes out at once.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(guard)
}
