// layers/activation.h — elementwise activations as modules (torch.nn.ReLU, torch.nn.Sigmoid).
#pragma once

#include "autograd/functions.h"
#include "layers/module.h"

namespace ladnn {

/// y = max(x, 0). No parameters.
class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}
  Variable forward(const Variable& x) override { return relu(x); }
};

/// y = 1 / (1 + exp(-x)). No parameters.
class Sigmoid : public Module {
 public:
  Sigmoid() : Module("Sigmoid") {}
  Variable forward(const Variable& x) override { return sigmoid(x); }
};

}  // namespace ladnn
