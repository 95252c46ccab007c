//! Wakes as flows, for the Perfetto exports: each wake the analysis kept
//! ([`Collected::wakes`]) is a flow from its waker, at the moment it woke the task, to the poll
//! of the task that followed. Here: which track each flow starts on, and, walking a task's
//! stretches in time order, which scheduled stretch a wake ended and which poll it led to.

use std::collections::HashMap;

use iotrace_analysis::intervals::{Collected, TaskIv, POLL, POLL_BLOCKED, SCHEDULED};
use iotrace_analysis::summary::Summary;
use iotrace_analysis::tasks::{TaskKey, WakeEdge, WakeSource};

/// Where a flow starts: the waking task's track when it has one, else the thread the wake ran
/// on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Source {
    Task(TaskKey),
    Thread(u32),
}

/// The wakes of a trace, indexed by where they start and by the task they woke. A wake's flow
/// id is its index in [`Collected::wakes`] plus one.
pub(super) struct Flows<'a> {
    pub(super) wakes: &'a [WakeEdge],
    /// Each wake's source, and the wakes by source, in wake order.
    sources: Vec<Source>,
    starts: HashMap<Source, Vec<usize>>,
    /// By woken task, in poll order.
    ends: HashMap<TaskKey, Vec<usize>>,
    /// Who woke, in words (in the form the exporter's `wrap` gives them), by source.
    labels: HashMap<Source, String>,
}

impl<'a> Flows<'a> {
    pub(super) fn new(summary: &Summary, col: &'a Collected, wrap: fn(&str) -> String) -> Self {
        let wakes = col.wakes();
        let names: HashMap<u32, &str> = summary
            .threads
            .iter()
            .map(|t| (t.tid, t.name.as_str()))
            .collect();
        let tasks: HashMap<TaskKey, &str> = summary
            .tasks
            .iter()
            .map(|row| {
                let key = TaskKey {
                    pid: row.pid,
                    span: row.id,
                };
                (key, row.name.as_str())
            })
            .collect();
        let mut starts: HashMap<Source, Vec<usize>> = HashMap::new();
        let mut ends: HashMap<TaskKey, Vec<usize>> = HashMap::new();
        let mut labels: HashMap<Source, String> = HashMap::new();
        let mut sources = Vec::with_capacity(wakes.len());
        for (i, w) in wakes.iter().enumerate() {
            let source = match w.by {
                WakeSource::Task(k) if col.tasks.contains_key(&k) && tasks.contains_key(&k) => {
                    Source::Task(k)
                }
                _ => Source::Thread(w.waker_tid),
            };
            sources.push(source);
            starts.entry(source).or_default().push(i);
            ends.entry(w.task).or_default().push(i);
            labels.entry(source).or_insert_with(|| {
                let thread = names.get(&w.waker_tid).copied().unwrap_or("?");
                wrap(&match (source, w.by) {
                    (Source::Task(k), _) => format!("task {}", tasks.get(&k).unwrap_or(&"?")),
                    (_, WakeSource::Task(_)) => {
                        format!("a task on thread {thread} {}", w.waker_tid)
                    }
                    (_, WakeSource::Driver { .. }) => format!(
                        "runtime thread {thread} {} outside any poll (I/O or timer driver)",
                        w.waker_tid
                    ),
                    (_, WakeSource::Thread { .. }) => {
                        format!("thread {thread} {}", w.waker_tid)
                    }
                })
            });
        }
        for v in ends.values_mut() {
            v.sort_by_key(|&i| (wakes[i].polled, i));
        }
        Flows {
            wakes,
            sources,
            starts,
            ends,
            labels,
        }
    }

    /// The wakes that start on `source`'s track, in time order.
    pub(super) fn starting(&self, source: Source) -> &[usize] {
        self.starts.get(&source).map_or(&[], Vec::as_slice)
    }

