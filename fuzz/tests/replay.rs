//! Replays every seed (`seeds/<target>/*`) and every saved crash (`regressions/<target>/*`)
//! through the fuzz targets' bodies, without libFuzzer or sanitizers, on the stable toolchain:
//! `cargo test --manifest-path fuzz/Cargo.toml`. Overflow checks are on (the dev profile), as in
//! `cargo fuzz run`.
//!
//! The reproducers in `regressions/` panicked before the bugs they found were fixed (see
//! `fuzz/README.md`); `regressions_do_not_panic` keeps them fixed.

use std::path::{Path, PathBuf};

use fuzz_common::targets;

/// A target's name and body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 8] = [
    ("config_json", targets::config_json::run),
    ("config_model_load", targets::config_model_load::run),
    ("safetensors_checkpoint", targets::safetensors_checkpoint::run),
    ("shard_index", targets::shard_index::run),
    ("token_ids_cli_like", targets::token_ids_cli_like::run),
    ("output_parsers", targets::output_parsers::run),
    ("chat_encoding", targets::chat_encoding::run),
    ("tokenizer_decode", targets::tokenizer_decode::run),
];

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs every input of `kind`; returns the ones that panicked, with the panic message.
fn replay(kind: &str) -> (usize, Vec<String>) {
    let mut ran = 0;
    let mut failures = Vec::new();
    for (target, run) in TARGETS {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).unwrap();
            ran += 1;
            if let Err(e) = std::panic::catch_unwind(|| run(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", file.display()));
            }
        }
    }
    (ran, failures)
}

#[test]
fn seeds_do_not_panic() {
    let (ran, failures) = replay("seeds");
    assert!(ran > 0, "no seeds found");
    assert!(failures.is_empty(), "seeds that panic:\n{}", failures.join("\n"));
}

#[test]
fn regressions_do_not_panic() {
    let (ran, failures) = replay("regressions");
    assert!(ran > 0, "no reproducers found");
    assert!(failures.is_empty(), "reproducers that still panic:\n{}", failures.join("\n"));
}
