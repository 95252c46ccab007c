//! The layer against a stand-in recorder: spans and events on two threads arrive as a
//! well-formed stream (hello, frames with this pid, callsites once, every record accounted for).

mod common;

use std::time::Duration;

#[test]
fn spans_on_two_threads_arrive_well_formed() {
    let (path, rx) = common::listener("socket");
    std::env::set_var(iotrace_layer::SOCKET_ENV, &path);
    iotrace_layer::init();
    assert!(
        tracing::dispatcher::has_been_set(),
        "init installed the layer"
    );

    let work = |n: u64| {
        for i in 0..n {
            let span = tracing::info_span!("work", i, who = "x");
            let _e = span.enter();
            tracing::debug!(i, "step");
        }
    };
    let t = std::thread::spawn(move || work(100));
    work(50);
    t.join().expect("thread");
    iotrace_layer::flush();
    assert_eq!(iotrace_layer::dropped_events(), 0);

    // The test process keeps its connection; the listener delivers after 300 ms of silence.
    let bytes = rx.recv_timeout(Duration::from_secs(10)).expect("stream");
    let w = common::walk(&bytes);
    assert_eq!(w.pid, std::process::id());
    let count = |tag| w.tags.iter().filter(|&&t| t == tag).count();
    assert_eq!(count(2), 150, "new spans");
    assert_eq!((count(3), count(4), count(5)), (150, 150, 150));
    assert_eq!(count(8), 150, "events");
    assert_eq!(
        w.callsite_names.iter().filter(|n| *n == "work").count(),
        1,
        "each callsite defined once"
    );
    let threads: Vec<_> = w.tids.iter().filter(|&&t| t != 0).collect();
    assert_eq!(threads.len(), 2, "{:?}", w.tids);
    // On each thread, every enter/exit/close names a span created before and not yet closed
    // (the per-thread id cache must never hand out a stale id).
    let mut live = std::collections::HashSet::new();
    for &(tid, tag, span) in &w.span_records {
        match tag {
            2 => assert!(live.insert((tid, span)), "span id {span} reused"),
            3 | 4 => assert!(
                live.contains(&(tid, span)),
                "enter/exit of a dead span {span}"
            ),
            _ => assert!(live.remove(&(tid, span)), "close of a dead span {span}"),
        }
    }
    assert!(live.is_empty());
    // The first frame defines the callsites that follow it.
    assert_eq!(w.tags.first(), Some(&1));
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
