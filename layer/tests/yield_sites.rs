//! Yield sites on the wire (WIRE.md, "Stacks"): tokio's `waker.clone` and `waker.wake` events
//! come as EVENT_AT records naming a STACK that each thread defines once, with the frames its
//! frame pointers give; `waker.drop` comes as a plain EVENT unless waker drops are off; with
//! yield sites and waker drops off, waker events are plain EVENTs and `waker.clone` is left
//! out too.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use iotrace_wire::SpanEvent;
use tracing_subscriber::layer::SubscriberExt;

/// What tokio's waker vtable raises (`runtime/task/waker.rs`), from one call site per op.
#[inline(never)]
fn waker_ops(rounds: u32) {
    for _ in 0..rounds {
        tracing::trace!(target: "tokio::task::waker", op = "waker.clone", task.id = 1u64);
        tracing::trace!(target: "tokio::task::waker", op = "waker.drop", task.id = 1u64);
        tracing::trace!(target: "tokio::task::waker", op = "waker.wake", task.id = 1u64);
    }
}

/// (EVENTs, of which with a stack, STACK definitions) sent by thread `tid`, and the frames
/// of its stacks.
fn of_thread(w: &common::Walk, tid: u32) -> (usize, usize, usize, Vec<Vec<u64>>) {
    let (mut events, mut at, mut defs) = (0, 0, 0);
    let mut stacks: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut used = Vec::new();
    for b in w.batches.iter().filter(|b| b.tid == tid) {
        for e in &b.events {
            match e {
                SpanEvent::Event { .. } => events += 1,
                SpanEvent::At { stack, .. } => {
                    at += 1;
                    used.push(*stack);
                }
                SpanEvent::Stack { id, frames } => {
                    defs += 1;
                    stacks.insert(*id, frames.clone());
                }
                _ => {}
            }
        }
    }
    for id in &used {
        assert!(
            stacks.contains_key(id),
            "stack {id:x} used before it was defined"
        );
    }
    (events, at, defs, stacks.into_values().collect())
}

#[test]
fn waker_events_carry_stacks_defined_once_per_thread_and_the_switch_turns_them_off() {
    let (path, rx) = common::listener("yield");
    std::env::set_var(iotrace_layer::SOCKET_ENV, &path);
    let on =
        tracing_subscriber::registry().with(iotrace_layer::layer().with_waker_refcounts(false));
    let on_tid = std::thread::spawn(move || {
        tracing::subscriber::with_default(on, || waker_ops(20));
        // SAFETY: gettid takes no arguments.
        unsafe { libc::gettid() as u32 }
    })
    .join()
    .expect("thread");
    let off = tracing_subscriber::registry().with(
        iotrace_layer::layer()
            .with_yield_sites(false)
            .with_waker_refcounts(false),
    );
    let off_tid = std::thread::spawn(move || {
        tracing::subscriber::with_default(off, || waker_ops(20));
        // SAFETY: as above.
        unsafe { libc::gettid() as u32 }
    })
    .join()
    .expect("thread");
    // The default: drops too (the analysis counts live wakers with them), without stacks.
    let default = tracing_subscriber::registry().with(iotrace_layer::layer());
    let default_tid = std::thread::spawn(move || {
        tracing::subscriber::with_default(default, || waker_ops(20));
        // SAFETY: as above.
        unsafe { libc::gettid() as u32 }
    })
    .join()
    .expect("thread");
    iotrace_layer::flush();
    assert_eq!(iotrace_layer::dropped_events(), 0);
    let bytes = rx.recv_timeout(Duration::from_secs(10)).expect("stream");
    let w = common::walk(&bytes);

    let (events, at, defs, stacks) = of_thread(&w, on_tid);
    assert_eq!(events, 40, "20 clones and 20 wakes; drops left out");
    assert_eq!(at, 40, "each with its stack");
    assert_eq!(defs, 2, "one stack per call site, defined once");
    for frames in &stacks {
        // This test is built with frame pointers (.cargo/config.toml): the walk reaches past
        // tracing's dispatch into the test's own frames.
        assert!(frames.len() >= 5, "{} frames: {frames:x?}", frames.len());
    }
    let (events, at, defs, _) = of_thread(&w, off_tid);
    assert_eq!((events, at, defs), (20, 0, 0), "off: wakes only, no stacks");
    let (events, at, _, _) = of_thread(&w, default_tid);
    assert_eq!(
        (events, at),
        (60, 40),
        "default: drops too, without a stack"
    );
}
