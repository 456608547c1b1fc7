// cuda/bnpool_util.cuh — small helpers shared by cuda/batchnorm.cu and cuda/pool.cu (nvcc only):
// argument checks for the GPU, output allocation, launch sizes,
// RAII cuDNN descriptors and warp/block reductions.
//
// Everything is in an anonymous namespace: each .cu gets its own copy (no relocatable device code, so
// a __global__ function must not be defined in two translation units with external linkage).
#pragma once

#define LADNN_CHECK_CUDNN 1  // cuda/check.h: define CUDNN_CHECK
#include <cudnn.h>

#include <climits>
#include <cstdint>
#include <string>

#include "cuda/bnpool_math.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/launch.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"
#include "tensor/ops.h"
#include "tensor/tensor.h"

#ifndef CUDNN_CHECK
#error "cuda/check.h was included before cuda/bnpool_util.cuh without LADNN_CHECK_CUDNN"
#endif

namespace ladnn::cuda {
namespace {

/// The GPU kernels are float32 only (cuda/ops.h); say so in the op's words.
inline void require_float32(const std::string& op, const Tensor& t, const char* name) {
  if (!t.defined()) return;
  check(t.dtype() == DType::Float32, op + ": " + name + " is " + dtype_name(t.dtype()) + " on " +
                                         t.device().str() + "; the GPU kernels take float32 only");
}

/// A new contiguous tensor on `device` for an op's output (from the caching allocator; tests fill new
/// blocks with NaN through cuda::set_fill_on_allocate to prove every element is written).
inline Tensor new_output(const Shape& shape, DType dtype, Device device) {
  return Tensor::empty(shape, dtype, device);
}

inline cudaStream_t cur_stream() { return static_cast<cudaStream_t>(stream()); }
inline cudnnHandle_t cudnn_handle() { return static_cast<cudnnHandle_t>(cudnn()); }

/// Blocks for a grid-stride loop over `n` items with `threads` per block: enough to fill the GPU
/// (32 blocks per SM), never more than the work needs. n must be > 0.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t need = (n + threads - 1) / threads;
  const int64_t cap = int64_t(sm_count()) * 32;
  return static_cast<unsigned>(need < cap ? need : cap);
}

/// A pooling window on an input of shape x (N, C, H, W) giving y, as the pool kernels read it.
inline math::PoolGeom pool_geom(const Shape& x, const Shape& y, const ops::Pool2dParams& p) {
  return {x[2],       x[3],       y[2],    y[3],    p.kernel_h,         p.kernel_w,
          p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.count_include_pad};
}

/// True when p is 16-byte aligned (float4 loads and stores).
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

/// cuDNN takes int dimensions; say which op and shape overflowed instead of letting it wrap.
inline int to_int(const std::string& op, int64_t v, const Shape& shape) {
  check(v >= 0 && v <= INT_MAX, op + ": shape " + shape_str(shape) + " is too large for cuDNN (int dimensions)");
  return static_cast<int>(v);
}

// ---- RAII cuDNN descriptors (STYLE.md habit 10: destructors never throw) ----------------------------

class TensorDesc {
 public:
  TensorDesc() { CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_)); }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d_); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  /// A packed float32 NCHW tensor.
  void set_nchw(const std::string& op, const Shape& s) {
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(d_, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, to_int(op, s[0], s),
                                           to_int(op, s[1], s), to_int(op, s[2], s), to_int(op, s[3], s)));
  }
  cudnnTensorDescriptor_t get() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

class PoolDesc {
 public:
  PoolDesc() { CUDNN_CHECK(cudnnCreatePoolingDescriptor(&d_)); }
  ~PoolDesc() { cudnnDestroyPoolingDescriptor(d_); }
  PoolDesc(const PoolDesc&) = delete;
  PoolDesc& operator=(const PoolDesc&) = delete;
  cudnnPoolingDescriptor_t get() const { return d_; }

 private:
  cudnnPoolingDescriptor_t d_ = nullptr;
};

// ---- reductions -------------------------------------------------------------------------------------

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
  return v;  // complete in lane 0
}

/// Sum over the block; the result is valid in thread 0. blockDim.x must be a multiple of 32 (<= 1024).
/// `shared` holds 32 floats. Ends with the block synchronised, so `shared` can be reused after.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = threadIdx.x < warps ? shared[threadIdx.x] : 0.0f;
  if (warp == 0) v = warp_sum(v);
  __syncthreads();
  return v;
}

/// Fills n floats with `value` (a ones/zeros stand-in for an undefined gamma/beta).
__global__ void fill_float_kernel(float* __restrict__ p, int64_t n, float value) {
  pdl_enter();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = value;
}

inline void fill_floats(float* p, int64_t n, float value) {
  if (n <= 0) return;
  launch_kernel(fill_float_kernel, grid_for(n, 256), 256, 0, cur_stream(), p, n, value);
  CUDA_CHECK_LAUNCH();
}

}  // namespace
}  // namespace ladnn::cuda
