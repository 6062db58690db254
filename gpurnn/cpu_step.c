/* The LSTM step's pointwise work on the CPU, for lstm_loop.CompiledLSTMLoop (float32).

   The NumPy loop spends most of a step on a dozen ufunc calls over small arrays; here each
   step is one pass over the gates. Same layout and the same operations, in the same order,
   as lstm_loop.LSTMLoop (only tanh differs: glibc's vector tanhf, not NumPy's): every array
   is feature-major, (rows, ld) with the batch on the fast axis, and only columns [0, n) are
   touched (the active rows of a packed step).

   Built by cpu_step.py with -ffp-contract=off, so that no a*b+c is fused and the inference
   and training passes give the same bits; tanhf is glibc's vector version (libmvec).
*/
__attribute__((simd("notinbranch"), const, nothrow)) extern float tanhf(float);

/* a: (4H, ld) pre-activations (o | f | i | g), the sigmoid rows pre-scaled by 1/2, W_hh h added.
   c: (H, ld) the cell state, updated to c_t.  m: (H, ld) receives o*tanh(c_t).
   kf: (2H, ld) receives K = o*(1 - tanh(c_t)^2) and F = f, and a the coefficients of dL/da:
   (tanh(c_t) o' | c_{t-1} f' | g i' | i (1 - g^2)), s' = s (1 - s).
   kf == 0: inference, neither is written. */
void lstm_forward_step(float *restrict a, float *restrict c, float *restrict m, float *restrict kf,
                       long H, long ld, long n)
{
    for (long r = 0; r < H; r++) {
        float *restrict ao = a + r * ld, *restrict af = ao + H * ld;
        float *restrict ai = af + H * ld, *restrict ag = ai + H * ld;
        float *restrict cr = c + r * ld, *restrict mr = m + r * ld;
        if (!kf) {
            for (long b = 0; b < n; b++) {
                float o = 0.5f * tanhf(ao[b]) + 0.5f, f = 0.5f * tanhf(af[b]) + 0.5f;
                float i = 0.5f * tanhf(ai[b]) + 0.5f, g = tanhf(ag[b]);
                float cn = f * cr[b] + i * g;
                cr[b] = cn;
                mr[b] = o * tanhf(cn);
            }
            continue;
        }
        float *restrict kr = kf + r * ld, *restrict fr = kr + H * ld;
        for (long b = 0; b < n; b++) {
            float o = 0.5f * tanhf(ao[b]) + 0.5f, f = 0.5f * tanhf(af[b]) + 0.5f;
            float i = 0.5f * tanhf(ai[b]) + 0.5f, g = tanhf(ag[b]);
            float ig = i * g, fc = f * cr[b], cn = fc + ig, tc = tanhf(cn), mo = o * tc;
            cr[b] = cn;
            mr[b] = mo;
            kr[b] = o - mo * tc;
            fr[b] = f;
            ao[b] = mo - o * mo;
            af[b] = fc - f * fc;
            ai[b] = ig - i * ig;
            ag[b] = i - g * ig;
        }
    }
}

/* d: (4H, ld) the coefficients lstm_forward_step left in a, replaced by dL/da.
   kf: (2H, ld) as lstm_forward_step wrote it.  dc: (H, ld) dL/dc_t in, dL/dc_{t-1} out.
   dL/dm_t at (r, b) is g1[b*sb + r*sr], plus g2[b*sb + r*sr] when g2 is given: the carried
   dh and dy in C-ordered (B, H) rows (sb = H, sr = 1), or W_hr^T dh feature-major (sb = 1, sr = n). */
void lstm_backward_step(float *restrict d, const float *restrict kf, float *restrict dc,
                        const float *restrict g1, const float *restrict g2, long sb, long sr,
                        long H, long ld, long n)
{
    for (long r = 0; r < H; r++) {
        float *restrict d_o = d + r * ld, *restrict d_f = d_o + H * ld;
        float *restrict d_i = d_f + H * ld, *restrict d_g = d_i + H * ld;
        const float *restrict kr = kf + r * ld, *restrict fr = kr + H * ld;
        float *restrict dcr = dc + r * ld;
        for (long b = 0; b < n; b++) {
            float dm = g2 ? g1[b * sb + r * sr] + g2[b * sb + r * sr] : g1[b * sb + r * sr];
            float dcn = dcr[b] + kr[b] * dm;
            d_o[b] *= dm;
            d_f[b] *= dcn;
            d_i[b] *= dcn;
            d_g[b] *= dcn;
            dcr[b] = dcn * fr[b];
        }
    }
}
