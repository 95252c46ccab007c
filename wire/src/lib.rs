//! The span wire protocol between `iotrace-layer` (in the traced program) and the recorder
//! (spec: `layer/WIRE.md`): its constants, record tags and value types, the owned types the
//! recorder stores, and a decoder that rejects anything malformed without panicking and without
//! allocating more than the input it was given.
//!
//! Both ends take their numbers from here, so the contract is written once. The crate has no
//! dependencies; the `serde` feature derives `Serialize`/`Deserialize` on the batch types (the
//! trace file stores them), and the layer, which only encodes, goes without it.

#![deny(unsafe_code)]

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;

/// Environment variable through which a program started by `iotrace record` learns the socket.
pub const SOCKET_ENV: &str = "IOTRACE_SOCKET";
/// Set to `0` to make a program that was not started under `iotrace record` unattachable.
pub const ATTACH_ENV: &str = "IOTRACE_ATTACH";

/// First 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"IOTRSPAN";
/// The protocol version the layer speaks (2: adds STACK and EVENT_AT).
pub const VERSION: u16 = 2;
/// The oldest version a reader still accepts (version 1 is version 2 without its two records).
pub const MIN_VERSION: u16 = 1;
/// Most frames in one STACK record.
pub const MAX_STACK: usize = 64;
/// Size of the hello that opens a stream: magic, version, flags, pid.
pub const HELLO_LEN: usize = 16;
/// Smallest frame (after the length prefix): pid, tid, dropped.
pub const MIN_FRAME: usize = 16;
/// `u32 len, u32 pid, u32 tid, u64 dropped` in front of every frame's records.
pub const FRAME_HEADER: usize = 4 + MIN_FRAME;
/// Largest frame accepted (after the length prefix).
pub const MAX_FRAME: usize = 4 << 20;
/// Size of an ENTER, EXIT or CLOSE record: tag, time, span.
pub const FIXED_RECORD: usize = 17;

/// Record tags: the first byte of every record.
pub mod tag {
    pub const CALLSITE: u8 = 1;
    pub const NEW_SPAN: u8 = 2;
    pub const ENTER: u8 = 3;
    pub const EXIT: u8 = 4;
    pub const CLOSE: u8 = 5;
    pub const RECORD: u8 = 6;
    pub const FOLLOWS_FROM: u8 = 7;
    pub const EVENT: u8 = 8;
    /// A stack of return addresses, defined once per thread (version 2).
    pub const STACK: u8 = 9;
    /// An EVENT with the stack it was raised at (version 2).
    pub const EVENT_AT: u8 = 10;
}

/// Field value types: the byte in front of every value.
pub mod ty {
    pub const U64: u8 = 1;
    pub const I64: u8 = 2;
    pub const BOOL: u8 = 3;
    pub const F64: u8 = 4;
    pub const STR: u8 = 5;
    pub const SPAN: u8 = 6;
}

/// A callsite's kind byte.
pub mod kind {
    pub const SPAN: u8 = 0;
    pub const EVENT: u8 = 1;
}

/// A callsite's level byte.
pub mod level {
    pub const TRACE: u8 = 0;
    pub const DEBUG: u8 = 1;
    pub const INFO: u8 = 2;
    pub const WARN: u8 = 3;
    pub const ERROR: u8 = 4;
}

/// The stream's opening bytes.
pub fn hello(pid: u32) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&pid.to_le_bytes());
    h
}

