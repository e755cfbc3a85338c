//! Header rules of a forwarding proxy: hop-by-hop removal (RFC 9110
//! §7.6.1), `X-Forwarded-*`, the client IP behind trusted proxies, and the
//! request id.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

use crate::config::Cidr;
use crate::http1::head::RawHead;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus the non-standard ones still seen in the wild and `HTTP2-Settings`,
/// which belongs to the h2c upgrade this proxy never forwards (RFC 9113
/// §3.1). `Connection` comes first: [`remove_hop_by_hop`] relies on it.
static HOP_BY_HOP: [HeaderName; 10] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    HeaderName::from_static("http2-settings"),
];

/// The names of [`HOP_BY_HOP`] as bytes, in the same order, for heads kept
/// as received (a standard `HeaderName`'s text is a lookup each time).
const HOP_BY_HOP_NAMES: [&[u8]; 10] = [
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"http2-settings",
];
const TE_INDEX: usize = 3;
const TRANSFER_ENCODING_INDEX: usize = 5;

/// Removes hop-by-hop fields, including every field named in `Connection`.
/// `TE: trailers` is kept: it is the one TE value HTTP/2 allows, and gRPC
/// servers require it. A message that came with `Transfer-Encoding` also
/// loses `Content-Length`, which it overrides (RFC 9112 §6.3 requires a
/// proxy to drop it): the next hop frames the body anew.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names present, comparing interned names, so
    // that the usual message (none, or only `Connection: keep-alive`) costs
    // no hashing and no removal of absent fields.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let trailers = headers
        .get(TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // The usual options: `keep-alive` is in the list anyway and
            // `close` names no field; skipping them saves a parse.
            .filter(|name| {
                !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close")
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
            if *name == TRANSFER_ENCODING {
                headers.remove(CONTENT_LENGTH);
            }
        }
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// [`remove_hop_by_hop`] on a head kept as received: the same fields go,
/// the others stay as they came.
pub fn remove_hop_by_hop_raw(head: &mut RawHead) {
    let is_hop = |name: &[u8]| {
        HOP_BY_HOP_NAMES
            .iter()
            .position(|hop| name.eq_ignore_ascii_case(hop))
    };
    let mut present = 0u16;
    // Whether the first TE field says `trailers`, as `HeaderMap::get` sees it.
    let mut trailers = false;
    let mut named: Vec<Vec<u8>> = Vec::new();
    for (name, value) in head.fields() {
        if let Some(i) = is_hop(name) {
            if i == TE_INDEX && present & (1 << i) == 0 {
                trailers = value.eq_ignore_ascii_case(b"trailers");
            }
            present |= 1 << i;
            if i == 0 {
                named.extend(
                    value
                        .split(|&b| b == b',')
                        .map(<[u8]>::trim_ascii)
                        .filter(|name| {
                            !name.is_empty()
                                && !name.eq_ignore_ascii_case(b"keep-alive")
                                && !name.eq_ignore_ascii_case(b"close")
                        })
                        .map(<[u8]>::to_vec),
                );
            }
        }
    }
    if present == 0 {
        return;
    }
    let framed_by_coding = present & (1 << TRANSFER_ENCODING_INDEX) != 0;
    head.remove_where(|name, _| {
        is_hop(name).is_some()
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
            || (framed_by_coding && name.eq_ignore_ascii_case(b"content-length"))
    });
    if trailers {
        head.append(b"te", b"trailers");
    }
}

/// Sets `X-Request-Id` on a head kept as received.
pub fn set_request_id_raw(head: &mut RawHead, id: &HeaderValue) {
    head.remove(X_REQUEST_ID.as_str());
    head.append(X_REQUEST_ID.as_str().as_bytes(), id.as_bytes());
}

/// The protocols an HTTP/1.1 request asks to switch to (`Upgrade`), when
/// it also lists `upgrade` in `Connection` as RFC 9110 §7.8 requires, and
/// only those `allowed` lets through. `None` when none is left: the request
/// then goes on as an ordinary one (hop-by-hop removal drops the fields).
pub fn requested_upgrade(
    headers: &HeaderMap,
    allowed: impl Fn(&str) -> bool,
) -> Option<HeaderValue> {
    let listed = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !listed {
        return None;
    }
    let mut offered = 0;
    let mut kept: Vec<&str> = Vec::new();
    for value in headers.get_all(UPGRADE) {
        let text = value.to_str().ok()?;
        for protocol in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            offered += 1;
            if allowed(protocol) {
                kept.push(protocol);
            }
        }
    }
    match (kept.len(), headers.get(UPGRADE)) {
        (0, _) | (_, None) => None,
        // The usual case: one protocol, allowed, sent as it came.
        (n, Some(value)) if n == offered && headers.get_all(UPGRADE).iter().count() == 1 => {
            Some(value.clone())
        }
        _ => HeaderValue::from_str(&kept.join(", ")).ok(),
    }
}

/// Removes fields whose names contain `_`: CGI-style back ends (PHP,
/// WSGI, Rack) fold `_` and `-` into one, so `X_Forwarded_For` could pass
/// for the `X-Forwarded-For` this proxy writes. nginx drops them too.
pub fn remove_underscored(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| name.as_str().contains('_')) {
        return;
    }
    let underscored: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in underscored {
        headers.remove(name);
    }
}

