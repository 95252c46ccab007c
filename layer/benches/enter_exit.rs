//! Cost of entering and exiting an existing span: with no subscriber, with a bare registry, and
//! with the iotrace layer recording to a Unix socket whose reader discards everything.
//! Criterion reports each as time per enter+exit pair; a summary line prints the same in ns.
//! The layer caches span ids per thread until any span closes; `iotrace_after_close` pays a
//! close of another span before each pair, so (after_close - close_only) is the uncached pair.
//!
//! The `waker_event` group is the cost of one tokio `waker.clone` event (what a leaf future
//! storing a task's waker raises) with the layer's yield sites on (the event plus a walk of the
//! frame pointers, about 20 frames deep here) and off (`with_yield_sites(false)`: the event is
//! skipped, as before yield sites).
//!
//! `cargo bench -p iotrace-layer --bench enter_exit -- --quick`

use std::hint::black_box;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tracing::{Dispatch, Span};
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

/// Creates and closes a span: with the layer, this invalidates every cached span id.
fn close_one(dispatch: &Dispatch) {
    tracing::dispatcher::with_default(dispatch, || drop(black_box(tracing::info_span!("other"))));
}

/// What tokio's waker vtable raises when a future clones a task's waker.
#[inline(never)]
fn waker_clone() {
    tracing::trace!(target: "tokio::task::waker", op = "waker.clone", task.id = 1u64);
}

/// `waker_clone` under `depth` more frames, as a leaf future sits under a task's futures.
#[inline(never)]
fn nested(depth: u32) {
    if depth == 0 {
        waker_clone();
    } else {
        nested(black_box(depth - 1));
    }
}

fn ns_per(mut f: impl FnMut()) -> f64 {
    const N: u32 = 2_000_000;
    let t = Instant::now();
    for _ in 0..N {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(N)
}

fn main() {
    let path = discarding_reader();
    std::env::set_var(iotrace_layer::SOCKET_ENV, &path);

    let none = tracing::info_span!("bench");
    let registry = Dispatch::new(tracing_subscriber::registry());
    let registry = tracing::dispatcher::with_default(&registry, || tracing::info_span!("bench"));
    let layer = iotrace_layer::layer();
    assert!(
        layer.is_recording(),
        "the layer connected to the bench socket"
    );
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    let iotrace = tracing::dispatcher::with_default(&dispatch, || tracing::info_span!("bench"));
    let no_yield = Dispatch::new(
        tracing_subscriber::registry().with(iotrace_layer::layer().with_yield_sites(false)),
    );
    let waker = |d: &Dispatch| tracing::dispatcher::with_default(d, || nested(black_box(16)));

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("enter_exit");
        g.bench_function("no_subscriber", |b| b.iter(|| pair(&none)));
        g.bench_function("registry_only", |b| b.iter(|| pair(&registry)));
        g.bench_function("iotrace", |b| b.iter(|| pair(&iotrace)));
        g.bench_function("iotrace_close_only", |b| b.iter(|| close_one(&dispatch)));
        g.bench_function("iotrace_after_close", |b| {
            b.iter(|| {
                close_one(&dispatch);
                pair(&iotrace)
            })
        });
        g.finish();
        let mut g = c.benchmark_group("waker_event");
        g.bench_function("yield_sites_on", |b| b.iter(|| waker(&dispatch)));
        g.bench_function("yield_sites_off", |b| b.iter(|| waker(&no_yield)));
        g.finish();
    }
    c.final_summary();

    let n = ns_per(|| pair(&none));
    let r = ns_per(|| pair(&registry));
    let i = ns_per(|| pair(&iotrace));
    let closes = ns_per(|| close_one(&dispatch));
    let miss = ns_per(|| {
        close_one(&dispatch);
        pair(&iotrace)
    });
    let on = ns_per(|| waker(&dispatch));
    let off = ns_per(|| waker(&no_yield));
    iotrace_layer::flush();
    println!(
        "waker.clone event ns: yield sites on {on:.1}, off {off:.1} (the stack costs {:.1})",
        on - off
    );
    println!(
        "enter+exit ns/pair: no subscriber {n:.1}, registry {r:.1}, registry+iotrace {i:.1} \
         (layer adds {:.1}); uncached pair after a close {:.1}; records dropped by the layer: {}",
        i - r,
        miss - closes,
        iotrace_layer::dropped_events()
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
}
