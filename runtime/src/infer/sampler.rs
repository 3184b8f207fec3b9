//! From one row of logits to the next token: repetition penalty, then greedy argmax or
//! temperature / top-k / top-p sampling, in the order transformers applies its logits
//! processors. Pure functions over slices; the randomness is passed in.

use rand::Rng;

/// How to pick a token from logits (already resolved from arguments and generation_config).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f64,
    /// 1.0 disables the penalty.
    pub repetition_penalty: f64,
}

impl SamplingConfig {
    /// Greedy decoding without penalties.
    pub fn greedy() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// transformers' RepetitionPenaltyLogitsProcessor: every token already in the sequence
/// (prompt included) has its logit divided by `penalty` if positive, multiplied if negative.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let p = penalty as f32;
    let mut done = vec![false; logits.len()];
    for &t in seen {
        let i = t as usize;
        if i < logits.len() && !done[i] {
            done[i] = true;
            let l = logits[i];
            logits[i] = if l < 0.0 { l * p } else { l / p };
        }
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Picks the next token. `logits` is modified (penalties, temperature).
pub fn sample(logits: &mut [f32], seen: &[u32], cfg: &SamplingConfig, rng: &mut impl Rng) -> u32 {
    apply_repetition_penalty(logits, seen, cfg.repetition_penalty);
    if cfg.is_greedy() {
        return argmax(logits);
    }
    let t = cfg.temperature as f32;
    // Candidates sorted by logit, best first; top-k and top-p keep a prefix of them.
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    if cfg.top_k > 0 && cfg.top_k < order.len() {
        order.truncate(cfg.top_k);
    }
    let max = logits[order[0] as usize] / t;
    let mut probs: Vec<f32> = order
        .iter()
        .map(|&i| (logits[i as usize] / t - max).exp())
        .collect();
    let z: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if cfg.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut cum = 0f32;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= cfg.top_p as f32 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
        let z: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let r: f32 = rng.random();
    let mut cum = 0f32;
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if r < cum {
            return order[i];
        }
    }
    order[probs.len() - 1]
}

/// `log_softmax(logits)` in f64 accumulation, as a new vector.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lz = max + z.ln() as f32;
    logits.iter().map(|&l| l - lz).collect()
}

/// The `k` most likely tokens of a log-probability row, best first.
pub fn top_k_of(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..logprobs.len() as u32).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        logprobs[b as usize].total_cmp(&logprobs[a as usize])
    });
    idx.truncate(k);
    idx.sort_unstable_by(|&a, &b| {
        logprobs[b as usize]
            .total_cmp(&logprobs[a as usize])
            .then(a.cmp(&b))
    });
    idx.into_iter().map(|i| (i, logprobs[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn penalty_divides_positive_and_multiplies_negative_once_per_token() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn greedy_is_argmax_after_penalty() {
        let mut l = vec![3.0, 2.0, 0.5];
        let cfg = SamplingConfig {
            repetition_penalty: 2.0,
            ..SamplingConfig::greedy()
        };
        assert_eq!(sample(&mut l, &[0], &cfg, &mut StdRng::seed_from_u64(0)), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            repetition_penalty: 1.0,
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            assert_eq!(sample(&mut [0.1, 3.0, 0.2], &[], &cfg, &mut rng), 1);
        }
        // Token 0 holds ~0.87 of the mass: top_p 0.5 keeps only it.
        let cfg = SamplingConfig {
            top_k: 0,
            top_p: 0.5,
            ..cfg
        };
        for _ in 0..20 {
            assert_eq!(sample(&mut [4.0, 2.0, 1.0], &[], &cfg, &mut rng), 0);
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
        };
        let logits = [0f32, (3f32).ln()]; // p = [0.25, 0.75]
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..4000)
                .map(|_| sample(&mut logits.to_vec(), &[], &cfg, &mut rng))
                .collect::<Vec<u32>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1), "same seed, same draws");
        assert_ne!(a, draw(2));
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn logprobs_normalise_and_rank() {
        let lp = log_softmax(&[1.0, 3.0, 2.0]);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let top = top_k_of(&lp, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }
}
