// cuda/gemm.cu — matmul and linear on the GPU (float32), and our exported SGEMM (cuda/gemm.h).
//
// Versions (cuda::impl(Family::Gemm), LADNN_GEMM=cublas|native):
//   cublas:  cublasGemmEx on the row-major operands through the column-major trick (below), compute
//            type CUBLAS_COMPUTE_32F_FAST_TF32 when cuda::tf32_enabled(), else CUBLAS_COMPUTE_32F (the
//            handle's math mode is CUBLAS_DEFAULT_MATH then, cuda/context.cu: full float32).
//   native:  sgemm_native — cuda/gemm_tile.cuh's tiled shared-memory SGEMM (128x128 / 64x64 / 32x128
//            block tiles, 8x8 or 4x8 outputs per thread, double-buffered shared memory), plain float32
//            FMAs whatever the TF32 switch says.
//   linear's bias, both versions: bias_rows_kernel writes the bias into every row of y, then the GEMM
//            adds x W^T onto it (beta = 1), as tensor/cpu/matmul.cpp does.
//
// The column-major trick. cuBLAS is column-major; our matrices are row-major. A row-major (R, C) matrix
// with leading dimension ld is, byte for byte, the column-major (C, R) matrix — its transpose — with the
// same ld. So for row-major C = op(A) op(B) we ask cuBLAS for C^T = op(B)^T op(A)^T, which it writes
// column-major as C^T, i.e. row-major C:
//   cublasGemmEx(opB, opA, n = N, m = M, k = K, B, ldb, A, lda, C, ldc)
// where cuBLAS sees B (row-major (K, N)) as B^T already, so opB = N when we do not transpose B and T when
// we do; likewise A.
//
// Operands. A 2-D tensor reaches the GEMM without a copy when its rows or its columns are contiguous
// (a column slice, a transposed view): a column-major view is the transpose of a row-major matrix, so
// the transpose flag flips (as tensor/cpu/matmul.cpp). Anything else is copied with contiguous().
#define LADNN_CHECK_CUBLAS
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/gemm.h"
#include "cuda/gemm_tile.cuh"
#include "cuda/kernel_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"
#include "cuda/profiler.h"

#ifndef CUBLAS_CHECK
#error "cuda/check.h was included before cuda/gemm.cu defined LADNN_CHECK_CUBLAS"
#endif

namespace ladnn::cuda {
namespace {

cudaStream_t cur_stream() {
  return static_cast<cudaStream_t>(stream());
}

/// Sizes and leading dimensions of a GEMM call, checked before any launch (the kernel indexes with int).
void check_gemm_args(const char* who, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda,
                     int64_t ldb, int64_t ldc) {
  auto fail = [&](const std::string& what) { throw Error(std::string(who) + ": " + what); };
  if (M < 0 || N < 0 || K < 0)
    fail("sizes must be non-negative, got M " + std::to_string(M) + ", N " + std::to_string(N) + ", K " +
         std::to_string(K));
  if (M > kMaxGemmDim || N > kMaxGemmDim || K > kMaxGemmDim)
    fail("sizes M " + std::to_string(M) + ", N " + std::to_string(N) + ", K " + std::to_string(K) +
         " exceed the supported " + std::to_string(kMaxGemmDim));
  // Row length of each stored matrix: A is (M, K) or (K, M), B (K, N) or (N, K), C (M, N).
  const int64_t a_row = ta ? M : K, b_row = tb ? K : N;
  if (lda < std::max<int64_t>(1, a_row))
    fail("lda " + std::to_string(lda) + " is less than the stored row length " + std::to_string(a_row));
  if (ldb < std::max<int64_t>(1, b_row))
    fail("ldb " + std::to_string(ldb) + " is less than the stored row length " + std::to_string(b_row));
  if (ldc < std::max<int64_t>(1, N))
    fail("ldc " + std::to_string(ldc) + " is less than N = " + std::to_string(N));
}

template <bool TA, bool TB>
void sgemm_native_launch(int M, int N, int K, float alpha, const float* A, int lda, int64_t sa,
                         const float* B, int ldb, int64_t sb, float beta, float* C, int ldc, int64_t sc,
                         int batch, cudaStream_t st) {
  const DenseEpilogue epi{C, ldc, sc, alpha, beta};
  launch_tiled(plan_tiles(M, N, K, batch, /*allow_split_k=*/false), M, N, K, batch,
               gemm_operand_a<TA>(A, lda, sa), gemm_operand_b<TB>(B, ldb, sb), epi, st);
}

// One thread per element of y (M, N): y[i, j] = bias[j].
__global__ void bias_rows_kernel(float* __restrict__ y, const float* __restrict__ bias, int64_t total,
                                 int64_t N) {
  pdl_enter();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = bias[i % N];
}

/// A 2-D tensor seen as a GEMM operand: row-major data at `ptr` with leading dimension `ld`, to be read
/// transposed when `trans`. `keep` holds a contiguous copy when one was needed.
struct GemmOperand {
  Tensor keep;
  const float* ptr = nullptr;
  bool trans = false;
  int64_t ld = 1;
};

GemmOperand as_gemm_operand(const Tensor& t, bool trans) {
  const int64_t rows = t.size(0), cols = t.size(1);
  const int64_t rs = t.strides()[0], cs = t.strides()[1];
  if (rows > 0 && cols > 0) {
    // Row-major: unit column stride (or a single column), rows at least a row apart.
    if ((cs == 1 || cols == 1) && (rows == 1 || rs >= cols)) {
      return {t, t.data<float>(), trans, std::max<int64_t>(1, rows == 1 ? cols : rs)};
    }
    // Column-major: the transpose of a row-major (cols, rows) matrix.
    if ((rs == 1 || rows == 1) && (cols == 1 || cs >= rows)) {
      return {t, t.data<float>(), !trans, std::max<int64_t>(1, cols == 1 ? rows : cs)};
    }
  }
  Tensor c = t.contiguous();
  return {c, c.data<float>(), trans, std::max<int64_t>(1, cols)};
}

/// C = alpha op(A) op(B) + beta C with the selected implementation (sizes already checked, M, N > 0).
void gemm_dispatch(Impl which, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                   const float* B, int ldb, float beta, float* C, int ldc) {
  if (which == Impl::Native) {
    sgemm_native(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, cur_stream());
    return;
  }
  cublasHandle_t h = static_cast<cublasHandle_t>(cublas());  // bound to stream(), math mode per TF32
  const cublasComputeType_t compute = tf32_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  // Column-major trick (file header): C^T (N, M) = op(B)^T (N, K) * op(A)^T (K, M).
  CUBLAS_CHECK(cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                            &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc,
                            compute, CUBLAS_GEMM_DEFAULT));
}

int as_int(int64_t v) {
  return static_cast<int>(v);
}

}  // namespace

