// optim/adam.cpp — Adam / AdamW as torch.optim (single-tensor path, amsgrad = false), in place.
// Each parameter's step is one fused pass, and the parameters go together to ops::adam_update_multi_
// (tensor/cpu/optim.cpp, cuda/optim.cu): on a GPU a handful of launches per step, not one per tensor.
#include "optim/adam.h"

#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/graph.h"
#include "optim/state_keys.h"
#include "tensor/ops.h"

namespace ladnn {
namespace {

void check_hyper(const char* name, double beta1, double beta2, double eps, double weight_decay) {
  const std::string who(name);
  check(eps >= 0.0, who + ": invalid epsilon value " + std::to_string(eps));
  check(beta1 >= 0.0 && beta1 < 1.0, who + ": invalid beta parameter at index 0: " + std::to_string(beta1));
  check(beta2 >= 0.0 && beta2 < 1.0, who + ": invalid beta parameter at index 1: " + std::to_string(beta2));
  check(weight_decay >= 0.0, who + ": invalid weight_decay value " + std::to_string(weight_decay));
}

}  // namespace

Adam::Adam(std::vector<Variable> params, double lr, double beta1, double beta2, double eps,
           double weight_decay)
    : Adam("Adam", Decay::L2, std::move(params), lr, beta1, beta2, eps, weight_decay) {}

Adam::Adam(const char* name, Decay decay, std::vector<Variable> params, double lr, double beta1, double beta2,
           double eps, double weight_decay)
    : Optimizer(std::move(params), lr),
      name_(name),
      decay_(decay),
      beta1_(beta1),
      beta2_(beta2),
      eps_(eps),
      weight_decay_(weight_decay),
      exp_avg_(params_.size()),
      exp_avg_sq_(params_.size()),
      param_steps_(params_.size(), 0) {
  check_hyper(name, beta1, beta2, eps, weight_decay);
}

void Adam::step() {
  NoGradGuard no_grad;
  // Under CUDA-graph capture (cuda/graph.h) t must come from the device, or every replay would repeat
  // the captured step's bias corrections; eager steps keep that device copy of t current.
  const bool graph = cuda::capturing();
  if (graph) {
    check(device_step_.defined() && device_step_current_, std::string(name_) +
                                      "::step under CUDA-graph capture: run one eager step first (it creates "
                                      "the optimizer state, which a capture must not allocate, and after "
                                      "load_state_dict puts the step count on the device)");
    ops::increment_(device_step_);
    captured_.assign(params_.size(), false);
  }
  // A capture runs nothing: the host counts move when a replay is reported (replayed_step), so they
  // always count executed steps (and a failed capture leaves them as they were).
  if (!graph) steps_ += 1;
  Device cuda_device = Device::cpu();  // becomes the parameters' GPU when any is on one
  // One multi-tensor update per group of parameters that share a step count, device and dtype (on a
  // GPU: a few launches for the whole model instead of one per parameter). Normally one group: only a
  // parameter that missed steps (no gradient) has a count of its own.
  std::map<std::tuple<int64_t, std::string, DType>, std::vector<ops::AdamTensors>> groups;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    Variable& p = params_[i];
    if (!p.has_grad()) continue;
    Tensor& w = p.mutable_tensor();
    const Tensor& g = p.grad();
    check(g.shape() == w.shape(), std::string(name_) + "::step: gradient of parameter " + std::to_string(i) +
                                      " has shape " + shape_str(g.shape()) + ", parameter has " +
                                      shape_str(w.shape()));
    if (!exp_avg_[i].defined()) {
      check(!graph, std::string(name_) + "::step under CUDA-graph capture: parameter " + std::to_string(i) +
                        " has no optimizer state yet; run one eager step before capturing");
      exp_avg_[i] = Tensor::zeros(w.shape(), w.dtype(), w.device());
      exp_avg_sq_[i] = Tensor::zeros(w.shape(), w.dtype(), w.device());
    }
    const int64_t t = param_steps_[i] + 1;
    if (graph) {
      check(param_steps_[i] == static_cast<int64_t>(steps_),
            std::string(name_) + "::step under CUDA-graph capture: parameter " + std::to_string(i) +
                " has taken " + std::to_string(param_steps_[i]) + " steps, the optimizer " +
                std::to_string(int64_t(steps_)) + "; a captured step keeps one step count for all parameters");
      captured_[i] = true;
    } else {
      ++param_steps_[i];
    }
    groups[{t, w.device().str(), w.dtype()}].push_back({&w, &g, &exp_avg_[i], &exp_avg_sq_[i]});
    if (w.device().is_cuda()) cuda_device = w.device();
  }
  for (const auto& [key, tensors] : groups) {
    ops::AdamStep s;
    s.lr = lr_;
    s.beta1 = beta1_;
    s.beta2 = beta2_;
    s.eps = eps_;
    s.weight_decay = weight_decay_;
    s.decoupled = decay_ == Decay::Decoupled;  // AdamW: p *= 1 - lr wd; Adam: g += wd p
    s.step = std::get<0>(key);
    if (graph) s.device_step = device_step_;
    ops::adam_update_multi_(tensors, s);
  }
  if (!graph && cuda_device.is_cuda()) {
    if (!device_step_.defined() || device_step_.device() != cuda_device)
      device_step_ = Tensor::zeros({}, DType::Int64, cuda_device);
    device_step_.fill_(steps_);
    device_step_current_ = true;
  }
}

