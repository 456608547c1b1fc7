// tests/cuda_fused_conv_test.cpp — the fused inference convolution (cuda/fused_conv.cuh, LADNN_FUSED_CONV)
// on the GPU: ops::conv2d_bn_eval(_into) against float64 loops (tests/conv_bn_reference.h) on DenseNet's
// batch-1 shapes and on prefixes and slices; against the unfused GPU ops; Auto's timed choice (and its
// refusal to time inside a capture); a DenseNet inference with the fused kernel against the CPU.
// tests/cuda_tile_emulation_test.cpp runs the same kernel code on the CPU on every machine.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cuda/graph.h"
#include "cuda/profiler.h"
#include "models/densenet.h"
#include "tensor/ops.h"
#include "tests/conv_bn_reference.h"
#include "tests/cuda_test_util.h"

namespace ladnn {
namespace {

using namespace cuda_test;

/// Sets cuda::set_fused_conv for a scope, restoring the previous mode.
struct FusedScope {
  explicit FusedScope(cuda::FusedConv mode) : saved(cuda::fused_conv()) { cuda::set_fused_conv(mode); }
  ~FusedScope() { cuda::set_fused_conv(saved); }
  cuda::FusedConv saved;
};

struct FusedCase {
  int64_t N, C, H, W, K, R, S, pad;
};

// DenseNet-169 at batch 1: a 56x56 bottleneck, the widest 7x7 one (1,632 channels in), the growth
// 3x3s at 7x7 and 14x14; batch 4 at 14x14; odd sizes with a partial pixel tile.
const FusedCase kCases[] = {{1, 256, 56, 56, 128, 1, 1, 0}, {1, 1632, 7, 7, 128, 1, 1, 0}, {1, 128, 7, 7, 32, 3, 3, 1},
                            {1, 128, 14, 14, 32, 3, 3, 1},  {4, 512, 14, 14, 128, 1, 1, 0}, {3, 37, 9, 11, 13, 3, 3, 1}};

ops::Conv2dParams params_of(const FusedCase& c) {
  ops::Conv2dParams p;
  p.pad_h = p.pad_w = c.pad;
  return p;
}

std::string name_of(const FusedCase& c) {
  return "x (" + std::to_string(c.N) + ", " + std::to_string(c.C) + ", " + std::to_string(c.H) + ", " +
         std::to_string(c.W) + ") w " + std::to_string(c.K) + "x" + std::to_string(c.R) + "x" + std::to_string(c.S);
}

// Tolerance: float32 sums (fmaf, in the kernel's order) of at most C*R*S terms and the normalisations'
// roundings, bounded by 4e-6 * (|post scale| * sum |terms| + |y|) for these lengths... except that the
// bound grows with the reduction length: C*R*S up to 1,632 terms here, each warp's chunk summed serially
// (102 terms at 16 warps), then up to 16 chunk sums. Serial sums of n terms err by at most n * 2^-24
// relative to sum |terms|: 120 * 6e-8 = 7.2e-6 for the longest chunk and its merge.
constexpr double kRtol = 1e-5;

TEST(CudaFusedConv, MatchesFloat64OnDenseNetShapes) {
  LADNN_REQUIRE_GPU();
  FusedScope fused(cuda::FusedConv::On);
  FillNanScope nan_fill;
  Generator gen(61);
  for (const FusedCase& c : kCases) {
    const Tensor x = randn({c.N, c.C, c.H, c.W}, gen), w = randn({c.K, c.C, c.R, c.S}, gen, 0, 0.05);
    const ops::BnEval pre = test::random_bn_eval(c.C, ops::BnAct::Relu, gen);
    const ops::BnEval post = test::random_bn_eval(c.K, ops::BnAct::Relu, gen);
    const ops::BnEval gpre = test::bn_eval_to(pre, Device::cuda()), gpost = test::bn_eval_to(post, Device::cuda());
    for (int variant = 0; variant < 3; ++variant) {
      const ops::BnEval* pp = variant >= 1 ? &pre : nullptr;
      const ops::BnEval* qp = variant == 2 ? &post : nullptr;
      const test::ConvBnReference ref = test::conv_bn_eval_reference(x, pp, w, params_of(c), qp);
      const Tensor gx = to_gpu(x), gw = to_gpu(w);
      cuda::synchronize();
      cuda::profiler::reset();
      cuda::profiler::set_enabled(true);
      const Tensor y = ops::conv2d_bn_eval(gx, variant >= 1 ? &gpre : nullptr, gw, params_of(c),
                                           variant == 2 ? &gpost : nullptr);
      cuda::profiler::set_enabled(false);
      EXPECT_TRUE(gpu_matches(name_of(c) + " variant " + std::to_string(variant), y, ref.y, {0.0, kRtol}, ref.scale));
      // One kernel ran, named as the fused op.
      const auto rows = cuda::profiler::stats();
      ASSERT_EQ(rows.size(), 1u) << name_of(c);
      EXPECT_EQ(rows[0].op, "conv2d_bn_eval");
      EXPECT_EQ(rows[0].impl, "native");
    }
  }
}

TEST(CudaFusedConv, ReadsAPrefixAndWritesASliceInPlace) {
  LADNN_REQUIRE_GPU();
  FusedScope fused(cuda::FusedConv::On);
  Generator gen(62);
  const FusedCase c{2, 96, 7, 7, 32, 3, 3, 1};
  const Tensor xbuf = to_gpu(randn({c.N, 160, c.H, c.W}, gen));
  const Tensor x = xbuf.narrow(1, 0, c.C);
  const Tensor w = randn({c.K, c.C, 3, 3}, gen, 0, 0.05);
  Tensor obuf = to_gpu(Tensor::full({c.N, 200, c.H, c.W}, 7.0));
  const Tensor out = obuf.narrow(1, 96, c.K);
  const ops::BnEval pre = test::random_bn_eval(c.C, ops::BnAct::Relu, gen);
  const ops::BnEval gpre = test::bn_eval_to(pre, Device::cuda());
  ops::conv2d_bn_eval_into(x, &gpre, to_gpu(w), params_of(c), nullptr, out);
  const test::ConvBnReference ref = test::conv_bn_eval_reference(to_cpu(x), &pre, w, params_of(c), nullptr);
  EXPECT_TRUE(gpu_matches("slice", out, ref.y, {0.0, kRtol}, ref.scale));
  const Tensor before = to_cpu(obuf.narrow(1, 0, 96)), after = to_cpu(obuf.narrow(1, 128, 72));
  for (double v : before.to_vector()) ASSERT_EQ(v, 7.0) << "a channel before the slice was written";
  for (double v : after.to_vector()) ASSERT_EQ(v, 7.0) << "a channel after the slice was written";
}

TEST(CudaFusedConv, AgreesWithTheUnfusedGpuOps) {
  LADNN_REQUIRE_GPU();
  Tf32Scope tf32(false);  // both in float32: each within kRtol of the exact value
  Generator gen(63);
  for (const FusedCase& c : kCases) {
    const Tensor x = to_gpu(randn({c.N, c.C, c.H, c.W}, gen)), w = to_gpu(randn({c.K, c.C, c.R, c.S}, gen, 0, 0.05));
    const ops::BnEval pre = test::bn_eval_to(test::random_bn_eval(c.C, ops::BnAct::Relu, gen), Device::cuda());
    const ops::BnEval post = test::bn_eval_to(test::random_bn_eval(c.K, ops::BnAct::Relu, gen), Device::cuda());
    Tensor unfused, fused;
    {
      FusedScope off(cuda::FusedConv::Off);
      unfused = ops::conv2d_bn_eval(x, &pre, w, params_of(c), &post);
    }
    {
      FusedScope on(cuda::FusedConv::On);
      fused = ops::conv2d_bn_eval(x, &pre, w, params_of(c), &post);
    }
    const test::ConvBnReference ref =
        test::conv_bn_eval_reference(to_cpu(x), &pre, to_cpu(w), params_of(c), &post);  // CPU copies of pre/post
    EXPECT_TRUE(gpu_matches(name_of(c) + " fused vs unfused", fused, to_cpu(unfused), {0.0, 2 * kRtol}, ref.scale));
  }
}

TEST(CudaFusedConv, AutoTimesEachShapeOnceAndNeverInsideACapture) {
  LADNN_REQUIRE_GPU();
  FusedScope autoscope(cuda::FusedConv::Auto);
  Generator gen(64);
  const FusedCase c{1, 200, 7, 7, 128, 1, 1, 0};
  const Tensor x = randn({c.N, c.C, c.H, c.W}, gen), w = randn({c.K, c.C, 1, 1}, gen, 0, 0.05);
  const ops::BnEval pre = test::random_bn_eval(c.C, ops::BnAct::Relu, gen);
  const ops::BnEval gpre = test::bn_eval_to(pre, Device::cuda());
  const Tensor gx = to_gpu(x), gw = to_gpu(w);
  const test::ConvBnReference ref = test::conv_bn_eval_reference(x, &pre, w, params_of(c), nullptr);
  // First call: timed, and its result is right whichever ran last.
  const Tensor first = ops::conv2d_bn_eval(gx, &gpre, gw, params_of(c), nullptr);
  const double rtol = cuda::tf32_enabled() ? 2e-3 : kRtol;  // TF32: 10-bit mantissas in the products
  EXPECT_TRUE(gpu_matches("auto, first call", first, ref.y, {0.0, rtol}, ref.scale));
  // Then captured and replayed: no timing inside the capture (it would throw), the chosen path replays.
  Tensor y;
  cuda::Graph g;
  g.capture([&] { y = ops::conv2d_bn_eval(gx, &gpre, gw, params_of(c), nullptr); });
  ASSERT_TRUE(g.captured());
  g.replay();
  cuda::synchronize();
  EXPECT_TRUE(gpu_matches("auto, replayed", y, ref.y, {0.0, rtol}, ref.scale));
  // A shape first seen inside a capture is refused by name; the stream stays usable.
  const Tensor x2 = to_gpu(randn({1, 200, 5, 5}, gen));
  cuda::Graph g2;
  std::string what = "<no error>";
  try {
    g2.capture([&] { ops::conv2d_bn_eval(x2, &gpre, gw, params_of(c), nullptr); });
  } catch (const std::exception& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("first seen inside a CUDA graph capture"), std::string::npos) << what;
  EXPECT_FALSE(g2.captured());
  ops::conv2d_bn_eval(x2, &gpre, gw, params_of(c), nullptr);
  cuda::synchronize();
}

// The whole inference with two fused kernels per dense layer, against the CPU's unfused ops.
TEST(CudaFusedConv, DenseNetInferenceMatchesTheCpu) {
  LADNN_REQUIRE_GPU();
  FusedScope fused(cuda::FusedConv::On);
  Tf32Scope tf32(false);
  Generator gen(65);
  DenseNetConfig cfg = DenseNetConfig::tiny();
  auto cpu = std::make_shared<DenseNet>(cfg, 10, gen);
  // Non-trivial running statistics, so that the BatchNorms are not the identity.
  for (auto& [name, t] : cpu->named_buffers())
    if (name.find("running_mean") != std::string::npos) t.copy_(Tensor::uniform(t.shape(), -0.2, 0.2, gen));
    else if (name.find("running_var") != std::string::npos) t.copy_(Tensor::uniform(t.shape(), 0.5, 2.0, gen));
  cpu->eval();
  auto gpu = std::make_shared<DenseNet>(cfg, 10, gen);
  gpu->load_state_dict(cpu->state_dict());
  gpu->to(Device::cuda());
  gpu->eval();
  const Tensor x = randn({2, 3, 64, 64}, gen), gx = to_gpu(x);
  NoGradGuard no_grad;
  cuda::profiler::reset();
  cuda::profiler::set_enabled(true);
  const Tensor yg = gpu->forward(Variable(gx)).tensor();
  cuda::profiler::set_enabled(false);
  const Tensor yc = cpu->forward(Variable(x)).tensor();
  int64_t fused_calls = 0;
  for (const auto& row : cuda::profiler::stats())
    if (row.op == "conv2d_bn_eval") fused_calls += row.calls;
  int64_t layers = 0;
  for (int64_t n : cfg.block_config) layers += n;
  EXPECT_EQ(fused_calls, 2 * layers) << "each dense layer: its bottleneck and its growth conv";
  // Logits of a small net: float32 through a few dozen layers.
  EXPECT_TRUE(gpu_matches("tiny DenseNet logits", yg, yc, {1e-4, 1e-4}));
}

}  // namespace
}  // namespace ladnn
