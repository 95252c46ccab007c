//! Cost of tracing in a program that installed the layer with `init()` but was not started
//! under `iotrace record` and has no recorder attached (WIRE.md, "Attaching"), against the
//! same program before `init()` (no subscriber at all): a span created, entered and exited,
//! an event, and an enter+exit pair of an existing span. The layer holds the global max level
//! at OFF while detached, so each should cost the same as with no subscriber.
//!
//! `cargo bench -p iotrace-layer --bench detached`

use std::hint::black_box;
use std::time::Instant;

fn ns_per(mut f: impl FnMut()) -> f64 {
    const N: u32 = 20_000_000;
    // Best of five, against the noise of a shared machine.
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..N {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(N)
        })
        .fold(f64::INFINITY, f64::min)
}

fn figures() -> (f64, f64, f64) {
    let existing = tracing::info_span!("bench");
    let create = ns_per(|| {
        let span = tracing::info_span!("bench", n = 1u64);
        let _e = black_box(&span).enter();
    });
    let event = ns_per(|| tracing::info!(n = 1u64, "bench"));
    let pair = ns_per(|| {
        let _e = black_box(&existing).enter();
    });
    (create, event, pair)
}

fn main() {
    std::env::remove_var(iotrace_layer::SOCKET_ENV);
    std::env::remove_var(iotrace_layer::ATTACH_ENV);
    let (c0, e0, p0) = figures();
    iotrace_layer::init();
    assert!(
        tracing::dispatcher::has_been_set(),
        "init installed the attachable layer"
    );
    let (c1, e1, p1) = figures();
    println!(
        "ns per operation, no subscriber -> attachable layer with no recorder attached: \
         span create+enter+exit {c0:.2} -> {c1:.2}, event {e0:.2} -> {e1:.2}, \
         enter+exit of an existing span {p0:.2} -> {p1:.2}"
    );
}
