//! The `iotrace` command. Thin by design: it turns arguments into the collector's option
//! structs and prints what the collector returns. Not a library.

#![deny(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod compare;
mod flamegraph;
mod time;
mod timeline;
use iotrace_collector::perf::CallGraph;
use iotrace_collector::{analysis, record, report};

const EXAMPLES: &str = "\
EXAMPLES:
    Record a command and print a perf-stat-like summary:
        iotrace record -- dd if=/dev/zero of=/dev/null bs=1 count=20000
    Attach to a running server for 10 s (it keeps running):
        iotrace record -p 1234 --duration 10s
    Record into a chosen file, quietly, then read the report as JSON:
        iotrace record -q -o t.data -- ./server --port 8080
        iotrace report --json t.data
    Without perf (non-root, or to compare):
        iotrace record --no-perf -- make -j2
    Flamegraphs of a recording: on-CPU, off-CPU (time blocked), by async task:
        iotrace flamegraph t.data -o cpu.svg
        iotrace flamegraph t.data --kind async -o async.svg
    Every thread and task through time, in a browser or in ui.perfetto.dev:
        iotrace timeline t.data -o timeline.html
        iotrace export t.data --format perfetto -o trace.json
    The four I/O strategies (and async done wrong) under the same load, side by side:
        iotrace compare
    Load any HTTP/1.1 server on loopback:
        iotrace load http://127.0.0.1:8080/ --connections 64 --duration 5s
";

