// cuda/fused_conv.cu — runs cuda/fused_conv.cuh's kernel for ops::conv2d_bn_eval(_into) when
// cuda::fused_conv() (LADNN_FUSED_CONV) picks it; otherwise the caller runs the unfused ops.
//
// On launches the SIMT kernel in the shape plan_fused picks (a guess from the output's size). Auto times
// the kernel in each of its launch shapes (SIMT kFusedPlans; with TF32, the tensor-core kTcPlans, and for
// the calls they take, cuda/fused_conv_mma.cuh's kMmaPlans and cuda/fused_conv_halo.cuh's kHaloPlans) and
// the unfused ops, on the call's own buffers, the first time a shape is seen, and keeps the fastest for the
// process — as LADNN_CONV1X1=auto does for cuBLAS against cuDNN, so the launch shape is tuned on the card
// that runs it. Each candidate is timed as a graph replay (cuda::time_replayed_ms; its eager warm-up run
// also does the convolution's cuDNN search): GPU time without the host's launch gaps, which an eager
// timing would charge to the unfused ops' three library calls but a replayed inference never pays. The
// tensor-core launches come whole and, where a shape has too few tiles to fill the GPU, with the reduction
// split over blocks (tc_split). LADNN_CUDNN_LOG=1 prints each choice. The second half of the file does the
// same for training's backward convolutions (below "the backward passes").
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/conv_wgrad_halo.cuh"
#include "cuda/conv_wgrad_pw.cuh"
#include "cuda/conv_wgrad_tc.cuh"
#include "cuda/fused_conv.cuh"
#include "cuda/fused_conv_halo.cuh"
#include "cuda/fused_conv_mma.cuh"
#include "cuda/fused_conv_tc.cuh"
#include "cuda/graph.h"
#include "cuda/launch.h"
#include "cuda/ops.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"

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
  if (bn->batch()) {  // a folded training norm1: its saved statistics
    f.mean = ptr(bn->save_mean);
    f.invstd = ptr(bn->save_invstd);
  } else {
    f.mean = ptr(bn->running_mean);
    f.var = ptr(bn->running_var);
  }
  f.eps = bn->eps;
  f.on = true;
  f.relu = bn->act == ops::BnAct::Relu;
  return f;
}

/// dispatch_fused's callback: launches the instantiation on the stream.
struct Launch : FusedArgs {
  Device device;  // for the split form's workspace
  template <int KT, int WARPS, int KSIZE, int PIX>
  void go() const {
    const FusedPlan plan{KT, WARPS, PIX};
    const FusedGrid fg = fused_grid(g, plan);
    launch_kernel(fused_conv_kernel<KT, WARPS, KSIZE, PIX>, dim3(fg.x, fg.y), WARPS * 32, 0,
                  static_cast<cudaStream_t>(stream()), g, x, w, pre, post, y);
    CUDA_CHECK_LAUNCH();
  }
  template <int BK, int BM, int KS>
  void go_tc() const {
    const FusedGrid fg = tc_grid(g, TcPlan{BK, BM});
    const cudaStream_t st = static_cast<cudaStream_t>(stream());
    const int splits = tc_split_count(g, chunks_per_split);
    const Tensor ws = workspace(splits);
    launch_kernel(fused_conv_tc_kernel<BK, BM, KS>, dim3(fg.x, fg.y, static_cast<unsigned>(splits)),
                  TcTile<BK, BM>::kThreads, 0, st, g, x, w, pre, post, y, chunks_per_split,
                  splits > 1 ? ws.data<float>() : nullptr);
    CUDA_CHECK_LAUNCH();
    reduce_splits(ws, splits, st);
  }
  /// The split forms' partial sums, (splits, K, M); none for one split.
  Tensor workspace(int splits) const {
    return splits > 1 ? Tensor::empty({splits, int64_t(g.K) * g.M()}, DType::Float32, device) : Tensor();
  }
  /// After a split launch: the slabs added in split order, post applied, y written.
  void reduce_splits(const Tensor& ws, int splits, cudaStream_t st) const {
    if (splits <= 1) return;
    launch_kernel(tc_split_reduce_kernel,
                  dim3(static_cast<unsigned>((g.M() + 255) / 256), static_cast<unsigned>(g.K)), 256, 0, st, g,
                  ws.data<float>(), splits, post, y);
    CUDA_CHECK_LAUNCH();
  }
  bool w16 = false, x16 = false;  // the mma kernel copies w's rows / x's pixels 16 bytes at a time
  bool tap = false;               // ... a window's taps tap by tap (mma_tap_major_fits)
  template <int BK, int BM, int KS, bool TAP, int DEPTH>
  void go_mma() const {
    // Its shared memory is dynamic and may pass 48 KB: allowed once per instantiation, for the most any
    // call can ask (kFusedMaxC input channels, pre on).
    static const bool opted_in = [] {
      FusedConvGeom most{};
      most.C = kFusedMaxC;
      most.R = most.S = 1;
      CUDA_CHECK(cudaFuncSetAttribute(
          fused_conv_mma_kernel<BK, BM, KS, TAP, DEPTH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
          static_cast<int>(sizeof(float)) * mma_smem_floats(most, MmaPlan{BK, BM, DEPTH}, true)));
      return true;
    }();
    (void)opted_in;
    const FusedGrid fg = mma_grid(g, MmaPlan{BK, BM, DEPTH});
    const cudaStream_t st = static_cast<cudaStream_t>(stream());
    const int splits = mma_split_count(g, DEPTH, chunks_per_split);
    const Tensor ws = workspace(splits);
    const size_t smem =
        sizeof(float) * static_cast<size_t>(mma_smem_floats(g, MmaPlan{BK, BM, DEPTH}, pre.on));
    launch_kernel(fused_conv_mma_kernel<BK, BM, KS, TAP, DEPTH>,
                  dim3(fg.x, fg.y, static_cast<unsigned>(splits)), kMmaThreads, smem, st, g, w16, x16, x, w,
                  pre, post, y, chunks_per_split, splits > 1 ? ws.data<float>() : nullptr);
    CUDA_CHECK_LAUNCH();
    reduce_splits(ws, splits, st);
  }
  template <int BM, int VEC>
  void go_halo() const {
    static const bool opted_in = [] {  // as go_mma: once, for the most any call can ask
      CUDA_CHECK(cudaFuncSetAttribute(fused_conv_halo_kernel<BM, VEC>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(sizeof(float)) * halo_smem_floats_bound(BM)));
      return true;
    }();
    (void)opted_in;
    const HaloLayout L = halo_layout(g, BM);
    const FusedGrid fg = halo_grid(g, BM);
    const cudaStream_t st = static_cast<cudaStream_t>(stream());
    const int splits = halo_split_count(g, chunks_per_split);
    const Tensor ws = workspace(splits);
    const size_t smem = sizeof(float) * static_cast<size_t>(halo_smem_floats(L));
    launch_kernel(fused_conv_halo_kernel<BM, VEC>, dim3(fg.x, fg.y, static_cast<unsigned>(splits)),
                  kMmaThreads, smem, st, g, L, x, w, post, y, chunks_per_split,
                  splits > 1 ? ws.data<float>() : nullptr);
    CUDA_CHECK_LAUNCH();
    reduce_splits(ws, splits, st);
  }
};

/// What Auto's choice depends on: the shapes, strides and BatchNorms of the call, and the switches that
/// change the unfused ops' speed.
using FusedKey = std::tuple<std::vector<int64_t>, int, int, int>;
/// A way to run one shape: the unfused ops, or the fused kernel — SIMT in `plan`, or on the tensor cores
/// in `tc_plan`.
struct FusedChoice {
  bool fused = false;
  bool tc = false;   // a tensor-core kernel: the wmma form (tc_plan), or with mma the mma.sync one
  bool mma = false;  // (mma_plan; forward only, the calls mma_takes)
  bool mma_tap = false;  // the mma form's window tap by tap (mma_tap_major_fits)
  bool halo = false;     // with tc: the halo-staged 3x3 (halo_plan; forward only, the calls halo_takes)
  FusedPlan plan;
  TcPlan tc_plan;
  MmaPlan mma_plan;
  HaloPlan halo_plan;
  int tc_cps = 0;  // the tensor-core form's reduction in runs of this many chunks of its own (0: whole)
  // The weight gradient's (conv2d_backward_weight_fused): its tile and pixel chunks per split; or, with
  // wgrad_halo, cuda/conv_wgrad_halo.cuh's kernel in wh_plan, wg_cps bands per split.
  WgradPlan wg_plan;
  int wg_cps = 1;
  bool wgrad_halo = false;
  WgradHaloPlan wh_plan;
  bool wgrad_pw = false;  // cuda/conv_wgrad_pw.cuh's kernel (pointwise), wg_cps stages per split
};

