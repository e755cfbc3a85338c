//! Running the real `switchyard` binary in a test.
#![allow(unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A fresh directory for one test's files.
pub fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    // Left by an earlier test process that had the same id (ids are
    // reused): its files (a version history) would not be fresh.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The binary under test.
pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// Sends a signal (`TERM`, `STOP`, `KILL`, ...) to `child`.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// A running proxy process, killed when dropped.
pub struct Process {
    pub child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `switchyard run` on `config_text` (written to a fresh
    /// directory) with JSON logs and `args`, and waits until both listeners
    /// are up.
    pub fn start(config_text: &str, args: &[&str]) -> Process {
        let dir = temp_dir();
        std::fs::write(dir.join("proxy.yaml"), config_text).unwrap();
        Process::start_in(&dir, args)
    }

    /// Starts `switchyard run` on the `proxy.yaml` already in `dir`.
    pub fn start_in(dir: &std::path::Path, args: &[&str]) -> Process {
        let path = dir.join("proxy.yaml");
        let mut command = command();
        command
            .args(["run", "--log-format", "json", "-c"])
            .arg(&path)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                lines.lock().unwrap().push(line);
            }
        });
        let (mut listener, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while listener.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("proxy did not report its listeners");
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let address = event["address"].as_str().and_then(|a| a.parse().ok());
            match event["message"].as_str() {
                Some("listening") => listener = address,
                Some("admin API listening") => admin = address,
                _ => {}
            }
        }
        Process {
            child,
            dir: dir.to_path_buf(),
            config_path: path,
            listener: listener.unwrap(),
            admin: admin.unwrap(),
            log,
        }
    }

    /// Sends a signal (`TERM`, `HUP`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }

    /// Peak resident memory of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Runs `switchyard config --admin ADMIN ARGS…` off the runtime; its exit
/// code and everything it printed.
pub async fn config_cli(admin: SocketAddr, args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = command()
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .args(["config", "--admin", &admin.to_string()])
            .args(&args)
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    })
    .await
    .unwrap()
}
