// tests/cuda_bnpool_test.cpp — batch norm and pooling on the GPU against the CPU reference, for both
// implementations (cuDNN and native; cuda/batchnorm.cu, cuda/pool.cu). Skips with the reason when no
// GPU is usable.
//
// Oracle: the same op on the CPU in float64 (tensor/cpu/{batchnorm,pool}.cpp, themselves checked
// against definitions and gradchecks in batchnorm_test/pool_test), on fresh random float32 inputs
// converted to float64, so the reference carries no float32 rounding of its own.
//
// Every GPU block is filled with NaN when allocated (FillNanScope, tests/cuda_test_util.h: NaN for
// float32, -1 for int64 indices), so an output element the kernel forgets to write shows up as a
// mismatch.
//
// Tolerances (|gpu - ref| <= atol + rtol * scale, elementwise, scale = |ref| unless said; float32 unit
// roundoff u = 6e-8):
//   kElemTol = 1e-5  values computed per element from O(1) inputs through a handful of float32 operations
//                    and per-channel statistics that are themselves accurate to ~1e-6 relative: a few
//                    ulps, so 1e-5 (the CUDA issue's bound) leaves ~10x headroom; atol scales with the
//                    tensor's RMS so the bound is relative to the values' magnitude.
//   kSumTol = 1e-5   reductions (channel sums, window averages): a float32 sum of terms t_i errs by at
//                    most ~depth * u * sum|t_i| (depth = the longest chain of additions: a few dozen to a
//                    hundred in the tree reductions here and in cuDNN), so the allowed error is
//                    1e-5 * sum|t_i| per output (scale = sum|t_i|, which is >= |result|). Scaling by
//                    sum|t_i| rather than by |result| matters: dbeta = sum(dy) of random dy is near 0,
//                    and its error is relative to the terms, not to the sum.
//   kPoolTol = 1e-6  fixed-window pooling sums at most 9 terms (3x3): error <= 9 u sum|t| ~ 5e-7 sum|t|.
// Max pooling is exact (y is a copy of one input; indices are integers) and compared exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/bnpool_math.h"
#include "cuda/context.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"
#include "tensor/ops.h"
#include "tensor/random.h"
#include "tests/conv_bn_reference.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

namespace ladnn {
namespace {

using cuda::Family;
using cuda::Impl;

constexpr double kElemTol = 1e-5;
constexpr double kSumTol = 1e-5;
constexpr double kPoolTol = 1e-6;

// ---- helpers ---------------------------------------------------------------------------------------

using cuda_test::gpu_equals;
using cuda_test::gpu_matches;
using cuda_test::Tol;

Tensor gpu(const Tensor& t) { return t.defined() ? t.to(Device::cuda()) : Tensor(); }
Tensor f64(const Tensor& t) { return t.defined() ? t.to(DType::Float64) : Tensor(); }

std::vector<double> values(const Tensor& t) { return t.to_vector(); }  // copies from the GPU if need be

double rms(const Tensor& t) {
  const std::vector<double> v = values(t);
  double s = 0;
  for (double x : v) s += x * x;
  return v.empty() ? 0.0 : std::sqrt(s / double(v.size()));
}

/// Elementwise |x| of a CPU tensor, as float64.
Tensor abs64(const Tensor& t) {
  std::vector<double> v = values(t);
  for (double& x : v) x = std::fabs(x);
  return Tensor::from_vector(v, t.shape(), DType::Float64);
}

Tensor vec64(const std::vector<double>& v) { return Tensor::from_vector(v, {int64_t(v.size())}, DType::Float64); }

/// Values computed per element (see kElemTol): atol follows the reference's RMS magnitude.
Tol elem_tol(const Tensor& ref) { return Tol{kElemTol * std::max(1e-3, rms(ref)), kElemTol}; }

/// Per-channel sum of |t| over N, H, W of an (N, C, H, W) CPU tensor, times f.
Tensor channel_abs_sum(const Tensor& t, double f = 1.0) {
  const int64_t N = t.size(0), C = t.size(1), HW = t.size(2) * t.size(3);
  const std::vector<double> v = values(t);
  std::vector<double> s(C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < HW; ++k) s[c] += std::fabs(v[(n * C + c) * HW + k]);
  for (double& x : s) x *= f;
  return vec64(s);
}

/// Per-channel sum of |dy * (x - mean_c) * invstd_c|: the terms of dgamma.
Tensor dgamma_abs_terms(const Tensor& dy, const Tensor& x, const std::vector<double>& mean,
                        const std::vector<double>& invstd) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const std::vector<double> d = values(dy), v = values(x);
  std::vector<double> s(C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < HW; ++k) {
        const int64_t i = (n * C + c) * HW + k;
        s[c] += std::fabs(d[i] * (v[i] - mean[c]) * invstd[c]);
      }
  return vec64(s);
}

/// The implementation under test and, for the native one, the layout of its BatchNorm kernels
/// (cuda::BnKernel: auto by shape, or one of the others forced, so that the small cases below run each).
struct BnMode {
  Impl impl;
  cuda::BnKernel kernel;
};

std::string impl_label(const ::testing::TestParamInfo<BnMode>& info) {
  if (info.param.impl == Impl::Library) return "cudnn";
  return info.param.kernel == cuda::BnKernel::Auto ? "native" : std::string("native_") +
                                                                    cuda::bn_kernel_name(info.param.kernel);
}

/// Runs each test once per implementation (and native BatchNorm layout), with new GPU blocks filled with
/// NaN; restores the switches after.
class CudaOpTest : public ::testing::TestWithParam<BnMode> {
 protected:
  void SetUp() override {
    LADNN_REQUIRE_GPU();
    saved_bn_ = cuda::impl(Family::BatchNorm);
    saved_pool_ = cuda::impl(Family::Pool);
    saved_kernel_ = cuda::bn_kernel();
    cuda::set_impl(Family::BatchNorm, GetParam().impl);
    cuda::set_impl(Family::Pool, GetParam().impl);
    cuda::set_bn_kernel(GetParam().kernel);
    nan_fill_.emplace();
  }
  void TearDown() override {
    if (!nan_fill_) return;
    cuda::synchronize();
    nan_fill_.reset();
    cuda::set_impl(Family::BatchNorm, saved_bn_);
    cuda::set_impl(Family::Pool, saved_pool_);
    cuda::set_bn_kernel(saved_kernel_);
  }

 private:
  std::optional<cuda_test::FillNanScope> nan_fill_;
  Impl saved_bn_ = Impl::Library, saved_pool_ = Impl::Library;
  cuda::BnKernel saved_kernel_ = cuda::BnKernel::Auto;
};

// ---- batch norm --------------------------------------------------------------------------------------

enum class Track { None, Both, MeanOnly };

struct BnCase {
  Shape shape;
  double momentum = 0.1, eps = 1e-5;
  bool affine = true;
  Track track = Track::Both;
  std::string name() const {
    std::string s = shape_str(shape) + " momentum " + std::to_string(momentum) + " eps " + std::to_string(eps);
    if (!affine) s += " affine=False";
    if (track == Track::None) s += " no running stats";
    if (track == Track::MeanOnly) s += " running_mean only";
    return s;
  }
};

// Odd sizes (HW = 35: scalar path), HW % 4 == 0 (float4 path), batch 1, HW = 1, no affine, untracked,
// and channels long enough to be split across several blocks (cuda/bnpool_math.h's bn_partition: 8
// chunks of (8, 4, 32, 32)'s 8192 values, 6 uneven ones of (6, 3, 33, 33)'s 6534 on an H100).
const BnCase kBnCases[] = {
    {{8, 4, 32, 32}},
    {{6, 3, 33, 33}, 0.1, 1e-5, false, Track::Both},
    {{2, 3, 5, 7}},
    {{1, 4, 3, 3}},
    {{4, 8, 4, 4}},
    {{3, 5, 1, 1}},
    {{2, 6, 7, 9}, 0.3, 1e-3, false, Track::None},
    {{2, 3, 8, 8}, 0.1, 1e-5, true, Track::MeanOnly},
    {{5, 17, 12, 12}},
    // Longer than one block of cuda::BnKernel::Cluster holds (8,192 values): 2 blocks a cluster (scalar
    // path, 21,780 values) and 3 (float4 path, 36,864).
    {{20, 2, 33, 33}},
    {{9, 3, 64, 64}},
};

// DenseNet-169 at batch 32: the widest early BN (transition 1's norm), the last block's norm5.
const BnCase kBnDenseNet[] = {
    {{32, 256, 56, 56}},
    {{32, 1664, 7, 7}},
};

struct BnInputs {
  Tensor x, gamma, beta, running_mean, running_var;  // float32, CPU
};

BnInputs make_bn_inputs(const BnCase& c, Generator& gen) {
  const int64_t C = c.shape[1];
  BnInputs in;
  // An offset mean (0.5) and std 2 exercise the (x - mean) path; gamma away from 0.
  in.x = Tensor::normal(c.shape, 0.5, 2.0, gen);
  if (c.affine) {
    in.gamma = Tensor::uniform({C}, 0.5, 1.5, gen);
    in.beta = Tensor::uniform({C}, -0.5, 0.5, gen);
  }
  if (c.track != Track::None) in.running_mean = Tensor::normal({C}, 0.0, 1.0, gen);
  if (c.track == Track::Both) in.running_var = Tensor::uniform({C}, 0.5, 2.0, gen);
  return in;
}

void check_forward_train(const BnCase& c, Generator& gen) {
  SCOPED_TRACE(c.name());
  const BnInputs in = make_bn_inputs(c, gen);
  Tensor rm64 = f64(in.running_mean), rv64 = f64(in.running_var);
  const ops::BatchNormForward ref = ops::batch_norm_forward_train(f64(in.x), f64(in.gamma), f64(in.beta), rm64, rv64,
                                                                  c.momentum, c.eps);
  Tensor rm = gpu(in.running_mean), rv = gpu(in.running_var);
  const ops::BatchNormForward out =
      ops::batch_norm_forward_train(gpu(in.x), gpu(in.gamma), gpu(in.beta), rm, rv, c.momentum, c.eps);
  EXPECT_TRUE(out.y.device().is_cuda());
  EXPECT_TRUE(gpu_matches("y", out.y, ref.y, elem_tol(ref.y)));
  // The mean is a channel sum / n: its error is relative to mean|x|.
  const int64_t n = c.shape[0] * c.shape[2] * c.shape[3];
  EXPECT_TRUE(gpu_matches("save_mean", out.save_mean, ref.save_mean, Tol{0, kSumTol},
                          channel_abs_sum(in.x, 1.0 / double(n))));
  EXPECT_TRUE(gpu_matches("save_invstd", out.save_invstd, ref.save_invstd, Tol{0, kSumTol}));
  if (rm.defined()) {
    EXPECT_TRUE(gpu_matches("running_mean", rm, rm64, Tol{kSumTol * std::max(1.0, rms(rm64)), kSumTol}));
  }
  if (rv.defined()) {
    EXPECT_TRUE(gpu_matches("running_var (unbiased)", rv, rv64, Tol{0, kSumTol}));
  }
}

TEST_P(CudaOpTest, BatchNormForwardTrainMatchesCpu) {
  Generator gen(101);
  for (const BnCase& c : kBnCases) check_forward_train(c, gen);
}

// The inference BatchNorm-ReLU-average pool (a DenseNet transition's norm, relu and pool) as one op:
// with both families native one kernel with exactly the bits of the two native ops in sequence (each
// within tolerance of float64 on the CPU); with either on cuDNN, those two ops. A 2x2 stride-2 pool (the
// transitions') over even and odd maps, and a padded 3x3 without the padding in the divisor; with and
// without the ReLU and the affine parameters.
TEST_P(CudaOpTest, BatchNormReluAvgPoolEvalEqualsTheTwoOps) {
  Generator gen(110);
  struct Case {
    Shape shape;
    int64_t k, s, pad;
    bool include_pad, relu, affine;
  };
  const Case cases[] = {{{2, 6, 8, 8}, 2, 2, 0, true, true, true},
                        {{3, 5, 7, 9}, 2, 2, 0, true, false, true},
                        {{2, 4, 9, 8}, 3, 2, 1, false, true, false}};
  auto moved = [](const ops::BnEval& bn, Device device, DType dtype) {
    ops::BnEval out = bn;
    for (Tensor* t : {&out.gamma, &out.beta, &out.running_mean, &out.running_var})
      if (t->defined()) *t = t->to(dtype).to(device);
    return out;
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.shape) + " window " + std::to_string(c.k));
    ops::Pool2dParams p;
    p.kernel_h = p.kernel_w = c.k;
    p.stride_h = p.stride_w = c.s;
    p.pad_h = p.pad_w = c.pad;
    p.count_include_pad = c.include_pad;
    const Tensor x = Tensor::normal(c.shape, 0.5, 2.0, gen);
    const ops::BnEval bn = test::random_bn_eval(c.shape[1], c.relu ? ops::BnAct::Relu : ops::BnAct::None, gen,
                                                DType::Float32, c.affine);
    const ops::BnEval gbn = moved(bn, Device::cuda(), DType::Float32);
    const Tensor gx = gpu(x);
    const Tensor fused = cuda_test::to_cpu(ops::bn_avg_pool2d_eval(gx, gbn, p));
    const Tensor two = cuda_test::to_cpu(
        ops::avg_pool2d_forward(ops::batch_norm_forward_eval(gx, gbn.gamma, gbn.beta, gbn.running_mean,
                                                             gbn.running_var, gbn.eps, gbn.act),
                                p));
    ASSERT_EQ(fused.shape(), two.shape());
    if (GetParam().impl == Impl::Native) {
      const std::vector<double> a = fused.to_vector(), b = two.to_vector();
      for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "output " << i;
    }
    const Tensor ref = ops::bn_avg_pool2d_eval(f64(x), moved(bn, Device::cpu(), DType::Float64), p);
    EXPECT_TRUE(gpu_matches("y", gpu(fused), ref, elem_tol(ref)));
  }
}

