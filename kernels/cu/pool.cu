// Token states → one sentence vector per packed sequence: the mean of its rows (mode 0, e5 and
// MiniLM) or its first row (mode 1, CLS). Block per sequence, threads across columns.
extern "C" __global__ void pool(const float* x, const u32* offsets, int hidden, int mode,
                                float* out) {
    int b = blockIdx.x;
    int start = (int)offsets[b], end = (int)offsets[b + 1];
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float s;
        if (mode == 1) {
            s = x[(size_t)start * hidden + c];
        } else {
            s = 0.f;
            for (int t = start; t < end; t++) s += x[(size_t)t * hidden + c];
            s /= (float)(end - start);
        }
        out[(size_t)b * hidden + c] = s;
    }
}
