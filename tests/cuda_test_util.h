// tests/cuda_test_util.h — what every CUDA test needs (STYLE.md habits 7 and 8):
//
//   LADNN_REQUIRE_GPU();            first line of a CUDA test: skips with the reason when no GPU is usable
//   EXPECT_TRUE(gpu_matches("relu forward", y_gpu, y_cpu, {atol, rtol}));
//                                   |gpu - ref| <= atol + rtol * scale elementwise (scale = |ref| unless
//                                   given), printing the first mismatches and the worst one
//   FillNanScope nan_fill;          every GPU block allocated in the scope starts as 0xFF bytes (NaN in
//                                   float, -1 in int64), so an output element a kernel never writes fails
//
// Tolerances belong in the test, next to their reason (dtype, formula, reduction length); kEps32 is
// float32's machine epsilon to write them with.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/allocator.h"
#include "cuda/context.h"
#include "cuda/runtime.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

/// Skips the current test (returns from it) when no GPU is usable, saying why.
#define LADNN_REQUIRE_GPU()                                                                             \
  do {                                                                                                  \
    if (!::ladnn::cuda::available()) GTEST_SKIP() << "no GPU: " << ::ladnn::cuda::unavailable_reason(); \
  } while (0)

namespace ladnn::cuda_test {

/// 2^-23: the gap between 1 and the next float32 (one ulp at 1.0). A correctly rounded float32
/// operation errs by at most kEps32 / 2 relative.
constexpr double kEps32 = 1.1920928955078125e-07;

struct Tol {
  double atol = 0.0;
  double rtol = 0.0;
};

/// "[0, 2, 1]" — the multi-index of a row-major flat index.
inline std::string multi_index(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] > 0 ? flat % shape[d] : 0;
    if (shape[d] > 0) flat /= shape[d];
  }
  std::string s = "[";
  for (std::size_t d = 0; d < idx.size(); ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
  return s + "]";
}

/// `gpu` (on any device; copied to the host) against `ref` (the CPU reference, any float dtype):
///   |gpu_i - ref_i| <= atol + rtol * scale_i,   scale_i = |ref_i|, or scale's element i when given.
/// Give a scale where the error does not follow the result: a sum's rounding error follows sum |terms|
/// (a near-zero sum of large terms is only accurate to the terms' size). Equal values (equal
/// infinities included) always pass; a NaN passes only against a NaN. Shapes must match exactly.
/// On failure the message says how many elements fail, shows the first `show` and the worst
/// (largest |diff| / allowed).
inline ::testing::AssertionResult gpu_matches(const std::string& what, const Tensor& gpu, const Tensor& ref,
                                              Tol tol, const Tensor& scale = Tensor(), int show = 5) {
  if (!gpu.defined()) return ::testing::AssertionFailure() << what << ": the GPU result is undefined";
  if (!ref.defined()) return ::testing::AssertionFailure() << what << ": the reference is undefined";
  if (gpu.shape() != ref.shape())
    return ::testing::AssertionFailure() << what << ": GPU shape " << shape_str(gpu.shape())
                                         << ", reference shape " << shape_str(ref.shape());
  if (scale.defined() && scale.shape() != ref.shape())
    return ::testing::AssertionFailure() << what << ": scale shape " << shape_str(scale.shape())
                                         << " differs from the reference's " << shape_str(ref.shape());
  const std::vector<double> g = gpu.to_vector(), r = ref.to_vector();
  const std::vector<double> s = scale.defined() ? scale.to_vector() : std::vector<double>();
  int64_t bad = 0, worst = -1;
  double worst_ratio = 0.0;
  std::ostringstream first;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double a = g[i], b = r[i];
    if (a == b || (std::isnan(a) && std::isnan(b))) continue;
    const double diff = std::fabs(a - b);
    const double allowed = tol.atol + tol.rtol * (s.empty() ? std::fabs(b) : std::fabs(s[i]));
    if (diff <= allowed) continue;  // a NaN or infinite diff never passes here
    const double ratio = std::isfinite(diff) && allowed > 0 ? diff / allowed : INFINITY;
    if (bad < show)
      first << "\n    " << multi_index(static_cast<int64_t>(i), ref.shape()) << ": gpu " << a << ", ref " << b
            << ", |diff| " << diff << ", allowed " << allowed;
    if (worst < 0 || ratio > worst_ratio) {
      worst = static_cast<int64_t>(i);
      worst_ratio = ratio;
    }
    ++bad;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  const std::size_t w = static_cast<std::size_t>(worst);
  std::ostringstream msg;
  msg.precision(9);
  msg << what << ": " << bad << " of " << g.size() << " elements differ beyond atol " << tol.atol
      << " + rtol " << tol.rtol << " * " << (s.empty() ? "|ref|" : "scale") << " (shape "
      << shape_str(ref.shape()) << "); first:" << first.str()
      << "\n  worst: " << multi_index(worst, ref.shape()) << ": gpu " << g[w] << ", ref " << r[w]
      << ", |diff| " << std::fabs(g[w] - r[w]) << " = " << worst_ratio << " x allowed";
  return ::testing::AssertionFailure() << msg.str();
}

/// Bit-for-bit agreement (NaN matches NaN): for copies, integer data and ops the GPU computes exactly
/// as the CPU does.
inline ::testing::AssertionResult gpu_equals(const std::string& what, const Tensor& gpu, const Tensor& ref) {
  return gpu_matches(what, gpu, ref, Tol{0.0, 0.0});
}

/// True when any element is NaN (e.g. an output element left unwritten under FillNanScope).
inline bool has_nan(const Tensor& t) {
  for (double v : t.to_vector())
    if (std::isnan(v)) return true;
  return false;
}

