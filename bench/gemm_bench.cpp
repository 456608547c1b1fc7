// bench/gemm_bench.cpp — float32 square GEMM, OpenBLAS vs our blocked GEMM (tensor/cpu/gemm.h).
//
// Names: gemm/<version>/<n>, version "blas" or "native". Counter GFLOP/s = 2 n^3 per call / wall time
// (real time: both versions run on several threads). Run: ./build/gemm_bench [--benchmark_format=json]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tensor/cpu/gemm.h"

namespace {

void bench_gemm(benchmark::State& state, bool blas, int64_t n) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> a(n * n), b(n * n), c(n * n);
  for (float& v : a) v = u(rng);
  for (float& v : b) v = u(rng);
  for (auto _ : state) {
    if (blas)
      ladnn::cpu::gemm_blas(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    else
      ladnn::cpu::gemm_blocked(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * n * n * n;
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Registered at load time so the names can carry the sizes; benchmark_main runs them.
const bool registered = [] {
  for (bool blas : {true, false}) {
    if (blas && !ladnn::cpu::have_blas()) continue;  // built without OpenBLAS: native only
    for (int64_t n : {256, 512, 1024, 2048}) {
      const std::string name = std::string("gemm/") + (blas ? "blas/" : "native/") + std::to_string(n);
      benchmark::RegisterBenchmark(name.c_str(), bench_gemm, blas, n)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  return true;
}();

}  // namespace
