//! The layer's only contact with libc and the machine: the monotonic clock, the kernel thread id,
//! a socket write that cannot raise SIGPIPE, an `atexit` hook, and a walk of the calling thread's
//! frame pointers. Every `unsafe` block of the crate is here.

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

std::thread_local! {
    /// The calling thread's stack: (lowest, one past the highest) address; (0, 0) until asked,
    /// (1, 1) when pthread could not say.
    static STACK_BOUNDS: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

fn stack_bounds() -> (usize, usize) {
    let known = STACK_BOUNDS.try_with(|b| b.get()).unwrap_or((1, 1));
    if known != (0, 0) {
        return known;
    }
    let mut bounds = (1, 1);
    // SAFETY: `attr` is initialised by pthread_getattr_np before pthread_attr_getstack reads it
    // and destroyed once; `addr` and `size` are valid out-pointers. For the main thread glibc
    // reads /proc/self/maps here (once per thread, never on a hot path after).
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            if libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0 && size > 0 {
                bounds = (addr as usize, addr as usize + size);
            }
            libc::pthread_attr_destroy(&mut attr);
        }
    }
    let _ = STACK_BOUNDS.try_with(|b| b.set(bounds));
    bounds
}

/// Return addresses of the calling thread's frames, innermost first, from its frame-pointer
/// chain, into `out`; returns how many. Only frames between the current stack pointer and the
/// top of the thread's stack are read, each above the last, and nothing when the stack pointer
/// is not on the thread's own stack, so a program built without frame pointers gives a short
/// or meaningless stack, never a fault. x86-64 and aarch64
/// (where a frame record is `[previous frame pointer, return address]`); elsewhere nothing.
#[inline(never)]
pub(crate) fn frame_pointer_stack(out: &mut [u64]) -> usize {
    let (fp, sp): (usize, usize);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads two registers into locals; no memory is touched.
    unsafe {
        std::arch::asm!("mov {}, rbp", "mov {}, rsp", out(reg) fp, out(reg) sp,
            options(nomem, nostack, preserves_flags));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        std::arch::asm!("mov {}, x29", "mov {}, sp", out(reg) fp, out(reg) sp,
            options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = out;
        return 0;
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let (low, top) = stack_bounds();
        // Only on the thread's own stack, which is one mapping from the stack pointer up: on
        // another stack (a coroutine's, a signal stack) a frame pointer between the stack
        // pointer and the thread stack's top could point into a gap between mappings.
        if sp < low || sp >= top {
            return 0;
        }
        let mut fp = fp;
        let mut n = 0;
        while n < out.len() && fp >= sp && fp % 8 == 0 && fp.saturating_add(16) <= top {
            // SAFETY: `fp..fp + 16` lies between this thread's stack pointer and the top of its
            // stack, which is mapped and readable; the words are read as plain integers.
            let (next, ret) = unsafe {
                let p = fp as *const usize;
                (p.read_volatile(), p.add(1).read_volatile())
            };
            if ret == 0 {
                break;
            }
            out[n] = ret as u64;
            n += 1;
            if next <= fp {
                break;
            }
            fp = next;
        }
        n
    }
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

    #[inline(never)]
    fn deeper(n: u32, out: &mut [u64]) -> usize {
        if n == 0 {
            return frame_pointer_stack(out);
        }
        let k = deeper(n - 1, out);
        std::hint::black_box(k)
    }

    #[test]
    fn frame_walk_sees_each_recursive_frame() {
        // This crate is built with frame pointers (.cargo/config.toml); each `deeper` frame
        // returns to the same place in `deeper`.
        let mut a = [0u64; 64];
        let mut b = [0u64; 64];
        let short = deeper(1, &mut a);
        let long = deeper(11, &mut b);
        assert!(short >= 2, "{short} frames");
        assert!(
            long >= short + 10,
            "{long} frames for 10 more calls than {short}"
        );
        let same = b[..long].windows(2).filter(|w| w[0] == w[1]).count();
        assert!(
            same >= 9,
            "{same} repeated return addresses in {:x?}",
            &b[..long]
        );
        std::thread::spawn(|| {
            let mut c = [0u64; 64];
            assert!(deeper(3, &mut c) >= 4);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn tid_of_main_test_thread_differs_from_spawned() {
        let here = gettid();
        let there = std::thread::spawn(gettid).join().unwrap_or(here);
        assert_ne!(here, there);
    }
}
