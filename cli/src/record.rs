//! `iotrace record`: arguments in, the collector's `RecordOptions` out; the report printed
//! when the command ends, and the command's exit status passed on.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use iotrace_collector::perf::CallGraph;
use iotrace_collector::{analysis, record, report};

pub const EXAMPLES: &str = "EXAMPLES:\n    iotrace record -- sleep 1\n    iotrace record -o t.data -q -- ./server --port 8080\n    iotrace record -p 1234 --duration 10s -o server.data\n    iotrace record -p \"$(pidof nginx | tr ' ' ,)\"   # until Ctrl-C\n";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CallGraphArg {
    Auto,
    Fp,
    FpCfi,
    Dwarf,
}

#[derive(clap::Args)]
pub struct RecordArgs {
    /// Trace file to write.
    #[arg(short, long, default_value = "iotrace.data")]
    output: PathBuf,
    /// Do not print the report when the command ends.
    #[arg(short, long)]
    quiet: bool,
    /// Do not use perf events: only /proc and wait4 (per-thread switches, CPU time, RSS).
    #[arg(long)]
    no_perf: bool,
    /// How often to read /proc for RSS and thread names, in milliseconds.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    proc_interval: u64,
    /// perf ring buffer per CPU, in KiB (rounded up to a power of two). Larger rings lose
    /// fewer records on bursty programs; lost records are always counted and reported.
    #[arg(long, default_value_t = 8192, value_name = "KIB")]
    ring_kib: usize,
    /// On-CPU stack samples per second of CPU time (cpu-clock), for flamegraphs.
    #[arg(short = 'F', long = "freq", default_value_t = 999, value_name = "HZ")]
    frequency: u64,
    /// Take no stack samples (neither on-CPU nor at switch-outs): a smaller trace, no
    /// flamegraphs.
    #[arg(long)]
    no_samples: bool,
    /// Count syscalls with a perf sample per syscall instead of in the kernel (BPF). Slower
    /// for the program (a ring write per syscall: ~20% of nginx's CPU), but each switch-out's
    /// syscall is then the last one the thread entered rather than read off its kernel stack.
    /// Used anyway where the BPF counter cannot be loaded.
    #[arg(long)]
    syscall_samples: bool,
    /// Do not record who woke whom. Wakeups come from the kernel's sched:sched_waking
    /// tracepoint, for the wakeups a recorded thread performs (a mutex unlock, a pipe or socket
    /// write, an interrupt run in its time): each costs the program a ring write and the trace
    /// about 6 bytes. They name the thread that released a lock: the lock_contention
    /// diagnosis needs them.
    #[arg(long)]
    no_wakeups: bool,
    /// How user stacks are walked. `fp`: the kernel's frame-pointer walk only (cheapest; a
    /// frameless leaf such as glibc's `clock_nanosleep` hides its caller). `fp-cfi`: frame
    /// pointers, with the frames at the leaf unwound from the binary's CFI (.eh_frame) out of
    /// a small copy of the stack taken with each sample. `dwarf`: the whole stack from CFI,
    /// for binaries built without frame pointers (as `perf record --call-graph dwarf`).
    /// `auto`: `fp-cfi` if the program's executable keeps frame pointers, else `dwarf`. The
    /// stack copies are unwound by the recorder and never written to the trace.
    #[arg(long, value_enum, default_value_t = CallGraphArg::Auto, value_name = "MODE")]
    call_graph: CallGraphArg,
    /// Bytes of user stack copied with each sample, for `dwarf` (default 8192 for on-CPU
    /// samples and 4096 at switch-outs, which come once per blocking call; this sets both)
    /// and for switch-out stacks with `fp-cfi` (default 256; its on-CPU samples, at most -F a
    /// second, copy at least 2048). At most 65528. Deeper stacks need more; more costs the
    /// program and the rings more. Stacks cut short by it end in
    /// `[unwind stopped: stack copy too small]` (dwarf).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(8..=65528))]
    stack_copy: Option<u32>,
    /// Attach to running processes instead of launching a command: their existing threads and
    /// every thread or child they start while recorded. Ends at Ctrl-C, SIGTERM or
    /// --duration, and detaches, leaving them running (they are never signalled or ptraced).
    #[arg(
        short = 'p',
        long = "pid",
        value_name = "PID[,PID...]",
        conflicts_with = "command"
    )]
    pids: Option<String>,
    /// Stop recording after this long (e.g. 500ms, 3s, 1m). With a command, it then gets
    /// SIGTERM as with Ctrl-C, and the recording ends when it exits.
    #[arg(short, long, value_parser = crate::time::parse_duration)]
    duration: Option<std::time::Duration>,
    /// The command to run, after `--`.
    #[arg(
        trailing_var_arg = true,
        required_unless_present = "pids",
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let mut opts = record::RecordOptions::new(args.command, args.output);
    if let Some(pids) = &args.pids {
        match iotrace_collector::attach::parse_pids(pids) {
            Ok(p) => opts.attach = p,
            Err(e) => {
                eprintln!("iotrace: error: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    opts.duration = args.duration;
    opts.perf = !args.no_perf;
    opts.perf_options.ring_bytes = (args.ring_kib.clamp(4, 1 << 20) << 10).next_power_of_two();
    opts.proc_interval = std::time::Duration::from_millis(args.proc_interval.max(1));
    opts.perf_options.frequency_hz = if args.no_samples { 0 } else { args.frequency };
    opts.perf_options.off_cpu_stacks = !args.no_samples;
    opts.perf_options.syscall_samples = args.syscall_samples;
    opts.perf_options.wakeups = !args.no_wakeups;
    // A copy is a whole number of u64s (the kernel rounds down otherwise).
    let copy = |default: u32| args.stack_copy.map_or(default, |b| b & !7);
    opts.auto_call_graph = args.call_graph == CallGraphArg::Auto;
    opts.stack_copy = args.stack_copy.map(|b| b & !7);
    opts.perf_options.call_graph = match args.call_graph {
        CallGraphArg::Fp => CallGraph::Fp,
        CallGraphArg::Auto | CallGraphArg::FpCfi => CallGraph::FpCfi {
            copy: copy(CallGraph::LEAF_COPY),
        },
        CallGraphArg::Dwarf => CallGraph::dwarf(opts.stack_copy),
    };
    opts.defer_teardown = true;
    let outcome = match record::record(&opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("iotrace: error: {e}");
            return Ok(ExitCode::from(e.exit_code() as u8));
        }
    };
    if !args.quiet {
        let summary = analysis::summarize_file(&outcome.trace)
            .with_context(|| format!("reading back {}", outcome.trace.display()))?;
        eprint!("\n{}", report::text(&summary));
        eprintln!(
            " trace: {} ({})",
            outcome.trace.display(),
            report::bytes(outcome.bytes)
        );
    }
    if !opts.attach.is_empty() {
        // Detaching is success, whatever became of the processes.
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(outcome.exit.shell_code().clamp(0, 255) as u8))
}
