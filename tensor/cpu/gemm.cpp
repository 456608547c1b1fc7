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
//   valid part is stored). The micro-kernel is written once with GCC vector extensions and compiled
//   three times (AVX-512, AVX2+FMA, baseline x86-64) with target_clones; the loader picks the one this
//   CPU runs, so the library needs no -march flag.
#include "tensor/cpu/gemm.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

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

void check_gemm_args(const char* fn, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                     int64_t lda, int64_t ldb, int64_t ldc) {
  using std::to_string;
  check(M >= 0 && N >= 0 && K >= 0, std::string(fn) + ": sizes must be non-negative, got M=" +
                                        to_string(M) + ", N=" + to_string(N) + ", K=" + to_string(K));
  // A is stored (trans_a ? K x M : M x K); its leading dimension is at least its row length.
  const int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
  const int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
  check(lda >= std::max<int64_t>(1, a_cols),
        std::string(fn) + ": lda " + to_string(lda) + " is smaller than the row length of A (stored " +
            to_string(a_rows) + " x " + to_string(a_cols) + ")");
  check(ldb >= std::max<int64_t>(1, b_cols),
        std::string(fn) + ": ldb " + to_string(ldb) + " is smaller than the row length of B (stored " +
            to_string(b_rows) + " x " + to_string(b_cols) + ")");
  check(ldc >= std::max<int64_t>(1, N),
        std::string(fn) + ": ldc " + to_string(ldc) + " is smaller than the row length of C (" +
            to_string(M) + " x " + to_string(N) + ")");
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
// 6 x 16 floats keeps 6 zmm (12 ymm) accumulators live; enough independent FMA chains to hide
// the FMA latency, and few enough registers for AVX2's 16.
template <typename T>
struct Blocking;
template <>
struct Blocking<float> {
  static constexpr int MR = 6, NR = 16;
};
template <>
struct Blocking<double> {
  static constexpr int MR = 6, NR = 8;
};
constexpr int64_t KC = 256;   // depth of a slice: an MR x KC strip of A (6 KiB float) stays in L1/L2
constexpr int64_t MC = 120;   // rows of a tile (a multiple of MR): its A block, 120 KiB float, fits L2
constexpr int64_t NT = 256;   // columns of a tile (a multiple of NR)
constexpr int64_t NC = 4096;  // columns of a packed B panel: KC x NC floats = 4 MiB, shared in L3

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

/// Packs rows [0, kc) x columns [0, nr) of op(B) into one strip: dst[k * NR + j] = op(B)(k, j).
/// op(B)(k, j) = B[k * rsb + j * csb]. Columns nr..NR-1 are zero.
template <typename T, int NR>
void pack_b_strip(int64_t kc, int64_t nr, const T* B, int64_t rsb, int64_t csb, T* dst) {
  if (csb == 1) {  // B not transposed: each k row of the strip is a contiguous run
    for (int64_t k = 0; k < kc; ++k) {
      const T* row = B + k * rsb;
      T* d = dst + k * NR;
      for (int64_t j = 0; j < nr; ++j) d[j] = row[j];
      for (int64_t j = nr; j < NR; ++j) d[j] = T(0);
    }
  } else {  // B transposed (rsb == 1): read each column of op(B) along k
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
    for (int64_t j = 0; j < nr; ++j) {
      const T* col = B + j * csb;
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = col[k];
    }
  }
}

/// One tile of C (mc x nc, at C) from its packed A strips (Ap) and B strips (Bp), depth kc:
///   C = beta * C + alpha * A_tile * B_tile, beta == 0 meaning "overwrite".
/// The micro-kernel is the k loop: MR vector accumulators, each k one vector load of B and MR
/// broadcast-FMAs. always_inline so that each target clone below gets its own vector code.
template <typename T>
__attribute__((always_inline)) inline void macro_kernel(int64_t mc, int64_t nc, int64_t kc,
                                                        const T* __restrict Ap,
                                                        const T* __restrict Bp, T* __restrict C,
                                                        int64_t ldc, T alpha, T beta) {
  constexpr int MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  typedef T Vec __attribute__((vector_size(NR * sizeof(T))));
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const T* b = Bp + (jr / NR) * NR * kc;  // KC x NR strip, reused for every A strip below
    const int64_t nr = std::min<int64_t>(NR, nc - jr);
    for (int64_t ir = 0; ir < mc; ir += MR) {
      const T* a = Ap + (ir / MR) * MR * kc;
      const int64_t mr = std::min<int64_t>(MR, mc - ir);
      Vec acc[MR];
      for (int i = 0; i < MR; ++i) acc[i] = Vec{} ;
      for (int64_t k = 0; k < kc; ++k) {
        Vec bk;
        std::memcpy(&bk, b + k * NR, sizeof(Vec));
        for (int i = 0; i < MR; ++i) acc[i] += a[k * MR + i] * bk;  // rank-1 update
      }
      // Store the valid mr x nr corner.
      T* c = C + ir * ldc + jr;
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
  }
}

// The multiversioned entry points (target_clones does not take templates).
LADNN_GEMM_CLONES
void macro_kernel_f32(int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp,
                      float* C, int64_t ldc, float alpha, float beta) {
  macro_kernel<float>(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}
LADNN_GEMM_CLONES
void macro_kernel_f64(int64_t mc, int64_t nc, int64_t kc, const double* Ap, const double* Bp,
                      double* C, int64_t ldc, double alpha, double beta) {
  macro_kernel<double>(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}
inline void macro_kernel_any(int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp,
                             float* C, int64_t ldc, float alpha, float beta) {
  macro_kernel_f32(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}
inline void macro_kernel_any(int64_t mc, int64_t nc, int64_t kc, const double* Ap,
                             const double* Bp, double* C, int64_t ldc, double alpha, double beta) {
  macro_kernel_f64(mc, nc, kc, Ap, Bp, C, ldc, alpha, beta);
}

template <typename T>
void gemm_blocked_impl(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                       const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
                       int64_t ldc) {
  check_gemm_args("gemm_blocked", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  constexpr int MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  static_assert(MC % MR == 0 && NT % NR == 0 && NC % NT == 0, "tiles must hold whole strips");

  // op(A)(i, k) = A[i * rsa + k * csa]; op(B)(k, j) = B[k * rsb + j * csb].
  const int64_t rsa = trans_a ? 1 : lda, csa = trans_a ? lda : 1;
  const int64_t rsb = trans_b ? 1 : ldb, csb = trans_b ? ldb : 1;

  const int64_t m_strips = ceil_div(M, MR);
  const int64_t kc_max = std::min(K, KC);
  const int64_t nc_max = std::min(N, NC);
  static thread_local ScratchBuffer<T> a_buffer, b_buffer;
  T* Ap = a_buffer.get(static_cast<std::size_t>(m_strips * MR * kc_max));
  T* Bp = b_buffer.get(static_cast<std::size_t>(ceil_div(nc_max, NR) * NR * kc_max));

  // Threads pay off from about 64^3 multiply-adds; below that one thread is faster.
  const bool parallel = static_cast<double>(M) * N * K >= 262144.0;

  // One parallel region; all threads walk the (pc, jc) loops and share each `omp for` (whose
  // implicit barriers order packing before use).
#pragma omp parallel if (parallel)
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min(KC, K - pc);
    const T beta_pc = pc == 0 ? beta : T(1);  // beta applies once, in the first slice

#pragma omp for schedule(static)
    for (int64_t s = 0; s < m_strips; ++s) {
      const int64_t i0 = s * MR;
      pack_a_strip<T, MR>(std::min<int64_t>(MR, M - i0), kc, A + i0 * rsa + pc * csa, rsa, csa,
                          Ap + s * MR * kc);
    }

    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      const int64_t n_strips = ceil_div(nc, NR);
#pragma omp for schedule(static)
      for (int64_t s = 0; s < n_strips; ++s) {
        const int64_t j0 = s * NR;
        pack_b_strip<T, NR>(kc, std::min<int64_t>(NR, nc - j0), B + pc * rsb + (jc + j0) * csb,
                            rsb, csb, Bp + s * NR * kc);
      }

      // Tiles of C: MC rows x NT columns; enough of them that both cores stay busy even when M is
      // small (a conv layer with 32 output channels is one row block but many column tiles).
      const int64_t m_tiles = ceil_div(M, MC), n_tiles = ceil_div(nc, NT);
#pragma omp for collapse(2) schedule(dynamic)
      for (int64_t mt = 0; mt < m_tiles; ++mt) {
        for (int64_t nt = 0; nt < n_tiles; ++nt) {
          const int64_t i0 = mt * MC, j0 = nt * NT;
          macro_kernel_any(std::min(MC, M - i0), std::min(NT, nc - j0), kc, Ap + i0 * kc,
                           Bp + j0 * kc, C + i0 * ldc + jc + j0, ldc, alpha, beta_pc);
        }
      }
    }
  }
}

// ---- the OpenBLAS version -------------------------------------------------------------------------

#ifdef LADNN_HAVE_OPENBLAS
void check_blas_int(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  const int64_t biggest = std::max({M, N, K, lda, ldb, ldc});
  check(biggest <= INT_MAX, "gemm_blas: size " + std::to_string(biggest) +
                                " does not fit BLAS's 32-bit integers; use gemm_blocked");
}
CBLAS_TRANSPOSE blas_trans(bool t) { return t ? CblasTrans : CblasNoTrans; }
#endif

[[noreturn]] void no_blas() {
  throw std::runtime_error(
      "gemm_blas: this build of ladnn has no BLAS (install OpenBLAS and configure with "
      "LADNN_BLAS=ON), use gemm_blocked");
}

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
    const char* env = std::getenv("LADNN_GEMM");
    const std::string value = env != nullptr ? env : "";
    if (value.empty()) return have_blas() ? GemmBackend::Blas : GemmBackend::Blocked;
    if (value == "native") return GemmBackend::Blocked;
    if (value == "blas") {
      check(have_blas(), "LADNN_GEMM=blas, but this build of ladnn has no BLAS");
      return GemmBackend::Blas;
    }
    throw std::invalid_argument("LADNN_GEMM must be 'blas' or 'native', got '" + value + "'");
  }();
  return backend;
}

const char* gemm_backend_name(GemmBackend backend) {
  return backend == GemmBackend::Blas ? "blas" : "native";
}

void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc) {
#ifdef LADNN_HAVE_OPENBLAS
  check_gemm_args("gemm_blas", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  check_blas_int(M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) return scale_c(M, N, beta, C, ldc);
  cblas_sgemm(CblasRowMajor, blas_trans(trans_a), blas_trans(trans_b), static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda),
              B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
#else
  (void)trans_a, (void)trans_b, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
  (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
  no_blas();
#endif
}

void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
               const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
               int64_t ldc) {
#ifdef LADNN_HAVE_OPENBLAS
  check_gemm_args("gemm_blas", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  check_blas_int(M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0) return scale_c(M, N, beta, C, ldc);
  cblas_dgemm(CblasRowMajor, blas_trans(trans_a), blas_trans(trans_b), static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda),
              B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
#else
  (void)trans_a, (void)trans_b, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
  (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
  no_blas();
#endif
}

void gemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc) {
  gemm_blocked_impl<float>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
  gemm_blocked_impl<double>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (gemm_backend() == GemmBackend::Blas)
    gemm_blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_blocked(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc) {
  if (gemm_backend() == GemmBackend::Blas)
    gemm_blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_blocked(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace ladnn::cpu
