//! The `tracing_subscriber::Layer` itself: turns span and event callbacks into records in the
//! calling thread's buffer. Enter and exit read the clock, find the span's never-reused id (in
//! a per-thread cache or stack, else in the registry) and copy 17 bytes.

use std::num::NonZeroU64;

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::Layer;

use crate::encode::{callsite_key, tag, Fields};
use crate::local::{self, Local};
use crate::sink::{self, Sink};
use crate::sys::now_ns;

/// Target of tokio's waker events, whose `task.id` is a tracing span id.
const WAKER_TARGET: &str = "tokio::task::waker";
/// tokio's resource instrumentation (timers, I/O resources, async ops): events have targets
/// `runtime::resource::*`, spans are named `runtime.resource*` with their module as target. A
/// dozen records per request that iotrace does not use, skipped unless asked for.
const RESOURCE_TARGET: &str = "runtime::resource";
const RESOURCE_SPAN: &str = "runtime.resource";

fn is_tokio_resource(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with(RESOURCE_TARGET)
        || (meta.is_span() && meta.name().starts_with(RESOURCE_SPAN))
}

/// The never-reused id of a span, kept in the span's registry extensions.
#[derive(Clone, Copy)]
struct SpanId(u64);

/// Records spans, enters, exits, closes and events for `iotrace record`.
///
/// Built by [`crate::layer`]. When `IOTRACE_SOCKET` is unset or unusable it is inert: every
/// callback returns at its first instruction.
pub struct IotraceLayer {
    sink: Option<&'static Sink>,
    /// Hint the global max level OFF while no recorder is attached, so that disabled spans
    /// cost what they cost with no subscriber. Only for `init()`'s registry + this layer: a
    /// composed subscriber's other layers must keep their own levels.
    off_while_detached: bool,
    resources: bool,
    waker_refcounts: bool,
    yield_sites: bool,
}

impl std::fmt::Debug for IotraceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IotraceLayer")
            .field("recording", &self.on())
            .finish()
    }
}

impl IotraceLayer {
    pub(crate) fn new(sink: Option<&'static Sink>) -> Self {
        IotraceLayer {
            sink,
            off_while_detached: false,
            resources: false,
            waker_refcounts: waker_drops_from_env(),
            yield_sites: yield_sites_from_env(),
        }
    }

    /// Record where tasks yield and what wakes them (on unless `IOTRACE_YIELD_SITES=0`): tokio's
    /// `waker.clone` events (a leaf future storing the waker before it returns Pending), and
    /// with every waker event the stack its thread's frame pointers give (about 40 frames,
    /// sent once per thread and distinct stack, then 8 bytes per event). Off, waker events are
    /// wakes only and carry no stack, as before version 2 of the wire.
    pub fn with_yield_sites(mut self, record: bool) -> Self {
        self.yield_sites = record;
        self
    }

    /// Record tokio's `waker.drop` events (on unless `IOTRACE_WAKER_DROPS=0`), and
    /// `waker.clone` even when yield sites are off: with them the analysis counts each task's
    /// live wakers, and names a task that returned Pending with none (`lost_waker`).
    pub fn with_waker_refcounts(mut self, record: bool) -> Self {
        self.waker_refcounts = record;
        self
    }

    /// Whether this layer leaves a callsite out (tokio's resource instrumentation, unless
    /// asked for).
    #[inline]
    fn skips(&self, meta: &Metadata<'_>) -> bool {
        self.on() && !self.resources && is_tokio_resource(meta)
    }

    /// Also record tokio's `runtime::resource*` spans and events (timers, I/O resources).
    /// Off by default: iotrace does not use them and they cost a dozen records per request.
    /// While off, this layer disables those callsites for the whole subscriber it is part of.
    pub fn with_tokio_resources(mut self, record: bool) -> Self {
        self.resources = record;
        self
    }

    /// See [`IotraceLayer::off_while_detached`].
    pub(crate) fn off_while_detached(mut self) -> Self {
        self.off_while_detached = true;
        self
    }

