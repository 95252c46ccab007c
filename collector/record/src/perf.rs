//! perf events on the child: one ring buffer per CPU carrying context-switch, comm, fork, exit
//! and mmap records, one sample per page fault, on-CPU stack samples (cpu-clock) and a stack at
//! every switch-out, plus inherited counting events whose totals are what `perf stat` reports.
//! Who woke whom comes from `sched:sched_waking` events on the recorded threads (the wakeups
//! they perform).
//! Syscalls are counted in the kernel (`syscount`), or with one sample per syscall entry where
//! that cannot be had or with `--syscall-samples`. The rings' records are put in time order
//! (`merge`) and parsed here into trace records; callchains are interned into the trace's
//! stack tree by the `callchain` submodule.
//!
//! The layout follows what the kernel allows (see docs/DESIGN.md): sampling with `inherit`
//! needs one event per CPU with `pid = child`; events start disabled and are enabled by the
//! child's exec.

mod callchain;
#[doc(hidden)]
pub mod fuzz;
mod kallsyms;
mod merge;
mod syscount;
pub mod unwind;
mod wakeups;

use rustc_hash::FxHashMap as HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use perf_event::events::{Software, Tracepoint};
use perf_event::{Builder, Clock, Counter, SampleFlag, Sampler};

use crate::sys;
use callchain::{SampleBatch, StackInterner};
use iotrace_trace::{
    Comm, Exit, Fork, Lost, Mmap, Record, Sampling, Switch, Switches, ThreadCounts, Totals, Wakeup,
    Wakeups,
};
pub use unwind::CallGraph;
use unwind::Unwinding;
use wakeups::{open_wakeups, parse_wakeup, wakeup_event, WakeupEvents};

const RECORD_LOST: u32 = 2;
const RECORD_COMM: u32 = 3;
const RECORD_EXIT: u32 = 4;
const RECORD_FORK: u32 = 7;
const RECORD_SAMPLE: u32 = 9;
const RECORD_MMAP2: u32 = 10;
const RECORD_SWITCH: u32 = 14;
const MISC_SWITCH_OUT: u16 = 1 << 13;
const MISC_SWITCH_OUT_PREEMPT: u16 = 1 << 14;
const MISC_COMM_EXEC: u16 = 1 << 13;
const MISC_MMAP_BUILD_ID: u16 = 1 << 14;
/// The sample_id trailer of non-sample records: pid/tid, time, cpu, identifier.
const SAMPLE_ID_LEN: usize = 32;

/// Where tracefs is normally mounted.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Why perf could not be used, said so that a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    // The OS errors are part of the messages and deliberately not sources (a field named
    // `source` would be one): error chains (anyhow's `{:#}`) would print them twice.
    #[error("perf events are not permitted ({error}); run as root, or lower kernel.perf_event_paranoid (sysctl -w kernel.perf_event_paranoid=1), or grant CAP_PERFMON")]
    Denied { error: io::Error },
    #[error("perf events could not be opened: {0}")]
    Open(io::Error),
}

/// Options for [`PerfSession::open`].
#[derive(Debug, Clone)]
pub struct PerfOptions {
    /// Bytes of ring buffer per CPU (a power of two).
    pub ring_bytes: usize,
    /// On-CPU stack samples per second of CPU time (cpu-clock); 0 turns them off.
    pub frequency_hz: u64,
    /// Take a stack at every voluntary switch-out (off-CPU samples).
    pub off_cpu_stacks: bool,
    /// Count syscalls with a perf sample per syscall, as before the in-kernel counter: costs
    /// the program a ring write per syscall, but names each switch-out's syscall from the
    /// last syscall entry rather than from its kernel stack.
    pub syscall_samples: bool,
    /// How user stacks are walked (frame pointers, with or without CFI for the leaf frames,
    /// or CFI for the whole stack).
    pub call_graph: CallGraph,
    /// Record who woke whom (`sched:sched_waking`: the wakeups that recorded threads perform):
    /// a ring write per wakeup.
    pub wakeups: bool,
}

/// The default on-CPU sampling frequency: not a multiple of common timer rates, so samples
/// do not beat with periodic work.
pub const DEFAULT_FREQUENCY_HZ: u64 = 999;

impl Default for PerfOptions {
    fn default() -> Self {
        PerfOptions {
            ring_bytes: 8 << 20,
            frequency_hz: DEFAULT_FREQUENCY_HZ,
            off_cpu_stacks: true,
            syscall_samples: false,
            call_graph: CallGraph::FpCfi {
                copy: CallGraph::LEAF_COPY,
            },
            wakeups: true,
        }
    }
}

impl PerfOptions {
    fn stacks(&self) -> bool {
        self.frequency_hz > 0 || self.off_cpu_stacks
    }
}

struct Ring {
    cpu: u32,
    sampler: Sampler,
    batches: CpuBatches,
    /// Events redirected into this ring; kept open for their lifetime.
    _followers: Vec<Counter>,
}

/// Counting events over the whole child tree (cpu = any, inherit): one of each per thread
/// they were opened on (the child; or each thread of an attached process), summed.
#[derive(Default)]
struct Counters {
    task_clock: Vec<Counter>,
    context_switches: Vec<Counter>,
    cpu_migrations: Vec<Counter>,
    page_faults: Vec<Counter>,
    syscalls: Vec<Counter>,
}

impl Counters {
    /// Open one of each on `pid` (those that open; the syscall tracepoint counter when `tp`).
    fn open(&mut self, pid: libc::pid_t, kernel: bool, start: Start, tp: Option<u64>) {
        let count = |mut b: Builder<'_>| {
            base(&mut b, pid, kernel, start);
            b.any_cpu().build().ok()
        };
        let kinds = [
            (&mut self.task_clock, Software::TASK_CLOCK),
            (&mut self.context_switches, Software::CONTEXT_SWITCHES),
            (&mut self.cpu_migrations, Software::CPU_MIGRATIONS),
            (&mut self.page_faults, Software::PAGE_FAULTS),
        ];
        for (list, ev) in kinds {
            list.extend(count(Builder::new(ev)));
        }
        if let Some(tp) = tp {
            self.syscalls
                .extend(count(Builder::new(Tracepoint::with_id(tp))));
        }
    }
}

/// What [`PerfSession::add_thread`] opens on each further thread of an attached process.
struct AttachConfig {
    opts: PerfOptions,
    /// The `raw_syscalls:sys_enter` id, when syscalls are counted by a sample per syscall.
    syscall_tp: Option<u64>,
}

/// The in-kernel syscall counter and the tracepoint events its programs hang on.
struct BpfSyscalls {
    counter: syscount::SyscallCounter,
    events: Vec<Counter>,
}

impl Drop for BpfSyscalls {
    /// Closing a tracepoint event waits for an RCU grace period (tens of ms here): close
    /// them at once rather than one after another.
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for event in self.events.drain(..) {
                s.spawn(move || drop(event));
            }
        });
    }
}

impl BpfSyscalls {
    /// Load the counter for the held child `pid` and attach its programs to tracepoint
    /// events of their own: disabled, and never inherited. (An inherited copy of an event
    /// shares its program, and when the copy is freed at a thread's exit the kernel takes the
    /// program off the tracepoint: counting stopped at the first thread exit.)
    ///
    /// The events observe the calling thread, not the child: an event that is not inherited
    /// in the child's perf context keeps its children's contexts from being clones of it, and
    /// the kernel can then no longer swap two recorded tasks' contexts at a switch between
    /// them (docs/DESIGN.md). The caller is the thread that runs the recording to its end
    /// (`record::record`), so the programs stay on for all of it.
    fn open(pid: libc::pid_t) -> io::Result<Self> {
        let counter = syscount::SyscallCounter::new(pid as u32)?;
        Self::hang(counter, sys::gettid())
    }

