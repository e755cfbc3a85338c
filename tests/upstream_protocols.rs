//! Upstreams over HTTP/2 and over TLS: a gRPC-style exchange (HTTP/2 end to
//! end, request and response trailers) passes through, and TLS to an
//! instance verifies its certificate against the configured CA.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// An HTTP/2-only upstream shaped like a gRPC server: it answers with the
/// HTTP version and the request's `te` header and trailer in the body, and
/// sends `grpc-status` as a response trailer.
async fn grpc_like_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let version = format!("{:?}", request.version());
                    let te = request
                        .headers()
                        .get("te")
                        .map(|v| v.to_str().unwrap().to_string());
                    let collected = request.into_body().collect().await.unwrap();
                    let trailer = collected
                        .trailers()
                        .and_then(|t| t.get("x-request-trailer"))
                        .map(|v| v.to_str().unwrap().to_string());
                    let text = format!(
                        "version={version} te={te:?} trailer={trailer:?} body={}",
                        collected.to_bytes().len()
                    );
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let body = Full::new(Bytes::from(text))
                        .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(trailers))));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_style_call_passes_through_with_trailers() {
    let upstream = grpc_like_upstream().await;
    let proxy = proxy(&format!(
        "routes:\n  - service: grpc\nservices:\n  grpc: {{protocol: http2, instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    // An HTTP/2 client (h2c) with a request body and a request trailer.
    let mut sender = h2c(proxy.listeners()[0].address).await;
    for _ in 0..3 {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-request-trailer", HeaderValue::from_static("sent"));
        let body = Full::new(Bytes::from_static(b"\0\0\0\0\x05hello"))
            .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(trailers))));
        let request = Request::post("http://grpc.test/pkg.Service/Method")
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("response trailers reach the client");
        assert_eq!(trailers["grpc-status"], "0");
        let text = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
        assert_eq!(
            text,
            "version=HTTP/2.0 te=Some(\"trailers\") trailer=Some(\"sent\") body=10"
        );
    }
}

/// A CA, and a certificate for `name` signed by it: (CA PEM, cert PEM, key PEM).
fn ca_and_leaf(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// An HTTP/1.1 echo upstream behind TLS with the given certificate.
async fn tls_upstream(cert_pem: &str, key_pem: &str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_request: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"secret upstream",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_upstreams_is_verified_against_the_configured_ca() {
    let (ca, cert, key) = ca_and_leaf("up.test");
    let (other_ca, _, _) = ca_and_leaf("up.test");
    let upstream = tls_upstream(&cert, &key).await;
    let dir = common::binary::temp_dir();
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other_ca).unwrap();
    let d = dir.display();
    let proxy = proxy(&format!(
        "error_detail: full\nroutes:\n  - {{host: good.test, service: good}}\n  - {{host: wrong.test, service: wrong}}\n  - {{host: lax.test, service: lax}}\nservices:\n  good: {{tls: {{ca_file: {d}/ca.pem, server_name: up.test}}, retry: {{max_attempts: 1}}, instances: [{{address: \"{upstream}\"}}]}}\n  wrong: {{tls: {{ca_file: {d}/other-ca.pem, server_name: up.test}}, retry: {{max_attempts: 1}}, instances: [{{address: \"{upstream}\"}}]}}\n  lax: {{tls: {{ca_file: {d}/other-ca.pem, server_name: up.test, verify: false}}, instances: [{{address: \"{upstream}\"}}]}}\n"
    ))
    .await;
    let client = client();
    let url = format!("{}/", base(&proxy));
    let good = get(&client, &url, &[("host", "good.test")]).await;
    assert_eq!((good.status, good.body.as_str()), (200, "secret upstream"));
    let wrong = get(&client, &url, &[("host", "wrong.test")]).await;
    assert_eq!(
        wrong.status, 502,
        "an untrusted certificate is refused: {}",
        wrong.body
    );
    assert!(wrong.body.contains("TLS with"), "{}", wrong.body);
    let lax = get(&client, &url, &[("host", "lax.test")]).await;
    assert_eq!(lax.status, 200, "verify: false accepts it: {}", lax.body);

    let errors = switchyard::config::parse(
        "listeners: [{address: 127.0.0.1:0}]\nservices:\n  s: {tls: {ca_file: /nonexistent/ca.pem}, protocol: http3}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        errors.contains("services.s.protocol: `http3` must be http1 or http2"),
        "{errors}"
    );
    assert!(
        errors.contains("services.s.tls.ca_file: cannot read `/nonexistent/ca.pem`"),
        "{errors}"
    );
}
