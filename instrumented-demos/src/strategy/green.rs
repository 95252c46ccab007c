//! Green threads: one `corosensei` coroutine per connection, run by a small scheduler over
//! `mio` on ONE thread.
//!
//! A coroutine runs the same sequential code as the thread-per-connection server
//! ([`serve_connection`]); where a thread would block it suspends instead: on `WouldBlock` it
//! yields [`Block::Io`], and for the wait it yields [`Block::Until`] a deadline. The scheduler
//! resumes coroutines whose socket had an event or whose deadline passed, and otherwise blocks
//! only in `epoll_wait` (mio `Poll`) with the next deadline as timeout.
//!
//! Spans: each coroutine has a `green.task` span (created at spawn, entered for every run
//! slice) and each slice enters one child `run_slice` span; the `request` span is entered by
//! the coroutine only while it runs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};
use tracing::span::EnteredSpan;
use tracing::Span;

use crate::conn::{serve_connection, BlockingIo};
use crate::shutdown::Shutdown;

/// Stack size per coroutine: far below a thread's 2 MiB, ample for the handler.
const STACK_SIZE: usize = 256 * 1024;
const LISTENER: Token = Token(0);
const SIGNAL: Token = Token(1);
/// Connection tokens are `FIRST_CONN + slot`.
const FIRST_CONN: usize = 2;

/// Why a coroutine gave the thread back.
#[derive(Debug, Clone, Copy)]
pub enum Block {
    /// Its socket returned `WouldBlock`; resume on the next event for it.
    Io,
    /// Its wait; resume at this instant.
    Until(Instant),
}

type Coro = Coroutine<(), Block, (), DefaultStack>;

/// One green thread.
struct Task {
    coro: Coro,
    span: Span,
    /// Bumped per occupant of a slot, so stale timers are ignored.
    generation: u64,
    waiting: Option<Block>,
}

/// Blocking-style I/O from inside a coroutine.
struct GreenIo<'y> {
    stream: TcpStream,
    yielder: &'y Yielder<(), Block>,
}

impl BlockingIo for GreenIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.yielder.suspend(Block::Io),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.stream.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.yielder.suspend(Block::Io),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn wait(&mut self, d: Duration, span: EnteredSpan) -> EnteredSpan {
        // The request span must not stay entered while other coroutines run on this thread.
        let span = span.exit();
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.yielder.suspend(Block::Until(until));
        }
        span.entered()
    }
}

/// The scheduler: tasks in slots, a run queue, and a min-heap of deadlines.
struct Scheduler {
    poll: Poll,
    tasks: Vec<Option<Task>>,
    free: Vec<usize>,
    run_queue: VecDeque<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_id: u64,
}

/// Runs the green-thread server on the calling thread until shutdown.
pub fn serve(listener: StdListener, shutdown: Shutdown) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut signal = UnixStream::from_std(shutdown.into_stream());
    let mut sched = Scheduler {
        poll: Poll::new()?,
        tasks: Vec::new(),
        free: Vec::new(),
        run_queue: VecDeque::new(),
        timers: BinaryHeap::new(),
        next_id: 0,
    };
    let registry = sched.poll.registry();
    registry.register(&mut listener, LISTENER, Interest::READABLE)?;
    registry.register(&mut signal, SIGNAL, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    loop {
        while let Some(slot) = sched.run_queue.pop_front() {
            sched.run_slice(slot);
        }
        let timeout = sched
            .timers
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(Instant::now()));
        match sched.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            match event.token() {
                SIGNAL => return Ok(()),
                LISTENER => sched.accept_all(&listener),
                Token(t) => sched.wake_io(t - FIRST_CONN),
            }
        }
        sched.expire_timers();
    }
}

impl Scheduler {
    fn accept_all(&mut self, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.spawn(stream) {
                        eprintln!("green: cannot start a green thread: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("green: accept: {e}");
                    return;
                }
            }
        }
    }

    fn spawn(&mut self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let slot = self.free.pop().unwrap_or(self.tasks.len());
        let token = Token(FIRST_CONN + slot);
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let stack = DefaultStack::new(STACK_SIZE)?;
        let coro = Coroutine::with_stack(stack, move |yielder: &Yielder<(), Block>, ()| {
            // A peer reset is routine; there is no one to report it to.
            let _ = serve_connection(&mut GreenIo { stream, yielder });
        });
        self.next_id += 1;
        let id = self.next_id;
        let task = Task {
            coro,
            span: tracing::trace_span!("green.task", iotrace.task = "conn", task.id = id),
            generation: id,
            waiting: None,
        };
        if slot == self.tasks.len() {
            self.tasks.push(Some(task));
        } else {
            self.tasks[slot] = Some(task);
        }
        self.run_queue.push_back(slot);
        Ok(())
    }

    /// Resumes one task until it suspends or finishes.
    fn run_slice(&mut self, slot: usize) {
        let Some(task) = self.tasks.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        task.waiting = None;
        let result = {
            let _task = task.span.enter();
            let _slice = tracing::trace_span!("run_slice").entered();
            task.coro.resume(())
        };
        match result {
            CoroutineResult::Yield(block) => {
                task.waiting = Some(block);
                if let Block::Until(at) = block {
                    self.timers.push(Reverse((at, slot, task.generation)));
                }
            }
            CoroutineResult::Return(()) => {
                // Dropping the task closes the socket, which leaves the epoll set.
                self.tasks[slot] = None;
                self.free.push(slot);
            }
        }
    }

    fn wake_io(&mut self, slot: usize) {
        if let Some(Some(task)) = self.tasks.get_mut(slot) {
            if matches!(task.waiting, Some(Block::Io)) {
                task.waiting = None;
                self.run_queue.push_back(slot);
            }
        }
    }

    fn expire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(Some(task)) = self.tasks.get_mut(slot) {
                if task.generation == generation && matches!(task.waiting, Some(Block::Until(_))) {
                    task.waiting = None;
                    self.run_queue.push_back(slot);
                }
            }
        }
    }
}
