// tensor/cpu/elementwise.cpp — elementwise ops with broadcasting, scalar and unary ops, reductions.
//
// One idea carries the file: a broadcast input is the same tensor with stride 0 along the dims it is
// expanded in. So every binary op is a walk over the output shape with one offset per operand, and a
// reduction is a walk over the input with the output's stride set to 0 along the reduced dims.
// Contiguous same-shape operands take a flat, OpenMP-parallel loop instead.
//
// Every public op checks its arguments here, device-agnostically (float dtype, shapes, all operands on
// one device), then runs the CPU kernel below or, for CUDA tensors, its twin in cuda/ops.h.
#include <array>
#include <cmath>
#include <string>

#include "cuda/ops.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

void check_float(const Tensor& t, const char* op, const char* name = "input") {
  check(t.defined(), std::string(op) + ": " + name + " is undefined");
  check(t.dtype() == DType::Float32 || t.dtype() == DType::Float64,
        std::string(op) + ": " + name + " must be float32 or float64, got " + dtype_name(t.dtype()));
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  check(a.dtype() == b.dtype(), std::string(op) + ": operands have different dtypes (" +
                                    dtype_name(a.dtype()) + " and " + dtype_name(b.dtype()) + ")");
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op, const char* na, const char* nb) {
  check(a.device() == b.device(), std::string(op) + ": " + na + " is on " + a.device().str() + " but " + nb +
                                      " is on " + b.device().str() + "; move both to one device first");
}

bool on_gpu(const Tensor& t) { return t.device().is_cuda(); }

/// Strides of `t` seen from the shape `out` it broadcasts to: leading dims and size-1 dims
/// get stride 0.
Shape broadcast_strides(const Tensor& t, const Shape& out) {
  Shape s(out.size(), 0);
  size_t lead = out.size() - t.shape().size();
  for (size_t d = 0; d < t.shape().size(); ++d)
    s[lead + d] = t.shape()[d] == 1 ? 0 : t.strides()[d];
  return s;
}

/// Walks `shape` in row-major order, keeping K element offsets in step, and calls
/// fn(offsets) for each element. The last dim is an inner loop (the hot part).
template <size_t K, typename Fn>
void walk(const Shape& shape, const std::array<Shape, K>& strides, std::array<int64_t, K> off, Fn fn) {
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  if (shape.empty()) {
    fn(off);
    return;
  }
  const size_t nd = shape.size();
  const int64_t inner = shape[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  for (int64_t done = 0; done < n; done += inner) {
    std::array<int64_t, K> o = off;
    for (int64_t i = 0; i < inner; ++i) {
      fn(o);
      for (size_t k = 0; k < K; ++k) o[k] += strides[k][nd - 1];
    }
    // Advance the outer multi-index.
    for (size_t d = nd - 1; d-- > 0;) {
      if (++idx[d] < shape[d]) {
        for (size_t k = 0; k < K; ++k) off[k] += strides[k][d];
        break;
      }
      for (size_t k = 0; k < K; ++k) off[k] -= (shape[d] - 1) * strides[k][d];
      idx[d] = 0;
    }
  }
}

template <typename T, typename F>
Tensor binary_t(const Tensor& a, const Tensor& b, const Shape& out_shape, F f) {
  Tensor out = Tensor::empty(out_shape, a.dtype());
  T* o = out.data<T>();
  const T* pa = static_cast<const T*>(a.storage()->data());
  const T* pb = static_cast<const T*>(b.storage()->data());
  if (a.shape() == out_shape && b.shape() == out_shape && a.is_contiguous() && b.is_contiguous()) {
    const T* x = pa + a.offset();
    const T* y = pb + b.offset();
    const int64_t n = out.numel();
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
    return out;
  }
  int64_t i = 0;
  walk<2>(out_shape, {broadcast_strides(a, out_shape), broadcast_strides(b, out_shape)},
          {a.offset(), b.offset()}, [&](const std::array<int64_t, 2>& k) { o[i++] = f(pa[k[0]], pb[k[1]]); });
  return out;
}

/// `gpu` runs the op on the GPU (a CUDA tensor); f is the CPU element function.
template <typename F, typename G>
Tensor binary(const Tensor& a, const Tensor& b, const char* op, F f, G gpu) {
  check_float(a, op, "left operand");
  check_float(b, op, "right operand");
  check_same_dtype(a, b, op);
  check_same_device(a, b, op, "the left operand", "the right operand");
  Shape out = broadcast_shape(a.shape(), b.shape(), op);
  if (on_gpu(a)) return gpu();
  if (a.dtype() == DType::Float32) return binary_t<float>(a, b, out, f);
  return binary_t<double>(a, b, out, f);
}

template <typename T, typename F>
Tensor unary_t(const Tensor& a, F f) {
  Tensor src = a.contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype());
  const T* x = src.data<T>();
  T* o = out.data<T>();
  const int64_t n = out.numel();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) o[i] = f(x[i]);
  return out;
}

