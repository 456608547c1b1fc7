// tests/cuda_conv_backward_tc_test.cpp — a convolution's backward passes on the tensor cores
// (LADNN_FUSED_CONV=on|auto with TF32 on: the data pass as cuda/fused_conv_tc.cuh's kernel reading the
// weight rotated and transposed, the weight gradient as cuda/conv_wgrad_tc.cuh's split-pixel GEMM) on
// the GPU: every tile shape against float64 on DenseNet-169's training shapes; the ops' dispatch under
// On and Auto (timed once per shape, never inside a capture, replayed); training steps through them
// against the CPU and against their own graph replays. tests/cuda_tile_emulation_test.cpp runs the same
// kernel code on the CPU on every machine.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cuda/graph.h"
#include "cuda/ops.h"
#include "cuda/profiler.h"
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

/// Skips the test when the tensor-core kernels cannot run (TF32 off, or a GPU below sm_80).
#define REQUIRE_TENSOR_CORES()                                                               \
  do {                                                                                       \
    if (!cuda::fused_conv_tensor_cores())                                                    \
      GTEST_SKIP() << "the tensor-core kernels need TF32 on (LADNN_TF32) and an sm_80+ GPU"; \
  } while (0)

// TF32 bound, relative to sum |products|: each operand rounds to 10 mantissa bits (2^-11 relative), so
// each product errs by 2^-10; float32 accumulation adds at most a few 2^-24 per addition over sums of
// at most ~12,500 terms per split here. 2^-9 + 1e-5, as tests/cuda_conv_gemm_test.cpp's TF32 bound.
constexpr double kTcRtol = 0x1p-9 + 1e-5;

struct Case {
  int64_t N, C, H, W, K, R, S, stride, pad;
};

// DenseNet-169's training shapes at small batches (the float64 reference loops over every product):
// the widest 7x7 bottleneck's input (1,280 channels), a 14x14 growth 3x3, a 56x56 bottleneck; then a
// 3x3 with odd sizes, a 2x3 window with padding, a strided 3x3 and the stem's 7x7 stride 2 on a 64x64
// image (these two: weight gradient only, the data pass takes stride 1).
const Case kCases[] = {{4, 1280, 7, 7, 128, 1, 1, 1, 0},  {4, 128, 14, 14, 32, 3, 3, 1, 1},
                       {2, 256, 56, 56, 128, 1, 1, 1, 0}, {3, 37, 9, 11, 13, 3, 3, 1, 1},
                       {2, 19, 8, 6, 7, 2, 3, 1, 1},      {2, 37, 9, 11, 13, 3, 3, 2, 1},
                       {2, 3, 64, 64, 64, 7, 7, 2, 3}};

ops::Conv2dParams params_of(const Case& c) {
  ops::Conv2dParams p;
  p.stride_h = p.stride_w = c.stride;
  p.pad_h = p.pad_w = c.pad;
  return p;
}

std::string name_of(const Case& c) {
  return "x (" + std::to_string(c.N) + ", " + std::to_string(c.C) + ", " + std::to_string(c.H) + ", " +
         std::to_string(c.W) + ") w " + std::to_string(c.K) + "x" + std::to_string(c.R) + "x" +
         std::to_string(c.S) + " stride " + std::to_string(c.stride) + " pad " + std::to_string(c.pad);
}

/// The library convolutions for the test's lifetime (the backward passes reach our tensor-core kernels
/// only from the library path: LADNN_CONV=native runs the SIMT kernels instead, as device-check's
/// native pass sets it).
class LibraryConvScope {
 public:
  LibraryConvScope() : saved_(cuda::impl(cuda::Family::Conv)) {
    cuda::set_impl(cuda::Family::Conv, cuda::Impl::Library);
  }
  ~LibraryConvScope() { cuda::set_impl(cuda::Family::Conv, saved_); }
  LibraryConvScope(const LibraryConvScope&) = delete;
  LibraryConvScope& operator=(const LibraryConvScope&) = delete;

 private:
  cuda::Impl saved_;
};

