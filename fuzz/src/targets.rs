//! The fuzz targets (what runs on each input) and their seeds, all taken from real traces:
//! whole files, their frame bodies (compressed ones also decompressed), and their span
//! batches re-encoded as the span wire stream the program's layer sent. Perf records are
//! built from the kernel's layouts (perf_event_open(2)), as a trace does not keep them raw.

use std::path::Path;

use iotrace_collector::analysis::Summarizer;
use iotrace_collector::format::{self, kind, Record, TraceReader};
use iotrace_collector::intake::{self, SpanBatch, SpanEvent, Value};
use iotrace_collector::perf::fuzz as perf_fuzz;
use iotrace_collector::report;
use iotrace_collector::stacks::{StackFold, StackItem};

use crate::mutate::Shape;

/// Traces committed with the fuzzer (a few KB): `fixture threads 3`, `fixture fork` with
/// stack samples, and the tokio demo serving six requests (spans and tasks).
const COMMITTED: [&[u8]; 3] = [
    include_bytes!("../seeds/threads.iotrace"),
    include_bytes!("../seeds/fork.iotrace"),
    include_bytes!("../seeds/tokio.iotrace"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A whole trace file through the reader, the analysis and both reports.
    TraceFile = 1,
    /// One frame body, framed with a correct length and checksum after a real trace's first
    /// records, then as [`Target::TraceFile`].
    TraceFrame = 2,
    /// A span wire stream through the intake's decoder, its batches on into the analysis.
    SpanWire = 3,
    /// Perf ring records through the recorder's parsers, on into the analysis.
    PerfRecords = 4,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::TraceFile,
        Target::TraceFrame,
        Target::SpanWire,
        Target::PerfRecords,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::TraceFile => "trace_file",
            Target::TraceFrame => "trace_frame",
            Target::SpanWire => "span_wire",
            Target::PerfRecords => "perf_records",
        }
    }

    pub fn shape(self) -> Shape {
        match self {
            Target::TraceFile => Shape::File,
            Target::TraceFrame => Shape::Frame,
            Target::SpanWire => Shape::Wire,
            Target::PerfRecords => Shape::Perf,
        }
    }

    pub fn exec(self, input: &[u8]) {
        match self {
            Target::TraceFile => trace_file(input),
            Target::TraceFrame => trace_frame(input),
            Target::SpanWire => span_wire(input),
            Target::PerfRecords => perf_records(input),
        }
    }
}

/// Reads a whole trace from memory and renders its report, as `iotrace report` does.
pub fn trace_file(bytes: &[u8]) {
    let Ok(mut reader) = TraceReader::new(bytes, Path::new("fuzz-input")) else {
        return;
    };
    let mut summarizer = Summarizer::new();
    // The timeline's interval sink and the flamegraphs' stack fold read the same records.
    let mut timeline = iotrace_collector::timeline::Collected::default();
    let mut fold = StackFold::new(true);
    let mut frames = 0usize;
    let mut walk = |fold: &mut StackFold, item: StackItem| {
        frames += fold.stacks.walk(item.stack).count();
    };
    for record in reader.by_ref() {
        summarizer.add_to(&record, &mut timeline);
        fold.add(&record, &mut walk);
    }
    fold.finish(&mut walk);
    std::hint::black_box(frames);
    let stop = reader.stop().map(|s| s.to_string());
    let summary = summarizer.finish_to(stop, &mut timeline);
    std::hint::black_box(report::text(&summary));
    std::hint::black_box(report::json(&summary));
}

fn render(summarizer: Summarizer, stop: Option<String>) {
    let summary = summarizer.finish(stop);
    std::hint::black_box(report::text(&summary));
    std::hint::black_box(report::json(&summary));
}

/// The file header and first two frames (Header, Capabilities) of the tokio seed.
fn frame_prefix() -> &'static [u8] {
    static PREFIX: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let seed = COMMITTED[2];
        let frames = crate::mutate::file_frames(seed);
        let end = frames.get(2).map_or(16, |&(at, _)| at);
        seed[..end].to_vec()
    })
}

