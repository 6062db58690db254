/* The LSTM's and the GRU's step pointwise work on the CPU, for lstm.py's CompiledLSTMLoop and gru.py's
   CompiledGRULoop (float32).

   The NumPy loop spends most of a step on a dozen ufunc calls over small arrays; here each
   step is one pass over the gates, with the operations of gpurnn/cells/lstm.py's LSTMLoop (and
   gru.py's GRULoop) in the same order (only tanh and exp differ: tanh_f and exp_f below, not NumPy's).
   The LSTM's arrays are row-major, one row per batch row b < n (the active rows of a packed step),
   gates (o | f | i | g); the GRU's are its NumPy loop's, feature-major (see gru_forward_step).

   Plain C (its own tanh and exp; fmaf only where the CPU has no FMA instruction), so any compiler builds
   it and vectorises its loops: shipped prebuilt in the wheel (setup.py), or built at first use by
   build.py. Compiled with -ffp-contract=off: the LSTM's arithmetic is not fused, the rounding of
   NumPy's separate operations (with fused a*b+c the float32 LSTM of `gpurnn train` reached 93.1%
   on the year task instead of 99.7%: the same maths, another trajectory); tanh_f and exp_f fuse their own.
   On a 2-core AVX-512 Xeon a forward+backward step at B=32, H=128 (array copies included) took
   35 us, against 38 us with glibc's vector tanhf (libmvec, the build before this one).
*/
#ifdef GPURNN_EXTENSION   /* Python.h comes before any standard header */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__GLIBC__)
/* One copy per x86-64 level (v4: AVX-512, v3: AVX2 and FMA), picked by the CPU's features when the
   library loads (an ifunc: glibc; level names: GCC 12): it runs on any x86-64, at full width where it can. */
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif
#ifdef _MSC_VER
#define restrict __restrict
#endif
/* exp_f's and tanh_f's own arithmetic fused where the CPU has FMA (the LSTM's is not: see the top) */
#if defined(__GNUC__)
#define FMA(a, b, c) __builtin_fmaf(a, b, c)
#else
#include <math.h>
#define FMA(a, b, c) fmaf(a, b, c)
#endif
#ifdef _WIN32
#define EXPORT __declspec(dllexport)
#else
#define EXPORT
#endif

/* e^y in float32 for y in [-87, 89] (the callers clamp it): e^y = 2^n e^r, n = round(y / ln 2),
   r = y - n ln 2 (ln 2 in two parts, the first exact in n ln2_hi), e^r a degree-7 fit on
   |r| <= ln 2 / 2, and 2^n put together in the exponent bits: normal floats for n in [-126, 127],
   inf for n = 128 (y above 88.37). */
static inline float exp_f(float y)
{
    float n = (y * 1.44269504f + 12582912.0f) - 12582912.0f;   /* round to nearest: 1.5 * 2^23 */
    float r = FMA(-n, 1.428606765330187e-06f, FMA(-n, 0.693145751953125f, y));
    float p = 1.9826496187e-04f;
    p = FMA(p, r, 1.3946020784e-03f);
    p = FMA(p, r, 8.3334299754e-03f);
    p = FMA(p, r, 4.1666270285e-02f);
    p = FMA(p, r, 1.6666666164e-01f);
    p = FMA(p, r, 5.0000000781e-01f);
    float e = FMA(p * r, r, r) + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}

/* tanh in float32 to 1.3 ulp (checked against float64 over [-12, 12] in tests/cpu/test_lstm_step.py),
   branch-free so that loops over it vectorise. |x| < 0.625: x + x u P(u), u = x^2 (a fit of
   tanh(x)/x - 1). Otherwise 1 - 2 / (e^{2|x|} + 1) with the sign of x; |x| >= 9 gives +-1,
   +-0 gives +-0 and NaN gives NaN. */
static inline float tanh_f(float x)
{
    float a = x < 0 ? -x : x;
    a = a > 9.0f ? 9.0f : a;   /* NaN stays NaN */
    float big = 1.0f - 2.0f / (exp_f(2.0f * a) + 1.0f);
    float u = x * x;
    float q = -0.0056919857f;
    q = FMA(q, u, 0.0206262918f);
    q = FMA(q, u, -0.0537353188f);
    q = FMA(q, u, 0.1333138135f);
    q = FMA(q, u, -0.3333327921f);
    float small = FMA(x, u * q, x);
    big = a >= 9.0f ? 1.0f : big;  /* tanh(9) rounds to 1 in float32; NaN stays NaN */
    small = x == 0 ? x : small;    /* -0 stays -0 (-0 + +0 would be +0) */
    return a < 0.625f ? small : (x < 0 ? -big : big);
}

