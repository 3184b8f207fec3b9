//! Every op on a GPU against the same op on the CPU (the CPU kernels are themselves tested
//! against plain-candle references and finite differences in tests/kernels): same inputs,
//! values and gradients compared after copying back.
//!
//! Built with `--features cuda`. Every test is `#[ignore]`d, so `cargo test` on a machine
//! without a GPU (CI) builds them and skips them by name; scripts/gpu-check.sh runs them on a
//! GPU host with `--include-ignored`, where a missing GPU fails them (a GPU test that passed
//! without a GPU would prove nothing).
//!
//! Tolerances (relative to the largest magnitude of the CPU result): f32 1e-4 (the GPU sums
//! in another order; fallback ops use cuBLAS), bf16 storage 2e-2.

use candle_core::{DType, Device, Tensor, Var};
use kubeswift_kernels::reference::random;
use kubeswift_kernels::{
    AttnMask, CrossEntropyOptions, LoraDropout, attention, frozen_linear, linear_cross_entropy,
    lora_linear_with_dropout, rms_norm, rope, rope_tables, silu_mul,
};

// The CPU kernel tests' helpers (assert_close copies GPU tensors to the host itself).
#[path = "../kernels/common.rs"]
#[allow(dead_code)]
mod common;

use common::assert_close;

const F32_TOL: f64 = 1e-4;
const BF16_TOL: f64 = 2e-2;

fn gpu() -> Device {
    // SAFETY: only tries to dlopen libcuda by name (candle would panic inside cudarc).
    let driver = unsafe { candle_core::cuda_backend::cudarc::driver::sys::is_culib_present() };
    assert!(
        driver,
        "the GPU tests need the NVIDIA driver (libcuda on the library path); run them on a GPU \
         host with scripts/gpu-check.sh"
    );
    Device::new_cuda(0).unwrap_or_else(|e| {
        panic!("the GPU tests need a CUDA device (they are meant for scripts/gpu-check.sh): {e}")
    })
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        F32_TOL
    } else {
        BF16_TOL
    }
}

/// The same random inputs on both devices, as variables, in `dtype`.
fn inputs(shapes: &[&[usize]], seed: u64, dtype: DType) -> (Vec<Var>, Vec<Var>) {
    let cpu: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            random(seed + i as u64, s, 1.5, &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap()
        })
        .collect();
    let dev = gpu();
    let on_gpu = cpu
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(&dev).unwrap()).unwrap());
    let on_cpu = cpu.iter().map(|t| Var::from_tensor(t).unwrap());
    (on_cpu.collect(), on_gpu.collect())
}

/// A scalar `sum(y * r)` with fixed random weights `r`, so every output's gradient differs.
fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let r = random(seed, y.dims(), 1.0, y.device()).unwrap();
    (y.to_dtype(DType::F32).unwrap() * r)
        .unwrap()
        .sum_all()
        .unwrap()
}

