// Shared by every Nudge kernel. NVRTC compiles each source with this text in front of it and
// with -DNUDGE_BF16=0|1 (the half type of the matrix-product inputs), so no CUDA toolkit
// header is needed: the conversions below are single PTX instructions or bit operations, and
// the CPU references in `src/reference.rs` round the same way (round to nearest even).
typedef unsigned short half_t;
typedef unsigned int u32;

#ifndef NUDGE_BF16
#define NUDGE_BF16 0
#endif

__device__ __forceinline__ float h2f(half_t h) {
#if NUDGE_BF16
    return __uint_as_float(((u32)h) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ half_t f2h(float f) {
#if NUDGE_BF16
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (half_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (half_t)(u >> 16);
#else
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// No <math.h> under NVRTC without a toolkit: +∞ by its bits.
#define NUDGE_INF __int_as_float(0x7f800000)
