//! A fuzz entry point into the perf record parsers (`iotrace-fuzz`'s `perf_records` target):
//! bytes laid out as ring records go through the same parsing, callchain interning and
//! per-CPU batching as [`super::PerfSession::drain`], without a kernel ring. Not an API.

use super::*;

/// Records are `ty:u32le misc:u16le len:u16le data:len` (a perf_event_header without its
/// size field's meaning: `len` counts only `data`), one after another; a header or data cut
/// short ends the input. Sample ids 1, 2, 3 and 4 stand for the syscall tracepoint, the
/// page-fault event, cpu-clock and switch-out stacks. Returns the trace records produced.
#[doc(hidden)]
pub fn records(input: &[u8]) -> Vec<Record> {
    let mut produced = Vec::new();
    let mut out = |r: Record| {
        produced.push(r);
        Ok(())
    };
    let mut stacks = StackInterner::default();
    let mut samples = SampleBatch::new(0);
    let mut last_syscall: HashMap<u32, u16> = HashMap::default();
    let mut syscalls: HashMap<(u32, u16), u64> = HashMap::default();
    let mut lost = 0u64;
    let mut chain_buf = Vec::new();
    let mut switches = Switches::default();
    let mut last_time = 0u64;
    let mut rest = input;
    while rest.len() >= 8 {
        let ty = u32_at(rest, 0);
        let misc = u16::from_le_bytes([rest[4], rest[5]]);
        let len = usize::from(u16::from_le_bytes([rest[6], rest[7]]));
        let Some(data) = rest.get(8..8 + len) else {
            break;
        };
        rest = &rest[8 + len..];
        match ty {
            RECORD_SAMPLE => {
                let Some(s) = parse_sample(data) else {
                    continue;
                };
                match s.id % 5 {
                    1 => {
                        let nr = parse_raw_syscall(data).unwrap_or(u16::MAX);
                        *syscalls.entry((s.tid, nr)).or_insert(0) += 1;
                        last_syscall.insert(s.tid, nr);
                    }
                    2 => {}
                    3 => {
                        let chain = parse_callchain(data, &mut chain_buf);
                        let stack = stacks.intern(s.pid, chain);
                        samples.push(s.time, s.tid, stack, None);
                    }
                    4 => {
                        let chain = parse_callchain(data, &mut chain_buf);
                        samples.hold(s.pid, s.tid, s.time, chain);
                    }
                    _ => {}
                }
            }
            RECORD_SWITCH => {
                let Some(id) = parse_sample_id(data) else {
                    continue;
                };
                let mut flags = 0;
                let mut syscall = Switch::NO_SYSCALL;
                if misc & MISC_SWITCH_OUT != 0 {
                    flags |= Switch::OUT;
                    if misc & MISC_SWITCH_OUT_PREEMPT != 0 {
                        flags |= Switch::PREEMPT;
                    } else if let Some(&nr) = last_syscall.get(&id.tid) {
                        syscall = nr;
                    }
                    samples.switched_out(
                        id.tid,
                        flags & Switch::PREEMPT == 0,
                        syscall,
                        &mut stacks,
                    );
                }
                if switches.switches.is_empty() {
                    switches.base_ns = id.time;
                    last_time = id.time;
                }
                switches.switches.push(Switch {
                    delta_ns: id.time.wrapping_sub(last_time),
                    pid: id.pid,
                    tid: id.tid,
                    flags,
                    syscall,
                });
                last_time = id.time;
            }
            _ => {
                if !switches.switches.is_empty() {
                    let _ = out(Record::Switches(std::mem::take(&mut switches)));
                }
                let _ = flush_samples(&mut samples, &mut stacks, &mut out);
                let mut state = OtherState {
                    stacks: &mut stacks,
                    last_syscall: &mut last_syscall,
                    lost: &mut lost,
                };
                let _ = other_record(&mut state, ty, misc, data, 0, &mut out);
            }
        }
    }
    if !switches.switches.is_empty() {
        let _ = out(Record::Switches(switches));
    }
    let _ = flush_samples(&mut samples, &mut stacks, &mut out);
    if !syscalls.is_empty() {
        let mut counts = ThreadCounts {
            syscalls: syscalls.drain().map(|((t, n), c)| (t, n, c)).collect(),
            ..ThreadCounts::default()
        };
        counts.syscalls.sort_unstable();
        let _ = out(Record::ThreadCounts(counts));
    }
    produced
}

/// Perf record type numbers, for building inputs.
#[doc(hidden)]
pub mod ty {
    pub const LOST: u32 = super::RECORD_LOST;
    pub const COMM: u32 = super::RECORD_COMM;
    pub const EXIT: u32 = super::RECORD_EXIT;
    pub const FORK: u32 = super::RECORD_FORK;
    pub const SAMPLE: u32 = super::RECORD_SAMPLE;
    pub const MMAP2: u32 = super::RECORD_MMAP2;
    pub const SWITCH: u32 = super::RECORD_SWITCH;
    pub const MISC_SWITCH_OUT: u16 = super::MISC_SWITCH_OUT;
    pub const MISC_COMM_EXEC: u16 = super::MISC_COMM_EXEC;
    pub const MISC_MMAP_BUILD_ID: u16 = super::MISC_MMAP_BUILD_ID;
}
