//! One streaming pass over a trace that folds its records into a [`Summary`]: the numbers
//! behind `iotrace report`. Memory grows with the number of threads, never with the length
//! of the recording.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use iotrace_trace::{Capabilities, ExitStatus, FormatError, Record, Switch, Totals, TraceReader};

/// Everything `iotrace report` shows. Serialized as the `--json` schema (see
/// `collector/REPORT.md`); keys are only ever added.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// The command line, shell-quoted.
    pub command: String,
    pub argv: Vec<String>,
    pub pid: u32,
    /// Set when the recording attached to running processes (`record -p`) instead of
    /// launching one: there is no exit status then (`exit` is null), and `duration_ns` is the
    /// window it saw.
    pub attached: Option<Attached>,
    /// `{"code": n}` or `{"signal": n}`; null when the trace was cut before the child ended,
    /// or when the recording attached to running processes.
    pub exit: Option<ExitJson>,
    /// Signal that iotrace forwarded to the child (Ctrl-C, SIGTERM), if any.
    pub forwarded_signal: Option<i32>,
    pub duration_ns: u64,
    pub context_switches: SwitchTotals,
    pub cpu_migrations: Option<u64>,
    pub page_faults: Option<u64>,
    pub on_cpu_ns: u64,
    /// Every syscall seen, by count, descending. Empty when syscalls were not measured.
    pub syscalls: Vec<SyscallCount>,
    pub syscalls_total: u64,
    pub threads: Vec<ThreadSummary>,
    pub processes: Vec<ProcessSummary>,
    pub peak_rss_bytes: u64,
    pub peak_threads: u32,
    /// perf records lost (ring overflow) plus span events the program dropped.
    pub lost_events: u64,
    pub capabilities: Capabilities,
    /// The kernel's own whole-run counters, as `perf stat` reads them.
    pub perf_stat: Option<Totals>,
    /// What iotrace's own layer thread (`iotrace-flush`) in the program cost; included in the
    /// totals above, null when the program did not run the layer.
    pub instrumentation: Option<Instrumentation>,
    /// Span totals, when the program installed the iotrace layer (null otherwise).
    pub spans: Option<crate::spans::SpanSummary>,
    /// Every task (tokio tasks, spans marked `iotrace.task`) in spawn order; empty without spans.
    pub tasks: Vec<crate::tasks::TaskRow>,
    /// One per task that blocked its worker thread inside its polls, worst first.
    pub warnings: Vec<crate::tasks::Warning>,
    /// The classic async bugs found (long polls, lock contention, locks held across awaits,
    /// lost wakers, self-wakes, a flooded blocking pool, blocked polls, scheduling delays),
    /// each with the task and line at fault; see `collector/REPORT.md`.
    pub diagnoses: Vec<crate::tasks::Diagnosis>,
    /// Totals over all tasks (null when the program sent no spans).
    pub task_summary: Option<crate::tasks::TaskTotals>,
    /// Set when the trace is damaged: what happened and where.
    pub truncated: Option<String>,
    /// Processes the command started that had not exited when it did (e.g. a daemon that
    /// detached): the recording ends with the command, so what they did after is not
    /// recorded. Empty for an unfinished trace.
    pub still_running: Vec<ProcessRef>,
    pub records: u64,
    /// The span chains that yield sites index ([`crate::tasks::YieldSite::spans`]), for the
    /// timeline and the exports; not part of the JSON report.
    #[serde(skip)]
    pub span_chains: Vec<String>,
}

/// What an attached recording (`record -p`) saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attached {
    pub pids: Vec<u32>,
    /// Threads that existed when it attached (those created later are followed too).
    pub threads: u32,
    /// The recording ended and detached, leaving the processes running (false when the trace
    /// was cut before the end).
    pub detached: bool,
    /// Attached processes that exited during the recording.
    pub exited: Vec<u32>,
}

/// A process, by pid and name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub name: String,
}

/// Name of the iotrace layer's flusher thread inside a recorded program.
pub const INSTRUMENTATION_THREAD: &str = "iotrace-flush";

