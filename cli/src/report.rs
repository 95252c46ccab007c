//! `iotrace report`: summarize a trace file as text or JSON on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use iotrace_collector::{analysis, report};

use crate::print_stdout;

pub const EXAMPLES: &str = "EXAMPLES:\n    iotrace report\n    iotrace report --json t.data | jq '.syscalls[:3]'\n    iotrace report t.data --blocked-threshold 1ms\n    iotrace report --json t.data | jq '.tasks[] | {name, yield_sites, woken_by}'\n    iotrace report --json t.data | jq '.warnings[].message'\n    iotrace report --json t.data | jq -r '.diagnoses[] | \"\\(.kind)\\t\\(.line)\"'\n";

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Trace file to read.
    #[arg(default_value = "iotrace.data")]
    file: PathBuf,
    /// Print JSON (schema: collector/REPORT.md) instead of text.
    #[arg(long)]
    json: bool,
    /// Shortest off-CPU stretch inside a poll that counts as the task blocking its worker
    /// thread (e.g. 100us, 1ms).
    #[arg(long, value_parser = crate::time::parse_ns, default_value = "100us", value_name = "TIME")]
    blocked_threshold: u64,
    /// Warn about a task when such stretches add up to this share of its time in polls
    /// (0% warns about every task with one) and it blocked in two polls or more, or once for
    /// ten times the threshold.
    #[arg(long, value_parser = crate::timeline::parse_percent, default_value = "5%", value_name = "PERCENT")]
    blocked_share: f64,
    /// A wake→poll delay at least this long counts as the task waiting for a worker: what held
    /// the workers meanwhile is looked at, and a task whose p99 delay reaches it, mostly
    /// behind polls that blocked in the kernel or ran long on CPU, gets a scheduling_delay
    /// warning.
    #[arg(long, value_parser = crate::time::parse_ns, default_value = "1ms", value_name = "TIME")]
    sched_delay: u64,
    /// A poll on CPU at least this long without an await is a long_poll diagnosis.
    #[arg(long, value_parser = crate::time::parse_ns, default_value = "10ms", value_name = "TIME")]
    long_poll: u64,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let opts = iotrace_collector::tasks::TaskOptions {
        blocked_threshold_ns: args.blocked_threshold,
        warn_share: args.blocked_share,
        sched_delay_ns: args.sched_delay,
        diagnosis: iotrace_collector::tasks::DiagnosisOptions {
            long_poll_ns: args.long_poll,
            ..Default::default()
        },
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
