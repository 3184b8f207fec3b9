#!/usr/bin/env python3
"""Regenerates vendor/candle-core and vendor/candle-kernels from crates.io.

Why we carry patched copies (the root Cargo.toml's [patch.crates-io] points at them):

1. candle-core 0.11.1 asks cudarc for `dynamic-linking`: a `cuda` binary then needs
   libcuda, libcublas, libcurand and libnvrtc at *start*, so it cannot even print --help on
   a machine without the driver, and it must find the exact CUDA major it was linked
   against. We switch cudarc to `dynamic-loading` (dlopen at first use): the binary starts
   anywhere, falls back to the CPU with one log line, and loads the libraries a GPU host
   has (PyTorch's wheels, the driver). The CUDA version is pinned (`cuda-13000`, what the
   580-series drivers run) instead of asking nvcc at build time.
2. candle-kernels 0.11.1 compiles, besides the PTX of its elementwise/reduce/cast/... kernels
   (which we use), a static library of GGUF quantized MMQ/MoE kernels with nvcc for the
   build machine's GPU: ten minutes of CPU for code kubeswift never runs (we do not run
   quantized GGUF matmuls on CUDA), and it links libcudart. We keep the PTX build and
   replace those launchers with functions that stop with a clear message if ever called.
3. candle-core's backward pass accumulates every gradient as `zeros_like(x) + grad`: each
   first gradient of a tensor costs a zeroed allocation and an add pass over it (a training
   step of the bench's Qwen2 spent ~1% of its time zeroing and ~1% adding those zeros). We
   give `GradStore` an `accumulate` that stores the first gradient as it is and adds later
   ones, and route the plain `or_insert` + `add` pairs to it. A dense CPU gradient keeps its
   layout (a transposed one is not copied back to the logical order, since the next
   `transpose` on the way back would undo it: ~1.5% of an f32 step was attention's head
   gradients copied that way, one serial 256-byte block at a time); others are made
   contiguous, as the sum was.
4. candle-core's bf16 add on x86 (`cpu/avx.rs`'s `vec_add_bf16`, which every bf16 `add`
   and so every bf16 gradient sum goes through) converts 8 values at a time through trait
   methods that are not inlined (the conversion intrinsics are called as functions) or,
   without AVX-512 BF16, one value at a time: ~5% of a bf16 LoRA training step. We add
   whole-vector versions (AVX-512 BF16; AVX2 with integer rounding) that give the same bits:
   widening is exact, the sum is the same f32 add, rounding is to nearest even with NaNs
   kept quiet, as `half::bf16::from_f32`.

5. candle-core's NEON bf16 paths (`cpu/neon.rs`: `vec_add_bf16`, `vec_mul_bf16`,
   `vec_scalar_add_bf16`, the bf16 `vec_store`) narrow f32 to bf16 by dropping the low 16
   bits: every bf16 sum on ARM (Apple silicon, Graviton) was truncated toward zero, a
   bias in each bf16 gradient sum, and a NaN whose payload sat in the low bits became an
   infinity. We narrow with round-to-nearest-even and quiet NaNs, as `half::bf16::from_f32`
   and the x86 paths do (`kernels/tests/kernels/candle_bf16_add.rs` fails on aarch64
   without this).

Run: python3 scripts/vendor/candle.py   (needs network to static.crates.io)
"""

import hashlib
import io
import re
import shutil
import tarfile
import urllib.request
from pathlib import Path

VERSION = "0.11.1"
# The published archives these copies were made from (the same bytes Cargo would fetch).
SHA256 = {
    "candle-core": "d11c8be87cfbaef9ebb62fb3f850d1fc8e00cc1d11d393fdbe55a4d5c2cdb325",
    "candle-kernels": "8dc057aec95c3b1a0e595227cd039c1436da596f79ccc9e025ba17d070315851",
}
ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "vendor"


