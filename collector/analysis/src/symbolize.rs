//! Names for the frames of a trace's stack tree, resolved offline with `blazesym`: user
//! addresses through the recorded mappings (file + file offset, so it works after the program
//! has exited), kernel addresses through this machine's `/proc/kallsyms` when the trace comes
//! from this boot.
//!
//! Return addresses point after their call; they are looked up one byte earlier so that a
//! call at the end of a function is not named after the next one. The innermost frame of the
//! kernel part and of the user part is a sampled address and is looked up as is.
//!
//! Code a JIT generated (anonymous memory, or no mapping at all) is named from the map the JIT
//! wrote for perf, `/tmp/perf-PID.map` ([`perfmap`]), read here at analysis time for the pid
//! of the frame's address space, when the trace comes from this boot. Frames in a file that
//! names nothing there fall back to the map too (V8's embedded builtins).
//!
//! A frame without a name says why (`[unknown: libfoo.so]`, `[unknown: anon]`, …) and is
//! counted by reason in [`SymbolStats`]; nothing is dropped. Lookups are batched per file
//! and cached per (file, offset), so cost grows with distinct frames, not with samples.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

mod kallsyms;
pub mod perfmap;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Reason, Symbolized, Symbolizer};

pub use kallsyms::KernelSymbols;

use crate::stacks::{StackFold, Strings};
use iotrace_trace::UnwindStop;

/// Why a frame has no name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unknown {
    /// The address is in no recorded mapping of its process.
    NoMapping,
    /// Anonymous executable memory: JIT-compiled code, or code the program wrote itself.
    Jit,
    /// The mapped file is gone.
    MissingFile,
    /// The mapped file was replaced after the recording (rebuilt?).
    ChangedFile,
    /// The file has no symbol table (stripped).
    Stripped,
    /// The file has symbols, but none covers the address.
    NoSymbol,
    /// The vDSO of another boot, or one that could not be read.
    Vdso,
    /// Kernel symbols are not readable here, or the trace is from another boot.
    Kernel,
    /// A marker frame: the recorder's CFI unwinding of the user stack stopped there.
    Unwind(UnwindStop),
}

impl Unknown {
    /// Short name of the reason, as reports print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Unknown::NoMapping => "no mapping",
            Unknown::Jit => "JIT or anonymous code",
            Unknown::MissingFile => "file missing",
            Unknown::ChangedFile => "file changed since recording",
            Unknown::Stripped => "stripped (no symbols)",
            Unknown::NoSymbol => "no symbol for address",
            Unknown::Vdso => "vdso",
            Unknown::Kernel => "kernel symbols unavailable",
            Unknown::Unwind(stop) => stop.as_str(),
        }
    }
}

/// How many distinct frames were named, and why the others were not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolStats {
    pub frames: u64,
    pub unknown: BTreeMap<Unknown, u64>,
    /// Files with unnamed frames, with their count.
    pub unknown_files: BTreeMap<String, u64>,
    /// Frames named from a JIT's `/tmp/perf-PID.map`.
    pub jit_named: u64,
    /// Lines of those maps that were not `START SIZE name` (skipped).
    pub jit_bad_lines: u64,
}

impl SymbolStats {
    pub fn unknown_total(&self) -> u64 {
        self.unknown.values().sum()
    }

    /// One line for people: `1234 frames, 3 unknown (stripped (no symbols): 2, vdso: 1)`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} distinct frames, {} without a name",
            self.frames,
            self.unknown_total()
        );
        if self.jit_named > 0 {
            s.push_str(&format!(", {} named from JIT maps", self.jit_named));
        }
        if !self.unknown.is_empty() {
            let parts: Vec<String> = self
                .unknown
                .iter()
                .map(|(r, n)| format!("{}: {n}", r.as_str()))
                .collect();
            s.push_str(&format!(" ({})", parts.join(", ")));
        }
        s
    }
}

/// What symbolizing one address gave.
type Named = Result<Resolved, Unknown>;

