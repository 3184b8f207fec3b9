use half::bf16;

use super::*;

/// A deterministic xorshift generator for test data.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// C = alpha A B + beta C in f64 for views described by (rows, cols, rs, cs).
#[allow(clippy::too_many_arguments)]
fn naive(
    a: &[f32],
    (m, k, ars, acs): (usize, usize, usize, usize),
    b: &[f32],
    (n, brs, bcs): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += a[i * ars + p * acs] as f64 * b[p * brs + j * bcs] as f64;
            }
            let prev = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c[i * ldc + j] as f64
            };
            c[i * ldc + j] = (alpha as f64 * s + prev) as f32;
        }
    }
}

fn check_f32(isa_level: Isa, parallel: bool, m: usize, n: usize, k: usize, transposed: bool) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (m * 131 + n * 7 + k) as u64);
    let a = rng.vec(m * k);
    let b = rng.vec(k * n);
    // A is m x k row-major, or stored k x m and viewed transposed; B likewise.
    let (ar, bv) = if transposed {
        (
            MatRef::new(&a, 0, m, k, 1, m),
            MatRef::new(&b, 0, k, n, 1, k),
        )
    } else {
        (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n))
    };
    let (ars, acs) = if transposed { (1, m) } else { (k, 1) };
    let (brs, bcs) = if transposed { (1, k) } else { (n, 1) };
    let ldc = n + 3;
    let init = rng.vec(m * ldc);
    for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 1.0)] {
        let mut want = init.clone();
        naive(
            &a,
            (m, k, ars, acs),
            &b,
            (n, brs, bcs),
            &mut want,
            ldc,
            alpha,
            beta,
        );
        let mut got = init.clone();
        gemm_with(isa_level, parallel, ar, bv, &mut got, ldc, alpha, beta);
        for i in 0..m {
            for j in 0..ldc {
                let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                if j >= n {
                    assert_eq!(g, init[i * ldc + j], "padding column touched");
                    continue;
                }
                let tol = 1e-5 * (k as f32).sqrt().max(1.0) * (1.0 + w.abs());
                assert!(
                    (g - w).abs() <= tol,
                    "{isa_level:?} par={parallel} {m}x{n}x{k} t={transposed} alpha={alpha} beta={beta} at ({i},{j}): {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn f32_matches_naive_on_every_isa_and_odd_shapes() {
    let shapes = [
        (1, 1, 1),
        (5, 3, 7),
        (13, 17, 19),
        (6, 16, 256),
        (12, 32, 300),
        (37, 70, 513),
        (150, 40, 33),
        (7, 3100, 9),
        (200, 190, 270),
    ];
    for isa_level in isa::supported() {
        for &(m, n, k) in &shapes {
            for transposed in [false, true] {
                check_f32(isa_level, false, m, n, k, transposed);
            }
        }
        // Parallel: rows split with B packed once, columns split with A packed once, and
        // depths over one KC block so the shared panels span several blocks.
        check_f32(isa_level, true, 300, 260, 100, false);
        check_f32(isa_level, true, 40, 700, 300, true);
        check_f32(isa_level, true, 150, 500, 600, false);
        check_f32(isa_level, true, 500, 70, 1100, true);
        // Several column blocks (NC) and depth blocks (KC) of every kernel.
        check_f32(isa_level, false, 30, 1600, 1100, false);
    }
}

/// With B packed ahead (rows split over threads), each row block runs all its depth blocks
/// while its block of C stays in cache; without, each depth block runs over all row blocks.
/// The tiles and the order of their sums are the same, so the bits are too: rows over
/// several `MC` blocks, columns over several `NC` blocks, depth over several `KC` blocks,
/// with partial tiles at the edges, alpha and beta.
#[test]
fn c_resident_order_matches_the_depth_outer_order_bit_for_bit() {
    let (m, n, k) = (700, 1600, 1100);
    let mut rng = Rng(0xc0ffee);
    let a = rng.vec(m * k);
    let b = rng.vec(k * n);
    let ldc = n + 1;
    let c0 = rng.vec(m * ldc);
    for isa_level in isa::supported() {
        for (b_view, name) in [
            (MatRef::row_major(&b, k, n), "B row-major"),
            (MatRef::row_major(&b, n, k).t(), "B^T row-major"),
        ] {
            let a_view = MatRef::row_major(&a, m, k);
            let mut seq = c0.clone();
            gemm_with(isa_level, false, a_view, b_view, &mut seq, ldc, 0.5, 1.0);
            let mut par = c0.clone();
            gemm_with(isa_level, true, a_view, b_view, &mut par, ldc, 0.5, 1.0);
            let diff = seq
                .iter()
                .zip(&par)
                .position(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(diff, None, "{isa_level:?} {name}: first differing element");
        }
    }
}

#[test]
fn empty_inner_dimension_scales_c() {
    let a: Vec<f32> = vec![];
    let b: Vec<f32> = vec![];
    let mut c = vec![3.0f32; 6];
    gemm(
        MatRef::new(&a, 0, 2, 0, 0, 1),
        MatRef::new(&b, 0, 0, 3, 3, 1),
        &mut c,
        3,
        1.0,
        1.0,
    );
    assert_eq!(c, vec![3.0; 6]);
    gemm(
        MatRef::new(&a, 0, 2, 0, 0, 1),
        MatRef::new(&b, 0, 0, 3, 3, 1),
        &mut c,
        3,
        1.0,
        0.0,
    );
    assert_eq!(c, vec![0.0; 6]);
}

#[test]
fn bf16_matches_f32_of_the_rounded_inputs() {
    // bf16 x bf16 products are exact in f32, so any kernel must agree with the f32 product
    // of the rounded values up to f32 summation order.
    for (m, n, k) in [
        (29, 45, 131),
        (70, 300, 1030),
        (400, 50, 517),
        (29, 45, 130),
    ] {
        bf16_case(m, n, k);
    }
}

/// f32 A rows at a stride wider than the depth, from an offset, partial tiles, alpha and
/// beta, odd depths. The AVX-512 kernel reads them in place, except rows 4 KiB apart (the
/// last case, whose rows would all map to the same L1 sets), which are copied per block
/// to a stride an odd number of cache lines wide; the AVX2 kernel packs them.
#[test]
fn f32_rows_at_any_stride() {
    let cases = [
        (29, 45, 131, 6, 3),
        (100, 70, 1030, 1, 0),
        (1, 33, 1, 0, 5),
        (160, 40, 1024, 0, 0),
    ];
    for (m, n, k, pad, offset) in cases {
        strided_rows_case(m, n, k, pad, offset, |v| v);
    }
}

/// A product split by rows over threads with B packed up front, wider than one column
/// block (`NC` = 1536 for the f32 AVX-512 kernel) and one depth block deep: each block of
/// A's rows is prepared once and run against both column blocks. Rows 4 KiB apart, so the
/// AVX-512 kernel reads a copy of each block. Same bits as the single-threaded product,
/// which prepares a block per column block.
#[test]
fn f32_row_blocks_prepared_once_serve_every_column_block() {
    let (m, n, k) = (600, 1540, 1024);
    let mut rng = Rng(0x5eed);
    let a = rng.vec(m * k);
    let b = rng.vec(n * k);
    let c0 = rng.vec(m * n);
    for isa_level in isa::supported() {
        let run = |parallel: bool| {
            let mut c = c0.clone();
            let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, n, k).t());
            gemm_with(isa_level, parallel, av, bv, &mut c, n, 1.0, 0.5);
            c
        };
        let (alone, split) = (run(false), run(true));
        let differ = alone
            .iter()
            .zip(&split)
            .position(|(x, y)| x.to_bits() != y.to_bits());
        assert_eq!(differ, None, "{isa_level:?}: first differing element");
    }
}

/// The bf16 kernel reads A's rows in place when their depth is contiguous and even: rows at
/// a stride wider than the depth, from an offset, partial tiles, alpha and beta.
#[test]
fn bf16_rows_read_in_place_at_any_stride() {
    // The last case's rows are 4 KiB apart: copied per block to another stride.
    let cases = [
        (29, 45, 130, 6, 3),
        (100, 70, 1026, 1, 0),
        (1, 33, 2, 0, 5),
        (30, 40, 2048, 0, 0),
    ];
    for (m, n, k, pad, offset) in cases {
        strided_rows_case(m, n, k, pad, offset, bf16::from_f32);
    }
}

/// `C = 2 A B + C / 2` with A's `m` rows `k + pad` apart from `offset`, elements made by
/// `elem`, against the f64 product of the values the kernels saw, on every ISA.
fn strided_rows_case<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    pad: usize,
    offset: usize,
    elem: fn(f32) -> T,
) {
    let mut rng = Rng(11 ^ (m * n * k) as u64);
    let lda = k + pad;
    let a: Vec<T> = rng.vec(offset + m * lda).into_iter().map(elem).collect();
    let b: Vec<T> = rng.vec(k * n).into_iter().map(elem).collect();
    let c0 = rng.vec(m * n);
    let af: Vec<f32> = a[offset..].iter().map(|v| v.to_f32()).collect();
    let bf: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    let mut want = c0.clone();
    naive(&af, (m, k, lda, 1), &bf, (n, 1, k), &mut want, n, 2.0, 0.5);
    for isa_level in isa::supported() {
        for parallel in [false, true] {
            let mut got = c0.clone();
            let av = MatRef::new(&a, offset, m, k, lda, 1);
            let bv = MatRef::new(&b, 0, k, n, 1, k);
            gemm_with(isa_level, parallel, av, bv, &mut got, n, 2.0, 0.5);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{isa_level:?} {m}x{n}x{k}: {g} vs {w}"
                );
            }
        }
    }
}

