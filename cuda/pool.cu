// cuda/pool.cu — max, average and adaptive-average 2-D pooling on the GPU (float32, NCHW), with the
// semantics of tensor/cpu/pool.cpp (read its header for the window and divisor rules).
//
// Versions (cuda::impl(Family::Pool), LADNN_POOL=cudnn|native):
//   max forward    cudnn:  cudnnPoolingForward (CUDNN_POOLING_MAX, NaN propagated) for y, plus our
//                          max_pool_forward<index only> for the int64 indices, which cuDNN does not return.
//                  native: max_pool_forward<y and index>, one thread per output.
//   max backward   both:   with the pooling parameters (every autograd call): max_pool_backward_plane,
//                          a block per plane and a thread per input cell summing the dy of the windows
//                          whose index names it (deterministic, no zeroing pass; 32-bit index arithmetic
//                          within a plane; dy read in place when only its samples are spaced), or
//                          max_pool_backward_gather (flat, 64-bit) for planes past 2^31 cells; without them
//                          (ops::max_pool2d_backward's three-argument form): max_pool_backward (zero dx, then
//                          scatter dy to dx[index] with atomicAdd). cudnnPoolingBackward cannot serve this
//                          API: it recomputes the argmax from x and y, which max_pool2d_backward(dy, indices,
//                          x_shape) does not carry. Routing gradients through the saved indices is also what
//                          makes both versions send every gradient exactly where the CPU does.
//   avg forward    cudnn:  cudnnPoolingForward, CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING or _EXCLUDE_.
//                  native: avg_pool_forward, one thread per output.
//   avg backward   cudnn:  cudnnPoolingBackward (same mode).
//                  native: avg_pool_backward, one thread per *input* element gathering the outputs whose
//                          windows contain it: no atomics, deterministic.
//   adaptive avg   native only: adaptive_avg_forward (a warp per output; 1x1 is DenseNet's global
//                  average pool over 7x7) and adaptive_avg_backward (gather, as above).
//   eval BN + avg  native only (with LADNN_BN and LADNN_POOL both native; otherwise ops composes the two
//                  ops): bn_avg_pool_eval, a block per (n, c) plane: the channel's eval coefficients as
//                  bn_eval_plane_kernel derives them, then each output averages its window of the
//                  normalised (and rectified) input, the same bits as the two native kernels in sequence.
//                  A DenseNet transition's norm-relu-pool at inference: the normalised map (as large as
//                  the block's output) is never written or read back.
//
// Indices are identical to the CPU's in both versions because one kernel computes them with the CPU's
// rule: flat h*W + w in the input plane; scan rows then columns of the window clipped to the input
// (padding is never selected); a strictly larger value or a NaN takes over, so ties keep the first
// maximum and a NaN wins.
//
// cuDNN has no ceil mode and pads symmetrically. We ask cuDNN for its output size
// (cudnnGetPooling2dForwardOutputDim) and use cuDNN only when it equals ours; ceil mode that adds a
// last window (which may overhang the padded input, changing the include-pad divisor) runs the native
// kernels instead, and the profiler's table says "native" for those calls. In floor mode every window
// lies inside the padded input, so INCLUDE_PADDING's divisor (kernel_h * kernel_w) is PyTorch's, and
// EXCLUDE_PADDING's (the cells inside the input) is count_include_pad=False's. cuDNN's max pooling
// treats padding as -inf, as PyTorch does (a window is never all padding: pad <= kernel/2 is checked).
//
// Determinism: the scatter form's atomicAdd makes the order of the (at most ceil(kernel/stride)^2, e.g. 4
// for DenseNet's 3x3 stride-2 stem pool) additions into one input cell vary between runs, so dx may
// differ in the last bits from run to run. That noise reached every parameter after a step and made two
// runs of the same training drift apart (a ReLU input near zero flips its mask), which is why autograd
// passes the parameters and gets the gather. Everything else here is deterministic.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

#include "cuda/allocator.h"
#include "cuda/bnpool_math.h"
#include "cuda/bnpool_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

using math::PoolGeom;

constexpr int kThreads = 256;

// ---- kernels: grid-stride loops over math:: functions (cuda/bnpool_math.h, shared with a host test) ----

// One thread per output. WRITE_Y = false computes only the indices (the cuDNN version, whose y comes
// from cudnnPoolingForward); ind null: only y (inference, no indices wanted).
template <bool WRITE_Y>
__global__ void max_pool_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                        int64_t* __restrict__ ind, int64_t total, PoolGeom g) {
  pdl_enter();
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    float v;
    int64_t i;
    math::max_pool_at(x, o, g, v, i);
    if constexpr (WRITE_Y) y[o] = v;
    if (ind) ind[o] = i;
  }
}