#[derive(Debug, Clone, PartialEq)]
struct Resolved {
    name: u32,
    detail: Option<Box<Detail>>,
}

/// A frame's source location and the functions inlined at it, from DWARF.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detail {
    /// `file:line` in the frame's function (its call to the first inlined function, if any).
    pub location: Option<u32>,
    /// Functions inlined at the address, outermost first, each with its own `file:line`;
    /// their names end in ` (inlined)`, as `perf script` prints them.
    pub inlined: Box<[(u32, Option<u32>)]>,
}

static INLINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether frames expand to the functions inlined at them (the default; the CLI's
/// `--no-inline` turns it off for the process).
pub fn set_inline(on: bool) {
    INLINE.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn inline_on() -> bool {
    INLINE.load(std::sync::atomic::Ordering::Relaxed)
}

/// A frame to name: a stack node and whether its address is a return address.
pub type FrameKey = (u32, bool);

/// Frame names by [`FrameKey`], as string ids in the fold's [`Strings`].
#[derive(Debug, Default)]
pub struct Symbols {
    names: HashMap<FrameKey, u32>,
    jit: HashSet<FrameKey>,
    details: HashMap<FrameKey, Box<Detail>>,
}

impl Symbols {
    /// The frame's `file:line` and inlined functions, when the file has DWARF for it.
    pub fn detail(&self, key: FrameKey) -> Option<&Detail> {
        self.details.get(&key).map(|d| &**d)
    }

    /// The frame's functions, outermost first: its own (as [`Symbols::get`]) then those
    /// inlined at it, each with its `file:line` and whether it is inlined.
    pub fn frames(&self, key: FrameKey) -> Vec<(Option<u32>, Option<u32>, bool)> {
        let mut out = vec![(self.get(key), None, false)];
        if let Some(d) = self.detail(key) {
            out[0].1 = d.location;
            out.extend(d.inlined.iter().map(|&(n, l)| (Some(n), l, true)));
        }
        out
    }

    pub fn get(&self, key: FrameKey) -> Option<u32> {
        self.names.get(&key).copied()
    }

    /// Whether the frame was named from a JIT map (flamegraphs may mark it `_[j]`).
    pub fn is_jit(&self, key: FrameKey) -> bool {
        self.jit.contains(&key)
    }
}

/// Kernel addresses are in the upper half on every 64-bit Linux architecture iotrace runs on.
pub fn is_kernel(addr: u64) -> bool {
    addr >= 0xffff_0000_0000_0000 && UnwindStop::from_addr(addr).is_none()
}

/// What a user address resolves to before symbol lookup.
enum Place {
    File { file: usize, offset: u64 },
    Unknown(Unknown, Option<String>),
}

struct FileEntry {
    path: PathBuf,
    /// Why it cannot be read, if so.
    problem: Option<Unknown>,
}

/// Name every frame in `frames` (each once), adding names to `fold.strings`. Kernel frames
/// are named from `kernel_symbols` ([`KernelSymbols::load`]); without it they are unknown.
pub fn symbolize(
    fold: &mut StackFold,
    frames: impl IntoIterator<Item = FrameKey>,
    kernel_symbols: Option<&KernelSymbols>,
) -> (Symbols, SymbolStats) {
    let mut stats = SymbolStats::default();
    let mut files: Vec<FileEntry> = Vec::new();
    let mut file_index: HashMap<(String, u64), usize> = HashMap::new();
    let vdso = if same_boot(&fold.boot_id) {
        OwnVdso::read()
    } else {
        None
    };
    // Frame → where its name comes from.
    let mut kernel: Vec<(FrameKey, u64)> = Vec::new();
    // (frame, where, pid of its address space, looked-up address)
    let mut user: Vec<(FrameKey, Place, Option<u32>, u64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut names = HashMap::new();
    for key in frames {
        if !seen.insert(key) {
            continue;
        }
        let Some((addr, space)) = fold.stacks.frame(key.0) else {
            continue;
        };
        if let Some(stop) = UnwindStop::from_addr(addr) {
            stats.frames += 1;
            *stats.unknown.entry(Unknown::Unwind(stop)).or_insert(0) += 1;
            names.insert(key, fold.strings.intern(&format!("[{}]", stop.as_str())));
            continue;
        }
        let addr = if key.1 { addr.saturating_sub(1) } else { addr };
        if is_kernel(addr) {
            kernel.push((key, addr));
            continue;
        }
        let place = match fold.spaces.lookup(space, addr) {
            None => Place::Unknown(Unknown::NoMapping, None),
            Some(m) => {
                let offset = (addr - m.start).saturating_add(m.pgoff);
                let name = m.filename.as_str();
                if name == "[vdso]" {
                    match &vdso {
                        Some(v) => Place::File {
                            file: file_slot(&mut files, &mut file_index, &v.path, 0, true),
                            offset,
                        },
                        None => Place::Unknown(Unknown::Vdso, None),
                    }
                } else if !name.starts_with('/') || name.starts_with("//anon") {
                    Place::Unknown(Unknown::Jit, None)
                } else {
                    Place::File {
                        file: file_slot(&mut files, &mut file_index, name, m.ino, false),
                        offset,
                    }
                }
            }
        };
        user.push((key, place, fold.spaces.pid(space), addr));
    }

    let inline = inline_on();
    let mut details: HashMap<FrameKey, Box<Detail>> = HashMap::new();
    let strings = &mut fold.strings;

    // User frames, one batch per file, the files resolved on worker threads (loading a
    // file's DWARF is most of the time, and files are independent).
    let mut per_file: HashMap<usize, Vec<u64>> = HashMap::new();
    for (_, place, _, _) in &user {
        if let Place::File { file, offset } = place {
            per_file.entry(*file).or_default().push(*offset);
        }
    }
    let mut jobs: Vec<(usize, Vec<u64>)> = per_file
        .into_iter()
        .map(|(file, mut offsets)| {
            offsets.sort_unstable();
            offsets.dedup();
            (file, offsets)
        })
        .collect();
    // The biggest batches first, so that they run side by side; file order otherwise.
    jobs.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let found = resolve_files(&files, &jobs, inline);
    let mut resolved: HashMap<(usize, u64), Named> = HashMap::new();
    for ((file, offsets), found) in jobs.into_iter().zip(found) {
        for (offset, r) in offsets.into_iter().zip(found) {
            resolved.insert((file, offset), r.map(|f| f.intern(strings)));
        }
    }
    // Unnamed frames a JIT map may name, by process.
    let jit_maps = same_boot(&fold.boot_id);
    let mut by_pid: BTreeMap<u32, Vec<JitCandidate>> = BTreeMap::new();
    for (key, place, pid, addr) in user {
        let (result, file) = match place {
            Place::File { file, offset } => (
                resolved
                    .get(&(file, offset))
                    .cloned()
                    .unwrap_or(Err(Unknown::NoSymbol)),
                Some(files[file].path.to_string_lossy().into_owned()),
            ),
            Place::Unknown(why, file) => (Err(why), file),
        };
        let id = match (result, pid) {
            (Ok(r), _) => {
                if let Some(d) = r.detail {
                    details.insert(key, d);
                }
                r.name
            }
            (Err(why), Some(pid)) if jit_maps && may_be_jit(why) => {
                by_pid.entry(pid).or_default().push((key, addr, why, file));
                continue;
            }
            (Err(why), _) => unknown_name(why, file.as_deref(), &mut stats, strings),
        };
        stats.frames += 1;
        names.insert(key, id);
    }
    let mut jit = HashSet::new();
    for (pid, frames) in by_pid {
        let mut addrs: Vec<u64> = frames.iter().map(|f| f.1).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let resolved = perfmap::resolve_pid(pid, &addrs).unwrap_or_default();
        stats.jit_bad_lines += resolved.bad_lines;
        for (key, addr, why, file) in frames {
            let found = addrs
                .binary_search(&addr)
                .ok()
                .and_then(|i| resolved.names.get(i))
                .and_then(Option::as_deref);
            let id = match found {
                Some(name) => {
                    stats.jit_named += 1;
                    jit.insert(key);
                    strings.intern(name)
                }
                None => unknown_name(why, file.as_deref(), &mut stats, strings),
            };
            stats.frames += 1;
            names.insert(key, id);
        }
    }

    // Kernel frames.
    for (key, addr) in kernel {
        let id = match kernel_symbols.and_then(|k| k.lookup(addr)) {
            Some(name) => strings.intern(name),
            None => unknown_name(Unknown::Kernel, None, &mut stats, strings),
        };
        stats.frames += 1;
        names.insert(key, id);
    }
    drop(vdso);
    (
        Symbols {
            names,
            jit,
            details,
        },
        stats,
    )
}

/// A frame a JIT map may name: frame, looked-up address, why it has no name otherwise, file.
type JitCandidate = (FrameKey, u64, Unknown, Option<String>);

/// Whether a frame unnamed for this reason may be named by its process's JIT map: perf reads
/// the map for anonymous code and addresses in no mapping; a file without a symbol for the
/// address is tried too (V8 lists its builtins, which live in the node binary).
fn may_be_jit(why: Unknown) -> bool {
    matches!(
        why,
        Unknown::Jit | Unknown::NoMapping | Unknown::NoSymbol | Unknown::Stripped
    )
}

/// What a file offset resolves to, with its strings owned (resolved off the main thread).
type Found = Result<Owned, Unknown>;

#[derive(Debug, Clone)]
struct Owned {
    name: String,
    location: Option<String>,
    inlined: Vec<(String, Option<String>)>,
}

impl Owned {
    fn intern(self, strings: &mut Strings) -> Resolved {
        let name = strings.intern(&self.name);
        let location = self.location.map(|l| strings.intern(&l));
        let inlined: Box<[(u32, Option<u32>)]> = self
            .inlined
            .into_iter()
            .map(|(n, l)| (strings.intern(&n), l.map(|l| strings.intern(&l))))
            .collect();
        let detail = (location.is_some() || !inlined.is_empty())
            .then(|| Box::new(Detail { location, inlined }));
        Resolved { name, detail }
    }
}

/// Each job's offsets resolved in its file, on up to four threads (one symbolizer each);
/// the results in the jobs' order.
fn resolve_files(files: &[FileEntry], jobs: &[(usize, Vec<u64>)], inline: bool) -> Vec<Vec<Found>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(jobs.len());
    if threads <= 1 {
        let symbolizer = new_symbolizer(inline);
        return jobs
            .iter()
            .map(|(file, offsets)| resolve_file(&symbolizer, &files[*file], offsets, inline))
            .collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<Vec<Found>>> = (0..jobs.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let symbolizer = new_symbolizer(inline);
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((file, offsets)) = jobs.get(i) else {
                            return done;
                        };
                        done.push((i, resolve_file(&symbolizer, &files[*file], offsets, inline)));
                    }
                })
            })
            .collect();
        for worker in workers {
            // A worker that panicked (a bug in a parser) leaves its files unnamed, not the
            // whole analysis dead.
            for (i, found) in worker.join().unwrap_or_default() {
                out[i] = Some(found);
            }
        }
    });
    out.into_iter()
        .zip(jobs)
        .map(|(found, (_, offsets))| {
            found.unwrap_or_else(|| vec![Err(Unknown::NoSymbol); offsets.len()])
        })
        .collect()
}

