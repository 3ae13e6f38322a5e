//! The MoE family (`csrc/sm90/moe/`): DeepSeek's `noaux_tc` router, the routed experts on the
//! device ([`CudaExperts`]: every expert's projections in one buffer per projection, in the
//! checkpoint's format) and [`CudaDevice::moe_experts`], the CPU backend's `moe_experts` as
//! grouped GEMMs over all experts in one launch each.
//!
//! The routing stays on the device: the host never learns how many tokens each expert got. A
//! call runs act_quant of the tokens (FP8 experts with `quant`), one grouped GEMM for gate and up,
//! silu_mul, act_quant of the intermediate, one grouped GEMM for down, then the combine; the
//! contiguous layout adds three small kernels before the GEMMs that sort the assignments by
//! expert ([`MoeLayout`]); on FP8 experts it runs the Hopper grouped GEMM
//! ([`MoeLayout::ContiguousWgmma`], `csrc/sm90/gemm/fp8_gemm.cu`) over a padded, permuted copy of
//! the activations, and for decode the same GEMM in the masked layout
//! ([`MoeLayout::MaskedWgmma`]: one small kernel instead of the sort). Scratch buffers (the sort, the quantized activations, the
//! intermediate and the experts' outputs) are allocated per call on the stream, as `linear`
//! allocates its quantized activations.

use std::borrow::Cow;

use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, SyncOnDrop, ValidAsZeroBits};

use super::fp8_gemm::tensor_map;
use super::gemm::{dim, u16s, Weight};
use super::params::{
    MoeCombineParams, MoeGemmParams, MoeGemmWgmmaParams, MoeMaskParams, MoePermuteParams, MoeSortParams, RouteParams,
    FLASHSEEK_GEMM_THREADS, FLASHSEEK_GEMM_TILE, FLASHSEEK_MOE_MASKED_MAX, FLASHSEEK_MOE_PERMUTE_THREADS,
    FLASHSEEK_MOE_SCAN_THREADS, FLASHSEEK_MOE_THREADS, FLASHSEEK_ROUTE_MAX_EXPERTS, FLASHSEEK_ROUTE_THREADS,
};
use super::{driver, grid, product, to_u32, CudaDevice};
use crate::backend::{HostExpert, RouterParams};
use crate::error::{ensure_shape, Error, Result};
use crate::fp8::ScaleFmt;
use crate::gemm_tiles::GemmTiles;
use crate::model::weights::{blocks, DType, HostLinear};

/// Blocks at most of the grid-stride bookkeeping kernels (count, scatter, combine).
const MAX_BLOCKS: usize = 4096;

/// One projection of every expert: `n_experts` matrices `[rows, cols]` back to back (FP8: their
/// block scales back to back too), so one launch reaches every expert by a stride.
struct Stack {
    rows: usize,
    cols: usize,
    weight: Weight,
}

impl Stack {
    /// Values of one expert's matrix.
    fn stride(&self) -> usize {
        self.rows * self.cols
    }

    /// Block scales of one expert's matrix (FP8).
    fn scale_stride(&self) -> usize {
        blocks(self.rows) * blocks(self.cols)
    }

    fn is_fp8(&self) -> bool {
        matches!(self.weight, Weight::Fp8 { .. })
    }
}

/// The routed experts of one MoE layer on the device, each projection of every expert in one
/// buffer in the checkpoint's format: gate and up `[n_experts, inter, hidden]`, down
/// `[n_experts, hidden, inter]`. All experts share one shape, gate and up one format, and the
/// down projections one format.
pub struct CudaExperts {
    n_experts: usize,
    gate: Stack,
    up: Stack,
    down: Stack,
}

impl CudaExperts {
    pub fn n_experts(&self) -> usize {
        self.n_experts
    }

    /// Columns of the activations and of the output.
    pub fn hidden(&self) -> usize {
        self.gate.cols
    }

    /// Width of the intermediate (rows of gate and up).
    pub fn inter(&self) -> usize {
        self.gate.rows
    }

    /// Whether [`MoeLayout::ContiguousWgmma`] takes these experts with activation quantization
    /// `quant`: FP8 gate, up and down, quantized activations, hidden and inter multiples of 16
    /// (TMA's row strides).
    pub fn takes_wgmma(&self, quant: Option<ScaleFmt>) -> bool {
        quant.is_some()
            && [&self.gate, &self.up, &self.down].iter().all(|s| s.is_fp8())
            && CudaDevice::fp8_gemm_fast_supports(self.hidden())
            && CudaDevice::fp8_gemm_fast_supports(self.inter())
    }
}

/// How the grouped GEMMs find each expert's assignments (`rows * top_k` of them, assignment
/// `t * top_k + j` being slot `j` of token `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeLayout {
    /// Each expert gets one 64-row tile of the GEMM grid and finds its assignments by scanning
    /// `idx` itself: no sort, for at most 64 assignments (decode). Blocks of experts without
    /// assignments leave at once.
    Masked,
    /// Assignments are sorted by expert on the device (count, prefix sum, scatter) into
    /// contiguous segments, cut into 64-row tiles of one expert each; the grid holds an upper
    /// bound of the tiles (`ceil(n / 64) + min(n_experts, n)`), tiles past the real count leave.
    Contiguous,
    /// The contiguous sort, on the Hopper grouped GEMM (wgmma fed by TMA, one persistent launch
    /// per projection): the tokens' codes are permuted into each expert's 64-row tiles (padded),
    /// gate, up and the intermediate stay in that padded order, and the down projection writes
    /// each assignment's row back in place. Only where [`CudaExperts::takes_wgmma`];
    /// [`CudaDevice::moe_experts`] takes it there for more than 64 assignments.
    ContiguousWgmma,
    /// The Hopper grouped GEMM for at most 64 assignments (decode): no sort; one small kernel
    /// (moe_mask) gives each expert with assignments one 64-row slot, in the order of their first
    /// appearance in `idx`, and writes their number for the GEMM to read, so no block runs for an
    /// empty expert. The tokens' codes are gathered into the slots' rows, then as
    /// [`MoeLayout::ContiguousWgmma`]. Only where [`CudaExperts::takes_wgmma`];
    /// [`CudaDevice::moe_experts`] takes it there for at most 64 assignments.
    MaskedWgmma,
}

