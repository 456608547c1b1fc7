// cuda/fused_conv_mma.cuh — the fused inference convolution y = post(W * pre(x)) as a TF32 implicit GEMM
// on mma.sync, its operands streamed into shared memory by a cp.async pipeline, for DenseNet's dense-layer
// convolutions: the bottleneck 1x1 (inference: norm1-ReLU -> conv -> norm2-ReLU over the block buffer's
// channel prefix; training: the plain forward), the growth 3x3 (no BatchNorm before it), and the stem's
// 7x7 stride 2 (norm0-ReLU after it).
//
// Why another kernel: cuda/fused_conv_tc.cuh (wmma, staged through registers) fuses the BatchNorms but
// ran at 15-25 TFLOP/s on these shapes at batch 32, under cuBLAS's plain GEMM on the unfused path (run 8:
// the 1x1 at 14x14, 768 -> 128, took 0.069 ms fused against 0.038 for BatchNorm + cuBLAS + BatchNorm).
// What costs it: every value passes through a register and a store on its way to shared memory, and a
// warp's 32 x 32 tile loads two fragments per two multiplications. Here:
// - the copies are cp.async, 16 bytes each where the rows allow it, mma_stages() deep: a thread issues
//   the copies of stage j + 3 (j + 2 at depth 32) and goes on multiplying stage j;
// - each warp owns a 64 x BM / 2 (or 32 x BM / 4) tile of the output: per k-step of 8 it loads MI A and
//   NI B fragments for MI * NI multiplications (mma.m16n8k8, cuda/mma_tf32.cuh);
// - pre is applied when a B fragment is read from shared memory (two channels per lane and k-step, their
//   coefficients computed once per block for every input channel), post on the accumulators;
// - the epilogue finds each lane's pixel offsets once (run 8: dividing per output had cost as much as the
//   reduction on the short ones; the 1x1 at 56x56 went from 0.142 to 0.083 ms with both BatchNorms).
//
// GEMM: out[k, m] = sum over kk of W[k, kk] * B[kk, m], k an output channel, m = n*P*Q + p*Q + q a pixel
// of the batch, kk = (c, r, s) an entry of a weight row and B[kk, m] its tap of pre(x) (the pixel's own
// value of channel c for a 1x1; (c, p*sh - ph + r, q*sw - pw + s) for a window, zero in the padding). Block:
// BK output channels (128 or 32) x BM pixels, 4 warps. Stage: DEPTH = 16 or 32 values of kk (two or four
// k-steps): As[BK][DEPTH (+4 pad)] of W, Bs[DEPTH][BM (+8 pad)] of B; the pads make every fragment read
// conflict-free (lane (g, t) reads bank 20g + t or 36g + t, resp. 8t + g, mod 32). Zeros past K, C*R*S and M:
// cp.async writes zeros where `in` is false, and pre's coefficients past C are (0, 0, 0), so a padded channel
// adds 0 * 0. Pixels past M hold pre(0) in B but their columns are never stored. A window takes no pre: a
// padding tap must stay 0 after pre, which the fragment-time BatchNorm cannot tell from a real 0. The
// window's size is a template constant (KS = 3 or 7), so a tap's (c, r, s) comes from divisions by
// constants, which compile to multiplications.
//
// Split-K as the wmma kernel's: block z takes stages [z * chunks_per_split, ...) and writes raw sums to
// its (K, M) slab; tc_split_reduce_kernel adds the slabs and applies post. Arithmetic: TF32 operands
// rounded to nearest (cvt.rna, as every tensor-core kernel here), float32 accumulation in the tensor
// cores' order: deterministic on a given GPU, within the TF32 bound of the float64 reference.
#pragma once

#include <cstdint>

#include "cuda/fused_conv.cuh"
#include "cuda/fused_conv_tc.cuh"  // FusedGrid, tc_split_reduce_kernel
#include "cuda/launch.h"
#include "cuda/mma_tf32.cuh"