/// Frames `body` (kind byte and payload) with its true length and checksum.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// One frame body with its checksum fixed up, after a real trace's first records.
pub fn trace_frame(body: &[u8]) {
    let mut file = frame_prefix().to_vec();
    file.extend_from_slice(&frame(body));
    trace_file(&file);
}

/// A span wire stream decoded the way the intake does (hello, then length-prefixed frames),
/// each batch checked through the trace's own encoding and fed to the analysis.
pub fn span_wire(stream: &[u8]) {
    let Some(hello) = stream.first_chunk::<{ intake::wire::HELLO_LEN }>() else {
        return;
    };
    let Ok(pid) = intake::decode_hello(hello) else {
        return;
    };
    let mut summarizer = Summarizer::new();
    let mut rest = &stream[intake::wire::HELLO_LEN..];
    let mut stop = None;
    while let Some(prefix) = rest.first_chunk::<4>() {
        let len = match intake::frame_len(*prefix) {
            Ok(len) => len,
            Err(e) => {
                stop = Some(e.to_string());
                break;
            }
        };
        let Some(payload) = rest.get(4..4 + len) else {
            break;
        };
        rest = &rest[4 + len..];
        match intake::decode_frame(payload) {
            Ok(batch) if batch.pid == pid => {
                // As stored in a trace: postcard, read back by the trace reader's decoder.
                if let Ok(bytes) = postcard::to_allocvec(&batch) {
                    let _ = format::decode(kind::SPANS, &bytes);
                }
                summarizer.add(&Record::Spans(batch));
            }
            Ok(_) => break,
            Err(e) => {
                stop = Some(e.to_string());
                break;
            }
        }
    }
    render(summarizer, stop);
}

/// Perf ring records through the recorder's parsers; what they produce goes to the analysis.
pub fn perf_records(input: &[u8]) {
    let mut summarizer = Summarizer::new();
    for record in perf_fuzz::records(input) {
        summarizer.add(&record);
    }
    render(summarizer, None);
}

/// The seeds of every target.
#[derive(Debug, Clone, Default)]
pub struct Seeds {
    pub files: Vec<Vec<u8>>,
    pub frames: Vec<Vec<u8>>,
    pub wire: Vec<Vec<u8>>,
    pub perf: Vec<Vec<u8>>,
}

impl Seeds {
    /// Seeds from the committed traces.
    pub fn committed() -> Self {
        let mut seeds = Seeds {
            perf: perf_seeds(),
            ..Seeds::default()
        };
        for file in COMMITTED {
            seeds.add_trace(file);
        }
        seeds
    }

    /// Adds every `*.iotrace` file in `dir` (traces recorded at run time).
    pub fn add_dir(&mut self, dir: &Path) -> std::io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "iotrace") {
                let bytes = std::fs::read(&path)?;
                // A long recording is cut to a seed-sized head (it still reads back).
                let cut = crate::mutate::file_frames(&bytes)
                    .into_iter()
                    .map(|(at, len)| at + 8 + len)
                    .take_while(|&end| end <= crate::mutate::MAX_INPUT)
                    .last()
                    .unwrap_or(16.min(bytes.len()));
                self.add_trace(&bytes[..cut]);
                n += 1;
            }
        }
        Ok(n)
    }

    /// A trace as a file seed, its frame bodies as frame seeds (compressed ones both as they
    /// are and decompressed), and its span batches as a wire stream.
    pub fn add_trace(&mut self, file: &[u8]) {
        self.files.push(file.to_vec());
        let mut batches = Vec::new();
        for (at, len) in crate::mutate::file_frames(file) {
            let body = &file[at + 8..at + 8 + len];
            self.frames.push(body.to_vec());
            if body[0] & format::COMPRESSED != 0 {
                if let Ok(plain) = zstd::bulk::decompress(&body[1..], format::MAX_FRAME as usize) {
                    let mut unpacked = vec![body[0] & !format::COMPRESSED];
                    unpacked.extend_from_slice(&plain);
                    self.frames.push(unpacked);
                }
            }
        }
        if let Ok(reader) = TraceReader::new(file, Path::new("seed")) {
            for record in reader {
                if let Record::Spans(batch) = record {
                    batches.push(batch);
                }
            }
        }
        if let Some(first) = batches.first() {
            let pid = first.pid;
            // The whole stream, and one stream per batch (smaller inputs, faster).
            let mut stream = hello(pid);
            for b in &batches {
                let mut one = hello(pid);
                let f = wire_frame(b);
                one.extend_from_slice(&f);
                self.wire.push(one);
                if stream.len() + f.len() <= crate::mutate::MAX_INPUT {
                    stream.extend_from_slice(&f);
                }
            }
            self.wire.push(stream);
        }
    }

    pub fn for_target(&self, target: Target) -> &[Vec<u8>] {
        match target {
            Target::TraceFile => &self.files,
            Target::TraceFrame => &self.frames,
            Target::SpanWire => &self.wire,
            Target::PerfRecords => &self.perf,
        }
    }
}

