//! Span totals: what the program's iotrace layer sent, folded in one pass. Busy time is the
//! time a span was entered (summed over its enters, per thread); lifetime is creation to close.

use rustc_hash::FxHashMap as HashMap;

use serde::Serialize;

use iotrace_wire::{CallsiteKind, SpanBatch, SpanEvent};

/// The `spans` object of `iotrace report --json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpanSummary {
    /// Span events stored in the trace.
    pub events: u64,
    /// Events the program's layer dropped because the recorder could not keep up.
    pub dropped: u64,
    /// Processes that connected to the span socket.
    pub clients: u64,
    /// Connections dropped for breaking the protocol.
    pub bad_clients: u64,
    pub warnings: Vec<String>,
    /// Spans created, and how many of them closed.
    pub spans_created: u64,
    pub spans_closed: u64,
    /// Closed spans named `request` (the demos' per-request span).
    pub requests: u64,
    /// Span names by busy time, descending.
    pub top: Vec<SpanTotal>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SpanTotal {
    pub name: String,
    pub target: String,
    pub count: u64,
    pub enters: u64,
    pub busy_ns: u64,
    pub lifetime_ns: u64,
}

/// What is known of one span so far. Batches come per thread and threads flush
/// independently, so a span's close or enters can arrive before its creation.
#[derive(Default)]
struct SpanAcc {
    callsite: Option<u64>,
    created: Option<u64>,
    closed: Option<u64>,
    enters: u64,
    busy_ns: u64,
}

/// Incremental fold of span batches.
#[derive(Default)]
pub struct SpanSummarizer {
    summary: SpanSummary,
    /// (pid, callsite) → index into `totals`.
    callsites: HashMap<(u32, u64), usize>,
    totals: Vec<SpanTotal>,
    name_index: HashMap<(String, String), usize>,
    /// Spans not yet both created and closed, by (pid, span).
    spans: HashMap<(u32, u64), SpanAcc>,
    /// Finished spans whose callsite definition has not arrived yet.
    deferred: Vec<(u32, SpanAcc)>,
    /// (pid, tid, span) → entered at.
    entered: HashMap<(u32, u32, u64), u64>,
}

impl SpanSummarizer {
    pub fn add(&mut self, batch: &SpanBatch) {
        let pid = batch.pid;
        self.summary.events += batch.events.len() as u64;
        for event in &batch.events {
            match event {
                SpanEvent::Callsite(c) if c.kind == CallsiteKind::Span => {
                    let key = (c.name.clone(), c.target.clone());
                    let idx = match self.name_index.get(&key) {
                        Some(&i) => i,
                        None => {
                            self.totals.push(SpanTotal {
                                name: c.name.clone(),
                                target: c.target.clone(),
                                ..SpanTotal::default()
                            });
                            self.name_index.insert(key, self.totals.len() - 1);
                            self.totals.len() - 1
                        }
                    };
                    self.callsites.insert((pid, c.id), idx);
                }
                SpanEvent::NewSpan {
                    time,
                    span,
                    callsite,
                    ..
                } => {
                    self.summary.spans_created += 1;
                    let acc = self.spans.entry((pid, *span)).or_default();
                    acc.callsite = Some(*callsite);
                    acc.created = Some(*time);
                    self.maybe_finish(pid, *span);
                }
                SpanEvent::Enter { time, span } => {
                    self.entered.insert((pid, batch.tid, *span), *time);
                }
                SpanEvent::Exit { time, span } => {
                    if let Some(since) = self.entered.remove(&(pid, batch.tid, *span)) {
                        let acc = self.spans.entry((pid, *span)).or_default();
                        acc.enters += 1;
                        acc.busy_ns += time.saturating_sub(since);
                    }
                }
                SpanEvent::Close { time, span } => {
                    self.summary.spans_closed += 1;
                    self.spans.entry((pid, *span)).or_default().closed = Some(*time);
                    self.maybe_finish(pid, *span);
                }
                _ => {}
            }
        }
    }

    fn maybe_finish(&mut self, pid: u32, span: u64) {
        let done = self
            .spans
            .get(&(pid, span))
            .is_some_and(|a| a.created.is_some() && a.closed.is_some());
        if done {
            if let Some(acc) = self.spans.remove(&(pid, span)) {
                if !self.account(pid, &acc) {
                    self.deferred.push((pid, acc));
                }
            }
        }
    }

    /// Add a span to its name's totals; false if its callsite is not known (yet).
    fn account(&mut self, pid: u32, acc: &SpanAcc) -> bool {
        let Some(&idx) = acc.callsite.and_then(|c| self.callsites.get(&(pid, c))) else {
            return false;
        };
        let total = &mut self.totals[idx];
        total.count += 1;
        total.enters += acc.enters;
        total.busy_ns += acc.busy_ns;
        if let (Some(created), Some(closed)) = (acc.created, acc.closed) {
            total.lifetime_ns += closed.saturating_sub(created);
            if total.name == "request" {
                self.summary.requests += 1;
            }
        }
        true
    }

    pub fn set_stats(&mut self, stats: &iotrace_trace::SpanStats) {
        self.summary.dropped = stats.dropped;
        self.summary.clients = stats.clients;
        self.summary.bad_clients = stats.bad_clients;
        self.summary.warnings = stats.warnings.clone();
    }

    pub fn finish(mut self, top: usize) -> SpanSummary {
        // Spans still open at the end, and finished ones whose callsite came late.
        let open: Vec<((u32, u64), SpanAcc)> = self.spans.drain().collect();
        for ((pid, _), acc) in open {
            if acc.created.is_some() {
                self.account(pid, &acc);
            }
        }
        for (pid, acc) in std::mem::take(&mut self.deferred) {
            self.account(pid, &acc);
        }
        self.totals
            .sort_by(|a, b| b.busy_ns.cmp(&a.busy_ns).then(b.count.cmp(&a.count)));
        self.totals.retain(|t| t.count > 0);
        self.totals.truncate(top);
        self.summary.top = self.totals;
        self.summary
    }
}