/// The one profiler row of what ran inside `run`, as "op/impl" ("" when not exactly one op ran).
template <class Run>
std::string profiled(Run&& run) {
  struct Restore {  // the profiler's switch as it was (LADNN_PROFILE=1 runs), even if run() throws
    bool saved = cuda::profiler::enabled();
    ~Restore() { cuda::profiler::set_enabled(saved); }
  } restore;
  cuda::synchronize();
  cuda::profiler::reset();
  cuda::profiler::set_enabled(true);
  run();
  cuda::profiler::set_enabled(false);
  const auto rows = cuda::profiler::stats();
  if (rows.size() != 1 || rows[0].calls != 1) return "";
  return rows[0].op + "/" + rows[0].impl;
}

TEST(CudaConvBackwardTc, EveryTileShapeMatchesFloat64) {
  LADNN_REQUIRE_GPU();
  REQUIRE_TENSOR_CORES();
  FillNanScope nan_fill;
  ASSERT_GT(cuda::conv_backward_plans(false), 0);
  ASSERT_GT(cuda::conv_backward_plans(true), 0);
  Generator gen(71);
  for (const Case& c : kCases) {
    const ops::Conv2dParams p = params_of(c);
    const int64_t P = (c.H + 2 * c.pad - c.R) / c.stride + 1, Q = (c.W + 2 * c.pad - c.S) / c.stride + 1;
    // x: the first C of C + 5 channels per image (the dense blocks' prefixes).
    const Tensor xbuf = randn({c.N, c.C + 5, c.H, c.W}, gen), w = randn({c.K, c.C, c.R, c.S}, gen, 0, 0.05);
    const Tensor x = xbuf.narrow(1, 0, c.C), dy = randn({c.N, c.K, P, Q}, gen);
    // dy: packed in the even cases; in the odd ones channels [1, 1 + K) of a wider tensor whose other
    // channels are NaN (the training dense block's output gradient, read in place).
    const bool dy_slice = (&c - kCases) % 2 == 1;
    Tensor dybuf = Tensor::full({c.N, c.K + (dy_slice ? 2 : 0), P, Q}, NAN);
    dybuf.narrow(1, dy_slice ? 1 : 0, c.K).copy_(dy);
    const Tensor gx = to_gpu(xbuf).narrow(1, 0, c.C), gw = to_gpu(w);
    const Tensor gdy = to_gpu(dybuf).narrow(1, dy_slice ? 1 : 0, c.K);
    SCOPED_TRACE(dy_slice ? "dy a channel slice" : "dy packed");
    const int64_t x_img = (c.C + 5) * c.H * c.W;
    const test::ConvGradReference rw = test::conv_backward_reference(dy, x, x.shape(), w.shape(), p, true);
    for (int plan = 0; plan < cuda::conv_backward_plans(true); ++plan)
      for (int waves : {1, 3}) {
        const std::string what = name_of(c) + " weight gradient, plan " + std::to_string(plan) + ", waves " +
                                 std::to_string(waves);
        const Tensor dw = Tensor::empty(w.shape(), DType::Float32, Device::cuda());
        EXPECT_EQ(
            profiled([&] { cuda::conv2d_backward_weight_fused_plan(gdy, gx, x_img, p, dw, plan, waves); }),
            "conv2d_backward_weight/native-tc")
            << what;
        EXPECT_TRUE(gpu_matches(what, dw, rw.value, {0.0, kTcRtol}, rw.scale));
      }
    if (c.stride != 1) {
      const Tensor dx = Tensor::empty(x.shape(), DType::Float32, Device::cuda());
      EXPECT_THROW_WITH(cuda::conv2d_backward_input_fused_plan(gdy, gw, p, dx, 0),
                        "conv2d_backward_input_fused_plan", "does not take this call");
      continue;
    }
    const test::ConvGradReference rx = test::conv_backward_reference(dy, w, x.shape(), w.shape(), p, false);
    for (int plan = 0; plan < cuda::conv_backward_plans(false); ++plan)
      for (int cps : {0, 1}) {  // whole reductions; split one 32-value chunk a split (1 to 36 splits here)
        const std::string what = name_of(c) + " data gradient, plan " + std::to_string(plan) +
                                 ", chunks per split " + std::to_string(cps);
        const Tensor dx = Tensor::empty(x.shape(), DType::Float32, Device::cuda());
        EXPECT_EQ(profiled([&] { cuda::conv2d_backward_input_fused_plan(gdy, gw, p, dx, plan, cps); }),
                  "conv2d_backward_input/native-tc")
            << what;
        EXPECT_TRUE(gpu_matches(what, dx, rx.value, {0.0, kTcRtol}, rx.scale));
      }
  }
  // What the plan hooks refuse, by name.
  const Tensor dy = to_gpu(Tensor::ones({1, 2, 5, 5})), w = to_gpu(Tensor::ones({2, 4, 1, 1}));
  const Tensor x = to_gpu(Tensor::ones({1, 4, 5, 5}));
  const Tensor dx = Tensor::empty({1, 4, 5, 5}, DType::Float32, Device::cuda());
  const Tensor dw = Tensor::empty({2, 4, 1, 1}, DType::Float32, Device::cuda());
  EXPECT_THROW_WITH(cuda::conv2d_backward_input_fused_plan(dy, w, {}, dx, cuda::conv_backward_plans(false)),
                    "plan", "is not in [0, ");
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_fused_plan(dy, x, 100, {}, dw, -1, 1), "is not in [0, ");
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_fused_plan(dy, x, 100, {}, dw, 0, 0), "waves 0 < 1");
  EXPECT_THROW_WITH(cuda::conv2d_backward_input_fused_plan(dy, w, {}, dx, 0, -1), "chunks_per_split -1 < 0");
}