def fetch(name: str) -> tarfile.TarFile:
    url = f"https://static.crates.io/crates/{name}/{name}-{VERSION}.crate"
    data = urllib.request.urlopen(url, timeout=60).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise SystemExit(f"{url}: sha256 {digest}, expected {SHA256[name]}")
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


def extract(name: str, keep) -> Path:
    dest = VENDOR / name
    shutil.rmtree(dest, ignore_errors=True)
    prefix = f"{name}-{VERSION}/"
    with fetch(name) as tar:
        for member in tar.getmembers():
            rel = member.name[len(prefix):]
            if not member.isfile() or not keep(rel):
                continue
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    return dest


def drop_tables(manifest: str, headers) -> str:
    """Removes whole TOML tables whose header matches (tests, benches, examples, dev-deps)."""
    out, skipping = [], False
    for line in manifest.splitlines(keepends=True):
        if line.startswith("["):
            skipping = any(re.match(h, line.strip()) for h in headers)
        if not skipping:
            out.append(line)
    return "".join(out)


CAP_LINTS = (
    "// kubeswift: a path dependency gets no `--cap-lints` from Cargo (registry crates do), so\n"
    "// CI's `-D warnings` would apply to candle's own code; allow them, as the registry would.\n"
    "#![allow(warnings)]\n"
)


def cap_lints(lib_rs: Path) -> None:
    source = lib_rs.read_text()
    # Inner attributes must come after the crate's inner doc comments (`//!`).
    lines = source.splitlines(keepends=True)
    at = 0
    while at < len(lines) and (lines[at].startswith("//!") or not lines[at].strip()):
        at += 1
    lib_rs.write_text("".join(lines[:at]) + CAP_LINTS + "".join(lines[at:]))


def vendor_core() -> None:
    dest = extract(
        "candle-core",
        lambda rel: rel in ("Cargo.toml", "LICENSE", "README.md") or rel.startswith("src/"),
    )
    manifest = (dest / "Cargo.toml").read_text()
    manifest = drop_tables(
        manifest,
        [r"^\[\[example\]\]", r"^\[\[test\]\]", r"^\[\[bench\]\]", r"^\[dev-dependencies"],
    )
    for old, new in (
        ('"dynamic-linking"', '"dynamic-loading"'),
        ('"cuda-version-from-build-system"', '"cuda-13000"'),
    ):
        assert old in manifest, f"candle-core's manifest no longer has {old}"
        manifest = manifest.replace(old, new)
    (dest / "Cargo.toml").write_text(manifest)
    cap_lints(dest / "src" / "lib.rs")
    patch_backprop(dest / "src" / "backprop.rs")
    patch_bf16_add(dest / "src" / "cpu" / "avx.rs")
    patch_neon_bf16_narrowing(dest / "src" / "cpu" / "neon.rs")


ACCUMULATE = '''
    /// kubeswift (scripts/vendor/candle.py): adds `grad` to `tensor`'s gradient. The first
    /// one is stored as it is instead of being added to a zeroed tensor: no zeroing, no add
    /// pass, no extra allocation. On the CPU, a dense first gradient (every element once, no
    /// gaps: contiguous, or a permutation of a contiguous buffer such as the `transpose`
    /// of one) of a `transpose`, `permute` or custom op's output is kept in its layout:
    /// copying a permuted gradient back to the logical order would be undone by the next
    /// `transpose` or `permute` on the way back (attention's heads), one serial strided copy
    /// each, and those backwards take any layout (custom ops ask for what they need). Any
    /// other gradient is made contiguous, as `zeros + grad` was (a matmul's backward, for
    /// one, rejects most permuted layouts). A first gradient of another shape, dtype or
    /// device still goes through `zeros + grad`, which reports the mismatch as before.
    fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum = entry.get().add(grad)?;
                entry.insert(sum);
            }
            Entry::Vacant(entry) => {
                let same = grad.shape() == tensor.shape()
                    && grad.dtype() == tensor.dtype()
                    && grad.device().same_device(tensor.device());
                // A mismatch keeps what `zeros + grad` did with it (an error).
                let first = if !same {
                    tensor.zeros_like()?.add(grad)?
                } else if grad.device().is_cpu()
                    && takes_any_layout(tensor.op())
                    && is_dense(grad.layout())
                {
                    grad.clone()
                } else {
                    grad.contiguous()?
                };
                entry.insert(first);
            }
        }
        Ok(())
    }

    /// Get the gradient tensor associated with the given tensor, or, if it does not exist,
'''

