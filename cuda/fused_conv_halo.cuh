// cuda/fused_conv_halo.cuh — DenseNet's growth 3x3 (stride 1, padding 1, no BatchNorm before it) as a
// TF32 implicit GEMM on mma.sync whose input is staged once per stage with its halo, the nine taps then
// read from shared memory at nine offsets.
//
// Why another kernel: cuda/fused_conv_mma.cuh stages B[kk, m] — one value per tap and pixel — so every
// input value is copied into shared memory nine times, four bytes at a time (a tap's shifted row is not
// 16-byte aligned). At 14x14 and 7x7 that is cheap and the mma kernel beats cuDNN; at 56x56 and 28x28
// (18 layers, 1.43 ms of inference at batch 32 in run 9) it lost: 0.202 ms against cuDNN's 0.156 at
// 56x56, 0.059 against 0.041 at 28x28. Per 16 reduction values a thread there issues 16 four-byte copies
// of x and 4 of w for 64 mma.sync per block, and a barrier. Here a stage is 8 input channels: their rows
// of the block's output band plus one halo row above and below, copied once, as wide as the rows allow
// (16 bytes at 56x56 and 28x28, 8 at 14x14, 4 at 7x7); and the weights' 8 x 9 values per output channel,
// contiguous in w, 16 bytes at a time. A stage feeds 9 k-steps (one per tap) of 8 mma.sync per warp
// (BM = 128): at 56x56 a thread issues 8 copies of 16 bytes per 72 reduction values, and one barrier.
//
// Mapping. A block computes 32 output channels (k0 ...) x one band of th whole output rows of one image
// (p0 ...), th = about BM / Q rows so that th * Q <= BM pixel slots (the rest are computed on padding
// and never stored). Its 4 warps split the BM pixel slots (WN = BM / 4 each; all 32 channels: MI = 2,
// NI = WN / 8 tiles of mma.m16n8k8 per k-step).
// - Shared memory of a stage: As[32][76]: row k holds w[k0 + k, c0 .. c0 + 7, 0 .. 2, 0 .. 2] as in w
//   (channel-major, 72 values; 76 apart so that the fragment reads (row g, value 9t + tap) hit 32
//   distinct banks: 76g mod 32 = 12g mod 32 covers the multiples of 4, 9t mod 4 = t); Bs[8][ch]: channel
//   c's halo, th + 2 rows of ldh = Q + 5 rounded up to a multiple of 4 floats (Q + 8 for Q % 4 == 0),
//   input column iw at index iw + 4 (16-byte aligned for the copies), the padding columns -1 and Q at
//   indices 3 and Q + 4 (zeroed once: no copy writes them), rows outside the image zeroed by the copies
//   (cp.async with src-size 0). ch = (th + 2) * ldh rounded up to 8 or 24 mod 32, so that lane (g, t)'s
//   B read (channel t, pixel g) is conflict-free where 8 pixels lie in one row.
// - k-step (stage, tap (r, s)): A(g, t) = As[g][9t + tap], B(t, pixel (jr, jq)) = Bs[t][(jr + r) * ldh
//   + jq + s + 3]: each lane finds its pixels' halo offsets once, the taps add constants.
// - Pipeline as the mma kernel's: kHaloStages stages in flight (cp.async groups), one barrier a stage.
// - Split-K and post as the mma kernel's (tc_split_reduce_kernel adds the (K, M) slabs and applies post).
// Arithmetic: TF32 operands (cvt.rna), float32 accumulation in the tensor cores' order: deterministic on
// a given GPU, within the TF32 bound of the float64 reference, the sums in order (channel chunk, tap).
#pragma once

#include <cstdint>

#include "cuda/fused_conv.cuh"
#include "cuda/fused_conv_mma.cuh"  // kMmaThreads
#include "cuda/fused_conv_tc.cuh"   // FusedGrid, tc_split_reduce_kernel
#include "cuda/launch.h"
#include "cuda/mma_tf32.cuh"

