//! The Hopper FP8 block-scaled GEMM (`csrc/sm90/gemm/fp8_gemm.cu`): [`CudaDevice::fp8_gemm`]'s
//! product through wgmma fed by TMA, one kernel per tile shape ([`GemmTiles`]), the shape picked
//! per call by [`GemmTiles::choose`] on this device's SM count; and the launch of the grouped
//! experts' GEMM on the same core (`moe.rs` drives it). The tensor maps of A and B are encoded per
//! call (host work of a few microseconds, no allocation on the device).

use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};

use super::gemm::{dim, Weight};
use super::params::Fp8GemmWgmmaParams;
use super::tma::{self, TensorMap};
use super::{driver, grid, product, raise_smem_limit, CudaDevice, CudaLinear};
use crate::error::{ensure_shape, Error, Result};
use crate::gemm_tiles::GemmTiles;
use crate::model::weights::blocks;

/// k per TMA box (one scale block): the box's inner extent in bytes.
const BOX_K: u32 = 128;
/// TMA needs every row stride of the global tensor to be a multiple of 16 bytes.
const K_ALIGN: usize = 16;

/// One kernel per tile shape (`<prefix>_m128n128` and the like), each allowed the dynamic shared
/// memory its stages take.
pub(super) struct WgmmaKernels(Vec<(GemmTiles, CudaFunction)>);

impl WgmmaKernels {
    /// The dense GEMM's kernels, one per shape of [`GemmTiles::ALL`].
    pub(super) fn dense(load: impl Fn(&str) -> Result<CudaFunction>) -> Result<Self> {
        Self::load(load, "fp8_gemm_wgmma", &GemmTiles::ALL)
    }

    /// The grouped experts' kernels, one per shape of [`GemmTiles::GROUPED`].
    pub(super) fn grouped(load: impl Fn(&str) -> Result<CudaFunction>) -> Result<Self> {
        Self::load(load, "moe_gemm_wgmma", &GemmTiles::GROUPED)
    }

    /// The grouped experts' kernels in the masked layout, one per shape of [`GemmTiles::GROUPED`].
    pub(super) fn masked(load: impl Fn(&str) -> Result<CudaFunction>) -> Result<Self> {
        Self::load(load, "moe_gemm_wgmma_masked", &GemmTiles::GROUPED)
    }

    /// Loads `<prefix>_<tiles>` for each shape through `load` and raises each one's dynamic
    /// shared-memory limit.
    fn load(load: impl Fn(&str) -> Result<CudaFunction>, prefix: &str, shapes: &[GemmTiles]) -> Result<Self> {
        let mut kernels = Vec::with_capacity(shapes.len());
        for &t in shapes {
            let f = load(&format!("{prefix}_{t}"))?;
            raise_smem_limit(&f, t.smem_bytes(), &format!("{prefix}_{t}"))?;
            kernels.push((t, f));
        }
        Ok(Self(kernels))
    }

    /// The kernel of shape `t`, an error for a shape this family was not compiled for.
    pub(super) fn get(&self, t: GemmTiles, op: &'static str) -> Result<&CudaFunction> {
        self.0
            .iter()
            .find_map(|(s, f)| (*s == t).then_some(f))
            .ok_or_else(|| Error::shape(op, format!("no kernel of tile shape {t}")))
    }
}

/// The tensor map of a row-major `[rows, k]` byte matrix at `ptr`, in boxes of 128 columns by
/// `box_rows` rows, 128B-swizzled (as fp8_gemm.cuh's layout reads it), zero-filled past the edges.
pub(super) fn tensor_map(ptr: u64, rows: usize, k: usize, box_rows: usize, op: &'static str) -> Result<TensorMap> {
    // Bytes between rows; the innermost stride is the element size, implied.
    tma::swizzled_u8(
        ptr,
        &[k as u64, rows as u64],
        &[k as u64],
        &[BOX_K, box_rows as u32],
        &format!("{op}: a [{rows}, {k}] matrix"),
    )
}

impl CudaDevice {
    /// Whether [`CudaDevice::fp8_gemm_fast`] takes inner dimension `k`: TMA needs row strides
    /// that are a positive multiple of 16 bytes.
    pub fn fp8_gemm_fast_supports(k: usize) -> bool {
        k > 0 && k % K_ALIGN == 0
    }

    /// The tile shape [`CudaDevice::fp8_gemm_fast`] picks for `out[m, n]` on this device.
    pub fn fp8_gemm_tiles(&self, m: usize, n: usize) -> GemmTiles {
        GemmTiles::choose(m, n, self.sm_count)
    }

