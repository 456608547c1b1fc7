// cuda/fused_conv.cu — runs cuda/fused_conv.cuh's kernel for ops::conv2d_bn_eval(_into) when
// cuda::fused_conv() (LADNN_FUSED_CONV) picks it; otherwise the caller runs the unfused ops.
//
// On launches the SIMT kernel in the shape plan_fused picks (a guess from the output's size). Auto times
// the kernel in each of its launch shapes (SIMT kFusedPlans; with TF32, the tensor-core kTcPlans) and the
// unfused ops, on the call's own buffers, the first time a shape is seen, and keeps the fastest for the
// process — as LADNN_CONV1X1=auto does for cuBLAS against cuDNN, so the launch shape is tuned on the card
// that runs it. Each candidate is timed as a graph replay (cuda::time_replayed_ms; its eager warm-up run
// also does the convolution's cuDNN search): GPU time without the host's launch gaps, which an eager
// timing would charge to the unfused ops' three library calls but a replayed inference never pays.
// LADNN_CUDNN_LOG=1 prints each choice.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/fused_conv.cuh"
#include "cuda/fused_conv_tc.cuh"
#include "cuda/gemm_tile.cuh"
#include "cuda/graph.h"
#include "cuda/ops.h"
#include "cuda/profiler.h"

namespace ladnn::cuda {
namespace {

/// A BatchNorm's vectors as the kernel reads them (contiguous copies kept alive in `keep` if needed).
FusedBn fused_bn_of(const ops::BnEval* bn, std::vector<Tensor>& keep) {
  FusedBn f;
  if (!bn) return f;
  auto ptr = [&keep](const Tensor& t) -> const float* {
    if (!t.defined()) return nullptr;
    keep.push_back(t.contiguous());
    return keep.back().data<float>();
  };
  f.gamma = ptr(bn->gamma);
  f.beta = ptr(bn->beta);
  f.mean = ptr(bn->running_mean);
  f.var = ptr(bn->running_var);
  f.eps = bn->eps;
  f.on = true;
  f.relu = bn->act == ops::BnAct::Relu;
  return f;
}

/// dispatch_fused's callback: launches the instantiation on the stream.
struct Launch : FusedArgs {
  template <int KT, int WARPS, int KSIZE, int PIX>
  void go() const {
    const FusedPlan plan{KT, WARPS, PIX};
    const FusedGrid fg = fused_grid(g, plan);
    fused_conv_kernel<KT, WARPS, KSIZE, PIX>
        <<<dim3(fg.x, fg.y), WARPS * 32, 0, static_cast<cudaStream_t>(stream())>>>(g, x, w, pre, post, y);
    CUDA_CHECK_LAUNCH();
  }
  template <int BK, int BM>
  void go_tc() const {
    const FusedGrid fg = tc_grid(g, TcPlan{BK, BM});
    fused_conv_tc_kernel<BK, BM>
        <<<dim3(fg.x, fg.y), TcTile<BK, BM>::kThreads, 0, static_cast<cudaStream_t>(stream())>>>(g, x, w, pre,
                                                                                                 post, y);
    CUDA_CHECK_LAUNCH();
  }
};

/// What Auto's choice depends on: the shapes, strides and BatchNorms of the call, and the switches that
/// change the unfused ops' speed.
using FusedKey = std::tuple<std::vector<int64_t>, int, int, int>;
/// A way to run one shape: the unfused ops, or the fused kernel — SIMT in `plan`, or on the tensor cores
/// in `tc_plan`.
struct FusedChoice {
  bool fused = false;
  bool tc = false;
  FusedPlan plan;
  TcPlan tc_plan;
};

/// The tensor-core form runs: TF32 allowed, a GPU with TF32 tensor cores (sm_80+), and this build's
/// kernel compiled for one (below compute_80 its body is a trap, e.g. with CMAKE_CUDA_ARCHITECTURES=70
/// run on an H100 through PTX recompilation).
bool tc_applies() {
  static const bool hardware = [] {
    int dev = 0, major = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    cudaFuncAttributes attr{};
    CUDA_CHECK(cudaFuncGetAttributes(&attr, fused_conv_tc_kernel<128, 64>));
    return major >= 8 && attr.ptxVersion >= 80 && attr.binaryVersion >= 80;
  }();
  return tf32_enabled() && hardware;
}
struct FusedCache {
  std::mutex mu;
  std::map<FusedKey, FusedChoice> choices;
};
FusedCache& fused_cache() {
  static FusedCache* c = new FusedCache;  // never destroyed: used from other statics' destructors
  return *c;
}

int bn_code(const ops::BnEval* bn) {
  return bn ? (bn->act == ops::BnAct::Relu ? 2 : 1) : 0;
}

/// The kernel takes the call: float32, channels within the prologue's shared memory, every index
/// within int, the grid within its limits.
bool fused_applies(const Tensor& x, int64_t K, int64_t R, int64_t S, int64_t P, int64_t Q) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t lim = int64_t(1) << 30;
  return x.dtype() == DType::Float32 && C <= kFusedMaxC && N * P * Q < lim && K * C * R * S < lim &&
         C * H * W < lim && K * P * Q < lim && (K + 3) / 4 <= 65535;
}

FusedConvGeom geom_of(const Tensor& x, int64_t x_img, const Tensor& w, const ops::Conv2dParams& p,
                      int64_t out_img) {
  FusedConvGeom g;
  auto i = [](int64_t v) { return static_cast<int>(v); };
  g.N = i(x.size(0));
  g.C = i(x.size(1));
  g.H = i(x.size(2));
  g.W = i(x.size(3));
  g.K = i(w.size(0));
  g.R = i(w.size(2));
  g.S = i(w.size(3));
  g.P = (g.H + i(2 * p.pad_h) - g.R) / i(p.stride_h) + 1;
  g.Q = (g.W + i(2 * p.pad_w) - g.S) / i(p.stride_w) + 1;
  g.sh = i(p.stride_h);
  g.sw = i(p.stride_w);
  g.ph = i(p.pad_h);
  g.pw = i(p.pad_w);
  g.x_img = x_img;
  g.y_img = out_img;
  return g;
}

/// The kernel for one call of geometry g (geom_of), on the stream: as `choice` says (fused), or
/// plan_fused's SIMT guess.
void run_fused(FusedConvGeom g, const Tensor& x, const ops::BnEval* pre, const Tensor& w, const ops::BnEval* post,
               const Tensor& out, const FusedChoice* choice = nullptr) {
  std::vector<Tensor> keep;  // contiguous copies, alive until the launch is queued (stream-ordered reuse)
  const FusedBn fpre = fused_bn_of(pre, keep), fpost = fused_bn_of(post, keep);
  const Tensor wc = w.contiguous();
  g.chunk4 = g.pointwise() && g.C % 4 == 0;
  g.vec4 = g.chunk4 && reinterpret_cast<std::uintptr_t>(wc.data<float>()) % 16 == 0;
  const Launch run{{g, x.data<float>(), wc.data<float>(), fpre, fpost, out.data<float>()}};
  OpRange range("conv2d_bn_eval", choice && choice->tc ? "native-tc" : "native");
  if (choice && choice->tc)
    dispatch_fused_tc(choice->tc_plan, run);
  else
    dispatch_fused(choice ? choice->plan : plan_fused(g.M(), g.K, sm_count()), g.ksize(), run);
}

/// Auto's measurement for one shape: the kernel in every launch shape (the general window has one), then
/// `unfused`; the fastest, printed with LADNN_CUDNN_LOG=1.
FusedChoice time_choices(const FusedConvGeom& g, const Tensor& x, const ops::BnEval* pre, const Tensor& w,
                         const ops::BnEval* post, const Tensor& out, const std::function<void()>& unfused) {
  // The candidates' runs are measurements, not calls of the op: kept out of the per-op profile.
  struct ProfilerOff {
    bool saved = profiler::enabled();
    ProfilerOff() { profiler::set_enabled(false); }
    ~ProfilerOff() { profiler::set_enabled(saved); }
  } profiler_off;
  auto name = [](const FusedPlan& plan) {
    return std::to_string(plan.kt) + "x" + std::to_string(plan.warps) + "x" + std::to_string(plan.pix);
  };
  FusedChoice best;
  double best_ms = std::numeric_limits<double>::infinity();
  std::string timings;
  const bool general = g.ksize() == 0;  // one instantiation: kGeneralPlan
  for (const FusedPlan& plan : kFusedPlans) {
    if (general && &plan != kFusedPlans) break;
    const FusedPlan run_plan = general ? kGeneralPlan : plan;
    FusedChoice c;
    c.fused = true;
    c.plan = run_plan;
    const double ms = time_replayed_ms([&] { run_fused(g, x, pre, w, post, out, &c); });
    timings += " " + name(run_plan) + " " + std::to_string(ms).substr(0, 6);
    if (ms < best_ms) best_ms = ms, best = c;
  }
  if (tc_applies())
    for (const TcPlan& plan : kTcPlans) {
      FusedChoice c;
      c.fused = c.tc = true;
      c.tc_plan = plan;
      const double ms = time_replayed_ms([&] { run_fused(g, x, pre, w, post, out, &c); });
      timings += " tc" + std::to_string(plan.bk) + "x" + std::to_string(plan.bm) + " " +
                 std::to_string(ms).substr(0, 6);
      if (ms < best_ms) best_ms = ms, best = c;
    }
  const double unfused_ms = time_replayed_ms(unfused);
  if (unfused_ms <= best_ms) best.fused = false;
  if (log_choices())
    std::fprintf(
        stderr,
        "ladnn: conv2d_bn_eval x (%d, %d, %d, %d) w (%d, %d, %d, %d) pre %d post %d: fused (channels x warps "
        "x pixels per lane, ms)%s; unfused %.4f ms -> %s\n",
        g.N, g.C, g.H, g.W, g.K, g.C, g.R, g.S, bn_code(pre), bn_code(post), timings.c_str(), unfused_ms,
        !best.fused ? "unfused"
        : best.tc
            ? ("fused tc" + std::to_string(best.tc_plan.bk) + "x" + std::to_string(best.tc_plan.bm)).c_str()
            : ("fused " + name(best.plan)).c_str());
  return best;
}

}  // namespace

