//! Diagnoses in the Perfetto exports: each moment a diagnosis names ([`Diagnosis::at_ns`], at
//! most [`MAX_MOMENTS`] each, within the window) is an instant event named after its kind, in
//! the category [`CATEGORY`], with the diagnosis' message, line and task as arguments.
//!
//! The JSON export draws it on a thread track (the trace event format has no instants on
//! async tracks): the worker thread that was polling the task at that moment, else the
//! diagnosis' worker thread, else the process's main thread, as the task's own slices are
//! placed. The pftrace export draws it on the task's track, else on the worker thread's, else
//! on the process's.

use std::io::{self, Write};

use rustc_hash::FxHashMap;

use super::{js, Out};
use iotrace_analysis::intervals::{Collected, TaskIv};
use iotrace_analysis::summary::Summary;
use iotrace_analysis::tasks::diagnosis::MAX_MOMENTS;
use iotrace_analysis::tasks::{Diagnosis, TaskKey};

/// The category of the diagnoses' instants.
pub(super) const CATEGORY: &str = "iotrace.diagnosis";

/// One moment of a diagnosis.
pub(super) struct Moment {
    /// When, on the trace's clock (ns).
    pub(super) at: u64,
    /// Index into [`Moments::diagnoses`].
    pub(super) diagnosis: usize,
    /// The thread the JSON export draws it on.
    tid: u32,
}

/// The diagnoses' moments in time order, and each diagnosis' message, made once.
pub(super) struct Moments<'a> {
    pub(super) diagnoses: &'a [Diagnosis],
    pub(super) messages: Vec<String>,
    pub(super) list: Vec<Moment>,
}

impl<'a> Moments<'a> {
    pub(super) fn new(summary: &'a Summary, col: &Collected) -> Self {
        let (lo, hi) = col.window.unwrap_or((0, u64::MAX));
        let mut list = Vec::new();
        for (i, d) in summary.diagnoses.iter().enumerate() {
            let tid = if d.tid != 0 { d.tid } else { d.pid };
            for &at in d.at_ns.iter().take(MAX_MOMENTS) {
                let at = col.start_ns.saturating_add(at);
                if at >= lo && at < hi {
                    list.push(Moment {
                        at,
                        diagnosis: i,
                        tid,
                    });
                }
            }
        }
        list.sort_by_key(|m| (m.at, m.diagnosis));
        Moments {
            diagnoses: &summary.diagnoses,
            messages: summary
                .diagnoses
                .iter()
                .map(crate::diagnosis::message)
                .collect(),
            list,
        }
    }

    /// The task a moment's diagnosis is about.
    pub(super) fn task(&self, m: &Moment) -> TaskKey {
        let d = &self.diagnoses[m.diagnosis];
        TaskKey {
            pid: d.pid,
            span: d.task_id,
        }
    }

    /// Indexes into `list` by task, in time order.
    pub(super) fn by_task(&self) -> FxHashMap<TaskKey, Vec<usize>> {
        let mut by: FxHashMap<TaskKey, Vec<usize>> = FxHashMap::default();
        for (i, m) in self.list.iter().enumerate() {
            by.entry(self.task(m)).or_default().push(i);
        }
        by
    }

    /// Notes, for the moments of a task (`mine`, in time order, `next` the first not yet
    /// passed) that fall in `iv`, the worker thread that polled it then; stretches must come
    /// in time order.
    pub(super) fn stretch(&mut self, mine: &[usize], next: &mut usize, iv: &TaskIv) {
        while let Some(&i) = mine.get(*next) {
            let m = &mut self.list[i];
            if m.at >= iv.end {
                break;
            }
            if m.at >= iv.start && iv.tid != 0 {
                m.tid = iv.tid;
            }
            *next += 1;
        }
    }

    /// Writes every moment as a thread-scoped instant (`"ph":"i","s":"t"`), by thread and
    /// then in time order.
    pub(super) fn write_json<W: Write>(&self, col: &Collected, o: &mut Out<W>) -> io::Result<()> {
        let messages: Vec<String> = self.messages.iter().map(|m| js(m)).collect();
        let mut order: Vec<(u32, u32, u64, usize)> = self
            .list
            .iter()
            .map(|m| {
                let pid = col
                    .threads
                    .get(&m.tid)
                    .map_or(self.diagnoses[m.diagnosis].pid, |t| t.0);
                (pid, m.tid, m.at, m.diagnosis)
            })
            .collect();
        order.sort_unstable();
        for (pid, tid, at, i) in order {
            let d = &self.diagnoses[i];
            let l = o.begin();
            l.s("{\"ph\":\"i\",\"s\":\"t\",\"cat\":\"")
                .s(CATEGORY)
                .s("\",\"name\":")
                .s(&js(d.kind))
                .s(",\"pid\":")
                .n(pid)
                .s(",\"tid\":")
                .n(tid)
                .s(",\"ts\":")
                .us(at.saturating_sub(col.start_ns))
                .s(",\"args\":{\"message\":")
                .s(&messages[i]);
            if let Some(line) = &d.line {
                l.s(",\"line\":").s(&js(line));
            }
            l.s(",\"task\":").s(&js(&d.task)).s("}}");
            o.end()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{diagnosed, OTHER, PID, START, TASK, WORKER};
    use iotrace_analysis::intervals::POLL;

    #[test]
    fn a_moment_goes_on_the_worker_that_polled_the_task_then() {
        let (summary, col) = diagnosed();
        let mut moments = Moments::new(&summary, &col);
        // Before the task's stretches are walked: the diagnosis' worker.
        assert_eq!(moments.list[0].tid, WORKER);
        assert_eq!(moments.list[0].at, START + 1_000_000);
        let key = TaskKey {
            pid: PID,
            span: TASK,
        };
        let mine = moments.by_task()[&key].clone();
        let mut next = 0;
        let ivs: Vec<TaskIv> = col.task_ivs(&key).unwrap().collect();
        assert!(ivs.iter().any(|iv| iv.state == POLL && iv.tid == OTHER));
        for iv in &ivs {
            moments.stretch(&mine, &mut next, iv);
        }
        assert_eq!(moments.list[0].tid, OTHER);
    }
}
