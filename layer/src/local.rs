//! Per-thread state: the fixed-capacity buffer of encoded records, the cached kernel tid, a block
//! of never-reused span ids, and the stack of entered spans (so an exit needs no registry lookup).
//! Nothing here is shared between threads except through the sink's queue.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use crate::encode::{self, Enc, FIXED_RECORD, FRAME_HEADER};
use crate::sink::{self, Frame};
use crate::sys;

/// Capacity of one thread buffer (header + records). Large enough for the largest record.
pub(crate) const CAP: usize = 32 * 1024;
/// A buffer older than this is handed off at its next record.
const MAX_AGE_NS: u64 = 50_000_000;
/// Span ids are taken from the global counter in blocks of this many.
const ID_BLOCK: u64 = 1024;
/// Entered spans remembered per thread; deeper nesting falls back to a registry lookup.
const STACK: usize = 32;
/// Returned buffers a thread keeps for reuse.
const SPARE: usize = 2;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Local {
    buf: Option<Vec<u8>>,
    events: u64,
    first: u64,
    tid: u32,
    spare: Option<(SyncSender<Vec<u8>>, Receiver<Vec<u8>>)>,
    next_id: u64,
    end_id: u64,
    /// (layer instance, tracing span id, never-reused id) of the spans entered on this thread.
    stack: [(usize, u64, u64); STACK],
    depth: usize,
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local::new()) };
}

/// Runs `f` on this thread's state; `None` if it is in use (re-entrant call) or already destroyed.
#[inline]
pub(crate) fn with<R>(f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    LOCAL
        .try_with(|cell| cell.try_borrow_mut().ok().map(|mut l| f(&mut l)))
        .ok()
        .flatten()
}

/// A fresh never-reused span id, for when the thread's state is unavailable.
pub(crate) fn global_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Hands the calling thread's buffer to the flusher (used by `flush`).
pub(crate) fn handoff_current() {
    with(Local::handoff);
}

impl Local {
    const fn new() -> Self {
        Local {
            buf: None,
            events: 0,
            first: 0,
            tid: 0,
            spare: None,
            next_id: 0,
            end_id: 0,
            stack: [(0, 0, 0); STACK],
            depth: 0,
        }
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        if self.next_id == self.end_id {
            self.next_id = NEXT_ID.fetch_add(ID_BLOCK, Ordering::Relaxed);
            self.end_id = self.next_id + ID_BLOCK;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    #[inline]
    pub(crate) fn push_entered(&mut self, layer: usize, span: u64, id: u64) {
        if let Some(slot) = self.stack.get_mut(self.depth) {
            *slot = (layer, span, id);
            self.depth += 1;
        }
    }

    /// The never-reused id of `span` if this thread entered it, forgetting the entry.
    #[inline]
    pub(crate) fn pop_entered(&mut self, layer: usize, span: u64) -> Option<u64> {
        let live = self.stack.get(..self.depth)?;
        let at = live
            .iter()
            .rposition(|&(l, s, _)| l == layer && s == span)?;
        let id = live[at].2;
        self.stack.copy_within(at + 1..self.depth, at);
        self.depth -= 1;
        Some(id)
    }

    fn buf_mut(&mut self) -> &mut Vec<u8> {
        self.buf.get_or_insert_with(|| {
            let reused = self.spare.as_ref().and_then(|(_, rx)| rx.try_recv().ok());
            reused.unwrap_or_else(|| {
                let mut b = Vec::with_capacity(CAP);
                b.resize(FRAME_HEADER, 0);
                b
            })
        })
    }

    fn room(&self) -> usize {
        self.buf
            .as_ref()
            .map_or(CAP, |b| CAP.saturating_sub(b.len()))
    }

    /// Appends an ENTER/EXIT/CLOSE record.
    #[inline]
    pub(crate) fn fixed(&mut self, tag: u8, time: u64, span: u64) {
        if self.room() < FIXED_RECORD {
            self.handoff();
        }
        let rec = encode::fixed_record(tag, time, span);
        let buf = self.buf_mut();
        if CAP - buf.len() >= FIXED_RECORD {
            buf.extend_from_slice(&rec);
            self.written(time);
        } else {
            sink::count_dropped(1);
        }
    }

    /// Appends a variable-size record written by `write`; hands off the buffer and retries once
    /// if it does not fit; counts it as dropped if it fits in no buffer.
    pub(crate) fn record(&mut self, time: u64, mut write: impl FnMut(&mut Enc<'_>)) {
        for _ in 0..2 {
            let mut enc = Enc::new(self.buf_mut(), CAP);
            write(&mut enc);
            if enc.commit() {
                self.written(time);
                return;
            }
            if self.events == 0 {
                break;
            }
            self.handoff();
        }
        sink::count_dropped(1);
    }

    #[inline]
    fn written(&mut self, time: u64) {
        self.events += 1;
        if self.events == 1 {
            self.first = time;
        } else if time.saturating_sub(self.first) > MAX_AGE_NS || self.room() < FIXED_RECORD {
            self.handoff();
        }
    }

    /// Queues the buffer for the flusher; if the queue is full its records are dropped (counted)
    /// and the buffer is reused in place.
    pub(crate) fn handoff(&mut self) {
        let events = std::mem::take(&mut self.events);
        if events == 0 {
            return;
        }
        let Some(bytes) = self.buf.take() else { return };
        if self.tid == 0 {
            self.tid = sys::gettid();
        }
        let (home, _) = self.spare.get_or_insert_with(|| sync_channel(SPARE));
        let frame = Frame {
            bytes,
            tid: self.tid,
            home: home.clone(),
        };
        if let Err(mut frame) = sink::send(frame) {
            sink::count_dropped(events);
            frame.bytes.truncate(FRAME_HEADER);
            self.buf = Some(frame.bytes);
        }
    }
}

impl Drop for Local {
    /// Thread exit: whatever the thread recorded goes to the flusher.
    fn drop(&mut self) {
        self.handoff();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_threads() {
        let take = || {
            let mut l = Local::new();
            (0..3000).map(|_| l.new_id()).collect::<Vec<_>>()
        };
        let other = std::thread::spawn(take).join().unwrap_or_default();
        let mut all = take();
        all.extend(other);
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(!all.contains(&0));
    }

    #[test]
    fn entered_stack_pops_out_of_order_and_by_layer() {
        let mut l = Local::new();
        l.push_entered(1, 10, 100);
        l.push_entered(1, 11, 101);
        l.push_entered(2, 10, 200);
        assert_eq!(l.pop_entered(1, 10), Some(100));
        assert_eq!(l.pop_entered(2, 10), Some(200));
        assert_eq!(l.pop_entered(1, 10), None);
        assert_eq!(l.pop_entered(1, 11), Some(101));
        assert_eq!(l.depth, 0);
    }

    #[test]
    fn deep_nesting_beyond_the_stack_is_not_remembered() {
        let mut l = Local::new();
        for i in 0..(STACK as u64 + 5) {
            l.push_entered(1, i, i);
        }
        assert_eq!(l.pop_entered(1, STACK as u64 + 1), None);
        assert_eq!(l.pop_entered(1, 0), Some(0));
    }

    #[test]
    fn records_never_grow_the_buffer() {
        let mut l = Local::new();
        for i in 0..10_000 {
            l.fixed(encode::tag::ENTER, i, 1);
            assert!(l.buf.as_ref().is_none_or(|b| b.len() <= CAP));
        }
    }
}
