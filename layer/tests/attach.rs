//! A program not started under `iotrace record` is attachable (WIRE.md, "Attaching"): `init()`
//! installs the layer with the global max level at OFF (a span costs what it costs with no
//! subscriber), the flusher looks for `<dir>/<pid>.sock` with a stat a few times a second,
//! connects when a recorder's socket appears, sends the hello and the callsites, records while
//! connected, goes back to looking when the recorder leaves, and connects again to the next one.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::level_filters::LevelFilter;

/// A stand-in recorder on `path`: keeps what the one connection it accepts sends, until it
/// is told to leave (the socket file is removed and the connection closed).
struct Recorder {
    path: PathBuf,
    received: Arc<Mutex<Vec<u8>>>,
    leave: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(path: &Path) -> Self {
        let listener = UnixListener::bind(path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let received = Arc::new(Mutex::new(Vec::new()));
        let leave = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, stop) = (Arc::clone(&received), Arc::clone(&leave));
        let thread = std::thread::spawn(move || {
            let mut conn = None;
            let mut buf = [0u8; 65536];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if conn.is_none() {
                    if let Ok((s, _)) = listener.accept() {
                        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                        conn = Some(s);
                    }
                }
                match conn
                    .as_mut()
                    .map(|s: &mut std::os::unix::net::UnixStream| s.read(&mut buf))
                {
                    Some(Ok(n @ 1..)) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Recorder {
            path: path.to_path_buf(),
            received,
            leave,
            thread: Some(thread),
        }
    }

    fn contains(&self, needle: &[u8]) -> bool {
        let got = self.received.lock().unwrap();
        got.windows(needle.len()).any(|w| w == needle)
    }

    fn leave(mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.leave.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn voluntary_switches_of(name: &str) -> u64 {
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name) {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            return status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
        }
    }
    panic!("no thread named {name}");
}

/// Records one span named `name` on a thread of its own (which hands its buffer off as it exits).
fn span_on_a_thread(name: &'static str) {
    std::thread::spawn(move || {
        let span = tracing::info_span!("attach_test", which = name);
        let _e = span.enter();
    })
    .join()
    .unwrap();
}

#[test]
fn a_recorder_can_attach_leave_and_attach_again() {
    std::env::remove_var(iotrace_layer::SOCKET_ENV);
    std::env::remove_var(iotrace_layer::ATTACH_ENV);
    let runtime = std::env::temp_dir().join(format!("iotrace-layer-attach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runtime);
    std::fs::create_dir_all(&runtime).unwrap();
    std::env::set_var("XDG_RUNTIME_DIR", &runtime);
    let dir = runtime.join("iotrace");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.join(format!("{}.sock", std::process::id()));

    iotrace_layer::init();
    assert!(
        tracing::dispatcher::has_been_set(),
        "init installs the dormant layer"
    );
    assert_eq!(
        LevelFilter::current(),
        LevelFilter::OFF,
        "detached: max level OFF"
    );
    assert!(tracing::info_span!("detached").is_disabled());

    // Detached, the flusher wakes once per look (200 ms) and no more.
    std::thread::sleep(Duration::from_millis(300));
    let before = voluntary_switches_of("iotrace-flush");
    std::thread::sleep(Duration::from_secs(1));
    let wakeups = voluntary_switches_of("iotrace-flush") - before;
    eprintln!("detached flusher: {wakeups} wakeups in one second");
    assert!(
        wakeups <= 10,
        "the detached flusher woke {wakeups} times in a second"
    );

    for round in ["first", "second"] {
        let rec = Recorder::start(&sock);
        wait_for("the layer to connect", 5, || rec.contains(b"IOTRSPAN"));
        wait_for("recording to turn on", 5, || {
            LevelFilter::current() != LevelFilter::OFF
        });
        span_on_a_thread(round);
        iotrace_layer::flush();
        // Every connection gets the callsite again, then the span's value.
        wait_for("the span", 5, || {
            rec.contains(b"attach_test") && rec.contains(round.as_bytes())
        });
        if round == "second" {
            assert!(
                !rec.contains(b"first"),
                "records of the first connection are not resent"
            );
        }
        rec.leave();
        wait_for("the layer to notice the recorder left", 5, || {
            LevelFilter::current() == LevelFilter::OFF
        });
        assert!(!iotrace_layer::layer().is_recording());
    }

    // A directory another user could enter is not trusted.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rec = Recorder::start(&sock);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !rec.contains(b"IOTRSPAN"),
        "connected through a directory of mode 0755"
    );
    rec.leave();
    assert_eq!(iotrace_layer::dropped_events(), 0);
    let _ = std::fs::remove_dir_all(&runtime);
}