// The training BatchNorm-ReLU-average pool (ops::bn_avg_pool2d_train, a transition's): with LADNN_POOL
// native, one kernel with the same bits as the native BatchNorm given the same statistics followed by the
// native pool (pooled map, saved and running statistics); with cuDNN's pool, the two ops. Either way
// against the CPU in float64, forward and backward, on a channel prefix read in place (batch > 1), with
// the statistics given or computed, 2x2/2 on odd sizes and an overlapping padded window. The backward of
// the tiling 2x2/2 runs from the pooled gradient (bn_pool_grad_partial, bn_pool_backward_dx); the padded
// window's composes the pool's backward and the BatchNorm's.
TEST_P(CudaOpTest, BatchNormReluAvgPoolTrainEqualsTheTwoOps) {
  Generator gen(112);
  struct Case {
    Shape full;
    int64_t C, k, s, pad;
    bool include_pad, relu, given;
  };
  const Case cases[] = {{{2, 9, 8, 8}, 6, 2, 2, 0, true, true, true},
                        {{3, 5, 7, 9}, 5, 2, 2, 0, true, false, false},
                        {{2, 7, 9, 8}, 4, 3, 2, 1, false, true, false},
                        {{1, 6, 6, 6}, 6, 2, 2, 0, true, true, true}};
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.full) + " channels " + std::to_string(c.C) + " window " + std::to_string(c.k));
    ops::Pool2dParams p;
    p.kernel_h = p.kernel_w = c.k;
    p.stride_h = p.stride_w = c.s;
    p.pad_h = p.pad_w = c.pad;
    p.count_include_pad = c.include_pad;
    const ops::BnAct act = c.relu ? ops::BnAct::Relu : ops::BnAct::None;
    const Tensor host = Tensor::normal(c.full, 0.5, 2.0, gen);
    const Tensor x = gpu(host).narrow(1, 0, c.C), x64 = f64(host).narrow(1, 0, c.C).contiguous();
    const Tensor g = Tensor::uniform({c.C}, 0.5, 1.5, gen), b = Tensor::uniform({c.C}, -0.5, 0.5, gen);
    const Tensor rm0 = Tensor::normal({c.C}, 0, 1, gen), rv0 = Tensor::uniform({c.C}, 0.5, 2, gen);
    Tensor rm = gpu(rm0), rv = gpu(rv0), rm2 = gpu(rm0), rv2 = gpu(rv0), rm64 = f64(rm0), rv64 = f64(rv0);
    const Tensor stats = ops::batch_norm_batch_stats(x);
    const ops::BatchNormForward f =
        ops::bn_avg_pool2d_train(x, gpu(g), gpu(b), rm, rv, 0.1, 1e-5, act, p, c.given ? stats : Tensor());
    ASSERT_EQ(f.relu_from_x, c.relu);
    const ops::BatchNormForward n =
        ops::batch_norm_forward_train(x, gpu(g), gpu(b), rm2, rv2, 0.1, 1e-5, act, stats);
    const Tensor two = ops::avg_pool2d_forward(n.y, p);
    ASSERT_EQ(f.y.shape(), two.shape());
    const std::vector<std::tuple<const char*, Tensor, Tensor>> same{
        {"y", f.y, two},
        {"save_mean", f.save_mean, n.save_mean},
        {"save_invstd", f.save_invstd, n.save_invstd},
        {"running_mean", rm, rm2},
        {"running_var", rv, rv2}};
    if (GetParam().impl == Impl::Native)  // the pool's kernel is ours: the same bits
      for (const auto& [what, a, bb] : same)
        EXPECT_TRUE(gpu_equals(what, a, f64(bb.to(Device::cpu())))) << what;
    const ops::BatchNormForward ref =
        ops::bn_avg_pool2d_train(x64, f64(g), f64(b), rm64, rv64, 0.1, 1e-5, act, p);
    EXPECT_TRUE(gpu_matches("y", f.y, ref.y, elem_tol(ref.y)));
    EXPECT_TRUE(gpu_matches("save_invstd", f.save_invstd, ref.save_invstd, Tol{0, kSumTol}));
    EXPECT_TRUE(gpu_matches("running_var (unbiased)", rv, rv64, Tol{0, kSumTol}));

    const Tensor dy = Tensor::normal(f.y.shape(), 0, 1, gen);
    const ops::BatchNormGrads got =
        ops::bn_avg_pool2d_backward_train(gpu(dy), x, gpu(g), gpu(b), f.save_mean, f.save_invstd, act, p);
    const ops::BatchNormGrads want = ops::bn_avg_pool2d_backward_train(
        f64(dy), x64, f64(g), f64(b), ref.save_mean, ref.save_invstd, act, p);
    EXPECT_TRUE(gpu_matches("dx", got.dx, want.dx, elem_tol(want.dx)));
    // dbeta sums the pooled gradient spread over the windows: its error is relative to those terms' sum.
    EXPECT_TRUE(gpu_matches("dbeta", got.dbeta, want.dbeta, Tol{0, kSumTol},
                            channel_abs_sum(ops::avg_pool2d_backward(f64(dy), x64.shape(), p))));
  }
}

// An empty batch through the transition's fused backward: the CPU's answer (dgamma and dbeta zero, dx
// empty), not a launch of a zero-block grid (the GPU path's dx kernel has a block per plane).
TEST_P(CudaOpTest, BatchNormReluAvgPoolBackwardOfAnEmptyBatch) {
  ops::Pool2dParams p;
  p.kernel_h = p.kernel_w = p.stride_h = p.stride_w = 2;
  const Tensor x = Tensor::zeros({0, 4, 4, 4}), dy = Tensor::zeros({0, 4, 2, 2});
  const Tensor g = Tensor::full({4}, 1.5), b = Tensor::full({4}, 0.25);
  const Tensor mean = Tensor::zeros({4}), invstd = Tensor::ones({4});
  const ops::BatchNormGrads want =
      ops::bn_avg_pool2d_backward_train(dy, x, g, b, mean, invstd, ops::BnAct::Relu, p);
  const ops::BatchNormGrads got = ops::bn_avg_pool2d_backward_train(
      gpu(dy), gpu(x), gpu(g), gpu(b), gpu(mean), gpu(invstd), ops::BnAct::Relu, p);
  EXPECT_EQ(got.dx.shape(), x.shape());
  EXPECT_TRUE(gpu_equals("dgamma", got.dgamma, f64(want.dgamma)));
  EXPECT_TRUE(gpu_equals("dbeta", got.dbeta, f64(want.dbeta)));
}

