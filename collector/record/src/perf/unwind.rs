//! CFI unwinding of user stacks in the recorder, so that the trace carries whole callchains and
//! never the raw stack copies (docs/DESIGN.md, "Stacks").
//!
//! The kernel walks user stacks by frame pointer. A frameless leaf (glibc's syscall wrappers:
//! `clock_nanosleep`, `read`, `epoll_wait`) keeps the caller's frame pointer, so the walk goes
//! from the leaf straight to the caller's caller and the function that called libc vanishes.
//! A binary built without frame pointers gets one or two frames. Both are mended here with the
//! binary's call frame information (`.eh_frame`, or `.debug_frame`), read by `framehop`, from
//! the registers and the copy of the top of the user stack that perf takes with each sample
//! (`PERF_SAMPLE_REGS_USER` + `PERF_SAMPLE_STACK_USER`):
//! - [`CallGraph::FpCfi`]: a small copy unwinds the frames at the leaf, as far as it reaches
//!   (through modules without CFI framehop follows the frame pointers). When it ends before
//!   the outermost frame, the kernel's frame-pointer chain continues after the last return
//!   address the two share; if they share none, after the leaf (the chain starts at the
//!   innermost frame that keeps a frame pointer, which the unwound frames have not passed).
//! - [`CallGraph::Dwarf`]: the whole stack from the copy; the kernel's user chain is not taken.
//!   An unwind that stops early ends in a marker frame that says why
//!   ([`iotrace_trace::UnwindStop`]), so every lost frame is countable.
//!
//! Address spaces follow the ring records in time order: MMAP2 adds a module, a fork copies
//! the parent's, an exec starts afresh, the exit of a process drops it. Files are mapped once
//! and their modules are shared between processes.

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{Error, ExplicitModuleSectionInfo, Module, Unwinder};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::sys;
use iotrace_trace::{Mmap, UnwindStop};

/// x86_64 user registers taken with each sample: BP, SP, IP (perf_regs.h bit numbers); they
/// come in this order, by bit.
pub(crate) const REGS_MASK: u64 = (1 << 6) | (1 << 7) | (1 << 8);

/// PERF_CONTEXT_USER: what follows in a callchain is the user part.
const PERF_CONTEXT_USER: u64 = (-512i64) as u64;
/// Frames kept per stack, as the kernel's default `perf_event_max_stack`.
const MAX_FRAMES: usize = 127;

/// How user stacks are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallGraph {
    /// The kernel's frame-pointer walk only: cheapest, but a frameless leaf hides its caller.
    Fp,
    /// Frame pointers, with the frames at the leaf unwound from CFI out of a copy of the top of
    /// the stack: `copy` bytes at switch-outs (frequent: a syscall wrapper needs little), at
    /// least [`CallGraph::LEAF_ON_CPU_COPY`] for on-CPU samples (at most `-F` a second).
    FpCfi { copy: u32 },
    /// CFI for the whole stack (binaries without frame pointers), out of a `copy`-byte copy of
    /// the stack for on-CPU samples and a `switch_copy`-byte one at switch-outs.
    Dwarf { copy: u32, switch_copy: u32 },
}

impl CallGraph {
    /// Default stack copy for [`CallGraph::FpCfi`] at switch-outs: enough for the frameless
    /// libc frames of a syscall wrapper (64 bytes reach `sleep_a_lot` through glibc's
    /// `nanosleep`). Switch-outs come at any rate (≈ 50k/s for a thread per connection at a
    /// thousand connections), so each byte counts in the rings.
    pub const LEAF_COPY: u32 = 256;
    /// The least stack copy of [`CallGraph::FpCfi`] for on-CPU samples, which come at most
    /// `-F` times a second per CPU: room for deeper frameless code (glibc's `qsort_r` keeps
    /// a 1 KiB buffer on its stack). 8192 lost records at a thousand busy threads on two
    /// CPUs when the recorder was starved; 2048 did not (scripts/bench-unwind.sh).
    pub const LEAF_ON_CPU_COPY: u32 = 2048;
    /// Default stack copy for [`CallGraph::Dwarf`]'s on-CPU samples, as `perf record
    /// --call-graph dwarf`.
    pub const DWARF_COPY: u32 = 8192;
    /// Default stack copy for [`CallGraph::Dwarf`] at switch-outs, which a server makes per
    /// request: Debian's nginx served 0.74 of its bare req/s with 8 KiB copies there and 0.86
    /// with 4 KiB, whose stacks still reach `main` (scripts/bench-nginx.sh; tests/tests/unwind.rs).
    pub const DWARF_SWITCH_COPY: u32 = 4096;

