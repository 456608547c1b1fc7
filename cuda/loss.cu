// cuda/loss.cu — binary cross-entropy on logits, value and gradient, on the GPU. Native only.
//
// The same stable formula as the CPU (tensor/cpu/loss.cpp explains it):
//     l = max(x, 0) - x y + log1p(exp(-|x|)),   dl/dx = sigmoid(x) - y,   both times the weight.
// Computed in double and rounded once, as the CPU does: the loss tensors are tiny (batch x 6 for
// LA-DNN), so double costs nothing, and the GPU then agrees with the CPU to the last float bit in all
// but rare ties. __dmul_rn keeps nvcc from fusing x*y into the subtraction (the CPU rounds it apart).
//
// Mean/Sum reduce in two deterministic passes, in double: up to 256 blocks each sum a grid-stride share
// of the terms (warp shuffles, then one warp), then one block sums the block partials in a fixed order.
// The backward reads the upstream gradient of a Mean/Sum from device memory (a 0-d tensor), never with
// item(): no host synchronisation inside a training step.
#include "cuda/allocator.h"
#include "cuda/kernel_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

using namespace detail;

constexpr int kMaxReduceBlocks = 256;

__device__ __forceinline__ double bce_term(float x, float y) {
  const double xd = x;
  return fmax(xd, 0.0) - __dmul_rn(xd, static_cast<double>(y)) + ::log1p(::exp(-fabs(xd)));
}

__device__ __forceinline__ double stable_sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + ::exp(-x));
  const double e = ::exp(x);
  return e / (1.0 + e);
}

// Reduction::None: one loss per element.
__global__ void bce_forward_kernel(float* __restrict__ out, const float* __restrict__ x,
                                   const float* __restrict__ y, const float* __restrict__ w, int64_t n) {
  pdl_enter();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double l = bce_term(x[i], y[i]);
    if (w) l *= static_cast<double>(w[i]);
    out[i] = static_cast<float>(l);
  }
}

// Mean/Sum pass 1: partial[blockIdx.x] = sum of this block's grid-stride share.
__global__ void __launch_bounds__(kThreads)
    bce_partial_kernel(double* __restrict__ partial, const float* __restrict__ x, const float* __restrict__ y,
                       const float* __restrict__ w, int64_t n) {
  pdl_enter();
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double l = bce_term(x[i], y[i]);
    if (w) l *= static_cast<double>(w[i]);
    acc += l;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Mean/Sum pass 2 (one block): out = (sum of the partials) / divisor (n for Mean, 1 for Sum).
__global__ void __launch_bounds__(kThreads)
    bce_finish_kernel(float* __restrict__ out, const double* __restrict__ partial, int count,
                      double divisor) {
  pdl_enter();
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<float>(acc / divisor);
}

// dx = (sigmoid(x) - y) * w * upstream; upstream is dout[i] (None) or dout[0] / divisor (Mean/Sum).
__global__ void bce_backward_kernel(float* __restrict__ dx, const float* __restrict__ x,
                                    const float* __restrict__ y, const float* __restrict__ w,
                                    const float* __restrict__ dout, bool per_element, double divisor,
                                    int64_t n) {
  pdl_enter();
  const double scale = per_element ? 0.0 : static_cast<double>(dout[0]) / divisor;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double g = stable_sigmoid(static_cast<double>(x[i])) - static_cast<double>(y[i]);
    if (w) g *= static_cast<double>(w[i]);
    g *= per_element ? static_cast<double>(dout[i]) : scale;
    dx[i] = static_cast<float>(g);
  }
}

struct Operands {
  Tensor x, y, w;  // contiguous; w undefined or x's shape
};

Operands prepare(const char* op, const Tensor& x, const Tensor& y, const Tensor& weight) {
  require_float32(x, op, "input");
  require_float32(y, op, "target");
  Operands o{x.contiguous(), y.contiguous(), Tensor()};
  if (weight.defined()) {
    require_float32(weight, op, "weight");
    o.w = (weight.shape() == x.shape() ? weight : expand_to(weight, x.shape())).contiguous();
  }
  return o;
}

const float* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<float>() : nullptr;
}

}  // namespace

Tensor bce_with_logits(const Tensor& x, const Tensor& y, const Tensor& weight, ops::Reduction reduction) {
  const Operands o = prepare("bce_with_logits", x, y, weight);
  const int64_t n = x.numel();
  cudaStream_t st = current_stream();
  if (reduction == ops::Reduction::None) {
    Tensor out = Tensor::empty(x.shape(), DType::Float32, x.device());
    if (n == 0) return out;
    launch_kernel(bce_forward_kernel, grid_for(n), kThreads, 0, st, out.data<float>(), o.x.data<float>(),
                  o.y.data<float>(), ptr_or_null(o.w), n);
    CUDA_CHECK_LAUNCH();
    return out;
  }
  Tensor out = Tensor::empty({}, DType::Float32, x.device());
  const double divisor = reduction == ops::Reduction::Mean ? static_cast<double>(n) : 1.0;
  if (n == 0) {  // Sum of nothing is 0; Mean is 0/0 = NaN, as PyTorch and the CPU
    out.fill_(reduction == ops::Reduction::Mean ? std::numeric_limits<double>::quiet_NaN() : 0.0);
    return out;
  }
  const int blocks = static_cast<int>(std::min<int64_t>(grid_for(n), kMaxReduceBlocks));
  Buffer partial(blocks * sizeof(double));
  launch_kernel(bce_partial_kernel, blocks, kThreads, 0, st, partial.as<double>(), o.x.data<float>(),
                o.y.data<float>(), ptr_or_null(o.w), n);
  CUDA_CHECK_LAUNCH();
  launch_kernel(bce_finish_kernel, 1, kThreads, 0, st, out.data<float>(), partial.as<double>(), blocks,
                divisor);
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor bce_with_logits_backward(const Tensor& dout, const Tensor& x, const Tensor& y, const Tensor& weight,
                                ops::Reduction reduction) {
  const Operands o = prepare("bce_with_logits_backward", x, y, weight);
  require_float32(dout, "bce_with_logits_backward", "grad_output");
  const int64_t n = x.numel();
  Tensor dx = Tensor::empty(x.shape(), DType::Float32, x.device());
  if (n == 0) return dx;
  const bool per_element = reduction == ops::Reduction::None;
  const Tensor d = dout.contiguous();
  const double divisor = reduction == ops::Reduction::Mean ? static_cast<double>(n) : 1.0;
  launch_kernel(bce_backward_kernel, grid_for(n), kThreads, 0, current_stream(), dx.data<float>(),
                o.x.data<float>(), o.y.data<float>(), ptr_or_null(o.w), d.data<float>(), per_element, divisor,
                n);
  CUDA_CHECK_LAUNCH();
  return dx;
}

}  // namespace ladnn::cuda
