// optim/optimizer.h — the optimizer interface: SGD, Adam and AdamW implement it.
//
// An optimizer holds the parameters it updates (Variables share storage with the model, so the update
// is seen by the model) and per-parameter state (momentum buffers, Adam moments). `state_dict()`
// returns that state as named tensors plus scalars, so a checkpoint can resume a run exactly.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace ladnn {

/// An optimizer's saveable state: tensors ("0.exp_avg", "0.momentum_buffer", … keyed by parameter
/// index) and scalars ("step", "lr", …).
struct OptimizerState {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> scalars;
};

class Optimizer {
 public:
  explicit Optimizer(std::vector<Variable> params, double lr);
  virtual ~Optimizer() = default;

  /// One update of every parameter that has a gradient (parameters without one are skipped, as
  /// PyTorch does). Runs without recording a graph.
  virtual void step() = 0;
  /// Clears every parameter's gradient.
  void zero_grad();

  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  const std::vector<Variable>& params() const { return params_; }

  /// A replay of a captured step() ran (cuda/graph.h): advance the host-side bookkeeping (Adam's step
  /// counts) as that step would have. A capture records the step without running it, so it counts
  /// nothing; the caller reports every replay. SGD keeps no count: nothing to do.
  virtual void replayed_step() {}

  virtual OptimizerState state_dict() const = 0;
  /// Restores state from state_dict(); throws naming the key that is missing or mis-shaped.
  virtual void load_state_dict(const OptimizerState& state) = 0;

 protected:
  std::vector<Variable> params_;
  double lr_;
};

}  // namespace ladnn
