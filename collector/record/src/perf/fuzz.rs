//! A fuzz entry point into the perf record parsers (`iotrace-fuzz`'s `perf_records` target):
//! bytes laid out as ring records go through the same parsing, callchain interning and
//! per-CPU batching as [`super::PerfSession::drain`] (the same functions), without a kernel ring. Not an API.

use super::*;

/// Records are `ty:u32le misc:u16le len:u16le data:len` (a perf_event_header without its
/// size field's meaning: `len` counts only `data`), one after another; a header or data cut
/// short ends the input. Sample ids 1, 2, 3, 4 and 5 stand for the syscall tracepoint, the
/// page-fault event, cpu-clock and switch-out stacks, and `sched:sched_waking` (its wakee at
/// offset 24 of RAW). Returns the trace records produced.
#[doc(hidden)]
pub fn records(input: &[u8]) -> Vec<Record> {
    let mut produced = Vec::new();
    let mut out = |r: Record| {
        produced.push(r);
        Ok(())
    };
    let mut stacks = StackInterner::default();
    let mut cpu = CpuBatches::new(0);
    let mut last_syscall: HashMap<u32, u16> = HashMap::default();
    let mut syscalls: HashMap<(u32, u16), u64> = HashMap::default();
    let mut faults: HashMap<u32, u64> = HashMap::default();
    let mut lost = 0u64;
    let mut chain_buf = Vec::new();
    // Inputs of odd length name switch-outs' syscalls from kernel stacks, as recordings with
    // the in-kernel counter do; even ones from the last syscall sample.
    let mut kallsyms = (input.len() % 2 == 1).then(|| {
        kallsyms::Lazy::Ready(kallsyms::SyscallSymbols::parse(
            "ffffffff81000000 T __x64_sys_read\nffffffff81001000 T ksys_write\nffffffff81002000 T other\n",
        ))
    });
    let mut unwind = super::Unwinding::new(super::CallGraph::dwarf(Some(64)));
    let mut rest = input;
    while rest.len() >= 8 {
        let ty = u32_at(rest, 0);
        let misc = u16::from_le_bytes([rest[4], rest[5]]);
        let len = usize::from(u16::from_le_bytes([rest[6], rest[7]]));
        let Some(data) = rest.get(8..8 + len) else {
            break;
        };
        rest = &rest[8 + len..];
        // The record after it, as the drain peeks at it.
        let next = (rest.len() >= 8)
            .then(|| {
                let n = usize::from(u16::from_le_bytes([rest[6], rest[7]]));
                let d = rest.get(8..8 + n)?;
                Some((u32_at(rest, 0), u16::from_le_bytes([rest[4], rest[5]]), d))
            })
            .flatten();
        let mut st = RecordState {
            syscall_ids: &[1],
            fault_ids: &[2],
            clock_ids: &[3],
            switch_ids: &[4],
            wakeup_ids: &[5],
            wakee_offset: 24,
            stacks: &mut stacks,
            chain_buf: &mut chain_buf,
            unwind: Some(&mut unwind),
            syscalls: &mut syscalls,
            faults: &mut faults,
            last_syscall: &mut last_syscall,
            lost: &mut lost,
            counted: None,
            kallsyms: kallsyms.as_mut(),
            off_cpu_stacks: true,
        };
        match ty {
            RECORD_SAMPLE => st.sample(&mut cpu, data, next),
            RECORD_SWITCH => st.switch(&mut cpu, misc, data),
            _ => {
                let _ = cpu.flush(st.stacks, &mut out);
                let _ = other_record(&mut st, ty, misc, data, 0, &mut out);
            }
        }
        // The merge that orders records across rings sees the same bytes.
        let mut pending = merge::Pending::default();
        pending.push(ty, misc, record_time(ty, data), data);
        let _ = merge::earliest(std::iter::once(&pending), u64::MAX);
    }
    let _ = cpu.flush(&mut stacks, &mut out);
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
