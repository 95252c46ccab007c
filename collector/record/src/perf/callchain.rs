//! The recorder's side of stack samples: interning perf callchains into the trace's stack tree
//! (each distinct frame-under-caller once per trace) and batching samples per CPU with
//! delta-encoded times, so that a sample costs a few bytes instead of a whole callchain.
//!
//! Kept cheap on purpose: one hash lookup per frame, no symbolization, no allocation per
//! sample once the tree holds the program's usual stacks.

use rustc_hash::FxHashMap as HashMap;

use iotrace_trace::{Samples, StackDefs, StackNode, StackSample};

/// perf callchain context markers (PERF_CONTEXT_KERNEL, _USER, …) are the top 4095 values.
const PERF_CONTEXT_MAX: u64 = (-4095i64) as u64;

/// The stack tree of one recording.
#[derive(Default)]
pub(crate) struct StackInterner {
    /// (parent node, address) → node.
    nodes: HashMap<(u32, u64), u32>,
    /// The current root node of each process (a new one after every exec).
    roots: HashMap<u32, u32>,
    /// Number of nodes defined so far (ids are 1-based).
    count: u32,
    /// Nodes not yet written to the trace.
    new_nodes: Vec<StackNode>,
}

impl StackInterner {
    fn define(&mut self, parent: u32, addr: u64) -> u32 {
        self.count += 1;
        self.new_nodes.push(StackNode { parent, addr });
        self.count
    }

    /// The node of `chain` (perf order: innermost frame first, with context markers) in
    /// process `pid`, defining whatever part of it is new.
    pub(crate) fn intern(&mut self, pid: u32, chain: &[u64]) -> u32 {
        let mut node = match self.roots.get(&pid) {
            Some(&root) => root,
            None => {
                let root = self.define(0, u64::from(pid));
                self.roots.insert(pid, root);
                root
            }
        };
        for &addr in chain.iter().rev() {
            if addr >= PERF_CONTEXT_MAX || addr == 0 {
                continue;
            }
            node = match self.nodes.get(&(node, addr)) {
                Some(&n) => n,
                None => {
                    let n = self.define(node, addr);
                    self.nodes.insert((node, addr), n);
                    n
                }
            };
        }
        node
    }

    /// `pid` exec'd: its address space is new, so its stacks start under a new root.
    pub(crate) fn exec(&mut self, pid: u32) {
        self.roots.remove(&pid);
    }

    /// Nodes defined since the last call, to be written before any sample that uses them.
    pub(crate) fn take_defs(&mut self) -> Option<StackDefs> {
        (!self.new_nodes.is_empty()).then(|| StackDefs {
            nodes: std::mem::take(&mut self.new_nodes),
        })
    }
}

/// A callchain taken at a switch-out, waiting for the switch record that says whether the
/// switch was voluntary.
pub(crate) struct PendingSwitch {
    pub pid: u32,
    pub tid: u32,
    pub time: u64,
    pub chain: Vec<u64>,
    /// The sample's user registers and stack copy, when its user stack is still to be
    /// unwound: that waits for the switch record, as a preempted switch-out's stack is
    /// dropped (a server is preempted about as often as it blocks).
    pub tail: Vec<u8>,
}

/// One CPU's samples since the last batch was written.
pub(crate) struct SampleBatch {
    batch: Samples,
    last_time: u64,
    /// The latest switch-out callchain of this CPU not yet matched with its switch record.
    pub pending: Option<PendingSwitch>,
    /// Reused buffers for pending callchains and stack copies.
    spare: Vec<u64>,
    spare_tail: Vec<u8>,
}

