// Block-sparse (BSR) x dense kernels of the ``cpu`` kernel (bsrnn/inference/kernels/cpu.py builds
// this file on first use with -O3 -march=native -ffast-math -fopenmp, links it without
// -ffast-math, and loads it through ctypes).
//
// Three paths, all on the standard BSR arrays (values (nnzb, R, C) row-major, int32 indices):
//
// * vec (B < 8): each block's R*C values are 16-lane vectors multiplied lane-wise with the x
//   slice they meet (a 4-wide x slice is broadcast to 16 lanes by one vbroadcastf32x4), NB batch
//   columns at once from a transposed x, reduced once per block row. No gather buffer and no
//   per-block horizontal sums: one weight load feeds NB FMAs, so the weight bytes (the
//   roofline's numerator) are read exactly once.
// * csr (1x1, B < 4): 16 nonzeros per step, x gathered by index.
// * bfma (B >= 8): register-blocked micro-kernel; each weight is broadcast against a 16/32/64-wide
//   row of x (row-major (K, B)), RC rows x NV vectors of accumulators, S interleaved partial sums
//   so FMA latency never limits short blocks. bf16/int8 values are widened to fp32 a chunk of
//   blocks at a time into an L1 buffer first.
//
// Block values come in three types (the template parameter WT): float; bf16 (uint16_t, the top
// half of a float's bits), widened by a zero-extending load and a 16-bit shift; int8_t, widened
// by a sign-extending load and an int->float conversion, with one float scale per block row
// applied when the row's sums are stored (exact: the scale is common to the whole row). Weight
// bytes halve or quarter, the arithmetic stays fp32 FMA, and on a CPU without AVX-512 the same
// vector code lowers to whatever SIMD the target has (compiled with BSRNN_CPU_MARCH=x86-64 in
// the tests, the portable fallback).
//
// Explicit SIMD comes from GCC vector extensions (AVX-512 broadcasts through intrinsics when the
// compiler targets them), so code generation does not depend on an auto-vectoriser's mood.
// Block rows are cut into nt parts balanced by nonzero blocks (cpu.balance); OpenMP deals the
// parts out to the team it actually starts, so every part is computed whatever its size.
#include <cstdint>
#include <cstring>
#include <type_traits>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef float v2 __attribute__((vector_size(8)));
typedef int64_t i64;
typedef int32_t i32;
typedef uint16_t bf16;
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int8_t i8x16 __attribute__((vector_size(16)));