/// The 16-byte hello of `layer/WIRE.md`.
pub fn hello(pid: u32) -> Vec<u8> {
    let mut h = intake::wire::MAGIC.to_vec();
    h.extend_from_slice(&intake::wire::VERSION.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&pid.to_le_bytes());
    h
}

/// A batch encoded as the layer sends it: length prefix, then pid, tid, dropped, records.
pub fn wire_frame(batch: &SpanBatch) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&batch.pid.to_le_bytes());
    p.extend_from_slice(&batch.tid.to_le_bytes());
    p.extend_from_slice(&batch.dropped_total.to_le_bytes());
    let mut events = batch.events.iter().peekable();
    while let Some(e) = events.next() {
        // An event and the `At` after it are one EVENT_AT record.
        if let (
            SpanEvent::Event {
                time,
                span,
                callsite,
                fields,
            },
            Some(SpanEvent::At { stack, .. }),
        ) = (e, events.peek())
        {
            p.push(10);
            for v in [*time, span.unwrap_or(0), *callsite, *stack] {
                p.extend_from_slice(&v.to_le_bytes());
            }
            put_fields(&mut p, fields);
            events.next();
            continue;
        }
        encode_event(&mut p, e);
    }
    let mut out = (p.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&p);
    out
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    p.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    p.extend_from_slice(bytes);
}