fn new_symbolizer(inline: bool) -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(inline)
        .enable_inlined_fns(inline)
        .build()
}

/// The offsets (sorted, distinct) resolved in one file: names from its symbol table (or its
/// separate debug file's), then file:line and inlined functions from DWARF if `inline`.
fn resolve_file(
    symbolizer: &Symbolizer,
    entry: &FileEntry,
    offsets: &[u64],
    inline: bool,
) -> Vec<Found> {
    if let Some(p) = entry.problem {
        return vec![Err(p); offsets.len()];
    }
    let src = Source::Elf(Elf {
        debug_syms: false,
        ..Elf::new(&entry.path)
    });
    let mut results: Vec<Found> = match symbolizer.symbolize(&src, Input::FileOffset(offsets)) {
        Ok(list) => list.iter().map(owned).collect(),
        Err(_) => vec![Err(Unknown::NoSymbol); offsets.len()],
    };
    // A stripped file may have its symbols in a separate debug file: first the symbol table
    // of /usr/lib/debug/.build-id/…, then (slow) debug information.
    let stripped: Vec<usize> = (0..offsets.len())
        .filter(|&i| matches!(results[i], Err(Unknown::Stripped)))
        .collect();
    if !stripped.is_empty() {
        let retry: Vec<u64> = stripped.iter().map(|&i| offsets[i]).collect();
        let found = from_debug_file(symbolizer, &entry.path, &retry).or_else(|| {
            let src = Source::Elf(Elf::new(&entry.path));
            let list = symbolizer.symbolize(&src, Input::FileOffset(&retry)).ok()?;
            Some(list.iter().map(owned).collect())
        });
        for (&i, r) in stripped.iter().zip(found.unwrap_or_default()) {
            if r.is_ok() {
                results[i] = r;
            }
        }
    }
    // Names stay the symbol table's (whole paths: DWARF names functions without their
    // module); DWARF adds file:line and the functions inlined there.
    if inline {
        add_details(symbolizer, &entry.path, offsets, &mut results);
    }
    results
}

