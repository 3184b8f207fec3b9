//! Which keys each query may attend to, resolved once per call from an `AttnMask`.
//!
//! Every mask we support is, per query row, a contiguous key range `[lo, hi)` (causal limit,
//! own packed segment, sliding window) intersected with a per-key padding flag. Keeping it in
//! that form lets the kernels skip whole tiles and never build a `[q, k]` mask.

/// Resolved visibility for a `[batch, q_len] x [batch, kv_len]` attention.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Visibility {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    /// `[lo, hi)` per `(b, i)`, index `b * q_len + i`.
    pub ranges: Vec<(usize, usize)>,
    /// Per `(b, j)`, index `b * kv_len + j`: the key is a real token. `None`: all are.
    pub key_ok: Option<Vec<bool>>,
}

/// The inputs of a visibility, as plain values.
#[derive(Debug, Clone, Default)]
pub(crate) struct MaskSpec {
    pub causal: bool,
    /// `[batch * kv_len]` nonzero = real key.
    pub key_padding: Option<Vec<i64>>,
    /// `[batch * kv_len]` segment ids (contiguous runs).
    pub segment_ids: Option<Vec<i64>>,
    pub window: Option<usize>,
}

/// What is wrong with a mask, as a message for `KernelError::Value`.
pub(crate) type MaskError = (&'static str, String);

impl Visibility {
    /// Resolves `spec` for the given sizes. Query `i` sits at key position
    /// `kv_len - q_len + i` (the queries are the last `q_len` tokens: prefill continuing a
    /// KV cache, or decode).
    pub fn resolve(
        spec: &MaskSpec,
        batch: usize,
        q_len: usize,
        kv_len: usize,
    ) -> Result<Self, MaskError> {
        if q_len > kv_len && (spec.causal || spec.segment_ids.is_some() || spec.window.is_some()) {
            return Err((
                "q",
                format!(
                    "{q_len} queries but only {kv_len} keys: a causal/segment/window mask \
                     needs q_len <= kv_len (queries are the last q_len positions)"
                ),
            ));
        }
        if spec.window == Some(0) {
            return Err(("window", "a sliding window must be at least 1".into()));
        }
        let offset = kv_len.saturating_sub(q_len);
        let runs = match &spec.segment_ids {
            Some(ids) => Some(segment_runs(ids, batch, kv_len)?),
            None => None,
        };
        let mut ranges = Vec::with_capacity(batch * q_len);
        for b in 0..batch {
            for i in 0..q_len {
                let pos = offset + i;
                let (mut lo, mut hi) = (0, kv_len);
                if spec.causal {
                    hi = pos + 1;
                }
                if let Some(runs) = &runs {
                    let (start, end) = runs[b * kv_len + pos];
                    lo = lo.max(start);
                    hi = hi.min(end);
                }
                if let Some(w) = spec.window {
                    lo = lo.max((pos + 1).saturating_sub(w));
                }
                ranges.push((lo, hi.max(lo)));
            }
        }
        let key_ok = spec
            .key_padding
            .as_ref()
            .map(|m| m.iter().map(|&v| v != 0).collect());
        Ok(Visibility {
            batch,
            q_len,
            kv_len,
            ranges,
            key_ok,
        })
    }

    /// Row `(b, i)`'s key range.
    pub fn range(&self, b: usize, i: usize) -> (usize, usize) {
        self.ranges[b * self.q_len + i]
    }

    /// The padding flags of keys `j0..j1` of batch `b` (`None`: every key is real).
    pub fn keys(&self, b: usize, j0: usize, j1: usize) -> Option<&[bool]> {
        self.key_ok
            .as_ref()
            .map(|ok| &ok[b * self.kv_len + j0..b * self.kv_len + j1])
    }

    /// How the keys `[j0, j1)` relate to the queries `[i0, i1)` of batch row `b`.
    pub fn tile(&self, b: usize, i0: usize, i1: usize, j0: usize, j1: usize) -> Tile {
        let rows = &self.ranges[b * self.q_len + i0..b * self.q_len + i1];
        let any_range = rows.iter().any(|&(lo, hi)| lo < j1 && hi > j0 && lo < hi);
        if !any_range {
            return Tile::Hidden;
        }
        let keys = self
            .key_ok
            .as_ref()
            .map(|ok| &ok[b * self.kv_len + j0..b * self.kv_len + j1]);
        if let Some(keys) = keys
            && !keys.iter().any(|&k| k)
        {
            return Tile::Hidden;
        }
        let all_range = rows.iter().all(|&(lo, hi)| lo <= j0 && hi >= j1);
        let all_keys = keys.is_none_or(|k| k.iter().all(|&k| k));
        if all_range && all_keys {
            Tile::Full
        } else {
            Tile::Partial
        }
    }
}

/// A tile's visibility class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tile {
    /// No query sees any key: skip it.
    Hidden,
    /// Every query sees every key: no masking needed.
    Full,
    /// Mask per element.
    Partial,
}

