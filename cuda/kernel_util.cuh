// cuda/kernel_util.cuh — plumbing shared by ladnn's hand-written kernels (.cu files only).
//
//   Geometry / OffsetCalc   strided N-d indexing: the linear index of an element in row-major order over
//                           an iteration shape -> its element offset in each of N operands. Adjacent dims
//                           are merged first wherever every operand allows (a contiguous tensor becomes
//                           1-d, an NCHW slice 2-d), so the per-element cost is one or two divisions.
//   with_index_type         runs a launch with 32-bit index math when every offset fits (the common case:
//                           64-bit integer division is several times slower on the GPU), 64-bit otherwise.
//   grid_for                a grid for a grid-stride loop: one thread per element up to a cap, then each
//                           thread takes several (the cap is far above what an H100 keeps resident).
//   require_float32         the GPU computes in float32 only (DESIGN.md); anything else is a clear error.
//   block_sum               a deterministic block-wide sum: warp shuffles, then one warp over the warps.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/context.h"
#include "tensor/tensor.h"

namespace ladnn::cuda::detail {

constexpr int kThreads = 256;         // per block: 8 warps; 8 such blocks fill an H100 SM (2048 threads)
constexpr int64_t kMaxBlocks = 8192;  // grid-stride cap: 8192 * 256 = 2M threads, ~8x what 132 SMs hold
constexpr int kMaxDims = 8;           // after merging; DenseNet's tensors have at most 4

inline cudaStream_t current_stream() {
  return stream();
}

inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, kMaxBlocks)));
}

inline void require_float32(const Tensor& t, const char* op, const char* name = "input") {
  if (t.dtype() != DType::Float32)
    throw Error(std::string(op) + ": " + name + " is " + dtype_name(t.dtype()) + " on " + t.device().str() +
                "; the GPU computes in float32 only (convert with .to(DType::Float32))");
}

/// Iteration sizes and each operand's strides (in elements), after merging; innermost dim last.
template <int N>
struct Geometry {
  int ndim = 1;
  int64_t sizes[kMaxDims] = {1};
  int64_t strides[N][kMaxDims] = {};
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= sizes[d];
    return n;
  }
};

/// Builds the geometry of `shape` seen through N stride vectors (one per operand; 0 = broadcast).
/// Size-1 dims are dropped; dims d and d+1 merge when, for every operand, stride[d] ==
/// stride[d+1] * size[d+1] (walking d then d+1 is then one longer walk).
template <int N>
Geometry<N> make_geometry(const Shape& shape, const std::array<Shape, N>& strides, const char* op) {
  struct Dim {
    int64_t size;
    int64_t stride[N];
  };
  std::vector<Dim> merged;  // innermost first while building
  for (std::size_t i = shape.size(); i-- > 0;) {
    if (shape[i] == 1) continue;
    Dim d;
    d.size = shape[i];
    for (int k = 0; k < N; ++k) d.stride[k] = strides[k][i];
    if (!merged.empty()) {
      Dim& inner = merged.back();
      bool ok = true;
      for (int k = 0; k < N; ++k) ok = ok && d.stride[k] == inner.stride[k] * inner.size;
      if (ok) {
        inner.size *= d.size;
        continue;
      }
    }
    merged.push_back(d);
  }
  Geometry<N> g;
  if (merged.empty()) return g;  // one element: ndim 1, size 1, strides 0
  if (merged.size() > static_cast<std::size_t>(kMaxDims))
    throw Error(std::string(op) + ": shape " + shape_str(shape) + " has " + std::to_string(merged.size()) +
                " dimensions that cannot be merged; the GPU kernels take at most " +
                std::to_string(kMaxDims));
  g.ndim = static_cast<int>(merged.size());
  for (int d = 0; d < g.ndim; ++d) {
    const Dim& m = merged[merged.size() - 1 - d];
    g.sizes[d] = m.size;
    for (int k = 0; k < N; ++k) g.strides[k][d] = m.stride[k];
  }
  return g;
}

/// True when the geometry's linear indices and every operand's offsets fit in 32 bits.
template <int N>
bool fits_int32(const Geometry<N>& g) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (g.numel() > kMax) return false;
  for (int k = 0; k < N; ++k) {
    int64_t last = 0;
    for (int d = 0; d < g.ndim; ++d) last += (g.sizes[d] - 1) * g.strides[k][d];
    if (last > kMax) return false;
  }
  return true;
}

/// Device side of Geometry with the index type chosen by with_index_type. Strides are never negative
/// in ladnn (views are narrow/transpose/expand), so unsigned types serve.
template <int N, typename IndexT>
struct OffsetCalc {
  using index_t = IndexT;
  int ndim;
  IndexT sizes[kMaxDims];
  IndexT strides[N][kMaxDims];

  explicit OffsetCalc(const Geometry<N>& g) : ndim(g.ndim) {
    for (int d = 0; d < kMaxDims; ++d) {
      sizes[d] = static_cast<IndexT>(d < g.ndim ? g.sizes[d] : 1);
      for (int k = 0; k < N; ++k) strides[k][d] = static_cast<IndexT>(d < g.ndim ? g.strides[k][d] : 0);
    }
  }

  /// Offsets of the element with row-major index `linear`: peel the innermost index off first.
  __device__ __forceinline__ void get(IndexT linear, IndexT (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d > 0; --d) {
      const IndexT q = linear / sizes[d];
      const IndexT i = linear - q * sizes[d];
      linear = q;
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += i * strides[k][d];
    }
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += linear * strides[k][0];  // the outermost index is what is left
  }
};

/// Calls f(OffsetCalc<N, uint32_t>) when the geometry fits 32-bit indexing, else f(OffsetCalc<N, uint64_t>).
template <int N, typename F>
void with_index_type(const Geometry<N>& g, F&& f) {
  if (fits_int32(g))
    f(OffsetCalc<N, uint32_t>(g));
  else
    f(OffsetCalc<N, uint64_t>(g));
}

/// Strides of `t` seen from the shape `out` it broadcasts to: leading and size-1 dims get stride 0.
inline Shape broadcast_strides(const Tensor& t, const Shape& out) {
  Shape s(out.size(), 0);
  const std::size_t lead = out.size() - t.shape().size();
  for (std::size_t d = 0; d < t.shape().size(); ++d) s[lead + d] = t.shape()[d] == 1 ? 0 : t.strides()[d];
  return s;
}

/// Calls f(T{}) with T the C++ type of `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32:
      f(float{});
      return;
    case DType::Float64:
      f(double{});
      return;
    case DType::Int64:
      f(int64_t{});
      return;
  }
}

/// True when a geometry is one contiguous run for every operand (the flat fast path applies).
template <int N>
bool is_flat(const Geometry<N>& g) {
  if (g.ndim != 1) return false;
  for (int k = 0; k < N; ++k)
    if (g.strides[k][0] != 1 && g.sizes[0] != 1) return false;
  return true;
}

/// Sum of `v` over the block; the result is valid in thread 0. Deterministic: a fixed shuffle tree in
/// each warp, then warp 0 sums the warps' partials in the same tree. blockDim.x must be a multiple of
/// 32 and at most 1024. `scratch` holds 32 values in shared memory.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = threadIdx.x < warps ? scratch[threadIdx.x] : T(0);
  if (warp == 0) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;
}

}  // namespace ladnn::cuda::detail
