//! `ModelConfig::from_json` on arbitrary text: it must return `Ok` or `Err`, never panic.
//! Inputs that are not UTF-8 are converted lossily (so byte-level mutations still reach the
//! parser). When a config is accepted, the derived quantities every loader computes from it
//! (head widths, softmax scale, MoE layer placement, the FP8 plan, the KV cache formats and
//! their bytes per token) must not panic either.

use std::path::Path;

use crate::show;
use flashseek::kv_cache::{CacheFormats, KvCacheDtype};
use flashseek::model::config::ModelConfig;
use flashseek::model::{ActQuant, QuantPlan};

/// One fuzz input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = show("from_json", ModelConfig::from_json(&text, Path::new("config.json"))) else {
        return;
    };
    // Accepted: what the model builder derives from it right away.
    let _ = cfg.qk_head_dim();
    let _ = cfg.softmax_scale();
    for i in 0..cfg.num_layers.min(8) {
        let _ = cfg.is_moe_layer(i);
    }
    for kv in [KvCacheDtype::Auto, KvCacheDtype::Fp8E4m3] {
        for act in [ActQuant::Fp8, ActQuant::None] {
            let _ = QuantPlan::new(&cfg, act, kv);
        }
        if let Ok(formats) = CacheFormats::new(&cfg, kv, QuantPlan::checkpoint_fmt(&cfg)) {
            let _ = formats.bytes_per_token();
        }
    }
}
