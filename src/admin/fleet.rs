//! `GET /admin/fleet`: every node of the fleet with the version it serves,
//! the version it refused and why, when it last heard from etcd, the etcd
//! revision it has seen and whether it is stale.

use http::{Response, StatusCode};

use super::{json_response, AdminState};
use crate::proxy::{text_response, ProxyBody};

pub(super) async fn status(state: &AdminState) -> Response<ProxyBody> {
    let Some(fleet) = state.reloader.as_ref().and_then(|r| r.fleet()) else {
        return text_response(
            StatusCode::NOT_FOUND,
            "this proxy is not in fleet mode (no `fleet:` section)\n",
        );
    };
    let current = match fleet.store().await {
        Ok(store) => store
            .current()
            .await
            .ok()
            .flatten()
            .map(|c| c.version.info.version),
        Err(_) => None,
    };
    let (nodes, error) = fleet.nodes().await;
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "node": fleet.node(),
            "current_version": current,
            "nodes": nodes,
            "etcd_error": error,
        }),
    )
}
