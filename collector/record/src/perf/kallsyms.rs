//! The syscall a thread blocked in, named from the kernel half of its switch-out stack.
//!
//! With syscalls counted in the kernel (see `syscount`) there is no sample per syscall to say
//! which one a thread was in when it switched out. The switch-out's kernel callchain says it
//! instead: the outermost frame below the syscall entry is the syscall's own function
//! (`__x64_sys_clock_nanosleep`, `__do_sys_wait4`, or a helper it tail-called such as
//! `ksys_read` or `__sys_recvfrom`). `/proc/kallsyms` is read once at the start of a
//! recording; only the functions whose names lead to a syscall are kept.

use rustc_hash::FxHashMap as HashMap;

/// Names of functions that are the body of one syscall, strongest first: a prefix, then the
/// syscall name.
const PREFIXES: [&str; 7] = [
    "__x64_sys_",
    "__do_sys_",
    "__se_sys_",
    "ksys_",
    "__sys_",
    "do_sys_",
    "do_",
];

/// How much a prefix is trusted (lower is better): the wrappers name the syscall exactly;
/// the helpers (`ksys_`, `__sys_`, `do_`) may be shared by two syscalls.
fn rank(prefix: usize) -> u8 {
    if prefix < 3 {
        0
    } else {
        1
    }
}

/// Kernel text symbols that name a syscall, as sorted address ranges.
#[derive(Default)]
pub(crate) struct SyscallSymbols {
    /// (start, end, syscall number, rank), sorted by start.
    ranges: Vec<(u64, u64, u16, u8)>,
    /// Frames already resolved: kernel addresses repeat from stack to stack.
    cache: HashMap<u64, Option<(u16, u8)>>,
}

