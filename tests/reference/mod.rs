//! Naive references for the kernel proptests (`tests/kernels_*.rs`), and the seeded input
//! generators and the proptest driver those tests share.
//!
//! Every reference is a plain loop in f64 that follows the math of the `Backend` docs and of
//! DeepSeek's reference code (`inference/model.py`, `kernel.py`), written from that math and not
//! from the CPU kernels: no tiling, no SIMD, no reuse of `flashseek` arithmetic.
//!
//! FP8: the reference rounds to e4m3 by enumerating the e4m3fn codes with its own decoder and
//! taking the nearest value (ties to the even code). It never calls `flashseek::fp8`, so the
//! GEMM, MoE and `fp8_round` references do not depend on the kernel's rounding at all;
//! `kernels_fp8.rs` proves the two roundings bit-equal. Where DeepSeek computes in f32 (the
//! activation scale `max(amax, 1e-4) * (1/448)`, `x / s`, the dequantized `q * s`) the reference
//! does the same f32 operation, so that FP8 round trips can be compared bit for bit.
#![allow(dead_code)]
// Plain index loops are the point of a naive reference.
#![allow(clippy::needless_range_loop)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::OnceLock;

use flashseek::backend::{HeadCols, MlaDims, PrefillSeq, RopeLayout, RouterParams};
use flashseek::fp8::ScaleFmt;
use flashseek::kv_cache::BLOCK_SIZE;
use flashseek::model::weights::{HostLinear, HostTensor};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};

use crate::common::Report;

/// DeepSeek's FP8 block: activations in 1x128 groups, weights in 128x128 blocks.
pub const BLOCK: usize = 128;

// ---------------------------------------------------------------------------------------------
// Driver: proptest with a per-test record of the worst errors seen.
// ---------------------------------------------------------------------------------------------

/// The worst comparison seen per label over all cases of one test, printed at its end.
#[derive(Default)]
pub struct Tracker {
    worst: RefCell<BTreeMap<String, (f64, String)>>,
    notes: RefCell<BTreeMap<String, u64>>,
}

impl Tracker {
    /// Keeps `r` if its largest per-row relative error is the worst seen under `label`.
    pub fn record(&self, label: &str, r: &Report) {
        let mut w = self.worst.borrow_mut();
        let e = w.entry(label.to_string()).or_insert((-1.0, String::new()));
        if r.max_rel() > e.0 {
            *e = (r.max_rel(), r.to_string());
        }
    }

    /// Keeps a free-form worst value (for comparisons that are not a `Report`).
    pub fn record_value(&self, label: &str, v: f64, text: String) {
        let mut w = self.worst.borrow_mut();
        let e = w.entry(label.to_string()).or_insert((-1.0, String::new()));
        if v > e.0 {
            *e = (v, text);
        }
    }

    /// Adds `n` to the counter `label` (printed at the end).
    pub fn count(&self, label: &str, n: u64) {
        *self.notes.borrow_mut().entry(label.to_string()).or_insert(0) += n;
    }

    fn print(&self, name: &str, cases: u32) {
        for (label, (_, text)) in self.worst.borrow().iter() {
            println!("[{name}] worst of {cases} cases, {label}: {text}");
        }
        for (label, n) in self.notes.borrow().iter() {
            println!("[{name}] {label}: {n}");
        }
    }
}

/// Runs `test` on `cases` values of `strategy` (no regression files are written) and prints
/// the worst errors it recorded. Panics with proptest's minimal failing input on failure.
pub fn run<S>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value, &Tracker) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 200, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let tracker = Tracker::default();
    let result = runner.run(&strategy, |v| test(v, &tracker));
    tracker.print(name, cases);
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Like `common::assert_close`, but for sums that may cancel: row `i` passes when
/// `‖got_i − want_i‖ ≤ tol · ‖mag_i‖`, where `mag` is the same computation on absolute values
/// (`Σ|x|·|w|`), the scale f32 rounding errors are proportional to. Where nothing cancels this is
/// the per-row relative error. Returns the comparator's report and the worst normalized error.
pub fn assert_close_to_magnitude(
    what: &str,
    got: &[f32],
    want: &[f64],
    mag: &[f64],
    cols: usize,
    tol: f64,
) -> (Report, f64) {
    let r = crate::common::compare(got, want, cols);
    assert!(r.nonfinite_mismatch.is_empty(), "{what}: NaN/inf positions differ: {r}");
    let mut worst: f64 = 0.0;
    for (i, ((g, w), m)) in got.chunks(cols).zip(want.chunks(cols)).zip(mag.chunks(cols)).enumerate() {
        let err = g.iter().zip(w).map(|(&g, &w)| (f64::from(g) - w).powi(2)).sum::<f64>().sqrt();
        let norm = m.iter().map(|m| m * m).sum::<f64>().sqrt();
        let e = if norm == 0.0 { err } else { err / norm };
        assert!(
            e <= tol,
            "{what}: row {i} error {err:.3e} is {e:.3e} of its magnitude {norm:.3e}: {r} (tolerance {tol:e})"
        );
        worst = worst.max(e);
    }
    (r, worst)
}