fn bf16_case(m: usize, n: usize, k: usize) {
    let mut rng = Rng(7);
    let a: Vec<bf16> = rng.vec(m * k).into_iter().map(bf16::from_f32).collect();
    let b: Vec<bf16> = rng.vec(k * n).into_iter().map(bf16::from_f32).collect();
    let af: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
    let bf: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    let mut want = vec![0f32; m * n];
    naive(&af, (m, k, k, 1), &bf, (n, 1, k), &mut want, n, 1.0, 0.0);
    for isa_level in isa::supported() {
        for parallel in [false, true] {
            let mut got = vec![0f32; m * n];
            // B viewed transposed (as a linear layer's weight is).
            gemm_with(
                isa_level,
                parallel,
                MatRef::row_major(&a, m, k),
                MatRef::new(&b, 0, k, n, 1, k),
                &mut got,
                n,
                1.0,
                0.0,
            );
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{isa_level:?}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn mixed_bf16_and_f32_operands() {
    let (m, n, k) = (9, 20, 33);
    let mut rng = Rng(11);
    let a: Vec<bf16> = rng.vec(m * k).into_iter().map(bf16::from_f32).collect();
    let b = rng.vec(k * n);
    let af: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
    let mut want = vec![0f32; m * n];
    naive(&af, (m, k, k, 1), &b, (n, n, 1), &mut want, n, 1.0, 0.0);
    let mut got = vec![0f32; m * n];
    gemm(
        MatRef::row_major(&a, m, k),
        MatRef::row_major(&b, k, n),
        &mut got,
        n,
        1.0,
        0.0,
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()));
    }
}

/// A pre-packed B gives exactly the plain product's bits (same kernel, same packing, same
/// order of sums), for B stored either way round, alpha/beta, parallel and not.
#[test]
fn prepacked_b_matches_the_plain_product_bit_for_bit() {
    let shapes = [
        (1, 1, 1),
        (13, 31, 3),
        (200, 33, 517),
        (96, 100, 1100),
        (700, 64, 40),
    ];
    for (m, n, k) in shapes {
        let mut rng = Rng(0x51ed ^ (m * 131 + n * 7 + k) as u64);
        let a: Vec<bf16> = rng.vec(m * k).into_iter().map(bf16::from_f32).collect();
        let b: Vec<bf16> = rng.vec(k * n).into_iter().map(bf16::from_f32).collect();
        let c0 = rng.vec(m * n);
        for b_view in [MatRef::row_major(&b, k, n), MatRef::row_major(&b, n, k).t()] {
            let Some(packed) = PackedB::new(b_view) else {
                assert!(
                    isa::active().min(isa::detected()) < Isa::Avx512Bf16,
                    "PackedB::new refused on a CPU with AVX-512 BF16"
                );
                return;
            };
            assert!(packed.bytes() >= k * n * 2);
            let a_view = MatRef::row_major(&a, m, k);
            for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0)] {
                let (mut want, mut got) = (c0.clone(), c0.clone());
                gemm(a_view, b_view, &mut want, n, alpha, beta);
                gemm_prepacked_b(a_view, &packed, &mut got, n, alpha, beta);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{m}x{n}x{k} alpha {alpha} beta {beta}");
                // And the product is right (not just equally wrong).
                let af: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
                let bf: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
                let mut exact = c0.clone();
                let (brs, bcs) = if b_view.rs == n { (n, 1) } else { (1, k) };
                naive(
                    &af,
                    (m, k, k, 1),
                    &bf,
                    (n, brs, bcs),
                    &mut exact,
                    n,
                    alpha,
                    beta,
                );
                for (x, y) in got.iter().zip(&exact) {
                    assert!((x - y).abs() <= 1e-3 * (1.0 + y.abs()), "{x} vs {y}");
                }
            }
        }
    }
}

