//! A request's header fields as the request path reads them before
//! forwarding: the request's map, or, from the owned HTTP/1.1 server, the
//! head as received (the request's map is then empty). A map of such a
//! head is made only when a feature that reads maps asks for one (header
//! conditions of routes, sticky cookies, keyed splits, rate limits keyed
//! by a header), and at most once per request.

use std::sync::OnceLock;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::http1::head::RawHead;

/// The fields of one request, read-only (see the module's text).
#[derive(Clone, Copy)]
pub(super) struct Fields<'a> {
    map: &'a HeaderMap,
    raw: Option<&'a RawHead>,
    built: &'a OnceLock<HeaderMap>,
}

impl<'a> Fields<'a> {
    /// The fields of `raw` when there is one, otherwise of `map`; a map
    /// made of `raw` is kept in `built`.
    pub(super) fn new(
        map: &'a HeaderMap,
        raw: Option<&'a RawHead>,
        built: &'a OnceLock<HeaderMap>,
    ) -> Fields<'a> {
        Fields { map, raw, built }
    }

    /// The value of the first field called `name`.
    pub(super) fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        match self.raw {
            // A slice of the head: no copy. httparse checked the value
            // already, so the conversion does not fail in practice.
            Some(raw) => raw
                .get_shared(name.as_str())
                .and_then(|value| HeaderValue::from_maybe_shared(value).ok()),
            None => self.map.get(name).cloned(),
        }
    }

    /// Whether a field called `name` is there.
    pub(super) fn contains(&self, name: &str) -> bool {
        match self.raw {
            Some(raw) => raw.get(name).is_some(),
            None => self.map.contains_key(name),
        }
    }

    /// How many fields are called `name`.
    pub(super) fn count(&self, name: &HeaderName) -> usize {
        match self.raw {
            Some(raw) => {
                let name = name.as_str().as_bytes();
                raw.fields()
                    .filter(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
                    .count()
            }
            None => self.map.get_all(name).iter().count(),
        }
    }

    /// The values of the fields called `name`, in order.
    pub(super) fn values(&self, name: &HeaderName) -> Vec<&'a [u8]> {
        match self.raw {
            Some(raw) => {
                let name = name.as_str().as_bytes();
                raw.fields()
                    .filter(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
                    .collect()
            }
            None => self
                .map
                .get_all(name)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect(),
        }
    }

    /// The fields as a map: the request's, or one made of the head (once).
    pub(super) fn map(&self) -> &'a HeaderMap {
        match self.raw {
            Some(raw) => self.built.get_or_init(|| raw.to_header_map()),
            None => self.map,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawHead {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut fields);
        let httparse::Status::Complete(len) = request.parse(text.as_bytes()).unwrap() else {
            panic!("partial");
        };
        RawHead::new(&text.as_bytes()[..len], request.headers).unwrap()
    }

    #[test]
    fn a_kept_head_reads_as_its_map_does() {
        let text = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 10.0.0.1\r\nCookie: a=1\r\n\r\n";
        let head = raw(text);
        let map = head.to_header_map();
        let built = OnceLock::new();
        let empty = HeaderMap::new();
        let kept = Fields::new(&empty, Some(&head), &built);
        let unused = OnceLock::new();
        let mapped = Fields::new(&map, None, &unused);
        let host = HeaderName::from_static("host");
        let xff = HeaderName::from_static("x-forwarded-for");
        for fields in [kept, mapped] {
            assert_eq!(fields.get(&host).unwrap(), "a.test");
            assert_eq!(fields.count(&host), 1);
            assert_eq!(fields.count(&xff), 2);
            assert_eq!(fields.values(&xff), [&b"1.2.3.4"[..], &b"10.0.0.1"[..]]);
            assert!(fields.contains("cookie") && !fields.contains("referer"));
        }
        assert!(built.get().is_none(), "no map made until one is asked for");
        assert_eq!(kept.map(), &map);
        assert!(std::ptr::eq(kept.map(), built.get().unwrap()), "made once");
    }
}
