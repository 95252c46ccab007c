//! Which task and spans were active on a thread at an instant, from the program's span
//! events: a span is active on a thread between its Enter and Exit on that thread; a task is
//! a span of a task callsite (tokio's `runtime.spawn`, the green demo's `green.task`, or any
//! span with an `iotrace.task` field).
//!
//! Span batches of one thread arrive in order, but a thread's batch is sent only when its
//! buffer fills, some time after its first record, or at exit, so they lag behind perf samples
//! by an unknown amount. A thread's items wait until that thread's span events have covered
//! their instant, within a global limit on what waits. A span's creation record may come later
//! still (in the batch of the thread that created it): such a context is kept by span ids and
//! named when the trace has been read ([`SpanContexts::resolve`]).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use super::{StackItem, Strings};
use iotrace_wire::{CallsiteKind, FieldValue, SpanBatch, SpanEvent, Value};

/// Items that may wait for span events, over all threads; past this the oldest item of the
/// thread being added is attributed with what is known.
const MAX_HELD: usize = 1 << 18;
/// How long (in span time) a closed span's name is kept for late batches of other threads.
const CLOSED_KEEP_NS: u64 = 10_000_000_000;

/// A span context: the innermost task and the spans entered inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Context {
    /// Label of the innermost task (`task NAME`, `task FILE:LINE`, `blocking FILE:LINE`).
    pub task: Option<u32>,
    /// Names of the spans active inside that task (or of all spans when no task is), outermost
    /// first.
    pub spans: Vec<u32>,
}

/// Distinct contexts; id 0 is "no span active".
#[derive(Debug, Default)]
pub struct ContextTable {
    list: Vec<Context>,
    index: HashMap<Context, u32>,
    /// Contexts waiting for the creation records of their spans: id → (pid, span ids).
    pending: HashMap<u32, (u32, Vec<u64>)>,
}

impl ContextTable {
    fn intern(&mut self, c: Context) -> u32 {
        if c.task.is_none() && c.spans.is_empty() {
            return 0;
        }
        if let Some(&id) = self.index.get(&c) {
            return id;
        }
        self.list.push(c.clone());
        let id = self.list.len() as u32;
        self.index.insert(c, id);
        id
    }

    fn intern_pending(&mut self, pid: u32, stack: &[u64]) -> u32 {
        self.list.push(Context::default());
        let id = self.list.len() as u32;
        self.pending.insert(id, (pid, stack.to_vec()));
        id
    }

    /// The context of an id (`None` for 0). A context whose spans were not all known yet is
    /// named once the fold has finished.
    pub fn get(&self, id: u32) -> Option<&Context> {
        id.checked_sub(1).and_then(|i| self.list.get(i as usize))
    }
}

#[derive(Clone, Copy)]
struct SpanMeta {
    name: u32,
    /// Task label, when the span is a task.
    task: Option<u32>,
}

/// A span's creation record, named when its callsite is known.
enum Created {
    Named(SpanMeta),
    Raw {
        callsite: u64,
        fields: Vec<FieldValue>,
    },
}

struct CallsiteInfo {
    name: u32,
    is_task: bool,
    field: HashMap<String, usize>,
}

#[derive(Default)]
struct ThreadSpans {
    pid: u32,
    /// Span events not yet applied: (time, span, entered).
    events: VecDeque<(u64, u64, bool)>,
    /// Spans entered on this thread, outermost first.
    stack: Vec<u64>,
    /// All of this thread's span events up to this time have arrived.
    coverage: u64,
    items: VecDeque<StackItem>,
}

/// Span state of every thread, and the items waiting for it.
#[derive(Default)]
pub(super) struct SpanContexts {
    disabled: bool,
    callsites: HashMap<(u32, u64), CallsiteInfo>,
    spans: HashMap<(u32, u64), Created>,
    closed: VecDeque<(u64, (u32, u64))>,
    /// Spans that pending contexts name: kept after they close.
    pinned: HashSet<(u32, u64)>,
    threads: HashMap<u32, ThreadSpans>,
    /// Threads with waiting items.
    waiting: BTreeSet<u32>,
    held: usize,
    forced: u64,
    /// Newest span event time seen.
    newest: u64,
}

/// How [`SpanContexts::release_thread`] releases.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Items whose span events have arrived.
    Ready,
    /// Everything (end of the trace).
    All,
    /// The first item regardless, then those that are ready (too many items wait).
    ForceOne,
}

impl SpanContexts {
    /// The program sends no spans: items pass straight through.
    pub(super) fn disable(&mut self) {
        self.disabled = true;
    }

    pub(super) fn forced(&self) -> u64 {
        self.forced
    }

