// tests/cuda_conv_gemm_test.cpp — convolution (cuda/conv2d.cu) and matmul/linear (cuda/gemm.cu) on the
// GPU against the CPU reference, for both implementations (cuDNN/cuBLAS and native) with TF32 off and
// on; and one whole training step of a tiny CNN on the GPU against the same step on the CPU. Skips with
// the reason when no GPU is usable.
//
// Oracle: the same public op (tensor/ops.h) on the CPU in float64 (tensor/cpu/{conv2d,matmul}.cpp, checked
// against definitions and gradchecks in conv2d_test/matmul_test), on fresh random float32 inputs converted
// to float64, so the reference carries no float32 rounding of its own.
//
// Every GPU block is filled with NaN when allocated (FillNanScope), so an output element a kernel forgets
// to write shows up as a mismatch.
//
// Tolerances. Every output here is a sum of products, out = sum_i a_i b_i over a reduction of length L
// (C*R*S for the forward, K*R*S for dx, N*P*Q for dweight, N*P*Q for dbias, K for matmul). Its rounding
// error follows the size of the *terms*, not of the result (a near-zero sum of large terms is only
// accurate to the terms' size), so each output is compared as
//     |gpu - ref| <= rtol * sum_i |a_i b_i|
// where the scale sum_i |a_i b_i| is the same op applied to |inputs| in float64 (conv(|x|, |w|) + |b|, ...).
//   kRtol = 1e-5 (TF32 off, and the native kernels, which never use TF32). In a float32 sum the k-th
//     addition rounds with a relative error of at most u = 2^-24 = 6e-8 of the partial sum S_k, and for
//     random data |S_k| grows like sqrt(k) * rms(term). With rounding errors of random sign that makes
//     the total error about 0.6 u * sum|terms| whatever L; even with every rounding going the same way
//     it is about 0.8 sqrt(L) u * sum|terms| = 7.9e-6 sum|terms| for the longest reduction here
//     (L = 2 * 112 * 112 = 25088: the stem's dweight at batch 2). So 1e-5 (the CUDA issue's bound)
//     holds even in that worst case, with ~100x headroom for the typical one; blocked and tree sums
//     (cuBLAS, cuDNN, our tiles, split-K) only lower these numbers. The DenseNet shapes run at batch 2
//     to keep dweight's reduction within this argument.
//   kTf32Rtol = 2^-9 + 1e-5 (cuDNN/cuBLAS with TF32 on): TF32 keeps 10 of float32's 23 mantissa bits, so
//     each operand enters the tensor cores with a relative error of at most 2^-10 (truncation; 2^-11
//     when rounded), each product with at most 2 * 2^-10 = 2^-9, and the whole sum with at most
//     2^-9 * sum|terms| — plus the float32 accumulation above. Typical errors are far smaller (random
//     signs), so this bound is rigorous rather than tight.
//   Both arguments are for GEMM-like algorithms (each output a dot product of the inputs). cuDNN's search
//   may also pick a transform algorithm (Winograd, FFT) whose rounding happens on transformed values;
//   their typical error on these random inputs is still orders of magnitude below the bounds, but if a
//   library case fails, run it with LADNN_CUDNN_LOG=1 to see which algorithm cuDNN chose.
// The training step compares parameters after one SGD step to 1e-4 absolute (the CUDA issue's bound).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "cuda/context.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"
#include "layers/activation.h"
#include "layers/batchnorm2d.h"
#include "layers/conv2d.h"
#include "layers/flatten.h"
#include "layers/linear.h"
#include "layers/pool.h"
#include "layers/sequential.h"
#include "optim/sgd.h"
#include "tensor/ops.h"
#include "tensor/random.h"
#include "tests/cuda_test_util.h"

