// The feed-forward block's middle: bias and activation fused, f32 in (the product's output),
// half out (the next product's input). -DACT=0 exact erf GELU (BERT, e5), 1 tanh GELU, 2 ReLU.
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

// Four columns per thread (cols is a multiple of 4, checked on the host): 16-byte loads.
extern "C" __global__ void bias_activation(const float* acc, const float* bias, int rows, int cols,
                                           half_t* out) {
    size_t n4 = (size_t)rows * cols / 4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4;
         i += (size_t)gridDim.x * blockDim.x) {
        float4 v = reinterpret_cast<const float4*>(acc)[i];
        int c = (int)((i * 4) % cols);
        ushort4 o;
        o.x = f2h(activate(v.x + bias[c]));
        o.y = f2h(activate(v.y + bias[c + 1]));
        o.z = f2h(activate(v.z + bias[c + 2]));
        o.w = f2h(activate(v.w + bias[c + 3]));
        reinterpret_cast<ushort4*>(out)[i] = o;
    }
}
