//! Every raw syscall the recorder makes outside the perf crate: the held fork/exec of the
//! child, pidfd, wait4, redirecting a perf event into another event's ring buffer, and the
//! bpf(2) calls of the syscall counter (maps, program load, attach).
//! Read-only file maps for the unwinder. All `unsafe` of the recorder lives here.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use iotrace_trace::{ExitStatus, Rusage};

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of every time in a trace.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A child that has been forked but waits, before exec, until [`HeldChild::release`].
pub struct HeldChild {
    pub pid: libc::pid_t,
    go: Option<OwnedFd>,
    exec_err: OwnedFd,
}

/// Find `program` on PATH the way a shell would (a name with a `/` is taken as a path).
pub fn resolve_program(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"))
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fork a child that will exec `program` with `args` and the current environment plus `env`,
/// but only once released. Everything the child needs is prepared before fork, so the child
/// only calls async-signal-safe functions.
pub fn spawn_held(
    program: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
) -> io::Result<HeldChild> {
    let path = cstring(program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    let mut envp: Vec<CString> = Vec::new();
    for (key, value) in std::env::vars_os() {
        if env.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let mut kv = key.into_vec();
        kv.push(b'=');
        kv.extend_from_slice(value.as_bytes());
        envp.push(cstring(&kv)?);
    }
    for (key, value) in env {
        let mut kv = key.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(value.as_bytes());
        envp.push(cstring(&kv)?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());

    let (go_read, go_write) = pipe_cloexec()?;
    let (err_read, err_write) = pipe_cloexec()?;

    // SAFETY: getpid has no side effects.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork is safe to call; in the child we only use async-signal-safe calls (prctl,
    // getppid, read, write, sigprocmask, execve, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // Child: wait for the go byte, restore default signal handling, exec.
        // SAFETY: see above; all pointers stay valid because the parent's memory is copied.
        unsafe {
            // The child dies with the recorder: if iotrace is killed (SIGKILL, OOM), the
            // program it was recording gets SIGKILL rather than running on unrecorded. The
            // setting survives exec (not for set-uid programs) and is not inherited by the
            // child's own children. If the recorder is already gone, do not run at all.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != parent {
                libc::_exit(127);
            }
            let mut byte = 0u8;
            loop {
                let n = libc::read(go_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                if n == 1 {
                    break;
                }
                if n == 0 || *libc::__errno_location() != libc::EINTR {
                    libc::_exit(127);
                }
            }
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGPIPE, libc::SIGCHLD] {
                libc::signal(sig, libc::SIG_DFL);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            let bytes = errno.to_le_bytes();
            libc::write(err_write.as_raw_fd(), bytes.as_ptr().cast(), 4);
            libc::_exit(127);
        }
    }
    drop(go_read);
    drop(err_write);
    drop(argv_ptrs);
    drop(envp_ptrs);
    Ok(HeldChild {
        pid,
        go: Some(go_write),
        exec_err: err_read,
    })
}

impl HeldChild {
    /// Let the child exec. Returns an error if exec failed (the child has then exited 127).
    pub fn release(&mut self) -> io::Result<()> {
        let go = self
            .go
            .take()
            .ok_or_else(|| io::Error::other("child already released"))?;
        let byte = [1u8];
        // SAFETY: writing one byte from a live buffer to a pipe fd we own.
        let n = unsafe { libc::write(go.as_raw_fd(), byte.as_ptr().cast(), 1) };
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
        drop(go);
        let mut errno = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            // SAFETY: reading into the unfilled tail of a buffer we own.
            let n = unsafe {
                libc::read(
                    self.exec_err.as_raw_fd(),
                    errno[got..].as_mut_ptr().cast(),
                    4 - got,
                )
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        if got == 4 {
            return Err(io::Error::from_raw_os_error(i32::from_le_bytes(errno)));
        }
        Ok(())
    }
}

/// A pidfd: readable once the process has exited.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reap the child if it has exited. `Ok(None)` while it still runs.
pub fn try_wait4(pid: libc::pid_t) -> io::Result<Option<(ExitStatus, Rusage)>> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes into status and ru, both owned here.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(e);
    }
    if r == 0 {
        return Ok(None);
    }
    let exit = if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok(Some((
        exit,
        Rusage {
            utime_ns: tv(ru.ru_utime),
            stime_ns: tv(ru.ru_stime),
            max_rss_bytes: ru.ru_maxrss as u64 * 1024,
            minflt: ru.ru_minflt as u64,
            majflt: ru.ru_majflt as u64,
            voluntary: ru.ru_nvcsw as u64,
            involuntary: ru.ru_nivcsw as u64,
        },
    )))
}

/// Send `signal` to `pid`; a process that is already gone is not an error.
pub fn kill(pid: libc::pid_t, signal: i32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, signal) };
}

