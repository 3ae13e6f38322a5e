//! The MoE block: `noaux_tc` router, routed experts and shared experts.

use crate::backend::{Backend, HostExpert, RouterParams};
use crate::error::Result;
use crate::fp8::ScaleFmt;
use crate::model::config::ModelConfig;
use crate::model::mlp::{Mlp, MlpScratch};
use crate::model::weights::Checkpoint;
use crate::tensor::{IntTensor, Tensor};

pub struct Moe<B: Backend> {
    router: B::Linear,
    bias: Tensor<B>,
    experts: B::Experts,
    shared: Option<Mlp<B>>,
    params: RouterParams,
    n_experts: usize,
}

pub struct MoeScratch<B: Backend> {
    logits: Tensor<B>,
    idx: IntTensor<B>,
    weights: Tensor<B>,
    shared_out: Tensor<B>,
    shared: MlpScratch<B>,
}

impl<B: Backend> MoeScratch<B> {
    pub fn new(b: &B) -> Result<Self> {
        Ok(MoeScratch {
            logits: b.zeros(0, 0)?,
            idx: b.int_zeros(0, 0)?,
            weights: b.zeros(0, 0)?,
            shared_out: b.zeros(0, 0)?,
            shared: MlpScratch::new(b)?,
        })
    }
}

impl<B: Backend> Moe<B> {
    pub fn load(b: &B, ckpt: &Checkpoint, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let (d, m) = (cfg.hidden_size, &cfg.moe);
        let experts = (0..m.n_routed_experts)
            .map(|e| {
                let p = format!("{prefix}.experts.{e}");
                Ok(HostExpert {
                    gate: ckpt.linear(&format!("{p}.gate_proj"), m.intermediate_size, d)?,
                    up: ckpt.linear(&format!("{p}.up_proj"), m.intermediate_size, d)?,
                    down: ckpt.linear(&format!("{p}.down_proj"), d, m.intermediate_size)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = if m.n_shared_experts > 0 {
            Some(Mlp::load(b, ckpt, &format!("{prefix}.shared_experts"), d, m.intermediate_size * m.n_shared_experts)?)
        } else {
            None
        };
        Ok(Moe {
            router: b.load_linear(&ckpt.linear(&format!("{prefix}.gate"), m.n_routed_experts, d)?)?,
            bias: b
                .load_vector(&ckpt.vector(&format!("{prefix}.gate.e_score_correction_bias"), m.n_routed_experts)?)?,
            experts: b.load_experts(&experts)?,
            shared,
            params: RouterParams {
                n_group: m.n_group,
                topk_group: m.topk_group,
                top_k: m.experts_per_token,
                norm_topk_prob: m.norm_topk_prob,
                scaling: m.routed_scaling_factor,
            },
            n_experts: m.n_routed_experts,
        })
    }

    pub fn forward(
        &self,
        b: &B,
        x: &Tensor<B>,
        quant: Option<ScaleFmt>,
        s: &mut MoeScratch<B>,
        out: &mut Tensor<B>,
    ) -> Result<()> {
        let t = x.rows();
        let k = self.params.top_k;
        b.resize(&mut s.logits, t, self.n_experts)?;
        // The router runs in f32 on unquantized activations.
        b.linear(x, &self.router, None, &mut s.logits)?;
        b.resize_ints(&mut s.idx, t, k)?;
        b.resize(&mut s.weights, t, k)?;
        b.route(&s.logits, &self.bias, self.params, &mut s.idx, &mut s.weights)?;
        b.resize(out, t, x.cols())?;
        b.moe_experts(x, &self.experts, &s.idx, &s.weights, quant, out)?;
        if let Some(shared) = &self.shared {
            shared.forward(b, x, quant, &mut s.shared, &mut s.shared_out)?;
            b.add_assign(out, &s.shared_out)?;
        }
        Ok(())
    }
}
