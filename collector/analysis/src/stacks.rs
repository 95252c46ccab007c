//! Stack samples of a trace, in one streaming pass, ready to be counted into flamegraphs.
//!
//! [`StackFold`] takes records one at a time and hands out [`StackItem`]s: an on-CPU sample,
//! or an off-CPU stretch (a voluntary switch-out's stack, weighted by the time until that
//! thread's next switch-in), each with the span context that was active on its thread at
//! that instant when asked for. Records of different CPUs (and span batches of different
//! threads) arrive out of order, so items are put back in time order per thread with bounded
//! buffering: memory grows with the number of distinct stacks and threads, not with the
//! length of the trace.
//!
//! The stack tree itself ([`StackTable`]) and the processes' executable mappings
//! ([`AddressSpaces`]) stay available afterwards for symbolization (`crate::symbolize`).

mod context;
mod order;

use std::collections::HashMap;

use iotrace_trace::{Mmap, Record, StackDefs};

pub use context::{Context, ContextTable};

/// Index of an address space in [`AddressSpaces`].
pub type SpaceId = u32;

/// The stack tree: node `n` (1-based) is a frame whose caller is its parent.
#[derive(Debug, Default)]
pub struct StackTable {
    /// `(parent, addr, address space)`; index 0 is a placeholder.
    nodes: Vec<(u32, u64, SpaceId)>,
}

impl StackTable {
    fn add(&mut self, defs: &StackDefs, spaces: &mut AddressSpaces) {
        if self.nodes.is_empty() {
            self.nodes.push((0, 0, 0));
        }
        for n in &defs.nodes {
            let space = if n.parent == 0 {
                spaces.current(n.addr as u32)
            } else {
                match self.nodes.get(n.parent as usize) {
                    Some(&(_, _, space)) => space,
                    // A parent that was never defined: the file is damaged; keep the numbering.
                    None => spaces.current(0),
                }
            };
            self.nodes.push((n.parent, n.addr, space));
        }
    }

    /// Whether `node` was defined.
    pub fn contains(&self, node: u32) -> bool {
        node != 0 && (node as usize) < self.nodes.len()
    }

    /// Whether `node` is a frame (not a process root, not undefined).
    fn is_frame(&self, node: u32) -> bool {
        self.nodes.get(node as usize).is_some_and(|n| n.0 != 0)
    }

    /// Instruction address and address space of a frame node.
    pub fn frame(&self, node: u32) -> Option<(u64, SpaceId)> {
        let &(parent, addr, space) = self.nodes.get(node as usize)?;
        (parent != 0).then_some((addr, space))
    }

    /// Frames of the stack `leaf` from the innermost out, as the symbolizer looks them up, each
    /// with whether it is a kernel frame. Return addresses (every frame but the innermost of the
    /// kernel part and of the user part) are looked up one byte earlier.
    pub fn frame_keys(
        &self,
        leaf: u32,
    ) -> impl Iterator<Item = (crate::symbolize::FrameKey, bool)> + '_ {
        let mut previous_kernel: Option<bool> = None;
        self.walk(leaf).map(move |node| {
            let kernel = self
                .frame(node)
                .is_some_and(|(a, _)| crate::symbolize::is_kernel(a));
            let sampled = match previous_kernel {
                None => true,
                Some(pk) => pk && !kernel,
            };
            previous_kernel = Some(kernel);
            ((node, !sampled), kernel)
        })
    }

    /// Frame nodes of the stack `leaf`, from the innermost outwards.
    pub fn walk(&self, leaf: u32) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.is_frame(leaf).then_some(leaf);
        // A damaged file could make a cycle; no stack is deeper than the tree is large.
        let mut left = self.nodes.len();
        std::iter::from_fn(move || {
            let node = next?;
            left = left.checked_sub(1)?;
            let parent = self.nodes[node as usize].0;
            next = self.is_frame(parent).then_some(parent);
            Some(node)
        })
    }

    pub fn len(&self) -> usize {
        self.nodes.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One executable mapping of an address space.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub ino: u64,
    pub filename: String,
}

/// The executable mappings of every process of the trace, one address space per process
/// image (an exec starts a new one; a fork copies its parent's).
#[derive(Debug, Default)]
pub struct AddressSpaces {
    spaces: Vec<(u32, Vec<Mapping>)>,
    current: HashMap<u32, SpaceId>,
}

impl AddressSpaces {
    fn current(&mut self, pid: u32) -> SpaceId {
        if let Some(&s) = self.current.get(&pid) {
            return s;
        }
        self.new_space(pid, Vec::new())
    }

    fn new_space(&mut self, pid: u32, mappings: Vec<Mapping>) -> SpaceId {
        self.spaces.push((pid, mappings));
        let id = (self.spaces.len() - 1) as SpaceId;
        self.current.insert(pid, id);
        id
    }

