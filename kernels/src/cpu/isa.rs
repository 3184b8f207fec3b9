//! Which SIMD instruction set the kernels use, detected once at run time.
//!
//! `KUBESWIFT_KERNELS_ISA=scalar|avx2|avx512|avx512bf16` caps the level (never raises it past
//! what the CPU has); tests and benchmarks use it to exercise each code path.

use std::sync::OnceLock;

/// An instruction-set level; each level includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, whatever the compiler's baseline target allows.
    Scalar,
    /// AVX2 + FMA (Haswell, Zen).
    Avx2,
    /// AVX-512 F/BW/VL/DQ (Skylake-SP, Zen 4).
    Avx512,
    /// AVX-512 plus the BF16 dot-product instructions (Cooper Lake, Sapphire Rapids, Zen 4).
    Avx512Bf16,
}

impl Isa {
    /// Parses the names `KUBESWIFT_KERNELS_ISA` accepts.
    pub fn parse(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            "avx512bf16" | "avx512_bf16" => Some(Isa::Avx512Bf16),
            _ => None,
        }
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

/// The level the kernels use: [`detected`], capped by `KUBESWIFT_KERNELS_ISA` if set.
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let cap = std::env::var("KUBESWIFT_KERNELS_ISA")
            .ok()
            .and_then(|v| Isa::parse(&v));
        match cap {
            Some(cap) => cap.min(detected()),
            None => detected(),
        }
    })
}

/// Every level this CPU supports, lowest first (for tests that cover each path).
pub fn supported() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16]
        .into_iter()
        .filter(|isa| *isa <= detected())
        .collect()
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    let avx2 = std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq");
    let bf16 = avx512 && std::arch::is_x86_feature_detected!("avx512bf16");
    match (avx2, avx512, bf16) {
        (_, _, true) => Isa::Avx512Bf16,
        (_, true, _) => Isa::Avx512,
        (true, _, _) => Isa::Avx2,
        _ => Isa::Scalar,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Scalar
}
