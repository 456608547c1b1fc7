// cuda/batchnorm.cu — BatchNorm2d forward and backward on the GPU (float32, NCHW), two versions chosen
// by cuda::impl(Family::BatchNorm) (LADNN_BN=cudnn|native, STYLE.md habit 2):
//
//   cudnn   cudnnBatchNormalizationForwardTraining / ForwardInference / Backward in
//           CUDNN_BATCHNORM_SPATIAL mode (one mean/variance per channel over N, H, W).
//   native  three kernels per call:
//             forward train  bn_stats_partial (Welford per channel chunk) -> bn_stats_finalize (one thread
//                            per channel: merge chunks in double, save stats, update running stats,
//                            per-channel scale) -> bn_normalize (fused (x - mean) * scale + beta)
//             forward eval   bn_eval_plane (one kernel: a block per (n, c) plane derives the channel's
//                            scale/shift from the running stats and normalises the plane); it reads x in
//                            place when x's samples are contiguous but spaced apart (a dense block's
//                            channel prefix, ops::sample_contiguous), which cuDNN's packed descriptors
//                            cannot express: such inputs take the native kernel under LADNN_BN=cudnn too.
//                            For small planes (math::bn_planes_by_channel: 14x14 and 7x7 in DenseNet) a block
//                            per channel instead (bn_eval_by_channel): the same values, the same bits
//             batch stats    (ops::batch_norm_batch_stats: a training dense block's table, computed once per
//                            channel) bn_channel_batch_stats, a block per channel, one launch; or, under
//                            LADNN_BN_KERNEL=split or past 2^24 values a channel, bn_stats_partial ->
//                            bn_store_batch_stats. Native under LADNN_BN=cudnn too.
//             forward train, given those statistics: bn_train_plane, one pass as bn_eval_plane's (a block per
//                            (n, c) plane derives its channel's coefficients as the finalize would, and the
//                            first sample's blocks record save_mean, save_invstd and the running statistics).
//                            Native under LADNN_BN=cudnn too: cuDNN's training forward always reduces. Small
//                            planes by channel as the eval map's (bn_train_given_by_channel).
//             fused pools    (training, the BatchNorm given statistics) bn_train_avg_pool (a transition's
//                            norm-relu-pool) and bn_train_max_pool (the stem's), a block per output plane;
//                            a transition's backward from the pooled gradient when the windows tile the
//                            input: bn_pool_grad_partial -> bn_grad_finalize -> bn_pool_backward_dx.
//             backward       bn_grad_partial (sum dy, sum dy * (x - mean) per chunk) -> bn_grad_finalize
//                            (dgamma, dbeta, per-channel coefficients) -> bn_backward_dx (one
//                            elementwise pass)
//           Where the channels alone fill the GPU and each holds at most 65,536 values
//           (cuda::BnKernel, LADNN_BN_KERNEL; math::bn_channel_fits), a training forward or backward is
//           one kernel instead of three: a block per channel finds its channel's statistics (or
//           gradient sums), finishes them in thread 0 and then maps the channel's values, re-reading
//           them from L2 (bn_train_channel, bn_backward_channel). Graph replays pay each kernel's
//           launch and drain (5-6 us a node on average at batch 1 on an H200, run 7), and DenseNet-169 has
//           169 BatchNorms.
//           Under LADNN_BN_KERNEL=cluster (sm_90+, math::bn_cluster_shape: up to 131,072 values a channel)
//           the training forward and every backward hold the channel's values in registers instead of
//           re-reading them (bn_train_cluster, bn_backward_cluster): one block, or a cluster of up to 8
//           blocks whose partial statistics (or sums) meet in distributed shared memory. Each value is
//           read once: a backward adding into dx moves 4 floats per value (dy, x, dx read, dx written)
//           instead of 6, a forward 2 instead of 3, and a channel too long for one block no longer takes the
//           three kernels of the split path. Training forward and backward read a spaced x in place as well
//           (the training dense block's channel prefix, models/densenet.cpp): x's sample stride is
//           BnPartition::sN and a kernel parameter; dy, relu_y, y and dx are always packed.
//   Eval-mode backward always runs the native kernels: cuDNN has no backward for frozen statistics.
//
//   Fused ReLU (ops::BnAct::Relu; DenseNet's norm-relu pairs): native folds it into bn_normalize
//   (y = max(normalised, 0), no extra pass) and the backward kernels read dy through the mask y > 0
//   (no materialised masked gradient). cuDNN's fused BN-activation (cudnnBatchNormalizationForward-
//   TrainingEx with CUDNN_BATCHNORM_OPS_BN_ACTIVATION) is meant for NHWC half-precision tensors and has
//   not been tried here on NCHW float32, so the library version composes: cuDNN's BN, a ReLU in place
//   on its output; backward relu_backward, then cuDNN's BN backward.
//   The native kernels' arithmetic (partition of a channel over blocks, Welford, finalisation) is in
//   cuda/bnpool_math.h, which tests/cuda_bnpool_math_test.cpp also runs on the CPU.
//
// Semantics are tensor/cpu/batchnorm.cpp's (read its header for the formulas): biased variance to
// normalise, unbiased n/(n-1) for running_var, eps inside the square root, save_invstd = 1/sqrt(var+eps),
// gamma/beta undefined = 1/0, running stats undefined = not tracked, (C) vectors with any stride.
//
// What we rely on from cuDNN, and how it was established (tests/cuda_bnpool_test.cpp checks each one
// against the CPU on the device, so a cuDNN that behaves otherwise fails there):
//   * exponentialAverageFactor is PyTorch's momentum: running = (1 - f) * running + f * batch_stat
//     (cudnn_ops.h: "runningMean = newMean*factor + runningMean*(1-factor)", variance "in the same way").
//   * The running variance is blended with the *unbiased* batch variance, as PyTorch does: PyTorch hands
//     its running_var to cuDNN unchanged (aten/src/ATen/native/cudnn/BatchNorm.cpp) and documents the
//     unbiased running variance for both backends (pytorch/pytorch#19902, #106366); MXNet measured it
//     (apache/mxnet#21111: "non-cudnn biased, cudnn unbiased").
//   * resultSaveInvVariance receives 1/sqrt(var + eps) — an inverse standard deviation despite the
//     name (measured in microsoft/onnxruntime#8172) — so it is exactly our save_invstd, and
//     cudnnBatchNormalizationBackward takes save_mean/save_invstd back as savedMean/savedInvVariance.
//     With them given, the backward does not recompute statistics, so the epsilon we pass it (the
//     backward API has none) is irrelevant; the test runs the forward with eps = 1e-3 to prove it.
//   * CUDNN_BN_MIN_EPSILON is 0.0 in cuDNN 9 (cudnn_ops.h), so every eps >= 0 is accepted.
//   * resultRunningMean/resultRunningVariance may both be NULL (statistics not tracked).
//
// Accuracy of the native version: per-thread Welford in float (no E[x^2] - mean^2 cancellation),
// merged across threads with Chan's formula, chunks merged per channel in double; the normalisation
// computes (x - mean) first, which stays accurate when |mean| >> std (x * scale + shift would not).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda/allocator.h"
#include "cuda/bnpool_math.h"
#include "cuda/bnpool_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

using math::BnPartition;
using math::Welford;

constexpr int kThreads = math::kBnThreads;  // reduction blocks; elementwise blocks use the same
constexpr int kFinalizeThreads = 128;

// ---- geometry and pointers ----------------------------------------------------------------------------

struct BnGeom {
  int64_t N, C, HW;
  int64_t M() const { return N * HW; }  // values per channel
  int64_t total() const { return N * C * HW; }
};

BnGeom geom_of(const Tensor& x) { return {x.size(0), x.size(1), x.size(2) * x.size(3)}; }

/// One block may reduce a whole channel: its threads' float counts stay exact (up to 2^24 values).
bool one_block_per_channel_fits(const BnGeom& g) {
  return g.M() <= (int64_t(1) << 24);
}

BnPartition partition_of(const BnGeom& g) { return math::bn_partition(g.N, g.C, g.HW, sm_count()); }

/// Threads of a per-channel block when cuda::bn_kernel() gives (N, C, HW) one (the one-kernel path); 0
/// for the split path.
int channel_block_threads(const BnGeom& g) {
  if (g.M() <= 0) return 0;
  switch (bn_kernel()) {
    case BnKernel::Split:
      return 0;
    case BnKernel::Channel:  // (float counts stay exact up to 2^24 values)
      return one_block_per_channel_fits(g) ? math::bn_channel_threads(g.M()) : 0;
    case BnKernel::Auto:
    case BnKernel::Cluster:  // (for the kernels without a cluster form, and channels too long for one)
      return math::bn_channel_fits(g.N, g.C, g.HW, sm_count()) ? math::bn_channel_threads(g.M()) : 0;
  }
  return 0;
}

/// The cluster kernels' launch shape (math::bn_cluster_shape) when cuda::bn_kernel() asks for them and
/// (N, C, HW) fits on this device (sm_90+); threads == 0 otherwise.
math::BnClusterShape cluster_shape(const BnGeom& g) {
  if (bn_kernel() != BnKernel::Cluster || compute_capability() < 90) return {};
  return math::bn_cluster_shape(g.M());
}

/// A per-channel vector as the kernels read it: base pointer and element stride; null = undefined.
struct ChanPtr {
  float* p = nullptr;
  int64_t stride = 0;
};
ChanPtr chan(const Tensor& t) {
  if (!t.defined()) return {};
  return {t.data<float>(), t.strides()[0]};
}

// What a backward needs to recompute the fused ReLU's mask from x (math::BnMaskFromX): gamma, beta and
// save_invstd per channel; `on` false for the other backwards.
struct MaskSource {
  bool on = false;
  ChanPtr gamma, beta, invstd;
};
__device__ __forceinline__ math::BnMaskFromX mask_of(const MaskSource& m, int64_t c) {
  if (!m.on) return {};
  const float g = m.gamma.p ? m.gamma.p[c * m.gamma.stride] : 1.0f;
  return {true, math::bn_train_scale(g, m.invstd.p[c * m.invstd.stride]),
          m.beta.p ? m.beta.p[c * m.beta.stride] : 0.0f};
}

// ---- native kernels (the arithmetic is in cuda/bnpool_math.h, shared with a host test) ------------------

__device__ __forceinline__ Welford welford_warp(Welford w) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Welford o{__shfl_down_sync(kFullMask, w.n, offset), __shfl_down_sync(kFullMask, w.mean, offset),
                    __shfl_down_sync(kFullMask, w.m2, offset)};
    w = math::welford_merge(w, o);
  }
  return w;  // complete in lane 0
}

