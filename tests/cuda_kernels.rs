//! The CUDA kernels against the CPU backend, on random shapes. Without a GPU (or a CUDA driver)
//! every test says so and passes, so `--features cuda` tests run on build machines; with
//! `FLASHSEEK_REQUIRE_GPU=1` (GPU machines) a missing GPU fails them instead.
//!
//! Each property test draws a shape and a seed (the data come from the seed, so a failure
//! shrinks to a small shape), runs the launcher on device buffers and the `CpuBackend`'s trait
//! method on the same values, and compares value by value: NaN and infinity positions must
//! match, kernels documented as bit-exact must give the CPU's bits, the others stay within the
//! bound their test derives. Each test prints its worst relative error and where it was.
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::Rng;
use cuda_common::*;
use cudarc::driver::CudaSlice;
use flashseek::backend::cuda::CudaDevice;
use flashseek::backend::{Backend, CpuBackend, HeadCols, RopeLayout};
use flashseek::fp8::{group_scale, ScaleFmt, E4M3_TO_F32};
use flashseek::model::weights::{Bytes, DType, HostLinear, HostTensor};
use half::bf16;
use proptest::prelude::*;

fn eps_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![Just(1e-6f32), Just(1e-5f32)]
}

/// Where the GPU's f64 sums (another order than the CPU's) round `1/sqrt(mean + eps)` to the
/// neighbouring f32, `x * r` and `w * (x * r)` move by at most 3 ulp relative in all; elsewhere
/// the outputs are the CPU's bits. Subnormal outputs get their absolute spacing.
fn rms_bound(want: f32) -> f64 {
    4.0 * ULP * f64::from(want).abs() + f64::from(f32::MIN_POSITIVE)
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (0usize..40, width_strategy(), 0usize..6, 0usize..6, eps_strategy(), any::<u64>());
    run("rms_norm", strategy, |(rows, cols, left, right, eps, seed), worst| {
        let mut rng = Rng(seed);
        // A column window `left..left + cols` of wider rows, as MLA's norms read them.
        let x_cols = left + cols + right;
        let x = rng.values(rows * x_cols, -4.0, 4.0);
        let w = rng.values(cols, 0.5, 1.5);
        let (x_dev, w_dev) = (upload(dev, &x), upload(dev, &w));
        let mut out_dev = zeros::<f32>(dev, rows * cols);
        dev.rms_norm(&x_dev, rows, x_cols, left, &w_dev, cols, eps, &mut out_dev).expect("cuda rms_norm");
        let got = download(dev, &out_dev, rows * cols);

        let mut want = tensor(rows, cols, vec![0.0; rows * cols]);
        cpu.rms_norm(&tensor(rows, x_cols, x), left, &tensor(1, cols, w), eps, &mut want).expect("cpu rms_norm");
        let shape = format!("[{rows}x{x_cols}] cols {left}+{cols}");
        compare("rms_norm", &shape, cols, &got, want.data(), |i| rms_bound(want.data()[i]), worst)
    });
}

#[test]
fn add_rms_norm_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (0usize..40, width_strategy(), eps_strategy(), any::<u64>());
    run("add_rms_norm", strategy, |(rows, cols, eps, seed), worst| {
        let mut rng = Rng(seed);
        let residual = rng.values(rows * cols, -4.0, 4.0);
        let delta = rng.values(rows * cols, -2.0, 2.0);
        let w = rng.values(cols, 0.5, 1.5);
        let mut r_dev = upload(dev, &residual);
        let (d_dev, w_dev) = (upload(dev, &delta), upload(dev, &w));
        let mut out_dev = zeros::<f32>(dev, rows * cols);
        dev.add_rms_norm(&mut r_dev, &d_dev, rows, cols, &w_dev, eps, &mut out_dev).expect("cuda add_rms_norm");
        let (got_r, got) = (download(dev, &r_dev, rows * cols), download(dev, &out_dev, rows * cols));

        let mut want_r = tensor(rows, cols, residual);
        let mut want = tensor(rows, cols, vec![0.0; rows * cols]);
        cpu.add_rms_norm(&mut want_r, &tensor(rows, cols, delta), &tensor(1, cols, w), eps, &mut want)
            .expect("cpu add_rms_norm");
        let shape = format!("[{rows}x{cols}]");
        // The residual update is one f32 addition on both sides: bit-exact.
        compare("add_rms_norm (residual)", &shape, cols, &got_r, want_r.data(), |_| 0.0, worst)?;
        compare("add_rms_norm", &shape, cols, &got, want.data(), |i| rms_bound(want.data()[i]), worst)
    });
}

