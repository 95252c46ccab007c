//! `iotrace flamegraph`: arguments in, `iotrace_collector::flamegraph` options out, and the
//! SVG or folded stacks written where asked.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use iotrace_collector::flamegraph::{self as fg, GroupBy, Kind};

pub const EXAMPLES: &str = "\
EXAMPLES:
    Where the CPU time goes, and where threads wait (µs blocked, by kernel function and syscall):
        iotrace flamegraph t.data -o cpu.svg
        iotrace flamegraph t.data --kind offcpu -o off.svg
    Samples under the tokio task and spans active on their thread:
        iotrace flamegraph t.data --kind async -o async.svg
    Where tasks wait: idle time (µs) under each task, by the await it yielded at:
        iotrace flamegraph t.data --kind idle -o idle.svg
    Who wakes tasks and how long they then wait for a poll (µs), under the waker:
        iotrace flamegraph t.data --kind wake -o wake.svg
    Folded stacks for flamegraph.pl, inferno or speedscope:
        iotrace flamegraph t.data --folded > cpu.folded
    Only one thread, one task, or a time window (since the start of the recording):
        iotrace flamegraph t.data --tid 4242 --task conn --from 2s --to 5s
    What changed between two runs (red: more, blue: less):
        iotrace flamegraph --diff before.data after.data -o diff.svg
    Where threads wait, without iotrace's own flusher thread (the default) and idle threads:
        iotrace flamegraph t.data --kind offcpu --no-idle -o off.svg

LEFT OUT BY DEFAULT:
    iotrace's own thread in the program, the span layer's `iotrace-flush`, is not drawn unless
    --include-self is given (or its tid is given to --tid). What is left out is counted on
    stderr, e.g. `left out 554 stacks, 2915324 µs, of iotrace's own threads`.
";

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum KindArg {
    /// On-CPU samples (cpu-clock), counted in samples.
    Oncpu,
    /// Voluntary switch-outs, weighted by µs blocked; the leaf is the kernel function the
    /// thread slept in, with the syscall.
    Offcpu,
    /// On- and off-CPU in µs, under `on-CPU` and `off-CPU` root frames (off-CPU in blue).
    Wall,
    /// On- and off-CPU in µs, under the task and span stack active on the thread.
    Async,
    /// Tasks' idle time (returned Pending, waiting for a wake) in µs, under the task, by yield
    /// site: the stack from the task's future down to the await that stored its waker
    /// (`[unknown yield site]` when not known).
    Idle,
    /// The delay from each wake of a task to its next poll in µs, under the waker: `woken by
    /// the I/O driver`, `the timer`, `a task` or `a thread`, then the waker's stack (or the
    /// waking task), with the woken task (`→ task NAME`) as the leaf.
    Wake,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum GroupByArg {
    /// Thread name, then task, then spans.
    Thread,
    /// Task, then spans.
    Task,
    /// The innermost span only.
    Span,
}

#[derive(clap::Args)]
pub struct FlamegraphArgs {
    /// Trace file to read.
    #[arg(default_value = "iotrace.data", conflicts_with = "diff")]
    file: PathBuf,
    /// What to weigh.
    #[arg(short, long, value_enum, default_value = "oncpu")]
    kind: KindArg,
    /// Where to write: an SVG, or folded stacks with --folded; `-` is stdout. Default:
    /// flamegraph.svg, or stdout with --folded.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Write folded stacks (`frame;frame;frame weight` lines) instead of an SVG.
    #[arg(long)]
    folded: bool,
    /// Only these threads (kernel tids), comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "TID")]
    tid: Vec<u32>,
    /// Only samples whose task label contains TEXT (e.g. `conn`, `tokio.rs:70`).
    #[arg(long, value_name = "TEXT")]
    task: Option<String>,
    /// Only what happened from this time on, since the start of the recording (e.g. 1.5s,
    /// 200ms).
    #[arg(long, value_parser = crate::time::parse_ns, value_name = "TIME")]
    from: Option<u64>,
    /// Only what happened before this time, since the start of the recording.
    #[arg(long, value_parser = crate::time::parse_ns, value_name = "TIME")]
    to: Option<u64>,
    /// Root frames of the async graph.
    #[arg(long, value_enum, default_value = "task")]
    group_by: GroupByArg,
    /// Title of the SVG.
    #[arg(long)]
    title: Option<String>,
    /// Also draw iotrace's own threads in the program (the span layer's `iotrace-flush`),
    /// which are left out by default; how many samples were left out is printed on stderr.
    #[arg(long)]
    include_self: bool,
    /// Leave out idle threads: those on CPU for less than 1% of the time they were off CPU
    /// (within --from/--to), such as a main thread parked in `block_on` or spare pool
    /// workers. Threads that wait on slow I/O with little CPU between waits go too. What was
    /// left out is printed on stderr.
    #[arg(long)]
    no_idle: bool,
    /// A differential flamegraph of two traces (or two folded files): the shape of AFTER,
    /// red where it grew and blue where it shrank compared with BEFORE.
    #[arg(long, num_args = 2, value_names = ["BEFORE", "AFTER"])]
    diff: Option<Vec<PathBuf>>,
}

impl FlamegraphArgs {
    fn options(&self) -> fg::Options {
        let mut o = fg::Options::new(match self.kind {
            KindArg::Oncpu => Kind::OnCpu,
            KindArg::Offcpu => Kind::OffCpu,
            KindArg::Wall => Kind::Wall,
            KindArg::Async => Kind::Async,
            KindArg::Idle => Kind::Idle,
            KindArg::Wake => Kind::Wake,
        });
        o.group_by = match self.group_by {
            GroupByArg::Thread => GroupBy::Thread,
            GroupByArg::Task => GroupBy::Task,
            GroupByArg::Span => GroupBy::Span,
        };
        o.tids = self.tid.clone();
        o.task = self.task.clone();
        o.from_ns = self.from;
        o.to_ns = self.to;
        o.title = self.title.clone();
        o.include_self = self.include_self;
        o.no_idle = self.no_idle;
        o
    }
}

/// Where output goes: a file, or stdout.
fn open_output(path: &Path) -> anyhow::Result<Box<dyn Write>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdout().lock()));
    }
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

