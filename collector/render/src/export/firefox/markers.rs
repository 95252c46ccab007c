//! The Firefox export's marker schemas: blocked stretches, polls, spans, and the diagnoses,
//! each moment of which is an instant marker named after its kind on the worker thread it
//! happened on most (else the process's main thread), with the message, line and task.

use std::collections::HashMap;

use fxprof_processed_profile::{
    CategoryColor, CategoryHandle, MarkerFieldFlags, MarkerFieldFormat, MarkerTiming, Profile,
    StaticSchemaMarker, StaticSchemaMarkerField, StringHandle, ThreadHandle, Timestamp,
};

use iotrace_analysis::stacks::StackFold;
use iotrace_analysis::symbolize::KernelSymbols;
use iotrace_analysis::tasks::diagnosis::{settle, MAX_MOMENTS};
use iotrace_analysis::tasks::{naming, Diagnosis};

pub(super) struct BlockedMarker {
    pub(super) name: StringHandle,
    pub(super) category: CategoryHandle,
    pub(super) syscall: StringHandle,
}

impl StaticSchemaMarker for BlockedMarker {
    const UNIQUE_MARKER_TYPE_NAME: &'static str = "iotrace-blocked";
    const DESCRIPTION: Option<&'static str> =
        Some("The thread was switched out voluntarily (off CPU), in this syscall");
    const CHART_LABEL: Option<&'static str> = Some("{marker.data.syscall}");
    const TABLE_LABEL: Option<&'static str> = Some("blocked in {marker.data.syscall}");
    const FIELDS: &'static [StaticSchemaMarkerField] = &[StaticSchemaMarkerField {
        key: "syscall",
        label: "Syscall",
        format: MarkerFieldFormat::String,
        flags: MarkerFieldFlags::SEARCHABLE,
    }];

    fn name(&self, _: &mut Profile) -> StringHandle {
        self.name
    }
    fn category(&self, _: &mut Profile) -> CategoryHandle {
        self.category
    }
    fn string_field_value(&self, _: u32) -> StringHandle {
        self.syscall
    }
    fn number_field_value(&self, _: u32) -> f64 {
        0.0
    }
}

#[derive(Clone, Copy)]
pub(super) struct PollMarker {
    pub(super) name: StringHandle,
    pub(super) category: CategoryHandle,
    pub(super) task: StringHandle,
    pub(super) location: StringHandle,
    pub(super) on_cpu_ms: f64,
    pub(super) blocked_ms: f64,
}

impl StaticSchemaMarker for PollMarker {
    const UNIQUE_MARKER_TYPE_NAME: &'static str = "iotrace-poll";
    const DESCRIPTION: Option<&'static str> = Some(
        "A poll of an async task on this worker thread; `poll (blocked)` when it blocked the thread",
    );
    const CHART_LABEL: Option<&'static str> = Some("{marker.data.task}");
    const TABLE_LABEL: Option<&'static str> = Some("{marker.name} {marker.data.task}");
    const FIELDS: &'static [StaticSchemaMarkerField] = &[
        StaticSchemaMarkerField {
            key: "task",
            label: "Task",
            format: MarkerFieldFormat::String,
            flags: MarkerFieldFlags::SEARCHABLE,
        },
        StaticSchemaMarkerField {
            key: "location",
            label: "Spawned at",
            format: MarkerFieldFormat::String,
            flags: MarkerFieldFlags::SEARCHABLE,
        },
        StaticSchemaMarkerField {
            key: "onCpu",
            label: "On CPU",
            format: MarkerFieldFormat::Milliseconds,
            flags: MarkerFieldFlags::empty(),
        },
        StaticSchemaMarkerField {
            key: "blocked",
            label: "Blocked (off CPU)",
            format: MarkerFieldFormat::Milliseconds,
            flags: MarkerFieldFlags::empty(),
        },
    ];

    fn name(&self, _: &mut Profile) -> StringHandle {
        self.name
    }
    fn category(&self, _: &mut Profile) -> CategoryHandle {
        self.category
    }
    fn string_field_value(&self, i: u32) -> StringHandle {
        if i == 0 {
            self.task
        } else {
            self.location
        }
    }
    fn number_field_value(&self, i: u32) -> f64 {
        if i == 2 {
            self.on_cpu_ms
        } else {
            self.blocked_ms
        }
    }
}