    /// Who woke, in words, for the wake at `i`.
    pub(super) fn label(&self, i: usize) -> &str {
        self.sources
            .get(i)
            .and_then(|s| self.labels.get(s))
            .map_or("?", String::as_str)
    }

    /// A cursor over the wakes of `task`, for its stretches in time order.
    pub(super) fn ends(&self, task: &TaskKey) -> Ends<'_> {
        Ends {
            wakes: self.wakes,
            list: self.ends.get(task).map_or(&[], Vec::as_slice),
            at: 0,
        }
    }
}

/// Walks a task's wakes beside its stretches.
pub(super) struct Ends<'f> {
    wakes: &'f [WakeEdge],
    list: &'f [usize],
    at: usize,
}

/// What a task stretch has to do with a wake.
pub(super) enum End {
    /// The scheduled stretch this wake ended (the task waited for a worker from it).
    Scheduled(usize),
    /// The poll this wake led to: the flow ends on it.
    Poll(usize),
}

impl Ends<'_> {
    /// The wake a stretch ended or began with, if any; stretches must come in time order.
    pub(super) fn at(&mut self, iv: &TaskIv) -> Option<End> {
        let wakes = self.wakes;
        while self
            .list
            .get(self.at)
            .is_some_and(|&i| wakes[i].polled < iv.start)
        {
            self.at += 1;
        }
        let &i = self.list.get(self.at)?;
        let polled = wakes[i].polled;
        match iv.state {
            SCHEDULED if polled <= iv.end => Some(End::Scheduled(i)),
            POLL | POLL_BLOCKED if polled < iv.end => {
                self.at += 1;
                Some(End::Poll(i))
            }
            _ => None,
        }
    }
}

/// Flow starts on one track, handed out in time order beside its slices.
pub(super) struct Starts<'f> {
    wakes: &'f [WakeEdge],
    list: &'f [usize],
    at: usize,
}

impl<'f> Starts<'f> {
    pub(super) fn new(flows: &'f Flows<'_>, source: Source) -> Self {
        Starts {
            wakes: flows.wakes,
            list: flows.starting(source),
            at: 0,
        }
    }

    /// When the next wake woke, if there is one left.
    pub(super) fn next_at(&self) -> Option<u64> {
        self.list.get(self.at).map(|&i| self.wakes[i].woken)
    }

    /// The next wake that woke before `t`, if any.
    pub(super) fn before(&mut self, t: u64) -> Option<usize> {
        let &i = self.list.get(self.at)?;
        (self.wakes[i].woken < t).then(|| {
            self.at += 1;
            i
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotrace_analysis::intervals::IDLE;

    #[test]
    fn a_wake_ends_its_scheduled_stretch_and_flows_into_the_poll_that_follows() {
        let task = TaskKey { pid: 1, span: 9 };
        let wake = |woken, polled| WakeEdge {
            task,
            woken,
            polled,
            waker_tid: 2,
            by: WakeSource::Thread {
                tid: 2,
                stack: None,
            },
        };
        // Two wakes; a third whose poll was not kept (before the first stretch).
        let wakes = [wake(1, 2), wake(10, 12), wake(20, 25)];
        let list = [0, 1, 2];
        let mut ends = Ends {
            wakes: &wakes,
            list: &list,
            at: 0,
        };
        let got: Vec<Option<(bool, usize)>> = [
            (5, 10, IDLE),
            (10, 12, SCHEDULED),
            (12, 14, POLL),
            (14, 20, IDLE),
            (20, 25, SCHEDULED),
            (25, 26, POLL_BLOCKED),
            (26, 30, POLL),
        ]
        .iter()
        .map(|&(s, e, state)| {
            ends.at(&TaskIv::new(s, e, state)).map(|end| match end {
                End::Scheduled(i) => (false, i),
                End::Poll(i) => (true, i),
            })
        })
        .collect();
        assert_eq!(
            got,
            [
                None,
                Some((false, 1)),
                Some((true, 1)),
                None,
                Some((false, 2)),
                Some((true, 2)),
                None
            ]
        );
    }
}
