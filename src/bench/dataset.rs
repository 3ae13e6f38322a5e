//! Benchmark workloads as SGLang's `bench_serving` builds them: random-length token-id prompts,
//! prompts sampled from a ShareGPT dump, and a Poisson arrival schedule.

use std::path::Path;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

/// What is sent as the prompt: token ids need no tokenizer on our side and pin the prompt length
/// exactly; text is what ShareGPT (and chat endpoints) provide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    Ids(Vec<u32>),
    Text(String),
}

/// One request of the workload: the prompt, its length in tokens and how many tokens to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchRequest {
    pub prompt: Prompt,
    pub prompt_len: usize,
    pub output_len: usize,
}

/// The shape of the random workload (`--dataset-name random`).
#[derive(Clone, Copy, Debug)]
pub struct RandomSpec {
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
    pub num_prompts: usize,
    pub vocab_size: u32,
}

/// `num` lengths drawn uniformly from `[max(floor(full_len * range_ratio), 1), full_len]`, SGLang's
/// reading of `--random-range-ratio`: 0 spans 1..=full_len, 1 pins every length to `full_len`.
/// A `full_len` of 0 gives zeros. The ratio is clamped to `[0, 1]`.
pub fn random_lens(full_len: usize, range_ratio: f64, num: usize, seed: u64) -> Vec<usize> {
    draw_lens(full_len, range_ratio, num, &mut StdRng::seed_from_u64(seed))
}

fn draw_lens(full_len: usize, range_ratio: f64, num: usize, rng: &mut StdRng) -> Vec<usize> {
    if full_len == 0 {
        return vec![0; num];
    }
    let low = ((full_len as f64 * range_ratio.clamp(0.0, 1.0)) as usize).clamp(1, full_len);
    (0..num).map(|_| rng.random_range(low..=full_len)).collect()
}

/// The random workload: lengths per [`random_lens`], prompt ids uniform in `0..vocab_size`.
/// Input lengths are drawn before output lengths, as SGLang does.
pub fn random_requests(spec: &RandomSpec, seed: u64) -> anyhow::Result<Vec<BenchRequest>> {
    if spec.vocab_size == 0 {
        bail!("the vocabulary size must be positive to draw random token ids");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let input_lens = draw_lens(spec.input_len, spec.range_ratio, spec.num_prompts, &mut rng);
    let output_lens = draw_lens(spec.output_len, spec.range_ratio, spec.num_prompts, &mut rng);
    Ok(input_lens
        .into_iter()
        .zip(output_lens)
        .map(|(prompt_len, output_len)| {
            let ids = (0..prompt_len).map(|_| rng.random_range(0..spec.vocab_size)).collect();
            BenchRequest { prompt: Prompt::Ids(ids), prompt_len, output_len }
        })
        .collect())
}

/// How ShareGPT conversations become requests.
#[derive(Clone, Copy, Debug)]
pub struct SharegptSpec {
    pub num_prompts: usize,
    /// Asks every request for this many tokens instead of the length of the recorded reply.
    pub fixed_output_len: Option<usize>,
    /// Drops conversations whose prompt plus reply exceed this many tokens.
    pub context_len: Option<usize>,
}

/// Up to `num_prompts` requests from a ShareGPT JSON file (a list of `{"conversations": [{"value":
/// ..}, ..]}`): the first turn is the prompt, the second turn's token count the output length.
/// Conversations are shuffled with `seed`; those with fewer than two turns, a prompt or reply
/// under 2 tokens, or over the context length are skipped. `count_tokens` tokenizes a text.
pub fn sharegpt_requests(
    path: &Path,
    spec: &SharegptSpec,
    seed: u64,
    mut count_tokens: impl FnMut(&str) -> anyhow::Result<usize>,
) -> anyhow::Result<Vec<BenchRequest>> {
    if spec.fixed_output_len.is_some_and(|n| n < 4) {
        bail!("--sharegpt-output-len must be at least 4");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let data: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(items) = data.as_array() else {
        bail!("{}: expected a JSON list of conversations", path.display());
    };
    let mut pairs: Vec<(&str, &str)> = items.iter().filter_map(first_exchange).collect();
    pairs.shuffle(&mut StdRng::seed_from_u64(seed));

    let mut requests = Vec::with_capacity(spec.num_prompts.min(pairs.len()));
    for (prompt, reply) in pairs {
        if requests.len() == spec.num_prompts {
            break;
        }
        let prompt_len = count_tokens(prompt)?;
        let output_len = match spec.fixed_output_len {
            Some(n) => n,
            None => count_tokens(reply)?,
        };
        let too_long = spec.context_len.is_some_and(|ctx| prompt_len + output_len > ctx);
        if prompt_len < 2 || output_len < 2 || too_long {
            continue;
        }
        requests.push(BenchRequest { prompt: Prompt::Text(prompt.to_string()), prompt_len, output_len });
    }
    Ok(requests)
}

/// The first two turns of a ShareGPT record (the key is `conversations` or `conversation`).
fn first_exchange(item: &Value) -> Option<(&str, &str)> {
    let turns = item.get("conversations").or_else(|| item.get("conversation"))?.as_array()?;
    let prompt = turns.first()?.get("value")?.as_str()?;
    let reply = turns.get(1)?.get("value")?.as_str()?;
    Some((prompt, reply))
}

/// Send times in seconds from the start for `n` requests: the first at 0, then gaps drawn from
/// an exponential distribution with mean `1 / rate` (a Poisson process). A non-finite or
/// non-positive rate sends everything at 0, as SGLang's `--request-rate inf` does.
pub fn poisson_arrivals(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    if !(rate.is_finite() && rate > 0.0) {
        return vec![0.0; n];
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 {
                // Inverse-CDF sampling; 1 - u lies in (0, 1], so the logarithm is finite.
                t += -(1.0 - rng.random::<f64>()).ln() / rate;
            }
            t
        })
        .collect()
}
