// tensor/cpu/gemm.cpp — row-major GEMM: OpenBLAS, and our cache-blocked fallback.
//
// Versions (see gemm.h):
//   gemm_blas     forwards to cblas_sgemm / cblas_dgemm.
//   gemm_blocked  the Goto/BLIS scheme, written to be read:
//
//     for pc in K step KC:                       A and B are cut into KC-deep slices
//       pack op(A)[:, pc:pc+KC] into MR-row strips          (Ap, shared by all threads)
//       for jc in N step NC:
//         pack op(B)[pc:pc+KC, jc:jc+NC] into NR-column strips  (Bp, shared; stays in L3)
//         parallel over tiles (MC rows) x (NT columns) of C:
//           for each NR strip of B in the tile:      (KC x NR: stays in L1)
//             for each MR strip of A in the tile:    (MR x KC: streams from L2)
//               micro-kernel: an MR x NR block of C in registers, KC rank-1 updates
//
//   Packing makes the micro-kernel's loads contiguous and aligned whatever the transposes and leading
//   dimensions, and pads the edges with zeros so that it always computes a full MR x NR tile (only the
//   valid part is stored; a strip at most half full uses a half-width kernel). The micro-kernel is
//   written once with GCC vector extensions and compiled for AVX-512 (MR 8), and with target_clones
//   for AVX2+FMA and baseline x86-64 (MR 6); the CPU picks at load/run time, so the library needs no
//   -march flag. A transposed B is packed with in-register transposes on AVX-512. pack_a/gemm_packed
//   let a caller pack A once for many products (conv2d's weights); the *_rows variants take B as row
//   pointers, which lets conv2d multiply by shifted windows of an image without an im2col copy.
//
//   Measured on the 2-core AMD EPYC (Zen 4) this was written on, one thread, GFLOP per CPU-second:
//   512^3 ~100 (OpenBLAS ~100); DenseNet conv GEMMs 85-100 (OpenBLAS 85-100); a 3x3 tap on a 7x7 map
//   (32 x 63 x 128) ~70 (OpenBLAS ~85): there the fixed cost of a call starts to show.
#include "tensor/cpu/gemm.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#ifdef LADNN_HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "tensor/tensor.h"

// Function multiversioning needs GCC on x86-64 Linux (an ifunc resolver). Elsewhere one baseline build.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LADNN_GEMM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LADNN_GEMM_CLONES
#endif

namespace ladnn::cpu {
namespace {

// ---- argument checks (shared by both versions) ----------------------------------------------------

void check_gemm_args(const char* fn, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda,
                     int64_t ldb, int64_t ldc) {
  using std::to_string;
  check(M >= 0 && N >= 0 && K >= 0, std::string(fn) + ": sizes must be non-negative, got M=" + to_string(M) +
                                        ", N=" + to_string(N) + ", K=" + to_string(K));
  // A is stored (trans_a ? K x M : M x K); its leading dimension is at least its row length.
  const int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
  const int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
  check(lda >= std::max<int64_t>(1, a_cols), std::string(fn) + ": lda " + to_string(lda) +
                                                 " is smaller than the row length of A (stored " +
                                                 to_string(a_rows) + " x " + to_string(a_cols) + ")");
  check(ldb >= std::max<int64_t>(1, b_cols), std::string(fn) + ": ldb " + to_string(ldb) +
                                                 " is smaller than the row length of B (stored " +
                                                 to_string(b_rows) + " x " + to_string(b_cols) + ")");
  check(ldc >= std::max<int64_t>(1, N), std::string(fn) + ": ldc " + to_string(ldc) +
                                            " is smaller than the row length of C (" + to_string(M) + " x " +
                                            to_string(N) + ")");
}

/// C = beta * C, with beta == 0 writing zeros (never reading C). The K == 0 / alpha == 0 case.
template <typename T>
void scale_c(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  if (beta == T(1)) return;
  for (int64_t i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0)) {
      std::fill(c, c + N, T(0));
    } else {
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
  }
}

// ---- the blocked version --------------------------------------------------------------------------

// Register tile MR x NR: MR rows of C, each one vector of NR elements on AVX-512 (two on AVX2).
// MR is 8 with AVX-512 (8 zmm accumulators of its 32 registers; 8 divides the 32/128 channel counts
// of DenseNet, where 6 would leave a third of the last strip empty) and 6 otherwise (12 ymm
// accumulators, leaving room in AVX2's 16 registers for B and the broadcast). Either way enough
// independent FMA chains to hide the FMA latency. The choice is made at run time (cpu_has_avx512).
template <typename T>
struct Blocking;
template <>
struct Blocking<float> {
  static constexpr int NR = 16;
};
template <>
struct Blocking<double> {
  static constexpr int NR = 8;
};
constexpr int kMrAvx512 = 8, kMrOther = 6;
constexpr int64_t KC = 256;   // depth of a slice: an MR x KC strip of A (8 KiB float) stays in L1/L2
constexpr int64_t MC = 120;   // rows of a tile (a multiple of both MRs): its A block, 120 KiB float
constexpr int64_t NT = 256;   // columns of a tile (a multiple of NR)
constexpr int64_t NC = 4096;  // columns of a packed B panel: KC x NC floats = 4 MiB, shared in L3

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LADNN_GEMM_AVX512 1
#define LADNN_AVX512_TARGET __attribute__((target("arch=x86-64-v4")))
bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  return has;
}
#else
#define LADNN_AVX512_TARGET
bool cpu_has_avx512() {
  return false;
}
#endif
/// The register tile height this CPU uses (see Blocking).
int tile_mr() {
  return cpu_has_avx512() ? kMrAvx512 : kMrOther;
}

