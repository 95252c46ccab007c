//! The span intake: the recorder's end of the span wire protocol (`layer/WIRE.md`).
//!
//! [`start`] listens on `<dir>/spans.sock`; the recorder passes that path to the program as
//! `IOTRACE_SOCKET`, and the program's `iotrace-layer` (and any child process that also installs
//! it) connects. A background thread reads every client continuously, validates and decodes each
//! frame into a [`SpanBatch`] (one per frame: one thread's records), and hands the batches to
//! the recorder's main loop through [`Intake::try_recv`].
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! # let dir = std::path::Path::new("/tmp/rec");
//! let intake = iotrace_record::intake::start(dir)?;
//! // spawn the program with IOTRACE_SOCKET=intake.socket_path() ...
//! while let Some(batch) = intake.try_recv() {
//!     // store batch.events
//! #   let _ = batch;
//! }
//! let (stats, rest) = intake.shutdown();
//! # let _ = (stats, rest);
//! # Ok(()) }
//! ```
//!
//! A client that breaks the protocol is disconnected and described in
//! [`IntakeStats::warnings`]; nothing is printed and nothing goes through `tracing`.

mod server;

#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use iotrace_wire as wire;
pub use iotrace_wire::{
    decode_frame, decode_hello, frame_len, Callsite, CallsiteKind, FieldValue, Level, SpanBatch,
    SpanEvent, Value, WireError, SOCKET_ENV,
};

/// File name of the socket inside the recording directory.
pub const SOCKET_NAME: &str = "spans.sock";
/// Decoded batches that may wait for the main loop before the intake stops reading.
const QUEUE: usize = 4096;
/// Wire bytes of the decoded batches that may wait for the main loop: past this the intake
/// stops reading (and the programs drop and count events), so a flood of large frames cannot
/// queue gigabytes while the main loop writes. Decoded, a batch takes about six times its
/// wire size (a 4 MiB frame of Enter records is 25 MB of events), so 4 MiB is ~25 MB here
/// and, at the demos' heaviest span rate, most of a second of the main loop falling behind.
pub const QUEUE_BYTES: usize = 4 << 20;

/// Counters of what the intake received, and what went wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntakeStats {
    /// Connections accepted.
    pub clients: u64,
    /// Frames decoded.
    pub frames: u64,
    /// Records decoded (callsite definitions included).
    pub events: u64,
    /// Sum over clients of the latest drop count each reported: events lost in the programs.
    pub dropped_by_programs: u64,
    /// Clients disconnected for breaking the protocol or hanging up mid-frame.
    pub bad_clients: u64,
    /// One sentence per problem, naming the client.
    pub warnings: Vec<String>,
}

/// A running intake. Dropping it stops the thread without waiting; prefer [`Intake::shutdown`].
pub struct Intake {
    path: PathBuf,
    rx: Receiver<(SpanBatch, usize)>,
    shared: Arc<server::Shared>,
    wake: UnixStream,
    ready: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").field("path", &self.path).finish()
    }
}

/// Listens on `dir/spans.sock` (replacing a stale socket there) and starts the reader thread.
/// `dir` must exist; the caller gives it mode 0700 so only this user can connect.
pub fn start(dir: &Path) -> io::Result<Intake> {
    start_at(&dir.join(SOCKET_NAME))
}

/// Listens on the socket `path` (replacing a stale socket there) and starts the reader thread.
/// Its directory must exist, with a mode that lets only the program's user in.
pub fn start_at(path: &Path) -> io::Result<Intake> {
    let path = path.to_path_buf();
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    listener.set_nonblocking(true)?;
    let (wake, wake_rx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    let (tx, rx) = sync_channel(QUEUE);
    let shared = Arc::new(server::Shared::default());
    let (ready, ready_tx) = UnixStream::pair()?;
    ready.set_nonblocking(true)?;
    ready_tx.set_nonblocking(true)?;
    let _ = shared.ready.set(ready_tx);
    let thread = {
        let shared = Arc::clone(&shared);
        let socket = path.clone();
        std::thread::Builder::new()
            .name("iotrace-span-intake".into())
            .spawn(move || server::run(listener, socket, wake_rx, tx, shared))
    };
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    Ok(Intake {
        path,
        rx,
        shared,
        wake,
        ready,
        thread: Some(thread),
    })
}

impl Intake {
    /// The socket's path: the value for `IOTRACE_SOCKET`.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// A descriptor that becomes readable when batches are waiting: poll it, then call
    /// [`Intake::take_ready`] and drain with [`Intake::try_recv`].
    pub fn ready_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.ready)
    }

    /// Re-arm the [`Intake::ready_fd`] notification; call it before draining.
    pub fn take_ready(&self) {
        self.shared.pending.store(false, Ordering::Release);
        let mut sink = [0u8; 64];
        while matches!(std::io::Read::read(&mut (&self.ready), &mut sink), Ok(n) if n > 0) {}
    }

    /// The next decoded batch, if one is waiting. Call this regularly: while batches wait
    /// unread, the intake stops reading and the programs drop (and count) events.
    pub fn try_recv(&self) -> Option<SpanBatch> {
        self.rx.try_recv().ok().map(|item| self.taken(item))
    }

    /// Account for a batch leaving the queue.
    fn taken(&self, (batch, bytes): (SpanBatch, usize)) -> SpanBatch {
        self.shared.queued.fetch_sub(bytes, Ordering::AcqRel);
        batch
    }

    /// The next decoded batch, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<SpanBatch> {
        self.rx
            .recv_timeout(timeout)
            .ok()
            .map(|item| self.taken(item))
    }

    /// Counters so far.
    pub fn stats(&self) -> IntakeStats {
        self.shared.snapshot()
    }

    /// Stops accepting, reads what connected clients already sent (about 200 ms at most),
    /// joins the thread and removes the socket. Returns the final counters and the batches
    /// not yet taken with [`Intake::try_recv`].
    pub fn shutdown(mut self) -> (IntakeStats, Vec<SpanBatch>) {
        self.stop();
        let mut rest = Vec::new();
        // The thread ends within DRAIN_FOR plus one read; this bound only guards against a bug.
        let give_up = Instant::now() + Duration::from_secs(2);
        let finished = loop {
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(item) => rest.push(self.taken(item)),
                Err(RecvTimeoutError::Disconnected) => break true,
                Err(RecvTimeoutError::Timeout) if Instant::now() >= give_up => break false,
                Err(RecvTimeoutError::Timeout) => {}
            }
        };
        if let Some(t) = self.thread.take() {
            if finished {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
        (self.shared.snapshot(), rest)
    }

    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = (&self.wake).write(&[1]);
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}
