//! PiSSA initialisation (`--init_weights pissa` / `pissa_niter_N`), as PEFT's
//! `LoraLayer.pissa_init` does it: with `W = U S V^T` (top `r` triplets) and LoRA scale `s`,
//! `A = sqrt(S/s) V^T` (`[r, in]`), `B = U sqrt(S/s)` (`[out, r]`), and the base weight
//! becomes the residual `W - s B A` (cast back to its dtype), so the model's output is
//! unchanged at step 0 while the adapter holds the principal components.
//!
//! What a PiSSA checkpoint means: `adapter_model.safetensors` holds the trained A and B,
//! valid only on top of the *residual* base, which PEFT (and [`super::lora::LoraAdapters::load`])
//! recompute from the original base weight when they read `init_lora_weights: "pissa"`.
//! Like ms-swift, every checkpoint also carries `converted/default/`: the same adapter as a
//! plain LoRA on the original base (`Delta W = B A - B0 A0 = [B | -B0] [A ; A0]`, rank 2r,
//! alpha doubled, or times sqrt(2) with rsLoRA, as PEFT's
//! `path_initial_model_for_weight_conversion` writes it).

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::svd::{Mat, TruncatedSvd, randomized_top_singular, top_singular};

/// Which SVD the init uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PissaSvd {
    /// `torch.linalg.svd`: exact.
    Exact,
    /// `torch.svd_lowrank(niter=N)`: randomized.
    Randomized { niter: usize },
}

/// The initial adapter and the residual base weight of one layer.
#[derive(Debug)]
pub struct PissaInit {
    /// `[r, in]`, row-major.
    pub a: Vec<f32>,
    /// `[out, r]`, row-major.
    pub b: Vec<f32>,
    /// `W - scale * B A`, in the weight's dtype.
    pub residual: Tensor,
}

/// PiSSA of `weight` (`[out, in]`) for rank `rank` and LoRA scale `scale`.
pub fn pissa_init(
    weight: &Tensor,
    rank: usize,
    scale: f64,
    svd: PissaSvd,
    rng: &mut StdRng,
) -> candle_core::Result<PissaInit> {
    let (out, inp) = weight.dims2()?;
    if rank > out.min(inp) {
        candle_core::bail!("PiSSA rank {rank} exceeds the smaller side of a [{out}, {inp}] weight");
    }
    let values = weight
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let w = Mat::from_f32(out, inp, &values);
    let TruncatedSvd { u, s, vt } = match svd {
        PissaSvd::Exact => top_singular(&w, rank),
        PissaSvd::Randomized { niter } => randomized_top_singular(&w, rank, niter, rng),
    }
    .map_err(candle_core::Error::wrap)?;
    // PEFT divides the singular values by the scale so that scale * B A = U S V^T.
    let roots: Vec<f64> = s.iter().map(|&x| (x / scale).max(0.0).sqrt()).collect();
    let mut a = vec![0f32; rank * inp];
    for (i, root) in roots.iter().enumerate() {
        for c in 0..inp {
            a[i * inp + c] = (root * vt.at(i, c)) as f32;
        }
    }
    let mut b = vec![0f32; out * rank];
    for r in 0..out {
        for (i, root) in roots.iter().enumerate() {
            b[r * rank + i] = (u.at(r, i) * root) as f32;
        }
    }
    // The residual from the f32 factors, as PEFT subtracts its f32 lora_B @ lora_A.
    let mut residual = values;
    for r in 0..out {
        for i in 0..rank {
            let bri = scale as f32 * b[r * rank + i];
            let row = &mut residual[r * inp..(r + 1) * inp];
            for (x, &av) in row.iter_mut().zip(&a[i * inp..(i + 1) * inp]) {
                *x -= bri * av;
            }
        }
    }
    let residual =
        Tensor::from_vec(residual, (out, inp), weight.device())?.to_dtype(weight.dtype())?;
    Ok(PissaInit { a, b, residual })
}

/// Most exact SVDs run at once: each holds a few f64 copies of its weight (~1 GiB for a
/// 7B model's 4096 x 11008 MLP weights), so a many-core machine does not run one per core.
const MAX_SVD_THREADS: usize = 4;

