//! Header edits of a route, on the request going up and the response
//! coming back.

use http::HeaderMap;

use crate::config::HeaderRewrite;
use crate::http1::head::RawHead;

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

/// Applies `rewrite` to a head kept as received (the lean client's
/// responses), with the same order as [`apply`].
pub fn apply_raw(rewrite: &HeaderRewrite, head: &mut RawHead) {
    for name in &rewrite.remove {
        head.remove(name.as_str());
    }
    for (name, value) in &rewrite.set {
        head.remove(name.as_str());
        head.append(name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in &rewrite.add {
        head.append(name.as_str().as_bytes(), value.as_bytes());
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
