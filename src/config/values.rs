//! Small value types of the config and their parsers: durations, CIDR
//! blocks, names. Each parser returns a message meant for a human.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// Parses `250ms`, `5s`, `2m`, `1h` (a non-negative integer and a unit),
/// with an error meant for a human.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| {
        if digits.is_empty() {
            format!(
                "`{text}` is not a duration; write a whole number and a unit, e.g. `500ms`, `5s`, `2m`"
            )
        } else {
            format!("`{text}` is far too large for a duration")
        }
    })?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        "" => {
            return Err(format!(
                "`{text}` has no unit; write e.g. `{text}s` or `{text}ms`"
            ))
        }
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; use ms, s, m or h"
            ))
        }
    };
    Ok(duration)
}

/// Parses a duration and checks it lies in `0..=max` (`1ms..=max` unless
/// `allow_zero`), so later `Instant + Duration` sums cannot overflow.
pub(crate) fn parse_bounded_duration(
    text: &str,
    allow_zero: bool,
    max: Duration,
) -> Result<Duration, String> {
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
