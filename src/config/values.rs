//! Small value types of the config and their parsers: durations, CIDR
//! blocks, names. Each parser returns a message meant for a human.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// Parses a duration: one or more numbers, each with a unit (`ms`, `s`,
/// `m`, `h`), such as `250ms`, `1.5s`, `0.25s`, `1m30s` or `1h2m3s500ms`,
/// with an error meant for a human. Fractions finer than a nanosecond are
/// dropped.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let nanos = parse_nanos(text)?;
    let secs = u64::try_from(nanos / 1_000_000_000)
        .map_err(|_| format!("`{}` is far too large for a duration", text.trim()))?;
    let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, subsec))
}

/// The nanoseconds `text` stands for (see [`parse_duration`]).
fn parse_nanos(text: &str) -> Result<u128, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("`{text}` is negative; a duration cannot be"));
    }
    let not_a_duration = || {
        format!(
            "`{text}` is not a duration; write a number and a unit, e.g. `500ms`, `1.5s`, `1m30s`"
        )
    };
    if text.is_empty() {
        return Err(not_a_duration());
    }
    let too_large = || format!("`{text}` is far too large for a duration");
    let mut nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(not_a_duration());
        }
        let unit_nanos: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "`{text}` has no unit after `{number}`; write e.g. `{number}s` or `{number}ms`"
                ))
            }
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{text}`; use ms, s, m or h (combined like `1m30s`)"
                ))
            }
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        // Beyond 18 digits a fraction cannot change a nanosecond count.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| not_a_duration())?;
            let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(18));
            digits.saturating_mul(unit_nanos) / scale
        };
        nanos = whole
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(too_large)?;
        rest = after;
    }
    Ok(nanos)
}

/// Parses a duration and checks it lies in `0..=max` (`1ms..=max` unless
/// `allow_zero`), so later `Instant + Duration` sums cannot overflow.
pub(crate) fn parse_bounded_duration(
    text: &str,
    allow_zero: bool,
    max: Duration,
) -> Result<Duration, String> {
    let nanos = parse_nanos(text)?;
    if nanos > max.as_nanos() {
        return Err(format!(
            "`{}` is too long; the most allowed is {}",
            text.trim(),
            format_duration(max)
        ));
    }
    let duration = parse_duration(text)?;
    if duration.is_zero() && !allow_zero {
        return Err("must be more than zero".into());
    }
    if duration > max {
        return Err(format!(
            "`{}` is too long; the most allowed is {}",
            text.trim(),
            format_duration(max)
        ));
    }
    Ok(duration)
}

/// Writes a duration the way proxy.yaml does, in the largest whole unit
/// (`720h`, `10m`, `1500ms`).
pub(crate) fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        0 => "0s".into(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// An IP network such as `10.0.0.0/8` or `::1/128`; a bare address is a
/// single-host network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Whether `addr` lies in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`) match IPv4 networks, as a dual-stack socket
    /// reports IPv4 peers that way.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or network like 10.0.0.0/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix length in `{text}` must be 0 to {max}")),
            },
        };
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Names of services and instance ids: letters, digits and `-_.:` only, so
/// they are safe in URLs, logs and metric labels.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 128 {
        return Err("must be at most 128 characters".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "`{name}` contains `{bad}`; use letters, digits, `-`, `_`, `.` and `:`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_and_combined_units() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h2m3s500ms"),
            Ok(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("0.5h"), Ok(Duration::from_secs(1800)));
        assert!(parse_duration("-1.5s").unwrap_err().contains("negative"));
        assert!(parse_duration("NaN")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("1.2.3s")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration(".s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("1m30")
            .unwrap_err()
            .contains("no unit after `30`"));
        assert!(parse_duration("1.5d")
            .unwrap_err()
            .contains("unknown unit `d`"));
        assert!(parse_duration("99999999999999999999999999999999999999999h")
            .unwrap_err()
            .contains("far too large"));
        assert!(parse_duration("9999999999999999999999h")
            .unwrap_err()
            .contains("far too large"));
        let day = Duration::from_secs(86_400);
        assert_eq!(
            parse_bounded_duration("23h59m59.5s", false, day),
            Ok(day - Duration::from_millis(500))
        );
        assert!(parse_bounded_duration("24h0.001s", false, day)
            .unwrap_err()
            .contains("too long"));
        assert!(parse_bounded_duration("0.0000000001s", false, day)
            .unwrap_err()
            .contains("more than zero"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999999s")
            .unwrap_err()
            .contains("far too large"));
        let day = Duration::from_secs(86_400);
        assert_eq!(parse_bounded_duration("24h", false, day), Ok(day));
        assert!(parse_bounded_duration("0s", false, day).is_err());
        assert_eq!(parse_bounded_duration("0s", true, day), Ok(Duration::ZERO));
        assert_eq!(
            parse_bounded_duration("18446744073709551615h", false, day),
            Err("`18446744073709551615h` is too long; the most allowed is 24h".into())
        );
    }

    #[test]
    fn cidr_membership() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!(!host.contains("::2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("api-v2.internal").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").unwrap_err().contains("contains ` `"));
    }
}
