//! Which spans are tasks, and what they are called: tokio's `runtime.spawn` spans, and any span
//! with a field named `iotrace.task` (the mark-as-task convention). Also recognises tokio's
//! waker events, which say when a task was woken.

use iotrace_wire::{Callsite, CallsiteKind, FieldValue, Value};

/// What a task is, from its span's callsite and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// `task.name`, the `iotrace.task` value, or a fallback such as `task 12`.
    pub name: String,
    /// `task`, `local` or `blocking` (tokio's `kind`); marked spans are `task` unless they set
    /// `iotrace.blocking = true`.
    pub kind: String,
    /// Where it was spawned: tokio's `loc.file:loc.line:loc.col`, else the span's callsite.
    pub location: Option<String>,
    /// The program's own id for the task (tokio's `task.id`, or a `task.id` field).
    pub task_id: Option<u64>,
    /// A tokio task span: dropping the task enters the span once more (not a poll).
    pub tokio: bool,
}

impl TaskInfo {
    /// Tasks meant to block their thread (spawn_blocking, tokio's worker-thread spans).
    pub fn is_blocking(&self) -> bool {
        self.kind == "blocking"
    }
}

/// How a callsite's records are read.
#[derive(Debug, Clone)]
pub enum Class {
    /// A span callsite whose spans are tasks.
    Task(Box<TaskCallsite>),
    /// tokio's waker events.
    Waker {
        op: Option<usize>,
        task: Option<usize>,
    },
    Other,
}

#[derive(Debug, Clone)]
pub struct TaskCallsite {
    tokio: bool,
    fields: Vec<String>,
    span_name: String,
    file: Option<String>,
    line: Option<u32>,
}

pub fn classify(c: &Callsite) -> Class {
    match c.kind {
        CallsiteKind::Event if c.target == "tokio::task::waker" => Class::Waker {
            op: c.fields.iter().position(|f| f == "op"),
            task: c.fields.iter().position(|f| f == "task.id"),
        },
        CallsiteKind::Span
            if (c.name == "runtime.spawn" && c.target.starts_with("tokio"))
                || c.fields.iter().any(|f| f == "iotrace.task") =>
        {
            Class::Task(Box::new(TaskCallsite {
                tokio: c.name == "runtime.spawn",
                fields: c.fields.clone(),
                span_name: c.name.clone(),
                file: c.file.clone(),
                line: c.line,
            }))
        }
        _ => Class::Other,
    }
}

fn field<'a>(cs: &TaskCallsite, values: &'a [FieldValue], name: &str) -> Option<&'a Value> {
    let index = cs.fields.iter().position(|f| f == name)?;
    values
        .iter()
        .find(|v| usize::from(v.index) == index)
        .map(|v| &v.value)
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Str(s) if !s.is_empty() => Some(s.clone()),
        Value::U64(n) => Some(n.to_string()),
        Value::I64(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::U64(n) => Some(*n),
        Value::I64(n) => u64::try_from(*n).ok(),
        Value::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// Builds a task's description from its span's field values.
pub fn task_info(cs: &TaskCallsite, values: &[FieldValue]) -> TaskInfo {
    let task_id = number(field(cs, values, "task.id"));
    if cs.tokio {
        let kind = text(field(cs, values, "kind")).unwrap_or_else(|| "task".to_owned());
        let location = text(field(cs, values, "loc.file")).map(|file| {
            let mut loc = file;
            if let Some(line) = number(field(cs, values, "loc.line")) {
                loc.push_str(&format!(":{line}"));
                if let Some(col) = number(field(cs, values, "loc.col")) {
                    loc.push_str(&format!(":{col}"));
                }
            }
            loc
        });
        let name = text(field(cs, values, "task.name"))
            .or_else(|| text(field(cs, values, "fn")).map(|f| short_fn(&f)))
            .unwrap_or_else(|| match task_id {
                Some(id) => format!("{kind} {id}"),
                None => kind.clone(),
            });
        return TaskInfo {
            name,
            kind,
            location,
            task_id,
            tokio: true,
        };
    }
    let blocking = matches!(
        field(cs, values, "iotrace.blocking"),
        Some(Value::Bool(true))
    );
    let mut name = text(field(cs, values, "iotrace.task")).unwrap_or_else(|| cs.span_name.clone());
    if let Some(id) = task_id {
        name.push_str(&format!(" {id}"));
    }
    TaskInfo {
        name,
        kind: if blocking { "blocking" } else { "task" }.to_owned(),
        location: cs.file.as_ref().map(|f| match cs.line {
            Some(l) => format!("{f}:{l}"),
            None => f.clone(),
        }),
        task_id,
        tokio: false,
    }
}

/// `fn` of a blocking task is a closure type name such as `my_crate::main::{{closure}}`;
/// keep its last two meaningful path segments.
fn short_fn(f: &str) -> String {
    let parts: Vec<&str> = f
        .split("::")
        .filter(|p| !p.starts_with('{') && !p.is_empty())
        .collect();
    let n = parts.len();
    parts[n.saturating_sub(2)..].join("::")
}

/// What a tokio waker event does to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakerOp {
    /// `waker.wake` (`by_val`: the waker is used up), `waker.wake_by_ref`: the task is
    /// scheduled.
    Wake { by_val: bool },
    /// `waker.drop`: a stored waker is dropped.
    Drop,
    /// `waker.clone`: a future stores the task's waker (where it will yield, when the poll
    /// returns Pending).
    Clone,
}