// The growth 3x3's weight gradient with halo-staged bands (cuda/conv_wgrad_halo.cuh) on DenseNet-169's
// four map sizes (56 and 28: 16-byte copies; 14: 8-byte; 7: 4-byte) and a 12-pixel row with K past one
// 32-channel block: every plan that takes the call, split for one and two blocks per SM, against float64.
// x is a channel prefix of a wider tensor and dy a channel slice whose other channels are NaN, as in a
// training dense block. The emulator runs the same kernel on the CPU
// (FusedConvEmulation.HaloWeightGradientMatchesFloat64); this is where it first meets a GPU.
TEST(CudaConvBackwardTc, HaloWeightGradientMatchesFloat64OnGrowthShapes) {
  LADNN_REQUIRE_GPU();
  REQUIRE_TENSOR_CORES();
  FillNanScope nan_fill;
  ASSERT_EQ(cuda::conv_wgrad_halo_plans(), 5);
  Generator gen(73);
  const Case cases[] = {{2, 128, 56, 56, 32, 3, 3, 1, 1},
                        {2, 128, 28, 28, 32, 3, 3, 1, 1},
                        {4, 128, 14, 14, 32, 3, 3, 1, 1},
                        {4, 128, 7, 7, 32, 3, 3, 1, 1},
                        {1, 64, 9, 12, 40, 3, 3, 1, 1}};
  int runs = 0;
  for (const Case& c : cases) {
    const ops::Conv2dParams p = params_of(c);
    const Tensor xbuf = randn({c.N, c.C + 5, c.H, c.W}, gen), x = xbuf.narrow(1, 0, c.C);
    const Tensor dy = randn({c.N, c.K, c.H, c.W}, gen);
    Tensor dybuf = Tensor::full({c.N, c.K + 2, c.H, c.W}, NAN);
    dybuf.narrow(1, 1, c.K).copy_(dy);
    const Tensor gx = to_gpu(xbuf).narrow(1, 0, c.C), gdy = to_gpu(dybuf).narrow(1, 1, c.K);
    const int64_t x_img = (c.C + 5) * c.H * c.W;
    const Shape w_shape{c.K, c.C, 3, 3};
    const test::ConvGradReference rw = test::conv_backward_reference(dy, x, x.shape(), w_shape, p, true);
    int taken = 0;
    for (int plan = 0; plan < cuda::conv_wgrad_halo_plans(); ++plan)
      for (int waves : {1, 2}) {
        const std::string what = name_of(c) + " halo weight gradient, plan " + std::to_string(plan) +
                                 ", waves " + std::to_string(waves);
        const Tensor dw = Tensor::empty(w_shape, DType::Float32, Device::cuda());
        std::string ran;
        try {
          ran = profiled([&] { cuda::conv2d_backward_weight_halo_plan(gdy, gx, x_img, p, dw, plan, waves); });
        } catch (const std::invalid_argument& e) {
          EXPECT_NE(std::string(e.what()).find("takes 3x3 windows"), std::string::npos)
              << what << ": " << e.what();
          continue;  // a copy width or band size this row does not take
        }
        EXPECT_EQ(ran, "conv2d_backward_weight/native-tc") << what;
        EXPECT_TRUE(gpu_matches(what, dw, rw.value, {0.0, kTcRtol}, rw.scale));
        ++taken;
        ++runs;
      }
    EXPECT_GT(taken, 0) << name_of(c);
  }
  EXPECT_EQ(runs, 18);  // 56, 28, 12: two plans each; 14: two; 7: one; each at two splittings
  // What it refuses, by name: a 1x1, a stride-2 3x3, input channels not in blocks of 32.
  const Tensor x = to_gpu(Tensor::ones({1, 32, 8, 8})), dy = to_gpu(Tensor::ones({1, 32, 8, 8}));
  const Tensor dw1 = Tensor::empty({32, 32, 1, 1}, DType::Float32, Device::cuda());
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_halo_plan(dy, x, 32 * 64, {}, dw1, 0, 1),
                    "takes 3x3 windows", "window 1x1");
  ops::Conv2dParams s2;
  s2.stride_h = s2.stride_w = 2;
  s2.pad_h = s2.pad_w = 1;
  const Tensor dy2 = to_gpu(Tensor::ones({1, 32, 4, 4}));
  const Tensor dw3 = Tensor::empty({32, 32, 3, 3}, DType::Float32, Device::cuda());
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_halo_plan(dy2, x, 32 * 64, s2, dw3, 0, 1), "stride 2");
  const Tensor x24 = to_gpu(Tensor::ones({1, 24, 8, 8}));
  const Tensor dw24 = Tensor::empty({32, 24, 3, 3}, DType::Float32, Device::cuda());
  ops::Conv2dParams p1;
  p1.pad_h = p1.pad_w = 1;
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_halo_plan(dy, x24, 24 * 64, p1, dw24, 0, 1), "C 24");
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_halo_plan(dy, x, 32 * 64, p1, dw3, 5, 1),
                    "is not in [0, 5)");
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_halo_plan(dy, x, 32 * 64, p1, dw3, 0, 0), "waves 0 < 1");
}

