//! Compiles a small C++ program against the kernels' headers (`csrc/`) with the host compiler
//! and runs it: the index math and layouts the kernels share with these programs are then
//! checked on machines without a GPU. No contraction into FMAs (`-ffp-contract=off`), as the
//! device code rounds every operation explicitly.

use std::path::PathBuf;
use std::process::Command;

/// The program's stdout, or `None` (with a note) where this host has no C++ compiler (`c++`).
/// A program that does not compile or fails is a test failure.
pub fn run(name: &str, source: &str) -> Option<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let src = dir.join(format!("{name}.cpp"));
    let exe = dir.join(name);
    std::fs::write(&src, source).expect("write the host program");
    let built = Command::new("c++")
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Werror", "-I"])
        .arg(root.join("csrc"))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output();
    match built {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("compiling {name} for the host failed:\n{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("skipping {name}: no C++ compiler (`c++`): {e}");
            return None;
        }
    }
    let out = Command::new(&exe).output().expect("run the host program");
    assert!(out.status.success(), "{name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(out.stdout)
}

/// Whitespace-separated unsigned integers of a program's output.
pub fn numbers(out: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(out).split_whitespace().map(|w| w.parse().expect("a number")).collect()
}