/// Async-aware profiling and tracing for Linux: where do threads block, where do futures yield?
#[derive(Parser)]
#[command(name = "iotrace", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Name each frame by its function in the symbol table only: no functions inlined at it
    /// (shown as `name (inlined)`, innermost last) and no `file:line` from DWARF. Faster on big
    /// binaries; flamegraphs then merge inlined code into its caller, as before.
    #[arg(long, global = true)]
    no_inline: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command under perf events and write a trace file; or attach to running
    /// processes (-p).
    ///
    /// The command starts held until its events are attached, is measured from exec to exit,
    /// and every thread and child process it creates is followed. Ctrl-C and SIGTERM are
    /// forwarded to it (a third Ctrl-C sends SIGKILL). iotrace exits with the command's status
    /// (128+N when it died of signal N).
    ///
    /// The recording ends when the command exits; processes it started that live on (a
    /// daemon) are named in the report and not recorded after. If iotrace itself is killed
    /// (SIGKILL, OOM), the command gets SIGKILL too, and the file reads back as truncated. If
    /// the trace cannot be written (disk full), iotrace prints one error line, stops
    /// recording, lets the command run to its end and exits with its status.
    ///
    /// With -p PID, iotrace attaches to running processes instead: every existing thread, and
    /// every thread or child created while recording, with switches, exact syscall counts and
    /// stacks as for a launched command; a program linking iotrace-layer starts sending its
    /// spans when the recorder attaches. Ctrl-C, SIGTERM or --duration ends the recording and
    /// detaches, leaving the processes running; iotrace then exits 0.
    #[command(
        after_help = "EXAMPLES:\n    iotrace record -- sleep 1\n    iotrace record -o t.data -q -- ./server --port 8080\n    iotrace record -p 1234 --duration 10s -o server.data\n    iotrace record -p \"$(pidof nginx | tr ' ' ,)\"   # until Ctrl-C\n"
    )]
    Record(RecordArgs),
    /// Summarize a trace file: how the program ended, context switches, syscalls, threads,
    /// where threads blocked, tasks, and each task that blocked its worker thread.
    #[command(
        after_help = "EXAMPLES:\n    iotrace report\n    iotrace report --json t.data | jq '.syscalls[:3]'\n    iotrace report t.data --blocked-threshold 1ms\n    iotrace report --json t.data | jq '.warnings[].message'\n"
    )]
    Report(ReportArgs),
    /// Drive an HTTP/1.1 server on loopback with keep-alive connections and report throughput
    /// and latency (p50/p90/p99/max).
    #[command(
        after_help = "EXAMPLES:\n    iotrace load 'http://127.0.0.1:8080/work?io_ms=1&cpu_us=50' -c 64 -d 5s\n    iotrace load http://localhost:8080/ --requests 10000 --json\n"
    )]
    Load(LoadArgs),
    /// Run each demo server under `iotrace record` with the same load and table the costs per
    /// request; or, given trace files, table those.
    ///
    /// Per strategy: req/s, p50 and p99 latency, voluntary and involuntary context switches per
    /// request, syscalls per request with the top three, CPU time per request, peak RSS and
    /// threads. Into --out go each strategy's trace, report, on-CPU and off-CPU flamegraphs,
    /// timeline and log, and the table with its JSON.
    #[command(
        after_help = "EXAMPLES:\n    iotrace compare\n    iotrace compare --strategies threads,tokio --connections 1000 --duration 5s\n    iotrace compare iotrace-compare/threads.iotrace iotrace-compare/tokio.iotrace --json\n"
    )]
    Compare(CompareArgs),
    /// Draw a flamegraph of a trace: on-CPU, off-CPU (weighted by time blocked), wall (both),
    /// or async (samples under the task and spans active on their thread); or the difference
    /// between two traces.
    ///
    /// Symbols are resolved offline from the mappings recorded in the trace, so the program
    /// may have exited; its files must still be there. Frames without a name say why (e.g.
    /// `[unknown: libfoo.so]`) and are counted on stderr.
    #[command(after_help = flamegraph::EXAMPLES)]
    Flamegraph(flamegraph::FlamegraphArgs),
    /// Write one self-contained HTML page (no network) with a track per thread and per task,
    /// colored by state: running, runnable, blocked; polling, blocked in a poll, scheduled, idle.
    ///
    /// Zoom with the wheel, pan by dragging, hover for the state, its duration, the syscall a
    /// thread blocked in and what a poll's worker did. Stays smooth with millions of intervals.
    #[command(after_help = timeline::TIMELINE_EXAMPLES)]
    Timeline(timeline::TimelineArgs),
    /// Export a trace for the tools you already run: Chrome trace JSON for ui.perfetto.dev,
    /// pprof for go tool pprof / Pyroscope / Parca, the Firefox Profiler's format, OTLP/JSON
    /// spans for an OpenTelemetry collector (docs/EXPORT.md).
    #[command(after_help = timeline::EXPORT_EXAMPLES)]
    Export(timeline::ExportArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// `http://HOST[:PORT]/PATH?QUERY`; HOST must be a loopback address.
    url: String,
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Stop after this long (e.g. 500ms, 5s, 1m). Default 5s when --requests is not given.
    #[arg(short, long, value_parser = time::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Per-request timeout (a timeout counts as an error).
    #[arg(long, default_value = "10s", value_parser = time::parse_duration)]
    timeout: std::time::Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Existing traces to table instead of running the demos.
    traces: Vec<PathBuf>,
    /// Strategies to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "threads,green,epoll,tokio,tokio-blocking"
    )]
    strategies: Vec<String>,
    /// Concurrent keep-alive connections of the load.
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Milliseconds each request waits, as if for a downstream service.
    #[arg(long, default_value_t = 1)]
    io_ms: u64,
    /// Microseconds of CPU each request burns.
    #[arg(long, default_value_t = 50)]
    cpu_us: u64,
    /// Load duration per strategy (e.g. 3s).
    #[arg(short, long, default_value = "3s", value_parser = time::parse_duration)]
    duration: std::time::Duration,
    /// Folder for traces, logs, table.txt and compare.json.
    #[arg(short, long, default_value = "iotrace-compare")]
    out: PathBuf,
    /// Print the table as JSON: {"rows": [...]}.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CallGraphArg {
    Auto,
    Fp,
    FpCfi,
    Dwarf,
}

