// cuda/conv_wgrad_pw.cuh — the weight gradient of a pointwise (1x1, stride 1, unpadded) convolution as a
// TF32 GEMM on mma.sync with a cp.async pipeline: DenseNet's bottleneck 1x1s and transitions.
//
// Why: by Auto's timings of run 9, a batch-64 training step spends 3.3 ms in the 1x1s' weight gradients,
// 2.4 of them at 14x14 and 7x7 (66 layers), where cuDNN (or our wmma form, cuda/conv_wgrad_tc.cuh, as fast)
// runs a 128 x 1,000 x 3,136 product at 7x7 in about 0.035 ms: some 23 TFLOP/s. The wmma form stages each
// value through registers, 4 bytes at a time, 32 pixels per barrier pair. Here both operands are copied
// 16 bytes at a time straight into shared memory, three stages in flight, one barrier a stage, and each
// warp computes a 64 x 32 tile with mma.sync (16 per k-step of 8 pixels, from 24 shared loads).
//
// The GEMM: dW[k, c] = sum over the batch's pixels m = (n, p) of dy[n, k, p] * x[n, c, p]. Both operands
// hold the pixels of an image contiguous, so a stage is 32 consecutive pixels m0 .. m0 + 31 of the
// flattened batch: for each of the block's 128 rows of dy and 64 of x, 32 values, VEC at a time (VEC
// consecutive pixels lie in one image when HW % VEC == 0: 16-byte copies at 56x56, 28x28 and 14x14, 4-byte
// ones at 7x7). Pixels past the batch, rows past K or C: zeros (cp.async with src-size 0).
//
// Mapping. Block (c block, k block, split): 128 of dy's channels x 64 of x's. Warp w: rows 64 (w / 2) ..,
// columns 32 (w % 2) ..: 4 x 4 tiles of mma.m16n8k8. Shared memory of a stage: As[128][36] (dy: row k,
// pixel j), Bs[64][36] (x: row c, pixel j); 36 = 4 mod 32, so lane (g, t)'s reads (row g, pixel t) hit 32
// banks. A(g, t) = As[k][j0 + t], B(t, g) = Bs[c][j0 + t].
// Split: blockIdx.z takes a run of chunks_per_split stages; each split writes its (K, C) slab of a
// workspace and wgrad_reduce_kernel (cuda/conv_wgrad_tc.cuh) adds them in split order. No atomics.
// Arithmetic: TF32 operands (cvt.rna), float32 accumulation in the tensor cores' order.
// PRE: x goes through a BatchNorm(-ReLU) as the B fragments are read from shared memory — a folded dense
// layer's norm1 (ops::conv2d_backward_weight with a pre BnEval), so the normalised prefix is never
// written. Lane (g, t) reads the same 4 channels of x all along (8 ni + g of its warp's 32), so their
// coefficients are loaded once, into 12 registers. The map is math::bn_normalize and bn_relu, the
// arithmetic of the map's own kernel: the same operands, the same bits as the kernel without PRE run on
// that kernel's output. Pixels past the batch (x zero-filled) map to finite values that meet dy's zeros.
// With LADNN_TILE_EMULATION it compiles as plain C++ for tests/cuda_tile_emulation_test.cpp.
#pragma once

#include <cstdint>

#include "cuda/conv_wgrad_tc.cuh"  // WgradGrid, wgrad_reduce_kernel
#include "cuda/fused_conv.cuh"     // FusedConvGeom, split_chunks, split_count
#include "cuda/launch.h"
#include "cuda/mma_tf32.cuh"

