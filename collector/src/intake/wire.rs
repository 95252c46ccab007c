//! The span wire protocol's reader side (spec: `layer/WIRE.md`): the owned, serde-serializable
//! types the recorder stores, and a decoder that rejects anything malformed without panicking and
//! without allocating more than the input it was given.

use serde::{Deserialize, Serialize};

/// First 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"IOTRSPAN";
/// The protocol version this reader understands.
pub const VERSION: u16 = 1;
/// Size of the hello that opens a stream.
pub const HELLO_LEN: usize = 16;
/// Smallest frame (after the length prefix): pid, tid, dropped.
pub const MIN_FRAME: usize = 16;
/// Largest frame accepted (after the length prefix).
pub const MAX_FRAME: usize = 4 << 20;

/// The records of one frame: one thread's buffer of one process, in that thread's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl SpanEvent {
    /// The record's time, if it has one (callsites have none).
    pub fn time(&self) -> Option<u64> {
        match self {
            SpanEvent::Callsite(_) => None,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallsiteKind {
    Span,
    Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// Position of the field's name in its callsite's `fields`.
    pub index: u8,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not an iotrace span stream (first bytes {0:02x?})")]
    Magic([u8; 8]),
    #[error("speaks span wire version {0}; this recorder reads version {VERSION}")]
    Version(u16),
    #[error("frame length {0} is outside {MIN_FRAME}..={MAX_FRAME}")]
    FrameLength(u32),
    #[error("record at byte {0} runs past the end of its frame")]
    Truncated(usize),
    #[error("unknown record tag {tag} at byte {at}")]
    Tag { tag: u8, at: usize },
    #[error("unknown value type {ty} at byte {at}")]
    ValueType { ty: u8, at: usize },
    #[error("unknown {what} code {code} at byte {at}")]
    Code {
        what: &'static str,
        code: u8,
        at: usize,
    },
    #[error("frame from pid {frame} on the connection of pid {hello}")]
    Pid { frame: u32, hello: u32 },
    #[error("string at byte {0} is not UTF-8")]
    Utf8(usize),
}

/// Checks a hello and returns the sender's pid.
pub fn decode_hello(hello: &[u8; HELLO_LEN]) -> Result<u32, WireError> {
    let mut r = Reader::new(hello);
    let magic = r.array::<8>()?;
    if magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    let version = r.u16()?;
    if version != VERSION {
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
        events.push(r.record()?);
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
                1 => Value::U64(self.u64()?),
                2 => Value::I64(self.u64()? as i64),
                3 => Value::Bool(self.u8()? != 0),
                4 => Value::F64(f64::from_bits(self.u64()?)),
                5 => Value::Str(self.string()?),
                6 => Value::Span(self.u64()?),
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
            0 => CallsiteKind::Span,
            1 => CallsiteKind::Event,
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
            0 => Level::Trace,
            1 => Level::Debug,
            2 => Level::Info,
            3 => Level::Warn,
            4 => Level::Error,
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

    fn record(&mut self) -> Result<SpanEvent, WireError> {
        let at = self.at;
        Ok(match self.u8()? {
            1 => SpanEvent::Callsite(self.callsite()?),
            2 => SpanEvent::NewSpan {
                time: self.u64()?,
                span: self.u64()?,
                parent: self.nonzero()?,
                callsite: self.u64()?,
                fields: self.fields()?,
            },
            3 => SpanEvent::Enter {
                time: self.u64()?,
                span: self.u64()?,
            },
            4 => SpanEvent::Exit {
                time: self.u64()?,
                span: self.u64()?,
            },
            5 => SpanEvent::Close {
                time: self.u64()?,
                span: self.u64()?,
            },
            6 => SpanEvent::Record {
                time: self.u64()?,
                span: self.u64()?,
                fields: self.fields()?,
            },
            7 => SpanEvent::FollowsFrom {
                time: self.u64()?,
                span: self.u64()?,
                follows: self.u64()?,
            },
            8 => SpanEvent::Event {
                time: self.u64()?,
                span: self.nonzero()?,
                callsite: self.u64()?,
                fields: self.fields()?,
            },
            tag => return Err(WireError::Tag { tag, at }),
        })
    }
}
