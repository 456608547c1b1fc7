// cuda/conv_wgrad_halo.cuh — the weight gradient of DenseNet's growth 3x3 (stride 1, padding 1) as a TF32
// GEMM on mma.sync whose input is staged once per band with its halo, the nine taps then read from shared
// memory at nine offsets: cuda/fused_conv_halo.cuh's staging, turned to the weight gradient.
//
// Why another kernel: at batch 64 the growth 3x3s' weight gradients took 5.5 ms of run 9's 42.4 ms step
// (Auto's timings), cuDNN's at 56x56 and 28x28 at about 44 TFLOP/s (0.34 and 0.084 ms a layer), at 14x14
// at 18 (0.052). cuda/conv_wgrad_tc.cuh, the wmma form, gathers each tap of each pixel four bytes at a
// time, nine copies of every input value: 1.03 ms at 56x56. Here a block stages a band of whole output
// rows: dy's 32 channels of it, and x's 32 channels of it with one halo row above and below, each value
// copied once (16 bytes at a time where the rows allow). The band's pixels are then the reduction: per
// k-step of 8 pixels a warp reads its A fragments of dy once and multiplies them with the B fragments of
// all nine taps, which are the same x rows read at nine offsets.
//
// The GEMM: dW[k, c, r, s] = sum over pixels (n, p, q) of dy[n, k, p, q] * x[n, c, p + r - 1, q + s - 1]
// (0 outside the image). Per tap (r, s) that is a (K x pixels) x (pixels x C) product.
//
// Mapping. A block computes 32 output channels (k0 ...: dy's) x 32 input channels (c0 ...: x's) x 9 taps,
// summed over a run of bands (blockIdx.z's split: bands b0 .. b0 + bands_per_split - 1 of the N * bands
// (image, band) pairs, in order). A band is th whole output rows (th * Q <= BM pixel slots, as the forward
// halo kernel's bands). Its 4 warps take 8 input channels each; a warp holds 2 (dy channel halves of 16)
// x 9 (taps) tiles of mma.m16n8k8: 72 accumulators a thread.
// - Shared memory of a stage: As[32][ldp]: dy row k holds the band's th * Q values (plane positions
//   p0 Q ...; contiguous in dy), then zeros up to steps * 8 (ldp = steps * 8 + 4: 4 mod 8, so lane (g, t)'s
//   A read (row g, pixel t) hits 32 banks); Bs[32][ch]: channel c's halo, th + 2 rows of ldh floats, input
//   column iw at index iw + 4, the padding columns -1 and Q at indices 3 and Q + 4 (zeroed once), rows
//   outside the image zeroed by the copies (cp.async with src-size 0); ch = 4 mod 8, so lane (g, t)'s B
//   read (channel g, pixel t) hits 32 banks where the 4 pixels lie in one row.
// - A table of the band's pixel slots' halo offsets (slot j: row j / Q, column j % Q + 3; a slot past the
//   band: offset 3, a zero column, times a zero dy).
// - k-step (8 pixel slots j0 ..): A(g, t) = As[16 mi + g][j0 + t]; B(t, channel g) of tap (r, s) =
//   Bs[8 warp + g][off(j0 + t) + r ldh + s].
// - Pipeline: two stages (cp.async groups), the next band's copies in flight while this one is multiplied.
// - Split: each split writes its (K, C * 9) slab of a workspace, and conv_wgrad_tc.cuh's
//   wgrad_reduce_kernel adds the slabs in split order (with one split the block writes dW). No atomics:
//   the same bits on every run.
// Arithmetic: TF32 operands (cvt.rna), float32 accumulation in the tensor cores' order, pixels in order
// within a split; within the TF32 bound of the float64 reference.
// With LADNN_TILE_EMULATION it compiles as plain C++ for tests/cuda_tile_emulation_test.cpp.
#pragma once

#include <cstdint>

