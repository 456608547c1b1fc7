// tests/cuda_tile_emulation_test.cpp — the native GEMM and convolution kernels (cuda/gemm_tile.cuh,
// cuda/conv2d_gemm.cuh) run on the CPU, against the CPU reference. Runs everywhere, GPU or not.
//
// Why: the CUDA tests (tests/cuda_conv_gemm_test.cpp) need a GPU; this one checks the same kernel *code*
// — the tile loop with its double buffering and barriers, every thread-to-element mapping of every tile
// shape, the implicit-GEMM operands of all three convolution passes, split-K and the epilogues — on any
// machine. Both headers compile as plain C++ under LADNN_TILE_EMULATION; this file supplies the CUDA
// keywords (below) and an emulator that runs a launch block by block, each block as one host thread per
// CUDA thread with a real barrier for __syncthreads() and function-static arrays for __shared__ memory.
// A missing barrier or a mapping that skips or double-writes an element shows up as a wrong result (the
// threads really run concurrently). What it cannot check: GPU-only behaviour (memory coalescing, bank
// conflicts, register spills, the launch configuration limits) — those are for the GPU tests and benches.
//
// Oracle: tensor/ops.h on the CPU in float64 (GEMMs by a plain triple loop in double). Outputs start
// as NaN, so an element no thread writes fails. Tolerance: |emulated - ref| <= 1e-5 * sum|terms| (the
// float32-accumulation bound explained in tests/cuda_conv_gemm_test.cpp; the emulator computes in float32
// with fmaf exactly as the kernel does).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tensor/ops.h"
#include "tensor/random.h"
#include "tensor/tensor.h"
#include "tests/conv_bn_reference.h"
#include "tests/cuda_test_util.h"

// ---- the CUDA dialect, for host compilation (after every standard header)
// ---------------------------------------
namespace emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

/// A reusable barrier for the threads of one emulated block.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != gen; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_, waiting_ = 0;
  uint64_t generation_ = 0;
};

thread_local Barrier* t_barrier = nullptr;
thread_local Barrier* t_warp_barrier = nullptr;  // the thread's warp's 32 (mma.sync is warp-collective)

}  // namespace emu

thread_local emu::Dim3 threadIdx, blockIdx;
emu::Dim3 blockDim, gridDim;
inline void __syncthreads() {
  emu::t_barrier->wait();
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int min(int a, int b) {
  return a < b ? a : b;
}
struct float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

// nvcuda::wmma for cuda/fused_conv_tc.cuh and cuda/conv_wgrad_tc.cuh: each fragment holds its whole tile in every thread of the
// warp (the real layout across lanes is unspecified, and the kernel never looks inside a fragment), so a
// load or an mma computes the whole tile per thread, and only lane 0 stores it. TF32 rounding as cvt.rna.
// What it cannot model: the tensor cores' own accumulation rounding (it rounds each addition to nearest).
namespace nvcuda::wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };
template <class Use>
struct tile_dims;
template <>
struct tile_dims<matrix_a> {
  static constexpr int R = 16, C = 8;
};
template <>
struct tile_dims<matrix_b> {
  static constexpr int R = 8, C = 16;
};
template <>
struct tile_dims<accumulator> {
  static constexpr int R = 16, C = 16;
};
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float v[tile_dims<Use>::R * tile_dims<Use>::C];
};
/// To TF32 (10 mantissa bits), to nearest, ties away from zero, as cvt.rna.tf32.f32.
inline float __float_to_tf32(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0x1000u) & 0xffffe000u;  // not inf or NaN
  std::memcpy(&f, &b, 4);
  return f;
}
/// Calls that break wmma's rules (pointers 32-byte aligned, ldm a multiple of 4 floats, the layout the
/// kernel means): counted here, and the tests expect none — the emulation cannot fault as a GPU would.
inline std::atomic<int> g_misuse{0};
inline void check_tile_pointer(const void* p, unsigned ldm) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0 || ldm % 4 != 0) ++g_misuse;
}
template <class F>
void fill_fragment(F& f, float value) {
  for (float& e : f.v) e = value;
}
template <class Use, class T>
void load_matrix_sync(fragment<Use, 16, 16, 8, T, row_major>& f, const float* p, unsigned ldm) {
  check_tile_pointer(p, ldm);
  for (int r = 0; r < tile_dims<Use>::R; ++r)
    for (int c = 0; c < tile_dims<Use>::C; ++c) f.v[r * tile_dims<Use>::C + c] = p[r * ldm + c];
}
/// A column-major tile: element (r, c) at p[c * ldm + r] (cuda/conv_wgrad_tc.cuh's B tiles).
template <class Use, class T>
void load_matrix_sync(fragment<Use, 16, 16, 8, T, col_major>& f, const float* p, unsigned ldm) {
  check_tile_pointer(p, ldm);
  for (int r = 0; r < tile_dims<Use>::R; ++r)
    for (int c = 0; c < tile_dims<Use>::C; ++c) f.v[r * tile_dims<Use>::C + c] = p[c * ldm + r];
}
template <class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
                     const fragment<matrix_a, 16, 16, 8, precision::tf32, row_major>& a,
                     const fragment<matrix_b, 16, 16, 8, precision::tf32, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 8, float>& c) {
  float out[256];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float sum = c.v[r * 16 + n];
      for (int k = 0; k < 8; ++k) sum += a.v[r * 8 + k] * b.v[k * 16 + n];  // TF32 products are exact
      out[r * 16 + n] = sum;
    }
  std::memcpy(d.v, out, sizeof(out));
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 8, float>& f, unsigned ldm,
                              layout_t layout) {
  check_tile_pointer(p, ldm);
  if (layout != mem_row_major) ++g_misuse;
  if (threadIdx.x % 32 != 0) return;
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) p[r * ldm + n] = f.v[r * 16 + n];
}
}  // namespace nvcuda::wmma

// cuda/mma_tf32.cuh's primitives for cuda/fused_conv_mma.cuh. cp.async copies at once (it cannot show
// a read of a stage before its wait; the barriers it needs still run for real); mma.sync is a warp
// collective: each lane posts its fragments, its warp's 32 threads meet (every lane of a warp reaches
// each mma in the same order, as mma.sync.aligned requires), each lane computes its four outputs from its
// warp's posts, the warp meets again. (A barrier of 32, not of the block: a quarter of the threads to
// wake per meeting.) Lane (g, t) holds A(g + 8 (r % 2), t + 4 (r / 2)) in a[r], B(t + 4 r, g) in b[r], and
// D(g + 8 (r / 2), 2t + r % 2) in d[r] (the PTX ISA's m16n8k8 .tf32 fragments).
namespace emu {
struct MmaLane {
  uint32_t a[4], b[2];
};
inline MmaLane g_mma_lanes[1024];
inline std::vector<float> g_dynamic_smem;  // one block's dynamic shared memory (blocks run one at a time)
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace emu
inline float* emu_dynamic_smem() {
  return emu::g_dynamic_smem.data();
}
inline uint32_t tf32_bits(float x) {
  const float r = nvcuda::wmma::__float_to_tf32(x);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return u;
}
inline void mma_tf32_16x8x8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const int tid = static_cast<int>(threadIdx.x), base = tid & ~31, g = (tid & 31) >> 2, t = tid & 3;
  for (int r = 0; r < 4; ++r) emu::g_mma_lanes[tid].a[r] = a[r];
  for (int r = 0; r < 2; ++r) emu::g_mma_lanes[tid].b[r] = b[r];
  emu::t_warp_barrier->wait();
  auto A = [&](int row, int col) {
    return emu::bits_float(emu::g_mma_lanes[base + (row % 8) * 4 + col % 4].a[(row / 8) + 2 * (col / 4)]);
  };
  auto B = [&](int k, int n) { return emu::bits_float(emu::g_mma_lanes[base + n * 4 + k % 4].b[k / 4]); };
  float out[4];
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float sum = d[r];
    for (int k = 0; k < 8; ++k) sum += A(row, k) * B(k, col);  // TF32 products are exact in float
    out[r] = sum;
  }
  emu::t_warp_barrier->wait();
  for (int r = 0; r < 4; ++r) d[r] = out[r];
}
namespace emu {
/// cp.async copies whose shared or global address is not a multiple of their size (a fault on the GPU).
inline std::atomic<int> g_cp_async_misaligned{0};
template <int N>
inline void cp_async(float* smem, const float* gmem, bool in) {
  if (reinterpret_cast<std::uintptr_t>(smem) % (4 * N) != 0 ||
      reinterpret_cast<std::uintptr_t>(gmem) % (4 * N) != 0)
    ++g_cp_async_misaligned;
  for (int i = 0; i < N; ++i) smem[i] = in ? gmem[i] : 0.0f;
}
}  // namespace emu
inline void cp_async_16(float* smem, const float* gmem, bool in) {
  emu::cp_async<4>(smem, gmem, in);
}
inline void cp_async_8(float* smem, const float* gmem, bool in) {
  emu::cp_async<2>(smem, gmem, in);
}
inline void cp_async_4(float* smem, const float* gmem, bool in) {
  emu::cp_async<1>(smem, gmem, in);
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

#define LADNN_TILE_EMULATION 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static  // one copy per kernel instantiation: blocks run one at a time
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#include "cuda/conv2d_gemm.cuh"
#include "cuda/conv_wgrad_halo.cuh"
#include "cuda/conv_wgrad_pw.cuh"
#include "cuda/conv_wgrad_tc.cuh"
#include "cuda/fused_conv.cuh"
#include "cuda/fused_conv_halo.cuh"
#include "cuda/fused_conv_mma.cuh"
#include "cuda/fused_conv_tc.cuh"
#include "cuda/gemm_tile.cuh"
#undef __device__
#undef __global__
#undef __forceinline__
#undef __shared__
#undef __align__
#undef __launch_bounds__

namespace ladnn::cuda {
namespace {

using cuda_test::gpu_matches;
using cuda_test::Tol;

constexpr double kRtol = 1e-5;
constexpr int kEmulatedSms = 132;  // an H100 SXM, for the planner

// ---- the emulator
// --------------------------------------------------------------------------------------------------

/// Runs `kernel` (a callable that reads threadIdx/blockIdx) over grid x threads, block by block; the
/// threads of a block run concurrently and meet at __syncthreads().
void emulate(emu::Dim3 grid, int threads, const std::function<void()>& kernel) {
  gridDim = grid;
  blockDim = {static_cast<unsigned>(threads), 1, 1};
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        emu::Barrier barrier(threads);
        std::vector<std::unique_ptr<emu::Barrier>> warps;
        for (int w = 0; w < (threads + 31) / 32; ++w)
          warps.push_back(std::make_unique<emu::Barrier>(std::min(32, threads - 32 * w)));
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = {static_cast<unsigned>(t), 0, 0};
            blockIdx = {bx, by, bz};
            emu::t_barrier = &barrier;
            emu::t_warp_barrier = warps[static_cast<std::size_t>(t / 32)].get();
            kernel();
          });
        for (std::thread& th : pool) th.join();
      }
}

/// A kernel without barriers or shared memory (the split reductions), one emulated thread after another
/// on the calling thread: the same indexing, without a host thread per CUDA thread.
void emulate_serial(emu::Dim3 grid, int threads, const std::function<void()>& kernel) {
  gridDim = grid;
  blockDim = {static_cast<unsigned>(threads), 1, 1};
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (int t = 0; t < threads; ++t) {
          threadIdx = {static_cast<unsigned>(t), 0, 0};
          blockIdx = {bx, by, bz};
          kernel();
        }
}

template <class Cfg, class OpA, class OpB, class Epi>
void emulate_tiled_cfg(const TilePlan& plan, int M, int N, int K, int batch, const OpA& a, const OpB& b,
                       const Epi& epi) {
  const emu::Dim3 grid{static_cast<unsigned>(ceil_div_int(N, Cfg::BN)),
                       static_cast<unsigned>(ceil_div_int(M, Cfg::BM)),
                       static_cast<unsigned>(batch * plan.splits)};
  emulate(grid, Cfg::kThreads,
          [&] { tiled_gemm_kernel<Cfg, OpA, OpB, Epi>(M, N, K, plan.k_per_split, plan.splits, a, b, epi); });
}

/// cuda/gemm_tile.cuh's launch_tiled, emulated.
template <class OpA, class OpB, class Epi>
void emulate_tiled(const TilePlan& plan, int M, int N, int K, int batch, const OpA& a, const OpB& b,
                   const Epi& epi) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
  switch (plan.kind) {
    case TileKind::Large:
      return emulate_tiled_cfg<TileLarge>(plan, M, N, K, batch, a, b, epi);
    case TileKind::Medium:
      return emulate_tiled_cfg<TileMedium>(plan, M, N, K, batch, a, b, epi);
    case TileKind::Narrow:
      return emulate_tiled_cfg<TileNarrow>(plan, M, N, K, batch, a, b, epi);
  }
}

void emulate_sum_splits(const float* partial, int64_t count, int splits, float* out) {
  emulate({2, 1, 1}, 64, [&] { sum_splits_kernel(partial, count, splits, out); });
}

/// A plan of the given tile shape and split factor (k_per_split a multiple of 8 covering K).
TilePlan forced_plan(TileKind kind, int K, int splits = 1) {
  TilePlan p;
  p.kind = kind;
  const int kps = std::max(8, ((K + splits - 1) / splits + 7) / 8 * 8);
  p.k_per_split = kps;
  p.splits = std::max(1, (K + kps - 1) / kps);
  return p;
}

const char* kind_name(TileKind k) {
  switch (k) {
    case TileKind::Large:
      return "large";
    case TileKind::Medium:
      return "medium";
    case TileKind::Narrow:
      return "narrow";
  }
  return "?";
}

constexpr TileKind kKinds[] = {TileKind::Large, TileKind::Medium, TileKind::Narrow};

std::vector<float> random_floats(std::size_t n, Generator& gen) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(gen.normal01());
  return v;
}

