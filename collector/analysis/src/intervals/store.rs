//! Where the timeline and the export keep a trace's intervals between the analysis pass and
//! writing: each track is a byte string of varint-encoded stretches (about 7 bytes a thread
//! stretch, 15 a poll, against 40 and 72 as structs), and past a memory budget every track's
//! bytes go to an unlinked temporary file as chunks, so memory stays bounded however long the
//! recording. A track is read back one at a time when it is written out.
//!
//! Stretches mostly reach the store in time order per track (the analysis emits them as it goes;
//! task stretches may come out of order, see [`crate::tasks::TaskInterval`]). A track that came
//! in order is streamed back; one that did not is decoded whole and sorted, so the most memory
//! writing takes is one track's stretches.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Bytes held in memory across all tracks before they are written to the temporary file.
pub const DEFAULT_BUDGET: usize = 32 << 20;

#[derive(Debug, Default)]
struct Track {
    /// (offset, length) of this track's chunks in the spill file, in order.
    chunks: Vec<(u64, u32)>,
    buf: Vec<u8>,
    /// (start, end) of the last stretch pushed: starts are stored as deltas from it.
    prev: (u64, u64),
    /// Every stretch came after the one before (by start, then end).
    unsorted: bool,
    len: u64,
}

/// Tracks of encoded stretches, spilled to a temporary file past a budget.
#[derive(Debug)]
pub struct Store {
    tracks: Vec<Track>,
    spill: Option<File>,
    spill_len: u64,
    buffered: usize,
    budget: usize,
    /// The first error writing the spill file; later pushes are dropped and it is reported.
    error: Option<io::Error>,
}

impl Default for Store {
    fn default() -> Self {
        Store::with_budget(DEFAULT_BUDGET)
    }
}

impl Store {
    pub fn with_budget(budget: usize) -> Self {
        Store {
            tracks: Vec::new(),
            spill: None,
            spill_len: 0,
            buffered: 0,
            budget,
            error: None,
        }
    }

    /// A new, empty track; returns its id.
    pub fn track(&mut self) -> usize {
        self.tracks.push(Track::default());
        self.tracks.len() - 1
    }

    /// Stretches pushed to a track.
    pub fn len(&self, track: usize) -> u64 {
        self.tracks.get(track).map_or(0, |t| t.len)
    }

    /// Bytes written to the temporary file so far.
    pub fn spilled(&self) -> u64 {
        self.spill_len
    }

    /// Appends a stretch: its start and end, then what `body` encodes after them.
    pub fn push(&mut self, track: usize, start: u64, end: u64, body: impl FnOnce(&mut Enc)) {
        if self.error.is_some() {
            return;
        }
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        if (start, end) < t.prev {
            t.unsorted = true;
        }
        let before = t.buf.len();
        let mut enc = Enc(&mut t.buf);
        enc.signed(start.wrapping_sub(t.prev.0) as i64);
        enc.uint(end.saturating_sub(start));
        body(&mut enc);
        t.prev = (start, end);
        t.len += 1;
        self.buffered += t.buf.len() - before;
        if self.buffered > self.budget {
            if let Err(e) = self.spill_all() {
                self.error = Some(e);
            }
        }
    }

    /// Writes every track's buffered bytes to the temporary file as one chunk each.
    fn spill_all(&mut self) -> io::Result<()> {
        let file = match &mut self.spill {
            Some(f) => f,
            None => self.spill.insert(tempfile::tempfile()?),
        };
        let mut w = io::BufWriter::with_capacity(1 << 20, &*file);
        for t in &mut self.tracks {
            if t.buf.is_empty() {
                continue;
            }
            w.write_all(&t.buf)?;
            t.chunks.push((self.spill_len, t.buf.len() as u32));
            self.spill_len += t.buf.len() as u64;
            // Give the memory back: most tracks are short-lived tasks.
            t.buf = Vec::new();
        }
        w.flush()?;
        self.buffered = 0;
        Ok(())
    }

