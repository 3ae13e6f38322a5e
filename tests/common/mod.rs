//! Shared test helpers: the comparator every kernel and model test reports through, and
//! readers for the reference fixtures in `tests/fixtures`.
#![allow(dead_code)]

pub mod fixture_checks;

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

/// How far `got` is from `want`, row by row.
#[derive(Debug, Clone)]
pub struct Report {
    /// Largest `|got - want|` and where (flat index).
    pub worst_abs: f64,
    pub worst_at: usize,
    /// Per-row `‖got − want‖ / ‖want‖`.
    pub row_rel: Vec<f64>,
    /// Cosine similarity of the whole tensors.
    pub cosine: f64,
    /// Flat indices where exactly one side is NaN/inf, or both are but differently.
    pub nonfinite_mismatch: Vec<usize>,
}

impl Report {
    pub fn max_rel(&self) -> f64 {
        self.row_rel.iter().cloned().fold(0.0, f64::max)
    }

    pub fn median_rel(&self) -> f64 {
        median(&self.row_rel)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rel err per row: median {:.3e} max {:.3e}; worst |Δ| {:.3e} at {}; cosine {:.9}; non-finite mismatches {}",
            self.median_rel(),
            self.max_rel(),
            self.worst_abs,
            self.worst_at,
            self.cosine,
            self.nonfinite_mismatch.len()
        )
    }
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Compares `got` with `want` viewed as rows of `cols` values.
pub fn compare(got: &[f32], want: &[f64], cols: usize) -> Report {
    assert_eq!(got.len(), want.len(), "compared tensors differ in length");
    assert!(cols > 0 && got.len() % cols == 0, "{} values are not rows of {cols}", got.len());
    let mut worst_abs = 0.0;
    let mut worst_at = 0;
    let mut nonfinite_mismatch = Vec::new();
    let (mut dot, mut ng, mut nw) = (0.0, 0.0, 0.0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if !g.is_finite() || !w.is_finite() {
            let same = (g.is_nan() && w.is_nan()) || g == w;
            if !same {
                nonfinite_mismatch.push(i);
            }
            continue;
        }
        let d = (g - w).abs();
        if d > worst_abs {
            worst_abs = d;
            worst_at = i;
        }
        dot += g * w;
        ng += g * g;
        nw += w * w;
    }
    let row_rel = got
        .chunks(cols)
        .zip(want.chunks(cols))
        .map(|(g, w)| {
            let num: f64 = g.iter().zip(w).map(|(&g, &w)| (g as f64 - w).powi(2)).sum::<f64>().sqrt();
            let den: f64 = w.iter().map(|w| w * w).sum::<f64>().sqrt();
            if den == 0.0 {
                num
            } else {
                num / den
            }
        })
        .collect();
    let cosine = if ng == 0.0 || nw == 0.0 { f64::from(u8::from(ng == nw)) } else { dot / (ng.sqrt() * nw.sqrt()) };
    Report { worst_abs, worst_at, row_rel, cosine, nonfinite_mismatch }
}

/// Panics with the report unless every row's relative error is at most `tol` and non-finite
/// values agree.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], cols: usize, tol: f64) -> Report {
    let r = compare(got, want, cols);
    assert!(r.nonfinite_mismatch.is_empty(), "{what}: NaN/inf positions differ: {r}");
    assert!(r.max_rel() <= tol, "{what}: {r} (tolerance {tol:e})");
    r
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The directory of a fixture under `tests/fixtures`, or of the bundled model (which carries
/// reference files of the same format) by its name.
pub fn fixture(name: &str) -> PathBuf {
    if name == flashseek::bundled::NAME {
        return flashseek::bundled::dir();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A tensor read back from a safetensors file: its shape and values as f64.
#[derive(Debug, Clone)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Array {
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }

    pub fn ids(&self) -> Vec<u32> {
        self.data.iter().map(|&v| v as u32).collect()
    }

    /// Rows `r0..r1` of a 2-D array.
    pub fn rows(&self, r0: usize, r1: usize) -> Vec<f64> {
        let c = self.cols();
        self.data[r0 * c..r1 * c].to_vec()
    }
}

/// Every tensor of a safetensors file (F32, F64, I64, I32).
pub fn read_safetensors(path: &std::path::Path) -> HashMap<String, Array> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let b = view.data();
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                d => panic!("{}: tensor {name} has unsupported dtype {d:?}", path.display()),
            };
            (name, Array { shape: view.shape().to_vec(), data })
        })
        .collect()
}

use flashseek::backend::{Backend, CpuBackend};
use flashseek::kv_cache::{KvCache, BLOCK_SIZE};
use flashseek::model::{ActQuant, Logits, Model, SeqInput};

pub fn load_model(name: &str, act: ActQuant) -> Model<CpuBackend> {
    load_model_on(CpuBackend::new(), name, act)
}

pub fn load_model_on<B: Backend>(backend: B, name: &str, act: ActQuant) -> Model<B> {
    Model::load(backend, &fixture(name), act).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// One sequence of its own cache, fed chunk by chunk.
pub struct Session<B: Backend> {
    pub cache: KvCache<B>,
    pub table: Vec<u32>,
    pub len: usize,
}

impl<B: Backend> Session<B> {
    pub fn new(model: &Model<B>, capacity: usize) -> Self {
        let mut cache = model.new_cache(capacity.div_ceil(BLOCK_SIZE)).unwrap();
        let mut table = Vec::new();
        cache.reserve(&mut table, capacity).unwrap();
        Session { cache, table, len: 0 }
    }

    /// Appends `tokens` and returns the logits asked for.
    pub fn feed(&mut self, model: &mut Model<B>, tokens: &[u32], logits: Logits) -> Vec<f32> {
        let batch = [SeqInput { tokens, start_pos: self.len, block_table: &self.table, logits }];
        model.forward(&batch, &mut self.cache).unwrap();
        self.len += tokens.len();
        model.backend().read(model.logits()).unwrap()
    }
}

/// Logits of every position of `ids`: one prefill pass, or one token at a time.
pub fn logits_of<B: Backend>(model: &mut Model<B>, ids: &[u32], decode: bool) -> Vec<f32> {
    let mut s = Session::new(model, ids.len());
    if decode {
        ids.iter().flat_map(|t| s.feed(model, std::slice::from_ref(t), Logits::All)).collect()
    } else {
        s.feed(model, ids, Logits::All)
    }
}

/// `prompt` in one prefill, then `forced` one token at a time (teacher forcing): the prompt's
/// logits as `prompt_logits` asks, then one row after each forced token.
pub fn teacher_forced<B: Backend>(
    model: &mut Model<B>,
    prompt: &[u32],
    forced: &[u32],
    prompt_logits: Logits,
) -> Vec<f32> {
    let mut s = Session::new(model, prompt.len() + forced.len());
    let mut all = s.feed(model, prompt, prompt_logits);
    for t in forced {
        all.extend(s.feed(model, std::slice::from_ref(t), Logits::Last));
    }
    all
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Fraction of rows whose argmax agrees.
pub fn argmax_agreement(got: &[f32], want: &[f64], cols: usize) -> f64 {
    let rows = got.len() / cols;
    let same = (0..rows)
        .filter(|&r| {
            let w = &want[r * cols..(r + 1) * cols];
            let mut best = 0;
            for (i, &v) in w.iter().enumerate() {
                if v > w[best] {
                    best = i;
                }
            }
            argmax(&got[r * cols..(r + 1) * cols]) as usize == best
        })
        .count();
    same as f64 / rows.max(1) as f64
}
