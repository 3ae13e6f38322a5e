//! Rotary frequencies with YaRN scaling, as `transformers` computes them for DeepSeek (which
//! DeepSeek's reference matches whenever the context exceeds the original length).

use std::f64::consts::PI;

use crate::model::config::{yarn_mscale, ModelConfig};

pub struct RopeTable {
    inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's `attention_factor`; 1 for DeepSeek's released configs).
    attention_factor: f32,
}

impl RopeTable {
    pub fn new(cfg: &ModelConfig) -> Self {
        let dim = cfg.qk_rope_head_dim;
        let base = cfg.rope.theta;
        let pos_freq: Vec<f64> = (0..dim / 2).map(|i| base.powf((2 * i) as f64 / dim as f64)).collect();
        let Some(y) = &cfg.rope.yarn else {
            return RopeTable { inv_freq: pos_freq.iter().map(|p| (1.0 / p) as f32).collect(), attention_factor: 1.0 };
        };
        let correction_dim = |rotations: f64| {
            dim as f64 * (y.original_max_position_embeddings as f64 / (rotations * 2.0 * PI)).ln() / (2.0 * base.ln())
        };
        let low = correction_dim(y.beta_fast).floor().max(0.0);
        let high = correction_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
        let span = if low == high { 0.001 } else { high - low };
        let inv_freq = pos_freq
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                let (interp, extra) = (1.0 / (y.factor * p), 1.0 / p);
                (interp * (1.0 - extrapolation) + extra * extrapolation) as f32
            })
            .collect();
        let attention_factor = y.attention_factor.unwrap_or_else(|| match (y.mscale, y.mscale_all_dim) {
            (Some(m), Some(a)) if m != 0.0 && a != 0.0 => yarn_mscale(y.factor, m) / yarn_mscale(y.factor, a),
            _ => yarn_mscale(y.factor, 1.0),
        }) as f32;
        RopeTable { inv_freq, attention_factor }
    }

    pub fn dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// For each position, `dim/2` cosines then `dim/2` sines, appended to `out`.
    pub fn fill(&self, positions: &[u32], out: &mut Vec<f32>) {
        out.clear();
        for &p in positions {
            // The angle is an f32 product, as the reference computes it.
            let angles = self.inv_freq.iter().map(|f| (f * p as f32) as f64);
            out.extend(angles.clone().map(|a| (a.cos() as f32) * self.attention_factor));
            out.extend(angles.map(|a| (a.sin() as f32) * self.attention_factor));
        }
    }
}