#[test]
fn layer_norm_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (0usize..40, width_strategy(), eps_strategy(), any::<u64>());
    run("layer_norm", strategy, |(rows, cols, eps, seed), worst| {
        let mut rng = Rng(seed);
        // An offset per row, so that the mean matters.
        let mut x = rng.values(rows * cols, -4.0, 4.0);
        for row in x.chunks_mut(cols) {
            let shift = rng.range(-3.0, 3.0);
            row.iter_mut().for_each(|v| *v += shift);
        }
        let w = rng.values(cols, 0.5, 1.5);
        let b = rng.values(cols, -1.0, 1.0);
        let mut x_dev = upload(dev, &x);
        let (w_dev, b_dev) = (upload(dev, &w), upload(dev, &b));
        dev.layer_norm(&mut x_dev, rows, cols, &w_dev, &b_dev, eps).expect("cuda layer_norm");
        let got = download(dev, &x_dev, rows * cols);

        let mut want = tensor(rows, cols, x);
        cpu.layer_norm(&mut want, &tensor(1, cols, w), &tensor(1, cols, b.clone()), eps).expect("cpu layer_norm");
        // Mean, variance and `(x - mean) * r` agree with the CPU's to about cols * 2^-53
        // relative (f64 sums in another order): at most 2^-30 absolute here. Rounding that to
        // f32 can land one ulp of z away, then `z * w + b` rounds twice: within 2^-21 of
        // |out| + |b| in all.
        let bound = |i: usize| {
            let y = f64::from(want.data()[i]).abs();
            4.0 * ULP * (y + f64::from(b[i % cols]).abs()) + 2f64.powi(-30) + f64::from(f32::MIN_POSITIVE)
        };
        compare("layer_norm", &format!("[{rows}x{cols}]"), cols, &got, want.data(), bound, worst)
    });
}

/// Heads of `HeadCols`: random small ones, and DeepSeek's MLA query (128 heads of 192 columns,
/// rotary dims 128..192) and indexer (64 heads of 128, rotary dims 0..64).
fn heads_strategy() -> impl Strategy<Value = (HeadCols, usize)> {
    let small =
        (0usize..6, 0usize..5, 0usize..40, 0usize..5, 0usize..7).prop_map(|(n_heads, offset, half, gap, extra)| {
            let dim = 2 * half;
            let stride = offset + dim + gap;
            (HeadCols { n_heads, stride, offset, dim }, n_heads * stride + extra)
        });
    prop_oneof![
        6 => small,
        1 => Just((HeadCols { n_heads: 128, stride: 192, offset: 128, dim: 64 }, 128 * 192)),
        1 => Just((HeadCols { n_heads: 64, stride: 128, offset: 0, dim: 64 }, 64 * 128)),
    ]
}

#[test]
fn rope_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let layout = prop_oneof![Just(RopeLayout::Interleaved), Just(RopeLayout::HalfSplit)];
    let strategy = (0usize..12, heads_strategy(), layout, any::<u64>());
    run("rope", strategy, |(rows, (heads, cols), layout, seed), worst| {
        let mut rng = Rng(seed);
        let x = rng.values(rows * cols, -4.0, 4.0);
        let cos_sin: Vec<f32> = (0..rows * heads.dim)
            .map(|i| {
                // cos then sin of one angle per (row, pair), as the model's tables hold them.
                let (r, k) = (i / heads.dim.max(1), i % heads.dim.max(1));
                let angle = (r * 31 + k % (heads.dim / 2).max(1)) as f32 * 0.37;
                if k < heads.dim / 2 {
                    angle.cos()
                } else {
                    angle.sin()
                }
            })
            .collect();
        let mut x_dev = upload(dev, &x);
        let cs_dev = upload(dev, &cos_sin);
        dev.rope(&mut x_dev, rows, cols, heads, &cs_dev, layout).expect("cuda rope");
        let got = download(dev, &x_dev, rows * cols);

        let mut want = tensor(rows, cols, x);
        cpu.rope(&mut want, heads, &tensor(rows, heads.dim, cos_sin), layout).expect("cpu rope");
        let shape = format!("[{rows}x{cols}] {heads:?} {layout:?}");
        compare("rope", &shape, cols, &got, want.data(), |_| 0.0, worst)
    });
}

/// Lengths for the elementwise ops: empty, tiny, a few blocks, and past the launcher's block
/// cap (4096 blocks of 256), where the grid-stride loop takes over.
fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 0usize..8, 4 => 8usize..5000, 1 => Just(7168usize), 1 => (4096 * 256 - 3usize)..(4096 * 256 + 7000)]
}

#[test]
fn silu_mul_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    run("silu_mul", (len_strategy(), any::<u64>()), |(n, seed), worst| {
        let mut rng = Rng(seed);
        let gate = rng.with_specials(n, -30.0, 30.0, 1e-3);
        let up = rng.with_specials(n, -4.0, 4.0, 1e-3);
        let mut g_dev = upload(dev, &gate);
        let u_dev = upload(dev, &up);
        dev.silu_mul(&mut g_dev, &u_dev, n).expect("cuda silu_mul");
        let got = download(dev, &g_dev, n);

        let mut want = tensor(1, n, gate);
        cpu.silu_mul(&mut want, &tensor(1, n, up)).expect("cpu silu_mul");
        // exp is rounded from f64 on the GPU, by glibc's expf on the CPU: the same f32 except
        // where one of them is off by an ulp; that ulp, then `1 + e`, the division and the
        // product each rounding to neighbouring values, keep the results within 4 ulp.
        let bound = |i: usize| 4.0 * ULP * f64::from(want.data()[i]).abs() + f64::from(f32::MIN_POSITIVE);
        compare("silu_mul", &format!("[{n}]"), n, &got, want.data(), bound, worst)
    });
}

