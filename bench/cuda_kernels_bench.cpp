// bench/cuda_kernels_bench.cpp — each hand-written CUDA kernel beside its library twin (cuDNN, cuBLAS)
// on DenseNet-169's layer shapes at batch 32, through the public ops (tensor/ops.h) with the op
// family's implementation switch set per benchmark (cuda/context.h).
//
// Names: <op>/<impl>/<shape>[/<variant>], impl = cudnn | cublas | native (| native-tc: our tensor-core
// backward convolutions; | native-mma: the mma.sync forward convolution in each tile; | unfused:
// dense_layer_eval's library ops with their BatchNorm kernels), so
//   ./build/cuda_kernels_bench --benchmark_filter='bn_'            BN only
//   ./build/cuda_kernels_bench --benchmark_filter='/native/'       our kernels only
//   ./build/cuda_kernels_bench --benchmark_format=json > out.json  machine-readable
// Timing: manual time from CUDA events around each call on the framework stream, after kWarmup
// untimed calls (cuDNN algorithm search, allocator cache fill) and with the L2 cache flushed before
// every timed call (a memset of twice its size, untimed), so each call starts cold as in a real step
// where the previous layer evicted its inputs. The host-side cost of a call (argument checks, descriptor
// set-up, launches) is inside the interval whenever the GPU waits for it, as it would in training.
// Counters: GB/s = the bytes an ideal kernel must move (read every input once, write every output
// once; a two-pass kernel moves more, so its GB/s understates its real bandwidth), TFLOP/s = the
// op's FLOPs (2 per multiply-add). Both are per call over the measured time.
//
// Without a usable GPU every benchmark is skipped with "no GPU: <reason>" and the program exits 0; an
// op that throws skips its benchmark with the message and makes the program exit 1.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#ifdef LADNN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/ops.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace {

using ladnn::Device;
using ladnn::Generator;
using ladnn::Shape;
using ladnn::Tensor;
using ladnn::cuda::Family;
using ladnn::cuda::Impl;
namespace ops = ladnn::ops;
namespace cuda = ladnn::cuda;

constexpr int kWarmup = 3;
constexpr int64_t kBatch = 32;

std::atomic<int> g_failures{0};  // ops that threw: the exit status says so

std::string shape_name(const Shape& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out;
}

/// Uniform(-1, 1) float32 on the GPU, the same values in every run. Drawing tens of millions of values
/// on the host per benchmark made set-up dominate the run (~2 s per benchmark on the H200), so 2^20
/// values are drawn once per seed and the tensor is tiled with them by device-to-device copies: every
/// element is a real random value (never zeros), repeating with a period of 4 MiB.
Tensor random_gpu(const Shape& shape, uint64_t seed) {
  constexpr int64_t kPool = int64_t(1) << 20;
  Generator gen(seed);
  const Tensor pool = Tensor::uniform({kPool}, -1.0, 1.0, gen).to(Device::cuda());
  Tensor out = Tensor::empty(shape, ladnn::DType::Float32, Device::cuda());
#ifdef LADNN_HAVE_CUDA
  const int64_t n = out.numel();
  for (int64_t done = 0; done < n; done += kPool) {
    const int64_t count = std::min(kPool, n - done);
    CUDA_CHECK(cudaMemcpyAsync(static_cast<float*>(out.raw_data()) + done, pool.raw_data(),
                               std::size_t(count) * sizeof(float), cudaMemcpyDeviceToDevice,
                               static_cast<cudaStream_t>(cuda::stream())));
  }
#endif
  return out;
}

/// Evicts the L2 cache: a memset of twice its size on the framework stream.
void flush_l2() {
#ifdef LADNN_HAVE_CUDA
  static const std::size_t bytes = [] {
    int dev = 0, l2 = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    return std::size_t(l2 > 0 ? l2 : 64 << 20) * 2;
  }();
  static cuda::Buffer buffer(bytes);  // lives until exit, from the caching allocator
  CUDA_CHECK(cudaMemsetAsync(buffer.data(), 0, bytes, static_cast<cudaStream_t>(cuda::stream())));
#endif
}

/// Per-call traffic and work, for the counters.
struct Work {
  double bytes = 0;
  double flops = 0;
};

/// Runs a benchmark body: skipped with the reason when no GPU is usable; an exception (from the set-up
/// or an op) skips the benchmark with its message and counts as a failure for the exit status.
template <typename Body>
void guarded(benchmark::State& state, Body body) {
  if (!cuda::available()) {
    state.SkipWithError(("no GPU: " + cuda::unavailable_reason()).c_str());
    return;
  }
  try {
    body();
  } catch (const std::exception& e) {
    ++g_failures;
    state.SkipWithError(e.what());
  }
}

/// Runs `call` kWarmup times, then once per benchmark iteration between two CUDA events, with an L2
/// flush before each. `call` queues GPU work (through the public ops); its results are dropped.
void run_timed(benchmark::State& state, const std::function<void()>& call, Work work) {
  for (int i = 0; i < kWarmup; ++i) call();
  cuda::synchronize();
  cuda::EventTimer timer;
  double seconds = 0;
  int64_t calls = 0;
  for (auto _ : state) {
    flush_l2();
    timer.start();
    call();
    timer.stop();
    const double s = timer.elapsed_ms() / 1e3;
    state.SetIterationTime(s);
    seconds += s;
    ++calls;
  }
  if (calls > 0 && seconds > 0) {
    if (work.bytes > 0) state.counters["GB/s"] = work.bytes * double(calls) / seconds / 1e9;
    if (work.flops > 0) state.counters["TFLOP/s"] = work.flops * double(calls) / seconds / 1e12;
  }
}

benchmark::internal::Benchmark* configure(benchmark::internal::Benchmark* b) {
  return b->UseManualTime()->Unit(benchmark::kMillisecond);
}

// ---- batch norm -----------------------------------------------------------------------------------------

