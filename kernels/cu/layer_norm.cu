// Layer norms, one warp per token row. Both write the f32 row (the residual stream stays f32
// so twelve layers of rounding do not pile up) and its half copy (the next matrix product's
// input). With the width known at compile time (-DHIDDEN, a multiple of 32 up to 1024) each
// lane holds its HIDDEN/32 values in registers: every load is issued at once and the row is
// read once and written once. Profiling showed the generic loop (kept for other widths)
// spending its time waiting on one load after another.
#ifndef HIDDEN
#define HIDDEN 0
#endif
#if HIDDEN > 0 && HIDDEN % 32 == 0 && HIDDEN <= 1024
#define PER_LANE (HIDDEN / 32)

__device__ __forceinline__ void normalize_store(float (&v)[PER_LANE], float* __restrict__ row,
                                                half_t* __restrict__ out_h,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ beta, float eps,
                                                int lane) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) s += v[i];
    float mean = warp_sum(s) / HIDDEN;
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        float d = v[i] - mean;
        ss += d * d;
    }
    float rstd = rsqrtf(warp_sum(ss) / HIDDEN + eps);
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        int c = lane + 32 * i;
        float y = (v[i] - mean) * rstd * gamma[c] + beta[c];
        row[c] = y;
        out_h[c] = f2h(y);
    }
}

// The embedding layer: word row + position row (token type 0 already folded into the
// position table at load), then LayerNorm. Ids and positions were checked on the host; they
// are clamped here as well so that no input can read outside the tables.
extern "C" __global__ void embed_layer_norm(const u32* __restrict__ ids, const u32* __restrict__ pos,
                                            const float* __restrict__ word,
                                            const float* __restrict__ position,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ beta, float eps, int tokens,
                                            int hidden, u32 vocab, u32 max_pos,
                                            float* __restrict__ resid, half_t* __restrict__ xh) {
    int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (t >= tokens) return;
    const float* w = word + (size_t)min(ids[t], vocab - 1u) * HIDDEN;
    const float* q = position + (size_t)min(pos[t], max_pos - 1u) * HIDDEN;
    float v[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) v[i] = w[lane + 32 * i] + q[lane + 32 * i];
    normalize_store(v, resid + (size_t)t * HIDDEN, xh + (size_t)t * HIDDEN, gamma, beta, eps, lane);
}

// After a projection: resid = LayerNorm(acc + bias + resid), in place; `acc` is the
// product's half output.
extern "C" __global__ void bias_residual_layer_norm(const half_t* __restrict__ acc,
                                                    const float* __restrict__ bias,
                                                    float* __restrict__ resid,
                                                    const float* __restrict__ gamma,
                                                    const float* __restrict__ beta, float eps,
                                                    int rows, int hidden, half_t* __restrict__ xh) {
    int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (t >= rows) return;
    const half_t* a = acc + (size_t)t * HIDDEN;
    float* row = resid + (size_t)t * HIDDEN;
    float v[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        int c = lane + 32 * i;
        v[i] = h2f(a[c]) + bias[c] + row[c];
    }
    normalize_store(v, row, xh + (size_t)t * HIDDEN, gamma, beta, eps, lane);
}

#else  // any other width: the same arithmetic, looping over the row in global memory

__device__ __forceinline__ void normalize_row(float* row, half_t* out_h, const float* gamma,
                                              const float* beta, float eps, int hidden, int lane) {
    float s = 0.f;
    for (int c = lane; c < hidden; c += 32) s += row[c];
    float mean = warp_sum(s) / hidden;
    float ss = 0.f;
    for (int c = lane; c < hidden; c += 32) {
        float d = row[c] - mean;
        ss += d * d;
    }
    float rstd = rsqrtf(warp_sum(ss) / hidden + eps);
    for (int c = lane; c < hidden; c += 32) {
        float y = (row[c] - mean) * rstd * gamma[c] + beta[c];
        row[c] = y;
        out_h[c] = f2h(y);
    }
}

extern "C" __global__ void embed_layer_norm(const u32* ids, const u32* pos, const float* word,
                                            const float* position, const float* gamma,
                                            const float* beta, float eps, int tokens, int hidden,
                                            u32 vocab, u32 max_pos, float* resid, half_t* xh) {
    int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (t >= tokens) return;
    const float* w = word + (size_t)min(ids[t], vocab - 1u) * hidden;
    const float* q = position + (size_t)min(pos[t], max_pos - 1u) * hidden;
    float* row = resid + (size_t)t * hidden;
    for (int c = lane; c < hidden; c += 32) row[c] = w[c] + q[c];
    normalize_row(row, xh + (size_t)t * hidden, gamma, beta, eps, hidden, lane);
}

extern "C" __global__ void bias_residual_layer_norm(const half_t* acc, const float* bias,
                                                    float* resid, const float* gamma,
                                                    const float* beta, float eps, int rows,
                                                    int hidden, half_t* xh) {
    int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (t >= rows) return;
    const half_t* a = acc + (size_t)t * hidden;
    float* row = resid + (size_t)t * hidden;
    for (int c = lane; c < hidden; c += 32) row[c] += h2f(a[c]) + bias[c];
    normalize_row(row, xh + (size_t)t * hidden, gamma, beta, eps, hidden, lane);
}
#endif