#[test]
fn add_assign_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    run("add_assign", (len_strategy(), any::<u64>()), |(n, seed), worst| {
        let mut rng = Rng(seed);
        let acc = rng.with_specials(n, -4.0, 4.0, 1e-3);
        let x = rng.with_specials(n, -4.0, 4.0, 1e-3);
        let mut a_dev = upload(dev, &acc);
        let x_dev = upload(dev, &x);
        dev.add_assign(&mut a_dev, &x_dev, n).expect("cuda add_assign");
        let got = download(dev, &a_dev, n);

        let mut want = tensor(1, n, acc);
        cpu.add_assign(&mut want, &tensor(1, n, x)).expect("cpu add_assign");
        compare("add_assign", &format!("[{n}]"), n, &got, want.data(), |_| 0.0, worst)
    });
}

#[test]
fn fp8_round_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    // Segments of whole groups, with a partial last group, narrower than one group, and the
    // model's widths; rows hold one to three segments.
    let segment = prop_oneof![Just(128usize), Just(512), Just(7168), Just(1536), 1usize..128, 129usize..700];
    let strategy = (0usize..24, segment, 1usize..4, fmt_strategy(), any::<u64>());
    run("fp8_round", strategy, |(rows, segment, per_row, fmt, seed), worst| {
        let mut rng = Rng(seed);
        let cols = segment * per_row;
        let mut x = rng.magnitudes(rows, cols);
        // A few NaN, infinities and zeros: NaN is skipped by amax, an infinity makes its whole
        // group NaN on both sides.
        for _ in 0..(rows * cols) / 2000 {
            let i = rng.below(rows * cols);
            x[i] = [f32::NAN, f32::INFINITY, -0.0, 0.0][rng.below(4)];
        }
        let mut x_dev = upload(dev, &x);
        dev.fp8_round(&mut x_dev, rows, cols, segment, fmt).expect("cuda fp8_round");
        let got = download(dev, &x_dev, rows * cols);

        let mut want = tensor(rows, cols, x);
        cpu.fp8_round(&mut want, segment, fmt).expect("cpu fp8_round");
        let shape = format!("[{rows}x{cols}] segment {segment} {fmt:?}");
        compare("fp8_round", &shape, cols, &got, want.data(), |_| 0.0, worst)
    });
}

/// Every midpoint between neighbouring e4m3 values must round to the one with the even code
/// (ties to even), and values past 448 after scaling must saturate: one group with a power-of-two
/// scale of 1 (ue8m0 of amax 256) holds the midpoints, other groups have exact scales whose
/// quotient lands a hair above 448.
#[test]
fn fp8_round_ties_to_even_and_saturates_like_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let positive: Vec<f32> = (0u8..=0x78).map(|c| E4M3_TO_F32[c as usize]).collect();
    let mut mids: Vec<f32> = positive.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    mids.extend(mids.clone().iter().map(|v| -v));
    // Rows of 128: the first value (256) sets the group's amax, and so its scale, to 1.
    let rows = mids.len().div_ceil(127);
    let mut x = Vec::new();
    for chunk in mids.chunks(127) {
        x.push(256.0);
        x.extend_from_slice(chunk);
        x.resize(x.len().next_multiple_of(128), 0.0);
    }
    let mut x_dev = upload(dev, &x);
    dev.fp8_round(&mut x_dev, rows, 128, 128, ScaleFmt::Ue8m0).expect("cuda fp8_round");
    let got = download(dev, &x_dev, x.len());
    let mut want = tensor(rows, 128, x.clone());
    cpu.fp8_round(&mut want, 128, ScaleFmt::Ue8m0).expect("cpu fp8_round");
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    for (&m, &g) in x.iter().zip(&got) {
        if let Some(k) = positive.windows(2).position(|w| (w[0] + w[1]) / 2.0 == m.abs()) {
            // Codes k and k + 1 are neighbours; the even one wins.
            let even = positive[k + (k % 2)];
            assert_eq!(g, even.copysign(m), "midpoint {m}");
        }
    }

    // amax * (1/448) rounds down for some amax, and amax / scale then exceeds 448: clamped.
    let amaxes: Vec<f32> = (1..=128).map(|k| 448.0 + k as f32 * 0.37).collect();
    let mut sat = Vec::new();
    for &a in &amaxes {
        sat.extend_from_slice(&[a, -a]);
        sat.resize(sat.len() + 126, 1.0);
    }
    let mut s_dev = upload(dev, &sat);
    dev.fp8_round(&mut s_dev, amaxes.len(), 128, 128, ScaleFmt::Exact).expect("cuda fp8_round");
    let got = download(dev, &s_dev, sat.len());
    let mut want = tensor(amaxes.len(), 128, sat);
    cpu.fp8_round(&mut want, 128, ScaleFmt::Exact).expect("cpu fp8_round");
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn hadamard_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (0usize..16, 0u32..14, 1usize..4, any::<u64>());
    run("hadamard", strategy, |(rows, log_dim, per_row, seed), worst| {
        let mut rng = Rng(seed);
        let dim = 1usize << log_dim;
        let cols = dim * per_row;
        let x = rng.with_specials(rows * cols, -4.0, 4.0, 1e-5);
        let mut x_dev = upload(dev, &x);
        dev.hadamard(&mut x_dev, rows, cols, dim).expect("cuda hadamard");
        let got = download(dev, &x_dev, rows * cols);

        let mut want = tensor(rows, cols, x);
        cpu.hadamard(&mut want, dim).expect("cpu hadamard");
        compare("hadamard", &format!("[{rows}x{cols}] dim {dim}"), cols, &got, want.data(), |_| 0.0, worst)
    });
}

