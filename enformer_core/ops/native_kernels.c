/* CPU kernels for EnFormer's inference forms, loaded by enformer_core/ops/native.py:
 * enf_layer_norm (LayerNorm [+ SiLU] [-> uint8]), enf_quantize_planes (image + coordinate
 * channels -> the stem's uint8 input), enf_lookup_u8 (the int8 FFN's SiLU as a table), and
 * three clustering steps: enf_unit_rows (unit vectors), enf_softmax_centres (softmax over
 * the centres, with its per-centre sums) and enf_hard_assign (the partitional rule).
 *
 * Built on first use with the machine's C compiler (-O3 -march=native) and called through
 * ctypes, so they need neither torch's headers nor a build step at install time; without a
 * compiler the same maths runs in PyTorch ops.  Plain C99 with an AVX-512 path where the
 * compiler targets it and a scalar path everywhere else.
 *
 * enf_layer_norm: per row of a (rows, C) float32 matrix
 *     y = act((x - mean) / sqrt(var + eps) * w + b),   var = mean((x - mean)^2)  (biased)
 * with act = identity or SiLU (t * sigmoid(t)), written as float32, or as uint8
 *     q = clamp(round_half_even(y / s) + z, 0, 255)
 * (the static uint8 input of the next int8 layer: no float32 map and no quantise pass).
 * Why: PyTorch's LayerNorm costs ~30 ns per row whatever C is, which dominates on
 * EnFormer-S's wide, shallow maps (a 32 x 112 x 112 x 20 stem map is 400k rows).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

int enf_has_avx512(void) {
#if defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}

static inline float quantize_one(float y, float inv_scale, float zp) {
    float t = nearbyintf(y * inv_scale) + zp;   /* round half to even (default mode) */
    return t >= 0.f ? (t <= 255.f ? t : 255.f) : 0.f;   /* NaN -> 0, as the vector path */
}

static void layer_norm_scalar(const float *x, int64_t rows, int64_t C, const float *w,
                              const float *b, float eps, int silu, float *y, uint8_t *q,
                              float inv_scale, float zp) {
    for (int64_t i = 0; i < rows; ++i) {
        const float *xr = x + i * C;
        float s = 0.f, v = 0.f;
        for (int64_t c = 0; c < C; ++c) s += xr[c];
        const float mean = s / (float)C;
        for (int64_t c = 0; c < C; ++c) { float d = xr[c] - mean; v += d * d; }
        const float r = 1.0f / sqrtf(v / (float)C + eps);
        for (int64_t c = 0; c < C; ++c) {
            float t = (xr[c] - mean) * r * w[c] + b[c];
            if (silu) t = t / (1.0f + expf(-t));
            if (y) y[i * C + c] = t;
            else q[i * C + c] = (uint8_t)quantize_one(t, inv_scale, zp);
        }
    }
}

#if defined(__AVX512F__)
/* e^x: 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, 2^f by its degree-6 Taylor
 * polynomial (relative error ~2e-7, below float32's rounding of the SiLU). */
static inline __m512 exp_ps(__m512 x) {
    /* (min/max return their second operand on NaN: x second, so NaN stays NaN) */
    x = _mm512_max_ps(_mm512_set1_ps(-88.0f), _mm512_min_ps(_mm512_set1_ps(88.0f), x));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* SiLU as t / (1 + e^-t) with a refined reciprocal (rcp14 + one Newton step: ~1e-7
 * relative, and cheaper than a division). */
static inline __m512 silu_ps(__m512 t) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 d = _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), t)));
    __m512 r = _mm512_rcp14_ps(d);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
    return _mm512_mul_ps(t, r);
}

/* Rows go in blocks: first every row's statistics, then the normalised (activated,
 * quantised) values.  Split this way, the rows' long dependency chains (two horizontal sums
 * and a square root) overlap in the out-of-order core; one row at a time, the SiLU's
 * polynomial waited on them and tripled the time of a 20-channel map. */
#define ROW_BLOCK 64