// One thread per output: dx[plane][ind] += dy. dx must be zeroed first. An index outside the plane
// (indices not from max_pool2d_forward on this shape) is skipped: the CPU throws for it, but a kernel
// cannot throw, and reporting it would need a host synchronisation.
__global__ void max_pool_backward_kernel(const float* __restrict__ dy, const int64_t* __restrict__ ind,
                                         float* __restrict__ dx, int64_t total, int64_t OHW, int64_t HW) {
  pdl_enter();
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = ind[o];
    if (i < 0 || i >= HW) continue;
    atomicAdd(dx + (o / OHW) * HW + i, dy[o]);
  }
}

// One thread per input cell, gathering (math::max_pool_backward_at): no atomics, no zeroing pass.
__global__ void max_pool_backward_gather_kernel(const float* __restrict__ dy, const int64_t* __restrict__ ind,
                                                float* __restrict__ dx, int64_t total, PoolGeom g) {
  pdl_enter();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = math::max_pool_backward_at(dy, ind, i, g);
}

// The same gather a block per plane (math::max_pool_backward_cell: 32-bit index arithmetic within a plane),
// dy's samples sD floats apart (a channel prefix of a gradient buffer, read in place); indices and dx packed.
__global__ void max_pool_backward_plane_kernel(const float* __restrict__ dy, int64_t sD,
                                               const int64_t* __restrict__ ind, float* __restrict__ dx,
                                               int64_t planes, int64_t C, PoolGeom g) {
  pdl_enter();
  const int32_t HW = static_cast<int32_t>(g.H * g.W), W = static_cast<int32_t>(g.W);
  const int64_t out_plane = g.OH * g.OW;
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const int64_t c = plane % C, n = plane / C;
    const float* dyp = dy + n * sD + c * out_plane;
    const int64_t* indp = ind + plane * out_plane;
    float* dxp = dx + plane * HW;
    for (int32_t r = threadIdx.x; r < HW; r += blockDim.x) {
      const int32_t h = r / W;
      dxp[r] = math::max_pool_backward_cell(dyp, indp, h, r - h * W, g);
    }
  }
}

// Block b: planes b, b + gridDim.x, ... (plane = n * C + c; x's samples sN floats apart, y packed).
// Coefficients as bn_eval_plane_kernel's (cuda/batchnorm.cu): scale = gamma / sqrt(var + eps) in double,
// rounded once; then math::avg_pool_at over math::BnEvalMap.
__global__ void bn_avg_pool_eval_kernel(const float* __restrict__ x, int64_t sN, float* __restrict__ y,
                                        int64_t planes, int64_t C, PoolGeom g, double eps,
                                        const float* __restrict__ gamma, const float* __restrict__ beta,
                                        const float* __restrict__ mean, const float* __restrict__ var,
                                        bool relu) {
  pdl_enter();
  const int64_t out_plane = g.OH * g.OW;
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const int64_t c = plane % C, n = plane / C;
    const double invstd = 1.0 / ::sqrt(double(var[c]) + eps);
    const double gm = gamma ? gamma[c] : 1.0;
    const math::BnEvalMap map{mean[c], static_cast<float>(gm * invstd), beta ? beta[c] : 0.0f, relu};
    const float* xp = x + n * sN + c * g.H * g.W;
    float* yp = y + plane * out_plane;
    for (int64_t o = threadIdx.x; o < out_plane; o += blockDim.x) yp[o] = math::avg_pool_at(xp, o, g, map);
  }
}

__global__ void avg_pool_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t total,
                                        PoolGeom g) {
  pdl_enter();
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x)
    y[o] = math::avg_pool_at(x, o, g);
}

// One thread per *input* element, gathering the outputs whose windows contain it: no atomics.
__global__ void avg_pool_backward_kernel(const float* __restrict__ dy, float* __restrict__ dx, int64_t total,
                                         PoolGeom g) {
  pdl_enter();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = math::avg_pool_backward_at(dy, i, g);
}

// One warp per output (grid-stride over warps): the lanes sum the window's cells 32 apart, then the
// warp adds the lanes with shuffles. For DenseNet's head, (N, 1664, 7, 7) -> 1x1, each warp averages
// 49 values. The loop over outputs is uniform across a warp, so the full-mask shuffles are safe.
__global__ void adaptive_avg_forward_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t total,
                                            int64_t H, int64_t W, int64_t OH, int64_t OW) {
  pdl_enter();
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t o = warp; o < total; o += warps) {
    int64_t count = 0;
    float sum = math::adaptive_avg_lane_sum(x, o, lane, 32, H, W, OH, OW, count);
    sum = warp_sum(sum);
    if (lane == 0) y[o] = sum / static_cast<float>(count);
  }
}

