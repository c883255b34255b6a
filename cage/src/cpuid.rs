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
//! "CPU ISA level is lower than required". Its Intel path takes cache
//! sizes from leaf 2's descriptors, which this table fixes (leaf 4 says the
//! same for programs that read it). The brand string still says what the
//! CPU is.

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
/// L1d and L1i 32 KiB 8-way, L2 1 MiB 8-way, L3 8 MiB 16-way, 64-byte lines.
const CACHES: [[u32; 4]; 4] = [
    [0x121, 63 | (7 << 22), 63, 0],
    [0x122, 63 | (7 << 22), 63, 0],
    [0x143, 63 | (7 << 22), 2047, 0],
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
        // One call (AL = 1) and the caches as descriptor bytes, no
        // register's bit 31 set (that would mark it invalid): 0x2c L1d and
        // 0x30 L1i 32 KiB 8-way, 0x87 L2 1 MiB 8-way, 0xe4 L3 8 MiB
        // 16-way, all with 64-byte lines; the same caches as leaf 4. Not
        // 0xff ("see leaf 4"): glibc answers each of its dozen cache
        // questions from leaf 2 and then, for 0xff, walks leaf 4 again,
        // and every CPUID is a trap (54 of them before a static `true`'s
        // `main`, against 21 with descriptors).
        2 => [0x3087_2c01, 0x0000_00e4, 0, 0],
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

/// `/proc/cpuinfo` of the virtual CPU: one processor, the features
/// leaves 1 and 0x8000_0001 announce, under their kernel names.
pub(crate) fn cpuinfo() -> String {
    const EDX: [(u32, &str); 22] = [
        (0, "fpu"),
        (1, "vme"),
        (2, "de"),
        (3, "pse"),
        (4, "tsc"),
        (5, "msr"),
        (6, "pae"),
        (7, "mce"),
        (8, "cx8"),
        (9, "apic"),
        (11, "sep"),
        (12, "mtrr"),
        (13, "pge"),
        (14, "mca"),
        (15, "cmov"),
        (16, "pat"),
        (17, "pse36"),
        (19, "clflush"),
        (23, "mmx"),
        (24, "fxsr"),
        (25, "sse"),
        (26, "sse2"),
    ];
    const ECX: [(u32, &str); 7] =
        [(0, "pni"), (1, "pclmulqdq"), (9, "ssse3"), (13, "cx16"), (19, "sse4_1"), (20, "sse4_2"), (23, "popcnt")];
    const EXT_EDX: [(u32, &str); 3] = [(11, "syscall"), (20, "nx"), (29, "lm")];
    let [_, _, ecx, edx] = virtual_cpuid(1, 0);
    let [_, _, ext_ecx, ext_edx] = virtual_cpuid(0x8000_0001, 0);
    let named = |word: u32, names: &[(u32, &'static str)]| {
        names.iter().filter(move |(bit, _)| word & (1 << bit) != 0).map(|(_, name)| *name).collect::<Vec<_>>()
    };
    let mut flags = named(edx, &EDX);
    flags.extend(named(ext_edx, &EXT_EDX));
    flags.extend(named(ecx, &ECX));
    if ext_ecx & 1 != 0 {
        flags.push("lahf_lm");
    }
    let brand = String::from_utf8_lossy(BRAND).trim_end_matches('\0').to_owned();
    format!(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 0\nmodel name\t: {brand}\n\
         stepping\t: 0\ncache size\t: 8192 KB\nphysical id\t: 0\nsiblings\t: 1\ncore id\t\t: 0\n\
         cpu cores\t: 1\napicid\t\t: 0\nfpu\t\t: yes\nfpu_exception\t: yes\ncpuid level\t: {MAX_LEAF}\n\
         wp\t\t: yes\nflags\t\t: {}\nclflush size\t: 64\ncache_alignment\t: 64\n\
         address sizes\t: 40 bits physical, 48 bits virtual\n\n",
        flags.join(" ")
    )
}

/// The class of machines a run's root holds on, as the witness header's
/// `machine` line names it. Where the CPU can fault CPUID, every program
/// sees the virtual CPU above, so the class is the architecture and that
/// CPU. Where it cannot (some AMD hosts and hypervisors), CPUID reaches
/// the real CPU, and what a program does may depend on which CPU it is:
/// the class then names the host CPU (vendor, signature, brand and a
/// digest of the feature words libraries dispatch on), so two such hosts
/// give one root only when they have the same CPU, and a replay on
/// another CPU says so at the header rather than later.
///
/// Computed once per process, before any supervisor turns CPUID faulting
/// on (a CPUID on a thread with faulting on would fault).
///
/// Whether programs see the host CPU: [`shows_host_cpu`].
pub fn machine_class() -> &'static str {
    &class().0
}

/// Whether caged programs see this host's CPU through CPUID (it cannot
/// fault CPUID), so that a root holds only among hosts with the same CPU.
pub fn shows_host_cpu() -> bool {
    class().1
}

/// The machine class and whether it names the host CPU, found once.
fn class() -> &'static (String, bool) {
    static CLASS: std::sync::OnceLock<(String, bool)> = std::sync::OnceLock::new();
    CLASS.get_or_init(|| {
        if can_fault_cpuid() {
            ("x86_64 cpuid=virtual/1".to_owned(), false)
        } else {
            (format!("x86_64 cpuid=host {}", host_cpu()), true)
        }
    })
}

