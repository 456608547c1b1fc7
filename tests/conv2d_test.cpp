// tests/conv2d_test.cpp — conv2d forward and its three backward ops against a naive direct
// convolution in double, on many shapes (odd sizes, batch 1, strides 1/2, padding 0/1/3, 1x1, 3x3,
// 7x7 stride 2 as DenseNet's stem, non-square kernels), gradcheck of the differentiable conv2d with
// respect to x, weight and bias, and every error path.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "tensor/ops.h"
#include "tensor/random.h"
#include "tests/conv_bn_reference.h"
#include "tests/test_util.h"

using namespace ladnn;

namespace {

struct Case {
  int64_t N, C, H, W, K, R, S, sh, sw, ph, pw;
  int64_t P() const { return (H + 2 * ph - R) / sh + 1; }
  int64_t Q() const { return (W + 2 * pw - S) / sw + 1; }
  ops::Conv2dParams params() const {
    ops::Conv2dParams p;
    p.stride_h = sh, p.stride_w = sw, p.pad_h = ph, p.pad_w = pw;
    return p;
  }
  Shape x_shape() const { return {N, C, H, W}; }
  Shape w_shape() const { return {K, C, R, S}; }
  Shape y_shape() const { return {N, K, P(), Q()}; }
  std::string str() const {
    return "x (" + std::to_string(N) + ", " + std::to_string(C) + ", " + std::to_string(H) + ", " +
           std::to_string(W) + ") w (" + std::to_string(K) + ", " + std::to_string(C) + ", " +
           std::to_string(R) + ", " + std::to_string(S) + ") stride " + std::to_string(sh) + "x" +
           std::to_string(sw) + " pad " + std::to_string(ph) + "x" + std::to_string(pw);
  }
};

// The forward/backward comparison shapes. Each line says what it exercises.
const std::vector<Case> kCases = {
    {2, 5, 7, 6, 3, 1, 1, 1, 1, 0, 0},      // 1x1 stride 1 pad 0: the no-im2col fast path
    {1, 16, 14, 14, 8, 1, 1, 1, 1, 0, 0},   // fast path, batch 1, DenseNet-like plane
    {1, 4, 9, 9, 5, 1, 1, 2, 2, 0, 0},      // 1x1 with stride 2 (im2col path)
    {1, 3, 5, 5, 2, 1, 1, 1, 1, 1, 1},      // 1x1 with padding (im2col path, zero border)
    {2, 3, 8, 8, 4, 3, 3, 1, 1, 1, 1},      // 3x3 pad 1 (DenseNet's growth conv)
    {1, 7, 5, 11, 6, 3, 3, 1, 1, 1, 1},     // odd, non-square plane
    {3, 2, 9, 7, 5, 3, 3, 2, 2, 0, 0},      // stride 2, no padding, odd sizes
    {1, 3, 23, 23, 8, 7, 7, 2, 2, 3, 3},    // DenseNet's stem: 7x7 stride 2 pad 3
    {2, 3, 10, 9, 4, 3, 5, 2, 1, 0, 2},     // non-square kernel, stride and padding
    {1, 2, 3, 3, 2, 5, 5, 1, 1, 1, 1},      // kernel as large as the padded input: 1x1 output
    {1, 2, 4, 5, 3, 3, 3, 1, 1, 3, 3},      // padding wider than the kernel: all-padding windows
    {2, 16, 20, 20, 12, 3, 3, 1, 1, 1, 1},  // large enough for the OpenMP im2col/col2im paths
    {2, 64, 13, 13, 33, 1, 1, 1, 1, 0, 0},  // fast path large enough for threaded GEMM
};

/// A reference result and, per element, the sum of |terms| that made it (for the error bound).
struct Ref {
  std::vector<double> value, magnitude;
};

double x_at(const std::vector<double>& x, const Case& c, int64_t n, int64_t ch, int64_t h, int64_t w) {
  return x[((n * c.C + ch) * c.H + h) * c.W + w];
}

/// y[n][k][p][q] = b[k] + sum_{c,r,s} x[n][c][p*sh - ph + r][q*sw - pw + s] * w[k][c][r][s].
Ref ref_forward(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& b,
                const Case& c) {
  const int64_t P = c.P(), Q = c.Q();
  Ref ref{std::vector<double>(c.N * c.K * P * Q), std::vector<double>(c.N * c.K * P * Q)};
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < Q; ++q) {
          double sum = b.empty() ? 0.0 : b[k], mag = std::abs(sum);
          for (int64_t ch = 0; ch < c.C; ++ch)
            for (int64_t r = 0; r < c.R; ++r)
              for (int64_t s = 0; s < c.S; ++s) {
                const int64_t h = p * c.sh - c.ph + r, wi = q * c.sw - c.pw + s;
                if (h < 0 || h >= c.H || wi < 0 || wi >= c.W) continue;
                const double t = x_at(x, c, n, ch, h, wi) * w[((k * c.C + ch) * c.R + r) * c.S + s];
                sum += t;
                mag += std::abs(t);
              }
          const int64_t i = ((n * c.K + k) * P + p) * Q + q;
          ref.value[i] = sum;
          ref.magnitude[i] = mag;
        }
  return ref;
}

