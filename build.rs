//! Build script: stamps the binary with the source revision it was built from and, with the
//! `cuda` feature, builds the kernels: every `.cu` under `csrc/` through nvcc into an sm_90a cubin
//! (OUT_DIR/cubin/, listed in OUT_DIR/cubins.rs, embedded by `backend::cuda`), and the Rust mirror of
//! `csrc/include/flashseek/params.h` (OUT_DIR/params.rs, through bindgen).

use std::process::Command;

fn main() {
    // Asked of git rather than assumed to be .git/...: in a worktree `.git` is a file, and a
    // path that does not exist makes cargo rerun this script (and nvcc) on every build.
    for path in git(&["rev-parse", "--git-path", "HEAD", "--git-path", "refs"]).unwrap_or_default().lines() {
        println!("cargo:rerun-if-changed={path}");
    }
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown revision".into());
    println!("cargo:rustc-env=FLASHSEEK_REVISION={revision}");

    #[cfg(feature = "cuda")]
    if let Err(e) = kernels::build() {
        // A build script reports failure by exiting non-zero; the message is what the user sees.
        eprintln!("error: building the CUDA kernels failed:\n{e}");
        std::process::exit(1);
    }
}

/// The trimmed output of a git command; `None` outside a git checkout.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
}

#[cfg(feature = "cuda")]
mod kernels {
    use std::env;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// nvcc flags for every kernel: Hopper with its arch-specific features (wgmma needs sm_90a),
    /// and `-DNDEBUG` because CuTe's asserts make ptxas serialize wgmma.
    const NVCC_FLAGS: &[&str] =
        &["-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr", "-DNDEBUG", "-O3"];

    /// Files compiled at once: a CuTe GEMM kernel peaks near 1 GB and the build machines have
    /// two cores.
    const PARALLEL_COMPILES: usize = 2;

    const ENV_VARS: &[&str] = &["NVCC", "CUDA_HOME", "CUTLASS_INCLUDE", "LIBCLANG_PATH"];

    pub fn build() -> Result<(), String> {
        for var in ENV_VARS {
            println!("cargo:rerun-if-env-changed={var}");
        }
        let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?);
        let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
        let csrc = root.join("csrc");
        // A directory entry makes cargo rerun when a file is added anywhere below it.
        println!("cargo:rerun-if-changed={}", csrc.display());

        let mut sources = Vec::new();
        walk(&csrc, &mut sources)?;
        sources.sort();
        for f in &sources {
            println!("cargo:rerun-if-changed={}", f.display());
        }
        let cu: Vec<PathBuf> = sources.into_iter().filter(|p| p.extension().is_some_and(|e| e == "cu")).collect();
        if cu.is_empty() {
            return Err(format!("no .cu files under {}", csrc.display()));
        }

        let nvcc = find_nvcc()?;
        let cutlass = env::var_os("CUTLASS_INCLUDE").map(PathBuf::from).ok_or_else(|| {
            "CUTLASS_INCLUDE is not set; run `eval \"$(scripts/install-cuda-toolchain.sh)\"` first".to_string()
        })?;
        let include = csrc.join("include");
        let cubin_dir = out.join("cubin");
        let ptxas_dir = out.join("ptxas");
        for d in [&cubin_dir, &ptxas_dir] {
            fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }

        let jobs: Vec<Job> = cu
            .iter()
            .map(|src| {
                let name = flat_name(&csrc, src);
                Job {
                    src: src.clone(),
                    cubin: cubin_dir.join(format!("{name}.cubin")),
                    report: ptxas_dir.join(format!("{name}.txt")),
                }
            })
            .collect();
        let next = AtomicUsize::new(0);
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_COMPILES.min(jobs.len()) {
                s.spawn(|| {
                    while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if let Err(e) = compile(&nvcc, &include, &cutlass, job) {
                            errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                        }
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
        if !errors.is_empty() {
            return Err(errors.join("\n"));
        }

        cubin_index(&csrc, &jobs, &out.join("cubins.rs"))?;
        params(&include.join("flashseek/params.h"), &out.join("params.rs"))
    }

    struct Job {
        src: PathBuf,
        cubin: PathBuf,
        report: PathBuf,
    }

    fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
        let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            if path.is_dir() {
                walk(&path, files)?;
            } else if path.extension().is_some_and(|e| e == "cu" || e == "cuh" || e == "h") {
                files.push(path);
            }
        }
        Ok(())
    }

