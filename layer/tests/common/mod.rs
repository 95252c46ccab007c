//! Shared by the layer's integration tests: a listener that stands in for the recorder, and a
//! walker that checks a received stream is well-formed per `WIRE.md` with the recorder's own
//! decoder (`iotrace-wire`).

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};

use iotrace_wire::{decode_frame, decode_hello, frame_len, SpanEvent, HELLO_LEN};

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
    /// Every decoded frame.
    pub batches: Vec<iotrace_wire::SpanBatch>,
}

/// Walks a whole stream with the recorder's own decoder (`iotrace-wire`), panicking at the
/// first violation of the spec.
pub fn walk(stream: &[u8]) -> Walk {
    assert!(stream.len() >= HELLO_LEN, "no hello");
    let (hello, mut rest) = stream.split_at(HELLO_LEN);
    let mut w = Walk {
        pid: decode_hello(hello.try_into().unwrap()).expect("hello"),
        ..Walk::default()
    };
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "a frame's length prefix is cut");
        let len = frame_len(rest[..4].try_into().unwrap()).expect("frame length");
        assert!(rest.len() >= 4 + len, "frame runs past the stream");
        let batch = decode_frame(&rest[4..4 + len]).expect("frame");
        rest = &rest[4 + len..];
        assert_eq!(batch.pid, w.pid, "frame pid");
        assert!(
            batch.dropped_total >= w.dropped,
            "dropped count never decreases"
        );
        w.dropped = batch.dropped_total;
        w.frames += 1;
        if !w.tids.contains(&batch.tid) {
            w.tids.push(batch.tid);
        }
        for e in &batch.events {
            let tag = e.tag();
            w.tags.push(tag);
            match e {
                SpanEvent::Callsite(c) => {
                    assert_eq!(batch.tid, 0, "callsites travel in thread-less frames");
                    w.callsite_names.push(c.name.clone());
                }
                SpanEvent::NewSpan { span, .. }
                | SpanEvent::Enter { span, .. }
                | SpanEvent::Exit { span, .. }
                | SpanEvent::Close { span, .. } => w.span_records.push((batch.tid, tag, *span)),
                _ => {}
            }
        }
        w.batches.push(batch);
    }
    w
}
