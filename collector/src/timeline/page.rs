//! Writing the timeline page: the HTML asset with the trace's data streamed into it as JSON
//! (never the whole page in memory), after merging runs of short stretches when a trace has
//! more intervals than a browser should be handed.

use std::collections::HashMap;
use std::io::{self, Write};

use super::{Collected, TaskIv, ThreadIv, BLOCKED, POLL, POLL_BLOCKED, STATES};
use crate::analysis::{syscall_name, Summary};
use crate::format::Switch;
use crate::tasks::{StackId, TaskKey};

/// Frame names of off-CPU stacks, innermost first, each with whether it is a kernel frame.
pub(crate) type StackNames = HashMap<StackId, Vec<(String, bool)>>;

/// The page; `/*IOTRACE_DATA*/` is replaced by the trace's data.
const TEMPLATE: &str = include_str!("timeline.html");
const DATA_MARK: &str = "/*IOTRACE_DATA*/";

/// A writer that counts what went through it.
pub(crate) struct Counting<W: Write> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Counting<W> {
    pub(crate) fn new(inner: W) -> Self {
        Counting { inner, bytes: 0 }
    }
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A stretch that can absorb its neighbours when the page has too many.
trait Merge: Copy {
    fn start(&self) -> u64;
    fn end(&self) -> u64;
    fn state(&self) -> u8;
    /// Takes in `next` (which follows it); the state is decided by the caller.
    fn absorb(&mut self, next: &Self);
    fn finish(&mut self, state: u8, count: u32);
}

impl Merge for ThreadIv {
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        self.end
    }
    fn state(&self) -> u8 {
        self.state
    }
    fn absorb(&mut self, next: &Self) {
        self.end = next.end;
        if self.state != BLOCKED && next.state == BLOCKED {
            self.syscall = next.syscall;
        }
    }
    fn finish(&mut self, state: u8, count: u32) {
        self.state = state;
        self.merged = count;
    }
}

impl Merge for TaskIv {
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        self.end
    }
    fn state(&self) -> u8 {
        self.state
    }
    fn absorb(&mut self, next: &Self) {
        self.end = next.end;
        if self.tid != next.tid {
            self.tid = 0;
        }
        self.on_cpu = self.on_cpu.saturating_add(next.on_cpu);
        self.preempted = self.preempted.saturating_add(next.preempted);
        self.blocked = self.blocked.saturating_add(next.blocked);
        self.counted = self.counted.saturating_add(next.counted);
    }
    fn finish(&mut self, state: u8, count: u32) {
        self.state = state;
        self.merged = count;
    }
}

/// Merges runs of stretches shorter than `r` into stretches of about `r`, each colored by the
/// state that filled most of it. Returns the number of stretches left; rewrites `v` only when
/// `apply`.
fn merge_runs<T: Merge>(v: &mut Vec<T>, r: u64, apply: bool) -> usize {
    let mut out: Vec<T> = Vec::new();
    let mut n = 0;
    let mut group: Option<(T, [u64; STATES.len()], u32)> = None;
    let mut flush = |group: &mut Option<(T, [u64; STATES.len()], u32)>, out: &mut Vec<T>| {
        if let Some((mut g, by, count)) = group.take() {
            n += 1;
            if apply {
                if count > 1 {
                    let state = (0..STATES.len()).max_by_key(|&s| by[s]).unwrap_or(0) as u8;
                    g.finish(state, count);
                }
                out.push(g);
            }
        }
    };
    for iv in v.iter() {
        let d = iv.end() - iv.start();
        let s = usize::from(iv.state()).min(STATES.len() - 1);
        if d >= r {
            flush(&mut group, &mut out);
            group = Some((*iv, [0; STATES.len()], 1));
            flush(&mut group, &mut out);
            continue;
        }
        match &mut group {
            Some((g, by, count)) if iv.start() - g.start() < r => {
                g.absorb(iv);
                by[s] += d;
                *count += 1;
            }
            _ => {
                flush(&mut group, &mut out);
                let mut by = [0; STATES.len()];
                by[s] = d;
                group = Some((*iv, by, 1));
            }
        }
    }
    flush(&mut group, &mut out);
    if apply {
        *v = out;
    }
    n
}

