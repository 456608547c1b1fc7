// layers/dropout.h — dropout, as torch.nn.Dropout.
#pragma once

#include "layers/module.h"
#include "tensor/random.h"

namespace ladnn {

/// Training: zeroes each element with probability p and scales the rest by 1 / (1 - p), with masks
/// drawn from `gen` (kept by reference: it must outlive the module). Eval: the identity.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, Generator& gen = default_generator());
  Variable forward(const Variable& x) override;
  double p() const { return p_; }

 private:
  double p_;
  Generator* gen_;
};

}  // namespace ladnn
