//! Tests of the span intake: the decoder against hand-written bytes (one test per clause of
//! `layer/WIRE.md` that a reader must enforce), misbehaving clients on a real socket, and round
//! trips from the real `iotrace-layer` in child processes (`tests/real_layer.rs`).

mod real_layer;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::wire::*;
use super::*;

/// A private directory (mode 0700, as the recorder makes it) removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "iotrace-intake-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        TempDir(p)
    }
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes records exactly as `WIRE.md` lays them out.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut w = self.u16(s.len() as u16);
        w.0.extend_from_slice(s.as_bytes());
        w
    }
}

fn hello(pid: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&pid.to_le_bytes());
    h
}

/// A whole frame: length prefix, header, records.
fn frame(pid: u32, tid: u32, dropped: u64, records: &[u8]) -> Vec<u8> {
    let body = W::default().u32(pid).u32(tid).u64(dropped).0;
    let mut f = ((body.len() + records.len()) as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f.extend_from_slice(records);
    f
}

fn enter(time: u64, span: u64) -> Vec<u8> {
    W::default().u8(3).u64(time).u64(span).0
}

/// One record of every kind, and what it decodes to.
fn every_record() -> (Vec<u8>, Vec<SpanEvent>) {
    let bytes = [
        W::default()
            .u8(1)
            .u64(77)
            .u8(0)
            .u8(2)
            .u32(12)
            .str("runtime.spawn")
            .str("tokio::task")
            .str("")
            .str("src/x.rs")
            .u8(2)
            .str("kind")
            .str("task.id")
            .0,
        W::default()
            .u8(2)
            .u64(10)
            .u64(5)
            .u64(0)
            .u64(77)
            .u8(2)
            .u8(0)
            .u8(5)
            .str("task")
            .u8(1)
            .u8(1)
            .u64(9)
            .0,
        enter(11, 5),
        W::default().u8(4).u64(12).u64(5).0,
        W::default()
            .u8(6)
            .u64(13)
            .u64(5)
            .u8(3)
            .u8(0)
            .u8(2)
            .u64((-4i64) as u64)
            .u8(1)
            .u8(3)
            .u8(1)
            .u8(2)
            .u8(4)
            .u64(2.5f64.to_bits())
            .0,
        W::default().u8(7).u64(14).u64(5).u64(4).0,
        W::default()
            .u8(8)
            .u64(15)
            .u64(5)
            .u64(78)
            .u8(1)
            .u8(1)
            .u8(6)
            .u64(5)
            .0,
        W::default()
            .u8(9)
            .u64(0xabc)
            .u8(2)
            .u64(0x1000)
            .u64(0x2000)
            .0,
        W::default()
            .u8(10)
            .u64(17)
            .u64(5)
            .u64(78)
            .u64(0xabc)
            .u8(1)
            .u8(1)
            .u8(6)
            .u64(5)
            .0,
        W::default().u8(5).u64(16).u64(5).0,
    ]
    .concat();
    let fv = |index, value| FieldValue { index, value };
    let events = vec![
        SpanEvent::Callsite(Callsite {
            id: 77,
            kind: CallsiteKind::Span,
            level: Level::Info,
            name: "runtime.spawn".into(),
            target: "tokio::task".into(),
            module: None,
            file: Some("src/x.rs".into()),
            line: Some(12),
            fields: vec!["kind".into(), "task.id".into()],
        }),
        SpanEvent::NewSpan {
            time: 10,
            span: 5,
            parent: None,
            callsite: 77,
            fields: vec![fv(0, Value::Str("task".into())), fv(1, Value::U64(9))],
        },
        SpanEvent::Enter { time: 11, span: 5 },
        SpanEvent::Exit { time: 12, span: 5 },
        SpanEvent::Record {
            time: 13,
            span: 5,
            fields: vec![
                fv(0, Value::I64(-4)),
                fv(1, Value::Bool(true)),
                fv(2, Value::F64(2.5)),
            ],
        },
        SpanEvent::FollowsFrom {
            time: 14,
            span: 5,
            follows: 4,
        },
        SpanEvent::Event {
            time: 15,
            span: Some(5),
            callsite: 78,
            fields: vec![fv(1, Value::Span(5))],
        },
        SpanEvent::Stack {
            id: 0xabc,
            frames: vec![0x1000, 0x2000],
        },
        SpanEvent::Event {
            time: 17,
            span: Some(5),
            callsite: 78,
            fields: vec![fv(1, Value::Span(5))],
        },
        SpanEvent::At {
            time: 17,
            stack: 0xabc,
        },
        SpanEvent::Close { time: 16, span: 5 },
    ];
    (bytes, events)
}

#[test]
fn every_record_kind_decodes_as_specified() {
    let (records, events) = every_record();
    let f = frame(42, 7, 3, &records);
    let batch = decode_frame(&f[4..]).expect("valid frame");
    assert_eq!(
        batch,
        SpanBatch {
            pid: 42,
            tid: 7,
            dropped_total: 3,
            events
        }
    );
}

#[test]
fn callsite_get_finds_fields_by_name() {
    let (records, events) = every_record();
    let _ = records;
    let (SpanEvent::Callsite(cs), SpanEvent::NewSpan { fields, .. }) = (&events[0], &events[1])
    else {
        unreachable!()
    };
    assert_eq!(cs.get(fields, "task.id"), Some(&Value::U64(9)));
    assert_eq!(cs.get(fields, "nope"), None);
}

#[test]
fn batches_round_trip_through_postcard() {
    let (records, _) = every_record();
    let f = frame(1, 2, 3, &records);
    let batch = decode_frame(&f[4..]).expect("valid frame");
    let bytes = postcard::to_stdvec(&batch).expect("serialize");
    let back: SpanBatch = postcard::from_bytes(&bytes).expect("deserialize");
    assert_eq!(back, batch);
}

#[test]
fn hello_with_bad_magic_or_unknown_version_is_rejected() {
    let good: [u8; 16] = hello(9).try_into().expect("16 bytes");
    assert_eq!(decode_hello(&good), Ok(9));
    let mut bad = good;
    bad[0] = b'X';
    assert!(matches!(decode_hello(&bad), Err(WireError::Magic(_))));
    let mut v1 = good;
    v1[8] = 1;
    assert_eq!(decode_hello(&v1), Ok(9), "version 1 is a subset of 2");
    let mut v3 = good;
    v3[8] = 3;
    assert_eq!(decode_hello(&v3), Err(WireError::Version(3)));
    let mut v0 = good;
    v0[8] = 0;
    assert_eq!(decode_hello(&v0), Err(WireError::Version(0)));
    let mut flags = good;
    flags[10] = 0xff;
    assert_eq!(decode_hello(&flags), Ok(9), "unknown flag bits are ignored");
}

#[test]
fn frame_length_outside_bounds_is_rejected() {
    for bad in [0u32, 15, (MAX_FRAME + 1) as u32, u32::MAX] {
        assert_eq!(
            frame_len(bad.to_le_bytes()),
            Err(WireError::FrameLength(bad))
        );
    }
    assert_eq!(frame_len(16u32.to_le_bytes()), Ok(16));
    assert_eq!(frame_len((MAX_FRAME as u32).to_le_bytes()), Ok(MAX_FRAME));
}

#[test]
fn unknown_tag_value_type_and_bad_utf8_are_rejected() {
    let f = frame(1, 1, 0, &[11]);
    assert_eq!(
        decode_frame(&f[4..]),
        Err(WireError::Tag { tag: 11, at: 16 })
    );
    // A STACK longer than the layer ever sends.
    let f = frame(1, 1, 0, &W::default().u8(9).u64(1).u8(65).0);
    assert!(matches!(
        decode_frame(&f[4..]),
        Err(WireError::Code {
            what: "stack length",
            code: 65,
            ..
        })
    ));
    let rec = W::default().u8(8).u64(1).u64(0).u64(1).u8(1).u8(0).u8(7).0;
    let f = frame(1, 1, 0, &rec);
    assert!(matches!(
        decode_frame(&f[4..]),
        Err(WireError::ValueType { ty: 7, .. })
    ));
    let mut rec = W::default()
        .u8(8)
        .u64(1)
        .u64(0)
        .u64(1)
        .u8(1)
        .u8(0)
        .u8(5)
        .u16(2)
        .0;
    rec.extend_from_slice(&[0xff, 0xfe]);
    let f = frame(1, 1, 0, &rec);
    assert!(matches!(decode_frame(&f[4..]), Err(WireError::Utf8(_))));
}

#[test]
fn every_truncation_of_a_frame_is_an_error_not_a_panic() {
    let (records, _) = every_record();
    let f = frame(1, 1, 0, &records);
    let payload = &f[4..];
    // Cutting at a record boundary leaves a valid, shorter frame; anywhere else is an error.
    let mut ok = 0;
    for cut in 0..payload.len() {
        if decode_frame(&payload[..cut]).is_ok() {
            ok += 1;
        }
    }
    assert_eq!(
        ok, 10,
        "the empty frame and the 9 record boundaries before the last"
    );
}

/// xorshift64*: deterministic bytes without a dependency.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_and_mutated_frames_never_panic_the_decoder() {
    let mut next = rng(0x1234_5678_9abc_def1);
    let (records, _) = every_record();
    let valid = frame(1, 1, 0, &records)[4..].to_vec();
    for round in 0..20_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            let len = (next() % 300) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut m = valid.clone();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % m.len();
                m[at] = next() as u8;
            }
            m
        };
        let _ = decode_frame(&bytes);
        if let Some(h) = bytes.first_chunk::<16>() {
            let _ = decode_hello(h);
        }
    }
}