static inline v16 ld16(const float* p) { v16 v; std::memcpy(&v, p, 64); return v; }
static inline void st16(float* p, v16 v) { std::memcpy(p, &v, 64); }
// 16 block values as floats, and one value as a float, for each value type
static inline v16 ldw(const float* p) { return ld16(p); }
static inline v16 ldw(const bf16* p) {
#ifdef __AVX512F__  // vpmovzxwd + vpslld (GCC's generic conversion of a byte vector goes element by element)
  return (v16)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
#else
  u16x16 h; std::memcpy(&h, p, 32);
  return (v16)(__builtin_convertvector(h, u32x16) << 16);
#endif
}
static inline v16 ldw(const int8_t* p) {
#ifdef __AVX512F__  // vpmovsxbd + vcvtdq2ps
  return (v16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
#else
  i8x16 q; std::memcpy(&q, p, 16);
  return __builtin_convertvector(q, v16);
#endif
}
static inline float w1(float w) { return w; }
static inline float w1(bf16 w) { uint32_t u = (uint32_t)w << 16; float f; std::memcpy(&f, &u, 4); return f; }
static inline float w1(int8_t w) { return (float)w; }
// the block row's scale (int8 values only; other types have none and multiply by nothing)
// N block values as floats for the bfma path, which broadcasts each one: float values are used in
// place; bf16/int8 ones are widened 16 at a time into a buffer first (one scalar conversion per
// weight before each broadcast measured slower than the fp32 path it should beat).
template <typename WT, int N> struct WBlock {
  alignas(64) float f[std::is_same_v<WT, float> ? 1 : N];
  inline const float* load(const WT* w) {
    if constexpr (std::is_same_v<WT, float>) { return w; }
    else if constexpr (N % 16 == 0) {
#pragma GCC unroll 8
      for (int i = 0; i < N; i += 16) st16(f + i, ldw(w + i));
      return f;
    } else {
      for (int i = 0; i < N; ++i) f[i] = w1(w[i]);
      return f;
    }
  }
};
template <typename WT> static inline float row_scale(const float* SC, i64 ib) {
  if constexpr (sizeof(WT) == 1) return SC[ib]; else { (void)SC; (void)ib; return 1.f; }
}
static inline float hsum(v16 v) {
  v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return b[0] + b[1] + b[2] + b[3];
}
// The C-wide slice of x a 16-lane weight vector multiplies: tiled when C < 16.
template <int C> static inline v16 xtile(const float* p) {
  if constexpr (C >= 16) { return ld16(p); }
#ifdef __AVX512F__
  // one vbroadcastf32x4/x8 from memory; GCC's generic widening shuffle goes through the stack
  else if constexpr (C == 4) { return (v16)_mm512_broadcast_f32x4(_mm_loadu_ps(p)); }
#ifdef __AVX512DQ__
  else if constexpr (C == 8) { return (v16)_mm512_broadcast_f32x8(_mm256_loadu_ps(p)); }
#endif
#endif
  else if constexpr (C == 1) { return (v16){} + p[0]; }
  else { v16 v; for (int i = 0; i < 16; ++i) v[i] = p[i % C]; return v; }
}

// "vec" path, small batch: Xt is (B, K) (one x per row), NB columns at a time. Each block's
// R*C values are NV 16-lane vectors multiplied lane-wise with x, accumulated per block row,
// reduced once per block row; CH vectors per pass keep NB*CH accumulators in registers.
template <int R, int C, int NB, typename WT>
static void vec_rows(const i32* indptr, const i32* idx, const WT* V, const float* SC, const float* Xt, i64 ldx,
                     float* Y, i64 ldy, i64 ib0, i64 ib1, i64 j0) {
  constexpr int NV = R * C / 16;
  constexpr int CH0 = 16 / NB < 1 ? 1 : 16 / NB;
  constexpr int CH = NV < CH0 ? NV : CH0;
  constexpr int RPV = C >= 16 ? 1 : 16 / C;   // rows per vector
  constexpr int VPR = C >= 16 ? C / 16 : 1;   // vectors per row
  for (i64 ib = ib0; ib < ib1; ++ib) {
    const i64 p0 = indptr[ib], p1 = indptr[ib + 1];
    float out[NB][R];
    for (int v0 = 0; v0 < NV; v0 += CH) {
      // S interleaved partial sums so that short blocks still have >= 4 FMA chains in flight
      constexpr int S = NB * CH >= 4 ? 1 : 4 / (NB * CH);
      v16 acc[S][NB][CH];
#pragma GCC unroll 4
      for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
        for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
          for (int v = 0; v < CH; ++v) acc[s][j][v] = (v16){};
      i64 p = p0;
      for (; p + S <= p1; p += S) {
#pragma GCC unroll 4
        for (int s = 0; s < S; ++s) {
          const WT* w = V + (p + s) * (R * C) + v0 * 16;
          const float* xs = Xt + (i64)idx[p + s] * C;
#pragma GCC unroll 16
          for (int v = 0; v < CH; ++v) {
            const v16 wv = ldw(w + 16 * v);
            const int coff = C >= 16 ? ((v0 + v) * 16) % C : 0;
#pragma GCC unroll 16
            for (int j = 0; j < NB; ++j) acc[s][j][v] += wv * xtile<C>(xs + j * ldx + coff);
          }
        }
      }
      for (; p < p1; ++p) {
        const WT* w = V + p * (R * C) + v0 * 16;
        const float* xs = Xt + (i64)idx[p] * C;
#pragma GCC unroll 16
        for (int v = 0; v < CH; ++v) {
          const v16 wv = ldw(w + 16 * v);
          const int coff = C >= 16 ? ((v0 + v) * 16) % C : 0;
#pragma GCC unroll 16
          for (int j = 0; j < NB; ++j) acc[0][j][v] += wv * xtile<C>(xs + j * ldx + coff);
        }
      }
#pragma GCC unroll 4
      for (int s = 1; s < S; ++s)
        for (int j = 0; j < NB; ++j)
          for (int v = 0; v < CH; ++v) acc[0][j][v] += acc[s][j][v];
      for (int j = 0; j < NB; ++j)
        for (int v = 0; v < CH; ++v) {
          const int vv = v0 + v;
          if constexpr (C >= 16) {
            const int r = vv / VPR;
            const float s = hsum(acc[0][j][v]);
            if (vv % VPR == 0) out[j][r] = s; else out[j][r] += s;
          } else {
            // segmented sums in-register: after log2(C) swap-and-add steps lane q*C holds row q's
            // sum (one shuffle + add per step instead of C scalar extractions per row)
            v16 a = acc[0][j][v];
            if constexpr (C >= 8) a += __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
            if constexpr (C >= 4) a += __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
            if constexpr (C >= 2) a += __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
            for (int q = 0; q < RPV; ++q) out[j][vv * RPV + q] = a[q * C];
          }
        }
    }
    const float sc = row_scale<WT>(SC, ib);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NB; ++j) Y[(ib * R + r) * ldy + j0 + j] = out[j][r] * sc;
  }
}