bool conv2d_bn_eval_fused(const Tensor& x, int64_t x_img, const ops::BnEval* pre, const Tensor& w,
                          const ops::Conv2dParams& p, const ops::BnEval* post, Tensor& out, int64_t out_img,
                          const std::function<void(const Tensor&)>& unfused_into) {
  const FusedConv mode = fused_conv();
  if (mode == FusedConv::Off) return false;
  const FusedConvGeom g = geom_of(x, x_img, w, p, out_img);
  if (!fused_applies(x, g.K, g.R, g.S, g.P, g.Q)) return false;
  const bool caller_out = out.defined();
  // A new output only when the result is computed here.
  auto output = [&]() -> const Tensor& {
    if (!out.defined()) out = Tensor::empty({g.N, g.K, g.P, g.Q}, DType::Float32, x.device());
    return out;
  };
  if (mode == FusedConv::On) {
    run_fused(g, x, pre, w, post, output());
    return true;
  }

  // Auto. The key: everything the result or the right choice depends on — shapes, strides, the
  // BatchNorms, and the switches that change what the unfused ops run.
  const FusedKey key{
      {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.sh, g.sw, g.ph, g.pw, x_img, out_img, bn_code(pre), bn_code(post),
       static_cast<int64_t>(impl(Family::Conv)), static_cast<int64_t>(impl(Family::BatchNorm))},
      tf32_enabled() ? 1 : 0,
      static_cast<int>(conv1x1()),
      deterministic() ? 1 : 0};
  FusedCache& cache = fused_cache();
  FusedChoice choice;
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    auto it = cache.choices.find(key);
    if (it != cache.choices.end()) choice = it->second, known = true;
  }
  if (!known) {
    // Timing synchronises: impossible inside a stream capture.
    if (capturing())
      throw Error(
          "conv2d_bn_eval: x (" + std::to_string(g.N) + ", " + std::to_string(g.C) + ", " +
          std::to_string(g.H) + ", " + std::to_string(g.W) + ") with weight (" + std::to_string(g.K) + ", " +
          std::to_string(g.C) + ", " + std::to_string(g.R) + ", " + std::to_string(g.S) +
          ") was first seen inside a CUDA graph capture, where LADNN_FUSED_CONV=auto cannot time it: run "
          "the same step once before capturing it");
    choice = time_choices(g, x, pre, w, post, output(),
                          // the unfused ops as they would run: into the caller's out, or into their own
                          [&] { unfused_into(caller_out ? out : Tensor()); });
    std::lock_guard<std::mutex> lock(cache.mu);
    cache.choices.emplace(key, choice);
  }
  if (choice.fused) {
    run_fused(g, x, pre, w, post, output(), &choice);
    return true;
  }
  if (!caller_out) out = Tensor();  // the caller runs the unfused ops into their own output
  return false;
}

