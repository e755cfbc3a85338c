//! Real etcd members for the fleet tests: each on loopback ports picked
//! free by the OS, with its own data directory, killed by PID when
//! dropped. A single member or a 3-member cluster.
#![allow(unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary (Debian's `etcd-server`).
pub const ETCD: &str = "/usr/bin/etcd";

/// Whether etcd is installed; tests that need it say SKIPPED otherwise.
pub fn available() -> bool {
    std::path::Path::new(ETCD).exists()
}

/// A port free right now (bound, then released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One etcd member process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    initial_cluster: String,
    /// Certificate and key files: clients speak TLS to it.
    tls: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
}

impl Member {
    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:PORT`, as a proxy.yaml endpoint.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.data_dir.with_extension("log")).unwrap();
        let mut command = Command::new(ETCD);
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        let child = command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(format!("switchyard-test-{}", std::process::id()))
            // Short election timing: member loss is noticed quickly.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// Kills the member (SIGKILL, by PID) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(self.data_dir.with_extension("log"));
    }
}

/// One or more members forming one cluster.
pub struct Etcd {
    pub members: Vec<Member>,
}

impl Etcd {
    /// A single member.
    pub async fn start() -> Etcd {
        Etcd::cluster(1).await
    }

    /// `size` members forming one cluster; returns once it answers.
    pub async fn cluster(size: usize) -> Etcd {
        Etcd::start_members(size, None).await
    }

    /// A single member whose clients must speak TLS; `cert` must name
    /// 127.0.0.1 and be its own CA.
    pub async fn start_tls(cert: PathBuf, key: PathBuf) -> Etcd {
        Etcd::start_members(1, Some((cert, key))).await
    }

    async fn start_members(size: usize, tls: Option<(PathBuf, PathBuf)>) -> Etcd {
        let base = super::binary::temp_dir();
        let mut members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: base.join(format!("m{i}.etcd")),
                initial_cluster: String::new(),
                tls: None,
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for member in &mut members {
            member.initial_cluster = initial_cluster.clone();
            member.tls = tls.clone();
            member.spawn();
        }
        let etcd = Etcd { members };
        etcd.wait_ready(Duration::from_secs(30)).await;
        etcd
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The endpoints as a YAML flow list of `127.0.0.1:PORT`.
    pub fn yaml_endpoints(&self) -> String {
        let list: Vec<String> = self.members.iter().map(Member::address).collect();
        format!("[{}]", list.join(", "))
    }

    /// A client of the running members.
    pub async fn client(&self) -> etcd_client::Client {
        let endpoints: Vec<String> = self.members.iter().map(Member::endpoint).collect();
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some((cert, _)) = &self.members[0].tls {
            let pem = std::fs::read(cert).unwrap();
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(pem)),
            );
        }
        etcd_client::Client::connect(endpoints, Some(options))
            .await
            .expect("etcd client")
    }

    /// Waits until a write goes through (a leader exists), up to `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let mut client = self.client().await;
            let put = tokio::time::timeout(
                Duration::from_secs(2),
                client.put("/switchyard-test/ready", "1", None),
            )
            .await;
            if matches!(put, Ok(Ok(_))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become ready within {limit:?}; see its log next to {}",
                self.members[0].data_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