IS_DENSE = '''
/// kubeswift (scripts/vendor/candle.py): whether the backward of the op that made a
/// tensor takes the tensor's gradient in any layout.
fn takes_any_layout(op: &Option<Op>) -> bool {
    matches!(
        op,
        Some(
            Op::Transpose(..)
                | Op::Permute(..)
                | Op::CustomOp1(..)
                | Op::CustomOp2(..)
                | Op::CustomOp3(..)
        )
    )
}

/// kubeswift (scripts/vendor/candle.py): whether `layout` reads a gapless run of its buffer,
/// each element once, in some order of its dims (size-1 dims ignored): a contiguous layout
/// or a permutation of one. Broadcast (stride 0) and inner-sliced layouts are not dense.
fn is_dense(layout: &crate::Layout) -> bool {
    let mut dims: Vec<(usize, usize)> = layout
        .dims()
        .iter()
        .zip(layout.stride())
        .map(|(&size, &stride)| (size, stride))
        .filter(|&(size, _)| size != 1)
        .collect();
    if dims.iter().any(|&(size, _)| size == 0) {
        return false;
    }
    dims.sort_by(|a, b| b.1.cmp(&a.1));
    let mut expected = 1;
    for &(size, stride) in dims.iter().rev() {
        if stride != expected {
            return false;
        }
        expected *= size;
    }
    true
}
'''

# `let g = grads.or_insert(x)?;` directly followed by `*g = g.add(&y)?` (y a plain name).
OR_INSERT_ADD = re.compile(
    r"let (\w+) = grads\.or_insert\((\w+)\)\?;\n\s*\*\1 = \1\.add\(&(\w+)\)\?(;?)"
)


def patch_backprop(path: Path) -> None:
    source = path.read_text()
    anchor = (
        "    /// Get the gradient tensor associated with the given tensor, or, if it does not exist,\n"
    )
    assert source.count(anchor) == 1, "candle's GradStore::or_insert doc comment moved"
    source = source.replace(anchor, ACCUMULATE.lstrip("\n"))
    source, count = OR_INSERT_ADD.subn(r"grads.accumulate(\2, &\3)?\4", source)
    # 0.11.1 has 37 such pairs (the custom ops', reshapes', unary ops'...); fewer means the
    # source changed shape and this patch needs a look.
    assert count >= 30, f"only {count} or_insert/add pairs found in backprop.rs"
    path.write_text(source.rstrip("\n") + "\n" + IS_DENSE)


VEC_ADD_BF16_HEAD = (
    "pub(crate) unsafe fn vec_add_bf16(a_row: *const bf16, b_row: *const bf16, c: *mut bf16, k: usize) {\n"
)

VEC_ADD_BF16_DISPATCH = '''
    // kubeswift (scripts/vendor/candle.py): whole vectors, the same bits.
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512vl") {
            return vec_add_bf16_avx512bf16(a_row, b_row, c, k);
        }
        if is_x86_feature_detected!("avx2") {
            return vec_add_bf16_avx2(a_row, b_row, c, k);
        }
    }
'''

