//! Exact per-thread syscall counts without a perf sample per syscall.
//!
//! A perf sample per `raw_syscalls:sys_enter` costs the traced program a ring-buffer write
//! per syscall and the recorder a record to parse: on nginx about 20% of its CPU. Counting in
//! the kernel instead costs a hash-map update. Three tiny BPF programs do it:
//!
//! - on the raw tracepoint `sys_enter`: `counts[tid << 32 | nr] += 1` if that entry exists, or
//!   else if the calling process is recorded (a count that finds the map full goes to
//!   `drops`);
//! - on `sched:sched_process_fork`: a child of a traced process is traced too (in the
//!   parent's context, before the child can run, so nothing is missed);
//! - on `sched:sched_process_exec`: the held child's entry is armed (2) until its exec, then
//!   counts (1), so counting starts where perf's `enable_on_exec` starts.
//!
//! These programs run for every task on the system (a program belongs to the tracepoint, not
//! to a task), so each one first looks the process up in `procs`. The syscall program is a raw
//! tracepoint program: it gets the tracepoint's arguments directly, without perf building a
//! trace record per syscall (that alone was ~4% of nginx's CPU). The fork and exec programs
//! hang on perf tracepoint events (they are rare, and their records carry the child's pid),
//! and return 1, so other tools' perf events on those tracepoints still see them.
//!
//! The programs are a few dozen instructions, assembled here: no BPF toolchain (clang,
//! bpf-linker) is needed to build iotrace. See docs/DESIGN.md for why this is exact.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{self, BpfMap, BpfProg};

/// How many processes and threads can be traced at once (one `procs` entry each).
const MAX_PROCS: u32 = 1 << 16;
/// How many distinct (thread, syscall) pairs can be counted (entries are allocated as
/// they are first used).
const MAX_COUNTS: u32 = 1 << 18;

/// Offset of `child_pid` in `sched:sched_process_fork` (read from its tracefs format).
const FORK_CHILD_PID_DEFAULT: i16 = 20;

/// The loaded programs and their maps; counting stops when this is dropped (with the perf
/// events the programs are attached to).
pub(crate) struct SyscallCounter {
    procs: OwnedFd,
    counts: OwnedFd,
    drops: OwnedFd,
    /// The syscall program and its raw tracepoint link; the fork and exec programs.
    sys_enter: (OwnedFd, Option<OwnedFd>),
    progs: Vec<OwnedFd>,
}

impl SyscallCounter {
    /// Create the maps and load the programs; `child` counts from its next exec on.
    pub(crate) fn new(child: u32) -> io::Result<Self> {
        Self::with_procs(&[(child, ARMED)])
    }

    /// Create the maps and load the programs; the running processes `tgids` count at once
    /// (an attached process does not exec; its children are followed as a child's are).
    pub(crate) fn counting(tgids: &[u32]) -> io::Result<Self> {
        let procs: Vec<(u32, u32)> = tgids.iter().map(|&t| (t, COUNTING)).collect();
        Self::with_procs(&procs)
    }

    fn with_procs(initial: &[(u32, u32)]) -> io::Result<Self> {
        let procs = sys::bpf_map(BpfMap::Hash, 4, 4, MAX_PROCS)?;
        let counts = sys::bpf_map(BpfMap::Hash, 8, 8, MAX_COUNTS)?;
        let drops = sys::bpf_map(BpfMap::Array, 4, 8, 1)?;
        for (tgid, state) in initial {
            sys::bpf_map_update(&procs, &tgid.to_ne_bytes(), &state.to_ne_bytes())?;
        }
        let fork_off = fork_child_pid_offset().unwrap_or(FORK_CHILD_PID_DEFAULT);
        let sys_enter = sys::bpf_load_prog(
            BpfProg::RawTracepoint,
            &sys_enter_prog(&procs, &counts, &drops),
            "iotrace_sysent",
        )?;
        let progs = vec![
            sys::bpf_load_prog(
                BpfProg::Tracepoint,
                &fork_prog(&procs, fork_off),
                "iotrace_fork",
            )?,
            sys::bpf_load_prog(BpfProg::Tracepoint, &exec_prog(&procs), "iotrace_exec")?,
        ];
        Ok(SyscallCounter {
            procs,
            counts,
            drops,
            sys_enter: (sys_enter, None),
            progs,
        })
    }

