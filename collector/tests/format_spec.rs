//! One test per clause of `src/format/FORMAT.md`.

use std::io::Cursor;
use std::path::Path;

use iotrace_collector::format::*;

fn sample_trace() -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("iotrace-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("t{}.data", rand_suffix()));
    let mut w = TraceWriter::create(&path).unwrap();
    w.write(&Record::Header(Header {
        iotrace_version: "0".into(),
        command: vec!["true".into()],
        pid: 42,
        start_ns: 1_000,
        start_unix_ns: 2_000,
        hostname: "h".into(),
        cpus: 2,
    }))
    .unwrap();
    w.write(&Record::Comm(Comm {
        pid: 42,
        tid: 42,
        time_ns: 1_100,
        name: "true".into(),
        exec: true,
    }))
    .unwrap();
    w.write(&Record::Switches(Switches {
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
    .unwrap();
    w.write(&Record::End(End {
        time_ns: 2_000,
        exit: ExitStatus::Code(0),
        rusage: Rusage::default(),
        forwarded_signal: None,
        peak_threads: 1,
    }))
    .unwrap();
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    bytes
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn read_all(bytes: &[u8]) -> Result<(Vec<Record>, Option<Stop>), FormatError> {
    let mut r = TraceReader::new(Cursor::new(bytes.to_vec()), Path::new("test"))?;
    let records: Vec<Record> = r.by_ref().collect();
    Ok((records, r.stop().cloned()))
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
        for kind in 1..=kind::SAMPLES {
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

// Stack samples (kinds 14–17).

use iotrace_collector::stacks::{StackFold, StackItem};

fn node(parent: u32, addr: u64) -> StackNode {
    StackNode { parent, addr }
}

fn samples(base_ns: u64, list: &[(u64, u32, u32, Option<u16>)]) -> Record {
    Record::Samples(Samples {
        cpu: 0,
        base_ns,
        samples: list
            .iter()
            .map(|&(delta_ns, tid, stack, off_cpu)| StackSample {
                delta_ns,
                tid,
                stack,
                off_cpu,
            })
            .collect(),
    })
}

fn fold(records: &[Record]) -> (StackFold, Vec<StackItem>) {
    let mut f = StackFold::new(false);
    let mut items = Vec::new();
    for r in records {
        f.add(r, &mut |_, i| items.push(i));
    }
    f.finish(&mut |_, i| items.push(i));
    (f, items)
}

fn frames(f: &StackFold, leaf: u32) -> Vec<u64> {
    f.stacks
        .walk(leaf)
        .map(|n| f.stacks.frame(n).unwrap().0)
        .collect()
}

#[test]
fn stack_records_round_trip() {
    let records = vec![
        Record::Sampling(Sampling {
            frequency_hz: 999,
            off_cpu: true,
            kernel_stacks: true,
            boot_id: "b".into(),
            kernel_release: "6.1".into(),
        }),
        Record::Mmap(Mmap {
            pid: 42,
            tid: 42,
            time_ns: 5,
            addr: 0x5000,
            len: 0x1000,
            pgoff: 0x2000,
            ino: 7,
            build_id: vec![],
            filename: "/bin/true".into(),
        }),
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x5010)],
        }),
        samples(1_000, &[(0, 42, 2, None), (10, 42, 2, Some(35))]),
    ];
    let dir = std::env::temp_dir().join(format!("iotrace-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("stacks{}.data", rand_suffix()));
    let mut w = TraceWriter::create(&path).unwrap();
    for r in &records {
        w.write(r).unwrap();
    }
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let (read, stop) = read_all(&bytes).unwrap();
    assert!(stop.is_none());
    assert_eq!(read, records);
}

#[test]
fn stack_nodes() {
    // Numbered in file order across records; a root is not a frame; frames share prefixes.
    let (f, _) = fold(&[
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1000), node(2, 0x2000)],
        }),
        Record::StackDefs(StackDefs {
            nodes: vec![node(2, 0x3000), node(4, 0xffff_ffff_8100_0000)],
        }),
    ]);
    assert_eq!(frames(&f, 3), vec![0x2000, 0x1000]);
    assert_eq!(frames(&f, 5), vec![0xffff_ffff_8100_0000, 0x3000, 0x1000]);
    assert!(frames(&f, 1).is_empty());
}