namespace ladnn::cuda {
namespace {

/// A launch shape of the halo kernel: BM pixel slots per block (32 output channels each), x's rows copied
/// `vec` floats at a time: halo_copy_width(W), the widest copy W allows (4: 56x56, 28x28; 2: 14x14; 1:
/// 7x7).
struct HaloPlan {
  int bm = 128, vec = 4;
};
/// 64: the most blocks (28x28 at 2 rows a band); 128: 2 rows of 56x56 or 4 of 28x28; 224: 4 rows of
/// 56x56 with no slot wasted, the most reuse of each A fragment (NI = 7). 8-byte copies at 64 and 128
/// (the 14x14 maps: 4 or 7 rows a band); 4-byte ones at 64 (a 7x7 map whole, 49 of the slots).
constexpr HaloPlan kHaloPlans[] = {{64, 4}, {128, 4}, {224, 4}, {64, 2}, {128, 2}, {64, 1}};

/// The widest copy of x's rows that W allows, in floats: 4, 2 or 1.
LADNN_HD int halo_copy_width(int W) {
  return W % 4 == 0 ? 4 : W % 2 == 0 ? 2 : 1;
}
constexpr int kHaloBK = 32;                // output channels per block
constexpr int kHaloDC = 8;                 // input channels per stage: 72 reduction values
constexpr int kHaloStages = 3;             // stages in flight
constexpr int kHaloLDA = kHaloDC * 9 + 4;  // 76

/// Where a launch's band and halo lie: th output rows per block, bands blocks per image, ldh floats per
/// halo row, ch floats per halo channel (see the header comment).
struct HaloLayout {
  int th = 1, bands = 1, ldh = 0, ch = 0;
};

/// The bands as even as they go: as few as BM slots allow, th rows each (the last may be shorter).
LADNN_HD HaloLayout halo_layout(const FusedConvGeom& g, int bm) {
  HaloLayout L;
  const int most = bm / g.Q > 0 ? bm / g.Q : 1;
  L.bands = (g.P + most - 1) / most;
  L.th = (g.P + L.bands - 1) / L.bands;
  L.ldh = (g.Q + 5 + 3) / 4 * 4;  // indices 3 .. Q + 4, rows 16-byte aligned (Q % 4 == 0: Q + 8)
  L.ch = (L.th + 2) * L.ldh;
  while (L.ch % 32 != 8 && L.ch % 32 != 24) L.ch += 4;
  return L;
}

/// The kernel takes the call: a 3x3 window, stride 1, padding 1, no BatchNorm before it (the padding is
/// zero after pre, which staging pre(x) would not give), the weight read plainly; channels in stages of
/// 8; rows copied plan.vec floats at a time, the widest W allows (halo_copy_width: Auto has no
/// narrower duplicates to time; x_img a multiple of it too, the launcher checks the pointers); at least
/// two output rows per band (Q <= BM / 2: the copies' slots per thread assume it).
inline bool halo_takes(const FusedConvGeom& g, bool pre_on, const HaloPlan& plan) {
  return g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && !pre_on &&
         !g.w_flipped && g.C % kHaloDC == 0 && g.C <= kFusedMaxC && g.W % plan.vec == 0 &&
         g.x_img % plan.vec == 0 && plan.vec == halo_copy_width(g.W) && 2 * g.Q <= plan.bm;
}

LADNN_HD int halo_chunks(const FusedConvGeom& g) {
  return g.C / kHaloDC;
}
inline int halo_split_count(const FusedConvGeom& g, int chunks_per_split) {
  return split_count(halo_chunks(g), chunks_per_split);
}
inline FusedGrid halo_grid(const FusedConvGeom& g, int bm) {
  return {static_cast<unsigned>(int64_t(g.N) * halo_layout(g, bm).bands),
          static_cast<unsigned>((g.K + kHaloBK - 1) / kHaloBK)};
}
/// Dynamic shared memory of a launch (floats): the stages, post's coefficients.
LADNN_HD int halo_smem_floats(const HaloLayout& L) {
  return kHaloStages * (kHaloBK * kHaloLDA + kHaloDC * L.ch) + 3 * kHaloBK;
}
/// ... the most any call the kernel takes can ask at BM (for the launcher's opt-in past 48 KB): ch is
/// at most (BM / Q + 2) (Q + 8) + 12 = BM + 8 BM / Q + 2 Q + 28, over 2 <= Q <= BM / 2 at most 5 BM + 32
/// (at Q = 2).
constexpr int halo_smem_floats_bound(int bm) {
  return kHaloStages * (kHaloBK * kHaloLDA + kHaloDC * (5 * bm + 32)) + 3 * kHaloBK;
}

/// Grid halo_grid x splits, kMmaThreads threads, halo_smem_floats(L) * 4 bytes of dynamic shared memory,
/// L = halo_layout(g, BM); x 4 * VEC-byte and w 16-byte aligned; halo_takes(g, false, {BM, VEC}).
template <int BM, int VEC>
__global__ void __launch_bounds__(kMmaThreads)
    fused_conv_halo_kernel(FusedConvGeom g, HaloLayout L, const float* __restrict__ x,
                           const float* __restrict__ w, FusedBn post, float* __restrict__ y,
                           int chunks_per_split, float* __restrict__ partial) {
  pdl_enter();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync on TF32 and cp.async need sm_80; the launcher never launches this there
#else
  constexpr int BK = kHaloBK, DC = kHaloDC, kStages = kHaloStages, LDA = kHaloLDA;
  constexpr int kA = BK * LDA;                           // floats of a stage's weights
  constexpr int WN = BM / 4, NI = WN / 8, MI = BK / 16;  // warp w: 32 channels x slots [w WN, (w + 1) WN)
  static_assert(BM % 32 == 0, "four warps of whole 8-pixel tiles");
  static_assert(VEC == 4 || VEC == 2 || VEC == 1, "16-, 8- or 4-byte copies of x");
  LADNN_DYNAMIC_SMEM(smem);
  const int kStage = kA + DC * L.ch;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int k0 = blockIdx.y * BK, n = blockIdx.x / L.bands, p0 = (blockIdx.x - n * L.bands) * L.th;
  const int HW = g.H * g.W, K = g.K, CRS = g.C * 9, Q = g.Q, M = g.M();
  const int chunks = halo_chunks(g), rows = L.th + 2;
  float* s_post = smem + kStages * kStage;  // mean[BK], scale[BK], shift[BK]
  const int chunk0 = partial ? int(blockIdx.z) * chunks_per_split : 0;
  int chunk_end = partial ? chunk0 + chunks_per_split : chunks;
  if (chunk_end > chunks) chunk_end = chunks;
  const int n_chunks = chunk_end - chunk0;
  const float* ximg = x + n * g.x_img;

  // This thread's copies of x, the same slots in every stage: copy tid + 128 i of the stage's DC * rows *
  // Q / VEC (channel, halo row, VEC-float column). At most 2 BM (rows * Q <= th Q + 2 Q <= 2 BM) values
  // per channel, 16 BM over 8 channels: 16 BM / VEC copies, BM / (8 VEC) per thread. s: its place in Bs
  // (-1: no copy); x: its offset from channel c0's plane (-1: a row outside the image, zeros).
  constexpr int kXSlots = BM / (8 * VEC);
  const int qv = Q / VEC, per_c = rows * qv;
  int xs_s[kXSlots], xs_x[kXSlots];
#pragma unroll
  for (int i = 0; i < kXSlots; ++i) {
    const int idx = tid + i * kMmaThreads;
    xs_s[i] = xs_x[i] = -1;
    if (idx < DC * per_c) {
      const int c = idx / per_c, rest = idx - c * per_c, row = rest / qv, col = VEC * (rest - row * qv);
      const int ih = p0 - 1 + row;
      xs_s[i] = c * L.ch + row * L.ldh + 4 + col;
      if (ih >= 0 && ih < g.H) xs_x[i] = c * HW + ih * g.W + col;
    }
  }

  auto issue = [&](int j) {  // chunk0 + j's copies into stage j % kStages
    float* As = smem + (j % kStages) * kStage;
    float* Bs = As + kA;
    const int c0 = (chunk0 + j) * DC;
    constexpr int kRowCopies = DC * 9 / 4, kACopies = BK * kRowCopies;  // 18 a row, 576
#pragma unroll
    for (int i = 0; i < (kACopies + kMmaThreads - 1) / kMmaThreads; ++i) {
      const int idx = tid + i * kMmaThreads;
      if (idx < kACopies) {
        const int row = idx / kRowCopies, col = 4 * (idx - row * kRowCopies);
        const bool in = k0 + row < K;
        cp_async_16(As + row * LDA + col, in ? w + int64_t(k0 + row) * CRS + c0 * 9 + col : w, in);
      }
    }
    const float* xc = ximg + int64_t(c0) * HW;
#pragma unroll
    for (int i = 0; i < kXSlots; ++i) {
      if (xs_s[i] < 0) continue;
      const bool in = xs_x[i] >= 0;
      cp_async_vec<VEC>(Bs + xs_s[i], in ? xc + xs_x[i] : x, in);
    }
  };

#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < n_chunks) issue(j);
    cp_async_commit();
  }
  // The padding columns -1 and Q of every halo row of every stage: zero, and never written again.
  for (int i = tid; i < kStages * DC * rows; i += kMmaThreads) {
    const int s = i / (DC * rows), rest = i - s * DC * rows, c = rest / rows, row = rest - c * rows;
    float* r = smem + s * kStage + kA + c * L.ch + row * L.ldh;
    r[3] = 0.0f;
    r[Q + 4] = 0.0f;
  }
  if (post.on && !partial)
    for (int r = tid; r < BK; r += kMmaThreads)
      if (k0 + r < K) fused_bn_coef(post, k0 + r, s_post[r], s_post[BK + r], s_post[2 * BK + r]);

