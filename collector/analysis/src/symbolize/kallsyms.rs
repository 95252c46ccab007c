//! Kernel function names from `/proc/kallsyms`, read once into one sorted table. Reading the
//! file is most of the cost (the kernel formats 200,000 lines), so it is started early on a
//! thread of its own ([`KernelSymbols::spawn`]) while the trace is read.

use std::io::Read;
use std::thread::JoinHandle;

fn hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc << 4 | u64::from(v))
    })
}

/// Function symbols of the running kernel, by address.
#[derive(Debug, Default)]
pub struct KernelSymbols {
    /// `(address, start, end)` into `names`, sorted by address.
    table: Vec<(u64, u32, u32)>,
    names: String,
}

impl KernelSymbols {
    /// Read `/proc/kallsyms`; `None` when it is unreadable or shows no addresses (a user
    /// that `kernel.kptr_restrict` keeps from seeing them).
    pub fn load() -> Option<Self> {
        let mut text = Vec::with_capacity(16 << 20);
        std::fs::File::open("/proc/kallsyms")
            .and_then(|mut f| f.read_to_end(&mut text))
            .ok()?;
        Self::parse(&text)
    }

    /// [`KernelSymbols::load`] on a thread of its own.
    pub fn spawn() -> JoinHandle<Option<Self>> {
        std::thread::spawn(Self::load)
    }

    /// `ADDR TYPE NAME [MODULE]` lines; text symbols (`t`, `T`, `w`, `W`) are kept.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let mut s = KernelSymbols::default();
        for line in text.split(|&b| b == b'\n') {
            let mut parts = line
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|p| !p.is_empty());
            let (Some(addr), Some(ty), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !matches!(ty, b"t" | b"T" | b"w" | b"W") {
                continue;
            }
            let Some(addr) = hex(addr).filter(|&a| a != 0) else {
                continue;
            };
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            let start = s.names.len() as u32;
            s.names.push_str(name);
            s.table.push((addr, start, s.names.len() as u32));
        }
        if s.table.is_empty() {
            return None;
        }
        s.table.sort_unstable_by_key(|e| e.0);
        Some(s)
    }

    /// The function holding `addr`: the last symbol at or below it.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.table.partition_point(|e| e.0 <= addr).checked_sub(1)?;
        let (_, start, end) = self.table[i];
        self.names.get(start as usize..end as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_the_enclosing_function() {
        let text = "ffffffff81000000 T _stext\nffffffff81000100 t do_nanosleep\nffffffff81000080 D some_data\nffffffff81000200 t mod_fn\t[ext4]\n0000000000000000 T hidden\n";
        let k = KernelSymbols::parse(text.as_bytes()).unwrap();
        assert_eq!(k.lookup(0xffffffff81000150), Some("do_nanosleep"));
        assert_eq!(k.lookup(0xffffffff81000090), Some("_stext"));
        assert_eq!(k.lookup(0xffffffff81000201), Some("mod_fn"));
        assert_eq!(k.lookup(0xffffffff80000000), None);
        assert!(KernelSymbols::parse(b"0000000000000000 T x\n").is_none());
        assert!(KernelSymbols::parse(b"zz T x\n\xff\xfe").is_none());
    }
}
