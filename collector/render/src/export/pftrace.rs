//! `iotrace export --format pftrace`: the trace in Perfetto's own protobuf format (a `Trace`
//! of `TracePacket`s, as the Perfetto SDK writes them), which ui.perfetto.dev and
//! trace_processor open. The same content as the JSON export, in about a third of the bytes:
//!
//! - a track per process, per thread (thread states as slices: `running`, `runnable`,
//!   `blocked: SYSCALL` with its `syscall`, `stack_id` and `stack`), per task (its stretches as
//!   slices named by state, with the worker and the time it spent on and off the CPU, idle ones
//!   with their `yield_site`, scheduled ones with who woke them, `woken_by`), and a `memory` and
//!   a `threads` counter per process;
//! - each wake as a flow: an instant `wake` (its `woken` task named) on the waker's track (the
//!   waking task's, else the thread the wake ran on) at the moment it woke the task, carrying
//!   the flow's id in `flow_ids`, and the poll that followed carrying it in
//!   `terminating_flow_ids`;
//! - each moment of a diagnosis as an instant named after its kind, with its `message`, `line`
//!   and `task`, on the task's track (else its worker thread's, else its process's);
//! - event names, argument names and repeated argument values (syscalls, stacks) interned
//!   once on the one packet sequence, so a slice is two packets of about 20 bytes.
//!
//! Packets are written track by track, not in time order: trace_processor sorts them, and the
//! interned strings are defined, in file order, before their first use. Within a track they
//! are in time order (a wake's or a diagnosis' instant between the begin and the end of the slice
//! it falls in).
//!
//! Field numbers are those of perfetto's `protos/perfetto/trace/` (`trace.proto`,
//! `trace_packet.proto`, `track_event/*.proto`, `interned_data/interned_data.proto`); the test
//! decodes the output with the official Python module (PyPI's `perfetto`).

use std::collections::HashSet;
use std::io::{self, Write};

use rustc_hash::FxHashMap;

use super::common::Pb;
use super::flows::{End, Flows, Source, Starts};
use super::moments::Moments;
use crate::out::TrackError;
use iotrace_analysis::intervals::{Collected, BLOCKED, IDLE, STATES};
use iotrace_analysis::summary::Summary;
use iotrace_trace::Switch;

// Trace
const TRACE_PACKET: u32 = 1;
// TracePacket
const PACKET_TIMESTAMP: u32 = 8;
const PACKET_SEQUENCE_ID: u32 = 10;
const PACKET_TRACK_EVENT: u32 = 11;
const PACKET_INTERNED_DATA: u32 = 12;
const PACKET_SEQUENCE_FLAGS: u32 = 13;
const PACKET_TRACK_DESCRIPTOR: u32 = 60;
const PACKET_FIRST_ON_SEQUENCE: u32 = 87;
const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
const SEQ_NEEDS_INCREMENTAL_STATE: u64 = 2;
// TrackEvent
const EVENT_DEBUG_ANNOTATIONS: u32 = 4;
const EVENT_TYPE: u32 = 9;
const EVENT_NAME_IID: u32 = 10;
const EVENT_TRACK_UUID: u32 = 11;
const EVENT_COUNTER_VALUE: u32 = 30;
const EVENT_FLOW_IDS: u32 = 47;
const EVENT_TERMINATING_FLOW_IDS: u32 = 48;
const TYPE_SLICE_BEGIN: u64 = 1;
const TYPE_SLICE_END: u64 = 2;
const TYPE_INSTANT: u64 = 3;
const TYPE_COUNTER: u64 = 4;
// TrackDescriptor
const TRACK_UUID: u32 = 1;
const TRACK_NAME: u32 = 2;
const TRACK_PROCESS: u32 = 3;
const TRACK_THREAD: u32 = 4;
const TRACK_PARENT_UUID: u32 = 5;
const TRACK_COUNTER: u32 = 8;
// ProcessDescriptor / ThreadDescriptor
const PROCESS_PID: u32 = 1;
const PROCESS_NAME: u32 = 6;
const THREAD_PID: u32 = 1;
const THREAD_TID: u32 = 2;
const THREAD_NAME: u32 = 5;
// InternedData, and its EventName / DebugAnnotationName / InternedString entries
const INTERNED_EVENT_NAMES: u32 = 2;
const INTERNED_ANNOTATION_NAMES: u32 = 3;
const INTERNED_ANNOTATION_STRINGS: u32 = 29;
const INTERNED_IID: u32 = 1;
const INTERNED_NAME: u32 = 2;
// DebugAnnotation
const ANNOTATION_NAME_IID: u32 = 1;
const ANNOTATION_UINT: u32 = 3;
const ANNOTATION_STRING_IID: u32 = 17;