// The block's threads' Welford states merged: each warp merges its lanes, then the first warp merges the
// warps. Complete in thread 0 only. blockDim.x a multiple of 32.
__device__ __forceinline__ Welford block_welford(Welford w) {
  __shared__ Welford shared[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  w = welford_warp(w);
  if (lane == 0) shared[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < int(blockDim.x >> 5) ? shared[lane] : Welford{0.0f, 0.0f, 0.0f};
    w = welford_warp(w);
  }
  return w;
}

// grid (C, splits), block kThreads: block (c, s) reduces chunk s of channel c (math::BnPartition) to
// (count, mean, M2) at partial[(c*splits + s)*3 ...]. VEC = 4 reads float4 (HW % 4 == 0, x aligned).
template <int VEC>
__global__ void bn_stats_partial_kernel(const float* __restrict__ x, BnPartition p, float* __restrict__ partial) {
  pdl_enter();
  const int64_t c = blockIdx.x, s = blockIdx.y;
  const Welford w = block_welford(math::bn_stats_thread<VEC>(x, c, s, threadIdx.x, blockDim.x, p));
  if (threadIdx.x == 0) {
    float* out = partial + (c * p.splits + s) * 3;
    out[0] = w.n;
    out[1] = w.mean;
    out[2] = w.m2;
  }
}

// What finishing a channel's statistics gives its normalisation: y = (x - mean) * scale + shift.
struct NormCoefs {
  float mean, scale, shift;
};

// The normalisation's coefficients of channel c from its statistics. scale comes from the float gamma and
// saved invstd (bn_train_scale), so that a backward can recompute the ReLU's decisions from x
// (math::BnMaskFromX); shift = beta.
__device__ __forceinline__ NormCoefs channel_coefs(int64_t c, const math::BnChannelStats& st,
                                                   const ChanPtr& gamma, const ChanPtr& beta) {
  return {static_cast<float>(st.mean),
          math::bn_train_scale(gamma.p ? gamma.p[c * gamma.stride] : 1.0f, static_cast<float>(st.invstd)),
          beta.p ? beta.p[c * beta.stride] : 0.0f};
}

// Channel c's bookkeeping from its statistics: save_mean and save_invstd written, the running statistics
// blended (if tracked).
__device__ void record_channel_stats(int64_t c, const math::BnChannelStats& st, double momentum,
                                     const ChanPtr& running_mean, const ChanPtr& running_var,
                                     float* __restrict__ save_mean, float* __restrict__ save_invstd) {
  save_mean[c] = static_cast<float>(st.mean);
  save_invstd[c] = static_cast<float>(st.invstd);
  if (running_mean.p) {
    float& rm = running_mean.p[c * running_mean.stride];
    rm = static_cast<float>(math::bn_running_mean(rm, momentum, st));
  }
  if (running_var.p) {
    float& rv = running_var.p[c * running_var.stride];
    rv = static_cast<float>(math::bn_running_var(rv, momentum, st));
  }
}

// Channel c's statistics from its chunks' partial states (merged in double), recorded as above; returns the
// normalisation's coefficients.
__device__ NormCoefs finish_channel_stats(int64_t c, const float* partial, int splits, double eps,
                                          double momentum, const ChanPtr& gamma, const ChanPtr& beta,
                                          const ChanPtr& running_mean, const ChanPtr& running_var,
                                          float* __restrict__ save_mean, float* __restrict__ save_invstd) {
  const math::BnChannelStats st = math::bn_merge_partials(partial, splits, eps);
  record_channel_stats(c, st, momentum, running_mean, running_var, save_mean, save_invstd);
  return channel_coefs(c, st, gamma, beta);
}

// What a kernel given the batch statistics reads per channel (bn_train_plane and the fused training pools):
// the (C, 2) float64 [mean, var] rows of n values each, the BatchNorm's vectors, and where its bookkeeping
// goes.
struct GivenStats {
  const double* stats;
  double n, eps, momentum;
  ChanPtr gamma, beta, running_mean, running_var;
  float* save_mean;
  float* save_invstd;
};
// Channel c's coefficients as finish_channel_stats would derive them from its given statistics; the
// block of its first sample (s == 0), thread 0, records them (save_mean, save_invstd, running statistics).
__device__ NormCoefs given_channel(const GivenStats& a, int64_t c, int64_t s) {
  const math::BnChannelStats st = math::bn_channel_stats(a.n, a.stats[2 * c], a.stats[2 * c + 1], a.eps);
  if (s == 0 && threadIdx.x == 0)
    record_channel_stats(c, st, a.momentum, a.running_mean, a.running_var, a.save_mean, a.save_invstd);
  return channel_coefs(c, st, a.gamma, a.beta);
}

// ---- batch statistics computed once and reused (ops::batch_norm_batch_stats) ----------------------------
// out: (C, 2) float64, packed: channel c's mean at out[2c], its biased variance at out[2c + 1].

// Channel c's Welford state over all its values, by the whole block (as bn_train_channel_kernel's), merged
// in double as a single chunk, stored by thread 0 as [mean, var] at out[2c], out[2c + 1].
template <int VEC>
__device__ __forceinline__ void store_channel_batch_stats(const float* __restrict__ x, const BnPartition& p,
                                                          int64_t c, double* out) {
  const Welford w = block_welford(math::bn_stats_thread<VEC>(x, c, 0, threadIdx.x, blockDim.x, p));
  if (threadIdx.x == 0) {
    const float partial[3] = {w.n, w.mean, w.m2};
    const math::BnChannelStats st = math::bn_merge_partials(partial, 1, 0.0);
    out[2 * c] = st.mean;
    out[2 * c + 1] = st.var;
  }
}

// Block c: channel c's statistics (store_channel_batch_stats).
template <int VEC>
__global__ void bn_channel_batch_stats_kernel(const float* __restrict__ x, BnPartition p,
                                              double* __restrict__ out) {
  pdl_enter();
  store_channel_batch_stats<VEC>(x, p, blockIdx.x, out);
}

// One thread per channel: the chunks' partial states (bn_stats_partial_kernel) merged, stored as [mean, var].
__global__ void bn_store_batch_stats_kernel(const float* __restrict__ partial, int64_t C, int splits,
                                            double* __restrict__ out) {
  pdl_enter();
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const math::BnChannelStats st = math::bn_merge_partials(partial + c * splits * 3, splits, 0.0);
  out[2 * c] = st.mean;
  out[2 * c + 1] = st.var;
}

// One thread per channel: finish_channel_stats over its chunks, the coefficients stored for bn_normalize.
__global__ void bn_stats_finalize_kernel(const float* __restrict__ partial, int64_t C, int splits, double eps,
                                         double momentum, ChanPtr gamma, ChanPtr beta, ChanPtr running_mean,
                                         ChanPtr running_var, float* __restrict__ save_mean,
                                         float* __restrict__ save_invstd, float* __restrict__ scale,
                                         float* __restrict__ shift) {
  pdl_enter();
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const NormCoefs k = finish_channel_stats(c, partial + c * splits * 3, splits, eps, momentum, gamma, beta,
                                           running_mean, running_var, save_mean, save_invstd);
  scale[c] = k.scale;
  shift[c] = k.shift;
}

// y = (x - mean) * scale + shift, max(., 0) when RELU, for VEC values from xp to yp (VEC = 4: float4 loads
// and stores, both 16-byte aligned): the map of every normalising kernel below.
// The same map of VEC values already in registers (the cluster kernel's), stored at yp.
template <int VEC, bool RELU>
__device__ __forceinline__ void normalize_held(const float (&v)[VEC], float* __restrict__ yp, float mean,
                                               float scale, float shift) {
  float r[VEC];
  for (int q = 0; q < VEC; ++q) {
    r[q] = math::bn_normalize(v[q], mean, scale, shift);
    if constexpr (RELU) r[q] = math::bn_relu(r[q]);
  }
  if constexpr (VEC == 4)
    math::store4(yp, r);
  else
    *yp = r[0];
}
template <int VEC, bool RELU>
__device__ __forceinline__ void normalize_values(const float* __restrict__ xp, float* __restrict__ yp, float mean,
                                                 float scale, float shift) {
  float v[VEC];
  if constexpr (VEC == 4)
    math::load4(xp, v);
  else
    v[0] = *xp;
  normalize_held<VEC, RELU>(v, yp, mean, scale, shift);
}
// Plane `plane` = (n, c) of y (packed) from x's (samples sN apart) with channel c's coefficients k, by the
// block: the map of the plane kernels (eval, training given its statistics, from saved statistics).
template <int VEC, bool RELU>
__device__ __forceinline__ void normalize_plane(const float* __restrict__ x, int64_t sN,
                                                float* __restrict__ y, int64_t plane, int64_t C, int64_t HW,
                                                const NormCoefs& k) {
  const int64_t c = plane % C, n = plane / C;
  const float* xp = x + n * sN + c * HW;
  float* yp = y + plane * HW;
  for (int64_t i = threadIdx.x * int64_t(VEC); i < HW; i += int64_t(blockDim.x) * VEC)
    normalize_values<VEC, RELU>(xp + i, yp + i, k.mean, k.scale, k.shift);
}

// The training forward of channel c = blockIdx.x in one kernel (cuda::BnKernel::Channel): the block's
// Welford states over all the channel's values (math::bn_channel_partition), finished by thread 0 as
// above, then y = (x - mean) * scale + shift (max(., 0) when RELU) over the same values, which the
// block read moments before (L1/L2). VEC = 4: HW % 4 == 0, sN % 4 == 0, x and y 16-byte aligned.
template <int VEC, bool RELU>
__global__ void bn_train_channel_kernel(const float* __restrict__ x, BnPartition p, float* __restrict__ y,
                                        double eps, double momentum, ChanPtr gamma, ChanPtr beta,
                                        ChanPtr running_mean, ChanPtr running_var, float* __restrict__ save_mean,
                                        float* __restrict__ save_invstd) {
  pdl_enter();
  const int64_t c = blockIdx.x;
  const Welford w = block_welford(math::bn_stats_thread<VEC>(x, c, 0, threadIdx.x, blockDim.x, p));
  __shared__ NormCoefs coefs;
  if (threadIdx.x == 0) {
    const float partial[3] = {w.n, w.mean, w.m2};
    coefs = finish_channel_stats(c, partial, 1, eps, momentum, gamma, beta, running_mean, running_var, save_mean,
                                 save_invstd);
  }
  __syncthreads();
  const NormCoefs k = coefs;
#pragma unroll 4
  for (int64_t j = threadIdx.x * int64_t(VEC); j < p.M; j += int64_t(blockDim.x) * VEC) {
    const int64_t n = j / p.HW, r = j - n * p.HW;
    normalize_values<VEC, RELU>(x + n * p.sN + c * p.HW + r, y + (n * p.C + c) * p.HW + r, k.mean, k.scale,
                                k.shift);
  }
}

// Eval mode in one launch: block b normalises planes b, b + gridDim.x, ... (plane = n * C + c, HW values
// each), deriving channel c's scale = gamma / sqrt(running_var + eps) (in double) and shift = beta
// itself, then max(., 0) when RELU. Two launches (per-channel constants, then the map) cost more than
// the arithmetic at inference sizes: at batch 1 a 7x7 map is 49 values and the launch is the work.
// x's samples are sN floats apart (C * HW when contiguous); y is contiguous.
// Channel c's eval-mode map from its running statistics: scale = gamma / sqrt(running_var + eps) (in
// double), shift = beta.
__device__ __forceinline__ NormCoefs eval_coefs(int64_t c, double eps, const ChanPtr& gamma,
                                                const ChanPtr& beta, const ChanPtr& running_mean,
                                                const ChanPtr& running_var) {
  const double invstd = 1.0 / ::sqrt(double(running_var.p[c * running_var.stride]) + eps);
  const double g = gamma.p ? gamma.p[c * gamma.stride] : 1.0;
  return {running_mean.p[c * running_mean.stride], static_cast<float>(g * invstd),
          beta.p ? beta.p[c * beta.stride] : 0.0f};
}

template <int VEC, bool RELU>
__global__ void bn_eval_plane_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y, int64_t planes,
                                     int64_t C, int64_t HW, double eps, ChanPtr gamma, ChanPtr beta,
                                     ChanPtr running_mean, ChanPtr running_var) {
  pdl_enter();
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x)
    normalize_plane<VEC, RELU>(x, sN, y, plane, C, HW,
                               eval_coefs(plane % C, eps, gamma, beta, running_mean, running_var));
}

// Training's map from the statistics its forward saved (ops::batch_norm_map_saved), a block per plane as
// bn_eval_plane_kernel (or per channel, below): channel c's coefficients are channel_coefs' read back —
// save_mean, bn_train_scale of gamma and save_invstd (mask_of, the backward's recomputation of the ReLU's
// decisions), beta — so the values are the given-statistics forward's bits.
__device__ __forceinline__ NormCoefs saved_coefs(const MaskSource& saved, const ChanPtr& save_mean,
                                                 int64_t c) {
  const math::BnMaskFromX k = mask_of(saved, c);
  return {save_mean.p[c * save_mean.stride], k.scale, k.shift};
}
template <int VEC, bool RELU>
__global__ void bn_saved_plane_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y,
                                      int64_t planes, int64_t C, int64_t HW, MaskSource saved,
                                      ChanPtr save_mean) {
  pdl_enter();
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x)
    normalize_plane<VEC, RELU>(x, sN, y, plane, C, HW, saved_coefs(saved, save_mean, plane % C));
}

// Channel c's given statistics recorded as given_channel records them for the forward's kernels
// (save_mean, save_invstd, the running update).
__device__ __forceinline__ void record_given(const GivenStats& a, int64_t c) {
  const math::BnChannelStats st = math::bn_channel_stats(a.n, a.stats[2 * c], a.stats[2 * c + 1], a.eps);
  record_channel_stats(c, st, a.momentum, a.running_mean, a.running_var, a.save_mean, a.save_invstd);
}

// ops::batch_norm_record_train in one launch: blocks 0 .. fresh - 1 reduce the fresh channels
// fresh_begin + b into the table as bn_channel_batch_stats_kernel does (the same walk: the same rows) and
// record them; the other blocks record blockDim.x of channels [0, fresh_begin) each, a thread per
// channel. With fresh_begin = C (no fresh channels, or computed before by native_batch_stats) it only
// records. (table is a.stats, written and read here by the same thread: not __restrict__.)
template <int VEC>
__global__ void bn_record_given_kernel(const float* __restrict__ x, BnPartition p, GivenStats a,
                                       int64_t fresh_begin, double* table) {
  pdl_enter();
  const int64_t fresh = p.C - fresh_begin, b = blockIdx.x;
  if (b < fresh) {
    const int64_t c = fresh_begin + b;
    store_channel_batch_stats<VEC>(x, p, c, table);
    if (threadIdx.x == 0) record_given(a, c);  // (the thread that stored the row)
    return;
  }
  const int64_t c = (b - fresh) * int64_t(blockDim.x) + threadIdx.x;
  if (c < fresh_begin) record_given(a, c);
}

