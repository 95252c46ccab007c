//! Writing the timeline page: the HTML asset with the trace's data streamed into it as JSON
//! (never the whole page in memory), after merging runs of short stretches when a trace has
//! more intervals than a browser should be handed. Idle stretches point at their yield site,
//! named in the page's tail with the stacks, and the wakes kept by the analysis go there too,
//! as arrows from the waker's track to the woken task's.

use std::collections::HashMap;
use std::io::{self, Write};

use super::{Collected, TaskIv, ThreadIv, BLOCKED, IDLE, POLL, POLL_BLOCKED, STATES};
use crate::out::TrackError;
use iotrace_analysis::intervals::yield_site_line;
use iotrace_analysis::summary::{syscall_name, Summary};
use iotrace_analysis::tasks::WakerRef;
use iotrace_analysis::tasks::{StackId, TaskKey, WakeSource};
use iotrace_trace::Switch;

/// Frame names of off-CPU stacks, innermost first, each with whether it is a kernel frame.
pub(crate) type StackNames = HashMap<StackId, Vec<(String, bool)>>;

/// The page; `/*IOTRACE_DATA*/` is replaced by the trace's data.
const TEMPLATE: &str = include_str!("timeline.html");
const DATA_MARK: &str = "/*IOTRACE_DATA*/";

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
            self.waker = next.waker;
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
/// state that filled most of it, as they stream past.
struct MergeRuns<I, T> {
    inner: I,
    r: u64,
    group: Option<(T, [u64; STATES.len()], u32)>,
    ready: Option<T>,
}

impl<I: Iterator<Item = T>, T: Merge> MergeRuns<I, T> {
    fn new(inner: I, r: u64) -> Self {
        MergeRuns {
            inner,
            r,
            group: None,
            ready: None,
        }
    }
}

fn finish_group<T: Merge>((mut g, by, count): (T, [u64; STATES.len()], u32)) -> T {
    if count > 1 {
        let state = (0..STATES.len()).max_by_key(|&s| by[s]).unwrap_or(0) as u8;
        g.finish(state, count);
    }
    g
}

impl<I: Iterator<Item = T>, T: Merge> Iterator for MergeRuns<I, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if let Some(x) = self.ready.take() {
            return Some(x);
        }
        loop {
            let Some(iv) = self.inner.next() else {
                return self.group.take().map(finish_group);
            };
            let d = iv.end() - iv.start();
            let s = usize::from(iv.state()).min(STATES.len() - 1);
            if d >= self.r {
                return match self.group.take() {
                    Some(g) => {
                        self.ready = Some(iv);
                        Some(finish_group(g))
                    }
                    None => Some(iv),
                };
            }
            match &mut self.group {
                Some((g, by, count)) if iv.start() - g.start() < self.r => {
                    g.absorb(&iv);
                    by[s] += d;
                    *count += 1;
                }
                _ => {
                    let mut by = [0; STATES.len()];
                    by[s] = d;
                    if let Some(prev) = self.group.replace((iv, by, 1)) {
                        return Some(finish_group(prev));
                    }
                }
            }
        }
    }
}

/// Counts, for several resolutions at once, the stretches left if runs shorter than each were
/// merged ([`MergeRuns`]' rule, without building anything).
struct RunCounts {
    /// (resolution, stretches so far, start of the open group).
    rs: Vec<(u64, u64, Option<u64>)>,
}

impl RunCounts {
    fn new(rs: impl IntoIterator<Item = u64>) -> Self {
        RunCounts {
            rs: rs.into_iter().map(|r| (r, 0, None)).collect(),
        }
    }
    fn add(&mut self, start: u64, end: u64) {
        let d = end - start;
        for (r, n, group) in &mut self.rs {
            if d >= *r {
                *n += 1 + u64::from(group.take().is_some());
            } else {
                match group {
                    Some(g) if start - *g < *r => {}
                    _ => {
                        *n += u64::from(group.replace(start).is_some());
                    }
                }
            }
        }
    }
    /// Ends a track.
    fn end_track(&mut self) {
        for (_, n, group) in &mut self.rs {
            *n += u64::from(group.take().is_some());
        }
    }
}