namespace ladnn {
namespace {

using cuda::Family;
using cuda::Impl;
using cuda_test::FusedScope;
using cuda_test::gpu_matches;
using cuda_test::Tol;

constexpr double kRtol = 1e-5;
constexpr double kTf32Rtol = 1.0 / 512.0 + 1e-5;  // 2^-9 + kRtol, see the file comment
constexpr double kStepAtol = 1e-4;

// ---- helpers
// ----------------------------------------------------------------------------------------------------

Tensor gpu(const Tensor& t) {
  return t.defined() ? t.to(Device::cuda()) : Tensor();
}
Tensor f64(const Tensor& t) {
  return t.defined() ? t.to(DType::Float64) : Tensor();
}

/// |t| elementwise as a float64 CPU tensor (undefined stays undefined): the inputs of a scale.
Tensor abs64(const Tensor& t) {
  if (!t.defined()) return Tensor();
  std::vector<double> v = t.to_vector();
  for (double& x : v) x = std::fabs(x);
  return Tensor::from_vector(v, t.shape(), DType::Float64);
}

Tensor randn(const Shape& shape, Generator& gen, double std = 1.0) {
  return Tensor::normal(shape, 0.0, std, gen, DType::Float32);
}

std::string mode_label(Impl impl, bool tf32) {
  return std::string(impl == Impl::Library ? "library" : "native") + (tf32 ? "_tf32" : "_fp32");
}

/// Runs each test for {library, native} x {TF32 off, on}: conv and GEMM families set to the implementation,
/// new GPU blocks filled with NaN. Restores the switches after.
class CudaConvGemmTest : public ::testing::TestWithParam<std::tuple<Impl, bool>> {
 protected:
  void SetUp() override {
    LADNN_REQUIRE_GPU();
    saved_conv_ = cuda::impl(Family::Conv);
    saved_gemm_ = cuda::impl(Family::Gemm);
    saved_tf32_ = cuda::tf32_enabled();
    cuda::set_impl(Family::Conv, impl());
    cuda::set_impl(Family::Gemm, impl());
    cuda::set_tf32(tf32());
    nan_fill_.emplace();
  }
  void TearDown() override {
    if (!nan_fill_) return;  // skipped
    cuda::synchronize();
    nan_fill_.reset();
    cuda::set_impl(Family::Conv, saved_conv_);
    cuda::set_impl(Family::Gemm, saved_gemm_);
    cuda::set_tf32(saved_tf32_);
  }
  Impl impl() const { return std::get<0>(GetParam()); }
  bool tf32() const { return std::get<1>(GetParam()); }
  /// The library with TF32 on rounds operands to TF32; the native kernels never do (file comment).
  double rtol() const { return impl() == Impl::Library && tf32() ? kTf32Rtol : kRtol; }
  Tol tol() const { return Tol{0.0, rtol()}; }

