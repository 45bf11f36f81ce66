// Machine-limit probes for the roofline of docs/kernels.md §9 (bsrnn/bench/roofline.py builds this
// file through bsrnn/native.py with -O3 -march=native -fopenmp and loads it through ctypes).
//
// * probe_read: streaming read of a float array by nt threads (each its own contiguous share),
//   64-byte vector loads into 8 independent accumulators, `reps` passes; returns the seconds of
//   the slowest thread's passes, timed after a barrier. With AVX-512 the vectors are zmm loads;
//   elsewhere GCC lowers the same vector type to the widest SIMD the target has (the portable
//   fallback).
// * probe_fma_f32 / probe_dp_bf16 / probe_dp_i8: `iters` rounds of 16 independent register-only
//   FMA / vdpbf16ps / vpdpbusd chains per thread; return seconds (-1 when the instruction is not
//   compiled in: no AVX-512 BF16 / VNNI on this target).
// * probe_amx_bf16 / probe_amx_i8: tdpbf16ps / tdpbssd on tiles held in registers (4 accumulator
//   tiles, no loads in the loop), after asking the kernel for the AMX tile state
//   (arch_prctl ARCH_REQ_XCOMP_PERM); -1 without AMX in the build, -2 when the OS refuses.
// probe_simd_bytes tells which read path was compiled (64 with AVX-512, else 0).
#include <cstdint>
#include <cstring>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AMX_TILE__)
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

typedef int64_t i64;
typedef float v16 __attribute__((vector_size(64)));

static inline v16 ld16(const float* p) { v16 v; std::memcpy(&v, p, 64); return v; }

extern "C" int probe_simd_bytes() {
#ifdef __AVX512F__
  return 64;
#else
  return 0;
#endif
}

extern "C" double probe_read(const float* a, i64 n, int nt, i64 reps, float* sink) {
  double worst = 0.0;
#pragma omp parallel num_threads(nt) reduction(max : worst)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    i64 chunk = (n / T) / 128 * 128;  // whole 8-vector steps
    const float* p = a + (i64)t * chunk;
    v16 s0 = {}, s1 = {}, s2 = {}, s3 = {}, s4 = {}, s5 = {}, s6 = {}, s7 = {};
    for (i64 i = 0; i < chunk; i += 128) {  // one untimed pass: the share is now where it lives
      s0 += ld16(p + i);
    }
#pragma omp barrier
    const double t0 = omp_get_wtime();
    for (i64 r = 0; r < reps; ++r) {
      for (i64 i = 0; i < chunk; i += 128) {
        s0 += ld16(p + i);
        s1 += ld16(p + i + 16);
        s2 += ld16(p + i + 32);
        s3 += ld16(p + i + 48);
        s4 += ld16(p + i + 64);
        s5 += ld16(p + i + 80);
        s6 += ld16(p + i + 96);
        s7 += ld16(p + i + 112);
      }
      __asm__ volatile("" : : : "memory");  // every pass reads memory again
    }
    const double dt = omp_get_wtime() - t0;
    v16 s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
    float tot = 0.f;
    for (int k = 0; k < 16; ++k) tot += s[k];
    sink[t * 16] = tot;  // consumed, so the loads are not dead code
    worst = dt;
  }
  return worst;
}

// 16 independent chains per thread (enough to cover 4-cycle latency at 2 ports), as 16 named
// variables: an array under an asm barrier would live on the stack and time loads and stores.
#define CHAINS 16
#define EACH(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11) OP(12) OP(13) OP(14) OP(15)

extern "C" double probe_fma_f32(i64 iters, int nt, float* sink) {
  double worst = 0.0;
#pragma omp parallel num_threads(nt) reduction(max : worst)
  {
    const v16 m = (v16){} + 0.999999f, c = (v16){} + 1e-7f;
#define DECL(k) v16 a##k = (v16){} + (float)k;
    EACH(DECL)
#pragma omp barrier
    const double t0 = omp_get_wtime();
    for (i64 i = 0; i < iters; ++i) {
#define STEP(k) a##k = a##k * m + c; __asm__ volatile("" : "+v"(a##k));  // in a register, never folded
      EACH(STEP)
    }
    worst = omp_get_wtime() - t0;
    float tot = 0.f;
#define SUM(k) tot += a##k[0];
    EACH(SUM)
    sink[omp_get_thread_num() * 16] = tot;
  }
  return worst;
}