template <typename F, typename G>
Tensor unary(const Tensor& a, const char* op, F f, G gpu) {
  check_float(a, op);
  if (on_gpu(a)) return gpu();
  if (a.dtype() == DType::Float32) return unary_t<float>(a, f);
  return unary_t<double>(a, f);
}

/// Sums `a` over the dims where reduce[d] is true, giving a tensor with size 1 there.
template <typename T>
Tensor reduce_sum_t(const Tensor& a, const std::vector<bool>& reduce) {
  Shape out_shape = a.shape();
  for (size_t d = 0; d < reduce.size(); ++d)
    if (reduce[d]) out_shape[d] = 1;
  // Accumulate in double: a float32 sum over a 56x56x32 feature map would lose digits otherwise.
  std::vector<double> acc(shape_numel(out_shape), 0.0);
  Shape out_strides = contiguous_strides(out_shape);
  for (size_t d = 0; d < reduce.size(); ++d)
    if (reduce[d]) out_strides[d] = 0;
  const T* pa = static_cast<const T*>(a.storage()->data());
  walk<2>(a.shape(), {a.strides(), out_strides}, {a.offset(), 0},
          [&](const std::array<int64_t, 2>& k) { acc[k[1]] += pa[k[0]]; });
  Tensor out = Tensor::empty(out_shape, a.dtype());
  T* o = out.data<T>();
  for (size_t i = 0; i < acc.size(); ++i) o[i] = static_cast<T>(acc[i]);
  return out;
}

Tensor reduce_sum(const Tensor& a, const std::vector<bool>& reduce) {
  return a.dtype() == DType::Float32 ? reduce_sum_t<float>(a, reduce) : reduce_sum_t<double>(a, reduce);
}

std::vector<bool> reduce_mask(const Tensor& a, const std::vector<int64_t>& dims, const char* op) {
  std::vector<bool> mask(a.dim(), false);
  for (int64_t d : dims) {
    int64_t w = d < 0 ? d + a.dim() : d;
    check(w >= 0 && w < a.dim(), std::string(op) + ": dimension " + std::to_string(d) +
                                     " is out of range for shape " + shape_str(a.shape()));
    check(!mask[w], std::string(op) + ": dimension " + std::to_string(d) + " is listed twice");
    mask[w] = true;
  }
  return mask;
}

Shape drop_reduced(const Shape& s, const std::vector<bool>& mask) {
  Shape out;
  for (size_t d = 0; d < s.size(); ++d)
    if (!mask[d]) out.push_back(s[d]);
  return out;
}

}  // namespace

// ---- broadcasting ----------------------------------------------------------------------------------------

