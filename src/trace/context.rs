//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): parsing
//! `traceparent` strictly, checking `tracestate` against its limits, new
//! ids, the sampling decision and the `traceparent` value sent upstream.

use http::{HeaderMap, HeaderName};

/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// `traceparent` as a header name (no parsing per lookup).
pub static TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
/// `tracestate` as a header name.
pub static TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);

/// Length of a version-00 `traceparent` value: the only one sent.
pub const TRACEPARENT_LEN: usize = 55;

/// Most list members a `tracestate` may have (the spec's limit).
pub const TRACESTATE_MAX_MEMBERS: usize = 32;

/// A valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// The version it came with (`00`, or a later one read as `00`).
    pub version: u8,
    /// Never zero.
    pub trace_id: u128,
    /// The caller's span; never zero.
    pub parent_id: u64,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl Traceparent {
    /// Whether the caller marked the trace sampled.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Why a `traceparent` was not accepted (the trace then starts anew).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Shorter than 55 bytes, or (version 00) longer.
    Length,
    /// The version is not two lower-case hex digits, or is `ff`.
    Version,
    /// A `-` is missing where the format has one.
    Separator,
    /// The trace id is not 32 lower-case hex digits.
    TraceId,
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent id is not 16 lower-case hex digits.
    ParentId,
    /// The parent id is all zeros.
    ZeroParentId,
    /// The flags are not two lower-case hex digits.
    Flags,
    /// The request has more than one `traceparent` field.
    Repeated,
}

/// The value of a lower-case hex digit.
fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// `digits` (lower-case hex, at most 16) as a number.
fn hex(digits: &[u8]) -> Option<u64> {
    digits
        .iter()
        .try_fold(0u64, |n, &b| Some(n << 4 | u64::from(nibble(b)?)))
}