impl SyscallSymbols {
    /// Read `/proc/kallsyms`; empty (every answer unknown) if it cannot be read or shows
    /// only zero addresses (kptr_restrict).
    pub(crate) fn load() -> Self {
        match std::fs::read_to_string("/proc/kallsyms") {
            Ok(text) => Self::parse(&text),
            Err(_) => Self::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Parse kallsyms text: `ADDR TYPE NAME [module]` lines.
    pub(crate) fn parse(text: &str) -> Self {
        let mut text_syms: Vec<(u64, Option<(u16, u8)>)> = Vec::new();
        for line in text.lines() {
            let mut parts = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !matches!(ty, "t" | "T") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            text_syms.push((addr, syscall_of_name(name)));
        }
        text_syms.sort_unstable_by_key(|s| s.0);
        let mut ranges = Vec::new();
        for (i, &(start, sc)) in text_syms.iter().enumerate() {
            let Some((nr, rank)) = sc else { continue };
            let end = text_syms
                .get(i + 1..)
                .and_then(|rest| rest.iter().find(|s| s.0 > start))
                .map_or(start + 4096, |s| s.0);
            ranges.push((start, end, nr, rank));
        }
        SyscallSymbols {
            ranges,
            cache: HashMap::default(),
        }
    }

    fn lookup(&mut self, addr: u64) -> Option<(u16, u8)> {
        if let Some(&hit) = self.cache.get(&addr) {
            return hit;
        }
        let i = self.ranges.partition_point(|r| r.0 <= addr);
        let hit = i
            .checked_sub(1)
            .map(|i| self.ranges[i])
            .filter(|r| addr < r.1)
            .map(|r| (r.2, r.3));
        if self.cache.len() < 1 << 16 {
            self.cache.insert(addr, hit);
        }
        hit
    }

    /// The syscall of a perf callchain (innermost first, with context markers): the
    /// outermost kernel frame of the best rank that names one.
    pub(crate) fn syscall_of(&mut self, chain: &[u64]) -> Option<u16> {
        const PERF_CONTEXT_USER: u64 = (-512i64) as u64;
        const PERF_CONTEXT_MAX: u64 = (-4095i64) as u64;
        let mut best: Option<(u16, u8)> = None;
        for &addr in chain {
            if addr == PERF_CONTEXT_USER {
                break;
            }
            if addr >= PERF_CONTEXT_MAX || addr == 0 {
                continue;
            }
            // Return addresses point after the call: look up the call itself.
            if let Some(hit) = self.lookup(addr.wrapping_sub(1)) {
                if best.is_none_or(|b| hit.1 <= b.1) {
                    best = Some(hit);
                }
            }
        }
        best.map(|b| b.0)
    }
}

/// [`SyscallSymbols`] read on a thread of its own: reading /proc/kallsyms takes ~0.1 s of
/// kernel time, which the held child would otherwise wait for before it may exec.
pub(crate) enum Lazy {
    Loading(Option<std::thread::JoinHandle<SyscallSymbols>>),
    Ready(SyscallSymbols),
}

impl Lazy {
    pub(crate) fn start() -> Self {
        let loader = std::thread::Builder::new()
            .name("iotrace-kallsyms".into())
            .spawn(SyscallSymbols::load)
            .ok();
        Lazy::Loading(loader)
    }

    /// The symbols, waiting for them the first time (empty if the loader failed).
    pub(crate) fn get(&mut self) -> &mut SyscallSymbols {
        if let Lazy::Loading(loader) = self {
            let symbols = loader
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default();
            *self = Lazy::Ready(symbols);
        }
        match self {
            Lazy::Ready(symbols) => symbols,
            Lazy::Loading(_) => unreachable!("set to Ready above"),
        }
    }
}

/// The syscall a kernel function's name is the body of, and how sure that is.
fn syscall_of_name(name: &str) -> Option<(u16, u8)> {
    // Compiler suffixes: `do_epoll_wait.part.0`, `__do_sys_foo.isra.0`.
    let name = name.split('.').next().unwrap_or(name);
    for (i, prefix) in PREFIXES.iter().enumerate() {
        if let Some(rest) = name.strip_prefix(prefix) {
            if let Ok(sysno) = rest.parse::<syscalls::Sysno>() {
                return u16::try_from(sysno.id()).ok().map(|nr| (nr, rank(i)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81000100 T entry_SYSCALL_64_after_hwframe
ffffffff81001000 T do_syscall_64
ffffffff81002000 T __x64_sys_clock_nanosleep
ffffffff81002100 T common_nsleep
ffffffff81003000 T ksys_read
ffffffff81003200 t vfs_read
ffffffff81004000 T __x64_sys_read
ffffffff81004040 D some_data
ffffffff81004080 T next_fn
ffffffff81005000 t do_epoll_wait.part.0
ffffffff81006000 T do_fancy_thing
";

    const KERNEL: u64 = (-128i64) as u64;
    const USER: u64 = (-512i64) as u64;

    #[test]
    fn the_outermost_wrapper_names_the_syscall() {
        let mut s = SyscallSymbols::parse(KALLSYMS);
        let nanosleep = syscalls::Sysno::clock_nanosleep.id() as u16;
        // schedule ← common_nsleep ← __x64_sys_clock_nanosleep ← do_syscall_64
        let chain = [
            KERNEL,
            0xffff_ffff_8100_2150,
            0xffff_ffff_8100_2050,
            0xffff_ffff_8100_1010,
            USER,
            0x4000,
        ];
        assert_eq!(s.syscall_of(&chain), Some(nanosleep));
    }

    #[test]
    fn a_tail_called_helper_names_it_when_no_wrapper_is_on_the_stack() {
        let mut s = SyscallSymbols::parse(KALLSYMS);
        let read = syscalls::Sysno::read.id() as u16;
        let epoll_wait = syscalls::Sysno::epoll_wait.id() as u16;
        assert_eq!(
            s.syscall_of(&[
                KERNEL,
                0xffff_ffff_8100_3250,
                0xffff_ffff_8100_3010,
                0xffff_ffff_8100_1010
            ]),
            Some(read)
        );
        assert_eq!(
            s.syscall_of(&[KERNEL, 0xffff_ffff_8100_5010]),
            Some(epoll_wait)
        );
        // A wrapper beats a helper wherever they are.
        assert_eq!(
            s.syscall_of(&[KERNEL, 0xffff_ffff_8100_3010, 0xffff_ffff_8100_4010]),
            Some(read)
        );
    }

    #[test]
    fn frames_outside_syscall_functions_and_user_frames_name_nothing() {
        let mut s = SyscallSymbols::parse(KALLSYMS);
        // do_fancy_thing is no syscall; next_fn ends __x64_sys_read's range; user addresses
        // are never looked up.
        assert_eq!(
            s.syscall_of(&[KERNEL, 0xffff_ffff_8100_6010, 0xffff_ffff_8100_4090]),
            None
        );
        assert_eq!(s.syscall_of(&[USER, 0xffff_ffff_8100_4010]), None);
        assert!(SyscallSymbols::parse("0000000000000000 T __x64_sys_read\ngarbage\n").is_empty());
    }
}