    /// The DWARF mode with the default copies, or `asked` bytes for both.
    pub fn dwarf(asked: Option<u32>) -> CallGraph {
        CallGraph::Dwarf {
            copy: asked.unwrap_or(Self::DWARF_COPY),
            switch_copy: asked.unwrap_or(Self::DWARF_SWITCH_COPY),
        }
    }

    /// Bytes of user stack copied per sample (0 for [`CallGraph::Fp`]): at switch-outs, or for
    /// on-CPU samples (`on_cpu`).
    pub fn copy_bytes(self, on_cpu: bool) -> u32 {
        match self {
            CallGraph::Fp => 0,
            CallGraph::FpCfi { copy } if on_cpu => copy.max(Self::LEAF_ON_CPU_COPY),
            CallGraph::Dwarf { copy, .. } if on_cpu => copy,
            CallGraph::Dwarf { switch_copy, .. } => switch_copy,
            CallGraph::FpCfi { copy } => copy,
        }
    }

    /// The name the `--call-graph` flag gives it.
    pub fn name(self) -> &'static str {
        match self {
            CallGraph::Fp => "fp",
            CallGraph::FpCfi { .. } => "fp-cfi",
            CallGraph::Dwarf { .. } => "dwarf",
        }
    }
}

/// The bytes of one section of a mapped file.
#[derive(Clone)]
pub(crate) struct Bytes {
    map: Arc<memmap2::Mmap>,
    range: Range<usize>,
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.get(self.range.clone()).unwrap_or(&[])
    }
}

/// What one ELF file gives the unwinder.
struct FileCfi {
    sections: ExplicitModuleSectionInfo<Bytes>,
    /// PT_LOAD segments: (file offset, vaddr, file size).
    loads: Vec<(u64, u64, u64)>,
    has_cfi: bool,
}

impl FileCfi {
    fn load(path: &Path) -> Option<FileCfi> {
        // Only regular files: opening a FIFO a record names would block the recorder.
        if !std::fs::metadata(path).ok()?.is_file() {
            return None;
        }
        let file = std::fs::File::open(path).ok()?;
        let map = Arc::new(sys::map_file(&file).ok()?);
        let obj = object::File::parse(&**map).ok()?;
        let data = |name: &str| {
            let s = obj.section_by_name(name)?;
            let (off, len) = s
                .compressed_file_range()
                .ok()
                .filter(|r| r.format == object::CompressionFormat::None)
                .map(|r| (r.offset, r.compressed_size))?;
            let start = usize::try_from(off).ok()?;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            (end <= map.len()).then(|| Bytes {
                map: map.clone(),
                range: start..end,
            })
        };
        let svma = |name: &str| {
            let s = obj.section_by_name(name)?;
            Some(s.address()..s.address() + s.size())
        };
        let sections = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: svma(".text"),
            got_svma: svma(".got"),
            eh_frame_svma: svma(".eh_frame"),
            eh_frame: data(".eh_frame"),
            eh_frame_hdr_svma: svma(".eh_frame_hdr"),
            eh_frame_hdr: data(".eh_frame_hdr"),
            debug_frame: data(".debug_frame"),
            text: None,
            stubs_svma: None,
            stub_helper_svma: None,
            unwind_info: None,
            text_segment_svma: None,
            text_segment: None,
        };
        let has_cfi = sections.eh_frame.is_some() || sections.debug_frame.is_some();
        let loads = obj
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, s.address(), size)
            })
            .collect();
        Some(FileCfi {
            sections,
            loads,
            has_cfi,
        })
    }

    /// `avma - svma` for a mapping of file offset `pgoff` at `addr`: the PT_LOAD segment that
    /// holds the offset maps it at its vaddr (vaddr and offset agree modulo the page size).
    fn bias(&self, addr: u64, pgoff: u64) -> Option<u64> {
        let &(off, vaddr, _) = self
            .loads
            .iter()
            .find(|&&(off, _, size)| pgoff >= off & !0xfff && pgoff < off + size.max(1))?;
        Some(
            addr.wrapping_sub(pgoff)
                .wrapping_add(off)
                .wrapping_sub(vaddr),
        )
    }
}

