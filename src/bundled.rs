//! The model that ships with the project, `models/flashseek-v32-arith` (see its README): a small
//! DeepSeek-V3.2 trained for arithmetic by `tools/train`. `serve`, `generate` and
//! `bench offline` run it when no `--model-path` is given.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub const NAME: &str = "flashseek-v32-arith";

/// Where the bundled model is: `models/` of the source tree this binary was built from.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(NAME)
}

/// `path`, or the bundled model when none is given (which must then be where the build left it).
pub fn resolve(path: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = path {
        return Ok(p.to_path_buf());
    }
    let dir = dir();
    if dir.join("config.json").is_file() {
        Ok(dir)
    } else {
        Err(Error::Input(format!(
            "no --model-path given and the bundled model is not at {} (this binary was built from a \
             source tree that has since moved); pass --model-path",
            dir.display()
        )))
    }
}
