//! The GEMM family (`csrc/sm90/gemm/`): linear weights on the device in their checkpoint format,
//! DeepSeek's activation quantization, the FP8 block-scaled GEMM and the plain GEMMs, and
//! [`CudaDevice::linear`], which picks among them as the CPU backend's `linear` does.
//!
//! These are the simple first kernels of the family (SIMT, f32 accumulation): `act_quant` gives
//! the CPU's bits, the GEMMs its products summed in another order (`tests/cuda_kernels.rs`
//! bounds the difference).

use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr};

use super::params::{
    ActQuantParams, GemmParams, FLASHSEEK_ACT_QUANT_THREADS, FLASHSEEK_FP8_GROUP, FLASHSEEK_GEMM_THREADS,
    FLASHSEEK_GEMM_TILE,
};
use super::{grid, product, to_u32, CudaDevice};
use crate::error::{ensure_shape, Error, Result};
use crate::fp8::ScaleFmt;
use crate::model::config::FP8_BLOCK;
use crate::model::weights::{blocks, DType, HostLinear};

// Activation groups and weight scale blocks are the checkpoint's FP8 block.
const _: () = assert!(FLASHSEEK_FP8_GROUP as usize == FP8_BLOCK);

/// A weight in the format its checkpoint stores it; 16-bit formats as their bits. The MoE family
/// keeps all experts' matrices of one projection back to back in one of these.
pub(super) enum Weight {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<u16>),
    F16(CudaSlice<u16>),
    /// e4m3fn codes `[rows, cols]` with one scale per 128x128 block, `[blocks(rows), blocks(cols)]`.
    Fp8 {
        codes: CudaSlice<u8>,
        scales: CudaSlice<f32>,
    },
}

/// A projection weight `[rows, cols]` (out, in) on the device, in its checkpoint format: FP8
/// stays FP8 with its block scales, bf16 and f16 stay 16-bit, f32 stays f32.
pub struct CudaLinear {
    rows: usize,
    cols: usize,
    pub(super) weight: Weight,
}

