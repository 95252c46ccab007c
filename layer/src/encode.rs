//! Encoding of the span wire protocol (see `WIRE.md`; its numbers are `iotrace-wire`'s): a bounded byte writer that
//! never grows a thread buffer past its capacity, and the field visitor that writes values straight
//! into the buffer (no intermediate `String`).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Level, Metadata};

pub(crate) use iotrace_wire::{
    kind, level, tag, ty, FIXED_RECORD, FRAME_HEADER, HELLO_LEN, MAX_STACK,
};
/// Longest string value kept (bytes); longer values are cut at a character boundary.
pub(crate) const MAX_VALUE_STR: usize = 512;
/// Longest callsite name, target, module, file or field name kept (bytes).
pub(crate) const MAX_NAME_STR: usize = 1024;

/// The stream's opening bytes.
pub(crate) fn hello(pid: u32) -> [u8; HELLO_LEN] {
    iotrace_wire::hello(pid)
}

/// Fills the reserved header at the start of `frame` (which holds header + records).
pub(crate) fn fill_frame_header(frame: &mut [u8], pid: u32, tid: u32, dropped: u64) {
    if frame.len() < FRAME_HEADER {
        return;
    }
    let len = (frame.len() - 4) as u32;
    frame[0..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&pid.to_le_bytes());
    frame[8..12].copy_from_slice(&tid.to_le_bytes());
    frame[12..20].copy_from_slice(&dropped.to_le_bytes());
}

/// An ENTER/EXIT/CLOSE record.
#[inline]
pub(crate) fn fixed_record(tag: u8, time: u64, span: u64) -> [u8; FIXED_RECORD] {
    let mut r = [0u8; FIXED_RECORD];
    r[0] = tag;
    r[1..9].copy_from_slice(&time.to_le_bytes());
    r[9..17].copy_from_slice(&span.to_le_bytes());
    r
}

/// The opaque callsite key: the address of the callsite's static metadata.
#[inline]
pub(crate) fn callsite_key(meta: &'static Metadata<'static>) -> u64 {
    meta as *const Metadata<'static> as usize as u64
}

fn level_code(l: &Level) -> u8 {
    if *l == Level::TRACE {
        level::TRACE
    } else if *l == Level::DEBUG {
        level::DEBUG
    } else if *l == Level::INFO {
        level::INFO
    } else if *l == Level::WARN {
        level::WARN
    } else {
        level::ERROR
    }
}

/// Appends one CALLSITE record to `out` (cold path: may grow `out`).
pub(crate) fn callsite(out: &mut Vec<u8>, meta: &'static Metadata<'static>) {
    let mut e = Enc::new(out, usize::MAX);
    e.u8(tag::CALLSITE);
    e.u64(callsite_key(meta));
    e.u8(if meta.is_span() {
        kind::SPAN
    } else {
        kind::EVENT
    });
    e.u8(level_code(meta.level()));
    e.u32(meta.line().unwrap_or(0));
    e.str(meta.name(), MAX_NAME_STR);
    e.str(meta.target(), MAX_NAME_STR);
    e.str(meta.module_path().unwrap_or(""), MAX_NAME_STR);
    e.str(meta.file().unwrap_or(""), MAX_NAME_STR);
    let n = meta.fields().len().min(255);
    e.u8(n as u8);
    for f in meta.fields().iter().take(n) {
        e.str(f.name(), MAX_NAME_STR);
    }
    e.commit();
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// Appends to a byte buffer without ever growing it past `limit` bytes. A write that does not
/// fit sets `overflow`; the record is then rolled back (on `commit` or on drop, e.g. when a
/// `Debug` impl panics halfway), so a buffer only ever holds whole records.
pub(crate) struct Enc<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
    limit: usize,
    overflow: bool,
    done: bool,
}

