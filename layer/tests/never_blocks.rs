//! A recorder that accepts but never reads must not slow the program down to its pace: the
//! layer drops whole buffers and counts them instead of waiting.

mod common;

use std::os::unix::net::UnixListener;
use std::time::Duration;

#[test]
fn a_stalled_recorder_costs_drops_not_waiting() {
    let dir = std::env::temp_dir().join(format!("iotrace-layer-stall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("spans.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::env::set_var(iotrace_layer::SOCKET_ENV, &path);
    iotrace_layer::init();
    let (_conn, _) = listener.accept().expect("layer connects at init");

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let span = tracing::info_span!("hot");
        for _ in 0..2_000_000 {
            let _e = span.enter();
        }
        let _ = done_tx.send(());
    });
    // ~136 MB of records against a socket nobody reads: finishing at all proves no blocking.
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the program was blocked by a recorder that does not read");
    assert!(iotrace_layer::dropped_events() > 0);
    let _ = std::fs::remove_dir_all(&dir);
}