fn connect(intake: &Intake) -> UnixStream {
    UnixStream::connect(intake.socket_path()).expect("connect to intake")
}

/// Waits until `cond(stats)` holds (or panics after 5 s), collecting batches meanwhile.
fn wait_for(intake: &Intake, got: &mut Vec<SpanBatch>, cond: impl Fn(&IntakeStats) -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(b) = intake.try_recv() {
            got.push(b);
        }
        let s = intake.stats();
        if cond(&s) {
            return;
        }
        assert!(Instant::now() < end, "timed out; stats: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True once the peer has closed the connection.
fn closed_by_peer(mut s: &UnixStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn garbage_client_is_dropped_and_a_good_client_still_works() {
    let dir = TempDir::new();
    let intake = start(dir.path()).expect("start");
    let mut got = Vec::new();

    let mut junk = connect(&intake);
    let mut next = rng(99);
    let noise: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
    let _ = junk.write_all(&noise);
    wait_for(&intake, &mut got, |s| s.bad_clients == 1);
    assert!(closed_by_peer(&junk));

    let mut good = connect(&intake);
    good.write_all(&hello(5)).expect("write");
    good.write_all(&frame(5, 6, 0, &enter(100, 1)))
        .expect("write");
    wait_for(&intake, &mut got, |s| s.frames == 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].events, vec![SpanEvent::Enter { time: 100, span: 1 }]);

    let (stats, _) = intake.shutdown();
    assert_eq!((stats.clients, stats.bad_clients, stats.events), (2, 1, 1));
    assert!(
        stats.warnings[0].contains("not an iotrace span stream"),
        "{:?}",
        stats.warnings
    );
    assert!(!dir.path().join(SOCKET_NAME).exists(), "socket removed");
}

#[test]
fn client_hanging_up_mid_frame_keeps_its_complete_frames() {
    let dir = TempDir::new();
    let intake = start(dir.path()).expect("start");
    let mut c = connect(&intake);
    c.write_all(&hello(8)).expect("write");
    c.write_all(&frame(8, 1, 0, &enter(1, 1))).expect("write");
    let second = frame(8, 1, 0, &enter(2, 2));
    c.write_all(&second[..second.len() - 5]).expect("write");
    drop(c);
    let mut got = Vec::new();
    wait_for(&intake, &mut got, |s| s.bad_clients == 1);
    let (stats, rest) = intake.shutdown();
    got.extend(rest);
    assert_eq!(got.len(), 1);
    assert!(
        stats.warnings[0].contains("pid 8") && stats.warnings[0].contains("mid-frame"),
        "{:?}",
        stats.warnings
    );
}

#[test]
fn absurd_length_prefix_is_rejected_at_once() {
    let dir = TempDir::new();
    let intake = start(dir.path()).expect("start");
    let mut c = connect(&intake);
    c.write_all(&hello(3)).expect("write");
    c.write_all(&u32::MAX.to_le_bytes()).expect("write");
    // No payload follows: the intake must not wait for (or allocate) 4 GiB.
    let mut got = Vec::new();
    wait_for(&intake, &mut got, |s| s.bad_clients == 1);
    assert!(closed_by_peer(&c));
    let stats = intake.stats();
    assert!(
        stats.warnings[0].contains("frame length 4294967295"),
        "{stats:?}"
    );
}

#[test]
fn wrong_version_and_foreign_pid_are_rejected() {
    let dir = TempDir::new();
    let intake = start(dir.path()).expect("start");
    let mut v3 = hello(4);
    v3[8] = 3;
    connect(&intake).write_all(&v3).expect("write");
    let mut c = connect(&intake);
    c.write_all(&hello(4)).expect("write");
    c.write_all(&frame(5, 1, 0, &enter(1, 1))).expect("write");
    let mut got = Vec::new();
    wait_for(&intake, &mut got, |s| s.bad_clients == 2);
    let w = intake.stats().warnings.join("\n");
    assert!(w.contains("version 3"), "{w}");
    assert!(w.contains("frame from pid 5"), "{w}");
    assert!(got.is_empty());
}

#[test]
fn dropped_counts_sum_the_latest_report_of_each_client() {
    let dir = TempDir::new();
    let intake = start(dir.path()).expect("start");
    let mut a = connect(&intake);
    let mut b = connect(&intake);
    a.write_all(&hello(1)).expect("write");
    b.write_all(&hello(2)).expect("write");
    a.write_all(&frame(1, 0, 3, &[])).expect("write");
    a.write_all(&frame(1, 0, 5, &[])).expect("write");
    b.write_all(&frame(2, 0, 7, &[])).expect("write");
    drop(a);
    let mut got = Vec::new();
    wait_for(&intake, &mut got, |s| s.frames == 3);
    let (stats, _) = intake.shutdown();
    assert_eq!(stats.dropped_by_programs, 12);
    assert_eq!(stats.bad_clients, 0, "{:?}", stats.warnings);
}

#[test]
fn shutdown_returns_what_clients_already_sent() {
    let dir = TempDir::new();
    let intake = start(dir.path()).expect("start");
    let mut c = connect(&intake);
    c.write_all(&hello(11)).expect("write");
    for i in 0..50 {
        c.write_all(&frame(11, 1, 0, &enter(i, 1))).expect("write");
    }
    let t = Instant::now();
    let (stats, rest) = intake.shutdown();
    assert!(t.elapsed() < Duration::from_secs(1), "bounded wait");
    assert_eq!(rest.len(), 50);
    assert_eq!(stats.frames, 50);
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    drop(c);
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new();
    drop(std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET_NAME)).expect("bind"));
    let intake = start(dir.path()).expect("start over a stale socket");
    let mut c = connect(&intake);
    c.write_all(&hello(1)).expect("write");
    c.write_all(&frame(1, 1, 0, &enter(1, 1))).expect("write");
    let mut got = Vec::new();
    wait_for(&intake, &mut got, |s| s.frames == 1);
}