// The data pass on the mma and halo kernels (Auto's candidates with LADNN_HALO_UNCHECKED=1): a kernel
// rotates and transposes w into a copy, then the forward kernel convolves dy with it. DenseNet-169's
// growth 3x3s at their four sizes (dy a 32-channel slice of a wider gradient, read in place) and a
// bottleneck 1x1 (dy 128 channels, dx 256), every mma and halo plan that takes the call, whole and split,
// against float64.
TEST(CudaConvBackwardTc, DataPassOnTheRotatedCopyMatchesFloat64) {
  LADNN_REQUIRE_GPU();
  REQUIRE_TENSOR_CORES();
  FillNanScope nan_fill;
  Generator gen(75);
  const Case cases[] = {{2, 128, 56, 56, 32, 3, 3, 1, 1},
                        {2, 128, 28, 28, 32, 3, 3, 1, 1},
                        {4, 128, 14, 14, 32, 3, 3, 1, 1},
                        {4, 128, 7, 7, 32, 3, 3, 1, 1},
                        {4, 256, 14, 14, 128, 1, 1, 1, 0}};
  int mma_runs = 0, halo_runs = 0;
  for (const Case& c : cases) {
    const ops::Conv2dParams p = params_of(c);
    const Tensor dy = randn({c.N, c.K, c.H, c.W}, gen);
    Tensor dybuf = Tensor::full({c.N, c.K + 4, c.H, c.W}, NAN);
    dybuf.narrow(1, 4, c.K).copy_(dy);
    const Tensor gdy = to_gpu(dybuf).narrow(1, 4, c.K);
    const Tensor w = randn({c.K, c.C, c.R, c.S}, gen, 0, 0.1), gw = to_gpu(w);
    const Shape x_shape{c.N, c.C, c.H, c.W};
    const test::ConvGradReference ref = test::conv_backward_reference(dy, w, x_shape, w.shape(), p, false);
    int taken = 0;
    for (int plan = 0; plan < cuda::fused_conv_plans(); ++plan) {
      if (!cuda::fused_conv_plan_is_mma(plan) && !cuda::fused_conv_plan_is_halo(plan)) continue;
      for (int cps : {0, 2}) {
        const std::string what = name_of(c) + " data pass on " + cuda::fused_conv_plan_name(plan) +
                                 " chunks per split " + std::to_string(cps);
        const Tensor dx = Tensor::empty(x_shape, DType::Float32, Device::cuda());
        std::string ran;
        try {
          ran = profiled([&] { cuda::conv2d_backward_input_forward_plan(gdy, gw, p, dx, plan, cps); });
        } catch (const std::invalid_argument& e) {
          EXPECT_NE(std::string(e.what()).find(" takes "), std::string::npos) << what << ": " << e.what();
          continue;  // (a halo tile this row length or copy width does not take)
        }
        EXPECT_EQ(ran, "conv2d_backward_input/native-tc") << what;
        EXPECT_TRUE(gpu_matches(what, dx, ref.value, {0.0, kTcRtol}, ref.scale));
        ++taken;
        (cuda::fused_conv_plan_is_halo(plan) ? halo_runs : mma_runs) += 1;
      }
    }
    EXPECT_GT(taken, 0) << name_of(c);
  }
  EXPECT_GT(mma_runs, 0);
  EXPECT_GT(halo_runs, 0) << "no halo plan took a growth 3x3's data pass";
  // What it refuses, by name: a wmma plan (it reads the rotated weight in place), a stride-2 call.
  const Tensor dy = to_gpu(Tensor::ones({1, 32, 8, 8})), w = to_gpu(Tensor::ones({32, 16, 3, 3}));
  const Tensor dx = Tensor::empty({1, 16, 8, 8}, DType::Float32, Device::cuda());
  ops::Conv2dParams p1;
  p1.pad_h = p1.pad_w = 1;
  int wmma = 0;
  while (wmma < cuda::fused_conv_plans() &&
         (!cuda::fused_conv_plan_is_tensor_core(wmma) || cuda::fused_conv_plan_is_mma(wmma) ||
          cuda::fused_conv_plan_is_halo(wmma)))
    ++wmma;
  ASSERT_LT(wmma, cuda::fused_conv_plans());
  EXPECT_THROW_WITH(cuda::conv2d_backward_input_forward_plan(dy, w, p1, dx, wmma), "is not an mma or halo plan");
  EXPECT_THROW_WITH(cuda::conv2d_backward_input_forward_plan(dy, w, p1, dx, cuda::fused_conv_plans()),
                    "is not in [0, ");
}