static void layer_norm_avx512(const float *x, int64_t rows, int64_t C, const float *w,
                              const float *b, float eps, int silu, float *y, uint8_t *q,
                              float inv_scale, float zp) {
    /* 16 channels per vector; the last, partial vector is masked (C = 20 is 16 + 4) */
    const int64_t nv = (C + 15) / 16;
    const int tail = (int)(C % 16);
    const __mmask16 last = tail ? (__mmask16)((1u << tail) - 1u) : (__mmask16)0xFFFF;
    const float inv_c = 1.0f / (float)C;
    const __m512 vs = _mm512_set1_ps(inv_scale), vz = _mm512_set1_ps(zp);
    const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(255.0f);
    float mean[ROW_BLOCK], rstd[ROW_BLOCK];
    for (int64_t i0 = 0; i0 < rows; i0 += ROW_BLOCK) {
        const int64_t nr = rows - i0 < ROW_BLOCK ? rows - i0 : ROW_BLOCK;
        for (int64_t i = 0; i < nr; ++i) {
            const float *xr = x + (i0 + i) * C;
            __m512 s = _mm512_setzero_ps();
            for (int64_t k = 0; k < nv; ++k)
                s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(k + 1 < nv ? 0xFFFF : last,
                                                           xr + 16 * k));
            const float mu = _mm512_reduce_add_ps(s) * inv_c;
            const __m512 vmu = _mm512_set1_ps(mu);
            __m512 v = _mm512_setzero_ps();   /* two passes (centred squares), as PyTorch */
            for (int64_t k = 0; k < nv; ++k) {
                const __mmask16 m = k + 1 < nv ? 0xFFFF : last;
                const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, xr + 16 * k),
                                                     vmu);
                v = _mm512_fmadd_ps(d, d, v);
            }
            mean[i] = mu;
            rstd[i] = 1.0f / sqrtf(_mm512_reduce_add_ps(v) * inv_c + eps);
        }
        for (int64_t i = 0; i < nr; ++i) {
            const int64_t row = i0 + i;
            const float *xr = x + row * C;
            const __m512 vmu = _mm512_set1_ps(mean[i]), r = _mm512_set1_ps(rstd[i]);
            for (int64_t k = 0; k < nv; ++k) {
                const __mmask16 m = k + 1 < nv ? 0xFFFF : last;
                const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + 16 * k), vmu);
                __m512 t = _mm512_fmadd_ps(_mm512_mul_ps(d, r),
                                           _mm512_maskz_loadu_ps(m, w + 16 * k),
                                           _mm512_maskz_loadu_ps(m, b + 16 * k));
                if (silu) t = silu_ps(t);
                if (y) {
                    _mm512_mask_storeu_ps(y + row * C + 16 * k, m, t);
                } else {
                    __m512 u = _mm512_roundscale_ps(_mm512_mul_ps(t, vs),
                                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    u = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(u, vz), lo), hi);
                    _mm_mask_storeu_epi8(q + row * C + 16 * k, m,
                                         _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(u)));
                }
            }
        }
    }
}
#endif

/* y (float32) or q (uint8) must be given, the other NULL; rows are contiguous. */
void enf_layer_norm(const float *x, int64_t rows, int64_t C, const float *w, const float *b,
                    float eps, int silu, float *y, uint8_t *q, float inv_scale, float zp) {
#if defined(__AVX512F__)
    layer_norm_avx512(x, rows, C, w, b, eps, silu, y, q, inv_scale, zp);
#else
    layer_norm_scalar(x, rows, C, w, b, eps, silu, y, q, inv_scale, zp);
#endif
}

/* The scalar path on any build (the tests compare the two). */
void enf_layer_norm_scalar(const float *x, int64_t rows, int64_t C, const float *w,
                           const float *b, float eps, int silu, float *y, uint8_t *q,
                           float inv_scale, float zp) {
    layer_norm_scalar(x, rows, C, w, b, eps, silu, y, q, inv_scale, zp);
}

/* enf_quantize_planes: a (B, C, HW) float32 image and a (HW, K) uint8 map of extra channels
 * (EnFormer's coordinates, already quantised) -> the (B, HW, C + K) uint8 channels-last
 * input of the stem's int8 conv, q = clamp(round_half_even(x / s) + z, 0, 255).  One pass
 * instead of interleaving float32 channels (the concatenation) and quantising the result. */
