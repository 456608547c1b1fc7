// tensor/cpu/pool.cpp — max, average and adaptive-average 2-D pooling on the CPU, as PyTorch does them.
//
// Output size (PyTorch's pooling_output_shape, dilation 1):
//   out = floor_or_ceil((in + 2*pad - kernel) / stride) + 1
// and in ceil mode the last window must start inside the input or its left padding, else it is dropped.
// Window of output row oh: rows [oh*stride - pad, oh*stride - pad + kernel), clipped to the input for
// max pooling (padding is -inf, never selected); for average pooling the divisor is the window clipped
// to the *padded* input (count_include_pad) or to the input itself (otherwise).
// Adaptive average pooling: output row i averages rows [floor(i*H/oh), ceil((i+1)*H/oh)).
//
// Every kernel handles one (n, c) plane at a time; planes run in parallel and never share writes.
//
// Devices: the argument checks below are device-agnostic (plus "every operand on one device"); CUDA
// tensors then go to cuda/pool.cu (cuDNN or native, cuda/context.h's LADNN_POOL switch).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "cuda/ops.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

// Below this much work (window reads) the OpenMP fork/join costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

bool is_float(DType d) {
  return d == DType::Float32 || d == DType::Float64;
}

std::string pair_str(int64_t a, int64_t b) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
}

std::string params_str(const Pool2dParams& p) {
  return "kernel " + pair_str(p.kernel_h, p.kernel_w) + ", stride " + pair_str(p.stride_h, p.stride_w) +
         ", padding " + pair_str(p.pad_h, p.pad_w) + (p.ceil_mode ? ", ceil_mode" : "");
}

// Rounds toward negative infinity (the numerator can be negative when the kernel exceeds the input).
int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, bool ceil_mode) {
  int64_t out = floor_div(in + 2 * pad - k + (ceil_mode ? stride - 1 : 0), stride) + 1;
  // Ceil mode may add a window that starts in the right padding; PyTorch drops it.
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

void check_input(const std::string& op, const Tensor& x, const char* name = "input") {
  check(x.defined(), op + ": " + name + " is undefined");
  check(x.dim() == 4, op + ": " + name + " must be 4-D (N, C, H, W), got " + shape_str(x.shape()));
  check(is_float(x.dtype()), op + ": " + name + " must be float32 or float64, got " + dtype_name(x.dtype()));
}

void check_plane_shape(const std::string& op, const Shape& x_shape) {
  check(x_shape.size() == 4, op + ": input must be 4-D (N, C, H, W), got " + shape_str(x_shape));
  check(x_shape[1] > 0 && x_shape[2] > 0 && x_shape[3] > 0,
        op + ": input must have non-zero C, H and W, got " + shape_str(x_shape));
}

Shape pool_shape(const std::string& op, const Shape& x, const Pool2dParams& p) {
  check_plane_shape(op, x);
  check(p.kernel_h > 0 && p.kernel_w > 0,
        op + ": kernel size must be positive, got " + pair_str(p.kernel_h, p.kernel_w));
  check(p.stride_h > 0 && p.stride_w > 0,
        op + ": stride must be positive, got " + pair_str(p.stride_h, p.stride_w));
  check(p.pad_h >= 0 && p.pad_w >= 0,
        op + ": padding must be non-negative, got " + pair_str(p.pad_h, p.pad_w));
  check(p.pad_h <= p.kernel_h / 2 && p.pad_w <= p.kernel_w / 2,
        op + ": padding must be at most half of the kernel size, got padding " + pair_str(p.pad_h, p.pad_w) +
            " for kernel " + pair_str(p.kernel_h, p.kernel_w));
  const int64_t oh = pool_out_size(x[2], p.kernel_h, p.pad_h, p.stride_h, p.ceil_mode);
  const int64_t ow = pool_out_size(x[3], p.kernel_w, p.pad_w, p.stride_w, p.ceil_mode);
  check(oh > 0 && ow > 0, op + ": output size is too small: input " + shape_str(x) + " with " +
                              params_str(p) + " gives " + shape_str({x[0], x[1], oh, ow}));
  return {x[0], x[1], oh, ow};
}

// dy must be 4-D float with the (N, C) of the input shape, and the expected spatial size.
void check_grad(const std::string& op, const Tensor& dy, const Shape& expected) {
  check_input(op, dy, "grad_output");
  check(dy.shape() == expected, op + ": grad_output has shape " + shape_str(dy.shape()) +
                                    " but the forward output has shape " + shape_str(expected));
}

template <typename T>
void max_pool_kernel(const T* x, T* y, int64_t* ind, int64_t planes, int64_t H, int64_t W, int64_t OH,
                     int64_t OW, const Pool2dParams& p) {
#pragma omp parallel for schedule(static) if (planes * OH * OW * p.kernel_h * p.kernel_w >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * H * W;
    T* yp = y + pl * OH * OW;
    int64_t* ip = ind ? ind + pl * OH * OW : nullptr;  // null: the indices are not wanted
    for (int64_t oh = 0; oh < OH; ++oh) {
      int64_t h0 = oh * p.stride_h - p.pad_h;
      const int64_t h1 = std::min(h0 + p.kernel_h, H);
      h0 = std::max<int64_t>(h0, 0);
      for (int64_t ow = 0; ow < OW; ++ow) {
        int64_t w0 = ow * p.stride_w - p.pad_w;
        const int64_t w1 = std::min(w0 + p.kernel_w, W);
        w0 = std::max<int64_t>(w0, 0);
        // As PyTorch: start from -inf at the window's first cell; a strictly larger value or a NaN
        // takes over, so ties keep the first maximum and NaN propagates.
        int64_t best = h0 * W + w0;
        T best_v = -std::numeric_limits<T>::infinity();
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) {
            const T v = xp[h * W + w];
            if (v > best_v || std::isnan(v)) {
              best_v = v;
              best = h * W + w;
            }
          }
        yp[oh * OW + ow] = best_v;
        if (ip) ip[oh * OW + ow] = best;
      }
    }
  }
}