 private:
  std::optional<cuda_test::FillNanScope> nan_fill_;
  Impl saved_conv_ = Impl::Library, saved_gemm_ = Impl::Library;
  bool saved_tf32_ = true;
};

std::string param_label(const ::testing::TestParamInfo<std::tuple<Impl, bool>>& info) {
  return mode_label(std::get<0>(info.param), std::get<1>(info.param));
}

// ---- convolution
// ------------------------------------------------------------------------------------------------

struct ConvCase {
  Shape x;  // (N, C, H, W)
  int64_t K, R, S;
  int64_t sh, sw, ph, pw;
  bool bias;
  ops::Conv2dParams params() const {
    ops::Conv2dParams p;
    p.stride_h = sh, p.stride_w = sw, p.pad_h = ph, p.pad_w = pw;
    return p;
  }
  Shape w() const { return {K, x[1], R, S}; }
  std::string name() const {
    std::ostringstream s;
    s << "x " << shape_str(x) << " w " << shape_str(w()) << " stride " << sh << "x" << sw << " pad " << ph
      << "x" << pw << (bias ? " bias" : "");
    return s.str();
  }
};

// Odd sizes, batch 1, stride 2, padding 0/1/2/3, 1x1 (the pointwise fast path and a strided 1x1 that is
// not), 3x3, the 7x7/2 stem, a rectangular kernel with unequal strides and paddings, and channel counts
// that straddle the native kernel's tiles (32, 64, 128 rows; k-tiles of 8).
const ConvCase kConvCases[] = {
    {{1, 3, 5, 7}, 4, 3, 3, 1, 1, 1, 1, true},       // batch 1, odd sizes
    {{2, 5, 9, 11}, 6, 3, 3, 2, 2, 1, 1, false},     // stride 2 on odd sizes
    {{3, 7, 6, 5}, 5, 1, 1, 1, 1, 0, 0, true},       // pointwise
    {{2, 4, 8, 9}, 3, 1, 1, 2, 2, 0, 0, false},      // 1x1 stride 2 (not pointwise)
    {{2, 3, 17, 15}, 8, 7, 7, 2, 2, 3, 3, true},     // the stem's 7x7/2 pad 3 on odd sizes
    {{2, 6, 7, 7}, 4, 3, 3, 1, 1, 0, 0, false},      // no padding
    {{1, 2, 5, 5}, 3, 3, 3, 1, 1, 2, 2, true},       // pad 2 = kernel - 1: border outputs see one tap
    {{2, 3, 8, 7}, 5, 2, 3, 2, 1, 1, 0, true},       // rectangular kernel, stride 2x1, pad 1x0
    {{3, 33, 10, 10}, 37, 3, 3, 1, 1, 1, 1, true},   // 37 outputs (> 32: not the narrow tile), CRS = 297
    {{2, 130, 9, 9}, 129, 1, 1, 1, 1, 0, 0, false},  // pointwise, 129 outputs and 130 inputs (ragged tiles)
    {{4, 9, 12, 12}, 32, 3, 3, 1, 1, 1, 1, false},   // 32 outputs: exactly one narrow tile
};

// DenseNet-169 at batch 2: the stem, each dense block's bottleneck 1x1 (mid-block width) and growth 3x3,
// and the first and third transitions' 1x1.
const ConvCase kConvDenseNet[] = {
    {{2, 3, 224, 224}, 64, 7, 7, 2, 2, 3, 3, false},    // features.conv0
    {{2, 128, 56, 56}, 128, 1, 1, 1, 1, 0, 0, false},   // denseblock1 conv1
    {{2, 128, 56, 56}, 32, 3, 3, 1, 1, 1, 1, false},    // denseblock1 conv2
    {{2, 256, 56, 56}, 128, 1, 1, 1, 1, 0, 0, false},   // transition1 conv
    {{2, 256, 28, 28}, 128, 1, 1, 1, 1, 0, 0, false},   // denseblock2 conv1
    {{2, 128, 28, 28}, 32, 3, 3, 1, 1, 1, 1, false},    // denseblock2 conv2
    {{2, 640, 14, 14}, 128, 1, 1, 1, 1, 0, 0, false},   // denseblock3 conv1
    {{2, 128, 14, 14}, 32, 3, 3, 1, 1, 1, 1, false},    // denseblock3 conv2
    {{2, 1280, 14, 14}, 640, 1, 1, 1, 1, 0, 0, false},  // transition3 conv
    {{2, 1280, 7, 7}, 128, 1, 1, 1, 1, 0, 0, false},    // denseblock4 conv1
    {{2, 128, 7, 7}, 32, 3, 3, 1, 1, 1, 1, false},      // denseblock4 conv2
};

/// A case's float32 inputs and the float64 CPU results with their sum|terms| scales. Built once per case
/// and shared by the four modes (the inputs depend only on the case and its seed).
struct ConvRef {
  Tensor x, w, b, dy;  // float32, CPU
  Tensor y, y_scale, dx, dx_scale, dw, dw_scale, db, db_scale;
};

const ConvRef& conv_ref(const ConvCase& c, uint64_t seed) {
  static std::map<std::pair<std::string, uint64_t>, ConvRef> cache;
  const auto key = std::make_pair(c.name(), seed);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Generator gen(seed);
  const ops::Conv2dParams p = c.params();
  ConvRef r;
  r.x = randn(c.x, gen);
  r.w = randn(c.w(), gen, 1.0 / std::sqrt(double(c.x[1] * c.R * c.S)));  // keeps y ~ N(0, 1)
  if (c.bias) r.b = randn({c.K}, gen);
  r.y = ops::conv2d_forward(f64(r.x), f64(r.w), f64(r.b), p);
  r.y_scale = ops::conv2d_forward(abs64(r.x), abs64(r.w), abs64(r.b), p);
  r.dy = randn(r.y.shape(), gen);
  r.dx = ops::conv2d_backward_input(f64(r.dy), f64(r.w), c.x, p);
  r.dx_scale = ops::conv2d_backward_input(abs64(r.dy), abs64(r.w), c.x, p);
  r.dw = ops::conv2d_backward_weight(f64(r.dy), f64(r.x), c.w(), p);
  r.dw_scale = ops::conv2d_backward_weight(abs64(r.dy), abs64(r.x), c.w(), p);
  r.db = ops::conv2d_backward_bias(f64(r.dy));
  r.db_scale = ops::conv2d_backward_bias(abs64(r.dy));
  return cache.emplace(key, std::move(r)).first->second;
}

/// Forward, backward input, backward weight and backward bias of one case on the GPU against the CPU.
/// `x_gpu` and `dy_gpu` (default: plain copies of r.x and r.dy) let a caller pass them as views.
void check_conv(const ConvCase& c, const ConvRef& r, Tol tol, const Tensor& x_gpu_in = Tensor(),
                const Tensor& dy_gpu_in = Tensor()) {
  SCOPED_TRACE(c.name());
  const ops::Conv2dParams p = c.params();
  const Tensor x = x_gpu_in.defined() ? x_gpu_in : gpu(r.x);
  const Tensor y = ops::conv2d_forward(x, gpu(r.w), gpu(r.b), p);
  EXPECT_TRUE(y.device().is_cuda());
  EXPECT_TRUE(gpu_matches("conv2d_forward", y, r.y, tol, r.y_scale));
  const Tensor dy = dy_gpu_in.defined() ? dy_gpu_in : gpu(r.dy);
  EXPECT_TRUE(gpu_matches("conv2d_backward_input", ops::conv2d_backward_input(dy, gpu(r.w), c.x, p), r.dx,
                          tol, r.dx_scale));
  EXPECT_TRUE(gpu_matches("conv2d_backward_weight", ops::conv2d_backward_weight(dy, x, c.w(), p), r.dw, tol,
                          r.dw_scale));
  // dbias sums dy alone (no products): float32 accumulation only, whatever TF32 says.
  EXPECT_TRUE(
      gpu_matches("conv2d_backward_bias", ops::conv2d_backward_bias(dy), r.db, Tol{0, kRtol}, r.db_scale));
}

TEST_P(CudaConvGemmTest, ConvMatchesCpu) {
  uint64_t seed = 1000;
  for (const ConvCase& c : kConvCases) check_conv(c, conv_ref(c, seed++), tol());
}

TEST_P(CudaConvGemmTest, ConvDenseNet169Shapes) {
  uint64_t seed = 2000;
  for (const ConvCase& c : kConvDenseNet) check_conv(c, conv_ref(c, seed++), tol());
}

// x as a channel slice of a wider tensor (DenseNet's shared feature buffer): each image is a contiguous
// (C, H, W) block but images are further apart; both versions read it in place. The columns outside the
// slice hold NaN, so reading one shows.
TEST_P(CudaConvGemmTest, ConvChannelSliceInput) {
  for (const ConvCase& c : {ConvCase{{3, 5, 7, 6}, 4, 3, 3, 1, 1, 1, 1, true},
                            ConvCase{{2, 6, 5, 5}, 7, 1, 1, 1, 1, 0, 0, false}}) {
    const ConvRef& r = conv_ref(c, 3000);
    const int64_t N = c.x[0], C = c.x[1], H = c.x[2], W = c.x[3], extra = 3;
    Tensor wide = Tensor::full({N, C + extra, H, W}, NAN);
    wide.narrow(1, 1, C).copy_(r.x);  // channels [1, 1 + C) of the wider buffer
    const Tensor slice = gpu(wide).narrow(1, 1, C);
    ASSERT_FALSE(slice.is_contiguous());
    check_conv(c, r, tol(), slice);
  }
}

// The output gradient as a channel slice of a wider tensor (the training dense block's gradient buffer):
// both backward passes read it in place (cuDNN's descriptors, cuBLAS's strides and our kernels take the
// images' distance). A DenseNet growth 3x3 and a pointwise case (cuDNN or cuBLAS); NaN outside the slice.
TEST_P(CudaConvGemmTest, ConvChannelSliceGradient) {
  for (const ConvCase& c : {ConvCase{{2, 16, 14, 14}, 32, 3, 3, 1, 1, 1, 1, false},
                            ConvCase{{3, 6, 5, 5}, 7, 1, 1, 1, 1, 0, 0, false}}) {
    const ConvRef& r = conv_ref(c, 3050);
    const int64_t N = r.dy.size(0), K = r.dy.size(1), P = r.dy.size(2), Q = r.dy.size(3), extra = 3;
    Tensor wide = Tensor::full({N, K + extra, P, Q}, NAN);
    wide.narrow(1, 2, K).copy_(r.dy);  // channels [2, 2 + K)
    const Tensor slice = gpu(wide).narrow(1, 2, K);
    ASSERT_FALSE(slice.is_contiguous());
    check_conv(c, r, tol(), Tensor(), slice);
  }
}

// An input whose images are not contiguous blocks (a transposed view): both versions copy it first.
TEST_P(CudaConvGemmTest, ConvTransposedInput) {
  const ConvCase c{{2, 3, 6, 8}, 4, 3, 3, 2, 1, 1, 1, true};
  const ConvRef& r = conv_ref(c, 3100);
  // x stored as (N, C, W, H) and viewed transposed back to (N, C, H, W).
  const Tensor stored = r.x.transpose(2, 3).contiguous();
  const Tensor view = gpu(stored).transpose(2, 3);
  ASSERT_FALSE(view.is_contiguous());
  check_conv(c, r, tol(), view);
}

// Empty reductions: a batch of 0 images (dweight and dbias are zeros) and 0 input channels (y is the bias).
TEST_P(CudaConvGemmTest, ConvEmptyReductions) {
  Generator gen(3200);
  ops::Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  {
    const Shape xs{0, 3, 5, 5}, ws{4, 3, 3, 3};
    const Tensor x = randn(xs, gen), w = randn(ws, gen), b = randn({4}, gen);
    const Tensor y = ops::conv2d_forward(gpu(x), gpu(w), gpu(b), p);
    EXPECT_EQ(y.shape(), (Shape{0, 4, 5, 5}));
    const Tensor dy = gpu(Tensor::empty({0, 4, 5, 5}));
    EXPECT_TRUE(cuda_test::gpu_equals("dweight of an empty batch",
                                      ops::conv2d_backward_weight(dy, gpu(x), ws, p),
                                      Tensor::zeros(ws, DType::Float64)));
    EXPECT_TRUE(cuda_test::gpu_equals("dbias of an empty batch", ops::conv2d_backward_bias(dy),
                                      Tensor::zeros({4}, DType::Float64)));
  }
  {
    // The reference is written out (y[n][k][p][q] = bias[k]): the CPU conv2d throws for C == 0 at the
    // time of writing (cpu::pack_a rejects the (K, 0) weight).
    const Shape xs{2, 0, 4, 4}, ws{3, 0, 3, 3};
    const Tensor x = Tensor::empty(xs), w = Tensor::empty(ws), b = randn({3}, gen);
    const std::vector<double> bv = b.to_vector();
    std::vector<double> expect;
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t k = 0; k < 3; ++k)
        for (int64_t i = 0; i < 16; ++i) expect.push_back(bv[k]);
    EXPECT_TRUE(cuda_test::gpu_equals("y with no input channels (the bias)",
                                      ops::conv2d_forward(gpu(x), gpu(w), gpu(b), p),
                                      Tensor::from_vector(expect, {2, 3, 4, 4}, DType::Float64)));
  }
}

// ---- matmul and linear
// ------------------------------------------------------------------------------------------

struct MatmulCase {
  int64_t M, K, N;
};

// Tiny, odd, K = 1, ragged tiles around 32/64/128, a head-like skinny product, and one large enough
// (143 tiles of 128 x 128) for the native kernel's large tile on a 132-SM H100.
const MatmulCase kMatmulCases[] = {{1, 1, 1},       {7, 13, 5},   {33, 300, 17}, {129, 65, 131},  {64, 1, 64},
                                   {256, 512, 128}, {2, 1664, 6}, {300, 9, 1},   {1544, 40, 1400}};

void check_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb, Tol tol, const std::string& what,
                  const Tensor& a_gpu = Tensor(), const Tensor& b_gpu = Tensor()) {
  const Tensor ref = ops::matmul(f64(a), f64(b), ta, tb);
  const Tensor scale = ops::matmul(abs64(a), abs64(b), ta, tb);
  const Tensor out = ops::matmul(a_gpu.defined() ? a_gpu : gpu(a), b_gpu.defined() ? b_gpu : gpu(b), ta, tb);
  EXPECT_TRUE(out.device().is_cuda());
  EXPECT_TRUE(gpu_matches(what, out, ref, tol, scale));
}