Shape broadcast_shape(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    check(da == db || da == 1 || db == 1, std::string(op) + ": shapes " + shape_str(a) + " and " +
                                              shape_str(b) + " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) {
  return binary(a, b, "add", [](auto x, auto y) { return x + y; }, [&] { return cuda::add(a, b); });
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary(a, b, "sub", [](auto x, auto y) { return x - y; }, [&] { return cuda::sub(a, b); });
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary(a, b, "mul", [](auto x, auto y) { return x * y; }, [&] { return cuda::mul(a, b); });
}
Tensor div(const Tensor& a, const Tensor& b) {
  return binary(a, b, "div", [](auto x, auto y) { return x / y; }, [&] { return cuda::div(a, b); });
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  check_float(grad, "sum_to", "gradient");
  check(grad.dim() >= static_cast<int64_t>(shape.size()),
        "sum_to: cannot reduce " + shape_str(grad.shape()) + " to the larger rank of " + shape_str(shape));
  if (grad.shape() == shape) return grad;
  size_t lead = grad.dim() - shape.size();
  std::vector<bool> mask(grad.dim(), false);
  for (size_t d = 0; d < static_cast<size_t>(grad.dim()); ++d) {
    if (d < lead) {
      mask[d] = true;
      continue;
    }
    int64_t want = shape[d - lead];
    check(want == grad.shape()[d] || want == 1, "sum_to: " + shape_str(grad.shape()) +
                                                    " does not broadcast from " + shape_str(shape));
    mask[d] = want == 1 && grad.shape()[d] != 1;
  }
  if (on_gpu(grad)) return cuda::sum_to(grad, shape);
  return reduce_sum(grad, mask).reshape(shape);
}

template <typename T>
static Tensor expand_to_t(const Tensor& a, const Shape& shape) {
  Tensor out = Tensor::empty(shape, a.dtype());
  T* o = out.data<T>();
  const T* pa = static_cast<const T*>(a.storage()->data());
  int64_t i = 0;
  walk<1>(shape, {broadcast_strides(a, shape)}, {a.offset()},
          [&](const std::array<int64_t, 1>& k) { o[i++] = pa[k[0]]; });
  return out;
}

Tensor expand_to(const Tensor& a, const Shape& shape) {
  check_float(a, "expand_to");
  check(broadcast_shape(a.shape(), shape, "expand_to") == shape,
        "expand_to: " + shape_str(a.shape()) + " does not broadcast to " + shape_str(shape));
  if (on_gpu(a)) return cuda::expand_to(a, shape);
  return a.dtype() == DType::Float32 ? expand_to_t<float>(a, shape) : expand_to_t<double>(a, shape);
}

// ---- scalar and unary --------------------------------------------------------------------------------------

Tensor add_scalar(const Tensor& a, double s) {
  return unary(
      a, "add_scalar", [s](auto x) { return static_cast<decltype(x)>(x + s); },
      [&] { return cuda::add_scalar(a, s); });
}
Tensor mul_scalar(const Tensor& a, double s) {
  return unary(
      a, "mul_scalar", [s](auto x) { return static_cast<decltype(x)>(x * s); },
      [&] { return cuda::mul_scalar(a, s); });
}
Tensor pow_scalar(const Tensor& a, double p) {
  return unary(
      a, "pow_scalar", [p](auto x) { return static_cast<decltype(x)>(std::pow(x, p)); },
      [&] { return cuda::pow_scalar(a, p); });
}
Tensor neg(const Tensor& a) {
  return unary(a, "neg", [](auto x) { return -x; }, [&] { return cuda::neg(a); });
}
Tensor exp(const Tensor& a) {
  return unary(a, "exp", [](auto x) { return std::exp(x); }, [&] { return cuda::exp(a); });
}
Tensor log(const Tensor& a) {
  return unary(a, "log", [](auto x) { return std::log(x); }, [&] { return cuda::log(a); });
}
Tensor sqrt(const Tensor& a) {
  return unary(a, "sqrt", [](auto x) { return std::sqrt(x); }, [&] { return cuda::sqrt(a); });
}
Tensor sigmoid(const Tensor& a) {
  // Two branches keep exp's argument <= 0, so neither overflows.
  return unary(a, "sigmoid", [](auto x) {
    using T = decltype(x);
    if (x >= 0) return T(1) / (T(1) + std::exp(-x));
    T e = std::exp(x);
    return e / (T(1) + e);
  }, [&] { return cuda::sigmoid(a); });
}
Tensor relu(const Tensor& a) {
  return unary(a, "relu", [](auto x) { return x > 0 ? x : decltype(x)(0); }, [&] { return cuda::relu(a); });
}

Tensor relu_backward(const Tensor& grad, const Tensor& x) {
  check(grad.shape() == x.shape(), "relu_backward: gradient " + shape_str(grad.shape()) +
                                       " and input " + shape_str(x.shape()) + " differ");
  return binary(
      grad, x, "relu_backward", [](auto g, auto v) { return v > 0 ? g : decltype(g)(0); },
      [&] { return cuda::relu_backward(grad, x); });
}

Tensor sigmoid_backward(const Tensor& grad, const Tensor& y) {
  check(grad.shape() == y.shape(), "sigmoid_backward: gradient " + shape_str(grad.shape()) +
                                       " and output " + shape_str(y.shape()) + " differ");
  return binary(
      grad, y, "sigmoid_backward", [](auto g, auto v) { return g * v * (decltype(v)(1) - v); },
      [&] { return cuda::sigmoid_backward(grad, y); });
}

template <typename T>
static void add_inplace_t(Tensor& a, const Tensor& b, double alpha) {
  T* x = a.data<T>();
  Tensor bc = b.contiguous();
  const T* y = bc.data<T>();
  const T al = static_cast<T>(alpha);
  const int64_t n = a.numel();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] += al * y[i];
}