#include "cuda/conv_wgrad_tc.cuh"    // wgrad_reduce_kernel
#include "cuda/fused_conv.cuh"       // FusedConvGeom, split_chunks
#include "cuda/fused_conv_halo.cuh"  // halo_copy_width
#include "cuda/launch.h"
#include "cuda/mma_tf32.cuh"

namespace ladnn::cuda {
namespace {

/// A launch shape: bands of at most BM pixel slots, x's and dy's rows copied `vec` floats at a time
/// (halo_copy_width(W): 4 at 56x56 and 28x28, 2 at 14x14, 1 at 7x7).
struct WgradHaloPlan {
  int bm = 128, vec = 4;
};
/// 64: one row of 56x56 (2 of 28x28) a band, three blocks an SM by shared memory; 128: two rows of 56x56
/// (4 of 28x28, 7 of 14x14); a 7x7 image whole at 64.
constexpr WgradHaloPlan kWgradHaloPlans[] = {{64, 4}, {128, 4}, {64, 2}, {128, 2}, {64, 1}};

constexpr int kWhBK = 32;        // dy channels (output channels of the convolution) per block
constexpr int kWhBC = 32;        // x channels per block: 8 a warp
constexpr int kWhThreads = 128;  // 4 warps
constexpr int kWhStages = 2;
constexpr int kWhLDT = kWhBC * 9 + 4;  // the epilogue's tile rows in shared memory (292 floats)

/// Where a launch's bands lie: th output rows a band, bands per image, `steps` k-steps of 8 pixel slots a
/// band, ldp floats per dy row, ldh per halo row, ch per halo channel (see the header comment).
struct WgradHaloLayout {
  int th = 1, bands = 1, steps = 1, ldp = 0, ldh = 0, ch = 0;
};

/// The bands as even as they go (as halo_layout's): as few as BM slots allow, th rows each.
LADNN_HD WgradHaloLayout wgrad_halo_layout(const FusedConvGeom& g, int bm) {
  WgradHaloLayout L;
  const int most = bm / g.Q > 0 ? bm / g.Q : 1;
  L.bands = (g.P + most - 1) / most;
  L.th = (g.P + L.bands - 1) / L.bands;
  L.steps = (L.th * g.Q + 7) / 8;
  L.ldp = L.steps * 8 + 4;        // 4 mod 8
  L.ldh = (g.Q + 5 + 3) / 4 * 4;  // indices 3 .. Q + 4, rows 16-byte aligned
  L.ch = (L.th + 2) * L.ldh;      // a multiple of 4; made 4 mod 8
  if (L.ch % 8 == 0) L.ch += 4;
  return L;
}

/// The kernel takes the call: a 3x3 window, stride 1, padding 1 (so P = H, Q = W), the weight read
/// plainly; x's channels in whole blocks of 32; 4 <= W <= BM (a band is at least one row); rows copied
/// plan.vec floats at a time, the widest W allows (x_img and dy's y_img multiples of it too; the launcher
/// checks the pointers).
inline bool wgrad_halo_takes(const FusedConvGeom& g, const WgradHaloPlan& plan) {
  return g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && !g.w_flipped &&
         g.P == g.H && g.Q == g.W && g.C % kWhBC == 0 && g.K > 0 && g.N > 0 && g.Q >= 4 && g.Q <= plan.bm &&
         plan.vec == halo_copy_width(g.W) && g.x_img % plan.vec == 0 && g.y_img % plan.vec == 0;
}

/// The reduction's chunks: the (image, band) pairs.
LADNN_HD int wgrad_halo_chunks(const FusedConvGeom& g, const WgradHaloLayout& L) {
  return g.N * L.bands;
}
/// The grid: (x's channel blocks, dy's channel blocks, splits).
inline WgradGrid wgrad_halo_grid(const FusedConvGeom& g, int splits) {
  return {static_cast<unsigned>(g.C / kWhBC), static_cast<unsigned>((g.K + kWhBK - 1) / kWhBK),
          static_cast<unsigned>(splits)};
}
/// Splits of the bands for `waves` blocks per SM, two bands or more a split (split_chunks). Returns the
/// splits and sets bands_per_split.
inline int wgrad_halo_splits(const FusedConvGeom& g, const WgradHaloPlan& plan, int sms, int waves,
                             int& bands_per_split) {
  const WgradGrid gr = wgrad_halo_grid(g, 1);
  return split_chunks(int64_t(gr.x) * gr.y, wgrad_halo_chunks(g, wgrad_halo_layout(g, plan.bm)), sms, waves,
                      2, bands_per_split);
}
inline int wgrad_halo_split_count(const FusedConvGeom& g, const WgradHaloPlan& plan, int bands_per_split) {
  return split_count(wgrad_halo_chunks(g, wgrad_halo_layout(g, plan.bm)), bands_per_split);
}

/// Dynamic shared memory of a launch (floats): the two stages (or the epilogue's tile, if larger: small
/// maps), then the pixel slots' offsets (ints).
LADNN_HD int wgrad_halo_smem_floats(const WgradHaloLayout& L) {
  const int stages = kWhStages * (kWhBK * L.ldp + kWhBC * L.ch), tile = kWhBK * kWhLDT;
  return (stages > tile ? stages : tile) + L.steps * 8;
}
/// ... the most any call the kernel takes can ask at BM (for the launcher's opt-in past 48 KB): with
/// 4 <= Q <= BM, th Q <= BM, so ldp <= BM + 12 and ch <= (BM / Q + 2)(Q + 8) + 4 <= 3 BM + 28 (at Q = 4
/// and at Q = BM), steps * 8 <= BM + 8. The largest plan's bound covers every plan.
constexpr int wgrad_halo_smem_floats_bound(int bm) {
  return kWhStages * (kWhBK * (bm + 12) + kWhBC * (3 * bm + 28)) + bm + 8;
}
constexpr int kWgradHaloMaxBM = 128;

/// Grid wgrad_halo_grid(g, splits), kWhThreads threads, wgrad_halo_smem_floats(L) * 4 bytes of dynamic
/// shared memory, L = wgrad_halo_layout(g, bm) of a plan {bm, VEC} that wgrad_halo_takes(g, ...) (the
/// kernel reads the band's size from L: one instantiation per copy width); dy and x 4 * VEC-byte
/// aligned. dy: (N, K, P, Q), images g.y_img apart; x: (N, C, H, W), images g.x_img apart; out: dW (K, C,
/// 3, 3) with one split, else the workspace's (splits, K, C * 9) slabs.
template <int VEC>
__global__ void __launch_bounds__(kWhThreads)
    conv_wgrad_halo_kernel(FusedConvGeom g, WgradHaloLayout L, const float* __restrict__ dy,
                           const float* __restrict__ x, int bands_per_split, float* __restrict__ out) {
  pdl_enter();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync on TF32 and cp.async need sm_80; the launcher never launches this there
#else
  constexpr int BK = kWhBK, BC = kWhBC, kStages = kWhStages;
  LADNN_DYNAMIC_SMEM(smem);
  const int kA = BK * L.ldp, kStage = kA + BC * L.ch;
  // the pixel slots' halo offsets, after the stages or the epilogue's tile
  int* s_off =
      reinterpret_cast<int*>(smem + (kStages * kStage > BK * kWhLDT ? kStages * kStage : BK * kWhLDT));
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int c0 = blockIdx.x * BC, k0 = blockIdx.y * BK;
  const int Q = g.Q, PQ = g.P * Q, HW = g.H * g.W, rows = L.th + 2, slots = L.th * Q;
  const int b0 = int(blockIdx.z) * bands_per_split;
  int b_end = b0 + bands_per_split;
  if (b_end > g.N * L.bands) b_end = g.N * L.bands;
  const int n_bands = b_end - b0;

  // The copies of a stage. A warp takes rows warp, warp + 4, ... (x: (channel, halo row) pairs; dy: its
  // channels), `per` lanes a row (the row's copies <= 8 or 16: two or four rows a warp at once).
  const int qv = Q / VEC, sv = slots / VEC;
  auto copy = [](float* s, const float* p, bool in) { cp_async_vec<VEC>(s, p, in); };
  auto issue = [&](int j) {  // band b0 + j's copies into stage j % kStages
    float* As = smem + (j % kStages) * kStage;
    float* Bs = As + kA;
    const int b = b0 + j, n = b / L.bands, p0 = (b - n * L.bands) * L.th;
    const float* xc = x + n * g.x_img + int64_t(c0) * HW;
    const float* dyk = dy + n * g.y_img + int64_t(k0) * PQ + p0 * Q;
    const int xper = qv <= 8 ? 8 : qv <= 16 ? 16 : 32, xsub = lane / xper, xcol = lane - xsub * xper;
    for (int r = warp * (32 / xper) + xsub; r < BC * rows; r += 4 * (32 / xper)) {
      const int c = r / rows, hr = r - c * rows, ih = p0 - 1 + hr;
      const bool in = ih >= 0 && ih < g.H;
      float* dst = Bs + c * L.ch + hr * L.ldh + 4;
      for (int i = xcol; i < qv; i += xper)
        copy(dst + i * VEC, in ? xc + int64_t(c) * HW + ih * g.W + i * VEC : x, in);
    }
    const int valid = PQ - p0 * Q < slots ? PQ - p0 * Q : slots;  // the band's values inside the plane
    const int dper = sv <= 8 ? 8 : sv <= 16 ? 16 : 32, dsub = lane / dper, dcol = lane - dsub * dper;
    for (int k = warp * (32 / dper) + dsub; k < BK; k += 4 * (32 / dper)) {
      const bool kin = k0 + k < g.K;
      float* dst = As + k * L.ldp;
      for (int i = dcol; i < sv; i += dper) {
        const bool in = kin && i * VEC < valid;
        copy(dst + i * VEC, in ? dyk + int64_t(k) * PQ + i * VEC : dy, in);
      }
    }
  };

  if (n_bands > 0) issue(0);
  cp_async_commit();
  // What no copy writes, once for both stages: dy's slots past the band (zeros), the halo rows' padding
  // columns -1 and Q (zeros); and the slots' offsets.
  for (int i = tid; i < kStages * BK * (L.ldp - slots); i += kWhThreads) {
    const int s = i / (BK * (L.ldp - slots)), rest = i - s * BK * (L.ldp - slots);
    const int k = rest / (L.ldp - slots), col = slots + (rest - k * (L.ldp - slots));
    smem[s * kStage + k * L.ldp + col] = 0.0f;
  }
  for (int i = tid; i < kStages * BC * rows; i += kWhThreads) {
    const int s = i / (BC * rows), rest = i - s * BC * rows, c = rest / rows, hr = rest - c * rows;
    float* r = smem + s * kStage + kA + c * L.ch + hr * L.ldh;
    r[3] = 0.0f;
    r[Q + 4] = 0.0f;
  }
  for (int j = tid; j < L.steps * 8; j += kWhThreads) {
    const int jr = j / Q;
    s_off[j] = j < slots ? jr * L.ldh + (j - jr * Q) + 3 : 3;
  }

  float acc[2][9][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int tap = 0; tap < 9; ++tap)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][tap][r] = 0.0f;