#[test]
fn stack_defs_first() {
    // A sample is read against the nodes defined before it: here, node 2 exists.
    let (f, items) = fold(&[
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1000)],
        }),
        samples(1_000, &[(0, 42, 2, None)]),
    ]);
    assert_eq!(items.len(), 1);
    assert_eq!(frames(&f, items[0].stack), vec![0x1000]);
}

#[test]
fn address_spaces() {
    let mmap = |addr: u64, file: &str| {
        Record::Mmap(Mmap {
            pid: 42,
            tid: 42,
            time_ns: 0,
            addr,
            len: 0x1000,
            pgoff: 0,
            ino: 0,
            build_id: vec![],
            filename: file.into(),
        })
    };
    let exec = Record::Comm(Comm {
        pid: 42,
        tid: 42,
        time_ns: 0,
        name: "b".into(),
        exec: true,
    });
    let (f, _) = fold(&[
        mmap(0x1000, "/bin/a"),
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1010)],
        }),
        exec,
        mmap(0x1000, "/bin/b"),
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(3, 0x1010)],
        }),
        Record::Fork(Fork {
            pid: 43,
            ppid: 42,
            tid: 43,
            ptid: 42,
            time_ns: 0,
        }),
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 43), node(5, 0x1010)],
        }),
    ]);
    let file = |n: u32| {
        let (addr, space) = f.stacks.frame(n).unwrap();
        f.spaces.lookup(space, addr).unwrap().filename.clone()
    };
    assert_eq!(file(2), "/bin/a", "before the exec");
    assert_eq!(file(4), "/bin/b", "after the exec");
    assert_eq!(
        file(6),
        "/bin/b",
        "a forked child sees its parent's mappings"
    );
}

#[test]
fn samples_delta() {
    let (_, items) = fold(&[
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1000)],
        }),
        samples(
            1_000,
            &[(5, 42, 2, None), (20, 42, 2, None), (0, 42, 2, None)],
        ),
    ]);
    let times: Vec<u64> = items.iter().map(|i| i.time_ns).collect();
    assert_eq!(times, vec![1_005, 1_025, 1_025]);
}

#[test]
fn off_cpu() {
    let switches = Record::Switches(Switches {
        cpu: 1,
        base_ns: 1_500,
        switches: vec![
            Switch {
                delta_ns: 0,
                pid: 42,
                tid: 42,
                flags: Switch::OUT,
                syscall: 230,
            },
            Switch {
                delta_ns: 8_500,
                pid: 42,
                tid: 42,
                flags: 0,
                syscall: Switch::NO_SYSCALL,
            },
        ],
    });
    let (_, items) = fold(&[
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1000)],
        }),
        samples(1_000, &[(0, 42, 2, None), (500, 42, 2, Some(230))]),
        switches,
    ]);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].off_cpu, None);
    let off = items[1].off_cpu.expect("an off-CPU item");
    assert_eq!(
        (items[1].time_ns, off.duration_ns, off.syscall),
        (1_500, 8_500, 230)
    );
}

#[test]
fn undefined_stack() {
    let (f, items) = fold(&[
        Record::StackDefs(StackDefs {
            // Node 2's parent (5) is never defined before it: the stack ends there.
            nodes: vec![node(0, 42), node(5, 0x1000)],
        }),
        samples(1_000, &[(0, 42, 99, None), (0, 42, 2, None)]),
    ]);
    assert_eq!(f.stats.undefined_stacks, 1);
    assert_eq!(items.len(), 1);
    assert_eq!(frames(&f, 2), vec![0x1000]);
}