Tensor as_tensor(const std::vector<float>& v, const Shape& shape) {
  return Tensor::from_data(v.data(), shape);
}
Tensor as_tensor64(const std::vector<double>& v, const Shape& shape) {
  return Tensor::from_vector(v, shape, DType::Float64);
}
Tensor f64(const Tensor& t) {
  return t.defined() ? t.to(DType::Float64) : Tensor();
}
Tensor abs64(const Tensor& t) {
  if (!t.defined()) return Tensor();
  std::vector<double> v = t.to_vector();
  for (double& x : v) x = std::fabs(x);
  return Tensor::from_vector(v, t.shape(), DType::Float64);
}

// ---- the planner
// ------------------------------------------------------------------------------------------------------

TEST(TileKernelEmulation, PlannerPicksTilesAndSplits) {
  EXPECT_EQ(plan_tiles_for(32, 100000, 1152, 1, false, kEmulatedSms).kind, TileKind::Narrow);
  EXPECT_EQ(plan_tiles_for(128, 100352, 128, 1, false, kEmulatedSms).kind, TileKind::Large);
  EXPECT_EQ(plan_tiles_for(128, 1568, 1280, 1, false, kEmulatedSms).kind,
            TileKind::Medium);  // 13 large tiles
  EXPECT_EQ(plan_tiles_for(4096, 4096, 4096, 1, false, kEmulatedSms).kind, TileKind::Large);
  // Without split-K one split covers K; with it, a thin product with a long reduction is split.
  for (bool split : {false, true}) {
    for (int64_t K : {int64_t(1), int64_t(7), int64_t(8), int64_t(100), int64_t(6272), int64_t(401408)}) {
      const TilePlan p = plan_tiles_for(64, 147, K, 1, split, kEmulatedSms);
      SCOPED_TRACE("K " + std::to_string(K) + (split ? " split" : ""));
      EXPECT_EQ(p.k_per_split % 8, 0);
      EXPECT_GE(int64_t(p.k_per_split) * p.splits, K);                              // the splits cover K
      EXPECT_LT(int64_t(p.k_per_split) * (p.splits - 1), std::max<int64_t>(K, 1));  // and none is empty
      if (!split || K < 2 * kMinSplitK) {
        EXPECT_EQ(p.splits, 1);
      } else {
        EXPECT_GT(p.splits, 1);
        EXPECT_GE(p.k_per_split, kMinSplitK - 8);
      }
    }
  }
}

// ---- SGEMM
// ----------------------------------------------------------------------------------------------------------------

struct GemmCase {
  int M, N, K, batch;
  float alpha, beta;
};

// Ragged edges around every tile size, K not a multiple of 8, K = 0, batches, alpha/beta.
const GemmCase kGemmCases[] = {
    {1, 1, 1, 1, 1.0f, 0.0f},     {37, 45, 70, 1, 1.0f, 0.0f},  {130, 129, 17, 1, 0.5f, 0.0f},
    {33, 150, 9, 2, 1.0f, 0.75f}, {65, 64, 24, 1, -2.0f, 1.0f}, {5, 7, 0, 1, 1.0f, 0.5f},
};

/// C = alpha op(A) op(B) + beta C for every batch item, in double: the reference and its scale.
void reference_gemm(bool ta, bool tb, const GemmCase& c, const std::vector<float>& A, int lda, int64_t sa,
                    const std::vector<float>& B, int ldb, int64_t sb, const std::vector<float>& C0, int ldc,
                    int64_t sc, std::vector<double>& ref, std::vector<double>& scale) {
  ref.assign(C0.size(), 0.0);
  scale.assign(C0.size(), 0.0);
  for (int bt = 0; bt < c.batch; ++bt)
    for (int m = 0; m < c.M; ++m)
      for (int n = 0; n < c.N; ++n) {
        double s = 0, a = 0;
        for (int k = 0; k < c.K; ++k) {
          const double av = A[bt * sa + (ta ? int64_t(k) * lda + m : int64_t(m) * lda + k)];
          const double bv = B[bt * sb + (tb ? int64_t(n) * ldb + k : int64_t(k) * ldb + n)];
          s += av * bv;
          a += std::fabs(av * bv);
        }
        const int64_t i = bt * sc + int64_t(m) * ldc + n;
        const double c0 = c.beta == 0.0f ? 0.0 : double(c.beta) * C0[i];
        ref[i] = double(c.alpha) * s + c0;
        scale[i] = std::fabs(c.alpha) * a + std::fabs(c0);
      }
}

TEST(TileKernelEmulation, SgemmAllTransposesAndTiles) {
  Generator gen(9100);
  for (const GemmCase& c : kGemmCases)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (TileKind kind : kKinds) {
          std::ostringstream what;
          what << "M " << c.M << " N " << c.N << " K " << c.K << " batch " << c.batch << " alpha " << c.alpha
               << " beta " << c.beta << (ta ? " A^T" : "") << (tb ? " B^T" : "") << " tile "
               << kind_name(kind);
          SCOPED_TRACE(what.str());
          // Leading dimensions a little longer than the rows, batch strides longer than a matrix.
          const int lda = (ta ? c.M : c.K) + 3, ldb = (tb ? c.K : c.N) + 2, ldc = c.N + 1;
          const int64_t sa = int64_t(lda) * (ta ? c.K : c.M) + 5, sb = int64_t(ldb) * (tb ? c.N : c.K) + 1;
          const int64_t sc = int64_t(ldc) * c.M + 4;
          const std::vector<float> A = random_floats(std::size_t(sa * c.batch), gen);
          const std::vector<float> B = random_floats(std::size_t(sb * c.batch), gen);
          // beta == 0 must not read C: start it as NaN then (and as values otherwise).
          std::vector<float> C = c.beta == 0.0f ? std::vector<float>(std::size_t(sc * c.batch), NAN)
                                                : random_floats(std::size_t(sc * c.batch), gen);
          const std::vector<float> C0 = C;
          std::vector<double> ref, scale;
          reference_gemm(ta, tb, c, A, lda, sa, B, ldb, sb, C, ldc, sc, ref, scale);
          const DenseEpilogue epi{C.data(), ldc, sc, c.alpha, c.beta};
          const TilePlan plan = forced_plan(kind, c.K);
          if (!ta && !tb)
            emulate_tiled(plan, c.M, c.N, c.K, c.batch, gemm_operand_a<false>(A.data(), lda, sa),
                          gemm_operand_b<false>(B.data(), ldb, sb), epi);
          else if (!ta && tb)
            emulate_tiled(plan, c.M, c.N, c.K, c.batch, gemm_operand_a<false>(A.data(), lda, sa),
                          gemm_operand_b<true>(B.data(), ldb, sb), epi);
          else if (ta && !tb)
            emulate_tiled(plan, c.M, c.N, c.K, c.batch, gemm_operand_a<true>(A.data(), lda, sa),
                          gemm_operand_b<false>(B.data(), ldb, sb), epi);
          else
            emulate_tiled(plan, c.M, c.N, c.K, c.batch, gemm_operand_a<true>(A.data(), lda, sa),
                          gemm_operand_b<true>(B.data(), ldb, sb), epi);
          // Compare the C elements of every batch item (the padding between rows and items is not ours).
          std::vector<double> got, want, sc_v;
          for (int bt = 0; bt < c.batch; ++bt)
            for (int m = 0; m < c.M; ++m)
              for (int n = 0; n < c.N; ++n) {
                const int64_t i = bt * sc + int64_t(m) * ldc + n;
                got.push_back(C[i]);
                want.push_back(ref[i]);
                sc_v.push_back(scale[i]);
              }
          const Shape shape{c.batch, c.M, c.N};
          EXPECT_TRUE(gpu_matches("emulated sgemm", as_tensor64(got, shape), as_tensor64(want, shape),
                                  Tol{0, kRtol}, as_tensor64(sc_v, shape)));
          // And the elements between rows and batch items were left alone.
          int64_t touched = 0;
          for (int64_t i = 0; i < int64_t(C.size()); ++i) {
            const int64_t bt = i / sc, in_item = i - bt * sc, m = in_item / ldc, n = in_item - m * ldc;
            const bool inside = bt < c.batch && m < c.M && n < c.N;
            const bool same = C[i] == C0[i] || (std::isnan(C[i]) && std::isnan(C0[i]));
            if (!inside && !same) ++touched;
          }
          EXPECT_EQ(touched, 0) << "elements outside C were written";
        }
}

// ---- convolution
// --------------------------------------------------------------------------------------------------------

struct ConvCase {
  Shape x;  // (N, C, H, W)
  int64_t K, R, S, sh, sw, ph, pw;
  bool bias;
  int64_t extra_channels;  // > 0: x is a channel slice of a wider buffer (images further apart)
  ops::Conv2dParams params() const {
    ops::Conv2dParams p;
    p.stride_h = sh, p.stride_w = sw, p.pad_h = ph, p.pad_w = pw;
    return p;
  }
  Shape w() const { return {K, x[1], R, S}; }
  std::string name() const {
    std::ostringstream s;
    s << "x " << shape_str(x) << " w " << shape_str(w()) << " stride " << sh << "x" << sw << " pad " << ph
      << "x" << pw << (bias ? " bias" : "") << (extra_channels ? " (channel slice)" : "");
    return s.str();
  }
};

const ConvCase kConvCases[] = {
    {{1, 3, 5, 7}, 4, 3, 3, 1, 1, 1, 1, true, 0},    // batch 1, odd sizes
    {{2, 5, 9, 11}, 6, 3, 3, 2, 2, 1, 1, false, 0},  // stride 2
    {{3, 7, 6, 5}, 5, 1, 1, 1, 1, 0, 0, true, 0},    // pointwise
    {{2, 6, 5, 4}, 9, 1, 1, 1, 1, 0, 0, false, 2},   // pointwise on a channel slice
    {{2, 4, 8, 9}, 3, 1, 1, 2, 2, 0, 0, false, 0},   // 1x1 stride 2 (not pointwise)
    {{1, 3, 13, 11}, 8, 7, 7, 2, 2, 3, 3, true, 0},  // the stem's 7x7/2 pad 3
    {{1, 2, 5, 5}, 3, 3, 3, 1, 1, 2, 2, true, 0},    // pad 2: border outputs see one tap
    {{2, 3, 8, 7}, 5, 2, 3, 2, 1, 1, 0, true, 1},    // rectangular kernel, unequal stride/pad, slice
    {{2, 9, 6, 6}, 34, 3, 3, 1, 1, 1, 1, false, 0},  // 34 outputs: past the narrow tile's 32 rows
};

struct ConvData {
  std::vector<float> xbuf, w, b, dy;  // xbuf holds x, possibly as a channel slice
  int64_t x_img = 0, x_off = 0;       // elements between images of x, offset of x in xbuf
  Tensor x;                           // x as a contiguous float32 tensor (for the reference)
};

ConvData make_data(const ConvCase& c, Generator& gen) {
  ConvData d;
  const int64_t N = c.x[0], C = c.x[1], H = c.x[2], W = c.x[3];
  const int64_t Cw = C + c.extra_channels;
  d.x_img = Cw * H * W;
  d.x_off = c.extra_channels > 0 ? H * W : 0;       // the slice starts at channel 1 of the wider buffer
  d.xbuf.assign(std::size_t(N * Cw * H * W), NAN);  // channels outside the slice are NaN: reading one shows
  std::vector<float> xc(std::size_t(N * C * H * W));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C * H * W; ++i) {
      const float v = static_cast<float>(gen.normal01());
      xc[std::size_t(n * C * H * W + i)] = v;
      d.xbuf[std::size_t(n * d.x_img + d.x_off + i)] = v;
    }
  d.x = as_tensor(xc, c.x);
  d.w = random_floats(std::size_t(shape_numel(c.w())), gen);
  if (c.bias) d.b = random_floats(std::size_t(c.K), gen);
  return d;
}

ConvShape conv_shape_of(const ConvCase& c, const Shape& y, int64_t x_img) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return ConvShape{i(c.x[0]), i(c.x[1]), i(c.x[2]), i(c.x[3]), i(c.K),  i(c.R),  i(c.S),
                   i(y[2]),   i(y[3]),   i(c.sh),   i(c.sw),   i(c.ph), i(c.pw), x_img};
}

