// cuda/fused_conv.cuh — the small-batch inference convolution with BatchNorm(-ReLU) fused before and
// after it: y = post(conv(pre(x), w)), one launch (cuda/fused_conv.cu runs it; tensor/ops.h's
// conv2d_bn_eval states the op). With LADNN_TILE_EMULATION it compiles as plain C++ for
// tests/cuda_tile_emulation_test.cpp, like cuda/conv2d_gemm.cuh.
//
// Why a kernel of its own: at batch 1 a DenseNet layer is four small launches (norm1-ReLU over the
// channel prefix, the 1x1 conv, norm2-ReLU, the 3x3 conv), and a library convolution of a 7x7 map has
// 49 output pixels: its GEMM tiles give a handful of blocks, each walking K = C*R*S (up to 1,664) alone
// — the launch is latency, not arithmetic. Here the reduction is split across the warps of a block
// instead of across blocks, so one launch fills more of the GPU and needs no second pass to add split
// sums, and the eval BatchNorms ride along: the prologue normalises (and rectifies) each x value as it
// is loaded, the epilogue normalises the sum before it is stored. A dense layer becomes two launches.
//
// Mapping. Output element (k, m), m = n*P*Q + p*Q + q over the whole batch. A block covers 32 * PIX
// pixels (lane = pixel, and pixel + 32 when PIX = 2: adjacent lanes read adjacent x values) and KT
// output channels. Its WARPS warps split the input channels into WARPS contiguous chunks; every lane
// keeps KT * PIX sums over its warp's chunk (all taps), the weights being the same for the whole warp
// (one broadcast load each, used PIX times). The partial sums meet in shared memory and are added warp
// 0, 1, ... in that order (deterministic), then the epilogue. Which (KT, WARPS, PIX) is fastest depends
// on the shape and the card: plan_fused guesses, LADNN_FUSED_CONV=auto measures.
//
// Arithmetic, fixed so that the emulation and the GPU give the same bits: products accumulate with
// fmaf in the order c, r, s; the BatchNorm coefficients and normalisation are bn_eval_plane_kernel's
// (cuda/batchnorm.cu): scale = float(gamma / sqrt(double(var) + eps)), y = fma(x - mean, scale, beta),
// then max(y, 0) if rectified. Padding taps contribute nothing (they pad the *normalised* map with 0).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/bnpool_math.h"
#include "cuda/launch.h"

