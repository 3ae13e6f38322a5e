//! Turns a row of logits into the next token: penalties, temperature, top-k, top-p, min-p and
//! a seeded draw; plus the log-probabilities a request asks for.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::params::SamplingParams;
use crate::error::{Error, Result};

/// A sampled token's log-probability and the most likely alternatives, most likely first.
/// Log-probabilities are those of the model's own distribution (before penalties and
/// temperature), as vLLM reports them by default.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Per-sequence sampling state: its random stream and what the penalties count.
pub struct SeqSampler {
    rng: StdRng,
    /// Times each token occurs in the output so far.
    counts: HashMap<u32, u32>,
    /// Tokens of the prompt, for the repetition penalty (empty unless it is on).
    prompt: Vec<u32>,
}

impl SeqSampler {
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        let mut prompt = if params.repetition_penalty != 1.0 { prompt.to_vec() } else { Vec::new() };
        prompt.sort_unstable();
        prompt.dedup();
        SeqSampler { rng: StdRng::seed_from_u64(seed), counts: HashMap::new(), prompt }
    }

    /// Records a token the sequence produced.
    pub fn observe(&mut self, id: u32) {
        *self.counts.entry(id).or_insert(0) += 1;
    }
}

/// Buffers reused by every draw, so sampling allocates nothing per token once warm.
#[derive(Default)]
pub struct Sampler {
    candidates: Vec<(u32, f32)>,
    /// The raw row, kept only when penalties change it and log-probabilities are asked for.
    raw: Vec<f32>,
}

impl Sampler {
    /// Picks the next token from `logits` (changed in place by penalties and temperature).
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        seq: &mut SeqSampler,
    ) -> Result<(u32, Option<TokenLogprob>)> {
        let logprob_top = params.logprobs.map(|n| self.top_logprobs(logits, n)).transpose()?;
        if params.penalized() {
            if logprob_top.is_some() {
                self.raw.clear();
                self.raw.extend_from_slice(logits);
            }
            apply_penalties(logits, params, seq);
        }
        let id = if params.greedy() { argmax(logits)? } else { self.draw(logits, params, &mut seq.rng)? };
        let raw = if params.penalized() { &self.raw[..] } else { &logits[..] };
        let logprob = logprob_top.map(|(lse, top)| TokenLogprob {
            id,
            logprob: raw.get(id as usize).map_or(f32::NEG_INFINITY, |&l| l - lse),
            top,
        });
        Ok((id, logprob))
    }

    /// Log-sum-exp of the raw logits and the `n` most likely tokens with their log-probabilities.
    fn top_logprobs(&mut self, logits: &[f32], n: usize) -> Result<(f32, Vec<(u32, f32)>)> {
        let lse = log_sum_exp(logits)?;
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let n = n.min(self.candidates.len());
        if n > 0 && n < self.candidates.len() {
            self.candidates.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
        }
        let top = &mut self.candidates[..n];
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok((lse, top.iter().map(|&(i, l)| (i, l - lse)).collect()))
    }

    fn draw(&mut self, logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> Result<u32> {
        let inv_t = 1.0 / params.temperature;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l * inv_t)));
        if params.top_k > 0 && params.top_k < c.len() {
            c.select_nth_unstable_by(params.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            c.truncate(params.top_k);
        }
        let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return Err(Error::Input("the model produced no finite logit".into()));
        }
        let mut total = 0.0f64;
        for x in c.iter_mut() {
            x.1 = (x.1 - max).exp();
            total += f64::from(x.1);
        }
        if params.top_p < 1.0 || params.min_p > 0.0 {
            c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let floor = params.min_p * c.first().map_or(0.0, |x| x.1);
            let mut kept = 0.0f64;
            let mut n = 0;
            for x in c.iter() {
                if n > 0 && (x.1 < floor || kept >= f64::from(params.top_p) * total) {
                    break;
                }
                kept += f64::from(x.1);
                n += 1;
            }
            c.truncate(n);
            total = kept;
        }
        let mut u = rng.random::<f64>() * total;
        for &(id, p) in c.iter() {
            u -= f64::from(p);
            if u < 0.0 {
                return Ok(id);
            }
        }
        // Rounding can leave `u` a hair above zero after the last candidate.
        c.last().map(|x| x.0).ok_or_else(|| Error::Input("no token left to sample".into()))
    }
}

fn apply_penalties(logits: &mut [f32], params: &SamplingParams, seq: &SeqSampler) {
    let rep = params.repetition_penalty;
    let penalize = |l: &mut f32| *l = if *l > 0.0 { *l / rep } else { *l * rep };
    if rep != 1.0 {
        for &id in &seq.prompt {
            if let Some(l) = logits.get_mut(id as usize) {
                if !seq.counts.contains_key(&id) {
                    penalize(l);
                }
            }
        }
    }
    for (&id, &n) in &seq.counts {
        if let Some(l) = logits.get_mut(id as usize) {
            if rep != 1.0 {
                penalize(l);
            }
            *l -= params.presence_penalty + params.frequency_penalty * n as f32;
        }
    }
}

