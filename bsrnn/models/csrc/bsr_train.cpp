// Block-sparse (BSR) training kernels for GRU layers: see bsrnn/models/sparse_gru.py.
//
// Layout. Activations are "step-major": (T, features, NP) row-major, one (features, NP) panel per
// frame, NP = the batch padded to a multiple of 8 (padding lanes are zero). A BSR weight W
// (M x K, blocks R x C, values (nnzb, R, C) row-major, int32 indptr/indices) times a (K, NP)
// panel is the product a BSR kernel wants: each block multiplies C contiguous rows of lanes,
// each weight is broadcast against a row of lanes; and a recurrent step reads and writes whole
// contiguous panels (a feature-major layout, (features, T*NP), puts every row of a step on its
// own page and was 5x slower for the gates, measured).
//
// Entry points (F = f32 | f64; f64 runs the generic code, for gradient checks):
//   bsr_mm_F       Y_t = W X_t (+ bias per row) for every frame t (the input projection, and its
//                  transposed product for dX);
//   sddmm_F        dW[block] = sum_t G_t[rows] H_t[cols]^T at the kept blocks only (the weight
//                  gradients over all frames); per-row addresses let callers shift frames and
//                  mix sources without copies;
//   gru_fwd_F      the recurrence of a GRU layer (all directions), one parallel region over the
//                  whole time loop: per step one BSR product W_hh h (batch NP) fused with the gates;
//   gru_bwd_F      its backward pass through time: per step the gate derivatives, then one BSR
//                  product with the transposed W_hh, fused with dh * z and the incoming gradient.
//
// Threads: every parallel region splits its work (block rows, weighted by their nonzeros) from
// the team size it actually obtained (omp_get_num_threads inside the region), so a team smaller
// than requested (OMP_THREAD_LIMIT, nested regions) still covers all rows exactly once.
//
// SIMD: GCC/Clang vector extensions of 64 bytes (16 floats, 8 doubles): with -march=native on an
// AVX-512 machine these are zmm registers; elsewhere (AVX2, SSE, NEON) the compiler splits them,
// with the same results. Block shapes 1x1, 2x2, 4x4, 8x8, 4x8 and 8x4 have compile-time
// specialisations for f32; every other shape runs the generic (runtime R, C) code.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <climits>
#include <thread>
#include <vector>
#include <omp.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

typedef int64_t i64;
typedef int32_t i32;
// Tuning constants (measured on Zen 4; -D overrides them for experiments):
#ifndef PF
#define PF 3  // blocks ahead whose x rows the products prefetch (scattered rows defeat the hardware prefetcher)
#endif
#ifndef SCHUNK
#define SCHUNK 8  // frames per SDDMM pass: the pass's panels stay in L2 and the TLB
#endif

