//! The intake's background thread: one `poll(2)` loop over the listener and every connected
//! client, reading each client as soon as it has bytes so no program ever waits on the recorder.
//! Frames are validated and decoded here; a client that breaks the protocol is disconnected and
//! named in a warning, and the others carry on.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::wire::{self, SpanBatch, WireError, HELLO_LEN};
use super::IntakeStats;

/// Warnings kept; later ones are only counted.
const MAX_WARNINGS: usize = 100;
/// After shutdown is asked, clients are read for at most this long...
const DRAIN_FOR: Duration = Duration::from_millis(200);
/// ...and no longer than this once no client has anything to say.
const QUIET: Duration = Duration::from_millis(20);
/// Reads per client per wake-up, so one busy client cannot starve the others.
const READS_PER_TURN: usize = 16;
/// A client's incomplete hello or frame up to this size is always read (the layer's frames
/// are at most 64 KiB)...
const PARTIAL_FREE: usize = 128 << 10;
/// ...while larger ones are read only while all clients' incomplete frames together hold
/// less than this. Clients that announce large frames and then stall (or trickle) cannot
/// make the recorder hold more than this plus `PARTIAL_FREE` per client. Buffers are counted
/// by their capacity, which is what they hold of memory (a growing Vec has up to twice its
/// length).
const PARTIAL_BUDGET: usize = 32 << 20;
/// After accept(2) fails (EMFILE: out of descriptors), the listener rests this long instead
/// of waking the loop at once with the same pending connection.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// State shared between the thread and the `Intake` handle.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    stats: Mutex<Stats>,
    /// Set when a batch was queued since the main loop last looked; the first batch after
    /// that also writes a byte to `ready` so a main loop in poll(2) wakes at once.
    pub(super) pending: AtomicBool,
    pub(super) ready: std::sync::OnceLock<UnixStream>,
    /// Wire bytes of the batches queued for the main loop (see [`super::QUEUE_BYTES`]).
    pub(super) queued: AtomicUsize,
}

impl Shared {
    fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Some(ready) = self.ready.get() {
                let _ = (&*ready).write(&[1]);
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    pub(super) public: IntakeStats,
    warnings_lost: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn snapshot(&self) -> IntakeStats {
        let s = self.lock();
        let mut out = s.public.clone();
        if s.warnings_lost > 0 {
            out.warnings
                .push(format!("... and {} more warnings", s.warnings_lost));
        }
        out
    }

    fn warn(&self, msg: String) {
        let mut s = self.lock();
        if s.public.warnings.len() < MAX_WARNINGS {
            s.public.warnings.push(msg);
        } else {
            s.warnings_lost += 1;
        }
    }

    fn bad_client(&self, msg: String) {
        self.lock().public.bad_clients += 1;
        self.warn(msg);
    }
}

struct Client {
    stream: UnixStream,
    /// Order of connection, for messages.
    number: u64,
    pid: Option<u32>,
    /// Bytes received and not yet decoded: at most one hello or one frame plus one read.
    buf: Vec<u8>,
    /// Latest cumulative drop count the client reported.
    dropped: u64,
    frames: u64,
}

enum Next {
    Keep,
    Close,
}

impl Client {
    fn name(&self) -> String {
        match self.pid {
            Some(pid) => format!("span client #{} (pid {pid})", self.number),
            None => format!("span client #{} (before its hello)", self.number),
        }
    }