namespace ladnn::cuda {
namespace {

constexpr int kPwBK = 128;       // dy channels per block
constexpr int kPwBC = 64;        // x channels per block
constexpr int kPwThreads = 128;  // 4 warps of 64 x 32
constexpr int kPwSlots = 32;     // pixels a stage: 4 k-steps
constexpr int kPwStages = 3;
constexpr int kPwLD = kPwSlots + 4;

/// The widest copy the plane allows: VEC consecutive pixels of the flattened batch stay in one image.
LADNN_HD int pw_copy_width(int64_t HW) {
  return HW % 4 == 0 ? 4 : HW % 2 == 0 ? 2 : 1;
}

/// The kernel takes the call: a pointwise convolution (P = H, Q = W), the weight read plainly, images of
/// x and dy a multiple of the copy width apart (the launcher checks the pointers).
inline bool wgrad_pw_takes(const FusedConvGeom& g) {
  const int64_t HW = int64_t(g.H) * g.W;
  const int vec = pw_copy_width(HW);
  return g.pointwise() && g.P == g.H && g.Q == g.W && !g.w_flipped && g.N > 0 && g.C > 0 && g.K > 0 &&
         HW > 0 && g.x_img % vec == 0 && g.y_img % vec == 0;
}

/// The reduction's chunks: stages of kPwSlots pixels over the batch.
LADNN_HD int wgrad_pw_chunks(const FusedConvGeom& g) {
  return static_cast<int>((int64_t(g.N) * g.H * g.W + kPwSlots - 1) / kPwSlots);
}
inline WgradGrid wgrad_pw_grid(const FusedConvGeom& g, int splits) {
  return {static_cast<unsigned>((g.C + kPwBC - 1) / kPwBC), static_cast<unsigned>((g.K + kPwBK - 1) / kPwBK),
          static_cast<unsigned>(splits)};
}
/// Splits for `waves` blocks per SM, four stages or more a split (split_chunks). Returns the splits and
/// sets chunks_per_split.
inline int wgrad_pw_splits(const FusedConvGeom& g, int sms, int waves, int& chunks_per_split) {
  const WgradGrid gr = wgrad_pw_grid(g, 1);
  return split_chunks(int64_t(gr.x) * gr.y, wgrad_pw_chunks(g), sms, waves, 4, chunks_per_split);
}
inline int wgrad_pw_split_count(const FusedConvGeom& g, int chunks_per_split) {
  return split_count(wgrad_pw_chunks(g), chunks_per_split);
}
/// Dynamic shared memory of a launch (floats): 3 x 192 rows of 36 (81 KB).
constexpr int kPwSmemFloats = kPwStages * (kPwBK + kPwBC) * kPwLD;

/// Grid wgrad_pw_grid(g, splits), kPwThreads threads, kPwSmemFloats * 4 bytes of dynamic shared memory;
/// wgrad_pw_takes(g), VEC = pw_copy_width(H W), dy and x 4 * VEC-byte aligned. dy: (N, K, H, W), images
/// g.y_img apart; x: (N, C, H, W), images g.x_img apart; pre: x's BatchNorm (read only when PRE, which
/// needs pre.on); out: dW (K, C) with one split, else the workspace's (splits, K, C) slabs.
template <int VEC, bool PRE>
__global__ void __launch_bounds__(kPwThreads)
    conv_wgrad_pw_kernel(FusedConvGeom g, const float* __restrict__ dy, const float* __restrict__ x,
                         FusedBn pre, int chunks_per_split, float* __restrict__ out) {
  pdl_enter();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync on TF32 and cp.async need sm_80; the launcher never launches this there
#else
  constexpr int BK = kPwBK, BC = kPwBC, S = kPwSlots, LD = kPwLD, kStages = kPwStages;
  constexpr int kStage = (BK + BC) * LD;
  LADNN_DYNAMIC_SMEM(smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int wk = warp >> 1, wc = warp & 1;
  const int c0 = blockIdx.x * BC, k0 = blockIdx.y * BK;
  const int HW = g.H * g.W;
  const int64_t M = int64_t(g.N) * HW;
  const int chunks = wgrad_pw_chunks(g), chunk0 = int(blockIdx.z) * chunks_per_split;
  int chunk_end = chunk0 + chunks_per_split;
  if (chunk_end > chunks) chunk_end = chunks;
  const int n_chunks = chunk_end - chunk0;

  // The copies of a stage: rows r = 0 .. BK - 1 are dy's channels k0 + r, rows BK .. BK + BC - 1 x's
  // channels c0 + r - BK; a row's S pixels in kCols copies of VEC. Thread tid always takes column group
  // tid % kCols (so its pixels' image and offset are found once a stage) of rows tid / kCols, + kRows, ...
  constexpr int kCols = S / VEC, kRows = kPwThreads / kCols;
  const int col = tid % kCols, row0 = tid / kCols;
  auto copy = [](float* s, const float* p, bool in) { cp_async_vec<VEC>(s, p, in); };
  auto issue = [&](int j) {  // chunk chunk0 + j's copies into stage j % kStages
    float* st = smem + (j % kStages) * kStage + col * VEC;
    const int64_t m = int64_t(chunk0 + j) * S + col * VEC;  // VEC pixels m .. m + VEC - 1, one image
    const bool m_in = m < M;
    const int64_t n = m_in ? m / HW : 0, p = m_in ? m - n * HW : 0;
    const float* dyp = dy + n * g.y_img + p;
    const float* xp = x + n * g.x_img + p;
#pragma unroll 4
    for (int r = row0; r < BK + BC; r += kRows) {
      if (r < BK) {
        const bool in = m_in && k0 + r < g.K;
        copy(st + r * LD, in ? dyp + int64_t(k0 + r) * HW : dy, in);
      } else {
        const bool in = m_in && c0 + r - BK < g.C;
        copy(st + r * LD, in ? xp + int64_t(c0 + r - BK) * HW : x, in);
      }
    }
  };

#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < n_chunks) issue(j);
    cp_async_commit();
  }
  float acc[4][4][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;
  // PRE: the coefficients of this lane's 4 channels of x (zeros past C: those rows are never stored).
  float pre_mean[4] = {}, pre_scale[4] = {}, pre_shift[4] = {};
  if constexpr (PRE) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int c = c0 + wc * 32 + ni * 8 + gq;
      if (c < g.C) fused_bn_coef(pre, c, pre_mean[ni], pre_scale[ni], pre_shift[ni]);
    }
  }

