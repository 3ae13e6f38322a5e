//! The lightning indexer of DeepSeek-V3.2: scores every cached position for each query and
//! keeps the top `index_topk`, which sparse attention then reads.

use crate::backend::{Backend, HeadCols, RopeLayout};
use crate::error::Result;
use crate::model::config::{IndexerConfig, ModelConfig};
use crate::model::step::StepLayout;
use crate::model::weights::Checkpoint;
use crate::model::QuantPlan;
use crate::tensor::{CacheTensor, IntTensor, Tensor};

/// The indexer key's LayerNorm epsilon (fixed in DeepSeek's code, not in the config).
const K_NORM_EPS: f32 = 1e-6;

pub struct Indexer<B: Backend> {
    wq_b: B::Linear,
    wk: B::Linear,
    k_norm_w: Tensor<B>,
    k_norm_b: Tensor<B>,
    weights_proj: B::Linear,
    cfg: IndexerConfig,
    rope_dim: usize,
}

pub struct IndexerScratch<B: Backend> {
    q: Tensor<B>,
    k: Tensor<B>,
    w: Tensor<B>,
}

impl<B: Backend> IndexerScratch<B> {
    pub fn new(b: &B) -> Result<Self> {
        Ok(IndexerScratch { q: b.zeros(0, 0)?, k: b.zeros(0, 0)?, w: b.zeros(0, 0)? })
    }
}

/// What the indexer reads besides its weights.
pub struct IndexerInput<'a, B: Backend> {
    /// The attention input (normed hidden states).
    pub x: &'a Tensor<B>,
    /// The compressed, normed query.
    pub qr: &'a Tensor<B>,
    pub cos_sin: &'a Tensor<B>,
}

impl<B: Backend> Indexer<B> {
    pub fn load(
        b: &B,
        ckpt: &Checkpoint,
        prefix: &str,
        cfg: &ModelConfig,
        ix: IndexerConfig,
        q_lora: usize,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Indexer {
            wq_b: b.load_linear(&ckpt.linear(&format!("{prefix}.wq_b"), ix.n_heads * ix.head_dim, q_lora)?)?,
            wk: b.load_linear(&ckpt.linear(&format!("{prefix}.wk"), ix.head_dim, d)?)?,
            k_norm_w: b.load_vector(&ckpt.vector(&format!("{prefix}.k_norm.weight"), ix.head_dim)?)?,
            k_norm_b: b.load_vector(&ckpt.vector(&format!("{prefix}.k_norm.bias"), ix.head_dim)?)?,
            weights_proj: b.load_linear(&ckpt.linear(&format!("{prefix}.weights_proj"), ix.n_heads, d)?)?,
            cfg: ix,
            rope_dim: cfg.qk_rope_head_dim,
        })
    }

    /// Stores this step's index keys in `cache` and writes each row's top-k positions.
    pub fn forward(
        &self,
        b: &B,
        input: IndexerInput<B>,
        step: &StepLayout,
        quant: &QuantPlan,
        cache: &mut CacheTensor<B>,
        s: &mut IndexerScratch<B>,
        topk: &mut IntTensor<B>,
    ) -> Result<()> {
        let (t, ix) = (input.x.rows(), self.cfg);
        let rope = |n_heads| HeadCols { n_heads, stride: ix.head_dim, offset: 0, dim: self.rope_dim };
        b.resize(&mut s.q, t, ix.n_heads * ix.head_dim)?;
        b.linear(input.qr, &self.wq_b, quant.linear, &mut s.q)?;
        b.rope(&mut s.q, rope(ix.n_heads), input.cos_sin, RopeLayout::HalfSplit)?;
        b.resize(&mut s.k, t, ix.head_dim)?;
        b.linear(input.x, &self.wk, quant.linear, &mut s.k)?;
        b.layer_norm(&mut s.k, &self.k_norm_w, &self.k_norm_b, K_NORM_EPS)?;
        b.rope(&mut s.k, rope(1), input.cos_sin, RopeLayout::HalfSplit)?;
        if let Some(fmt) = quant.indexer {
            // The rotation spreads outliers before FP8 rounding; it is orthogonal, so without
            // rounding the scores would not change and it is skipped. An FP8 cache rounds the
            // keys as it stores them, with the same scales.
            b.hadamard(&mut s.q, ix.head_dim)?;
            b.fp8_round(&mut s.q, ix.head_dim, fmt)?;
            b.hadamard(&mut s.k, ix.head_dim)?;
            if !cache.format().is_fp8() {
                b.fp8_round(&mut s.k, ix.head_dim, fmt)?;
            }
        }
        b.kv_store(cache, &step.slots, &s.k, None)?;
        b.resize(&mut s.w, t, ix.n_heads)?;
        b.linear(input.x, &self.weights_proj, None, &mut s.w)?;
        let weight_scale = ((ix.n_heads * ix.head_dim) as f32).powf(-0.5);
        b.resize_ints(topk, t, ix.topk)?;
        b.indexer_topk(&s.q, &s.w, weight_scale, cache, step.queries(), step.pages(), topk)
    }
}
