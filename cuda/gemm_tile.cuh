// cuda/gemm_tile.cuh — the tiled shared-memory SGEMM core shared by cuda/gemm.cu (plain matrices) and
// cuda/conv2d.cu (implicit-GEMM convolution). nvcc only (or the host emulation at the end of this comment).
//
// The product C (M, N) = sum over k < K of A(m, k) * B(k, n), where A and B are not necessarily
// matrices in memory: each is an *operand* object that says how to fetch element (outer, k) — outer =
// m for A, n for B. A plain matrix is one operand (DenseOperand below); the convolution's operands
// compute their element from the image on the fly (im2col without the column buffer: "implicit GEMM").
// What happens to each finished C(m, n) is an *epilogue* object (alpha/beta into a matrix, + bias into
// an NCHW tensor, a split-K partial, ...). One kernel template serves every combination.
//
// The kernel (the classic register-blocked SGEMM, as in CUTLASS's SIMT path / siboehm's SGEMM notes):
//   * a block computes a BM x BN tile of C; each of its threads an TM x TN sub-tile held in registers;
//   * the reduction runs in k-tiles of BK = 8: the block copies the BM x 8 slice of A and the 8 x BN
//     slice of B into shared memory, then each thread does TM * TN FMAs per k reading TM + TN floats
//     from shared memory (8x8 = 64 FMAs per 16 loads for the large tile);
//   * double buffering: two shared buffers; while the block computes from one, each thread already
//     holds the next k-tile's elements in registers (loads in flight during the FMAs) and writes them
//     into the other buffer afterwards — one __syncthreads per k-tile;
//   * shared tiles are stored k-major (s[k][outer]) so a thread's TM (TN) values for one k are
//     contiguous: float4/float2 loads. Rows are padded by 4 floats, which makes the transposing stores
//     of k-contiguous operands conflict-free (see OperandTile) and keeps 16-byte alignment;
//   * a thread's outputs are split in two halves BM/2 (BN/2) apart instead of TM adjacent rows: the
//     float4 fragment loads of a warp then hit consecutive addresses (no bank conflicts).
// Ragged edges: elements outside [0, M) x [0, K) or [0, K) x [0, N) are fetched as 0, so partial
// tiles need no special path; the epilogue skips outputs outside M x N.
//
// Tile shapes (TilePlan picks one per call):
//   Large  128 x 128, 8 x 8 per thread, 256 threads — products with at least one Large tile per SM;
//   Medium  64 x  64, 8 x 8 per thread,  64 threads — smaller products (4x the blocks of Large);
//   Narrow  32 x 128, 4 x 8 per thread, 128 threads — M <= 32 (DenseNet's 3x3 convs have 32 outputs).
// Split-K (for long, thin reductions such as a convolution's weight gradient): blockIdx.z = batch *
// splits + split, and split s reduces k in [s * k_per_split, (s + 1) * k_per_split); the epilogue
// receives `split` and writes a partial that a second kernel sums in a fixed order (deterministic).
//
// Everything is in an anonymous namespace: each .cu gets its own copy (no relocatable device code).
//
// Host emulation: with LADNN_TILE_EMULATION defined (and the CUDA keywords defined by the includer, as
// tests/cuda_tile_emulation_test.cpp does) everything but the launch code compiles as plain C++, so the
// kernel, its thread mappings and the operands run on the CPU — one host thread per CUDA thread — and
// can be tested on a machine without a GPU.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/launch.h"  // pdl_enter(); launch_kernel only under nvcc

#ifndef LADNN_TILE_EMULATION
#include <cuda_runtime.h>

#include "cuda/check.h"
#include "cuda/runtime.h"
#endif