TEST(TileKernelEmulation, ConvPassesAllTiles) {
  Generator gen(9200);
  for (const ConvCase& c : kConvCases) {
    SCOPED_TRACE(c.name());
    const ops::Conv2dParams p = c.params();
    ConvData d = make_data(c, gen);
    const Tensor w = as_tensor(d.w, c.w());
    const Tensor b = c.bias ? as_tensor(d.b, {c.K}) : Tensor();
    const Tensor y_ref = ops::conv2d_forward(f64(d.x), f64(w), f64(b), p);
    const Tensor y_scale = ops::conv2d_forward(abs64(d.x), abs64(w), abs64(b), p);
    const Shape ys = y_ref.shape();
    d.dy = random_floats(std::size_t(shape_numel(ys)), gen);
    const Tensor dy = as_tensor(d.dy, ys);
    const Tensor dx_ref = ops::conv2d_backward_input(f64(dy), f64(w), c.x, p);
    const Tensor dx_scale = ops::conv2d_backward_input(abs64(dy), abs64(w), c.x, p);
    const Tensor dw_ref = ops::conv2d_backward_weight(f64(dy), f64(d.x), c.w(), p);
    const Tensor dw_scale = ops::conv2d_backward_weight(abs64(dy), abs64(d.x), c.w(), p);
    const ConvShape g = conv_shape_of(c, ys, d.x_img);
    const float* x = d.xbuf.data() + d.x_off;

    for (TileKind kind : kKinds) {
      SCOPED_TRACE(std::string("tile ") + kind_name(kind));
      {  // forward (bias in the epilogue)
        std::vector<float> y(std::size_t(shape_numel(ys)), NAN);
        const GemmDims gd = forward_dims(g);
        forward_gemm(g, x, d.w.data(), c.bias ? d.b.data() : nullptr, y.data(),
                     [&](const auto& a, const auto& bo, const auto& e) {
                       emulate_tiled(forced_plan(kind, gd.K), gd.M, gd.N, gd.K, 1, a, bo, e);
                     });
        EXPECT_TRUE(gpu_matches("emulated conv forward", as_tensor(y, ys), y_ref, Tol{0, kRtol}, y_scale));
      }
      {  // forward split-K (3 splits), summed into channels [1, 1 + K) of a wider buffer with the bias
        const int64_t plane = ys[2] * ys[3], K = ys[1], wide_img = (K + 2) * plane;
        ConvShape gs = g;
        gs.y_img = wide_img;
        const GemmDims gd = forward_dims(gs);
        const TilePlan plan = forced_plan(kind, gd.K, 3);
        std::vector<float> partial(std::size_t(int64_t(gd.M) * gd.N * plan.splits), NAN);
        forward_gemm_split(gs, x, d.w.data(), partial.data(), [&](const auto& a, const auto& bo, const auto& e) {
          emulate_tiled(plan, gd.M, gd.N, gd.K, 1, a, bo, e);
        });
        std::vector<float> wide(std::size_t(ys[0] * wide_img), NAN);
        emulate({2, 1, 1}, 64, [&] {
          sum_splits_nchw_kernel(partial.data(), gd.M, gd.N, plan.splits, int(plane), wide_img,
                                 c.bias ? d.b.data() : nullptr, wide.data() + plane);
        });
        std::vector<float> slice;
        for (int64_t n = 0; n < ys[0]; ++n) {
          const float* img = wide.data() + n * wide_img;
          slice.insert(slice.end(), img + plane, img + (K + 1) * plane);
          for (int64_t i = 0; i < plane; ++i) {
            ASSERT_TRUE(std::isnan(img[i]));
            ASSERT_TRUE(std::isnan(img[(K + 1) * plane + i]));
          }
        }
        EXPECT_TRUE(gpu_matches("emulated split-K conv forward (" + std::to_string(plan.splits) + " splits)",
                                as_tensor(slice, ys), y_ref, Tol{0, kRtol}, y_scale));
      }
      {  // forward into channels [1, 1 + K) of a wider (N, K + 2, P, Q) buffer (conv2d_forward_into)
        const int64_t plane = ys[2] * ys[3], K = ys[1], wide_img = (K + 2) * plane;
        std::vector<float> wide(std::size_t(ys[0] * wide_img), NAN);
        ConvShape gi = g;
        gi.y_img = wide_img;
        const GemmDims gd = forward_dims(gi);
        forward_gemm(gi, x, d.w.data(), c.bias ? d.b.data() : nullptr, wide.data() + plane,
                     [&](const auto& a, const auto& bo, const auto& e) {
                       emulate_tiled(forced_plan(kind, gd.K), gd.M, gd.N, gd.K, 1, a, bo, e);
                     });
        std::vector<float> slice;
        for (int64_t n = 0; n < ys[0]; ++n) {
          const float* img = wide.data() + n * wide_img;
          slice.insert(slice.end(), img + plane, img + (K + 1) * plane);
          for (int64_t i = 0; i < plane; ++i) {  // channels 0 and K + 1 untouched
            ASSERT_TRUE(std::isnan(img[i]));
            ASSERT_TRUE(std::isnan(img[(K + 1) * plane + i]));
          }
        }
        EXPECT_TRUE(gpu_matches("emulated conv forward into a slice", as_tensor(slice, ys), y_ref, Tol{0, kRtol},
                                y_scale));
      }
      {  // backward input
        std::vector<float> dx(std::size_t(shape_numel(c.x)), NAN);
        const GemmDims gd = backward_input_dims(g);
        backward_input_gemm(g, d.dy.data(), d.w.data(), dx.data(),
                            [&](const auto& a, const auto& bo, const auto& e) {
                              emulate_tiled(forced_plan(kind, gd.K), gd.M, gd.N, gd.K, 1, a, bo, e);
                            });
        EXPECT_TRUE(
            gpu_matches("emulated conv backward input", as_tensor(dx, c.x), dx_ref, Tol{0, kRtol}, dx_scale));
      }
      for (int splits : {1, 3}) {  // backward weight, without and with split-K
        SCOPED_TRACE("splits " + std::to_string(splits));
        const GemmDims gd = backward_weight_dims(g);
        const TilePlan plan = forced_plan(kind, gd.K, splits);
        const int64_t count = int64_t(gd.M) * gd.N;
        std::vector<float> partial(std::size_t(count * plan.splits), NAN), dw(std::size_t(count), NAN);
        backward_weight_gemm(g, d.dy.data(), x, plan.splits > 1 ? partial.data() : dw.data(),
                             [&](const auto& a, const auto& bo, const auto& e) {
                               emulate_tiled(plan, gd.M, gd.N, gd.K, 1, a, bo, e);
                             });
        if (plan.splits > 1) emulate_sum_splits(partial.data(), count, plan.splits, dw.data());
        EXPECT_TRUE(gpu_matches("emulated conv backward weight", as_tensor(dw, c.w()), dw_ref, Tol{0, kRtol},
                                dw_scale));
      }
      {  // both backward passes reading dy as channels [1, 1 + K) of a wider (N, K + 2, P, Q) buffer (the
         // training dense block's output gradient, read in place), the other channels NaN
        const int64_t plane = ys[2] * ys[3], K = ys[1], wide_img = (K + 2) * plane;
        std::vector<float> wide(std::size_t(ys[0] * wide_img), NAN);
        for (int64_t n = 0; n < ys[0]; ++n)
          std::copy(d.dy.begin() + n * K * plane, d.dy.begin() + (n + 1) * K * plane,
                    wide.begin() + n * wide_img + plane);
        ConvShape gd_wide = g;
        gd_wide.y_img = wide_img;
        std::vector<float> dx(std::size_t(shape_numel(c.x)), NAN);
        const GemmDims di = backward_input_dims(gd_wide);
        backward_input_gemm(gd_wide, wide.data() + plane, d.w.data(), dx.data(),
                            [&](const auto& a, const auto& bo, const auto& e) {
                              emulate_tiled(forced_plan(kind, di.K), di.M, di.N, di.K, 1, a, bo, e);
                            });
        EXPECT_TRUE(gpu_matches("emulated conv backward input, dy a channel slice", as_tensor(dx, c.x),
                                dx_ref, Tol{0, kRtol}, dx_scale));
        const GemmDims dwd = backward_weight_dims(gd_wide);
        std::vector<float> dw(std::size_t(int64_t(dwd.M) * dwd.N), NAN);
        backward_weight_gemm(gd_wide, wide.data() + plane, x, dw.data(),
                             [&](const auto& a, const auto& bo, const auto& e) {
                               emulate_tiled(forced_plan(kind, dwd.K), dwd.M, dwd.N, dwd.K, 1, a, bo, e);
                             });
        EXPECT_TRUE(gpu_matches("emulated conv backward weight, dy a channel slice", as_tensor(dw, c.w()),
                                dw_ref, Tol{0, kRtol}, dw_scale));
      }
    }
  }
}

// ---- the fused inference convolution (cuda/fused_conv.cuh) ------------------------------------------------

/// A BatchNorm as the kernels read it, from CPU tensors (contiguous (C) vectors); none for null.
FusedBn host_fused_bn(const ops::BnEval* bn) {
  FusedBn f;
  if (!bn) return f;
  f.gamma = bn->gamma.defined() ? bn->gamma.data<float>() : nullptr;
  f.beta = bn->beta.defined() ? bn->beta.data<float>() : nullptr;
  if (bn->batch()) {  // a folded training norm1's saved statistics
    f.mean = bn->save_mean.data<float>();
    f.invstd = bn->save_invstd.data<float>();
  } else {
    f.mean = bn->running_mean.data<float>();
    f.var = bn->running_var.data<float>();
  }
  f.eps = bn->eps;
  f.on = true;
  f.relu = bn->act == ops::BnAct::Relu;
  return f;
}

/// cuda/fused_conv.cu's launch, emulated (the same dispatch table).
struct EmulateFused : FusedArgs {
  template <int KT, int WARPS, int KSIZE, int PIX>
  void go() const {
    const FusedGrid fg = fused_grid(g, FusedPlan{KT, WARPS, PIX});
    emulate({fg.x, fg.y, 1}, WARPS * 32, [&] { fused_conv_kernel<KT, WARPS, KSIZE, PIX>(g, x, w, pre, post, y); });
  }
  template <int BK, int BM, int KS>
  void go_tc() const {
    const FusedGrid fg = tc_grid(g, TcPlan{BK, BM});
    const int splits = tc_split_count(g, chunks_per_split);
    std::vector<float> ws(splits > 1 ? static_cast<std::size_t>(int64_t(splits) * g.K * g.M()) : 0,
                          std::numeric_limits<float>::quiet_NaN());
    float* partial = splits > 1 ? ws.data() : nullptr;
    emulate({fg.x, fg.y, static_cast<unsigned>(splits)}, TcTile<BK, BM>::kThreads,
            [&] { fused_conv_tc_kernel<BK, BM, KS>(g, x, w, pre, post, y, chunks_per_split, partial); });
    if (splits > 1)
      emulate_serial({static_cast<unsigned>((g.M() + 255) / 256), static_cast<unsigned>(g.K), 1}, 256,
                     [&] { tc_split_reduce_kernel(g, partial, splits, post, y); });
  }
  bool w16 = false, x16 = false, tap = false;
  template <int BK, int BM, int KS, bool TAP, int DEPTH>
  void go_mma() const {
    const FusedGrid fg = mma_grid(g, MmaPlan{BK, BM, DEPTH});
    const int splits = mma_split_count(g, DEPTH, chunks_per_split);
    std::vector<float> ws(splits > 1 ? static_cast<std::size_t>(int64_t(splits) * g.K * g.M()) : 0,
                          std::numeric_limits<float>::quiet_NaN());
    float* partial = splits > 1 ? ws.data() : nullptr;
    // NaN everywhere: a read of shared memory no copy wrote shows up in the result.
    emu::g_dynamic_smem.assign(static_cast<std::size_t>(mma_smem_floats(g, MmaPlan{BK, BM, DEPTH}, pre.on)),
                               std::numeric_limits<float>::quiet_NaN());
    emulate({fg.x, fg.y, static_cast<unsigned>(splits)}, kMmaThreads, [&] {
      fused_conv_mma_kernel<BK, BM, KS, TAP, DEPTH>(g, w16, x16, x, w, pre, post, y, chunks_per_split,
                                                    partial);
    });
    if (splits > 1)
      emulate_serial({static_cast<unsigned>((g.M() + 255) / 256), static_cast<unsigned>(g.K), 1}, 256,
                     [&] { tc_split_reduce_kernel(g, partial, splits, post, y); });
  }
  template <int BM, int VEC>
  void go_halo() const {
    const HaloLayout L = halo_layout(g, BM);
    const FusedGrid fg = halo_grid(g, BM);
    const int splits = halo_split_count(g, chunks_per_split);
    std::vector<float> ws(splits > 1 ? static_cast<std::size_t>(int64_t(splits) * g.K * g.M()) : 0,
                          std::numeric_limits<float>::quiet_NaN());
    float* partial = splits > 1 ? ws.data() : nullptr;
    // NaN everywhere: a read of shared memory that neither a copy nor the zeroing wrote shows up in the
    // result. The launch asks for no more than the opt-in bound.
    EXPECT_LE(halo_smem_floats(L), halo_smem_floats_bound(BM));
    emu::g_dynamic_smem.assign(static_cast<std::size_t>(halo_smem_floats(L)),
                               std::numeric_limits<float>::quiet_NaN());
    emulate({fg.x, fg.y, static_cast<unsigned>(splits)}, kMmaThreads,
            [&] { fused_conv_halo_kernel<BM, VEC>(g, L, x, w, post, y, chunks_per_split, partial); });
    if (splits > 1)
      emulate_serial({static_cast<unsigned>((g.M() + 255) / 256), static_cast<unsigned>(g.K), 1}, 256,
                     [&] { tc_split_reduce_kernel(g, partial, splits, post, y); });
  }
};

void emulate_fused(const FusedPlan& plan, const FusedConvGeom& g, const float* x, const float* w, const FusedBn& pre,
                   const FusedBn& post, float* y) {
  dispatch_fused(plan, g.ksize(), EmulateFused{{g, x, w, pre, post, y}});
}

/// The forward kernels' test inputs: x the first C of C + x_extra channels per image (a block buffer's
/// prefix) and w (K, C, R, S), drawn from gen in that order; the geometry writes y as channels [2, 2 + K)
/// of K + 5 per image (slice_out).
struct PrefixConv {
  ops::Conv2dParams p;
  FusedConvGeom g;
  Tensor xbuf, x, w;
};
PrefixConv prefix_conv(int N, int C, int H, int W, int K, int R, int S, int st, int pad, int x_extra,
                       Generator& gen) {
  PrefixConv c;
  c.p.stride_h = c.p.stride_w = st;
  c.p.pad_h = c.p.pad_w = pad;
  const int P = (H + 2 * pad - R) / st + 1, Q = (W + 2 * pad - S) / st + 1;
  c.g = FusedConvGeom{
      N, C, H, W, K, R, S, P, Q, st, st, pad, pad, int64_t(C + x_extra) * H * W, int64_t(K + 5) * P * Q};
  c.xbuf = Tensor::normal({N, C + x_extra, H, W}, 0, 1, gen);
  c.x = c.xbuf.narrow(1, 0, C);
  c.w = Tensor::normal({K, C, R, S}, 0, 0.5, gen);
  return c;
}

/// y's buffer for prefix_conv's geometry: 7 outside the slice (must survive), NaN inside (an element no
/// thread writes fails).
struct SliceOut {
  Tensor ybuf, out;
};
SliceOut slice_out(const FusedConvGeom& g) {
  SliceOut s;
  s.ybuf = Tensor::full({g.N, g.K + 5, g.P, g.Q}, 7.0);
  s.ybuf.narrow(1, 2, g.K).fill_(std::numeric_limits<double>::quiet_NaN());
  s.out = s.ybuf.narrow(1, 2, g.K);
  return s;
}

/// Every element of the slice within rtol * scale of the reference, and the channels around it untouched.
::testing::AssertionResult slice_matches(const SliceOut& s, const test::ConvBnReference& ref, double rtol) {
  const std::vector<double> got = s.out.to_vector(), want = ref.y.to_vector(), scale = ref.scale.to_vector();
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= rtol * scale[i]))
      return ::testing::AssertionFailure() << "element " << i << " got " << got[i] << ", want " << want[i];
  const int K = static_cast<int>(s.ybuf.size(1)) - 5;
  for (int ch : {0, 1, K + 2, K + 3, K + 4})
    for (double v : s.ybuf.narrow(1, ch, 1).to_vector())
      if (v != 7.0) return ::testing::AssertionFailure() << "channel " << ch << " was written";
  return ::testing::AssertionSuccess();
}