TEST_P(CudaConvGemmTest, MatmulAllTransposes) {
  Generator gen(4000);
  for (const MatmulCase& c : kMatmulCases) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        std::ostringstream what;
        what << "matmul M " << c.M << " K " << c.K << " N " << c.N << (ta ? " a^T" : "")
             << (tb ? " b^T" : "");
        SCOPED_TRACE(what.str());
        const Tensor a = randn(ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, gen);
        const Tensor b = randn(tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, gen);
        check_matmul(a, b, ta, tb, tol(), what.str());
      }
    }
  }
}

// Operands that reach the GEMM without a copy: a column slice (rows ld > cols apart) and a transposed
// view (column-major, read as the transpose of a row-major matrix); and an empty inner dimension.
TEST_P(CudaConvGemmTest, MatmulOperandViewsAndEmptyK) {
  Generator gen(4100);
  const int64_t M = 37, K = 70, N = 45;
  const Tensor wide_a = randn({M, K + 5}, gen);
  const Tensor a = wide_a.narrow(1, 2, K).contiguous();  // the values of the slice, for the reference
  const Tensor a_slice = gpu(wide_a).narrow(1, 2, K);
  const Tensor bt = randn({N, K}, gen);
  const Tensor b = bt.transpose(0, 1).contiguous();
  const Tensor b_view = gpu(bt).transpose(0, 1);  // (K, N), column-major
  ASSERT_FALSE(a_slice.is_contiguous());
  ASSERT_FALSE(b_view.is_contiguous());
  check_matmul(a, b, false, false, tol(), "column slice x transposed view", a_slice, b_view);
  check_matmul(b, a, true, true, tol(), "(transposed view)^T x (column slice)^T", b_view, a_slice);

  const Tensor e1 = Tensor::empty({3, 0}), e2 = Tensor::empty({0, 4});
  EXPECT_TRUE(cuda_test::gpu_equals("matmul with K = 0 (zeros)", ops::matmul(gpu(e1), gpu(e2)),
                                    ops::matmul(f64(e1), f64(e2))));
}