/// `arch_prctl`'s request to turn CPUID faulting off (0) or on (1) for the
/// calling thread.
pub(crate) const ARCH_SET_CPUID: u64 = 0x1012;

/// Whether this CPU and kernel can fault CPUID. `ARCH_SET_CPUID` fails
/// with `ENODEV` before looking at its argument where they cannot; asking
/// for CPUID on (1) changes nothing where they can, because faulting is
/// off outside the supervisor's guard.
#[allow(unsafe_code)]
fn can_fault_cpuid() -> bool {
    // SAFETY: arch_prctl(ARCH_SET_CPUID, 1) sets this thread's CPUID
    // setting to its default; it takes no pointers.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 1u64) == 0 }
}

/// The host CPU as a caged program would see it through CPUID: vendor,
/// leaf 1's signature (family, model, stepping), the brand string, and a
/// digest of the feature words (leaves 1, 7 and 0x8000_0001; not leaf 1's
/// EBX, which carries the APIC id of whichever CPU ran this).
fn host_cpu() -> String {
    use core::arch::x86_64::{__cpuid_count, CpuidResult};
    // This thread has CPUID faulting off (see `machine_class`).
    let leaf = |leaf: u32, sub: u32| __cpuid_count(leaf, sub);
    let zero = leaf(0, 0);
    let vendor: Vec<u8> = [zero.ebx, zero.edx, zero.ecx].iter().flat_map(|word| word.to_le_bytes()).collect();
    let one = leaf(1, 0);
    let seven = if zero.eax >= 7 { leaf(7, 0) } else { CpuidResult { eax: 0, ebx: 0, ecx: 0, edx: 0 } };
    let extended = leaf(0x8000_0000, 0).eax;
    let mut features = vec![one.ecx, one.edx, seven.ebx, seven.ecx, seven.edx];
    if extended >= 0x8000_0001 {
        let ext1 = leaf(0x8000_0001, 0);
        features.extend([ext1.ecx, ext1.edx]);
    }
    let mut brand = Vec::new();
    if extended >= 0x8000_0004 {
        for index in 0x8000_0002..=0x8000_0004 {
            let words = leaf(index, 0);
            brand.extend([words.eax, words.ebx, words.ecx, words.edx].iter().flat_map(|word| word.to_le_bytes()));
        }
    }
    let bytes: Vec<u8> = features.iter().flat_map(|word| word.to_le_bytes()).collect();
    let digest = hex::encode(&crate::witness::digest(&bytes)[..8]);
    let brand = String::from_utf8_lossy(&brand).trim_end_matches('\0').trim().to_owned();
    format!("{} {:08x} {brand:?} features={digest}", String::from_utf8_lossy(&vendor), one.eax)
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

    #[test]
    fn cpuinfo_names_what_cpuid_announces() {
        let text = cpuinfo();
        assert!(text.contains("model name\t: DockLock virtual CPU (x86-64-v2)\n"), "{text}");
        let flags = text.lines().find_map(|line| line.strip_prefix("flags\t\t: ")).unwrap();
        for flag in ["sse2", "sse4_2", "popcnt", "lm", "nx", "lahf_lm"] {
            assert!(flags.split(' ').any(|f| f == flag), "{flag} in {flags}");
        }
        for hidden in ["rdrand", "rdseed", "avx", "avx2", "hypervisor", "rdpid"] {
            assert!(!flags.split(' ').any(|f| f == hidden), "{hidden} in {flags}");
        }
    }

    /// Leaf 2's descriptors (Intel SDM, table "Encoding of CPUID Leaf 2
    /// Descriptors") describe the caches leaf 4 describes.
    #[test]
    fn leaf_2_and_leaf_4_agree() {
        // descriptor -> (leaf 4 type and level, size, ways, line)
        let known = |byte: u8| match byte {
            0x2c => Some((0x21, 32 << 10, 8, 64)),
            0x30 => Some((0x22, 32 << 10, 8, 64)),
            0x87 => Some((0x43, 1 << 20, 8, 64)),
            0xe4 => Some((0x63, 8 << 20, 16, 64)),
            _ => None,
        };
        let registers = virtual_cpuid(2, 0);
        assert_eq!(registers[0] & 0xff, 1, "one call");
        assert!(registers.iter().all(|r| r & (1 << 31) == 0), "every register valid");
        let mut described: Vec<_> = registers
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .skip(1)
            .filter(|&byte| byte != 0)
            .map(|byte| known(byte).unwrap_or_else(|| panic!("descriptor {byte:#x}")))
            .collect();
        described.sort();
        let mut leaf4: Vec<_> = (0..5)
            .map(|sub| virtual_cpuid(4, sub))
            .filter(|l| l[0] & 0x1f != 0)
            .map(|[eax, ebx, ecx, _]| {
                let (ways, line) = ((ebx >> 22) + 1, (ebx & 0xfff) + 1);
                (eax & 0xff, ways * line * (((ebx >> 12) & 0x3ff) + 1) * (ecx + 1), ways, line)
            })
            .collect();
        leaf4.sort();
        assert_eq!(described, leaf4);
    }
}
