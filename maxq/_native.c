/* Fused CPU passes of the MaxQ mask (maxq/masks.py, maxq/native.py). Plain C, no torch headers:
 * compiled on first use with the system's C compiler and called through ctypes on the tensors'
 * memory. Every value it produces is either an exact comparison/count result or one IEEE float32
 * operation in the same order as the torch formulation ((x - thr) / tau, (Qf + b) + Qk, a0 + a1 +
 * ...), so the masks stay bit-identical to the sort-based reference; the sigmoid itself stays in
 * torch. Compiled with -ffp-contract=off (no fused multiply-add) and without -ffast-math.
 *
 * Layout: a weight is (Co, Ci, P) contiguous float32 (P = kh*kw; 1 for linear and 1x1). A block is
 * M consecutive input channels at fixed (co, p): entries w[(co*Ci + cb*M + j)*P + p], j < M.
 * Filter rows: row co = the Ci*P contiguous entries of output co. Kernel rows: row p = entries
 * e*P + p, e = co*Ci + ci. Ties: the lower index wins everywhere. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef int64_t i64;

/* ---------------------------------------------------------------- selection helpers */
static void swapf(float *a, float *b) { float t = *a; *a = *b; *b = t; }

/* Reorder v[0..n) so that v[j] is the (j+1)-th smallest, smaller ones before it and larger or
 * equal ones after it (nth_element); values are not NaN. */
static void nth_element(float *v, i64 n, i64 j)
{
    i64 lo = 0, hi = n - 1;
    while (hi > lo) {
        if (hi - lo < 16) {                                   /* insertion sort */
            for (i64 a = lo + 1; a <= hi; a++) {
                float x = v[a];
                i64 b = a - 1;
                while (b >= lo && v[b] > x) { v[b + 1] = v[b]; b--; }
                v[b + 1] = x;
            }
            return;
        }
        i64 mid = lo + (hi - lo) / 2;                         /* median of three -> v[mid] */
        if (v[mid] < v[lo]) swapf(&v[mid], &v[lo]);
        if (v[hi] < v[lo]) swapf(&v[hi], &v[lo]);
        if (v[hi] < v[mid]) swapf(&v[hi], &v[mid]);
        float pivot = v[mid];
        i64 a = lo, b = hi;                                   /* Hoare partition */
        while (a <= b) {
            while (v[a] < pivot) a++;
            while (v[b] > pivot) b--;
            if (a <= b) { swapf(&v[a], &v[b]); a++; b--; }
        }
        /* now v[lo..b] <= pivot, v[a..hi] >= pivot, v[b+1..a-1] == pivot */
        if (j <= b) hi = b;
        else if (j >= a) lo = a;
        else return;
    }
}

