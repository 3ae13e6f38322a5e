//! Helpers shared by the fuzz targets: fixture paths, scratch directories, a byte reader that
//! turns the fuzzer's input into structured choices, and the load-then-run check.

pub mod targets;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `tests/fixtures/<name>` of the flashseek checkout this crate sits in.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("tests").join("fixtures").join(name)
}

/// Reads a fixture file, panicking with its path when it is missing (a setup error, not a
/// finding: run the fuzzers from a full checkout).
pub fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fuzz setup: cannot read fixture {}: {e}", path.display()))
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        sweep_stale(tag);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("flashseek-fuzz-{tag}-{}-{n}", std::process::id()));
        // A leftover from a run that crashed with the same pid and counter: start clean.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("fuzz setup: cannot create {}: {e}", path.display()));
        ScratchDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, name: &str, data: &[u8]) {
        let p = self.path.join(name);
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("fuzz setup: cannot write {}: {e}", p.display()));
    }

    /// Symlinks `target` as `name` in this directory.
    pub fn link(&self, name: &str, target: &Path) {
        let p = self.path.join(name);
        let target = target.canonicalize().unwrap_or_else(|e| panic!("fuzz setup: {}: {e}", target.display()));
        std::os::unix::fs::symlink(&target, &p)
            .unwrap_or_else(|e| panic!("fuzz setup: cannot link {} -> {}: {e}", p.display(), target.display()));
    }
}

/// The files of `tests/fixtures/tiny-v32-fp8` that `Model::load` reads.
const TINY_V32_FP8_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors.index.json",
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

/// A scratch directory with symlinks to the `tiny-v32-fp8` files `Model::load` reads, all but
/// `fuzzed`, which the caller writes for each input. Meant to be made once per process (kept in
/// a `OnceLock`), so the weights are linked once and only `fuzzed` changes.
pub fn tiny_v32_fp8_without(tag: &str, fuzzed: &str) -> ScratchDir {
    assert!(TINY_V32_FP8_FILES.contains(&fuzzed), "fuzz setup: {fuzzed} is not a tiny-v32-fp8 file");
    let dir = ScratchDir::new(tag);
    for f in TINY_V32_FP8_FILES.iter().filter(|&&f| f != fuzzed) {
        dir.link(f, &fixture(&format!("tiny-v32-fp8/{f}")));
    }
    dir
}

/// Removes, once per process and tag, the directories of earlier processes that are gone:
/// libFuzzer ends with `exit()` (or an abort on a crash), so the per-process directories kept
/// in statics are never dropped.
fn sweep_stale(tag: &str) {
    static SWEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
    if swept.iter().any(|t| t == tag) {
        return;
    }
    swept.push(tag.to_string());
    let prefix = format!("flashseek-fuzz-{tag}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Consumes the fuzz input front to back; reads past the end yield zeros, so every input is a
/// valid program.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn rest(&self) -> &'a [u8] {
        self.data
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }
}

/// The safetensors header of `file`: its JSON text and where the data section starts.
/// Only for the fixtures, which are known to be well formed.
pub fn split_safetensors(file: &[u8]) -> (&str, &[u8]) {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..8 + n]).expect("fixture header is UTF-8");
    (header, &file[8 + n..])
}

/// Builds a safetensors file from a header text and a data section.
pub fn join_safetensors(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// The three shards of `tiny-v32-fp8` merged into one `model.safetensors` (a complete,
/// loadable checkpoint of about 7.7 MB), so that mutations of it reach `Model::load`'s end.
pub fn merged_tiny_v32_fp8() -> Vec<u8> {
    use serde_json::{Map, Value};
    let mut entries: Vec<(String, Value, Vec<u8>)> = Vec::new();
    for i in 1..=3 {
        let file = read_fixture(&format!("tiny-v32-fp8/model-0000{i}-of-00003.safetensors"));
        let (header, data) = split_safetensors(&file);
        let header: Map<String, Value> = serde_json::from_str(header).expect("fixture header is JSON");
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let offs = info["data_offsets"].as_array().expect("data_offsets");
            let (s, e) = (offs[0].as_u64().unwrap() as usize, offs[1].as_u64().unwrap() as usize);
            entries.push((name, info, data[s..e].to_vec()));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, mut info, bytes) in entries {
        let start = data.len();
        data.extend_from_slice(&bytes);
        info["data_offsets"] = serde_json::json!([start, data.len()]);
        header.insert(name, info);
    }
    let mut text = serde_json::to_string(&Value::Object(header)).unwrap().into_bytes();
    // Pad to a multiple of 8 as the reference writer does.
    while (8 + text.len()) & 7 != 0 {
        text.push(b' ');
    }
    join_safetensors(&text, &data)
}

/// Whether `FLASHSEEK_FUZZ_VERBOSE` is set: the targets then print what each step returned
/// (to check by hand which paths an input reaches, e.g. `cargo fuzz run <target> <file>`).
pub fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FLASHSEEK_FUZZ_VERBOSE").is_some())
}

/// Prints `what` and the outcome of `r` when [`verbose`] is on; gives `r` back.
pub fn show<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, E> {
    if verbose() {
        match &r {
            Ok(_) => eprintln!("{what}: ok"),
            Err(e) => eprintln!("{what}: error: {e}"),
        }
    }
    r
}

/// `Model::load` (FP8 activations) on `dir`, then [`smoke_forward`] if the model loads: neither
/// may panic.
pub fn load_and_smoke(dir: &Path) {
    use flashseek::backend::CpuBackend;
    use flashseek::model::{ActQuant, Model};
    if let Ok(mut model) = show("load", Model::<CpuBackend>::load(CpuBackend::new(), dir, ActQuant::Fp8)) {
        smoke_forward(&mut model);
    }
}

/// A short prefill and one decode step through a freshly loaded model (whose weights may hold
/// anything a fuzzed file put there: NaN, infinities, huge values): must not panic; after a
/// successful step `argmax` must give one id in the vocabulary.
pub fn smoke_forward(model: &mut flashseek::model::Model<flashseek::backend::CpuBackend>) {
    use flashseek::model::{Logits, SeqInput};
    let vocab = model.config().vocab_size as u32;
    let Ok(mut cache) = model.new_cache(1) else { return };
    let mut table = Vec::new();
    if cache.reserve(&mut table, 4).is_err() {
        return;
    }
    let prompt: Vec<u32> = (0..3u32).map(|i| (i * 7 + 3) % vocab).collect();
    let batch = [SeqInput { tokens: &prompt, start_pos: 0, block_table: &table, logits: Logits::Last }];
    if show("prefill", model.forward(&batch, &mut cache)).is_err() {
        return;
    }
    let Ok(next) = show("argmax", model.argmax()) else { return };
    assert_eq!(next.len(), 1, "one logits row was asked for");
    assert!(next[0] < vocab, "argmax returned token {} outside the vocabulary ({vocab})", next[0]);
    let batch = [SeqInput { tokens: &next, start_pos: prompt.len(), block_table: &table, logits: Logits::All }];
    let _ = show("decode", model.forward(&batch, &mut cache));
}