/// Write, treating a closed stdout pipe (`| head`) as a quiet end.
fn finish_write(result: std::io::Result<()>, path: &Path) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.with_context(|| format!("writing {}", path.display())),
    }
}

pub fn run(args: FlamegraphArgs) -> anyhow::Result<ExitCode> {
    let opts = args.options();
    if opts.kind == Kind::Idle {
        // Idle time is a task's, not a thread's.
        if !args.tid.is_empty() {
            anyhow::bail!("--tid does not apply to --kind idle (idle time belongs to tasks, not threads); --task narrows it");
        }
        if args.no_idle {
            anyhow::bail!("--no-idle leaves out idle threads and does not apply to --kind idle, which draws tasks' idle time");
        }
    }
    if opts.kind == Kind::Wake {
        if !args.tid.is_empty() {
            anyhow::bail!("--tid does not apply to --kind wake (wakes are drawn by the woken task, not by thread); --task narrows it");
        }
        if args.no_idle {
            anyhow::bail!("--no-idle leaves out idle threads and does not apply to --kind wake, which draws tasks' wakes");
        }
    }
    if let Some(pair) = &args.diff {
        return run_diff(&args, &opts, &pair[0], &pair[1]);
    }
    let folded = fg::fold_file(&args.file, &opts)?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(if args.folded { "-" } else { "flamegraph.svg" }));
    let mut out = open_output(&output)?;
    let result = if args.folded {
        fg::write_folded(&folded, &mut out)
    } else {
        fg::write_svg(&folded, &opts, &mut out)
    };
    finish_write(result.and_then(|_| out.flush()), &output)?;
    report(&args.file, &output, &opts, &folded);
    Ok(ExitCode::SUCCESS)
}