static float min_of(const float *v, i64 n)
{
    float m = v[0];
    for (i64 i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}

static i64 count_gt(const float *v, i64 n, float t)
{
    i64 c = 0;
    for (i64 i = 0; i < n; i++) c += v[i] > t;
    return c;
}

/* Exact (x(k), x(k+1)) of the n values in v (1 <= k < n; v is reordered), the number of values
 * > x(k), and a spacing estimate: (x(k+1+s) - x(k-s)) / (2s+1), s = min(16, k-1, n-k-1). */
static void exact_pair(float *v, i64 n, i64 k, float *vk, float *vk1, i64 *gt, float *spacing)
{
    nth_element(v, n, k - 1);
    *vk = v[k - 1];
    *vk1 = min_of(v + k, n - k);
    *gt = count_gt(v + k, n - k, *vk);                        /* v[0..k-1) <= vk */
    i64 s = 16;
    if (s > k - 1) s = k - 1;
    if (s > n - k - 1) s = n - k - 1;
    if (s > 0) {
        nth_element(v, k - 1, k - 1 - s);
        float below = v[k - 1 - s];
        nth_element(v + k, n - k, s);
        float above = v[k + s];
        *spacing = (above - below) / (float)(2 * s + 1);
    } else {
        *spacing = *vk1 - *vk;
    }
}

/* Warm window of a row from its state: [max(vk - m, 0), vk1 + m], m = `spacings` spacings +
 * `shifts` recent shifts of thr. */
static void window(const float *st, float spacings, float shifts, float *lo, float *hi)
{
    float m = spacings * st[2] + shifts * st[3] + 1e-30f;
    *lo = st[0] - m;
    if (*lo < 0.0f) *lo = 0.0f;
    *hi = st[1] + m;
}

/* state row: [vk, vk1, spacing, shift]; update after a selection. */
static void update_state(float *st, int warm, float vk, float vk1, float spacing)
{
    float thr_old = (st[0] + st[1]) / 2.0f, thr = (vk + vk1) / 2.0f;
    float shift = 0.0f;
    if (warm) {
        shift = fabsf(thr - thr_old);
        if (0.5f * st[3] > shift) shift = 0.5f * st[3];
    }
    st[0] = vk; st[1] = vk1; st[2] = spacing; st[3] = shift;
}

/* ---------------------------------------------------------------- hard N:M mask B */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* keep4 for one block row of P <= 16 positions: one masked 16-lane step. With c_ij = "a_i beats
 * a_j" (a_i > a_j, or a_i == a_j and i < j), rank_j = sum_i c_ij and kept iff rank_j < n_keep. */
static void keep4_lanes(const float *w0, const float *w1, const float *w2, const float *w3,
                        uint8_t *b, i64 P, int n_keep)
{
    const __mmask16 m = (__mmask16)((1u << P) - 1u);
    const __m512 z = _mm512_setzero_ps();
    __m512 a0 = _mm512_abs_ps(_mm512_mask_loadu_ps(z, m, w0));
    __m512 a1 = _mm512_abs_ps(_mm512_mask_loadu_ps(z, m, w1));
    __m512 a2 = _mm512_abs_ps(_mm512_mask_loadu_ps(z, m, w2));
    __m512 a3 = _mm512_abs_ps(_mm512_mask_loadu_ps(z, m, w3));
    /* i < j: i beats j iff a_i >= a_j; i > j: iff a_i > a_j */
    __mmask16 c01 = _mm512_cmp_ps_mask(a0, a1, _CMP_GE_OQ), c02 = _mm512_cmp_ps_mask(a0, a2, _CMP_GE_OQ);
    __mmask16 c03 = _mm512_cmp_ps_mask(a0, a3, _CMP_GE_OQ), c12 = _mm512_cmp_ps_mask(a1, a2, _CMP_GE_OQ);
    __mmask16 c13 = _mm512_cmp_ps_mask(a1, a3, _CMP_GE_OQ), c23 = _mm512_cmp_ps_mask(a2, a3, _CMP_GE_OQ);
    /* the three contenders that may beat each entry */
    __mmask16 x0 = ~c01, y0 = ~c02, z0 = ~c03;          /* 1 beats 0, 2 beats 0, 3 beats 0 */
    __mmask16 x1 = c01, y1 = ~c12, z1 = ~c13;
    __mmask16 x2 = c02, y2 = c12, z2 = ~c23;
    __mmask16 x3 = c03, y3 = c13, z3 = c23;
#define KEEP(x, y, z) (n_keep <= 1 ? (__mmask16)~((x) | (y) | (z)) \
                     : n_keep == 2 ? (__mmask16)~(((x) & (y)) | ((x) & (z)) | ((y) & (z))) \
                     : n_keep == 3 ? (__mmask16)~((x) & (y) & (z)) : (__mmask16)0xFFFF)
    const __m128i one = _mm_set1_epi8(1);
    _mm_mask_storeu_epi8(b, m, _mm_maskz_mov_epi8(KEEP(x0, y0, z0), one));
    _mm_mask_storeu_epi8(b + P, m, _mm_maskz_mov_epi8(KEEP(x1, y1, z1), one));
    _mm_mask_storeu_epi8(b + 2 * P, m, _mm_maskz_mov_epi8(KEEP(x2, y2, z2), one));
    _mm_mask_storeu_epi8(b + 3 * P, m, _mm_maskz_mov_epi8(KEEP(x3, y3, z3), one));
#undef KEEP
}
#endif

/* 4-blocks whose entries j lie in the arrays wj (n of them each): keep the n_keep largest. */
static void keep4(const float *restrict w0, const float *restrict w1, const float *restrict w2,
                  const float *restrict w3, uint8_t *restrict b0, uint8_t *restrict b1,
                  uint8_t *restrict b2, uint8_t *restrict b3, i64 n, int n_keep)
{
    for (i64 p = 0; p < n; p++) {
        float a0 = fabsf(w0[p]), a1 = fabsf(w1[p]), a2 = fabsf(w2[p]), a3 = fabsf(w3[p]);
        int r0 = (a1 > a0) + (a2 > a0) + (a3 > a0);
        int r1 = (a0 >= a1) + (a2 > a1) + (a3 > a1);
        int r2 = (a0 >= a2) + (a1 >= a2) + (a3 > a2);
        int r3 = (a0 >= a3) + (a1 >= a3) + (a2 >= a3);
        b0[p] = r0 < n_keep;
        b1[p] = r1 < n_keep;
        b2[p] = r2 < n_keep;
        b3[p] = r3 < n_keep;
    }
}

