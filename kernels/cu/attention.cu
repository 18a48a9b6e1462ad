// Self-attention over packed sequences: the batch is laid end to end with no padding, and
// `offsets[b]..offsets[b+1]` are sequence b's rows, so no key is ever masked and no work is
// spent on padding. One warp per (sequence, head), four per block; keys and values stream
// through the warp's own shared-memory tile with an online softmax (flash-style), so nothing
// of size L×L is materialised and any length fits. Q, K and V come from one fused projection
// (`qkv`, half, [tokens, 3·hidden], the 1/√d scale folded into Q's weights at load; hidden a
// multiple of 4, as heads of 32 or 64 make it); their biases are added here.
//
// Customer messages are short (about a dozen tokens). With one lane per query most lanes of
// a warp would idle and each busy lane would walk all HEAD_DIM values of every key alone, so
// a query gets G lanes (8 for up to 4 tokens, 4 for up to 8, else HEAD_DIM/16), each holding
// HEAD_DIM/G of the dimensions; the G partial dot products meet by shuffle. At most 16 values
// per lane keeps the kernel at 64 registers, twice the resident warps of 32 per lane
// (Nsight Compute showed the 32-per-lane version latency-bound at a quarter occupancy). G is
// uniform within a warp (one sequence per warp), so the branch below never diverges.
#ifndef HEAD_DIM
#define HEAD_DIM 32
#endif
#define WARPS 4
#define KEY_TILE (512 / HEAD_DIM)
#define G_MIN (HEAD_DIM / 16)

template <int G>
__device__ __forceinline__ void attend(const half_t* __restrict__ qkv, const float* __restrict__ bias,
                                       int start, int len, int h, int hidden,
                                       float (*ks)[HEAD_DIM], float (*vs)[HEAD_DIM],
                                       half_t* __restrict__ ctx, int lane) {
    constexpr int PART = HEAD_DIM / G;  // dimensions per lane, a multiple of 4
    const size_t stride = 3 * (size_t)hidden;
    const int part = lane % G;
    const float* bq = bias + h * HEAD_DIM + part * PART;
    // This lane's four columns of every K and V row it loads, and their biases.
    const int d4 = (lane % (HEAD_DIM / 4)) * 4;
    const float4 bk4 = *reinterpret_cast<const float4*>(bias + hidden + h * HEAD_DIM + d4);
    const float4 bv4 = *reinterpret_cast<const float4*>(bias + 2 * hidden + h * HEAD_DIM + d4);
    for (int q0 = 0; q0 < len; q0 += 32 / G) {
        int i = q0 + lane / G;
        bool active = i < len;
        // Inactive lanes compute on a real row (the first) and drop the result: every lane
        // must take part in the shuffles.
        const half_t* qrow = qkv + (start + (active ? i : 0)) * stride + h * HEAD_DIM + part * PART;
        float q[PART], acc[PART];
#pragma unroll
        for (int d = 0; d < PART; d++) {
            q[d] = h2f(qrow[d]) + bq[d];
            acc[d] = 0.f;
        }
        float m = -NUDGE_INF, l = 0.f;
        for (int k0 = 0; k0 < len; k0 += KEY_TILE) {
            int n = min(KEY_TILE, len - k0);
            __syncwarp();
            // Four halves (8 bytes) per lane and load: HEAD_DIM/4 lanes per row, the rest of
            // the warp on the next rows.
            for (int j = lane / (HEAD_DIM / 4); j < n; j += 128 / HEAD_DIM) {
                const half_t* row = qkv + (start + k0 + j) * stride + h * HEAD_DIM + d4;
                uint2 k = *reinterpret_cast<const uint2*>(row + hidden);
                uint2 v = *reinterpret_cast<const uint2*>(row + 2 * hidden);
                *reinterpret_cast<float4*>(&ks[j][d4]) =
                    make_float4(h2f((half_t)(k.x & 0xffffu)) + bk4.x, h2f((half_t)(k.x >> 16)) + bk4.y,
                                h2f((half_t)(k.y & 0xffffu)) + bk4.z, h2f((half_t)(k.y >> 16)) + bk4.w);
                *reinterpret_cast<float4*>(&vs[j][d4]) =
                    make_float4(h2f((half_t)(v.x & 0xffffu)) + bv4.x, h2f((half_t)(v.x >> 16)) + bv4.y,
                                h2f((half_t)(v.y & 0xffffu)) + bv4.z, h2f((half_t)(v.y >> 16)) + bv4.w);
            }
            __syncwarp();
            for (int j = 0; j < n; j++) {
                const float4* kr = reinterpret_cast<const float4*>(&ks[j][part * PART]);
                float4 s4 = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                for (int d = 0; d < PART / 4; d++) {
                    float4 k = kr[d];
                    s4.x += q[4 * d] * k.x;
                    s4.y += q[4 * d + 1] * k.y;
                    s4.z += q[4 * d + 2] * k.z;
                    s4.w += q[4 * d + 3] * k.w;
                }
                float s = (s4.x + s4.y) + (s4.z + s4.w);
#pragma unroll
                for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                if (s > m) {
                    float c = __expf(m - s);
                    l *= c;
#pragma unroll
                    for (int d = 0; d < PART; d++) acc[d] *= c;
                    m = s;
                }
                float p = __expf(s - m);
                l += p;
                const float4* vr = reinterpret_cast<const float4*>(&vs[j][part * PART]);
#pragma unroll
                for (int d = 0; d < PART / 4; d++) {
                    float4 v = vr[d];
                    acc[4 * d] += p * v.x;
                    acc[4 * d + 1] += p * v.y;
                    acc[4 * d + 2] += p * v.z;
                    acc[4 * d + 3] += p * v.w;
                }
            }
        }
        if (active) {
            float inv = 1.f / l;
            half_t* out = ctx + (size_t)(start + i) * hidden + h * HEAD_DIM + part * PART;
#pragma unroll
            for (int d = 0; d < PART; d++) out[d] = f2h(acc[d] * inv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128, 6) attention(const half_t* __restrict__ qkv, const float* __restrict__ bias,
                                     const u32* __restrict__ offsets, int seqs, int heads,
                                     int hidden, half_t* __restrict__ ctx) {
    __shared__ __align__(16) float ks[WARPS][KEY_TILE][HEAD_DIM];
    __shared__ __align__(16) float vs[WARPS][KEY_TILE][HEAD_DIM];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int pair = blockIdx.x * WARPS + warp;
    if (pair >= seqs * heads) return;  // whole warps only: no block barrier below
    int b = pair / heads, h = pair % heads;
    int start = (int)offsets[b];
    int len = (int)offsets[b + 1] - start;
    if (len <= 4) {
        attend<8>(qkv, bias, start, len, h, hidden, ks[warp], vs[warp], ctx, lane);
    } else if (len <= 8 || G_MIN == 4) {
        attend<4>(qkv, bias, start, len, h, hidden, ks[warp], vs[warp], ctx, lane);
    } else {
        attend<G_MIN>(qkv, bias, start, len, h, hidden, ks[warp], vs[warp], ctx, lane);
    }
}
