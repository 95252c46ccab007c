//! One test per clause of `FORMAT.md` (the stack clauses, which need the fold, are in
//! `collector/analysis/tests/stack_clauses.rs`).

use iotrace_trace::build::read_all;
use iotrace_trace::*;

/// The trace of FORMAT.md's example: a header, a comm, one switch out and in, the end.
fn sample_trace() -> Vec<u8> {
    let mut t = iotrace_trace::build::TraceBuilder::new(42);
    t.records[0] = Record::Header(Header {
        iotrace_version: "0".into(),
        command: vec!["true".into()],
        pid: 42,
        start_ns: 1_000,
        start_unix_ns: 2_000,
        hostname: "h".into(),
        cpus: 2,
    });
    t.push(Record::Comm(Comm {
        pid: 42,
        tid: 42,
        time_ns: 1_100,
        name: "true".into(),
        exec: true,
    }))
    .push(Record::Switches(Switches {
        cpu: 1,
        base_ns: 1_200,
        switches: vec![
            Switch {
                delta_ns: 0,
                pid: 42,
                tid: 42,
                flags: Switch::OUT,
                syscall: 35,
            },
            Switch {
                delta_ns: 50,
                pid: 42,
                tid: 42,
                flags: 0,
                syscall: Switch::NO_SYSCALL,
            },
        ],
    }))
    .push(Record::End(End {
        time_ns: 2_000,
        exit: ExitStatus::Code(0),
        rusage: Rusage::default(),
        forwarded_signal: None,
        peak_threads: 1,
    }));
    t.to_bytes()
}

#[test]
fn round_trip() {
    let (records, stop) = read_all(&sample_trace()).unwrap();
    assert_eq!(records.len(), 4);
    assert!(stop.is_none());
    assert!(matches!(&records[0], Record::Header(h) if h.pid == 42));
    assert!(matches!(&records[2], Record::Switches(s) if s.switches[0].syscall == 35));
}

#[test]
fn bad_magic() {
    let mut bytes = sample_trace();
    bytes[0] = b'X';
    assert!(matches!(read_all(&bytes), Err(FormatError::NotATrace(_))));
    assert!(matches!(read_all(b"hello"), Err(FormatError::NotATrace(_))));
    assert!(matches!(
        read_all(b"{\"json\": true}"),
        Err(FormatError::NotATrace(_))
    ));
}

#[test]
fn short_header() {
    let bytes = sample_trace();
    for len in 0..16 {
        assert!(
            read_all(&bytes[..len]).is_err(),
            "header of {len} bytes accepted"
        );
    }
}

#[test]
fn newer_version() {
    let mut bytes = sample_trace();
    bytes[8] = 99;
    let err = read_all(&bytes).expect_err("newer version rejected");
    assert!(err.to_string().contains("99"), "{err}");
    bytes[8] = 0;
    assert!(matches!(read_all(&bytes), Err(FormatError::NotATrace(_))));
}