template <typename F, int BYTES> struct vec_of { typedef F type __attribute__((vector_size(BYTES))); };
template <typename F> using VF = typename vec_of<F, 64>::type;  // a full vector
template <typename F> using VH = typename vec_of<F, 32>::type;  // half a vector
template <typename V> static inline V ldv(const void* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V> static inline void stv(void* p, V v) { std::memcpy(p, &v, sizeof(V)); }
template <typename F> constexpr int WF = 64 / sizeof(F);  // lanes of a full vector

// Keep a loaded vector in a register: without this GCC folds the load into every FMA that uses
// it (R loads of each x vector instead of one), which halves the speed of the products when the
// loads, not the FMAs, are the bottleneck (measured on Zen 4: 45 -> 70 GFLOP/s on one core).
template <typename V> static inline void pin(V& v) {
#if defined(__AVX512F__)
  asm("" : "+v"(v));
#elif defined(__AVX__)
  if constexpr (sizeof(V) <= 32) asm("" : "+x"(v));
#elif defined(__aarch64__)
  if constexpr (sizeof(V) <= 16) asm("" : "+w"(v));
#endif
}

static inline float hsum(VF<float> v) {
  VH<float> a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  typedef float v4 __attribute__((vector_size(16)));
  v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}
static inline float hsum(VH<float> a) {
  typedef float v4 __attribute__((vector_size(16)));
  v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}
static inline double hsum(VH<double> a) { return (a[0] + a[2]) + (a[1] + a[3]); }
static inline double hsum(VF<double> v) {
  VH<double> a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  return (a[0] + a[2]) + (a[1] + a[3]);
}

// Lane k of the result = the sum of a[k]'s lanes, for 8 vectors of 8 floats: 7 rounds of
// (even lanes + odd lanes) instead of 8 separate horizontal sums.
static inline VH<float> red8(const VH<float>* a) {
  typedef VH<float> v;
  auto pair = [](v x, v y) {
    return __builtin_shufflevector(x, y, 0, 2, 4, 6, 8, 10, 12, 14) + __builtin_shufflevector(x, y, 1, 3, 5, 7, 9, 11, 13, 15);
  };
  const v s0 = pair(a[0], a[1]), s1 = pair(a[2], a[3]), s2 = pair(a[4], a[5]), s3 = pair(a[6], a[7]);
  return pair(pair(s0, s1), pair(s2, s3));
}

// ------------------------------------------------------------------------------- step barrier
// The recurrences synchronise their threads once per time step. OpenMP's barrier spins for a long
// time before it sleeps (libgomp: GOMP_SPINCOUNT, fixed when the runtime, usually torch's, loads):
// on a machine with more runnable threads than cores a spinning thread keeps the core its
// preempted partner needs, and a step costs a whole scheduler slice (measured: 4 ms per step,
// 5x slower than one thread). This barrier spins briefly, then sleeps (futex on Linux, yield
// elsewhere), so a preempted partner can take over the waiting thread's core.
struct StepBarrier {
  int count = 0, gen = 0;
  void wait(int nt) {
    if (nt <= 1) return;
    const int g = __atomic_load_n(&gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&count, 1, __ATOMIC_ACQ_REL) == nt) {
      __atomic_store_n(&count, 0, __ATOMIC_RELAXED);
      __atomic_add_fetch(&gen, 1, __ATOMIC_RELEASE);
#ifdef __linux__
      syscall(SYS_futex, &gen, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#endif
      return;
    }
    for (int i = 0; i < 2000; ++i) {
      if (__atomic_load_n(&gen, __ATOMIC_ACQUIRE) != g) return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    while (__atomic_load_n(&gen, __ATOMIC_ACQUIRE) == g) {
#ifdef __linux__
      syscall(SYS_futex, &gen, FUTEX_WAIT_PRIVATE, g, nullptr, nullptr, 0);
#else
      std::this_thread::yield();
#endif
    }
  }
};

// ------------------------------------------------------------------------------- work split
// Items [lo, hi) of thread tid out of nt, items weighted by a nondecreasing cumulative cost
// cost(i) (cost(0) = 0, cost(n) = total): the first item whose cumulative cost reaches each cut.
template <typename Cost>
static inline void share(Cost cost, i64 n, int tid, int nt, i64& lo, i64& hi) {
  auto cut = [&](int t) -> i64 {
    if (t <= 0) return 0;
    if (t >= nt) return n;
    const i64 target = (i64)((double)cost(n) * t / nt);
    i64 a = 0, b = n;  // smallest i with cost(i) >= target
    while (a < b) { const i64 m = (a + b) / 2; if (cost(m) < target) a = m + 1; else b = m; }
    return a;
  };
  lo = cut(tid);
  hi = cut(tid + 1);
}

// ------------------------------------------------------------------------------- products
// One block row times NF full + NH half vectors of lanes: Y[r, 0:lanes] = sum_p W_p[r, :] X[idx_p*C : +C, lanes]
// (+ bias[r]). R = C = 0: runtime shape Rr x Cr, one row at a time.
template <typename F, int R, int C, int NF, int NH>
static inline void mm_tile(int Rr, int Cr, const i32* __restrict idx, const F* __restrict V, i64 p0, i64 p1,
                           const F* __restrict X, i64 ldx, F* __restrict Y, i64 ldy, const F* bias) {
  typedef VF<F> vf;
  typedef VH<F> vh;
  constexpr int W = WF<F>, NFA = NF > 0 ? NF : 1, NHA = NH > 0 ? NH : 1;
  if constexpr (R > 0) {
    vf af[R][NFA];
    vh ah[R][NHA];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const F b0 = bias ? bias[r] : F(0);
#pragma GCC unroll 4
      for (int k = 0; k < NF; ++k) af[r][k] = (vf){} + b0;
#pragma GCC unroll 4
      for (int k = 0; k < NH; ++k) ah[r][k] = (vh){} + b0;
    }
    for (i64 p = p0; p < p1; ++p) {
      const F* w = V + p * (R * C);
      const F* xr = X + (i64)idx[p] * C * ldx;
      if (PF && p + PF < p1) {
        const F* xq = X + (i64)idx[p + PF] * C * ldx;
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
          for (int k = 0; k < (NF * W + NH * W / 2 + 15) / 16; ++k) __builtin_prefetch(xq + c * ldx + 16 * k);
      }
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        vf xf[NFA];
        vh xh[NHA];
#pragma GCC unroll 4
        for (int k = 0; k < NF; ++k) xf[k] = ldv<vf>(xr + c * ldx + k * W);
#pragma GCC unroll 4
        for (int k = 0; k < NH; ++k) xh[k] = ldv<vh>(xr + c * ldx + NF * W + k * (W / 2));
#pragma GCC unroll 4
        for (int k = 0; k < NF; ++k) pin(xf[k]);
#pragma GCC unroll 4
        for (int k = 0; k < NH; ++k) pin(xh[k]);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const F wv = w[r * C + c];
#pragma GCC unroll 4
          for (int k = 0; k < NF; ++k) af[r][k] += wv * xf[k];
#pragma GCC unroll 4
          for (int k = 0; k < NH; ++k) ah[r][k] += wv * xh[k];
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int k = 0; k < NF; ++k) stv(Y + r * ldy + k * W, af[r][k]);
#pragma GCC unroll 4
      for (int k = 0; k < NH; ++k) stv(Y + r * ldy + NF * W + k * (W / 2), ah[r][k]);
    }
  } else {
    const int RC = Rr * Cr;
    for (int r = 0; r < Rr; ++r) {
      const F b0 = bias ? bias[r] : F(0);
      vf af[NFA];
      vh ah[NHA];
      for (int k = 0; k < NF; ++k) af[k] = (vf){} + b0;
      for (int k = 0; k < NH; ++k) ah[k] = (vh){} + b0;
      for (i64 p = p0; p < p1; ++p) {
        const F* w = V + p * RC + r * Cr;
        const F* xr = X + (i64)idx[p] * Cr * ldx;
        for (int c = 0; c < Cr; ++c) {
          const F wv = w[c];
          for (int k = 0; k < NF; ++k) af[k] += wv * ldv<vf>(xr + c * ldx + k * W);
          for (int k = 0; k < NH; ++k) ah[k] += wv * ldv<vh>(xr + c * ldx + NF * W + k * (W / 2));
        }
      }
      for (int k = 0; k < NF; ++k) stv(Y + r * ldy + k * W, af[k]);
      for (int k = 0; k < NH; ++k) stv(Y + r * ldy + NF * W + k * (W / 2), ah[k]);
    }
  }
}

