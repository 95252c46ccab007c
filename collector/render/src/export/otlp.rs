//! `iotrace export --format otlp`: the spans the program's iotrace layer sent, as OTLP/JSON
//! (the JSON mapping of `ExportTraceServiceRequest`, opentelemetry-proto's
//! `collector/trace/v1`), which an OpenTelemetry collector's OTLP/HTTP receiver takes at
//! `/v1/traces`.
//!
//! - One `resourceSpans` per run of spans of one process (a process may have several): its
//!   resource has `service.name` (the program's name), `process.pid`,
//!   `process.command_line` and `host.name`; the scope is `iotrace`.
//! - Every closed span becomes one span: `traceId` (32 hex digits) is shared by a root span
//!   and everything under it, `spanId` (16 hex digits) is the span's id, `parentSpanId` its
//!   parent's; `startTimeUnixNano` / `endTimeUnixNano` (creation and close, as decimal
//!   strings) are the recording's CLOCK_MONOTONIC times moved to the wall clock of its start.
//! - Attributes: the span's fields (typed), `thread.id` / `thread.name` of the thread that
//!   created it, `iotrace.task.name` and `iotrace.task.id` of the task it ran in (itself, for a
//!   task span; `iotrace.task.id` is the program's task id when it has one, else the task's
//!   span id), `iotrace.busy_ns` (time entered) and `code.namespace`, `code.filepath`,
//!   `code.lineno` from its callsite.
//!
//! Spans are written as they close, so memory is bounded by the spans open at once (and the
//! roots of those closed in the last 10 s of span time, for late children). Spans never closed
//! are left out and counted.

use rustc_hash::FxHashMap;
use std::io::{self, Write};
use std::path::Path;

use super::common::{absolute, window, ExportError, FormatOutcome};
use iotrace_analysis::intervals::TimelineOptions;
use iotrace_analysis::tasks::identity::{self, Class};
use iotrace_trace::{kind, Record, TraceReader};
use iotrace_wire::{Callsite, CallsiteKind, FieldValue, SpanBatch, SpanEvent, Value};

/// How long (in span time) a closed span's trace root and task are kept for children whose
/// creation record comes late.
const CLOSED_KEEP_NS: u64 = 10_000_000_000;
/// Most spans in one `resourceSpans` entry.
const SPANS_PER_RESOURCE: u64 = 10_000;

struct CallsiteInfo {
    callsite: Callsite,
    class: Class,
}

#[derive(Default)]
struct Open {
    created: Option<u64>,
    closed: Option<u64>,
    parent: Option<u64>,
    callsite: u64,
    fields: Vec<FieldValue>,
    tid: u32,
    busy_ns: u64,
}

/// What children need of a span: its parent, whether it is a task (its span and the
/// program's id for it), and when it closed.
#[derive(Clone, Copy)]
struct Lineage {
    parent: Option<u64>,
    task: Option<(u64, Option<u64>)>,
    closed: Option<u64>,
}

/// A span's trace root and innermost task, as far as its ancestors are known.
struct Resolved {
    root: u64,
    task: Option<(u64, Option<u64>)>,
}

struct Writer<W: Write> {
    w: W,
    bytes: u64,
    /// The process of the open `resourceSpans`, and how many spans it holds.
    open: Option<(u32, u64)>,
    spans: u64,
}

impl<W: Write> Writer<W> {
    fn put(&mut self, s: &str) -> io::Result<()> {
        self.w.write_all(s.as_bytes())?;
        self.bytes += s.len() as u64;
        Ok(())
    }
}

struct Exporter<W: Write> {
    out: Writer<W>,
    start_ns: u64,
    start_unix_ns: u64,
    window: (u64, u64),
    hostname: String,
    command: Vec<String>,
    callsites: FxHashMap<(u32, u64), CallsiteInfo>,
    spans: FxHashMap<(u32, u64), Open>,
    lineage: FxHashMap<(u32, u64), Lineage>,
    entered: FxHashMap<(u32, u32, u64), u64>,
    /// Finished spans whose callsite has not arrived yet.
    deferred: Vec<(u32, u64, Open)>,
    /// Finished spans of threads whose name has not been read yet (span batches can come
    /// before the perf records of the thread's creation), by tid; written when it is.
    unnamed: FxHashMap<u32, Vec<(u32, u64, Open)>>,
    /// Finished spans whose parent's creation has not arrived yet, by (pid, parent).
    orphans: FxHashMap<(u32, u64), Vec<(u64, Open)>>,
    threads: FxHashMap<u32, String>,
    processes: FxHashMap<u32, String>,
    latest: u64,
    pruned_at: u64,
    left_out_open: u64,
    /// The span being written.
    json: Json,
}

