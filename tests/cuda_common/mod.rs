//! Shared helpers of the CUDA kernel tests: the GPU (or a skip), seeded random data, device
//! buffers, and the comparator every test reports through.
#![allow(dead_code)]

use std::cell::RefCell;
use std::sync::OnceLock;

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use flashseek::backend::cuda::CudaDevice;
use flashseek::backend::{Backend, CpuBackend, Pages, Queries};
use flashseek::fp8::{ScaleFmt, E4M3_TO_F32};
use flashseek::model::weights::{HostLinear, HostTensor};
use flashseek::tensor::{CacheTensor, IntTensor, Tensor};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// The GPU, opened once for all tests; `None` (after saying why) when there is none to test on.
pub fn device() -> Option<&'static CudaDevice> {
    static DEVICE: OnceLock<Option<CudaDevice>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match CudaDevice::new(0) {
            Ok(d) => Some(d),
            Err(e) if std::env::var("FLASHSEEK_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
                panic!("FLASHSEEK_REQUIRE_GPU=1 but no GPU: {e}")
            }
            Err(e) => {
                eprintln!("skipping the CUDA kernel tests: {e}");
                None
            }
        })
        .as_ref()
}

/// Cases per property test: each is one GPU launch and one CPU call on at most ~300k values.
pub const CASES: u32 = 64;

/// One f32 ulp at 1.0, relative: 2^-23.
pub const ULP: f64 = 1.0 / (1u64 << 23) as f64;

/// Widths: tiny, below and around one block of 256 threads, odd, and DeepSeek's hidden sizes.
pub fn width_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 1usize..8, 4 => 8usize..1200, 1 => Just(1536usize), 1 => Just(7168usize)]
}

pub fn fmt_strategy() -> impl Strategy<Value = ScaleFmt> {
    prop_oneof![Just(ScaleFmt::Exact), Just(ScaleFmt::Ue8m0)]
}

/// SplitMix64: the test data, from the seed proptest draws.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn values(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }

    /// Values in `[lo, hi)` with, about one in `1 / rate`, a NaN, an infinity or a signed zero.
    pub fn with_specials(&mut self, n: usize, lo: f32, hi: f32, rate: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                if self.range(0.0, 1.0) < rate {
                    [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0][self.below(5)]
                } else {
                    self.range(lo, hi)
                }
            })
            .collect()
    }

    /// Rows of values whose magnitudes differ by row (2^-20 .. 2^12): FP8 scales from the
    /// 1e-4 floor to large, and the e4m3 subnormals.
    pub fn magnitudes(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let mut x = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            let scale = 2f32.powi(self.below(33) as i32 - 20);
            x.extend((0..cols).map(|_| self.range(-1.0, 1.0) * scale));
        }
        x
    }
}

pub fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Tensor<CpuBackend> {
    Tensor::<CpuBackend>::from_vec(rows, cols, data).expect("cpu tensor")
}

/// An f32 cache of the CPU backend.
pub fn cache_f32(rows: usize, cols: usize, data: Vec<f32>) -> CacheTensor<CpuBackend> {
    CacheTensor::from_f32(rows, cols, data).expect("cpu cache")
}

/// One `indexer_topk` call over an f32 key cache, for the CPU and the simple CUDA kernel alike.
pub struct IndexerCall<'a> {
    pub q: &'a [f32],
    pub weights: &'a [f32],
    pub rows: usize,
    pub heads: usize,
    pub dim: usize,
    pub weight_scale: f32,
    pub cache: &'a [f32],
    pub cache_rows: usize,
    pub queries: Queries<'a>,
    pub pages: Pages<'a>,
    pub k: usize,
}

/// The CPU backend's `indexer_topk` of `c`.
pub fn cpu_indexer_topk(c: &IndexerCall) -> flashseek::Result<Vec<i32>> {
    let mut out = IntTensor::<CpuBackend>::from_vec(c.rows, c.k, vec![0; c.rows * c.k])?;
    CpuBackend::new().indexer_topk(
        &tensor(c.rows, c.heads * c.dim, c.q.to_vec()),
        &tensor(c.rows, c.heads, c.weights.to_vec()),
        c.weight_scale,
        &CacheTensor::from_f32(c.cache_rows, c.dim, c.cache.to_vec())?,
        c.queries,
        c.pages,
        &mut out,
    )?;
    Ok(out.data().to_vec())
}

/// The simple CUDA kernels' `indexer_topk` of `c`.
pub fn gpu_indexer_topk(dev: &CudaDevice, c: &IndexerCall) -> flashseek::Result<Vec<i32>> {
    let (q, w, cache) = (upload(dev, c.q), upload(dev, c.weights), upload(dev, c.cache));
    let mut out = zeros::<i32>(dev, c.rows * c.k);
    dev.indexer_topk(
        &q,
        c.rows,
        &w,
        c.heads,
        c.weight_scale,
        &cache,
        c.cache_rows,
        c.dim,
        c.queries,
        c.pages,
        &mut out,
        c.k,
    )?;
    Ok(download(dev, &out, c.rows * c.k))
}