    /// [`CudaDevice::fp8_gemm`] on the Hopper kernel (same arguments, same product up to the
    /// order of the f32 sums and the tensor core's accumulation inside each 128-block of k), in
    /// the tile shape the heuristic picks. `w.cols()` must be a positive multiple of 16
    /// ([`CudaDevice::fp8_gemm_fast_supports`]).
    pub fn fp8_gemm_fast(
        &self,
        a: &CudaSlice<u8>,
        a_scales: &CudaSlice<f32>,
        m: usize,
        w: &CudaLinear,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.fp8_gemm_with(a, a_scales, m, w, out, self.fp8_gemm_tiles(m, w.rows()))
    }

    /// [`CudaDevice::fp8_gemm_fast`] in the tile shape `tiles` (tests and benches force each).
    pub fn fp8_gemm_with(
        &self,
        a: &CudaSlice<u8>,
        a_scales: &CudaSlice<f32>,
        m: usize,
        w: &CudaLinear,
        out: &mut CudaSlice<f32>,
        tiles: GemmTiles,
    ) -> Result<()> {
        const OP: &str = "fp8_gemm_fast";
        let Weight::Fp8 { codes, scales } = &w.weight else {
            return Err(Error::shape(OP, "the weight is not FP8"));
        };
        let (n, k) = (w.rows(), w.cols());
        ensure_shape(Self::fp8_gemm_fast_supports(k), OP, || {
            format!("k = {k}: TMA needs a positive multiple of {K_ALIGN}")
        })?;
        let (p_m, p_n, p_k) = (dim(m, OP, "m")?, dim(n, OP, "n")?, dim(k, OP, "k")?);
        let (a_ptr, _a) = self.input(a, product(m, k, OP)?, OP, "a")?;
        let (sa_ptr, _sa) = self.input(a_scales, product(m, blocks(k), OP)?, OP, "a_scales")?;
        let (b_ptr, _b) = self.input(codes, n * k, OP, "weight")?;
        let (sb_ptr, _sb) = self.input(scales, blocks(n) * blocks(k), OP, "weight scales")?;
        let (out_ptr, _out) = self.output(out, product(m, n, OP)?, OP, "out")?;
        // Tile numbers and a CTA's next tile (below tiles + grid) stay below 2^32.
        let count = tiles.tiles(m, n);
        ensure_shape(count <= i32::MAX as u128, OP, || format!("{count} tiles exceed 2^31 - 1"))?;
        if count == 0 {
            return Ok(());
        }
        let map_a = tensor_map(a_ptr, m, k, tiles.block_m, OP)?;
        let map_b = tensor_map(b_ptr, n, k, tiles.block_n, OP)?;
        let p = Fp8GemmWgmmaParams {
            a_scales: sa_ptr as *const f32,
            b_scales: sb_ptr as *const f32,
            out: out_ptr as *mut f32,
            m: p_m,
            n: p_n,
            k: p_k,
        };
        let kernel = self.kernels.fp8_gemm_wgmma.get(tiles, OP)?;
        // SAFETY: the kernel takes (CUtensorMap, CUtensorMap, Fp8GemmWgmmaParams). Through the
        // maps TMA reads only inside [m, k] of a and [n, k] of the weight codes (the maps'
        // extents, checked against the buffers above; boxes past them are zero-filled); it reads
        // a_scales at row * ceil(k / 128) + kb for row < m, the weight scales at
        // (col / 128) * ceil(k / 128) + kb for col < n, and writes out at row * n + col for
        // row < m, col < n: all inside the buffers checked above, whose guards live until this
        // returns.
        unsafe { self.launch_wgmma(kernel, OP, tiles, count, [&map_a, &map_b], &p) }
    }

    /// Queues a wgmma kernel of shape `tiles` over `count` tiles: min(count, SMs) persistent
    /// blocks with the shape's threads and shared memory, the two tensor maps and `params`.
    ///
    /// # Safety
    /// `kernel` takes (CUtensorMap, CUtensorMap, P), and every address the maps and `params`
    /// hold must be valid, for as much as the kernel reaches through them, until it has run.
    pub(super) unsafe fn launch_wgmma<P: DeviceRepr>(
        &self,
        kernel: &CudaFunction,
        op: &'static str,
        tiles: GemmTiles,
        count: u128,
        [map_a, map_b]: [&TensorMap; 2],
        params: &P,
    ) -> Result<()> {
        let blocks_x = grid(usize::try_from(count).unwrap_or(usize::MAX).min(self.sm_count.max(1)), op)?;
        let cfg = LaunchConfig {
            grid_dim: (blocks_x, 1, 1),
            block_dim: (tiles.threads() as u32, 1, 1),
            shared_mem_bytes: tiles.smem_bytes() as u32,
        };
        let mut launch = self.stream.launch_builder(kernel);
        launch.arg(map_a).arg(map_b).arg(params);
        // SAFETY: the caller guarantees the arguments and the memory they address.
        unsafe { launch.launch(cfg) }.map_err(|e| driver(&format!("launching {op} {tiles}"), e)).map(|_| ())
    }
}