/// An f32 `[vocab, cols]` table on the CPU backend, as the model loads one.
/// `embedding` on both backends for a table of `fmt`: the GPU decodes rows to the CPU's bits.
fn embedding_matches_cpu(op: &str, fmt: WeightFmt) {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (1usize..300, width_strategy(), 0usize..40, any::<u64>());
    run(op, strategy, |(vocab, cols, n, seed), worst| {
        let mut rng = Rng(seed);
        let (host, _) = random_linear(&mut rng, fmt, vocab, cols);
        // Repeats, and the first and last rows.
        let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
        if n > 1 {
            ids[0] = 0;
            ids[n - 1] = vocab as u32 - 1;
        }
        let t_dev = dev.load_linear(&host).expect("cuda load_linear");
        let mut out_dev = zeros::<f32>(dev, n * cols);
        dev.embedding(&t_dev, &ids, &mut out_dev).expect("cuda embedding");
        let got = download(dev, &out_dev, n * cols);

        let mut want = tensor(n, cols, vec![0.0; n * cols]);
        cpu.embedding(&cpu.load_linear(&host).expect("cpu table"), &ids, &mut want).expect("cpu embedding");
        compare(op, &format!("{n} ids of [{vocab}x{cols}]"), cols, &got, want.data(), |_| 0.0, worst)
    });
}

#[test]
fn f32_embedding_matches_cpu() {
    embedding_matches_cpu("embedding f32", WeightFmt::F32);
}

#[test]
fn bf16_embedding_matches_cpu() {
    embedding_matches_cpu("embedding bf16", WeightFmt::Bf16);
}

#[test]
fn f16_embedding_matches_cpu() {
    embedding_matches_cpu("embedding f16", WeightFmt::F16);
}

#[test]
fn fp8_embedding_matches_cpu() {
    embedding_matches_cpu("embedding e4m3", WeightFmt::Fp8);
}

#[test]
fn argmax_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (0usize..40, width_strategy(), any::<u64>());
    run("argmax", strategy, |(rows, cols, seed), worst| {
        let mut rng = Rng(seed);
        // Few distinct values, so ties are common (-0 ties +0); some rows start with a NaN or
        // hold an infinity.
        let pool = [-2.0f32, -1.0, -0.0, 0.0, 1.0, 2.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| {
                let v = if rng.below(4) == 0 { pool[rng.below(pool.len())] } else { rng.range(-2.0, 2.0) };
                if rng.below(3) == 0 {
                    v.round()
                } else {
                    v
                }
            })
            .collect();
        let x_dev = upload(dev, &x);
        let mut out_dev = zeros::<u32>(dev, rows);
        dev.argmax(&x_dev, rows, cols, &mut out_dev).expect("cuda argmax");
        let got = download(dev, &out_dev, rows);

        let want = cpu.argmax(&tensor(rows, cols, x.clone())).expect("cpu argmax");
        worst.borrow_mut().cases += 1;
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            let row = &x[r * cols..(r + 1) * cols];
            prop_assert_eq!(
                g,
                w,
                "argmax [{}x{}] row {}: gpu {} ({}) cpu {} ({})",
                rows,
                cols,
                r,
                g,
                row[*g as usize],
                w,
                row[*w as usize]
            );
        }
        prop_assert_eq!(got.len(), want.len());
        Ok(())
    });
}

// ---- the GEMM family ----

/// DeepSeek's activation quantization: per 1x128 group, the scale must be the CPU's
/// `group_scale` of the group's amax (NaN skipped), and code times scale must be the CPU's
/// `fp8_round` of the row (`quantize_rows`, what the CPU's FP8 linear multiplies), bit for bit.
#[test]
fn act_quant_matches_cpu() {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let cols = prop_oneof![Just(128usize), Just(7168), Just(1536), 1usize..128, 129usize..700];
    let strategy = (0usize..40, cols, fmt_strategy(), any::<u64>());
    run("act_quant", strategy, |(rows, cols, fmt, seed), worst| {
        let mut rng = Rng(seed);
        let mut x = rng.magnitudes(rows, cols);
        // A few NaN, infinities and zeros: NaN is skipped by amax (and gets a NaN code), an
        // infinity gives its group an infinite scale and NaN codes for itself (inf / inf), so the
        // whole group decodes to NaN on both sides (0 * inf).
        for _ in 0..(rows * cols) / 2000 {
            let i = rng.below(rows * cols);
            x[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0][rng.below(5)];
        }
        let kb = cols.div_ceil(128);
        let x_dev = upload(dev, &x);
        let (mut codes_dev, mut scales_dev) = (zeros::<u8>(dev, rows * cols), zeros::<f32>(dev, rows * kb));
        dev.act_quant(&x_dev, rows, cols, fmt, &mut codes_dev, &mut scales_dev).expect("cuda act_quant");
        let codes = download(dev, &codes_dev, rows * cols);
        let scales = download(dev, &scales_dev, rows * kb);

        let shape = format!("[{rows}x{cols}] {fmt:?}");
        let want_scales: Vec<f32> = x
            .chunks(cols.max(1))
            .flat_map(|row| row.chunks(128).map(|g| group_scale(g.iter().fold(0.0f32, |m, v| m.max(v.abs())), fmt)))
            .collect();
        compare("act_quant scales", &shape, kb, &scales, &want_scales, |_| 0.0, worst)?;
        let decoded: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| E4M3_TO_F32[c as usize] * scales[i / cols * kb + i % cols / 128])
            .collect();
        let mut want = tensor(rows, cols, x);
        if cols > 0 {
            cpu.fp8_round(&mut want, cols, fmt).expect("cpu fp8_round");
        }
        compare("act_quant", &shape, cols, &decoded, want.data(), |_| 0.0, worst)
    });
}

