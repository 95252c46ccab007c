//! Unit tests of the interval store.

use super::*;

#[test]
fn tracks_are_sorted_and_disjoint() {
    let iv = |start, end| ThreadIv {
        start,
        end,
        state: RUNNING,
        syscall: 0,
        stack: None,
        waker: None,
        merged: 0,
    };
    let mut v = vec![iv(10, 20), iv(0, 12), iv(15, 18), iv(30, 40)];
    normalize(&mut v);
    let spans: Vec<(u64, u64)> = v.iter().map(|i| (i.start, i.end)).collect();
    assert_eq!(spans, [(0, 12), (12, 20), (30, 40)]);
}

#[test]
fn idle_stretches_keep_their_yield_site_through_the_store() {
    let mut store = Store::default();
    let track = store.track();
    let mut idle = TaskIv::new(10, 20, IDLE);
    idle.yield_stack = Some(0);
    idle.yield_spans = Some(7);
    let unknown = TaskIv::new(30, 40, IDLE);
    let mut poll = TaskIv::new(20, 30, POLL);
    poll.tid = 5;
    for iv in [idle, poll, unknown] {
        store.push(track, iv.start, iv.end, |enc| iv.encode(enc));
    }
    let got: Vec<TaskIv> = Ivs::new(&store, track).unwrap().collect();
    assert_eq!(
        got.iter()
            .map(|i| (i.state, i.yield_stack, i.yield_spans, i.tid))
            .collect::<Vec<_>>(),
        [
            (IDLE, Some(0), Some(7), 0),
            (POLL, None, None, 5),
            (IDLE, None, None, 0)
        ]
    );
}

fn wake(n: u64) -> WakeEdge {
    WakeEdge {
        task: TaskKey { pid: 1, span: 2 },
        woken: n * 10,
        polled: n * 10 + 5,
        waker_tid: 3,
        by: crate::tasks::WakeSource::Thread {
            tid: 3,
            stack: None,
        },
    }
}

#[test]
fn wakes_past_the_limit_are_thinned_evenly_and_counted() {
    let mut col = Collected {
        max_wakes: 10,
        wake_stride: 1,
        ..Collected::default()
    };
    for n in 0..100 {
        col.wake(&wake(n));
    }
    let kept: Vec<u64> = col.wakes().iter().map(|w| w.woken / 10).collect();
    assert!(kept.len() <= 10 && kept.len() >= 5, "{kept:?}");
    // Evenly spread: a constant step from the first wake on.
    let step = kept[1] - kept[0];
    assert!(kept.windows(2).all(|w| w[1] - w[0] == step), "{kept:?}");
    assert_eq!(kept[0], 0);
    assert!(*kept.last().unwrap() + step >= 100 - step, "{kept:?}");
    assert_eq!(col.wakes_left_out(), 100 - kept.len() as u64);
    // No limit keeps them all.
    let mut all = Collected {
        wake_stride: 1,
        ..Collected::default()
    };
    for n in 0..100 {
        all.wake(&wake(n));
    }
    assert_eq!((all.wakes().len(), all.wakes_left_out()), (100, 0));
}

#[test]
fn a_yield_site_reads_as_the_report_names_it() {
    let mut names = StackNames::new();
    names.insert(
        4,
        vec![
            (
                "tokio::time::sleep::Sleep::poll_elapsed at sleep.rs:431".into(),
                false,
            ),
            (
                "<tokio::time::sleep::Sleep as core::future::future::Future>::poll at sleep.rs:457"
                    .into(),
                false,
            ),
            ("app::tick::{{closure}} at src/main.rs:40".into(), false),
        ],
    );
    let chains = vec!["conn > read".to_owned()];
    assert_eq!(
        yield_site_line(&names, &chains, Some(4), None).as_deref(),
        Some("tokio::time::sleep::Sleep in app::tick at src/main.rs:40")
    );
    assert_eq!(
        yield_site_line(&names, &chains, Some(9), Some(0)).as_deref(),
        Some("stack 9 (not named) (in span conn > read)")
    );
    assert_eq!(
        yield_site_line(&names, &chains, None, Some(0)).as_deref(),
        Some("in span conn > read")
    );
    assert_eq!(yield_site_line(&names, &chains, None, None), None);
}