/// Where the layer of process `pid` looks for a recorder that attaches to it (WIRE.md,
/// "Attaching"): `$XDG_RUNTIME_DIR/iotrace/PID.sock` when the process has that variable and it is
/// absolute, else `/tmp/iotrace-UID/PID.sock`, UID being the process's effective uid.
pub fn rendezvous_path(xdg_runtime_dir: Option<&OsStr>, uid: u32, pid: u32) -> PathBuf {
    let dir = xdg_runtime_dir
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .map(|d| d.join("iotrace"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/iotrace-{uid}")));
    dir.join(format!("{pid}.sock"))
}

/// The records of one frame: one thread's buffer of one process, in that thread's order.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SpanBatch {
    /// Process that sent the frame.
    pub pid: u32,
    /// Kernel tid of the thread that produced every event of the batch; 0 for callsite
    /// definitions and loss reports, which belong to no thread.
    pub tid: u32,
    /// Events the process had dropped (cumulative) when the frame was written.
    pub dropped_total: u64,
    pub events: Vec<SpanEvent>,
}

/// One record. Times are CLOCK_MONOTONIC ns; span ids are never reused within a process
/// (`pid`), so `(pid, span)` identifies a span for the whole recording.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SpanEvent {
    /// Static description of a span or event callsite, sent once per process per callsite.
    Callsite(Callsite),
    NewSpan {
        time: u64,
        span: u64,
        parent: Option<u64>,
        callsite: u64,
        fields: Vec<FieldValue>,
    },
    Enter {
        time: u64,
        span: u64,
    },
    Exit {
        time: u64,
        span: u64,
    },
    Close {
        time: u64,
        span: u64,
    },
    /// Values recorded on a span after it was created.
    Record {
        time: u64,
        span: u64,
        fields: Vec<FieldValue>,
    },
    FollowsFrom {
        time: u64,
        span: u64,
        follows: u64,
    },
    Event {
        time: u64,
        /// The span the event happened in.
        span: Option<u64>,
        callsite: u64,
        fields: Vec<FieldValue>,
    },
    /// A stack the thread's frame pointers gave at an event: return addresses, innermost first.
    /// `id` is the layer's (a hash of the frames, unique within the process); the recorder
    /// turns it into a node of the trace's stack tree and does not store this record.
    Stack {
        id: u64,
        frames: Vec<u64>,
    },
    /// The stack of the [`SpanEvent::Event`] just before it in the same batch (decoded from one
    /// EVENT_AT record). On the wire `stack` is a [`SpanEvent::Stack`] id; in a trace file it is
    /// a node of the trace's stack tree.
    At {
        time: u64,
        stack: u64,
    },
}

impl SpanEvent {
    /// The record's tag on the wire (the first byte [`decode_frame`] reads for it).
    pub fn tag(&self) -> u8 {
        match self {
            SpanEvent::Callsite(_) => tag::CALLSITE,
            SpanEvent::NewSpan { .. } => tag::NEW_SPAN,
            SpanEvent::Enter { .. } => tag::ENTER,
            SpanEvent::Exit { .. } => tag::EXIT,
            SpanEvent::Close { .. } => tag::CLOSE,
            SpanEvent::Record { .. } => tag::RECORD,
            SpanEvent::FollowsFrom { .. } => tag::FOLLOWS_FROM,
            SpanEvent::Event { .. } => tag::EVENT,
            SpanEvent::Stack { .. } => tag::STACK,
            SpanEvent::At { .. } => tag::EVENT_AT,
        }
    }

