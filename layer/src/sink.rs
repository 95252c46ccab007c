//! The process-wide sink: the connection to the recorder named by `IOTRACE_SOCKET`, the bounded
//! queue of full thread buffers, the flusher thread that alone writes to the socket, the loss
//! counter, and the once-per-callsite definitions.
//!
//! Without `IOTRACE_SOCKET` the sink is *attachable* (unless `IOTRACE_ATTACH=0`): the flusher
//! looks for a recorder's socket at the process's rendezvous path (WIRE.md, "Attaching") every
//! [`LOOK`], with one `stat`; when one appears it connects, sends the hello and every callsite
//! again, and turns recording on; when the recorder leaves it turns recording off and looks
//! again. Records from an earlier connection are never sent on a later one ([`generation`]).
//!
//! The flusher never blocks in the channel's `recv` (see [`flusher`]): it polls while buffers
//! arrive and, once nothing has come for a few polls, parks with [`ASLEEP`] set; whoever then
//! queues something unparks it (a futex wake, no lock). An idle program's flusher sleeps.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use std::{io, thread};

use tracing::Metadata;

use crate::encode::{self, FRAME_HEADER};
use crate::sys;

pub use iotrace_wire::{ATTACH_ENV, SOCKET_ENV};
/// How often an attachable program's flusher looks for a recorder (one `stat` each time).
pub(crate) const LOOK: Duration = Duration::from_millis(200);
/// Full buffers that may wait for the flusher; past this, buffers are dropped and counted.
const QUEUE: usize = 1024;
/// The flusher sends new callsites and loss counts at least this often.
const TICK: Duration = Duration::from_millis(50);
/// How often the flusher looks for handed-off buffers while the queue is empty.
const POLL: Duration = Duration::from_millis(5);
/// Empty polls in a row after which the flusher parks until woken: a program that keeps
/// handing off buffers keeps it polling (its threads pay no wakeup), an idle one lets it sleep.
const IDLE_POLLS: u32 = 4;
/// Longest sleep of an idle flusher: a safety net, not the way it normally wakes.
const NAP: Duration = Duration::from_secs(1);
/// Callsite definitions are sent in frames of about this size.
const CALLSITE_CHUNK: usize = 64 * 1024;

/// A full thread buffer on its way to the socket, and where to return it afterwards.
pub(crate) struct Frame {
    /// `FRAME_HEADER` reserved bytes, then whole records.
    pub(crate) bytes: Vec<u8>,
    pub(crate) tid: u32,
    /// The owning thread's recycle queue.
    pub(crate) home: SyncSender<Vec<u8>>,
}

enum Msg {
    Frame(Frame),
    Flush(SyncSender<()>),
}

pub(crate) struct Sink {
    tx: SyncSender<Msg>,
    /// Attachable (no `IOTRACE_SOCKET`): recording turns on while a recorder is attached.
    pub(crate) attachable: bool,
    pid: u32,
    /// The flusher thread, to unpark when a flush is asked for or when it sleeps.
    flusher: thread::Thread,
}

struct Callsites {
    seen: BTreeSet<u64>,
    chunks: Vec<Vec<u8>>,
}

static SINK: OnceLock<Option<Sink>> = OnceLock::new();
static ON: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static CALLSITES: Mutex<Callsites> = Mutex::new(Callsites {
    seen: BTreeSet::new(),
    chunks: Vec::new(),
});
static CALLSITES_PENDING: AtomicBool = AtomicBool::new(false);
/// Set while the flusher is parked with nothing to do; see [`wake`].
static ASLEEP: AtomicBool = AtomicBool::new(false);
/// Bumped at every new connection: a thread's records from an earlier one are dropped rather
/// than sent to a recorder that never saw their spans created.
static GEN: AtomicU64 = AtomicU64::new(0);

/// The current connection's number (see [`GEN`]).
#[inline]
pub(crate) fn generation() -> u64 {
    GEN.load(Ordering::Relaxed)
}

/// The sink, connecting on first use. `None` when `IOTRACE_SOCKET` is unset or unusable.
pub(crate) fn get() -> Option<&'static Sink> {
    SINK.get_or_init(open).as_ref()
}

/// The sink if it was already opened (never connects).
fn get_if_open() -> Option<&'static Sink> {
    SINK.get().and_then(Option::as_ref)
}