/// The adjoints, by scattering every term of the forward sum:
///   dx[n][c][h][w] += dy[n][k][p][q] * w[k][c][r][s],  dw[k][c][r][s] += dy[n][k][p][q] * x[n][c][h][w].
void ref_backward(const std::vector<double>& dy, const std::vector<double>& x, const std::vector<double>& w,
                  const Case& c, Ref& dx, Ref& dw) {
  const int64_t P = c.P(), Q = c.Q();
  dx = Ref{std::vector<double>(x.size()), std::vector<double>(x.size())};
  dw = Ref{std::vector<double>(w.size()), std::vector<double>(w.size())};
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < Q; ++q) {
          const double g = dy[((n * c.K + k) * P + p) * Q + q];
          for (int64_t ch = 0; ch < c.C; ++ch)
            for (int64_t r = 0; r < c.R; ++r)
              for (int64_t s = 0; s < c.S; ++s) {
                const int64_t h = p * c.sh - c.ph + r, wi = q * c.sw - c.pw + s;
                if (h < 0 || h >= c.H || wi < 0 || wi >= c.W) continue;
                const int64_t xi = ((n * c.C + ch) * c.H + h) * c.W + wi;
                const int64_t wj = ((k * c.C + ch) * c.R + r) * c.S + s;
                dx.value[xi] += g * w[wj];
                dx.magnitude[xi] += std::abs(g * w[wj]);
                dw.value[wj] += g * x[xi];
                dw.magnitude[wj] += std::abs(g * x[xi]);
              }
        }
}

/// |got - ref| <= 2 (terms + 2) eps * sum|terms|: the worst-case rounding of a `terms`-long sum in
/// the tensor's dtype (doubled for the GEMM's different summation order). An indexing bug gives an
/// error the size of the values themselves.
void expect_close(const Tensor& got, const Ref& ref, int64_t terms, const std::string& what) {
  const double eps = got.dtype() == DType::Float32 ? std::numeric_limits<float>::epsilon()
                                                   : std::numeric_limits<double>::epsilon();
  const std::vector<double> v = got.to_vector();
  ASSERT_EQ(v.size(), ref.value.size()) << what;
  int failures = 0;
  double worst = 0.0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double err = std::abs(v[i] - ref.value[i]);
    const double tol = 2.0 * (terms + 2) * eps * ref.magnitude[i] + 1e-300;
    worst = std::max(worst, err);
    if (!(err <= tol) && failures++ < 5)
      ADD_FAILURE() << what << ": element " << i << " is " << v[i] << ", expected " << ref.value[i]
                    << " (tol " << tol << ")";
  }
  if (failures > 5) ADD_FAILURE() << what << ": " << failures << " mismatches, worst " << worst;
}

void expect_error(const std::function<void()>& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "expected the error: " << message;
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

void check_case_ops(const Case& c, DType dt, uint64_t seed) {
  Generator gen(seed);
  const Tensor x = Tensor::uniform(c.x_shape(), -1, 1, gen, dt);
  const Tensor w = Tensor::uniform(c.w_shape(), -1, 1, gen, dt);
  const Tensor b = Tensor::uniform({c.K}, -1, 1, gen, dt);
  const Tensor dy = Tensor::uniform(c.y_shape(), -1, 1, gen, dt);
  const std::string what = c.str() + (dt == DType::Float32 ? " float32" : " float64");
  const ops::Conv2dParams p = c.params();

  ASSERT_EQ(ops::conv2d_output_shape(c.x_shape(), c.w_shape(), p), c.y_shape()) << what;
  const int64_t crs = c.C * c.R * c.S;
  expect_close(ops::conv2d_forward(x, w, b, p), ref_forward(x.to_vector(), w.to_vector(), b.to_vector(), c),
               crs + 1, what + " forward with bias");
  expect_close(ops::conv2d_forward(x, w, Tensor(), p), ref_forward(x.to_vector(), w.to_vector(), {}, c), crs,
               what + " forward without bias");

  Ref dx, dw;
  ref_backward(dy.to_vector(), x.to_vector(), w.to_vector(), c, dx, dw);
  expect_close(ops::conv2d_backward_input(dy, w, c.x_shape(), p), dx, c.K * c.R * c.S,
               what + " backward input");
  expect_close(ops::conv2d_backward_weight(dy, x, c.w_shape(), p), dw, c.N * c.P() * c.Q(),
               what + " backward weight");

  Ref db{std::vector<double>(c.K), std::vector<double>(c.K)};
  const std::vector<double> g = dy.to_vector();
  for (size_t i = 0; i < g.size(); ++i) {
    const int64_t k = (static_cast<int64_t>(i) / (c.P() * c.Q())) % c.K;
    db.value[k] += g[i];
    db.magnitude[k] += std::abs(g[i]);
  }
  expect_close(ops::conv2d_backward_bias(dy), db, c.N * c.P() * c.Q(), what + " backward bias");
}

Variable rand_var(const Shape& s, Generator& g, bool requires_grad = true) {
  return Variable(Tensor::uniform(s, -1, 1, g, DType::Float64), requires_grad);
}

}  // namespace