// The same maps with a block per channel instead of per plane, for small planes (bn_planes_by_channel): block
// b takes channels b, b + gridDim.x, ..., derives the channel's coefficients once and walks its N * HW
// values as the per-channel kernels do (j = t * VEC, stepping blockDim.x * VEC). The same values, the same
// bits as the plane kernels; a 7x7 plane is 49 values, and a block per plane spends more on being scheduled
// and on its coefficients (double arithmetic, in every thread) than on them.
template <int VEC, bool RELU>
__device__ __forceinline__ void normalize_channel(const float* __restrict__ x, int64_t sN,
                                                  float* __restrict__ y, int64_t c, int64_t N, int64_t C,
                                                  int64_t HW, const NormCoefs& k) {
  const int64_t M = N * HW;
  for (int64_t j = threadIdx.x * int64_t(VEC); j < M; j += int64_t(blockDim.x) * VEC) {
    const int64_t n = j / HW, r = j - n * HW;
    normalize_values<VEC, RELU>(x + n * sN + c * HW + r, y + (n * C + c) * HW + r, k.mean, k.scale, k.shift);
  }
}
template <int VEC, bool RELU>
__global__ void bn_eval_by_channel_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y,
                                          int64_t N, int64_t C, int64_t HW, double eps, ChanPtr gamma,
                                          ChanPtr beta, ChanPtr running_mean, ChanPtr running_var) {
  pdl_enter();
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x)
    normalize_channel<VEC, RELU>(x, sN, y, c, N, C, HW,
                                 eval_coefs(c, eps, gamma, beta, running_mean, running_var));
}

// bn_saved_plane_kernel's map with a block per channel (bn_planes_by_channel), as bn_eval_by_channel_kernel.
template <int VEC, bool RELU>
__global__ void bn_saved_by_channel_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y,
                                           int64_t N, int64_t C, int64_t HW, MaskSource saved,
                                           ChanPtr save_mean) {
  pdl_enter();
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x)
    normalize_channel<VEC, RELU>(x, sN, y, c, N, C, HW, saved_coefs(saved, save_mean, c));
}

// The training forward given the batch statistics (stats: (C, 2) float64 [mean, var] per channel, of n
// values each): nothing to reduce, so one pass over x as bn_eval_plane_kernel's — block b normalises planes
// b, b + gridDim.x, ... with its channel's coefficients as finish_channel_stats would derive them from
// these statistics, and the blocks of the first sample's planes record the channel's statistics (save_mean,
// save_invstd, running statistics) once.
template <int VEC, bool RELU>
__global__ void bn_train_plane_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y,
                                      int64_t planes, int64_t C, int64_t HW, GivenStats a) {
  pdl_enter();
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x)
    normalize_plane<VEC, RELU>(x, sN, y, plane, C, HW, given_channel(a, plane % C, plane / C));
}

// bn_train_plane_kernel's map with a block per channel (bn_planes_by_channel): the channel's coefficients
// once, recording its statistics as the first sample's planes do there (given_channel with s = 0).
// Channels [fresh_begin, C) are not in the table yet (ops::batch_norm_forward_train's `fresh`: the previous
// dense layer's new channels): their blocks first reduce them as bn_channel_batch_stats_kernel does (the
// same walk, threads and merge: the same [mean, var]) into table rows 2c, 2c + 1, then map them. They run
// first (blocks 0 .. C - fresh_begin - 1), so that the longest blocks do not make the kernel's tail. (table
// is a.stats, written here and read by given_channel: not __restrict__.)
template <int VEC, bool RELU>
__global__ void bn_train_given_by_channel_kernel(const float* __restrict__ x, BnPartition p,
                                                 float* __restrict__ y, GivenStats a, int64_t fresh_begin,
                                                 double* table) {
  pdl_enter();
  const int64_t fresh = p.C - fresh_begin;
  for (int64_t b = blockIdx.x; b < p.C; b += gridDim.x) {
    const int64_t c = b < fresh ? fresh_begin + b : b - fresh;
    if (c >= fresh_begin) {
      store_channel_batch_stats<VEC>(x, p, c, table);
      __syncthreads();  // the row, written by thread 0, read by every thread's given_channel below
    }
    normalize_channel<VEC, RELU>(x, p.sN, y, c, p.M / p.HW, p.C, p.HW, given_channel(a, c, 0));
    __syncthreads();  // (block_welford's shared state is reused by the next channel)
  }
}

// The same with an average pool after it (ops::bn_avg_pool2d_train, a DenseNet transition's training
// norm-relu-pool): block b takes output planes b, b + gridDim.x, ...; each output averages its window of
// the normalised (and rectified) input, math::avg_pool_at over the channel's map — the same bits as
// bn_train_plane then the native average pool, without the normalised map ever written.
__global__ void bn_train_avg_pool_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y,
                                         int64_t planes, int64_t C, math::PoolGeom g, bool relu,
                                         GivenStats a) {
  pdl_enter();
  const int64_t out_plane = g.OH * g.OW;
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const int64_t c = plane % C, s = plane / C;
    const NormCoefs k = given_channel(a, c, s);
    const math::BnEvalMap map{k.mean, k.scale, k.shift, relu};
    const float* xp = x + s * sN + c * g.H * g.W;
    float* yp = y + plane * out_plane;
    for (int64_t o = threadIdx.x; o < out_plane; o += blockDim.x) yp[o] = math::avg_pool_at(xp, o, g, map);
  }
}

// y = (x - mean[c]) * scale[c] + shift[c] over all N*C*HW values (grid-stride), c = (i / HW) % C,
// then max(y, 0) when RELU. With VEC = 4 a group of four never straddles two channels (HW % 4 == 0).
// x's samples are sN apart (C * HW when packed); y is packed.
template <int VEC, bool RELU>
__global__ void bn_normalize_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y, int64_t total,
                                    int64_t C, int64_t HW, const float* __restrict__ mean,
                                    const float* __restrict__ scale, const float* __restrict__ shift) {
  pdl_enter();
  const int64_t step = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * VEC; i < total; i += step) {
    const int64_t c = (i / HW) % C;
    const float mu = __ldg(mean + c), sc = __ldg(scale + c), sh = __ldg(shift + c);
    normalize_values<VEC, RELU>(x + math::sample_offset(i, C * HW, sN), y + i, mu, sc, sh);
  }
}

// y = max(y, 0) in place over n values: the library version's ReLU after cuDNN's normalisation.
template <int VEC>
__global__ void relu_inplace_kernel(float* __restrict__ y, int64_t n) {
  pdl_enter();
  const int64_t step = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * VEC; i < n; i += step) {
    if constexpr (VEC == 4) {
      float v[4];
      math::load4(y + i, v);
      for (int k = 0; k < 4; ++k) v[k] = math::bn_relu(v[k]);
      math::store4(y + i, v);
    } else {
      y[i] = math::bn_relu(y[i]);
    }
  }
}

// grid (C, splits): per chunk, sum(dy) and sum(dy * (x - mean[c])) into partial[(c*splits + s)*2 ...].
// relu_y (null for a plain BatchNorm) masks dy: the fused BatchNorm-ReLU's backward.
// The block's two gradient sums (each thread's given), stored by thread 0 at out[0], out[1].
__device__ __forceinline__ void store_grad_partial(float sum_dy, float sum_dy_xmu, float* __restrict__ out) {
  __shared__ float shared[32];
  sum_dy = block_sum(sum_dy, shared);
  sum_dy_xmu = block_sum(sum_dy_xmu, shared);
  if (threadIdx.x == 0) {
    out[0] = sum_dy;
    out[1] = sum_dy_xmu;
  }
}

template <int VEC>
__global__ void bn_grad_partial_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                       const float* __restrict__ relu_y, MaskSource from_x, BnPartition p,
                                       ChanPtr mean, float* __restrict__ partial) {
  pdl_enter();
  const int64_t c = blockIdx.x, s = blockIdx.y;
  float sum_dy, sum_dy_xmu;
  math::bn_grad_thread<VEC>(dy, x, mean.p[c * mean.stride], c, s, threadIdx.x, blockDim.x, p, sum_dy, sum_dy_xmu,
                            relu_y, mask_of(from_x, c));
  store_grad_partial(sum_dy, sum_dy_xmu, partial + (c * p.splits + s) * 2);
}

// What finishing a channel's gradient sums gives its dx pass: dx = k (dy - mean_dy - (x - mean) proj).
struct DxCoefs {
  float k, mean_dy, proj;
};

// VEC values of dy (at dyp) and x (at xp) loaded into d and v, dy masked by the ReLU's output at yp (when
// not null) or by the mask recomputed from x (m.on): what both backward passes read per group.
template <int VEC>
__device__ __forceinline__ void load_grad_values(const float* __restrict__ dyp, const float* __restrict__ xp,
                                                 const float* __restrict__ yp, const math::BnMaskFromX& m,
                                                 float mu, float (&d)[VEC], float (&v)[VEC]) {
  if constexpr (VEC == 4) {
    math::load4(dyp, d);
    math::load4(xp, v);
  } else {
    d[0] = *dyp;
    v[0] = *xp;
  }
  if (yp) {
    float y[VEC];
    if constexpr (VEC == 4)
      math::load4(yp, y);
    else
      y[0] = *yp;
    for (int q = 0; q < VEC; ++q) d[q] = math::bn_relu_grad(d[q], y[q]);
  } else if (m.on) {
    for (int q = 0; q < VEC; ++q) d[q] = math::bn_relu_on(v[q], mu, m) ? d[q] : 0.0f;
  }
}

// dx = k (dy - mean_dy - (x - mean) proj) for VEC values of masked dy (d) and x (v) in registers; stored at
// out, or with ADD added to what is there, rounded once (__fadd_rn: never contracted into an FMA with
// the product inside bn_dx, so the same bits as a separate add_). VEC = 4: float4 accesses, 16-byte aligned.
template <int VEC, bool ADD>
__device__ __forceinline__ void dx_held(const float (&d)[VEC], const float (&v)[VEC], float mu,
                                        const DxCoefs& k, float* __restrict__ out) {
  float r[VEC];
  for (int q = 0; q < VEC; ++q) r[q] = math::bn_dx(d[q], v[q], mu, k.k, k.mean_dy, k.proj);
  if constexpr (ADD) {
    float a[VEC];
    if constexpr (VEC == 4)
      math::load4(out, a);
    else
      a[0] = *out;
    for (int q = 0; q < VEC; ++q) r[q] = __fadd_rn(a[q], r[q]);
  }
  if constexpr (VEC == 4)
    math::store4(out, r);
  else
    *out = r[0];
}

// The dx pass's map of one group, reading its values (load_grad_values, then dx_held).
template <int VEC, bool ADD>
__device__ __forceinline__ void dx_values(const float* __restrict__ dyp, const float* __restrict__ xp,
                                          const float* __restrict__ yp, const math::BnMaskFromX& m, float mu,
                                          const DxCoefs& k, float* __restrict__ out) {
  float d[VEC], v[VEC];
  load_grad_values<VEC>(dyp, xp, yp, m, mu, d, v);
  dx_held<VEC, ADD>(d, v, mu, k, out);
}

// Channel c's dgamma and dbeta (written where not null) and dx coefficients (returned) from its sums
// (math::bn_grad_coefs). The statistics are the batch's (invstd given, through_stats) or the running ones
// (invstd from running_var and eps; frozen statistics do not depend on x).
__device__ DxCoefs finish_channel_grads(int64_t c, double sum_dy, double sum_dy_xmu, double M, const ChanPtr& gamma,
                                        const ChanPtr& invstd, const ChanPtr& running_var, double eps,
                                        bool through_stats, float* __restrict__ dgamma, float* __restrict__ dbeta) {
  const double is = invstd.p ? double(invstd.p[c * invstd.stride])
                             : 1.0 / ::sqrt(double(running_var.p[c * running_var.stride]) + eps);
  const double g = gamma.p ? gamma.p[c * gamma.stride] : 1.0;
  const math::BnGradCoefs k = math::bn_grad_coefs(sum_dy, sum_dy_xmu, is, g, M, through_stats);
  if (dbeta) dbeta[c] = static_cast<float>(k.dbeta);  // (null: another block of the cluster writes them)
  if (dgamma) dgamma[c] = static_cast<float>(k.dgamma);
  return {static_cast<float>(k.k), static_cast<float>(k.mean_dy), static_cast<float>(k.proj)};
}