    /// Start counting: attach the fork and exec programs to perf events opened on
    /// `sched:sched_process_fork` and `sched:sched_process_exec` (in that order), and the
    /// syscall program to its raw tracepoint.
    pub(crate) fn attach(&mut self, events: [&impl AsRawFd; 2]) -> io::Result<()> {
        for (event, prog) in events.iter().zip(&self.progs) {
            sys::perf_set_bpf(event.as_raw_fd(), prog.as_raw_fd())?;
        }
        self.sys_enter.1 = Some(sys::bpf_raw_tracepoint_open(
            "sys_enter",
            &self.sys_enter.0,
        )?);
        Ok(())
    }

    /// Stop counting: detach the syscall program (closing its raw tracepoint link). Reading
    /// the counts walks the map with two syscalls per entry, which takes a while with
    /// thousands of threads; a running process would go on counting meanwhile.
    pub(crate) fn stop(&mut self) {
        self.sys_enter.1 = None;
    }

    /// The recording's window ends: every traced process stops taking on new threads (their
    /// children inherit the state), while threads already counting go on until [`stop`]. A
    /// thread born from here on is not counted, so none can be counted and not seen by perf
    /// events that are disabled next. Immediate: one map update per entry, no wait.
    ///
    /// [`stop`]: SyscallCounter::stop
    pub(crate) fn end_window(&self) {
        let Ok(keys) = sys::bpf_map_u32_keys(&self.procs) else {
            return;
        };
        for k in keys {
            let _ = sys::bpf_map_update(&self.procs, &k.to_ne_bytes(), &ENDED.to_ne_bytes());
        }
    }

    /// A filter for sampling events that observe whole CPUs (see [`sample_filter_prog`]):
    /// it keeps the samples of the processes this counter traces, in the state in which it
    /// counts their syscalls (so nothing of the held child before its exec).
    pub(crate) fn sample_filter(&self) -> io::Result<OwnedFd> {
        sys::bpf_load_prog(
            BpfProg::PerfEvent,
            &sample_filter_prog(&self.procs),
            "iotrace_samples",
        )
    }

    /// Counts that found the map full.
    pub(crate) fn dropped(&self) -> u64 {
        sys::bpf_map_u64_entries(&self.drops)
            .ok()
            .and_then(|e| e.first().map(|e| e.1))
            .unwrap_or(0)
    }

    /// A thread or process of the child ended: stop tracing its id, so that an unrelated
    /// process that gets the id later is not counted. (Its `counts` entries stay until the
    /// end; a thread that got a reused id would add to those: pid_max ids must be used
    /// up first, and the report would name the old thread.)
    pub(crate) fn exited(&self, tid: u32) {
        let _ = sys::bpf_map_delete(&self.procs, &tid.to_ne_bytes());
    }

    /// Every `(tid, syscall number, count)` so far.
    pub(crate) fn counts(&self) -> io::Result<Vec<(u32, u16, u64)>> {
        let entries = sys::bpf_map_u64_entries(&self.counts)?;
        Ok(entries
            .into_iter()
            .map(|(key, n)| {
                (
                    (key >> 32) as u32,
                    u16::try_from(key & 0xffff_ffff).unwrap_or(u16::MAX),
                    n,
                )
            })
            .collect())
    }
}

/// `procs` values: counting, or waiting for the exec.
const COUNTING: u32 = 1;
const ARMED: u32 = 2;
/// The window ended: no new thread of the process is counted ([`SyscallCounter::end_window`]).
const ENDED: u32 = 3;

fn fork_child_pid_offset() -> Option<i16> {
    tracepoint_field_offset("sched_process_fork", " child_pid;")
}

/// The offset of a field of a `sched:` tracepoint's record, from its tracefs format: `field`
/// is how its declaration ends (`" pid;"`, which `common_pid;` does not match).
pub(crate) fn tracepoint_field_offset(event: &str, field: &str) -> Option<i16> {
    let format =
        std::fs::read_to_string(format!("{}/events/sched/{event}/format", super::TRACEFS)).ok()?;
    parse_field_offset(&format, field)
}

