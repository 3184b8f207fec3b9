//! Rotary position embedding frequencies and the cos/sin of given positions.
//!
//! Computed per forward for exactly the positions in the batch (a few thousand sin/cos at
//! most), so arbitrary per-token position ids (packed training, ragged inference batches)
//! need no table and long contexts cost no memory. Angles are `position * inv_freq` in f32,
//! as transformers computes them, so logits match to float rounding.

use candle_core::{Device, Tensor};

use super::config::{RopeConfig, RopeScaling};
use super::error::{CandleContext, Result};

/// The inverse frequencies of one model (`head_dim / 2` of them).
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

/// cos and sin of `position * inv_freq`, `[tokens, head_dim / 2]` each (f32).
#[derive(Debug, Clone)]
pub struct RopeAngles {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, head_dim: usize) -> Self {
        let base: Vec<f32> = (0..head_dim / 2)
            .map(|i| {
                // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in f32.
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (cfg.theta as f32).powf(exponent)
            })
            .collect();
        let inv_freq = match cfg.scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => llama3_inv_freq(
                &base,
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
                original_max_position_embeddings as f32,
            ),
        };
        Rope { inv_freq }
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// cos/sin for each position, in order.
    pub fn angles(&self, positions: &[u32], device: &Device) -> Result<RopeAngles> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        Ok(RopeAngles {
            cos: Tensor::from_vec(cos, shape, device).ctx("rope cos")?,
            sin: Tensor::from_vec(sin, shape, device).ctx("rope sin")?,
        })
    }
}

/// Llama 3.1's rule: keep high frequencies, divide low ones by `factor`, blend in between.
fn llama3_inv_freq(base: &[f32], factor: f32, low: f32, high: f32, original_max: f32) -> Vec<f32> {
    let low_freq_wavelen = original_max / low;
    let high_freq_wavelen = original_max / high;
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (original_max / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_between() {
        let cfg = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        };
        let plain = Rope::new(
            &RopeConfig {
                theta: 500_000.0,
                scaling: RopeScaling::Default,
            },
            128,
        );
        let scaled = Rope::new(&cfg, 128);
        let (p, s) = (plain.inv_freq(), scaled.inv_freq());
        assert_eq!(p[0], s[0], "highest frequency untouched");
        assert!(
            (s[63] - p[63] / 8.0).abs() <= f32::EPSILON * p[63],
            "lowest frequency divided by factor"
        );
        let blended = (0..64)
            .filter(|&i| s[i] != p[i] && (s[i] - p[i] / 8.0).abs() > 1e-12)
            .count();
        assert!(blended > 0, "some frequencies fall in the smooth band");
    }

    #[test]
    fn angles_are_position_times_frequency() {
        let rope = Rope::new(
            &RopeConfig {
                theta: 10_000.0,
                scaling: RopeScaling::Default,
            },
            4,
        );
        let a = rope.angles(&[0, 3], &Device::Cpu).unwrap();
        let cos: Vec<Vec<f32>> = a.cos.to_vec2().unwrap();
        assert_eq!(cos[0], vec![1.0, 1.0]);
        assert!((cos[1][0] - 3f32.cos()).abs() < 1e-6);
        assert!((cos[1][1] - (3.0f32 * 0.01).cos()).abs() < 1e-6);
    }
}