struct LinearCase {
  int64_t N, in, out;
  bool bias;
};

// LA-DNN's heads (1664 -> 1 and 1664 -> 5) at batch 1 and 32, tiny and ragged ones, and no input
// features (y is the bias).
const LinearCase kLinearCases[] = {{1, 1664, 1, true},   {1, 1664, 5, true}, {32, 1664, 1, true},
                                   {32, 1664, 5, false}, {5, 7, 3, false},   {64, 300, 129, true},
                                   {3, 0, 4, true}};

TEST_P(CudaConvGemmTest, LinearMatchesCpu) {
  Generator gen(4200);
  for (const LinearCase& c : kLinearCases) {
    std::ostringstream what;
    what << "linear N " << c.N << " in " << c.in << " out " << c.out << (c.bias ? " bias" : "");
    SCOPED_TRACE(what.str());
    const Tensor x = randn({c.N, c.in}, gen), w = randn({c.out, c.in}, gen);
    const Tensor b = c.bias ? randn({c.out}, gen) : Tensor();
    const Tensor ref = ops::linear(f64(x), f64(w), f64(b));
    const Tensor scale = ops::linear(abs64(x), abs64(w), abs64(b));
    EXPECT_TRUE(gpu_matches(what.str(), ops::linear(gpu(x), gpu(w), gpu(b)), ref, tol(), scale));
  }
}

