//! iotrace's fuzzer: an in-process mutation loop over every decoder that reads input from
//! outside the recorder, on stable Rust.
//!
//! Why a crate of its own and not cargo-fuzz: cargo-fuzz needs a nightly compiler, which CI
//! does not have; a loop with `catch_unwind` runs wherever `cargo test` does, so a short run
//! is part of the test suite and a long one is `scripts/fuzz.sh`. The crate also installs the
//! global allocator that measures each input's largest single allocation (a length field
//! that claims gigabytes must not allocate them), which must stay out of iotrace's binaries.
//!
//! The targets ([`targets`]) are the trace file reader (whole files, and single frames whose
//! length and checksum are fixed up so mutations reach the record decoders behind them), the
//! span wire decoder, and the perf record parsers; each feeds what it decoded on into the
//! analysis and the report, as `iotrace report` would. Seeds come from real traces
//! (`fuzz/seeds/`, and any recorded at run time). The mutations ([`mutate`]) are bit flips,
//! byte sets, truncation, splicing, insertion and deletion, and length-field inflation.
//!
//! ```no_run
//! let seeds = iotrace_fuzz::targets::Seeds::committed();
//! for target in iotrace_fuzz::targets::Target::ALL {
//!     let outcome = iotrace_fuzz::fuzz_target(target, &seeds, 10_000, 1);
//!     assert_eq!(outcome.panics, 0, "{:?}", outcome.failures);
//! }
//! ```

#![deny(unsafe_code)]

pub mod mutate;
pub mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

/// An input whose largest single allocation is above this counts as a failure: no frame may
/// need more than the format's 16 MiB limit, plus room for what decoding it builds.
pub const ALLOC_LIMIT: usize = 64 << 20;

/// Failing inputs kept per run (all are counted).
const KEEP_FAILURES: usize = 16;

/// The system allocator, noting the largest single allocation of the current thread.
pub struct CountingAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

/// The counting allocator's forwarding to the system allocator, and getrusage: all of this
/// crate's `unsafe`.
#[allow(unsafe_code)]
mod sys {
    use super::*;