TEST(Conv2dOps, Float32MatchesDirectConvolution) {
  uint64_t seed = 1;
  for (const Case& c : kCases) check_case_ops(c, DType::Float32, seed++);
}

TEST(Conv2dOps, Float64MatchesDirectConvolution) {
  uint64_t seed = 100;
  for (const Case& c : kCases) check_case_ops(c, DType::Float64, seed++);
}

TEST(Conv2dOps, OutputShapeOfDenseNetLayers) {
  ops::Conv2dParams stem;
  stem.stride_h = stem.stride_w = 2;
  stem.pad_h = stem.pad_w = 3;
  // torchvision: the 7x7/2 stem maps 224x224 to 112x112; a 3x3 pad-1 conv keeps the plane.
  EXPECT_EQ(ops::conv2d_output_shape({8, 3, 224, 224}, {64, 3, 7, 7}, stem), (Shape{8, 64, 112, 112}));
  ops::Conv2dParams same;
  same.pad_h = same.pad_w = 1;
  EXPECT_EQ(ops::conv2d_output_shape({1, 128, 7, 7}, {32, 128, 3, 3}, same), (Shape{1, 32, 7, 7}));
}

TEST(Conv2dOps, ChannelSliceInputGivesTheSameResult) {
  // DenseNet feeds a conv with a channel slice of a shared buffer: a non-contiguous view.
  Generator gen(5);
  for (const Case& c : {kCases[0], kCases[4]}) {
    Tensor big = Tensor::uniform({c.N, c.C + 5, c.H, c.W}, -1, 1, gen, DType::Float32);
    Tensor x = big.narrow(1, 2, c.C);
    ASSERT_FALSE(x.is_contiguous());
    Tensor w = Tensor::uniform(c.w_shape(), -1, 1, gen, DType::Float32);
    Tensor dy = Tensor::uniform(c.y_shape(), -1, 1, gen, DType::Float32);
    Tensor xc = x.contiguous();
    EXPECT_EQ(ops::max_abs_diff(ops::conv2d_forward(x, w, Tensor(), c.params()),
                                ops::conv2d_forward(xc, w, Tensor(), c.params())),
              0.0);
    EXPECT_EQ(ops::max_abs_diff(ops::conv2d_backward_weight(dy, x, c.w_shape(), c.params()),
                                ops::conv2d_backward_weight(dy, xc, c.w_shape(), c.params())),
              0.0);
    // Non-contiguous grad_output and weight (transposed twice back to the same shape).
    Tensor dyt = dy.transpose(2, 3).contiguous().transpose(2, 3);
    if (c.P() > 1 && c.Q() > 1) {
      ASSERT_FALSE(dyt.is_contiguous());
    }
    EXPECT_EQ(ops::max_abs_diff(ops::conv2d_backward_input(dyt, w, c.x_shape(), c.params()),
                                ops::conv2d_backward_input(dy, w, c.x_shape(), c.params())),
              0.0);
  }
}

// conv2d_forward_into writes into a channel slice of a wider tensor (DenseNet's inference block buffer):
// the slice holds exactly conv2d_forward's result, every other element keeps its value (NaN here, so a
// stray write or read shows), in float32 and float64, with and without bias, batch 1 and 3.
TEST(Conv2dOps, ForwardIntoAChannelSliceEqualsForward) {
  Generator gen(15);
  for (DType dt : {DType::Float32, DType::Float64})
    for (const Case& c : {kCases[0], kCases[4], Case{1, 5, 6, 6, 4, 3, 3, 1, 1, 1, 1}}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " N " + std::to_string(c.N) + " K " + std::to_string(c.K));
      const Tensor x = Tensor::uniform(c.x_shape(), -1, 1, gen, dt);
      const Tensor w = Tensor::uniform(c.w_shape(), -1, 1, gen, dt);
      const Tensor b = Tensor::uniform({c.K}, -1, 1, gen, dt);
      for (const Tensor& bias : {Tensor(), b}) {
        const Shape ys = c.y_shape();
        Tensor wide = Tensor::full({ys[0], ys[1] + 5, ys[2], ys[3]}, NAN, dt);
        ops::conv2d_forward_into(x, w, bias, c.params(), wide.narrow(1, 3, c.K));
        EXPECT_EQ(ops::max_abs_diff(wide.narrow(1, 3, c.K), ops::conv2d_forward(x, w, bias, c.params())),
                  0.0);
        for (double v : wide.narrow(1, 0, 3).contiguous().to_vector()) ASSERT_TRUE(std::isnan(v));
        for (double v : wide.narrow(1, 3 + c.K, 2).contiguous().to_vector()) ASSERT_TRUE(std::isnan(v));
      }
    }
}