// One thread per input element, gathering (as avg_pool_backward).
__global__ void adaptive_avg_backward_kernel(const float* __restrict__ dy, float* __restrict__ dx, int64_t total,
                                             int64_t H, int64_t W, int64_t OH, int64_t OW) {
  pdl_enter();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = math::adaptive_avg_backward_at(dy, i, H, W, OH, OW);
}

// ---- cuDNN ------------------------------------------------------------------------------------------------

// Descriptors for one cuDNN pooling call, and whether cuDNN's output size equals ours (else: native).
struct CudnnPool {
  TensorDesc xd, yd;
  PoolDesc pd;
  bool usable = false;
};

void setup_cudnn_pool(CudnnPool& c, const std::string& op, const Shape& x, const Shape& y,
                      const ops::Pool2dParams& p, cudnnPoolingMode_t mode) {
  c.xd.set_nchw(op, x);
  c.yd.set_nchw(op, y);
  CUDNN_CHECK(cudnnSetPooling2dDescriptor(c.pd.get(), mode, CUDNN_PROPAGATE_NAN, to_int(op, p.kernel_h, x),
                                          to_int(op, p.kernel_w, x), to_int(op, p.pad_h, x), to_int(op, p.pad_w, x),
                                          to_int(op, p.stride_h, x), to_int(op, p.stride_w, x)));
  int n = 0, ch = 0, h = 0, w = 0;
  CUDNN_CHECK(cudnnGetPooling2dForwardOutputDim(c.pd.get(), c.xd.get(), &n, &ch, &h, &w));
  c.usable = h == y[2] && w == y[3];
}

cudnnPoolingMode_t avg_mode(const ops::Pool2dParams& p) {
  return p.count_include_pad ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
}

const char* pool_impl_name(Impl i) { return impl_name(Family::Pool, i); }

}  // namespace

// ---- cuda/ops.h -----------------------------------------------------------------------------------------------

ops::MaxPoolForward max_pool2d_forward(const Tensor& x_in, const ops::Pool2dParams& p, bool with_indices) {
  const std::string op = "max_pool2d_forward";
  require_float32(op, x_in, "input");
  const Shape y_shape = ops::pool2d_output_shape(x_in.shape(), p);
  const PoolGeom g = pool_geom(x_in.shape(), y_shape, p);
  const int64_t total = shape_numel(y_shape);
  std::optional<CudnnPool> c;  // descriptors only when cuDNN may run
  Impl which = impl(Family::Pool);
  if (which == Impl::Library && total > 0) {
    setup_cudnn_pool(c.emplace(), op, x_in.shape(), y_shape, p, CUDNN_POOLING_MAX);
    if (!c->usable) which = Impl::Native;
  }
  OpRange range("max_pool2d_forward", pool_impl_name(which));
  const Tensor x = x_in.contiguous();
  ops::MaxPoolForward out{new_output(y_shape, DType::Float32, x.device()),
                          with_indices ? new_output(y_shape, DType::Int64, x.device()) : Tensor()};
  if (total == 0) return out;
  const unsigned grid = grid_for(total, kThreads);
  int64_t* ind = with_indices ? out.indices.data<int64_t>() : nullptr;
  if (which == Impl::Library) {
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnPoolingForward(cudnn_handle(), c->pd.get(), &one, c->xd.get(), x.data<float>(), &zero, c->yd.get(),
                                    out.y.data<float>()));
    if (!with_indices) return out;
    launch_kernel(max_pool_forward_kernel<false>, grid, kThreads, 0, cur_stream(), x.data<float>(), nullptr,
                  ind, total, g);
  } else {
    launch_kernel(max_pool_forward_kernel<true>, grid, kThreads, 0, cur_stream(), x.data<float>(),
                  out.y.data<float>(), ind, total, g);
  }
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor max_pool2d_backward(const Tensor& dy_in, const Tensor& indices_in, const Shape& x_shape,
                           const ops::Pool2dParams* window) {
  const std::string op = "max_pool2d_backward";
  require_float32(op, dy_in, "grad_output");
  // Both versions route gradients through the saved indices (see the file header).
  OpRange range("max_pool2d_backward", "native");
  const Tensor indices = indices_in.contiguous();
  Tensor dx = new_output(x_shape, DType::Float32, dy_in.device());
  if (dx.numel() == 0) return dx;
  if (window && x_shape[2] * x_shape[3] < (int64_t(1) << 31) && dy_in.numel() > 0) {
    // A block per plane; dy read in place when only its samples are spaced (the stem's gradient is a
    // channel prefix of the first dense block's gradient buffer).
    const Tensor dy = ops::sample_contiguous(dy_in) ? dy_in : dy_in.contiguous();
    const PoolGeom g = pool_geom(x_shape, dy.shape(), *window);
    const int64_t planes = x_shape[0] * x_shape[1];
    const int64_t sD = x_shape[0] > 1 ? dy.strides()[0] : dy.size(1) * dy.size(2) * dy.size(3);
    const int threads = static_cast<int>(std::min<int64_t>(kThreads, (g.H * g.W + 31) / 32 * 32));
    launch_kernel(max_pool_backward_plane_kernel,
                  static_cast<unsigned>(std::min<int64_t>(planes, int64_t(1) << 30)), threads, 0,
                  cur_stream(), dy.data<float>(), sD, indices.data<int64_t>(), dx.data<float>(), planes,
                  x_shape[1], g);
    CUDA_CHECK_LAUNCH();
    return dx;
  }
  const Tensor dy = dy_in.contiguous();
  if (window) {
    const PoolGeom g = pool_geom(x_shape, dy.shape(), *window);
    const int64_t cells = dx.numel();
    launch_kernel(max_pool_backward_gather_kernel, grid_for(cells, kThreads), kThreads, 0, cur_stream(),
                  dy.data<float>(), indices.data<int64_t>(), dx.data<float>(), cells, g);
    CUDA_CHECK_LAUNCH();
    return dx;
  }
  CUDA_CHECK(cudaMemsetAsync(dx.raw_data(), 0, sizeof(float) * static_cast<std::size_t>(dx.numel()), cur_stream()));
  const int64_t total = dy.numel();
  if (total == 0) return dx;
  launch_kernel(max_pool_backward_kernel, grid_for(total, kThreads), kThreads, 0, cur_stream(),
                dy.data<float>(), indices.data<int64_t>(), dx.data<float>(), total, dy.size(2) * dy.size(3),
                x_shape[2] * x_shape[3]);
  CUDA_CHECK_LAUNCH();
  return dx;
}