/// A 64-byte aligned scratch buffer that only grows: packing buffers are reused across calls
/// (one per thread that calls gemm), so a conv layer's many GEMMs allocate nothing.
template <typename T>
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data_); }
  T* get(std::size_t count) {
    if (count > capacity_) {
      std::free(data_);
      data_ = nullptr;
      const std::size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
      data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (data_ == nullptr) throw std::bad_alloc();
      capacity_ = count;
    }
    return data_;
  }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

/// Packs rows [0, mr) x columns [0, kc) of op(A) into one strip: dst[k * MR + i] = op(A)(i, k).
/// op(A)(i, k) = A[i * rsa + k * csa]. Rows mr..MR-1 are zero.
template <typename T, int MR>
void pack_a_strip(int64_t mr, int64_t kc, const T* A, int64_t rsa, int64_t csa, T* dst) {
  if (csa == 1) {  // A not transposed: read each row along k
    for (int64_t i = 0; i < mr; ++i) {
      const T* row = A + i * rsa;
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = row[k];
    }
  } else {  // A transposed (rsa == 1): the MR values of one k are contiguous
    for (int64_t k = 0; k < kc; ++k) {
      const T* col = A + k * csa;
      for (int64_t i = 0; i < mr; ++i) dst[k * MR + i] = col[i * rsa];
    }
  }
  for (int64_t i = mr; i < MR; ++i)
    for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = T(0);
}

/// Where op(B) (K x N) lives.
///   strided:  op(B)(k, j) = B[k * rsb + j * csb], one of the two strides 1 (a row-major matrix read
///             straight or transposed);
///   rows:     B given as pointers to its stored rows, which may lie anywhere: op(B)(k, j) = rows[k][j],
///             or rows[j][k] when `trans`. A convolution's shifted windows are such rows (conv2d.cpp).
template <typename T>
struct BSource {
  const T* B = nullptr;
  int64_t rsb = 0, csb = 0;
  const T* const* rows = nullptr;
  bool trans = false;
  /// True when the values of one k (varying j) are contiguous.
  bool k_contiguous() const { return rows != nullptr ? !trans : csb == 1; }
  /// op(B)(k, j) and the values after it along j (when k_contiguous) ...
  const T* along_j(int64_t k, int64_t j) const { return rows != nullptr ? rows[k] + j : B + k * rsb + j; }
  /// ... or along k (otherwise).
  const T* along_k(int64_t k, int64_t j) const { return rows != nullptr ? rows[j] + k : B + j * csb + k; }
};

/// Packs rows [k0, k0 + kc) x columns [j0, j0 + nr) of op(B) into one strip:
/// dst[k * NR + j] = op(B)(k0 + k, j0 + j). Columns nr..NR-1 are zero.
template <typename T, int NR>
void pack_b_strip(const BSource<T>& b, int64_t k0, int64_t kc, int64_t j0, int64_t nr, T* dst) {
  if (b.k_contiguous()) {  // each k row of the strip is a contiguous run
    for (int64_t k = 0; k < kc; ++k) {
      const T* run = b.along_j(k0 + k, j0);
      T* d = dst + k * NR;
      if (nr == NR) {
        std::memcpy(d, run, NR * sizeof(T));
      } else {
        for (int64_t j = 0; j < nr; ++j) d[j] = run[j];
        for (int64_t j = nr; j < NR; ++j) d[j] = T(0);
      }
    }
  } else {  // transposed: read each column of op(B) along k
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
    for (int64_t j = 0; j < nr; ++j) {
      const T* run = b.along_k(k0, j0 + j);
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = run[k];
    }
  }
}

