//! `iotrace export --format perfetto`: the trace as Chrome trace event JSON, which
//! ui.perfetto.dev and chrome://tracing open. Thread states are complete (`X`) slices on each
//! thread's track; each task is an async track (`b`/`e` pairs with the task's span id as a
//! process-local `id2`); /proc samples become counters (`C`). Every slice begins before it ends
//! and each track's timestamps never go back.
//!
//! Perfetto keys an async track by event name, so every slice of a task's track carries the
//! task's name; its state (`poll`, `poll (blocked)`, `scheduled`, `idle`) is the slice's
//! category and its `state` argument.

mod common;
pub mod firefox;
pub mod otlp;
pub mod pprof;

pub use common::{ExportError, FormatOutcome};

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use crate::analysis::syscall_name;
use crate::format::Switch;
use crate::tasks::TaskKey;
use crate::timeline::{collect, Collected, TimelineError, TimelineOptions, BLOCKED, STATES};

/// Output formats of `iotrace export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Chrome trace event JSON (Perfetto, chrome://tracing).
    Perfetto,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportOutcome {
    pub events: u64,
    pub bytes: u64,
    /// Set when the trace is damaged or unfinished.
    pub truncated: Option<String>,
}

/// Microseconds with nanosecond precision, as the format wants them.
fn us(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

struct Out<W: Write> {
    w: W,
    events: u64,
    bytes: u64,
}

impl<W: Write> Out<W> {
    fn event(&mut self, body: &str) -> io::Result<()> {
        let sep = if self.events == 0 { "\n" } else { ",\n" };
        self.w.write_all(sep.as_bytes())?;
        self.w.write_all(body.as_bytes())?;
        self.events += 1;
        self.bytes += (sep.len() + body.len()) as u64;
        Ok(())
    }
}

/// Reads `trace` and writes it to `out` in `format`.
pub fn export(
    trace: &Path,
    out: &Path,
    format: ExportFormat,
    opts: &TimelineOptions,
) -> Result<ExportOutcome, TimelineError> {
    let ExportFormat::Perfetto = format;
    let (summary, col) = collect(trace, opts)?;
    let write_err = |error| TimelineError::Write {
        path: out.to_owned(),
        error,
    };
    let file = std::fs::File::create(out).map_err(write_err)?;
    let mut o = Out {
        w: io::BufWriter::new(file),
        events: 0,
        bytes: 0,
    };
    write_perfetto(&summary, &col, &mut o).map_err(write_err)?;
    o.w.flush().map_err(write_err)?;
    Ok(ExportOutcome {
        events: o.events,
        bytes: o.bytes,
        truncated: summary.truncated.clone(),
    })
}

fn write_perfetto<W: Write>(
    summary: &crate::analysis::Summary,
    col: &Collected,
    o: &mut Out<W>,
) -> io::Result<()> {
    let base = col.start_ns;
    let rel = |t: u64| us(t.saturating_sub(base));
    let head = "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"tool\":\"iotrace\"},\"traceEvents\":[";
    o.w.write_all(head.as_bytes())?;
    o.bytes += head.len() as u64;

    // Names.
    let mut processes: HashMap<u32, String> = HashMap::new();
    for p in &summary.processes {
        processes.insert(p.pid, p.name.clone());
    }
    for t in &summary.threads {
        processes.entry(t.pid).or_insert_with(|| {
            if t.tid == t.pid {
                t.name.clone()
            } else {
                String::new()
            }
        });
    }
    let mut pids: Vec<(&u32, &String)> = processes.iter().collect();
    pids.sort();
    for (pid, name) in pids {
        o.event(&format!(
            "{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{pid},\"tid\":{pid},\"args\":{{\"name\":{}}}}}",
            js(name)
        ))?;
    }
    for t in &summary.threads {
        o.event(&format!(
            "{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":{}}}}}",
            t.pid,
            t.tid,
            js(&t.name)
        ))?;
    }

    // Thread states: one X slice per stretch, in time order per thread.
    let mut tids: Vec<&u32> = col.threads.keys().collect();
    tids.sort();
    for tid in tids {
        let (pid, ivs) = &col.threads[tid];
        for iv in ivs {
            let (name, args) = if iv.state == BLOCKED {
                let sc = if iv.syscall == Switch::NO_SYSCALL {
                    "unknown".to_owned()
                } else {
                    syscall_name(iv.syscall)
                };
                let stack = iv
                    .stack
                    .map(|s| format!(",\"stack_id\":{s}"))
                    .unwrap_or_default();
                (
                    format!("blocked: {sc}"),
                    format!(",\"args\":{{\"syscall\":{}{stack}}}", js(&sc)),
                )
            } else {
                (STATES[usize::from(iv.state)].to_owned(), String::new())
            };
            o.event(&format!(
                "{{\"ph\":\"X\",\"cat\":\"thread_state\",\"name\":{},\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"dur\":{}{args}}}",
                js(&name),
                rel(iv.start),
                us(iv.end - iv.start)
            ))?;
        }
    }

    // Tasks: one async track each.
    for row in &summary.tasks {
        let key = TaskKey {
            pid: row.pid,
            span: row.id,
        };
        let Some(ivs) = col.tasks.get(&key) else {
            continue;
        };
        let name = match &row.location {
            Some(loc) => format!("{} ({loc})", row.name),
            None => row.name.clone(),
        };
        let name = js(&name);
        let id = format!("{{\"local\":\"0x{:x}\"}}", row.id);
        for iv in ivs {
            let state = STATES[usize::from(iv.state)];
            let mut args = format!("\"state\":{}", js(state));
            if iv.tid != 0 {
                args.push_str(&format!(
                    ",\"worker_tid\":{},\"on_cpu_us\":{},\"preempted_us\":{},\"blocked_us\":{},\"blocked_worker_us\":{}",
                    iv.tid,
                    us(iv.on_cpu),
                    us(iv.preempted),
                    us(iv.blocked),
                    us(iv.counted)
                ));
                if iv.syscall != Switch::NO_SYSCALL {
                    args.push_str(&format!(",\"syscall\":{}", js(&syscall_name(iv.syscall))));
                }
            }
            let tid = if iv.tid != 0 { iv.tid } else { row.pid };
            o.event(&format!(
                "{{\"ph\":\"b\",\"cat\":{},\"name\":{name},\"id2\":{id},\"pid\":{},\"tid\":{tid},\"ts\":{},\"args\":{{{args}}}}}",
                js(state),
                row.pid,
                rel(iv.start)
            ))?;
            o.event(&format!(
                "{{\"ph\":\"e\",\"cat\":{},\"name\":{name},\"id2\":{id},\"pid\":{},\"tid\":{tid},\"ts\":{}}}",
                js(state),
                row.pid,
                rel(iv.end)
            ))?;
        }
    }

    // Counters from /proc, per process, in time order.
    for &(t, pid, rss, threads) in &col.counters {
        o.event(&format!(
            "{{\"ph\":\"C\",\"name\":\"memory\",\"pid\":{pid},\"tid\":{pid},\"ts\":{},\"args\":{{\"rss_bytes\":{rss}}}}}",
            rel(t)
        ))?;
        o.event(&format!(
            "{{\"ph\":\"C\",\"name\":\"threads\",\"pid\":{pid},\"tid\":{pid},\"ts\":{},\"args\":{{\"threads\":{threads}}}}}",
            rel(t)
        ))?;
    }
    o.w.write_all(b"\n]}\n")?;
    o.bytes += 4;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_keep_nanoseconds() {
        assert_eq!(us(1_234_567), "1234.567");
        assert_eq!(us(5), "0.005");
    }
}