impl<'a> Enc<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>, limit: usize) -> Self {
        let start = buf.len();
        Enc {
            buf,
            start,
            limit,
            overflow: false,
            done: false,
        }
    }

    #[inline]
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        if self.overflow || self.limit - self.buf.len().min(self.limit) < b.len() {
            self.overflow = true;
        } else {
            self.buf.extend_from_slice(b);
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// `u16 len` + UTF-8, cut to `max` bytes.
    pub(crate) fn str(&mut self, s: &str, max: usize) {
        let s = truncate_str(s, max.min(u16::MAX as usize));
        self.u16(s.len() as u16);
        self.bytes(s.as_bytes());
    }

    /// `u16 len` + the `Debug` formatting of `v`, cut to [`MAX_VALUE_STR`] bytes, written in place.
    pub(crate) fn debug(&mut self, v: &dyn fmt::Debug) {
        let at = self.buf.len();
        self.u16(0);
        let mut w = Capped {
            enc: self,
            written: 0,
        };
        // An Err only means "cut short"; what was written is kept.
        let _ = write!(w, "{v:?}");
        let written = w.written as u16;
        if !self.overflow {
            if let Some(slot) = self.buf.get_mut(at..at + 2) {
                slot.copy_from_slice(&written.to_le_bytes());
            }
        }
    }

    /// Position of the next byte (to back-patch a count later).
    pub(crate) fn pos(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn patch_u8(&mut self, at: usize, v: u8) {
        if let Some(b) = self.buf.get_mut(at) {
            *b = v;
        }
    }

    /// Keeps the record if it fit; otherwise rolls it back. Returns whether it was kept.
    pub(crate) fn commit(mut self) -> bool {
        self.done = !self.overflow;
        self.done
    }
}

impl Drop for Enc<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.buf.truncate(self.start);
        }
    }
}

struct Capped<'e, 'a> {
    enc: &'e mut Enc<'a>,
    written: usize,
}

impl fmt::Write for Capped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = MAX_VALUE_STR - self.written;
        let part = truncate_str(s, room);
        self.enc.bytes(part.as_bytes());
        self.written += part.len();
        if part.len() < s.len() || self.enc.overflow {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// Writes a `fields` block: `u8 n` then `(u8 index, u8 type, value)` per recorded field.
pub(crate) struct Fields<'e, 'a> {
    enc: &'e mut Enc<'a>,
    count_at: usize,
    n: u8,
    /// For waker events: maps tracing's span id in `task.id` to the never-reused id.
    task_ids: Option<&'e dyn Fn(u64) -> Option<u64>>,
}

impl<'e, 'a> Fields<'e, 'a> {
    pub(crate) fn begin(
        enc: &'e mut Enc<'a>,
        task_ids: Option<&'e dyn Fn(u64) -> Option<u64>>,
    ) -> Self {
        let count_at = enc.pos();
        enc.u8(0);
        Fields {
            enc,
            count_at,
            n: 0,
            task_ids,
        }
    }

    pub(crate) fn finish(self) {
        self.enc.patch_u8(self.count_at, self.n);
    }

    /// Writes the field's index and type, or returns false if the field cannot be encoded.
    fn head(&mut self, field: &Field, ty: u8) -> bool {
        let Ok(index) = u8::try_from(field.index()) else {
            return false;
        };
        if self.n == u8::MAX {
            return false;
        }
        self.n += 1;
        self.enc.u8(index);
        self.enc.u8(ty);
        true
    }
}

impl Visit for Fields<'_, '_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if let Some(resolve) = self.task_ids {
            if field.name() == "task.id" {
                if let Some(span) = resolve(value) {
                    if self.head(field, ty::SPAN) {
                        self.enc.u64(span);
                    }
                    return;
                }
            }
        }
        if self.head(field, ty::U64) {
            self.enc.u64(value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.head(field, ty::I64) {
            self.enc.bytes(&value.to_le_bytes());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.head(field, ty::BOOL) {
            self.enc.u8(value as u8);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.head(field, ty::F64) {
            self.enc.bytes(&value.to_bits().to_le_bytes());
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        match u64::try_from(value) {
            Ok(v) => self.record_u64(field, v),
            Err(_) => self.record_debug(field, &value),
        }
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        match i64::try_from(value) {
            Ok(v) => self.record_i64(field, v),
            Err(_) => self.record_debug(field, &value),
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.head(field, ty::STR) {
            self.enc.str(value, MAX_VALUE_STR);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.head(field, ty::STR) {
            self.enc.debug(value);
        }
    }
}

#[cfg(test)]
mod tests;