  // This lane's B reads: pixel slot j = warp WN + 8 ni + g of the band at halo offset (jr, jq + 3); a slot
  // past the band reads offset 0 (any value: its column is never stored).
  int hb[NI];
#pragma unroll
  for (int ni = 0; ni < NI; ++ni) {
    const int j = warp * WN + ni * 8 + gq, jr = j / Q;
    hb[ni] = j < L.th * Q ? jr * L.ldh + (j - jr * Q) + 3 : 0;
  }
  const int a_lane = gq * LDA + 9 * tq, b_lane = tq * L.ch;

  float acc[MI][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;

  for (int j = 0; j < n_chunks; ++j) {
    cp_async_wait<kStages - 2>();  // this thread's copies of stage j have landed
    __syncthreads();               // everyone's have; everyone is done with stage j - 1; the zeros are in
    if (j + kStages - 1 < n_chunks) issue(j + kStages - 1);
    cp_async_commit();
    const float* As = smem + (j % kStages) * kStage + a_lane;
    const float* Bs = smem + (j % kStages) * kStage + kA + b_lane;
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      const int r = tap / 3, s = tap - 3 * r, toff = r * L.ldh + s;
      uint32_t a[MI][4], b[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const float* row = As + mi * 16 * LDA + tap;  // A(16 mi + g, t) = w[k, c0 + t, r, s]
        a[mi][0] = tf32_bits(row[0]);
        a[mi][1] = tf32_bits(row[8 * LDA]);
        a[mi][2] = tf32_bits(row[36]);  // channel t + 4
        a[mi][3] = tf32_bits(row[8 * LDA + 36]);
      }
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const float* col = Bs + hb[ni] + toff;  // B(t, pixel) = x[c0 + t, ih, iw] of the tap
        b[ni][0] = tf32_bits(col[0]);
        b[ni][1] = tf32_bits(col[4 * L.ch]);
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma_tf32_16x8x8(acc[mi][ni], a[mi], b[ni]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // post's coefficients, whatever n_chunks was

  // Epilogue: lane (g, t) holds (row g or g + 8, slots 2t and 2t + 1) of each tile. Slot j of the band is
  // plane position p0 Q + j: the two slots are adjacent in y. They are stored while j < `filled` (the
  // band's slots that are output pixels); with an odd Q the second may be past it when the first is not.
  const int PQ = g.P * Q, filled = min(L.th * Q, PQ - p0 * Q);
  int64_t yoff[NI];  // slot 2t's offset in y (or in the block's partial slab), -1 past the band
  int n_in[NI];      // how many of the lane's two slots are pixels: 0, 1 or 2
#pragma unroll
  for (int ni = 0; ni < NI; ++ni) {
    const int j = warp * WN + ni * 8 + 2 * tq, pq = p0 * Q + j;
    n_in[ni] = j + 1 < filled ? 2 : j < filled ? 1 : 0;
    yoff[ni] = n_in[ni] == 0 ? -1
               : partial     ? int64_t(blockIdx.z) * K * M + int64_t(n) * PQ + pq
                             : n * g.y_img + pq;
  }
  const bool pair = !partial && reinterpret_cast<uintptr_t>(y) % 8 == 0;  // and yoff even: per pair
  const int64_t row_stride = partial ? M : PQ;
  float* out = partial ? partial : y;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // rows g and g + 8
      const int row = mi * 16 + gq + 8 * h, k = k0 + row;
      if (k >= K) continue;
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        if (n_in[ni] == 0) continue;
        float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
        if (!partial) {
          v0 = fused_bn_apply(post, s_post, s_post + BK, s_post + 2 * BK, row, v0);
          v1 = fused_bn_apply(post, s_post, s_post + BK, s_post + 2 * BK, row, v1);
        }
        const int64_t off = yoff[ni] + int64_t(k) * row_stride;
        if (pair && n_in[ni] == 2 && off % 2 == 0) {
          *reinterpret_cast<float2*>(out + off) = float2{v0, v1};
        } else {
          out[off] = v0;
          if (n_in[ni] == 2) out[off + 1] = v1;
        }
      }
    }
#endif
}

/// Calls `run.template go_halo<BM, VEC>()` for `plan` (one of kHaloPlans; anything else runs as {128, 4}).
template <class Run>
void dispatch_fused_halo(const HaloPlan& plan, const Run& run) {
  if (plan.vec == 1) return run.template go_halo<64, 1>();
  if (plan.vec == 2) {
    if (plan.bm == 64) return run.template go_halo<64, 2>();
    return run.template go_halo<128, 2>();
  }
  if (plan.bm == 64) return run.template go_halo<64, 4>();
  if (plan.bm == 224) return run.template go_halo<224, 4>();
  run.template go_halo<128, 4>();
}

}  // namespace
}  // namespace ladnn::cuda