void add_(Tensor& a, const Tensor& b, double alpha) {
  check_float(a, "add_", "destination");
  check_float(b, "add_", "source");
  check_same_dtype(a, b, "add_");
  check_same_device(a, b, "add_", "the destination", "the source");
  check(a.shape() == b.shape(), "add_: destination " + shape_str(a.shape()) + " and source " +
                                    shape_str(b.shape()) + " differ");
  if (on_gpu(a)) return cuda::add_(a, b, alpha);  // any strides
  if (a.is_contiguous()) {
    if (a.dtype() == DType::Float32) add_inplace_t<float>(a, b, alpha);
    else add_inplace_t<double>(a, b, alpha);
    return;
  }
  if (sample_contiguous(a)) {  // a channel prefix of an NCHW buffer (a dense block's gradient): in place
    const Tensor bc = b.contiguous();
    for (int64_t n = 0; n < a.size(0); ++n) {
      Tensor dst = a.narrow(0, n, 1);  // one sample: one contiguous block of memory
      const Tensor src = bc.narrow(0, n, 1);
      if (a.dtype() == DType::Float32) add_inplace_t<float>(dst, src, alpha);
      else add_inplace_t<double>(dst, src, alpha);
    }
    return;
  }
  // Any other layout: through a contiguous copy, with the same arithmetic.
  Tensor dst = a.contiguous();
  if (a.dtype() == DType::Float32) add_inplace_t<float>(dst, b, alpha);
  else add_inplace_t<double>(dst, b, alpha);
  a.copy_(dst);
}

void mul_scalar_(Tensor& a, double s) {
  check_float(a, "mul_scalar_");
  check(a.is_contiguous(), "mul_scalar_: tensor must be contiguous");
  if (on_gpu(a)) return cuda::mul_scalar_(a, s);
  const int64_t n = a.numel();
  if (a.dtype() == DType::Float32) {
    float* x = a.data<float>();
    for (int64_t i = 0; i < n; ++i) x[i] *= static_cast<float>(s);
  } else {
    double* x = a.data<double>();
    for (int64_t i = 0; i < n; ++i) x[i] *= s;
  }
}

namespace {
void check_counter(const Tensor& a, const std::string& op) {
  check(a.dtype() == DType::Int64, op + ": expected an Int64 tensor, got " + std::string(dtype_name(a.dtype())));
  check(a.is_contiguous(), op + ": tensor must be contiguous");
}
}  // namespace

void increment_(Tensor& a) {
  check_counter(a, "increment_");
  if (on_gpu(a)) return cuda::increment_(a);
  int64_t* x = a.data<int64_t>();
  for (int64_t i = 0; i < a.numel(); ++i) x[i] += 1;
}

void increment_all_(const std::vector<Tensor>& counters) {
  if (counters.empty()) return;
  for (std::size_t i = 0; i < counters.size(); ++i) {
    check_counter(counters[i], "increment_all_: counter " + std::to_string(i));
    check(counters[i].device() == counters[0].device(),
          "increment_all_: counter " + std::to_string(i) + " is on " + counters[i].device().str() +
              ", counter 0 on " + counters[0].device().str());
  }
  if (on_gpu(counters[0])) return cuda::increment_all_(counters);
  for (Tensor t : counters) increment_(t);  // a handle sharing the counter's storage
}

// ---- reductions ----------------------------------------------------------------------------------------------

Tensor sum(const Tensor& a) {
  check_float(a, "sum");
  if (on_gpu(a)) return cuda::sum(a);
  return reduce_sum(a, std::vector<bool>(a.dim(), true)).reshape({});
}

Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  check_float(a, "sum");
  std::vector<bool> mask = reduce_mask(a, dims, "sum");
  if (on_gpu(a)) return cuda::sum(a, dims, keepdim);
  Tensor r = reduce_sum(a, mask);
  return keepdim ? r : r.reshape(drop_reduced(a.shape(), mask));
}

Tensor mean(const Tensor& a) {
  check(a.numel() > 0, "mean: the tensor " + shape_str(a.shape()) + " is empty");
  return mul_scalar(sum(a), 1.0 / static_cast<double>(a.numel()));
}

Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim) {
  check_float(a, "mean");
  std::vector<bool> mask = reduce_mask(a, dims, "mean");
  int64_t count = 1;
  for (size_t d = 0; d < mask.size(); ++d)
    if (mask[d]) count *= a.shape()[d];
  check(count > 0, "mean: reducing an empty dimension of " + shape_str(a.shape()));
  return mul_scalar(sum(a, dims, keepdim), 1.0 / static_cast<double>(count));
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  check(a.shape() == b.shape(), "max_abs_diff: shapes " + shape_str(a.shape()) + " and " +
                                    shape_str(b.shape()) + " differ");
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double d = std::fabs(x[i] - y[i]);
    if (std::isnan(d)) return d;
    m = std::max(m, d);
  }
  return m;
}

}  // namespace ladnn::ops
