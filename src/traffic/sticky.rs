//! Sticky sessions: a cookie that names the instance a client was sent to,
//! so its next requests go to the same one while it is in rotation.
//!
//! The cookie's value is an HMAC-SHA256 of the service name and the
//! instance id, truncated to 128 bits and written in hex: it says nothing
//! about the instance (not its address, not its id), it is the same after
//! a reload (the id and the key are), and with a configured secret it is
//! the same on every node. The table from values to instances is built
//! with the snapshot; a request does one hash lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderValue, COOKIE};
use sha2::{Digest, Sha256};

use crate::config::{InstanceId, ServiceName, StickyConfig};

/// Hex digits of a cookie value (128 bits).
const VALUE_LEN: usize = 32;

/// A service's sticky cookie: which value names which instance, and the
/// `Set-Cookie` header that names each one.
#[derive(Debug)]
pub struct StickyTable {
    cookie: Box<str>,
    /// Cookie value → index in the snapshot's instances in rotation.
    by_value: HashMap<u128, usize, BuildHasherDefault<ValueHasher>>,
    /// For each instance in rotation, its `Set-Cookie` value.
    set_cookie: Vec<Option<HeaderValue>>,
}

impl StickyTable {
    /// The table for the instances in rotation of `service`, `ids` in
    /// balancer order.
    pub fn build<'a>(
        config: &StickyConfig,
        service: &ServiceName,
        ids: impl ExactSizeIterator<Item = &'a InstanceId>,
    ) -> StickyTable {
        let key: &[u8] = match &config.secret {
            Some(secret) => secret.0.as_bytes(),
            None => process_key(),
        };
        let attributes = attributes(config);
        let mut by_value = HashMap::with_capacity_and_hasher(ids.len(), Default::default());
        let mut set_cookie = Vec::with_capacity(ids.len());
        for (index, id) in ids.enumerate() {
            let value = cookie_value(key, service, id);
            by_value.insert(value, index);
            let header = format!("{}={value:032x}{attributes}", config.cookie);
            // Always valid: a token, hex and fixed attribute text.
            set_cookie.push(HeaderValue::try_from(header).ok());
        }
        StickyTable {
            cookie: config.cookie.as_str().into(),
            by_value,
            set_cookie,
        }
    }

    /// The instance (index in rotation) the request's cookie names, if it
    /// carries one that names an instance in rotation. Anything else
    /// (no cookie, a garbled or forged value, an instance gone) is `None`.
    pub fn find(&self, headers: &HeaderMap) -> Option<usize> {
        headers
            .get_all(COOKIE)
            .iter()
            .find_map(|line| self.find_in_line(line.as_bytes()))
    }

    /// [`StickyTable::find`] in one `Cookie` field: walks its pairs once,
    /// comparing the start of each with the name and skipping to the next
    /// `;` otherwise, without splitting, UTF-8 checks or allocation.
    fn find_in_line(&self, line: &[u8]) -> Option<usize> {
        let name = self.cookie.as_bytes();
        let mut at = 0;
        while at < line.len() {
            let end = line[at..]
                .iter()
                .position(|b| *b == b';')
                .map_or(line.len(), |p| at + p);
            let value = line[at..end]
                .trim_ascii_start()
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(b"="));
            // A repeated name: the first value that names an instance wins.
            if let Some(found) = value
                .and_then(|v| parse_value(v.trim_ascii_end()))
                .and_then(|v| self.by_value.get(&v))
            {
                return Some(*found);
            }
            at = end + 1;
        }
        None
    }

    /// The `Set-Cookie` value that names instance `index` (in rotation).
    pub fn set_cookie(&self, index: usize) -> Option<&HeaderValue> {
        self.set_cookie.get(index)?.as_ref()
    }
}

