//! Background traffic for tests that judge a stream of requests (guarded
//! changes on one node and in a fleet).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::Full;

/// Requests sent in the background to one URL until stopped (2 minutes
/// at most); each status kept.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<Vec<u16>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(url: String, concurrency: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..concurrency)
            .map(|_| {
                let (stop, statuses, url) = (Arc::clone(&stop), Arc::clone(&statuses), url.clone());
                tokio::spawn(async move {
                    let client = super::client();
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(120)
                    {
                        let request = Request::get(&url).body(Full::default()).unwrap();
                        let status = super::try_send(&client, request)
                            .await
                            .map_or(0, |(s, _)| s);
                        statuses.lock().unwrap().push(status);
                        tokio::time::sleep(Duration::from_millis(4)).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            statuses,
            tasks,
        }
    }

    pub fn count(&self) -> usize {
        self.statuses.lock().unwrap().len()
    }

    /// Waits until at least `n` more requests finished (30 s at most).
    pub async fn wait_for(&self, n: usize) {
        let target = self.count() + n;
        let started = Instant::now();
        while self.count() < target {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "traffic too slow: {} of {target} requests",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.statuses)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}