// DenseNet-169 BN inputs at batch 32: the stem's norm0, a bottleneck norm2 in block 1, the transition
// norms (the widest input of each block) and norm5.
const Shape kBnShapes[] = {
    {kBatch, 64, 112, 112}, {kBatch, 128, 56, 56}, {kBatch, 256, 56, 56},
    {kBatch, 512, 28, 28},  {kBatch, 1280, 14, 14}, {kBatch, 1664, 7, 7},
};

// BackwardFromX / BackwardInto (fused ReLU, native only): the training dense block's norm1 backward —
// the ReLU mask recomputed from x instead of read from y, and then dx also added into a channel prefix
// of the block's gradient buffer (dx_into) instead of returned.
// ForwardGiven / Stats32 (native only): the training dense block's norm1 forward given the batch
// statistics its table holds (one pass: read x, write y), and the statistics of a layer's 32 new channels
// that fill the table (ops::batch_norm_batch_stats) — beside "fwd_train", which reduces x itself.
// MapSaved / Record32 (native only): a folded norm1's two pieces (LADNN_NORM1_FOLD) — the map from saved
// statistics (ops::batch_norm_map_saved, the library path's pass; compare "fwd_train_given") and the
// record with the last 32 channels fresh (ops::batch_norm_record_train; compare "stats32").
enum class BnPass {
  ForwardTrain,
  ForwardEval,
  BackwardTrain,
  BackwardFromX,
  BackwardInto,
  ForwardGiven,
  Stats32,
  MapSaved,
  Record32
};

// act = Relu: the fused BatchNorm-ReLU (native: in the BN kernels; cuDNN: its BN plus a ReLU pass).
// kernel: the native layout (cuda::BnKernel; Auto unless a "/split", "/channel" or "/cluster" row asks for
// one).
void bench_bn(benchmark::State& state, Shape shape, BnPass pass, ops::BnAct act, Impl impl,
              cuda::BnKernel kernel) {
  guarded(state, [&] {
    cuda::set_impl(Family::BatchNorm, impl);
    const cuda::BnKernel saved_kernel = cuda::bn_kernel();
    cuda::set_bn_kernel(kernel);
    struct Restore {
      cuda::BnKernel k;
      ~Restore() { cuda::set_bn_kernel(k); }
    } restore{saved_kernel};
    const int64_t C = shape[1];
    const Tensor x = random_gpu(shape, 1), dy = random_gpu(shape, 2);
    const Tensor gamma = random_gpu({C}, 3), beta = random_gpu({C}, 4);
    Tensor rm = Tensor::zeros({C}).to(Device::cuda()), rv = Tensor::ones({C}).to(Device::cuda());
    Tensor save_mean, save_invstd, relu_y;
    {
      const ops::BatchNormForward f = ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, act);
      save_mean = f.save_mean;
      save_invstd = f.save_invstd;
      if (act == ops::BnAct::Relu) relu_y = f.y;
    }
    const double n = double(x.numel()) * sizeof(float);
    switch (pass) {
      case BnPass::ForwardTrain:
        run_timed(state, [&] { ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, act); }, {2 * n, 0});
        break;
      case BnPass::ForwardEval:
        run_timed(state, [&] { ops::batch_norm_forward_eval(x, gamma, beta, rm, rv, 1e-5, act); }, {2 * n, 0});
        break;
      case BnPass::BackwardTrain:
        run_timed(state, [&] { ops::batch_norm_backward_train(dy, x, gamma, save_mean, save_invstd, relu_y); },
                  {(relu_y.defined() ? 4 : 3) * n, 0});
        break;
      case BnPass::BackwardFromX:  // reads dy and x, writes dx
        run_timed(state, [&] {
          ops::batch_norm_backward_train(dy, x, gamma, save_mean, save_invstd, Tensor(), Tensor(), {true, beta});
        }, {3 * n, 0});
        break;
      case BnPass::ForwardGiven: {  // reads x, writes y
        const Tensor stats = ops::batch_norm_batch_stats(x);
        run_timed(state,
                  [&] { ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, act, stats); },
                  {2 * n, 0});
        break;
      }
      case BnPass::Stats32: {  // reads 32 channels of x in place
        const int64_t k = std::min<int64_t>(32, C);
        const Tensor slice = x.narrow(1, C - k, k),
                     stats = Tensor::empty({k, 2}, ladnn::DType::Float64, x.device());
        run_timed(state, [&] { ops::batch_norm_batch_stats_into(slice, stats); },
                  {n * double(k) / double(C), 0});
        break;
      }
      case BnPass::MapSaved:  // reads x, writes y
        run_timed(state, [&] { ops::batch_norm_map_saved(x, gamma, beta, save_mean, save_invstd, act); },
                  {2 * n, 0});
        break;
      case BnPass::Record32: {  // reads 32 channels of x
        const int64_t k = std::min<int64_t>(32, C);
        const Tensor stats = ops::batch_norm_batch_stats(x);
        run_timed(state, [&] { ops::batch_norm_record_train(x, rm, rv, 0.1, 1e-5, act, stats, k); },
                  {n * double(k) / double(C), 0});
        break;
      }
      case BnPass::BackwardInto: {  // reads dy, x and the prefix, writes the prefix
        Shape gs = shape;
        gs[1] += 32;
        const Tensor G = random_gpu(gs, 5), prefix = G.narrow(1, 0, C);
        run_timed(state, [&] {
          ops::batch_norm_backward_train(dy, x, gamma, save_mean, save_invstd, Tensor(), prefix, {true, beta});
        }, {4 * n, 0});
        break;
      }
    }
    state.SetLabel(cuda::impl_name(Family::BatchNorm, impl));
  });
}

// ---- pooling ---------------------------------------------------------------------------------------------

ops::Pool2dParams pool_params(int64_t k, int64_t s, int64_t pad) {
  ops::Pool2dParams p;
  p.kernel_h = p.kernel_w = k;
  p.stride_h = p.stride_w = s;
  p.pad_h = p.pad_w = pad;
  return p;
}