TEST(FusedConvEmulation, PlannerSplitsTheReductionWhenTheOutputIsSmall) {
  // DenseNet-169 at batch 1 on 132 SMs: a 7x7 bottleneck has 2 pixel tiles, a 56x56 one 98.
  FusedPlan p = plan_fused(49, 128, kEmulatedSms);
  EXPECT_EQ(p.kt, 4);
  EXPECT_EQ(p.warps, 16);  // 64 blocks: the fewest, each warp walks 1/16 of the channels
  EXPECT_EQ(p.pix, 1);
  p = plan_fused(3136, 128, kEmulatedSms);
  EXPECT_EQ(p.kt, 8);
  EXPECT_EQ(p.warps, 4);  // 1,568 blocks already fill the GPU,
  EXPECT_EQ(p.pix, 2);    // and more than 8 per SM: two pixels per lane, each weight load used twice
  p = plan_fused(196, 128, kEmulatedSms);  // 14x14: 7 tiles x 16 = 112 blocks of 8 channels < 132
  EXPECT_EQ(p.kt, 4);
  EXPECT_EQ(p.warps, 8);  // 224 blocks of 4 channels: at least half the SMs, under two per SM
  p = plan_fused(196, 128, 100);
  EXPECT_EQ(p.kt, 8);
  EXPECT_EQ(p.warps, 8);
}

TEST(FusedConvEmulation, EveryPlanMatchesFloat64WithBatchNormsPrefixesAndSlices) {
  struct Shape4 {
    int N, C, H, W, K, R, S, st, pad;
  };
  // 1x1 and 3x3 as in a dense layer, a strided 3x3, a 2x3 window (the general path), channel counts that
  // do not divide by the warps or KT, fewer channels than warps (empty chunks), several images with a
  // partial last pixel tile; the pointwise ones with C % 4 == 0 read their weights four at a time.
  const Shape4 shapes[] = {{1, 40, 7, 7, 16, 1, 1, 1, 0}, {2, 13, 5, 5, 6, 3, 3, 1, 1}, {1, 3, 6, 5, 9, 3, 3, 2, 1},
                           {3, 21, 4, 3, 8, 1, 1, 1, 0},  {1, 5, 6, 6, 4, 2, 3, 1, 0},  {2, 36, 3, 3, 12, 1, 1, 1, 0},
                           {1, 3, 13, 13, 5, 7, 7, 2, 3}};  // the last: the stem's 7x7 stride 2 (general path)
    Generator gen(51);
  int cases = 0;
  for (const Shape4& sh : shapes) {
    // x: the first C of C + 3 channels per image; y: channels [2, 2 + K) of K + 5.
    const PrefixConv c = prefix_conv(sh.N, sh.C, sh.H, sh.W, sh.K, sh.R, sh.S, sh.st, sh.pad, 3, gen);
    for (int variant = 0; variant < 4; ++variant) {
      const bool has_pre = variant != 0, has_post = variant >= 2;
      const ops::BnEval pre = test::random_bn_eval(sh.C, ops::BnAct::Relu, gen, DType::Float32, variant != 3);
      const ops::BnEval post = test::random_bn_eval(sh.K, variant == 3 ? ops::BnAct::None : ops::BnAct::Relu, gen);
      const ops::BnEval* pp = has_pre ? &pre : nullptr;
      const ops::BnEval* qp = has_post ? &post : nullptr;
      const test::ConvBnReference ref = test::conv_bn_eval_reference(c.x, pp, c.w, c.p, qp);
      FusedConvGeom g = c.g;
      g.chunk4 = g.pointwise() && sh.C % 4 == 0;  // as the launcher sets them
      g.vec4 = g.chunk4 && reinterpret_cast<std::uintptr_t>(c.w.data<float>()) % 16 == 0;
      EXPECT_EQ(g.vec4, g.chunk4) << "the test's weights are not 16-byte aligned";
      for (int pi = 0; pi < 3; ++pi) {  // three plans per variant: all ten per shape (some twice)
        const FusedPlan& plan = kFusedPlans[(3 * variant + pi) % 10];
        SCOPED_TRACE("x (" + std::to_string(sh.N) + ", " + std::to_string(sh.C) + ", " + std::to_string(sh.H) + ", " +
                     std::to_string(sh.W) + ") w " + std::to_string(sh.K) + "x" + std::to_string(sh.R) + "x" +
                     std::to_string(sh.S) + " variant " + std::to_string(variant) + " kt " +
                     std::to_string(plan.kt) + " warps " + std::to_string(plan.warps) + " pix " +
                     std::to_string(plan.pix));
        const SliceOut y = slice_out(g);
        emulate_fused(plan, g, c.xbuf.data<float>(), c.w.data<float>(), host_fused_bn(pp), host_fused_bn(qp),
                      y.out.data<float>());
        ASSERT_TRUE(slice_matches(y, ref, 4e-6));
        ++cases;
      }
    }
  }
  EXPECT_EQ(cases, 84);
}

TEST(FusedConvEmulation, Tf32RoundsToNearestTiesAway) {
  using nvcuda::wmma::__float_to_tf32;
  EXPECT_EQ(__float_to_tf32(1.0f + 0x1p-12f), 1.0f);                    // below half an ulp (2^-10)
  EXPECT_EQ(__float_to_tf32(1.0f + 0x1p-11f), 1.0f + 0x1p-10f);         // a tie: away from zero
  EXPECT_EQ(__float_to_tf32(-(1.0f + 0x1p-11f)), -(1.0f + 0x1p-10f));
  EXPECT_EQ(__float_to_tf32(1.0f + 0x1p-10f + 0x1p-12f), 1.0f + 0x1p-10f);
  EXPECT_EQ(__float_to_tf32(3.0f), 3.0f);
  EXPECT_TRUE(std::isinf(__float_to_tf32(std::numeric_limits<float>::infinity())));
}

// The tensor-core form against float64: every tile shape, pointwise and 3x3 (padded, strided) windows,
// K and C*R*S not multiples of the tiles, a partial pixel tile over two images, a prefix read and a
// slice written. TF32 tolerance: each operand rounds by at most 2^-11 relative, so each product by 2^-10
// and the sum by 2^-10 * sum |terms|, plus the float32 accumulation (2^-9 + 1e-5 in all, as
// tests/cuda_conv_gemm_test.cpp's kTf32Rtol).
TEST(FusedConvEmulation, TensorCorePlansMatchFloat64) {
  struct Shape4 {
    int N, C, H, W, K, R, st, pad;
  };
  const Shape4 shapes[] = {{2, 37, 5, 5, 20, 1, 1, 0}, {1, 70, 9, 9, 130, 1, 1, 0}, {2, 13, 6, 5, 33, 3, 1, 1},
                           {1, 9, 7, 8, 10, 3, 2, 1},    {1, 3, 15, 15, 8, 7, 2, 3}};  // ... and the stem's 7x7/2
  Generator gen(53);
  int cases = 0;
  for (const Shape4& sh : shapes) {
    const PrefixConv c = prefix_conv(sh.N, sh.C, sh.H, sh.W, sh.K, sh.R, sh.R, sh.st, sh.pad, 3, gen);
    const FusedConvGeom& g = c.g;
    const ops::BnEval pre = test::random_bn_eval(sh.C, ops::BnAct::Relu, gen);
    const ops::BnEval post = test::random_bn_eval(sh.K, ops::BnAct::Relu, gen, DType::Float32, false);
    for (int variant = 0; variant < 2; ++variant) {
      const ops::BnEval* pp = &pre;
      const ops::BnEval* qp = variant == 1 ? &post : nullptr;
      const test::ConvBnReference ref = test::conv_bn_eval_reference(c.x, pp, c.w, c.p, qp);
      // Whole reductions; with post on, also split one chunk per split (tc_chunks(g) = 2 to 5 splits
      // here), the partial sums added and post applied by the second kernel.
      for (int cps = 0; cps <= (variant == 1 ? 1 : 0); ++cps)
      for (const TcPlan& plan : kTcPlans) {
        SCOPED_TRACE("x (" + std::to_string(sh.N) + ", " + std::to_string(sh.C) + ", " + std::to_string(sh.H) +
                     ") K " + std::to_string(sh.K) + " window " + std::to_string(sh.R) + " variant " +
                     std::to_string(variant) + " tile " +
                     std::to_string(plan.bk) + "x" + std::to_string(plan.bm) + " chunks per split " + std::to_string(cps));
        if (cps > 0) ASSERT_GE(tc_chunks(g), 2) << "the shape gives one split: the test would not split";
        const SliceOut y = slice_out(g);
        dispatch_fused_tc(plan, EmulateFused{{g, c.xbuf.data<float>(), c.w.data<float>(), host_fused_bn(pp),
                                              host_fused_bn(qp), y.out.data<float>(), cps}});
        ASSERT_TRUE(slice_matches(y, ref, 0x1p-9 + 1e-5));
        ++cases;
      }
    }
  }
  EXPECT_EQ(cases, 90);
  EXPECT_EQ(nvcuda::wmma::g_misuse.load(), 0) << "a wmma call with a misaligned tile pointer, ldm or layout";
}

// The batch form of the pre BatchNorm (a folded training norm1: the saved mean, gamma * save_invstd,
// beta — fused_bn_coef's batch branch) through every forward form that takes a pointwise convolution with
// a pre: SIMT, wmma and mma.sync tiles, with a post BatchNorm, give the bits of the same plan run without
// pre on the map's output (math::bn_normalize, bn_relu with the training kernels' coefficients: the map
// kernel's arithmetic), x a channel prefix.
TEST(FusedConvEmulation, BatchFormPreIsThePlanOnTheMap) {
  Generator gen(62);
  int runs = 0;
  for (const int C : {40, 37}) {  // 16-byte copies of x (C % 4 == 0 on a 4x4 plane) and 4-byte ones
    const int N = 2, H = C == 40 ? 4 : 5, W = H, K = 33, hw = H * W;
    const PrefixConv c = prefix_conv(N, C, H, W, K, 1, 1, 1, 0, 3, gen);
    ops::BnEval pre;
    pre.gamma = Tensor::uniform({C}, 0.5, 1.5, gen);
    pre.beta = Tensor::normal({C}, 0, 0.5, gen);
    pre.act = ops::BnAct::Relu;
    pre.save_mean = Tensor::normal({C}, 0.2, 0.3, gen);
    pre.save_invstd = Tensor::uniform({C}, 0.6, 1.4, gen);
    const FusedBn fpre = host_fused_bn(&pre);
    const ops::BnEval post = test::random_bn_eval(K, ops::BnAct::Relu, gen, DType::Float32, false);
    Tensor t = Tensor::empty({N, C, H, W});  // the map, packed
    for (int n = 0; n < N; ++n)
      for (int ch = 0; ch < C; ++ch) {
        // The training map's coefficients, as cuda/batchnorm.cu's channel_coefs derives them.
        const float mean = pre.save_mean.data<float>()[ch], shift = pre.beta.data<float>()[ch];
        const float scale =
            math::bn_train_scale(pre.gamma.data<float>()[ch], pre.save_invstd.data<float>()[ch]);
        const float* xp = c.xbuf.data<float>() + (int64_t(n) * (C + 3) + ch) * hw;
        float* tp = t.data<float>() + (int64_t(n) * C + ch) * hw;
        for (int i = 0; i < hw; ++i) tp[i] = math::bn_relu(math::bn_normalize(xp[i], mean, scale, shift));
      }
    FusedConvGeom gt = c.g;  // the plan without pre reads the packed map
    gt.x_img = int64_t(C) * hw;
    {
      const ops::BnEval* qp = &post;
      const FusedBn fpost = host_fused_bn(qp);
      // Runs `go(geometry, x, pre, y)` folded (x the prefix, the batch form) and on the map; the same bits.
      auto same =
          [&](const std::string& what,
              const std::function<void(const FusedConvGeom&, const float*, const FusedBn&, float*)>& go) {
            const SliceOut folded = slice_out(c.g), on_map = slice_out(c.g);
            go(c.g, c.xbuf.data<float>(), fpre, folded.out.data<float>());
            go(gt, t.data<float>(), FusedBn{}, on_map.out.data<float>());
            EXPECT_EQ(ops::max_abs_diff(folded.ybuf, on_map.ybuf), 0.0) << what << ", C " << C;
            ++runs;
          };
      for (const FusedPlan& plan : kFusedPlans)
        same("SIMT", [&](const FusedConvGeom& g, const float* x, const FusedBn& bn, float* y) {
          emulate_fused(plan, g, x, c.w.data<float>(), bn, fpost, y);
        });
      for (const TcPlan& plan : kTcPlans)
        same("wmma", [&](const FusedConvGeom& g, const float* x, const FusedBn& bn, float* y) {
          dispatch_fused_tc(plan, EmulateFused{{g, x, c.w.data<float>(), bn, fpost, y, 0}});
        });
      for (const MmaPlan& plan : kMmaPlans)
        same("mma", [&](const FusedConvGeom& g, const float* x, const FusedBn& bn, float* y) {
          EmulateFused run{{g, x, c.w.data<float>(), bn, fpost, y, 0}};
          run.x16 = hw % 4 == 0 && g.x_img % 4 == 0;
          run.w16 = C % 4 == 0;
          dispatch_fused_mma(plan, run);
        });
    }
  }
  EXPECT_EQ(runs, 2 * int(std::size(kFusedPlans) + std::size(kTcPlans) + std::size(kMmaPlans)));
}

