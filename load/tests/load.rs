//! The load generator against servers that are not the demos: chunked bodies, servers that
//! close after each response, non-2xx answers, and the refusals that happen before any load.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use iotrace_load::{self as load, LoadConfig, LoadError};

/// Serves every connection with `answer(request_number)` until the client goes away.
fn foreign_server(answer: fn(u64) -> &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve(stream, answer));
        }
    });
    port
}

fn serve(stream: TcpStream, answer: fn(u64) -> &'static [u8]) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    for n in 0.. {
        // Read a request head (the load generator sends no body).
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let response = answer(n);
        if writer.write_all(response).is_err() {
            return;
        }
        if response.windows(17).any(|w| w == b"Connection: close") {
            return;
        }
    }
}

fn config(port: u16, requests: u64) -> LoadConfig {
    LoadConfig {
        connections: 4,
        requests: Some(requests),
        timeout: Duration::from_secs(5),
        ..LoadConfig::new(format!("http://localhost:{port}/anything"))
    }
}

#[test]
fn chunked_and_closing_responses_are_read() {
    let port = foreign_server(|n| match n % 3 {
        0 => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        1 => b"HTTP/1.1 204 No Content\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    });
    let report = load::run(&config(port, 200)).expect("load run");
    assert_eq!((report.requests, report.errors), (200, 0), "{report:?}");
}

#[test]
fn non_2xx_are_errors() {
    let port = foreign_server(|n| match n % 2 {
        0 => b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    });
    let report = load::run(&config(port, 100)).expect("load run");
    assert_eq!(report.requests, 100, "{report:?}");
    assert!(report.errors >= 40 && report.errors <= 60, "{report:?}");
}

#[test]
fn duration_bounds_the_run() {
    let port = foreign_server(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let cfg = LoadConfig {
        requests: None,
        duration: Some(Duration::from_millis(300)),
        ..config(port, 1)
    };
    let report = load::run(&cfg).expect("load run");
    assert!(report.duration_s < 1.0 && report.requests > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
}

#[test]
fn refuses_non_loopback_and_reports_unreachable() {
    for url in ["http://192.0.2.1/", "http://example.com/"] {
        let err = load::run(&LoadConfig::new(url)).expect_err("must refuse");
        assert!(matches!(err, LoadError::NotLoopback(_)), "{url}: {err}");
        assert!(err.to_string().contains("only loopback hosts"), "{err}");
    }
    let err = load::run(&LoadConfig::new("https://127.0.0.1/")).expect_err("must refuse");
    assert!(matches!(err, LoadError::InvalidUrl { .. }), "{err}");
    // A port nobody listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let err = load::run(&config(port, 10)).expect_err("nothing listens");
    assert!(matches!(err, LoadError::Connect { .. }), "{err}");
}
