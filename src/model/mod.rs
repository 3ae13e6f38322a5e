//! DeepSeek-V3 / V3.2 assembled from backend kernels: config, checkpoint loading, the layers and
//! the batched forward pass.

pub mod config;
pub mod deepseek;
pub mod indexer;
pub mod mla;
pub mod mlp;
pub mod moe;
pub mod rope;
pub mod step;
pub mod weights;

use crate::fp8::ScaleFmt;
use crate::kv_cache::KvCacheDtype;
use config::{ModelConfig, ModelType};

pub use deepseek::Model;
pub use step::{Logits, SeqInput};

/// Whether activations are rounded through FP8 as DeepSeek's inference does (`--act-quant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActQuant {
    #[default]
    Fp8,
    /// Everything in f32: for comparisons with unquantized references.
    None,
}

/// Where activations are rounded through FP8, and with which scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantPlan {
    /// Inputs of linears whose weights are FP8.
    pub linear: Option<ScaleFmt>,
    /// The MLA latent before it is cached (V3.2).
    pub kv_latent: Option<ScaleFmt>,
    /// The indexer's queries and keys (V3.2).
    pub indexer: Option<ScaleFmt>,
}

impl QuantPlan {
    /// With an FP8 KV cache the indexer takes its FP8 path (Hadamard rotation, rounded queries)
    /// even where activations are not quantized: the FP8 index keys need it. The cache's store
    /// then rounds the latent and the index keys itself (`kv_latent` stays as the activation
    /// setting says, for an f32 cache).
    pub fn new(cfg: &ModelConfig, act: ActQuant, kv: KvCacheDtype) -> Self {
        let fmt = Self::checkpoint_fmt(cfg);
        let v32 = cfg.model_type == ModelType::DeepseekV32;
        let indexer = (v32 && kv == KvCacheDtype::Fp8E4m3).then_some(fmt);
        if act == ActQuant::None {
            return QuantPlan { linear: None, kv_latent: None, indexer };
        }
        QuantPlan { linear: Some(fmt), kv_latent: v32.then_some(fmt), indexer: v32.then_some(fmt) }
    }

    /// The checkpoint's activation scale format: ue8m0 where its `quantization_config` says so.
    pub fn checkpoint_fmt(cfg: &ModelConfig) -> ScaleFmt {
        match cfg.fp8 {
            Some(f) if f.ue8m0 => ScaleFmt::Ue8m0,
            _ => ScaleFmt::Exact,
        }
    }
}