namespace ladnn::cuda {
namespace {

template <int BM_, int BN_, int TM_, int TN_, int MIN_BLOCKS>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, TM = TM_, TN = TN_;
  static constexpr int BK = 8;
  static constexpr int kPad = 4;             // floats of padding per shared row
  static constexpr int kThreadsN = BN / TN;  // threads along n
  static constexpr int kThreads = (BM / TM) * kThreadsN;
  // Blocks per SM that __launch_bounds__ asks registers for: 65536 / (kThreads * kMinBlocks) registers
  // per thread at most (Large: 128 — two blocks, 16 warps per SM; the smaller tiles get more registers,
  // since their per-thread tiles of 8 or 16 loads spill at 128).
  static constexpr int kMinBlocks = MIN_BLOCKS;
  static_assert(TM % 2 == 0 && TN % 2 == 0 && (TM / 2 == 2 || TM / 2 == 4) && (TN / 2 == 2 || TN / 2 == 4),
                "a thread's outputs are two runs of 2 or 4 (float2 / float4 fragment loads)");
  // OperandTile's fixed thread-to-element mappings need the thread count to be a multiple of BK and of
  // both outer extents, and every thread to fetch a whole number of elements per k-tile.
  static_assert(kThreads % BK == 0 && kThreads % BM == 0 && kThreads % BN == 0, "thread mapping");
  static_assert((BM * BK) % kThreads == 0 && (BN * BK) % kThreads == 0, "whole loads per thread");
};
using TileLarge = TileConfig<128, 128, 8, 8, 2>;  // <= 128 registers
using TileMedium = TileConfig<64, 64, 8, 8, 4>;   // <= 255 registers
using TileNarrow = TileConfig<32, 128, 4, 8, 3>;  // <= 168 registers

// ---- operands -------------------------------------------------------------------------------------------
// An operand type Op provides
//   static constexpr bool kFastK;   true when consecutive k are adjacent in memory (then the threads of
//                                   a block walk k fastest, so their loads coalesce), false when
//                                   consecutive outer indices are (threads walk outer fastest)
//   struct Outer;                   what a thread precomputes once about one row (A) / column (B) it
//                                   fetches: the fetch positions never change between k-tiles
//   Outer outer(int o, int batch) const;     for 0 <= o < extent (never touches memory)
//   float at(const Outer&, int k) const;     element (o, k) for 0 <= k < K (zero-padding is the
//                                            operand's business; the tile bounds are the kernel's)

/// A strided matrix: element (o, k) of batch item b at p[b * stride_batch + o * stride_o + k * stride_k].
/// FAST_K says which of stride_k / stride_o is the unit one (the coalescing direction).
template <bool FAST_K>
struct DenseOperand {
  static constexpr bool kFastK = FAST_K;
  const float* p;
  int64_t stride_o, stride_k, stride_batch;
  struct Outer {
    const float* base;
  };
  __device__ __forceinline__ Outer outer(int o, int batch) const {
    return {p + batch * stride_batch + o * stride_o};
  }
  __device__ __forceinline__ float at(const Outer& r, int k) const { return __ldg(r.base + k * stride_k); }
};

/// Epilogue of a plain GEMM: C (M, N) of batch item b, at c + b * stride_batch, = alpha * acc + beta * C.
/// beta == 0 never reads C (it may hold garbage or NaN).
struct DenseEpilogue {
  float* c;
  int64_t ldc, stride_batch;
  float alpha, beta;
  __device__ __forceinline__ void operator()(int m, int n, float acc, int batch, int /*split*/) const {
    float* p = c + batch * stride_batch + m * ldc + n;
    *p = beta == 0.0f ? alpha * acc : fmaf(beta, *p, alpha * acc);
  }
};

/// op(A) of a row-major GEMM with BLAS's transpose flag (cuda/gemm.h), outer index m: element (m, k) at
/// A[m * lda + k] (k contiguous), or A[k * lda + m] when transposed (m contiguous).
template <bool TRANS_A>
DenseOperand<!TRANS_A> gemm_operand_a(const float* A, int64_t lda, int64_t stride_batch) {
  return {A, TRANS_A ? 1 : lda, TRANS_A ? lda : 1, stride_batch};
}
/// op(B), outer index n: element (k, n) at B[k * ldb + n] (n contiguous), or B[n * ldb + k] when transposed.
template <bool TRANS_B>
DenseOperand<TRANS_B> gemm_operand_b(const float* B, int64_t ldb, int64_t stride_batch) {
  return {B, TRANS_B ? ldb : 1, TRANS_B ? 1 : ldb, stride_batch};
}

/// The slice of one operand that a thread moves per k-tile: LOADS elements at fixed positions of the
/// BO x BK tile (BO = BM for A, BN for B). Element i of thread t (T threads):
///   kFastK:  outer = t / BK + i * (T / BK),  k = t % BK          (a warp reads 4 rows x 8 k)
///   else:    outer = t % BO,                 k = t / BO + i * (T / BO)   (a warp reads 32 outer)
/// so a kFastK operand has LOADS different outer indices and one k per thread, the other kind one
/// outer index and LOADS k's. Shared layout s[k][outer] with rows of BO + 4 floats: the kFastK stores
/// (8 k x 4 outer per warp) land in banks (4 k + outer) mod 32 — all different.
template <class Cfg, int BO, class Op>
struct OperandTile {
  static constexpr int BK = Cfg::BK, T = Cfg::kThreads;
  static constexpr int LOADS = BO * BK / T;
  static constexpr int OUTERS = Op::kFastK ? LOADS : 1;
  typename Op::Outer outer[OUTERS];
  bool valid[OUTERS];  // outer index inside [0, extent)
  int tid;