/// `c` with its reduction (`chunks` chunks over the grid `fg`) split for `waves` blocks per SM, each split
/// min_chunks chunks or more; whole when waves is 0 or one split is all it would get.
FusedChoice split_for(FusedChoice c, const FusedGrid& fg, int chunks, int min_chunks, int waves) {
  int cps = 0;
  if (waves > 0 && split_chunks(int64_t(fg.x) * fg.y, chunks, sm_count(), waves, min_chunks, cps) > 1)
    c.tc_cps = cps;
  return c;
}

/// The tensor-core form in `plan`, split for `waves` blocks per SM (split_for, 4 chunks of 32 a split).
FusedChoice tc_choice(const FusedConvGeom& g, const TcPlan& plan, int waves) {
  FusedChoice c;
  c.fused = c.tc = true;
  c.tc_plan = plan;
  return split_for(c, tc_grid(g, plan), tc_chunks(g), 4, waves);
}

/// What Auto times of the tensor-core form: each tile whole, and split for two blocks per SM where that
/// is more than one split.
void append_tc_candidates(const FusedConvGeom& g, std::vector<FusedChoice>& out) {
  for (const TcPlan& plan : kTcPlans) {
    out.push_back(tc_choice(g, plan, 0));
    const FusedChoice split = tc_choice(g, plan, 2);
    if (split.tc_cps > 0) out.push_back(split);
  }
}

/// The mma form in `plan`, split for `waves` blocks per SM (split_for, 128 reduction values or more a
/// split), its window tap by tap with `tap`.
FusedChoice mma_choice(const FusedConvGeom& g, const MmaPlan& plan, int waves, bool tap) {
  FusedChoice c;
  c.fused = c.tc = c.mma = true;
  c.mma_plan = plan;
  c.mma_tap = tap;
  return split_for(c, mma_grid(g, plan), mma_chunks(g, plan.depth), 128 / plan.depth, waves);
}

/// What Auto times of the mma form, for the calls it takes: each tile whole, and split for two blocks
/// per SM where that is more than one split; a window also tap by tap where that fits.
void append_mma_candidates(const FusedConvGeom& g, bool pre_on, std::vector<FusedChoice>& out) {
  if (!mma_takes(g, pre_on)) return;
  for (const bool tap : {false, true}) {
    for (const MmaPlan& plan : kMmaPlans) {
      if (tap && !mma_tap_major_fits(g, plan.depth)) continue;
      if (plan.bk > 32 && g.K <= 32) continue;  // all but 32 of its rows would be padding
      out.push_back(mma_choice(g, plan, 0, tap));
      const FusedChoice split = mma_choice(g, plan, 2, tap);
      if (split.tc_cps > 0) out.push_back(split);
    }
  }
}

/// The halo kernel in `plan`, split for `waves` blocks per SM (split_for, 2 stages of 72 values or more a
/// split).
FusedChoice halo_choice(const FusedConvGeom& g, const HaloPlan& plan, int waves) {
  FusedChoice c;
  c.fused = c.tc = c.halo = true;
  c.halo_plan = plan;
  return split_for(c, halo_grid(g, plan.bm), halo_chunks(g), 2, waves);
}

/// x and w as the halo kernel copies them: x plan.vec floats at a time, w 16 bytes at a time (run_fused
/// reads w.contiguous(): a new, aligned copy when w is not contiguous).
bool halo_aligned(const HaloPlan& plan, const Tensor& x, const Tensor& w) {
  return reinterpret_cast<std::uintptr_t>(x.data<float>()) % (4 * plan.vec) == 0 &&
         (!w.is_contiguous() || reinterpret_cast<std::uintptr_t>(w.data<float>()) % 16 == 0);
}

/// The halo kernel has passed the tile emulator and compiles for the GPU, but has not run on one yet:
/// until a device check has passed, Auto times it only with LADNN_HALO_UNCHECKED=1 (as the mma kernel's
/// new forms were gated in run 8 by LADNN_MMA_UNCHECKED). The plan hook runs it either way (its tests).
bool halo_unchecked_allowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("LADNN_HALO_UNCHECKED");
    return v != nullptr && std::string(v) == "1";
  }();
  return allowed;
}

/// What Auto times of the halo kernel, for the calls it takes (x and w the call's): each tile whole, and
/// split for two blocks per SM where that is more than one split.
void append_halo_candidates(const FusedConvGeom& g, bool pre_on, const Tensor& x, const Tensor& w,
                            std::vector<FusedChoice>& out) {
  if (!halo_unchecked_allowed()) return;
  for (const HaloPlan& plan : kHaloPlans) {
    if (!halo_takes(g, pre_on, plan) || !halo_aligned(plan, x, w)) continue;
    out.push_back(halo_choice(g, plan, 0));
    const FusedChoice split = halo_choice(g, plan, 2);
    if (split.tc_cps > 0) out.push_back(split);
  }
}

/// A forward or data-pass launch, for the log: "4x8x1" (SIMT: channels x warps x pixels per lane),
/// "tc128x64" (wmma), "mma128x64" (mma.sync; "mma32x128tap" its window tap by tap, "mma128x64d32" 32
/// values per stage), "halo32x128" (the halo-staged 3x3), with "/s3" for three splits.
std::string fused_name(const FusedConvGeom& g, const FusedChoice& c) {
  if (!c.tc)
    return std::to_string(c.plan.kt) + "x" + std::to_string(c.plan.warps) + "x" + std::to_string(c.plan.pix);
  if (c.halo)
    return "halo" + std::to_string(kHaloBK) + "x" + std::to_string(c.halo_plan.bm) +
           (c.halo_plan.vec != 4 ? "v" + std::to_string(c.halo_plan.vec) : "") +
           (c.tc_cps > 0 ? "/s" + std::to_string(halo_split_count(g, c.tc_cps)) : std::string());
  if (c.mma)
    return "mma" + std::to_string(c.mma_plan.bk) + "x" + std::to_string(c.mma_plan.bm) +
           (c.mma_tap ? "tap" : "") + (c.mma_plan.depth != 16 ? "d" + std::to_string(c.mma_plan.depth) : "") +
           (c.tc_cps > 0 ? "/s" + std::to_string(mma_split_count(g, c.mma_plan.depth, c.tc_cps))
                         : std::string());
  std::string name = "tc" + std::to_string(c.tc_plan.bk) + "x" + std::to_string(c.tc_plan.bm);
  if (c.tc_cps > 0) name += "/s" + std::to_string(tc_split_count(g, c.tc_cps));
  return name;
}
/// Which pass a cached choice is for (the first entry of its key).
enum class FusedPass : int64_t { Forward = 0, BackwardData = 1, BackwardWeight = 2 };

