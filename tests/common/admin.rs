//! Admin API calls for the tests: the same calls as
//! `switchyard::admin_client`, but every answer is checked against the
//! OpenAPI document (status declared for the path and method, content
//! type, body schema), and a mismatch fails the test.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::openapi::assert_answer;
use super::Got;

/// `switchyard::admin_client::call`, checked against the contract.
pub async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, String), String> {
    call_raw(admin, method, path, None, None).await
}

/// `switchyard::admin_client::call_with`, checked against the contract.
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

/// `switchyard::admin_client::call_raw`, checked against the contract.
pub async fn call_raw(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Bytes)>,
) -> Result<(StatusCode, String), String> {
    let answer =
        switchyard::admin_client::exchange(admin, method.clone(), path, token, body).await?;
    assert_answer(
        method.as_str(),
        path,
        answer.status.as_u16(),
        &answer.headers,
        &answer.body,
    );
    Ok((answer.status, answer.body))
}

/// Checks an answer a test got from the admin API with its own client.
pub fn checked(method: &str, path: &str, got: Got) -> Got {
    assert_answer(method, path, got.status, &got.headers, &got.body);
    got
}