/// `; Path=/; Max-Age=…; Secure; HttpOnly; SameSite=…` as configured.
fn attributes(config: &StickyConfig) -> String {
    let mut text = String::from("; Path=/");
    if let Some(age) = config.max_age {
        text.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if config.secure {
        text.push_str("; Secure");
    }
    if config.http_only {
        text.push_str("; HttpOnly");
    }
    if let Some(same_site) = config.same_site {
        text.push_str("; SameSite=");
        text.push_str(same_site.as_str());
    }
    text
}

/// The value naming instance `id` of `service` under `key`.
fn cookie_value(key: &[u8], service: &ServiceName, id: &InstanceId) -> u128 {
    // The zero byte cannot occur in names, so (service, id) pairs cannot
    // run into each other.
    let mac = hmac_sha256(
        key,
        &[service.as_str().as_bytes(), &[0], id.as_str().as_bytes()],
    );
    let mut first = [0u8; 16];
    first.copy_from_slice(&mac[..16]);
    u128::from_be_bytes(first)
}

/// 32 lower- or upper-case hex digits, read through a table.
fn parse_value(text: &[u8]) -> Option<u128> {
    let digits: &[u8; VALUE_LEN] = text.try_into().ok()?;
    let mut value = 0u128;
    // Every digit's table entry or'ed together: above 15 if any was not a
    // hex digit, checked once at the end instead of per digit.
    let mut bad = 0u8;
    for digit in digits {
        let nibble = HEX_DIGIT[usize::from(*digit)];
        bad |= nibble;
        value = (value << 4) | u128::from(nibble & 0x0f);
    }
    (bad < 16).then_some(value)
}

/// The value of each hex digit (`0`–`9`, `a`–`f`, `A`–`F`); 0xff for any
/// other byte.
static HEX_DIGIT: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// The key used without a configured secret: drawn once per process, so
/// cookies survive reloads (not restarts).
fn process_key() -> &'static [u8] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        // std seeds RandomState from the operating system's random source.
        use std::hash::BuildHasher;
        let mut seed = Sha256::new();
        for i in 0u64..4 {
            seed.update(
                std::collections::hash_map::RandomState::new()
                    .hash_one(i)
                    .to_le_bytes(),
            );
        }
        seed.update(std::process::id().to_le_bytes());
        seed.finalize().into()
    })
}

/// The table's keys are already uniform (MAC output): their low 64 bits
/// are the hash.
#[derive(Default)]
struct ValueHasher(u64);