/// Every finite e4m3 value, in groups whose ue8m0 scale is 1 (each holds 448), must quantize to
/// its own code: the encoder inverts the decoding table, subnormals, -0 and 448 included.
#[test]
fn act_quant_codes_every_e4m3_value() {
    let Some(dev) = device() else { return };
    let finite: Vec<u8> = (0u8..=0xff).filter(|&c| c & 0x7f != 0x7f).collect();
    let mut x = Vec::new();
    let mut want = Vec::new();
    for chunk in finite.chunks(127) {
        x.push(448.0);
        want.push(0x7e);
        x.extend(chunk.iter().map(|&c| E4M3_TO_F32[c as usize]));
        want.extend_from_slice(chunk);
    }
    let rows = x.len().div_ceil(128);
    x.resize(rows * 128, 0.0);
    want.resize(rows * 128, 0);
    let x_dev = upload(dev, &x);
    let (mut codes_dev, mut scales_dev) = (zeros::<u8>(dev, x.len()), zeros::<f32>(dev, rows));
    dev.act_quant(&x_dev, rows, 128, ScaleFmt::Ue8m0, &mut codes_dev, &mut scales_dev).expect("cuda act_quant");
    assert_eq!(download(dev, &scales_dev, rows), vec![1.0; rows]);
    assert_eq!(download(dev, &codes_dev, x.len()), want);
}

/// Shapes `(m, n, k)`: random ones with partial 128-blocks in n and k, whole blocks, empty
/// ones, many rows (prefill), and DeepSeek's MLA down-projections at decode: `wkv_a` (576 x
/// 7168) and `wq_a` with `wkv_a` stacked (2112 = 1536 + 576 rows, as engines fuse them).
fn gemm_shape_strategy() -> impl Strategy<Value = (usize, usize, usize)> {
    let side = || prop_oneof![4 => 1usize..400, 1 => Just(128usize), 1 => Just(256usize), 1 => Just(384usize)];
    prop_oneof![
        8 => (1usize..70, side(), side()),
        1 => (0usize..3, 0usize..3, 0usize..3),
        1 => (prop_oneof![Just(128usize), Just(4096usize)], 1usize..80, 1usize..300),
        1 => (1usize..4, prop_oneof![Just(2112usize), Just(576usize)], Just(7168usize)),
    ]
}

/// `linear` on both backends for weights of `fmt` and activation quantization from `quant`,
/// compared within [`gemm_bound`]. Activations span 2^-20 .. 2^12 by row; one case in four has
/// a few NaN, infinities and zeros (an infinity makes its row NaN or infinite on both sides, in
/// a quantized group NaN; NaN positions must match).
fn linear_matches_cpu(op: &str, fmt: WeightFmt, quant: impl Strategy<Value = Option<ScaleFmt>>) {
    let Some(dev) = device() else { return };
    let cpu = CpuBackend::new();
    let strategy = (gemm_shape_strategy(), quant, any::<bool>(), any::<u64>());
    run(op, strategy, |((m, n, k), quant, specials, seed), worst| {
        let mut rng = Rng(seed);
        let (host, w_values) = random_linear(&mut rng, fmt, n, k);
        let mut x = rng.magnitudes(m, k);
        if specials {
            for _ in 0..(m * k) / 3000 + 1 {
                if m * k > 0 {
                    let i = rng.below(m * k);
                    x[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0][rng.below(5)];
                }
            }
        }
        let w_dev = dev.load_linear(&host).expect("cuda load_linear");
        let x_dev = upload(dev, &x);
        let mut out_dev = zeros::<f32>(dev, m * n);
        dev.linear(&x_dev, m, &w_dev, quant, &mut out_dev).expect("cuda linear");
        let got = download(dev, &out_dev, m * n);

        let w_cpu = cpu.load_linear(&host).expect("cpu load_linear");
        let mut want = tensor(m, n, vec![0.0; m * n]);
        cpu.linear(&tensor(m, k, x.clone()), &w_cpu, quant, &mut want).expect("cpu linear");
        // The activations the products are made of: rounded through e4m3 where quantized.
        let mut xq = tensor(m, k, x);
        if let (Some(q), WeightFmt::Fp8, true) = (quant, fmt, k > 0) {
            cpu.fp8_round(&mut xq, k, q).expect("cpu fp8_round");
        }
        let p = abs_dots(xq.data(), &w_values, m, n, k);
        let shape = format!("[{m}x{k}]·[{n}x{k}]ᵀ {fmt:?} {quant:?}");
        // Quantized FP8 products go through the Hopper GEMM where it takes k.
        let fast = matches!((quant, fmt), (Some(_), WeightFmt::Fp8)) && CudaDevice::fp8_gemm_fast_supports(k);
        let bound = |i: usize| if fast { wgmma_bound(p[i], k) } else { gemm_bound(p[i], k) };
        compare(op, &shape, n, &got, want.data(), bound, worst)
    });
}

