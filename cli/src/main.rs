//! The `iotrace` command. Thin by design: it turns arguments into the collector's option
//! structs and prints what the collector returns. Not a library.
//!
//! This file holds the top-level parser, the list of commands (with their help text) and
//! `main`; each command's arguments and its `run` are in the module of the same name.

#![deny(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod compare;
mod export;
mod flamegraph;
mod load;
mod record;
mod report;
mod time;
mod timeline;

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
    Flamegraphs of a recording: on-CPU, off-CPU (time blocked), by async task, where tasks wait:
        iotrace flamegraph t.data -o cpu.svg
        iotrace flamegraph t.data --kind async -o async.svg
        iotrace flamegraph t.data --kind idle -o idle.svg
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
    #[command(after_help = record::EXAMPLES)]
    Record(record::RecordArgs),
    /// Summarize a trace file: how the program ended, context switches, syscalls, threads,
    /// where threads blocked, tasks, and each task that blocked its worker thread.
    #[command(after_help = report::EXAMPLES)]
    Report(report::ReportArgs),
    /// Drive an HTTP/1.1 server on loopback with keep-alive connections and report throughput
    /// and latency (p50/p90/p99/max).
    #[command(after_help = load::EXAMPLES)]
    Load(load::LoadArgs),
    /// Run each demo server under `iotrace record` with the same load and table the costs per
    /// request; or, given trace files, table those.
    ///
    /// Per strategy: req/s, p50 and p99 latency, voluntary and involuntary context switches per
    /// request, syscalls per request with the top three, CPU time per request, peak RSS and
    /// threads. Into --out go each strategy's trace, report, on-CPU and off-CPU flamegraphs,
    /// timeline and log, and the table with its JSON.
    #[command(after_help = compare::EXAMPLES)]
    Compare(compare::CompareArgs),
    /// Draw a flamegraph of a trace: on-CPU, off-CPU (weighted by time blocked), wall (both),
    /// async (samples under the task and spans active on their thread), idle (each task's
    /// idle time under the await it yielded at), or wake (each task's wake→poll delay under its
    /// waker); or the difference between two traces.
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
    #[command(after_help = timeline::EXAMPLES)]
    Timeline(timeline::TimelineArgs),
    /// Export a trace for the tools you already run: Chrome trace JSON for ui.perfetto.dev,
    /// pprof for go tool pprof / Pyroscope / Parca, the Firefox Profiler's format, OTLP/JSON
    /// spans for an OpenTelemetry collector (docs/EXPORT.md).
    #[command(after_help = export::EXAMPLES)]
    Export(export::ExportArgs),
}

/// Write to stdout; a closed pipe (`| head`) ends the program quietly.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    iotrace_collector::symbolize::set_inline(!cli.no_inline);
    let result = match cli.command {
        Command::Record(a) => record::run(a),
        Command::Report(a) => report::run(a),
        Command::Load(a) => load::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Flamegraph(a) => flamegraph::run(a),
        Command::Timeline(a) => timeline::run(a),
        Command::Export(a) => export::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iotrace: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
