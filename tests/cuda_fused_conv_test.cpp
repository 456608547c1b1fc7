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
#include "cuda/ops.h"
#include "cuda/profiler.h"
#include "models/densenet.h"
#include "models/ladnn.h"
#include "optim/sgd.h"
#include "tensor/ops.h"
#include "tests/conv_bn_reference.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"
#include "tests/tiny_ladnn_util.h"

namespace ladnn {
namespace {

using namespace cuda_test;

struct FusedCase {
  int64_t N, C, H, W, K, R, S, pad;
};

// DenseNet-169 at batch 1: a 56x56 bottleneck, the widest 7x7 one (1,632 channels in), the growth
// 3x3s at 7x7 and 14x14; batch 4 at 14x14; odd sizes with a partial pixel tile.
const FusedCase kCases[] = {{1, 256, 56, 56, 128, 1, 1, 0}, {1, 1632, 7, 7, 128, 1, 1, 0},
                            {1, 128, 7, 7, 32, 3, 3, 1},    {1, 128, 14, 14, 32, 3, 3, 1},
                            {4, 512, 14, 14, 128, 1, 1, 0}, {3, 37, 9, 11, 13, 3, 3, 1}};

ops::Conv2dParams params_of(const FusedCase& c) {
  ops::Conv2dParams p;
  p.pad_h = p.pad_w = c.pad;
  return p;
}

std::string name_of(const FusedCase& c) {
  return "x (" + std::to_string(c.N) + ", " + std::to_string(c.C) + ", " + std::to_string(c.H) + ", " +
         std::to_string(c.W) + ") w " + std::to_string(c.K) + "x" + std::to_string(c.R) + "x" +
         std::to_string(c.S);
}

// Tolerance, relative to sum |terms| (the reference's scale): a warp adds its chunk of the C*R*S
// products serially with fmaf, then the block adds the warps' sums serially; each of those additions
// errs by at most 2^-24 of the running magnitude, so together by (C*R*S / warps + warps) * 2^-24, plus
// a few roundings for the normalisations. The kernel has at least 4 warps per block; a plan with more
// only shortens the chunks, so the 4-warp bound holds for every plan.
double fused_rtol(int64_t C, int64_t R, int64_t S) {
  return double((C * R * S + 3) / 4 + 4 + 4) * 0x1p-24;
}

TEST(CudaFusedConv, MatchesFloat64OnDenseNetShapes) {
  LADNN_REQUIRE_GPU();
  FusedScope fused(cuda::FusedConv::On);
  FillNanScope nan_fill;
  Generator gen(61);
  for (const FusedCase& c : kCases) {
    const Tensor x = randn({c.N, c.C, c.H, c.W}, gen), w = randn({c.K, c.C, c.R, c.S}, gen, 0, 0.05);
    const ops::BnEval pre = test::random_bn_eval(c.C, ops::BnAct::Relu, gen);
    const ops::BnEval post = test::random_bn_eval(c.K, ops::BnAct::Relu, gen);
    const ops::BnEval gpre = test::bn_eval_to(pre, Device::cuda()),
                      gpost = test::bn_eval_to(post, Device::cuda());
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
      EXPECT_TRUE(gpu_matches(name_of(c) + " variant " + std::to_string(variant), y, ref.y,
                              {0.0, fused_rtol(c.C, c.R, c.S)}, ref.scale));
      // One kernel ran, named as the fused op.
      const auto rows = cuda::profiler::stats();
      ASSERT_EQ(rows.size(), 1u) << name_of(c);
      EXPECT_EQ(rows[0].op, "conv2d_bn_eval");
      EXPECT_EQ(rows[0].impl, "native");
    }
  }
}

// Every launch shape Auto may pick (the tensor-core ones too: TF32 is on by default), on the stem's 7x7
// stride-2 window and on windows and BatchNorm forms DenseNet does not use: a
// strided 3x3, a 2x3 window (the general kernel), a pointwise conv with C % 4 != 0 (no four-channel
// loads), a pre BatchNorm without ReLU or affine parameters.
TEST(CudaFusedConv, EveryLaunchShapeMatchesFloat64) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  struct Case {
    int64_t N, C, H, W, K, R, S, stride, pad;
    bool pre_relu, affine;
  };
  const Case cases[] = {
      {1, 1632, 7, 7, 128, 1, 1, 1, 0, true, true}, {2, 128, 14, 14, 32, 3, 3, 1, 1, true, true},
      {2, 37, 9, 11, 13, 3, 3, 2, 1, false, false}, {1, 19, 8, 6, 7, 2, 3, 1, 0, true, false},
      {3, 37, 5, 5, 20, 1, 1, 1, 0, false, true},   {2, 3, 64, 64, 64, 7, 7, 2, 3, true, true},
      // pointwise with H*W % 4 == 0 and C % 4 == 0 (the mma kernel's 16-byte copies of x and w), K past
      // one 128-channel tile
      {2, 96, 8, 8, 130, 1, 1, 1, 0, true, true}};
  ASSERT_GT(cuda::fused_conv_plans(), 0);
  {  // what the plan hook refuses, by name
    const Tensor x = to_gpu(Tensor::ones({1, 4, 5, 5})), w = to_gpu(Tensor::ones({2, 4, 1, 1}));
    const Tensor y = Tensor::empty({1, 2, 5, 5}, DType::Float32, Device::cuda());
    EXPECT_THROW_WITH(
        cuda::conv2d_bn_eval_fused_plan(x, 100, nullptr, w, {}, nullptr, y, 50, cuda::fused_conv_plans()),
        "conv2d_bn_eval_fused_plan: plan", "is not in [0, ");
    EXPECT_THROW_WITH(cuda::conv2d_bn_eval_fused_plan(x, 100, nullptr, w, {}, nullptr, y, 50, -1),
                      "is not in [0, ");
    const Tensor x64 = to_gpu(Tensor::ones({1, 4, 5, 5}, DType::Float64));
    EXPECT_THROW_WITH(cuda::conv2d_bn_eval_fused_plan(x64, 100, nullptr, w, {}, nullptr, y, 50, 0),
                      "the fused kernel does not take this call");
    EXPECT_THROW_WITH(cuda::conv2d_bn_eval_fused_plan(x, 100, nullptr, w, {}, nullptr, y, 50, 0, 2),
                      "only the tensor-core form splits");
    EXPECT_THROW_WITH(cuda::conv2d_bn_eval_fused_plan(x, 100, nullptr, w, {}, nullptr, y, 50, 0, -1),
                      "chunks_per_split -1 < 0");
  }
  Generator gen(66);
  for (const Case& c : cases) {
    ops::Conv2dParams p;
    p.stride_h = p.stride_w = c.stride;
    p.pad_h = p.pad_w = c.pad;
    const Tensor x = randn({c.N, c.C, c.H, c.W}, gen), w = randn({c.K, c.C, c.R, c.S}, gen, 0, 0.05);
    const ops::BnEval pre = test::random_bn_eval(c.C, c.pre_relu ? ops::BnAct::Relu : ops::BnAct::None, gen,
                                                 DType::Float32, c.affine);
    const ops::BnEval post = test::random_bn_eval(c.K, ops::BnAct::Relu, gen, DType::Float32, c.affine);
    const ops::BnEval gpre = test::bn_eval_to(pre, Device::cuda()),
                      gpost = test::bn_eval_to(post, Device::cuda());
    const test::ConvBnReference ref = test::conv_bn_eval_reference(x, &pre, w, p, &post);
    const Tensor gx = to_gpu(x), gw = to_gpu(w);
    const Shape ys = ref.y.shape();
    for (int plan = 0; plan < cuda::fused_conv_plans(); ++plan)
      for (int cps : {0, 3}) {  // tensor-core plans also split, three 32-value chunks a split
        // Tensor-core plans (TF32 on) to TF32's bound: each operand rounded to 10 mantissa bits, 2^-10
        // per product, 2^-9 with margin (as tests/cuda_conv_gemm_test.cpp).
        const bool tc = cuda::fused_conv_plan_is_tensor_core(plan);
        if (tc && !cuda::tf32_enabled()) continue;
        if (cps > 0 && !tc) continue;
        const double rtol = (tc ? 0x1p-9 : 0.0) + fused_rtol(c.C, c.R, c.S);
        if (cuda::fused_conv_plan_is_halo(plan)) {
          // The halo kernel refuses pre before its window (and every other window than a padded 3x3 of
          // stride 1): HaloPlansMatchFloat64OnGrowthShapes runs it.
          const Tensor y = Tensor::empty(ys, DType::Float32, Device::cuda());
          EXPECT_THROW_WITH(cuda::conv2d_bn_eval_fused_plan(gx, c.C * c.H * c.W, &gpre, gw, p, &gpost, y,
                                                            ys[1] * ys[2] * ys[3], plan, cps),
                            "is the halo kernel: it takes 3x3 windows of stride 1 and padding 1");
          continue;
        }
        if (cuda::fused_conv_plan_is_mma(plan) && (c.R != 1 || c.S != 1 || c.stride != 1 || c.pad != 0)) {
          // The mma kernel refuses a window with pre; a 3x3 or 7x7 without pre (a growth conv, the stem)
          // it takes.
          const Tensor y = Tensor::empty(ys, DType::Float32, Device::cuda());
          EXPECT_THROW_WITH(cuda::conv2d_bn_eval_fused_plan(gx, c.C * c.H * c.W, &gpre, gw, p, &gpost, y,
                                                            ys[1] * ys[2] * ys[3], plan, cps),
                            "takes pointwise convolutions (1x1, stride 1, no padding) and 3x3 and 7x7 windows");
          if (c.R != c.S || (c.R != 3 && c.R != 7)) continue;
          const test::ConvBnReference plain = test::conv_bn_eval_reference(x, nullptr, w, p, &post);
          cuda::conv2d_bn_eval_fused_plan(gx, c.C * c.H * c.W, nullptr, gw, p, &gpost, y, ys[1] * ys[2] * ys[3],
                                          plan, cps);
          EXPECT_TRUE(gpu_matches(std::to_string(c.R) + "x" + std::to_string(c.S) + " without pre, x (" +
                                      std::to_string(c.N) + ", " + std::to_string(c.C) + ", " +
                                      std::to_string(c.H) + ", " + std::to_string(c.W) + ") stride " +
                                      std::to_string(c.stride) + " plan " + std::to_string(plan) +
                                      " chunks per split " + std::to_string(cps),
                                  y, plain.y, {0.0, rtol}, plain.scale));
          continue;
        }
        const Tensor y = Tensor::empty(ys, DType::Float32, Device::cuda());
        cuda::synchronize();
        cuda::profiler::reset();
        cuda::profiler::set_enabled(true);
        cuda::conv2d_bn_eval_fused_plan(gx, c.C * c.H * c.W, &gpre, gw, p, &gpost, y, ys[1] * ys[2] * ys[3],
                                        plan, cps);
        cuda::profiler::set_enabled(false);
        const auto rows = cuda::profiler::stats();
        ASSERT_EQ(rows.size(), 1u);
        EXPECT_EQ(rows[0].impl, tc ? "native-tc" : "native") << "plan " << plan;
        EXPECT_TRUE(gpu_matches("x (" + std::to_string(c.N) + ", " + std::to_string(c.C) + ", " +
                                    std::to_string(c.H) + ", " + std::to_string(c.W) + ") w " +
                                    std::to_string(c.K) + "x" + std::to_string(c.R) + "x" +
                                    std::to_string(c.S) + " plan " + std::to_string(plan) + " chunks per split " +
                                    std::to_string(cps),
                                y, ref.y, {0.0, rtol}, ref.scale));
      }
  }
}