#[derive(clap::Args)]
struct RecordArgs {
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
    #[arg(short, long, value_parser = time::parse_duration)]
    duration: Option<std::time::Duration>,
    /// The command to run, after `--`.
    #[arg(
        trailing_var_arg = true,
        required_unless_present = "pids",
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Trace file to read.
    #[arg(default_value = "iotrace.data")]
    file: PathBuf,
    /// Print JSON (schema: collector/REPORT.md) instead of text.
    #[arg(long)]
    json: bool,
    /// Shortest off-CPU stretch inside a poll that counts as the task blocking its worker
    /// thread (e.g. 100us, 1ms).
    #[arg(long, value_parser = time::parse_ns, default_value = "100us", value_name = "TIME")]
    blocked_threshold: u64,
    /// Warn about a task when such stretches add up to this share of its time in polls
    /// (0% warns about every task with one) and it blocked in two polls or more, or once for
    /// ten times the threshold.
    #[arg(long, value_parser = timeline::parse_percent, default_value = "5%", value_name = "PERCENT")]
    blocked_share: f64,
}

/// Write to stdout; a closed pipe (`| head`) ends the program quietly.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

fn cmd_record(args: RecordArgs) -> anyhow::Result<ExitCode> {
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

fn cmd_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let opts = iotrace_collector::tasks::TaskOptions {
        blocked_threshold_ns: args.blocked_threshold,
        warn_share: args.blocked_share,
    };
    let summary =
        analysis::summarize_file_with(&args.file, &opts, &mut iotrace_collector::tasks::NoSink)?;
    if args.json {
        print_stdout(&report::json(&summary))?;
        print_stdout("\n")?;
    } else {
        print_stdout(&report::text(&summary))?;
    }
    if let Some(t) = &summary.truncated {
        eprintln!("iotrace: warning: {}: {t}", args.file.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let cfg = iotrace_load::LoadConfig {
        url: args.url,
        connections: args.connections,
        duration: args.duration,
        requests: args.requests,
        timeout: args.timeout,
    };
    let report = iotrace_load::run(&cfg)?;
    if args.json {
        print_stdout(&serde_json::to_string_pretty(&report)?)?;
        print_stdout("\n")?;
    } else {
        print_stdout(&report.to_text())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    use iotrace_collector::compare as table;
    let rows = if args.traces.is_empty() {
        for s in &args.strategies {
            if !compare::STRATEGIES.contains(&s.as_str()) {
                anyhow::bail!(
                    "unknown strategy `{s}`; choose from {}",
                    compare::STRATEGIES.join(", ")
                );
            }
        }
        let plan = compare::Plan {
            strategies: args.strategies,
            connections: args.connections,
            io_ms: args.io_ms,
            cpu_us: args.cpu_us,
            duration: args.duration,
            out_dir: args.out.clone(),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        let rows = compare::run(&plan)?;
        for (name, text) in [
            ("table.txt", table::table(&rows)),
            ("compare.json", table::json(&rows)),
        ] {
            let path = args.out.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        rows
    } else {
        compare::from_traces(&args.traces)?
    };
    if args.json {
        print_stdout(&table::json(&rows))?;
        print_stdout("\n")?;
    } else {
        print_stdout(&table::table(&rows))?;
        if args.traces.is_empty() {
            print_stdout(&format!(
                "\nwrote {}/: table.txt, compare.json, and per strategy STRATEGY.iotrace (trace), STRATEGY.iotrace.load.json, STRATEGY-report.txt, STRATEGY-oncpu.svg, STRATEGY-offcpu.svg, STRATEGY-timeline.html, STRATEGY.log\n",
                args.out.display()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    iotrace_collector::symbolize::set_inline(!cli.no_inline);
    let result = match cli.command {
        Command::Record(a) => cmd_record(a),
        Command::Report(a) => cmd_report(a),
        Command::Load(a) => cmd_load(a),
        Command::Compare(a) => cmd_compare(a),
        Command::Flamegraph(a) => flamegraph::run(a),
        Command::Timeline(a) => timeline::run_timeline(a),
        Command::Export(a) => timeline::run_export(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iotrace: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
