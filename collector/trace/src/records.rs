//! The records a trace file holds, one Rust type per record kind.
//!
//! Each record is encoded with postcard inside a frame (see `FORMAT.md`). Times are
//! CLOCK_MONOTONIC nanoseconds; threads are kernel tids.

use serde::{Deserialize, Serialize};

/// Record kinds: the byte after the frame's checksum. Never renumber; add new kinds at the end.
pub mod kind {
    pub const HEADER: u8 = 1;
    pub const CAPABILITIES: u8 = 2;
    pub const COMM: u8 = 3;
    pub const FORK: u8 = 4;
    pub const EXIT: u8 = 5;
    pub const SWITCHES: u8 = 6;
    pub const THREAD_COUNTS: u8 = 7;
    pub const PROC_SAMPLE: u8 = 8;
    pub const LOST: u8 = 9;
    pub const TOTALS: u8 = 10;
    pub const END: u8 = 11;
    pub const SPANS: u8 = 12;
    pub const SPAN_STATS: u8 = 13;
    pub const SAMPLING: u8 = 14;
    pub const MMAP: u8 = 15;
    pub const STACK_DEFS: u8 = 16;
    pub const SAMPLES: u8 = 17;
    pub const ATTACH: u8 = 18;
    pub const WAKEUPS: u8 = 19;
}

/// First record of every trace: what was run, when and by which iotrace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub iotrace_version: String,
    pub command: Vec<String>,
    pub pid: u32,
    /// CLOCK_MONOTONIC when the child was released to exec.
    pub start_ns: u64,
    /// Wall-clock time of the start, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    pub hostname: String,
    pub cpus: u32,
}

/// What the recorder could and could not measure, in words a user can act on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// perf events were opened on the child (switch records, page faults).
    pub perf: bool,
    /// Kernel-side counting worked (include_kernel accepted).
    pub kernel: bool,
    /// Exact syscall counts from the raw_syscalls:sys_enter tracepoint.
    pub syscalls: bool,
    /// The span socket was offered to the child.
    pub spans: bool,
    /// One sentence per missing capability: what is missing and how to get it.
    pub missing: Vec<String>,
}

/// A thread got a name, or a process exec'd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comm {
    pub pid: u32,
    pub tid: u32,
    pub time_ns: u64,
    pub name: String,
    pub exec: bool,
}

/// A thread or process was created (`pid == tid` for a new process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fork {
    pub pid: u32,
    pub ppid: u32,
    pub tid: u32,
    pub ptid: u32,
    pub time_ns: u64,
}

/// A thread exited (`pid == tid` for a process's last thread).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    pub pid: u32,
    pub tid: u32,
    pub time_ns: u64,
}

/// Context switches seen on one CPU, in the order that CPU saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Switches {
    pub cpu: u32,
    /// Time of the first switch; each [`Switch::delta_ns`] is relative to the one before.
    pub base_ns: u64,
    pub switches: Vec<Switch>,
}

/// One switch-in or switch-out of a thread of the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    pub delta_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// Bit 0: switch-out (else switch-in). Bit 1: preempted (involuntary).
    pub flags: u8,
    /// For a switch-out: the syscall the thread last entered on this CPU (`u16::MAX` = none).
    pub syscall: u16,
}

impl Switch {
    pub const OUT: u8 = 1;
    pub const PREEMPT: u8 = 2;
    pub const NO_SYSCALL: u16 = u16::MAX;

    pub fn is_out(&self) -> bool {
        self.flags & Self::OUT != 0
    }
    pub fn is_preempt(&self) -> bool {
        self.flags & Self::PREEMPT != 0
    }
}

/// Wakeups seen on one CPU (`sched:sched_waking`), in that CPU's order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Wakeups {
    pub cpu: u32,
    /// Time of the first wakeup; each [`Wakeup::delta_ns`] is relative to the one before.
    pub base_ns: u64,
    pub wakeups: Vec<Wakeup>,
}

/// One thread woke another: the kernel's `try_to_wake_up` found `wakee_tid` sleeping and made
/// it runnable. Recorded when the waker's process or the wakee is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wakeup {
    pub delta_ns: u64,
    /// The thread that ran the wakeup (current on the CPU): its process and thread id; 0/0
    /// for the idle task.
    pub waker_pid: u32,
    pub waker_tid: u32,
    /// The thread woken (the tracepoint's `pid` field).
    pub wakee_tid: u32,
    /// Bit 0 ([`Wakeup::HARDIRQ`]): the wakeup ran in a hard interrupt; bit 1
    /// ([`Wakeup::SOFTIRQ`]): in a softirq (the network stack, a timer's softirq). Then the
    /// waker is the interrupt, and `waker_tid` is only the thread it interrupted.
    pub flags: u8,
}