/// The tensor-core form runs: TF32 allowed, a GPU with TF32 tensor cores (sm_80+), and this build's
/// kernel compiled for one (below compute_80 its body is a trap, e.g. with CMAKE_CUDA_ARCHITECTURES=70
/// run on an H100 through PTX recompilation).
bool tc_applies() {
  static const bool hardware = [] {
    int dev = 0, major = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    cudaFuncAttributes attr{};
    CUDA_CHECK(cudaFuncGetAttributes(&attr, fused_conv_tc_kernel<128, 64, 0>));
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

/// A BatchNorm's part in Auto's key: none 0, eval 1 (2 with its ReLU), the batch form 3 (4).
int bn_code(const ops::BnEval* bn) {
  return bn ? (bn->act == ops::BnAct::Relu ? 2 : 1) + (bn->batch() ? 2 : 0) : 0;
}

/// The kernel takes the call: float32, channels within the prologue's shared memory, every index
/// within int, the grid within its limits.
bool fused_applies(const Tensor& x, int64_t K, int64_t R, int64_t S, int64_t P, int64_t Q) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t lim = int64_t(1) << 30;
  return x.dtype() == DType::Float32 && C <= kFusedMaxC && N * P * Q < lim && K * C * R * S < lim &&
         C * H * W < lim && K * P * Q < lim && (K + 3) / 4 <= 65535;
}

FusedConvGeom geom_of(const Shape& x, int64_t x_img, const Shape& w, const ops::Conv2dParams& p,
                      int64_t out_img) {
  FusedConvGeom g;
  auto i = [](int64_t v) { return static_cast<int>(v); };
  g.N = i(x[0]);
  g.C = i(x[1]);
  g.H = i(x[2]);
  g.W = i(x[3]);
  g.K = i(w[0]);
  g.R = i(w[2]);
  g.S = i(w[3]);
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
FusedConvGeom geom_of(const Tensor& x, int64_t x_img, const Tensor& w, const ops::Conv2dParams& p,
                      int64_t out_img) {
  return geom_of(x.shape(), x_img, w.shape(), p, out_img);
}

/// The kernel for one call of geometry g (geom_of), on the stream: as `choice` says (fused), or
/// plan_fused's SIMT guess.
/// run_fused without its profiler range (the data pass on a rotated copy opens its own).
void launch_fused(FusedConvGeom g, const Tensor& x, const ops::BnEval* pre, const Tensor& w,
                  const ops::BnEval* post, const Tensor& out, const FusedChoice* choice) {
  std::vector<Tensor> keep;  // contiguous copies, alive until the launch is queued (stream-ordered reuse)
  const FusedBn fpre = fused_bn_of(pre, keep), fpost = fused_bn_of(post, keep);
  const Tensor wc = w.contiguous();
  g.chunk4 = g.pointwise() && g.C % 4 == 0;
  g.vec4 = g.chunk4 && reinterpret_cast<std::uintptr_t>(wc.data<float>()) % 16 == 0;
  const int cps = choice && choice->tc ? choice->tc_cps : 0;
  Launch run{{g, x.data<float>(), wc.data<float>(), fpre, fpost, out.data<float>(), cps}, out.device()};
  if (choice && choice->mma) {
    const int64_t hw = int64_t(g.H) * g.W, crs = int64_t(g.C) * g.R * g.S;
    run.w16 = crs % 4 == 0 && reinterpret_cast<std::uintptr_t>(run.w) % 16 == 0;
    run.x16 = g.pointwise() && hw % 4 == 0 && g.x_img % 4 == 0 && reinterpret_cast<std::uintptr_t>(run.x) % 16 == 0;
    run.tap = choice->mma_tap;
    dispatch_fused_mma(choice->mma_plan, run);
  } else if (choice && choice->halo) {
    dispatch_fused_halo(choice->halo_plan, run);
  } else if (choice && choice->tc)
    dispatch_fused_tc(choice->tc_plan, run);
  else
    dispatch_fused(choice ? choice->plan : plan_fused(g.M(), g.K, sm_count()), g.ksize(), run);
}

void run_fused(const FusedConvGeom& g, const Tensor& x, const ops::BnEval* pre, const Tensor& w,
               const ops::BnEval* post, const Tensor& out, const FusedChoice* choice = nullptr) {
  OpRange range("conv2d_bn_eval", choice && choice->tc ? "native-tc" : "native");
  launch_fused(g, x, pre, w, post, out, choice);
}

/// The candidates' runs are measurements, not calls of the op: kept out of the per-op profile.
struct ProfilerOff {
  bool saved = profiler::enabled();
  ProfilerOff() { profiler::set_enabled(false); }
  ~ProfilerOff() { profiler::set_enabled(saved); }
  ProfilerOff(const ProfilerOff&) = delete;
  ProfilerOff& operator=(const ProfilerOff&) = delete;
};

/// Auto's measurement for one shape: each of `candidates` (our kernels) and `library` (the unfused or
/// library ops computing the same result), each timed as a graph replay on the call's own buffers; the
/// fastest, logged with LADNN_CUDNN_LOG=1 as "ladnn: <op> <call>: ours (ms) <name> <ms> ...; library
/// <ms> ms -> ours <name> | library".
/// With `then` (what follows the op and depends on its path: conv2d_bn_eval_fused's), each path is
/// charged its own: ours wins when its fastest plus then(true) beats the library plus then(false), logged
/// as "...; library <ms> ms; then after ours <ms>, after the library <ms> ms -> ...".
FusedChoice time_candidates(const char* op, const std::string& what,
                            const std::vector<FusedChoice>& candidates,
                            const std::function<std::string(const FusedChoice&)>& name,
                            const std::function<void(const FusedChoice&)>& run,
                            const std::function<void()>& library,
                            const std::function<void(bool ours)>& then = {}) {
  ProfilerOff profiler_off;
  FusedChoice best;
  double best_ms = std::numeric_limits<double>::infinity();
  std::string timings;
  for (const FusedChoice& c : candidates) {
    const double ms = time_replayed_ms([&] { run(c); });
    timings += " " + name(c) + " " + std::to_string(ms).substr(0, 6);
    if (ms < best_ms) best_ms = ms, best = c;
  }
  const double library_ms = time_replayed_ms(library);
  // (each after-path timed once: its own Auto choices, if any, are made in time_replayed_ms's eager run)
  const double then_ours = then && best.fused ? time_replayed_ms([&] { then(true); }) : 0.0;
  const double then_library = then ? time_replayed_ms([&] { then(false); }) : 0.0;
  if (library_ms + then_library <= best_ms + then_ours) best.fused = false;
  std::string after;
  if (then) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "; then after ours %.4f, after the library %.4f ms", then_ours, then_library);
    after = buf;
  }
  if (log_choices())
    std::fprintf(stderr, "ladnn: %s %s: ours (ms)%s; library %.4f ms%s -> %s\n", op, what.c_str(),
                 timings.c_str(), library_ms, after.c_str(),
                 best.fused ? ("ours " + name(best)).c_str() : "library");
  return best;
}

/// Auto's cache key: the pass, the geometry (shapes, strides, image strides), `extra` (the BatchNorms),
/// and the switches that change what the library ops run or how fast.
FusedKey fused_key(FusedPass pass, const FusedConvGeom& g, std::initializer_list<int64_t> extra) {
  std::vector<int64_t> v{static_cast<int64_t>(pass),
                         g.N,
                         g.C,
                         g.H,
                         g.W,
                         g.K,
                         g.R,
                         g.S,
                         g.sh,
                         g.sw,
                         g.ph,
                         g.pw,
                         g.x_img,
                         g.y_img,
                         static_cast<int64_t>(impl(Family::Conv)),
                         static_cast<int64_t>(impl(Family::BatchNorm))};
  v.insert(v.end(), extra.begin(), extra.end());
  return FusedKey{std::move(v), tf32_enabled() ? 1 : 0, static_cast<int>(conv1x1()), deterministic() ? 1 : 0};
}

bool cached_choice(const FusedKey& key, FusedChoice& choice) {
  FusedCache& cache = fused_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  auto it = cache.choices.find(key);
  if (it == cache.choices.end()) return false;
  choice = it->second;
  return true;
}

void remember_choice(const FusedKey& key, const FusedChoice& choice) {
  FusedCache& cache = fused_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.choices.emplace(key, choice);
}

/// "dy (N, K, P, Q) w (K, C, R, S) x (N, C, H, W) stride s pad p": a backward pass's call, for the log.
std::string backward_what(const Tensor& dy, const Tensor& w, const Tensor& x, const ops::Conv2dParams& p) {
  return "dy " + shape_str(dy.shape()) + " w " + shape_str(w.shape()) + " x " + shape_str(x.shape()) +
         " stride " + std::to_string(p.stride_h) + "x" + std::to_string(p.stride_w) + " pad " +
         std::to_string(p.pad_h) + "x" + std::to_string(p.pad_w);
}

/// Timing synchronises: impossible inside a stream capture. what: the call's tensors, as its caller
/// sees them.
void refuse_in_capture(const char* op, const std::string& what) {
  if (!capturing()) return;
  throw Error(std::string(op) + ": " + what +
              " was first seen inside a CUDA graph capture, where LADNN_FUSED_CONV=auto cannot time it: run "
              "the same step once before capturing it");
}