// The mma.sync kernel (cuda/fused_conv_mma.cuh) against float64, every tile at both depths (16 and 32
// values a stage), whole and split (`cps` stages of 16 a split, half as many of 32). Pointwise: 4-byte copies
// (C % 4 != 0, a 5x5 plane) and 16-byte ones (C % 4 == 0, 4x4 and 8x8 planes), K under one 128-row tile and
// past it, pre with and without ReLU, post on and off. 3x3 (no pre): padded, strided, C*9 % 4 != 0 (4-byte
// weight copies), a partial last stage. 7x7 (the stem's window: stride 2, padding 3, three channels, 147 taps
// in 10 stages; and C*49 % 4 == 0, split). Windows over C % depth == 0 channels also tap by tap
// (mma_tap_major_fits): 3x3 plain, 3x3 strided and split, 7x7 (depth 16); the strided 3x3 (depth 32). x is
// read as a channel prefix and y written as a slice throughout.
TEST(FusedConvEmulation, MmaPlansMatchFloat64) {
  struct Case {
    int N, C, H, W, K, R, st, pad;
    bool pre_on, pre_relu, post_on;
    int cps;  // stages per split (0: whole)
  };
  const Case cases[] = {
      {3, 37, 5, 5, 20, 1, 1, 0, true, true, true, 0},   {2, 96, 4, 4, 130, 1, 1, 0, true, true, true, 0},
      {1, 40, 8, 8, 64, 1, 1, 0, true, false, false, 1}, {2, 37, 5, 5, 20, 1, 1, 0, true, true, true, 1},
      {2, 48, 4, 4, 130, 1, 1, 0, true, true, false, 2}, {2, 12, 6, 5, 33, 3, 1, 1, false, false, true, 0},
      {1, 7, 7, 9, 10, 3, 2, 1, false, false, false, 2}, {2, 16, 4, 4, 32, 3, 1, 0, false, false, true, 3},
      {2, 3, 11, 9, 40, 7, 2, 3, false, false, true, 0}, {1, 4, 8, 8, 33, 7, 1, 2, false, false, true, 4},
      {2, 32, 6, 7, 40, 3, 2, 1, false, false, true, 2}, {1, 16, 9, 9, 8, 7, 1, 3, false, false, false, 0}};
  Generator gen(57);
  int runs = 0, copies16 = 0, tap_runs = 0;
  for (const Case& cs : cases) {
    const PrefixConv c = prefix_conv(cs.N, cs.C, cs.H, cs.W, cs.K, cs.R, cs.R, cs.st, cs.pad, 4, gen);
    const FusedConvGeom& g = c.g;
    const ops::BnEval pre = test::random_bn_eval(cs.C, cs.pre_relu ? ops::BnAct::Relu : ops::BnAct::None, gen);
    const ops::BnEval post = test::random_bn_eval(cs.K, ops::BnAct::Relu, gen, DType::Float32, false);
    const ops::BnEval* pp = cs.pre_on ? &pre : nullptr;
    const ops::BnEval* qp = cs.post_on ? &post : nullptr;
    const test::ConvBnReference ref = test::conv_bn_eval_reference(c.x, pp, c.w, c.p, qp);
    ASSERT_TRUE(mma_takes(g, cs.pre_on));
    for (const MmaPlan& plan : kMmaPlans) {
      const int cps = cs.cps > 0 ? std::max(1, cs.cps * 16 / plan.depth) : 0;
      if (cps > 0) ASSERT_GE(mma_split_count(g, plan.depth, cps), 2) << "the case would not split";
      for (const bool tap : {false, true}) {
        if (tap && !mma_tap_major_fits(g, plan.depth)) continue;
        SCOPED_TRACE(std::string(tap ? "tap by tap, " : "") + "depth " + std::to_string(plan.depth) +
                     ", x (" + std::to_string(cs.N) + ", " + std::to_string(cs.C) + ", " +
                     std::to_string(cs.H) + ", " + std::to_string(cs.W) + ") K " + std::to_string(cs.K) +
                     " window " + std::to_string(cs.R) + " tile " + std::to_string(plan.bk) + "x" +
                     std::to_string(plan.bm) + " stages per split " + std::to_string(cps));
        const SliceOut y = slice_out(g);
        EmulateFused run{{g, c.xbuf.data<float>(), c.w.data<float>(), host_fused_bn(pp), host_fused_bn(qp),
                          y.out.data<float>(), cps}};
        auto aligned = [](const Tensor& t) {
          return reinterpret_cast<std::uintptr_t>(t.data<float>()) % 16 == 0;
        };
        run.w16 = cs.C * cs.R * cs.R % 4 == 0 && aligned(c.w);
        run.x16 = cs.R == 1 && cs.H * cs.W % 4 == 0 && aligned(c.xbuf);
        run.tap = tap;
        tap_runs += tap;
        copies16 += run.w16 + run.x16;
        dispatch_fused_mma(plan, run);
        ASSERT_TRUE(slice_matches(y, ref, 0x1p-9 + 1e-5));
        ++runs;
      }
    }
  }
  EXPECT_EQ(runs, 112);  // 12 cases x 8 plans, and 16 tap by tap
  EXPECT_EQ(tap_runs, 16);
  EXPECT_GT(copies16, 0) << "no case took the 16-byte copies";
  EXPECT_EQ(emu::g_cp_async_misaligned.load(), 0) << "a cp.async from or to a misaligned address";
  // What the kernel refuses: pre before a window, a flipped weight, a 2x3 window, a 5x5 one.
  FusedConvGeom g{1, 8, 5, 5, 4, 3, 3, 5, 5, 1, 1, 1, 1, 200, 100};
  EXPECT_FALSE(mma_takes(g, true));
  g.w_flipped = true;
  EXPECT_FALSE(mma_takes(g, false));
  g.w_flipped = false;
  g.S = 2;
  EXPECT_FALSE(mma_takes(g, false));
  g.R = g.S = 5;
  EXPECT_FALSE(mma_takes(g, false));
  g.R = g.S = 7;
  EXPECT_TRUE(mma_takes(g, false));
}

// The halo kernel (cuda/fused_conv_halo.cuh) against float64, every tile whole and split. The cases: bands
// that divide the rows and ones that leave the last band short (P % th != 0), rows of 4 to 36 pixels (28
// and 36: a warp's 8-pixel tiles cross output rows; 36: too long for the 64-slot tile, refused), H != W, K
// under one 32-channel block and past it (a partial second block), post on and off, x read as a channel
// prefix and y written as a slice. The layout's claims are checked too: th * Q fits the slots, the bands
// cover P, ch is 8 or 24 mod 32.
TEST(FusedConvEmulation, HaloPlansMatchFloat64) {
  struct Case {
    int N, C, H, W, K;
    bool post_on;
    int cps;  // stages (8 channels each) per split; 0: whole
  };
  const Case cases[] = {
      {2, 16, 8, 8, 32, true, 0}, {1, 24, 11, 8, 40, false, 0},  {1, 16, 6, 12, 8, true, 1},
      {1, 8, 5, 28, 33, true, 0}, {2, 16, 9, 4, 20, false, 1},   {1, 32, 7, 16, 32, true, 3},
      {1, 8, 3, 36, 16, true, 0}, {2, 16, 14, 14, 32, false, 0}, {1, 16, 5, 6, 12, true, 1},
      {1, 8, 9, 2, 8, true, 0},   {1, 16, 7, 7, 32, true, 1},    {2, 8, 5, 3, 8, false, 0}};
  Generator gen(58);
  int runs = 0, short_bands = 0, splits_run = 0;
  for (const Case& cs : cases) {
    const PrefixConv c = prefix_conv(cs.N, cs.C, cs.H, cs.W, cs.K, 3, 3, 1, 1, 4, gen);
    const FusedConvGeom& g = c.g;
    const ops::BnEval post = test::random_bn_eval(cs.K, ops::BnAct::Relu, gen, DType::Float32, false);
    const ops::BnEval* qp = cs.post_on ? &post : nullptr;
    const test::ConvBnReference ref = test::conv_bn_eval_reference(c.x, nullptr, c.w, c.p, qp);
    for (const HaloPlan& plan : kHaloPlans) {
      if (!halo_takes(g, false, plan)) {
        EXPECT_TRUE(2 * g.Q > plan.bm || plan.vec != halo_copy_width(g.W))
            << "refused for another reason than the row length or the copy width";
        continue;
      }
      const HaloLayout L = halo_layout(g, plan.bm);
      EXPECT_LE(L.th * g.Q, plan.bm);
      EXPECT_GE(L.th * L.bands, g.P);
      EXPECT_LT((L.th) * (L.bands - 1), g.P) << "an empty band";
      EXPECT_TRUE(L.ch % 32 == 8 || L.ch % 32 == 24) << L.ch;
      EXPECT_EQ(L.ldh % 4, 0) << "halo rows not 16-byte aligned";
      EXPECT_GE(L.ldh, g.Q + 5);
      short_bands += L.th * L.bands > g.P;
      const int splits = halo_split_count(g, cs.cps);
      if (cs.cps > 0) ASSERT_GE(splits, 2) << "the case would not split";
      splits_run += splits > 1;
      SCOPED_TRACE("x (" + std::to_string(cs.N) + ", " + std::to_string(cs.C) + ", " + std::to_string(cs.H) +
                   ", " + std::to_string(cs.W) + ") K " + std::to_string(cs.K) + " tile 32x" +
                   std::to_string(plan.bm) + " copies of " + std::to_string(plan.vec) + " stages per split " +
                   std::to_string(cs.cps));
      const SliceOut y = slice_out(g);
      const EmulateFused run{{g, c.xbuf.data<float>(), c.w.data<float>(), host_fused_bn(nullptr),
                              host_fused_bn(qp), y.out.data<float>(), cs.cps}};
      dispatch_fused_halo(plan, run);
      ASSERT_TRUE(slice_matches(y, ref, 0x1p-9 + 1e-5));
      ++runs;
    }
  }
  // 7 cases x the 3 tiles of 16-byte copies, less the 36-pixel rows at 64 slots; 3 x the 2 of 8-byte ones
  // and 2 x the one of 4-byte ones
  EXPECT_EQ(runs, 28);
  EXPECT_EQ(emu::g_cp_async_misaligned.load(), 0) << "a cp.async from or to a misaligned address";
  EXPECT_GT(short_bands, 0) << "no case left the last band short";
  EXPECT_GT(splits_run, 0);
  // What the kernel refuses: pre, a flipped weight, stride 2, padding 0, a 7x7, C % 8 != 0, W % 4 != 0
  // with 16-byte copies (and W % 4 == 0 with 8-byte ones), rows longer than half the slots.
  const FusedConvGeom ok{1, 16, 8, 8, 32, 3, 3, 8, 8, 1, 1, 1, 1, 16 * 64, 32 * 64};
  const HaloPlan p64{64, 4}, p64v2{64, 2}, p64v1{64, 1}, p128{128, 4};
  EXPECT_TRUE(halo_takes(ok, false, p64));
  EXPECT_FALSE(halo_takes(ok, true, p64));
  EXPECT_FALSE(halo_takes(ok, false, p64v2));
  EXPECT_FALSE(halo_takes(ok, false, p64v1));
  const std::pair<const char*, std::function<void(FusedConvGeom&)>> refused[] = {
      {"a flipped weight", [](FusedConvGeom& g) { g.w_flipped = true; }},
      {"stride 2", [](FusedConvGeom& g) { g.sh = g.sw = 2; }},
      {"padding 0", [](FusedConvGeom& g) { g.ph = g.pw = 0; }},
      {"a 7x7", [](FusedConvGeom& g) { g.R = g.S = 7; }},
      {"12 channels", [](FusedConvGeom& g) { g.C = 12; }},
      {"rows of 6", [](FusedConvGeom& g) { g.W = g.Q = 6; }},
      {"rows of 36", [](FusedConvGeom& g) { g.W = g.Q = 36; }}};
  for (const auto& [what, change] : refused) {
    FusedConvGeom g = ok;
    change(g);
    EXPECT_FALSE(halo_takes(g, false, p64)) << what;
  }
  FusedConvGeom g = ok;
  g.W = g.Q = 36;
  EXPECT_TRUE(halo_takes(g, false, p128));
  g.W = g.Q = 6;
  EXPECT_TRUE(halo_takes(g, false, p64v2));
  EXPECT_FALSE(halo_takes(g, false, p64v1));
  g.x_img = 16 * 48 + 1;  // images an odd number of floats apart
  EXPECT_FALSE(halo_takes(g, false, p64v2));
  g.W = g.Q = 7;
  EXPECT_TRUE(halo_takes(g, false, p64v1));
}

// The four-channel weight loads (vec4, taken only when the weights are 16-byte aligned) change the loads,
// not the arithmetic: the same bits as the one-channel loop over the same chunks, for every plan.
TEST(FusedConvEmulation, AlignedWeightLoadsGiveTheSameBits) {
  Generator gen(52);
  const int N = 1, C = 24, H = 5, W = 5, K = 8;
  const Tensor x = Tensor::normal({N, C, H, W}, 0, 1, gen), w = Tensor::normal({K, C, 1, 1}, 0, 0.5, gen);
  const ops::BnEval pre = test::random_bn_eval(C, ops::BnAct::Relu, gen);
  const FusedBn fpre = host_fused_bn(&pre);
  FusedConvGeom g{N, C, H, W, K, 1, 1, H, W, 1, 1, 0, 0, int64_t(C) * H * W, int64_t(K) * H * W};
  g.chunk4 = true;
  for (const FusedPlan& plan : kFusedPlans) {
    Tensor a = Tensor::empty({N, K, H, W}), b = Tensor::empty({N, K, H, W});
    g.vec4 = true;
    emulate_fused(plan, g, x.data<float>(), w.data<float>(), fpre, FusedBn{}, a.data<float>());
    g.vec4 = false;
    emulate_fused(plan, g, x.data<float>(), w.data<float>(), fpre, FusedBn{}, b.data<float>());
    EXPECT_EQ(ops::max_abs_diff(a, b), 0.0) << "plan " << plan.kt << "x" << plan.warps << "x" << plan.pix;
  }
}

// ---- the backward passes on the tensor cores (cuda/fused_conv_tc.cuh's flipped weights, cuda/conv_wgrad_tc.cuh)

