//! A message head kept as the bytes it arrived in: the parsed index of its
//! fields (where each name and value is) and a list of edits (fields
//! removed, fields added). Forwarding it copies the kept field lines as
//! they came, in runs, with the upstream's order, case and spacing, and
//! appends the added ones: no `HeaderMap` is built for the message and no
//! field is serialised again.
//!
//! Only heads whose every line ends in CRLF are kept this way (see
//! [`RawHead::new`]); anything else takes the `HeaderMap` path, where the
//! message is rebuilt.

use bytes::Bytes;

/// Bytes reserved at the first edit of a head for set and added fields
/// (the X-Forwarded-* fields, the request id, a Host): enough for the usual
/// edits in one allocation.
const EDIT_ROOM: usize = 192;

/// Where one field line is in the head.
#[derive(Debug, Clone, Copy)]
struct Field {
    /// Start of the line (its name).
    line: u32,
    name_len: u32,
    value_start: u32,
    value_len: u32,
    removed: bool,
    /// Written with another value: then `value_start` and `value_len` are
    /// its place in `replaced`, not in the head.
    replaced: bool,
}

/// A head's fields as received, with edits.
#[derive(Debug, Clone)]
pub struct RawHead {
    /// The whole head, start line to the empty line.
    bytes: Bytes,
    fields: Vec<Field>,
    /// New values of fields set in place, one after the other (one buffer
    /// for all of them, not an allocation each).
    replaced: Vec<u8>,
    /// Fields added, already as lines (`name: value\r\n`).
    added: Vec<u8>,
}