/// [`pissa_init`] of each weight, in order. The exact SVDs are independent and
/// single-threaded, so they run on up to [`MAX_SVD_THREADS`] threads; randomized ones run
/// in turn, as each draws its sketch from `rng` after the one before.
pub fn pissa_inits(
    weights: &[&Tensor],
    rank: usize,
    scale: f64,
    svd: PissaSvd,
    rng: &mut StdRng,
) -> Vec<candle_core::Result<PissaInit>> {
    if let PissaSvd::Randomized { .. } = svd {
        return weights
            .iter()
            .map(|w| pissa_init(w, rank, scale, svd, rng))
            .collect();
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_SVD_THREADS)
        .min(weights.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, candle_core::Result<PissaInit>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    // The exact SVD draws nothing from its generator.
                    let mut unused = StdRng::seed_from_u64(0);
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(w) = weights.get(i) else { break out };
                        out.push((i, pissa_init(w, rank, scale, svd, &mut unused)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| match worker.join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, init)| init).collect()
}

/// PEFT's conversion of a trained PiSSA pair to a plain LoRA pair on the original base:
/// `A' = [A ; A0]` (`[2r, in]`), `B' = [B | -B0]` (`[out, 2r]`).
pub fn converted_pair(
    a: &Tensor,
    b: &Tensor,
    a0: &Tensor,
    b0: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let a0 = a0.to_dtype(a.dtype())?;
    let b0 = b0.to_dtype(b.dtype())?;
    Ok((
        Tensor::cat(&[a, &a0], 0)?,
        Tensor::cat(&[b, &b0.neg()?], 1)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::Device;

    fn weight() -> Tensor {
        let mut rng = StdRng::seed_from_u64(1);
        let v: Vec<f32> = (0..12 * 8)
            .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
            .collect();
        Tensor::from_vec(v, (12, 8), &Device::Cpu).unwrap()
    }

    #[test]
    fn residual_plus_scaled_adapter_is_the_original_weight() {
        let w = weight();
        let mut rng = StdRng::seed_from_u64(0);
        for svd in [PissaSvd::Exact, PissaSvd::Randomized { niter: 4 }] {
            let p = pissa_init(&w, 3, 2.0, svd, &mut rng).unwrap();
            let a = Tensor::from_vec(p.a.clone(), (3, 8), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(p.b.clone(), (12, 3), &Device::Cpu).unwrap();
            let back = (&p.residual + (b.matmul(&a).unwrap() * 2.0).unwrap()).unwrap();
            assert!(max_diff(&back, &w) < 1e-5, "{svd:?}");
            // The adapter holds energy: the residual is smaller than the weight.
            let norm = |t: &Tensor| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert!(norm(&p.residual) < 0.9 * norm(&w), "{svd:?}");
        }
    }

    #[test]
    fn many_weights_at_once_give_what_one_at_a_time_gives() {
        let shapes = [(12, 8), (8, 12), (5, 9), (16, 6), (7, 7)];
        let weights: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(r, c))| {
                let mut rng = StdRng::seed_from_u64(10 + i as u64);
                let v: Vec<f32> = (0..r * c)
                    .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
                    .collect();
                Tensor::from_vec(v, (r, c), &Device::Cpu).unwrap()
            })
            .collect();
        let refs: Vec<&Tensor> = weights.iter().collect();
        for svd in [PissaSvd::Exact, PissaSvd::Randomized { niter: 2 }] {
            let mut rng = StdRng::seed_from_u64(3);
            let together = pissa_inits(&refs, 4, 2.0, svd, &mut rng);
            let mut rng = StdRng::seed_from_u64(3);
            for (w, got) in weights.iter().zip(together) {
                let got = got.unwrap();
                let want = pissa_init(w, 4, 2.0, svd, &mut rng).unwrap();
                assert_eq!((&got.a, &got.b), (&want.a, &want.b), "{svd:?}");
                assert_eq!(max_diff(&got.residual, &want.residual), 0.0, "{svd:?}");
            }
        }
        // A weight that cannot be split is its own error, in its place.
        let narrow = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        let out = pissa_inits(&[&weights[0], &narrow], 4, 1.0, PissaSvd::Exact, &mut rng);
        assert!(out[0].is_ok() && out[1].is_err());
    }

    #[test]
    fn exact_pissa_takes_the_top_singular_directions() {
        // Residual of the exact top-r is the best rank-r approximation's error: no other
        // direction removes more, so its norm equals the tail singular values' energy.
        let w = weight();
        let mut rng = StdRng::seed_from_u64(0);
        let p = pissa_init(&w, 3, 4.0, PissaSvd::Exact, &mut rng).unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let full = top_singular(&Mat::from_f32(12, 8, &values), 8).unwrap();
        let tail: f64 = full.s[3..].iter().map(|s| s * s).sum();
        let got = p
            .residual
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - tail).abs() < 1e-4 * tail.max(1.0), "{got} vs {tail}");
        assert!(pissa_init(&w, 9, 1.0, PissaSvd::Exact, &mut rng).is_err());
    }

    #[test]
    fn converted_pair_is_the_trained_minus_the_initial_product() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.0]], &dev).unwrap();
        let b = Tensor::new(&[[3f32], [4.0]], &dev).unwrap();
        let a0 = Tensor::new(&[[0.5f32, 1.0]], &dev).unwrap();
        let b0 = Tensor::new(&[[1f32], [1.0]], &dev).unwrap();
        let (a2, b2) = converted_pair(&a, &b, &a0, &b0).unwrap();
        assert_eq!(a2.dims(), [2, 2]);
        assert_eq!(b2.dims(), [2, 2]);
        let want = (b.matmul(&a).unwrap() - b0.matmul(&a0).unwrap()).unwrap();
        assert!(max_diff(&b2.matmul(&a2).unwrap(), &want) < 1e-6);
    }
}