#[test]
fn truncated() {
    let bytes = sample_trace();
    let (whole, _) = read_all(&bytes).unwrap();
    // Every cut inside the frames yields the complete frames before it and says Truncated.
    for cut in 17..bytes.len() {
        let (records, stop) = read_all(&bytes[..cut]).unwrap();
        assert!(records.len() < whole.len());
        assert_eq!(records[..], whole[..records.len()], "cut at {cut}");
        match stop {
            Some(Stop::Truncated { offset }) => assert!(offset <= cut as u64),
            // A cut exactly on a frame boundary is a clean end with a missing End record.
            None => assert!(!records.iter().any(|r| matches!(r, Record::End(_)))),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn bad_length() {
    let mut bytes = sample_trace();
    bytes[16..20].copy_from_slice(&(MAX_FRAME + 1).to_le_bytes());
    let (records, stop) = read_all(&bytes).unwrap();
    assert!(records.is_empty());
    assert!(matches!(stop, Some(Stop::Corrupt { offset: 16, .. })));
    bytes[16..20].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        read_all(&bytes).unwrap().1,
        Some(Stop::Corrupt { .. })
    ));
}

#[test]
fn bad_crc() {
    let mut bytes = sample_trace();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let (records, stop) = read_all(&bytes).unwrap();
    assert_eq!(records.len(), 3);
    assert!(matches!(stop, Some(Stop::Corrupt { ref reason, .. }) if reason.contains("checksum")));
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(payload);
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    f.extend_from_slice(&body);
    f
}

#[test]
fn undecodable() {
    let mut bytes = sample_trace()[..16].to_vec();
    bytes.extend(frame(1, &[0xff; 40]));
    let (records, stop) = read_all(&bytes).unwrap();
    assert!(records.is_empty());
    assert!(matches!(stop, Some(Stop::Corrupt { .. })));
}

#[test]
fn unknown_kind() {
    let whole = sample_trace();
    let mut bytes = whole[..16].to_vec();
    bytes.extend(frame(100, b"from the future"));
    bytes.extend_from_slice(&whole[16..]);
    let (records, stop) = read_all(&bytes).unwrap();
    assert!(stop.is_none());
    assert_eq!(records[0], Record::Unknown(100));
    assert_eq!(records.len(), 5);
}

#[test]
fn no_input_panics() {
    // Flip every byte of a real trace in turn, and feed pseudo-random garbage after a valid header.
    let bytes = sample_trace();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] = b[i].wrapping_add(0x5a);
        if let Ok((_, _)) = read_all(&b) {}
    }
    let mut seed = 7u64;
    for _ in 0..200 {
        let mut b = bytes[..16].to_vec();
        for _ in 0..256 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            b.push((seed >> 56) as u8);
        }
        let _ = read_all(&b);
        // A valid frame header around garbage exercises the decoders themselves.
        for kind in 1..=kind::WAKEUPS {
            let mut f = bytes[..16].to_vec();
            f.extend(frame(kind, &b[16..]));
            let _ = read_all(&f);
        }
    }
}

fn switches(n: usize) -> Record {
    Record::Switches(Switches {
        cpu: 0,
        base_ns: 5,
        switches: (0..n)
            .map(|i| Switch {
                delta_ns: 1000,
                pid: 7,
                tid: 7 + (i % 3) as u32,
                flags: Switch::OUT,
                syscall: 7,
            })
            .collect(),
    })
}

#[test]
fn compressed() {
    let dir = std::env::temp_dir().join(format!("iotrace-format-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.data");
    let mut w = TraceWriter::create(&path).unwrap();
    let big = switches(2000);
    w.write(&big).unwrap();
    let bytes_written = w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, bytes_written);
    assert_ne!(
        bytes[24] & COMPRESSED,
        0,
        "a large repetitive record is stored compressed"
    );
    assert!(
        bytes.len() < 2000 * 4,
        "{} bytes for 2000 switches",
        bytes.len()
    );
    let (records, stop) = read_all(&bytes).unwrap();
    assert!(stop.is_none());
    assert_eq!(records, vec![big]);

    // A compressed frame whose payload is not zstd stops reading with Corrupt.
    let mut bad = bytes[..16].to_vec();
    bad.extend(frame(kind::SWITCHES | COMPRESSED, b"not zstd at all"));
    assert!(matches!(
        read_all(&bad).unwrap().1,
        Some(Stop::Corrupt { .. })
    ));
    // One that inflates past 16 MiB is refused too.
    let bomb = zstd::bulk::compress(&vec![0u8; (MAX_FRAME as usize) + 1024], 3).unwrap();
    let mut bad = bytes[..16].to_vec();
    bad.extend(frame(kind::SWITCHES | COMPRESSED, &bomb));
    assert!(matches!(
        read_all(&bad).unwrap().1,
        Some(Stop::Corrupt { .. })
    ));
}