/// For each `(b, j)`, the `[start, end)` of the run of equal segment ids containing `j`.
/// Errors if a segment id reappears after another one (segments must be contiguous, as
/// packing produces them).
fn segment_runs(
    ids: &[i64],
    batch: usize,
    kv_len: usize,
) -> Result<Vec<(usize, usize)>, MaskError> {
    let mut runs = vec![(0, 0); batch * kv_len];
    for b in 0..batch {
        let row = &ids[b * kv_len..(b + 1) * kv_len];
        let mut seen = std::collections::HashSet::new();
        let mut start = 0;
        while start < kv_len {
            let id = row[start];
            if !seen.insert(id) {
                return Err((
                    "segment_ids",
                    format!(
                        "segment id {id} of batch row {b} reappears at position {start}; \
                         segments must be contiguous runs"
                    ),
                ));
            }
            let end = start + row[start..].iter().take_while(|&&v| v == id).count();
            for r in &mut runs[b * kv_len + start..b * kv_len + end] {
                *r = (start, end);
            }
            start = end;
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_with_kv_cache_offset() {
        let spec = MaskSpec {
            causal: true,
            ..Default::default()
        };
        let v = Visibility::resolve(&spec, 1, 2, 5).unwrap();
        assert_eq!(v.ranges, vec![(0, 4), (0, 5)]);
        assert_eq!(v.tile(0, 0, 2, 4, 5), Tile::Partial);
        assert_eq!(v.tile(0, 0, 2, 0, 4), Tile::Full);
    }

    #[test]
    fn packed_segments_and_window() {
        let spec = MaskSpec {
            causal: true,
            segment_ids: Some(vec![0, 0, 0, 1, 1, 2]),
            window: Some(2),
            ..Default::default()
        };
        let v = Visibility::resolve(&spec, 1, 6, 6).unwrap();
        assert_eq!(
            v.ranges,
            vec![(0, 1), (0, 2), (1, 3), (3, 4), (3, 5), (5, 6)]
        );
        assert_eq!(v.tile(0, 3, 6, 0, 3), Tile::Hidden);
    }

    #[test]
    fn padding_hides_whole_tiles() {
        let spec = MaskSpec {
            causal: true,
            key_padding: Some(vec![0, 0, 1, 1]),
            ..Default::default()
        };
        let v = Visibility::resolve(&spec, 1, 4, 4).unwrap();
        assert_eq!(v.tile(0, 0, 4, 0, 2), Tile::Hidden);
        assert_eq!(v.tile(0, 2, 4, 2, 3), Tile::Full);
        assert_eq!(v.keys(0, 1, 3), Some(&[false, true][..]));
    }

    #[test]
    fn rejects_non_contiguous_segments_and_too_many_queries() {
        let spec = MaskSpec {
            segment_ids: Some(vec![0, 1, 0]),
            ..Default::default()
        };
        assert_eq!(
            Visibility::resolve(&spec, 1, 3, 3).unwrap_err().0,
            "segment_ids"
        );
        let causal = MaskSpec {
            causal: true,
            ..Default::default()
        };
        assert_eq!(Visibility::resolve(&causal, 1, 4, 3).unwrap_err().0, "q");
    }
}
