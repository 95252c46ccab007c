//! Puts perf-derived events back in time order and pairs each off-CPU stack with the
//! thread's next switch-in.
//!
//! Each CPU's records are in order, but CPUs are drained one after the other, so records of
//! different CPUs interleave in the file up to about one drain interval apart. Events wait in
//! a heap until the newest perf time seen is [`LAG_NS`] past them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{OffCpu, StackItem};

/// How far behind the newest perf time an event is taken as final. The recorder drains every
/// CPU at least every 100 ms; this leaves room for a recorder that fell behind.
pub(super) const LAG_NS: u64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    /// A switch-in sorts before a sample of the same instant: it ends the stretch before.
    SwitchIn,
    Sample {
        stack: u32,
        off_cpu: Option<u16>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    time: u64,
    seq: u64,
    tid: u32,
    what: What,
}

#[derive(Default)]
pub(super) struct Reorder {
    heap: BinaryHeap<Reverse<Event>>,
    seq: u64,
    newest: u64,
    /// Off-CPU stacks waiting for their thread's switch-in: tid → (time, stack, syscall).
    away: HashMap<u32, (u64, u32, u16)>,
    unfinished: u64,
}

impl Reorder {
    fn push(&mut self, time: u64, tid: u32, what: What) {
        self.seq += 1;
        self.heap.push(Reverse(Event {
            time,
            seq: self.seq,
            tid,
            what,
        }));
    }

    pub(super) fn sample(&mut self, time: u64, tid: u32, stack: u32, off_cpu: Option<u16>) {
        self.push(time, tid, What::Sample { stack, off_cpu });
    }

    pub(super) fn switch_in(&mut self, time: u64, tid: u32) {
        // Only threads with a pending off-CPU stack care; others are dropped on release.
        self.push(time, tid, What::SwitchIn);
    }

    /// A perf record of this time was read.
    pub(super) fn saw(&mut self, time: u64) {
        self.newest = self.newest.max(time);
    }

    /// Everything at or before this time has been (or will now be) released.
    pub(super) fn watermark(&self) -> u64 {
        self.newest.saturating_sub(LAG_NS)
    }

    /// Move the events that are final (all of them if `all`) into `out` as items.
    pub(super) fn release(&mut self, all: bool, out: &mut Vec<StackItem>) {
        let limit = if all { u64::MAX } else { self.watermark() };
        while self.heap.peek().is_some_and(|e| e.0.time <= limit) {
            let Some(Reverse(e)) = self.heap.pop() else {
                break;
            };
            match e.what {
                What::Sample {
                    stack,
                    off_cpu: None,
                } => out.push(StackItem {
                    tid: e.tid,
                    time_ns: e.time,
                    stack,
                    off_cpu: None,
                    context: 0,
                }),
                What::Sample {
                    stack,
                    off_cpu: Some(syscall),
                } => {
                    if self.away.insert(e.tid, (e.time, stack, syscall)).is_some() {
                        // The switch-in that should have ended the previous one was lost.
                        self.unfinished += 1;
                    }
                }
                What::SwitchIn => {
                    if let Some((since, stack, syscall)) = self.away.remove(&e.tid) {
                        out.push(StackItem {
                            tid: e.tid,
                            time_ns: since,
                            stack,
                            off_cpu: Some(OffCpu {
                                duration_ns: e.time.saturating_sub(since),
                                syscall,
                            }),
                            context: 0,
                        });
                    }
                }
            }
        }
    }

    /// Off-CPU stacks that never saw their switch-in (counted once, at the end).
    pub(super) fn take_unfinished(&mut self) -> u64 {
        let n = self.unfinished + self.away.len() as u64;
        self.away.clear();
        self.unfinished = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_in_read_before_its_switch_out_still_pairs() {
        let mut r = Reorder::default();
        // CPU 1's switch-in (t=300) is read before CPU 0's off-CPU stack (t=100).
        r.switch_in(300, 7);
        r.sample(100, 7, 5, Some(35));
        r.sample(350, 7, 6, None);
        r.saw(350);
        let mut out = Vec::new();
        r.release(false, &mut out);
        assert!(out.is_empty(), "nothing is final within the lag");
        r.release(true, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].time_ns, 100);
        assert_eq!(
            out[0].off_cpu,
            Some(OffCpu {
                duration_ns: 200,
                syscall: 35
            })
        );
        assert_eq!(out[1].off_cpu, None);
        assert_eq!(r.take_unfinished(), 0);
    }

    #[test]
    fn a_thread_that_never_runs_again_is_counted() {
        let mut r = Reorder::default();
        r.sample(100, 7, 5, Some(35));
        let mut out = Vec::new();
        r.release(true, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.take_unfinished(), 1);
    }
}