static void quantize_planes_scalar(const float *img, int64_t p_begin, int64_t p_end,
                                   int64_t C, int64_t HW, const uint8_t *extra, int64_t K,
                                   float inv_scale, float zp, uint8_t *ob) {
    for (int64_t p = p_begin; p < p_end; ++p) {
        for (int64_t c = 0; c < C; ++c)
            ob[p * (C + K) + c] = (uint8_t)quantize_one(img[c * HW + p], inv_scale, zp);
        for (int64_t k = 0; k < K; ++k) ob[p * (C + K) + C + k] = extra[p * K + k];
    }
}

void enf_quantize_planes(const float *img, int64_t batch, int64_t C, int64_t HW,
                         const uint8_t *extra, int64_t K, float inv_scale, float zp,
                         uint8_t *out) {
    const int64_t CK = C + K;
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
    if (CK <= 8) {
        /* 16 pixels at a time: buf = [plane 0 | ... | plane C-1 (16 bytes each) | the 16
         * pixels' K extras], and one byte permutation interleaves it:
         * out[i CK + j] = j < C ? buf[16 j + i] : buf[16 C + K i + j - C] */
        uint8_t idx[128], buf[128] __attribute__((aligned(64)));
        for (int64_t o = 0; o < 128; ++o) {
            const int64_t i = o / CK, j = o % CK;
            idx[o] = (uint8_t)(o >= 16 * CK ? 0 : (j < C ? 16 * j + i : 16 * C + K * i + j - C));
            buf[o] = 0;
        }
        const __m512i i0 = _mm512_loadu_si512(idx), i1 = _mm512_loadu_si512(idx + 64);
        const __m512 vs = _mm512_set1_ps(inv_scale), vz = _mm512_set1_ps(zp);
        const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(255.0f);
        const int64_t nb = 16 * CK;
        const __mmask64 m0 = nb >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << nb) - 1);
        const __mmask64 m1 = nb > 64 ? (((__mmask64)1 << (nb - 64)) - 1) : 0;
        for (int64_t b = 0; b < batch; ++b) {
            const float *ib = img + b * C * HW;
            uint8_t *ob = out + b * HW * CK;
            int64_t p0 = 0;
            for (; p0 + 16 <= HW; p0 += 16) {
                for (int64_t c = 0; c < C; ++c) {
                    __m512 u = _mm512_roundscale_ps(
                        _mm512_mul_ps(_mm512_loadu_ps(ib + c * HW + p0), vs),
                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    u = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(u, vz), lo), hi);
                    _mm_store_si128((__m128i *)(buf + 16 * c),
                                    _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(u)));
                }
                for (int64_t e = 0; e < 16 * K; ++e) buf[16 * C + e] = extra[p0 * K + e];
                const __m512i a = _mm512_load_si512(buf), bb = _mm512_load_si512(buf + 64);
                _mm512_mask_storeu_epi8(ob + p0 * CK, m0, _mm512_permutex2var_epi8(a, i0, bb));
                if (m1)
                    _mm512_mask_storeu_epi8(ob + p0 * CK + 64, m1,
                                            _mm512_permutex2var_epi8(a, i1, bb));
            }
            quantize_planes_scalar(ib, p0, HW, C, HW, extra, K, inv_scale, zp, ob);
        }
        return;
    }
#endif
    for (int64_t b = 0; b < batch; ++b)
        quantize_planes_scalar(img + b * C * HW, 0, HW, C, HW, extra, K, inv_scale, zp,
                               out + b * HW * CK);
}

/* The scalar path on any build (the tests compare the two). */
void enf_quantize_planes_scalar(const float *img, int64_t batch, int64_t C, int64_t HW,
                                const uint8_t *extra, int64_t K, float inv_scale, float zp,
                                uint8_t *out) {
    for (int64_t b = 0; b < batch; ++b)
        quantize_planes_scalar(img + b * C * HW, 0, HW, C, HW, extra, K, inv_scale, zp,
                               out + b * HW * (C + K));
}