// The stem's training BatchNorm-ReLU-max pool (ops::bn_max_pool2d_train): with LADNN_POOL native one
// kernel, the same bits and indices as the native BatchNorm given the same statistics followed by the
// native max pool; against the CPU in float64 (indices exactly), forward and backward.
TEST_P(CudaOpTest, BatchNormReluMaxPoolTrainEqualsTheTwoOps) {
  Generator gen(113);
  for (const Shape& shape : {Shape{2, 5, 12, 11}, Shape{1, 4, 9, 9}}) {
    SCOPED_TRACE(shape_str(shape));
    ops::Pool2dParams p;
    p.kernel_h = p.kernel_w = 3;
    p.stride_h = p.stride_w = 2;
    p.pad_h = p.pad_w = 1;
    const int64_t C = shape[1];
    const Tensor host = Tensor::normal(shape, 0.5, 2.0, gen);
    const Tensor x = gpu(host), x64 = f64(host);
    const Tensor g = Tensor::uniform({C}, 0.5, 1.5, gen), b = Tensor::uniform({C}, -0.5, 0.5, gen);
    b.narrow(0, 0, 1).fill_(-2.5);  // channel 0 mostly rectified: whole windows of zeros (ties)
    Tensor rm = gpu(Tensor::zeros({C})), rv = gpu(Tensor::ones({C})), rm2 = gpu(Tensor::zeros({C})),
           rv2 = gpu(Tensor::ones({C})), rm64 = Tensor::zeros({C}, DType::Float64),
           rv64 = Tensor::ones({C}, DType::Float64);
    const Tensor stats = ops::batch_norm_batch_stats(x);
    const ops::BnMaxPoolForward f =
        ops::bn_max_pool2d_train(x, gpu(g), gpu(b), rm, rv, 0.1, 1e-5, ops::BnAct::Relu, p, stats);
    const ops::BatchNormForward n =
        ops::batch_norm_forward_train(x, gpu(g), gpu(b), rm2, rv2, 0.1, 1e-5, ops::BnAct::Relu, stats);
    const ops::MaxPoolForward m = ops::max_pool2d_forward(n.y, p);
    if (GetParam().impl == Impl::Native) {
      EXPECT_TRUE(gpu_equals("y", f.bn.y, f64(m.y.to(Device::cpu()))));
      EXPECT_EQ(f.indices.to_vector(), m.indices.to_vector());
      EXPECT_TRUE(gpu_equals("running_var", rv, f64(rv2.to(Device::cpu()))));
    }
    const ops::BnMaxPoolForward ref =
        ops::bn_max_pool2d_train(x64, f64(g), f64(b), rm64, rv64, 0.1, 1e-5, ops::BnAct::Relu, p);
    EXPECT_TRUE(gpu_matches("y", f.bn.y, ref.bn.y, elem_tol(ref.bn.y)));
    EXPECT_TRUE(gpu_matches("running_var (unbiased)", rv, rv64, Tol{0, kSumTol}));
    const Tensor dy = Tensor::normal(f.bn.y.shape(), 0, 1, gen);
    const ops::BatchNormGrads got = ops::bn_max_pool2d_backward_train(
        gpu(dy), f.indices, x, gpu(g), gpu(b), f.bn.save_mean, f.bn.save_invstd, ops::BnAct::Relu, p);
    const ops::BatchNormGrads want = ops::bn_max_pool2d_backward_train(
        f64(dy), ref.indices, x64, f64(g), f64(b), ref.bn.save_mean, ref.bn.save_invstd, ops::BnAct::Relu, p);
    EXPECT_TRUE(gpu_matches("dx", got.dx, want.dx, elem_tol(want.dx)));
  }
}

TEST_P(CudaOpTest, BatchNormForwardEvalMatchesCpu) {
  Generator gen(102);
  for (const BnCase& c0 : kBnCases) {
    BnCase c = c0;
    c.track = Track::Both;  // eval needs running statistics
    SCOPED_TRACE(c.name());
    const BnInputs in = make_bn_inputs(c, gen);
    const Tensor ref = ops::batch_norm_forward_eval(f64(in.x), f64(in.gamma), f64(in.beta), f64(in.running_mean),
                                                    f64(in.running_var), c.eps);
    const Tensor y = ops::batch_norm_forward_eval(gpu(in.x), gpu(in.gamma), gpu(in.beta), gpu(in.running_mean),
                                                  gpu(in.running_var), c.eps);
    EXPECT_TRUE(gpu_matches("y", y, ref, elem_tol(ref)));
  }
}

void check_backward_train(const BnCase& c, Generator& gen) {
  SCOPED_TRACE(c.name());
  const BnInputs in = make_bn_inputs(c, gen);
  const Tensor dy = Tensor::normal(c.shape, 0.0, 1.0, gen);
  // Saved statistics from a float64 forward (with this case's eps: cuDNN's backward must use the saved
  // invstd as given, since the backward API carries no eps), rounded to float32 once and used by both.
  Tensor no_rm, no_rv;
  const ops::BatchNormForward fwd =
      ops::batch_norm_forward_train(f64(in.x), f64(in.gamma), f64(in.beta), no_rm, no_rv, c.momentum, c.eps);
  const Tensor save_mean = fwd.save_mean.to(DType::Float32), save_invstd = fwd.save_invstd.to(DType::Float32);
  const ops::BatchNormGrads ref =
      ops::batch_norm_backward_train(f64(dy), f64(in.x), f64(in.gamma), f64(save_mean), f64(save_invstd));
  const ops::BatchNormGrads out =
      ops::batch_norm_backward_train(gpu(dy), gpu(in.x), gpu(in.gamma), gpu(save_mean), gpu(save_invstd));
  EXPECT_TRUE(gpu_matches("dx", out.dx, ref.dx, elem_tol(ref.dx)));
  EXPECT_TRUE(gpu_matches("dbeta", out.dbeta, ref.dbeta, Tol{0, kSumTol}, channel_abs_sum(dy)));
  EXPECT_TRUE(gpu_matches("dgamma", out.dgamma, ref.dgamma, Tol{0, kSumTol},
                          dgamma_abs_terms(dy, in.x, values(save_mean), values(save_invstd))));
}

TEST_P(CudaOpTest, BatchNormBackwardTrainMatchesCpu) {
  Generator gen(103);
  for (const BnCase& c : kBnCases) check_backward_train(c, gen);
}

TEST_P(CudaOpTest, BatchNormBackwardEvalMatchesCpu) {
  Generator gen(104);
  for (const BnCase& c0 : kBnCases) {
    BnCase c = c0;
    c.track = Track::Both;
    SCOPED_TRACE(c.name());
    const BnInputs in = make_bn_inputs(c, gen);
    const Tensor dy = Tensor::normal(c.shape, 0.0, 1.0, gen);
    const ops::BatchNormGrads ref = ops::batch_norm_backward_eval(f64(dy), f64(in.x), f64(in.gamma),
                                                                  f64(in.running_mean), f64(in.running_var), c.eps);
    const ops::BatchNormGrads out = ops::batch_norm_backward_eval(gpu(dy), gpu(in.x), gpu(in.gamma),
                                                                  gpu(in.running_mean), gpu(in.running_var), c.eps);
    EXPECT_TRUE(gpu_matches("dx", out.dx, ref.dx, elem_tol(ref.dx)));
    EXPECT_TRUE(gpu_matches("dbeta", out.dbeta, ref.dbeta, Tol{0, kSumTol}, channel_abs_sum(dy)));
    std::vector<double> invstd = values(in.running_var);
    for (double& v : invstd) v = 1.0 / std::sqrt(v + c.eps);
    EXPECT_TRUE(gpu_matches("dgamma", out.dgamma, ref.dgamma, Tol{0, kSumTol},
                            dgamma_abs_terms(dy, in.x, values(in.running_mean), invstd)));
  }
}

// The fused BatchNorm-ReLU against the CPU's in float64, both modes, forward and backward (with
// either implementation: native fuses, cuDNN composes). The backward's mask is one float32 tensor
// given to both devices, so they mask the same elements.
TEST_P(CudaOpTest, BatchNormReluMatchesCpu) {
  Generator gen(106);
  for (const BnCase& c0 : kBnCases) {
    BnCase c = c0;
    c.track = Track::Both;
    SCOPED_TRACE(c.name());
    const BnInputs in = make_bn_inputs(c, gen);
    Tensor rm64 = f64(in.running_mean), rv64 = f64(in.running_var);
    const ops::BatchNormForward ref = ops::batch_norm_forward_train(
        f64(in.x), f64(in.gamma), f64(in.beta), rm64, rv64, c.momentum, c.eps, ops::BnAct::Relu);
    Tensor rm = gpu(in.running_mean), rv = gpu(in.running_var);
    const ops::BatchNormForward out = ops::batch_norm_forward_train(gpu(in.x), gpu(in.gamma), gpu(in.beta), rm, rv,
                                                                    c.momentum, c.eps, ops::BnAct::Relu);
    EXPECT_TRUE(gpu_matches("y (train)", out.y, ref.y, elem_tol(ref.y)));
    EXPECT_TRUE(gpu_matches("save_invstd", out.save_invstd, ref.save_invstd, Tol{0, kSumTol}));

    const Tensor ye_ref = ops::batch_norm_forward_eval(f64(in.x), f64(in.gamma), f64(in.beta), f64(in.running_mean),
                                                       f64(in.running_var), c.eps, ops::BnAct::Relu);
    const Tensor ye = ops::batch_norm_forward_eval(gpu(in.x), gpu(in.gamma), gpu(in.beta), gpu(in.running_mean),
                                                   gpu(in.running_var), c.eps, ops::BnAct::Relu);
    EXPECT_TRUE(gpu_matches("y (eval)", ye, ye_ref, elem_tol(ye_ref)));

    const Tensor dy = Tensor::normal(c.shape, 0.0, 1.0, gen);
    const Tensor mask = ref.y.to(DType::Float32);  // the forward's output: about half the values are 0
    const Tensor save_mean = ref.save_mean.to(DType::Float32), save_invstd = ref.save_invstd.to(DType::Float32);
    const ops::BatchNormGrads gref = ops::batch_norm_backward_train(f64(dy), f64(in.x), f64(in.gamma), f64(save_mean),
                                                                    f64(save_invstd), f64(mask));
    const ops::BatchNormGrads g = ops::batch_norm_backward_train(gpu(dy), gpu(in.x), gpu(in.gamma), gpu(save_mean),
                                                                 gpu(save_invstd), gpu(mask));
    // The masked gradient's sums are bounded by the unmasked ones' absolute terms.
    EXPECT_TRUE(gpu_matches("dx (train)", g.dx, gref.dx, elem_tol(gref.dx)));
    EXPECT_TRUE(gpu_matches("dbeta (train)", g.dbeta, gref.dbeta, Tol{0, kSumTol}, channel_abs_sum(dy)));
    EXPECT_TRUE(gpu_matches("dgamma (train)", g.dgamma, gref.dgamma, Tol{0, kSumTol},
                            dgamma_abs_terms(dy, in.x, values(save_mean), values(save_invstd))));

    const ops::BatchNormGrads geref = ops::batch_norm_backward_eval(
        f64(dy), f64(in.x), f64(in.gamma), f64(in.running_mean), f64(in.running_var), c.eps, f64(mask));
    const ops::BatchNormGrads ge = ops::batch_norm_backward_eval(
        gpu(dy), gpu(in.x), gpu(in.gamma), gpu(in.running_mean), gpu(in.running_var), c.eps, gpu(mask));
    EXPECT_TRUE(gpu_matches("dx (eval)", ge.dx, geref.dx, elem_tol(geref.dx)));
    EXPECT_TRUE(gpu_matches("dbeta (eval)", ge.dbeta, geref.dbeta, Tol{0, kSumTol}, channel_abs_sum(dy)));
  }
}