VEC_ADD_BF16_KERNELS = '''

/// kubeswift (scripts/vendor/candle.py): `c = a + b` for bf16 rows, 16 at a time: widen
/// exactly, add in f32, round to nearest even (`vcvtneps2bf16`, as `vec_store` above).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx2")]
unsafe fn vec_add_bf16_avx512bf16(a_row: *const bf16, b_row: *const bf16, c: *mut bf16, k: usize) {
    // A macro, not a closure: a closure would not get this function's target features.
    macro_rules! widen {
        ($p:expr) => {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256($p as *const __m256i),
            )))
        };
    }
    let mut i = 0;
    while i + 16 <= k {
        let sum = _mm512_add_ps(widen!(a_row.add(i)), widen!(b_row.add(i)));
        _mm256_storeu_si256(
            c.add(i) as *mut __m256i,
            transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(sum)),
        );
        i += 16;
    }
    for j in i..k {
        *c.add(j) = *a_row.add(j) + *b_row.add(j);
    }
}

/// kubeswift (scripts/vendor/candle.py): `c = a + b` for bf16 rows, 8 at a time on AVX2:
/// widen exactly, add in f32, round to nearest even in integers; a NaN keeps its top bits
/// and is made quiet, as `half::bf16::from_f32` does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vec_add_bf16_avx2(a_row: *const bf16, b_row: *const bf16, c: *mut bf16, k: usize) {
    macro_rules! widen {
        ($p:expr) => {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                $p as *const __m128i,
            ))))
        };
    }
    let (one, half_ulp, quiet) = (
        _mm256_set1_epi32(1),
        _mm256_set1_epi32(0x7fff),
        _mm256_set1_epi32(0x0040),
    );
    let mut i = 0;
    while i + 8 <= k {
        let sum = _mm256_add_ps(widen!(a_row.add(i)), widen!(b_row.add(i)));
        let bits = _mm256_castps_si256(sum);
        let top = _mm256_srli_epi32::<16>(bits);
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(
            _mm256_add_epi32(bits, half_ulp),
            _mm256_and_si256(top, one),
        ));
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(sum, sum));
        let out = _mm256_blendv_epi8(rounded, _mm256_or_si256(top, quiet), nan);
        // Eight 32-bit lanes (each < 2^16) to eight u16: pack within 128-bit halves, then
        // bring the two halves' low quadwords together.
        let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(out, out));
        _mm_storeu_si128(c.add(i) as *mut __m128i, _mm256_castsi256_si128(packed));
        i += 8;
    }
    for j in i..k {
        *c.add(j) = *a_row.add(j) + *b_row.add(j);
    }
}
'''


def patch_bf16_add(path: Path) -> None:
    source = path.read_text()
    assert source.count(VEC_ADD_BF16_HEAD) == 1, "candle's avx.rs vec_add_bf16 signature moved"
    source = source.replace(VEC_ADD_BF16_HEAD, VEC_ADD_BF16_HEAD + VEC_ADD_BF16_DISPATCH.lstrip("\n"))
    path.write_text(source.rstrip("\n") + "\n" + VEC_ADD_BF16_KERNELS)


NEON_USES = "use half::{bf16, f16};\n"
NEON_TRUNCATING_NARROW = "vshrn_n_u32::<16>("
NEON_NARROW_BF16 = '''
/// kubeswift (scripts/vendor/candle.py): four f32 lanes, given as their bits, to bf16
/// rounded to nearest even with NaNs kept quiet NaNs, as `half::bf16::from_f32` does.
/// candle dropped the low 16 bits here (rounding toward zero, and a NaN whose payload
/// sat in those bits became an infinity).
#[inline(always)]
unsafe fn narrow_bf16(bits: uint32x4_t) -> uint16x4_t {
    let top = vshrq_n_u32::<16>(bits);
    let lsb = vandq_u32(top, vdupq_n_u32(1));
    let rounded = vshrn_n_u32::<16>(vaddq_u32(bits, vaddq_u32(vdupq_n_u32(0x7fff), lsb)));
    let lanes = vreinterpretq_f32_u32(bits);
    let is_number = vmovn_u32(vceqq_f32(lanes, lanes));
    let quiet = vmovn_u32(vorrq_u32(top, vdupq_n_u32(0x40)));
    vbsl_u16(is_number, rounded, quiet)
}
'''