// One thread per channel: finish_channel_grads over the chunks' sums (added in double), the coefficients
// stored for bn_backward_dx.
__global__ void bn_grad_finalize_kernel(const float* __restrict__ partial, int64_t C, int splits, double M,
                                        ChanPtr gamma, ChanPtr mean, ChanPtr invstd, ChanPtr running_var,
                                        double eps, bool through_stats, MaskSource from_x,
                                        float* __restrict__ dgamma, float* __restrict__ dbeta,
                                        float* __restrict__ coef_mean, float* __restrict__ coef_k,
                                        float* __restrict__ coef_mean_dy, float* __restrict__ coef_proj,
                                        float* __restrict__ coef_scale, float* __restrict__ coef_shift) {
  pdl_enter();
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  double sum_dy = 0.0, sum_dy_xmu = 0.0;
  for (int s = 0; s < splits; ++s) {
    sum_dy += partial[(c * splits + s) * 2];
    sum_dy_xmu += partial[(c * splits + s) * 2 + 1];
  }
  const DxCoefs k =
      finish_channel_grads(c, sum_dy, sum_dy_xmu, M, gamma, invstd, running_var, eps, through_stats, dgamma, dbeta);
  coef_mean[c] = mean.p[c * mean.stride];
  coef_k[c] = k.k;
  coef_mean_dy[c] = k.mean_dy;
  coef_proj[c] = k.proj;
  if (from_x.on) {  // the mask's scale and shift, once per channel for the dx pass
    const math::BnMaskFromX m = mask_of(from_x, c);
    coef_scale[c] = m.scale;
    coef_shift[c] = m.shift;
  }
}

// A backward of channel c = blockIdx.x in one kernel (cuda::BnKernel::Channel): the block's sums over all
// the channel's values (math::bn_channel_partition, dy masked as in bn_grad_partial), finished by thread 0
// as above, then dx over the same values (as bn_backward_dx: relu_y or the mask from x, ADD adds into dx
// rounded once). dy and relu_y packed; x's samples p.sN apart, dx's sD apart. VEC = 4 as the split path's.
template <int VEC, bool ADD>
__global__ void bn_backward_channel_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                           const float* __restrict__ relu_y, MaskSource from_x, BnPartition p,
                                           float* __restrict__ dx, int64_t sD, ChanPtr gamma, ChanPtr mean,
                                           ChanPtr invstd, ChanPtr running_var, double eps, bool through_stats,
                                           float* __restrict__ dgamma, float* __restrict__ dbeta) {
  pdl_enter();
  const int64_t c = blockIdx.x;
  const float mu = mean.p[c * mean.stride];
  const math::BnMaskFromX m = mask_of(from_x, c);
  float sum_dy, sum_dy_xmu;
  math::bn_grad_thread<VEC>(dy, x, mu, c, 0, threadIdx.x, blockDim.x, p, sum_dy, sum_dy_xmu, relu_y, m);
  __shared__ float shared[32];
  sum_dy = block_sum(sum_dy, shared);
  sum_dy_xmu = block_sum(sum_dy_xmu, shared);
  __shared__ DxCoefs coefs;
  if (threadIdx.x == 0)
    coefs = finish_channel_grads(c, sum_dy, sum_dy_xmu, static_cast<double>(p.M), gamma, invstd, running_var, eps,
                                 through_stats, dgamma, dbeta);
  __syncthreads();
  const DxCoefs k = coefs;
#pragma unroll 4
  for (int64_t j = threadIdx.x * int64_t(VEC); j < p.M; j += int64_t(blockDim.x) * VEC) {
    const int64_t n = j / p.HW, r = j - n * p.HW;
    const int64_t off = (n * p.C + c) * p.HW + r;
    dx_values<VEC, ADD>(dy + off, x + n * p.sN + c * p.HW + r, relu_y ? relu_y + off : nullptr, m, mu, k,
                        dx + n * sD + c * p.HW + r);
  }
}

// ---- a channel's values in registers (cuda::BnKernel::Cluster) -----------------------------------------
// A cluster of `blocks` blocks (launched with cluster dims (blocks, 1, 1), grid C * blocks: the blocks of
// channel c are blockIdx.x = c * blocks + rank) takes channel c; thread u = rank * blockDim.x + threadIdx.x
// of the cluster holds groups u, u + U, ... (U = blocks * blockDim.x) of VEC values, at most
// math::kBnClusterValues values, in registers. Each block reduces its threads' partial state as the
// per-channel kernels do; the blocks' partials meet through distributed shared memory (each block's thread 0
// reads all of them, in rank order, so every block finishes the same statistics), then every thread maps the
// values it holds. With one block it is bn_train_channel / bn_backward_channel with the second read of each
// value taken from registers: the same order of every sum, the same bits.

// All threads of all the cluster's blocks meet here; shared-memory writes before it are visible to every
// block after it (release / acquire).
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                   : "memory");
#endif
}

// The float at `p` (this block's shared memory) in the shared memory of the cluster's block `rank`.
__device__ __forceinline__ float load_cluster_shared(const float* p, unsigned rank) {
  float v = 0.0f;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const unsigned local = static_cast<unsigned>(__cvta_generic_to_shared(p));
  unsigned remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
#endif
  return v;
}

// Every block's K floats `mine` (thread 0's), gathered in rank order into thread 0's `all` (K * blocks
// floats) of every block. Called by all threads of all the cluster's blocks; with one block, a copy.
template <int K>
__device__ void cluster_gather(const float (&mine)[K], float* all, int blocks) {
  __shared__ float slot[K];
  if (blocks == 1) {
    if (threadIdx.x == 0)
      for (int k = 0; k < K; ++k) all[k] = mine[k];
    return;
  }
  if (threadIdx.x == 0)
    for (int k = 0; k < K; ++k) slot[k] = mine[k];
  cluster_barrier();
  if (threadIdx.x == 0)
    for (int r = 0; r < blocks; ++r)
      for (int k = 0; k < K; ++k) all[r * K + k] = load_cluster_shared(&slot[k], static_cast<unsigned>(r));
  cluster_barrier();  // no block leaves (or reuses its slot) while another still reads it
}

// Where a thread of a cluster kernel stands: its channel c, its block's rank in the cluster, its own rank
// u among the cluster's U threads, and the channel's M values of HW a sample.
struct ClusterPlace {
  int64_t c;
  int rank, u, U, M, HW;
};
__device__ __forceinline__ ClusterPlace cluster_place(const BnPartition& p, int blocks) {
  ClusterPlace at;
  at.c = blockIdx.x / blocks;
  at.rank = static_cast<int>(blockIdx.x - at.c * blocks);
  at.U = blocks * static_cast<int>(blockDim.x);
  at.u = at.rank * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x);
  at.M = static_cast<int>(p.M);
  at.HW = static_cast<int>(p.HW);
  return at;
}

// f(it, h) for each group `it` the thread holds (h: its place in the channel), in order; unrolled, so that
// the arrays f indexes by `it` stay in registers.
template <int VEC, class F>
__device__ __forceinline__ void for_each_held(const ClusterPlace& at, F&& f) {
#pragma unroll
  for (int it = 0; it < math::kBnClusterValues / VEC; ++it) {
    const math::BnHeldGroup h = math::bn_cluster_group<VEC>(at.u, it, at.U, at.HW);
    if (h.j >= at.M) break;
    f(it, h);
  }
}

// The training forward (as bn_train_channel_kernel) of channel blockIdx.x / blocks. VEC = 4: HW % 4 == 0,
// sN % 4 == 0, x and y 16-byte aligned. p.M <= blocks * blockDim.x * kBnClusterValues.
template <int VEC, bool RELU>
__global__ void __launch_bounds__(math::kBnClusterThreads, 1)
    bn_train_cluster_kernel(const float* __restrict__ x, BnPartition p, float* __restrict__ y, int blocks,
                            double eps, double momentum, ChanPtr gamma, ChanPtr beta, ChanPtr running_mean,
                            ChanPtr running_var, float* __restrict__ save_mean,
                            float* __restrict__ save_invstd) {
  pdl_enter();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the launcher never launches this there
#else
  constexpr int G = math::kBnClusterValues / VEC;  // groups a thread holds
  const ClusterPlace at = cluster_place(p, blocks);
  const int64_t c = at.c;
  float v[G][VEC];
  Welford w{0.0f, 0.0f, 0.0f};
  for_each_held<VEC>(at, [&](int it, const math::BnHeldGroup& h) {
    const float* xp = x + h.n * p.sN + c * p.HW + h.r;
    if constexpr (VEC == 4) {
      math::load4(xp, v[it]);
      math::welford_add4(w, v[it]);
    } else {
      v[it][0] = *xp;
      math::welford_add(w, v[it][0]);
    }
  });
  w = block_welford(w);
  float all[3 * math::kBnMaxClusterBlocks];
  cluster_gather<3>({w.n, w.mean, w.m2}, all, blocks);
  __shared__ NormCoefs coefs;
  if (threadIdx.x == 0) {
    const math::BnChannelStats st = math::bn_merge_partials(all, blocks, eps);
    if (at.rank == 0)
      record_channel_stats(c, st, momentum, running_mean, running_var, save_mean, save_invstd);
    coefs = channel_coefs(c, st, gamma, beta);
  }
  __syncthreads();
  const NormCoefs k = coefs;
  for_each_held<VEC>(at, [&](int it, const math::BnHeldGroup& h) {
    normalize_held<VEC, RELU>(v[it], y + (h.n * p.C + c) * p.HW + h.r, k.mean, k.scale, k.shift);
  });
#endif
}

// A backward (as bn_backward_channel_kernel) of channel blockIdx.x / blocks: dy and x read once, the masked
// dy and x held for the dx pass. The first block of the cluster writes dgamma and dbeta.
template <int VEC, bool ADD>
__global__ void __launch_bounds__(math::kBnClusterThreads)
    bn_backward_cluster_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                               const float* __restrict__ relu_y, MaskSource from_x, BnPartition p,
                               float* __restrict__ dx, int64_t sD, int blocks, ChanPtr gamma, ChanPtr mean,
                               ChanPtr invstd, ChanPtr running_var, double eps, bool through_stats,
                               float* __restrict__ dgamma, float* __restrict__ dbeta) {
  pdl_enter();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the launcher never launches this there
#else
  constexpr int G = math::kBnClusterValues / VEC;  // groups a thread holds
  const ClusterPlace at = cluster_place(p, blocks);
  const int64_t c = at.c;
  const float mu = mean.p[c * mean.stride];
  const math::BnMaskFromX m = mask_of(from_x, c);
  float d[G][VEC], v[G][VEC];
  float sum_dy = 0.0f, sum_dy_xmu = 0.0f;
  for_each_held<VEC>(at, [&](int it, const math::BnHeldGroup& h) {
    const int64_t off = (h.n * p.C + c) * p.HW + h.r;
    load_grad_values<VEC>(dy + off, x + h.n * p.sN + c * p.HW + h.r, relu_y ? relu_y + off : nullptr, m, mu,
                          d[it], v[it]);
    math::bn_grad_add<VEC>(d[it], v[it], mu, sum_dy, sum_dy_xmu);
  });
  __shared__ float shared[32];
  sum_dy = block_sum(sum_dy, shared);
  sum_dy_xmu = block_sum(sum_dy_xmu, shared);
  float all[2 * math::kBnMaxClusterBlocks];
  cluster_gather<2>({sum_dy, sum_dy_xmu}, all, blocks);
  __shared__ DxCoefs coefs;
  if (threadIdx.x == 0) {
    double total_dy = 0.0, total_dy_xmu = 0.0;  // in rank order, in double (as bn_grad_finalize's chunks)
    for (int r = 0; r < blocks; ++r) {
      total_dy += all[2 * r];
      total_dy_xmu += all[2 * r + 1];
    }
    coefs = finish_channel_grads(c, total_dy, total_dy_xmu, static_cast<double>(p.M), gamma, invstd,
                                 running_var, eps, through_stats, at.rank == 0 ? dgamma : nullptr,
                                 at.rank == 0 ? dbeta : nullptr);
  }
  __syncthreads();
  const DxCoefs k = coefs;
  for_each_held<VEC>(at, [&](int it, const math::BnHeldGroup& h) {
    dx_held<VEC, ADD>(d[it], v[it], mu, k, dx + h.n * sD + c * p.HW + h.r);
  });
#endif
}

// dx = k[c] * (dy - mean_dy[c] - (x - mean[c]) * proj[c]) over all values (grid-stride); dy masked by
// relu_y > 0 when relu_y is not null.
// x's samples are sN apart (C * HW when packed); dy and relu_y are packed. ADD: dx (samples sD apart)
// gets the value added, dx + value rounded once (__fadd_rn: never contracted into an FMA with the
// product inside bn_dx, so the same bits as a separate add_); otherwise dx (packed, sD = C * HW) is
// written.
template <int VEC, bool ADD>
__global__ void bn_backward_dx_kernel(const float* __restrict__ dy, const float* __restrict__ x, int64_t sN,
                                      const float* __restrict__ relu_y, bool from_x, float* __restrict__ dx,
                                      int64_t sD, int64_t total, int64_t C, int64_t HW,
                                      const float* __restrict__ coef_mean, const float* __restrict__ coef_k,
                                      const float* __restrict__ coef_mean_dy, const float* __restrict__ coef_proj,
                                      const float* __restrict__ coef_scale, const float* __restrict__ coef_shift) {
  pdl_enter();
  const int64_t step = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * VEC; i < total; i += step) {
    const int64_t c = (i / HW) % C;
    const float mu = __ldg(coef_mean + c);
    const DxCoefs k{__ldg(coef_k + c), __ldg(coef_mean_dy + c), __ldg(coef_proj + c)};
    const math::BnMaskFromX m =
        from_x ? math::BnMaskFromX{true, __ldg(coef_scale + c), __ldg(coef_shift + c)} : math::BnMaskFromX{};
    dx_values<VEC, ADD>(dy + i, x + math::sample_offset(i, C * HW, sN), relu_y ? relu_y + i : nullptr, m, mu, k,
                        dx + math::sample_offset(i, C * HW, sD));
  }
}