/// `got` within the TF32 bound of a float64 reference: |got - value| <= (2^-9 + 1e-5) * scale, element by
/// element (the backward passes' tests below); the first element past it, if any, is named.
::testing::AssertionResult within_tf32(const Tensor& got, const test::ConvGradReference& ref) {
  const std::vector<double> g = got.to_vector(), want = ref.value.to_vector(), scale = ref.scale.to_vector();
  if (g.size() != want.size())
    return ::testing::AssertionFailure() << "sizes " << g.size() << " and " << want.size();
  for (std::size_t i = 0; i < g.size(); ++i)
    if (!(std::fabs(g[i] - want[i]) <= (0x1p-9 + 1e-5) * scale[i]))
      return ::testing::AssertionFailure() << "element " << i << ": got " << g[i] << ", want " << want[i];
  return ::testing::AssertionSuccess();
}

// The data pass: dx of a stride-1 convolution as the forward tensor-core kernel with the weight read
// rotated and transposed, against float64 scattering; every tile shape, pointwise and 3x3 (padded and
// not) windows, a 2x3 window with unequal padding, channel counts off the tiles, two images.
TEST(FusedConvEmulation, TensorCoreBackwardDataMatchesFloat64) {
  struct Case {
    int N, C, H, W, K, R, S, ph, pw;
  };
  const Case cases[] = {{2, 20, 5, 5, 37, 1, 1, 0, 0},
                        {1, 130, 4, 4, 24, 1, 1, 0, 0},
                        {2, 33, 6, 5, 13, 3, 3, 1, 1},
                        {1, 10, 7, 8, 9, 3, 3, 0, 0},
                        {1, 6, 5, 6, 5, 2, 3, 1, 0}};
  Generator gen(54);
  int runs = 0, split_runs = 0;
  for (const Case& cs : cases) {
    ops::Conv2dParams p;
    p.pad_h = cs.ph;
    p.pad_w = cs.pw;
    const int P = cs.H + 2 * cs.ph - cs.R + 1, Q = cs.W + 2 * cs.pw - cs.S + 1;
    const Tensor dy = Tensor::normal({cs.N, cs.K, P, Q}, 0, 1, gen);
    const Tensor w = Tensor::normal({cs.K, cs.C, cs.R, cs.S}, 0, 0.5, gen);
    const Shape x_shape{cs.N, cs.C, cs.H, cs.W};
    const test::ConvGradReference ref = test::conv_backward_reference(dy, w, x_shape, w.shape(), p, false);
    const FusedConvGeom g = dgrad_geom(cs.N, cs.C, cs.H, cs.W, cs.K, P, Q, cs.R, cs.S, cs.ph, cs.pw);
    ASSERT_EQ(g.P, cs.H);
    ASSERT_EQ(g.Q, cs.W);
    for (int cps : {0, 1})  // whole; one chunk per split (1 to 4 splits here)
    for (const TcPlan& plan : kTcPlans) {
      SCOPED_TRACE("dx (" + std::to_string(cs.N) + ", " + std::to_string(cs.C) + ", " + std::to_string(cs.H) + ", " +
                   std::to_string(cs.W) + ") w " + std::to_string(cs.K) + "x" + std::to_string(cs.R) + "x" +
                   std::to_string(cs.S) + " tile " + std::to_string(plan.bk) + "x" + std::to_string(plan.bm) +
                   " chunks per split " + std::to_string(cps));
      if (cps > 0 && tc_chunks(g) > 1) ++split_runs;
      Tensor dx = Tensor::full(x_shape, std::numeric_limits<double>::quiet_NaN());
      const FusedBn none;
      dispatch_fused_tc(plan, EmulateFused{{g, dy.data<float>(), w.data<float>(), none, none, dx.data<float>(), cps}});
      ASSERT_TRUE(within_tf32(dx, ref));
      ++runs;
    }
  }
  EXPECT_EQ(runs, 60);
  EXPECT_EQ(split_runs, 18);  // the three cases whose reductions are 2 to 4 chunks, every tile
  {  // dy as channels [1, 1 + K) of a wider (N, K + 2, P, Q) buffer, the others NaN (read in place: dy_img)
    const Case cs = cases[2];
    ops::Conv2dParams p;
    p.pad_h = cs.ph;
    p.pad_w = cs.pw;
    const int P = cs.H + 2 * cs.ph - cs.R + 1, Q = cs.W + 2 * cs.pw - cs.S + 1;
    Tensor wide =
        Tensor::full({cs.N, cs.K + 2, P, Q}, std::numeric_limits<double>::quiet_NaN(), DType::Float32);
    const Tensor dy = Tensor::normal({cs.N, cs.K, P, Q}, 0, 1, gen);
    wide.narrow(1, 1, cs.K).copy_(dy);
    const Tensor w = Tensor::normal({cs.K, cs.C, cs.R, cs.S}, 0, 0.5, gen);
    const Shape x_shape{cs.N, cs.C, cs.H, cs.W};
    const test::ConvGradReference ref = test::conv_backward_reference(dy, w, x_shape, w.shape(), p, false);
    const int64_t dy_img = int64_t(cs.K + 2) * P * Q;
    const FusedConvGeom g = dgrad_geom(cs.N, cs.C, cs.H, cs.W, cs.K, P, Q, cs.R, cs.S, cs.ph, cs.pw, dy_img);
    for (const TcPlan& plan : kTcPlans) {
      Tensor dx = Tensor::full(x_shape, std::numeric_limits<double>::quiet_NaN());
      const FusedBn none;
      dispatch_fused_tc(plan, EmulateFused{{g, wide.data<float>() + int64_t(P) * Q, w.data<float>(), none,
                                            none, dx.data<float>(), 0}});
      ASSERT_TRUE(within_tf32(dx, ref)) << "dy a channel slice, tile " << plan.bk << "x" << plan.bm;
    }
  }
  EXPECT_EQ(nvcuda::wmma::g_misuse.load(), 0) << "a wmma call with a misaligned tile pointer, ldm or layout";
}

// The data pass on the forward kernels that read w in the forward's order only (the mma and halo kernels):
// a copy of w rotated and transposed (rotated_weight, what rotate_weights_kernel writes), then the forward
// kernel with the data pass's geometry (dgrad_geom, w_flipped cleared), dy read in place as a channel
// slice. Against float64 scattering: 3x3 windows padded 1 (the growth convolutions' data pass: padding 1
// again) at rows of 8, 7 and 12 pixels, one padded 0 (padding 2 as a forward: the mma kernel only), and a
// pointwise one; every mma tile in both orders and every halo tile that takes the call, whole and split.
TEST(FusedConvEmulation, DataPassOnTheRotatedCopyMatchesFloat64) {
  struct Case {
    int N, C, H, W, K, R, pad;  // the forward's: x (N, C, H, W), w (K, C, R, R)
    int cps;                     // mma stages of 16 / halo stages of 8 channels per split (0: whole)
  };
  const Case cases[] = {{2, 20, 8, 8, 16, 3, 1, 0}, {1, 33, 7, 7, 8, 3, 1, 0},  {1, 36, 6, 12, 24, 3, 1, 1},
                        {1, 10, 7, 8, 9, 3, 0, 0},  {2, 70, 5, 5, 32, 1, 0, 1}, {1, 24, 4, 8, 32, 3, 1, 2}};
  Generator gen(59);
  int mma_runs = 0, halo_runs = 0;
  for (const Case& cs : cases) {
    ops::Conv2dParams p;
    p.pad_h = p.pad_w = cs.pad;
    const int P = cs.H + 2 * cs.pad - cs.R + 1, Q = cs.W + 2 * cs.pad - cs.R + 1;
    // dy: channels [2, 2 + K) of a wider buffer, NaN beside them.
    Tensor wide = Tensor::full({cs.N, cs.K + 3, P, Q}, std::numeric_limits<double>::quiet_NaN(), DType::Float32);
    const Tensor dy = Tensor::normal({cs.N, cs.K, P, Q}, 0, 1, gen);
    wide.narrow(1, 2, cs.K).copy_(dy);
    const Tensor w = Tensor::normal({cs.K, cs.C, cs.R, cs.R}, 0, 0.5, gen);
    const Shape x_shape{cs.N, cs.C, cs.H, cs.W};
    const test::ConvGradReference ref = test::conv_backward_reference(dy, w, x_shape, w.shape(), p, false);
    const int RS = cs.R * cs.R;
    Tensor wf = Tensor::empty({cs.C, cs.K, cs.R, cs.R});
    for (int64_t i = 0; i < wf.numel(); ++i) wf.data<float>()[i] = rotated_weight(w.data<float>(), cs.K, cs.C, RS, i);
    FusedConvGeom g = dgrad_geom(cs.N, cs.C, cs.H, cs.W, cs.K, P, Q, cs.R, cs.R, cs.pad, cs.pad,
                                 int64_t(cs.K + 3) * P * Q);
    g.w_flipped = false;
    const float* dyp = wide.data<float>() + 2 * int64_t(P) * Q;
    const std::string what = "dx (" + std::to_string(cs.N) + ", " + std::to_string(cs.C) + ", " +
                             std::to_string(cs.H) + ", " + std::to_string(cs.W) + ") w " + std::to_string(cs.K) +
                             "x" + std::to_string(cs.R) + "x" + std::to_string(cs.R) + " pad " +
                             std::to_string(cs.pad);
    ASSERT_TRUE(mma_takes(g, false)) << what;
    const FusedBn none;
    for (const MmaPlan& plan : kMmaPlans)
      for (const bool tap : {false, true}) {
        // (the 32 x 64 tiles of both depths: the geometry is what is new here; MmaPlansMatchFloat64 runs
        // every tile)
        if (plan.bk != 32 || plan.bm != 64) continue;
        if (tap && !mma_tap_major_fits(g, plan.depth)) continue;
        const int cps = cs.cps > 0 ? std::max(1, cs.cps * 16 / plan.depth) : 0;
        SCOPED_TRACE(what + " mma " + std::to_string(plan.bk) + "x" + std::to_string(plan.bm) + " depth " +
                     std::to_string(plan.depth) + (tap ? " tap by tap" : "") + " stages per split " +
                     std::to_string(cps));
        Tensor dx = Tensor::full(x_shape, std::numeric_limits<double>::quiet_NaN());
        EmulateFused run{{g, dyp, wf.data<float>(), none, none, dx.data<float>(), cps}};
        run.w16 = int64_t(g.C) * RS % 4 == 0;  // (wf: a new allocation, aligned)
        run.x16 = g.pointwise() && P * Q % 4 == 0 && g.x_img % 4 == 0 &&
                  reinterpret_cast<std::uintptr_t>(dyp) % 16 == 0;
        run.tap = tap;
        dispatch_fused_mma(plan, run);
        ASSERT_TRUE(within_tf32(dx, ref));
        ++mma_runs;
      }
    for (const HaloPlan& plan : kHaloPlans) {
      if (!halo_takes(g, false, plan) || reinterpret_cast<std::uintptr_t>(dyp) % (4 * plan.vec) != 0) continue;
      SCOPED_TRACE(what + " halo 32x" + std::to_string(plan.bm) + " copies of " + std::to_string(plan.vec) +
                   " stages per split " + std::to_string(cs.cps));
      Tensor dx = Tensor::full(x_shape, std::numeric_limits<double>::quiet_NaN());
      dispatch_fused_halo(plan, EmulateFused{{g, dyp, wf.data<float>(), none, none, dx.data<float>(), cs.cps}});
      ASSERT_TRUE(within_tf32(dx, ref));
      ++halo_runs;
    }
  }
  // 6 cases x 2 tiles, and 3 tap by tap: depth 16 over 16 dy channels, both depths over 32
  EXPECT_EQ(mma_runs, 15);
  EXPECT_EQ(halo_runs, 10);  // rows of 8 (two cases) and 12 at the three 16-byte tiles, rows of 7 at the 4-byte one
  EXPECT_EQ(emu::g_cp_async_misaligned.load(), 0) << "a cp.async from or to a misaligned address";
  // The copy's order, element by element: out[c][k][rs] = w[k][c][RS - 1 - rs].
  const std::vector<float> w = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};  // (K 2, C 3, R 1, S 2)
  const float want[] = {1, 0, 7, 6, 3, 2, 9, 8, 5, 4, 11, 10};          // (C 3, K 2, R 1, S 2)
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(rotated_weight(w.data(), 2, 3, 2, i), want[i]) << "element " << i;
}

/// cuda/fused_conv.cu's LaunchWgrad, emulated: the kernel into dw or the workspace, then the reduction;
/// every weight-gradient form (wmma, halo, pointwise).
struct EmulateWgrad {
  const FusedConvGeom& g;
  const float* dy;
  const float* x;
  float* dw;
  int chunks_per_split;
  FusedBn pre{};  // the pointwise form's pre BatchNorm
  /// `kernel(out)` over grid gr (gr.z splits), out dW or with splits a NaN workspace of gr.z slabs of n
  /// floats; then the reduction of the slabs into dW.
  template <class Kernel>
  void run(const WgradGrid& gr, int threads, int64_t n, const Kernel& kernel) const {
    std::vector<float> ws(gr.z > 1 ? static_cast<std::size_t>(gr.z * n) : 0,
                          std::numeric_limits<float>::quiet_NaN());
    float* out = gr.z > 1 ? ws.data() : dw;
    emulate({gr.x, gr.y, gr.z}, threads, [&] { kernel(out); });
    if (gr.z > 1)
      emulate_serial({3, 1, 1}, 64, [&] { wgrad_reduce_kernel(out, static_cast<int>(gr.z), n, dw); });
  }
  template <int BK, int BN, int KS>
  void go_wgrad() const {
    const WgradGrid gr = wgrad_grid(g, WgradPlan{BK, BN}, wgrad_split_count(g, chunks_per_split));
    run(gr, WgradTile<BK, BN>::kThreads, int64_t(g.K) * g.C * g.R * g.S,
        [&](float* out) { conv_wgrad_tc_kernel<BK, BN, KS>(g, dy, x, chunks_per_split, out); });
  }
  // cuda/conv_wgrad_halo.cuh (chunks_per_split counts bands; shared memory starts NaN: a read that
  // neither a copy nor the zeroing wrote shows up)
  template <int VEC>
  void go_wgrad_halo(int bm) const {
    const WgradHaloLayout L = wgrad_halo_layout(g, bm);
    EXPECT_LE(wgrad_halo_smem_floats(L), wgrad_halo_smem_floats_bound(bm));
    EXPECT_LE(wgrad_halo_smem_floats_bound(bm), wgrad_halo_smem_floats_bound(kWgradHaloMaxBM));
    emu::g_dynamic_smem.assign(static_cast<std::size_t>(wgrad_halo_smem_floats(L)),
                               std::numeric_limits<float>::quiet_NaN());
    const WgradGrid gr =
        wgrad_halo_grid(g, wgrad_halo_split_count(g, WgradHaloPlan{bm, VEC}, chunks_per_split));
    run(gr, kWhThreads, int64_t(g.K) * g.C * 9,
        [&](float* out) { conv_wgrad_halo_kernel<VEC>(g, L, dy, x, chunks_per_split, out); });
  }
  // cuda/conv_wgrad_pw.cuh (shared memory starts NaN)
  template <int VEC, bool PRE>
  void go_wgrad_pw() const {
    emu::g_dynamic_smem.assign(static_cast<std::size_t>(kPwSmemFloats),
                               std::numeric_limits<float>::quiet_NaN());
    run(wgrad_pw_grid(g, wgrad_pw_split_count(g, chunks_per_split)), kPwThreads, int64_t(g.K) * g.C,
        [&](float* out) { conv_wgrad_pw_kernel<VEC, PRE>(g, dy, x, pre, chunks_per_split, out); });
  }
};