  __device__ __forceinline__ int outer_local(int i) const {
    return Op::kFastK ? tid / BK + i * (T / BK) : tid % BO;
  }
  __device__ __forceinline__ int k_local(int i) const {
    return Op::kFastK ? tid % BK : tid / BO + i * (T / BO);
  }

  __device__ __forceinline__ void init(const Op& op, int origin, int extent, int tid_, int batch) {
    tid = tid_;
#pragma unroll
    for (int j = 0; j < OUTERS; ++j) {
      const int o = origin + outer_local(j);
      valid[j] = o < extent;
      outer[j] = op.outer(valid[j] ? o : 0, batch);  // index 0 keeps every precomputed address in range
    }
  }
  /// Global memory -> registers for the k-tile starting at k0; zeros outside the product.
  __device__ __forceinline__ void fetch(const Op& op, int k0, int K, float (&r)[LOADS]) const {
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
      const int j = Op::kFastK ? i : 0;
      const int k = k0 + k_local(i);
      r[i] = valid[j] && k < K ? op.at(outer[j], k) : 0.0f;
    }
  }
  /// Registers -> shared memory (s[k][outer]).
  __device__ __forceinline__ void store(const float (&r)[LOADS], float (*s)[BO + Cfg::kPad]) const {
#pragma unroll
    for (int i = 0; i < LOADS; ++i) s[k_local(i)][outer_local(i)] = r[i];
  }
};

