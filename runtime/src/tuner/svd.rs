//! Truncated singular value decomposition for PiSSA initialisation (candle has no SVD).
//!
//! Two paths, in f64:
//! - [`top_singular`]: exact, from the eigen-decomposition of the smaller Gram matrix
//!   (`W^T W` or `W W^T`, by faer). O(k^3) for k = min(rows, cols): what
//!   `torch.linalg.svd` gives PEFT's `init_lora_weights="pissa"`; seconds per matrix at
//!   4k, so large models should use the randomized path, as PEFT's docs advise.
//! - [`randomized_top_singular`]: `torch.svd_lowrank(W, q=r, niter)`'s algorithm (Halko et
//!   al.: Gaussian sketch, `niter` rounds of orthonormalised subspace iteration, then the
//!   exact SVD of the small projected matrix), for `pissa_niter_N`.
//!
//! Singular vectors are defined up to sign; callers that compare with PyTorch compare
//! products such as `U S V^T`, never factors.

use rand::Rng;
use rand_distr::StandardNormal;

/// A row-major f64 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Self {
        Mat {
            rows,
            cols,
            data: values.iter().map(|&x| x as f64).collect(),
        }
    }

    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    fn set(&mut self, r: usize, c: usize, v: f64) {
        self.data[r * self.cols + c] = v;
    }

    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.set(c, r, self.at(r, c));
            }
        }
        t
    }

    /// `self * other`.
    pub fn matmul(&self, other: &Mat) -> Mat {
        let mut out = Mat::zeros(self.rows, other.cols);
        for r in 0..self.rows {
            let row = &mut out.data[r * other.cols..(r + 1) * other.cols];
            for k in 0..self.cols {
                let a = self.at(r, k);
                if a == 0.0 {
                    continue;
                }
                let b = &other.data[k * other.cols..(k + 1) * other.cols];
                for (o, &x) in row.iter_mut().zip(b) {
                    *o += a * x;
                }
            }
        }
        out
    }
}

/// The top `rank` singular triplets: `u` `[rows, rank]`, `s` descending, `vt` `[rank, cols]`.
#[derive(Debug, Clone)]
pub struct TruncatedSvd {
    pub u: Mat,
    pub s: Vec<f64>,
    pub vt: Mat,
}

/// The eigen-decomposition behind an exact SVD did not converge (faer's QR iteration gave
/// up, which takes a matrix with NaN or infinite entries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the SVD did not converge (does the weight hold NaN or infinite values?)")]
pub struct SvdError;

/// Exact top-`rank` SVD of `w` (`rank <= min(rows, cols)`).
///
/// From the smaller Gram matrix (`W^T W` or `W W^T`, k x k for k = min(rows, cols)), whose
/// top eigenvectors are one side's singular vectors, by faer's symmetric eigensolver
/// (Householder tridiagonalisation, then divide and conquer). At SmolLM2's 1536 x 576 this
/// takes ~70 ms on one core against ~120 ms for faer's full SVD of `W` (and ~75 ms for
/// `torch.linalg.svd`, which PEFT calls, on two); the cyclic Jacobi sweeps it replaces took
/// seconds per matrix, several minutes for the model. Squaring `W` costs accuracy only
/// relative to the largest singular value, which is what the top `rank` are.
pub fn top_singular(w: &Mat, rank: usize) -> Result<TruncatedSvd, SvdError> {
    let rank = rank.min(w.rows).min(w.cols);
    let wide = w.rows < w.cols;
    let m = faer::MatRef::from_row_major_slice(&w.data, w.rows, w.cols);
    let gram = if wide {
        m * m.transpose()
    } else {
        m.transpose() * m
    };
    let eigen = gram
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|_| SvdError)?;
    let (values, vectors) = (eigen.S().column_vector(), eigen.U());
    // Eigenvalues come in ascending order: the top `rank` are the last ones.
    let k = values.nrows();
    let top = |i: usize| k - 1 - i;
    let s: Vec<f64> = (0..rank).map(|i| values[top(i)].max(0.0).sqrt()).collect();
    if s.iter().any(|x| !x.is_finite()) {
        return Err(SvdError);
    }
    // The other side: W v / s (or W^T u / s).
    let mut u = Mat::zeros(w.rows, rank);
    let mut vt = Mat::zeros(rank, w.cols);
    for (i, &si) in s.iter().enumerate() {
        let known: Vec<f64> = (0..k).map(|r| vectors[(r, top(i))]).collect();
        let inv = if si > 0.0 { 1.0 / si } else { 0.0 };
        if wide {
            for (r, &x) in known.iter().enumerate() {
                u.set(r, i, x);
            }
            let mut dots = vec![0.0; w.cols];
            for (r, &x) in known.iter().enumerate() {
                for (d, &wv) in dots.iter_mut().zip(&w.data[r * w.cols..(r + 1) * w.cols]) {
                    *d += wv * x;
                }
            }
            for (c, d) in dots.into_iter().enumerate() {
                vt.set(i, c, d * inv);
            }
        } else {
            for (c, &x) in known.iter().enumerate() {
                vt.set(i, c, x);
            }
            for r in 0..w.rows {
                let row = &w.data[r * w.cols..(r + 1) * w.cols];
                let dot: f64 = row.iter().zip(&known).map(|(a, b)| a * b).sum();
                u.set(r, i, dot * inv);
            }
        }
    }
    Ok(TruncatedSvd { u, s, vt })
}