    /// Load the counter for the running processes `tgids`, counting from now (they will not
    /// exec). The programs hang on events observing this recorder's own main thread, which
    /// lives for the whole recording: the programs run for every task hitting the
    /// tracepoint whatever task their event observes, and an attached process's main thread
    /// may exit before its other threads (which would take the programs off).
    fn open_attached(tgids: &[u32]) -> io::Result<Self> {
        let counter = syscount::SyscallCounter::counting(tgids)?;
        Self::hang(counter, sys::gettid())
    }

    fn hang(mut counter: syscount::SyscallCounter, pid: libc::pid_t) -> io::Result<Self> {
        let event = |group: &str, name: &str| {
            let mut b = Builder::new(Tracepoint::with_id(tracepoint_id(group, name)?));
            b.observe_pid(pid)
                .any_cpu()
                .inherit(false)
                .enabled(false)
                .exclude_kernel(false);
            b.build()
        };
        let events = vec![
            event("sched", "sched_process_fork")?,
            event("sched", "sched_process_exec")?,
        ];
        counter.attach([&events[0], &events[1]])?;
        Ok(BpfSyscalls { counter, events })
    }
}

/// The perf events of one recording.
pub struct PerfSession {
    /// Set when recording running processes (see [`PerfSession::attach`]).
    attach: Option<AttachConfig>,
    rings: Vec<Ring>,
    /// Per ring: records read and not yet processed (see `merge`).
    pending: Vec<merge::Pending>,
    counters: Counters,
    /// Sample identifiers of the per-CPU syscall and page-fault events (one per CPU each).
    syscall_ids: Vec<u64>,
    /// The in-kernel syscall counter, when it replaces the per-syscall samples.
    counted: Option<BpfSyscalls>,
    /// Names the syscall of a switch-out from its kernel stack (with `counted`).
    kallsyms: Option<kallsyms::Lazy>,
    /// Whether switch-out stacks are wanted (the switch event may be open only to name
    /// syscalls).
    off_cpu_stacks: bool,
    fault_ids: Vec<u64>,
    /// Sample identifiers of the per-CPU cpu-clock and switch-out stack events.
    clock_ids: Vec<u64>,
    /// The cpu-clock events observe whole CPUs (filtered to the recorded processes in the
    /// kernel): a thread added later needs none of its own.
    clock_per_cpu: bool,
    switch_ids: Vec<u64>,
    /// The CPU-wide `sched:sched_waking` events and their filter, when wakeups are recorded.
    wakeups: Option<WakeupEvents>,
    stacks: StackInterner,
    chain_buf: Vec<u64>,
    /// The CFI unwinder of user stacks, unless the call graph is frame pointers only.
    unwind: Option<Unwinding>,
    sampling: Option<Sampling>,
    /// The kernel accepted include_kernel (exact switch and syscall counting).
    pub kernel: bool,
    /// One sentence per capability that could not be had.
    pub missing: Vec<String>,
    /// One sentence per capability had in a lesser way (it works, at a cost or partly).
    pub notes: Vec<String>,
    /// Per-drain accumulation.
    syscalls: HashMap<(u32, u16), u64>,
    faults: HashMap<u32, u64>,
    last_syscall: HashMap<u32, u16>,
    pub lost_records: u64,
    /// Syscalls the in-kernel counter could not count (its map was full).
    pub syscalls_dropped: u64,
}

/// Id of a tracepoint, read from tracefs (mounting it if absent and we may).
pub fn tracepoint_id(group: &str, name: &str) -> io::Result<u64> {
    let path = format!("{TRACEFS}/events/{group}/{name}/id");
    if !Path::new(&format!("{TRACEFS}/events")).exists() {
        mount_tracefs();
    }
    let text = std::fs::read_to_string(&path)?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: not a number")))
}

fn mount_tracefs() {
    // Only root can; failure is reported by the caller as a missing capability.
    let _ = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .stderr(std::process::Stdio::null())
        .status();
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// When the events start counting: at the held child's exec (a launched command), or as soon
/// as they are opened (threads of a running process, which will not exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    OnExec,
    Now,
}

fn base(builder: &mut Builder<'_>, pid: libc::pid_t, kernel: bool, start: Start) {
    builder
        .observe_pid(pid)
        .inherit(true)
        .enabled(start == Start::Now)
        .enable_on_exec(start == Start::OnExec)
        .clockid(Clock::MONOTONIC)
        .exclude_kernel(!kernel)
        .exclude_hv(true);
}

fn sampled_base(
    builder: &mut Builder<'_>,
    pid: libc::pid_t,
    cpu: usize,
    kernel: bool,
    start: Start,
) {
    base(builder, pid, kernel, start);
    builder
        .one_cpu(cpu)
        .sample_id_all(true)
        .sample(SampleFlag::IDENTIFIER | SampleFlag::TID | SampleFlag::TIME | SampleFlag::CPU);
}

/// A stack sampling event (cpu-clock or switch-out) on `cpu` for `pid`: the kernel's
/// callchain, and with a CFI call graph the user registers and a copy of the top of the user
/// stack (`user`: whether user stacks are wanted at all).
fn stack_builder(
    ev: Software,
    pid: libc::pid_t,
    cpu: usize,
    kernel: bool,
    start: Start,
    opts: &PerfOptions,
    user: bool,
) -> Builder<'static> {
    let mut b = Builder::new(ev);
    sampled_base(&mut b, pid, cpu, kernel, start);
    b.sample(SampleFlag::CALLCHAIN)
        .exclude_callchain_kernel(!kernel);
    let copy = opts.call_graph.copy_bytes(ev == Software::CPU_CLOCK);
    if user && copy > 0 {
        b.sample(SampleFlag::REGS_USER | SampleFlag::STACK_USER)
            .sample_regs_user(unwind::REGS_MASK)
            .sample_stack_user(copy);
    }
    let dwarf = matches!(opts.call_graph, CallGraph::Dwarf { .. });
    b.exclude_callchain_user(!user || dwarf);
    b
}

/// A CPU's leader for `pid`: a dummy event carrying the switch, comm, task and (with stacks)
/// mmap records, launched or attached alike.
fn leader_builder(
    pid: libc::pid_t,
    cpu: usize,
    kernel: bool,
    start: Start,
    opts: &PerfOptions,
) -> Builder<'static> {
    let mut b = Builder::new(Software::DUMMY);
    sampled_base(&mut b, pid, cpu, kernel, start);
    b.context_switch(true)
        .task(true)
        .comm(true)
        .comm_exec(true)
        .mmap(opts.stacks())
        .mmap2(opts.stacks());
    b
}

impl PerfSession {
    /// Open every event on the held child `pid`. Fails only if no perf event at all can be
    /// opened; partial failures are listed in [`PerfSession::missing`].
    pub fn open(pid: libc::pid_t, opts: &PerfOptions) -> Result<Self, PerfError> {
        Self::open_on(pid, Start::OnExec, &[], opts)
    }