/// JSON text written by hand into a reused buffer (a span is a dozen attributes, and a
/// `format!` for each cost most of the export's time).
#[derive(Default)]
struct Json(String);

impl Json {
    fn raw(&mut self, s: &str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    /// `s` as a JSON string, escaped as serde_json escapes it.
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push('"');
        let mut from = 0;
        for (i, c) in s.char_indices() {
            let esc = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '\u{8}' => "\\b",
                '\u{c}' => "\\f",
                c if (c as u32) < 0x20 => "",
                _ => continue,
            };
            self.0.push_str(&s[from..i]);
            if esc.is_empty() {
                let _ =
                    std::fmt::Write::write_fmt(&mut self.0, format_args!("\\u{:04x}", c as u32));
            } else {
                self.0.push_str(esc);
            }
            from = i + c.len_utf8();
        }
        self.0.push_str(&s[from..]);
        self.0.push('"');
        self
    }

    fn int(&mut self, n: impl itoa::Integer) -> &mut Self {
        self.0.push_str(itoa::Buffer::new().format(n));
        self
    }

    /// `v` as `digits` lowercase hex digits, zero-padded.
    fn hex(&mut self, v: u64, digits: u32) -> &mut Self {
        for i in (0..digits).rev() {
            let d = ((v >> (i * 4)) & 0xf) as usize;
            self.0.push(char::from(b"0123456789abcdef"[d]));
        }
        self
    }

    /// Starts an attribute `{"key":KEY,"value":` (after a comma unless it is the first).
    fn key(&mut self, first: &mut bool, key: &str) -> &mut Self {
        if !std::mem::take(first) {
            self.0.push(',');
        }
        self.raw("{\"key\":").str(key).raw(",\"value\":")
    }

    fn attr_str(&mut self, first: &mut bool, key: &str, v: &str) {
        self.key(first, key)
            .raw("{\"stringValue\":")
            .str(v)
            .raw("}}");
    }

    fn attr_int(&mut self, first: &mut bool, key: &str, n: i64) {
        self.key(first, key)
            .raw("{\"intValue\":\"")
            .int(n)
            .raw("\"}}");
    }

    fn attr_value(&mut self, first: &mut bool, key: &str, v: &Value) {
        match v {
            Value::U64(n) => match i64::try_from(*n) {
                Ok(i) => self.attr_int(first, key, i),
                Err(_) => self.attr_str(first, key, itoa::Buffer::new().format(*n)),
            },
            Value::I64(n) => self.attr_int(first, key, *n),
            Value::Bool(b) => {
                self.key(first, key)
                    .raw("{\"boolValue\":")
                    .raw(if *b { "true" } else { "false" })
                    .raw("}}");
            }
            Value::F64(f) if f.is_finite() => {
                self.key(first, key).raw("{\"doubleValue\":");
                let _ = std::fmt::Write::write_fmt(&mut self.0, format_args!("{f}"));
                self.raw("}}");
            }
            Value::F64(f) => self.attr_str(first, key, &f.to_string()),
            Value::Str(s) => self.attr_str(first, key, s),
            Value::Span(s) => {
                self.key(first, key)
                    .raw("{\"stringValue\":\"")
                    .hex(*s, 16)
                    .raw("\"}}");
            }
        }
    }
}

impl<W: Write> Exporter<W> {
    fn unix(&self, t: u64) -> u64 {
        self.start_unix_ns
            .saturating_add(t.saturating_sub(self.start_ns))
    }

