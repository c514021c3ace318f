/* Row-wise fused SGD(momentum) + DHSPG statistics / half-space step on the CPU.
 *
 * Built at first use by otoir/kernels/cpu.py (cc -O3 -fopenmp-simd -ffp-contract=off) and
 * called through ctypes. Every tensor is seen as (rows, inner), row-major contiguous. One call
 * streams each row once through the cache and does all element-wise work on it:
 *
 *   sweep  (otoir_sweep_*):  optional row statistics of (x, g) before the update (SM=1),
 *                            e = g + wd*x, m = mu*m + (1-damp)*e (or d = e without momentum),
 *                            optional row statistics of (x, d) (SM=2),
 *                            optional x = x - lr*d and zero rows set to 0 (UX=1).
 *   scale  (otoir_scale_*):  x = s_r*x (rows with s_r != 1), d = src (+ wd*x_old),
 *                            x = x - lr*d, zero rows set to 0.
 *
 * Rounding follows the front end that calls it: FM=1 uses one fused multiply-add where torch's
 * `add_(t, alpha=a)` does (t*a + self), FM=0 rounds the product first like numpy's
 * `x -= lr*d`; products by a scalar (mu*m, s*x) are always rounded separately, as both do.
 * Row statistics are accumulated in double (vectorised partial sums).
 */
#include <stdint.h>
#include <stddef.h>

/* The Python side (otoir/kernels/cpu.py) has the same values; tests/unit/test_kernels.py parses
 * these #defines and compares. */
#define OTOIR_CPU_ABI 1
/* Bits of the `flags` argument. */
#define OTOIR_FLAG_WD 1 /* weight decay: e = g + wd*x */
#define OTOIR_FLAG_HM 2 /* momentum buffer m */
#define OTOIR_FLAG_UX 4 /* update x (sweep) */
#define OTOIR_FLAG_FM 8 /* fused multiply-add rounding (torch) */
/* Values of the `sm` argument of otoir_sweep_*: which row statistics to reduce. */
#define OTOIR_STATS_NONE 0
#define OTOIR_STATS_BEFORE 1 /* of (x, g), before the update */
#define OTOIR_STATS_AFTER 2  /* of (x, d), d the new direction */

int otoir_cpu_abi(void) { return OTOIR_CPU_ABI; }

#define FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#define FMAD(a, b, c) __builtin_fma((a), (b), (c))

