//! HTTP/1.1 request parsing and response writing for the demo servers (sans I/O).
//!
//! [`parse_request`] looks at the front of a connection's input buffer and says whether it holds
//! a whole request (and how many bytes it used), only part of one, or bytes that cannot be parsed.
//! The route is `GET /work?io_ms=N&cpu_us=M`; anything else gets a 4xx answer on a connection
//! that stays open, because the request's end is known. Only unparseable input closes it.

use std::time::Duration;

/// Largest request head accepted; a partial head beyond this is malformed.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (it is read and ignored).
pub const MAX_BODY: usize = 1024 * 1024;
/// Most headers accepted in one request.
const MAX_HEADERS: usize = 64;
/// Upper bound of `io_ms` (one minute), so a request cannot park a connection for ever.
pub const MAX_IO_MS: u64 = 60_000;
/// Upper bound of `cpu_us` (ten seconds).
pub const MAX_CPU_US: u64 = 10_000_000;

/// What `GET /work` asks for: a wait as if for a downstream service, then some CPU work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Work {
    /// Milliseconds to wait.
    pub io_ms: u64,
    /// Microseconds of CPU to burn.
    pub cpu_us: u64,
}

impl Work {
    /// The wait as a [`Duration`].
    pub fn io_wait(&self) -> Duration {
        Duration::from_millis(self.io_ms)
    }

    /// The CPU burn as a [`Duration`].
    pub fn cpu(&self) -> Duration {
        Duration::from_micros(self.cpu_us)
    }
}

/// Response statuses the servers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
}

impl Status {
    /// Numeric status code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Status::Ok => "ok\n",
            Status::BadRequest => "bad request\n",
            Status::NotFound => "not found\n",
            Status::MethodNotAllowed => "method not allowed\n",
        }
    }
}

/// What the server should do for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wait, burn CPU, then answer 200.
    Work(Work),
    /// Answer at once with this (error) status.
    Reply(Status),
}

/// One parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

/// The outcome of looking at the front of an input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A whole request that used the first `len` bytes (head and body).
    Complete { request: Request, len: usize },
    /// Not HTTP/1.x, or over a limit: answer 400 and close, the request's end is unknown.
    Malformed,
}

/// Parses the request at the front of `buf`, if it is all there.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Parsed::Malformed,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Malformed,
    };
    if head_len > MAX_HEAD {
        return Parsed::Malformed;
    }
    let mut body_len: Option<usize> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = match std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                Some(n) => n,
                None => return Parsed::Malformed,
            };
            if body_len.is_some_and(|m| m != n) || n > MAX_BODY {
                return Parsed::Malformed;
            }
            body_len = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked request bodies are not supported; the request's end cannot be found.
            return Parsed::Malformed;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let len = head_len + body_len.unwrap_or(0);
    if buf.len() < len {
        return Parsed::Partial;
    }
    let keep_alive = match req.version {
        Some(1) => !conn_close,
        _ => conn_keep_alive && !conn_close,
    };
    let action = route(req.method.unwrap_or(""), req.path.unwrap_or(""));
    Parsed::Complete {
        request: Request { action, keep_alive },
        len,
    }
}

/// Maps a method and request target to an action.
pub fn route(method: &str, target: &str) -> Action {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/work" {
        return Action::Reply(Status::NotFound);
    }
    if method != "GET" {
        return Action::Reply(Status::MethodNotAllowed);
    }
    match parse_work_query(query) {
        Some(work) => Action::Work(work),
        None => Action::Reply(Status::BadRequest),
    }
}

/// Parses `io_ms=N&cpu_us=M` (both optional, other keys ignored); `None` if a value is bad.
fn parse_work_query(query: &str) -> Option<Work> {
    let mut work = Work::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "io_ms" => work.io_ms = value.parse().ok().filter(|&v| v <= MAX_IO_MS)?,
            "cpu_us" => work.cpu_us = value.parse().ok().filter(|&v| v <= MAX_CPU_US)?,
            _ => {}
        }
    }
    Some(work)
}

/// Appends a whole response with a small text body to `out`.
pub fn write_response(status: Status, keep_alive: bool, out: &mut Vec<u8>) {
    use std::io::Write;
    let body = status.body();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
        status.code(),
        status.reason(),
        body.len(),
        if keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            "Connection: close\r\n"
        },
        body
    );
}

/// The status a parsed request is answered with once its work (if any) is done.
pub fn status_of(action: &Action) -> Status {
    match action {
        Action::Work(_) => Status::Ok,
        Action::Reply(status) => *status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf) {
            Parsed::Complete { request, len } => (request, len),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn parses_work_request() {
        let buf = b"GET /work?io_ms=3&cpu_us=70 HTTP/1.1\r\nHost: x\r\n\r\n";
        let (req, len) = complete(buf);
        assert_eq!(len, buf.len());
        assert!(req.keep_alive);
        assert_eq!(
            req.action,
            Action::Work(Work {
                io_ms: 3,
                cpu_us: 70
            })
        );
    }

    #[test]
    fn every_prefix_is_partial() {
        let buf = b"GET /work?io_ms=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";
        for end in 0..buf.len() {
            assert_eq!(parse_request(&buf[..end]), Parsed::Partial, "prefix {end}");
        }
        assert_eq!(complete(buf).1, buf.len());
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let buf = b"GET /work?io_ms=1 HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET /wo";
        let (first, n1) = complete(buf);
        assert_eq!(
            first.action,
            Action::Work(Work {
                io_ms: 1,
                cpu_us: 0
            })
        );
        let (second, n2) = complete(&buf[n1..]);
        assert_eq!(second.action, Action::Reply(Status::NotFound));
        assert_eq!(parse_request(&buf[n1 + n2..]), Parsed::Partial);
    }

    #[test]
    fn bad_requests_keep_or_close_the_connection() {
        let bad_query = b"GET /work?io_ms=abc HTTP/1.1\r\n\r\n";
        assert_eq!(
            complete(bad_query).0.action,
            Action::Reply(Status::BadRequest)
        );
        let too_long = b"GET /work?io_ms=99999999 HTTP/1.1\r\n\r\n";
        assert_eq!(
            complete(too_long).0.action,
            Action::Reply(Status::BadRequest)
        );
        let post = b"POST /work HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            complete(post).0.action,
            Action::Reply(Status::MethodNotAllowed)
        );
        assert_eq!(parse_request(b"\x00\x01garbage\r\n\r\n"), Parsed::Malformed);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parsed::Malformed
        );
        let chunked = b"POST /work HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request(chunked), Parsed::Malformed);
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_request(&huge), Parsed::Malformed);
    }

    #[test]
    fn connection_header_and_version_decide_keep_alive() {
        assert!(
            !complete(b"GET /work HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!complete(b"GET /work HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET /work HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn response_has_content_length() {
        let mut out = Vec::new();
        write_response(Status::Ok, true, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
    }
}