    /// Reads and decodes what the client sent. With a `limit`, stops once this many bytes
    /// of an incomplete frame are held (the budget for incomplete frames is spent).
    fn on_readable(
        &mut self,
        scratch: &mut [u8],
        limit: Option<usize>,
        tx: &SyncSender<(SpanBatch, usize)>,
        shared: &Shared,
    ) -> Next {
        for _ in 0..READS_PER_TURN {
            let room = match limit {
                Some(limit) if self.buf.len() >= limit => return Next::Keep,
                Some(limit) => (limit - self.buf.len()).min(scratch.len()),
                None => scratch.len(),
            };
            match self.stream.read(&mut scratch[..room]) {
                Ok(0) => return self.on_eof(shared),
                Ok(n) => {
                    // Up to PARTIAL_FREE a buffer grows to at most that (doubling would give
                    // every stalled client twice the memory the budget counts on).
                    let need = self.buf.len() + n;
                    if need > self.buf.capacity() && need <= PARTIAL_FREE {
                        let target = (need * 2).min(PARTIAL_FREE);
                        self.buf.reserve_exact(target - self.buf.len());
                    }
                    self.buf.extend_from_slice(scratch.get(..n).unwrap_or(&[]));
                    if let Err(e) = self.decode(tx, shared) {
                        shared.bad_client(format!(
                            "{}: {e}; disconnected it after {} good frames",
                            self.name(),
                            self.frames
                        ));
                        return Next::Close;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if self.buf.is_empty() {
                        shared.warn(format!("{}: read failed: {e}", self.name()));
                    } else {
                        self.report_partial(shared, &format!("read failed ({e})"));
                    }
                    return Next::Close;
                }
            }
        }
        Next::Keep
    }

    fn on_eof(&mut self, shared: &Shared) -> Next {
        if !self.buf.is_empty() {
            self.report_partial(shared, "hung up");
        }
        Next::Close
    }

    fn report_partial(&self, shared: &Shared, how: &str) {
        let what = if self.pid.is_none() {
            format!("in its hello ({} of {HELLO_LEN} bytes)", self.buf.len())
        } else {
            format!(
                "mid-frame ({} bytes of an incomplete frame)",
                self.buf.len()
            )
        };
        shared.bad_client(format!("{} {how} {what}", self.name()));
    }

    /// Decodes every complete hello/frame in `buf` and keeps the incomplete rest.
    fn decode(
        &mut self,
        tx: &SyncSender<(SpanBatch, usize)>,
        shared: &Shared,
    ) -> Result<(), WireError> {
        let mut pos = 0;
        let result = self.decode_from(&mut pos, tx, shared);
        self.buf.drain(..pos.min(self.buf.len()));
        // A large frame's room is given back once it is decoded, so clients that each sent
        // one large frame do not keep its memory for the rest of the recording.
        if self.buf.capacity() > PARTIAL_FREE && self.buf.len() <= self.buf.capacity() / 4 {
            self.buf.shrink_to(self.buf.len());
        }
        result
    }

    fn decode_from(
        &mut self,
        pos: &mut usize,
        tx: &SyncSender<(SpanBatch, usize)>,
        shared: &Shared,
    ) -> Result<(), WireError> {
        let pid = match self.pid {
            Some(pid) => pid,
            None => {
                let Some(hello) = self.buf.first_chunk::<HELLO_LEN>() else {
                    return Ok(());
                };
                let pid = wire::decode_hello(hello)?;
                self.pid = Some(pid);
                *pos = HELLO_LEN;
                pid
            }
        };
        loop {
            let rest = self.buf.get(*pos..).unwrap_or(&[]);
            let Some(prefix) = rest.first_chunk::<4>() else {
                return Ok(());
            };
            let len = wire::frame_len(*prefix)?;
            let Some(payload) = rest.get(4..4 + len) else {
                return Ok(());
            };
            // Wait while the main loop is behind by more than QUEUE_BYTES: the programs' own
            // queues then fill and they drop (and count) instead of waiting on us.
            while shared.queued.load(Ordering::Acquire) > super::QUEUE_BYTES
                && !shared.stop.load(Ordering::Acquire)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let batch = wire::decode_frame(payload)?;
            if batch.pid != pid {
                return Err(WireError::Pid {
                    frame: batch.pid,
                    hello: pid,
                });
            }
            *pos += 4 + len;
            self.frames += 1;
            {
                let mut s = shared.lock();
                s.public.frames += 1;
                s.public.events += batch.events.len() as u64;
                s.public.dropped_by_programs = s
                    .public
                    .dropped_by_programs
                    .saturating_sub(self.dropped)
                    .saturating_add(batch.dropped_total);
            }
            self.dropped = batch.dropped_total;
            // Blocks only while the recorder's main loop is behind (see above).
            shared.queued.fetch_add(4 + len, Ordering::AcqRel);
            if tx.send((batch, 4 + len)).is_err() {
                shared.queued.fetch_sub(4 + len, Ordering::AcqRel);
            }
            shared.notify();
        }
    }
}

/// The thread's body. Ends after `shared.stop` is set and the clients are drained.
pub(super) fn run(
    listener: UnixListener,
    socket: PathBuf,
    wake: UnixStream,
    tx: SyncSender<(SpanBatch, usize)>,
    shared: Arc<Shared>,
) {
    crate::sys::boost_this_thread(crate::record::RECORDER_BOOST);
    let mut listener = Some(listener);
    let mut clients: Vec<Client> = Vec::new();
    let mut accepted = 0u64;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut drain_until: Option<Instant> = None;
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut accept_pause: Option<Instant> = None;
    loop {
        if drain_until.is_none() && shared.stop.load(Ordering::Acquire) {
            drain_until = Some(Instant::now() + DRAIN_FOR);
            // Clients that connected before the stop are still read: take the backlog first.
            if let Some(l) = listener.take() {
                accept_all(&l, &mut clients, &mut accepted, &shared);
            }
            let _ = std::fs::remove_file(&socket);
        }
        let timeout = match drain_until {
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                if clients.is_empty() || left.is_zero() {
                    break;
                }
                left.min(QUIET)
            }
            None => Duration::from_millis(500),
        };

        fds.clear();
        fds.push(pollfd(wake.as_raw_fd()));
        let listening = listener.is_some();
        if let Some(l) = &listener {
            let mut fd = pollfd(l.as_raw_fd());
            if accept_pause.is_some_and(|until| Instant::now() < until) {
                fd.events = 0;
            }
            fds.push(fd);
        }
        let first_client = fds.len();
        let mut buffered: usize = clients.iter().map(|c| c.buf.capacity()).sum();
        let over_budget = buffered > PARTIAL_BUDGET;
        fds.extend(clients.iter().map(|c| {
            let mut fd = pollfd(c.stream.as_raw_fd());
            if over_budget && c.buf.capacity() >= PARTIAL_FREE {
                // Not read until the budget has room; a hang-up is still seen.
                fd.events = 0;
            }
            fd
        }));
        let timeout = if accept_pause.is_some() {
            timeout.min(ACCEPT_PAUSE)
        } else {
            timeout
        };

        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(e) => {
                shared.warn(format!("span intake: poll failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if ready == 0 && drain_until.is_some() {
            break; // quiet: the clients have sent what they had
        }
        if fds.first().is_some_and(readable) {
            let mut sink = [0u8; 64];
            let _ = (&wake).read(&mut sink);
        }
        if accept_pause.is_some_and(|until| Instant::now() >= until) {
            accept_pause = None;
        }
        if let Some(l) = &listener {
            if listening
                && accept_pause.is_none()
                && fds.get(1).is_some_and(readable)
                && !accept_all(l, &mut clients, &mut accepted, &shared)
            {
                accept_pause = Some(Instant::now() + ACCEPT_PAUSE);
            }
        }
        let mut i = 0;
        clients.retain_mut(|c| {
            let fd = fds.get(first_client + i);
            i += 1;
            match fd {
                Some(fd) if readable(fd) => {
                    // A client that hung up is read to its end (what is left is at most
                    // its socket buffer), so its memory is freed.
                    let hung_up = fd.revents & (libc::POLLHUP | libc::POLLERR) != 0;
                    // The budget is spent as clients are read, not only between turns: 500
                    // readable clients in one turn could each take a turn's worth otherwise.
                    let room = PARTIAL_BUDGET.saturating_sub(buffered);
                    let limit = (!hung_up).then_some((c.buf.len() + room).max(PARTIAL_FREE));
                    let before = c.buf.capacity();
                    let keep =
                        matches!(c.on_readable(&mut scratch, limit, &tx, &shared), Next::Keep);
                    buffered = (buffered + c.buf.capacity()).saturating_sub(before);
                    keep
                }
                _ => true,
            }
        });
    }
    for c in &clients {
        if !c.buf.is_empty() {
            shared.warn(format!(
                "{}: {} bytes of an incomplete frame were still arriving at shutdown",
                c.name(),
                c.buf.len()
            ));
        }
    }
    if drain_until.is_none() {
        let _ = std::fs::remove_file(&socket);
    }
}

/// Accepts every pending connection. Returns false when accept(2) failed (e.g. EMFILE), so
/// the caller rests the listener a moment instead of spinning on the same pending connection.
fn accept_all(
    l: &UnixListener,
    clients: &mut Vec<Client>,
    accepted: &mut u64,
    shared: &Shared,
) -> bool {
    loop {
        match l.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    shared.warn(format!("span intake: cannot use a new client: {e}"));
                    continue;
                }
                *accepted += 1;
                shared.lock().public.clients += 1;
                clients.push(Client {
                    stream,
                    number: *accepted,
                    pid: None,
                    buf: Vec::new(),
                    dropped: 0,
                    frames: 0,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared.warn(format!("span intake: accept failed: {e}"));
                return false;
            }
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn readable(fd: &libc::pollfd) -> bool {
    fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

/// `poll(2)` on `fds`; EINTR counts as "nothing ready".
fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_millis().clamp(1, 60_000) as libc::c_int;
    crate::sys::poll(fds, ms)
}