struct PoolShape {
  Shape x;
  int64_t k, s, pad;
};
// features.pool0 (max 3x3/2 pad 1) and the three transition pools (avg 2x2/2).
const PoolShape kMaxPool = {{kBatch, 64, 112, 112}, 3, 2, 1};
const PoolShape kAvgPools[] = {
    {{kBatch, 128, 56, 56}, 2, 2, 0},
    {{kBatch, 256, 28, 28}, 2, 2, 0},
    {{kBatch, 640, 14, 14}, 2, 2, 0},
};

void bench_max_pool(benchmark::State& state, PoolShape ps, bool backward, Impl impl) {
  guarded(state, [&] {
    cuda::set_impl(Family::Pool, impl);
    const ops::Pool2dParams p = pool_params(ps.k, ps.s, ps.pad);
    const Tensor x = random_gpu(ps.x, 5);
    const ops::MaxPoolForward f = ops::max_pool2d_forward(x, p);
    const Tensor dy = random_gpu(f.y.shape(), 6);
    const double nx = double(x.numel()), ny = double(f.y.numel());
    if (!backward)
      run_timed(state, [&] { ops::max_pool2d_forward(x, p); }, {4 * nx + 12 * ny, 0});
    else
      run_timed(state, [&] { ops::max_pool2d_backward(dy, f.indices, ps.x, p); }, {12 * ny + 4 * nx, 0});  // the gather autograd runs
    state.SetLabel(cuda::impl_name(Family::Pool, impl));
  });
}

void bench_avg_pool(benchmark::State& state, PoolShape ps, bool backward, Impl impl) {
  guarded(state, [&] {
    cuda::set_impl(Family::Pool, impl);
    const ops::Pool2dParams p = pool_params(ps.k, ps.s, ps.pad);
    const Tensor x = random_gpu(ps.x, 7);
    const Shape y_shape = ops::pool2d_output_shape(ps.x, p);
    const Tensor dy = random_gpu(y_shape, 8);
    const double bytes = 4.0 * double(x.numel() + dy.numel());
    if (!backward)
      run_timed(state, [&] { ops::avg_pool2d_forward(x, p); }, {bytes, 0});
    else
      run_timed(state, [&] { ops::avg_pool2d_backward(dy, ps.x, p); }, {bytes, 0});
    state.SetLabel(cuda::impl_name(Family::Pool, impl));
  });
}

// The DenseNet head's global average pool (native only: no library twin).
void bench_global_pool(benchmark::State& state, bool backward) {
  guarded(state, [&] {
    const Shape xs{kBatch, 1664, 7, 7};
    const Tensor x = random_gpu(xs, 9), dy = random_gpu({kBatch, 1664, 1, 1}, 10);
    const double bytes = 4.0 * double(x.numel() + dy.numel());
    if (!backward)
      run_timed(state, [&] { ops::adaptive_avg_pool2d_forward(x, 1, 1); }, {bytes, 0});
    else
      run_timed(state, [&] { ops::adaptive_avg_pool2d_backward(dy, xs); }, {bytes, 0});
    state.SetLabel("native");
  });
}

// ---- convolution -------------------------------------------------------------------------------------------

/// Sets LADNN_FUSED_CONV's mode for a benchmark body, restoring it even when an op throws.
struct FusedModeScope {
  explicit FusedModeScope(cuda::FusedConv mode) : saved(cuda::fused_conv()) { cuda::set_fused_conv(mode); }
  ~FusedModeScope() { cuda::set_fused_conv(saved); }
  cuda::FusedConv saved;
};

struct ConvShape {
  const char* kernel;  // "1x1", "3x3", "7x7s2"
  int64_t H, C, K, R, stride, pad;
};
// As bench/conv2d_bench.cpp (a mid-block 1x1 bottleneck and the 3x3 growth conv of each dense block,
// and the 7x7 stride-2 stem), at batch 32.
const ConvShape kConvShapes[] = {
    {"1x1", 56, 128, 128, 1, 1, 0}, {"1x1", 28, 256, 128, 1, 1, 0}, {"1x1", 14, 640, 128, 1, 1, 0},
    {"1x1", 7, 1280, 128, 1, 1, 0}, {"3x3", 56, 128, 32, 3, 1, 1},  {"3x3", 28, 128, 32, 3, 1, 1},
    {"3x3", 14, 128, 32, 3, 1, 1},  {"3x3", 7, 128, 32, 3, 1, 1},   {"7x7s2", 224, 3, 64, 7, 2, 3},
};

/// A row's convolution parameters, and its name: "<kernel>/<H>x<H>/<C>-><K>".
ops::Conv2dParams params_of(const ConvShape& s) {
  ops::Conv2dParams p;
  p.stride_h = p.stride_w = s.stride;
  p.pad_h = p.pad_w = s.pad;
  return p;
}
std::string conv_name(const ConvShape& s) {
  return std::string(s.kernel) + "/" + std::to_string(s.H) + "x" + std::to_string(s.H) + "/" +
         std::to_string(s.C) + "->" + std::to_string(s.K);
}

/// Skips the row (true) where our tensor-core kernels cannot run: it would time nothing, or the library under
/// our kernels' name.
bool skipped_without_tensor_cores(benchmark::State& state) {
  if (cuda::fused_conv_tensor_cores()) return false;
  state.SkipWithError("our tensor-core kernels do not run here (TF32 off, or a GPU below sm_80)");
  return true;
}

enum class ConvPass { Forward, BackwardInput, BackwardWeight };

