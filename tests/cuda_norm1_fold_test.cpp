// tests/cuda_norm1_fold_test.cpp — a training dense layer's norm1 folded into its conv1 (LADNN_NORM1_FOLD)
// on the GPU: our kernels given the batch form of the pre BatchNorm (a training forward's saved statistics)
// apply the map as they read x, and must compute what they compute on the map's own output, bit for bit:
// every fused forward plan that takes a pre BatchNorm, and the pointwise weight gradient's prologue
// (cuda/conv_wgrad_pw.cuh). Then a dense block, folded and not, with the library's kernels: the same bits.
// tests/cuda_tile_emulation_test.cpp runs the weight gradient's prologue on the CPU on every machine;
// tests/densenet_test.cpp the folded block on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "cuda/ops.h"
#include "models/densenet.h"
#include "tensor/ops.h"
#include "tests/conv_bn_reference.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

namespace ladnn {
namespace {

using namespace cuda_test;

/// A batch-form pre BatchNorm on the GPU for C channels: gamma, beta and saved statistics as a training
/// forward leaves them, with its ReLU.
ops::BnEval batch_pre(int64_t C, Generator& gen) {
  ops::BnEval pre;
  pre.gamma = to_gpu(randu({C}, gen, 0.5, 1.5));
  pre.beta = to_gpu(randu({C}, gen, -0.5, 0.5));
  pre.save_mean = to_gpu(randn({C}, gen, 0.3, 0.2));
  pre.save_invstd = to_gpu(randu({C}, gen, 0.6, 1.4));
  pre.act = ops::BnAct::Relu;
  return pre;
}

Tensor map_of(const Tensor& x, const ops::BnEval& pre) {
  return ops::batch_norm_map_saved(x, pre.gamma, pre.beta, pre.save_mean, pre.save_invstd, pre.act);
}

// Every plan of the fused forward that takes a pointwise convolution with a pre BatchNorm: given the
// batch form, on a channel prefix, the output of the same plan without one on the map's packed output.
TEST(CudaNorm1Fold, FusedForwardPlansApplyTheBatchFormAsTheMapDoes) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(81);
  struct Case {
    int64_t N, C, H, W, K;
  };
  for (const Case& c : {Case{2, 96, 8, 8, 130}, Case{2, 256, 14, 14, 128}, Case{4, 640, 7, 7, 128}}) {
    const Tensor xbuf = to_gpu(randn({c.N, c.C + 4, c.H, c.W}, gen, 0.3, 1.0)), x = xbuf.narrow(1, 0, c.C);
    const Tensor w = to_gpu(randn({c.K, c.C, 1, 1}, gen, 0, 0.05));
    const ops::BnEval pre = batch_pre(c.C, gen);
    const Tensor t = map_of(x, pre);
    const ops::Conv2dParams p;
    int plans_run = 0;
    for (int plan = 0; plan < cuda::fused_conv_plans(); ++plan) {
      if (cuda::fused_conv_plan_is_tensor_core(plan) && !cuda::tf32_enabled()) continue;
      if (!cuda::fused_conv_plan_takes(plan, t.shape(), w.shape(), p, true)) continue;
      const std::string what = "x (" + std::to_string(c.N) + ", " + std::to_string(c.C) + ", " +
                               std::to_string(c.H) + ", " + std::to_string(c.W) + ") plan " +
                               cuda::fused_conv_plan_name(plan);
      const Tensor folded = Tensor::empty({c.N, c.K, c.H, c.W}, DType::Float32, Device::cuda());
      const Tensor on_map = Tensor::empty({c.N, c.K, c.H, c.W}, DType::Float32, Device::cuda());
      cuda::conv2d_bn_eval_fused_plan(x, (c.C + 4) * c.H * c.W, &pre, w, p, nullptr, folded, c.K * c.H * c.W,
                                      plan);
      cuda::conv2d_bn_eval_fused_plan(t, c.C * c.H * c.W, nullptr, w, p, nullptr, on_map, c.K * c.H * c.W,
                                      plan);
      EXPECT_TRUE(gpu_equals(what, folded, to_cpu(on_map)));
      ++plans_run;
    }
    EXPECT_GT(plans_run, 0);
  }
}

// The pointwise weight gradient's prologue: the kernel given the batch form on a channel prefix is the
// kernel without it on the map's output, bit for bit (whole and split); and the op, whatever the switches
// run (the prologue under LADNN_HALO_UNCHECKED=1, else the map and the plain weight gradient), within TF32
// of float64 on the CPU's map.
TEST(CudaNorm1Fold, PointwiseWeightGradientAppliesTheBatchFormAsTheMapDoes) {
  LADNN_REQUIRE_GPU();
  if (!cuda::fused_conv_tensor_cores())
    GTEST_SKIP() << "the tensor-core kernels need TF32 on (LADNN_TF32) and an sm_80+ GPU";
  FillNanScope nan_fill;
  Generator gen(82);
  struct Case {
    int64_t N, C, H, W, K;
  };
  // TF32 bound relative to sum |products| (tests/cuda_conv_backward_tc_test.cpp's kTcRtol).
  constexpr double kTcRtol = 0x1p-9 + 1e-5;
  for (const Case& c : {Case{4, 1280, 7, 7, 128}, Case{2, 256, 56, 56, 128}, Case{3, 37, 9, 10, 131}}) {
    const Tensor xbuf = to_gpu(randn({c.N, c.C + 5, c.H, c.W}, gen, 0.3, 1.0)), x = xbuf.narrow(1, 0, c.C);
    const Tensor dy = to_gpu(randn({c.N, c.K, c.H, c.W}, gen));
    const ops::BnEval pre = batch_pre(c.C, gen);
    const Tensor t = map_of(x, pre);
    const Shape w_shape{c.K, c.C, 1, 1};
    const ops::Conv2dParams p;
    const std::string what = "x (" + std::to_string(c.N) + ", " + std::to_string(c.C) + ", " +
                             std::to_string(c.H) + ", " + std::to_string(c.W) + ")";
    for (int waves : {1, 2}) {
      const Tensor folded = Tensor::empty(w_shape, DType::Float32, Device::cuda());
      const Tensor on_map = Tensor::empty(w_shape, DType::Float32, Device::cuda());
      cuda::conv2d_backward_weight_pw_plan(dy, x, (c.C + 5) * c.H * c.W, p, folded, waves, &pre);
      cuda::conv2d_backward_weight_pw_plan(dy, t, c.C * c.H * c.W, p, on_map, waves);
      EXPECT_TRUE(gpu_equals(what + " waves " + std::to_string(waves), folded, to_cpu(on_map)));
    }
    const Tensor t_cpu = ops::batch_norm_map_saved(to_cpu(x), to_cpu(pre.gamma), to_cpu(pre.beta),
                                                   to_cpu(pre.save_mean), to_cpu(pre.save_invstd), pre.act);
    const test::ConvGradReference ref =
        test::conv_backward_reference(to_cpu(dy), t_cpu, t_cpu.shape(), w_shape, p, true);
    EXPECT_TRUE(gpu_matches(what + " through the op", ops::conv2d_backward_weight(dy, x, w_shape, p, pre),
                            ref.value, {0.0, kTcRtol}, ref.scale));
  }
}

/// The number after `label` in `line` (-1 when absent).
double number_after(const std::string& line, const std::string& label) {
  const size_t at = line.find(label);
  return at == std::string::npos ? -1.0 : std::stod(line.substr(at + label.size()));
}

// Auto's forward with a batch-form pre (a folded norm1's conv1) is a training forward: each path is
// charged the weight gradient it leaves (ours none of the map: the gradient applies pre again; the
// unfused ops the map: the plain gradient), and the faster sum wins. Read from its log line: the sums
// decide, the map is handed out exactly when the unfused ops ran, and a second call is Auto's cached choice.
TEST(CudaNorm1Fold, AutoChargesEachForwardItsWeightGradient) {
  LADNN_REQUIRE_GPU();
  SwitchesScope switches;
  cuda::set_impl(cuda::Family::Conv, cuda::Impl::Library);  // (our backward kernels sit on the library path)
  cuda::set_fused_conv(cuda::FusedConv::Auto);
  cuda::set_fold_norm1(true);  // (the pointwise gradient's prologue among the weight gradient's candidates)
  struct LogScope {
    bool was = cuda::log_choices();
    LogScope() { cuda::set_log_choices(true); }
    ~LogScope() { cuda::set_log_choices(was); }
  } log_on;
  cuda::reset_fused_conv_choices();
  Generator gen(85);
  const int64_t N = 2, C = 256, H = 14, W = 14, K = 128;
  const Tensor xbuf = to_gpu(randn({N, C + 4, H, W}, gen, 0.3, 1.0)), x = xbuf.narrow(1, 0, C);
  const Tensor w = to_gpu(randn({K, C, 1, 1}, gen, 0, 0.05));
  const ops::BnEval pre = batch_pre(C, gen);
  const ops::Conv2dParams p;
  Tensor pre_y;
  testing::internal::CaptureStderr();
  const Tensor y = ops::conv2d_bn_eval(x, &pre, w, p, nullptr, &pre_y);
  const std::string log = testing::internal::GetCapturedStderr();
  std::string line;
  for (size_t at = 0, end; at < log.size(); at = end + 1) {
    end = log.find('\n', at);
    if (end == std::string::npos) end = log.size();
    const std::string l = log.substr(at, end - at);
    if (l.rfind("ladnn: conv2d_bn_eval x (2, 256, 14, 14)", 0) == 0) line = l;
  }
  ASSERT_FALSE(line.empty()) << "no Auto line for the folded forward in:\n" << log;
  ASSERT_NE(line.find(" pre 4 post 0"), std::string::npos) << line;  // the batch form with its ReLU
  const double library = number_after(line, "; library ");
  const double after_ours = number_after(line, "then after ours ");
  const double after_library = number_after(line, "after the library ");
  ASSERT_GT(library, 0.0) << line;
  ASSERT_GT(after_library, 0.0) << "the library's path was not charged its weight gradient: " << line;
  // The fastest of ours (each "name ms" pair between "ours (ms)" and the first ';').
  double best_ours = std::numeric_limits<double>::infinity();
  {
    const size_t from = line.find(": ours (ms)") + 11;
    std::istringstream words(line.substr(from, line.find(';', from) - from));
    std::string name;
    double ms = 0;
    while (words >> name >> ms) best_ours = std::min(best_ours, ms);
  }
  ASSERT_TRUE(std::isfinite(best_ours)) << "no candidate of ours timed: " << line;
  ASSERT_GT(after_ours, 0.0) << "our path was not charged its weight gradient: " << line;
  const bool ours = line.find("-> ours ") != std::string::npos;
  const double margin = (library + after_library) - (best_ours + after_ours);
  if (std::abs(margin) > 1e-3)  // (the log rounds each time to 4 decimals)
    EXPECT_EQ(ours, margin > 0) << line;
  if (cuda::fused_conv_tensor_cores())  // the prologue's own Auto ran inside the charge for ours
    EXPECT_NE(log.find("ladnn: conv2d_backward_weight dy (2, 128, 14, 14) w (128, 256, 1, 1) x (2, 256, 14, "
                       "14) stride 1x1 pad 0x0 pre 4"),
              std::string::npos)
        << log;
  // The map is handed out where a pass of its own made it: the unfused ops.
  EXPECT_EQ(pre_y.defined(), !ours) << line;
  if (pre_y.defined()) EXPECT_TRUE(gpu_equals("the handed-out map", pre_y, to_cpu(map_of(x, pre))));
  // Either way the convolution of the map: within TF32 of float64 (relative to sum |terms|).
  const test::ConvBnReference ref = test::conv_bn_eval_reference(to_cpu(map_of(x, pre)), nullptr, to_cpu(w), p, nullptr);
  EXPECT_TRUE(gpu_matches("the folded forward", y, ref.y, {0.0, 0x1p-9 + 1e-5}, ref.scale));
  // A second call: Auto's cached choice, no timing.
  testing::internal::CaptureStderr();
  Tensor pre_y2;
  (void)ops::conv2d_bn_eval(x, &pre, w, p, nullptr, &pre_y2);
  EXPECT_EQ(testing::internal::GetCapturedStderr().find("ladnn: conv2d_bn_eval"), std::string::npos);
  EXPECT_EQ(pre_y2.defined(), !ours);
}

// A dense block folded and not, on the library's convolutions (LADNN_FUSED_CONV=off, deterministic
// algorithms): the folded forward runs batch_norm_map_saved where the unfolded one runs the given
// forward's map, then the same convolutions on the same values — the same output, gradients and running
// statistics, bit for bit, plain and memory-efficient.
TEST(CudaNorm1Fold, DenseBlockFoldedIsUnfoldedOnTheLibrary) {
  LADNN_REQUIRE_GPU();
  SwitchesScope switches;
  DeterministicScope deterministic;
  cuda::set_fused_conv(cuda::FusedConv::Off);
  for (bool efficient : {false, true}) {
    SCOPED_TRACE(efficient ? "memory-efficient" : "plain");
    Generator g1(83), g2(83), gx(84);
    DenseBlock a(3, 64, 4, 32, 0.0, g1), b(3, 64, 4, 32, 0.0, g2);
    for (DenseBlock* m : {&a, &b}) {
      m->to(Device::cuda());
      m->train();
      m->set_memory_efficient(efficient);
    }
    const Tensor x0 = to_gpu(randn({4, 64, 14, 14}, gx, 0.3, 1.0));
    const Tensor r = to_gpu(randn({4, 64 + 3 * 32, 14, 14}, gx));
    Variable xa(x0.clone(), true), xb(x0.clone(), true);
    cuda::set_fold_norm1(false);
    const Variable ya = a.forward(xa);
    cuda::set_fold_norm1(true);
    const Variable yb = b.forward(xb);
    EXPECT_TRUE(gpu_equals("output", yb.tensor(), to_cpu(ya.tensor())));
    sum(mul(ya, Variable(r))).backward();
    sum(mul(yb, Variable(r))).backward();
    EXPECT_TRUE(gpu_equals("input gradient", xb.grad(), to_cpu(xa.grad())));
    const auto pa = a.named_parameters(), pb = b.named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); ++i)
      EXPECT_TRUE(gpu_equals(pb[i].first + " gradient", pb[i].second.grad(), to_cpu(pa[i].second.grad())));
    const auto ba = a.named_buffers(), bb = b.named_buffers();
    for (size_t i = 0; i < ba.size(); ++i)
      EXPECT_TRUE(gpu_equals(bb[i].first, bb[i].second, to_cpu(ba[i].second)));
  }
}

}  // namespace
}  // namespace ladnn