// Eval mode on a channel prefix of a bigger buffer (a dense block's, at inference): read in place by the
// native kernel under either setting (cuDNN's descriptors are packed), equal to the CPU's.
TEST_P(CudaOpTest, BatchNormEvalReadsAChannelPrefix) {
  Generator gen(107);
  for (const Shape& full : {Shape{3, 12, 8, 8}, Shape{2, 9, 5, 7}, Shape{1, 40, 7, 7}}) {
    SCOPED_TRACE(shape_str(full));
    const int64_t C = full[1] - 3;
    const Tensor buf = Tensor::normal(full, 0.5, 2.0, gen);
    const Tensor g = Tensor::uniform({C}, 0.5, 1.5, gen), b = Tensor::uniform({C}, -0.5, 0.5, gen);
    const Tensor rm = Tensor::normal({C}, 0, 1, gen), rv = Tensor::uniform({C}, 0.5, 2, gen);
    const Tensor gbuf = gpu(buf);
    for (ops::BnAct act : {ops::BnAct::None, ops::BnAct::Relu}) {
      const Tensor ref = ops::batch_norm_forward_eval(f64(buf.narrow(1, 0, C)), f64(g), f64(b), f64(rm), f64(rv),
                                                      1e-5, act);
      const Tensor y = ops::batch_norm_forward_eval(gbuf.narrow(1, 0, C), gpu(g), gpu(b), gpu(rm), gpu(rv), 1e-5, act);
      EXPECT_TRUE(gpu_matches(act == ops::BnAct::Relu ? "y (relu)" : "y", y, ref, elem_tol(ref)));
    }
  }
}

// Training on a channel prefix of a bigger buffer (the training dense block's): the native kernels read
// it in place (under LADNN_BN=cudnn too) and give the same bits as on a packed copy — forward (y, saved
// and running statistics) and backward (dx, dgamma, dbeta), float4 and scalar paths.
TEST_P(CudaOpTest, BatchNormTrainingReadsAChannelPrefix) {
  const cuda::Impl saved = cuda::impl(cuda::Family::BatchNorm);
  Generator gen(108);
  for (const Shape& full : {Shape{3, 12, 8, 8}, Shape{2, 9, 5, 7}, Shape{1, 40, 7, 7}}) {
    SCOPED_TRACE(shape_str(full));
    const int64_t C = full[1] - 3;
    const Tensor buf = gpu(Tensor::normal(full, 0.5, 2.0, gen));
    const Tensor prefix = buf.narrow(1, 0, C), packed = prefix.contiguous();
    const Tensor g = gpu(Tensor::uniform({C}, 0.5, 1.5, gen)), b = gpu(Tensor::uniform({C}, -0.5, 0.5, gen));
    const Tensor dy = gpu(Tensor::normal(packed.shape(), 0, 1, gen));
    Tensor rm1 = gpu(Tensor::zeros({C})), rv1 = gpu(Tensor::ones({C})), rm2 = gpu(Tensor::zeros({C})),
           rv2 = gpu(Tensor::ones({C}));
    cuda::set_impl(cuda::Family::BatchNorm, cuda::Impl::Native);  // the packed run too: same kernels
    const auto a = ops::batch_norm_forward_train(prefix, g, b, rm1, rv1, 0.1, 1e-5, ops::BnAct::Relu);
    const auto p = ops::batch_norm_forward_train(packed, g, b, rm2, rv2, 0.1, 1e-5, ops::BnAct::Relu);
    const auto ga = ops::batch_norm_backward_train(dy, prefix, g, a.save_mean, a.save_invstd, a.y);
    const auto gp = ops::batch_norm_backward_train(dy, packed, g, p.save_mean, p.save_invstd, p.y);
    cuda::set_impl(cuda::Family::BatchNorm, saved);
    const std::vector<std::tuple<const char*, Tensor, Tensor>> pairs{
        {"y", a.y, p.y},           {"save_mean", a.save_mean, p.save_mean}, {"save_invstd", a.save_invstd, p.save_invstd},
        {"running_var", rv1, rv2}, {"dx", ga.dx, gp.dx},                    {"dgamma", ga.dgamma, gp.dgamma},
        {"dbeta", ga.dbeta, gp.dbeta}};
    for (const auto& [what, x, y] : pairs)
      EXPECT_TRUE(cuda_test::gpu_equals(what, x, y.to(Device::cpu()).to(DType::Float64))) << what;
  }
}

// dx_into on the GPU (the training dense block's G): the native backward adds dx into a channel prefix
// with the same bits as the native backward's returned dx added by ops::add_ (adding in is native under
// LADNN_BN=cudnn too; at batch 1 the prefix is contiguous and the plain call would run cuDNN, so the
// reference is forced native), float4 and scalar paths, and matches the CPU.
TEST_P(CudaOpTest, BatchNormBackwardAddsDxIntoAChannelPrefix) {
  Generator gen(109);
  // (12, 6, 40, 40): 19,200 values a channel, two blocks a cluster under cuda::BnKernel::Cluster.
  for (const Shape& full :
       {Shape{3, 12, 8, 8}, Shape{2, 9, 5, 7}, Shape{1, 40, 7, 7}, Shape{12, 6, 40, 40}}) {
    SCOPED_TRACE(shape_str(full));
    const int64_t C = full[1] - 3;
    const Tensor cbuf = Tensor::normal(full, 0.5, 2.0, gen);
    const Tensor buf = gpu(cbuf);
    const Tensor prefix = buf.narrow(1, 0, C);
    const Tensor g = Tensor::uniform({C}, 0.5, 1.5, gen), b = Tensor::uniform({C}, -0.5, 0.5, gen);
    const Tensor dy = Tensor::normal(prefix.shape(), 0, 1, gen);
    const Tensor G0 = Tensor::normal({full[0], full[1] + 2, full[2], full[3]}, 0, 1, gen);
    Tensor rm = gpu(Tensor::zeros({C})), rv = gpu(Tensor::ones({C}));
    const auto f = ops::batch_norm_forward_train(prefix, gpu(g), gpu(b), rm, rv, 0.1, 1e-5, ops::BnAct::Relu);
    Tensor G_ref = gpu(G0), G = gpu(G0);
    const cuda::Impl saved = cuda::impl(cuda::Family::BatchNorm);
    cuda::set_impl(cuda::Family::BatchNorm, cuda::Impl::Native);
    const auto ref = ops::batch_norm_backward_train(gpu(dy), prefix, gpu(g), f.save_mean, f.save_invstd, f.y);
    cuda::set_impl(cuda::Family::BatchNorm, saved);
    Tensor head = G_ref.narrow(1, 0, C);
    ops::add_(head, ref.dx);
    const auto got =
        ops::batch_norm_backward_train(gpu(dy), prefix, gpu(g), f.save_mean, f.save_invstd, f.y, G.narrow(1, 0, C));
    EXPECT_FALSE(got.dx.defined());
    EXPECT_TRUE(cuda_test::gpu_equals("G", G, G_ref.to(Device::cpu()).to(DType::Float64)));
    EXPECT_TRUE(cuda_test::gpu_equals("dgamma", got.dgamma, ref.dgamma.to(Device::cpu()).to(DType::Float64)));
    // Against the CPU in float64 (same forward statistics, from the GPU's y mask and saved values).
    Tensor G64 = f64(G0);
    const Tensor y64 = f.y.to(Device::cpu()).to(DType::Float64);
    ops::batch_norm_backward_train(f64(dy), f64(cbuf.narrow(1, 0, C)), f64(g),
                                   f.save_mean.to(Device::cpu()).to(DType::Float64),
                                   f.save_invstd.to(Device::cpu()).to(DType::Float64), y64, G64.narrow(1, 0, C));
    EXPECT_TRUE(gpu_matches("G against the CPU", G, G64, elem_tol(G64)));
  }
}

