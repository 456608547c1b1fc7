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
//                 tiles of C. Within about 10% of OpenBLAS on the shapes of a DenseNet on AVX-512; the
//                 reference when there is no BLAS, and the per-image GEMM of conv2d (see conv2d.cpp).
// `gemm` dispatches: OpenBLAS when present, unless the environment says LADNN_CPU_GEMM=native.
// Called inside an OpenMP parallel region, gemm_blocked runs on the calling thread alone.
#pragma once

#include <cstdint>
#include <vector>

namespace ladnn::cpu {

enum class GemmBackend { Blas, Blocked };

/// True when the library was built with OpenBLAS.
bool have_blas();
/// "OpenBLAS 0.3.21 DYNAMIC_ARCH ... Zen MAX_THREADS=64" (its build config), or "none" without BLAS.
const char* blas_name();
/// The version `gemm` uses: Blas when available, unless LADNN_CPU_GEMM=native (read once; LADNN_CPU_GEMM=blas
/// without OpenBLAS, or any other value, throws std::invalid_argument on first use).
GemmBackend gemm_backend();
/// "blas" or "native".
const char* gemm_backend_name(GemmBackend backend);

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

/// OpenBLAS. Throws std::runtime_error when the library was built without it.
void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
               int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

/// The cache-blocked fallback (always available).
void gemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

/// op(A) packed once into gemm_blocked's strip layout, to multiply many B matrices: a conv layer's
/// weights are the same for every image and kernel tap, and packing them is most of the overhead when
/// the other operand is small (a 7x7 feature map). Holds a copy: A may change afterwards.
template <typename T>
struct PackedA {
  int64_t M = 0, K = 0;  // op(A) is M x K
  int mr = 0;            // register tile height it was packed for
  std::vector<T> data;   // layout private to gemm.cpp
};
PackedA<float> pack_a(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda);
PackedA<double> pack_a(bool trans_a, int64_t M, int64_t K, const double* A, int64_t lda);
/// C = alpha * op(A) * op(B) + beta * C with op(A) from pack_a: gemm_blocked without packing A.
void gemm_packed(const PackedA<float>& a, bool trans_b, int64_t N, float alpha, const float* B, int64_t ldb,
                 float beta, float* C, int64_t ldc);
void gemm_packed(const PackedA<double>& a, bool trans_b, int64_t N, double alpha, const double* B,
                 int64_t ldb, double beta, double* C, int64_t ldc);

/// B given as row pointers instead of one strided matrix: without trans_b, b_rows[k] (k < K) points
/// at the N values of row k of B; with trans_b, b_rows[j] (j < N) points at the K values of row j of
/// the stored N x K matrix, read transposed. The rows may lie anywhere (they may overlap): conv2d
/// passes overlapping windows of a padded image, which makes the im2col matrix without copying it.
/// Blocked GEMM only (BLAS has no such interface).
void gemm_blocked_rows(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                       int64_t lda, bool trans_b, const float* const* b_rows, float beta, float* C,
                       int64_t ldc);
void gemm_blocked_rows(bool trans_a, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                       int64_t lda, bool trans_b, const double* const* b_rows, double beta, double* C,
                       int64_t ldc);
void gemm_packed_rows(const PackedA<float>& a, bool trans_b, int64_t N, float alpha,
                      const float* const* b_rows, float beta, float* C, int64_t ldc);
void gemm_packed_rows(const PackedA<double>& a, bool trans_b, int64_t N, double alpha,
                      const double* const* b_rows, double beta, double* C, int64_t ldc);

}  // namespace ladnn::cpu