// ---------------------------------------------------------------------------------------------
// A seeded generator for test data (proptest draws shapes and a seed; the data comes from here).
// ---------------------------------------------------------------------------------------------

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// Activations: normal values, each row with its own magnitude (2^-6 .. 2^6), some
    /// 128-groups louder than the rest, the odd outlier and the odd all-zero row.
    pub fn activations(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let mut x = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            if rows > 1 && self.chance(0.05) {
                x.extend(std::iter::repeat_n(0.0, cols));
                continue;
            }
            let row_scale = 2f64.powf(self.range(-6.0, 6.0));
            let groups: Vec<f64> = (0..cols.div_ceil(BLOCK)).map(|_| 2f64.powf(self.range(-3.0, 3.0))).collect();
            for c in 0..cols {
                let mut v = self.normal() * row_scale * groups[c / BLOCK];
                if self.chance(0.01) {
                    v *= 30.0;
                }
                x.push(v as f32);
            }
        }
        x
    }
}

// ---------------------------------------------------------------------------------------------
// FP8 e4m3fn
// ---------------------------------------------------------------------------------------------

/// Largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;

/// The value of an e4m3fn code: sign bit, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0
/// is subnormal (`man/8 · 2^-6`); no infinities, `S.1111.111` is NaN (`None`).
pub fn e4m3_value(code: u8) -> Option<f64> {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((code >> 3) & 0xf);
    let man = f64::from(code & 0x7);
    if exp == 15 && man == 7.0 {
        return None;
    }
    let mag = if exp == 0 { man / 8.0 * 2f64.powi(-6) } else { (1.0 + man / 8.0) * 2f64.powi(exp - 7) };
    Some(sign * mag)
}

/// The non-negative finite codes and their values.
fn positive_codes() -> &'static [(u8, f64)] {
    static CODES: OnceLock<Vec<(u8, f64)>> = OnceLock::new();
    CODES.get_or_init(|| (0u8..0x80).filter_map(|c| e4m3_value(c).map(|v| (c, v))).collect())
}

/// The e4m3fn code nearest to `|x|` (ties to the even code), for `|x| <= 448`.
pub fn e4m3_code_of_magnitude(x: f32) -> u8 {
    let a = f64::from(x).abs();
    let mut best = (0u8, f64::INFINITY);
    for &(code, v) in positive_codes() {
        let d = (v - a).abs();
        if d < best.1 || (d == best.1 && code % 2 == 0) {
            best = (code, d);
        }
    }
    best.0
}

/// `x` (within ±448) rounded to the nearest e4m3fn value, ties to even, sign kept (so a small
/// negative value rounds to -0).
pub fn round_e4m3(x: f32) -> f32 {
    let v = e4m3_value(e4m3_code_of_magnitude(x)).expect("finite code") as f32;
    v.copysign(x)
}

/// DeepSeek's activation scale for a group with absolute maximum `amax`:
/// `max(amax, 1e-4) * (1/448)` in f32; for ue8m0 the smallest power of two at least that.
pub fn act_scale(amax: f32, fmt: ScaleFmt) -> f32 {
    let s = amax.max(1e-4) * (1.0f32 / 448.0);
    match fmt {
        ScaleFmt::Exact => s,
        ScaleFmt::Ue8m0 => {
            let s = f64::from(s);
            let mut p = 1.0f64;
            while p < s {
                p *= 2.0;
            }
            while p / 2.0 >= s {
                p /= 2.0;
            }
            p as f32
        }
    }
}

/// DeepSeek's `act_quant` of one row in groups of `group` from the left (the last may be
/// partial): the e4m3 values `q = e4m3(clamp(x / s, ±448))` and one scale `s` per group.
pub fn act_quant(row: &[f32], group: usize, fmt: ScaleFmt) -> (Vec<f32>, Vec<f32>) {
    let mut q = Vec::with_capacity(row.len());
    let mut scales = Vec::new();
    for g in row.chunks(group) {
        let amax = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = act_scale(amax, fmt);
        scales.push(s);
        for &v in g {
            q.push(round_e4m3((v / s).clamp(-E4M3_MAX, E4M3_MAX)));
        }
    }
    (q, scales)
}

/// `row` rounded through e4m3 and back (`q * s` in f32), as an FP8 consumer sees it.
pub fn round_trip(row: &[f32], group: usize, fmt: ScaleFmt) -> Vec<f32> {
    let (q, s) = act_quant(row, group, fmt);
    q.iter().enumerate().map(|(i, &q)| q * s[i / group]).collect()
}