fn parse_field_offset(format: &str, field: &str) -> Option<i16> {
    let line = format.lines().find(|l| l.contains(field))?;
    let off = line.split("offset:").nth(1)?.split(';').next()?;
    off.trim().parse().ok()
}

/// A tiny BPF assembler: just the instructions these programs use.
mod asm {
    pub const R0: u8 = 0;
    pub const R1: u8 = 1;
    pub const R2: u8 = 2;
    pub const R3: u8 = 3;
    pub const R4: u8 = 4;
    pub const R6: u8 = 6;
    pub const R7: u8 = 7;
    pub const R8: u8 = 8;
    pub const FP: u8 = 10;

    pub const CALL_MAP_LOOKUP: i32 = 1;
    pub const CALL_MAP_UPDATE: i32 = 2;
    pub const CALL_GET_CURRENT_PID_TGID: i32 = 14;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        u64::from(code)
            | u64::from(dst & 0xf | (src & 0xf) << 4) << 8
            | u64::from(off as u16) << 16
            | u64::from(imm as u32) << 32
    }

    /// `dst = map` (a 16-byte ld_imm64 with BPF_PSEUDO_MAP_FD).
    pub fn ld_map(p: &mut Vec<u64>, dst: u8, map_fd: i32) {
        p.push(insn(0x18, dst, 1, 0, map_fd));
        p.push(insn(0, 0, 0, 0, 0));
    }
    pub fn mov(dst: u8, src: u8) -> u64 {
        insn(0xbf, dst, src, 0, 0)
    }
    pub fn mov_imm(dst: u8, imm: i32) -> u64 {
        insn(0xb7, dst, 0, 0, imm)
    }
    pub fn add_imm(dst: u8, imm: i32) -> u64 {
        insn(0x07, dst, 0, 0, imm)
    }
    pub fn lsh(dst: u8, imm: i32) -> u64 {
        insn(0x67, dst, 0, 0, imm)
    }
    pub fn rsh(dst: u8, imm: i32) -> u64 {
        insn(0x77, dst, 0, 0, imm)
    }
    pub fn or(dst: u8, src: u8) -> u64 {
        insn(0x4f, dst, src, 0, 0)
    }
    /// `dst = *(u64 *)(src + off)`
    pub fn ldx64(dst: u8, src: u8, off: i16) -> u64 {
        insn(0x79, dst, src, off, 0)
    }
    /// `dst = *(u32 *)(src + off)`
    pub fn ldx32(dst: u8, src: u8, off: i16) -> u64 {
        insn(0x61, dst, src, off, 0)
    }
    /// `*(u64 *)(dst + off) = src`
    pub fn stx64(dst: u8, off: i16, src: u8) -> u64 {
        insn(0x7b, dst, src, off, 0)
    }
    /// `*(u32 *)(dst + off) = src`
    pub fn stx32(dst: u8, off: i16, src: u8) -> u64 {
        insn(0x63, dst, src, off, 0)
    }
    /// `*(u32 *)(dst + off) = imm`
    pub fn st32(dst: u8, off: i16, imm: i32) -> u64 {
        insn(0x62, dst, 0, off, imm)
    }
    /// `*(u64 *)(dst + off) = imm`
    pub fn st64(dst: u8, off: i16, imm: i32) -> u64 {
        insn(0x7a, dst, 0, off, imm)
    }
    /// `lock *(u64 *)(dst + off) += src`
    pub fn atomic_add64(dst: u8, off: i16, src: u8) -> u64 {
        insn(0xdb, dst, src, off, 0)
    }
    /// `if dst == imm goto +off`
    pub fn jeq_imm(dst: u8, imm: i32, off: i16) -> u64 {
        insn(0x15, dst, 0, off, imm)
    }
    /// `if dst != imm goto +off`
    pub fn jne_imm(dst: u8, imm: i32, off: i16) -> u64 {
        insn(0x55, dst, 0, off, imm)
    }
    pub fn ja(off: i16) -> u64 {
        insn(0x05, 0, 0, off, 0)
    }
    pub fn call(helper: i32) -> u64 {
        insn(0x85, 0, 0, 0, helper)
    }
    pub fn exit() -> u64 {
        insn(0x95, 0, 0, 0, 0)
    }

    /// Jump offsets are counted in instructions from the one after the jump; this patches
    /// each `(jump index, label index)` once the program is laid out.
    pub fn patch(p: &mut [u64], jumps: &[(usize, usize)]) {
        for &(at, target) in jumps {
            let off = (target as i64 - at as i64 - 1) as i16;
            p[at] = p[at] & !(0xffff << 16) | u64::from(off as u16) << 16;
        }
    }
}

