//! The body of each fuzz target, callable without libFuzzer (see `tests/replay.rs`).

pub mod chat_encoding;
pub mod config_json;
pub mod config_model_load;
pub mod output_parsers;
pub mod safetensors_checkpoint;
pub mod shard_index;
pub mod token_ids_cli_like;
pub mod tokenizer_decode;
