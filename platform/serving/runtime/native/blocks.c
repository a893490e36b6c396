/* Matrix products over weights in blocks of 32 along the input (catalog/loader/gguf_blocks.py):
   y[M,N] (+)= x[M,K] . W[N,K]^T, x and y float32, each weight decoded to the very float32 value
   the dequantized model holds, products accumulated in float32.

   Every output element is summed in one order, whatever path computes it: the low and the high
   half of each block in 16 lanes of their own, block after block, then one tree over the lanes. So a row's result is the same bits whatever rows share the call, which is what keeps
   a request's greedy answer independent of what else the batch holds.

   Two paths: a few rows decode each block in registers as they go (a decode step of one stream
   reads 96 MB of blocks and is bound by memory); more rows decode a tile of weight rows once into
   a buffer the size of L1 and read it for every input row (the decoding would otherwise be
   repeated for each pair of rows, and it costs more than the products).

   Written with GCC's vector extensions, not one instruction set's intrinsics: the compiler maps
   the 16-lane vectors onto AVX-512, AVX2 or NEON registers for the machine it builds on. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i32 __attribute__((vector_size(64)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));
typedef uint8_t v16u8_u __attribute__((vector_size(16), aligned(1)));

#define GROUP 32
#define NB 4       /* weight rows (output columns) of a tile */
#define MB 2       /* input rows of a tile decoded in registers */
#define MBB 2      /* input rows of a tile read from the decoded buffer */
#define BUFFERED 3 /* from this many input rows on, tiles are decoded into the buffer */
#define INLINE static inline __attribute__((always_inline))

