//! The connections of a load run, driven on one thread by an `epoll(7)` loop: each keeps one
//! request in flight on its own keep-alive connection, reopening it after any error, until the
//! shared budget or the deadline runs out.
//!
//! Each connection is an explicit state machine ([`State`]); sockets are non-blocking and
//! edge-triggered, so a connection is always driven until its socket says `WouldBlock`.
//! Timers (request timeouts, connect back-off) are a heap holding at most a few entries per
//! connection: an entry that fires early for a connection whose timer moved later is pushed
//! again at the new time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{Latency, LoadReport};
use crate::response::{Progress, Response, ResponseReader};
use crate::sys::{self, Epoll};
use crate::url::Target;
use crate::LoadError;

/// Pause after a failed connect, so a dead server is not hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Histogram range: 1 µs to 1 hour, 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;

/// A validated load run.
#[derive(Debug)]
pub(crate) struct Plan {
    pub target: Target,
    pub connections: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub timeout: Duration,
}

/// Why one request failed.
enum Failure {
    Connect,
    /// The connection was reused and closed before any response byte: retry on a new one.
    Stale,
    Other,
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the socket to connect.
    Connecting,
    /// Writing the request; this many bytes are out.
    Sending(usize),
    /// Reading the response.
    Receiving,
    /// After a failed connect, waiting for the timer before the next request.
    Backoff,
    /// No request left for it.
    Done,
}

/// One connection slot (its socket is replaced whenever it has to reconnect).
struct Conn {
    stream: Option<TcpStream>,
    /// Bumped with every new socket, so events of a closed one are ignored.
    generation: u32,
    state: State,
    buf: Vec<u8>,
    reader: ResponseReader,
    /// The current request went out on a socket that had already served one.
    reused: bool,
    /// Response bytes arrived for the current attempt.
    got_bytes: bool,
    /// The current request was retried once after a stale connection.
    retried: bool,
    /// When the current request was sent (after connecting).
    started: Instant,
    /// When the connection needs attention: the current request's limit, or the back-off's end.
    wake: Option<Instant>,
    /// The earliest heap entry of this connection, if any.
    queued: Option<Instant>,
}

/// The whole run: the shared settings, the connections and what they measured.
struct Run {
    epoll: Epoll,
    request: Vec<u8>,
    addr: SocketAddr,
    /// Requests left to start.
    budget: u64,
    timeout: Duration,
    deadline: Option<Instant>,
    conns: Vec<Conn>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Connections not [`State::Done`].
    active: usize,
    requests: u64,
    errors: u64,
    /// Latencies of successful requests, in microseconds.
    latency_us: Histogram<u64>,
    scratch: Box<[u8]>,
}

