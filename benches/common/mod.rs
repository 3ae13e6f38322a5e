//! Reads criterion's estimates back to print side-by-side ratios at the end of a bench run.
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
