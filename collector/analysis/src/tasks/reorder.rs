//! A time-ordered merge of sorted runs: items arrive as runs that are each in time order (one
//! CPU's switches, one thread's span batch) but runs overlap in time; they leave in exact time
//! order once a watermark says no earlier item can still arrive. A heap of runs (keyed by each
//! run's next item) keeps the cost per item at a few comparisons on a small heap. Memory is what
//! arrives between two watermarks.

use std::cmp::Ordering;
use std::collections::binary_heap::{BinaryHeap, PeekMut};

struct Run<T> {
    head: (u64, T),
    rest: std::vec::IntoIter<(u64, T)>,
    /// Arrival order, so items with equal times leave in the order they came.
    seq: u64,
}

impl<T> PartialEq for Run<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.head.0, self.seq) == (other.head.0, other.seq)
    }
}
impl<T> Eq for Run<T> {}
impl<T> PartialOrd for Run<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Run<T> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest item must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.head.0, other.seq).cmp(&(self.head.0, self.seq))
    }
}

/// Items keyed by time; [`Reorder::pop_until`] releases them in order.
pub(crate) struct Reorder<T> {
    runs: BinaryHeap<Run<T>>,
    len: usize,
    seq: u64,
    /// Time of the last item released.
    released: u64,
    /// Items that arrived after a later item had already been released.
    late: u64,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            runs: BinaryHeap::new(),
            len: 0,
            seq: 0,
            released: 0,
            late: 0,
        }
    }
}

impl<T> Reorder<T> {
    /// Adds a run of items; it is sorted here if it is not in time order already.
    pub(crate) fn push_run(&mut self, mut run: Vec<(u64, T)>) {
        if !run.is_sorted_by_key(|e| e.0) {
            run.sort_by_key(|e| e.0);
        }
        self.late += run.iter().take_while(|e| e.0 < self.released).count() as u64;
        self.len += run.len();
        let mut rest = run.into_iter();
        if let Some(head) = rest.next() {
            self.seq += 1;
            self.runs.push(Run {
                head,
                rest,
                seq: self.seq,
            });
        }
    }

    pub(crate) fn push(&mut self, time: u64, item: T) {
        self.push_run(vec![(time, item)]);
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The earliest item if its time is at most `watermark`.
    pub(crate) fn pop_until(&mut self, watermark: u64) -> Option<(u64, T)> {
        let top = self.runs.peek_mut()?;
        if top.head.0 > watermark {
            return None;
        }
        let item = take(top);
        Some(self.left(item))
    }

    /// The earliest item, whatever its time.
    pub(crate) fn pop(&mut self) -> Option<(u64, T)> {
        let item = take(self.runs.peek_mut()?);
        Some(self.left(item))
    }

    fn left(&mut self, item: (u64, T)) -> (u64, T) {
        self.len -= 1;
        self.released = self.released.max(item.0);
        item
    }

    /// Items that arrived after a later one had left (they still leave, out of order).
    pub(crate) fn late(&self) -> u64 {
        self.late
    }
}

/// Takes the head of the top run; dropping the `PeekMut` moves the run to its new place.
fn take<T>(mut top: PeekMut<'_, Run<T>>) -> (u64, T) {
    match top.rest.next() {
        Some(next) => std::mem::replace(&mut top.head, next),
        None => PeekMut::pop(top).head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_time_order_up_to_the_watermark() {
        let mut r = Reorder::default();
        r.push_run(vec![(1, 'a'), (5, 'b'), (9, 'c')]);
        r.push_run(vec![(3, 'd'), (3, 'e'), (6, 'f')]);
        r.push_run(vec![(4, 'h'), (2, 'g')]); // not sorted: sorted on arrival
        let mut out = Vec::new();
        while let Some((_, v)) = r.pop_until(5) {
            out.push(v);
        }
        assert_eq!(out, ['a', 'g', 'd', 'e', 'h', 'b']);
        assert_eq!(r.len(), 2);
        r.push(2, 'x');
        assert_eq!(r.late(), 1);
        let rest: Vec<char> = std::iter::from_fn(|| r.pop().map(|x| x.1)).collect();
        assert_eq!(rest, ['x', 'f', 'c']);
        assert_eq!(r.len(), 0);
    }
}
