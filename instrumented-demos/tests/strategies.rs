//! Every scenario runs against every I/O strategy: `strategy_tests!` expands one scenario fn
//! into a test per demo binary (a matrix, like ripgrep's `rgtest!` over regex engines).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use iotrace_load::{self as load, LoadConfig};

/// A demo server child process, killed if the test ends before it exits.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(bin: &str) -> Self {
        let mut child = Command::new(bin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the listening line");
        let port = line
            .trim_end()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{bin}: unexpected first line {line:?}"));
        Server { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("setting a read timeout");
        stream
    }

    /// Sends SIGTERM and waits up to `limit` for the exit status.
    fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory effects; `pid` is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one response with a Content-Length body; returns (status, body).
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("numeric Content-Length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (status, String::from_utf8(body).expect("utf-8 body"))
}

/// 300 requests over 16 connections, all answered; then SIGTERM with an idle connection
/// open exits 0 promptly.
fn load_then_sigterm(bin: &str) {
    let mut server = Server::start(bin);
    let cfg = LoadConfig {
        connections: 16,
        requests: Some(300),
        timeout: Duration::from_secs(5),
        ..LoadConfig::new(server.url("/work?io_ms=1&cpu_us=50"))
    };
    let report = load::run(&cfg).expect("load run");
    assert_eq!(
        (report.requests, report.errors),
        (300, 0),
        "{bin}: {report:?}"
    );
    assert!(
        report.latency_us.p50 >= 1000,
        "{bin}: waited less than io_ms: {report:?}"
    );
    let _idle = server.connect();
    let status = server.terminate(Duration::from_secs(2));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{bin}: exit after SIGTERM"
    );
}

/// A 400 and a 404 leave the connection open; pipelined requests are all answered in order.
fn bad_request_keeps_connection(bin: &str) {
    let server = Server::start(bin);
    let mut conn = server.connect();
    let mut reader = BufReader::new(conn.try_clone().expect("cloning the stream"));
    conn.write_all(b"GET /work?io_ms=abc HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut reader).0, 400, "{bin}");
    conn.write_all(b"GET /work?io_ms=1&cpu_us=10 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert_eq!(
        read_response(&mut reader),
        (200, "ok\n".to_string()),
        "{bin}"
    );
    conn.write_all(b"GET /work HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET /wo")
        .expect("write");
    conn.write_all(b"rk?io_ms=2 HTTP/1.1\r\n\r\n")
        .expect("write");
    let statuses: Vec<u16> = (0..3).map(|_| read_response(&mut reader).0).collect();
    assert_eq!(statuses, [200, 404, 200], "{bin}");
    conn.write_all(b"\x00\x01 garbage\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut reader).0, 400, "{bin}");
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .expect("the server closes after garbage");
    assert!(rest.is_empty(), "{bin}");
}

macro_rules! strategy_tests {
    ($($scenario:ident),* $(,)?) => {
        mod threads { $(#[test] fn $scenario() { super::$scenario(env!("CARGO_BIN_EXE_threads")) })* }
        mod green { $(#[test] fn $scenario() { super::$scenario(env!("CARGO_BIN_EXE_green")) })* }
        mod epoll { $(#[test] fn $scenario() { super::$scenario(env!("CARGO_BIN_EXE_epoll")) })* }
        mod tokio { $(#[test] fn $scenario() { super::$scenario(env!("CARGO_BIN_EXE_tokio")) })* }
        mod tokio_blocking {
            $(#[test] fn $scenario() { super::$scenario(env!("CARGO_BIN_EXE_tokio-blocking")) })*
        }
    };
}

strategy_tests!(load_then_sigterm, bad_request_keeps_connection);