/// File:line and inlined functions from the file's DWARF, for the addresses named.
fn add_details(symbolizer: &Symbolizer, path: &Path, offsets: &[u64], results: &mut [Found]) {
    let src = Source::Elf(Elf {
        debug_syms: true,
        ..Elf::new(path)
    });
    let Ok(list) = symbolizer.symbolize(&src, Input::FileOffset(offsets)) else {
        return;
    };
    for (r, s) in results.iter_mut().zip(list.iter()) {
        if let (Ok(named_here), Ok(from_dwarf)) = (r.as_mut(), owned(s)) {
            named_here.location = from_dwarf.location;
            named_here.inlined = from_dwarf.inlined;
        }
    }
}

/// Names from the symbol table of the file's separate debug file, found by build id; `None`
/// when there is no such file.
fn from_debug_file(symbolizer: &Symbolizer, path: &Path, offsets: &[u64]) -> Option<Vec<Found>> {
    let id = blazesym::helper::read_elf_build_id(path).ok()??;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let debug = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        hex.get(..2)?,
        hex.get(2..)?
    ));
    if !debug.exists() {
        return None;
    }
    // The debug file has the same virtual addresses, not the same file layout.
    let segments = load_segments(path)?;
    let virt: Vec<u64> = offsets
        .iter()
        .map(|&off| {
            segments
                .iter()
                .find(|s| s.0 <= off && off - s.0 < s.1)
                .map_or(0, |s| (off - s.0).saturating_add(s.2))
        })
        .collect();
    let src = Source::Elf(Elf {
        debug_syms: false,
        ..Elf::new(&debug)
    });
    let list = symbolizer.symbolize(&src, Input::VirtOffset(&virt)).ok()?;
    Some(
        list.iter()
            .zip(&virt)
            .map(|(s, &v)| {
                if v == 0 {
                    Err(Unknown::NoSymbol)
                } else {
                    owned(s)
                }
            })
            .collect(),
    )
}