// split_chunks (both tensor-core kernels' split-K) over a grid of sizes: every chunk in exactly one
// split, no split empty or shorter than min_chunks (unless there is a single one), and as many blocks
// as asked for whenever the chunks allow it.
TEST(FusedConvEmulation, SplitChunksCoverTheReductionWithoutEmptySplits) {
  int checked = 0;
  for (int64_t tiles : {1, 7, 49, 131, 132, 500})
    for (int64_t chunks : {1, 2, 3, 4, 7, 8, 9, 36, 51, 98, 6272})
      for (int waves : {1, 2, 3})
        for (int min_chunks : {2, 4}) {
          int cps = 0;
          const int splits = split_chunks(tiles, chunks, 132, waves, min_chunks, cps);
          SCOPED_TRACE("tiles " + std::to_string(tiles) + " chunks " + std::to_string(chunks) + " waves " +
                       std::to_string(waves) + " min " + std::to_string(min_chunks));
          ASSERT_GE(splits, 1);
          ASSERT_GE(cps, 1);
          EXPECT_LT(int64_t(splits - 1) * cps, chunks) << "an empty split";
          EXPECT_GE(int64_t(splits) * cps, chunks) << "chunks left over";
          if (splits > 1) EXPECT_GE(cps, min_chunks) << "a split shorter than min_chunks";
          // At least the splits asked for (132 * waves blocks), as far as min_chunks allows.
          const int64_t wanted = (int64_t(132) * waves + tiles - 1) / tiles;
          const int64_t most = std::max<int64_t>(chunks / min_chunks, 1);
          EXPECT_GE(splits, std::min(wanted, most));
          ++checked;
        }
  EXPECT_EQ(checked, 6 * 11 * 3 * 2);
  // DenseNet-169's widest 7x7 bottleneck at batch 32 on 132 SMs: 49 tiles of 128 x 32, 51 chunks of
  // 32 channels; two blocks per SM wanted (6 splits): 7 splits of 8 chunks (the last 3).
  int cps = 0;
  EXPECT_EQ(split_chunks(49, 51, 132, 2, 4, cps), 7);
  EXPECT_EQ(cps, 8);
}

TEST(FusedConvEmulation, WeightGradientSplitsCoverThePixels) {
  FusedConvGeom g{};
  g.N = 64, g.C = 1280, g.H = g.W = g.P = g.Q = 7, g.K = 128, g.R = g.S = 1, g.sh = g.sw = 1;
  int cps = 0;
  // DenseNet-169's widest 7x7 bottleneck at batch 64: 3,136 pixels = 98 chunks; 2 x 20 tiles of 64 x 64.
  EXPECT_EQ(wgrad_splits(g, {64, 64}, 132, 2, cps), 7);  // 264 blocks wanted: 7 splits of 14 chunks
  EXPECT_EQ(cps, 14);
  EXPECT_EQ(wgrad_splits(g, {64, 64}, 132, 1, cps), 5);  // 132 / 40 -> 4 wanted: 5 of 20 chunks (the last 18)
  EXPECT_EQ(cps, 20);
  g.N = 1;  // 49 pixels = 2 chunks: one split, however many blocks the GPU could take
  EXPECT_EQ(wgrad_splits(g, {64, 64}, 132, 3, cps), 1);
  EXPECT_EQ(cps, 2);
  g.N = 64, g.H = g.W = g.P = g.Q = 56, g.C = 128;  // 200,704 pixels, 2 x 2 tiles: 66 wanted, 67 of 94 chunks
  EXPECT_EQ(wgrad_splits(g, {64, 64}, 132, 2, cps), 67);
  EXPECT_EQ(cps, 94);
  EXPECT_LT(int64_t(66) * 94, wgrad_chunks(g));  // the last split is not empty
}

// The weight gradient against float64 scattering: every tile shape, one split and several (the
// workspace and its reduction), pointwise, padded 3x3, strided and non-square windows, an x read as a
// channel prefix of a wider tensor, K and C*R*S off the tiles, a partial last chunk of pixels.
TEST(FusedConvEmulation, TensorCoreWeightGradientMatchesFloat64) {
  struct Case {
    int N, C, H, W, K, R, S, st, pad;
  };
  const Case cases[] = {{3, 20, 9, 9, 40, 1, 1, 1, 0},
                        {3, 13, 9, 8, 33, 3, 3, 1, 1},
                        {4, 5, 15, 15, 7, 3, 3, 2, 1},
                        {2, 4, 12, 12, 6, 2, 3, 1, 0}};
  Generator gen(55);
  int runs = 0;
  for (const Case& cs : cases) {
    ops::Conv2dParams p;
    p.stride_h = p.stride_w = cs.st;
    p.pad_h = p.pad_w = cs.pad;
    const int P = (cs.H + 2 * cs.pad - cs.R) / cs.st + 1, Q = (cs.W + 2 * cs.pad - cs.S) / cs.st + 1;
    const Tensor xbuf = Tensor::normal({cs.N, cs.C + 3, cs.H, cs.W}, 0, 1, gen);
    const Tensor x = xbuf.narrow(1, 0, cs.C);
    // dy packed in the even cases; in the odd ones channels [1, 1 + K) of a wider buffer (the training
    // dense block's output gradient, read in place), the other channels NaN.
    const int extra = (&cs - cases) % 2 == 0 ? 0 : 2;
    const int64_t dy_off = extra > 0 ? int64_t(P) * Q : 0;
    Tensor dybuf = Tensor::full({cs.N, cs.K + extra, P, Q}, std::numeric_limits<double>::quiet_NaN());
    const Tensor dy = Tensor::normal({cs.N, cs.K, P, Q}, 0, 1, gen);
    dybuf.narrow(1, extra > 0 ? 1 : 0, cs.K).copy_(dy);
    const Shape w_shape{cs.K, cs.C, cs.R, cs.S};
    const test::ConvGradReference ref = test::conv_backward_reference(dy, x, x.shape(), w_shape, p, true);
    FusedConvGeom g{};
    g.N = cs.N, g.C = cs.C, g.H = cs.H, g.W = cs.W, g.K = cs.K, g.R = cs.R, g.S = cs.S, g.P = P, g.Q = Q;
    g.sh = g.sw = cs.st, g.ph = g.pw = cs.pad;
    g.x_img = int64_t(cs.C + 3) * cs.H * cs.W;
    g.y_img = int64_t(cs.K + extra) * P * Q;
    for (const WgradPlan& plan : kWgradPlans)
      for (int sms : {1, 6}) {  // one split; as many as the chunks allow (2 to 4 here)
        int cps = 0;
        const int splits = wgrad_splits(g, plan, sms, 1, cps);
        SCOPED_TRACE("x (" + std::to_string(cs.N) + ", " + std::to_string(cs.C) + ", " + std::to_string(cs.H) + ", " +
                     std::to_string(cs.W) + ") w " + std::to_string(cs.K) + "x" + std::to_string(cs.R) + "x" +
                     std::to_string(cs.S) + " tile " + std::to_string(plan.bk) + "x" + std::to_string(plan.bn) +
                     " splits " + std::to_string(splits));
        if (sms == 1) EXPECT_EQ(splits, 1);
        else EXPECT_GE(splits, 2);
        Tensor dw = Tensor::full(w_shape, std::numeric_limits<double>::quiet_NaN());
        dispatch_wgrad(
            plan, EmulateWgrad{g, dybuf.data<float>() + dy_off, xbuf.data<float>(), dw.data<float>(), cps});
        ASSERT_TRUE(within_tf32(dw, ref));
        ++runs;
      }
  }
  EXPECT_EQ(runs, 40);
  EXPECT_EQ(nvcuda::wmma::g_misuse.load(), 0) << "a wmma call with a misaligned tile pointer, ldm or layout";
}

// The growth 3x3's weight gradient with halo-staged bands (cuda/conv_wgrad_halo.cuh) against float64,
// every plan that takes the case, whole and a band a split: rows of 5 to 56 pixels
// (7, 14, 28, 56 as DenseNet's; 5 and 28: a k-step's 8 slots cross output rows), bands that leave the last
// one short, K under one 32-channel block and past it (a partial second block), two x-channel blocks, x
// read as a channel prefix and dy as a channel slice (the other channels NaN). The layout's claims are
// checked too: th * Q fits the slots, the bands cover P, ldp and ch are 4 mod 8.
TEST(FusedConvEmulation, HaloWeightGradientMatchesFloat64) {
  struct Case {
    int N, C, H, W, K;
  };
  // (Small: the emulated mma.sync meets the whole block twice, and the test runs about 4,600 of them.)
  const Case cases[] = {{1, 32, 8, 8, 32},  {1, 64, 5, 12, 32}, {1, 32, 9, 14, 20}, {1, 32, 7, 7, 40},
                        {1, 32, 5, 28, 16}, {1, 32, 2, 56, 32}, {1, 32, 4, 6, 8},   {1, 32, 4, 5, 33}};
  Generator gen(59);
  int runs = 0, short_bands = 0, split_runs = 0;
  for (const Case& cs : cases) {
    ops::Conv2dParams p;
    p.pad_h = p.pad_w = 1;
    const int P = cs.H, Q = cs.W;
    const Tensor xbuf = Tensor::normal({cs.N, cs.C + 3, cs.H, cs.W}, 0, 1, gen);
    const Tensor x = xbuf.narrow(1, 0, cs.C);
    const bool slice = (&cs - cases) % 2 == 1;  // dy channels [1, 1 + K) of a wider buffer in odd cases
    Tensor dybuf =
        Tensor::full({cs.N, cs.K + (slice ? 2 : 0), P, Q}, std::numeric_limits<double>::quiet_NaN());
    const Tensor dy = Tensor::normal({cs.N, cs.K, P, Q}, 0, 1, gen);
    dybuf.narrow(1, slice ? 1 : 0, cs.K).copy_(dy);
    const Shape w_shape{cs.K, cs.C, 3, 3};
    const test::ConvGradReference ref = test::conv_backward_reference(dy, x, x.shape(), w_shape, p, true);
    FusedConvGeom g{};
    g.N = cs.N, g.C = cs.C, g.H = cs.H, g.W = cs.W, g.K = cs.K, g.R = g.S = 3, g.P = P, g.Q = Q;
    g.sh = g.sw = 1, g.ph = g.pw = 1;
    g.x_img = int64_t(cs.C + 3) * cs.H * cs.W;
    g.y_img = int64_t(cs.K + (slice ? 2 : 0)) * P * Q;
    const float* dyp = dybuf.data<float>() + (slice ? int64_t(P) * Q : 0);
    int taken = 0;
    for (const WgradHaloPlan& plan : kWgradHaloPlans) {
      if (!wgrad_halo_takes(g, plan)) continue;
      ++taken;
      const WgradHaloLayout L = wgrad_halo_layout(g, plan.bm);
      EXPECT_LE(L.th * g.Q, plan.bm);
      EXPECT_GE(L.th * L.bands, g.P);
      EXPECT_LT(L.th * (L.bands - 1), g.P) << "an empty band";
      EXPECT_EQ(L.ldp % 8, 4);
      EXPECT_EQ(L.ch % 8, 4);
      EXPECT_GE(L.ldp, L.steps * 8);
      EXPECT_GE(L.ldh, g.Q + 5);
      short_bands += L.th * L.bands > g.P;
      const int chunks = wgrad_halo_chunks(g, L);
      for (int v = 0; v < (chunks > 1 ? 2 : 1); ++v) {  // whole; a band a split where there are more
        const int bps = v == 0 ? chunks : 1, splits = wgrad_halo_split_count(g, plan, bps);
        EXPECT_EQ(splits, v == 0 ? 1 : chunks);
        split_runs += splits > 1;
        SCOPED_TRACE("x (" + std::to_string(cs.N) + ", " + std::to_string(cs.C) + ", " +
                     std::to_string(cs.H) + ", " + std::to_string(cs.W) + ") K " + std::to_string(cs.K) +
                     " plan " + std::to_string(plan.bm) + "/" + std::to_string(plan.vec) +
                     " bands per split " + std::to_string(bps));
        Tensor dw = Tensor::full(w_shape, std::numeric_limits<double>::quiet_NaN());
        dispatch_wgrad_halo(plan, EmulateWgrad{g, dyp, xbuf.data<float>(), dw.data<float>(), bps});
        ASSERT_TRUE(within_tf32(dw, ref));
        ++runs;
      }
      if (&cs == cases) {  // dW one float past a 16-byte boundary: the epilogue's scalar stores
        Tensor wide = Tensor::full({shape_numel(w_shape) + 1}, std::numeric_limits<double>::quiet_NaN());
        dispatch_wgrad_halo(plan, EmulateWgrad{g, dyp, xbuf.data<float>(), wide.data<float>() + 1, chunks});
        const Tensor dw = wide.narrow(0, 1, shape_numel(w_shape)).reshape(w_shape);
        ASSERT_TRUE(within_tf32(dw, ref)) << "misaligned dW";
      }
    }
    EXPECT_GT(taken, 0) << "no plan takes case " << (&cs - cases);
  }
  EXPECT_EQ(runs, 18);  // 14 whole, and split where a plan has more than one band
  EXPECT_GT(short_bands, 0) << "no case left the last band short";
  EXPECT_GT(split_runs, 0);
  EXPECT_EQ(emu::g_cp_async_misaligned.load(), 0) << "a cp.async from or to a misaligned address";
}

