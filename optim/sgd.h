// optim/sgd.h — stochastic gradient descent with momentum, as torch.optim.SGD.
#pragma once

#include <vector>

#include "optim/optimizer.h"

namespace ladnn {

/// For each parameter p with gradient g (torch.optim.SGD, maximize = false):
///   d = g + weight_decay * p
///   if momentum != 0:  buf = d (first step, a copy)  or  buf = momentum * buf + (1 - dampening) * d
///                      d = nesterov ? d + momentum * buf : buf
///   p -= lr * d
/// State: "<i>.momentum_buffer" for parameter i once it has one; scalars "lr", "momentum",
/// "dampening", "weight_decay", "nesterov" (0/1) and "step" (calls of step()).
class SGD : public Optimizer {
 public:
  SGD(std::vector<Variable> params, double lr, double momentum = 0.0, double dampening = 0.0,
      double weight_decay = 0.0, bool nesterov = false);

  void step() override;
  /// A replayed CUDA graph ran one captured step: the step count advances (a capture itself runs nothing
  /// and counts nothing, so a graph captured twice — a planned capture — is not counted twice).
  void replayed_step() override { steps_ += 1; }
  OptimizerState state_dict() const override;
  void load_state_dict(const OptimizerState& state) override;

  double momentum() const { return momentum_; }
  double dampening() const { return dampening_; }
  double weight_decay() const { return weight_decay_; }
  bool nesterov() const { return nesterov_; }
  /// Momentum buffer of parameter i (undefined before its first update with momentum).
  const Tensor& momentum_buffer(std::size_t i) const { return buffers_.at(i); }

 private:
  double momentum_, dampening_, weight_decay_;
  bool nesterov_;
  double steps_ = 0;             // number of step() calls
  std::vector<Tensor> buffers_;  // per parameter; undefined until first needed
};

}  // namespace ladnn
