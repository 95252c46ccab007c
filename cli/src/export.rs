//! `iotrace export`: arguments in, the collector's exporter for the chosen format run, and one
//! line on stderr saying what was written. The window and task options, and the error and
//! warning lines, are `timeline`'s ([`crate::timeline`]).

use std::path::PathBuf;
use std::process::ExitCode;

use iotrace_collector::export::{self, ExportFormat};

use crate::timeline::{about, warn_truncated, NamesTrace, WindowArgs};

pub const EXAMPLES: &str = "\
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

impl NamesTrace for export::ExportError {
    fn names_trace(&self) -> bool {
        matches!(
            self,
            export::ExportError::Format(_) | export::ExportError::Empty(_)
        )
    }
}

/// What the Perfetto exports left out of the wakes, for the user.
fn wakes_note(out: &export::ExportOutcome) -> Vec<String> {
    if out.wakes_left_out == 0 {
        return Vec::new();
    }
    vec![format!(
        "{} more wakes left out of the flows (an even share of them is kept); use --from/--to to see every one",
        out.wakes_left_out
    )]
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
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
            let line = format!(
                "{} trace events, {} wakes as flows; open it in ui.perfetto.dev",
                out.events, out.flows
            );
            let notes = wakes_note(&out);
            (out.truncated, notes, (out.bytes, line))
        }
        FormatArg::Pftrace => {
            let out = about(
                export::export(&args.file, &output, ExportFormat::Pftrace, &opts),
                context,
            )?;
            let line = format!(
                "{} trace packets, {} wakes as flows; open it in ui.perfetto.dev",
                out.events, out.flows
            );
            let notes = wakes_note(&out);
            (out.truncated, notes, (out.bytes, line))
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
