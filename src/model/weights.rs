//! Checkpoints in the Hugging Face hub layout: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`; memory-mapped, never copied as a whole.
//!
//! Tensors come out as `HostTensor`s (a dtype, a shape and bytes in the mapping) after their
//! dtype and shape have been checked; a backend turns them into its own weights.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::fp8::E4M3_TO_F32;
use crate::model::config::FP8_BLOCK;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
    F16,
    F8E4M3,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
            DType::F8E4M3 => 1,
        }
    }

    fn from_safetensors(d: Dtype) -> Option<Self> {
        match d {
            Dtype::F32 => Some(DType::F32),
            Dtype::BF16 => Some(DType::Bf16),
            Dtype::F16 => Some(DType::F16),
            Dtype::F8_E4M3 => Some(DType::F8E4M3),
            _ => None,
        }
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

/// A byte range of a memory-mapped file (or of an owned buffer), cheap to clone.
#[derive(Clone)]
pub struct Bytes {
    storage: Arc<Storage>,
    start: usize,
    len: usize,
}

impl Bytes {
    pub fn owned(data: Vec<u8>) -> Self {
        let len = data.len();
        Bytes { storage: Arc::new(Storage::Owned(data)), start: 0, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        let all: &[u8] = match &*self.storage {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        };
        &all[self.start..self.start + self.len]
    }
}

/// A tensor of a checkpoint: its name, dtype, shape and raw little-endian bytes.
#[derive(Clone)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

impl HostTensor {
    pub fn from_f32(name: &str, shape: Vec<usize>, data: &[f32]) -> Self {
        Self::from_bytes(name, DType::F32, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn from_bf16(name: &str, shape: Vec<usize>, data: &[bf16]) -> Self {
        Self::from_bytes(name, DType::Bf16, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn from_f16(name: &str, shape: Vec<usize>, data: &[f16]) -> Self {
        Self::from_bytes(name, DType::F16, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// e4m3fn codes, one byte per value.
    pub fn from_e4m3(name: &str, shape: Vec<usize>, codes: Vec<u8>) -> Self {
        Self::from_bytes(name, DType::F8E4M3, shape, codes)
    }

    fn from_bytes(name: &str, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Self {
        debug_assert_eq!(bytes.len(), shape.iter().product::<usize>() * dtype.size());
        HostTensor { name: name.to_string(), dtype, shape, bytes: Bytes::owned(bytes) }
    }

    /// All values as f32 (FP8 codes decoded without any scale).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes.as_slice();
        match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::Bf16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F8E4M3 => b.iter().map(|&c| E4M3_TO_F32[c as usize]).collect(),
        }
    }
}

/// A projection weight `[out, in]`; FP8 weights carry one f32 `scale_inv` per 128x128 block.
#[derive(Clone)]
pub struct HostLinear {
    pub weight: HostTensor,
    pub scale_inv: Option<Vec<f32>>,
}

impl HostLinear {
    pub fn rows(&self) -> usize {
        self.weight.shape[0]
    }

    pub fn cols(&self) -> usize {
        self.weight.shape[1]
    }
}

/// Blocks of 128 needed to cover `n`.
pub fn blocks(n: usize) -> usize {
    n.div_ceil(FP8_BLOCK)
}

struct Shard {
    path: PathBuf,
    map: Arc<Storage>,
    data_start: usize,
    meta: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the checkpoint is opened read-only; like every inference engine we assume
        // nobody rewrites it while it is served.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
        Ok(Shard { path: path.to_path_buf(), map: Arc::new(Storage::Mapped(map)), data_start: 8 + header_len, meta })
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// An opened checkpoint directory.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// tensor name -> shard that holds it
    location: HashMap<String, usize>,
}

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let mut shards = Vec::new();
        let mut location = HashMap::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let index: ShardIndex = serde_json::from_str(&text)
                .map_err(|e| Error::checkpoint(&index_path, format!("invalid shard index: {e}")))?;
            let mut files: Vec<&String> = index.weight_map.values().collect();
            files.sort();
            files.dedup();
            let mut shard_of_file = HashMap::new();
            for f in files {
                if f.is_empty() || f == "." || f == ".." || f.contains('/') || f.contains('\\') {
                    return Err(Error::checkpoint(&index_path, format!("shard name {f:?} is not a file name")));
                }
                let path = dir.join(f);
                if !path.exists() {
                    return Err(Error::checkpoint(&index_path, format!("lists shard {f:?}, which does not exist")));
                }
                shard_of_file.insert(f.clone(), shards.len());
                shards.push(Shard::open(&path)?);
            }
            for (name, file) in &index.weight_map {
                let s = shard_of_file[file];
                if shards[s].meta.info(name).is_none() {
                    return Err(Error::checkpoint(
                        &shards[s].path,
                        format!("the shard index places tensor `{name}` here, but the file does not hold it"),
                    ));
                }
                location.insert(name.clone(), s);
            }
        } else if single_path.exists() {
            let shard = Shard::open(&single_path)?;
            for name in shard.meta.offset_keys() {
                location.insert(name, 0);
            }
            shards.push(shard);
        } else {
            return Err(Error::checkpoint(dir, format!("no {SINGLE_FILE} or {INDEX_FILE} in the model directory")));
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), shards, location })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tensor `name`, checked to have shape `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let &s =
            self.location.get(name).ok_or_else(|| Error::checkpoint(&self.dir, format!("missing tensor `{name}`")))?;
        let shard = &self.shards[s];
        let info = shard.meta.info(name).expect("location only lists tensors present in their shard");
        let dtype = DType::from_safetensors(info.dtype).ok_or_else(|| {
            Error::checkpoint(
                &shard.path,
                format!("tensor `{name}` has dtype {:?}; supported: F32, BF16, F16, F8_E4M3", info.dtype),
            )
        })?;
        if info.shape != shape {
            return Err(Error::checkpoint(
                &shard.path,
                format!("tensor `{name}` has shape {:?}, expected {shape:?}", info.shape),
            ));
        }
        let (start, end) = info.data_offsets;
        Ok(HostTensor {
            name: name.to_string(),
            dtype,
            shape: info.shape.clone(),
            bytes: Bytes { storage: shard.map.clone(), start: shard.data_start + start, len: end - start },
        })
    }

    /// A 1-D weight (norm scale, bias) of length `len`: stored in a float format, since it has
    /// no scales that an FP8 encoding would need.
    pub fn vector(&self, name: &str, len: usize) -> Result<HostTensor> {
        let t = self.tensor(name, &[len])?;
        if t.dtype == DType::F8E4M3 {
            return Err(Error::checkpoint(
                &self.dir,
                format!("tensor `{name}` is F8_E4M3 but has no scales; expected F32, BF16 or F16"),
            ));
        }
        Ok(t)
    }

    /// The projection `{prefix}.weight` of shape `[rows, cols]`, with its block scales
    /// `{prefix}.weight_scale_inv` when it is stored in FP8.
    pub fn linear(&self, prefix: &str, rows: usize, cols: usize) -> Result<HostLinear> {
        let weight = self.tensor(&format!("{prefix}.weight"), &[rows, cols])?;
        let scale_inv = if weight.dtype == DType::F8E4M3 {
            let name = format!("{prefix}.weight_scale_inv");
            let scales = self.tensor(&name, &[blocks(rows), blocks(cols)])?;
            if scales.dtype == DType::F8E4M3 {
                return Err(Error::checkpoint(
                    &self.dir,
                    format!("tensor `{name}` must be a float scale, not F8_E4M3"),
                ));
            }
            let values = scales.to_f32();
            if let Some(bad) = values.iter().find(|v| !v.is_finite() || **v <= 0.0) {
                return Err(Error::checkpoint(&self.dir, format!("tensor `{name}` holds an invalid scale {bad}")));
            }
            Some(values)
        } else {
            None
        };
        Ok(HostLinear { weight, scale_inv })
    }
}
