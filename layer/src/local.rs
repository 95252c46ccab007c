//! Per-thread state: the fixed-capacity buffer of encoded records, the cached kernel tid, a block
//! of never-reused span ids, the stack of entered spans (so an exit needs no registry lookup)
//! and a small cache of span ids (so entering a span again needs none either, until a span closes).
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
const MAX_AGE_NS: u64 = 200_000_000;
/// Span ids are taken from the global counter in blocks of this many.
const ID_BLOCK: u64 = 1024;
/// Entered spans remembered per thread; deeper nesting falls back to a registry lookup.
const STACK: usize = 32;
/// Returned buffers a thread keeps for reuse.
const SPARE: usize = 2;

/// Entries of the per-thread span id cache (direct-mapped by tracing's span id).
const CACHE: usize = 64;
/// Stack definitions a thread remembers having sent (direct-mapped by stack id).
const SENT: usize = 256;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Bumped on every span close. tracing reuses an id only after the span closed, so a cached
/// (tracing id -> our id) pair stored while the epoch was `e` is valid while it is still `e`.
static CLOSE_EPOCH: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy)]
struct Slot {
    layer: usize,
    span: u64,
    id: u64,
    epoch: u64,
}

const EMPTY_SLOT: Slot = Slot {
    layer: 0,
    span: 0,
    id: 0,
    epoch: u64::MAX,
};

#[inline]
fn cache_slot(span: u64) -> usize {
    // tracing's ids are slab indices + 1, with thread and generation bits above: the low bits
    // spread well.
    (span as usize) % CACHE
}

/// The current close epoch (see [`CLOSE_EPOCH`]).
#[inline]
pub(crate) fn close_epoch() -> u64 {
    CLOSE_EPOCH.load(Ordering::Acquire)
}

/// Invalidates every thread's cached ids; called before a span's id can be reused.
pub(crate) fn span_closed() {
    CLOSE_EPOCH.fetch_add(1, Ordering::Release);
}

/// This thread's queue of buffers returned by the flusher (sender end, receiver end).
type Spare = (SyncSender<Vec<u8>>, Receiver<Vec<u8>>);