// "bfma" path, larger batch: X is (K, B) row-major. A tile of NV vectors (of type T) of batch
// columns per output row, RC rows per pass, S independent partial sums to hide FMA latency;
// each weight is broadcast once against the x row it multiplies.
template <typename T> static inline T ldT(const float* p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }
template <typename T> static inline void stT(float* p, T v) { std::memcpy(p, &v, sizeof(T)); }

// One block's contribution to RC output rows: w points at the block's rows r0..r0+RC as floats
// (row stride C), xr at the C rows of x it multiplies (row stride ldx), NV vectors of the batch
// each. Both bfma paths run every block through this; always inlined, so the accumulators stay
// in registers.
template <int C, typename T, int NV, int RC>
__attribute__((always_inline)) static inline void fma_block(T (&acc)[RC][NV], const float* w, const float* xr, i64 ldx) {
  constexpr int W_ = sizeof(T) / sizeof(float);
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    T xv[NV];
#pragma GCC unroll 16
    for (int n = 0; n < NV; ++n) xv[n] = ldT<T>(xr + c * ldx + n * W_);
#pragma GCC unroll 16
    for (int r = 0; r < RC; ++r)
#pragma GCC unroll 16
      for (int n = 0; n < NV; ++n) acc[r][n] += w[r * C + c] * xv[n];
  }
}

// One pass over blocks [p, p1) of a block row, S blocks at a time into S independent partial sums
// (hiding FMA latency), then the tail into the first: wblk(s, q) gives block q's rows of this pass
// as floats (in place, from a widened chunk, or widened just now into partial sum s's buffer).
template <int C, typename T, int NV, int RC, int S, typename WF>
__attribute__((always_inline)) static inline void bfma_span(T (&acc)[S][RC][NV], WF&& wblk, const i32* idx, i64 p, i64 p1,
                             const float* X, i64 ldx, i64 b0) {
  for (; p + S <= p1; p += S) {
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) fma_block<C, T, NV, RC>(acc[s], wblk(s, p + s), X + (i64)idx[p + s] * C * ldx + b0, ldx);
  }
  for (; p < p1; ++p) fma_block<C, T, NV, RC>(acc[0], wblk(0, p), X + (i64)idx[p] * C * ldx + b0, ldx);
}

