//! An incremental HTTP/1.1 response reader (sans I/O): status line and headers with
//! `httparse`, then a body framed by `Content-Length`, `Transfer-Encoding: chunked`, or the end
//! of the connection. Body bytes are consumed as they arrive and never stored, so any size works.

use thiserror::Error;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
const MAX_HEADERS: usize = 64;

/// A response that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the response ended")]
    Truncated,
}

/// The parts of a finished response the load generator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server will close the connection (or already did, to end the body).
    pub close: bool,
}

/// Result of feeding bytes to the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    Done(Response),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
}

/// Reads one response; make a new one (or [`ResponseReader::reset`]) per request.
#[derive(Debug)]
pub struct ResponseReader {
    state: State,
    status: u16,
    close: bool,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    pub fn new() -> Self {
        Self {
            state: State::Head,
            status: 0,
            close: false,
        }
    }

    /// Gets ready for the next response on the same connection.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Consumes what it can from the front of `buf`; bytes after a finished response are left.
    pub fn advance(&mut self, buf: &mut Vec<u8>) -> Result<Progress, ResponseError> {
        let mut pos = 0;
        let result = self.step_all(buf, &mut pos);
        buf.drain(..pos);
        result
    }

    /// The peer closed the connection: ends a read-until-close body, else an error.
    pub fn eof(&mut self) -> Result<Response, ResponseError> {
        match self.state {
            State::UntilClose => Ok(self.done()),
            _ => Err(ResponseError::Truncated),
        }
    }

    fn done(&mut self) -> Response {
        Response {
            status: self.status,
            close: self.close,
        }
    }

    fn step_all(&mut self, buf: &[u8], pos: &mut usize) -> Result<Progress, ResponseError> {
        loop {
            let rest = &buf[*pos..];
            match self.state {
                State::Head => match self.parse_head(rest)? {
                    Some(n) => *pos += n,
                    None => return Ok(Progress::NeedMore),
                },
                State::Length(0) => return Ok(Progress::Done(self.done())),
                State::Length(n) | State::ChunkData(n) => {
                    if rest.is_empty() {
                        return Ok(Progress::NeedMore);
                    }
                    let take = n.min(rest.len() as u64);
                    *pos += take as usize;
                    self.state = match self.state {
                        State::ChunkData(_) if take == n => State::ChunkEnd,
                        State::ChunkData(_) => State::ChunkData(n - take),
                        _ => State::Length(n - take),
                    };
                }
                State::ChunkEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        *pos += 2;
                        self.state = State::ChunkSize;
                    }
                    [] | [b'\r'] => return Ok(Progress::NeedMore),
                    _ => return Err(ResponseError::Malformed("chunk not followed by CRLF")),
                },
                State::ChunkSize | State::Trailers => {
                    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() > MAX_LINE {
                            return Err(ResponseError::Malformed("line too long"));
                        }
                        return Ok(Progress::NeedMore);
                    };
                    let line = &rest[..end];
                    *pos += end + 2;
                    if self.state == State::Trailers {
                        if line.is_empty() {
                            return Ok(Progress::Done(self.done()));
                        }
                    } else {
                        let size = parse_chunk_size(line)?;
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                }
                State::UntilClose => {
                    *pos = buf.len();
                    return Ok(Progress::NeedMore);
                }
            }
        }
    }

    /// Parses a head at the front of `buf`; returns its length, or `None` if incomplete.
    fn parse_head(&mut self, buf: &[u8]) -> Result<Option<usize>, ResponseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(ResponseError::Malformed("head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ResponseError::Malformed("bad status line or headers")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(ResponseError::Malformed("unexpected protocol switch"));
            }
            return Ok(Some(len)); // informational: the real response follows
        }
        let (mut length, mut chunked, mut other_coding) = (None, false, false);
        let (mut conn_close, mut keep_alive) = (false, false);
        for h in resp.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("");
            if h.name.eq_ignore_ascii_case("content-length") {
                let n: u64 = value
                    .trim()
                    .parse()
                    .map_err(|_| ResponseError::Malformed("bad Content-Length"))?;
                if length.is_some_and(|m| m != n) {
                    return Err(ResponseError::Malformed("conflicting Content-Length"));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value.rsplit(',').next().unwrap_or("").trim();
                chunked = last.eq_ignore_ascii_case("chunked");
                other_coding = !chunked;
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    conn_close |= token.eq_ignore_ascii_case("close");
                    keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
        }
        self.status = status;
        self.close = conn_close || (resp.version != Some(1) && !keep_alive);
        self.state = if status == 204 || status == 304 {
            State::Length(0)
        } else if chunked {
            State::ChunkSize
        } else if other_coding {
            State::UntilClose
        } else if let Some(n) = length {
            State::Length(n)
        } else {
            State::UntilClose
        };
        if self.state == State::UntilClose {
            self.close = true;
        }
        Ok(Some(len))
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, ResponseError> {
    let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
    std::str::from_utf8(hex)
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 15)
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or(ResponseError::Malformed("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` one byte at a time; returns the response and the bytes left over.
    fn read_bytewise(wire: &[u8]) -> (Response, Vec<u8>) {
        let mut reader = ResponseReader::new();
        let mut buf = Vec::new();
        for &b in wire {
            buf.push(b);
            if let Progress::Done(r) = reader.advance(&mut buf).expect("valid") {
                return (r, buf);
            }
        }
        panic!("response not finished");
    }

    #[test]
    fn content_length_body() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        let (r, rest) = read_bytewise(wire);
        assert_eq!(
            r,
            Response {
                status: 200,
                close: false
            }
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let wire = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                     3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n";
        let (r, _) = read_bytewise(wire);
        assert_eq!(r.status, 404);
        let mut buf = wire.to_vec();
        buf.extend_from_slice(b"HTTP/1.1");
        let progress = ResponseReader::new().advance(&mut buf).expect("valid");
        assert!(matches!(progress, Progress::Done(_)));
        assert_eq!(buf, b"HTTP/1.1", "the next response is left in the buffer");
    }

    #[test]
    fn informational_then_final_and_no_body_statuses() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(read_bytewise(wire).0.status, 204);
    }

    #[test]
    fn body_until_close() {
        let mut reader = ResponseReader::new();
        let mut buf = b"HTTP/1.0 200 OK\r\n\r\nsome body".to_vec();
        assert_eq!(reader.advance(&mut buf), Ok(Progress::NeedMore));
        assert_eq!(
            reader.eof(),
            Ok(Response {
                status: 200,
                close: true
            })
        );
    }

    #[test]
    fn truncated_and_malformed() {
        let mut reader = ResponseReader::new();
        let mut buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab".to_vec();
        assert_eq!(reader.advance(&mut buf), Ok(Progress::NeedMore));
        assert_eq!(reader.eof(), Err(ResponseError::Truncated));
        let mut bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
        assert!(ResponseReader::new().advance(&mut bad).is_err());
        let mut garbage = b"\x00garbage\r\n\r\n".to_vec();
        assert!(ResponseReader::new().advance(&mut garbage).is_err());
    }
}