// The halo kernel's tiles (cuda/fused_conv_halo.cuh) on the growth 3x3s it is for, whole and split, against
// float64: 56x56 and 28x28 at batch 2 and 3 (a 28-pixel row: tiles cross output rows; the 28x28 one read as
// a channel prefix and written as a slice, as in a dense block), 14x14 and 7x7 (8- and 4-byte copies: the
// "v2" and "v1" tiles),
// and a 12x12 with 40 output channels (a partial second channel block) and post on. TF32's bound, as the
// other tensor-core plans. Each tile refuses the shapes it does not take, by name.
TEST(CudaFusedConv, HaloPlansMatchFloat64OnGrowthShapes) {
  LADNN_REQUIRE_GPU();
  if (!cuda::tf32_enabled()) GTEST_SKIP() << "the halo kernel runs on the tensor cores: TF32 is off";
  struct Case {
    int64_t N, C, H, K, x_channels, y_channels, y_first;
    bool post_on;
  };
  const Case cases[] = {{2, 128, 56, 32, 128, 32, 0, false},
                        {3, 128, 28, 32, 160, 200, 96, false},
                        {2, 128, 14, 32, 160, 200, 96, false},
                        {3, 128, 7, 32, 160, 200, 96, true},
                        {1, 64, 12, 40, 64, 40, 0, true}};
  Generator gen(67);
  int runs = 0;
  for (const Case& c : cases) {
    ops::Conv2dParams p;
    p.pad_h = p.pad_w = 1;
    const Tensor xbuf = randn({c.N, c.x_channels, c.H, c.H}, gen), w = randn({c.K, c.C, 3, 3}, gen, 0, 0.05);
    const Tensor x = xbuf.narrow(1, 0, c.C);
    const ops::BnEval post = test::random_bn_eval(c.K, ops::BnAct::Relu, gen);
    const ops::BnEval gpost = test::bn_eval_to(post, Device::cuda());
    const test::ConvBnReference ref =
        test::conv_bn_eval_reference(x, nullptr, w, p, c.post_on ? &post : nullptr);
    const Tensor gxbuf = to_gpu(xbuf), gw = to_gpu(w);
    const Tensor gx = gxbuf.narrow(1, 0, c.C);
    const double rtol = 0x1p-9 + fused_rtol(c.C, 3, 3);
    for (int plan = 0; plan < cuda::fused_conv_plans(); ++plan) {
      if (!cuda::fused_conv_plan_is_halo(plan)) continue;
      const std::string name = cuda::fused_conv_plan_name(plan);
      for (int cps : {0, 3}) {
        const std::string what = name + " on x (" + std::to_string(c.N) + ", " + std::to_string(c.C) + ", " +
                                 std::to_string(c.H) + ", " + std::to_string(c.H) + ") chunks per split " +
                                 std::to_string(cps);
        Tensor ybuf = to_gpu(Tensor::full({c.N, c.y_channels, c.H, c.H}, 7.0));
        const Tensor y = ybuf.narrow(1, c.y_first, c.K);
        const int64_t plane = c.H * c.H;
        // Refused: rows longer than half the tile's pixel slots, or the other copy width's rows.
        if (!cuda::fused_conv_plan_takes(plan, {c.N, c.C, c.H, c.H}, {c.K, c.C, 3, 3}, p, false)) {
          const std::string width = "W " + std::to_string(c.H);
          EXPECT_THROW_WITH(cuda::conv2d_bn_eval_fused_plan(gx, c.x_channels * plane, nullptr, gw, p,
                                                            c.post_on ? &gpost : nullptr, y,
                                                            c.y_channels * plane, plan, cps),
                            "is the halo kernel", width.c_str());
          continue;
        }
        cuda::conv2d_bn_eval_fused_plan(gx, c.x_channels * plane, nullptr, gw, p,
                                        c.post_on ? &gpost : nullptr, y, c.y_channels * plane, plan, cps);
        EXPECT_TRUE(gpu_matches(what, y, ref.y, {0.0, rtol}, ref.scale));
        const Tensor all = to_cpu(ybuf);
        for (int64_t ch = 0; ch < c.y_channels; ++ch) {
          if (ch >= c.y_first && ch < c.y_first + c.K) continue;
          for (double v : all.narrow(1, ch, 1).to_vector()) ASSERT_EQ(v, 7.0) << what << ": channel " << ch;
        }
        ++runs;
      }
    }
  }
  // (whole, split) x (the 56x56 on 2 tiles, the 28x28 and 12x12 on 3, the 14x14 on the 2 v2 tiles, the
  // 7x7 on the v1 tile): the count pins fused_conv_plan_takes's answers
  EXPECT_EQ(runs, 22);
}

