//! The HTTP/1.1 codec: request-head parsing with `httparse` and the
//! framing rules of RFC 9112 (§6 body length, §7 chunked coding), shared by
//! the client-facing server (`server::http1`) and the upstream client
//! (`upstream::h1`), so that the two sides cannot disagree about where a
//! message ends.
//!
//! Pure functions on byte buffers, no I/O; the connection loops that own
//! sockets live in `server` and `upstream`.

pub mod body;
pub mod chunked;
pub mod date;
pub mod framing;
pub mod head;
pub mod request;
