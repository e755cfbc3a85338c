//! The log thread and where it writes: stderr or a file opened for append.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::{lock, LogError, FLUSH_BYTES, QUEUED_BATCHES};
use crate::config::LogDestination;

/// At most one "cannot write" error line this often.
const WRITE_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where lines go.
#[derive(Debug)]
pub(super) enum Output {
    Stderr,
    File { path: PathBuf, file: File },
}

impl Output {
    pub(super) fn open(destination: &LogDestination) -> Result<Output, LogError> {
        match destination {
            LogDestination::Stderr => Ok(Output::Stderr),
            LogDestination::File(path) => Ok(Output::File {
                path: path.clone(),
                file: open_append(path)?,
            }),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            // Through std's lock, so a batch never interleaves with the
            // text log's lines, which take the same lock.
            Output::Stderr => std::io::stderr().lock().write_all(bytes),
            Output::File { file, .. } => file.write_all(bytes),
        }
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.display().to_string(),
            source,
        })
}

enum Message {
    Batch {
        bytes: Vec<u8>,
        lines: u64,
    },
    /// Answered once everything sent before it has been written.
    Written(mpsc::Sender<()>),
}

/// The sending side of the log thread; the thread ends when this is dropped.
#[derive(Debug)]
pub(super) struct Sink {
    sender: SyncSender<Message>,
    output: Arc<Mutex<Output>>,
    /// Written buffers, kept for reuse so batches do not allocate.
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    dropped: Counter,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Batch { lines, .. } => write!(f, "Batch({lines} lines)"),
            Message::Written(_) => f.write_str("Written"),
        }
    }
}

impl Sink {
    pub(super) fn start(output: Output, dropped: Counter) -> Result<Sink, LogError> {
        Sink::with_queue(output, dropped, QUEUED_BATCHES)
    }

    fn with_queue(output: Output, dropped: Counter, queue: usize) -> Result<Sink, LogError> {
        let (sender, receiver) = mpsc::sync_channel(queue);
        let output = Arc::new(Mutex::new(output));
        let free = Arc::new(Mutex::new(Vec::new()));
        let thread = Writer {
            receiver,
            output: Arc::clone(&output),
            free: Arc::clone(&free),
            dropped: dropped.clone(),
            last_error_logged: None,
        };
        std::thread::Builder::new()
            .name("switchyard-access-log".into())
            .spawn(move || thread.run())
            .map_err(LogError::Thread)?;
        Ok(Sink {
            sender,
            output,
            free,
            dropped,
        })
    }

    /// Hands `bytes` (`lines` lines) to the log thread and leaves an empty
    /// buffer in its place; drops and counts them if the queue is full.
    pub(super) fn send(&self, bytes: &mut Vec<u8>, lines: &mut u64) {
        let spare = lock(&self.free)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FLUSH_BYTES + FLUSH_BYTES / 4));
        let batch = Message::Batch {
            bytes: std::mem::replace(bytes, spare),
            lines: std::mem::take(lines),
        };
        match self.sender.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Batch { mut bytes, lines }))
            | Err(TrySendError::Disconnected(Message::Batch { mut bytes, lines })) => {
                self.dropped.inc_by(lines);
                bytes.clear();
                lock(&self.free).push(bytes);
            }
            Err(_) => {}
        }
    }

    pub(super) fn writes_to(&self, path: &Path) -> bool {
        matches!(&*lock(&self.output), Output::File { path: current, .. } if current == path)
    }

    pub(super) fn writes_to_stderr(&self) -> bool {
        matches!(&*lock(&self.output), Output::Stderr)
    }

    pub(super) fn replace(&self, output: Output) {
        *lock(&self.output) = output;
    }

    pub(super) fn reopen(&self) -> Result<Option<PathBuf>, LogError> {
        let path = match &*lock(&self.output) {
            Output::File { path, .. } => path.clone(),
            Output::Stderr => return Ok(None),
        };
        // Opened outside the lock: the log thread keeps writing meanwhile.
        let file = open_append(&path)?;
        let mut output = lock(&self.output);
        // Unless a reload moved the log in the meantime.
        if let Output::File {
            path: current,
            file: old,
        } = &mut *output
        {
            if *current == path {
                *old = file;
            }
        }
        Ok(Some(path))
    }

    pub(super) fn wait_written(&self, limit: Duration) {
        let (done, written) = mpsc::channel();
        let deadline = Instant::now() + limit;
        let mut message = Message::Written(done);
        // The queue may be full; bounded retries instead of a blocking send.
        loop {
            match self.sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// The log thread's state.
struct Writer {
    receiver: Receiver<Message>,
    output: Arc<Mutex<Output>>,
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    dropped: Counter,
    last_error_logged: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        while let Ok(message) = self.receiver.recv() {
            match message {
                Message::Batch { mut bytes, lines } => {
                    let written = lock(&self.output).write_all(&bytes);
                    if let Err(error) = written {
                        self.dropped.inc_by(lines);
                        let quiet = self
                            .last_error_logged
                            .is_some_and(|at| at.elapsed() < WRITE_ERROR_LOG_INTERVAL);
                        if !quiet {
                            self.last_error_logged = Some(Instant::now());
                            tracing::error!(%error, lines, "cannot write the access log; lines dropped");
                        }
                    }
                    bytes.clear();
                    let mut free = lock(&self.free);
                    // Enough spares for a full queue; odd big ones are let go.
                    if free.len() < QUEUED_BATCHES && bytes.capacity() <= 2 * FLUSH_BYTES {
                        free.push(bytes);
                    }
                }
                Message::Written(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::Read;
    use std::os::fd::AsRawFd;

    use super::*;

    /// A reader that stops reading (a stuck log shipper on a pipe) costs
    /// lines, counted, never a wait on the request path.
    #[test]
    fn a_stuck_reader_drops_and_counts_lines_instead_of_blocking() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let path = PathBuf::from(format!("/proc/self/fd/{}", writer.as_raw_fd()));
        let output = Output::open(&LogDestination::File(path)).unwrap();
        let dropped = Counter::default();
        let sink = Sink::with_queue(output, dropped.clone(), 2).unwrap();
        // Each batch is larger than a pipe's buffer, so the thread blocks in
        // its first write and the queue of two fills behind it.
        let (done, finished) = mpsc::channel();
        let sends = std::thread::spawn(move || {
            for _ in 0..20 {
                let mut bytes = vec![b'x'; 256 * 1024];
                let mut lines = 10;
                sink.send(&mut bytes, &mut lines);
                assert!(bytes.is_empty() && lines == 0);
            }
            let _ = done.send(());
            sink
        });
        finished
            .recv_timeout(Duration::from_secs(20))
            .expect("sending blocked behind a stuck reader");
        // At most the batch in the write and the two queued got through.
        assert!(dropped.get() >= 170, "dropped {}", dropped.get());
        let sink = sends.join().unwrap();
        drop(sink);
        // The reader resumes: the thread finishes its writes and ends.
        let mut all = Vec::new();
        drop(writer);
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, (200 - dropped.get()) / 10 * 256 * 1024);
    }
}
