//! Flamegraphs of a trace: on-CPU, off-CPU (weighted by blocked time), wall (both), async
//! (each sample under the task and spans active on its thread at that instant), idle (each
//! task's idle time under the task, by yield site: [`idle`]) and wake (the delay from each wake
//! to the poll it led to, under the waker: [`wake`]).
//!
//! One streaming pass ([`fold_file`]) counts weights per distinct (root frames, stack) in
//! memory bounded by the number of distinct stacks; frames are then named once each
//! (`iotrace_analysis::symbolize`) and the counts become folded-stack lines ([`Folded`]), which
//! [`write_svg`] draws with `inferno` and [`write_folded`] writes for flamegraph.pl, inferno
//! and speedscope.
//!
//! iotrace's own threads in the program (the span layer's `iotrace-flush`) are left out unless
//! [`Options::include_self`]; idle threads are left out with [`Options::no_idle`]. What was
//! left out is counted in [`Folded::left_out`], never dropped silently.
//!
//! The idle graph is not made of stack samples: its pass runs the task model and weighs the
//! yield-site stacks of idle stretches ([`idle`]); it comes out as the same [`Folded`]. So is
//! the wake graph, from the task model's wake edges and the wakers' stacks ([`wake`]).
//!
//! ```no_run
//! use iotrace_render::flamegraph::{self, Kind, Options};
//! let opts = Options::new(Kind::OffCpu);
//! let folded = flamegraph::fold_file("t.iotrace".as_ref(), &opts)?;
//! flamegraph::write_svg(&folded, &opts, std::fs::File::create("off.svg")?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod idle;
mod render;
pub mod wake;

pub(crate) use render::{native_frames, need_frames, thread_name, NamedFrame};
mod svg;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use iotrace_analysis::stacks::{FoldStats, Need, StackFold, StackItem};
use iotrace_analysis::summary::INSTRUMENTATION_THREAD;
use iotrace_analysis::symbolize::{self, KernelSymbols, SymbolStats};
use iotrace_trace::{kind, FormatError, Record, TraceReader};

pub use svg::{read_folded, write_diff_svg, write_folded, write_svg};

/// What a flamegraph weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// On-CPU samples (cpu-clock), counted in samples.
    OnCpu,
    /// Voluntary switch-outs, weighted by µs until the thread ran again.
    OffCpu,
    /// Both, in µs, under an `on-CPU` or `off-CPU` root frame.
    Wall,
    /// Both, in µs, under the task and span stack active on the thread.
    Async,
    /// Tasks' idle time (returned Pending, waiting for a wake), in µs, under the task, by the
    /// stack of the yield site.
    Idle,
    /// The delay from each wake of a task to the poll it led to, in µs, under the kind of
    /// waker and its stack (or the waking task), with the woken task as the leaf.
    Wake,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::OnCpu => "oncpu",
            Kind::OffCpu => "offcpu",
            Kind::Wall => "wall",
            Kind::Async => "async",
            Kind::Idle => "idle",
            Kind::Wake => "wake",
        }
    }
}

/// The root frames of the async flamegraph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Thread name, then task, then spans.
    Thread,
    /// Task, then spans (the default).
    Task,
    /// The innermost span only (or the task when no span is inside it).
    Span,
}

/// What to draw and which samples to keep. The idle and wake graphs ([`Kind::Idle`],
/// [`Kind::Wake`]) weigh tasks, not threads' samples: of these they use `task`,
/// `from_ns`/`to_ns` and `title`.
#[derive(Debug, Clone)]
pub struct Options {
    pub kind: Kind,
    pub group_by: GroupBy,
    /// Keep only these threads (empty: all).
    pub tids: Vec<u32>,
    /// Keep only samples whose task label contains this text.
    pub task: Option<String>,
    /// Keep only what happened in `[from, to)`, in ns since the start of the recording.
    pub from_ns: Option<u64>,
    pub to_ns: Option<u64>,
    /// Title of the SVG (default: from the kind and the command).
    pub title: Option<String>,
    /// Keep iotrace's own threads in the program (`iotrace-flush`), left out by default
    /// unless named in `tids`.
    pub include_self: bool,
    /// Leave out idle threads (see [`is_idle`]).
    pub no_idle: bool,
}