// `mode`: for the library version, cuDNN alone or a pointwise conv as a cuBLAS GEMM (LADNN_CONV1X1).
// `fused`: LADNN_FUSED_CONV for the backward passes — Off: the library; On: our tensor-core kernels
// (cuda/fused_conv_tc.cuh's flipped-weight data pass, cuda/conv_wgrad_tc.cuh) in their default tiles;
// Auto: the per-shape choice among their tiles and the library, made in the warm-up.
void bench_conv(benchmark::State& state, ConvShape s, ConvPass pass, Impl impl, cuda::Conv1x1 mode,
                cuda::FusedConv fused) {
  guarded(state, [&] {
    FusedModeScope scope(fused);
    if (fused != cuda::FusedConv::Off && skipped_without_tensor_cores(state)) return;
    cuda::set_impl(Family::Conv, impl);
    cuda::set_conv1x1(mode);
    const ops::Conv2dParams p = params_of(s);
    const Shape xs{kBatch, s.C, s.H, s.H}, ws{s.K, s.C, s.R, s.R};
    const Shape ys = ops::conv2d_output_shape(xs, ws, p);
    const Tensor x = random_gpu(xs, 11), w = random_gpu(ws, 12), dy = random_gpu(ys, 13);
    const double flops = 2.0 * double(kBatch * s.K * s.C * s.R * s.R * ys[2] * ys[3]);
    switch (pass) {
      case ConvPass::Forward:
        if (fused != cuda::FusedConv::Off)  // as the training dense blocks run it: the op without BatchNorms
          run_timed(state, [&] { ops::conv2d_bn_eval(x, nullptr, w, p, nullptr); }, {0, flops});
        else
          run_timed(state, [&] { ops::conv2d_forward(x, w, Tensor(), p); }, {0, flops});
        break;
      case ConvPass::BackwardInput:
        run_timed(state, [&] { ops::conv2d_backward_input(dy, w, xs, p); }, {0, flops});
        break;
      case ConvPass::BackwardWeight:
        run_timed(state, [&] { ops::conv2d_backward_weight(dy, x, ws, p); }, {0, flops});
        break;
    }
    const std::string what = fused != cuda::FusedConv::Off ? std::string("fused-conv ") + cuda::fused_conv_name(fused)
                             : impl == Impl::Native        ? "native"
                                                           : cuda::conv1x1_name(mode);
    state.SetLabel(what + (cuda::tf32_enabled() ? " tf32" : " fp32"));
  });
}

// Our mma.sync convolutions (cuda/fused_conv_mma.cuh, cuda/fused_conv_halo.cuh) alone, in launch shape
// `plan` (an index of the fused kernel's plans, cuda::fused_conv_plan_is_mma or _is_halo), the reduction
// whole (cps 0) or in runs of cps stages: the plain forward convolution, as the conv_fwd rows beside it
// time cuDNN and cuBLAS.
void bench_conv_mma(benchmark::State& state, ConvShape s, int plan, int cps) {
  guarded(state, [&] {
    if (skipped_without_tensor_cores(state)) return;
    const ops::Conv2dParams p = params_of(s);
    const Shape xs{kBatch, s.C, s.H, s.H}, ws{s.K, s.C, s.R, s.R};
    const Shape ys = ops::conv2d_output_shape(xs, ws, p);
    const Tensor x = random_gpu(xs, 11), w = random_gpu(ws, 12);
    const Tensor y = Tensor::empty(ys, ladnn::DType::Float32, Device::cuda());
    const double flops = 2.0 * double(kBatch * s.K * s.C * s.R * s.R * ys[2] * ys[3]);
    run_timed(state,
              [&] {
                cuda::conv2d_bn_eval_fused_plan(x, s.C * s.H * s.H, nullptr, w, p, nullptr, y, ys[1] * ys[2] * ys[3],
                                                plan, cps);
              },
              {0, flops});
    state.SetLabel("mma tf32");
  });
}

// Our mma.sync weight gradients alone, split for `waves` blocks per SM, beside conv_bwd_weight/cudnn/...
// (dy and x packed, as those rows have them): a 1x1 row on cuda/conv_wgrad_pw.cuh, a 3x3 row on
// cuda/conv_wgrad_halo.cuh in its plan `plan` (kWgradHaloPlans). `pre` (1x1 only): x through a folded
// norm1's BatchNorm-ReLU in the kernel's prologue (the batch form of ops::BnEval, LADNN_NORM1_FOLD),
// the row to read beside the plain one: what the prologue costs.
void bench_wgrad_mma(benchmark::State& state, ConvShape s, int plan, int waves, bool pre) {
  guarded(state, [&] {
    if (skipped_without_tensor_cores(state)) return;
    const ops::Conv2dParams p = params_of(s);
    const Shape xs{kBatch, s.C, s.H, s.H}, ws{s.K, s.C, s.R, s.R};
    const Shape ys = ops::conv2d_output_shape(xs, ws, p);
    const Tensor x = random_gpu(xs, 11), dy = random_gpu(ys, 13);
    const Tensor dw = Tensor::empty(ws, ladnn::DType::Float32, Device::cuda());
    const double flops = 2.0 * double(kBatch * s.K * s.C * s.R * s.R * ys[2] * ys[3]);
    const int64_t x_img = s.C * s.H * s.H;
    ops::BnEval bn;
    if (pre) {
      bn.gamma = random_gpu({s.C}, 21);
      bn.beta = random_gpu({s.C}, 22);
      bn.save_mean = random_gpu({s.C}, 23);
      bn.save_invstd = ops::add_scalar(random_gpu({s.C}, 24), 2.0);
      bn.act = ops::BnAct::Relu;
    }
    run_timed(state,
              [&] {
                if (s.R == 1)
                  cuda::conv2d_backward_weight_pw_plan(dy, x, x_img, p, dw, waves, pre ? &bn : nullptr);
                else
                  cuda::conv2d_backward_weight_halo_plan(dy, x, x_img, p, dw, plan, waves);
              },
              {0, flops});
    state.SetLabel("mma tf32");
  });
}

// ---- a dense layer at inference: unfused ops against the fused kernel ----------------------------------------

