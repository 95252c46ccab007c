//! Records read from the per-CPU rings, put back in time order before they are processed.
//!
//! Each CPU's ring is in that CPU's order, but the rings are drained one after another. A
//! process that exec'd on CPU 1 and forked on CPU 0 would otherwise have its FORK record
//! processed before its parent's COMM/MMAP2 records: the child then gets the address space
//! (and name) the parent had before exec, and its frames have no mapping. So records are
//! copied out of the rings, and then taken from whichever ring holds the earliest one, up to a
//! watermark: a time by which every ring is known to hold every record stamped earlier. This
//! is perf's "finished round" ordering (`tools/perf/util/ordered-events.c` does the same
//! with its own buffers).

use std::collections::VecDeque;

/// One record copied out of a ring.
#[derive(Clone, Copy)]
struct Entry {
    ty: u32,
    misc: u16,
    time: u64,
    start: usize,
    len: usize,
}

/// A record taken out of a [`Pending`] whose bytes are still there.
#[derive(Clone, Copy)]
pub(crate) struct Taken(Entry);

/// One ring's records not yet processed, in ring order.
#[derive(Default)]
pub(crate) struct Pending {
    bytes: Vec<u8>,
    entries: VecDeque<Entry>,
}

impl Pending {
    /// Copy a record read from the ring.
    pub(crate) fn push(&mut self, ty: u32, misc: u16, time: u64, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.entries.push_back(Entry {
            ty,
            misc,
            time,
            start,
            len: data.len(),
        });
    }

    /// Time of the earliest record not yet taken.
    pub(crate) fn head_time(&self) -> Option<u64> {
        self.entries.front().map(|e| e.time)
    }

    /// Take the earliest record: `(type, misc, bytes)`. Its bytes stay until [`compact`].
    ///
    /// [`compact`]: Pending::compact
    #[cfg(test)]
    pub(crate) fn pop(&mut self) -> Option<(u32, u16, &[u8])> {
        let e = self.pop_entry()?;
        Some(self.get(e))
    }

    /// Take the earliest record, to read with [`Pending::get`] (its bytes stay until
    /// [`compact`]) while [`Pending::peek`] looks at the next.
    ///
    /// [`compact`]: Pending::compact
    pub(crate) fn pop_entry(&mut self) -> Option<Taken> {
        self.entries.pop_front().map(Taken)
    }

    /// A taken record: `(type, misc, bytes)`.
    pub(crate) fn get(&self, t: Taken) -> (u32, u16, &[u8]) {
        let e = t.0;
        (e.ty, e.misc, &self.bytes[e.start..e.start + e.len])
    }

    /// The next record, not taken: `(type, misc, bytes)`.
    pub(crate) fn peek(&self) -> Option<(u32, u16, &[u8])> {
        self.entries.front().map(|&e| self.get(Taken(e)))
    }

    /// Drop the bytes of records already taken (once per drain round). The bytes still to be
    /// taken move to the front only once the taken ones are at least half of the buffer, so each
    /// byte is moved about once however many rounds it waits behind the watermark, not once per
    /// round.
    pub(crate) fn compact(&mut self) {
        let Some(first) = self.entries.front().map(|e| e.start) else {
            self.bytes.clear();
            return;
        };
        if first == 0 || first < self.bytes.len() / 2 {
            return;
        }
        self.bytes.drain(..first);
        for e in self.entries.iter_mut() {
            e.start -= first;
        }
    }

    /// Calls `f` with the bytes of every record of type `ty` not yet taken.
    pub(crate) fn each(&self, ty: u32, f: &mut dyn FnMut(&[u8])) {
        for e in self.entries.iter().filter(|e| e.ty == ty) {
            f(&self.bytes[e.start..e.start + e.len]);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Which ring holds the earliest record stamped at or before `watermark`.
pub(crate) fn earliest<'a>(
    rings: impl Iterator<Item = &'a Pending>,
    watermark: u64,
) -> Option<usize> {
    rings
        .enumerate()
        .filter_map(|(i, p)| p.head_time().filter(|&t| t <= watermark).map(|t| (t, i)))
        .min()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all(rings: &mut [Pending], watermark: u64) -> Vec<(usize, u32)> {
        let mut order = Vec::new();
        while let Some(i) = earliest(rings.iter(), watermark) {
            let (ty, _, _) = rings[i].pop().unwrap();
            order.push((i, ty));
        }
        order
    }

    #[test]
    fn records_of_two_rings_come_out_in_time_order() {
        let mut rings = [Pending::default(), Pending::default()];
        // CPU 0 holds the fork (time 30); CPU 1 the exec and mmap before it (10, 20).
        rings[0].push(7, 0, 30, b"fork");
        rings[0].push(9, 0, 40, b"sample");
        rings[1].push(3, 0, 10, b"comm");
        rings[1].push(10, 0, 20, b"mmap");
        assert_eq!(
            take_all(&mut rings, u64::MAX),
            vec![(1, 3), (1, 10), (0, 7), (0, 9)]
        );
    }

    #[test]
    fn records_after_the_watermark_wait_for_the_next_round() {
        let mut rings = [Pending::default(), Pending::default()];
        rings[0].push(1, 0, 5, b"a");
        rings[0].push(2, 0, 50, b"b");
        rings[1].push(3, 0, 60, b"c");
        assert_eq!(take_all(&mut rings, 40), vec![(0, 1)]);
        for r in rings.iter_mut() {
            r.compact();
        }
        assert_eq!((rings[0].len(), rings[1].len()), (1, 1));
        rings[1].push(4, 0, 45, b"d");
        assert_eq!(take_all(&mut rings, 100), vec![(0, 2), (1, 3), (1, 4)]);
        let (_, _, bytes) = {
            rings[0].push(5, 0, 200, b"xyz");
            rings[0].compact();
            rings[0].pop().unwrap()
        };
        assert_eq!(bytes, b"xyz");
    }

    #[test]
    fn a_ring_keeps_its_own_order_even_when_its_stamps_are_not_monotonic() {
        let mut rings = [Pending::default()];
        rings[0].push(1, 0, 20, b"a");
        rings[0].push(2, 0, 10, b"b");
        assert_eq!(take_all(&mut rings, u64::MAX), vec![(0, 1), (0, 2)]);
    }
}