/// Whether the quantization of `row` is ill-conditioned: moving any input (or a group's
/// amax) by a relative `rel` would change a code or a ue8m0 scale. A kernel that computes `row`
/// with a slightly different rounding may quantize such a row differently.
pub fn quant_is_fragile(row: &[f32], group: usize, fmt: ScaleFmt, rel: f64) -> bool {
    for g in row.chunks(group) {
        let amax = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let lo = act_scale((f64::from(amax) * (1.0 - rel)) as f32, fmt);
        let hi = act_scale((f64::from(amax) * (1.0 + rel)) as f32, fmt);
        if fmt == ScaleFmt::Ue8m0 && lo != hi {
            return true;
        }
        let s = f64::from(act_scale(amax, fmt));
        for &v in g {
            let y = (f64::from(v) / s).clamp(-448.0, 448.0);
            let a = e4m3_code_of_magnitude((y * (1.0 - 2.0 * rel)) as f32);
            let b = e4m3_code_of_magnitude((y * (1.0 + 2.0 * rel)).clamp(-448.0, 448.0) as f32);
            if a != b {
                return true;
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

/// Weight formats a checkpoint may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WType {
    F32,
    Bf16,
    F16,
    Fp8,
}

pub const WTYPES: [WType; 4] = [WType::F32, WType::Bf16, WType::F16, WType::Fp8];

/// A projection weight `[rows, cols]` as the reference sees it: the stored element values
/// (e4m3 code values for FP8) and, for FP8, one scale per 128x128 block.
#[derive(Debug, Clone)]
pub struct RefLinear {
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f64>,
    pub scale_inv: Option<Vec<f32>>,
}

impl RefLinear {
    /// The block scale of element `(r, c)` (1 without block scales).
    pub fn scale(&self, r: usize, c: usize) -> f64 {
        match &self.scale_inv {
            Some(s) => f64::from(s[(r / BLOCK) * self.cols.div_ceil(BLOCK) + c / BLOCK]),
            None => 1.0,
        }
    }

    /// The same weight with every element's magnitude (block scales are positive).
    pub fn abs(&self) -> RefLinear {
        RefLinear { w: self.w.iter().map(|v| v.abs()).collect(), ..self.clone() }
    }

    /// All elements times their block scales.
    pub fn dequant(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                out[r * self.cols + c] = self.w[r * self.cols + c] * self.scale(r, c);
            }
        }
        out
    }
}

/// bf16 bits as a value: the high half of an f32.
pub fn bf16_value(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

/// IEEE half bits as a value.
pub fn f16_value(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let man = f64::from(bits & 0x3ff);
    let mag = match exp {
        0 => man / 1024.0 * 2f64.powi(-14),
        31 if man == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + man / 1024.0) * 2f64.powi(exp - 15),
    };
    sign * mag
}

/// A random `[rows, cols]` weight of type `t` with values of about `std`: the checkpoint form
/// for the kernel and the reference's view of the same numbers. FP8 blocks get scales spread
/// over a factor of 4, so each block's scale matters.
pub fn gen_linear(rng: &mut Rng, t: WType, rows: usize, cols: usize, std: f64) -> (HostLinear, RefLinear) {
    let n = rows * cols;
    let shape = vec![rows, cols];
    let (weight, w, scale_inv) = match t {
        WType::F32 => {
            let v = rng.normals(n, std);
            (HostTensor::from_f32("w", shape, &v), v.iter().map(|&x| f64::from(x)).collect(), None)
        }
        WType::Bf16 => {
            let v: Vec<half::bf16> = rng.normals(n, std).into_iter().map(half::bf16::from_f32).collect();
            let w = v.iter().map(|b| bf16_value(b.to_bits())).collect();
            (HostTensor::from_bf16("w", shape, &v), w, None)
        }
        WType::F16 => {
            let v: Vec<half::f16> = rng.normals(n, std).into_iter().map(half::f16::from_f32).collect();
            let w = v.iter().map(|b| f16_value(b.to_bits())).collect();
            (HostTensor::from_f16("w", shape, &v), w, None)
        }
        WType::Fp8 => {
            // Codes mostly of moderate size (as real weights are), some anywhere in the range.
            let codes: Vec<u8> = (0..n)
                .map(|_| loop {
                    let c = if rng.chance(0.8) {
                        let v = (rng.normal().abs() * 64.0).min(448.0) as f32;
                        e4m3_code_of_magnitude(v) | if rng.chance(0.5) { 0x80 } else { 0 }
                    } else {
                        rng.next_u64() as u8
                    };
                    if e4m3_value(c).is_some() {
                        break c;
                    }
                })
                .collect();
            let nb = rows.div_ceil(BLOCK) * cols.div_ceil(BLOCK);
            let scales: Vec<f32> = (0..nb).map(|_| (std / 40.0 * 2f64.powf(rng.range(-1.0, 1.0))) as f32).collect();
            let w = codes.iter().map(|&c| e4m3_value(c).expect("finite code")).collect();
            (HostTensor::from_e4m3("w", shape, codes), w, Some(scales))
        }
    };
    (HostLinear { weight, scale_inv: scale_inv.clone() }, RefLinear { rows, cols, w, scale_inv })
}

// ---------------------------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------------------------

/// `out[m, n] = x[m, k] · wᵀ`. With FP8 weights and `quant`, DeepSeek's `fp8_gemm`: each row of
/// `x` quantized per 1x128 group, and per 128-wide K block `(Σ q_x·q_w) · s_x · s_w`.
/// Otherwise the weights are dequantized and `x` is used as is (quant applies to FP8 only).
pub fn linear(x: &[f32], m: usize, w: &RefLinear, quant: Option<ScaleFmt>) -> Vec<f64> {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k);
    let mut out = vec![0.0; m * n];
    match (&w.scale_inv, quant) {
        (Some(_), Some(fmt)) => {
            for i in 0..m {
                let (qx, sx) = act_quant(&x[i * k..(i + 1) * k], BLOCK, fmt);
                for r in 0..n {
                    let mut acc = 0.0;
                    for b in 0..k.div_ceil(BLOCK) {
                        let mut part = 0.0;
                        for c in b * BLOCK..((b + 1) * BLOCK).min(k) {
                            part += f64::from(qx[c]) * w.w[r * k + c];
                        }
                        acc += part * f64::from(sx[b]) * w.scale(r, b * BLOCK);
                    }
                    out[i * n + r] = acc;
                }
            }
        }
        _ => {
            let wd = w.dequant();
            for i in 0..m {
                for r in 0..n {
                    let mut acc = 0.0;
                    for c in 0..k {
                        acc += f64::from(x[i * k + c]) * wd[r * k + c];
                    }
                    out[i * n + r] = acc;
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Norms
// ---------------------------------------------------------------------------------------------

/// `w · x / sqrt(mean(x²) + eps)` over columns `col0..col0 + w.len()` of each row.
pub fn rms_norm(x: &[f32], x_cols: usize, col0: usize, w: &[f32], eps: f32) -> Vec<f64> {
    let n = w.len();
    let mut out = Vec::new();
    for row in x.chunks(x_cols) {
        let seg = &row[col0..col0 + n];
        let ms = seg.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
        let r = 1.0 / (ms + f64::from(eps)).sqrt();
        for (j, &v) in seg.iter().enumerate() {
            out.push(f64::from(w[j]) * f64::from(v) * r);
        }
    }
    out
}

/// `w · (x - mean) / sqrt(var + eps) + b` per row, with the biased variance.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f64> {
    let n = w.len();
    let mut out = Vec::new();
    for row in x.chunks(n) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
        for (j, &v) in row.iter().enumerate() {
            out.push((f64::from(v) - mean) / (var + f64::from(eps)).sqrt() * f64::from(w[j]) + f64::from(b[j]));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------

/// Rotates pair `i` of each head's rotary span by the angle whose cosine and sine are
/// `cos_sin[row][i]` and `cos_sin[row][dim/2 + i]`: interleaved pairs are `(2i, 2i+1)`, half-split
/// pairs `(i, i + dim/2)`. Other columns are copied.
pub fn rope(x: &[f32], cols: usize, heads: HeadCols, cos_sin: &[f32], layout: RopeLayout) -> Vec<f64> {
    let half = heads.dim / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for (r, row) in x.chunks(cols).enumerate() {
        for h in 0..heads.n_heads {
            let base = h * heads.stride + heads.offset;
            for i in 0..half {
                let cos = f64::from(cos_sin[r * heads.dim + i]);
                let sin = f64::from(cos_sin[r * heads.dim + half + i]);
                let (ia, ib) = match layout {
                    RopeLayout::Interleaved => (base + 2 * i, base + 2 * i + 1),
                    RopeLayout::HalfSplit => (base + i, base + half + i),
                };
                let (a, b) = (f64::from(row[ia]), f64::from(row[ib]));
                out[r * cols + ia] = a * cos - b * sin;
                out[r * cols + ib] = a * sin + b * cos;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Small ops
// ---------------------------------------------------------------------------------------------

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// The Sylvester Hadamard matrix: `H_1 = [1]`, `H_2n = [[H, H], [H, -H]]`.
pub fn sylvester(n: usize) -> Vec<Vec<f64>> {
    let mut h = vec![vec![1.0]];
    while h.len() < n {
        let m = h.len();
        let mut next = vec![vec![0.0; 2 * m]; 2 * m];
        for i in 0..m {
            for j in 0..m {
                next[i][j] = h[i][j];
                next[i][j + m] = h[i][j];
                next[i + m][j] = h[i][j];
                next[i + m][j + m] = -h[i][j];
            }
        }
        h = next;
    }
    h
}

/// `H_dim / sqrt(dim)` applied to every `dim`-wide segment.
pub fn hadamard(x: &[f32], dim: usize) -> Vec<f64> {
    let h = sylvester(dim);
    let mut out = Vec::with_capacity(x.len());
    for seg in x.chunks(dim) {
        for row in &h {
            let s: f64 = row.iter().zip(seg).map(|(&a, &b)| a * f64::from(b)).sum();
            out.push(s / (dim as f64).sqrt());
        }
    }
    out
}

/// The first index of each row's maximum.
pub fn argmax(x: &[f32], cols: usize) -> Vec<u32> {
    x.chunks(cols)
        .map(|row| {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            row.iter().position(|&v| v == max).unwrap_or(0) as u32
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// MoE
// ---------------------------------------------------------------------------------------------

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// DeepSeek's `noaux_tc` router for one row: `score = sigmoid(logit)`, `choice = score + bias`;
/// a group's score is the sum of its two best choices; the `topk_group` best groups are kept;
/// the `top_k` experts with the best choice among those are selected; their weights are their
/// scores (normalized by the sum + 1e-20 when `norm_topk_prob`) times `scaling`.
/// Returns `(expert, weight)` sorted by expert.
pub fn route(logits: &[f32], bias: &[f32], p: RouterParams) -> Vec<(usize, f64)> {
    let e = logits.len();
    let per = e / p.n_group;
    let score: Vec<f64> = logits.iter().map(|&l| sigmoid(f64::from(l))).collect();
    let choice: Vec<f64> = (0..e).map(|j| score[j] + f64::from(bias[j])).collect();
    let mut groups: Vec<(f64, usize)> = (0..p.n_group)
        .map(|g| {
            let mut c = choice[g * per..(g + 1) * per].to_vec();
            c.sort_by(|a, b| b.total_cmp(a));
            (c.iter().take(2).sum(), g)
        })
        .collect();
    groups.sort_by(|a, b| b.0.total_cmp(&a.0));
    let kept: Vec<usize> = groups.iter().take(p.topk_group).map(|&(_, g)| g).collect();
    let mut cand: Vec<usize> = (0..e).filter(|j| kept.contains(&(j / per))).collect();
    cand.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]));
    let chosen = &cand[..p.top_k];
    let sum: f64 = chosen.iter().map(|&j| score[j]).sum();
    let mut out: Vec<(usize, f64)> = chosen
        .iter()
        .map(|&j| {
            let w = if p.norm_topk_prob { score[j] / (sum + 1e-20) } else { score[j] };
            (j, w * f64::from(p.scaling))
        })
        .collect();
    out.sort_by_key(|&(j, _)| j);
    out
}

/// Router logits and bias for `rows` rows of `e` experts whose choices are well separated
/// (adjacent choices at least ~0.2/e apart, group scores at least 1e-4 apart), so that the
/// selection does not hinge on rounding. The bias is spread over ±0.3 around 0 or around -0.9
/// (then every choice is negative); each row's choices are a shuffled grid inside
/// `[center + 0.31, center + 0.69]`, so every score `choice - bias` stays in (0.01, 0.99).
pub fn gen_router_inputs(rng: &mut Rng, rows: usize, e: usize, n_group: usize) -> (Vec<f32>, Vec<f32>) {
    let per = e / n_group;
    let center = if rng.chance(0.3) { -0.9 } else { 0.0 };
    // One bias for all rows, as in a checkpoint; rows differ by their logits.
    let bias: Vec<f32> = (0..e).map(|_| (center + rng.range(-0.3, 0.3)) as f32).collect();
    let mut logits = Vec::with_capacity(rows * e);
    for _ in 0..rows {
        loop {
            let mut perm: Vec<usize> = (0..e).collect();
            rng.shuffle(&mut perm);
            let mut row = Vec::with_capacity(e);
            let mut choice = Vec::with_capacity(e);
            for j in 0..e {
                let target = center + 0.31 + 0.38 * (perm[j] as f64 + 0.25 + 0.5 * rng.uniform()) / e as f64;
                let s = target - f64::from(bias[j]);
                assert!(s > 0.005 && s < 0.995, "score {s} out of range");
                let l = (s / (1.0 - s)).ln() as f32;
                row.push(l);
                choice.push(sigmoid(f64::from(l)) + f64::from(bias[j]));
            }
            let mut sorted = choice.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let mut gs: Vec<f64> = (0..n_group)
                .map(|g| {
                    let mut c = choice[g * per..(g + 1) * per].to_vec();
                    c.sort_by(|a, b| b.total_cmp(a));
                    c.iter().take(2).sum()
                })
                .collect();
            gs.sort_by(|a, b| a.total_cmp(b));
            if sorted.windows(2).all(|w| w[1] - w[0] >= 0.1 / e as f64) && gs.windows(2).all(|w| w[1] - w[0] >= 1e-4) {
                logits.extend(row);
                break;
            }
        }
    }
    (logits, bias)
}

/// One routed expert for the reference.
pub struct RefExpert {
    pub gate: RefLinear,
    pub up: RefLinear,
    pub down: RefLinear,
}

/// What the MoE reference returns per token.
pub struct MoeRef {
    /// `out[t] = Σ_j weights[t, j] · down(silu(gate(x_t)) · up(x_t))`, `[T, d]`.
    pub out: Vec<f64>,
    /// The scale of f32 rounding errors in `out` where sums cancel: the same computation on
    /// magnitudes, `Σ_j |w_j| · |down| · m_j` with `m = |h| + |silu'(g)|·(|gate|·|x|)·|u| +
    /// |silu(g)|·(|up|·|x|)` (the first-order error of `h` from rounding in `g` and `u`), plus
    /// 1e-30 for values that underflow in f32.
    pub mag: Vec<f64>,
    /// Per token: whether an FP8 quantization of an intermediate `h_j` is fragile
    /// (`quant_is_fragile` at 1e-5), so an f32 kernel may legitimately round it differently.
    pub fragile: Vec<bool>,
}

/// The routed experts for tokens `x` `[T, d]`: expert `idx[t, j]` with weight `weights[t, j]`,
/// each projection a `linear` (with FP8 activation quantization of its input where asked; the
/// intermediate `h = silu(gate) · up` is an f32 activation, as it is between two kernels).
pub fn moe(
    x: &[f32],
    d: usize,
    experts: &[RefExpert],
    idx: &[i32],
    weights: &[f32],
    k: usize,
    quant: Option<ScaleFmt>,
) -> MoeRef {
    let t = x.len() / d;
    let mut out = vec![0.0; t * d];
    let mut mag = vec![1e-30; t * d];
    let mut fragile = vec![false; t];
    for tok in 0..t {
        let xt = &x[tok * d..(tok + 1) * d];
        let x_abs: Vec<f32> = xt.iter().map(|v| v.abs()).collect();
        for j in 0..k {
            let ex = &experts[idx[tok * k + j] as usize];
            let w = f64::from(weights[tok * k + j]);
            let g = linear(xt, 1, &ex.gate, quant);
            let u = linear(xt, 1, &ex.up, quant);
            let h: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| (silu(g) * u) as f32).collect();
            if let (Some(fmt), true) = (quant, ex.down.scale_inv.is_some()) {
                fragile[tok] |= quant_is_fragile(&h, BLOCK, fmt, 1e-5);
            }
            let y = linear(&h, 1, &ex.down, quant);
            let g_abs = linear(&x_abs, 1, &ex.gate.abs(), None);
            let u_abs = linear(&x_abs, 1, &ex.up.abs(), None);
            let h_mag: Vec<f32> = (0..h.len())
                .map(|i| {
                    let sg = sigmoid(g[i]);
                    let dsilu = (sg * (1.0 + g[i] * (1.0 - sg))).abs();
                    (f64::from(h[i]).abs() + dsilu * g_abs[i] * u[i].abs() + silu(g[i]).abs() * u_abs[i]) as f32
                })
                .collect();
            let y_mag = linear(&h_mag, 1, &ex.down.abs(), None);
            for c in 0..d {
                out[tok * d + c] += w * y[c];
                mag[tok * d + c] += w.abs() * y_mag[c];
            }
        }
    }
    MoeRef { out, mag, fragile }
}

// ---------------------------------------------------------------------------------------------
// Paged caches
// ---------------------------------------------------------------------------------------------

/// The cache row of position `pos` of a sequence with block table `table`.
pub fn slot(table: &[u32], pos: usize) -> usize {
    table[pos / BLOCK_SIZE] as usize * BLOCK_SIZE + pos % BLOCK_SIZE
}

/// Block tables for sequences of `lens` positions over a cache of `num_blocks` blocks: every
/// sequence gets `ceil(len / BLOCK_SIZE)` distinct blocks drawn at random (so neither
/// contiguous nor ordered). Returns the tables and the flat `(blocks, starts)` for `Pages`.
pub fn gen_tables(rng: &mut Rng, lens: &[usize], num_blocks: usize) -> (Vec<Vec<u32>>, Vec<u32>, Vec<u32>) {
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    rng.shuffle(&mut free);
    let mut tables = Vec::new();
    let (mut blocks, mut starts) = (Vec::new(), vec![0u32]);
    for &len in lens {
        let t: Vec<u32> = (0..len.div_ceil(BLOCK_SIZE)).map(|_| free.pop().expect("enough blocks")).collect();
        blocks.extend(&t);
        starts.push(blocks.len() as u32);
        tables.push(t);
    }
    (tables, blocks, starts)
}

/// A paged cache over sequences of `lens` positions in shuffled blocks: row `t` of sequence
/// `s` holds `fill(rng)` (`width` values); every row no sequence holds is NaN, so a kernel that
/// reads one shows it.
pub struct PagedCache {
    pub lens: Vec<usize>,
    pub tables: Vec<Vec<u32>>,
    pub blocks: Vec<u32>,
    pub starts: Vec<u32>,
    pub cache: Vec<f32>,
    pub slots: usize,
    pub width: usize,
}

impl PagedCache {
    pub fn new(rng: &mut Rng, lens: Vec<usize>, width: usize, mut fill: impl FnMut(&mut Rng) -> Vec<f32>) -> Self {
        let used: usize = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).sum();
        let num_blocks = used + rng.below(3);
        let (tables, blocks, starts) = gen_tables(rng, &lens, num_blocks);
        let slots = num_blocks * BLOCK_SIZE;
        let mut cache = vec![f32::NAN; slots * width];
        for (s, &len) in lens.iter().enumerate() {
            for t in 0..len {
                let row = slot(&tables[s], t);
                cache[row * width..(row + 1) * width].copy_from_slice(&fill(rng));
            }
        }
        PagedCache { lens, tables, blocks, starts, cache, slots, width }
    }

    pub fn pages(&self) -> flashseek::backend::Pages<'_> {
        flashseek::backend::Pages { block_size: BLOCK_SIZE, blocks: &self.blocks, starts: &self.starts }
    }

    /// The cached row of position `t` of sequence `seq`.
    pub fn row(&self, seq: usize, t: usize) -> &[f32] {
        let r = slot(&self.tables[seq], t);
        &self.cache[r * self.width..(r + 1) * self.width]
    }
}

// ---------------------------------------------------------------------------------------------
// MLA
// ---------------------------------------------------------------------------------------------

/// One attended position of one head: its score, value, and the magnitudes f32 rounding errors
/// in them scale with (the same sums over absolute values).
struct Attended {
    score: f64,
    score_mag: f64,
    value: Vec<f64>,
    value_mag: Vec<f64>,
}

/// `Σ_t softmax(score)_t · value_t`, and its error magnitude
/// `Σ_t p_t · value_mag_t · (1 + max_t score_mag_t)`: to first order, rounding errors in the
/// values move the output by `Σ p·δv`, and errors in the scores by `Σ p·δs·(v − out)`.
fn attend(items: &[Attended], width: usize) -> (Vec<f64>, Vec<f64>) {
    let max = items.iter().map(|a| a.score).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = items.iter().map(|a| (a.score - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let score_mag = items.iter().map(|a| a.score_mag).fold(0.0, f64::max);
    let mut out = vec![0.0; width];
    let mut mag = vec![0.0; width];
    for (p, a) in e.iter().zip(items) {
        for c in 0..width {
            out[c] += p / sum * a.value[c];
            mag[c] += p / sum * a.value_mag[c] * (1.0 + score_mag);
        }
    }
    (out, mag)
}

/// The positions query row `row` at position `pos` attends to: `0..=pos`, or the entries of its
/// top-k row that are in `0..=pos` (-1 and later positions ignored).
pub fn attended(topk: Option<(&[i32], usize)>, row: usize, pos: usize) -> Vec<usize> {
    match topk {
        None => (0..=pos).collect(),
        Some((idx, k)) => {
            idx[row * k..(row + 1) * k].iter().filter(|&&t| t >= 0 && t as usize <= pos).map(|&t| t as usize).collect()
        }
    }
}

/// Attention outputs and the magnitudes their f32 rounding errors scale with (see `attend`),
/// both row-major.
pub struct AttentionRef {
    pub out: Vec<f64>,
    pub mag: Vec<f64>,
}

/// MLA decode as DeepSeek's model defines it, over EXPANDED keys and values: for query row `i`
/// (sequence `seq[i]`, position `pos[i]`) and head `h`, each attended position `t` has the
/// cached latent `c_t` and rotary key `r_t`; `k_nope = W_k,h · c_t`, `v = W_v,h · c_t` with
/// `W_k,h`, `W_v,h` the rows `h·(nope+v) ..` of `kv_b` (dequantized, `[heads·(nope+v),
/// kv_lora]`); `score = (q_nope · k_nope + q_rope · r_t) · scale`; softmax; `Σ p · v`.
/// Returns `[m, heads·v]`.
#[allow(clippy::too_many_arguments)]
pub fn mla_decode(
    q: &[f32],
    kv_b: &[f64],
    cache: &[f32],
    tables: &[Vec<u32>],
    pos: &[u32],
    seq: &[u32],
    topk: Option<(&[i32], usize)>,
    scale: f32,
    d: MlaDims,
) -> AttentionRef {
    let (qk, lat, kvw) = (d.nope + d.rope, d.kv_lora + d.rope, d.nope + d.v);
    let scale = f64::from(scale);
    let (mut out, mut mag) = (Vec::new(), Vec::new());
    for i in 0..pos.len() {
        let table = &tables[seq[i] as usize];
        let ts = attended(topk, i, pos[i] as usize);
        for h in 0..d.heads {
            let qh = &q[(i * d.heads + h) * qk..(i * d.heads + h + 1) * qk];
            let mut items = Vec::new();
            for &t in &ts {
                let row = &cache[slot(table, t) * lat..(slot(table, t) + 1) * lat];
                let latent = &row[..d.kv_lora];
                // Row r of W_h times the latent, and the same over magnitudes.
                let expand = |r: usize| -> (f64, f64) {
                    let w = &kv_b[(h * kvw + r) * d.kv_lora..(h * kvw + r + 1) * d.kv_lora];
                    let mut sum = 0.0;
                    let mut sum_abs = 0.0;
                    for c in 0..d.kv_lora {
                        sum += w[c] * f64::from(latent[c]);
                        sum_abs += (w[c] * f64::from(latent[c])).abs();
                    }
                    (sum, sum_abs)
                };
                let (mut score, mut score_mag) = (0.0, 0.0);
                for a in 0..d.nope {
                    let (k, k_abs) = expand(a);
                    score += f64::from(qh[a]) * k;
                    score_mag += f64::from(qh[a]).abs() * k_abs;
                }
                for a in 0..d.rope {
                    score += f64::from(qh[d.nope + a]) * f64::from(row[d.kv_lora + a]);
                    score_mag += (f64::from(qh[d.nope + a]) * f64::from(row[d.kv_lora + a])).abs();
                }
                let (value, value_mag) = (0..d.v).map(|a| expand(d.nope + a)).unzip();
                items.push(Attended { score: score * scale, score_mag: score_mag * scale, value, value_mag });
            }
            let (o, m) = attend(&items, d.v);
            out.extend(o);
            mag.extend(m);
        }
    }
    AttentionRef { out, mag }
}

/// Prefill attention over expanded keys/values: sequence `s`'s query row `q_start + j` sits at
/// position `start_pos + j` and attends (causally, or to its top-k row's valid entries) to
/// positions `t` whose key is `[kv[kv_start + t, h, ..nope], kpe[kv_start + t]]` and value
/// `kv[kv_start + t, h, nope..]`. Returns, per row of `out` `[T, heads·v]`, the output and its
/// error magnitude where a sequence covers the row (`None` for the others).
#[allow(clippy::too_many_arguments)]
pub fn mla_prefill(
    q: &[f32],
    kv: &[f32],
    kpe: &[f32],
    seqs: &[PrefillSeq],
    t_rows: usize,
    topk: Option<(&[i32], usize)>,
    scale: f32,
    d: MlaDims,
) -> Vec<Option<(Vec<f64>, Vec<f64>)>> {
    let (qk, kvw) = (d.nope + d.rope, d.nope + d.v);
    let scale = f64::from(scale);
    let mut out = vec![None; t_rows];
    for s in seqs {
        for j in 0..s.q_len {
            let row = s.q_start + j;
            let ts = attended(topk, row, s.start_pos + j);
            let (mut o, mut m) = (Vec::new(), Vec::new());
            for h in 0..d.heads {
                let qh = &q[(row * d.heads + h) * qk..(row * d.heads + h + 1) * qk];
                let mut items = Vec::new();
                for &t in &ts {
                    let r = s.kv_start + t;
                    let kvh = &kv[(r * d.heads + h) * kvw..(r * d.heads + h + 1) * kvw];
                    let key: Vec<f32> =
                        kvh[..d.nope].iter().chain(&kpe[r * d.rope..(r + 1) * d.rope]).cloned().collect();
                    let mut score = 0.0;
                    let mut score_mag = 0.0;
                    for a in 0..qk {
                        score += f64::from(qh[a]) * f64::from(key[a]);
                        score_mag += (f64::from(qh[a]) * f64::from(key[a])).abs();
                    }
                    let value: Vec<f64> = kvh[d.nope..].iter().map(|&v| f64::from(v)).collect();
                    let value_mag = value.iter().map(|v| v.abs()).collect();
                    items.push(Attended { score: score * scale, score_mag: score_mag * scale, value, value_mag });
                }
                let (oh, mh) = attend(&items, d.v);
                o.extend(oh);
                m.extend(mh);
            }
            out[row] = Some((o, m));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Lightning indexer
// ---------------------------------------------------------------------------------------------

/// `score(t) = Σ_h w[h] · weight_scale · ReLU(q_h · k_t)` for positions `0..=pos` of a sequence
/// with block table `table`; `q_row` holds the heads side by side, `cache` rows of `hd`.
pub fn indexer_scores(
    q_row: &[f32],
    w_row: &[f32],
    weight_scale: f32,
    cache: &[f32],
    hd: usize,
    table: &[u32],
    pos: usize,
) -> Vec<f64> {
    (0..=pos)
        .map(|t| {
            let key = &cache[slot(table, t) * hd..(slot(table, t) + 1) * hd];
            w_row
                .iter()
                .enumerate()
                .map(|(h, &w)| {
                    let dot: f64 =
                        q_row[h * hd..(h + 1) * hd].iter().zip(key).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                    f64::from(w) * f64::from(weight_scale) * dot.max(0.0)
                })
                .sum()
        })
        .collect()
}

/// The `k` best positions by (score descending, position ascending), listed ascending and
/// padded with -1.
pub fn topk_positions(scores: &[f64], k: usize) -> Vec<i32> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut best: Vec<i32> = order.into_iter().take(k).map(|t| t as i32).collect();
    best.sort();
    best.resize(k, -1);
    best
}
