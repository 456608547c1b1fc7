// cuda/pointwise_gemm.h — a pointwise convolution (1x1 kernel, stride 1, no padding) on NCHW tensors as
// one strided batch of column-major GEMMs: the call cuda/conv2d.cu hands to cublasGemmStridedBatchedEx,
// described here in plain C++ so tests/pointwise_gemm_test.cpp checks it on the CPU against the
// convolution itself.
//
// Per image, a 1x1 convolution is a matrix product on the image's (C, H*W) plane matrix, which NCHW
// already stores row-major:  y[n] (K, HW) = w (K, C) x[n] (C, HW).  cuBLAS is column-major, and a
// row-major (R, C) matrix is byte for byte the column-major (C, R) one (cuda/gemm.cu's trick), so cuBLAS
// is asked for the transposed product  y[n]^T (HW, K) = x[n]^T (HW, C) w^T (C, K)  on the operands as
// they lie in memory. No layout transform, no column matrix, one launch for the whole batch (the weight
// is shared: stride 0). cuDNN's tensor-core kernels work in NHWC and, for NCHW operands, add transform
// kernels on the way in and out; at batch 1 those are most of a small convolution's time. Which one is
// faster for a given shape is measured, not assumed (cuda/conv2d.cu, LADNN_CONV1X1).
//
// Backward input is the same product with the weight transposed: dx[n] (C, HW) = w^T (C, K) dy[n] (K, HW).
// Backward weight sums over the images (dw = sum_n dy[n] x[n]^T), which one strided batch cannot do; it
// stays with cuDNN.
#pragma once

#include <cstdint>

namespace ladnn::cuda {

/// cuBLAS's strided batched GEMM, column-major: for i < batch,
///   C_i (m, n) = op(A_i) (m, k) * op(B_i) (k, n),  A_i = A + i * stride_a (likewise B, C),
/// op(X) = X, or X^T when trans_x; element (r, c) of a stored column-major matrix X is X[r + c * ldx].
struct StridedGemm {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  int64_t batch = 0;
};

/// Forward, A = x (images x_img elements apart), B = w (K, C), C = y (images y_img apart):
/// y[n]^T (HW, K) = x[n]^T (HW, C) w^T (C, K); the row-major w (K, C) is the column-major (C, K) w^T.
inline StridedGemm pointwise_forward_gemm(int64_t N, int64_t C, int64_t HW, int64_t K, int64_t x_img,
                                          int64_t y_img) {
  StridedGemm g;
  g.m = HW;
  g.n = K;
  g.k = C;
  g.lda = HW;
  g.stride_a = x_img;
  g.ldb = C;
  g.stride_b = 0;
  g.ldc = HW;
  g.stride_c = y_img;
  g.batch = N;
  return g;
}

/// Backward input, A = dy (images dy_img elements apart: K * HW when packed), B = w (K, C), C = dx (packed
/// (C, HW) images): dx[n]^T (HW, C) = dy[n]^T (HW, K) w (K, C); the stored column-major (C, K) is read
/// transposed.
inline StridedGemm pointwise_backward_input_gemm(int64_t N, int64_t C, int64_t HW, int64_t K,
                                                 int64_t dy_img) {
  StridedGemm g;
  g.m = HW;
  g.n = C;
  g.k = K;
  g.lda = HW;
  g.stride_a = dy_img;
  g.trans_b = true;
  g.ldb = C;
  g.stride_b = 0;
  g.ldc = HW;
  g.stride_c = C * HW;
  g.batch = N;
  return g;
}

}  // namespace ladnn::cuda