TEST(Conv2dOps, ForwardIntoRejectsAnUnfitOutput) {
  const Tensor x = Tensor::zeros({2, 3, 8, 8}), w = Tensor::zeros({4, 3, 3, 3});
  const ops::Conv2dParams p;  // -> (2, 4, 6, 6)
  expect_error(
      [&] {
        ops::conv2d_forward_into(x, w, Tensor(), p, Tensor::zeros({2, 4, 6, 5}));
      },
      "conv2d_forward_into: out must have the output's shape (2, 4, 6, 6), got (2, 4, 6, 5)");
  expect_error(
      [&] {
        ops::conv2d_forward_into(x, w, Tensor(), p, Tensor::zeros({2, 4, 6, 6}, DType::Float64));
      },
      "conv2d_forward_into: out must have the input's dtype and device (float32, cpu), got float64, cpu");
  // Rows and columns swapped: not one (K, P, Q) block per image.
  const Tensor transposed = Tensor::zeros({2, 4, 6, 6}).transpose(2, 3);
  expect_error([&] { ops::conv2d_forward_into(x, w, Tensor(), p, transposed); },
               "conv2d_forward_into: out must hold each image as one contiguous (K, P, Q) block (a channel "
               "slice of an NCHW tensor is), got strides (144, 36, 1, 6)");
  expect_error([&] { ops::conv2d_forward_into(x, w, Tensor(), p, Tensor()); },
               "conv2d_forward_into: out is undefined");
  expect_error(
      [&] {
        ops::conv2d_forward_into(x, Tensor::zeros({4, 2, 3, 3}), Tensor(), p, Tensor::zeros({2, 4, 6, 6}));
      },
      "conv2d_forward_into: input (2, 3, 8, 8) has 3 channels but weight (4, 2, 3, 3) expects 2");
}

TEST(Conv2dOps, WeightGradientIsDeterministic) {
  // With images in parallel each thread sums its own partial weight gradient; the partials are added
  // in a fixed order, so two runs agree to the bit (a checkpointed run resumes identically).
  Generator gen(6);
  for (const Case& c : {Case{6, 8, 9, 9, 5, 3, 3, 1, 1, 1, 1}, Case{5, 16, 6, 6, 8, 1, 1, 1, 1, 0, 0}}) {
    Tensor x = Tensor::uniform(c.x_shape(), -1, 1, gen, DType::Float32);
    Tensor dy = Tensor::uniform(c.y_shape(), -1, 1, gen, DType::Float32);
    Tensor first = ops::conv2d_backward_weight(dy, x, c.w_shape(), c.params());
    for (int run = 0; run < 3; ++run)
      EXPECT_EQ(ops::max_abs_diff(first, ops::conv2d_backward_weight(dy, x, c.w_shape(), c.params())), 0.0);
  }
}

TEST(Conv2dOps, EmptyBatch) {
  const Case c{0, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1};
  Tensor x = Tensor::zeros(c.x_shape()), w = Tensor::ones(c.w_shape()), dy = Tensor::zeros(c.y_shape());
  EXPECT_EQ(ops::conv2d_forward(x, w, Tensor(), c.params()).shape(), c.y_shape());
  EXPECT_EQ(ops::conv2d_backward_input(dy, w, c.x_shape(), c.params()).shape(), c.x_shape());
  Tensor dw = ops::conv2d_backward_weight(dy, x, c.w_shape(), c.params());
  for (double v : dw.to_vector()) EXPECT_EQ(v, 0.0);
  for (double v : ops::conv2d_backward_bias(dy).to_vector()) EXPECT_EQ(v, 0.0);
}

