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
// Mapping. Output element (k, m), m = n*P*Q + p*Q + q over the whole batch. A block covers 32 pixels
// (lane = pixel: adjacent lanes read adjacent x values) and KT output channels. Its WARPS warps split
// the input channels into WARPS contiguous chunks; every lane keeps KT sums over its warp's chunk (all
// taps), the weights being the same for the whole warp (one broadcast load each). The partial sums meet
// in shared memory and are added warp 0, 1, ... in that order (deterministic), then the epilogue.
//
// Arithmetic, fixed so that the emulation and the GPU give the same bits: products accumulate with
// fmaf in the order c, r, s; the BatchNorm coefficients and normalisation are bn_eval_plane_kernel's
// (cuda/batchnorm.cu): scale = float(gamma / sqrt(double(var) + eps)), y = fma(x - mean, scale, beta),
// then max(y, 0) if rectified. Padding taps contribute nothing (they pad the *normalised* map with 0).
#pragma once

#include <cstdint>

#include "cuda/bnpool_math.h"

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
  bool vec4 = false;  // pointwise only: w's rows read four channels at a time (C % 4 == 0, w 16-byte aligned)
  LADNN_HD int M() const { return N * P * Q; }
  LADNN_HD bool pointwise() const { return R == 1 && S == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  /// The kernel's KSIZE for this window: 1 (pointwise), 3 (3x3) or 0 (any).
  LADNN_HD int ksize() const { return pointwise() ? 1 : R == 3 && S == 3 ? 3 : 0; }
};

/// An eval BatchNorm as the kernel reads it: contiguous (C) arrays; gamma/beta may be null (1 / 0).
struct FusedBn {
  const float* gamma = nullptr;
  const float* beta = nullptr;
  const float* mean = nullptr;
  const float* var = nullptr;
  double eps = 0.0;
  bool on = false;    // false: no BatchNorm here
  bool relu = false;  // max(., 0) after it
};

/// Largest input channel count the kernel takes (its prologue's coefficients live in shared memory:
/// 3 x 2,048 floats). DenseNet-201's widest prefix is 1,888. Wider inputs run the unfused ops.
constexpr int kFusedMaxC = 2048;

/// Channel c's coefficients, as bn_eval_plane_kernel derives them.
__device__ __forceinline__ void fused_bn_coef(const FusedBn& bn, int c, float& mean, float& scale, float& shift) {
  const double invstd = 1.0 / ::sqrt(double(bn.var[c]) + bn.eps);
  const double g = bn.gamma ? double(bn.gamma[c]) : 1.0;
  mean = bn.mean[c];
  scale = static_cast<float>(g * invstd);
  shift = bn.beta ? bn.beta[c] : 0.0f;
}

/// The block's launch shape: KT output channels and WARPS warps per block.
struct FusedPlan {
  int kt = 8, warps = 8;
};

/// Enough blocks to cover the SMs with the fewest warps per block that do: small outputs (batch 1,
/// 7x7 maps) get 4 channels and 16 warps per block, so each warp walks 1/16 of the reduction.
inline FusedPlan plan_fused(int M, int K, int sms) {
  FusedPlan plan;
  const int64_t tiles = (int64_t(M) + 31) / 32;
  plan.kt = tiles * ((int64_t(K) + 7) / 8) >= sms ? 8 : 4;
  const int64_t blocks = tiles * ((int64_t(K) + plan.kt - 1) / plan.kt);
  plan.warps = blocks >= 2 * int64_t(sms) ? 4 : blocks >= sms / 2 ? 8 : 16;
  return plan;
}

/// x value v of input channel c through the prologue (pre's BatchNorm and ReLU, when on).
__device__ __forceinline__ float fused_prologue(const FusedBn& pre, const float* s_mean, const float* s_scale,
                                                const float* s_shift, int c, float v) {
  if (!pre.on) return v;
  v = math::bn_normalize(v, s_mean[c], s_scale[c], s_shift[c]);
  return pre.relu ? math::bn_relu(v) : v;
}