template <typename T>
bool max_pool_backward_kernel(const T* dy, const int64_t* ind, T* dx, int64_t planes, int64_t HW,
                              int64_t OHW) {
  bool bad = false;
#pragma omp parallel for schedule(static) if (planes * OHW >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* dyp = dy + pl * OHW;
    const int64_t* ip = ind + pl * OHW;
    T* dxp = dx + pl * HW;
    for (int64_t k = 0; k < OHW; ++k) {
      const int64_t i = ip[k];
      if (i < 0 || i >= HW) {
#pragma omp atomic write
        bad = true;
        continue;
      }
      dxp[i] += dyp[k];  // overlapping windows may pick the same cell: accumulate
    }
  }
  return !bad;
}

// Window of output (oh, ow) for average pooling: [h0, h1) x [w0, w1) in the input and the divisor.
struct AvgWindow {
  int64_t h0, h1, w0, w1, divisor;
};
inline AvgWindow avg_window(int64_t oh, int64_t ow, int64_t H, int64_t W, const Pool2dParams& p) {
  int64_t h0 = oh * p.stride_h - p.pad_h, w0 = ow * p.stride_w - p.pad_w;
  int64_t h1 = std::min(h0 + p.kernel_h, H + p.pad_h), w1 = std::min(w0 + p.kernel_w, W + p.pad_w);
  const int64_t padded_size = (h1 - h0) * (w1 - w0);  // clipped to the padded input
  h0 = std::max<int64_t>(h0, 0);
  w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, H);
  w1 = std::min(w1, W);
  const int64_t divisor = p.count_include_pad ? padded_size : (h1 - h0) * (w1 - w0);
  return {h0, h1, w0, w1, divisor};
}

