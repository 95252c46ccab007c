//! Who woke whom: the `sched:sched_waking` events that follow the recorded threads, and the
//! parse of their raw records into a wakee and interrupt flags.

use std::io;
use std::os::fd::AsRawFd;

use perf_event::events::Tracepoint;
use perf_event::{Builder, Counter, SampleFlag};

use super::{sampled_base, syscount, tracepoint_id, u32_at, Ring, Start, SAMPLE_BODY};
use crate::sys;
use iotrace_trace::Wakeup;

/// The `sched:sched_waking` events (one per CPU into that CPU's ring, following the recorded
/// threads as the other samplers do) and where the wakee's tid is in their raw payload.
///
/// They are per task, not whole-CPU events behind a BPF filter: a BPF program on a
/// tracepoint is the tracepoint's, run for every perf event on it, so a filter would also
/// filter other tools' and other recordings' `sched_waking` events (and theirs ours). Per
/// task, the kernel writes the wakeups that recorded threads perform (a mutex unlock, a
/// write to a pipe or socket, an interrupt that ran while one was current): the edge that
/// names who released a lock. Wakeups of recorded threads by other processes or by an idle
/// CPU's interrupt are not seen.
pub(super) struct WakeupEvents {
    pub(super) ids: Vec<u64>,
    pub(super) wakee_offset: usize,
    /// The tracepoint's id, for the threads an attached recording follows later.
    pub(super) tp: u64,
}

/// Open [`WakeupEvents`] into the rings, or say why not (a sentence ending that starts
/// "who woke whom (wakeups) is missing: ").
pub(super) fn open_wakeups(
    rings: &mut [Ring],
    pid: libc::pid_t,
    kernel: bool,
    start: Start,
) -> Result<WakeupEvents, String> {
    if !kernel {
        return Err("the sched:sched_waking tracepoint is in the kernel, which this user may not trace; run as root".to_owned());
    }
    let tp = tracepoint_id("sched", "sched_waking")
        .map_err(|e| format!("the sched:sched_waking tracepoint is not available ({e})"))?;
    // The wakee's `pid`, after the common fields and `comm[16]` (24 on today's kernels).
    let wakee_offset = syscount::tracepoint_field_offset("sched_waking", " pid;")
        .and_then(|o| usize::try_from(o).ok())
        .unwrap_or(24);
    let mut ids = Vec::new();
    let mut events = Vec::new();
    for ring in rings.iter() {
        let c = wakeup_event(tp, pid, ring, kernel, start).map_err(|e| {
            format!("the sched:sched_waking events could not be opened ({e}); run as root")
        })?;
        ids.push(c.id());
        events.push(c);
    }
    for (ring, c) in rings.iter_mut().zip(events) {
        ring._followers.push(c);
    }
    Ok(WakeupEvents {
        ids,
        wakee_offset,
        tp,
    })
}

/// One CPU's `sched:sched_waking` event on `pid` (and its children), into that CPU's ring.
pub(super) fn wakeup_event(
    tp: u64,
    pid: libc::pid_t,
    ring: &Ring,
    kernel: bool,
    start: Start,
) -> io::Result<Counter> {
    let mut b = Builder::new(Tracepoint::with_id(tp));
    sampled_base(&mut b, pid, ring.cpu as usize, kernel, start);
    b.sample(SampleFlag::RAW).sample_period(1);
    let c = b.build()?;
    sys::perf_set_output(c.as_raw_fd(), ring.sampler.as_raw_fd())?;
    Ok(c)
}

/// `common_flags` bits of a trace record (include/linux/trace_events.h).
const TRACE_FLAG_HARDIRQ: u8 = 0x08;
const TRACE_FLAG_SOFTIRQ: u8 = 0x10;

