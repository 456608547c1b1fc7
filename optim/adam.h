// optim/adam.h — Adam and AdamW, as torch.optim.Adam / torch.optim.AdamW (amsgrad = false).
#pragma once

#include <cstdint>
#include <vector>

#include "optim/optimizer.h"

namespace ladnn {

/// For each parameter p with gradient g, with t its own step count (parameters without a gradient are
/// skipped and keep their count, as torch):
///   Adam:   g += weight_decay * p                  (L2, coupled into the moments)
///   AdamW:  p *= 1 - lr * weight_decay             (decoupled)
///   m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2
///   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// State: "<i>.exp_avg", "<i>.exp_avg_sq" tensors and "<i>.step" scalars for each parameter that has
/// been updated; scalars "lr", "beta1", "beta2", "eps", "weight_decay" and "step" (calls of step()).
class Adam : public Optimizer {
 public:
  Adam(std::vector<Variable> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999,
       double eps = 1e-8, double weight_decay = 0.0);

  void step() override;
  void replayed_step() override;
  OptimizerState state_dict() const override;
  void load_state_dict(const OptimizerState& state) override;

  double beta1() const { return beta1_; }
  double beta2() const { return beta2_; }
  double eps() const { return eps_; }
  double weight_decay() const { return weight_decay_; }
  const Tensor& exp_avg(std::size_t i) const { return exp_avg_.at(i); }
  const Tensor& exp_avg_sq(std::size_t i) const { return exp_avg_sq_.at(i); }
  int64_t param_step(std::size_t i) const { return param_steps_.at(i); }

 protected:
  enum class Decay { L2, Decoupled };
  Adam(const char* name, Decay decay, std::vector<Variable> params, double lr, double beta1, double beta2,
       double eps, double weight_decay);

 private:
  const char* name_;  // "Adam" or "AdamW", for messages
  Decay decay_;
  double beta1_, beta2_, eps_, weight_decay_;
  double steps_ = 0;
  std::vector<Tensor> exp_avg_, exp_avg_sq_;  // per parameter; undefined until first update
  std::vector<int64_t> param_steps_;
  Tensor device_step_;  // t on the GPU, kept equal to steps_ by eager steps, bumped by captured ones
  bool device_step_current_ = false;  // device_step_ == steps_ (false after load_state_dict until an eager step)
  std::vector<bool> captured_;  // which parameters the last captured step updates (for replayed_step)
};

/// Adam with decoupled weight decay (Loshchilov & Hutter), torch's defaults (weight_decay 1e-2).
class AdamW : public Adam {
 public:
  AdamW(std::vector<Variable> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999,
        double eps = 1e-8, double weight_decay = 1e-2)
      : Adam("AdamW", Decay::Decoupled, std::move(params), lr, beta1, beta2, eps, weight_decay) {}
};

}  // namespace ladnn