// Full vectors of lanes per tile: enough accumulators to hide FMA latency, few enough to stay in registers.
template <typename F, int R> constexpr int max_f() { return R == 0 ? 2 : (R <= 4 ? 4 : (R <= 8 ? 2 : 1)); }

// One block row over `lanes` lanes (a multiple of 8): tiles of max_f full vectors, then the rest.
template <typename F, int R, int C>
static inline void mm_lanes(int Rr, int Cr, const i32* idx, const F* V, i64 p0, i64 p1, const F* X, i64 ldx,
                            F* Y, i64 ldy, i64 lanes, const F* bias) {
  constexpr int W = WF<F>, MF = max_f<F, R>();
  i64 l = 0;
  for (; l + MF * W <= lanes; l += MF * W) mm_tile<F, R, C, MF, 0>(Rr, Cr, idx, V, p0, p1, X + l, ldx, Y + l, ldy, bias);
  const i64 rem = lanes - l;
  if (!rem) return;
  const int nf = (int)(rem / W), nh = (int)((rem % W) / (W / 2));
#define TILE(a, b) if (nf == a && nh == b) { if constexpr (a < MF) { mm_tile<F, R, C, a, b>(Rr, Cr, idx, V, p0, p1, X + l, ldx, Y + l, ldy, bias); return; } }
  TILE(0, 1) TILE(1, 0) TILE(1, 1) TILE(2, 0) TILE(2, 1) TILE(3, 0) TILE(3, 1)
#undef TILE
}

