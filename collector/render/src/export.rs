//! `iotrace export --format perfetto`: the trace as Chrome trace event JSON, which
//! ui.perfetto.dev and chrome://tracing open. Thread states are complete (`X`) slices on each
//! thread's track; each task is an async track (`b`/`e` pairs with the task's span id as a
//! process-local `id2`); /proc samples become counters (`C`). Every slice begins before it ends
//! and each track's timestamps never go back.
//!
//! Perfetto keys an async track by event name, so every slice of a task's track carries the
//! task's name; its state (`poll`, `poll (blocked)`, `scheduled`, `idle`) is the slice's
//! category and its `state` argument. An idle slice's `yield_site` says where the task returned
//! Pending, a scheduled slice's `woken_by` who woke it.
//!
//! Each wake is a flow (`s`, then `f` with `bp: "e"`, category and name `wake`, `id` the wake's
//! number): from the waker's thread at the moment it woke the task to the worker thread at the
//! moment the task's poll began. The trace event format binds flow events to the slices of
//! thread tracks only (not to async ones, where a task's slices are), so the flow ends on the
//! worker's slice that the task's poll began in; the pftrace export ends it on the poll itself.
//!
//! Each moment of a diagnosis is an instant (`i`) named after its kind, in the category
//! `iotrace.diagnosis`, on the thread the task was polled on at that moment ([`moments`]).

mod common;
pub mod firefox;
mod flows;
mod moments;
pub mod otlp;
mod pftrace;
pub mod pprof;

pub use common::{ExportError, FormatOutcome};

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use crate::out::{OutFile, TimelineError, TrackError};
use iotrace_analysis::intervals::{
    collect, heaviest, heaviest_stacks, yield_site_line, Collected, TimelineOptions, BLOCKED, IDLE,
    MAX_NAMED_YIELD_STACKS, STATES,
};
use iotrace_analysis::summary::syscall_name;
use iotrace_analysis::tasks::{naming, StackId, TaskKey};
use iotrace_trace::Switch;