/* B (uint8 0/1, weight layout): 1 on the n_keep largest |w| of every block (ties: lower j kept).
 * l1 (optional, may be NULL): block L1 norms a0 + a1 + ... (left to right) in g order (co, p, cb).
 * Returns 0, or 1 if M > 64. */
int maxq_block_keep(const float *w, i64 Co, i64 Ci, i64 P, int M, int n_keep, uint8_t *B,
                    float *l1)
{
    if (M > 64) return 1;
    i64 nb = Ci / M;
    if (M == 4 && P == 1) {                       /* consecutive blocks of 4: vectorise over g */
        i64 G = Co * nb;
        for (i64 g = 0; g < G; g++) {
            const float *v = w + 4 * g;
            float a0 = fabsf(v[0]), a1 = fabsf(v[1]), a2 = fabsf(v[2]), a3 = fabsf(v[3]);
            int r0 = (a1 > a0) + (a2 > a0) + (a3 > a0);
            int r1 = (a0 >= a1) + (a2 > a1) + (a3 > a1);
            int r2 = (a0 >= a2) + (a1 >= a2) + (a3 > a2);
            int r3 = (a0 >= a3) + (a1 >= a3) + (a2 >= a3);
            uint8_t *b = B + 4 * g;
            b[0] = r0 < n_keep;
            b[1] = r1 < n_keep;
            b[2] = r2 < n_keep;
            b[3] = r3 < n_keep;
            if (l1) l1[g] = ((a0 + a1) + a2) + a3;
        }
        return 0;
    }
    for (i64 co = 0; co < Co; co++) {
        for (i64 cb = 0; cb < nb; cb++) {
            i64 base = (co * Ci + cb * M) * P;
            const float *wb = w + base;
            uint8_t *bb = B + base;
            if (M == 4) {
                const float *w0 = wb, *w1 = wb + P, *w2 = wb + 2 * P, *w3 = wb + 3 * P;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
                if (P <= 16) {
                    keep4_lanes(w0, w1, w2, w3, bb, P, n_keep);
                } else
#endif
                keep4(w0, w1, w2, w3, bb, bb + P, bb + 2 * P, bb + 3 * P, P, n_keep);
                if (l1)
                    for (i64 p = 0; p < P; p++)
                        l1[(co * P + p) * nb + cb] = ((fabsf(w0[p]) + fabsf(w1[p])) + fabsf(w2[p]))
                                                     + fabsf(w3[p]);
            } else {
                float a[64];
                for (i64 p = 0; p < P; p++) {
                    for (int j = 0; j < M; j++) a[j] = fabsf(wb[j * P + p]);
                    for (int j = 0; j < M; j++) {
                        int r = 0;
                        for (int i = 0; i < j; i++) r += a[i] >= a[j];
                        for (int i = j + 1; i < M; i++) r += a[i] > a[j];
                        bb[j * P + p] = r < n_keep;
                    }
                    if (l1) {
                        float s = a[0];
                        for (int j = 1; j < M; j++) s += a[j];
                        l1[(co * P + p) * nb + cb] = s;
                    }
                }
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- filter-axis statistics */
/* One pass over a row of L entries: c_lo = #(|x| < lo), c_hi = #(|x| > hi); the entries inside
 * [lo, hi] go to buf (returns how many; NaN is in none of the three). Blocks of 16 are counted
 * by a vector loop and only blocks with an entry inside are collected. */
static i64 scan_row(const float *x, i64 L, float lo, float hi, float *buf, i64 *c_lo, i64 *c_hi)
{
    i64 cl = 0, ch = 0, n = 0, i = 0;
#if defined(__AVX512F__)
    /* 16 entries a step: two compare masks counted by popcount, the entries inside compressed
     * into buf (a full 16-lane store: buf has 16 floats of slack) */
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    for (; i + 16 <= L; i += 16) {
        __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
        __mmask16 ml = _mm512_cmp_ps_mask(a, vlo, _CMP_LT_OQ);
        __mmask16 mh = _mm512_cmp_ps_mask(a, vhi, _CMP_GT_OQ);
        __mmask16 mi = _mm512_cmp_ps_mask(a, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(a, vhi, _CMP_LE_OQ);
        cl += __builtin_popcount(ml);
        ch += __builtin_popcount(mh);
        _mm512_storeu_ps(buf + n, _mm512_maskz_compress_ps(mi, a));
        n += __builtin_popcount(mi);
    }
#else
    for (; i + 16 <= L; i += 16) {           /* blocks of 16: vector counts, collect if any */
        int bl = 0, bh = 0;
        for (i64 t = i; t < i + 16; t++) {
            float a = fabsf(x[t]);
            bl += a < lo;
            bh += a > hi;
        }
        cl += bl;
        ch += bh;
        if (bl + bh < 16)
            for (i64 t = i; t < i + 16; t++) {   /* branchless: store always, advance if in */
                float a = fabsf(x[t]);
                buf[n] = a;
                n += (a >= lo) & (a <= hi);
            }
    }
#endif
    for (; i < L; i++) {
        float a = fabsf(x[i]);
        cl += a < lo;
        ch += a > hi;
        buf[n] = a;
        n += (a >= lo) & (a <= hi);
    }
    *c_lo = cl;
    *c_hi = ch;
    return n;
}

/* After a window [lo, hi] missed (c_lo >= k: the statistics lie below lo; else above hi), widen
 * it on that side by about the missing count of spacings plus a margin. */
static void widen(i64 L, i64 k, i64 c_lo, i64 c_hi, float spacing, float *lo, float *hi)
{
    int low = c_lo >= k;
    float d = low ? (float)(c_lo - k + 1) : (float)(c_hi - (L - k) + 1);
    float m = (d + 2.0f * sqrtf(d) + 8.0f) * spacing + 1e-30f;
    if (low) { *lo -= m; if (*lo < 0.0f) *lo = 0.0f; }
    else *hi += m;
}

/* Exact x(k), x(k+1) of |w| on every one of R contiguous rows of L entries (1 <= k < L).
 * state: R x 4 floats [vk, vk1, spacing, shift], read when warm, always written. Warm, the row's
 * window (previous statistics +- 8 spacings + 2 recent shifts of thr) is verified by counting
 * and the statistics are picked from the entries inside; a window that misses is widened once
 * on the side it missed; then (and cold) an exact quickselect of the row.
 * need[r]: boundary-valued entries (== x(k)) that H keeps, lower index first (0 unless
 * x(k) == x(k+1)). buf: L + 16 floats of scratch. Returns the number of rows that took the exact
 * quickselect (R when cold), or -1 if a NaN was met (the caller then uses the torch path). */
i64 maxq_select_rows(const float *w, i64 R, i64 L, i64 k, int warm, float *state,
                     int32_t *need, float *buf)
{
    i64 missed = 0;
    for (i64 r = 0; r < R; r++) {
        const float *x = w + r * L;
        float *st = state + 4 * r;
        float vk, vk1, spacing;
        i64 gt;
        int ok = 0;
        if (warm) {
            float lo, hi;
            window(st, 8.0f, 2.0f, &lo, &hi);
            for (int attempt = 0; attempt < 2 && !ok; attempt++) {
                i64 c_lo, c_hi;
                i64 n = scan_row(x, L, lo, hi, buf, &c_lo, &c_hi);
                if (c_lo <= k - 1 && c_hi <= L - k - 1) {
                    if (n != L - c_lo - c_hi) return -1;      /* NaN */
                    i64 j = k - c_lo;                         /* x(k): j-th smallest inside */
                    nth_element(buf, n, j - 1);
                    vk = buf[j - 1];
                    vk1 = min_of(buf + j, n - j);
                    gt = c_hi + count_gt(buf + j, n - j, vk);
                    spacing = (hi - lo) / (float)(n > 0 ? n : 1);
                    ok = 1;
                } else {
                    widen(L, k, c_lo, c_hi, st[2], &lo, &hi);
                }
            }
        }
        if (!ok) {
            for (i64 i = 0; i < L; i++) {
                buf[i] = fabsf(x[i]);
                if (buf[i] != buf[i]) return -1;
            }
            exact_pair(buf, L, k, &vk, &vk1, &gt, &spacing);
            missed++;
        }
        need[r] = (int32_t)((L - k) - gt);
        update_state(st, warm, vk, vk1, spacing);
    }
    return missed;
}

/* One pass over the (E, P) memory for the kernel rows p with active[p]: per-row counts below lo[p]
 * and above hi[p] into c_lo/c_hi, the entries inside into buf[p*E ...] (n[p] of them). The memory
 * is scanned in tiles of T = 16*P entries against per-entry copies of the windows (so the inner
 * loop is contiguous); only tiles with an entry inside some window are collected. */
static void scan_cols(const float *w, i64 E, i64 P, const float *lo, const float *hi,
                      const int *active, float *buf, i64 *c_lo, i64 *c_hi, i64 *n)
{
    i64 T = 16 * P, total = E * P;
    float tlo[16 * 64], thi[16 * 64];
    int32_t cl[16 * 64], ch[16 * 64];
    for (i64 t = 0; t < T; t++) {
        i64 p = t % P;
        tlo[t] = active[p] ? lo[p] : INFINITY;               /* inactive: nothing inside */
        thi[t] = active[p] ? hi[p] : -INFINITY;
        cl[t] = ch[t] = 0;
    }
    for (i64 p = 0; p < P; p++) n[p] = 0;
    for (i64 i0 = 0; i0 < total; i0 += T) {
        const float *x = w + i0;
        i64 m = total - i0 < T ? total - i0 : T;              /* a multiple of P */
        int inside = 0;
        for (i64 t = 0; t < m; t++) {
            float a = fabsf(x[t]);
            int l = a < tlo[t], h = a > thi[t];
            cl[t] += l;
            ch[t] += h;
            inside += !(l | h);
        }
        if (inside)
            for (i64 t = 0; t < m; t++) {
                float a = fabsf(x[t]);
                if (a >= tlo[t] && a <= thi[t]) {
                    i64 p = t % P;
                    buf[p * E + n[p]++] = a;
                }
            }
    }
    for (i64 p = 0; p < P; p++) c_lo[p] = c_hi[p] = 0;
    for (i64 t = 0; t < T; t++) { c_lo[t % P] += cl[t]; c_hi[t % P] += ch[t]; }
}

/* Same as maxq_select_rows for the P rows of the kernel axis: row p = |w[e*P + p]|, e < E;
 * each verification is one pass over memory for all rows (scan_cols). cnt: 2*P int64
 * scratch; buf: E*P floats of scratch. */
i64 maxq_select_cols(const float *w, i64 E, i64 P, i64 k, int warm, float *state, int32_t *need,
                     float *buf, i64 *cnt)
{
    if (P > 64) return -2;
    i64 missed = 0, L = E;
    i64 *c_lo = cnt, *c_hi = cnt + P;
    float lo[64], hi[64];
    i64 n[64];
    int ok[64], active[64];
    for (i64 p = 0; p < P; p++) {
        ok[p] = 0;
        active[p] = warm;
        if (warm) window(state + 4 * p, 8.0f, 2.0f, &lo[p], &hi[p]);
    }
    for (int attempt = 0; attempt < 2 && warm; attempt++) {
        int any = 0;
        for (i64 p = 0; p < P; p++) any |= active[p];
        if (!any) break;
        scan_cols(w, E, P, lo, hi, active, buf, c_lo, c_hi, n);
        for (i64 p = 0; p < P; p++) {
            if (!active[p]) continue;
            if (!(c_lo[p] <= k - 1 && c_hi[p] <= L - k - 1)) {
                widen(L, k, c_lo[p], c_hi[p], state[4 * p + 2], &lo[p], &hi[p]);
                continue;
            }
            if (n[p] != L - c_lo[p] - c_hi[p]) return -1;     /* NaN */
            float *v = buf + p * E;
            i64 j = k - c_lo[p];
            nth_element(v, n[p], j - 1);
            float vk = v[j - 1], vk1 = min_of(v + j, n[p] - j);
            i64 gt = c_hi[p] + count_gt(v + j, n[p] - j, vk);
            need[p] = (int32_t)((L - k) - gt);
            update_state(state + 4 * p, warm, vk, vk1,
                         (hi[p] - lo[p]) / (float)(n[p] > 0 ? n[p] : 1));
            ok[p] = 1;
            active[p] = 0;
        }
    }
    for (i64 p = 0; p < P; p++) {                             /* cold, or the windows missed */
        if (ok[p]) continue;
        for (i64 e = 0; e < E; e++) {
            buf[e] = fabsf(w[e * P + p]);
            if (buf[e] != buf[e]) return -1;
        }
        float vk, vk1, spacing;
        i64 gt;
        exact_pair(buf, E, k, &vk, &vk1, &gt, &spacing);
        need[p] = (int32_t)((L - k) - gt);
        update_state(state + 4 * p, warm, vk, vk1, spacing);
        missed++;
    }
    return missed;
}

/* ---------------------------------------------------------------- composition */
/* Axis terms before the sigmoid, in the weight's layout:
 *   Yf = (x - thr_f) / tau where B and H_f, else -inf     (hard: 1 where B and H_f, else 0)
 *   Yk likewise on the kernel axis (Yk == NULL: no kernel axis).
 * H keeps x > x(k), and of the entries == x(k) the first need[row] in index order (filter row:
 * memory order within the row; kernel row p: memory order over e). fstate/kstate as above.
 * kcount: P int64 scratch. */
void maxq_compose(const float *w, i64 Co, i64 Ci, i64 P, const uint8_t *B, const float *fstate,
                  const int32_t *fneed, const float *kstate, const int32_t *kneed, float tau,
                  int hard, float *Yf, float *Yk, i64 *kcount)
{
    const float off = hard ? 0.0f : -INFINITY;
    i64 L = Ci * P;
    i64 T = 16 * P;
    float tvk[16 * 64], tthr[16 * 64];                        /* per-entry copies (period P) */
    int ktie = 0;
    if (Yk) {
        for (i64 p = 0; p < P; p++) {
            kcount[p] = 0;
            ktie |= kneed[p] != 0;
        }
        for (i64 t = 0; t < T; t++) {
            i64 p = t % P;
            tvk[t] = kstate[4 * p];
            tthr[t] = (kstate[4 * p] + kstate[4 * p + 1]) / 2.0f;
        }
    }
    for (i64 co = 0; co < Co; co++) {
        const float *x = w + co * L;
        const uint8_t *b = B + co * L;
        float *yf = Yf + co * L;
        float vk = fstate[4 * co], thr = (fstate[4 * co] + fstate[4 * co + 1]) / 2.0f;
        if (fneed[co] == 0) {
            if (hard) {
                for (i64 i = 0; i < L; i++) yf[i] = (b[i] && fabsf(x[i]) > vk) ? 1.0f : 0.0f;
            } else {
                for (i64 i = 0; i < L; i++) {
                    float a = fabsf(x[i]);
                    yf[i] = (b[i] && a > vk) ? (a - thr) / tau : off;
                }
            }
        } else {
            i64 eq = 0, nd = fneed[co];
            for (i64 i = 0; i < L; i++) {
                float a = fabsf(x[i]);
                int h = a > vk;
                if (a == vk) { h = eq < nd; eq++; }
                yf[i] = (b[i] && h) ? (hard ? 1.0f : (a - thr) / tau) : off;
            }
        }
        if (!Yk) continue;
        float *yk = Yk + co * L;
        if (!ktie) {
            for (i64 i0 = 0; i0 < L; i0 += T) {                /* row co starts at a multiple of P */
                i64 m = L - i0 < T ? L - i0 : T;
                const float *xx = x + i0;
                const uint8_t *bb = b + i0;
                float *y = yk + i0;
                if (hard) {
                    for (i64 t = 0; t < m; t++)
                        y[t] = (bb[t] && fabsf(xx[t]) > tvk[t]) ? 1.0f : 0.0f;
                } else {
                    for (i64 t = 0; t < m; t++) {
                        float a = fabsf(xx[t]);
                        y[t] = (bb[t] && a > tvk[t]) ? (a - tthr[t]) / tau : off;
                    }
                }
            }
        } else {
            for (i64 i = 0; i < L; i++) {
                i64 p = i % P;
                float a = fabsf(x[i]);
                int h = a > tvk[p];
                if (a == tvk[p]) { h = kcount[p] < kneed[p]; kcount[p]++; }
                yk[i] = (b[i] && h) ? (hard ? 1.0f : (a - tthr[p]) / tau) : off;
            }
        }
    }
}

/* S = (Qf + b) + Qk elementwise (Qk == NULL: S = Qf + b); S may alias Qf. */
void maxq_finish(const float *Qf, const uint8_t *B, const float *Qk, float *S, i64 n)
{
    if (Qk) {
        for (i64 i = 0; i < n; i++) S[i] = (Qf[i] + (float)B[i]) + Qk[i];
    } else {
        for (i64 i = 0; i < n; i++) S[i] = Qf[i] + (float)B[i];
    }
}
