//! [`super::redact_secrets`]: the secrets of a version are not shown.

use super::{redact_secrets, REDACTED};

#[test]
fn every_secret_is_replaced_where_it_stands() {
    let text = "admin: {address: 127.0.0.1:9901, token: t0ken-1}\nfleet:\n  etcd:\n    endpoints: [127.0.0.1:2379]\n    password: pa55\nservices:\n  web:\n    sticky: {cookie: s, secret: k3y}\n    instances: [{address: 127.0.0.1:1}]\n";
    let shown = redact_secrets(text);
    for secret in ["t0ken-1", "pa55", "k3y"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert_eq!(shown.matches(REDACTED).count(), 3, "{shown}");
    assert_eq!(shown.lines().count(), text.lines().count());
    assert!(shown.contains("address: 127.0.0.1:9901"));
}

#[test]
fn text_that_does_not_parse_has_its_secret_lines_blanked() {
    let text = "admin:\n  token: abc\nunknown_section: 1\n  - password: xyz\n";
    let shown = redact_secrets(text);
    assert!(!shown.contains("abc") && !shown.contains("xyz"), "{shown}");
    assert!(shown.contains("unknown_section: 1"));
}

#[test]
fn text_without_secrets_is_unchanged() {
    let text = "routes: [{service: a}]\nservices:\n  a: {instances: []}\n";
    assert_eq!(redact_secrets(text), text);
}