/// Output formats of `iotrace export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Chrome trace event JSON (Perfetto, chrome://tracing).
    Perfetto,
    /// Perfetto's own protobuf trace (ui.perfetto.dev, trace_processor): the same content in
    /// about a third of the bytes.
    Pftrace,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportOutcome {
    pub events: u64,
    /// Wakes written as flows, and wakes left out (past [`TimelineOptions::max_wakes`]).
    pub flows: u64,
    pub wakes_left_out: u64,
    pub bytes: u64,
    /// Set when the trace is damaged or unfinished.
    pub truncated: Option<String>,
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

struct Out<W: Write> {
    w: W,
    events: u64,
    line: Line,
}

impl<W: Write> Out<W> {
    /// Starts an event: the separator before it, and counts it.
    fn sep(&mut self) -> io::Result<()> {
        let sep: &[u8] = if self.events == 0 { b"\n" } else { b",\n" };
        self.events += 1;
        self.w.write_all(sep)
    }

    /// Starts an event formatted into [`Out::line`]; [`Out::end`] writes it.
    fn begin(&mut self) -> &mut Line {
        self.line.0.clear();
        let sep: &[u8] = if self.events == 0 { b"\n" } else { b",\n" };
        self.events += 1;
        self.line.0.extend_from_slice(sep);
        &mut self.line
    }

    fn end(&mut self) -> io::Result<()> {
        self.w.write_all(&self.line.0)
    }
}

/// One event, formatted by hand into a reused buffer: the bulk of an export is millions of
/// slices, and `write!` through `Display` cost half its time.
#[derive(Default)]
struct Line(Vec<u8>, itoa::Buffer);

impl Line {
    fn s(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn n(&mut self, v: impl itoa::Integer) -> &mut Self {
        let digits = self.1.format(v);
        self.0.extend_from_slice(digits.as_bytes());
        self
    }
    /// Nanoseconds as microseconds with three decimals.
    fn us(&mut self, ns: u64) -> &mut Self {
        self.n(ns / 1000);
        let f = (ns % 1000) as u32;
        self.0.extend_from_slice(&[
            b'.',
            b'0' + (f / 100) as u8,
            b'0' + (f / 10 % 10) as u8,
            b'0' + (f % 10) as u8,
        ]);
        self
    }
}

/// Reads `trace` and writes it to `out` in `format`.
pub fn export(
    trace: &Path,
    out: &Path,
    format: ExportFormat,
    opts: &TimelineOptions,
) -> Result<ExportOutcome, TimelineError> {
    let (mut summary, mut col) = collect(trace, opts, true)?;
    // The blocked slices' stacks and the idle slices' yield sites, named once each (the
    // heaviest, as the timeline's hovers), and the diagnoses' (their lines).
    let mut ids = heaviest_stacks(&col.stack_time);
    ids.extend(heaviest(&col.idle_time, MAX_NAMED_YIELD_STACKS));
    ids.extend(naming::diagnosis_stack_ids(&summary.diagnoses));
    let stacks = if ids.is_empty() {
        HashMap::new()
    } else {
        col.name_stacks(&ids)
    };
    naming::apply_diagnosis_names(&stacks, &mut summary.diagnoses);
    iotrace_analysis::tasks::diagnosis::settle(&mut summary.diagnoses);
    let write_err = |error| TimelineError::Write {
        path: out.to_owned(),
        error,
    };
    let track_err = |e| match e {
        TrackError::Read(e) => TimelineError::Spill(e),
        TrackError::Write(e) => write_err(e),
    };
    let mut w = OutFile::create(out).map_err(write_err)?;
    let (events, flows) = match format {
        ExportFormat::Perfetto => {
            let mut o = Out {
                w: &mut w,
                events: 0,
                line: Line::default(),
            };
            let flows = write_perfetto(&summary, &col, &stacks, &mut o).map_err(track_err)?;
            (o.events, flows)
        }
        ExportFormat::Pftrace => {
            pftrace::write(&summary, &col, &stacks, &mut w).map_err(track_err)?
        }
    };
    let bytes = w.finish().map_err(write_err)?;
    Ok(ExportOutcome {
        events,
        flows,
        wakes_left_out: col.wakes_left_out(),
        bytes,
        truncated: summary.truncated.clone(),
    })
}

/// A timestamp or duration in µs with ns precision, written straight to the output.
struct Us(u64);

impl std::fmt::Display for Us {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Frame names of off-CPU stacks, innermost first, each with whether it is a kernel frame.
type StackNames = HashMap<StackId, Vec<(String, bool)>>;

/// A blocked slice's name (`blocked: SYSCALL`) and syscall (`unknown` when not known), by
/// syscall number, each made once, in the form `wrap` gives them (JSON-escaped, or as is).
struct SyscallNames {
    wrap: fn(&str) -> String,
    names: HashMap<u16, (String, String)>,
}

impl SyscallNames {
    fn new(wrap: fn(&str) -> String) -> Self {
        SyscallNames {
            wrap,
            names: HashMap::new(),
        }
    }

    fn get(&mut self, nr: u16) -> &(String, String) {
        let wrap = self.wrap;
        self.names.entry(nr).or_insert_with(|| {
            let sc = syscall_label(nr);
            (wrap(&format!("blocked: {sc}")), wrap(&sc))
        })
    }
}

fn syscall_label(nr: u16) -> String {
    if nr == Switch::NO_SYSCALL {
        "unknown".to_owned()
    } else {
        syscall_name(nr)
    }
}

/// A named off-CPU stack in a line (its first frames past the syscall's wrapper, then the
/// program's own first frame), by (stack, syscall), made once, in the form `wrap` gives it;
/// `None` for stacks not named.
struct StackLines<'a> {
    stacks: &'a StackNames,
    wrap: fn(&str) -> String,
    lines: HashMap<(StackId, u16), Option<String>>,
}

impl<'a> StackLines<'a> {
    fn new(stacks: &'a StackNames, wrap: fn(&str) -> String) -> Self {
        StackLines {
            stacks,
            wrap,
            lines: HashMap::new(),
        }
    }

    fn get(&mut self, stack: StackId, nr: u16) -> Option<&str> {
        let (stacks, wrap) = (self.stacks, self.wrap);
        self.lines
            .entry((stack, nr))
            .or_insert_with(|| {
                let frames = stacks.get(&stack)?;
                Some(wrap(&crate::warning::short_stack(
                    frames,
                    &syscall_label(nr),
                )))
            })
            .as_deref()
    }
}

/// Idle slices' yield sites in a line ([`yield_site_line`]), by (stack, spans), made once, in
/// the form `wrap` gives them; `None` when the site is not known.
struct YieldLines<'a> {
    stacks: &'a StackNames,
    chains: &'a [String],
    wrap: fn(&str) -> String,
    lines: HashMap<(Option<StackId>, Option<u32>), Option<String>>,
}

impl<'a> YieldLines<'a> {
    fn new(stacks: &'a StackNames, chains: &'a [String], wrap: fn(&str) -> String) -> Self {
        YieldLines {
            stacks,
            chains,
            wrap,
            lines: HashMap::new(),
        }
    }

    fn get(&mut self, stack: Option<StackId>, spans: Option<u32>) -> Option<&str> {
        let (stacks, chains, wrap) = (self.stacks, self.chains, self.wrap);
        self.lines
            .entry((stack, spans))
            .or_insert_with(|| yield_site_line(stacks, chains, stack, spans).map(|l| wrap(&l)))
            .as_deref()
    }
}

/// The tasks an export draws (those with stretches), each with its index in the summary and
/// its track name, `NAME (spawn location)`.
fn drawn_tasks<'a>(
    summary: &'a iotrace_analysis::summary::Summary,
    col: &'a Collected,
) -> impl Iterator<Item = (usize, TaskKey, &'a iotrace_analysis::tasks::TaskRow, String)> + 'a {
    summary.tasks.iter().enumerate().filter_map(|(i, row)| {
        let key = TaskKey {
            pid: row.pid,
            span: row.id,
        };
        col.tasks.contains_key(&key).then(|| {
            let name = match &row.location {
                Some(loc) => format!("{} ({loc})", row.name),
                None => row.name.clone(),
            };
            (i, key, row, name)
        })
    })
}

/// Each process's name: the report's, else its main thread's; "" for a process seen only
/// through its other threads.
fn process_names(summary: &iotrace_analysis::summary::Summary) -> HashMap<u32, String> {
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
    processes
}

/// Writes the Chrome trace event JSON; returns the wakes written as flows.
fn write_perfetto<W: Write>(
    summary: &iotrace_analysis::summary::Summary,
    col: &Collected,
    stacks: &StackNames,
    o: &mut Out<W>,
) -> Result<u64, TrackError> {
    let base = col.start_ns;
    let rel = |t: u64| Us(t.saturating_sub(base));
    let we = TrackError::Write;
    o.w.write_all(
        b"{\"displayTimeUnit\":\"ns\",\"otherData\":{\"tool\":\"iotrace\"},\"traceEvents\":[",
    )
    .map_err(we)?;

    // Names.
    let processes = process_names(summary);
    let mut pids: Vec<(&u32, &String)> = processes.iter().collect();
    pids.sort();
    for (pid, name) in pids {
        o.sep().map_err(we)?;
        write!(
            o.w,
            "{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{pid},\"tid\":{pid},\"args\":{{\"name\":{}}}}}",
            js(name)
        )
        .map_err(we)?;
    }
    for t in &summary.threads {
        o.sep().map_err(we)?;
        write!(
            o.w,
            "{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":{}}}}}",
            t.pid,
            t.tid,
            js(&t.name)
        )
        .map_err(we)?;
    }

    // Thread states: one X slice per stretch, in time order per thread.
    let state_names: Vec<String> = STATES.iter().map(|s| js(s)).collect();
    let mut blocked = SyscallNames::new(js);
    let mut stack_lines = StackLines::new(stacks, js);
    let mut tids: Vec<(u32, u32)> = col.threads.iter().map(|(&t, &(p, _))| (t, p)).collect();
    tids.sort();
    for (tid, pid) in tids {
        for iv in col.thread_ivs(tid).map_err(TrackError::Read)? {
            let (ts, dur) = (iv.start.saturating_sub(base), iv.end - iv.start);
            let blocked_names = (iv.state == BLOCKED).then(|| blocked.get(iv.syscall));
            let name = match blocked_names {
                Some((name, _)) => name,
                None => &state_names[usize::from(iv.state).min(STATES.len() - 1)],
            };
            let l = o.begin();
            l.s("{\"ph\":\"X\",\"cat\":\"thread_state\",\"name\":")
                .s(name)
                .s(",\"pid\":")
                .n(pid)
                .s(",\"tid\":")
                .n(tid)
                .s(",\"ts\":")
                .us(ts)
                .s(",\"dur\":")
                .us(dur);
            if let Some((_, sc)) = blocked_names {
                l.s(",\"args\":{\"syscall\":").s(sc);
                if let Some(s) = iv.stack {
                    l.s(",\"stack_id\":").n(s);
                    if let Some(line) = stack_lines.get(s, iv.syscall) {
                        l.s(",\"stack\":").s(line);
                    }
                }
                l.s("}");
            }
            l.s("}");
            o.end().map_err(we)?;
        }
    }

    // Tasks: one async track each; each poll that followed a wake ends that wake's flow.
    let flows = flows::Flows::new(summary, col, js);
    let mut yields = YieldLines::new(stacks, &summary.span_chains, js);
    let mut flows_written = 0u64;
    let mut moments = moments::Moments::new(summary, col);
    let moments_by_task = moments.by_task();
    for (_, key, row, name) in drawn_tasks(summary, col) {
        let name = js(&name);
        let id = format!("{{\"local\":\"0x{:x}\"}}", row.id);
        let pid = row.pid;
        let mut ends = flows.ends(&key);
        let (mine, mut next) = (moments_by_task.get(&key).map_or(&[][..], Vec::as_slice), 0);
        for iv in col.task_ivs(&key).map_err(TrackError::Read)? {
            moments.stretch(mine, &mut next, &iv);
            let state = &state_names[usize::from(iv.state).min(STATES.len() - 1)];
            let tid = if iv.tid != 0 { iv.tid } else { row.pid };
            let mut woke = None;
            match ends.at(&iv) {
                Some(flows::End::Scheduled(i)) => woke = Some(i),
                Some(flows::End::Poll(i)) if iv.tid != 0 => {
                    let wake = &flows.wakes[i];
                    let waker_pid = col.threads.get(&wake.waker_tid).map_or(pid, |t| t.0);
                    for (ph, bp, pid, tid, ts) in [
                        ("s", "", waker_pid, wake.waker_tid, wake.woken),
                        ("f", ",\"bp\":\"e\"", pid, iv.tid, wake.polled),
                    ] {
                        o.begin()
                            .s("{\"ph\":\"")
                            .s(ph)
                            .s("\"")
                            .s(bp)
                            .s(",\"cat\":\"wake\",\"name\":\"wake\",\"id\":")
                            .n(i + 1)
                            .s(",\"pid\":")
                            .n(pid)
                            .s(",\"tid\":")
                            .n(tid)
                            .s(",\"ts\":")
                            .us(ts.saturating_sub(base))
                            .s("}");
                        o.end().map_err(we)?;
                    }
                    flows_written += 1;
                }
                _ => {}
            }
            let l = o.begin();
            l.s("{\"ph\":\"b\",\"cat\":")
                .s(state)
                .s(",\"name\":")
                .s(&name)
                .s(",\"id2\":")
                .s(&id)
                .s(",\"pid\":")
                .n(pid)
                .s(",\"tid\":")
                .n(tid)
                .s(",\"ts\":")
                .us(iv.start.saturating_sub(base))
                .s(",\"args\":{\"state\":")
                .s(state);
            if iv.tid != 0 {
                l.s(",\"worker_tid\":")
                    .n(iv.tid)
                    .s(",\"on_cpu_us\":")
                    .us(iv.on_cpu)
                    .s(",\"preempted_us\":")
                    .us(iv.preempted)
                    .s(",\"blocked_us\":")
                    .us(iv.blocked)
                    .s(",\"blocked_worker_us\":")
                    .us(iv.counted);
                if iv.syscall != Switch::NO_SYSCALL {
                    l.s(",\"syscall\":").s(&blocked.get(iv.syscall).1);
                }
            }
            if iv.state == IDLE {
                if let Some(site) = yields.get(iv.yield_stack, iv.yield_spans) {
                    l.s(",\"yield_site\":").s(site);
                }
            }
            if let Some(i) = woke {
                l.s(",\"woken_by\":").s(flows.label(i));
            }
            l.s("}}");
            o.end().map_err(we)?;
            o.begin()
                .s("{\"ph\":\"e\",\"cat\":")
                .s(state)
                .s(",\"name\":")
                .s(&name)
                .s(",\"id2\":")
                .s(&id)
                .s(",\"pid\":")
                .n(pid)
                .s(",\"tid\":")
                .n(tid)
                .s(",\"ts\":")
                .us(iv.end.saturating_sub(base))
                .s("}");
            o.end().map_err(we)?;
        }
    }

    // The diagnoses' moments, by thread.
    moments.write_json(col, o).map_err(we)?;

    // Counters from /proc, per process, in time order.
    for &(t, pid, rss, threads) in &col.counters {
        o.sep().map_err(we)?;
        write!(
            o.w,
            "{{\"ph\":\"C\",\"name\":\"memory\",\"pid\":{pid},\"tid\":{pid},\"ts\":{},\"args\":{{\"rss_bytes\":{rss}}}}}",
            rel(t)
        )
        .map_err(we)?;
        o.sep().map_err(we)?;
        write!(
            o.w,
            "{{\"ph\":\"C\",\"name\":\"threads\",\"pid\":{pid},\"tid\":{pid},\"ts\":{},\"args\":{{\"threads\":{threads}}}}}",
            rel(t)
        )
        .map_err(we)?;
    }
    o.w.write_all(b"\n]}\n").map_err(we)?;
    Ok(flows_written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnosis_is_an_instant_on_the_thread_that_polled_its_task_then() {
        use crate::fixtures::{diagnosed, OTHER, PID};
        let (summary, col) = diagnosed();
        let mut o = Out {
            w: Vec::new(),
            events: 0,
            line: Line::default(),
        };
        write_perfetto(&summary, &col, &StackNames::new(), &mut o)
            .unwrap_or_else(|_| panic!("write"));
        let doc: serde_json::Value = serde_json::from_slice(&o.w).expect("JSON");
        let instants: Vec<&serde_json::Value> = doc["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "i")
            .collect();
        assert_eq!(instants.len(), 1, "{instants:?}");
        let e = instants[0];
        assert_eq!(e["s"], "t");
        assert_eq!(e["cat"], "iotrace.diagnosis");
        assert_eq!(e["name"], "long_poll");
        assert_eq!(
            (e["pid"].as_u64(), e["tid"].as_u64()),
            (Some(PID.into()), Some(OTHER.into()))
        );
        assert_eq!(e["ts"].as_f64(), Some(1000.0));
        let d = &summary.diagnoses[0];
        assert_eq!(e["args"]["message"], crate::diagnosis::message(d));
        assert_eq!(e["args"]["line"], "demo::handle at src/main.rs:42");
        assert_eq!(e["args"]["task"], "handler");
    }

    #[test]
    fn microseconds_keep_nanoseconds() {
        assert_eq!(Us(1_234_567).to_string(), "1234.567");
        assert_eq!(Us(5).to_string(), "0.005");
    }
}
