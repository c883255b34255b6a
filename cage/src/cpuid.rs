//! The virtual CPU every caged program sees through CPUID: a baseline
//! x86-64 (SSE2 through SSE4.2, POPCNT, CMPXCHG16B) with a fixed cache
//! geometry, so libc picks the same code paths and cache assumptions on
//! every host of the machine class. It hides what cannot be made
//! deterministic: RDRAND and RDSEED (they cannot be trapped), RDPID, and the
//! extended state that would announce AVX. Hosts have at least these
//! features (the machine class requires x86-64-v2), so nothing announced is
//! missing.
//!
//! The vendor string is "GenuineIntel", not a name of our own: glibc (2.36
//! at least) reads leaf 1 only for vendors it knows, so under an unknown
//! vendor it sees no SSE2 and every dynamically linked program dies with
//! "CPU ISA level is lower than required". Its Intel path also takes cache
//! sizes from leaf 4, which this table fixes. The brand string still says
//! what the CPU is.

/// Highest basic leaf.
const MAX_LEAF: u32 = 0x7;
/// Highest extended leaf.
const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;
/// "GenuineIntel" as EBX, EDX, ECX hold it.
const VENDOR: [u32; 3] = [u32::from_le_bytes(*b"Genu"), u32::from_le_bytes(*b"ineI"), u32::from_le_bytes(*b"ntel")];
/// The brand string, 48 bytes.
const BRAND: &[u8; 48] = b"DockLock virtual CPU (x86-64-v2)\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// Leaf 1 EDX: FPU, VME, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC, SEP, MTRR,
/// PGE, MCA, CMOV, PAT, PSE-36, CLFSH, MMX, FXSR, SSE, SSE2.
const LEAF1_EDX: u32 = 0x078b_fbff;
/// Leaf 1 ECX: SSE3 (0), PCLMULQDQ (1), SSSE3 (9), CX16 (13), SSE4.1
/// (19), SSE4.2 (20), POPCNT (23). Not RDRAND (30), not OSXSAVE (27).
const LEAF1_ECX: u32 = (1 << 0) | (1 << 1) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23);
/// Extended leaf 1: ECX LAHF/SAHF (0); EDX SYSCALL (11), NX (20), LM (29).
const EXT1_ECX: u32 = 1;
const EXT1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 29);

/// Leaf 4 (deterministic cache parameters), one entry per cache: EAX (type,
/// level, self-initialising, one thread sharing), EBX (line size, one
/// partition, ways), ECX (sets), all minus one where the format says so.
/// L1d and L1i 32 KiB 8-way, L2 1 MiB 16-way, L3 8 MiB 16-way, 64-byte lines.
const CACHES: [[u32; 4]; 4] = [
    [0x121, 63 | (7 << 22), 63, 0],
    [0x122, 63 | (7 << 22), 63, 0],
    [0x143, 63 | (15 << 22), 1023, 0],
    [0x163, 63 | (15 << 22), 8191, 0],
];

/// EAX, EBX, ECX, EDX of `cpuid(leaf, subleaf)` on the virtual CPU.
pub(crate) fn virtual_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let brand = |index: usize| {
        let words: Vec<u32> = BRAND[index * 16..index * 16 + 16]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        [words[0], words[1], words[2], words[3]]
    };
    match leaf {
        0 => [MAX_LEAF, VENDOR[0], VENDOR[2], VENDOR[1]],
        // Family 6, model 0, stepping 0; one logical processor; CLFLUSH
        // line 8 x 8 bytes.
        1 => [0x0000_0600, 0x0001_0800, LEAF1_ECX, LEAF1_EDX],
        // One call; descriptor 0xff: "see leaf 4".
        2 => [0x0000_ff01, 0, 0, 0],
        4 => CACHES.get(subleaf as usize).copied().unwrap_or([0; 4]),
        // Structured extended features: none announced (no AVX2, BMI,
        // RDSEED, RDPID, ...), whatever the subleaf.
        7 => {
            let _ = subleaf;
            [0, 0, 0, 0]
        }
        0x8000_0000 => [MAX_EXTENDED_LEAF, 0, 0, 0],
        0x8000_0001 => [0, 0, EXT1_ECX, EXT1_EDX],
        0x8000_0002..=0x8000_0004 => brand((leaf - 0x8000_0002) as usize),
        // 48-bit virtual and 40-bit physical addresses.
        0x8000_0008 => [0x0000_3028, 0, 0, 0],
        _ => [0, 0, 0, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_virtual_cpu_hides_what_cannot_be_trapped() {
        let [max, ebx, ecx, edx] = virtual_cpuid(0, 0);
        assert_eq!(max, MAX_LEAF);
        let vendor: Vec<u8> = [ebx, edx, ecx].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(vendor, b"GenuineIntel");
        let [_, _, ecx, _] = virtual_cpuid(1, 0);
        assert_eq!(ecx & (1 << 30), 0, "no RDRAND");
        assert_eq!(ecx & (1 << 27), 0, "no OSXSAVE, so no AVX state");
        let [_, ebx, ecx, _] = virtual_cpuid(7, 0);
        assert_eq!(ebx & (1 << 18), 0, "no RDSEED");
        assert_eq!(ecx & (1 << 22), 0, "no RDPID");
        let brand: Vec<u8> =
            (0x8000_0002..=0x8000_0004).flat_map(|leaf| virtual_cpuid(leaf, 0)).flat_map(u32::to_le_bytes).collect();
        assert!(brand.starts_with(b"DockLock virtual CPU"));
        let size = |[_, ebx, ecx, _]: [u32; 4]| {
            ((ebx >> 22) + 1) * (((ebx >> 12) & 0x3ff) + 1) * ((ebx & 0xfff) + 1) * (ecx + 1)
        };
        let sizes: Vec<u32> = (0..5).map(|sub| virtual_cpuid(4, sub)).filter(|l| l[0] & 0x1f != 0).map(size).collect();
        assert_eq!(sizes, [32 << 10, 32 << 10, 1 << 20, 8 << 20]);
    }
}
