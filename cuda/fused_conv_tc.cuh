// cuda/fused_conv_tc.cuh — the fused inference convolution's tensor-core form, for outputs with more
// pixels than batch 1 has: y = post(conv(pre(x), w)) as a TF32 implicit GEMM on the tensor cores
// (nvcuda::wmma, m16n16k8), the eval BatchNorm(-ReLU)s applied as x is staged and as the sums are
// stored. cuda/fused_conv.cuh's SIMT kernel is the batch-1 form (its reduction split over warps); this
// one is for outputs large enough to fill the GPU with GEMM tiles (DenseNet at batch 32: a bottleneck
// 1x1 at 14x14 has 6,272 x 128 outputs, a growth 3x3 6,272 x 32), where float32 SIMT arithmetic is 8x
// slower than TF32 tensor cores. Used only when TF32 is on (cuda::tf32_enabled(), as cuDNN's TF32
// kernels). With LADNN_TILE_EMULATION it compiles as plain C++ for tests/cuda_tile_emulation_test.cpp,
// which supplies a host model of the wmma calls. Training uses it twice: the dense blocks' forward
// convolutions (no BatchNorms), and every stride-1 convolution's backward data pass, which is this
// convolution of dy with the weight rotated and transposed (dgrad_geom; the kernel reads w in that
// order, FusedConvGeom::w_flipped).
//
// Tile: BK output channels x BM pixels per block, (BK / 32) x (BM / 32) warps, each a 32 x 32 sub-tile
// (2 x 2 accumulator fragments of 16 x 16). The reduction walks the weight rows' C*R*S values in chunks
// of 32 (four k-steps of 8): the block stages W[k0 : k0 + BK, kk : kk + 32] and the matching taps of
// pre(x) for pixels m0 : m0 + BM in shared memory, rounded to TF32 (cvt.rna: to nearest, ties away),
// zeros past K, C*R*S, M and in the padding; every warp then multiplies its fragments. The staging is
// pipelined: each thread loads its values of chunk i + 1 into registers (all its loads in flight at
// once) before the warps multiply chunk i, and stores them after a barrier. After the last
// chunk the accumulators go through shared memory (the staging space reused) to the epilogue, which
// applies post and writes NCHW rows (coalesced along pixels). Deterministic: each output's sum has a
// fixed order on a given GPU; its rounding is the tensor cores' (float32 accumulation of exact TF32
// products, in an order the hardware fixes).
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

/// A tensor-core launch shape: BK output channels x BM pixels per block.
struct TcPlan {
  int bk = 128, bm = 64;
};
// 128 and 64 rows for the bottlenecks' K = 128 outputs, 32 for the growth convs' K = 32.
constexpr TcPlan kTcPlans[] = {{128, 64}, {64, 64}, {128, 32}, {64, 32}, {32, 64}, {32, 128}};
// Reduction values (weight-row entries) staged per step: 4 k-steps of 8 between two barriers, and 16
// independent global loads per thread in flight while staging the largest tile.
constexpr int kTcChunk = 32;

template <int BK, int BM>
struct TcTile {
  static constexpr int kWarps = (BK / 32) * (BM / 32);
  static constexpr int kThreads = kWarps * 32;
  // Row strides of the staged tiles, padded (bank conflicts) and multiples of 4 floats (wmma's ldm);
  // every fragment pointer below is then 32-byte aligned (wmma's requirement).
  static constexpr int LDA = kTcChunk + 4, LDB = BM + 4, LDC = BM + 4;
  static constexpr int kStage = BK * LDA + kTcChunk * LDB, kOut = BK * LDC;
  static constexpr int kFloats = kStage > kOut ? kStage : kOut;
};

inline FusedGrid tc_grid(const FusedConvGeom& g, const TcPlan& plan) {
  return {static_cast<unsigned>((int64_t(g.M()) + plan.bm - 1) / plan.bm),
          static_cast<unsigned>((g.K + plan.bk - 1) / plan.bk)};
}