TEST(Conv2dOps, Errors) {
  const Tensor x = Tensor::zeros({1, 3, 8, 8}), w = Tensor::zeros({4, 3, 3, 3});
  const ops::Conv2dParams p;
  expect_error(
      [&] {
        ops::conv2d_forward(Tensor::zeros({3, 224, 224}), w, Tensor(), p);
      },
      "conv2d: input must be 4-D (N, C, H, W), got (3, 224, 224)");
  expect_error(
      [&] {
        ops::conv2d_forward(x, Tensor::zeros({4, 3, 3}), Tensor(), p);
      },
      "conv2d: weight must be 4-D (K, C, R, S), got (4, 3, 3)");
  expect_error(
      [&] {
        ops::conv2d_forward(x, Tensor::zeros({64, 4, 7, 7}), Tensor(), p);
      },
      "conv2d: input (1, 3, 8, 8) has 3 channels but weight (64, 4, 7, 7) expects 4");
  expect_error(
      [&] {
        ops::conv2d_forward(x, Tensor::zeros({4, 3, 0, 3}), Tensor(), p);
      },
      "conv2d: weight (4, 3, 0, 3) has an empty kernel");
  ops::Conv2dParams bad_stride;
  bad_stride.stride_w = 0;
  expect_error([&] { ops::conv2d_forward(x, w, Tensor(), bad_stride); },
               "conv2d: stride must be positive, got 1x0");
  ops::Conv2dParams bad_pad;
  bad_pad.pad_h = -1;
  expect_error([&] { ops::conv2d_forward(x, w, Tensor(), bad_pad); },
               "conv2d: padding must be non-negative, got -1x0");
  ops::Conv2dParams pad1;
  pad1.pad_h = pad1.pad_w = 1;
  expect_error(
      [&] {
        ops::conv2d_forward(Tensor::zeros({1, 3, 3, 3}), Tensor::zeros({4, 3, 7, 7}), Tensor(), pad1);
      },
      "conv2d: kernel 7x7 is larger than the padded input 5x5 (input (1, 3, 3, 3), padding 1x1)");
  expect_error([&] { ops::conv2d_forward(x, w, Tensor::zeros({3}), p); },
               "conv2d: bias must have shape (4) for weight (4, 3, 3, 3), got (3)");
  expect_error(
      [&] {
        ops::conv2d_forward(x, Tensor::zeros({4, 3, 3, 3}, DType::Float64), Tensor(), p);
      },
      "conv2d: input is float32 but weight is float64");
  expect_error([&] { ops::conv2d_forward(x, w, Tensor::zeros({4}, DType::Float64), p); },
               "conv2d: bias is float64 but input is float32");
  expect_error(
      [&] {
        ops::conv2d_forward(Tensor::zeros({1, 3, 8, 8}, DType::Int64), w, Tensor(), p);
      },
      "conv2d: input must be float32 or float64, got int64");
  expect_error([&] { ops::conv2d_forward(Tensor(), w, Tensor(), p); }, "conv2d: input is undefined");
  expect_error(
      [&] {
        ops::conv2d_output_shape({1, 3, 8}, {4, 3, 3, 3}, p);
      },
      "conv2d: input must be 4-D (N, C, H, W), got (1, 3, 8)");

  // Backward ops check that grad_output is what the forward produced.
  expect_error(
      [&] {
        ops::conv2d_backward_input(Tensor::zeros({1, 4, 5, 5}), w, {1, 3, 8, 8}, p);
      },
      "conv2d_backward_input: grad_output has shape (1, 4, 5, 5) but the convolution of "
      "input (1, 3, 8, 8) by weight (4, 3, 3, 3) gives (1, 4, 6, 6)");
  expect_error(
      [&] {
        ops::conv2d_backward_input(Tensor::zeros({1, 4, 6, 6}), w, {1, 2, 8, 8}, p);
      },
      "conv2d_backward_input: input (1, 2, 8, 8) has 2 channels but weight (4, 3, 3, 3) "
      "expects 3");
  expect_error(
      [&] {
        ops::conv2d_backward_weight(Tensor::zeros({1, 5, 6, 6}), x, {4, 3, 3, 3}, p);
      },
      "conv2d_backward_weight: grad_output has shape (1, 5, 6, 6) but the convolution of "
      "input (1, 3, 8, 8) by weight (4, 3, 3, 3) gives (1, 4, 6, 6)");
  expect_error(
      [&] {
        ops::conv2d_backward_weight(Tensor::zeros({1, 4, 6, 6}, DType::Float64), x, {4, 3, 3, 3}, p);
      },
      "conv2d_backward_weight: grad_output is float64 but input is float32");
  expect_error(
      [&] {
        ops::conv2d_backward_bias(Tensor::zeros({4, 6, 6}));
      },
      "conv2d_backward_bias: grad_output must be 4-D (N, K, P, Q), got (4, 6, 6)");
}

// ---- the differentiable conv2d ---------------------------------------------------------------------------

TEST(Conv2dGrad, GradcheckWithBias) {
  Generator gen(21);
  // (N, C, H, W), (K, C, R, S), stride, pad: 3x3 pad 1; 7x7 stride 2 pad 3 (stem); 1x1 fast path;
  // a non-square kernel with uneven stride and padding; batch 1 throughout some.
  const std::vector<Case> cases = {{2, 3, 5, 6, 4, 3, 3, 1, 1, 1, 1},
                                   {1, 2, 9, 9, 3, 7, 7, 2, 2, 3, 3},
                                   {2, 4, 3, 5, 3, 1, 1, 1, 1, 0, 0},
                                   {1, 3, 7, 6, 2, 3, 2, 2, 1, 0, 1}};
  for (const Case& c : cases) {
    const ops::Conv2dParams p = c.params();
    GradcheckResult r =
        gradcheck([p](const std::vector<Variable>& in) { return conv2d(in[0], in[1], in[2], p); },
                  {rand_var(c.x_shape(), gen), rand_var(c.w_shape(), gen), rand_var({c.K}, gen)});
    EXPECT_TRUE(r.ok) << c.str() << ": " << r.message;
  }
}

TEST(Conv2dGrad, GradcheckWithoutBias) {
  Generator gen(22);
  const std::vector<Case> cases = {{1, 3, 6, 5, 2, 3, 3, 2, 2, 1, 1},
                                   {3, 2, 4, 4, 5, 1, 1, 1, 1, 0, 0},
                                   {1, 1, 4, 4, 2, 3, 3, 1, 1, 3, 3}};
  for (const Case& c : cases) {
    const ops::Conv2dParams p = c.params();
    GradcheckResult r =
        gradcheck([p](const std::vector<Variable>& in) { return conv2d(in[0], in[1], Variable(), p); },
                  {rand_var(c.x_shape(), gen), rand_var(c.w_shape(), gen)});
    EXPECT_TRUE(r.ok) << c.str() << ": " << r.message;
  }
}

