//! `#N` sampling and the train/validation split, with ms-swift's semantics
//! (`sample_dataset`, `DatasetLoader.post_process`) under `--data_seed`:
//! - `#N` below the row count: N rows without replacement, in shuffled order;
//!   above: every row N / len times in order, then N % len rows without replacement.
//! - `--split_dataset_ratio r` (0 < r < 1): max(floor(min(len, N) * r), 1) shuffled rows
//!   are held out for validation, and the training rows are sampled from the rest.
//! - a `--val_dataset` is taken whole (ratio 1): `#N` may not exceed its size.
//!
//! The random generator is ours (seeded from `--data_seed`), so *which* rows are chosen
//! differs from numpy's; the counts and the with/without-replacement rules are ms-swift's.

use rand::Rng;
use rand::seq::SliceRandom;

/// Row indices for `#n` of `len` rows.
pub fn sample_indices(len: usize, n: usize, rng: &mut impl Rng) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = Vec::with_capacity(n);
    for _ in 0..n / len {
        idx.extend(0..len);
    }
    let remain = n % len;
    if remain > 0 {
        let mut perm: Vec<usize> = (0..len).collect();
        perm.shuffle(rng);
        idx.extend_from_slice(&perm[..remain]);
    }
    idx
}

/// Train and validation row indices of one dataset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Why a dataset cannot be split as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("#{requested} asks for more validation rows than the {available} there are")]
    ValTooLarge { requested: usize, available: usize },
    #[error("{len} rows are too few to hold out {val} for validation and still train")]
    TooSmall { len: usize, val: usize },
}

/// Splits `len` rows as ms-swift's `post_process` does for a non-streamed dataset.
pub fn split(
    len: usize,
    sample: Option<usize>,
    ratio: f64,
    rng: &mut impl Rng,
) -> Result<Split, SplitError> {
    let n = sample.unwrap_or(len);
    if ratio <= 0.0 {
        return Ok(Split {
            train: sample_indices(len, n, rng),
            val: Vec::new(),
        });
    }
    if ratio >= 1.0 {
        if n > len {
            return Err(SplitError::ValTooLarge {
                requested: n,
                available: len,
            });
        }
        return Ok(Split {
            train: Vec::new(),
            val: sample_indices(len, n, rng),
        });
    }
    let base = len.min(n);
    let val_n = ((base as f64 * ratio).floor() as usize).max(1);
    if val_n >= len || n <= val_n {
        return Err(SplitError::TooSmall { len, val: val_n });
    }
    let mut perm: Vec<usize> = (0..len).collect();
    perm.shuffle(rng);
    let (val, pool) = perm.split_at(val_n);
    let train = sample_indices(pool.len(), n - val_n, rng)
        .into_iter()
        .map(|i| pool[i])
        .collect();
    Ok(Split {
        train,
        val: val.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashSet;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(42)
    }

    #[test]
    fn below_the_size_samples_without_replacement() {
        let idx = sample_indices(10, 4, &mut rng());
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.iter().collect::<HashSet<_>>().len(), 4);
    }

    #[test]
    fn above_the_size_repeats_then_samples_the_rest() {
        let idx = sample_indices(3, 7, &mut rng());
        assert_eq!(&idx[..6], &[0, 1, 2, 0, 1, 2]);
        assert!(idx[6] < 3);
    }

    #[test]
    fn the_same_seed_gives_the_same_rows() {
        assert_eq!(
            sample_indices(100, 10, &mut rng()),
            sample_indices(100, 10, &mut rng())
        );
    }

    #[test]
    fn split_holds_out_at_least_one_row_and_never_overlaps() {
        let s = split(10, None, 0.01, &mut rng()).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (9, 1));
        let train: HashSet<_> = s.train.iter().collect();
        assert!(s.val.iter().all(|v| !train.contains(v)));
        let s = split(100, Some(50), 0.1, &mut rng()).unwrap();
        assert_eq!((s.train.len(), s.val.len()), (45, 5));
    }

    #[test]
    fn val_datasets_cannot_be_oversampled() {
        assert_eq!(
            split(3, Some(5), 1.0, &mut rng()),
            Err(SplitError::ValTooLarge {
                requested: 5,
                available: 3
            })
        );
        assert!(matches!(
            split(1, None, 0.5, &mut rng()),
            Err(SplitError::TooSmall { .. })
        ));
    }
}
