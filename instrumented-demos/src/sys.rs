//! The few raw system calls the demos need: the listen backlog, and `poll(2)` for the
//! thread-per-connection accept loop (the open-file limit is `iotrace_load`'s). All `unsafe`
//! of the crate lives here.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Listen backlog: large enough that 1000 clients connecting at once are not dropped.
const BACKLOG: libc::c_int = 4096;

/// Binds `127.0.0.1:port` (0 = any free port) with a backlog of 4096.
pub fn bind_loopback(port: u16) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    // std listens with a backlog of 128; on Linux calling listen again only raises the backlog.
    // SAFETY: the fd is a valid, bound socket owned by `listener`, which outlives the call.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Waits until one of `fds` is readable (or `timeout` passes); returns which are readable.
/// An interrupted wait returns all `false`.
pub fn poll_readable<const N: usize>(
    fds: [RawFd; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let timeout_ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: `pfds` is a valid array of N pollfd structs that poll may write `revents` into.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(err);
    }
    Ok(pfds.map(|p| p.revents != 0))
}