// The pointwise weight gradient on mma.sync (cuda/conv_wgrad_pw.cuh) on DenseNet-169's bottleneck shapes
// (16-byte copies at 56x56 and 14x14, 4-byte ones at 7x7, the 7x7 input the widest prefix) and an odd one
// (K and C off the tiles, 8-byte copies), split for one and two blocks per SM, x a channel prefix, dy a
// channel slice in the odd cases, against float64.
TEST(CudaConvBackwardTc, PointwiseWeightGradientMatchesFloat64) {
  LADNN_REQUIRE_GPU();
  REQUIRE_TENSOR_CORES();
  FillNanScope nan_fill;
  Generator gen(74);
  const Case cases[] = {{4, 1280, 7, 7, 128, 1, 1, 1, 0},
                        {2, 640, 14, 14, 128, 1, 1, 1, 0},
                        {2, 256, 56, 56, 128, 1, 1, 1, 0},
                        {3, 37, 9, 10, 131, 1, 1, 1, 0}};
  for (const Case& c : cases) {
    const ops::Conv2dParams p = params_of(c);
    const Tensor xbuf = randn({c.N, c.C + 5, c.H, c.W}, gen), x = xbuf.narrow(1, 0, c.C);
    const Tensor dy = randn({c.N, c.K, c.H, c.W}, gen);
    const bool slice = (&c - cases) % 2 == 1;
    Tensor dybuf = Tensor::full({c.N, c.K + (slice ? 2 : 0), c.H, c.W}, NAN);
    dybuf.narrow(1, slice ? 1 : 0, c.K).copy_(dy);
    const Tensor gx = to_gpu(xbuf).narrow(1, 0, c.C), gdy = to_gpu(dybuf).narrow(1, slice ? 1 : 0, c.K);
    const Shape w_shape{c.K, c.C, 1, 1};
    const test::ConvGradReference rw = test::conv_backward_reference(dy, x, x.shape(), w_shape, p, true);
    for (int waves : {1, 2}) {
      const std::string what = name_of(c) + " pointwise weight gradient, waves " + std::to_string(waves);
      const Tensor dw = Tensor::empty(w_shape, DType::Float32, Device::cuda());
      EXPECT_EQ(profiled([&] {
                  cuda::conv2d_backward_weight_pw_plan(gdy, gx, (c.C + 5) * c.H * c.W, p, dw, waves);
                }),
                "conv2d_backward_weight/native-tc")
          << what;
      EXPECT_TRUE(gpu_matches(what, dw, rw.value, {0.0, kTcRtol}, rw.scale));
    }
  }
  const Tensor x = to_gpu(Tensor::ones({1, 32, 8, 8})), dy = to_gpu(Tensor::ones({1, 32, 8, 8}));
  const Tensor dw3 = Tensor::empty({32, 32, 3, 3}, DType::Float32, Device::cuda());
  ops::Conv2dParams p1;
  p1.pad_h = p1.pad_w = 1;
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_pw_plan(dy, x, 32 * 64, p1, dw3, 1), "takes pointwise",
                    "window 3x3");
  const Tensor dw1 = Tensor::empty({32, 32, 1, 1}, DType::Float32, Device::cuda());
  EXPECT_THROW_WITH(cuda::conv2d_backward_weight_pw_plan(dy, x, 32 * 64, {}, dw1, 0), "waves 0 < 1");
}