    /// The record's time, if it has one (callsites have none).
    pub fn time(&self) -> Option<u64> {
        match self {
            SpanEvent::Callsite(_) | SpanEvent::Stack { .. } => None,
            SpanEvent::At { time, .. } => Some(*time),
            SpanEvent::NewSpan { time, .. }
            | SpanEvent::Enter { time, .. }
            | SpanEvent::Exit { time, .. }
            | SpanEvent::Close { time, .. }
            | SpanEvent::Record { time, .. }
            | SpanEvent::FollowsFrom { time, .. }
            | SpanEvent::Event { time, .. } => Some(*time),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CallsiteKind {
    Span,
    Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Callsite {
    /// Key that `NewSpan::callsite` and `Event::callsite` refer to; unique within a process.
    pub id: u64,
    pub kind: CallsiteKind,
    pub level: Level,
    pub name: String,
    pub target: String,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Field names; `FieldValue::index` indexes this list.
    pub fields: Vec<String>,
}

impl Callsite {
    /// The value of the field called `name` among `values` recorded at this callsite.
    pub fn get<'v>(&self, values: &'v [FieldValue], name: &str) -> Option<&'v Value> {
        let index = self.fields.iter().position(|f| f == name)?;
        values
            .iter()
            .find(|v| usize::from(v.index) == index)
            .map(|v| &v.value)
    }
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FieldValue {
    /// Position of the field's name in its callsite's `fields`.
    pub index: u8,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Value {
    U64(u64),
    I64(i64),
    Bool(bool),
    F64(f64),
    Str(String),
    /// A never-reused span id of the same process (tokio waker events' `task.id`).
    Span(u64),
}

/// Why a stream or frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Magic([u8; 8]),
    Version(u16),
    FrameLength(u32),
    Truncated(usize),
    Tag {
        tag: u8,
        at: usize,
    },
    ValueType {
        ty: u8,
        at: usize,
    },
    Code {
        what: &'static str,
        code: u8,
        at: usize,
    },
    Pid {
        frame: u32,
        hello: u32,
    },
    Utf8(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Magic(b) => write!(f, "not an iotrace span stream (first bytes {b:02x?})"),
            WireError::Version(v) => write!(
                f,
                "speaks span wire version {v}; this recorder reads versions {MIN_VERSION} to {VERSION}"
            ),
            WireError::FrameLength(n) => {
                write!(f, "frame length {n} is outside {MIN_FRAME}..={MAX_FRAME}")
            }
            WireError::Truncated(at) => {
                write!(f, "record at byte {at} runs past the end of its frame")
            }
            WireError::Tag { tag, at } => write!(f, "unknown record tag {tag} at byte {at}"),
            WireError::ValueType { ty, at } => write!(f, "unknown value type {ty} at byte {at}"),
            WireError::Code { what, code, at } => {
                write!(f, "unknown {what} code {code} at byte {at}")
            }
            WireError::Pid { frame, hello } => {
                write!(f, "frame from pid {frame} on the connection of pid {hello}")
            }
            WireError::Utf8(at) => write!(f, "string at byte {at} is not UTF-8"),
        }
    }
}

impl std::error::Error for WireError {}

/// Checks a hello and returns the sender's pid.
pub fn decode_hello(hello: &[u8; HELLO_LEN]) -> Result<u32, WireError> {
    let mut r = Reader::new(hello);
    let magic = r.array::<8>()?;
    if magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    let version = r.u16()?;
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(WireError::Version(version));
    }
    let _flags = r.u16()?;
    r.u32()
}

/// Checks a frame's length prefix; returns the number of bytes that follow it.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix);
    match usize::try_from(len) {
        Ok(n) if (MIN_FRAME..=MAX_FRAME).contains(&n) => Ok(n),
        _ => Err(WireError::FrameLength(len)),
    }
}

/// Decodes a frame (the bytes after its length prefix).
pub fn decode_frame(payload: &[u8]) -> Result<SpanBatch, WireError> {
    let mut r = Reader::new(payload);
    let pid = r.u32()?;
    let tid = r.u32()?;
    let dropped_total = r.u64()?;
    let mut events = Vec::new();
    while !r.is_empty() {
        r.record(&mut events)?;
    }
    Ok(SpanBatch {
        pid,
        tid,
        dropped_total,
        events,
    })
}