/// Whether a thread with `on_cpu_us` on CPU and `off_cpu_us` off CPU (within the time window)
/// counts as idle for [`Options::no_idle`]: on CPU for less than 1% of the time it was off
/// CPU, like a main thread parked in `block_on` or a pool's spare workers. A thread that
/// waits for slow I/O with almost no CPU work between waits counts as idle too.
pub fn is_idle(on_cpu_us: u64, off_cpu_us: u64) -> bool {
    on_cpu_us.saturating_mul(100) < off_cpu_us
}

/// Samples and threads a flamegraph left out, with their weight (in the graph's unit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftOut {
    /// Stack samples (on-CPU samples or off-CPU stretches) of iotrace's own threads.
    pub own_samples: u64,
    pub own_weight: u64,
    /// Idle threads ([`Options::no_idle`]) and their samples.
    pub idle_threads: u64,
    pub idle_samples: u64,
    pub idle_weight: u64,
}

impl Options {
    pub fn new(kind: Kind) -> Self {
        Options {
            kind,
            group_by: GroupBy::Task,
            tids: Vec::new(),
            task: None,
            from_ns: None,
            to_ns: None,
            title: None,
            include_self: false,
            no_idle: false,
        }
    }

    fn needs_contexts(&self) -> bool {
        self.kind == Kind::Async || self.task.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlamegraphError {
    #[error(transparent)]
    Format(#[from] FormatError),
    // The OS errors are part of the messages and deliberately not sources (a field named
    // `source` would be one): error chains (anyhow's `{:#}`) would print them twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{0}")]
    Empty(String),
    #[error("writing the flamegraph: {0}")]
    Write(io::Error),
}

/// What went into an idle graph ([`Kind::Idle`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdleStats {
    /// Tasks drawn, their idle stretches and idle time (within `--from/--to`).
    pub tasks: u64,
    pub stretches: u64,
    pub idle_ns: u64,
    /// Of that, time whose yield site is not known (under [`idle::UNKNOWN_SITE`]).
    pub unknown_ns: u64,
}

/// What went into a wake graph ([`Kind::Wake`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WakeStats {
    /// Woken tasks drawn, their wakes and the wake→poll delay (within `--from/--to`).
    pub tasks: u64,
    pub wakes: u64,
    pub delay_ns: u64,
}

/// Folded stacks and what went into them.
#[derive(Debug, Clone, Default)]
pub struct Folded {
    /// `frame;frame;frame` and its weight, sorted by stack.
    pub lines: Vec<(String, u64)>,
    /// `samples` or `µs`.
    pub unit: &'static str,
    /// The recorded command, for titles.
    pub command: String,
    /// Bytes of the trace's stack records (samples, stack tree, mappings), frame headers
    /// included: the cost of sampling in the file.
    pub stack_bytes: u64,
    pub fold: FoldStats,
    pub symbols: SymbolStats,
    /// Why reading stopped early, when the trace is damaged.
    pub truncated: Option<String>,
    /// What the options left out.
    pub left_out: LeftOut,
    /// For the idle graph: its tasks and stretches.
    pub idle: Option<IdleStats>,
    /// For the wake graph: its tasks and wakes.
    pub wake: Option<WakeStats>,
}

impl Folded {
    pub fn total(&self) -> u64 {
        self.lines.iter().map(|l| l.1).sum()
    }