TEST(Conv2dGrad, GradcheckWithOnlyOneInputRequiringGrad) {
  // The closure saves x only for dweight and weight only for dx: each alone must still be right.
  Generator gen(23);
  const Case c{2, 3, 5, 5, 2, 3, 3, 1, 1, 1, 1};
  const ops::Conv2dParams p = c.params();
  auto fn = [p](const std::vector<Variable>& in) { return conv2d(in[0], in[1], in[2], p); };
  GradcheckResult only_x = gradcheck(
      fn, {rand_var(c.x_shape(), gen), rand_var(c.w_shape(), gen, false), rand_var({c.K}, gen, false)});
  EXPECT_TRUE(only_x.ok) << only_x.message;
  GradcheckResult only_w = gradcheck(
      fn, {rand_var(c.x_shape(), gen, false), rand_var(c.w_shape(), gen), rand_var({c.K}, gen, false)});
  EXPECT_TRUE(only_w.ok) << only_w.message;
}

TEST(Conv2dGrad, ForwardMatchesOpAndGradientsAccumulate) {
  Generator gen(24);
  const Case c{1, 2, 5, 5, 3, 3, 3, 1, 1, 1, 1};
  Variable x = rand_var(c.x_shape(), gen), w = rand_var(c.w_shape(), gen), b = rand_var({c.K}, gen);
  Variable y = conv2d(x, w, b, c.params());
  EXPECT_STREQ(y.op_name(), "conv2d");
  EXPECT_EQ(
      ops::max_abs_diff(y.tensor(), ops::conv2d_forward(x.tensor(), w.tensor(), b.tensor(), c.params())),
      0.0);
  // Using x in two convs (DenseNet reuses every feature map) sums both gradients.
  sum(add(conv2d(x, w, b, c.params()), conv2d(x, w, Variable(), c.params()))).backward();
  const Tensor dy = Tensor::ones(c.y_shape(), DType::Float64);
  const Tensor one = ops::conv2d_backward_input(dy, w.tensor(), c.x_shape(), c.params());
  EXPECT_LE(ops::max_abs_diff(x.grad(), ops::mul_scalar(one, 2.0)), 1e-12);
  EXPECT_LE(ops::max_abs_diff(b.grad(), ops::conv2d_backward_bias(dy)), 1e-12);
}

TEST(Conv2dGrad, NoGraphUnderNoGrad) {
  Generator gen(25);
  Variable x = rand_var({1, 2, 4, 4}, gen), w = rand_var({2, 2, 3, 3}, gen);
  NoGradGuard guard;
  Variable y = conv2d(x, w, Variable(), ops::Conv2dParams{});
  EXPECT_FALSE(y.requires_grad());
  EXPECT_TRUE(y.is_leaf());
}

// ---- conv2d_bn_eval: a convolution with eval BatchNorms before and after it ----------------------------
// On the CPU the op runs batch_norm_forward_eval, conv2d_forward and batch_norm_forward_eval; these
// check that sequence against plain float64 loops (tests/conv_bn_reference.h), every way it can be
// called: with or without each BatchNorm, ReLU or not, affine or not, strided and padded convolutions,
// a channel prefix read in place and a channel slice written in place.

namespace {

struct BnCase {
  const char* name;
  bool on, relu, affine;
};
constexpr BnCase kBnCases[] = {
    {"none", false, false, true}, {"bn", true, false, true}, {"bn-relu", true, true, true}, {"bn-relu, no affine", true, true, false}};

}  // namespace

TEST(ConvBnEval, MatchesFloat64LoopsForEveryCombination) {
  Generator gen(41);
  const Case convs[] = {{2, 6, 5, 7, 4, 1, 1, 1, 1, 0, 0}, {1, 5, 7, 7, 3, 3, 3, 1, 1, 1, 1}, {2, 4, 9, 8, 5, 3, 3, 2, 2, 1, 1}};
  for (DType dtype : {DType::Float64, DType::Float32})
    for (const Case& c : convs)
      for (const BnCase& pre_case : kBnCases)
        for (const BnCase& post_case : kBnCases) {
          const Tensor x = Tensor::normal(c.x_shape(), 0, 1, gen, dtype);
          const Tensor w = Tensor::normal(c.w_shape(), 0, 0.5, gen, dtype);
          const ops::BnEval pre = test::random_bn_eval(c.C, pre_case.relu ? ops::BnAct::Relu : ops::BnAct::None, gen,
                                                       dtype, pre_case.affine);
          const ops::BnEval post = test::random_bn_eval(c.K, post_case.relu ? ops::BnAct::Relu : ops::BnAct::None,
                                                        gen, dtype, post_case.affine);
          const ops::BnEval* pp = pre_case.on ? &pre : nullptr;
          const ops::BnEval* qp = post_case.on ? &post : nullptr;
          const Tensor y = ops::conv2d_bn_eval(x, pp, w, c.params(), qp);
          const test::ConvBnReference ref = test::conv_bn_eval_reference(x, pp, w, c.params(), qp);
          ASSERT_EQ(y.shape(), c.y_shape());
          ASSERT_EQ(y.dtype(), dtype);
          // float32: rounding of the inputs' normalisation and of the sum, relative to sum |terms|.
          const double rtol = dtype == DType::Float64 ? 1e-13 : 4e-6;
          const std::vector<double> got = y.to_vector(), want = ref.y.to_vector(), scale = ref.scale.to_vector();
          for (std::size_t i = 0; i < got.size(); ++i)
            ASSERT_LE(std::fabs(got[i] - want[i]), rtol * scale[i])
                << c.str() << " pre " << pre_case.name << " post " << post_case.name << " element " << i;
        }
}

