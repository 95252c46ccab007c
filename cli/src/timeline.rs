//! `iotrace timeline`: arguments in, the collector's timeline options out, and one line on
//! stderr saying what was written. Also what `export` shares with it: the window and task
//! options ([`WindowArgs`]), `--blocked-share`'s parser, and the error and warning lines.

use std::path::PathBuf;
use std::process::ExitCode;

use iotrace_collector::tasks::{DiagnosisOptions, TaskOptions};
use iotrace_collector::timeline::{self, TimelineError, TimelineOptions};

pub const EXAMPLES: &str = "\
EXAMPLES:
    One page with every thread and task through time; open it in any browser:
        iotrace timeline t.data -o timeline.html
    Only two seconds of a long recording:
        iotrace timeline t.data --from 10s --to 12s -o busy.html
";

/// Options shared by `timeline` and `export`.
#[derive(clap::Args)]
pub struct WindowArgs {
    /// Only from this time on, since the start of the recording (e.g. 1.5s, 200ms).
    #[arg(long, value_parser = crate::time::parse_ns, value_name = "TIME")]
    from: Option<u64>,
    /// Only up to this time, since the start of the recording.
    #[arg(long, value_parser = crate::time::parse_ns, value_name = "TIME")]
    to: Option<u64>,
    /// Shortest off-CPU stretch inside a poll that marks the poll as blocking its worker.
    #[arg(long, value_parser = crate::time::parse_ns, default_value = "100us", value_name = "TIME")]
    blocked_threshold: u64,
    /// Warn about a task when such stretches add up to this share of its poll time.
    #[arg(long, value_parser = parse_percent, default_value = "5%", value_name = "PERCENT")]
    blocked_share: f64,
    /// A wake→poll delay at least this long is a task waiting for a worker (warned about when
    /// its p99 reaches it, mostly behind blocked or long polls).
    #[arg(long, value_parser = crate::time::parse_ns, default_value = "1ms", value_name = "TIME")]
    sched_delay: u64,
    /// A poll on CPU at least this long without an await is a long_poll diagnosis.
    #[arg(long, value_parser = crate::time::parse_ns, default_value = "10ms", value_name = "TIME")]
    long_poll: u64,
}

impl WindowArgs {
    pub fn options(&self) -> TimelineOptions {
        TimelineOptions {
            tasks: TaskOptions {
                blocked_threshold_ns: self.blocked_threshold,
                warn_share: self.blocked_share,
                sched_delay_ns: self.sched_delay,
                diagnosis: DiagnosisOptions {
                    long_poll_ns: self.long_poll,
                    ..Default::default()
                },
            },
            from_ns: self.from,
            to_ns: self.to,
            max_intervals: timeline::DEFAULT_MAX_INTERVALS,
            max_wakes: timeline::DEFAULT_MAX_WAKES,
        }
    }
}

#[derive(clap::Args)]
pub struct TimelineArgs {
    /// Trace file to read.
    #[arg(default_value = "iotrace.data")]
    file: PathBuf,
    /// The HTML file to write (self-contained: no network needed to view it).
    #[arg(short, long, default_value = "timeline.html", value_name = "PATH")]
    output: PathBuf,
    /// Most stretches to put in the page; past it, runs of short ones are merged, each colored
    /// by the state that filled most of it (0: no limit).
    #[arg(long, default_value_t = timeline::DEFAULT_MAX_INTERVALS, value_name = "N")]
    max_intervals: u64,
    #[command(flatten)]
    window: WindowArgs,
}

/// `5%`, `5` or `0.5%`, as a share between 0 and 1.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value: f64 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| "expected a percentage like 5% or 0.5%".to_owned())?;
    if !(0.0..=100.0).contains(&value) {
        return Err("not between 0% and 100%".to_owned());
    }
    Ok(value / 100.0)
}

pub fn warn_truncated(file: &std::path::Path, truncated: Option<&str>) {
    if let Some(t) = truncated {
        eprintln!("iotrace: warning: {}: {t}", file.display());
    }
}

/// Errors that already name the trace they are about (reading it failed, or it has nothing to
/// export): `exporting TRACE: TRACE: …` would name it twice.
pub trait NamesTrace: std::error::Error + Send + Sync + Sized + 'static {
    fn names_trace(&self) -> bool;
}

impl NamesTrace for TimelineError {
    fn names_trace(&self) -> bool {
        matches!(self, TimelineError::Format(_))
    }
}

/// `result`, its error prefixed with `what` unless it names the trace already.
pub fn about<T, E: NamesTrace>(
    result: Result<T, E>,
    what: impl FnOnce() -> String,
) -> anyhow::Result<T> {
    result.map_err(|e| {
        if e.names_trace() {
            anyhow::Error::new(e)
        } else {
            anyhow::Error::new(e).context(what())
        }
    })
}

pub fn run(args: TimelineArgs) -> anyhow::Result<ExitCode> {
    let opts = TimelineOptions {
        max_intervals: args.max_intervals,
        ..args.window.options()
    };
    let out = about(
        timeline::write_timeline(&args.file, &args.output, &opts),
        || format!("drawing the timeline of {}", args.file.display()),
    )?;
    eprintln!(
        "iotrace: wrote {} ({}): {} threads, {} tasks, {} intervals, {} wakes",
        args.output.display(),
        iotrace_collector::report::bytes(out.bytes),
        out.threads,
        out.tasks,
        out.intervals,
        out.wakes
    );
    warn_truncated(&args.file, out.truncated.as_deref());
    if out.drawn < out.intervals {
        eprintln!(
            "iotrace: merged short stretches to draw {} of them (--max-intervals); use --from/--to to see every one",
            out.drawn
        );
    }
    if out.wakes_left_out > 0 {
        eprintln!(
            "iotrace: {} more wakes not drawn (an even share of them is kept); use --from/--to to see every one",
            out.wakes_left_out
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("5%"), Ok(0.05));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert!(parse_percent("101%").is_err());
    }
}
