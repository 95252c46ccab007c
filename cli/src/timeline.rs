//! `iotrace timeline` and `iotrace export`: arguments in, the collector's timeline and export
//! options out, and one line on stderr saying what was written.

use std::path::PathBuf;
use std::process::ExitCode;

use iotrace_collector::export::{self, ExportFormat};
use iotrace_collector::tasks::TaskOptions;
use iotrace_collector::timeline::{self, TimelineError, TimelineOptions};

pub const TIMELINE_EXAMPLES: &str = "\
EXAMPLES:
    One page with every thread and task through time; open it in any browser:
        iotrace timeline t.data -o timeline.html
    Only two seconds of a long recording:
        iotrace timeline t.data --from 10s --to 12s -o busy.html
";

pub const EXPORT_EXAMPLES: &str = "\
EXAMPLES:
    For ui.perfetto.dev or chrome://tracing (Open trace file):
        iotrace export t.data --format perfetto -o trace.json
    Half a second of it:
        iotrace export t.data --from 3s --to 3.5s -o slice.json
    The same in Perfetto's own protobuf format, a third of the bytes (long recordings):
        iotrace export t.data --format pftrace -o trace.pftrace
    On- and off-CPU stacks for pprof, Pyroscope, Parca or Grafana:
        iotrace export t.data --format pprof -o profile.pb.gz && go tool pprof -top profile.pb.gz
    For profiler.firefox.com (Load a profile from file):
        iotrace export t.data --format firefox -o profile.json
    Spans as OTLP/JSON, for an OpenTelemetry collector's OTLP/HTTP receiver:
        iotrace export t.data --format otlp -o spans.json
        curl -H 'Content-Type: application/json' -d @spans.json localhost:4318/v1/traces
";

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FormatArg {
    /// Chrome trace event JSON: thread states as slices, tasks as async tracks, /proc counters.
    Perfetto,
    /// Perfetto's own protobuf trace: the same as `perfetto` in about a third of the bytes,
    /// for recordings too long for JSON.
    Pftrace,
    /// Gzipped pprof profile.proto: on-CPU and off-CPU stacks labelled with thread, task and
    /// span.
    Pprof,
    /// The Firefox Profiler's processed format: threads, samples, and spans, task polls and
    /// blocked stretches as markers.
    Firefox,
    /// OTLP/JSON (ExportTraceServiceRequest): the program's spans with thread and task
    /// attributes.
    Otlp,
}

impl FormatArg {
    fn default_output(self) -> &'static str {
        match self {
            FormatArg::Perfetto => "trace.json",
            FormatArg::Pftrace => "trace.pftrace",
            FormatArg::Pprof => "profile.pb.gz",
            FormatArg::Firefox => "profile.json",
            FormatArg::Otlp => "spans.json",
        }
    }
}

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
}

impl WindowArgs {
    fn options(&self) -> TimelineOptions {
        TimelineOptions {
            tasks: TaskOptions {
                blocked_threshold_ns: self.blocked_threshold,
                warn_share: self.blocked_share,
            },
            from_ns: self.from,
            to_ns: self.to,
            max_intervals: timeline::DEFAULT_MAX_INTERVALS,
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

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Trace file to read.
    #[arg(default_value = "iotrace.data")]
    file: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "perfetto")]
    format: FormatArg,
    /// The file to write [default: trace.json, trace.pftrace, profile.pb.gz, profile.json or
    /// spans.json, by format].
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// firefox: the most markers (blocked stretches, polls, spans) in the profile, the longest
    /// kept; the profile is held in memory, by the exporter and by the profiler. Samples are
    /// never left out.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_markers: usize,
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

fn warn_truncated(file: &std::path::Path, truncated: Option<&str>) {
    if let Some(t) = truncated {
        eprintln!("iotrace: warning: {}: {t}", file.display());
    }
}

/// Errors that already name the trace they are about (reading it failed, or it has nothing to
/// export): `exporting TRACE: TRACE: …` would name it twice.
trait NamesTrace: std::error::Error + Send + Sync + Sized + 'static {
    fn names_trace(&self) -> bool;
}

impl NamesTrace for TimelineError {
    fn names_trace(&self) -> bool {
        matches!(self, TimelineError::Format(_))
    }
}

impl NamesTrace for export::ExportError {
    fn names_trace(&self) -> bool {
        matches!(
            self,
            export::ExportError::Format(_) | export::ExportError::Empty(_)
        )
    }
}

/// `result`, its error prefixed with `what` unless it names the trace already.
fn about<T, E: NamesTrace>(
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

pub fn run_timeline(args: TimelineArgs) -> anyhow::Result<ExitCode> {
    let opts = TimelineOptions {
        max_intervals: args.max_intervals,
        ..args.window.options()
    };
    let out = about(
        timeline::write_timeline(&args.file, &args.output, &opts),
        || format!("drawing the timeline of {}", args.file.display()),
    )?;
    eprintln!(
        "iotrace: wrote {} ({}): {} threads, {} tasks, {} intervals",
        args.output.display(),
        iotrace_collector::report::bytes(out.bytes),
        out.threads,
        out.tasks,
        out.intervals
    );
    warn_truncated(&args.file, out.truncated.as_deref());
    if out.drawn < out.intervals {
        eprintln!(
            "iotrace: merged short stretches to draw {} of them (--max-intervals); use --from/--to to see every one",
            out.drawn
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(args.format.default_output()));
    let opts = args.window.options();
    let context = || format!("exporting {}", args.file.display());
    let size = iotrace_collector::report::bytes;
    let (truncated, notes, line) = match args.format {
        FormatArg::Perfetto => {
            let out = about(
                export::export(&args.file, &output, ExportFormat::Perfetto, &opts),
                context,
            )?;
            let line = format!("{} trace events; open it in ui.perfetto.dev", out.events);
            (out.truncated, Vec::new(), (out.bytes, line))
        }
        FormatArg::Pftrace => {
            let out = about(
                export::export(&args.file, &output, ExportFormat::Pftrace, &opts),
                context,
            )?;
            let line = format!("{} trace packets; open it in ui.perfetto.dev", out.events);
            (out.truncated, Vec::new(), (out.bytes, line))
        }
        FormatArg::Pprof => {
            let out = about(export::pprof::export(&args.file, &output, &opts), context)?;
            let line = format!(
                "{} labelled stacks; read it with `go tool pprof -top {}`",
                out.items,
                output.display()
            );
            (out.truncated, out.notes, (out.bytes, line))
        }
        FormatArg::Firefox => {
            let out = about(
                export::firefox::export(&args.file, &output, &opts, args.max_markers),
                context,
            )?;
            let line = format!("{} samples; load it in profiler.firefox.com", out.items);
            (out.truncated, out.notes, (out.bytes, line))
        }
        FormatArg::Otlp => {
            let out = about(export::otlp::export(&args.file, &output, &opts), context)?;
            let line = format!(
                "{} spans; POST it to an OpenTelemetry collector's /v1/traces",
                out.items
            );
            (out.truncated, out.notes, (out.bytes, line))
        }
    };
    let (bytes, what) = line;
    eprintln!(
        "iotrace: wrote {} ({}): {what}",
        output.display(),
        size(bytes)
    );
    for note in notes {
        eprintln!("iotrace: {note}");
    }
    warn_truncated(&args.file, truncated.as_deref());
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