// The ops themselves: On runs our kernels; Auto times them against the library once per shape, then runs
// the choice alone, replays it in a graph, and refuses a shape first seen inside a capture.
TEST(CudaConvBackwardTc, OpsRunOursUnderOnAndTimeOnceUnderAuto) {
  LADNN_REQUIRE_GPU();
  REQUIRE_TENSOR_CORES();
  DeterministicScope deterministic;  // the library's choice, too, gives the same bits on every run
  LibraryConvScope library;
  Generator gen(72);
  const Case c{8, 640, 14, 14, 128, 1, 1, 1, 0};
  const ops::Conv2dParams p = params_of(c);
  const Tensor x = randn({c.N, c.C, c.H, c.W}, gen), w = randn({c.K, c.C, 1, 1}, gen, 0, 0.05);
  const Tensor dy = randn({c.N, c.K, c.H, c.W}, gen);
  const Tensor gx = to_gpu(x), gw = to_gpu(w), gdy = to_gpu(dy);
  const test::ConvGradReference rw = test::conv_backward_reference(dy, x, x.shape(), w.shape(), p, true);
  const test::ConvGradReference rx = test::conv_backward_reference(dy, w, x.shape(), w.shape(), p, false);
  {
    FusedScope on(cuda::FusedConv::On);
    Tensor dx, dw;
    EXPECT_EQ(profiled([&] { dx = ops::conv2d_backward_input(gdy, gw, x.shape(), p); }),
              "conv2d_backward_input/native-tc");
    EXPECT_EQ(profiled([&] { dw = ops::conv2d_backward_weight(gdy, gx, w.shape(), p); }),
              "conv2d_backward_weight/native-tc");
    EXPECT_TRUE(gpu_matches("On: dx", dx, rx.value, {0.0, kTcRtol}, rx.scale));
    EXPECT_TRUE(gpu_matches("On: dw", dw, rw.value, {0.0, kTcRtol}, rw.scale));
  }
  FusedScope autoscope(cuda::FusedConv::Auto);
  cuda::reset_fused_conv_choices();
  // First calls: timed; their results are right whichever way they went.
  const Tensor dx1 = ops::conv2d_backward_input(gdy, gw, x.shape(), p);
  const Tensor dw1 = ops::conv2d_backward_weight(gdy, gx, w.shape(), p);
  EXPECT_TRUE(gpu_matches("Auto: dx", dx1, rx.value, {0.0, kTcRtol}, rx.scale));
  EXPECT_TRUE(gpu_matches("Auto: dw", dw1, rw.value, {0.0, kTcRtol}, rw.scale));
  // Second calls: one run of the chosen path, no timing, the same bits.
  Tensor dx2, dw2;
  const std::string ran_x = profiled([&] { dx2 = ops::conv2d_backward_input(gdy, gw, x.shape(), p); });
  const std::string ran_w = profiled([&] { dw2 = ops::conv2d_backward_weight(gdy, gx, w.shape(), p); });
  EXPECT_TRUE(ran_x == "conv2d_backward_input/native-tc" || ran_x == "conv2d_backward_input/cudnn" ||
              ran_x == "conv2d_backward_input/cublas")
      << "the second call ran '" << ran_x << "' (expected one call of one implementation)";
  EXPECT_TRUE(ran_w == "conv2d_backward_weight/native-tc" || ran_w == "conv2d_backward_weight/cudnn")
      << "the second call ran '" << ran_w << "'";
  // What Auto says it chose: one shape of each backward pass, the way the second calls ran.
  const std::string said = cuda::describe_fused_conv_choices();
  EXPECT_NE(
      said.find(ran_x == "conv2d_backward_input/native-tc" ? "backward data 1 / 0;" : "backward data 0 / 1;"),
      std::string::npos)
      << said;
  EXPECT_NE(said.find(ran_w == "conv2d_backward_weight/native-tc" ? "backward weight 1 / 0"
                                                                  : "backward weight 0 / 1"),
            std::string::npos)
      << said;
  EXPECT_TRUE(gpu_equals("Auto: dx, second call = first", dx2, to_cpu(dx1)));
  EXPECT_TRUE(gpu_equals("Auto: dw, second call = first", dw2, to_cpu(dw1)));
  // Captured and replayed.
  Tensor dx3, dw3;
  cuda::Graph g;
  g.capture([&] {
    dx3 = ops::conv2d_backward_input(gdy, gw, x.shape(), p);
    dw3 = ops::conv2d_backward_weight(gdy, gx, w.shape(), p);
  });
  ASSERT_TRUE(g.captured());
  g.replay();
  cuda::synchronize();
  EXPECT_TRUE(gpu_equals("Auto: dx, replayed = first", dx3, to_cpu(dx1)));
  EXPECT_TRUE(gpu_equals("Auto: dw, replayed = first", dw3, to_cpu(dw1)));
  // A shape first seen inside a capture is refused by name (each pass); the stream stays usable.
  const Tensor dy2 = to_gpu(randn({c.N, c.K, 5, 5}, gen)), x2 = to_gpu(randn({c.N, c.C, 5, 5}, gen));
  for (bool weight : {false, true}) {
    cuda::Graph g2;
    std::string what = "<no error>";
    try {
      g2.capture([&] {
        if (weight)
          ops::conv2d_backward_weight(dy2, x2, w.shape(), p);
        else
          ops::conv2d_backward_input(dy2, gw, x2.shape(), p);
      });
    } catch (const std::exception& e) {
      what = e.what();
    }
    EXPECT_NE(what.find("first seen inside a CUDA graph capture"), std::string::npos) << what;
    EXPECT_FALSE(g2.captured());
  }
  ops::conv2d_backward_input(dy2, gw, x2.shape(), p);
  ops::conv2d_backward_weight(dy2, x2, w.shape(), p);
  cuda::synchronize();
}

