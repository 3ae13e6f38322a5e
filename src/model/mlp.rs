//! The SiLU-gated MLP: dense layers and the shared experts.

use crate::backend::Backend;
use crate::error::Result;
use crate::fp8::ScaleFmt;
use crate::model::weights::Checkpoint;
use crate::tensor::Tensor;

pub struct Mlp<B: Backend> {
    gate: B::Linear,
    up: B::Linear,
    down: B::Linear,
    inter: usize,
}

/// Intermediate activations of an MLP, reused across steps.
pub struct MlpScratch<B: Backend> {
    gate: Tensor<B>,
    up: Tensor<B>,
}

impl<B: Backend> MlpScratch<B> {
    pub fn new(b: &B) -> Result<Self> {
        Ok(MlpScratch { gate: b.zeros(0, 0)?, up: b.zeros(0, 0)? })
    }
}

impl<B: Backend> Mlp<B> {
    pub fn load(b: &B, ckpt: &Checkpoint, prefix: &str, hidden: usize, inter: usize) -> Result<Self> {
        Ok(Mlp {
            gate: b.load_linear(&ckpt.linear(&format!("{prefix}.gate_proj"), inter, hidden)?)?,
            up: b.load_linear(&ckpt.linear(&format!("{prefix}.up_proj"), inter, hidden)?)?,
            down: b.load_linear(&ckpt.linear(&format!("{prefix}.down_proj"), hidden, inter)?)?,
            inter,
        })
    }

    /// `out = down(silu(gate(x)) * up(x))`.
    pub fn forward(
        &self,
        b: &B,
        x: &Tensor<B>,
        quant: Option<ScaleFmt>,
        s: &mut MlpScratch<B>,
        out: &mut Tensor<B>,
    ) -> Result<()> {
        let t = x.rows();
        b.resize(&mut s.gate, t, self.inter)?;
        b.resize(&mut s.up, t, self.inter)?;
        b.linear(x, &self.gate, quant, &mut s.gate)?;
        b.linear(x, &self.up, quant, &mut s.up)?;
        b.silu_mul(&mut s.gate, &s.up)?;
        b.resize(out, t, x.cols())?;
        b.linear(&s.gate, &self.down, quant, out)
    }
}
