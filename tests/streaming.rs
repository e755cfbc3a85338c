//! Large bodies stream through the proxy both ways with flat memory: the
//! proxy's peak resident memory stays far below the bytes it carried.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::binary::Process;
use common::*;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

const CHUNK: usize = 64 * 1024;
const TOTAL: u64 = 512 * 1024 * 1024;
/// Generous for `TOTAL` through a debug build on a loaded machine; a
/// transfer that stalls fails the test instead of hanging it.
const WHOLE_TRANSFER: std::time::Duration = std::time::Duration::from_secs(300);

/// `remaining` bytes of a repeated chunk, produced as they are read.
struct Repeat {
    chunk: Bytes,
    remaining: u64,
}

impl Repeat {
    fn new(total: u64) -> Repeat {
        Repeat {
            chunk: Bytes::from(vec![b'x'; CHUNK]),
            remaining: total,
        }
    }
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_gigabyte_each_way_with_flat_memory() {
    // The upstream counts uploads without keeping them (the echo server)
    // and streams downloads from a generator.
    let sink = echo("sink").await;
    let source = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Repeat::new(TOTAL)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        address
    };
    let process = Process::start(
        &format!(
            "listeners:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nroutes:\n  - path_prefix: /up\n    service: sink\n  - path_prefix: /down\n    service: source\nservices:\n  sink: {{request_timeout: 120s, instances: [{{address: \"{sink}\"}}]}}\n  source: {{instances: [{{address: \"{source}\"}}]}}\n"
        ),
        &[],
    );
    let baseline = process.peak_rss_kib();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Repeat>();

    let upload = Request::post(format!("http://{}/up", process.listener))
        .body(Repeat::new(TOTAL))
        .unwrap();
    let uploaded = async {
        let response = client.request(upload).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    };
    let text = tokio::time::timeout(WHOLE_TRANSFER, uploaded)
        .await
        .expect("the upload within its time");
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains(&format!("body_bytes: {TOTAL}")), "{text}");

    let download = Request::get(format!("http://{}/down", process.listener))
        .body(Repeat::new(0))
        .unwrap();
    let downloaded = async {
        let mut body = client.request(download).await.unwrap().into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        }
        received
    };
    let received = tokio::time::timeout(WHOLE_TRANSFER, downloaded)
        .await
        .expect("the download within its time");
    assert_eq!(received, TOTAL);

    let peak = process.peak_rss_kib();
    eprintln!("proxy peak RSS: {baseline} KiB at start, {peak} KiB after 1 GiB carried");
    assert!(
        peak < baseline + 64 * 1024,
        "proxy memory grew with the body: {baseline} KiB → {peak} KiB"
    );
}