pub fn argmax(logits: &[f32]) -> Result<u32> {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i as u32, l);
        }
    }
    if best.1.is_finite() {
        Ok(best.0)
    } else {
        Err(Error::Input("the model produced no finite logit".into()))
    }
}

fn log_sum_exp(logits: &[f32]) -> Result<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return Err(Error::Input("the model produced no finite logit".into()));
    }
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    Ok(max + sum.ln() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The distribution `draw` should follow: softmax(logits / t), top-k, then top-p (keeping
    /// the token that crosses `p`), then min-p, renormalized.
    fn expected(logits: &[f32], p: &SamplingParams) -> Vec<f64> {
        let mut probs: Vec<(usize, f64)> =
            logits.iter().enumerate().map(|(i, &l)| (i, f64::from(l) / f64::from(p.temperature))).collect();
        let max = probs.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
        probs.iter_mut().for_each(|x| x.1 = (x.1 - max).exp());
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            probs.truncate(p.top_k);
        }
        let total: f64 = probs.iter().map(|x| x.1).sum();
        let (mut kept, mut n) = (0.0, 0);
        for x in &probs {
            if n > 0 && (kept >= f64::from(p.top_p) * total || x.1 < f64::from(p.min_p) * probs[0].1) {
                break;
            }
            kept += x.1;
            n += 1;
        }
        let mut out = vec![0.0; logits.len()];
        for &(i, q) in &probs[..n] {
            out[i] = q / kept;
        }
        out
    }

    fn frequencies(logits: &[f32], p: &SamplingParams, draws: usize) -> Vec<f64> {
        let mut sampler = Sampler::default();
        let mut seq = SeqSampler::new(p, &[]);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            let (id, _) = sampler.sample(&mut logits.to_vec(), p, &mut seq).unwrap();
            counts[id as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn draws_follow_the_filtered_distribution() {
        let logits = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0];
        let cases = [
            SamplingParams { temperature: 1.0, seed: Some(1), ..SamplingParams::default() },
            SamplingParams { temperature: 0.5, top_k: 3, seed: Some(2), ..SamplingParams::default() },
            SamplingParams { temperature: 1.3, top_p: 0.7, seed: Some(3), ..SamplingParams::default() },
            SamplingParams { temperature: 1.0, min_p: 0.2, seed: Some(4), ..SamplingParams::default() },
            SamplingParams {
                temperature: 2.0,
                top_k: 6,
                top_p: 0.9,
                min_p: 0.05,
                seed: Some(5),
                ..SamplingParams::default()
            },
        ];
        let draws = 40_000;
        for p in &cases {
            let want = expected(&logits, p);
            let got = frequencies(&logits, p, draws);
            for (i, (&w, &g)) in want.iter().zip(&got).enumerate() {
                // Five standard deviations of a binomial frequency.
                let bound = 5.0 * (w * (1.0 - w) / draws as f64).sqrt() + 1e-9;
                assert!((w - g).abs() <= bound, "{p:?}: token {i} drawn {g:.4}, expected {w:.4}");
            }
        }
    }

    #[test]
    fn greedy_penalties_and_logprobs() {
        let mut sampler = Sampler::default();
        let logits = [1.0f32, 3.0, 2.9, -1.0];
        let greedy = SamplingParams { temperature: 0.0, logprobs: Some(2), ..SamplingParams::default() };
        let mut seq = SeqSampler::new(&greedy, &[]);
        let (id, lp) = sampler.sample(&mut logits.to_vec(), &greedy, &mut seq).unwrap();
        assert_eq!(id, 1);
        let lp = lp.unwrap();
        let lse = logits.iter().map(|&l| f64::from(l).exp()).sum::<f64>().ln();
        assert!((f64::from(lp.logprob) - (3.0 - lse)).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);

        // Token 1 already produced twice: frequency 0.1 x 2 plus presence 0.05 push it below 2.
        let penalized = SamplingParams { frequency_penalty: 0.1, presence_penalty: 0.05, ..greedy.clone() };
        let mut seq = SeqSampler::new(&penalized, &[]);
        seq.observe(1);
        seq.observe(1);
        let (id, lp) = sampler.sample(&mut logits.to_vec(), &penalized, &mut seq).unwrap();
        assert_eq!(id, 2);
        // Log-probabilities stay those of the raw distribution.
        assert!((f64::from(lp.unwrap().logprob) - (2.9 - lse)).abs() < 1e-5);

        // Repetition penalty on a prompt token: 3.0 / 1.2 = 2.5 < 2.9.
        let rep = SamplingParams { repetition_penalty: 1.2, ..greedy };
        let mut seq = SeqSampler::new(&rep, &[1]);
        assert_eq!(sampler.sample(&mut logits.to_vec(), &rep, &mut seq).unwrap().0, 2);
        assert!(sampler.sample(&mut [f32::NAN; 4], &rep, &mut seq).is_err());
    }
}