/* The logistic sigmoid of a from y = -a: 1 / (1 + e^-a), as torch's, accurate relative to its value
   at both ends (0.5 tanh(a/2) + 0.5 loses it below a = -17). a > 87 gives 1; a < -88.37 gives 0
   (e^-a = inf), where torch's reaches 0 near -88.7 through subnormals; NaN gives NaN. */
static inline float sigmoid_of_negated(float y)
{
    y = y < -87.0f ? -87.0f : y;
    y = y > 89.0f ? 89.0f : y;     /* NaN stays NaN */
    return 1.0f / (1.0f + exp_f(y));
}

/* y = tanh_f(x) and y = sigmoid_of_negated(x) elementwise: what the tests check their accuracy on. */
EXPORT VECTOR_CLONES void tanh_array(const float *restrict x, float *restrict y, long n)
{
    for (long k = 0; k < n; k++)
        y[k] = tanh_f(x[k]);
}

EXPORT VECTOR_CLONES void sigmoid_of_negated_array(const float *restrict x, float *restrict y, long n)
{
    for (long k = 0; k < n; k++)
        y[k] = sigmoid_of_negated(x[k]);
}

/* a: (n, 4H) pre-activations, the sigmoid columns (o | f | i) negated, W_hh h added.
   c: (n, H) the cell state, updated to c_t.  m: rows of H, ldm apart, receive o*tanh(c_t).
   kf: (n, 2H) receives K = o*(1 - tanh(c_t)^2) and F = f, and a the coefficients of dL/da:
   (tanh(c_t) o' | c_{t-1} f' | g i' | i (1 - g^2)), s' = s (1 - s). Inference passes scratch
   for kf: one loop for both, so that the compiler vectorises both alike and their h agree
   bit for bit (a vectorised and a scalar remainder loop may round differently). */
EXPORT VECTOR_CLONES void lstm_forward_step(float *restrict a, float *restrict c, float *restrict m, long ldm, float *restrict kf,
                       long H, long n)
{
    for (long b = 0; b < n; b++) {
        float *restrict ao = a + b * 4 * H, *restrict af = ao + H, *restrict ai = af + H, *restrict ag = ai + H;
        float *restrict cr = c + b * H, *restrict mr = m + b * ldm;
        float *restrict kr = kf + b * 2 * H, *restrict fr = kr + H;
        for (long r = 0; r < H; r++) {
            float o = sigmoid_of_negated(ao[r]), f = sigmoid_of_negated(af[r]);
            float i = sigmoid_of_negated(ai[r]), g = tanh_f(ag[r]);
            float ig = i * g, fc = f * cr[r], cn = fc + ig, tc = tanh_f(cn), mo = o * tc;
            cr[r] = cn;
            mr[r] = mo;
            kr[r] = o - mo * tc;
            fr[r] = f;
            ao[r] = mo - o * mo;
            af[r] = fc * (1.0f - f);   /* not fc - f*fc: NaN where c_{t-1} is inf (torch.nn's gradient: inf) */
            ai[r] = ig - i * ig;
            ag[r] = i - g * ig;
        }
    }
}

/* d: (n, 4H) the coefficients lstm_forward_step left in a, replaced by dL/da.
   kf: (n, 2H) as lstm_forward_step wrote it.  dc: (n, H) dL/dc_t in, dL/dc_{t-1} out.
   dL/dm_t: g1 (n, H), plus g2 (n, H) when given (the carried dh and dy[t]). */
EXPORT VECTOR_CLONES void lstm_backward_step(float *restrict d, const float *restrict kf, float *restrict dc,
                        const float *restrict g1, const float *restrict g2, long H, long n)
{
    for (long b = 0; b < n; b++) {
        float *restrict d_o = d + b * 4 * H, *restrict d_f = d_o + H, *restrict d_i = d_f + H, *restrict d_g = d_i + H;
        const float *restrict kr = kf + b * 2 * H, *restrict fr = kr + H;
        const float *restrict g1r = g1 + b * H, *restrict g2r = g2 ? g2 + b * H : 0;
        float *restrict dcr = dc + b * H;
        for (long r = 0; r < H; r++) {
            float dm = g2r ? g1r[r] + g2r[r] : g1r[r];
            float dcn = dcr[r] + kr[r] * dm;
            d_o[r] *= dm;
            d_f[r] *= dcn;
            d_i[r] *= dcn;
            d_g[r] *= dcn;
            dcr[r] = dcn * fr[r];
        }
    }
}