struct DenseLayerShape {
  int64_t N, H, C;  // batch, map size, channel prefix the layer reads (its block buffer holds C + 32)
};
// The last layer of each DenseNet-169 dense block, at batch 1 (the latency goal) and 32.
const DenseLayerShape kDenseLayers[] = {{1, 56, 224}, {1, 28, 480}, {1, 14, 992}, {1, 7, 1632},
                                        {32, 56, 224}, {32, 28, 480}, {32, 14, 992}, {32, 7, 1632}};

ops::BnEval bench_bn_eval(int64_t C, uint64_t seed) {
  ops::BnEval bn;
  bn.gamma = random_gpu({C}, seed);
  bn.beta = random_gpu({C}, seed + 1);
  bn.running_mean = random_gpu({C}, seed + 2);
  bn.running_var = ops::add_scalar(random_gpu({C}, seed + 3), 2.0);  // in [1, 3]
  bn.act = ops::BnAct::Relu;
  return bn;
}

// DenseNet-169's three transition inputs (the dense blocks' outputs).
const PoolShape kTransitions[] = {
    {{kBatch, 256, 56, 56}, 2, 2, 0}, {{kBatch, 512, 28, 28}, 2, 2, 0}, {{kBatch, 1280, 14, 14}, 2, 2, 0}};

// A transition's inference BatchNorm-ReLU and 2x2 average pool, native: as one op (ops::bn_avg_pool2d_eval,
// one kernel: "fused") or as the two ops it replaced ("two-ops"). Bytes: x read and y written once (what
// the fused kernel moves; the two ops also write and read back the normalised map).
void bench_transition_eval(benchmark::State& state, PoolShape ps, bool fused) {
  guarded(state, [&] {
    cuda::set_impl(Family::Pool, Impl::Native);
    cuda::set_impl(Family::BatchNorm, Impl::Native);
    const ops::Pool2dParams p = pool_params(ps.k, ps.s, ps.pad);
    const Tensor x = random_gpu(ps.x, 7);
    const ops::BnEval bn = bench_bn_eval(ps.x[1], 50);
    const double bytes = 4.0 * double(x.numel() + ladnn::shape_numel(ops::pool2d_output_shape(ps.x, p)));
    if (fused)
      run_timed(state, [&] { ops::bn_avg_pool2d_eval(x, bn, p); }, {bytes, 0});
    else
      run_timed(state,
                [&] {
                  ops::avg_pool2d_forward(ops::batch_norm_forward_eval(x, bn.gamma, bn.beta, bn.running_mean,
                                                                       bn.running_var, bn.eps, bn.act),
                                          p);
                },
                {bytes, 0});
    state.SetLabel(fused ? "one kernel" : "BatchNorm-ReLU, then the pool");
  });
}

// The training BatchNorm-ReLU-pools, native, forward then backward (what a step runs): as one op with its
// backward from the pooled gradient (ops::bn_avg_pool2d_train / bn_max_pool2d_train: "fused", the
// statistics computed inside) or as the separate ops they replaced ("two-ops": BatchNorm-ReLU, pool, the
// pool's backward, the BatchNorm's backward with the mask read from y). Bytes: what the fused pair moves
// by count (x read three times: statistics, forward, backward's two passes less one; the pooled map and
// its gradient; dx written).
void bench_bn_pool_train(benchmark::State& state, PoolShape ps, bool max_pool, bool fused) {
  guarded(state, [&] {
    cuda::set_impl(Family::Pool, Impl::Native);
    cuda::set_impl(Family::BatchNorm, Impl::Native);
    const ops::Pool2dParams p = pool_params(ps.k, ps.s, ps.pad);
    const int64_t C = ps.x[1];
    const Tensor x = random_gpu(ps.x, 8), gamma = random_gpu({C}, 9), beta = random_gpu({C}, 10);
    const Tensor dy = random_gpu(ops::pool2d_output_shape(ps.x, p), 11);
    Tensor rm = Tensor::zeros({C}).to(Device::cuda()), rv = Tensor::ones({C}).to(Device::cuda());
    const double nx = double(x.numel()), ny = double(dy.numel());
    auto two_ops = [&] {
      const ops::BatchNormForward n =
          ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, ops::BnAct::Relu);
      Tensor dfull;
      if (max_pool) {
        const ops::MaxPoolForward m = ops::max_pool2d_forward(n.y, p);
        dfull = ops::max_pool2d_backward(dy, m.indices, ps.x, p);
      } else {
        ops::avg_pool2d_forward(n.y, p);
        dfull = ops::avg_pool2d_backward(dy, ps.x, p);
      }
      ops::batch_norm_backward_train(dfull, x, gamma, n.save_mean, n.save_invstd, n.y);
    };
    auto one_op = [&] {
      if (max_pool) {
        const ops::BnMaxPoolForward f =
            ops::bn_max_pool2d_train(x, gamma, beta, rm, rv, 0.1, 1e-5, ops::BnAct::Relu, p);
        ops::bn_max_pool2d_backward_train(dy, f.indices, x, gamma, beta, f.bn.save_mean, f.bn.save_invstd,
                                          ops::BnAct::Relu, p);
      } else {
        const ops::BatchNormForward f =
            ops::bn_avg_pool2d_train(x, gamma, beta, rm, rv, 0.1, 1e-5, ops::BnAct::Relu, p);
        ops::bn_avg_pool2d_backward_train(dy, x, gamma, beta, f.save_mean, f.save_invstd, ops::BnAct::Relu,
                                          p);
      }
    };
    const double bytes = 4.0 * (5 * nx + 3 * ny);
    if (fused)
      run_timed(state, one_op, {bytes, 0});
    else
      run_timed(state, two_ops, {bytes, 0});
    state.SetLabel(fused ? "one op each way" : "BatchNorm-ReLU and pool, each way");
  });
}

