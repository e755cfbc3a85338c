//! Header edits of a route, on the request going up and the response
//! coming back.

use http::HeaderMap;

use crate::config::HeaderRewrite;

/// Applies `rewrite` to `headers`: removes, then sets (replacing every
/// earlier value), then adds (beside what is there).
pub fn apply(rewrite: &HeaderRewrite, headers: &mut HeaderMap) {
    for name in &rewrite.remove {
        headers.remove(name);
    }
    for (name, value) in &rewrite.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &rewrite.add {
        headers.append(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn remove_then_set_then_add() {
        let name = |n: &'static str| HeaderName::from_static(n);
        let value = |v: &'static str| HeaderValue::from_static(v);
        let rewrite = HeaderRewrite {
            remove: vec![name("x-secret")],
            set: vec![(name("x-canary"), value("yes"))],
            add: vec![(name("x-tag"), value("b"))],
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-secret", value("1"));
        headers.append("x-canary", value("no"));
        headers.append("x-canary", value("maybe"));
        headers.insert("x-tag", value("a"));
        apply(&rewrite, &mut headers);
        assert!(!headers.contains_key("x-secret"));
        assert_eq!(
            headers.get_all("x-canary").iter().collect::<Vec<_>>(),
            ["yes"]
        );
        assert_eq!(
            headers.get_all("x-tag").iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}
