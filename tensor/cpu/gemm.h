// tensor/cpu/gemm.h — row-major general matrix multiply on the CPU.
//
//   C = alpha * op(A) * op(B) + beta * C,   op(A): M x K,  op(B): K x N,  C: M x N
//
// All matrices are row-major with a leading dimension (the distance between two rows, >= the row
// length), as cblas with CblasRowMajor. `trans_a` means A is stored K x M and read transposed; the
// same for B. beta == 0 overwrites C without reading it (NaN in C does not leak), as BLAS does.
//
// Two versions, both always callable (tests loop over both; `ladnn info` names the one in use):
//   gemm_blas     OpenBLAS's cblas_sgemm / cblas_dgemm (only when built with LADNN_HAVE_OPENBLAS).
//   gemm_blocked  our cache-blocked GEMM: packed panels of A and B, a register-tiled micro-kernel
//                 compiled for AVX-512, AVX2 and baseline x86-64 (picked at load time), OpenMP over
//                 tiles of C. About half of OpenBLAS's speed; the reference when there is no BLAS.
// `gemm` dispatches: OpenBLAS when present, unless the environment says LADNN_GEMM=native.
#pragma once

#include <cstdint>

namespace ladnn::cpu {

enum class GemmBackend { Blas, Blocked };

/// True when the library was built with OpenBLAS.
bool have_blas();
/// "OpenBLAS 0.3.21 DYNAMIC_ARCH ... Zen MAX_THREADS=64" (its build config), or "none" without BLAS.
const char* blas_name();
/// The version `gemm` uses: Blas when available, unless LADNN_GEMM=native (read once; LADNN_GEMM=blas
/// without OpenBLAS, or any other value, throws std::invalid_argument on first use).
GemmBackend gemm_backend();
/// "blas" or "native".
const char* gemm_backend_name(GemmBackend backend);

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc);

/// OpenBLAS. Throws std::runtime_error when the library was built without it.
void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc);
void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
               const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
               int64_t ldc);

/// The cache-blocked fallback (always available).
void gemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc);
void gemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc);

}  // namespace ladnn::cpu