/// `(file offset, file size, virtual address)` of each PT_LOAD segment of a 64-bit
/// little-endian ELF file.
fn load_segments(path: &Path) -> Option<Vec<(u64, u64, u64)>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 64];
    f.read_exact(&mut head).ok()?;
    if head[..4] != *b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64_at = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let phoff = u64_at(&head, 32);
    let entsize = usize::from(u16_at(&head, 54));
    let count = usize::from(u16_at(&head, 56));
    if !(56..=256).contains(&entsize) || count == 0 || count > 4096 {
        return None;
    }
    let mut table = vec![0u8; entsize * count];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    Some(
        table
            .chunks_exact(entsize)
            .filter(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) == 1)
            .map(|p| (u64_at(p, 8), u64_at(p, 32), u64_at(p, 16)))
            .collect(),
    )
}

fn file_slot(
    files: &mut Vec<FileEntry>,
    index: &mut HashMap<(String, u64), usize>,
    name: impl AsRef<Path>,
    ino: u64,
    trusted: bool,
) -> usize {
    let path = name.as_ref();
    let key = (path.to_string_lossy().into_owned(), ino);
    if let Some(&i) = index.get(&key) {
        return i;
    }
    let problem = if trusted {
        None
    } else {
        match std::fs::metadata(path) {
            Err(_) => Some(Unknown::MissingFile),
            Ok(m) if ino != 0 && m.ino() != ino => Some(Unknown::ChangedFile),
            Ok(_) => None,
        }
    };
    files.push(FileEntry {
        path: path.to_owned(),
        problem,
    });
    index.insert(key, files.len() - 1);
    files.len() - 1
}