// The switch really selects the implementation: the profiler records each op under the implementation
// that ran it (cuda/profiler.h).
TEST_P(CudaConvGemmTest, ImplSwitchSelectsImplementation) {
  const bool was_enabled = cuda::profiler::enabled();
  cuda::profiler::set_enabled(true);
  Generator gen(4300);
  const ConvCase c{{1, 2, 5, 5}, 3, 3, 3, 1, 1, 1, 1, false};
  ops::conv2d_forward(gpu(randn(c.x, gen)), gpu(randn(c.w(), gen)), Tensor(), c.params());
  ops::matmul(gpu(randn({4, 5}, gen)), gpu(randn({5, 6}, gen)));
  const std::vector<cuda::profiler::OpStat> stats = cuda::profiler::stats();
  cuda::profiler::set_enabled(was_enabled);
  auto recorded = [&](const std::string& op, const std::string& impl) {
    for (const auto& s : stats)
      if (s.op == op && s.impl == impl && s.calls > 0) return true;
    return false;
  };
  EXPECT_TRUE(recorded("conv2d_forward", cuda::impl_name(Family::Conv, impl())));
  EXPECT_TRUE(recorded("matmul", cuda::impl_name(Family::Gemm, impl())));
}

// conv2d_forward_into writes into a channel slice of a wider GPU tensor (the inference block buffer):
// the slice equals the CPU's convolution, the channels around it keep their NaN (nothing written outside).
// Pointwise and 3x3, batch 1 (the slice is contiguous) and 3; with Conv1x1 = cublas too for the library.
TEST_P(CudaConvGemmTest, ConvForwardIntoAChannelSlice) {
  const cuda::Conv1x1 saved = cuda::conv1x1();
  uint64_t seed = 4400;
  for (cuda::Conv1x1 mode : {cuda::Conv1x1::Auto, cuda::Conv1x1::Cublas}) {
    cuda::set_conv1x1(mode);
    for (const ConvCase& c : {ConvCase{{1, 6, 7, 7}, 5, 3, 3, 1, 1, 1, 1, false},
                              ConvCase{{3, 6, 7, 7}, 5, 3, 3, 1, 1, 1, 1, true},
                              ConvCase{{1, 9, 5, 6}, 4, 1, 1, 1, 1, 0, 0, false},
                              ConvCase{{3, 9, 5, 6}, 4, 1, 1, 1, 1, 0, 0, false}}) {
      SCOPED_TRACE(c.name() + " conv1x1 " + cuda::conv1x1_name(mode));
      const ConvRef& r = conv_ref(c, seed++);
      const Shape ys = r.y.shape();
      Tensor wide = gpu(Tensor::full({ys[0], ys[1] + 3, ys[2], ys[3]}, NAN));
      ops::conv2d_forward_into(gpu(r.x), gpu(r.w), gpu(r.b), c.params(), wide.narrow(1, 2, c.K));
      EXPECT_TRUE(gpu_matches("conv2d_forward_into", wide.narrow(1, 2, c.K), r.y, tol(), r.y_scale));
      const Tensor host = wide.to(Device::cpu());
      for (double v : host.narrow(1, 0, 2).contiguous().to_vector()) ASSERT_TRUE(std::isnan(v));
      for (double v : host.narrow(1, 2 + c.K, 1).contiguous().to_vector()) ASSERT_TRUE(std::isnan(v));
    }
  }
  cuda::set_conv1x1(saved);
}

