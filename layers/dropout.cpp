// layers/dropout.cpp — Dropout: checks p, passes the mode and generator to the dropout op.
#include "layers/dropout.h"

#include <string>

#include "autograd/functions.h"

namespace ladnn {

Dropout::Dropout(double p, Generator& gen) : Module("Dropout"), p_(p), gen_(&gen) {
  check(p >= 0.0 && p <= 1.0, "Dropout: probability has to be between 0 and 1, but got " + std::to_string(p));
}

Variable Dropout::forward(const Variable& x) {
  return dropout(x, p_, is_training(), *gen_);
}

}  // namespace ladnn
