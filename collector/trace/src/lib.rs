//! The `.iotrace` trace file: a header, then checksummed frames each holding one record.
//!
//! `FORMAT.md` at this crate's root is the specification; [`TraceWriter`] streams records to disk
//! while recording and [`TraceReader`] reads them back one at a time, so analysis never holds a
//! whole trace in memory. A file cut off at any byte reads back every complete record and
//! reports [`Stop::Truncated`].

#![deny(unsafe_code)]

pub mod build;
mod records;

pub use records::*;

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The 8 bytes every trace file starts with.
pub const MAGIC: [u8; 8] = *b"IOTRACE\0";
/// The format version this build writes. Readers accept versions `1..=VERSION`.
pub const VERSION: u16 = 1;
/// Largest frame a reader accepts; larger lengths mean the file is corrupt.
pub const MAX_FRAME: u32 = 16 << 20;
/// Set in a frame's kind byte when its payload is zstd-compressed.
pub const COMPRESSED: u8 = 0x80;
/// Bodies at least this long are compressed when that makes them smaller.
const COMPRESS_FROM: usize = 256;
const FILE_HEADER_LEN: usize = 16;
const FRAME_HEADER_LEN: usize = 8;

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    // The OS error is part of the message and deliberately not a source (a field named
    // `source` would be one): error chains (anyhow's `{:#}`) would print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "{0}: not an iotrace trace file (bad magic; expected a file written by `iotrace record`)"
    )]
    NotATrace(PathBuf),
    #[error("{0}: the file is empty or shorter than the 16-byte header")]
    TooShort(PathBuf),
    #[error("{path}: trace format version {found} is newer than this iotrace reads (1..={VERSION}); upgrade iotrace")]
    NewerVersion { path: PathBuf, found: u16 },
}

/// How reading ended when it did not reach a clean end of file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The file ends inside a frame at this byte offset: the recorder was killed or the file
    /// was cut. Every record before it was read.
    Truncated { offset: u64 },
    /// A frame at this offset fails its checksum or cannot be decoded; reading stopped there.
    Corrupt { offset: u64, reason: String },
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Truncated { offset } => write!(
                f,
                "the trace is truncated at byte {offset} (the recorder did not finish); records before it were read"
            ),
            Stop::Corrupt { offset, reason } => write!(
                f,
                "the trace is corrupt at byte {offset} ({reason}); records before it were read"
            ),
        }
    }
}

/// Streams records into a trace file. Call [`TraceWriter::flush`] often: what is flushed
/// survives the recorder being killed.
pub struct TraceWriter {
    out: BufWriter<File>,
    path: PathBuf,
    scratch: Vec<u8>,
    packed: Vec<u8>,
    compressor: zstd::bulk::Compressor<'static>,
    bytes: u64,
}

impl TraceWriter {
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        let io_err = |error| FormatError::Io {
            path: path.to_owned(),
            error,
        };
        let file = File::create(path).map_err(io_err)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = [0u8; FILE_HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out.write_all(&header).map_err(io_err)?;
        Ok(TraceWriter {
            out,
            path: path.to_owned(),
            scratch: Vec::with_capacity(4096),
            packed: Vec::with_capacity(4096),
            compressor: zstd::bulk::Compressor::new(1).map_err(io_err)?,
            bytes: FILE_HEADER_LEN as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far, header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        match record {
            Record::Header(r) => self.frame(kind::HEADER, r),
            Record::Capabilities(r) => self.frame(kind::CAPABILITIES, r),
            Record::Comm(r) => self.frame(kind::COMM, r),
            Record::Fork(r) => self.frame(kind::FORK, r),
            Record::Exit(r) => self.frame(kind::EXIT, r),
            Record::Switches(r) => self.frame(kind::SWITCHES, r),
            Record::ThreadCounts(r) => self.frame(kind::THREAD_COUNTS, r),
            Record::ProcSample(r) => self.frame(kind::PROC_SAMPLE, r),
            Record::Lost(r) => self.frame(kind::LOST, r),
            Record::Totals(r) => self.frame(kind::TOTALS, r),
            Record::End(r) => self.frame(kind::END, r),
            Record::Spans(batch) => self.write_spans(&mut batch.clone()),
            Record::SpanStats(r) => self.frame(kind::SPAN_STATS, r),
            Record::Sampling(r) => self.frame(kind::SAMPLING, r),
            Record::Mmap(r) => self.frame(kind::MMAP, r),
            Record::StackDefs(r) => self.frame(kind::STACK_DEFS, r),
            Record::Samples(r) => self.frame(kind::SAMPLES, r),
            Record::Attach(r) => self.frame(kind::ATTACH, r),
            Record::Wakeups(r) => self.frame(kind::WAKEUPS, r),
            Record::Unknown(k) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot write a record of unknown kind {k}"),
            )),
        }
    }