TEST(ConvBnEval, IntoReadsAPrefixAndWritesASliceInPlace) {
  Generator gen(42);
  const Case c{2, 6, 5, 5, 4, 3, 3, 1, 1, 1, 1};
  for (DType dtype : {DType::Float64, DType::Float32}) {
    // x: the first 6 of 9 channels of a buffer; out: channels [3, 7) of an 8-channel buffer.
    const Tensor xbuf = Tensor::normal({c.N, 9, c.H, c.W}, 0, 1, gen, dtype);
    const Tensor x = xbuf.narrow(1, 0, c.C);
    Tensor obuf = Tensor::full({c.N, 8, c.H, c.W}, 7.0, dtype);
    const Tensor out = obuf.narrow(1, 3, c.K);
    const Tensor w = Tensor::normal(c.w_shape(), 0, 0.5, gen, dtype);
    const ops::BnEval pre = test::random_bn_eval(c.C, ops::BnAct::Relu, gen, dtype);
    const ops::BnEval post = test::random_bn_eval(c.K, ops::BnAct::Relu, gen, dtype);
    for (const ops::BnEval* qp : {static_cast<const ops::BnEval*>(nullptr), &post}) {
      ops::conv2d_bn_eval_into(x, &pre, w, c.params(), qp, out);
      const test::ConvBnReference ref = test::conv_bn_eval_reference(x, &pre, w, c.params(), qp);
      const std::vector<double> got = out.to_vector(), want = ref.y.to_vector(), scale = ref.scale.to_vector();
      for (std::size_t i = 0; i < got.size(); ++i) ASSERT_LE(std::fabs(got[i] - want[i]), 4e-6 * scale[i]) << i;
      for (int64_t ch : {0, 1, 2, 7})
        for (double v : obuf.narrow(1, ch, 1).to_vector()) ASSERT_EQ(v, 7.0) << "channel " << ch << " was written";
    }
  }
}

TEST(ConvBnEval, EqualsTheUnfusedOpsToTheBit) {
  // What DenseNet's inference layer ran before the op existed: the CPU results must not move.
  Generator gen(43);
  const Case c{1, 8, 7, 7, 6, 1, 1, 1, 1, 0, 0};
  const Tensor x = Tensor::normal(c.x_shape(), 0, 1, gen);
  const Tensor w = Tensor::normal(c.w_shape(), 0, 0.5, gen);
  const ops::BnEval pre = test::random_bn_eval(c.C, ops::BnAct::Relu, gen);
  const ops::BnEval post = test::random_bn_eval(c.K, ops::BnAct::Relu, gen);
  const Tensor t = ops::batch_norm_forward_eval(x, pre.gamma, pre.beta, pre.running_mean, pre.running_var, pre.eps,
                                                ops::BnAct::Relu);
  const Tensor b = ops::conv2d_forward(t, w, Tensor(), c.params());
  const Tensor want = ops::batch_norm_forward_eval(b, post.gamma, post.beta, post.running_mean, post.running_var,
                                                   post.eps, ops::BnAct::Relu);
  EXPECT_EQ(ops::max_abs_diff(ops::conv2d_bn_eval(x, &pre, w, c.params(), &post), want), 0.0);
}

