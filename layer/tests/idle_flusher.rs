//! An idle program's flusher sleeps: it used to poll its queue every 5 ms (≈ 200 wakeups a
//! second, half of an idle program's off-CPU graph); now it parks until something is queued,
//! and a span recorded afterwards still arrives.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A stand-in recorder that keeps everything it receives; returns the socket path.
fn recorder() -> (std::path::PathBuf, Arc<Mutex<Vec<u8>>>) {
    let dir = std::env::temp_dir().join(format!("iotrace-layer-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("spans.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 65536];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    (path, received)
}

fn contains(bytes: &Mutex<Vec<u8>>, needle: &[u8]) -> bool {
    bytes
        .lock()
        .unwrap()
        .windows(needle.len())
        .any(|w| w == needle)
}

/// The tid of this process's thread named `name`, from /proc/self/task/*/comm.
fn thread_named(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// The thread's `voluntary_ctxt_switches`: one per time it blocked, i.e. per wakeup.
fn voluntary_switches(tid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("thread status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in status")
}

#[test]
fn an_idle_flusher_does_not_poll() {
    let (path, received) = recorder();
    std::env::set_var(iotrace_layer::SOCKET_ENV, &path);
    iotrace_layer::init();
    {
        let span = tracing::info_span!("before");
        let _e = span.enter();
    }
    iotrace_layer::flush();
    let flusher = thread_named("iotrace-flush").expect("the layer runs an iotrace-flush thread");

    // Give it time to fall asleep (it polls a few times after the last buffer), then watch it
    // for one second with nothing to send.
    std::thread::sleep(Duration::from_millis(200));
    let before = voluntary_switches(flusher);
    std::thread::sleep(Duration::from_secs(1));
    let wakeups = voluntary_switches(flusher) - before;
    eprintln!("idle flusher: {wakeups} wakeups in one second");
    // Polling every 5 ms would be ≈ 200; the sleeping flusher wakes about once (its safety
    // net), plus any wakeup the test harness causes.
    assert!(
        wakeups < 50,
        "the idle flusher woke {wakeups} times in one second"
    );

    // Asleep, it still takes what comes: a thread that records a span and exits hands its
    // buffer off, which wakes the flusher (no flush asked for).
    std::thread::spawn(|| {
        let span = tracing::info_span!("span_recorded_while_the_flusher_slept");
        let _e = span.enter();
    })
    .join()
    .expect("thread");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !contains(&received, b"span_recorded_while_the_flusher_slept") {
        assert!(
            Instant::now() < deadline,
            "the span recorded while the flusher slept never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(iotrace_layer::dropped_events(), 0);
}