    fn frame<T: Serialize>(&mut self, kind: u8, value: &T) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.push(kind);
        let body = std::mem::take(&mut self.scratch);
        let body = postcard::to_extend(value, body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let result = if body.len() >= COMPRESS_FROM {
            self.emit_compressed(&body)
        } else {
            self.emit(&body)
        };
        self.scratch = body;
        result
    }

    /// Emit `body` zstd-compressed (kind | [`COMPRESSED`]) when that is smaller.
    fn emit_compressed(&mut self, body: &[u8]) -> io::Result<()> {
        let mut packed = std::mem::take(&mut self.packed);
        packed.clear();
        packed.push(body[0] | COMPRESSED);
        let capacity = zstd::zstd_safe::compress_bound(body.len() - 1);
        packed.reserve(capacity);
        let start = packed.len();
        packed.resize(start + capacity, 0);
        let written = self
            .compressor
            .compress_to_buffer(&body[1..], &mut packed[start..]);
        let result = match written {
            Ok(n) if n + 1 < body.len() => {
                packed.truncate(start + n);
                self.emit(&packed)
            }
            _ => self.emit(body),
        };
        self.packed = packed;
        result
    }

    /// Write a span batch, storing each event's time as the difference from the previous one
    /// (a few bytes instead of eight). The batch's times are changed in place.
    pub fn write_spans(&mut self, batch: &mut iotrace_wire::SpanBatch) -> io::Result<()> {
        let mut previous = 0u64;
        for event in &mut batch.events {
            if let Some(t) = span_time(event) {
                let absolute = *t;
                *t = absolute.wrapping_sub(previous);
                previous = absolute;
            }
        }
        self.frame(kind::SPANS, batch)
    }

    fn emit(&mut self, body: &[u8]) -> io::Result<()> {
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&l| l <= MAX_FRAME)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let crc = crc32fast::hash(body);
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(body)?;
        self.bytes += (FRAME_HEADER_LEN + body.len()) as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flush and sync to disk.
    pub fn finish(mut self) -> io::Result<u64> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(self.bytes)
    }
}

/// Reads a trace one record at a time. Iteration ends at the clean end of the file or at the
/// first damaged frame; [`TraceReader::stop`] then says which.
pub struct TraceReader<R: Read = BufReader<File>> {
    input: R,
    offset: u64,
    version: u16,
    stop: Option<Stop>,
    done: bool,
    buf: Vec<u8>,
    /// A compressed frame's payload, decompressed; reused so reading allocates per frame
    /// only what the frame's content size needs.
    unpacked: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
    /// Kinds (bit per kind) the caller does not need: checked, not decoded.
    skip: u128,
}

impl TraceReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let file = File::open(path).map_err(|error| FormatError::Io {
            path: path.to_owned(),
            error,
        })?;
        TraceReader::new(BufReader::with_capacity(1 << 20, file), path)
    }
}