/// Element i of the data pass's weight as a forward convolution's (C, K, R, S) weight: w (K, C, R, S)
/// rotated by 180 degrees and transposed, out[c][k][rs] = w[k][c][RS - 1 - rs] (RS = R * S). This kernel
/// reads w in that order in place (w_flipped, below); the mma and halo kernels copy the forward's rows
/// only, so their data pass runs on a copy made of these (cuda/fused_conv.cu's rotate_weights_kernel).
LADNN_HD float rotated_weight(const float* w, int K, int C, int RS, int64_t i) {
  const int rs = static_cast<int>(i % RS);
  const int64_t ck = i / RS;
  const int k = static_cast<int>(ck % K), c = static_cast<int>(ck / K);
  return w[(int64_t(k) * C + c) * RS + (RS - 1 - rs)];
}

/// The backward data pass of a stride-1 convolution x (N, C, H, W) -> dy (N, K, P, Q), weight (K, C, R, S),
/// padding (ph, pw), as this kernel's forward convolution: input dy, output dx, the weight read rotated
/// and transposed (w_flipped), padding R-1-ph and S-1-pw; dx packed, dy's images dy_img elements apart (0:
/// packed, K*P*Q; more: a channel slice of a wider tensor, read in place). The caller checks that the sizes
/// fit int and that ph < R, pw < S.
inline FusedConvGeom dgrad_geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t P, int64_t Q,
                                int64_t R, int64_t S, int64_t ph, int64_t pw, int64_t dy_img = 0) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  FusedConvGeom g{};
  g.N = i(N);
  g.C = i(K);  // the forward's outputs are this convolution's inputs,
  g.H = i(P);
  g.W = i(Q);
  g.K = i(C);  // and its inputs the outputs
  g.R = i(R);
  g.S = i(S);
  g.P = i(H);
  g.Q = i(W);
  g.sh = g.sw = 1;
  g.ph = i(R - 1 - ph);
  g.pw = i(S - 1 - pw);
  g.x_img = dy_img > 0 ? dy_img : K * P * Q;
  g.y_img = C * H * W;
  g.w_flipped = true;
  return g;
}

/// Reduction chunks of the weight rows (C*R*S values in steps of kTcChunk).
inline int tc_chunks(const FusedConvGeom& g) {
  return static_cast<int>((int64_t(g.C) * g.R * g.S + kTcChunk - 1) / kTcChunk);
}

/// How many splits runs of chunks_per_split chunks make (1 for 0: the whole reduction).
inline int tc_split_count(const FusedConvGeom& g, int chunks_per_split) {
  return split_count(tc_chunks(g), chunks_per_split);
}