use asm::*;

/// The tgid of the current task, looked up in `procs`: leaves r0 = the value's address or 0.
/// The current pid_tgid is kept in r7.
fn lookup_current_process(p: &mut Vec<u64>, procs: &OwnedFd) {
    p.push(call(CALL_GET_CURRENT_PID_TGID));
    p.push(mov(R7, R0));
    p.push(mov(R1, R0));
    p.push(rsh(R1, 32));
    p.push(stx32(FP, -4, R1));
    ld_map(p, R1, procs.as_raw_fd());
    p.push(mov(R2, FP));
    p.push(add_imm(R2, -4));
    p.push(call(CALL_MAP_LOOKUP));
}

/// Looks the current process up in `procs` and jumps unless it is there in `state`: returns
/// the two jumps to patch (not recorded; another state). On the way on, r0 is the value's
/// address.
fn unless_current_process_is(p: &mut Vec<u64>, procs: &OwnedFd, state: u32) -> [usize; 2] {
    lookup_current_process(p, procs);
    let no_proc = p.len();
    p.push(jeq_imm(R0, 0, 0));
    p.push(ldx32(R1, R0, 0));
    let other_state = p.len();
    p.push(jne_imm(R1, state as i32, 0));
    [no_proc, other_state]
}

/// Ends every program: return 1, so the tracepoint's perf events still fire.
fn epilogue(p: &mut Vec<u64>) -> usize {
    let out = p.len();
    p.push(mov_imm(R0, 1));
    p.push(exit());
    out
}

/// Raw tracepoint `sys_enter(struct pt_regs *regs, long id)`: ctx + 8 is the syscall number.
///
/// The common case, a recorded thread making a syscall it made before, costs one hash
/// lookup: `counts` is looked up first, and only a miss asks `procs` whether the process is
/// recorded (every syscall of every other process on the machine takes that path and ends
/// there).
fn sys_enter_prog(procs: &OwnedFd, counts: &OwnedFd, drops: &OwnedFd) -> Vec<u64> {
    let mut p = vec![mov(R6, R1)];
    p.push(call(CALL_GET_CURRENT_PID_TGID));
    p.push(mov(R7, R0));
    // key = tid << 32 | (u32) nr, at fp - 16
    p.push(ldx64(R1, R6, 8));
    p.push(lsh(R1, 32));
    p.push(rsh(R1, 32));
    p.push(mov(R8, R7));
    p.push(lsh(R8, 32));
    p.push(or(R8, R1));
    p.push(stx64(FP, -16, R8));
    ld_map(&mut p, R1, counts.as_raw_fd());
    p.push(mov(R2, FP));
    p.push(add_imm(R2, -16));
    p.push(call(CALL_MAP_LOOKUP));
    let miss = p.len();
    p.push(jeq_imm(R0, 0, 0));
    p.push(mov_imm(R1, 1));
    p.push(atomic_add64(R0, 0, R1));
    let done = p.len();
    p.push(ja(0));
    // A first (thread, syscall): is the process recorded, and counting yet?
    let miss_at = p.len();
    p.push(mov(R1, R7));
    p.push(rsh(R1, 32));
    p.push(stx32(FP, -4, R1));
    ld_map(&mut p, R1, procs.as_raw_fd());
    p.push(mov(R2, FP));
    p.push(add_imm(R2, -4));
    p.push(call(CALL_MAP_LOOKUP));
    let no_proc = p.len();
    p.push(jeq_imm(R0, 0, 0));
    p.push(ldx32(R1, R0, 0));
    let not_counting = p.len();
    p.push(jne_imm(R1, COUNTING as i32, 0));
    p.push(st64(FP, -24, 1));
    ld_map(&mut p, R1, counts.as_raw_fd());
    p.push(mov(R2, FP));
    p.push(add_imm(R2, -16));
    p.push(mov(R3, FP));
    p.push(add_imm(R3, -24));
    p.push(mov_imm(R4, 0));
    p.push(call(CALL_MAP_UPDATE));
    let inserted = p.len();
    p.push(jeq_imm(R0, 0, 0));
    // The map is full: count the count that was lost.
    p.push(st32(FP, -28, 0));
    ld_map(&mut p, R1, drops.as_raw_fd());
    p.push(mov(R2, FP));
    p.push(add_imm(R2, -28));
    p.push(call(CALL_MAP_LOOKUP));
    let no_slot = p.len();
    p.push(jeq_imm(R0, 0, 0));
    p.push(mov_imm(R1, 1));
    p.push(atomic_add64(R0, 0, R1));
    let out = epilogue(&mut p);
    patch(
        &mut p,
        &[
            (miss, miss_at),
            (done, out),
            (no_proc, out),
            (not_counting, out),
            (inserted, out),
            (no_slot, out),
        ],
    );
    p
}