fn waker_op(v: &Value) -> Option<WakerOp> {
    match v {
        Value::Str(s) if s == "waker.wake" => Some(WakerOp::Wake { by_val: true }),
        Value::Str(s) if s == "waker.wake_by_ref" => Some(WakerOp::Wake { by_val: false }),
        Value::Str(s) if s == "waker.clone" => Some(WakerOp::Clone),
        Value::Str(s) if s == "waker.drop" => Some(WakerOp::Drop),
        _ => None,
    }
}

/// If `values` of an event at `class` wake a task, the task's span id.
pub fn woken_span(class: Option<&Class>, values: &[FieldValue]) -> Option<u64> {
    match waker_event(class, values) {
        Some((WakerOp::Wake { .. }, span)) => Some(span),
        _ => None,
    }
}

/// If an event at `class` is a tokio waker event that wakes or stores a task's waker, what it
/// does and the task's span id.
pub fn waker_event(class: Option<&Class>, values: &[FieldValue]) -> Option<(WakerOp, u64)> {
    match class {
        Some(Class::Waker { op, task }) => {
            let op = values.iter().find(|v| Some(usize::from(v.index)) == *op)?;
            let task = values
                .iter()
                .find(|v| Some(usize::from(v.index)) == *task)?;
            match (waker_op(&op.value), &task.value) {
                (Some(op), Value::Span(id)) => Some((op, *id)),
                _ => None,
            }
        }
        Some(_) => None,
        // Callsite not known (yet): only waker events carry span-id values.
        None => {
            let op = values.iter().find_map(|v| waker_op(&v.value))?;
            let id = values.iter().find_map(|v| match v.value {
                Value::Span(id) => Some(id),
                _ => None,
            })?;
            Some((op, id))
        }
    }
}

/// Callsite classes by (pid, callsite key).
pub type Classes = rustc_hash::FxHashMap<(u32, u64), Class>;

#[cfg(test)]
mod tests {
    use super::*;
    use iotrace_wire::Level;

    fn callsite(name: &str, target: &str, fields: &[&str]) -> Callsite {
        Callsite {
            id: 1,
            kind: CallsiteKind::Span,
            level: Level::Trace,
            name: name.into(),
            target: target.into(),
            module: None,
            file: Some("src/main.rs".into()),
            line: Some(42),
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn fv(index: u8, value: Value) -> FieldValue {
        FieldValue { index, value }
    }

    #[test]
    fn tokio_task_spans_are_tasks_with_their_spawn_location() {
        let c = callsite(
            "runtime.spawn",
            "tokio::task",
            &[
                "kind",
                "task.name",
                "task.id",
                "loc.file",
                "loc.line",
                "loc.col",
            ],
        );
        let Class::Task(cs) = classify(&c) else {
            panic!("not a task")
        };
        let info = task_info(
            &cs,
            &[
                fv(0, Value::Str("task".into())),
                fv(1, Value::Str("".into())),
                fv(2, Value::U64(7)),
                fv(3, Value::Str("src/main.rs".into())),
                fv(4, Value::U64(42)),
                fv(5, Value::U64(9)),
            ],
        );
        assert_eq!(info.name, "task 7");
        assert_eq!(info.location.as_deref(), Some("src/main.rs:42:9"));
        assert!(info.tokio && !info.is_blocking());
    }

    #[test]
    fn a_field_named_iotrace_task_marks_a_task() {
        let c = callsite("green.task", "demo", &["iotrace.task", "task.id"]);
        let Class::Task(cs) = classify(&c) else {
            panic!("not a task")
        };
        let info = task_info(
            &cs,
            &[fv(0, Value::Str("conn".into())), fv(1, Value::U64(3))],
        );
        assert_eq!(info.name, "conn 3");
        assert_eq!(info.location.as_deref(), Some("src/main.rs:42"));
        assert!(!info.tokio);
        assert!(matches!(
            classify(&callsite("request", "demo", &["io_ms"])),
            Class::Other
        ));
    }

    #[test]
    fn waker_events_name_the_woken_span() {
        let mut c = callsite("event", "tokio::task::waker", &["op", "task.id"]);
        c.kind = CallsiteKind::Event;
        let class = classify(&c);
        let values = [
            fv(0, Value::Str("waker.wake".into())),
            fv(1, Value::Span(5)),
        ];
        assert_eq!(woken_span(Some(&class), &values), Some(5));
        assert_eq!(woken_span(None, &values), Some(5));
        let clone = [
            fv(0, Value::Str("waker.clone".into())),
            fv(1, Value::Span(5)),
        ];
        assert_eq!(woken_span(Some(&class), &clone), None);
        assert_eq!(waker_event(Some(&class), &clone), Some((WakerOp::Clone, 5)));
        assert_eq!(waker_event(None, &clone), Some((WakerOp::Clone, 5)));
        let drop = [
            fv(0, Value::Str("waker.drop".into())),
            fv(1, Value::Span(5)),
        ];
        assert_eq!(waker_event(Some(&class), &drop), Some((WakerOp::Drop, 5)));
    }
}