/// Runs the plan on the calling thread. `probe` is an already connected stream to the
/// target (the run's first connection).
pub(crate) fn drive(plan: Plan) -> Result<LoadReport, LoadError> {
    let addr = plan.target.addr;
    // Probe first, so an unreachable server is one clear error, not a report full of errors.
    let probe = TcpStream::connect_timeout(&addr, plan.timeout)
        .and_then(|s| s.set_nodelay(true).map(|()| s))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(|error| LoadError::Connect { addr, error })?;
    let epoll = Epoll::new().map_err(LoadError::Runtime)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: iotrace-load\r\nAccept: */*\r\n\r\n",
        plan.target.path, plan.target.host_header
    );
    let start = Instant::now();
    let mut run = Run {
        epoll,
        request: request.into_bytes(),
        addr,
        budget: plan.requests.unwrap_or(u64::MAX),
        timeout: plan.timeout,
        deadline: plan.duration.map(|d| start + d),
        conns: Vec::with_capacity(plan.connections),
        timers: BinaryHeap::new(),
        active: plan.connections,
        requests: 0,
        errors: 0,
        latency_us: Histogram::new_with_bounds(1, HIST_MAX_US, 3)
            .expect("constant histogram bounds are valid"),
        scratch: vec![0; 16 * 1024].into_boxed_slice(),
    };
    let mut probe = Some(probe);
    for slot in 0..plan.connections {
        run.conns.push(Conn {
            stream: None,
            generation: 0,
            state: State::Done,
            buf: Vec::new(),
            reader: ResponseReader::new(),
            reused: false,
            got_bytes: false,
            retried: false,
            started: start,
            wake: None,
            queued: None,
        });
        if let Some(stream) = probe.take() {
            run.attach(slot, stream)
                .map_err(|error| LoadError::Connect { addr, error })?;
        }
        run.next_request(slot);
    }
    run.event_loop().map_err(LoadError::Runtime)?;
    let duration_s = start.elapsed().as_secs_f64();
    Ok(LoadReport {
        requests: run.requests,
        errors: run.errors,
        duration_s,
        req_per_s: if duration_s > 0.0 {
            run.requests as f64 / duration_s
        } else {
            0.0
        },
        latency_us: Latency::from_histogram(&run.latency_us),
    })
}

fn token(slot: usize, generation: u32) -> u64 {
    (slot as u64) << 32 | u64::from(generation)
}

impl Run {
    /// Until every connection is done or the deadline passes (requests then in flight are
    /// not counted).
    fn event_loop(&mut self) -> io::Result<()> {
        let mut tokens = Vec::with_capacity(1024);
        while self.active > 0 {
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                break;
            }
            self.fire_timers(now);
            if self.active == 0 {
                break;
            }
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            let until = match (next, self.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = until.map(|t| t.saturating_duration_since(Instant::now()));
            tokens.clear();
            self.epoll.wait(&mut tokens, wait)?;
            for &token in &tokens {
                let slot = (token >> 32) as usize;
                if self.conns[slot].generation == token as u32 && self.conns[slot].stream.is_some()
                {
                    self.advance(slot);
                }
            }
        }
        Ok(())
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, slot))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let conn = &mut self.conns[slot];
            if conn.queued == Some(at) {
                conn.queued = None;
            }
            match conn.wake {
                Some(wake) if wake <= now => {
                    conn.wake = None;
                    if conn.state == State::Backoff {
                        self.next_request(slot);
                    } else {
                        // The request's time is up: an error, and a fresh connection.
                        self.requests += 1;
                        self.errors += 1;
                        self.drop_stream(slot);
                        self.next_request(slot);
                    }
                }
                Some(wake) => self.set_timer(slot, wake),
                None => {}
            }
        }
    }

    /// Sets the connection's timer, pushing a heap entry unless one fires before it.
    fn set_timer(&mut self, slot: usize, at: Instant) {
        let conn = &mut self.conns[slot];
        conn.wake = Some(at);
        if conn.queued.is_none_or(|q| at < q) {
            conn.queued = Some(at);
            self.timers.push(Reverse((at, slot)));
        }
    }

    fn drop_stream(&mut self, slot: usize) {
        // Closing the socket removes it from the epoll set.
        self.conns[slot].stream = None;
    }

    /// Gives the connection a new socket and watches it.
    fn attach(&mut self, slot: usize, stream: TcpStream) -> io::Result<()> {
        let conn = &mut self.conns[slot];
        conn.generation = conn.generation.wrapping_add(1);
        conn.buf.clear();
        self.epoll
            .add(stream.as_fd(), token(slot, conn.generation))?;
        conn.stream = Some(stream);
        Ok(())
    }

    /// Starts the connection's next request, or retires it if none is left.
    fn next_request(&mut self, slot: usize) {
        let past_deadline = self.deadline.is_some_and(|d| Instant::now() >= d);
        if past_deadline || self.budget == 0 {
            self.conns[slot].state = State::Done;
            self.conns[slot].wake = None;
            self.drop_stream(slot);
            self.active -= 1;
            return;
        }
        self.budget -= 1;
        let limit = Instant::now() + self.timeout;
        let end = self.deadline.map_or(limit, |d| d.min(limit));
        self.set_timer(slot, end);
        self.conns[slot].retried = false;
        self.start_attempt(slot);
    }

    /// Sends the current request, connecting first if needed.
    fn start_attempt(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        conn.got_bytes = false;
        conn.reader.reset();
        if conn.stream.is_some() {
            conn.reused = true;
            conn.state = State::Sending(0);
            conn.started = Instant::now();
            self.advance(slot);
            return;
        }
        conn.reused = false;
        conn.state = State::Connecting;
        let attached = sys::connect_nonblocking(self.addr).and_then(|s| self.attach(slot, s));
        if attached.is_err() {
            self.failed(slot, Failure::Connect);
        }
        // Otherwise the edge-triggered registration reports the socket once it connects.
    }

    /// Drives the connection as far as its socket allows.
    fn advance(&mut self, slot: usize) {
        match self.step(slot) {
            Ok(Some(response)) => {
                let conn = &mut self.conns[slot];
                let latency = conn.started.elapsed();
                self.requests += 1;
                if (200..300).contains(&response.status) {
                    self.latency_us
                        .saturating_record(latency.as_micros().max(1) as u64);
                } else {
                    self.errors += 1;
                }
                if response.close {
                    self.drop_stream(slot);
                }
                self.next_request(slot);
            }
            Ok(None) => {}
            Err(failure) => self.failed(slot, failure),
        }
    }

    /// The current attempt failed: retry once on a fresh connection if the reused one was
    /// stale, otherwise count an error and go on (after a pause if connecting failed).
    fn failed(&mut self, slot: usize, failure: Failure) {
        self.drop_stream(slot);
        let conn = &mut self.conns[slot];
        if matches!(failure, Failure::Stale) && !conn.retried {
            conn.retried = true;
            self.start_attempt(slot);
            return;
        }
        self.requests += 1;
        self.errors += 1;
        if matches!(failure, Failure::Connect) {
            conn.state = State::Backoff;
            let end = conn.wake.unwrap_or_else(Instant::now);
            self.set_timer(slot, end.min(Instant::now() + CONNECT_BACKOFF));
        } else {
            self.next_request(slot);
        }
    }

    /// One attempt's progress: `Ok(Some)` once the response is read, `Ok(None)` when the
    /// socket would block.
    fn step(&mut self, slot: usize) -> Result<Option<Response>, Failure> {
        let conn = &mut self.conns[slot];
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(None);
        };
        let stale_or = |reused: bool, got: bool| {
            if reused && !got {
                Failure::Stale
            } else {
                Failure::Other
            }
        };
        loop {
            match conn.state {
                State::Connecting => {
                    match stream.take_error() {
                        Ok(None) => {}
                        Ok(Some(_)) | Err(_) => return Err(Failure::Connect),
                    }
                    match stream.peer_addr() {
                        Ok(_) => {
                            conn.state = State::Sending(0);
                            conn.started = Instant::now();
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(None),
                        Err(_) => return Err(Failure::Connect),
                    }
                }
                State::Sending(sent) => match stream.write(&self.request[sent..]) {
                    Ok(0) => return Err(stale_or(conn.reused, false)),
                    Ok(n) if sent + n == self.request.len() => conn.state = State::Receiving,
                    Ok(n) => conn.state = State::Sending(sent + n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(stale_or(conn.reused, false)),
                },
                State::Receiving => {
                    match conn.reader.advance(&mut conn.buf) {
                        Err(_) => return Err(Failure::Other),
                        Ok(Progress::Done(response)) => return Ok(Some(response)),
                        Ok(Progress::NeedMore) => {}
                    }
                    match stream.read(&mut self.scratch) {
                        Ok(0) => {
                            return match conn.reader.eof() {
                                Ok(response) => Ok(Some(response)),
                                Err(_) => Err(stale_or(conn.reused, conn.got_bytes)),
                            }
                        }
                        Ok(n) => {
                            conn.got_bytes = true;
                            conn.buf.extend_from_slice(&self.scratch[..n]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Err(stale_or(conn.reused, conn.got_bytes)),
                    }
                }
                State::Backoff | State::Done => return Ok(None),
            }
        }
    }
}
