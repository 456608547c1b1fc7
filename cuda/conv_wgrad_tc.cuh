// cuda/conv_wgrad_tc.cuh — a convolution's weight gradient on the tensor cores (TF32), for the training
// shapes where cuDNN's backward-filter kernels leave most of the GPU idle: DenseNet's dense layers at 7x7
// and 14x14, whose GEMM has a small output (dW is 128 x 1,280 or 32 x 1,152) and a long reduction over
// every pixel of the batch. cuda/fused_conv.cu runs it for conv2d_backward_weight when
// LADNN_FUSED_CONV=auto times it faster than cuDNN (or always, with on). With LADNN_TILE_EMULATION it
// compiles as plain C++ for tests/cuda_tile_emulation_test.cpp, like cuda/fused_conv_tc.cuh.
//
// The GEMM: dW[k, kk] = sum over m of dy[k, m] * B[kk, m], where k is an output channel, kk = (c, r, s)
// one of the weight row's C*R*S entries, m = n*P*Q + p*Q + q an output pixel of the batch, and B[kk, m]
// the input tap (c, p*sh - ph + r, q*sw - pw + s) of image n (0 in the padding): im2col, never stored.
//
// Tile: BK output channels x BN weight entries per block, (BK / 32) x (BN / 32) warps, each a 32 x 32
// sub-tile (2 x 2 accumulator fragments of 16 x 16). The reduction walks the pixels in chunks of 32 (four
// k-steps of 8): the block stages dy[k0 : k0 + BK, chunk] and the chunk's taps for kk0 : kk0 + BN in
// shared memory, rounded to TF32 (cvt.rna), zeros past K, C*R*S and M. Every thread stages the same
// pixel (its lane) in every chunk, so a pixel's image and window origin are computed once per chunk and
// adjacent lanes read adjacent pixels (coalesced). The taps are stored column-major (pixel fastest), the
// layout the B fragments load as wmma::col_major, which keeps the staging stores free of bank conflicts.
// As in cuda/fused_conv_tc.cuh, chunk i + 1 is loaded into registers while chunk i is multiplied.
// KS = 1 instantiates the pointwise case (1x1, stride 1, no padding), where the tap of entry kk is the
// pixel's own value of channel kk: no window arithmetic per staged value; KS = 3 a 3x3 window, whose
// divisions by 9 and 3 compile to multiplications; KS = 0 any window.
//
// Split-K: the pixels are long (DenseNet-169 at batch 64: 3,136 at 7x7 to 200,704 at 56x56) and the
// tiles few (a 32 x 1,152 gradient is 18 tiles of 32 x 64), so blockIdx.z takes a contiguous run of
// `chunks_per_split` chunks, and each split writes its partial sums to its own (K, C*R*S) slab of a
// workspace; wgrad_reduce_kernel adds the slabs in split order. No atomics: the result is the same bits
// on every run (deterministic whatever LADNN_DETERMINISTIC says). With one split the block writes dW.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/fused_conv.cuh"
#include "cuda/launch.h"

#ifndef LADNN_TILE_EMULATION
#include <mma.h>
#endif