/// A frame of `n` Enter records (17 bytes each) from pid 1, thread 2.
fn big_frame(n: usize) -> Vec<u8> {
    let records: Vec<u8> = (0..n as u64).flat_map(|i| enter(i, 1)).collect();
    frame(1, 2, 0, &records)
}

/// Writes `bytes` without blocking until the peer has taken nothing for ~1 s; returns how
/// much it took.
fn write_until_stalled(s: &mut UnixStream, bytes: &[u8]) -> usize {
    s.set_nonblocking(true).unwrap();
    let mut written = 0;
    let mut idle = 0;
    while written < bytes.len() && idle < 100 {
        match s.write(&bytes[written..]) {
            Ok(n) => {
                written += n;
                idle = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                idle += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    written
}

/// Regression: the queue to the main loop was bounded at 4096 batches whatever their size,
/// so a client flooding 4 MiB frames while the main loop was busy made the intake hold
/// gigabytes of decoded events. Now it stops reading at QUEUE_BYTES of queued frames.
#[test]
fn flood_of_large_frames_stops_at_the_queue_byte_bound() {
    let dir = TempDir::new();
    let intake = start(dir.path()).unwrap();
    let mut s = connect(&intake);
    s.write_all(&hello(1)).unwrap();
    let one = big_frame((MAX_FRAME - 16) / 17);
    let flood: Vec<u8> = one.iter().copied().cycle().take(one.len() * 16).collect();
    // Nobody drains the intake: it must stop taking bytes soon after QUEUE_BYTES.
    let taken = write_until_stalled(&mut s, &flood);
    let bound = QUEUE_BYTES + 2 * one.len() + (4 << 20);
    assert!(
        taken < bound,
        "took {taken} bytes with nobody draining (bound {bound})"
    );
    // Draining lets it go on: everything written arrives.
    let mut got = Vec::new();
    let frames_written = taken / one.len();
    wait_for(&intake, &mut got, |st| st.frames as usize >= frames_written);
    let (stats, rest) = intake.shutdown();
    assert!(stats.frames as usize >= frames_written, "{stats:?}");
    assert_eq!(stats.bad_clients, 0, "{stats:?}");
    drop(rest);
}

/// Many clients that each announce a large frame and send most of it, then stall, are
/// read only up to the intake's budget for incomplete frames; a small-frame client still
/// gets through meanwhile.
#[test]
fn stalled_half_frames_are_held_within_the_budget() {
    let dir = TempDir::new();
    let intake = start(dir.path()).unwrap();
    let one = big_frame((MAX_FRAME - 16) / 17);
    let half = &one[..one.len() - 1000];
    let mut taken = 0;
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut s = connect(&intake);
        s.write_all(&hello(1)).unwrap();
        taken += write_until_stalled(&mut s, half);
        stalled.push(s);
    }
    // 40 × 4 MiB were offered; the intake holds about its budget (plus socket buffers).
    let bound = (64 << 20) + 40 * (512 << 10) + 2 * MAX_FRAME;
    assert!(taken < bound, "took {taken} bytes (bound {bound})");
    let mut good = connect(&intake);
    good.write_all(&hello(1)).unwrap();
    good.write_all(&frame(1, 3, 0, &enter(5, 6))).unwrap();
    let mut got = Vec::new();
    wait_for(&intake, &mut got, |st| st.frames >= 1);
    assert!(
        got.iter().any(|b| b.tid == 3),
        "the small client got through"
    );
    drop(stalled);
    let (stats, _) = intake.shutdown();
    assert_eq!(stats.frames, 1, "{stats:?}");
}
