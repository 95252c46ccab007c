//! What the pprof, Firefox and OTLP exports share: their error, their outcome, and the time
//! window.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::format::FormatError;
use crate::stacks::StackFold;
use crate::timeline::TimelineOptions;

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Format(#[from] FormatError),
    // The OS error is part of the message and deliberately not a source (see TimelineError).
    #[error("writing {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error("the window {from_ns} ns..{to_ns} ns is empty")]
    Window { from_ns: u64, to_ns: u64 },
    /// Nothing to export, and why.
    #[error("{0}")]
    Empty(String),
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct FormatOutcome {
    /// Samples (pprof: distinct labelled stacks; Firefox: samples), or spans (OTLP).
    pub items: u64,
    /// Uncompressed bytes written.
    pub bytes: u64,
    /// Set when the trace is damaged or unfinished.
    pub truncated: Option<String>,
    /// What was left out, for the user.
    pub notes: Vec<String>,
}

/// `--from/--to`, relative to the start, checked.
pub(crate) fn window(opts: &TimelineOptions) -> Result<(u64, u64), ExportError> {
    let from = opts.from_ns.unwrap_or(0);
    let to = opts.to_ns.unwrap_or(u64::MAX / 4);
    if to <= from {
        return Err(ExportError::Window {
            from_ns: from,
            to_ns: to,
        });
    }
    Ok((from, to))
}

/// A relative window made absolute (CLOCK_MONOTONIC ns) from the recording's start.
pub(crate) fn absolute(start_ns: u64, (from, to): (u64, u64)) -> (u64, u64) {
    (start_ns.saturating_add(from), start_ns.saturating_add(to))
}

/// Why a trace gave no stack samples to export.
pub(crate) fn no_samples(trace: &Path, fold: &StackFold, own_left_out: u64) -> String {
    let s = &fold.stats;
    let why = if s.on_cpu_samples + s.off_cpu_samples == 0 {
        "it was recorded with --no-samples, without perf, or by an older iotrace".to_owned()
    } else if own_left_out > 0 {
        format!("only iotrace's own thread had stacks ({own_left_out} left out)")
    } else {
        "none fall in --from/--to".to_owned()
    };
    format!("{}: no stack samples to export ({why})", trace.display())
}

/// A writer that counts the bytes written through it (`bytes`), for the outcome line.
pub(super) struct Counting<W: Write> {
    pub(super) w: W,
    pub(super) bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}
