//! A Consul HTTP API client: health-service blocking queries, the leader
//! check, and registering switchyard itself. Answers are parsed strictly
//! enough to refuse garbage and loosely enough to ignore fields we do not
//! use.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::config::{
    ConsulConfig, ConsulDiscovery, ConsulRegistration, InstanceConfig, InstanceEntry, InstanceId,
    NamedInstance, MAX_WEIGHT,
};

/// One answer of the health endpoint, validated.
#[derive(Debug)]
pub struct HealthAnswer {
    /// `X-Consul-Index`.
    pub index: u64,
    /// The usable instances.
    pub instances: Vec<InstanceEntry>,
    /// Entries refused, with the field and the reason.
    pub refused: Vec<String>,
}

/// Calls Consul once; the status and body.
async fn call(
    consul: &ConsulConfig,
    method: Method,
    path_and_query: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let address = consul.address;
    let exchange = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot reach Consul at {address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("Consul at {address}: {e}"))?;
        let connection = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, address.to_string());
        if let Some(token) = &consul.token {
            request = request.header("x-consul-token", token.0.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("bad Consul request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("Consul at {address}: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("Consul at {address}: {e}"))?
            .to_bytes();
        connection.abort();
        Ok((parts.status, parts.headers, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "Consul at {address} did not answer within {timeout:?}"
            ))
        })
}

fn failure(status: StatusCode, body: &Bytes) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    format!("Consul answered {status}: {text}")
}

/// `GET /v1/health/service/<name>`, blocking on `index` when it is not 0.
pub async fn health_service(
    consul: &ConsulConfig,
    discovery: &ConsulDiscovery,
    index: u64,
) -> Result<HealthAnswer, String> {
    let mut query = vec![];
    if index > 0 {
        query.push(format!("index={index}"));
        query.push(format!("wait={}s", consul.wait.as_secs().max(1)));
    }
    if discovery.passing_only {
        query.push("passing=true".into());
    }
    if let Some(tag) = &discovery.tag {
        query.push(format!("tag={}", encode(tag)));
    }
    if let Some(dc) = &discovery.datacenter {
        query.push(format!("dc={}", encode(dc)));
    }
    if consul.stale {
        query.push("stale".into());
    }
    let path = format!(
        "/v1/health/service/{}?{}",
        encode(&discovery.service),
        query.join("&")
    );
    // Consul adds up to wait/16 to spread wake-ups; allow for it.
    let timeout = consul.wait + consul.wait / 16 + Duration::from_secs(5);
    let (status, headers, body) = call(consul, Method::GET, &path, None, timeout).await?;
    if status != StatusCode::OK {
        return Err(failure(status, &body));
    }
    let index = headers
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or("Consul's answer has no valid X-Consul-Index header")?;
    if headers
        .get("x-consul-results-filtered-by-acls")
        .is_some_and(|v| v == "true")
    {
        tracing::warn!(service = %discovery.service, "Consul hid some instances: the token lacks service:read or node:read");
    }
    let (instances, refused) = parse_health(&body, discovery.passing_only)?;
    Ok(HealthAnswer {
        index,
        instances,
        refused,
    })
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Option<Node>,
    #[serde(rename = "Service")]
    service: Option<Service>,
    #[serde(rename = "Checks", default)]
    checks: Option<Vec<Check>>,
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "Node")]
    name: String,
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: i64,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: Option<i64>,
    #[serde(rename = "Warning", default)]
    warning: Option<i64>,
}

#[derive(Deserialize)]
struct Check {
    #[serde(rename = "Status", default)]
    status: String,
}

/// Parses a health answer. A body that is not a JSON array of entries is an
/// error (nothing applies); a single bad entry is refused with its field
/// named, and the rest are used.
pub fn parse_health(
    body: &[u8],
    passing_only: bool,
) -> Result<(Vec<InstanceEntry>, Vec<String>), String> {
    let entries: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| format!("Consul's answer is not a JSON array: {e}"))?;
    let mut instances = Vec::new();
    let mut refused = Vec::new();
    for (i, value) in entries.into_iter().enumerate() {
        match entry_instance(value, passing_only) {
            Ok(Some(instance)) => instances.push(instance),
            Ok(None) => {}
            Err(problem) => refused.push(format!("[{i}].{problem}")),
        }
    }
    Ok((instances, refused))
}

