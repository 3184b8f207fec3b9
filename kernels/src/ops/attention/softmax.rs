//! The softmax steps of the attention tiles, one whole `[rows, keys]` score tile per call.
//!
//! A tile's rows are short (64 keys: four AVX-512 vectors), so per-row costs dominate when
//! each row is its own call: in the forward, the online softmax took as long as the tile's
//! two products (a third of the attention's samples) with a dispatch, two horizontal
//! reductions through memory, a scalar `exp` and a separate call to rescale the output row
//! for every row. Here the AVX-512 path keeps a row in registers and reduces in them; other
//! CPUs run the portable row functions.

#[cfg(target_arch = "x86_64")]
use crate::cpu::isa::{self, Isa};
use crate::cpu::math::exp;
use crate::cpu::multiversion::multiversion;

/// Online softmax over one tile of `s` (`rows x bk`, `rows` = `m.len()`): folds each row
/// into its running max `m` and sum `l`, replaces the scores by `exp(s - m_new)`, and
/// scales row `r` of the output accumulator `o` (`rows x d`) by `exp(m_old - m_new)` where
/// the row's max moved. A row with nothing visible so far (all `-inf`) becomes zeros.
pub(super) fn online_softmax_tile(
    s: &mut [f32],
    bk: usize,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    d: usize,
) {
    let rows = m.len();
    assert!(s.len() >= rows * bk && l.len() == rows && o.len() >= rows * d);
    #[cfg(target_arch = "x86_64")]
    if isa::active() >= Isa::Avx512 {
        // SAFETY: `active()` only reports levels the CPU has; lengths asserted above.
        unsafe { x86::online_softmax_tile(s, bk, m, l, o, d) };
        return;
    }
    for r in 0..rows {
        let corr = online_softmax_row(&mut s[r * bk..(r + 1) * bk], &mut m[r], &mut l[r]);
        if corr != 1.0 {
            scale_in_place(&mut o[r * d..(r + 1) * d], corr);
        }
    }
}

/// Scores to probabilities: row `r` of `p` (`rows x bk`, `rows` = `lse.len()`) becomes
/// `exp(p - lse[r])` (an `lse` of `+inf`, a row with no visible key, gives zeros).
pub(super) fn probs_tile(p: &mut [f32], bk: usize, lse: &[f32]) {
    assert!(p.len() >= lse.len() * bk);
    #[cfg(target_arch = "x86_64")]
    if isa::active() >= Isa::Avx512 {
        // SAFETY: as in `online_softmax_tile`; length asserted above.
        unsafe { x86::probs_tile(p, bk, lse) };
        return;
    }
    for (row, &lse) in p.chunks_exact_mut(bk).zip(lse) {
        probs_row(row, lse);
    }
}

multiversion! {
    /// [`online_softmax_tile`] for one row: returns the factor `exp(m_old - m_new)` the
    /// row's output accumulator must be scaled by.
    fn online_softmax_row(s: &mut [f32], m: &mut f32, l: &mut f32) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let (chunks, tail) = s.as_chunks::<16>();
        for c in chunks {
            for i in 0..16 {
                lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            }
        }
        let mut mx = tail.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for v in lanes {
            mx = mx.max(v);
        }
        let m_new = m.max(mx);
        if m_new == f32::NEG_INFINITY {
            if s.iter().any(|x| x.is_nan()) {
                // Every score NaN (a NaN query, or NaN keys): the max skipped them all, so
                // the row looks empty. Pass the NaN on, as PyTorch's softmax does, so the
                // loss shows it instead of the row silently contributing nothing.
                return poison_row(s, m, l);
            }
            // Nothing visible so far: contribute nothing.
            s.fill(0.0);
            return 1.0;
        }
        let mut sums = [0f32; 16];
        let (chunks, tail) = s.as_chunks_mut::<16>();
        for c in chunks {
            for i in 0..16 {
                c[i] = exp(c[i] - m_new);
                sums[i] += c[i];
            }
        }
        let mut sum = 0f32;
        for x in tail {
            *x = exp(*x - m_new);
            sum += *x;
        }
        sum += sums.iter().sum::<f32>();
        let corr = exp(*m - m_new);
        *l = *l * corr + sum;
        *m = m_new;
        corr
    }
}

/// A row whose scores are all NaN: its exponentials, running max and sum become NaN, and
/// the NaN factor it returns turns its output row NaN too (NaN then stays in `l` whatever
/// later tiles hold).
fn poison_row(s: &mut [f32], m: &mut f32, l: &mut f32) -> f32 {
    s.fill(f32::NAN);
    *m = f32::NAN;
    *l = f32::NAN;
    f32::NAN
}