Tensor avg_pool2d_forward(const Tensor& x_in, const ops::Pool2dParams& p) {
  const std::string op = "avg_pool2d_forward";
  require_float32(op, x_in, "input");
  const Shape y_shape = ops::pool2d_output_shape(x_in.shape(), p);
  const PoolGeom g = pool_geom(x_in.shape(), y_shape, p);
  const int64_t total = shape_numel(y_shape);
  std::optional<CudnnPool> c;
  Impl which = impl(Family::Pool);
  if (which == Impl::Library && total > 0) {
    setup_cudnn_pool(c.emplace(), op, x_in.shape(), y_shape, p, avg_mode(p));
    if (!c->usable) which = Impl::Native;
  }
  OpRange range("avg_pool2d_forward", pool_impl_name(which));
  const Tensor x = x_in.contiguous();
  Tensor y = new_output(y_shape, DType::Float32, x.device());
  if (total == 0) return y;
  if (which == Impl::Library) {
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnPoolingForward(cudnn_handle(), c->pd.get(), &one, c->xd.get(), x.data<float>(), &zero, c->yd.get(),
                                    y.data<float>()));
  } else {
    launch_kernel(avg_pool_forward_kernel, grid_for(total, kThreads), kThreads, 0, cur_stream(),
                  x.data<float>(), y.data<float>(), total, g);
    CUDA_CHECK_LAUNCH();
  }
  return y;
}

bool bn_avg_pool2d_eval(const Tensor& x_in, const ops::BnEval& bn, const ops::Pool2dParams& p, Tensor& y) {
  if (impl(Family::BatchNorm) != Impl::Native || impl(Family::Pool) != Impl::Native) return false;
  // (ops::bn_avg_pool2d_eval has checked x, the window and bn's vectors: x's dtype and device)
  const std::string op = "bn_avg_pool2d_eval";
  require_float32(op, x_in, "input");
  const Shape y_shape = ops::pool2d_output_shape(x_in.shape(), p);
  const PoolGeom g = pool_geom(x_in.shape(), y_shape, p);
  OpRange range(op.c_str(), "native");
  const Tensor x = x_in.contiguous();
  // (C) vectors as plain arrays (contiguous copies where they are strided: a few floats)
  const Tensor gamma = bn.gamma.defined() ? bn.gamma.contiguous() : Tensor();
  const Tensor beta = bn.beta.defined() ? bn.beta.contiguous() : Tensor();
  const Tensor mean = bn.running_mean.contiguous(), var = bn.running_var.contiguous();
  y = new_output(y_shape, DType::Float32, x.device());
  const int64_t planes = y_shape[0] * y_shape[1];
  if (shape_numel(y_shape) == 0) return true;
  const int64_t out_plane = y_shape[2] * y_shape[3];
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (out_plane + 31) / 32 * 32));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(planes, int64_t(1) << 30));
  launch_kernel(bn_avg_pool_eval_kernel, blocks, threads, 0, cur_stream(), x.data<float>(), x.strides()[0],
                y.data<float>(), planes, x.size(1), g, bn.eps,
                gamma.defined() ? gamma.data<float>() : nullptr,
                beta.defined() ? beta.data<float>() : nullptr, mean.data<float>(), var.data<float>(),
                bn.act == ops::BnAct::Relu);
  CUDA_CHECK_LAUNCH();
  return true;
}

