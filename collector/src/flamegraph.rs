//! Flamegraphs of a trace: on-CPU, off-CPU (weighted by blocked time), wall (both) and async
//! (each sample under the task and spans active on its thread at that instant).
//!
//! One streaming pass ([`fold_file`]) counts weights per distinct (root frames, stack) in
//! memory bounded by the number of distinct stacks; frames are then named once each
//! (`crate::symbolize`) and the counts become folded-stack lines ([`Folded`]), which
//! [`write_svg`] draws with `inferno` and [`write_folded`] writes for flamegraph.pl, inferno
//! and speedscope.
//!
//! ```no_run
//! use iotrace_collector::flamegraph::{self, Kind, Options};
//! let opts = Options::new(Kind::OffCpu);
//! let folded = flamegraph::fold_file("t.iotrace".as_ref(), &opts)?;
//! flamegraph::write_svg(&folded, &opts, std::fs::File::create("off.svg")?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod render;
mod svg;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::format::{kind, FormatError, Record, TraceReader};
use crate::stacks::{FoldStats, Need, StackFold, StackItem};
use crate::symbolize::{self, SymbolStats};

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
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::OnCpu => "oncpu",
            Kind::OffCpu => "offcpu",
            Kind::Wall => "wall",
            Kind::Async => "async",
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

/// What to draw and which samples to keep.
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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Empty(String),
    #[error("writing the flamegraph: {0}")]
    Write(#[source] io::Error),
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

/// Read a trace and fold its stack samples for `opts`.
pub fn fold_file(path: &Path, opts: &Options) -> Result<Folded, FlamegraphError> {
    let mut reader = TraceReader::open(path)?;
    let need = Need {
        on_cpu: opts.kind != Kind::OffCpu,
        off_cpu: opts.kind != Kind::OnCpu,
        contexts: opts.needs_contexts(),
    };
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
    let mut counts = Counts::default();
    let mut command = String::new();
    let mut stack_bytes = 0;
    // Kernel symbols are read on another thread while the trace is folded.
    let mut kernel = None;
    loop {
        let before = reader.offset();
        let Some(record) = reader.next() else {
            break;
        };
        match &record {
            Record::Header(h) => command = crate::analysis::shell_join(&h.command),
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
        fold.add(&record, &mut |fold, item| counts.add(fold, opts, item));
    }
    fold.finish(&mut |fold, item| counts.add(fold, opts, item));
    let truncated = reader.stop().map(|s| s.to_string());
    let kernel = kernel.and_then(|k| k.join().ok().flatten());
    let (lines, symbols) = render::lines(&mut fold, opts, counts, kernel.as_ref());
    if lines.is_empty() {
        return Err(FlamegraphError::Empty(empty_reason(&fold, opts, path)));
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
    })
}

fn empty_reason(fold: &StackFold, opts: &Options, path: &Path) -> String {
    let s = &fold.stats;
    let what = match opts.kind {
        Kind::OnCpu => "on-CPU samples",
        Kind::OffCpu => "off-CPU stacks",
        _ => "stack samples",
    };
    let hint = if s.on_cpu_samples + s.off_cpu_samples == 0 {
        " (it was recorded with --no-samples, without perf, or by an older iotrace)"
    } else {
        " match the filters (--tid, --task, --from/--to)"
    };
    format!("{}: no {what}{hint}", path.display())
}

/// Where an item's root frames come from: its thread's name and its span context (named
/// only once the fold has finished), and whether it was off CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub thread: u32,
    pub context: u32,
    pub off_cpu: bool,
}

/// Weights per key, filled by the fold's sink.
#[derive(Default)]
pub(crate) struct Counts {
    weights: HashMap<Key, u64>,
    origins: HashMap<Origin, u32>,
    origin_list: Vec<Origin>,
}

impl Counts {
    fn add(&mut self, fold: &mut StackFold, opts: &Options, item: StackItem) {
        if !opts.tids.is_empty() && !opts.tids.contains(&item.tid) {
            return;
        }
        let Some(weight) = weight(fold, opts, &item) else {
            return;
        };
        let origin = Origin {
            thread: render::thread_name(fold, item.tid),
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
    }
}

/// The item's weight for this kind within `--from/--to`, or `None` to leave it out.
fn weight(fold: &StackFold, opts: &Options, item: &StackItem) -> Option<u64> {
    let start = fold.start_ns;
    let from = opts.from_ns.map_or(0, |f| start.saturating_add(f));
    let to = opts.to_ns.map_or(u64::MAX, |t| start.saturating_add(t));
    match (opts.kind, item.off_cpu) {
        (Kind::OnCpu, Some(_)) | (Kind::OffCpu, None) => None,
        (_, None) => {
            if item.time_ns < from || item.time_ns >= to {
                return None;
            }
            Some(if opts.kind == Kind::OnCpu {
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
