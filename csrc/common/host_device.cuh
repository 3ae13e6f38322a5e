// Functions that both the kernels and host-compiled tests call (index math, layouts): marked
// `__host__ __device__` under nvcc and plain inline functions under a host C++ compiler, so
// tests can check them on a machine without a GPU.
#pragma once

#ifdef __CUDACC__
#define FLASHSEEK_HOST_DEVICE __host__ __device__
#else
#define FLASHSEEK_HOST_DEVICE
#endif