Tensor avg_pool2d_backward(const Tensor& dy_in, const Shape& x_shape, const ops::Pool2dParams& p) {
  const std::string op = "avg_pool2d_backward";
  require_float32(op, dy_in, "grad_output");
  const Shape y_shape = dy_in.shape();  // checked against pool2d_output_shape(x_shape, p) by the caller
  const PoolGeom g = pool_geom(x_shape, y_shape, p);
  const int64_t total = shape_numel(x_shape);
  std::optional<CudnnPool> c;
  Impl which = impl(Family::Pool);
  if (which == Impl::Library && total > 0 && dy_in.numel() > 0) {
    setup_cudnn_pool(c.emplace(), op, x_shape, y_shape, p, avg_mode(p));
    if (!c->usable) which = Impl::Native;
  }
  OpRange range("avg_pool2d_backward", pool_impl_name(which));
  const Tensor dy = dy_in.contiguous();
  Tensor dx = new_output(x_shape, DType::Float32, dy.device());
  if (total == 0) return dx;
  if (which == Impl::Library) {
    // cudnnPoolingBackward takes y and x too, although an average's gradient depends on neither. This
    // API carries neither, so dy stands in for y (same shape) and a scratch buffer for x; both are only
    // shapes to cuDNN here.
    Buffer x_stand_in(sizeof(float) * static_cast<std::size_t>(total));
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnPoolingBackward(cudnn_handle(), c->pd.get(), &one, c->yd.get(), dy.data<float>(), c->yd.get(),
                                     dy.data<float>(), c->xd.get(), x_stand_in.as<float>(), &zero, c->xd.get(),
                                     dx.data<float>()));
  } else {
    launch_kernel(avg_pool_backward_kernel, grid_for(total, kThreads), kThreads, 0, cur_stream(),
                  dy.data<float>(), dx.data<float>(), total, g);
    CUDA_CHECK_LAUNCH();
  }
  return dx;
}

Tensor adaptive_avg_pool2d_forward(const Tensor& x_in, int64_t out_h, int64_t out_w) {
  const std::string op = "adaptive_avg_pool2d_forward";
  require_float32(op, x_in, "input");
  OpRange range("adaptive_avg_pool2d_forward", "native");
  const Tensor x = x_in.contiguous();
  const Shape y_shape{x.size(0), x.size(1), out_h, out_w};
  Tensor y = new_output(y_shape, DType::Float32, x.device());
  const int64_t total = y.numel();
  if (total == 0) return y;
  // A warp per output: blocks of kThreads / 32 warps.
  const unsigned grid = grid_for(total * 32, kThreads);
  launch_kernel(adaptive_avg_forward_kernel, grid, kThreads, 0, cur_stream(), x.data<float>(),
                y.data<float>(), total, x.size(2), x.size(3), out_h, out_w);
  CUDA_CHECK_LAUNCH();
  return y;
}

Tensor adaptive_avg_pool2d_backward(const Tensor& dy_in, const Shape& x_shape) {
  const std::string op = "adaptive_avg_pool2d_backward";
  require_float32(op, dy_in, "grad_output");
  OpRange range("adaptive_avg_pool2d_backward", "native");
  const Tensor dy = dy_in.contiguous();
  Tensor dx = new_output(x_shape, DType::Float32, dy.device());
  const int64_t total = dx.numel();
  if (total == 0) return dx;
  launch_kernel(adaptive_avg_backward_kernel, grid_for(total, kThreads), kThreads, 0, cur_stream(),
                dy.data<float>(), dx.data<float>(), total, x_shape[2], x_shape[3], dy.size(2), dy.size(3));
  CUDA_CHECK_LAUNCH();
  return dx;
}

}  // namespace ladnn::cuda
