/* Matrix products over weights in blocks of 32 along the input (catalog/loader/gguf_blocks.py):
   y[M,N] (+)= x[M,K] . W[N,K]^T, x and y float32, each weight decoded in registers to the very
   float32 value the dequantized model holds, products accumulated in float32.

   The summation order of every output element is fixed (the low and high halves of each block
   in their own 16 lanes, block after block, then one tree over the lanes), whatever the tile it
   is computed in: a row's result is the same bits whatever rows share the call, which is what
   keeps a request's greedy answer independent of what else the batch holds.

   Written with GCC's vector extensions, not one instruction set's intrinsics: the compiler maps
   the 16-lane vectors onto AVX-512, AVX2 or NEON registers for the machine it builds on. */

#include <stdint.h>

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i32 __attribute__((vector_size(64)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));
typedef uint8_t v16u8_u __attribute__((vector_size(16), aligned(1)));

#define GROUP 32
#define NB 4 /* weight rows (output columns) of a tile */
#define MB 2 /* input rows of a tile */
#define INLINE static inline __attribute__((always_inline))

INLINE float hsum(v16f v) {
    v8f a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
            __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4f b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

INLINE v16f load(const float *p) { return *(const v16f_u *)p; }
INLINE v16f splat(float f) { return (v16f){0} + f; }

typedef struct {
    const uint8_t *q;
    const float *scale, *offset;
    int64_t groups;
} w4;

typedef struct {
    const uint8_t *q; /* signed bytes */
    const float *scale;
    int64_t groups;
} w8;

/* A 4-bit block: its 16 possible weights (scale*q + offset, q = 0..15, one rounding as the loader
   does) looked up by each nibble. GCC widens bytes to 32-bit lanes in one instruction, and a lane's
   index is taken modulo 16, so the low nibbles need no mask. */
INLINE void decode4(const w4 *w, int64_t n, int64_t g, v16f *lo, v16f *hi) {
    const int64_t at = n * w->groups + g;
    const v16f iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const v16f table = iota * splat(w->scale[at]) + splat(w->offset[at]);
    const v16u8 b = *(const v16u8_u *)(w->q + at * 16);
    *lo = __builtin_shuffle(table, __builtin_convertvector(b, v16i32));
    *hi = __builtin_shuffle(table, __builtin_convertvector(b >> 4, v16i32));
}

/* An 8-bit block: signed bytes, widened as unsigned ones and moved back (GCC widens unsigned
   bytes in one instruction, signed ones byte by byte). */
INLINE void decode8(const w8 *w, int64_t n, int64_t g, v16f *lo, v16f *hi) {
    const int64_t at = n * w->groups + g;
    const v16u8 b0 = *(const v16u8_u *)(w->q + at * 32) ^ 0x80, b1 = *(const v16u8_u *)(w->q + at * 32 + 16) ^ 0x80;
    const v16f s = splat(w->scale[at]);
    *lo = __builtin_convertvector(__builtin_convertvector(b0, v16i32) - 128, v16f) * s;
    *hi = __builtin_convertvector(__builtin_convertvector(b1, v16i32) - 128, v16f) * s;
}

/* One tile: rows 0..mb of x against weight rows n0..n0+nb; mb and nb are constants after inlining. */
#define TILE(NAME, WT, DECODE)                                                                            \
    INLINE void NAME(const float *x, int64_t K, const WT *w, int64_t n0, float *y, int64_t N, int add,     \
                     const int mb, const int nb) {                                                         \
        v16f lo[MB][NB] = {{{0}}}, hi[MB][NB] = {{{0}}};                                                   \
        for (int64_t g = 0; g < w->groups; g++) {                                                          \
            v16f wl[NB], wh[NB];                                                                           \
            for (int j = 0; j < nb; j++) DECODE(w, n0 + j, g, &wl[j], &wh[j]);                             \
            for (int i = 0; i < mb; i++) {                                                                 \
                const v16f xl = load(x + i * K + g * GROUP), xh = load(x + i * K + g * GROUP + 16);        \
                for (int j = 0; j < nb; j++) {                                                             \
                    lo[i][j] += xl * wl[j];                                                                \
                    hi[i][j] += xh * wh[j];                                                                \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        for (int i = 0; i < mb; i++)                                                                       \
            for (int j = 0; j < nb; j++) {                                                                 \
                const float sum = hsum(lo[i][j] + hi[i][j]);                                               \
                y[i * N + n0 + j] = add ? y[i * N + n0 + j] + sum : sum;                                   \
            }                                                                                              \
    }

TILE(tile4, w4, decode4)
TILE(tile8, w8, decode8)

/* Weight rows are split among the threads; each thread takes its tiles' input rows two at a time. */
#define MATMUL(NAME, WT, TILEFN)                                                                           \
    static void NAME(const float *x, int64_t M, int64_t K, const WT *w, int64_t N, float *y, int add,       \
                     int threads) {                                                                        \
        const int64_t tiles = (N + NB - 1) / NB;                                                           \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                  \
        for (int64_t t = 0; t < tiles; t++) {                                                              \
            const int64_t n0 = t * NB;                                                                     \
            const int whole = N - n0 >= NB;                                                                \
            for (int64_t m0 = 0; m0 < M; m0 += MB) {                                                       \
                const float *xm = x + m0 * K;                                                              \
                float *ym = y + m0 * N;                                                                    \
                const int pair = M - m0 >= 2;                                                              \
                if (whole && pair) TILEFN(xm, K, w, n0, ym, N, add, 2, NB);                                \
                else if (whole) TILEFN(xm, K, w, n0, ym, N, add, 1, NB);                                   \
                else                                                                                       \
                    for (int64_t n = n0; n < N; n++) {                                                     \
                        if (pair) TILEFN(xm, K, w, n, ym, N, add, 2, 1);                                   \
                        else TILEFN(xm, K, w, n, ym, N, add, 1, 1);                                        \
                    }                                                                                      \
            }                                                                                              \
        }                                                                                                  \
    }

MATMUL(matmul4, w4, tile4)
MATMUL(matmul8, w8, tile8)

void maas_blocks4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *q, const float *scale,
                         const float *offset, int64_t N, float *y, int add, int threads) {
    const w4 w = {q, scale, offset, K / GROUP};
    matmul4(x, M, K, &w, N, y, add, threads);
}

void maas_blocks8_matmul(const float *x, int64_t M, int64_t K, const int8_t *q, const float *scale, int64_t N,
                         float *y, int add, int threads) {
    const w8 w = {(const uint8_t *)q, scale, K / GROUP};
    matmul8(x, M, K, &w, N, y, add, threads);
}