pub(super) struct SpanMarker {
    pub(super) name: StringHandle,
    pub(super) category: CategoryHandle,
    pub(super) target: StringHandle,
}

impl StaticSchemaMarker for SpanMarker {
    const UNIQUE_MARKER_TYPE_NAME: &'static str = "iotrace-span";
    const DESCRIPTION: Option<&'static str> =
        Some("A tracing span entered on this thread (from the program's iotrace layer)");
    const CHART_LABEL: Option<&'static str> = Some("{marker.name}");
    const FIELDS: &'static [StaticSchemaMarkerField] = &[StaticSchemaMarkerField {
        key: "target",
        label: "Target",
        format: MarkerFieldFormat::String,
        flags: MarkerFieldFlags::SEARCHABLE,
    }];

    fn name(&self, _: &mut Profile) -> StringHandle {
        self.name
    }
    fn category(&self, _: &mut Profile) -> CategoryHandle {
        self.category
    }
    fn string_field_value(&self, _: u32) -> StringHandle {
        self.target
    }
    fn number_field_value(&self, _: u32) -> f64 {
        0.0
    }
}

#[derive(Clone, Copy)]
pub(super) struct DiagnosisMarker {
    name: StringHandle,
    category: CategoryHandle,
    message: StringHandle,
    line: StringHandle,
    task: StringHandle,
}

impl StaticSchemaMarker for DiagnosisMarker {
    const UNIQUE_MARKER_TYPE_NAME: &'static str = "iotrace-diagnosis";
    const DESCRIPTION: Option<&'static str> =
        Some("An async bug iotrace diagnosed, at one of the moments it happened");
    const CHART_LABEL: Option<&'static str> = Some("{marker.name}");
    const TOOLTIP_LABEL: Option<&'static str> = Some("{marker.data.message}");
    const TABLE_LABEL: Option<&'static str> = Some("{marker.name}: {marker.data.message}");
    const FIELDS: &'static [StaticSchemaMarkerField] = &[
        StaticSchemaMarkerField {
            key: "message",
            label: "Diagnosis",
            format: MarkerFieldFormat::String,
            flags: MarkerFieldFlags::SEARCHABLE,
        },
        StaticSchemaMarkerField {
            key: "line",
            label: "Line",
            format: MarkerFieldFormat::String,
            flags: MarkerFieldFlags::SEARCHABLE,
        },
        StaticSchemaMarkerField {
            key: "task",
            label: "Task",
            format: MarkerFieldFormat::String,
            flags: MarkerFieldFlags::SEARCHABLE,
        },
    ];

    fn name(&self, _: &mut Profile) -> StringHandle {
        self.name
    }
    fn category(&self, _: &mut Profile) -> CategoryHandle {
        self.category
    }
    fn string_field_value(&self, i: u32) -> StringHandle {
        match i {
            0 => self.message,
            1 => self.line,
            _ => self.task,
        }
    }
    fn number_field_value(&self, _: u32) -> f64 {
        0.0
    }
}

/// Names the diagnoses' stacks in the second pass's `fold` (their `line`), settles them, and
/// adds their moments to the profile as markers.
pub(super) fn diagnoses(
    b: &mut super::Builder<'_>,
    fold: &mut StackFold,
    kernel: Option<&KernelSymbols>,
    diagnoses: &mut Vec<Diagnosis>,
) {
    let ids = naming::diagnosis_stack_ids(diagnoses);
    if !ids.is_empty() {
        let names = naming::names_in(fold, &ids, kernel);
        naming::apply_diagnosis_names(&names, diagnoses);
    }
    settle(diagnoses);
    let mut threads = HashMap::new();
    for d in diagnoses.iter() {
        let tid = thread_of(d);
        if let Some(t) = b.thread(tid, d.pid) {
            threads.insert(tid, t);
        }
    }
    add_diagnoses(&mut b.profile, diagnoses, b.start_ns, b.window, &threads);
}

/// The thread a diagnosis' markers go on: its worker, else its process's main thread.
fn thread_of(d: &Diagnosis) -> u32 {
    if d.tid != 0 {
        d.tid
    } else {
        d.pid
    }
}

