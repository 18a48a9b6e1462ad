// Layer norms, one warp per token row. Both write the f32 row (the residual stream stays f32
// so twelve layers of rounding do not pile up) and its half copy (the next matrix product's
// input), in one pass over the row.

// Two-pass mean and variance over a row already in `row` (f32), then scale and shift.
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

// The embedding layer: word row + position row (token type 0 already folded into the
// position table at load), then LayerNorm. Ids and positions were checked on the host; they
// are clamped here as well so that no input can read outside the tables.
extern "C" __global__ void embed_layer_norm(const u32* ids, const u32* pos, const float* word,
                                            const float* position, const float* gamma,
                                            const float* beta, float eps, int tokens, int hidden,
                                            u32 vocab, u32 max_pos, float* resid, half_t* xh) {
    int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (t >= tokens) return;
    u32 id = min(ids[t], vocab - 1u);
    u32 p = min(pos[t], max_pos - 1u);
    const float* w = word + (size_t)id * hidden;
    const float* q = position + (size_t)p * hidden;
    float* row = resid + (size_t)t * hidden;
    for (int c = lane; c < hidden; c += 32) row[c] = w[c] + q[c];
    normalize_row(row, xh + (size_t)t * hidden, gamma, beta, eps, hidden, lane);
}

// After a projection: resid = LayerNorm(acc + bias + resid), in place.
extern "C" __global__ void bias_residual_layer_norm(const float* acc, const float* bias,
                                                    float* resid, const float* gamma,
                                                    const float* beta, float eps, int rows,
                                                    int hidden, half_t* xh) {
    int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (t >= rows) return;
    const float* a = acc + (size_t)t * hidden;
    float* row = resid + (size_t)t * hidden;
    for (int c = lane; c < hidden; c += 32) row[c] += a[c] + bias[c];
    normalize_row(row, xh + (size_t)t * hidden, gamma, beta, eps, hidden, lane);
}