/// Auto's choice for `key`: the cached one, or, for a shape seen first, the fastest of candidates() and
/// the library as time_candidates times them (logged under op and what()), remembered for the process.
/// A first sight inside a capture is refused (refuse_in_capture): timing synchronises.
FusedChoice auto_choice(const FusedKey& key, const char* op, const std::function<std::string()>& what,
                        const std::function<std::vector<FusedChoice>()>& candidates,
                        const std::function<std::string(const FusedChoice&)>& name,
                        const std::function<void(const FusedChoice&)>& run, const std::function<void()>& library,
                        const std::function<void(bool ours)>& then = {}) {
  FusedChoice choice;
  if (cached_choice(key, choice)) return choice;
  const std::string call = what();
  refuse_in_capture(op, call);
  choice = time_candidates(op, call, candidates(), name, run, library, then);
  remember_choice(key, choice);
  return choice;
}

}  // namespace

bool conv2d_bn_eval_fused(const Tensor& x, int64_t x_img, const ops::BnEval* pre, const Tensor& w,
                          const ops::Conv2dParams& p, const ops::BnEval* post, Tensor& out, int64_t out_img,
                          const std::function<void(const Tensor&)>& unfused_into,
                          const std::function<void(bool ours)>& then) {
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
  const FusedChoice choice = auto_choice(
      fused_key(FusedPass::Forward, g, {bn_code(pre), bn_code(post)}), "conv2d_bn_eval",
      [&] {
        return "x " + shape_str(x.shape()) + " w " + shape_str(w.shape()) + " pre " + std::to_string(bn_code(pre)) +
               " post " + std::to_string(bn_code(post));
      },
      [&] {
        // Every launch shape of the SIMT kernel (the general window has one), and with TF32 the
        // tensor-core form's.
        std::vector<FusedChoice> candidates;
        for (const FusedPlan& plan : kFusedPlans) {
          FusedChoice c;
          c.fused = true;
          c.plan = g.ksize() == 0 ? kGeneralPlan : plan;
          candidates.push_back(c);
          if (g.ksize() == 0) break;
        }
        if (tc_applies()) {
          append_tc_candidates(g, candidates);
          append_mma_candidates(g, pre != nullptr, candidates);
          append_halo_candidates(g, pre != nullptr, x, w, candidates);
        }
        return candidates;
      },
      [&g](const FusedChoice& c) { return fused_name(g, c); },
      [&](const FusedChoice& c) { run_fused(g, x, pre, w, post, output(), &c); },
      // the unfused ops as they would run: into the caller's out, or into their own
      [&] { unfused_into(caller_out ? out : Tensor()); }, then);
  if (choice.fused) {
    run_fused(g, x, pre, w, post, output(), &choice);
    return true;
  }
  if (!caller_out) out = Tensor();  // the caller runs the unfused ops into their own output
  return false;
}

std::string describe_fused_conv_choices() {
  FusedCache& cache = fused_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  if (cache.choices.empty()) return "";
  int ours[3] = {0, 0, 0}, library[3] = {0, 0, 0};
  for (const auto& [key, choice] : cache.choices) {
    const int pass = static_cast<int>(std::get<0>(key).front());  // fused_key's first entry
    if (pass < 0 || pass > 2) continue;
    ++(choice.fused ? ours : library)[pass];
  }
  const char* names[3] = {"forward", "backward data", "backward weight"};
  std::string out = "LADNN_FUSED_CONV=auto's choices (shapes: ours / library):";
  for (int p = 0; p < 3; ++p)
    if (ours[p] + library[p] > 0)
      out += std::string(" ") + names[p] + " " + std::to_string(ours[p]) + " / " +
             std::to_string(library[p]) + ";";
  out.back() = '\n';
  return out;
}

void reset_fused_conv_choices() {
  FusedCache& cache = fused_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.choices.clear();
}

namespace {
constexpr int kSimtPlanCount = static_cast<int>(sizeof(kFusedPlans) / sizeof(kFusedPlans[0]));
constexpr int kTcPlanCount = static_cast<int>(sizeof(kTcPlans) / sizeof(kTcPlans[0]));
constexpr int kMmaPlanCount = static_cast<int>(sizeof(kMmaPlans) / sizeof(kMmaPlans[0]));
constexpr int kHaloPlanCount = static_cast<int>(sizeof(kHaloPlans) / sizeof(kHaloPlans[0]));
constexpr int kHaloPlan0 = kSimtPlanCount + kTcPlanCount + kMmaPlanCount;  // the first halo plan
}  // namespace

int fused_conv_plans() {
  return kHaloPlan0 + kHaloPlanCount;
}

bool fused_conv_plan_is_tensor_core(int plan) {
  return plan >= kSimtPlanCount && plan < fused_conv_plans();
}

bool fused_conv_plan_is_mma(int plan) {
  return plan >= kSimtPlanCount + kTcPlanCount && plan < kHaloPlan0;
}

bool fused_conv_plan_is_halo(int plan) {
  return plan >= kHaloPlan0 && plan < fused_conv_plans();
}

namespace {
/// Plan index -> the launch it names (0 <= plan < fused_conv_plans(), checked by the callers).
FusedChoice plan_choice(int plan) {
  FusedChoice c;
  c.fused = true;
  c.tc = fused_conv_plan_is_tensor_core(plan);
  c.mma = fused_conv_plan_is_mma(plan);
  c.halo = fused_conv_plan_is_halo(plan);
  if (c.halo)
    c.halo_plan = kHaloPlans[plan - kHaloPlan0];
  else if (c.mma)
    c.mma_plan = kMmaPlans[plan - kSimtPlanCount - kTcPlanCount];
  else if (c.tc)
    c.tc_plan = kTcPlans[plan - kSimtPlanCount];
  else
    c.plan = kFusedPlans[plan];
  return c;
}
}  // namespace

bool fused_conv_plan_takes(int plan, const Shape& x, const Shape& w, const ops::Conv2dParams& p, bool pre) {
  if (plan < 0 || plan >= fused_conv_plans())
    throw std::invalid_argument("fused_conv_plan_takes: plan " + std::to_string(plan) + " is not in [0, " +
                                std::to_string(fused_conv_plans()) + ")");
  const Shape y = ops::conv2d_output_shape(x, w, p);
  const FusedConvGeom g = geom_of(x, x[1] * x[2] * x[3], w, p, y[1] * y[2] * y[3]);
  const FusedChoice c = plan_choice(plan);
  if (c.halo) return halo_takes(g, pre, c.halo_plan);
  if (c.mma) return mma_takes(g, pre);
  return true;
}

std::string fused_conv_plan_name(int plan) {
  if (plan < 0 || plan >= fused_conv_plans())
    throw std::invalid_argument("fused_conv_plan_name: plan " + std::to_string(plan) + " is not in [0, " +
                                std::to_string(fused_conv_plans()) + ")");
  return fused_name(FusedConvGeom{}, plan_choice(plan));
}