impl<R: Read> TraceReader<R> {
    /// `name` is used in error messages only.
    pub fn new(mut input: R, name: &Path) -> Result<Self, FormatError> {
        let mut header = [0u8; FILE_HEADER_LEN];
        let got = read_full(&mut input, &mut header).map_err(|error| FormatError::Io {
            path: name.to_owned(),
            error,
        })?;
        if got >= 8 && header[..8] != MAGIC {
            return Err(FormatError::NotATrace(name.to_owned()));
        }
        if got < 8 && MAGIC[..got] != header[..got] {
            return Err(FormatError::NotATrace(name.to_owned()));
        }
        if got < FILE_HEADER_LEN {
            return Err(FormatError::TooShort(name.to_owned()));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version == 0 {
            return Err(FormatError::NotATrace(name.to_owned()));
        }
        if version > VERSION {
            return Err(FormatError::NewerVersion {
                path: name.to_owned(),
                found: version,
            });
        }
        Ok(TraceReader {
            input,
            offset: FILE_HEADER_LEN as u64,
            version,
            stop: None,
            done: false,
            buf: Vec::new(),
            unpacked: Vec::new(),
            skip: 0,
            decompressor: zstd::bulk::Decompressor::new().map_err(|error| FormatError::Io {
                path: name.to_owned(),
                error,
            })?,
        })
    }

    pub fn version(&self) -> u16 {
        self.version
    }

    /// Why reading stopped early, once iteration has ended (`None`: the file is whole).
    pub fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Do not decode records of these kinds: their frames are still read and checked, and
    /// come back as [`Record::Unknown`]. Readers that need a few kinds of a large trace
    /// (flamegraphs do not need span batches) save most of the decoding.
    pub fn skip_kinds(&mut self, kinds: &[u8]) {
        for &k in kinds {
            self.skip |= 1u128 << (k & !COMPRESSED);
        }
    }

    fn fail(&mut self, stop: Stop) -> Option<Record> {
        self.stop = Some(stop);
        self.done = true;
        None
    }

    fn next_record(&mut self) -> Option<Record> {
        if self.done {
            return None;
        }
        let start = self.offset;
        let mut head = [0u8; FRAME_HEADER_LEN];
        let got = match read_full(&mut self.input, &mut head) {
            Ok(n) => n,
            Err(e) => {
                return self.fail(Stop::Corrupt {
                    offset: start,
                    reason: e.to_string(),
                })
            }
        };
        if got == 0 {
            self.done = true;
            return None;
        }
        if got < FRAME_HEADER_LEN {
            return self.fail(Stop::Truncated { offset: start });
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_FRAME {
            return self.fail(Stop::Corrupt {
                offset: start,
                reason: format!("frame length {len} out of range"),
            });
        }
        // Read what is there, up to `len`: a length that claims more than the file holds
        // allocates what the file holds, not what it claims.
        self.buf.clear();
        let got = match (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut self.buf)
        {
            Ok(n) => n,
            Err(e) => {
                return self.fail(Stop::Corrupt {
                    offset: start,
                    reason: e.to_string(),
                })
            }
        };
        if got < len as usize {
            return self.fail(Stop::Truncated { offset: start });
        }
        if crc32fast::hash(&self.buf) != crc {
            return self.fail(Stop::Corrupt {
                offset: start,
                reason: "checksum mismatch".into(),
            });
        }
        self.offset = start + FRAME_HEADER_LEN as u64 + len as u64;
        let kind = self.buf[0];
        if self.skip & (1u128 << (kind & !COMPRESSED)) != 0 {
            return Some(Record::Unknown(kind & !COMPRESSED));
        }
        let decoded = if kind & COMPRESSED != 0 {
            match self.decompress() {
                Ok(()) => decode(kind & !COMPRESSED, &self.unpacked),
                Err(e) => {
                    return self.fail(Stop::Corrupt {
                        offset: start,
                        reason: format!(
                            "compressed record of kind {} does not decompress: {e}",
                            kind & !COMPRESSED
                        ),
                    })
                }
            }
        } else {
            decode(kind, &self.buf[1..])
        };
        match decoded {
            Ok(r) => Some(r),
            Err(e) => self.fail(Stop::Corrupt {
                offset: start,
                reason: format!("undecodable record of kind {}: {e}", kind & !COMPRESSED),
            }),
        }
    }
}

impl<R: Read> TraceReader<R> {
    /// Decompress the frame in `buf` into `unpacked`. The buffer is sized from the zstd
    /// frame's declared content size (at most [`MAX_FRAME`]), not a fixed 16 MiB per frame;
    /// a frame whose data is larger than it declares fails to decompress.
    fn decompress(&mut self) -> io::Result<()> {
        let packed = self.buf.get(1..).unwrap_or(&[]);
        let size = match zstd::zstd_safe::get_frame_content_size(packed) {
            Ok(Some(n)) if n <= u64::from(MAX_FRAME) => n as usize,
            Ok(Some(n)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("it declares {n} bytes, over the {MAX_FRAME}-byte limit"),
                ))
            }
            Ok(None) => MAX_FRAME as usize,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a zstd frame",
                ))
            }
        };
        self.unpacked.clear();
        // Keep the buffer from growing for good after one large frame.
        if self.unpacked.capacity() > (1 << 20) && size < (1 << 20) {
            self.unpacked = Vec::new();
        }
        self.unpacked.reserve_exact(size);
        self.decompressor
            .decompress_to_buffer(packed, &mut self.unpacked)?;
        Ok(())
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Record;
    fn next(&mut self) -> Option<Record> {
        self.next_record()
    }
}