/// Adds each moment of `diagnoses` within `window` (ns on the trace's clock; the moments are
/// since `start_ns`) as an instant marker on its thread in `threads`, in a `Diagnosis`
/// category made when there is one. Returns the markers added.
pub(super) fn add_diagnoses(
    profile: &mut Profile,
    diagnoses: &[Diagnosis],
    start_ns: u64,
    window: (u64, u64),
    threads: &HashMap<u32, ThreadHandle>,
) -> u64 {
    let mut category = None;
    let mut added = 0;
    for d in diagnoses {
        let Some(&thread) = threads.get(&thread_of(d)) else {
            continue;
        };
        let mut marker = None;
        for &at in d.at_ns.iter().take(MAX_MOMENTS) {
            let t = start_ns.saturating_add(at);
            if t < window.0 || t >= window.1 {
                continue;
            }
            let category = *category
                .get_or_insert_with(|| profile.add_category("Diagnosis", CategoryColor::Magenta));
            let m = marker.get_or_insert_with(|| DiagnosisMarker {
                name: profile.intern_string(d.kind),
                category,
                message: profile.intern_string(&crate::diagnosis::message(d)),
                line: profile.intern_string(d.line.as_deref().unwrap_or("")),
                task: profile.intern_string(&d.task),
            });
            let m = *m;
            let ts = Timestamp::from_nanos_since_reference(at);
            profile.add_marker(thread, MarkerTiming::Instant(ts), m);
            added += 1;
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{diagnosed, PID, WORKER};
    use fxprof_processed_profile::{ReferenceTimestamp, SamplingInterval};

    #[test]
    fn a_diagnosis_is_an_instant_marker_on_its_worker_thread() {
        let (summary, _) = diagnosed();
        let mut profile = Profile::new(
            "demo",
            ReferenceTimestamp::from_millis_since_unix_epoch(0.0),
            SamplingInterval::from_millis(1),
        );
        let process = profile.add_process("demo", PID, Timestamp::from_millis_since_reference(0.0));
        let main = profile.add_thread(
            process,
            PID,
            Timestamp::from_millis_since_reference(0.0),
            true,
        );
        let worker = profile.add_thread(
            process,
            WORKER,
            Timestamp::from_millis_since_reference(0.0),
            false,
        );
        let threads = HashMap::from([(PID, main), (WORKER, worker)]);
        // A window that leaves it out adds nothing.
        let start = 5_000;
        let none = add_diagnoses(
            &mut profile,
            &summary.diagnoses,
            start,
            (0, start + 10),
            &threads,
        );
        assert_eq!(none, 0);
        let added = add_diagnoses(
            &mut profile,
            &summary.diagnoses,
            start,
            (0, u64::MAX),
            &threads,
        );
        assert_eq!(added, 1);
        let p = serde_json::to_value(&profile).unwrap();
        let schema = p["meta"]["markerSchema"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "iotrace-diagnosis")
            .expect("the diagnosis schema");
        assert_eq!(schema["fields"][0]["key"], "message");
        let t = p["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tid"].as_str() == Some(WORKER.to_string().as_str()))
            .expect("the worker thread");
        let m = &t["markers"];
        assert_eq!(m["length"], 1, "{m}");
        assert_eq!(m["phase"][0], 0, "an instant");
        assert_eq!(
            m["startTime"][0].as_f64(),
            Some(1.0),
            "1 ms into the recording"
        );
        let data = &m["data"][0];
        assert_eq!(data["type"], "iotrace-diagnosis");
        let strings = t["stringArray"].as_array().unwrap();
        let name = m["name"][0].as_u64().unwrap() as usize;
        assert_eq!(strings[name], "long_poll");
        let text = |v: &serde_json::Value| match v.as_u64() {
            Some(i) => strings[i as usize].clone(),
            None => v.clone(),
        };
        let message = crate::diagnosis::message(&summary.diagnoses[0]);
        assert_eq!(text(&data["message"]), message);
        assert_eq!(text(&data["line"]), "demo::handle at src/main.rs:42");
        assert_eq!(text(&data["task"]), "handler");
    }
}