// A transition's training backward from the pooled gradient (ops::bn_avg_pool2d_backward_train, windows that
// tile the input, math::avg_pool_tiles): the split path's three kernels with dy read through the pool —
// each value's gradient computed from the pooled one as the pool's backward would write it — so the
// full-size gradient is never written or read. Partial sums (math::bn_pool_grad_thread), then
// bn_grad_finalize as for any backward, then dx (math::bn_pool_dx_at), the mask always from x.
__global__ void bn_pool_grad_partial_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                            MaskSource from_x, BnPartition p, math::PoolGeom g, ChanPtr mean,
                                            float* __restrict__ partial) {
  pdl_enter();
  const int64_t c = blockIdx.x, s = blockIdx.y;
  float sum_dy, sum_dy_xmu;
  math::bn_pool_grad_thread(dy, x, mean.p[c * mean.stride], c, s, threadIdx.x, blockDim.x, p, g,
                            mask_of(from_x, c), sum_dy, sum_dy_xmu);
  store_grad_partial(sum_dy, sum_dy_xmu, partial + (c * p.splits + s) * 2);
}

// Block b: planes b, b + gridDim.x, ... (plane = n * C + c; x's samples p.sN apart, dx packed).
__global__ void bn_pool_backward_dx_kernel(
    const float* __restrict__ dy, const float* __restrict__ x, BnPartition p, math::PoolGeom g, bool from_x,
    float* __restrict__ dx, int64_t planes, const float* __restrict__ coef_mean,
    const float* __restrict__ coef_k, const float* __restrict__ coef_mean_dy,
    const float* __restrict__ coef_proj, const float* __restrict__ coef_scale,
    const float* __restrict__ coef_shift) {
  pdl_enter();
  const int32_t HW = static_cast<int32_t>(p.HW);
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const int64_t c = plane % p.C, n = plane / p.C;
    const float mu = __ldg(coef_mean + c), k = __ldg(coef_k + c), mean_dy = __ldg(coef_mean_dy + c),
                proj = __ldg(coef_proj + c);
    const math::BnMaskFromX m =
        from_x ? math::BnMaskFromX{true, __ldg(coef_scale + c), __ldg(coef_shift + c)} : math::BnMaskFromX{};
    const float* xp = x + n * p.sN + c * p.HW;
    const float* dyp = dy + plane * g.OH * g.OW;
    float* dxp = dx + plane * p.HW;
    for (int32_t r = threadIdx.x; r < HW; r += blockDim.x)
      dxp[r] = math::bn_pool_dx(dyp, xp[r], r, g, mu, m, k, mean_dy, proj);
  }
}

// ---- native drivers -------------------------------------------------------------------------------------

/// Calls f(std::integral_constant<int, VEC>, std::bool_constant<FLAG>) with VEC = 4 when `vec` (float4
/// loads), else 1, and FLAG = `flag`: picks one of the four instantiations of a kernel template
/// <int VEC, bool FLAG> (FLAG: the fused ReLU, or adding into dx).
template <typename F>
void with_vec_flag(bool vec, bool flag, F&& f) {
  if (vec && flag) f(std::integral_constant<int, 4>{}, std::true_type{});
  else if (vec) f(std::integral_constant<int, 4>{}, std::false_type{});
  else if (flag) f(std::integral_constant<int, 1>{}, std::true_type{});
  else f(std::integral_constant<int, 1>{}, std::false_type{});
}

template <int VEC, bool RELU>
void launch_normalize_as(const float* px, int64_t sN, float* py, const BnGeom& g, const float* mean,
                         const float* scale, const float* shift) {
  launch_kernel(bn_normalize_kernel<VEC, RELU>, grid_for(g.total() / VEC, kThreads), kThreads, 0,
                cur_stream(), px, sN, py, g.total(), g.C, g.HW, mean, scale, shift);
  CUDA_CHECK_LAUNCH();
}

/// Elements between x's samples: its batch stride (x is packed or sample-contiguous, checked by the entry).
int64_t sample_stride(const Tensor& x, const BnGeom& g) {
  return g.N > 1 ? x.strides()[0] : g.C * g.HW;
}

// Launches bn_normalize with per-channel arrays mean/scale/shift (contiguous, C floats each).
void launch_normalize(const Tensor& x, const Tensor& y, const BnGeom& g, const float* mean, const float* scale,
                      const float* shift, bool relu) {
  const float* px = x.data<float>();
  float* py = y.data<float>();
  const int64_t sN = sample_stride(x, g);
  const bool vec = g.HW % 4 == 0 && sN % 4 == 0 && aligned16(px) && aligned16(py);
  with_vec_flag(vec, relu, [&](auto v, auto r) {
    launch_normalize_as<decltype(v)::value, decltype(r)::value>(px, sN, py, g, mean, scale, shift);
  });
}

// y = max(y, 0) in place (the cuDNN version's fused ReLU).
void relu_inplace(const Tensor& y) {
  const int64_t n = y.numel();
  if (n == 0) return;
  float* py = y.data<float>();
  if (n % 4 == 0 && aligned16(py))
    launch_kernel(relu_inplace_kernel<4>, grid_for(n / 4, kThreads), kThreads, 0, cur_stream(), py, n);
  else
    launch_kernel(relu_inplace_kernel<1>, grid_for(n, kThreads), kThreads, 0, cur_stream(), py, n);
  CUDA_CHECK_LAUNCH();
}

void native_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                          const Tensor& running_var, double momentum, double eps, bool relu,
                          const ops::BatchNormForward& out) {
  const BnGeom g = geom_of(x);
  if (const math::BnClusterShape cs = cluster_shape(g); cs.threads) {  // the values in registers
    BnPartition part = math::bn_channel_partition(g.N, g.C, g.HW);
    part.sN = sample_stride(x, g);
    const float* px = x.data<float>();
    float* py = out.y.data<float>();
    const bool vec = g.HW % 4 == 0 && part.sN % 4 == 0 && aligned16(px) && aligned16(py);
    auto launch = [&](auto kernel) {
      launch_kernel_clustered(static_cast<unsigned>(cs.blocks), kernel,
                              static_cast<unsigned>(g.C * cs.blocks), cs.threads, 0, cur_stream(), px, part,
                              py, cs.blocks, eps, momentum, chan(gamma), chan(beta), chan(running_mean),
                              chan(running_var), out.save_mean.data<float>(), out.save_invstd.data<float>());
    };
    with_vec_flag(vec, relu, [&](auto v, auto r) {
      launch(bn_train_cluster_kernel<decltype(v)::value, decltype(r)::value>);
    });
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (const int threads = channel_block_threads(g)) {  // one kernel: a block per channel
    BnPartition part = math::bn_channel_partition(g.N, g.C, g.HW);
    part.sN = sample_stride(x, g);
    const float* px = x.data<float>();
    float* py = out.y.data<float>();
    const bool vec = g.HW % 4 == 0 && part.sN % 4 == 0 && aligned16(px) && aligned16(py);
    auto launch = [&](auto kernel) {
      launch_kernel(kernel, static_cast<unsigned>(g.C), threads, 0, cur_stream(), px, part, py, eps, momentum,
                    chan(gamma), chan(beta), chan(running_mean), chan(running_var),
                    out.save_mean.data<float>(), out.save_invstd.data<float>());
    };
    with_vec_flag(vec, relu,
                  [&](auto v, auto r) { launch(bn_train_channel_kernel<decltype(v)::value, decltype(r)::value>); });
    CUDA_CHECK_LAUNCH();
    return;
  }
  BnPartition part = partition_of(g);
  part.sN = sample_stride(x, g);
  const int splits = part.splits;
  // Scratch: Welford partials (C, splits, 3), then scale (C) and shift (C).
  Buffer ws(sizeof(float) * static_cast<std::size_t>(g.C * splits * 3 + 2 * g.C));
  float* partial = ws.as<float>();
  float* scale = partial + g.C * splits * 3;
  float* shift = scale + g.C;

  const float* px = x.data<float>();
  const dim3 grid(static_cast<unsigned>(g.C), static_cast<unsigned>(splits));
  if (g.HW % 4 == 0 && part.sN % 4 == 0 && aligned16(px))
    launch_kernel(bn_stats_partial_kernel<4>, grid, kThreads, 0, cur_stream(), px, part, partial);
  else
    launch_kernel(bn_stats_partial_kernel<1>, grid, kThreads, 0, cur_stream(), px, part, partial);
  CUDA_CHECK_LAUNCH();

  const unsigned fblocks = static_cast<unsigned>((g.C + kFinalizeThreads - 1) / kFinalizeThreads);
  launch_kernel(bn_stats_finalize_kernel, fblocks, kFinalizeThreads, 0, cur_stream(), partial, g.C, splits,
                eps, momentum, chan(gamma), chan(beta), chan(running_mean), chan(running_var),
                out.save_mean.data<float>(), out.save_invstd.data<float>(), scale, shift);
  CUDA_CHECK_LAUNCH();

  launch_normalize(x, out.y, g, out.save_mean.data<float>(), scale, shift, relu);
}

// And with a max pool after it (ops::bn_max_pool2d_train, DenseNet's stem norm0-relu0-pool0): each output
// is the maximum of its window of the normalised input, with its argmax index (math::max_pool_at over the
// channel's map: the same bits as bn_train_plane then the native max pool).
__global__ void bn_train_max_pool_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y,
                                         int64_t* __restrict__ ind, int64_t planes, int64_t C,
                                         math::PoolGeom g, bool relu, GivenStats a) {
  pdl_enter();
  const int64_t out_plane = g.OH * g.OW;
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const int64_t c = plane % C, s = plane / C;
    const NormCoefs k = given_channel(a, c, s);
    const math::BnEvalMap map{k.mean, k.scale, k.shift, relu};
    const float* xp = x + s * sN + c * g.H * g.W;
    for (int64_t o = threadIdx.x; o < out_plane; o += blockDim.x) {
      float v;
      int64_t i;
      math::max_pool_at(xp, o, g, v, i, map);
      y[plane * out_plane + o] = v;
      ind[plane * out_plane + o] = i;
    }
  }
}

/// The launch of a kernel with a block per (n, c) plane (bn_eval_plane, bn_train_plane): enough warps to
/// cover a plane of VEC-value groups in one sweep, at most kThreads (a 7x7 plane gets 64).
struct PlaneLaunch {
  int64_t planes;
  unsigned blocks;
  int threads;
};
template <int VEC>
PlaneLaunch plane_launch(const BnGeom& g) {
  const int64_t planes = g.N * g.C;
  const int64_t per_plane = (g.HW + VEC - 1) / VEC;
  return {planes, static_cast<unsigned>(std::min<int64_t>(planes, int64_t(1) << 30)),
          static_cast<int>(std::min<int64_t>(kThreads, (per_plane + 31) / 32 * 32))};
}

/// Whether x (samples sN apart) and y allow the float4 path of the plane kernels.
bool planes_vec(const Tensor& x, const Tensor& y, const BnGeom& g) {
  return g.HW % 4 == 0 && sample_stride(x, g) % 4 == 0 && aligned16(x.data<float>()) &&
         aligned16(y.data<float>());
}

/// Whether the normalising kernels without a reduction (eval; training given its statistics) take a block
/// per channel rather than per plane: cuda::BnKernel Channel always, Split never (the plane kernels, as
/// before), Auto and Cluster for small planes (math::bn_planes_by_channel).
bool by_channel(const BnGeom& g) {
  switch (bn_kernel()) {
    case BnKernel::Channel:
      return g.C > 0;
    case BnKernel::Split:
      return false;
    case BnKernel::Auto:
    case BnKernel::Cluster:
      return math::bn_planes_by_channel(g.N, g.C, g.HW, sm_count());
  }
  return false;
}

/// A block per channel: bn_channel_threads(N * HW) threads (about 16 values each), C blocks.
struct ChannelLaunch {
  unsigned blocks;
  int threads;
};
ChannelLaunch channel_launch(const BnGeom& g) {
  return {static_cast<unsigned>(std::min<int64_t>(g.C, int64_t(1) << 30)), math::bn_channel_threads(g.M())};
}