void Adam::replayed_step() {
  check(!captured_.empty(), std::string(name_) + "::replayed_step: no step of this optimizer was captured");
  steps_ += 1;
  for (std::size_t i = 0; i < params_.size(); ++i)
    if (captured_[i]) ++param_steps_[i];
}

OptimizerState Adam::state_dict() const {
  OptimizerState s;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (!exp_avg_[i].defined()) continue;
    const std::string k = std::to_string(i) + ".";
    s.tensors[k + "exp_avg"] = exp_avg_[i];
    s.tensors[k + "exp_avg_sq"] = exp_avg_sq_[i];
    s.scalars[k + "step"] = static_cast<double>(param_steps_[i]);
  }
  s.scalars["lr"] = lr_;
  s.scalars["beta1"] = beta1_;
  s.scalars["beta2"] = beta2_;
  s.scalars["eps"] = eps_;
  s.scalars["weight_decay"] = weight_decay_;
  s.scalars["step"] = steps_;
  return s;
}

void Adam::load_state_dict(const OptimizerState& state) {
  const std::string who(name_);
  std::vector<bool> has =
      optim_detail::validate_state(who, state, params_, {"exp_avg", "exp_avg_sq"}, {"step"},
                                   {"lr", "beta1", "beta2", "eps", "weight_decay", "step"});
  const auto& sc = state.scalars;
  check(sc.at("lr") >= 0.0,
        who + "::load_state_dict: scalar 'lr' is invalid: " + std::to_string(sc.at("lr")));
  check_hyper(name_, sc.at("beta1"), sc.at("beta2"), sc.at("eps"), sc.at("weight_decay"));
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (!has[i]) continue;
    const std::string key = std::to_string(i) + ".step";
    const double t = sc.at(key);
    check(
        t >= 1.0 && t == std::floor(t) && t < 9.0e15,
        who + "::load_state_dict: scalar '" + key + "' must be a positive integer, got " + std::to_string(t));
  }

  lr_ = sc.at("lr");
  beta1_ = sc.at("beta1");
  beta2_ = sc.at("beta2");
  eps_ = sc.at("eps");
  weight_decay_ = sc.at("weight_decay");
  steps_ = sc.at("step");
  // device_step_ stays allocated (a graph captured earlier may still point at it); the next eager step
  // refills it from steps_. A graph captured before the load replays the old state: capture again.
  device_step_current_ = false;
  captured_.clear();
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const std::string k = std::to_string(i) + ".";
    if (has[i]) {
      exp_avg_[i] = optim_detail::restore_tensor(state.tensors.at(k + "exp_avg"), params_[i]);
      exp_avg_sq_[i] = optim_detail::restore_tensor(state.tensors.at(k + "exp_avg_sq"), params_[i]);
      param_steps_[i] = static_cast<int64_t>(sc.at(k + "step"));
    } else {
      exp_avg_[i] = Tensor();
      exp_avg_sq_[i] = Tensor();
      param_steps_[i] = 0;
    }
  }
}

}  // namespace ladnn
