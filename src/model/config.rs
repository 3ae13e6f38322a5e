//! `ModelConfig`: a Hugging Face `config.json` for `deepseek_v3` / `deepseek_v32`, validated.
//!
//! Every error names the file and the field. Values the engine does not implement (another
//! activation, router, RoPE type or quantization scheme) are errors, never silently ignored.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Activation and weight blocks of DeepSeek's FP8 scheme: 1x128 groups for activations,
/// 128x128 blocks for weights.
pub const FP8_BLOCK: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// DeepSeek-V3 / V3.1: dense MLA.
    DeepseekV3,
    /// DeepSeek-V3.2 (-Exp, Math-V2): MLA with the lightning indexer and sparse attention.
    DeepseekV32,
}

impl ModelType {
    /// The `model_type` of `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::DeepseekV3 => "deepseek_v3",
            ModelType::DeepseekV32 => "deepseek_v32",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct YarnConfig {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// Explicit attention factor for cos/sin; derived from the mscales when absent.
    pub attention_factor: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub yarn: Option<YarnConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Config {
    /// Scales rounded up to powers of two (`scale_fmt: ue8m0`).
    pub ue8m0: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub experts_per_token: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub intermediate_size: usize,
    pub routed_scaling_factor: f32,
    pub norm_topk_prob: bool,
    pub first_k_dense_replace: usize,
    pub layer_freq: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexerConfig {
    pub n_heads: usize,
    pub head_dim: usize,
    pub topk: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub rope: RopeConfig,
    pub moe: MoeConfig,
    pub indexer: Option<IndexerConfig>,
    pub fp8: Option<Fp8Config>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Multi-token-prediction layers stored after the main layers; not used for decoding yet.
    pub num_nextn_predict_layers: usize,
}

impl ModelConfig {
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Whether layer `i` has a routed MoE (otherwise a dense MLP).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        i >= self.moe.first_k_dense_replace && i % self.moe.layer_freq == 0
    }

    /// YaRN's attention-temperature factor applied to the softmax scale (squared, as MLA does).
    pub fn softmax_scale(&self) -> f32 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        let m = match &self.rope.yarn {
            Some(y) => match y.mscale_all_dim {
                Some(m) if m != 0.0 => yarn_mscale(y.factor, m),
                _ => 1.0,
            },
            _ => 1.0,
        };
        (base * m * m) as f32
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates `text`; `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        // Syntax first (with line and column), then the fields (with their names).
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::config(path, format!("invalid JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::config(path, "expected a JSON object"));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if field == "." || field.contains('?') {
                Error::config(path, format!("invalid config: {inner}"))
            } else {
                Error::config(path, format!("field `{field}`: {inner}"))
            }
        })?;
        raw.validate(path)
    }
}

pub(crate) fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a token id or a list of token ids")]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
#[serde(expecting = "an object")]
struct RawRope {
    rope_type: Option<String>,
    /// The older spelling of `rope_type`; configs re-saved by `transformers` carry both.
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    attention_factor: Option<f64>,
}

#[derive(Deserialize)]
#[serde(expecting = "an object")]
struct RawQuant {
    quant_method: String,
    fmt: Option<String>,
    activation_scheme: Option<String>,
    weight_block_size: Vec<usize>,
    scale_fmt: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    q_lora_rank: Option<usize>,
    kv_lora_rank: usize,
    qk_nope_head_dim: usize,
    qk_rope_head_dim: usize,
    v_head_dim: usize,
    rms_norm_eps: f32,
    max_position_embeddings: usize,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    hidden_act: Option<String>,
    n_routed_experts: usize,
    #[serde(default)]
    n_shared_experts: Option<usize>,
    num_experts_per_tok: usize,
    n_group: usize,
    topk_group: usize,
    moe_intermediate_size: usize,
    routed_scaling_factor: f32,
    norm_topk_prob: bool,
    first_k_dense_replace: usize,
    moe_layer_freq: Option<usize>,
    topk_method: Option<String>,
    scoring_func: Option<String>,
    index_n_heads: Option<usize>,
    index_head_dim: Option<usize>,
    index_topk: Option<usize>,
    quantization_config: Option<RawQuant>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    num_nextn_predict_layers: Option<usize>,
    num_key_value_heads: Option<usize>,
}

fn expect_value(path: &Path, field: &str, got: Option<&str>, allowed: &[&str]) -> Result<()> {
    match got {
        None => Ok(()),
        Some(v) if allowed.contains(&v) => Ok(()),
        Some(v) => {
            Err(Error::config(path, format!("field `{field}`: unsupported value {v:?} (supported: {allowed:?})")))
        }
    }
}

/// The largest size or count a config may give: far above any DeepSeek model, and low enough
/// that products of three sizes cannot overflow.
const MAX_SIZE: usize = 1 << 20;

/// A size or count: positive and at most `max`.
fn bounded(path: &Path, field: &str, v: usize, max: usize) -> Result<usize> {
    if v == 0 || v > max {
        Err(Error::config(path, format!("field `{field}`: {v} is out of range (1..={max})")))
    } else {
        Ok(v)
    }
}

fn positive(path: &Path, field: &str, v: usize) -> Result<usize> {
    bounded(path, field, v, MAX_SIZE)
}

impl RawRope {
    fn into_config(self, path: &Path, field: &str, theta: Option<f64>) -> Result<RopeConfig> {
        let theta = self
            .rope_theta
            .or(theta)
            .ok_or_else(|| Error::config(path, format!("missing field `rope_theta` (top level or in `{field}`)")))?;
        let kind = match (self.rope_type.as_deref(), self.legacy_type.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::config(
                    path,
                    format!("fields `{field}.rope_type` ({a:?}) and `{field}.type` ({b:?}) disagree"),
                ))
            }
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => "default",
        };
        let yarn = match kind {
            "default" => None,
            "yarn" => {
                let req = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| Error::config(path, format!("missing field `{field}.{name}`")))
                };
                let factor = req(self.factor, "factor")?;
                if !factor.is_finite() || factor <= 0.0 {
                    return Err(Error::config(path, format!("field `{field}.factor`: must be positive")));
                }
                let original = self.original_max_position_embeddings.ok_or_else(|| {
                    Error::config(path, format!("missing field `{field}.original_max_position_embeddings`"))
                })?;
                Some(YarnConfig {
                    factor,
                    original_max_position_embeddings: positive(
                        path,
                        &format!("{field}.original_max_position_embeddings"),
                        original,
                    )?,
                    beta_fast: self.beta_fast.unwrap_or(32.0),
                    beta_slow: self.beta_slow.unwrap_or(1.0),
                    mscale: self.mscale,
                    mscale_all_dim: self.mscale_all_dim,
                    attention_factor: self.attention_factor,
                })
            }
            other => {
                return Err(Error::config(
                    path,
                    format!(
                        "field `{field}.rope_type`: unsupported value {other:?} (supported: \"default\", \"yarn\")"
                    ),
                ))
            }
        };
        if !theta.is_finite() || theta <= 0.0 {
            return Err(Error::config(path, "field `rope_theta`: must be positive"));
        }
        Ok(RopeConfig { theta, yarn })
    }
}

impl RawConfig {
    fn validate(self, path: &Path) -> Result<ModelConfig> {
        let model_type = match self.model_type.as_str() {
            "deepseek_v3" => ModelType::DeepseekV3,
            "deepseek_v32" => ModelType::DeepseekV32,
            other => {
                return Err(Error::config(
                    path,
                    format!(
                        "field `model_type`: unsupported value {other:?} (supported: \"deepseek_v3\", \"deepseek_v32\")"
                    ),
                ))
            }
        };
        expect_value(path, "hidden_act", self.hidden_act.as_deref(), &["silu"])?;
        expect_value(path, "topk_method", self.topk_method.as_deref(), &["noaux_tc"])?;
        expect_value(path, "scoring_func", self.scoring_func.as_deref(), &["sigmoid"])?;

        let rope = match (self.rope_parameters, self.rope_scaling) {
            (Some(p), _) => p.into_config(path, "rope_parameters", self.rope_theta)?,
            (None, Some(s)) => s.into_config(path, "rope_scaling", self.rope_theta)?,
            (None, None) => RopeConfig {
                theta: self.rope_theta.ok_or_else(|| Error::config(path, "missing field `rope_theta`"))?,
                yarn: None,
            },
        };

        let fp8 = match self.quantization_config {
            None => None,
            Some(q) => {
                expect_value(path, "quantization_config.quant_method", Some(&q.quant_method), &["fp8"])?;
                expect_value(path, "quantization_config.fmt", q.fmt.as_deref(), &["e4m3"])?;
                expect_value(
                    path,
                    "quantization_config.activation_scheme",
                    q.activation_scheme.as_deref(),
                    &["dynamic"],
                )?;
                expect_value(path, "quantization_config.scale_fmt", q.scale_fmt.as_deref(), &["ue8m0"])?;
                if q.weight_block_size != [FP8_BLOCK, FP8_BLOCK] {
                    return Err(Error::config(
                        path,
                        format!(
                            "field `quantization_config.weight_block_size`: unsupported value {:?} (supported: [128, 128])",
                            q.weight_block_size
                        ),
                    ));
                }
                Some(Fp8Config { ue8m0: q.scale_fmt.is_some() })
            }
        };

        let indexer = match model_type {
            ModelType::DeepseekV3 => None,
            ModelType::DeepseekV32 => {
                let req = |v: Option<usize>, name: &str| -> Result<usize> {
                    let v = v.ok_or_else(|| Error::config(path, format!("missing field `{name}`")))?;
                    positive(path, name, v)
                };
                let head_dim = req(self.index_head_dim, "index_head_dim")?;
                if !head_dim.is_power_of_two() {
                    return Err(Error::config(
                        path,
                        format!("field `index_head_dim`: {head_dim} is not a power of two (the indexer's Hadamard rotation needs one)"),
                    ));
                }
                if head_dim < self.qk_rope_head_dim {
                    return Err(Error::config(
                        path,
                        format!(
                            "field `index_head_dim`: {head_dim} is smaller than qk_rope_head_dim {}",
                            self.qk_rope_head_dim
                        ),
                    ));
                }
                if self.q_lora_rank.is_none() {
                    return Err(Error::config(
                        path,
                        "field `q_lora_rank`: deepseek_v32 needs a q_lora_rank (the indexer reads the compressed query)",
                    ));
                }
                Some(IndexerConfig {
                    n_heads: req(self.index_n_heads, "index_n_heads")?,
                    head_dim,
                    topk: req(self.index_topk, "index_topk")?,
                })
            }
        };

        let n_routed_experts = positive(path, "n_routed_experts", self.n_routed_experts)?;
        let n_group = positive(path, "n_group", self.n_group)?;
        if n_routed_experts % n_group != 0 {
            return Err(Error::config(
                path,
                format!("field `n_group`: {n_group} does not divide n_routed_experts {n_routed_experts}"),
            ));
        }
        if self.topk_group == 0 || self.topk_group > n_group {
            return Err(Error::config(path, format!("field `topk_group`: must be in 1..={n_group}")));
        }
        let experts_per_group = n_routed_experts / n_group;
        if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.topk_group * experts_per_group {
            return Err(Error::config(
                path,
                format!(
                    "field `num_experts_per_tok`: must be in 1..={} (topk_group x experts per group)",
                    self.topk_group * experts_per_group
                ),
            ));
        }
        if n_group > 1 && experts_per_group < 2 {
            return Err(Error::config(
                path,
                "field `n_group`: groups are ranked by their two best experts, so each needs at least two",
            ));
        }
        let rope_dim = positive(path, "qk_rope_head_dim", self.qk_rope_head_dim)?;
        if rope_dim % 2 != 0 {
            return Err(Error::config(path, "field `qk_rope_head_dim`: must be even"));
        }
        if let Some(n) = self.num_key_value_heads {
            if n != self.num_attention_heads {
                return Err(Error::config(
                    path,
                    format!("field `num_key_value_heads`: MLA shares one latent across heads; expected {} (num_attention_heads), got {n}", self.num_attention_heads),
                ));
            }
        }
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps < 0.0 {
            return Err(Error::config(path, "field `rms_norm_eps`: must be a finite non-negative number"));
        }
        if !self.routed_scaling_factor.is_finite() {
            return Err(Error::config(path, "field `routed_scaling_factor`: must be finite"));
        }
        let eos_token_ids = match self.eos_token_id {
            None => Vec::new(),
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
        };
        let vocab_size = positive(path, "vocab_size", self.vocab_size)?;
        let special = eos_token_ids
            .iter()
            .map(|id| ("eos_token_id", id))
            .chain(self.bos_token_id.iter().map(|id| ("bos_token_id", id)));
        for (field, &id) in special {
            if id as usize >= vocab_size {
                return Err(Error::config(
                    path,
                    format!("field `{field}`: token id {id} is outside the vocabulary ({vocab_size})"),
                ));
            }
        }
        Ok(ModelConfig {
            model_type,
            vocab_size,
            hidden_size: positive(path, "hidden_size", self.hidden_size)?,
            intermediate_size: positive(path, "intermediate_size", self.intermediate_size)?,
            num_layers: positive(path, "num_hidden_layers", self.num_hidden_layers)?,
            num_heads: positive(path, "num_attention_heads", self.num_attention_heads)?,
            q_lora_rank: match self.q_lora_rank {
                Some(r) => Some(positive(path, "q_lora_rank", r)?),
                None => None,
            },
            kv_lora_rank: positive(path, "kv_lora_rank", self.kv_lora_rank)?,
            qk_nope_head_dim: positive(path, "qk_nope_head_dim", self.qk_nope_head_dim)?,
            qk_rope_head_dim: rope_dim,
            v_head_dim: positive(path, "v_head_dim", self.v_head_dim)?,
            rms_norm_eps: self.rms_norm_eps,
            // Positions travel as u32.
            max_position_embeddings: bounded(
                path,
                "max_position_embeddings",
                self.max_position_embeddings,
                u32::MAX as usize,
            )?,
            rope,
            moe: MoeConfig {
                n_routed_experts,
                n_shared_experts: match self.n_shared_experts {
                    Some(0) | None => 0,
                    Some(n) => positive(path, "n_shared_experts", n)?,
                },
                experts_per_token: self.num_experts_per_tok,
                n_group,
                topk_group: self.topk_group,
                intermediate_size: positive(path, "moe_intermediate_size", self.moe_intermediate_size)?,
                routed_scaling_factor: self.routed_scaling_factor,
                norm_topk_prob: self.norm_topk_prob,
                first_k_dense_replace: self.first_k_dense_replace,
                layer_freq: positive(path, "moe_layer_freq", self.moe_layer_freq.unwrap_or(1))?,
            },
            indexer,
            fp8,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids,
            num_nextn_predict_layers: self.num_nextn_predict_layers.unwrap_or(0),
        })
    }
}