#[test]
fn fp8_linear_quantized_matches_cpu() {
    linear_matches_cpu("act_quant + fp8_gemm", WeightFmt::Fp8, fmt_strategy().prop_map(Some));
}

#[test]
fn fp8_linear_unquantized_matches_cpu() {
    linear_matches_cpu("gemm_we4m3", WeightFmt::Fp8, Just(None));
}

/// Weights that are not FP8 never quantize their activations, with or without `quant`.
fn any_quant() -> impl Strategy<Value = Option<ScaleFmt>> {
    prop_oneof![Just(None), fmt_strategy().prop_map(Some)]
}

#[test]
fn bf16_linear_matches_cpu() {
    linear_matches_cpu("gemm_wbf16", WeightFmt::Bf16, any_quant());
}

#[test]
fn f16_linear_matches_cpu() {
    linear_matches_cpu("gemm_wf16", WeightFmt::F16, any_quant());
}

#[test]
fn f32_linear_matches_cpu() {
    linear_matches_cpu("gemm_wf32", WeightFmt::F32, any_quant());
}

// ---- bad shapes: every launcher rejects what does not fit its buffers, and never panics ----

fn buf(dev: &CudaDevice, n: usize) -> CudaSlice<f32> {
    zeros(dev, n)
}

#[test]
fn rms_norm_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let (x, w, mut out) = (buf(dev, 6), buf(dev, 3), buf(dev, 6));
    assert!(dev.rms_norm(&x, 3, 3, 0, &w, 3, 1e-6, &mut out).is_err(), "x too short");
    assert!(dev.rms_norm(&x, 2, 3, 0, &buf(dev, 2), 3, 1e-6, &mut out).is_err(), "weight too short");
    assert!(dev.rms_norm(&x, 2, 3, 0, &w, 3, 1e-6, &mut buf(dev, 5)).is_err(), "out too short");
    assert!(dev.rms_norm(&x, 2, 3, 1, &w, 3, 1e-6, &mut out).is_err(), "window past the row");
    assert!(dev.rms_norm(&x, 2, 3, usize::MAX, &w, 3, 1e-6, &mut out).is_err(), "window overflows");
    assert!(dev.rms_norm(&x, 2, 3, 0, &w, 0, 1e-6, &mut out).is_err(), "no columns");
    assert!(dev.rms_norm(&x, usize::MAX, 3, 0, &w, 3, 1e-6, &mut out).is_err(), "rows overflow");
    dev.rms_norm(&x, 0, 3, 0, &w, 3, 1e-6, &mut out).expect("no rows");
    dev.rms_norm(&x, 2, 3, 1, &w, 2, 1e-6, &mut out).expect("a window");
}

#[test]
fn add_rms_norm_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let (mut r, d, w, mut out) = (buf(dev, 6), buf(dev, 6), buf(dev, 3), buf(dev, 6));
    assert!(dev.add_rms_norm(&mut buf(dev, 5), &d, 2, 3, &w, 1e-6, &mut out).is_err(), "residual too short");
    assert!(dev.add_rms_norm(&mut r, &buf(dev, 5), 2, 3, &w, 1e-6, &mut out).is_err(), "delta too short");
    assert!(dev.add_rms_norm(&mut r, &d, 2, 3, &buf(dev, 2), 1e-6, &mut out).is_err(), "weight too short");
    assert!(dev.add_rms_norm(&mut r, &d, 2, 3, &w, 1e-6, &mut buf(dev, 5)).is_err(), "out too short");
    assert!(dev.add_rms_norm(&mut r, &d, 2, 0, &w, 1e-6, &mut out).is_err(), "no columns");
    dev.add_rms_norm(&mut r, &d, 0, 3, &w, 1e-6, &mut out).expect("no rows");
}

#[test]
fn layer_norm_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let (mut x, w, b) = (buf(dev, 6), buf(dev, 3), buf(dev, 3));
    assert!(dev.layer_norm(&mut buf(dev, 5), 2, 3, &w, &b, 1e-6).is_err(), "x too short");
    assert!(dev.layer_norm(&mut x, 2, 3, &buf(dev, 2), &b, 1e-6).is_err(), "weight too short");
    assert!(dev.layer_norm(&mut x, 2, 3, &w, &buf(dev, 2), 1e-6).is_err(), "bias too short");
    assert!(dev.layer_norm(&mut x, 2, 0, &w, &b, 1e-6).is_err(), "no columns");
    dev.layer_norm(&mut x, 0, 3, &w, &b, 1e-6).expect("no rows");
}

