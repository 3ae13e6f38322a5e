//! Multi-head latent attention: queries through a low-rank projection, keys and values from a
//! shared compressed latent that is all the KV cache holds. Decode attends in the latent space
//! (`kv_b` absorbed into the query and the output); prefill expands the context's keys and
//! values. V3.2 restricts both to the indexer's top-k positions.

use crate::backend::{Backend, HeadCols, MlaDims, RopeLayout};
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::indexer::{Indexer, IndexerInput, IndexerScratch};
use crate::model::step::StepLayout;
use crate::model::weights::Checkpoint;
use crate::model::QuantPlan;
use crate::tensor::{CacheTensor, IntTensor, Tensor};

enum QueryProj<B: Backend> {
    /// `q_b(rms_norm(q_a(x)))`, the form every released DeepSeek-V3/V3.2 uses.
    LowRank {
        a: B::Linear,
        norm: Tensor<B>,
        b: B::Linear,
        rank: usize,
    },
    Direct(B::Linear),
}

pub struct Mla<B: Backend> {
    q: QueryProj<B>,
    kv_a: B::Linear,
    kv_norm: Tensor<B>,
    kv_b: B::Linear,
    o: B::Linear,
    indexer: Option<Indexer<B>>,
    dims: MlaDims,
    scale: f32,
    eps: f32,
}

pub struct MlaScratch<B: Backend> {
    qa: Tensor<B>,
    qr: Tensor<B>,
    q: Tensor<B>,
    kva: Tensor<B>,
    lat: Tensor<B>,
    q_lat: Tensor<B>,
    o_lat: Tensor<B>,
    o_dec: Tensor<B>,
    heads: Tensor<B>,
    ctx_lat: Tensor<B>,
    ctx_pe: Tensor<B>,
    ctx_kv: Tensor<B>,
    topk: IntTensor<B>,
    indexer: IndexerScratch<B>,
}

impl<B: Backend> MlaScratch<B> {
    pub fn new(b: &B) -> Result<Self> {
        let z = || b.zeros(0, 0);
        Ok(MlaScratch {
            qa: z()?,
            qr: z()?,
            q: z()?,
            kva: z()?,
            lat: z()?,
            q_lat: z()?,
            o_lat: z()?,
            o_dec: z()?,
            heads: z()?,
            ctx_lat: z()?,
            ctx_pe: z()?,
            ctx_kv: z()?,
            topk: b.int_zeros(0, 0)?,
            indexer: IndexerScratch::new(b)?,
        })
    }
}

/// The per-layer cache tensors attention reads and writes.
pub struct LayerCache<'a, B: Backend> {
    pub latent: &'a mut CacheTensor<B>,
    pub index: Option<&'a mut CacheTensor<B>>,
}

impl<B: Backend> Mla<B> {
    pub fn load(b: &B, ckpt: &Checkpoint, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let dims = MlaDims {
            heads: cfg.num_heads,
            nope: cfg.qk_nope_head_dim,
            rope: cfg.qk_rope_head_dim,
            v: cfg.v_head_dim,
            kv_lora: cfg.kv_lora_rank,
        };
        let q_out = dims.heads * dims.qk();
        let q = match cfg.q_lora_rank {
            Some(rank) => QueryProj::LowRank {
                a: b.load_linear(&ckpt.linear(&format!("{prefix}.q_a_proj"), rank, d)?)?,
                norm: b.load_vector(&ckpt.vector(&format!("{prefix}.q_a_layernorm.weight"), rank)?)?,
                b: b.load_linear(&ckpt.linear(&format!("{prefix}.q_b_proj"), q_out, rank)?)?,
                rank,
            },
            None => QueryProj::Direct(b.load_linear(&ckpt.linear(&format!("{prefix}.q_proj"), q_out, d)?)?),
        };
        let indexer = match (cfg.indexer, cfg.q_lora_rank) {
            (Some(ix), Some(rank)) => Some(Indexer::load(b, ckpt, &format!("{prefix}.indexer"), cfg, ix, rank)?),
            _ => None,
        };
        Ok(Mla {
            q,
            kv_a: b.load_linear(&ckpt.linear(&format!("{prefix}.kv_a_proj_with_mqa"), dims.latent(), d)?)?,
            kv_norm: b.load_vector(&ckpt.vector(&format!("{prefix}.kv_a_layernorm.weight"), dims.kv_lora)?)?,
            kv_b: b.load_linear(&ckpt.linear(
                &format!("{prefix}.kv_b_proj"),
                dims.heads * (dims.nope + dims.v),
                dims.kv_lora,
            )?)?,
            o: b.load_linear(&ckpt.linear(&format!("{prefix}.o_proj"), d, dims.heads * dims.v)?)?,
            indexer,
            dims,
            scale: cfg.softmax_scale(),
            eps: cfg.rms_norm_eps,
        })
    }

