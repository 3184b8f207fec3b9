//! NEFTune (`--neftune_noise_alpha`): uniform noise on the input embeddings of training
//! forwards, as Hugging Face's `neftune_post_forward_hook` adds it:
//! `embeds + U(-m, m)` with `m = alpha / sqrt(seq_len * hidden)`, where `seq_len` is the
//! padded length of the batch (`input_embeds.size(1)`). Evaluation and inference never see
//! it (HF's hook checks `module.training`; our eval path never asks for noise).
//!
//! The noise of a micro-batch is drawn from a seed that is a pure function of the run's
//! `seed` and the micro-batch counter, both in the checkpoint's run state, so a resumed run
//! draws exactly the noise the uninterrupted run drew (no RNG state to save), and gradient
//! checkpointing's recomputation never re-draws it (it reuses the embedded input).

use candle_core::{Result, Tensor};
use rand::SeedableRng;
use rand::distr::{Distribution, Uniform};
use rand::rngs::StdRng;

/// Keeps NEFTune's seeds apart from LoRA dropout's, which mix the same counters.
const SALT: u64 = 0x4E45_4654_554E_4521; // "NEFTUNE!"

/// The noise of one training micro-batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbedNoise {
    pub alpha: f64,
    pub seed: u64,
}

/// splitmix64 of a seed and a counter: independent streams per micro-batch.
fn mix(seed: u64, counter: u64) -> u64 {
    let mut z = seed ^ counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl EmbedNoise {
    /// The noise of training micro-batch `micro_step` of a run seeded `seed`; `None` when
    /// `alpha` is 0 (NEFTune off: the forward is exactly the plain one).
    pub fn for_micro_step(alpha: f64, seed: u64, micro_step: u64) -> Option<Self> {
        (alpha > 0.0).then(|| EmbedNoise {
            alpha,
            seed: mix(seed ^ SALT, micro_step),
        })
    }

    /// HF's `mag_norm`: the bound of each noise element for `[B, seq_len, hidden]` embeds.
    pub fn magnitude(&self, seq_len: usize, hidden: usize) -> f64 {
        self.alpha / ((seq_len * hidden) as f64).sqrt()
    }

    /// `embeds` `[B, T, H]` plus the noise (a constant: gradients pass straight through).
    pub fn apply(&self, embeds: &Tensor) -> Result<Tensor> {
        let (b, t, h) = embeds.dims3()?;
        let m = self.magnitude(t, h) as f32;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let noise: Vec<f32> = match Uniform::new_inclusive(-m, m) {
            Ok(u) => (0..b * t * h).map(|_| u.sample(&mut rng)).collect(),
            Err(_) => vec![0.0; b * t * h],
        };
        let noise =
            Tensor::from_vec(noise, (b, t, h), embeds.device())?.to_dtype(embeds.dtype())?;
        embeds.add(&noise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn embeds() -> Tensor {
        Tensor::arange(0f32, 2.0 * 5.0 * 8.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 5, 8))
            .unwrap()
    }

    fn noise_of(n: &EmbedNoise) -> Vec<f32> {
        let e = embeds();
        (n.apply(&e).unwrap() - &e)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn alpha_zero_is_off() {
        assert_eq!(EmbedNoise::for_micro_step(0.0, 42, 3), None);
    }

    #[test]
    fn noise_stays_within_hf_magnitude_and_fills_it() {
        let n = EmbedNoise::for_micro_step(5.0, 42, 0).unwrap();
        let m = 5.0 / (5.0f64 * 8.0).sqrt();
        assert!((n.magnitude(5, 8) - m).abs() < 1e-12);
        let v = noise_of(&n);
        let max = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        // Bounded by m (plus f32 rounding of the embeds), and uniform: 80 draws reach near it.
        assert!(max <= m as f32 * 1.0001 + 1e-4, "{max} > {m}");
        assert!(max > 0.8 * m as f32, "{max} far below {m}");
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.25 * m as f32, "mean {mean}");
    }

    #[test]
    fn noise_repeats_per_micro_step_and_differs_between_them() {
        let a = EmbedNoise::for_micro_step(5.0, 42, 7).unwrap();
        let b = EmbedNoise::for_micro_step(5.0, 42, 8).unwrap();
        assert_eq!(noise_of(&a), noise_of(&a));
        assert_ne!(noise_of(&a), noise_of(&b));
        assert_ne!(
            EmbedNoise::for_micro_step(5.0, 1, 7),
            EmbedNoise::for_micro_step(5.0, 2, 7)
        );
    }

    #[test]
    fn keeps_the_embedding_dtype() {
        let e = embeds().to_dtype(DType::BF16).unwrap();
        let n = EmbedNoise::for_micro_step(5.0, 1, 0).unwrap();
        assert_eq!(n.apply(&e).unwrap().dtype(), DType::BF16);
    }
}
