// Index math the Hopper kernels share (fp8_gemm.cu, indexer_logits_fp8.cu, decode_fast.cu), on
// the host and the device: the 128-byte swizzle, the wgmma shared-memory matrix descriptor and its
// K-step advance, the f32 accumulator fragment map of wgmma, and the mbarrier ring's stage and
// parity. tests/sm90_layout.rs compiles this header on the host and checks each function against
// an independent formulation (CuTe's Swizzle<3,4,3>, the PTX ISA's descriptor table and D-fragment
// figure, a simulation of the ring). Each kernel's own layout (tile offsets, chunking) stays in its
// header and builds on these.
#pragma once

#include <stdint.h>

#include "host_device.cuh"

namespace flashseek {
namespace sm90 {

// Threads of a warpgroup: the unit wgmma, setmaxnreg and the kernels' warp roles work in.
constexpr uint32_t kWarpgroup = 128;

// ---- the 128-byte swizzle ----

// The swizzle repeats every 8 rows of 128 bytes (an atom of 1024 bytes); operand tiles start on
// an atom, so that the pattern the TMA writes (and wgmma reads) is the one below.
constexpr uint32_t kSwizzleRow = 128;
constexpr uint32_t kSwizzleAtom = 8 * kSwizzleRow;

// The 128-byte swizzle of a byte offset from a 1024-aligned base, as TMA writes a box and wgmma
// reads it (CuTe's Swizzle<3, 4, 3>, the TMA's CU_TENSOR_MAP_SWIZZLE_128B): the 16-byte chunk
// index (bits 4..6) XOR the row within the 8-row atom (bits 7..9). This is the form the hardware
// applies to the address it forms.
FLASHSEEK_HOST_DEVICE constexpr uint32_t swizzle_128b(uint32_t offset) {
    return offset ^ (((offset >> 7) & 7u) << 4);
}

// The same for byte `byte` (0..128) of row `row` of a tile of 128-byte rows: the form the kernels
// store with (the row's part folds into the row's base).
FLASHSEEK_HOST_DEVICE constexpr uint32_t swizzle_128b(uint32_t row, uint32_t byte) {
    return row * kSwizzleRow + ((((byte >> 4) ^ row) & 7u) << 4) + (byte & 15u);
}

// ---- the wgmma shared-memory matrix descriptor ----

// PTX ISA, "Matrix Descriptor Format" of warpgroup-level MMA: start address >> 4 in bits 0-13,
// leading dimension byte offset >> 4 in bits 16-29, stride dimension byte offset >> 4 in bits
// 32-45, base offset in bits 49-51 (0: every swizzled tile starts on its 1024-byte atom), layout
// type in bits 62-63 (kSwizzle128B).
constexpr uint32_t kSwizzle128B = 1;

FLASHSEEK_HOST_DEVICE constexpr uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo, uint32_t layout) {
    return static_cast<uint64_t>((addr >> 4) & 0x3fffu) | (static_cast<uint64_t>((lbo >> 4) & 0x3fffu) << 16) |
           (static_cast<uint64_t>((sbo >> 4) & 0x3fffu) << 32) | (static_cast<uint64_t>(layout & 3u) << 62);
}

// A K-major operand in the 128-byte swizzle whose K slice fits in a 128-byte row: the stride
// offset is the 1024 bytes from one 8-row atom to the next; the leading offset is unused by such
// layouts and set to 16 bytes (1 in the field), as CUTLASS does.
constexpr uint32_t kKMajorLbo = 16;

FLASHSEEK_HOST_DEVICE constexpr uint64_t k_major_sw128_desc(uint32_t addr) {
    return smem_desc(addr, kKMajorLbo, kSwizzleAtom, kSwizzle128B);
}

// The K of one wgmma instruction in bytes: k32 of 8-bit inputs, k16 of 16-bit ones.
constexpr uint32_t kWgmmaKBytes = 32;

// The descriptor of K step `step` of a K-major tile: 32 bytes further along its rows. The swizzle
// is applied to the address the hardware forms, so the start moves by plain bytes (2 in the
// descriptor's 16-byte units) while the step stays in the row.
FLASHSEEK_HOST_DEVICE constexpr uint64_t desc_advance_k(uint64_t desc, uint32_t step) {
    return desc + ((step * kWgmmaKBytes) >> 4);
}

// ---- the f32 accumulator of wgmma m64nN (PTX ISA, "Register Fragments", matrix D) ----

// Thread t of the warpgroup (warp t / 32, lane t % 32) holds N / 2 values; value i sits at row
// 16 (t / 32) + (t % 32) / 4, plus 8 for i % 4 in {2, 3}, and column 8 (i / 4) + 2 (t % 4) + i % 2.
FLASHSEEK_HOST_DEVICE constexpr uint32_t frag_row(uint32_t t, uint32_t i) {
    return 16 * (t / 32) + (t % 32) / 4 + 8 * ((i / 2) % 2);
}

FLASHSEEK_HOST_DEVICE constexpr uint32_t frag_col(uint32_t t, uint32_t i) {
    return 8 * (i / 4) + 2 * (t % 4) + i % 2;
}

// The inverse within a thread: the value at row frag_row(t, 0) + 8 half and column
// 8 block + 2 (t % 4) + c (half and c 0 or 1).
FLASHSEEK_HOST_DEVICE constexpr uint32_t frag_index(uint32_t half, uint32_t block, uint32_t c) {
    return 4 * block + 2 * half + c;
}

// ---- the mbarrier ring ----

// A ring of `stages` stages, each with a full and an empty mbarrier: iteration `it` (counted from
// 0 over the kernel's run) uses stage it % stages. An mbarrier completes phases 0, 1, 2, ...; a
// wait on parity x passes once the phase of that parity has completed, and a fresh barrier counts
// its phase "-1" (parity 1) as complete. A consumer waits on full[s] for the (it / stages)-th
// completion; the producer waits on empty[s] for the consumers' release of iteration
// it - stages, the phase before, which passes at once on the first pass over the ring.
template <class Index>
FLASHSEEK_HOST_DEVICE constexpr uint32_t ring_stage(Index it, uint32_t stages) {
    return static_cast<uint32_t>(it % stages);
}

template <class Index>
FLASHSEEK_HOST_DEVICE constexpr uint32_t ring_parity(Index it, uint32_t stages) {
    return static_cast<uint32_t>((it / stages) & 1u);
}

template <class Index>
FLASHSEEK_HOST_DEVICE constexpr uint32_t ring_empty_parity(Index it, uint32_t stages) {
    return ring_parity(it, stages) ^ 1u;
}

}  // namespace sm90
}  // namespace flashseek