// The fused ReLU's mask recomputed from x on the GPU (BnReluFromX, the training dense block's norm1):
// the native forward says it may be (relu_from_x), and the backward then gives the bits of the mask read
// from y, float4 and scalar paths, returned or added into a buffer; cuDNN's forward (a packed input
// under LADNN_BN=cudnn) says it may not. On the edge: a first forward gives the statistics, then each
// channel's beta is -fl((x_k - mean) * scale) for one value x_k, which the forward's fused multiply-add
// leaves at the product's rounding error — a recomputation that differs from the forward's arithmetic
// (the finalize's scale, the fma) decides it differently.
TEST_P(CudaOpTest, BatchNormReluMaskFromXEqualsTheMaskFromY) {
  Generator gen(110);
  for (const Shape& full : {Shape{3, 12, 8, 8}, Shape{2, 9, 5, 7}, Shape{1, 40, 7, 7}}) {
    SCOPED_TRACE(shape_str(full));
    const int64_t C = full[1] - 3, HW = full[2] * full[3];
    const Tensor host = Tensor::normal(full, 0.5, 2.0, gen);
    const Tensor buf = gpu(host);
    const Tensor prefix = buf.narrow(1, 0, C);
    const Tensor g = gpu(Tensor::uniform({C}, 0.5, 1.5, gen));
    const Tensor dy = gpu(Tensor::normal(prefix.shape(), 0, 1, gen));
    Tensor rm = gpu(Tensor::zeros({C})), rv = gpu(Tensor::ones({C}));
    const cuda::Impl saved = cuda::impl(cuda::Family::BatchNorm);
    cuda::set_impl(cuda::Family::BatchNorm, cuda::Impl::Native);
    const auto first = ops::batch_norm_forward_train(prefix, g, Tensor(), rm, rv, 0.1, 1e-5, ops::BnAct::Relu);
    const std::vector<double> mu = values(first.save_mean), is = values(first.save_invstd), gv = values(g);
    std::vector<double> bv(C);
    for (int64_t c = 0; c < C; ++c) {
      const float xk = host.data<float>()[c * HW + 3];  // sample 0, value 3 of channel c
      const float scale = cuda::math::bn_train_scale(float(gv[c]), float(is[c]));
      bv[c] = -((xk - float(mu[c])) * scale);
    }
    const Tensor b = gpu(Tensor::from_vector(bv, {C}, DType::Float32));
    const auto f = ops::batch_norm_forward_train(prefix, g, b, rm, rv, 0.1, 1e-5, ops::BnAct::Relu);
    const auto ref = ops::batch_norm_backward_train(dy, prefix, g, f.save_mean, f.save_invstd, f.y);
    cuda::set_impl(cuda::Family::BatchNorm, saved);
    ASSERT_TRUE(f.relu_from_x);
    const auto got = ops::batch_norm_backward_train(dy, prefix, g, f.save_mean, f.save_invstd, Tensor(), Tensor(),
                                                    ops::BnReluFromX{true, b});
    EXPECT_TRUE(cuda_test::gpu_equals("dx", got.dx, ref.dx.to(Device::cpu()).to(DType::Float64)));
    EXPECT_TRUE(cuda_test::gpu_equals("dgamma", got.dgamma, ref.dgamma.to(Device::cpu()).to(DType::Float64)));
    EXPECT_TRUE(cuda_test::gpu_equals("dbeta", got.dbeta, ref.dbeta.to(Device::cpu()).to(DType::Float64)));
    Tensor G = gpu(Tensor::zeros({full[0], full[1], full[2], full[3]}));
    ops::batch_norm_backward_train(dy, prefix, g, f.save_mean, f.save_invstd, Tensor(), G.narrow(1, 0, C),
                                   ops::BnReluFromX{true, b});
    EXPECT_TRUE(cuda_test::gpu_equals("dx added in", G.narrow(1, 0, C).contiguous(),
                                      ref.dx.to(Device::cpu()).to(DType::Float64)));
  }
  if (GetParam().impl == cuda::Impl::Library) {
    const Tensor x = gpu(Tensor::normal({2, 3, 4, 4}, 0, 1, gen));
    Tensor rm = gpu(Tensor::zeros({3})), rv = gpu(Tensor::ones({3}));
    const auto f = ops::batch_norm_forward_train(x, gpu(Tensor::ones({3})), gpu(Tensor::zeros({3})), rm, rv, 0.1,
                                                 1e-5, ops::BnAct::Relu);
    EXPECT_FALSE(f.relu_from_x) << "cuDNN's normalisation cannot be redone bit for bit";
  }
}

// Batch statistics computed once (ops::batch_norm_batch_stats, DenseBlock's table): on the GPU, from a
// channel slice of a wider buffer read in place, against the CPU's float64 statistics; under the
// parameter's layout (the split path's partial states and merge, or a block per channel). Then the
// training forward given them (one native pass, under LADNN_BN=cudnn too) against the CPU forward given
// the CPU's statistics, against the GPU forward that reduces x itself, and with the ReLU's mask
// recomputed from x by a backward (relu_from_x) giving the same bits as the mask read from y.
// Float4 (HW = 64, 1024) and scalar (HW = 35, 49) paths, batch 1.
TEST_P(CudaOpTest, BatchNormGivenBatchStatisticsMatchCpu) {
  Generator gen(111);
  for (const Shape& full : {Shape{3, 12, 8, 8}, Shape{2, 9, 5, 7}, Shape{1, 40, 7, 7}, Shape{8, 6, 32, 32}}) {
    SCOPED_TRACE(shape_str(full));
    const int64_t C = full[1] - 3, n = full[0] * full[2] * full[3];
    const Tensor host = Tensor::normal(full, 0.5, 2.0, gen);
    const Tensor slice = gpu(host).narrow(1, 1, C), ref_slice = f64(host).narrow(1, 1, C).contiguous();
    const Tensor s = ops::batch_norm_batch_stats(slice), s64 = ops::batch_norm_batch_stats(ref_slice);
    ASSERT_TRUE(s.device().is_cuda());
    auto column = [C](const Tensor& t, int64_t k) {
      return t.to(Device::cpu()).narrow(1, k, 1).contiguous().reshape({C});
    };
    // The mean is a channel sum / n (error relative to mean|x|); the variance a sum of squares / n
    // (positive terms: relative to itself).
    EXPECT_TRUE(gpu_matches("mean", column(s, 0), column(s64, 0), Tol{0, kSumTol},
                            channel_abs_sum(ref_slice, 1.0 / double(n))));
    EXPECT_TRUE(gpu_matches("variance", column(s, 1), column(s64, 1), Tol{0, kSumTol}));

    const Tensor g = Tensor::uniform({C}, 0.5, 1.5, gen), b = Tensor::uniform({C}, -0.5, 0.5, gen);
    const Tensor rm0 = Tensor::normal({C}, 0, 1, gen), rv0 = Tensor::uniform({C}, 0.5, 2, gen);
    Tensor rm64 = f64(rm0), rv64 = f64(rv0);
    const auto ref = ops::batch_norm_forward_train(ref_slice, f64(g), f64(b), rm64, rv64, 0.1, 1e-5,
                                                   ops::BnAct::Relu, s64);
    Tensor rm = gpu(rm0), rv = gpu(rv0), rm_own = gpu(rm0), rv_own = gpu(rv0);
    const auto out =
        ops::batch_norm_forward_train(slice, gpu(g), gpu(b), rm, rv, 0.1, 1e-5, ops::BnAct::Relu, s);
    EXPECT_TRUE(gpu_matches("y", out.y, ref.y, elem_tol(ref.y)));
    EXPECT_TRUE(gpu_matches("save_mean", out.save_mean, ref.save_mean, Tol{0, kSumTol},
                            channel_abs_sum(ref_slice, 1.0 / double(n))));
    EXPECT_TRUE(gpu_matches("save_invstd", out.save_invstd, ref.save_invstd, Tol{0, kSumTol}));
    EXPECT_TRUE(gpu_matches("running_mean", rm, rm64, Tol{kSumTol * std::max(1.0, rms(rm64)), kSumTol}));
    EXPECT_TRUE(gpu_matches("running_var (unbiased)", rv, rv64, Tol{0, kSumTol}));
    // The GPU's own reduction: the same statistics up to the order of the sums.
    const auto own =
        ops::batch_norm_forward_train(slice, gpu(g), gpu(b), rm_own, rv_own, 0.1, 1e-5, ops::BnAct::Relu);
    EXPECT_TRUE(gpu_matches("y against the GPU's own statistics", out.y, f64(own.y.to(Device::cpu())),
                            elem_tol(ref.y)));
    ASSERT_TRUE(out.relu_from_x);
    const Tensor dy = gpu(Tensor::normal(out.y.shape(), 0, 1, gen));
    const cuda::Impl saved = cuda::impl(cuda::Family::BatchNorm);
    cuda::set_impl(cuda::Family::BatchNorm, cuda::Impl::Native);  // (cuDNN's backward is another sum order)
    const auto from_y =
        ops::batch_norm_backward_train(dy, slice, gpu(g), out.save_mean, out.save_invstd, out.y);
    cuda::set_impl(cuda::Family::BatchNorm, saved);
    const auto from_x = ops::batch_norm_backward_train(dy, slice, gpu(g), out.save_mean, out.save_invstd,
                                                       Tensor(), Tensor(), ops::BnReluFromX{true, gpu(b)});
    EXPECT_TRUE(gpu_equals("dx, mask from x", from_x.dx, f64(from_y.dx.to(Device::cpu()))));
    EXPECT_TRUE(gpu_equals("dgamma, mask from x", from_x.dgamma, f64(from_y.dgamma.to(Device::cpu()))));
  }
}

