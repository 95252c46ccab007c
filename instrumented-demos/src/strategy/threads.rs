//! One OS thread per connection over blocking `std::net`; the wait is `std::thread::sleep`.
//!
//! The accept loop polls the listener and the shutdown pipe together, so a signal ends the
//! process at once; connection threads are not joined (they may be asleep or mid-read) and
//! end with the process.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

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

/// Accepts connections and gives each its own thread, until shutdown.
pub fn serve(listener: TcpListener, shutdown: Shutdown) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let fds = [listener.as_raw_fd(), shutdown.as_raw_fd()];
    loop {
        let [incoming, _signal] = sys::poll_readable(fds, None)?;
        if shutdown.requested() {
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
    thread::Builder::new().name("conn".into()).spawn(move || {
        // A peer reset is routine; there is no one to report it to.
        let _ = serve_connection(&mut ThreadIo(stream));
    })?;
    Ok(())
}
