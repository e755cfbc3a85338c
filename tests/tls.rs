//! TLS termination with certificates generated in the test (rcgen): SNI
//! picks the certificate (seen from the client), ALPN negotiates h2, a
//! reload replaces certificates for new connections while an open one keeps
//! working, and a bad certificate is refused with the old one still served.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

fn client_config(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        // The tests compare the certificate they get with the one they
        // expect, byte for byte, which says more than a chain check would.
        .with_custom_certificate_verifier(switchyard::tls::accept_any_certificate(provider))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(
    address: std::net::SocketAddr,
    server_name: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let stream = TcpStream::connect(address).await.unwrap();
    TlsConnector::from(client_config(alpn))
        .connect(
            ServerName::try_from(server_name.to_string()).unwrap(),
            stream,
        )
        .await
        .unwrap()
}

fn leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Writes a new self-signed certificate for `names`; returns its DER.
fn write_cert(dir: &Path, file: &str, names: &[&str]) -> Vec<u8> {
    let generated =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(dir.join(format!("{file}.pem")), generated.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{file}.key")),
        generated.signing_key.serialize_pem(),
    )
    .unwrap();
    generated.cert.der().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_certificate_reload_and_bad_certificates() {
    let upstream = echo("up").await;
    let dir = common::binary::temp_dir();
    let cert_a = write_cert(&dir, "a", &["a.test"]);
    let cert_b = write_cert(&dir, "b", &["b.test", "*.b.test"]);
    let d = dir.display();
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{cert: {d}/a.pem, key: {d}/a.key, server_names: [a.test]}}\n        - {{cert: {d}/b.pem, key: {d}/b.key, server_names: [b.test, \"*.b.test\"]}}\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    );
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut options = switchyard::server::LiveOptions::new(&path);
    options.watch = false;
    let proxy = switchyard::server::start_live(options).await.unwrap();
    let address = proxy.listeners()[0].address;

    // SNI picks the certificate; an unknown name gets the first one.
    assert_eq!(
        leaf(&connect(address, "a.test", &[b"http/1.1"]).await),
        cert_a
    );
    assert_eq!(
        leaf(&connect(address, "b.test", &[b"http/1.1"]).await),
        cert_b
    );
    assert_eq!(
        leaf(&connect(address, "x.b.test", &[b"http/1.1"]).await),
        cert_b
    );
    assert_eq!(
        leaf(&connect(address, "other.test", &[b"http/1.1"]).await),
        cert_a
    );

    // ALPN h2: an HTTP/2 request over TLS, forwarded with the right proto.
    let tls = connect(address, "a.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let ask = |h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>| {
        let request = Request::get("https://a.test/secure")
            .body(Full::default())
            .unwrap();
        let response = h2.send_request(request);
        async move {
            let response = response.await.unwrap();
            assert_eq!(response.version(), http::Version::HTTP_2);
            String::from_utf8(
                response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap()
        }
    };
    let body = ask(&mut h2).await;
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(body.contains("path: /secure"), "{body}");

    // HTTP/1.1 over TLS works too.
    let tls = connect(address, "a.test", &[b"http/1.1"]).await;
    let (mut h1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = h1
        .send_request(
            Request::get("/")
                .header("host", "a.test")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // New certificate files, same proxy.yaml: a reload applies them to new
    // connections, and the open HTTP/2 connection keeps working.
    let cert_a2 = write_cert(&dir, "a", &["a.test"]);
    let (status, body) = common::admin::call(proxy.admin_address(), Method::POST, "/admin/reload")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("TLS certificates changed"), "{body}");
    // Recorded as a version of its own, whose cause names the file and the
    // new leaf's SHA-256 fingerprint (as `openssl x509 -fingerprint` shows).
    let (status, versions) =
        common::admin::call(proxy.admin_address(), Method::GET, "/admin/config/versions")
            .await
            .unwrap();
    assert_eq!(status, 200, "{versions}");
    let versions: serde_json::Value = serde_json::from_str(&versions).unwrap();
    let list = versions["versions"].as_array().unwrap();
    assert_eq!(
        list.len(),
        2,
        "start-up and the certificate reload: {versions}"
    );
    assert_eq!(versions["current"], list[1]["version"], "{versions}");
    let fingerprint = <sha2::Sha256 as sha2::Digest>::digest(&cert_a2)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let cause = list[1]["cause"].as_str().unwrap();
    assert!(
        cause.contains(&format!(
            "{d}/a.pem (sha256 {fingerprint}) with key {d}/a.key"
        )),
        "{cause}"
    );
    assert!(!cause.contains("b.pem"), "b did not change: {cause}");
    assert_eq!(
        leaf(&connect(address, "a.test", &[b"http/1.1"]).await),
        cert_a2
    );
    assert!(ask(&mut h2).await.contains("path: /secure"));

    // A broken certificate is refused; the last good one keeps serving.
    std::fs::write(
        dir.join("a.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (status, body) = common::admin::call(proxy.admin_address(), Method::POST, "/admin/reload")
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("listeners[0].tls.certificates[0].cert"),
        "{body}"
    );
    assert_eq!(
        leaf(&connect(address, "a.test", &[b"http/1.1"]).await),
        cert_a2
    );

    // A key that does not go with its certificate is refused too.
    write_cert(&dir, "a", &["a.test"]);
    let other_key = std::fs::read(dir.join("b.key")).unwrap();
    std::fs::write(dir.join("a.key"), other_key).unwrap();
    let (status, body) = common::admin::call(proxy.admin_address(), Method::POST, "/admin/reload")
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains(&format!(
            "listeners[0].tls.certificates[0].key: `{d}/a.key` does not match the certificate in `{d}/a.pem`"
        )),
        "{body}"
    );
}

/// The errors of a one-certificate listener whose files are `cert`, `key`.
fn tls_errors(dir: &Path, cert: &[u8], key: &[u8]) -> String {
    std::fs::write(dir.join("c.pem"), cert).unwrap();
    std::fs::write(dir.join("c.key"), key).unwrap();
    let d = dir.display();
    let text = format!(
        "listeners:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{cert: {d}/c.pem, key: {d}/c.key}}\nadmin: {{address: 127.0.0.1:0}}\n"
    );
    switchyard::config::parse(&text).unwrap_err().to_string()
}

#[test]
fn broken_certificates_are_named_in_plain_words() {
    let dir = common::binary::temp_dir();
    let good = rcgen::generate_simple_self_signed(vec!["c.test".to_string()]).unwrap();
    let key = good.signing_key.serialize_pem();
    let (field, file) = (
        "listeners[0].tls.certificates[0].cert",
        dir.join("c.pem").display().to_string(),
    );

    // Valid PEM and base64, but what is inside is not a certificate: this
    // used to be blamed on the key, in rustls's words.
    let errors = tls_errors(
        &dir,
        b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        key.as_bytes(),
    );
    assert!(
        errors.contains(&format!(
            "{field}: `{file}`: the first certificate is not a valid X.509 certificate"
        )),
        "{errors}"
    );
    assert!(
        !errors.contains("BadEncoding") && !errors.contains(".key"),
        "{errors}"
    );

    let errors = tls_errors(&dir, b"just some text\n", key.as_bytes());
    assert!(
        errors.contains(&format!("{field}: `{file}` holds no certificate")),
        "{errors}"
    );

    let errors = tls_errors(
        &dir,
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        key.as_bytes(),
    );
    assert!(
        errors.contains(&format!("{field}: `{file}` is not a valid PEM file")),
        "{errors}"
    );

    let mut params = rcgen::CertificateParams::new(vec!["c.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&good.signing_key).unwrap();
    let errors = tls_errors(&dir, expired.pem().as_bytes(), key.as_bytes());
    assert!(
        errors.contains(&format!("{field}: `{file}`: the certificate expired on"))
            && errors.contains("2021"),
        "{errors}"
    );

    // A certificate where the key should be.
    let errors = tls_errors(&dir, good.cert.pem().as_bytes(), good.cert.pem().as_bytes());
    assert!(
        errors.contains("listeners[0].tls.certificates[0].key: `")
            && errors.contains("holds no private key"),
        "{errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_listener_sends_clients_to_https() {
    let upstream = echo("up").await;
    let text = format!(
        "listeners:\n  - {{address: 127.0.0.1:0, redirect_https: 8443}}\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
    );
    let proxy = switchyard::server::start(switchyard::config::parse(&text).unwrap())
        .await
        .unwrap();
    let got = get(
        &client(),
        &format!("{}/cart?id=7", base(&proxy)),
        &[("host", "shop.test:80")],
    )
    .await;
    assert_eq!(got.status, 308);
    assert_eq!(got.headers["location"], "https://shop.test:8443/cart?id=7");
    let errors =
        switchyard::config::parse(&text.replace("redirect_https: 8443", "redirect_https: 0"))
            .unwrap_err()
            .to_string();
    assert!(
        errors.contains("listeners[0].redirect_https: must be a port"),
        "{errors}"
    );
}

/// Replaces `dir/{file}.pem` and `.key` with a new certificate the way
/// certificate managers do: written beside them, then renamed over them.
fn rename_cert(dir: &Path, file: &str, names: &[&str]) -> Vec<u8> {
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let der = write_cert(&staging, file, names);
    for ext in ["pem", "key"] {
        let name = format!("{file}.{ext}");
        std::fs::rename(staging.join(&name), dir.join(&name)).unwrap();
    }
    der
}

/// Waits (up to 30 s) until a new handshake for `name` gets `expected`.
async fn eventually_served(address: std::net::SocketAddr, name: &str, expected: &[u8], what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if leaf(&connect(address, name, &[b"http/1.1"]).await) == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still the old certificate after 30s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_replaced_on_disk_are_picked_up_by_the_watch() {
    let upstream = echo("up").await;
    let dir = common::binary::temp_dir();
    // Certificates in their own directories, as cert managers keep them.
    let (certs, later) = (dir.join("certs"), dir.join("later"));
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&later).unwrap();
    let first = write_cert(&certs, "a", &["a.test"]);
    let yaml = |cert_dir: &Path| {
        let d = cert_dir.display();
        format!(
            "listeners:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{cert: {d}/a.pem, key: {d}/a.key, server_names: [a.test]}}\nadmin: {{address: 127.0.0.1:0}}\nroutes: [{{service: s}}]\nservices:\n  s: {{instances: [{{address: \"{upstream}\"}}]}}\n"
        )
    };
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, yaml(&certs)).unwrap();
    let options = switchyard::server::LiveOptions::new(&path);
    assert!(options.watch, "watching is the default");
    let proxy = switchyard::server::start_live(options).await.unwrap();
    let address = proxy.listeners()[0].address;
    assert_eq!(
        leaf(&connect(address, "a.test", &[b"http/1.1"]).await),
        first
    );

    let second = rename_cert(&certs, "a", &["a.test"]);
    eventually_served(
        address,
        "a.test",
        &second,
        "chain and key renamed into place",
    )
    .await;

    // A directory first named by a reload is watched from then on.
    let third = write_cert(&later, "a", &["a.test"]);
    std::fs::write(dir.join("proxy.yaml.new"), yaml(&later)).unwrap();
    std::fs::rename(dir.join("proxy.yaml.new"), &path).unwrap();
    eventually_served(
        address,
        "a.test",
        &third,
        "proxy.yaml names a new directory",
    )
    .await;
    let fourth = rename_cert(&later, "a", &["a.test"]);
    eventually_served(
        address,
        "a.test",
        &fourth,
        "certificate in the new directory renamed",
    )
    .await;
}