// The plan hook's names are Auto's log names (cuda_kernels_bench's native-mma rows use them), in plan
// order: SIMT, then wmma, then mma, then halo; and which shapes each form takes. Needs a CUDA build, not
// a GPU.
TEST(CudaFusedConv, PlanNamesAreAutosLogNames) {
  if (cuda::fused_conv_plans() == 0) GTEST_SKIP() << "a build without CUDA has no fused kernels";
  int simt = 0, wmma = 0, mma = 0, halo = 0;
  for (int plan = 0; plan < cuda::fused_conv_plans(); ++plan) {
    const std::string name = cuda::fused_conv_plan_name(plan);
    EXPECT_TRUE(!cuda::fused_conv_plan_is_halo(plan) || cuda::fused_conv_plan_is_tensor_core(plan)) << plan;
    if (cuda::fused_conv_plan_is_halo(plan)) {
      EXPECT_EQ(name.rfind("halo32x", 0), 0u) << "plan " << plan << ": " << name;
      EXPECT_FALSE(cuda::fused_conv_plan_is_mma(plan)) << "plan " << plan;
      EXPECT_GT(mma, 0) << "a halo plan before the mma ones";
      ++halo;
    } else if (cuda::fused_conv_plan_is_mma(plan)) {
      EXPECT_EQ(name.rfind("mma", 0), 0u) << "plan " << plan << ": " << name;
      EXPECT_GT(wmma, 0) << "an mma plan before the wmma ones";
      EXPECT_EQ(halo, 0) << "an mma plan after a halo one";
      ++mma;
    } else if (cuda::fused_conv_plan_is_tensor_core(plan)) {
      EXPECT_EQ(name.rfind("tc", 0), 0u) << "plan " << plan << ": " << name;
      EXPECT_EQ(mma, 0) << "a wmma plan after an mma one";
      ++wmma;
    } else {
      EXPECT_NE(name.find('x'), std::string::npos) << "plan " << plan << ": " << name;
      EXPECT_EQ(wmma + mma, 0) << "a SIMT plan after a tensor-core one";
      ++simt;
    }
  }
  EXPECT_GT(simt, 0);
  EXPECT_GT(wmma, 0);
  EXPECT_GT(mma, 0);
  EXPECT_EQ(halo, 6);
  EXPECT_EQ(cuda::fused_conv_plan_name(cuda::fused_conv_plans() - 7), "mma32x64d32");
  EXPECT_EQ(cuda::fused_conv_plan_name(cuda::fused_conv_plans() - 4), "halo32x224");
  EXPECT_EQ(cuda::fused_conv_plan_name(cuda::fused_conv_plans() - 1), "halo32x64v1");
  EXPECT_THROW_WITH(cuda::fused_conv_plan_name(cuda::fused_conv_plans()), "fused_conv_plan_name: plan",
                    "is not in [0, ");
  // fused_conv_plan_takes, by shape: the SIMT plans take any window; the mma ones 1x1, 3x3 and 7x7 (no pre
  // before a window); the halo ones padded stride-1 3x3s over multiples of 8 channels, rows at most half
  // their slots, at the widest copy the rows allow.
  ops::Conv2dParams pad1;
  pad1.pad_h = pad1.pad_w = 1;
  const int simt0 = 0, mma0 = cuda::fused_conv_plans() - 7, halo64 = cuda::fused_conv_plans() - 6;
  ASSERT_TRUE(cuda::fused_conv_plan_is_mma(mma0));
  ASSERT_EQ(cuda::fused_conv_plan_name(halo64), "halo32x64");
  EXPECT_TRUE(cuda::fused_conv_plan_takes(simt0, {1, 8, 9, 9}, {4, 8, 5, 5}, pad1, true));
  EXPECT_FALSE(cuda::fused_conv_plan_takes(mma0, {1, 8, 9, 9}, {4, 8, 5, 5}, pad1, false));
  EXPECT_TRUE(cuda::fused_conv_plan_takes(mma0, {1, 8, 9, 9}, {4, 8, 3, 3}, pad1, false));
  EXPECT_FALSE(cuda::fused_conv_plan_takes(mma0, {1, 8, 9, 9}, {4, 8, 3, 3}, pad1, true));
  EXPECT_TRUE(cuda::fused_conv_plan_takes(halo64, {2, 128, 28, 28}, {32, 128, 3, 3}, pad1, false));
  EXPECT_FALSE(cuda::fused_conv_plan_takes(halo64, {2, 128, 56, 56}, {32, 128, 3, 3}, pad1, false));
  EXPECT_FALSE(cuda::fused_conv_plan_takes(halo64, {2, 128, 28, 28}, {32, 128, 3, 3}, pad1, true));
  EXPECT_FALSE(cuda::fused_conv_plan_takes(halo64, {2, 12, 28, 28}, {32, 12, 3, 3}, pad1, false));
  EXPECT_FALSE(cuda::fused_conv_plan_takes(halo64, {2, 128, 14, 14}, {32, 128, 3, 3}, pad1, false));
  ASSERT_EQ(cuda::fused_conv_plan_name(cuda::fused_conv_plans() - 3), "halo32x64v2");
  EXPECT_TRUE(cuda::fused_conv_plan_takes(cuda::fused_conv_plans() - 3, {2, 128, 14, 14}, {32, 128, 3, 3},
                                          pad1, false));
  EXPECT_THROW_WITH(
      cuda::fused_conv_plan_takes(cuda::fused_conv_plans(), {1, 8, 9, 9}, {4, 8, 3, 3}, pad1, false),
      "fused_conv_plan_takes: plan", "is not in [0, ");
}

