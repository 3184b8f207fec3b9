//! CUDA versions of the kernels (the `cuda` feature).
//!
//! The sources (`kernels.cu`, no CUDA headers) are compiled with NVRTC at first use for the
//! GPU that runs them, once per process and compute capability, and loaded into each
//! device through candle's custom-module cache. The public functions in [`crate`] pick these
//! launchers when their input lives on a CUDA device; ops without a CUDA kernel yet run
//! their [`crate::reference`] version there (plain candle ops on candle's CUDA backend:
//! correct and differentiable, not fast).

pub(crate) mod fallback;
pub(crate) mod launch;
pub(crate) mod ops;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::cudarc::driver::CudaFunction;
use candle_core::{DType, Result};

use crate::error::KernelError;

/// The CUDA C++ source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");
/// The module name candle caches the loaded PTX under.
const MODULE: &str = "kubeswift_kernels";

/// Compiles [`SOURCE`] to PTX for a compute capability (e.g. `(9, 0)`) with NVRTC. Needs
/// only libnvrtc (no GPU, no driver): the build machine's test compiles it this way.
pub fn compile_ptx(capability: (i32, i32)) -> Result<String> {
    // SAFETY: only tries to dlopen libnvrtc by name (cudarc panics if a call cannot load it).
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(KernelError::Cuda {
            what: "loading NVRTC".to_string(),
            detail: "libnvrtc (CUDA 13, or 12) is not on the library path: install PyPI's \
                     nvidia-cuda-nvrtc, or the CUDA toolkit, and add its lib folder to \
                     LD_LIBRARY_PATH"
                .to_string(),
        }
        .into());
    }
    let (major, minor) = capability;
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{major}{minor}"),
            "-std=c++17".to_string(),
        ],
        name: Some("kernels.cu".to_string()),
        ..Default::default()
    };
    let ptx =
        cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| KernelError::Cuda {
            what: "compiling kernels.cu with NVRTC".to_string(),
            detail: nvrtc_detail(&e),
        })?;
    Ok(ptx.to_src())
}

/// The compiler's log for a failed compile (the part that names file:line), or the error.
fn nvrtc_detail(e: &cudarc::nvrtc::CompileError) -> String {
    match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
        other => format!("{other:?}"),
    }
}

/// PTX per compute capability, compiled once per process (and kept for its life: one per
/// GPU generation in the machine), so a launch does not copy it.
fn ptx_for(capability: (i32, i32)) -> Result<&'static str> {
    static CACHE: OnceLock<Mutex<HashMap<(i32, i32), &'static str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(ptx) = cache.get(&capability) {
        return Ok(ptx);
    }
    let ptx: &'static str = Box::leak(compile_ptx(capability)?.into_boxed_str());
    cache.insert(capability, ptx);
    Ok(ptx)
}

/// The compute capability of a candle CUDA device.
pub fn capability(dev: &CudaDevice) -> Result<(i32, i32)> {
    dev.cuda_stream()
        .context()
        .compute_capability()
        .map_err(|e| {
            KernelError::Cuda {
                what: "reading the device's compute capability".to_string(),
                detail: e.to_string(),
            }
            .into()
        })
}

/// One kernel of [`SOURCE`], loaded on `dev`: `name` is the entry point without its dtype
/// suffix (`rms_norm_fwd`), `dtype` (f32, bf16 or f16, checked by the public ops) picks the
/// instantiation, whose suffix is candle's name for the dtype.
pub(crate) fn function(dev: &CudaDevice, name: &str, dtype: DType) -> Result<CudaFunction> {
    let ptx = ptx_for(capability(dev)?)?;
    Ok(dev
        .get_or_load_custom_func(&format!("{name}_{}", dtype.as_str()), MODULE, ptx)?
        .into_cuda_function())
}

/// Every `extern "C"` entry point [`SOURCE`] defines (for the compile test).
pub fn entry_points() -> Vec<String> {
    let kinds = [
        "rms_norm_fwd",
        "rms_norm_bwd",
        "silu_mul_fwd",
        "silu_mul_bwd",
        "rope",
        "adamw_step",
        "cast_from_f32",
    ];
    kinds
        .iter()
        .flat_map(|k| ["f32", "bf16", "f16"].map(|s| format!("{k}_{s}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC alone (no GPU, no driver) compiles every kernel for Hopper and for the oldest
    /// architecture we support, and the PTX defines each entry point the launchers call.
    /// CI runs this with the PyPI NVRTC (scripts/cuda-env.sh); a machine without libnvrtc
    /// fails here with compile_ptx's message naming it.
    #[test]
    fn every_kernel_compiles_with_nvrtc() {
        for cap in [(9, 0), (8, 0)] {
            let ptx = compile_ptx(cap).unwrap_or_else(|e| panic!("sm_{}{}: {e}", cap.0, cap.1));
            assert!(
                ptx.contains(&format!(".target sm_{}{}", cap.0, cap.1)),
                "PTX for another target"
            );
            for name in entry_points() {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "sm_{}{}: no entry point {name}",
                    cap.0,
                    cap.1
                );
            }
        }
    }

    /// A compile error comes back with NVRTC's log, which names the line.
    #[test]
    fn a_broken_kernel_reports_the_line() {
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec!["--gpu-architecture=compute_90".to_string()],
            name: Some("broken.cu".to_string()),
            ..Default::default()
        };
        let err = cudarc::nvrtc::compile_ptx_with_opts(
            "extern \"C\" __global__ void k(float* x) {\n  x[0] = y;\n}\n",
            opts,
        )
        .expect_err("undefined identifier must not compile");
        let detail = nvrtc_detail(&err);
        assert!(detail.contains("broken.cu(2)"), "{detail}");
    }
}