// The driver refuses to allocate 0 bytes, and random shapes are sometimes empty: such buffers
// get one value, which the launchers (checking only that buffers are long enough) ignore.

pub fn upload(dev: &CudaDevice, data: &[f32]) -> CudaSlice<f32> {
    dev.upload(if data.is_empty() { &[0.0] } else { data }).expect("upload")
}

pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(dev: &CudaDevice, n: usize) -> CudaSlice<T> {
    dev.zeros(n.max(1)).expect("alloc")
}

/// The first `n` values of `buf`.
pub fn download<T: DeviceRepr>(dev: &CudaDevice, buf: &CudaSlice<T>, n: usize) -> Vec<T> {
    let mut v = dev.download(buf).expect("download (or a kernel fault)");
    v.truncate(n);
    v
}

/// The worst relative error a test met, and where; printed when the test ends.
#[derive(Default)]
pub struct Worst {
    pub rel: f64,
    pub at: String,
    pub cases: usize,
    pub values: usize,
    pub nonfinite: usize,
}

impl Worst {
    pub fn print(&self, op: &str) {
        eprintln!(
            "{op}: {} cases, {} values ({} NaN/inf, positions matched), worst relative error {:e}{}",
            self.cases,
            self.values,
            self.nonfinite,
            self.rel,
            if self.at.is_empty() { String::new() } else { format!(" at {}", self.at) }
        );
    }
}

/// Compares the GPU's `got` with the CPU's `want` (rows of `cols`): NaN and infinity positions
/// must match; where `bound(i)` is 0 the bits must match (so -0 and +0 differ), elsewhere
/// `|got - want| <= bound(i)`.
pub fn compare(
    op: &str,
    shape: &str,
    cols: usize,
    got: &[f32],
    want: &[f32],
    bound: impl Fn(usize) -> f64,
    worst: &RefCell<Worst>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{} {}: lengths", op, shape);
    let cols = cols.max(1);
    let mut w = worst.borrow_mut();
    w.cases += 1;
    w.values += want.len();
    for (i, (&g, &c)) in got.iter().zip(want).enumerate() {
        let at = || format!("{shape} row {} col {}", i / cols, i % cols);
        if !c.is_finite() || !g.is_finite() {
            w.nonfinite += 1;
            let same = (c.is_nan() && g.is_nan()) || g == c;
            prop_assert!(same, "{op} {}: gpu {g} cpu {c}: NaN/inf positions differ", at());
            continue;
        }
        let b = bound(i);
        let err = (f64::from(g) - f64::from(c)).abs();
        if b == 0.0 {
            prop_assert!(g.to_bits() == c.to_bits(), "{op} {}: gpu {g:e} cpu {c:e}: not bit-exact", at());
        } else {
            prop_assert!(err <= b, "{op} {}: gpu {g:e} cpu {c:e} (err {err:e} > bound {b:e})", at());
        }
        let rel = if c == 0.0 { err } else { err / f64::from(c).abs() };
        if rel > w.rel {
            w.rel = rel;
            w.at = at();
        }
    }
    Ok(())
}

pub fn run<S: Strategy>(op: &str, strategy: S, test: impl Fn(S::Value, &RefCell<Worst>) -> Result<(), TestCaseError>) {
    let worst = RefCell::new(Worst::default());
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    if let Err(e) = runner.run(&strategy, |v| test(v, &worst)) {
        panic!("{op}: GPU and CPU differ: {e}");
    }
    worst.borrow().print(op);
}

/// The formats a linear weight arrives in.
#[derive(Debug, Clone, Copy)]
pub enum WeightFmt {
    F32,
    Bf16,
    F16,
    Fp8,
}

/// A random `[n, k]` weight of `fmt`, and its values as both backends multiply them: FP8 ones are
/// code times block scale rounded to f32 (the CPU's `decode_e4m3`, the GPU's plain GEMM).
pub fn random_linear(rng: &mut Rng, fmt: WeightFmt, n: usize, k: usize) -> (HostLinear, Vec<f32>) {
    let shape = vec![n, k];
    match fmt {
        WeightFmt::F32 => {
            let v = rng.values(n * k, -1.0, 1.0);
            (HostLinear { weight: HostTensor::from_f32("w", shape, &v), scale_inv: None }, v)
        }
        WeightFmt::Bf16 => {
            let v: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(rng.range(-1.0, 1.0))).collect();
            let values = v.iter().map(|b| b.to_f32()).collect();
            (HostLinear { weight: HostTensor::from_bf16("w", shape, &v), scale_inv: None }, values)
        }
        WeightFmt::F16 => {
            let v: Vec<f16> = (0..n * k).map(|_| f16::from_f32(rng.range(-1.0, 1.0))).collect();
            let values = v.iter().map(|h| h.to_f32()).collect();
            (HostLinear { weight: HostTensor::from_f16("w", shape, &v), scale_inv: None }, values)
        }
        // A NaN weight makes its whole output column NaN: one NaN code in 4096 is plenty.
        WeightFmt::Fp8 => random_fp8_linear(rng, n, k, 4096),
    }
}