template <int VEC, bool RELU>
void launch_eval_planes(const Tensor& x, const Tensor& y, const BnGeom& g, double eps, const Tensor& gamma,
                        const Tensor& beta, const Tensor& running_mean, const Tensor& running_var) {
  if (by_channel(g)) {
    const ChannelLaunch l = channel_launch(g);
    launch_kernel(bn_eval_by_channel_kernel<VEC, RELU>, l.blocks, l.threads, 0, cur_stream(), x.data<float>(),
                  sample_stride(x, g), y.data<float>(), g.N, g.C, g.HW, eps, chan(gamma), chan(beta),
                  chan(running_mean), chan(running_var));
    CUDA_CHECK_LAUNCH();
    return;
  }
  const PlaneLaunch l = plane_launch<VEC>(g);
  launch_kernel(bn_eval_plane_kernel<VEC, RELU>, l.blocks, l.threads, 0, cur_stream(), x.data<float>(),
                sample_stride(x, g), y.data<float>(), l.planes, g.C, g.HW, eps, chan(gamma), chan(beta),
                chan(running_mean), chan(running_var));
  CUDA_CHECK_LAUNCH();
}

/// The kernel arguments of a forward given `stats` ((C, 2) float64, packed) of x's geometry g, writing
/// its bookkeeping into out's save_mean and save_invstd.
GivenStats given_stats(const Tensor& stats, const BnGeom& g, double eps, double momentum, const Tensor& gamma,
                       const Tensor& beta, const Tensor& running_mean, const Tensor& running_var,
                       const ops::BatchNormForward& out) {
  return {stats.data<double>(),
          static_cast<double>(g.M()),
          eps,
          momentum,
          chan(gamma),
          chan(beta),
          chan(running_mean),
          chan(running_var),
          out.save_mean.data<float>(),
          out.save_invstd.data<float>()};
}

void native_batch_stats(const Tensor& x, const Tensor& out);

/// The training forward given the batch statistics ((C, 2) float64, packed): one bn_train_plane launch, or
/// a block per channel for small planes; with `fresh`, the last channels' statistics computed first (in
/// the same kernel when it is by channel).
void native_forward_train_given(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                const Tensor& running_mean, const Tensor& running_var, double momentum,
                                double eps, bool relu, const Tensor& stats, const ops::BatchNormForward& out,
                                int64_t fresh) {
  const BnGeom g = geom_of(x);
  if (g.total() == 0) return;
  // (In the map's kernel only where one block may reduce a channel, as native_batch_stats decides.)
  const bool fused_fresh = fresh > 0 && by_channel(g) && one_block_per_channel_fits(g);
  if (fresh > 0 && !fused_fresh)  // the fresh channels' statistics first, then the map as for any table
    native_batch_stats(x.narrow(1, g.C - fresh, fresh), stats.narrow(0, g.C - fresh, fresh));
  const GivenStats given = given_stats(stats, g, eps, momentum, gamma, beta, running_mean, running_var, out);
  with_vec_flag(planes_vec(x, out.y, g), relu, [&](auto v, auto r) {
    constexpr int VEC = decltype(v)::value;
    constexpr bool RELU = decltype(r)::value;
    if (by_channel(g)) {
      const ChannelLaunch l = channel_launch(g);
      BnPartition part = math::bn_channel_partition(g.N, g.C, g.HW);
      part.sN = sample_stride(x, g);
      launch_kernel(bn_train_given_by_channel_kernel<VEC, RELU>, l.blocks, l.threads, 0, cur_stream(),
                    x.data<float>(), part, out.y.data<float>(), given, fused_fresh ? g.C - fresh : g.C,
                    stats.data<double>());
    } else {
      const PlaneLaunch l = plane_launch<VEC>(g);
      launch_kernel(bn_train_plane_kernel<VEC, RELU>, l.blocks, l.threads, 0, cur_stream(), x.data<float>(),
                    sample_stride(x, g), out.y.data<float>(), l.planes, g.C, g.HW, given);
    }
    CUDA_CHECK_LAUNCH();
  });
}

/// Per-channel [mean, biased variance] of x into out ((C, 2) float64, packed): with a block per channel
/// (one launch) unless cuda::bn_kernel() asks for the split layout or a channel holds more values than
/// float counts keep exact (2^24); then the split path's partial states and a merge (two launches).
void native_batch_stats(const Tensor& x, const Tensor& out) {
  const BnGeom g = geom_of(x);
  const float* px = x.data<float>();
  double* po = out.data<double>();
  const int64_t sN = sample_stride(x, g);
  const bool vec4 = g.HW % 4 == 0 && sN % 4 == 0 && aligned16(px);
  if (bn_kernel() != BnKernel::Split && one_block_per_channel_fits(g)) {
    BnPartition part = math::bn_channel_partition(g.N, g.C, g.HW);
    part.sN = sN;
    const int threads = math::bn_channel_threads(g.M());
    if (vec4)
      launch_kernel(bn_channel_batch_stats_kernel<4>, static_cast<unsigned>(g.C), threads, 0, cur_stream(),
                    px, part, po);
    else
      launch_kernel(bn_channel_batch_stats_kernel<1>, static_cast<unsigned>(g.C), threads, 0, cur_stream(),
                    px, part, po);
    CUDA_CHECK_LAUNCH();
    return;
  }
  BnPartition part = partition_of(g);
  part.sN = sN;
  Buffer ws(sizeof(float) * static_cast<std::size_t>(g.C * part.splits * 3));
  float* partial = ws.as<float>();
  const dim3 grid(static_cast<unsigned>(g.C), static_cast<unsigned>(part.splits));
  if (vec4)
    launch_kernel(bn_stats_partial_kernel<4>, grid, kThreads, 0, cur_stream(), px, part, partial);
  else
    launch_kernel(bn_stats_partial_kernel<1>, grid, kThreads, 0, cur_stream(), px, part, partial);
  CUDA_CHECK_LAUNCH();
  const unsigned fblocks = static_cast<unsigned>((g.C + kFinalizeThreads - 1) / kFinalizeThreads);
  launch_kernel(bn_store_batch_stats_kernel, fblocks, kFinalizeThreads, 0, cur_stream(), partial, g.C,
                part.splits, po);
  CUDA_CHECK_LAUNCH();
}

void native_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                         const Tensor& running_var, double eps, bool relu, const Tensor& y) {
  const BnGeom g = geom_of(x);
  if (g.total() == 0) return;
  with_vec_flag(planes_vec(x, y, g), relu, [&](auto v, auto r) {
    launch_eval_planes<decltype(v)::value, decltype(r)::value>(x, y, g, eps, gamma, beta, running_mean,
                                                               running_var);
  });
}

// The split backward's scratch: partial sums (C, splits, 2) and six per-channel coefficients for the dx
// pass (the last two: the mask's scale and shift, written only when it comes from x).
struct GradScratch {
  Buffer ws;
  float *partial, *coef_mean, *coef_k, *coef_mean_dy, *coef_proj, *coef_scale, *coef_shift;
  GradScratch(int64_t C, int splits) : ws(sizeof(float) * static_cast<std::size_t>(C * splits * 2 + 6 * C)) {
    partial = ws.as<float>();
    coef_mean = partial + C * splits * 2;
    coef_k = coef_mean + C;
    coef_mean_dy = coef_k + C;
    coef_proj = coef_mean_dy + C;
    coef_scale = coef_proj + C;
    coef_shift = coef_scale + C;
  }
};

// Both backward modes: `mean` is save_mean or running_mean; `invstd` is save_invstd (training) or
// undefined (eval: computed from running_var and eps). `relu_y` (contiguous, or undefined): the fused
// BatchNorm-ReLU's output, masking dy inside both passes.
void native_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                     const Tensor& invstd, const Tensor& running_var, double eps, bool through_stats,
                     const Tensor& relu_y, const ops::BatchNormGrads& out, const Tensor& dx_into = Tensor(),
                     const MaskSource& from_x = {}) {
  const BnGeom g = geom_of(x);
  const float* px = x.data<float>();
  const float* pdy = dy.data<float>();
  // dx_into (a sample-contiguous view) takes dx added in; otherwise out.dx (packed) is written.
  const bool add = dx_into.defined();
  float* pdx = add ? dx_into.data<float>() : out.dx.data<float>();
  const int64_t sD = add ? sample_stride(dx_into, g) : g.C * g.HW;
  const float* pmask = relu_y.defined() ? relu_y.data<float>() : nullptr;
  const int64_t sN = sample_stride(x, g);
  const bool vec = g.HW % 4 == 0 && sN % 4 == 0 && sD % 4 == 0 && aligned16(px) && aligned16(pdy) &&
                   aligned16(pdx) && (!pmask || aligned16(pmask));
  if (const math::BnClusterShape cs = cluster_shape(g); cs.threads) {  // the values in registers
    BnPartition part = math::bn_channel_partition(g.N, g.C, g.HW);
    part.sN = sN;
    auto launch = [&](auto kernel) {
      launch_kernel_clustered(static_cast<unsigned>(cs.blocks), kernel,
                              static_cast<unsigned>(g.C * cs.blocks), cs.threads, 0, cur_stream(), pdy, px,
                              pmask, from_x, part, pdx, sD, cs.blocks, chan(gamma), chan(mean), chan(invstd),
                              chan(running_var), eps, through_stats, out.dgamma.data<float>(),
                              out.dbeta.data<float>());
    };
    with_vec_flag(vec, add, [&](auto v, auto a) {
      launch(bn_backward_cluster_kernel<decltype(v)::value, decltype(a)::value>);
    });
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (const int threads = channel_block_threads(g)) {  // one kernel: a block per channel
    BnPartition part = math::bn_channel_partition(g.N, g.C, g.HW);
    part.sN = sN;
    auto launch = [&](auto kernel) {
      launch_kernel(kernel, static_cast<unsigned>(g.C), threads, 0, cur_stream(), pdy, px, pmask, from_x,
                    part, pdx, sD, chan(gamma), chan(mean), chan(invstd), chan(running_var), eps,
                    through_stats, out.dgamma.data<float>(), out.dbeta.data<float>());
    };
    with_vec_flag(vec, add, [&](auto v, auto a) {
      launch(bn_backward_channel_kernel<decltype(v)::value, decltype(a)::value>);
    });
    CUDA_CHECK_LAUNCH();
    return;
  }
  BnPartition part = partition_of(g);
  part.sN = sN;
  const int splits = part.splits;
  GradScratch ws(g.C, splits);
  float *partial = ws.partial, *coef_mean = ws.coef_mean, *coef_k = ws.coef_k,
        *coef_mean_dy = ws.coef_mean_dy, *coef_proj = ws.coef_proj, *coef_scale = ws.coef_scale,
        *coef_shift = ws.coef_shift;

  if (g.M() > 0) {
    const dim3 grid(static_cast<unsigned>(g.C), static_cast<unsigned>(splits));
    if (vec)
      launch_kernel(bn_grad_partial_kernel<4>, grid, kThreads, 0, cur_stream(), pdy, px, pmask, from_x, part,
                    chan(mean), partial);
    else
      launch_kernel(bn_grad_partial_kernel<1>, grid, kThreads, 0, cur_stream(), pdy, px, pmask, from_x, part,
                    chan(mean), partial);
    CUDA_CHECK_LAUNCH();
  } else {
    // No values (N = 0 or HW = 0, eval only): the sums are zero.
    CUDA_CHECK(cudaMemsetAsync(partial, 0, sizeof(float) * g.C * splits * 2, cur_stream()));
  }

  const unsigned fblocks = static_cast<unsigned>((g.C + kFinalizeThreads - 1) / kFinalizeThreads);
  launch_kernel(bn_grad_finalize_kernel, fblocks, kFinalizeThreads, 0, cur_stream(), partial, g.C, splits,
                static_cast<double>(g.M()), chan(gamma), chan(mean), chan(invstd), chan(running_var), eps,
                through_stats, from_x, out.dgamma.data<float>(), out.dbeta.data<float>(), coef_mean, coef_k,
                coef_mean_dy, coef_proj, coef_scale, coef_shift);
  CUDA_CHECK_LAUNCH();

  if (g.total() == 0) return;
  const unsigned grid = grid_for(vec ? g.total() / 4 : g.total(), kThreads);
  auto launch = [&](auto kernel) {
    launch_kernel(kernel, grid, kThreads, 0, cur_stream(), pdy, px, part.sN, pmask, from_x.on, pdx, sD,
                  g.total(), g.C, g.HW, coef_mean, coef_k, coef_mean_dy, coef_proj, coef_scale, coef_shift);
  };
  with_vec_flag(vec, add,
                [&](auto v, auto a) { launch(bn_backward_dx_kernel<decltype(v)::value, decltype(a)::value>); });
  CUDA_CHECK_LAUNCH();
}

// ---- cuDNN drivers ----------------------------------------------------------------------------------------

/// A contiguous float32 (C) vector for cuDNN: `t` itself when contiguous; a contiguous copy when
/// strided; `fill` in a scratch buffer when undefined (gamma = 1, beta = 0).
struct CudnnVec {
  Tensor tensor;  // the contiguous tensor, when t was defined
  Buffer scratch;
  const float* ptr = nullptr;
};
CudnnVec cudnn_vec(const Tensor& t, int64_t C, float fill) {
  CudnnVec v;
  if (t.defined()) {
    v.tensor = t.contiguous();
    v.ptr = v.tensor.data<float>();
  } else {
    v.scratch = Buffer(sizeof(float) * static_cast<std::size_t>(C));
    fill_floats(v.scratch.as<float>(), C, fill);
    v.ptr = v.scratch.as<float>();
  }
  return v;
}

void cudnn_forward_train(const std::string& op, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                         Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                         const ops::BatchNormForward& out) {
  const int64_t C = x.size(1);
  TensorDesc xd, bd;
  xd.set_nchw(op, x.shape());
  CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(bd.get(), xd.get(), CUDNN_BATCHNORM_SPATIAL));
  const CudnnVec g = cudnn_vec(gamma, C, 1.0f), b = cudnn_vec(beta, C, 0.0f);

  // cuDNN updates running stats in place, contiguous, and both or neither. A strided running stat is
  // updated in a contiguous copy and copied back; a lone one gets a throwaway partner.
  const bool track = running_mean.defined() || running_var.defined();
  Tensor rm, rv;
  Buffer partner;
  if (track) {
    if (running_mean.defined()) rm = running_mean.contiguous();
    if (running_var.defined()) rv = running_var.contiguous();
    if (!rm.defined() || !rv.defined()) {
      partner = Buffer(sizeof(float) * static_cast<std::size_t>(C));
      fill_floats(partner.as<float>(), C, 1.0f);
    }
  }
  float* rm_ptr = rm.defined() ? rm.data<float>() : (track ? partner.as<float>() : nullptr);
  float* rv_ptr = rv.defined() ? rv.data<float>() : (track ? partner.as<float>() : nullptr);

  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
      cudnn_handle(), CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd.get(), x.data<float>(), xd.get(),
      out.y.data<float>(), bd.get(), g.ptr, b.ptr, momentum, rm_ptr, rv_ptr, eps, out.save_mean.data<float>(),
      out.save_invstd.data<float>()));

  if (rm.defined() && !rm.shares_storage(running_mean)) running_mean.copy_(rm);
  if (rv.defined() && !rv.shares_storage(running_var)) running_var.copy_(rv);
}

