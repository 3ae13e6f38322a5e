//! The benches' shared pieces: their random data, and criterion's estimates read back to print
//! side-by-side ratios at the end of a run.
#![allow(dead_code)]

use std::path::PathBuf;

/// Mean time in nanoseconds of benchmark `group/id` from the run that just finished.
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = root.join("criterion").join(group).join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

/// `n` values in [-0.5, 0.5) from a xorshift seeded with `seed`: the benches' data.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