    /// The error that stopped the store, if one did; taken once.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// A track's bytes, and whether its stretches came in order.
    pub fn read(&self, track: usize) -> io::Result<(Dec, bool)> {
        let Some(t) = self.tracks.get(track) else {
            return Ok((Dec::default(), true));
        };
        let spilled: usize = t.chunks.iter().map(|c| c.1 as usize).sum();
        let mut bytes = Vec::with_capacity(spilled + t.buf.len());
        if let Some(file) = &self.spill {
            for &(offset, len) in &t.chunks {
                let at = bytes.len();
                bytes.resize(at + len as usize, 0);
                file.read_exact_at(&mut bytes[at..], offset)?;
            }
        }
        bytes.extend_from_slice(&t.buf);
        Ok((
            Dec {
                bytes,
                pos: 0,
                prev: 0,
            },
            !t.unsorted,
        ))
    }
}

/// Appends varints to a track.
pub struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    pub fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub fn signed(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }
    pub fn byte(&mut self, b: u8) {
        self.0.push(b);
    }
}

/// Reads a track back: [`Dec::next_stretch`] gives each stretch's start and end, then the
/// caller reads its body with the same calls it was written with.
#[derive(Debug, Default)]
pub struct Dec {
    bytes: Vec<u8>,
    pos: usize,
    prev: u64,
}

impl Dec {
    /// The next stretch's (start, end), or `None` at the end of the track.
    pub fn next_stretch(&mut self) -> Option<(u64, u64)> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let delta = self.signed();
        let start = self.prev.wrapping_add(delta as u64);
        self.prev = start;
        let dur = self.uint();
        Some((start, start.saturating_add(dur)))
    }
    pub fn uint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while let Some(&b) = self.bytes.get(self.pos) {
            self.pos += 1;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }
    pub fn signed(&mut self) -> i64 {
        let u = self.uint();
        ((u >> 1) as i64) ^ -((u & 1) as i64)
    }
    pub fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_all(store: &mut Store, track: usize, ivs: &[(u64, u64, u64)]) {
        for &(s, e, x) in ivs {
            store.push(track, s, e, |enc| {
                enc.uint(x);
                enc.byte(x as u8);
            });
        }
    }

    fn read_all(store: &Store, track: usize) -> (Vec<(u64, u64, u64)>, bool) {
        let (mut dec, sorted) = store.read(track).unwrap();
        let mut out = Vec::new();
        while let Some((s, e)) = dec.next_stretch() {
            let x = dec.uint();
            assert_eq!(dec.byte(), x as u8);
            out.push((s, e, x));
        }
        (out, sorted)
    }

    #[test]
    fn tracks_read_back_what_was_pushed_across_spills() {
        // A budget of a few bytes spills after nearly every push.
        let mut store = Store::with_budget(16);
        let a = store.track();
        let b = store.track();
        let ivs_a: Vec<(u64, u64, u64)> = (0..1000u64)
            .map(|i| ((1 << 40) + i * 1000, (1 << 40) + i * 1000 + 999, i * 77))
            .collect();
        // Out of order, with a start before the previous one and a huge value.
        let ivs_b = [(500, 600, u64::MAX), (100, 200, 0), (100, 150, 3)];
        for i in 0..ivs_a.len() {
            push_all(&mut store, a, &ivs_a[i..i + 1]);
            if i < ivs_b.len() {
                push_all(&mut store, b, &ivs_b[i..i + 1]);
            }
        }
        assert!(store.spilled() > 0);
        assert!(store.take_error().is_none());
        assert_eq!(read_all(&store, a), (ivs_a.clone(), true));
        assert_eq!(read_all(&store, b), (ivs_b.to_vec(), false));
        assert_eq!(store.len(a), 1000);
        // Reading twice gives the same.
        assert_eq!(read_all(&store, a).0, ivs_a);
    }

    #[test]
    fn a_track_never_pushed_to_reads_empty() {
        let mut store = Store::default();
        let t = store.track();
        assert_eq!(read_all(&store, t), (vec![], true));
        assert_eq!(read_all(&store, 99), (vec![], true));
    }
}
