/* Each row's LoRA adapter in a decode step, in one call per projection:
   y[i, col0 .. col0+N) += ((x_i · A[s]^T) · scale[s]) · B[s]^T, where s is row i's adapter slot
   (0: none, the row is left alone). A is [slots, R, K] and B transposed [slots, R, N], every
   adapter's stacked in its slot (serving/runtime/native/lora.py), read in place: nothing is
   gathered. Each row alone, in a fixed order. */

#include <stdint.h>

typedef float v16f __attribute__((vector_size(64)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4)));

static inline v16f load(const float *p) { return *(const v16f_u *)p; }

static float dot(const float *u, const float *v, int64_t n) {
    v16f acc = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) acc += load(u + i) * load(v + i);
    float sum = 0;
    for (int j = 0; j < 16; j++) sum += acc[j];
    for (; i < n; i++) sum += u[i] * v[i];
    return sum;
}

void maas_lora(const float *x, int64_t M, int64_t K, const int64_t *slots, const float *a, const float *bt,
               const float *scale, int64_t R, int64_t N, float *y, int64_t ldy, int64_t col0) {
    for (int64_t i = 0; i < M; i++) {
        const int64_t s = slots[i];
        if (s == 0) continue;
        float h[R], delta[N];
        for (int64_t r = 0; r < R; r++) h[r] = dot(x + i * K, a + (s * R + r) * K, K) * scale[s];
        for (int64_t n = 0; n < N; n++) delta[n] = 0;
        for (int64_t r = 0; r < R; r++) {
            const float *b = bt + (s * R + r) * N;
            int64_t n = 0;
            for (; n + 16 <= N; n += 16) *(v16f_u *)(delta + n) = load(delta + n) + load(b + n) * h[r];
            for (; n < N; n++) delta[n] += b[n] * h[r];
        }
        for (int64_t n = 0; n < N; n++) y[i * ldy + col0 + n] += delta[n];
    }
}
