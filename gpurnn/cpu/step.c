/* The LSTM step's pointwise work on the CPU, for lstm.py's CompiledLSTMLoop (float32).

   The NumPy loop spends most of a step on a dozen ufunc calls over small arrays; here each
   step is one pass over the gates, with the operations of gpurnn/cells/lstm.py's LSTMLoop in the same
   order (only tanh differs: glibc's vector tanhf, not NumPy's). Every array is row-major,
   one row per batch row b < n (the active rows of a packed step), gates (o | f | i | g).

   Built by build.py with -ffp-contract=off (no a*b+c fused: the same rounding as NumPy's
   separate operations); tanhf is glibc's vector version (libmvec).
*/
__attribute__((simd("notinbranch"), const, nothrow)) extern float tanhf(float);

/* a: (n, 4H) pre-activations, the sigmoid columns pre-scaled by 1/2, W_hh h added.
   c: (n, H) the cell state, updated to c_t.  m: rows of H, ldm apart, receive o*tanh(c_t).
   kf: (n, 2H) receives K = o*(1 - tanh(c_t)^2) and F = f, and a the coefficients of dL/da:
   (tanh(c_t) o' | c_{t-1} f' | g i' | i (1 - g^2)), s' = s (1 - s). Inference passes scratch
   for kf: one loop for both, so that the compiler vectorises both alike and their h agree
   bit for bit (libmvec's vector and scalar tanhf differ in the last bit). */
void lstm_forward_step(float *restrict a, float *restrict c, float *restrict m, long ldm, float *restrict kf,
                       long H, long n)
{
    for (long b = 0; b < n; b++) {
        float *restrict ao = a + b * 4 * H, *restrict af = ao + H, *restrict ai = af + H, *restrict ag = ai + H;
        float *restrict cr = c + b * H, *restrict mr = m + b * ldm;
        float *restrict kr = kf + b * 2 * H, *restrict fr = kr + H;
        for (long r = 0; r < H; r++) {
            float o = 0.5f * tanhf(ao[r]) + 0.5f, f = 0.5f * tanhf(af[r]) + 0.5f;
            float i = 0.5f * tanhf(ai[r]) + 0.5f, g = tanhf(ag[r]);
            float ig = i * g, fc = f * cr[r], cn = fc + ig, tc = tanhf(cn), mo = o * tc;
            cr[r] = cn;
            mr[r] = mo;
            kr[r] = o - mo * tc;
            fr[r] = f;
            ao[r] = mo - o * mo;
            af[r] = fc - f * fc;
            ai[r] = ig - i * ig;
            ag[r] = i - g * ig;
        }
    }
}

/* d: (n, 4H) the coefficients lstm_forward_step left in a, replaced by dL/da.
   kf: (n, 2H) as lstm_forward_step wrote it.  dc: (n, H) dL/dc_t in, dL/dc_{t-1} out.
   dL/dm_t: g1 (n, H), plus g2 (n, H) when given (the carried dh and dy[t]). */
void lstm_backward_step(float *restrict d, const float *restrict kf, float *restrict dc,
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