// A channel prefix read and a channel slice written in place, by every launch shape of every form: a
// 3x3 (a growth conv), and a pointwise conv over 4-pixel-aligned planes (a bottleneck; the mma kernel).
TEST(CudaFusedConv, ReadsAPrefixAndWritesASliceInPlace) {
  LADNN_REQUIRE_GPU();
  Generator gen(62);
  for (const FusedCase& c : {FusedCase{2, 96, 7, 7, 32, 3, 3, 1}, FusedCase{2, 96, 4, 8, 32, 1, 1, 0}}) {
  const Tensor xbuf = to_gpu(randn({c.N, 160, c.H, c.W}, gen));
  const Tensor x = xbuf.narrow(1, 0, c.C);
  const Tensor w = randn({c.K, c.C, c.R, c.S}, gen, 0, 0.05);
  const Tensor gw = to_gpu(w);
  const ops::BnEval pre = test::random_bn_eval(c.C, ops::BnAct::Relu, gen);
  const ops::BnEval gpre = test::bn_eval_to(pre, Device::cuda());
  const test::ConvBnReference ref = test::conv_bn_eval_reference(to_cpu(x), &pre, w, params_of(c), nullptr);
  for (int plan = -1; plan < cuda::fused_conv_plans(); ++plan) {  // -1: the op, as DenseNet calls it
    const bool tc = plan >= 0 && cuda::fused_conv_plan_is_tensor_core(plan);
    if (tc && !cuda::tf32_enabled()) continue;
    if (plan >= 0 && cuda::fused_conv_plan_is_mma(plan) && c.R != 1) continue;
    if (plan >= 0 && cuda::fused_conv_plan_is_halo(plan)) continue;  // pre: refused (see HaloPlans...)
    Tensor obuf = to_gpu(Tensor::full({c.N, 200, c.H, c.W}, 7.0));
    const Tensor out = obuf.narrow(1, 96, c.K);
    if (plan < 0) {
      FusedScope fused(cuda::FusedConv::On);
      ops::conv2d_bn_eval_into(x, &gpre, gw, params_of(c), nullptr, out);
    } else {
      cuda::conv2d_bn_eval_fused_plan(x, 160 * c.H * c.W, &gpre, gw, params_of(c), nullptr, out,
                                      200 * c.H * c.W, plan);
    }
    const std::string what = std::to_string(c.R) + "x" + std::to_string(c.S) + " slice, plan " + std::to_string(plan);
    EXPECT_TRUE(gpu_matches(what, out, ref.y, {0.0, (tc ? 0x1p-9 : 0.0) + fused_rtol(c.C, c.R, c.S)}, ref.scale));
    const Tensor before = to_cpu(obuf.narrow(1, 0, 96)), after = to_cpu(obuf.narrow(1, 128, 72));
    for (double v : before.to_vector())
      ASSERT_EQ(v, 7.0) << what << ": a channel before the slice was written";
    for (double v : after.to_vector()) ASSERT_EQ(v, 7.0) << what << ": a channel after the slice was written";
  }
  }
}

