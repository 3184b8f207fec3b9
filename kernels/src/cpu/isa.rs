//! Which SIMD instruction set the kernels use, detected once at run time.
//!
//! By default the kernels use the best level the CPU has, except on Intel CPUs, where
//! bf16 products run on the f32 kernel (see [`preferred`]).
//! `KUBESWIFT_KERNELS_ISA=scalar|avx2|avx512|avx512bf16` picks the level instead (never one
//! past what the CPU has); tests and benchmarks use it to exercise each code path.

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
    /// AVX-512 plus the BF16 dot-product instructions (Cooper Lake, Sapphire Rapids, Zen 4),
    /// which bf16 x bf16 products then run on. Below this level they are widened to f32 as
    /// they are packed and run on the f32 kernel: the same exact products (a bf16 times a
    /// bf16 is exact in f32), summed in f32 in another order.
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

/// The level the kernels use: `KUBESWIFT_KERNELS_ISA` if set (at most [`detected`]), else
/// [`preferred`].
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let chosen = std::env::var("KUBESWIFT_KERNELS_ISA")
            .ok()
            .and_then(|v| Isa::parse(&v));
        match chosen {
            Some(chosen) => chosen.min(detected()),
            None => preferred(detected(), cpu_vendor_is_intel()),
        }
    })
}

/// The level to use by default on a CPU that supports `detected`: all of it, except that
/// Intel CPUs run bf16 products on the f32 kernel ([`Isa::Avx512`]). Their BF16 dot
/// product (`vdpbf16ps`) gives fewer multiply-adds a cycle than their two f32 FMA units:
/// on a Xeon with AVX-512 BF16 (2026-12-06, 2 cores, layer shapes, 2048 rows) our bf16
/// kernel and PyTorch's bf16 `F.linear` both ran at 160-168 GFLOP/s where our f32 kernel
/// ran at 235-276, and a bf16 LoRA training step on the f32 kernel was ~1.55x faster,
/// widening included. AMD's Zen 4 runs `vdpbf16ps` at twice its f32 rate, so there the
/// bf16 kernel is the faster one.
pub fn preferred(detected: Isa, intel: bool) -> Isa {
    if intel && detected == Isa::Avx512Bf16 {
        Isa::Avx512
    } else {
        detected
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_vendor_is_intel() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86-64 CPU. (`__cpuid` is a safe function in
    // newer toolchains than the workspace's minimum, hence the allow.)
    #[allow(unused_unsafe)]
    let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
    // The vendor string is EBX, EDX, ECX: "Genu" "ineI" "ntel".
    let vendor: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    vendor == b"GenuineIntel"
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_vendor_is_intel() -> bool {
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intel_runs_bf16_products_on_the_f32_kernel_and_others_use_all_they_have() {
        assert_eq!(preferred(Isa::Avx512Bf16, true), Isa::Avx512);
        assert_eq!(preferred(Isa::Avx512Bf16, false), Isa::Avx512Bf16);
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            assert_eq!(preferred(isa, true), isa);
            assert_eq!(preferred(isa, false), isa);
        }
    }

    #[test]
    fn the_active_level_is_one_the_cpu_has() {
        assert!(active() <= detected());
        assert!(supported().contains(&active()));
    }
}
