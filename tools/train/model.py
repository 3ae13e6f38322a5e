"""DeepSeek-V3.2 for training, in float32 PyTorch: the architecture the engine runs (MLA with q
and kv LoRA, the lightning indexer choosing `index_topk` keys per query for sparse attention,
noaux_tc MoE over expert groups with a shared expert, the first layers dense), batched over
right-padded sequences. Parameter names are the hub checkpoint's, so `state_dict()` exports as it
is. Written for this project; tools/fixtures/fp8_reference.py (checked against transformers)
is the independent reference the export is compared with.

Training the indexer follows DeepSeek-V3.2's recipe: its scores are fitted to the main
attention's distribution (summed over heads) by a KL loss on detached inputs, first while the
main attention is still dense (warm-up), then while the main attention is sparse over the
indexer's own top-k.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Config:
    vocab_size: int
    hidden_size: int = 256
    num_hidden_layers: int = 4
    first_k_dense_replace: int = 1
    intermediate_size: int = 512
    num_attention_heads: int = 4
    q_lora_rank: int = 128
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    index_n_heads: int = 4
    index_head_dim: int = 32
    index_topk: int = 16
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 4
    topk_group: int = 2
    moe_intermediate_size: int = 128
    routed_scaling_factor: float = 1.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    bos_token_id: int = 0
    eos_token_id: int = 1

    def hub_config(self) -> dict:
        """config.json of the hub checkpoints (model_type deepseek_v32, FP8 128x128 blocks)."""
        c = dict(self.__dict__)
        c.update(
            {
                "architectures": ["DeepseekV32ForCausalLM"],
                "model_type": "deepseek_v32",
                "hidden_act": "silu",
                "num_key_value_heads": self.num_attention_heads,
                "moe_layer_freq": 1,
                "norm_topk_prob": True,
                "scoring_func": "sigmoid",
                "topk_method": "noaux_tc",
                "num_nextn_predict_layers": 0,
                "tie_word_embeddings": False,
                "initializer_range": 0.02,
                "use_cache": True,
                "torch_dtype": "bfloat16",
                "quantization_config": {
                    "activation_scheme": "dynamic",
                    "fmt": "e4m3",
                    "quant_method": "fp8",
                    "scale_fmt": "ue8m0",
                    "weight_block_size": [128, 128],
                },
            }
        )
        return dict(sorted(c.items()))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def linear(i: int, o: int) -> nn.Linear:
    return nn.Linear(i, o, bias=False)


def rope_interleaved(x, cos, sin):
    """Pairs (x[2i], x[2i+1]) rotate by frequency i (MLA's q_pe and k_pe)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).flatten(-2)


def rope_half(x, cos, sin):
    """Pairs (x[i], x[i + d/2]) rotate by frequency i (the indexer's q and k)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Indexer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.wq_b = linear(c.q_lora_rank, c.index_n_heads * c.index_head_dim)
        self.wk = linear(c.hidden_size, c.index_head_dim)
        self.k_norm = nn.LayerNorm(c.index_head_dim, eps=1e-6)
        self.weights_proj = linear(c.hidden_size, c.index_n_heads)

    def forward(self, x, qr, cos, sin):
        """Index scores [B, T, T] (unmasked) for every query/key pair."""
        c = self.c
        B, T, _ = x.shape
        dr = c.qk_rope_head_dim
        q = self.wq_b(qr).view(B, T, c.index_n_heads, c.index_head_dim)
        q = torch.cat([rope_half(q[..., :dr], cos[:, None], sin[:, None]), q[..., dr:]], -1)
        k = self.k_norm(self.wk(x))
        k = torch.cat([rope_half(k[..., :dr], cos, sin), k[..., dr:]], -1)
        w = self.weights_proj(x) * c.index_n_heads**-0.5
        dots = F.relu(torch.einsum("bthd,bsd->bhts", q, k) * c.index_head_dim**-0.5)
        return torch.einsum("bhts,bth->bts", dots, w)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        nh = c.num_attention_heads
        self.q_a_proj = linear(c.hidden_size, c.q_lora_rank)
        self.q_a_layernorm = RMSNorm(c.q_lora_rank, 1e-6)
        self.q_b_proj = linear(c.q_lora_rank, nh * (c.qk_nope_head_dim + c.qk_rope_head_dim))
        self.kv_a_proj_with_mqa = linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, 1e-6)
        self.kv_b_proj = linear(c.kv_lora_rank, nh * (c.qk_nope_head_dim + c.v_head_dim))
        self.o_proj = linear(nh * c.v_head_dim, c.hidden_size)
        self.indexer = Indexer(c)
        self.scale = (c.qk_nope_head_dim + c.qk_rope_head_dim) ** -0.5

    def forward(self, x, cos, sin, causal, sparse: bool):
        """Returns (output, indexer KL loss per query [B, T])."""
        c = self.c
        B, T, _ = x.shape
        nh, dn, dr, dv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        qr = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(qr).view(B, T, nh, dn + dr)
        q_pe = rope_interleaved(q[..., dn:], cos[:, None], sin[:, None])
        kv = self.kv_a_proj_with_mqa(x)
        lat = self.kv_a_layernorm(kv[..., : c.kv_lora_rank])
        k_pe = rope_interleaved(kv[..., c.kv_lora_rank :], cos, sin)
        kvb = self.kv_b_proj(lat).view(B, T, nh, dn + dv)
        scores = (
            torch.einsum("bthd,bshd->bhts", q[..., :dn], kvb[..., :dn])
            + torch.einsum("bthr,bsr->bhts", q_pe, k_pe)
        ) * self.scale + causal
        # The indexer learns from detached inputs, as in DeepSeek-V3.2: its loss shapes only it.
        index = self.indexer(x.detach(), qr.detach(), cos, sin) + causal[:, 0]
        with torch.no_grad():
            dense = scores.softmax(-1).sum(1) / nh
        # masked keys have p = 0 and log q = -inf: leave them out rather than form 0 * inf
        logq = index.log_softmax(-1)
        kl = torch.where(dense > 0, dense * (dense.clamp_min(1e-30).log() - logq), 0.0).sum(-1)
        if sparse and T > c.index_topk:
            sel = index.detach().topk(c.index_topk, -1).indices
            keep = torch.full_like(index, float("-inf")).scatter_(-1, sel, 0.0)
            scores = scores + keep[:, None]
        o = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), kvb[..., dn:])
        return self.o_proj(o.reshape(B, T, nh * dv)), kl


    @torch.no_grad()
    def extend(self, x, cos, sin, cache: dict):
        """Inference on new tokens x [B, t] after the cached ones (same length in every row):
        appends their keys to `cache` and attends over everything, sparse over the indexer's
        top-k once there are more than index_topk keys."""
        c = self.c
        B, T, _ = x.shape
        nh, dn, dr, dv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        qr = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(qr).view(B, T, nh, dn + dr)
        q_pe = rope_interleaved(q[..., dn:], cos[:, None], sin[:, None])
        kv = self.kv_a_proj_with_mqa(x)
        kvb = self.kv_b_proj(self.kv_a_layernorm(kv[..., : c.kv_lora_rank])).view(B, T, nh, dn + dv)
        ix = self.indexer
        ik = ix.k_norm(ix.wk(x))
        ik = torch.cat([rope_half(ik[..., :dr], cos, sin), ik[..., dr:]], -1)
        new = {"kvb": kvb, "pe": rope_interleaved(kv[..., c.kv_lora_rank :], cos, sin), "ik": ik}
        for k, v in new.items():
            cache[k] = v if k not in cache else torch.cat([cache[k], v], 1)
        S = cache["kvb"].shape[1]
        start = S - T
        causal = torch.full((T, S), float("-inf")).triu(start + 1)
        scores = (
            torch.einsum("bthd,bshd->bhts", q[..., :dn], cache["kvb"][..., :dn])
            + torch.einsum("bthr,bsr->bhts", q_pe, cache["pe"])
        ) * self.scale + causal
        iq = ix.wq_b(qr).view(B, T, c.index_n_heads, c.index_head_dim)
        iq = torch.cat([rope_half(iq[..., :dr], cos[:, None], sin[:, None]), iq[..., dr:]], -1)
        w = ix.weights_proj(x) * c.index_n_heads**-0.5
        dots = F.relu(torch.einsum("bthd,bsd->bhts", iq, cache["ik"]) * c.index_head_dim**-0.5)
        index = torch.einsum("bhts,bth->bts", dots, w) + causal
        if S > c.index_topk:
            sel = index.topk(c.index_topk, -1).indices
            scores = scores + torch.full_like(index, float("-inf")).scatter_(-1, sel, 0.0)[:, None]
        o = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), cache["kvb"][..., dn:])
        return self.o_proj(o.reshape(B, T, nh * dv))


class Mlp(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = linear(hidden, inter)
        self.up_proj = linear(hidden, inter)
        self.down_proj = linear(inter, hidden)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c.n_routed_experts, c.hidden_size))
        nn.init.normal_(self.weight, std=0.02)
        # Auxiliary-loss-free balancing: a bias that only steers the choice, nudged after each
        # step towards equal load (not trained by the optimizer).
        self.register_buffer("e_score_correction_bias", torch.zeros(c.n_routed_experts))


class Moe(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.gate = Gate(c)
        self.experts = nn.ModuleList(Mlp(c.hidden_size, c.moe_intermediate_size) for _ in range(c.n_routed_experts))
        self.shared_experts = Mlp(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts)

    def route(self, x):
        """noaux_tc: sigmoid scores, the best topk_group groups by their two best biased scores,
        then the top experts among them; weights are the unbiased scores, normalized."""
        c = self.c
        scores = (x @ self.gate.weight.t()).sigmoid()
        choice = scores + self.gate.e_score_correction_bias
        N, E = choice.shape
        groups = choice.detach().view(N, c.n_group, -1).topk(2, -1).values.sum(-1)
        gi = groups.topk(c.topk_group, -1).indices
        gm = torch.zeros(N, c.n_group, dtype=torch.bool).scatter_(1, gi, True)
        choice = choice.detach().masked_fill(~gm.repeat_interleave(E // c.n_group, 1), float("-inf"))
        idx = choice.topk(c.num_experts_per_tok, -1).indices
        w = scores.gather(1, idx)
        w = w / (w.sum(-1, keepdim=True) + 1e-20) * c.routed_scaling_factor
        return idx, w

    def forward(self, x, valid):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, w = self.route(x)
        y = self.shared_experts(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(idx == e)
            if rows.numel():
                y = y.index_add(0, rows, expert(x[rows]) * w[rows, slot, None])
        load = torch.bincount(idx[valid.reshape(-1) > 0].reshape(-1), minlength=self.c.n_routed_experts)
        return y.view(shape), load


class Layer(nn.Module):
    def __init__(self, c: Config, i: int):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = Mlp(c.hidden_size, c.intermediate_size) if i < c.first_k_dense_replace else Moe(c)


class Inner(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class DeepseekV32(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        self.lm_head = linear(c.hidden_size, c.vocab_size)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "gate.weight" not in name:
                nn.init.normal_(p, std=0.02)
        # Residual branches start small, as in GPT-2: the scale of the output projections
        # shrinks with depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.data.mul_(1 / math.sqrt(2 * c.num_hidden_layers))
        d = c.qk_rope_head_dim
        self.register_buffer("inv_freq", 1.0 / c.rope_theta ** (torch.arange(0, d, 2).float() / d), persistent=False)

    def forward(self, ids, valid, sparse: bool):
        """Logits [B, T, V], the mean indexer KL over valid queries and layers, and each MoE
        layer's expert load over valid tokens."""
        B, T = ids.shape
        f = torch.arange(T, dtype=torch.float32)[:, None] * self.inv_freq[None]
        cos, sin = f.cos(), f.sin()
        causal = torch.full((T, T), float("-inf")).triu(1)[None, None]
        h = self.model.embed_tokens(ids)
        kls, loads = [], []
        for layer in self.model.layers:
            a, kl = layer.self_attn(layer.input_layernorm(h), cos, sin, causal, sparse)
            h = h + a
            kls.append((kl * valid).sum() / valid.sum())
            xn = layer.post_attention_layernorm(h)
            if isinstance(layer.mlp, Moe):
                m, load = layer.mlp(xn, valid)
                loads.append(load)
            else:
                m = layer.mlp(xn)
            h = h + m
        return self.lm_head(self.model.norm(h)), torch.stack(kls).mean(), loads

    @torch.no_grad()
    def extend(self, ids, caches: list[dict]):
        """Logits [B, t, V] for new tokens ids [B, t] after what `caches` hold (one dict per layer)."""
        B, T = ids.shape
        start = caches[0]["kvb"].shape[1] if caches[0] else 0
        f = torch.arange(start, start + T, dtype=torch.float32)[:, None] * self.inv_freq[None]
        cos, sin = f.cos(), f.sin()
        h = self.model.embed_tokens(ids)
        valid = torch.ones(B, T)
        for layer, cache in zip(self.model.layers, caches):
            h = h + layer.self_attn.extend(layer.input_layernorm(h), cos, sin, cache)
            xn = layer.post_attention_layernorm(h)
            h = h + (layer.mlp(xn, valid)[0] if isinstance(layer.mlp, Moe) else layer.mlp(xn))
        return self.lm_head(self.model.norm(h))

    @torch.no_grad()
    def greedy(self, prompts: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
        """Greedy continuations (up to and including eos) of prompts of one length, batched."""
        caches = [{} for _ in self.model.layers]
        logits = self.extend(torch.tensor(prompts), caches)[:, -1]
        out = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool)
        for _ in range(max_new):
            nxt = logits.argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    out[i].append(t)
            done |= nxt == eos
            if bool(done.all()):
                break
            logits = self.extend(nxt[:, None], caches)[:, -1]
        return out

    def export_state(self) -> dict:
        """The hub checkpoint's tensors in float32 (buffers included, rope table excluded)."""
        return {k: v.detach().clone().float().contiguous() for k, v in self.state_dict().items()}