    /// Trace bytes of stack records per stack sample (on- and off-CPU).
    pub fn bytes_per_sample(&self) -> f64 {
        let n = self.fold.on_cpu_samples + self.fold.off_cpu_samples;
        self.stack_bytes as f64 / n.max(1) as f64
    }
}

/// Counting key: origin (see [`Origin`]), stack, and the off-CPU syscall (+1; 0 = on CPU).
type Key = (u32, u32, u32);

/// What one pass over a trace's stack samples ([`stack_pass`]) leaves: the fold (stack tree,
/// mappings, names), the kernel's symbols when they can be used, and what else it saw.
pub(crate) struct StackPass {
    pub fold: StackFold,
    pub kernel: Option<KernelSymbols>,
    /// The recorded command.
    pub command: String,
    /// Wall-clock time of the recording's start, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// Bytes of the trace's stack records, frame headers included.
    pub stack_bytes: u64,
    pub truncated: Option<String>,
}

/// Reads a trace's stack samples once, handing every item `need` asks for to `sink` (in time
/// order per thread), as the flamegraphs and the pprof and Firefox exports read them.
pub(crate) fn stack_pass(
    path: &Path,
    need: Need,
    sink: &mut dyn FnMut(&mut StackFold, StackItem),
) -> Result<StackPass, FormatError> {
    let mut reader = TraceReader::open(path)?;
    // Span batches are most of a traced program's file; only contexts need them.
    let mut skip = vec![kind::THREAD_COUNTS, kind::PROC_SAMPLE, kind::SPAN_STATS];
    if !need.contexts {
        skip.push(kind::SPANS);
    }
    if !need.off_cpu {
        skip.push(kind::SWITCHES);
    }
    reader.skip_kinds(&skip);
    let mut fold = StackFold::with(need);
    let mut command = String::new();
    let mut start_unix_ns = 0;
    let mut stack_bytes = 0;
    // Kernel symbols are read on another thread while the trace is folded.
    let mut kernel = None;
    loop {
        let before = reader.offset();
        let Some(record) = reader.next() else {
            break;
        };
        match &record {
            Record::Header(h) => {
                command = iotrace_analysis::summary::shell_join(&h.command);
                start_unix_ns = h.start_unix_ns;
            }
            Record::Sampling(_) | Record::Mmap(_) | Record::StackDefs(_) | Record::Samples(_) => {
                stack_bytes += reader.offset() - before;
                if let Record::Sampling(s) = &record {
                    if s.kernel_stacks && kernel.is_none() && symbolize::same_boot(&s.boot_id) {
                        kernel = Some(symbolize::KernelSymbols::spawn());
                    }
                }
            }
            _ => {}
        }
        fold.add(&record, sink);
    }
    fold.finish(sink);
    let truncated = reader.stop().map(|s| s.to_string());
    let kernel = kernel.and_then(|k| k.join().ok().flatten());
    Ok(StackPass {
        fold,
        kernel,
        command,
        start_unix_ns,
        stack_bytes,
        truncated,
    })
}

/// Read a trace and fold its stack samples for `opts`.
pub fn fold_file(path: &Path, opts: &Options) -> Result<Folded, FlamegraphError> {
    if opts.kind == Kind::Idle {
        return idle::fold_idle(path, opts);
    }
    if opts.kind == Kind::Wake {
        return wake::fold_wake(path, opts);
    }
    // Deciding which threads are idle takes both their on- and off-CPU time.
    let need = Need {
        on_cpu: opts.kind != Kind::OffCpu || opts.no_idle,
        off_cpu: opts.kind != Kind::OnCpu || opts.no_idle,
        contexts: opts.needs_contexts(),
    };
    let mut counts = Counts::default();
    let pass = stack_pass(path, need, &mut |fold, item| counts.add(fold, opts, item))?;
    let StackPass {
        mut fold,
        kernel,
        command,
        stack_bytes,
        truncated,
        ..
    } = pass;
    if opts.no_idle {
        counts.drop_idle();
    }
    let left_out = counts.left_out.clone();
    let (lines, symbols) = render::lines(&mut fold, opts, counts, kernel.as_ref());
    if lines.is_empty() {
        return Err(FlamegraphError::Empty(empty_reason(
            &fold, opts, path, &left_out,
        )));
    }
    Ok(Folded {
        lines,
        unit: if opts.kind == Kind::OnCpu {
            "samples"
        } else {
            "µs"
        },
        command,
        stack_bytes,
        fold: fold.stats.clone(),
        symbols,
        truncated,
        left_out,
        idle: None,
        wake: None,
    })
}

fn empty_reason(fold: &StackFold, opts: &Options, path: &Path, left_out: &LeftOut) -> String {
    let s = &fold.stats;
    let what = match opts.kind {
        Kind::OnCpu => "on-CPU samples",
        Kind::OffCpu => "off-CPU stacks",
        _ => "stack samples",
    };
    let hint = if s.on_cpu_samples + s.off_cpu_samples == 0 {
        " (it was recorded with --no-samples, without perf, or by an older iotrace)".to_owned()
    } else {
        let mut h = " match the filters (--tid, --task, --from/--to)".to_owned();
        if left_out.own_samples > 0 {
            h.push_str(&format!(
                "; {} stacks of iotrace's own threads were left out (--include-self shows them)",
                left_out.own_samples
            ));
        }
        if left_out.idle_threads > 0 {
            h.push_str(&format!(
                "; {} idle threads were left out (--no-idle)",
                left_out.idle_threads
            ));
        }
        h
    };
    format!("{}: no {what}{hint}", path.display())
}

/// Where an item's root frames come from: its thread's name and its span context (named
/// only once the fold has finished), and whether it was off CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub thread: u32,
    /// The thread's tid with `no_idle` (which decides per thread), else 0.
    pub tid: u32,
    pub context: u32,
    pub off_cpu: bool,
}