/// Grid (tc_grid(g, {BK, BM}), splits), TcTile<BK, BM>::kThreads threads. Any window, stride and
/// padding. Split-K: with one split (gridDim.z == 1, partial null) the block walks every chunk and its
/// epilogue applies post and writes y. With several, block z walks chunks [z * chunks_per_split, ...)
/// and writes its raw sums to partial's slab z, laid out (K, M) — tc_split_reduce_kernel adds the
/// slabs in split order, applies post and writes y. For outputs with few tiles and long reductions
/// (DenseNet's 7x7 maps: 1,568 pixels at batch 32, 49 tiles of 128 x 32, up to 50 chunks each).
template <int BK, int BM, int KS>
__global__ void __launch_bounds__(TcTile<BK, BM>::kThreads)
    fused_conv_tc_kernel(FusedConvGeom g, const float* __restrict__ x, const float* __restrict__ w,
                         FusedBn pre, FusedBn post, float* __restrict__ y, int chunks_per_split,
                         float* __restrict__ partial) {
  pdl_enter();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // TF32 tensor cores need sm_80; the launcher never launches this there
#else
  using namespace nvcuda;
  using T = TcTile<BK, BM>;
  __shared__ __align__(128) float smem[T::kFloats];
  __shared__ float s_mean[kTcChunk], s_scale[kTcChunk], s_shift[kTcChunk];  // pre, this chunk's
  __shared__ float s_pmean[BK], s_pscale[BK], s_pshift[BK];                 // post, the block's rows
  float* As = smem;                // [BK][LDA]: W rows k0.., reduction values c0..c0+31
  float* Bs = smem + BK * T::LDA;  // [32][LDB]: pre(x)'s taps for c0.., pixels m0..
  float* Cs = smem;                // [BK][LDC]: the sums, after the last chunk
  const int tid = threadIdx.x, warp = tid >> 5;
  const int wk = warp / (BM / 32), wm = warp % (BM / 32);
  const int k0 = blockIdx.y * BK, m0 = blockIdx.x * BM;
  const int M = g.M(), PQ = g.P * g.Q, HW = g.H * g.W;

  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  // The reduction runs over kk = (c, r, s) of the weight's rows (C*R*S contiguous values each): for a
  // pointwise conv kk is the channel; for a window, B's element (kk, m) is the input tap (c, ih, iw) of
  // pixel m (implicit GEMM: im2col without the column buffer), 0 in the padding.
  // KS = 1 (pointwise) or 3 (3x3): the window is a compile-time constant, and the divisions below by RS
  // and S are multiplications (three integer divisions per staged value otherwise); 0: any window.
  constexpr bool PW = KS == 1;
  const int S = KS > 0 ? KS : g.S, RS = KS > 0 ? KS * KS : g.R * g.S, CRS = g.C * RS;
  // This thread's staging pixel, the same in every chunk: its image and the tap (0, 0) of its window.
  static_assert(T::kThreads % BM == 0, "each thread stages one pixel column");
  const int my_mm = tid % BM, my_m = m0 + my_mm;
  const bool m_in = my_m < M;
  const float* ximg = x;
  int ih0 = 0, iw0 = 0;
  if (m_in) {
    const int n = my_m / PQ, pq = my_m - n * PQ, p = pq / g.Q, q = pq - p * g.Q;
    ximg = x + n * g.x_img;
    ih0 = p * g.sh - g.ph;
    iw0 = q * g.sw - g.pw;
  }
  const int c_begin = partial ? int(blockIdx.z) * chunks_per_split * kTcChunk : 0;
  const int c_end =
      partial && c_begin + chunks_per_split * kTcChunk < CRS ? c_begin + chunks_per_split * kTcChunk : CRS;

  // The staging, value by value. W's j-th value of a chunk for this thread: row r = i / 32 (plain) of
  // i = tid + j * kThreads — adjacent threads read adjacent floats of w: along a row (plain), or —
  // flipped, where a row's entries lie K * RS apart — down the rows, RS apart (contiguous for a
  // pointwise weight).
  auto w_slot = [&](int j, int& r, int& cc) {
    const int i = tid + j * T::kThreads;
    r = g.w_flipped ? i % BK : i / kTcChunk;
    cc = g.w_flipped ? i / BK : i - r * kTcChunk;
  };
  auto load_w = [&](int c0, int r, int cc) -> float {
    const int k = k0 + r, kk = c0 + cc;
    if (k >= g.K || kk >= CRS) return 0.0f;
    int64_t at = int64_t(k) * CRS + kk;
    if (g.w_flipped) {  // entry (k, c, rs) of the rotated transpose: w[c, k, RS - 1 - rs]
      if constexpr (PW) {
        at = int64_t(kk) * g.K + k;
      } else {
        const int c = kk / RS, rs = kk - c * RS;
        at = (int64_t(c) * g.K + k) * RS + (RS - 1 - rs);
      }
    }
    return w[at];
  };
  // x's value for reduction row cc of the chunk at this thread's pixel (0 past M, CRS and in the
  // padding); `tap` says whether it is a tap inside the map, to which pre applies.
  auto load_x = [&](int c0, int cc, bool& tap) -> float {
    const int kk = c0 + cc;
    tap = false;
    if (!m_in || kk >= CRS) return 0.0f;
    if constexpr (PW) {
      tap = true;  // a pointwise tap is always inside: its own pixel, channel kk
      return ximg[int64_t(kk) * HW + ih0 * g.W + iw0];
    } else {
      const int c = kk / RS, rs = kk - c * RS;
      const int ih = ih0 + rs / S, iw = iw0 + rs % S;
      tap = static_cast<unsigned>(ih) < static_cast<unsigned>(g.H) &&
            static_cast<unsigned>(iw) < static_cast<unsigned>(g.W);
      return tap ? ximg[int64_t(c) * HW + ih * g.W + iw] : 0.0f;
    }
  };
  auto load_coefs = [&](int c0) {  // pre's coefficients for the chunk's rows (threads 0..31)
    if (pre.on && tid < kTcChunk && c0 + tid < CRS)
      fused_bn_coef(pre, PW ? c0 + tid : (c0 + tid) / RS, s_mean[tid], s_scale[tid], s_shift[tid]);
  };
  auto put_x = [&](int cc, float v, bool tap) {
    if (tap) v = fused_bn_apply(pre, s_mean, s_scale, s_shift, cc, v);
    Bs[cc * T::LDB + my_mm] = wmma::__float_to_tf32(v);
  };
  // Every thread stages one pixel (kThreads is a multiple of BM): rows cc = tid / BM + j * kThreads / BM.
  constexpr int kXRows = T::kThreads / BM, NX = kTcChunk / kXRows, NW = BK * kTcChunk / T::kThreads;
  static_assert(NW * T::kThreads == BK * kTcChunk && NX <= 32, "whole chunks per thread; NX bits in a mask");
  auto multiply = [&] {
#pragma unroll
    for (int ks = 0; ks < kTcChunk; ks += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wk * 32 + i * 16) * T::LDA + ks, T::LDA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + ks * T::LDB + wm * 32 + j * 16, T::LDB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  };

  // Pipelined: the next chunk's values (raw x, with a bit per tap inside the map) and coefficients
  // are loaded — every load of the chunk in flight at once, in registers — before this chunk is
  // multiplied, and stored to the tiles after it, so their latency overlaps the tensor cores' work. (The
  // first form stored each value straight from its load, so a chunk's loads were not all in flight
  // together. Run 8 timed both on the model's shapes: this one was faster on all but one — e.g. 0.069
  // against 0.094 ms, tile 128x64, on the 1x1 at 14x14, 768 -> 128, batch 32.)
  float wv[NW], xv[NX];
  uint32_t taps = 0;
  auto fetch = [&](int c0) {
    load_coefs(c0);
#pragma unroll
    for (int j = 0; j < NW; ++j) {
      int r, cc;
      w_slot(j, r, cc);
      wv[j] = load_w(c0, r, cc);
    }
    taps = 0;
#pragma unroll
    for (int j = 0; j < NX; ++j) {
      bool tap;
      xv[j] = load_x(c0, tid / BM + j * kXRows, tap);
      taps |= uint32_t(tap) << j;
    }
  };
  auto store = [&] {
#pragma unroll
    for (int j = 0; j < NW; ++j) {
      int r, cc;
      w_slot(j, r, cc);
      As[r * T::LDA + cc] = wmma::__float_to_tf32(wv[j]);
    }
#pragma unroll
    for (int j = 0; j < NX; ++j) put_x(tid / BM + j * kXRows, xv[j], (taps >> j) & 1u);
  };
  if (c_begin < c_end) {
    fetch(c_begin);
    __syncthreads();  // the first chunk's coefficients
    store();
    __syncthreads();  // the first chunk's tiles
  }
  for (int c0 = c_begin; c0 < c_end; c0 += kTcChunk) {
    const bool next = c0 + kTcChunk < c_end;  // the same in every thread
    if (next) fetch(c0 + kTcChunk);  // the coefficients were last read by store(), before a barrier
    multiply();
    __syncthreads();  // every warp is done with the tiles; the next chunk's coefficients are visible
    if (next) {
      store();
      __syncthreads();  // the next chunk's tiles
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wk * 32 + i * 16) * T::LDC + wm * 32 + j * 16, acc[i][j], T::LDC,
                              wmma::mem_row_major);
  if (partial) {  // one split's raw sums: slab z of the (splits, K, M) workspace, coalesced along pixels
    __syncthreads();
    float* slab = partial + int64_t(blockIdx.z) * g.K * M;
    for (int t = tid; t < BK * BM; t += T::kThreads) {
      const int r = t / BM, mm = t - r * BM;
      if (k0 + r < g.K && m0 + mm < M) slab[int64_t(k0 + r) * M + m0 + mm] = Cs[r * T::LDC + mm];
    }
    return;
  }
  if (post.on)
    for (int r = tid; r < BK; r += T::kThreads)
      if (k0 + r < g.K) fused_bn_coef(post, k0 + r, s_pmean[r], s_pscale[r], s_pshift[r]);
  __syncthreads();
  for (int t = tid; t < BK * BM; t += T::kThreads) {
    const int r = t / BM, mm = t - r * BM;
    const int k = k0 + r, m = m0 + mm;
    if (k >= g.K || m >= M) continue;
    y[fused_y_offset(g, k, m)] = fused_bn_apply(post, s_pmean, s_pscale, s_pshift, r, Cs[r * T::LDC + mm]);
  }
#endif
}

