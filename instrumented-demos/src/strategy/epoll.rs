//! A readiness event loop on one thread: `mio` (epoll), each connection an explicit state
//! machine, waits as deadlines in a `BinaryHeap`. No futures, no coroutines: every suspension
//! point is a `State` variant, which is what async/await would generate for us.
//!
//! Events are edge-triggered, so a connection is always driven until its socket says
//! `WouldBlock` (or it parks in `State::Waiting`, which re-drives it when the timer fires).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::TcpListener as StdListener;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};
use tracing::Span;

use crate::conn::{InBuf, Next};
use crate::http::{self, Action, Status};
use crate::shutdown::Shutdown;
use crate::work::{burn_cpu, request_span};

const LISTENER: Token = Token(0);
const SIGNAL: Token = Token(1);
/// Connection tokens are `FIRST_CONN + slot`.
const FIRST_CONN: usize = 2;

/// Where a connection is in its request cycle.
enum State {
    /// Parsing buffered input, reading more when it runs out.
    Reading,
    /// A `/work` request waiting for its deadline; then burn CPU and answer.
    Waiting {
        work: http::Work,
        keep_alive: bool,
        span: Span,
    },
    /// Sending `out[written..]`; then close or go back to reading.
    Writing { keep_alive: bool },
}

struct Conn {
    stream: TcpStream,
    input: InBuf,
    out: Vec<u8>,
    written: usize,
    state: State,
    /// Bumped per occupant of a slot, so stale timers are ignored.
    generation: u64,
}

/// What [`Conn::drive`] left the connection as.
enum Drive {
    /// Waiting for an event.
    Parked,
    /// Waiting until this instant.
    Timer(Instant),
    /// Done or failed: drop it.
    Close,
}

/// Runs the event loop until shutdown.
pub fn serve(listener: StdListener, shutdown: Shutdown) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut signal = UnixStream::from_std(shutdown.into_stream());
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut signal, SIGNAL, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut timers: BinaryHeap<Reverse<(Instant, usize, u64)>> = BinaryHeap::new();
    let mut generation = 0u64;
    let mut events = Events::with_capacity(1024);
    let mut ready: Vec<usize> = Vec::new();
    loop {
        let timeout = timers
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            match event.token() {
                SIGNAL => return Ok(()),
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let slot = free.pop().unwrap_or(conns.len());
                            let interest = Interest::READABLE | Interest::WRITABLE;
                            let token = Token(FIRST_CONN + slot);
                            if let Err(e) = stream.set_nodelay(true).and_then(|()| {
                                poll.registry().register(&mut stream, token, interest)
                            }) {
                                eprintln!("epoll: cannot register a connection: {e}");
                                free.push(slot);
                                continue;
                            }
                            generation += 1;
                            let conn = Conn::new(stream, generation);
                            if slot == conns.len() {
                                conns.push(Some(conn));
                            } else {
                                conns[slot] = Some(conn);
                            }
                            ready.push(slot);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("epoll: accept: {e}");
                            break;
                        }
                    }
                },
                Token(t) => ready.push(t - FIRST_CONN),
            }
        }
        let now = Instant::now();
        while let Some(&Reverse((at, slot, gen))) = timers.peek() {
            if at > now {
                break;
            }
            timers.pop();
            if let Some(Some(conn)) = conns.get_mut(slot) {
                if conn.generation == gen {
                    conn.finish_wait();
                    ready.push(slot);
                }
            }
        }
        for slot in ready.drain(..) {
            let Some(Some(conn)) = conns.get_mut(slot) else {
                continue;
            };
            match conn.drive() {
                Drive::Parked => {}
                Drive::Timer(at) => timers.push(Reverse((at, slot, conn.generation))),
                Drive::Close => {
                    // Dropping the stream closes it, which also leaves the epoll set.
                    conns[slot] = None;
                    free.push(slot);
                }
            }
        }
    }
}

impl Conn {
    fn new(stream: TcpStream, generation: u64) -> Self {
        Self {
            stream,
            input: InBuf::new(),
            out: Vec::with_capacity(128),
            written: 0,
            state: State::Reading,
            generation,
        }
    }

    /// The deadline passed: burn the CPU, queue the answer, and move on to writing.
    fn finish_wait(&mut self) {
        if let State::Waiting {
            work,
            keep_alive,
            span,
        } = std::mem::replace(&mut self.state, State::Reading)
        {
            span.in_scope(|| {
                burn_cpu(work.cpu());
                self.respond(Status::Ok, keep_alive);
            });
        }
    }

    fn respond(&mut self, status: Status, keep_alive: bool) {
        self.out.clear();
        self.written = 0;
        http::write_response(status, keep_alive, &mut self.out);
        self.state = State::Writing { keep_alive };
    }

    /// Advances the state machine as far as the socket allows.
    fn drive(&mut self) -> Drive {
        loop {
            match self.state {
                State::Waiting { .. } => return Drive::Parked,
                State::Writing { keep_alive } => {
                    while self.written < self.out.len() {
                        match self.stream.write(&self.out[self.written..]) {
                            Ok(0) => return Drive::Close,
                            Ok(n) => self.written += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Drive::Parked
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => return Drive::Close,
                        }
                    }
                    if !keep_alive {
                        return Drive::Close;
                    }
                    self.state = State::Reading;
                }
                State::Reading => match self.input.next_request() {
                    Next::Read => match self.stream.read(self.input.spare()) {
                        Ok(0) => return Drive::Close,
                        Ok(n) => self.input.filled(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drive::Parked,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Drive::Close,
                    },
                    Next::Malformed => self.respond(Status::BadRequest, false),
                    Next::Request(req) => {
                        let span = request_span(&req.action);
                        match req.action {
                            Action::Work(work) if work.io_ms > 0 => {
                                let at = Instant::now() + work.io_wait();
                                self.state = State::Waiting {
                                    work,
                                    keep_alive: req.keep_alive,
                                    span,
                                };
                                return Drive::Timer(at);
                            }
                            Action::Work(work) => span.in_scope(|| {
                                burn_cpu(work.cpu());
                                self.respond(Status::Ok, req.keep_alive);
                            }),
                            Action::Reply(status) => {
                                span.in_scope(|| self.respond(status, req.keep_alive))
                            }
                        }
                    }
                },
            }
        }
    }
}