TEST(CudaFusedConv, AgreesWithTheUnfusedGpuOps) {
  LADNN_REQUIRE_GPU();
  // Both in float32: each within fused_rtol of the exact value (a GEMM-like cuDNN algorithm's sums have
  // the same bound or better; on a Winograd or FFT choice see tests/cuda_conv_gemm_test.cpp's note).
  Tf32Scope tf32(false);
  Generator gen(63);
  for (const FusedCase& c : kCases) {
    const Tensor x = to_gpu(randn({c.N, c.C, c.H, c.W}, gen)),
                 w = to_gpu(randn({c.K, c.C, c.R, c.S}, gen, 0, 0.05));
    const ops::BnEval pre =
        test::bn_eval_to(test::random_bn_eval(c.C, ops::BnAct::Relu, gen), Device::cuda());
    const ops::BnEval post =
        test::bn_eval_to(test::random_bn_eval(c.K, ops::BnAct::Relu, gen), Device::cuda());
    Tensor unfused, fused;
    {
      FusedScope off(cuda::FusedConv::Off);
      unfused = ops::conv2d_bn_eval(x, &pre, w, params_of(c), &post);
    }
    {
      FusedScope on(cuda::FusedConv::On);
      fused = ops::conv2d_bn_eval(x, &pre, w, params_of(c), &post);
    }
    const test::ConvBnReference ref = test::conv_bn_eval_reference(to_cpu(x), &pre, to_cpu(w), params_of(c),
                                                                   &post);  // CPU copies of pre/post
    EXPECT_TRUE(gpu_matches(name_of(c) + " fused vs unfused", fused, to_cpu(unfused),
                            {0.0, 2 * fused_rtol(c.C, c.R, c.S)}, ref.scale));
  }
}