/// Whether recording is on (false before connecting and after the socket failed).
#[inline]
pub(crate) fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

pub(crate) fn count_dropped(n: u64) {
    DROPPED.fetch_add(n, Ordering::Relaxed);
    // The new count goes out with the next frame, or now if the flusher sleeps.
    if let Some(sink) = get_if_open() {
        wake(sink);
    }
}

/// Unparks the flusher if it is asleep; called after queueing something for it. Costs a fence
/// and a load when it is awake, one futex wake when it sleeps; takes no lock either way.
#[inline]
fn wake(sink: &Sink) {
    // Pairs with the fence in `sleep`: either the flusher's last look at the queue sees what
    // was queued before this, or this sees ASLEEP set.
    fence(Ordering::SeqCst);
    if ASLEEP.load(Ordering::Relaxed) && ASLEEP.swap(false, Ordering::Relaxed) {
        sink.flusher.unpark();
    }
}

pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Queues a full buffer for the flusher without blocking; gives it back if the queue is full.
pub(crate) fn send(frame: Frame) -> Result<(), Frame> {
    let Some(sink) = get_if_open() else {
        return Err(frame);
    };
    match sink.tx.try_send(Msg::Frame(frame)) {
        Ok(()) => {
            wake(sink);
            Ok(())
        }
        Err(TrySendError::Full(Msg::Frame(f)) | TrySendError::Disconnected(Msg::Frame(f))) => {
            Err(f)
        }
        Err(_) => Ok(()),
    }
}

/// Whether a program without `IOTRACE_SOCKET` may be attached to (`IOTRACE_ATTACH` is not `0`).
pub(crate) fn attach_enabled() -> bool {
    std::env::var_os(ATTACH_ENV).is_none_or(|v| v != "0")
}

fn open() -> Option<Sink> {
    let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) else {
        return attach_enabled().then(open_attachable).flatten();
    };
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "iotrace: cannot connect to the span socket {} (from {SOCKET_ENV}): {e}; \
                 spans and tasks of this process will not be recorded",
                path.to_string_lossy()
            );
            return None;
        }
    };
    let pid = std::process::id();
    let (tx, rx) = sync_channel(QUEUE);
    let spawned = thread::Builder::new()
        .name("iotrace-flush".into())
        .spawn(move || flusher(stream, rx, pid));
    let flusher = match spawned {
        Ok(handle) => handle.thread().clone(),
        Err(e) => {
            eprintln!(
                "iotrace: cannot start the span flusher thread: {e}; spans will not be recorded"
            );
            return None;
        }
    };
    ON.store(true, Ordering::Relaxed);
    sys::at_exit(exit_hook);
    Some(Sink {
        tx,
        attachable: false,
        pid,
        flusher,
    })
}

/// The sink of a program not started under `iotrace record`: off, with a flusher that looks
/// for a recorder (see the module's doc).
fn open_attachable() -> Option<Sink> {
    let pid = std::process::id();
    let (tx, rx) = sync_channel(QUEUE);
    let spawned = thread::Builder::new()
        .name("iotrace-flush".into())
        .spawn(move || attach_flusher(rx, pid));
    // No thread, no attaching: stay off quietly (the program did not ask to be recorded).
    let flusher = spawned.ok()?.thread().clone();
    sys::at_exit(exit_hook);
    Some(Sink {
        tx,
        attachable: true,
        pid,
        flusher,
    })
}

/// Where a recorder that attaches to process `pid` puts its socket (WIRE.md, "Attaching").
pub(crate) fn rendezvous_path(pid: u32) -> PathBuf {
    iotrace_wire::rendezvous_path(
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        sys::euid(),
        pid,
    )
}

/// Connects to the socket at `path` if there is one and it can be trusted: a socket owned by
/// this user (or root) in a directory of this user's that no one else may enter. The common
/// case, no recorder, costs one failing `stat`.
fn try_connect(path: &Path) -> Option<UnixStream> {
    let meta = std::fs::metadata(path).ok()?;
    let me = sys::euid();
    if !meta.file_type().is_socket() || (meta.uid() != me && meta.uid() != 0) {
        return None;
    }
    let dir = std::fs::symlink_metadata(path.parent()?).ok()?;
    if !dir.is_dir() || dir.uid() != me || dir.mode() & 0o077 != 0 {
        return None;
    }
    UnixStream::connect(path).ok()
}