    fn exec(&mut self, pid: u32) {
        self.new_space(pid, Vec::new());
    }

    fn fork(&mut self, parent: u32, child: u32) {
        let copied = self
            .current
            .get(&parent)
            .map(|&s| self.spaces[s as usize].1.clone())
            .unwrap_or_default();
        self.new_space(child, copied);
    }

    fn mmap(&mut self, m: &Mmap) {
        let space = self.current(m.pid);
        self.spaces[space as usize].1.push(Mapping {
            start: m.addr,
            end: m.addr.saturating_add(m.len),
            pgoff: m.pgoff,
            ino: m.ino,
            filename: m.filename.clone(),
        });
    }

    /// The mapping holding `addr` in `space` (the latest one, if mappings were replaced).
    pub fn lookup(&self, space: SpaceId, addr: u64) -> Option<&Mapping> {
        let (_, maps) = self.spaces.get(space as usize)?;
        maps.iter().rev().find(|m| m.start <= addr && addr < m.end)
    }

    /// The process an address space belongs to.
    pub fn pid(&self, space: SpaceId) -> Option<u32> {
        self.spaces.get(space as usize).map(|s| s.0)
    }
}

/// An off-CPU stretch: how long the thread was away and the syscall it slept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffCpu {
    pub duration_ns: u64,
    /// Syscall number (`u16::MAX`: unknown).
    pub syscall: u16,
}

/// One stack sample, in time order per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackItem {
    pub tid: u32,
    /// CLOCK_MONOTONIC ns: the sample, or the switch-out.
    pub time_ns: u64,
    /// Innermost stack node (see [`StackTable`]).
    pub stack: u32,
    /// `None` for an on-CPU sample.
    pub off_cpu: Option<OffCpu>,
    /// Span context (see [`ContextTable`]); 0 when not asked for or none was active.
    pub context: u32,
}

/// What the fold saw, for the user's information.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldStats {
    pub on_cpu_samples: u64,
    pub off_cpu_samples: u64,
    /// Off-CPU stacks whose thread never ran again before the trace ended.
    pub off_cpu_unfinished: u64,
    /// Samples that name a stack the trace never defined (a damaged file).
    pub undefined_stacks: u64,
    /// Items given a span context before all of their thread's span events had arrived
    /// (the buffer limit was reached).
    pub contexts_forced: u64,
}

/// What a [`StackFold`] hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub on_cpu: bool,
    /// Off-CPU stretches (pairs stacks with switch-ins).
    pub off_cpu: bool,
    /// The span context of each item (waits for span events).
    pub contexts: bool,
}

/// Names of threads and of the processes they belong to.
#[derive(Debug, Default)]
pub struct Threads {
    names: HashMap<u32, (u32, u32)>,
}

impl Threads {
    /// `(pid, name)` of a thread (the latest name it had).
    pub fn get(&self, tid: u32) -> Option<(u32, u32)> {
        self.names.get(&tid).copied()
    }
}

/// The streaming fold of a trace's stack samples.
pub struct StackFold {
    pub stacks: StackTable,
    pub spaces: AddressSpaces,
    pub threads: Threads,
    pub strings: Strings,
    pub contexts: ContextTable,
    /// On-CPU sampling frequency (0 when unknown).
    pub frequency_hz: u64,
    pub start_ns: u64,
    pub boot_id: String,
    pub stats: FoldStats,
    order: order::Reorder,
    spans: Option<context::SpanContexts>,
    need: Need,
}

impl StackFold {
    /// `with_contexts`: attribute each item to the span context active on its thread.
    pub fn new(with_contexts: bool) -> Self {
        Self::with(Need {
            on_cpu: true,
            off_cpu: true,
            contexts: with_contexts,
        })
    }

    /// A fold that hands out only what `need` asks for (and does less work for it).
    pub fn with(need: Need) -> Self {
        StackFold {
            need,
            stacks: StackTable::default(),
            spaces: AddressSpaces::default(),
            threads: Threads::default(),
            strings: Strings::default(),
            contexts: ContextTable::default(),
            frequency_hz: 0,
            start_ns: 0,
            boot_id: String::new(),
            stats: FoldStats::default(),
            order: order::Reorder::default(),
            spans: need.contexts.then(context::SpanContexts::default),
        }
    }

