/* A decode step's attention for every row of the batch, in one call: rotary embedding of the
   row's new query and key, its key and value written into the row's slot at its position, then
   each query head attending over the row's keys 0..position (grouped-query: query head h reads
   key head h / (heads / kv_heads)).

   Every row and head is computed alone, in a fixed order, so a row's result is the same whatever
   else the batch holds. In PyTorch the same step was a dozen small operations per layer. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16f __attribute__((vector_size(64)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4)));

static inline v16f load(const float *p) { return *(const v16f_u *)p; }
static inline void store(float *p, v16f v) { *(v16f_u *)p = v; }

static inline float hsum(v16f v) {
    float s = 0;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}

/* x rotated to the position whose cos and sin rows are given; sin has its first half negated, so
   that rotate_half(x)·sin is x rolled by half its width times it. */
static void rope(const float *x, const float *cos, const float *sin, int64_t D, float *out) {
    const int64_t half = D / 2;
    for (int64_t i = 0; i < D; i++) out[i] = x[i] * cos[i] + x[(i + half) % D] * sin[i];
}

/* qkv [M, (H + 2·KVH)·D]; keys and values [M, KVH, capacity, D]; out [M, H·D]. D is a multiple of 16. */
void maas_attend(const float *qkv, int64_t M, int64_t H, int64_t KVH, int64_t D, const int64_t *positions,
                 const float *cos, const float *sin, float *keys, float *values, int64_t capacity, float *out,
                 int threads) {
    const int64_t width = (H + 2 * KVH) * D, group = H / KVH;
    const float scale = 1.0f / sqrtf((float)D);
    int64_t longest = 0;
    for (int64_t b = 0; b < M; b++) longest = positions[b] > longest ? positions[b] : longest;
    const int parallel = M * H * (longest + 1) * D > 65536;

    for (int64_t b = 0; b < M; b++) {
        const int64_t p = positions[b];
        for (int64_t kh = 0; kh < KVH; kh++) {
            const int64_t at = ((b * KVH + kh) * capacity + p) * D;
            rope(qkv + b * width + (H + kh) * D, cos + p * D, sin + p * D, D, keys + at);
            memcpy(values + at, qkv + b * width + (H + KVH + kh) * D, D * sizeof(float));
        }
    }

#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
    for (int64_t task = 0; task < M * H; task++) {
        const int64_t b = task / H, h = task % H, kh = h / group, p = positions[b];
        const float *k = keys + (b * KVH + kh) * capacity * D, *v = values + (b * KVH + kh) * capacity * D;
        float q[D];
        rope(qkv + b * width + h * D, cos + p * D, sin + p * D, D, q);
        float *scores = malloc((p + 1) * sizeof(float));
        float top = -INFINITY;
        for (int64_t t = 0; t <= p; t++) {
            v16f acc = {0};
            for (int64_t d = 0; d < D; d += 16) acc += load(q + d) * load(k + t * D + d);
            scores[t] = hsum(acc) * scale;
            top = scores[t] > top ? scores[t] : top;
        }
        float total = 0;
        for (int64_t t = 0; t <= p; t++) {
            scores[t] = expf(scores[t] - top);
            total += scores[t];
        }
        float *o = out + b * H * D + h * D;
        memset(o, 0, D * sizeof(float));
        for (int64_t t = 0; t <= p; t++)
            for (int64_t d = 0; d < D; d += 16) store(o + d, load(o + d) + load(v + t * D + d) * scores[t]);
        for (int64_t d = 0; d < D; d++) o[d] /= total;
        free(scores);
    }
}