/// [`remove_underscored`] on a head kept as received.
pub fn remove_underscored_raw(head: &mut RawHead) {
    head.remove_where(|name, _| name.contains(&b'_'));
}

/// [`add_forwarded`] on a head kept as received: the fields it sets are
/// set in place (the first of a name keeps its position), or added.
pub fn add_forwarded_raw(
    head: &mut RawHead,
    peer: IpAddr,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    // What `HeaderValue::to_str` accepts.
    let visible = |v: &[u8]| v.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
    let existing = head
        .get(X_FORWARDED_FOR.as_str())
        .filter(|v| visible(v) && (peer_trusted || !v.is_empty()));
    let mut forwarded_for = Vec::with_capacity(existing.map_or(0, |e| e.len() + 2) + 39);
    if let Some(existing) = existing {
        forwarded_for.extend_from_slice(existing);
        forwarded_for.extend_from_slice(b", ");
    }
    write_ip(peer, &mut forwarded_for);
    head.set(X_FORWARDED_FOR.as_str(), &forwarded_for);
    if !(peer_trusted && head.contains(X_FORWARDED_PROTO.as_str())) {
        head.set(X_FORWARDED_PROTO.as_str(), proto.as_bytes());
    }
    if !(peer_trusted && head.contains(X_FORWARDED_HOST.as_str())) {
        if let Some(host) = host {
            head.set(X_FORWARDED_HOST.as_str(), host.as_bytes());
        }
    }
}

/// Puts back the two fields an upgrade needs after hop-by-hop removal.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(UPGRADE, protocol);
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The client's IP: the socket peer, or, when the peer is a trusted proxy,
/// the right-most address in `X-Forwarded-For` that is not itself trusted
/// (addresses left of it could have been written by the client).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let values: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    client_ip_of(peer, &values, trusted)
}

/// [`client_ip`] given the `X-Forwarded-For` values in order, for a
/// trusted `peer`.
pub fn client_ip_of(peer: IpAddr, values: &[&[u8]], trusted: &[Cidr]) -> IpAddr {
    let mut client = peer;
    // Later header lines were appended later: walk them, and each line's
    // entries, from the right.
    for value in values.iter().rev() {
        // What `HeaderValue::to_str` accepts.
        let visible = value.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
        let Some(text) = visible.then(|| std::str::from_utf8(value).ok()).flatten() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return client;
            };
            if !is_trusted(ip, trusted) {
                return ip;
            }
            client = ip;
        }
    }
    client
}