    pub(super) fn add(&mut self, batch: &SpanBatch, strings: &mut Strings) {
        let pid = batch.pid;
        let mut last = None;
        for event in &batch.events {
            match event {
                SpanEvent::Callsite(c) if c.kind == CallsiteKind::Span => {
                    let field: HashMap<String, usize> = c
                        .fields
                        .iter()
                        .enumerate()
                        .map(|(i, f)| (f.clone(), i))
                        .collect();
                    let is_task = c.name == "runtime.spawn"
                        || c.name == "green.task"
                        || field.contains_key("iotrace.task");
                    self.callsites.insert(
                        (pid, c.id),
                        CallsiteInfo {
                            name: strings.intern(&c.name),
                            is_task,
                            field,
                        },
                    );
                }
                SpanEvent::NewSpan {
                    span,
                    callsite,
                    fields,
                    ..
                } => {
                    let created = match self.callsites.get(&(pid, *callsite)) {
                        Some(cs) => Created::Named(meta(cs, fields, strings)),
                        None => Created::Raw {
                            callsite: *callsite,
                            fields: fields.clone(),
                        },
                    };
                    self.spans.insert((pid, *span), created);
                }
                SpanEvent::Close { time, span } => self.closed.push_back((*time, (pid, *span))),
                _ => {}
            }
            if let Some(t) = event.time() {
                self.newest = self.newest.max(t);
                last = Some(t);
            }
        }
        while self
            .closed
            .front()
            .is_some_and(|c| c.0.saturating_add(CLOSED_KEEP_NS) < self.newest)
        {
            if let Some((_, key)) = self.closed.pop_front() {
                if !self.pinned.contains(&key) {
                    self.spans.remove(&key);
                }
            }
        }
        if batch.tid == 0 {
            return;
        }
        let thread = self.threads.entry(batch.tid).or_default();
        thread.pid = pid;
        for event in &batch.events {
            match *event {
                SpanEvent::Enter { time, span } => thread.events.push_back((time, span, true)),
                SpanEvent::Exit { time, span } => thread.events.push_back((time, span, false)),
                _ => {}
            }
        }
        if let Some(t) = last {
            thread.coverage = thread.coverage.max(t);
        }
    }

    /// An item in time order for its thread.
    pub(super) fn push(
        &mut self,
        item: StackItem,
        strings: &mut Strings,
        contexts: &mut ContextTable,
        out: &mut Vec<StackItem>,
    ) {
        if self.disabled {
            out.push(item);
            return;
        }
        let thread = self.threads.entry(item.tid).or_default();
        thread.items.push_back(item);
        self.waiting.insert(item.tid);
        self.held += 1;
        if self.held > MAX_HELD {
            // Attribute this thread's oldest item with what is known so far.
            self.forced += 1;
            self.release_thread(item.tid, Mode::ForceOne, strings, contexts, out);
        }
    }

    /// Attribute every waiting item whose thread's span events have arrived (all of them if
    /// `all`). `watermark`: no item older than this will be pushed any more.
    pub(super) fn release(
        &mut self,
        all: bool,
        watermark: u64,
        strings: &mut Strings,
        contexts: &mut ContextTable,
        out: &mut Vec<StackItem>,
    ) {
        let mode = if all || self.disabled {
            Mode::All
        } else {
            Mode::Ready
        };
        let waiting: Vec<u32> = self.waiting.iter().copied().collect();
        for tid in waiting {
            self.release_thread(tid, mode, strings, contexts, out);
        }
        if !all {
            // Threads with nothing waiting: apply what can no longer matter to a future item,
            // so their event queues stay short.
            for thread in self.threads.values_mut() {
                if thread.items.is_empty() {
                    apply_until(thread, watermark);
                }
            }
        }
    }

    /// Release `tid`'s items in order while they are ready.
    fn release_thread(
        &mut self,
        tid: u32,
        mode: Mode,
        strings: &mut Strings,
        contexts: &mut ContextTable,
        out: &mut Vec<StackItem>,
    ) {
        let Some(thread) = self.threads.get_mut(&tid) else {
            return;
        };
        let mut force = mode != Mode::Ready;
        while let Some(&item) = thread.items.front() {
            if !force && item.time_ns > thread.coverage {
                break;
            }
            apply_until(thread, item.time_ns);
            thread.items.pop_front();
            self.held -= 1;
            let context = context_of(
                thread,
                &mut self.spans,
                &self.callsites,
                &mut self.pinned,
                strings,
                contexts,
            );
            out.push(StackItem { context, ..item });
            if mode == Mode::ForceOne {
                force = false;
            }
        }
        if thread.items.is_empty() {
            self.waiting.remove(&tid);
        }
    }

