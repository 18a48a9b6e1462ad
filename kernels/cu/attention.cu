// Self-attention over packed sequences: the batch is laid end to end with no padding, and
// `offsets[b]..offsets[b+1]` are sequence b's rows, so no key is ever masked and no work is
// spent on padding. Block (b, head): one thread per query row of that sequence, keys and
// values streamed through shared memory in tiles with an online softmax (flash-style), so
// nothing of size L×L is materialised and any length fits. Q, K and V come from one fused
// projection (`qkv`, f32, [tokens, 3·hidden], the 1/√d scale folded into Q's weights at load);
// their biases are added here instead of in a separate pass.
#ifndef HEAD_DIM
#define HEAD_DIM 32
#endif
#define KEY_TILE 64

extern "C" __global__ void attention(const float* qkv, const float* bias, const u32* offsets,
                                     int hidden, half_t* ctx) {
    __shared__ float ks[KEY_TILE][HEAD_DIM];
    __shared__ float vs[KEY_TILE][HEAD_DIM];
    int b = blockIdx.x, h = blockIdx.y;
    int start = (int)offsets[b];
    int len = (int)offsets[b + 1] - start;
    size_t stride = 3 * (size_t)hidden;
    const float* bq = bias + h * HEAD_DIM;
    const float* bk = bias + hidden + h * HEAD_DIM;
    const float* bv = bias + 2 * hidden + h * HEAD_DIM;

    for (int q0 = 0; q0 < len; q0 += blockDim.x) {
        int i = q0 + threadIdx.x;
        bool active = i < len;
        float q[HEAD_DIM], acc[HEAD_DIM];
        float m = -NUDGE_INF, l = 0.f;
#pragma unroll
        for (int d = 0; d < HEAD_DIM; d++) {
            q[d] = active ? qkv[(start + i) * stride + h * HEAD_DIM + d] + bq[d] : 0.f;
            acc[d] = 0.f;
        }
        for (int k0 = 0; k0 < len; k0 += KEY_TILE) {
            int n = min(KEY_TILE, len - k0);
            __syncthreads();
            for (int e = threadIdx.x; e < n * HEAD_DIM; e += blockDim.x) {
                int j = e / HEAD_DIM, d = e % HEAD_DIM;
                const float* row = qkv + (start + k0 + j) * stride + h * HEAD_DIM + d;
                ks[j][d] = row[hidden] + bk[d];
                vs[j][d] = row[2 * hidden] + bv[d];
            }
            __syncthreads();
            if (active) {
                for (int j = 0; j < n; j++) {
                    float s = 0.f;
#pragma unroll
                    for (int d = 0; d < HEAD_DIM; d++) s += q[d] * ks[j][d];
                    if (s > m) {
                        float c = __expf(m - s);
                        l *= c;
#pragma unroll
                        for (int d = 0; d < HEAD_DIM; d++) acc[d] *= c;
                        m = s;
                    }
                    float p = __expf(s - m);
                    l += p;
#pragma unroll
                    for (int d = 0; d < HEAD_DIM; d++) acc[d] += p * vs[j][d];
                }
            }
        }
        if (active) {
            float inv = 1.f / l;
            half_t* out = ctx + (size_t)(start + i) * hidden + h * HEAD_DIM;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) out[d] = f2h(acc[d] * inv);
        }
    }
}