/// NUM consecutive floats from shared memory (16- resp. 8-byte aligned) into registers.
template <int NUM>
__device__ __forceinline__ void load_run(const float* s, float* out);
template <>
__device__ __forceinline__ void load_run<4>(const float* s, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(s);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
template <>
__device__ __forceinline__ void load_run<2>(const float* s, float* out) {
  const float2 v = *reinterpret_cast<const float2*>(s);
  out[0] = v.x, out[1] = v.y;
}

/// Row (or column) of the tile that register i of a thread with index `t` along that dimension holds:
/// the first half of the registers cover [t * H, t * H + H), the second half the same run BO/2 later.
template <int BO, int TO>
__device__ __forceinline__ int sub_tile_pos(int t, int i) {
  constexpr int H = TO / 2;
  return i < H ? t * H + i : BO / 2 + t * H + (i - H);
}

// ---- the kernel
// ------------------------------------------------------------------------------------------------ Grid: x
// over N tiles, y over M tiles, z over batch * splits. Epi provides
//   void operator()(int m, int n, float acc, int batch, int split) const    for every m < M, n < N.
template <class Cfg, class OpA, class OpB, class Epi>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    tiled_gemm_kernel(int M, int N, int K, int k_per_split, int splits, OpA a, OpB b, Epi epi) {
  pdl_enter();
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN, PAD = Cfg::kPad;
  __shared__ __align__(16) float As[2][BK][BM + PAD];  // As[buf][k][m]
  __shared__ __align__(16) float Bs[2][BK][BN + PAD];  // Bs[buf][k][n]

  const int tid = threadIdx.x;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int split = blockIdx.z % splits, batch = blockIdx.z / splits;
  const int k_begin = split * k_per_split;
  const int k_end = min(K, k_begin + k_per_split);
  const int tx = tid % Cfg::kThreadsN, ty = tid / Cfg::kThreadsN;  // this thread's place in the tile

  OperandTile<Cfg, BM, OpA> ta;
  OperandTile<Cfg, BN, OpB> tb;
  ta.init(a, m0, M, tid, batch);
  tb.init(b, n0, N, tid, batch);

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  if (k_begin < k_end) {  // uniform over the block: the barriers inside are safe
    float ra[OperandTile<Cfg, BM, OpA>::LOADS], rb[OperandTile<Cfg, BN, OpB>::LOADS];
    ta.fetch(a, k_begin, K, ra);
    tb.fetch(b, k_begin, K, rb);
    ta.store(ra, As[0]);
    tb.store(rb, Bs[0]);
    __syncthreads();
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
      const bool has_next = k0 + BK < k_end;
      if (has_next) {  // next k-tile: global loads issued now, consumed after the FMAs below
        ta.fetch(a, k0 + BK, K, ra);
        tb.fetch(b, k0 + BK, K, rb);
      }
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        float af[TM], bf[TN];
        load_run<TM / 2>(&As[buf][kk][ty * (TM / 2)], af);
        load_run<TM / 2>(&As[buf][kk][BM / 2 + ty * (TM / 2)], af + TM / 2);
        load_run<TN / 2>(&Bs[buf][kk][tx * (TN / 2)], bf);
        load_run<TN / 2>(&Bs[buf][kk][BN / 2 + tx * (TN / 2)], bf + TN / 2);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(af[i], bf[j], acc[i][j]);
      }
      // The other buffer was last read in the previous iteration, which every thread finished before
      // the barrier at its end; the barrier below publishes these stores to the next iteration.
      if (has_next) {
        ta.store(ra, As[buf ^ 1]);
        tb.store(rb, Bs[buf ^ 1]);
      }
      __syncthreads();
      buf ^= 1;
    }
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + sub_tile_pos<BM, TM>(ty, i);
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + sub_tile_pos<BN, TN>(tx, j);
      if (n < N) epi(m, n, acc[i][j], batch, split);
    }
  }
}

/// Sums `splits` partial results (split s at partial + s * count) into out, in split order.
__global__ void sum_splits_kernel(const float* __restrict__ partial, int64_t count, int splits,
                                  float* __restrict__ out) {
  pdl_enter();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int sp = 0; sp < splits; ++sp) s += partial[sp * count + i];
    out[i] = s;
  }
}

// ---- host side
// -------------------------------------------------------------------------------------------------

/// GEMM sizes must stay well inside int (the kernel's index type): k0 + BK and tile origins never wrap.
constexpr int64_t kMaxGemmDim = int64_t(1) << 30;

inline int ceil_div_int(int64_t a, int64_t b) {
  return static_cast<int>((a + b - 1) / b);
}

enum class TileKind { Large, Medium, Narrow };

struct TilePlan {
  TileKind kind = TileKind::Large;
  int splits = 1;       // split-K factor (1: none)
  int k_per_split = 0;  // a multiple of BK
};

/// Below this reduction length per split, splitting K costs more (partials, a second kernel) than the
/// parallelism it buys.
constexpr int kMinSplitK = 256;