    /// Open every event on the running processes `tgids`: on each of their threads (per CPU,
    /// inherited, so that threads and children created later are followed too), counting at
    /// once. Threads created while the events are being opened are found by scanning
    /// `/proc/PID/task` again until a scan finds none that is not covered (see
    /// [`PerfSession::follow_new_threads`]). Returns the session and the threads it opened on.
    pub fn attach(tgids: &[u32], opts: &PerfOptions) -> Result<(Self, Vec<u32>), PerfError> {
        let mut tids: Vec<u32> = Vec::new();
        for &tgid in tgids {
            tids.extend(crate::attach::threads(tgid));
        }
        let Some(&first) = tids.first() else {
            return Err(PerfError::Open(io::Error::from_raw_os_error(libc::ESRCH)));
        };
        let mut session = Self::open_on(first as libc::pid_t, Start::Now, tgids, opts)?;
        let mut opened = vec![first];
        for &tid in &tids[1..] {
            if session.add_thread(tid) {
                opened.push(tid);
            }
        }
        session.follow_new_threads(tgids, &mut opened);
        Ok((session, opened))
    }

    fn open_on(
        pid: libc::pid_t,
        start: Start,
        attached: &[u32],
        opts: &PerfOptions,
    ) -> Result<Self, PerfError> {
        let mut missing = Vec::new();
        let mut notes = Vec::new();
        let cpus = sys::online_cpus();
        let mut kernel = true;

        // Leader per CPU: a dummy event that carries switch/comm/task records.
        let mut leaders = Vec::new();
        for &cpu in &cpus {
            let open = |kernel: bool| {
                let mut b = leader_builder(pid, cpu, kernel, start, opts);
                b.wakeup_watermark(opts.ring_bytes / 4);
                b.build()
            };
            let counter = match open(kernel) {
                Ok(c) => c,
                Err(e) if kernel && is_denied(&e) => {
                    kernel = false;
                    open(false).map_err(|error| PerfError::Denied { error })?
                }
                Err(e) if is_denied(&e) => return Err(PerfError::Denied { error: e }),
                Err(e) => return Err(PerfError::Open(e)),
            };
            // Unprivileged users may lock only perf_event_mlock_kb (516 KiB by default) of
            // ring buffer in all: fall back to what fits, as `perf record` does.
            let fallback = (512 << 10) / cpus.len().max(1);
            let sampler = match counter.sampled(opts.ring_bytes) {
                Ok(s) => s,
                Err(e) if is_denied(&e) && opts.ring_bytes > fallback => {
                    let counter = open(kernel).map_err(PerfError::Open)?;
                    counter
                        .sampled(fallback.next_power_of_two() / 2)
                        .map_err(|error| PerfError::Denied { error })?
                }
                Err(e) => return Err(PerfError::Open(e)),
            };
            leaders.push((cpu as u32, sampler));
        }
        if !kernel {
            let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".into());
            missing.push(format!(
                "syscall counts are missing: this user may not trace the kernel (perf_event_paranoid={paranoid}); run as root (or `sysctl kernel.perf_event_paranoid=1` and make {TRACEFS} and its events/raw_syscalls/sys_enter/id readable to this user)"
            ));
        }

        let mut rings: Vec<Ring> = leaders
            .into_iter()
            .map(|(cpu, sampler)| Ring {
                cpu,
                sampler,
                batches: CpuBatches::new(cpu),
                _followers: Vec::new(),
            })
            .collect();

        // Exact per-thread syscall counts: counted in the kernel by BPF (see `syscount`),
        // or, where that cannot be had or is not wanted, one sample per syscall entry.
        let mut syscall_ids = Vec::new();
        let mut counted: Option<BpfSyscalls> = None;
        // The tracepoint's id when syscalls are counted by a sample per syscall.
        let mut syscall_tp: Option<u64> = None;
        let tracepoint = if kernel {
            tracepoint_id("raw_syscalls", "sys_enter")
        } else {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        };
        match tracepoint {
            Err(_) if !kernel => {}
            Ok(tp) => {
                if !opts.syscall_samples {
                    let bpf = if attached.is_empty() {
                        BpfSyscalls::open(pid)
                    } else {
                        BpfSyscalls::open_attached(attached)
                    };
                    match bpf {
                        Ok(c) => counted = Some(c),
                        Err(e) => notes.push(format!(
                            "syscalls are counted by a sample per syscall (slower): the in-kernel BPF counter could not be loaded ({e})"
                        )),
                    }
                }
                // With a sample per syscall, perf's whole-run count (what `perf stat` prints)
                // checks them. (With the BPF counter it would cost a perf trace record per
                // syscall again; the programs count every syscall, and what they cannot.)
                if counted.is_none() {
                    syscall_tp = Some(tp);
                    let opened: io::Result<()> = (|| {
                        for ring in rings.iter_mut() {
                            let mut b = Builder::new(Tracepoint::with_id(tp));
                            sampled_base(&mut b, pid, ring.cpu as usize, kernel, start);
                            b.sample(SampleFlag::RAW).sample_period(1);
                            let c = b.build()?;
                            sys::perf_set_output(c.as_raw_fd(), ring.sampler.as_raw_fd())?;
                            syscall_ids.push(c.id());
                            ring._followers.push(c);
                        }
                        Ok(())
                    })();
                    if let Err(e) = opened {
                        syscall_ids.clear();
                        syscall_tp = None;
                        missing.push(format!("syscall counts are missing: the raw_syscalls:sys_enter tracepoint could not be opened ({e}); run as root"));
                    }
                }
            }
            Err(e) if is_denied(&e) => missing.push(format!(
                "syscall counts are missing: tracefs is readable only by root here ({e}); run as root, or make {TRACEFS} and its events/raw_syscalls/sys_enter/id readable to this user"
            )),
            Err(e) => missing.push(format!(
                "syscall counts are missing: tracefs is not available ({e}); as root run `mount -t tracefs nodev {TRACEFS}`"
            )),
        }
        // Without a sample per syscall, a switch-out's syscall is read off its kernel stack.
        // (With kernel.kptr_restrict hiding addresses, those syscalls are named `unknown`.)
        let kallsyms = counted.as_ref().map(|_| kallsyms::Lazy::start());

        let wakeups = if opts.wakeups {
            match open_wakeups(&mut rings, pid, kernel, start) {
                Ok(w) => Some(w),
                Err(why) => {
                    missing.push(format!("who woke whom (wakeups) is missing: {why}"));
                    None
                }
            }
        } else {
            None
        };

        // One sample per page fault, for per-thread counts.
        let mut fault_ids = Vec::new();
        for ring in rings.iter_mut() {
            let mut b = Builder::new(Software::PAGE_FAULTS);
            sampled_base(&mut b, pid, ring.cpu as usize, kernel, start);
            b.sample_period(1);
            match b.build().and_then(|c| {
                sys::perf_set_output(c.as_raw_fd(), ring.sampler.as_raw_fd()).map(|_| c)
            }) {
                Ok(c) => {
                    fault_ids.push(c.id());
                    ring._followers.push(c);
                }
                Err(e) => {
                    missing.push(format!("per-thread page faults are missing ({e})"));
                    fault_ids.clear();
                    break;
                }
            }
        }

        let StackEvents {
            clock_ids,
            clock_per_cpu,
            clock_note,
            switch_ids,
            sampling,
        } = open_stack_events(
            &mut rings,
            pid,
            kernel,
            start,
            opts,
            counted.as_ref().map(|c| &c.counter),
            &mut missing,
        );
        notes.extend(clock_note);

        let mut counters = Counters::default();
        counters.open(pid, kernel, start, syscall_tp);

        Ok(PerfSession {
            attach: (start == Start::Now).then(|| AttachConfig {
                opts: opts.clone(),
                syscall_tp,
            }),
            pending: rings.iter().map(|_| merge::Pending::default()).collect(),
            rings,
            counters,
            syscall_ids,
            counted,
            kallsyms,
            off_cpu_stacks: opts.off_cpu_stacks,
            fault_ids,
            clock_ids,
            clock_per_cpu,
            switch_ids,
            wakeups,
            stacks: StackInterner::default(),
            chain_buf: Vec::with_capacity(128),
            unwind: (opts.stacks() && opts.call_graph != CallGraph::Fp)
                .then(|| Unwinding::new(opts.call_graph)),
            sampling,
            kernel,
            missing,
            notes,
            syscalls: HashMap::default(),
            faults: HashMap::default(),
            last_syscall: HashMap::default(),
            lost_records: 0,
            syscalls_dropped: 0,
        })
    }

