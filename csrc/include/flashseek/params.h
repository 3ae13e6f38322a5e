// Kernel parameters, one plain C struct per kernel family, passed to each kernel by value.
// build.rs turns this header into Rust (bindgen, OUT_DIR/params.rs), so the host fills the very
// layout the device reads: keep it C (no templates, no CUDA types), pointers are device pointers.
#pragma once

// Threads per block of the RMSNorm kernel (one block per row); the host launches with it.
#define FLASHSEEK_RMS_NORM_THREADS 256

// out[r, c] = weight[c] * (x[r, c] * rsqrt(mean_c(x[r, :]^2) + eps)) over `rows` rows of `cols`.
typedef struct RmsNormParams {
    // Row r starts at x + r * x_stride: x may be a column window of wider rows.
    const float* x;
    const float* weight;
    // Rows of `cols` values, packed.
    float* out;
    unsigned int rows;
    unsigned int cols;
    unsigned int x_stride;
    float eps;
} RmsNormParams;
