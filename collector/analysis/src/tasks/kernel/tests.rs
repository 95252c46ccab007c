//! Unit tests of the kernel view: states, counters and the order of CPUs' records.

use super::*;

struct NoSink;
impl Sink for NoSink {}

fn sw(k: &mut Kernel, t: u64, tid: u32, flags: u8, syscall: u16) {
    k.switches(&iotrace_trace::Switches {
        cpu: 0,
        base_ns: t,
        switches: vec![Switch {
            delta_ns: 0,
            pid: 1,
            tid,
            flags,
            syscall,
        }],
    });
}

#[test]
fn states_and_cumulative_counters() {
    let mut k = Kernel::new(100);
    k.fork(0, 1, 7);
    sw(&mut k, 10, 7, 0, Switch::NO_SYSCALL); // in: runnable 0..10
    sw(&mut k, 30, 7, Switch::OUT, 230); // out: running 10..30, blocked from 30
    sw(&mut k, 530, 7, 0, Switch::NO_SYSCALL); // in: blocked 30..530 (long)
    sw(
        &mut k,
        560,
        7,
        Switch::OUT | Switch::PREEMPT,
        Switch::NO_SYSCALL,
    ); // runnable from 560
    sw(&mut k, 570, 7, 0, Switch::NO_SYSCALL);
    k.watermark = u64::MAX;
    k.release(&mut NoSink);
    let t = &k.threads[&7].totals;
    assert_eq!((t.on_cpu_ns, t.runnable_ns, t.blocked_ns), (50, 20, 500));
    assert_eq!(t.blocked[&230], (500, 1));
    let a = k.cum_at(7, 20).unwrap();
    let b = k.cum_at(7, 600).unwrap();
    let d = b.since(&a);
    assert_eq!(d.running, 10 + 30 + 30);
    assert_eq!(d.blocked_long, 500);
    assert_eq!(d.long_stretches, 1);
    assert_eq!(d.runnable, 10);
    let mut seen = Vec::new();
    k.long_blocked(7, 20, 600, |s, _, ns| seen.push((s, ns)));
    assert_eq!(seen, [(230, 500)]);
    // A window that sees only the end of the long stretch gets only that end.
    assert_eq!(k.long_blocked_within(7, 20, 600), 500);
    assert_eq!(k.long_blocked_within(7, 400, 600), 130);
    assert_eq!(k.long_blocked_within(7, 100, 200), 100);
    assert_eq!(k.long_blocked_within(7, 540, 600), 0);
    let whole_end = k.cum_at(7, 600).unwrap().since(&k.cum_at(7, 400).unwrap());
    assert_eq!(
        whole_end.blocked_long, 500,
        "what cum_at differences say instead"
    );
}

#[test]
fn switches_of_two_cpus_are_merged_in_time_order() {
    let mut k = Kernel::new(100);
    // CPU 1's batch arrives first although its switch-in comes after CPU 0's switch-out.
    sw(&mut k, 50, 7, 0, Switch::NO_SYSCALL);
    sw(&mut k, 20, 7, Switch::OUT, 0);
    k.marker(10);
    k.marker(60);
    k.marker(70);
    k.release(&mut NoSink);
    assert!(!k.threads.contains_key(&7), "released before the watermark");
    k.marker(80);
    k.release(&mut NoSink);
    assert_eq!(k.threads[&7].totals.blocked_ns, 30);
    assert_eq!(k.anomalies, 0);
}