    /// Open this session's events on one more thread `tid` of an attached process (one of
    /// each per CPU, into that CPU's ring, and the counting events). False if the thread is
    /// gone or its events could not be opened: what did open stays (a partial thread is
    /// better than none), and the first failure is listed in `missing`.
    fn add_thread(&mut self, tid: u32) -> bool {
        let Some(cfg) = self.attach.as_ref() else {
            return false;
        };
        let (pid, kernel, start) = (tid as libc::pid_t, self.kernel, Start::Now);
        let opts = cfg.opts.clone();
        let syscall_tp = cfg.syscall_tp;
        let result = (|| -> io::Result<()> {
            for ring in self.rings.iter_mut() {
                let cpu = ring.cpu as usize;
                let mut follow = |b: Builder<'_>, ids: Option<&mut Vec<u64>>| {
                    let c = b.build()?;
                    sys::perf_set_output(c.as_raw_fd(), ring.sampler.as_raw_fd())?;
                    if let Some(ids) = ids {
                        ids.push(c.id());
                    }
                    ring._followers.push(c);
                    Ok::<_, io::Error>(())
                };
                follow(leader_builder(pid, cpu, kernel, start, &opts), None)?;
                if let Some(tp) = syscall_tp {
                    let mut b = Builder::new(Tracepoint::with_id(tp));
                    sampled_base(&mut b, pid, cpu, kernel, start);
                    b.sample(SampleFlag::RAW).sample_period(1);
                    follow(b, Some(&mut self.syscall_ids))?;
                }
                if !self.fault_ids.is_empty() {
                    let mut b = Builder::new(Software::PAGE_FAULTS);
                    sampled_base(&mut b, pid, cpu, kernel, start);
                    b.sample_period(1);
                    follow(b, Some(&mut self.fault_ids))?;
                }
                let stack = |ev, user| stack_builder(ev, pid, cpu, kernel, start, &opts, user);
                if !self.clock_ids.is_empty() && !self.clock_per_cpu {
                    let mut b = stack(Software::CPU_CLOCK, true);
                    b.sample_frequency(opts.frequency_hz);
                    follow(b, Some(&mut self.clock_ids))?;
                }
                if !self.switch_ids.is_empty() {
                    let mut b = stack(Software::CONTEXT_SWITCHES, opts.off_cpu_stacks);
                    b.sample_period(1);
                    follow(b, Some(&mut self.switch_ids))?;
                }
                if let Some(w) = self.wakeups.as_mut() {
                    let c = wakeup_event(w.tp, pid, ring, kernel, start)?;
                    w.ids.push(c.id());
                    ring._followers.push(c);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.counters.open(pid, kernel, start, syscall_tp);
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => false,
            Err(e) => {
                let line = format!(
                    "some events of thread {tid} could not be opened ({e}): it is recorded in part"
                );
                if !self.missing.contains(&line) {
                    self.missing.push(line);
                }
                false
            }
        }
    }

    /// Closes the race with threads created while the events were being opened: a thread
    /// cloned by a thread whose events were already open inherited them (and its FORK record
    /// is in a ring), one cloned before did not. Scans `/proc/PID/task` again until every
    /// thread there is either one this session opened on or one it saw forked; new ones are
    /// opened on. Records read from the rings on the way stay pending for the next drain.
    fn follow_new_threads(&mut self, tgids: &[u32], opened: &mut Vec<u32>) {
        for _ in 0..16 {
            // A FORK record is written before the new thread is woken, within microseconds
            // of it appearing in /proc: a short pause lets any that are racing land.
            std::thread::sleep(std::time::Duration::from_millis(2));
            self.read_rings();
            let forked = self.pending_forks();
            let mut new = Vec::new();
            for &tgid in tgids {
                for tid in crate::attach::threads(tgid) {
                    if !opened.contains(&tid) && !forked.contains(&tid) {
                        new.push(tid);
                    }
                }
            }
            if new.is_empty() {
                return;
            }
            for tid in new {
                // Counted as seen even when it is gone, so it is not tried again.
                self.add_thread(tid);
                opened.push(tid);
            }
        }
    }

    /// Copy what the rings hold into `pending`.
    fn read_rings(&mut self) {
        for (ring, pending) in self.rings.iter_mut().zip(self.pending.iter_mut()) {
            while let Some(record) = ring.sampler.next_record() {
                let ty = record.ty();
                let misc = record.misc();
                let data = record.to_contiguous();
                pending.push(ty, misc, record_time(ty, &data), &data);
            }
        }
    }

    /// Threads whose FORK record is pending.
    fn pending_forks(&self) -> Vec<u32> {
        let mut tids = Vec::new();
        for p in &self.pending {
            p.each(RECORD_FORK, &mut |data| tids.push(u32_at(data, 8)));
        }
        tids
    }

    /// Whether exact syscall counting is on.
    pub fn has_syscalls(&self) -> bool {
        !self.syscall_ids.is_empty() || self.counted.is_some()
    }

    /// How stacks are sampled, when they are (the trace's `Sampling` record).
    pub fn sampling(&self) -> Option<&Sampling> {
        self.sampling.as_ref()
    }

    /// The ring buffers' fds, to poll for the wakeup watermark.
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        self.rings.iter().map(|r| r.sampler.as_raw_fd()).collect()
    }

    /// Read what the rings hold and hand the resulting records to `out`, in time order
    /// across CPUs up to a watermark (see `merge`); later records wait for the next call.
    pub fn drain(&mut self, out: &mut dyn FnMut(Record) -> io::Result<()>) -> io::Result<()> {
        // Every record stamped before this instant is in its ring once every ring has been
        // read; the slack covers a record being written while its ring is read.
        let watermark = sys::monotonic_ns().saturating_sub(WATERMARK_SLACK_NS);
        self.drain_until(watermark, out)
    }

    /// End the window of a recording of running processes: disable every event (the rings
    /// then take no more records, the counting events stop) and stop the syscall counter, as
    /// close together as can be, so that what comes next — reading the counts, which takes a
    /// while with many threads, and the rings' backlog — describes one window. (A launched
    /// command has exited by then: nothing moves.)
    pub fn stop(&mut self) {
        // First, no new thread is counted: a thread born from here on is neither counted nor
        // (once the events below are off) seen, where it used to be counted and never seen
        // (attach.rs failed on that once). Threads already counting go on to the end.
        if let Some(c) = self.counted.as_ref() {
            c.counter.end_window();
        }
        for ring in self.rings.iter_mut() {
            let _ = ring.sampler.disable();
            for c in ring._followers.iter_mut() {
                let _ = c.disable();
            }
        }
        let c = &mut self.counters;
        for list in [
            &mut c.task_clock,
            &mut c.context_switches,
            &mut c.cpu_migrations,
            &mut c.page_faults,
            &mut c.syscalls,
        ] {
            for counter in list.iter_mut() {
                let _ = counter.disable();
            }
        }
        // The counter last. Stopped first, it left the perf events on for long enough that 50
        // of 1786 churn threads were cut by the window's end (attach.rs, once in CI; the
        // detach of a raw tracepoint waits for the tracepoint's users to finish, which we take
        // to be the time).
        if let Some(c) = self.counted.as_mut() {
            c.counter.stop();
        }
    }

    /// Read and process everything, however recent (the child has exited).
    pub fn drain_all(&mut self, out: &mut dyn FnMut(Record) -> io::Result<()>) -> io::Result<()> {
        self.drain_until(u64::MAX, out)
    }

    fn drain_until(
        &mut self,
        watermark: u64,
        out: &mut dyn FnMut(Record) -> io::Result<()>,
    ) -> io::Result<()> {
        // The final counts are read before the rings, counting stopped: a thread created
        // after this has records and no counts (the window's end), rather than counts and no
        // records (an unnamed thread of no process, when a running process keeps creating
        // threads while the rings' backlog is processed), or counts cut mid-read.
        let final_counts = match &mut self.counted {
            Some(c) if watermark == u64::MAX => {
                c.counter.stop();
                Some((c.counter.counts()?, c.counter.dropped()))
            }
            _ => None,
        };
        self.read_rings();
        while let Some(i) = merge::earliest(self.pending.iter(), watermark) {
            let Some(taken) = self.pending[i].pop_entry() else {
                break;
            };
            let (ty, misc, data) = self.pending[i].get(taken);
            let next = self.pending[i].peek();
            let mut st = RecordState {
                syscall_ids: &self.syscall_ids,
                fault_ids: &self.fault_ids,
                clock_ids: &self.clock_ids,
                switch_ids: &self.switch_ids,
                wakeup_ids: self.wakeups.as_ref().map_or(&[], |w| &w.ids),
                wakee_offset: self.wakeups.as_ref().map_or(0, |w| w.wakee_offset),
                stacks: &mut self.stacks,
                chain_buf: &mut self.chain_buf,
                unwind: self.unwind.as_mut(),
                syscalls: &mut self.syscalls,
                faults: &mut self.faults,
                last_syscall: &mut self.last_syscall,
                lost: &mut self.lost_records,
                counted: self.counted.as_ref(),
                kallsyms: self.kallsyms.as_mut(),
                off_cpu_stacks: self.off_cpu_stacks,
            };
            match ty {
                RECORD_SAMPLE => st.sample(&mut self.rings[i].batches, data, next),
                RECORD_SWITCH => st.switch(&mut self.rings[i].batches, misc, data),
                RECORD_COMM | RECORD_FORK | RECORD_EXIT | RECORD_LOST | RECORD_MMAP2 => {
                    // What every CPU produced before this record goes out before it.
                    for ring in self.rings.iter_mut() {
                        ring.batches.flush(st.stacks, out)?;
                    }
                    let cpu = self.rings[i].cpu;
                    other_record(&mut st, ty, misc, data, cpu, out)?;
                }
                _ => {}
            }
        }
        for ring in self.rings.iter_mut() {
            ring.batches.flush(&mut self.stacks, out)?;
        }
        for pending in self.pending.iter_mut() {
            pending.compact();
        }
        if let Some((counts, dropped)) = final_counts {
            for (tid, nr, n) in counts {
                *self.syscalls.entry((tid, nr)).or_insert(0) += n;
            }
            if dropped > 0 {
                self.syscalls_dropped += dropped;
                out(Record::Lost(Lost {
                    cpu: u32::MAX,
                    time_ns: sys::monotonic_ns(),
                    records: dropped,
                }))?;
            }
        }
        if !self.syscalls.is_empty() || !self.faults.is_empty() {
            let mut counts = ThreadCounts {
                time_ns: sys::monotonic_ns(),
                ..ThreadCounts::default()
            };
            counts.syscalls = self.syscalls.drain().map(|((t, n), c)| (t, n, c)).collect();
            counts.syscalls.sort_unstable();
            counts.page_faults = self.faults.drain().collect();
            counts.page_faults.sort_unstable();
            out(Record::ThreadCounts(counts))?;
        }
        Ok(())
    }
}

/// How far behind "now" the drain's watermark stays.
const WATERMARK_SLACK_NS: u64 = 2_000_000;

/// The time stamp of a raw record: a sample's TIME field, or the sample_id trailer's.
fn record_time(ty: u32, data: &[u8]) -> u64 {
    if ty == RECORD_SAMPLE {
        parse_sample(data).map_or(0, |s| s.time)
    } else {
        parse_sample_id(data).map_or(0, |s| s.time)
    }
}

/// One CPU's switches and samples not yet written.
struct CpuBatches {
    cpu: u32,
    switches: Switches,
    last_switch: u64,
    wakeups: Wakeups,
    last_wakeup: u64,
    samples: SampleBatch,
}

impl CpuBatches {
    fn new(cpu: u32) -> Self {
        CpuBatches {
            cpu,
            switches: Switches {
                cpu,
                ..Switches::default()
            },
            last_switch: 0,
            wakeups: Wakeups {
                cpu,
                ..Wakeups::default()
            },
            last_wakeup: 0,
            samples: SampleBatch::new(cpu),
        }
    }

