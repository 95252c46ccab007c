//! Unit tests of the record encodings against the byte layouts in `WIRE.md`.

use std::cell::RefCell;
use std::fmt;

use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use super::*;
use iotrace_wire::{SpanEvent, Value as V};

/// Decodes `records` with the recorder's own decoder (`iotrace-wire`), as one frame.
fn decode(records: &[u8]) -> Vec<SpanEvent> {
    let mut frame = vec![0u8; FRAME_HEADER];
    frame.extend_from_slice(records);
    fill_frame_header(&mut frame, 1, 2, 0);
    let len = iotrace_wire::frame_len(frame[..4].try_into().unwrap()).expect("frame length");
    assert_eq!(len, frame.len() - 4);
    iotrace_wire::decode_frame(&frame[4..])
        .expect("the recorder decodes what the layer encodes")
        .events
}

thread_local! {
    static CAPTURED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes each event's fields (with `task.id` resolved to `id + 1000`) into `CAPTURED`.
struct Capture;

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let resolve = |raw: u64| (raw != 7).then_some(raw + 1000);
        CAPTURED.with(|c| {
            let mut out = c.borrow_mut();
            out.clear();
            let mut e = Enc::new(&mut out, 4096);
            let mut f = Fields::begin(&mut e, Some(&resolve));
            event.record(&mut f);
            f.finish();
            assert!(e.commit());
        });
    }
}

/// The fields of the one event `emit` makes, as the recorder decodes them: `(index, value)`.
fn fields_of(emit: impl FnOnce()) -> Vec<(u8, V)> {
    let sub = tracing_subscriber::registry().with(Capture);
    tracing::subscriber::with_default(sub, emit);
    let mut record = vec![tag::EVENT];
    record.extend_from_slice(&[0; 24]); // time, span, callsite
    CAPTURED.with(|c| record.extend_from_slice(&c.borrow()));
    match decode(&record).pop() {
        Some(SpanEvent::Event { fields, .. }) => {
            fields.into_iter().map(|f| (f.index, f.value)).collect()
        }
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn hello_is_magic_version_flags_pid() {
    let h = hello(0x0102_0304);
    assert_eq!(&h[..8], b"IOTRSPAN");
    assert_eq!(&h[8..10], &[2, 0]);
    assert_eq!(&h[10..12], &[0, 0]);
    assert_eq!(&h[12..16], &[4, 3, 2, 1]);
}

#[test]
fn frame_header_counts_bytes_after_the_length() {
    let mut f = vec![0u8; FRAME_HEADER];
    f.extend_from_slice(&fixed_record(tag::ENTER, 1, 2));
    fill_frame_header(&mut f, 42, 7, 9);
    assert_eq!(
        u32::from_le_bytes(f[..4].try_into().unwrap()) as usize,
        f.len() - 4
    );
    let batch = iotrace_wire::decode_frame(&f[4..]).unwrap();
    assert_eq!((batch.pid, batch.tid, batch.dropped_total), (42, 7, 9));
}

#[test]
fn fixed_records_are_tag_time_span() {
    let rec = fixed_record(tag::EXIT, 123, 456);
    assert_eq!(rec.len(), FIXED_RECORD);
    assert_eq!(
        decode(&rec),
        [SpanEvent::Exit {
            time: 123,
            span: 456
        }]
    );
}

#[test]
fn truncation_keeps_whole_characters() {
    assert_eq!(truncate_str("héllo", 2), "h");
    assert_eq!(truncate_str("héllo", 3), "hé");
    assert_eq!(truncate_str("abc", 10), "abc");
}

#[test]
fn overflowing_record_is_rolled_back_and_buffer_never_grows() {
    let mut buf = Vec::with_capacity(16);
    buf.extend_from_slice(&[9; 10]);
    let cap = buf.capacity();
    let mut e = Enc::new(&mut buf, 16);
    e.u32(1);
    e.u64(2);
    assert!(!e.commit());
    assert_eq!(buf, vec![9; 10]);
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn record_is_rolled_back_when_a_debug_impl_panics() {
    struct Boom;
    impl fmt::Debug for Boom {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            panic!("boom")
        }
    }
    let mut buf = vec![1u8, 2];
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut e = Enc::new(&mut buf, 100);
        e.u8(tag::EVENT);
        e.debug(&Boom);
        e.commit()
    }));
    assert!(r.is_err());
    assert_eq!(buf, vec![1, 2]);
}