/// While alive, every block the caching allocator hands out starts filled with 0xFF bytes: NaN in every
/// float32/float64 element, -1 in every int64. A GPU op's output element that the kernel never writes
/// then shows up as a NaN (or -1) in the comparison. Restores the previous setting on exit.
class FillNanScope {
 public:
  FillNanScope() : previous_(cuda::fill_on_allocate()) { cuda::set_fill_on_allocate(true); }
  ~FillNanScope() { cuda::set_fill_on_allocate(previous_); }
  FillNanScope(const FillNanScope&) = delete;
  FillNanScope& operator=(const FillNanScope&) = delete;

 private:
  bool previous_;
};

/// A float32 CPU tensor of N(mean, std) values from `gen`.
inline Tensor randn(const Shape& shape, Generator& gen, double mean = 0.0, double std = 1.0) {
  return Tensor::normal(shape, mean, std, gen, DType::Float32);
}

/// A float32 CPU tensor of U(low, high) values from `gen`.
inline Tensor randu(const Shape& shape, Generator& gen, double low, double high) {
  return Tensor::uniform(shape, low, high, gen, DType::Float32);
}

/// A CPU copy of `t` with every value closer than `margin` to `at` pushed out to at ± margin (keeping
/// its side): inputs for ops with a kink at `at` (relu at 0), so a rounding difference cannot flip a
/// branch between the GPU and the reference. Nudge inputs rather than loosen tolerances.
inline Tensor away_from(const Tensor& t, double at, double margin) {
  std::vector<double> v = t.to_vector();
  for (double& x : v)
    if (std::fabs(x - at) < margin) x = x < at ? at - margin : at + margin;
  return Tensor::from_vector(v, t.shape(), t.dtype());
}

inline Tensor to_gpu(const Tensor& t) {
  return t.to(Device::cuda());
}
inline Tensor to_cpu(const Tensor& t) {
  return t.to(Device::cpu());
}

/// Sets TF32 on or off for its lifetime, then restores the previous setting.
class Tf32Scope {
 public:
  explicit Tf32Scope(bool on) : saved_(cuda::tf32_enabled()) { cuda::set_tf32(on); }
  ~Tf32Scope() { cuda::set_tf32(saved_); }
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool saved_;
};

/// LADNN_FUSED_CONV's mode (cuda::set_fused_conv) for its lifetime, restored after.
class FusedScope {
 public:
  explicit FusedScope(cuda::FusedConv mode) : saved_(cuda::fused_conv()) { cuda::set_fused_conv(mode); }
  ~FusedScope() { cuda::set_fused_conv(saved_); }
  FusedScope(const FusedScope&) = delete;
  FusedScope& operator=(const FusedScope&) = delete;

 private:
  cuda::FusedConv saved_;
};

/// Deterministic mode (cuda::set_deterministic) for its lifetime, restored after.
class DeterministicScope {
 public:
  DeterministicScope() : saved_(cuda::deterministic()) { cuda::set_deterministic(true); }
  ~DeterministicScope() { cuda::set_deterministic(saved_); }
  DeterministicScope(const DeterministicScope&) = delete;
  DeterministicScope& operator=(const DeterministicScope&) = delete;

 private:
  bool saved_;
};

/// Every GPU switch as it was when made, put back when it ends (after waiting for the stream), however the
/// test leaves: a test may then set any of them (cuda::set_impl, set_bn_kernel, ...) freely.
class SwitchesScope {
 public:
  SwitchesScope() : saved_(cuda::save_switches()) {}
  ~SwitchesScope() {
    try {
      cuda::synchronize();
    } catch (...) {  // (a failed test's sticky error: the switches go back all the same)
    }
    cuda::restore_switches(saved_);
  }
  SwitchesScope(const SwitchesScope&) = delete;
  SwitchesScope& operator=(const SwitchesScope&) = delete;

 private:
  cuda::SwitchSnapshot saved_;
};

/// Programmatic dependent launch (cuda/launch.h) on or off for its lifetime; waits for the stream first
/// and last, so that no kernel launched under one setting is still running under the other.
class PdlScope {
 public:
  explicit PdlScope(bool on) : saved_(cuda::programmatic_launch()) {
    cuda::synchronize();
    cuda::set_programmatic_launch(on);
  }
  ~PdlScope() {
    cuda::synchronize();
    cuda::set_programmatic_launch(saved_);
  }
  PdlScope(const PdlScope&) = delete;
  PdlScope& operator=(const PdlScope&) = delete;

 private:
  bool saved_;
};

/// Runs every op family (conv, BN, pool, GEMM) on `impl` and sets TF32 for its lifetime; waits for the
/// stream, then restores the previous choices. Make one only where a GPU is usable.
class ImplScope {
 public:
  ImplScope(cuda::Impl impl, bool tf32) : tf32_(tf32) {
    for (int f = 0; f < kFamilies; ++f) {
      saved_[f] = cuda::impl(cuda::Family(f));
      cuda::set_impl(cuda::Family(f), impl);
    }
  }
  ~ImplScope() {
    cuda::synchronize();
    for (int f = 0; f < kFamilies; ++f) cuda::set_impl(cuda::Family(f), saved_[f]);
  }
  ImplScope(const ImplScope&) = delete;
  ImplScope& operator=(const ImplScope&) = delete;

 private:
  static constexpr int kFamilies = 4;  // cuda::Family's Conv, BatchNorm, Pool, Gemm
  cuda::Impl saved_[kFamilies] = {};
  Tf32Scope tf32_;
};

}  // namespace ladnn::cuda_test