/// A random `[n, k]` FP8 weight with block scales of the magnitude of real `weight_scale_inv`s,
/// and its values as both backends multiply them (code times block scale, rounded to f32).
/// Every code is drawn, the NaN ones (0x7f, 0xff) kept only one time in `nan_odds` (never
/// where it is 0).
pub fn random_fp8_linear(rng: &mut Rng, n: usize, k: usize, nan_odds: usize) -> (HostLinear, Vec<f32>) {
    let codes: Vec<u8> = (0..n * k)
        .map(|_| {
            let c = (rng.next_u64() >> 56) as u8;
            if c & 0x7f == 0x7f && (nan_odds == 0 || rng.below(nan_odds) != 0) {
                c ^ 1
            } else {
                c
            }
        })
        .collect();
    let kb = k.div_ceil(128);
    let scales: Vec<f32> = (0..n.div_ceil(128) * kb).map(|_| 2f32.powf(rng.range(-14.0, -6.0))).collect();
    let values = codes
        .iter()
        .enumerate()
        .map(|(i, &c)| E4M3_TO_F32[c as usize] * scales[i / k / 128 * kb + i % k / 128])
        .collect();
    (HostLinear { weight: HostTensor::from_e4m3("w", vec![n, k], codes), scale_inv: Some(scales) }, values)
}

/// `Σ_k |x[i, k]| · |w[j, k]|` in f64 for every output (i, j): the scale of a dot product's
/// rounding errors.
pub fn abs_dots(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut p = vec![0.0; m * n];
    if k == 0 {
        return p;
    }
    for (xr, pr) in x.chunks(k).zip(p.chunks_mut(n)) {
        for (wr, pv) in w.chunks(k).zip(pr.iter_mut()) {
            *pv = xr.iter().zip(wr).map(|(&a, &b)| f64::from(a.abs()) * f64::from(b.abs())).sum();
        }
    }
    p
}

/// How far the GPU's GEMM may be from the CPU's, for an output whose products have absolute sum
/// `p` (computed from the values both sides multiply: activations as rounded through e4m3 where
/// quantized, weights as dequantized to f32), with u = 2^-24 the unit roundoff and k columns in
/// `kb = ceil(k / 128)` blocks. Summing k products in any order, with or without FMAs, errs by at
/// most γ_k·p, γ_k = k·u / (1 - k·u) (Higham, Accuracy and Stability of Numerical Algorithms,
/// 3.1), so that is the CPU's error whatever loop it takes (row dots, `gemm`, `dot_e4m3`), plus
/// at most 2u·p where it first rounds code times scale to f32 for activations and weights. The
/// GPU's plain GEMM sums the same f32 products: γ_k·p. Its FP8 GEMM multiplies codes exactly,
/// sums at most 128 of them per block (γ_128), multiplies by two scales (2u) and sums kb blocks
/// (γ_kb): (130 + kb)·u·p to first order; `dot_e4m3` (the CPU's single-row FP8 path) is
/// bounded alike. In all, |gpu - cpu| <= (2k + kb + 132)·u·p to first order, below
/// (k + kb + 132)·2^-23·p; the factor 1.01 covers the second-order terms (k·u < 2^-11 here),
/// and one f32 MIN_POSITIVE keeps the bound positive where p is 0 (a -0 against a +0).
pub fn gemm_bound(p: f64, k: usize) -> f64 {
    (k + k.div_ceil(128) + 132) as f64 * ULP * p * 1.01 + f64::from(f32::MIN_POSITIVE)
}

/// [`gemm_bound`] for the Hopper FP8 GEMMs (`fp8_gemm_fast`, the grouped experts' wgmma), which
/// `linear` and `moe_experts` take for quantized FP8 products where k is a multiple of 16. Their
/// tensor core sums each 128-block of exact e4m3 products in an accumulator narrower than f32:
/// DeepSeek-V3's report (section 3.3.2) measured about 14 bits kept on H800, which is why the
/// kernels promote each block's sum into f32 (the promotion is bounded by `gemm_bound`'s block
/// terms). Modelled pessimistically: each of a block's four k32 wgmma aligns its 32 products and
/// the running sum to the largest of them and keeps 13 bits below it (truncating), so it errs by
/// at most 33·2^-13 of the block's Σ|a·b| so far, and the block by 4·33·2^-13 < 2^-6 of its
/// Σ|a·b|; scaled and summed over blocks, 2^-6·p. Not documented by NVIDIA: the tests print the
/// worst relative error they meet, from which the first GPU run can tighten this.
pub fn wgmma_bound(p: f64, k: usize) -> f64 {
    gemm_bound(p, k) + p / 64.0
}
