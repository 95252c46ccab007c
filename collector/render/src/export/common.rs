//! What the pprof, Firefox and OTLP exports share: their error, their outcome, and the time
//! window.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use iotrace_analysis::intervals::TimelineOptions;
use iotrace_analysis::stacks::StackFold;
use iotrace_trace::FormatError;

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

/// Protobuf wire encoding of the few field types the pprof and Perfetto exports write.
#[derive(Default)]
pub(super) struct Pb(pub(super) Vec<u8>);

impl Pb {
    pub(super) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A varint field (int64 / uint64 / bool); zero is proto3's default and not written
    /// (pprof).
    pub(super) fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.varint(u64::from(field) << 3);
            self.varint(v);
        }
    }

    pub(super) fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    /// A varint field written even when zero: proto2 fields have presence (Perfetto).
    pub(super) fn put_uint(&mut self, field: u32, v: u64) {
        self.varint(u64::from(field) << 3);
        self.varint(v);
    }

    /// [`Pb::put_uint`] of an int32/int64: two's complement.
    pub(super) fn put_int(&mut self, field: u32, v: i64) {
        self.put_uint(field, v as u64);
    }

    /// A fixed64 field (wire type 1), written even when zero.
    pub(super) fn fixed64(&mut self, field: u32, v: u64) {
        self.varint((u64::from(field) << 3) | 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A length-delimited field: bytes, a string, an embedded message or a packed list.
    pub(super) fn bytes(&mut self, field: u32, b: &[u8]) {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    pub(super) fn packed(&mut self, field: u32, values: impl Iterator<Item = u64>) {
        let mut p = Pb::default();
        for v in values {
            p.varint(v);
        }
        if !p.0.is_empty() {
            self.bytes(field, &p.0);
        }
    }
}
