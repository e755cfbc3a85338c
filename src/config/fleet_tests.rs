//! The `fleet:` section: defaults, field-path errors, and the node-local
//! rules of a pushed version.

use super::validate::tests::messages;
use super::{parse, parse_shared};
use std::time::Duration;

const LISTENER: &str = "listeners:\n  - address: 127.0.0.1:8080\n";

#[test]
fn defaults_and_endpoints() {
    let config = parse(&format!(
        "{LISTENER}fleet:\n  etcd:\n    endpoints: [127.0.0.1:2379, \"http://10.0.0.2:2379/\"]\n  node: edge-1\n"
    ))
    .unwrap();
    let fleet = config.fleet.unwrap();
    assert_eq!(fleet.prefix, "/switchyard/default");
    assert_eq!(fleet.node, "edge-1");
    assert_eq!(
        fleet.etcd.endpoints,
        ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert_eq!(fleet.etcd.dial_timeout, Duration::from_secs(2));
    assert_eq!(fleet.etcd.request_timeout, Duration::from_secs(5));
    assert!(fleet.etcd.user.is_none() && fleet.etcd.tls.is_none());

    let config = parse(&format!(
        "{LISTENER}fleet:\n  etcd:\n    endpoints: [127.0.0.1:2379]\n    username: sy\n    password: pw\n    request_timeout: 1s\n  cluster: prod\n  node: n\n"
    ))
    .unwrap();
    let fleet = config.fleet.unwrap();
    assert_eq!(fleet.prefix, "/switchyard/prod");
    assert_eq!(fleet.etcd.user.unwrap().0, "sy");
    assert_eq!(fleet.etcd.request_timeout, Duration::from_secs(1));
}

#[test]
fn every_problem_is_named_by_its_field() {
    let problems = messages(&format!(
        "{LISTENER}fleet:\n  etcd:\n    endpoints: [\"nowhere\", \"ftp://h:1\", \"https://h:2379\", \"h:0\"]\n    username: sy\n    dial_timeout: 0s\n    request_timeout: soon\n  prefix: relative\n  node: \"a b\"\n"
    ));
    let expected = [
        "fleet.etcd.endpoints[0]: `nowhere` needs a host and a port",
        "fleet.etcd.endpoints[1]: unknown scheme `ftp`",
        "fleet.etcd.endpoints[2]: an https endpoint needs `fleet.etcd.tls`",
        "fleet.etcd.endpoints[3]: `0` in `h:0` is not a port",
        "fleet.etcd.username: needs a password",
        "fleet.etcd.dial_timeout: must be more than zero",
        "fleet.etcd.request_timeout: `soon` is not a duration",
        "fleet.prefix: `relative` must start with `/`",
        "fleet.node: node name `a b` contains ` `",
    ];
    for expected in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing `{expected}` in {problems:#?}"
        );
    }
    let problems = messages(&format!(
        "{LISTENER}fleet:\n  etcd:\n    endpoints: []\n    password: pw\n    password_env: PW\n"
    ));
    assert!(
        problems
            .iter()
            .any(|p| p == "fleet.etcd.endpoints: at least one etcd member is required"),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("fleet.etcd: give the password one way only")),
        "{problems:#?}"
    );
    let problems = messages(&format!(
        "{LISTENER}fleet:\n  etcd:\n    endpoints: [h:1]\n    tls: {{ca_file: /nonexistent/ca.pem, cert: /nonexistent/c.pem}}\n"
    ));
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("fleet.etcd.tls.ca_file: cannot read `/nonexistent/ca.pem`")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("fleet.etcd.tls.cert: needs `key` beside it")),
        "{problems:#?}"
    );
    let problems = messages(&format!("{LISTENER}fleet:\n  etcd:\n    endpoint: h:1\n"));
    assert!(
        problems[0].contains("unknown field `endpoint`"),
        "{problems:#?}"
    );
}

#[test]
fn a_pushed_version_holds_no_node_local_section() {
    let shared = format!("{LISTENER}routes: []\n");
    assert!(parse_shared(&shared).is_ok());
    let errors = parse_shared(&format!(
        "{shared}admin:\n  address: 127.0.0.1:1\nworkers: 2\nfleet:\n  etcd:\n    endpoints: [h:1]\n"
    ))
    .unwrap_err();
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["fleet", "admin", "workers"]);
    assert!(errors.0[0].message.contains("node-local"));
    // The node's own sections overlay a shared version.
    let local = parse(&format!(
        "{LISTENER}admin:\n  address: 127.0.0.1:7000\nworkers: 3\nfleet:\n  etcd:\n    endpoints: [h:1]\n  node: n\n"
    ))
    .unwrap();
    let served = parse_shared(&shared).unwrap().with_node_local(&local);
    assert_eq!(served.admin.address.port(), 7000);
    assert_eq!(served.workers, 3);
    assert_eq!(served.fleet, local.fleet);
}