/// The resolutions tried in one counting pass: powers of two this far below and above the
/// estimate (the finest that fits is usually half the estimate).
const STEPS_BELOW: u32 = 6;
const STEPS_ABOVE: u32 = 3;

/// The finest resolution (ns, a power-of-two multiple of an estimate) at which merging runs
/// of shorter stretches leaves at most `max` stretches on the tracks the page shows; `None`
/// when they fit as they are (or `max` is 0: no limit). Each counting pass reads every track
/// once and tries ten resolutions; one pass is usually enough.
pub(crate) fn resolution(col: &Collected, summary: &Summary, max: u64) -> io::Result<Option<u64>> {
    let keys: Vec<TaskKey> = summary
        .tasks
        .iter()
        .map(|row| TaskKey {
            pid: row.pid,
            span: row.id,
        })
        .collect();
    let total: u64 = summary
        .threads
        .iter()
        .map(|t| col.thread_len(t.tid))
        .sum::<u64>()
        + keys.iter().map(|k| col.task_len(k)).sum::<u64>();
    if max == 0 || total <= max {
        return Ok(None);
    }
    let (first, last) = col.span.unwrap_or((0, 0));
    let tracks = (summary.threads.len() + keys.len()) as u128;
    let span = u128::from(last.saturating_sub(first));
    let mut center = u64::try_from(2 * tracks * span / u128::from(max))
        .unwrap_or(u64::MAX / 2)
        .clamp(1, u64::MAX / 64);
    // The finest resolution found to fit, once the search has turned to finer ones.
    let mut fits: Option<u64> = None;
    loop {
        let rs: Vec<u64> = (0..=STEPS_BELOW + STEPS_ABOVE)
            .filter_map(|i| {
                if i < STEPS_BELOW {
                    Some(center >> (STEPS_BELOW - i)).filter(|&r| r > 0)
                } else {
                    center.checked_shl(i - STEPS_BELOW)
                }
            })
            .filter(|&r| r <= u64::MAX / 4 && fits.is_none_or(|f| r < f))
            .collect();
        let Some(&finest) = rs.first() else {
            return Ok(fits.or(Some(center)));
        };
        let mut counts = RunCounts::new(rs.iter().copied());
        for t in &summary.threads {
            for iv in col.thread_ivs(t.tid)? {
                counts.add(iv.start, iv.end);
            }
            counts.end_track();
        }
        for k in &keys {
            for iv in col.task_ivs(k)? {
                counts.add(iv.start, iv.end);
            }
            counts.end_track();
        }
        let found = counts
            .rs
            .iter()
            .position(|&(_, n, _)| n <= max)
            .map(|i| counts.rs[i].0);
        match found {
            // The finest tried fits: a finer one may too.
            Some(r) if r == finest && r > 1 && fits.is_none_or(|f| r < f) => {
                fits = Some(r);
                center = ((r >> 1) >> STEPS_ABOVE).max(1);
            }
            Some(r) => return Ok(Some(r)),
            None if fits.is_some() => return Ok(fits),
            None => {
                let coarsest = rs.last().copied().unwrap_or(u64::MAX / 4);
                if coarsest >= u64::MAX / 16 {
                    return Ok(Some(coarsest));
                }
                center = coarsest.saturating_mul(2 << STEPS_BELOW).min(u64::MAX / 64);
            }
        }
    }
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

/// Syscall names, (syscall, stack) pairs of blocked stretches and (stack, spans) yield sites of
/// idle ones, interned for the page.
#[derive(Default)]
pub(crate) struct Strings {
    list: Vec<String>,
    index: HashMap<u16, usize>,
    reasons: Vec<(i64, Option<StackId>, Option<WakerRef>)>,
    reason_index: HashMap<(u16, Option<StackId>, Option<WakerRef>), usize>,
    yields: Vec<(Option<StackId>, Option<u32>)>,
    yield_index: HashMap<(Option<StackId>, Option<u32>), usize>,
}

impl Strings {
    /// Index into `yields` of an idle stretch's site; -1 when it is not known.
    fn yield_site(&mut self, stack: Option<StackId>, spans: Option<u32>) -> i64 {
        if stack.is_none() && spans.is_none() {
            return -1;
        }
        let yields = &mut self.yields;
        *self.yield_index.entry((stack, spans)).or_insert_with(|| {
            yields.push((stack, spans));
            yields.len() - 1
        }) as i64
    }

    /// Index into `reasons` of a blocked stretch's syscall, stack and waker.
    fn reason(&mut self, nr: u16, stack: Option<StackId>, waker: Option<WakerRef>) -> i64 {
        if let Some(&i) = self.reason_index.get(&(nr, stack, waker)) {
            return i as i64;
        }
        let sc = self.syscall(nr);
        self.reasons.push((sc, stack, waker));
        self.reason_index
            .insert((nr, stack, waker), self.reasons.len() - 1);
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

/// One stretch of a track's `iv` array, formatted by hand (a page has millions of them).
#[derive(Default)]
struct Line(Vec<u8>, itoa::Buffer);

impl Line {
    fn num(&mut self, v: impl itoa::Integer) {
        let digits = self.1.format(v);
        self.0.extend_from_slice(digits.as_bytes());
    }
    /// `,a,b,…` (no leading comma for a list's first).
    fn nums(&mut self, comma: bool, values: &[u64]) {
        self.0.clear();
        for (i, &v) in values.iter().enumerate() {
            if comma || i > 0 {
                self.0.push(b',');
            }
            self.num(v);
        }
    }
    /// `,dstart,dur,state,x` (no leading comma for a track's first).
    fn stretch(&mut self, comma: bool, dstart: u64, dur: u64, state: u8, x: i64) {
        self.0.clear();
        if comma {
            self.0.push(b',');
        }
        self.num(dstart);
        self.0.push(b',');
        self.num(dur);
        self.0.push(b',');
        self.num(state);
        self.0.push(b',');
        self.num(x);
    }
}

/// What writing the tracks left for the rest of the page.
pub(crate) struct Tracks {
    pub strings: Strings,
    /// Blocked time of the stretches drawn with a stack, by stack: which to name.
    pub stack_time: HashMap<StackId, u64>,
    pub drawn: u64,
}

/// Writes the start of the page and every track, one at a time from the store, merged at
/// `resolution` (see [`resolution`]) when it is set.
pub(crate) fn write_tracks(
    summary: &Summary,
    col: &Collected,
    resolution: Option<u64>,
    w: &mut impl Write,
) -> Result<Tracks, TrackError> {
    let werr = TrackError::Write;
    let (head, _) = TEMPLATE.split_once(DATA_MARK).unwrap_or((TEMPLATE, ""));
    w.write_all(head.as_bytes()).map_err(werr)?;
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
        "{{\"title\":{},\"pid\":{},\"duration_ns\":{},\"t0\":{t0},\"t1\":{t1},\"states\":{},\"tracks\":[",
        js_string(&summary.command),
        summary.pid,
        summary.duration_ns,
        serde_json::to_string(&STATES).unwrap_or_else(|_| "[]".into())
    )
    .map_err(werr)?;
    let mut out = Tracks {
        strings: Strings::default(),
        stack_time: HashMap::new(),
        drawn: 0,
    };
    let r = resolution.unwrap_or(0);
    let mut line = Line::default();
    for (i, t) in summary.threads.iter().enumerate() {
        write!(
            w,
            "{}{{\"kind\":\"thread\",\"label\":{},\"sub\":{},\"iv\":[",
            if i > 0 { "," } else { "" },
            js_string(&format!("{} {}", t.name, t.tid)),
            js_string(&format!("thread {} of pid {}", t.tid, t.pid))
        )
        .map_err(werr)?;
        let ivs = MergeRuns::new(col.thread_ivs(t.tid).map_err(TrackError::Read)?, r);
        let mut prev = base;
        for (i, iv) in ivs.enumerate() {
            let x = if iv.merged > 1 {
                merged_x(iv.merged)
            } else if iv.state == BLOCKED {
                if let Some(s) = iv.stack {
                    *out.stack_time.entry(s).or_insert(0) += iv.end - iv.start;
                }
                out.strings.reason(iv.syscall, iv.stack, iv.waker)
            } else {
                -1
            };
            line.stretch(
                i > 0,
                iv.start.saturating_sub(prev),
                iv.end - iv.start,
                iv.state,
                x,
            );
            w.write_all(&line.0).map_err(werr)?;
            prev = iv.start;
            out.drawn += 1;
        }
        w.write_all(b"]}").map_err(werr)?;
    }
    let is_poll = |iv: &TaskIv| iv.merged <= 1 && (iv.state == POLL || iv.state == POLL_BLOCKED);
    let mut polls_json: Vec<u8> = Vec::new();
    for (i, row) in summary.tasks.iter().enumerate() {
        let key = TaskKey {
            pid: row.pid,
            span: row.id,
        };
        let sub = format!(
            "{} {} · spawned at {} · {} polls",
            row.kind,
            row.task_id.map(|i| format!("#{i}")).unwrap_or_default(),
            row.location.as_deref().unwrap_or("?"),
            row.polls
        );
        write!(
            w,
            "{}{{\"kind\":\"task\",\"label\":{},\"sub\":{},\"blocking\":{},\"iv\":[",
            if i > 0 || !summary.threads.is_empty() {
                ","
            } else {
                ""
            },
            js_string(&row.name),
            js_string(&sub),
            row.kind == "blocking"
        )
        .map_err(werr)?;
        let ivs = MergeRuns::new(col.task_ivs(&key).map_err(TrackError::Read)?, r);
        let mut prev = base;
        let mut polls = 0i64;
        polls_json.clear();
        for (i, iv) in ivs.enumerate() {
            let x = if iv.merged > 1 {
                merged_x(iv.merged)
            } else if iv.state == IDLE {
                out.strings.yield_site(iv.yield_stack, iv.yield_spans)
            } else if is_poll(&iv) {
                let sc = out.strings.syscall(iv.syscall);
                write!(
                    polls_json,
                    "{}{},{},{},{},{},{sc}",
                    if polls > 0 { "," } else { "" },
                    iv.tid,
                    iv.on_cpu,
                    iv.preempted,
                    iv.blocked,
                    iv.counted
                )
                .map_err(werr)?;
                polls += 1;
                polls - 1
            } else {
                -1
            };
            line.stretch(
                i > 0,
                iv.start.saturating_sub(prev),
                iv.end - iv.start,
                iv.state,
                x,
            );
            w.write_all(&line.0).map_err(werr)?;
            prev = iv.start;
            out.drawn += 1;
        }
        w.write_all(b"],\"polls\":[").map_err(werr)?;
        w.write_all(&polls_json).map_err(werr)?;
        w.write_all(b"]}").map_err(werr)?;
    }
    w.write_all(b"]").map_err(werr)?;
    Ok(out)
}

/// A wake's kind in the page: a task's poll, a runtime thread outside any poll (the I/O or
/// timer driver), or a thread outside the runtime.
fn wake_kind(by: &WakeSource) -> u8 {
    match by {
        WakeSource::Task(_) => 0,
        WakeSource::Driver { .. } => 1,
        WakeSource::Thread { .. } => 2,
    }
}

/// Writes the wakes as `,"wakes":[dwoken, delay, from, to, kind, ...]` by when they woke:
/// `dwoken` is the wake's time minus the previous one's (the first's: since the recording
/// started), `delay` the time to the poll, `from` the waker's track (the waking task's, else
/// the thread it ran on), `to` the woken task's. Returns the wakes written and those left out
/// for want of a track.
fn write_wakes(summary: &Summary, col: &Collected, w: &mut impl Write) -> io::Result<(u64, u64)> {
    let (threads, tasks) = super::track_indexes(summary);
    w.write_all(b",\"wakes\":[")?;
    let mut line = Line::default();
    let (mut written, mut trackless) = (0u64, 0u64);
    let mut prev = col.start_ns;
    for wake in col.wakes() {
        let from = match wake.by {
            WakeSource::Task(k) => tasks.get(&k).or(threads.get(&wake.waker_tid)),
            _ => threads.get(&wake.waker_tid),
        };
        let (Some(&from), Some(&to)) = (from, tasks.get(&wake.task)) else {
            trackless += 1;
            continue;
        };
        line.nums(
            written > 0,
            &[
                wake.woken.saturating_sub(prev),
                wake.polled - wake.woken,
                from as u64,
                to as u64,
                u64::from(wake_kind(&wake.by)),
            ],
        );
        w.write_all(&line.0)?;
        prev = wake.woken;
        written += 1;
    }
    w.write_all(b"]")?;
    Ok((written, trackless))
}

/// Writes the rest of the page: warnings, diagnoses, syscall names, the reasons of blocked stretches and
/// the frames of the stacks that were named (a reason whose stack was not named has none), the
/// idle stretches' yield sites, and the wakes. Returns the wakes written, and those left out
/// (by the analysis' limit, or for want of a track).
pub(crate) fn write_tail(
    summary: &Summary,
    col: &Collected,
    strings: Strings,
    names: &StackNames,
    w: &mut impl Write,
) -> io::Result<(u64, u64)> {
    w.write_all(b",\"warnings\":[")?;
    for (i, warning) in summary.warnings.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        write!(w, "{sep}{}", js_string(&crate::warning::message(warning)))?;
    }
    w.write_all(b"]")?;
    super::diagnoses::write(summary, w)?;
    // Who ended each blocked stretch, named after the thread it was (or that an interrupt ran
    // in), as more strings.
    let thread_names: HashMap<u32, &str> = summary
        .threads
        .iter()
        .map(|t| (t.tid, t.name.as_str()))
        .collect();
    let mut list: Vec<String> = strings.list.iter().map(|s| js_string(s)).collect();
    let mut waker_index: HashMap<WakerRef, usize> = HashMap::new();
    let wakers: Vec<i64> = strings
        .reasons
        .iter()
        .map(|&(_, _, waker)| match waker {
            Some((tid, irq)) => *waker_index.entry((tid, irq)).or_insert_with(|| {
                let name = thread_names.get(&tid).copied().unwrap_or("?");
                let by = if irq { "an interrupt in" } else { "thread" };
                list.push(js_string(&format!("{by} {name} ({tid})")));
                list.len() - 1
            }) as i64,
            None => -1,
        })
        .collect();
    write!(w, ",\"strings\":[{}],\"reasons\":[", list.join(","))?;
    let mut stacks: Vec<StackId> = Vec::new();
    let mut stack_index: HashMap<StackId, usize> = HashMap::new();
    for (i, (&(sc, st, _), wk)) in strings.reasons.iter().zip(&wakers).enumerate() {
        let st = match st.filter(|s| names.contains_key(s)) {
            Some(s) => *stack_index.entry(s).or_insert_with(|| {
                stacks.push(s);
                stacks.len() - 1
            }) as i64,
            None => -1,
        };
        let comma = if i > 0 { "," } else { "" };
        write!(w, "{comma}[{sc},{st},{wk}]")?;
    }
    w.write_all(b"],\"stacks\":[")?;
    for (i, id) in stacks.iter().enumerate() {
        let frames: Vec<String> = names
            .get(id)
            .into_iter()
            .flatten()
            .map(|(f, _)| js_string(f))
            .collect();
        let comma = if i > 0 { "," } else { "" };
        write!(w, "{comma}[{}]", frames.join(","))?;
    }
    // Yield sites: each (stack, spans) pair its line, the same line once.
    let mut sites: Vec<String> = Vec::new();
    let mut site_index: HashMap<String, usize> = HashMap::new();
    w.write_all(b"],\"yields\":[")?;
    for (i, &(stack, spans)) in strings.yields.iter().enumerate() {
        let at = match yield_site_line(names, &summary.span_chains, stack, spans) {
            Some(line) => {
                let next = sites.len();
                let at = *site_index.entry(line.clone()).or_insert(next);
                if at == next {
                    sites.push(line);
                }
                at as i64
            }
            None => -1,
        };
        let comma = if i > 0 { "," } else { "" };
        write!(w, "{comma}{at}")?;
    }
    let sites: Vec<String> = sites.iter().map(|s| js_string(s)).collect();
    write!(w, "],\"sites\":[{}]", sites.join(","))?;
    let (written, trackless) = write_wakes(summary, col, w)?;
    let left_out = col.wakes_left_out() + trackless;
    write!(w, ",\"wakes_left_out\":{left_out}}}")?;
    let (_, tail) = TEMPLATE.split_once(DATA_MARK).unwrap_or((TEMPLATE, ""));
    w.write_all(tail.as_bytes())?;
    Ok((written, left_out))
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
            waker: None,
            stack: None,
            merged: 0,
        }
    }

    #[test]
    fn short_stretches_merge_into_their_dominant_state() {
        let v = vec![
            iv(0, 1, 0),
            iv(1, 4, 2),
            iv(4, 5, 0),
            iv(5, 100, 1),
            iv(100, 101, 0),
        ];
        let mut counts = RunCounts::new([10, 1000]);
        for i in &v {
            counts.add(i.start, i.end);
        }
        counts.end_track();
        let got: Vec<(u64, u64, u8, u32)> = MergeRuns::new(v.clone().into_iter(), 10)
            .map(|i| (i.start, i.end, i.state, i.merged))
            .collect();
        assert_eq!(got, [(0, 5, 2, 3), (5, 100, 1, 0), (100, 101, 0, 0)]);
        assert_eq!(counts.rs[0].1, 3);
        // At 1000 ns everything is one run of short stretches.
        let all: Vec<u32> = MergeRuns::new(v.into_iter(), 1000)
            .map(|i| i.merged)
            .collect();
        assert_eq!(all, [5]);
        assert_eq!(counts.rs[1].1, 1);
    }

    #[test]
    fn wakes_go_from_the_wakers_track_to_the_woken_tasks() {
        use iotrace_analysis::summary::ThreadSummary;
        use iotrace_analysis::tasks::{Sink, TaskRow, WakeEdge};
        let mut summary = Summary::default();
        for tid in [10, 11] {
            summary.threads.push(ThreadSummary {
                tid,
                pid: 10,
                ..ThreadSummary::default()
            });
        }
        for id in [1, 2] {
            let mut row = TaskRow::default();
            (row.id, row.pid) = (id, 10);
            summary.tasks.push(row);
        }
        let (a, b) = (TaskKey { pid: 10, span: 1 }, TaskKey { pid: 10, span: 2 });
        let mut col = Collected::default();
        let edge = |task, woken, by| WakeEdge {
            task,
            woken,
            polled: woken + 5,
            waker_tid: 11,
            by,
        };
        col.start_ns = 100;
        // A thread outside the runtime, a task (drawn on its own track), a runtime thread, and
        // a wake of a task that has no track.
        col.wake(&edge(
            b,
            110,
            WakeSource::Thread {
                tid: 11,
                stack: None,
            },
        ));
        col.wake(&edge(a, 120, WakeSource::Task(b)));
        let driver = WakeSource::Driver {
            tid: 11,
            stack: None,
            after: None,
        };
        col.wake(&edge(b, 130, driver));
        col.wake(&edge(TaskKey { pid: 10, span: 3 }, 140, driver));
        let mut out = Vec::new();
        let (written, trackless) = write_wakes(&summary, &col, &mut out).unwrap();
        assert_eq!((written, trackless), (3, 1));
        // Tracks: threads 10, 11 are 0, 1; tasks 1, 2 are 2, 3.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            ",\"wakes\":[10,5,1,3,2,10,5,3,2,0,10,5,1,3,1]"
        );
    }

    #[test]
    fn a_long_stretch_closes_the_run_before_it() {
        let v = vec![iv(0, 1, 0), iv(1, 2, 2), iv(2, 50, 1), iv(50, 51, 0)];
        let got: Vec<(u64, u64, u32)> = MergeRuns::new(v.clone().into_iter(), 10)
            .map(|i| (i.start, i.end, i.merged))
            .collect();
        assert_eq!(got, [(0, 2, 2), (2, 50, 0), (50, 51, 0)]);
        let mut counts = RunCounts::new([10]);
        for i in &v {
            counts.add(i.start, i.end);
        }
        counts.end_track();
        assert_eq!(counts.rs[0].1, got.len() as u64);
    }
}