/* The GRU step of cells/gru.py's GRULoop, in its feature-major layout: row j of a block, column b < n
   (the active columns of a packed step) at [j * ld + b]. g: 3H rows (n | r | z), W_hh h with the r, z
   rows negated, replaced by (hn | r | z); gx: 3H rows (r | z | n), W_ih x and biases, the r, z rows
   negated; b_hn: H floats. nw receives n_t, h receives h_t from h_prev. Both loops run the same body in
   NumPy's order of operations; the first where a column is contiguous (B = 1), so that it vectorises. */
static inline void gru_forward_at(float *restrict g, const float *restrict gx, float b_hn, float *restrict nw,
                                  const float *restrict h_prev, float *restrict h, long k, long Hld)
{
    float hn = g[k] + b_hn;
    float r = sigmoid_of_negated(g[Hld + k] + gx[k]), z = sigmoid_of_negated(g[2 * Hld + k] + gx[Hld + k]);
    float nv = tanh_f(r * hn + gx[2 * Hld + k]);
    g[k] = hn;
    g[Hld + k] = r;
    g[2 * Hld + k] = z;
    nw[k] = nv;
    h[k] = (h_prev[k] - nv) * z + nv;
}

EXPORT VECTOR_CLONES void gru_forward_step(float *restrict g, const float *restrict gx, const float *restrict b_hn,
                                           float *restrict nw, const float *restrict h_prev, float *restrict h,
                                           long H, long n, long ld)
{
    if (ld == 1) {
        for (long j = 0; j < H; j++)
            gru_forward_at(g, gx, b_hn[j], nw, h_prev, h, j, H);
        return;
    }
    for (long j = 0; j < H; j++)
        for (long b = 0; b < n; b++)
            gru_forward_at(g, gx, b_hn[j], nw, h_prev, h, j * ld + b, H * ld);
}

/* The GRU's backward step, layout as above. dh: dL/dh_t carried; dy: dy[t] (added to it). g, nw, h_prev as
   gru_forward_step left them. d: 4H rows receive the gradients of (hn | r_pre | z_pre | n's input part);
   keep receives z dL/dh_t, to which the caller adds W_hh^T d: dL/dh_{t-1}. */
static inline void gru_backward_at(const float *restrict dh, const float *restrict dy, const float *restrict g,
                                   const float *restrict nw, const float *restrict h_prev, float *restrict d,
                                   float *restrict keep, long k, long Hld)
{
    float dhv = dh[k] + dy[k], hn = g[k], r = g[Hld + k], z = g[2 * Hld + k], nv = nw[k];
    float kept = dhv * z, dnew = (1.0f - nv * nv) * (dhv - kept);
    keep[k] = kept;
    d[k] = dnew * r;
    d[Hld + k] = (r - r * r) * hn * dnew;
    d[2 * Hld + k] = (z - z * z) * (h_prev[k] - nv) * dhv;
    d[3 * Hld + k] = dnew;
}

EXPORT VECTOR_CLONES void gru_backward_step(const float *restrict dh, const float *restrict dy, const float *restrict g,
                                            const float *restrict nw, const float *restrict h_prev, float *restrict d,
                                            float *restrict keep, long H, long n, long ld)
{
    if (ld == 1) {
        for (long j = 0; j < H; j++)
            gru_backward_at(dh, dy, g, nw, h_prev, d, keep, j, H);
        return;
    }
    for (long j = 0; j < H; j++)
        for (long b = 0; b < n; b++)
            gru_backward_at(dh, dy, g, nw, h_prev, d, keep, j * ld + b, H * ld);
}

/* The hash of this file the library was built from (setup.py passes it; build.py compares it with
   the file now, so that an install whose step.c has changed since does not run stale code). */
#define STRINGIFY(x) #x
#define STRING(x) STRINGIFY(x)
#ifndef GPURNN_SOURCE_HASH
#define GPURNN_SOURCE_HASH none
#endif
EXPORT const char *step_source_hash(void)
{
    return STRING(GPURNN_SOURCE_HASH);
}

#ifdef GPURNN_EXTENSION
/* setup.py ships this file compiled as a Python extension module; build.py loads it with ctypes.
   Importing it also works: an empty module. */
static struct PyModuleDef step_module = {PyModuleDef_HEAD_INIT, "_step",
                                         "The compiled LSTM and GRU steps: gpurnn.cpu.build loads them with ctypes.",
                                         -1};

PyMODINIT_FUNC PyInit__step(void)
{
    return PyModule_Create(&step_module);
}
#endif