    fn wakeup(&mut self, time: u64, waker_pid: u32, waker_tid: u32, wakee_tid: u32, flags: u8) {
        let batch = &mut self.wakeups;
        if batch.wakeups.is_empty() {
            batch.base_ns = time;
            self.last_wakeup = time;
        }
        batch.wakeups.push(Wakeup {
            delta_ns: time.wrapping_sub(self.last_wakeup),
            waker_pid,
            waker_tid,
            wakee_tid,
            flags,
        });
        self.last_wakeup = time;
    }

    /// Write the pending switches and wakeups, then the pending stack nodes and samples.
    fn flush(
        &mut self,
        stacks: &mut StackInterner,
        out: &mut dyn FnMut(Record) -> io::Result<()>,
    ) -> io::Result<()> {
        if !self.switches.switches.is_empty() {
            let next = Switches {
                cpu: self.cpu,
                ..Switches::default()
            };
            out(Record::Switches(std::mem::replace(
                &mut self.switches,
                next,
            )))?;
        }
        if !self.wakeups.wakeups.is_empty() {
            let next = Wakeups {
                cpu: self.cpu,
                ..Wakeups::default()
            };
            out(Record::Wakeups(std::mem::replace(&mut self.wakeups, next)))?;
        }
        flush_samples(&mut self.samples, stacks, out)
    }
}

/// What processing one record reads and updates.
struct RecordState<'a> {
    syscall_ids: &'a [u64],
    fault_ids: &'a [u64],
    clock_ids: &'a [u64],
    switch_ids: &'a [u64],
    /// The `sched:sched_waking` events' ids, and where the wakee is in their RAW payload.
    wakeup_ids: &'a [u64],
    wakee_offset: usize,
    stacks: &'a mut StackInterner,
    chain_buf: &'a mut Vec<u64>,
    unwind: Option<&'a mut Unwinding>,
    syscalls: &'a mut HashMap<(u32, u16), u64>,
    faults: &'a mut HashMap<u32, u64>,
    last_syscall: &'a mut HashMap<u32, u16>,
    lost: &'a mut u64,
    counted: Option<&'a BpfSyscalls>,
    kallsyms: Option<&'a mut kallsyms::Lazy>,
    off_cpu_stacks: bool,
}