pub(crate) struct Local {
    buf: Option<Vec<u8>>,
    events: u64,
    /// The connection the buffered records belong to (see `sink::generation`).
    gen: u64,
    first: u64,
    tid: u32,
    spare: Option<Spare>,
    next_id: u64,
    end_id: u64,
    /// (layer instance, tracing span id, never-reused id) of the spans entered on this thread.
    stack: [(usize, u64, u64); STACK],
    depth: usize,
    cache: [Slot; CACHE],
    /// Ids of the stacks this thread has defined on connection `sent_gen` (0: none).
    sent: [u64; SENT],
    sent_gen: u64,
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
            gen: 0,
            first: 0,
            tid: 0,
            spare: None,
            next_id: 0,
            end_id: 0,
            stack: [(0, 0, 0); STACK],
            depth: 0,
            cache: [EMPTY_SLOT; CACHE],
            sent: [0; SENT],
            sent_gen: 0,
        }
    }

    /// The id of the stack `frames` (innermost first) in this thread's records, writing its
    /// STACK definition first unless this thread already sent it on this connection.
    pub(crate) fn stack_id(&mut self, time: u64, frames: &[u64]) -> u64 {
        let id = stack_hash(frames);
        let gen = sink::generation();
        if self.sent_gen != gen {
            // A new recorder (attach): it has seen none of them.
            self.sent = [0; SENT];
            self.sent_gen = gen;
        }
        let slot = (id as usize) % SENT;
        if self.sent[slot] != id {
            let n = frames.len().min(encode::MAX_STACK);
            let written = self.record(time, |e| {
                e.u8(encode::tag::STACK);
                e.u64(id);
                e.u8(n as u8);
                for &f in &frames[..n] {
                    e.u64(f);
                }
            });
            if written {
                self.sent[slot] = id;
            }
        }
        id
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
        let top = self.depth.checked_sub(1)?;
        let &(l, s, id) = self.stack.get(top)?;
        if l == layer && s == span {
            self.depth = top;
            return Some(id);
        }
        self.pop_entered_below(layer, span)
    }

    /// Out-of-order exit: search the rest of the stack.
    fn pop_entered_below(&mut self, layer: usize, span: u64) -> Option<u64> {
        let live = self.stack.get(..self.depth)?;
        let at = live
            .iter()
            .rposition(|&(l, s, _)| l == layer && s == span)?;
        let id = live[at].2;
        self.stack.copy_within(at + 1..self.depth, at);
        self.depth -= 1;
        Some(id)
    }

    /// The never-reused id of `span` remembered since no span closed (`epoch` unchanged).
    #[inline]
    pub(crate) fn cached(&self, layer: usize, span: u64, epoch: u64) -> Option<u64> {
        let slot = &self.cache[cache_slot(span)];
        (slot.span == span && slot.layer == layer && slot.epoch == epoch).then_some(slot.id)
    }

    /// Remembers `span`'s id, valid while [`close_epoch`] still equals `epoch` (read before the
    /// registry lookup that produced `id`).
    #[inline]
    pub(crate) fn remember(&mut self, layer: usize, span: u64, id: u64, epoch: u64) {
        self.cache[cache_slot(span)] = Slot {
            layer,
            span,
            id,
            epoch,
        };
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

    /// Drops buffered records of an earlier connection (an attachable program's recorder
    /// left and another came): the new one never saw their spans created.
    #[inline]
    fn same_connection(&mut self) {
        if self.events > 0 && self.gen != sink::generation() {
            self.events = 0;
            if let Some(b) = self.buf.as_mut() {
                b.truncate(FRAME_HEADER);
            }
        }
    }

    /// Appends an ENTER/EXIT/CLOSE record.
    #[inline]
    pub(crate) fn fixed(&mut self, tag: u8, time: u64, span: u64) {
        self.same_connection();
        let rec = encode::fixed_record(tag, time, span);
        match &mut self.buf {
            Some(b) if CAP - b.len() >= FIXED_RECORD => b.extend_from_slice(&rec),
            _ => {
                self.handoff();
                let b = self.buf_mut();
                if CAP - b.len() < FIXED_RECORD {
                    sink::count_dropped(1);
                    return;
                }
                b.extend_from_slice(&rec);
            }
        }
        self.written(time);
    }

    /// Appends a variable-size record written by `write`; hands off the buffer and retries once
    /// if it does not fit; counts it as dropped if it fits in no buffer. Returns whether it was
    /// written.
    pub(crate) fn record(&mut self, time: u64, mut write: impl FnMut(&mut Enc<'_>)) -> bool {
        self.same_connection();
        for _ in 0..2 {
            let mut enc = Enc::new(self.buf_mut(), CAP);
            write(&mut enc);
            if enc.commit() {
                self.written(time);
                return true;
            }
            if self.events == 0 {
                break;
            }
            self.handoff();
        }
        sink::count_dropped(1);
        false
    }

    #[inline]
    fn written(&mut self, time: u64) {
        self.events += 1;
        if self.events == 1 {
            self.first = time;
            self.gen = sink::generation();
            return;
        }
        let full = self
            .buf
            .as_ref()
            .is_some_and(|b| CAP - b.len() < FIXED_RECORD);
        if full || time.saturating_sub(self.first) > MAX_AGE_NS {
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
            // Stack definitions in the dropped records must be sent again.
            self.sent = [0; SENT];
            frame.bytes.truncate(FRAME_HEADER);
            self.buf = Some(frame.bytes);
        }
    }
}

/// A stack's id: a 64-bit hash of its frames, never 0.
fn stack_hash(frames: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ frames.len() as u64;
    for &f in frames {
        h = (h.rotate_left(5) ^ f).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h ^= h >> 29;
    h.max(1)
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
    fn cached_ids_expire_when_any_span_closes() {
        let mut l = Local::new();
        let e = close_epoch();
        assert_eq!(l.cached(1, 5, e), None);
        l.remember(1, 5, 500, e);
        assert_eq!(l.cached(1, 5, e), Some(500));
        assert_eq!(l.cached(2, 5, e), None, "other layer instance");
        assert_eq!(
            l.cached(1, 5 + CACHE as u64, e),
            None,
            "same slot, other span"
        );
        span_closed();
        assert_eq!(l.cached(1, 5, close_epoch()), None);
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
    fn a_stack_is_defined_once_per_thread_until_its_records_are_dropped() {
        let mut l = Local::new();
        let a = l.stack_id(1, &[1, 2, 3]);
        let len = l.buf.as_ref().map_or(0, Vec::len);
        assert_eq!(len, FRAME_HEADER + 1 + 8 + 1 + 3 * 8);
        assert_eq!(l.stack_id(2, &[1, 2, 3]), a);
        assert_eq!(l.buf.as_ref().map_or(0, Vec::len), len, "sent once");
        assert_ne!(l.stack_id(3, &[1, 2, 4]), a);
        assert_ne!(stack_hash(&[1, 2]), stack_hash(&[2, 1]));
        l.sent = [0; SENT];
        l.stack_id(4, &[1, 2, 3]);
        assert!(l.buf.as_ref().map_or(0, Vec::len) > len + 42, "sent again");
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