    fn batch(&mut self, batch: &SpanBatch) -> io::Result<()> {
        let pid = batch.pid;
        for event in &batch.events {
            if let Some(t) = event.time() {
                self.latest = self.latest.max(t);
            }
            match event {
                SpanEvent::Callsite(c) if c.kind == CallsiteKind::Span => {
                    let class = identity::classify(c);
                    self.callsites.insert(
                        (pid, c.id),
                        CallsiteInfo {
                            callsite: c.clone(),
                            class,
                        },
                    );
                }
                SpanEvent::NewSpan {
                    time,
                    span,
                    parent,
                    callsite,
                    fields,
                } => {
                    let open = self.spans.entry((pid, *span)).or_default();
                    open.created = Some(*time);
                    open.parent = *parent;
                    open.callsite = *callsite;
                    open.fields = fields.clone();
                    open.tid = batch.tid;
                    let lineage = self.lineage_of(pid, *span, *parent, *callsite, fields);
                    self.lineage.insert((pid, *span), lineage);
                    self.maybe_finish(pid, *span)?;
                    for (child, open) in self.orphans.remove(&(pid, *span)).unwrap_or_default() {
                        self.finish_span(pid, child, open)?;
                    }
                }
                SpanEvent::Enter { time, span } => {
                    self.entered.insert((pid, batch.tid, *span), *time);
                }
                SpanEvent::Exit { time, span } => {
                    if let Some(since) = self.entered.remove(&(pid, batch.tid, *span)) {
                        self.spans.entry((pid, *span)).or_default().busy_ns +=
                            time.saturating_sub(since);
                    }
                }
                SpanEvent::Close { time, span } => {
                    self.spans.entry((pid, *span)).or_default().closed = Some(*time);
                    if let Some(l) = self.lineage.get_mut(&(pid, *span)) {
                        l.closed = Some(*time);
                    }
                    self.maybe_finish(pid, *span)?;
                }
                _ => {}
            }
        }
        if self.latest.saturating_sub(self.pruned_at) > CLOSED_KEEP_NS {
            let keep_after = self.latest.saturating_sub(CLOSED_KEEP_NS);
            self.lineage
                .retain(|_, l| l.closed.is_none_or(|c| c >= keep_after));
            self.pruned_at = self.latest;
        }
        Ok(())
    }

    fn lineage_of(
        &self,
        pid: u32,
        span: u64,
        parent: Option<u64>,
        callsite: u64,
        fields: &[FieldValue],
    ) -> Lineage {
        let task = match self.callsites.get(&(pid, callsite)).map(|c| &c.class) {
            Some(Class::Task(cs)) => Some((span, identity::task_info(cs, fields).task_id)),
            _ => None,
        };
        Lineage {
            parent,
            task,
            closed: None,
        }
    }

    /// Walks up from `span`: the outermost known ancestor (or the unknown parent it names)
    /// roots the trace; the first task on the way is the span's task.
    fn resolve(&self, pid: u32, span: u64, parent: Option<u64>) -> Resolved {
        let mut r = Resolved {
            root: span,
            task: self.lineage.get(&(pid, span)).and_then(|l| l.task),
        };
        let mut next = parent;
        // Spans are created inside their parents, so there are no cycles; a damaged file
        // could make one.
        for _ in 0..1024 {
            let Some(p) = next else {
                break;
            };
            r.root = p;
            let Some(l) = self.lineage.get(&(pid, p)) else {
                break;
            };
            if r.task.is_none() {
                r.task = l.task;
            }
            next = l.parent;
        }
        r
    }

    fn maybe_finish(&mut self, pid: u32, span: u64) -> io::Result<()> {
        let done = self
            .spans
            .get(&(pid, span))
            .is_some_and(|o| o.created.is_some() && o.closed.is_some());
        if !done {
            return Ok(());
        }
        let Some(open) = self.spans.remove(&(pid, span)) else {
            return Ok(());
        };
        if let Some(p) = open.parent {
            if !self.lineage.contains_key(&(pid, p)) {
                self.orphans.entry((pid, p)).or_default().push((span, open));
                return Ok(());
            }
        }
        self.finish_span(pid, span, open)
    }

    fn finish_span(&mut self, pid: u32, span: u64, open: Open) -> io::Result<()> {
        if !self.callsites.contains_key(&(pid, open.callsite)) {
            self.deferred.push((pid, span, open));
            return Ok(());
        }
        if !self.threads.contains_key(&open.tid) {
            self.unnamed
                .entry(open.tid)
                .or_default()
                .push((pid, span, open));
            return Ok(());
        }
        self.emit(pid, span, &open)
    }

    /// A thread's name is known now: write its spans that waited for it.
    fn named(&mut self, tid: u32) -> io::Result<()> {
        for (pid, span, open) in self.unnamed.remove(&tid).unwrap_or_default() {
            self.emit(pid, span, &open)?;
        }
        Ok(())
    }

