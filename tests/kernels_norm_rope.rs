//! Norms (`rms_norm` with a column offset, `add_rms_norm`, `layer_norm`) and rotary embedding
//! (`rope`, interleaved and half-split, with head offsets and strides) of the CPU backend
//! against the f64 references in `tests/reference`.

mod common;
mod reference;

use common::*;
use flashseek::backend::{Backend, CpuBackend, HeadCols, RopeLayout};
use flashseek::tensor::Tensor;
use proptest::prelude::*;
use reference as rf;

/// Per-row relative error allowed for f32 norms and rotations against f64.
const TOL: f64 = 1e-5;

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Tensor<CpuBackend> {
    Tensor::<CpuBackend>::from_vec(rows, cols, data).expect("tensor")
}

fn rows_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..4, 4usize..40]
}

/// Row widths: tiny, odd, not multiples of the SIMD width or of 128, and a real hidden size.
fn width_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 1usize..8, 4 => 8usize..700, 1 => Just(512usize), 1 => Just(7168usize)]
}

fn eps_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![Just(1e-6f32), Just(1e-5f32), Just(1e-3f32)]
}

#[test]
fn rms_norm_with_column_offset() {
    let b = CpuBackend::new();
    let strategy = (rows_strategy(), width_strategy(), 0usize..200, 0usize..50, eps_strategy(), any::<u64>());
    rf::run("rms_norm", 64, strategy, |(rows, n, col0, extra, eps, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let x_cols = col0 + n + extra;
        let x = rng.activations(rows, x_cols);
        let w: Vec<f32> = (0..n).map(|_| (1.0 + 0.3 * rng.normal()) as f32).collect();
        let wt = tensor(1, n, w.clone());
        let mut out = tensor(rows, n, vec![f32::NAN; rows * n]);
        b.rms_norm(&tensor(rows, x_cols, x.clone()), col0, &wt, eps, &mut out).expect("rms_norm");
        let want = rf::rms_norm(&x, x_cols, col0, &w, eps);
        let r = assert_close(&format!("rms_norm [{rows}x{x_cols}] cols {col0}+{n}"), out.data(), &want, n, TOL);
        t.record(if col0 > 0 { "with col0 > 0" } else { "col0 = 0" }, &r);
        // Columns past the row, or an output of the wrong shape, are errors.
        let xt = tensor(rows, x_cols, x);
        prop_assert!(b.rms_norm(&xt, x_cols - n + 1, &wt, eps, &mut out).is_err());
        prop_assert!(b.rms_norm(&xt, 0, &wt, eps, &mut tensor(rows + 1, n, vec![0.0; (rows + 1) * n])).is_err());
        Ok(())
    });
}

#[test]
fn add_rms_norm_updates_the_residual() {
    let b = CpuBackend::new();
    let strategy = (rows_strategy(), width_strategy(), eps_strategy(), any::<u64>());
    rf::run("add_rms_norm", 64, strategy, |(rows, n, eps, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let res = rng.activations(rows, n);
        let delta = rng.activations(rows, n);
        let w: Vec<f32> = (0..n).map(|_| (1.0 + 0.3 * rng.normal()) as f32).collect();
        let mut residual = tensor(rows, n, res.clone());
        let mut out = tensor(rows, n, vec![f32::NAN; rows * n]);
        b.add_rms_norm(&mut residual, &tensor(rows, n, delta.clone()), &tensor(1, n, w.clone()), eps, &mut out)
            .expect("add_rms_norm");
        // The residual is the f32 sum (one rounding of the exact sum).
        let sum: Vec<f32> = res.iter().zip(&delta).map(|(&a, &d)| (f64::from(a) + f64::from(d)) as f32).collect();
        for (i, (g, w)) in residual.data().iter().zip(&sum).enumerate() {
            prop_assert_eq!(g.to_bits(), w.to_bits(), "residual value {}", i);
        }
        let want = rf::rms_norm(&sum, n, 0, &w, eps);
        let r = assert_close(&format!("add_rms_norm [{rows}x{n}]"), out.data(), &want, n, TOL);
        t.record("out", &r);
        Ok(())
    });
}

/// `w` must be one row's width: anything else is a shape error, not a reinterpretation of the
/// rows.
#[test]
fn add_rms_norm_rejects_a_weight_of_the_wrong_width() {
    let b = CpuBackend::new();
    for w_len in [3usize, 12] {
        let mut residual = tensor(2, 6, vec![1.0; 12]);
        let delta = tensor(2, 6, vec![0.5; 12]);
        let mut out = tensor(2, 6, vec![0.0; 12]);
        let r = b.add_rms_norm(&mut residual, &delta, &tensor(1, w_len, vec![1.0; w_len]), 1e-6, &mut out);
        assert!(r.is_err(), "add_rms_norm of [2, 6] rows with a weight of {w_len} values returned Ok");
    }
}

