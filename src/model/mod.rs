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
    pub fn new(cfg: &ModelConfig, act: ActQuant) -> Self {
        if act == ActQuant::None {
            return QuantPlan { linear: None, kv_latent: None, indexer: None };
        }
        let fmt = match cfg.fp8 {
            Some(f) if f.ue8m0 => ScaleFmt::Ue8m0,
            _ => ScaleFmt::Exact,
        };
        let v32 = cfg.model_type == ModelType::DeepseekV32;
        QuantPlan { linear: Some(fmt), kv_latent: v32.then_some(fmt), indexer: v32.then_some(fmt) }
    }
}