// ---- cuda/gemm.h
// ---------------------------------------------------------------------------------------------------

void sgemm_native_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                          int lda, int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta,
                          float* C, int ldc, int64_t stride_c, int batch, CUstream_st* stream) {
  check_gemm_args("sgemm_native", trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (batch < 0) throw Error("sgemm_native: batch must be non-negative, got " + std::to_string(batch));
  if (M == 0 || N == 0 || batch == 0) return;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (!trans_a && !trans_b)
    sgemm_native_launch<false, false>(M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                                      stride_c, batch, st);
  else if (!trans_a && trans_b)
    sgemm_native_launch<false, true>(M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                                     stride_c, batch, st);
  else if (trans_a && !trans_b)
    sgemm_native_launch<true, false>(M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                                     stride_c, batch, st);
  else
    sgemm_native_launch<true, true>(M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                                    stride_c, batch, st);
}

void sgemm_native(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc, CUstream_st* stream) {
  sgemm_native_batched(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, stream);
}

// ---- cuda/ops.h
// ------------------------------------------------------------------------------------------------------

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  detail::require_float32(a, "matmul", "a");
  detail::require_float32(b, "matmul", "b");
  const Impl which = impl(Family::Gemm);
  OpRange range("matmul", impl_name(Family::Gemm, which));
  // Shapes were checked by ops::matmul: op(a) is (M, K), op(b) is (K, N).
  const int64_t M = trans_a ? a.size(1) : a.size(0), K = trans_a ? a.size(0) : a.size(1);
  const int64_t N = trans_b ? b.size(0) : b.size(1);
  Tensor out = Tensor::empty({M, N}, DType::Float32, a.device());
  if (M == 0 || N == 0) return out;
  if (K == 0) {  // an empty sum: zeros (no GEMM call: cuBLAS rejects k = 0 with some leading dimensions)
    CUDA_CHECK(
        cudaMemsetAsync(out.raw_data(), 0, sizeof(float) * static_cast<std::size_t>(M * N), cur_stream()));
    return out;
  }
  const GemmOperand ga = as_gemm_operand(a, trans_a), gb = as_gemm_operand(b, trans_b);
  check_gemm_args("matmul", ga.trans, gb.trans, M, N, K, ga.ld, gb.ld, N);
  gemm_dispatch(which, ga.trans, gb.trans, as_int(M), as_int(N), as_int(K), 1.0f, ga.ptr, as_int(ga.ld),
                gb.ptr, as_int(gb.ld), 0.0f, out.data<float>(), as_int(N));
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  detail::require_float32(x, "linear", "input");
  detail::require_float32(weight, "linear", "weight");
  if (bias.defined()) detail::require_float32(bias, "linear", "bias");
  const Impl which = impl(Family::Gemm);
  OpRange range("linear", impl_name(Family::Gemm, which));
  // Shapes were checked by ops::linear: x (N, in), weight (out, in), bias (out).
  const int64_t M = x.size(0), N = weight.size(0), K = x.size(1);
  Tensor y = Tensor::empty({M, N}, DType::Float32, x.device());
  if (M == 0 || N == 0) return y;
  float beta = 0.0f;
  if (bias.defined()) {  // y starts as the bias in every row; the GEMM adds onto it
    const Tensor b = bias.contiguous();
    const int64_t total = M * N;
    launch_kernel(bias_rows_kernel, detail::grid_for(total), detail::kThreads, 0, cur_stream(),
                  y.data<float>(), b.data<float>(), total, N);
    CUDA_CHECK_LAUNCH();
    beta = 1.0f;
  } else if (K == 0) {
    CUDA_CHECK(
        cudaMemsetAsync(y.raw_data(), 0, sizeof(float) * static_cast<std::size_t>(M * N), cur_stream()));
  }
  if (K == 0) return y;
  // y (M, N) = x (M, K) * weight^T, weight stored (N, K).
  const GemmOperand gx = as_gemm_operand(x, false), gw = as_gemm_operand(weight, true);
  check_gemm_args("linear", gx.trans, gw.trans, M, N, K, gx.ld, gw.ld, N);
  gemm_dispatch(which, gx.trans, gw.trans, as_int(M), as_int(N), as_int(K), 1.0f, gx.ptr, as_int(gx.ld),
                gw.ptr, as_int(gw.ld), beta, y.data<float>(), as_int(N));
  return y;
}

}  // namespace ladnn::cuda