template <typename T>
void avg_pool_kernel(const T* x, T* y, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW,
                     const Pool2dParams& p) {
#pragma omp parallel for schedule(static) if (planes * OH * OW * p.kernel_h * p.kernel_w >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * H * W;
    T* yp = y + pl * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const AvgWindow win = avg_window(oh, ow, H, W, p);
        // The ceil-mode rule keeps every window non-empty; guard anyway, as PyTorch does.
        if (win.h0 >= win.h1 || win.w0 >= win.w1) {
          yp[oh * OW + ow] = T(0);
          continue;
        }
        double sum = 0.0;
        for (int64_t h = win.h0; h < win.h1; ++h)
          for (int64_t w = win.w0; w < win.w1; ++w) sum += xp[h * W + w];
        yp[oh * OW + ow] = static_cast<T>(sum / static_cast<double>(win.divisor));
      }
  }
}

template <typename T>
void avg_pool_backward_kernel(const T* dy, T* dx, int64_t planes, int64_t H, int64_t W, int64_t OH,
                              int64_t OW, const Pool2dParams& p) {
#pragma omp parallel for schedule(static) if (planes * OH * OW * p.kernel_h * p.kernel_w >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* dyp = dy + pl * OH * OW;
    T* dxp = dx + pl * H * W;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const AvgWindow win = avg_window(oh, ow, H, W, p);
        if (win.h0 >= win.h1 || win.w0 >= win.w1) continue;
        const T g = static_cast<T>(static_cast<double>(dyp[oh * OW + ow]) / static_cast<double>(win.divisor));
        for (int64_t h = win.h0; h < win.h1; ++h)
          for (int64_t w = win.w0; w < win.w1; ++w) dxp[h * W + w] += g;
      }
  }
}

// torch's adaptive pooling bounds: [floor(i*in/out), ceil((i+1)*in/out)).
inline int64_t adaptive_start(int64_t i, int64_t in, int64_t out) {
  return (i * in) / out;
}
inline int64_t adaptive_end(int64_t i, int64_t in, int64_t out) {
  return ((i + 1) * in + out - 1) / out;
}

template <typename T>
void adaptive_avg_kernel(const T* x, T* y, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW) {
#pragma omp parallel for schedule(static) if (planes * H * W >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * H * W;
    T* yp = y + pl * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t h0 = adaptive_start(oh, H, OH), h1 = adaptive_end(oh, H, OH);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t w0 = adaptive_start(ow, W, OW), w1 = adaptive_end(ow, W, OW);
        double sum = 0.0;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) sum += xp[h * W + w];
        yp[oh * OW + ow] = static_cast<T>(sum / static_cast<double>((h1 - h0) * (w1 - w0)));
      }
    }
  }
}

template <typename T>
void adaptive_avg_backward_kernel(const T* dy, T* dx, int64_t planes, int64_t H, int64_t W, int64_t OH,
                                  int64_t OW) {
#pragma omp parallel for schedule(static) if (planes * H * W >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* dyp = dy + pl * OH * OW;
    T* dxp = dx + pl * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t h0 = adaptive_start(oh, H, OH), h1 = adaptive_end(oh, H, OH);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t w0 = adaptive_start(ow, W, OW), w1 = adaptive_end(ow, W, OW);
        const T g = static_cast<T>(static_cast<double>(dyp[oh * OW + ow]) /
                                   static_cast<double>((h1 - h0) * (w1 - w0)));
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) dxp[h * W + w] += g;
      }
    }
  }
}

}  // namespace

Shape pool2d_output_shape(const Shape& x, const Pool2dParams& p) {
  return pool_shape("pool2d", x, p);
}

MaxPoolForward max_pool2d_forward(const Tensor& x, const Pool2dParams& p, bool with_indices) {
  const std::string op = "max_pool2d_forward";
  check_input(op, x);
  const Shape y_shape = pool_shape(op, x.shape(), p);
  if (x.device().is_cuda()) return cuda::max_pool2d_forward(x, p, with_indices);
  const Tensor xc = x.contiguous();
  MaxPoolForward out{Tensor::empty(y_shape, x.dtype(), x.device()),
                     with_indices ? Tensor::empty(y_shape, DType::Int64, x.device()) : Tensor()};
  int64_t* ind = with_indices ? out.indices.data<int64_t>() : nullptr;
  const int64_t planes = y_shape[0] * y_shape[1];
  if (x.dtype() == DType::Float32)
    max_pool_kernel(xc.data<float>(), out.y.data<float>(), ind, planes, x.size(2), x.size(3), y_shape[2],
                    y_shape[3], p);
  else
    max_pool_kernel(xc.data<double>(), out.y.data<double>(), ind, planes, x.size(2), x.size(3), y_shape[2],
                    y_shape[3], p);
  return out;
}

