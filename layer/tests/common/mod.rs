//! Shared by the layer's integration tests: a listener that stands in for the recorder, and a
//! minimal walker that checks a received stream is well-formed per `WIRE.md` (the full decoder
//! lives in `iotrace-collector`'s intake, which tests the round trip).

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};

/// Binds a socket in a fresh temp dir and returns its path and a receiver of everything the
/// first client sends (delivered when it disconnects or after `read_for` of silence).
pub fn listener(tag: &str) -> (PathBuf, Receiver<Vec<u8>>) {
    let dir = std::env::temp_dir().join(format!("iotrace-layer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("spans.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(300)));
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(all);
    });
    (path, rx)
}

#[derive(Debug, Default)]
pub struct Walk {
    pub pid: u32,
    pub frames: usize,
    pub tids: Vec<u32>,
    pub dropped: u64,
    /// Record tags in order of arrival.
    pub tags: Vec<u8>,
    pub callsite_names: Vec<String>,
    /// (tid, tag, span) of NEW_SPAN, ENTER, EXIT and CLOSE records, in arrival order.
    pub span_records: Vec<(u32, u8, u64)>,
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.0.len() >= n, "record runs past its frame");
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn str(&mut self) -> String {
        let n = self.u16() as usize;
        String::from_utf8(self.take(n).to_vec()).expect("UTF-8")
    }
    fn fields(&mut self) {
        for _ in 0..self.u8() {
            self.u8();
            match self.u8() {
                1 | 2 | 4 | 6 => {
                    self.u64();
                }
                3 => {
                    self.u8();
                }
                5 => {
                    self.str();
                }
                t => panic!("unknown value type {t}"),
            }
        }
    }
}

/// Walks a whole stream, panicking at the first violation of the spec.
pub fn walk(stream: &[u8]) -> Walk {
    let mut r = R(stream);
    assert_eq!(r.take(8), b"IOTRSPAN");
    assert_eq!(r.u16(), 1, "version");
    r.u16();
    let mut w = Walk {
        pid: r.u32(),
        ..Walk::default()
    };
    while !r.0.is_empty() {
        let len = r.u32() as usize;
        assert!((16..=4 << 20).contains(&len), "frame length {len}");
        let mut f = R(r.take(len));
        assert_eq!(f.u32(), w.pid, "frame pid");
        let tid = f.u32();
        let dropped = f.u64();
        assert!(dropped >= w.dropped, "dropped count never decreases");
        w.dropped = dropped;
        w.frames += 1;
        if !w.tids.contains(&tid) {
            w.tids.push(tid);
        }
        while !f.0.is_empty() {
            let tag = f.u8();
            w.tags.push(tag);
            match tag {
                1 => {
                    assert_eq!(tid, 0, "callsites travel in thread-less frames");
                    f.u64();
                    assert!(f.u8() <= 1);
                    assert!(f.u8() <= 4);
                    f.u32();
                    w.callsite_names.push(f.str());
                    for _ in 0..3 {
                        f.str();
                    }
                    for _ in 0..f.u8() {
                        f.str();
                    }
                }
                2 => {
                    f.u64();
                    w.span_records.push((tid, tag, f.u64()));
                    f.take(16);
                    f.fields();
                }
                3..=5 => {
                    f.u64();
                    w.span_records.push((tid, tag, f.u64()));
                }
                6 => {
                    f.take(16);
                    f.fields();
                }
                7 => {
                    f.take(24);
                }
                8 => {
                    f.take(24);
                    f.fields();
                }
                t => panic!("unknown tag {t}"),
            }
        }
    }
    w
}
