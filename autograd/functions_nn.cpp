// autograd/functions_nn.cpp — differentiable batch norm, pooling, cat/split, dropout and BCE.
//
// Each op computes its result with tensor/ops.h and hands Variable::from_op a closure that captures
// only what its backward reads (saved statistics, indices, shapes — never a Variable, which would keep
// the graph alive in a cycle). Gradients returned are new contiguous tensors of the inputs' shapes.
// conv2d lives in autograd/functions_conv.cpp.
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "autograd/functions.h"

namespace ladnn {

namespace {
// batch_norm2d and batch_norm_relu2d: one body, the activation passed to the ops. The fused form's
// backward also captures its output y (the mask); the next conv keeps y alive anyway, as relu's does.
Variable batch_norm_act(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                        Tensor& running_var, bool training, double momentum, double eps, ops::BnAct act) {
  const bool relu = act == ops::BnAct::Relu;
  const char* name = relu ? "batch_norm_relu2d" : "batch_norm2d";
  check(x.defined(), std::string(name) + ": input is undefined");
  const Tensor g = gamma.defined() ? gamma.tensor() : Tensor();
  const Tensor b = beta.defined() ? beta.tensor() : Tensor();
  // Inputs are x, then gamma and beta where defined (affine=False passes neither).
  std::vector<Variable> inputs{x};
  if (gamma.defined()) inputs.push_back(gamma);
  if (beta.defined()) inputs.push_back(beta);
  const bool has_gamma = gamma.defined(), has_beta = beta.defined();
  // Maps the op's three gradients onto the recorded inputs.
  auto pack = [has_gamma, has_beta](ops::BatchNormGrads grads, const std::vector<bool>& needs) {
    std::vector<Tensor> out{std::move(grads.dx)};
    if (has_gamma) out.push_back(std::move(grads.dgamma));
    if (has_beta) out.push_back(std::move(grads.dbeta));
    for (std::size_t i = 0; i < out.size(); ++i)
      if (!needs[i]) out[i] = Tensor();
    return out;
  };

  const Tensor xt = x.tensor();
  if (training) {
    ops::BatchNormForward fwd =
        ops::batch_norm_forward_train(xt, g, b, running_mean, running_var, momentum, eps, act);
    Tensor save_mean = fwd.save_mean, save_invstd = fwd.save_invstd;
    const Tensor mask = relu ? fwd.y : Tensor();
    return Variable::from_op(
        std::move(fwd.y), std::move(inputs),
        [xt, g, save_mean, save_invstd, mask, pack](const Tensor& dy, const std::vector<bool>& needs) {
          return pack(ops::batch_norm_backward_train(dy, xt, g, save_mean, save_invstd, mask), needs);
        },
        name);
  }
  Tensor y = ops::batch_norm_forward_eval(xt, g, b, running_mean, running_var, eps, act);
  bool record = false;
  if (grad_enabled())
    for (const Variable& v : inputs) record = record || v.requires_grad();
  if (!record) return Variable(std::move(y));  // inference: no graph, no copies
  // Copies, so a later training step that updates the buffers in place cannot change this backward.
  const Tensor rm = running_mean.clone(), rv = running_var.clone();
  const Tensor mask = relu ? y : Tensor();
  return Variable::from_op(
      std::move(y), std::move(inputs),
      [xt, g, rm, rv, eps, mask, pack](const Tensor& dy, const std::vector<bool>& needs) {
        return pack(ops::batch_norm_backward_eval(dy, xt, g, rm, rv, eps, mask), needs);
      },
      name);
}
}  // namespace

Variable batch_norm2d(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                      Tensor& running_var, bool training, double momentum, double eps) {
  return batch_norm_act(x, gamma, beta, running_mean, running_var, training, momentum, eps, ops::BnAct::None);
}

Variable batch_norm_relu2d(const Variable& x, const Variable& gamma, const Variable& beta, Tensor& running_mean,
                           Tensor& running_var, bool training, double momentum, double eps) {
  return batch_norm_act(x, gamma, beta, running_mean, running_var, training, momentum, eps, ops::BnAct::Relu);
}

namespace {
// batch_norm_relu_avg_pool2d and batch_norm_relu_max_pool2d: one body. `forward` runs the fused op on
// (x, gamma, beta) and returns its forward (y: the pooled map) with `backward`, which maps the pooled
// map's gradient to the op's three; recorded inputs are x, then gamma and beta where defined.
using BnPoolBackward = std::function<ops::BatchNormGrads(const Tensor& dy)>;
Variable bn_pool_op(const char* name, const Variable& x, const Variable& gamma, const Variable& beta,
                    const std::function<std::pair<Tensor, BnPoolBackward>(
                        const Tensor& x, const Tensor& gamma, const Tensor& beta)>& forward) {
  check(x.defined(), std::string(name) + ": input is undefined");
  const Tensor g = gamma.defined() ? gamma.tensor() : Tensor(), b = beta.defined() ? beta.tensor() : Tensor();
  std::vector<Variable> inputs{x};
  if (gamma.defined()) inputs.push_back(gamma);
  if (beta.defined()) inputs.push_back(beta);
  auto [y, backward] = forward(x.tensor(), g, b);
  const bool has_gamma = gamma.defined(), has_beta = beta.defined();
  return Variable::from_op(
      std::move(y), std::move(inputs),
      [backward = std::move(backward), has_gamma, has_beta](const Tensor& dy,
                                                            const std::vector<bool>& needs) {
        ops::BatchNormGrads grads = backward(dy);
        std::vector<Tensor> out{std::move(grads.dx)};
        if (has_gamma) out.push_back(std::move(grads.dgamma));
        if (has_beta) out.push_back(std::move(grads.dbeta));
        for (std::size_t i = 0; i < out.size(); ++i)
          if (!needs[i]) out[i] = Tensor();
        return out;
      },
      name);
}
}  // namespace

Variable batch_norm_relu_avg_pool2d(const Variable& x, const Variable& gamma, const Variable& beta,
                                    Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                    const ops::Pool2dParams& p, const Tensor& batch_stats) {
  return bn_pool_op(
      "batch_norm_relu_avg_pool2d", x, gamma, beta, [&](const Tensor& xt, const Tensor& g, const Tensor& b) {
        ops::BatchNormForward f = ops::bn_avg_pool2d_train(xt, g, b, running_mean, running_var, momentum, eps,
                                                           ops::BnAct::Relu, p, batch_stats);
        const Tensor save_mean = f.save_mean, save_invstd = f.save_invstd;
        BnPoolBackward backward = [xt, g, b, save_mean, save_invstd, p](const Tensor& dy) {
          return ops::bn_avg_pool2d_backward_train(dy, xt, g, b, save_mean, save_invstd, ops::BnAct::Relu, p);
        };
        return std::make_pair(std::move(f.y), std::move(backward));
      });
}

Variable batch_norm_relu_max_pool2d(const Variable& x, const Variable& gamma, const Variable& beta,
                                    Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                    const ops::Pool2dParams& p, const Tensor& batch_stats) {
  return bn_pool_op(
      "batch_norm_relu_max_pool2d", x, gamma, beta, [&](const Tensor& xt, const Tensor& g, const Tensor& b) {
        ops::BnMaxPoolForward f = ops::bn_max_pool2d_train(xt, g, b, running_mean, running_var, momentum, eps,
                                                           ops::BnAct::Relu, p, batch_stats);
        const Tensor save_mean = f.bn.save_mean, save_invstd = f.bn.save_invstd, indices = f.indices;
        BnPoolBackward backward = [xt, g, b, save_mean, save_invstd, indices, p](const Tensor& dy) {
          return ops::bn_max_pool2d_backward_train(dy, indices, xt, g, b, save_mean, save_invstd,
                                                   ops::BnAct::Relu, p);
        };
        return std::make_pair(std::move(f.bn.y), std::move(backward));
      });
}

Variable max_pool2d(const Variable& x, const ops::Pool2dParams& p) {
  check(x.defined(), "max_pool2d: input is undefined");
  // The indices only where a backward will read them (from_op records one only then).
  ops::MaxPoolForward fwd = ops::max_pool2d_forward(x.tensor(), p, grad_enabled() && x.requires_grad());
  const Tensor indices = fwd.indices;
  const Shape x_shape = x.shape();
  return Variable::from_op(
      std::move(fwd.y), {x},
      [indices, x_shape, p](const Tensor& dy, const std::vector<bool>&) {
        return std::vector<Tensor>{ops::max_pool2d_backward(dy, indices, x_shape, p)};
      },
      "max_pool2d");
}

Variable avg_pool2d(const Variable& x, const ops::Pool2dParams& p) {
  check(x.defined(), "avg_pool2d: input is undefined");
  const Shape x_shape = x.shape();
  return Variable::from_op(
      ops::avg_pool2d_forward(x.tensor(), p), {x},
      [x_shape, p](const Tensor& dy, const std::vector<bool>&) {
        return std::vector<Tensor>{ops::avg_pool2d_backward(dy, x_shape, p)};
      },
      "avg_pool2d");
}

Variable adaptive_avg_pool2d(const Variable& x, int64_t out_h, int64_t out_w) {
  check(x.defined(), "adaptive_avg_pool2d: input is undefined");
  const Shape x_shape = x.shape();
  return Variable::from_op(
      ops::adaptive_avg_pool2d_forward(x.tensor(), out_h, out_w), {x},
      [x_shape](const Tensor& dy, const std::vector<bool>&) {
        return std::vector<Tensor>{ops::adaptive_avg_pool2d_backward(dy, x_shape)};
      },
      "adaptive_avg_pool2d");
}

Variable cat(const std::vector<Variable>& parts, int64_t dim) {
  std::vector<Tensor> tensors;
  tensors.reserve(parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) {
    check(parts[i].defined(), "cat: part " + std::to_string(i) + " is undefined");
    tensors.push_back(parts[i].tensor());
  }
  Tensor y = ops::cat(tensors, dim);  // checks shapes and dim
  const int64_t d = dim < 0 ? dim + y.dim() : dim;
  std::vector<int64_t> sizes;
  sizes.reserve(parts.size());
  for (const Tensor& t : tensors) sizes.push_back(t.size(d));
  return Variable::from_op(
      std::move(y), parts,
      [sizes, d](const Tensor& dy, const std::vector<bool>& needs) {
        // Part i's gradient is its slice of dy, a view: no copy. The engine never writes through a
        // gradient (it accumulates out of place) and every op reads its gradient through strides or
        // copies it itself. In a dense block this matters: feature k's slice is handed back by every
        // later layer's cat, O(L^2) slices per block (1155 in DenseNet-169), each of which was a copy
        // (and on the GPU a kernel launch).
        std::vector<Tensor> grads(sizes.size());
        int64_t start = 0;
        for (std::size_t i = 0; i < sizes.size(); ++i) {
          if (needs[i]) grads[i] = dy.narrow(d, start, sizes[i]);
          start += sizes[i];
        }
        return grads;
      },
      "cat");
}

std::vector<Variable> split(const Variable& a, const std::vector<int64_t>& sizes, int64_t dim) {
  check(a.defined(), "split: input is undefined");
  std::vector<Tensor> pieces = ops::split(a.tensor(), sizes, dim);  // checks sizes and dim
  const int64_t d = dim < 0 ? dim + a.dim() : dim;
  const Shape a_shape = a.shape();
  const DType dtype = a.dtype();
  std::vector<Variable> out;
  out.reserve(pieces.size());
  int64_t start = 0;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const int64_t s = sizes[i];
    // Each piece is its own op on `a`: its gradient fills its slice of a zero tensor of a's shape, and
    // the engine sums the pieces' contributions into a.
    out.push_back(Variable::from_op(
        std::move(pieces[i]), {a},
        [a_shape, dtype, d, start, s](const Tensor& dy, const std::vector<bool>&) {
          Tensor da = Tensor::zeros(a_shape, dtype, dy.device());
          da.narrow(d, start, s).copy_(dy);
          return std::vector<Tensor>{da};
        },
        "split"));
    start += s;
  }
  return out;
}

