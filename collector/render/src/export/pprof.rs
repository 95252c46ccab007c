//! `iotrace export --format pprof`: the trace's stack samples as a gzipped `profile.proto`
//! (github.com/google/pprof, `proto/profile.proto`), which `go tool pprof`, pprof's web UI,
//! Pyroscope, Parca and Grafana read.
//!
//! Three sample types, every sample carrying all three values:
//! - `samples/count`: on-CPU samples (cpu-clock), 1 per sample;
//! - `cpu/nanoseconds`: the same samples weighted by the sampling period (the default type,
//!   as in Go's own CPU profiles);
//! - `off_cpu/nanoseconds`: voluntary switch-outs, weighted by the time until the thread ran
//!   again (the off-CPU flamegraph's weight, in ns).
//!
//! Samples are labelled with the thread (`thread`: its name, `tid`, `pid` as numbers), the
//! task and innermost span active on it at that instant (`task`, `span`), and for off-CPU
//! stretches the syscall it slept in (`syscall`). Frames are those of the flamegraphs: the
//! same fold ([`crate::flamegraph::stack_pass`]) and names ([`iotrace_analysis::symbolize`]), the
//! scheduler's frames dropped from off-CPU stacks. iotrace's own thread in the program
//! (`iotrace-flush`) is left out, as in the flamegraphs.
//!
//! Memory is bounded like the flamegraphs': one count per distinct (thread, context, stack,
//! syscall), then one location per distinct frame. The encoder is hand-written (the message
//! set is small and fixed) and writes through gzip as it goes.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::Path;

use super::common::{absolute, no_samples, window, Counting, ExportError, FormatOutcome, Pb};
use crate::flamegraph::{native_frames, need_frames, stack_pass, thread_name, NamedFrame};
use iotrace_analysis::intervals::TimelineOptions;
use iotrace_analysis::stacks::{Need, SpaceId, StackFold, StackItem};
use iotrace_analysis::summary::INSTRUMENTATION_THREAD;
use iotrace_analysis::symbolize::{self, FrameKey};

/// The profile's string table (index 0 is "").
struct StringTable {
    list: Vec<String>,
    index: HashMap<String, i64>,
}