/* enf_unit_rows: y[i] = x[i] / max(||x[i]||_2, eps) for the rows of a (rows, d) matrix (the
 * clustering's unit vectors: one pass instead of square, sum, sqrt, clamp and divide). */
static inline float clamp_norm(float n, float eps) { return n < eps ? eps : n; }  /* NaN stays */

static void unit_rows_scalar(const float *x, int64_t rows, int64_t d, float eps, float *y) {
    for (int64_t i = 0; i < rows; ++i) {
        float s = 0.f;
        for (int64_t c = 0; c < d; ++c) s += x[i * d + c] * x[i * d + c];
        const float r = 1.0f / clamp_norm(sqrtf(s), eps);
        for (int64_t c = 0; c < d; ++c) y[i * d + c] = x[i * d + c] * r;
    }
}

void enf_unit_rows_scalar(const float *x, int64_t rows, int64_t d, float eps, float *y) {
    unit_rows_scalar(x, rows, d, eps, y);
}

void enf_unit_rows(const float *x, int64_t rows, int64_t d, float eps, float *y) {
#if defined(__AVX512F__)
    const int64_t nv = (d + 15) / 16;
    const int tail = (int)(d % 16);
    const __mmask16 last = tail ? (__mmask16)((1u << tail) - 1u) : (__mmask16)0xFFFF;
    float scale[ROW_BLOCK];
    for (int64_t i0 = 0; i0 < rows; i0 += ROW_BLOCK) {   /* norms first, then the scaling */
        const int64_t nr = rows - i0 < ROW_BLOCK ? rows - i0 : ROW_BLOCK;
        for (int64_t i = 0; i < nr; ++i) {
            const float *xr = x + (i0 + i) * d;
            __m512 s = _mm512_setzero_ps();
            for (int64_t k = 0; k < nv; ++k) {
                const __m512 v = _mm512_maskz_loadu_ps(k + 1 < nv ? 0xFFFF : last, xr + 16 * k);
                s = _mm512_fmadd_ps(v, v, s);
            }
            scale[i] = 1.0f / clamp_norm(sqrtf(_mm512_reduce_add_ps(s)), eps);
        }
        for (int64_t i = 0; i < nr; ++i) {
            const float *xr = x + (i0 + i) * d;
            const __m512 r = _mm512_set1_ps(scale[i]);
            for (int64_t k = 0; k < nv; ++k) {
                const __mmask16 m = k + 1 < nv ? 0xFFFF : last;
                _mm512_mask_storeu_ps(y + (i0 + i) * d + 16 * k, m,
                                      _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + 16 * k), r));
            }
        }
    }
#else
    unit_rows_scalar(x, rows, d, eps, y);
#endif
}

/* enf_softmax_centres: for each of `batch` (M, N) matrices S,
 *     G[m, n] = alpha[m] S[m, n] + beta[m]   (alpha, beta NULL: G = S)
 *     Y[m, n] = exp(G[m, n] - max_m G[., n]) / sum_m exp(G[., n] - max_m G[., n])
 * (softmax over the centres, dim 1 of (b, M, N)) and, when rowsum is not NULL,
 * rowsum[m] = sum_n Y[m, n] (the fuzzy rule's normaliser).  Columns go 16 at a time, so
 * every pass runs along contiguous memory; a column holding NaN gives NaN, as PyTorch. */
static void softmax_centres_scalar(const float *s, int64_t batch, int64_t M, int64_t N,
                                   const float *alpha, const float *beta, float *y,
                                   float *rowsum) {
    for (int64_t b = 0; b < batch; ++b) {
        const float *sb = s + b * M * N;
        float *yb = y + b * M * N, *rb = rowsum ? rowsum + b * M : NULL;
        if (rb) for (int64_t m = 0; m < M; ++m) rb[m] = 0.f;
        for (int64_t n = 0; n < N; ++n) {
            float mx = -INFINITY, sum = 0.f;
            for (int64_t m = 0; m < M; ++m) {
                const float g = alpha ? alpha[m] * sb[m * N + n] + beta[m] : sb[m * N + n];
                yb[m * N + n] = g;
                mx = (g > mx || g != g) ? g : mx;
            }
            for (int64_t m = 0; m < M; ++m) {
                const float e = expf(yb[m * N + n] - mx);
                yb[m * N + n] = e;
                sum += e;
            }
            for (int64_t m = 0; m < M; ++m) {
                yb[m * N + n] /= sum;
                if (rb) rb[m] += yb[m * N + n];
            }
        }
    }
}