    fn emit(&mut self, pid: u32, span: u64, open: &Open) -> io::Result<()> {
        let (Some(created), Some(closed)) = (open.created, open.closed) else {
            return Ok(());
        };
        let (from, to) = self.window;
        if closed < from || created >= to {
            return Ok(());
        }
        let lineage = self.resolve(pid, span, open.parent);
        self.open_resource(pid)?;
        let mut j = std::mem::take(&mut self.json);
        j.0.clear();
        if self.out.open.is_some_and(|(_, n)| n > 0) {
            j.raw(",");
        }
        j.raw("{\"traceId\":\"")
            .hex(u64::from(pid), 8)
            .hex(u64::from(self.run_tag()), 8)
            .hex(lineage.root, 16)
            .raw("\",\"spanId\":\"")
            .hex(span, 16)
            .raw("\"");
        if let Some(p) = open.parent {
            j.raw(",\"parentSpanId\":\"").hex(p, 16).raw("\"");
        }
        let info = self.callsites.get(&(pid, open.callsite));
        j.raw(",\"name\":");
        match info {
            Some(i) => j.str(&i.callsite.name),
            None => j.str("[unknown span]"),
        };
        j.raw(",\"kind\":1,\"startTimeUnixNano\":\"")
            .int(self.unix(created))
            .raw("\",\"endTimeUnixNano\":\"")
            .int(self.unix(closed.max(created)))
            .raw("\",\"attributes\":[");
        let first = &mut true;
        if let Some(info) = info {
            let c = &info.callsite;
            for f in &open.fields {
                if let Some(key) = c.fields.get(usize::from(f.index)) {
                    j.attr_value(first, key, &f.value);
                }
            }
            j.attr_str(first, "code.namespace", &c.target);
            if let Some(file) = &c.file {
                j.attr_str(first, "code.filepath", file);
            }
            if let Some(line) = c.line {
                j.attr_int(first, "code.lineno", i64::from(line));
            }
        }
        j.attr_int(first, "thread.id", i64::from(open.tid));
        // A thread never named in the trace has its process's name, as a new thread does.
        if let Some(t) = self.threads.get(&open.tid).or(self.threads.get(&pid)) {
            j.attr_str(first, "thread.name", t);
        }
        if let Some((task_span, task_id)) = lineage.task {
            let id = task_id.unwrap_or(task_span);
            j.attr_int(first, "iotrace.task.id", id as i64);
            let own = (task_span == span).then_some(open);
            if let Some(label) = self.task_label(pid, task_span, own) {
                j.attr_str(first, "iotrace.task.name", &label);
            }
        }
        j.attr_int(first, "iotrace.busy_ns", open.busy_ns as i64);
        j.raw("]}");
        let written = self.out.put(&j.0);
        self.json = j;
        written?;
        if let Some((_, n)) = self.out.open.as_mut() {
            *n += 1;
        }
        self.out.spans += 1;
        Ok(())
    }

    /// A tag of this recording in every trace id, so that two recordings' traces differ.
    fn run_tag(&self) -> u32 {
        let t = self.start_unix_ns;
        (t ^ (t >> 32)) as u32 | 1
    }

    fn task_label(&self, pid: u32, task_span: u64, own: Option<&Open>) -> Option<String> {
        // The task's span is open while its children run, or is the span being written.
        let open = own.or_else(|| self.spans.get(&(pid, task_span)))?;
        let info = self.callsites.get(&(pid, open.callsite))?;
        match &info.class {
            Class::Task(cs) => Some(identity::task_info(cs, &open.fields).name),
            _ => None,
        }
    }

    fn open_resource(&mut self, pid: u32) -> io::Result<()> {
        match self.out.open {
            Some((p, n)) if p == pid && n < SPANS_PER_RESOURCE => return Ok(()),
            Some(_) => self.out.put("]}]},")?,
            None => {}
        }
        let mut a = Json::default();
        let name = self
            .processes
            .get(&pid)
            .cloned()
            .or_else(|| {
                self.command
                    .first()
                    .map(|c| c.rsplit('/').next().unwrap_or(c).to_owned())
            })
            .unwrap_or_else(|| format!("pid {pid}"));
        let first = &mut true;
        a.raw("{\"resource\":{\"attributes\":[");
        a.attr_str(first, "service.name", &name);
        a.attr_int(first, "process.pid", i64::from(pid));
        a.attr_str(
            first,
            "process.command_line",
            &iotrace_analysis::summary::shell_join(&self.command),
        );
        a.attr_str(first, "host.name", &self.hostname);
        a.raw("]},\"scopeSpans\":[{\"scope\":{\"name\":\"iotrace\",\"version\":")
            .str(env!("CARGO_PKG_VERSION"))
            .raw("},\"spans\":[");
        self.out.put(&a.0)?;
        self.out.open = Some((pid, 0));
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        let mut orphans: Vec<_> = self.orphans.drain().collect();
        orphans.sort_by_key(|o| o.0);
        for ((pid, _), spans) in orphans {
            for (span, open) in spans {
                self.finish_span(pid, span, open)?;
            }
        }
        for (pid, span, open) in std::mem::take(&mut self.deferred) {
            self.emit(pid, span, &open)?;
        }
        let mut unnamed: Vec<_> = self.unnamed.drain().collect();
        unnamed.sort_by_key(|u| u.0);
        for (_, spans) in unnamed {
            for (pid, span, open) in spans {
                self.emit(pid, span, &open)?;
            }
        }
        self.left_out_open = self
            .spans
            .values()
            .filter(|o| o.created.is_some() && o.closed.is_none())
            .count() as u64;
        if self.out.open.is_some() {
            self.out.put("]}]}")?;
        }
        self.out.put("]}\n")
    }
}