/// Orthonormalises the columns of `x` in place (modified Gram-Schmidt, twice for
/// stability): the Q of a thin QR.
fn orthonormalize(x: &mut Mat) {
    for _pass in 0..2 {
        for j in 0..x.cols {
            for k in 0..j {
                let dot: f64 = (0..x.rows).map(|r| x.at(r, j) * x.at(r, k)).sum();
                for r in 0..x.rows {
                    let v = x.at(r, j) - dot * x.at(r, k);
                    x.set(r, j, v);
                }
            }
            let norm: f64 = (0..x.rows).map(|r| x.at(r, j).powi(2)).sum::<f64>().sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            for r in 0..x.rows {
                let v = x.at(r, j) * inv;
                x.set(r, j, v);
            }
        }
    }
}

/// `torch.svd_lowrank(w, q=rank, niter)`: an approximate top-`rank` SVD from a Gaussian
/// sketch refined by `niter` subspace iterations.
pub fn randomized_top_singular(
    w: &Mat,
    rank: usize,
    niter: usize,
    rng: &mut impl Rng,
) -> Result<TruncatedSvd, SvdError> {
    let rank = rank.min(w.rows).min(w.cols);
    let wt = w.transpose();
    let mut sketch = Mat::zeros(w.cols, rank);
    for x in &mut sketch.data {
        *x = rng.sample::<f64, _>(StandardNormal);
    }
    let mut q = w.matmul(&sketch);
    orthonormalize(&mut q);
    for _ in 0..niter {
        let mut z = wt.matmul(&q);
        orthonormalize(&mut z);
        q = w.matmul(&z);
        orthonormalize(&mut q);
    }
    // B = Q^T W is small ([rank, cols]); its exact SVD lifts back through Q.
    let b = q.transpose().matmul(w);
    let small = top_singular(&b, rank)?;
    Ok(TruncatedSvd {
        u: q.matmul(&small.u),
        s: small.s,
        vt: small.vt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn random(rows: usize, cols: usize, seed: u64) -> Mat {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut m = Mat::zeros(rows, cols);
        for x in &mut m.data {
            *x = rng.sample::<f64, _>(StandardNormal);
        }
        m
    }

    /// `U diag(s) V^T`.
    fn product(svd: &TruncatedSvd) -> Mat {
        let mut us = svd.u.clone();
        for r in 0..us.rows {
            for (c, &s) in svd.s.iter().enumerate() {
                us.set(r, c, us.at(r, c) * s);
            }
        }
        us.matmul(&svd.vt)
    }

    fn max_abs_diff(a: &Mat, b: &Mat) -> f64 {
        a.data
            .iter()
            .zip(&b.data)
            .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    fn orthonormality_error(m: &Mat) -> f64 {
        let g = m.transpose().matmul(m);
        let mut worst: f64 = 0.0;
        for i in 0..g.rows {
            for j in 0..g.cols {
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((g.at(i, j) - want).abs());
            }
        }
        worst
    }

    #[test]
    fn full_rank_svd_reconstructs_tall_and_wide_matrices() {
        for (rows, cols) in [(12, 7), (7, 12), (9, 9)] {
            let w = random(rows, cols, 1);
            let svd = top_singular(&w, rows.min(cols)).unwrap();
            assert!(max_abs_diff(&product(&svd), &w) < 1e-9, "{rows}x{cols}");
            assert!(orthonormality_error(&svd.u) < 1e-9);
            assert!(orthonormality_error(&svd.vt.transpose()) < 1e-9);
            assert!(svd.s.windows(2).all(|p| p[0] >= p[1]));
        }
    }

    #[test]
    fn truncation_keeps_the_planted_components() {
        // A rank-3 matrix with known singular values plus tiny noise: the top 3 recover it.
        let (rows, cols) = (20, 15);
        let mut u = random(rows, 3, 2);
        let mut v = random(cols, 3, 3);
        orthonormalize(&mut u);
        orthonormalize(&mut v);
        let s = [9.0, 4.0, 2.0];
        let planted = TruncatedSvd {
            u,
            s: s.to_vec(),
            vt: v.transpose(),
        };
        let clean = product(&planted);
        let mut noisy = clean.clone();
        let noise = random(rows, cols, 4);
        for (x, n) in noisy.data.iter_mut().zip(&noise.data) {
            *x += 1e-6 * n;
        }
        let svd = top_singular(&noisy, 3).unwrap();
        for (got, want) in svd.s.iter().zip(s) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        assert!(max_abs_diff(&product(&svd), &clean) < 1e-4);
        let mut rng = StdRng::seed_from_u64(5);
        let approx = randomized_top_singular(&noisy, 3, 2, &mut rng).unwrap();
        assert!(max_abs_diff(&product(&approx), &clean) < 1e-4);
        assert!(orthonormality_error(&approx.u) < 1e-9);
        assert!(orthonormality_error(&approx.vt.transpose()) < 1e-9);
    }

    #[test]
    fn randomized_svd_improves_with_iterations() {
        // A geometrically decaying spectrum (0.8^i): more subspace iterations, closer to
        // the exact top 4.
        let mut u = random(40, 30, 6);
        let mut v = random(30, 30, 8);
        orthonormalize(&mut u);
        orthonormalize(&mut v);
        let w = product(&TruncatedSvd {
            u,
            s: (0..30).map(|i| 0.8f64.powi(i)).collect(),
            vt: v.transpose(),
        });
        let exact = product(&top_singular(&w, 4).unwrap());
        let err = |niter| {
            let mut rng = StdRng::seed_from_u64(7);
            max_abs_diff(
                &product(&randomized_top_singular(&w, 4, niter, &mut rng).unwrap()),
                &exact,
            )
        };
        let (e0, e30) = (err(0), err(30));
        assert!(e30 < e0, "niter 30 ({e30}) no better than 0 ({e0})");
        assert!(e30 < 1e-4, "{e30}");
    }
}