void conv2d_bn_eval_fused_plan(const Tensor& x, int64_t x_img, const ops::BnEval* pre, const Tensor& w,
                               const ops::Conv2dParams& p, const ops::BnEval* post, const Tensor& out,
                               int64_t out_img, int plan, int chunks_per_split) {
  const FusedConvGeom g = geom_of(x, x_img, w, p, out_img);
  if (plan < 0 || plan >= fused_conv_plans())
    throw std::invalid_argument("conv2d_bn_eval_fused_plan: plan " + std::to_string(plan) +
                                " is not in [0, " + std::to_string(fused_conv_plans()) + ")");
  if (!fused_applies(x, g.K, g.R, g.S, g.P, g.Q))
    throw std::invalid_argument(
        "conv2d_bn_eval_fused_plan: the fused kernel does not take this call (float32, at "
        "most 2,048 input channels)");
  FusedChoice c = plan_choice(plan);
  if (c.tc && !tc_applies())
    throw std::invalid_argument("conv2d_bn_eval_fused_plan: plan " + std::to_string(plan) +
                                " is a tensor-core plan: it needs TF32 on and sm_80+");
  if (c.mma && !mma_takes(g, pre != nullptr))
    throw std::invalid_argument("conv2d_bn_eval_fused_plan: plan " + std::to_string(plan) +
                                " is the mma.sync kernel: it takes pointwise convolutions (1x1, stride "
                                "1, no padding) and 3x3 and 7x7 windows without a BatchNorm before them");
  if (c.halo && !halo_takes(g, pre != nullptr, c.halo_plan))
    throw std::invalid_argument(
        "conv2d_bn_eval_fused_plan: plan " + std::to_string(plan) +
        " is the halo kernel: it takes 3x3 windows of stride 1 and padding 1 without "
        "a BatchNorm before them, over a multiple of 8 channels, W and the images' spacing multiples of " +
        std::to_string(c.halo_plan.vec) + (c.halo_plan.vec == 4 ? "" : " and W % 4 != 0") + ", W at most " +
        std::to_string(c.halo_plan.bm / 2) + " (its pixel slots / 2); this call: C " + std::to_string(g.C) +
        ", W " + std::to_string(g.W) + ", x_img " + std::to_string(g.x_img));
  if (c.halo && !halo_aligned(c.halo_plan, x, w))
    throw std::invalid_argument("conv2d_bn_eval_fused_plan: plan " + std::to_string(plan) +
                                " (the halo kernel) copies x " + std::to_string(4 * c.halo_plan.vec) +
                                " and w 16 bytes at a time: both must be aligned to that");
  if (chunks_per_split < 0)
    throw std::invalid_argument("conv2d_bn_eval_fused_plan: chunks_per_split " +
                                std::to_string(chunks_per_split) + " < 0");
  if (chunks_per_split > 0 && !c.tc)
    throw std::invalid_argument("conv2d_bn_eval_fused_plan: chunks_per_split " +
                                std::to_string(chunks_per_split) +
                                " with a SIMT plan (only the tensor-core form splits)");
  c.tc_cps = chunks_per_split;
  c.mma_tap =
      c.mma && mma_tap_major_fits(
                   g, c.mma_plan.depth);  // a window tap by tap where it fits (Auto also times the other)
  run_fused(g, x, pre, w, post, out, &c);
}

// ---- the backward passes on the tensor cores ------------------------------------------------------------
//
// Training spends most of its convolution time in the backward passes, and at DenseNet's 7x7 and 14x14
// maps cuDNN's kernels for them run at a few TFLOP/s. With TF32 on, the switch's On and Auto also cover:
// - backward data of a stride-1 convolution: dx = conv(dy, w rotated and transposed), padded R-1-ph —
//   cuda/fused_conv_tc.cuh's kernel reading w in that order (FusedConvGeom::w_flipped), no copy of w;
// - backward weight (any stride): cuda/conv_wgrad_tc.cuh, the pixels split over blocks and the partial
//   sums added in a fixed order; for the growth 3x3s (stride 1, padding 1) also cuda/conv_wgrad_halo.cuh,
//   bands of whole rows staged once with their halo, the nine taps read from shared memory, and for the
//   pointwise ones cuda/conv_wgrad_pw.cuh, a 128 x 64 mma.sync tile fed by 16-byte cp.async copies (Auto
//   times both with LADNN_HALO_UNCHECKED=1 until a device check has passed, as the forward halo kernel).
// Auto times each tile shape of our kernel and the library's call (cuDNN, or cuBLAS for a pointwise dx
// when LADNN_CONV1X1 picks it) as graph replays, on the call's own buffers, and keeps the fastest per
// shape, as for the forward. Without TF32 (or below sm_80) these passes stay the library's.

namespace {

/// A weight-gradient kernel's output: dW itself with one split, else a workspace of `splits` slabs of n
/// floats that finish() adds into dW in split order (wgrad_reduce_kernel). Every weight-gradient form
/// (wmma, halo, pointwise) writes through one.
class WgradSplits {
 public:
  WgradSplits(int splits, int64_t n, float* dw, Device device) : splits_(splits), n_(n), dw_(dw) {
    if (splits > 1) ws_ = Tensor::empty({splits, n}, DType::Float32, device);
  }
  float* out() const { return splits_ > 1 ? ws_.data<float>() : dw_; }
  void finish(cudaStream_t st) const {
    if (splits_ <= 1) return;
    const int64_t blocks = std::min<int64_t>((n_ + 255) / 256, int64_t(sm_count()) * 8);
    launch_kernel(wgrad_reduce_kernel, static_cast<unsigned>(blocks), 256, 0, st, ws_.data<float>(), splits_,
                  n_, dw_);
    CUDA_CHECK_LAUNCH();
  }