const SEQUENCE: u64 = 1;

/// Interned strings of one kind: iid by string, and those defined since the last packet.
#[derive(Default)]
struct Interned {
    ids: FxHashMap<String, u64>,
    new: Vec<(u64, String)>,
}

impl Interned {
    fn iid(&mut self, s: &str) -> u64 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.ids.len() as u64 + 1;
        self.ids.insert(s.to_owned(), id);
        self.new.push((id, s.to_owned()));
        id
    }
}

/// A task stretch's or blocked slice's argument.
enum Arg<'a> {
    Uint(&'a str, u64),
    Str(&'a str, &'a str),
}

struct Writer<W: Write> {
    w: W,
    packets: u64,
    first: bool,
    names: Interned,
    arg_names: Interned,
    strings: Interned,
    event: Pb,
    annotation: Pb,
    packet: Pb,
    frame: Pb,
}

impl<W: Write> Writer<W> {
    fn new(w: W) -> Self {
        Writer {
            w,
            packets: 0,
            first: true,
            names: Interned::default(),
            arg_names: Interned::default(),
            strings: Interned::default(),
            event: Pb::default(),
            annotation: Pb::default(),
            packet: Pb::default(),
            frame: Pb::default(),
        }
    }

    /// Writes `self.packet` as one `Trace.packet`, with the sequence's fields and any strings
    /// interned since the last packet.
    fn flush_packet(&mut self, needs_state: bool) -> io::Result<()> {
        self.packet.put_uint(PACKET_SEQUENCE_ID, SEQUENCE);
        let flags = if self.first {
            self.packet.put_uint(PACKET_FIRST_ON_SEQUENCE, 1);
            SEQ_INCREMENTAL_STATE_CLEARED
        } else if needs_state {
            SEQ_NEEDS_INCREMENTAL_STATE
        } else {
            0
        };
        if flags != 0 {
            self.packet.put_uint(PACKET_SEQUENCE_FLAGS, flags);
        }
        self.first = false;
        if !(self.names.new.is_empty()
            && self.arg_names.new.is_empty()
            && self.strings.new.is_empty())
        {
            let mut data = Pb::default();
            for (field, interned) in [
                (INTERNED_EVENT_NAMES, &mut self.names),
                (INTERNED_ANNOTATION_NAMES, &mut self.arg_names),
                (INTERNED_ANNOTATION_STRINGS, &mut self.strings),
            ] {
                for (iid, s) in interned.new.drain(..) {
                    let mut entry = Pb::default();
                    entry.put_uint(INTERNED_IID, iid);
                    entry.bytes(INTERNED_NAME, s.as_bytes());
                    data.bytes(field, &entry.0);
                }
            }
            self.packet.bytes(PACKET_INTERNED_DATA, &data.0);
        }
        self.frame.0.clear();
        self.frame.bytes(TRACE_PACKET, &self.packet.0);
        self.packet.0.clear();
        self.packets += 1;
        self.w.write_all(&self.frame.0)
    }

    fn track(&mut self, descriptor: &Pb) -> io::Result<()> {
        self.packet.0.clear();
        self.packet.bytes(PACKET_TRACK_DESCRIPTOR, &descriptor.0);
        self.flush_packet(false)
    }