// norm1-ReLU, conv1 (1x1 to 128), norm2-ReLU, conv2 (3x3 to 32) written into the block buffer, as
// DenseLayer::forward_into runs them: LADNN_FUSED_CONV off (four ops) or on (two kernels).
void bench_dense_layer(benchmark::State& state, DenseLayerShape d, cuda::FusedConv mode) {
  guarded(state, [&] {
    FusedModeScope scope(mode);
    const Tensor block = random_gpu({d.N, d.C + 32, d.H, d.H}, 21);
    const Tensor prefix = block.narrow(1, 0, d.C), slice = block.narrow(1, d.C, 32);
    const Tensor w1 = random_gpu({128, d.C, 1, 1}, 22), w2 = random_gpu({32, 128, 3, 3}, 23);
    const ops::BnEval n1 = bench_bn_eval(d.C, 30), n2 = bench_bn_eval(128, 40);
    ops::Conv2dParams p3;
    p3.pad_h = p3.pad_w = 1;
    const double pixels = double(d.N * d.H * d.H);
    const double flops = 2.0 * pixels * (128.0 * double(d.C) + 32.0 * 128.0 * 9.0);
    run_timed(
        state,
        [&] {
          const Tensor h = ops::conv2d_bn_eval(prefix, &n1, w1, ops::Conv2dParams{}, &n2);
          ops::conv2d_bn_eval_into(h, nullptr, w2, p3, nullptr, slice);
        },
        {4.0 * pixels * double(d.C + 32), flops});
    state.SetLabel(std::string(cuda::fused_conv_name(mode)) + (cuda::tf32_enabled() ? " tf32" : " fp32"));
  });
}

// The stem at inference: conv0 (7x7 stride 2, 3 -> 64) with norm0-ReLU, as DenseNet::run_features runs it.
void bench_stem(benchmark::State& state, int64_t N, cuda::FusedConv mode) {
  guarded(state, [&] {
    FusedModeScope scope(mode);
    const Tensor x = random_gpu({N, 3, 224, 224}, 24), w = random_gpu({64, 3, 7, 7}, 25);
    const ops::BnEval n0 = bench_bn_eval(64, 50);
    ops::Conv2dParams p;
    p.stride_h = p.stride_w = 2;
    p.pad_h = p.pad_w = 3;
    run_timed(state, [&] { ops::conv2d_bn_eval(x, nullptr, w, p, &n0); },
              {0, 2.0 * double(N) * 112 * 112 * 64 * 3 * 49});
    state.SetLabel(std::string(cuda::fused_conv_name(mode)) + (cuda::tf32_enabled() ? " tf32" : " fp32"));
  });
}

// ---- GEMM ---------------------------------------------------------------------------------------------------

void bench_gemm(benchmark::State& state, int64_t n, Impl impl, bool tf32) {
  guarded(state, [&] {
    cuda::set_impl(Family::Gemm, impl);
    struct Tf32Scope {  // restores the TF32 switch even when an op throws
      bool saved = cuda::tf32_enabled();
      ~Tf32Scope() { cuda::set_tf32(saved); }
    } tf32_scope;
    cuda::set_tf32(tf32);
    const Tensor a = random_gpu({n, n}, 14), b = random_gpu({n, n}, 15);
    run_timed(state, [&] { ops::matmul(a, b); }, {0, 2.0 * double(n) * double(n) * double(n)});
    state.SetLabel(std::string(cuda::impl_name(Family::Gemm, impl)) + (tf32 ? " tf32" : " fp32"));
  });
}

// ---- registration ----------------------------------------------------------------------------------------------

