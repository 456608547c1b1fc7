// autograd/functions.cpp — differentiable elementwise ops, reductions, views, matmul and linear.
//
// Each op: compute with tensor/ops.h, then Variable::from_op(result, inputs, closure). The closure
// gets d(out) and which inputs need a gradient, and returns one gradient per input. Broadcasting ops
// sum their gradient back to each input's shape (ops::sum_to).
#include "autograd/functions.h"

namespace ladnn {

using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;

// ---- elementwise -----------------------------------------------------------------------------------------

Variable add(const Variable& a, const Variable& b) {
  Shape sa = a.shape(), sb = b.shape();
  return Variable::from_op(
      ops::add(a.tensor(), b.tensor()), {a, b},
      [sa, sb](const Tensor& g, const Needs& n) {
        return Grads{n[0] ? ops::sum_to(g, sa) : Tensor(), n[1] ? ops::sum_to(g, sb) : Tensor()};
      },
      "add");
}

Variable sub(const Variable& a, const Variable& b) {
  Shape sa = a.shape(), sb = b.shape();
  return Variable::from_op(
      ops::sub(a.tensor(), b.tensor()), {a, b},
      [sa, sb](const Tensor& g, const Needs& n) {
        return Grads{n[0] ? ops::sum_to(g, sa) : Tensor(),
                     n[1] ? ops::sum_to(ops::neg(g), sb) : Tensor()};
      },
      "sub");
}

Variable mul(const Variable& a, const Variable& b) {
  Tensor x = a.tensor(), y = b.tensor();
  return Variable::from_op(
      ops::mul(x, y), {a, b},
      [x, y](const Tensor& g, const Needs& n) {
        // d(xy)/dx = y, d(xy)/dy = x.
        return Grads{n[0] ? ops::sum_to(ops::mul(g, y), x.shape()) : Tensor(),
                     n[1] ? ops::sum_to(ops::mul(g, x), y.shape()) : Tensor()};
      },
      "mul");
}

Variable div(const Variable& a, const Variable& b) {
  Tensor x = a.tensor(), y = b.tensor();
  return Variable::from_op(
      ops::div(x, y), {a, b},
      [x, y](const Tensor& g, const Needs& n) {
        // d(x/y)/dx = 1/y, d(x/y)/dy = -x/y^2.
        Tensor gx = n[0] ? ops::sum_to(ops::div(g, y), x.shape()) : Tensor();
        Tensor gy;
        if (n[1]) gy = ops::sum_to(ops::neg(ops::div(ops::mul(g, x), ops::mul(y, y))), y.shape());
        return Grads{gx, gy};
      },
      "div");
}

Variable add_scalar(const Variable& a, double s) {
  return Variable::from_op(
      ops::add_scalar(a.tensor(), s), {a}, [](const Tensor& g, const Needs&) { return Grads{g}; },
      "add_scalar");
}

Variable mul_scalar(const Variable& a, double s) {
  return Variable::from_op(
      ops::mul_scalar(a.tensor(), s), {a},
      [s](const Tensor& g, const Needs&) { return Grads{ops::mul_scalar(g, s)}; }, "mul_scalar");
}

Variable pow_scalar(const Variable& a, double p) {
  Tensor x = a.tensor();
  return Variable::from_op(
      ops::pow_scalar(x, p), {a},
      [x, p](const Tensor& g, const Needs&) {
        // d(x^p)/dx = p x^(p-1).
        return Grads{ops::mul(g, ops::mul_scalar(ops::pow_scalar(x, p - 1.0), p))};
      },
      "pow_scalar");
}

Variable neg(const Variable& a) {
  return Variable::from_op(
      ops::neg(a.tensor()), {a}, [](const Tensor& g, const Needs&) { return Grads{ops::neg(g)}; },
      "neg");
}

Variable exp(const Variable& a) {
  Tensor y = ops::exp(a.tensor());
  return Variable::from_op(
      y, {a}, [y](const Tensor& g, const Needs&) { return Grads{ops::mul(g, y)}; }, "exp");
}

Variable log(const Variable& a) {
  Tensor x = a.tensor();
  return Variable::from_op(
      ops::log(x), {a}, [x](const Tensor& g, const Needs&) { return Grads{ops::div(g, x)}; }, "log");
}

Variable sigmoid(const Variable& a) {
  Tensor y = ops::sigmoid(a.tensor());
  return Variable::from_op(
      y, {a}, [y](const Tensor& g, const Needs&) { return Grads{ops::sigmoid_backward(g, y)}; },
      "sigmoid");
}

Variable relu(const Variable& a) {
  // The output carries the same mask as the input (y > 0 iff x > 0), and DenseNet keeps the output
  // alive anyway for the next conv: saving y costs nothing extra.
  Tensor y = ops::relu(a.tensor());
  return Variable::from_op(
      y, {a}, [y](const Tensor& g, const Needs&) { return Grads{ops::relu_backward(g, y)}; }, "relu");
}

// ---- reductions -----------------------------------------------------------------------------------------------

Variable sum(const Variable& a) {
  Shape s = a.shape();
  return Variable::from_op(
      ops::sum(a.tensor()), {a}, [s](const Tensor& g, const Needs&) { return Grads{ops::expand_to(g, s)}; },
      "sum");
}

/// The gradient of a reduction over `dims` without keepdim lacks those dims: put them back as size 1
/// so it broadcasts over the input.
static Shape keepdim_shape(const Shape& in, const std::vector<int64_t>& dims) {
  Shape s = in;
  for (int64_t d : dims) s[d < 0 ? d + static_cast<int64_t>(in.size()) : d] = 1;
  return s;
}

Variable sum(const Variable& a, const std::vector<int64_t>& dims, bool keepdim) {
  Shape s = a.shape();
  Shape kept = keepdim_shape(s, dims);
  return Variable::from_op(
      ops::sum(a.tensor(), dims, keepdim), {a},
      [s, kept](const Tensor& g, const Needs&) { return Grads{ops::expand_to(g.reshape(kept), s)}; },
      "sum");
}

Variable mean(const Variable& a) {
  check(a.numel() > 0, "mean: the tensor " + shape_str(a.shape()) + " is empty");
  return mul_scalar(sum(a), 1.0 / static_cast<double>(a.numel()));
}

Variable mean(const Variable& a, const std::vector<int64_t>& dims, bool keepdim) {
  Tensor probe = ops::mean(a.tensor(), dims, keepdim);  // validates dims, gives the count below
  int64_t count = a.numel() / std::max<int64_t>(probe.numel(), 1);
  return mul_scalar(sum(a, dims, keepdim), 1.0 / static_cast<double>(count));
}

// ---- views ----------------------------------------------------------------------------------------------------

Variable reshape(const Variable& a, const Shape& shape) {
  Shape s = a.shape();
  return Variable::from_op(
      a.tensor().reshape(shape), {a}, [s](const Tensor& g, const Needs&) { return Grads{g.reshape(s)}; },
      "reshape");
}

Variable flatten(const Variable& a, int64_t start, int64_t end) {
  Shape s = a.shape();
  return Variable::from_op(
      a.tensor().flatten(start, end), {a},
      [s](const Tensor& g, const Needs&) { return Grads{g.reshape(s)}; }, "flatten");
}

// ---- matrix products ---------------------------------------------------------------------------------------

Variable matmul(const Variable& a, const Variable& b) {
  Tensor x = a.tensor(), y = b.tensor();
  return Variable::from_op(
      ops::matmul(x, y), {a, b},
      [x, y](const Tensor& g, const Needs& n) {
        // C = A B:  dA = dC B^T,  dB = A^T dC.
        return Grads{n[0] ? ops::matmul(g, y, false, true) : Tensor(),
                     n[1] ? ops::matmul(x, g, true, false) : Tensor()};
      },
      "matmul");
}

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  Tensor xt = x.tensor(), w = weight.tensor();
  const bool has_bias = bias.defined();
  std::vector<Variable> inputs{x, weight};
  if (has_bias) inputs.push_back(bias);
  return Variable::from_op(
      ops::linear(xt, w, has_bias ? bias.tensor() : Tensor()), inputs,
      [xt, w, has_bias](const Tensor& g, const Needs& n) {
        // y = x W^T + b:  dx = dy W,  dW = dy^T x,  db = sum over the batch of dy.
        Grads grads{n[0] ? ops::matmul(g, w) : Tensor(), n[1] ? ops::matmul(g, xt, true, false) : Tensor()};
        if (has_bias) grads.push_back(n[2] ? ops::sum(g, {0}) : Tensor());
        return grads;
      },
      "linear");
}

}  // namespace ladnn