impl RecordState<'_> {
    /// A sample record; `next` is the record after it in its ring, when already read.
    fn sample(&mut self, cpu: &mut CpuBatches, data: &[u8], next: Option<(u32, u16, &[u8])>) {
        let Some(s) = parse_sample(data) else {
            return;
        };
        if self.syscall_ids.contains(&s.id) {
            let nr = parse_raw_syscall(data).unwrap_or(u16::MAX);
            *self.syscalls.entry((s.tid, nr)).or_insert(0) += 1;
            self.last_syscall.insert(s.tid, nr);
        } else if self.fault_ids.contains(&s.id) {
            *self.faults.entry(s.tid).or_insert(0) += 1;
        } else if self.wakeup_ids.contains(&s.id) {
            if let Some((wakee, flags)) = parse_wakeup(data, self.wakee_offset) {
                cpu.wakeup(s.time, s.pid, s.tid, wakee, flags);
            }
        } else if self.clock_ids.contains(&s.id) {
            let chain = sample_chain(data, s.pid, self.chain_buf, self.unwind.as_deref_mut());
            let stack = self.stacks.intern(s.pid, chain);
            cpu.samples.push(s.time, s.tid, stack, None);
        } else if self.switch_ids.contains(&s.id) {
            // The switch record that says whether the stack is kept usually comes right after
            // it in the same ring: then a preempted switch-out's stack is dropped here, and a
            // voluntary one's user stack is unwound here, without copying its stack copy
            // (4 KiB for nginx's DWARF unwinding: that copy was 8 of the recorder's 19.5%
            // of CPU in memmove under nginx's load, `perf record -g -p RECORDER`).
            let switch = next.filter(|&(ty, misc, d)| {
                ty == RECORD_SWITCH
                    && misc & MISC_SWITCH_OUT != 0
                    && parse_sample_id(d).is_some_and(|id| id.tid == s.tid)
            });
            if let Some((_, misc, _)) = switch {
                if misc & MISC_SWITCH_OUT_PREEMPT != 0 || !self.off_cpu_stacks {
                    cpu.samples.drop_held();
                    return;
                }
                let chain = sample_chain(data, s.pid, self.chain_buf, self.unwind.as_deref_mut());
                cpu.samples.hold(s.pid, s.tid, s.time, chain, &[]);
                return;
            }
            // The user stack is unwound when the switch record says the stack is kept.
            let chain = parse_callchain(data, self.chain_buf);
            let tail = match self.unwind {
                Some(_) => sample_tail(data, chain).unwrap_or(&[]),
                None => &[],
            };
            cpu.samples.hold(s.pid, s.tid, s.time, chain, tail);
        }
    }

    fn switch(&mut self, cpu: &mut CpuBatches, misc: u16, data: &[u8]) {
        let Some(id) = parse_sample_id(data) else {
            return;
        };
        let mut flags = 0;
        let mut syscall = Switch::NO_SYSCALL;
        if misc & MISC_SWITCH_OUT != 0 {
            flags |= Switch::OUT;
            if misc & MISC_SWITCH_OUT_PREEMPT != 0 {
                flags |= Switch::PREEMPT;
            } else if let Some(k) = self.kallsyms.as_deref_mut() {
                if let Some(p) = cpu.samples.pending.as_ref().filter(|p| p.tid == id.tid) {
                    syscall = k.get().syscall_of(&p.chain).unwrap_or(Switch::NO_SYSCALL);
                }
            } else if let Some(&nr) = self.last_syscall.get(&id.tid) {
                syscall = nr;
            }
            let keep = flags & Switch::PREEMPT == 0 && self.off_cpu_stacks;
            if keep {
                let pending = cpu.samples.pending.as_mut().filter(|p| p.tid == id.tid);
                if let (Some(u), Some(p)) = (self.unwind.as_deref_mut(), pending) {
                    if !p.tail.is_empty() {
                        if let Some(chain) = u.unwind(p.pid, &p.chain, &p.tail) {
                            p.chain.clear();
                            p.chain.extend_from_slice(chain);
                        }
                    }
                }
            }
            cpu.samples.switched_out(id.tid, keep, syscall, self.stacks);
        }
        let batch = &mut cpu.switches;
        if batch.switches.is_empty() {
            batch.base_ns = id.time;
            cpu.last_switch = id.time;
        }
        batch.switches.push(Switch {
            delta_ns: id.time.wrapping_sub(cpu.last_switch),
            pid: id.pid,
            tid: id.tid,
            flags,
            syscall,
        });
        cpu.last_switch = id.time;
    }
}

/// The callchain of a stack sample: the kernel's, with its user part unwound again from CFI
/// when the sample carries user registers and a stack copy.
fn sample_chain<'b>(
    data: &[u8],
    pid: u32,
    buf: &'b mut Vec<u64>,
    unwind: Option<&'b mut Unwinding>,
) -> &'b [u64] {
    let chain = parse_callchain(data, buf);
    match (unwind, sample_tail(data, chain)) {
        (Some(u), Some(tail)) => match u.unwind(pid, chain, tail) {
            Some(c) => c,
            None => chain,
        },
        _ => chain,
    }
}

/// A stack sample's bytes after its callchain `chain`: REGS_USER, then STACK_USER.
fn sample_tail<'d>(data: &'d [u8], chain: &[u64]) -> Option<&'d [u8]> {
    data.get(SAMPLE_BODY + 8 + 8 * chain.len()..)
}

/// Write a CPU's pending stack nodes, then its samples (nodes always precede their users).
fn flush_samples(
    batch: &mut SampleBatch,
    stacks: &mut StackInterner,
    out: &mut dyn FnMut(Record) -> io::Result<()>,
) -> io::Result<()> {
    if let Some(samples) = batch.take() {
        if let Some(defs) = stacks.take_defs() {
            out(Record::StackDefs(defs))?;
        }
        out(Record::Samples(samples))?;
    }
    Ok(())
}

/// The stack events [`open_stack_events`] opened.
struct StackEvents {
    /// Sample ids of the cpu-clock events, one per CPU.
    clock_ids: Vec<u64>,
    /// The cpu-clock events observe whole CPUs, filtered in the kernel to the recorded
    /// processes (rather than following each recorded thread).
    clock_per_cpu: bool,
    /// Why the cpu-clock events follow the threads when the counter is loaded.
    clock_note: Option<String>,
    /// Sample ids of the switch-out stack events, one per CPU.
    switch_ids: Vec<u64>,
    sampling: Option<Sampling>,
}

