//! The diagnoses in the timeline page: `"diagnoses":[…]`, each with its message and the
//! track its markers go on (the diagnosed task's, else its worker thread's), which the page
//! lists above the tracks and marks at each of its moments.

use std::io::{self, Write};

use serde::Serialize;

use iotrace_analysis::summary::Summary;
use iotrace_analysis::tasks::diagnosis::MAX_MOMENTS;

/// One diagnosis as the page reads it.
#[derive(Serialize)]
struct PageDiagnosis<'a> {
    kind: &'a str,
    task: &'a str,
    task_id: u64,
    pid: u32,
    tid: u32,
    line: Option<&'a str>,
    message: String,
    /// Its moments, ns since the recording started: the page's time base (its stretches are
    /// since the trace header's start, as the diagnoses' moments are).
    at_ns: &'a [u64],
    count: u64,
    cost_ns: u64,
    /// Index into the page's tracks (threads, then tasks); -1 when neither has one.
    track: i64,
}

/// Writes `,"diagnoses":[…]`.
pub(crate) fn write(summary: &Summary, w: &mut impl Write) -> io::Result<()> {
    let (threads, tasks) = super::track_indexes(summary);
    w.write_all(b",\"diagnoses\":[")?;
    for (i, d) in summary.diagnoses.iter().enumerate() {
        let track = tasks
            .get(&iotrace_analysis::tasks::TaskKey {
                pid: d.pid,
                span: d.task_id,
            })
            .or_else(|| threads.get(&d.tid).filter(|_| d.tid != 0))
            .map_or(-1, |&t| t as i64);
        let page = PageDiagnosis {
            kind: d.kind,
            task: &d.task,
            task_id: d.task_id,
            pid: d.pid,
            tid: d.tid,
            line: d.line.as_deref(),
            message: crate::diagnosis::message(d),
            at_ns: &d.at_ns[..d.at_ns.len().min(MAX_MOMENTS)],
            count: d.count,
            cost_ns: d.cost_ns,
            track,
        };
        let json = serde_json::to_string(&page).map_err(io::Error::other)?;
        if i > 0 {
            w.write_all(b",")?;
        }
        // Safe inside the page's <script> element: `<`, `>` and the line separators only
        // occur in strings, where their escapes mean the same.
        let json = json
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029");
        w.write_all(json.as_bytes())?;
    }
    w.write_all(b"]")
}

#[cfg(test)]
mod tests {
    use super::super::page;
    use crate::fixtures::{diagnosed, TASK, WORKER};
    use serde_json::Value;

    /// The page of `summary` and `col`, and its data.
    fn page_data(
        summary: &iotrace_analysis::summary::Summary,
        col: &iotrace_analysis::intervals::Collected,
    ) -> (String, Value) {
        let mut out = Vec::new();
        let tracks =
            page::write_tracks(summary, col, None, &mut out).unwrap_or_else(|_| panic!("write"));
        page::write_tail(summary, col, tracks.strings, &Default::default(), &mut out).unwrap();
        let html = String::from_utf8(out).unwrap();
        let open = "<script id=\"data\" type=\"application/json\">";
        let at = html.find(open).unwrap() + open.len();
        let end = at + html[at..].find("</script>").unwrap();
        let data = serde_json::from_str(&html[at..end]).expect("the page's data is JSON");
        (html, data)
    }

    #[test]
    fn the_page_lists_each_diagnosis_with_its_moments_and_the_tasks_track() {
        let (mut summary, col) = diagnosed();
        summary.diagnoses[0].task = "</script><b>".into();
        let (html, data) = page_data(&summary, &col);
        assert!(!html.contains("</script><b>"));
        let ds = data["diagnoses"].as_array().expect("diagnoses");
        assert_eq!(ds.len(), 1);
        let d = &ds[0];
        assert_eq!(d["kind"], "long_poll");
        assert_eq!(d["task"], "</script><b>");
        assert_eq!(d["task_id"], TASK);
        assert_eq!(d["tid"], WORKER);
        assert_eq!(d["line"], "demo::handle at src/main.rs:42");
        assert_eq!(
            d["message"],
            crate::diagnosis::message(&summary.diagnoses[0])
        );
        assert_eq!(d["at_ns"], serde_json::json!([1_000_000]));
        assert_eq!(
            (d["count"].as_u64(), d["cost_ns"].as_u64()),
            (Some(1), Some(1_000_000))
        );
        // Three thread tracks, then the task's.
        assert_eq!(d["track"], 3);
        assert_eq!(data["tracks"][3]["label"], "handler");
        // The task's poll starts at the same moment, in the page's time base.
        let iv = data["tracks"][3]["iv"].as_array().unwrap();
        assert_eq!((iv[4].as_u64(), iv[6].as_u64()), (Some(1_000_000), Some(3)));
        // A task without a track: its worker's; neither: none.
        summary.diagnoses[0].task_id = 7;
        assert_eq!(page_data(&summary, &col).1["diagnoses"][0]["track"], 1);
        summary.diagnoses[0].tid = 0;
        assert_eq!(page_data(&summary, &col).1["diagnoses"][0]["track"], -1);
    }
}
