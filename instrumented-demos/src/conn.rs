//! Per-connection input buffering and the sequential connection loop shared by the strategies
//! whose code reads top to bottom (OS threads and green threads).
//!
//! [`InBuf`] holds bytes read but not yet parsed, so a read may end mid-request or hold several
//! pipelined requests. [`serve_connection`] is the whole life of a keep-alive connection, written
//! against [`BlockingIo`]: a thread blocks in the kernel, a green thread suspends its coroutine.

use std::io;
use std::time::Duration;

use tracing::span::EnteredSpan;

use crate::http::{self, Action, Parsed, Request, Status};
use crate::work::{burn_cpu, request_span};

/// Free space guaranteed before each read.
const READ_CHUNK: usize = 4096;

/// Bytes read from a connection and not yet consumed by a request.
#[derive(Debug, Default)]
pub struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The next thing to do on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read more bytes (into [`InBuf::spare`]).
    Read,
    /// Handle this request.
    Request(Request),
    /// Answer 400 and close.
    Malformed,
}

impl InBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next whole request off the front, or says what else to do.
    pub fn next_request(&mut self) -> Next {
        match http::parse_request(&self.buf[self.start..self.end]) {
            Parsed::Partial => Next::Read,
            Parsed::Malformed => Next::Malformed,
            Parsed::Complete { request, len } => {
                self.start += len;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Next::Request(request)
            }
        }
    }

    /// Free space to read into; call [`InBuf::filled`] with the count read.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < READ_CHUNK && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`InBuf::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }
}

/// Blocking-style I/O for [`serve_connection`].
pub trait BlockingIo {
    /// Reads some bytes; `Ok(0)` at end of stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Waits `d` as if for a downstream service. `span` (the request span) is entered on entry
    /// and must be entered again on return; a green thread exits it while suspended.
    fn wait(&mut self, d: Duration, span: EnteredSpan) -> EnteredSpan;
}

/// Serves requests on one connection until the peer closes, an error, or `Connection: close`.
pub fn serve_connection<I: BlockingIo>(io: &mut I) -> io::Result<()> {
    let mut input = InBuf::new();
    let mut out = Vec::with_capacity(128);
    loop {
        match input.next_request() {
            Next::Read => match io.read(input.spare()) {
                Ok(0) => return Ok(()),
                Ok(n) => input.filled(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            },
            Next::Malformed => {
                out.clear();
                http::write_response(Status::BadRequest, false, &mut out);
                return io.write_all(&out);
            }
            Next::Request(req) => {
                let mut span = request_span(&req.action).entered();
                if let Action::Work(work) = req.action {
                    if work.io_ms > 0 {
                        span = io.wait(work.io_wait(), span);
                    }
                    burn_cpu(work.cpu());
                }
                out.clear();
                http::write_response(http::status_of(&req.action), req.keep_alive, &mut out);
                drop(span);
                io.write_all(&out)?;
                if !req.keep_alive {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbuf_handles_split_and_pipelined_input() {
        let wire = b"GET /work HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        let mut input = InBuf::new();
        assert_eq!(input.next_request(), Next::Read);
        let (a, b) = wire.split_at(10);
        input.spare()[..a.len()].copy_from_slice(a);
        input.filled(a.len());
        assert_eq!(input.next_request(), Next::Read);
        input.spare()[..b.len()].copy_from_slice(b);
        input.filled(b.len());
        assert!(matches!(input.next_request(), Next::Request(_)));
        assert!(matches!(input.next_request(), Next::Request(_)));
        assert_eq!(input.next_request(), Next::Read);
    }
}