/// Open the per-CPU stack events (cpu-clock samples and switch-out stacks) into the rings.
/// Returns their sample ids and the trace's `Sampling` record, or pushes what is missing.
///
/// With the in-kernel syscall counter loaded (`counter`), the switch-out stack also names
/// each switch-out's syscall, and the cpu-clock events observe whole CPUs with the counter's
/// process filter (see `syscount::sample_filter_prog` for why); without it they follow
/// the recorded threads, as `perf record` does.
fn open_stack_events(
    rings: &mut [Ring],
    pid: libc::pid_t,
    kernel: bool,
    start: Start,
    opts: &PerfOptions,
    counter: Option<&syscount::SyscallCounter>,
    missing: &mut Vec<String>,
) -> StackEvents {
    let name_syscalls = counter.is_some();
    let open = |ev: Software, ring: &Ring, configure: &dyn Fn(&mut Builder<'_>)| {
        let user = ev != Software::CONTEXT_SWITCHES || opts.off_cpu_stacks;
        let mut b = stack_builder(ev, pid, ring.cpu as usize, kernel, start, opts, user);
        configure(&mut b);
        let c = b.build()?;
        sys::perf_set_output(c.as_raw_fd(), ring.sampler.as_raw_fd())?;
        Ok::<_, io::Error>(c)
    };
    let open_all = |rings: &mut [Ring],
                    ev: Software,
                    configure: &dyn Fn(&mut Builder<'_>),
                    filter: Option<&OwnedFd>| {
        let mut ids = Vec::new();
        let mut counters = Vec::new();
        for ring in rings.iter() {
            let c = open(ev, ring, configure)?;
            if let Some(prog) = filter {
                sys::perf_set_bpf(c.as_raw_fd(), prog.as_raw_fd())?;
            }
            ids.push(c.id());
            counters.push(c);
        }
        for (ring, c) in rings.iter_mut().zip(counters) {
            ring._followers.push(c);
        }
        Ok::<_, io::Error>(ids)
    };
    let mut clock_ids = Vec::new();
    let mut clock_per_cpu = false;
    let mut clock_note = None;
    if opts.frequency_hz > 0 {
        let hz = opts.frequency_hz;
        // Whole CPUs, filtered, where the counter's process map can filter them.
        if let Some(counter) = counter {
            let per_cpu = |b: &mut Builder<'_>| {
                b.sample_frequency(hz)
                    .any_pid()
                    .inherit(false)
                    .enable_on_exec(false)
                    .enabled(true);
            };
            match counter
                .sample_filter()
                .and_then(|prog| open_all(rings, Software::CPU_CLOCK, &per_cpu, Some(&prog)))
            {
                Ok(ids) => {
                    clock_ids = ids;
                    clock_per_cpu = true;
                }
                Err(e) => clock_note = Some(format!(
                    "on-CPU samples follow each recorded thread, which costs it a timer restart at every switch: the CPU-wide sampling event or its process filter could not be had ({e})"
                )),
            }
        }
        if !clock_per_cpu {
            match open_all(
                rings,
                Software::CPU_CLOCK,
                &|b| {
                    b.sample_frequency(hz);
                },
                None,
            ) {
                Ok(ids) => clock_ids = ids,
                Err(e) => missing.push(format!(
                    "on-CPU stacks are missing: the cpu-clock sampling event could not be opened ({e})"
                )),
            }
        }
    }
    let mut switch_ids = Vec::new();
    // With syscalls counted in the kernel, the switch-out stack also names the syscall, so
    // it is taken (kernel half only) even when off-CPU stacks are not wanted.
    if (opts.off_cpu_stacks || name_syscalls) && kernel {
        match open_all(
            rings,
            Software::CONTEXT_SWITCHES,
            &|b| {
                b.sample_period(1);
            },
            None,
        ) {
            Ok(ids) => switch_ids = ids,
            Err(e) => missing.push(format!(
                "off-CPU stacks are missing: the context-switch sampling event could not be opened ({e})"
            )),
        }
    } else if opts.off_cpu_stacks {
        missing.push("off-CPU stacks are missing: switch-outs happen in the kernel, which this user may not trace; run as root or `sysctl kernel.perf_event_paranoid=1`".to_owned());
    }
    let off_cpu = opts.off_cpu_stacks && !switch_ids.is_empty();
    if clock_ids.is_empty() && !off_cpu {
        return StackEvents {
            clock_ids,
            clock_per_cpu,
            clock_note,
            switch_ids,
            sampling: None,
        };
    }
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let sampling = Sampling {
        frequency_hz: if clock_ids.is_empty() {
            0
        } else {
            opts.frequency_hz
        },
        off_cpu,
        kernel_stacks: kernel,
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        kernel_release: read("/proc/sys/kernel/osrelease"),
    };
    StackEvents {
        clock_ids,
        clock_per_cpu,
        clock_note,
        switch_ids,
        sampling: Some(sampling),
    }
}

