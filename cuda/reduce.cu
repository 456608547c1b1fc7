// cuda/reduce.cu — sums on the GPU: over everything, over chosen dims, and sum_to (the backward of
// broadcasting). Native only. Every reduction is one general routine:
//
//   Split the input's dims into kept dims (the output's) and reduced dims, merge each group where the
//   strides allow (kernel_util.cuh), and view the input as `outer` outputs x `inner` terms each:
//       out[o] = sum_j in[kept_offset(o) + reduced_offset(j)]
//   No data moves to make the reduced dims contiguous — the offsets come from the strides.
//
// Two kernels, chosen by the memory layout (both are "pass 1" of a tree, see below):
//   reduce_rows_kernel    (block per output) 256 threads share one output's terms, thread t taking terms
//                         t, t+256, …: coalesced when the reduced dims are innermost in memory (sum of an
//                         NCHW map over H, W; the full sum). Warp shuffles, then one warp, sum the block.
//   reduce_columns_kernel (thread per output) each thread sums its output's terms alone: coalesced when
//                         the kept dims are innermost (sum over the batch of (N, C): neighbouring threads
//                         read neighbouring channels), and the better choice too when each output has
//                         only a few contiguous terms (fewer than 256: a block per output would idle).
//                         Used whenever there are enough outputs (>= 128) to keep threads busy and the
//                         rows kernel does not apply.
// Long reductions are split along j into chunks, one block (rows) or one grid row (columns) each, so a
// single sum still uses the whole GPU; each chunk writes a partial sum, and the partials (G chunks x
// outer) are summed by the same routine again, until one chunk remains.
//
// Precision and order: float accumulators (the CPU accumulates in double, which the GPU has at half rate
// on an H100 but a 1/64 rate on most other cards). The order is fixed by the launch configuration, so a
// result is deterministic (no atomics). A thread adds at most kSerial = 32 terms in a row (rows: plus an
// 8-level tree), so each pass adds at most 40 roundings along any path, and the worst-case error is
// about passes * 40 * eps32 * sum |x| (Higham, "Accuracy and Stability of Numerical Algorithms", 4.2):
// with 2 passes for up to 67M terms, ~1e-5 * sum |x|. Typical errors are far smaller (random signs).
#include <limits>

#include "cuda/allocator.h"
#include "cuda/kernel_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

using namespace detail;

constexpr int64_t kSerial = 32;       // terms one thread adds in a row before the partials are combined
constexpr int64_t kMaxGridY = 65535;  // gridDim.y limit
constexpr int64_t kColumnsMinOutputs = 128;

// off: kept_offset(o) + reduced_offset(j). A chunk is terms [c * chunk, min((c + 1) * chunk, inner)).
template <typename Calc>
__global__ void __launch_bounds__(kThreads)
    reduce_rows_kernel(float* __restrict__ dst, const float* __restrict__ src, Calc kept, Calc reduced,
                       typename Calc::index_t outer, typename Calc::index_t inner,
                       typename Calc::index_t chunk) {
  pdl_enter();
  using I = typename Calc::index_t;
  __shared__ float scratch[32];
  const I o = blockIdx.x, c = blockIdx.y;
  I base[1];
  kept.get(o, base);
  const I begin = c * chunk;
  const I end = begin + chunk < inner ? begin + chunk : inner;
  float acc = 0.f;
  for (I j = begin + threadIdx.x; j < end; j += blockDim.x) {
    I off[1];
    reduced.get(j, off);
    acc += src[base[0] + off[0]];
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) dst[static_cast<size_t>(c) * outer + o] = acc;
}

template <typename Calc>
__global__ void __launch_bounds__(kThreads)
    reduce_columns_kernel(float* __restrict__ dst, const float* __restrict__ src, Calc kept, Calc reduced,
                          typename Calc::index_t outer, typename Calc::index_t inner,
                          typename Calc::index_t chunk) {
  pdl_enter();
  using I = typename Calc::index_t;
  const I o = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= outer) return;
  const I c = blockIdx.y;
  I base[1];
  kept.get(o, base);
  const I begin = c * chunk;
  const I end = begin + chunk < inner ? begin + chunk : inner;
  float acc = 0.f;
  for (I j = begin; j < end; ++j) {
    I off[1];
    reduced.get(j, off);
    acc += src[base[0] + off[0]];
  }
  dst[static_cast<size_t>(c) * outer + o] = acc;
}

int64_t last_offset(const Geometry<1>& g) {
  int64_t last = 0;
  for (int d = 0; d < g.ndim; ++d) last += (g.sizes[d] - 1) * g.strides[0][d];
  return last;
}

