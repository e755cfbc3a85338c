//! The chunked coding of a request body (RFC 9112 §7.1), decoded from a
//! connection's read buffer as bytes arrive. Strict: every line ends in
//! CRLF, chunk sizes are 1–15 hex digits (see [`framing::chunk_size`]), the
//! data is followed by CRLF, and the trailer section is bounded and
//! dropped.

use bytes::{Buf, Bytes, BytesMut};

use super::framing::{self, Invalid, MAX_CHUNK_LINE, MAX_RESPONSE_HEAD};

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// What one step of decoding produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes (the data of a chunk, or part of it).
    Data(Bytes),
    /// More bytes must be read before anything can be decoded.
    NeedMore,
    /// The body ended (last chunk and trailer section read).
    Done,
}

/// An incremental decoder; one per chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the start of `buf`, consuming what it used. Bytes after
    /// the end of the body stay in `buf` (the next pipelined request).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Invalid> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, "chunk-size line too long")?
                    else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = framing::chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    // `take` ≤ `left`, both fit u64.
                    let rest = left - take as u64;
                    self.state = if rest == 0 {
                        State::DataEnd
                    } else {
                        State::Data(rest)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailer => {
                    let room = MAX_RESPONSE_HEAD.saturating_sub(self.trailer_bytes);
                    let Some(line) = take_line(buf, room, "trailer section too large")? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.trailer_bytes = self.trailer_bytes.saturating_add(line.len() + 2);
                    if self.trailer_bytes > MAX_RESPONSE_HEAD {
                        return Err("trailer section too large");
                    }
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if line.contains(&b'\r') || line.contains(&0) {
                        return Err("bad trailer field");
                    }
                }
            }
        }
    }
}

/// The next line of `buf` without its CRLF, consumed; `Ok(None)` if no
/// whole line is there yet. A line ending in a bare LF is invalid, and so
/// is one longer than `max`.
fn take_line(buf: &mut BytesMut, max: usize, too_long: Invalid) -> Result<Option<Bytes>, Invalid> {
    let window = &buf[..buf.len().min(max.saturating_add(2))];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > max.saturating_add(1) {
            return Err(too_long);
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err("line ends in a bare LF");
    }
    let line = buf.split_to(lf + 1).freeze();
    Ok(Some(line.slice(..lf - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes: the body and what is
    /// left after it, or the error.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), Invalid> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Done => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&input[fed..]);
                    return Ok((body, rest));
                }
                Decoded::NeedMore if fed >= input.len() => return Err("incomplete"),
                Decoded::NeedMore => {
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_whole_and_in_pieces() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, 100] {
            let (body, rest) = decode(input, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert_eq!(rest, b"GET /next", "step {step}");
        }
    }

    #[test]
    fn strict_lines_and_sizes() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;a\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nx\ry\r\n\r\n",
            b"\r\n",
        ] {
            assert!(
                decode(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        assert_eq!(
            decode(long.as_bytes(), 4096),
            Err("chunk-size line too long")
        );
        let trailers = format!("0\r\n{}\r\n", "x: y\r\n".repeat(MAX_RESPONSE_HEAD / 6 + 1));
        assert!(decode(trailers.as_bytes(), 4096).is_err());
    }
}