/// Reads `trace` and writes its spans as OTLP/JSON to `out`.
pub fn export(
    trace: &Path,
    out: &Path,
    opts: &TimelineOptions,
) -> Result<FormatOutcome, ExportError> {
    let rel = window(opts)?;
    let mut reader = TraceReader::open(trace)?;
    reader.skip_kinds(&[
        kind::SWITCHES,
        kind::THREAD_COUNTS,
        kind::PROC_SAMPLE,
        kind::MMAP,
        kind::STACK_DEFS,
        kind::SAMPLES,
    ]);
    let write_err = |error| ExportError::Write {
        path: out.to_owned(),
        error,
    };
    let file = std::fs::File::create(out).map_err(write_err)?;
    let mut ex = Exporter {
        out: Writer {
            w: io::BufWriter::new(file),
            bytes: 0,
            open: None,
            spans: 0,
        },
        start_ns: 0,
        start_unix_ns: 0,
        window: (0, u64::MAX),
        hostname: String::new(),
        command: Vec::new(),
        callsites: FxHashMap::default(),
        spans: FxHashMap::default(),
        lineage: FxHashMap::default(),
        entered: FxHashMap::default(),
        deferred: Vec::new(),
        unnamed: FxHashMap::default(),
        orphans: FxHashMap::default(),
        threads: FxHashMap::default(),
        processes: FxHashMap::default(),
        latest: 0,
        pruned_at: 0,
        left_out_open: 0,
        json: Json::default(),
    };
    ex.out.put("{\"resourceSpans\":[").map_err(write_err)?;
    let mut saw_spans = false;
    for record in reader.by_ref() {
        match &record {
            Record::Header(h) => {
                if let Some(c) = h.command.first() {
                    let name = c.rsplit('/').next().unwrap_or(c).to_owned();
                    ex.threads.insert(h.pid, name);
                }
                ex.start_ns = h.start_ns;
                ex.start_unix_ns = h.start_unix_ns;
                ex.hostname = h.hostname.clone();
                ex.command = h.command.clone();
                ex.window = absolute(h.start_ns, rel);
            }
            Record::Fork(f) => {
                // A new thread has its creator's name until it sets its own.
                if let Some(name) = ex.threads.get(&f.ptid).cloned() {
                    ex.threads.entry(f.tid).or_insert(name);
                    ex.named(f.tid).map_err(write_err)?;
                }
            }
            Record::Comm(c) => {
                ex.threads.insert(c.tid, c.name.clone());
                ex.named(c.tid).map_err(write_err)?;
                if c.tid == c.pid {
                    ex.processes.insert(c.pid, c.name.clone());
                }
            }
            Record::Spans(batch) => {
                saw_spans = true;
                ex.batch(batch).map_err(write_err)?;
            }
            _ => {}
        }
    }
    ex.finish().map_err(write_err)?;
    ex.out.w.flush().map_err(write_err)?;
    let truncated = reader.stop().map(|s| s.to_string());
    if !saw_spans {
        let _ = std::fs::remove_file(out);
        let why = match &truncated {
            Some(t) => format!("before the damage: {t}"),
            None => "the program does not use the iotrace layer, or sent nothing".to_owned(),
        };
        return Err(ExportError::Empty(format!(
            "{}: no spans to export ({why})",
            trace.display()
        )));
    }
    Ok(FormatOutcome {
        items: ex.out.spans,
        bytes: ex.out.bytes,
        truncated,
        notes: (ex.left_out_open > 0)
            .then(|| format!("{} spans never closed and are not in it", ex.left_out_open))
            .into_iter()
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "plain",
            "quote \" and \\ backslash",
            "tab\tnewline\nreturn\r",
            "\u{8}\u{c}\u{1}\u{1f}",
            "ünïcødé / slash ← arrow",
            "",
        ] {
            let mut j = Json::default();
            j.str(s);
            assert_eq!(j.0, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn ids_are_zero_padded_hex() {
        let mut j = Json::default();
        j.hex(0xab, 8).raw(" ").hex(u64::MAX, 16);
        assert_eq!(j.0, format!("{:08x} {:016x}", 0xab, u64::MAX));
    }
}