void reset_fused_conv_choices() {
  FusedCache& cache = fused_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.choices.clear();
}

int fused_conv_plans() {
  return static_cast<int>(sizeof(kFusedPlans) / sizeof(kFusedPlans[0]) +
                          sizeof(kTcPlans) / sizeof(kTcPlans[0]));
}

bool fused_conv_plan_is_tensor_core(int plan) {
  return plan >= static_cast<int>(sizeof(kFusedPlans) / sizeof(kFusedPlans[0])) && plan < fused_conv_plans();
}

void conv2d_bn_eval_fused_plan(const Tensor& x, int64_t x_img, const ops::BnEval* pre, const Tensor& w,
                               const ops::Conv2dParams& p, const ops::BnEval* post, const Tensor& out,
                               int64_t out_img, int plan) {
  const FusedConvGeom g = geom_of(x, x_img, w, p, out_img);
  if (plan < 0 || plan >= fused_conv_plans())
    throw std::invalid_argument("conv2d_bn_eval_fused_plan: plan " + std::to_string(plan) +
                                " is not in [0, " + std::to_string(fused_conv_plans()) + ")");
  if (!fused_applies(x, g.K, g.R, g.S, g.P, g.Q))
    throw std::invalid_argument(
        "conv2d_bn_eval_fused_plan: the fused kernel does not take this call (float32, at "
        "most 2,048 input channels)");
  FusedChoice c;
  c.fused = true;
  if (fused_conv_plan_is_tensor_core(plan)) {
    if (!tc_applies())
      throw std::invalid_argument("conv2d_bn_eval_fused_plan: plan " + std::to_string(plan) +
                                  " is a tensor-core plan: it needs TF32 on and sm_80+");
    c.tc = true;
    c.tc_plan = kTcPlans[plan - static_cast<int>(sizeof(kFusedPlans) / sizeof(kFusedPlans[0]))];
  } else {
    c.plan = kFusedPlans[plan];
  }
  run_fused(g, x, pre, w, post, out, &c);
}

}  // namespace ladnn::cuda