fn owned(s: &Symbolized<'_>) -> Found {
    match s {
        Symbolized::Sym(sym) => {
            let at = |c: Option<&blazesym::symbolize::CodeInfo<'_>>| {
                let c = c?;
                let line = c.line?;
                Some(format!("{}:{line}", short_path(&c.to_path())))
            };
            Ok(Owned {
                name: sanitize(&sym.name),
                location: at(sym.code_info.as_deref()),
                inlined: sym
                    .inlined
                    .iter()
                    .map(|f| {
                        (
                            format!("{} (inlined)", sanitize(&f.name)),
                            at(f.code_info.as_ref()),
                        )
                    })
                    .collect(),
            })
        }
        Symbolized::Unknown(Reason::MissingSyms) => Err(Unknown::Stripped),
        Symbolized::Unknown(_) => Err(Unknown::NoSymbol),
    }
}

/// A source path as people read it: a crate's path from its name in cargo's registry
/// (`tokio-1.48.0/src/…`), Rust's own sources from `library/`, a path under the current
/// directory relative to it; else whole.
fn short_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    if let Some(at) = text.find("/.cargo/registry/src/") {
        let rest = &text[at + "/.cargo/registry/src/".len()..];
        // Past the index's folder (`index.crates.io-…/`).
        return rest.split_once('/').map_or(rest, |(_, r)| r).to_owned();
    }
    if let Some(rest) = text.strip_prefix("/rustc/") {
        return rest.split_once('/').map_or(rest, |(_, r)| r).to_owned();
    }
    // Read once: a stack's every frame has a location.
    static CWD: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    if let Some(cwd) = CWD.get_or_init(|| std::env::current_dir().ok()) {
        if let Ok(rel) = path.strip_prefix(cwd) {
            return rel.to_string_lossy().into_owned();
        }
    }
    text.into_owned()
}

/// Folded stacks separate frames with `;`: keep it out of names (Rust's `[u8; 8]`).
fn sanitize(name: &str) -> String {
    name.replace(';', ",")
}

fn unknown_name(
    why: Unknown,
    file: Option<&str>,
    stats: &mut SymbolStats,
    strings: &mut Strings,
) -> u32 {
    *stats.unknown.entry(why).or_insert(0) += 1;
    let label = match why {
        Unknown::Jit => "[unknown: anon]".to_owned(),
        Unknown::Vdso => "[unknown: vdso]".to_owned(),
        Unknown::Kernel => "[unknown: kernel]".to_owned(),
        Unknown::NoMapping => "[unknown]".to_owned(),
        _ => {
            let file = file.unwrap_or("?");
            *stats.unknown_files.entry(file.to_owned()).or_insert(0) += 1;
            let base = file.rsplit('/').next().unwrap_or(file);
            format!("[unknown: {base}]")
        }
    };
    strings.intern(&label)
}