/// The micro-kernel: an MR x WIDTH block of C += alpha * (MR x kc strip of A) * (kc x WIDTH of a B
/// strip), with beta applied on the store (beta == 0 overwrites). The k loop keeps MR vector
/// accumulators in registers; each k is one vector load of B and MR broadcast-FMAs. WIDTH is NR, or
/// NR/2 for the last strip of a matrix whose width leaves it at most half full (a 7x7 feature map has
/// 49 columns: 3 full strips and one of a single column), so edges waste less work.
template <typename T, int MR, int WIDTH>
__attribute__((always_inline)) inline void micro_kernel(int64_t kc, const T* __restrict a,
                                                        const T* __restrict b, T* __restrict c, int64_t ldc,
                                                        int64_t mr, int64_t nr, T alpha, T beta) {
  constexpr int NR = Blocking<T>::NR;
  typedef T Vec __attribute__((vector_size(WIDTH * sizeof(T))));
  Vec acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = Vec{};
  for (int64_t k = 0; k < kc; ++k) {
    Vec bk;
    std::memcpy(&bk, b + k * NR, sizeof(Vec));                  // packed strips are NR wide whatever WIDTH is
    for (int i = 0; i < MR; ++i) acc[i] += a[k * MR + i] * bk;  // rank-1 update
  }
  if (nr == WIDTH) {  // full rows: one vector load/store each (most tiles)
    for (int64_t i = 0; i < mr; ++i) {
      T* ci = c + i * ldc;
      Vec out = alpha * acc[i];
      if (beta != T(0)) {
        Vec old;
        std::memcpy(&old, ci, sizeof(Vec));
        out += beta * old;
      }
      std::memcpy(ci, &out, sizeof(Vec));
    }
    return;
  }
  // Store the valid mr x nr corner.
  for (int64_t i = 0; i < mr; ++i) {
    T* ci = c + i * ldc;
    if (beta == T(0)) {
      for (int64_t j = 0; j < nr; ++j) ci[j] = alpha * acc[i][j];
    } else if (beta == T(1)) {
      for (int64_t j = 0; j < nr; ++j) ci[j] += alpha * acc[i][j];
    } else {
      for (int64_t j = 0; j < nr; ++j) ci[j] = beta * ci[j] + alpha * acc[i][j];
    }
  }
}

/// One tile of C (mc x nc, at C) from its packed A strips (Ap) and B strips (Bp), depth kc:
///   C = beta * C + alpha * A_tile * B_tile.
/// always_inline so that each target clone below gets its own vector code.
template <typename T, int MR>
__attribute__((always_inline)) inline void macro_kernel(int64_t mc, int64_t nc, int64_t kc,
                                                        const T* __restrict Ap, const T* __restrict Bp,
                                                        T* __restrict C, int64_t ldc, T alpha, T beta) {
  constexpr int NR = Blocking<T>::NR;
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const T* b = Bp + jr * kc;  // KC x NR strip, reused for every A strip below
    const int64_t nr = std::min<int64_t>(NR, nc - jr);
    for (int64_t ir = 0; ir < mc; ir += MR) {
      const T* a = Ap + ir * kc;
      const int64_t mr = std::min<int64_t>(MR, mc - ir);
      if (nr > NR / 2)
        micro_kernel<T, MR, NR>(kc, a, b, C + ir * ldc + jr, ldc, mr, nr, alpha, beta);
      else
        micro_kernel<T, MR, NR / 2>(kc, a, b, C + ir * ldc + jr, ldc, mr, nr, alpha, beta);
    }
  }
}