impl RawHead {
    /// Indexes `head` (a whole head as `httparse` parsed it: start line,
    /// field lines, empty line) with `fields`, the fields it found in it.
    /// `None` when a line does not end in CRLF or a field is not a slice of
    /// `head`: such a message is rebuilt instead of copied.
    pub fn new(head: &[u8], fields: &[httparse::Header<'_>]) -> Option<RawHead> {
        RawHead::index(head, fields, || Bytes::copy_from_slice(head))
    }

    /// [`RawHead::new`] for a head already in `shared` (`head` is its
    /// bytes), without copying it again.
    pub fn of_shared(
        shared: &Bytes,
        head: &[u8],
        fields: &[httparse::Header<'_>],
    ) -> Option<RawHead> {
        if shared.len() != head.len() {
            return None;
        }
        RawHead::index(head, fields, || shared.clone())
    }

    fn index(
        head: &[u8],
        fields: &[httparse::Header<'_>],
        bytes: impl FnOnce() -> Bytes,
    ) -> Option<RawHead> {
        if head.len() > u32::MAX as usize || !head.ends_with(b"\r\n\r\n") {
            return None;
        }
        let base = head.as_ptr() as usize;
        let offset = |part: &[u8]| {
            let start = (part.as_ptr() as usize).checked_sub(base)?;
            (start + part.len() <= head.len()).then_some(start)
        };
        let mut index = Vec::with_capacity(fields.len());
        for field in fields {
            let line = offset(field.name.as_bytes())?;
            // An empty value may point anywhere: place it after the colon.
            let value_start = if field.value.is_empty() {
                line + field.name.len() + 1
            } else {
                offset(field.value)?
            };
            // The line before this one ended in CRLF.
            if line < 2 || &head[line - 2..line] != b"\r\n" {
                return None;
            }
            index.push(Field {
                line: line as u32,
                name_len: field.name.len() as u32,
                value_start: value_start as u32,
                value_len: field.value.len() as u32,
                removed: false,
                replaced: false,
            });
        }
        Some(RawHead {
            bytes: bytes(),
            fields: index,
            replaced: Vec::new(),
            added: Vec::new(),
        })
    }

    /// The start line, without its CRLF.
    pub fn start_line(&self) -> &[u8] {
        let end = self
            .fields
            .first()
            .map_or(self.bytes.len() - 4, |f| f.line as usize - 2);
        &self.bytes[..end]
    }

    /// The received fields still in the head, in order, as `(name,
    /// value)`, with the values set in place; the added ones are not among
    /// them.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .iter()
            .filter(|f| !f.removed)
            .map(|f| (self.name(f), self.value(f)))
    }

    /// Every field the head now has, received (as set) then added, as
    /// `(name, value)`.
    pub fn all_fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let added = self.added.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii_start()))
        });
        self.fields().chain(added)
    }

    /// Whether `field` is called `name` (any case); the lengths first.
    fn is(&self, field: &Field, name: &[u8]) -> bool {
        field.name_len as usize == name.len() && self.name(field).eq_ignore_ascii_case(name)
    }

    fn name(&self, field: &Field) -> &[u8] {
        let start = field.line as usize;
        &self.bytes[start..start + field.name_len as usize]
    }

    fn value(&self, field: &Field) -> &[u8] {
        let start = field.value_start as usize;
        let end = start + field.value_len as usize;
        if field.replaced {
            return &self.replaced[start..end];
        }
        &self.bytes[start..end]
    }

    /// The value of the first received field called `name` (any case),
    /// still in the head and as received, as a slice of the head's bytes
    /// (no copy).
    pub fn get_shared(&self, name: &str) -> Option<Bytes> {
        let field = self
            .fields
            .iter()
            .find(|f| !f.removed && self.is(f, name.as_bytes()))?;
        if field.replaced {
            return None;
        }
        let start = field.value_start as usize;
        Some(self.bytes.slice(start..start + field.value_len as usize))
    }

    /// Gives the first received field called `name` the value `value`, in
    /// its place (the name keeps its case), and removes the others; adds
    /// the field when there is none. `value` is the caller's to keep valid.
    pub fn set(&mut self, name: &str, value: &[u8]) {
        let mut first = true;
        for i in 0..self.fields.len() {
            let field = self.fields[i];
            if field.removed || !self.is(&field, name.as_bytes()) {
                continue;
            }
            let start = self.replaced.len();
            if first && start + value.len() <= u32::MAX as usize {
                if self.replaced.capacity() == 0 {
                    self.replaced.reserve(EDIT_ROOM.max(value.len()));
                }
                self.replaced.extend_from_slice(value);
                let field = &mut self.fields[i];
                field.replaced = true;
                field.value_start = start as u32;
                field.value_len = value.len() as u32;
                first = false;
            } else {
                self.fields[i].removed = true;
            }
        }
        if first {
            self.append(name.as_bytes(), value);
        }
    }

    /// The value of the first received field called `name` (any case)
    /// that is still in the head.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| !f.removed && self.is(f, name.as_bytes()))
            .map(|f| self.value(f))
    }

    /// Whether a field called `name` is still in the head, received or
    /// added.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some() || self.added_contains(name)
    }

    fn added_contains(&self, name: &str) -> bool {
        self.added.split(|&b| b == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()] == b':'
        })
    }

    /// Removes every received field called `name` (any case); whether one
    /// was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let mut found = false;
        for i in 0..self.fields.len() {
            let field = self.fields[i];
            if !field.removed && self.is(&field, name.as_bytes()) {
                self.fields[i].removed = true;
                found = true;
            }
        }
        found
    }

    /// Removes the received fields for which `drop` says so, given each
    /// field's name and value.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&[u8], &[u8]) -> bool) {
        for i in 0..self.fields.len() {
            let field = self.fields[i];
            if !field.removed && drop(self.name(&field), self.value(&field)) {
                self.fields[i].removed = true;
            }
        }
    }

    /// Adds a field after the received ones (`name` as given, which the
    /// caller keeps valid: a token, and a value without CR, LF or NUL).
    pub fn append(&mut self, name: &[u8], value: &[u8]) {
        let line = name.len() + value.len() + 4;
        // Room for the few fields a proxy adds, at the first: one
        // allocation rather than a growth per field.
        self.added.reserve(if self.added.capacity() == 0 {
            EDIT_ROOM.max(line)
        } else {
            line
        });
        self.added.extend_from_slice(name);
        self.added.extend_from_slice(b": ");
        self.added.extend_from_slice(value);
        self.added.extend_from_slice(b"\r\n");
    }

    /// The fields as a map, with every edit applied: for a path that needs
    /// one after all (hyper's upstream client). Fields whose name or value
    /// a map cannot hold are left out (the parsers refuse them before).
    pub fn to_header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::with_capacity(self.fields.len() + 4);
        // Received values as slices of the head (no copy each); set and
        // added ones copied.
        let received = self.fields.iter().filter(|f| !f.removed).map(|f| {
            let value = if f.replaced {
                http::HeaderValue::from_bytes(self.value(f))
            } else {
                let start = f.value_start as usize;
                http::HeaderValue::from_maybe_shared(
                    self.bytes.slice(start..start + f.value_len as usize),
                )
            };
            (self.name(f), value)
        });
        let added = self.all_fields().skip(self.fields().count());
        let added = added.map(|(name, value)| (name, http::HeaderValue::from_bytes(value)));
        for (name, value) in received.chain(added) {
            if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name), value) {
                map.append(name, value);
            }
        }
        map
    }

    /// Writes the field lines: the kept received ones as they came, in
    /// runs, then the added ones. Neither the start line nor the empty line
    /// that ends the head.
    pub fn write_fields(&self, out: &mut Vec<u8>) {
        let end = self.bytes.len() - 2;
        let mut run: Option<usize> = None;
        for field in &self.fields {
            let line = field.line as usize;
            let copied = !field.removed && !field.replaced;
            match (copied, run) {
                (false, Some(start)) => {
                    out.extend_from_slice(&self.bytes[start..line]);
                    run = None;
                }
                (true, None) => run = Some(line),
                _ => {}
            }
            if !field.removed && field.replaced {
                out.extend_from_slice(self.name(field));
                out.extend_from_slice(b": ");
                out.extend_from_slice(self.value(field));
                out.extend_from_slice(b"\r\n");
            }
        }
        if let Some(start) = run {
            out.extend_from_slice(&self.bytes[start..end]);
        }
        out.extend_from_slice(&self.added);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Option<RawHead> {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(text.as_bytes()).unwrap() {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("partial"),
        };
        RawHead::new(&text.as_bytes()[..len], response.headers)
    }

    fn fields(head: &RawHead) -> String {
        let mut out = Vec::new();
        head.write_fields(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn kept_fields_are_copied_as_they_came() {
        let text = "HTTP/1.1 200 OK\r\nServer: x\r\nX-Two:  2 \r\nx-three:3\r\n\r\n";
        let mut head = raw(text).unwrap();
        assert_eq!(head.start_line(), b"HTTP/1.1 200 OK");
        assert_eq!(fields(&head), "Server: x\r\nX-Two:  2 \r\nx-three:3\r\n");
        assert_eq!(head.get("x-two"), Some(&b"2"[..]));
        assert!(head.remove("X-TWO"));
        assert!(!head.remove("x-two"));
        assert_eq!(fields(&head), "Server: x\r\nx-three:3\r\n");
        head.append(b"x-request-id", b"abc");
        assert!(head.contains("X-Request-Id"));
        assert!(!head.contains("x-request"));
        assert_eq!(
            fields(&head),
            "Server: x\r\nx-three:3\r\nx-request-id: abc\r\n"
        );
        head.remove_where(|name, _| name.eq_ignore_ascii_case(b"server"));
        assert_eq!(fields(&head), "x-three:3\r\nx-request-id: abc\r\n");
        let names: Vec<_> = head.fields().map(|(n, _)| n.to_vec()).collect();
        assert_eq!(names, [b"x-three".to_vec()]);
        let all: Vec<_> = head
            .all_fields()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(
            all,
            [
                (b"x-three".to_vec(), b"3".to_vec()),
                (b"x-request-id".to_vec(), b"abc".to_vec())
            ]
        );
    }

    #[test]
    fn set_replaces_in_place_and_drops_repeats() {
        let text = "HTTP/1.1 200 OK\r\nA: 1\r\nHost: old\r\nB: 2\r\nhost: again\r\nC: 3\r\n\r\n";
        let mut head = raw(text).unwrap();
        head.set("host", b"new.example");
        assert_eq!(head.get("HOST"), Some(&b"new.example"[..]));
        assert_eq!(
            fields(&head),
            "A: 1\r\nHost: new.example\r\nB: 2\r\nC: 3\r\n"
        );
        head.set("x-new", b"v");
        assert_eq!(
            fields(&head),
            "A: 1\r\nHost: new.example\r\nB: 2\r\nC: 3\r\nx-new: v\r\n"
        );
        let shared = Bytes::from_static(text.as_bytes());
        let mut fields_buf = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut fields_buf);
        response.parse(&shared).unwrap();
        assert!(RawHead::of_shared(&shared, &shared, response.headers).is_some());
    }

    #[test]
    fn empty_values_and_heads_without_fields() {
        let head = raw("HTTP/1.1 204 No Content\r\nx-empty:\r\nx: 1\r\n\r\n").unwrap();
        assert_eq!(head.get("x-empty"), Some(&b""[..]));
        assert_eq!(fields(&head), "x-empty:\r\nx: 1\r\n");
        let head = raw("HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(head.start_line(), b"HTTP/1.1 204 No Content");
        assert_eq!(fields(&head), "");
    }

    #[test]
    fn bare_lf_lines_are_not_kept_raw() {
        assert!(raw("HTTP/1.1 200 OK\nx: 1\r\n\r\n").is_none());
        assert!(raw("HTTP/1.1 200 OK\r\nx: 1\n\r\n").is_none());
        assert!(raw("HTTP/1.1 200 OK\r\nx: 1\ny: 2\r\n\r\n").is_none());
    }
}
