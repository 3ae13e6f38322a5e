//! The CPU FP8 block GEMM at DeepSeek-V3's projection shapes (scaled down 4x per dimension to
//! fit a small machine), side by side with the f32 GEMM of the same `gemm` crate on the same
//! shapes. Prints GFLOP/s of both and their ratio at the end.

mod common;

use common::values;
use criterion::{BenchmarkId, Criterion, Throughput};
use flashseek::backend::{Backend, CpuBackend};
use flashseek::fp8::{round_e4m3, ScaleFmt};
use flashseek::model::weights::{blocks, HostLinear, HostTensor};
use flashseek::tensor::Tensor;

/// (name, N, K) of DeepSeek-V3's projections divided by 4: q_a+kv_a, q_b, kv_b, o_proj,
/// an expert's gate+up, an expert's down.
const SHAPES: [(&str, usize, usize); 6] = [
    ("qkv_a 528x1792", 528, 1792),
    ("q_b 6144x384", 6144, 384),
    ("kv_b 8192x128", 8192, 128),
    ("o 1792x4096", 1792, 4096),
    ("up 1024x1792", 1024, 1792),
    ("down 1792x512", 1792, 512),
];
const ROWS: [usize; 3] = [1, 16, 128];

fn fp8_weight(n: usize, k: usize) -> HostLinear {
    let w = values(n * k, 7);
    let codes = w
        .iter()
        .map(|&v| {
            let q = round_e4m3(v * 448.0);
            // Encode by searching the decode table: done once per weight, outside the timing.
            flashseek::fp8::E4M3_TO_F32.iter().position(|&c| c == q).unwrap_or(0) as u8
        })
        .collect();
    HostLinear {
        weight: HostTensor::from_e4m3("w", vec![n, k], codes),
        scale_inv: Some(vec![1.0 / 448.0; blocks(n) * blocks(k)]),
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let b = CpuBackend::new();
    for &(name, n, k) in &SHAPES {
        let fp8 = b.load_linear(&fp8_weight(n, k)).unwrap();
        let f32w = b
            .load_linear(&HostLinear {
                weight: HostTensor::from_f32("w", vec![n, k], &values(n * k, 7)),
                scale_inv: None,
            })
            .unwrap();
        let mut g = c.benchmark_group(format!("gemm {name}"));
        for &m in &ROWS {
            let x = Tensor::<CpuBackend>::from_vec(m, k, values(m * k, 3)).unwrap();
            let mut out = b.zeros(m, n).unwrap();
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(BenchmarkId::new("fp8", m), |bench| {
                bench.iter(|| b.linear(&x, &fp8, Some(ScaleFmt::Ue8m0), &mut out).unwrap())
            });
            g.bench_function(BenchmarkId::new("f32", m), |bench| {
                bench.iter(|| b.linear(&x, &f32w, None, &mut out).unwrap())
            });
        }
        g.finish();
    }
    c.final_summary();
    println!("\n| shape (N x K) | M | FP8 GFLOP/s | f32 GFLOP/s | FP8 / f32 |\n|---|---|---|---|---|");
    for &(name, n, k) in &SHAPES {
        for &m in &ROWS {
            let group = format!("gemm {name}");
            let (Some(t8), Some(t32)) =
                (common::mean_ns(&group, &format!("fp8/{m}")), common::mean_ns(&group, &format!("f32/{m}")))
            else {
                continue;
            };
            let flops = (2 * m * n * k) as f64;
            println!("| {name} | {m} | {:.1} | {:.1} | {:.2} |", flops / t8, flops / t32, t32 / t8);
        }
    }
}
