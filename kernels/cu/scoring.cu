// Decision scoring for many candidates at once: posterior means x·θ, LinUCB widths
// √(xᵀΣx) = ‖Lᵀx‖ (Σ = L·Lᵀ; the products G = F·L come from cuBLAS), and Thompson-sampling
// win counts from posterior draws. Normal draws come from Philox4x32-10 (Salmon et al., 2011),
// a counter-based generator: draw i depends only on (seed, i), so the CPU reference in
// `src/reference.rs` reproduces the very same numbers and any thread may make any draw.

__device__ __forceinline__ void philox_round(u32& c0, u32& c1, u32& c2, u32& c3, u32 k0, u32 k1) {
    u32 hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    u32 hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    u32 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
}

__device__ __forceinline__ uint4 philox(u32 counter, u32 k0, u32 k1) {
    u32 c0 = counter, c1 = 0u, c2 = 0u, c3 = 0u;
#pragma unroll
    for (int r = 0; r < 10; r++) {
        philox_round(c0, c1, c2, c3, k0, k1);
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return make_uint4(c0, c1, c2, c3);
}

// (0, 1]: 24 random bits, exactly representable, never 0 (log is taken).
__device__ __forceinline__ float unit(u32 x) { return (float)((x >> 8) + 1u) * 5.9604644775390625e-8f; }

// out[i], i < n: standard normals, four per Philox call (two Box–Muller pairs).
extern "C" __global__ void normal_draws(u32 seed_lo, u32 seed_hi, int n, float* out) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * g >= n) return;
    uint4 r = philox((u32)g, seed_lo, seed_hi);
    float a = sqrtf(-2.f * logf(unit(r.x))), t = 6.283185307179586f * unit(r.y);
    float b = sqrtf(-2.f * logf(unit(r.z))), u = 6.283185307179586f * unit(r.w);
    float z[4] = {a * cosf(t), a * sinf(t), b * cosf(u), b * sinf(u)};
    for (int j = 0; j < 4 && 4 * g + j < n; j++) out[4 * g + j] = z[j];
}

// Warp per candidate: means[j] = F[j]·θ, ucb[j] = means[j] + alpha·‖G[j]‖.
extern "C" __global__ void ucb_scores(const float* feats, const float* theta, const float* g,
                                      int k, int d, float alpha, float* means, float* ucb) {
    int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (j >= k) return;
    float m = 0.f, w = 0.f;
    for (int i = lane; i < d; i += 32) {
        m += feats[(size_t)j * d + i] * theta[i];
        float v = g[(size_t)j * d + i];
        w += v * v;
    }
    m = warp_sum(m);
    w = warp_sum(w);
    if (lane == 0) {
        means[j] = m;
        ucb[j] = m + alpha * sqrtf(w);
    }
}

// Thread per posterior draw s: the candidate with the largest means[j] + scale·D[s, j] wins
// (D = Z·Gᵀ, [samples, k]); ties share the win.
extern "C" __global__ void thompson_wins(const float* means, const float* draws, float scale, int k,
                                         int samples, float* wins) {
    int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= samples) return;
    const float* row = draws + (size_t)s * k;
    float best = -NUDGE_INF;
    int ties = 0;
    for (int j = 0; j < k; j++) {
        float v = __fmaf_rn(scale, row[j], means[j]);
        if (v > best) { best = v; ties = 1; } else if (v == best) { ties++; }
    }
    float share = 1.f / (float)ties;
    for (int j = 0; j < k; j++)
        if (__fmaf_rn(scale, row[j], means[j]) == best) atomicAdd(&wins[j], share);
}