impl MoeLayout {
    /// The layout [`CudaDevice::moe_experts`] takes for `assignments` (rows · top_k): masked
    /// where it can, since it needs no sort.
    pub fn for_assignments(assignments: usize) -> Self {
        if assignments <= FLASHSEEK_MOE_MASKED_MAX as usize {
            MoeLayout::Masked
        } else {
            MoeLayout::Contiguous
        }
    }

    /// The layout [`CudaDevice::moe_experts`] takes for `assignments` (rows · top_k) of these
    /// experts: [`MoeLayout::for_assignments`], on the Hopper grouped GEMM
    /// ([`MoeLayout::MaskedWgmma`], [`MoeLayout::ContiguousWgmma`]) where
    /// [`CudaExperts::takes_wgmma`].
    pub fn for_call(assignments: usize, experts: &CudaExperts, quant: Option<ScaleFmt>) -> Self {
        match Self::for_assignments(assignments) {
            MoeLayout::Masked if experts.takes_wgmma(quant) => MoeLayout::MaskedWgmma,
            MoeLayout::Contiguous if experts.takes_wgmma(quant) => MoeLayout::ContiguousWgmma,
            layout => layout,
        }
    }

    /// Whether this layout takes at most [`FLASHSEEK_MOE_MASKED_MAX`] assignments.
    fn is_masked(self) -> bool {
        matches!(self, MoeLayout::Masked | MoeLayout::MaskedWgmma)
    }

    /// Whether this layout runs the Hopper grouped GEMM.
    fn is_wgmma(self) -> bool {
        matches!(self, MoeLayout::MaskedWgmma | MoeLayout::ContiguousWgmma)
    }
}

/// Where the grouped GEMMs read the routing: `idx` (masked) or the sort's buffers (contiguous);
/// device addresses, 0 for those the layout does not use.
struct Routing {
    masked: bool,
    m_tiles: usize,
    idx: u64,
    sorted: u64,
    offsets: u64,
    tile_starts: u64,
}

/// The parts of the sort's buffer (device addresses): counts and cursor `[n_experts]`, offsets
/// and tile_starts `[n_experts + 1]`, then the sorted assignment ids.
struct SortParts {
    counts: u64,
    cursor: u64,
    offsets: u64,
    tile_starts: u64,
    sorted: u64,
}

impl SortParts {
    fn new(base: u64, n_experts: usize) -> Self {
        let at = |words: usize| base + (words * std::mem::size_of::<u32>()) as u64;
        let e = n_experts;
        SortParts {
            counts: at(0),
            cursor: at(e),
            offsets: at(2 * e),
            tile_starts: at(3 * e + 1),
            sorted: at(4 * e + 2),
        }
    }
}

/// The sort (contiguous) or moe_mask's slots (masked, `slots` not 0) as the Hopper grouped GEMM
/// and moe_permute read them (device addresses, 0 for those the layout does not use), with the
/// bound of its m tiles and the padded rows allocated for them (64 per tile).
struct Padded {
    offsets: u64,
    tile_starts: u64,
    sorted: u64,
    slots: u64,
    m_tiles: usize,
    padded: usize,
}

/// A grouped GEMM's activations: f32 rows, or e4m3 codes with their 1x128 scales.
enum Acts {
    F32(u64),
    Fp8 { codes: u64, scales: u64 },
}

/// A 2-D weight's shape, or an error naming it.
fn shape2(w: &HostLinear, op: &'static str) -> Result<(usize, usize)> {
    match w.weight.shape[..] {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(Error::shape(op, format!("`{}` is not 2-D: {:?}", w.weight.name, w.weight.shape))),
    }
}

/// Grid of a grid-stride kernel over `n` items.
fn stride_blocks(n: usize) -> u32 {
    n.div_ceil(FLASHSEEK_MOE_THREADS as usize).clamp(1, MAX_BLOCKS) as u32
}

