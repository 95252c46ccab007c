//! SIGINT/SIGTERM handling with `signal-hook`: the signal writes a byte into a socket pair,
//! so every strategy can wait for shutdown in the same place it waits for I/O (poll, mio, tokio).
//! A second signal while shutting down exits at once with status 1.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

/// The read end of the signal pipe; it becomes readable when SIGINT or SIGTERM arrives.
#[derive(Debug)]
pub struct Shutdown {
    reader: UnixStream,
    requested: Arc<AtomicBool>,
}

impl Shutdown {
    /// Installs the handlers. Call before announcing the listening address.
    pub fn register() -> io::Result<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let requested = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Order matters: the conditional exit checks the flag before it is set.
            signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&requested))?;
            signal_hook::flag::register(sig, Arc::clone(&requested))?;
            signal_hook::low_level::pipe::register(sig, writer.try_clone()?)?;
        }
        Ok(Self { reader, requested })
    }

    /// Whether a signal has arrived.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The pipe's read end, to register with a poller; readable once a signal arrived.
    pub fn into_stream(self) -> UnixStream {
        self.reader
    }
}

impl AsRawFd for Shutdown {
    fn as_raw_fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }
}
