//! Which CPU instructions dlm's own kernels use: detected once from cpuid, optionally lowered by
//! `DLM_CPU_ISA`, and read by every kernel that has more than one path (the packed GEMMs, the
//! AVX2-compiled loops of the fused ops), so forcing `generic` forces the portable code
//! everywhere dlm chooses. (candle's and the `gemm` crate's own kernels dispatch on their own.)

use std::sync::OnceLock;

/// The kernel families, each a superset of the one before it on the CPUs dlm meets, so "this
/// path or a lower one" is a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, compiled for the crate's baseline target.
    Generic,
    /// AVX2 + FMA (+ F16C): the x86-64 floor of the fast paths.
    Avx2,
    /// AVX-512 F/BW/VL.
    Avx512,
    /// AVX-512 with the bf16 dot product (VDPBF16PS): Zen 4, Cooper Lake and later Xeons.
    Avx512Bf16,
    /// AMX tiles with TDPBF16PS: Sapphire Rapids and later Xeons.
    AmxBf16,
}

impl Isa {
    pub const ALL: [Isa; 5] = [
        Isa::Generic,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::AmxBf16,
    ];

    /// The spelling `DLM_CPU_ISA` takes and the reports print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::AmxBf16 => "amx-bf16",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s || i.name().replace('-', "") == s.replace('-', ""))
    }

    /// The CPU features the path needs, by their /proc/cpuinfo names.
    pub fn requires(self) -> &'static [&'static str] {
        match self {
            Isa::Generic => &[],
            Isa::Avx2 => &["avx2", "fma", "f16c"],
            Isa::Avx512 => &["avx512f", "avx512bw", "avx512vl"],
            Isa::Avx512Bf16 => &["avx512_bf16"],
            Isa::AmxBf16 => &["amx_tile", "amx_bf16"],
        }
    }

    /// Whether this path multiplies a bf16 b in bf16: b packed in k pairs, a rounded to bf16
    /// (autocast's arithmetic), instead of widening both to f32.
    pub fn bf16_products(self) -> bool {
        matches!(self, Isa::Avx512Bf16 | Isa::AmxBf16)
    }

    /// Whether dlm has kernels for this path: every path now.
    pub fn has_kernels(self) -> bool {
        true
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What cpuid (and the OS) grant, by /proc/cpuinfo names.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// CPU brand string.
    pub model: String,
    /// (name, present), in a fixed order.
    pub flags: Vec<(&'static str, bool)>,
}

impl Features {
    pub fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|&(n, on)| n == name && on)
    }

    /// The highest path whose every feature is present.
    pub fn best(&self) -> Isa {
        let mut best = Isa::Generic;
        for isa in Isa::ALL {
            if isa.requires().iter().all(|f| self.has(f)) {
                best = isa;
            } else {
                break;
            }
        }
        best
    }
}

/// The CPU's features, read once.
pub fn features() -> &'static Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    FEATURES.get_or_init(detect)
}

/// The path the kernels take, decided once: the CPU's best, or `DLM_CPU_ISA` where that names a
/// lower one. A path above the CPU's, or a name not known, is a warning on stderr (printed
/// once) and the CPU's best is used: a run keeps going, and the warning (and `dlm info
/// --system`) says the requested path did not run.
pub fn selected() -> Isa {
    static SELECTED: OnceLock<Isa> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        let best = features().best();
        let (isa, warning) = choose(best, std::env::var("DLM_CPU_ISA").ok().as_deref());
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        isa
    })
}

/// The path of dlm's GEMM kernels: `selected()` (every path has kernels).
pub fn gemm_path() -> Isa {
    selected()
}