    /// Fold one record; items that are ready go to `sink`, in time order per thread.
    pub fn add(&mut self, record: &Record, sink: &mut dyn FnMut(&mut StackFold, StackItem)) {
        match record {
            Record::Header(h) => {
                self.start_ns = h.start_ns;
                let name = self.strings.intern(command_name(&h.command));
                self.threads.names.insert(h.pid, (h.pid, name));
            }
            // No span socket, so no span events will come: do not hold items back for them.
            Record::Capabilities(c) if !c.spans => {
                if let Some(s) = self.spans.as_mut() {
                    s.disable();
                }
            }
            Record::Sampling(s) => {
                self.frequency_hz = s.frequency_hz;
                self.boot_id = s.boot_id.clone();
            }
            Record::Comm(c) => {
                if c.exec {
                    self.spaces.exec(c.pid);
                }
                let name = self.strings.intern(&c.name);
                self.threads.names.insert(c.tid, (c.pid, name));
            }
            Record::Fork(f) => {
                if f.pid == f.tid && f.pid != f.ppid {
                    self.spaces.fork(f.ppid, f.pid);
                }
                let parent = self.threads.names.get(&f.ptid).map(|p| p.1);
                let name = parent.unwrap_or_else(|| self.strings.intern(""));
                self.threads.names.entry(f.tid).or_insert((f.pid, name));
            }
            Record::Mmap(m) => self.spaces.mmap(m),
            Record::StackDefs(d) => self.stacks.add(d, &mut self.spaces),
            Record::Samples(batch) => {
                // On-CPU samples alone need no reordering: nothing pairs them or waits.
                let direct = !self.need.off_cpu && !self.need.contexts;
                let mut time = batch.base_ns;
                for s in &batch.samples {
                    time = time.wrapping_add(s.delta_ns);
                    if !self.stacks.contains(s.stack) {
                        self.stats.undefined_stacks += 1;
                        continue;
                    }
                    let wanted = match s.off_cpu {
                        None => {
                            self.stats.on_cpu_samples += 1;
                            self.need.on_cpu
                        }
                        Some(_) => {
                            self.stats.off_cpu_samples += 1;
                            self.need.off_cpu
                        }
                    };
                    if !wanted {
                        continue;
                    }
                    if direct {
                        let item = StackItem {
                            tid: s.tid,
                            time_ns: time,
                            stack: s.stack,
                            off_cpu: None,
                            context: 0,
                        };
                        sink(&mut *self, item);
                    } else {
                        self.order.sample(time, s.tid, s.stack, s.off_cpu);
                    }
                }
                self.order.saw(time);
                self.release(false, sink);
            }
            Record::Switches(batch) if self.need.off_cpu => {
                let mut time = batch.base_ns;
                for s in &batch.switches {
                    time = time.wrapping_add(s.delta_ns);
                    if !s.is_out() {
                        self.order.switch_in(time, s.tid);
                    }
                }
                self.order.saw(time);
                self.release(false, sink);
            }
            Record::Spans(batch) => {
                if let Some(spans) = self.spans.as_mut() {
                    spans.add(batch, &mut self.strings);
                }
                self.release(false, sink);
            }
            _ => {}
        }
    }

    /// Hand out everything still buffered. Call once, after the last record; only then are
    /// all contexts named (an item's context may name spans created after it was handed out).
    pub fn finish(&mut self, sink: &mut dyn FnMut(&mut StackFold, StackItem)) {
        self.release(true, sink);
    }

    fn release(&mut self, all: bool, sink: &mut dyn FnMut(&mut StackFold, StackItem)) {
        let mut ready = Vec::new();
        self.order.release(all, &mut ready);
        if all {
            self.stats.off_cpu_unfinished += self.order.take_unfinished();
        }
        match self.spans.as_mut() {
            None => {
                for item in ready {
                    sink(&mut *self, item);
                }
            }
            Some(spans) => {
                let mut out = Vec::new();
                for item in ready {
                    spans.push(item, &mut self.strings, &mut self.contexts, &mut out);
                }
                let watermark = self.order.watermark();
                spans.release(
                    all,
                    watermark,
                    &mut self.strings,
                    &mut self.contexts,
                    &mut out,
                );
                self.stats.contexts_forced = spans.forced();
                if all {
                    spans.resolve(&mut self.strings, &mut self.contexts);
                }
                for item in out {
                    sink(&mut *self, item);
                }
            }
        }
    }
}

/// Interned strings (frame, thread, span and task names).
#[derive(Debug, Default)]
pub struct Strings {
    list: Vec<String>,
    index: HashMap<String, u32>,
}

impl Strings {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        self.list.push(s.to_owned());
        let id = (self.list.len() - 1) as u32;
        self.index.insert(s.to_owned(), id);
        id
    }

    pub fn get(&self, id: u32) -> &str {
        self.list.get(id as usize).map_or("", String::as_str)
    }
}

/// The program's name from a command line (for the main process before its first comm).
fn command_name(command: &[String]) -> &str {
    command
        .first()
        .map(|c| c.rsplit('/').next().unwrap_or(c))
        .unwrap_or("")
}

#[cfg(test)]
mod tests;
