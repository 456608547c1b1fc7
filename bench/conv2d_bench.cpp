// bench/conv2d_bench.cpp — float32 conv2d forward, backward-input and backward-weight on DenseNet-169's
// layer shapes at batch 8 (im2col + GEMM, tensor/cpu/conv2d.cpp).
//
// Names: conv2d_<pass>/<kernel>/<H>x<W>/<Cin>-><Cout>. Counter GFLOP/s = 2 N K C R S P Q per pass / wall
// time. With a batch of at least as many images as OpenMP threads (here 8 >= 2), images run in
// parallel, each with the single-threaded blocked GEMM; with OMP_NUM_THREADS above 8 they would run
// one at a time on the threaded GEMM (OpenBLAS, or ours with LADNN_CPU_GEMM=native). The label says which.
// tools/torch_cpu_bench.py times the same passes in PyTorch under the same names.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>
#include <string>

#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace {

using ladnn::Shape;
using ladnn::Tensor;
namespace ops = ladnn::ops;

struct ConvShape {
  const char* kernel;  // name part: "1x1", "3x3", "7x7s2"
  int64_t H, C, K, R, stride, pad;
};

// DenseNet-169 at 224x224: a 1x1 bottleneck conv (Cin -> bn_size * growth = 128) at a mid-block width
// in each dense block, the 3x3 growth conv (128 -> 32) of each block, and the 7x7 stride-2 stem.
const ConvShape kShapes[] = {
    {"1x1", 56, 128, 128, 1, 1, 0}, {"1x1", 28, 256, 128, 1, 1, 0}, {"1x1", 14, 640, 128, 1, 1, 0},
    {"1x1", 7, 1280, 128, 1, 1, 0}, {"3x3", 56, 128, 32, 3, 1, 1},  {"3x3", 28, 128, 32, 3, 1, 1},
    {"3x3", 14, 128, 32, 3, 1, 1},  {"3x3", 7, 128, 32, 3, 1, 1},   {"7x7s2", 224, 3, 64, 7, 2, 3},
};
constexpr int64_t kBatch = 8;

enum class Pass { Forward, BackwardInput, BackwardWeight };

void bench_conv(benchmark::State& state, ConvShape s, Pass pass) {
  ladnn::Generator gen(1);
  ops::Conv2dParams p;
  p.stride_h = p.stride_w = s.stride;
  p.pad_h = p.pad_w = s.pad;
  const Shape x_shape{kBatch, s.C, s.H, s.H}, w_shape{s.K, s.C, s.R, s.R};
  const Tensor x = Tensor::uniform(x_shape, -1, 1, gen);
  const Tensor w = Tensor::uniform(w_shape, -0.1, 0.1, gen);
  const Shape y_shape = ops::conv2d_output_shape(x_shape, w_shape, p);
  const Tensor dy = Tensor::uniform(y_shape, -1, 1, gen);
  for (auto _ : state) {
    Tensor out;
    switch (pass) {
      case Pass::Forward:
        out = ops::conv2d_forward(x, w, Tensor(), p);
        break;
      case Pass::BackwardInput:
        out = ops::conv2d_backward_input(dy, w, x_shape, p);
        break;
      case Pass::BackwardWeight:
        out = ops::conv2d_backward_weight(dy, x, w_shape, p);
        break;
    }
    benchmark::DoNotOptimize(out.raw_data());
  }
  const double flops = 2.0 * kBatch * s.K * s.C * s.R * s.R * y_shape[2] * y_shape[3];
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  const int threads = omp_get_max_threads();
  state.SetLabel(threads > 1 && kBatch >= threads
                     ? "images in parallel, blocked GEMM"
                     : std::string("one image at a time, gemm=") +
                           ladnn::cpu::gemm_backend_name(ladnn::cpu::gemm_backend()));
}

const bool registered = [] {
  const std::pair<Pass, const char*> passes[] = {{Pass::Forward, "conv2d_fwd"},
                                                 {Pass::BackwardInput, "conv2d_bwd_input"},
                                                 {Pass::BackwardWeight, "conv2d_bwd_weight"}};
  for (const auto& [pass, pass_name] : passes) {
    for (const ConvShape& s : kShapes) {
      const std::string name = std::string(pass_name) + "/" + s.kernel + "/" + std::to_string(s.H) + "x" +
                               std::to_string(s.H) + "/" + std::to_string(s.C) + "->" + std::to_string(s.K);
      benchmark::RegisterBenchmark(name.c_str(), bench_conv, s, pass)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  return true;
}();

}  // namespace