/// Waits, detached, until a recorder's socket appears; returns the connection, or `None` when
/// the queue is gone. What threads queue meanwhile (the end of an earlier connection's records)
/// is given back unsent; flushes are answered at once.
fn look(rx: &Receiver<Msg>, path: &Path) -> Option<UnixStream> {
    loop {
        loop {
            match rx.try_recv() {
                Ok(Msg::Frame(mut f)) => {
                    f.bytes.truncate(FRAME_HEADER);
                    let _ = f.home.try_send(f.bytes);
                }
                Ok(Msg::Flush(ack)) => {
                    let _ = ack.try_send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return None,
            }
        }
        if let Some(stream) = try_connect(path) {
            return Some(stream);
        }
        thread::park_timeout(LOOK);
    }
}

/// A new connection: every callsite is defined again (the recorder knows none), records of an
/// earlier connection are dropped, and recording turns on for every callsite.
fn begin_session() {
    {
        let mut cs = CALLSITES.lock().unwrap_or_else(|p| p.into_inner());
        cs.seen.clear();
        cs.chunks.clear();
    }
    CALLSITES_PENDING.store(false, Ordering::Release);
    GEN.fetch_add(1, Ordering::Relaxed);
    ON.store(true, Ordering::Release);
    // Re-asks every layer about every callsite (ours now defines each one) and lifts the
    // global max level our dormant layer held at OFF.
    tracing::callsite::rebuild_interest_cache();
}

fn end_session() {
    ON.store(false, Ordering::Release);
    tracing::callsite::rebuild_interest_cache();
}

/// The flusher of an attachable program: look, connect, send until the recorder leaves, repeat.
fn attach_flusher(rx: Receiver<Msg>, pid: u32) {
    let path = rendezvous_path(pid);
    loop {
        let Some(stream) = look(&rx, &path) else {
            return;
        };
        sys::boost_this_thread(10);
        begin_session();
        let mut w = Writer {
            stream,
            pid,
            reported: 0,
            base: dropped(),
        };
        let result = sys::send_all(w.stream.as_raw_fd(), &encode::hello(pid))
            .and_then(|_| session(&mut w, &rx, true));
        end_session();
        sys::boost_this_thread(-10);
        if let Ok(true) = result {
            return;
        }
    }
}

/// Queues the definition of `meta` once per process (cold path: runs once per callsite).
pub(crate) fn define_callsite(meta: &'static Metadata<'static>) {
    let mut cs = CALLSITES.lock().unwrap_or_else(|p| p.into_inner());
    if !cs.seen.insert(encode::callsite_key(meta)) {
        return;
    }
    if cs.chunks.last().is_none_or(|c| c.len() >= CALLSITE_CHUNK) {
        let mut chunk = Vec::with_capacity(CALLSITE_CHUNK);
        chunk.resize(FRAME_HEADER, 0);
        cs.chunks.push(chunk);
    }
    if let Some(chunk) = cs.chunks.last_mut() {
        encode::callsite(chunk, meta);
    }
    CALLSITES_PENDING.store(true, Ordering::Release);
    drop(cs);
    if let Some(sink) = get_if_open() {
        wake(sink);
    }
}

/// Hands this thread's buffer to the flusher and waits (at most `timeout`) until everything
/// queued before has been written to the socket.
pub(crate) fn flush_for(timeout: Duration) {
    let Some(sink) = get_if_open() else { return };
    if !is_on() || sink.pid != std::process::id() {
        return; // a forked child has no flusher thread
    }
    crate::local::handoff_current();
    let deadline = Instant::now() + timeout;
    let (ack_tx, ack_rx) = sync_channel(1);
    let mut msg = Msg::Flush(ack_tx);
    loop {
        match sink.tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                msg = m;
                thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    // Wake the flusher now rather than at its next poll or from its sleep (unpark is an
    // atomic futex wake).
    sink.flusher.unpark();
    let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

extern "C" fn exit_hook() {
    let _ = std::panic::catch_unwind(|| flush_for(Duration::from_millis(100)));
}

struct Writer {
    stream: UnixStream,
    pid: u32,
    reported: u64,
    /// Drops counted before this connection (reported counts start from here).
    base: u64,
}

impl Writer {
    fn write_frame(&mut self, frame: &mut [u8], tid: u32) -> io::Result<()> {
        let dropped = dropped().saturating_sub(self.base);
        encode::fill_frame_header(frame, self.pid, tid, dropped);
        sys::send_all(self.stream.as_raw_fd(), frame)?;
        self.reported = dropped;
        Ok(())
    }

    /// Sends pending callsite definitions (before any frame that may use them).
    fn callsites(&mut self) -> io::Result<()> {
        if !CALLSITES_PENDING.swap(false, Ordering::Acquire) {
            return Ok(());
        }
        let chunks =
            std::mem::take(&mut CALLSITES.lock().unwrap_or_else(|p| p.into_inner()).chunks);
        for mut chunk in chunks {
            self.write_frame(&mut chunk, 0)?;
        }
        Ok(())
    }

    /// Sends an empty frame if the drop count changed since the last frame.
    fn loss(&mut self) -> io::Result<()> {
        if dropped().saturating_sub(self.base) == self.reported {
            return Ok(());
        }
        let mut empty = [0u8; FRAME_HEADER];
        self.write_frame(&mut empty, 0)
    }
}

/// Parks the flusher until a sender wakes it ([`wake`]) or [`NAP`] passes. A message that
/// arrived just before ASLEEP was set is returned instead of sleeping; the error is a
/// disconnected queue.
fn sleep(rx: &Receiver<Msg>) -> Result<Option<Msg>, TryRecvError> {
    ASLEEP.store(true, Ordering::Relaxed);
    // Pairs with the fence in `wake` (see there).
    fence(Ordering::SeqCst);
    match rx.try_recv() {
        Ok(m) => {
            ASLEEP.store(false, Ordering::Relaxed);
            return Ok(Some(m));
        }
        Err(TryRecvError::Empty) => {}
        Err(e) => return Err(e),
    }
    thread::park_timeout(NAP);
    ASLEEP.store(false, Ordering::Relaxed);
    Ok(None)
}

fn flusher(stream: UnixStream, rx: Receiver<Msg>, pid: u32) {
    sys::boost_this_thread(10);
    let mut w = Writer {
        stream,
        pid,
        reported: 0,
        base: 0,
    };
    let result = sys::send_all(w.stream.as_raw_fd(), &encode::hello(pid))
        .and_then(|_| session(&mut w, &rx, false));
    if let Err(e) = result {
        ON.store(false, Ordering::Relaxed);
        eprintln!("iotrace: the span socket failed ({e}); span recording stops for this process");
    }
}

/// Sends what threads queue until the queue is gone (`Ok(true)`), the socket fails, or, with
/// `watch_peer`, the recorder hangs up (`Ok(false)`; checked once per tick).
fn session(w: &mut Writer, rx: &Receiver<Msg>, watch_peer: bool) -> io::Result<bool> {
    {
        // The flusher polls instead of blocking in `recv`: a receiver blocked in std's bounded
        // channel makes every `try_send` take the channel's waker mutex, and then a program
        // thread handing off a buffer can sleep on it (iotrace caught itself doing that: a
        // tokio worker blocked 1.6 ms in a poll). With no receiver ever waiting, `try_send`
        // takes no lock. When polls keep finding nothing it parks instead (`sleep`), and the
        // next sender unparks it: an idle program's flusher does not wake 200 times a second.
        let mut last_tick = Instant::now();
        let mut idle = 0u32;
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => return Ok(true),
                Err(TryRecvError::Empty) => {
                    if last_tick.elapsed() >= TICK {
                        if watch_peer && sys::peer_gone(w.stream.as_raw_fd()) {
                            return Ok(false);
                        }
                        w.callsites()?;
                        w.loss()?;
                        last_tick = Instant::now();
                    }
                    if idle < IDLE_POLLS {
                        idle += 1;
                        thread::park_timeout(POLL);
                        continue;
                    }
                    // Nothing pending may wait for the wakeup: send it first.
                    w.callsites()?;
                    w.loss()?;
                    match sleep(rx) {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        Err(_) => return Ok(true),
                    }
                }
            };
            idle = 0;
            match msg {
                Msg::Frame(mut f) => {
                    w.callsites()?;
                    w.write_frame(&mut f.bytes, f.tid)?;
                    f.bytes.truncate(FRAME_HEADER);
                    let _ = f.home.try_send(f.bytes);
                }
                Msg::Flush(ack) => {
                    w.callsites()?;
                    w.loss()?;
                    let _ = ack.try_send(());
                }
            }
        }
    }
}
