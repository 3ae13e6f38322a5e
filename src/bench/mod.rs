//! Benchmark clients for a running server: `bench serve` (load and latency, after SGLang's
//! `bench_serving`) and `bench accuracy` (GSM8K-style grading, after SGLang's gsm8k benchmark);
//! and `bench offline`, the engine in-process under `bench serve`'s workload.

pub mod accuracy;
pub mod dataset;
mod http;
pub mod offline;
mod pool;
pub mod serve;
pub mod stats;

pub use accuracy::{run_accuracy, AccuracyArgs, AccuracyReport};
pub use offline::{run_offline, OfflineArgs, OfflineReport};
pub use serve::{run_serve, ServeArgs, ServeReport};
