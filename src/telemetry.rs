//! Logging set-up: tracing to stderr, text or one JSON object per line
//! (the access log has its own writer, see [`crate::access_log`]). Text
//! lines carry colour codes only when stderr is a terminal and `NO_COLOR`
//! is not set.
//!
//! Lines are written by a background thread, so a request never waits for
//! stderr (a pipe or a log shipper can be slow), in batches of whatever
//! has queued up; the queue holds up to
//! [`QUEUED_LINES`] lines and, when full, makes the writer wait rather than
//! drop lines.

use std::ffi::OsStr;
use std::io::IsTerminal;

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
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
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

/// Colour codes only for a person at a terminal, and never when `NO_COLOR`
/// is set to anything but the empty string (<https://no-color.org>): a file
/// or a pipe to a log shipper gets plain text.
fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }
}