// Pointwise convolutions as cuBLAS strided batched GEMMs (LADNN_CONV1X1=cublas): forward and backward
// input run cuBLAS (the profiler says so), all four passes match the CPU, on DenseNet-169's 1x1 shapes, a
// ragged one and a channel-slice input. With cudnn forced, cuDNN runs. The native version has no cuBLAS.
TEST_P(CudaConvGemmTest, Conv1x1AsCublasGemm) {
  if (impl() == Impl::Native) GTEST_SKIP() << "the cuBLAS pointwise path belongs to the library version";
  // The library's own choices: LADNN_FUSED_CONV's default (auto) may take a backward pass to our kernels.
  FusedScope library_only(cuda::FusedConv::Off);
  const cuda::Conv1x1 saved = cuda::conv1x1();
  const bool was_enabled = cuda::profiler::enabled();
  cuda::profiler::set_enabled(true);
  cuda::profiler::reset();
  cuda::set_conv1x1(cuda::Conv1x1::Cublas);
  uint64_t seed = 4500;
  for (const ConvCase& c : kConvDenseNet)
    if (c.R == 1 && c.sh == 1) check_conv(c, conv_ref(c, seed++), tol());
  const ConvCase ragged{{2, 130, 9, 9}, 129, 1, 1, 1, 1, 0, 0, true};
  check_conv(ragged, conv_ref(ragged, seed++), tol());
  const ConvCase sliced{{2, 6, 5, 5}, 7, 1, 1, 1, 1, 0, 0, false};
  const ConvRef& r = conv_ref(sliced, seed++);
  Tensor wide = Tensor::full({2, 9, 5, 5}, NAN);
  wide.narrow(1, 1, 6).copy_(r.x);
  check_conv(sliced, r, tol(), gpu(wide).narrow(1, 1, 6));
  std::vector<cuda::profiler::OpStat> stats = cuda::profiler::stats();
  auto calls = [&](const std::string& op, const std::string& impl) {
    int64_t n = 0;
    for (const auto& st : stats)
      if (st.op == op && st.impl == impl) n += st.calls;
    return n;
  };
  EXPECT_GT(calls("conv2d_forward", "cublas"), 0);
  EXPECT_GT(calls("conv2d_backward_input", "cublas"), 0);
  EXPECT_EQ(calls("conv2d_forward", "cudnn"), 0);
  EXPECT_EQ(calls("conv2d_backward_input", "cudnn"), 0);
  EXPECT_GT(calls("conv2d_backward_weight", "cudnn"), 0);  // a sum over images: cuDNN's

  cuda::profiler::reset();
  cuda::set_conv1x1(cuda::Conv1x1::Cudnn);
  check_conv(ragged, conv_ref(ragged, 4600), tol());
  stats = cuda::profiler::stats();
  EXPECT_EQ(calls("conv2d_forward", "cublas") + calls("conv2d_backward_input", "cublas"), 0);
  EXPECT_GT(calls("conv2d_forward", "cudnn"), 0);
  cuda::set_conv1x1(saved);
  cuda::profiler::set_enabled(was_enabled);
}

INSTANTIATE_TEST_SUITE_P(CudaModes, CudaConvGemmTest,
                         ::testing::Combine(::testing::Values(Impl::Library, Impl::Native),
                                            ::testing::Bool()),
                         param_label);

// The GPU computes in float32 only: float64 tensors on the GPU are refused with a clear error.
TEST(CudaConvGemm, RejectsFloat64OnGpu) {
  LADNN_REQUIRE_GPU();
  const Tensor a = Tensor::ones({2, 3}, DType::Float64).to(Device::cuda());
  const Tensor b = Tensor::ones({3, 2}, DType::Float64).to(Device::cuda());
  const Tensor x = Tensor::ones({1, 2, 4, 4}, DType::Float64).to(Device::cuda());
  const Tensor w = Tensor::ones({3, 2, 3, 3}, DType::Float64).to(Device::cuda());
  auto expect_float32_error = [](const char* what, const std::function<void()>& f) {
    try {
      f();
      ADD_FAILURE() << what << ": float64 on the GPU was accepted";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("float32"), std::string::npos) << what << ": " << e.what();
    }
  };
  expect_float32_error("matmul", [&] { ops::matmul(a, b); });
  expect_float32_error("linear", [&] { ops::linear(a, b.transpose(0, 1), Tensor()); });
  expect_float32_error("conv2d_forward", [&] { ops::conv2d_forward(x, w, Tensor(), ops::Conv2dParams{}); });
}

// ---- one training step: GPU vs CPU
// --------------------------------------------------------------------------------