// mm_tile for two frames at once (X0/X1 -> Y0/Y1, same lanes): each weight broadcast and each
// block's index feed twice the FMAs; for narrow panels (batch <= 32), where one frame alone leaves
// the weight stream and the broadcasts as the bottleneck.
template <typename F, int R, int C, int NF, int NH>
static inline void mm_tile2(const i32* __restrict idx, const F* __restrict V, i64 p0, i64 p1, const F* __restrict X0,
                            const F* __restrict X1, i64 ldx, F* __restrict Y0, F* __restrict Y1, i64 ldy,
                            const F* bias) {
  typedef VF<F> vf;
  typedef VH<F> vh;
  constexpr int W = WF<F>, NFA = NF > 0 ? NF : 1, NHA = NH > 0 ? NH : 1;
  vf af[2][R][NFA];
  vh ah[2][R][NHA];
#pragma GCC unroll 2
  for (int f = 0; f < 2; ++f)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const F b0 = bias ? bias[r] : F(0);
#pragma GCC unroll 2
      for (int k = 0; k < NF; ++k) af[f][r][k] = (vf){} + b0;
#pragma GCC unroll 2
      for (int k = 0; k < NH; ++k) ah[f][r][k] = (vh){} + b0;
    }
  for (i64 p = p0; p < p1; ++p) {
    const F* w = V + p * (R * C);
    const i64 xo = (i64)idx[p] * C * ldx;
    if (PF && p + PF < p1) {
      const i64 xq = (i64)idx[p + PF] * C * ldx;
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        __builtin_prefetch(X0 + xq + c * ldx);
        __builtin_prefetch(X1 + xq + c * ldx);
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      vf xf[2][NFA];
      vh xh[2][NHA];
#pragma GCC unroll 2
      for (int k = 0; k < NF; ++k) {
        xf[0][k] = ldv<vf>(X0 + xo + c * ldx + k * W);
        xf[1][k] = ldv<vf>(X1 + xo + c * ldx + k * W);
        pin(xf[0][k]);
        pin(xf[1][k]);
      }
#pragma GCC unroll 2
      for (int k = 0; k < NH; ++k) {
        xh[0][k] = ldv<vh>(X0 + xo + c * ldx + NF * W + k * (W / 2));
        xh[1][k] = ldv<vh>(X1 + xo + c * ldx + NF * W + k * (W / 2));
        pin(xh[0][k]);
        pin(xh[1][k]);
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const F wv = w[r * C + c];
#pragma GCC unroll 2
        for (int f = 0; f < 2; ++f) {
#pragma GCC unroll 2
          for (int k = 0; k < NF; ++k) af[f][r][k] += wv * xf[f][k];
#pragma GCC unroll 2
          for (int k = 0; k < NH; ++k) ah[f][r][k] += wv * xh[f][k];
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int k = 0; k < NF; ++k) {
      stv(Y0 + r * ldy + k * W, af[0][r][k]);
      stv(Y1 + r * ldy + k * W, af[1][r][k]);
    }
#pragma GCC unroll 2
    for (int k = 0; k < NH; ++k) {
      stv(Y0 + r * ldy + NF * W + k * (W / 2), ah[0][r][k]);
      stv(Y1 + r * ldy + NF * W + k * (W / 2), ah[1][r][k]);
    }
  }
}

// Two frames of one block row when the panel is at most 2 full vectors wide and the block has at
// most 4 rows (so 2 * R * (NF + NH) accumulators stay in registers); false if not applicable.
template <typename F, int R, int C>
static inline bool mm_pair(const i32* idx, const F* V, i64 p0, i64 p1, const F* X0, const F* X1, i64 ldx, F* Y0,
                           F* Y1, i64 ldy, i64 lanes, const F* bias) {
  if constexpr (R > 0 && R <= 4) {
    constexpr int W = WF<F>;
    const int nf = (int)(lanes / W), nh = (int)((lanes % W) / (W / 2));
#define PAIR(a, b) if (nf == a && nh == b) { mm_tile2<F, R, C, a, b>(idx, V, p0, p1, X0, X1, ldx, Y0, Y1, ldy, bias); return true; }
    PAIR(0, 1) PAIR(1, 0) PAIR(1, 1) PAIR(2, 0)
#undef PAIR
  }
  return false;
}

// Y_t = W X_t (+ bias) for every step t: X_t = X + t*xplane and Y_t = Y + t*yplane are (rows, NP)
// panels. Steps outermost (two at a time where mm_pair applies), so that a step's panel of X stays
// in cache while a thread's block rows stream past it.
template <typename F, int R, int C>
static void mm_steps(int Rr, int Cr, i64 nbr, const i32* indptr, const i32* idx, const F* V, const F* X, i64 xplane,
                     F* Y, i64 yplane, i64 NP, i64 T, const F* bias, int nt_req) {
  const i64 RC = (i64)Rr * Cr;
#pragma omp parallel num_threads(nt_req)
  {
    i64 ib0, ib1;
    share([&](i64 i) { return (i64)indptr[i] * RC + i * Rr * 4; }, nbr, omp_get_thread_num(), omp_get_num_threads(), ib0, ib1);
    i64 t = 0;
    for (; t + 2 <= T; t += 2)
      for (i64 ib = ib0; ib < ib1; ++ib) {
        const F* b = bias ? bias + ib * Rr : nullptr;
        F *y0 = Y + t * yplane + ib * Rr * NP, *y1 = y0 + yplane;
        if (!mm_pair<F, R, C>(idx, V, indptr[ib], indptr[ib + 1], X + t * xplane, X + (t + 1) * xplane, NP, y0, y1, NP,
                              NP, b)) {
          mm_lanes<F, R, C>(Rr, Cr, idx, V, indptr[ib], indptr[ib + 1], X + t * xplane, NP, y0, NP, NP, b);
          mm_lanes<F, R, C>(Rr, Cr, idx, V, indptr[ib], indptr[ib + 1], X + (t + 1) * xplane, NP, y1, NP, NP, b);
        }
      }
    for (; t < T; ++t)
      for (i64 ib = ib0; ib < ib1; ++ib)
        mm_lanes<F, R, C>(Rr, Cr, idx, V, indptr[ib], indptr[ib + 1], X + t * xplane, NP, Y + t * yplane + ib * Rr * NP,
                          NP, NP, bias ? bias + ib * Rr : nullptr);
  }
}

// ------------------------------------------------------------------------------- SDDMM
// out[r][c] (+)= sum_{i < np} sum_{n < NP} g[r][i*gs + n] h[c][i*hs + n] for RC x CC rows (<= 4 each):
// RC*CC half-vector accumulators (NP is a multiple of 8, so half vectors tile it for floats and doubles).
template <typename F, int RC, int CC>
static inline void dots(const F* const* g, const F* const* h, i64 gs, i64 hs, i64 np, i64 NP, F* out, i64 ldo,
                        bool add) {
  typedef VH<F> vh;
  constexpr int W = WF<F> / 2;
  vh acc[RC][CC];
#pragma GCC unroll 4
  for (int r = 0; r < RC; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CC; ++c) acc[r][c] = (vh){};
  for (i64 i = 0; i < np; ++i) {
    const i64 go = i * gs, ho = i * hs;
    for (i64 n = 0; n < NP; n += W) {
      vh gv[RC], hv[CC];
#pragma GCC unroll 4
      for (int r = 0; r < RC; ++r) gv[r] = ldv<vh>(g[r] + go + n);
#pragma GCC unroll 4
      for (int c = 0; c < CC; ++c) hv[c] = ldv<vh>(h[c] + ho + n);
#pragma GCC unroll 4
      for (int r = 0; r < RC; ++r) pin(gv[r]);
#pragma GCC unroll 4
      for (int c = 0; c < CC; ++c) pin(hv[c]);
#pragma GCC unroll 4
      for (int r = 0; r < RC; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < CC; ++c) acc[r][c] += gv[r] * hv[c];
    }
  }
  if constexpr (sizeof(F) == 4 && (RC * CC) % 8 == 0) {  // 8 sums at a time by a transposing tree
#pragma GCC unroll 2
    for (int g = 0; g < RC * CC / 8; ++g) {
      const vh v = red8(&acc[0][0] + 8 * g);
      if (ldo == CC) {
        F* o = out + 8 * g;
        stv(o, add ? ldv<vh>(o) + v : v);
      } else {
        for (int k = 0; k < 8; ++k) {
          F* o = out + ((8 * g + k) / CC) * ldo + (8 * g + k) % CC;
          *o = add ? *o + v[k] : v[k];
        }
      }
    }
  } else {
#pragma GCC unroll 4
    for (int r = 0; r < RC; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < CC; ++c) {
        const F v = hsum(acc[r][c]);
        out[r * ldo + c] = add ? out[r * ldo + c] + v : v;
      }
  }
}

template <typename F>
static inline void sddmm_block(int R, int C, const F* const* g, const F* const* h, i64 gs, i64 hs, i64 np, i64 NP,
                               F* out, bool add) {
  for (int r0 = 0; r0 < R;) {
    const int rc = R - r0 >= 4 ? 4 : (R - r0 >= 2 ? 2 : 1);
    for (int c0 = 0; c0 < C;) {
      const int cc = C - c0 >= 4 ? 4 : (C - c0 >= 2 ? 2 : 1);
      F* o = out + r0 * C + c0;
#define DOTS(a, b) if (rc == a && cc == b) dots<F, a, b>(g + r0, h + c0, gs, hs, np, NP, o, C, add);
      DOTS(4, 4) DOTS(4, 2) DOTS(4, 1) DOTS(2, 4) DOTS(2, 2) DOTS(2, 1) DOTS(1, 4) DOTS(1, 2) DOTS(1, 1)
#undef DOTS
      c0 += cc;
    }
    r0 += rc;
  }
}

// out[p] = sum over np steps of G rows x H rows at block p, G row m of step i at grow[m] + i*gs,
// H row k at hrow[k] + i*hs (per-row addresses let callers shift steps and mix sources). Steps
// run in chunks so that the pages a chunk touches stay in the TLB.
template <typename F>
static void sddmm(int R, int C, i64 nbr, const i32* indptr, const i32* idx, const F* const* grow,
                  const F* const* hrow, i64 gs, i64 hs, i64 np, i64 NP, F* out, int nt_req) {
  const i64 RC = (i64)R * C;
  constexpr i64 CHUNK = SCHUNK;
#pragma omp parallel num_threads(nt_req)
  {
    i64 ib0, ib1;
    share([&](i64 i) { return (i64)indptr[i]; }, nbr, omp_get_thread_num(), omp_get_num_threads(), ib0, ib1);
    if (np <= 0)
      for (i64 p = indptr[ib0]; p < indptr[ib1]; ++p) std::fill(out + p * RC, out + (p + 1) * RC, F(0));
    for (i64 i0 = 0; i0 < np; i0 += CHUNK) {
      const i64 n = std::min(CHUNK, np - i0);
      for (i64 ib = ib0; ib < ib1; ++ib) {
        const F* g[64];
        for (int r = 0; r < R && r < 64; ++r) g[r] = grow[ib * R + r] + i0 * gs;
        for (i64 p = indptr[ib]; p < indptr[ib + 1]; ++p) {
          const F* h[64];
          for (int c = 0; c < C && c < 64; ++c) h[c] = hrow[(i64)idx[p] * C + c] + i0 * hs;
          sddmm_block<F>(R, C, g, h, gs, hs, n, NP, out + p * RC, i0 > 0);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------- GRU gates
// exp on floats without libm calls, so that the gate loops vectorise: Cephes' expf (a degree-6
// polynomial on [-ln2/2, ln2/2] and an exponent shift), about 1 ulp; doubles use std::exp.
// Clamped to [-87, 88] so the result stays a finite normal float.
static inline float expf_(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // round to nearest by the 1.5 * 2^23 trick (floorf would not vectorise without -fno-trapping-math)
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, ((i32)k + 127) << 23);
}
static inline float sigm(float x) { return 1.0f / (1.0f + expf_(-x)); }
static inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
template <typename F> static inline F tanh_(F x) { return F(2) * sigm(F(2) * x) - F(1); }

// The state a direction starts a step from: the output one frame earlier (forward direction) or
// later (reverse direction), or zeros at the sequence's edge. Outputs are zero at invalid frames,
// so the reverse direction starts each utterance from zeros at its own last frame: it runs over
// each utterance reversed within its length, as recurrent.py's paths do.
template <typename F>
static inline const F* prev_state(const F* Y, const F* Z, int d, i64 t, i64 T, i64 plane) {
  return d == 0 ? (t > 0 ? Y + (t - 1) * plane : Z) : (t + 1 < T ? Y + (t + 1) * plane : Z);
}

// The forward recurrence of one GRU layer, D directions, in step order: at step s the forward
// direction is at frame s and the reverse one at frame T-1-s. W_hh of all directions is one
// block-diagonal BSR (rows d*3H + gate*H + j, columns d*H + j); group g = (d, jb) is the R units
// jb*R.. of direction d, i.e. the block rows of its r, z and n gates; gcum (D*H/R + 1) is their
// cumulative cost. GI (T, D*3H, NP) = W_ih x + b_ih; len (NP): frames t < len[n] are valid; Z is a
// zero (D*H, NP) panel (null: an internal one). Writes Y (T, D*H, NP), the outputs (zero where invalid), and the saved
// r, z, n, gh_n (T, D*H, NP), all by frame.
template <typename F, int R, int C>
static void gru_fwd(int Rr, int Cr, int D, i64 H, i64 NP, i64 T, const i32* indptr, const i32* idx, const F* V,
                    const i64* gcum, const F* bhh, const F* GI, const i32* len, const F* Z, F* Y, F* SR, F* SZ,
                    F* SN, F* SG, int nt_req) {
  const i64 nbh = H / Rr, DH = D * H, P = DH * NP, PG = 3 * DH * NP;
  std::vector<F> zeros(Z ? 0 : (size_t)P);
  if (!Z) Z = zeros.data();
  StepBarrier barrier;
#pragma omp parallel num_threads(nt_req)
  {
    const int nt = omp_get_num_threads();
    i64 g0, g1;
    share([&](i64 i) { return gcum[i]; }, D * nbh, omp_get_thread_num(), nt, g0, g1);
    std::vector<F> scr((size_t)3 * Rr * NP);
    F* gh = scr.data();
    for (i64 s = 0; s < T; ++s) {
      for (i64 g = g0; g < g1; ++g) {
        const int d = (int)(g / nbh);
        const i64 jb = g % nbh, t = d == 0 ? s : T - 1 - s;
        const F* hp = prev_state(Y, Z, d, t, T, P);
        for (int q = 0; q < 3; ++q) {
          const i64 ib = d * 3 * nbh + q * nbh + jb;
          mm_lanes<F, R, C>(Rr, Cr, idx, V, indptr[ib], indptr[ib + 1], hp, NP, gh + q * Rr * NP, NP, NP,
                            bhh + ib * Rr);
        }
        const F* gi = GI + t * PG;
        for (int r = 0; r < Rr; ++r) {
          const i64 j = jb * Rr + r, u = d * H + j, m = d * 3 * H + j, o = t * P + u * NP;
          const F *gir = gi + m * NP, *giz = gi + (m + H) * NP, *gin = gi + (m + 2 * H) * NP;
          const F *ghr = gh + r * NP, *ghz = gh + (Rr + r) * NP, *ghn = gh + (2 * Rr + r) * NP, *h0 = hp + u * NP;
          F *y = Y + o, *sr = SR + o, *sz = SZ + o, *sn = SN + o, *sg = SG + o;
#pragma omp simd
          for (i64 n = 0; n < NP; ++n) {
            const F rr = sigm(gir[n] + ghr[n]), zz = sigm(giz[n] + ghz[n]);
            const F nn = tanh_(gin[n] + rr * ghn[n]);
            const F h = nn + zz * (h0[n] - nn);
            y[n] = t < len[n] ? h : F(0);
            sr[n] = rr;
            sz[n] = zz;
            sn[n] = nn;
            sg[n] = ghn[n];
          }
        }
      }
      barrier.wait(nt);
    }
  }
}

// The backward pass through time of gru_fwd (its steps in reverse). VT is W_hh transposed
// (block-diagonal, block rows of C units, blocks C x R). dY (T, D*H, NP) by frame. Writes DG
// (T, D*4H, NP) by frame: rows [0, 3DH) the gradients of the recurrent side's pre-activations
// (r, z, n; i.e. dgh, whose n gate is dn * r), rows 3DH + u the input side's n gate (dn; its r
// and z equal dgh's), and adds their lane sums into DBI (D*3H: r, z, n of the input side) and
// DBHN (D*H: n of the recurrent side). Per step: phase 1, each thread its own units' gate
// derivatives; barrier; phase 2, its own units' dh = dh * z + (W_hh^T dgh) + dY of the next
// frame, reading dgh of the step's frame straight from DG. Every step writes other frames of DG
// than the step before, and phase 2 of a step and phase 1 of the next touch only the thread's
// own units of DH, so one barrier per step suffices.
template <typename F, int TR, int TC>  // TR x TC = C x R, the shape of the transposed blocks
static void gru_bwd(int Rr, int Cr, int D, i64 H, i64 NP, i64 T, const i32* tindptr, const i32* tidx, const F* VT,
                    const F* dY, const i32* len, const F* Z, const F* Y, const F* SR, const F* SZ, const F* SN,
                    const F* SG, F* DG, F* DBI, F* DBHN, F* DH, int nt_req) {
  const i64 DH_ = D * H, nbu = DH_ / Cr, RC = (i64)Rr * Cr, H3 = 3 * H, P = DH_ * NP, PG = 4 * DH_ * NP;
  std::vector<F> zeros(Z ? 0 : (size_t)P);
  if (!Z) Z = zeros.data();
  StepBarrier barrier;
#pragma omp parallel num_threads(nt_req)
  {
    const int nt = omp_get_num_threads();
    i64 i0, i1;
    share([&](i64 i) { return (i64)tindptr[i] * RC + i * Cr * 16; }, nbu, omp_get_thread_num(), nt, i0, i1);
    const i64 u0 = i0 * Cr, u1 = i1 * Cr;
    std::vector<F> scr((size_t)Cr * NP);
    for (i64 u = u0; u < u1; ++u) {
      const i64 t = u < H ? T - 1 : 0;
      std::memcpy(DH + u * NP, dY + t * P + u * NP, sizeof(F) * NP);
    }
    for (i64 s = 0; s < T; ++s) {
      for (i64 u = u0; u < u1; ++u) {
        const int d = (int)(u / H);
        const i64 j = u % H, m = d * H3 + j, t = d == 0 ? T - 1 - s : s, o = t * P + u * NP;
        const F *sr = SR + o, *sz = SZ + o, *sn = SN + o, *sg = SG + o, *h0 = prev_state(Y, Z, d, t, T, P) + u * NP;
        F* dh = DH + u * NP;
        F* dgt = DG + t * PG;
        F *xr = dgt + m * NP, *xz = dgt + (m + H) * NP, *xh = dgt + (m + 2 * H) * NP, *xn = dgt + (D * H3 + u) * NP;
        F br = 0, bz = 0, bn = 0, bh = 0;
#pragma omp simd reduction(+ : br, bz, bn, bh)
        for (i64 n = 0; n < NP; ++n) {
          const F r = sr[n], z = sz[n], nn = sn[n], e = t < len[n] ? dh[n] : F(0);
          const F dpn = e * (F(1) - z) * (F(1) - nn * nn);
          const F dpz = e * (h0[n] - nn) * z * (F(1) - z);
          const F dpr = dpn * sg[n] * r * (F(1) - r);
          const F dhn = dpn * r;
          xr[n] = dpr;
          xz[n] = dpz;
          xh[n] = dhn;
          xn[n] = dpn;
          dh[n] = e * z;
          br += dpr;
          bz += dpz;
          bn += dpn;
          bh += dhn;
        }
        DBI[m] += br;
        DBI[m + H] += bz;
        DBI[m + 2 * H] += bn;
        DBHN[u] += bh;
      }
      barrier.wait(nt);
      if (s == T - 1) break;
      for (i64 i = i0; i < i1; ++i) {
        const i64 ua = i * Cr;
        const int d = (int)(ua / H);
        const F* dgh = DG + (d == 0 ? T - 1 - s : s) * PG;  // dgh of this step's frame (rows [0, 3DH))
        mm_lanes<F, TR, TC>(Cr, Rr, tidx, VT, tindptr[i], tindptr[i + 1], dgh, NP, scr.data(), NP, NP, nullptr);
        const i64 t = d == 0 ? T - 2 - s : s + 1;  // the frame this direction visits next
        for (int c = 0; c < Cr; ++c) {
          const i64 u = ua + c;
          F* dh = DH + u * NP;
          const F *a = scr.data() + c * NP, *go = dY + t * P + u * NP;
#pragma omp simd
          for (i64 n = 0; n < NP; ++n) dh[n] += a[n] + go[n];
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------- packing
// The kept blocks' values from dense matrices into (n, R, C) row-major, or transposed into
// (n, C, R): block p is block q = perm[p] (or p) of the source, whose (0, 0) element is at
// bases[part[q]] + off[q] (part: 0 when null; off: q * R * C when null, i.e. a packed source),
// its rows ld apart. And block gradients back into a dense matrix (zeroed first when asked).
template <typename F>
static void gather_blocks(int R, int C, i64 n, const F* const* bases, const i64* part, const i64* off,
                          const i64* perm, i64 ld, F* dst, int transpose, int nt) {
  const i64 RC = (i64)R * C;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (i64 p = 0; p < n; ++p) {
    const i64 q = perm ? perm[p] : p;
    const F* a = bases[part ? part[q] : 0] + (off ? off[q] : q * RC);
    F* o = dst + p * RC;
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) o[transpose ? c * R + r : r * C + c] = a[r * ld + c];
  }
}
template <typename F>
static void scatter_blocks(int R, int C, i64 n, const F* src, F* base, const i64* off, i64 ld, i64 zero_numel, int nt) {
  const i64 RC = (i64)R * C;
#pragma omp parallel num_threads(nt)
  {
    if (zero_numel > 0) {
      constexpr i64 CH = 1 << 14;
#pragma omp for schedule(static)
      for (i64 k = 0; k < zero_numel; k += CH) std::memset(base + k, 0, sizeof(F) * std::min(CH, zero_numel - k));
    }
#pragma omp for schedule(static)
    for (i64 p = 0; p < n; ++p)
      for (int r = 0; r < R; ++r) std::memcpy(base + off[p] + r * ld, src + p * RC + r * C, sizeof(F) * C);
  }
}

// ------------------------------------------------------------------------------- entry points
// Block shapes with compiled specialisations (f32); the transposed product in gru_bwd runs
// blocks of C x R, so it dispatches on the swapped shape.
#define FAST_SHAPES(X) X(1, 1) X(2, 2) X(4, 4) X(8, 8) X(4, 8) X(8, 4)

extern "C" {

int bsr_train_abi() { return 5; }

#define MM_ARGS int R, int C, i64 nbr, const i32 *indptr, const i32 *idx, const F *V, const F *X, i64 xplane, F *Y, \
  i64 yplane, i64 NP, i64 T, const F *bias, int nt
#define MM_PASS R, C, nbr, indptr, idx, V, X, xplane, Y, yplane, NP, T, bias, nt
#define SD_ARGS int R, int C, i64 nbr, const i32 *indptr, const i32 *idx, const F *const *grow, const F *const *hrow, \
  i64 gs, i64 hs, i64 np, i64 NP, F *out, int nt
#define FW_ARGS int R, int C, int D, i64 H, i64 NP, i64 T, const i32 *indptr, const i32 *idx, const F *V, \
  const i64 *gcum, const F *bhh, const F *GI, const i32 *len, const F *Z, F *Y, F *SR, F *SZ, F *SN, F *SG, int nt
#define FW_PASS R, C, D, H, NP, T, indptr, idx, V, gcum, bhh, GI, len, Z, Y, SR, SZ, SN, SG, nt
#define BW_ARGS int R, int C, int D, i64 H, i64 NP, i64 T, const i32 *tindptr, const i32 *tidx, const F *VT, \
  const F *dY, const i32 *len, const F *Z, const F *Y, const F *SR, const F *SZ, const F *SN, const F *SG, F *DG, \
  F *DBI, F *DBHN, F *DH, int nt
#define BW_PASS R, C, D, H, NP, T, tindptr, tidx, VT, dY, len, Z, Y, SR, SZ, SN, SG, DG, DBI, DBHN, DH, nt

static int bad(int R, int C, i64 NP) { return R < 1 || C < 1 || NP % 8; }
static int bad_gru(int R, int C, i64 H, i64 NP, i64 T) { return bad(R, C, NP) || H % R || H % C || T < 1; }

#define F float
int gather_blocks_f32(int R, int C, i64 n, const F* const* bases, const i64* part, const i64* off, const i64* perm,
                      i64 ld, F* dst, int transpose, int nt) {
  gather_blocks<F>(R, C, n, bases, part, off, perm, ld, dst, transpose, nt);
  return 0;
}
int scatter_blocks_f32(int R, int C, i64 n, const F* src, F* base, const i64* off, i64 ld, i64 zero_numel, int nt) {
  scatter_blocks<F>(R, C, n, src, base, off, ld, zero_numel, nt);
  return 0;
}
int bsr_mm_f32(MM_ARGS) {
  if (bad(R, C, NP)) return -2;
#define CASE(r, c) if (R == r && C == c) { mm_steps<F, r, c>(MM_PASS); return 0; }
  FAST_SHAPES(CASE)
#undef CASE
  mm_steps<F, 0, 0>(MM_PASS);
  return 0;
}
int sddmm_f32(SD_ARGS) {
  if (bad(R, C, NP)) return -2;
  sddmm<F>(R, C, nbr, indptr, idx, grow, hrow, gs, hs, np, NP, out, nt);
  return 0;
}
int gru_fwd_f32(FW_ARGS) {
  if (bad_gru(R, C, H, NP, T)) return -2;
#define CASE(r, c) if (R == r && C == c) { gru_fwd<F, r, c>(FW_PASS); return 0; }
  FAST_SHAPES(CASE)
#undef CASE
  gru_fwd<F, 0, 0>(FW_PASS);
  return 0;
}
int gru_bwd_f32(BW_ARGS) {
  if (bad_gru(R, C, H, NP, T)) return -2;
#define CASE(r, c) if (R == r && C == c) { gru_bwd<F, c, r>(BW_PASS); return 0; }
  FAST_SHAPES(CASE)
#undef CASE
  gru_bwd<F, 0, 0>(BW_PASS);
  return 0;
}
#undef F

// f64: the generic code only (for gradient checks; speed does not matter there)
#define F double
int gather_blocks_f64(int R, int C, i64 n, const F* const* bases, const i64* part, const i64* off, const i64* perm,
                      i64 ld, F* dst, int transpose, int nt) {
  gather_blocks<F>(R, C, n, bases, part, off, perm, ld, dst, transpose, nt);
  return 0;
}
int scatter_blocks_f64(int R, int C, i64 n, const F* src, F* base, const i64* off, i64 ld, i64 zero_numel, int nt) {
  scatter_blocks<F>(R, C, n, src, base, off, ld, zero_numel, nt);
  return 0;
}
int bsr_mm_f64(MM_ARGS) {
  if (bad(R, C, NP)) return -2;
  mm_steps<F, 0, 0>(MM_PASS);
  return 0;
}
int sddmm_f64(SD_ARGS) {
  if (bad(R, C, NP)) return -2;
  sddmm<F>(R, C, nbr, indptr, idx, grow, hrow, gs, hs, np, NP, out, nt);
  return 0;
}
int gru_fwd_f64(FW_ARGS) {
  if (bad_gru(R, C, H, NP, T)) return -2;
  gru_fwd<F, 0, 0>(FW_PASS);
  return 0;
}
int gru_bwd_f64(BW_ARGS) {
  if (bad_gru(R, C, H, NP, T)) return -2;
  gru_bwd<F, 0, 0>(BW_PASS);
  return 0;
}
#undef F
}
