//! Span totals: what the program's iotrace layer sent, folded in one pass. Busy time is the
//! time a span was entered (summed over its enters, per thread); lifetime is creation to close.

use std::collections::HashMap;

use serde::Serialize;

use crate::intake::{CallsiteKind, SpanBatch, SpanEvent};

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

/// Incremental fold of span batches.
#[derive(Default)]
pub struct SpanSummarizer {
    summary: SpanSummary,
    /// (pid, callsite) → index into `totals`.
    callsites: HashMap<(u32, u64), usize>,
    totals: Vec<SpanTotal>,
    name_index: HashMap<(String, String), usize>,
    /// (pid, span) → (totals index, created at).
    live: HashMap<(u32, u64), (usize, u64)>,
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
                    if let Some(&idx) = self.callsites.get(&(pid, *callsite)) {
                        self.totals[idx].count += 1;
                        self.live.insert((pid, *span), (idx, *time));
                    }
                }
                SpanEvent::Enter { time, span } => {
                    self.entered.insert((pid, batch.tid, *span), *time);
                }
                SpanEvent::Exit { time, span } => {
                    if let Some(since) = self.entered.remove(&(pid, batch.tid, *span)) {
                        if let Some(&(idx, _)) = self.live.get(&(pid, *span)) {
                            self.totals[idx].enters += 1;
                            self.totals[idx].busy_ns += time.saturating_sub(since);
                        }
                    }
                }
                SpanEvent::Close { time, span } => {
                    self.summary.spans_closed += 1;
                    if let Some((idx, created)) = self.live.remove(&(pid, *span)) {
                        let total = &mut self.totals[idx];
                        total.lifetime_ns += time.saturating_sub(created);
                        if total.name == "request" {
                            self.summary.requests += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    pub fn set_stats(&mut self, stats: &crate::format::SpanStats) {
        self.summary.dropped = stats.dropped;
        self.summary.clients = stats.clients;
        self.summary.bad_clients = stats.bad_clients;
        self.summary.warnings = stats.warnings.clone();
    }

    pub fn finish(mut self, top: usize) -> SpanSummary {
        self.totals
            .sort_by(|a, b| b.busy_ns.cmp(&a.busy_ns).then(b.count.cmp(&a.count)));
        self.totals.retain(|t| t.count > 0);
        self.totals.truncate(top);
        self.summary.top = self.totals;
        self.summary
    }
}