// Both public forms check and run here; `window` (may be null) only picks the GPU kernel.
static Tensor max_pool2d_backward_impl(const Tensor& dy, const Tensor& indices, const Shape& x_shape,
                                       const Pool2dParams* window);

Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices, const Shape& x_shape, const Pool2dParams& p) {
  check_plane_shape("max_pool2d_backward", x_shape);
  const Shape expected = pool2d_output_shape(x_shape, p);
  check(dy.dim() == 4 && dy.size(2) == expected[2] && dy.size(3) == expected[3],
        "max_pool2d_backward: grad_output " + shape_str(dy.shape()) + " is not the pooled shape " +
            shape_str(expected) + " of input " + shape_str(x_shape));
  return max_pool2d_backward_impl(dy, indices, x_shape, &p);
}

Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices, const Shape& x_shape) {
  return max_pool2d_backward_impl(dy, indices, x_shape, nullptr);
}

static Tensor max_pool2d_backward_impl(const Tensor& dy, const Tensor& indices, const Shape& x_shape,
                                       const Pool2dParams* window) {
  const std::string op = "max_pool2d_backward";
  check_plane_shape(op, x_shape);
  check_input(op, dy, "grad_output");
  check(dy.size(0) == x_shape[0] && dy.size(1) == x_shape[1],
        op + ": grad_output " + shape_str(dy.shape()) + " does not match the batch and channels of input " +
            shape_str(x_shape));
  check(indices.defined() && indices.dtype() == DType::Int64,
        op + ": indices must be an int64 tensor from max_pool2d_forward");
  check(indices.shape() == dy.shape(), op + ": indices have shape " + shape_str(indices.shape()) +
                                           " but grad_output has shape " + shape_str(dy.shape()));
  check(indices.device() == dy.device(), op + ": indices are on " + indices.device().str() +
                                             " but grad_output is on " + dy.device().str());
  if (dy.device().is_cuda()) return cuda::max_pool2d_backward(dy, indices, x_shape, window);
  const Tensor dyc = dy.contiguous(), ic = indices.contiguous();
  Tensor dx = Tensor::zeros(x_shape, dy.dtype(), dy.device());
  const int64_t planes = x_shape[0] * x_shape[1], HW = x_shape[2] * x_shape[3];
  const int64_t OHW = dy.size(2) * dy.size(3);
  const bool ok =
      dy.dtype() == DType::Float32
          ? max_pool_backward_kernel(dyc.data<float>(), ic.data<int64_t>(), dx.data<float>(), planes, HW, OHW)
          : max_pool_backward_kernel(dyc.data<double>(), ic.data<int64_t>(), dx.data<double>(), planes, HW,
                                     OHW);
  check(ok, op + ": an index lies outside the input plane of " + shape_str(x_shape) +
                " (indices must come from max_pool2d_forward on that input)");
  return dx;
}

Tensor avg_pool2d_forward(const Tensor& x, const Pool2dParams& p) {
  const std::string op = "avg_pool2d_forward";
  check_input(op, x);
  const Shape y_shape = pool_shape(op, x.shape(), p);
  if (x.device().is_cuda()) return cuda::avg_pool2d_forward(x, p);
  const Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(y_shape, x.dtype(), x.device());
  const int64_t planes = y_shape[0] * y_shape[1];
  if (x.dtype() == DType::Float32)
    avg_pool_kernel(xc.data<float>(), y.data<float>(), planes, x.size(2), x.size(3), y_shape[2], y_shape[3],
                    p);
  else
    avg_pool_kernel(xc.data<double>(), y.data<double>(), planes, x.size(2), x.size(3), y_shape[2], y_shape[3],
                    p);
  return y;
}