namespace ladnn::cuda {
namespace {

/// One fused convolution's sizes (every pixel/channel count fits in int: checked by the caller).
struct FusedConvGeom {
  int N, C, H, W;  // input
  int K, R, S;     // weight (K, C, R, S), contiguous
  int P, Q;        // output plane
  int sh, sw, ph, pw;
  int64_t x_img;  // elements between images of x (C*H*W, or more for a channel prefix)
  int64_t y_img;  // elements between images of y (K*P*Q, or more for a channel slice)
  // Pointwise with C % 4 == 0: each warp's channel chunk is a multiple of 4 wide (chunk4) and, when w is
  // also 16-byte aligned, its rows are read four channels at a time (vec4). The chunks — and so the
  // values — do not depend on the alignment; only the loads do.
  bool chunk4 = false;
  bool vec4 = false;
  // The tensor-core form only: w is the weight of the convolution this one is the backward data pass of,
  // (C, K, R, S), read transposed and rotated by 180 degrees: this conv's weight (k, c, r, s) is
  // w[c, k, R-1-r, S-1-s]. A stride-1 convolution's dx is then the convolution of dy with it, padded by
  // R-1-ph and S-1-pw (cuda/fused_conv.cu's backward data), with no transformed copy of w.
  bool w_flipped = false;
  LADNN_HD int M() const { return N * P * Q; }
  LADNN_HD bool pointwise() const { return R == 1 && S == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  /// The kernel's KSIZE for this window: 1 (pointwise), 3 (3x3) or 0 (any).
  LADNN_HD int ksize() const { return pointwise() ? 1 : R == 3 && S == 3 ? 3 : 0; }
};

/// An eval BatchNorm as the kernel reads it: contiguous (C) arrays; gamma/beta may be null (1 / 0).
/// The batch form (ops::BnEval::batch(), a folded training norm1): `invstd` set, `mean` the saved mean,
/// `var` unused — the coefficients of the training forward's kernels.
struct FusedBn {
  const float* gamma = nullptr;
  const float* beta = nullptr;
  const float* mean = nullptr;
  const float* var = nullptr;
  const float* invstd = nullptr;  // the batch form's save_invstd
  double eps = 0.0;
  bool on = false;    // false: no BatchNorm here
  bool relu = false;  // max(., 0) after it
};

/// Largest input channel count the kernel takes (its prologue's coefficients live in shared memory:
/// 3 x 2,048 floats). DenseNet-201's widest prefix is 1,888. Wider inputs run the unfused ops.
constexpr int kFusedMaxC = 2048;

/// Channel c's coefficients, as bn_eval_plane_kernel derives them; the batch form's as the training
/// forward's kernels do (cuda/batchnorm.cu channel_coefs: the saved mean, gamma * save_invstd in float).
__device__ __forceinline__ void fused_bn_coef(const FusedBn& bn, int c, float& mean, float& scale,
                                              float& shift) {
  if (bn.invstd) {
    mean = bn.mean[c];
    scale = math::bn_train_scale(bn.gamma ? bn.gamma[c] : 1.0f, bn.invstd[c]);
    shift = bn.beta ? bn.beta[c] : 0.0f;
    return;
  }
  const double invstd = 1.0 / ::sqrt(double(bn.var[c]) + bn.eps);
  const double g = bn.gamma ? double(bn.gamma[c]) : 1.0;
  mean = bn.mean[c];
  scale = static_cast<float>(g * invstd);
  shift = bn.beta ? bn.beta[c] : 0.0f;
}

/// The block's launch shape: KT output channels, WARPS warps and 32 * PIX output pixels per block (each
/// lane computes PIX pixels, 32 apart, reusing every weight it loads PIX times). PIX = 2 only with up
/// to 8 warps (the partial sums' shared memory).
struct FusedPlan {
  int kt = 8, warps = 8, pix = 1;
};

/// Enough blocks to cover the SMs with the fewest warps per block that do: small outputs (batch 1,
/// 7x7 maps) get 4 channels and 16 warps per block, so each warp walks 1/16 of the reduction; outputs
/// with blocks to spare (over 4 per SM) take two pixels per lane. A guess from sizes alone: Auto
/// (cuda/fused_conv.cu) times every plan instead.
inline FusedPlan plan_fused(int M, int K, int sms) {
  FusedPlan plan;
  const int64_t tiles = (int64_t(M) + 31) / 32;
  plan.kt = tiles * ((int64_t(K) + 7) / 8) >= sms ? 8 : 4;
  const int64_t blocks = tiles * ((int64_t(K) + plan.kt - 1) / plan.kt);
  plan.warps = blocks >= 2 * int64_t(sms) ? 4 : blocks >= sms / 2 ? 8 : 16;
  if (blocks >= 8 * int64_t(sms)) plan.pix = 2;
  return plan;
}

/// Value v of channel c through bn (its BatchNorm, then its ReLU; v itself when bn is off), the
/// coefficients staged in shared memory (s_mean[c], ...): the prologue for x, the epilogue for the sums.
__device__ __forceinline__ float fused_bn_apply(const FusedBn& bn, const float* s_mean, const float* s_scale,
                                                const float* s_shift, int c, float v) {
  if (!bn.on) return v;
  v = math::bn_normalize(v, s_mean[c], s_scale[c], s_shift[c]);
  return bn.relu ? math::bn_relu(v) : v;
}

/// The same with channel k's coefficients derived here (fused_bn_coef), for one value per channel.
__device__ __forceinline__ float fused_bn_apply(const FusedBn& bn, int k, float v) {
  if (!bn.on) return v;
  float mean, scale, shift;
  fused_bn_coef(bn, k, mean, scale, shift);
  return fused_bn_apply(bn, &mean, &scale, &shift, 0, v);
}

/// Where output element (k, m) lies in y: image m / PQ, channel k, plane offset m % PQ.
LADNN_HD int64_t fused_y_offset(const FusedConvGeom& g, int k, int m) {
  const int PQ = g.P * g.Q, n = m / PQ;
  return n * g.y_img + int64_t(k) * PQ + (m - n * PQ);
}

/// Calls f(std::integral_constant<int, KS>{}) with KS = g.ksize() (1 pointwise, 3 for 3x3, 0 any): the
/// window as a template argument, for the tensor-core kernels' dispatch tables.
template <class F>
void with_window(const FusedConvGeom& g, const F& f) {
  const int ks = g.ksize();
  if (ks == 1) return f(std::integral_constant<int, 1>{});
  if (ks == 3) return f(std::integral_constant<int, 3>{});
  return f(std::integral_constant<int, 0>{});
}

/// The fused convolution. Grid (ceil(M / (32 * PIX)), ceil(K / KT)), WARPS * 32 threads. KSIZE: 1 =
/// pointwise (1x1, stride 1, no padding: x's plane is read at the output's own pixel, no bounds to
/// test), 3 = a 3x3 window (any stride and padding; the nine taps unrolled), 0 = any R x S.
template <int KT, int WARPS, int KSIZE, int PIX>
__global__ void __launch_bounds__(WARPS * 32)
    fused_conv_kernel(FusedConvGeom g, const float* __restrict__ x, const float* __restrict__ w, FusedBn pre,
                      FusedBn post, float* __restrict__ y) {
  pdl_enter();
  constexpr int TILE = 32 * PIX;  // output pixels per block
  __shared__ float s_mean[kFusedMaxC], s_scale[kFusedMaxC], s_shift[kFusedMaxC];
  __shared__ float s_part[WARPS * KT * TILE];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int M = g.M(), PQ = g.P * g.Q, HW = g.H * g.W;
  const int R = KSIZE == 0 ? g.R : KSIZE, S = KSIZE == 0 ? g.S : KSIZE, RS = R * S;
  const int k0 = blockIdx.y * KT;

  if (pre.on)
    for (int c = tid; c < g.C; c += WARPS * 32) fused_bn_coef(pre, c, s_mean[c], s_scale[c], s_shift[c]);
  __syncthreads();

  // This lane's pixels: m_i = tile start + 32 i + lane. One past the output reads pixel M - 1 instead
  // (valid memory; its sums are never stored), so every lane runs the same loop.
  const float* img[PIX];  // x's image of pixel i
  int pq[PIX], ih0[PIX], iw0[PIX];
#pragma unroll
  for (int i = 0; i < PIX; ++i) {
    int m = blockIdx.x * TILE + i * 32 + lane;
    m = m < M ? m : M - 1;
    const int n = m / PQ;
    pq[i] = m - n * PQ;
    const int p = pq[i] / g.Q, q = pq[i] - p * g.Q;
    img[i] = x + n * g.x_img;
    ih0[i] = p * g.sh - g.ph;
    iw0[i] = q * g.sw - g.pw;
  }
  float acc[PIX][KT];
#pragma unroll
  for (int i = 0; i < PIX; ++i)
#pragma unroll
    for (int j = 0; j < KT; ++j) acc[i][j] = 0.0f;

  // Warp `warp` sums channels [c_begin, c_end): a multiple of 4 wide when the weights are read four
  // channels at a time.
  int chunk = (g.C + WARPS - 1) / WARPS;
  if (g.chunk4) chunk = (chunk + 3) & ~3;
  const int c_begin = warp * chunk, c_end = c_begin + chunk < g.C ? c_begin + chunk : g.C;
  // Weight (k0 + j, c, r, s); rows past K read row K - 1 (valid memory) and are never stored.
  const float* wk[KT];
#pragma unroll
  for (int j = 0; j < KT; ++j) wk[j] = w + int64_t(k0 + j < g.K ? k0 + j : g.K - 1) * g.C * RS;
  int c = c_begin;
  if (KSIZE == 1 && g.vec4) {  // (a plain if: the emulation's host compiler sees every branch anyway)
    // Four channels per step: one 16-byte load of each output channel's four weights (w rows are
    // 16-byte aligned: C % 4 == 0 and an aligned base, checked by the launcher). The sums still add
    // channel by channel in order: the values of the one-channel loop over the same chunk.
    for (; c + 4 <= c_end; c += 4) {
      float v[PIX][4];
#pragma unroll
      for (int i = 0; i < PIX; ++i)
#pragma unroll
        for (int u = 0; u < 4; ++u)
          v[i][u] = fused_bn_apply(pre, s_mean, s_scale, s_shift, c + u, img[i][int64_t(c + u) * HW + pq[i]]);
#pragma unroll
      for (int j = 0; j < KT; ++j) {
        float wv[4];
        math::load4(wk[j] + c, wv);
#pragma unroll
        for (int i = 0; i < PIX; ++i)
#pragma unroll
          for (int u = 0; u < 4; ++u) acc[i][j] = fmaf(wv[u], v[i][u], acc[i][j]);
      }
    }
  }
#pragma unroll 4
  for (; c < c_end; ++c) {
    if constexpr (KSIZE == 1) {
      float v[PIX];
#pragma unroll
      for (int i = 0; i < PIX; ++i)
        v[i] = fused_bn_apply(pre, s_mean, s_scale, s_shift, c, img[i][int64_t(c) * HW + pq[i]]);
#pragma unroll
      for (int j = 0; j < KT; ++j) {
        const float wv = wk[j][c];
#pragma unroll
        for (int i = 0; i < PIX; ++i) acc[i][j] = fmaf(wv, v[i], acc[i][j]);
      }
    } else {
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
          // Each pixel's tap, or nothing where it falls in the padding (0 after the prologue: the
          // padding pads the normalised map).
          float v[PIX];
          bool any = false;
#pragma unroll
          for (int i = 0; i < PIX; ++i) {
            const int ih = ih0[i] + r, iw = iw0[i] + s;
            const bool in = static_cast<unsigned>(ih) < static_cast<unsigned>(g.H) &&
                            static_cast<unsigned>(iw) < static_cast<unsigned>(g.W);
            v[i] =
                in ? fused_bn_apply(pre, s_mean, s_scale, s_shift, c, img[i][int64_t(c) * HW + ih * g.W + iw])
                   : 0.0f;
            any = any || in;
          }
          if (!any) continue;
          const int tap = (c * R + r) * S + s;
#pragma unroll
          for (int j = 0; j < KT; ++j) {
            const float wv = wk[j][tap];
#pragma unroll
            for (int i = 0; i < PIX; ++i) acc[i][j] = fmaf(wv, v[i], acc[i][j]);
          }
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < PIX; ++i)
#pragma unroll
    for (int j = 0; j < KT; ++j) s_part[(warp * KT + j) * TILE + i * 32 + lane] = acc[i][j];
  __syncthreads();

  for (int t = tid; t < KT * TILE; t += WARPS * 32) {
    const int j = t / TILE, l = t - j * TILE;
    const int mm = blockIdx.x * TILE + l, k = k0 + j;
    if (mm >= M || k >= g.K) continue;
    float sum = s_part[j * TILE + l];
    for (int wi = 1; wi < WARPS; ++wi) sum += s_part[(wi * KT + j) * TILE + l];
    y[fused_y_offset(g, k, mm)] = fused_bn_apply(post, k, sum);
  }
}

/// The plans Auto times: every instantiation of the kernel (the general window runs kGeneralPlan only).
constexpr FusedPlan kFusedPlans[] = {{4, 4, 1},  {4, 8, 1}, {4, 16, 1}, {8, 4, 1}, {8, 8, 1},
                                     {8, 16, 1}, {4, 4, 2}, {4, 8, 2},  {8, 4, 2}, {8, 8, 2}};
constexpr FusedPlan kGeneralPlan = {4, 8, 1};

/// Calls `run.template go<KT, WARPS, KSIZE, PIX>()` for `plan` and the window `ksize` — the one table of
/// instantiations, for the launcher (cuda/fused_conv.cu) and the emulator (the tests). A plan outside
/// kFusedPlans, and any plan for the general window, runs as kGeneralPlan.
template <class Run>
void dispatch_fused(const FusedPlan& plan, int ksize, const Run& run) {
  if (ksize == 0) return run.template go<kGeneralPlan.kt, kGeneralPlan.warps, 0, kGeneralPlan.pix>();
  auto window = [&](auto kt, auto warps, auto pix) {
    if (ksize == 1)
      return run.template go<decltype(kt)::value, decltype(warps)::value, 1, decltype(pix)::value>();
    return run.template go<decltype(kt)::value, decltype(warps)::value, 3, decltype(pix)::value>();
  };
  using I4 = std::integral_constant<int, 4>;
  using I8 = std::integral_constant<int, 8>;
  using I16 = std::integral_constant<int, 16>;
  using I1 = std::integral_constant<int, 1>;
  using I2 = std::integral_constant<int, 2>;
  if (plan.pix == 2) {
    if (plan.kt == 4 && plan.warps == 4) return window(I4{}, I4{}, I2{});
    if (plan.kt == 4 && plan.warps == 8) return window(I4{}, I8{}, I2{});
    if (plan.kt == 8 && plan.warps == 4) return window(I8{}, I4{}, I2{});
    if (plan.kt == 8 && plan.warps == 8) return window(I8{}, I8{}, I2{});
  } else if (plan.pix == 1) {
    if (plan.kt == 4 && plan.warps == 4) return window(I4{}, I4{}, I1{});
    if (plan.kt == 4 && plan.warps == 8) return window(I4{}, I8{}, I1{});
    if (plan.kt == 4 && plan.warps == 16) return window(I4{}, I16{}, I1{});
    if (plan.kt == 8 && plan.warps == 4) return window(I8{}, I4{}, I1{});
    if (plan.kt == 8 && plan.warps == 8) return window(I8{}, I8{}, I1{});
    if (plan.kt == 8 && plan.warps == 16) return window(I8{}, I16{}, I1{});
  }
  return window(I4{}, I8{}, I1{});
}

/// One call's arguments as the kernels take them: what a dispatch callback (launcher or emulator) holds.
struct FusedArgs {
  const FusedConvGeom& g;
  const float* x;
  const float* w;
  const FusedBn& pre;
  const FusedBn& post;
  float* y;
  // The tensor-core form's split of the reduction (cuda/fused_conv_tc.cuh): 0 = none; else each split
  // walks this many chunks, its partial sums added (and post applied) by a second kernel.
  int chunks_per_split = 0;
};

/// How many splits runs of chunks_per_split reduction chunks make of `chunks` (one when 0: not split).
inline int split_count(int chunks, int chunks_per_split) {
  return chunks_per_split > 0 ? (chunks + chunks_per_split - 1) / chunks_per_split : 1;
}

/// How to split `chunks` reduction steps of `tiles` output tiles over blocks: at least enough splits for
/// `waves` blocks per SM (one split when the tiles alone fill the GPU), as far as splits of `min_chunks`
/// steps allow, the steps then spread evenly. Returns the number of splits (none empty) and sets
/// chunks_per_split (every split's length but the last's, which may be shorter).
inline int split_chunks(int64_t tiles, int64_t chunks, int sms, int waves, int min_chunks,
                        int& chunks_per_split) {
  int64_t splits = (int64_t(sms) * waves + tiles - 1) / tiles;
  const int64_t most = chunks / min_chunks > 1 ? chunks / min_chunks : 1;
  if (splits > most) splits = most;
  if (splits < 1) splits = 1;
  int64_t cps = chunks / splits;  // rounded down: ceil(chunks / cps) >= splits
  if (cps < 1) cps = 1;
  const int64_t n = (chunks + cps - 1) / cps;
  const int64_t even = (chunks + n - 1) / n;  // n splits evened out (the last no longer a stub)
  if (n == 1 || even >= min_chunks) cps = even;
  chunks_per_split = static_cast<int>(cps);
  return static_cast<int>((chunks + cps - 1) / cps);
}

/// The grid of `plan` over g's output: (pixel tiles, channel groups).
struct FusedGrid {
  unsigned x, y;
};
inline FusedGrid fused_grid(const FusedConvGeom& g, const FusedPlan& plan) {
  const int tile = 32 * plan.pix;
  return {static_cast<unsigned>((int64_t(g.M()) + tile - 1) / tile),
          static_cast<unsigned>((g.K + plan.kt - 1) / plan.kt)};
}

}  // namespace
}  // namespace ladnn::cuda