impl Wakeup {
    pub const HARDIRQ: u8 = 1;
    pub const SOFTIRQ: u8 = 2;

    /// Whether an interrupt (hard or soft) ran the wakeup, rather than the waker thread.
    pub fn by_interrupt(&self) -> bool {
        self.flags & (Self::HARDIRQ | Self::SOFTIRQ) != 0
    }
}

/// Exact per-thread counts accumulated since the previous `ThreadCounts` record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadCounts {
    pub time_ns: u64,
    /// `(tid, syscall number, count)`.
    pub syscalls: Vec<(u32, u16, u64)>,
    /// `(tid, page faults)`.
    pub page_faults: Vec<(u32, u64)>,
}

/// A look at /proc: memory and per-thread kernel counters at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    pub time_ns: u64,
    pub processes: Vec<ProcProcess>,
    pub threads: Vec<ProcThread>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcProcess {
    pub pid: u32,
    pub rss_bytes: u64,
    /// VmHWM: the process's peak RSS so far.
    pub hwm_bytes: u64,
    pub threads: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcThread {
    pub pid: u32,
    pub tid: u32,
    pub name: String,
    pub voluntary: u64,
    pub involuntary: u64,
    pub utime_ns: u64,
    pub stime_ns: u64,
    pub minflt: u64,
    pub majflt: u64,
}

/// perf lost this many records on this CPU's ring (PERF_RECORD_LOST).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lost {
    pub cpu: u32,
    pub time_ns: u64,
    pub records: u64,
}

/// Whole-run kernel counters, as `perf stat` counts them (inherited counting events).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub task_clock_ns: Option<u64>,
    pub context_switches: Option<u64>,
    pub cpu_migrations: Option<u64>,
    pub page_faults: Option<u64>,
    pub syscalls: Option<u64>,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// The recording attached to running processes (`record -p`) and detached from them,
    /// leaving them running (or they exited on their own: their status is their parent's to
    /// read, not iotrace's).
    Detached,
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
            ExitStatus::Detached => 0,
        }
    }
}

/// Resource usage of the child and the descendants it waited for, from wait4(2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rusage {
    pub utime_ns: u64,
    pub stime_ns: u64,
    pub max_rss_bytes: u64,
    pub minflt: u64,
    pub majflt: u64,
    pub voluntary: u64,
    pub involuntary: u64,
}

/// Last record of a complete trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct End {
    pub time_ns: u64,
    pub exit: ExitStatus,
    pub rusage: Rusage,
    /// Signal iotrace forwarded to the child (Ctrl-C, SIGTERM), if any.
    pub forwarded_signal: Option<i32>,
    /// Span intake summary (zero when the program sent no spans).
    pub peak_threads: u32,
}

/// Span-intake counters at the end of the recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanStats {
    pub clients: u64,
    pub events: u64,
    /// Events the program's layer dropped because the recorder could not keep up.
    pub dropped: u64,
    pub bad_clients: u64,
    pub warnings: Vec<String>,
}

/// How stacks were sampled: written once, after `Capabilities`, when stack sampling is on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// On-CPU samples per second of CPU time (cpu-clock); 0 when on-CPU sampling is off.
    pub frequency_hz: u64,
    /// A stack is taken at every voluntary switch-out (off-CPU samples).
    pub off_cpu: bool,
    /// Callchains include kernel frames.
    pub kernel_stacks: bool,
    /// `/proc/sys/kernel/random/boot_id` of the recording machine: kernel addresses can be
    /// symbolized from `/proc/kallsyms` only on the same boot of the same machine.
    pub boot_id: String,
    /// `uname -r` of the recording machine.
    pub kernel_release: String,
}