// n block values as floats into f (16 at a time where n allows, then one by one)
template <typename WT> static inline void widen(const WT* w, float* f, i64 n) {
  i64 i = 0;
  for (; i + 16 <= n; i += 16) st16(f + i, ldw(w + i));
  for (; i < n; ++i) f[i] = w1(w[i]);
}

// bf16/int8 values of blocks up to 4x4 (a pass then covers whole blocks, RC == R) are widened to
// fp32 a chunk of blocks at a time into an L1 buffer (at most WIDEN_FLOATS floats, 16 KB), then the
// fp32 FMA loop runs on the chunk. Widening each block just before its broadcasts (WBlock) made 4x4 bf16/int8
// 1.2-1.9x slower than this at batch 8-16 (interleaved, 1 thread). For 8x8 and larger the chunked
// version measured no better (0.7-1.4x, noisy), so they keep WBlock; fp32 values are used in place.
constexpr i64 WIDEN_FLOATS = 4096;

template <int R, int C, typename T, int NV, typename WT>
static void bfma_rows(const i32* indptr, const i32* idx, const WT* V, const float* SC, const float* X, i64 ldx,
                      float* Y, i64 ldy, i64 ib0, i64 ib1, i64 b0) {
  constexpr int W = sizeof(T) / sizeof(float);
  constexpr int RC0 = 16 / NV < 1 ? 1 : 16 / NV;
  constexpr int RC = R < RC0 ? R : RC0;
  constexpr int S = RC * NV >= 8 ? 1 : (RC * NV >= 4 ? 2 : (RC * NV >= 2 ? 4 : 8));
  constexpr bool CHUNKED = !std::is_same_v<WT, float> && RC == R && R * C <= 16;
  if constexpr (CHUNKED) {
    constexpr i64 CHB = WIDEN_FLOATS / (R * C) < 1 ? 1 : WIDEN_FLOATS / (R * C);  // blocks per chunk
    alignas(64) float buf[CHB * R * C];
    for (i64 ib = ib0; ib < ib1; ++ib) {
      const i64 p0 = indptr[ib], p1 = indptr[ib + 1];
      T acc[S][RC][NV];
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
        for (int r = 0; r < RC; ++r)
#pragma GCC unroll 16
          for (int n = 0; n < NV; ++n) acc[s][r][n] = (T){};
      for (i64 q0 = p0; q0 < p1; q0 += CHB) {
        const i64 q1 = q0 + CHB < p1 ? q0 + CHB : p1;
        widen(V + q0 * (R * C), buf, (q1 - q0) * (R * C));  // whole blocks: one contiguous run
        bfma_span<C, T, NV, RC, S>(acc, [&buf, q0](int, i64 q) __attribute__((always_inline)) -> const float* {
          return buf + (q - q0) * (R * C); }, idx, q0, q1, X, ldx, b0);
      }
      const float sc = row_scale<WT>(SC, ib);
#pragma GCC unroll 16
      for (int r = 0; r < RC; ++r)
#pragma GCC unroll 16
        for (int n = 0; n < NV; ++n) {
          T a = acc[0][r][n];
          for (int s = 1; s < S; ++s) a += acc[s][r][n];
          stT<T>(Y + (ib * R + r) * ldy + b0 + n * W, a * sc);
        }
    }
    return;
  }
  for (i64 ib = ib0; ib < ib1; ++ib) {
    const i64 p0 = indptr[ib], p1 = indptr[ib + 1];
    for (int r0 = 0; r0 < R; r0 += RC) {
      T acc[S][RC][NV];
      WBlock<WT, RC * C> wb[S];  // this pass's rows of S blocks as floats
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
        for (int r = 0; r < RC; ++r)
#pragma GCC unroll 16
          for (int n = 0; n < NV; ++n) acc[s][r][n] = (T){} ;
      if constexpr (std::is_same_v<WT, float>)  // fp32 values are used in place
        bfma_span<C, T, NV, RC, S>(acc, [V, r0](int, i64 q) __attribute__((always_inline)) {
          return V + q * (R * C) + r0 * C; }, idx, p0, p1, X, ldx, b0);
      else
        bfma_span<C, T, NV, RC, S>(acc, [&wb, V, r0](int s, i64 q) __attribute__((always_inline)) {
          return wb[s].load(V + q * (R * C) + r0 * C); }, idx, p0, p1, X, ldx, b0);
      const float sc = row_scale<WT>(SC, ib);
#pragma GCC unroll 16
      for (int r = 0; r < RC; ++r)
#pragma GCC unroll 16
        for (int n = 0; n < NV; ++n) {
          T a = acc[0][r][n];
          for (int s = 1; s < S; ++s) a += acc[s][r][n];
          stT<T>(Y + (ib * R + r0 + r) * ldy + b0 + n * W, a * sc);
        }
    }
  }
}