/// Whether a trace recorded on boot `boot_id` can be symbolized with this machine's kernel
/// symbols (an empty id is taken as this boot).
pub fn same_boot(boot_id: &str) -> bool {
    boot_id.is_empty() || boot_id == current_boot_id()
}

fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A copy of this process's vDSO in a temporary file: the same kernel maps the same vDSO
/// into every process, so it names the traced program's vDSO frames.
struct OwnVdso {
    path: PathBuf,
}

impl OwnVdso {
    fn read() -> Option<Self> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
        let range = line.split_whitespace().next()?;
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        let len = usize::try_from(end.checked_sub(start)?).ok()?;
        if len > (1 << 20) {
            return None;
        }
        let mut mem = std::fs::File::open("/proc/self/mem").ok()?;
        mem.seek(SeekFrom::Start(start)).ok()?;
        let mut image = vec![0u8; len];
        mem.read_exact(&mut image).ok()?;
        let path = std::env::temp_dir().join(format!(
            "iotrace-vdso-{}-{}.so",
            std::process::id(),
            crate::sys::monotonic_ns()
        ));
        std::fs::write(&path, image).ok()?;
        Some(OwnVdso { path })
    }
}

impl Drop for OwnVdso {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotrace_trace::{Mmap, Record, StackDefs, StackNode};

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(42)
    }

    fn mmap(addr: u64, len: u64, pgoff: u64, filename: &str) -> Record {
        Record::Mmap(Mmap {
            pid: 1,
            tid: 1,
            time_ns: 0,
            addr,
            len,
            pgoff,
            ino: 0,
            build_id: vec![],
            filename: filename.into(),
        })
    }

    /// This test binary's executable mapping holding `addr`, from /proc/self/maps.
    fn own_mapping(addr: u64) -> Record {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (start, end) = f[0].split_once('-').unwrap();
            let (start, end) = (
                u64::from_str_radix(start, 16).unwrap(),
                u64::from_str_radix(end, 16).unwrap(),
            );
            if start <= addr && addr < end {
                let pgoff = u64::from_str_radix(f[2], 16).unwrap();
                return mmap(start, end - start, pgoff, f[5]);
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn names_come_from_files_and_unknown_frames_say_why() {
        let addr = a_function_to_find as *const () as usize as u64;
        let mut fold = StackFold::new(false);
        let records = [
            own_mapping(addr),
            mmap(0x1000_0000, 0x1000, 0, "/nonexistent/libfoo.so"),
            mmap(0x2000_0000, 0x1000, 0, "//anon"),
            Record::StackDefs(StackDefs {
                nodes: vec![
                    StackNode { parent: 0, addr: 1 },
                    StackNode { parent: 1, addr },
                    StackNode {
                        parent: 1,
                        addr: 0x1000_0010,
                    },
                    StackNode {
                        parent: 1,
                        addr: 0x2000_0010,
                    },
                    StackNode {
                        parent: 1,
                        addr: 0x3000_0010,
                    },
                    StackNode {
                        parent: 1,
                        addr: 0xffff_ffff_8100_0000,
                    },
                ],
            }),
        ];
        for r in &records {
            fold.add(r, &mut |_, _| {});
        }
        let keys: Vec<FrameKey> = (2..=6).map(|n| (n, false)).collect();
        let (symbols, stats) = symbolize(&mut fold, keys.clone(), None);
        let name = |n: u32| {
            fold.strings
                .get(symbols.get((n, false)).unwrap())
                .to_owned()
        };
        assert!(name(2).ends_with("a_function_to_find"), "{}", name(2));
        assert_eq!(name(3), "[unknown: libfoo.so]");
        assert_eq!(name(4), "[unknown: anon]");
        assert_eq!(name(5), "[unknown]");
        assert_eq!(name(6), "[unknown: kernel]");
        assert_eq!(stats.frames, 5);
        assert_eq!(stats.unknown_total(), 4);
        assert_eq!(stats.unknown.get(&Unknown::MissingFile), Some(&1));
        assert_eq!(stats.unknown.get(&Unknown::Jit), Some(&1));
        assert_eq!(stats.unknown.get(&Unknown::NoMapping), Some(&1));
        assert_eq!(stats.unknown.get(&Unknown::Kernel), Some(&1));
        assert!(
            stats.summary().contains("file missing: 1"),
            "{}",
            stats.summary()
        );
    }

    /// A fold of process `pid` with one anonymous executable mapping and stacks whose
    /// frames are at `addrs` (in it, or in no mapping at all).
    fn jit_fold(pid: u32, addrs: &[u64]) -> StackFold {
        let mut fold = StackFold::new(false);
        let mut anon = mmap(0x2000_0000, 0x1000, 0, "//anon");
        if let Record::Mmap(m) = &mut anon {
            m.pid = pid;
            m.tid = pid;
        }
        let mut nodes = vec![StackNode {
            parent: 0,
            addr: u64::from(pid),
        }];
        nodes.extend(addrs.iter().map(|&addr| StackNode { parent: 1, addr }));
        for r in [anon, Record::StackDefs(StackDefs { nodes })] {
            fold.add(&r, &mut |_, _| {});
        }
        fold
    }

    /// A `/tmp/perf-PID.map` for a pid no process has (pids stay below 2^22), one per test
    /// (they run in parallel), removed on drop.
    struct FakeMap(u32);

    impl FakeMap {
        fn new(content: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xff;
            let pid = 3_000_000_000 + (std::process::id() << 8 | n);
            std::fs::write(perfmap::path(pid), content).unwrap();
            FakeMap(pid)
        }
    }

    impl Drop for FakeMap {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(perfmap::path(self.0));
        }
    }

    #[test]
    fn jit_frames_are_named_from_the_processes_perf_map() {
        let map = FakeMap::new(
            "20000000 100 JS:*burnCpu [eval]:1:17\nnot a line\n30000000 100 JS:~outside\n",
        );
        let mut fold = jit_fold(map.0, &[0x2000_0010, 0x3000_0010, 0x2000_0800]);
        let keys: Vec<FrameKey> = (2..=4).map(|n| (n, false)).collect();
        let (symbols, stats) = symbolize(&mut fold, keys, None);
        let name = |n: u32| {
            fold.strings
                .get(symbols.get((n, false)).unwrap())
                .to_owned()
        };
        assert_eq!(name(2), "JS:*burnCpu [eval]:1:17", "anonymous memory");
        assert_eq!(name(3), "JS:~outside", "no mapping");
        assert_eq!(name(4), "[unknown: anon]", "in no line of the map");
        assert!(symbols.is_jit((2, false)) && !symbols.is_jit((4, false)));
        assert_eq!(
            (stats.frames, stats.jit_named, stats.jit_bad_lines),
            (3, 2, 1)
        );
        assert_eq!(stats.unknown.get(&Unknown::Jit), Some(&1));
        assert!(
            stats.summary().contains("2 named from JIT maps"),
            "{}",
            stats.summary()
        );
    }

    #[test]
    fn a_trace_from_another_boot_does_not_read_todays_perf_maps() {
        // The pid belonged to another process then.
        let map = FakeMap::new("20000000 100 JS:*burnCpu\n");
        let mut fold = jit_fold(map.0, &[0x2000_0010]);
        fold.boot_id = "another-boot".into();
        let (symbols, stats) = symbolize(&mut fold, [(2, false)], None);
        assert_eq!(
            fold.strings.get(symbols.get((2, false)).unwrap()),
            "[unknown: anon]"
        );
        assert_eq!(stats.jit_named, 0);
    }
}
