// cuda/gemm.h — our own float32 GEMM on the GPU, for code that works on raw device pointers (the
// native convolution in cuda/conv2d.cu, benches). Tensor-level matmul/linear are in cuda/ops.h.
//
// Row-major throughout, with BLAS's transpose flags:
//   C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C
//   op(A) = A      : A is stored (M, K), element (m, k) at A[m * lda + k]
//   op(A) = A^T    : A is stored (K, M), element (m, k) at A[k * lda + m]
//   op(B) = B      : B is stored (K, N), element (k, n) at B[k * ldb + n]
//   op(B) = B^T    : B is stored (N, K), element (k, n) at B[n * ldb + k]
// beta == 0 never reads C (so C may hold garbage or NaN); K == 0 gives C = beta * C.
// The kernel is cuda/gemm_tile.cuh's tiled shared-memory SGEMM; it computes in plain float32 FMAs
// whatever cuda::tf32_enabled() says (TF32 is a library switch, cuDNN/cuBLAS only).
//
// No CUDA header here: CUstream_st* is cudaStream_t (the runtime's typedef of the same pointer).
#pragma once

#include <cstdint>

struct CUstream_st;

namespace ladnn::cuda {

/// One GEMM on `stream`, asynchronously. Sizes must be >= 0 and leading dimensions at least the
/// stored row length (and >= 1); throws cuda::Error naming the bad value otherwise.
void sgemm_native(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc, CUstream_st* stream);

/// `batch` independent GEMMs in one launch: GEMM i reads A + i * stride_a, B + i * stride_b and writes
/// C + i * stride_c (strides in elements; a stride of 0 shares that operand between all of them).
void sgemm_native_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                          int lda, int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta,
                          float* C, int ldc, int64_t stride_c, int batch, CUstream_st* stream);

}  // namespace ladnn::cuda