void enf_softmax_centres_scalar(const float *s, int64_t batch, int64_t M, int64_t N,
                                const float *alpha, const float *beta, float *y,
                                float *rowsum) {
    softmax_centres_scalar(s, batch, M, N, alpha, beta, y, rowsum);
}

void enf_softmax_centres(const float *s, int64_t batch, int64_t M, int64_t N,
                         const float *alpha, const float *beta, float *y, float *rowsum) {
#if defined(__AVX512F__)
    float acc_stack[64 * 16];   /* per-centre partial sums, 16 lanes each */
    float *acc = rowsum && M > 64 ? (float *)malloc((size_t)M * 16 * sizeof(float)) : acc_stack;
    if (!acc) {                 /* (out of memory: the scalar path needs no buffer) */
        softmax_centres_scalar(s, batch, M, N, alpha, beta, y, rowsum);
        return;
    }
    for (int64_t b = 0; b < batch; ++b) {
        const float *sb = s + b * M * N;
        float *yb = y + b * M * N;
        if (rowsum) for (int64_t e = 0; e < M * 16; ++e) acc[e] = 0.f;
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            const __mmask16 k = N - n0 >= 16 ? (__mmask16)0xFFFF
                                             : (__mmask16)((1u << (N - n0)) - 1u);
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (int64_t m = 0; m < M; ++m) {
                __m512 g = _mm512_maskz_loadu_ps(k, sb + m * N + n0);
                if (alpha)
                    g = _mm512_fmadd_ps(g, _mm512_set1_ps(alpha[m]), _mm512_set1_ps(beta[m]));
                _mm512_mask_storeu_ps(yb + m * N + n0, k, g);
                mx = _mm512_max_ps(mx, g);
            }
            __m512 sum = _mm512_setzero_ps();
            for (int64_t m = 0; m < M; ++m) {
                const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, yb + m * N + n0),
                                                      mx));
                _mm512_mask_storeu_ps(yb + m * N + n0, k, e);
                sum = _mm512_add_ps(sum, e);
            }
            const __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
            for (int64_t m = 0; m < M; ++m) {
                const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, yb + m * N + n0), r);
                _mm512_mask_storeu_ps(yb + m * N + n0, k, t);
                if (rowsum)
                    _mm512_storeu_ps(acc + 16 * m, _mm512_add_ps(_mm512_loadu_ps(acc + 16 * m),
                                                                 _mm512_maskz_mov_ps(k, t)));
            }
        }
        if (rowsum)
            for (int64_t m = 0; m < M; ++m)
                rowsum[b * M + m] = _mm512_reduce_add_ps(_mm512_loadu_ps(acc + 16 * m));
    }
    if (acc != acc_stack) free(acc);
#else
    softmax_centres_scalar(s, batch, M, N, alpha, beta, y, rowsum);
#endif
}

/* enf_lookup_u8: y[i] = table[x[i]] for uint8 x and a 256-byte table.  The static int8
 * FFN's SiLU: fc1 writes its pre-activation as uint8, and the table maps each of the 256
 * codes to the uint8 code of SiLU at fc2's input quantisation (oneDNN's fused SiLU costs
 * fc1 up to 2.3x its matmul time; four byte permutations per 64 values cost almost nothing). */
static void lookup_u8_scalar(const uint8_t *x, int64_t n, const uint8_t *table, uint8_t *y) {
    for (int64_t i = 0; i < n; ++i) y[i] = table[x[i]];
}

void enf_lookup_u8_scalar(const uint8_t *x, int64_t n, const uint8_t *table, uint8_t *y) {
    lookup_u8_scalar(x, n, table, y);
}

