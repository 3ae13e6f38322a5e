//! TMA tensor maps of the Hopper kernels (`csrc/sm90/gemm/fp8_gemm.cu`,
//! `csrc/sm90/indexer/indexer_logits_fp8.cu`): byte tensors loaded in boxes into the 128-byte
//! swizzle that `csrc/common/sm90_layout.cuh` describes, encoded on the host per call (a few
//! microseconds, nothing on the device) and passed by value as a kernel parameter.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::driver::sys::{
    self, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion,
    CUtensorMapSwizzle,
};
use cudarc::driver::DeviceRepr;

use super::driver;
use crate::error::{Error, Result};

/// A TMA tensor map, passed by value as a `const __grid_constant__ CUtensorMap` kernel parameter.
#[repr(transparent)]
pub(super) struct TensorMap(sys::CUtensorMap);

// SAFETY: a plain 128-byte, 64-aligned struct of integers the driver encoded, the very layout of
// the kernels' CUtensorMap parameter.
unsafe impl DeviceRepr for TensorMap {}

/// The map of the byte tensor at `ptr` with extents `dims` (innermost first), byte strides
/// `strides` between the elements of each outer dimension (`dims.len() - 1` of them; multiples of
/// 16), loaded in boxes of `boxes` (innermost 128 bytes: the swizzle's span) into the 128-byte
/// swizzle, L2 promotion of 256 bytes, boxes past the edges zero-filled. `what` names the tensor
/// in a driver error.
pub(super) fn swizzled_u8(ptr: u64, dims: &[u64], strides: &[u64], boxes: &[u32], what: &str) -> Result<TensorMap> {
    let rank = dims.len();
    if boxes.len() != rank || strides.len() + 1 != rank {
        return Err(Error::Input(format!(
            "{what}: a rank-{rank} tensor map with {} strides and {} box extents",
            strides.len(),
            boxes.len()
        )));
    }
    let element_strides = vec![1u32; rank];
    let mut map = MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every pointer addresses an array of the rank's length (strides: rank - 1) alive for
    // the call, and `map` a CUtensorMap to write; the driver only encodes, reading no device memory.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            rank as u32,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(|e| driver(&format!("{what}: encoding the tensor map"), e))?;
    // SAFETY: the call succeeded, so it wrote the map.
    Ok(TensorMap(unsafe { map.assume_init() }))
}