#[test]
fn rope_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let heads = HeadCols { n_heads: 2, stride: 4, offset: 1, dim: 2 };
    let (mut x, cs) = (buf(dev, 16), buf(dev, 4));
    let il = RopeLayout::Interleaved;
    assert!(dev.rope(&mut buf(dev, 15), 2, 8, heads, &cs, il).is_err(), "x too short");
    assert!(dev.rope(&mut x, 2, 8, heads, &buf(dev, 3), il).is_err(), "cos_sin too short");
    assert!(dev.rope(&mut x, 2, 8, HeadCols { dim: 3, ..heads }, &cs, il).is_err(), "odd rotary dims");
    assert!(dev.rope(&mut x, 2, 8, HeadCols { offset: 3, ..heads }, &cs, il).is_err(), "rotary dims past the head");
    assert!(dev.rope(&mut x, 2, 8, HeadCols { n_heads: 3, ..heads }, &cs, il).is_err(), "heads past the row");
    assert!(dev.rope(&mut x, 2, 8, HeadCols { n_heads: usize::MAX, ..heads }, &cs, il).is_err(), "heads overflow");
    dev.rope(&mut x, 2, 8, HeadCols { n_heads: 0, ..heads }, &cs, RopeLayout::HalfSplit).expect("no heads");
    dev.rope(&mut x, 0, 8, heads, &cs, il).expect("no rows");
}

#[test]
fn elementwise_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let (mut a, x) = (buf(dev, 8), buf(dev, 8));
    assert!(dev.silu_mul(&mut buf(dev, 7), &x, 8).is_err(), "silu_mul: gate too short");
    assert!(dev.silu_mul(&mut a, &buf(dev, 7), 8).is_err(), "silu_mul: up too short");
    assert!(dev.add_assign(&mut buf(dev, 7), &x, 8).is_err(), "add_assign: acc too short");
    assert!(dev.add_assign(&mut a, &buf(dev, 7), 8).is_err(), "add_assign: x too short");
    dev.silu_mul(&mut a, &x, 0).expect("silu_mul: nothing");
    dev.add_assign(&mut a, &x, 0).expect("add_assign: nothing");
}

#[test]
fn fp8_round_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let mut x = buf(dev, 512);
    assert!(dev.fp8_round(&mut x, 2, 257, 257, ScaleFmt::Exact).is_err(), "x too short");
    assert!(dev.fp8_round(&mut x, 2, 256, 0, ScaleFmt::Exact).is_err(), "empty segments");
    assert!(dev.fp8_round(&mut x, 2, 256, 100, ScaleFmt::Ue8m0).is_err(), "segments do not tile the row");
    assert!(dev.fp8_round(&mut x, usize::MAX, 256, 128, ScaleFmt::Exact).is_err(), "rows overflow");
    dev.fp8_round(&mut x, 0, 256, 128, ScaleFmt::Exact).expect("no rows");
}

#[test]
fn hadamard_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let mut x = buf(dev, 512);
    assert!(dev.hadamard(&mut x, 3, 256, 128).is_err(), "x too short");
    assert!(dev.hadamard(&mut x, 2, 256, 0).is_err(), "empty segments");
    assert!(dev.hadamard(&mut x, 2, 240, 48).is_err(), "not a power of two");
    assert!(dev.hadamard(&mut x, 2, 256, 512).is_err(), "segments do not tile the row");
    dev.hadamard(&mut x, 0, 256, 128).expect("no rows");
}

#[test]
fn embedding_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let weight = HostTensor::from_f32("embed", vec![4, 3], &[0.5; 12]);
    let table = dev.load_linear(&HostLinear { weight, scale_inv: None }).expect("table");
    let mut out = buf(dev, 6);
    assert!(dev.embedding(&table, &[1, 4], &mut out).is_err(), "id past the vocabulary");
    assert!(dev.embedding(&table, &[1, 2, 3], &mut out).is_err(), "out too short");
    dev.embedding(&table, &[], &mut out).expect("no ids");
}

#[test]
fn argmax_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let x = buf(dev, 6);
    let mut out = zeros::<u32>(dev, 2);
    assert!(dev.argmax(&x, 3, 3, &mut out).is_err(), "logits too short");
    assert!(dev.argmax(&x, 2, 3, &mut zeros::<u32>(dev, 1)).is_err(), "out too short");
    assert!(dev.argmax(&x, 2, 0, &mut out).is_err(), "no columns");
    dev.argmax(&x, 0, 3, &mut out).expect("no rows");
}

