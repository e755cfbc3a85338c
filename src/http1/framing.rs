//! The framing rules every HTTP/1.1 message path shares: the response
//! rules both upstream clients enforce, so that hyper's client and the
//! lean one (`upstream::h1`) cannot disagree about what a valid answer is
//! (the size limits, the status range, the framing fields, RFC 9112 §6.3),
//! and the chunk-size line (RFC 9112 §7.1), which the owned server's
//! request decoder reads the same way.

use http::header::{HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode};

/// Largest response head accepted (status line and fields), by both
/// clients; also the largest trailer section.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Most response fields accepted: hyper's client default, which it keeps
/// on the stack, so the lean client uses the same.
pub const MAX_RESPONSE_FIELDS: usize = 100;

/// Longest chunk-size line (size and extensions) the lean client accepts.
pub const MAX_CHUNK_LINE: usize = 1024;

/// Why a response cannot be forwarded.
pub type Invalid = &'static str;

/// The body length a message's Content-Length fields give, if any.
/// Repeated identical values (in one list or several fields) fold to one,
/// as RFC 9110 §8.6 allows; differing ones, signs, hex, empty values and
/// values beyond `u64` are invalid.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Invalid> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        length = content_length_value(value.as_bytes(), length)?;
    }
    Ok(length)
}

/// Folds one Content-Length field value into `length` (what the fields
/// before it gave), by the rules of [`content_length`].
pub fn content_length_value(value: &[u8], mut length: Option<u64>) -> Result<Option<u64>, Invalid> {
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err("bad Content-Length");
        }
        let n = part.iter().try_fold(0u64, |n, &digit| {
            n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        });
        let Some(n) = n else {
            return Err("Content-Length too large");
        };
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values");
        }
        length = Some(n);
    }
    Ok(length)
}

/// Checks a response head from either client before it is forwarded: a
/// status from 100 to 599 (RFC 9110 §15), and framing fields that are
/// valid even where they do not delimit a body (HEAD, 204, 304). Leaves
/// one Content-Length field behind (folded), or none when Transfer-Encoding
/// is present, which overrides it and is what an intermediary must forward
/// instead (RFC 9112 §6.3).
pub fn check_response_head(status: StatusCode, headers: &mut HeaderMap) -> Result<(), Invalid> {
    if status.as_u16() > 599 {
        return Err("status code beyond 599");
    }
    // Most answers have exactly one plain field: nothing to rewrite.
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let (first, second) = (values.next(), values.next());
    let Some(first) = first else {
        return Ok(());
    };
    let simple = second.is_none() && !first.as_bytes().contains(&b',');
    let length = content_length(headers)?;
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    } else if let (false, Some(length)) = (simple, length) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(())
}

/// The size on a chunk-size line (without its CRLF): 1 to 15 hex digits
/// (so it fits `u64` with room), then nothing or extensions (`;`,
/// optionally after spaces or tabs). A CR inside the line is invalid, as
/// hyper's decoder has it: a line ends only at CRLF.
pub fn chunk_size(line: &[u8]) -> Result<u64, Invalid> {
    let bad = "bad chunk size";
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let extensions = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .is_some_and(|i| rest[i] == b';');
    if digits == 0 || digits > 15 || !(rest.is_empty() || extensions) {
        return Err(bad);
    }
    if rest.contains(&b'\r') {
        return Err("bare CR in a chunk extension");
    }
    line[..digits].iter().try_fold(0u64, |size, &b| {
        let digit = (b as char).to_digit(16).ok_or(bad)?;
        Ok(size << 4 | u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn content_lengths_fold_when_identical_and_fail_otherwise() {
        let cl = |values: &[&str]| {
            let fields: Vec<_> = values.iter().map(|v| ("content-length", *v)).collect();
            content_length(&headers(&fields))
        };
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&["12"]), Ok(Some(12)));
        assert_eq!(cl(&["7, 7"]), Ok(Some(7)));
        assert_eq!(cl(&["5", "5"]), Ok(Some(5)));
        assert_eq!(cl(&["18446744073709551615"]), Ok(Some(u64::MAX)));
        for bad in [
            &["7, 8"][..],
            &["5", "6"],
            &["-1"],
            &[""],
            &["1e3"],
            &["+5"],
            &["0x2"],
            &["12345678901234567890123"],
            &["5,"],
        ] {
            assert!(cl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_heads_are_checked_and_folded() {
        let mut h = headers(&[("content-length", "5"), ("content-length", "5")]);
        check_response_head(StatusCode::OK, &mut h).unwrap();
        assert_eq!(h.get_all(CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(h[CONTENT_LENGTH], "5");
        let mut h = headers(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        check_response_head(StatusCode::OK, &mut h).unwrap();
        assert!(!h.contains_key(CONTENT_LENGTH));
        let mut h = headers(&[("content-length", "-1")]);
        assert!(check_response_head(StatusCode::OK, &mut h).is_err());
        let six_hundred = StatusCode::from_u16(600).unwrap();
        assert!(check_response_head(six_hundred, &mut HeaderMap::new()).is_err());
        check_response_head(StatusCode::from_u16(599).unwrap(), &mut HeaderMap::new()).unwrap();
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"FF;name=value").unwrap(), 255);
        assert_eq!(chunk_size(b"0").unwrap(), 0);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"xyz").is_err());
        assert!(chunk_size(b"1000000000000000").is_err());
        assert!(chunk_size(b"ffffffffffffffff1").is_err());
        assert_eq!(chunk_size(b"a ;x").unwrap(), 10);
        for bad in [
            &b"+3"[..],
            b"-3",
            b"3 junk",
            b"3 ",
            b"0x3",
            b";x",
            b"3;a\rb",
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
