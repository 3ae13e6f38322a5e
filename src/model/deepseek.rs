//! The DeepSeek-V3 / V3.2 decoder and its forward pass over a batch of sequences, each adding
//! a prefill chunk or one decode token to its cached past.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv_cache::{CacheFormats, KvCache, KvCacheDtype};
use crate::model::config::ModelConfig;
use crate::model::mla::{LayerCache, Mla, MlaScratch};
use crate::model::mlp::{Mlp, MlpScratch};
use crate::model::moe::{Moe, MoeScratch};
use crate::model::rope::RopeTable;
use crate::model::step::{SeqInput, StepLayout};
use crate::model::weights::Checkpoint;
use crate::model::{ActQuant, QuantPlan};
use crate::tensor::Tensor;

enum Ffn<B: Backend> {
    Dense(Mlp<B>),
    Moe(Moe<B>),
}

struct Layer<B: Backend> {
    input_norm: Tensor<B>,
    post_norm: Tensor<B>,
    attn: Mla<B>,
    ffn: Ffn<B>,
}

/// Buffers of one step, kept between steps so a warm engine allocates nothing.
struct Workspace<B: Backend> {
    step: StepLayout,
    cos_sin_host: Vec<f32>,
    cos_sin: Tensor<B>,
    /// The residual stream.
    h: Tensor<B>,
    /// Normed input of the current sublayer.
    x: Tensor<B>,
    attn: Tensor<B>,
    ffn: Tensor<B>,
    /// Final hidden states of the rows whose logits are wanted.
    head_in: Tensor<B>,
    logits: Tensor<B>,
    mla: MlaScratch<B>,
    mlp: MlpScratch<B>,
    moe: MoeScratch<B>,
}

impl<B: Backend> Workspace<B> {
    fn new(b: &B) -> Result<Self> {
        Ok(Workspace {
            step: StepLayout::default(),
            cos_sin_host: Vec::new(),
            cos_sin: b.zeros(0, 0)?,
            h: b.zeros(0, 0)?,
            x: b.zeros(0, 0)?,
            attn: b.zeros(0, 0)?,
            ffn: b.zeros(0, 0)?,
            head_in: b.zeros(0, 0)?,
            logits: b.zeros(0, 0)?,
            mla: MlaScratch::new(b)?,
            mlp: MlpScratch::new(b)?,
            moe: MoeScratch::new(b)?,
        })
    }
}

pub struct Model<B: Backend> {
    backend: B,
    config: ModelConfig,
    act: ActQuant,
    quant: QuantPlan,
    kv_dtype: KvCacheDtype,
    cache_formats: CacheFormats,
    embed: B::Linear,
    layers: Vec<Layer<B>>,
    norm: Tensor<B>,
    /// `None` when tied to the embedding.
    lm_head: Option<B::Linear>,
    rope: RopeTable,
    ws: Workspace<B>,
}