/// Sum of squares of a CPU tensor's elements.
double sumsq(const Tensor& a) {
  double s = 0;
  for (double v : a.to_vector()) s += v * v;
  return s;
}

// Training with TF32 on, through our backward kernels (On) or whatever Auto times faster, plain and
// memory-efficient dense blocks: one SGD step against the CPU's float32 step, compared as updates
// (new - old parameters), whose error is TF32's: each GPU convolution rounds its operands to 10 mantissa
// bits (~5e-4 relative per layer, a few layers deep). Each parameter's update passes within 2% of its
// norm, plus 0.2% of the whole update's RMS per element (a small gradient summed from terms that cancel
// keeps the terms' absolute error, not its own relative one); a wrong gradient (an O(1) error) fails. Then
// three eager steps against one eager step and two replays of its capture (our kernels and, in deterministic
// mode, the library's add in a fixed order).
TEST(CudaConvBackwardTc, TrainingStepsMatchTheCpuAndReplay) {
  LADNN_REQUIRE_GPU();
  REQUIRE_TENSOR_CORES();
  DeterministicScope deterministic;
  LibraryConvScope library;
  Generator gen(73);
  const test::LadnnBatches batches = test::random_ladnn_batches(3, gen);
  const test::LadnnBatch &cb = batches.cpu, &gb = batches.gpu;
  const auto step = test::sgd_step;
  for (cuda::FusedConv mode : {cuda::FusedConv::On, cuda::FusedConv::Auto}) {
    FusedScope fused(mode);
    cuda::reset_fused_conv_choices();
    for (bool efficient : {false, true}) {
      SCOPED_TRACE(std::string(cuda::fused_conv_name(mode)) + (efficient ? ", memory-efficient" : ", plain"));
      auto cpu = test::tiny_ladnn(14, efficient, Device::cpu()),
           gpu = test::tiny_ladnn(14, efficient, Device::cuda());
      std::vector<Tensor> before;
      for (const auto& [name, v] : cpu->named_parameters()) before.push_back(v.tensor().clone());
      SGD opt_c(cpu->parameters(), 0.05, 0.9), opt_g(gpu->parameters(), 0.05, 0.9);
      step(*cpu, opt_c, cb);
      cuda::profiler::reset();
      cuda::profiler::set_enabled(true);
      step(*gpu, opt_g, gb);
      cuda::profiler::set_enabled(false);
      if (mode == cuda::FusedConv::On) {
        int64_t ours_x = 0, ours_w = 0;
        for (const auto& row : cuda::profiler::stats())
          if (row.impl == "native-tc") {
            if (row.op == "conv2d_backward_input") ours_x += row.calls;
            if (row.op == "conv2d_backward_weight") ours_w += row.calls;
          }
        EXPECT_GT(ours_x, 0) << "no data gradient ran on our tensor-core kernel";
        EXPECT_GT(ours_w, 0) << "no weight gradient ran on our tensor-core kernel";
      }
      const auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
      std::vector<Tensor> dc, dg;
      double total = 0, count = 0;
      for (std::size_t i = 0; i < pc.size(); ++i) {
        dc.push_back(ops::sub(pc[i].second.tensor(), before[i]));
        dg.push_back(ops::sub(to_cpu(pg[i].second.tensor()), before[i]));
        total += sumsq(dc.back());
        count += double(dc.back().numel());
      }
      ASSERT_GT(total, 0.0) << "the CPU step changed no parameter";
      const double rms = std::sqrt(total / count);
      for (std::size_t i = 0; i < pc.size(); ++i) {
        const double err = std::sqrt(sumsq(ops::sub(dg[i], dc[i]))), norm = std::sqrt(sumsq(dc[i]));
        EXPECT_LE(err, 0.02 * norm + 0.002 * rms * std::sqrt(double(dc[i].numel())))
            << "update of " << pc[i].first << ": |gpu - cpu| " << err << ", |cpu| " << norm;
      }
    }
    // Both memory-efficient: the capture records the recomputing backward too.
    test::expect_replayed_steps_match_eager(15, true, true, gb, cuda::fused_conv_name(mode));
  }
}

}  // namespace
}  // namespace ladnn