impl CudaDevice {
    /// DeepSeek's `noaux_tc` router over `rows` rows of `n_experts` router logits, as the CPU
    /// backend's `route`: the `params.top_k` chosen experts of each row, best first, into `idx`
    /// `[rows, top_k]` and their weights into `weights` `[rows, top_k]`. The parameters are
    /// checked as the CPU checks them (`n_group` divides `n_experts`, `topk_group <= n_group`,
    /// `top_k` at most the experts of `topk_group` groups); at most 512 experts.
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        n_experts: usize,
        bias: &CudaSlice<f32>,
        params: RouterParams,
        idx: &mut CudaSlice<i32>,
        weights: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "route";
        let p = params;
        ensure_shape(
            n_experts > 0
                && p.n_group > 0
                && n_experts % p.n_group == 0
                && p.topk_group <= p.n_group
                && p.top_k <= p.topk_group * (n_experts / p.n_group),
            OP,
            || format!("{n_experts} experts, params {p:?}"),
        )?;
        ensure_shape(n_experts <= FLASHSEEK_ROUTE_MAX_EXPERTS as usize, OP, || {
            format!("{n_experts} experts: the kernel takes at most {FLASHSEEK_ROUTE_MAX_EXPERTS}")
        })?;
        let picks = product(rows, p.top_k, OP)?;
        let (logits_ptr, _logits) = self.input(logits, product(rows, n_experts, OP)?, OP, "logits")?;
        let (bias_ptr, _bias) = self.input(bias, n_experts, OP, "bias")?;
        let (idx_ptr, _idx) = self.output(idx, picks, OP, "idx")?;
        let (w_ptr, _w) = self.output(weights, picks, OP, "weights")?;
        let rows_per_block = (FLASHSEEK_ROUTE_THREADS / 32) as usize;
        let grid_blocks = grid(rows.div_ceil(rows_per_block), OP)?;
        let prm = RouteParams {
            logits: logits_ptr as *const f32,
            bias: bias_ptr as *const f32,
            idx: idx_ptr as *mut i32,
            weights: w_ptr as *mut f32,
            rows: to_u32(rows, OP, "rows")?,
            n_experts: to_u32(n_experts, OP, "experts")?,
            n_group: to_u32(p.n_group, OP, "n_group")?,
            topk_group: to_u32(p.topk_group, OP, "topk_group")?,
            top_k: to_u32(p.top_k, OP, "top_k")?,
            normalize: u32::from(p.norm_topk_prob),
            scaling: p.scaling,
        };
        if picks == 0 {
            return Ok(());
        }
        // SAFETY: warp r < rows reads logits[r * n_experts ..][..n_experts] and bias[..n_experts]
        // and writes idx and weights [r * top_k ..][..top_k], within the lengths checked above;
        // the parameters checked above keep every expert and group index it forms below
        // n_experts <= FLASHSEEK_ROUTE_MAX_EXPERTS, the size of its shared arrays.
        unsafe { self.launch(&self.kernels.route, OP, grid_blocks, FLASHSEEK_ROUTE_THREADS, &prm) }
    }

    /// Copies every expert's gate, up and down projections to the device, one buffer per
    /// projection in the checkpoint's format, checking that all experts share one shape (gate and
    /// up `[inter, hidden]`, down `[hidden, inter]`), gate and up one format and the down
    /// projections one format, and each weight's bytes and FP8 block scales.
    pub fn load_experts(&self, experts: &[HostExpert]) -> Result<CudaExperts> {
        const OP: &str = "load_experts";
        let (inter, hidden) = match experts.first() {
            Some(e) => shape2(&e.gate, OP)?,
            None => (0, 0),
        };
        let gate = self.stack(experts, |e| &e.gate, inter, hidden)?;
        let up = self.stack(experts, |e| &e.up, inter, hidden)?;
        let down = self.stack(experts, |e| &e.down, hidden, inter)?;
        if let Some(e) = experts.first() {
            ensure_shape(e.gate.weight.dtype == e.up.weight.dtype, OP, || {
                format!(
                    "gate is {:?} but up is {:?}: one launch multiplies both",
                    e.gate.weight.dtype, e.up.weight.dtype
                )
            })?;
        }
        Ok(CudaExperts { n_experts: experts.len(), gate, up, down })
    }

    /// The projection `pick` of every expert, each `[rows, cols]` in the first one's format.
    fn stack(
        &self,
        experts: &[HostExpert],
        pick: impl Fn(&HostExpert) -> &HostLinear,
        rows: usize,
        cols: usize,
    ) -> Result<Stack> {
        const OP: &str = "load_experts";
        let dtype = experts.first().map_or(DType::F32, |e| pick(e).weight.dtype);
        let each = product(rows, cols, OP)?;
        let n = experts.len();
        for (i, e) in experts.iter().enumerate() {
            let w = pick(e);
            let t = &w.weight;
            ensure_shape(t.shape[..] == [rows, cols] && t.dtype == dtype, OP, || {
                format!(
                    "expert {i}: `{}` is {:?} {:?}, expected {dtype:?} [{rows}, {cols}] as expert 0",
                    t.name, t.dtype, t.shape
                )
            })?;
            ensure_shape(each.checked_mul(dtype.size()) == Some(t.bytes.as_slice().len()), OP, || {
                format!("`{}` [{rows}, {cols}] of {dtype:?} holds {} bytes", t.name, t.bytes.as_slice().len())
            })?;
            if dtype == DType::F8E4M3 {
                let scales = w.scale_inv.as_deref().map_or(0, <[f32]>::len);
                ensure_shape(w.scale_inv.is_some() && scales == blocks(rows) * blocks(cols), OP, || {
                    format!("FP8 `{}` needs {}x{} block scales, has {scales}", t.name, blocks(rows), blocks(cols))
                })?;
            }
        }
        let weight = match dtype {
            DType::F32 => Weight::F32(self.upload_stacked(n, each, |i| Cow::Owned(pick(&experts[i]).weight.to_f32()))?),
            DType::Bf16 => Weight::Bf16(
                self.upload_stacked(n, each, |i| Cow::Owned(u16s(pick(&experts[i]).weight.bytes.as_slice())))?,
            ),
            DType::F16 => Weight::F16(
                self.upload_stacked(n, each, |i| Cow::Owned(u16s(pick(&experts[i]).weight.bytes.as_slice())))?,
            ),
            DType::F8E4M3 => {
                let per = blocks(rows) * blocks(cols);
                let codes =
                    self.upload_stacked(n, each, |i| Cow::Borrowed(pick(&experts[i]).weight.bytes.as_slice()))?;
                let scales = self.upload_stacked(n, per, |i| {
                    Cow::Borrowed(pick(&experts[i]).scale_inv.as_deref().unwrap_or_default())
                })?;
                Weight::Fp8 { codes, scales }
            }
        };
        Ok(Stack { rows, cols, weight })
    }

    /// `n` parts of `each` values, part(i) at i * each, in one new buffer (at least one value:
    /// the driver refuses 0 bytes).
    fn upload_stacked<'a, T: DeviceRepr + ValidAsZeroBits + Clone + 'a>(
        &self,
        n: usize,
        each: usize,
        part: impl Fn(usize) -> Cow<'a, [T]>,
    ) -> Result<CudaSlice<T>> {
        const OP: &str = "load_experts";
        let mut buf = self.zeros::<T>(product(n, each, OP)?.max(1))?;
        for i in 0..n {
            let data = part(i);
            ensure_shape(data.len() == each, OP, || format!("expert {i} has {} values, expected {each}", data.len()))?;
            if each > 0 {
                let mut view = buf
                    .try_slice_mut(i * each..(i + 1) * each)
                    .ok_or_else(|| Error::shape(OP, format!("expert {i} past the stacked buffer")))?;
                self.stream.memcpy_htod(data.as_ref(), &mut view).map_err(|e| driver("upload", e))?;
            }
        }
        Ok(buf)
    }

    /// `out[t] = Σ_j weights[t, j] · expert_{idx[t, j]}(x[t])` over `rows` tokens of `x`
    /// `[rows, hidden]` with `top_k` experts each (`idx`, `weights`: `[rows, top_k]`), SiLU-gated
    /// experts, as the CPU backend's `moe_experts`: where the experts are FP8 and `quant` is set,
    /// the tokens and the intermediate are quantized per 1x128 group first. `out` `[rows, hidden]`
    /// is overwritten. The layout is [`MoeLayout::for_call`].
    ///
    /// The CPU rejects an expert id outside `0..n_experts`; here idx stays on the device, so such
    /// an id is caught there: its token's output row is NaN, the other rows are computed as usual.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_experts(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        experts: &CudaExperts,
        idx: &CudaSlice<i32>,
        weights: &CudaSlice<f32>,
        top_k: usize,
        quant: Option<ScaleFmt>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let layout = MoeLayout::for_call(rows.saturating_mul(top_k), experts, quant);
        self.moe_experts_with(x, rows, experts, idx, weights, top_k, quant, layout, out)
    }

    /// [`CudaDevice::moe_experts`] in the layout given (the masked one takes at most 64
    /// assignments, the wgmma one [`CudaExperts::takes_wgmma`]): masked and contiguous give the
    /// same bits; the wgmma one differs by its GEMMs' accumulation only.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_experts_with(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        experts: &CudaExperts,
        idx: &CudaSlice<i32>,
        weights: &CudaSlice<f32>,
        top_k: usize,
        quant: Option<ScaleFmt>,
        layout: MoeLayout,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "moe_experts";
        let (n_experts, hidden, inter) = (experts.n_experts, experts.hidden(), experts.inter());
        ensure_shape(n_experts > 0 && hidden > 0, OP, || format!("{n_experts} experts of hidden size {hidden}"))?;
        let len = product(rows, hidden, OP)?;
        let n = product(rows, top_k, OP)?;
        ensure_shape(!layout.is_masked() || n <= FLASHSEEK_MOE_MASKED_MAX as usize, OP, || {
            format!("{n} assignments: the masked layout takes at most {FLASHSEEK_MOE_MASKED_MAX}")
        })?;
        ensure_shape(!layout.is_wgmma() || experts.takes_wgmma(quant), OP, || {
            format!("the wgmma layout needs FP8 experts, quantized activations and hidden ({hidden}) and inter ({inter}) multiples of 16")
        })?;
        // Assignments, hidden and inter are GEMM dimensions (below 2^31); y holds n * hidden.
        dim(n, OP, "assignments")?;
        dim(hidden, OP, "hidden")?;
        dim(inter, OP, "inter")?;
        let p_experts = to_u32(n_experts, OP, "experts")?;
        let y_len = product(n, hidden, OP)?;
        product(n, inter, OP)?;
        let (_, _x) = self.input(x, len, OP, "x")?;
        let (idx_ptr, _idx) = self.input(idx, n, OP, "idx")?;
        let (w_ptr, _w) = self.input(weights, n, OP, "weights")?;
        let (out_ptr, _out) = self.output(out, len, OP, "out")?;
        if rows == 0 {
            return Ok(());
        }
        // The experts' output per assignment, [n, hidden]; none when top_k is 0 (out is zeros).
        let y = if n > 0 {
            let mut y = self.zeros::<f32>(y_len)?;
            self.expert_outputs(x, rows, experts, (idx, idx_ptr), top_k, quant, layout, &mut y)?;
            Some(y)
        } else {
            None
        };
        let (y_ptr, _y) = match &y {
            Some(y) => {
                let (ptr, guard) = self.input(y, y_len, OP, "expert outputs")?;
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let p = MoeCombineParams {
            y: y_ptr as *const f32,
            idx: idx_ptr as *const i32,
            weights: w_ptr as *const f32,
            out: out_ptr as *mut f32,
            n: len as u64,
            cols: to_u32(hidden, OP, "hidden")?,
            top_k: to_u32(top_k, OP, "top_k")?,
            n_experts: p_experts,
        };
        // SAFETY: element i < rows * hidden of out (checked) reads idx and weights at
        // t * top_k + j < rows * top_k (checked) and, for ids in range, y at
        // (t * top_k + j) * hidden + c < n * hidden, which y holds (it exists whenever top_k > 0).
        unsafe { self.launch(&self.kernels.moe_combine, OP, stride_blocks(len), FLASHSEEK_MOE_THREADS, &p) }
    }

    /// The experts' outputs of every assignment into y `[rows * top_k, hidden]` (row a = slot a %
    /// top_k of token a / top_k); rows of out-of-range ids are left as they are.
    #[allow(clippy::too_many_arguments)]
    fn expert_outputs(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        experts: &CudaExperts,
        (idx, idx_ptr): (&CudaSlice<i32>, u64),
        top_k: usize,
        quant: Option<ScaleFmt>,
        layout: MoeLayout,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "moe_experts";
        let (n_experts, hidden, inter) = (experts.n_experts, experts.hidden(), experts.inter());
        let n = rows * top_k;
        if let (true, Some(fmt)) = (layout.is_wgmma(), quant) {
            return self.expert_outputs_wgmma(x, rows, experts, idx, top_k, fmt, layout, y);
        }
        let sort = match layout.is_masked() {
            true => None,
            false => Some(self.sort_assignments(idx, n, n_experts)?),
        };
        let (ws_ptr, _ws) = match &sort {
            Some(ws) => {
                let (ptr, guard) = self.input(ws, ws.len(), OP, "the sort")?;
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let parts = sort.as_ref().map(|_| SortParts::new(ws_ptr, n_experts));
        let routing = Routing {
            masked: layout.is_masked(),
            m_tiles: match layout.is_masked() {
                true => n_experts,
                false => n.div_ceil(FLASHSEEK_GEMM_TILE as usize) + n_experts.min(n),
            },
            idx: idx_ptr,
            offsets: parts.as_ref().map_or(0, |p| p.offsets),
            tile_starts: parts.as_ref().map_or(0, |p| p.tile_starts),
            sorted: parts.as_ref().map_or(0, |p| p.sorted),
        };

        // Gate and up, into g and u [n, inter].
        let mut g = self.zeros::<f32>((n * inter).max(1))?;
        let mut u = self.zeros::<f32>((n * inter).max(1))?;
        let gate_quant = quant.filter(|_| experts.gate.is_fp8());
        {
            let (g_ptr, _g) = self.output(&mut g, n * inter, OP, "gate")?;
            let (u_ptr, _u) = self.output(&mut u, n * inter, OP, "up")?;
            match gate_quant {
                Some(fmt) => {
                    let mut codes = self.zeros::<u8>((rows * hidden).max(1))?;
                    let mut scales = self.zeros::<f32>((rows * blocks(hidden)).max(1))?;
                    self.act_quant(x, rows, hidden, fmt, &mut codes, &mut scales)?;
                    let (c_ptr, _c) = self.input(&codes, rows * hidden, OP, "codes")?;
                    let (s_ptr, _s) = self.input(&scales, rows * blocks(hidden), OP, "scales")?;
                    let acts = Acts::Fp8 { codes: c_ptr, scales: s_ptr };
                    self.grouped_gemm(
                        acts,
                        top_k,
                        &[&experts.gate, &experts.up],
                        [g_ptr, u_ptr],
                        &routing,
                        n,
                        n_experts,
                    )?;
                }
                None => {
                    let (x_ptr, _x) = self.input(x, rows * hidden, OP, "x")?;
                    let acts = Acts::F32(x_ptr);
                    self.grouped_gemm(
                        acts,
                        top_k,
                        &[&experts.gate, &experts.up],
                        [g_ptr, u_ptr],
                        &routing,
                        n,
                        n_experts,
                    )?;
                }
            }
        }
        self.silu_mul(&mut g, &u, n * inter)?;
        drop(u);

        // Down, from the intermediate g into y [n, hidden].
        let (y_ptr, _y) = self.output(y, n * hidden, OP, "expert outputs")?;
        match quant.filter(|_| experts.down.is_fp8()) {
            Some(fmt) => {
                let mut codes = self.zeros::<u8>((n * inter).max(1))?;
                let mut scales = self.zeros::<f32>((n * blocks(inter)).max(1))?;
                self.act_quant(&g, n, inter, fmt, &mut codes, &mut scales)?;
                let (c_ptr, _c) = self.input(&codes, n * inter, OP, "codes")?;
                let (s_ptr, _s) = self.input(&scales, n * blocks(inter), OP, "scales")?;
                let acts = Acts::Fp8 { codes: c_ptr, scales: s_ptr };
                self.grouped_gemm(acts, 1, &[&experts.down], [y_ptr, 0], &routing, n, n_experts)
            }
            None => {
                let (g_ptr, _g) = self.input(&g, n * inter, OP, "intermediate")?;
                self.grouped_gemm(Acts::F32(g_ptr), 1, &[&experts.down], [y_ptr, 0], &routing, n, n_experts)
            }
        }
    }

    /// [`CudaDevice::expert_outputs`] on the Hopper grouped GEMM ([`MoeLayout::ContiguousWgmma`],
    /// [`MoeLayout::MaskedWgmma`]): the sort or the slots; the tokens quantized and permuted into
    /// the padded rows (each expert's assignments in 64-row tiles); gate and up into padded rows
    /// of g and u; silu_mul and the
    /// intermediate's quantization over all padded rows (padding rows stay zero: silu(0)·0 and
    /// their codes are 0); down scattered into y's assignment rows. Per row the very operations
    /// of the other layouts, only the GEMMs' accumulation differs.
    #[allow(clippy::too_many_arguments)]
    fn expert_outputs_wgmma(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        experts: &CudaExperts,
        idx: &CudaSlice<i32>,
        top_k: usize,
        fmt: ScaleFmt,
        layout: MoeLayout,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "moe_experts";
        let (n_experts, hidden, inter) = (experts.n_experts, experts.hidden(), experts.inter());
        let n = rows * top_k;
        let ws = match layout.is_masked() {
            true => self.mask_assignments(idx, n, n_experts)?,
            false => self.sort_assignments(idx, n, n_experts)?,
        };
        let (ws_ptr, _ws) = self.input(&ws, ws.len(), OP, "the routing's layout")?;
        let m_tiles = match layout.is_masked() {
            true => n.min(n_experts),
            false => n.div_ceil(FLASHSEEK_GEMM_TILE as usize) + n_experts.min(n),
        };
        let padded = product(m_tiles, FLASHSEEK_GEMM_TILE as usize, OP)?;
        dim(padded, OP, "padded rows")?;
        let pad = match layout.is_masked() {
            true => Padded { offsets: 0, tile_starts: 0, sorted: 0, slots: ws_ptr, m_tiles, padded },
            false => {
                let parts = SortParts::new(ws_ptr, n_experts);
                Padded {
                    offsets: parts.offsets,
                    tile_starts: parts.tile_starts,
                    sorted: parts.sorted,
                    slots: 0,
                    m_tiles,
                    padded,
                }
            }
        };

        let mut codes = self.zeros::<u8>(product(rows, hidden, OP)?.max(1))?;
        let mut scales = self.zeros::<f32>(product(rows, blocks(hidden), OP)?.max(1))?;
        self.act_quant(x, rows, hidden, fmt, &mut codes, &mut scales)?;
        let mut a = self.zeros::<u8>(product(padded, hidden, OP)?)?;
        let mut a_scales = self.zeros::<f32>(product(padded, blocks(hidden), OP)?)?;
        self.moe_permute((&codes, &scales), rows, hidden, top_k, n_experts, &pad, (&mut a, &mut a_scales))?;
        drop((codes, scales));

        let mut g = self.zeros::<f32>(product(padded, inter, OP)?)?;
        let mut u = self.zeros::<f32>(padded * inter)?;
        self.grouped_wgmma((&a, &a_scales), &experts.gate, n_experts, &pad, None, &mut g)?;
        self.grouped_wgmma((&a, &a_scales), &experts.up, n_experts, &pad, None, &mut u)?;
        drop((a, a_scales));
        self.silu_mul(&mut g, &u, padded * inter)?;
        drop(u);
        let mut h = self.zeros::<u8>(padded * inter)?;
        let mut h_scales = self.zeros::<f32>(product(padded, blocks(inter), OP)?)?;
        self.act_quant(&g, padded, inter, fmt, &mut h, &mut h_scales)?;
        self.grouped_wgmma((&h, &h_scales), &experts.down, n_experts, &pad, Some(n), y)
    }

    /// moe_permute: the padded rows of `codes` `[src_rows, k]` (and their scales) for the grouped
    /// GEMM, row a / a_row_div for the assignment a each holds, zeros for padding rows.
    #[allow(clippy::too_many_arguments)]
    fn moe_permute(
        &self,
        (codes, scales): (&CudaSlice<u8>, &CudaSlice<f32>),
        src_rows: usize,
        k: usize,
        a_row_div: usize,
        n_experts: usize,
        pad: &Padded,
        (out_codes, out_scales): (&mut CudaSlice<u8>, &mut CudaSlice<f32>),
    ) -> Result<()> {
        const OP: &str = "moe_experts";
        ensure_shape(CudaDevice::fp8_gemm_fast_supports(k) && a_row_div > 0, OP, || {
            format!("permuting rows of {k} codes by {a_row_div}")
        })?;
        let (c_ptr, _c) = self.input(codes, product(src_rows, k, OP)?, OP, "codes")?;
        let (s_ptr, _s) = self.input(scales, product(src_rows, blocks(k), OP)?, OP, "scales")?;
        let (oc_ptr, _oc) = self.output(out_codes, product(pad.padded, k, OP)?, OP, "padded codes")?;
        let (os_ptr, _os) = self.output(out_scales, product(pad.padded, blocks(k), OP)?, OP, "padded scales")?;
        let warps = (FLASHSEEK_MOE_PERMUTE_THREADS / 32) as usize;
        let p = MoePermuteParams {
            codes: c_ptr as *const u8,
            scales: s_ptr as *const f32,
            out_codes: oc_ptr as *mut u8,
            out_scales: os_ptr as *mut f32,
            offsets: pad.offsets as *const u32,
            tile_starts: pad.tile_starts as *const u32,
            sorted: pad.sorted as *const u32,
            slots: pad.slots as *const u32,
            n_experts: to_u32(n_experts, OP, "experts")?,
            m_tiles: to_u32(pad.m_tiles, OP, "tiles")?,
            k: to_u32(k, OP, "k")?,
            a_row_div: to_u32(a_row_div, OP, "top_k")?,
        };
        // SAFETY: the warp of padded row r < 64 m_tiles (below 2^31, checked) writes row r of the
        // padded codes and scales (lengths checked); where r holds an assignment a (a position of
        // the sort below offsets[e + 1] <= the ids it sorted, or moe_mask's slot row, all below
        // src_rows * a_row_div: the caller's idx holds src_rows * a_row_div ids) it reads row
        // a / a_row_div < src_rows of codes and scales. The sort's tiles number at most m_tiles
        // (ceil(n / 64) + min(n_experts, n)), so every m tile it reads is in the sort's arrays;
        // the masked slots are m_tiles = min(n, n_experts), their buffer masked_words(m_tiles).
        unsafe {
            self.launch(
                &self.kernels.moe_permute,
                OP,
                grid(pad.padded.div_ceil(warps), OP)?,
                FLASHSEEK_MOE_PERMUTE_THREADS,
                &p,
            )
        }
    }

    /// One grouped Hopper GEMM over the padded rows: `out[row] = a[row] · (stack of row's
    /// expert)ᵀ` for the rows holding an assignment, row being the padded row, or with `scatter`
    /// = Some(n) the assignment (`out` `[n, stack.rows]`).
    fn grouped_wgmma(
        &self,
        (a, a_scales): (&CudaSlice<u8>, &CudaSlice<f32>),
        stack: &Stack,
        n_experts: usize,
        pad: &Padded,
        scatter: Option<usize>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "moe_experts";
        let Weight::Fp8 { codes, scales } = &stack.weight else {
            return Err(Error::shape(OP, "the wgmma layout needs FP8 experts"));
        };
        let (n, k) = (stack.rows, stack.cols);
        ensure_shape(CudaDevice::fp8_gemm_fast_supports(k), OP, || format!("k = {k}: not a multiple of 16"))?;
        let stacked_rows = product(n_experts, n, OP)?;
        dim(stacked_rows, OP, "experts x rows")?;
        let out_rows = scatter.unwrap_or(pad.padded);
        let (a_ptr, _a) = self.input(a, product(pad.padded, k, OP)?, OP, "padded codes")?;
        let (sa_ptr, _sa) = self.input(a_scales, product(pad.padded, blocks(k), OP)?, OP, "padded scales")?;
        let (b_ptr, _b) = self.input(codes, product(stacked_rows, k, OP)?, OP, "experts")?;
        let (sb_ptr, _sb) = self.input(scales, product(stack.scale_stride(), n_experts, OP)?, OP, "scales")?;
        let (out_ptr, _out) = self.output(out, product(out_rows, n, OP)?, OP, "out")?;
        let tiles = GemmTiles::choose_grouped(pad.padded, n, self.sm_count);
        let count = tiles.tiles(pad.padded, n);
        if count == 0 {
            return Ok(());
        }
        let map_a = tensor_map(a_ptr, pad.padded, k, tiles.block_m, OP)?;
        let map_b = tensor_map(b_ptr, stacked_rows, k, tiles.block_n, OP)?;
        let p = MoeGemmWgmmaParams {
            a_scales: sa_ptr as *const f32,
            b_scales: sb_ptr as *const f32,
            out: out_ptr as *mut f32,
            offsets: pad.offsets as *const u32,
            tile_starts: pad.tile_starts as *const u32,
            sorted: pad.sorted as *const u32,
            slots: pad.slots as *const u32,
            b_scale_stride: stack.scale_stride() as u64,
            n_experts: to_u32(n_experts, OP, "experts")?,
            m_tiles: to_u32(pad.m_tiles, OP, "tiles")?,
            n: dim(n, OP, "n")?,
            k: dim(k, OP, "k")?,
            scatter: u32::from(scatter.is_some()),
        };
        let kernels = match pad.slots {
            0 => &self.kernels.moe_gemm_wgmma,
            _ => &self.kernels.moe_gemm_wgmma_masked,
        };
        let kernel = kernels.get(tiles, OP)?;
        // SAFETY: the kernel takes (CUtensorMap, CUtensorMap, MoeGemmWgmmaParams). It runs the
        // tiles of the sort's m tiles or of the active slots (at most m_tiles: their rows are
        // padded rows, all inside the padded codes and scales checked above) by the n blocks; the
        // expert of a tile (the sort's, or the one moe_mask wrote for the slot, from idx's valid
        // ids) is below n_experts, whose weights' rows (n_experts * n) and scales (n_experts strides) were
        // checked; TMA reads nothing outside the maps' extents. It writes out row = the padded
        // row (< padded) or, scattered, the sorted assignment (< n of the caller's idx, each
        // written once), columns below n: inside out, checked for out_rows * n.
        unsafe { self.launch_wgmma(kernel, OP, tiles, count, [&map_a, &map_b], &p) }
    }

    /// The masked layout of the `n` (at most 64) assignments of `idx` on the device (moe_mask):
    /// one buffer of `masked_words(min(n, n_experts))` words (fp8_gemm.cuh, "masked layout").
    fn mask_assignments(&self, idx: &CudaSlice<i32>, n: usize, n_experts: usize) -> Result<CudaSlice<u32>> {
        const OP: &str = "moe_experts";
        ensure_shape(n <= FLASHSEEK_MOE_MASKED_MAX as usize, OP, || {
            format!("{n} assignments: the masked layout takes at most {FLASHSEEK_MOE_MASKED_MAX}")
        })?;
        let slots = n.min(n_experts);
        let len = 1 + slots + slots * FLASHSEEK_GEMM_TILE as usize;
        let ws = self.zeros::<u32>(len)?;
        let (idx_ptr, _idx) = self.input(idx, n, OP, "idx")?;
        let (ws_ptr, ws_guard) = self.input(&ws, len, OP, "the slots")?;
        let p = MoeMaskParams {
            idx: idx_ptr as *const i32,
            slots: ws_ptr as *mut u32,
            n_assign: to_u32(n, OP, "assignments")?,
            n_experts: to_u32(n_experts, OP, "experts")?,
        };
        // SAFETY: one block of FLASHSEEK_MOE_MASKED_MAX threads; thread a < n (at most that many,
        // checked) reads idx[a] (idx holds n ids, checked) and writes words of the buffer's
        // 1 + slots + 64 slots (allocated so): the count, a slot's expert and a slot row, slots
        // being below the number of distinct valid ids, at most min(n, n_experts). The buffer
        // is returned to the caller, who keeps it until the GEMMs are queued.
        unsafe { self.launch(&self.kernels.moe_mask, OP, 1, FLASHSEEK_MOE_MASKED_MAX, &p)? };
        drop(ws_guard);
        Ok(ws)
    }

    /// Sorts the `n` assignments of `idx` by expert on the device (moe_count, moe_offsets,
    /// moe_scatter): one buffer of counts and cursor `[n_experts]`, offsets and tile_starts
    /// `[n_experts + 1]`, then the sorted assignment ids `[n]`.
    fn sort_assignments(&self, idx: &CudaSlice<i32>, n: usize, n_experts: usize) -> Result<CudaSlice<u32>> {
        const OP: &str = "moe_experts";
        let len = product(n_experts, 4, OP)?.checked_add(2).and_then(|l| l.checked_add(n));
        let len = len.ok_or_else(|| Error::shape(OP, "the sort's buffer overflows"))?;
        let ws = self.zeros::<u32>(len)?;
        let (idx_ptr, _idx) = self.input(idx, n, OP, "idx")?;
        let (ws_ptr, ws_guard) = self.input(&ws, len, OP, "the sort")?;
        let parts = SortParts::new(ws_ptr, n_experts);
        let p = MoeSortParams {
            idx: idx_ptr as *const i32,
            counts: parts.counts as *mut u32,
            cursor: parts.cursor as *mut u32,
            offsets: parts.offsets as *mut u32,
            tile_starts: parts.tile_starts as *mut u32,
            sorted: parts.sorted as *mut u32,
            n_assign: to_u32(n, OP, "assignments")?,
            n_experts: to_u32(n_experts, OP, "experts")?,
        };
        // SAFETY: the kernels read idx[a] for a < n (checked) and index the sort's buffer as laid
        // out above (4 n_experts + 2 + n words, allocated so): counts, cursor, offsets and
        // tile_starts by expert ids below n_experts (out-of-range ids are skipped) or n_experts
        // itself for the last two, sorted by positions below the count of valid ids, at most n.
        // The buffer is returned to the caller, who keeps it until the GEMMs are queued (a freed
        // buffer is released in stream order, after them).
        unsafe {
            self.launch(&self.kernels.moe_count, OP, stride_blocks(n), FLASHSEEK_MOE_THREADS, &p)?;
            self.launch(&self.kernels.moe_offsets, OP, 1, FLASHSEEK_MOE_SCAN_THREADS, &p)?;
            self.launch(&self.kernels.moe_scatter, OP, stride_blocks(n), FLASHSEEK_MOE_THREADS, &p)?;
        }
        drop(ws_guard);
        Ok(ws)
    }

    /// Queues one grouped GEMM: `outs[z][a, :] = acts row (a / a_row_div) · (mats[z] of a's
    /// expert)ᵀ` for every assignment a of the routing, z over `mats` (1 or 2 stacks of one
    /// format and shape). The caller checked the activations (rows of `mats[0].cols`, enough for
    /// every `a / a_row_div` with a < n) and the outputs (`[n, mats[0].rows]`) and keeps their
    /// guards alive.
    #[allow(clippy::too_many_arguments)]
    fn grouped_gemm(
        &self,
        acts: Acts,
        a_row_div: usize,
        mats: &[&Stack],
        outs: [u64; 2],
        routing: &Routing,
        n: usize,
        n_experts: usize,
    ) -> Result<()> {
        const OP: &str = "moe_experts";
        let first = mats.first().ok_or_else(|| Error::shape(OP, "no matrices to multiply"))?;
        let (rows, cols) = (first.rows, first.cols);
        ensure_shape(mats.len() <= 2 && mats.iter().all(|m| m.rows == rows && m.cols == cols), OP, || {
            "grouped matrices of different shapes".into()
        })?;
        let (a, a_scales, quantized) = match acts {
            Acts::F32(ptr) => (ptr, 0, false),
            Acts::Fp8 { codes, scales } => (codes, scales, true),
        };
        let kernel = self.moe_kernel(&first.weight, quantized)?;
        let mut b = [0u64; 2];
        let mut b_scales = [0u64; 2];
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::new();
        for (z, m) in mats.iter().enumerate() {
            ensure_shape(std::mem::discriminant(&m.weight) == std::mem::discriminant(&first.weight), OP, || {
                "grouped matrices of different formats".into()
            })?;
            let len = product(m.stride(), n_experts, OP)?;
            let (ptr, guard) = match &m.weight {
                Weight::F32(w) => self.input(w, len, OP, "experts")?,
                Weight::Bf16(w) | Weight::F16(w) => self.input(w, len, OP, "experts")?,
                Weight::Fp8 { codes, scales } => {
                    let (s_ptr, s_guard) =
                        self.input(scales, product(m.scale_stride(), n_experts, OP)?, OP, "scales")?;
                    b_scales[z] = s_ptr;
                    guards.push(s_guard);
                    self.input(codes, len, OP, "experts")?
                }
            };
            b[z] = ptr;
            guards.push(guard);
        }
        let tile = FLASHSEEK_GEMM_TILE as usize;
        let blocks_total = product(product(mats.len(), routing.m_tiles, OP)?, rows.div_ceil(tile), OP)?;
        let grid_blocks = grid(blocks_total, OP)?;
        if blocks_total == 0 {
            return Ok(());
        }
        let p = MoeGemmParams {
            a: a as *const std::ffi::c_void,
            a_scales: a_scales as *const f32,
            b: b.map(|ptr| ptr as *const std::ffi::c_void),
            b_scales: b_scales.map(|ptr| ptr as *const f32),
            out: outs.map(|ptr| ptr as *mut f32),
            idx: routing.idx as *const i32,
            sorted: routing.sorted as *const u32,
            offsets: routing.offsets as *const u32,
            tile_starts: routing.tile_starts as *const u32,
            b_stride: first.stride() as u64,
            b_scale_stride: first.scale_stride() as u64,
            n_experts: to_u32(n_experts, OP, "experts")?,
            n_assign: to_u32(n, OP, "assignments")?,
            m_tiles: to_u32(routing.m_tiles, OP, "tiles")?,
            n: dim(rows, OP, "n")?,
            k: dim(cols, OP, "k")?,
            a_row_div: to_u32(a_row_div, OP, "top_k")?,
            masked: u32::from(routing.masked),
        };
        // SAFETY: a block of matrix z < mats.len() finds rows that are assignments a < n of one
        // expert e < n_experts (masked: those with idx[a] == e, idx holding n ids; contiguous:
        // from the sort, which holds only ids in range), reads activation row a / a_row_div
        // (and its scales) and writes row a of outs[z] (n rows of `rows`), as the caller checked;
        // it reads expert e's matrix at b[z] + e * stride (and scales at e * scale_stride), within
        // the n_experts matrices checked above. The grid is n_mats * m_tiles * ceil(rows / 64).
        unsafe { self.launch(kernel, OP, grid_blocks, FLASHSEEK_GEMM_THREADS, &p) }
    }

    /// The grouped GEMM kernel for experts of this format: the FP8 one for quantized activations
    /// (FP8 experts only), otherwise the plain one of the weights' format.
    fn moe_kernel(&self, w: &Weight, quantized: bool) -> Result<&CudaFunction> {
        Ok(match w {
            Weight::Fp8 { .. } if quantized => &self.kernels.moe_gemm_fp8,
            _ if quantized => return Err(Error::shape("moe_experts", "quantized activations for non-FP8 experts")),
            Weight::Fp8 { .. } => &self.kernels.moe_gemm_we4m3,
            Weight::F32(_) => &self.kernels.moe_gemm_wf32,
            Weight::Bf16(_) => &self.kernels.moe_gemm_wbf16,
            Weight::F16(_) => &self.kernels.moe_gemm_wf16,
        })
    }
}