/// The tile shape for an (M, N, K) product repeated `batch` times on a GPU with `sms` multiprocessors,
/// and with `allow_split_k` a split-K factor that brings the block count to about two waves when the
/// tiles alone cannot.
inline TilePlan plan_tiles_for(int64_t M, int64_t N, int64_t K, int64_t batch, bool allow_split_k,
                               int64_t sms) {
  TilePlan plan;
  auto tiles = [&](int64_t bm, int64_t bn) { return ((M + bm - 1) / bm) * ((N + bn - 1) / bn) * batch; };
  int64_t bm = 128, bn = 128;
  if (M <= 32) {
    plan.kind = TileKind::Narrow, bm = 32, bn = 128;
  } else if (tiles(128, 128) >= sms) {
    plan.kind = TileKind::Large;
  } else {
    plan.kind = TileKind::Medium, bm = 64, bn = 64;
  }
  constexpr int BK = 8;  // the same in every TileConfig
  plan.k_per_split = static_cast<int>(std::max<int64_t>(BK, (K + BK - 1) / BK * BK));
  if (allow_split_k) {
    const int64_t t = tiles(bm, bn), target = 2 * sms;
    if (t < target && K >= 2 * kMinSplitK) {
      const int64_t want = std::min<int64_t>((target + t - 1) / t, K / kMinSplitK);
      const int64_t kps = ((K + want - 1) / want + BK - 1) / BK * BK;
      plan.k_per_split = static_cast<int>(kps);
      plan.splits = static_cast<int>((K + kps - 1) / kps);
    }
  }
  return plan;
}

#ifndef LADNN_TILE_EMULATION

inline TilePlan plan_tiles(int64_t M, int64_t N, int64_t K, int64_t batch, bool allow_split_k) {
  return plan_tiles_for(M, N, K, batch, allow_split_k, sm_count());
}

template <class Cfg, class OpA, class OpB, class Epi>
void launch_tiled_cfg(const TilePlan& plan, int M, int N, int K, int batch, const OpA& a, const OpB& b,
                      const Epi& epi, cudaStream_t stream) {
  const int64_t gy = (int64_t(M) + Cfg::BM - 1) / Cfg::BM, gz = int64_t(batch) * plan.splits;
  if (gy > 65535 || gz > 65535)
    throw Error("tiled GEMM: " + std::to_string(M) + " rows in " +
                std::to_string(batch * int64_t(plan.splits)) +
                " batches/splits exceed the grid limits (65535 row tiles, 65535 batches)");
  const dim3 grid(static_cast<unsigned>(ceil_div_int(N, Cfg::BN)), static_cast<unsigned>(gy),
                  static_cast<unsigned>(gz));
  launch_kernel(tiled_gemm_kernel<Cfg, OpA, OpB, Epi>, grid, Cfg::kThreads, 0, stream, M, N, K,
                plan.k_per_split, plan.splits, a, b, epi);
  CUDA_CHECK_LAUNCH();
}

/// Runs the product with the plan's tile shape. Nothing to do when M or N is 0 (the caller handles
/// outputs that need writing then); K == 0 runs the epilogue on zeros.
template <class OpA, class OpB, class Epi>
void launch_tiled(const TilePlan& plan, int M, int N, int K, int batch, const OpA& a, const OpB& b,
                  const Epi& epi, cudaStream_t stream) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
  switch (plan.kind) {
    case TileKind::Large:
      return launch_tiled_cfg<TileLarge>(plan, M, N, K, batch, a, b, epi, stream);
    case TileKind::Medium:
      return launch_tiled_cfg<TileMedium>(plan, M, N, K, batch, a, b, epi, stream);
    case TileKind::Narrow:
      return launch_tiled_cfg<TileNarrow>(plan, M, N, K, batch, a, b, epi, stream);
  }
}

#endif  // LADNN_TILE_EMULATION

}  // namespace
}  // namespace ladnn::cuda
