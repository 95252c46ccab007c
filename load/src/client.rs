//! The connection tasks of a load run: each keeps one request in flight on its own keep-alive
//! connection, reopening it after any error, until the shared budget or the deadline runs out.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::report::{Latency, LoadReport};
use crate::response::{Progress, Response, ResponseError, ResponseReader};
use crate::url::Target;
use crate::LoadError;

/// Pause after a failed connect, so a dead server is not hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Histogram range: 1 µs to 1 hour, 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;

/// A validated load run.
#[derive(Debug)]
pub(super) struct Plan {
    pub target: Target,
    pub connections: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub timeout: Duration,
}

/// What one connection task measured.
struct Stats {
    /// Latencies not yet added to [`Shared::latency_us`].
    batch: Vec<u64>,
    requests: u64,
    errors: u64,
}

/// Latencies are added to the shared histogram this many at a time: one histogram per
/// connection would cost hundreds of KiB each, and one lock per request is needless.
const BATCH: usize = 256;

impl Stats {
    fn record(&mut self, shared: &Shared, latency: Duration) {
        self.batch.push(latency.as_micros().max(1) as u64);
        if self.batch.len() >= BATCH {
            self.flush(shared);
        }
    }

    fn flush(&mut self, shared: &Shared) {
        let mut histogram = shared
            .latency_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for &us in &self.batch {
            histogram.saturating_record(us);
        }
        self.batch.clear();
    }
}

/// Why one request failed.
enum Failure {
    Connect,
    /// The connection was reused and closed before any response byte: retry on a new one.
    Stale,
    Other,
}

/// Runs the plan on the current runtime.
pub(super) async fn drive(plan: Plan) -> Result<LoadReport, LoadError> {
    let addr = plan.target.addr;
    // Probe first, so an unreachable server is one clear error, not a report full of errors.
    let probe = match tokio::time::timeout(plan.timeout, connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(LoadError::Connect { addr, error }),
        Err(_) => {
            let error = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            return Err(LoadError::Connect { addr, error });
        }
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: iotrace-load\r\nAccept: */*\r\n\r\n",
        plan.target.path, plan.target.host_header
    );
    let start = Instant::now();
    let shared = Arc::new(Shared {
        request: request.into_bytes(),
        target: plan.target,
        budget: AtomicU64::new(plan.requests.unwrap_or(u64::MAX)),
        timeout: plan.timeout,
        deadline: plan.duration.map(|d| start + d),
        latency_us: Mutex::new(new_histogram()),
    });
    let mut first = Some(probe);
    let tasks: Vec<_> = (0..plan.connections)
        .map(|_| tokio::spawn(connection(Arc::clone(&shared), first.take())))
        .collect();
    let (mut requests, mut errors) = (0, 0);
    for task in tasks {
        let stats = task
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        requests += stats.requests;
        errors += stats.errors;
    }
    let duration_s = start.elapsed().as_secs_f64();
    let latency_us = {
        let histogram = shared
            .latency_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Latency::from_histogram(&histogram)
    };
    Ok(LoadReport {
        requests,
        errors,
        duration_s,
        req_per_s: if duration_s > 0.0 {
            requests as f64 / duration_s
        } else {
            0.0
        },
        latency_us,
    })
}

/// State shared by the connection tasks.
#[derive(Debug)]
struct Shared {
    request: Vec<u8>,
    target: Target,
    /// Requests left to start.
    budget: AtomicU64,
    timeout: Duration,
    deadline: Option<Instant>,
    /// Latencies of successful requests, in microseconds.
    latency_us: Mutex<Histogram<u64>>,
}

impl Shared {
    fn take_one(&self) -> bool {
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

async fn connect(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One connection's life: requests until the budget or the deadline runs out.
async fn connection(shared: Arc<Shared>, mut stream: Option<TcpStream>) -> Stats {
    let mut stats = Stats {
        batch: Vec::with_capacity(BATCH),
        requests: 0,
        errors: 0,
    };
    let mut buf = Vec::with_capacity(8192);
    let mut reader = ResponseReader::new();
    while !shared.past_deadline() && shared.take_one() {
        let limit = Instant::now() + shared.timeout;
        let end = shared.deadline.map_or(limit, |d| d.min(limit));
        let mut retried = false;
        let outcome = loop {
            let attempt = exchange(&shared, &mut stream, &mut buf, &mut reader);
            match tokio::time::timeout_at(end, attempt).await {
                Ok(Err(Failure::Stale)) if !retried => retried = true,
                other => break other,
            }
        };
        match outcome {
            Ok(Ok((response, latency))) => {
                stats.requests += 1;
                if (200..300).contains(&response.status) {
                    stats.record(&shared, latency);
                } else {
                    stats.errors += 1;
                }
                if response.close {
                    stream = None;
                }
            }
            Err(_) if end < limit => break, // the run ended mid-request: not counted
            Ok(Err(failure)) => {
                stats.requests += 1;
                stats.errors += 1;
                stream = None;
                if matches!(failure, Failure::Connect) {
                    tokio::time::sleep_until(end.min(Instant::now() + CONNECT_BACKOFF)).await;
                }
            }
            Err(_) => {
                stats.requests += 1;
                stats.errors += 1;
                stream = None;
            }
        }
    }
    stats.flush(&shared);
    stats
}

/// Sends one request and reads its response, connecting first if needed.
async fn exchange(
    shared: &Shared,
    stream: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    reader: &mut ResponseReader,
) -> Result<(Response, Duration), Failure> {
    let reused = stream.is_some();
    let conn = match stream {
        Some(conn) => conn,
        None => {
            buf.clear();
            let fresh = connect(shared.target.addr)
                .await
                .map_err(|_| Failure::Connect)?;
            stream.insert(fresh)
        }
    };
    reader.reset();
    let started = Instant::now();
    let mut got_bytes = false;
    let stale_or = |got: bool| {
        if reused && !got {
            Failure::Stale
        } else {
            Failure::Other
        }
    };
    let result = async {
        conn.write_all(&shared.request)
            .await
            .map_err(|_| stale_or(false))?;
        loop {
            match reader
                .advance(buf)
                .map_err(|_: ResponseError| Failure::Other)?
            {
                Progress::Done(response) => return Ok(response),
                Progress::NeedMore => {
                    buf.reserve(4096);
                    match conn.read_buf(buf).await {
                        Ok(0) => return reader.eof().map_err(|_| stale_or(got_bytes)),
                        Ok(_) => got_bytes = true,
                        Err(_) => return Err(stale_or(got_bytes)),
                    }
                }
            }
        }
    }
    .await;
    if result.is_err() {
        *stream = None;
    }
    result.map(|response| (response, started.elapsed()))
}