/// Weights per key, filled by the fold's sink.
#[derive(Default)]
pub(crate) struct Counts {
    weights: HashMap<Key, u64>,
    origins: HashMap<Origin, u32>,
    origin_list: Vec<Origin>,
    /// With `no_idle`: µs on and off CPU per thread, within the time window.
    busy: HashMap<u32, (u64, u64)>,
    /// With `no_idle`: items counted per origin.
    samples: HashMap<u32, u64>,
    left_out: LeftOut,
}

impl Counts {
    fn add(&mut self, fold: &mut StackFold, opts: &Options, item: StackItem) {
        if !opts.tids.is_empty() && !opts.tids.contains(&item.tid) {
            return;
        }
        if opts.no_idle {
            if let Some(us) = weight(fold, opts, Kind::Wall, &item) {
                let busy = self.busy.entry(item.tid).or_default();
                match item.off_cpu {
                    None => busy.0 += us,
                    Some(_) => busy.1 += us,
                }
            }
        }
        let Some(weight) = weight(fold, opts, opts.kind, &item) else {
            return;
        };
        let thread = render::thread_name(fold, item.tid);
        if !opts.include_self
            && !opts.tids.contains(&item.tid)
            && fold.strings.get(thread) == INSTRUMENTATION_THREAD
        {
            self.left_out.own_samples += 1;
            self.left_out.own_weight += weight;
            return;
        }
        let origin = Origin {
            thread,
            tid: if opts.no_idle { item.tid } else { 0 },
            context: item.context,
            off_cpu: item.off_cpu.is_some(),
        };
        let next = self.origin_list.len() as u32;
        let id = *self.origins.entry(origin).or_insert_with(|| {
            self.origin_list.push(origin);
            next
        });
        let tag = item.off_cpu.map_or(0, |o| u32::from(o.syscall) + 1);
        *self.weights.entry((id, item.stack, tag)).or_insert(0) += weight;
        if opts.no_idle {
            *self.samples.entry(id).or_insert(0) += 1;
        }
    }

    /// Removes the weights of idle threads ([`is_idle`]), counting them in `left_out`.
    fn drop_idle(&mut self) {
        let idle: HashSet<u32> = self
            .busy
            .iter()
            .filter(|(_, &(on, off))| is_idle(on, off))
            .map(|(&tid, _)| tid)
            .collect();
        let origins = &self.origin_list;
        let is_idle_origin = |id: u32| {
            origins
                .get(id as usize)
                .is_some_and(|o| idle.contains(&o.tid))
        };
        let mut threads = HashSet::new();
        let left = &mut self.left_out;
        self.weights.retain(|&(id, _, _), w| {
            if !is_idle_origin(id) {
                return true;
            }
            left.idle_weight += *w;
            threads.insert(origins[id as usize].tid);
            false
        });
        for (id, n) in &self.samples {
            if is_idle_origin(*id) {
                left.idle_samples += n;
            }
        }
        left.idle_threads = threads.len() as u64;
    }
}

/// The item's weight for `kind` within `--from/--to`, or `None` to leave it out.
fn weight(fold: &StackFold, opts: &Options, kind: Kind, item: &StackItem) -> Option<u64> {
    let start = fold.start_ns;
    let from = opts.from_ns.map_or(0, |f| start.saturating_add(f));
    let to = opts.to_ns.map_or(u64::MAX, |t| start.saturating_add(t));
    match (kind, item.off_cpu) {
        (Kind::OnCpu, Some(_)) | (Kind::OffCpu, None) => None,
        (_, None) => {
            if item.time_ns < from || item.time_ns >= to {
                return None;
            }
            Some(if kind == Kind::OnCpu {
                1
            } else {
                1_000_000 / fold.frequency_hz.max(1)
            })
        }
        (_, Some(off)) => {
            let begin = item.time_ns.max(from);
            let end = item.time_ns.saturating_add(off.duration_ns).min(to);
            let us = end.saturating_sub(begin) / 1000;
            (us > 0).then_some(us)
        }
    }
}