// The batch form of the pre BatchNorm (a folded training norm1, LADNN_NORM1_FOLD): conv2d_bn_eval and
// conv2d_backward_weight with it are the unfolded ops on batch_norm_map_saved's output, to the bit on the
// CPU; conv2d_bn_eval hands that map out through pre_y (what the dense block keeps for its backward).
TEST(ConvBnEval, BatchFormIsTheMapThenTheConvolution) {
  Generator gen(45);
  for (DType dtype : {DType::Float32, DType::Float64}) {
    const Case c{2, 6, 5, 5, 4, 1, 1, 1, 1, 0, 0};
    const Tensor xbuf = Tensor::normal({c.N, 9, c.H, c.W}, 0.3, 1, gen, dtype);
    const Tensor x = xbuf.narrow(1, 0, c.C);  // a channel prefix
    const Tensor w = Tensor::normal(c.w_shape(), 0, 0.5, gen, dtype);
    ops::BnEval pre;
    pre.gamma = Tensor::uniform({c.C}, 0.5, 1.5, gen, dtype);
    pre.beta = Tensor::uniform({c.C}, -0.5, 0.5, gen, dtype);
    pre.act = ops::BnAct::Relu;
    pre.save_mean = Tensor::uniform({c.C}, -0.2, 0.5, gen, dtype);
    pre.save_invstd = Tensor::uniform({c.C}, 0.6, 1.4, gen, dtype);
    const Tensor t =
        ops::batch_norm_map_saved(x, pre.gamma, pre.beta, pre.save_mean, pre.save_invstd, pre.act);
    Tensor kept;
    const Tensor y = ops::conv2d_bn_eval(x, &pre, w, c.params(), nullptr, &kept);
    EXPECT_EQ(ops::max_abs_diff(y, ops::conv2d_forward(t, w, Tensor(), c.params())), 0.0);
    ASSERT_TRUE(kept.defined());
    EXPECT_EQ(ops::max_abs_diff(kept, t), 0.0);
    Tensor none = Tensor::ones({1});
    ops::conv2d_bn_eval(x, nullptr, w, c.params(), nullptr, &none);
    EXPECT_FALSE(none.defined()) << "no pre: no map to hand out";
    const Tensor dy = Tensor::normal(c.y_shape(), 0, 1, gen, dtype);
    EXPECT_EQ(ops::max_abs_diff(ops::conv2d_backward_weight(dy, x, c.w_shape(), c.params(), pre),
                                ops::conv2d_backward_weight(dy, t, c.w_shape(), c.params())),
              0.0);
  }
  // The batch form's own checks: its two vectors, and not both forms at once.
  const Tensor x = Tensor::normal({1, 4, 5, 5}, 0, 1, gen), w = Tensor::normal({3, 4, 1, 1}, 0, 1, gen);
  ops::BnEval pre;
  pre.save_mean = Tensor::zeros({4});
  pre.save_invstd = Tensor::ones({5});
  EXPECT_THROW_WITH(ops::conv2d_bn_eval(x, &pre, w, {}, nullptr), "conv2d_bn_eval", "pre save_invstd", "(4)",
                    "(5)");
  pre.save_invstd = Tensor::ones({4});
  pre.running_var = Tensor::ones({4});
  EXPECT_THROW_WITH(ops::conv2d_bn_eval(x, &pre, w, {}, nullptr),
                    "pre has save_invstd (the batch form) and running");
  pre = ops::BnEval{};
  pre.running_mean = Tensor::zeros({4});
  pre.running_var = Tensor::ones({4});
  pre.save_mean = Tensor::zeros({4});
  EXPECT_THROW_WITH(ops::conv2d_bn_eval(x, &pre, w, {}, nullptr), "pre has save_mean without save_invstd");
  EXPECT_THROW_WITH(ops::conv2d_backward_weight(Tensor::zeros({1, 3, 5, 5}), x, {3, 4, 1, 1}, {}, pre),
                    "conv2d_backward_weight", "save_mean without save_invstd");
}

TEST(ConvBnEval, ChecksItsArguments) {
  Generator gen(44);
  const Tensor x = Tensor::normal({1, 4, 5, 5}, 0, 1, gen), w = Tensor::normal({3, 4, 1, 1}, 0, 1, gen);
  ops::BnEval pre = test::random_bn_eval(4, ops::BnAct::Relu, gen);
  ops::BnEval post = test::random_bn_eval(3, ops::BnAct::Relu, gen);
  ops::BnEval bad = pre;
  bad.gamma = Tensor::ones({5});
  EXPECT_THROW_WITH(ops::conv2d_bn_eval(x, &bad, w, {}, &post), "conv2d_bn_eval", "pre gamma", "(4)", "(5)");
  bad = post;
  bad.running_var = Tensor();
  EXPECT_THROW_WITH(ops::conv2d_bn_eval(x, &pre, w, {}, &bad), "post running_var is undefined");
  bad = post;
  bad.running_mean = Tensor::zeros({3}, DType::Float64);
  EXPECT_THROW_WITH(ops::conv2d_bn_eval(x, &pre, w, {}, &bad), "post running_mean", "float64", "float32");
  bad = pre;
  bad.eps = -1;
  EXPECT_THROW_WITH(ops::conv2d_bn_eval(x, &bad, w, {}, nullptr), "pre eps must be >= 0");
  EXPECT_THROW_WITH(ops::conv2d_bn_eval_into(x, &pre, w, {}, &post, Tensor::empty({1, 3, 4, 5})),
                    "conv2d_bn_eval_into", "out must have the output's shape (1, 3, 5, 5)");
  EXPECT_THROW_WITH(ops::conv2d_bn_eval(x, &pre, Tensor::normal({3, 5, 1, 1}, 0, 1, gen), {}, &post), "5",
                    "channels");
  EXPECT_THROW_WITH(ops::conv2d_bn_eval_into(x, &pre, w, {}, &post, Tensor()), "conv2d_bn_eval_into: out is undefined");
  EXPECT_THROW_WITH(ops::conv2d_bn_eval_into(x, &pre, w, {}, &post, Tensor::empty({1, 3, 5, 5}, DType::Float64)),
                    "conv2d_bn_eval_into: out must have the input's dtype and device", "float64");
}
