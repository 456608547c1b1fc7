// layers/linear.h — fully connected layer, as torch.nn.Linear.
#pragma once

#include <cstdint>

#include "layers/module.h"
#include "tensor/random.h"

namespace ladnn {

/// y = x W^T + b: x (N, in) -> (N, out). Parameters "weight" (out, in) and, when `bias`, "bias" (out),
/// initialised as PyTorch: weight kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), bias
/// U(-1/sqrt(in), 1/sqrt(in)), drawn from `gen` in that order.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator& gen = default_generator());

  Variable forward(const Variable& x) override;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  const Variable& weight() const { return weight_; }
  /// Undefined when constructed with bias = false.
  const Variable& bias() const { return bias_; }

 private:
  int64_t in_features_, out_features_;
  Variable weight_;  // (out, in)
  Variable bias_;    // (out) or undefined
};

}  // namespace ladnn