void enf_lookup_u8(const uint8_t *x, int64_t n, const uint8_t *table, uint8_t *y) {
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
    const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    for (int64_t i = 0; i < n; i += 64) {
        const __mmask64 k = n - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - i)) - 1);
        const __m512i idx = _mm512_maskz_loadu_epi8(k, x + i);
        /* codes 0-127 from (t0, t1), 128-255 from (t2, t3); the top bit picks between them */
        const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1);
        const __m512i hi = _mm512_permutex2var_epi8(t2, idx, t3);
        _mm512_mask_storeu_epi8(y + i, k,
                                _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi));
    }
#else
    lookup_u8_scalar(x, n, table, y);
#endif
}

/* enf_hard_assign: for each of `batch` (M, N) similarity matrices S, the partitional rule
 * in evaluation: m*(n) = the first index of the maximum of S[., n] (a NaN counts as the
 * maximum, as torch.max), Y[m, n] = sigmoid(S[m, n]) where m = m*(n) and 0 elsewhere, and
 * count[m] = the number of points whose best centre is m.  One pass instead of the max, the
 * one-hot, the sigmoid, the product and the count. */
static inline float sigmoid_one(float x) { return 1.0f / (1.0f + expf(-x)); }

static void hard_assign_scalar(const float *s, int64_t batch, int64_t M, int64_t N, float *y,
                               float *count) {
    for (int64_t b = 0; b < batch; ++b) {
        const float *sb = s + b * M * N;
        float *yb = y + b * M * N, *cb = count + b * M;
        for (int64_t m = 0; m < M; ++m) cb[m] = 0.f;
        for (int64_t n = 0; n < N; ++n) {
            int64_t best = 0;
            for (int64_t m = 1; m < M; ++m) {
                const float v = sb[m * N + n], top = sb[best * N + n];
                if (v > top || (v != v && top == top)) best = m;
            }
            for (int64_t m = 0; m < M; ++m)
                yb[m * N + n] = m == best ? sigmoid_one(sb[m * N + n]) : 0.f;
            cb[best] += 1.f;
        }
    }
}

void enf_hard_assign_scalar(const float *s, int64_t batch, int64_t M, int64_t N, float *y,
                            float *count) {
    hard_assign_scalar(s, batch, M, N, y, count);
}

void enf_hard_assign(const float *s, int64_t batch, int64_t M, int64_t N, float *y,
                     float *count) {
#if defined(__AVX512F__)
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t b = 0; b < batch; ++b) {
        const float *sb = s + b * M * N;
        float *yb = y + b * M * N, *cb = count + b * M;
        for (int64_t m = 0; m < M; ++m) cb[m] = 0.f;
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            const __mmask16 k = N - n0 >= 16 ? (__mmask16)0xFFFF
                                             : (__mmask16)((1u << (N - n0)) - 1u);
            __m512 top = _mm512_maskz_loadu_ps(k, sb + n0);
            __m512i best = _mm512_setzero_si512();
            for (int64_t m = 1; m < M; ++m) {
                const __m512 v = _mm512_maskz_loadu_ps(k, sb + m * N + n0);
                /* v > top, or v is NaN while top is not (the first NaN wins, as torch.max) */
                const __mmask16 gt = _mm512_cmp_ps_mask(v, top, _CMP_GT_OQ)
                    | (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)
                       & _mm512_cmp_ps_mask(top, top, _CMP_ORD_Q));
                top = _mm512_mask_mov_ps(top, gt, v);
                best = _mm512_mask_mov_epi32(best, gt, _mm512_set1_epi32((int)m));
            }
            for (int64_t m = 0; m < M; ++m) {
                const __mmask16 hit = _mm512_cmpeq_epi32_mask(best, _mm512_set1_epi32((int)m)) & k;
                __m512 out = _mm512_setzero_ps();
                if (hit) {
                    const __m512 v = _mm512_maskz_loadu_ps(hit, sb + m * N + n0);
                    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), v));
                    out = _mm512_maskz_div_ps(hit, one, _mm512_add_ps(one, e));
                    cb[m] += (float)__builtin_popcount((unsigned)hit);
                }
                _mm512_mask_storeu_ps(yb + m * N + n0, k, out);
            }
        }
    }
#else
    hard_assign_scalar(s, batch, M, N, y, count);
#endif
}
