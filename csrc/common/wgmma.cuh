// wgmma instructions of the shapes the Hopper kernels use, as inline PTX (the PTX ISA's
// wgmma.mma_async): both operands from shared memory through their descriptors (sm90_layout.cuh),
// f32 accumulators in registers (their map: sm90::frag_row / frag_col). `scale_d` 0 overwrites d,
// otherwise d accumulates. Issue them between wgmma_fence() and wgmma_commit_group()
// (wgmma_tma.cuh).
#pragma once

#include <stdint.h>

// Eight accumulator operands d[i] .. d[i + 7], read and written.
#define FLASHSEEK_WGMMA_D8(i) \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])

namespace flashseek {
namespace sm90 {

// d[0..32) (+)= A[64x32] . B[64x32]^T, e4m3, both K-major.
__device__ __forceinline__ void wgmma_m64n64k32_e4m3(float (&d)[32], uint64_t desc_a, uint64_t desc_b, uint32_t scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7,"
        "%8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23,"
        "%24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1;\n}\n"
        : FLASHSEEK_WGMMA_D8(0), FLASHSEEK_WGMMA_D8(8), FLASHSEEK_WGMMA_D8(16), FLASHSEEK_WGMMA_D8(24)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d[0..64) (+)= A[64x32] . B[128x32]^T, e4m3, both K-major.
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[64], uint64_t desc_a, uint64_t desc_b, uint32_t scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7,"
        "%8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23,"
        "%24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39,"
        "%40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55,"
        "%56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1;\n}\n"
        : FLASHSEEK_WGMMA_D8(0), FLASHSEEK_WGMMA_D8(8), FLASHSEEK_WGMMA_D8(16), FLASHSEEK_WGMMA_D8(24),
          FLASHSEEK_WGMMA_D8(32), FLASHSEEK_WGMMA_D8(40), FLASHSEEK_WGMMA_D8(48), FLASHSEEK_WGMMA_D8(56)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d[0..16) (+)= A[64x16] . B[32x16]^T, bf16, both K-major (transpose flags 0, 0).
__device__ __forceinline__ void wgmma_m64n32k16_bf16(float (&d)[16], uint64_t desc_a, uint64_t desc_b, uint32_t scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7,"
        "%8, %9, %10, %11, %12, %13, %14, %15"
        "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : FLASHSEEK_WGMMA_D8(0), FLASHSEEK_WGMMA_D8(8)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d[0..128) (+)= A[64x16] . B[16x256], bf16, A K-major, B MN-major (read transposed: flags 0, 1).
__device__ __forceinline__ void wgmma_m64n256k16_bf16_tb(float (&d)[128], uint64_t desc_a, uint64_t desc_b, uint32_t scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7,"
        "%8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23,"
        "%24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39,"
        "%40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55,"
        "%56, %57, %58, %59, %60, %61, %62, %63,"
        "%64, %65, %66, %67, %68, %69, %70, %71,"
        "%72, %73, %74, %75, %76, %77, %78, %79,"
        "%80, %81, %82, %83, %84, %85, %86, %87,"
        "%88, %89, %90, %91, %92, %93, %94, %95,"
        "%96, %97, %98, %99, %100, %101, %102, %103,"
        "%104, %105, %106, %107, %108, %109, %110, %111,"
        "%112, %113, %114, %115, %116, %117, %118, %119,"
        "%120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, 0, 1;\n}\n"
        : FLASHSEEK_WGMMA_D8(0), FLASHSEEK_WGMMA_D8(8), FLASHSEEK_WGMMA_D8(16), FLASHSEEK_WGMMA_D8(24),
          FLASHSEEK_WGMMA_D8(32), FLASHSEEK_WGMMA_D8(40), FLASHSEEK_WGMMA_D8(48), FLASHSEEK_WGMMA_D8(56),
          FLASHSEEK_WGMMA_D8(64), FLASHSEEK_WGMMA_D8(72), FLASHSEEK_WGMMA_D8(80), FLASHSEEK_WGMMA_D8(88),
          FLASHSEEK_WGMMA_D8(96), FLASHSEEK_WGMMA_D8(104), FLASHSEEK_WGMMA_D8(112), FLASHSEEK_WGMMA_D8(120)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

}  // namespace sm90
}  // namespace flashseek

#undef FLASHSEEK_WGMMA_D8