/// What an executable mapping holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Code {
    /// A file with call frame information.
    Cfi,
    /// A file without (or one that could not be read).
    NoCfi,
    /// Anonymous memory: JIT-compiled code.
    Anon,
}

/// One process's modules.
#[derive(Clone, Default)]
struct Space {
    unwinder: UnwinderX86_64<Bytes>,
    /// (start, end, what) of every executable mapping seen.
    ranges: Vec<(u64, u64, Code)>,
}

impl Space {
    fn place(&self, addr: u64) -> Option<Code> {
        self.ranges
            .iter()
            .find(|&&(s, e, _)| addr >= s && addr < e)
            .map(|&(_, _, cfi)| cfi)
    }
}

/// Stops by reason, for the recorder's own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnwindCounts {
    /// Samples whose user stack was unwound from CFI.
    pub unwound: u64,
    /// Samples whose CFI frames stopped short and were continued by the kernel's chain after
    /// a frame both share.
    pub joined: u64,
    /// Frames of the kernel's chain dropped after CFI frames: in no executable mapping.
    pub dropped: u64,
    pub truncated: u64,
    pub no_unwind_info: u64,
    pub not_mapped: u64,
    pub failed: u64,
}

/// The recorder's unwinder: address spaces by pid and the files they map.
pub(crate) struct Unwinding {
    pub mode: CallGraph,
    files: HashMap<(String, u64), Option<Arc<FileCfi>>>,
    modules: HashMap<(String, u64, u64, u64), Module<Bytes>>,
    spaces: HashMap<u32, Space>,
    /// A rule cache per process: one shared by processes whose modules differ (a forked
    /// worker that mapped one more file) is mostly misses, each a CFI evaluation.
    caches: HashMap<u32, Box<CacheX86_64>>,
    frames: Vec<u64>,
    out: Vec<u64>,
    pub counts: UnwindCounts,
}

impl Unwinding {
    pub(crate) fn new(mode: CallGraph) -> Self {
        Unwinding {
            mode,
            files: HashMap::new(),
            modules: HashMap::new(),
            spaces: HashMap::new(),
            caches: HashMap::new(),
            frames: Vec::with_capacity(MAX_FRAMES + 1),
            out: Vec::with_capacity(2 * MAX_FRAMES),
            counts: UnwindCounts::default(),
        }
    }

    /// An executable mapping of process `m.pid`.
    pub(crate) fn mmap(&mut self, m: &Mmap) {
        if m.len == 0 {
            return;
        }
        let end = m.addr.saturating_add(m.len);
        if m.filename.starts_with('[') || m.filename.starts_with("//") {
            let space = self.spaces.entry(m.pid).or_default();
            space.ranges.push((m.addr, end, Code::Anon));
            return;
        }
        let key = (m.filename.clone(), m.ino);
        let file = self
            .files
            .entry(key)
            .or_insert_with(|| FileCfi::load(Path::new(&m.filename)).map(Arc::new))
            .clone();
        let space = self.spaces.entry(m.pid).or_default();
        let Some(file) = file else {
            space.ranges.push((m.addr, end, Code::NoCfi));
            return;
        };
        let Some(bias) = file.bias(m.addr, m.pgoff) else {
            space.ranges.push((m.addr, end, Code::NoCfi));
            return;
        };
        let module = self
            .modules
            .entry((m.filename.clone(), m.ino, m.addr, bias))
            .or_insert_with(|| {
                Module::new(m.filename.clone(), m.addr..end, bias, file.sections.clone())
            })
            .clone();
        space.ranges.retain(|&(s, e, _)| e <= m.addr || s >= end);
        let code = if file.has_cfi { Code::Cfi } else { Code::NoCfi };
        space.ranges.push((m.addr, end, code));
        space.unwinder.add_module(module);
    }

    /// Process `pid` forked from `ppid`: it starts with its parent's mappings.
    pub(crate) fn fork(&mut self, ppid: u32, pid: u32) {
        let space = self.spaces.get(&ppid).cloned().unwrap_or_default();
        self.spaces.insert(pid, space);
    }