// CSR (1×1) at small batch: 16 nonzeros at a time, x gathered by index (one vgatherdps),
// NB columns of the transposed x per pass; scalar fallback where AVX-512 is absent.
template <int NB>
static void csr_rows(const i32* indptr, const i32* idx, const float* V, const float* Xt, i64 ldx,
                     float* Y, i64 ldy, i64 i0, i64 i1, i64 j0) {
  for (i64 i = i0; i < i1; ++i) {
    const i64 p0 = indptr[i], p1 = indptr[i + 1];
    float out[NB];
#ifdef __AVX512F__
    __m512 acc[NB];
    for (int j = 0; j < NB; ++j) acc[j] = _mm512_setzero_ps();
    i64 p = p0;
    for (; p + 16 <= p1; p += 16) {
      const __m512i iv = _mm512_loadu_si512((const void*)(idx + p));
      const __m512 wv = _mm512_loadu_ps(V + p);
      for (int j = 0; j < NB; ++j) acc[j] = _mm512_fmadd_ps(wv, _mm512_i32gather_ps(iv, Xt + j * ldx, 4), acc[j]);
    }
    if (p < p1) {
      const __mmask16 m = (__mmask16)((1u << (p1 - p)) - 1u);
      const __m512i iv = _mm512_maskz_loadu_epi32(m, idx + p);
      const __m512 wv = _mm512_maskz_loadu_ps(m, V + p);
      for (int j = 0; j < NB; ++j)
        acc[j] = _mm512_fmadd_ps(wv, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, iv, Xt + j * ldx, 4), acc[j]);
    }
    for (int j = 0; j < NB; ++j) out[j] = _mm512_reduce_add_ps(acc[j]);
#else
    for (int j = 0; j < NB; ++j) {
      float s = 0.f;
      for (i64 p = p0; p < p1; ++p) s += V[p] * Xt[j * ldx + idx[p]];
      out[j] = s;
    }
#endif
    for (int j = 0; j < NB; ++j) Y[i * ldy + j0 + j] = out[j];
  }
}