/// A perf-event program on a CPU's cpu-clock sampling event: keep (1) the sample when the
/// interrupted task belongs to a process in `procs` that counts, else drop it (0).
///
/// Why the clock observes CPUs rather than the recorded threads: a per-thread cpu-clock
/// event is a timer that the kernel stops at every switch-out of the thread and starts
/// again at its switch-in. Where programming a timer is slow (a virtual machine without a
/// PMU, where a timer write traps to the hypervisor), that was most of what recording cost
/// a server that blocks often: a pipe ping-pong against an unrecorded peer took 30.4 µs per
/// round trip recorded at 999 Hz, 7.9 µs with no clock, 3.1 µs bare (`perf record -F 999`
/// pays the same; `scripts/bench-switch.sh`, `peer`). A CPU's timer runs whoever is on the
/// CPU, and this filter keeps what is ours: 10.2 µs per round trip (4.2 bare, that run).
fn sample_filter_prog(procs: &OwnedFd) -> Vec<u64> {
    let mut p = Vec::new();
    let [no_proc, not_counting] = unless_current_process_is(&mut p, procs, COUNTING);
    p.push(mov_imm(R0, 1));
    p.push(exit());
    let drop = p.len();
    p.push(mov_imm(R0, 0));
    p.push(exit());
    patch(&mut p, &[(no_proc, drop), (not_counting, drop)]);
    p
}

/// `sched:sched_process_fork`, in the parent: the child inherits the parent's state.
fn fork_prog(procs: &OwnedFd, child_pid_off: i16) -> Vec<u64> {
    let mut p = vec![mov(R6, R1)];
    lookup_current_process(&mut p, procs);
    let no_proc = p.len();
    p.push(jeq_imm(R0, 0, 0));
    p.push(ldx32(R1, R0, 0));
    p.push(stx32(FP, -8, R1));
    p.push(ldx32(R1, R6, child_pid_off));
    p.push(stx32(FP, -12, R1));
    ld_map(&mut p, R1, procs.as_raw_fd());
    p.push(mov(R2, FP));
    p.push(add_imm(R2, -12));
    p.push(mov(R3, FP));
    p.push(add_imm(R3, -8));
    p.push(mov_imm(R4, 0));
    p.push(call(CALL_MAP_UPDATE));
    let out = epilogue(&mut p);
    patch(&mut p, &[(no_proc, out)]);
    p
}

/// `sched:sched_process_exec`: an armed process starts counting.
fn exec_prog(procs: &OwnedFd) -> Vec<u64> {
    let mut p = Vec::new();
    let [no_proc, not_armed] = unless_current_process_is(&mut p, procs, ARMED);
    p.push(st32(R0, 0, COUNTING as i32));
    let out = epilogue(&mut p);
    patch(&mut p, &[(no_proc, out), (not_armed, out)]);
    p
}