    /// `pid` exec'd, or its process exited: its address space is gone.
    pub(crate) fn forget(&mut self, pid: u32) {
        self.spaces.remove(&pid);
        self.caches.remove(&pid);
    }

    /// Rewrite the user part of `chain` (perf order, with context markers) of a sample of
    /// process `pid`, from `tail`: the sample's bytes after its callchain (REGS_USER, then
    /// STACK_USER). Returns the new chain, or `None` to keep the kernel's.
    pub(crate) fn unwind(&mut self, pid: u32, chain: &[u64], tail: &[u8]) -> Option<&[u64]> {
        if self.mode == CallGraph::Fp {
            return None;
        }
        let (ip, sp, bp, stack) = parse_user_regs_and_stack(tail)?;
        let user_at = chain.iter().position(|&a| a == PERF_CONTEXT_USER);
        let (kernel, user) = match user_at {
            Some(i) => (&chain[..i], &chain[i + 1..]),
            None => (chain, &[][..]),
        };
        let stop = self.walk(pid, ip, sp, bp, stack);
        self.counts.unwound += 1;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(kernel);
        out.push(PERF_CONTEXT_USER);
        let frames = &self.frames;
        match self.mode {
            CallGraph::Fp => {}
            CallGraph::FpCfi { .. } => {
                out.extend_from_slice(frames);
                // A walk that stopped short is continued by the kernel's chain after the last
                // frame the two share; if they share none, the chain after the leaf follows
                // (see the module doc). A walk that reached the outermost frame stands alone.
                if stop.is_some() {
                    let shared = frames
                        .iter()
                        .skip(1)
                        .filter_map(|f| user.iter().skip(1).position(|u| u == f))
                        .max();
                    let from = match shared {
                        Some(j) => {
                            self.counts.joined += 1;
                            j + 2
                        }
                        None => 1,
                    };
                    // Frames of the chain that lie in no executable mapping are what a
                    // frame-pointer walk reads through code that uses %rbp for data (Rust's
                    // std is built without frame pointers): heap addresses, small numbers.
                    let space = self.spaces.get(&pid);
                    for &addr in user.iter().skip(from) {
                        if space.is_some_and(|s| s.place(addr).is_some()) {
                            out.push(addr);
                        } else {
                            self.counts.dropped += 1;
                        }
                    }
                }
            }
            CallGraph::Dwarf { .. } => {
                out.extend_from_slice(frames);
                if let Some(why) = stop {
                    count(&mut self.counts, why);
                    out.push(why.addr());
                }
            }
        }
        out.truncate(kernel.len() + 1 + MAX_FRAMES);
        Some(out)
    }
}

fn count(c: &mut UnwindCounts, why: UnwindStop) {
    match why {
        UnwindStop::Truncated => c.truncated += 1,
        UnwindStop::NoUnwindInfo => c.no_unwind_info += 1,
        UnwindStop::NotMapped => c.not_mapped += 1,
        UnwindStop::Failed => c.failed += 1,
    }
}

