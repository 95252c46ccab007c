//! The layer's only contact with libc: the monotonic clock, the kernel thread id, a socket write
//! that cannot raise SIGPIPE, and an `atexit` hook. Every `unsafe` block of the crate is here.

use std::io;
use std::os::fd::RawFd;

/// CLOCK_MONOTONIC in nanoseconds, the clock perf events use with `clockid = CLOCK_MONOTONIC`.
#[inline]
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, so the
    // call cannot fail, and on failure `ts` stays zeroed, which is harmless.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The calling thread's kernel tid (what perf records name), not Rust's `ThreadId`.
pub(crate) fn gettid() -> u32 {
    // SAFETY: SYS_gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    tid as u32
}

/// Writes all of `bytes` to the socket `fd`, retrying on EINTR. Uses `send(MSG_NOSIGNAL)` so a
/// recorder that went away gives EPIPE instead of killing the program with SIGPIPE.
pub(crate) fn send_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice for the whole call and `len` does not exceed it; `fd`
        // is owned by the caller's `UnixStream`, which outlives this call.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = bytes.get(n as usize..).unwrap_or(&[]);
    }
    Ok(())
}

/// Registers `hook` to run in `exit()` (after the exiting thread's thread-local destructors).
pub(crate) fn at_exit(hook: extern "C" fn()) -> bool {
    // SAFETY: `hook` is a plain `extern "C" fn()` with static lifetime, as atexit requires; the
    // hook catches panics itself so none unwinds into libc.
    unsafe { libc::atexit(hook) == 0 }
}

/// Raise the calling thread's priority by `steps` nice steps if the process may (root or
/// CAP_SYS_NICE); otherwise nothing happens. Used for the flusher thread only, so that a
/// program with hundreds of busy threads does not starve it into dropping events.
pub(crate) fn boost_this_thread(steps: i32) {
    // SAFETY: gettid, getpriority and setpriority take plain integers and touch no memory.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, current - steps);
    }
}

/// The effective uid (whose rendezvous directory the layer trusts).
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the peer of the connected socket `fd` has hung up (or sent something, which a
/// recorder never does): a zero-timeout poll.
pub(crate) fn peer_gone(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_nonzero() {
        let a = now_ns();
        let b = now_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn tid_of_main_test_thread_differs_from_spawned() {
        let here = gettid();
        let there = std::thread::spawn(gettid).join().unwrap_or(here);
        assert_ne!(here, there);
    }
}