/// COMM, FORK, EXIT, LOST and MMAP2 records.
fn other_record(
    st: &mut RecordState<'_>,
    ty: u32,
    misc: u16,
    data: &[u8],
    cpu: u32,
    out: &mut dyn FnMut(Record) -> io::Result<()>,
) -> io::Result<()> {
    match ty {
        RECORD_COMM => {
            if let Some(c) = parse_comm(data, misc & MISC_COMM_EXEC != 0) {
                if c.exec {
                    st.stacks.exec(c.pid);
                    if let Some(u) = st.unwind.as_deref_mut() {
                        u.forget(c.pid);
                    }
                }
                out(Record::Comm(c))?;
            }
        }
        RECORD_FORK | RECORD_EXIT => {
            if data.len() < 24 {
                return Ok(());
            }
            let pid = u32_at(data, 0);
            let ppid = u32_at(data, 4);
            let tid = u32_at(data, 8);
            let ptid = u32_at(data, 12);
            let time_ns = u64_at(data, 16);
            if let Some(u) = st.unwind.as_deref_mut() {
                if ty == RECORD_FORK && pid != ppid {
                    u.fork(ppid, pid);
                } else if ty == RECORD_EXIT && pid == tid {
                    u.forget(pid);
                }
            }
            if ty == RECORD_FORK {
                out(Record::Fork(Fork {
                    pid,
                    ppid,
                    tid,
                    ptid,
                    time_ns,
                }))?;
            } else {
                st.last_syscall.remove(&tid);
                if let Some(c) = st.counted {
                    c.counter.exited(tid);
                }
                out(Record::Exit(Exit { pid, tid, time_ns }))?;
            }
        }
        RECORD_LOST if data.len() >= 16 => {
            let records = u64_at(data, 8);
            *st.lost += records;
            let time_ns = parse_sample_id(data).map(|s| s.time).unwrap_or(0);
            out(Record::Lost(Lost {
                cpu,
                time_ns,
                records,
            }))?;
        }
        RECORD_MMAP2 => {
            if let Some(m) = parse_mmap2(data, misc & MISC_MMAP_BUILD_ID != 0) {
                if let Some(u) = st.unwind.as_deref_mut() {
                    u.mmap(&m);
                }
                out(Record::Mmap(m))?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl PerfSession {
    /// The node of a stack the span layer took in process `pid` (return addresses, innermost
    /// first) in the trace's stack tree; new nodes come out of [`PerfSession::take_stack_defs`].
    pub fn intern_user_stack(&mut self, pid: u32, frames: &[u64]) -> u32 {
        self.stacks.intern(pid, frames)
    }

    /// Stack nodes defined since the last call, to be written before anything that uses them.
    pub fn take_stack_defs(&mut self) -> Option<iotrace_trace::StackDefs> {
        self.stacks.take_defs()
    }

    /// A mapping the rings did not carry (an attached process's, read from /proc): the
    /// unwinder learns it too.
    pub fn observe_mmap(&mut self, m: &Mmap) {
        if let Some(u) = self.unwind.as_mut() {
            u.mmap(m);
        }
    }

    /// The call graph's unwinding figures, when user stacks are unwound from CFI.
    pub fn unwind_counts(&self) -> Option<(CallGraph, unwind::UnwindCounts)> {
        self.unwind.as_ref().map(|u| (u.mode, u.counts))
    }

    /// Whole-run counts, as `perf stat` would print them.
    pub fn totals(&mut self) -> Totals {
        let read = |c: &mut Vec<Counter>| {
            let mut sum = None;
            for c in c.iter_mut() {
                if let Ok(n) = c.read() {
                    *sum.get_or_insert(0) += n;
                }
            }
            sum
        };
        Totals {
            task_clock_ns: read(&mut self.counters.task_clock),
            context_switches: read(&mut self.counters.context_switches),
            cpu_migrations: read(&mut self.counters.cpu_migrations),
            page_faults: read(&mut self.counters.page_faults),
            syscalls: read(&mut self.counters.syscalls),
        }
    }
}

struct SampleId {
    pid: u32,
    tid: u32,
    time: u64,
}

struct Sample {
    id: u64,
    pid: u32,
    tid: u32,
    time: u64,
}

/// Offset of what follows the fixed part of a sample (IDENTIFIER|TID|TIME|CPU).
const SAMPLE_BODY: usize = 32;

fn u32_at(d: &[u8], at: usize) -> u32 {
    d.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    d.get(at..at + 8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .unwrap_or(0)
}

/// The trailer of a non-sample record with sample_type IDENTIFIER|TID|TIME|CPU.
fn parse_sample_id(d: &[u8]) -> Option<SampleId> {
    let at = d.len().checked_sub(SAMPLE_ID_LEN)?;
    Some(SampleId {
        pid: u32_at(d, at),
        tid: u32_at(d, at + 4),
        time: u64_at(d, at + 8),
    })
}

/// A sample record's fixed part: identifier, pid/tid, time, cpu. RAW (the syscall tracepoint)
/// or CALLCHAIN (the stack events) follows.
fn parse_sample(d: &[u8]) -> Option<Sample> {
    if d.len() < SAMPLE_BODY {
        return None;
    }
    Some(Sample {
        id: u64_at(d, 0),
        pid: u32_at(d, 8),
        tid: u32_at(d, 12),
        time: u64_at(d, 16),
    })
}

/// RAW: u32 size, then the tracepoint payload; raw_syscalls:sys_enter has the syscall number
/// at payload bytes 8..16.
fn parse_raw_syscall(d: &[u8]) -> Option<u16> {
    if d.len() < SAMPLE_BODY + 4 + 16 {
        return None;
    }
    u16::try_from(u64_at(d, SAMPLE_BODY + 4 + 8)).ok()
}

/// CALLCHAIN: u64 count, then that many addresses (innermost first, with context markers),
/// read into `buf`. A count that runs past the record is cut to what is there.
fn parse_callchain<'b>(d: &[u8], buf: &'b mut Vec<u64>) -> &'b [u64] {
    buf.clear();
    let nr = u64_at(d, SAMPLE_BODY);
    let body = d.get(SAMPLE_BODY + 8..).unwrap_or(&[]);
    let nr = (nr as usize).min(body.len() / 8);
    buf.extend(
        body.chunks_exact(8)
            .take(nr)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
    );
    buf
}

/// PERF_RECORD_MMAP2: pid, tid, addr, len, pgoff, (maj, min, ino, ino_generation | build id),
/// prot, flags, filename, then the sample_id trailer.
fn parse_mmap2(d: &[u8], has_build_id: bool) -> Option<Mmap> {
    let id = parse_sample_id(d)?;
    let name = d.get(64..d.len() - SAMPLE_ID_LEN)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let (ino, build_id) = if has_build_id {
        let size = usize::from(*d.get(32)?).min(20);
        (0, d.get(36..36 + size)?.to_vec())
    } else {
        (u64_at(d, 40), Vec::new())
    };
    Some(Mmap {
        pid: u32_at(d, 0),
        tid: u32_at(d, 4),
        time_ns: id.time,
        addr: u64_at(d, 8),
        len: u64_at(d, 16),
        pgoff: u64_at(d, 24),
        ino,
        build_id,
        filename: String::from_utf8_lossy(&name[..end]).into_owned(),
    })
}

fn parse_comm(d: &[u8], exec: bool) -> Option<Comm> {
    let id = parse_sample_id(d)?;
    let pid = u32_at(d, 0);
    let tid = u32_at(d, 4);
    let name_bytes = d.get(8..d.len() - SAMPLE_ID_LEN)?;
    let end = name_bytes
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(name_bytes.len());
    Some(Comm {
        pid,
        tid,
        time_ns: id.time,
        name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
        exec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_records_do_not_panic() {
        let mut buf = Vec::new();
        for len in 0..120 {
            let d = vec![0xffu8; len];
            let _ = parse_sample(&d);
            let _ = parse_raw_syscall(&d);
            for off in [0, 2, 24, 60, usize::MAX - 1] {
                let _ = parse_wakeup(&d, off);
            }
            let _ = parse_callchain(&d, &mut buf);
            let _ = parse_sample_id(&d);
            let _ = parse_comm(&d, false);
            let _ = parse_mmap2(&d, false);
            let _ = parse_mmap2(&d, true);
        }
    }

    #[test]
    fn sample_with_raw_yields_syscall_number() {
        let mut d = vec![0u8; 36 + 64];
        d[0..8].copy_from_slice(&7u64.to_le_bytes());
        d[12..16].copy_from_slice(&42u32.to_le_bytes());
        d[32..36].copy_from_slice(&64u32.to_le_bytes());
        d[44..52].copy_from_slice(&1u64.to_le_bytes());
        let s = parse_sample(&d).unwrap();
        assert_eq!((s.id, s.tid, parse_raw_syscall(&d)), (7, 42, Some(1)));
    }

    #[test]
    fn callchain_count_past_the_record_is_cut() {
        let mut d = vec![0u8; 32 + 8 + 16];
        d[32..40].copy_from_slice(&1000u64.to_le_bytes());
        d[40..48].copy_from_slice(&0x1234u64.to_le_bytes());
        d[48..56].copy_from_slice(&0x5678u64.to_le_bytes());
        let mut buf = Vec::new();
        assert_eq!(parse_callchain(&d, &mut buf), &[0x1234, 0x5678]);
    }

    #[test]
    fn mmap2_record_yields_file_and_offset() {
        let name = b"/usr/lib/libc.so.6\0\0\0\0\0\0";
        let mut d = vec![0u8; 64];
        d[0..4].copy_from_slice(&10u32.to_le_bytes());
        d[8..16].copy_from_slice(&0x7f00_0000_0000u64.to_le_bytes());
        d[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        d[24..32].copy_from_slice(&0x2000u64.to_le_bytes());
        d[40..48].copy_from_slice(&99u64.to_le_bytes());
        d.extend_from_slice(name);
        let mut trailer = [0u8; SAMPLE_ID_LEN];
        trailer[8..16].copy_from_slice(&5u64.to_le_bytes());
        d.extend_from_slice(&trailer);
        let m = parse_mmap2(&d, false).unwrap();
        assert_eq!(m.filename, "/usr/lib/libc.so.6");
        assert_eq!(
            (m.pid, m.addr, m.len, m.pgoff, m.ino),
            (10, 0x7f00_0000_0000, 0x1000, 0x2000, 99)
        );
        assert_eq!(m.time_ns, 5);
    }
}
