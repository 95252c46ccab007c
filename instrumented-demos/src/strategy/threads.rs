//! One OS thread per connection over blocking `std::net`; the wait is `std::thread::sleep`.
//!
//! The accept loop polls the listener and the shutdown pipe together. On a signal it gives the
//! connection threads a moment to end (those whose clients have closed exit at once, handing
//! their last span records to the iotrace layer, which only a thread itself can do) and then
//! ends the process; threads still serving a client are not joined and end with it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tracing::span::EnteredSpan;

use crate::conn::{serve_connection, BlockingIo};
use crate::shutdown::Shutdown;
use crate::sys;

/// A connection served by the thread that owns it.
struct ThreadIo(TcpStream);

impl BlockingIo for ThreadIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn wait(&mut self, d: Duration, span: EnteredSpan) -> EnteredSpan {
        thread::sleep(d);
        span
    }
}

/// Connection threads running.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How long shutdown waits for connection threads to end.
const DRAIN: Duration = Duration::from_secs(1);

/// Accepts connections and gives each its own thread, until shutdown.
pub fn serve(listener: TcpListener, shutdown: Shutdown) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let fds = [listener.as_raw_fd(), shutdown.as_raw_fd()];
    loop {
        let [incoming, _signal] = sys::poll_readable(fds, None)?;
        if shutdown.requested() {
            let since = Instant::now();
            while LIVE.load(Ordering::Acquire) > 0 && since.elapsed() < DRAIN {
                thread::sleep(Duration::from_millis(5));
            }
            return Ok(());
        }
        if incoming {
            accept_all(&listener);
        }
    }
}

fn accept_all(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = spawn_connection(stream) {
                    eprintln!("threads: cannot start a connection thread: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("threads: accept: {e}");
                // E.g. out of file descriptors: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                return;
            }
        }
    }
}

fn spawn_connection(stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    /// Counts the thread out however it ends.
    struct Live;
    impl Drop for Live {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::AcqRel);
        }
    }
    LIVE.fetch_add(1, Ordering::AcqRel);
    let live = Live;
    let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
        let _live = live;
        // A peer reset is routine; there is no one to report it to.
        let _ = serve_connection(&mut ThreadIo(stream));
        // Hand this thread's last records on before it counts as ended (its exit would hand
        // them on too, but after `_live` is dropped, racing the process's end).
        iotrace_layer::flush();
    });
    // A thread that did not start dropped `live` with its closure.
    spawned.map(|_| ())
}