fn entry_instance(
    value: serde_json::Value,
    passing_only: bool,
) -> Result<Option<InstanceEntry>, String> {
    let entry: Entry = serde_json::from_value(value).map_err(|e| format!("entry: {e}"))?;
    let node = entry.node.ok_or("Node: missing")?;
    let service = entry.service.ok_or("Service: missing")?;
    let port = u16::try_from(service.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("Service.Port: {} is not a port (1-65535)", service.port))?;
    // Service.Address, or the node's address when the service has none.
    let (field, text) = if service.address.is_empty() {
        ("Node.Address", node.address.as_str())
    } else {
        ("Service.Address", service.address.as_str())
    };
    // An address that is not an IP is a host name, resolved like the
    // file's (each address an instance).
    let address: Result<IpAddr, String> = match text.parse() {
        Ok(ip) => Ok(ip),
        Err(_) => Err(crate::config::host_name(text).map_err(|reason| {
            format!("{field}: `{text}` is neither an IP address nor a host name: {reason}")
        })?),
    };
    let statuses: Vec<&str> = entry
        .checks
        .iter()
        .flatten()
        .map(|c| c.status.as_str())
        .collect();
    if !passing_only && statuses.contains(&"critical") {
        return Ok(None);
    }
    let warning = statuses.contains(&"warning");
    let weights = service.weights.as_ref();
    let raw_weight = if warning {
        weights.and_then(|w| w.warning).unwrap_or(1)
    } else {
        weights.and_then(|w| w.passing).unwrap_or(1)
    };
    if raw_weight <= 0 {
        // Consul uses weight 0 to mean "no traffic" (e.g. warning weight).
        return Ok(None);
    }
    let weight = u32::try_from(raw_weight)
        .unwrap_or(MAX_WEIGHT)
        .min(MAX_WEIGHT);
    let mut metadata = service.meta.unwrap_or_default();
    metadata.insert("consul_node".into(), node.name.clone());
    let tags = service.tags.unwrap_or_default();
    // `Meta.version` first, then a `version=…` tag (a common convention
    // where services cannot set metadata). A value that is not a name is
    // ignored rather than refusing the instance.
    let version = metadata
        .get("version")
        .map(String::as_str)
        .or_else(|| tags.iter().find_map(|t| t.strip_prefix("version=")))
        .filter(|v| crate::config::check_version(v).is_ok())
        .map(str::to_string);
    let id =
        InstanceId::from(format!("{}:{}", sanitize(&node.name), sanitize(&service.id)).as_str());
    let weight = NonZeroU32::new(weight).unwrap_or(NonZeroU32::MIN);
    Ok(Some(match address {
        Ok(ip) => InstanceEntry::Address(InstanceConfig {
            id,
            address: SocketAddr::new(ip, port),
            weight,
            tags,
            metadata,
            version,
        }),
        Err(host) => InstanceEntry::Named(NamedInstance {
            id,
            host,
            port,
            weight,
            tags,
            metadata,
            version,
        }),
    }))
}

/// Instance ids allow letters, digits and `-_.:`; anything else becomes `_`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /v1/status/leader`: a cheap connectivity check. The leader's
/// address, or an error.
pub async fn leader(consul: &ConsulConfig) -> Result<String, String> {
    let (status, _, body) = call(
        consul,
        Method::GET,
        "/v1/status/leader",
        None,
        Duration::from_secs(5),
    )
    .await?;
    if status != StatusCode::OK {
        return Err(failure(status, &body));
    }
    let leader: String =
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from Consul: {e}"))?;
    if leader.is_empty() {
        return Err("Consul answers, but its cluster has no leader".into());
    }
    Ok(leader)
}

/// The id switchyard registers itself under.
pub fn self_id(registration: &ConsulRegistration, advertised: SocketAddr) -> String {
    registration.id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-{}",
            registration.name,
            sanitize(&advertised.ip().to_string()),
            advertised.port()
        )
    })
}

/// Registers switchyard in the local agent, with an HTTP check on the
/// admin API's health endpoint.
pub async fn register_self(
    consul: &ConsulConfig,
    registration: &ConsulRegistration,
    advertised: SocketAddr,
    admin: SocketAddr,
) -> Result<String, String> {
    let id = self_id(registration, advertised);
    let body = serde_json::json!({
        "ID": id,
        "Name": registration.name,
        "Address": advertised.ip().to_string(),
        "Port": advertised.port(),
        "Tags": registration.tags,
        "Meta": {"version": env!("CARGO_PKG_VERSION")},
        "Check": {
            "HTTP": format!("http://{admin}/admin/health"),
            "Interval": "10s",
            "Timeout": "2s",
            "DeregisterCriticalServiceAfter": "1m",
        },
    });
    let (status, _, answer) = call(
        consul,
        Method::PUT,
        "/v1/agent/service/register",
        Some(body.to_string()),
        Duration::from_secs(10),
    )
    .await?;
    if status != StatusCode::OK {
        return Err(failure(status, &answer));
    }
    Ok(id)
}