impl Unwinding {
    /// Unwind into `self.frames` (innermost first); returns why it stopped short, if it did.
    fn walk(&mut self, pid: u32, ip: u64, sp: u64, bp: u64, stack: &[u8]) -> Option<UnwindStop> {
        self.frames.clear();
        let Some(space) = self.spaces.get(&pid) else {
            self.frames.push(ip);
            return Some(UnwindStop::NotMapped);
        };
        let mut read = |addr: u64| -> Result<u64, ()> {
            let off = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let bytes = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(ip, sp, bp);
        let cache = self
            .caches
            .entry(pid)
            .or_insert_with(|| Box::new(CacheX86_64::new()));
        let mut it = space.unwinder.iter_frames(ip, regs, cache, &mut read);
        loop {
            if self.frames.len() >= MAX_FRAMES {
                return None;
            }
            match it.next() {
                Ok(Some(f)) => self.frames.push(f.address()),
                Ok(None) => return None,
                Err(e) => {
                    let last = self.frames.last().copied().unwrap_or(ip);
                    return Some(match (e, space.place(last)) {
                        (_, None | Some(Code::Anon)) => UnwindStop::NotMapped,
                        (_, Some(Code::NoCfi)) => UnwindStop::NoUnwindInfo,
                        (Error::CouldNotReadStack(a), _)
                            if a >= sp.saturating_add(stack.len() as u64) =>
                        {
                            UnwindStop::Truncated
                        }
                        _ => UnwindStop::Failed,
                    });
                }
            }
        }
    }
}

/// (ip, sp, bp, stack bytes) from a sample's REGS_USER and STACK_USER fields, when the sample
/// has a user context.
fn parse_user_regs_and_stack(d: &[u8]) -> Option<(u64, u64, u64, &[u8])> {
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(d.get(at..at + 8)?.try_into().ok()?))
    };
    let abi = u64_at(0)?;
    if abi == 0 {
        return None;
    }
    let (bp, sp, ip) = (u64_at(8)?, u64_at(16)?, u64_at(24)?);
    let size = usize::try_from(u64_at(32)?).ok()?;
    let data = d.get(40..40usize.checked_add(size)?)?;
    let dyn_size = usize::try_from(u64_at(40 + size)?).ok()?;
    Some((ip, sp, bp, &data[..dyn_size.min(size)]))
}

/// Whether the ELF file at `path` keeps frame pointers: most of its functions begin with
/// `push %rbp; mov %rsp,%rbp` (after an `endbr64`). `None` when it cannot be read or names no
/// functions (stripped).
pub fn has_frame_pointers(path: &Path) -> Option<bool> {
    let file = std::fs::File::open(path).ok()?;
    let map = sys::map_file(&file).ok()?;
    let obj = object::File::parse(&*map).ok()?;
    let text = obj.section_by_name(".text")?;
    let (text_addr, code) = (text.address(), text.data().ok()?);
    let mut symbols: Vec<_> = obj.symbols().collect();
    if symbols.is_empty() {
        symbols = obj.dynamic_symbols().collect();
    }
    let (mut seen, mut framed) = (0u32, 0u32);
    for s in symbols {
        if s.kind() != object::SymbolKind::Text || s.size() < 16 {
            continue;
        }
        let Some(at) = s.address().checked_sub(text_addr) else {
            continue;
        };
        let Some(mut bytes) = usize::try_from(at).ok().and_then(|a| code.get(a..a + 8)) else {
            continue;
        };
        if bytes.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
            bytes = &bytes[4..];
        }
        seen += 1;
        if bytes.starts_with(&[0x55, 0x48, 0x89, 0xe5]) {
            framed += 1;
        }
        if seen >= 4000 {
            break;
        }
    }
    (seen > 0).then_some(framed * 2 >= seen)
}

/// The call graph `auto` picks for a program: frame pointers with CFI leaves when its
/// executable keeps frame pointers (or cannot be told), the whole stack from CFI when not.
pub fn auto_call_graph(exe: Option<&Path>) -> CallGraph {
    match exe.and_then(has_frame_pointers) {
        Some(false) => CallGraph::dwarf(None),
        _ => CallGraph::FpCfi {
            copy: CallGraph::LEAF_COPY,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_and_stack_are_read_from_the_sample_tail() {
        let mut d = Vec::new();
        for v in [2u64, 0x10, 0x1000, 0x4242] {
            d.extend_from_slice(&v.to_ne_bytes());
        }
        d.extend_from_slice(&16u64.to_ne_bytes());
        d.extend_from_slice(&[7u8; 16]);
        d.extend_from_slice(&8u64.to_ne_bytes());
        let (ip, sp, bp, stack) = parse_user_regs_and_stack(&d).unwrap();
        assert_eq!((ip, sp, bp, stack.len()), (0x4242, 0x1000, 0x10, 8));
        // A sample without a user context (abi 0), and one cut short: nothing.
        assert!(parse_user_regs_and_stack(&0u64.to_ne_bytes()).is_none());
        assert!(parse_user_regs_and_stack(&d[..45]).is_none());
    }

    #[test]
    fn this_test_binary_keeps_frame_pointers() {
        // The workspace builds with -C force-frame-pointers=yes (.cargo/config.toml).
        let exe = std::env::current_exe().unwrap();
        assert_eq!(has_frame_pointers(&exe), Some(true));
    }
}