INLINE float hsum(v16f v) {
    v8f a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
            __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4f b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

INLINE v16f load(const float *p) { return *(const v16f_u *)p; }
INLINE void store(float *p, v16f v) { *(v16f_u *)p = v; }
INLINE v16f splat(float f) { return (v16f){0} + f; }

typedef struct {
    const uint8_t *q;
    const _Float16 *scale, *offset;
    int64_t groups;
} w4;

typedef struct {
    const uint8_t *q; /* signed bytes */
    const _Float16 *scale;
    int64_t groups;
} w8;

/* A 4-bit block: its 16 possible weights (scale*q + offset, q = 0..15, one rounding as the loader
   does) looked up by each nibble. GCC widens bytes to 32-bit lanes in one instruction, and a lane's
   index is taken modulo 16, so the low nibbles need no mask. */
INLINE void decode4(const w4 *w, int64_t n, int64_t g, v16f *lo, v16f *hi) {
    const int64_t at = n * w->groups + g;
    const v16f iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const v16f table = iota * splat((float)w->scale[at]) + splat((float)w->offset[at]);
    const v16u8 b = *(const v16u8_u *)(w->q + at * 16);
    *lo = __builtin_shuffle(table, __builtin_convertvector(b, v16i32));
    *hi = __builtin_shuffle(table, __builtin_convertvector(b >> 4, v16i32));
}

/* An 8-bit block: signed bytes, widened as unsigned ones and moved back (GCC widens unsigned
   bytes in one instruction, signed ones byte by byte). */
INLINE void decode8(const w8 *w, int64_t n, int64_t g, v16f *lo, v16f *hi) {
    const int64_t at = n * w->groups + g;
    const v16u8 b0 = *(const v16u8_u *)(w->q + at * 32) ^ 0x80, b1 = *(const v16u8_u *)(w->q + at * 32 + 16) ^ 0x80;
    const v16f s = splat((float)w->scale[at]);
    *lo = __builtin_convertvector(__builtin_convertvector(b0, v16i32) - 128, v16f) * s;
    *hi = __builtin_convertvector(__builtin_convertvector(b1, v16i32) - 128, v16f) * s;
}

INLINE void finish(v16f lo, v16f hi, float *y, int add) {
    const float sum = hsum(lo + hi);
    *y = add ? *y + sum : sum;
}

/* The next tile's blocks, asked for while this one computes (a step streams its weights from
   memory once: waiting on each cache line as it is needed costs more than the arithmetic). */
#define PREFETCH_NEXT(NAME, WT, BYTES)                                                                    \
    INLINE void NAME(const WT *w, int64_t n, int64_t g) {                                                  \
        for (int j = 0; j < NB; j++) __builtin_prefetch(w->q + ((n + j) * w->groups + g) * BYTES);         \
        __builtin_prefetch(w->scale + n * w->groups + g);                                                  \
    }
PREFETCH_NEXT(prefetch4, w4, 16)
PREFETCH_NEXT(prefetch8, w8, 32)
#define prefetch_next(w, n, g) _Generic((w), const w4 *: prefetch4, const w8 *: prefetch8)(w, n, g)

/* One tile decoded in registers: input rows 0..mb against weight rows n0..n0+nb; mb and nb are
   constants after inlining. */
#define TILE(NAME, WT, DECODE)                                                                            \
    INLINE void NAME(const float *x, int64_t K, const WT *w, int64_t n0, float *y, int64_t N, int add,     \
                     const int mb, const int nb) {                                                         \
        v16f lo[MB][NB] = {{{0}}}, hi[MB][NB] = {{{0}}};                                                   \
        for (int64_t g = 0; g < w->groups; g++) {                                                          \
            v16f wl[NB], wh[NB];                                                                           \
            if (g % 4 == 0) prefetch_next(w, n0 + NB, g);                                                 \
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
            for (int j = 0; j < nb; j++) finish(lo[i][j], hi[i][j], y + i * N + n0 + j, add);              \
    }

/* Input rows 0..mb against the decoded weight rows 0..nb of `buffer`; constants after inlining. */
INLINE void from_buffer(const float *x, int64_t K, const float *buffer, float *y, int64_t N, int add, const int mb,
                        const int nb) {
    v16f lo[MBB][NB] = {{{0}}}, hi[MBB][NB] = {{{0}}};
    for (int64_t c = 0; c < K; c += GROUP)
        for (int i = 0; i < mb; i++) {
            const v16f xl = load(x + i * K + c), xh = load(x + i * K + c + 16);
            for (int j = 0; j < nb; j++) {
                lo[i][j] += xl * load(buffer + j * K + c);
                hi[i][j] += xh * load(buffer + j * K + c + 16);
            }
        }
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < nb; j++) finish(lo[i][j], hi[i][j], y + i * N + j, add);
}

/* Weight rows n0..n0+nb decoded into `buffer` [nb, K], then read for the input rows MBB at a time. */
#define BUFFERED_TILE(NAME, WT, DECODE)                                                                   \
    static void NAME(const float *x, int64_t M, int64_t K, const WT *w, int64_t n0, int nb, float *y,       \
                     int64_t N, int add, float *buffer) {                                                  \
        for (int j = 0; j < nb; j++)                                                                       \
            for (int64_t g = 0; g < w->groups; g++) {                                                      \
                v16f lo, hi;                                                                               \
                DECODE(w, n0 + j, g, &lo, &hi);                                                            \
                store(buffer + j * K + g * GROUP, lo);                                                     \
                store(buffer + j * K + g * GROUP + 16, hi);                                                \
            }                                                                                              \
        for (int64_t m0 = 0; m0 < M; m0 += MBB) {                                                          \
            const float *xm = x + m0 * K;                                                                  \
            float *ym = y + m0 * N + n0;                                                                   \
            const int pair = M - m0 >= MBB;                                                                \
            if (pair && nb == NB) from_buffer(xm, K, buffer, ym, N, add, MBB, NB);                         \
            else if (nb == NB) from_buffer(xm, K, buffer, ym, N, add, 1, NB);                              \
            else                                                                                           \
                for (int j = 0; j < nb; j++) {                                                             \
                    if (pair) from_buffer(xm, K, buffer + j * K, ym + j, N, add, MBB, 1);                  \
                    else from_buffer(xm, K, buffer + j * K, ym + j, N, add, 1, 1);                         \
                }                                                                                          \
        }                                                                                                  \
    }

TILE(tile4, w4, decode4)
TILE(tile8, w8, decode8)
BUFFERED_TILE(buffered4, w4, decode4)
BUFFERED_TILE(buffered8, w8, decode8)

/* The input as the weights read it, into xt [M, K]: mode 1 normalizes each row (RMSNorm with
   weight w), mode 2 takes SwiGLU of its two halves (x is [M, 2K]: gate, then up). Each row alone,
   in a fixed order. Runs inside the caller's parallel region. */
static void transform(const float *x, int64_t M, int64_t K, int mode, const float *w, float eps, float *xt) {
    if (mode == 1) {
        _Pragma("omp for schedule(static)")
        for (int64_t i = 0; i < M; i++) {
            const float *xi = x + i * K;
            v16f acc = {0};
            for (int64_t j = 0; j < K; j += 16) acc += load(xi + j) * load(xi + j);
            const float r = 1.0f / sqrtf(hsum(acc) / (float)K + eps);
            for (int64_t j = 0; j < K; j++) xt[i * K + j] = xi[j] * r * w[j];
        }
    } else {
        _Pragma("omp for schedule(static)")
        for (int64_t t = 0; t < M * K; t++) {
            const int64_t i = t / K, j = t % K;
            const float g = x[i * 2 * K + j], u = x[i * 2 * K + K + j];
            xt[t] = g / (1.0f + expf(-g)) * u;
        }
    }
}

/* Weight rows are split among the threads, NB at a time. */
#define MATMUL(NAME, WT, TILEFN, BUFFEREDFN)                                                               \
    static void NAME(const float *x, int64_t M, int64_t K, const WT *w, int64_t N, float *y, int add,       \
                     int threads, int mode, const float *nw, float eps, float *xt) {                       \
        const int64_t tiles = (N + NB - 1) / NB;                                                           \
        _Pragma("omp parallel num_threads(threads)")                                                       \
        {                                                                                                  \
            if (mode) transform(x, M, K, mode, nw, eps, xt); /* ends in a barrier */                       \
            const float *in = mode ? xt : x;                                                               \
            float *buffer = M >= BUFFERED ? aligned_alloc(64, NB * K * sizeof(float)) : NULL;              \
            _Pragma("omp for schedule(static)")                                                            \
            for (int64_t t = 0; t < tiles; t++) {                                                          \
                const int64_t n0 = t * NB;                                                                 \
                const int whole = N - n0 >= NB;                                                            \
                if (buffer) {                                                                              \
                    BUFFEREDFN(in, M, K, w, n0, whole ? NB : (int)(N - n0), y, N, add, buffer);            \
                    continue;                                                                              \
                }                                                                                          \
                for (int64_t m0 = 0; m0 < M; m0 += MB) {                                                   \
                    const float *xm = in + m0 * K;                                                         \
                    float *ym = y + m0 * N;                                                                \
                    const int pair = M - m0 >= 2;                                                          \
                    if (whole && pair) TILEFN(xm, K, w, n0, ym, N, add, 2, NB);                            \
                    else if (whole) TILEFN(xm, K, w, n0, ym, N, add, 1, NB);                               \
                    else                                                                                   \
                        for (int64_t n = n0; n < N; n++) {                                                 \
                            if (pair) TILEFN(xm, K, w, n, ym, N, add, 2, 1);                               \
                            else TILEFN(xm, K, w, n, ym, N, add, 1, 1);                                    \
                        }                                                                                  \
                }                                                                                          \
            }                                                                                              \
            free(buffer);                                                                                  \
        }                                                                                                  \
    }

MATMUL(matmul4, w4, tile4, buffered4)
MATMUL(matmul8, w8, tile8, buffered8)

/* y (+)= f(x) . W^T, where f is the identity (mode 0), RMSNorm with weight nw (1) or SwiGLU (2,
   x then [M, 2K]); xt [M, K] receives f(x) (modes 1 and 2: the caller's, so a LoRA adapter reads
   the very input the weights did). */
void maas_blocks4_matmul(const float *x, int64_t M, int64_t K, const uint8_t *q, const _Float16 *scale,
                         const _Float16 *offset, int64_t N, float *y, int add, int threads, int mode, const float *nw,
                         float eps, float *xt) {
    const w4 w = {q, scale, offset, K / GROUP};
    matmul4(x, M, K, &w, N, y, add, threads, mode, nw, eps, xt);
}

void maas_blocks8_matmul(const float *x, int64_t M, int64_t K, const int8_t *q, const _Float16 *scale, int64_t N,
                         float *y, int add, int threads, int mode, const float *nw, float eps, float *xt) {
    const w8 w = {(const uint8_t *)q, scale, K / GROUP};
    matmul8(x, M, K, &w, N, y, add, threads, mode, nw, eps, xt);
}