/// Make perf event `fd` write its records into the ring buffer of `target`
/// (PERF_EVENT_IOC_SET_OUTPUT). Both must be on the same CPU.
pub fn perf_set_output(fd: RawFd, target: RawFd) -> io::Result<()> {
    const PERF_EVENT_IOC_SET_OUTPUT: libc::c_ulong = 0x2405;
    // SAFETY: the ioctl takes two fds and touches no memory of ours.
    let r = unsafe { libc::ioctl(fd, PERF_EVENT_IOC_SET_OUTPUT as _, target) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll(2)` on `fds`; EINTR counts as "nothing ready". Returns how many are ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a live, exclusively borrowed slice of initialized pollfd structs and the
    // count passed is its length, so the kernel reads and writes only inside it.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Wait until one of `fds` is readable or `timeout_ms` passes. Returns readiness per fd.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    poll(&mut pfds, timeout_ms)?;
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// The CPUs that are online now (per-CPU perf events can only be opened on those).
pub fn online_cpus() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.splitn(2, '-').map(|n| n.parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) if a <= b && b < 4096 => cpus.extend(a..=b),
            (Some(Ok(a)), None) => cpus.push(a),
            _ => {}
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// The effective user id of this process (whose files the analysis trusts, with root's).
/// The calling thread's kernel tid.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and no side effects.
    unsafe { libc::gettid() }
}

pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// The host name, for the trace header.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Raise the calling thread's scheduling priority (nice) by `boost` steps, if permitted.
/// The recorder does this so that a child with hundreds of busy threads cannot starve the
/// drain of its own rings and span socket. Returns whether it took effect.
pub fn boost_this_thread(boost: i32) -> bool {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    unsafe {
        let tid = libc::gettid();
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, current - boost) == 0
    }
}

/// Fork a process that holds a copy of every fd of this one and waits for this one to exit
/// (its end of a pipe then closes), then exits itself. The kernel's release of what those fds
/// refer to (perf tracepoint events wait for RCU grace periods when they go) then happens in
/// that process, after this one has exited and been reaped. Its stdio is /dev/null, so that
/// nobody reading this process's output waits for it.
pub fn close_fds_after_exit() -> io::Result<()> {
    let (read_end, write_end) = pipe_cloexec()?;
    // SAFETY: open takes a NUL-terminated path we own.
    let devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if devnull < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after fork the child calls only async-signal-safe functions (dup2, close, read,
    // _exit) on fds it owns, and touches no memory that another thread could be changing.
    match unsafe { libc::fork() } {
        // SAFETY: as said above: only async-signal-safe calls on fds this process owns.
        0 => unsafe {
            for fd in 0..3 {
                libc::dup2(devnull, fd);
            }
            libc::close(write_end.as_raw_fd());
            let mut byte = 0u8;
            loop {
                let n = libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                    break;
                }
            }
            libc::_exit(0)
        },
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: devnull was opened above and is not used after this.
            unsafe { libc::close(devnull) };
            Err(e)
        }
        _ => {
            // SAFETY: devnull was opened above and is not used after this.
            unsafe { libc::close(devnull) };
            drop(read_end);
            // The write end stays open until this process exits: that is the signal.
            std::mem::forget(write_end);
            Ok(())
        }
    }
}

/// Attach BPF program `prog` to the tracepoint of perf event `fd` (PERF_EVENT_IOC_SET_BPF).
pub fn perf_set_bpf(fd: RawFd, prog: RawFd) -> io::Result<()> {
    const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
    // SAFETY: the ioctl takes an event fd and a program fd by value; no memory of ours.
    let r = unsafe { libc::ioctl(fd, PERF_EVENT_IOC_SET_BPF as _, prog) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The bpf(2) commands the syscall counter uses.
mod bpf_cmd {
    pub const MAP_CREATE: i32 = 0;
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const MAP_UPDATE_ELEM: i32 = 2;
    pub const MAP_DELETE_ELEM: i32 = 3;
    pub const MAP_GET_NEXT_KEY: i32 = 4;
    pub const PROG_LOAD: i32 = 5;
    pub const RAW_TRACEPOINT_OPEN: i32 = 17;
}

/// `union bpf_attr` as the commands above read it: 16 words, unused ones zero.
type BpfAttr = [u64; 16];

fn bpf(cmd: i32, attr: &mut BpfAttr) -> io::Result<i64> {
    // SAFETY: attr is a zeroed, 8-byte aligned buffer of the size we pass; the kernel reads
    // (and for lookups writes through) only the pointers we put in it, which outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<BpfAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// The BPF map types the syscall counter uses.
#[derive(Clone, Copy)]
pub enum BpfMap {
    /// A hash map whose entries are allocated as they are inserted (BPF_F_NO_PREALLOC).
    Hash,
    Array,
}

/// BPF_MAP_CREATE with `key_size`-byte keys and `value_size`-byte values.
pub fn bpf_map(
    kind: BpfMap,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<OwnedFd> {
    let (ty, flags) = match kind {
        BpfMap::Hash => (1u64, 1u64),
        BpfMap::Array => (2, 0),
    };
    let mut attr: BpfAttr = [0; 16];
    attr[0] = ty | u64::from(key_size) << 32;
    attr[1] = u64::from(value_size) | u64::from(max_entries) << 32;
    attr[2] = flags;
    bpf(bpf_cmd::MAP_CREATE, &mut attr).map(owned)
}

/// BPF_RAW_TRACEPOINT_OPEN: run `prog` at tracepoint `name`; closing the fd detaches it.
pub fn bpf_raw_tracepoint_open(name: &str, prog: &OwnedFd) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr: BpfAttr = [0; 16];
    attr[0] = name.as_ptr() as u64;
    attr[1] = prog.as_raw_fd() as u64;
    bpf(bpf_cmd::RAW_TRACEPOINT_OPEN, &mut attr).map(owned)
}

/// The BPF program types the syscall counter uses.
#[derive(Clone, Copy)]
pub enum BpfProg {
    /// Attached to a perf tracepoint event; its context is the tracepoint's record.
    Tracepoint = 5,
    /// Attached with [`perf_set_bpf`] to a sampling (non-tracepoint) event: runs at each of
    /// its overflows, and a return of 0 drops the sample before it is written.
    PerfEvent = 7,
    /// Attached with [`bpf_raw_tracepoint_open`]; its context is the tracepoint's arguments.
    RawTracepoint = 17,
}

/// BPF_PROG_LOAD. On failure the error carries the verifier's last word (the load is tried
/// again with the log on, so a good program never pays for it).
pub fn bpf_load_prog(kind: BpfProg, insns: &[u64], name: &str) -> io::Result<OwnedFd> {
    let prog_type = kind as u64;
    let license = b"Dual MIT/GPL\0";
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let load = |log: Option<&mut Vec<u8>>| {
        let mut attr: BpfAttr = [0; 16];
        attr[0] = prog_type | (insns.len() as u64) << 32;
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        if let Some(log) = log {
            // log_level 1, log_size, log_buf
            attr[3] = 1 | (log.len() as u64) << 32;
            attr[4] = log.as_mut_ptr() as u64;
        }
        attr[6] = u64::from_le_bytes(prog_name[..8].try_into().expect("8 bytes"));
        attr[7] = u64::from_le_bytes(prog_name[8..].try_into().expect("8 bytes"));
        bpf(bpf_cmd::PROG_LOAD, &mut attr).map(owned)
    };
    load(None).or_else(|e| {
        let mut log = vec![0u8; 256 << 10];
        let again = load(Some(&mut log));
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        again.map_err(|_| io::Error::new(e.kind(), format!("{e}; verifier: {last}")))
    })
}

fn map_attr(map: &OwnedFd, key: u64, value: u64, flags: u64) -> BpfAttr {
    let mut attr: BpfAttr = [0; 16];
    attr[0] = map.as_raw_fd() as u64;
    attr[1] = key;
    attr[2] = value;
    attr[3] = flags;
    attr
}

/// BPF_MAP_UPDATE_ELEM (any: insert or replace).
pub fn bpf_map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = map_attr(map, key.as_ptr() as u64, value.as_ptr() as u64, 0);
    bpf(bpf_cmd::MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// BPF_MAP_DELETE_ELEM; a key that is not there is not an error.
pub fn bpf_map_delete(map: &OwnedFd, key: &[u8]) -> io::Result<()> {
    let mut attr = map_attr(map, key.as_ptr() as u64, 0, 0);
    match bpf(bpf_cmd::MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Every key of a map with u32 keys.
pub fn bpf_map_u32_keys(map: &OwnedFd) -> io::Result<Vec<u32>> {
    let mut keys = Vec::new();
    let mut key: Option<u32> = None;
    loop {
        let mut next = 0u32;
        let prev = key.as_ref().map_or(0, |k| k as *const u32 as u64);
        let mut attr = map_attr(map, prev, &mut next as *mut u32 as u64, 0);
        match bpf(bpf_cmd::MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
        keys.push(next);
        key = Some(next);
    }
}

/// Every `(key, value)` of a map with u64 keys and u64 values.
pub fn bpf_map_u64_entries(map: &OwnedFd) -> io::Result<Vec<(u64, u64)>> {
    let mut entries = Vec::new();
    let mut key: Option<u64> = None;
    loop {
        let mut next = 0u64;
        let prev = key.as_ref().map_or(0, |k| k as *const u64 as u64);
        let mut attr = map_attr(map, prev, &mut next as *mut u64 as u64, 0);
        match bpf(bpf_cmd::MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Err(e) => return Err(e),
        }
        let mut value = 0u64;
        let mut attr = map_attr(
            map,
            &next as *const u64 as u64,
            &mut value as *mut u64 as u64,
            0,
        );
        // A key deleted between the two calls is skipped.
        if bpf(bpf_cmd::MAP_LOOKUP_ELEM, &mut attr).is_ok() {
            entries.push((next, value));
        }
        key = Some(next);
    }
}

/// Map a file read-only (the recorder's CFI unwinder reads `.eh_frame` and `.text` from it).
pub fn map_file(file: &std::fs::File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private; a file truncated under it would fault on
    // access, which the recorder accepts for the program's own binaries (perf and samply map
    // them the same way).
    unsafe { memmap2::Mmap::map(file) }
}
