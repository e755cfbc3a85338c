//! A small HTTP client for the admin API, used by `switchyard config …`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends one request to the admin API at `admin` and returns the status and
/// body text.
pub async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, String), String> {
    call_with(admin, method, path, None, None).await
}

/// Like [`call`], with a bearer token and a JSON body.
pub async fn call_with(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    json: Option<&serde_json::Value>,
) -> Result<(StatusCode, String), String> {
    let body = json.map(|json| ("application/json", Bytes::from(json.to_string())));
    call_raw(admin, method, path, token, body).await
}

/// Like [`call`], with a bearer token and a body of the given content type.
pub async fn call_raw(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Bytes)>,
) -> Result<(StatusCode, String), String> {
    exchange(admin, method, path, token, body)
        .await
        .map(|answer| (answer.status, answer.body))
}

/// One whole answer of the admin API.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body, as text.
    pub body: String,
}

/// Like [`call_raw`], with the answer's headers.
pub async fn exchange(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Bytes)>,
) -> Result<Answer, String> {
    let exchange = async {
        let stream = TcpStream::connect(admin).await.map_err(|e| {
            format!("cannot reach the admin API at {admin}: {e} (is switchyard running?)")
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("admin API at {admin}: {e}"))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, admin.to_string());
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(http::header::CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| format!("bad admin request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("admin API at {admin}: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("admin API at {admin}: {e}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the admin API at {admin} did not answer within 60s"
            ))
        })
}