 private:
  int splits_;
  int64_t n_;
  float* dw_;
  Tensor ws_;  // alive until the reduction is queued (stream-ordered reuse)
};

/// The weight-gradient dispatchers' callback: launches the form's kernel, then the reduction of its splits
/// (WgradSplits). chunks_per_split is in the form's own chunks (pixel chunks, bands, or stages).
struct LaunchWgrad {
  const FusedConvGeom& g;
  const float* dy;
  const float* x;
  float* dw;
  Device device;
  int chunks_per_split;
  FusedBn pre{};  // the pointwise form's pre BatchNorm (off: none)
  template <int BK, int BN, int KS>
  void go_wgrad() const {
    const int splits = wgrad_split_count(g, chunks_per_split);
    const WgradGrid gr = wgrad_grid(g, WgradPlan{BK, BN}, splits);
    const cudaStream_t st = static_cast<cudaStream_t>(stream());
    const WgradSplits out(splits, int64_t(g.K) * g.C * g.R * g.S, dw, device);
    launch_kernel(conv_wgrad_tc_kernel<BK, BN, KS>, dim3(gr.x, gr.y, gr.z), WgradTile<BK, BN>::kThreads, 0,
                  st, g, dy, x, chunks_per_split, out.out());
    CUDA_CHECK_LAUNCH();
    out.finish(st);
  }
  // dispatch_wgrad_halo's: the halo-staged weight gradient (chunks_per_split counts bands).
  template <int VEC>
  void go_wgrad_halo(int bm) const {
    static const bool opted_in = [] {  // as go_halo: once, for the most any plan's call can ask
      CUDA_CHECK(cudaFuncSetAttribute(
          conv_wgrad_halo_kernel<VEC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
          static_cast<int>(sizeof(float)) * wgrad_halo_smem_floats_bound(kWgradHaloMaxBM)));
      return true;
    }();
    (void)opted_in;
    const WgradHaloLayout L = wgrad_halo_layout(g, bm);
    const int splits = wgrad_halo_split_count(g, WgradHaloPlan{bm, VEC}, chunks_per_split);
    const WgradGrid gr = wgrad_halo_grid(g, splits);
    const cudaStream_t st = static_cast<cudaStream_t>(stream());
    const WgradSplits out(splits, int64_t(g.K) * g.C * 9, dw, device);
    const size_t smem = sizeof(float) * static_cast<size_t>(wgrad_halo_smem_floats(L));
    launch_kernel(conv_wgrad_halo_kernel<VEC>, dim3(gr.x, gr.y, gr.z), kWhThreads, smem, st, g, L, dy, x,
                  chunks_per_split, out.out());
    CUDA_CHECK_LAUNCH();
    out.finish(st);
  }
  // dispatch_wgrad_pw's: the pointwise weight gradient on mma.sync.
  template <int VEC, bool PRE>
  void go_wgrad_pw() const {
    static const bool opted_in = [] {  // its 81 KB of shared memory, once
      CUDA_CHECK(cudaFuncSetAttribute(conv_wgrad_pw_kernel<VEC, PRE>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(sizeof(float)) * kPwSmemFloats));
      return true;
    }();
    (void)opted_in;
    const int splits = wgrad_pw_split_count(g, chunks_per_split);
    const WgradGrid gr = wgrad_pw_grid(g, splits);
    const cudaStream_t st = static_cast<cudaStream_t>(stream());
    const WgradSplits out(splits, int64_t(g.K) * g.C, dw, device);
    launch_kernel(conv_wgrad_pw_kernel<VEC, PRE>, dim3(gr.x, gr.y, gr.z), kPwThreads,
                  sizeof(float) * static_cast<size_t>(kPwSmemFloats), st, g, dy, x, pre, chunks_per_split,
                  out.out());
    CUDA_CHECK_LAUNCH();
    out.finish(st);
  }
};

/// The weight gradient as `c` says; `pre` (the pointwise form only): x's BatchNorm, applied as it is read.
void run_wgrad(const FusedConvGeom& g, const float* dy, const float* x, float* dw, Device device,
               const FusedChoice& c, const FusedBn& pre = {}) {
  if (pre.on && !c.wgrad_pw)  // (only the pointwise form has a prologue; no caller asks another for one)
    throw Error("conv2d_backward_weight: a pre BatchNorm is applied by the pointwise form only, not by " +
                std::string(c.wgrad_halo ? "the halo form" : "the wmma form"));
  OpRange range("conv2d_backward_weight", "native-tc");
  if (c.wgrad_pw)
    dispatch_wgrad_pw(g, pre.on, LaunchWgrad{g, dy, x, dw, device, c.wg_cps, pre});
  else if (c.wgrad_halo)
    dispatch_wgrad_halo(c.wh_plan, LaunchWgrad{g, dy, x, dw, device, c.wg_cps});
  else
    dispatch_wgrad(c.wg_plan, LaunchWgrad{g, dy, x, dw, device, c.wg_cps});
}

/// The halo-staged weight gradient in `plan`, its bands split for `waves` blocks per SM.
FusedChoice wgrad_halo_choice(const FusedConvGeom& g, const WgradHaloPlan& plan, int waves) {
  FusedChoice c;
  c.fused = c.tc = c.wgrad_halo = true;
  c.wh_plan = plan;
  wgrad_halo_splits(g, plan, sm_count(), waves, c.wg_cps);
  return c;
}

/// A weight-gradient launch, for the log: "tc64x64/14" (wmma: tile / splits), "halo128/67" (halo-staged
/// bands of 128 slots: "v2", "v1" for 8- and 4-byte copies).
std::string wgrad_name(const FusedConvGeom& g, const FusedChoice& c) {
  if (c.wgrad_pw)
    return "pw" + std::to_string(kPwBK) + "x" + std::to_string(kPwBC) + "/" +
           std::to_string(wgrad_pw_split_count(g, c.wg_cps));
  if (c.wgrad_halo)
    return "halo" + std::to_string(c.wh_plan.bm) +
           (c.wh_plan.vec != 4 ? "v" + std::to_string(c.wh_plan.vec) : "") + "/" +
           std::to_string(wgrad_halo_split_count(g, c.wh_plan, c.wg_cps));
  return "tc" + std::to_string(c.wg_plan.bk) + "x" + std::to_string(c.wg_plan.bn) + "/" +
         std::to_string(wgrad_split_count(g, c.wg_cps));
}

/// The pointwise weight gradient on mma.sync, its stages split for `waves` blocks per SM.
FusedChoice wgrad_pw_choice(const FusedConvGeom& g, int waves) {
  FusedChoice c;
  c.fused = c.tc = c.wgrad_pw = true;
  wgrad_pw_splits(g, sm_count(), waves, c.wg_cps);
  return c;
}

/// dy and x as the pointwise weight gradient copies them: pw_copy_width floats at a time.
bool wgrad_pw_aligned(const FusedConvGeom& g, const Tensor& dy, const Tensor& x) {
  const std::uintptr_t bytes = 4 * static_cast<std::uintptr_t>(pw_copy_width(int64_t(g.H) * g.W));
  return reinterpret_cast<std::uintptr_t>(dy.data<float>()) % bytes == 0 &&
         reinterpret_cast<std::uintptr_t>(x.data<float>()) % bytes == 0;
}

/// dy and x as the halo weight gradient copies them: plan.vec floats at a time.
bool wgrad_halo_aligned(const WgradHaloPlan& plan, const Tensor& dy, const Tensor& x) {
  return reinterpret_cast<std::uintptr_t>(dy.data<float>()) % (4 * plan.vec) == 0 &&
         reinterpret_cast<std::uintptr_t>(x.data<float>()) % (4 * plan.vec) == 0;
}

/// The weight gradient in `plan`, its pixels split for `waves` blocks per SM.
FusedChoice wgrad_choice(const FusedConvGeom& g, const WgradPlan& plan, int waves) {
  FusedChoice c;
  c.fused = c.tc = true;
  c.wg_plan = plan;
  wgrad_splits(g, plan, sm_count(), waves, c.wg_cps);
  return c;
}

/// The data pass as `c` says (its tile and split).
void run_dgrad(const FusedConvGeom& g, const float* dy, const float* w, float* dx, Device device,
               const FusedChoice& c) {
  const FusedBn none;
  OpRange range("conv2d_backward_input", "native-tc");
  dispatch_fused_tc(c.tc_plan, Launch{{g, dy, w, none, none, dx, c.tc_cps}, device});
}

/// out = w (K, C, R, S) rotated and transposed, (C, K, R, S): the data pass's weight as a forward's
/// (rotated_weight).
__global__ void rotate_weights_kernel(const float* __restrict__ w, int K, int C, int RS, float* __restrict__ out) {
  pdl_enter();
  const int64_t n = int64_t(K) * C * RS;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = rotated_weight(w, K, C, RS, i);
}

/// The data pass on a forward kernel that reads w in the forward's order only (the mma and halo kernels;
/// c.mma or c.halo): a kernel first writes w rotated and transposed into a (C, K, R, S) copy (36,864
/// values for a growth 3x3, 128 x C for a bottleneck 1x1), then the forward kernel runs on it with the data
/// pass's geometry (g: dgrad_geom's, w_flipped cleared). Auto's timing of these choices includes the copy.
void run_dgrad_on_copy(FusedConvGeom g, const Tensor& dy, const Tensor& w, const Tensor& dx, const FusedChoice& c) {
  OpRange range("conv2d_backward_input", "native-tc");
  const Tensor wc = w.contiguous();  // (rotated_weight indexes a packed (K, C, R, S))
  const Tensor wf = Tensor::empty({w.size(1), w.size(0), w.size(2), w.size(3)}, DType::Float32, w.device());
  const int64_t n = wf.numel();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, int64_t(sm_count()) * 4));
  launch_kernel(rotate_weights_kernel, blocks, 256, 0, static_cast<cudaStream_t>(stream()), wc.data<float>(),
                static_cast<int>(w.size(0)), static_cast<int>(w.size(1)), static_cast<int>(w.size(2) * w.size(3)),
                wf.data<float>());
  CUDA_CHECK_LAUNCH();
  g.w_flipped = false;
  launch_fused(g, dy, nullptr, wf, nullptr, dx, &c);  // (wf freed after the launch is queued: stream-ordered)
}

/// Every size of a backward pass fits the kernels' int indexing (and their grids' limits).
bool backward_fits(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t P,
                   int64_t Q) {
  const int64_t lim = int64_t(1) << 30;
  return N * H * W < lim && N * P * Q < lim && C * H * W < lim && K * P * Q < lim && K * C * R * S < lim &&
         (C + 31) / 32 <= 65535 && (K + 31) / 32 <= 65535 && N * P * Q + kWgradChunk < lim;
}

/// Our data pass takes the call: stride 1, padding under the window, every size within int.
bool dgrad_applies(const Tensor& dy, const Tensor& w, const Tensor& dx, const ops::Conv2dParams& p) {
  const int64_t R = w.size(2), S = w.size(3);
  return p.stride_h == 1 && p.stride_w == 1 && p.pad_h <= R - 1 && p.pad_w <= S - 1 &&
         backward_fits(dx.size(0), dx.size(1), dx.size(2), dx.size(3), w.size(0), R, S, dy.size(2),
                       dy.size(3));
}

/// Elements between dy's images: each image is a packed (K, P, Q) block (checked by the caller), packed
/// images or a channel slice of a wider tensor (the training dense block's output gradient).
int64_t dy_images_apart(const Tensor& dy) {
  return dy.size(0) > 1 ? dy.strides()[0] : dy.size(1) * dy.size(2) * dy.size(3);
}