/// Parses a `traceparent` value as the spec says a receiver must:
/// `version-traceid-parentid-flags`, lower-case hex only, neither id all
/// zeros, version `ff` invalid. Version 00 is exactly 55 bytes; a later
/// version is read as 00 from its first 55 bytes, which must be followed
/// by the end or a `-` (what a later version adds is not understood and
/// not passed on).
pub fn parse_traceparent(value: &[u8]) -> Result<Traceparent, Invalid> {
    if value.len() < TRACEPARENT_LEN {
        return Err(Invalid::Length);
    }
    let version = match (nibble(value[0]), nibble(value[1])) {
        (Some(high), Some(low)) => high << 4 | low,
        _ => return Err(Invalid::Version),
    };
    if version == 0xff {
        return Err(Invalid::Version);
    }
    if version == 0 && value.len() != TRACEPARENT_LEN {
        return Err(Invalid::Length);
    }
    if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
        return Err(Invalid::Separator);
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return Err(Invalid::Separator);
    }
    let high = hex(&value[3..19]).ok_or(Invalid::TraceId)?;
    let low = hex(&value[19..35]).ok_or(Invalid::TraceId)?;
    let trace_id = u128::from(high) << 64 | u128::from(low);
    if trace_id == 0 {
        return Err(Invalid::ZeroTraceId);
    }
    let parent_id = hex(&value[36..52]).ok_or(Invalid::ParentId)?;
    if parent_id == 0 {
        return Err(Invalid::ZeroParentId);
    }
    let flags = hex(&value[53..55]).ok_or(Invalid::Flags)? as u8;
    Ok(Traceparent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

/// Whether the `tracestate` fields (their values in order, as if joined
/// by commas) may be passed on unchanged: at most 32 list members, each
/// `key=value` as the spec defines them, no key twice. Empty members
/// (`a=1,,b=2`) are allowed and not counted. A list that fails is
/// dropped whole, as the spec says for a list a vendor cannot parse.
pub fn tracestate_ok<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut keys: [&[u8]; TRACESTATE_MAX_MEMBERS] = [&[]; TRACESTATE_MAX_MEMBERS];
    let mut count = 0;
    for value in values {
        for member in value.split(|&b| b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            let Some(eq) = member.iter().position(|&b| b == b'=') else {
                return false;
            };
            let (key, value) = (&member[..eq], &member[eq + 1..]);
            if !key_ok(key) || !value_ok(value) || count == TRACESTATE_MAX_MEMBERS {
                return false;
            }
            if keys[..count].contains(&key) {
                return false;
            }
            keys[count] = key;
            count += 1;
        }
    }
    true
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// `lcalpha / DIGIT / "_" / "-" / "*" / "/"`.
fn key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` (a lower-case letter, then up to 255 key characters) or
/// `tenant-id@system-id` (a letter or digit and up to 240 more; a
/// lower-case letter and up to 13 more).
fn key_ok(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            key.len() <= 256
                && key.first().is_some_and(u8::is_ascii_lowercase)
                && key.iter().all(|&b| key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && tenant.iter().all(|&b| key_char(b))
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && system.iter().all(|&b| key_char(b))
        }
    }
}

/// Up to 256 printable ASCII characters other than `,` and `=`, spaces
/// allowed inside, the last one not a space.
fn value_ok(value: &[u8]) -> bool {
    let printable = |b: u8| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=';
    (1..=256).contains(&value.len())
        && value.iter().all(|&b| printable(b))
        && value.last().is_some_and(|&b| b != b' ')
}

/// A new trace id: random, never zero (from the thread's fast RNG, like
/// request ids; ids need to be unique, not secret).
pub fn new_trace_id() -> u128 {
    fastrand::u128(1..)
}

/// A new span id: random, never zero.
pub fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

/// The sampling threshold of `ratio` (0 to 1): a new trace is sampled when
/// the upper 63 bits of its id's lower half fall below it, so every node
/// with the same ratio decides the same for the same trace id.
pub fn sample_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        return 1 << 63;
    }
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    // Exact for the ratios written in configs; below 2^63.
    (ratio * (1u64 << 63) as f64) as u64
}

/// Whether a new trace with `trace_id` is sampled under `bound`.
pub fn sampled(trace_id: u128, bound: u64) -> bool {
    ((trace_id as u64) >> 1) < bound
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lower-case hex into `out` (two digits a byte; a
/// byte at a time is cheaper than shifting a 128-bit number per digit).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// The 32 hex digits of a trace id.
pub fn trace_id_hex(trace_id: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    write_hex(&mut out, &trace_id.to_be_bytes());
    out
}

/// The 16 hex digits of a span id.
pub fn span_id_hex(span_id: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    write_hex(&mut out, &span_id.to_be_bytes());
    out
}

/// The version-00 `traceparent` value naming `span_id` as the parent of
/// the next hop.
pub fn traceparent(trace_id: u128, span_id: u64, sampled: bool) -> [u8; TRACEPARENT_LEN] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex(&mut out[3..35], &trace_id.to_be_bytes());
    write_hex(&mut out[36..52], &span_id.to_be_bytes());
    if sampled {
        out[54] = b'1';
    }
    out
}

/// The trace context of one request at this proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace: the caller's, or a new one.
    pub trace_id: u128,
    /// The caller's span, when the request came with a valid
    /// `traceparent` (0: none, the trace starts here).
    pub parent_id: u64,
    /// The proxy's own span for the request (the server span).
    pub span_id: u64,
    /// Whether the trace is sampled: the caller's flag, or for a new
    /// trace the `sample_ratio` decision.
    pub sampled: bool,
    /// Whether the request's `tracestate` goes upstream unchanged; when
    /// false it is removed (invalid, over its limits, or the trace
    /// restarted, after which the caller's state means nothing).
    pub keep_tracestate: bool,
    /// Whether the request had `traceparent` or `tracestate` fields at
    /// all (when it had neither, there is nothing to remove).
    pub had_fields: bool,
}

impl TraceContext {
    /// The context of a request with `traceparent` (each field's value,
    /// in order) and `tracestate`, sampling new traces under `bound`.
    pub fn of<'a>(
        mut traceparents: impl Iterator<Item = &'a [u8]>,
        tracestates: impl Iterator<Item = &'a [u8]>,
        bound: u64,
    ) -> TraceContext {
        let first = traceparents.next();
        let mut tracestates = tracestates.peekable();
        let mut had_tracestate = tracestates.peek().is_some();
        let parsed = match first {
            None => None,
            Some(value) => match traceparents.next() {
                Some(_) => None,
                None => parse_traceparent(value).ok(),
            },
        };
        let span_id = new_span_id();
        match parsed {
            Some(parent) => {
                let keep = !had_tracestate || tracestate_ok(tracestates);
                TraceContext {
                    trace_id: parent.trace_id,
                    parent_id: parent.parent_id,
                    span_id,
                    sampled: parent.sampled(),
                    keep_tracestate: keep,
                    had_fields: true,
                }
            }
            None => {
                let trace_id = new_trace_id();
                had_tracestate |= first.is_some();
                TraceContext {
                    trace_id,
                    parent_id: 0,
                    span_id,
                    sampled: sampled(trace_id, bound),
                    keep_tracestate: false,
                    had_fields: had_tracestate,
                }
            }
        }
    }

    /// [`TraceContext::of`] a request's header map.
    pub fn of_headers(headers: &HeaderMap, bound: u64) -> TraceContext {
        TraceContext::of(
            headers
                .get_all(&TRACEPARENT_NAME)
                .into_iter()
                .map(http::HeaderValue::as_bytes),
            headers
                .get_all(&TRACESTATE_NAME)
                .into_iter()
                .map(http::HeaderValue::as_bytes),
            bound,
        )
    }

    /// [`TraceContext::of`] a head kept as received (for a request path
    /// that has no header map).
    pub fn of_raw(head: &crate::http1::head::RawHead, bound: u64) -> TraceContext {
        let named = |name: &'static str| {
            head.fields()
                .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, value)| value)
        };
        TraceContext::of(named(TRACEPARENT), named(TRACESTATE), bound)
    }

    /// The `traceparent` value of an upstream attempt whose span is
    /// `span_id`.
    pub fn traceparent(&self, span_id: u64) -> [u8; TRACEPARENT_LEN] {
        traceparent(self.trace_id, span_id, self.sampled)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_value_parses() {
        let parsed = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.parent_id, 0x00f067aa0ba902b7);
        assert!(parsed.sampled());
        let unsampled =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled());
        // Flags other than sampled are read, not refused.
        let other =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09").unwrap();
        assert_eq!(other.flags, 9);
        assert!(other.sampled());
    }

    #[test]
    fn malformed_values_are_refused() {
        let cases: &[(&str, Invalid)] = &[
            ("", Invalid::Length),
            ("00", Invalid::Length),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
                Invalid::Length,
            ),
            // Version 00 is exactly 55 bytes.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                Invalid::Length,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
                Invalid::Length,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Invalid::Version,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Invalid::Version,
            ),
            (
                "AA-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Invalid::Version,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                Invalid::TraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                Invalid::TraceId,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                Invalid::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                Invalid::ParentId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                Invalid::ZeroParentId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                Invalid::Flags,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
                Invalid::Flags,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Invalid::Separator,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                Invalid::Separator,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
                Invalid::Separator,
            ),
            // Ids of the wrong length shift the separators.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01",
                Invalid::Separator,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                Invalid::Separator,
            ),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Invalid::Version,
            ),
            // A later version must follow the 55 bytes with `-` or end.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                Invalid::Separator,
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                Invalid::Length,
            ),
        ];
        for (value, why) in cases {
            assert_eq!(parse_traceparent(value.as_bytes()), Err(*why), "{value:?}");
        }
    }

    #[test]
    fn later_versions_are_read_as_version_00() {
        let parsed = parse_traceparent(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds",
        )
        .unwrap();
        assert_eq!(parsed.version, 0xcc);
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        let exact =
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(exact.version, 1);
    }

    #[test]
    fn tracestate_limits() {
        assert!(tracestate_ok([&b"congo=t61rcWkgMzE"[..]]));
        assert!(tracestate_ok([
            &b"rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"[..]
        ]));
        assert!(tracestate_ok([&b"a=1"[..], &b"b=2,,  ,c=3 "[..]]));
        assert!(tracestate_ok([&b"fw529a3039@dt=x, 1tenant@sys=y"[..]]));
        assert!(tracestate_ok([&b"k=a value with spaces"[..]]));
        assert!(tracestate_ok([&b""[..]]));
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(tracestate_ok([members.join(",").as_bytes()]));
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(!tracestate_ok([members.join(",").as_bytes()]));
        for bad in [
            &b"novalue"[..],
            b"k=",
            b"K=v",
            b"1k=v",
            b"k=v=w",
            b"k=v\x01",
            b"a=1,a=2",
            b"@sys=v",
            b"t@=v",
            b"t@Sys=v",
            b"t@s123456789abcde=v",
        ] {
            assert!(!tracestate_ok([bad]), "{}", String::from_utf8_lossy(bad));
        }
        let long_key = format!("{}=v", "k".repeat(257));
        assert!(!tracestate_ok([long_key.as_bytes()]));
        let long_value = format!("k={}", "v".repeat(257));
        assert!(!tracestate_ok([long_value.as_bytes()]));
        // Duplicates across fields count too.
        assert!(!tracestate_ok([&b"a=1"[..], &b"a=2"[..]]));
    }

    #[test]
    fn contexts_keep_or_restart_the_trace() {
        let bound = sample_bound(1.0);
        let kept = TraceContext::of(
            [VALID.as_bytes()].into_iter(),
            [&b"congo=t61rcWkgMzE"[..]].into_iter(),
            0,
        );
        assert_eq!(kept.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(kept.parent_id, 0x00f067aa0ba902b7);
        assert!(kept.sampled, "the caller's flag wins over sample_ratio 0");
        assert!(kept.keep_tracestate);
        assert_ne!(kept.span_id, 0);
        let bad_state = TraceContext::of(
            [VALID.as_bytes()].into_iter(),
            [&b"Bad=1"[..]].into_iter(),
            bound,
        );
        assert!(!bad_state.keep_tracestate);
        // Two traceparent fields: a new trace, and no tracestate.
        let twice = TraceContext::of(
            [VALID.as_bytes(), VALID.as_bytes()].into_iter(),
            [&b"congo=x"[..]].into_iter(),
            bound,
        );
        assert_ne!(twice.trace_id, kept.trace_id);
        assert_eq!(twice.parent_id, 0);
        assert!(!twice.keep_tracestate);
        assert!(twice.had_fields);
        assert!(twice.sampled);
        let none = TraceContext::of([].into_iter(), [].into_iter(), 0);
        assert!(!none.had_fields);
        assert!(!none.sampled);
        assert_ne!(none.trace_id, 0);
    }

    #[test]
    fn a_raw_head_gives_the_context_a_map_gives() {
        let text = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nTraceParent: {VALID}\r\ntracestate: a=1\r\nTRACESTATE: b=2\r\n\r\n"
        );
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut request = httparse::Request::new(&mut fields);
        request.parse(text.as_bytes()).unwrap();
        let head = crate::http1::head::RawHead::new(text.as_bytes(), request.headers).unwrap();
        let map = head.to_header_map();
        let (raw, mapped) = (
            TraceContext::of_raw(&head, 0),
            TraceContext::of_headers(&map, 0),
        );
        assert_eq!(raw.trace_id, mapped.trace_id);
        assert_eq!(raw.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(
            (raw.sampled, raw.keep_tracestate, raw.had_fields),
            (mapped.sampled, mapped.keep_tracestate, mapped.had_fields)
        );
    }

    #[test]
    fn sampling_follows_the_ratio() {
        assert!(sampled(1, sample_bound(1.0)));
        assert!(sampled(u128::MAX, sample_bound(1.0)));
        assert!(!sampled(u128::MAX, sample_bound(0.0)));
        assert!(!sampled(0, sample_bound(0.0)));
        let bound = sample_bound(0.25);
        let hits = (0..100_000)
            .filter(|_| sampled(new_trace_id(), bound))
            .count();
        assert!((22_000..28_000).contains(&hits), "{hits}");
    }

    #[test]
    fn written_values_are_version_00() {
        let value = traceparent(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, true);
        assert_eq!(&value[..], VALID.as_bytes());
        let value = traceparent(1, 2, false);
        assert_eq!(
            &value[..],
            b"00-00000000000000000000000000000001-0000000000000002-00"
        );
        assert_eq!(&trace_id_hex(0xab)[30..], b"ab");
        assert_eq!(&span_id_hex(u64::MAX), b"ffffffffffffffff");
    }

    proptest! {
        #[test]
        fn valid_values_round_trip_exactly(
            trace_id in 1u128..,
            parent_id in 1u64..,
            flags in 0u8..,
        ) {
            let mut text = format!("00-{trace_id:032x}-{parent_id:016x}-{flags:02x}");
            let parsed = parse_traceparent(text.as_bytes()).unwrap();
            prop_assert_eq!(parsed.trace_id, trace_id);
            prop_assert_eq!(parsed.parent_id, parent_id);
            prop_assert_eq!(parsed.flags, flags);
            let written = traceparent(parsed.trace_id, parsed.parent_id, parsed.sampled());
            text.replace_range(53.., if flags & 1 == 1 { "01" } else { "00" });
            prop_assert_eq!(&written[..], text.as_bytes());
        }

        #[test]
        fn no_byte_string_panics_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_traceparent(&bytes);
            let _ = tracestate_ok([&bytes[..]]);
        }
    }
}