/// Makes the collected tracks fit in `max` intervals (0: no limit); returns how many remain.
pub(crate) fn coarsen(col: &mut Collected, max: u64) -> u64 {
    let total: u64 = col.threads.values().map(|t| t.1.len() as u64).sum::<u64>()
        + col.tasks.values().map(|t| t.len() as u64).sum::<u64>();
    if max == 0 || total <= max {
        return total;
    }
    let first = col
        .threads
        .values()
        .filter_map(|t| t.1.first().map(|i| i.start))
        .chain(
            col.tasks
                .values()
                .filter_map(|t| t.first().map(|i| i.start)),
        )
        .min()
        .unwrap_or(0);
    let last = col
        .threads
        .values()
        .filter_map(|t| t.1.last().map(|i| i.end))
        .chain(col.tasks.values().filter_map(|t| t.last().map(|i| i.end)))
        .max()
        .unwrap_or(0);
    let tracks = (col.threads.len() + col.tasks.len()) as u128;
    let span = u128::from(last.saturating_sub(first));
    let mut r = u64::try_from(2 * tracks * span / u128::from(max))
        .unwrap_or(u64::MAX / 2)
        .max(1);
    loop {
        let n = count(col, r);
        if n as u64 <= max || r >= u64::MAX / 4 {
            // The estimate may merge more than needed: the finest resolution that fits.
            let mut n = n;
            while r > 1 {
                let finer = count(col, r / 2);
                if finer as u64 > max {
                    break;
                }
                r /= 2;
                n = finer;
            }
            for t in col.threads.values_mut() {
                merge_runs(&mut t.1, r, true);
            }
            for t in col.tasks.values_mut() {
                merge_runs(t, r, true);
            }
            return n as u64;
        }
        r *= 2;
    }
}

/// Stretches left if runs shorter than `r` were merged.
fn count(col: &mut Collected, r: u64) -> usize {
    col.threads
        .values_mut()
        .map(|t| merge_runs(&mut t.1, r, false))
        .sum::<usize>()
        + col
            .tasks
            .values_mut()
            .map(|t| merge_runs(t, r, false))
            .sum::<usize>()
}

/// A JSON string literal that is also safe inside a `<script>` element.
pub(crate) fn js_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".to_owned())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Syscall names, and (syscall, stack) pairs of blocked stretches, interned for the page.
#[derive(Default)]
struct Strings {
    list: Vec<String>,
    index: HashMap<u16, usize>,
    reasons: Vec<(i64, i64)>,
    reason_index: HashMap<(u16, Option<StackId>), usize>,
    stacks: Vec<StackId>,
    stack_index: HashMap<StackId, usize>,
}

impl Strings {
    /// Index into `reasons` of a blocked stretch's syscall and (named) stack.
    fn reason(&mut self, nr: u16, stack: Option<StackId>, names: &StackNames) -> i64 {
        let stack = stack.filter(|s| names.contains_key(s));
        if let Some(&i) = self.reason_index.get(&(nr, stack)) {
            return i as i64;
        }
        let sc = self.syscall(nr);
        let st = match stack {
            Some(s) => {
                let stacks = &mut self.stacks;
                *self.stack_index.entry(s).or_insert_with(|| {
                    stacks.push(s);
                    stacks.len() - 1
                }) as i64
            }
            None => -1,
        };
        self.reasons.push((sc, st));
        self.reason_index
            .insert((nr, stack), self.reasons.len() - 1);
        (self.reasons.len() - 1) as i64
    }

    fn syscall(&mut self, nr: u16) -> i64 {
        if nr == Switch::NO_SYSCALL {
            return -1;
        }
        let list = &mut self.list;
        *self.index.entry(nr).or_insert_with(|| {
            list.push(syscall_name(nr));
            list.len() - 1
        }) as i64
    }
}

/// `x` of a merged stretch: -2 - how many it stands for.
fn merged_x(count: u32) -> i64 {
    -2 - i64::from(count)
}