/// The path for a `DLM_CPU_ISA` value on a CPU whose best is `best`, and the warning to print.
fn choose(best: Isa, requested: Option<&str>) -> (Isa, Option<String>) {
    let Some(req) = requested.filter(|s| !s.trim().is_empty()) else {
        return (best, None);
    };
    let names: Vec<_> = Isa::ALL.iter().map(|i| i.name()).collect();
    match Isa::parse(req) {
        None => (
            best,
            Some(format!(
                "DLM_CPU_ISA={req} is not a path (expected one of {}); using {best}",
                names.join(", ")
            )),
        ),
        Some(isa) if isa > best => (
            best,
            Some(format!(
                "DLM_CPU_ISA={req}: this CPU lacks {} (its best path is {best}); using {best}",
                isa.requires()
                    .iter()
                    .filter(|f| !features().has(f))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ),
        Some(isa) => (isa, None),
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 is read only where the maximum leaf reaches it.
    let max_leaf = __cpuid(0).eax;
    let (leaf7, leaf7_1) = if max_leaf >= 7 {
        (__cpuid_count(7, 0), __cpuid_count(7, 1))
    } else {
        (__cpuid(0), __cpuid(0))
    };
    let bit = |reg: u32, b: u32| max_leaf >= 7 && reg >> b & 1 == 1;
    // The AVX-512 and AMX bits also need the OS to save their registers: std's detection checks
    // XCR0 for the AVX-512 ones; AMX's tile data needs a per-process permission (amx_permitted).
    let avx512f = std::is_x86_feature_detected!("avx512f");
    let amx_tile = bit(leaf7.edx, 24) && amx_permitted();
    let flags = vec![
        ("avx2", std::is_x86_feature_detected!("avx2")),
        ("fma", std::is_x86_feature_detected!("fma")),
        ("f16c", std::is_x86_feature_detected!("f16c")),
        (
            "avx_vnni",
            bit(leaf7_1.eax, 4) && std::is_x86_feature_detected!("avx2"),
        ),
        ("avx512f", avx512f),
        ("avx512bw", std::is_x86_feature_detected!("avx512bw")),
        ("avx512vl", std::is_x86_feature_detected!("avx512vl")),
        ("avx512_vnni", bit(leaf7.ecx, 11) && avx512f),
        ("avx512_vbmi", bit(leaf7.ecx, 1) && avx512f),
        ("avx512_bf16", bit(leaf7_1.eax, 5) && avx512f),
        ("amx_tile", amx_tile),
        ("amx_bf16", bit(leaf7.edx, 22) && amx_tile),
        ("amx_int8", bit(leaf7.edx, 25) && amx_tile),
    ];
    Features {
        model: brand(),
        flags,
    }
}

/// The CPU's brand string (cpuid leaves 0x80000002..4).
#[cfg(target_arch = "x86_64")]
fn brand() -> String {
    use std::arch::x86_64::__cpuid;
    if __cpuid(0x8000_0000).eax < 0x8000_0004 {
        return "unknown x86-64".into();
    }
    let bytes: Vec<u8> = (0x8000_0002u32..=0x8000_0004)
        .flat_map(|leaf| {
            let r = __cpuid(leaf);
            [r.eax, r.ebx, r.ecx, r.edx]
        })
        .flat_map(u32::to_le_bytes)
        .collect();
    String::from_utf8_lossy(&bytes)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

/// Linux lets a process use AMX's tile data only after asking (ARCH_REQ_XCOMP_PERM for
/// XFEATURE_XTILEDATA); without it the first tile instruction faults. Asked once, here, and
/// only on CPUs whose cpuid reports AMX.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes the process's permitted xsave features.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn amx_permitted() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features {
        model: std::env::consts::ARCH.to_string(),
        flags: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_ordered_and_parsed() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse("AVX512_BF16"), Some(Isa::Avx512Bf16));
        assert_eq!(Isa::parse("amx_bf16"), Some(Isa::AmxBf16));
        assert!(Isa::Generic < Isa::Avx2 && Isa::Avx512Bf16 < Isa::AmxBf16);
    }

    /// A lower path is taken as asked; a higher or unknown one warns and keeps the CPU's best.
    #[test]
    fn dlm_cpu_isa_lowers_but_never_raises() {
        assert_eq!(choose(Isa::Avx2, None), (Isa::Avx2, None));
        assert_eq!(choose(Isa::Avx2, Some("generic")), (Isa::Generic, None));
        let (isa, w) = choose(Isa::Avx2, Some("amx-bf16"));
        assert_eq!(isa, Isa::Avx2);
        assert!(w.is_some_and(|w| w.contains("lacks")));
        let (isa, w) = choose(Isa::Generic, Some("sse9"));
        assert_eq!(isa, Isa::Generic);
        assert!(w.is_some_and(|w| w.contains("not a path")));
    }

    /// The best path is consistent with the flags it is made of.
    #[test]
    fn detection_is_consistent() {
        let f = features();
        let best = f.best();
        for isa in Isa::ALL.into_iter().filter(|i| *i <= best) {
            assert!(isa.requires().iter().all(|r| f.has(r)), "{isa}");
        }
        println!("cpu: {} best path {best}", f.model);
    }
}