/// A [`CudaLinear`]'s weight, for kernels of other families that read it in place.
pub(super) enum WeightView<'a> {
    F32(&'a CudaSlice<f32>),
    Bf16(&'a CudaSlice<u16>),
    F16(&'a CudaSlice<u16>),
    /// e4m3fn codes `[rows, cols]` with one scale per 128x128 block, `[blocks(rows), blocks(cols)]`.
    Fp8 {
        codes: &'a CudaSlice<u8>,
        scales: &'a CudaSlice<f32>,
    },
}

impl CudaLinear {
    /// The weight's buffers, whose lengths `load_linear` checked against the shape.
    pub(super) fn view(&self) -> WeightView<'_> {
        match &self.weight {
            Weight::F32(w) => WeightView::F32(w),
            Weight::Bf16(w) => WeightView::Bf16(w),
            Weight::F16(w) => WeightView::F16(w),
            Weight::Fp8 { codes, scales } => WeightView::Fp8 { codes, scales },
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn is_fp8(&self) -> bool {
        matches!(self.weight, Weight::Fp8 { .. })
    }
}

/// `n` as a GEMM dimension: below 2^31, so that the kernels' u32 tile and k offsets (a dimension
/// plus at most one 128-block) never wrap.
pub(super) fn dim(n: usize, op: &'static str, what: &str) -> Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|&d| d <= i32::MAX as u32)
        .ok_or_else(|| Error::shape(op, format!("{what} {n} exceeds the GEMM's limit of 2^31 - 1")))
}

/// Little-endian 16-bit values.
pub(super) fn u16s(bytes: &[u8]) -> Vec<u16> {
    bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()
}

impl CudaDevice {
    /// `data` in a new device buffer; an empty one gets a single default value, since the driver
    /// refuses to allocate 0 bytes (kernels read nothing of it then).
    pub(super) fn upload_nonempty<T: DeviceRepr + Default>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            self.upload(&[T::default()])
        } else {
            self.upload(data)
        }
    }

    /// Copies a linear weight to the device, checking its shape, its bytes and, for FP8, its
    /// block scales.
    pub fn load_linear(&self, w: &HostLinear) -> Result<CudaLinear> {
        const OP: &str = "load_linear";
        let t = &w.weight;
        ensure_shape(t.shape.len() == 2, OP, || format!("`{}` is not 2-D: {:?}", t.name, t.shape))?;
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let len = product(rows, cols, OP)?;
        let bytes = t.bytes.as_slice();
        ensure_shape(len.checked_mul(t.dtype.size()) == Some(bytes.len()), OP, || {
            format!("`{}` [{rows}, {cols}] of {:?} holds {} bytes", t.name, t.dtype, bytes.len())
        })?;
        let weight = match t.dtype {
            DType::F32 => Weight::F32(self.upload_nonempty(&t.to_f32())?),
            DType::Bf16 => Weight::Bf16(self.upload_nonempty(&u16s(bytes))?),
            DType::F16 => Weight::F16(self.upload_nonempty(&u16s(bytes))?),
            DType::F8E4M3 => {
                let scales = w
                    .scale_inv
                    .as_deref()
                    .ok_or_else(|| Error::shape(OP, format!("FP8 weight `{}` has no block scales", t.name)))?;
                ensure_shape(scales.len() == blocks(rows) * blocks(cols), OP, || {
                    format!("`{}` needs {}x{} block scales, got {}", t.name, blocks(rows), blocks(cols), scales.len())
                })?;
                Weight::Fp8 { codes: self.upload_nonempty(bytes)?, scales: self.upload_nonempty(scales)? }
            }
        };
        Ok(CudaLinear { rows, cols, weight })
    }

    /// DeepSeek's `act_quant` of the `rows` rows of `x` (each `cols` wide): per 1x128 group from
    /// the left of each row (the last may be partial), the scale of `fmt` into
    /// `scales[row, group]` (rows of `ceil(cols / 128)`) and the e4m3 codes of `x / scale` into
    /// `codes[row, col]`.
    pub fn act_quant(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        fmt: ScaleFmt,
        codes: &mut CudaSlice<u8>,
        scales: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "act_quant";
        let len = product(rows, cols, OP)?;
        let groups = product(rows, blocks(cols), OP)?;
        let warps_per_block = (FLASHSEEK_ACT_QUANT_THREADS / 32) as usize;
        let grid_blocks = grid(groups.div_ceil(warps_per_block), OP)?;
        let p_cols = to_u32(cols, OP, "cols")?;
        let p_groups = to_u32(groups, OP, "groups")?;
        let (x_ptr, _x) = self.input(x, len, OP, "x")?;
        let (codes_ptr, _codes) = self.output(codes, len, OP, "codes")?;
        let (scales_ptr, _scales) = self.output(scales, groups, OP, "scales")?;
        if groups == 0 {
            return Ok(());
        }
        let p = ActQuantParams {
            x: x_ptr as *const f32,
            codes: codes_ptr as *mut u8,
            scales: scales_ptr as *mut f32,
            cols: p_cols,
            groups: p_groups,
            ue8m0: u32::from(fmt == ScaleFmt::Ue8m0),
        };
        // SAFETY: group g of the kernel reads and writes values row * cols + start .. + 128 (at
        // most, within the row) for row = g / ceil(cols / 128) < rows, all below rows * cols,
        // which x and codes hold, and writes scales[g] for g < groups, which scales holds.
        unsafe { self.launch(&self.kernels.act_quant, OP, grid_blocks, FLASHSEEK_ACT_QUANT_THREADS, &p) }
    }

    /// The FP8 block-scaled GEMM `out[m, w.rows] = a[m, w.cols] · wᵀ` of activations quantized
    /// by [`CudaDevice::act_quant`] (codes `[m, k]`, scales `[m, ceil(k / 128)]`) and FP8
    /// weights: per 128-wide block of k, the e4m3 dot product times both scales.
    pub fn fp8_gemm(
        &self,
        a: &CudaSlice<u8>,
        a_scales: &CudaSlice<f32>,
        m: usize,
        w: &CudaLinear,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "fp8_gemm";
        let Weight::Fp8 { codes, scales } = &w.weight else {
            return Err(Error::shape(OP, "the weight is not FP8"));
        };
        let (n, k) = (w.rows, w.cols);
        let (a_ptr, _a) = self.input(a, product(m, k, OP)?, OP, "a")?;
        let (sa_ptr, _sa) = self.input(a_scales, product(m, blocks(k), OP)?, OP, "a_scales")?;
        let (b_ptr, _b) = self.input(codes, n * k, OP, "weight")?;
        let (sb_ptr, _sb) = self.input(scales, blocks(n) * blocks(k), OP, "weight scales")?;
        self.launch_gemm(&self.kernels.fp8_gemm, OP, [a_ptr, sa_ptr, b_ptr, sb_ptr], (m, n, k), out)
    }

    /// The plain GEMM `out[m, w.rows] = x[m, w.cols] · wᵀ` in f32, whatever the weight's format:
    /// bf16 and f16 widen exactly, FP8 values are dequantized one by one (code times block scale,
    /// rounded to f32), as the CPU does for activations it does not quantize.
    pub fn gemm(&self, x: &CudaSlice<f32>, m: usize, w: &CudaLinear, out: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "gemm";
        let (n, k) = (w.rows, w.cols);
        let (x_ptr, _x) = self.input(x, product(m, k, OP)?, OP, "x")?;
        // Weights were checked against their shape when loaded.
        let (b_ptr, _b, sb_ptr, _sb, kernel) = match &w.weight {
            Weight::F32(b) => {
                let (ptr, guard) = self.input(b, n * k, OP, "weight")?;
                (ptr, guard, 0, None, &self.kernels.gemm_wf32)
            }
            Weight::Bf16(b) => {
                let (ptr, guard) = self.input(b, n * k, OP, "weight")?;
                (ptr, guard, 0, None, &self.kernels.gemm_wbf16)
            }
            Weight::F16(b) => {
                let (ptr, guard) = self.input(b, n * k, OP, "weight")?;
                (ptr, guard, 0, None, &self.kernels.gemm_wf16)
            }
            Weight::Fp8 { codes, scales } => {
                let (ptr, guard) = self.input(codes, n * k, OP, "weight")?;
                let (s_ptr, s_guard) = self.input(scales, blocks(n) * blocks(k), OP, "weight scales")?;
                (ptr, guard, s_ptr, Some(s_guard), &self.kernels.gemm_we4m3)
            }
        };
        self.launch_gemm(kernel, OP, [x_ptr, 0, b_ptr, sb_ptr], (m, n, k), out)
    }

    /// `out[m, w.rows] = x[m, w.cols] · wᵀ`, as the CPU backend's `linear`: where `w` is FP8 and
    /// `quant` is set, `x` is first quantized per 1x128 group with that scale format and goes
    /// through the FP8 GEMM (the Hopper one, [`CudaDevice::fp8_gemm_fast`], where it takes k;
    /// the simple one otherwise); otherwise the plain GEMM. The quantized activations live in buffers
    /// allocated for the call.
    pub fn linear(
        &self,
        x: &CudaSlice<f32>,
        m: usize,
        w: &CudaLinear,
        quant: Option<ScaleFmt>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "linear";
        match quant {
            Some(fmt) if w.is_fp8() => {
                let k = w.cols;
                // The driver refuses 0-byte buffers; the kernels read none of an empty one.
                let mut codes = self.zeros::<u8>(product(m, k, OP)?.max(1))?;
                let mut scales = self.zeros::<f32>(product(m, blocks(k), OP)?.max(1))?;
                self.act_quant(x, m, k, fmt, &mut codes, &mut scales)?;
                if Self::fp8_gemm_fast_supports(k) {
                    self.fp8_gemm_fast(&codes, &scales, m, w, out)
                } else {
                    self.fp8_gemm(&codes, &scales, m, w, out)
                }
            }
            _ => self.gemm(x, m, w, out),
        }
    }

    /// Queues a GEMM kernel over `out[m, n]`, one block per 64x64 tile; `ptrs` are the device
    /// addresses of a, a_scales, b and b_scales (0 where the kernel reads none).
    fn launch_gemm(
        &self,
        kernel: &CudaFunction,
        op: &'static str,
        ptrs: [u64; 4],
        (m, n, k): (usize, usize, usize),
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (p_m, p_n, p_k) = (dim(m, op, "m")?, dim(n, op, "n")?, dim(k, op, "k")?);
        let tile = FLASHSEEK_GEMM_TILE as usize;
        let tiles = product(m.div_ceil(tile), n.div_ceil(tile), op)?;
        let grid_blocks = grid(tiles, op)?;
        let (out_ptr, _out) = self.output(out, product(m, n, op)?, op, "out")?;
        if tiles == 0 {
            return Ok(());
        }
        let [a, a_scales, b, b_scales] = ptrs;
        let p = GemmParams {
            a: a as *const std::ffi::c_void,
            a_scales: a_scales as *const f32,
            b: b as *const std::ffi::c_void,
            b_scales: b_scales as *const f32,
            out: out_ptr as *mut f32,
            m: p_m,
            n: p_n,
            k: p_k,
        };
        // SAFETY: the kernels read a at row * k + col (f32 or codes) and a_scales at
        // row * ceil(k / 128) + kb for row < m, col < k; b at row * k + col and b_scales at
        // (row / 128) * ceil(k / 128) + kb for row < n; and write out at row * n + col for
        // row < m, col < n. The callers checked every buffer's length against these shapes and
        // keep their guards alive over this call; a kernel given a 0 address never reads it.
        unsafe { self.launch(kernel, op, grid_blocks, FLASHSEEK_GEMM_THREADS, &p) }
    }
}
