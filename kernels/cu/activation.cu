// The feed-forward block's middle: bias and activation fused, applied to the product's half
// output and written back as half (the next product's input). -DACT=0 exact erf GELU (BERT,
// e5), 1 tanh GELU, 2 ReLU.
#ifndef ACT
#define ACT 0
#endif

__device__ __forceinline__ float activate(float v) {
#if ACT == 0
    return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
#elif ACT == 1
    return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
#else
    return fmaxf(v, 0.f);
#endif
}

// Four columns per thread (cols is a multiple of 4, checked on the host): 8-byte loads and
// stores, 16-byte bias loads.
extern "C" __global__ void bias_activation(const half_t* __restrict__ acc, const float* __restrict__ bias,
                                           int rows, int cols, half_t* __restrict__ out) {
    size_t n4 = (size_t)rows * cols / 4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4;
         i += (size_t)gridDim.x * blockDim.x) {
        ushort4 v = reinterpret_cast<const ushort4*>(acc)[i];
        float4 b = reinterpret_cast<const float4*>(bias)[(int)((i * 4) % cols) / 4];
        ushort4 o;
        o.x = f2h(activate(h2f(v.x) + b.x));
        o.y = f2h(activate(h2f(v.y) + b.y));
        o.z = f2h(activate(h2f(v.z) + b.z));
        o.w = f2h(activate(h2f(v.w) + b.w));
        reinterpret_cast<ushort4*>(out)[i] = o;
    }
}
