//! `switchyard demo`: small echo upstreams on loopback. Each answers with
//! its own name, the request's method, path and headers, and how many body
//! bytes it read, and names itself in an `x-served-by` header.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Starts an echo server named `name` on `address`; returns the bound
/// address. It runs until the runtime stops.
pub async fn start_echo(name: &str, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let name: Arc<str> = Arc::from(name);
    tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let name = Arc::clone(&name);
            let builder = Arc::clone(&builder);
            tokio::spawn(async move {
                let service = service_fn(move |request| echo(Arc::clone(&name), request));
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn echo(
    name: Arc<str>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = request.into_parts();
    // Count the body without keeping it, so large uploads use no memory.
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let mut text = format!(
        "instance: {name}\nmethod: {}\npath: {}\nbody_bytes: {body_bytes}\nheaders:\n",
        parts.method,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
    );
    for (header, value) in &parts.headers {
        text.push_str(&format!(
            "  {header}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    if let Ok(value) = http::HeaderValue::from_str(&name) {
        response.headers_mut().insert("x-served-by", value);
    }
    Ok(response)
}
