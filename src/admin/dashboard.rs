//! `GET /`: a small self-contained status page (no external scripts or
//! fonts) that refreshes itself from `GET /admin/status`.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::proxy::{text_response, ProxyBody};

const PAGE: &str = include_str!("dashboard.html");

pub(super) fn page() -> Response<ProxyBody> {
    let mut response = text_response(StatusCode::OK, PAGE);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