void cudnn_forward_eval(const std::string& op, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                        const Tensor& running_mean, const Tensor& running_var, double eps, const Tensor& y) {
  const int64_t C = x.size(1);
  TensorDesc xd, bd;
  xd.set_nchw(op, x.shape());
  CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(bd.get(), xd.get(), CUDNN_BATCHNORM_SPATIAL));
  const CudnnVec g = cudnn_vec(gamma, C, 1.0f), b = cudnn_vec(beta, C, 0.0f);
  const Tensor rm = running_mean.contiguous(), rv = running_var.contiguous();
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnBatchNormalizationForwardInference(cudnn_handle(), CUDNN_BATCHNORM_SPATIAL, &one, &zero,
                                                      xd.get(), x.data<float>(), xd.get(), y.data<float>(),
                                                      bd.get(), g.ptr, b.ptr, rm.data<float>(), rv.data<float>(),
                                                      eps));
}

void cudnn_backward_train(const std::string& op, const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& save_mean, const Tensor& save_invstd, const ops::BatchNormGrads& out) {
  const int64_t C = x.size(1);
  TensorDesc xd, bd;
  xd.set_nchw(op, x.shape());
  CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(bd.get(), xd.get(), CUDNN_BATCHNORM_SPATIAL));
  const CudnnVec g = cudnn_vec(gamma, C, 1.0f);
  const Tensor sm = save_mean.contiguous(), si = save_invstd.contiguous();
  // The epsilon only matters if cuDNN recomputed the statistics; with savedMean/savedInvVariance
  // given it uses them as they are (see the file header).
  constexpr double kUnusedEps = 1e-5;
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnBatchNormalizationBackward(
      cudnn_handle(), CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one, &zero, xd.get(), x.data<float>(), xd.get(),
      dy.data<float>(), xd.get(), out.dx.data<float>(), bd.get(), g.ptr, out.dgamma.data<float>(),
      out.dbeta.data<float>(), kUnusedEps, sm.data<float>(), si.data<float>()));
}

// ---- shared plumbing ----------------------------------------------------------------------------------------

void require_float32_all(const std::string& op, std::initializer_list<std::pair<const Tensor*, const char*>> ts) {
  for (const auto& [t, name] : ts) require_float32(op, *t, name);
}

ops::BatchNormGrads new_grads(const Tensor& x, bool with_dx = true) {
  const Shape c_shape{x.size(1)};
  return {with_dx ? new_output(x.shape(), DType::Float32, x.device()) : Tensor(),
          new_output(c_shape, DType::Float32, x.device()), new_output(c_shape, DType::Float32, x.device())};
}

/// The implementation that runs now, for dispatch and the profiler's table.
Impl bn_impl() { return impl(Family::BatchNorm); }
const char* bn_impl_name(Impl i) { return impl_name(Family::BatchNorm, i); }

}  // namespace

// ---- cuda/ops.h ---------------------------------------------------------------------------------------------

ops::BatchNormForward batch_norm_forward_train(const Tensor& x_in, const Tensor& gamma, const Tensor& beta,
                                               Tensor& running_mean, Tensor& running_var, double momentum,
                                               double eps, ops::BnAct act, const Tensor& batch_stats,
                                               int64_t fresh) {
  const std::string op = "batch_norm_forward_train";
  const bool relu = act == ops::BnAct::Relu;
  require_float32_all(op, {{&x_in, "input"}, {&gamma, "gamma"}, {&beta, "beta"},
                           {&running_mean, "running_mean"}, {&running_var, "running_var"}});
  // A sample-contiguous view (the training dense block's channel prefix) is read in place by the native
  // kernels; cuDNN needs packed tensors. Given statistics, only the native pass can use them.
  const bool spaced = !x_in.is_contiguous() && ops::sample_contiguous(x_in);
  const bool given = batch_stats.defined();
  const Impl which = spaced || given ? Impl::Native : bn_impl();
  OpRange range(relu ? "batch_norm_relu_forward_train" : "batch_norm_forward_train", bn_impl_name(which));
  const Tensor x = spaced ? x_in : x_in.contiguous();
  const Shape c_shape{x.size(1)};
  ops::BatchNormForward out{new_output(x.shape(), DType::Float32, x.device()),
                            new_output(c_shape, DType::Float32, x.device()),
                            new_output(c_shape, DType::Float32, x.device())};
  if (x.size(1) == 0) return out;  // no channels: nothing to compute (N*H*W > 1 was checked)
  if (which == Impl::Library) {
    cudnn_forward_train(op, x, gamma, beta, running_mean, running_var, momentum, eps, out);
    if (relu) relu_inplace(out.y);
  } else {
    if (given)  // (fresh > 0: batch_stats is contiguous, checked by ops::batch_norm_forward_train)
      native_forward_train_given(x, gamma, beta, running_mean, running_var, momentum, eps, relu,
                                 fresh > 0 ? batch_stats : batch_stats.contiguous(), out, fresh);
    else
      native_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps, relu, out);
    out.relu_from_x = relu;  // math::BnMaskFromX redoes its ReLU's decisions
  }
  return out;
}

namespace {
/// What the fused training pools (bn_avg_pool2d_train, bn_max_pool2d_train) share: the checks, x read in
/// place (a channel prefix) or packed, the statistics packed, the BatchNorm's outputs allocated (y the
/// pooled map), and the launch: a block per output plane, enough warps to cover it in one sweep.
struct TrainPool {
  Tensor x, stats;
  Shape y_shape;
  BnGeom g{};
  math::PoolGeom geom{};
  int64_t planes = 0;
  unsigned blocks = 1;
  int threads = 32;
};
TrainPool train_pool_setup(const std::string& op, const Tensor& x_in, const Tensor& gamma, const Tensor& beta,
                           const Tensor& running_mean, const Tensor& running_var, const Tensor& stats,
                           const ops::Pool2dParams& p, bool relu, ops::BatchNormForward& bn) {
  require_float32_all(op, {{&x_in, "input"},
                           {&gamma, "gamma"},
                           {&beta, "beta"},
                           {&running_mean, "running_mean"},
                           {&running_var, "running_var"}});
  TrainPool t;
  const bool spaced = !x_in.is_contiguous() && ops::sample_contiguous(x_in);  // read in place
  t.x = spaced ? x_in : x_in.contiguous();
  t.stats = stats.contiguous();
  t.y_shape = ops::pool2d_output_shape(t.x.shape(), p);
  const Shape c_shape{t.x.size(1)};
  bn = ops::BatchNormForward{new_output(t.y_shape, DType::Float32, t.x.device()),
                             new_output(c_shape, DType::Float32, t.x.device()),
                             new_output(c_shape, DType::Float32, t.x.device()), relu};
  t.g = geom_of(t.x);
  t.geom = pool_geom(t.x.shape(), t.y_shape, p);
  t.planes = t.y_shape[0] * t.y_shape[1];
  const int64_t out_plane = t.y_shape[2] * t.y_shape[3];
  t.threads =
      static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (out_plane + 31) / 32 * 32)));
  t.blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(t.planes, int64_t(1) << 30)));
  return t;
}
}  // namespace

bool bn_max_pool2d_train(const Tensor& x_in, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                         Tensor& running_var, double momentum, double eps, ops::BnAct act,
                         const Tensor& stats, const ops::Pool2dParams& p, ops::BnMaxPoolForward& out) {
  if (impl(Family::Pool) != Impl::Native) return false;
  // (ops::bn_max_pool2d_train has checked x, the window, the vectors and the statistics' shape and device)
  const bool relu = act == ops::BnAct::Relu;
  OpRange range(relu ? "batch_norm_relu_max_pool_train" : "batch_norm_max_pool_train", "native");
  const TrainPool t = train_pool_setup("bn_max_pool2d_train", x_in, gamma, beta, running_mean, running_var,
                                       stats, p, relu, out.bn);
  out.indices = new_output(t.y_shape, DType::Int64, t.x.device());
  if (t.g.C == 0) return true;
  launch_kernel(bn_train_max_pool_kernel, t.blocks, t.threads, 0, cur_stream(), t.x.data<float>(),
                sample_stride(t.x, t.g), out.bn.y.data<float>(), out.indices.data<int64_t>(), t.planes, t.g.C,
                t.geom, relu,
                given_stats(t.stats, t.g, eps, momentum, gamma, beta, running_mean, running_var, out.bn));
  CUDA_CHECK_LAUNCH();
  return true;
}

bool bn_avg_pool2d_train(const Tensor& x_in, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                         Tensor& running_var, double momentum, double eps, ops::BnAct act,
                         const Tensor& stats, const ops::Pool2dParams& p, ops::BatchNormForward& out) {
  if (impl(Family::Pool) != Impl::Native) return false;
  // (ops::bn_avg_pool2d_train has checked x, the window, the vectors and the statistics' shape and device)
  const bool relu = act == ops::BnAct::Relu;
  OpRange range(relu ? "batch_norm_relu_avg_pool_train" : "batch_norm_avg_pool_train", "native");
  const TrainPool t = train_pool_setup("bn_avg_pool2d_train", x_in, gamma, beta, running_mean, running_var,
                                       stats, p, relu, out);
  if (t.g.C == 0) return true;
  launch_kernel(bn_train_avg_pool_kernel, t.blocks, t.threads, 0, cur_stream(), t.x.data<float>(),
                sample_stride(t.x, t.g), out.y.data<float>(), t.planes, t.g.C, t.geom, relu,
                given_stats(t.stats, t.g, eps, momentum, gamma, beta, running_mean, running_var, out));
  CUDA_CHECK_LAUNCH();
  return true;
}

