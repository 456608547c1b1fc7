// tests/pointwise_gemm_test.cpp — the cuBLAS calls of a pointwise convolution (cuda/pointwise_gemm.h),
// checked on the CPU: the described strided batch of column-major GEMMs, run by a plain reference
// implementation of cuBLAS's definition in float64, must equal the convolution (tensor/ops.h, float64).
// Catches a wrong leading dimension, stride, transpose flag or operand order without a GPU; the GPU test
// (tests/cuda_conv_gemm_test.cpp, Conv1x1AsCublasGemm) then runs the same call through cuBLAS.
#include "cuda/pointwise_gemm.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tensor/ops.h"
#include "tensor/random.h"

namespace ladnn::cuda {
namespace {

/// cuBLAS's strided batched GEMM as documented (column-major, alpha = 1, beta = 0), on raw buffers.
void reference_gemm(const StridedGemm& g, const double* A, const double* B, double* C) {
  for (int64_t i = 0; i < g.batch; ++i) {
    const double* a = A + i * g.stride_a;
    const double* b = B + i * g.stride_b;
    double* c = C + i * g.stride_c;
    for (int64_t col = 0; col < g.n; ++col)
      for (int64_t row = 0; row < g.m; ++row) {
        double s = 0.0;
        for (int64_t p = 0; p < g.k; ++p) {
          const double av = g.trans_a ? a[p + row * g.lda] : a[row + p * g.lda];
          const double bv = g.trans_b ? b[col + p * g.ldb] : b[p + col * g.ldb];
          s += av * bv;
        }
        c[row + col * g.ldc] = s;
      }
  }
}

struct Case {
  int64_t N, C, H, W, K;
};
const Case kCases[] = {{1, 5, 3, 4, 7}, {3, 6, 5, 5, 4}, {2, 1, 2, 3, 3}, {2, 8, 1, 1, 2}};

TEST(PointwiseGemm, ForwardIsTheConvolution) {
  Generator gen(31);
  for (const Case& c : kCases)
    for (int64_t extra_in : {0, 3})
      for (int64_t extra_out : {0, 2}) {
        SCOPED_TRACE("N " + std::to_string(c.N) + " C " + std::to_string(c.C) + " K " + std::to_string(c.K) +
                     " extra in/out " + std::to_string(extra_in) + "/" + std::to_string(extra_out));
        const int64_t HW = c.H * c.W;
        // x as channels [1, 1 + C) of a wider buffer, y into channels [1, 1 + K) of another (the inference
        // block buffer's layout): images x_img and y_img elements apart.
        const Tensor xw = Tensor::normal({c.N, c.C + extra_in, c.H, c.W}, 0, 1, gen, DType::Float64);
        const Tensor w = Tensor::normal({c.K, c.C, 1, 1}, 0, 1, gen, DType::Float64);
        const int64_t x_img = (c.C + extra_in) * HW, y_img = (c.K + extra_out) * HW;
        const int64_t x_off = extra_in > 0 ? HW : 0, y_off = extra_out > 0 ? HW : 0;
        std::vector<double> y(static_cast<std::size_t>(c.N * y_img), -7.0);
        reference_gemm(pointwise_forward_gemm(c.N, c.C, HW, c.K, x_img, y_img), xw.data<double>() + x_off,
                       w.data<double>(), y.data() + y_off);
        const Tensor x = extra_in > 0 ? xw.narrow(1, 1, c.C) : xw;
        const std::vector<double> want = ops::conv2d_forward(x, w, Tensor(), ops::Conv2dParams{}).to_vector();
        for (int64_t n = 0; n < c.N; ++n)
          for (int64_t i = 0; i < y_img; ++i) {
            const double got = y[static_cast<std::size_t>(n * y_img + i)];
            const int64_t j = i - y_off;  // index within the image's (K, HW) block
            if (j < 0 || j >= c.K * HW) {
              ASSERT_EQ(got, -7.0) << "wrote outside the slice at image " << n << ", element " << i;
            } else {
              ASSERT_NEAR(got, want[static_cast<std::size_t>(n * c.K * HW + j)], 1e-12)
                  << "image " << n << ", element " << j;
            }
          }
      }
}

TEST(PointwiseGemm, BackwardInputIsTheConvolutionsBackward) {
  Generator gen(32);
  for (const Case& c : kCases)
    for (int64_t extra : {0, 2}) {
      SCOPED_TRACE("N " + std::to_string(c.N) + " C " + std::to_string(c.C) + " K " + std::to_string(c.K) +
                   " extra " + std::to_string(extra));
      const int64_t HW = c.H * c.W;
      // dy as channels [1, 1 + K) of a wider buffer when extra > 0 (the training dense block's output
      // gradient, read in place): images dy_img elements apart.
      const Tensor dyw = Tensor::normal({c.N, c.K + extra, c.H, c.W}, 0, 1, gen, DType::Float64);
      const Tensor dy = extra > 0 ? dyw.narrow(1, 1, c.K) : dyw;
      const Tensor w = Tensor::normal({c.K, c.C, 1, 1}, 0, 1, gen, DType::Float64);
      std::vector<double> dx(static_cast<std::size_t>(c.N * c.C * HW), -7.0);
      reference_gemm(pointwise_backward_input_gemm(c.N, c.C, HW, c.K, (c.K + extra) * HW),
                     dyw.data<double>() + (extra > 0 ? HW : 0), w.data<double>(), dx.data());
      const std::vector<double> want =
          ops::conv2d_backward_input(dy, w, {c.N, c.C, c.H, c.W}, ops::Conv2dParams{}).to_vector();
      ASSERT_EQ(dx.size(), want.size());
      for (std::size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx[i], want[i], 1e-12) << "element " << i;
    }
}

}  // namespace
}  // namespace ladnn::cuda