impl SampleBatch {
    pub(crate) fn new(cpu: u32) -> Self {
        SampleBatch {
            batch: Samples {
                cpu,
                ..Samples::default()
            },
            last_time: 0,
            pending: None,
            spare: Vec::new(),
            spare_tail: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, time: u64, tid: u32, stack: u32, off_cpu: Option<u16>) {
        if self.batch.samples.is_empty() {
            self.batch.base_ns = time;
            self.last_time = time;
        }
        self.batch.samples.push(StackSample {
            delta_ns: time.wrapping_sub(self.last_time),
            tid,
            stack,
            off_cpu,
        });
        self.last_time = time;
    }

    /// Keep a switch-out callchain until its switch record arrives.
    pub(crate) fn hold(&mut self, pid: u32, tid: u32, time: u64, chain: &[u64], tail: &[u8]) {
        let (mut buf, mut raw) = match self.pending.take() {
            Some(p) => (p.chain, p.tail),
            None => (
                std::mem::take(&mut self.spare),
                std::mem::take(&mut self.spare_tail),
            ),
        };
        buf.clear();
        buf.extend_from_slice(chain);
        raw.clear();
        raw.extend_from_slice(tail);
        self.pending = Some(PendingSwitch {
            pid,
            tid,
            time,
            chain: buf,
            tail: raw,
        });
    }

    /// Forgets the held callchain, if any (a switch-out whose stack is not kept came next).
    pub(crate) fn drop_held(&mut self) {
        if let Some(p) = self.pending.take() {
            self.spare = p.chain;
            self.spare_tail = p.tail;
        }
    }

    /// The switch record of `tid` arrived: a voluntary switch-out turns the held callchain
    /// into an off-CPU sample; a preemption drops it.
    pub(crate) fn switched_out(
        &mut self,
        tid: u32,
        voluntary: bool,
        syscall: u16,
        stacks: &mut StackInterner,
    ) {
        let Some(p) = self.pending.take_if(|p| p.tid == tid) else {
            return;
        };
        if voluntary {
            let stack = stacks.intern(p.pid, &p.chain);
            self.push(p.time, p.tid, stack, Some(syscall));
        }
        self.spare = p.chain;
        self.spare_tail = p.tail;
    }

    /// The samples so far, leaving the batch empty.
    pub(crate) fn take(&mut self) -> Option<Samples> {
        if self.batch.samples.is_empty() {
            return None;
        }
        let cpu = self.batch.cpu;
        Some(std::mem::replace(
            &mut self.batch,
            Samples {
                cpu,
                ..Samples::default()
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: u64 = (-128i64) as u64;
    const USER: u64 = (-512i64) as u64;

    #[test]
    fn shared_prefixes_are_defined_once() {
        let mut s = StackInterner::default();
        let a = s.intern(7, &[KERNEL, 0xffff_ffff_8100_0010, USER, 0x1000, 0x2000]);
        let defs = s.take_defs().unwrap();
        // root, 0x2000, 0x1000, kernel frame
        assert_eq!(defs.nodes.len(), 4);
        assert_eq!(defs.nodes[0], StackNode { parent: 0, addr: 7 });
        assert_eq!(defs.nodes[1].addr, 0x2000);
        assert_eq!(a, 4);
        let b = s.intern(7, &[USER, 0x1500, 0x2000]);
        let defs = s.take_defs().unwrap();
        assert_eq!(
            defs.nodes,
            vec![StackNode {
                parent: 2,
                addr: 0x1500
            }]
        );
        assert_eq!(b, 5);
        assert_eq!(s.intern(7, &[USER, 0x1500, 0x2000]), 5);
        assert!(s.take_defs().is_none());
        s.exec(7);
        assert_eq!(s.intern(7, &[USER, 0x1500, 0x2000]), 8);
    }

    #[test]
    fn preempted_switch_outs_are_dropped() {
        let mut s = StackInterner::default();
        let mut b = SampleBatch::new(0);
        b.hold(1, 2, 100, &[USER, 0x10], &[]);
        b.switched_out(2, false, 0, &mut s);
        assert!(b.take().is_none());
        b.hold(1, 2, 200, &[USER, 0x10], &[]);
        b.switched_out(3, true, 0, &mut s);
        assert!(b.take().is_none());
        b.switched_out(2, true, 35, &mut s);
        let batch = b.take().unwrap();
        assert_eq!(batch.base_ns, 200);
        assert_eq!(batch.samples[0].off_cpu, Some(35));
    }
}