/// An executable mapping of a process (PERF_RECORD_MMAP2), kept so that user addresses can
/// be symbolized after the process has exited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mmap {
    pub pid: u32,
    pub tid: u32,
    pub time_ns: u64,
    /// Start address and length of the mapping.
    pub addr: u64,
    pub len: u64,
    /// File offset mapped at `addr`.
    pub pgoff: u64,
    /// Inode of the file (0 when the kernel sent a build id instead).
    pub ino: u64,
    /// GNU build id of the file, when the kernel sent one (else empty).
    pub build_id: Vec<u8>,
    /// Path of the file, or a pseudo name such as `[vdso]` or `//anon`.
    pub filename: String,
}

/// New nodes of the stack tree. Nodes are numbered 1, 2, 3… in file order across all
/// `StackDefs` records; a stack is named by its innermost node and read by following parents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackDefs {
    pub nodes: Vec<StackNode>,
}

/// One node of the stack tree: a frame under its caller's node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackNode {
    /// The caller's node; 0 for a process root, whose `addr` is then the pid.
    pub parent: u32,
    /// Instruction address: the sampled address for the innermost frame of the kernel part
    /// and of the user part, return addresses for the frames above them.
    pub addr: u64,
}

/// Why a user stack unwound from CFI (`record --call-graph dwarf`) stopped short. The outermost
/// frame of such a stack is then a marker, [`UnwindStop::addr`]: an address in the top page of
/// the address space, where no code lives, so that every lost frame is counted by its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnwindStop {
    /// The stack copy ended before the outermost frame (`--stack-copy` is too small).
    Truncated = 1,
    /// The code's file has no call frame information (`.eh_frame` / `.debug_frame`).
    NoUnwindInfo = 2,
    /// The address is in no mapped file: JIT-compiled or anonymous code.
    NotMapped = 3,
    /// The unwind information or the stack made no sense (a corrupt stack, a bad rule).
    Failed = 4,
}

impl UnwindStop {
    /// Marker addresses are `BASE + reason`.
    pub const BASE: u64 = 0xffff_ffff_ffff_e000;

    pub fn addr(self) -> u64 {
        Self::BASE + self as u64
    }

    pub fn from_addr(addr: u64) -> Option<Self> {
        Some(match addr.checked_sub(Self::BASE)? {
            1 => UnwindStop::Truncated,
            2 => UnwindStop::NoUnwindInfo,
            3 => UnwindStop::NotMapped,
            4 => UnwindStop::Failed,
            _ => return None,
        })
    }

    /// The reason as reports print it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnwindStop::Truncated => "unwind stopped: stack copy too small",
            UnwindStop::NoUnwindInfo => "unwind stopped: no unwind info",
            UnwindStop::NotMapped => "unwind stopped: JIT or unmapped code",
            UnwindStop::Failed => "unwind stopped: unwinding failed",
        }
    }
}

/// Stack samples taken on one CPU, in that CPU's order, with delta-encoded times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    pub cpu: u32,
    /// Time of the first sample; each [`StackSample::delta_ns`] is relative to the one before.
    pub base_ns: u64,
    pub samples: Vec<StackSample>,
}

/// One stack sample of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSample {
    pub delta_ns: u64,
    pub tid: u32,
    /// Innermost node of the stack (see [`StackDefs`]).
    pub stack: u32,
    /// `None`: an on-CPU (cpu-clock) sample. `Some(nr)`: the thread switched out voluntarily
    /// here, in syscall `nr` (`u16::MAX` = unknown), and is off CPU until its next switch-in.
    pub off_cpu: Option<u16>,
}

/// The recording attached to running processes (`record -p`) rather than launching one: it
/// saw them from `time_ns` (the header's start) until the `End`. Right after the header's
/// records; the names and mappings the processes had then follow as `Comm` and `Mmap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attach {
    pub pids: Vec<u32>,
    pub time_ns: u64,
    /// Threads the events were opened on (those created later inherit them).
    pub threads: u32,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Header(Header),
    Capabilities(Capabilities),
    Comm(Comm),
    Fork(Fork),
    Exit(Exit),
    Switches(Switches),
    ThreadCounts(ThreadCounts),
    ProcSample(ProcSample),
    Lost(Lost),
    Totals(Totals),
    End(End),
    /// Span events of one thread of the program, from its iotrace layer.
    Spans(iotrace_wire::SpanBatch),
    SpanStats(SpanStats),
    Sampling(Sampling),
    Mmap(Mmap),
    StackDefs(StackDefs),
    Samples(Samples),
    Attach(Attach),
    Wakeups(Wakeups),
    /// A kind this reader does not know (written by a newer iotrace); skipped.
    Unknown(u8),
}
