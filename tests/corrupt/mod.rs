//! Helpers shared by `tests/checkpoints.rs` and `tests/cli.rs`: scratch model directories that
//! start as a fixture and get damaged one file at a time.
//!
//! A scratch directory holds symlinks to the fixture's files, so building one costs nothing.
//! Every write goes through [`ScratchDir::write`], which removes the link before writing, so a
//! fixture file is never written through a link.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// The directory of a fixture under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A directory under `std::env::temp_dir()`, removed (with its contents) on drop.
pub struct ScratchDir {
    path: PathBuf,
    /// The fixture this directory started as.
    fixture: Option<PathBuf>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl ScratchDir {
    /// An empty directory whose name carries `tag`, the process id and a counter.
    pub fn empty(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let path = std::env::temp_dir().join(format!("flashseek-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        ScratchDir { path, fixture: None }
    }

    /// A directory linking to every file of fixture `name` except its references.
    pub fn from_fixture(name: &str, tag: &str) -> Self {
        let mut dir = Self::empty(&format!("{name}-{tag}"));
        let src = fixture(name);
        dir.fixture = Some(src.clone());
        for entry in std::fs::read_dir(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
            let entry = entry.unwrap();
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with("reference") {
                continue;
            }
            let target = entry.path();
            std::os::unix::fs::symlink(&target, dir.path.join(&file))
                .unwrap_or_else(|e| panic!("linking {}: {e}", target.display()));
        }
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// Replaces `file` (a link to the fixture or a file of ours) with `bytes`.
    pub fn write(&self, file: &str, bytes: impl AsRef<[u8]>) {
        self.remove(file);
        let p = self.join(file);
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// Removes `file` if it is there.
    pub fn remove(&self, file: &str) {
        let p = self.join(file);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", p.display()),
        }
    }

    /// Puts the fixture's `file` back (as a link).
    pub fn restore(&self, file: &str) {
        self.remove(file);
        let src = self.fixture.as_ref().expect("not made from a fixture").join(file);
        std::os::unix::fs::symlink(&src, self.join(file)).unwrap_or_else(|e| panic!("linking {}: {e}", src.display()));
    }

    /// The bytes of `file` (read through the link).
    pub fn read(&self, file: &str) -> Vec<u8> {
        let p = self.join(file);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    pub fn config(&self) -> serde_json::Value {
        serde_json::from_slice(&self.read("config.json")).expect("fixture config.json is JSON")
    }

    pub fn write_config(&self, v: &serde_json::Value) {
        self.write("config.json", serde_json::to_string_pretty(v).unwrap());
    }

    /// Every tensor of the safetensors file `file`.
    pub fn tensors(&self, file: &str) -> Tensors {
        Tensors::parse(&self.read(file))
    }

    pub fn write_tensors(&self, file: &str, t: &Tensors) {
        self.write(file, t.serialize());
    }

    /// The shard index as JSON.
    pub fn index(&self) -> serde_json::Value {
        serde_json::from_slice(&self.read(INDEX)).expect("fixture index is JSON")
    }

    /// The file that the index places `tensor` in.
    pub fn shard_of(&self, tensor: &str) -> String {
        self.index()["weight_map"][tensor]
            .as_str()
            .unwrap_or_else(|| panic!("{tensor} is not in the index"))
            .to_string()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub const INDEX: &str = "model.safetensors.index.json";
pub const SINGLE: &str = "model.safetensors";

/// One tensor, owned.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Entry { dtype: Dtype::F32, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// The values of an F32 tensor.
    pub fn to_f32(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32, "to_f32 of a {:?} tensor", self.dtype);
        self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The tensors of a safetensors file, by name.
#[derive(Clone, Debug, Default)]
pub struct Tensors(pub BTreeMap<String, Entry>);

impl Tensors {
    pub fn parse(bytes: &[u8]) -> Self {
        let st = SafeTensors::deserialize(bytes).expect("fixture safetensors parse");
        Tensors(
            st.tensors()
                .into_iter()
                .map(|(n, v)| (n, Entry { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() }))
                .collect(),
        )
    }

    pub fn serialize(&self) -> Vec<u8> {
        let views: Vec<(String, TensorView)> = self
            .0
            .iter()
            .map(|(n, e)| (n.clone(), TensorView::new(e.dtype, e.shape.clone(), &e.data).expect("consistent tensor")))
            .collect();
        safetensors::serialize(views, None).expect("serialize")
    }

    pub fn get(&self, name: &str) -> &Entry {
        self.0.get(name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    pub fn set(&mut self, name: &str, e: Entry) {
        self.0.insert(name.to_string(), e);
    }

    pub fn remove(&mut self, name: &str) -> Entry {
        self.0.remove(name).unwrap_or_else(|| panic!("no tensor {name}"))
    }
}