/// Runs `f` on both devices, compares the output and the gradient of every input.
fn compare(
    what: &str,
    shapes: &[&[usize]],
    dtype: DType,
    f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    let (cpu, gpu) = inputs(shapes, 11, dtype);
    let run = |vars: &[Var]| {
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap_or_else(|e| panic!("{what}: {e}"));
        let grads = weighted_sum(&y, 7).backward().unwrap();
        let g: Vec<Option<Tensor>> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect();
        (y, g)
    };
    let (y_cpu, g_cpu) = run(&cpu);
    let (y_gpu, g_gpu) = run(&gpu);
    assert!(y_gpu.device().is_cuda(), "{what}: the result left the GPU");
    assert_eq!(y_gpu.dtype(), y_cpu.dtype(), "{what}: dtype");
    let t = tol(dtype);
    assert_close(&format!("{what} {dtype:?} forward"), &y_gpu, &y_cpu, t);
    for (i, (gc, gg)) in g_cpu.iter().zip(&g_gpu).enumerate() {
        match (gc, gg) {
            (Some(gc), Some(gg)) => assert_close(&format!("{what} {dtype:?} grad {i}"), gg, gc, t),
            (None, None) => {}
            _ => panic!("{what}: input {i} has a gradient on one device only"),
        }
    }
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs these with --include-ignored"]
fn rms_norm_matches_the_cpu() {
    for dtype in DTYPES {
        // 896 = Qwen2.5-0.5B's hidden size; 37 is not a multiple of a warp.
        for hidden in [896usize, 37] {
            compare("rms_norm", &[&[3, 5, hidden], &[hidden]], dtype, |t| {
                rms_norm(&t[0], &t[1], 1e-6)
            });
        }
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs these with --include-ignored"]
fn silu_mul_matches_the_cpu() {
    for dtype in DTYPES {
        compare("silu_mul", &[&[2, 7, 4864], &[2, 7, 4864]], dtype, |t| {
            silu_mul(&t[0], &t[1])
        });
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs these with --include-ignored"]
fn rope_matches_the_cpu_with_shared_and_per_batch_positions() {
    for dtype in DTYPES {
        let inv_freq: Vec<f32> = (0..32)
            .map(|i| 1e6f32.powf(-(2 * i) as f32 / 64.0))
            .collect();
        let (cos, sin) = rope_tables(&inv_freq, 32, &Device::Cpu).unwrap();
        for per_batch in [false, true] {
            compare("rope", &[&[2, 3, 9, 64]], dtype, |t| {
                let dev = t[0].device();
                let positions = if per_batch {
                    Tensor::new(
                        &[
                            [0u32, 1, 2, 3, 4, 0, 1, 2, 3],
                            [5, 6, 7, 8, 9, 10, 11, 12, 13],
                        ],
                        dev,
                    )?
                } else {
                    Tensor::arange(3u32, 12, dev)?
                };
                rope(
                    &t[0],
                    &cos.to_device(dev)?,
                    &sin.to_device(dev)?,
                    &positions,
                )
            });
        }
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs these with --include-ignored"]
fn attention_matches_the_cpu() {
    for dtype in DTYPES {
        // GQA 14:2 heads as Qwen2.5-0.5B, causal.
        compare(
            "attention",
            &[&[1, 14, 33, 64], &[1, 2, 33, 64], &[1, 2, 33, 64]],
            dtype,
            |t| attention(&t[0], &t[1], &t[2], &AttnMask::causal()),
        );
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs these with --include-ignored"]
fn frozen_and_lora_linear_match_the_cpu() {
    for dtype in DTYPES {
        compare(
            "frozen_linear",
            &[&[2, 5, 96], &[80, 96], &[80]],
            dtype,
            |t| frozen_linear(&t[0], &t[1].detach(), Some(&t[2].detach())),
        );
        for dropout in [None, Some(LoraDropout { p: 0.1, seed: 42 })] {
            compare(
                "lora_linear",
                &[&[2, 5, 96], &[80, 96], &[8, 96], &[80, 8]],
                dtype,
                |t| {
                    lora_linear_with_dropout(
                        &t[0],
                        &t[1].detach(),
                        None,
                        &t[2],
                        &t[3],
                        2.0,
                        dropout,
                    )
                },
            );
        }
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs these with --include-ignored"]
fn linear_cross_entropy_matches_the_cpu() {
    for dtype in DTYPES {
        let labels = [3i64, -100, 149, 0, 7, -100, -100, 42, 42, 99, 1, 148, 5];
        compare(
            "linear_cross_entropy",
            &[&[13, 20], &[150, 20]],
            dtype,
            |t| {
                let labels = Tensor::new(&labels, t[0].device())?;
                let ce =
                    linear_cross_entropy(&t[0], &t[1], &labels, CrossEntropyOptions::default())?;
                assert_eq!(ce.count, 10);
                Ok(ce.loss_sum)
            },
        );
    }
}
