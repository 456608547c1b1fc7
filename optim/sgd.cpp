// optim/sgd.cpp — SGD as torch.optim.SGD (single-tensor path), updating parameters in place.
// Each parameter's step is one fused pass, ops::sgd_update_ (tensor/cpu/optim.cpp, cuda/optim.cu).
#include "optim/sgd.h"

#include <cmath>
#include <string>

#include "cuda/graph.h"
#include "optim/state_keys.h"
#include "tensor/ops.h"

namespace ladnn {
namespace {

void check_hyper(double momentum, double dampening, double weight_decay, bool nesterov) {
  check(momentum >= 0.0, "SGD: invalid momentum value " + std::to_string(momentum));
  check(weight_decay >= 0.0, "SGD: invalid weight_decay value " + std::to_string(weight_decay));
  check(!nesterov || (momentum > 0.0 && dampening == 0.0),
        "SGD: Nesterov momentum requires a momentum and zero dampening (got momentum " +
            std::to_string(momentum) + ", dampening " + std::to_string(dampening) + ")");
}

}  // namespace

SGD::SGD(std::vector<Variable> params, double lr, double momentum, double dampening, double weight_decay,
         bool nesterov)
    : Optimizer(std::move(params), lr),
      momentum_(momentum),
      dampening_(dampening),
      weight_decay_(weight_decay),
      nesterov_(nesterov),
      buffers_(params_.size()) {
  check_hyper(momentum, dampening, weight_decay, nesterov);
}

void SGD::step() {
  NoGradGuard no_grad;
  if (!cuda::capturing()) steps_ += 1;  // a capture runs nothing: replayed_step() counts the replays
  for (std::size_t i = 0; i < params_.size(); ++i) {
    Variable& p = params_[i];
    if (!p.has_grad()) continue;
    Tensor& w = p.mutable_tensor();
    const Tensor& g = p.grad();
    check(g.shape() == w.shape(), "SGD::step: gradient of parameter " + std::to_string(i) + " has shape " +
                                      shape_str(g.shape()) + ", parameter has " + shape_str(w.shape()));
    ops::SgdStep s;
    s.lr = lr_;
    s.momentum = momentum_;
    s.dampening = dampening_;
    s.weight_decay = weight_decay_;
    s.nesterov = nesterov_;
    s.first = false;
    Tensor& buf = buffers_[i];
    if (momentum_ != 0.0 && !buf.defined()) {
      buf = Tensor::empty(w.shape(), w.dtype(), w.device());
      s.first = true;  // torch: the first buffer is d itself, undampened
    }
    ops::sgd_update_(w, g, buf, s);
  }
}

OptimizerState SGD::state_dict() const {
  OptimizerState s;
  for (std::size_t i = 0; i < buffers_.size(); ++i)
    if (buffers_[i].defined()) s.tensors[std::to_string(i) + ".momentum_buffer"] = buffers_[i];
  s.scalars["lr"] = lr_;
  s.scalars["momentum"] = momentum_;
  s.scalars["dampening"] = dampening_;
  s.scalars["weight_decay"] = weight_decay_;
  s.scalars["nesterov"] = nesterov_ ? 1.0 : 0.0;
  s.scalars["step"] = steps_;
  return s;
}

void SGD::load_state_dict(const OptimizerState& state) {
  std::vector<bool> has =
      optim_detail::validate_state("SGD", state, params_, {"momentum_buffer"}, {},
                                   {"lr", "momentum", "dampening", "weight_decay", "nesterov", "step"});
  const double lr = state.scalars.at("lr");
  const double nesterov = state.scalars.at("nesterov");
  check(lr >= 0.0, "SGD::load_state_dict: scalar 'lr' is invalid: " + std::to_string(lr));
  check(nesterov == 0.0 || nesterov == 1.0,
        "SGD::load_state_dict: scalar 'nesterov' must be 0 or 1, got " + std::to_string(nesterov));
  check_hyper(state.scalars.at("momentum"), state.scalars.at("dampening"), state.scalars.at("weight_decay"),
              nesterov == 1.0);

  lr_ = lr;
  momentum_ = state.scalars.at("momentum");
  dampening_ = state.scalars.at("dampening");
  weight_decay_ = state.scalars.at("weight_decay");
  nesterov_ = nesterov == 1.0;
  steps_ = state.scalars.at("step");
  for (std::size_t i = 0; i < params_.size(); ++i) {
    buffers_[i] = has[i] ? optim_detail::restore_tensor(
                               state.tensors.at(std::to_string(i) + ".momentum_buffer"), params_[i])
                         : Tensor();
  }
}

}  // namespace ladnn