Variable dropout(const Variable& x, double p, bool training, Generator& gen) {
  check(x.defined(), "dropout: input is undefined");
  check(p >= 0.0 && p <= 1.0, "dropout: probability p must be in [0, 1], got " + std::to_string(p) +
                                  " (input " + shape_str(x.shape()) + ")");
  if (!training || p == 0.0) return x;
  // Drawn on the host from `gen` and moved to x's device: the same seed gives the same mask on every
  // device (and the GPU run matches the CPU run).
  const Tensor mask = ops::dropout_mask(x.shape(), p, gen, x.dtype()).to(x.tensor().device());
  return Variable::from_op(
      ops::mul(x.tensor(), mask), {x},
      [mask](const Tensor& dy, const std::vector<bool>&) { return std::vector<Tensor>{ops::mul(dy, mask)}; },
      "dropout");
}

Variable bce_with_logits(const Variable& x, const Tensor& y, const Tensor& weight, ops::Reduction reduction) {
  check(x.defined(), "bce_with_logits: input is undefined");
  const Tensor xt = x.tensor();
  return Variable::from_op(
      ops::bce_with_logits(xt, y, weight, reduction), {x},
      [xt, y, weight, reduction](const Tensor& dy, const std::vector<bool>&) {
        return std::vector<Tensor>{ops::bce_with_logits_backward(dy, xt, y, weight, reduction)};
      },
      "bce_with_logits");
}

}  // namespace ladnn
