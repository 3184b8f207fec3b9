//! `--packing`: encoded samples bin-packed into rows of at most `max_length` tokens, as
//! ms-swift's `PackingDataset` does with the `binpacking` package (2.x): items sorted by
//! length, longest first (ties in input order), each put into the least-filled bin it fits
//! in, else a new bin; done 1000 samples at a time, the last bin of each round carried into
//! the next. A packed row keeps each sample's length so position ids restart per sample and
//! attention stays inside a sample.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::template::Encoded;

/// One training row: one sample, or several packed ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrainRow {
    pub input_ids: Vec<u32>,
    /// Unshifted (`labels[i]` is the target at position i); -100 = no loss.
    pub labels: Vec<i64>,
    /// Length of each sample in the row, in order.
    pub seq_lens: Vec<usize>,
}

impl From<Encoded> for TrainRow {
    fn from(e: Encoded) -> Self {
        let n = e.input_ids.len();
        TrainRow {
            input_ids: e.input_ids,
            labels: e.labels,
            seq_lens: vec![n],
        }
    }
}

impl TrainRow {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Position ids, restarting at 0 for each sample.
    pub fn position_ids(&self) -> Vec<u32> {
        self.seq_lens.iter().flat_map(|&n| 0..n as u32).collect()
    }

    /// For each token, the index of the sample it belongs to.
    pub fn segment_ids(&self) -> Vec<u32> {
        self.seq_lens
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| std::iter::repeat_n(i as u32, n))
            .collect()
    }

    /// Concatenates samples into one row.
    pub fn pack(samples: Vec<Encoded>) -> TrainRow {
        let mut row = TrainRow::default();
        for s in samples {
            row.seq_lens.push(s.input_ids.len());
            row.input_ids.extend(s.input_ids);
            row.labels.extend(s.labels);
        }
        row
    }
}

/// ms-swift packs this many samples per round.
pub const PACKING_BATCH: usize = 1000;

/// Bins of (item, length) pairs: binpacking's `to_constant_volume` (least-loaded fit,
/// decreasing). Like binpacking, one bin is open from the start, so an item longer than the
/// capacity still gets a bin of its own.
pub fn to_constant_volume(items: &[(usize, usize)], capacity: usize) -> Vec<Vec<(usize, usize)>> {
    let mut order: Vec<(usize, usize)> = items.to_vec();
    // Stable sort: equal lengths keep their input order, as Python's sorted does.
    order.sort_by_key(|&(_, len)| Reverse(len));
    let mut bins: Vec<Vec<(usize, usize)>> = vec![Vec::new()];
    let mut sums: Vec<usize> = vec![0];
    // The least-filled bin is the only candidate that matters: if it cannot take an item,
    // no bin can. Keyed by (fill, index) so ties go to the earliest bin, like `argmin`.
    let mut heap: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::from([Reverse((0, 0))]);
    for (n, item) in order.into_iter().enumerate() {
        let Some(&Reverse((fill, least))) = heap.peek() else {
            unreachable!("the heap holds every bin")
        };
        let b = if fill + item.1 <= capacity || n == 0 {
            heap.pop();
            least
        } else {
            bins.push(Vec::new());
            sums.push(0);
            bins.len() - 1
        };
        bins[b].push(item);
        sums[b] += item.1;
        heap.push(Reverse((sums[b], b)));
    }
    bins
}

/// Packs samples (each at most `capacity` long) into rows, in ms-swift's rounds.
pub fn pack(samples: Vec<Encoded>, capacity: usize) -> Vec<TrainRow> {
    let lengths: Vec<(usize, usize)> = samples
        .iter()
        .map(|s| s.input_ids.len())
        .enumerate()
        .collect();
    let mut slots: Vec<Option<Encoded>> = samples.into_iter().map(Some).collect();
    let mut rows = Vec::new();
    let mut pending: Vec<(usize, usize)> = Vec::new();
    let mut next = 0;
    loop {
        let end = (next + PACKING_BATCH).min(lengths.len());
        pending.extend_from_slice(&lengths[next..end]);
        next = end;
        if pending.is_empty() {
            break;
        }
        let finished = next >= lengths.len();
        let mut bins = to_constant_volume(&pending, capacity);
        pending = if finished {
            Vec::new()
        } else {
            bins.pop().unwrap_or_default()
        };
        for bin in bins {
            let members = bin.iter().filter_map(|(i, _)| slots[*i].take()).collect();
            rows.push(TrainRow::pack(members));
        }
        if finished {
            break;
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(n: usize, tag: u32) -> Encoded {
        Encoded {
            input_ids: vec![tag; n],
            labels: vec![-100; n],
        }
    }

    #[test]
    fn least_loaded_fit_decreasing() {
        // Sorted: 7(a) 5(b) 4(c) 3(d) 1(e). 7 -> bin0; 5 -> bin1; 4 -> bin1 (5 < 7, fits 9? 5+4=9 ok)
        let items = [(0, 7), (1, 5), (2, 4), (3, 3), (4, 1)];
        let bins = to_constant_volume(&items, 10);
        let ids: Vec<Vec<usize>> = bins
            .iter()
            .map(|b| b.iter().map(|x| x.0).collect())
            .collect();
        assert_eq!(ids, vec![vec![0, 3], vec![1, 2, 4]]);
    }

    #[test]
    fn packed_rows_restart_positions_and_never_overflow() {
        let samples: Vec<Encoded> = (1..=40).map(|n| enc(n % 9 + 1, n as u32)).collect();
        let total: usize = samples.iter().map(Encoded::len).sum();
        let rows = pack(samples, 16);
        assert_eq!(rows.iter().map(TrainRow::len).sum::<usize>(), total);
        for row in &rows {
            assert!(row.len() <= 16);
            let pos = row.position_ids();
            let seg = row.segment_ids();
            assert_eq!(pos.len(), row.len());
            for i in 1..row.len() {
                if seg[i] != seg[i - 1] {
                    assert_eq!(pos[i], 0);
                } else {
                    assert_eq!(pos[i], pos[i - 1] + 1);
                }
            }
        }
    }
}