multiversion! {
    /// `x *= by` (an output row rescaled; the forward's query rows and final rows too).
    pub(super) fn scale_in_place(x: &mut [f32], by: f32) {
        for v in x {
            *v *= by;
        }
    }
}

multiversion! {
    /// [`probs_tile`] for one row.
    fn probs_row(s: &mut [f32], lse: f32) {
        for x in s {
            *x = exp(*x - lse);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::cpu::math::exp_avx512;

    /// Lanes `0..n` of a 16-lane mask (`n` <= 16).
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
    }

    /// Calls `f(offset, mask)` for each 16-wide chunk of a row of `len` (the last masked).
    #[inline(always)]
    fn chunks(len: usize, mut f: impl FnMut(usize, __mmask16)) {
        let mut x = 0;
        while x < len {
            f(x, lanes(len - x));
            x += 16;
        }
    }

    /// See [`super::online_softmax_tile`]. Rows go in blocks of 16 and each step runs over
    /// the whole block before the next (the maxima, then the factors `exp(m_old - m_new)`
    /// as one vector, then the exponentials and sums, then the running state and the output
    /// rows): a row's steps form one long dependency chain, and row after row the chains
    /// did not overlap (the step took ~2.6 cycles a score).
    ///
    /// # Safety
    /// AVX-512 F; `s` holds `m.len() * bk` floats, `o` `m.len() * d`, `l` `m.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn online_softmax_tile(
        s: &mut [f32],
        bk: usize,
        m: &mut [f32],
        l: &mut [f32],
        o: &mut [f32],
        d: usize,
    ) {
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let rows = m.len();
        for r0 in (0..rows).step_by(16) {
            let n = (rows - r0).min(16);
            let block = lanes(n);
            // SAFETY (all loads and stores below): chunk `x` with `mask` covers lanes
            // `x..min(x + 16, bk)` of a row of the block (or of o's row, `d` long), and the
            // block's `n` lanes of m and l, all inside the slices.
            let base = s.as_mut_ptr();
            let row = |i: usize| unsafe { base.add((r0 + i) * bk) };
            let mut maxima = [f32::NEG_INFINITY; 16];
            for (i, out) in maxima.iter_mut().enumerate().take(n) {
                let mut mx = neg_inf;
                chunks(bk, |x, mask| unsafe {
                    // The max ignores a NaN score (max returns its second operand), as the
                    // portable row does; exp passes the NaN on.
                    mx = _mm512_max_ps(_mm512_mask_loadu_ps(neg_inf, mask, row(i).add(x)), mx);
                });
                *out = _mm512_reduce_max_ps(mx);
            }
            let (m_old, l_old) = unsafe {
                (
                    _mm512_mask_loadu_ps(neg_inf, block, m.as_ptr().add(r0)),
                    _mm512_maskz_loadu_ps(block, l.as_ptr().add(r0)),
                )
            };
            // SAFETY (stack arrays): 16 floats each.
            let m_new = _mm512_max_ps(unsafe { _mm512_loadu_ps(maxima.as_ptr()) }, m_old);
            // A row with nothing visible so far keeps its state (factor 1) and becomes zeros.
            let mut empty = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(m_new, neg_inf);
            // Unless its scores are all NaN, which the max skipped: NaN is passed on (see
            // the portable row). Rare, and only looked for in rows that seem empty.
            let mut nan_rows: __mmask16 = 0;
            for i in (0..n).filter(|&i| empty >> i & 1 == 1) {
                // SAFETY: row `r0 + i` of the block lies inside `s` (asserted by the caller).
                let scores = unsafe { std::slice::from_raw_parts(row(i), bk) };
                if scores.iter().any(|x| x.is_nan()) {
                    nan_rows |= 1 << i;
                }
            }
            empty &= !nan_rows;
            let m_new = _mm512_mask_blend_ps(nan_rows, m_new, _mm512_set1_ps(f32::NAN));
            let corr = _mm512_mask_blend_ps(
                empty,
                exp_avx512(_mm512_sub_ps(m_old, m_new)),
                _mm512_set1_ps(1.0),
            );
            let mut m_rows = [0f32; 16];
            unsafe { _mm512_storeu_ps(m_rows.as_mut_ptr(), m_new) };
            let mut sums = [0f32; 16];
            for i in 0..n {
                let mv = _mm512_set1_ps(m_rows[i]);
                let mut sum = _mm512_setzero_ps();
                // exp(-inf - -inf) would be NaN: an empty row's scores all become 0.
                let keep = if empty >> i & 1 == 1 { 0 } else { u16::MAX };
                chunks(bk, |x, mask| unsafe {
                    let v = _mm512_maskz_loadu_ps(mask, row(i).add(x));
                    let e = _mm512_maskz_mov_ps(keep, exp_avx512(_mm512_sub_ps(v, mv)));
                    _mm512_mask_storeu_ps(row(i).add(x), mask, e);
                    sum = _mm512_mask_add_ps(sum, mask, sum, e);
                });
                sums[i] = _mm512_reduce_add_ps(sum);
            }
            let l_new = _mm512_fmadd_ps(l_old, corr, unsafe { _mm512_loadu_ps(sums.as_ptr()) });
            // exp's range clamps may not carry a NaN through: set the NaN rows' state and
            // factor outright.
            let nan = _mm512_set1_ps(f32::NAN);
            let l_new = _mm512_mask_blend_ps(nan_rows, l_new, nan);
            let corr = _mm512_mask_blend_ps(nan_rows, corr, nan);
            for i in (0..n).filter(|&i| nan_rows >> i & 1 == 1) {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts_mut(row(i), bk) }.fill(f32::NAN);
            }
            unsafe {
                _mm512_mask_storeu_ps(l.as_mut_ptr().add(r0), block, l_new);
                _mm512_mask_storeu_ps(m.as_mut_ptr().add(r0), block, m_new);
            }
            let mut factors = [0f32; 16];
            unsafe { _mm512_storeu_ps(factors.as_mut_ptr(), corr) };
            for (i, &f) in factors.iter().enumerate().take(n) {
                // Always scaled (by 1 where the max did not move): a branch on it
                // mispredicted row after row.
                let orow = unsafe { o.as_mut_ptr().add((r0 + i) * d) };
                let fv = _mm512_set1_ps(f);
                chunks(d, |x, mask| unsafe {
                    let v = _mm512_maskz_loadu_ps(mask, orow.add(x));
                    _mm512_mask_storeu_ps(orow.add(x), mask, _mm512_mul_ps(v, fv));
                });
            }
        }
    }

    /// See [`super::probs_tile`].
    ///
    /// # Safety
    /// AVX-512 F; `p` holds `lse.len() * bk` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn probs_tile(p: &mut [f32], bk: usize, lse: &[f32]) {
        for (r, &lse) in lse.iter().enumerate() {
            let row = p[r * bk..(r + 1) * bk].as_mut_ptr();
            let lv = _mm512_set1_ps(lse);
            // SAFETY: chunk `x` with `mask` covers lanes `x..min(x + 16, bk)` of the row.
            chunks(bk, |x, mask| unsafe {
                let v = _mm512_maskz_loadu_ps(mask, row.add(x));
                _mm512_mask_storeu_ps(row.add(x), mask, exp_avx512(_mm512_sub_ps(v, lv)));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tile with rows of every kind: ordinary scores, a masked prefix and suffix, a row
    /// with nothing visible, a row whose max does not move, and lengths with a tail.
    fn tile(rows: usize, bk: usize) -> Vec<f32> {
        (0..rows * bk)
            .map(|i| {
                let (r, j) = (i / bk, i % bk);
                match r % 4 {
                    0 => ((i * 37 % 101) as f32 - 50.0) * 0.11,
                    1 if j < 3 || j + 5 > bk => f32::NEG_INFINITY,
                    1 => (j as f32).sin() * 4.0,
                    2 => f32::NEG_INFINITY,
                    _ => -20.0 + (j % 7) as f32,
                }
            })
            .collect()
    }

    /// The definition, row by row in f64: the running max and sum after this tile, the
    /// tile's exponentials and the factor the output row is scaled by.
    fn reference(
        s: &[f32],
        bk: usize,
        m: &[f32],
        l: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut ms, mut ls, mut es, mut corrs) = (vec![], vec![], vec![], vec![]);
        for (r, row) in s.chunks_exact(bk).enumerate() {
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let m_new = m[r].max(mx);
            if m_new == f32::NEG_INFINITY {
                es.extend(std::iter::repeat_n(0.0, bk));
                ms.push(m[r] as f64);
                ls.push(l[r] as f64);
                corrs.push(1.0);
                continue;
            }
            let e: Vec<f64> = row.iter().map(|&x| ((x - m_new) as f64).exp()).collect();
            let corr = ((m[r] - m_new) as f64).exp();
            ls.push(l[r] as f64 * corr + e.iter().sum::<f64>());
            ms.push(m_new as f64);
            es.extend(e);
            corrs.push(corr);
        }
        (ms, ls, es, corrs)
    }

    fn close(got: f32, want: f64, what: &str) {
        let tol = 2e-6 * want.abs().max(1e-30);
        assert!(
            (got as f64 - want).abs() <= tol || (got == 0.0 && want < 1e-37),
            "{what}: got {got}, want {want}"
        );
    }

    fn check_online_softmax(bk: usize) {
        let (rows, d) = (9, 20);
        let mut s = tile(rows, bk);
        let original = s.clone();
        // Running state from an earlier tile: row 0 none yet, others a max above or below.
        let mut m: Vec<f32> = (0..rows)
            .map(|r| {
                if r == 0 {
                    f32::NEG_INFINITY
                } else {
                    r as f32 - 4.0
                }
            })
            .collect();
        m[2] = f32::NEG_INFINITY;
        let mut l: Vec<f32> = m
            .iter()
            .map(|&m| if m.is_finite() { 1.5 } else { 0.0 })
            .collect();
        let mut o: Vec<f32> = (0..rows * d).map(|i| i as f32 * 0.25 - 3.0).collect();
        let o_before = o.clone();
        let (ms, ls, es, corrs) = reference(&original, bk, &m, &l);
        online_softmax_tile(&mut s, bk, &mut m, &mut l, &mut o, d);
        for r in 0..rows {
            assert_eq!(m[r] as f64, ms[r], "m[{r}]");
            close(l[r], ls[r], &format!("l[{r}] (bk {bk})"));
            for j in 0..bk {
                close(
                    s[r * bk + j],
                    es[r * bk + j],
                    &format!("exp at ({r}, {j}), bk {bk}"),
                );
            }
            for x in 0..d {
                let want = o_before[r * d + x] as f64 * corrs[r];
                close(o[r * d + x], want, &format!("o at ({r}, {x}), bk {bk}"));
            }
        }
    }

    #[test]
    fn online_softmax_tile_matches_the_definition() {
        for bk in [1, 13, 16, 64, 70] {
            check_online_softmax(bk);
        }
    }

    /// A row of NaN scores (a NaN query) is not mistaken for a row with nothing visible:
    /// its state, exponentials and output row become NaN, on every kernel path, and a later
    /// tile of ordinary scores does not wash it out. Other rows are untouched.
    #[test]
    fn a_row_of_nan_scores_passes_nan_on() {
        for bk in [5, 16, 70] {
            let (rows, d) = (3, 8);
            let mut s = vec![0.5f32; rows * bk];
            s[bk..2 * bk].fill(f32::NAN);
            let mut m = vec![f32::NEG_INFINITY; rows];
            let mut l = vec![0.0f32; rows];
            let mut o = vec![1.0f32; rows * d];
            online_softmax_tile(&mut s, bk, &mut m, &mut l, &mut o, d);
            assert!(m[1].is_nan() && l[1].is_nan(), "bk {bk}: m {m:?} l {l:?}");
            assert!(s[bk..2 * bk].iter().all(|x| x.is_nan()), "bk {bk}");
            assert!(o[d..2 * d].iter().all(|x| x.is_nan()), "bk {bk}: {o:?}");
            for r in [0, 2] {
                assert_eq!(m[r], 0.5, "bk {bk} row {r}");
                assert!(l[r].is_finite() && o[r * d].is_finite(), "bk {bk} row {r}");
            }
            let mut next = vec![0.25f32; rows * bk];
            online_softmax_tile(&mut next, bk, &mut m, &mut l, &mut o, d);
            assert!(
                l[1].is_nan() && o[d..2 * d].iter().all(|x| x.is_nan()),
                "bk {bk}"
            );
            assert!(l[0].is_finite() && l[2].is_finite(), "bk {bk}");
        }
    }

    #[test]
    fn probs_tile_matches_the_definition() {
        for bk in [5, 16, 64, 67] {
            let rows = 6;
            let mut p = tile(rows, bk);
            let original = p.clone();
            let lse: Vec<f32> = (0..rows)
                .map(|r| {
                    if r == 4 {
                        f32::INFINITY
                    } else {
                        r as f32 * 0.7
                    }
                })
                .collect();
            probs_tile(&mut p, bk, &lse);
            for r in 0..rows {
                for j in 0..bk {
                    let want = ((original[r * bk + j] - lse[r]) as f64).exp();
                    close(p[r * bk + j], want, &format!("p at ({r}, {j}), bk {bk}"));
                }
            }
        }
    }
}