    /// Name the contexts whose spans were created after they were needed. Call after the
    /// last record; spans never created are named `span?`.
    pub(super) fn resolve(&mut self, strings: &mut Strings, contexts: &mut ContextTable) {
        let pending: Vec<(u32, (u32, Vec<u64>))> = contexts.pending.drain().collect();
        for (id, (pid, stack)) in pending {
            let metas: Vec<SpanMeta> = stack
                .iter()
                .map(|s| {
                    lookup(&mut self.spans, &self.callsites, pid, *s, strings)
                        .unwrap_or_else(|| unknown(strings))
                })
                .collect();
            if let Some(slot) = id
                .checked_sub(1)
                .and_then(|i| contexts.list.get_mut(i as usize))
            {
                *slot = context_from(&metas);
            }
        }
        self.pinned.clear();
    }
}

fn apply_until(thread: &mut ThreadSpans, time: u64) {
    while let Some(&(t, span, entered)) = thread.events.front() {
        if t > time {
            break;
        }
        thread.events.pop_front();
        if entered {
            thread.stack.push(span);
        } else if let Some(i) = thread.stack.iter().rposition(|&s| s == span) {
            thread.stack.remove(i);
        }
    }
}

fn unknown(strings: &mut Strings) -> SpanMeta {
    SpanMeta {
        name: strings.intern("span?"),
        task: None,
    }
}

fn meta(cs: &CallsiteInfo, fields: &[FieldValue], strings: &mut Strings) -> SpanMeta {
    SpanMeta {
        name: cs.name,
        task: cs
            .is_task
            .then(|| strings.intern(&task_label(cs, fields, strings))),
    }
}

/// A span's name and task label, if its creation (and its callsite) have been seen.
fn lookup(
    spans: &mut HashMap<(u32, u64), Created>,
    callsites: &HashMap<(u32, u64), CallsiteInfo>,
    pid: u32,
    span: u64,
    strings: &mut Strings,
) -> Option<SpanMeta> {
    let created = spans.get_mut(&(pid, span))?;
    match created {
        Created::Named(m) => Some(*m),
        Created::Raw { callsite, fields } => {
            let m = meta(callsites.get(&(pid, *callsite))?, fields, strings);
            *created = Created::Named(m);
            Some(m)
        }
    }
}

fn context_from(metas: &[SpanMeta]) -> Context {
    match metas.iter().rposition(|m| m.task.is_some()) {
        Some(i) => Context {
            task: metas[i].task,
            spans: metas[i + 1..].iter().map(|m| m.name).collect(),
        },
        None => Context {
            task: None,
            spans: metas.iter().map(|m| m.name).collect(),
        },
    }
}

fn context_of(
    thread: &ThreadSpans,
    spans: &mut HashMap<(u32, u64), Created>,
    callsites: &HashMap<(u32, u64), CallsiteInfo>,
    pinned: &mut HashSet<(u32, u64)>,
    strings: &mut Strings,
    contexts: &mut ContextTable,
) -> u32 {
    let mut metas = Vec::with_capacity(thread.stack.len());
    for &span in &thread.stack {
        match lookup(spans, callsites, thread.pid, span, strings) {
            Some(m) => metas.push(m),
            None => {
                // Named at the end, when the span's creation record has arrived.
                pinned.extend(thread.stack.iter().map(|&s| (thread.pid, s)));
                return contexts.intern_pending(thread.pid, &thread.stack);
            }
        }
    }
    contexts.intern(context_from(&metas))
}

/// `task NAME` from `task.name` or `iotrace.task`, else `task FILE:LINE` (tokio's `loc.*`
/// fields; `blocking …` for `spawn_blocking` and worker threads), else the span's name.
fn task_label(cs: &CallsiteInfo, fields: &[FieldValue], strings: &Strings) -> String {
    let get = |name: &str| {
        let index = *cs.field.get(name)?;
        fields
            .iter()
            .find(|f| usize::from(f.index) == index)
            .map(|f| value_text(&f.value))
            // tokio records an unnamed task's `task.name` as "".
            .filter(|v| !v.is_empty())
    };
    let prefix = match get("kind").as_deref() {
        Some("blocking") => "blocking",
        Some("block_on") => "block_on",
        _ => "task",
    };
    if let Some(name) = get("task.name").or_else(|| get("iotrace.task")) {
        return format!("{prefix} {name}");
    }
    if let Some(file) = get("loc.file") {
        let mut short: Vec<&str> = file.rsplit('/').take(2).collect();
        short.reverse();
        let line = get("loc.line").unwrap_or_default();
        return format!("{prefix} {}:{line}", short.join("/"));
    }
    format!("{prefix} {}", strings.get(cs.name))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::U64(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::F64(f) => f.to_string(),
        Value::Str(s) => s.clone(),
        Value::Span(s) => format!("span {s}"),
    }
}