/// The epilogue's sums, in the order it makes them: `c + bias`, then the low-rank term's
/// FMA chain over the rank (as `thin::add_lp` makes it).
fn finished(c: f32, bias: Option<f32>, lhs: &[f32], p: impl Fn(usize) -> f32, scale: f32) -> f32 {
    let mut v = match bias {
        Some(b) => c + b,
        None => c,
    };
    for (j, &l) in lhs.iter().enumerate() {
        v = (scale * l).mul_add(p(j), v);
    }
    v
}

/// A product with an epilogue gives, bit for bit, the plain product followed by the bias,
/// the low-rank term and the rounding as separate passes: on every kernel, parallel and
/// not, with depths of one GEMM block and of several (the f32 C then accumulates in
/// memory), edge tiles, f32 and bf16 operands, and through a pre-packed B.
#[test]
fn epilogue_matches_separate_passes_bit_for_bit() {
    let shapes = [
        (1, 1, 1),
        (13, 31, 3),
        (50, 70, 64),
        (37, 45, 1100),
        (130, 96, 300),
    ];
    for (m, n, k) in shapes {
        let mut rng = Rng(0xe91 ^ (m * 131 + n * 7 + k) as u64);
        let r = 3;
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let bias = rng.vec(n);
        let lhs = rng.vec(m * r);
        let p = rng.vec(r * n);
        let scale = 0.75;
        let a16: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
        let b16: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
        for isa_level in isa::supported() {
            for parallel in [false, true] {
                for with_bias in [false, true] {
                    let epilogue = || {
                        let e = Epilogue::new(n).low_rank(LowRank {
                            lhs: &lhs,
                            p: &p,
                            rank: r,
                            scale,
                        });
                        if with_bias { e.bias(&bias) } else { e }
                    };
                    let expect = |plain: &[f32]| -> Vec<f32> {
                        (0..m * n)
                            .map(|i| {
                                let (row, col) = (i / n, i % n);
                                finished(
                                    plain[i],
                                    with_bias.then(|| bias[col]),
                                    &lhs[row * r..(row + 1) * r],
                                    |j| p[j * n + col],
                                    scale,
                                )
                            })
                            .collect()
                    };
                    let what =
                        format!("{m}x{n}x{k} {isa_level:?} parallel {parallel} bias {with_bias}");
                    // f32 operands, the result left in C.
                    let mut plain = vec![0f32; m * n];
                    gemm_impl(
                        isa_level,
                        parallel,
                        MatRef::row_major(&a, m, k),
                        MatRef::row_major(&b, k, n),
                        &mut plain,
                        n,
                        1.0,
                        0.0,
                        None,
                    );
                    let mut got = vec![f32::NAN; m * n];
                    gemm_impl(
                        isa_level,
                        parallel,
                        MatRef::row_major(&a, m, k),
                        MatRef::row_major(&b, k, n),
                        &mut got,
                        n,
                        1.0,
                        0.0,
                        Some(&epilogue()),
                    );
                    let want = expect(&plain);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "f32 {what}"
                    );
                    // bf16 operands (B read as W^T, as a linear layer does), rounded out.
                    let av = MatRef::row_major(&a16, m, k);
                    let bv = MatRef::row_major(&b16, n, k).t();
                    let mut plain = vec![0f32; m * n];
                    gemm_impl(isa_level, parallel, av, bv, &mut plain, n, 1.0, 0.0, None);
                    let want: Vec<bf16> = expect(&plain).into_iter().map(bf16::from_f32).collect();
                    let mut out = vec![std::mem::MaybeUninit::<bf16>::uninit(); m * n];
                    let mut scratch = vec![f32::NAN; m * n];
                    gemm_impl(
                        isa_level,
                        parallel,
                        av,
                        bv,
                        &mut scratch,
                        n,
                        1.0,
                        0.0,
                        Some(&epilogue().round_into(&mut out)),
                    );
                    // SAFETY: the rounding epilogue writes every element.
                    let got: Vec<bf16> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "bf16 {what}"
                    );
                    // The same through a pre-packed B (the backward's dx = g W).
                    if isa_level == isa::detected().min(isa::active())
                        && let Some(packed) = PackedB::new(bv)
                    {
                        let mut out = vec![std::mem::MaybeUninit::<bf16>::uninit(); m * n];
                        gemm_prepacked_b_then(
                            av,
                            &packed,
                            &mut scratch,
                            n,
                            1.0,
                            0.0,
                            Some(&epilogue().round_into(&mut out)),
                        );
                        // SAFETY: as above.
                        let got: Vec<bf16> =
                            out.iter().map(|v| unsafe { v.assume_init() }).collect();
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(x, y)| x.to_bits() == y.to_bits()),
                            "prepacked {what}"
                        );
                    }
                }
            }
        }
    }
}

