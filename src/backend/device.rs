//! Which backend runs the model: `--device` of the command line.

use std::path::Path;

use crate::backend::{Backend, CpuBackend};
use crate::error::{Error, Result};
use crate::kv_cache::KvCacheDtype;
use crate::model::{ActQuant, Model};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The CPU backend (every machine).
    Cpu,
    /// The CUDA backend on GPU 0 (a build with `--features cuda`, an sm_90 GPU and its driver).
    Cuda,
}

/// Work on a loaded model, whichever backend holds it (a closure cannot be generic).
pub trait ModelTask {
    type Output;
    fn run<B: Backend>(self, model: Model<B>) -> Result<Self::Output>;
}

/// Loads models on one device with caches of `kv_cache_dtype`; `deterministic` asks the CPU
/// backend for batch-invariant kernels.
#[derive(Clone, Copy, Debug)]
pub struct Loader {
    pub device: Device,
    pub act: ActQuant,
    pub kv_cache_dtype: KvCacheDtype,
    pub deterministic: bool,
}

impl Loader {
    /// Whether this build and these flags can run on the device (it does not look for a GPU:
    /// loading says so where there is none).
    pub fn check(&self) -> Result<()> {
        if self.device == Device::Cuda {
            if !cfg!(feature = "cuda") {
                return Err(Error::Input(
                    "--device cuda: this binary was built without CUDA; build it with `cargo build --release \
                     --features cuda` (scripts/install-cuda-toolchain.sh installs the compiler)"
                        .into(),
                ));
            }
            if self.deterministic {
                return Err(Error::Input(
                    "--enable-deterministic-inference is not supported with --device cuda yet".into(),
                ));
            }
        }
        Ok(())
    }

    /// Loads the model at `dir` and hands it to `task`.
    pub fn run<T: ModelTask>(&self, dir: &Path, task: T) -> Result<T::Output> {
        self.check()?;
        match self.device {
            Device::Cpu => task.run(self.load(self.cpu(), dir)?),
            #[cfg(feature = "cuda")]
            Device::Cuda => task.run(self.load(crate::backend::cuda::CudaBackend::new(0)?, dir)?),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => Err(Error::Input("--device cuda: this binary was built without CUDA".into())),
        }
    }

    fn load<B: Backend>(&self, backend: B, dir: &Path) -> Result<Model<B>> {
        Model::load(backend, dir, self.act)?.with_kv_cache_dtype(self.kv_cache_dtype)
    }

    fn cpu(&self) -> CpuBackend {
        if self.deterministic {
            CpuBackend::batch_invariant()
        } else {
            CpuBackend::new()
        }
    }
}
