//! Which rows go into which batch: the training order of one epoch, shuffled by a generator
//! seeded from (seed, epoch) alone (as Hugging Face's Trainer reseeds its RandomSampler
//! every epoch), so a resumed run rebuilds the same order and skips consumed batches by
//! index, without reading the data again.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Row indices of each batch of `epoch` (`--per_device_train_batch_size`); the last batch
/// may be short unless `drop_last` (`--dataloader_drop_last`).
pub fn epoch_batches(
    rows: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    drop_last: bool,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows).collect();
    if shuffle {
        // Mix the epoch in so that consecutive epochs get unrelated orders.
        let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
    }
    let size = batch_size.max(1);
    order
        .chunks(size)
        .filter(|b| !drop_last || b.len() == size)
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_once_per_epoch_in_a_reproducible_order() {
        let a = epoch_batches(10, 4, 42, 0, true, false);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(
            a,
            epoch_batches(10, 4, 42, 0, true, false),
            "same seed and epoch, same order"
        );
        assert_ne!(
            a,
            epoch_batches(10, 4, 42, 1, true, false),
            "a new epoch reshuffles"
        );
        assert_eq!(epoch_batches(10, 4, 42, 0, true, true).len(), 2);
        assert_eq!(
            epoch_batches(5, 2, 0, 0, false, false),
            [vec![0, 1], vec![2, 3], vec![4]]
        );
    }
}
