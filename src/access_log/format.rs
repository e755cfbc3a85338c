//! Access-log lines written by hand into a reused buffer: integers digit by
//! digit, milliseconds as an integer and three decimals, dates from the
//! Unix time with integer arithmetic. No `core::fmt` on the common path
//! (only IPv6 client addresses use it), so a line costs a few hundred
//! instructions.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Version;

use super::Record;
use crate::trace::context::{span_id_hex, trace_id_hex};

/// The JSON line's fixed fields, as the tracing events before had them.
const JSON_HEAD: &[u8] =
    br#"","level":"INFO","target":"switchyard::access","message":"request","method":""#;

/// Appends one JSON line for `record`.
pub(super) fn json(out: &mut Vec<u8>, clock: &mut Clock, record: &Record, end: &End) {
    out.extend_from_slice(br#"{"timestamp":""#);
    clock.rfc3339(out, end.now);
    out.extend_from_slice(JSON_HEAD);
    // A method is a token: nothing in it needs escaping.
    out.extend_from_slice(record.method.as_str().as_bytes());
    out.extend_from_slice(br#"","host":""#);
    json_str(out, record.host.as_ref().map_or(&b""[..], |h| h.as_bytes()));
    out.extend_from_slice(br#"","path":""#);
    json_str(out, record.uri.path().as_bytes());
    out.extend_from_slice(br#"","status":"#);
    integer(out, u64::from(record.status));
    out.extend_from_slice(br#","service":""#);
    json_str(
        out,
        record
            .service
            .as_ref()
            .map_or("-", |s| s.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(br#"","instance":""#);
    json_str(
        out,
        record
            .instance
            .as_ref()
            .map_or("-", |i| i.as_str())
            .as_bytes(),
    );
    out.push(b'"');
    if let Some(upstream) = record.upstream_time {
        out.extend_from_slice(br#","upstream_ms":"#);
        millis(out, upstream);
    }
    out.extend_from_slice(br#","total_ms":"#);
    millis(out, end.total);
    out.extend_from_slice(br#","bytes":"#);
    integer(out, end.bytes);
    out.extend_from_slice(if end.complete {
        br#","complete":true,"request_id":""#
    } else {
        br#","complete":false,"request_id":""#
    });
    json_str(out, record.request_id.as_bytes());
    out.extend_from_slice(br#"","trace_id":""#);
    out.extend_from_slice(&trace_id_hex(record.trace_id));
    out.extend_from_slice(br#"","span_id":""#);
    out.extend_from_slice(&span_id_hex(record.span_id));
    out.extend_from_slice(br#"","client_ip":""#);
    ip(out, record.client_ip);
    out.extend_from_slice(b"\"}\n");
}

/// Appends one line in nginx's `combined` format, then the request id
/// (quoted), the upstream time in seconds with three decimals, as
/// nginx's `$upstream_response_time` (`-` when no upstream answered), and
/// the trace id and the proxy's span id (quoted):
///
/// `1.2.3.4 - - [01/Dec/2026:15:25:51 +0000] "GET /a?b HTTP/1.1" 200 8 "-" "curl/8" "id" 0.012 "4bf9…4736" "00f0…02b7"`
pub(super) fn combined(out: &mut Vec<u8>, clock: &mut Clock, record: &Record, end: &End) {
    ip(out, record.client_ip);
    out.extend_from_slice(b" - - [");
    clock.common_log_time(out, end.now);
    out.extend_from_slice(b"] \"");
    nginx_str(out, record.method.as_str().as_bytes());
    out.push(b' ');
    let target = record
        .uri
        .path_and_query()
        .map_or(record.uri.path(), |p| p.as_str());
    nginx_str(out, target.as_bytes());
    out.extend_from_slice(match record.version {
        Version::HTTP_09 => b" HTTP/0.9\" ",
        Version::HTTP_10 => b" HTTP/1.0\" ",
        Version::HTTP_2 => b" HTTP/2.0\" ",
        Version::HTTP_3 => b" HTTP/3.0\" ",
        _ => b" HTTP/1.1\" ",
    });
    integer(out, u64::from(record.status));
    out.push(b' ');
    integer(out, end.bytes);
    out.extend_from_slice(b" \"");
    quoted_or_dash(out, record.referer.as_ref().map(|v| v.as_bytes()));
    out.extend_from_slice(b"\" \"");
    quoted_or_dash(out, record.user_agent.as_ref().map(|v| v.as_bytes()));
    out.extend_from_slice(b"\" \"");
    nginx_str(out, record.request_id.as_bytes());
    out.extend_from_slice(b"\" ");
    match record.upstream_time {
        Some(upstream) => seconds(out, upstream),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" \"");
    out.extend_from_slice(&trace_id_hex(record.trace_id));
    out.extend_from_slice(b"\" \"");
    out.extend_from_slice(&span_id_hex(record.span_id));
    out.extend_from_slice(b"\"\n");
}

/// What is known when the response ends.
pub(super) struct End {
    pub(super) now: SystemTime,
    pub(super) total: Duration,
    pub(super) bytes: u64,
    pub(super) complete: bool,
}

fn quoted_or_dash(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(value) if !value.is_empty() => nginx_str(out, value),
        _ => out.push(b'-'),
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A JSON string body: `"` and `\` escaped, control characters as
/// `\u00XX` (the common ones as `\n`, `\r`, `\t`), valid UTF-8 kept, and
/// each invalid byte sequence replaced by U+FFFD, so the line is always
/// valid JSON (as `String::from_utf8_lossy` did before).
///
/// Nearly every value is printable ASCII: that prefix is found eight bytes
/// at a time and copied at once; the rest, if any, goes byte by byte.
pub(super) fn json_str(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut clean = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = <[u8; 8]>::try_from(chunk).map_or(u64::MAX, u64::from_le_bytes);
        if needs_escape(word) {
            break;
        }
        clean += 8;
    }
    while bytes
        .get(clean)
        .is_some_and(|&b| !matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f..=0xff))
    {
        clean += 1;
    }
    out.extend_from_slice(&bytes[..clean]);
    if clean < bytes.len() {
        json_str_escaped(out, &bytes[clean..]);
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether a byte of `word` is below 0x20, `"`, `\`, 0x7F or from 0x80 up
/// (the classic "has a zero byte" test, `(x - 0x01..) & !x & 0x80..`).
fn needs_escape(word: u64) -> bool {
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    let delete = has_zero(word ^ (ONES * 0x7f));
    (below_space | quote | backslash | delete | (word & HIGH)) != 0
}

fn json_str_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        for (i, &b) in valid.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f | 0x7f => b"",
                _ => continue,
            };
            out.extend_from_slice(&valid[start..i]);
            if escape.is_empty() {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            } else {
                out.extend_from_slice(escape);
            }
            start = i + 1;
        }
        out.extend_from_slice(&valid[start..]);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
}

/// A string inside nginx's quotes: `"`, `\`, control characters and bytes
/// from 0x7F up written as `\xHH`, as nginx's default `escape` does.
pub(super) fn nginx_str(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f..=0xff) {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(b"\\x");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// "00" to "99", for writing two digits per division.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// A decimal integer, two digits per division.
pub(super) fn integer(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while value >= 100 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if value >= 10 {
        let pair = value as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + value as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// `value` with exactly `width` digits (zero-padded; higher digits cut).
fn padded(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let width = width.min(digits.len());
    for at in (0..width).rev() {
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Milliseconds with three decimals (microsecond resolution): `12.345`.
pub(super) fn millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    integer(out, micros / 1000);
    out.push(b'.');
    padded(out, micros % 1000, 3);
}

/// Seconds with three decimals (millisecond resolution): `0.012`.
pub(super) fn seconds(out: &mut Vec<u8>, duration: Duration) {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    integer(out, millis / 1000);
    out.push(b'.');
    padded(out, millis % 1000, 3);
}

fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                integer(out, u64::from(octet));
            }
        }
        // Rare at the edge, and compressing zero runs by hand is not worth it.
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// A calendar date and time of day in UTC.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    seconds_of_day: u64,
    micros: u32,
}

fn civil(now: SystemTime) -> Civil {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    // Howard Hinnant's days-to-civil algorithm (public domain), on the
    // proleptic Gregorian calendar with eras of 400 years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        seconds_of_day: secs % 86_400,
        micros: since.subsec_micros(),
    }
}

fn time_of_day(out: &mut Vec<u8>, seconds_of_day: u64) {
    padded(out, seconds_of_day / 3600, 2);
    out.push(b':');
    padded(out, seconds_of_day / 60 % 60, 2);
    out.push(b':');
    padded(out, seconds_of_day % 60, 2);
}

/// The date and time of day of the last line, written once per second:
/// lines within the same second only add their fraction.
#[derive(Debug, Default)]
pub(super) struct Clock {
    second: Option<u64>,
    rfc3339: Vec<u8>,
    common: Vec<u8>,
}

impl Clock {
    fn refresh(&mut self, now: SystemTime) {
        let second = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if self.second != Some(second) {
            self.second = Some(second);
            let whole = UNIX_EPOCH + Duration::from_secs(second);
            self.rfc3339.clear();
            rfc3339(&mut self.rfc3339, whole);
            // Without ".000000Z".
            self.rfc3339.truncate(self.rfc3339.len().saturating_sub(8));
            self.common.clear();
            common_log_time(&mut self.common, whole);
        }
    }

    /// As [`rfc3339`].
    pub(super) fn rfc3339(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        self.refresh(now);
        out.extend_from_slice(&self.rfc3339);
        out.push(b'.');
        let micros = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_micros();
        padded(out, u64::from(micros), 6);
        out.push(b'Z');
    }

    /// As [`common_log_time`].
    pub(super) fn common_log_time(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        self.refresh(now);
        out.extend_from_slice(&self.common);
    }
}

/// `2026-12-01T15:25:51.123456Z`, as the tracing JSON log writes it.
pub(super) fn rfc3339(out: &mut Vec<u8>, now: SystemTime) {
    let c = civil(now);
    padded(out, c.year.unsigned_abs(), 4);
    out.push(b'-');
    padded(out, u64::from(c.month), 2);
    out.push(b'-');
    padded(out, u64::from(c.day), 2);
    out.push(b'T');
    time_of_day(out, c.seconds_of_day);
    out.push(b'.');
    padded(out, u64::from(c.micros), 6);
    out.push(b'Z');
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `01/Dec/2026:15:25:51 +0000`, nginx's `$time_local`, always in UTC.
pub(super) fn common_log_time(out: &mut Vec<u8>, now: SystemTime) {
    let c = civil(now);
    padded(out, u64::from(c.day), 2);
    out.push(b'/');
    let month = usize::try_from(c.month.saturating_sub(1)).unwrap_or(0);
    out.extend_from_slice(MONTHS[month.min(11)]);
    out.push(b'/');
    padded(out, c.year.unsigned_abs(), 4);
    out.push(b':');
    time_of_day(out, c.seconds_of_day);
    out.extend_from_slice(b" +0000");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn with(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_and_durations() {
        for n in [
            0,
            7,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1000,
            10_001,
            65_535,
            u64::MAX,
        ]
        .into_iter()
        .chain((0..2000).map(|n| n * 7))
        {
            assert_eq!(with(|o| integer(o, n)), n.to_string());
        }
        assert_eq!(with(|o| millis(o, Duration::from_micros(0))), "0.000");
        assert_eq!(with(|o| millis(o, Duration::from_micros(12_345))), "12.345");
        assert_eq!(with(|o| millis(o, Duration::from_nanos(1_999))), "0.001");
        assert_eq!(with(|o| millis(o, Duration::from_secs(3))), "3000.000");
        assert_eq!(
            with(|o| millis(o, Duration::MAX)),
            format!("{}.{:03}", u64::MAX / 1000, u64::MAX % 1000)
        );
        assert_eq!(with(|o| seconds(o, Duration::from_millis(12))), "0.012");
        assert_eq!(
            with(|o| seconds(o, Duration::from_millis(61_005))),
            "61.005"
        );
    }

    #[test]
    fn the_clock_writes_what_the_formatters_write() {
        let mut clock = Clock::default();
        for secs in [0u64, 951_782_400, 951_782_400, 1_796_138_751, 1_796_138_752] {
            for micros in [0u64, 5, 999_999] {
                let now = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
                assert_eq!(with(|o| clock.rfc3339(o, now)), with(|o| rfc3339(o, now)));
                assert_eq!(
                    with(|o| clock.common_log_time(o, now)),
                    with(|o| common_log_time(o, now))
                );
            }
        }
    }

    #[test]
    fn dates_in_both_formats() {
        let at = |secs: u64, micros: u64| {
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
        };
        assert_eq!(
            with(|o| rfc3339(o, at(0, 0))),
            "1970-01-01T00:00:00.000000Z"
        );
        // A leap day, and the turn of a century that is a leap year.
        assert_eq!(
            with(|o| rfc3339(o, at(951_782_400, 5))),
            "2000-02-29T00:00:00.000005Z"
        );
        // `date -u -d @1796138751` = Tue Dec  1 15:25:51 UTC 2026
        assert_eq!(
            with(|o| rfc3339(o, at(1_796_138_751, 123_456))),
            "2026-12-01T15:25:51.123456Z"
        );
        assert_eq!(
            with(|o| common_log_time(o, at(1_796_138_751, 999_999))),
            "01/Dec/2026:15:25:51 +0000"
        );
        assert_eq!(
            with(|o| common_log_time(o, at(1_709_251_199, 0))),
            "29/Feb/2024:23:59:59 +0000"
        );
    }

    #[test]
    fn json_strings_are_always_valid_json() {
        let cases: [&[u8]; 6] = [
            b"plain /path",
            b"quote \" backslash \\ slash /",
            b"ctl \x00\x01\x1f\x7f tab\t nl\n cr\r",
            "caf\u{e9} \u{2028} \u{1F600}".as_bytes(),
            b"bad \xff\xfe end \xc3",
            b"\xe2\x82",
        ];
        for bytes in cases {
            let line = with(|o| {
                o.push(b'"');
                json_str(o, bytes);
                o.push(b'"');
            });
            let decoded: String = serde_json::from_str(&line).unwrap();
            assert_eq!(decoded, String::from_utf8_lossy(bytes), "{line}");
        }
        assert_eq!(with(|o| json_str(o, b"a\x01\x7fb")), r"a\u0001\u007Fb");
    }

    #[test]
    fn the_word_test_finds_every_byte_that_needs_escaping() {
        for b in 0..=255u8 {
            let expected = matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f..=0xff);
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = b;
                assert_eq!(
                    needs_escape(u64::from_le_bytes(word)),
                    expected,
                    "{b:#x} at {at}"
                );
            }
        }
        // Long clean prefixes, escapes at every position.
        for at in 0..40 {
            let mut bytes = vec![b'x'; 40];
            bytes[at] = b'"';
            let line = with(|o| {
                o.push(b'"');
                json_str(o, &bytes);
                o.push(b'"');
            });
            let decoded: String = serde_json::from_str(&line).unwrap();
            assert_eq!(decoded.as_bytes(), &bytes[..]);
        }
    }

    #[test]
    fn nginx_strings_escape_like_nginx() {
        assert_eq!(
            with(|o| nginx_str(o, b"a\"b\\c\td\x7f\xff\xc3\xa9 ok")),
            r#"a\x22b\x5Cc\x09d\x7F\xFF\xC3\xA9 ok"#
        );
    }
}
