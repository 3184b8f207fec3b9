//! Fused inference attention for a ragged batch: optional q/k RMSNorm (Qwen3), RoPE, the
//! KV-cache write, and causal grouped-query attention over each sequence's own cached
//! keys, in one pass with no padding and no `[T x T]` tensor.
//!
//! Each (token, query head) output row is computed independently over exactly its
//! sequence's keys, so a sequence's result does not depend on its batch neighbours.

use kubeswift_kernels::cpu::{par, rowdot};

use crate::model::error::{ModelError, Result};
use crate::model::kv_cache::{KvBuf, KvCache, SlotId};

/// The tokens of one sequence in a forward step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    /// Which KV-cache slot holds the sequence.
    pub slot: SlotId,
    /// Tokens already cached (the position of this step's first token).
    pub start: usize,
    /// New tokens in this step.
    pub len: usize,
}

/// Head layout of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Qwen3's per-head RMSNorm of queries and keys (f32 weights of `head_dim`).
pub struct QkNorm<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub eps: f32,
}

/// The inputs of one layer's attention: `q` `[Q, q_heads*D]`, `k`/`v` `[N, kv_heads*D]`,
/// `cos`/`sin` `[N, D/2]`, tokens ordered span by span.
pub struct AttentionInput<'a> {
    /// Queries of every token (`Q = N`), or of the tokens `query_tokens` names.
    pub q: &'a [f32],
    /// Which of the `N` tokens `q`'s rows belong to, in order; `None`: all of them. The
    /// last decoder layer of a prompt step only needs each sequence's last token (see
    /// `decoder`), but every token's key and value for the cache.
    pub query_tokens: Option<&'a [usize]>,
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub qk_norm: Option<QkNorm<'a>>,
}

/// Below this much work (multiply-adds) the pool is not woken.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Runs one layer's attention and returns `[N, q_heads*D]`.
pub fn attention(
    input: AttentionInput<'_>,
    heads: Heads,
    spans: &[SeqSpan],
    layer: usize,
    cache: &mut KvCache,
) -> Result<Vec<f32>> {
    let Heads {
        q_heads,
        kv_heads,
        head_dim: d,
    } = heads;
    let n: usize = spans.iter().map(|s| s.len).sum();
    // The token of each query row.
    let token_of = |query: usize| input.query_tokens.map_or(query, |t| t[query]);
    if let Some(&t) = input.query_tokens.into_iter().flatten().find(|&&t| t >= n) {
        return Err(ModelError::Input(format!(
            "attention: query token {t} is outside the step's {n} tokens"
        )));
    }
    let nq = input.query_tokens.map_or(n, <[usize]>::len);
    if input.q.len() != nq * q_heads * d
        || input.k.len() != n * kv_heads * d
        || input.v.len() != n * kv_heads * d
    {
        return Err(ModelError::Input(format!(
            "attention: {nq} queries of {n} tokens but q/k/v hold {}/{}/{} values",
            input.q.len(),
            input.k.len(),
            input.v.len()
        )));
    }
    let mut q = input.q.to_vec();
    let mut k = input.k.to_vec();
    if let Some(norm) = &input.qk_norm {
        rms_norm_rows(&mut q, norm.q, norm.eps);
        rms_norm_rows(&mut k, norm.k, norm.eps);
    }
    match input.query_tokens {
        None => rope_rows(&mut q, q_heads, d, input.cos, input.sin),
        Some(tokens) => {
            let half = d / 2;
            let pick = |table: &[f32]| -> Vec<f32> {
                tokens
                    .iter()
                    .flat_map(|&t| table[t * half..(t + 1) * half].iter().copied())
                    .collect()
            };
            rope_rows(&mut q, q_heads, d, &pick(input.cos), &pick(input.sin));
        }
    }
    rope_rows(&mut k, kv_heads, d, input.cos, input.sin);

    // Cache the new keys/values first: queries then read every key of their sequence,
    // old and new, from one place.
    let mut token_span = Vec::with_capacity(n);
    let mut offset = 0;
    for (i, s) in spans.iter().enumerate() {
        let rows = offset * kv_heads * d..(offset + s.len) * kv_heads * d;
        cache.write(s.slot, layer, s.start, &k[rows.clone()], &input.v[rows])?;
        token_span.extend((0..s.len).map(|t| (i, s.start + t)));
        offset += s.len;
    }

    let cache = &*cache;
    let slots: Vec<_> = spans
        .iter()
        .map(|s| cache.slot(s.slot))
        .collect::<Result<_>>()?;
    let group = q_heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; nq * q_heads * d];
    let work: usize = (0..nq)
        .map(|query| (token_span[token_of(query)].1 + 1) * d * 2 * q_heads)
        .sum();
    let rows = nq * q_heads;
    let out_ptr = par::SendPtr(out.as_mut_ptr());
    let run = |range: std::ops::Range<usize>| {
        let mut scores = Vec::new();
        for row in range {
            let (query, head) = (row / q_heads, row % q_heads);
            let (span, pos) = token_span[token_of(query)];
            let slot = slots[span];
            let kv = slot.layer(layer);
            let cap = slot.capacity();
            let base = (head / group) * cap * d;
            let qr = &q[row * d..(row + 1) * d];
            let keys = base..base + (pos + 1) * d;
            // SAFETY: row `row` of the `[rows, d]` output, allocated above and not
            // otherwise borrowed during the loop; the loop hands each row to one call.
            let out_row = unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add(row * d), d) };
            match (&kv.k, &kv.v) {
                (KvBuf::F32(k), KvBuf::F32(v)) => {
                    rowdot::attend(qr, &k[keys.clone()], &v[keys], scale, &mut scores, out_row)
                }
                (KvBuf::BF16(k), KvBuf::BF16(v)) => {
                    rowdot::attend(qr, &k[keys.clone()], &v[keys], scale, &mut scores, out_row)
                }
                (KvBuf::F16(k), KvBuf::F16(v)) => {
                    rowdot::attend(qr, &k[keys.clone()], &v[keys], scale, &mut scores, out_row)
                }
                _ => unreachable!("a layer's keys and values share the cache's dtype"),
            }
        }
    };
    // On candle's pool, as the products around it (see `linear`), each thread taking a
    // contiguous run of (query, head) rows: the query heads sharing a key/value head are
    // neighbours, so a thread reads a head's cached keys and values from memory once (and
    // again from L2), where small chunks from a shared cursor had both threads read most of a
    // decode step's cache (evicted by the step's weights) from memory: 25% less time in a
    // 160-token SmolLM2 decode's attention, ~8% at 1000 tokens. Same rows, same bits.
    if work < PARALLEL_MIN_WORK {
        run(0..rows);
    } else {
        par::for_each_owned_range(rows, run);
    }
    Ok(out)
}