// The compiled entry points (target_clones does not take templates): the 6-row tile for every
// x86-64 level, the 8-row tile for AVX-512 only.
LADNN_GEMM_CLONES
void macro_kernel_f32_mr6(int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp, float* C,
                          int64_t ldc, float alpha, float beta) {
  macro_kernel<float, kMrOther>(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}
LADNN_GEMM_CLONES
void macro_kernel_f64_mr6(int64_t mc, int64_t nc, int64_t kc, const double* Ap, const double* Bp, double* C,
                          int64_t ldc, double alpha, double beta) {
  macro_kernel<double, kMrOther>(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}
LADNN_AVX512_TARGET
void macro_kernel_f32_mr8(int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp, float* C,
                          int64_t ldc, float alpha, float beta) {
  macro_kernel<float, kMrAvx512>(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}
LADNN_AVX512_TARGET
void macro_kernel_f64_mr8(int64_t mc, int64_t nc, int64_t kc, const double* Ap, const double* Bp, double* C,
                          int64_t ldc, double alpha, double beta) {
  macro_kernel<double, kMrAvx512>(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}
template <int MR>
void macro_kernel_any(int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp, float* C,
                      int64_t ldc, float alpha, float beta) {
  if constexpr (MR == kMrAvx512)
    macro_kernel_f32_mr8(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
  else
    macro_kernel_f32_mr6(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}
template <int MR>
void macro_kernel_any(int64_t mc, int64_t nc, int64_t kc, const double* Ap, const double* Bp, double* C,
                      int64_t ldc, double alpha, double beta) {
  if constexpr (MR == kMrAvx512)
    macro_kernel_f64_mr8(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
  else
    macro_kernel_f64_mr6(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}

// ---- packing a transposed B with AVX-512 ----------------------------------------------------------
// A transposed B (the "NT" product of a weight gradient, dW = dY * col^T) is stored with k along its
// rows, but a packed strip wants the NR values of one k side by side: an NR x NR transpose per block.
// Element by element that costs about a cycle per value — as much as the FMAs that use it when M is
// small (a conv layer with 32 output channels). In registers it is log2(NR) rounds of two-input
// shuffles (each round swaps one bit of the row index with one bit of the column index), about
// 0.3 cycles per value. Only with AVX-512, where an NR-wide vector is one register.

#ifdef LADNN_GEMM_AVX512

/// Shuffle masks of one transpose round (swap bit M of the row and column indices): the lower row of
/// a pair takes lanes j (bit M clear) from itself and j - M from its partner; the upper the rest.
template <typename Int, int NR, int M, bool UPPER, std::size_t... J>
constexpr std::array<Int, NR> round_mask(std::index_sequence<J...>) {
  return {static_cast<Int>(UPPER ? ((J & M) ? NR + J : J + M) : ((J & M) ? NR + (J - M) : J))...};
}

template <typename Vec, typename Int, int NR, int M>
__attribute__((always_inline)) inline void transpose_round(Vec* r) {
  typedef Int Mask __attribute__((vector_size(sizeof(Vec))));
  static constexpr std::array<Int, NR> lo = round_mask<Int, NR, M, false>(std::make_index_sequence<NR>{});
  static constexpr std::array<Int, NR> hi = round_mask<Int, NR, M, true>(std::make_index_sequence<NR>{});
  Mask lo_mask, hi_mask;
  std::memcpy(&lo_mask, lo.data(), sizeof(Mask));
  std::memcpy(&hi_mask, hi.data(), sizeof(Mask));
#pragma GCC unroll 16
  for (int i = 0; i < NR; ++i) {
    if (i & M) continue;
    const Vec a = r[i], b = r[i | M];
    r[i] = __builtin_shuffle(a, b, lo_mask);
    r[i | M] = __builtin_shuffle(a, b, hi_mask);
  }
  if constexpr (2 * M < NR) transpose_round<Vec, Int, NR, 2 * M>(r);
}

/// A transposed strip (dst[k * NR + j] = op(B)(k0 + k, j0 + j), zero for j >= nr) in NR x NR blocks.
template <typename T>
__attribute__((always_inline)) inline void pack_b_trans_vec(const BSource<T>& b, int64_t k0, int64_t kc,
                                                            int64_t j0, int64_t nr, T* dst) {
  constexpr int NR = Blocking<T>::NR;
  typedef T Vec __attribute__((vector_size(NR * sizeof(T))));
  typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type Int;
  const T* col[NR];  // column j of op(B) from k0 on, contiguous along k
  for (int j = 0; j < NR; ++j) col[j] = j < nr ? b.along_k(k0, j0 + j) : nullptr;
  int64_t kb = 0;
  for (; kb + NR <= kc; kb += NR) {
    Vec r[NR];  // r[j] = column j, values kb .. kb+NR; transposed in place
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      if (col[j] != nullptr)
        std::memcpy(&r[j], col[j] + kb, sizeof(Vec));
      else
        r[j] = Vec{};
    }
    transpose_round<Vec, Int, NR, 1>(r);
#pragma GCC unroll 16
    for (int i = 0; i < NR; ++i) std::memcpy(dst + (kb + i) * NR, &r[i], sizeof(Vec));
  }
  for (int64_t k = kb; k < kc; ++k)  // the last kc % NR rows one value at a time
    for (int64_t j = 0; j < NR; ++j) dst[k * NR + j] = col[j] != nullptr ? col[j][k] : T(0);
}

__attribute__((target("arch=x86-64-v4"))) void pack_b_trans_avx512(const BSource<float>& b, int64_t k0,
                                                                   int64_t kc, int64_t j0, int64_t nr,
                                                                   float* dst) {
  pack_b_trans_vec<float>(b, k0, kc, j0, nr, dst);
}
__attribute__((target("arch=x86-64-v4"))) void pack_b_trans_avx512(const BSource<double>& b, int64_t k0,
                                                                   int64_t kc, int64_t j0, int64_t nr,
                                                                   double* dst) {
  pack_b_trans_vec<double>(b, k0, kc, j0, nr, dst);
}
#endif

/// Packs one B strip (see pack_b_strip), using the AVX-512 transpose for a transposed B.
template <typename T, int NR>
void pack_b_strip_fast(const BSource<T>& b, int64_t k0, int64_t kc, int64_t j0, int64_t nr, T* dst) {
#ifdef LADNN_GEMM_AVX512
  if (!b.k_contiguous() && cpu_has_avx512()) return pack_b_trans_avx512(b, k0, kc, j0, nr, dst);
#endif
  pack_b_strip<T, NR>(b, k0, kc, j0, nr, dst);
}

/// Runs body(i) for i in [0, n): shared out among the threads of the enclosing parallel region
/// (an `omp for`, ending in its barrier) when `shared`, else all on the calling thread. Never leave an
/// `omp for` to run "serially" inside someone else's parallel region: it binds to that region's team
/// (a conv running images in parallel) and splits the loop across images, or deadlocks.
template <typename Body>
void for_range(int64_t n, bool shared, bool dynamic, Body body) {
  if (!shared) {
    for (int64_t i = 0; i < n; ++i) body(i);
  } else if (dynamic) {
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

/// op(A) rows [0, M) x depth [pc, pc + kc) as MR-row strips at dst (strip s at dst + s * MR * kc).
template <typename T, int MR>
void pack_a_slice(int64_t M, int64_t pc, int64_t kc, const T* A, int64_t rsa, int64_t csa, T* dst,
                  bool shared) {
  for_range(ceil_div(M, MR), shared, false, [&](int64_t s) {
    const int64_t i0 = s * MR;
    pack_a_strip<T, MR>(std::min<int64_t>(MR, M - i0), kc, A + i0 * rsa + pc * csa, rsa, csa,
                        dst + s * MR * kc);
  });
}

/// C = alpha * op(A) * op(B) + beta * C for M, N, K > 0. op(A) comes either packed (`a_packed`: all
/// K slices, slice pc at a_packed + m_strips * MR * pc, as pack_a lays it out) or from A with strides
/// (rsa, csa), packed here slice by slice.
template <typename T, int MR>
void blocked_core(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t rsa, int64_t csa,
                  const T* a_packed, const BSource<T>& b, T beta, T* C, int64_t ldc) {
  constexpr int NR = Blocking<T>::NR;
  static_assert(MC % MR == 0 && NT % NR == 0 && NC % NT == 0, "tiles must hold whole strips");
  const int64_t m_strips = ceil_div(M, MR);
  const int64_t kc_max = std::min(K, KC);
  const int64_t nc_max = std::min(N, NC);
  static thread_local ScratchBuffer<T> a_buffer, b_buffer;
  T* a_scratch =
      a_packed != nullptr ? nullptr : a_buffer.get(static_cast<std::size_t>(m_strips * MR * kc_max));
  T* Bp = b_buffer.get(static_cast<std::size_t>(ceil_div(nc_max, NR) * NR * kc_max));

  // Threads pay off from about 64^3 multiply-adds; below that one thread is faster.
  const bool parallel = static_cast<double>(M) * N * K >= 262144.0;

  // All threads walk the (pc, jc) loops and share each `omp for` (whose implicit barriers order
  // packing before use). Without threads the same code runs with no parallel region: a small GEMM
  // (a conv tap on a 7x7 map takes ~5 us) should not pay for one.
  auto run = [&](bool shared) {
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const T beta_pc = pc == 0 ? beta : T(1);  // beta applies once, in the first slice
      const T* Ap = a_packed != nullptr ? a_packed + m_strips * MR * pc : a_scratch;
      if (a_packed == nullptr) pack_a_slice<T, MR>(M, pc, kc, A, rsa, csa, a_scratch, shared);

      for (int64_t jc = 0; jc < N; jc += NC) {
        const int64_t nc = std::min(NC, N - jc);
        const int64_t n_strips = ceil_div(nc, NR);
        for_range(n_strips, shared, false, [&](int64_t s) {
          const int64_t j0 = s * NR;
          pack_b_strip_fast<T, NR>(b, pc, kc, jc + j0, std::min<int64_t>(NR, nc - j0), Bp + s * NR * kc);
        });

        // Tiles of C: MC rows x NT columns; enough of them that both cores stay busy even when M is
        // small (a conv layer with 32 output channels is one row block but many column tiles).
        const int64_t m_tiles = ceil_div(M, MC), n_tiles = ceil_div(nc, NT);
        for_range(m_tiles * n_tiles, shared, true, [&](int64_t t) {
          const int64_t i0 = (t / n_tiles) * MC, j0 = (t % n_tiles) * NT;
          macro_kernel_any<MR>(std::min(MC, M - i0), std::min(NT, nc - j0), kc, Ap + i0 * kc, Bp + j0 * kc,
                               C + i0 * ldc + jc + j0, ldc, alpha, beta_pc);
        });
      }
    }
  };
  if (parallel) {
#pragma omp parallel
    run(true);
  } else {
    run(false);
  }
}

template <typename T>
void gemm_blocked_impl(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                       int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  check_gemm_args("gemm_blocked", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) return scale_c(M, N, beta, C, ldc);
  // op(A)(i, k) = A[i * rsa + k * csa]; op(B)(k, j) = B[k * rsb + j * csb].
  const int64_t rsa = trans_a ? 1 : lda, csa = trans_a ? lda : 1;
  BSource<T> b;
  b.B = B, b.rsb = trans_b ? 1 : ldb, b.csb = trans_b ? ldb : 1;
  if (tile_mr() == kMrAvx512)
    blocked_core<T, kMrAvx512>(M, N, K, alpha, A, rsa, csa, nullptr, b, beta, C, ldc);
  else
    blocked_core<T, kMrOther>(M, N, K, alpha, A, rsa, csa, nullptr, b, beta, C, ldc);
}

template <typename T>
PackedA<T> pack_a_impl(bool trans_a, int64_t M, int64_t K, const T* A, int64_t lda) {
  check_gemm_args("pack_a", trans_a, false, M, 1, K, lda, 1, 1);
  const int MR = tile_mr();
  PackedA<T> packed;
  packed.M = M;
  packed.K = K;
  packed.mr = MR;
  const int64_t m_strips = ceil_div(M, MR);
  packed.data.resize(static_cast<std::size_t>(m_strips * MR * K));
  const int64_t rsa = trans_a ? 1 : lda, csa = trans_a ? lda : 1;
  T* dst = packed.data.data();
  // Every (slice, strip) pair is independent: one parallel loop over all of them, a single barrier.
  const int64_t n_slices = ceil_div(K, KC);
#pragma omp parallel for schedule(static) if (M * K >= (1 << 16))
  for (int64_t t = 0; t < n_slices * m_strips; ++t) {
    const int64_t pc = (t / m_strips) * KC, s = t % m_strips, kc = std::min(KC, K - pc), i0 = s * MR;
    T* strip = dst + m_strips * MR * pc + s * MR * kc;
    const T* src = A + i0 * rsa + pc * csa;
    if (MR == kMrAvx512)
      pack_a_strip<T, kMrAvx512>(std::min<int64_t>(MR, M - i0), kc, src, rsa, csa, strip);
    else
      pack_a_strip<T, kMrOther>(std::min<int64_t>(MR, M - i0), kc, src, rsa, csa, strip);
  }
  return packed;
}

template <typename T>
void gemm_packed_impl(const PackedA<T>& a, bool trans_b, int64_t N, T alpha, const T* B, int64_t ldb, T beta,
                      T* C, int64_t ldc) {
  const int64_t M = a.M, K = a.K;
  check(a.mr == tile_mr() && a.data.size() >= static_cast<std::size_t>(ceil_div(M, a.mr) * a.mr * K),
        "gemm_packed: the packed A is empty or damaged; make it with pack_a");
  check_gemm_args("gemm_packed", false, trans_b, M, N, K, std::max<int64_t>(1, K), ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) return scale_c(M, N, beta, C, ldc);
  BSource<T> b;
  b.B = B, b.rsb = trans_b ? 1 : ldb, b.csb = trans_b ? ldb : 1;
  if (a.mr == kMrAvx512)
    blocked_core<T, kMrAvx512>(M, N, K, alpha, nullptr, 0, 0, a.data.data(), b, beta, C, ldc);
  else
    blocked_core<T, kMrOther>(M, N, K, alpha, nullptr, 0, 0, a.data.data(), b, beta, C, ldc);
}

void check_rows_args(const char* fn, int64_t M, int64_t N, int64_t K, const void* b_rows, int64_t ldc) {
  using std::to_string;
  check(M >= 0 && N >= 0 && K >= 0, std::string(fn) + ": sizes must be non-negative, got M=" + to_string(M) +
                                        ", N=" + to_string(N) + ", K=" + to_string(K));
  check(ldc >= std::max<int64_t>(1, N), std::string(fn) + ": ldc " + to_string(ldc) +
                                            " is smaller than the row length of C (" + to_string(M) + " x " +
                                            to_string(N) + ")");
  check(b_rows != nullptr || M == 0 || N == 0 || K == 0, std::string(fn) + ": b_rows is null");
}

template <typename T>
void gemm_blocked_rows_impl(bool trans_a, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                            bool trans_b, const T* const* b_rows, T beta, T* C, int64_t ldc) {
  check_gemm_args("gemm_blocked_rows", trans_a, false, M, N, K, lda, std::max<int64_t>(1, N), ldc);
  check_rows_args("gemm_blocked_rows", M, N, K, b_rows, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) return scale_c(M, N, beta, C, ldc);
  const int64_t rsa = trans_a ? 1 : lda, csa = trans_a ? lda : 1;
  BSource<T> b;
  b.rows = b_rows, b.trans = trans_b;
  if (tile_mr() == kMrAvx512)
    blocked_core<T, kMrAvx512>(M, N, K, alpha, A, rsa, csa, nullptr, b, beta, C, ldc);
  else
    blocked_core<T, kMrOther>(M, N, K, alpha, A, rsa, csa, nullptr, b, beta, C, ldc);
}

template <typename T>
void gemm_packed_rows_impl(const PackedA<T>& a, bool trans_b, int64_t N, T alpha, const T* const* b_rows,
                           T beta, T* C, int64_t ldc) {
  const int64_t M = a.M, K = a.K;
  check(a.mr == tile_mr() && a.data.size() >= static_cast<std::size_t>(ceil_div(M, a.mr) * a.mr * K),
        "gemm_packed_rows: the packed A is empty or damaged; make it with pack_a");
  check_rows_args("gemm_packed_rows", M, N, K, b_rows, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) return scale_c(M, N, beta, C, ldc);
  BSource<T> b;
  b.rows = b_rows, b.trans = trans_b;
  if (a.mr == kMrAvx512)
    blocked_core<T, kMrAvx512>(M, N, K, alpha, nullptr, 0, 0, a.data.data(), b, beta, C, ldc);
  else
    blocked_core<T, kMrOther>(M, N, K, alpha, nullptr, 0, 0, a.data.data(), b, beta, C, ldc);
}

// ---- the OpenBLAS version -------------------------------------------------------------------------

#ifdef LADNN_HAVE_OPENBLAS
void check_blas_int(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  const int64_t biggest = std::max({M, N, K, lda, ldb, ldc});
  check(biggest <= INT_MAX, "gemm_blas: size " + std::to_string(biggest) +
                                " does not fit BLAS's 32-bit integers; use gemm_blocked");
}
CBLAS_TRANSPOSE blas_trans(bool t) {
  return t ? CblasTrans : CblasNoTrans;
}
#endif

#ifndef LADNN_HAVE_OPENBLAS
[[noreturn]] void no_blas() {
  throw std::runtime_error(
      "gemm_blas: this build of ladnn has no BLAS (install OpenBLAS and configure with "
      "LADNN_BLAS=ON), use gemm_blocked");
}
#endif

}  // namespace

// ---- public entry points ----------------------------------------------------------------------------

bool have_blas() {
#ifdef LADNN_HAVE_OPENBLAS
  return true;
#else
  return false;
#endif
}

const char* blas_name() {
#ifdef LADNN_HAVE_OPENBLAS
  return openblas_get_config();
#else
  return "none";
#endif
}

GemmBackend gemm_backend() {
  static const GemmBackend backend = [] {
    const char* env = std::getenv("LADNN_CPU_GEMM");
    const std::string value = env != nullptr ? env : "";
    if (value.empty()) return have_blas() ? GemmBackend::Blas : GemmBackend::Blocked;
    if (value == "native") return GemmBackend::Blocked;
    if (value == "blas") {
      check(have_blas(), "LADNN_CPU_GEMM=blas, but this build of ladnn has no BLAS");
      return GemmBackend::Blas;
    }
    throw std::invalid_argument("LADNN_CPU_GEMM must be 'blas' or 'native', got '" + value + "'");
  }();
  return backend;
}

const char* gemm_backend_name(GemmBackend backend) {
  return backend == GemmBackend::Blas ? "blas" : "native";
}

void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#ifdef LADNN_HAVE_OPENBLAS
  check_gemm_args("gemm_blas", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  check_blas_int(M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) return scale_c(M, N, beta, C, ldc);
  cblas_sgemm(CblasRowMajor, blas_trans(trans_a), blas_trans(trans_b), static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B,
              static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
#else
  (void)trans_a, (void)trans_b, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
  (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
  no_blas();
#endif
}

void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
               int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
#ifdef LADNN_HAVE_OPENBLAS
  check_gemm_args("gemm_blas", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  check_blas_int(M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0) return scale_c(M, N, beta, C, ldc);
  cblas_dgemm(CblasRowMajor, blas_trans(trans_a), blas_trans(trans_b), static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B,
              static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
#else
  (void)trans_a, (void)trans_b, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
  (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
  no_blas();
#endif
}

void gemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_blocked_impl<float>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_blocked_impl<double>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

PackedA<float> pack_a(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda) {
  return pack_a_impl<float>(trans_a, M, K, A, lda);
}
PackedA<double> pack_a(bool trans_a, int64_t M, int64_t K, const double* A, int64_t lda) {
  return pack_a_impl<double>(trans_a, M, K, A, lda);
}
void gemm_packed(const PackedA<float>& a, bool trans_b, int64_t N, float alpha, const float* B, int64_t ldb,
                 float beta, float* C, int64_t ldc) {
  gemm_packed_impl<float>(a, trans_b, N, alpha, B, ldb, beta, C, ldc);
}
void gemm_packed(const PackedA<double>& a, bool trans_b, int64_t N, double alpha, const double* B,
                 int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_packed_impl<double>(a, trans_b, N, alpha, B, ldb, beta, C, ldc);
}

void gemm_blocked_rows(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                       int64_t lda, bool trans_b, const float* const* b_rows, float beta, float* C,
                       int64_t ldc) {
  gemm_blocked_rows_impl<float>(trans_a, M, N, K, alpha, A, lda, trans_b, b_rows, beta, C, ldc);
}
void gemm_blocked_rows(bool trans_a, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                       int64_t lda, bool trans_b, const double* const* b_rows, double beta, double* C,
                       int64_t ldc) {
  gemm_blocked_rows_impl<double>(trans_a, M, N, K, alpha, A, lda, trans_b, b_rows, beta, C, ldc);
}
void gemm_packed_rows(const PackedA<float>& a, bool trans_b, int64_t N, float alpha,
                      const float* const* b_rows, float beta, float* C, int64_t ldc) {
  gemm_packed_rows_impl<float>(a, trans_b, N, alpha, b_rows, beta, C, ldc);
}
void gemm_packed_rows(const PackedA<double>& a, bool trans_b, int64_t N, double alpha,
                      const double* const* b_rows, double beta, double* C, int64_t ldc) {
  gemm_packed_rows_impl<double>(a, trans_b, N, alpha, b_rows, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (gemm_backend() == GemmBackend::Blas)
    gemm_blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_blocked(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (gemm_backend() == GemmBackend::Blas)
    gemm_blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_blocked(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace ladnn::cpu