// One thread's share of block rows, all batch columns: wide tiles first, narrower for the rest.
template <int R, int C, typename WT>
static void rows(const i32* indptr, const i32* idx, const WT* V, const float* SC, const float* X, const float* Xt,
                 int vec, i64 K, float* Y, i64 B, i64 ib0, i64 ib1) {
  i64 j = 0;
  if (vec) {  // small batch: vec path on the transposed x
    if constexpr (R == 1 && C == 1 && sizeof(WT) == 4) {
      for (; j + 8 <= B; j += 8) csr_rows<8>(indptr, idx, V, Xt + j * K, K, Y, B, ib0, ib1, j);
      for (; j + 4 <= B; j += 4) csr_rows<4>(indptr, idx, V, Xt + j * K, K, Y, B, ib0, ib1, j);
      for (; j + 2 <= B; j += 2) csr_rows<2>(indptr, idx, V, Xt + j * K, K, Y, B, ib0, ib1, j);
      for (; j < B; ++j) csr_rows<1>(indptr, idx, V, Xt + j * K, K, Y, B, ib0, ib1, j);
      return;
    } else if constexpr (R * C >= 16 && (C >= 16 ? C % 16 == 0 : 16 % C == 0)) {
      for (; j + 8 <= B; j += 8) vec_rows<R, C, 8, WT>(indptr, idx, V, SC, Xt + j * K, K, Y, B, ib0, ib1, j);
      for (; j + 4 <= B; j += 4) vec_rows<R, C, 4, WT>(indptr, idx, V, SC, Xt + j * K, K, Y, B, ib0, ib1, j);
      for (; j + 2 <= B; j += 2) vec_rows<R, C, 2, WT>(indptr, idx, V, SC, Xt + j * K, K, Y, B, ib0, ib1, j);
      for (; j < B; ++j) vec_rows<R, C, 1, WT>(indptr, idx, V, SC, Xt + j * K, K, Y, B, ib0, ib1, j);
      return;
    }
  }
  for (; j + 64 <= B; j += 64) bfma_rows<R, C, v16, 4, WT>(indptr, idx, V, SC, X, B, Y, B, ib0, ib1, j);
  for (; j + 32 <= B; j += 32) bfma_rows<R, C, v16, 2, WT>(indptr, idx, V, SC, X, B, Y, B, ib0, ib1, j);
  for (; j + 16 <= B; j += 16) bfma_rows<R, C, v16, 1, WT>(indptr, idx, V, SC, X, B, Y, B, ib0, ib1, j);
  for (; j + 8 <= B; j += 8) bfma_rows<R, C, v8, 1, WT>(indptr, idx, V, SC, X, B, Y, B, ib0, ib1, j);
  for (; j + 4 <= B; j += 4) bfma_rows<R, C, v4, 1, WT>(indptr, idx, V, SC, X, B, Y, B, ib0, ib1, j);
  for (; j < B; ++j) bfma_rows<R, C, float, 1, WT>(indptr, idx, V, SC, X, B, Y, B, ib0, ib1, j);
}

// bounds holds nt + 1 block-row cuts. OpenMP may start fewer threads than nt asks for
// (OMP_THREAD_LIMIT, OMP_DYNAMIC, a nested region), so the parts are a work-shared loop, not
// one part per thread number: each part is computed exactly once whatever the team size.
template <int R, int C, typename WT>
static void run(const i32* indptr, const i32* idx, const WT* V, const float* SC, const i64* bounds, int nt,
                const float* X, const float* Xt, int vec, i64 K, float* Y, i64 B) {
  if (nt <= 1) { rows<R, C, WT>(indptr, idx, V, SC, X, Xt, vec, K, Y, B, bounds[0], bounds[nt]); return; }
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int t = 0; t < nt; ++t) rows<R, C, WT>(indptr, idx, V, SC, X, Xt, vec, K, Y, B, bounds[t], bounds[t + 1]);
}

// wt: the value type, 0 float, 1 bf16, 2 int8 (SC then holds one scale per block row).
extern "C" int bsr_mm(int R, int C, const i32* indptr, const i32* idx, const void* V, int wt, const float* SC,
                      const i64* bounds, int nt, const float* X, const float* Xt, int vec, i64 K, float* Y, i64 B) {
#define CASE(r, c) if (R == r && C == c) { \
    if (wt == 0) run<r, c, float>(indptr, idx, (const float*)V, SC, bounds, nt, X, Xt, vec, K, Y, B); \
    else if (wt == 1) run<r, c, bf16>(indptr, idx, (const bf16*)V, SC, bounds, nt, X, Xt, vec, K, Y, B); \
    else if (wt == 2) run<r, c, int8_t>(indptr, idx, (const int8_t*)V, SC, bounds, nt, X, Xt, vec, K, Y, B); \
    else return -2; \
    return 0; }
  CASE(1, 1) CASE(4, 4) CASE(8, 8) CASE(16, 16) CASE(32, 32)

#undef CASE
  return -1;
}