fn de<T: DeserializeOwned>(payload: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(payload)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Decode one frame body (kind byte already split off).
pub fn decode(kind: u8, payload: &[u8]) -> Result<Record, postcard::Error> {
    Ok(match kind {
        kind::HEADER => Record::Header(de(payload)?),
        kind::CAPABILITIES => Record::Capabilities(de(payload)?),
        kind::COMM => Record::Comm(de(payload)?),
        kind::FORK => Record::Fork(de(payload)?),
        kind::EXIT => Record::Exit(de(payload)?),
        kind::SWITCHES => Record::Switches(de(payload)?),
        kind::THREAD_COUNTS => Record::ThreadCounts(de(payload)?),
        kind::PROC_SAMPLE => Record::ProcSample(de(payload)?),
        kind::LOST => Record::Lost(de(payload)?),
        kind::TOTALS => Record::Totals(de(payload)?),
        kind::END => Record::End(de(payload)?),
        kind::SPANS => {
            let mut batch: iotrace_wire::SpanBatch = de(payload)?;
            let mut previous = 0u64;
            for event in &mut batch.events {
                if let Some(t) = span_time(event) {
                    previous = previous.wrapping_add(*t);
                    *t = previous;
                }
            }
            Record::Spans(batch)
        }
        kind::SPAN_STATS => Record::SpanStats(de(payload)?),
        kind::SAMPLING => Record::Sampling(de(payload)?),
        kind::MMAP => Record::Mmap(de(payload)?),
        kind::STACK_DEFS => Record::StackDefs(de(payload)?),
        kind::SAMPLES => Record::Samples(de(payload)?),
        kind::ATTACH => Record::Attach(de(payload)?),
        kind::WAKEUPS => Record::Wakeups(de(payload)?),
        other => Record::Unknown(other),
    })
}

fn span_time(event: &mut iotrace_wire::SpanEvent) -> Option<&mut u64> {
    use iotrace_wire::SpanEvent::*;
    match event {
        Callsite(_) | Stack { .. } => None,
        At { time, .. }
        | NewSpan { time, .. }
        | Enter { time, .. }
        | Exit { time, .. }
        | Close { time, .. }
        | Record { time, .. }
        | FollowsFrom { time, .. }
        | Event { time, .. } => Some(time),
    }
}

/// Read until `buf` is full or the input ends; returns how many bytes were read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