TEST(CudaFusedConv, AutoTimesEachShapeOnceAndNeverInsideACapture) {
  LADNN_REQUIRE_GPU();
  FusedScope autoscope(cuda::FusedConv::Auto);
  cuda::reset_fused_conv_choices();  // (the choices live for the process: start from none)
  Generator gen(64);
  const FusedCase c{1, 200, 7, 7, 128, 1, 1, 0};
  const Tensor x = randn({c.N, c.C, c.H, c.W}, gen), w = randn({c.K, c.C, 1, 1}, gen, 0, 0.05);
  const ops::BnEval pre = test::random_bn_eval(c.C, ops::BnAct::Relu, gen);
  const ops::BnEval gpre = test::bn_eval_to(pre, Device::cuda());
  const Tensor gx = to_gpu(x), gw = to_gpu(w);
  const test::ConvBnReference ref = test::conv_bn_eval_reference(x, &pre, w, params_of(c), nullptr);
  // The unfused ops and the tensor-core plans use TF32 when it is on (2^-10 per product; 2^-9 with margin).
  const double rtol = (cuda::tf32_enabled() ? 0x1p-9 : 0.0) + fused_rtol(c.C, 1, 1);
  // First call: timed; its result is the chosen path's.
  const Tensor first = ops::conv2d_bn_eval(gx, &gpre, gw, params_of(c), nullptr);
  EXPECT_TRUE(gpu_matches("auto, first call", first, ref.y, {0.0, rtol}, ref.scale));
  // Second call: no timing — one run of the chosen path (the fused kernel once, or none of it).
  cuda::synchronize();
  cuda::profiler::reset();
  cuda::profiler::set_enabled(true);
  const Tensor second = ops::conv2d_bn_eval(gx, &gpre, gw, params_of(c), nullptr);
  cuda::profiler::set_enabled(false);
  int64_t fused_calls = 0, other_calls = 0;
  for (const auto& row : cuda::profiler::stats())
    (row.op == "conv2d_bn_eval" ? fused_calls : other_calls) += row.calls;
  EXPECT_TRUE((fused_calls == 1 && other_calls == 0) || (fused_calls == 0 && other_calls == 2))
      << "fused kernel calls " << fused_calls << ", other ops " << other_calls
      << " (the unfused path: BN, conv)";
  EXPECT_TRUE(gpu_equals("auto, second call = first", second, to_cpu(first)));
  // Then captured and replayed: no timing inside the capture (it would throw), the chosen path replays.
  Tensor y;
  cuda::Graph g;
  g.capture([&] { y = ops::conv2d_bn_eval(gx, &gpre, gw, params_of(c), nullptr); });
  ASSERT_TRUE(g.captured());
  g.replay();
  cuda::synchronize();
  EXPECT_TRUE(gpu_equals("auto, replayed = first", y, to_cpu(first)));
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

// The whole inference with two fused kernels per dense layer and one for the stem, against the CPU's
// unfused ops.
TEST(CudaFusedConv, DenseNetInferenceMatchesTheCpu) {
  LADNN_REQUIRE_GPU();
  FusedScope fused(cuda::FusedConv::On);
  Tf32Scope tf32(false);
  Generator gen(65);
  DenseNetConfig cfg = DenseNetConfig::tiny();
  auto cpu = std::make_shared<DenseNet>(cfg, 10, gen);
  // Non-trivial running statistics, so that the BatchNorms are not the identity.
  for (auto& [name, t] : cpu->named_buffers())
    if (name.find("running_mean") != std::string::npos)
      t.copy_(Tensor::uniform(t.shape(), -0.2, 0.2, gen));
    else if (name.find("running_var") != std::string::npos)
      t.copy_(Tensor::uniform(t.shape(), 0.5, 2.0, gen));
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
  EXPECT_EQ(fused_calls, 2 * layers + 1)
      << "each dense layer's bottleneck and growth conv, and the stem's conv0-norm0";
  // Logits of a small net: float32 through a few dozen layers.
  EXPECT_TRUE(gpu_matches("tiny DenseNet logits", yg, yc, {1e-4, 1e-4}));
}

// Training: the dense blocks' forward convolutions go through conv2d_bn_eval without BatchNorms. Under On
// (our SIMT kernel at every shape) and Auto (whatever it times faster), plain and memory-efficient (whose
// backward recomputes the forward through the same op): one SGD step against the CPU; and under each, an
// eager step, a capture and two replays against three eager steps (no shape is first seen in the capture).
// Each also with the norm1s folded into conv1 (LADNN_NORM1_FOLD=1: the batch-form pre BatchNorm through
// the fused kernel's prologue, the statistics recorded by their own kernel, the map applied again for the
// weight gradient where it is not kept).
TEST(CudaFusedConv, TrainingStepsThroughTheOpMatchTheCpuAndReplay) {
  LADNN_REQUIRE_GPU();
  SwitchesScope switches;
  Tf32Scope tf32(false);
  DeterministicScope deterministic;
  Generator gen(67);
  const test::LadnnBatches batches = test::random_ladnn_batches(3, gen);
  const test::LadnnBatch &cb = batches.cpu, &gb = batches.gpu;
  const auto step = test::sgd_step;
  for (bool fold : {false, true})
    for (cuda::FusedConv mode : {cuda::FusedConv::On, cuda::FusedConv::Auto}) {
      FusedScope fused(mode);
      cuda::set_fold_norm1(fold);
      cuda::reset_fused_conv_choices();
      for (bool efficient : {false, true}) {
        SCOPED_TRACE(std::string(cuda::fused_conv_name(mode)) +
                     (efficient ? ", memory-efficient" : ", plain") + (fold ? ", norm1 folded" : ""));
        auto cpu = test::tiny_ladnn(12, efficient, Device::cpu()),
             gpu = test::tiny_ladnn(12, efficient, Device::cuda());
        SGD opt_c(cpu->parameters(), 0.05, 0.9), opt_g(gpu->parameters(), 0.05, 0.9);
        step(*cpu, opt_c, cb);
        cuda::profiler::reset();
        cuda::profiler::set_enabled(true);
        step(*gpu, opt_g, gb);
        cuda::profiler::set_enabled(false);
        if (mode == cuda::FusedConv::On) {
          int64_t fused_calls = 0;
          for (const auto& row : cuda::profiler::stats())
            if (row.op == "conv2d_bn_eval") fused_calls += row.calls;
          EXPECT_GT(fused_calls, 0) << "the training forward never ran the fused kernel";
        }
        const auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
        for (size_t i = 0; i < pc.size(); ++i)
          EXPECT_TRUE(gpu_matches("parameter " + pc[i].first, pg[i].second.tensor(), pc[i].second.tensor(),
                                  Tol{1e-4, 0}));
      }
      test::expect_replayed_steps_match_eager(
          13, /*eager_memory_efficient=*/false,
          /*graphed_memory_efficient=*/true, gb,
          std::string(cuda::fused_conv_name(mode)) + (fold ? ", folded" : ""));
    }
}

}  // namespace
}  // namespace ladnn