// A folded norm1 (LADNN_NORM1_FOLD): batch_norm_record_train is the given-statistics forward without its
// map — the same save_mean, save_invstd, running statistics and fresh table rows, bit for bit — and
// batch_norm_map_saved gives that forward's y from what it saved, bit for bit, whichever of the native
// map kernels the mode gives the forward (plane, by channel; under LADNN_BN=cudnn the given forward is
// native too). x a channel slice read in place; float4 and scalar planes; ReLU or not.
TEST_P(CudaOpTest, BatchNormRecordThenMapSavedIsTheGivenForward) {
  Generator gen(112);
  for (const Shape& full : {Shape{3, 12, 8, 8}, Shape{2, 9, 5, 7}, Shape{4, 40, 7, 7}})
    for (ops::BnAct act : {ops::BnAct::Relu, ops::BnAct::None}) {
      SCOPED_TRACE(shape_str(full) + (act == ops::BnAct::Relu ? " relu" : ""));
      const int64_t C = full[1] - 3, fresh = 2;
      const Tensor slice = gpu(Tensor::normal(full, 0.5, 2.0, gen)).narrow(1, 1, C);
      const Tensor g = gpu(Tensor::uniform({C}, 0.5, 1.5, gen)),
                   b = gpu(Tensor::uniform({C}, -0.5, 0.5, gen));
      const Tensor rm0 = Tensor::normal({C}, 0, 1, gen), rv0 = Tensor::uniform({C}, 0.5, 2, gen);
      Tensor rm1 = gpu(rm0), rv1 = gpu(rv0), rm2 = gpu(rm0), rv2 = gpu(rv0);
      const Tensor stats = ops::batch_norm_batch_stats(slice);
      const auto want = ops::batch_norm_forward_train(slice, g, b, rm1, rv1, 0.1, 1e-5, act, stats);
      Tensor table = stats.clone();
      table.narrow(0, C - fresh, fresh).fill_(std::nan(""));
      const auto got = ops::batch_norm_record_train(slice, rm2, rv2, 0.1, 1e-5, act, table, fresh);
      EXPECT_FALSE(got.y.defined());
      EXPECT_EQ(got.relu_from_x, want.relu_from_x);
      EXPECT_TRUE(gpu_equals("fresh rows", table, stats.to(Device::cpu())));
      EXPECT_TRUE(gpu_equals("save_mean", got.save_mean, want.save_mean.to(Device::cpu())));
      EXPECT_TRUE(gpu_equals("save_invstd", got.save_invstd, want.save_invstd.to(Device::cpu())));
      EXPECT_TRUE(gpu_equals("running_mean", rm2, rm1.to(Device::cpu())));
      EXPECT_TRUE(gpu_equals("running_var", rv2, rv1.to(Device::cpu())));
      const Tensor y = ops::batch_norm_map_saved(slice, g, b, got.save_mean, got.save_invstd, act);
      EXPECT_TRUE(gpu_equals("map from the saved statistics", y, want.y.to(Device::cpu())));
      // Against the CPU's ops in float64, given the same table: the recorded statistics, then the map
      // (each value within the element tolerance of its own arithmetic: one fma against double).
      Tensor rm64 = f64(rm0), rv64 = f64(rv0);
      const Tensor cpu_stats = stats.to(Device::cpu()), cpu_x = f64(slice.to(Device::cpu()).contiguous());
      const auto ref = ops::batch_norm_record_train(cpu_x, rm64, rv64, 0.1, 1e-5, act, cpu_stats);
      EXPECT_TRUE(gpu_matches("save_invstd against the CPU", got.save_invstd, ref.save_invstd,
                              Tol{0, cuda_test::kEps32}));
      EXPECT_TRUE(gpu_matches("running_var against the CPU", rv2, rv64, Tol{0, cuda_test::kEps32}));
      const Tensor y64 = ops::batch_norm_map_saved(cpu_x, f64(g.to(Device::cpu())), f64(b.to(Device::cpu())),
                                                   f64(got.save_mean.to(Device::cpu())),
                                                   f64(got.save_invstd.to(Device::cpu())), act);
      EXPECT_TRUE(gpu_matches("map against the CPU", y, y64, elem_tol(y64)));
    }
}

// gamma, beta and the running statistics as every-other-element views of a longer buffer (the CPU
// accepts any stride; cuDNN needs contiguous vectors and gets copies, updated back in place). The
// running statistics must change at the even elements only.
TEST_P(CudaOpTest, BatchNormStridedChannelVectors) {
  Generator gen(105);
  const Shape shape{3, 6, 5, 4};
  const int64_t C = shape[1];
  // A (2C) GPU buffer holding v at the even elements and -7 at the odd ones, and the view of v.
  struct Strided {
    Tensor buffer, view;
  };
  auto strided_gpu = [&](const Tensor& v) {
    Tensor buf = Tensor::full({2 * C}, -7.0);
    for (int64_t c = 0; c < C; ++c) buf.data<float>()[2 * c] = v.data<float>()[c];
    Tensor g = buf.to(Device::cuda());
    return Strided{g, Tensor(g.storage(), {C}, {2}, g.offset(), DType::Float32)};
  };
  auto evens = [&](const Strided& s, const std::string& what) {
    const std::vector<double> all = values(s.buffer);
    std::vector<double> even(C);
    for (int64_t c = 0; c < C; ++c) {
      even[c] = all[2 * c];
      EXPECT_EQ(all[2 * c + 1], -7.0) << what << ": element " << 2 * c + 1 << " outside the view was written";
    }
    return Tensor::from_vector(even, {C}, DType::Float32);
  };
  const Tensor x = Tensor::normal(shape, 0.5, 2.0, gen);
  const Tensor gamma = Tensor::uniform({C}, 0.5, 1.5, gen), beta = Tensor::uniform({C}, -0.5, 0.5, gen);
  const Tensor rm0 = Tensor::normal({C}, 0, 1, gen), rv0 = Tensor::uniform({C}, 0.5, 2, gen);
  Tensor rm64 = f64(rm0), rv64 = f64(rv0);
  const ops::BatchNormForward ref =
      ops::batch_norm_forward_train(f64(x), f64(gamma), f64(beta), rm64, rv64, 0.1, 1e-5);
  const Strided g = strided_gpu(gamma), b = strided_gpu(beta), rm = strided_gpu(rm0), rv = strided_gpu(rv0);
  Tensor rm_view = rm.view, rv_view = rv.view;
  const ops::BatchNormForward out =
      ops::batch_norm_forward_train(gpu(x), g.view, b.view, rm_view, rv_view, 0.1, 1e-5);
  EXPECT_TRUE(gpu_matches("y", out.y, ref.y, elem_tol(ref.y)));
  EXPECT_TRUE(gpu_matches("strided running_mean", evens(rm, "running_mean"), rm64, Tol{kSumTol, kSumTol}));
  EXPECT_TRUE(gpu_matches("strided running_var", evens(rv, "running_var"), rv64, Tol{0, kSumTol}));
}

TEST_P(CudaOpTest, BatchNormDenseNetShapes) {
  Generator gen(106);
  for (const BnCase& c : kBnDenseNet) {
    check_forward_train(c, gen);
    check_backward_train(c, gen);
  }
}

// ---- pooling -----------------------------------------------------------------------------------------------

struct PoolCase {
  Shape shape;
  int64_t kh, kw, sh, sw, ph, pw;
  bool ceil = false;
  ops::Pool2dParams params(bool include_pad) const {
    ops::Pool2dParams p;
    p.kernel_h = kh;
    p.kernel_w = kw;
    p.stride_h = sh;
    p.stride_w = sw;
    p.pad_h = ph;
    p.pad_w = pw;
    p.ceil_mode = ceil;
    p.count_include_pad = include_pad;
    return p;
  }
  std::string name() const {
    std::ostringstream s;
    s << shape_str(shape) << " kernel " << kh << "x" << kw << " stride " << sh << "x" << sw << " pad " << ph << "x"
      << pw << (ceil ? " ceil_mode" : "");
    return s.str();
  }
};

const PoolCase kPoolCases[] = {
    {{2, 3, 7, 9}, 3, 3, 2, 2, 1, 1},        // the stem's 3x3/2 pad 1 on odd sizes: overlapping windows
    {{1, 5, 6, 6}, 2, 2, 2, 2, 0, 0},        // a transition's 2x2/2, batch 1
    {{2, 2, 8, 8}, 3, 3, 2, 2, 1, 1, true},  // ceil mode adds a window that overhangs the padding
    {{2, 2, 7, 7}, 2, 2, 2, 2, 0, 0, true},  // ceil mode, last window half outside the input
    {{2, 2, 7, 7}, 3, 3, 2, 2, 1, 1, true},  // ceil mode that adds no window (cuDNN still usable)
    {{1, 3, 5, 5}, 3, 3, 1, 1, 1, 1},        // stride 1: every cell in up to 9 windows
    {{3, 4, 9, 7}, 3, 2, 2, 1, 1, 1},        // rectangular kernel, stride and padding
};

const PoolCase kPoolDenseNet[] = {
    {{32, 64, 112, 112}, 3, 3, 2, 2, 1, 1},  // features.pool0
    {{32, 128, 56, 56}, 2, 2, 2, 2, 0, 0},   // transition1.pool
    {{32, 640, 14, 14}, 2, 2, 2, 2, 0, 0},   // transition3.pool
};

// Distinct values (a shuffled grid 1/64 apart, exact in float32): no ties, so the argmax is unique.
Tensor distinct(const Shape& shape, Generator& gen) {
  const int64_t n = shape_numel(shape);
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = double(i - n / 2) / 64.0;
  for (int64_t i = n - 1; i > 0; --i) std::swap(v[i], v[gen.below(i + 1)]);
  return Tensor::from_vector(v, shape, DType::Float32);
}

void check_max_pool(const PoolCase& c, const Tensor& x, Generator& gen, const std::string& what) {
  SCOPED_TRACE(c.name() + " " + what);
  const ops::Pool2dParams p = c.params(true);
  const ops::MaxPoolForward ref = ops::max_pool2d_forward(f64(x), p);
  const ops::MaxPoolForward out = ops::max_pool2d_forward(gpu(x), p);
  EXPECT_TRUE(gpu_equals("y (max pooling copies values: exact)", out.y, ref.y));
  EXPECT_TRUE(gpu_equals("indices", out.indices, ref.indices));
  // Backward through the (equal) indices: at most ceil(k/s)^2 values land in one cell.
  const Tensor dy = Tensor::normal(ref.y.shape(), 0.0, 1.0, gen);
  const Tensor dx_ref = ops::max_pool2d_backward(f64(dy), ref.indices, x.shape());
  const Tensor dx = ops::max_pool2d_backward(gpu(dy), gpu(ref.indices), x.shape());
  const Tensor dx_abs = ops::max_pool2d_backward(abs64(dy), ref.indices, x.shape());
  EXPECT_TRUE(gpu_matches("dx", dx, dx_ref, Tol{0, kPoolTol}, dx_abs));
  // Told the window (as autograd calls it), the GPU gathers in the CPU's order: float32 to the bit, and
  // the same bits on every call.
  const Tensor dx_cpu32 = ops::max_pool2d_backward(dy.to(DType::Float32), ref.indices, x.shape(), p);
  const Tensor dx_gather = ops::max_pool2d_backward(gpu(dy), gpu(ref.indices), x.shape(), p);
  EXPECT_TRUE(gpu_equals("dx (gather, float32 CPU order)", dx_gather, dx_cpu32));
  EXPECT_TRUE(gpu_equals("dx (gather, again)", ops::max_pool2d_backward(gpu(dy), gpu(ref.indices), x.shape(), p),
                         cuda_test::to_cpu(dx_gather)));
}

TEST_P(CudaOpTest, MaxPoolMatchesCpu) {
  Generator gen(201);
  for (const PoolCase& c : kPoolCases) {
    check_max_pool(c, distinct(c.shape, gen), gen, "distinct values");
    // Many ties: values on a grid of 0.5, so windows often hold equal maxima; the first one wins.
    std::vector<double> v = Tensor::normal(c.shape, 0, 1, gen).to_vector();
    for (double& e : v) e = std::round(e * 2) / 2;
    check_max_pool(c, Tensor::from_vector(v, c.shape), gen, "ties");
  }
}