/// Writes the page; returns the number of thread and task tracks.
pub(crate) fn write(
    summary: &Summary,
    col: &Collected,
    names: &StackNames,
    w: &mut impl Write,
) -> io::Result<(usize, usize)> {
    let (head, tail) = TEMPLATE.split_once(DATA_MARK).unwrap_or((TEMPLATE, ""));
    w.write_all(head.as_bytes())?;
    let base = col.start_ns;
    let end = base.saturating_add(summary.duration_ns.max(1));
    let (t0, t1) = match col.window {
        Some((a, b)) => (a, b.min(end)),
        None => (base, end),
    };
    let t0 = t0.saturating_sub(base);
    let t1 = t1.saturating_sub(base).max(t0 + 1);
    write!(
        w,
        "{{\"title\":{},\"pid\":{},\"duration_ns\":{},\"t0\":{t0},\"t1\":{t1},\"states\":{},\"warnings\":[",
        js_string(&summary.command),
        summary.pid,
        summary.duration_ns,
        serde_json::to_string(&STATES).unwrap_or_else(|_| "[]".into())
    )?;
    for (i, warning) in summary.warnings.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        write!(w, "{sep}{}", js_string(&warning.message))?;
    }
    w.write_all(b"],\"tracks\":[")?;
    let mut strings = Strings::default();
    let mut first = true;
    let mut sep = |w: &mut dyn Write| -> io::Result<()> {
        if !std::mem::take(&mut first) {
            w.write_all(b",")?;
        }
        Ok(())
    };
    let none = Vec::new();
    for t in &summary.threads {
        let ivs = col.threads.get(&t.tid).map_or(&none, |(_, v)| v);
        sep(w)?;
        write!(
            w,
            "{{\"kind\":\"thread\",\"label\":{},\"sub\":{},\"iv\":[",
            js_string(&format!("{} {}", t.name, t.tid)),
            js_string(&format!("thread {} of pid {}", t.tid, t.pid))
        )?;
        let mut prev = base;
        for (i, iv) in ivs.iter().enumerate() {
            let x = if iv.merged > 1 {
                merged_x(iv.merged)
            } else if iv.state == BLOCKED {
                strings.reason(iv.syscall, iv.stack, names)
            } else {
                -1
            };
            let comma = if i > 0 { "," } else { "" };
            write!(
                w,
                "{comma}{},{},{},{x}",
                iv.start.saturating_sub(prev),
                iv.end - iv.start,
                iv.state
            )?;
            prev = iv.start;
        }
        w.write_all(b"]}")?;
    }
    let none: Vec<TaskIv> = Vec::new();
    let is_poll = |iv: &TaskIv| iv.merged <= 1 && (iv.state == POLL || iv.state == POLL_BLOCKED);
    for row in &summary.tasks {
        let key = TaskKey {
            pid: row.pid,
            span: row.id,
        };
        let ivs = col.tasks.get(&key).unwrap_or(&none);
        sep(w)?;
        let sub = format!(
            "{} {} · spawned at {} · {} polls",
            row.kind,
            row.task_id.map(|i| format!("#{i}")).unwrap_or_default(),
            row.location.as_deref().unwrap_or("?"),
            row.polls
        );
        write!(
            w,
            "{{\"kind\":\"task\",\"label\":{},\"sub\":{},\"blocking\":{},\"iv\":[",
            js_string(&row.name),
            js_string(&sub),
            row.kind == "blocking"
        )?;
        let mut prev = base;
        let mut polls = 0i64;
        for (i, iv) in ivs.iter().enumerate() {
            let x = if iv.merged > 1 {
                merged_x(iv.merged)
            } else if is_poll(iv) {
                polls += 1;
                polls - 1
            } else {
                -1
            };
            let comma = if i > 0 { "," } else { "" };
            write!(
                w,
                "{comma}{},{},{},{x}",
                iv.start.saturating_sub(prev),
                iv.end - iv.start,
                iv.state
            )?;
            prev = iv.start;
        }
        w.write_all(b"],\"polls\":[")?;
        for (i, iv) in ivs.iter().filter(|iv| is_poll(iv)).enumerate() {
            let comma = if i > 0 { "," } else { "" };
            let sc = strings.syscall(iv.syscall);
            write!(
                w,
                "{comma}{},{},{},{},{},{sc}",
                iv.tid, iv.on_cpu, iv.preempted, iv.blocked, iv.counted
            )?;
        }
        w.write_all(b"]}")?;
    }
    let list: Vec<String> = strings.list.iter().map(|s| js_string(s)).collect();
    write!(w, "],\"strings\":[{}],\"reasons\":[", list.join(","))?;
    for (i, (sc, st)) in strings.reasons.iter().enumerate() {
        let comma = if i > 0 { "," } else { "" };
        write!(w, "{comma}[{sc},{st}]")?;
    }
    w.write_all(b"],\"stacks\":[")?;
    for (i, id) in strings.stacks.iter().enumerate() {
        let frames: Vec<String> = names
            .get(id)
            .into_iter()
            .flatten()
            .map(|(f, _)| js_string(f))
            .collect();
        let comma = if i > 0 { "," } else { "" };
        write!(w, "{comma}[{}]", frames.join(","))?;
    }
    w.write_all(b"]}")?;
    w.write_all(tail.as_bytes())?;
    Ok((summary.threads.len(), summary.tasks.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_cannot_close_the_script_element() {
        assert_eq!(js_string("</script>"), "\"\\u003c/script\\u003e\"");
    }

    fn iv(start: u64, end: u64, state: u8) -> ThreadIv {
        ThreadIv {
            start,
            end,
            state,
            syscall: 0,
            stack: None,
            merged: 0,
        }
    }

    #[test]
    fn short_stretches_merge_into_their_dominant_state() {
        let mut v = vec![
            iv(0, 1, 0),
            iv(1, 4, 2),
            iv(4, 5, 0),
            iv(5, 100, 1),
            iv(100, 101, 0),
        ];
        assert_eq!(merge_runs(&mut v, 10, false), 3);
        merge_runs(&mut v, 10, true);
        let got: Vec<(u64, u64, u8, u32)> = v
            .iter()
            .map(|i| (i.start, i.end, i.state, i.merged))
            .collect();
        assert_eq!(got, [(0, 5, 2, 3), (5, 100, 1, 0), (100, 101, 0, 0)]);
    }
}