#[test]
fn load_linear_rejects_bad_weights() {
    let Some(dev) = device() else { return };
    let fp8 = |shape: Vec<usize>, codes: usize, scales: Option<usize>| HostLinear {
        weight: HostTensor { name: "w".into(), dtype: DType::F8E4M3, shape, bytes: Bytes::owned(vec![0; codes]) },
        scale_inv: scales.map(|n| vec![1.0; n]),
    };
    assert!(dev.load_linear(&fp8(vec![130, 200], 130 * 200, Some(4))).is_ok(), "2x2 scale blocks");
    assert!(dev.load_linear(&fp8(vec![130, 200], 130 * 200, None)).is_err(), "no scales");
    assert!(dev.load_linear(&fp8(vec![130, 200], 130 * 200, Some(3))).is_err(), "too few scales");
    assert!(dev.load_linear(&fp8(vec![130, 200], 130 * 200 - 1, Some(4))).is_err(), "too few codes");
    assert!(dev.load_linear(&fp8(vec![26_000], 26_000, Some(4))).is_err(), "1-D");
    assert!(dev.load_linear(&fp8(vec![usize::MAX, 2], 0, Some(0))).is_err(), "shape overflows");
    let bf = HostLinear { weight: HostTensor::from_bf16("w", vec![3, 4], &[bf16::ONE; 12]), scale_inv: None };
    let mut short = bf.clone();
    short.weight.shape = vec![4, 4];
    assert!(dev.load_linear(&short).is_err(), "bf16 bytes short of the shape");
    let w = dev.load_linear(&bf).expect("bf16");
    assert_eq!((w.rows(), w.cols(), w.is_fp8()), (3, 4, false));
    let empty = HostLinear { weight: HostTensor::from_f32("w", vec![0, 4], &[]), scale_inv: None };
    dev.load_linear(&empty).expect("no rows");
}

#[test]
fn act_quant_rejects_bad_shapes() {
    let Some(dev) = device() else { return };
    let x = buf(dev, 400);
    let (mut codes, mut scales) = (zeros::<u8>(dev, 400), buf(dev, 4));
    let fmt = ScaleFmt::Exact;
    assert!(dev.act_quant(&x, 2, 201, fmt, &mut codes, &mut scales).is_err(), "x too short");
    assert!(dev.act_quant(&x, 2, 200, fmt, &mut zeros::<u8>(dev, 399), &mut scales).is_err(), "codes too short");
    assert!(dev.act_quant(&x, 2, 200, fmt, &mut codes, &mut buf(dev, 3)).is_err(), "scales too short");
    assert!(dev.act_quant(&x, usize::MAX, 200, fmt, &mut codes, &mut scales).is_err(), "rows overflow");
    dev.act_quant(&x, 0, 200, fmt, &mut codes, &mut scales).expect("no rows");
    dev.act_quant(&x, 2, 0, fmt, &mut codes, &mut scales).expect("no columns");
    dev.act_quant(&x, 2, 200, ScaleFmt::Ue8m0, &mut codes, &mut scales).expect("fits");
}

#[test]
fn gemms_reject_bad_shapes() {
    let Some(dev) = device() else { return };
    // A [3, 200] weight (n = 3, k = 200): FP8 with 1x2 scale blocks, and bf16.
    let fp8 =
        HostLinear { weight: HostTensor::from_e4m3("w", vec![3, 200], vec![0x38; 600]), scale_inv: Some(vec![1.0; 2]) };
    let bf = HostLinear { weight: HostTensor::from_bf16("w", vec![3, 200], &[bf16::ONE; 600]), scale_inv: None };
    let (fp8, bf) = (dev.load_linear(&fp8).expect("fp8"), dev.load_linear(&bf).expect("bf16"));
    let (a, sa, x, mut out) = (zeros::<u8>(dev, 400), buf(dev, 4), upload(dev, &[1.0; 400]), buf(dev, 6));
    assert!(dev.fp8_gemm(&a, &sa, 2, &bf, &mut out).is_err(), "fp8_gemm of a bf16 weight");
    assert!(dev.fp8_gemm(&zeros::<u8>(dev, 399), &sa, 2, &fp8, &mut out).is_err(), "codes too short");
    assert!(dev.fp8_gemm(&a, &buf(dev, 3), 2, &fp8, &mut out).is_err(), "scales too short");
    assert!(dev.fp8_gemm(&a, &sa, 2, &fp8, &mut buf(dev, 5)).is_err(), "out too short");
    assert!(dev.fp8_gemm(&a, &sa, usize::MAX, &fp8, &mut out).is_err(), "rows overflow");
    dev.fp8_gemm(&a, &sa, 2, &fp8, &mut out).expect("fp8_gemm fits");
    for w in [&fp8, &bf] {
        assert!(dev.gemm(&buf(dev, 399), 2, w, &mut out).is_err(), "gemm: x too short");
        assert!(dev.gemm(&x, 2, w, &mut buf(dev, 5)).is_err(), "gemm: out too short");
        for quant in [None, Some(ScaleFmt::Ue8m0)] {
            assert!(dev.linear(&buf(dev, 399), 2, w, quant, &mut out).is_err(), "linear: x too short");
            assert!(dev.linear(&x, 2, w, quant, &mut buf(dev, 5)).is_err(), "linear: out too short");
            assert!(dev.linear(&x, usize::MAX, w, quant, &mut out).is_err(), "linear: rows overflow");
            dev.linear(&x, 0, w, quant, &mut out).expect("linear: no rows");
            dev.linear(&x, 2, w, quant, &mut out).expect("linear fits");
        }
    }
    assert_eq!(download(dev, &out, 6), vec![200.0; 6], "ones times ones over k = 200");
}