  for (int j = 0; j < n_chunks; ++j) {
    cp_async_wait<kStages - 2>();  // this thread's copies of stage j have landed
    __syncthreads();               // everyone's have; everyone is done with stage j - 1
    if (j + kStages - 1 < n_chunks) issue(j + kStages - 1);
    cp_async_commit();
    const float* As = smem + (j % kStages) * kStage + (wk * 64 + gq) * LD + tq;
    const float* Bs = smem + (j % kStages) * kStage + (BK + wc * 32 + gq) * LD + tq;
#pragma unroll
    for (int j0 = 0; j0 < S; j0 += 8) {
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const float* r = As + mi * 16 * LD + j0;  // A(16 mi + g, t) = dy[k, pixel j0 + t]
        a[mi][0] = tf32_bits(r[0]);
        a[mi][1] = tf32_bits(r[8 * LD]);
        a[mi][2] = tf32_bits(r[4]);
        a[mi][3] = tf32_bits(r[8 * LD + 4]);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const float* r = Bs + ni * 8 * LD + j0;  // B(t, 8 ni + g) = x[c, pixel j0 + t]
        float v0 = r[0], v1 = r[4];
        if constexpr (PRE) {
          v0 = math::bn_normalize(v0, pre_mean[ni], pre_scale[ni], pre_shift[ni]);
          v1 = math::bn_normalize(v1, pre_mean[ni], pre_scale[ni], pre_shift[ni]);
          if (pre.relu) v0 = math::bn_relu(v0), v1 = math::bn_relu(v1);
        }
        b[ni][0] = tf32_bits(v0);
        b[ni][1] = tf32_bits(v1);
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_tf32_16x8x8(acc[mi][ni], a[mi], b[ni]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: lane (g, t) holds rows g and g + 8 of each 16-row tile, columns 2t and 2t + 1 of each 8:
  // adjacent in dW, stored as a pair where both are in and the pair is 8-byte aligned.
  float* slab = out + int64_t(blockIdx.z) * g.K * g.C;
  const bool pair_ok = reinterpret_cast<uintptr_t>(out) % 8 == 0 && g.C % 2 == 0;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int k = k0 + wk * 64 + mi * 16 + gq + 8 * h;
      if (k >= g.K) continue;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int c = c0 + wc * 32 + ni * 8 + 2 * tq;
        float* dst = slab + int64_t(k) * g.C + c;
        const float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
        if (pair_ok && c + 1 < g.C) {
          *reinterpret_cast<float2*>(dst) = float2{v0, v1};
        } else {
          if (c < g.C) dst[0] = v0;
          if (c + 1 < g.C) dst[1] = v1;
        }
      }
    }
#endif
}

/// Calls `run.template go_wgrad_pw<VEC, PRE>()` with VEC = pw_copy_width(H W), PRE = pre_on.
template <class Run>
void dispatch_wgrad_pw(const FusedConvGeom& g, bool pre_on, const Run& run) {
  const int vec = pw_copy_width(int64_t(g.H) * g.W);
  if (pre_on) {
    if (vec == 1) return run.template go_wgrad_pw<1, true>();
    if (vec == 2) return run.template go_wgrad_pw<2, true>();
    return run.template go_wgrad_pw<4, true>();
  }
  if (vec == 1) return run.template go_wgrad_pw<1, false>();
  if (vec == 2) return run.template go_wgrad_pw<2, false>();
  run.template go_wgrad_pw<4, false>();
}

}  // namespace
}  // namespace ladnn::cuda