/// One line on stderr: what was drawn, from how much, and the frames that have no name.
fn report(trace: &Path, output: &Path, opts: &fg::Options, folded: &fg::Folded) {
    let s = &folded.fold;
    let target = if output == Path::new("-") {
        "stdout".to_owned()
    } else {
        output.display().to_string()
    };
    if let Some(idle) = &folded.idle {
        eprintln!(
            "iotrace: {}: idle flamegraph, {} {} in {} stacks ({} tasks, {} idle stretches, {} µs of them at an unknown yield site); {}",
            target,
            folded.total(),
            folded.unit,
            folded.lines.len(),
            idle.tasks,
            idle.stretches,
            idle.unknown_ns / 1000,
            folded.symbols.summary()
        );
        if let Some(t) = &folded.truncated {
            eprintln!("iotrace: warning: {}: {t}", trace.display());
        }
        return;
    }
    if let Some(wake) = &folded.wake {
        eprintln!(
            "iotrace: {}: wake flamegraph, {} {} of wake→poll delay in {} stacks ({} tasks woken {} times); {}",
            target,
            folded.total(),
            folded.unit,
            folded.lines.len(),
            wake.tasks,
            wake.wakes,
            folded.symbols.summary()
        );
        if let Some(t) = &folded.truncated {
            eprintln!("iotrace: warning: {}: {t}", trace.display());
        }
        return;
    }
    eprintln!(
        "iotrace: {}: {} flamegraph, {} {} in {} stacks (trace: {} on-CPU samples, {} off-CPU stacks, {:.0} bytes each); {}",
        target,
        opts.kind.name(),
        folded.total(),
        folded.unit,
        folded.lines.len(),
        s.on_cpu_samples,
        s.off_cpu_samples,
        folded.bytes_per_sample(),
        folded.symbols.summary()
    );
    let left = &folded.left_out;
    // `12 samples` on CPU; `554 stacks, 2915324 µs` off CPU.
    let amount = |n: u64, weight: u64| {
        if folded.unit == "samples" {
            format!("{n} samples")
        } else {
            format!("{n} stacks, {weight} {},", folded.unit)
        }
    };
    if left.own_samples > 0 {
        eprintln!(
            "iotrace: left out {} of iotrace's own threads (iotrace-flush); --include-self shows them",
            amount(left.own_samples, left.own_weight)
        );
    }
    if left.idle_threads > 0 {
        eprintln!(
            "iotrace: left out {} idle threads, {} (--no-idle)",
            left.idle_threads,
            amount(left.idle_samples, left.idle_weight).trim_end_matches(',')
        );
    }
    if let Some(t) = &folded.truncated {
        eprintln!("iotrace: warning: {}: {t}", trace.display());
    }
    if s.contexts_forced > 0 {
        eprintln!(
            "iotrace: warning: {} samples were given a span context before all their thread's span events arrived",
            s.contexts_forced
        );
    }
}

/// Folded lines of a trace (with the kind and filters) or of a folded file.
fn folded_of(
    path: &Path,
    opts: &fg::Options,
) -> anyhow::Result<(Vec<(String, u64)>, &'static str)> {
    let mut magic = [0u8; 8];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("reading {}", path.display()))?;
    if n == 8 && magic == iotrace_collector::format::MAGIC {
        let folded = fg::fold_file(path, opts)?;
        return Ok((folded.lines, folded.unit));
    }
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let lines = fg::read_folded(BufReader::new(file))
        .with_context(|| format!("reading folded stacks from {}", path.display()))?;
    if lines.is_empty() {
        anyhow::bail!(
            "{}: neither an iotrace trace nor folded stacks (`frame;frame weight` lines)",
            path.display()
        );
    }
    Ok((lines, "samples"))
}

fn run_diff(
    args: &FlamegraphArgs,
    opts: &fg::Options,
    before: &Path,
    after: &Path,
) -> anyhow::Result<ExitCode> {
    let (b, unit) = folded_of(before, opts)?;
    let (a, _) = folded_of(after, opts)?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(if args.folded { "-" } else { "diff.svg" }));
    let mut out = open_output(&output)?;
    let result = if args.folded {
        // The differential input format: `stack before after`.
        let mut both: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for (s, n) in &b {
            both.entry(s).or_default().0 += n;
        }
        for (s, n) in &a {
            both.entry(s).or_default().1 += n;
        }
        both.iter()
            .try_for_each(|(s, (x, y))| writeln!(out, "{s} {x} {y}"))
    } else {
        let title = args.title.clone().unwrap_or_else(|| {
            format!(
                "{} difference: {} → {}",
                opts.kind.name(),
                before.display(),
                after.display()
            )
        });
        fg::write_diff_svg(&b, &a, &title, unit, &mut out)
    };
    finish_write(result.and_then(|_| out.flush()), &output)?;
    eprintln!(
        "iotrace: {}: differential {} flamegraph, {} stacks before, {} after",
        output.display(),
        opts.kind.name(),
        b.len(),
        a.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The on-CPU and off-CPU SVGs of one `compare` strategy, as `DIR/STRATEGY-oncpu.svg` and
/// `DIR/STRATEGY-offcpu.svg`. A graph that cannot be drawn (no samples) is skipped with a
/// warning; the table does not depend on it.
pub fn write_compare_svgs(trace: &Path, dir: &Path, strategy: &str) {
    for kind in [Kind::OnCpu, Kind::OffCpu] {
        let opts = fg::Options::new(kind);
        let path = dir.join(format!("{strategy}-{}.svg", kind.name()));
        let result = fg::fold_file(trace, &opts)
            .map_err(anyhow::Error::from)
            .and_then(|folded| {
                let file = File::create(&path)?;
                fg::write_svg(&folded, &opts, std::io::BufWriter::new(file))?;
                Ok(())
            });
        if let Err(e) = result {
            eprintln!("iotrace: warning: {}: {e:#}", path.display());
        }
    }
}