namespace ladnn::cuda {
namespace {

/// A weight-gradient launch shape: BK output channels x BN weight entries per block.
struct WgradPlan {
  int bk = 64, bn = 64;
};
// BK 128 and 64 for the bottlenecks' K = 128, 32 for the growth convolutions' K = 32.
constexpr WgradPlan kWgradPlans[] = {{128, 64}, {64, 64}, {64, 128}, {32, 64}, {32, 128}};
constexpr int kWgradChunk = 32;  // pixels staged per step

template <int BK, int BN>
struct WgradTile {
  static constexpr int kWarps = (BK / 32) * (BN / 32);
  static constexpr int kThreads = kWarps * 32;
  // Padded row strides, multiples of 4 floats (wmma's ldm): every fragment pointer is 32-byte aligned.
  static constexpr int LDA = kWgradChunk + 4;  // As[BK][LDA]: dy rows, pixels along the row
  static constexpr int LDB = kWgradChunk + 4;  // Bs[BN][LDB]: taps, column kk holds the chunk's pixels
  static constexpr int LDC = BN + 4;           // Cs[BK][LDC]: the sums
  static constexpr int kStage = BK * LDA + BN * LDB, kOut = BK * LDC;
  static constexpr int kFloats = kStage > kOut ? kStage : kOut;
};

/// The grid of a weight-gradient launch: (weight-entry tiles, output-channel tiles, splits).
struct WgradGrid {
  unsigned x, y, z;
};
inline WgradGrid wgrad_grid(const FusedConvGeom& g, const WgradPlan& plan, int splits) {
  const int64_t crs = int64_t(g.C) * g.R * g.S;
  return {static_cast<unsigned>((crs + plan.bn - 1) / plan.bn),
          static_cast<unsigned>((g.K + plan.bk - 1) / plan.bk), static_cast<unsigned>(splits)};
}

/// Pixel chunks of the reduction.
inline int wgrad_chunks(const FusedConvGeom& g) {
  return static_cast<int>((int64_t(g.M()) + kWgradChunk - 1) / kWgradChunk);
}

/// How many splits runs of chunks_per_split pixel chunks make.
inline int wgrad_split_count(const FusedConvGeom& g, int chunks_per_split) {
  return (wgrad_chunks(g) + chunks_per_split - 1) / chunks_per_split;
}

/// How many splits of the pixel chunks (split_chunks): enough blocks for `waves` blocks per SM, each
/// split reducing over 64 pixels or more. Returns the splits and sets chunks_per_split.
inline int wgrad_splits(const FusedConvGeom& g, const WgradPlan& plan, int sms, int waves,
                        int& chunks_per_split) {
  const WgradGrid grid = wgrad_grid(g, plan, 1);
  return split_chunks(int64_t(grid.x) * grid.y, wgrad_chunks(g), sms, waves, 2, chunks_per_split);
}

/// Grid wgrad_grid(g, {BK, BN}, splits), WgradTile<BK, BN>::kThreads threads. dy: (N, K, P, Q), images
/// g.y_img apart; x: (N, C, H, W), images g.x_img apart; out: dW (K, C, R, S) when there is one split,
/// else the workspace's (splits, K, C*R*S) slabs. Any window, stride and padding.
template <int BK, int BN, int KS>
__global__ void __launch_bounds__(WgradTile<BK, BN>::kThreads)
    conv_wgrad_tc_kernel(FusedConvGeom g, const float* __restrict__ dy, const float* __restrict__ x,
                         int chunks_per_split, float* __restrict__ out) {
  pdl_enter();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // TF32 tensor cores need sm_80; the launcher never launches this there
#else
  using namespace nvcuda;
  using T = WgradTile<BK, BN>;
  __shared__ __align__(128) float smem[T::kFloats];
  float* As = smem;                // [BK][LDA]: dy[k0 + r, chunk pixel j]
  float* Bs = smem + BK * T::LDA;  // [BN][LDB]: B[kk0 + col, chunk pixel j]
  float* Cs = smem;                // [BK][LDC]: the sums, after the last chunk
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wk = warp / (BN / 32), wn = warp % (BN / 32);
  const int kk0 = blockIdx.x * BN, k0 = blockIdx.y * BK;
  const int M = g.M(), PQ = g.P * g.Q, HW = g.H * g.W;
  // KS = 1 (pointwise) or 3 (3x3): a compile-time window (constant divisors); 0: any.
  constexpr bool PW = KS == 1;
  const int S = KS > 0 ? KS : g.S, RS = KS > 0 ? KS * KS : g.R * g.S, CRS = g.C * RS;
  const int chunk_begin = blockIdx.z * chunks_per_split;
  int chunk_end = chunk_begin + chunks_per_split;
  const int chunks = (M + kWgradChunk - 1) / kWgradChunk;
  if (chunk_end > chunks) chunk_end = chunks;

  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  // Staging, value by value. Every thread stages its lane's pixel of the chunk: dy rows r = warp + j *
  // kWarps (NA of them), tap columns col = warp + j * kWarps (NB).
  constexpr int NA = BK / T::kWarps, NB = BN / T::kWarps;
  static_assert(NA * T::kWarps == BK && NB * T::kWarps == BN, "whole rows and columns per warp");
  struct Pixel {
    bool in = false;
    int pq = 0, ih0 = 0, iw0 = 0;
    const float* dyimg;
    const float* ximg;
  };
  auto pixel = [&](int chunk) {  // this thread's pixel: its image, plane offset and window
    Pixel px;
    const int m = chunk * kWgradChunk + lane;
    px.in = m < M;
    int n = 0;
    if (px.in) {
      n = m / PQ;
      px.pq = m - n * PQ;
      const int p = px.pq / g.Q, q = px.pq - p * g.Q;
      px.ih0 = p * g.sh - g.ph;
      px.iw0 = q * g.sw - g.pw;
    }
    px.dyimg = dy + n * g.y_img;
    px.ximg = x + n * g.x_img;
    return px;
  };
  auto load_dy = [&](const Pixel& px, int r) -> float {
    const int k = k0 + r;
    return px.in && k < g.K ? px.dyimg[int64_t(k) * PQ + px.pq] : 0.0f;
  };
  auto load_tap = [&](const Pixel& px, int col) -> float {  // B[kk0 + col, pixel]: 0 in the padding
    const int kk = kk0 + col;
    if (!px.in || kk >= CRS) return 0.0f;
    if constexpr (PW) {  // the pixel's own value of channel kk: no window arithmetic
      return px.ximg[int64_t(kk) * HW + px.pq];
    } else {
      const int c = kk / RS, rs = kk - c * RS;
      const int ih = px.ih0 + rs / S, iw = px.iw0 + rs % S;
      if (static_cast<unsigned>(ih) < static_cast<unsigned>(g.H) &&
          static_cast<unsigned>(iw) < static_cast<unsigned>(g.W))
        return px.ximg[int64_t(c) * HW + ih * g.W + iw];
      return 0.0f;
    }
  };
  auto multiply = [&] {
#pragma unroll
    for (int ks = 0; ks < kWgradChunk; ks += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wk * 32 + i * 16) * T::LDA + ks, T::LDA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + (wn * 32 + j * 16) * T::LDB + ks, T::LDB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  };

  // Pipelined (as cuda/fused_conv_tc.cuh's): the next chunk's values are loaded, all in flight together,
  // before this chunk is multiplied, and stored after it.
  float av[NA], bv[NB];
  auto fetch = [&](int chunk) {
    const Pixel px = pixel(chunk);
#pragma unroll
    for (int j = 0; j < NA; ++j) av[j] = load_dy(px, warp + j * T::kWarps);
#pragma unroll
    for (int j = 0; j < NB; ++j) bv[j] = load_tap(px, warp + j * T::kWarps);
  };
  auto store = [&] {
#pragma unroll
    for (int j = 0; j < NA; ++j) As[(warp + j * T::kWarps) * T::LDA + lane] = wmma::__float_to_tf32(av[j]);
#pragma unroll
    for (int j = 0; j < NB; ++j) Bs[(warp + j * T::kWarps) * T::LDB + lane] = wmma::__float_to_tf32(bv[j]);
  };
  if (chunk_begin < chunk_end) {
    fetch(chunk_begin);
    store();
    __syncthreads();  // the first chunk's tiles
  }
  for (int chunk = chunk_begin; chunk < chunk_end; ++chunk) {
    const bool next = chunk + 1 < chunk_end;  // the same in every thread
    if (next) fetch(chunk + 1);
    multiply();
    __syncthreads();  // every warp is done with the tiles
    if (next) {
      store();
      __syncthreads();  // the next chunk's tiles
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wk * 32 + i * 16) * T::LDC + wn * 32 + j * 16, acc[i][j], T::LDC,
                              wmma::mem_row_major);
  __syncthreads();
  float* slab = out + int64_t(blockIdx.z) * g.K * CRS;
  for (int t = tid; t < BK * BN; t += T::kThreads) {
    const int r = t / BN, col = t - r * BN;
    const int k = k0 + r, kk = kk0 + col;
    if (k < g.K && kk < CRS) slab[int64_t(k) * CRS + kk] = Cs[r * T::LDC + col];
  }
#endif
}

/// dw[i] = sum of ws[s * n + i] over the splits s = 0, 1, ... in that order. Any grid (grid-stride).
__global__ void wgrad_reduce_kernel(const float* __restrict__ ws, int splits, int64_t n,
                                    float* __restrict__ dw) {
  pdl_enter();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float sum = ws[i];
    for (int s = 1; s < splits; ++s) sum += ws[s * n + i];
    dw[i] = sum;
  }
}

/// Calls `run.template go_wgrad<BK, BN, KS>()` for `plan` (one of kWgradPlans; anything else runs as the
/// first) and KS = run.g.ksize() (as dispatch_fused_tc).
template <class Run>
void dispatch_wgrad(const WgradPlan& plan, const Run& run) {
  with_window(run.g, [&](auto ks) {
    constexpr int KS = decltype(ks)::value;
    if (plan.bk == 64 && plan.bn == 64) return run.template go_wgrad<64, 64, KS>();
    if (plan.bk == 64 && plan.bn == 128) return run.template go_wgrad<64, 128, KS>();
    if (plan.bk == 32 && plan.bn == 64) return run.template go_wgrad<32, 64, KS>();
    if (plan.bk == 32 && plan.bn == 128) return run.template go_wgrad<32, 128, KS>();
    return run.template go_wgrad<128, 64, KS>();
  });
}

}  // namespace
}  // namespace ladnn::cuda