    /// This process's peak RSS in KiB (getrusage's ru_maxrss).
    pub fn peak_rss_kb() -> i64 {
        // SAFETY: rusage is plain data, so zeroed is a valid value, and getrusage only writes it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a live, exclusively borrowed rusage.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        ru.ru_maxrss
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the only addition is a
    // thread-local counter that does not allocate.
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller's contract for `alloc` is passed on as is.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// A tiny deterministic RNG (xorshift64*): the same seed replays the same inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// An input that panicked or allocated too much, with what happened.
#[derive(Debug, Clone)]
pub struct Failure {
    pub input: Vec<u8>,
    pub message: String,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub inputs: u64,
    /// Inputs that panicked, or whose largest allocation was over [`ALLOC_LIMIT`].
    pub panics: u64,
    /// The first few of them.
    pub failures: Vec<Failure>,
}

impl Outcome {
    /// The closing line: `N inputs, P panics, peak RSS X MB`.
    pub fn summary(&self) -> String {
        format!(
            "{} inputs, {} panics, peak RSS {:.1} MB",
            self.inputs,
            self.panics,
            peak_rss_mb()
        )
    }

    pub fn add(&mut self, other: Outcome) {
        self.inputs += other.inputs;
        self.panics += other.panics;
        for f in other.failures {
            if self.failures.len() < KEEP_FAILURES {
                self.failures.push(f);
            }
        }
    }
}

/// Panics on a fuzzing thread are recorded quietly; any other thread's go to the usual hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.try_with(Cell::get).unwrap_or(false) {
                let message = match info.payload().downcast_ref::<&str>() {
                    Some(s) => (*s).to_owned(),
                    None => info
                        .payload()
                        .downcast_ref::<String>()
                        .cloned()
                        .unwrap_or_else(|| "panic".to_owned()),
                };
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some(format!("{message}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `exec` on each seed, then on mutated seeds, `inputs` times in all, counting inputs
/// that panic or allocate more than [`ALLOC_LIMIT`] at once.
pub fn fuzz(
    exec: &dyn Fn(&[u8]),
    seeds: &[Vec<u8>],
    mutator: &mutate::Mutator,
    inputs: u64,
    rng_seed: u64,
) -> Outcome {
    install_hook();
    let mut rng = Rng::new(rng_seed);
    let mut outcome = Outcome::default();
    let empty = [Vec::new()];
    let seeds = if seeds.is_empty() { &empty[..] } else { seeds };
    FUZZING.with(|f| f.set(true));
    for i in 0..inputs {
        let input = match seeds.get(i as usize) {
            Some(seed) => seed.clone(),
            None => mutator.mutate(&mut rng, seeds),
        };
        LARGEST.with(|l| l.set(0));
        let result = catch_unwind(AssertUnwindSafe(|| exec(&input)));
        let largest = LARGEST.with(Cell::get);
        let message = match result {
            Err(_) => Some(
                LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "panic".to_owned()),
            ),
            Ok(()) if largest > ALLOC_LIMIT => Some(format!(
                "allocated {largest} bytes at once (limit {ALLOC_LIMIT})"
            )),
            Ok(()) => None,
        };
        outcome.inputs += 1;
        if let Some(message) = message {
            outcome.panics += 1;
            if outcome.failures.len() < KEEP_FAILURES {
                outcome.failures.push(Failure { input, message });
            }
        }
    }
    FUZZING.with(|f| f.set(false));
    outcome
}

/// Fuzzes one of iotrace's targets with its own mutator.
pub fn fuzz_target(
    target: targets::Target,
    seeds: &targets::Seeds,
    inputs: u64,
    rng_seed: u64,
) -> Outcome {
    let mutator = mutate::Mutator::new(target.shape());
    fuzz(
        &|input| target.exec(input),
        seeds.for_target(target),
        &mutator,
        inputs,
        rng_seed ^ target as u64,
    )
}

/// Runs `f` and returns the largest single allocation it made on this thread, in bytes.
pub fn largest_allocation(f: impl FnOnce()) -> usize {
    let before = LARGEST.with(|l| l.replace(0));
    f();
    let largest = LARGEST.with(Cell::get);
    LARGEST.with(|l| l.set(before.max(largest)));
    largest
}

/// This process's peak RSS in MB (getrusage's ru_maxrss).
pub fn peak_rss_mb() -> f64 {
    sys::peak_rss_kb() as f64 * 1024.0 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_mutator() -> mutate::Mutator {
        mutate::Mutator::new(mutate::Shape::Bytes)
    }

    /// The harness must be able to fail: a target that panics on some inputs is caught,
    /// counted, and its input kept, and the run goes on to the end.
    #[test]
    fn planted_panic_is_caught_and_counted() {
        let exec = |input: &[u8]| {
            if input.contains(&0xA5) {
                panic!("planted");
            }
        };
        let outcome = fuzz(&exec, &[vec![0u8; 64]], &bytes_mutator(), 5_000, 7);
        assert_eq!(outcome.inputs, 5_000);
        assert!(outcome.panics > 0, "the planted panic was not found");
        let first = &outcome.failures[0];
        assert!(first.input.contains(&0xA5));
        assert!(first.message.starts_with("planted"), "{}", first.message);
    }

    /// A target that allocates more than the limit at once is a failure too.
    #[test]
    fn planted_huge_allocation_is_caught() {
        let exec = |input: &[u8]| {
            if input.first() == Some(&1) {
                let v: Vec<u8> = Vec::with_capacity(ALLOC_LIMIT + 1);
                std::hint::black_box(&v);
            }
        };
        let outcome = fuzz(&exec, &[vec![1], vec![0]], &bytes_mutator(), 2, 1);
        assert_eq!(outcome.panics, 1, "{:?}", outcome.failures);
        assert!(outcome.failures[0].message.contains("allocated"));
    }

    #[test]
    fn same_seed_same_inputs() {
        let m = bytes_mutator();
        let seeds = [b"IOTRACE\0 some seed bytes".to_vec()];
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        for _ in 0..100 {
            assert_eq!(m.mutate(&mut a, &seeds), m.mutate(&mut b, &seeds));
        }
    }
}
