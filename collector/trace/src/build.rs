//! Small traces made in code, for tests and examples: one builder the crates' unit tests, the
//! format's clause tests and the renderers' golden files share.
//!
//! ```
//! use iotrace_trace::build::{TraceBuilder, MS};
//! let mut t = TraceBuilder::new(42);
//! t.comm(42, 42, 0, "demo").switches(0, 42, 42, &[(MS, true, false, 230), (3 * MS, false, false, 0)]);
//! t.end(4 * MS);
//! let (records, stop) = iotrace_trace::build::read_all(&t.to_bytes()).unwrap();
//! assert_eq!(records.len(), 4);
//! assert!(stop.is_none());
//! ```

use std::io::{self, Cursor};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use iotrace_wire::{SpanBatch, SpanEvent};

use crate::{
    End, ExitStatus, FormatError, Header, Record, Rusage, Stop, Switch, Switches, TraceReader,
    TraceWriter, Wakeup, Wakeups,
};

/// A millisecond in trace time (nanoseconds).
pub const MS: u64 = 1_000_000;

/// Records in the order they will be written, starting with a header.
#[derive(Debug, Clone)]
pub struct TraceBuilder {
    pub records: Vec<Record>,
}

impl TraceBuilder {
    /// A trace of process `pid` that starts at time 0 on a 2-CPU host named `h`.
    pub fn new(pid: u32) -> Self {
        TraceBuilder {
            records: vec![Record::Header(Header {
                iotrace_version: "test".into(),
                command: vec!["demo".into()],
                pid,
                start_ns: 0,
                start_unix_ns: 0,
                hostname: "h".into(),
                cpus: 2,
            })],
        }
    }

    /// Appends any record.
    pub fn push(&mut self, record: Record) -> &mut Self {
        self.records.push(record);
        self
    }

    /// A thread's name (`exec` false: a rename, not an exec).
    pub fn comm(&mut self, pid: u32, tid: u32, time_ns: u64, name: &str) -> &mut Self {
        self.push(Record::Comm(crate::Comm {
            pid,
            tid,
            time_ns,
            name: name.into(),
            exec: false,
        }))
    }

    /// Switches of thread `tid` on `cpu`: `(time, out, preempted, syscall)`, times ascending.
    pub fn switches(
        &mut self,
        cpu: u32,
        pid: u32,
        tid: u32,
        list: &[(u64, bool, bool, u16)],
    ) -> &mut Self {
        self.push(switches(cpu, pid, tid, list))
    }

    /// Wakeups seen on `cpu`: `(time, waker_pid, waker_tid, wakee_tid, flags)`, times ascending.
    pub fn wakeups(&mut self, cpu: u32, list: &[(u64, u32, u32, u32, u8)]) -> &mut Self {
        self.push(wakeups(cpu, list))
    }

    /// One span batch of thread `tid`.
    pub fn spans(&mut self, pid: u32, tid: u32, events: Vec<SpanEvent>) -> &mut Self {
        self.push(spans(pid, tid, events))
    }

    /// The end record: exit code 0 at `time_ns`.
    pub fn end(&mut self, time_ns: u64) -> &mut Self {
        self.push(end(time_ns))
    }

    /// Writes the trace to `path`.
    pub fn write(&self, path: &Path) -> Result<(), FormatError> {
        let mut w = TraceWriter::create(path)?;
        for r in &self.records {
            w.write(r).map_err(|error| io_error(path, error))?;
        }
        w.finish().map_err(|error| io_error(path, error))?;
        Ok(())
    }

    /// The trace file's bytes (written through a temporary file, as the recorder writes).
    pub fn to_bytes(&self) -> Vec<u8> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "iotrace-build-{}-{}.iotrace",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let written = self.write(&path);
        let bytes = std::fs::read(&path);
        let _ = std::fs::remove_file(&path);
        written.expect("writing a temporary trace");
        bytes.expect("reading a temporary trace back")
    }
}

fn io_error(path: &Path, error: io::Error) -> FormatError {
    FormatError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Switches of thread `tid` on `cpu`: `(time, out, preempted, syscall)`, times ascending.
pub fn switches(cpu: u32, pid: u32, tid: u32, list: &[(u64, bool, bool, u16)]) -> Record {
    let base_ns = list.first().map_or(0, |s| s.0);
    let mut prev = base_ns;
    Record::Switches(Switches {
        cpu,
        base_ns,
        switches: list
            .iter()
            .map(|&(t, out, preempt, syscall)| {
                let delta_ns = t - prev;
                prev = t;
                Switch {
                    delta_ns,
                    pid,
                    tid,
                    flags: if out { Switch::OUT } else { 0 }
                        | if preempt { Switch::PREEMPT } else { 0 },
                    syscall,
                }
            })
            .collect(),
    })
}

/// Wakeups seen on `cpu`: `(time, waker_pid, waker_tid, wakee_tid, flags)`, times ascending.
pub fn wakeups(cpu: u32, list: &[(u64, u32, u32, u32, u8)]) -> Record {
    let base_ns = list.first().map_or(0, |w| w.0);
    let mut prev = base_ns;
    Record::Wakeups(Wakeups {
        cpu,
        base_ns,
        wakeups: list
            .iter()
            .map(|&(t, waker_pid, waker_tid, wakee_tid, flags)| {
                let delta_ns = t - prev;
                prev = t;
                Wakeup {
                    delta_ns,
                    waker_pid,
                    waker_tid,
                    wakee_tid,
                    flags,
                }
            })
            .collect(),
    })
}

/// One span batch of thread `tid` (0 for callsites, which belong to no thread).
pub fn spans(pid: u32, tid: u32, events: Vec<SpanEvent>) -> Record {
    Record::Spans(SpanBatch {
        pid,
        tid,
        dropped_total: 0,
        events,
    })
}

/// The end record: exit code 0 at `time_ns`.
pub fn end(time_ns: u64) -> Record {
    Record::End(End {
        time_ns,
        exit: ExitStatus::Code(0),
        rusage: Rusage::default(),
        forwarded_signal: None,
        peak_threads: 2,
    })
}

/// Every record of a trace file's bytes, and why reading stopped early (if it did).
pub fn read_all(bytes: &[u8]) -> Result<(Vec<Record>, Option<Stop>), FormatError> {
    let mut r = TraceReader::new(Cursor::new(bytes.to_vec()), Path::new("test"))?;
    let records: Vec<Record> = r.by_ref().collect();
    Ok((records, r.stop().cloned()))
}