impl Hasher for ValueHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SameSite, Secret};
    use std::time::Duration;

    fn config(secret: Option<&str>) -> StickyConfig {
        StickyConfig {
            cookie: "sy".into(),
            max_age: Some(Duration::from_secs(3600)),
            secure: true,
            http_only: true,
            same_site: Some(SameSite::Lax),
            secret: secret.map(|s| Secret(s.into())),
        }
    }

    fn ids(names: &[&str]) -> Vec<InstanceId> {
        names.iter().map(|n| InstanceId::from(*n)).collect()
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::try_from(cookie).unwrap());
        headers
    }

    fn value_of(table: &StickyTable, index: usize) -> String {
        let header = table.set_cookie(index).unwrap().to_str().unwrap();
        header["sy=".len()..].split(';').next().unwrap().to_string()
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_cookie_finds_its_instance_among_others() {
        let service = ServiceName::from("web");
        let ids = ids(&["a", "b", "c"]);
        let table = StickyTable::build(&config(Some("k")), &service, ids.iter());
        for index in 0..3 {
            let cookie = format!("other=1; sy={}; x=y", value_of(&table, index));
            assert_eq!(table.find(&headers(&cookie)), Some(index));
            let upper = format!("sy={}", value_of(&table, index).to_uppercase());
            assert_eq!(table.find(&headers(&upper)), Some(index));
        }
        assert_eq!(
            table.set_cookie(0).unwrap().to_str().unwrap(),
            format!(
                "sy={}; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax",
                value_of(&table, 0)
            )
        );
    }

    #[test]
    fn garbage_and_other_names_find_nothing() {
        let service = ServiceName::from("web");
        let ids = ids(&["a"]);
        let table = StickyTable::build(&config(Some("k")), &service, ids.iter());
        let good = value_of(&table, 0);
        for cookie in [
            "sy=".to_string(),
            "sy".to_string(),
            "sy=zz".to_string(),
            format!("sy={}", "0".repeat(32)),
            format!("sy={good}0"),
            format!("sy={}", &good[1..]),
            format!("xsy={good}"),
            format!("sy={}g", &good[..31]),
            "=;;; ;=".to_string(),
        ] {
            assert_eq!(table.find(&headers(&cookie)), None, "{cookie}");
        }
        assert_eq!(table.find(&HeaderMap::new()), None);
        // A repeated cookie: the one that names an instance wins.
        let twice = format!("sy=nonsense; sy={good}");
        assert_eq!(table.find(&headers(&twice)), Some(0));
        // Space around pairs, the last pair without `;`, a second field.
        let spaced = format!("a=b;\tsy={good} ;c=d");
        assert_eq!(table.find(&headers(&spaced)), Some(0));
        assert_eq!(table.find(&headers(&format!("a=b;sy={good}"))), Some(0));
        assert_eq!(table.find(&headers(&format!("sy ={good}"))), None);
        let mut two = headers("a=b; sy=x");
        two.append(
            COOKIE,
            HeaderValue::try_from(format!("c=d; sy={good}")).unwrap(),
        );
        assert_eq!(table.find(&two), Some(0));
    }

    #[test]
    fn values_depend_on_key_service_and_id_not_on_order() {
        let web = ServiceName::from("web");
        let a = StickyTable::build(&config(Some("k")), &web, ids(&["a", "b"]).iter());
        let b = StickyTable::build(&config(Some("k")), &web, ids(&["b", "a"]).iter());
        assert_eq!(value_of(&a, 0), value_of(&b, 1), "same key, same value");
        let other_key = StickyTable::build(&config(Some("j")), &web, ids(&["a"]).iter());
        assert_ne!(value_of(&a, 0), value_of(&other_key, 0));
        let api = ServiceName::from("api");
        let other_service = StickyTable::build(&config(Some("k")), &api, ids(&["a"]).iter());
        assert_ne!(value_of(&a, 0), value_of(&other_service, 0));
        // The process key is drawn once.
        let once = StickyTable::build(&config(None), &web, ids(&["a"]).iter());
        let again = StickyTable::build(&config(None), &web, ids(&["a"]).iter());
        assert_eq!(value_of(&once, 0), value_of(&again, 0));
        assert_ne!(value_of(&once, 0), value_of(&a, 0));
    }

    #[test]
    fn hex_values_are_read_in_either_case_and_nothing_else() {
        let value = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        let lower = format!("{value:032x}");
        assert_eq!(parse_value(lower.as_bytes()), Some(value));
        assert_eq!(parse_value(lower.to_uppercase().as_bytes()), Some(value));
        assert_eq!(parse_value(&[b'f'; 32]), Some(u128::MAX));
        assert_eq!(parse_value(&[b'0'; 32]), Some(0));
        for bad in [
            b'g', b'G', b'/', b':', b'@', b'`', b' ', 0, 0xff, b'+', b'-',
        ] {
            for at in [0, 17, 31] {
                let mut text = lower.clone().into_bytes();
                text[at] = bad;
                assert_eq!(parse_value(&text), None, "{bad} at {at}");
            }
        }
        assert_eq!(parse_value(&lower.as_bytes()[1..]), None);
        assert_eq!(parse_value(format!("{lower}0").as_bytes()), None);
        assert_eq!(parse_value(b""), None);
    }

    #[test]
    fn attributes_follow_the_config() {
        let mut plain = config(None);
        plain.max_age = None;
        plain.secure = false;
        plain.http_only = false;
        plain.same_site = None;
        assert_eq!(attributes(&plain), "; Path=/");
        plain.same_site = Some(SameSite::Strict);
        assert_eq!(attributes(&plain), "; Path=/; SameSite=Strict");
    }
}