    /// Whether this layer can be attached to later (no `IOTRACE_SOCKET`; WIRE.md, "Attaching").
    pub(crate) fn is_attachable(&self) -> bool {
        self.sink.is_some_and(|s| s.attachable)
    }

    /// Whether this layer sends anything.
    pub fn is_recording(&self) -> bool {
        self.on()
    }

    #[inline]
    fn on(&self) -> bool {
        self.sink.is_some() && sink::is_on()
    }

    /// Tells this instance's entered spans apart from another instance's on the same thread.
    #[inline]
    fn key(&self) -> usize {
        self as *const Self as usize
    }
}

/// The environment's say on waker drops: on unless `IOTRACE_WAKER_DROPS=0`.
fn waker_drops_from_env() -> bool {
    std::env::var_os("IOTRACE_WAKER_DROPS").is_none_or(|v| v != "0")
}

/// The environment's say on yield sites: on unless `IOTRACE_YIELD_SITES=0`.
fn yield_sites_from_env() -> bool {
    std::env::var_os("IOTRACE_YIELD_SITES").is_none_or(|v| v != "0")
}

/// What a tokio waker event does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WakerOp {
    Clone,
    Drop,
    Wake,
    Other,
}

/// The `op` of a tokio waker event (no allocation, no format).
fn waker_op(event: &Event<'_>) -> WakerOp {
    struct Op(WakerOp);
    impl tracing::field::Visit for Op {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            if field.name() == "op" {
                self.0 = match value {
                    "waker.clone" => WakerOp::Clone,
                    "waker.drop" => WakerOp::Drop,
                    "waker.wake" | "waker.wake_by_ref" => WakerOp::Wake,
                    _ => WakerOp::Other,
                };
            }
        }
        fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
    }
    let mut op = Op(WakerOp::Other);
    event.record(&mut op);
    op.0
}

