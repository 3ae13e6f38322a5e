//! The error bound of the Hopper MLA decode over the FP8 latent cache (`decode_fast.cu`), shared
//! by its host emulation (`tests/mla_index_math.rs`) and its GPU test (`tests/cuda_mla_fp8.rs`).
//!
//! Both compare with the exact (f64) softmax attention over the decoded cache: keys and values
//! are what `LatentFp8::decode` gives (the kernel's bf16 tile holds them exactly: e4m3 times a
//! power of two, and bf16 RoPE values). With u = 2^-24, b = 2^-8 (bf16's unit roundoff), l = 576
//! columns, n keys, T tiles of 64 keys (plus the split combine), s_j = scale·(q·k_j) exact,
//! P = max_j |scale|·Σ_d |q_d·k_jd| and A_c = Σ_j π_j·|v_jc| (π the exact softmax):
//! 1. Scores: the query is rounded to bf16 (each column within b of itself), the products are
//!    exact and wgmma sums them in f32; allowing the tensor cores 4× the rounding of an ordered
//!    f32 sum, |ŝ_j - s_j| <= (b + 4(l + 2)u)·P =: δ.
//! 2. The exact softmax of scores off by at most δ is within (e^{2δ} - 1)·A_c of the exact one.
//! 3. From ŝ on: a weight is e^{ŝ_j - m} through ex2.approx (within 8u relative, plus the
//!    rounding of its argument, |ŝ_j - m| <= 2P: 4u·P), once per key and once per rescale
//!    (at most T + 1 in all); the numerator takes it rounded to bf16 (b), the denominator in f32;
//!    the sums meet at most n + 2T + 66 roundings (keys, rescales, the combine's 64 splits) and
//!    the division one. Numerator against denominator: (b + 2(8u + 4uP)(T + 1) + 2(n + 2T + 68)u)
//!    · e^{2δ}·A_c to first order.
//!
//! `gpu` is the sum of 2 and 3; the CPU backend (f32 throughout) is within `cpu` of the exact
//! result (`tests/cuda_mla.rs`'s derivation with its own terms only: (e^{2δ_C} - 1) +
//! e^{2δ_C}(4u + 4uP + 2nu + 2u), δ_C = (l + 2)u·P), and the simple CUDA decode within
//! `simple`: `cpu` plus its distance to the CPU, u·((4l + 16)P + 14n + 159) there. The factor 1.05 covers second-order terms
//! (the tests keep the weights' first-order terms below 2^-5; step 2 is exact in δ), and f32::MIN_POSITIVE keeps a bound
//! positive where A_c is 0.
#![allow(dead_code)]

const U: f64 = 1.0 / (1u64 << 24) as f64;
const B: f64 = 1.0 / 256.0;

/// The exact output of one (query, head) over `keys` (each `l` columns, its first `vdim` the
/// value), and the relative tolerances (of A_c) of the GPU and of the CPU, with A_c per column.
pub struct Reference {
    pub exact: Vec<f64>,
    pub abs_weighted: Vec<f64>,
    pub gpu: f64,
    pub cpu: f64,
    pub simple: f64,
}

pub fn reference(q: &[f32], keys: &[&[f32]], scale: f32, vdim: usize, tile: usize) -> Reference {
    let n = keys.len();
    if n == 0 {
        return Reference { exact: vec![0.0; vdim], abs_weighted: vec![0.0; vdim], gpu: 0.0, cpu: 0.0, simple: 0.0 };
    }
    let scale = f64::from(scale);
    let l = q.len();
    let mut s = Vec::with_capacity(n);
    let mut p = 0.0f64;
    for k in keys {
        let dot: f64 = q.iter().zip(k.iter()).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let abs: f64 = q.iter().zip(k.iter()).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
        s.push(dot * scale);
        p = p.max(abs * scale.abs());
    }
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
    let sum: f64 = w.iter().sum();
    let mut exact = vec![0.0; vdim];
    let mut abs_weighted = vec![0.0; vdim];
    for (wj, k) in w.iter().zip(keys) {
        for c in 0..vdim {
            exact[c] += wj / sum * f64::from(k[c]);
            abs_weighted[c] += wj / sum * f64::from(k[c]).abs();
        }
    }
    let t = n.div_ceil(tile) as f64 + 1.0;
    let delta = (B + 4.0 * (l + 2) as f64 * U) * p;
    let weights = B + 2.0 * (8.0 * U + 4.0 * U * p) * (t + 1.0) + 2.0 * (n as f64 + 2.0 * t + 68.0) * U;
    let gpu = (2.0 * delta).exp_m1() + (2.0 * delta).exp() * weights;
    let delta_c = (l + 2) as f64 * U * p;
    let cpu = (2.0 * delta_c).exp_m1() + (2.0 * delta_c).exp() * (4.0 * U + 4.0 * U * p + 2.0 * n as f64 * U + 2.0 * U);
    let simple = cpu + U * ((4 * l + 16) as f64 * p + (14 * n + 159) as f64);
    assert!(delta < 0.25 && weights < 1.0 / 32.0, "data past the bound's first-order regime: P = {p}");
    Reference { exact, abs_weighted, gpu, cpu, simple }
}

impl Reference {
    /// |got - exact| allowed in column c for a result within `tol` (relative to A_c).
    pub fn bound(&self, c: usize, tol: f64) -> f64 {
        self.abs_weighted[c] * tol * 1.05 + f64::from(f32::MIN_POSITIVE)
    }
}
