//! Periodic looks at /proc for the child's process tree: RSS and its high-water mark, thread
//! counts, and each thread's name and kernel counters. Without perf this is all there is; with
//! perf it still gives peak RSS and thread names.

use std::collections::BTreeSet;

use procfs::process::Process;

use crate::sys;
use iotrace_trace::{ProcProcess, ProcSample, ProcThread};

/// Walks the child's process tree (the child plus every descendant found through
/// `/proc/PID/task/TID/children`, and any pid announced by perf fork records).
pub struct ProcPoller {
    root: i32,
    known: BTreeSet<i32>,
    ns_per_tick: u64,
}

impl ProcPoller {
    pub fn new(root: i32) -> Self {
        let ticks = procfs::ticks_per_second().max(1);
        ProcPoller {
            root,
            known: BTreeSet::from([root]),
            ns_per_tick: 1_000_000_000 / ticks,
        }
    }

    /// A process of the tree seen by other means (perf fork records).
    pub fn add_pid(&mut self, pid: i32) {
        self.known.insert(pid);
    }

    /// Read /proc now. Processes that have gone are forgotten.
    pub fn sample(&mut self) -> ProcSample {
        let mut sample = ProcSample {
            time_ns: sys::monotonic_ns(),
            ..ProcSample::default()
        };
        let mut queue: Vec<i32> = self.known.iter().copied().collect();
        let mut seen = BTreeSet::new();
        while let Some(pid) = queue.pop() {
            if !seen.insert(pid) {
                continue;
            }
            let Ok(process) = Process::new(pid) else {
                if pid != self.root {
                    self.known.remove(&pid);
                }
                continue;
            };
            let Ok(status) = process.status() else {
                continue;
            };
            sample.processes.push(ProcProcess {
                pid: pid as u32,
                rss_bytes: status.vmrss.unwrap_or(0) * 1024,
                hwm_bytes: status.vmhwm.unwrap_or(0) * 1024,
                threads: status.threads as u32,
            });
            let Ok(tasks) = process.tasks() else { continue };
            for task in tasks.flatten() {
                if let Ok(children) = task.children() {
                    for child in children {
                        if let Ok(child) = i32::try_from(child) {
                            self.known.insert(child);
                            queue.push(child);
                        }
                    }
                }
                let (Ok(stat), Ok(tstatus)) = (task.stat(), task.status()) else {
                    continue;
                };
                sample.threads.push(ProcThread {
                    pid: pid as u32,
                    tid: task.tid as u32,
                    name: stat.comm,
                    voluntary: tstatus.voluntary_ctxt_switches.unwrap_or(0),
                    involuntary: tstatus.nonvoluntary_ctxt_switches.unwrap_or(0),
                    utime_ns: stat.utime * self.ns_per_tick,
                    stime_ns: stat.stime * self.ns_per_tick,
                    minflt: stat.minflt,
                    majflt: stat.majflt,
                });
            }
        }
        sample.processes.sort_by_key(|p| p.pid);
        sample.threads.sort_by_key(|t| t.tid);
        sample
    }
}