/// The data pass's geometry (dgrad_geom) for this call.
FusedConvGeom dgrad_geom_of(const Tensor& dy, const Tensor& w, const Tensor& dx, const ops::Conv2dParams& p) {
  return dgrad_geom(dx.size(0), dx.size(1), dx.size(2), dx.size(3), dy.size(1), dy.size(2), dy.size(3),
                    w.size(2), w.size(3), p.pad_h, p.pad_w, dy_images_apart(dy));
}

/// Our weight gradient takes the call: every size within int.
bool wgrad_applies(const Tensor& dy, const Tensor& x, const Tensor& dw) {
  return backward_fits(x.size(0), x.size(1), x.size(2), x.size(3), dw.size(0), dw.size(2), dw.size(3),
                       dy.size(2), dy.size(3));
}

}  // namespace

bool conv2d_backward_input_fused(const Tensor& dy, const Tensor& w, const ops::Conv2dParams& p,
                                 const Tensor& dx, const std::function<void()>& library) {
  const FusedConv mode = fused_conv();
  if (mode == FusedConv::Off || !tc_applies() || !dgrad_applies(dy, w, dx, p)) return false;
  const FusedConvGeom g = dgrad_geom_of(dy, w, dx, p);
  auto run = [&](const FusedChoice& c) {
    if (c.mma || c.halo)
      run_dgrad_on_copy(g, dy, w, dx, c);
    else
      run_dgrad(g, dy.data<float>(), w.data<float>(), dx.data<float>(), dx.device(), c);
  };
  FusedChoice choice =
      tc_choice(g, kTcPlans[0], 2);  // On: the first tile, split for two blocks per SM if it helps
  if (mode == FusedConv::Auto)
    choice = auto_choice(
        fused_key(FusedPass::BackwardData, g, {}), "conv2d_backward_input",
        [&] { return backward_what(dy, w, dx, p); },
        [&] {
          std::vector<FusedChoice> candidates;
          append_tc_candidates(g, candidates);  // as the forward's
          // The mma and halo kernels on the rotated copy (run_dgrad_on_copy): not yet run on a GPU this
          // way, so behind the halo kernel's gate. (The copy is aligned: a new allocation.)
          if (halo_unchecked_allowed()) {
            FusedConvGeom gf = g;
            gf.w_flipped = false;
            append_mma_candidates(gf, false, candidates);
            for (const HaloPlan& plan : kHaloPlans)
              if (halo_takes(gf, false, plan) &&
                  reinterpret_cast<std::uintptr_t>(dy.data<float>()) % (4 * plan.vec) == 0) {
                candidates.push_back(halo_choice(gf, plan, 0));
                const FusedChoice split = halo_choice(gf, plan, 2);
                if (split.tc_cps > 0) candidates.push_back(split);
              }
          }
          return candidates;
        },
        [&g](const FusedChoice& c) { return fused_name(g, c); }, run, library);
  if (!choice.fused) return false;
  run(choice);
  return true;
}

bool conv2d_backward_weight_fused(const Tensor& dy, const Tensor& x, int64_t x_img,
                                  const ops::Conv2dParams& p, const Tensor& dw,
                                  const std::function<void()>& library) {
  const FusedConv mode = fused_conv();
  if (mode == FusedConv::Off || !tc_applies() || !wgrad_applies(dy, x, dw)) return false;
  const FusedConvGeom g = geom_of(x, x_img, dw, p, dy_images_apart(dy));
  auto run = [&](const FusedChoice& c) {
    run_wgrad(g, dy.data<float>(), x.data<float>(), dw.data<float>(), dw.device(), c);
  };
  // On: a tile as tall as the gradient's rows need, two blocks per SM.
  FusedChoice choice = wgrad_choice(g, g.K <= 32 ? WgradPlan{32, 64} : WgradPlan{64, 64}, 2);
  if (mode == FusedConv::Auto)
    choice = auto_choice(
        fused_key(FusedPass::BackwardWeight, g, {}), "conv2d_backward_weight",
        [&] { return backward_what(dy, dw, x, p); },
        [&] {
          std::vector<FusedChoice> candidates;
          for (const WgradPlan& plan : kWgradPlans) {
            if (plan.bk > 32 && g.K <= 32) continue;  // all but 32 of its rows would be padding
            for (int waves : {1, 3}) candidates.push_back(wgrad_choice(g, plan, waves));
          }
          if (halo_unchecked_allowed()) {  // (the forward halo kernel's gate: not yet run on a GPU)
            for (const WgradHaloPlan& plan : kWgradHaloPlans)
              if (wgrad_halo_takes(g, plan) && wgrad_halo_aligned(plan, dy, x))
                for (int waves : {1, 2}) candidates.push_back(wgrad_halo_choice(g, plan, waves));
            if (wgrad_pw_takes(g) && wgrad_pw_aligned(g, dy, x))
              for (int waves : {1, 2}) candidates.push_back(wgrad_pw_choice(g, waves));
          }
          return candidates;
        },
        [&g](const FusedChoice& c) { return wgrad_name(g, c); }, run, library);
  if (!choice.fused) return false;
  run(choice);
  return true;
}

bool conv2d_backward_weight_pre_fused(const Tensor& dy, const Tensor& x, int64_t x_img,
                                      const ops::Conv2dParams& p, const ops::BnEval& pre, const Tensor& dw,
                                      const std::function<void()>& library) {
  const FusedConv mode = fused_conv();
  // The prologue form is not yet run on a GPU either: Auto takes it with LADNN_HALO_UNCHECKED=1, as the
  // plain form, or with LADNN_NORM1_FOLD=1 — its one caller, itself an opt-in to unchecked code, whose
  // forward would otherwise leave this pass the map's own pass to run again.
  if (mode == FusedConv::Off || !tc_applies() || !wgrad_applies(dy, x, dw) ||
      !(halo_unchecked_allowed() || fold_norm1()))
    return false;
  const FusedConvGeom g = geom_of(x, x_img, dw, p, dy_images_apart(dy));
  if (!wgrad_pw_takes(g) || !wgrad_pw_aligned(g, dy, x)) return false;
  std::vector<Tensor> keep;  // contiguous copies of pre's vectors, alive until the launches are queued
  const FusedBn fpre = fused_bn_of(&pre, keep);
  auto run = [&](const FusedChoice& c) {
    run_wgrad(g, dy.data<float>(), x.data<float>(), dw.data<float>(), dw.device(), c, fpre);
  };
  FusedChoice choice = wgrad_pw_choice(g, 2);  // On: two blocks per SM
  if (mode == FusedConv::Auto)
    choice = auto_choice(
        fused_key(FusedPass::BackwardWeight, g, {bn_code(&pre)}), "conv2d_backward_weight",
        [&] { return backward_what(dy, dw, x, p) + " pre " + std::to_string(bn_code(&pre)); },
        [&] {
          return std::vector<FusedChoice>{wgrad_pw_choice(g, 1), wgrad_pw_choice(g, 2)};
        },
        [&g](const FusedChoice& c) { return wgrad_name(g, c); }, run, library);
  if (!choice.fused) return false;
  run(choice);
  return true;
}

bool fused_conv_tensor_cores() {
  return tc_applies();
}

void conv2d_backward_weight_pw_plan(const Tensor& dy, const Tensor& x, int64_t x_img,
                                    const ops::Conv2dParams& p, const Tensor& dw, int waves,
                                    const ops::BnEval* pre) {
  const char* op = "conv2d_backward_weight_pw_plan";
  if (waves < 1) throw std::invalid_argument(std::string(op) + ": waves " + std::to_string(waves) + " < 1");
  if (!tc_applies())
    throw std::invalid_argument(std::string(op) + ": the tensor-core kernels need TF32 on and sm_80+");
  const FusedConvGeom g = geom_of(x, x_img, dw, p, dy_images_apart(dy));
  if (!wgrad_applies(dy, x, dw) || !wgrad_pw_takes(g) || !wgrad_pw_aligned(g, dy, x))
    throw std::invalid_argument(std::string(op) +
                                ": the kernel takes pointwise convolutions (1x1, stride 1, "
                                "no padding) with dy and x aligned to its copies; this call: window " +
                                std::to_string(g.R) + "x" + std::to_string(g.S) + ", stride " +
                                std::to_string(g.sh) + ", padding " + std::to_string(g.ph));
  std::vector<Tensor> keep;
  const FusedBn fpre = fused_bn_of(pre, keep);
  run_wgrad(g, dy.data<float>(), x.data<float>(), dw.data<float>(), dw.device(), wgrad_pw_choice(g, waves),
            fpre);
}