/// A bounds-checked little-endian reader that knows its offset for error messages.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(WireError::Truncated(self.at))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(WireError::Truncated(self.at))?;
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u16()?);
        let at = self.at;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::Utf8(at))
    }

    fn nonzero(&mut self) -> Result<Option<u64>, WireError> {
        Ok(Some(self.u64()?).filter(|&v| v != 0))
    }

    fn fields(&mut self) -> Result<Vec<FieldValue>, WireError> {
        let n = self.u8()?;
        let mut out = Vec::with_capacity(usize::from(n).min(self.bytes.len() - self.at));
        for _ in 0..n {
            let index = self.u8()?;
            let at = self.at;
            let value = match self.u8()? {
                ty::U64 => Value::U64(self.u64()?),
                ty::I64 => Value::I64(self.u64()? as i64),
                ty::BOOL => Value::Bool(self.u8()? != 0),
                ty::F64 => Value::F64(f64::from_bits(self.u64()?)),
                ty::STR => Value::Str(self.string()?),
                ty::SPAN => Value::Span(self.u64()?),
                ty => return Err(WireError::ValueType { ty, at }),
            };
            out.push(FieldValue { index, value });
        }
        Ok(out)
    }

    fn callsite(&mut self) -> Result<Callsite, WireError> {
        let id = self.u64()?;
        let at = self.at;
        let kind = match self.u8()? {
            kind::SPAN => CallsiteKind::Span,
            kind::EVENT => CallsiteKind::Event,
            code => {
                return Err(WireError::Code {
                    what: "kind",
                    code,
                    at,
                })
            }
        };
        let at = self.at;
        let level = match self.u8()? {
            level::TRACE => Level::Trace,
            level::DEBUG => Level::Debug,
            level::INFO => Level::Info,
            level::WARN => Level::Warn,
            level::ERROR => Level::Error,
            code => {
                return Err(WireError::Code {
                    what: "level",
                    code,
                    at,
                })
            }
        };
        let line = Some(self.u32()?).filter(|&l| l != 0);
        let name = self.string()?;
        let target = self.string()?;
        let module = Some(self.string()?).filter(|s| !s.is_empty());
        let file = Some(self.string()?).filter(|s| !s.is_empty());
        let n = self.u8()?;
        let mut fields = Vec::with_capacity(usize::from(n).min(self.bytes.len() - self.at));
        for _ in 0..n {
            fields.push(self.string()?);
        }
        Ok(Callsite {
            id,
            kind,
            level,
            name,
            target,
            module,
            file,
            line,
            fields,
        })
    }

    /// Decodes one record into `out` (an EVENT_AT gives two events: the event, then its `At`).
    fn record(&mut self, out: &mut Vec<SpanEvent>) -> Result<(), WireError> {
        let at = self.at;
        let ev = match self.u8()? {
            tag::CALLSITE => SpanEvent::Callsite(self.callsite()?),
            tag::NEW_SPAN => SpanEvent::NewSpan {
                time: self.u64()?,
                span: self.u64()?,
                parent: self.nonzero()?,
                callsite: self.u64()?,
                fields: self.fields()?,
            },
            tag::ENTER => SpanEvent::Enter {
                time: self.u64()?,
                span: self.u64()?,
            },
            tag::EXIT => SpanEvent::Exit {
                time: self.u64()?,
                span: self.u64()?,
            },
            tag::CLOSE => SpanEvent::Close {
                time: self.u64()?,
                span: self.u64()?,
            },
            tag::RECORD => SpanEvent::Record {
                time: self.u64()?,
                span: self.u64()?,
                fields: self.fields()?,
            },
            tag::FOLLOWS_FROM => SpanEvent::FollowsFrom {
                time: self.u64()?,
                span: self.u64()?,
                follows: self.u64()?,
            },
            tag::EVENT => SpanEvent::Event {
                time: self.u64()?,
                span: self.nonzero()?,
                callsite: self.u64()?,
                fields: self.fields()?,
            },
            tag::STACK => {
                let id = self.u64()?;
                let n = usize::from(self.u8()?);
                if n > MAX_STACK {
                    return Err(WireError::Code {
                        what: "stack length",
                        code: n as u8,
                        at: at + 9,
                    });
                }
                let mut frames = Vec::with_capacity(n.min(self.bytes.len() - self.at));
                for _ in 0..n {
                    frames.push(self.u64()?);
                }
                SpanEvent::Stack { id, frames }
            }
            tag::EVENT_AT => {
                let time = self.u64()?;
                let span = self.nonzero()?;
                let callsite = self.u64()?;
                let stack = self.u64()?;
                let fields = self.fields()?;
                out.push(SpanEvent::Event {
                    time,
                    span,
                    callsite,
                    fields,
                });
                SpanEvent::At { time, stack }
            }
            tag => return Err(WireError::Tag { tag, at }),
        };
        out.push(ev);
        Ok(())
    }
}
