// tensor/cpu/loss.cpp — binary cross-entropy on logits, value and gradient.
//
// With z = sigmoid(x), BCE = -(y log z + (1 - y) log(1 - z)) = log(1 + e^x) - x y. Computed as
//   max(x, 0) - x y + log1p(exp(-|x|))
// which never exponentiates a positive number: finite for any finite x (x = ±100 included), and
// accurate where log(1 + e^x) would round to 0 or overflow. d/dx = sigmoid(x) - y.
// The weight (undefined = 1) broadcasts to x; PyTorch's Mean divides by numel(x) even where the
// weight is 0 (masked terms still count). Sums accumulate in double.
// The checks here are device-agnostic; CUDA tensors then run cuda/loss.cu (same formula, in double).
#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/ops.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

bool is_float(DType d) {
  return d == DType::Float32 || d == DType::Float64;
}

const char* reduction_name(Reduction r) {
  switch (r) {
    case Reduction::None:
      return "none";
    case Reduction::Mean:
      return "mean";
    case Reduction::Sum:
      return "sum";
  }
  return "?";
}

// Checks x, y and weight; returns the weight expanded to x's shape (contiguous) or undefined.
Tensor check_and_expand(const std::string& op, const Tensor& x, const Tensor& y, const Tensor& weight) {
  check(x.defined(), op + ": input (logits) is undefined");
  check(y.defined(), op + ": target is undefined");
  check(is_float(x.dtype()), op + ": input must be float32 or float64, got " + dtype_name(x.dtype()));
  check(y.shape() == x.shape(),
        op + ": target has shape " + shape_str(y.shape()) + " but input has shape " + shape_str(x.shape()));
  check(y.dtype() == x.dtype(),
        op + ": target is " + std::string(dtype_name(y.dtype())) + " but input is " + dtype_name(x.dtype()));
  check(y.device() == x.device(),
        op + ": target is on " + y.device().str() + " but input is on " + x.device().str());
  if (!weight.defined()) return Tensor();
  check(weight.dtype() == x.dtype(), op + ": weight is " + std::string(dtype_name(weight.dtype())) +
                                         " but input is " + dtype_name(x.dtype()));
  check(weight.device() == x.device(),
        op + ": weight is on " + weight.device().str() + " but input is on " + x.device().str());
  // The weight broadcasts to x, never the other way round.
  bool fits = weight.dim() <= x.dim();
  for (int64_t i = 1; fits && i <= weight.dim(); ++i) {
    const int64_t w = weight.size(-i), s = x.size(-i);
    fits = (w == s || w == 1);
  }
  check(fits, op + ": weight of shape " + shape_str(weight.shape()) + " does not broadcast to input shape " +
                  shape_str(x.shape()));
  if (weight.shape() == x.shape()) return weight.contiguous();
  return expand_to(weight, x.shape()).contiguous();
}

template <typename T>
double bce_forward_kernel(const T* x, const T* y, const T* w, T* out, int64_t n) {
  double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum) if (n >= (1 << 15))
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[i];
    double l = std::max(xi, 0.0) - xi * static_cast<double>(y[i]) + std::log1p(std::exp(-std::abs(xi)));
    if (w) l *= static_cast<double>(w[i]);
    if (out) out[i] = static_cast<T>(l);
    sum += l;
  }
  return sum;
}

// Sigmoid without overflow: exp of a non-positive number only.
inline double stable_sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// dout_all: per-element upstream gradient (Reduction::None) or null with the scalar `scale`.
template <typename T>
void bce_backward_kernel(const T* x, const T* y, const T* w, const T* dout_all, double scale, T* dx,
                         int64_t n) {
#pragma omp parallel for schedule(static) if (n >= (1 << 15))
  for (int64_t i = 0; i < n; ++i) {
    double g = stable_sigmoid(static_cast<double>(x[i])) - static_cast<double>(y[i]);
    if (w) g *= static_cast<double>(w[i]);
    g *= dout_all ? static_cast<double>(dout_all[i]) : scale;
    dx[i] = static_cast<T>(g);
  }
}

}  // namespace

Tensor bce_with_logits(const Tensor& x, const Tensor& y, const Tensor& weight, Reduction reduction) {
  const std::string op = "bce_with_logits";
  const Tensor w = check_and_expand(op, x, y, weight);
  if (x.device().is_cuda()) return cuda::bce_with_logits(x, y, w, reduction);
  const Tensor xc = x.contiguous(), yc = y.contiguous();
  const int64_t n = x.numel();
  Tensor out = reduction == Reduction::None ? Tensor::empty(x.shape(), x.dtype(), x.device())
                                            : Tensor::empty({}, x.dtype(), x.device());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* per_element = reduction == Reduction::None ? out.data<T>() : nullptr;
    const double sum = bce_forward_kernel<T>(xc.data<T>(), yc.data<T>(), w.defined() ? w.data<T>() : nullptr,
                                             per_element, n);
    // Mean of an empty input is 0/0 = NaN, as PyTorch.
    if (reduction == Reduction::Sum) out.data<T>()[0] = static_cast<T>(sum);
    if (reduction == Reduction::Mean) out.data<T>()[0] = static_cast<T>(sum / static_cast<double>(n));
  };
  if (x.dtype() == DType::Float32)
    run(float{});
  else
    run(double{});
  return out;
}

Tensor bce_with_logits_backward(const Tensor& dout, const Tensor& x, const Tensor& y, const Tensor& weight,
                                Reduction reduction) {
  const std::string op = "bce_with_logits_backward";
  const Tensor w = check_and_expand(op, x, y, weight);
  check(dout.defined(), op + ": grad_output is undefined");
  check(dout.dtype() == x.dtype(), op + ": grad_output is " + std::string(dtype_name(dout.dtype())) +
                                       " but input is " + dtype_name(x.dtype()));
  if (reduction == Reduction::None)
    check(dout.shape() == x.shape(), op + ": with reduction none, grad_output must have the input's shape " +
                                         shape_str(x.shape()) + ", got " + shape_str(dout.shape()));
  else
    check(dout.numel() == 1, op + ": with reduction " + reduction_name(reduction) +
                                 ", grad_output must hold one value, got shape " + shape_str(dout.shape()));
  check(dout.device() == x.device(),
        op + ": grad_output is on " + dout.device().str() + " but input is on " + x.device().str());
  if (x.device().is_cuda()) return cuda::bce_with_logits_backward(dout, x, y, w, reduction);
  const Tensor xc = x.contiguous(), yc = y.contiguous();
  const int64_t n = x.numel();
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* wp = w.defined() ? w.data<T>() : nullptr;
    if (reduction == Reduction::None) {
      const Tensor dc = dout.contiguous();
      bce_backward_kernel<T>(xc.data<T>(), yc.data<T>(), wp, dc.data<T>(), 1.0, dx.data<T>(), n);
    } else {
      double scale = dout.item();
      if (reduction == Reduction::Mean) scale /= static_cast<double>(n);
      bce_backward_kernel<T>(xc.data<T>(), yc.data<T>(), wp, nullptr, scale, dx.data<T>(), n);
    }
  };
  if (x.dtype() == DType::Float32)
    run(float{});
  else
    run(double{});
  return dx;
}

}  // namespace ladnn::ops