/// The fused convolution. Grid (ceil(M / 32), ceil(K / KT)), WARPS * 32 threads. KSIZE: 1 = pointwise
/// (1x1, stride 1, no padding: x's plane is read at the output's own pixel, no bounds to test), 3 = a
/// 3x3 window (any stride and padding; the nine taps unrolled), 0 = any R x S.
template <int KT, int WARPS, int KSIZE>
__global__ void __launch_bounds__(WARPS * 32)
    fused_conv_kernel(FusedConvGeom g, const float* __restrict__ x, const float* __restrict__ w, FusedBn pre,
                      FusedBn post, float* __restrict__ y) {
  __shared__ float s_mean[kFusedMaxC], s_scale[kFusedMaxC], s_shift[kFusedMaxC];
  __shared__ float s_part[WARPS * KT * 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int M = g.M(), PQ = g.P * g.Q, HW = g.H * g.W;
  const int R = KSIZE == 0 ? g.R : KSIZE, S = KSIZE == 0 ? g.S : KSIZE, RS = R * S;
  const int k0 = blockIdx.y * KT;

  if (pre.on)
    for (int c = tid; c < g.C; c += WARPS * 32) fused_bn_coef(pre, c, s_mean[c], s_scale[c], s_shift[c]);
  __syncthreads();

  float acc[KT];
#pragma unroll
  for (int j = 0; j < KT; ++j) acc[j] = 0.0f;
  const int m = blockIdx.x * 32 + lane;
  if (m < M) {
    const int n = m / PQ, pq = m - n * PQ;
    const int p = pq / g.Q, q = pq - p * g.Q;
    const float* img = x + n * g.x_img;
    // Warp `warp` sums channels [c_begin, c_end): a multiple of 4 wide when the weights are read four
    // channels at a time.
    int chunk = (g.C + WARPS - 1) / WARPS;
    if (g.vec4) chunk = (chunk + 3) & ~3;
    const int c_begin = warp * chunk, c_end = c_begin + chunk < g.C ? c_begin + chunk : g.C;
    // Weight (k0 + j, c, r, s); rows past K read row K - 1 (valid memory) and are never stored.
    const float* wk[KT];
#pragma unroll
    for (int j = 0; j < KT; ++j) wk[j] = w + int64_t(k0 + j < g.K ? k0 + j : g.K - 1) * g.C * RS;
    int c = c_begin;
    if (KSIZE == 1 && g.vec4) {  // (a plain if: the emulation's host compiler sees every branch anyway)
      // Four channels per step: one 16-byte load of each output channel's four weights (w rows are
      // 16-byte aligned: C % 4 == 0 and an aligned base, checked by the launcher). The sums still add
      // channel by channel in order, so the values are those of the one-channel loop.
      for (; c + 4 <= c_end; c += 4) {
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
          v[i] = fused_prologue(pre, s_mean, s_scale, s_shift, c + i, img[int64_t(c + i) * HW + pq]);
#pragma unroll
        for (int j = 0; j < KT; ++j) {
          float wv[4];
          math::load4(wk[j] + c, wv);
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[j] = fmaf(wv[i], v[i], acc[j]);
        }
      }
    }
#pragma unroll 4
    for (; c < c_end; ++c) {
      const float* plane = img + int64_t(c) * HW;
      if (KSIZE == 1) {
        const float v = fused_prologue(pre, s_mean, s_scale, s_shift, c, plane[pq]);
#pragma unroll
        for (int j = 0; j < KT; ++j) acc[j] = fmaf(wk[j][c], v, acc[j]);
        continue;
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int ih = p * g.sh - g.ph + r;
        if (static_cast<unsigned>(ih) >= static_cast<unsigned>(g.H)) continue;
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const int iw = q * g.sw - g.pw + s;
          if (static_cast<unsigned>(iw) >= static_cast<unsigned>(g.W)) continue;
          const float v = fused_prologue(pre, s_mean, s_scale, s_shift, c, plane[ih * g.W + iw]);
          const int tap = (c * R + r) * S + s;
#pragma unroll
          for (int j = 0; j < KT; ++j) acc[j] = fmaf(wk[j][tap], v, acc[j]);
        }
      }
    }
  }
  for (int j = 0; j < KT; ++j) s_part[(warp * KT + j) * 32 + lane] = acc[j];
  __syncthreads();

  for (int t = tid; t < KT * 32; t += WARPS * 32) {
    const int j = t >> 5, l = t & 31;
    const int mm = blockIdx.x * 32 + l, k = k0 + j;
    if (mm >= M || k >= g.K) continue;
    float sum = s_part[j * 32 + l];
    for (int wi = 1; wi < WARPS; ++wi) sum += s_part[(wi * KT + j) * 32 + l];
    if (post.on) {
      float mean, scale, shift;
      fused_bn_coef(post, k, mean, scale, shift);
      sum = math::bn_normalize(sum, mean, scale, shift);
      if (post.relu) sum = math::bn_relu(sum);
    }
    const int n = mm / PQ, pq = mm - n * PQ;
    y[n * g.y_img + int64_t(k) * PQ + pq] = sum;
  }
}

}  // namespace
}  // namespace ladnn::cuda
