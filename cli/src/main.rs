//! The `iotrace` command. Thin by design: it turns arguments into the collector's option
//! structs and prints what the collector returns. Not a library.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use iotrace_collector::{analysis, record, report};

const EXAMPLES: &str = "\
EXAMPLES:
    Record a command and print a perf-stat-like summary:
        iotrace record -- dd if=/dev/zero of=/dev/null bs=1 count=20000
    Record into a chosen file, quietly, then read the report as JSON:
        iotrace record -q -o t.data -- ./server --port 8080
        iotrace report --json t.data
    Without perf (non-root, or to compare):
        iotrace record --no-perf -- make -j2
";

/// Async-aware profiling and tracing for Linux: where do threads block, where do futures yield?
#[derive(Parser)]
#[command(name = "iotrace", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command under perf events and write a trace file.
    ///
    /// The command starts held until its events are attached, is measured from exec to exit,
    /// and every thread and child process it creates is followed. Ctrl-C and SIGTERM are
    /// forwarded to it (a third Ctrl-C sends SIGKILL). iotrace exits with the command's status
    /// (128+N when it died of signal N).
    #[command(
        after_help = "EXAMPLES:\n    iotrace record -- sleep 1\n    iotrace record -o t.data -q -- ./server --port 8080\n"
    )]
    Record(RecordArgs),
    /// Summarize a trace file: how the program ended, context switches, syscalls, threads.
    #[command(
        after_help = "EXAMPLES:\n    iotrace report\n    iotrace report --json t.data | jq '.syscalls[:3]'\n"
    )]
    Report(ReportArgs),
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
    /// The command to run, after `--`.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
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
    opts.perf = !args.no_perf;
    opts.perf_options.ring_bytes = (args.ring_kib.clamp(4, 1 << 20) << 10).next_power_of_two();
    opts.proc_interval = std::time::Duration::from_millis(args.proc_interval.max(1));
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
    Ok(ExitCode::from(outcome.exit.shell_code().clamp(0, 255) as u8))
}

fn cmd_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let summary = analysis::summarize_file(&args.file)?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(a) => cmd_record(a),
        Command::Report(a) => cmd_report(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iotrace: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