fn our_id<S>(span: &SpanRef<'_, S>) -> Option<u64>
where
    S: for<'a> LookupSpan<'a>,
{
    span.extensions().get::<SpanId>().map(|s| s.0)
}

fn lookup<S>(ctx: &Context<'_, S>, id: &Id) -> Option<u64>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    ctx.span(id).and_then(|s| our_id(&s))
}

/// Runs `f` on the thread's buffer, counting one dropped record if the buffer is unavailable.
#[inline]
fn write(f: impl FnOnce(&mut Local)) {
    if local::with(f).is_none() {
        sink::count_dropped(1);
    }
}

impl<S> Layer<S> for IotraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        if self.off_while_detached && !self.on() {
            return Some(tracing::level_filters::LevelFilter::OFF);
        }
        None
    }

    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.skips(meta) {
            return Interest::never();
        }
        if self.on() {
            sink::define_callsite(meta);
        }
        Interest::always()
    }

    /// The same decision as `register_callsite`, for callsites whose interest is "sometimes"
    /// (another dispatcher registered them first): a skipped callsite is never recorded, and
    /// so never used without having been defined.
    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        !self.skips(meta)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !self.on() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let parent = span.parent().and_then(|p| our_id(&p)).unwrap_or(0);
        let existing = our_id(&span);
        let key = callsite_key(attrs.metadata());
        let time = now_ns();
        let written = local::with(|l| {
            let sid = existing.unwrap_or_else(|| l.new_id());
            l.record(time, |e| {
                e.u8(tag::NEW_SPAN);
                e.u64(time);
                e.u64(sid);
                e.u64(parent);
                e.u64(key);
                let mut f = Fields::begin(e, None);
                attrs.record(&mut f);
                f.finish();
            });
            sid
        });
        let sid = written.unwrap_or_else(|| {
            sink::count_dropped(1);
            existing.unwrap_or_else(local::global_id)
        });
        if existing.is_none() {
            span.extensions_mut().insert(SpanId(sid));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if !self.on() {
            return;
        }
        let Some(sid) = lookup(&ctx, id) else { return };
        let time = now_ns();
        write(|l| {
            l.record(time, |e| {
                e.u8(tag::RECORD);
                e.u64(time);
                e.u64(sid);
                let mut f = Fields::begin(e, None);
                values.record(&mut f);
                f.finish();
            });
        });
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        if !self.on() {
            return;
        }
        let (Some(sid), Some(fid)) = (lookup(&ctx, id), lookup(&ctx, follows)) else {
            return;
        };
        let time = now_ns();
        write(|l| {
            l.record(time, |e| {
                e.u8(tag::FOLLOWS_FROM);
                e.u64(time);
                e.u64(sid);
                e.u64(fid);
            });
        });
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !self.on() {
            return;
        }
        let meta = event.metadata();
        let is_waker = meta.target() == WAKER_TARGET;
        let op = if is_waker {
            waker_op(event)
        } else {
            WakerOp::Other
        };
        let wanted = match op {
            WakerOp::Drop => self.waker_refcounts,
            WakerOp::Clone => self.waker_refcounts || self.yield_sites,
            WakerOp::Wake | WakerOp::Other => true,
        };
        if !wanted {
            return;
        }
        // Only waker events take a stack (and only they pay for the buffer). Walked here, not
        // in a closure: the stack's innermost frames must be this function and its callers.
        let mut walked = None;
        if self.yield_sites && matches!(op, WakerOp::Clone | WakerOp::Wake) {
            let mut frames = [0u64; iotrace_wire::MAX_STACK];
            let depth = crate::sys::frame_pointer_stack(&mut frames);
            walked = Some((frames, depth));
        }
        let parent = ctx.event_span(event).and_then(|s| our_id(&s)).unwrap_or(0);
        let resolve = |raw: u64| {
            let raw = NonZeroU64::new(raw)?;
            lookup(&ctx, &Id::from_non_zero_u64(raw))
        };
        let task_ids: Option<&dyn Fn(u64) -> Option<u64>> =
            if is_waker { Some(&resolve) } else { None };
        let key = callsite_key(meta);
        let time = now_ns();
        write(|l| {
            let stack = walked
                .as_ref()
                .filter(|w| w.1 > 0)
                .map(|(frames, depth)| l.stack_id(time, &frames[..*depth]));
            l.record(time, |e| {
                e.u8(if stack.is_some() {
                    tag::EVENT_AT
                } else {
                    tag::EVENT
                });
                e.u64(time);
                e.u64(parent);
                e.u64(key);
                if let Some(id) = stack {
                    e.u64(id);
                }
                let mut f = Fields::begin(e, task_ids);
                event.record(&mut f);
                f.finish();
            });
        });
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if !self.on() {
            return;
        }
        let time = now_ns();
        let (me, span) = (self.key(), id.into_u64());
        let epoch = local::close_epoch();
        let hit = local::with(|l| match l.cached(me, span, epoch) {
            Some(sid) => {
                l.push_entered(me, span, sid);
                l.fixed(tag::ENTER, time, sid);
                true
            }
            None => false,
        });
        match hit {
            Some(true) => {}
            Some(false) => {
                let Some(sid) = lookup(&ctx, id) else { return };
                write(|l| {
                    l.remember(me, span, sid, epoch);
                    l.push_entered(me, span, sid);
                    l.fixed(tag::ENTER, time, sid);
                });
            }
            None => sink::count_dropped(1),
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if !self.on() {
            return;
        }
        let time = now_ns();
        let me = self.key();
        let done = local::with(|l| match l.pop_entered(me, id.into_u64()) {
            Some(sid) => {
                l.fixed(tag::EXIT, time, sid);
                true
            }
            None => false,
        });
        match done {
            Some(true) => {}
            Some(false) => {
                if let Some(sid) = lookup(&ctx, id) {
                    write(|l| l.fixed(tag::EXIT, time, sid));
                }
            }
            None => sink::count_dropped(1),
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if !self.on() {
            return;
        }
        // Before the registry can hand this id to a new span.
        local::span_closed();
        let Some(sid) = lookup(&ctx, &id) else { return };
        let time = now_ns();
        write(|l| l.fixed(tag::CLOSE, time, sid));
    }
}