impl<B: Backend> Model<B> {
    /// Loads `config.json` and the weights of the model directory `dir`.
    pub fn load(backend: B, dir: &Path, act: ActQuant) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        Self::from_checkpoint(backend, config, &ckpt, act)
    }

    pub fn from_checkpoint(backend: B, config: ModelConfig, ckpt: &Checkpoint, act: ActQuant) -> Result<Self> {
        let b = &backend;
        let (d, v) = (config.hidden_size, config.vocab_size);
        let progress = ProgressBar::new(config.num_layers as u64 + 1).with_style(
            ProgressStyle::with_template("loading {msg} {bar:40} {pos}/{len} layers {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        progress.set_message(ckpt.dir().display().to_string());
        let embed = b.load_linear(&ckpt.linear("model.embed_tokens", v, d)?)?;
        let mut layers = Vec::new();
        for i in 0..config.num_layers {
            let p = format!("model.layers.{i}");
            let ffn = if config.is_moe_layer(i) {
                Ffn::Moe(Moe::load(b, ckpt, &format!("{p}.mlp"), &config)?)
            } else {
                Ffn::Dense(Mlp::load(b, ckpt, &format!("{p}.mlp"), d, config.intermediate_size)?)
            };
            layers.push(Layer {
                input_norm: b.load_vector(&ckpt.vector(&format!("{p}.input_layernorm.weight"), d)?)?,
                post_norm: b.load_vector(&ckpt.vector(&format!("{p}.post_attention_layernorm.weight"), d)?)?,
                attn: Mla::load(b, ckpt, &format!("{p}.self_attn"), &config)?,
                ffn,
            });
            progress.inc(1);
        }
        let norm = b.load_vector(&ckpt.vector("model.norm.weight", d)?)?;
        let lm_head =
            if config.tie_word_embeddings { None } else { Some(b.load_linear(&ckpt.linear("lm_head", v, d)?)?) };
        progress.inc(1);
        progress.finish_and_clear();
        let ws = Workspace::new(b)?;
        let kv_dtype = KvCacheDtype::Auto;
        let quant = QuantPlan::new(&config, act, kv_dtype);
        Ok(Model {
            cache_formats: CacheFormats::new(&config, kv_dtype, QuantPlan::checkpoint_fmt(&config))?,
            act,
            quant,
            kv_dtype,
            rope: RopeTable::new(&config),
            backend,
            config,
            embed,
            layers,
            norm,
            lm_head,
            ws,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The model with caches of `dtype` (`--kv-cache-dtype`; [`KvCacheDtype::Auto`] when
    /// loaded). Caches made before do not fit it any more.
    pub fn with_kv_cache_dtype(mut self, dtype: KvCacheDtype) -> Result<Self> {
        let quant = QuantPlan::new(&self.config, self.act, dtype);
        let index_fmt = quant.indexer.unwrap_or(QuantPlan::checkpoint_fmt(&self.config));
        self.cache_formats = CacheFormats::new(&self.config, dtype, index_fmt)?;
        self.quant = quant;
        self.kv_dtype = dtype;
        Ok(self)
    }

    pub fn kv_cache_dtype(&self) -> KvCacheDtype {
        self.kv_dtype
    }

    /// Bytes of KV cache one position takes, across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.config.num_layers * self.cache_formats.bytes_per_token()
    }

    /// An empty cache of `num_blocks` blocks for this model.
    pub fn new_cache(&self, num_blocks: usize) -> Result<KvCache<B>> {
        KvCache::new(&self.backend, self.cache_formats, self.config.num_layers, num_blocks)
    }

    /// Runs one step. Each sequence's new tokens are appended to its cache; the logits it asks
    /// for are left in [`Model::logits`], sequence by sequence in batch order.
    pub fn forward(&mut self, batch: &[SeqInput], cache: &mut KvCache<B>) -> Result<()> {
        self.run(batch, cache, None)
    }

    /// Like [`Model::forward`], and also returns the hidden state entering every layer plus the
    /// final normed one (`num_layers + 1` matrices of `[tokens, hidden]`, rows in batch order).
    pub fn forward_with_hidden(&mut self, batch: &[SeqInput], cache: &mut KvCache<B>) -> Result<Vec<Vec<f32>>> {
        let mut hidden = Vec::with_capacity(self.config.num_layers + 1);
        self.run(batch, cache, Some(&mut hidden))?;
        Ok(hidden)
    }

    /// Logits of the last step: `[rows asked for, vocab]`.
    pub fn logits(&self) -> &Tensor<B> {
        &self.ws.logits
    }

    /// The most likely next token of each logits row of the last step.
    pub fn argmax(&self) -> Result<Vec<u32>> {
        self.backend.argmax(&self.ws.logits)
    }

    fn run(
        &mut self,
        batch: &[SeqInput],
        cache: &mut KvCache<B>,
        mut hidden: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<()> {
        if cache.formats() != self.cache_formats
            || cache.latent.len() != self.layers.len()
            || cache.index.len() != self.layers.len() * usize::from(self.config.indexer.is_some())
        {
            return Err(Error::Input("the KV cache was made for another model".into()));
        }
        // The whole step runs on the backend's workers, so its kernels fork work from there
        // instead of handing each one over from this thread.
        self.backend.run_step(|| {
            let b = &self.backend;
            let ws = &mut self.ws;
            let (d, eps) = (self.config.hidden_size, self.config.rms_norm_eps);
            ws.step.build(batch, &self.config)?;
            let t = ws.step.rows();
            self.rope.fill(&ws.step.pos, &mut ws.cos_sin_host);
            b.resize(&mut ws.cos_sin, t, self.rope.dim())?;
            b.write(&mut ws.cos_sin, &ws.cos_sin_host)?;
            b.resize(&mut ws.h, t, d)?;
            b.embedding(&self.embed, &ws.step.tokens, &mut ws.h)?;
            b.resize(&mut ws.x, t, d)?;
            for (i, layer) in self.layers.iter().enumerate() {
                if i == 0 {
                    b.rms_norm(&ws.h, 0, &layer.input_norm, eps, &mut ws.x)?;
                } else {
                    b.add_rms_norm(&mut ws.h, &ws.ffn, &layer.input_norm, eps, &mut ws.x)?;
                }
                if let Some(out) = hidden.as_deref_mut() {
                    Self::capture(b, &ws.step, &ws.h, out)?;
                }
                let layer_cache = LayerCache { latent: &mut cache.latent[i], index: cache.index.get_mut(i) };
                layer.attn.forward(
                    b,
                    &ws.x,
                    &ws.cos_sin,
                    &ws.step,
                    &self.quant,
                    layer_cache,
                    &mut ws.mla,
                    &mut ws.attn,
                )?;
                b.add_rms_norm(&mut ws.h, &ws.attn, &layer.post_norm, eps, &mut ws.x)?;
                match &layer.ffn {
                    Ffn::Dense(mlp) => mlp.forward(b, &ws.x, self.quant.linear, &mut ws.mlp, &mut ws.ffn)?,
                    Ffn::Moe(moe) => moe.forward(b, &ws.x, self.quant.linear, &mut ws.moe, &mut ws.ffn)?,
                }
            }
            b.add_rms_norm(&mut ws.h, &ws.ffn, &self.norm, eps, &mut ws.x)?;
            if let Some(out) = hidden {
                Self::capture(b, &ws.step, &ws.x, out)?;
            }
            let n = ws.step.logit_rows.len();
            b.resize(&mut ws.head_in, n, d)?;
            for (j, &r) in ws.step.logit_rows.iter().enumerate() {
                b.copy_rows(&ws.x, r, &mut ws.head_in, j, 1)?;
            }
            b.resize(&mut ws.logits, n, self.config.vocab_size)?;
            b.linear(&ws.head_in, self.lm_head.as_ref().unwrap_or(&self.embed), None, &mut ws.logits)
        })
    }

    /// Appends `t`'s rows, in the caller's order, to `out`.
    fn capture(b: &B, step: &StepLayout, t: &Tensor<B>, out: &mut Vec<Vec<f32>>) -> Result<()> {
        let all = b.read(t)?;
        let d = t.cols();
        let mut rows = Vec::with_capacity(all.len());
        for &r in &step.caller_rows {
            rows.extend_from_slice(&all[r * d..(r + 1) * d]);
        }
        out.push(rows);
        Ok(())
    }
}
