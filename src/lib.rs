//! flashseek: an inference engine for the DeepSeek-V3.2 family.
//!
//! The model (`model`) is written once against the kernel interface (`backend::Backend`); the
//! CPU backend implements every kernel with DeepSeek's numerics. See `docs/architecture.md`.

pub mod backend;
pub mod bench;
pub mod bundled;
pub mod engine;
pub mod error;
pub mod fp8;
pub mod gemm_tiles;
pub mod kv_cache;
pub mod kv_layout;
pub mod metrics;
pub mod model;
pub mod server;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
