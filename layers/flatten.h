// layers/flatten.h — flattening as a module (torch.nn.Flatten), so a Sequential can hold it.
#pragma once

#include <cstdint>

#include "autograd/functions.h"
#include "layers/module.h"

namespace ladnn {

/// Merges dims start_dim..end_dim (defaults: everything but the batch dim): (N, C, 1, 1) -> (N, C).
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1)
      : Module("Flatten"), start_dim_(start_dim), end_dim_(end_dim) {}
  Variable forward(const Variable& x) override { return flatten(x, start_dim_, end_dim_); }

 private:
  int64_t start_dim_, end_dim_;
};

}  // namespace ladnn