extern "C" double probe_dp_bf16(i64 iters, int nt, float* sink) {
#if defined(__AVX512BF16__)
  double worst = 0.0;
#pragma omp parallel num_threads(nt) reduction(max : worst)
  {
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
#define DECLB(k) __m512 a##k = _mm512_set1_ps((float)k);
    EACH(DECLB)
#pragma omp barrier
    const double t0 = omp_get_wtime();
    for (i64 i = 0; i < iters; ++i) {
#define STEPB(k) a##k = _mm512_dpbf16_ps(a##k, a, b); __asm__ volatile("" : "+v"(a##k));
      EACH(STEPB)
    }
    worst = omp_get_wtime() - t0;
    float tot = 0.f;
#define SUMB(k) tot += _mm512_reduce_add_ps(a##k);
    EACH(SUMB)
    sink[omp_get_thread_num() * 16] = tot;
  }
  return worst;
#else
  (void)iters; (void)nt; (void)sink;
  return -1.0;
#endif
}

extern "C" double probe_dp_i8(i64 iters, int nt, float* sink) {
#if defined(__AVX512VNNI__)
  double worst = 0.0;
#pragma omp parallel num_threads(nt) reduction(max : worst)
  {
    const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
#define DECLI(k) __m512i a##k = _mm512_set1_epi32(k);
    EACH(DECLI)
#pragma omp barrier
    const double t0 = omp_get_wtime();
    for (i64 i = 0; i < iters; ++i) {
#define STEPI(k) a##k = _mm512_dpbusd_epi32(a##k, a, b); __asm__ volatile("" : "+v"(a##k));
      EACH(STEPI)
    }
    worst = omp_get_wtime() - t0;
    long long tot = 0;
#define SUMI(k) tot += _mm512_reduce_add_epi32(a##k);
    EACH(SUMI)
    sink[omp_get_thread_num() * 16] = (float)tot;
  }
  return worst;
#else
  (void)iters; (void)nt; (void)sink;
  return -1.0;
#endif
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AMX_INT8__) && defined(__linux__)
#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

// 1 when this thread may execute AMX instructions (the permission is per process, asked once).
extern "C" int probe_amx_allowed() {
  static int ok = -1;
  if (ok < 0) {
    unsigned long bits = 0;
    ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 &&
         syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &bits) == 0 && (bits & (1ul << XFEATURE_XTILEDATA));
  }
  return ok;
}

struct TileCfg {
  uint8_t palette, start_row, pad[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

template <int KIND>  // 0: bf16 tdpbf16ps, 1: int8 tdpbssd
static double amx_loop(i64 iters, int nt, float* sink) {
  double worst = 0.0;
#pragma omp parallel num_threads(nt) reduction(max : worst)
  {
    TileCfg cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int k = 0; k < 8; ++k) { cfg.colsb[k] = 64; cfg.rows[k] = 16; }
    _tile_loadconfig(&cfg);
    alignas(64) static thread_local int8_t buf[16 * 64];
    std::memset(buf, 0, sizeof buf);
    _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64); _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
#pragma omp barrier
    const double t0 = omp_get_wtime();
    for (i64 i = 0; i < iters; ++i) {
      if constexpr (KIND == 0) {
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
      } else {
        _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 4, 7); _tile_dpbssd(2, 5, 6); _tile_dpbssd(3, 5, 7);
      }
    }
    worst = omp_get_wtime() - t0;
    _tile_stored(0, buf, 64);
    sink[omp_get_thread_num() * 16] = (float)buf[0];
    _tile_release();
  }
  return worst;
}

extern "C" double probe_amx_bf16(i64 iters, int nt, float* sink) {
  return probe_amx_allowed() ? amx_loop<0>(iters, nt, sink) : -2.0;
}
extern "C" double probe_amx_i8(i64 iters, int nt, float* sink) {
  return probe_amx_allowed() ? amx_loop<1>(iters, nt, sink) : -2.0;
}
#else
extern "C" int probe_amx_allowed() { return 0; }
extern "C" double probe_amx_bf16(i64, int, float*) { return -1.0; }
extern "C" double probe_amx_i8(i64, int, float*) { return -1.0; }
#endif