/// RAW of a `sched:sched_waking` sample: u32 size, then the trace record, whose byte 2 is
/// `common_flags` and whose `pid` (the wakee) is at `wakee_offset`. Returns the wakee and the
/// [`Wakeup`] flags; `None` when the record is too short to hold them.
pub(super) fn parse_wakeup(d: &[u8], wakee_offset: usize) -> Option<(u32, u8)> {
    let size = u32_at(d, SAMPLE_BODY) as usize;
    let payload = d.get(SAMPLE_BODY + 4..)?;
    let payload = payload.get(..size.min(payload.len()))?;
    let common_flags = *payload.get(2)?;
    let wakee = payload.get(wakee_offset..wakee_offset.checked_add(4)?)?;
    let mut flags = 0;
    if common_flags & TRACE_FLAG_HARDIRQ != 0 {
        flags |= Wakeup::HARDIRQ;
    }
    if common_flags & TRACE_FLAG_SOFTIRQ != 0 {
        flags |= Wakeup::SOFTIRQ;
    }
    Some((u32_at(wakee, 0), flags))
}

#[cfg(test)]
mod tests {
    use super::super::{fuzz, RECORD_SAMPLE};
    use super::*;
    use iotrace_trace::Record;

    /// A `sched:sched_waking` sample as the kernel writes it: the fixed part, then RAW.
    fn waking_sample(common_flags: u8, wakee: u32, raw_size: u32) -> Vec<u8> {
        let mut d = vec![0u8; SAMPLE_BODY + 4 + 40];
        d[0..8].copy_from_slice(&9u64.to_le_bytes());
        d[8..12].copy_from_slice(&100u32.to_le_bytes());
        d[12..16].copy_from_slice(&101u32.to_le_bytes());
        d[32..36].copy_from_slice(&raw_size.to_le_bytes());
        let raw = &mut d[36..];
        raw[2] = common_flags;
        raw[4..8].copy_from_slice(&101u32.to_le_bytes());
        raw[24..28].copy_from_slice(&wakee.to_le_bytes());
        d
    }

    #[test]
    fn waking_sample_yields_wakee_and_interrupt_flags() {
        let d = waking_sample(0x01 | 0x80, 555, 36);
        assert_eq!(
            parse_wakeup(&d, 24),
            Some((555, 0)),
            "irqs-off and bh-off are not interrupts"
        );
        let d = waking_sample(TRACE_FLAG_HARDIRQ, 7, 36);
        assert_eq!(parse_wakeup(&d, 24), Some((7, Wakeup::HARDIRQ)));
        let d = waking_sample(TRACE_FLAG_SOFTIRQ, 7, 36);
        assert_eq!(parse_wakeup(&d, 24), Some((7, Wakeup::SOFTIRQ)));
        // A RAW size that cuts the record before the wakee's field: nothing.
        let d = waking_sample(0, 7, 26);
        assert_eq!(parse_wakeup(&d, 24), None);
        // One that claims more than the record holds is cut to what is there.
        let d = waking_sample(0, 8, 4000);
        assert_eq!(parse_wakeup(&d, 24), Some((8, 0)));
    }

    #[test]
    fn waking_samples_become_their_cpus_wakeups_with_deltas() {
        // Two samples of the wakeup event (id 5 in `fuzz::records`), 250 ns apart.
        let mut input = Vec::new();
        for (time, flags, wakee) in [(1_000u64, 0u8, 7u32), (1_250, TRACE_FLAG_SOFTIRQ, 8)] {
            let mut d = waking_sample(flags, wakee, 36);
            d[0..8].copy_from_slice(&5u64.to_le_bytes());
            d[16..24].copy_from_slice(&time.to_le_bytes());
            input.extend_from_slice(&RECORD_SAMPLE.to_le_bytes());
            input.extend_from_slice(&0u16.to_le_bytes());
            input.extend_from_slice(&(d.len() as u16).to_le_bytes());
            input.extend_from_slice(&d);
        }
        let records = fuzz::records(&input);
        let w = records
            .iter()
            .find_map(|r| match r {
                Record::Wakeups(w) => Some(w),
                _ => None,
            })
            .expect("a Wakeups record");
        assert_eq!((w.cpu, w.base_ns), (0, 1_000));
        let got: Vec<_> = w
            .wakeups
            .iter()
            .map(|x| (x.delta_ns, x.waker_pid, x.waker_tid, x.wakee_tid, x.flags))
            .collect();
        assert_eq!(
            got,
            [(0, 100, 101, 7, 0), (250, 100, 101, 8, Wakeup::SOFTIRQ)]
        );
    }
}