impl StringTable {
    fn new() -> Self {
        StringTable {
            list: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as i64;
        self.list.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

// Field numbers of profile.proto.
mod field {
    pub const SAMPLE_TYPE: u32 = 1;
    pub const SAMPLE: u32 = 2;
    pub const MAPPING: u32 = 3;
    pub const LOCATION: u32 = 4;
    pub const FUNCTION: u32 = 5;
    pub const STRING_TABLE: u32 = 6;
    pub const TIME_NANOS: u32 = 9;
    pub const DURATION_NANOS: u32 = 10;
    pub const PERIOD_TYPE: u32 = 11;
    pub const PERIOD: u32 = 12;
    pub const COMMENT: u32 = 13;
    pub const DEFAULT_SAMPLE_TYPE: u32 = 14;
}

/// Counting key: thread, span context, stack, off-CPU syscall + 1 (0: on CPU).
type Key = (u32, u32, u32, u32);

#[derive(Default, Clone, Copy)]
struct Value {
    samples: u64,
    off_cpu_ns: u64,
}

#[derive(Default)]
struct Counts {
    values: HashMap<Key, Value>,
    own_left_out: u64,
    last_ns: u64,
}

impl Counts {
    fn add(&mut self, fold: &mut StackFold, window: (u64, u64), item: StackItem) {
        let (from, to) = window;
        let (tag, value) = match item.off_cpu {
            None => {
                if item.time_ns < from || item.time_ns >= to {
                    return;
                }
                self.last_ns = self.last_ns.max(item.time_ns);
                (
                    0,
                    Value {
                        samples: 1,
                        off_cpu_ns: 0,
                    },
                )
            }
            Some(off) => {
                let begin = item.time_ns.max(from);
                let end = item.time_ns.saturating_add(off.duration_ns).min(to);
                if end <= begin {
                    return;
                }
                self.last_ns = self.last_ns.max(end);
                (
                    u32::from(off.syscall) + 1,
                    Value {
                        samples: 0,
                        off_cpu_ns: end - begin,
                    },
                )
            }
        };
        let thread = thread_name(fold, item.tid);
        if fold.strings.get(thread) == INSTRUMENTATION_THREAD {
            self.own_left_out += 1;
            return;
        }
        let v = self
            .values
            .entry((item.tid, item.context, item.stack, tag))
            .or_default();
        v.samples += value.samples;
        v.off_cpu_ns += value.off_cpu_ns;
    }
}

/// Reads `trace` and writes its gzipped pprof profile to `out`.
pub fn export(
    trace: &Path,
    out: &Path,
    opts: &TimelineOptions,
) -> Result<FormatOutcome, ExportError> {
    let window = window(opts)?;
    let need = Need {
        on_cpu: true,
        off_cpu: true,
        contexts: true,
    };
    let mut counts = Counts::default();
    let mut abs = None;
    let mut pass = stack_pass(trace, need, &mut |fold, item| {
        let w = *abs.get_or_insert_with(|| absolute(fold.start_ns, window));
        counts.add(fold, w, item)
    })?;
    if counts.values.is_empty() {
        return Err(ExportError::Empty(no_samples(
            trace,
            &pass.fold,
            counts.own_left_out,
        )));
    }
    let mut need: HashSet<FrameKey> = HashSet::new();
    for &(_, _, stack, _) in counts.values.keys() {
        need_frames(&pass.fold.stacks, stack, &mut need);
    }
    let (symbols, _) = symbolize::symbolize(&mut pass.fold, need, pass.kernel.as_ref());
    // Thread names and contexts are final only now.
    let mut labels: HashMap<(u32, u32), Vec<u8>> = HashMap::new();
    let mut strings = StringTable::new();
    let fold = &mut pass.fold;
    let mut keys: Vec<Key> = counts.values.keys().copied().collect();
    keys.sort_unstable();
    for &(tid, context, _, _) in &keys {
        if labels.contains_key(&(tid, context)) {
            continue;
        }
        let name = thread_name(fold, tid);
        let pid = fold.threads.get(tid).map_or(0, |t| t.0);
        let mut l = Pb::default();
        label(&mut l, &mut strings, "thread", fold.strings.get(name));
        num_label(&mut l, &mut strings, "tid", i64::from(tid));
        num_label(&mut l, &mut strings, "pid", i64::from(pid));
        if let Some(c) = fold.contexts.get(context) {
            if let Some(task) = c.task {
                label(&mut l, &mut strings, "task", fold.strings.get(task));
            }
            if let Some(&span) = c.spans.last() {
                label(&mut l, &mut strings, "span", fold.strings.get(span));
            }
        }
        labels.insert((tid, context), l.0);
    }
    let fold = &pass.fold;

    let write_err = |error| ExportError::Write {
        path: out.to_owned(),
        error,
    };
    let file = std::fs::File::create(out).map_err(write_err)?;
    let mut w = Counting {
        w: flate2::write::GzEncoder::new(io::BufWriter::new(file), flate2::Compression::default()),
        bytes: 0,
    };
    let mut msg = Pb::default();
    for (ty, unit) in [
        ("samples", "count"),
        ("cpu", "nanoseconds"),
        ("off_cpu", "nanoseconds"),
    ] {
        let mut vt = Pb::default();
        vt.int(1, strings.id(ty));
        vt.int(2, strings.id(unit));
        msg.bytes(field::SAMPLE_TYPE, &vt.0);
    }
    let period_ns = 1_000_000_000 / fold.frequency_hz.max(1);
    let mut locations: HashMap<(FrameKey, &str), u64> = HashMap::new();
    let mut functions: HashMap<&str, u64> = HashMap::new();
    let mut mappings = Mappings {
        main: pass
            .command
            .split_whitespace()
            .next()
            .and_then(|c| c.rsplit('/').next())
            .unwrap_or("")
            .to_owned(),
        ..Mappings::default()
    };
    let mut location_msgs = Pb::default();
    let mut function_msgs = Pb::default();
    let mut frames: Vec<NamedFrame> = Vec::new();
    let mut ids: Vec<u64> = Vec::new();
    let mut samples = 0;
    for key in keys {
        let (tid, context, stack, tag) = key;
        let v = counts.values[&key];
        let syscall = (tag != 0).then(|| u16::try_from(tag - 1).unwrap_or(u16::MAX));
        let note = native_frames(fold, &symbols, stack, syscall, &mut frames);
        ids.clear();
        for f in frames.iter().rev() {
            let next = locations.len() as u64 + 1;
            // By frame and name: the functions inlined at one address are locations of their own.
            let id = *locations.entry((f.key, f.name)).or_insert_with(|| {
                let next_fn = functions.len() as u64 + 1;
                let function = *functions.entry(f.name).or_insert_with(|| {
                    let mut m = Pb::default();
                    let name = strings.id(f.name);
                    m.uint(1, next_fn);
                    m.int(2, name);
                    m.int(3, name);
                    function_msgs.bytes(field::FUNCTION, &m.0);
                    next_fn
                });
                let mut line = Pb::default();
                line.uint(1, function);
                let mut m = Pb::default();
                m.uint(1, next);
                if let Some((addr, space)) = fold.stacks.frame(f.key.0) {
                    m.uint(2, mappings.id(fold, &mut strings, addr, space));
                    m.uint(3, addr);
                }
                m.bytes(4, &line.0);
                location_msgs.bytes(field::LOCATION, &m.0);
                next
            });
            ids.push(id);
        }
        let mut s = Pb::default();
        s.packed(1, ids.iter().copied());
        let cpu_ns = v.samples * period_ns;
        s.packed(2, [v.samples, cpu_ns, v.off_cpu_ns].into_iter());
        s.0.extend_from_slice(&labels[&(tid, context)]);
        if let Some(sc) = note {
            label(&mut s, &mut strings, "syscall", &sc);
        }
        msg.bytes(field::SAMPLE, &s.0);
        samples += 1;
        if msg.0.len() > 1 << 16 {
            w.write_all(&msg.0).map_err(write_err)?;
            msg.0.clear();
        }
    }
    // Stable: the main binary's mappings first, the rest in the order they were met.
    mappings.msgs.sort_by_key(|m| !m.0);
    for (_, m) in &mappings.msgs {
        msg.bytes(field::MAPPING, &m.0);
    }
    msg.0.extend_from_slice(&location_msgs.0);
    msg.0.extend_from_slice(&function_msgs.0);
    let start = fold.start_ns;
    msg.int(
        field::TIME_NANOS,
        window_start(pass.start_unix_ns, opts) as i64,
    );
    let from = absolute(start, window).0;
    msg.int(
        field::DURATION_NANOS,
        counts.last_ns.saturating_sub(from) as i64,
    );
    let mut pt = Pb::default();
    pt.int(1, strings.id("cpu"));
    pt.int(2, strings.id("nanoseconds"));
    msg.bytes(field::PERIOD_TYPE, &pt.0);
    msg.int(field::PERIOD, period_ns as i64);
    let comment = strings.id(&format!("iotrace: {}", pass.command));
    msg.int(field::COMMENT, comment);
    msg.int(field::DEFAULT_SAMPLE_TYPE, strings.id("cpu"));
    for s in &strings.list {
        msg.bytes(field::STRING_TABLE, s.as_bytes());
    }
    w.write_all(&msg.0).map_err(write_err)?;
    let bytes = w.bytes;
    w.w.finish()
        .and_then(|mut b| b.flush())
        .map_err(write_err)?;
    Ok(FormatOutcome {
        items: samples,
        bytes,
        truncated: pass.truncated,
        notes: (counts.own_left_out > 0)
            .then(|| {
                format!(
                    "{} stacks of iotrace's own thread (iotrace-flush) are not in it",
                    counts.own_left_out
                )
            })
            .into_iter()
            .collect(),
    })
}

/// The start of the window in Unix ns.
fn window_start(start_unix_ns: u64, opts: &TimelineOptions) -> u64 {
    start_unix_ns.saturating_add(opts.from_ns.unwrap_or(0))
}

/// One pprof mapping per executable mapping that holds a frame, and one for the kernel. Every
/// mapping says its functions are named, so pprof does not try to symbolize. pprof takes the
/// first mapping for the main binary, so the recorded program's own mappings are written first.
#[derive(Default)]
struct Mappings {
    ids: HashMap<(SpaceId, u64), u64>,
    /// The recorded program's file name.
    main: String,
    /// (is the main binary, message).
    msgs: Vec<(bool, Pb)>,
}

impl Mappings {
    fn id(
        &mut self,
        fold: &StackFold,
        strings: &mut StringTable,
        addr: u64,
        space: SpaceId,
    ) -> u64 {
        let found = if symbolize::is_kernel(addr) {
            Some((
                u32::MAX,
                0xffff_0000_0000_0000,
                u64::MAX,
                0,
                "[kernel.kallsyms]",
            ))
        } else {
            fold.spaces
                .lookup(space, addr)
                .map(|m| (space, m.start, m.end, m.pgoff, m.filename.as_str()))
        };
        let Some((space, start, end, pgoff, file)) = found else {
            return 0;
        };
        let next = self.ids.len() as u64 + 1;
        *self.ids.entry((space, start)).or_insert_with(|| {
            let mut m = Pb::default();
            m.uint(1, next);
            m.uint(2, start);
            m.uint(3, end);
            m.uint(4, pgoff);
            m.int(5, strings.id(file));
            m.uint(7, 1);
            let is_main = !self.main.is_empty() && file.rsplit('/').next() == Some(&self.main);
            self.msgs.push((is_main, m));
            next
        })
    }
}

fn label(m: &mut Pb, strings: &mut StringTable, key: &str, value: &str) {
    let mut l = Pb::default();
    l.int(1, strings.id(key));
    l.int(2, strings.id(value));
    m.bytes(3, &l.0);
}

fn num_label(m: &mut Pb, strings: &mut StringTable, key: &str, value: i64) {
    let mut l = Pb::default();
    l.int(1, strings.id(key));
    l.int(3, value);
    m.bytes(3, &l.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_as_protobuf_does() {
        let mut p = Pb::default();
        p.varint(300);
        assert_eq!(p.0, [0xac, 0x02]);
        let mut p = Pb::default();
        p.uint(1, 150);
        assert_eq!(p.0, [0x08, 0x96, 0x01]);
        p.uint(2, 0);
        assert_eq!(p.0.len(), 3, "defaults are not written");
        let mut p = Pb::default();
        p.bytes(2, b"testing");
        assert_eq!(p.0, b"\x12\x07testing");
        let mut p = Pb::default();
        p.packed(4, [3, 270, 86942].into_iter());
        assert_eq!(p.0, [0x22, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05]);
        // Negative int64 values take ten bytes.
        let mut p = Pb::default();
        p.int(1, -1);
        assert_eq!(p.0.len(), 11);
    }

    #[test]
    fn string_table_starts_empty_and_interns() {
        let mut s = StringTable::new();
        assert_eq!(s.id(""), 0);
        assert_eq!(s.id("cpu"), 1);
        assert_eq!(s.id("cpu"), 1);
        assert_eq!(s.list, ["", "cpu"]);
    }
}
