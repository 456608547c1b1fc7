// cuda/tensor_kernels.cu — the tensor plumbing of cuda/ops.h: strided copy and fill on the GPU.
//
// Tensor::copy_ and Tensor::fill_ (tensor/tensor.cpp) call these for device tensors, so every view
// (narrow, transpose, an expanded stride-0 view, DenseNet's channel slices) can be written and read.
//   strided_copy  dst[i] = src[i] for every multi-index i, any strides, dtype converted. Two contiguous
//                 tensors of one dtype: one cudaMemcpyAsync. Otherwise one thread per element walks both
//                 geometries (cuda/kernel_util.cuh). Conversions go through double, as the CPU path does.
//   fill          every element = value; all-zero bytes on a contiguous tensor: one cudaMemsetAsync.
#include <cmath>
#include <cstring>

#include "cuda/kernel_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

using namespace detail;

template <typename Dst, typename Src>
__device__ __forceinline__ Dst convert(Src v) {
  if constexpr (std::is_same_v<Dst, Src>)
    return v;
  else
    return static_cast<Dst>(static_cast<double>(v));  // as the CPU copy_: through double
}

// off[0]: destination, off[1]: source.
template <typename Dst, typename Src, typename Calc>
__global__ void copy_kernel(Dst* __restrict__ dst, const Src* __restrict__ src, Calc calc,
                            typename Calc::index_t n) {
  pdl_enter();
  using I = typename Calc::index_t;
  for (I i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    I off[2];
    calc.get(i, off);
    dst[off[0]] = convert<Dst>(src[off[1]]);
  }
}

template <typename T, typename Calc>
__global__ void fill_kernel(T* __restrict__ dst, T value, Calc calc, typename Calc::index_t n) {
  pdl_enter();
  using I = typename Calc::index_t;
  for (I i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    I off[1];
    calc.get(i, off);
    dst[off[0]] = value;
  }
}

bool same_view(const Tensor& a, const Tensor& b) {
  return a.shares_storage(b) && a.offset() == b.offset() && a.strides() == b.strides() &&
         a.dtype() == b.dtype();
}

/// [first, last] byte of the storage a (non-empty) view can touch.
std::pair<int64_t, int64_t> byte_span(const Tensor& t) {
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype()));
  int64_t last = t.offset();
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.shape()[d] - 1) * t.strides()[d];
  return {t.offset() * es, (last + 1) * es - 1};
}

/// True when two views of one storage may touch the same bytes (disjoint spans never do).
bool may_overlap(const Tensor& a, const Tensor& b) {
  if (!a.shares_storage(b)) return false;
  const auto sa = byte_span(a), sb = byte_span(b);
  return sa.first <= sb.second && sb.first <= sa.second;
}

}  // namespace

void strided_copy(Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  if (same_view(dst, src)) return;
  if (may_overlap(dst, src)) {
    // Overlapping views (a shifted slice of the same buffer) would race: copy through a temporary.
    Tensor tmp = Tensor::empty(src.shape(), src.dtype(), src.device());
    strided_copy(tmp, src);
    strided_copy(dst, tmp);
    return;
  }
  cudaStream_t st = current_stream();
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), n * dtype_size(dst.dtype()),
                               cudaMemcpyDeviceToDevice, st));
    return;
  }
  const Geometry<2> g = make_geometry<2>(dst.shape(), {dst.strides(), src.strides()}, "copy_");
  dispatch_dtype(dst.dtype(), [&](auto dst_tag) {
    using D = decltype(dst_tag);
    dispatch_dtype(src.dtype(), [&](auto src_tag) {
      using S = decltype(src_tag);
      with_index_type(g, [&](auto calc) {
        using I = typename decltype(calc)::index_t;
        launch_kernel(copy_kernel<D, S, decltype(calc)>, grid_for(n), kThreads, 0, st,
                      static_cast<D*>(dst.raw_data()), static_cast<const S*>(src.raw_data()), calc,
                      static_cast<I>(n));
        CUDA_CHECK_LAUNCH();
      });
    });
  });
}

void fill(Tensor& t, double value) {
  const int64_t n = t.numel();
  if (n == 0) return;
  cudaStream_t st = current_stream();
  // 0.0 (not -0.0) is all-zero bytes in every dtype.
  if (value == 0.0 && !std::signbit(value) && t.is_contiguous()) {
    CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, n * dtype_size(t.dtype()), st));
    return;
  }
  const Geometry<1> g = make_geometry<1>(t.shape(), {t.strides()}, "fill_");
  dispatch_dtype(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_index_type(g, [&](auto calc) {
      using I = typename decltype(calc)::index_t;
      launch_kernel(fill_kernel<T, decltype(calc)>, grid_for(n), kThreads, 0, st,
                    static_cast<T*>(t.raw_data()), static_cast<T>(value), calc, static_cast<I>(n));
      CUDA_CHECK_LAUNCH();
    });
  });
}

__global__ void increment_kernel(int64_t* __restrict__ t, int64_t n) {
  pdl_enter();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    t[i] += 1;
}

void increment_(Tensor& t) {
  const int64_t n = t.numel();
  if (n == 0) return;
  launch_kernel(increment_kernel, grid_for(n), kThreads, 0, current_stream(),
                static_cast<int64_t*>(t.raw_data()), n);
  CUDA_CHECK_LAUNCH();
}

// Up to kCounters tensors per launch, passed by value (2 KB of kernel parameters).
constexpr int kCounters = 128;
struct CounterBatch {
  int64_t* p[kCounters];
  int64_t n[kCounters];
};

// Block b adds 1 to every element of tensor b.
__global__ void increment_all_kernel(CounterBatch batch) {
  pdl_enter();
  int64_t* t = batch.p[blockIdx.x];
  for (int64_t i = threadIdx.x; i < batch.n[blockIdx.x]; i += blockDim.x) t[i] += 1;
}

void increment_all_(const std::vector<Tensor>& counters) {
  CounterBatch batch{};
  int count = 0;
  auto launch = [&] {
    if (count == 0) return;
    launch_kernel(increment_all_kernel, count, 32, 0, current_stream(), batch);
    CUDA_CHECK_LAUNCH();
    count = 0;
  };
  for (const Tensor& t : counters) {
    if (t.numel() == 0) continue;
    batch.p[count] = static_cast<int64_t*>(t.raw_data());
    batch.n[count] = t.numel();
    if (++count == kCounters) launch();
  }
  launch();
}

}  // namespace ladnn::cuda