/// The split form's second pass: y[k, m] = post(sum of partial[s, k, m] over s = 0, 1, ... in that
/// order), the epilogue's arithmetic. Grid (ceil(M / blockDim.x), K): a block's threads share one output
/// channel (each derives its coefficients: no shared memory, no barrier; the kernel is memory-bound).
__global__ void tc_split_reduce_kernel(FusedConvGeom g, const float* __restrict__ partial, int splits,
                                       FusedBn post, float* __restrict__ y) {
  pdl_enter();
  const int k = blockIdx.y, M = g.M();
  const int m = blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= M) return;
  const int64_t slab = int64_t(g.K) * M;
  float v = partial[int64_t(k) * M + m];
  for (int s = 1; s < splits; ++s) v += partial[s * slab + int64_t(k) * M + m];
  y[fused_y_offset(g, k, m)] = fused_bn_apply(post, k, v);
}

/// Calls `run.template go_tc<BK, BM, KS>()` for `plan` (one of kTcPlans; anything else runs as the first)
/// and KS = run.g.ksize(): 1 for a pointwise convolution (its taps need no window arithmetic), 3 for a
/// 3x3 window (constant divisors), 0 for any other — DenseNet's convolutions are all 1x1 or 3x3 but the
/// stem's 7x7.
template <class Run>
void dispatch_fused_tc(const TcPlan& plan, const Run& run) {
  with_window(run.g, [&](auto ks) {
    constexpr int KS = decltype(ks)::value;
    if (plan.bk == 64 && plan.bm == 64) return run.template go_tc<64, 64, KS>();
    if (plan.bk == 128 && plan.bm == 32) return run.template go_tc<128, 32, KS>();
    if (plan.bk == 64 && plan.bm == 32) return run.template go_tc<64, 32, KS>();
    if (plan.bk == 32 && plan.bm == 64) return run.template go_tc<32, 64, KS>();
    if (plan.bk == 32 && plan.bm == 128) return run.template go_tc<32, 128, KS>();
    return run.template go_tc<128, 64, KS>();
  });
}

}  // namespace
}  // namespace ladnn::cuda