#[test]
fn layer_norm_biased_variance() {
    let b = CpuBackend::new();
    // Widths up to 1024 (the engine's LayerNorm is the indexer's, 128 wide): the kernel sums the
    // mean sequentially in f32, whose error grows with the width (see `layer_norm_wide_rows`).
    let width = prop_oneof![1 => 1usize..8, 4 => 8usize..1024, 1 => Just(128usize)];
    let strategy = (rows_strategy(), width, eps_strategy(), any::<u64>());
    rf::run("layer_norm", 64, strategy, |(rows, n, eps, seed), t| {
        let mut rng = rf::Rng::new(seed);
        // Rows with an offset mean, and the odd constant row.
        let mut x = rng.activations(rows, n);
        for r in 0..rows {
            let shift = rng.range(-3.0, 3.0) as f32;
            let constant = rng.chance(0.1);
            for v in &mut x[r * n..(r + 1) * n] {
                *v = if constant { shift } else { *v + shift };
            }
        }
        let w: Vec<f32> = (0..n).map(|_| (1.0 + 0.3 * rng.normal()) as f32).collect();
        let bias: Vec<f32> = rng.normals(n, 0.5);
        let mut xt = tensor(rows, n, x.clone());
        b.layer_norm(&mut xt, &tensor(1, n, w.clone()), &tensor(1, n, bias.clone()), eps).expect("layer_norm");
        let want = rf::layer_norm(&x, &w, &bias, eps);
        // f32 rounds x - mean with an error proportional to |x| + |mean|, not |x - mean|: the
        // magnitude each output's error scales with is (|x| + |mean|)·|w| / sqrt(var + eps) + |b|.
        let mut mag = Vec::with_capacity(x.len());
        for row in x.chunks(n) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
            for (j, &v) in row.iter().enumerate() {
                mag.push(
                    (f64::from(v).abs() + mean.abs()) * f64::from(w[j]).abs() / (var + f64::from(eps)).sqrt()
                        + f64::from(bias[j]).abs(),
                );
            }
        }
        let (r, norm) =
            rf::assert_close_to_magnitude(&format!("layer_norm [{rows}x{n}]"), xt.data(), &want, &mag, n, TOL);
        t.record("out", &r);
        t.record_value("error / magnitude", norm, format!("{norm:.3e}"));
        // A weight or bias of the wrong width is an error.
        prop_assert!(b
            .layer_norm(&mut xt, &tensor(1, n + 1, vec![1.0; n + 1]), &tensor(1, n, bias.clone()), eps)
            .is_err());
        prop_assert!(b.layer_norm(&mut xt, &tensor(1, n, w), &tensor(1, n + 1, vec![0.0; n + 1]), eps).is_err());
        Ok(())
    });
}

/// Head layouts: random, and the engine's three (MLA q: rope after nope in each head; the MLA
/// latent row: one head with rope after kv_lora; the indexer: rope first in each head).
fn heads_strategy() -> impl Strategy<Value = (HeadCols, usize)> {
    let random =
        (1usize..6, 1usize..33, 0usize..20, 0usize..20, 0usize..10).prop_map(|(n_heads, half, offset, gap, trail)| {
            let dim = 2 * half;
            let stride = offset + dim + gap;
            (HeadCols { n_heads, stride, offset, dim }, n_heads * stride + trail)
        });
    prop_oneof![
        4 => random,
        1 => Just((HeadCols { n_heads: 16, stride: 192, offset: 128, dim: 64 }, 16 * 192)),
        1 => Just((HeadCols { n_heads: 1, stride: 576, offset: 512, dim: 64 }, 576)),
        1 => Just((HeadCols { n_heads: 8, stride: 128, offset: 0, dim: 64 }, 8 * 128)),
    ]
}

fn layout_strategy() -> impl Strategy<Value = RopeLayout> {
    prop_oneof![Just(RopeLayout::Interleaved), Just(RopeLayout::HalfSplit)]
}