bool bn_avg_pool2d_backward_train(const Tensor& dy_in, const Tensor& x_in, const Tensor& gamma,
                                  const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd,
                                  ops::BnAct act, const ops::Pool2dParams& p, ops::BatchNormGrads& out) {
  const Shape y_shape = dy_in.shape();  // (checked against the window's output on x by the caller)
  const math::PoolGeom g = pool_geom(x_in.shape(), y_shape, p);
  // Tiling windows, and 32-bit index arithmetic inside a channel (math::bn_pool_grad_thread).
  const int64_t M = x_in.size(0) * x_in.size(2) * x_in.size(3);
  if (!math::avg_pool_tiles(g) || M >= (int64_t(1) << 31)) return false;
  const std::string op = "bn_avg_pool2d_backward_train";
  require_float32_all(op, {{&dy_in, "grad_output"},
                           {&x_in, "input"},
                           {&gamma, "gamma"},
                           {&beta, "beta"},
                           {&save_mean, "save_mean"},
                           {&save_invstd, "save_invstd"}});
  const bool relu = act == ops::BnAct::Relu;
  OpRange range(relu ? "batch_norm_relu_avg_pool_backward_train" : "batch_norm_avg_pool_backward_train",
                "native");
  const bool spaced = !x_in.is_contiguous() && ops::sample_contiguous(x_in);  // read in place
  const Tensor x = spaced ? x_in : x_in.contiguous(), dy = dy_in.contiguous();
  out = new_grads(x);
  const BnGeom bg = geom_of(x);
  if (bg.C == 0) return true;
  BnPartition part = partition_of(bg);
  part.sN = sample_stride(x, bg);
  const int splits = part.splits;
  GradScratch ws(bg.C, splits);
  float *partial = ws.partial, *coef_mean = ws.coef_mean, *coef_k = ws.coef_k,
        *coef_mean_dy = ws.coef_mean_dy, *coef_proj = ws.coef_proj, *coef_scale = ws.coef_scale,
        *coef_shift = ws.coef_shift;
  MaskSource from_x;
  if (relu) from_x = {true, chan(gamma), chan(beta), chan(save_invstd)};
  const dim3 grid(static_cast<unsigned>(bg.C), static_cast<unsigned>(splits));
  launch_kernel(bn_pool_grad_partial_kernel, grid, kThreads, 0, cur_stream(), dy.data<float>(),
                x.data<float>(), from_x, part, g, chan(save_mean), partial);
  CUDA_CHECK_LAUNCH();
  const unsigned fblocks = static_cast<unsigned>((bg.C + kFinalizeThreads - 1) / kFinalizeThreads);
  launch_kernel(bn_grad_finalize_kernel, fblocks, kFinalizeThreads, 0, cur_stream(), partial, bg.C, splits,
                static_cast<double>(bg.M()), chan(gamma), chan(save_mean), chan(save_invstd), ChanPtr{}, 0.0,
                true, from_x, out.dgamma.data<float>(), out.dbeta.data<float>(), coef_mean, coef_k,
                coef_mean_dy, coef_proj, coef_scale, coef_shift);
  CUDA_CHECK_LAUNCH();
  const int64_t planes = bg.N * bg.C;
  if (planes == 0) return true;  // an empty batch: dgamma and dbeta are the finalize's zeros, dx is empty
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (bg.HW + 31) / 32 * 32));
  launch_kernel(bn_pool_backward_dx_kernel,
                static_cast<unsigned>(std::min<int64_t>(planes, int64_t(1) << 30)), threads, 0, cur_stream(),
                dy.data<float>(), x.data<float>(), part, g, relu, out.dx.data<float>(), planes, coef_mean,
                coef_k, coef_mean_dy, coef_proj, coef_scale, coef_shift);
  CUDA_CHECK_LAUNCH();
  return true;
}

void batch_norm_batch_stats_into(const Tensor& x_in, const Tensor& out) {
  const std::string op = "batch_norm_batch_stats";
  require_float32(op, x_in, "input");
  const bool spaced = !x_in.is_contiguous() && ops::sample_contiguous(x_in);  // read in place
  OpRange range("batch_norm_batch_stats", "native");
  const Tensor x = spaced ? x_in : x_in.contiguous();
  if (x.size(1) == 0) return;
  native_batch_stats(x, out);
}

Tensor batch_norm_forward_eval(const Tensor& x_in, const Tensor& gamma, const Tensor& beta,
                               const Tensor& running_mean, const Tensor& running_var, double eps, ops::BnAct act) {
  const std::string op = "batch_norm_forward_eval";
  const bool relu = act == ops::BnAct::Relu;
  require_float32_all(op, {{&x_in, "input"}, {&gamma, "gamma"}, {&beta, "beta"},
                           {&running_mean, "running_mean"}, {&running_var, "running_var"}});
  // cuDNN rejects empty tensors (nothing to compute anyway) and needs packed ones: a sample-contiguous
  // view (a dense block's channel prefix) is read in place by the native kernel instead of copied.
  const bool spaced = !x_in.is_contiguous() && ops::sample_contiguous(x_in);
  const Impl which = x_in.numel() == 0 || spaced ? Impl::Native : bn_impl();
  OpRange range(relu ? "batch_norm_relu_forward_eval" : "batch_norm_forward_eval", bn_impl_name(which));
  const Tensor x = spaced ? x_in : x_in.contiguous();
  Tensor y = new_output(x.shape(), DType::Float32, x.device());
  if (x.size(1) == 0) return y;
  if (which == Impl::Library) {
    cudnn_forward_eval(op, x, gamma, beta, running_mean, running_var, eps, y);
    if (relu) relu_inplace(y);
  } else {
    native_forward_eval(x, gamma, beta, running_mean, running_var, eps, relu, y);
  }
  return y;
}

ops::BatchNormForward batch_norm_record_train(const Tensor& x_in, Tensor& running_mean, Tensor& running_var,
                                              double momentum, double eps, ops::BnAct act,
                                              const Tensor& batch_stats, int64_t fresh) {
  const std::string op = "batch_norm_record_train";
  require_float32_all(op, {{&x_in, "input"}, {&running_mean, "running_mean"}, {&running_var, "running_var"}});
  const bool spaced = !x_in.is_contiguous() && ops::sample_contiguous(x_in);
  OpRange range(op.c_str(), "native");
  // (A packed copy only for an input that is neither packed nor a channel prefix: only its fresh channels
  // are read.)
  const Tensor x = spaced || fresh == 0 ? x_in : x_in.contiguous();
  const Shape c_shape{x.size(1)};
  ops::BatchNormForward out{Tensor(), new_output(c_shape, DType::Float32, x.device()),
                            new_output(c_shape, DType::Float32, x.device()), act == ops::BnAct::Relu};
  const BnGeom g = geom_of(x);
  if (g.C == 0) return out;
  // The fresh channels in the same kernel where one block may reduce a channel (as native_batch_stats
  // decides), else by native_batch_stats first. (batch_stats is contiguous with fresh > 0, checked by
  // ops::batch_norm_record_train.)
  const bool fused_fresh = fresh > 0 && bn_kernel() != BnKernel::Split && one_block_per_channel_fits(g);
  if (fresh > 0 && !fused_fresh)
    native_batch_stats(x.narrow(1, g.C - fresh, fresh), batch_stats.narrow(0, g.C - fresh, fresh));
  const Tensor stats = fresh > 0 ? batch_stats : batch_stats.contiguous();
  const GivenStats given =
      given_stats(stats, g, eps, momentum, Tensor(), Tensor(), running_mean, running_var, out);
  const int64_t fresh_begin = fused_fresh ? g.C - fresh : g.C, sN = sample_stride(x, g);
  BnPartition part = math::bn_channel_partition(g.N, g.C, g.HW);
  part.sN = sN;
  const int threads = fused_fresh ? math::bn_channel_threads(g.M()) : kThreads;
  const unsigned blocks = static_cast<unsigned>((g.C - fresh_begin) + (fresh_begin + threads - 1) / threads);
  const bool vec4 = g.HW % 4 == 0 && sN % 4 == 0 && aligned16(x.data<float>());
  double* table = stats.data<double>();
  if (fused_fresh && vec4)
    launch_kernel(bn_record_given_kernel<4>, blocks, threads, 0, cur_stream(), x.data<float>(), part, given,
                  fresh_begin, table);
  else
    launch_kernel(bn_record_given_kernel<1>, blocks, threads, 0, cur_stream(), x.data<float>(), part, given,
                  fresh_begin, table);
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor batch_norm_map_saved(const Tensor& x_in, const Tensor& gamma, const Tensor& beta,
                            const Tensor& save_mean, const Tensor& save_invstd, ops::BnAct act) {
  const std::string op = "batch_norm_map_saved";
  const bool relu = act == ops::BnAct::Relu;
  require_float32_all(op, {{&x_in, "input"},
                           {&gamma, "gamma"},
                           {&beta, "beta"},
                           {&save_mean, "save_mean"},
                           {&save_invstd, "save_invstd"}});
  const bool spaced = !x_in.is_contiguous() && ops::sample_contiguous(x_in);
  OpRange range(relu ? "batch_norm_relu_map_saved" : "batch_norm_map_saved", "native");
  const Tensor x = spaced ? x_in : x_in.contiguous();
  Tensor y = new_output(x.shape(), DType::Float32, x.device());
  const BnGeom g = geom_of(x);
  if (g.total() == 0) return y;
  const MaskSource saved{true, chan(gamma), chan(beta), chan(save_invstd)};
  with_vec_flag(planes_vec(x, y, g), relu, [&](auto v, auto r) {
    constexpr int VEC = decltype(v)::value;
    constexpr bool RELU = decltype(r)::value;
    if (by_channel(g)) {  // small planes: a block per channel, as the given forward's map
      const ChannelLaunch l = channel_launch(g);
      launch_kernel(bn_saved_by_channel_kernel<VEC, RELU>, l.blocks, l.threads, 0, cur_stream(),
                    x.data<float>(), sample_stride(x, g), y.data<float>(), g.N, g.C, g.HW, saved,
                    chan(save_mean));
    } else {
      const PlaneLaunch l = plane_launch<VEC>(g);
      launch_kernel(bn_saved_plane_kernel<VEC, RELU>, l.blocks, l.threads, 0, cur_stream(), x.data<float>(),
                    sample_stride(x, g), y.data<float>(), l.planes, g.C, g.HW, saved, chan(save_mean));
    }
    CUDA_CHECK_LAUNCH();
  });
  return y;
}

ops::BatchNormGrads batch_norm_backward_train(const Tensor& dy_in, const Tensor& x_in, const Tensor& gamma,
                                              const Tensor& save_mean, const Tensor& save_invstd,
                                              const Tensor& relu_y, const Tensor& dx_into,
                                              const ops::BnReluFromX& relu_from_x) {
  const std::string op = "batch_norm_backward_train";
  require_float32_all(op, {{&dy_in, "grad_output"}, {&x_in, "input"}, {&gamma, "gamma"},
                           {&save_mean, "save_mean"}, {&save_invstd, "save_invstd"}, {&relu_y, "relu_y"},
                           {&dx_into, "dx_into"}, {&relu_from_x.beta, "beta"}});
  const bool spaced = !x_in.is_contiguous() && ops::sample_contiguous(x_in);  // read in place, natively
  // Adding into dx_into, and the mask from x, are native passes (cuDNN would write a packed dx to be
  // added afterwards, and has no mask).
  const bool add = dx_into.defined();
  const Impl which = x_in.numel() == 0 || spaced || add || relu_from_x.on ? Impl::Native : bn_impl();
  const bool relu = relu_y.defined() || relu_from_x.on;
  OpRange range(relu ? "batch_norm_relu_backward_train" : "batch_norm_backward_train", bn_impl_name(which));
  const Tensor x = spaced ? x_in : x_in.contiguous(), dy = dy_in.contiguous();
  ops::BatchNormGrads out = new_grads(x, !add);
  if (x.size(1) == 0) return out;
  if (which == Impl::Library) {
    // cuDNN's backward has no mask: the masked gradient is materialised first.
    const Tensor dz = relu ? relu_backward(dy, relu_y) : dy;
    cudnn_backward_train(op, dz, x, gamma, save_mean, save_invstd, out);
  } else {
    const Tensor mask = relu_y.defined() ? relu_y.contiguous() : Tensor();
    MaskSource from_x;
    if (relu_from_x.on) from_x = {true, chan(gamma), chan(relu_from_x.beta), chan(save_invstd)};
    native_backward(dy, x, gamma, save_mean, save_invstd, Tensor(), 0.0, true, mask, out, dx_into, from_x);
  }
  return out;
}

ops::BatchNormGrads batch_norm_backward_eval(const Tensor& dy_in, const Tensor& x_in, const Tensor& gamma,
                                             const Tensor& running_mean, const Tensor& running_var, double eps,
                                             const Tensor& relu_y) {
  const std::string op = "batch_norm_backward_eval";
  require_float32_all(op, {{&dy_in, "grad_output"}, {&x_in, "input"}, {&gamma, "gamma"},
                           {&running_mean, "running_mean"}, {&running_var, "running_var"}, {&relu_y, "relu_y"}});
  // cuDNN has no backward with frozen statistics: both implementations run the native kernels.
  const bool relu = relu_y.defined();
  OpRange range(relu ? "batch_norm_relu_backward_eval" : "batch_norm_backward_eval", "native");
  const Tensor x = ops::sample_contiguous(x_in) ? x_in : x_in.contiguous(), dy = dy_in.contiguous();
  const Tensor mask = relu ? relu_y.contiguous() : Tensor();
  ops::BatchNormGrads out = new_grads(x);
  if (x.size(1) == 0) return out;
  native_backward(dy, x, gamma, running_mean, Tensor(), running_var, eps, false, mask, out);
  return out;
}

}  // namespace ladnn::cuda