// The tiny CNN of tests/tiny_cnn_test.cpp: Conv-BN-ReLU-MaxPool-Conv-BN-ReLU-GAP-Linear.
std::shared_ptr<Sequential> make_tiny_cnn(Generator& g) {
  auto m = std::make_shared<Sequential>();
  m->push_back(std::make_shared<Conv2d>(1, 8, 3, 1, 1, true, g));
  m->push_back(std::make_shared<BatchNorm2d>(8));
  m->push_back(std::make_shared<ReLU>());
  m->push_back(std::make_shared<MaxPool2d>(2));  // 12 -> 6
  m->push_back(std::make_shared<Conv2d>(8, 16, 3, 1, 1, true, g));
  m->push_back(std::make_shared<BatchNorm2d>(16));
  m->push_back(std::make_shared<ReLU>());
  m->push_back(std::make_shared<AdaptiveAvgPool2d>(1));
  m->push_back(std::make_shared<Flatten>());
  m->push_back(std::make_shared<Linear>(16, 1, true, g));
  return m;
}

/// Every op family set to the parameter's implementation, TF32 off (the step is compared in float32).
/// No NaN fill here: the per-op tests prove every output element is written; this one proves the ops
/// compose into the same training step.
class CudaTrainStepTest : public ::testing::TestWithParam<Impl> {
 protected:
  void SetUp() override {
    LADNN_REQUIRE_GPU();
    scope_.emplace(GetParam(), /*tf32=*/false);
  }
  void TearDown() override { scope_.reset(); }

 private:
  std::optional<cuda_test::ImplScope> scope_;
};

// One SGD step (lr 0.5, momentum 0.9) from the same initial weights on the same batch: the float32 GPU
// step against the float64 CPU step. SGD, not Adam: Adam's first step moves every weight by
// lr * g / (|g| + eps), so a gradient that is zero in exact arithmetic (the conv biases feeding
// BatchNorm) becomes a full +-lr step on either device depending on the sign of its rounding noise; SGD
// keeps such noise at lr * noise.
TEST_P(CudaTrainStepTest, TinyCnnSgdStepMatchesCpu) {
  Generator init_ref(2024), init_dev(2024), data(7);
  auto ref = make_tiny_cnn(init_ref);
  auto dev = make_tiny_cnn(init_dev);
  ref->to(DType::Float64);
  dev->to(Device::cuda());
  ref->train();
  dev->train();

  const int64_t n = 8;
  const Tensor images = randn({n, 1, 12, 12}, data);
  std::vector<double> lab(n);
  for (double& v : lab) v = double(data.below(2));
  const Tensor labels = Tensor::from_vector(lab, {n, 1});

  SGD opt_ref(ref->parameters(), 0.5, 0.9), opt_dev(dev->parameters(), 0.5, 0.9);
  auto step = [](Sequential& model, Optimizer& opt, const Tensor& x, const Tensor& y) {
    opt.zero_grad();
    Variable loss = bce_with_logits(model(Variable(x)), y, Tensor());
    loss.backward();
    opt.step();
    return loss.tensor().item();
  };
  const double loss_ref = step(*ref, opt_ref, f64(images), f64(labels));
  const double loss_dev = step(*dev, opt_dev, gpu(images), gpu(labels));
  EXPECT_NEAR(loss_dev, loss_ref, kRtol * std::max(1.0, std::fabs(loss_ref)));

  const auto p_ref = ref->named_parameters(), p_dev = dev->named_parameters();
  ASSERT_EQ(p_ref.size(), p_dev.size());
  for (std::size_t i = 0; i < p_ref.size(); ++i) {
    EXPECT_TRUE(p_dev[i].second.tensor().device().is_cuda()) << p_dev[i].first;
    EXPECT_TRUE(gpu_matches("parameter " + p_dev[i].first + " after one step", p_dev[i].second.tensor(),
                            p_ref[i].second.tensor(), Tol{kStepAtol, 0.0}));
  }
  const auto b_ref = ref->named_buffers(), b_dev = dev->named_buffers();
  ASSERT_EQ(b_ref.size(), b_dev.size());
  for (std::size_t i = 0; i < b_ref.size(); ++i)
    EXPECT_TRUE(gpu_matches("buffer " + b_dev[i].first + " after one step", b_dev[i].second, b_ref[i].second,
                            Tol{kStepAtol, 0.0}));
}

INSTANTIATE_TEST_SUITE_P(CudaImpls, CudaTrainStepTest, ::testing::Values(Impl::Library, Impl::Native),
                         [](const ::testing::TestParamInfo<Impl>& info) {
                           return std::string(info.param == Impl::Library ? "library" : "native");
                         });

}  // namespace
}  // namespace ladnn