/// The measurement's own cost inside the program: the layer's flusher thread(s).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Instrumentation {
    pub threads: u32,
    pub voluntary: u64,
    pub involuntary: u64,
    pub on_cpu_ns: u64,
    pub syscalls_total: u64,
    pub syscalls: Vec<SyscallCount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitJson {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SwitchTotals {
    pub voluntary: u64,
    pub involuntary: u64,
    /// `perf` (every switch seen) or `proc` (kernel counters via wait4 and /proc).
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyscallCount {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreadSummary {
    pub tid: u32,
    pub pid: u32,
    pub name: String,
    pub voluntary: u64,
    pub involuntary: u64,
    pub on_cpu_ns: u64,
    pub migrations: u64,
    pub page_faults: u64,
    pub syscalls: u64,
    /// Preempted (or new), waiting for a CPU; from switch records.
    pub runnable_ns: u64,
    /// Switched out voluntarily, until back on a CPU; from switch records.
    pub blocked_ns: u64,
    /// `blocked_ns` by the syscall the thread was in, most first.
    pub blocked: Vec<crate::tasks::BlockedBy>,
    /// Who ended its blocked stretches (the kernel's wakeups), most blocked time first.
    pub woken_by: Vec<crate::tasks::ThreadWaker>,
    /// Blocked time whose waker is not in the trace (another process, an idle CPU's
    /// interrupt; or no wakeups recorded: then 0 and `woken_by` is empty).
    pub woken_unknown_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub name: String,
    pub peak_rss_bytes: u64,
    pub threads: u32,
}

/// Name of a syscall number on this architecture.
pub fn syscall_name(nr: u16) -> String {
    if nr == Switch::NO_SYSCALL {
        return "unknown".to_owned();
    }
    syscalls::Sysno::new(nr as usize)
        .map(|s| s.name().to_owned())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

#[derive(Default)]
struct ThreadState {
    pid: u32,
    name: String,
    voluntary: u64,
    involuntary: u64,
    on_cpu_ns: u64,
    migrations: u64,
    page_faults: u64,
    syscalls: u64,
    last_cpu: Option<u32>,
    /// Switch-in time of the current on-CPU stretch, and its CPU.
    running_since: Option<(u64, u32)>,
    /// When perf first saw this thread (exec or fork), for the stretch before the first switch.
    start_ns: Option<u64>,
    seen_switch: bool,
    by_syscall: HashMap<u16, u64>,
    /// Latest /proc values (cumulative).
    proc: Option<iotrace_trace::ProcThread>,
}

/// Incremental fold of trace records into a [`Summary`].
#[derive(Default)]
pub struct Summarizer {
    summary: Summary,
    threads: BTreeMap<u32, ThreadState>,
    syscalls: HashMap<u16, u64>,
    start_ns: u64,
    last_ns: u64,
    end_seen: bool,
    rusage: Option<iotrace_trace::Rusage>,
    proc_hwm: BTreeMap<u32, (u64, u32)>,
    span_dropped: u64,
    spans: crate::spans::SpanSummarizer,
    span_batches: u64,
    span_clients: u64,
    tasks: crate::tasks::TaskAnalyzer,
    /// Processes forked (after the command's own) and not yet seen to exit.
    live_processes: BTreeMap<u32, ()>,
}

impl Summarizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A summarizer whose task analysis uses `opts`.
    pub fn with_options(opts: crate::tasks::TaskOptions) -> Self {
        Summarizer {
            tasks: crate::tasks::TaskAnalyzer::new(opts),
            ..Self::default()
        }
    }

    pub fn add(&mut self, record: &Record) {
        self.add_to(record, &mut crate::tasks::NoSink);
    }

    /// Like [`Summarizer::add`], handing every thread and task interval to `sink`.
    pub fn add_to(&mut self, record: &Record, sink: &mut dyn crate::tasks::Sink) {
        self.tasks.add(record, sink);
        self.add_record(record);
    }

    fn thread(&mut self, tid: u32) -> &mut ThreadState {
        self.threads.entry(tid).or_default()
    }

    fn saw(&mut self, t: u64) {
        self.last_ns = self.last_ns.max(t);
    }

    fn add_record(&mut self, record: &Record) {
        self.summary.records += 1;
        match record {
            Record::Header(h) => {
                self.summary.argv = h.command.clone();
                self.summary.command = shell_join(&h.command);
                self.summary.pid = h.pid;
                self.start_ns = h.start_ns;
                self.saw(h.start_ns);
            }
            Record::Capabilities(c) => self.summary.capabilities = c.clone(),
            Record::Comm(c) => {
                self.saw(c.time_ns);
                let t = self.thread(c.tid);
                t.pid = c.pid;
                t.name = c.name.clone();
                if c.exec {
                    t.start_ns = Some(c.time_ns);
                }
            }
            Record::Fork(f) => {
                self.saw(f.time_ns);
                if f.pid == f.tid && f.pid != f.ppid && self.live_processes.len() < 1 << 16 {
                    self.live_processes.insert(f.pid, ());
                }
                let parent_name = self.threads.get(&f.ptid).map(|p| p.name.clone());
                let t = self.thread(f.tid);
                t.pid = f.pid;
                t.start_ns.get_or_insert(f.time_ns);
                if t.name.is_empty() {
                    t.name = parent_name.unwrap_or_default();
                }
            }
            Record::Attach(a) => {
                self.summary.attached = Some(Attached {
                    pids: a.pids.clone(),
                    threads: a.threads,
                    ..Attached::default()
                });
            }
            Record::Exit(e) => {
                self.saw(e.time_ns);
                if e.pid == e.tid {
                    if let Some(a) = self.summary.attached.as_mut() {
                        if a.pids.contains(&e.pid) && !a.exited.contains(&e.pid) {
                            a.exited.push(e.pid);
                        }
                    }
                    self.live_processes.remove(&e.pid);
                }
                let t = self.thread(e.tid);
                if let Some((since, _)) = t.running_since.take() {
                    t.on_cpu_ns += e.time_ns.saturating_sub(since);
                }
            }
            Record::Switches(batch) => self.add_switches(batch),
            Record::ThreadCounts(c) => {
                for &(tid, nr, n) in &c.syscalls {
                    *self.syscalls.entry(nr).or_insert(0) += n;
                    let t = self.thread(tid);
                    t.syscalls += n;
                    *t.by_syscall.entry(nr).or_insert(0) += n;
                }
                for &(tid, n) in &c.page_faults {
                    self.thread(tid).page_faults += n;
                }
            }
            Record::ProcSample(s) => {
                self.saw(s.time_ns);
                for p in &s.processes {
                    let e = self.proc_hwm.entry(p.pid).or_insert((0, 0));
                    e.0 = e.0.max(p.hwm_bytes).max(p.rss_bytes);
                    e.1 = e.1.max(p.threads);
                    self.summary.peak_threads = self.summary.peak_threads.max(p.threads);
                }
                for pt in &s.threads {
                    let t = self.thread(pt.tid);
                    t.pid = pt.pid;
                    if t.name.is_empty() {
                        t.name = pt.name.clone();
                    }
                    t.proc = Some(pt.clone());
                }
            }
            Record::Lost(l) => self.summary.lost_events += l.records,
            Record::Totals(t) => self.summary.perf_stat = Some(t.clone()),
            Record::End(e) => {
                self.saw(e.time_ns);
                self.end_seen = true;
                self.summary.exit = match e.exit {
                    ExitStatus::Code(c) => Some(ExitJson::Code(c)),
                    ExitStatus::Signal(s) => Some(ExitJson::Signal(s)),
                    ExitStatus::Detached => None,
                };
                if let Some(a) = self.summary.attached.as_mut() {
                    a.detached = e.exit == ExitStatus::Detached;
                }
                self.summary.forwarded_signal = e.forwarded_signal;
                self.summary.peak_threads = self.summary.peak_threads.max(e.peak_threads);
                self.rusage = Some(e.rusage.clone());
                self.summary.duration_ns = e.time_ns.saturating_sub(self.start_ns);
            }
            Record::SpanStats(s) => {
                self.span_dropped = s.dropped;
                self.span_clients = s.clients;
                self.spans.set_stats(s);
            }
            Record::Spans(batch) => {
                self.span_batches += 1;
                self.spans.add(batch);
            }
            // Stack samples and mappings feed flamegraphs (`crate::stacks`), not the summary.
            Record::Sampling(_)
            | Record::Wakeups(_)
            | Record::Mmap(_)
            | Record::StackDefs(_)
            | Record::Samples(_)
            | Record::Unknown(_) => {}
        }
    }

    fn add_switches(&mut self, batch: &iotrace_trace::Switches) {
        let mut time = batch.base_ns;
        for s in &batch.switches {
            time = time.wrapping_add(s.delta_ns);
            let t = self.threads.entry(s.tid).or_default();
            t.pid = s.pid;
            if s.is_out() {
                if s.is_preempt() {
                    t.involuntary += 1;
                } else {
                    t.voluntary += 1;
                }
                match t.running_since.take() {
                    Some((since, _)) => t.on_cpu_ns += time.saturating_sub(since),
                    // First switch-out of a thread that was running when recording began.
                    None if !t.seen_switch => {
                        if let Some(start) = t.start_ns {
                            t.on_cpu_ns += time.saturating_sub(start);
                        }
                    }
                    None => {}
                }
                t.last_cpu = Some(batch.cpu);
            } else {
                if t.last_cpu.is_some_and(|c| c != batch.cpu) {
                    t.migrations += 1;
                }
                t.last_cpu = Some(batch.cpu);
                t.running_since = Some((time, batch.cpu));
            }
            t.seen_switch = true;
            self.last_ns = self.last_ns.max(time);
        }
    }

    /// Finish the fold. `stop` is how reading ended, when the file was damaged.
    pub fn finish(self, stop: Option<String>) -> Summary {
        self.finish_to(stop, &mut crate::tasks::NoSink)
    }

    /// Like [`Summarizer::finish`], handing the last intervals to `sink`.
    pub fn finish_to(mut self, stop: Option<String>, sink: &mut dyn crate::tasks::Sink) -> Summary {
        let tasks = std::mem::take(&mut self.tasks).finish(sink);
        let perf = self.summary.capabilities.perf;
        let mut s = std::mem::take(&mut self.summary);
        s.truncated = stop.or_else(|| {
            (!self.end_seen)
                .then(|| "the trace has no end record: the recorder did not finish".to_owned())
        });
        if !self.end_seen {
            s.duration_ns = self.last_ns.saturating_sub(self.start_ns);
        }
        let mut threads = Vec::new();
        let mut instrumentation = Instrumentation::default();
        let mut instrumentation_syscalls: HashMap<u16, u64> = HashMap::new();
        for (tid, t) in std::mem::take(&mut self.threads) {
            if t.name == INSTRUMENTATION_THREAD {
                instrumentation.threads += 1;
                instrumentation.voluntary += t.voluntary;
                instrumentation.involuntary += t.involuntary;
                instrumentation.on_cpu_ns += t.on_cpu_ns;
                for (&nr, &n) in &t.by_syscall {
                    *instrumentation_syscalls.entry(nr).or_insert(0) += n;
                }
            }
            let mut row = ThreadSummary {
                tid,
                pid: t.pid,
                name: t.name.clone(),
                voluntary: t.voluntary,
                involuntary: t.involuntary,
                on_cpu_ns: t.on_cpu_ns,
                migrations: t.migrations,
                page_faults: t.page_faults,
                syscalls: t.syscalls,
                ..ThreadSummary::default()
            };
            if let Some(k) = tasks.threads.iter().find(|k| k.tid == tid) {
                row.runnable_ns = k.runnable_ns;
                row.blocked_ns = k.blocked_ns;
                row.blocked = k.blocked.clone();
                row.woken_by = k.woken_by.clone();
                row.woken_unknown_ns = k.woken_unknown_ns;
            }
            if let Some(p) = &t.proc {
                if !perf {
                    row.voluntary = p.voluntary;
                    row.involuntary = p.involuntary;
                    row.on_cpu_ns = p.utime_ns + p.stime_ns;
                    row.page_faults = p.minflt + p.majflt;
                }
            }
            threads.push(row);
        }
        s.context_switches = if perf {
            SwitchTotals {
                voluntary: threads.iter().map(|t| t.voluntary).sum(),
                involuntary: threads.iter().map(|t| t.involuntary).sum(),
                source: "perf",
            }
        } else if let Some(r) = &self.rusage {
            SwitchTotals {
                voluntary: r.voluntary,
                involuntary: r.involuntary,
                source: "proc",
            }
        } else {
            SwitchTotals {
                voluntary: threads.iter().map(|t| t.voluntary).sum(),
                involuntary: threads.iter().map(|t| t.involuntary).sum(),
                source: "proc",
            }
        };
        s.on_cpu_ns = match (&s.perf_stat, &self.rusage) {
            (
                Some(Totals {
                    task_clock_ns: Some(ns),
                    ..
                }),
                _,
            ) => *ns,
            (_, Some(r)) if !perf => r.utime_ns + r.stime_ns,
            _ => threads.iter().map(|t| t.on_cpu_ns).sum(),
        };
        s.cpu_migrations = s.perf_stat.as_ref().and_then(|t| t.cpu_migrations);
        s.page_faults = s
            .perf_stat
            .as_ref()
            .and_then(|t| t.page_faults)
            .or_else(|| self.rusage.as_ref().map(|r| r.minflt + r.majflt));
        let mut syscalls: Vec<SyscallCount> = self
            .syscalls
            .iter()
            .map(|(&nr, &count)| SyscallCount {
                name: syscall_name(nr),
                count,
            })
            .collect();
        syscalls.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        s.syscalls_total = syscalls.iter().map(|c| c.count).sum();
        s.syscalls = syscalls;
        if instrumentation.threads > 0 {
            instrumentation.syscalls = instrumentation_syscalls
                .into_iter()
                .map(|(nr, count)| SyscallCount {
                    name: syscall_name(nr),
                    count,
                })
                .collect();
            instrumentation
                .syscalls
                .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
            instrumentation.syscalls_total = instrumentation.syscalls.iter().map(|c| c.count).sum();
            s.instrumentation = Some(instrumentation);
        }
        for (pid, (hwm, nthreads)) in &self.proc_hwm {
            let name = threads
                .iter()
                .find(|t| t.tid == *pid)
                .map(|t| t.name.clone())
                .unwrap_or_default();
            s.processes.push(ProcessSummary {
                pid: *pid,
                name,
                peak_rss_bytes: *hwm,
                threads: *nthreads,
            });
        }
        let proc_peak = self.proc_hwm.values().map(|v| v.0).max().unwrap_or(0);
        s.peak_rss_bytes = proc_peak.max(self.rusage.as_ref().map_or(0, |r| r.max_rss_bytes));
        if s.peak_threads == 0 && !threads.is_empty() {
            s.peak_threads = 1;
        }
        // The kernel writes a LOST record only once its ring has room again, so a loss at the
        // very end goes unrecorded. Its counting events are exact: what the samples lack
        // against them was lost too.
        if let Some(t) = &s.perf_stat {
            let switches = s.context_switches.voluntary + s.context_switches.involuntary;
            let missing = t.syscalls.map_or(0, |n| n.saturating_sub(s.syscalls_total))
                + t.context_switches.map_or(0, |n| n.saturating_sub(switches));
            s.lost_events = s.lost_events.max(missing);
        }
        s.lost_events += self.span_dropped;
        let spans = std::mem::take(&mut self.spans);
        if self.span_batches > 0 || self.span_clients > 0 {
            s.spans = Some(spans.finish(10));
        }
        if self.end_seen {
            let command = s.pid;
            s.still_running = std::mem::take(&mut self.live_processes)
                .into_keys()
                .filter(|&pid| pid != command)
                .map(|pid| ProcessRef {
                    pid,
                    name: threads
                        .iter()
                        .find(|t| t.tid == pid)
                        .map(|t| t.name.clone())
                        .unwrap_or_default(),
                })
                .collect();
        }
        threads.sort_by_key(|t| (t.pid, t.tid));
        s.threads = threads;
        if tasks.saw_spans {
            s.tasks = tasks.tasks;
            s.warnings = tasks.warnings;
            s.diagnoses = tasks.diagnoses;
            s.task_summary = Some(tasks.totals);
            s.span_chains = tasks.span_chains;
        }
        s
    }
}

/// Summarize a trace file in one streaming pass. A damaged file still gives a summary of
/// what it holds, with [`Summary::truncated`] set.
pub fn summarize_file(path: &Path) -> Result<Summary, FormatError> {
    summarize_file_with(
        path,
        &crate::tasks::TaskOptions::default(),
        &mut crate::tasks::NoSink,
    )
}

/// [`summarize_file`] with task-analysis options, handing every interval to `sink`.
pub fn summarize_file_with(
    path: &Path,
    opts: &crate::tasks::TaskOptions,
    sink: &mut dyn crate::tasks::Sink,
) -> Result<Summary, FormatError> {
    let mut reader = TraceReader::open(path)?;
    let mut summarizer = Summarizer::with_options(opts.clone());
    for record in reader.by_ref() {
        summarizer.add_to(&record, sink);
    }
    let stop = reader.stop().map(|s| s.to_string());
    let mut summary = summarizer.finish_to(stop, sink);
    crate::tasks::naming::name_report_stacks(path, &mut summary);
    Ok(summary)
}

/// Quote arguments so the line can be pasted into a shell.
pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