  for (int j = 0; j < n_bands; ++j) {
    if (j + 1 < n_bands) issue(j + 1);  // into the other stage, free since the barrier ending band j - 1
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of band j have landed
    __syncthreads();     // everyone's have; the zeros and offsets are in
    const float* As = smem + (j % kStages) * kStage + gq * L.ldp + tq;
    const float* Bs = smem + (j % kStages) * kStage + kA + (warp * 8 + gq) * L.ch;
    for (int st = 0; st < L.steps; ++st) {
      const int j0 = st * 8;
      uint32_t a[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const float* row = As + mi * 16 * L.ldp + j0;  // A(16 mi + g, t) = dy[k0 + 16 mi + g, slot j0 + t]
        a[mi][0] = tf32_bits(row[0]);
        a[mi][1] = tf32_bits(row[8 * L.ldp]);
        a[mi][2] = tf32_bits(row[4]);  // slot t + 4
        a[mi][3] = tf32_bits(row[8 * L.ldp + 4]);
      }
      const int o0 = s_off[j0 + tq], o1 = s_off[j0 + tq + 4];
#pragma unroll
      for (int tap = 0; tap < 9; ++tap) {
        const int toff = (tap / 3) * L.ldh + tap % 3;
        uint32_t b[2];  // B(t, channel g) = x[c0 + 8 warp + g] at slot t's pixel moved by the tap
        b[0] = tf32_bits(Bs[o0 + toff]);
        b[1] = tf32_bits(Bs[o1 + toff]);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) mma_tf32_16x8x8(acc[mi][tap], a[mi], b);
      }
    }
    __syncthreads();  // everyone is done with stage j % kStages before band j + 2's copies go there
  }
  cp_async_wait<0>();

