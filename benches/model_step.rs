//! One decode step and one 512-token prefill of the fixture models on the CPU backend, with the
//! f32 KV cache and the FP8 one (`--kv-cache-dtype fp8_e4m3`).

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput};
use flashseek::backend::CpuBackend;
use flashseek::kv_cache::{KvCacheDtype, BLOCK_SIZE};
use flashseek::model::{ActQuant, Logits, Model, SeqInput};

const PREFILL: usize = 512;
/// Cached positions before the benchmarked decode step.
const DECODE_CONTEXT: usize = 512;

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    for (name, kv) in [
        ("tiny-v32", KvCacheDtype::Auto),
        ("tiny-v32-fp8", KvCacheDtype::Auto),
        ("tiny-v32", KvCacheDtype::Fp8E4m3),
        ("tiny-v32-fp8", KvCacheDtype::Fp8E4m3),
    ] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let model = Model::load(CpuBackend::new(), &dir, ActQuant::Fp8).expect("fixture loads");
        let mut model = model.with_kv_cache_dtype(kv).expect("cache dtype");
        let ids = tokens(PREFILL + 1, model.config().vocab_size);
        let mut cache = model.new_cache((PREFILL + 1).div_ceil(BLOCK_SIZE)).unwrap();
        let mut table = Vec::new();
        cache.reserve(&mut table, PREFILL + 1).unwrap();

        let mut g = c.benchmark_group(match kv {
            KvCacheDtype::Auto => format!("model {name}"),
            _ => format!("model {name} kv {kv}"),
        });
        g.throughput(Throughput::Elements(PREFILL as u64));
        g.bench_function(BenchmarkId::new("prefill", PREFILL), |b| {
            b.iter(|| {
                let batch =
                    [SeqInput { tokens: &ids[..PREFILL], start_pos: 0, block_table: &table, logits: Logits::Last }];
                model.forward(&batch, &mut cache).unwrap();
            })
        });
        // The cache now holds the prompt; every iteration decodes the same next position.
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("decode step at context", DECODE_CONTEXT), |b| {
            b.iter(|| {
                let batch = [SeqInput {
                    tokens: &ids[DECODE_CONTEXT..DECODE_CONTEXT + 1],
                    start_pos: DECODE_CONTEXT,
                    block_table: &table,
                    logits: Logits::Last,
                }];
                model.forward(&batch, &mut cache).unwrap();
            })
        });
        g.finish();
    }
    c.final_summary();
}
