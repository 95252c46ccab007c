//! A time-ordered reorder buffer: items arrive roughly in time order from several independent
//! streams (one per CPU, one per thread) and leave in exact time order once a watermark says no
//! earlier item can still arrive. Memory is what arrives between two watermarks.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Entry<T> {
    time: u64,
    /// Arrival order, so items with equal times leave in the order they came.
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest item must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// Items keyed by time; [`Reorder::pop_until`] releases them in order.
pub(crate) struct Reorder<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
    /// Time of the last item released.
    released: u64,
    /// Items that arrived after a later item had already been released.
    late: u64,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            heap: BinaryHeap::new(),
            seq: 0,
            released: 0,
            late: 0,
        }
    }
}

impl<T> Reorder<T> {
    pub(crate) fn push(&mut self, time: u64, item: T) {
        if time < self.released {
            self.late += 1;
        }
        self.seq += 1;
        self.heap.push(Entry {
            time,
            seq: self.seq,
            item,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest item if its time is at most `watermark`.
    pub(crate) fn pop_until(&mut self, watermark: u64) -> Option<(u64, T)> {
        if self.heap.peek()?.time > watermark {
            return None;
        }
        self.pop()
    }

    /// The earliest item, whatever its time.
    pub(crate) fn pop(&mut self) -> Option<(u64, T)> {
        let e = self.heap.pop()?;
        self.released = self.released.max(e.time);
        Some((e.time, e.item))
    }

    /// Items that arrived after a later one had left (they still leave, out of order).
    pub(crate) fn late(&self) -> u64 {
        self.late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_time_order_up_to_the_watermark() {
        let mut r = Reorder::default();
        for (t, v) in [(5, 'a'), (1, 'b'), (3, 'c'), (3, 'd'), (9, 'e')] {
            r.push(t, v);
        }
        let mut out = Vec::new();
        while let Some((_, v)) = r.pop_until(5) {
            out.push(v);
        }
        assert_eq!(out, ['b', 'c', 'd', 'a']);
        assert_eq!(r.len(), 1);
        r.push(2, 'f');
        assert_eq!(r.late(), 1);
        assert_eq!(r.pop().map(|x| x.1), Some('f'));
        assert_eq!(r.pop().map(|x| x.1), Some('e'));
    }
}