namespace ladnn::cuda {
namespace {

/// A launch shape of the mma kernel: BK output channels (128: a bottleneck; 32: a growth conv) x BM
/// pixels per block, `depth` reduction values per stage (16 or 32: two or four k-steps of 8 between
/// barriers).
struct MmaPlan {
  int bk = 128, bm = 64, depth = 16;
};
/// Depth 16 is what run 9 measured. Depth 32 halves the barriers and pipeline waits per value, which may
/// be what keeps the kernel under cuBLAS on long reductions (the 1x1s at 14x14 with 736-1248 channels);
/// it has not run on a GPU yet: Auto times it beside depth 16.
constexpr MmaPlan kMmaPlans[] = {{128, 64, 16}, {128, 32, 16}, {32, 128, 16}, {32, 64, 16},
                                 {128, 64, 32}, {128, 32, 32}, {32, 128, 32}, {32, 64, 32}};
/// Stages in flight: four of 16 values (three being copied while one is multiplied), three of 32 (the
/// same shared memory per block within 25%, so as many blocks fit on an SM).
LADNN_HD constexpr int mma_stages(int depth) {
  return depth >= 32 ? 3 : 4;
}
constexpr int kMmaThreads = 128;

template <int BK, int BM, int DEPTH>
struct MmaTile {
  static constexpr int LDA = DEPTH + 4, LDB = BM + 8;
  static constexpr int kA = BK * LDA, kB = DEPTH * LDB, kStage = kA + kB;  // floats
  // Four warps: 2 x 2 (64 channels x BM / 2 pixels each) for BK = 128, 1 x 4 (32 x BM / 4) for BK = 32.
  static constexpr int WROWS = BK >= 64 ? 64 : 32, kWarpsK = BK / WROWS, kWarpsN = 4 / kWarpsK;
  static constexpr int WN = BM / kWarpsN, NI = WN / 8, MI = WROWS / 16;  // MI x NI mma tiles per warp
  static_assert(kWarpsK * kWarpsN == 4 && NI >= 1, "four warps over the tile");
};

/// The kernel takes the call: the weight read plainly (not a data pass), and a pointwise convolution,
/// or a 3x3 or 7x7 window (any stride and padding) without pre — a BatchNorm before a padded window
/// would need a tap mask per value (the padding is zero after pre, not pre(0)); DenseNet has none there.
inline bool mma_takes(const FusedConvGeom& g, bool pre_on) {
  const bool window = g.R == g.S && (g.R == 3 || g.R == 7) && !pre_on;
  return !g.w_flipped && g.C <= kFusedMaxC && (g.pointwise() || window);
}

/// Stages of the reduction: the weight rows' C*R*S values in runs of `depth`.
LADNN_HD int mma_chunks(const FusedConvGeom& g, int depth) {
  return (g.C * g.R * g.S + depth - 1) / depth;
}
inline int mma_split_count(const FusedConvGeom& g, int depth, int chunks_per_split) {
  return split_count(mma_chunks(g, depth), chunks_per_split);
}
inline FusedGrid mma_grid(const FusedConvGeom& g, const MmaPlan& plan) {
  return {static_cast<unsigned>((int64_t(g.M()) + plan.bm - 1) / plan.bm),
          static_cast<unsigned>((g.K + plan.bk - 1) / plan.bk)};
}
/// Dynamic shared memory of a launch: the stages, pre's coefficients when it is on (mean, scale, shift
/// for C channels rounded up to a stage), post's (BK rows).
LADNN_HD int mma_smem_floats(const FusedConvGeom& g, const MmaPlan& plan, bool pre_on) {
  const int stage = plan.bk * (plan.depth + 4) + plan.depth * (plan.bm + 8);
  return mma_stages(plan.depth) * stage + (pre_on ? 3 * mma_chunks(g, plan.depth) * plan.depth : 0) +
         3 * plan.bk;
}

/// A window's reduction can run tap by tap (mma_tap_major_fits): entry kk = (r*S + s)*C + c instead of
/// c*R*S + r*S + s, so that the `depth` values of a stage are one tap (r, s) of as many channels. A
/// thread's copies of x then share one pixel position and one padding test, where channel-major order
/// finds (c, r, s) and tests the padding per copy; the weight's values of a row are then 9 (49) apart,
/// copied 4 bytes at a time. The order of the sums changes, not the bound.
LADNN_HD bool mma_tap_major_fits(const FusedConvGeom& g, int depth) {
  return !g.pointwise() && g.C % depth == 0;
}

/// Grid (mma_grid, splits), kMmaThreads threads, mma_smem_floats(g, {BK, BM, DEPTH}, pre.on) * 4 bytes of
/// dynamic shared memory. KS: 1 (pointwise), 3 or 7 (the window's size). w16: w's rows are copied 16
/// bytes at a time (C*R*S % 4 == 0, w 16-byte aligned); x16 (pointwise only): so are x's pixels (H*W % 4
/// == 0, x_img % 4 == 0, x 16-byte aligned: four pixels never straddle images). A window's taps are
/// copied one by one; TAP (a window, mma_tap_major_fits) takes them tap by tap. TAP is a template
/// parameter, not an argument: run 9 compiled both orders into one kernel as a runtime branch, and the
/// 32-row window tiles went from 95-118 to 120-168 registers; on the 32x128 tile the stem's 7x7 (3
/// channels: channel by channel only) slowed from 0.308 to 0.413 ms at batch 32 (cuDNN: 0.367).
template <int BK, int BM, int KS, bool TAP, int DEPTH>
__global__ void __launch_bounds__(kMmaThreads)
    fused_conv_mma_kernel(FusedConvGeom g, bool w16, bool x16, const float* __restrict__ x,
                          const float* __restrict__ w, FusedBn pre, FusedBn post, float* __restrict__ y,
                          int chunks_per_split, float* __restrict__ partial) {
  pdl_enter();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync on TF32 and cp.async need sm_80; the launcher never launches this there
#else
  using T = MmaTile<BK, BM, DEPTH>;
  constexpr int kStages = mma_stages(DEPTH);
  static_assert(DEPTH == 16 || DEPTH == 32, "two or four k-steps per stage");
  static_assert(KS == 1 || KS == 3 || KS == 7, "pointwise, 3x3 or 7x7");
  static_assert(!TAP || KS > 1, "tap by tap: a window");
  constexpr int kTaps = KS * KS;
  LADNN_DYNAMIC_SMEM(smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int wk = warp / T::kWarpsN, wn = warp % T::kWarpsN;  // the warp's WROWS channels and WN pixels
  const int k0 = blockIdx.y * BK, m0 = blockIdx.x * BM;
  const int M = g.M(), HW = g.H * g.W, C = g.C, K = g.K, CRS = C * kTaps;
  const int chunks = mma_chunks(g, DEPTH), cpad = chunks * DEPTH;
  float* s_pre = smem + kStages * T::kStage;        // mean[cpad], scale[cpad], shift[cpad] (pre on)
  float* s_post = s_pre + (pre.on ? 3 * cpad : 0);  // mean[BK], scale[BK], shift[BK]
  const int chunk0 = partial ? int(blockIdx.z) * chunks_per_split : 0;
  int chunk_end = partial ? chunk0 + chunks_per_split : chunks;
  if (chunk_end > chunks) chunk_end = chunks;
  const int n_chunks = chunk_end - chunk0;

  // This thread's copies of x, the same slots in every stage: a column of 4 pixels (16-byte copies) or
  // one pixel; its image and position are fixed, only the channel (and tap) moves.
  constexpr int kQuadCols = BM / 4;                // 16-byte columns of a B row
  constexpr int kXRows4 = kMmaThreads / kQuadCols;  // B rows one pass of 16-byte copies covers
  constexpr int kXRows1 = kMmaThreads / BM;         // ... of 4-byte copies
  static_assert(kXRows1 >= 1 && DEPTH % kXRows1 == 0 && DEPTH % kXRows4 == 0, "whole rows per pass");
  const int xcol = x16 ? 4 * (tid % kQuadCols) : tid % BM;
  const int xm = m0 + xcol;
  const bool x_in = xm < M;  // with x16, M % 4 == 0: the four pixels are all in or all out
  const float* ximg = x;     // the pixel's image
  int xpos = 0, ih0 = 0, iw0 = 0;  // pointwise: its plane offset; a window: its origin
  if (x_in) {
    const int PQ = g.P * g.Q, n = xm / PQ, pq = xm - n * PQ;
    ximg = x + n * g.x_img;
    xpos = pq;
    if (KS > 1) {
      const int p = pq / g.Q, q = pq - p * g.Q;
      ih0 = p * g.sh - g.ph;
      iw0 = q * g.sw - g.pw;
    }
  }

  auto issue = [&](int j) {  // chunk0 + j's copies into stage j % kStages
    float* As = smem + (j % kStages) * T::kStage;
    float* Bs = As + T::kA;
    const int c0 = (chunk0 + j) * DEPTH;
    if constexpr (TAP) {  // the stage is tap rs = (r, s) of channels ch0 .. ch0 + DEPTH - 1
      const int rs = c0 / C, ch0 = c0 - rs * C, r = rs / KS, s = rs - KS * r;
#pragma unroll
      for (int i = 0; i < BK * DEPTH / kMmaThreads; ++i) {  // W[k, ch0 + col, r, s]
        const int row = tid / DEPTH + i * (kMmaThreads / DEPTH), col = tid % DEPTH;
        const bool in = k0 + row < K;
        cp_async_4(As + row * T::LDA + col, in ? w + int64_t(k0 + row) * CRS + (ch0 + col) * kTaps + rs : w,
                   in);
      }
      const int ih = ih0 + r, iw = iw0 + s;
      const bool in = x_in && static_cast<unsigned>(ih) < static_cast<unsigned>(g.H) &&
                      static_cast<unsigned>(iw) < static_cast<unsigned>(g.W);
      const float* src = in ? ximg + int64_t(ch0) * HW + ih * g.W + iw : x;  // channel ch0 of the tap
      const int step = in ? HW : 0;
#pragma unroll
      for (int i = 0; i < DEPTH / kXRows1; ++i) {
        const int row = tid / BM + i * kXRows1;
        cp_async_4(Bs + row * T::LDB + xcol, src + int64_t(row) * step, in);
      }
      return;
    }
    if (w16) {  // W: BK rows x DEPTH / 4 columns of 16 bytes
      constexpr int kCols = DEPTH / 4;
#pragma unroll
      for (int i = 0; i < BK * kCols / kMmaThreads; ++i) {
        const int r = tid / kCols + i * (kMmaThreads / kCols), kk = c0 + 4 * (tid % kCols);
        const bool in = k0 + r < K && kk < CRS;
        cp_async_16(As + r * T::LDA + 4 * (tid % kCols), in ? w + int64_t(k0 + r) * CRS + kk : w, in);
      }
    } else {  // DEPTH floats of a row per DEPTH threads
#pragma unroll
      for (int i = 0; i < BK * DEPTH / kMmaThreads; ++i) {
        const int r = tid / DEPTH + i * (kMmaThreads / DEPTH), kk = c0 + tid % DEPTH;
        const bool in = k0 + r < K && kk < CRS;
        cp_async_4(As + r * T::LDA + tid % DEPTH, in ? w + int64_t(k0 + r) * CRS + kk : w, in);
      }
    }
    if (KS > 1) {  // the taps (c, r, s) of rows kk = c0 + row, zero in the padding
#pragma unroll
      for (int i = 0; i < DEPTH / kXRows1; ++i) {
        const int row = tid / BM + i * kXRows1, kk = c0 + row;
        const int c = kk / kTaps, rs = kk - kTaps * c, r = rs / KS, ih = ih0 + r, iw = iw0 + (rs - KS * r);
        const bool in = x_in && kk < CRS && static_cast<unsigned>(ih) < static_cast<unsigned>(g.H) &&
                        static_cast<unsigned>(iw) < static_cast<unsigned>(g.W);
        cp_async_4(Bs + row * T::LDB + xcol, in ? ximg + int64_t(c) * HW + ih * g.W + iw : x, in);
      }
    } else if (x16) {
#pragma unroll
      for (int i = 0; i < DEPTH / kXRows4; ++i) {
        const int row = tid / kQuadCols + i * kXRows4, c = c0 + row;
        const bool in = x_in && c < C;
        cp_async_16(Bs + row * T::LDB + xcol, in ? ximg + int64_t(c) * HW + xpos : x, in);
      }
    } else {
#pragma unroll
      for (int i = 0; i < DEPTH / kXRows1; ++i) {
        const int row = tid / BM + i * kXRows1, c = c0 + row;
        const bool in = x_in && c < C;
        cp_async_4(Bs + row * T::LDB + xcol, in ? ximg + int64_t(c) * HW + xpos : x, in);
      }
    }
  };

  // The first stages' copies go out before anything else; the coefficients are computed under them.
#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < n_chunks) issue(j);
    cp_async_commit();  // (empty groups too: the count of groups in flight stays the same per thread)
  }
  if (pre.on)
    for (int c = tid; c < cpad; c += kMmaThreads) {
      if (c < C) {
        fused_bn_coef(pre, c, s_pre[c], s_pre[cpad + c], s_pre[2 * cpad + c]);
      } else {
        s_pre[c] = s_pre[cpad + c] = s_pre[2 * cpad + c] = 0.0f;  // a padded channel: pre(0) = 0
      }
    }
  if (post.on && !partial)
    for (int r = tid; r < BK; r += kMmaThreads)
      if (k0 + r < K) fused_bn_coef(post, k0 + r, s_post[r], s_post[BK + r], s_post[2 * BK + r]);

  float acc[T::MI][T::NI][4];
#pragma unroll
  for (int mi = 0; mi < T::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < T::NI; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;

  for (int j = 0; j < n_chunks; ++j) {
    cp_async_wait<kStages - 2>();     // this thread's copies of stage j have landed
    __syncthreads();                  // everyone's have; everyone is done multiplying stage j - 1
    if (j + kStages - 1 < n_chunks) issue(j + kStages - 1);  // into stage j - 1's buffer
    cp_async_commit();
    const float* As = smem + (j % kStages) * T::kStage;
    const float* Bs = As + T::kA;
    const int c0 = (chunk0 + j) * DEPTH;
#pragma unroll
    for (int ks = 0; ks < DEPTH; ks += 8) {
      uint32_t a[T::MI][4], b[T::NI][2];
#pragma unroll
      for (int mi = 0; mi < T::MI; ++mi) {
        const float* row = As + (wk * T::WROWS + mi * 16 + gq) * T::LDA + ks + tq;
        a[mi][0] = tf32_bits(row[0]);
        a[mi][1] = tf32_bits(row[8 * T::LDA]);
        a[mi][2] = tf32_bits(row[4]);
        a[mi][3] = tf32_bits(row[8 * T::LDA + 4]);
      }
      // This lane's two channels of the k-step (rows tq and tq + 4 of B): their coefficients, read once
      // for the NI fragments (mean, scale, shift in that order, as fused_bn_apply takes them).
      const int ca = c0 + ks + tq, cb = ca + 4;
      float coef_a[3] = {0.0f, 0.0f, 0.0f}, coef_b[3] = {0.0f, 0.0f, 0.0f};
      if (pre.on)
#pragma unroll
        for (int i = 0; i < 3; ++i) coef_a[i] = s_pre[i * cpad + ca], coef_b[i] = s_pre[i * cpad + cb];
#pragma unroll
      for (int ni = 0; ni < T::NI; ++ni) {
        const float* col = Bs + (ks + tq) * T::LDB + wn * T::WN + ni * 8 + gq;
        b[ni][0] = tf32_bits(fused_bn_apply(pre, &coef_a[0], &coef_a[1], &coef_a[2], 0, col[0]));
        b[ni][1] = tf32_bits(fused_bn_apply(pre, &coef_b[0], &coef_b[1], &coef_b[2], 0, col[4 * T::LDB]));
      }
#pragma unroll
      for (int mi = 0; mi < T::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < T::NI; ++ni) mma_tf32_16x8x8(acc[mi][ni], a[mi], b[ni]);
    }
  }
  cp_async_wait<0>();  // (only empty groups are left)
  __syncthreads();     // post's coefficients, whatever n_chunks was

  // Epilogue: lane (g, t) of the warp holds outputs (row g or g + 8, pixels 2t and 2t + 1) of each tile.
  // Its 2 * NI pixels' offsets (image and plane position) are found once, not per output: the divisions
  // by P*Q would otherwise cost about as many instructions as the whole reduction of a short one.
  const int PQ = g.P * g.Q;
  int64_t yoff[T::NI][2];
#pragma unroll
  for (int ni = 0; ni < T::NI; ++ni)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int m = m0 + wn * T::WN + ni * 8 + 2 * tq + e, n = m / PQ;
      yoff[ni][e] = partial ? int64_t(blockIdx.z) * K * M + m : n * g.y_img + (m - n * PQ);
    }
  // The pair (2t, 2t + 1) as one 8-byte store where it always lies in one image, 8-byte aligned.
  const bool pair = !partial && PQ % 2 == 0 && g.y_img % 2 == 0 && reinterpret_cast<uintptr_t>(y) % 8 == 0;
  const int64_t row_stride = partial ? M : PQ;
  float* out = partial ? partial : y;
#pragma unroll
  for (int mi = 0; mi < T::MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // rows g and g + 8
      const int row = wk * T::WROWS + mi * 16 + gq + 8 * h, k = k0 + row;
      if (k >= K) continue;
#pragma unroll
      for (int ni = 0; ni < T::NI; ++ni) {
        const int m = m0 + wn * T::WN + ni * 8 + 2 * tq;  // even; M is even when `pair` holds
        if (m >= M) continue;
        float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
        if (!partial) {
          v0 = fused_bn_apply(post, s_post, s_post + BK, s_post + 2 * BK, row, v0);
          v1 = fused_bn_apply(post, s_post, s_post + BK, s_post + 2 * BK, row, v1);
        }
        float* at = out + yoff[ni][0] + int64_t(k) * row_stride;
        if (pair) {
          *reinterpret_cast<float2*>(at) = float2{v0, v1};
        } else {
          at[0] = v0;
          if (m + 1 < M) out[yoff[ni][1] + int64_t(k) * row_stride] = v1;
        }
      }
    }
#endif
}

/// Calls `run.template go_mma<BK, BM, KS, TAP, DEPTH>()` for `plan` (one of kMmaPlans; anything else
/// runs as the first) with KS = 1 for a pointwise convolution, else the window's size, 3 or 7
/// (mma_takes), TAP = run.tap for a window (the caller checks mma_tap_major_fits), DEPTH = plan.depth.
template <class Run>
void dispatch_fused_mma(const MmaPlan& plan, const Run& run) {
  auto tile = [&](auto ks, auto tap, auto depth) {
    constexpr int KS = decltype(ks)::value, D = decltype(depth)::value;
    constexpr bool TAP = decltype(tap)::value;
    if (plan.bk == 128 && plan.bm == 32) return run.template go_mma<128, 32, KS, TAP, D>();
    if (plan.bk == 32 && plan.bm == 128) return run.template go_mma<32, 128, KS, TAP, D>();
    if (plan.bk == 32 && plan.bm == 64) return run.template go_mma<32, 64, KS, TAP, D>();
    return run.template go_mma<128, 64, KS, TAP, D>();
  };
  auto deep = [&](auto ks, auto tap) {
    if (plan.depth == 32) return tile(ks, tap, std::integral_constant<int, 32>{});
    tile(ks, tap, std::integral_constant<int, 16>{});
  };
  auto window = [&](auto ks) {
    if (run.tap) return deep(ks, std::true_type{});
    deep(ks, std::false_type{});
  };
  if (run.g.pointwise()) return deep(std::integral_constant<int, 1>{}, std::false_type{});
  if (run.g.R == 7) return window(std::integral_constant<int, 7>{});
  window(std::integral_constant<int, 3>{});
}

}  // namespace
}  // namespace ladnn::cuda