int conv_wgrad_halo_plans() {
  return static_cast<int>(sizeof(kWgradHaloPlans) / sizeof(kWgradHaloPlans[0]));
}

bool conv_wgrad_halo_plan_takes(int plan, const Shape& x, const Shape& w, const ops::Conv2dParams& p) {
  if (plan < 0 || plan >= conv_wgrad_halo_plans()) return false;
  FusedConvGeom g = geom_of(x, x[1] * x[2] * x[3], w, p, 0);
  g.y_img = int64_t(g.K) * g.P * g.Q;  // dy packed
  return wgrad_halo_takes(g, kWgradHaloPlans[plan]);
}

void conv2d_backward_weight_halo_plan(const Tensor& dy, const Tensor& x, int64_t x_img,
                                      const ops::Conv2dParams& p, const Tensor& dw, int plan, int waves) {
  const char* op = "conv2d_backward_weight_halo_plan";
  if (plan < 0 || plan >= conv_wgrad_halo_plans())
    throw std::invalid_argument(std::string(op) + ": plan " + std::to_string(plan) + " is not in [0, " +
                                std::to_string(conv_wgrad_halo_plans()) + ")");
  if (waves < 1) throw std::invalid_argument(std::string(op) + ": waves " + std::to_string(waves) + " < 1");
  if (!tc_applies())
    throw std::invalid_argument(std::string(op) + ": the tensor-core kernels need TF32 on and sm_80+");
  const WgradHaloPlan& hp = kWgradHaloPlans[plan];
  const FusedConvGeom g = geom_of(x, x_img, dw, p, dy_images_apart(dy));
  if (!wgrad_applies(dy, x, dw) || !wgrad_halo_takes(g, hp) || !wgrad_halo_aligned(hp, dy, x))
    throw std::invalid_argument(
        std::string(op) + ": plan " + std::to_string(plan) + " (bands of " + std::to_string(hp.bm) +
        " slots, copies of " + std::to_string(hp.vec) +
        " floats) takes 3x3 windows of stride 1 and padding 1, C a multiple of 32, 4 <= W <= " +
        std::to_string(hp.bm) + " with the widest copy W allows, dy and x aligned to it; this call: C " +
        std::to_string(g.C) + ", W " + std::to_string(g.W) + ", window " + std::to_string(g.R) + "x" +
        std::to_string(g.S) + ", stride " + std::to_string(g.sh) + ", padding " + std::to_string(g.ph));
  run_wgrad(g, dy.data<float>(), x.data<float>(), dw.data<float>(), dw.device(),
            wgrad_halo_choice(g, hp, waves));
}

int conv_backward_plans(bool weight) {
  return weight ? static_cast<int>(sizeof(kWgradPlans) / sizeof(kWgradPlans[0]))
                : static_cast<int>(sizeof(kTcPlans) / sizeof(kTcPlans[0]));
}

namespace {
void check_backward_plan(const char* op, bool weight, int plan, bool applies) {
  if (plan < 0 || plan >= conv_backward_plans(weight))
    throw std::invalid_argument(std::string(op) + ": plan " + std::to_string(plan) + " is not in [0, " +
                                std::to_string(conv_backward_plans(weight)) + ")");
  if (!tc_applies())
    throw std::invalid_argument(std::string(op) + ": the tensor-core kernels need TF32 on and sm_80+");
  if (!applies)
    throw std::invalid_argument(
        std::string(op) +
        ": our kernel does not take this call (the data pass: stride 1, padding under "
        "the window; every size within int)");
}
}  // namespace

void conv2d_backward_input_fused_plan(const Tensor& dy, const Tensor& w, const ops::Conv2dParams& p,
                                      const Tensor& dx, int plan, int chunks_per_split) {
  check_backward_plan("conv2d_backward_input_fused_plan", false, plan, dgrad_applies(dy, w, dx, p));
  if (chunks_per_split < 0)
    throw std::invalid_argument("conv2d_backward_input_fused_plan: chunks_per_split " +
                                std::to_string(chunks_per_split) + " < 0");
  FusedChoice c;
  c.fused = c.tc = true;
  c.tc_plan = kTcPlans[plan];
  c.tc_cps = chunks_per_split;
  run_dgrad(dgrad_geom_of(dy, w, dx, p), dy.data<float>(), w.data<float>(), dx.data<float>(), dx.device(), c);
}

void conv2d_backward_input_forward_plan(const Tensor& dy, const Tensor& w, const ops::Conv2dParams& p,
                                        const Tensor& dx, int plan, int chunks_per_split) {
  const char* op = "conv2d_backward_input_forward_plan";
  if (plan < 0 || plan >= fused_conv_plans())
    throw std::invalid_argument(std::string(op) + ": plan " + std::to_string(plan) + " is not in [0, " +
                                std::to_string(fused_conv_plans()) + ")");
  FusedChoice c = plan_choice(plan);
  if (!c.mma && !c.halo)
    throw std::invalid_argument(std::string(op) + ": plan " + std::to_string(plan) + " (" +
                                fused_name(FusedConvGeom{}, c) +
                                ") is not an mma or halo plan: the others read the rotated weight in place "
                                "(conv2d_backward_input_fused_plan)");
  if (!tc_applies())
    throw std::invalid_argument(std::string(op) + ": the tensor-core kernels need TF32 on and sm_80+");
  if (!dgrad_applies(dy, w, dx, p))
    throw std::invalid_argument(std::string(op) +
                                ": our kernels do not take this call (the data pass: stride 1, padding under "
                                "the window; every size within int)");
  const FusedConvGeom g = dgrad_geom_of(dy, w, dx, p);
  FusedConvGeom gf = g;
  gf.w_flipped = false;
  const std::string shape = "; the data pass as a forward: " + std::to_string(gf.C) + " input channels, " +
                            std::to_string(gf.R) + "x" + std::to_string(gf.S) + " window, padding " +
                            std::to_string(gf.ph) + ", W " + std::to_string(gf.W) + ", dy's images " +
                            std::to_string(gf.x_img) + " apart";
  if (c.mma && !mma_takes(gf, false))
    throw std::invalid_argument(std::string(op) + ": plan " + std::to_string(plan) +
                                " (mma) takes pointwise convolutions and 3x3 and 7x7 windows" + shape);
  if (c.halo && (!halo_takes(gf, false, c.halo_plan) ||
                 reinterpret_cast<std::uintptr_t>(dy.data<float>()) % (4 * c.halo_plan.vec) != 0))
    throw std::invalid_argument(std::string(op) + ": plan " + std::to_string(plan) +
                                " (halo) takes 3x3 windows of padding 1 over a multiple of 8 channels, W and "
                                "dy's images and address multiples of its copy width " +
                                std::to_string(c.halo_plan.vec) + ", W at most " +
                                std::to_string(c.halo_plan.bm / 2) + shape);
  if (chunks_per_split < 0)
    throw std::invalid_argument(std::string(op) + ": chunks_per_split " + std::to_string(chunks_per_split) +
                                " < 0");
  c.tc_cps = chunks_per_split;
  c.mma_tap = c.mma && mma_tap_major_fits(gf, c.mma_plan.depth);
  run_dgrad_on_copy(g, dy, w, dx, c);
}

void conv2d_backward_weight_fused_plan(const Tensor& dy, const Tensor& x, int64_t x_img,
                                       const ops::Conv2dParams& p, const Tensor& dw, int plan, int waves) {
  check_backward_plan("conv2d_backward_weight_fused_plan", true, plan, wgrad_applies(dy, x, dw));
  if (waves < 1)
    throw std::invalid_argument("conv2d_backward_weight_fused_plan: waves " + std::to_string(waves) + " < 1");
  const FusedConvGeom g = geom_of(x, x_img, dw, p, dy_images_apart(dy));
  run_wgrad(g, dy.data<float>(), x.data<float>(), dw.data<float>(), dw.device(),
            wgrad_choice(g, kWgradPlans[plan], waves));
}

}  // namespace ladnn::cuda