fn put_fields(p: &mut Vec<u8>, fields: &[intake::FieldValue]) {
    let n = fields.len().min(255);
    p.push(n as u8);
    for f in &fields[..n] {
        p.push(f.index);
        match &f.value {
            Value::U64(v) => {
                p.push(1);
                p.extend_from_slice(&v.to_le_bytes());
            }
            Value::I64(v) => {
                p.push(2);
                p.extend_from_slice(&v.to_le_bytes());
            }
            Value::Bool(v) => {
                p.push(3);
                p.push(u8::from(*v));
            }
            Value::F64(v) => {
                p.push(4);
                p.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            Value::Str(s) => {
                p.push(5);
                put_str(p, s);
            }
            Value::Span(v) => {
                p.push(6);
                p.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

fn encode_event(p: &mut Vec<u8>, e: &SpanEvent) {
    let u64s = |p: &mut Vec<u8>, tag: u8, vs: &[u64]| {
        p.push(tag);
        for v in vs {
            p.extend_from_slice(&v.to_le_bytes());
        }
    };
    match e {
        SpanEvent::Callsite(c) => {
            p.push(1);
            p.extend_from_slice(&c.id.to_le_bytes());
            p.push(c.kind as u8);
            p.push(c.level as u8);
            p.extend_from_slice(&c.line.unwrap_or(0).to_le_bytes());
            put_str(p, &c.name);
            put_str(p, &c.target);
            put_str(p, c.module.as_deref().unwrap_or(""));
            put_str(p, c.file.as_deref().unwrap_or(""));
            let n = c.fields.len().min(255);
            p.push(n as u8);
            for f in &c.fields[..n] {
                put_str(p, f);
            }
        }
        SpanEvent::NewSpan {
            time,
            span,
            parent,
            callsite,
            fields,
        } => {
            u64s(p, 2, &[*time, *span, parent.unwrap_or(0), *callsite]);
            put_fields(p, fields);
        }
        SpanEvent::Enter { time, span } => u64s(p, 3, &[*time, *span]),
        SpanEvent::Exit { time, span } => u64s(p, 4, &[*time, *span]),
        SpanEvent::Close { time, span } => u64s(p, 5, &[*time, *span]),
        SpanEvent::Record { time, span, fields } => {
            u64s(p, 6, &[*time, *span]);
            put_fields(p, fields);
        }
        SpanEvent::FollowsFrom {
            time,
            span,
            follows,
        } => u64s(p, 7, &[*time, *span, *follows]),
        SpanEvent::Event {
            time,
            span,
            callsite,
            fields,
        } => {
            u64s(p, 8, &[*time, span.unwrap_or(0), *callsite]);
            put_fields(p, fields);
        }
        SpanEvent::Stack { id, frames } => {
            let n = frames.len().min(intake::wire::MAX_STACK);
            u64s(p, 9, &[*id]);
            p.push(n as u8);
            for f in &frames[..n] {
                p.extend_from_slice(&f.to_le_bytes());
            }
        }
        // An `At` with no event before it has no wire form.
        SpanEvent::At { .. } => {}
    }
}

/// One perf record in the fuzz entry's layout.
fn perf_record(out: &mut Vec<u8>, ty: u32, misc: u16, data: &[u8]) {
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&misc.to_le_bytes());
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data);
}

fn le(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The sample_id trailer: pid, tid, time, cpu, id.
fn sample_id(pid: u32, tid: u32, time: u64) -> Vec<u8> {
    le(&[
        &pid.to_le_bytes(),
        &tid.to_le_bytes(),
        &time.to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &7u64.to_le_bytes(),
    ])
}

/// A sample's fixed part: id, pid/tid, time, cpu.
fn sample_head(id: u64, pid: u32, tid: u32, time: u64) -> Vec<u8> {
    le(&[
        &id.to_le_bytes(),
        &pid.to_le_bytes(),
        &tid.to_le_bytes(),
        &time.to_le_bytes(),
        &0u64.to_le_bytes(),
    ])
}

/// A thread's life as the rings carry it: exec comm, fork, mmap2 (inode and build id
/// variants), syscall samples, stack samples (user and kernel frames), a switch-out with its
/// stack, switch-in, lost, exit.
pub fn perf_seeds() -> Vec<Vec<u8>> {
    use perf_fuzz::ty;
    let (pid, tid) = (100u32, 101u32);
    let mut all = Vec::new();
    let mut records = Vec::new();
    let mut comm = le(&[&pid.to_le_bytes(), &pid.to_le_bytes(), b"server\0\0"]);
    comm.extend(sample_id(pid, pid, 1_000));
    records.push((ty::COMM, ty::MISC_COMM_EXEC, comm));
    let fork = le(&[
        &pid.to_le_bytes(),
        &pid.to_le_bytes(),
        &tid.to_le_bytes(),
        &pid.to_le_bytes(),
        &1_100u64.to_le_bytes(),
    ]);
    let mut f = fork.clone();
    f.extend(sample_id(pid, tid, 1_100));
    records.push((ty::FORK, 0, f));
    let mut mmap = le(&[
        &pid.to_le_bytes(),
        &pid.to_le_bytes(),
        &0x5555_0000_0000u64.to_le_bytes(),
        &0x10_0000u64.to_le_bytes(),
        &0x1000u64.to_le_bytes(),
        &[8u8, 0, 0, 0],
        &0u32.to_le_bytes(),
        &4242u64.to_le_bytes(),
        &0u64.to_le_bytes(),
        &5u32.to_le_bytes(),
        &2u32.to_le_bytes(),
        b"/usr/bin/server\0",
    ]);
    mmap.extend(sample_id(pid, pid, 1_200));
    records.push((ty::MMAP2, 0, mmap.clone()));
    let mut with_build_id = mmap;
    with_build_id[32] = 20;
    records.push((ty::MMAP2, ty::MISC_MMAP_BUILD_ID, with_build_id));
    for (i, nr) in [0u64, 1, 232, 45].into_iter().enumerate() {
        let mut s = sample_head(1, pid, tid, 2_000 + i as u64);
        s.extend_from_slice(&24u32.to_le_bytes());
        s.extend_from_slice(&[0u8; 8]);
        s.extend_from_slice(&nr.to_le_bytes());
        s.extend_from_slice(&[0u8; 8]);
        records.push((ty::SAMPLE, 0, s));
    }
    let chain = [
        (-128i64) as u64,
        0xffff_ffff_8100_0000,
        (-512i64) as u64,
        0x5555_0000_1234,
        0x5555_0000_2345,
    ];
    for (i, id) in [3u64, 3, 4].into_iter().enumerate() {
        let mut s = sample_head(id, pid, tid, 3_000 + i as u64);
        s.extend_from_slice(&(chain.len() as u64).to_le_bytes());
        for a in chain {
            s.extend_from_slice(&a.to_le_bytes());
        }
        records.push((ty::SAMPLE, 0, s));
    }
    records.push((ty::SAMPLE, 0, sample_head(2, pid, tid, 3_500)));
    // sched:sched_waking: RAW is the trace record, `common_flags` at byte 2 (none, hard
    // interrupt, softirq) and the wakee at 24.
    for (i, flags) in [0u8, 0x08, 0x10].into_iter().enumerate() {
        let mut s = sample_head(5, pid, tid, 3_600 + i as u64);
        let mut raw = [0u8; 36];
        raw[2] = flags;
        raw[24..28].copy_from_slice(&pid.to_le_bytes());
        s.extend_from_slice(&36u32.to_le_bytes());
        s.extend_from_slice(&raw);
        records.push((ty::SAMPLE, 0, s));
    }
    records.push((ty::SWITCH, ty::MISC_SWITCH_OUT, sample_id(pid, tid, 4_000)));
    records.push((ty::SWITCH, 0, sample_id(pid, tid, 5_000)));
    records.push((
        ty::SWITCH,
        ty::MISC_SWITCH_OUT | (1 << 14),
        sample_id(pid, tid, 6_000),
    ));
    let mut lost = le(&[&7u64.to_le_bytes(), &3u64.to_le_bytes()]);
    lost.extend(sample_id(pid, tid, 6_500));
    records.push((ty::LOST, 0, lost));
    let mut exit = fork;
    exit[16..24].copy_from_slice(&7_000u64.to_le_bytes());
    exit.extend(sample_id(pid, tid, 7_000));
    records.push((ty::EXIT, 0, exit));

    let mut whole = Vec::new();
    for (ty, misc, data) in &records {
        let mut one = Vec::new();
        perf_record(&mut one, *ty, *misc, data);
        whole.extend_from_slice(&one);
        all.push(one);
    }
    all.push(whole);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds reach the decoders: they are real traces and well-formed wire streams.
    #[test]
    fn seeds_decode_cleanly() {
        let seeds = Seeds::committed();
        assert_eq!(seeds.files.len(), 3);
        for f in &seeds.files {
            let mut r = TraceReader::new(&f[..], Path::new("seed")).unwrap();
            assert!(r.by_ref().count() > 10);
            assert_eq!(r.stop(), None);
        }
        assert!(seeds.wire.len() > 2, "the tokio seed has span batches");
        for w in &seeds.wire {
            let mut rest = &w[16..];
            intake::decode_hello(w.first_chunk().unwrap()).unwrap();
            while !rest.is_empty() {
                let len = intake::frame_len(*rest.first_chunk().unwrap()).unwrap();
                intake::decode_frame(&rest[4..4 + len]).unwrap();
                rest = &rest[4 + len..];
            }
        }
        let produced = perf_fuzz::records(seeds.perf.last().unwrap());
        for want in [
            "Comm",
            "Fork",
            "Mmap",
            "StackDefs",
            "Samples",
            "Switches",
            "Lost",
            "Exit",
        ] {
            assert!(
                produced.iter().any(|r| format!("{r:?}").starts_with(want)),
                "the perf seed yields no {want}: {produced:?}"
            );
        }
    }
}