    /// A TrackEvent on `track` at `ts`: a slice begin or an instant (with `name` and `args`), a
    /// slice end, or a counter value.
    fn event(
        &mut self,
        track: u64,
        ts: u64,
        kind: u64,
        name: Option<&str>,
        args: &[Arg<'_>],
        counter: Option<i64>,
    ) -> io::Result<()> {
        self.flow_event(track, ts, kind, name, args, counter, (&[], &[]))
    }

    /// [`Writer::event`] with the flows it continues and those it ends (`flow_ids`,
    /// `terminating_flow_ids`).
    #[allow(clippy::too_many_arguments)]
    fn flow_event(
        &mut self,
        track: u64,
        ts: u64,
        kind: u64,
        name: Option<&str>,
        args: &[Arg<'_>],
        counter: Option<i64>,
        (flows, ending): (&[u64], &[u64]),
    ) -> io::Result<()> {
        self.event.0.clear();
        self.event.put_uint(EVENT_TYPE, kind);
        self.event.put_uint(EVENT_TRACK_UUID, track);
        if let Some(name) = name {
            let iid = self.names.iid(name);
            self.event.put_uint(EVENT_NAME_IID, iid);
        }
        for arg in args {
            let a = &mut self.annotation;
            a.0.clear();
            match *arg {
                Arg::Uint(key, v) => {
                    a.put_uint(ANNOTATION_NAME_IID, self.arg_names.iid(key));
                    a.put_uint(ANNOTATION_UINT, v);
                }
                Arg::Str(key, v) => {
                    a.put_uint(ANNOTATION_NAME_IID, self.arg_names.iid(key));
                    a.put_uint(ANNOTATION_STRING_IID, self.strings.iid(v));
                }
            }
            self.event
                .bytes(EVENT_DEBUG_ANNOTATIONS, &self.annotation.0);
        }
        if let Some(v) = counter {
            self.event.put_int(EVENT_COUNTER_VALUE, v);
        }
        for &id in flows {
            self.event.fixed64(EVENT_FLOW_IDS, id);
        }
        for &id in ending {
            self.event.fixed64(EVENT_TERMINATING_FLOW_IDS, id);
        }
        self.packet.0.clear();
        self.packet.put_uint(PACKET_TIMESTAMP, ts);
        let event = std::mem::take(&mut self.event);
        self.packet.bytes(PACKET_TRACK_EVENT, &event.0);
        self.event = event;
        self.flush_packet(true)
    }
}

fn process_uuid(pid: u32) -> u64 {
    (1 << 40) | u64::from(pid)
}
fn thread_uuid(tid: u32) -> u64 {
    (2 << 40) | u64::from(tid)
}
fn task_uuid(index: usize) -> u64 {
    (3 << 40) | index as u64
}
fn counter_uuid(pid: u32, which: u64) -> u64 {
    ((4 + which) << 40) | u64::from(pid)
}

/// What goes on the tracks as instants between their slices: the wakes that start flows
/// there, and the diagnoses' moments.
struct Instants<'f, 'a> {
    flows: &'f Flows<'a>,
    /// The woken tasks' names.
    names: FxHashMap<iotrace_analysis::tasks::TaskKey, String>,
    moments: Moments<'a>,
    /// Indexes into `moments.list` by track, in time order; taken when the track is written.
    by_track: FxHashMap<u64, Vec<usize>>,
    base: u64,
}

/// One track's instants, handed out in time order beside its slices.
struct OnTrack<'f> {
    track: u64,
    starts: Starts<'f>,
    moments: Vec<usize>,
    next: usize,
}

impl<'f> Instants<'f, '_> {
    fn on(&mut self, track: u64, source: Source) -> OnTrack<'f> {
        OnTrack {
            track,
            starts: Starts::new(self.flows, source),
            moments: self.by_track.remove(&track).unwrap_or_default(),
            next: 0,
        }
    }

    /// Writes the instants of `on` before `t`: wakes that start their flows there, and
    /// diagnoses' moments.
    fn before<W: Write>(&self, o: &mut Writer<W>, on: &mut OnTrack<'_>, t: u64) -> io::Result<()> {
        loop {
            let wake = on.starts.next_at().filter(|&w| w < t);
            let moment = on.moments.get(on.next).copied();
            let moment = moment.filter(|&m| self.moments.list[m].at < t);
            match (wake, moment) {
                (Some(w), m) if m.is_none_or(|m| w <= self.moments.list[m].at) => {
                    let Some(i) = on.starts.before(t) else {
                        return Ok(());
                    };
                    let wake = &self.flows.wakes[i];
                    let woken = self.names.get(&wake.task).map_or("?", String::as_str);
                    o.flow_event(
                        on.track,
                        wake.woken.saturating_sub(self.base),
                        TYPE_INSTANT,
                        Some("wake"),
                        &[Arg::Str("woken", woken)],
                        None,
                        (&[i as u64 + 1], &[]),
                    )?;
                }
                (_, Some(m)) => {
                    self.moment(o, on.track, m)?;
                    on.next += 1;
                }
                _ => return Ok(()),
            }
        }
    }

    /// A diagnosis' moment as an instant named after its kind.
    fn moment<W: Write>(&self, o: &mut Writer<W>, track: u64, i: usize) -> io::Result<()> {
        let m = &self.moments.list[i];
        let d = &self.moments.diagnoses[m.diagnosis];
        let mut args = vec![Arg::Str("message", &self.moments.messages[m.diagnosis])];
        if let Some(line) = &d.line {
            args.push(Arg::Str("line", line));
        }
        args.push(Arg::Str("task", &d.task));
        let ts = m.at.saturating_sub(self.base);
        o.event(track, ts, TYPE_INSTANT, Some(d.kind), &args, None)
    }
}