#[test]
fn every_value_type_round_trips() {
    let long = "x".repeat(2000);
    let got = fields_of(|| {
        tracing::info!(
            a = 5u64,
            b = -3i64,
            c = true,
            d = 1.5f64,
            e = "text",
            f = ?vec![1, 2],
            g = %"shown",
            h = u128::MAX,
            i = long.as_str(),
        )
    });
    // index 0 is `message`-less events' first field: `a`.
    let vals: Vec<&V> = got.iter().map(|(_, v)| v).collect();
    assert_eq!(vals[0], &V::U64(5));
    assert_eq!(vals[1], &V::I64(-3));
    assert_eq!(vals[2], &V::Bool(true));
    assert_eq!(vals[3], &V::F64(1.5));
    assert_eq!(vals[4], &V::Str("text".into()));
    assert_eq!(vals[5], &V::Str("[1, 2]".into()));
    assert_eq!(vals[6], &V::Str("shown".into()));
    assert_eq!(vals[7], &V::Str(u128::MAX.to_string()));
    assert_eq!(vals[8], &V::Str("x".repeat(MAX_VALUE_STR)));
    let idx: Vec<u8> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, (0..9).collect::<Vec<u8>>());
}

#[test]
fn long_debug_values_are_cut_at_the_cap() {
    let v = vec![7u8; 1000];
    let got = fields_of(|| tracing::info!(v = ?v));
    let V::Str(s) = &got[0].1 else {
        panic!("not a string: {got:?}")
    };
    assert_eq!(s.len(), MAX_VALUE_STR);
    assert!(s.starts_with("[7, 7"));
}

#[test]
fn task_id_is_translated_only_when_resolvable() {
    let got = fields_of(|| tracing::trace!(op = "waker.wake", task.id = 5u64));
    assert_eq!(got[0].1, V::Str("waker.wake".into()));
    assert_eq!(got[1].1, V::Span(1005));
    let got = fields_of(|| tracing::trace!(task.id = 7u64));
    assert_eq!(got[0].1, V::U64(7), "unresolvable ids stay plain u64");
}

#[test]
fn absent_fields_are_not_sent() {
    let got = fields_of(|| {
        let none: Option<u64> = None;
        tracing::info!(a = none, b = 1u64)
    });
    assert_eq!(got, vec![(1, V::U64(1))]);
}

#[test]
fn callsite_record_layout() {
    let sub = tracing_subscriber::registry();
    let meta = tracing::subscriber::with_default(sub, || {
        tracing::info_span!(target: "my::target", "my_span", x = 1u64, y = 2u64).metadata()
    })
    .expect("an enabled span has metadata");
    check_callsite(meta);
}

fn check_callsite(meta: &'static tracing::Metadata<'static>) {
    let mut out = Vec::new();
    callsite(&mut out, meta);
    let [SpanEvent::Callsite(c)] = &decode(&out)[..] else {
        panic!("not one callsite record");
    };
    assert_eq!(
        c,
        &iotrace_wire::Callsite {
            id: callsite_key(meta),
            kind: iotrace_wire::CallsiteKind::Span,
            level: iotrace_wire::Level::Info,
            name: "my_span".into(),
            target: "my::target".into(),
            module: Some(module_path!().into()),
            file: Some(file!().into()),
            line: meta.line(),
            fields: vec!["x".into(), "y".into()],
        }
    );
}