#[cfg(test)]
mod tests {
    use super::asm::*;

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r0 = 1; exit  ==  b7 00 00 00 01 00 00 00 / 95 00 ...
        assert_eq!(mov_imm(R0, 1).to_le_bytes(), [0xb7, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(exit().to_le_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        // *(u32 *)(r10 - 4) = r1  ==  63 1a fc ff 00 00 00 00
        assert_eq!(
            stx32(FP, -4, R1).to_le_bytes(),
            [0x63, 0x1a, 0xfc, 0xff, 0, 0, 0, 0]
        );
        let mut p = Vec::new();
        ld_map(&mut p, R1, 7);
        assert_eq!(p[0].to_le_bytes(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn field_offsets_are_read_from_the_format() {
        let format = "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n";
        assert_eq!(super::parse_field_offset(format, " pid;"), Some(24));
        assert_eq!(super::parse_field_offset(format, " child_pid;"), None);
        assert_eq!(
            super::parse_field_offset("field:pid_t pid; offset:x;", " pid;"),
            None
        );
    }

    #[test]
    fn jumps_are_patched_relative_to_the_next_instruction() {
        let mut p = vec![jeq_imm(R0, 0, 0), mov_imm(R0, 0), mov_imm(R0, 1), exit()];
        patch(&mut p, &[(0, 2)]);
        assert_eq!(p[0] >> 16 & 0xffff, 1);
    }

    /// End of an attached window (root only): threads already counting go on being counted
    /// until the counter stops, and a thread born after it is not counted at all (so none
    /// can be counted and never seen by the perf events, which are disabled next).
    #[test]
    fn after_the_window_ends_no_new_thread_is_counted() {
        if crate::sys::euid() != 0 {
            eprintln!("*** SKIPPED after_the_window_ends_no_new_thread_is_counted: needs root ***");
            return;
        }
        let mut c = match super::SyscallCounter::counting(&[std::process::id()]) {
            Ok(c) => c,
            Err(e) if std::env::var("IOTRACE_REQUIRE_PERF").as_deref() == Ok("1") => {
                panic!("BPF programs rejected: {e}")
            }
            Err(e) => return eprintln!("*** SKIPPED: BPF not available here: {e} ***"),
        };
        c.sys_enter.1 = Some(
            crate::sys::bpf_raw_tracepoint_open("sys_enter", &c.sys_enter.0)
                .expect("attach sys_enter"),
        );
        let getppid = |n: u32| {
            for _ in 0..n {
                std::hint::black_box(std::os::unix::process::parent_id());
            }
            crate::sys::gettid() as u32
        };
        let nr = libc::SYS_getppid as u16;
        let before = std::thread::spawn(move || {
            let tid = getppid(10);
            // Until the window ends.
            std::thread::sleep(std::time::Duration::from_millis(300));
            getppid(10);
            tid
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        c.end_window();
        let after = std::thread::spawn(move || getppid(10))
            .join()
            .expect("thread");
        let before = before.join().expect("thread");
        c.stop();
        let counts = c.counts().expect("counts");
        let of = |tid: u32| {
            counts
                .iter()
                .filter(|&&(t, n, _)| t == tid && n == nr)
                .map(|e| e.2)
                .sum::<u64>()
        };
        assert_eq!(of(before), 20, "a thread counting before the end goes on");
        assert_eq!(of(after), 0, "a thread born after the end is not counted");
    }

    /// Loads the real programs into this kernel (root only): the verifier accepts them.
    #[test]
    fn the_kernel_verifier_accepts_the_programs() {
        if crate::sys::euid() != 0 {
            eprintln!("*** SKIPPED the_kernel_verifier_accepts_the_programs: needs root ***");
            return;
        }
        match super::SyscallCounter::new(std::process::id()) {
            Ok(c) => {
                assert!(c.counts().unwrap().is_empty());
                c.sample_filter().expect("the sample filter is accepted");
            }
            Err(e) if std::env::var("IOTRACE_REQUIRE_PERF").as_deref() == Ok("1") => {
                panic!("BPF programs rejected: {e}")
            }
            Err(e) => eprintln!("*** SKIPPED: BPF not available here: {e} ***"),
        }
    }
}
