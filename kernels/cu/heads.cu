// Classification heads on the pooled vectors: optional L2 normalisation (the bundle says
// whether), logits = W·x + b, softmax. Block per row; each warp takes labels in turn. The
// probabilities go back to the host, where the one out-of-scope rule (`intent_verdict`) reads
// them: the verdict has a single definition, in Rust.
extern "C" __global__ void linear_softmax(const float* x, int hidden, int normalize, const float* w,
                                          const float* bias, int labels, float* probs) {
    extern __shared__ float sh[];  // hidden + labels + 32 floats
    float* xs = sh;
    float* logits = sh + hidden;
    float* partial = logits + labels;
    int r = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    float ss = 0.f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float v = x[(size_t)r * hidden + c];
        xs[c] = v;
        ss += v * v;
    }
    ss = warp_sum(ss);
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    float scale = 1.f;
    if (normalize) {
        float t = 0.f;
        for (int i = 0; i < warps; i++) t += partial[i];
        scale = 1.f / fmaxf(sqrtf(t), 1e-12f);
    }
    for (int j = warp; j < labels; j += warps) {
        float s = 0.f;
        for (int c = lane; c < hidden; c += 32) s += w[(size_t)j * hidden + c] * xs[c];
        s = warp_sum(s);
        if (lane == 0) logits[j] = s * scale + bias[j];
    }
    __syncthreads();
    if (warp == 0) {
        float m = -NUDGE_INF;
        for (int j = lane; j < labels; j += 32) m = fmaxf(m, logits[j]);
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        float s = 0.f;
        for (int j = lane; j < labels; j += 32) s += __expf(logits[j] - m);
        s = warp_sum(s);
        for (int j = lane; j < labels; j += 32) probs[(size_t)r * labels + j] = __expf(logits[j] - m) / s;
    }
}
