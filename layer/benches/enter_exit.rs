//! Cost of entering and exiting an existing span: with no subscriber, with a bare registry, and
//! with the iotrace layer recording to a Unix socket whose reader discards everything.
//! Criterion reports each as time per enter+exit pair; a summary line prints the same in ns.
//!
//! `cargo bench -p iotrace-layer --bench enter_exit -- --quick`

use std::hint::black_box;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tracing::Span;
use tracing_subscriber::layer::SubscriberExt;

/// A stand-in recorder that reads and discards; returns the socket path.
fn discarding_reader() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("iotrace-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("spans.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok((mut s, _)) = listener.accept() {
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    path
}

fn pair(span: &Span) {
    let _entered = black_box(span).enter();
}

fn ns_per_pair(span: &Span) -> f64 {
    const N: u32 = 5_000_000;
    let t = Instant::now();
    for _ in 0..N {
        pair(span);
    }
    t.elapsed().as_nanos() as f64 / f64::from(N)
}

fn main() {
    let path = discarding_reader();
    std::env::set_var(iotrace_layer::SOCKET_ENV, &path);

    let none = tracing::info_span!("bench");
    let registry = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        tracing::info_span!("bench")
    });
    let layer = iotrace_layer::layer();
    assert!(
        layer.is_recording(),
        "the layer connected to the bench socket"
    );
    let iotrace =
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::info_span!("bench")
        });

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("enter_exit");
        g.bench_function("no_subscriber", |b| b.iter(|| pair(&none)));
        g.bench_function("registry_only", |b| b.iter(|| pair(&registry)));
        g.bench_function("iotrace_layer", |b| b.iter(|| pair(&iotrace)));
        g.finish();
    }
    c.final_summary();

    let (n, r, i) = (
        ns_per_pair(&none),
        ns_per_pair(&registry),
        ns_per_pair(&iotrace),
    );
    iotrace_layer::flush();
    println!(
        "enter+exit ns/pair: no subscriber {n:.1}, registry {r:.1}, registry+iotrace {i:.1} \
         (layer adds {:.1}); records dropped by the layer: {}",
        i - r,
        iotrace_layer::dropped_events()
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
}