/// A product into uninitialised C (`beta == 0`) writes every element, the same bits as into
/// zeros, across edge tiles, depths over one block and with an epilogue reading C. The
/// buffer is filled with NaNs first and then handed over as uninitialised: an element the
/// product did not write, or read before writing, would show.
#[test]
fn uninitialised_c_is_written_whole() {
    for (m, n, k) in [(37, 45, 1100), (130, 96, 300), (13, 31, 3), (5, 7, 0)] {
        let mut rng = Rng(0xc0 ^ (m * n + k) as u64);
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let lhs = rng.vec(m * 2);
        let p = rng.vec(2 * n);
        let epilogue = || {
            Epilogue::new(n).low_rank(LowRank {
                lhs: &lhs,
                p: &p,
                rank: 2,
                scale: 0.5,
            })
        };
        let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        let mut want = vec![0f32; m * n];
        gemm_then(av, bv, &mut want, n, 1.0, 0.0, &epilogue());
        let mut got = vec![std::mem::MaybeUninit::new(f32::NAN); m * n];
        gemm_then_out(av, bv, COut::uninit(&mut got), n, 1.0, 0.0, &epilogue());
        // SAFETY: the product wrote every element (initialised anyway: NaN before).
        let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{m}x{n}x{k}"
        );
    }
}