#[test]
fn rope_both_layouts_with_head_offsets() {
    let b = CpuBackend::new();
    let strategy = (heads_strategy(), layout_strategy(), rows_strategy(), any::<u64>());
    rf::run("rope", 96, strategy, |((heads, cols), layout, rows, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let x = rng.activations(rows, cols);
        let half = heads.dim / 2;
        let mut cos_sin = Vec::with_capacity(rows * heads.dim);
        for _ in 0..rows {
            let pos = rng.below(4096) as f64;
            let angles: Vec<f64> =
                (0..half).map(|i| pos * 10000f64.powf(-((2 * i) as f64) / heads.dim as f64)).collect();
            cos_sin.extend(angles.iter().map(|a| a.cos() as f32));
            cos_sin.extend(angles.iter().map(|a| a.sin() as f32));
        }
        let mut xt = tensor(rows, cols, x.clone());
        b.rope(&mut xt, heads, &tensor(rows, heads.dim, cos_sin.clone()), layout).expect("rope");
        let want = rf::rope(&x, cols, heads, &cos_sin, layout);
        // Columns outside the rotary spans are untouched (bit for bit); the spans match the
        // reference (compared on their own, rows of n_heads·dim).
        let in_span = |c: usize| {
            c < heads.n_heads * heads.stride && (heads.offset..heads.offset + heads.dim).contains(&(c % heads.stride))
        };
        let (mut got_span, mut want_span) = (Vec::new(), Vec::new());
        for (i, (&g, &w)) in xt.data().iter().zip(&want).enumerate() {
            if in_span(i % cols) {
                got_span.push(g);
                want_span.push(w);
            } else {
                prop_assert_eq!(g.to_bits(), x[i].to_bits(), "column {} outside the rotary spans changed", i % cols);
            }
        }
        let r = assert_close(
            &format!("rope {layout:?} {heads:?} cols {cols}"),
            &got_span,
            &want_span,
            heads.n_heads * heads.dim,
            TOL,
        );
        t.record(&format!("{layout:?}"), &r);
        Ok(())
    });
}

#[test]
fn rope_bad_shapes_are_errors() {
    let b = CpuBackend::new();
    let x = || tensor(2, 24, vec![1.0; 48]);
    let cs = |cols: usize| tensor(2, cols, vec![0.5; 2 * cols]);
    let l = RopeLayout::Interleaved;
    // Odd rotary width.
    assert!(b.rope(&mut x(), HeadCols { n_heads: 2, stride: 12, offset: 0, dim: 3 }, &cs(3), l).is_err());
    // Rotary span past the head.
    assert!(b.rope(&mut x(), HeadCols { n_heads: 2, stride: 12, offset: 6, dim: 8 }, &cs(8), l).is_err());
    // Heads past the row.
    assert!(b.rope(&mut x(), HeadCols { n_heads: 3, stride: 12, offset: 0, dim: 4 }, &cs(4), l).is_err());
    // cos_sin of the wrong width or row count.
    let h = HeadCols { n_heads: 2, stride: 12, offset: 4, dim: 4 };
    assert!(b.rope(&mut x(), h, &cs(6), l).is_err());
    assert!(b.rope(&mut x(), h, &tensor(3, 4, vec![0.5; 12]), RopeLayout::HalfSplit).is_err());
}

/// Rows whose mean is large against their spread (mean 3, std 0.02). The kernel sums the mean
/// sequentially in f32, so its error grows with the width: at the engine's width (128, the
/// indexer's k norm) this is within 1e-4 of f64; wider rows are only measured and printed (a
/// numerical weakness, not a contract: about 1e-4 at 1024 and 3e-4 at 7168, where an f32
/// LayerNorm with a pairwise or shifted mean stays near 1e-5).
#[test]
fn layer_norm_wide_rows_with_large_mean() {
    let b = CpuBackend::new();
    let mut rng = rf::Rng::new(11);
    for n in [128usize, 1024, 7168] {
        let rows = 4;
        let x: Vec<f32> = (0..rows * n).map(|_| (3.0 + 0.02 * rng.normal()) as f32).collect();
        let w = vec![1.0f32; n];
        let bias = vec![0.0f32; n];
        let mut xt = tensor(rows, n, x.clone());
        b.layer_norm(&mut xt, &tensor(1, n, w.clone()), &tensor(1, n, bias.clone()), 1e-6).expect("layer_norm");
        let want = rf::layer_norm(&x, &w, &bias, 1e-6);
        let tol = if n <= 128 { 1e-4 } else { 1e-2 };
        let r = assert_close(&format!("layer_norm [{rows}x{n}] mean 3 std 0.02"), xt.data(), &want, n, tol);
        println!("[layer_norm mean 3 std 0.02] n {n}: {r}");
    }
}

/// A head layout with no rotary columns (`dim` 0) must rotate nothing or give an error, not
/// panic.
#[test]
fn rope_with_no_rotary_columns_does_not_panic() {
    let b = CpuBackend::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut x = tensor(2, 8, vec![1.0; 16]);
        let res = b.rope(
            &mut x,
            HeadCols { n_heads: 2, stride: 4, offset: 0, dim: 0 },
            &tensor(2, 0, vec![]),
            RopeLayout::Interleaved,
        );
        (res.is_ok(), x.data().to_vec())
    }));
    match r {
        Err(_) => panic!("rope with dim 0 panicked"),
        Ok((true, data)) => assert!(data.iter().all(|&v| v == 1.0), "rope with dim 0 changed x"),
        Ok((false, _)) => {}
    }
}