    /// Attention of the step's rows `x` (normed hidden states) into `out`; stores this step's
    /// latents (and index keys) in the cache first.
    pub fn forward(
        &self,
        b: &B,
        x: &Tensor<B>,
        cos_sin: &Tensor<B>,
        step: &StepLayout,
        quant: &QuantPlan,
        cache: LayerCache<B>,
        s: &mut MlaScratch<B>,
        out: &mut Tensor<B>,
    ) -> Result<()> {
        let (t, d) = (x.rows(), self.dims);
        b.resize(&mut s.q, t, d.heads * d.qk())?;
        match &self.q {
            QueryProj::LowRank { a, norm, b: qb, rank } => {
                b.resize(&mut s.qa, t, *rank)?;
                b.linear(x, a, quant.linear, &mut s.qa)?;
                b.resize(&mut s.qr, t, *rank)?;
                b.rms_norm(&s.qa, 0, norm, self.eps, &mut s.qr)?;
                b.linear(&s.qr, qb, quant.linear, &mut s.q)?;
            }
            QueryProj::Direct(w) => b.linear(x, w, quant.linear, &mut s.q)?,
        }
        let q_rope = HeadCols { n_heads: d.heads, stride: d.qk(), offset: d.nope, dim: d.rope };
        b.rope(&mut s.q, q_rope, cos_sin, RopeLayout::Interleaved)?;

        b.resize(&mut s.kva, t, d.latent())?;
        b.linear(x, &self.kv_a, quant.linear, &mut s.kva)?;
        b.resize(&mut s.lat, t, d.kv_lora)?;
        b.rms_norm(&s.kva, 0, &self.kv_norm, self.eps, &mut s.lat)?;
        // The cache holds the latent as FP8 would: every reader sees the rounded values. An FP8
        // cache rounds as it stores (with power-of-two scales), so nothing is rounded here.
        if let Some(fmt) = quant.kv_latent.filter(|_| !cache.latent.format().is_fp8()) {
            b.fp8_round(&mut s.lat, d.kv_lora, fmt)?;
        }
        let k_rope = HeadCols { n_heads: 1, stride: d.latent(), offset: d.kv_lora, dim: d.rope };
        b.rope(&mut s.kva, k_rope, cos_sin, RopeLayout::Interleaved)?;
        b.kv_store(cache.latent, &step.slots, &s.lat, Some((&s.kva, d.kv_lora)))?;

        let topk = match (&self.indexer, cache.index) {
            (Some(ix), Some(index_cache)) => {
                let input = IndexerInput { x, qr: &s.qr, cos_sin };
                ix.forward(b, input, step, quant, index_cache, &mut s.indexer, &mut s.topk)?;
                Some(&s.topk)
            }
            _ => None,
        };

        b.resize(&mut s.heads, t, d.heads * d.v)?;
        let n_dec = step.n_decode;
        if n_dec > 0 {
            b.resize(&mut s.q_lat, n_dec, d.heads * d.latent())?;
            b.absorb_q(&s.q, &self.kv_b, d, &mut s.q_lat)?;
            b.resize(&mut s.o_lat, n_dec, d.heads * d.kv_lora)?;
            b.mla_decode(
                &s.q_lat,
                cache.latent,
                step.decode_queries(),
                step.pages(),
                topk,
                self.scale,
                d,
                &mut s.o_lat,
            )?;
            b.resize(&mut s.o_dec, n_dec, d.heads * d.v)?;
            b.absorb_out(&s.o_lat, &self.kv_b, d, &mut s.o_dec)?;
            b.copy_rows(&s.o_dec, 0, &mut s.heads, 0, n_dec)?;
        }
        if !step.prefill.is_empty() {
            let ctx = step.ctx_slots.len();
            b.resize(&mut s.ctx_lat, ctx, d.kv_lora)?;
            b.kv_gather(cache.latent, &step.ctx_slots, 0, &mut s.ctx_lat)?;
            b.resize(&mut s.ctx_pe, ctx, d.rope)?;
            b.kv_gather(cache.latent, &step.ctx_slots, d.kv_lora, &mut s.ctx_pe)?;
            b.resize(&mut s.ctx_kv, ctx, d.heads * (d.nope + d.v))?;
            b.linear(&s.ctx_lat, &self.kv_b, quant.linear, &mut s.ctx_kv)?;
            b.mla_prefill(&s.q, &s.ctx_kv, &s.ctx_pe, &step.prefill, topk, self.scale, d, &mut s.heads)?;
        }
        b.resize(out, t, x.cols())?;
        b.linear(&s.heads, &self.o, quant.linear, out)
    }
}
