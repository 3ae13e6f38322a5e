//! The engine directly (no HTTP): preemption when the KV pool runs dry, prefix caching, stop
//! conditions, and that neither changes what a greedy request produces.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use flashseek::backend::CpuBackend;
use flashseek::engine::{self, EngineConfig, EngineHandle, FinishReason, Finished, Request, SamplingParams};
use flashseek::kv_cache::KvCacheDtype;
use flashseek::metrics::Metrics;
use flashseek::model::{ActQuant, Model};
use flashseek::tokenizer::Tokenizer;

fn engine(max_total_tokens: usize, max_running: usize) -> (EngineHandle, Arc<Metrics>) {
    engine_with(max_total_tokens, max_running, KvCacheDtype::Auto)
}

fn engine_with(max_total_tokens: usize, max_running: usize, kv: KvCacheDtype) -> (EngineHandle, Arc<Metrics>) {
    let dir = common::fixture("tiny-v32");
    let tokenizer = Arc::new(Tokenizer::from_dir(&dir).expect("tokenizer"));
    let config = EngineConfig {
        max_running,
        chunked_prefill_size: 96,
        max_total_tokens: Some(max_total_tokens),
        context_length: Some(max_total_tokens),
        ..EngineConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let load = move || Model::load(CpuBackend::batch_invariant(), &dir, ActQuant::Fp8)?.with_kv_cache_dtype(kv);
    (engine::start(load, tokenizer, config, Arc::clone(&metrics)).expect("engine"), metrics)
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (seed * 7919 + i * 104_729) % 2000 + 20).collect()
}

fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams { max_new_tokens, temperature: 0.0, ignore_eos: true, ..SamplingParams::default() }
}

/// Runs the requests together; per request its tokens, text and end.
fn run(e: &EngineHandle, requests: Vec<Request>) -> Vec<(Vec<u32>, String, Finished)> {
    let n = requests.len();
    let stream = e.submit(requests).expect("submit");
    let mut out: Vec<(Vec<u32>, String, Option<Finished>)> = vec![(Vec::new(), String::new(), None); n];
    while let Some((i, o)) = stream.recv() {
        out[i].0.extend(&o.token_ids);
        out[i].1.push_str(&o.text);
        if let Some(f) = o.finished {
            assert!(out[i].2.is_none(), "request {i} finished twice");
            out[i].2 = Some(f);
        }
    }
    out.into_iter().map(|(t, s, f)| (t, s, f.expect("every request finishes"))).collect()
}

#[test]
fn preempted_sequences_finish_with_the_tokens_they_get_alone() {
    // 8 blocks of 64 for 6 requests of 60 + 150 tokens (4 blocks each): they cannot all hold theirs.
    let requests: Vec<Request> = (0..6).map(|i| Request { prompt: prompt(i, 60), params: greedy(150) }).collect();
    let (big, _) = engine(16 * 64, 16);
    let alone: Vec<Vec<u32>> = requests.iter().map(|r| run(&big, vec![r.clone()]).remove(0).0).collect();
    let (small, metrics) = engine(8 * 64, 16);
    let together = run(&small, requests);
    assert!(metrics.preemptions.load(Ordering::Relaxed) > 0, "the pool was large enough: nothing preempted");
    for (i, ((tokens, _, f), want)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(f.reason, FinishReason::Length, "request {i}");
        assert_eq!(f.completion_tokens, 150);
        assert_eq!(tokens, want, "request {i} changed under preemption");
    }
}