#[test]
fn wakeups() {
    // Two wakeups on CPU 1, 300 ns apart: a thread of process 42 woke 44, then the idle task
    // (in a hard interrupt) woke 43.
    let mut t = iotrace_trace::build::TraceBuilder::new(42);
    t.wakeups(
        1,
        &[(1_000, 42, 43, 44, 0), (1_300, 0, 0, 43, Wakeup::HARDIRQ)],
    )
    .end(2_000);
    let (records, stop) = read_all(&t.to_bytes()).unwrap();
    assert!(stop.is_none());
    let Record::Wakeups(w) = &records[1] else {
        panic!("{:?}", records[1]);
    };
    assert_eq!((w.cpu, w.base_ns, w.wakeups.len()), (1, 1_000, 2));
    let mut time = w.base_ns;
    let times: Vec<u64> = w
        .wakeups
        .iter()
        .map(|x| {
            time = time.wrapping_add(x.delta_ns);
            time
        })
        .collect();
    assert_eq!(times, [1_000, 1_300]);
    assert_eq!(
        (
            w.wakeups[0].waker_pid,
            w.wakeups[0].waker_tid,
            w.wakeups[0].wakee_tid
        ),
        (42, 43, 44)
    );
    assert_eq!(w.wakeups[1].waker_tid, 0, "the idle task is 0/0");

    // A large batch is stored compressed and reads back the same.
    let big = Record::Wakeups(Wakeups {
        cpu: 0,
        base_ns: 5,
        wakeups: (0..2000)
            .map(|i| Wakeup {
                delta_ns: 2_000 + i % 7,
                waker_pid: 7,
                waker_tid: 7 + (i % 2) as u32,
                wakee_tid: 8 - (i % 2) as u32,
                flags: 0,
            })
            .collect(),
    });
    let mut t = iotrace_trace::build::TraceBuilder::new(7);
    t.push(big.clone());
    let (records, _) = read_all(&t.to_bytes()).unwrap();
    assert_eq!(records[1], big);
}

#[test]
fn wakeup_waker() {
    assert_eq!((Wakeup::HARDIRQ, Wakeup::SOFTIRQ), (1, 2));
    let w = |flags| Wakeup {
        delta_ns: 0,
        waker_pid: 42,
        waker_tid: 42,
        wakee_tid: 43,
        flags,
    };
    assert!(!w(0).by_interrupt(), "a thread's own wakeup");
    assert!(w(Wakeup::HARDIRQ).by_interrupt());
    assert!(w(Wakeup::SOFTIRQ).by_interrupt());
}

#[test]
fn wakeup_meaning() {
    // The clause is about what the recorder keeps; here: a reader pairs a wakeup with the
    // wakee's switches of another CPU by time. Thread 43 blocks at 1000 on CPU 0, is woken by
    // 42 at 1500 on CPU 1 and runs at 1600 on CPU 0: blocked 500 ns, runnable 100 ns.
    let mut t = iotrace_trace::build::TraceBuilder::new(42);
    t.switches(
        0,
        42,
        43,
        &[(1_000, true, false, 202), (1_600, false, false, 0)],
    )
    .wakeups(1, &[(1_500, 42, 42, 43, 0)])
    .end(2_000);
    let (records, _) = read_all(&t.to_bytes()).unwrap();
    let mut events: Vec<(u64, &str)> = Vec::new();
    for r in &records {
        match r {
            Record::Switches(s) => {
                let mut time = s.base_ns;
                for x in &s.switches {
                    time = time.wrapping_add(x.delta_ns);
                    events.push((time, if x.is_out() { "out" } else { "in" }));
                }
            }
            Record::Wakeups(w) => {
                let mut time = w.base_ns;
                for x in &w.wakeups {
                    time = time.wrapping_add(x.delta_ns);
                    if x.wakee_tid == 43 {
                        events.push((time, "woken"));
                    }
                }
            }
            _ => {}
        }
    }
    events.sort();
    assert_eq!(
        events,
        [(1_000, "out"), (1_500, "woken"), (1_600, "in")],
        "blocked from the switch-out to the wakeup, runnable from there to the switch-in"
    );
}