/// Adds the `X-Forwarded-*` fields for a request from `peer`.
///
/// `X-Forwarded-For` gets the peer appended. Proto and Host are set from
/// what this proxy saw, unless a trusted proxy in front already set them.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let existing = headers
        .get(&X_FORWARDED_FOR)
        .filter(|v| v.to_str().is_ok() && (peer_trusted || !v.is_empty()))
        .map(HeaderValue::as_bytes);
    let mut forwarded_for = Vec::with_capacity(existing.map_or(0, |e| e.len() + 2) + 39);
    if let Some(existing) = existing {
        forwarded_for.extend_from_slice(existing);
        forwarded_for.extend_from_slice(b", ");
    }
    write_ip(peer, &mut forwarded_for);
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded_for)) {
        // Several X-Forwarded-For lines are folded into the one we write.
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }
}

/// Appends `ip` as text; IPv4 (the usual case) without the formatting
/// machinery, as this runs on every request.
fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// The request's id: the client's `X-Request-Id` if it sent one, otherwise
/// a new random 128-bit id, which is then added to the request.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        if !id.is_empty() {
            return id.clone();
        }
    }
    let value = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), value.clone());
    value
}

/// A new random 128-bit request id, as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut id = [0u8; 32];
    let random = fastrand::u128(..);
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((random >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_raw_hop_by_hop_names_are_the_maps() {
        let names: Vec<&[u8]> = HOP_BY_HOP.iter().map(|n| n.as_str().as_bytes()).collect();
        assert_eq!(names, HOP_BY_HOP_NAMES);
        assert_eq!(HOP_BY_HOP[TE_INDEX], TE);
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING_INDEX], TRANSFER_ENCODING);
    }

    #[test]
    fn writes_ips_as_std_does() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "9.99.100.250",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            write_ip(ip, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn transfer_encoding_overrides_content_length() {
        let mut h = headers(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = headers(&[("content-length", "3"), ("connection", "keep-alive")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.get("content-length").unwrap(), "3");
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed_fields() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn te_trailers_is_kept_for_grpc() {
        let mut h = headers(&[("te", "trailers"), ("connection", "close")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn upgrades_need_both_fields() {
        let any = |_: &str| true;
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested_upgrade(&ws, any).unwrap(), "websocket");
        let unlisted = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert_eq!(requested_upgrade(&unlisted, any), None);
        let mut forwarded = ws.clone();
        remove_hop_by_hop(&mut forwarded);
        set_upgrade(&mut forwarded, HeaderValue::from_static("websocket"));
        assert_eq!(forwarded["connection"], "upgrade");
        assert_eq!(forwarded["upgrade"], "websocket");
    }

    #[test]
    fn only_allowed_upgrades_are_kept() {
        let websocket = |p: &str| p.eq_ignore_ascii_case("websocket");
        let h2c = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ]);
        assert_eq!(requested_upgrade(&h2c, websocket), None);
        let mut forwarded = h2c.clone();
        remove_hop_by_hop(&mut forwarded);
        assert!(forwarded.is_empty(), "{forwarded:?}");
        let both = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c, WebSocket"),
            ("upgrade", "foo/2"),
        ]);
        assert_eq!(requested_upgrade(&both, websocket).unwrap(), "WebSocket");
        // HTTP2-Settings goes even when Connection does not name it.
        let mut unlisted = headers(&[("http2-settings", "x"), ("connection", "close")]);
        remove_hop_by_hop(&mut unlisted);
        assert!(unlisted.is_empty(), "{unlisted:?}");
    }

    #[test]
    fn underscored_fields_are_removed() {
        let mut h = headers(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-ok", "1"),
            ("auth_user", "root"),
        ]);
        remove_underscored(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-ok"]);
    }

    #[test]
    fn client_ip_behind_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's header is ignored.
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "10.0.0.9"),
        ]);
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&[("x-forwarded-for", "junk, 10.0.0.9")]);
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_headers_are_appended_and_set() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("shop.test");
        add_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            false,
            "http",
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(
            h["x-forwarded-proto"], "http",
            "an untrusted peer cannot set the proto"
        );
        assert_eq!(h["x-forwarded-host"], "shop.test");
    }

    #[test]
    fn request_id_is_kept_or_made() {
        let mut h = headers(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
    }
}