/// Uninitialised C with `beta != 0` would be read: refused.
#[test]
#[should_panic(expected = "uninitialised C with beta")]
fn uninitialised_c_with_beta_is_refused() {
    let (a, b) = ([1f32; 4], [1f32; 4]);
    let mut c = [std::mem::MaybeUninit::<f32>::uninit(); 4];
    gemm_then_out(
        MatRef::row_major(&a, 2, 2),
        MatRef::row_major(&b, 2, 2),
        COut::uninit(&mut c),
        2,
        1.0,
        1.0,
        &Epilogue::new(2),
    );
}

/// Small products with a row-major f32 B run without packing (`driver::small_in_place`):
/// A read by rows (edge rows included) or as the rows of A^T (attention's `P^T dO`, with
/// the edge tile's last step at the very end of A's slice, where it is packed instead).
/// Same tiles and order of sums as the packed path, so the same bits: checked against the
/// product with B stored transposed (which is packed) and against the f64 definition.
#[test]
fn small_products_read_in_place_match_the_packed_path_bit_for_bit() {
    let mut rng = Rng(0x5eed);
    // (m, n, k, A transposed): attention's tile shapes and odd row counts.
    for (m, n, k, a_t) in [
        (72, 64, 64, false),
        (64, 64, 72, true),
        (5, 32, 9, false),
        (13, 96, 40, true),
        (64, 32, 1, true),
        (30, 64, 70, false),
    ] {
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let a_view = if a_t {
            // Stored k x m (A^T row-major), the slice ending where the view does.
            MatRef::new(&a, 0, m, k, 1, m)
        } else {
            MatRef::row_major(&a, m, k)
        };
        let (ars, acs) = if a_t { (1, m) } else { (k, 1) };
        let mut bt = vec![0f32; k * n];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        let ldc = n + 2;
        let init = rng.vec(m * ldc);
        for isa_level in isa::supported() {
            for (alpha, beta) in [(1.0, 0.0), (0.75, 1.0)] {
                let mut small = init.clone();
                gemm_with(
                    isa_level,
                    false,
                    a_view,
                    MatRef::row_major(&b, k, n),
                    &mut small,
                    ldc,
                    alpha,
                    beta,
                );
                let mut packed = init.clone();
                let b_t = MatRef::new(&bt, 0, k, n, 1, k);
                gemm_with(isa_level, false, a_view, b_t, &mut packed, ldc, alpha, beta);
                let mut want = init.clone();
                naive(
                    &a,
                    (m, k, ars, acs),
                    &b,
                    (n, n, 1),
                    &mut want,
                    ldc,
                    alpha,
                    beta,
                );
                for i in 0..m * ldc {
                    assert_eq!(
                        small[i].to_bits(),
                        packed[i].to_bits(),
                        "{isa_level:?} {m}x{n}x{k} a_t={a_t} beta={beta} at {i}"
                    );
                    let tol = 1e-5 * (k as f32).sqrt() * (1.0 + want[i].abs());
                    assert!((small[i] - want[i]).abs() <= tol, "{m}x{n}x{k} at {i}");
                }
            }
        }
    }
}