    /// `csrc/sm90/norm/rms_norm.cu` -> `sm90_norm_rms_norm`: unique, and flat for OUT_DIR.
    fn flat_name(csrc: &Path, src: &Path) -> String {
        let rel = src.strip_prefix(csrc).unwrap_or(src).with_extension("");
        rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("_")
    }

    /// `$NVCC`, then `$CUDA_HOME/bin/nvcc`, then `nvcc` on `PATH`.
    fn find_nvcc() -> Result<PathBuf, String> {
        let path: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
        let candidates = env::var_os("NVCC")
            .map(PathBuf::from)
            .into_iter()
            .chain(env::var_os("CUDA_HOME").map(|h| Path::new(&h).join("bin/nvcc")))
            .chain(path.into_iter().map(|d| d.join("nvcc")));
        for c in candidates {
            if c.is_file() {
                return Ok(c);
            }
        }
        Err("nvcc not found in $NVCC, $CUDA_HOME/bin or PATH. The `cuda` feature needs the CUDA 13.0 \
             toolchain: run `eval \"$(scripts/install-cuda-toolchain.sh)\"` and build again"
            .into())
    }

    /// One `.cu` to a cubin; its ptxas report goes to `job.report`. A kernel that spills fails:
    /// spills to local memory are a performance bug we want to see at build time.
    fn compile(nvcc: &Path, include: &Path, cutlass: &Path, job: &Job) -> Result<(), String> {
        let output = Command::new(nvcc)
            .args(NVCC_FLAGS)
            .arg("-I")
            .arg(include)
            .arg("-I")
            .arg(cutlass)
            .args(["-Xptxas", "-v", "-cubin", "-o"])
            .arg(&job.cubin)
            .arg(&job.src)
            .output()
            .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
        // ptxas writes its report to stderr, along with any compiler diagnostics.
        let report = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            return Err(format!("nvcc failed on {}:\n{report}", job.src.display()));
        }
        fs::write(&job.report, &report).map_err(|e| format!("{}: {e}", job.report.display()))?;
        let spills: Vec<&str> = report.lines().filter(|l| spill_stores(l) > 0).collect();
        if !spills.is_empty() {
            return Err(format!(
                "{} spills registers (full report in {}):\n{}",
                job.src.display(),
                job.report.display(),
                spills.join("\n")
            ));
        }
        Ok(())
    }

    /// The count in a ptxas line `..., N bytes spill stores, ...`; 0 for other lines.
    fn spill_stores(line: &str) -> u64 {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(" bytes spill stores"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `OUT_DIR/cubins.rs`: every cubin embedded with the path of its source. The driver takes
    /// one image per module (a fatbin of several sm_90a cubins would load only one of them), so
    /// each cubin is loaded as its own module.
    fn cubin_index(csrc: &Path, jobs: &[Job], out: &Path) -> Result<(), String> {
        let mut rs = String::from("/// Every kernel file of `csrc/` compiled for sm_90a: (source, cubin).\n");
        rs.push_str("static CUBINS: &[(&str, &[u8])] = &[\n");
        for job in jobs {
            let src = job.src.strip_prefix(csrc).unwrap_or(&job.src);
            rs.push_str(&format!("    ({:?}, include_bytes!({:?})),\n", src.display().to_string(), job.cubin));
        }
        rs.push_str("];\n");
        fs::write(out, rs).map_err(|e| format!("{}: {e}", out.display()))
    }

    /// The params structs and their constants as Rust, with bindgen's layout tests.
    fn params(header: &Path, out: &Path) -> Result<(), String> {
        bindgen::Builder::default()
            .header(header.to_string_lossy())
            .allowlist_type(".*Params")
            .allowlist_var("FLASHSEEK_.*")
            .generate()
            .map_err(|e| format!("bindgen on {}: {e} (is LIBCLANG_PATH set?)", header.display()))?
            .write_to_file(out)
            .map_err(|e| format!("{}: {e}", out.display()))
    }
}
