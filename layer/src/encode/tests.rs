//! Unit tests of the record encodings against the byte layouts in `WIRE.md`.

use std::cell::RefCell;
use std::fmt;

use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use super::*;

/// A decoded field value (test-only mini reader of the `fields` block).
#[derive(Debug, PartialEq)]
enum V {
    U(u64),
    I(i64),
    B(bool),
    F(f64),
    S(String),
    Span(u64),
}

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn str(&mut self) -> String {
        let n = self.u16() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn fields(&mut self) -> Vec<(u8, V)> {
        let n = self.u8();
        (0..n)
            .map(|_| {
                let idx = self.u8();
                let v = match self.u8() {
                    ty::U64 => V::U(self.u64()),
                    ty::I64 => V::I(self.u64() as i64),
                    ty::BOOL => V::B(self.u8() != 0),
                    ty::F64 => V::F(f64::from_bits(self.u64())),
                    ty::STR => V::S(self.str()),
                    ty::SPAN => V::Span(self.u64()),
                    t => panic!("unknown type {t}"),
                };
                (idx, v)
            })
            .collect()
    }
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

fn fields_of(emit: impl FnOnce()) -> Vec<(u8, V)> {
    let sub = tracing_subscriber::registry().with(Capture);
    tracing::subscriber::with_default(sub, emit);
    CAPTURED.with(|c| Rd(&c.borrow()).fields())
}

#[test]
fn hello_is_magic_version_flags_pid() {
    let h = hello(0x0102_0304);
    assert_eq!(&h[..8], b"IOTRSPAN");
    assert_eq!(&h[8..10], &[1, 0]);
    assert_eq!(&h[10..12], &[0, 0]);
    assert_eq!(&h[12..16], &[4, 3, 2, 1]);
}

#[test]
fn frame_header_counts_bytes_after_the_length() {
    let mut f = vec![0u8; FRAME_HEADER + 17];
    fill_frame_header(&mut f, 42, 7, 9);
    let mut r = Rd(&f);
    assert_eq!(r.u32() as usize, FRAME_HEADER - 4 + 17);
    assert_eq!((r.u32(), r.u32(), r.u64()), (42, 7, 9));
}

#[test]
fn fixed_records_are_tag_time_span() {
    let rec = fixed_record(tag::EXIT, 123, 456);
    let mut r = Rd(&rec);
    assert_eq!((r.u8(), r.u64(), r.u64()), (tag::EXIT, 123, 456));
    assert!(r.0.is_empty());
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
    assert_eq!(vals[0], &V::U(5));
    assert_eq!(vals[1], &V::I(-3));
    assert_eq!(vals[2], &V::B(true));
    assert_eq!(vals[3], &V::F(1.5));
    assert_eq!(vals[4], &V::S("text".into()));
    assert_eq!(vals[5], &V::S("[1, 2]".into()));
    assert_eq!(vals[6], &V::S("shown".into()));
    assert_eq!(vals[7], &V::S(u128::MAX.to_string()));
    assert_eq!(vals[8], &V::S("x".repeat(MAX_VALUE_STR)));
    let idx: Vec<u8> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, (0..9).collect::<Vec<u8>>());
}

#[test]
fn long_debug_values_are_cut_at_the_cap() {
    let v = vec![7u8; 1000];
    let got = fields_of(|| tracing::info!(v = ?v));
    let V::S(s) = &got[0].1 else {
        panic!("not a string: {got:?}")
    };
    assert_eq!(s.len(), MAX_VALUE_STR);
    assert!(s.starts_with("[7, 7"));
}

#[test]
fn task_id_is_translated_only_when_resolvable() {
    let got = fields_of(|| tracing::trace!(op = "waker.wake", task.id = 5u64));
    assert_eq!(got[0].1, V::S("waker.wake".into()));
    assert_eq!(got[1].1, V::Span(1005));
    let got = fields_of(|| tracing::trace!(task.id = 7u64));
    assert_eq!(got[0].1, V::U(7), "unresolvable ids stay plain u64");
}

#[test]
fn absent_fields_are_not_sent() {
    let got = fields_of(|| {
        let none: Option<u64> = None;
        tracing::info!(a = none, b = 1u64)
    });
    assert_eq!(got, vec![(1, V::U(1))]);
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
    let mut r = Rd(&out);
    assert_eq!(r.u8(), tag::CALLSITE);
    assert_eq!(r.u64(), callsite_key(meta));
    assert_eq!(r.u8(), 0, "kind span");
    assert_eq!(r.u8(), 2, "INFO");
    assert_eq!(r.u32(), meta.line().unwrap_or(0));
    assert_eq!(r.str(), "my_span");
    assert_eq!(r.str(), "my::target");
    assert_eq!(r.str(), module_path!());
    assert_eq!(r.str(), file!());
    assert_eq!(r.u8(), 2);
    assert_eq!((r.str(), r.str()), ("x".to_string(), "y".to_string()));
    assert!(r.0.is_empty());
}
