//! Mutations: generic byte edits stacked one to four deep, plus edits that know where each
//! input shape keeps its length fields (to inflate them) and how to make a mutated input
//! well-framed again (fixing lengths and checksums), so that mutations reach the decoders
//! behind the framing instead of all being rejected at the first checksum.

use crate::Rng;

/// Largest input the mutator makes; bigger ones are cut.
pub const MAX_INPUT: usize = 256 << 10;

/// What an input is, for the structure-aware mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No structure known.
    Bytes,
    /// A whole trace file: header, then `len crc body` frames.
    File,
    /// One frame body (kind byte, payload); the target frames it.
    Frame,
    /// A span wire stream: hello, then `len payload` frames.
    Wire,
    /// Perf records: `ty:u32 misc:u16 len:u16 data`.
    Perf,
}

/// Values that sit on the edges of the decoders' limits.
const BIG_U32: [u32; 8] = [
    0xFFFF_FFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    16 << 20,
    (16 << 20) + 1,
    4 << 20,
    (4 << 20) + 1,
    1 << 30,
];
const INTERESTING: [u8; 8] = [0, 1, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x40];
/// A postcard varint that claims about four billion (a string or sequence length).
const HUGE_VARINT: [u8; 5] = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F];

#[derive(Debug, Clone)]
pub struct Mutator {
    shape: Shape,
}

impl Mutator {
    pub fn new(shape: Shape) -> Self {
        Mutator { shape }
    }

    /// A new input: a seed mutated one to four times, then (half the time) reframed.
    pub fn mutate(&self, rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut input = seeds[rng.below(seeds.len())].clone();
        let edits = 1 + rng.below(4);
        for _ in 0..edits {
            if rng.one_in(4) {
                self.structured(rng, &mut input, seeds);
            } else {
                generic(rng, &mut input, seeds);
            }
        }
        input.truncate(MAX_INPUT);
        if rng.one_in(2) {
            self.reframe(&mut input);
        }
        input
    }

    fn structured(&self, rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        match self.shape {
            Shape::Bytes => generic(rng, input, seeds),
            Shape::File => {
                let frames = file_frames(input);
                if frames.is_empty() || rng.one_in(4) {
                    inflate_anywhere(rng, input);
                } else {
                    // A frame length that claims far more than the file holds.
                    let (at, _) = frames[rng.below(frames.len())];
                    put_u32(input, at, BIG_U32[rng.below(BIG_U32.len())]);
                }
            }
            Shape::Frame => {
                if rng.one_in(3) && input.len() > 1 {
                    // Compress the payload so mutated plain records also go through zstd.
                    if let Ok(packed) = zstd::bulk::compress(&input[1..], 1) {
                        let kind = input[0] | iotrace_collector::format::COMPRESSED;
                        input.clear();
                        input.push(kind);
                        input.extend_from_slice(&packed);
                    }
                } else {
                    inflate_anywhere(rng, input);
                }
            }
            Shape::Wire => {
                let frames = wire_frames(input);
                if frames.is_empty() || rng.one_in(3) {
                    inflate_anywhere(rng, input);
                } else {
                    let (at, _) = frames[rng.below(frames.len())];
                    put_u32(input, at, BIG_U32[rng.below(BIG_U32.len())]);
                }
            }
            Shape::Perf => {
                let records = perf_records(input);
                if records.is_empty() || rng.one_in(3) {
                    inflate_anywhere(rng, input);
                } else {
                    // A record's own length, or a count inside it (callchain nr).
                    let (at, len) = records[rng.below(records.len())];
                    if rng.one_in(2) {
                        put_u16(input, at + 6, 0xFFFF);
                    } else if len >= 8 {
                        let inner = at + 8 + rng.below(len / 8) * 8;
                        put_u32(input, inner, BIG_U32[rng.below(BIG_U32.len())]);
                    }
                }
            }
        }
    }

    /// Make the input well-framed again after edits: fix frame lengths where they no longer
    /// match (wire), and every frame's checksum (file).
    fn reframe(&self, input: &mut [u8]) {
        match self.shape {
            Shape::File => {
                for (at, len) in file_frames(input) {
                    if let Some(body) = input.get(at + 8..at + 8 + len) {
                        let crc = crc32fast::hash(body);
                        input[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                    }
                }
            }
            Shape::Wire => {
                // The last frame's length is set to what is left, so it decodes in full.
                if let Some(&(at, _)) = wire_frames(input).last() {
                    let left = input.len().saturating_sub(at + 4);
                    put_u32(input, at, left as u32);
                }
            }
            Shape::Bytes | Shape::Frame | Shape::Perf => {}
        }
    }
}

/// `(offset of the length field, body length)` of each frame of a trace file that fits.
pub fn file_frames(input: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 16;
    while let Some(head) = input.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len == 0 || at + 8 + len > input.len() {
            break;
        }
        out.push((at, len));
        at += 8 + len;
    }
    out
}

/// `(offset of the length prefix, payload length)` of each span wire frame after the hello.
pub fn wire_frames(input: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 16;
    while let Some(head) = input.get(at..at + 4) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        out.push((at, len));
        if at + 4 + len > input.len() {
            break;
        }
        at += 4 + len;
    }
    out
}

/// `(offset, data length)` of each perf record.
pub fn perf_records(input: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(head) = input.get(at..at + 8) {
        let len = usize::from(u16::from_le_bytes([head[6], head[7]]));
        if at + 8 + len > input.len() {
            break;
        }
        out.push((at, len));
        at += 8 + len;
    }
    out
}

fn put_u32(input: &mut [u8], at: usize, v: u32) {
    if let Some(b) = input.get_mut(at..at + 4) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u16(input: &mut [u8], at: usize, v: u16) {
    if let Some(b) = input.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// A length-looking value somewhere: a big u32, a u16 of 0xFFFF, or a huge postcard varint.
fn inflate_anywhere(rng: &mut Rng, input: &mut Vec<u8>) {
    if input.is_empty() {
        input.extend_from_slice(&HUGE_VARINT);
        return;
    }
    let at = rng.below(input.len());
    match rng.below(3) {
        0 => put_u32(input, at, BIG_U32[rng.below(BIG_U32.len())]),
        1 => put_u16(input, at, 0xFFFF),
        _ => {
            if rng.one_in(2) {
                let end = (at + HUGE_VARINT.len()).min(input.len());
                input.splice(at..end, HUGE_VARINT);
            } else {
                input.splice(at..at, HUGE_VARINT);
            }
        }
    }
}

/// One generic edit.
fn generic(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    if input.is_empty() {
        input.push(rng.next_u64() as u8);
        return;
    }
    let len = input.len();
    match rng.below(8) {
        // Flip a bit.
        0 | 1 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        // Set a byte to an edge value or a random one.
        2 => {
            let at = rng.below(len);
            input[at] = if rng.one_in(2) {
                INTERESTING[rng.below(INTERESTING.len())]
            } else {
                rng.next_u64() as u8
            };
        }
        // Truncate.
        3 => input.truncate(rng.below(len)),
        // Delete a range.
        4 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            input.drain(at..at + n);
        }
        // Duplicate a range of itself somewhere.
        5 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(256));
            let chunk = input[at..at + n].to_vec();
            let to = rng.below(len + 1);
            input.splice(to..to, chunk);
        }
        // Splice: this input's head, another seed's tail.
        6 => {
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // Insert random bytes.
        _ => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            input.splice(at..at, bytes);
        }
    }
}