#define DEFINE(T, SFX, FMA)                                                                     \
static inline __attribute__((always_inline)) void sweep_##SFX##_body(                          \
    T *restrict x, const T *restrict g, T *restrict m, int64_t rows, int64_t inner, T mu,      \
    T omd, T wd, T neg_lr, T lr, double *restrict sxd, double *restrict sxx,                    \
    double *restrict sdd, const uint8_t *restrict zrow, const int SM, const int WD,            \
    const int HM, const int UX, const int FM) {                                                 \
  for (int64_t r = 0; r < rows; ++r) {                                                          \
    T *restrict xr = x + r * inner;                                                             \
    const T *restrict gr = g + r * inner;                                                       \
    T *restrict mr = HM ? m + r * inner : (T *)0;                                               \
    double a = 0.0, b = 0.0, c = 0.0;                                                           \
    const int zr = (UX && zrow) ? zrow[r] : 0;                                                  \
    _Pragma("omp simd reduction(+:a,b,c)")                                                      \
    for (int64_t j = 0; j < inner; ++j) {                                                       \
      T xv = xr[j], gv = gr[j];                                                                 \
      if (SM == OTOIR_STATS_BEFORE) { a += (double)xv * gv; b += (double)xv * xv; c += (double)gv * gv; }       \
      T e = gv;                                                                                 \
      if (WD) { if (FM) e = FMA(xv, wd, gv); else { T t = wd * xv; e = gv + t; } }              \
      T d = e;                                                                                  \
      if (HM) {                                                                                 \
        T t = mr[j] * mu;                                                                       \
        if (FM) d = FMA(e, omd, t);                                                             \
        else { T u = omd * e; d = t + u; } /* omd == 1: u == e exactly */                       \
        mr[j] = d;                                                                              \
      }                                                                                         \
      if (SM == OTOIR_STATS_AFTER) { a += (double)xv * d; b += (double)xv * xv; c += (double)d * d; }          \
      if (UX) {                                                                                 \
        T nx;                                                                                   \
        if (FM) nx = FMA(d, neg_lr, xv); else { T t = lr * d; nx = xv - t; }                    \
        xr[j] = zr ? (T)0 : nx;                                                                 \
      }                                                                                         \
    }                                                                                           \
    if (SM) { sxd[r] = a; sxx[r] = b; sdd[r] = c; }                                             \
  }                                                                                             \
}                                                                                               \
void otoir_sweep_##SFX(T *x, const T *g, T *m, int64_t rows, int64_t inner, double mu,         \
                       double omd, double wd, double lr, double *sxd, double *sxx, double *sdd, \
                       const uint8_t *zrow, int sm, int flags) {                               \
  const int wdf = (flags & OTOIR_FLAG_WD) != 0, hm = (flags & OTOIR_FLAG_HM) != 0;               \
  const int ux = (flags & OTOIR_FLAG_UX) != 0, fm = (flags & OTOIR_FLAG_FM) != 0;                \
  const T Mu = (T)mu, Omd = (T)omd, Wd = (T)wd, Nl = (T)(-lr), L = (T)lr;                       \
  int code = sm * 16 + wdf * 8 + hm * 4 + ux * 2 + fm;                                          \
  switch (code) {                                                                               \
    CASES(T, SFX)                                                                               \
    default: break;                                                                             \
  }                                                                                             \
}                                                                                               \
void otoir_scale_##SFX(T *x, const T *src, int64_t rows, int64_t inner, const double *rscale,  \
                       double wd, double lr, const uint8_t *zrow, int flags) {                  \
  const int wdf = (flags & OTOIR_FLAG_WD) != 0, fm = (flags & OTOIR_FLAG_FM) != 0;               \
  const T Wd = (T)wd, Nl = (T)(-lr), L = (T)lr;                                                 \
  for (int64_t r = 0; r < rows; ++r) {                                                          \
    T *restrict xr = x + r * inner;                                                             \
    const T *restrict dr = src + r * inner;                                                     \
    const T s = (T)rscale[r];                                                                   \
    const int sc = rscale[r] != 1.0;                                                            \
    const int zr = zrow ? zrow[r] : 0;                                                          \
    _Pragma("omp simd")                                                                         \
    for (int64_t j = 0; j < inner; ++j) {                                                       \
      T xv = xr[j];                                                                             \
      T d = dr[j];                                                                              \
      if (wdf) { if (fm) d = FMA(xv, Wd, d); else { T t = Wd * xv; d = d + t; } }               \
      T y = sc ? xv * s : xv;                                                                   \
      T nx;                                                                                     \
      if (fm) nx = FMA(d, Nl, y); else { T t = L * d; nx = y - t; }                             \
      xr[j] = zr ? (T)0 : nx;                                                                   \
    }                                                                                           \
  }                                                                                             \
}

#define C1(T, SFX, SM, WD, HM, UX, FM)                                                          \
  case SM * 16 + WD * 8 + HM * 4 + UX * 2 + FM:                                                 \
    sweep_##SFX##_body(x, g, m, rows, inner, Mu, Omd, Wd, Nl, L, sxd, sxx, sdd, zrow, SM, WD,   \
                       HM, UX, FM);                                                             \
    break;
#define C2(T, SFX, SM, WD, HM, UX) C1(T, SFX, SM, WD, HM, UX, 0) C1(T, SFX, SM, WD, HM, UX, 1)
#define C3(T, SFX, SM, WD) C2(T, SFX, SM, WD, 0, 0) C2(T, SFX, SM, WD, 0, 1) C2(T, SFX, SM, WD, 1, 0) \
  C2(T, SFX, SM, WD, 1, 1)
#define CASES(T, SFX) C3(T, SFX, 0, 0) C3(T, SFX, 0, 1) C3(T, SFX, 1, 0) C3(T, SFX, 1, 1)       \
  C3(T, SFX, 2, 0) C3(T, SFX, 2, 1)

DEFINE(float, f32, FMAF)
DEFINE(double, f64, FMAD)