/// Writes the collected trace as Perfetto protobuf to `w`; returns the packets written, and the
/// wakes written as flows (those whose poll was found).
pub(crate) fn write<W: Write>(
    summary: &Summary,
    col: &Collected,
    stacks: &super::StackNames,
    w: W,
) -> Result<(u64, u64), TrackError> {
    let we = TrackError::Write;
    let base = col.start_ns;
    let rel = |t: u64| t.saturating_sub(base);
    let mut o = Writer::new(w);

    // Processes and threads.
    let mut processes = super::process_names(summary);
    // Every track's parent exists: a process seen only in /proc samples, thread stretches or
    // tasks too.
    for &(_, pid, _, _) in &col.counters {
        processes.entry(pid).or_default();
    }
    for &(pid, _) in col.threads.values() {
        processes.entry(pid).or_default();
    }
    for row in &summary.tasks {
        processes.entry(row.pid).or_default();
    }
    for d in &summary.diagnoses {
        processes.entry(d.pid).or_default();
    }
    let mut pids: Vec<(&u32, &String)> = processes.iter().collect();
    pids.sort();
    for (&pid, name) in pids {
        let mut p = Pb::default();
        p.put_int(PROCESS_PID, i64::from(pid));
        p.bytes(PROCESS_NAME, name.as_bytes());
        let mut d = Pb::default();
        d.put_uint(TRACK_UUID, process_uuid(pid));
        d.bytes(TRACK_PROCESS, &p.0);
        o.track(&d).map_err(we)?;
    }
    for t in &summary.threads {
        let mut th = Pb::default();
        th.put_int(THREAD_PID, i64::from(t.pid));
        th.put_int(THREAD_TID, i64::from(t.tid));
        th.bytes(THREAD_NAME, t.name.as_bytes());
        let mut d = Pb::default();
        d.put_uint(TRACK_UUID, thread_uuid(t.tid));
        d.put_uint(TRACK_PARENT_UUID, process_uuid(t.pid));
        d.bytes(TRACK_THREAD, &th.0);
        o.track(&d).map_err(we)?;
    }

    // Thread states: a slice per stretch, in time order per thread.
    let mut tids: Vec<(u32, u32)> = col.threads.iter().map(|(&t, &(p, _))| (t, p)).collect();
    tids.sort();
    let mut blocked = super::SyscallNames::new(str::to_owned);
    let mut stack_lines = super::StackLines::new(stacks, str::to_owned);
    let flows = Flows::new(summary, col, str::to_owned);
    let mut inst = Instants {
        flows: &flows,
        names: FxHashMap::default(),
        moments: Moments::new(summary, col),
        by_track: FxHashMap::default(),
        base,
    };
    let mut drawn = FxHashMap::default();
    for (index, key, _, name) in super::drawn_tasks(summary, col) {
        inst.names.insert(key, name);
        drawn.insert(key, index);
    }
    for (i, m) in inst.moments.list.iter().enumerate() {
        let d = &inst.moments.diagnoses[m.diagnosis];
        let has_track =
            |tid| col.threads.contains_key(&tid) || summary.threads.iter().any(|t| t.tid == tid);
        let track = match drawn.get(&inst.moments.task(m)) {
            Some(&index) => task_uuid(index),
            None if d.tid != 0 && has_track(d.tid) => thread_uuid(d.tid),
            None => process_uuid(d.pid),
        };
        inst.by_track.entry(track).or_default().push(i);
    }
    for (tid, pid) in tids {
        if !summary.threads.iter().any(|t| t.tid == tid) {
            // A thread the summary does not name still gets its track.
            let mut th = Pb::default();
            th.put_int(THREAD_PID, i64::from(pid));
            th.put_int(THREAD_TID, i64::from(tid));
            let mut d = Pb::default();
            d.put_uint(TRACK_UUID, thread_uuid(tid));
            d.put_uint(TRACK_PARENT_UUID, process_uuid(pid));
            d.bytes(TRACK_THREAD, &th.0);
            o.track(&d).map_err(we)?;
        }
        let track = thread_uuid(tid);
        let mut on = inst.on(track, Source::Thread(tid));
        for iv in col.thread_ivs(tid).map_err(TrackError::Read)? {
            let (start, end) = (rel(iv.start), rel(iv.end));
            inst.before(&mut o, &mut on, iv.start).map_err(we)?;
            if iv.state == BLOCKED {
                let (name, sc) = blocked.get(iv.syscall);
                let mut args = vec![Arg::Str("syscall", sc)];
                let line = iv.stack.and_then(|s| stack_lines.get(s, iv.syscall));
                if let Some(s) = iv.stack {
                    args.push(Arg::Uint("stack_id", u64::from(s)));
                }
                if let Some(line) = line {
                    args.push(Arg::Str("stack", line));
                }
                o.event(track, start, TYPE_SLICE_BEGIN, Some(name), &args, None)
                    .map_err(we)?;
            } else {
                let state = STATES[usize::from(iv.state).min(STATES.len() - 1)];
                o.event(track, start, TYPE_SLICE_BEGIN, Some(state), &[], None)
                    .map_err(we)?;
            }
            inst.before(&mut o, &mut on, iv.end).map_err(we)?;
            o.event(track, end, TYPE_SLICE_END, None, &[], None)
                .map_err(we)?;
        }
        inst.before(&mut o, &mut on, u64::MAX).map_err(we)?;
    }

    // Tasks: a track each, under its process.
    let mut yields = super::YieldLines::new(stacks, &summary.span_chains, str::to_owned);
    let mut ended = 0u64;
    for (index, key, row, name) in super::drawn_tasks(summary, col) {
        let track = task_uuid(index);
        let mut d = Pb::default();
        d.put_uint(TRACK_UUID, track);
        d.bytes(TRACK_NAME, name.as_bytes());
        d.put_uint(TRACK_PARENT_UUID, process_uuid(row.pid));
        o.track(&d).map_err(we)?;
        let mut on = inst.on(track, Source::Task(key));
        let mut ends = flows.ends(&key);
        for iv in col.task_ivs(&key).map_err(TrackError::Read)? {
            inst.before(&mut o, &mut on, iv.start).map_err(we)?;
            let state = STATES[usize::from(iv.state).min(STATES.len() - 1)];
            let mut args = Vec::new();
            let mut ending: &[u64] = &[];
            let id;
            match ends.at(&iv) {
                Some(End::Scheduled(i)) => args.push(Arg::Str("woken_by", flows.label(i))),
                Some(End::Poll(i)) => {
                    id = [i as u64 + 1];
                    ending = &id;
                    ended += 1;
                }
                None => {}
            }
            if iv.state == IDLE {
                if let Some(site) = yields.get(iv.yield_stack, iv.yield_spans) {
                    args.push(Arg::Str("yield_site", site));
                }
            }
            if iv.tid != 0 {
                args.push(Arg::Uint("worker_tid", u64::from(iv.tid)));
                args.push(Arg::Uint("on_cpu_ns", iv.on_cpu));
                args.push(Arg::Uint("preempted_ns", iv.preempted));
                args.push(Arg::Uint("blocked_ns", iv.blocked));
                args.push(Arg::Uint("blocked_worker_ns", iv.counted));
            }
            if iv.tid != 0 && iv.syscall != Switch::NO_SYSCALL {
                args.push(Arg::Str("syscall", &blocked.get(iv.syscall).1));
            }
            o.flow_event(
                track,
                rel(iv.start),
                TYPE_SLICE_BEGIN,
                Some(state),
                &args,
                None,
                (&[], ending),
            )
            .map_err(we)?;
            inst.before(&mut o, &mut on, iv.end).map_err(we)?;
            o.event(track, rel(iv.end), TYPE_SLICE_END, None, &[], None)
                .map_err(we)?;
        }
        inst.before(&mut o, &mut on, u64::MAX).map_err(we)?;
    }

    // Moments on tracks without slices (processes, threads without stretches).
    let mut rest: Vec<(u64, Vec<usize>)> = inst.by_track.drain().collect();
    rest.sort_unstable();
    for (track, moments) in rest {
        for i in moments {
            inst.moment(&mut o, track, i).map_err(we)?;
        }
    }

    // Counters from /proc, per process.
    let mut counters: HashSet<(u32, u64)> = HashSet::new();
    for &(t, pid, rss, threads) in &col.counters {
        for (which, name, value) in [(0, "memory", rss), (1, "threads", u64::from(threads))] {
            let track = counter_uuid(pid, which);
            if counters.insert((pid, which)) {
                let mut d = Pb::default();
                d.put_uint(TRACK_UUID, track);
                d.bytes(TRACK_NAME, name.as_bytes());
                d.put_uint(TRACK_PARENT_UUID, process_uuid(pid));
                d.bytes(TRACK_COUNTER, &[]);
                o.track(&d).map_err(we)?;
            }
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            o.event(track, rel(t), TYPE_COUNTER, None, &[], Some(value))
                .map_err(we)?;
        }
    }
    Ok((o.packets, ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_as_protobuf_does() {
        let mut pb = Pb::default();
        pb.varint(300);
        assert_eq!(pb.0, [0xac, 0x02]);
        let mut pb = Pb::default();
        pb.put_uint(PACKET_TIMESTAMP, 1);
        pb.bytes(TRACK_NAME, b"ab");
        pb.put_int(PROCESS_PID, -1);
        assert_eq!(
            pb.0,
            [
                8 << 3,
                1,
                (2 << 3) | 2,
                2,
                b'a',
                b'b',
                1 << 3,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x01
            ]
        );
    }

    /// The fields of a protobuf message: (field number, varint or fixed64 value, bytes).
    fn fields(mut b: &[u8]) -> Vec<(u32, u64, &[u8])> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = b.split_first().expect("a varint");
                *b = rest;
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let field = (key >> 3) as u32;
            match key & 7 {
                0 => out.push((field, varint(&mut b), &b[..0])),
                1 => {
                    let (v, rest) = b.split_at(8);
                    out.push((field, u64::from_le_bytes(v.try_into().unwrap()), &[][..]));
                    b = rest;
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let (v, rest) = b.split_at(n);
                    out.push((field, 0, v));
                    b = rest;
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }

    #[test]
    fn a_diagnosis_is_an_instant_inside_the_poll_on_its_tasks_track() {
        use crate::fixtures::diagnosed;
        let (summary, col) = diagnosed();
        let mut out = Vec::new();
        write(&summary, &col, &super::super::StackNames::new(), &mut out)
            .unwrap_or_else(|_| panic!("write"));
        let (mut names, mut strings) = (FxHashMap::default(), FxHashMap::default());
        // (track, timestamp, type, name) of each event, with its string arguments.
        let mut events = Vec::new();
        for (_, _, packet) in fields(&out) {
            let packet = fields(packet);
            for &(f, _, data) in &packet {
                if f != PACKET_INTERNED_DATA {
                    continue;
                }
                for (kind, _, entry) in fields(data) {
                    let e = fields(entry);
                    let iid = e.iter().find(|x| x.0 == INTERNED_IID).unwrap().1;
                    let name = e.iter().find(|x| x.0 == INTERNED_NAME).unwrap().2;
                    let name = String::from_utf8(name.to_vec()).unwrap();
                    match kind {
                        INTERNED_EVENT_NAMES => names.insert(iid, name),
                        INTERNED_ANNOTATION_STRINGS => strings.insert(iid, name),
                        _ => None,
                    };
                }
            }
            let ts = packet.iter().find(|x| x.0 == PACKET_TIMESTAMP).map(|x| x.1);
            let Some(&(_, _, event)) = packet.iter().find(|x| x.0 == PACKET_TRACK_EVENT) else {
                continue;
            };
            let event = fields(event);
            let get = |f| event.iter().find(|x| x.0 == f).map(|x| x.1);
            let args: Vec<String> = event
                .iter()
                .filter(|x| x.0 == EVENT_DEBUG_ANNOTATIONS)
                .filter_map(|x| {
                    fields(x.2)
                        .iter()
                        .find(|a| a.0 == ANNOTATION_STRING_IID)
                        .map(|a| a.1)
                })
                .map(|iid| strings[&iid].clone())
                .collect();
            let name = get(EVENT_NAME_IID).map(|iid| names[&iid].clone());
            events.push((get(EVENT_TRACK_UUID), ts, get(EVENT_TYPE), name, args));
        }
        let task = Some(task_uuid(0));
        let at = events
            .iter()
            .position(|e| e.3.as_deref() == Some("long_poll"))
            .expect("the diagnosis' instant");
        let (track, ts, kind, _, args) = &events[at];
        assert_eq!(
            (*track, *ts, *kind),
            (task, Some(1_000_000), Some(TYPE_INSTANT))
        );
        let message = crate::diagnosis::message(&summary.diagnoses[0]);
        assert_eq!(
            args,
            &[
                message,
                "demo::handle at src/main.rs:42".into(),
                "handler".into()
            ]
        );
        // Between the begin and the end of the poll it fell in, on the task's track.
        let before = events[..at].iter().rev().find(|e| e.0 == task).unwrap();
        assert_eq!(
            (before.2, before.3.as_deref()),
            (Some(TYPE_SLICE_BEGIN), Some("poll"))
        );
        let after = events[at + 1..].iter().find(|e| e.0 == task).unwrap();
        assert_eq!(after.2, Some(TYPE_SLICE_END));
    }

    #[test]
    fn strings_are_interned_once_and_defined_in_the_packet_that_first_uses_them() {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.event(7, 10, TYPE_SLICE_BEGIN, Some("poll"), &[], None)
            .unwrap();
        w.event(7, 20, TYPE_SLICE_END, None, &[], None).unwrap();
        w.event(7, 30, TYPE_SLICE_BEGIN, Some("poll"), &[], None)
            .unwrap();
        assert_eq!(w.packets, 3);
        assert_eq!(w.names.ids.len(), 1);
        assert!(w.names.new.is_empty());
        // "poll" is written once, in the first packet.
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("poll").count(), 1);
    }
}