/// Removes switchyard's own entry; an unknown id counts as done.
pub async fn deregister_self(consul: &ConsulConfig, id: &str) -> Result<(), String> {
    let path = format!("/v1/agent/service/deregister/{}", encode(id));
    let (status, _, body) = call(consul, Method::PUT, &path, None, Duration::from_secs(10)).await?;
    if status == StatusCode::OK || status == StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(failure(status, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(entry: &InstanceEntry) -> &InstanceConfig {
        match entry {
            InstanceEntry::Address(instance) => instance,
            InstanceEntry::Named(named) => panic!("{named:?} is a host name"),
        }
    }

    #[test]
    fn parses_the_documented_answer_and_refuses_bad_entries() {
        let body = br#"[
          {"Node":{"Node":"n1","Address":"10.1.10.12"},
           "Service":{"ID":"redis","Service":"redis","Tags":["primary"],"Address":"","Port":8000,
                      "Meta":null,"Weights":{"Passing":10,"Warning":1},"Extra":1},
           "Checks":[{"Status":"passing"}]},
          {"Node":{"Node":"n2","Address":"10.1.10.13"},
           "Service":{"ID":"redis","Address":"10.9.9.9","Port":0}},
          {"Node":{"Node":"n3","Address":"10.1.10.14"},
           "Service":{"ID":"redis","Address":"db..local","Port":8000}},
          {"Node":{"Node":"n4","Address":"10.1.10.15"}},
          {"Node":{"Node":"n5","Address":"10.1.10.16"},
           "Service":{"ID":"redis","Address":"10.1.10.16","Port":8000},
           "Checks":[{"Status":"critical"}]}
        ]"#;
        let (instances, refused) = parse_health(body, false).unwrap();
        assert_eq!(instances.len(), 1);
        let first = address(&instances[0]);
        assert_eq!(first.id.as_str(), "n1:redis");
        assert_eq!(
            first.address.to_string(),
            "10.1.10.12:8000",
            "Node.Address when Service.Address is empty"
        );
        assert_eq!(first.weight.get(), 10, "Weights.Passing");
        assert_eq!(first.metadata["consul_node"], "n1");
        assert_eq!(
            refused,
            [
                "[1].Service.Port: 0 is not a port (1-65535)",
                "[2].Service.Address: `db..local` is neither an IP address nor a host name: `db..local` is not a host name: label `` must be 1-63 letters, digits or `-`",

                "[3].Service: missing",
            ]
        );
        assert!(parse_health(b"{\"not\": \"a list\"}", true).is_err());
        assert!(parse_health(b"[]", true).unwrap().0.is_empty());
    }

    #[test]
    fn versions_come_from_meta_then_a_version_tag() {
        let body = br#"[
          {"Node":{"Node":"n1","Address":"10.0.0.1"},
           "Service":{"ID":"a","Tags":["version=1.0"],"Port":80,"Meta":{"version":"2.1"}}},
          {"Node":{"Node":"n2","Address":"10.0.0.2"},
           "Service":{"ID":"b","Tags":["blue","version=1.0"],"Port":80}},
          {"Node":{"Node":"n3","Address":"10.0.0.3"},
           "Service":{"ID":"c","Tags":["version=not ok"],"Port":80}}
        ]"#;
        let (instances, refused) = parse_health(body, false).unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let versions: Vec<Option<&str>> = instances
            .iter()
            .map(|i| address(i).version.as_deref())
            .collect();
        assert_eq!(versions, [Some("2.1"), Some("1.0"), None]);
    }

    #[test]
    fn a_host_name_address_is_a_named_entry_with_the_entry_settings() {
        let body = br#"[
          {"Node":{"Node":"n1","Address":"10.0.0.1"},
           "Service":{"ID":"web-1","Address":"Web.Internal.","Port":8080,"Tags":["a"],
                      "Meta":{"version":"2.0"},"Weights":{"Passing":3}}},
          {"Node":{"Node":"node.dc1.consul","Address":"node.dc1.consul"},
           "Service":{"ID":"web-2","Address":"","Port":9090}}
        ]"#;
        let (entries, refused) = parse_health(body, false).unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let InstanceEntry::Named(first) = &entries[0] else {
            panic!("{:?}", entries[0]);
        };
        assert_eq!(first.id.as_str(), "n1:web-1");
        assert_eq!((first.host.as_str(), first.port), ("web.internal", 8080));
        assert_eq!(first.weight.get(), 3);
        assert_eq!(first.tags, ["a"]);
        assert_eq!(first.version.as_deref(), Some("2.0"));
        assert_eq!(first.metadata["consul_node"], "n1");
        let resolved = first.resolved("10.1.2.3".parse().unwrap());
        assert_eq!(resolved.id.as_str(), "n1:web-1:10.1.2.3");
        assert_eq!(resolved.address.to_string(), "10.1.2.3:8080");
        // Node.Address when Service.Address is empty, a name too.
        let InstanceEntry::Named(second) = &entries[1] else {
            panic!("{:?}", entries[1]);
        };
        assert_eq!(second.host, "node.dc1.consul");
    }

    #[test]
    fn encodes_names() {
        assert_eq!(encode("web api/v1"), "web%20api%2Fv1");
    }
}