// Without the indices (inference) both versions give the same y as with them, and no indices tensor.
TEST_P(CudaOpTest, MaxPoolWithoutIndicesGivesTheSameValues) {
  Generator gen(203);
  for (const PoolCase& c : kPoolCases) {
    SCOPED_TRACE(shape_str(c.shape));
    const ops::Pool2dParams p = c.params(true);
    const Tensor gx = gpu(distinct(c.shape, gen));
    const ops::MaxPoolForward full = ops::max_pool2d_forward(gx, p),
                              bare = ops::max_pool2d_forward(gx, p, false);
    EXPECT_FALSE(bare.indices.defined());
    EXPECT_EQ(cuda_test::to_cpu(bare.y).to_vector(), cuda_test::to_cpu(full.y).to_vector());
  }
}

// The backward's gradient as a channel prefix of a wider buffer (the stem's, from the first dense block's
// gradient) is read in place: the CPU's sums to the bit, at batch 3 (spaced samples) and 1.
TEST_P(CudaOpTest, MaxPoolBackwardReadsASpacedGradientInPlace) {
  Generator gen(114);
  ops::Pool2dParams p;
  p.kernel_h = p.kernel_w = 3;
  p.stride_h = p.stride_w = 2;
  p.pad_h = p.pad_w = 1;
  for (int64_t n : {3, 1}) {
    SCOPED_TRACE("batch " + std::to_string(n));
    const Tensor x = Tensor::normal({n, 4, 9, 9}, 0, 1, gen);
    const ops::MaxPoolForward f = ops::max_pool2d_forward(x, p);
    const Tensor wide = Tensor::normal({n, 6, 5, 5}, 0, 1, gen);
    const Tensor dy = gpu(wide).narrow(1, 0, 4);
    const Tensor got = ops::max_pool2d_backward(dy, gpu(f.indices), x.shape(), p);
    const Tensor want = ops::max_pool2d_backward(wide.narrow(1, 0, 4).contiguous(), f.indices, x.shape(), p);
    EXPECT_TRUE(gpu_equals("dx", got, f64(want)));
  }
}

TEST_P(CudaOpTest, MaxPoolPropagatesNaNAsCpu) {
  Generator gen(202);
  const PoolCase c = kPoolCases[0];
  std::vector<double> v = distinct(c.shape, gen).to_vector();
  for (std::size_t i = 0; i < v.size(); i += 11) v[i] = std::nan("");
  const Tensor x = Tensor::from_vector(v, c.shape);
  const ops::Pool2dParams p = c.params(true);
  const ops::MaxPoolForward ref = ops::max_pool2d_forward(f64(x), p);
  const ops::MaxPoolForward out = ops::max_pool2d_forward(gpu(x), p);
  EXPECT_TRUE(gpu_equals("y with NaN inputs", out.y, ref.y));
  EXPECT_TRUE(gpu_equals("indices with NaN inputs", out.indices, ref.indices));
}

void check_avg_pool(const PoolCase& c, bool include_pad, Generator& gen) {
  SCOPED_TRACE(c.name() + (include_pad ? " count_include_pad" : " count_include_pad=False"));
  const ops::Pool2dParams p = c.params(include_pad);
  const Tensor x = Tensor::normal(c.shape, 0.0, 1.0, gen);
  const Tensor y_ref = ops::avg_pool2d_forward(f64(x), p);
  const Tensor y = ops::avg_pool2d_forward(gpu(x), p);
  // avg_pool(|x|) = sum|x| / divisor: the scale of each output's rounding error.
  EXPECT_TRUE(gpu_matches("y", y, y_ref, Tol{0, kPoolTol}, ops::avg_pool2d_forward(abs64(x), p)));
  const Tensor dy = Tensor::normal(y_ref.shape(), 0.0, 1.0, gen);
  const Tensor dx_ref = ops::avg_pool2d_backward(f64(dy), x.shape(), p);
  const Tensor dx = ops::avg_pool2d_backward(gpu(dy), x.shape(), p);
  EXPECT_TRUE(gpu_matches("dx", dx, dx_ref, Tol{0, kPoolTol}, ops::avg_pool2d_backward(abs64(dy), x.shape(), p)));
}

TEST_P(CudaOpTest, AvgPoolMatchesCpu) {
  Generator gen(203);
  for (const PoolCase& c : kPoolCases)
    for (bool include_pad : {true, false}) check_avg_pool(c, include_pad, gen);
}

void check_adaptive(const Shape& shape, int64_t oh, int64_t ow, Generator& gen) {
  SCOPED_TRACE(shape_str(shape) + " -> " + std::to_string(oh) + "x" + std::to_string(ow));
  const Tensor x = Tensor::normal(shape, 0.5, 1.0, gen);
  const Tensor y_ref = ops::adaptive_avg_pool2d_forward(f64(x), oh, ow);
  const Tensor y = ops::adaptive_avg_pool2d_forward(gpu(x), oh, ow);
  EXPECT_TRUE(gpu_matches("y", y, y_ref, Tol{0, kSumTol}, ops::adaptive_avg_pool2d_forward(abs64(x), oh, ow)));
  const Tensor dy = Tensor::normal(y_ref.shape(), 0.0, 1.0, gen);
  const Tensor dx_ref = ops::adaptive_avg_pool2d_backward(f64(dy), shape);
  const Tensor dx = ops::adaptive_avg_pool2d_backward(gpu(dy), shape);
  EXPECT_TRUE(gpu_matches("dx", dx, dx_ref, Tol{0, kSumTol}, ops::adaptive_avg_pool2d_backward(abs64(dy), shape)));
}

// Native only (no library twin): the parameter only repeats it, which is harmless.
TEST_P(CudaOpTest, AdaptiveAvgPoolMatchesCpu) {
  Generator gen(204);
  check_adaptive({2, 3, 7, 9}, 3, 4, gen);    // uneven, overlapping windows
  check_adaptive({1, 2, 5, 5}, 7, 7, gen);    // more outputs than inputs
  check_adaptive({2, 3, 56, 56}, 1, 1, gen);  // a long window: 3136 values per warp
  check_adaptive({3, 5, 6, 6}, 6, 6, gen);    // identity
  check_adaptive({1, 4, 7, 7}, 1, 1, gen);    // the DenseNet head, batch 1
}

TEST_P(CudaOpTest, PoolDenseNetShapes) {
  Generator gen(205);
  check_max_pool(kPoolDenseNet[0], distinct(kPoolDenseNet[0].shape, gen), gen, "distinct values");
  check_avg_pool(kPoolDenseNet[1], true, gen);
  check_avg_pool(kPoolDenseNet[2], true, gen);
  check_adaptive({32, 1664, 7, 7}, 1, 1, gen);  // global average pool of the DenseNet-169 head
}

// ---- errors: operands on two devices, float64 on the GPU ---------------------------------------------------


TEST_P(CudaOpTest, ErrorsNameBothDevices) {
  Generator gen(301);
  const Tensor x = Tensor::normal({2, 3, 4, 4}, 0, 1, gen);
  const Tensor gamma = Tensor::ones({3});
  Tensor none;
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(gpu(x), gamma, Tensor(), none, none, 0.1, 1e-5),
                    "batch_norm_forward_train", "gamma is on cpu but the input is on cuda:0");
  EXPECT_THROW_WITH(ops::batch_norm_backward_train(x, gpu(x), Tensor(), gpu(gamma), gpu(gamma)),
                    "batch_norm_backward_train", "grad_output is on cpu but the input is on cuda:0");
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(gpu(f64(x)), Tensor(), Tensor(), none, none, 0.1, 1e-5),
                    "batch_norm_forward_train", "float64", "float32");
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(gpu(x), Tensor(), Tensor(), none, none, 0.1, 1e-5,
                                                  ops::BnAct::None, ops::batch_norm_batch_stats(x)),
                    "batch_norm_forward_train", "batch_stats is on cpu but the input is on cuda:0");
  EXPECT_THROW_WITH(ops::batch_norm_batch_stats(gpu(f64(x))), "batch_norm_batch_stats", "float64", "float32");
  const ops::Pool2dParams p;
  const ops::MaxPoolForward mp = ops::max_pool2d_forward(x, p);
  EXPECT_THROW_WITH(ops::max_pool2d_backward(gpu(mp.y), mp.indices, x.shape()), "max_pool2d_backward",
                    "indices are on cpu but grad_output is on cuda:0");
  EXPECT_THROW_WITH(ops::avg_pool2d_forward(gpu(f64(x)), p), "avg_pool2d_forward", "float64", "float32");
}

// ---- profiler: each op appears in the table under the implementation that ran ---------------------------------

TEST_P(CudaOpTest, ProfilerRecordsOpAndImplementation) {
  cuda::profiler::reset();
  cuda::profiler::set_enabled(true);
  Generator gen(302);
  const Tensor x = gpu(Tensor::normal({4, 8, 6, 6}, 0, 1, gen));
  Tensor none;
  for (int i = 0; i < 3; ++i) ops::batch_norm_forward_train(x, Tensor(), Tensor(), none, none, 0.1, 1e-5);
  ops::max_pool2d_forward(x, ops::Pool2dParams());
  const std::vector<cuda::profiler::OpStat> stats = cuda::profiler::stats();
  const std::string table = cuda::profiler::table();
  cuda::profiler::set_enabled(false);
  cuda::profiler::reset();
  const char* want = cuda::impl_name(Family::BatchNorm, GetParam().impl);
  bool bn = false, pool = false;
  for (const auto& s : stats) {
    if (s.op == "batch_norm_forward_train") {
      bn = true;
      EXPECT_EQ(s.impl, want);
      EXPECT_EQ(s.calls, 3);
      EXPECT_GT(s.total_ms, 0.0);
      EXPECT_DOUBLE_EQ(s.outermost_ms, s.total_ms);
    }
    if (s.op == "max_pool2d_forward") pool = true;
  }
  EXPECT_TRUE(bn) << table;
  EXPECT_TRUE(pool) << table;
  for (const char* col : {"op", "impl", "calls", "total ms", "mean ms", "share", "batch_norm_forward_train"})
    EXPECT_NE(table.find(col), std::string::npos) << "table lacks \"" << col << "\":\n" << table;
}