def patch_neon_bf16_narrowing(path: Path) -> None:
    source = path.read_text()
    assert source.count(NEON_USES) == 1, "candle's neon.rs imports moved"
    uses = source.count(NEON_TRUNCATING_NARROW)
    assert uses == 7, f"candle's neon.rs narrows bf16 in {uses} places, not the 7 we patch"
    # By path: one of them is in a nested module (the bf16 `vec_store`).
    source = source.replace(NEON_TRUNCATING_NARROW, "crate::cpu::neon::narrow_bf16(")
    source = source.replace(NEON_USES, NEON_USES + NEON_NARROW_BF16, 1)
    path.write_text(source)


STUB_HEADER = '''//! kubeswift: the GGUF MMQ/MoE launchers below are not compiled (see
//! scripts/vendor/candle.py). Each keeps its exact signature so candle-core links, and stops
//! with a clear message if called: kubeswift never runs quantized GGUF matmuls on CUDA.
#![allow(unused_variables, clippy::missing_safety_doc)]
use core::ffi::c_void;

#[cold]
fn not_built(name: &str) -> ! {
    panic!("{name}: candle's GGUF MMQ/MoE CUDA kernels are not built in kubeswift (vendor/README.md)")
}
'''


def stub_ffi(source: str) -> str:
    """`extern "C" { pub fn f(..) -> T; ... }` -> `pub unsafe extern "C" fn f(..) -> T { .. }`."""
    body = source[source.index('extern "C" {') + len('extern "C" {'): source.rindex("}")]
    # The cutile-only launcher stays behind its feature, which we never enable.
    body = re.sub(r'#\[cfg\(feature = "cutile"\)\]\s*pub fn candle_launch_moe_align\(.*?\)\s*->\s*i32;',
                  "", body, flags=re.S)
    names = []

    def stub(match: re.Match) -> str:
        name, params, ret = match.group(1), match.group(2), match.group(3) or ""
        names.append(name)
        return f'pub unsafe extern "C" fn {name}({params}){ret} {{\n        not_built("{name}")\n    }}'

    body = re.sub(r"pub fn (\w+)\((.*?)\)(\s*->\s*\w+)?;", stub, body, flags=re.S)
    assert names, "no launchers found in candle-kernels' ffi.rs"
    lines = [line[4:] if line.startswith("    ") else line for line in body.splitlines()]
    return STUB_HEADER + "\n".join(lines).strip() + "\n"


BUILD_RS = '''// kubeswift: candle-kernels' build.rs with only its PTX half (scripts/vendor/candle.py).
use cudaforge::{KernelBuilder, Result};
use std::env;
use std::path::PathBuf;

fn main() -> Result<()> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let bindings = KernelBuilder::new()
        .source_dir("src")
        .arg("--expt-relaxed-constexpr")
        .arg("-std=c++17")
        .arg("-O3")
        .build_ptx()?;
    bindings.write(out_dir.join("ptx.rs"))?;
    Ok(())
}
'''


def vendor_kernels() -> None:
    def keep(rel: str) -> bool:
        if rel in ("Cargo.toml", "README.md"):
            return True
        if not rel.startswith("src/") or rel.count("/") != 1:
            return False  # src/moe/, src/mmq_gguf/: the static library we do not build
        return rel != "src/mmvq_gguf.cu"

    dest = extract("candle-kernels", keep)
    (dest / "build.rs").write_text(BUILD_RS)
    ffi = dest / "src" / "ffi.rs"
    ffi.write_text(stub_ffi(ffi.read_text()))
    cap_lints(dest / "src" / "lib.rs")


def main() -> None:
    VENDOR.mkdir(exist_ok=True)
    vendor_core()
    vendor_kernels()
    print(f"vendored into {VENDOR}")


if __name__ == "__main__":
    main()