Tensor bn_avg_pool2d_eval(const Tensor& x, const BnEval& bn, const Pool2dParams& p) {
  const std::string op = "bn_avg_pool2d_eval";
  check_input(op, x);
  check_bn_eval(op, "bn", bn, x.size(1), x);
  check(!bn.batch(), op +
                         ": bn is the batch form (save_mean, save_invstd): this op takes an eval BatchNorm's "
                         "running statistics");
  pool_shape(op, x.shape(), p);  // the window's checks, in this op's name
  if (x.device().is_cuda()) {
    Tensor y;
    if (cuda::bn_avg_pool2d_eval(x, bn, p, y)) return y;
  }
  return avg_pool2d_forward(
      batch_norm_forward_eval(x, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps, bn.act), p);
}

Tensor avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, const Pool2dParams& p) {
  const std::string op = "avg_pool2d_backward";
  const Shape y_shape = pool_shape(op, x_shape, p);
  check_grad(op, dy, y_shape);
  if (dy.device().is_cuda()) return cuda::avg_pool2d_backward(dy, x_shape, p);
  const Tensor dyc = dy.contiguous();
  Tensor dx = Tensor::zeros(x_shape, dy.dtype(), dy.device());
  const int64_t planes = x_shape[0] * x_shape[1];
  if (dy.dtype() == DType::Float32)
    avg_pool_backward_kernel(dyc.data<float>(), dx.data<float>(), planes, x_shape[2], x_shape[3], y_shape[2],
                             y_shape[3], p);
  else
    avg_pool_backward_kernel(dyc.data<double>(), dx.data<double>(), planes, x_shape[2], x_shape[3],
                             y_shape[2], y_shape[3], p);
  return dx;
}

Tensor adaptive_avg_pool2d_forward(const Tensor& x, int64_t out_h, int64_t out_w) {
  const std::string op = "adaptive_avg_pool2d_forward";
  check_input(op, x);
  check_plane_shape(op, x.shape());
  check(out_h > 0 && out_w > 0, op + ": output size must be positive, got " + pair_str(out_h, out_w) +
                                    " for input " + shape_str(x.shape()));
  if (x.device().is_cuda()) return cuda::adaptive_avg_pool2d_forward(x, out_h, out_w);
  const Tensor xc = x.contiguous();
  const Shape y_shape{x.size(0), x.size(1), out_h, out_w};
  Tensor y = Tensor::empty(y_shape, x.dtype(), x.device());
  const int64_t planes = x.size(0) * x.size(1);
  if (x.dtype() == DType::Float32)
    adaptive_avg_kernel(xc.data<float>(), y.data<float>(), planes, x.size(2), x.size(3), out_h, out_w);
  else
    adaptive_avg_kernel(xc.data<double>(), y.data<double>(), planes, x.size(2), x.size(3), out_h, out_w);
  return y;
}

Tensor adaptive_avg_pool2d_backward(const Tensor& dy, const Shape& x_shape) {
  const std::string op = "adaptive_avg_pool2d_backward";
  check_plane_shape(op, x_shape);
  check_input(op, dy, "grad_output");
  check(dy.size(0) == x_shape[0] && dy.size(1) == x_shape[1] && dy.size(2) > 0 && dy.size(3) > 0,
        op + ": grad_output " + shape_str(dy.shape()) + " does not fit input " + shape_str(x_shape));
  if (dy.device().is_cuda()) return cuda::adaptive_avg_pool2d_backward(dy, x_shape);
  const Tensor dyc = dy.contiguous();
  Tensor dx = Tensor::zeros(x_shape, dy.dtype(), dy.device());
  const int64_t planes = x_shape[0] * x_shape[1];
  if (dy.dtype() == DType::Float32)
    adaptive_avg_backward_kernel(dyc.data<float>(), dx.data<float>(), planes, x_shape[2], x_shape[3],
                                 dy.size(2), dy.size(3));
  else
    adaptive_avg_backward_kernel(dyc.data<double>(), dx.data<double>(), planes, x_shape[2], x_shape[3],
                                 dy.size(2), dy.size(3));
  return dx;
}

}  // namespace ladnn::ops
