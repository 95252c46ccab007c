//! The load generator behind `iotrace load`: keep-alive HTTP/1.1 GETs over N concurrent
//! connections to one URL, for a duration or a number of requests, with latency percentiles.
//!
//! It speaks plain HTTP/1.1 (Content-Length, chunked and read-until-close bodies), so it drives
//! any server, not only the demos; but it only ever connects to loopback addresses.
//!
//! ```no_run
//! use std::time::Duration;
//! use iotrace_load::{run, LoadConfig};
//!
//! let cfg = LoadConfig {
//!     requests: Some(1000),
//!     ..LoadConfig::new("http://127.0.0.1:8080/work?io_ms=1")
//! };
//! let report = run(&cfg)?;
//! print!("{}", report.to_text());
//! # Ok::<(), iotrace_load::LoadError>(())
//! ```
//!
//! The [`ready`] module is the other half of driving a demo server: the one line it prints
//! once it listens, and the reader that waits for that line.
//!
//! Requests run on one thread, an `epoll(7)` loop of non-blocking sockets, so the `iotrace`
//! binary links no async runtime. All `unsafe` is in the private `sys` module.

#![deny(unsafe_code)]

mod client;
pub mod ready;
pub mod report;
pub mod response;
#[allow(unsafe_code)]
mod sys;
pub mod url;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

pub use report::{Latency, LoadReport};
pub use sys::raise_nofile_limit;

/// Run length when neither a duration nor a request count is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(5);
/// Most connections one run may open.
pub const MAX_CONNECTIONS: usize = 50_000;

/// What to load and how hard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadConfig {
    /// `http://HOST[:PORT]/PATH?QUERY`, HOST one of 127.0.0.0/8, `localhost`, `[::1]`.
    pub url: String,
    /// Concurrent keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// Stop after this long (requests in flight then are not counted).
    pub duration: Option<Duration>,
    /// Stop after this many requests (answered or failed).
    pub requests: Option<u64>,
    /// Per-request limit (connect, send, whole response); a timeout is an error.
    pub timeout: Duration,
}

impl LoadConfig {
    /// 16 connections, 5 s timeout, no explicit bound (so [`DEFAULT_DURATION`]).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connections: 16,
            duration: None,
            requests: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a load run could not start.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "refusing to send load to `{0}`: only loopback hosts are allowed \
         (127.0.0.0/8, localhost, [::1])"
    )]
    NotLoopback(String),
    #[error("invalid load settings: {0}")]
    InvalidConfig(String),
    // The OS errors below are part of their messages and deliberately not sources: error
    // chains (anyhow's `{:#}`) would print them twice.
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: SocketAddr, error: io::Error },
    #[error("the load generator's event loop failed: {0}")]
    Runtime(io::Error),
}

/// Runs the load and reports what it measured, on the calling thread (which it blocks).
///
/// Fails before sending anything if the URL or settings are invalid or the server cannot be
/// reached; once running, failed requests are counted in [`LoadReport::errors`] and the
/// connection is reopened.
pub fn run(cfg: &LoadConfig) -> Result<LoadReport, LoadError> {
    let target = url::parse(&cfg.url)?;
    if cfg.connections == 0 || cfg.connections > MAX_CONNECTIONS {
        return Err(LoadError::InvalidConfig(format!(
            "connections must be between 1 and {MAX_CONNECTIONS}"
        )));
    }
    if cfg.timeout.is_zero() {
        return Err(LoadError::InvalidConfig(
            "timeout must be above zero".into(),
        ));
    }
    if cfg.duration.is_some_and(|d| d.is_zero()) || cfg.requests == Some(0) {
        return Err(LoadError::InvalidConfig(
            "duration and request count must be above zero".into(),
        ));
    }
    // Each connection is a file descriptor; the soft limit is often 1024. Best effort.
    let _ = crate::sys::raise_nofile_limit();
    let plan = client::Plan {
        target,
        connections: cfg.connections,
        duration: match (cfg.duration, cfg.requests) {
            (None, None) => Some(DEFAULT_DURATION),
            (d, _) => d,
        },
        requests: cfg.requests,
        timeout: cfg.timeout,
    };
    client::drive(plan)
}