/// RMSNorm of every `w.len()`-sized row (per-head norm), in f32.
fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_mut(d) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (mean + eps).sqrt();
        for (v, wi) in row.iter_mut().zip(w) {
            *v = *v * r * wi;
        }
    }
}

/// Half-rotation RoPE (Qwen2/Llama layout) of `[N, heads, D]` with per-token cos/sin.
fn rope_rows(x: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for (t, token) in x.chunks_mut(heads * d).enumerate() {
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        for head in token.chunks_mut(d) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward attention of one sequence from scratch (no cache), for comparison.
    fn naive(q: &[f32], k: &[f32], v: &[f32], t: usize, h: Heads) -> Vec<f32> {
        let (hq, hk, d) = (h.q_heads, h.kv_heads, h.head_dim);
        let mut out = vec![0f32; t * hq * d];
        for i in 0..t {
            for head in 0..hq {
                let kh = head / (hq / hk);
                let qi = &q[(i * hq + head) * d..][..d];
                let scores: Vec<f32> = (0..=i)
                    .map(|j| {
                        qi.iter()
                            .zip(&k[(j * hk + kh) * d..][..d])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            / (d as f32).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (j, p) in e.iter().enumerate() {
                    for x in 0..d {
                        out[(i * hq + head) * d + x] += p / z * v[(j * hk + kh) * d + x];
                    }
                }
            }
        }
        out
    }

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn prefill_then_decode_matches_naive_attention_and_ragged_batches_agree() {
        let h = Heads {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let t = 6;
        let (q, k, v) = (data(t * 32, 1), data(t * 16, 2), data(t * 16, 3));
        // No rotation: cos 1, sin 0, so the naive reference needs no RoPE.
        let (cos, sin) = (vec![1f32; t * 4], vec![0f32; t * 4]);
        let want = naive(&q, &k, &v, t, h);

        // Prefill 4 tokens, then decode 2 one at a time.
        let mut cache = KvCache::new(1, 2, 8);
        let slot = cache.allocate(t);
        let mut got = Vec::new();
        for (start, len) in [(0, 4), (4, 1), (5, 1)] {
            let input = AttentionInput {
                q: &q[start * 32..(start + len) * 32],
                k: &k[start * 16..(start + len) * 16],
                v: &v[start * 16..(start + len) * 16],
                cos: &cos[..len * 4],
                sin: &sin[..len * 4],
                query_tokens: None,
                qk_norm: None,
            };
            got.extend(
                attention(input, h, &[SeqSpan { slot, start, len }], 0, &mut cache).unwrap(),
            );
            cache.advance(slot, len).unwrap();
        }
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }

        // The same sequence next to another one in a ragged batch gives the same bits.
        let mut cache2 = KvCache::new(1, 2, 8);
        let other = cache2.allocate(3);
        let slot2 = cache2.allocate(t);
        let (oq, ok, ov) = (data(3 * 32, 7), data(3 * 16, 8), data(3 * 16, 9));
        let cat = |a: &[f32], b: &[f32]| [a, b].concat();
        let input = AttentionInput {
            q: &cat(&oq, &q[..4 * 32]),
            k: &cat(&ok, &k[..4 * 16]),
            v: &cat(&ov, &v[..4 * 16]),
            cos: &[1f32; 7 * 4],
            sin: &[0f32; 7 * 4],
            query_tokens: None,
            qk_norm: None,
        };
        let spans = [
            SeqSpan {
                slot: other,
                start: 0,
                len: 3,
            },
            SeqSpan {
                slot: slot2,
                start: 0,
                len: 4,
            },
        ];
        let batched = attention(input, h, &spans, 0, &mut cache2).unwrap();
        assert_eq!(&batched[3 * 32..], &got[..4 * 32]);
    }

    #[test]
    fn a_step_big_enough_to_split_over_threads_matches_naive_attention() {
        // 48 tokens x 8 query heads sharing 2 key/value heads: well past the threshold
        // at which the rows go to the pool, in contiguous runs per thread.
        let h = Heads {
            q_heads: 8,
            kv_heads: 2,
            head_dim: 16,
        };
        let t = 48;
        let work: usize = (1..=t).map(|keys| keys * 16 * 2 * 8).sum();
        assert!(work >= PARALLEL_MIN_WORK);
        let (q, k, v) = (data(t * 128, 21), data(t * 32, 22), data(t * 32, 23));
        let (cos, sin) = (vec![1f32; t * 8], vec![0f32; t * 8]);
        let mut cache = KvCache::new(1, 2, 16);
        let slot = cache.allocate(t);
        let input = AttentionInput {
            q: &q,
            k: &k,
            v: &v,
            cos: &cos,
            sin: &sin,
            query_tokens: None,
            qk_norm: None,
        };
        let got = attention(
            input,
            h,
            &[SeqSpan {
                slot,
                start: 0,
                len: t,
            }],
            0,
            &mut cache,
        )
        .unwrap();
        let want = naive(&q, &k, &v, t, h);
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-5, "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn queries_of_some_tokens_give_their_rows_and_cache_every_key() {
        let h = Heads {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        // Two prompts (5 and 3 tokens) in one step, with a real rotation.
        let n = 8;
        let (q, k, v) = (data(n * 32, 11), data(n * 16, 12), data(n * 16, 13));
        let (cos, sin): (Vec<f32>, Vec<f32>) = (0..n * 4)
            .map(|i| ((i as f32 * 0.3).cos(), (i as f32 * 0.3).sin()))
            .unzip();
        let run = |query_tokens: Option<&[usize]>, q: &[f32]| {
            let mut cache = KvCache::new(1, 2, 8);
            let (a, b) = (cache.allocate(5), cache.allocate(3));
            let spans = [
                SeqSpan {
                    slot: a,
                    start: 0,
                    len: 5,
                },
                SeqSpan {
                    slot: b,
                    start: 0,
                    len: 3,
                },
            ];
            let input = AttentionInput {
                q,
                query_tokens,
                k: &k,
                v: &v,
                cos: &cos,
                sin: &sin,
                qk_norm: None,
            };
            let out = attention(input, h, &spans, 0, &mut cache).unwrap();
            let keys: Vec<Vec<f32>> = [a, b]
                .iter()
                .map(|&s| cache.slot(s).unwrap().layer(0).k.to_f32_vec())
                .collect();
            (out, keys)
        };
        let (all, all_keys) = run(None, &q);
        let last = [4, 7];
        let picked: Vec<f32> = last
            .iter()
            .flat_map(|&t| q[t * 32..(t + 1) * 32].iter().copied())
            .collect();
        let (some, some_keys) = run(Some(&last), &picked);
        assert_eq!(some.len(), 2 * 32);
        assert_eq!(&some[..32], &all[4 * 32..5 * 32]);
        assert_eq!(&some[32..], &all[7 * 32..8 * 32]);
        assert_eq!(some_keys, all_keys);
        // A query token outside the step is an error, not a panic.
        let input = AttentionInput {
            q: &picked[..32],
            query_tokens: Some(&[8]),
            k: &k,
            v: &v,
            cos: &cos,
            sin: &sin,
            qk_norm: None,
        };
        let mut cache = KvCache::new(1, 2, 8);
        let spans = [SeqSpan {
            slot: cache.allocate(8),
            start: 0,
            len: 8,
        }];
        assert!(attention(input, h, &spans, 0, &mut cache).is_err());
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        let (c, s) = (vec![0.0, 1.0], vec![1.0, 0.0]);
        rope_rows(&mut x, 1, 4, &c, &s);
        // pair (1,3) rotated by 90 degrees, pair (2,4) untouched.
        assert_eq!(x, vec![-3.0, 2.0, 1.0, 4.0]);
    }
}