// What the halo weight gradient refuses: a flipped weight, stride 2, padding 0, a 1x1, channels not in
// blocks of 32, rows under 4 or longer than the slots, a copy width other than the widest the rows allow,
// images apart by other than a multiple of it.
TEST(FusedConvEmulation, HaloWeightGradientTakesGrowthShapesOnly) {
  FusedConvGeom ok{};
  ok.N = 2, ok.C = 128, ok.H = ok.W = ok.P = ok.Q = 56, ok.K = 32, ok.R = ok.S = 3;
  ok.sh = ok.sw = ok.ph = ok.pw = 1;
  ok.x_img = int64_t(128) * 56 * 56, ok.y_img = int64_t(256) * 56 * 56;
  const WgradHaloPlan p64{64, 4}, p128{128, 4}, p64v2{64, 2}, p64v1{64, 1};
  EXPECT_TRUE(wgrad_halo_takes(ok, p64));
  EXPECT_TRUE(wgrad_halo_takes(ok, p128));
  EXPECT_FALSE(wgrad_halo_takes(ok, p64v2));
  const std::pair<const char*, std::function<void(FusedConvGeom&)>> refused[] = {
      {"a flipped weight", [](FusedConvGeom& g) { g.w_flipped = true; }},
      {"stride 2", [](FusedConvGeom& g) { g.sh = g.sw = 2; }},
      {"padding 0", [](FusedConvGeom& g) { g.ph = g.pw = 0; }},
      {"a 1x1", [](FusedConvGeom& g) { g.R = g.S = 1; }},
      {"48 channels", [](FusedConvGeom& g) { g.C = 48; }},
      {"rows of 68", [](FusedConvGeom& g) { g.W = g.Q = 68; }},
      {"x images an odd number of floats apart", [](FusedConvGeom& g) { g.x_img += 1; }},
      {"dy images an odd number of floats apart", [](FusedConvGeom& g) { g.y_img += 1; }}};
  for (const auto& [what, change] : refused) {
    FusedConvGeom g = ok;
    change(g);
    EXPECT_FALSE(wgrad_halo_takes(g, p64)) << what;
  }
  FusedConvGeom g = ok;
  g.W = g.Q = g.H = g.P = 14;
  EXPECT_TRUE(wgrad_halo_takes(g, p64v2));
  EXPECT_FALSE(wgrad_halo_takes(g, p64));
  g.W = g.Q = g.H = g.P = 7;
  EXPECT_TRUE(wgrad_halo_takes(g, p64v1));
  g.W = g.Q = g.H = g.P = 3;  // rows under 4
  EXPECT_FALSE(wgrad_halo_takes(g, p64v1));
  g.W = g.Q = 68, g.H = g.P = 4;  // 68 pixels: more than 64 slots, not more than 128
  EXPECT_FALSE(wgrad_halo_takes(g, p64));
  EXPECT_TRUE(wgrad_halo_takes(g, p128));
  // DenseNet-169's growth 3x3s at batch 64: the split for two blocks per SM on 132 SMs.
  // 4 blocks a split (128 channels of x, 32 of dy), 64 x 28 bands of 2 rows: 66 splits wanted, 67 of 27.
  g = ok;
  g.N = 64;
  int bps = 0;
  EXPECT_EQ(wgrad_halo_splits(g, p128, 132, 2, bps), 67);
  EXPECT_EQ(bps, 27);
}

// The pointwise weight gradient on mma.sync (cuda/conv_wgrad_pw.cuh) against float64, whole and a stage
// (32 pixels) a split: planes of 16, 30 and 49 pixels (16-, 8- and 4-byte copies; a stage's pixels cross
// images), K past one 128-row block and C past one 64-column block (partial second blocks, odd C: the
// epilogue's single stores), more stages than the pipeline holds, dy a channel slice with NaN beside it
// in odd cases, x a channel prefix.
TEST(FusedConvEmulation, PointwiseWeightGradientMatchesFloat64) {
  struct Case {
    int N, C, H, W, K;
  };
  const Case cases[] = {{3, 70, 4, 4, 130}, {3, 40, 6, 5, 24}, {1, 64, 7, 7, 128}, {2, 33, 8, 8, 16}};
  Generator gen(60);
  int runs = 0, split_runs = 0;
  for (const Case& cs : cases) {
    ops::Conv2dParams p;
    const int P = cs.H, Q = cs.W;
    const Tensor xbuf = Tensor::normal({cs.N, cs.C + 3, cs.H, cs.W}, 0, 1, gen);
    const Tensor x = xbuf.narrow(1, 0, cs.C);
    const bool slice = (&cs - cases) % 2 == 1;
    Tensor dybuf =
        Tensor::full({cs.N, cs.K + (slice ? 2 : 0), P, Q}, std::numeric_limits<double>::quiet_NaN());
    const Tensor dy = Tensor::normal({cs.N, cs.K, P, Q}, 0, 1, gen);
    dybuf.narrow(1, slice ? 1 : 0, cs.K).copy_(dy);
    const Shape w_shape{cs.K, cs.C, 1, 1};
    const test::ConvGradReference ref = test::conv_backward_reference(dy, x, x.shape(), w_shape, p, true);
    FusedConvGeom g{};
    g.N = cs.N, g.C = cs.C, g.H = cs.H, g.W = cs.W, g.K = cs.K, g.R = g.S = 1, g.P = P, g.Q = Q;
    g.sh = g.sw = 1;
    g.x_img = int64_t(cs.C + 3) * cs.H * cs.W;
    g.y_img = int64_t(cs.K + (slice ? 2 : 0)) * P * Q;
    ASSERT_TRUE(wgrad_pw_takes(g));
    const int chunks = wgrad_pw_chunks(g);
    for (int cps : {chunks, 1}) {
      const int splits = wgrad_pw_split_count(g, cps);
      EXPECT_EQ(splits, cps == chunks ? 1 : chunks);
      split_runs += splits > 1;
      SCOPED_TRACE("x (" + std::to_string(cs.N) + ", " + std::to_string(cs.C) + ", " + std::to_string(cs.H) +
                   ", " + std::to_string(cs.W) + ") K " + std::to_string(cs.K) + " splits " +
                   std::to_string(splits));
      Tensor dw = Tensor::full(w_shape, std::numeric_limits<double>::quiet_NaN());
      dispatch_wgrad_pw(g, false,
                        EmulateWgrad{g, dybuf.data<float>() + (slice ? int64_t(P) * Q : 0),
                                     xbuf.data<float>(), dw.data<float>(), cps});
      ASSERT_TRUE(within_tf32(dw, ref));
      ++runs;
    }
  }
  EXPECT_EQ(runs, 8);
  EXPECT_EQ(split_runs, 4);  // every case has 2 to 4 stages
  EXPECT_EQ(emu::g_cp_async_misaligned.load(), 0) << "a cp.async from or to a misaligned address";
  // What it refuses: a 3x3, stride 2, padding, a flipped weight, images apart by other than a multiple
  // of the copy width.
  FusedConvGeom ok{};
  ok.N = 2, ok.C = 64, ok.H = ok.W = ok.P = ok.Q = 14, ok.K = 128, ok.R = ok.S = 1, ok.sh = ok.sw = 1;
  ok.x_img = 64 * 196, ok.y_img = 256 * 196;
  EXPECT_TRUE(wgrad_pw_takes(ok));
  EXPECT_EQ(pw_copy_width(196), 4);
  const std::pair<const char*, std::function<void(FusedConvGeom&)>> refused[] = {
      {"a 3x3", [](FusedConvGeom& g) { g.R = g.S = 3; }},
      {"stride 2", [](FusedConvGeom& g) { g.sh = g.sw = 2; }},
      {"padding 1", [](FusedConvGeom& g) { g.ph = g.pw = 1; }},
      {"a flipped weight", [](FusedConvGeom& g) { g.w_flipped = true; }},
      {"x images 2 floats off 16 bytes", [](FusedConvGeom& g) { g.x_img += 2; }},
      {"dy images 1 float off", [](FusedConvGeom& g) { g.y_img += 1; }}};
  for (const auto& [what, change] : refused) {
    FusedConvGeom g = ok;
    change(g);
    EXPECT_FALSE(wgrad_pw_takes(g)) << what;
  }
}

// The pointwise weight gradient with a pre BatchNorm (PRE: a folded norm1's map applied to x as the B
// fragments are read): the same bits as the kernel without it run on the map's output (math::bn_normalize
// and bn_relu with fused_bn_coef's coefficients, as the map's kernel computes them), and within TF32 of
// float64 on the CPU's map (ops::batch_norm_map_saved). The batch form with and without the ReLU, and the
// eval form; x a channel prefix, C past one 64-column block (the lanes past C hold zero coefficients),
// stages past the batch (x zero-filled there: its map meets dy's zeros), whole and split.
TEST(FusedConvEmulation, PointwiseWeightGradientWithPreBatchNorm) {
  struct Case {
    int N, C, H, W, K;
    bool batch, relu;
  };
  const Case cases[] = {
      {3, 70, 4, 4, 130, true, true}, {2, 40, 7, 7, 24, true, false}, {2, 33, 6, 5, 16, false, true}};
  Generator gen(61);
  int runs = 0;
  for (const Case& cs : cases) {
    ops::Conv2dParams p;
    const Tensor xbuf = Tensor::normal({cs.N, cs.C + 3, cs.H, cs.W}, 0.5, 1, gen);
    const Tensor x = xbuf.narrow(1, 0, cs.C);
    const Tensor dy = Tensor::normal({cs.N, cs.K, cs.H, cs.W}, 0, 1, gen);
    ops::BnEval pre;
    pre.gamma = Tensor::uniform({cs.C}, 0.5, 1.5, gen);
    pre.beta = Tensor::normal({cs.C}, 0, 0.5, gen);
    pre.act = cs.relu ? ops::BnAct::Relu : ops::BnAct::None;
    if (cs.batch) {
      pre.save_mean = Tensor::normal({cs.C}, 0.5, 0.2, gen);
      pre.save_invstd = Tensor::uniform({cs.C}, 0.7, 1.3, gen);
    } else {
      pre.running_mean = Tensor::normal({cs.C}, 0.5, 0.2, gen);
      pre.running_var = Tensor::uniform({cs.C}, 0.5, 1.5, gen);
    }
    const FusedBn fpre = host_fused_bn(&pre);
    // The map as the GPU's map kernels compute it, packed: what the kernel without PRE reads.
    Tensor t = Tensor::empty({cs.N, cs.C, cs.H, cs.W});
    const int64_t hw = int64_t(cs.H) * cs.W;
    for (int n = 0; n < cs.N; ++n)
      for (int c = 0; c < cs.C; ++c) {
        float mean, scale, shift;
        fused_bn_coef(fpre, c, mean, scale, shift);
        const float* xp = xbuf.data<float>() + (int64_t(n) * (cs.C + 3) + c) * hw;
        float* tp = t.data<float>() + (int64_t(n) * cs.C + c) * hw;
        for (int64_t i = 0; i < hw; ++i) {
          const float v = math::bn_normalize(xp[i], mean, scale, shift);
          tp[i] = cs.relu ? math::bn_relu(v) : v;
        }
      }
    // The CPU's map (its own arithmetic, in double) for the float64 reference.
    const Tensor t_cpu =
        cs.batch ? ops::batch_norm_map_saved(x, pre.gamma, pre.beta, pre.save_mean, pre.save_invstd, pre.act)
                 : ops::batch_norm_forward_eval(x, pre.gamma, pre.beta, pre.running_mean, pre.running_var,
                                                pre.eps, pre.act);
    const Shape w_shape{cs.K, cs.C, 1, 1};
    const test::ConvGradReference ref =
        test::conv_backward_reference(dy, t_cpu, t_cpu.shape(), w_shape, p, true);
    FusedConvGeom g{};
    g.N = cs.N, g.C = cs.C, g.H = cs.H, g.W = cs.W, g.K = cs.K, g.R = g.S = 1, g.P = cs.H, g.Q = cs.W;
    g.sh = g.sw = 1;
    g.x_img = int64_t(cs.C + 3) * hw;
    g.y_img = int64_t(cs.K) * hw;
    FusedConvGeom gt = g;  // the map's output, packed
    gt.x_img = int64_t(cs.C) * hw;
    ASSERT_TRUE(wgrad_pw_takes(g));
    const int chunks = wgrad_pw_chunks(g);
    for (int cps : {chunks, 1}) {
      SCOPED_TRACE(std::string(cs.batch ? "batch" : "eval") + (cs.relu ? " relu" : "") + " C " +
                   std::to_string(cs.C) + " splits " + std::to_string(wgrad_pw_split_count(g, cps)));
      Tensor dw = Tensor::full(w_shape, std::numeric_limits<double>::quiet_NaN());
      EmulateWgrad with{g, dy.data<float>(), xbuf.data<float>(), dw.data<float>(), cps, fpre};
      dispatch_wgrad_pw(g, true, with);
      ASSERT_TRUE(within_tf32(dw, ref));
      Tensor dw_map = Tensor::full(w_shape, std::numeric_limits<double>::quiet_NaN());
      dispatch_wgrad_pw(gt, false,
                        EmulateWgrad{gt, dy.data<float>(), t.data<float>(), dw_map.data<float>(), cps});
      EXPECT_EQ(ops::max_abs_diff(dw, dw_map), 0.0) << "PRE is not the kernel on the map's output";
      ++runs;
    }
  }
  EXPECT_EQ(runs, 6);
  EXPECT_EQ(emu::g_cp_async_misaligned.load(), 0) << "a cp.async from or to a misaligned address";
}

}  // namespace
}  // namespace ladnn::cuda