/// out[o] (contiguous, `outer` values) = sum over j of src[kept(o) + reduced(j)].
void reduce_into(float* out, const float* src, const Geometry<1>& kept, const Geometry<1>& reduced) {
  const int64_t outer = kept.numel(), inner = reduced.numel();
  cudaStream_t st = current_stream();
  if (outer == 0) return;
  if (inner == 0) {  // an empty sum is 0
    CUDA_CHECK(cudaMemsetAsync(out, 0, outer * sizeof(float), st));
    return;
  }
  // Rows when a block's 256 threads can read one output's terms side by side (they are contiguous and
  // at least 256 long), or when there are too few outputs to give every thread one; else columns.
  const bool reduced_innermost = reduced.strides[0][reduced.ndim - 1] == 1 && inner >= kThreads;
  const bool rows = reduced_innermost || outer < kColumnsMinOutputs;
  // Chunk length: rows take kThreads * kSerial terms per block, columns kSerial per thread; longer only
  // when the grid's y limit forces it (then a thread adds more than kSerial terms in a row).
  int64_t chunk = rows ? kThreads * kSerial : kSerial;
  int64_t chunks = (inner + chunk - 1) / chunk;
  if (chunks > kMaxGridY) {
    chunk = (inner + kMaxGridY - 1) / kMaxGridY;
    if (rows) chunk = (chunk + kThreads - 1) / kThreads * kThreads;
    chunks = (inner + chunk - 1) / chunk;
  }
  Buffer partial;
  float* dst = out;
  if (chunks > 1) {
    partial = Buffer(static_cast<std::size_t>(chunks * outer) * sizeof(float));
    dst = partial.as<float>();
  }
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();
  const bool small =
      last_offset(kept) + last_offset(reduced) < kMax32 && chunks * outer < kMax32 && inner + chunk < kMax32;
  auto launch = [&](auto index_tag) {
    using I = decltype(index_tag);
    const OffsetCalc<1, I> kc(kept), rc(reduced);
    if (rows) {
      const dim3 grid(static_cast<unsigned>(outer), static_cast<unsigned>(chunks));
      launch_kernel(reduce_rows_kernel<OffsetCalc<1, I>>, grid, kThreads, 0, st, dst, src, kc, rc,
                    static_cast<I>(outer), static_cast<I>(inner), static_cast<I>(chunk));
    } else {
      const dim3 grid(static_cast<unsigned>((outer + kThreads - 1) / kThreads),
                      static_cast<unsigned>(chunks));
      launch_kernel(reduce_columns_kernel<OffsetCalc<1, I>>, grid, kThreads, 0, st, dst, src, kc, rc,
                    static_cast<I>(outer), static_cast<I>(inner), static_cast<I>(chunk));
    }
    CUDA_CHECK_LAUNCH();
  };
  if (small)
    launch(uint32_t{});
  else
    launch(uint64_t{});
  if (chunks > 1) {
    // Pass 2 (and on): the partials, laid out (chunks, outer), summed over the chunks.
    Geometry<1> k2 = make_geometry<1>({outer}, {Shape{1}}, "sum");
    Geometry<1> r2 = make_geometry<1>({chunks}, {Shape{outer}}, "sum");
    reduce_into(out, dst, k2, r2);
  }
  // `partial` returns to the cache here; the kernels queued above still own it (stream order).
}

/// Sums `a` over the dims with mask[d]; the result has a's rank with size 1 at the reduced dims.
Tensor reduce_sum(const Tensor& a, const std::vector<bool>& mask, const char* name) {
  require_float32(a, name);
  Shape out_shape = a.shape();
  Shape ks, kst, rs, rst;
  for (std::size_t d = 0; d < mask.size(); ++d) {
    if (mask[d]) {
      out_shape[d] = 1;
      rs.push_back(a.shape()[d]);
      rst.push_back(a.strides()[d]);
    } else {
      ks.push_back(a.shape()[d]);
      kst.push_back(a.strides()[d]);
    }
  }
  Tensor out = Tensor::empty(out_shape, DType::Float32, a.device());
  if (out.numel() == 0) return out;
  // A reduced dim of size 0 keeps its 0 in the geometry: inner == 0, and reduce_into writes zeros.
  const Geometry<1> kept = make_geometry<1>(ks, {kst}, name);
  const Geometry<1> reduced = make_geometry<1>(rs, {rst}, name);
  reduce_into(out.data<float>(), a.data<float>(), kept, reduced);
  return out;
}

}  // namespace

Tensor sum(const Tensor& a) {
  return reduce_sum(a, std::vector<bool>(a.dim(), true), "sum").reshape({});
}

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  // tensor/ops.h has checked the dims (in range, none twice).
  std::vector<bool> mask(a.dim(), false);
  for (int64_t d : dims) mask[d < 0 ? d + a.dim() : d] = true;
  Tensor r = reduce_sum(a, mask, "sum");
  if (keepdim) return r;
  Shape kept;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (!mask[d]) kept.push_back(a.shape()[d]);
  return r.reshape(kept);
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  // tensor/ops.h has checked that `shape` broadcasts to grad's shape.
  if (grad.shape() == shape) return grad;
  const std::size_t lead = grad.dim() - shape.size();
  std::vector<bool> mask(grad.dim(), false);
  for (std::size_t d = 0; d < static_cast<std::size_t>(grad.dim()); ++d)
    mask[d] = d < lead || (shape[d - lead] == 1 && grad.shape()[d] != 1);
  return reduce_sum(grad, mask, "sum_to").reshape(shape);
}

}  // namespace ladnn::cuda