/// The FP8 KV cache serves requests, and a greedy request gets the same tokens alone as batched
/// and preempted with others (its rows are quantized and read the same way in any batch). Its
/// positions take the bytes `kv_layout` says: per layer a 272-byte latent token (128 e4m3 + one
/// f32 scale, padded to 144, + 64 bf16) and a 132-byte index key (128 e4m3 + one f32 scale),
/// against (192 + 128) f32 values.
#[test]
fn the_fp8_cache_serves_requests_the_same_alone_and_batched() {
    let requests: Vec<Request> = (0..4).map(|i| Request { prompt: prompt(i + 10, 70), params: greedy(90) }).collect();
    let (big, _) = engine_with(16 * 64, 16, KvCacheDtype::Fp8E4m3);
    let info = big.info();
    assert_eq!(info.kv_cache_dtype, KvCacheDtype::Fp8E4m3);
    assert_eq!(info.kv_bytes_per_token, 3 * (272 + 132));
    assert_eq!(engine(64, 1).0.info().kv_bytes_per_token, 3 * 4 * (192 + 128));
    let alone: Vec<Vec<u32>> = requests.iter().map(|r| run(&big, vec![r.clone()]).remove(0).0).collect();
    let (small, metrics) = engine_with(5 * 64, 16, KvCacheDtype::Fp8E4m3);
    let together = run(&small, requests);
    assert!(metrics.preemptions.load(Ordering::Relaxed) > 0, "the pool was large enough: nothing preempted");
    for (i, ((tokens, _, f), want)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(f.reason, FinishReason::Length, "request {i}");
        assert_eq!(tokens, want, "request {i} changed when batched");
    }
}

#[test]
fn a_repeated_prefix_comes_from_the_cache() {
    let (e, metrics) = engine(32 * 64, 8);
    let system = prompt(99, 200);
    let ask = |tail: u32| {
        let mut p = system.clone();
        p.extend(prompt(tail, 10));
        Request { prompt: p, params: greedy(8) }
    };
    let first = run(&e, vec![ask(1)]).remove(0);
    assert_eq!(first.2.cached_tokens, 0);
    let again = run(&e, vec![ask(1)]).remove(0);
    // 210 tokens: the three full blocks of 64 are reused.
    assert_eq!(again.2.cached_tokens, 192);
    assert_eq!(again.0, first.0, "a cached prefix changed the output");
    let other = run(&e, vec![ask(2)]).remove(0);
    assert_eq!(other.2.cached_tokens, 192, "the shared system prompt is reused");
    assert_eq!(metrics.cached_tokens.load(Ordering::Relaxed), 384);
}

#[test]
fn stop_conditions_end_sequences() {
    let (e, _) = engine(16 * 64, 8);
    let p = prompt(5, 30);
    let (tokens, text, _) = run(&e, vec![Request { prompt: p.clone(), params: greedy(20) }]).remove(0);
    // A stop token: generation ends on it, and it is counted but not in the text.
    let stop_id = tokens[5];
    let first = tokens.iter().position(|&t| t == stop_id).unwrap();
    let params = SamplingParams { stop_token_ids: vec![stop_id], ..greedy(20) };
    let (t, _, f) = run(&e, vec![Request { prompt: p.clone(), params }]).remove(0);
    assert_eq!(f.reason, FinishReason::StopToken(stop_id));
    assert_eq!(t, tokens[..=first].to_vec());
    // A stop string cut from the middle of the text.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let params = SamplingParams { stop: vec![stop.clone()], ..greedy(20) };
    let (_, cut, f) = run(&e, vec![Request { prompt: p, params }]).remove(0);
    assert_eq!(f.reason, FinishReason::StopString(stop.clone()));
    assert_eq!(cut, text[..text.find(&stop).unwrap()]);
}

#[test]
fn requests_beyond_the_context_or_vocabulary_are_refused() {
    let (e, _) = engine(4 * 64, 4);
    let too_long = Request { prompt: prompt(1, 200), params: greedy(100) };
    assert!(e.submit(vec![too_long]).is_err());
    let bad_id = Request { prompt: vec![1, 2, 5000], params: greedy(4) };
    assert!(e.submit(vec![bad_id]).is_err());
    let empty = Request { prompt: Vec::new(), params: greedy(4) };
    assert!(e.submit(vec![empty]).is_err());
    let bad_temp = Request { prompt: vec![3, 4], params: SamplingParams { temperature: f32::NAN, ..greedy(4) } };
    assert!(e.submit(vec![bad_temp]).is_err());
    // Still serving.
    let ok = run(&e, vec![Request { prompt: vec![3, 4, 5], params: greedy(3) }]);
    assert_eq!(ok[0].2.completion_tokens, 3);
}