INSTANTIATE_TEST_SUITE_P(CudaImpl, CudaOpTest,
                         ::testing::Values(BnMode{Impl::Library, cuda::BnKernel::Auto},
                                           BnMode{Impl::Native, cuda::BnKernel::Auto},
                                           BnMode{Impl::Native, cuda::BnKernel::Channel},
                                           BnMode{Impl::Native, cuda::BnKernel::Split},
                                           BnMode{Impl::Native, cuda::BnKernel::Cluster}),
                         impl_label);

// cuda::BnKernel::Cluster up to 8,192 values a channel is the per-channel kernel with its second read
// of each value taken from registers: the same bits, forward (statistics, y, running statistics) and
// backward (dx returned, or added into a channel prefix with the mask recomputed from x; dgamma, dbeta),
// float4 and scalar paths. Below sm_90 the cluster kernels never run, and there is nothing to compare.
TEST(CudaBnCluster, OneBlockGivesTheBitsOfTheChannelKernel) {
  LADNN_REQUIRE_GPU();
  if (cuda::compute_capability() < 90) GTEST_SKIP() << "thread block clusters need sm_90; this GPU is not";
  cuda_test::SwitchesScope keep;
  cuda::set_impl(Family::BatchNorm, Impl::Native);
  Generator gen(131);
  for (const Shape& full :
       {Shape{8, 7, 32, 32}, Shape{6, 5, 33, 33}, Shape{4, 11, 4, 4}, Shape{64, 5, 7, 7}}) {
    SCOPED_TRACE(shape_str(full));
    const int64_t C = full[1] - 2;
    const Tensor buf = gpu(Tensor::normal(full, 0.5, 2.0, gen));
    const Tensor x = buf.narrow(1, 0, C);  // a channel prefix, read in place
    const Tensor g = gpu(Tensor::uniform({C}, 0.5, 1.5, gen)), b = gpu(Tensor::uniform({C}, -0.5, 0.5, gen));
    const Tensor dy = gpu(Tensor::normal(x.shape(), 0, 1, gen));
    const Tensor G0 = gpu(Tensor::normal(full, 0, 1, gen));
    struct Run {
      ops::BatchNormForward f;
      Tensor rm, rv, G;
      ops::BatchNormGrads plain, added;
    };
    auto run = [&](cuda::BnKernel k) {
      cuda::set_bn_kernel(k);
      Run r;
      r.rm = gpu(Tensor::zeros({C}));
      r.rv = gpu(Tensor::ones({C}));
      r.f = ops::batch_norm_forward_train(x, g, b, r.rm, r.rv, 0.1, 1e-5, ops::BnAct::Relu);
      r.plain = ops::batch_norm_backward_train(dy, x, g, r.f.save_mean, r.f.save_invstd, r.f.y);
      r.G = G0.clone();
      const ops::BnReluMask m = ops::relu_mask_of(r.f, b);
      r.added = ops::batch_norm_backward_train(dy, x, g, r.f.save_mean, r.f.save_invstd, m.relu_y,
                                               r.G.narrow(1, 0, C), m.from_x);
      cuda::synchronize();
      return r;
    };
    const Run want = run(cuda::BnKernel::Channel), got = run(cuda::BnKernel::Cluster);
    auto same = [](const std::string& what, const Tensor& a, const Tensor& e) {
      EXPECT_TRUE(cuda_test::gpu_equals(what, a, e.to(Device::cpu()).to(DType::Float64)));
    };
    same("y", got.f.y, want.f.y);
    same("save_mean", got.f.save_mean, want.f.save_mean);
    same("save_invstd", got.f.save_invstd, want.f.save_invstd);
    same("running_mean", got.rm, want.rm);
    same("running_var", got.rv, want.rv);
    same("dx", got.plain.dx, want.plain.dx);
    same("dgamma", got.plain.dgamma, want.plain.dgamma);
    same("dbeta", got.plain.dbeta, want.plain.dbeta);
    same("G (dx added, mask from x)", got.G, want.G);
    same("dgamma (mask from x)", got.added.dgamma, want.added.dgamma);
  }
}

// The maps without a reduction in both layouts (cuda::BnKernel Channel: a block per channel; Split: a block
// per plane): eval forward and training forward given the batch statistics, both with a channel-prefix
// input read in place, float4 and scalar paths — the same bits, and the same recorded statistics.
TEST(CudaBnByChannel, ThePlaneAndChannelLayoutsGiveTheSameBits) {
  LADNN_REQUIRE_GPU();
  cuda_test::SwitchesScope keep;
  cuda::set_impl(Family::BatchNorm, Impl::Native);
  Generator gen(132);
  for (const Shape& full :
       {Shape{4, 70, 7, 7}, Shape{3, 40, 14, 14}, Shape{2, 9, 16, 16}, Shape{1, 33, 5, 3}}) {
    SCOPED_TRACE(shape_str(full));
    const int64_t C = full[1] - 2;
    const Tensor x = gpu(Tensor::normal(full, 0.5, 2.0, gen)).narrow(1, 1, C);
    const Tensor g = gpu(Tensor::uniform({C}, 0.5, 1.5, gen)), b = gpu(Tensor::uniform({C}, -0.5, 0.5, gen));
    const Tensor rm0 = gpu(Tensor::normal({C}, 0, 1, gen)), rv0 = gpu(Tensor::uniform({C}, 0.5, 2, gen));
    const Tensor stats = ops::batch_norm_batch_stats(x);
    struct Run {
      Tensor eval_y;
      ops::BatchNormForward given;
      Tensor rm, rv;
    };
    auto run = [&](cuda::BnKernel k) {
      cuda::set_bn_kernel(k);
      Run r;
      r.eval_y = ops::batch_norm_forward_eval(x, g, b, rm0, rv0, 1e-5, ops::BnAct::Relu);
      r.rm = rm0.clone();
      r.rv = rv0.clone();
      r.given = ops::batch_norm_forward_train(x, g, b, r.rm, r.rv, 0.1, 1e-5, ops::BnAct::Relu, stats);
      cuda::synchronize();
      return r;
    };
    const Run planes = run(cuda::BnKernel::Split), channels = run(cuda::BnKernel::Channel);
    auto same = [](const std::string& what, const Tensor& a, const Tensor& e) {
      EXPECT_TRUE(cuda_test::gpu_equals(what, a, e.to(Device::cpu()).to(DType::Float64)));
    };
    same("eval y", channels.eval_y, planes.eval_y);
    same("given y", channels.given.y, planes.given.y);
    same("given save_mean", channels.given.save_mean, planes.given.save_mean);
    same("given save_invstd", channels.given.save_invstd, planes.given.save_invstd);
    same("running_mean", channels.rm, planes.rm);
    same("running_var", channels.rv, planes.rv);
  }
}

// `fresh` on the GPU: the last channels' rows computed into the table by the forward itself — in the
// by-channel kernel (one launch), or before the plane kernel — give the table and the forward of the
// statistics op then a complete table, bit for bit (both reduce a channel in one block of the same walk).
TEST(CudaBnByChannel, FreshChannelsInTheMapsKernelGiveTheSameBits) {
  LADNN_REQUIRE_GPU();
  cuda_test::SwitchesScope keep;
  cuda::set_impl(Family::BatchNorm, Impl::Native);
  Generator gen(133);
  for (cuda::BnKernel k : {cuda::BnKernel::Channel, cuda::BnKernel::Auto})
    for (const Shape& full : {Shape{4, 70, 7, 7}, Shape{3, 40, 14, 14}, Shape{2, 9, 16, 16}}) {
      SCOPED_TRACE(shape_str(full) + " " + cuda::bn_kernel_name(k));
      cuda::set_bn_kernel(k);
      const int64_t C = full[1] - 2, fresh = 3;
      const Tensor x = gpu(Tensor::normal(full, 0.5, 2.0, gen)).narrow(1, 0, C);
      const Tensor g = gpu(Tensor::uniform({C}, 0.5, 1.5, gen)),
                   b = gpu(Tensor::uniform({C}, -0.5, 0.5, gen));
      Tensor rm1 = gpu(Tensor::zeros({C})), rv1 = gpu(Tensor::ones({C}));
      Tensor rm2 = rm1.clone(), rv2 = rv1.clone();
      const Tensor complete = ops::batch_norm_batch_stats(x);
      const auto want =
          ops::batch_norm_forward_train(x, g, b, rm1, rv1, 0.1, 1e-5, ops::BnAct::Relu, complete);
      Tensor table = gpu(Tensor::zeros({C, 2}, DType::Float64));
      table.narrow(0, 0, C - fresh).copy_(complete.narrow(0, 0, C - fresh));
      const auto got =
          ops::batch_norm_forward_train(x, g, b, rm2, rv2, 0.1, 1e-5, ops::BnAct::Relu, table, fresh);
      cuda::synchronize();
      EXPECT_TRUE(cuda_test::gpu_equals("table", table, complete.to(Device::cpu())));
      EXPECT_TRUE(cuda_test::gpu_equals("y", got.y, want.y.to(Device::cpu()).to(DType::Float64)));
      EXPECT_TRUE(cuda_test::gpu_equals("save_invstd", got.save_invstd,
                                        want.save_invstd.to(Device::cpu()).to(DType::Float64)));
      EXPECT_TRUE(cuda_test::gpu_equals("running_var", rv2, rv1.to(Device::cpu()).to(DType::Float64)));
    }
}

// ---- without a device ---------------------------------------------------------------------------------------

// OpRange and the profiler must be harmless where no GPU is usable (CI): no throw, nothing recorded.
TEST(CudaProfiler, RangesAreHarmlessWithoutADevice) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is usable; ProfilerRecordsOpAndImplementation covers this";
  cuda::profiler::reset();
  cuda::profiler::set_enabled(true);
  {
    cuda::OpRange outer("outer", "native");
    cuda::OpRange inner("inner", "cudnn");
  }
  EXPECT_TRUE(cuda::profiler::stats().empty());
  EXPECT_EQ(cuda::profiler::table(), "");
  cuda::profiler::set_enabled(false);
  EXPECT_THROW(cuda::EventTimer(), std::runtime_error);
}

}  // namespace
}  // namespace ladnn