void register_all() {
  const Impl impls[] = {Impl::Library, Impl::Native};
  auto impl_str = [](Family f, Impl i) { return std::string(cuda::impl_name(f, i)); };

  const std::pair<BnPass, const char*> bn_passes[] = {
      {BnPass::ForwardTrain, "fwd_train"}, {BnPass::ForwardEval, "fwd_eval"}, {BnPass::BackwardTrain, "bwd_train"}};
  for (ops::BnAct act : {ops::BnAct::None, ops::BnAct::Relu})
    for (const auto& [pass, name] : bn_passes)
      for (const Shape& s : kBnShapes)
        for (Impl i : impls)
          configure(benchmark::RegisterBenchmark((std::string(act == ops::BnAct::Relu ? "bnrelu_" : "bn_") + name + "/" +
                                                  impl_str(Family::BatchNorm, i) + "/" + shape_name(s))
                                                     .c_str(),
                                                 bench_bn, s, pass, act, i, cuda::BnKernel::Auto));
  // The native layouts side by side (LADNN_BN_KERNEL): the rows above run auto's choice; these force the
  // split path (three kernels), the one-kernel-per-channel path and the values held in registers (a block
  // or a cluster of blocks per channel; where a channel is too long for it, auto's), training forward and
  // backward.
  for (const auto& [pass, name] : {std::pair<BnPass, const char*>{BnPass::ForwardTrain, "fwd_train"},
                                   std::pair<BnPass, const char*>{BnPass::BackwardFromX, "bwd_train_fromx"}})
    for (const Shape& s : kBnShapes)
      for (cuda::BnKernel k : {cuda::BnKernel::Split, cuda::BnKernel::Channel, cuda::BnKernel::Cluster})
        configure(benchmark::RegisterBenchmark(
            (std::string("bnrelu_") + name + "/native/" + shape_name(s) + "/" + cuda::bn_kernel_name(k)).c_str(),
            bench_bn, s, pass, ops::BnAct::Relu, Impl::Native, k));
  // The dense block's norm1 forward from its table of statistics (native only; compare "fwd_train"), and
  // the statistics of 32 new channels under both layouts of their kernel (a block per channel, or split).
  for (const Shape& s : kBnShapes) {
    configure(benchmark::RegisterBenchmark(("bnrelu_fwd_train_given/native/" + shape_name(s)).c_str(),
                                           bench_bn, s, BnPass::ForwardGiven, ops::BnAct::Relu, Impl::Native,
                                           cuda::BnKernel::Auto));
    configure(benchmark::RegisterBenchmark(("bnrelu_map_saved/native/" + shape_name(s)).c_str(), bench_bn, s,
                                           BnPass::MapSaved, ops::BnAct::Relu, Impl::Native,
                                           cuda::BnKernel::Auto));
    configure(benchmark::RegisterBenchmark(("bn_record32/native/" + shape_name(s)).c_str(), bench_bn, s,
                                           BnPass::Record32, ops::BnAct::Relu, Impl::Native,
                                           cuda::BnKernel::Auto));
    for (cuda::BnKernel k : {cuda::BnKernel::Auto, cuda::BnKernel::Split})
      configure(benchmark::RegisterBenchmark(
          ("bn_stats32/native/" + shape_name(s) + "/" + cuda::bn_kernel_name(k)).c_str(), bench_bn, s,
          BnPass::Stats32, ops::BnAct::None, Impl::Native, k));
  }
  // The dense block's norm1 backward variants (native only: cuDNN has neither).
  for (const auto& [pass, name] : {std::pair<BnPass, const char*>{BnPass::BackwardFromX, "bwd_train_fromx"},
                                   std::pair<BnPass, const char*>{BnPass::BackwardInto, "bwd_train_fromx_into"}})
    for (const Shape& s : kBnShapes)
      configure(benchmark::RegisterBenchmark((std::string("bnrelu_") + name + "/native/" + shape_name(s)).c_str(),
                                             bench_bn, s, pass, ops::BnAct::Relu, Impl::Native,
                                             cuda::BnKernel::Auto));

  for (bool backward : {false, true}) {
    for (Impl i : impls)
      configure(benchmark::RegisterBenchmark((std::string(backward ? "maxpool_bwd/" : "maxpool_fwd/") +
                                              impl_str(Family::Pool, i) + "/" + shape_name(kMaxPool.x) + "/3x3s2")
                                                 .c_str(),
                                             bench_max_pool, kMaxPool, backward, i));
    for (const PoolShape& ps : kAvgPools)
      for (Impl i : impls)
        configure(benchmark::RegisterBenchmark((std::string(backward ? "avgpool_bwd/" : "avgpool_fwd/") +
                                                impl_str(Family::Pool, i) + "/" + shape_name(ps.x) + "/2x2s2")
                                                   .c_str(),
                                               bench_avg_pool, ps, backward, i));
    configure(benchmark::RegisterBenchmark(
        (std::string(backward ? "globalpool_bwd" : "globalpool_fwd") + "/native/32x1664x7x7").c_str(),
        bench_global_pool, backward));
  }
  for (const PoolShape& ps : kTransitions)
    for (bool fused : {false, true})
      configure(benchmark::RegisterBenchmark(
          ("transition_eval/" + std::string(fused ? "fused/" : "two-ops/") + shape_name(ps.x)).c_str(),
          bench_transition_eval, ps, fused));
  // Training: the transitions' norm-ReLU-average pool and the stem's norm0-ReLU-max pool, forward and
  // backward.
  for (bool fused : {false, true}) {
    for (const PoolShape& ps : kTransitions)
      configure(benchmark::RegisterBenchmark(
          ("transition_train/" + std::string(fused ? "fused/" : "two-ops/") + shape_name(ps.x)).c_str(),
          bench_bn_pool_train, ps, false, fused));
    configure(benchmark::RegisterBenchmark(
        ("stem_pool_train/" + std::string(fused ? "fused/" : "two-ops/") + shape_name(kMaxPool.x)).c_str(),
        bench_bn_pool_train, kMaxPool, true, fused));
  }

  const std::pair<ConvPass, const char*> conv_passes[] = {{ConvPass::Forward, "conv_fwd"},
                                                          {ConvPass::BackwardInput, "conv_bwd_input"},
                                                          {ConvPass::BackwardWeight, "conv_bwd_weight"}};
  // Library rows are cuDNN alone; 1x1 forward and backward-input rows also as cuBLAS GEMMs (the candidate
  // LADNN_CONV1X1=auto times against cuDNN per shape).
  for (const auto& [pass, name] : conv_passes)
    for (const ConvShape& s : kConvShapes) {
      const std::string shape = conv_name(s);
      for (Impl i : impls)
        configure(benchmark::RegisterBenchmark((std::string(name) + "/" + impl_str(Family::Conv, i) + "/" + shape).c_str(),
                                               bench_conv, s, pass, i, cuda::Conv1x1::Cudnn, cuda::FusedConv::Off));
      if (s.R == 1 && s.stride == 1 && pass != ConvPass::BackwardWeight)
        configure(benchmark::RegisterBenchmark((std::string(name) + "/cublas/" + shape).c_str(), bench_conv, s, pass,
                                               Impl::Library, cuda::Conv1x1::Cublas, cuda::FusedConv::Off));
      // Our tensor-core kernels (TF32 on; the data pass at stride 1): "native-tc" the backward passes in
      // their default tile (On), "/auto" LADNN_FUSED_CONV=auto's choice, ours or the library's, whichever
      // timed faster — for the forward, among every launch shape of both forms (split or whole), as the
      // training dense blocks' forward convolutions run.
      const bool ours = pass == ConvPass::BackwardWeight || (pass == ConvPass::BackwardInput && s.stride == 1);
      for (cuda::FusedConv fused : {cuda::FusedConv::On, cuda::FusedConv::Auto}) {
        if (!ours && !(pass == ConvPass::Forward && fused == cuda::FusedConv::Auto)) continue;
        configure(benchmark::RegisterBenchmark(
            (std::string(name) + "/native-tc/" + shape + (fused == cuda::FusedConv::Auto ? "/auto" : "")).c_str(),
            bench_conv, s, pass, Impl::Library, cuda::Conv1x1::Cudnn, fused));
      }
    }

  // The mma kernel's tiles on every forward shape here (it takes 1x1, 3x3 and 7x7; the plan hook runs the
  // 3x3s tap by tap and the stem's 3 channels channel by channel), whole and in runs of 8 stages:
  // "conv_fwd/native-mma/<shape>/mma<BK>x<BM>[/cps8]" (no rows in a build without CUDA: no plans).
  for (const ConvShape& s : kConvShapes) {
    const std::string shape = conv_name(s);
    for (int plan = 0; plan < cuda::fused_conv_plans(); ++plan) {
      if (!cuda::fused_conv_plan_is_mma(plan)) continue;
      for (int cps : {0, 8})
        configure(benchmark::RegisterBenchmark(
            ("conv_fwd/native-mma/" + shape + "/" + cuda::fused_conv_plan_name(plan) + (cps ? "/cps8" : "")).c_str(),
            bench_conv_mma, s, plan, cps));
    }
    // The halo kernel's tiles on the growth 3x3s it takes (stride 1, padding 1, rows at most half the
    // tile's slots: the 56x56 and 28x28 ones with 16-byte copies, the 14x14 one with 8-byte copies ("v2"),
    // the 7x7 one with 4-byte ones ("v1")), whole: "conv_fwd/native-halo/<shape>/halo32x<BM>[v2|v1]".
    for (int plan = 0; plan < cuda::fused_conv_plans(); ++plan) {
      if (!cuda::fused_conv_plan_is_halo(plan) ||
          !cuda::fused_conv_plan_takes(plan, {kBatch, s.C, s.H, s.H}, {s.K, s.C, s.R, s.R}, params_of(s),
                                       false))
        continue;
      configure(benchmark::RegisterBenchmark(
          ("conv_fwd/native-halo/" + shape + "/" + cuda::fused_conv_plan_name(plan)).c_str(), bench_conv_mma,
          s, plan, 0));
    }
  }

  // Our mma.sync weight gradients, for one and two blocks per SM: the pointwise kernel on the 1x1 rows,
  // "conv_bwd_weight/native-pw/1x1/<H>x<H>/<C>->128/w<waves>", and the halo kernel's plans that take the 3x3
  // rows, "conv_bwd_weight/native-halo/3x3/<H>x<H>/128->32/plan<i>/w<waves>" (none in a build without CUDA).
  for (const ConvShape& s : kConvShapes)
    for (int waves : {1, 2}) {
      const std::string tail = "/w" + std::to_string(waves);
      if (s.R == 1 && cuda::conv_backward_plans(true) > 0)
        for (bool pre : {false, true})
          configure(benchmark::RegisterBenchmark(
              ((pre ? "conv_bwd_weight/native-pw-pre/" : "conv_bwd_weight/native-pw/") + conv_name(s) + tail)
                  .c_str(),
              bench_wgrad_mma, s, 0, waves, pre));
      for (int plan = 0; plan < cuda::conv_wgrad_halo_plans(); ++plan)
        if (cuda::conv_wgrad_halo_plan_takes(plan, {kBatch, s.C, s.H, s.H}, {s.K, s.C, s.R, s.R},
                                             params_of(s)))
          configure(benchmark::RegisterBenchmark(
              ("conv_bwd_weight/native-halo/" + conv_name(s) + "/plan" + std::to_string(plan) + tail).c_str(),
              bench_wgrad_mma, s, plan, waves, false));
    }

  // "unfused" = BN kernel + cuDNN (or cuBLAS) conv, twice; "native" = the fused kernel (plan_fused's
  // SIMT launch shape).
  // "/auto": LADNN_FUSED_CONV=auto's per-shape choice among the kernel's launch shapes (SIMT and, with
  // TF32, tensor-core) and the unfused ops, made in the warm-up.
  for (const DenseLayerShape& d : kDenseLayers)
    for (cuda::FusedConv mode : {cuda::FusedConv::Off, cuda::FusedConv::On, cuda::FusedConv::Auto}) {
      const std::string shape =
          std::to_string(d.N) + "x" + std::to_string(d.C) + "x" + std::to_string(d.H) + "x" + std::to_string(d.H);
      const std::string name = mode == cuda::FusedConv::Off  ? "dense_layer_eval/unfused/" + shape
                               : mode == cuda::FusedConv::On ? "dense_layer_eval/native/" + shape
                                                             : "dense_layer_eval/native/" + shape + "/auto";
      configure(benchmark::RegisterBenchmark(name.c_str(), bench_dense_layer, d, mode));
    }

  for (int64_t n : {1, 32})
    for (cuda::FusedConv mode : {cuda::FusedConv::Off, cuda::FusedConv::On, cuda::FusedConv::Auto}) {
      const std::string shape = std::to_string(n) + "x3x224x224";
      const std::string name = mode == cuda::FusedConv::Off  ? "stem_eval/unfused/" + shape
                               : mode == cuda::FusedConv::On ? "stem_eval/native/" + shape
                                                             : "stem_eval/native/" + shape + "/auto";
      configure(benchmark::RegisterBenchmark(name.c_str(), bench_stem, n, mode));
    }

  configure(benchmark::RegisterBenchmark("gemm/cublas/4096/fp32", bench_gemm, int64_t(4096), Impl::Library, false));
  configure(benchmark::RegisterBenchmark("gemm/cublas/4096/tf32", bench_gemm, int64_t(4096), Impl::Library, true));
  configure(benchmark::RegisterBenchmark("gemm/native/4096/fp32", bench_gemm, int64_t(4096), Impl::Native, false));
}

}  // namespace

// Our own main (instead of benchmark_main's) so that an op that threw makes the exit status non-zero.
int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (g_failures.load() > 0) {
    std::fprintf(stderr, "cuda_kernels_bench: %d benchmark(s) failed (see the error rows above)\n", g_failures.load());
    return 1;
  }
  return 0;
}