  // Epilogue: lane (g, t) holds rows (dy channels) g and g + 8 of each half, columns (x channels) 2t and
  // 2t + 1 of its warp's 8, for every tap. The block's tile goes through shared memory (the stages are
  // free: the loop ended with a barrier), row k holding dW[k0 + k, c0 .. c0 + 31, 0 .. 8], 288 floats
  // contiguous in dW; then each row is stored 16 bytes at a time (k C 9 + c0 9 is a multiple of 4: C and c0
  // are multiples of 32), not 4 bytes to 32 scattered places per instruction.
  float* tile = smem;  // [BK][kWhLDT]
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float* dst = tile + (mi * 16 + gq + 8 * h) * kWhLDT + (warp * 8 + 2 * tq + e) * 9;
#pragma unroll
        for (int tap = 0; tap < 9; ++tap) dst[tap] = acc[mi][tap][2 * h + e];
      }
  __syncthreads();
  float* slab = out + int64_t(blockIdx.z) * g.K * g.C * 9 + int64_t(k0) * g.C * 9 + c0 * 9;
  const bool vec = reinterpret_cast<uintptr_t>(out) % 16 == 0;
  constexpr int kRow4 = BC * 9 / 4;  // 72 float4 a row
  for (int i = tid; i < BK * kRow4; i += kWhThreads) {
    const int k = i / kRow4, col = 4 * (i - k * kRow4);
    if (k0 + k >= g.K) break;  // (rows in order: every later i is past K too)
    const float* src = tile + k * kWhLDT + col;
    float* dst = slab + int64_t(k) * g.C * 9 + col;
    if (vec) {
      *reinterpret_cast<float4*>(dst) = float4{src[0], src[1], src[2], src[3]};
    } else {
      for (int q = 0; q < 4; ++q) dst[q] = src[q];
    }
  }
#endif
}

/// Calls `run.template go_wgrad_halo<VEC>(plan.bm)` for `plan` (plan.vec 4, 2 or 1; anything else runs as
/// 4).
template <class Run>
void dispatch_wgrad_halo(const WgradHaloPlan& plan, const Run& run) {
  if (plan.vec == 1) return run.template go_wgrad_halo<1>(plan.bm);
  if (plan.vec == 2) return run.template go_wgrad_halo<2>(plan.bm);
  run.template go_wgrad_halo<4>(plan.bm);
}

}  // namespace
}  // namespace ladnn::cuda
